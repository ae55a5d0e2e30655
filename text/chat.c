/* text/chat.c - an OpenAI-style chat request as the context of a chat
 * template (what apply_chat_template passes), and the built-in templates for
 * models that ship none. The request is read once into the render's arena;
 * every string in it is untrusted. */
#include <stdio.h>
#include <string.h>

#include "heed/chat.h"
#include "text/tmpl_internal.h"

/* ---------- built-in templates ---------- */

/* ChatML as Qwen and many fine-tunes use it; tool calls written the Hermes way. */
static const char chatml_src[] = "{%- for message in messages %}\n"
                                 "    {{- '<|im_start|>' + message['role'] + '\\n' }}\n"
                                 "    {%- if message['content'] is string %}\n"
                                 "        {{- message['content'] }}\n"
                                 "    {%- endif %}\n"
                                 "    {%- if message['tool_calls'] %}\n"
                                 "        {%- for tool_call in message['tool_calls'] %}\n"
                                 "            {%- if tool_call['function'] is defined %}\n"
                                 "                {%- set tool_call = tool_call['function'] %}\n"
                                 "            {%- endif %}\n"
                                 "            {{- '\\n<tool_call>\\n{\"name\": \"' + tool_call['name'] + '\", "
                                 "\"arguments\": ' + tool_call['arguments'] | tojson + '}\\n</tool_call>' }}\n"
                                 "        {%- endfor %}\n"
                                 "    {%- endif %}\n"
                                 "    {{- '<|im_end|>\\n' }}\n"
                                 "{%- endfor %}\n"
                                 "{%- if add_generation_prompt %}\n"
                                 "    {{- '<|im_start|>assistant\\n' }}\n"
                                 "{%- endif %}\n";

/* Gemma's turns: "model" for the assistant, the system message folded into
 * the first user turn, roles that must alternate. */
static const char gemma_src[] =
    "{{- bos_token }}\n"
    "{%- if messages and messages[0]['role'] == 'system' %}\n"
    "    {%- set first_user_prefix = (messages[0]['content'] if messages[0]['content'] is string else '') + '\\n\\n' "
    "%}\n"
    "    {%- set loop_messages = messages[1:] %}\n"
    "{%- else %}\n"
    "    {%- set first_user_prefix = '' %}\n"
    "    {%- set loop_messages = messages %}\n"
    "{%- endif %}\n"
    "{%- for message in loop_messages %}\n"
    "    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}\n"
    "        {{- raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}\n"
    "    {%- endif %}\n"
    "    {%- if message['role'] == 'assistant' %}\n"
    "        {%- set role = 'model' %}\n"
    "    {%- else %}\n"
    "        {%- set role = message['role'] %}\n"
    "    {%- endif %}\n"
    "    {{- '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else '') }}\n"
    "    {%- if message['content'] is string %}\n"
    "        {{- message['content'] | trim }}\n"
    "    {%- endif %}\n"
    "    {{- '<end_of_turn>\\n' }}\n"
    "{%- endfor %}\n"
    "{%- if add_generation_prompt %}\n"
    "    {{- '<start_of_turn>model\\n' }}\n"
    "{%- endif %}\n";

/* Llama 3's headers; the begin-of-text token before the first message. */
static const char llama3_src[] =
    "{%- for message in messages %}\n"
    "    {%- set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + "
    "(message['content'] if message['content'] is string else '') | trim + '<|eot_id|>' %}\n"
    "    {%- if loop.index0 == 0 %}\n"
    "        {%- set content = bos_token + content %}\n"
    "    {%- endif %}\n"
    "    {{- content }}\n"
    "{%- endfor %}\n"
    "{%- if add_generation_prompt %}\n"
    "    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}\n"
    "{%- endif %}\n";

static const struct {
  const char *name;
  const char *src;
} builtins[] = {{"chatml", chatml_src}, {"gemma", gemma_src}, {"llama3", llama3_src}};

heed_status heed_chat_builtin(const char *name, const char **source, heed_error *err) {
  if (source) *source = NULL;
  if (!name || !source) return heed_err_set(err, HEED_E_INVALID, "heed_chat_builtin: name and source are needed");
  for (size_t i = 0; i < HEED_ARRAY_LEN(builtins); i++)
    if (strcmp(name, builtins[i].name) == 0) {
      *source = builtins[i].src;
      return HEED_OK;
    }
  return heed_err_set(err, HEED_E_INVALID, "unknown built-in chat template '%s'; known: %s", name,
                      HEED_CHAT_BUILTIN_NAMES);
}

const char *heed_chat_builtin_for_arch(const char *arch) {
  if (arch && strncmp(arch, "gemma", 5) == 0) return "gemma";
  if (arch && strcmp(arch, "llama") == 0) return "llama3";
  return "chatml";
}

/* ---------- the request ---------- */

static int bad(tm_render *r, heed_status st, const char *fmt, ...) HEED_PRINTF(3, 4);
static int bad(tm_render *r, heed_status st, const char *fmt, ...) {
  char msg[800];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  heed_err_set(r->err, st, "chat request: %s", msg);
  r->failed = 1;
  return -1;
}

static const tm_val *member(const tm_dict *d, const char *key) {
  long e = tm_dict_findc(d, key, strlen(key));
  return e >= 0 ? &d->v[e] : NULL;
}

/* A copy of d with key set to v. */
static tm_dict *with_member(tm_render *r, const tm_dict *d, const char *key, tm_val v) {
  tm_dict *c = tm_dict_new(&r->arena, d->n + 1);
  if (!c) return NULL;
  for (size_t i = 0; i < d->n; i++)
    if (tm_dict_set(&r->arena, c, d->k[i], d->v[i])) return NULL;
  const tm_str *k = tm_str_new(&r->arena, key, strlen(key), 1);
  if (!k || tm_dict_set(&r->arena, c, tv_str(k), v)) return NULL;
  return c;
}

/* content as an array of parts: the text parts joined by "\n", as llama-server does. */
static int flatten_parts(tm_render *r, size_t mi, const tm_list *parts, tm_val *out) {
  tm_buf b;
  tm_buf_init(&b, &r->arena, r->max_output);
  for (size_t j = 0; j < parts->n; j++) {
    tm_val p = parts->it[j];
    if (p.kind != TV_DICT) return bad(r, HEED_E_INVALID, "messages[%zu].content[%zu] must be an object", mi, j);
    const tm_val *type = member(p.d, "type");
    if (!type || type->kind != TV_STR)
      return bad(r, HEED_E_INVALID, "messages[%zu].content[%zu].type must be a string", mi, j);
    if (!tm_str_eqc(type->s, "text"))
      return bad(r, HEED_E_UNSUPPORTED,
                 "messages[%zu].content[%zu]: content parts of type '%s' are not supported (text only)", mi, j,
                 type->s->p);
    const tm_val *text = member(p.d, "text");
    if (!text || text->kind != TV_STR)
      return bad(r, HEED_E_INVALID, "messages[%zu].content[%zu].text must be a string", mi, j);
    if ((b.len && tm_buf_put(&b, "\n", 1, 1)) || tm_buf_str(&b, text->s)) return tm_fail_mem(r, 0);
  }
  const tm_str *s = tm_buf_finish(&b, &r->arena);
  if (!s) return tm_fail_mem(r, 0);
  *out = tv_str(s);
  return 0;
}

/* tool_calls[k].function.arguments given as a JSON string: parsed. */
static int parse_tool_calls(tm_render *r, size_t mi, tm_val calls, tm_val *out) {
  if (calls.kind == TV_NONE) {
    *out = calls;
    return 0;
  }
  if (calls.kind != TV_LIST) return bad(r, HEED_E_INVALID, "messages[%zu].tool_calls must be an array", mi);
  tm_list *l = tm_list_new(&r->arena, calls.l->n);
  if (!l) return tm_fail_mem(r, 0);
  for (size_t k = 0; k < calls.l->n; k++) {
    tm_val c = calls.l->it[k];
    l->it[k] = c;
    if (c.kind != TV_DICT) return bad(r, HEED_E_INVALID, "messages[%zu].tool_calls[%zu] must be an object", mi, k);
    const tm_val *fn = member(c.d, "function");
    if (!fn) continue;
    if (fn->kind != TV_DICT)
      return bad(r, HEED_E_INVALID, "messages[%zu].tool_calls[%zu].function must be an object", mi, k);
    const tm_val *args = member(fn->d, "arguments");
    if (!args || args->kind != TV_STR) continue;
    const tm_str *s = args->s;
    tm_val parsed;
    size_t i = 0;
    while (i < s->len && (s->p[i] == ' ' || s->p[i] == '\t' || s->p[i] == '\n' || s->p[i] == '\r')) i++;
    if (i == s->len) {
      tm_dict *empty = tm_dict_new(&r->arena, 0);
      if (!empty) return tm_fail_mem(r, 0);
      parsed = tv_dict(empty);
    } else {
      char msg[200];
      if (tm_json_parse(&r->arena, s->p, s->len, 1, &parsed, msg, sizeof msg))
        return r->arena.over
                   ? tm_fail_mem(r, 0)
                   : bad(r, HEED_E_INVALID, "messages[%zu].tool_calls[%zu].function.arguments is not valid JSON: %s",
                         mi, k, msg);
      if (parsed.kind != TV_DICT)
        return bad(r, HEED_E_INVALID, "messages[%zu].tool_calls[%zu].function.arguments is not a JSON object", mi, k);
    }
    tm_dict *nf = with_member(r, fn->d, "arguments", parsed);
    tm_dict *nc = nf ? with_member(r, c.d, "function", tv_dict(nf)) : NULL;
    if (!nc) return tm_fail_mem(r, 0);
    l->it[k] = tv_dict(nc);
  }
  *out = tv_list(l, 0);
  return 0;
}

static int build_context(tm_render *r, const char *json, size_t len) {
  tm_val req;
  char msg[256];
  if (!json || !len) return bad(r, HEED_E_INVALID, "the request is empty");
  if (tm_json_parse(&r->arena, json, len, 1, &req, msg, sizeof msg))
    return r->arena.over ? tm_fail_mem(r, 0) : bad(r, HEED_E_INVALID, "not valid JSON: %s", msg);
  if (req.kind != TV_DICT) return bad(r, HEED_E_INVALID, "a JSON object is needed, not %s", tm_type_name(req));
  const tm_val *msgs = member(req.d, "messages");
  if (!msgs) return bad(r, HEED_E_INVALID, "'messages' is missing");
  if (msgs->kind != TV_LIST) return bad(r, HEED_E_INVALID, "'messages' must be an array");
  if (!msgs->l->n) return bad(r, HEED_E_INVALID, "'messages' is empty");
  tm_list *ml = tm_list_new(&r->arena, msgs->l->n);
  if (!ml) return tm_fail_mem(r, 0);
  for (size_t i = 0; i < msgs->l->n; i++) {
    tm_val m = msgs->l->it[i];
    if (m.kind != TV_DICT) return bad(r, HEED_E_INVALID, "messages[%zu] must be an object", i);
    const tm_val *role = member(m.d, "role");
    if (!role || role->kind != TV_STR) return bad(r, HEED_E_INVALID, "messages[%zu].role must be a string", i);
    const tm_val *content = member(m.d, "content");
    if (content && content->kind == TV_LIST) {
      tm_val flat;
      if (flatten_parts(r, i, content->l, &flat)) return -1;
      tm_dict *d = with_member(r, m.d, "content", flat);
      if (!d) return tm_fail_mem(r, 0);
      m = tv_dict(d);
    } else if (content && content->kind != TV_STR && content->kind != TV_NONE) {
      return bad(r, HEED_E_INVALID, "messages[%zu].content must be a string, an array of content parts or null", i);
    }
    const tm_val *calls = member(m.d, "tool_calls");
    if (calls) {
      tm_val nc;
      if (parse_tool_calls(r, i, *calls, &nc)) return -1;
      tm_dict *d = with_member(r, m.d, "tool_calls", nc);
      if (!d) return tm_fail_mem(r, 0);
      m = tv_dict(d);
    }
    ml->it[i] = m;
  }
  const tm_val *tools = member(req.d, "tools");
  if (tools && tools->kind != TV_LIST && tools->kind != TV_NONE)
    return bad(r, HEED_E_INVALID, "'tools' must be an array");
  const tm_val *agp = member(req.d, "add_generation_prompt");
  if (agp && agp->kind != TV_BOOL) return bad(r, HEED_E_INVALID, "'add_generation_prompt' must be true or false");
  const tm_val *kwargs = member(req.d, "chat_template_kwargs");
  if (kwargs && kwargs->kind != TV_DICT && kwargs->kind != TV_NONE)
    return bad(r, HEED_E_INVALID, "'chat_template_kwargs' must be an object");
  const tm_val *thinking = member(req.d, "enable_thinking");
  if (tm_render_set(r, "messages", 8, tv_list(ml, 0)) || tm_render_set(r, "tools", 5, tools ? *tools : tv_none()) ||
      tm_render_set(r, "documents", 9, tv_none()) ||
      tm_render_set(r, "add_generation_prompt", 21, agp ? *agp : tv_bool(1)) ||
      (thinking && tm_render_set(r, "enable_thinking", 15, *thinking)))
    return -1;
  if (kwargs && kwargs->kind == TV_DICT)
    for (size_t i = 0; i < kwargs->d->n; i++)
      if (tm_render_set(r, kwargs->d->k[i].s->p, kwargs->d->k[i].s->len, kwargs->d->v[i])) return -1;
  return 0;
}

heed_status heed_chat_render(const heed_template *t, const char *request_json, size_t len,
                             const heed_template_var *trusted, size_t n_trusted, const heed_template_options *opt,
                             heed_template_text *out, heed_error *err) {
  if (!out) return heed_err_set(err, HEED_E_INVALID, "heed_chat_render: out is NULL");
  memset(out, 0, sizeof *out);
  if (!t) return heed_err_set(err, HEED_E_INVALID, "heed_chat_render: template is NULL");
  heed_error local;
  heed_err_clear(&local);
  heed_error *e = err ? err : &local;
  tm_render r;
  heed_status st = tm_render_init(&r, t, opt, e);
  if (st) {
    tm_render_fini(&r);
    return st;
  }
  locale_t old = t->loc ? uselocale(t->loc) : (locale_t)0;
  int rc = build_context(&r, request_json, len);
  if (old) uselocale(old);
  if (rc) {
    tm_render_fini(&r);
    return e->status;
  }
  for (size_t i = 0; i < n_trusted; i++) {
    if (!trusted[i].name || !trusted[i].value) {
      tm_render_fini(&r);
      return heed_err_set(err, HEED_E_INVALID, "heed_chat_render: trusted variable %zu has a NULL name or value", i);
    }
    size_t vl = strlen(trusted[i].value);
    if (!tm_utf8_valid(trusted[i].value, vl)) {
      tm_render_fini(&r);
      return heed_err_set(err, HEED_E_INVALID, "trusted variable '%s' is not valid UTF-8", trusted[i].name);
    }
    const tm_str *s = tm_str_new(&r.arena, trusted[i].value, vl, 0);
    if (!s || tm_render_set(&r, trusted[i].name, strlen(trusted[i].name), tv_str(s))) {
      tm_render_fini(&r);
      return heed_err_set(err, HEED_E_NOMEM, "template: out of memory");
    }
  }
  st = tm_render_run(&r, out);
  tm_render_fini(&r);
  return st;
}
