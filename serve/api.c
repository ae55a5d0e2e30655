/* serve/api.c - the API translation layer: a request body (OpenAI chat
 * completions or completions, Anthropic messages) becomes one srv_params, or
 * HEED_E_INVALID with a message naming the field and the bad value.
 *
 * Chat and messages bodies both become an OpenAI-style chat body (chat_json)
 * for heed_chat_prompt: the chat API's messages checked and passed on as given
 * (developer becomes system); Anthropic's converted (system first, tool_use
 * blocks to tool_calls, tool_result blocks to tool messages). Nothing here
 * knows the model: the fuzz target calls it alone. */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/internal.h"
#include "text/tok_internal.h" /* tok_utf8_len */
#include "serve/serve_internal.h"

#define MAX_NEW_TOKENS (1L << 24)
#define MAX_STOP_BYTES 256
/* A \u0000 escape, in the parser's copy of the body. cJSON would end the
 * string there silently; 0xFF is never in valid UTF-8, so a string holding it
 * is known to have had a NUL, and printed JSON gets the escape back. */
#define NUL_MARK '\xff'

typedef struct req {
  heed_error *err;
  heed_status st;
  cJSON *root;
  int marked; /* the body had \u0000 escapes */
} req;

/* A path ("messages[2].role") or a value quoted for a message. */
typedef struct text {
  char s[200];
} text;

static int fail(req *r, const char *fmt, ...) HEED_PRINTF(2, 3);
static int fail(req *r, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  heed_err_vset(r->err, HEED_E_INVALID, fmt, ap);
  va_end(ap);
  r->st = HEED_E_INVALID;
  return -1;
}

static int oom(req *r) {
  heed_err_set(r->err, HEED_E_NOMEM, "out of memory while reading the request");
  r->st = HEED_E_NOMEM;
  return -1;
}

static text field(const char *path, const char *key) {
  text t;
  if (path[0])
    heed_fmt(t.s, sizeof t.s, "%s.%s", path, key);
  else
    heed_fmt(t.s, sizeof t.s, "%s", key);
  return t;
}

static text element(const char *path, size_t i) {
  text t;
  heed_fmt(t.s, sizeof t.s, "%s[%zu]", path, i);
  return t;
}

/* s as a JSON string literal, cut after 48 bytes (at a character boundary). */
static text quote(const char *s) {
  text t;
  size_t o = 0;
  t.s[o++] = '"';
  for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
    if (o >= 50 && (*p & 0xC0) != 0x80) {
      memcpy(t.s + o, "...", 3);
      o += 3;
      break;
    }
    unsigned char c = *p;
    if (c == '"' || c == '\\') {
      t.s[o++] = '\\';
      t.s[o++] = (char)c;
    } else if (c == (unsigned char)NUL_MARK) {
      memcpy(t.s + o, "\\u0000", 6);
      o += 6;
    } else if (c < 0x20) {
      o += (size_t)snprintf(t.s + o, 7, "\\u%04x", c);
    } else {
      t.s[o++] = (char)c;
    }
  }
  t.s[o++] = '"';
  t.s[o] = '\0';
  return t;
}

/* What a bad value was, for "got ...". */
static text describe(const cJSON *v) {
  text t;
  if (!v || cJSON_IsNull(v))
    heed_fmt(t.s, sizeof t.s, "null");
  else if (cJSON_IsBool(v))
    heed_fmt(t.s, sizeof t.s, "%s", cJSON_IsTrue(v) ? "true" : "false");
  else if (cJSON_IsNumber(v))
    heed_fmt(t.s, sizeof t.s, "%.15g", v->valuedouble);
  else if (cJSON_IsString(v))
    return quote(v->valuestring);
  else if (cJSON_IsArray(v))
    heed_fmt(t.s, sizeof t.s, "an array");
  else
    heed_fmt(t.s, sizeof t.s, "an object");
  return t;
}

/* ---------- the body ---------- */

/* The offset of the first byte that is not valid UTF-8 (the tokenizer's
 * strict reading: no overlongs, surrogates or code points past U+10FFFF), or n. */
static size_t utf8_bad_at(const unsigned char *s, size_t n) {
  size_t i = 0, k;
  while (i < n && (k = tok_utf8_len(s + i, n - i))) i += k;
  return i;
}

/* Walks the body's strings counting \u0000 escapes; when out is given,
 * writes the body there with each as NUL_MARK. Returns the length written. */
static size_t mark_nuls(const char *s, size_t n, char *out, size_t *n_nul) {
  size_t o = 0;
  int in = 0;
  *n_nul = 0;
  for (size_t i = 0; i < n; i++) {
    char c = s[i];
    if (in && c == '\\' && i + 1 < n) {
      if (i + 5 < n && memcmp(s + i + 1, "u0000", 5) == 0) {
        ++*n_nul;
        if (out) out[o++] = NUL_MARK;
        i += 5;
        continue;
      }
      if (out) {
        out[o++] = c;
        out[o++] = s[i + 1];
      }
      i++;
      continue;
    }
    if (c == '"') in = !in;
    if (out) out[o++] = c;
  }
  return o;
}

static int bad_json(req *r, const char *t, size_t at) {
  size_t orig = at; /* where it is in the client's body: each mark was 6 bytes there */
  for (size_t i = 0; r->marked && i < at; i++)
    if (t[i] == NUL_MARK) orig += 5;
  return fail(r, "the request body is not valid JSON (near byte %zu)", orig);
}

/* r->root: the body, a JSON object. */
static int parse_body(req *r, const char *body, size_t len) {
  if (!body) len = 0;
  size_t bad = utf8_bad_at((const unsigned char *)body, len);
  if (bad < len) return fail(r, "the request body is not valid UTF-8 (byte %zu)", bad);
  const char *nul = len ? memchr(body, '\0', len) : NULL;
  if (nul) return fail(r, "the request body is not valid JSON (near byte %zu)", (size_t)(nul - body));
  size_t n_nul, n = len;
  mark_nuls(body, len, NULL, &n_nul);
  char *copy = NULL;
  const char *t = body;
  if (n_nul) {
    if (!(copy = malloc(len))) return oom(r);
    n = mark_nuls(body, len, copy, &n_nul);
    t = copy;
    r->marked = 1;
  }
  const char *end = NULL;
  r->root = cJSON_ParseWithLengthOpts(t, n, &end, 0);
  size_t at = end ? (size_t)(end - t) : 0;
  while (r->root && at < n && (t[at] == ' ' || t[at] == '\t' || t[at] == '\n' || t[at] == '\r')) at++;
  int rc = 0;
  if (!r->root || at < n) rc = bad_json(r, t, at);
  free(copy);
  if (!rc && !cJSON_IsObject(r->root)) rc = fail(r, "the request body must be a JSON object");
  return rc;
}

/* ---------- fields ---------- */

/* obj's member key; NULL when absent or null. A key given twice is an error:
 * cJSON would read the first, the chat template the last. */
static int get(req *r, const cJSON *obj, const char *path, const char *key, cJSON **out) {
  cJSON *found = NULL;
  *out = NULL;
  for (cJSON *c = obj->child; c; c = c->next)
    if (c->string && strcmp(c->string, key) == 0) {
      if (found) return fail(r, "%s is given twice", field(path, key).s);
      found = c;
    }
  *out = found && !cJSON_IsNull(found) ? found : NULL;
  return 0;
}

static int str_value(req *r, const cJSON *v, const char *name, const char **out) {
  *out = NULL;
  if (!cJSON_IsString(v)) return fail(r, "%s must be a string, got %s", name, describe(v).s);
  if (strchr(v->valuestring, NUL_MARK))
    return fail(r, "%s holds a NUL character (\\u0000); heed does not accept NUL in text", name);
  *out = v->valuestring;
  return 0;
}

/* *out: the string, or NULL when absent (an error when required). */
static int get_str(req *r, const cJSON *obj, const char *path, const char *key, int required, const char **out) {
  cJSON *v;
  *out = NULL;
  if (get(r, obj, path, key, &v)) return -1;
  if (!v) return required ? fail(r, "%s is required", field(path, key).s) : 0;
  return str_value(r, v, field(path, key).s, out);
}

static int get_kind(req *r, const cJSON *obj, const char *path, const char *key, int array, int required,
                    cJSON **out) {
  if (get(r, obj, path, key, out)) return -1;
  if (!*out) return required ? fail(r, "%s is required", field(path, key).s) : 0;
  if (array ? !cJSON_IsArray(*out) : !cJSON_IsObject(*out))
    return fail(r, "%s must be %s, got %s", field(path, key).s, array ? "an array" : "an object", describe(*out).s);
  return 0;
}
#define get_obj(r, obj, path, key, required, out) get_kind(r, obj, path, key, 0, required, out)
#define get_arr(r, obj, path, key, required, out) get_kind(r, obj, path, key, 1, required, out)

static int get_bool(req *r, const cJSON *obj, const char *path, const char *key, int *out) {
  cJSON *v;
  if (get(r, obj, path, key, &v)) return -1;
  if (!v) return 0;
  if (!cJSON_IsBool(v)) return fail(r, "%s must be true or false, got %s", field(path, key).s, describe(v).s);
  *out = cJSON_IsTrue(v);
  return 0;
}

/* A top-level integer in [lo, hi]; *present 0 when absent. */
static int get_int(req *r, const cJSON *obj, const char *key, double lo, double hi, double *out, int *present) {
  cJSON *v;
  *present = 0;
  if (get(r, obj, "", key, &v)) return -1;
  if (!v) return 0;
  double x = cJSON_IsNumber(v) ? v->valuedouble : NAN;
  if (!isfinite(x) || x != floor(x)) return fail(r, "%s must be an integer, got %s", key, describe(v).s);
  if (x < lo) return fail(r, "%s must be at least %.15g, got %.15g", key, lo, x);
  if (x > hi) return fail(r, "%s must be at most %.15g, got %.15g", key, hi, x);
  *out = x;
  *present = 1;
  return 0;
}

/* A top-level number in the range lo..hi (each end open or closed; hi
 * INFINITY: any finite number); *out left alone when absent. */
static int get_real(req *r, const cJSON *obj, const char *key, double lo, int lo_open, double hi, int hi_open,
                    float *out) {
  cJSON *v;
  if (get(r, obj, "", key, &v)) return -1;
  if (!v) return 0;
  if (!cJSON_IsNumber(v)) return fail(r, "%s must be a number, got %s", key, describe(v).s);
  double x = v->valuedouble;
  if (isfinite(x) && fabs(x) <= 3e38 && (lo_open ? x > lo : x >= lo) && (hi_open ? x < hi : x <= hi)) {
    *out = (float)x;
    return 0;
  }
  if (isinf(hi)) return fail(r, "%s must be a finite number greater than %g, got %s", key, lo, describe(v).s);
  if (!lo_open && !hi_open) return fail(r, "%s must be between %g and %g, got %s", key, lo, hi, describe(v).s);
  return fail(r, "%s must be %s %g and %s %g, got %s", key, lo_open ? "greater than" : "at least", lo,
              hi_open ? "less than" : "at most", hi, describe(v).s);
}

static int copy_str(req *r, const char *s, char **out) {
  if (!s) return 0;
  if (!(*out = strdup(s))) return oom(r);
  return 0;
}

static int add_stop(req *r, srv_params *p, const cJSON *v, const char *name) {
  const char *s;
  if (str_value(r, v, name, &s)) return -1;
  size_t n = strlen(s);
  if (!n) return fail(r, "%s must not be empty", name);
  if (n > MAX_STOP_BYTES)
    return fail(r, "%s is %zu bytes long; at most %d are accepted", name, n, MAX_STOP_BYTES);
  return copy_str(r, s, &p->stops[p->n_stops++]);
}

/* OpenAI stop (a string or an array of strings), Anthropic stop_sequences (an array). */
static int parse_stops(req *r, const cJSON *root, const char *key, int string_too, srv_params *p) {
  cJSON *v;
  if (get(r, root, "", key, &v)) return -1;
  if (!v) return 0;
  if (string_too && cJSON_IsString(v)) return add_stop(r, p, v, key);
  if (!cJSON_IsArray(v))
    return fail(r, "%s must be %san array of strings, got %s", key, string_too ? "a string or " : "", describe(v).s);
  int n = cJSON_GetArraySize(v);
  if (n > SRV_MAX_STOPS) return fail(r, "%s has %d strings; at most %d are accepted", key, n, SRV_MAX_STOPS);
  size_t i = 0;
  for (cJSON *s = v->child; s; s = s->next, i++)
    if (add_stop(r, p, s, element(key, i).s)) return -1;
  return 0;
}

/* What every API shares: sampling, stream, model. */
static int common(req *r, const cJSON *root, srv_api api, srv_params *p) {
  double x;
  int has;
  if (get_real(r, root, "temperature", 0, 0, api == SRV_API_MESSAGES ? 1 : 2, 0, &p->temperature) ||
      get_real(r, root, "top_p", 0, 1, 1, 0, &p->top_p) || get_real(r, root, "min_p", 0, 0, 1, 1, &p->min_p) ||
      get_real(r, root, "presence_penalty", -2, 0, 2, 0, &p->presence_penalty) ||
      get_real(r, root, "frequency_penalty", -2, 0, 2, 0, &p->frequency_penalty) ||
      get_real(r, root, "repetition_penalty", 0, 1, INFINITY, 0, &p->repetition_penalty))
    return -1;
  if (get_int(r, root, "top_k", 0, 2147483647.0, &x, &has)) return -1;
  if (has) p->top_k = (unsigned)x;
  cJSON *v;
  if (get(r, root, "", "seed", &v)) return -1;
  if (v) {
    x = cJSON_IsNumber(v) ? v->valuedouble : NAN;
    if (!isfinite(x) || x != floor(x)) return fail(r, "seed must be an integer, got %s", describe(v).s);
    if (x < -9223372036854775808.0 || x >= 18446744073709551616.0)
      return fail(r, "seed must be an integer from -2^63 to 2^64-1, got %s", describe(v).s);
    p->seed = x < 0 ? (uint64_t)(int64_t)x : (uint64_t)x; /* a negative seed is its two's complement */
    p->has_seed = 1;
  }
  const char *model;
  if (get_bool(r, root, "", "stream", &p->stream) || get_str(r, root, "", "model", 0, &model) ||
      copy_str(r, model, &p->model))
    return -1;
  return 0;
}

/* n and best_of: one choice per request. */
static int only_one(req *r, const cJSON *root, const char *key) {
  cJSON *v;
  if (get(r, root, "", key, &v)) return -1;
  if (v && !(cJSON_IsNumber(v) && v->valuedouble == 1))
    return fail(r, "%s must be 1 (one choice per request), got %s", key, describe(v).s);
  return 0;
}

/* What the two OpenAI APIs share beyond common(). */
static int openai(req *r, const cJSON *root, srv_params *p) {
  cJSON *v;
  const char *user;
  if (only_one(r, root, "n") || parse_stops(r, root, "stop", 1, p) || get_str(r, root, "", "user", 0, &user) ||
      copy_str(r, user, &p->user) || get_obj(r, root, "", "stream_options", 0, &v))
    return -1;
  int usage = 0;
  if (v && get_bool(r, v, "stream_options", "include_usage", &usage)) return -1;
  p->include_usage = p->stream && usage;
  if (get_obj(r, root, "", "response_format", 0, &v)) return -1;
  if (v) {
    const char *type;
    if (get_str(r, v, "response_format", "type", 1, &type)) return -1;
    if (!strcmp(type, "json_object") || !strcmp(type, "json_schema"))
      return fail(r,
                  "response_format %s is not supported: heed does not constrain output to JSON; ask for JSON in the "
                  "prompt instead",
                  type);
    if (strcmp(type, "text")) return fail(r, "response_format.type must be text, got %s", quote(type).s);
  }
  return 0;
}

/* max_tokens (or another name for it): 1..MAX_NEW_TOKENS; *out left alone when absent. */
static int max_tokens(req *r, const cJSON *root, const char *key, long *out, int *present) {
  double x;
  if (get_int(r, root, key, 1, (double)MAX_NEW_TOKENS, &x, present)) return -1;
  if (*present) *out = (long)x;
  return 0;
}

/* ---------- OpenAI chat bodies ---------- */

/* Moves item (a member of from) into to as key. */
static int move(req *r, cJSON *from, cJSON *item, cJSON *to, const char *key) {
  cJSON_DetachItemViaPointer(from, item);
  if (!cJSON_AddItemToObject(to, key, item)) {
    cJSON_Delete(item);
    return oom(r);
  }
  return 0;
}

static int is_blank(const char *s) {
  while (*s == ' ' || *s == '\t' || *s == '\n' || *s == '\r') s++;
  return !*s;
}

/* A content part type heed cannot read: the error saying so. */
static int unsupported_part(req *r, const char *path, const char *type) {
  if (!strcmp(type, "image_url") || !strcmp(type, "image") || !strcmp(type, "input_image"))
    return fail(r, "%s: images are not supported (type %s)", path, type);
  if (!strcmp(type, "input_audio") || !strcmp(type, "audio"))
    return fail(r, "%s: audio is not supported (type %s)", path, type);
  if (!strcmp(type, "document") || !strcmp(type, "file"))
    return fail(r, "%s: documents are not supported (type %s)", path, type);
  return 0;
}

static int check_parts(req *r, const cJSON *parts, const char *path) {
  size_t j = 0;
  for (const cJSON *part = parts->child; part; part = part->next, j++) {
    text pp = element(path, j);
    const char *type, *s;
    if (!cJSON_IsObject(part)) return fail(r, "%s must be an object, got %s", pp.s, describe(part).s);
    if (get_str(r, part, pp.s, "type", 1, &type)) return -1;
    if (!strcmp(type, "text")) {
      if (get_str(r, part, pp.s, "text", 1, &s)) return -1;
      continue;
    }
    if (unsupported_part(r, pp.s, type)) return -1;
    return fail(r, "%s.type must be text, got %s", pp.s, quote(type).s);
  }
  return 0;
}

/* A tool call's arguments given as a string: blank, or a JSON object's text. */
static int check_arguments(req *r, const char *s, const char *path) {
  if (is_blank(s)) return 0;
  size_t n = strlen(s);
  const char *end = NULL;
  cJSON *a = cJSON_ParseWithLengthOpts(s, n, &end, 0);
  size_t at = a && end ? (size_t)(end - s) : n;
  while (a && at < n && (s[at] == ' ' || s[at] == '\t' || s[at] == '\n' || s[at] == '\r')) at++;
  int ok = a && at == n, obj = cJSON_IsObject(a);
  cJSON_Delete(a);
  if (!ok) return fail(r, "%s is not valid JSON: %s", path, quote(s).s);
  if (!obj) return fail(r, "%s must be a JSON object's text, got %s", path, quote(s).s);
  return 0;
}

static int check_tool_calls(req *r, const cJSON *calls, const char *path) {
  size_t k = 0;
  for (const cJSON *c = calls->child; c; c = c->next, k++) {
    text cp = element(path, k);
    const char *s;
    cJSON *fn, *args;
    if (!cJSON_IsObject(c)) return fail(r, "%s must be an object, got %s", cp.s, describe(c).s);
    if (get_str(r, c, cp.s, "id", 0, &s) || get_str(r, c, cp.s, "type", 0, &s)) return -1;
    if (s && strcmp(s, "function")) return fail(r, "%s.type must be function, got %s", cp.s, quote(s).s);
    if (get_obj(r, c, cp.s, "function", 1, &fn)) return -1;
    text fp = field(cp.s, "function");
    if (get_str(r, fn, fp.s, "name", 1, &s) || get(r, fn, fp.s, "arguments", &args)) return -1;
    text ap = field(fp.s, "arguments");
    if (!args || cJSON_IsObject(args)) continue;
    if (!cJSON_IsString(args))
      return fail(r, "%s must be a string or an object, got %s", ap.s, describe(args).s);
    if (str_value(r, args, ap.s, &s) || check_arguments(r, s, ap.s)) return -1;
  }
  return 0;
}

static const char *const chat_roles[] = {"system", "developer", "user", "assistant", "tool"};

static int check_message(req *r, cJSON *m, size_t i) {
  text mp = element("messages", i);
  const char *role, *s;
  cJSON *rv, *content, *calls;
  if (!cJSON_IsObject(m)) return fail(r, "%s must be an object, got %s", mp.s, describe(m).s);
  if (get(r, m, mp.s, "role", &rv)) return -1;
  if (!rv) return fail(r, "%s.role is required", mp.s);
  if (str_value(r, rv, field(mp.s, "role").s, &role)) return -1;
  size_t k = 0;
  while (k < HEED_ARRAY_LEN(chat_roles) && strcmp(role, chat_roles[k])) k++;
  if (k == HEED_ARRAY_LEN(chat_roles))
    return fail(r, "%s.role must be one of system, developer, user, assistant, tool; got %s", mp.s, quote(role).s);
  int assistant = !strcmp(role, "assistant");
  if (get(r, m, mp.s, "tool_calls", &calls) || get(r, m, mp.s, "content", &content)) return -1;
  text cp = field(mp.s, "content"), tp = field(mp.s, "tool_calls");
  if (calls) {
    if (!assistant) return fail(r, "%s is only accepted in assistant messages (this one is %s)", tp.s, role);
    if (!cJSON_IsArray(calls)) return fail(r, "%s must be an array, got %s", tp.s, describe(calls).s);
    if (check_tool_calls(r, calls, tp.s)) return -1;
  }
  if (!content) {
    if (!assistant || !calls || !calls->child)
      return fail(r, "%s is required (it may be null only in an assistant message with tool_calls)", cp.s);
  } else if (cJSON_IsString(content)) {
    if (str_value(r, content, cp.s, &s)) return -1;
  } else if (cJSON_IsArray(content)) {
    if (check_parts(r, content, cp.s)) return -1;
  } else {
    return fail(r, "%s must be a string, an array of content parts or null, got %s", cp.s, describe(content).s);
  }
  if (get_str(r, m, mp.s, "tool_call_id", 0, &s) || get_str(r, m, mp.s, "name", 0, &s)) return -1;
  if (!strcmp(role, "developer")) cJSON_SetValuestring(rv, "system"); /* what templates know; shorter: in place */
  return 0;
}

/* tools (OpenAI's form) has one named name. */
static int has_tool(const cJSON *tools, const char *name) {
  for (const cJSON *t = tools ? tools->child : NULL; t; t = t->next) {
    const cJSON *fn = cJSON_GetObjectItemCaseSensitive(t, "function");
    const cJSON *n = cJSON_GetObjectItemCaseSensitive(fn, "name");
    if (cJSON_IsString(n) && !strcmp(n->valuestring, name)) return 1;
  }
  return 0;
}

static int check_tools(req *r, const cJSON *tools) {
  size_t i = 0;
  for (const cJSON *t = tools->child; t; t = t->next, i++) {
    text tp = element("tools", i);
    const char *s;
    cJSON *fn, *params;
    if (!cJSON_IsObject(t)) return fail(r, "%s must be an object, got %s", tp.s, describe(t).s);
    if (get_str(r, t, tp.s, "type", 0, &s)) return -1;
    if (s && strcmp(s, "function")) return fail(r, "%s.type must be function, got %s", tp.s, quote(s).s);
    if (get_obj(r, t, tp.s, "function", 1, &fn)) return -1;
    text fp = field(tp.s, "function");
    if (get_str(r, fn, fp.s, "name", 1, &s)) return -1;
    if (!s[0]) return fail(r, "%s.name must not be empty", fp.s);
    if (get_str(r, fn, fp.s, "description", 0, &s) || get_obj(r, fn, fp.s, "parameters", 0, &params)) return -1;
  }
  return 0;
}

/* tool_choice: *none when "none". */
static int check_tool_choice(req *r, const cJSON *root, const cJSON *tools, int *none) {
  cJSON *v, *fn;
  const char *s;
  *none = 0;
  if (get(r, root, "", "tool_choice", &v)) return -1;
  if (!v) return 0;
  if (cJSON_IsString(v)) {
    if (!strcmp(v->valuestring, "none")) *none = 1;
    else if (strcmp(v->valuestring, "auto") && strcmp(v->valuestring, "required"))
      return fail(r, "tool_choice must be none, auto, required or {\"type\": \"function\", ...}; got %s",
                  describe(v).s);
    return 0;
  }
  if (!cJSON_IsObject(v))
    return fail(r, "tool_choice must be a string or an object, got %s", describe(v).s);
  if (get_str(r, v, "tool_choice", "type", 1, &s)) return -1;
  if (strcmp(s, "function")) return fail(r, "tool_choice.type must be function, got %s", quote(s).s);
  if (get_obj(r, v, "tool_choice", "function", 1, &fn) || get_str(r, fn, "tool_choice.function", "name", 1, &s))
    return -1;
  if (!has_tool(tools, s)) return fail(r, "tool_choice.function.name %s names none of the tools", quote(s).s);
  return 0;
}

/* The body's messages: required, a non-empty array (either API). */
static int get_messages(req *r, const cJSON *root, cJSON **msgs) {
  if (get(r, root, "", "messages", msgs)) return -1;
  if (!*msgs) return fail(r, "messages is required");
  if (!cJSON_IsArray(*msgs) || !(*msgs)->child)
    return fail(r, "messages must be a non-empty array, got %s",
                cJSON_IsArray(*msgs) ? "an empty array" : describe(*msgs).s);
  return 0;
}

/* Checks an OpenAI chat body's messages, tools and template options and
 * moves them into *out, a new body for heed_chat_prompt. *tools_on: tools
 * offered and tool_choice not none. agp: pass add_generation_prompt on too. */
static int chat_body(req *r, cJSON *root, int agp, int *tools_on, cJSON **out) {
  cJSON *msgs, *tools, *kwargs, *v;
  int none, b;
  *tools_on = 0;
  if (get_messages(r, root, &msgs)) return -1;
  size_t i = 0;
  for (cJSON *m = msgs->child; m; m = m->next, i++)
    if (check_message(r, m, i)) return -1;
  if (get_arr(r, root, "", "tools", 0, &tools) || (tools && check_tools(r, tools)) ||
      check_tool_choice(r, root, tools, &none) || get_obj(r, root, "", "chat_template_kwargs", 0, &kwargs))
    return -1;
  cJSON *o = *out = cJSON_CreateObject();
  if (!o) return oom(r);
  if (move(r, root, msgs, o, "messages")) return -1;
  if (tools && tools->child && !none) {
    *tools_on = 1;
    if (move(r, root, tools, o, "tools")) return -1;
  }
  if (kwargs && move(r, root, kwargs, o, "chat_template_kwargs")) return -1;
  static const char *const flags[] = {"enable_thinking", "add_generation_prompt"};
  for (size_t f = 0; f < (agp ? 2u : 1u); f++) {
    if (get(r, root, "", flags[f], &v) || get_bool(r, root, "", flags[f], &b)) return -1;
    if (v && move(r, root, v, o, flags[f])) return -1;
  }
  return 0;
}

/* ---------- Anthropic messages bodies ---------- */

typedef struct sbuf {
  char *p;
  size_t n, cap;
} sbuf;

static int sb_add(req *r, sbuf *b, const char *s) {
  size_t n = strlen(s);
  if (b->n + n + 1 > b->cap) {
    size_t cap = b->cap ? b->cap : 64;
    while (cap < b->n + n + 1) cap *= 2;
    char *p = realloc(b->p, cap);
    if (!p) return oom(r);
    b->p = p;
    b->cap = cap;
  }
  memcpy(b->p + b->n, s, n + 1);
  b->n += n;
  return 0;
}

/* Adds {"role": role, "content": content} (content NULL: null) to msgs; *out the message. */
static int add_message(req *r, cJSON *msgs, const char *role, const char *content, cJSON **out) {
  cJSON *m = cJSON_CreateObject();
  if (!m || !cJSON_AddItemToArray(msgs, m)) {
    cJSON_Delete(m);
    return oom(r);
  }
  if (!cJSON_AddStringToObject(m, "role", role) ||
      !(content ? cJSON_AddStringToObject(m, "content", content) : cJSON_AddNullToObject(m, "content")))
    return oom(r);
  if (out) *out = m;
  return 0;
}

/* Text given as a string or an array of text blocks (joined by "\n"): system,
 * tool_result content. */
static int text_blocks(req *r, const cJSON *v, const char *path, sbuf *b) {
  const char *s;
  if (cJSON_IsString(v)) return str_value(r, v, path, &s) || sb_add(r, b, s);
  if (!cJSON_IsArray(v))
    return fail(r, "%s must be a string or an array of text blocks, got %s", path, describe(v).s);
  size_t j = 0;
  for (const cJSON *blk = v->child; blk; blk = blk->next, j++) {
    text bp = element(path, j);
    const char *type;
    if (!cJSON_IsObject(blk)) return fail(r, "%s must be an object, got %s", bp.s, describe(blk).s);
    if (get_str(r, blk, bp.s, "type", 1, &type)) return -1;
    if (strcmp(type, "text")) {
      if (unsupported_part(r, bp.s, type)) return -1;
      return fail(r, "%s.type must be text, got %s", bp.s, quote(type).s);
    }
    if (get_str(r, blk, bp.s, "text", 1, &s) || (j && sb_add(r, b, "\n")) || sb_add(r, b, s)) return -1;
  }
  return 0;
}

/* {"id": .., "type": "function", "function": {"name": .., "arguments": input}}, appended to *calls. */
static int add_tool_use(req *r, const cJSON *blk, const char *bp, cJSON **calls) {
  const char *id, *name;
  cJSON *input, *fn = NULL;
  if (get_str(r, blk, bp, "id", 1, &id) || get_str(r, blk, bp, "name", 1, &name) ||
      get_obj(r, blk, bp, "input", 0, &input))
    return -1;
  if (!*calls && !(*calls = cJSON_CreateArray())) return oom(r);
  cJSON *c = cJSON_CreateObject(), *args = input ? cJSON_Duplicate(input, 1) : cJSON_CreateObject();
  int ok = c && args && cJSON_AddStringToObject(c, "id", id) && cJSON_AddStringToObject(c, "type", "function") &&
           (fn = cJSON_AddObjectToObject(c, "function")) && cJSON_AddStringToObject(fn, "name", name);
  if (ok && cJSON_AddItemToObject(fn, "arguments", args))
    args = NULL;
  else
    ok = 0;
  cJSON_Delete(args);
  if (ok && cJSON_AddItemToArray(*calls, c)) return 0;
  cJSON_Delete(c);
  return oom(r);
}

/* {"role": "tool", "tool_call_id": .., "content": ..}, appended to msgs. */
static int add_tool_result(req *r, const cJSON *blk, const char *bp, cJSON *msgs) {
  const char *id;
  cJSON *content, *m;
  int is_error = 0;
  sbuf b = {0};
  if (get_str(r, blk, bp, "tool_use_id", 1, &id) || get(r, blk, bp, "content", &content) ||
      get_bool(r, blk, bp, "is_error", &is_error) || (is_error && sb_add(r, &b, "Error: ")) ||
      (content && text_blocks(r, content, field(bp, "content").s, &b)) ||
      add_message(r, msgs, "tool", b.p ? b.p : "", &m) || !cJSON_AddStringToObject(m, "tool_call_id", id)) {
    free(b.p);
    return r->st ? -1 : oom(r);
  }
  free(b.p);
  return 0;
}

/* One Anthropic message, appended to msgs as one or more OpenAI ones. */
static int convert_message(req *r, const cJSON *m, size_t i, cJSON *msgs) {
  text mp = element("messages", i);
  const char *role, *s;
  cJSON *content;
  if (!cJSON_IsObject(m)) return fail(r, "%s must be an object, got %s", mp.s, describe(m).s);
  if (get_str(r, m, mp.s, "role", 1, &role)) return -1;
  int assistant = !strcmp(role, "assistant");
  if (!assistant && strcmp(role, "user"))
    return fail(r, "%s.role must be user or assistant, got %s%s", mp.s, quote(role).s,
                strcmp(role, "system") ? "" : " (the system prompt goes in the top-level system field)");
  if (get(r, m, mp.s, "content", &content)) return -1;
  text cp = field(mp.s, "content");
  if (!content) return fail(r, "%s is required", cp.s);
  if (cJSON_IsString(content)) return str_value(r, content, cp.s, &s) || add_message(r, msgs, role, s, NULL);
  if (!cJSON_IsArray(content))
    return fail(r, "%s must be a string or an array of content blocks, got %s", cp.s, describe(content).s);
  sbuf b = {0};
  cJSON *calls = NULL, *out;
  size_t n_text = 0, n_results = 0, j = 0;
  int rc = 0;
  for (const cJSON *blk = content->child; blk && !rc; blk = blk->next, j++) {
    text bp = element(cp.s, j);
    const char *type;
    if (!cJSON_IsObject(blk)) {
      rc = fail(r, "%s must be an object, got %s", bp.s, describe(blk).s);
    } else if (get_str(r, blk, bp.s, "type", 1, &type)) {
      rc = -1;
    } else if (!strcmp(type, "text")) {
      /* an assistant's text was one stream, cut into blocks; a user's blocks are paragraphs */
      rc = get_str(r, blk, bp.s, "text", 1, &s) || (n_text++ && !assistant && sb_add(r, &b, "\n")) ||
           sb_add(r, &b, s);
    } else if (!strcmp(type, "tool_use")) {
      rc = assistant ? add_tool_use(r, blk, bp.s, &calls)
                     : fail(r, "%s: tool_use blocks belong in assistant messages", bp.s);
    } else if (!strcmp(type, "tool_result")) {
      rc = !assistant ? add_tool_result(r, blk, bp.s, msgs)
                      : fail(r, "%s: tool_result blocks belong in user messages", bp.s);
      n_results++;
    } else if (strcmp(type, "thinking") && strcmp(type, "redacted_thinking")) {
      rc = unsupported_part(r, bp.s, type) ? -1
                                           : fail(r, "%s: content blocks of type %s are not supported", bp.s,
                                                  quote(type).s);
    }
  }
  if (!rc && assistant) {
    /* no text: null beside tool calls, else an empty turn */
    rc = add_message(r, msgs, "assistant", n_text ? b.p : calls ? NULL : "", &out);
    if (!rc && calls) {
      if (cJSON_AddItemToObject(out, "tool_calls", calls))
        calls = NULL;
      else
        rc = oom(r);
    }
  } else if (!rc && n_text) {
    rc = add_message(r, msgs, "user", b.p, NULL);
  } else if (!rc && !n_results) {
    rc = fail(r, "%s is empty", cp.s);
  }
  cJSON_Delete(calls);
  free(b.p);
  return rc ? -1 : 0;
}

/* Anthropic tools, as OpenAI ones (*out NULL when none). */
static int convert_tools(req *r, const cJSON *root, cJSON **out) {
  cJSON *tools;
  *out = NULL;
  if (get_arr(r, root, "", "tools", 0, &tools)) return -1;
  if (!tools) return 0;
  cJSON *o = *out = cJSON_CreateArray();
  if (!o) return oom(r);
  size_t i = 0;
  for (const cJSON *t = tools->child; t; t = t->next, i++) {
    text tp = element("tools", i);
    const char *type, *name, *desc;
    cJSON *schema;
    if (!cJSON_IsObject(t)) return fail(r, "%s must be an object, got %s", tp.s, describe(t).s);
    if (get_str(r, t, tp.s, "type", 0, &type)) return -1;
    if (type && strcmp(type, "custom"))
      return fail(r, "%s: server tools are not supported (type %s)", tp.s, quote(type).s);
    if (get_str(r, t, tp.s, "name", 1, &name) || get_str(r, t, tp.s, "description", 0, &desc) ||
        get_obj(r, t, tp.s, "input_schema", 1, &schema))
      return -1;
    if (!name[0]) return fail(r, "%s.name must not be empty", tp.s);
    cJSON *w = cJSON_CreateObject(), *fn = NULL, *params = cJSON_Duplicate(schema, 1);
    int ok = w && params && cJSON_AddStringToObject(w, "type", "function") &&
             (fn = cJSON_AddObjectToObject(w, "function")) && cJSON_AddStringToObject(fn, "name", name) &&
             (!desc || cJSON_AddStringToObject(fn, "description", desc));
    if (ok && cJSON_AddItemToObject(fn, "parameters", params))
      params = NULL;
    else
      ok = 0;
    cJSON_Delete(params);
    if (!ok || !cJSON_AddItemToArray(o, w)) {
      cJSON_Delete(w);
      return oom(r);
    }
  }
  return 0;
}

/* Anthropic tool_choice: *none when {"type": "none"}. */
static int anthropic_tool_choice(req *r, const cJSON *root, const cJSON *tools, int *none) {
  cJSON *v;
  const char *type, *name;
  *none = 0;
  if (get(r, root, "", "tool_choice", &v)) return -1;
  if (!v) return 0;
  if (!cJSON_IsObject(v))
    return fail(r, "tool_choice must be an object such as {\"type\": \"auto\"}, got %s", describe(v).s);
  if (get_str(r, v, "tool_choice", "type", 1, &type)) return -1;
  if (!strcmp(type, "none")) {
    *none = 1;
  } else if (!strcmp(type, "tool")) {
    if (get_str(r, v, "tool_choice", "name", 1, &name)) return -1;
    if (!has_tool(tools, name)) return fail(r, "tool_choice.name %s names none of the tools", quote(name).s);
  } else if (strcmp(type, "auto") && strcmp(type, "any")) {
    return fail(r, "tool_choice.type must be one of auto, any, tool, none; got %s", quote(type).s);
  }
  return 0;
}

/* An Anthropic messages body (system, messages, tools, tool_choice) as a new
 * OpenAI-style chat body *out. */
static int messages_body(req *r, const cJSON *root, int *tools_on, cJSON **out) {
  cJSON *sys, *msgs, *tools = NULL;
  int none;
  *tools_on = 0;
  cJSON *o = *out = cJSON_CreateObject();
  cJSON *om = o ? cJSON_AddArrayToObject(o, "messages") : NULL;
  if (!om) return oom(r);
  if (get(r, root, "", "system", &sys)) return -1;
  if (sys) {
    sbuf b = {0};
    int rc = text_blocks(r, sys, "system", &b) || (b.n && add_message(r, om, "system", b.p, NULL));
    free(b.p);
    if (rc) return -1;
  }
  if (get_messages(r, root, &msgs)) return -1;
  size_t i = 0;
  for (const cJSON *m = msgs->child; m; m = m->next, i++)
    if (convert_message(r, m, i, om)) return -1;
  int rc = convert_tools(r, root, &tools) || anthropic_tool_choice(r, root, tools, &none);
  if (!rc && tools && tools->child && !none) {
    *tools_on = 1;
    if (cJSON_AddItemToObject(o, "tools", tools))
      tools = NULL;
    else
      rc = oom(r);
  }
  cJSON_Delete(tools);
  return rc ? -1 : 0;
}

/* ---------- the entry points ---------- */

/* o as JSON text (owned), NUL marks back as \u0000 escapes. */
static int print_json(req *r, const cJSON *o, char **out) {
  char *s = cJSON_PrintUnformatted(o);
  if (!s) return oom(r);
  size_t n = strlen(s), marks = 0;
  for (size_t i = 0; r->marked && i < n; i++) marks += s[i] == NUL_MARK;
  if (marks) {
    char *g = realloc(s, n + 5 * marks + 1);
    if (!g) {
      free(s);
      return oom(r);
    }
    s = g;
    for (size_t i = n + 1, o2 = n + 5 * marks + 1; i-- > 0;) { /* backwards, NUL included */
      if (s[i] == NUL_MARK) {
        o2 -= 6;
        memcpy(s + o2, "\\u0000", 6);
      } else {
        s[--o2] = s[i];
      }
    }
  }
  *out = s;
  return 0;
}

void srv_params_free(srv_params *p) {
  if (!p) return;
  for (int i = 0; i < p->n_stops && i < SRV_MAX_STOPS; i++) free(p->stops[i]);
  free(p->model);
  free(p->chat_json);
  free(p->prompt);
  free(p->user);
  memset(p, 0, sizeof *p);
}

static int chat_request(req *r, srv_params *p) {
  cJSON *chat = NULL;
  double x;
  int has;
  const cJSON *root = r->root;
  if (openai(r, root, p) || max_tokens(r, root, "max_tokens", &p->max_tokens, &has) ||
      max_tokens(r, root, "max_completion_tokens", &p->max_tokens, &has) ||
      get_bool(r, root, "", "logprobs", &p->logprobs) ||
      get_int(r, root, "top_logprobs", 0, SRV_MAX_TOP_LOGPROBS, &x, &has))
    return -1;
  if (has && x > 0 && !p->logprobs) return fail(r, "top_logprobs needs logprobs: true");
  if (has && p->logprobs) p->top_logprobs = (unsigned)x;
  int rc = chat_body(r, r->root, 0, &p->tools, &chat) || print_json(r, chat, &p->chat_json);
  cJSON_Delete(chat);
  return rc ? -1 : 0;
}

static int completions_request(req *r, srv_params *p) {
  cJSON *v;
  const char *s;
  double x;
  int has, echo = 0;
  const cJSON *root = r->root;
  p->max_tokens = 16; /* OpenAI's default for completions */
  if (openai(r, root, p) || only_one(r, root, "best_of") || max_tokens(r, root, "max_tokens", &p->max_tokens, &has) ||
      get_int(r, root, "logprobs", 0, 5, &x, &has))
    return -1;
  if (has) {
    p->logprobs = 1;
    p->top_logprobs = (unsigned)x;
  }
  if (get_bool(r, root, "", "echo", &echo)) return -1;
  if (echo) return fail(r, "echo is not supported: heed does not return the prompt with the completion");
  if (get(r, root, "", "suffix", &v)) return -1;
  if (v) return fail(r, "suffix is not supported: heed does not fill in the middle (got %s)", describe(v).s);
  if (get(r, root, "", "prompt", &v)) return -1;
  if (!v) return fail(r, "prompt is required");
  if (cJSON_IsArray(v)) {
    int n = cJSON_GetArraySize(v);
    if (n != 1 || !cJSON_IsString(v->child))
      return fail(r, "prompt must be a string or an array of one string; got an array of %d %s", n,
                  n == 1 ? describe(v->child).s : "items");
    if (str_value(r, v->child, "prompt[0]", &s)) return -1;
  } else if (str_value(r, v, "prompt", &s)) {
    return -1;
  }
  p->prompt_len = strlen(s);
  return copy_str(r, s, &p->prompt);
}

static int messages_request(req *r, srv_params *p) {
  cJSON *chat = NULL, *meta;
  const char *user;
  int has;
  const cJSON *root = r->root;
  if (max_tokens(r, root, "max_tokens", &p->max_tokens, &has)) return -1;
  if (!has) return fail(r, "max_tokens is required");
  if (parse_stops(r, root, "stop_sequences", 0, p) || get_obj(r, root, "", "metadata", 0, &meta) ||
      (meta && (get_str(r, meta, "metadata", "user_id", 0, &user) || copy_str(r, user, &p->user))))
    return -1;
  int rc = messages_body(r, root, &p->tools, &chat) || print_json(r, chat, &p->chat_json);
  cJSON_Delete(chat);
  return rc ? -1 : 0;
}

heed_status srv_parse_request(srv_api api, const char *body, size_t len, srv_params *out, heed_error *err) {
  req r = {.err = err};
  if (!out) return heed_err_set(err, HEED_E_INVALID, "srv_parse_request: out is NULL");
  memset(out, 0, sizeof *out);
  srv_params p = {.api = api, .max_tokens = -1, .temperature = 1, .top_p = 1, .repetition_penalty = 1};
  int rc = parse_body(&r, body, len) || common(&r, r.root, api, &p);
  if (!rc) {
    switch (api) {
    case SRV_API_CHAT: rc = chat_request(&r, &p); break;
    case SRV_API_COMPLETIONS: rc = completions_request(&r, &p); break;
    case SRV_API_MESSAGES: rc = messages_request(&r, &p); break;
    default: rc = fail(&r, "srv_parse_request: unknown API %d", (int)api);
    }
  }
  cJSON_Delete(r.root);
  if (rc) {
    srv_params_free(&p);
    return r.st;
  }
  *out = p;
  return HEED_OK;
}

heed_status srv_parse_tokenize(const char *body, size_t len, int anthropic, char **chat_json, char **content,
                               heed_error *err) {
  req r = {.err = err};
  if (!chat_json || !content) return heed_err_set(err, HEED_E_INVALID, "srv_parse_tokenize: an output is NULL");
  *chat_json = *content = NULL;
  cJSON *chat = NULL, *msgs;
  const char *s = NULL;
  int tools_on;
  int rc = parse_body(&r, body, len);
  if (!rc && anthropic) {
    rc = messages_body(&r, r.root, &tools_on, &chat);
  } else if (!rc) {
    rc = get(&r, r.root, "", "messages", &msgs) || get_str(&r, r.root, "", "content", 0, &s);
    if (!rc && s && msgs) rc = fail(&r, "give either content or messages, not both");
    else if (!rc && !s && !msgs) rc = fail(&r, "content or messages is required");
    else if (!rc && s) rc = copy_str(&r, s, content);
    else if (!rc) rc = chat_body(&r, r.root, 1, &tools_on, &chat);
  }
  if (!rc && chat) rc = print_json(&r, chat, chat_json);
  cJSON_Delete(chat);
  cJSON_Delete(r.root);
  if (rc) {
    free(*chat_json);
    free(*content);
    *chat_json = *content = NULL;
    return r.st;
  }
  return HEED_OK;
}
