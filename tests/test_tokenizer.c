/* tests/test_tokenizer.c - the tokenizers (text/tok_*.c) on small hand-built
 * vocabularies, GGUFs written in memory, and the two real models. The
 * token-for-token comparison with Hugging Face on a large corpus is
 * tests/tokenizer_oracle.py. */
#include <criterion/criterion.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "heed/gguf.h"
#include "heed/tokenizer.h"
#include "tests/test_models.h"
#include "tests/test_util.h"

/* ---------- building vocabularies ---------- */

#define VMAX 1024
typedef struct vb {
  char *tok[VMAX];
  uint32_t len[VMAX];
  int32_t type[VMAX];
  float score[VMAX];
  uint32_t n;
  char *merge[VMAX];
  uint32_t n_merges;
} vb;

static void vb_free(vb *v) {
  for (uint32_t i = 0; i < v->n; i++) free(v->tok[i]);
  for (uint32_t i = 0; i < v->n_merges; i++) free(v->merge[i]);
  memset(v, 0, sizeof *v);
}

/* GPT-2's byte-level spelling of raw bytes (what gpt2 vocabularies store). */
static size_t byte_level(const char *s, size_t n, char *out) {
  size_t w = 0;
  for (size_t i = 0; i < n; i++) {
    unsigned b = (uint8_t)s[i], cp;
    if ((b >= 33 && b <= 126) || (b >= 161 && b <= 172) || b >= 174)
      cp = b;
    else if (b <= 32)
      cp = 256 + b;
    else if (b <= 160)
      cp = 256 + 33 + (b - 127);
    else
      cp = 256 + 67;
    if (cp < 0x80) {
      out[w++] = (char)cp;
    } else {
      out[w++] = (char)(0xC0 | cp >> 6);
      out[w++] = (char)(0x80 | (cp & 0x3F));
    }
  }
  out[w] = 0;
  return w;
}

static int32_t vb_add_n(vb *v, const char *text, size_t n, int type, float score) {
  cr_assert_lt(v->n, VMAX);
  v->tok[v->n] = malloc(n + 1);
  memcpy(v->tok[v->n], text, n);
  v->tok[v->n][n] = 0;
  v->len[v->n] = (uint32_t)n;
  v->type[v->n] = type;
  v->score[v->n] = score;
  return (int32_t)v->n++;
}
static int32_t vb_add(vb *v, const char *text, int type, float score) { return vb_add_n(v, text, strlen(text), type, score); }

/* gpt2: a normal token for raw bytes s (stored byte-level). */
static int32_t vb_bl(vb *v, const char *s) {
  char buf[512];
  size_t n = byte_level(s, strlen(s), buf);
  return vb_add_n(v, buf, n, HEED_TOKEN_NORMAL, 0);
}

/* gpt2: the merge of raw a and raw b; adds the merged token when absent. */
static void vb_merge(vb *v, const char *a, const char *b) {
  char ba[256], bb[256], cat[512];
  byte_level(a, strlen(a), ba);
  byte_level(b, strlen(b), bb);
  snprintf(cat, sizeof cat, "%s%s", ba, bb);
  int have = 0;
  for (uint32_t i = 0; i < v->n; i++) have |= v->len[i] == strlen(cat) && memcmp(v->tok[i], cat, v->len[i]) == 0;
  if (!have) vb_add(v, cat, HEED_TOKEN_NORMAL, 0);
  char *m = malloc(strlen(ba) + strlen(bb) + 2);
  sprintf(m, "%s %s", ba, bb);
  v->merge[v->n_merges++] = m;
}

/* gpt2: the 256 byte tokens first (id = byte). */
static void vb_gpt2_bytes(vb *v) {
  for (int b = 0; b < 256; b++) {
    char c = (char)b, buf[4];
    size_t n = byte_level(&c, 1, buf);
    vb_add_n(v, buf, n, HEED_TOKEN_NORMAL, 0);
  }
}

/* llama: the 256 <0xNN> byte tokens. */
static void vb_spm_bytes(vb *v) {
  for (int b = 0; b < 256; b++) {
    char name[8];
    snprintf(name, sizeof name, "<0x%02X>", b);
    vb_add(v, name, HEED_TOKEN_BYTE, 0);
  }
}

static heed_tokenizer *vb_build(vb *v, const char *model, const char *pre, heed_tokenizer_desc *over) {
  heed_tokenizer_desc d;
  if (over)
    d = *over;
  else
    heed_tokenizer_desc_init(&d);
  d.model = model;
  d.pre = pre;
  d.n_tokens = v->n;
  d.tokens = (const char *const *)v->tok;
  d.token_lens = v->len;
  d.types = v->type;
  d.scores = v->score;
  d.n_merges = v->n_merges;
  d.merges = (const char *const *)v->merge;
  heed_tokenizer *t = NULL;
  heed_error err;
  heed_status st = heed_tokenizer_create(&d, &t, &err);
  cr_assert_eq(st, HEED_OK, "create: %s", err.msg);
  return t;
}

static int32_t find(const heed_tokenizer *t, const char *s) { return heed_tokenizer_find(t, s, strlen(s)); }
static int32_t find_bl(const heed_tokenizer *t, const char *raw) {
  char buf[512];
  size_t n = byte_level(raw, strlen(raw), buf);
  return heed_tokenizer_find(t, buf, n);
}

/* Encodes and checks against want[0..n_want). */
static void expect(const heed_tokenizer *t, const char *text, size_t len, unsigned flags, const heed_token *want,
                   size_t n_want) {
  heed_tokens l = {0};
  heed_error err;
  cr_assert_eq(heed_tokenizer_encode(t, text, len, flags, &l, &err), HEED_OK, "%s", err.msg);
  char got[1024] = "", exp[1024] = "";
  for (size_t i = 0; i < l.n && strlen(got) < 1000; i++) snprintf(got + strlen(got), sizeof got - strlen(got), " %d", l.ids[i]);
  for (size_t i = 0; i < n_want && strlen(exp) < 1000; i++) snprintf(exp + strlen(exp), sizeof exp - strlen(exp), " %d", want[i]);
  cr_assert(l.n == n_want && (n_want == 0 || memcmp(l.ids, want, n_want * sizeof *want) == 0),
            "\"%.*s\": got [%s ], want [%s ]", (int)(len > 60 ? 60 : len), text, got, exp);
  heed_tokens_free(&l);
}
#define EXPECT(t, text, flags, ...)                                              \
  do {                                                                           \
    const heed_token want_[] = {__VA_ARGS__};                                    \
    expect(t, text, strlen(text), flags, want_, sizeof want_ / sizeof *want_);   \
  } while (0)

static void expect_roundtrip(const heed_tokenizer *t, const char *text, size_t len, unsigned flags) {
  heed_tokens l = {0};
  heed_error err;
  cr_assert_eq(heed_tokenizer_encode(t, text, len, flags, &l, &err), HEED_OK, "%s", err.msg);
  char *back = malloc(len + 1);
  size_t n;
  cr_assert_eq(heed_tokenizer_decode(t, l.ids, l.n, HEED_DETOK_SPECIAL, back, len + 1, &n, &err), HEED_OK, "%s", err.msg);
  cr_assert(n == len && memcmp(back, text, len) == 0, "round trip of %zu bytes gave %zu", len, n);
  free(back);
  heed_tokens_free(&l);
}

/* ---------- gpt2 ---------- */

Test(tokenizer_gpt2, merges_apply_by_rank_then_leftmost) {
  vb v = {0};
  vb_gpt2_bytes(&v);
  vb_merge(&v, "b", "c"); /* rank 0 */
  vb_merge(&v, "a", "b"); /* rank 1 */
  vb_merge(&v, "x", "x"); /* rank 2 */
  heed_tokenizer *t = vb_build(&v, "gpt2", "gpt2", NULL);
  /* "abc": (b,c) has the lower rank, though (a,b) is further left */
  EXPECT(t, "abc", 0, 'a', find(t, "bc"));
  /* "xxx": the same pair twice overlapping: the leftmost merges */
  EXPECT(t, "xxx", 0, find(t, "xx"), 'x');
  heed_tokenizer_free(t);
  vb_free(&v);

  /* ranks swapped: (a,b) first */
  vb_gpt2_bytes(&v);
  vb_merge(&v, "a", "b");
  vb_merge(&v, "b", "c");
  t = vb_build(&v, "gpt2", "gpt2", NULL);
  EXPECT(t, "abc", 0, find(t, "ab"), 'c');
  heed_tokenizer_info info;
  heed_tokenizer_get_info(t, &info);
  cr_assert_eq(info.n_merges, 2);
  cr_assert_str_eq(info.model, "gpt2");
  cr_assert_str_eq(info.pre, "gpt2");
  cr_assert_eq(info.add_bos, 0);
  heed_tokenizer_free(t);
  vb_free(&v);
}

Test(tokenizer_gpt2, merges_chain_into_longer_tokens) {
  vb v = {0};
  vb_gpt2_bytes(&v);
  vb_merge(&v, "l", "l");
  vb_merge(&v, "h", "e");
  vb_merge(&v, "he", "ll");
  vb_merge(&v, "hell", "o");
  vb_merge(&v, " ", "w");
  vb_merge(&v, " w", "o");
  heed_tokenizer *t = vb_build(&v, "gpt2", "qwen2", NULL);
  EXPECT(t, "hello", 0, find(t, "hello"));
  EXPECT(t, "hello world", 0, find(t, "hello"), find_bl(t, " wo"), 'r', 'l', 'd');
  heed_tokenizer_free(t);
  vb_free(&v);
}

Test(tokenizer_gpt2, merges_never_cross_pre_tokens) {
  vb v = {0};
  vb_gpt2_bytes(&v);
  vb_merge(&v, "o", " "); /* "o " would need a pre-token that ends in a space */
  vb_merge(&v, "1", "2");
  vb_merge(&v, "12", "3");
  vb_merge(&v, "123", "4");
  vb_merge(&v, "'", "s");
  vb_merge(&v, " ", " ");
  heed_tokenizer *q = vb_build(&v, "gpt2", "qwen2", NULL);
  heed_tokenizer *l3 = vb_build(&v, "gpt2", "llama-bpe", NULL);
  heed_tokenizer *g2 = vb_build(&v, "gpt2", "default", NULL);
  EXPECT(q, "o o", 0, 'o', ' ', 'o');
  /* digits: one at a time (qwen2), groups of up to three (llama-bpe), runs (gpt2) */
  EXPECT(q, "1234", 0, '1', '2', '3', '4');
  EXPECT(l3, "1234", 0, find(l3, "123"), '4');
  EXPECT(g2, "1234", 0, find(g2, "1234"));
  /* contractions are pre-tokens of their own, case-insensitively in qwen2 */
  EXPECT(q, "it's", 0, 'i', 't', find(q, "'s"));
  EXPECT(q, "IT'S", 0, 'I', 'T', '\'', 'S');
  /* \s+(?!\S): a run of spaces leaves its last space to the word after it */
  EXPECT(q, "a   b", 0, 'a', find_bl(q, "  "), ' ', 'b');
  EXPECT(q, "a   ", 0, 'a', find_bl(q, "  "), ' ');
  heed_tokenizer_free(q);
  heed_tokenizer_free(l3);
  heed_tokenizer_free(g2);
  vb_free(&v);
}

Test(tokenizer_gpt2, llama_bpe_takes_whole_tokens_as_they_are) {
  vb v = {0};
  vb_gpt2_bytes(&v);
  vb_merge(&v, "a", "b");
  vb_merge(&v, "ab", "c");
  int32_t abcd = vb_bl(&v, "abcd"); /* in the vocabulary, unreachable by merges */
  heed_tokenizer *q = vb_build(&v, "gpt2", "qwen2", NULL);
  heed_tokenizer *l3 = vb_build(&v, "gpt2", "llama-bpe", NULL);
  EXPECT(q, "abcd", 0, find(q, "abc"), 'd');
  EXPECT(l3, "abcd", 0, abcd);
  heed_tokenizer_info info;
  heed_tokenizer_get_info(l3, &info);
  cr_assert_eq(info.add_bos, 1, "llama-bpe adds bos by default, as llama.cpp");
  heed_tokenizer_free(q);
  heed_tokenizer_free(l3);
  vb_free(&v);
}

Test(tokenizer_gpt2, any_bytes_round_trip) {
  vb v = {0};
  vb_gpt2_bytes(&v);
  vb_merge(&v, "\xe4", "\xb8");
  vb_merge(&v, "\xe4\xb8", "\xad");
  vb_merge(&v, "\xff", "\xfe");
  heed_tokenizer *t = vb_build(&v, "gpt2", "qwen2", NULL);
  const char *texts[] = {"", "a", "\xff", "\xe4\xb8\xad\xe6\x96\x87", ("abc\xff\xfe\xfd" "def"), "\xe4\xb8", "\xc0\xaf\xed\xa0\x80",
                         "\xf0\x9f\x98\x80 \xf0\x9f\x98", "x\x00y\x00"};
  for (size_t i = 0; i < sizeof texts / sizeof *texts; i++) expect_roundtrip(t, texts[i], i == 8 ? 4 : strlen(texts[i]), 0);
  /* a run of invalid bytes is one pre-token: its bytes may merge */
  EXPECT(t, "a\xff\xfe" "b", 0, 'a', find_bl(t, "\xff\xfe"), 'b');
  /* the truncated sequence merges as bytes, the valid one as a character */
  EXPECT(t, "\xe4\xb8\xad", 0, find_bl(t, "\xe4\xb8\xad"));
  EXPECT(t, "\xe4\xb8", 0, find_bl(t, "\xe4\xb8"));
  uint64_t seed = 7;
  char buf[4096];
  for (int r = 0; r < 200; r++) {
    size_t n = tu_next(&seed) % sizeof buf;
    for (size_t i = 0; i < n; i++) buf[i] = tu_next(&seed) % 7 == 0 ? (char)tu_next(&seed) : " aZ1\n\t'.\xc3\xa9"[tu_next(&seed) % 11];
    expect_roundtrip(t, buf, n, HEED_TOKENIZE_PARSE_SPECIAL);
  }
  heed_tokenizer_free(t);
  vb_free(&v);
}

/* ---------- special tokens ---------- */

static heed_tokenizer *chat_vocab(vb *v, heed_tokenizer_desc *d) {
  vb_gpt2_bytes(v);
  vb_merge(v, "h", "i");
  heed_tokenizer_desc_init(d);
  d->bos = vb_add(v, "<|begin|>", HEED_TOKEN_CONTROL, 0);
  d->eos = vb_add(v, "<|im_end|>", HEED_TOKEN_CONTROL, 0);
  vb_add(v, "<|im_start|>", HEED_TOKEN_CONTROL, 0);
  vb_add(v, "<tool>", HEED_TOKEN_USER_DEFINED, 0);
  vb_add(v, "<a>", HEED_TOKEN_CONTROL, 0);
  vb_add(v, "<a><b>", HEED_TOKEN_CONTROL, 0);
  vb_add(v, "[PAD9]", HEED_TOKEN_UNUSED, 0);
  return vb_build(v, "gpt2", "qwen2", d);
}

Test(tokenizer_special, control_only_when_asked_user_defined_always) {
  vb v = {0};
  heed_tokenizer_desc d;
  heed_tokenizer *t = chat_vocab(&v, &d);
  int32_t im_start = find(t, "<|im_start|>"), tool = find(t, "<tool>"), a = find(t, "<a>"), ab = find(t, "<a><b>");
  int32_t hi = find(t, "hi");
  EXPECT(t, "<|im_start|>hi", HEED_TOKENIZE_PARSE_SPECIAL, im_start, hi);
  EXPECT(t, "<|im_start|>hi", 0, '<', '|', 'i', 'm', '_', 's', 't', 'a', 'r', 't', '|', '>', hi);
  EXPECT(t, "x<tool>y", 0, 'x', tool, 'y');
  EXPECT(t, "x<tool>y", HEED_TOKENIZE_PARSE_SPECIAL, 'x', tool, 'y');
  /* the longest at the leftmost position */
  EXPECT(t, "<a><b>", HEED_TOKENIZE_PARSE_SPECIAL, ab);
  EXPECT(t, "<a><c>", HEED_TOKENIZE_PARSE_SPECIAL, a, '<', 'c', '>');
  EXPECT(t, "<<|im_start|>>", HEED_TOKENIZE_PARSE_SPECIAL, '<', im_start, '>');
  /* unused tokens are never matched */
  EXPECT(t, "[PAD9]", HEED_TOKENIZE_PARSE_SPECIAL, '[', 'P', 'A', 'D', '9', ']');
  /* the text between specials is pre-tokenized on its own */
  EXPECT(t, "hi<|im_start|> hi", HEED_TOKENIZE_PARSE_SPECIAL, hi, im_start, ' ', hi);
  heed_tokenizer_free(t);
  vb_free(&v);
}

Test(tokenizer_special, bos_and_eos_when_asked) {
  vb v = {0};
  heed_tokenizer_desc d;
  heed_tokenizer *t = chat_vocab(&v, &d);
  int32_t hi = find(t, "hi");
  heed_tokenizer_free(t);
  d.add_bos = 1;
  d.add_eos = 1;
  t = vb_build(&v, "gpt2", "qwen2", &d);
  EXPECT(t, "hi", HEED_TOKENIZE_ADD_SPECIAL, d.bos, hi, d.eos);
  EXPECT(t, "hi", 0, hi);
  EXPECT(t, "", HEED_TOKENIZE_ADD_SPECIAL, d.bos, d.eos);
  heed_tokenizer_free(t);
  d.add_bos = 0;
  d.add_eos = -1; /* default: no eos */
  t = vb_build(&v, "gpt2", "qwen2", &d);
  EXPECT(t, "hi", HEED_TOKENIZE_ADD_SPECIAL, hi);
  heed_tokenizer_free(t);
  vb_free(&v);
}

Test(tokenizer_special, untrusted_spans_match_no_control_token) {
  vb v = {0};
  heed_tokenizer_desc d;
  heed_tokenizer *t = chat_vocab(&v, &d);
  int32_t im_start = find(t, "<|im_start|>"), tool = find(t, "<tool>"), hi = find(t, "hi");
  /*                 0           12  14          26      33 */
  const char *text = "<|im_start|>hi<|im_start|><tool>hi<|im_start|>";
  size_t len = strlen(text);
  heed_text_span spans[] = {{0, 14, 0}, {14, 20, 1}, {34, 12, 0}};
  heed_tokens l = {0};
  heed_error err;
  cr_assert_eq(heed_tokenizer_encode_spans(t, text, len, spans, 3, HEED_TOKENIZE_PARSE_SPECIAL, &l, &err), HEED_OK, "%s",
               err.msg);
  heed_token want[] = {im_start, hi, '<', '|', 'i', 'm', '_', 's', 't', 'a', 'r', 't', '|', '>', tool, hi, im_start};
  cr_assert_eq(l.n, sizeof want / sizeof *want);
  cr_assert(memcmp(l.ids, want, sizeof want) == 0);
  /* a control token across the border of an untrusted span is not matched either */
  l.n = 0;
  heed_text_span cut[] = {{0, 5, 0}, {5, 9, 1}};
  cr_assert_eq(heed_tokenizer_encode_spans(t, "<|im_start|>hi", 14, cut, 2, HEED_TOKENIZE_PARSE_SPECIAL, &l, &err), HEED_OK);
  cr_assert_neq(l.ids[0], im_start);
  /* trusted spans next to each other are one trusted run */
  l.n = 0;
  heed_text_span two[] = {{0, 5, 0}, {5, 9, 0}};
  cr_assert_eq(heed_tokenizer_encode_spans(t, "<|im_start|>hi", 14, two, 2, HEED_TOKENIZE_PARSE_SPECIAL, &l, &err), HEED_OK);
  cr_assert(l.n == 2 && l.ids[0] == im_start && l.ids[1] == hi);
  /* without parse_special no span matches control tokens */
  l.n = 0;
  cr_assert_eq(heed_tokenizer_encode_spans(t, text, len, spans, 3, 0, &l, &err), HEED_OK);
  for (size_t i = 0; i < l.n; i++) cr_assert_neq(l.ids[i], im_start);
  /* spans that do not cover the text in order */
  heed_text_span gap[] = {{0, 10, 0}, {11, 35, 1}};
  cr_assert_eq(heed_tokenizer_encode_spans(t, text, len, gap, 2, 0, &l, &err), HEED_E_INVALID);
  cr_assert(strstr(err.msg, "span 1"), "%s", err.msg);
  heed_text_span shortc[] = {{0, 10, 0}};
  cr_assert_eq(heed_tokenizer_encode_spans(t, text, len, shortc, 1, 0, &l, &err), HEED_E_INVALID);
  heed_tokens_free(&l);
  heed_tokenizer_free(t);
  vb_free(&v);
}

Test(tokenizer_special, eog_by_id_and_by_text) {
  vb v = {0};
  heed_tokenizer_desc d;
  vb_gpt2_bytes(&v);
  heed_tokenizer_desc_init(&d);
  d.eos = vb_add(&v, "<|endoftext|>", HEED_TOKEN_CONTROL, 0);
  int32_t im_end = vb_add(&v, "<|im_end|>", HEED_TOKEN_CONTROL, 0);
  int32_t eot = vb_add(&v, "<my_eot>", HEED_TOKEN_CONTROL, 0);
  int32_t plain = vb_add(&v, "<end_of_turn>", HEED_TOKEN_NORMAL, 0); /* a normal token is text, never eog by text */
  d.eot = eot;
  heed_tokenizer *t = vb_build(&v, "gpt2", NULL, &d);
  cr_assert(heed_tokenizer_is_eog(t, d.eos));
  cr_assert(heed_tokenizer_is_eog(t, im_end));
  cr_assert(heed_tokenizer_is_eog(t, eot));
  cr_assert(!heed_tokenizer_is_eog(t, plain));
  cr_assert(!heed_tokenizer_is_eog(t, 'a'));
  cr_assert(!heed_tokenizer_is_eog(t, -1));
  cr_assert(!heed_tokenizer_is_eog(t, 1 << 30));
  const heed_token *ids;
  cr_assert_eq(heed_tokenizer_eog_ids(t, &ids), 3);
  cr_assert(ids[0] < ids[1] && ids[1] < ids[2]);
  heed_tokenizer_info info;
  heed_tokenizer_get_info(t, &info);
  cr_assert_str_eq(info.pre, "default", "a missing pre-tokenizer is the default one");
  heed_tokenizer_free(t);
  vb_free(&v);
}

/* ---------- llama (SentencePiece) ---------- */

/* bytes, then pieces with scores in order (higher first) */
static heed_tokenizer *spm_vocab(vb *v, heed_tokenizer_desc *d, int space_prefix, int with_bytes) {
  heed_tokenizer_desc_init(d);
  d->unk = vb_add(v, "<unk>", HEED_TOKEN_UNKNOWN, 0);
  d->bos = vb_add(v, "<bos>", HEED_TOKEN_CONTROL, 0);
  d->eos = vb_add(v, "<eos>", HEED_TOKEN_CONTROL, 0);
  vb_add(v, "<start_of_turn>", HEED_TOKEN_CONTROL, 0);
  vb_add(v, "\n", HEED_TOKEN_USER_DEFINED, 0);
  vb_add(v, "  ", HEED_TOKEN_USER_DEFINED, 0);
  if (with_bytes) vb_spm_bytes(v);
  const char *pieces[] = {"\xe2\x96\x81", "a", "b", "c", "h", "e", "l", "o", "w", "r", "d", "x", "y", "z",
                          "ab", "bc", "aa", "ll", "he", "hell", "hello", "\xe2\x96\x81hello", "or", "wor", "ld", "world",
                          "\xe2\x96\x81world", "s", "<", ">", "s>", "<b", "<bo"};
  for (size_t i = 0; i < sizeof pieces / sizeof *pieces; i++) vb_add(v, pieces[i], HEED_TOKEN_NORMAL, -(float)i);
  d->add_space_prefix = space_prefix;
  return vb_build(v, "llama", NULL, d);
}

Test(tokenizer_spm, merges_by_score_then_leftmost) {
  vb v = {0};
  heed_tokenizer_desc d;
  heed_tokenizer *t = spm_vocab(&v, &d, 0, 1);
  /* "abc": "ab" (score -14) beats "bc" (-15) */
  EXPECT(t, "abc", 0, find(t, "ab"), find(t, "c"));
  /* "aaa": one pair, two places: the leftmost */
  EXPECT(t, "aaa", 0, find(t, "aa"), find(t, "a"));
  EXPECT(t, "hello world", 0, find(t, "hello"), find(t, "\xe2\x96\x81world"));
  /* a character outside the vocabulary: its bytes */
  EXPECT(t, "\xc3\xa9", 0, find(t, "<0xC3>"), find(t, "<0xA9>"));
  EXPECT(t, "a\xf0\x9f\x98\x80", 0, find(t, "a"), find(t, "<0xF0>"), find(t, "<0x9F>"), find(t, "<0x98>"), find(t, "<0x80>"));
  /* invalid bytes too */
  EXPECT(t, "a\xff", 0, find(t, "a"), find(t, "<0xFF>"));
  /* no merge makes a control token: "<bos>" is text without parse_special */
  heed_tokens l = {0};
  heed_error err;
  cr_assert_eq(heed_tokenizer_encode(t, "<bos>", 5, 0, &l, &err), HEED_OK);
  for (size_t i = 0; i < l.n; i++) cr_assert_neq(l.ids[i], d.bos);
  heed_tokens_free(&l);
  EXPECT(t, "<bos>", HEED_TOKENIZE_PARSE_SPECIAL, d.bos);
  /* user-defined tokens split the text: newlines and double spaces */
  EXPECT(t, "a\nb", 0, find(t, "a"), find(t, "\n"), find(t, "b"));
  EXPECT(t, "a   b", 0, find(t, "a"), find(t, "  "), find(t, "\xe2\x96\x81"), find(t, "b"));
  EXPECT(t, "", HEED_TOKENIZE_ADD_SPECIAL, d.bos); /* llama adds bos by default */
  EXPECT(t, "ab", HEED_TOKENIZE_ADD_SPECIAL, d.bos, find(t, "ab"));
  heed_tokenizer_free(t);
  vb_free(&v);
}

Test(tokenizer_spm, space_prefix_at_start_and_after_specials) {
  vb v = {0};
  heed_tokenizer_desc d;
  heed_tokenizer *t = spm_vocab(&v, &d, 1, 1);
  int32_t sot = find(t, "<start_of_turn>");
  EXPECT(t, "hello", 0, find(t, "\xe2\x96\x81hello"));
  EXPECT(t, "hello<start_of_turn>hello", HEED_TOKENIZE_PARSE_SPECIAL, find(t, "\xe2\x96\x81hello"), sot,
         find(t, "\xe2\x96\x81hello"));
  heed_tokenizer_info info;
  heed_tokenizer_get_info(t, &info);
  cr_assert_eq(info.add_space_prefix, 1);
  cr_assert_str_eq(info.model, "llama");
  heed_tokenizer_free(t);
  vb_free(&v);
}

Test(tokenizer_spm, unknown_token_without_byte_fallback) {
  vb v = {0};
  heed_tokenizer_desc d;
  heed_tokenizer *t = spm_vocab(&v, &d, 0, 0);
  EXPECT(t, "a\xc3\xa9" "b", 0, find(t, "a"), d.unk, find(t, "b"));
  heed_tokenizer_free(t);
  vb_free(&v);
  /* neither bytes nor unk: refused */
  heed_tokenizer_desc_init(&d);
  vb_add(&v, "a", HEED_TOKEN_NORMAL, 0);
  d.model = "llama";
  d.n_tokens = v.n;
  d.tokens = (const char *const *)v.tok;
  heed_error err;
  cr_assert_eq(heed_tokenizer_create(&d, &t, &err), HEED_E_INVALID);
  cr_assert(strstr(err.msg, "<0x00>"), "%s", err.msg);
  cr_assert_null(t);
  vb_free(&v);
}

Test(tokenizer_spm, long_single_fragment_is_fast) {
  vb v = {0};
  heed_tokenizer_desc d;
  heed_tokenizer *t = spm_vocab(&v, &d, 0, 1);
  size_t n = 4 << 20; /* 4 MB with no newline: one sequence; quadratic would take hours */
  char *s = malloc(n);
  uint64_t seed = 3;
  for (size_t i = 0; i < n; i++) s[i] = "abc hello world x"[tu_next(&seed) % 17];
  heed_tokens l = {0};
  heed_error err;
  cr_assert_eq(heed_tokenizer_encode(t, s, n, 0, &l, &err), HEED_OK, "%s", err.msg);
  cr_assert_gt(l.n, n / 8);
  char *back = malloc(n + 1);
  size_t m;
  cr_assert_eq(heed_tokenizer_decode(t, l.ids, l.n, 0, back, n + 1, &m, &err), HEED_OK);
  cr_assert(m == n && memcmp(back, s, n) == 0);
  free(back);
  free(s);
  heed_tokens_free(&l);
  heed_tokenizer_free(t);
  vb_free(&v);
}

/* ---------- decoding ---------- */

Test(tokenizer_decode, pieces_by_type) {
  vb v = {0};
  heed_tokenizer_desc d;
  heed_tokenizer *t = spm_vocab(&v, &d, 0, 1);
  const char *p;
  size_t n;
  cr_assert_eq(heed_tokenizer_piece(t, find(t, "\xe2\x96\x81hello"), 0, &p, &n), HEED_OK);
  cr_assert(n == 6 && memcmp(p, " hello", 6) == 0);
  cr_assert_eq(heed_tokenizer_piece(t, find(t, "<0x41>"), 0, &p, &n), HEED_OK);
  cr_assert(n == 1 && p[0] == 'A');
  cr_assert_eq(heed_tokenizer_piece(t, d.bos, 0, &p, &n), HEED_OK);
  cr_assert_eq(n, 0, "control tokens decode to nothing by default");
  cr_assert_eq(heed_tokenizer_piece(t, d.bos, HEED_DETOK_SPECIAL, &p, &n), HEED_OK);
  cr_assert(n == 5 && memcmp(p, "<bos>", 5) == 0);
  cr_assert_eq(heed_tokenizer_piece(t, 1 << 20, 0, &p, &n), HEED_E_RANGE);
  cr_assert_eq(heed_tokenizer_token_type(t, d.bos), HEED_TOKEN_CONTROL);
  cr_assert_eq(heed_tokenizer_token_type(t, -5), 0);
  cr_assert_str_eq(heed_token_type_name(HEED_TOKEN_USER_DEFINED), "user-defined");
  cr_assert_null(heed_token_type_name(9));

  heed_token ids[] = {d.bos, find(t, "hello"), find(t, "\xe2\x96\x81world")};
  char buf[64];
  heed_error err;
  cr_assert_eq(heed_tokenizer_decode(t, ids, 3, 0, buf, sizeof buf, &n, &err), HEED_OK);
  cr_assert(n == 11 && strcmp(buf, "hello world") == 0);
  cr_assert_eq(heed_tokenizer_decode(t, ids, 3, HEED_DETOK_SPECIAL, buf, sizeof buf, &n, &err), HEED_OK);
  cr_assert_str_eq(buf, "<bos>hello world");
  cr_assert_eq(heed_tokenizer_decode(t, ids, 3, 0, buf, 4, &n, &err), HEED_E_TOO_SMALL);
  cr_assert_eq(n, 11);
  heed_token bad[] = {1, -3};
  cr_assert_eq(heed_tokenizer_decode(t, bad, 2, 0, buf, sizeof buf, &n, &err), HEED_E_RANGE);
  cr_assert(strstr(err.msg, "ids[1] = -3"), "%s", err.msg);
  heed_tokenizer_free(t);
  vb_free(&v);
}

/* Streams ids through push/flush into out; returns the length. */
static size_t stream(const heed_tokenizer *t, const heed_token *ids, size_t n, unsigned flags, char *out, size_t *chunks) {
  heed_detok_state s = HEED_DETOK_STATE_INIT;
  size_t w = 0, bound = heed_tokenizer_detok_bound(t);
  char *buf = malloc(bound);
  for (size_t i = 0; i < n; i++) {
    size_t l;
    cr_assert_eq(heed_tokenizer_detok_push(t, &s, ids[i], flags, buf, bound, &l), HEED_OK);
    /* what comes out never ends inside a character that may still complete */
    if (chunks) chunks[i] = l;
    memcpy(out + w, buf, l);
    w += l;
  }
  size_t l;
  cr_assert_eq(heed_tokenizer_detok_flush(&s, flags, buf, bound, &l), HEED_OK);
  memcpy(out + w, buf, l);
  w += l;
  cr_assert_eq(s.n_pending, 0);
  free(buf);
  return w;
}

Test(tokenizer_decode, streaming_holds_split_characters) {
  vb v = {0};
  heed_tokenizer_desc d;
  heed_tokenizer *t = spm_vocab(&v, &d, 0, 1);
  /* "a😀b" with the emoji as four byte tokens */
  heed_tokens l = {0};
  heed_error err;
  cr_assert_eq(heed_tokenizer_encode(t, "a\xf0\x9f\x98\x80" "b", 6, 0, &l, &err), HEED_OK);
  cr_assert_eq(l.n, 6);
  char out[64];
  size_t chunks[6];
  size_t n = stream(t, l.ids, l.n, 0, out, chunks);
  cr_assert(n == 6 && memcmp(out, "a\xf0\x9f\x98\x80" "b", 6) == 0);
  size_t want[] = {1, 0, 0, 0, 4, 1};
  for (int i = 0; i < 6; i++) cr_assert_eq(chunks[i], want[i], "push %d gave %zu bytes", i, chunks[i]);
  /* cut short: flush gives the bytes held, raw or as U+FFFD each */
  n = stream(t, l.ids, 3, 0, out, NULL);
  cr_assert(n == 3 && memcmp(out, "a\xf0\x9f", 3) == 0);
  n = stream(t, l.ids, 3, HEED_DETOK_REPLACE, out, NULL);
  cr_assert(n == 7 && memcmp(out, "a\xef\xbf\xbd\xef\xbf\xbd", 7) == 0);
  /* an invalid byte is let out at once (raw) */
  heed_token ff[] = {find(t, "<0xFF>"), find(t, "a")};
  n = stream(t, ff, 2, 0, out, chunks);
  cr_assert(n == 2 && chunks[0] == 1 && (uint8_t)out[0] == 0xFF);
  /* a state that is too small for the output is left as it was */
  heed_detok_state s = HEED_DETOK_STATE_INIT;
  size_t len;
  cr_assert_eq(heed_tokenizer_detok_push(t, &s, find(t, "hello"), 0, out, 2, &len), HEED_E_TOO_SMALL);
  cr_assert_eq(len, 5);
  cr_assert_eq(s.n_pending, 0);
  heed_tokens_free(&l);
  heed_tokenizer_free(t);
  vb_free(&v);
}

Test(tokenizer_decode, streaming_equals_batch_on_random_ids) {
  vb v = {0};
  heed_tokenizer_desc d;
  heed_tokenizer *t = spm_vocab(&v, &d, 0, 1);
  heed_tokenizer_info info;
  heed_tokenizer_get_info(t, &info);
  uint64_t seed = 11;
  heed_token ids[64];
  char a[4096], b[4096];
  for (int r = 0; r < 2000; r++) {
    size_t n = tu_next(&seed) % 64;
    for (size_t i = 0; i < n; i++) ids[i] = (heed_token)(tu_next(&seed) % info.n_tokens);
    unsigned flags = (unsigned)(tu_next(&seed) % 4);
    size_t na, nb;
    heed_error err;
    cr_assert_eq(heed_tokenizer_decode(t, ids, n, flags, a, sizeof a, &na, &err), HEED_OK);
    nb = stream(t, ids, n, flags, b, NULL);
    cr_assert(na == nb && memcmp(a, b, na) == 0, "round %d flags %u: batch %zu bytes, stream %zu", r, flags, na, nb);
  }
  heed_tokenizer_free(t);
  vb_free(&v);
}

/* ---------- refusals ---------- */

Test(tokenizer_create, refusals_name_the_bad_value) {
  vb v = {0};
  vb_gpt2_bytes(&v);
  heed_tokenizer_desc d;
  heed_tokenizer_desc_init(&d);
  d.n_tokens = v.n;
  d.tokens = (const char *const *)v.tok;
  d.token_lens = v.len;
  heed_tokenizer *t = (heed_tokenizer *)1;
  heed_error err;
  d.model = "bert";
  cr_assert_eq(heed_tokenizer_create(&d, &t, &err), HEED_E_UNSUPPORTED);
  cr_assert(strstr(err.msg, "'bert'"), "%s", err.msg);
  cr_assert_null(t);
  d.model = "gpt2";
  d.pre = "deepseek-v9";
  cr_assert_eq(heed_tokenizer_create(&d, &t, &err), HEED_E_UNSUPPORTED);
  cr_assert(strstr(err.msg, "'deepseek-v9'"), "%s", err.msg);
  d.pre = "qwen2";
  d.bos = 300;
  cr_assert_eq(heed_tokenizer_create(&d, &t, &err), HEED_E_RANGE);
  cr_assert(strstr(err.msg, "bos token id 300"), "%s", err.msg);
  d.bos = HEED_TOKEN_NONE;
  int32_t types[256];
  for (int i = 0; i < 256; i++) types[i] = 1;
  types[17] = 9;
  d.types = types;
  cr_assert_eq(heed_tokenizer_create(&d, &t, &err), HEED_E_INVALID);
  cr_assert(strstr(err.msg, "token 17 has type 9"), "%s", err.msg);
  d.types = NULL;
  const char *merges[] = {"nospace"};
  d.merges = merges;
  d.n_merges = 1;
  cr_assert_eq(heed_tokenizer_create(&d, &t, &err), HEED_E_INVALID);
  cr_assert(strstr(err.msg, "nospace"), "%s", err.msg);
  d.n_merges = 0;
  d.n_tokens = 200; /* bytes 200.. missing */
  cr_assert_eq(heed_tokenizer_create(&d, &t, &err), HEED_E_INVALID);
  cr_assert(strstr(err.msg, "0xC8"), "%s", err.msg);
  cr_assert_eq(heed_tokenizer_create(NULL, &t, NULL), HEED_E_INVALID);
  /* bad arguments to encode */
  d.n_tokens = 256;
  cr_assert_eq(heed_tokenizer_create(&d, &t, &err), HEED_OK);
  heed_tokens l = {0};
  cr_assert_eq(heed_tokenizer_encode(t, NULL, 3, 0, &l, &err), HEED_E_INVALID);
  cr_assert_eq(heed_tokenizer_encode(t, NULL, 0, 0, &l, &err), HEED_OK);
  cr_assert_eq(l.n, 0);
  heed_token ids[2];
  size_t n;
  cr_assert_eq(heed_tokenizer_encode_to(t, "abc", 3, 0, ids, 2, &n, &err), HEED_E_TOO_SMALL);
  cr_assert_eq(n, 3);
  cr_assert_eq(heed_tokenizer_encode_to(t, "ab", 2, 0, ids, 2, &n, &err), HEED_OK);
  cr_assert(n == 2 && ids[0] == 'a' && ids[1] == 'b');
  heed_tokenizer_free(t);
  heed_tokenizer_free(NULL);
  vb_free(&v);
}

/* ---------- threads ---------- */

typedef struct job {
  const heed_tokenizer *t;
  const char *text;
  size_t len;
  heed_tokens out;
} job;

static void *encode_job(void *p) {
  job *j = p;
  for (int r = 0; r < 20; r++) {
    j->out.n = 0;
    heed_tokenizer_encode(j->t, j->text, j->len, HEED_TOKENIZE_PARSE_SPECIAL, &j->out, NULL);
  }
  return NULL;
}

Test(tokenizer_gpt2, one_tokenizer_many_threads) {
  vb v = {0};
  heed_tokenizer_desc d;
  heed_tokenizer *t = chat_vocab(&v, &d);
  size_t n = 200000;
  char *s = malloc(n);
  uint64_t seed = 5;
  for (size_t i = 0; i < n; i++) s[i] = "hi there <|im_start|> 123 \n\t\xc3\xa9"[tu_next(&seed) % 31];
  heed_tokens ref = {0};
  cr_assert_eq(heed_tokenizer_encode(t, s, n, HEED_TOKENIZE_PARSE_SPECIAL, &ref, NULL), HEED_OK);
  job jobs[4];
  pthread_t th[4];
  for (int k = 0; k < 4; k++) {
    jobs[k] = (job){t, s, n, {0}};
    pthread_create(&th[k], NULL, encode_job, &jobs[k]);
  }
  for (int k = 0; k < 4; k++) {
    pthread_join(th[k], NULL);
    cr_assert(jobs[k].out.n == ref.n && memcmp(jobs[k].out.ids, ref.ids, ref.n * sizeof *ref.ids) == 0);
    heed_tokens_free(&jobs[k].out);
  }
  heed_tokens_free(&ref);
  free(s);
  heed_tokenizer_free(t);
  vb_free(&v);
}

Test(tokenizer_gpt2, huge_inputs) {
  vb v = {0};
  heed_tokenizer_desc d;
  heed_tokenizer *t = chat_vocab(&v, &d);
  size_t n = 4 << 20;
  char *s = malloc(n);
  /* one whitespace run of 4 MB: one pre-token for \s+ */
  memset(s, ' ', n);
  expect_roundtrip(t, s, n, 0);
  memset(s, '\n', n);
  expect_roundtrip(t, s, n, 0);
  /* 4 MB of digits and of letters */
  for (size_t i = 0; i < n; i++) s[i] = (char)('0' + i % 10);
  expect_roundtrip(t, s, n, 0);
  memset(s, 'h', n);
  expect_roundtrip(t, s, n, 0);
  free(s);
  heed_tokenizer_free(t);
  vb_free(&v);
}

/* ---------- GGUFs written here ---------- */

typedef struct gw {
  uint8_t *b;
  size_t n, cap;
} gw;
static void gw_bytes(gw *w, const void *p, size_t n) {
  if (w->n + n > w->cap) {
    w->cap = (w->n + n) * 2 + 64;
    w->b = realloc(w->b, w->cap);
  }
  memcpy(w->b + w->n, p, n);
  w->n += n;
}
static void gw_le(gw *w, uint64_t v, int n) {
  for (int i = 0; i < n; i++) {
    uint8_t c = (uint8_t)(v >> (8 * i));
    gw_bytes(w, &c, 1);
  }
}
static void gw_str(gw *w, const char *s, size_t n) {
  gw_le(w, n, 8);
  gw_bytes(w, s, n);
}
static void gw_key(gw *w, const char *k, uint32_t type) {
  gw_str(w, k, strlen(k));
  gw_le(w, type, 4);
}

/* A GGUF with v's vocabulary under the tokenizer keys; model NULL leaves the key out. */
static void write_gguf(gw *w, const vb *v, const char *model, const char *pre) {
  memset(w, 0, sizeof *w);
  gw_bytes(w, "GGUF", 4);
  gw_le(w, 3, 4);
  gw_le(w, 0, 8);
  gw_le(w, 3 + (model != NULL) + (pre != NULL) + (v->n_merges > 0), 8);
  if (model) gw_key(w, "tokenizer.ggml.model", HEED_GGUF_STRING), gw_str(w, model, strlen(model));
  if (pre) gw_key(w, "tokenizer.ggml.pre", HEED_GGUF_STRING), gw_str(w, pre, strlen(pre));
  gw_key(w, "tokenizer.ggml.tokens", HEED_GGUF_ARRAY);
  gw_le(w, HEED_GGUF_STRING, 4);
  gw_le(w, v->n, 8);
  for (uint32_t i = 0; i < v->n; i++) gw_str(w, v->tok[i], v->len[i]);
  gw_key(w, "tokenizer.ggml.token_type", HEED_GGUF_ARRAY);
  gw_le(w, HEED_GGUF_INT32, 4);
  gw_le(w, v->n, 8);
  for (uint32_t i = 0; i < v->n; i++) gw_le(w, (uint32_t)v->type[i], 4);
  if (v->n_merges) {
    gw_key(w, "tokenizer.ggml.merges", HEED_GGUF_ARRAY);
    gw_le(w, HEED_GGUF_STRING, 4);
    gw_le(w, v->n_merges, 8);
    for (uint32_t i = 0; i < v->n_merges; i++) gw_str(w, v->merge[i], strlen(v->merge[i]));
  }
  gw_key(w, "tokenizer.ggml.add_bos_token", HEED_GGUF_BOOL);
  gw_le(w, 1, 1);
}

static heed_status from_w(const gw *w, heed_tokenizer **t, heed_error *err) {
  heed_gguf *g = NULL;
  heed_status st = heed_gguf_open_memory(w->b, w->n, &g, err);
  cr_assert_eq(st, HEED_OK, "gguf: %s", err->msg);
  st = heed_tokenizer_from_gguf(g, t, err);
  heed_gguf_close(g); /* the tokenizer keeps nothing of it */
  return st;
}

Test(tokenizer_gguf, keys_read_and_defaults) {
  vb v = {0};
  vb_gpt2_bytes(&v);
  vb_merge(&v, "a", "b");
  gw w;
  heed_tokenizer *t;
  heed_error err;
  write_gguf(&w, &v, "gpt2", NULL);
  cr_assert_eq(from_w(&w, &t, &err), HEED_OK, "%s", err.msg);
  heed_tokenizer_info info;
  heed_tokenizer_get_info(t, &info);
  cr_assert_str_eq(info.pre, "default");
  cr_assert_eq(info.add_bos, 1);
  cr_assert_eq(info.n_merges, 1);
  EXPECT(t, "abc", 0, find(t, "ab"), 'c');
  heed_tokenizer_free(t);
  free(w.b);
  write_gguf(&w, &v, "bert", NULL);
  cr_assert_eq(from_w(&w, &t, &err), HEED_E_UNSUPPORTED);
  cr_assert(strstr(err.msg, "'bert'"), "%s", err.msg);
  free(w.b);
  write_gguf(&w, &v, "gpt2", "falcon");
  cr_assert_eq(from_w(&w, &t, &err), HEED_E_UNSUPPORTED);
  cr_assert(strstr(err.msg, "'falcon'"), "%s", err.msg);
  free(w.b);
  write_gguf(&w, &v, NULL, NULL);
  cr_assert_eq(from_w(&w, &t, &err), HEED_E_NOT_FOUND);
  free(w.b);
  vb_free(&v);
}

/* ---------- the real models ---------- */

static heed_tokenizer *open_model(const char *file) {
  char path[1024];
  const char *why;
  if (!tm_model_path(file, path, sizeof path, &why)) cr_skip_test("%s", why);
  heed_gguf *g = NULL;
  heed_error err;
  cr_assert_eq(heed_gguf_open(path, &g, &err), HEED_OK, "%s", err.msg);
  heed_tokenizer *t = NULL;
  cr_assert_eq(heed_tokenizer_from_gguf(g, &t, &err), HEED_OK, "%s", err.msg);
  heed_gguf_close(g);
  return t;
}

/* Known encodings: Hugging Face's (tests/tokenizer_oracle.py builds the same
 * tokenizers from the GGUFs; "Hello world" is the published one). */
Test(tokenizer_models, qwen) {
  heed_tokenizer *t = open_model(TM_QWEN);
  heed_tokenizer_info info;
  heed_tokenizer_get_info(t, &info);
  cr_assert_str_eq(info.model, "gpt2");
  cr_assert_str_eq(info.pre, "qwen2");
  cr_assert_eq(info.add_bos, 0);
  EXPECT(t, "Hello world", 0, 9707, 1879);
  EXPECT(t, "Hello world", HEED_TOKENIZE_ADD_SPECIAL, 9707, 1879);
  EXPECT(t, "def main():\n    print('hi')  # 12345\n", 0, 750, 1887, 3932, 262, 1173, 492, 6023, 863, 220, 671, 220, 16,
         17, 18, 19, 20, 198);
  EXPECT(t, "<|im_start|>user\nHi!<|im_end|>\n", HEED_TOKENIZE_PARSE_SPECIAL, 151644, 872, 198, 13048, 0, 151645, 198);
  EXPECT(t, "\xe6\x97\xa5\xe6\x9c\xac\xe8\xaa\x9e \xf0\x9f\x98\x80 caf\xc3\xa9", 0, 101059, 102819, 90316, 51950);
  cr_assert(heed_tokenizer_is_eog(t, 151645)); /* <|im_end|> */
  cr_assert(heed_tokenizer_is_eog(t, 151643)); /* <|endoftext|> */
  cr_assert(!heed_tokenizer_is_eog(t, 151644));
  const char *text = "Hi \xe4\xbd\xa0\xe5\xa5\xbd \xf0\x9f\x91\xa8\xe2\x80\x8d\xf0\x9f\x91\xa9 \xff <|im_end|>";
  expect_roundtrip(t, text, strlen(text), 0);
  heed_tokenizer_free(t);
}

Test(tokenizer_models, gemma) {
  heed_tokenizer *t = open_model(TM_GEMMA);
  heed_tokenizer_info info;
  heed_tokenizer_get_info(t, &info);
  cr_assert_str_eq(info.model, "llama");
  cr_assert_eq(info.add_bos, 1);
  cr_assert_eq(info.add_space_prefix, 0);
  EXPECT(t, "Hello world", 0, 9259, 1902);
  EXPECT(t, "Hello world", HEED_TOKENIZE_ADD_SPECIAL, 2, 9259, 1902);
  EXPECT(t, "def main():\n    print('hi')  # 12345\n", 0, 2063, 1689, 6141, 107, 140, 1995, 1033, 2202, 1606, 138,
         236865, 236743, 236770, 236778, 236800, 236812, 236810, 107);
  EXPECT(t, "<start_of_turn>user\nHi!<end_of_turn>\n", HEED_TOKENIZE_PARSE_SPECIAL, 105, 2364, 107, 10979, 236888, 106,
         107);
  EXPECT(t, "\xe6\x97\xa5\xe6\x9c\xac\xe8\xaa\x9e \xf0\x9f\x98\x80 caf\xc3\xa9", 0, 94951, 163543, 33443);
  cr_assert(heed_tokenizer_is_eog(t, 106)); /* <end_of_turn> */
  cr_assert(heed_tokenizer_is_eog(t, 1));   /* <eos> */
  cr_assert(!heed_tokenizer_is_eog(t, 105));
  const char *text = "Hi \xe4\xbd\xa0\xe5\xa5\xbd \xf0\x9f\x91\xa8\xe2\x80\x8d\xf0\x9f\x91\xa9 \xff  \n\n\t x";
  expect_roundtrip(t, text, strlen(text), 0);
  heed_tokenizer_free(t);
}
