/* fuzz/fuzz_template.c - the chat-template interpreter on arbitrary input.
 *
 * Input: one mode byte, then the template's bytes up to the first NUL, then a
 * JSON text: a chat request (mode bit 0 set: heed_chat_render) or a context
 * object (heed_template_render). Mode bit 1 adds trusted variables. The
 * render runs under small limits (1 MiB of text, 64 MiB of memory, 2M steps)
 * so that every input ends quickly.
 *
 * Checks, besides the sanitizers:
 *   - parse and render fail only with a message ("template..." / "chat
 *     request..."), never HEED_E_INTERNAL, and leave *out zeroed;
 *   - a render's text is NUL-terminated at its length, within the limit, and
 *     its spans tile it exactly, neighbours differing;
 *   - rendering again gives the same text and spans (no hidden state).
 * A render that fails (often: the JSON half was mutated) is followed by one
 * without a context, to reach the evaluator anyway. */
#include "fuzz/fuzz_common.h"
#include "heed/chat.h"
#include "heed/template.h"

static heed_status run(const heed_template *t, int chat, const char *json, size_t jn, const heed_template_var *vars,
                       size_t nv, heed_template_text *out, heed_error *err) {
  heed_template_options o;
  heed_template_options_init(&o);
  o.max_output = 1 << 20;
  o.max_memory = 64 << 20;
  o.max_steps = 2000000;
  o.flags = HEED_TEMPLATE_FIXED_TIME;
  o.now = 1721952000;
  return chat ? heed_chat_render(t, json, jn, vars, nv, &o, out, err)
              : heed_template_render(t, json, jn, vars, nv, &o, out, err);
}

static void check_text(const heed_template_text *t) {
  FZ_CHECK(t->text && t->text[t->length] == '\0', "text not terminated at its length %zu", t->length);
  FZ_CHECK(t->length <= (1u << 20), "text of %zu bytes past the 1 MiB limit", t->length);
  size_t at = 0;
  for (size_t i = 0; i < t->n_spans; i++) {
    FZ_CHECK(t->spans[i].offset == at && t->spans[i].length > 0, "span %zu at %zu+%zu, expected offset %zu", i,
             t->spans[i].offset, t->spans[i].length, at);
    FZ_CHECK(i == 0 || t->spans[i].untrusted != t->spans[i - 1].untrusted, "spans %zu and %zu have the same flag",
             i - 1, i);
    at += t->spans[i].length;
  }
  FZ_CHECK(at == t->length, "spans cover %zu of %zu bytes", at, t->length);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (!size) return 0;
  uint8_t mode = data[0];
  const char *src = (const char *)data + 1;
  size_t n = size - 1;
  const char *nul = memchr(src, '\0', n);
  size_t tn = nul ? (size_t)(nul - src) : n;
  const char *json = nul ? nul + 1 : "";
  size_t jn = nul ? n - tn - 1 : 0;
  heed_template *t = NULL;
  heed_error err = {0};
  heed_status st = heed_template_parse(src, tn, &t, &err);
  fz_stat("parse");
  if (st) {
    FZ_CHECK(st != HEED_E_INTERNAL, "parse: internal error: %s", err.msg);
    FZ_CHECK(t == NULL, "a failed parse returned a template");
    FZ_CHECK(strncmp(err.msg, "template", 8) == 0, "parse error without a message: '%s'", err.msg);
    return 0;
  }
  fz_stat("parsed");
  heed_template_var vars[] = {{"bos_token", "<s>"}, {"eos_token", "</s>"}, {"messages", "trusted"}};
  size_t nv = mode & 2 ? 3 : 0;
  int chat = mode & 1;
  heed_template_text a, b;
  st = run(t, chat, json, jn, vars, nv, &a, &err);
  if (st) {
    fz_stat("render failed");
    FZ_CHECK(st != HEED_E_INTERNAL, "render: internal error: %s", err.msg);
    FZ_CHECK(a.text == NULL && a.spans == NULL && a.length == 0, "a failed render left output");
    FZ_CHECK(err.msg[0], "render error without a message");
  } else {
    fz_stat("rendered");
    check_text(&a);
  }
  heed_error err2 = {0};
  heed_status st2 = run(t, chat, json, jn, vars, nv, &b, &err2);
  FZ_CHECK(st2 == st, "second render: %s, first %s", heed_status_name(st2), heed_status_name(st));
  if (!st) {
    FZ_CHECK(a.length == b.length && memcmp(a.text, b.text, a.length) == 0, "second render gave other text");
    FZ_CHECK(a.n_spans == b.n_spans && (!a.n_spans || memcmp(a.spans, b.spans, a.n_spans * sizeof *a.spans) == 0),
             "second render gave other spans");
  } else {
    FZ_CHECK(strcmp(err.msg, err2.msg) == 0, "second render failed otherwise: '%s' vs '%s'", err2.msg, err.msg);
  }
  heed_template_text_free(&a);
  heed_template_text_free(&b);
  if (st) { /* a mutated JSON text fails early: the template gets rendered without it too */
    st = run(t, 0, NULL, 0, vars, nv, &a, &err);
    fz_stat(st ? "bare render failed" : "bare rendered");
    FZ_CHECK(st != HEED_E_INTERNAL, "render: internal error: %s", err.msg);
    if (!st) check_text(&a);
    heed_template_text_free(&a);
  }
  heed_template_free(t);
  return 0;
}
