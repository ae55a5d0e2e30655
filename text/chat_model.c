/* text/chat_model.c - a model's chat format: its template (or a built-in)
 * compiled once, the special-token texts it may use, and the step from a chat
 * request to prompt tokens. */
#include <stdlib.h>
#include <string.h>

#include "heed/chat.h"
#include "runtime/internal.h"

/* The trusted variables apply_chat_template takes from the tokenizer's
 * special tokens map. */
enum { CHAT_N_VARS = 4 };

struct heed_chat {
  heed_template *tmpl;
  const heed_tokenizer *tok;
  const char *name; /* "gguf" or a built-in's name (static) */
  heed_template_var vars[CHAT_N_VARS];
  char *values[CHAT_N_VARS];
  size_t n_vars;
};

void heed_chat_free(heed_chat *c) {
  if (!c) return;
  heed_template_free(c->tmpl);
  for (size_t i = 0; i < c->n_vars; i++) free(c->values[i]);
  free(c);
}

const char *heed_chat_name(const heed_chat *c) { return c ? c->name : NULL; }

/* name = the text of special token id, when the model has it. */
static heed_status add_var(heed_chat *c, const char *name, heed_token id, heed_error *err) {
  if (id == HEED_TOKEN_NONE) return HEED_OK;
  const char *bytes;
  size_t len;
  if (heed_tokenizer_piece(c->tok, id, HEED_DETOK_SPECIAL, &bytes, &len) != HEED_OK)
    return heed_err_set(err, HEED_E_RANGE, "chat: %s id %d is not in the vocabulary", name, (int)id);
  char *v = malloc(len + 1);
  if (!v) return heed_err_set(err, HEED_E_NOMEM, "chat: out of memory");
  memcpy(v, bytes, len);
  v[len] = 0;
  if (strlen(v) != len) { /* a NUL inside: not a text a template can be given */
    free(v);
    return HEED_OK;
  }
  c->values[c->n_vars] = v;
  c->vars[c->n_vars].name = name;
  c->vars[c->n_vars].value = v;
  c->n_vars++;
  return HEED_OK;
}

heed_status heed_chat_open(const heed_gguf *g, const heed_tokenizer *tok, const char *name, heed_chat **out,
                           heed_error *err) {
  if (!out) return heed_err_set(err, HEED_E_INVALID, "heed_chat_open: out is NULL");
  *out = NULL;
  if (!g || !tok) return heed_err_set(err, HEED_E_INVALID, "heed_chat_open: a GGUF file and its tokenizer are needed");
  heed_gguf_str src = {0};
  int use_gguf = 0;
  if (!name || strcmp(name, "gguf") == 0) {
    heed_status st = heed_gguf_get_str(g, "tokenizer.chat_template", &src);
    if (st == HEED_OK) {
      use_gguf = 1;
    } else if (st != HEED_E_NOT_FOUND) {
      return heed_err_set(err, HEED_E_INVALID, "chat: tokenizer.chat_template is not a string");
    } else if (name) {
      return heed_err_set(err, HEED_E_NOT_FOUND,
                          "chat: the model has no chat template "
                          "(tokenizer.chat_template); choose a built-in: %s",
                          HEED_CHAT_BUILTIN_NAMES);
    } else {
      heed_gguf_str arch = {0};
      char a[64] = "";
      if (heed_gguf_get_str(g, "general.architecture", &arch) == HEED_OK && arch.len < sizeof a)
        memcpy(a, arch.ptr, (size_t)arch.len), a[arch.len] = 0;
      name = heed_chat_builtin_for_arch(a[0] ? a : NULL);
    }
  }
  heed_chat *c = calloc(1, sizeof *c);
  if (!c) return heed_err_set(err, HEED_E_NOMEM, "chat: out of memory");
  c->tok = tok;
  heed_status st;
  if (use_gguf) {
    c->name = "gguf";
    heed_error e;
    st = heed_template_parse(src.ptr, (size_t)src.len, &c->tmpl, &e);
    if (st) heed_err_set(err, st, "the model's chat template (tokenizer.chat_template): %s", e.msg);
  } else {
    const char *bsrc;
    st = heed_chat_builtin(name, &bsrc, err);
    if (!st) {
      static const char *const names[] = {"chatml", "gemma", "llama3"};
      for (size_t i = 0; i < HEED_ARRAY_LEN(names); i++)
        if (strcmp(names[i], name) == 0) c->name = names[i];
      heed_error e;
      st = heed_template_parse(bsrc, strlen(bsrc), &c->tmpl, &e);
      if (st) heed_err_set(err, HEED_E_INTERNAL, "built-in chat template '%s': %s", name, e.msg);
      else if (!c->name) st = heed_err_set(err, HEED_E_INTERNAL, "built-in chat template '%s' has no name", name);
    }
  }
  heed_tokenizer_info info;
  heed_tokenizer_get_info(tok, &info);
  if (!st) st = add_var(c, "bos_token", info.bos, err);
  if (!st) st = add_var(c, "eos_token", info.eos, err);
  if (!st) st = add_var(c, "unk_token", info.unk, err);
  if (!st) st = add_var(c, "pad_token", info.pad, err);
  if (st) {
    heed_chat_free(c);
    return st;
  }
  *out = c;
  return HEED_OK;
}

heed_status heed_chat_prompt(const heed_chat *c, const char *request_json, size_t len, const heed_template_options *opt,
                             heed_template_text *text, heed_tokens *ids, heed_error *err) {
  if (text) memset(text, 0, sizeof *text);
  if (!c || !ids) return heed_err_set(err, HEED_E_INVALID, "heed_chat_prompt: chat and ids are needed");
  heed_template_text t;
  heed_status st = heed_chat_render(c->tmpl, request_json, len, c->vars, c->n_vars, opt, &t, err);
  if (st) return st;
  size_t n0 = ids->n;
  st = heed_tokenizer_encode_spans(c->tok, t.text, t.length, t.spans, t.n_spans, HEED_TOKENIZE_PARSE_SPECIAL, ids, err);
  if (st) {
    ids->n = n0;
    heed_template_text_free(&t);
    return st;
  }
  if (text) *text = t;
  else heed_template_text_free(&t);
  return HEED_OK;
}
