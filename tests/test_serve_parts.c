/* The server's parts that need no model: the tool-call scanner (every form,
 * fed whole, byte by byte and cut at random points, which must all agree),
 * the prefix cache's index, and the metrics' Prometheus text. */
#include <criterion/criterion.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "serve/serve_internal.h"
#include "test_util.h"

/* ---------- the tool-call scanner ---------- */

/* What a scan made: the content, and the calls as "name args" lines. */
typedef struct scan_out {
  char *content;
  size_t content_len;
  char calls[4096];
  size_t n_calls;
} scan_out;

static void scan_out_free(scan_out *o) { free(o->content), o->content = NULL; }

/* Feeds text cut at cuts[0..n_cuts) (increasing); final_alone: the end comes
 * as a feed of its own, with no text. Checks on the way that *n_new names
 * exactly the calls added and that content only grows. */
static void scan_cut(const char *text, size_t len, const size_t *cuts, size_t n_cuts, int final_alone, int enabled,
                     scan_out *o) {
  memset(o, 0, sizeof *o);
  srv_toolscan s;
  srv_toolscan_init(&s, enabled);
  size_t at = 0;
  for (size_t k = 0; k <= n_cuts; k++) {
    size_t to = k < n_cuts ? cuts[k] : len;
    int final = k == n_cuts && !final_alone;
    size_t before = s.n_calls, n_new = 99;
    srv_toolscan_feed(&s, text + at, to - at, final, &o->content, &o->content_len, &n_new);
    cr_assert_eq(s.n_calls, before + n_new);
    cr_assert_not_null(o->content);
    cr_assert_eq(o->content[o->content_len], '\0', "content lacks its end");
    if (!memchr(text, '\0', len)) cr_assert_eq(strlen(o->content), o->content_len);
    at = to;
  }
  if (final_alone) {
    size_t before = s.n_calls, n_new = 99;
    srv_toolscan_feed(&s, NULL, 0, 1, &o->content, &o->content_len, &n_new);
    cr_assert_eq(s.n_calls, before + n_new);
  }
  cr_assert_eq(s.len, 0, "text still held after the final feed");
  size_t w = 0;
  for (size_t i = 0; i < s.n_calls; i++) {
    int k = snprintf(o->calls + w, sizeof o->calls - w, "%s %s\n", s.calls[i].name, s.calls[i].arguments);
    cr_assert(k > 0 && (size_t)k < sizeof o->calls - w);
    w += (size_t)k;
  }
  o->n_calls = s.n_calls;
  srv_toolscan_free(&s);
}

static void scan_whole(const char *text, int enabled, scan_out *o) {
  scan_cut(text, strlen(text), NULL, 0, 0, enabled, o);
}

static void scan_bytes(const char *text, int enabled, scan_out *o) {
  size_t len = strlen(text);
  size_t *cuts = malloc((len + 1) * sizeof *cuts);
  cr_assert_not_null(cuts);
  for (size_t i = 0; i < len; i++) cuts[i] = i + 1;
  scan_cut(text, len, cuts, len ? len - 1 : 0, 1, enabled, o);
  free(cuts);
}

/* Whole, byte by byte and at the end: content and calls as given. */
static void expect_scan(const char *text, const char *content, const char *calls) {
  for (int mode = 0; mode < 2; mode++) {
    scan_out o;
    if (mode == 0) scan_whole(text, 1, &o);
    else scan_bytes(text, 1, &o);
    cr_assert_str_eq(o.content, content, "%s: content of '%s'", mode ? "bytes" : "whole", text);
    cr_assert_str_eq(o.calls, calls, "%s: calls of '%s'", mode ? "bytes" : "whole", text);
    scan_out_free(&o);
  }
}

Test(toolscan, one_call_whole_and_byte_by_byte) {
  expect_scan("<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\", \"days\": 3}}\n</tool_call>",
              "", "get_weather {\"city\":\"Paris\",\"days\":3}\n");
}

Test(toolscan, content_before_and_after) {
  expect_scan("Let me check.\n<tool_call>{\"name\": \"f\", \"arguments\": {}}</tool_call>\nDone.",
              "Let me check.\n\nDone.", "f {}\n");
  expect_scan("Sure: <tool_call>{\"name\": \"f\"}</tool_call>", "Sure: ", "f {}\n");
}

Test(toolscan, two_calls_white_space_dropped) {
  expect_scan("\n<tool_call>\n{\"name\": \"a\", \"arguments\": {\"x\": 1}}\n</tool_call>\n\n"
              "<tool_call>{\"name\": \"b\", \"parameters\": {\"y\": [1, 2]}}</tool_call>\n \n",
              "", "a {\"x\":1}\nb {\"y\":[1,2]}\n");
}

Test(toolscan, arguments_as_string) {
  expect_scan("<tool_call>{\"name\": \"f\", \"arguments\": \"{\\\"q\\\": \\\"a b\\\"}\"}</tool_call>", "",
              "f {\"q\":\"a b\"}\n");
}

Test(toolscan, malformed_calls_are_content) {
  const char *bad[] = {
      "<tool_call>{\"name\": oops}</tool_call>",
      "<tool_call>{\"arguments\": {}}</tool_call>",
      "<tool_call>{\"name\": \"\", \"arguments\": {}}</tool_call>",
      "<tool_call>{\"name\": 3, \"arguments\": {}}</tool_call>",
      "<tool_call>{\"name\": \"f\", \"arguments\": 7}</tool_call>",
      "<tool_call>{\"name\": \"f\", \"arguments\": [1]}</tool_call>",
      "<tool_call>{\"name\": \"f\", \"arguments\": \"not json\"}</tool_call>",
      "<tool_call>{\"name\": \"f\", \"arguments\": \"[1, 2]\"}</tool_call>",
      "<tool_call>{\"name\": \"f\"} trailing</tool_call>",
      "<tool_call>[{\"name\": \"f\"}]</tool_call>",
      "<tool_call></tool_call>",
  };
  for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) expect_scan(bad[i], bad[i], "");
  /* A bad one is content, white space and all; a good one after it is still a call. */
  expect_scan("\n<tool_call>{bad}</tool_call>\n<tool_call>{\"name\": \"g\"}</tool_call>",
              "\n<tool_call>{bad}</tool_call>\n", "g {}\n");
}

Test(toolscan, unterminated_call_at_the_end_is_content) {
  expect_scan("Calling <tool_call>{\"name\": \"f\", \"argu", "Calling <tool_call>{\"name\": \"f\", \"argu", "");
  expect_scan("  <tool_call>{\"name\": \"f\"}</tool_ca", "  <tool_call>{\"name\": \"f\"}</tool_ca", "");
  expect_scan("<tool_call>{\"name\": \"a\"}</tool_call><tool_call>", "<tool_call>", "a {}\n");
}

Test(toolscan, tag_prefix_held_then_released) {
  srv_toolscan s;
  srv_toolscan_init(&s, 1);
  char *c = NULL;
  size_t n = 0, n_new = 0;
  srv_toolscan_feed(&s, "Hi <to", 6, 0, &c, &n, &n_new);
  cr_assert_str_eq(c, "Hi ");
  srv_toolscan_feed(&s, "ol", 2, 0, &c, &n, &n_new);
  cr_assert_str_eq(c, "Hi ");
  srv_toolscan_feed(&s, "box> ok <", 9, 0, &c, &n, &n_new);
  cr_assert_str_eq(c, "Hi <toolbox> ok ");
  srv_toolscan_feed(&s, "tool_c", 6, 0, &c, &n, &n_new);
  cr_assert_str_eq(c, "Hi <toolbox> ok ");
  srv_toolscan_feed(&s, "", 0, 1, &c, &n, &n_new);
  cr_assert_str_eq(c, "Hi <toolbox> ok <tool_c");
  cr_assert_eq(n, strlen(c));
  cr_assert_eq(n_new, 0);
  free(c);
  srv_toolscan_free(&s);
  expect_scan("<toolbox>", "<toolbox>", "");
  expect_scan("a < b and <tool", "a < b and <tool", "");
}

Test(toolscan, plain_content_streams_at_once) {
  const char *text = "Hello, w\xc3\xb6rld! 1 < 2 <b>";
  srv_toolscan s;
  srv_toolscan_init(&s, 1);
  char *c = NULL;
  size_t n = 0, n_new;
  for (size_t i = 0; text[i]; i++) {
    srv_toolscan_feed(&s, text + i, 1, 0, &c, &n, &n_new);
    /* Only a '<' that may begin the tag is held. */
    size_t want = i + 1;
    if (text[i] == '<') want = i;
    cr_assert_eq(n, want, "after byte %zu: %zu bytes released", i, n);
    cr_assert_eq(memcmp(c, text, n), 0);
  }
  free(c);
  srv_toolscan_free(&s);
}

Test(toolscan, leading_white_space) {
  expect_scan("\n\n  Hello", "\n\n  Hello", "");
  expect_scan("\n\n<tool_call>{\"name\": \"f\"}</tool_call>", "", "f {}\n");
  expect_scan(" \n ", " \n ", "");
  expect_scan("", "", "");
}

Test(toolscan, whole_json_form) {
  expect_scan("{\"name\": \"get_time\", \"parameters\": {\"tz\": \"UTC\"}}", "", "get_time {\"tz\":\"UTC\"}\n");
  expect_scan(" \n{\"name\": \"f\", \"arguments\": \"{\\\"a\\\": 1}\"}\n", "", "f {\"a\":1}\n");
  expect_scan("[{\"name\": \"a\", \"parameters\": {}}, {\"name\": \"b\", \"arguments\": {\"k\": true}}]", "",
              "a {}\nb {\"k\":true}\n");
  /* Not a call: all of it is content, as it came. */
  const char *content[] = {
      "{\"answer\": 42}",
      " {\"name\": \"Bob\", \"age\": 3}",
      "{\"name\": \"f\", \"parameters\": {}} and more",
      "{\"name\": \"f\", \"parameters\": {}}{\"name\": \"g\", \"parameters\": {}}",
      "[{\"name\": \"a\", \"parameters\": {}}, 3]",
      "[]",
      "[1, 2, 3]",
      "{ not json",
      "[link](http://x)",
  };
  for (size_t i = 0; i < sizeof content / sizeof *content; i++) expect_scan(content[i], content[i], "");
}

/* Qwen2.5-Coder answers a tool request with a fenced JSON block more often
 * than with <tool_call> (seen in the serve test on the real model). */
Test(toolscan, fenced_json_form) {
  expect_scan("```json\n{\n  \"name\": \"get_weather\",\n  \"arguments\": {\n    \"city\": \"Paris\"\n  }\n}\n```",
              "", "get_weather {\"city\":\"Paris\"}\n");
  expect_scan("\n```\n[{\"name\": \"a\", \"parameters\": {}}]\n```\n", "", "a {}\n");
  /* code, or JSON that is no call, is content as it came */
  const char *content[] = {
      "```c\nint main(void) { return 0; }\n```",
      "```json\n{\"answer\": 42}\n```",
      "```json\n{\"name\": \"f\", \"arguments\": {}}\n``` and then some",
      "```json\nplain\n```",
      "``",
      "`x`",
  };
  for (size_t i = 0; i < sizeof content / sizeof *content; i++) expect_scan(content[i], content[i], "");
}

/* A fence that is not JSON is released as soon as its first line says so. */
Test(toolscan, fenced_code_streams_after_its_first_line) {
  srv_toolscan s;
  srv_toolscan_init(&s, 1);
  char *c = NULL;
  size_t n = 0, n_new;
  srv_toolscan_feed(&s, "```py", 5, 0, &c, &n, &n_new);
  srv_toolscan_feed(&s, "thon\nprint(1)\n", 15, 0, &c, &n, &n_new);
  cr_assert_str_eq(c, "```python\nprint(1)\n");
  free(c);
  srv_toolscan_free(&s);
}

Test(toolscan, whole_json_held_to_the_end) {
  srv_toolscan s;
  srv_toolscan_init(&s, 1);
  char *c = NULL;
  size_t n = 0, n_new;
  srv_toolscan_feed(&s, "{\"answer\": ", 11, 0, &c, &n, &n_new);
  srv_toolscan_feed(&s, "42}", 3, 0, &c, &n, &n_new);
  cr_assert_eq(n, 0);
  srv_toolscan_feed(&s, NULL, 0, 1, &c, &n, &n_new);
  cr_assert_str_eq(c, "{\"answer\": 42}");
  free(c);
  srv_toolscan_free(&s);
}

Test(toolscan, hermes_tag_overrides_whole_json) {
  expect_scan("{\"x\": 1} <tool_call>{\"name\": \"f\", \"arguments\": {\"a\": 2}}</tool_call>", "{\"x\": 1} ",
              "f {\"a\":2}\n");
  expect_scan("  {\"name\": \"f\", \"parameters\": {}}\n<tool_call>{\"name\": \"g\"}</tool_call>\n",
              "  {\"name\": \"f\", \"parameters\": {}}\n", "g {}\n");
}

Test(toolscan, disabled_is_all_content) {
  const char *text = "<tool_call>{\"name\": \"f\"}</tool_call>";
  scan_out o;
  scan_whole(text, 0, &o);
  cr_assert_str_eq(o.content, text);
  cr_assert_eq(o.n_calls, 0);
  scan_out_free(&o);
  /* Immediately: nothing is held, not even a possible tag. */
  srv_toolscan s;
  srv_toolscan_init(&s, 0);
  char *c = NULL;
  size_t n = 0, n_new = 5;
  srv_toolscan_feed(&s, "{\"a\": <tool", 11, 0, &c, &n, &n_new);
  cr_assert_str_eq(c, "{\"a\": <tool");
  cr_assert_eq(n_new, 0);
  free(c);
  srv_toolscan_free(&s);
}

/* Texts the property test cuts: every form, malformed ones, UTF-8. */
static const char *const SCAN_TEXTS[] = {
    "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Z\xc3\xbcrich\"}}\n</tool_call>",
    "Let me look.\n<tool_call>{\"name\": \"a\", \"arguments\": {}}</tool_call>\n\n<tool_call>{\"name\": \"b\", "
    "\"arguments\": \"{\\\"k\\\": 1}\"}</tool_call>\nThat's all \xe2\x9c\x93",
    "<tool_call>{\"name\": oops}</tool_call> then <tool_call>{\"name\": \"ok\"}</tool_call>",
    "text with <toolbox> and <tool_ and <tool_call",
    "{\"name\": \"f\", \"parameters\": {\"a\": [1, {\"b\": null}]}}",
    "\n [{\"name\": \"a\", \"parameters\": {}}, {\"name\": \"b\", \"arguments\": {}}]\n",
    "{\"answer\": \"<tool\"}",
    "{\"x\": 1}<tool_call>{\"name\": \"f\"}</tool_call>",
    "   \n\t",
    "\xf0\x9f\x98\x80 <tool_call> {\"name\": \"f\"} </tool_call></tool_call>",
    "<<<tool_call>>{\"name\": \"f\"}</tool_call>",
    "<tool_call>{\"name\": \"f\", \"arguments\": {\"s\": \"</tool\"}}</tool_call>",
    "```json\n{\"name\": \"f\", \"arguments\": {\"a\": 1}}\n```",
    "```json\n{\"name\": \"f\"}\n``` <tool_call>{\"name\": \"g\"}</tool_call>",
    "```c\nint x;\n```",
};

static void expect_same(const scan_out *a, const scan_out *b, const char *text, const char *how) {
  cr_assert_eq(a->content_len, b->content_len, "%s: content length of '%s'", how, text);
  cr_assert_eq(memcmp(a->content, b->content, a->content_len), 0, "%s: content of '%s'", how, text);
  cr_assert_str_eq(a->calls, b->calls, "%s: calls of '%s'", how, text);
}

/* Random cut points: the same content and calls as the text fed whole. */
static void random_cuts(const char *text, size_t len, uint64_t *rng) {
  scan_out whole;
  scan_cut(text, len, NULL, 0, 0, 1, &whole);
  size_t *cuts = malloc((len + 1) * sizeof *cuts);
  cr_assert_not_null(cuts);
  for (int round = 0; round < 60; round++) {
    size_t n_cuts = 0;
    unsigned density = 1 + (unsigned)(tu_next(rng) % 8);
    for (size_t i = 1; i < len; i++)
      if (tu_next(rng) % density == 0) cuts[n_cuts++] = i;
    scan_out o;
    scan_cut(text, len, cuts, n_cuts, (int)(tu_next(rng) & 1), 1, &o);
    expect_same(&whole, &o, text, "random cuts");
    scan_out_free(&o);
  }
  free(cuts);
  scan_out_free(&whole);
}

Test(toolscan, random_cuts_agree_with_whole) {
  uint64_t rng = 0x5eed7001;
  for (size_t t = 0; t < sizeof SCAN_TEXTS / sizeof *SCAN_TEXTS; t++)
    random_cuts(SCAN_TEXTS[t], strlen(SCAN_TEXTS[t]), &rng);
}

/* Texts of random pieces of the syntax (and NUL bytes): no crash, and cuts agree. */
Test(toolscan, random_texts_agree_with_whole) {
  static const char *const bits[] = {"<tool_call>", "</tool_call>", "<tool", "</tool_", "<", ">", "{", "}", "[",
                                     "]", "\"name\"", ": ", "\"f\"", ", ", "\"arguments\"", "\"parameters\"", "{}",
                                     " ", "\n", "x", "\xc3", "\xa9", "\\\"", "\"", "1", "```", "```json\n", "`"};
  uint64_t rng = 0xc0ffee;
  char text[256];
  for (int t = 0; t < 300; t++) {
    size_t len = 0;
    unsigned n_bits = (unsigned)(tu_next(&rng) % 24);
    for (unsigned b = 0; b < n_bits; b++) {
      const char *p = bits[tu_next(&rng) % (sizeof bits / sizeof *bits)];
      size_t k = strlen(p);
      if (len + k + 1 >= sizeof text) break;
      memcpy(text + len, p, k), len += k;
    }
    if (len && tu_next(&rng) % 10 == 0) text[tu_next(&rng) % len] = '\0'; /* a NUL byte in the output */
    text[len] = '\0';
    scan_out whole;
    scan_cut(text, len, NULL, 0, 0, 1, &whole);
    size_t cuts[256], n_cuts = 0;
    for (size_t i = 1; i < len; i++)
      if (tu_next(&rng) % 3 == 0) cuts[n_cuts++] = i;
    scan_out o;
    scan_cut(text, len, cuts, n_cuts, (int)(tu_next(&rng) & 1), 1, &o);
    cr_assert_eq(whole.content_len, o.content_len, "text %d", t);
    cr_assert_eq(memcmp(whole.content, o.content, o.content_len), 0, "text %d", t);
    cr_assert_str_eq(whole.calls, o.calls, "text %d", t);
    scan_out_free(&o);
    scan_out_free(&whole);
  }
}

/* ---------- the prefix cache's index ---------- */

static const int32_t A[] = {1, 2, 3, 4, 5, 6};

Test(cache, lookup_picks_the_longest_prefix) {
  srv_cache c = {0};
  int drop[8];
  unsigned n_drop;
  cr_assert_eq(srv_cache_insert(&c, 10, (const int32_t[]){1, 2, 9}, 3, 0, drop, &n_drop), HEED_OK);
  cr_assert_eq(srv_cache_insert(&c, 11, (const int32_t[]){1, 2, 3, 4, 7}, 5, 0, drop, &n_drop), HEED_OK);
  cr_assert_eq(srv_cache_insert(&c, 12, (const int32_t[]){8, 8}, 2, 0, drop, &n_drop), HEED_OK);
  cr_assert_eq(n_drop, 0);
  cr_assert_eq(c.n, 3);
  size_t lcp = 99;
  cr_assert_eq(srv_cache_lookup(&c, A, 6, 0, &lcp), 11);
  cr_assert_eq(lcp, 4);
  cr_assert_eq(srv_cache_lookup(&c, (const int32_t[]){1, 2, 9, 9}, 4, 0, &lcp), 10);
  cr_assert_eq(lcp, 3);
  /* The query shorter than the entry, ending inside an edge: the whole query is shared. */
  cr_assert_eq(srv_cache_lookup(&c, (const int32_t[]){8}, 1, 0, &lcp), 12);
  cr_assert_eq(lcp, 1);
  cr_assert_eq(srv_cache_lookup(&c, (const int32_t[]){1, 2, 3}, 3, 0, &lcp), 11);
  cr_assert_eq(lcp, 3);
  cr_assert_eq(srv_cache_lookup(&c, (const int32_t[]){5, 1}, 2, 0, &lcp), -1);
  cr_assert_eq(lcp, 0);
  cr_assert_eq(srv_cache_lookup(&c, NULL, 0, 0, &lcp), -1);
  srv_cache_free(&c);
  cr_assert_eq(c.n, 0);
}

Test(cache, ties_go_to_the_most_recently_used) {
  srv_cache c = {0};
  int drop[8];
  unsigned n_drop;
  cr_assert_eq(srv_cache_insert(&c, 1, (const int32_t[]){1, 2, 7}, 3, 0, drop, &n_drop), HEED_OK);
  cr_assert_eq(srv_cache_insert(&c, 2, (const int32_t[]){1, 2, 8}, 3, 0, drop, &n_drop), HEED_OK);
  size_t lcp;
  cr_assert_eq(srv_cache_lookup(&c, (const int32_t[]){1, 2, 9}, 3, 0, &lcp), 2);
  srv_cache_touch(&c, 1);
  cr_assert_eq(srv_cache_lookup(&c, (const int32_t[]){1, 2, 9}, 3, 0, &lcp), 1);
  cr_assert_eq(lcp, 2);
  srv_cache_free(&c);
}

Test(cache, tenants_are_apart) {
  srv_cache c = {0};
  int drop[8];
  unsigned n_drop;
  cr_assert_eq(srv_cache_insert(&c, 1, A, 6, 7, drop, &n_drop), HEED_OK);
  size_t lcp;
  cr_assert_eq(srv_cache_lookup(&c, A, 6, 8, &lcp), -1);
  cr_assert_eq(srv_cache_lookup(&c, A, 6, 0, &lcp), -1);
  cr_assert_eq(srv_cache_lookup(&c, A, 6, 7, &lcp), 1);
  cr_assert_eq(lcp, 6);
  srv_cache_free(&c);
}

Test(cache, the_longer_of_two_nested_sequences_is_kept) {
  srv_cache c = {0};
  int drop[8];
  unsigned n_drop = 99;
  cr_assert_eq(srv_cache_insert(&c, 1, A, 2, 0, drop, &n_drop), HEED_OK);
  cr_assert_eq(n_drop, 0);
  cr_assert_eq(srv_cache_insert(&c, 2, A, 4, 0, drop, &n_drop), HEED_OK);     /* extends 1: drops it */
  cr_assert_eq(n_drop, 1);
  cr_assert_eq(drop[0], 1);
  cr_assert_eq(srv_cache_insert(&c, 3, A, 4, 5, drop, &n_drop), HEED_OK);     /* other tenant */
  cr_assert_eq(n_drop, 0);
  cr_assert_eq(srv_cache_insert(&c, 4, (const int32_t[]){1, 2, 3, 9, 9, 9, 9}, 7, 0, drop, &n_drop), HEED_OK);
  cr_assert_eq(n_drop, 0);                                                     /* diverges: kept */
  cr_assert_eq(srv_cache_insert(&c, 5, (const int32_t[]){1}, 1, 0, drop, &n_drop), HEED_OK);
  cr_assert_eq(n_drop, 1);                                                     /* a prefix: the new one goes */
  cr_assert_eq(drop[0], 5);
  cr_assert_eq(srv_cache_insert(&c, 8, (const int32_t[]){1, 2, 3}, 3, 0, drop, &n_drop), HEED_OK);
  cr_assert_eq(n_drop, 1);                                                     /* ends at the fork: goes too */
  cr_assert_eq(drop[0], 8);
  cr_assert_eq(srv_cache_insert(&c, 6, A, 6, 0, drop, &n_drop), HEED_OK);      /* extends 2 */
  cr_assert_eq(n_drop, 1);
  cr_assert_eq(drop[0], 2);
  cr_assert_eq(c.n, 3); /* 3 (tenant 5), 4, 6 */
  int seen = 0;
  for (unsigned k = 0; k < c.n; k++) seen |= 1 << c.leaves[k]->seq;
  cr_assert_eq(seen, (1 << 3) | (1 << 4) | (1 << 6));
  cr_assert_eq(srv_cache_insert(&c, 7, A, 6, 0, drop, &n_drop), HEED_OK);      /* equal ids: the old goes */
  cr_assert_eq(n_drop, 1);
  cr_assert_eq(drop[0], 6);
  size_t lcp;
  cr_assert_eq(srv_cache_lookup(&c, A, 6, 0, &lcp), 7);
  cr_assert_eq(lcp, 6);
  cr_assert_eq(srv_cache_insert(&c, 9, A, 0, 0, drop, &n_drop), HEED_E_INVALID);
  srv_cache_free(&c);
}

Test(cache, lru_order_with_touch) {
  srv_cache c = {0};
  int drop[8], seq = -1;
  unsigned n_drop;
  cr_assert_eq(srv_cache_evict_lru(&c, &seq), 0);
  cr_assert_eq(seq, -1);
  for (int k = 0; k < 4; k++) {
    int32_t id = 100 + k;
    cr_assert_eq(srv_cache_insert(&c, k, &id, 1, 0, drop, &n_drop), HEED_OK);
  }
  size_t lcp;
  srv_cache_touch(&c, srv_cache_lookup(&c, (const int32_t[]){100}, 1, 0, &lcp)); /* 0 is now the newest */
  srv_cache_touch(&c, srv_cache_lookup(&c, (const int32_t[]){102}, 1, 0, &lcp));
  srv_cache_touch(&c, -1); /* ignored */
  srv_cache_touch(&c, 99);
  const int order[] = {1, 3, 0, 2};
  for (int k = 0; k < 4; k++) {
    cr_assert_eq(srv_cache_evict_lru(&c, &seq), 1);
    cr_assert_eq(seq, order[k], "eviction %d: seq %d", k, seq);
  }
  cr_assert_eq(srv_cache_evict_lru(&c, &seq), 0);
  cr_assert_eq(c.n, 0);
  cr_assert_eq(c.n_roots, 0);
  srv_cache_free(&c);
}

/* Eviction merges a fork point left with one branch: the tree stays tight. */
Test(cache, eviction_merges_the_fork_it_leaves) {
  srv_cache c = {0};
  int drop[8], seq;
  unsigned n_drop;
  cr_assert_eq(srv_cache_insert(&c, 1, (const int32_t[]){1, 2, 3, 4}, 4, 0, drop, &n_drop), HEED_OK);
  cr_assert_eq(srv_cache_insert(&c, 2, (const int32_t[]){1, 2, 8, 8}, 4, 0, drop, &n_drop), HEED_OK);
  srv_cache_node *r = c.roots[0].node;
  cr_assert_eq(r->n_kids, 1);
  cr_assert_eq(r->kids[0]->n_tok, 2); /* the fork at {1, 2} */
  cr_assert_eq(r->kids[0]->n_kids, 2);
  cr_assert_eq(srv_cache_evict_lru(&c, &seq), 1);
  cr_assert_eq(seq, 1);
  cr_assert_eq(r->n_kids, 1);
  cr_assert_eq(r->kids[0]->n_kids, 0);
  cr_assert_eq(r->kids[0]->n_tok, 4);
  cr_assert_eq(r->kids[0]->seq, 2);
  size_t lcp;
  cr_assert_eq(srv_cache_lookup(&c, (const int32_t[]){1, 2, 8, 8, 8}, 5, 0, &lcp), 2);
  cr_assert_eq(lcp, 4);
  cr_assert_eq(srv_cache_lookup(&c, (const int32_t[]){1, 2, 3}, 3, 0, &lcp), 2);
  cr_assert_eq(lcp, 2);
  srv_cache_free(&c);
}

/* Sessions: a retained session's sequences go last, the oldest session first;
 * an expired session's are plain LRU; keep_s 0 is plain LRU throughout. */
Test(cache, retained_sessions_are_evicted_last) {
  srv_cache c = {0};
  c.keep_s = 100;
  int drop[8], seq = -1, ret = -1;
  unsigned n_drop;
  for (int k = 1; k <= 4; k++) cr_assert_eq(srv_cache_insert(&c, k, (const int32_t[]){k}, 1, 0, drop, &n_drop), HEED_OK);
  uint64_t s1 = srv_session_id(0, "main", 4), s2 = srv_session_id(0, "sub", 3);
  srv_cache_set_origin(&c, 1, "req-1", 1, 1.0, s1);
  srv_cache_set_origin(&c, 3, "req-3", 1, 1.0, s2);
  srv_cache_session_seen(&c, s2, 10); /* s2 seen longer ago than s1 */
  srv_cache_session_seen(&c, s1, 20);
  cr_assert(srv_cache_session_retained(&c, s1, 50, NULL));
  const int order[] = {2, 4, 3, 1}, was_retained[] = {0, 0, 1, 1};
  for (int k = 0; k < 4; k++) {
    cr_assert_eq(srv_cache_evict(&c, 50, &seq, &ret), 1);
    cr_assert_eq(seq, order[k], "eviction %d: seq %d, wanted %d", k, seq, order[k]);
    cr_assert_eq(ret, was_retained[k]);
  }
  cr_assert_eq(srv_cache_evict(&c, 50, &seq, &ret), 0);
  srv_cache_free(&c);
}

Test(cache, sessions_expire) {
  srv_cache c = {0};
  c.keep_s = 100;
  int drop[8], seq, ret;
  unsigned n_drop;
  uint64_t s1 = srv_session_id(7, "main", 4);
  cr_assert_eq(srv_cache_insert(&c, 1, (const int32_t[]){1}, 1, 7, drop, &n_drop), HEED_OK);
  cr_assert_eq(srv_cache_insert(&c, 2, (const int32_t[]){2}, 1, 7, drop, &n_drop), HEED_OK);
  srv_cache_set_origin(&c, 1, "req-1", 1, 1.0, s1);
  srv_cache_session_seen(&c, s1, 10);
  cr_assert(srv_cache_session_retained(&c, s1, 109.9, NULL));
  cr_assert_not(srv_cache_session_retained(&c, s1, 110, NULL));
  cr_assert_eq(srv_cache_evict(&c, 200, &seq, &ret), 1); /* expired: the older goes, as in plain LRU */
  cr_assert_eq(seq, 1);
  cr_assert_eq(ret, 0);
  srv_cache_free(&c);
  /* keep_s 0: nothing is retained */
  srv_cache d = {0};
  cr_assert_eq(srv_cache_insert(&d, 1, (const int32_t[]){1}, 1, 0, drop, &n_drop), HEED_OK);
  cr_assert_eq(srv_cache_insert(&d, 2, (const int32_t[]){2}, 1, 0, drop, &n_drop), HEED_OK);
  srv_cache_set_origin(&d, 1, "req-1", 1, 1.0, s1);
  srv_cache_session_seen(&d, s1, 10);
  cr_assert_eq(srv_cache_evict(&d, 11, &seq, &ret), 1);
  cr_assert_eq(seq, 1);
  srv_cache_free(&d);
}

Test(cache, session_ids_and_the_session_table) {
  cr_assert_eq(srv_session_id(0, "", 0), 0);
  cr_assert_eq(srv_session_id(0, NULL, 3), 0);
  cr_assert_neq(srv_session_id(0, "a", 1), 0);
  cr_assert_neq(srv_session_id(1, "a", 1), srv_session_id(2, "a", 1)); /* tenants apart */
  char bin[3] = {'\0', '\xff', 'x'};
  cr_assert_neq(srv_session_id(0, bin, 3), srv_session_id(0, bin + 1, 2));
  srv_cache c = {0};
  c.keep_s = 1e9;
  for (unsigned k = 0; k < SRV_MAX_SESSIONS + 100; k++) srv_cache_session_seen(&c, 1000 + k, (double)k);
  cr_assert_eq(c.n_sessions, SRV_MAX_SESSIONS);
  cr_assert_not(srv_cache_session_retained(&c, 1000, 1e6, NULL)); /* the oldest were forgotten */
  cr_assert(srv_cache_session_retained(&c, 1000 + SRV_MAX_SESSIONS + 99, 1e6, NULL));
  srv_cache_free(&c);
}

/* An evicted sequence leaves a ghost: a later prompt learns how much it would
 * have shared (whole strides of SRV_GHOST_STRIDE tokens), what evicted it and
 * which request made it; other tenants never see it; the ring keeps the last. */
Test(cache, evictions_leave_ghosts) {
  srv_cache c = {0};
  int drop[8], seq;
  unsigned n_drop;
  int32_t ids[130];
  for (int i = 0; i < 130; i++) ids[i] = 1000 + i;
  cr_assert_eq(srv_cache_insert(&c, 5, ids, 100, 3, drop, &n_drop), HEED_OK);
  srv_cache_set_origin(&c, 5, "req-five", 1, 1.0, 0);
  cr_assert_eq(srv_cache_evict_why(&c, 2.0, "memory", &seq, NULL), 1);
  size_t shared = 99;
  const srv_cache_ghost *g = srv_cache_ghost_match(&c, ids, 130, 3, &shared);
  cr_assert_not_null(g);
  cr_assert_eq(shared, 96); /* 100 tokens held: three whole strides of 32 */
  cr_assert_str_eq(g->origin, "req-five");
  cr_assert_str_eq(g->why, "memory");
  cr_assert_eq(g->len, 100);
  cr_assert_null(srv_cache_ghost_match(&c, ids, 130, 4, &shared)); /* another tenant */
  cr_assert_eq(shared, 0);
  ids[40] = 7; /* parts in the second stride: only the first is shared */
  cr_assert_not_null(srv_cache_ghost_match(&c, ids, 130, 3, &shared));
  cr_assert_eq(shared, 32);
  ids[0] = 7;
  cr_assert_null(srv_cache_ghost_match(&c, ids, 130, 3, &shared));
  cr_assert_null(srv_cache_ghost_match(&c, ids, 20, 3, &shared)); /* shorter than a stride */
  for (int k = 0; k < SRV_GHOSTS + 10; k++) {
    int32_t one[40];
    for (int i = 0; i < 40; i++) one[i] = k * 100 + i;
    cr_assert_eq(srv_cache_insert(&c, k, one, 40, 0, drop, &n_drop), HEED_OK);
    cr_assert_eq(srv_cache_evict(&c, 3.0, &seq, NULL), 1);
  }
  int32_t first[40], last[40];
  for (int i = 0; i < 40; i++) first[i] = i, last[i] = (SRV_GHOSTS + 9) * 100 + i;
  cr_assert_null(srv_cache_ghost_match(&c, first, 40, 0, &shared)); /* pushed out of the ring */
  cr_assert_not_null(srv_cache_ghost_match(&c, last, 40, 0, &shared));
  srv_cache_free(&c);
}

Test(cache, many_entries) {
  srv_cache c = {0};
  int drop[8];
  unsigned n_drop;
  for (int k = 0; k < 500; k++) {
    int32_t ids[3] = {k % 7, k, 0};
    cr_assert_eq(srv_cache_insert(&c, k, ids, 3, (uint64_t)(k % 3), drop, &n_drop), HEED_OK);
    cr_assert_eq(n_drop, 0);
  }
  cr_assert_eq(c.n, 500);
  size_t lcp;
  cr_assert_eq(srv_cache_lookup(&c, (const int32_t[]){123 % 7, 123, 0, 5}, 4, 123 % 3, &lcp), 123);
  cr_assert_eq(lcp, 3);
  srv_cache_free(&c);
}

/* The tree against a brute-force model of what it holds: random inserts over
 * a small alphabet (so paths share and nest), evictions and lookups, checked
 * after every step: the longest shared prefix equals the model's, the sequence
 * named holds that prefix, and the live set is what inserts and drops say. */
typedef struct model_entry {
  int seq;
  uint64_t tenant;
  size_t n;
  int32_t ids[24];
} model_entry;

static size_t lcp_of(const int32_t *a, size_t na, const int32_t *b, size_t nb) {
  size_t i = 0;
  while (i < na && i < nb && a[i] == b[i]) i++;
  return i;
}

static void model_remove(model_entry *m, unsigned *n, int seq) {
  for (unsigned i = 0; i < *n; i++)
    if (m[i].seq == seq) {
      m[i] = m[--*n];
      return;
    }
  cr_assert_fail("the cache let go of seq %d, which it did not hold", seq);
}

Test(cache, random_against_a_brute_force_model) {
  enum { STEPS = 4000 };
  srv_cache c = {0};
  model_entry *m = calloc(STEPS, sizeof *m);
  cr_assert_not_null(m);
  unsigned nm = 0;
  uint64_t rng = 0x1234567;
  int next_seq = 0;
  for (int step = 0; step < STEPS; step++) {
    int32_t q[24];
    size_t nq = 1 + (uint32_t)(tu_next(&rng) >> 32) % 24;
    uint64_t tenant = (uint32_t)(tu_next(&rng) >> 32) % 2;
    /* half the queries start from a live entry, so they nest and fork often */
    if (nm && (uint32_t)(tu_next(&rng) >> 32) % 2) {
      const model_entry *b = &m[(uint32_t)(tu_next(&rng) >> 32) % nm];
      size_t keep = (uint32_t)(tu_next(&rng) >> 32) % (b->n + 1);
      memcpy(q, b->ids, keep * sizeof *q);
      for (size_t i = keep; i < nq; i++) q[i] = (int32_t)((uint32_t)(tu_next(&rng) >> 32) % 3);
      tenant = b->tenant;
      if (keep > nq) nq = keep;
    } else {
      for (size_t i = 0; i < nq; i++) q[i] = (int32_t)((uint32_t)(tu_next(&rng) >> 32) % 3);
    }
    unsigned op = (uint32_t)(tu_next(&rng) >> 32) % 10;
    if (op < 4) {
      int drop[8];
      unsigned n_drop = 99;
      int seq = next_seq++;
      cr_assert_eq(srv_cache_insert(&c, seq, q, nq, tenant, drop, &n_drop), HEED_OK);
      cr_assert_leq(n_drop, 1);
      m[nm++] = (model_entry){.seq = seq, .tenant = tenant, .n = nq};
      memcpy(m[nm - 1].ids, q, nq * sizeof *q);
      for (unsigned i = 0; i < n_drop; i++) model_remove(m, &nm, drop[i]);
      /* what went is what had to: no sequence kept is a prefix of another (the
       * others held that already; the new one is the only one to check) */
      for (unsigned i = 0; i < nm; i++) {
        const model_entry *a = &m[i];
        for (unsigned k = 0; k < nm; k++) {
          const model_entry *b = &m[k];
          if (i == k || a->tenant != b->tenant || a->n > b->n || (a->seq != seq && b->seq != seq)) continue;
          cr_assert_neq(lcp_of(a->ids, a->n, b->ids, b->n), a->n,
                        "step %d: seq %d is a prefix of seq %d and both are kept", step, a->seq, b->seq);
        }
      }
    } else if (op < 7) {
      int seq = -1;
      cr_assert_eq(srv_cache_evict_lru(&c, &seq), nm > 0);
      if (nm) model_remove(m, &nm, seq);
    } else {
      size_t lcp = 99, want = 0;
      for (unsigned i = 0; i < nm; i++) {
        size_t l = m[i].tenant == tenant ? lcp_of(m[i].ids, m[i].n, q, nq) : 0;
        if (l > want) want = l;
      }
      int seq = srv_cache_lookup(&c, q, nq, tenant, &lcp);
      cr_assert_eq(lcp, want, "step %d: lookup shares %zu tokens; the longest cached prefix is %zu", step, lcp, want);
      if (!want) {
        cr_assert_eq(seq, -1);
        continue;
      }
      unsigned i = 0;
      while (i < nm && m[i].seq != seq) i++;
      cr_assert_lt(i, nm, "step %d: lookup named seq %d, not cached", step, seq);
      cr_assert_eq(m[i].tenant, tenant);
      cr_assert_geq(lcp_of(m[i].ids, m[i].n, q, nq), want, "step %d: seq %d does not hold the prefix", step, seq);
    }
    cr_assert_eq(c.n, nm, "step %d: the cache holds %u sequences, the model %u", step, c.n, nm);
  }
  free(m);
  srv_cache_free(&c);
}

/* ---------- metrics ---------- */

static char *render(srv_metrics *m, const srv_gauges *g) {
  size_t len = 0;
  char *t = srv_metrics_render(m, g, &len);
  cr_assert_not_null(t);
  cr_assert_eq(strlen(t), len);
  return t;
}

/* Whole lines only: "x 1" must not match "x 10". */
static int has_line(const char *text, const char *line) {
  size_t n = strlen(line);
  for (const char *p = text; (p = strstr(p, line)); p++)
    if ((p == text || p[-1] == '\n') && p[n] == '\n') return 1;
  return 0;
}
#define EXPECT_LINE(t, l) cr_assert(has_line((t), (l)), "no line '%s' in:\n%s", (l), (t))

Test(metrics, counters_gauges_and_histograms) {
  srv_metrics m;
  srv_metrics_init(&m);
  srv_metrics_request(&m, "/v1/chat/completions", 200);
  srv_metrics_request(&m, "/v1/chat/completions", 200);
  srv_metrics_request(&m, "/v1/chat/completions", 400);
  srv_metrics_request(&m, "/health", 200);
  srv_metrics_tokens(&m, 10, 20, 4, 6, 5);
  srv_metrics_tokens(&m, 1, 2, 0, 0, 0);
  srv_metrics_ttft(&m, 0.07);  /* le 0.1 */
  srv_metrics_ttft(&m, 0.5);   /* le 0.5: bounds are inclusive */
  srv_metrics_ttft(&m, 1000);  /* +Inf only */
  srv_metrics_tpot(&m, 0.02, 3);
  srv_metrics_tpot(&m, 2, 1);
  srv_gauges g = {.queued = 3, .running = 2, .cache_seqs = 5, .blocks_used = 17, .blocks_free = 83, .block_tokens = 16};
  char *t = render(&m, &g);
  EXPECT_LINE(t, "# TYPE heed_requests_total counter");
  EXPECT_LINE(t, "heed_requests_total{endpoint=\"/v1/chat/completions\",status=\"200\"} 2");
  EXPECT_LINE(t, "heed_requests_total{endpoint=\"/v1/chat/completions\",status=\"400\"} 1");
  EXPECT_LINE(t, "heed_requests_total{endpoint=\"/health\",status=\"200\"} 1");
  EXPECT_LINE(t, "heed_prompt_tokens_total 11");
  EXPECT_LINE(t, "heed_generated_tokens_total 22");
  EXPECT_LINE(t, "heed_cached_prompt_tokens_total 4");
  EXPECT_LINE(t, "heed_draft_tokens_total 6");
  EXPECT_LINE(t, "heed_draft_accepted_total 5");
  EXPECT_LINE(t, "# TYPE heed_queue_depth gauge");
  EXPECT_LINE(t, "heed_queue_depth 3");
  EXPECT_LINE(t, "heed_running_sequences 2");
  EXPECT_LINE(t, "heed_kv_blocks_used 17");
  EXPECT_LINE(t, "heed_kv_blocks_free 83");
  EXPECT_LINE(t, "heed_kv_block_tokens 16");
  EXPECT_LINE(t, "heed_cache_sequences 5");
  EXPECT_LINE(t, "# TYPE heed_time_to_first_token_seconds histogram");
  EXPECT_LINE(t, "heed_time_to_first_token_seconds_bucket{le=\"0.05\"} 0");
  EXPECT_LINE(t, "heed_time_to_first_token_seconds_bucket{le=\"0.1\"} 1");
  EXPECT_LINE(t, "heed_time_to_first_token_seconds_bucket{le=\"0.25\"} 1");
  EXPECT_LINE(t, "heed_time_to_first_token_seconds_bucket{le=\"0.5\"} 2");
  EXPECT_LINE(t, "heed_time_to_first_token_seconds_bucket{le=\"128\"} 2");
  EXPECT_LINE(t, "heed_time_to_first_token_seconds_bucket{le=\"+Inf\"} 3");
  EXPECT_LINE(t, "heed_time_to_first_token_seconds_sum 1000.57");
  EXPECT_LINE(t, "heed_time_to_first_token_seconds_count 3");
  EXPECT_LINE(t, "# TYPE heed_time_per_output_token_seconds histogram");
  EXPECT_LINE(t, "heed_time_per_output_token_seconds_bucket{le=\"0.01\"} 0");
  EXPECT_LINE(t, "heed_time_per_output_token_seconds_bucket{le=\"0.025\"} 3");
  EXPECT_LINE(t, "heed_time_per_output_token_seconds_bucket{le=\"1\"} 3");
  EXPECT_LINE(t, "heed_time_per_output_token_seconds_bucket{le=\"+Inf\"} 4");
  EXPECT_LINE(t, "heed_time_per_output_token_seconds_sum 2.06");
  EXPECT_LINE(t, "heed_time_per_output_token_seconds_count 4");
  /* Every family has its HELP and TYPE; every line ends in a newline. */
  const char *fam[] = {"heed_requests_total", "heed_prompt_tokens_total", "heed_generated_tokens_total",
                       "heed_cached_prompt_tokens_total", "heed_draft_tokens_total", "heed_draft_accepted_total",
                       "heed_queue_depth", "heed_running_sequences", "heed_kv_blocks_used", "heed_kv_blocks_free", "heed_kv_block_tokens",
                       "heed_cache_sequences", "heed_time_to_first_token_seconds",
                       "heed_time_per_output_token_seconds"};
  for (size_t i = 0; i < sizeof fam / sizeof *fam; i++) {
    char help[128];
    snprintf(help, sizeof help, "\n# HELP %s ", fam[i]);
    cr_assert(strstr(t, help) || strncmp(t, help + 1, strlen(help + 1)) == 0, "no HELP for %s", fam[i]);
  }
  cr_assert_eq(t[strlen(t) - 1], '\n');
  free(t);
  srv_metrics_destroy(&m);
}

Test(metrics, buckets_are_cumulative) {
  srv_metrics m;
  srv_metrics_init(&m);
  static const double ttft_le[] = {0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64, 128};
  /* One observation inside each bucket, and one past the last. */
  for (int i = 0; i < 12; i++) srv_metrics_ttft(&m, ttft_le[i] * 0.9);
  srv_metrics_ttft(&m, 500);
  srv_metrics_ttft(&m, -1); /* clamped to 0: the first bucket */
  char *t = render(&m, NULL);
  char line[160];
  for (int i = 0; i < 12; i++) {
    snprintf(line, sizeof line, "heed_time_to_first_token_seconds_bucket{le=\"%g\"} %d", ttft_le[i], i + 2);
    EXPECT_LINE(t, line);
  }
  EXPECT_LINE(t, "heed_time_to_first_token_seconds_bucket{le=\"+Inf\"} 14");
  EXPECT_LINE(t, "heed_time_to_first_token_seconds_count 14");
  EXPECT_LINE(t, "heed_queue_depth 0"); /* no gauges given: zeros */
  /* The TPOT buckets: bound by bound, and the last finite one below +Inf. */
  const char *le[] = {"0.01", "0.025", "0.05", "0.075", "0.1", "0.15", "0.2", "0.3", "0.5", "1"};
  for (int i = 0; i < 10; i++) {
    snprintf(line, sizeof line, "heed_time_per_output_token_seconds_bucket{le=\"%s\"} 0", le[i]);
    EXPECT_LINE(t, line);
  }
  free(t);
  srv_metrics_destroy(&m);
}

Test(metrics, label_values_escaped) {
  srv_metrics m;
  srv_metrics_init(&m);
  srv_metrics_request(&m, "/a\"b\\c\nd", 404);
  /* Longer than 31 bytes: cut there. */
  srv_metrics_request(&m, "/0123456789012345678901234567890123456789", 404);
  char *t = render(&m, NULL);
  EXPECT_LINE(t, "heed_requests_total{endpoint=\"/a\\\"b\\\\c\\nd\",status=\"404\"} 1");
  EXPECT_LINE(t, "heed_requests_total{endpoint=\"/012345678901234567890123456789\",status=\"404\"} 1");
  free(t);
  srv_metrics_destroy(&m);
}

Test(metrics, full_table_folds_into_other) {
  srv_metrics m;
  srv_metrics_init(&m);
  const unsigned slots = sizeof m.req / sizeof m.req[0];
  char ep[32];
  uint64_t total = 0;
  for (unsigned i = 0; i < 2 * slots; i++) {
    snprintf(ep, sizeof ep, "/p%u", i);
    srv_metrics_request(&m, ep, 200), total++;
  }
  /* Many statuses on new paths: "other" rows for each while they fit, then one for all. */
  for (int st = 100; st < 100 + (int)slots; st++) srv_metrics_request(&m, "/new", st), total++;
  srv_metrics_request(&m, "/p0", 200), total++; /* an existing row still counts */
  cr_assert_leq(m.n_req, slots);
  char *t = render(&m, NULL);
  EXPECT_LINE(t, "heed_requests_total{endpoint=\"/p0\",status=\"200\"} 2");
  cr_assert(strstr(t, "heed_requests_total{endpoint=\"other\",status=\"200\"} "));
  cr_assert(strstr(t, "heed_requests_total{endpoint=\"other\",status=\"other\"} "));
  /* Nothing was lost: the rows add up to every request. */
  uint64_t sum = 0;
  for (const char *p = t; (p = strstr(p, "\nheed_requests_total{")); p++) {
    const char *sp = strchr(p, '}');
    cr_assert_not_null(sp);
    sum += strtoull(sp + 2, NULL, 10);
  }
  cr_assert_eq(sum, total);
  free(t);
  srv_metrics_destroy(&m);
}

/* ---------- the disk tier ---------- */

#include <dirent.h>
#include <sys/stat.h>
#include <unistd.h>

#define DT_BL 16
#define DT_PAY 1000

static char *disk_tmpdir(void) {
  char *t = strdup("/tmp/heed_disk_test_XXXXXX");
  cr_assert(mkdtemp(t));
  return t;
}

static void rm_tree(const char *dir) {
  DIR *d = opendir(dir);
  if (!d) return;
  struct dirent *x;
  while ((x = readdir(d))) {
    if (!strcmp(x->d_name, ".") || !strcmp(x->d_name, "..")) continue;
    char p[1024];
    snprintf(p, sizeof p, "%s/%s", dir, x->d_name);
    struct stat sb;
    if (stat(p, &sb) == 0 && S_ISDIR(sb.st_mode)) rm_tree(p);
    else unlink(p);
  }
  closedir(d);
  rmdir(dir);
}

static srv_disk *disk_open_at(const char *dir, uint64_t key, uint64_t limit) {
  srv_disk_config c = {.dir = dir, .limit = limit, .key = key, .payload_bytes = DT_PAY, .block_len = DT_BL};
  srv_disk *d = NULL;
  char err[256] = "";
  cr_assert_eq(srv_disk_open(&c, &d, err, sizeof err), HEED_OK, "%s", err);
  return d;
}

/* Block i of a sequence of tokens 1000 * seq + position, its payload a pattern of both. */
static void dt_block(unsigned seq, unsigned i, int32_t *tok, uint8_t *pay) {
  for (unsigned t = 0; t < DT_BL; t++) tok[t] = (int32_t)(1000 * seq + i * DT_BL + t);
  for (unsigned b = 0; b < DT_PAY; b++) pay[b] = (uint8_t)(b * 7 + i * 13 + seq);
}

static uint64_t dt_put_chain(srv_disk *d, unsigned seq, unsigned n, uint64_t *hs) {
  uint64_t h = 77;
  for (unsigned i = 0; i < n; i++) {
    int32_t tok[DT_BL];
    uint8_t pay[DT_PAY];
    dt_block(seq, i, tok, pay);
    const uint64_t parent = h;
    h = srv_disk_chain(parent, tok, DT_BL);
    if (hs) hs[i] = h;
    cr_assert_eq(srv_disk_put(d, h, parent, i, tok, pay), HEED_OK);
  }
  return h;
}

static size_t count_files(const char *dir) {
  DIR *d = opendir(dir);
  if (!d) return 0;
  size_t n = 0;
  struct dirent *x;
  while ((x = readdir(d))) n += x->d_name[0] != '.';
  closedir(d);
  return n;
}

Test(disk, blocks_survive_a_reopen_and_read_back_exactly) {
  char *dir = disk_tmpdir();
  srv_disk *d = disk_open_at(dir, 0xABCD, 1 << 20);
  uint64_t hs[3];
  dt_put_chain(d, 1, 3, hs);
  srv_disk_stats st;
  srv_disk_get_stats(d, &st);
  cr_assert_eq(st.files, 3);
  cr_assert_eq(st.written, 3);
  srv_disk_close(d);
  d = disk_open_at(dir, 0xABCD, 1 << 20); /* a restart */
  srv_disk_get_stats(d, &st);
  cr_assert_eq(st.files, 3);
  cr_assert_eq(st.deleted_bad, 0);
  uint64_t parent = 77;
  for (unsigned i = 0; i < 3; i++) {
    int32_t tok[DT_BL];
    uint8_t want[DT_PAY], got[DT_PAY];
    dt_block(1, i, tok, want);
    cr_assert(srv_disk_has(d, hs[i]));
    cr_assert_eq(srv_disk_get(d, hs[i], parent, tok, got), 1);
    cr_assert(!memcmp(want, got, DT_PAY));
    parent = hs[i];
  }
  /* the same hash asked with other tokens or another parent (a collision): not used, not deleted */
  int32_t tok[DT_BL];
  uint8_t pay[DT_PAY];
  dt_block(1, 0, tok, pay);
  tok[5]++;
  cr_assert_eq(srv_disk_get(d, hs[0], 77, tok, pay), 0);
  tok[5]--;
  cr_assert_eq(srv_disk_get(d, hs[0], 78, tok, pay), 0);
  cr_assert(srv_disk_has(d, hs[0]));
  /* another model's key: its own subfolder, which sees none of these */
  srv_disk *o = disk_open_at(dir, 0x1234, 1 << 20);
  cr_assert(!srv_disk_has(o, hs[0]));
  srv_disk_close(o);
  srv_disk_close(d);
  rm_tree(dir);
  free(dir);
}

Test(disk, corrupt_and_foreign_files_are_deleted_never_used) {
  char *dir = disk_tmpdir();
  srv_disk *d = disk_open_at(dir, 0xABCD, 1 << 20);
  uint64_t hs[4];
  dt_put_chain(d, 2, 4, hs);
  srv_disk_close(d);
  char sub[512], p[1024];
  snprintf(sub, sizeof sub, "%s/%016llx", dir, 0xABCDull);
  /* a payload byte flipped (found at read), a header byte flipped (found at open) */
  for (int which = 0; which < 2; which++) {
    snprintf(p, sizeof p, "%s/%016llx.kvb", sub, (unsigned long long)hs[which ? 3 : 1]);
    FILE *f = fopen(p, "r+b");
    cr_assert(f);
    fseek(f, which ? 20 : -10, which ? SEEK_SET : SEEK_END);
    int c = fgetc(f);
    fseek(f, -1, SEEK_CUR);
    fputc(c ^ 0x40, f);
    fclose(f);
  }
  /* foreign: an unknown name, a leftover temporary, a good name holding junk, a truncated copy */
  snprintf(p, sizeof p, "%s/notes.txt", sub);
  FILE *f = fopen(p, "w");
  fputs("hello", f), fclose(f);
  snprintf(p, sizeof p, "%s/%016llx.tmp", sub, 0x55ull);
  f = fopen(p, "w"), fputs("partial", f), fclose(f);
  snprintf(p, sizeof p, "%s/%016llx.kvb", sub, 0x66ull);
  f = fopen(p, "w"), fputs("not a block", f), fclose(f);
  char src[1024], dst[1024];
  snprintf(src, sizeof src, "%s/%016llx.kvb", sub, (unsigned long long)hs[2]);
  snprintf(dst, sizeof dst, "%s/%016llx.kvb", sub, 0x77ull); /* block 2's bytes under another name */
  FILE *a = fopen(src, "rb"), *b = fopen(dst, "wb");
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, a))) fwrite(buf, 1, n, b);
  fclose(a), fclose(b);
  cr_assert_eq(count_files(sub), 8);
  d = disk_open_at(dir, 0xABCD, 1 << 20);
  srv_disk_stats st;
  srv_disk_get_stats(d, &st);
  cr_assert_eq(st.deleted_bad, 5, "deleted at open: %llu", (unsigned long long)st.deleted_bad); /* 4 foreign + the bad header */
  cr_assert_eq(st.files, 3);
  cr_assert_eq(count_files(sub), 3);
  int32_t tok[DT_BL];
  uint8_t pay[DT_PAY];
  dt_block(2, 0, tok, pay);
  cr_assert_eq(srv_disk_get(d, hs[0], 77, tok, pay), 1);
  dt_block(2, 1, tok, pay);
  cr_assert_eq(srv_disk_get(d, hs[1], hs[0], tok, pay), -1, "the flipped payload byte");
  cr_assert(!srv_disk_has(d, hs[1]));
  cr_assert_eq(count_files(sub), 2);
  srv_disk_get_stats(d, &st);
  cr_assert_eq(st.deleted_bad, 6);
  srv_disk_close(d);
  rm_tree(dir);
  free(dir);
}

Test(disk, the_limit_deletes_least_recently_used_first) {
  char *dir = disk_tmpdir();
  srv_disk *d = disk_open_at(dir, 0xABCD, 1 << 20);
  uint64_t hs[3];
  dt_put_chain(d, 3, 3, hs);
  srv_disk_stats st;
  srv_disk_get_stats(d, &st);
  const uint64_t per = st.bytes / 3;
  srv_disk_close(d);
  d = disk_open_at(dir, 0xABCD, 3 * per); /* room for three */
  int32_t tok[DT_BL];
  uint8_t pay[DT_PAY];
  dt_block(3, 0, tok, pay);
  cr_assert_eq(srv_disk_get(d, hs[0], 77, tok, pay), 1); /* block 0 used last */
  uint64_t h4[1];
  dt_put_chain(d, 4, 1, h4);
  srv_disk_get_stats(d, &st);
  cr_assert_eq(st.files, 3);
  cr_assert_eq(st.evicted, 1);
  cr_assert(srv_disk_has(d, hs[0]) && srv_disk_has(d, h4[0]));
  cr_assert(!srv_disk_has(d, hs[1]) || !srv_disk_has(d, hs[2]));
  srv_disk_close(d);
  /* a smaller limit at open deletes down to it */
  d = disk_open_at(dir, 0xABCD, per);
  srv_disk_get_stats(d, &st);
  cr_assert_eq(st.files, 1);
  srv_disk_close(d);
  /* a block bigger than the whole limit is refused, not written */
  d = disk_open_at(dir, 0xABCD, per - 1);
  uint64_t h5 = srv_disk_chain(77, tok, DT_BL) ^ 1;
  cr_assert_eq(srv_disk_put(d, h5, 77, 0, tok, pay), HEED_E_RANGE);
  srv_disk_close(d);
  rm_tree(dir);
  free(dir);
}

/* ---------- chunk reuse's search ---------- */

static void run_tokens(int32_t *t, size_t n, uint64_t seed) {
  for (size_t i = 0; i < n; i++) {
    seed = seed * 6364136223846793005ull + 1442695040888963407ull;
    t[i] = (int32_t)(seed >> 40) % 50000;
  }
}

/* Every run names tokens equal to its source's, in order, inside [from, n - 1). */
static void runs_sound(const int32_t *p, size_t n, size_t from, const int32_t *const *src, const size_t *len,
                       const srv_run *r, unsigned nr) {
  size_t last = from;
  for (unsigned i = 0; i < nr; i++) {
    cr_assert(r[i].dst >= last && r[i].dst + r[i].n <= n - 1, "run %u [%zu, +%zu) out of order or over the end", i,
              r[i].dst, r[i].n);
    cr_assert(r[i].src_pos + r[i].n <= len[r[i].src]);
    cr_assert(!memcmp(p + r[i].dst, src[r[i].src] + r[i].src_pos, r[i].n * sizeof(int32_t)), "run %u's tokens differ", i);
    last = r[i].dst + r[i].n;
  }
}

Test(chunks, runs_after_changed_inserted_and_dropped_text) {
  enum { N = 600, B = 8 };
  int32_t a[N], p[N + 40];
  run_tokens(a, N, 1);
  const int32_t *src[2] = {a, NULL};
  size_t len[2] = {N, 0};
  srv_run *r;
  unsigned nr;
  /* a changed span [20, 25), same length: everything after it but the boundary and the last token */
  memcpy(p, a, sizeof a);
  for (int i = 20; i < 25; i++) p[i] = 99999 - i;
  cr_assert_eq(srv_chunk_runs(p, N, 20, src, len, 1, B, &r, &nr), (size_t)(N - 1 - 25 - B));
  cr_assert_eq(nr, 1);
  cr_assert(r[0].dst == 25 + B && r[0].src_pos == 25 + B);
  runs_sound(p, N, 20, src, len, r, nr);
  free(r);
  /* 7 tokens where there were 5: the rest moves by 2 */
  memcpy(p, a, 20 * sizeof *a);
  for (int i = 20; i < 27; i++) p[i] = 99999 - i;
  memcpy(p + 27, a + 25, (N - 25) * sizeof *a);
  const size_t n2 = N + 2;
  cr_assert_eq(srv_chunk_runs(p, n2, 20, src, len, 1, B, &r, &nr), n2 - 1 - 27 - B);
  cr_assert(nr == 1 && r[0].dst == 27 + B && r[0].src_pos == 25 + B);
  runs_sound(p, n2, 20, src, len, r, nr);
  free(r);
  /* a tool result dropped: tokens [100, 150) gone */
  memcpy(p, a, 100 * sizeof *a);
  memcpy(p + 100, a + 150, (N - 150) * sizeof *a);
  const size_t n3 = N - 50;
  cr_assert_eq(srv_chunk_runs(p, n3, 100, src, len, 1, B, &r, &nr), n3 - 1 - 100 - B);
  cr_assert(nr == 1 && r[0].dst == 100 + B && r[0].src_pos == 150 + B);
  runs_sound(p, n3, 100, src, len, r, nr);
  free(r);
  /* two sources, a summary between: a compaction keeping the last exchange of each */
  int32_t b[300];
  run_tokens(b, 300, 2);
  src[1] = b, len[1] = 300;
  run_tokens(p, 50, 3);                           /* new text */
  memcpy(p + 50, a + 400, 200 * sizeof *a);       /* a's end */
  run_tokens(p + 250, 30, 4);                     /* new text */
  memcpy(p + 280, b + 100, 200 * sizeof *b);      /* b's end, and a token after it */
  p[480] = 7;
  const size_t n4 = 481;
  size_t got = srv_chunk_runs(p, n4, 0, src, len, 2, B, &r, &nr);
  cr_assert_eq(nr, 2);
  cr_assert(r[0].src == 0 && r[0].dst == 50 + B && r[0].src_pos == 400 + B && r[0].n == 200 - B);
  cr_assert(r[1].src == 1 && r[1].dst == 280 + B && r[1].src_pos == 100 + B && r[1].n == 200 - B);
  cr_assert_eq(got, 2 * (200 - B));
  runs_sound(p, n4, 0, src, len, r, nr);
  free(r);
  /* nothing shared, a run too short to keep, a prompt shorter than a chunk */
  run_tokens(p, N, 5);
  cr_assert_eq(srv_chunk_runs(p, N, 0, src, len, 2, B, &r, &nr), 0);
  cr_assert(nr == 0 && r == NULL);
  memcpy(p + 100, a + 200, (SRV_CHUNK + B / 2) * sizeof *a); /* 68 tokens: under boundary + a half chunk */
  cr_assert_eq(srv_chunk_runs(p, N, 0, src, len, 2, B, &r, &nr), 0);
  cr_assert_eq(srv_chunk_runs(a, 40, 0, src, len, 2, B, &r, &nr), 0);
  /* the prompt equal to the source: all but the last token after `from`, less the boundary */
  cr_assert_eq(srv_chunk_runs(a, N, 10, src, len, 1, B, &r, &nr), (size_t)(N - 1 - 10 - B));
  free(r);
}

Test(chunks, random_prompts_give_sound_runs) {
  enum { N = 2000 };
  int32_t *a = malloc(N * sizeof *a), *p = malloc(3 * N * sizeof *p);
  run_tokens(a, N, 11);
  for (unsigned i = 0; i < N; i++) a[i] %= 40; /* a small alphabet: many false starts */
  const int32_t *src[1] = {a};
  size_t len[1] = {N};
  uint64_t s = 99;
  for (int it = 0; it < 200; it++) {
    size_t n = 0;
    while (n < 2 * N) { /* pieces of a and random tokens */
      s = s * 6364136223846793005ull + 1;
      size_t k = 1 + (s >> 33) % 300, at = (s >> 13) % N;
      if ((s >> 7) & 1) {
        if (at + k > N) k = N - at;
        memcpy(p + n, a + at, k * sizeof *a);
      } else {
        run_tokens(p + n, k, s);
        for (size_t i = n; i < n + k; i++) p[i] %= 40;
      }
      n += k;
    }
    srv_run *r;
    unsigned nr;
    const size_t from = (s >> 20) % 100;
    size_t got = srv_chunk_runs(p, n, from, src, len, 1, (unsigned)(s % 17), &r, &nr), sum = 0;
    runs_sound(p, n, from, src, len, r, nr);
    for (unsigned i = 0; i < nr; i++) sum += r[i].n;
    cr_assert_eq(got, sum);
    free(r);
  }
  free(a), free(p);
}
