/* tests/test_template.c - the chat-template interpreter (text/tmpl_*.c,
 * text/chat.c): lexing and whitespace rules, parsing, evaluation, errors with
 * their lines, limits, untrusted spans, the chat layer and the built-in
 * templates. tests/template_oracle.py compares with jinja2 at large; these
 * pin behaviour down case by case. */
#include <criterion/criterion.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "heed/chat.h"
#include "heed/template.h"
#include "tests/test_util.h"

/* Renders src with a context; returns the status, text in *out (caller frees). */
static heed_status render_ex(const char *src, const char *ctx, const heed_template_var *vars, size_t nv,
                             const heed_template_options *o, heed_template_text *out, heed_error *err) {
  heed_template *t = NULL;
  heed_status st = heed_template_parse(src, strlen(src), &t, err);
  if (st) {
    memset(out, 0, sizeof *out);
    return st;
  }
  st = heed_template_render(t, ctx, ctx ? strlen(ctx) : 0, vars, nv, o, out, err);
  heed_template_free(t);
  return st;
}

/* The rendered text (static buffer) or "ERR:<message>". */
static const char *R(const char *src, const char *ctx) {
  static char buf[8192];
  heed_template_text out;
  heed_error err;
  if (render_ex(src, ctx, NULL, 0, NULL, &out, &err)) {
    snprintf(buf, sizeof buf, "ERR:%s", err.msg);
    return buf;
  }
  snprintf(buf, sizeof buf, "%s", out.text);
  heed_template_text_free(&out);
  return buf;
}

#define EXPECT(src, ctx, want) cr_expect_str_eq(R(src, ctx), want, "template %s", src)

/* Renders and expects failure: the status, with msg containing `part`. */
static void expect_error(const char *src, const char *ctx, heed_status want, const char *part) {
  heed_template_text out;
  heed_error err = {0};
  heed_status st = render_ex(src, ctx, NULL, 0, NULL, &out, &err);
  cr_expect_eq(st, want, "template %s: status %s, want %s (%s)", src, heed_status_name(st), heed_status_name(want),
               err.msg);
  cr_expect(strstr(err.msg, part) != NULL, "template %s: message '%s' lacks '%s'", src, err.msg, part);
  cr_expect_null(out.text);
  heed_template_text_free(&out);
}

/* ---------- lexer: whitespace ---------- */

Test(template_lex, trim_and_lstrip_blocks) {
  EXPECT("a\n  {% if true %}\n  b\n  {% endif %}\nc", NULL, "a\n  b\nc");
  EXPECT("{% if true %}x{% endif %}\n", NULL, "x"); /* final newline dropped */
  EXPECT("x\n\n", NULL, "x\n");                     /* only one */
  EXPECT("  {{ 'v' }}  \n", NULL, "  v  ");         /* lstrip is for blocks only */
  EXPECT("a  {%- if true -%}  b  {%- endif -%}  c", NULL, "abc");
  EXPECT("a\n  {%+ if true %}b{% endif +%}\nc", NULL, "a\n  b\nc");
  EXPECT("a {{- 'x' -}} b", NULL, "axb");
  EXPECT("a\n{# comment #}\nb", NULL, "a\nb");
  EXPECT("a {#- c -#} b", NULL, "ab");
  EXPECT("x\r\ny\rz", NULL, "x\ny\nz");
  EXPECT("{% raw %}{{ not }} {% if %}{% endraw %}", NULL, "{{ not }} {% if %}");
  EXPECT("a\u3000{%- if true %}b{% endif %}", NULL, "ab"); /* Unicode blanks count as whitespace */
}

Test(template_lex, literals) {
  EXPECT("{{ 'a\\n\\t\\x41\\u00e9\\101' }}", NULL,
         "a\n\tA\xc3\xa9"
         "A");
  EXPECT("{{ \"it's\" ~ 'say \"x\"' }}", NULL, "it'ssay \"x\"");
  EXPECT("{{ 1_000 + 0x10 + 0o10 + 0b11 }}|{{ 1.5e3 }}|{{ 2.0 }}", NULL, "1027|1500.0|2.0");
  EXPECT("{{ 'a' 'b' }}", NULL, "ab");
}

/* ---------- evaluation ---------- */

Test(template_eval, arithmetic_like_python) {
  EXPECT("{{ 7 // 2 }} {{ -7 // 2 }} {{ -7 % 3 }} {{ 7 / 2 }} {{ 2 ** 10 }} {{ -2 ** 2 }} {{ 2 ** -1 }}", NULL,
         "3 -4 2 3.5 1024 4 0.5");
  EXPECT("{{ 0.1 + 0.2 }} {{ 1e16 }} {{ 1e-5 }} {{ 1e15 }} {{ 1 == 1.0 }}", NULL,
         "0.30000000000000004 1e+16 1e-05 1000000000000000.0 True");
  EXPECT("{{ 'ab' * 3 }}{{ [1] + [2] }}{{ 1 ~ none ~ true }}", NULL, "ababab[1, 2]1NoneTrue");
}

Test(template_eval, values_print_as_python) {
  EXPECT("{{ [1, 'a', none, true, 1.5, {'k': \"it's\"}] }} {{ (1,) }}", NULL,
         "[1, 'a', None, True, 1.5, {'k': \"it's\"}] (1,)");
  EXPECT("{{ x }}|{{ q.y is defined }}|{{ none.y }}", "{\"q\": 1}", "|False|");
}

Test(template_eval, loops) {
  EXPECT("{% for x in [3, 1, 2] %}{{ loop.index }}{{ loop.first }}{{ loop.last }}{{ loop.revindex }};{% endfor %}",
         NULL, "1TrueFalse3;2FalseFalse2;3FalseTrue1;");
  EXPECT("{% for x in [1, 2, 3] if x != 2 %}{{ x }}/{{ loop.length }}{% endfor %}", NULL, "1/23/2");
  EXPECT("{% for x in [] %}a{% else %}empty{% endfor %}", NULL, "empty");
  EXPECT("{% for k, v in {'a': 1, 'b': 2}.items() %}{{ k }}{{ v }}{% endfor %}", NULL, "a1b2");
  EXPECT(
      "{% for x in [1, 2, 3, 4] %}{% if x == 2 %}{% continue %}{% endif %}{% if x == 4 %}{% break %}{% endif %}{{ x }}"
      "{% endfor %}",
      NULL, "13");
  EXPECT("{% for x in [1, 2] %}{{ loop.previtem }}-{{ loop.nextitem }};{% endfor %}", NULL, "-2;1-;");
}

Test(template_eval, scoping_and_namespace) {
  EXPECT("{% set x = 0 %}{% for i in [1, 2] %}{% set x = i %}{% endfor %}{{ x }}", NULL, "0");
  EXPECT("{% set ns = namespace(x=0) %}{% for i in [1, 2] %}{% set ns.x = ns.x + i %}{% endfor %}{{ ns.x }}", NULL,
         "3");
  EXPECT("{% if true %}{% set y = 5 %}{% endif %}{{ y }}", NULL, "5");
  EXPECT("{% set b %}in {{ 1 + 1 }}{% endset %}[{{ b }}]", NULL, "[in 2]");
}

Test(template_eval, macros) {
  EXPECT("{% macro g(n, p='!') %}hi {{ n }}{{ p }}{% endmacro %}{{ g('a') }} {{ g('b', '?') }} {{ g(p='.', n='c') }}",
         NULL, "hi a! hi b? hi c.");
  EXPECT("{% macro f(k) %}{% if k > 0 %}{{ k }}{{ f(k - 1) }}{% endif %}{% endmacro %}{{ f(3) }}", NULL, "321");
}

Test(template_eval, filters_and_methods) {
  EXPECT("{{ '  x  '|trim }}|{{ 'a,b'.split(',') }}|{{ ['b', 'A', 'a']|sort|join }}|{{ 'Hi'|upper }}", NULL,
         "x|['a', 'b']|Aab|HI");
  EXPECT("{{ {'b': 1, 'a': 'é'}|tojson }}|{{ [1, 2]|tojson(indent=2) }}", NULL,
         "{\"b\": 1, \"a\": \"\xc3\xa9\"}|[\n  1,\n  2\n]");
  EXPECT("{{ x|default('d') }}|{{ ''|default('d', true) }}|{{ [1, 2, 3]|length }}|{{ 'héllo'|length }}", NULL,
         "d|d|3|5");
  EXPECT("{{ 'abc'.startswith('ab') }}{{ 'x\\n'.rstrip('\\n') }}{{ 'a</think>b'.split('</think>')[-1] }}", NULL,
         "Truexb");
  EXPECT("{{ [{'n': 'x', 'k': 1}, {'n': 'y', 'k': 0}]|selectattr('k')|map(attribute='n')|list }}", NULL, "['x']");
}

Test(template_eval, strftime_now_uses_the_fixed_time) {
  heed_template_options o;
  heed_template_options_init(&o);
  o.flags = HEED_TEMPLATE_FIXED_TIME;
  o.now = 1721952000; /* 2024-07-26 00:00:00 UTC */
  heed_template_text out;
  heed_error err;
  cr_assert_eq(render_ex("{{ strftime_now('%d %b %Y %H:%M') }}", NULL, NULL, 0, &o, &out, &err), HEED_OK, "%s",
               err.msg);
  cr_expect_str_eq(out.text, "26 Jul 2024 00:00");
  heed_template_text_free(&out);
}

/* ---------- errors name the line ---------- */

Test(template_errors, syntax_errors_name_line_and_expectation) {
  expect_error("line1\nline2\n{{ 1 + }}", NULL, HEED_E_INVALID, "template line 3:");
  expect_error("{% for x in y %}\n{% if x %}\n", NULL, HEED_E_INVALID, "expected 'elif' or 'else' or 'endif'");
  expect_error("{% for x in y %}", NULL, HEED_E_INVALID, "'endfor'");
  expect_error("a\n{% endif %}", NULL, HEED_E_INVALID, "template line 2: unknown tag 'endif'");
  expect_error("{{ (1, 2 }}", NULL, HEED_E_INVALID, "unexpected '}', expected ')'");
  expect_error("{{ 'open }}", NULL, HEED_E_INVALID, "unterminated string");
  expect_error("{% break %}", NULL, HEED_E_INVALID, "'break' outside loop");
  expect_error("{# never closed", NULL, HEED_E_INVALID, "missing end of comment tag");
}

Test(template_errors, unknown_and_unsupported_names) {
  expect_error("\n\n{{ x|wordwrap }}", NULL, HEED_E_UNSUPPORTED, "template line 3: filter 'wordwrap' is not supported");
  expect_error("{{ x|frobnicate }}", NULL, HEED_E_INVALID, "unknown filter 'frobnicate'");
  expect_error("{{ x is frob }}", NULL, HEED_E_INVALID, "unknown test 'frob'");
  expect_error("{% include 'x' %}", NULL, HEED_E_UNSUPPORTED, "tag 'include' is not supported");
  expect_error("{% do x %}", NULL, HEED_E_INVALID, "unknown tag 'do'");
}

Test(template_errors, raise_exception_and_runtime_errors) {
  expect_error("ok\n{{ raise_exception('roles must alternate') }}", NULL, HEED_E_INVALID,
               "template line 2: raise_exception: roles must alternate");
  expect_error("{{ x.y }}", NULL, HEED_E_INVALID, "'x' is undefined");
  expect_error("{{ 1 + 'a' }}", NULL, HEED_E_INVALID, "unsupported operand");
  expect_error("{{ 1 / 0 }}", NULL, HEED_E_INVALID, "division by zero");
  expect_error("{{ [].append(1) }}", NULL, HEED_E_INVALID, "unsafe");
}

Test(template_errors, bad_context) {
  expect_error("x", "[1, 2]", HEED_E_INVALID, "JSON object");
  expect_error("x", "{\"a\": ", HEED_E_INVALID, "template context");
  expect_error("x", "{\"a\": \"\\ud800\"}", HEED_E_INVALID, "surrogate");
}

/* ---------- limits ---------- */

Test(template_limits, deep_nesting_fails_cleanly) {
  size_t n = 20000;
  char *src = malloc(2 * n + 16);
  strcpy(src, "{{ ");
  size_t k = 3;
  for (size_t i = 0; i < n; i++) src[k++] = '(';
  src[k++] = '1';
  for (size_t i = 0; i < n; i++) src[k++] = ')';
  strcpy(src + k, " }}");
  expect_error(src, NULL, HEED_E_RANGE, "nested");
  for (size_t i = 0; i < n; i++) src[3 + i] = '[';
  src[3 + n] = '1';
  for (size_t i = 0; i < n; i++) src[4 + n + i] = ']';
  expect_error(src, NULL, HEED_E_RANGE, "nested");
  free(src);
  /* not x 10000 and unary minus chains */
  char *nots = malloc(6 * n + 16);
  strcpy(nots, "{{ ");
  k = 3;
  for (size_t i = 0; i < n; i++) k += (size_t)sprintf(nots + k, "not ");
  strcpy(nots + k, "1 }}");
  expect_error(nots, NULL, HEED_E_RANGE, "nested");
  free(nots);
}

Test(template_limits, recursion_and_loops_and_output) {
  expect_error("{% macro r(k) %}{{ r(k + 1) }}{% endmacro %}{{ r(0) }}", NULL, HEED_E_RANGE, "nested");
  expect_error("{{ range(10**12)|length }}", NULL, HEED_E_RANGE, "range too big");
  expect_error("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}", NULL, HEED_E_RANGE,
               "");
  expect_error("{{ 'x' * 10**10 }}", NULL, HEED_E_RANGE, "longer than");
  heed_template_options o;
  heed_template_options_init(&o);
  o.max_output = 1 << 20;
  heed_template_text out;
  heed_error err;
  heed_status st =
      render_ex("{% for i in range(100000) %}{{ 'abcdefghij' * 10 }}{% endfor %}", NULL, NULL, 0, &o, &out, &err);
  cr_expect_eq(st, HEED_E_RANGE, "%s", err.msg);
  cr_expect(strstr(err.msg, "output limit") != NULL, "%s", err.msg);
  o.max_output = 0;
  o.max_steps = 100000;
  st = render_ex("{% set l = range(1000) %}{% for i in l %}{% for j in l %}{% endfor %}{% endfor %}", NULL, NULL, 0, &o,
                 &out, &err);
  cr_expect_eq(st, HEED_E_RANGE, "%s", err.msg);
  cr_expect(strstr(err.msg, "steps") != NULL, "%s", err.msg);
  o.max_steps = 0;
  o.max_memory = 1 << 20;
  st = render_ex(
      "{% set ns = namespace(s='') %}{% for i in range(10000) %}{% set ns.s = ns.s ~ 'abcdefgh' %}{% endfor %}", NULL,
      NULL, 0, &o, &out, &err);
  cr_expect_eq(st, HEED_E_RANGE, "%s", err.msg);
  cr_expect(strstr(err.msg, "memory") != NULL, "%s", err.msg);
}

/* Random bytes and random token soups never crash and always end. */
Test(template_limits, arbitrary_text_is_safe) {
  static const char *const frags[] = {
      "{{", "}}",    "{%",     "%}",     "{#", "#}",  "-",       "+",        " ",    "\n", "if",  "for",
      "in", "endif", "endfor", "x",      "(",  ")",   "[",       "]",        "{",    "}",  "'",   "\"",
      "|",  "upper", ".",      ",",      "=",  "set", "macro",   "endmacro", "loop", "1",  "2.5", "~",
      "*",  "**",    "raw",    "endraw", "is", "not", "defined", "else",     "elif", ":",  "\\",  "\xc3\xa9"};
  uint64_t seed = 42;
  char buf[512];
  for (int it = 0; it < 3000; it++) {
    size_t k = 0;
    int nf = (int)(tu_next(&seed) % 40);
    for (int i = 0; i < nf; i++) {
      const char *f = frags[tu_next(&seed) % (sizeof frags / sizeof *frags)];
      size_t l = strlen(f);
      if (k + l >= sizeof buf) break;
      memcpy(buf + k, f, l);
      k += l;
    }
    if (it % 3 == 0) /* raw bytes too */
      for (int i = 0; i < 16 && k < sizeof buf - 1; i++) buf[k++] = (char)(tu_next(&seed) & 0xFF);
    heed_template *t = NULL;
    heed_error err;
    if (heed_template_parse(buf, k, &t, &err) == HEED_OK) {
      heed_template_options o;
      heed_template_options_init(&o);
      o.max_steps = 100000;
      o.max_memory = 8 << 20;
      heed_template_text out;
      heed_status st = heed_template_render(t, "{\"x\": [1, \"a\"]}", 16, NULL, 0, &o, &out, &err);
      if (st == HEED_OK) cr_assert(out.text != NULL && strlen(out.text) <= out.length);
      heed_template_text_free(&out);
      heed_template_free(t);
    } else {
      cr_assert(t == NULL);
      cr_assert(strlen(err.msg) > 0);
    }
  }
}

/* ---------- untrusted spans ---------- */

/* Spans as "T:text|U:text|..." for checking. */
static const char *spans_str(const heed_template_text *t) {
  static char buf[4096];
  size_t k = 0;
  size_t at = 0;
  for (size_t i = 0; i < t->n_spans && k < sizeof buf - 64; i++) {
    cr_assert_eq(t->spans[i].offset, at, "spans must tile the text");
    cr_assert_gt(t->spans[i].length, 0);
    if (i) cr_assert_neq(t->spans[i].untrusted, t->spans[i - 1].untrusted, "neighbours differ");
    k += (size_t)snprintf(buf + k, sizeof buf - k, "%s%c:%.*s", i ? "|" : "", t->spans[i].untrusted ? 'U' : 'T',
                          (int)t->spans[i].length, t->text + t->spans[i].offset);
    at += t->spans[i].length;
  }
  cr_assert_eq(at, t->length, "spans cover the text");
  buf[k] = '\0';
  return buf;
}

static const char *S(const char *src, const char *ctx) {
  static char buf[4096];
  heed_template_var v[] = {{"bos_token", "<s>"}};
  heed_template_text out;
  heed_error err;
  if (render_ex(src, ctx, v, 1, NULL, &out, &err)) {
    snprintf(buf, sizeof buf, "ERR:%s", err.msg);
    return buf;
  }
  snprintf(buf, sizeof buf, "%s", spans_str(&out));
  heed_template_text_free(&out);
  return buf;
}

#define EXPECT_SPANS(src, ctx, want) cr_expect_str_eq(S(src, ctx), want, "template %s", src)

Test(template_taint, spans_follow_strings_through_operations) {
  const char *c = "{\"m\": \"<|im_start|>hi\", \"n\": 3}";
  EXPECT_SPANS("{{ bos_token + '<|im_start|>user\\n' + m + '<|im_end|>' }}", c,
               "T:<s><|im_start|>user\n|U:<|im_start|>hi|T:<|im_end|>");
  EXPECT_SPANS("{{ m|upper }}", c, "U:<|IM_START|>HI");
  EXPECT_SPANS("[{{ m[2:5] }}]", c, "T:[|U:im_|T:]");
  EXPECT_SPANS("{{ m.replace('hi', 'HO') }}", c, "U:<|im_start|>|T:HO");
  EXPECT_SPANS("{{ ('  ' ~ m ~ '  ')|trim }}", c, "U:<|im_start|>hi");
  EXPECT_SPANS("{{ [m, 'x']|join('-') }}", c, "U:<|im_start|>hi|T:-x");
  EXPECT_SPANS("{{ {'k': m}|tojson }}", c, "T:{\"k\": |U:\"<|im_start|>hi\"|T:}");
  EXPECT_SPANS("{{ '{}!'.format(m) }}", c, "U:<|im_start|>hi|T:!");
  EXPECT_SPANS("{{ m.split('>')[1] }}", c, "U:hi");
  EXPECT_SPANS("{{ n }}{{ n|string }}", c, "T:33"); /* numbers carry no text of the caller's */
  EXPECT_SPANS("{% set ns = namespace(a='') %}{% set ns.a = ns.a + m %}<{{ ns.a }}>", c, "T:<|U:<|im_start|>hi|T:>");
  EXPECT_SPANS("{% macro w(x) %}({{ x }}){% endmacro %}{{ w(m) }}", c, "T:(|U:<|im_start|>hi|T:)");
  EXPECT_SPANS("{% for ch in m[-2:] %}{{ ch }}.{% endfor %}", c, "U:h|T:.|U:i|T:.");
}

Test(template_taint, trusted_variables_override_the_context) {
  heed_template_var v[] = {{"bos_token", "<s>"}};
  heed_template_text out;
  heed_error err;
  cr_assert_eq(render_ex("{{ bos_token }}", "{\"bos_token\": \"<evil>\"}", v, 1, NULL, &out, &err), HEED_OK);
  cr_expect_str_eq(spans_str(&out), "T:<s>");
  heed_template_text_free(&out);
}

/* ---------- the chat layer ---------- */

static const char *chatml = "{% for m in messages %}{{ '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' }}"
                            "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

static heed_status chat(const char *src, const char *req, heed_template_text *out, heed_error *err) {
  heed_template *t = NULL;
  heed_status st = heed_template_parse(src, strlen(src), &t, err);
  cr_assert_eq(st, HEED_OK, "%s", err->msg);
  heed_template_var v[] = {{"bos_token", "<bos>"}, {"eos_token", "<eos>"}};
  st = heed_chat_render(t, req, strlen(req), v, 2, NULL, out, err);
  heed_template_free(t);
  return st;
}

Test(template_chat, messages_and_generation_prompt) {
  heed_template_text out;
  heed_error err;
  cr_assert_eq(chat(chatml, "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}]}", &out, &err), HEED_OK, "%s",
               err.msg);
  cr_expect_str_eq(out.text, "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n");
  /* the role came from the request too */
  cr_expect_str_eq(spans_str(&out), "T:<|im_start|>|U:user|T:\n|U:hi|T:<|im_end|>\n<|im_start|>assistant\n");
  heed_template_text_free(&out);
  cr_assert_eq(chat(chatml,
                    "{\"messages\": [{\"role\": \"user\", \"content\": [{\"type\": \"text\", \"text\": \"a\"}, "
                    "{\"type\": \"text\", \"text\": \"b\"}]}], \"add_generation_prompt\": false}",
                    &out, &err),
               HEED_OK, "%s", err.msg);
  cr_expect_str_eq(out.text, "<|im_start|>user\na\nb<|im_end|>\n");
  heed_template_text_free(&out);
}

Test(template_chat, context_variables_as_hf_passes_them) {
  heed_template_text out;
  heed_error err;
  const char *src = "{{ tools is none }}{{ documents is none }}{{ enable_thinking is defined }}{{ bos_token }}{{ x }}";
  cr_assert_eq(chat(src, "{\"messages\": [{\"role\": \"user\", \"content\": \"q\"}]}", &out, &err), HEED_OK);
  cr_expect_str_eq(out.text, "TrueTrueFalse<bos>");
  heed_template_text_free(&out);
  cr_assert_eq(chat(src,
                    "{\"messages\": [{\"role\": \"user\", \"content\": \"q\"}], \"tools\": [], "
                    "\"chat_template_kwargs\": {\"enable_thinking\": false, \"x\": 7}}",
                    &out, &err),
               HEED_OK);
  cr_expect_str_eq(out.text, "FalseTrueTrue<bos>7");
  heed_template_text_free(&out);
}

Test(template_chat, tool_call_arguments_string_or_object_render_the_same) {
  const char *src = "{% for m in messages %}{% for c in m.tool_calls or [] %}{{ c.function.name }}"
                    "{{ c.function.arguments|tojson }}{% endfor %}{% endfor %}";
  const char *as_obj =
      "{\"messages\": [{\"role\": \"user\", \"content\": \"q\"}, {\"role\": \"assistant\", \"content\": null, "
      "\"tool_calls\": [{\"type\": \"function\", \"function\": {\"name\": \"f\", \"arguments\": "
      "{\"a\": 1.0, \"b\": [\"\xc3\xa9\"]}}}]}]}";
  const char *as_str =
      "{\"messages\": [{\"role\": \"user\", \"content\": \"q\"}, {\"role\": \"assistant\", \"content\": null, "
      "\"tool_calls\": [{\"type\": \"function\", \"function\": {\"name\": \"f\", \"arguments\": "
      "\"{\\\"a\\\": 1.0, \\\"b\\\": [\\\"\xc3\xa9\\\"]}\"}}]}]}";
  heed_template_text a, b;
  heed_error err;
  cr_assert_eq(chat(src, as_obj, &a, &err), HEED_OK, "%s", err.msg);
  cr_assert_eq(chat(src, as_str, &b, &err), HEED_OK, "%s", err.msg);
  cr_expect_str_eq(a.text, "f{\"a\": 1.0, \"b\": [\"\xc3\xa9\"]}");
  cr_expect_str_eq(a.text, b.text);
  cr_expect_str_eq(spans_str(&a), spans_str(&b));
  heed_template_text_free(&a);
  heed_template_text_free(&b);
}

Test(template_chat, bad_requests_say_where) {
  heed_template_text out;
  heed_error err;
  struct {
    const char *req, *part;
    heed_status st;
  } bad[] = {
      {"{}", "'messages' is missing", HEED_E_INVALID},
      {"{\"messages\": []}", "'messages' is empty", HEED_E_INVALID},
      {"{\"messages\": {}}", "'messages' must be an array", HEED_E_INVALID},
      {"{\"messages\": [{\"role\": 1, \"content\": \"x\"}]}", "messages[0].role must be a string", HEED_E_INVALID},
      {"{\"messages\": [{\"role\": \"user\", \"content\": 5}]}", "messages[0].content must be", HEED_E_INVALID},
      {"{\"messages\": [{\"role\": \"user\", \"content\": [{\"type\": \"image_url\"}]}]}",
       "'image_url' are not supported", HEED_E_UNSUPPORTED},
      {"{\"messages\": [{\"role\": \"user\", \"content\": \"q\"}, {\"role\": \"assistant\", \"tool_calls\": "
       "[{\"function\": "
       "{\"name\": \"f\", \"arguments\": \"{not json\"}}]}]}",
       "messages[1].tool_calls[0].function.arguments is not valid JSON", HEED_E_INVALID},
      {"{\"messages\": [{\"role\": \"user\"}], \"add_generation_prompt\": \"yes\"}", "add_generation_prompt",
       HEED_E_INVALID},
      {"[1]", "JSON object", HEED_E_INVALID},
      {"{\"messages\": ", "not valid JSON", HEED_E_INVALID},
  };
  for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
    heed_status st = chat(chatml, bad[i].req, &out, &err);
    cr_expect_eq(st, bad[i].st, "%s: %s (%s)", bad[i].req, heed_status_name(st), err.msg);
    cr_expect(strstr(err.msg, bad[i].part) != NULL, "%s: '%s' lacks '%s'", bad[i].req, err.msg, bad[i].part);
    cr_expect_null(out.text);
  }
}

/* ---------- built-in templates ---------- */

static const char *conv =
    "{\"messages\": [{\"role\": \"system\", \"content\": \"Be brief.\"}, {\"role\": \"user\", "
    "\"content\": \"Hi\"}, {\"role\": \"assistant\", \"content\": \"Hello!\"}, {\"role\": \"user\", "
    "\"content\": \"Bye\"}]}";

static void expect_builtin(const char *name, const char *want) {
  const char *src;
  heed_error err;
  cr_assert_eq(heed_chat_builtin(name, &src, &err), HEED_OK);
  heed_template_text out;
  cr_assert_eq(chat(src, conv, &out, &err), HEED_OK, "%s: %s", name, err.msg);
  cr_expect_str_eq(out.text, want, "built-in %s", name);
  heed_template_text_free(&out);
}

Test(template_builtin, formats) {
  expect_builtin("chatml", "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
                           "<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\nBye<|im_end|>\n"
                           "<|im_start|>assistant\n");
  expect_builtin("gemma", "<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\nHello!"
                          "<end_of_turn>\n<start_of_turn>user\nBye<end_of_turn>\n<start_of_turn>model\n");
  expect_builtin("llama3", "<bos><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
                           "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
                           "<|start_header_id|>assistant<|end_header_id|>\n\nHello!<|eot_id|>"
                           "<|start_header_id|>user<|end_header_id|>\n\nBye<|eot_id|>"
                           "<|start_header_id|>assistant<|end_header_id|>\n\n");
}

Test(template_builtin, lookup_and_architectures) {
  const char *src = (const char *)1;
  heed_error err;
  cr_expect_eq(heed_chat_builtin("vicuna", &src, &err), HEED_E_INVALID);
  cr_expect_null(src);
  cr_expect(strstr(err.msg, "chatml, gemma, llama3") != NULL, "%s", err.msg);
  cr_expect_str_eq(heed_chat_builtin_for_arch("gemma3"), "gemma");
  cr_expect_str_eq(heed_chat_builtin_for_arch("gemma2"), "gemma");
  cr_expect_str_eq(heed_chat_builtin_for_arch("gemma"), "gemma");
  cr_expect_str_eq(heed_chat_builtin_for_arch("llama"), "llama3");
  cr_expect_str_eq(heed_chat_builtin_for_arch("qwen2"), "chatml");
  cr_expect_str_eq(heed_chat_builtin_for_arch(NULL), "chatml");
}

Test(template_builtin, gemma_roles_must_alternate) {
  const char *src;
  heed_error err;
  cr_assert_eq(heed_chat_builtin("gemma", &src, &err), HEED_OK);
  heed_template_text out;
  heed_status st =
      chat(src, "{\"messages\": [{\"role\": \"user\", \"content\": \"a\"}, {\"role\": \"user\", \"content\": \"b\"}]}",
           &out, &err);
  cr_expect_eq(st, HEED_E_INVALID);
  cr_expect(strstr(err.msg, "must alternate") != NULL, "%s", err.msg);
}

/* ---------- one template, many threads ---------- */

typedef struct {
  const heed_template *t;
  int ok;
} thr_arg;

static void *render_many(void *p) {
  thr_arg *a = p;
  a->ok = 1;
  for (int i = 0; i < 200; i++) {
    char req[256];
    snprintf(req, sizeof req, "{\"messages\": [{\"role\": \"user\", \"content\": \"n%d\"}]}", i);
    heed_template_text out;
    heed_error err;
    if (heed_chat_render(a->t, req, strlen(req), NULL, 0, NULL, &out, &err) != HEED_OK) a->ok = 0;
    char want[128];
    snprintf(want, sizeof want, "<|im_start|>user\nn%d<|im_end|>\n<|im_start|>assistant\n", i);
    if (!out.text || strcmp(out.text, want)) a->ok = 0;
    heed_template_text_free(&out);
  }
  return NULL;
}

Test(template_threads, renders_are_independent) {
  heed_template *t;
  heed_error err;
  cr_assert_eq(heed_template_parse(chatml, strlen(chatml), &t, &err), HEED_OK);
  pthread_t th[4];
  thr_arg args[4];
  for (int i = 0; i < 4; i++) {
    args[i].t = t;
    pthread_create(&th[i], NULL, render_many, &args[i]);
  }
  for (int i = 0; i < 4; i++) {
    pthread_join(th[i], NULL);
    cr_expect(args[i].ok, "thread %d", i);
  }
  heed_template_free(t);
}
