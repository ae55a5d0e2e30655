/* fuzz/fuzz_tokenizer.c - the tokenizers on arbitrary bytes (invalid UTF-8,
 * NULs, text that looks like special tokens), with and without
 * parse_special, through heed_tokenizer_encode, _encode_spans and _encode_to,
 * then back through heed_tokenizer_decode and the streaming decoder.
 *
 * The tokenizers are built once from small vocabularies: gpt2 with each
 * pre-tokenizer (qwen2, llama-bpe, default), llama with byte fallback (no
 * prefix space; with one) and llama without byte tokens (unk). Merges and
 * pieces are chosen so that merges happen often on the inputs the fuzzer
 * makes (ASCII words, spaces, a few CJK and emoji prefixes).
 *
 * Input: byte 0 picks the tokenizer, byte 1 the flags, byte 2 the span
 * layout; the rest is the text.
 *
 * Checks:
 *   - encoding succeeds and every id is in range; twice gives the same ids;
 *   - gpt2: decode(encode(x)) == x byte for byte, parse_special or not (a
 *     control token decodes to its text with HEED_DETOK_SPECIAL);
 *   - llama with byte fallback and no prefix space: the same;
 *   - without parse_special no control token comes out;
 *   - encode_spans: all spans trusted gives encode's ids; all untrusted gives
 *     encode's ids without parse_special; with any spans, a control token only
 *     where the text under it is trusted, and gpt2 still round-trips;
 *   - encode_to with one slot too few says HEED_E_TOO_SMALL and the count;
 *   - streaming decode (push per id, then flush) is byte for byte the batch
 *     decode, raw and with HEED_DETOK_REPLACE, and with REPLACE the text is
 *     valid UTF-8. */
#include "fuzz/fuzz_common.h"
#include "heed/tokenizer.h"

#define VMAX 1200

typedef struct vocab {
  char *tok[VMAX];
  uint32_t len[VMAX];
  int32_t type[VMAX];
  float score[VMAX];
  uint32_t n;
  char *merge[VMAX];
  uint32_t n_merges;
} vocab;

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

static void add(vocab *v, const char *s, size_t n, int type, float score) {
  if (v->n >= VMAX) abort();
  v->tok[v->n] = malloc(n + 1);
  memcpy(v->tok[v->n], s, n);
  v->tok[v->n][n] = 0;
  v->len[v->n] = (uint32_t)n;
  v->type[v->n] = type;
  v->score[v->n] = score;
  v->n++;
}

static int has(const vocab *v, const char *s, size_t n) {
  for (uint32_t i = 0; i < v->n; i++)
    if (v->len[i] == n && memcmp(v->tok[i], s, n) == 0) return 1;
  return 0;
}

static void merge(vocab *v, const char *a, const char *b) {
  char ba[64], bb[64], cat[128], m[160];
  size_t na = byte_level(a, strlen(a), ba), nb = byte_level(b, strlen(b), bb);
  memcpy(cat, ba, na);
  memcpy(cat + na, bb, nb);
  if (!has(v, cat, na + nb)) add(v, cat, na + nb, HEED_TOKEN_NORMAL, 0);
  snprintf(m, sizeof m, "%s %s", ba, bb);
  v->merge[v->n_merges++] = strdup(m);
}

static const char *const specials[][2] = {
    {"<|im_start|>", "c"}, {"<|im_end|>", "c"}, {"<|endoftext|>", "c"}, {"<a>", "c"}, {"<a><b>", "c"},
    {"<tool>", "u"},       {"</tool>", "u"},    {"\n\n", "u"},          {"[PAD1]", "x"}, {"<unk>", "k"}};

static void add_specials(vocab *v) {
  for (size_t i = 0; i < sizeof specials / sizeof *specials; i++) {
    char k = specials[i][1][0];
    int ty = k == 'c' ? HEED_TOKEN_CONTROL : k == 'u' ? HEED_TOKEN_USER_DEFINED : k == 'k' ? HEED_TOKEN_UNKNOWN : HEED_TOKEN_UNUSED;
    add(v, specials[i][0], strlen(specials[i][0]), ty, -1000);
  }
}

static void gpt2_vocab(vocab *v) {
  for (int b = 0; b < 256; b++) {
    char c = (char)b, buf[4];
    add(v, buf, byte_level(&c, 1, buf), HEED_TOKEN_NORMAL, 0);
  }
  static const char *const pairs[][2] = {
      {"t", "h"}, {"th", "e"}, {" ", "t"}, {" t", "he"}, {"i", "n"}, {"in", "g"}, {" ", " "}, {"  ", "  "},
      {"e", "r"}, {"a", "n"}, {"an", "d"}, {" ", "a"}, {" a", "nd"}, {"1", "2"}, {"12", "3"}, {"'", "s"},
      {"\xe4", "\xb8"}, {"\xe4\xb8", "\xad"}, {"\xf0", "\x9f"}, {"\xf0\x9f", "\x98"}, {"\xff", "\xfe"},
      {"\n", "\n"}, {"<", "|"}, {"|", ">"}, {"a", "a"}, {"aa", "aa"}, {"\r", "\n"}, {"\t", "\t"}, {".", "."}};
  for (size_t i = 0; i < sizeof pairs / sizeof *pairs; i++) merge(v, pairs[i][0], pairs[i][1]);
  add_specials(v);
}

static void spm_vocab(vocab *v, int with_bytes) {
  add_specials(v);
  add(v, "  ", 2, HEED_TOKEN_USER_DEFINED, -1000);
  if (with_bytes)
    for (int b = 0; b < 256; b++) {
      char name[8];
      snprintf(name, sizeof name, "<0x%02X>", b);
      add(v, name, 6, HEED_TOKEN_BYTE, 0);
    }
  static const char *const pieces[] = {
      "\xe2\x96\x81", "a", "b", "c", "d", "e", "h", "t", "n", "i", "g", "s", "1", "2", "<", ">", "|", "\n",
      "aa", "aaaa", "th", "the", "\xe2\x96\x81the", "\xe2\x96\x81t", "in", "ing", "an", "and", "\xe2\x96\x81\x61nd",
      "\xe2\x96\x81\xe2\x96\x81", "12", "<|", "|>", "im", "\xe4\xb8\xad", "\xe6\x96\x87", "\xe4\xb8\xad\xe6\x96\x87",
      "\xf0\x9f\x98\x80", "ab", "ba", "aba", "s>", "<a", "a>", "<a>"};
  for (size_t i = 0; i < sizeof pieces / sizeof *pieces; i++)
    if (!has(v, pieces[i], strlen(pieces[i]))) add(v, pieces[i], strlen(pieces[i]), HEED_TOKEN_NORMAL, -(float)(i % 17));
}

enum { T_QWEN, T_LLAMA3, T_GPT2, T_SPM, T_SPM_PREFIX, T_SPM_UNK, N_TOK };
static heed_tokenizer *toks[N_TOK];

static heed_tokenizer *build(vocab *v, const char *model, const char *pre, int prefix, int32_t unk) {
  heed_tokenizer_desc d;
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
  d.add_space_prefix = prefix;
  d.unk = unk;
  d.bos = 0;
  d.eos = 1;
  heed_tokenizer *t = NULL;
  heed_error err;
  if (heed_tokenizer_create(&d, &t, &err) != HEED_OK) {
    fprintf(stderr, "fuzz_tokenizer: %s\n", err.msg);
    abort();
  }
  return t;
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc, (void)argv;
  static vocab g, s, u; /* kept: the tokenizers copy, but leak checkers see them as reachable */
  gpt2_vocab(&g);
  int32_t unk_g = (int32_t)g.n - 1;
  toks[T_QWEN] = build(&g, "gpt2", "qwen2", 0, unk_g);
  toks[T_LLAMA3] = build(&g, "gpt2", "llama-bpe", 0, unk_g);
  toks[T_GPT2] = build(&g, "gpt2", "default", 0, unk_g);
  spm_vocab(&s, 1);
  toks[T_SPM] = build(&s, "llama", NULL, 0, 9);
  toks[T_SPM_PREFIX] = build(&s, "llama", NULL, 1, 9);
  spm_vocab(&u, 0);
  toks[T_SPM_UNK] = build(&u, "llama", NULL, 0, 9);
  return 0;
}

static void encode_ok(const heed_tokenizer *t, const char *text, size_t n, unsigned flags, heed_tokens *out) {
  heed_error err;
  out->n = 0;
  heed_status st = heed_tokenizer_encode(t, text, n, flags, out, &err);
  FZ_CHECK(st == HEED_OK, "encode of %zu bytes (flags %u): %s", n, flags, err.msg);
}

static int same(const heed_tokens *a, const heed_tokens *b) {
  return a->n == b->n && (a->n == 0 || memcmp(a->ids, b->ids, a->n * sizeof *a->ids) == 0);
}

static int valid_utf8(const char *s, size_t n) {
  for (size_t i = 0; i < n;) {
    uint8_t c = (uint8_t)s[i];
    size_t l = c < 0x80 ? 1 : c >= 0xC2 && c < 0xE0 ? 2 : c >= 0xE0 && c < 0xF0 ? 3 : c >= 0xF0 && c < 0xF5 ? 4 : 0;
    if (!l || i + l > n) return 0;
    for (size_t k = 1; k < l; k++)
      if (((uint8_t)s[i + k] & 0xC0) != 0x80) return 0;
    if (l == 3 && ((c == 0xE0 && (uint8_t)s[i + 1] < 0xA0) || (c == 0xED && (uint8_t)s[i + 1] >= 0xA0))) return 0;
    if (l == 4 && ((c == 0xF0 && (uint8_t)s[i + 1] < 0x90) || (c == 0xF4 && (uint8_t)s[i + 1] >= 0x90))) return 0;
    i += l;
  }
  return 1;
}

/* Batch decode against push/flush, with flags. */
static void check_stream(const heed_tokenizer *t, const heed_tokens *ids, unsigned flags) {
  size_t need;
  heed_error err;
  heed_status st = heed_tokenizer_decode(t, ids->ids, ids->n, flags, NULL, 0, &need, &err);
  FZ_CHECK(st == HEED_OK || st == HEED_E_TOO_SMALL, "decode size: %s", err.msg);
  char *batch = malloc(need + 1), *str = malloc(need + 1);
  size_t nb;
  st = heed_tokenizer_decode(t, ids->ids, ids->n, flags, batch, need + 1, &nb, &err);
  FZ_CHECK(st == HEED_OK && nb == need, "decode: %s (%zu vs %zu)", err.msg, nb, need);
  size_t bound = heed_tokenizer_detok_bound(t), w = 0, l;
  char *buf = malloc(bound);
  heed_detok_state s = HEED_DETOK_STATE_INIT;
  for (size_t i = 0; i < ids->n; i++) {
    st = heed_tokenizer_detok_push(t, &s, ids->ids[i], flags, buf, bound, &l);
    FZ_CHECK(st == HEED_OK, "push %zu: status %d", i, st);
    FZ_CHECK(w + l <= need, "stream longer than batch (%zu + %zu > %zu)", w, l, need);
    memcpy(str + w, buf, l);
    w += l;
  }
  st = heed_tokenizer_detok_flush(&s, flags, buf, bound, &l);
  FZ_CHECK(st == HEED_OK && w + l <= need, "flush");
  memcpy(str + w, buf, l);
  w += l;
  FZ_CHECK(w == nb && memcmp(str, batch, nb) == 0, "stream (%zu bytes) differs from batch (%zu bytes), flags %u", w, nb, flags);
  if (flags & HEED_DETOK_REPLACE) FZ_CHECK(valid_utf8(batch, nb), "REPLACE left invalid UTF-8");
  free(buf);
  free(batch);
  free(str);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  fz_in in = {data, size};
  int which = fz_u8(&in) % N_TOK;
  uint8_t fl = fz_u8(&in);
  uint8_t layout = fz_u8(&in);
  const char *text = (const char *)in.p;
  size_t n = in.n;
  const heed_tokenizer *t = toks[which];
  unsigned flags = (fl & 1 ? HEED_TOKENIZE_PARSE_SPECIAL : 0) | (fl & 2 ? HEED_TOKENIZE_ADD_SPECIAL : 0);
  heed_tokenizer_info info;
  heed_tokenizer_get_info(t, &info);

  heed_tokens a = {0}, b = {0}, c = {0};
  encode_ok(t, text, n, flags, &a);
  for (size_t i = 0; i < a.n; i++) FZ_CHECK(a.ids[i] >= 0 && (uint32_t)a.ids[i] < info.n_tokens, "id %d", a.ids[i]);
  encode_ok(t, text, n, flags, &b);
  FZ_CHECK(same(&a, &b), "a second encode differs");
  if (!(flags & HEED_TOKENIZE_PARSE_SPECIAL))
    for (size_t i = 0; i < a.n; i++) {
      int ty = heed_tokenizer_token_type(t, a.ids[i]);
      int bos_eos = (flags & HEED_TOKENIZE_ADD_SPECIAL) && (a.ids[i] == info.bos || a.ids[i] == info.eos);
      FZ_CHECK(bos_eos || (ty != HEED_TOKEN_CONTROL && (ty != HEED_TOKEN_UNKNOWN || which == T_SPM_UNK)),
               "token %d of type %d without parse_special", a.ids[i], ty);
    }
  fz_stat(which < T_SPM ? "gpt2" : "llama");

  /* round trip */
  int exact = which <= T_GPT2 || which == T_SPM;
  if (exact) {
    encode_ok(t, text, n, flags & ~HEED_TOKENIZE_ADD_SPECIAL, &c);
    char *back = malloc(n + 1);
    size_t m;
    heed_error err;
    heed_status st = heed_tokenizer_decode(t, c.ids, c.n, HEED_DETOK_SPECIAL, back, n + 1, &m, &err);
    FZ_CHECK(st == HEED_OK && m == n && memcmp(back, text, n) == 0, "round trip: %zu bytes back of %zu (%s)", m, n,
             st ? err.msg : "");
    free(back);
    fz_stat("round trip");
  }

  /* spans */
  heed_text_span spans[8];
  size_t ns = 0;
  if (layout < 64) { /* all trusted / all untrusted in one span */
    spans[ns++] = (heed_text_span){0, n, layout & 1};
    encode_ok(t, text, n, (layout & 1) ? flags & ~HEED_TOKENIZE_PARSE_SPECIAL : flags, &c);
    heed_tokens d = {0};
    heed_error err;
    FZ_CHECK(heed_tokenizer_encode_spans(t, text, n, spans, ns, flags, &d, &err) == HEED_OK, "spans: %s", err.msg);
    FZ_CHECK(same(&c, &d), "one %s span differs from plain encode", layout & 1 ? "untrusted" : "trusted");
    heed_tokens_free(&d);
    fz_stat("one span");
  } else {
    size_t at = 0;
    uint64_t seed = layout;
    while (at < n && ns < 7) {
      size_t l = (size_t)(fz_mix(&seed) % (n - at + 1));
      spans[ns] = (heed_text_span){at, l, (int)(fz_mix(&seed) & 1)};
      at += l;
      ns++;
    }
    if (at < n || ns == 0) spans[ns++] = (heed_text_span){at, n - at, (int)(layout & 1)};
    heed_tokens d = {0};
    heed_error err;
    FZ_CHECK(heed_tokenizer_encode_spans(t, text, n, spans, ns, flags & ~HEED_TOKENIZE_ADD_SPECIAL, &d, &err) == HEED_OK,
             "spans: %s", err.msg);
    /* walk the ids with their decoded lengths: a control token must sit on trusted bytes */
    if (exact) {
      size_t pos = 0;
      for (size_t i = 0; i < d.n; i++) {
        const char *p;
        size_t l;
        heed_tokenizer_piece(t, d.ids[i], HEED_DETOK_SPECIAL, &p, &l);
        int ty = heed_tokenizer_token_type(t, d.ids[i]);
        if (ty == HEED_TOKEN_CONTROL || ty == HEED_TOKEN_UNKNOWN) {
          FZ_CHECK(flags & HEED_TOKENIZE_PARSE_SPECIAL, "control token without parse_special");
          for (size_t k = 0; k < ns; k++)
            if (spans[k].untrusted && spans[k].offset < pos + l && spans[k].offset + spans[k].length > pos)
              FZ_CHECK(spans[k].length == 0, "control token %d at [%zu, %zu) over untrusted span %zu", d.ids[i], pos,
                       pos + l, k);
        }
        pos += l;
      }
      FZ_CHECK(pos == n, "span ids decode to %zu bytes of %zu", pos, n);
      fz_stat("spans walked");
    }
    heed_tokens_free(&d);
  }

  /* caller-sized output */
  if (a.n > 0) {
    heed_token *ids = malloc(a.n * sizeof *ids);
    size_t m;
    heed_error err;
    FZ_CHECK(heed_tokenizer_encode_to(t, text, n, flags, ids, a.n - 1, &m, &err) == HEED_E_TOO_SMALL && m == a.n,
             "encode_to with %zu slots for %zu ids", a.n - 1, a.n);
    FZ_CHECK(heed_tokenizer_encode_to(t, text, n, flags, ids, a.n, &m, &err) == HEED_OK && m == a.n &&
                 memcmp(ids, a.ids, m * sizeof *ids) == 0,
             "encode_to differs");
    free(ids);
  }

  check_stream(t, &a, (fl >> 2) & 3);
  check_stream(t, &a, HEED_DETOK_REPLACE | ((fl >> 4) & 1));
  heed_tokens_free(&a);
  heed_tokens_free(&b);
  heed_tokens_free(&c);
  return 0;
}
