/* bench/bench_spec.c - `heed bench spec`: how long verification takes against
 * the time to read its logits once (the floor for anything that looks at
 * every logit), and how often n-gram drafts are accepted on code edits. Part
 * of the heed tool, not of libheed. */
#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench/bench_spec.h"
#include "heed/heed.h"

typedef struct spec_case {
  heed_spec *s;
  heed_sampling smp;
  const float *rows; /* [k + 1][vocab] */
  int32_t draft[16];
  unsigned k;
  int failed;
} spec_case;

static void run_verify(void *ctx) {
  spec_case *c = ctx;
  static uint64_t step;
  heed_spec_result res;
  if (heed_spec_verify_chain(c->s, &c->smp, 1, step++, c->rows, c->draft, c->k, NULL, &res) != HEED_OK) c->failed = 1;
}

/* Logits like a model's: a spread of values (uniform in [-6, 2)) and one
 * likely token per row, the draft, whose probability at T = 1 is p_draft.
 * Verification reads a row only when the walk reaches it, so p_draft near 1
 * (every draft accepted, every row read) is the worst case. */
static void fill_rows(float *rows, unsigned V, unsigned k, int32_t *draft, double p_draft) {
  uint64_t r = 0x5eed;
  const double rest = (V - 1) * (exp(2.0) - exp(-6.0)) / 8.0; /* the others' expected sum of exp */
  const float top_logit = (float)log(p_draft / (1 - p_draft) * rest);
  for (unsigned i = 0; i <= k; i++) {
    float *x = rows + (size_t)i * V;
    for (unsigned t = 0; t < V; t++) {
      r = r * 6364136223846793005ull + 1442695040888963407ull;
      x[t] = (float)((r >> 40) * 0x1p-24) * 8.0f - 6.0f;
    }
    unsigned top = (unsigned)((r >> 20) % V);
    x[top] = top_logit;
    if (i < k) draft[i] = (int32_t)top;
  }
}

int heed_bench_spec(heed_runtime *rt, heed_bench *b, heed_bench_result *out, int cap, int *n_out) {
  static const unsigned vocabs[] = {32000, 151936, 262144}, ks[] = {4, 8, 16};
  *n_out = 0;
  float *rows = malloc((size_t)17 * 262144 * sizeof(float));
  if (!rows) return -1;
  int rc = 0;
  for (unsigned vi = 0; vi < 3 && !rc; vi++) {
    heed_spec_config cfg = {.vocab = vocabs[vi], .max_draft = 16, .max_penalty_tokens = 0, .max_sparse = 0};
    heed_spec *s;
    heed_error e = {0};
    if (heed_spec_create(rt, &cfg, &s, &e) != HEED_OK) {
      fprintf(stderr, "heed bench spec: %s\n", e.msg);
      rc = -1;
      break;
    }
    for (unsigned ki = 0; ki < 3 && !rc; ki++)
      for (int mode = 0; mode < 5 && !rc; mode++) {
        /* greedy and plain sampling everywhere, every draft accepted; the
         * cuts, and drafts accepted with probability 0.6, at k = 8 only */
        if (mode >= 2 && ks[ki] != 8) continue;
        if (*n_out >= cap) break;
        spec_case c = {.s = s, .rows = rows, .k = ks[ki]};
        fill_rows(rows, vocabs[vi], ks[ki], c.draft, mode == 4 ? 0.6 : 0.998);
        heed_sampling_init(&c.smp);
        static const char *modes[] = {"greedy", "sample", "topk50_topp0.95", "topp0.95", "sample_accept0.6"};
        if (mode >= 1) c.smp.temperature = 1.0f;
        if (mode == 2) c.smp.top_k = 50;
        if (mode == 2 || mode == 3) c.smp.top_p = 0.95f;
        char name[64], shape[160];
        snprintf(name, sizeof name, "spec.v%u.k%u.%s", vocabs[vi], ks[ki], modes[mode]);
        snprintf(shape, sizeof shape, "{\"vocab\":%u,\"k\":%u,\"mode\":\"%s\"}", vocabs[vi], ks[ki], modes[mode]);
        heed_bench_case bc = {.name = name, .dtype = "f32", .shape_json = shape, .limit = HEED_LIMIT_READ_BANDWIDTH,
                              .work = (double)(ks[ki] + 1) * vocabs[vi] * sizeof(float), .run = run_verify, .ctx = &c};
        heed_status st = heed_bench_run_case(b, &bc, &out[*n_out]);
        if (st != HEED_OK || c.failed) {
          fprintf(stderr, "heed bench spec: %s: %s\n", name, c.failed ? heed_spec_last_error(s) : heed_bench_last_error(b));
          rc = -1;
        } else {
          (*n_out)++;
        }
      }
    heed_spec_destroy(s);
  }
  free(rows);
  return rc;
}

void heed_bench_spec_summary(const heed_bench_result *r, int n, FILE *f) {
  for (int i = 0; i < n; i++)
    if (strncmp(r[i].name, "spec.", 5) == 0 && r[i].fraction > 0)
      fprintf(f, "%-30s %5.2fx the time to read its logits once (%.3f ms; %.1f GB/s probed)\n", r[i].name,
              1.0 / r[i].fraction, r[i].ms_median, r[i].limit_value);
}

/* ---- n-gram acceptance on a code edit ---- */

/* Word, number and single-punctuation tokens, hashed into a 32000 vocabulary. */
static unsigned tokenize(const char *t, size_t n, int32_t *out) {
  unsigned m = 0;
  for (size_t i = 0; i < n;) {
    if (isspace((unsigned char)t[i])) {
      size_t j = i;
      while (j < n && isspace((unsigned char)t[j])) j++;
      if (memchr(t + i, '\n', j - i)) out[m++] = 1; /* newline (and indentation) */
      i = j;
      continue;
    }
    size_t j = i + 1;
    if (isalnum((unsigned char)t[i]) || t[i] == '_')
      while (j < n && (isalnum((unsigned char)t[j]) || t[j] == '_')) j++;
    uint32_t h = 2166136261u;
    for (size_t p = i; p < j; p++) h = (h ^ (unsigned char)t[p]) * 16777619u;
    out[m++] = (int32_t)(2 + h % 31998);
    i = j;
  }
  return m;
}

/* The same text with small edits: every 23rd line gets a renamed word, every
 * 61st is dropped, and after every 47th a new line is inserted. */
static size_t edit_text(const char *t, size_t n, char *out) {
  size_t o = 0, line = 0;
  for (size_t i = 0; i < n;) {
    const char *nl = memchr(t + i, '\n', n - i);
    size_t e = nl ? (size_t)(nl - t) + 1 : n;
    line++;
    if (line % 61 == 0) {
      i = e;
      continue;
    }
    memcpy(out + o, t + i, e - i);
    if (line % 23 == 0)
      for (size_t p = o; p + 1 < o + (e - i); p++)
        if (isalpha((unsigned char)out[p])) {
          out[p] = out[p] == 'z' ? 'y' : (char)(out[p] + 1);
          break;
        }
    o += e - i;
    if (line % 47 == 0) o += (size_t)sprintf(out + o, "  edited_counter += %zu; /* added */\n", line);
    i = e;
  }
  return o;
}

int heed_bench_spec_ngram(const char *path, FILE *f) {
  FILE *in = fopen(path, "rb");
  if (!in) {
    fprintf(stderr, "heed bench spec: cannot read %s (give a source file with --file)\n", path);
    return -1;
  }
  fseek(in, 0, SEEK_END);
  long len = ftell(in);
  fseek(in, 0, SEEK_SET);
  char *text = malloc((size_t)len + 1), *edited = malloc((size_t)len * 2 + 4096);
  size_t got = fread(text, 1, (size_t)len, in);
  fclose(in);
  size_t elen = edit_text(text, got, edited);
  int32_t *orig = malloc(sizeof(int32_t) * (got + 1)), *ed = malloc(sizeof(int32_t) * (elen + 1));
  unsigned no = tokenize(text, got, orig), ne = tokenize(edited, elen, ed);
  fprintf(f, "n-gram drafter on a code edit: %s, %u tokens, then the edited copy, %u tokens (n 1..4)\n", path, no, ne);
  fprintf(f, "%4s %10s %10s %10s %12s %14s\n", "k", "steps", "proposed", "accepted", "acceptance", "tokens/step");
  static const unsigned ks[] = {4, 8, 16};
  for (int ki = 0; ki < 3; ki++) {
    heed_drafter *d;
    heed_ngram_config nc = {.vocab = 32000, .n_min = 1, .n_max = 4, .capacity = no + ne + 16};
    if (heed_ngram_drafter_create(&nc, &d, NULL) != HEED_OK) return -1;
    heed_drafter_append(d, orig, no);
    unsigned pos = 0, steps = 0;
    unsigned long proposed = 0, accepted = 0;
    while (pos < ne) {
      heed_draft dr;
      heed_drafter_propose(d, ks[ki], &dr);
      unsigned a = 0;
      while (a < dr.n && pos + a < ne && dr.tokens[a] == ed[pos + a]) a++;
      proposed += dr.n, accepted += a;
      unsigned adv = a + (pos + a < ne ? 1 : 0); /* the accepted drafts, then the target's token */
      heed_drafter_append(d, ed + pos, adv);
      pos += adv, steps++;
    }
    fprintf(f, "%4u %10u %10lu %10lu %11.1f%% %14.2f\n", ks[ki], steps, proposed, accepted,
            proposed ? 100.0 * accepted / proposed : 0.0, (double)ne / steps);
    heed_drafter_destroy(d);
  }
  free(text), free(edited), free(orig), free(ed);
  return 0;
}
