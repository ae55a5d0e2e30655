/* bench/bench_reuse.c - `heed bench reuse`: what chunk reuse (heed serve
 * --cache-reuse chunks) does to the numbers, against a full recompute.
 *
 * For each turn kind an earlier prompt O is prefilled (the cached sequence),
 * then the new prompt P two ways: recomputed whole, and as the server's chunk
 * reuse builds it (the exact prefix forked from O, the runs srv_chunk_runs
 * finds copied with heed_model_seq_copy_shifted, the rest recomputed). Then
 * --gen tokens are generated greedily from the full recompute and fed to both
 * (teacher forcing), and at each position the next-token distributions are
 * compared: KL(full || reuse) in nats and whether the top tokens agree.
 *
 * Turn kinds, from pieces of heed's own sources as tool results (the agent's
 * "read_file" calls):
 *   volatile  the timestamp in the system line changes (one token more)
 *   drop      a tool result in the middle is dropped
 *   compact   the history is rebuilt from a summary plus the last exchange
 * Prompts are token arrays joined from pieces tokenized alone. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench/bench_reuse.h"
#include "heed/heed.h"
#include "heed/tokenizer.h"
#include "serve/serve_internal.h"

typedef struct toks {
  int32_t *t;
  size_t n, cap;
} toks;

static int toks_add(toks *a, const int32_t *t, size_t n) {
  if (a->n + n > a->cap) {
    size_t c = a->cap ? a->cap : 1024;
    while (c < a->n + n) c *= 2;
    int32_t *x = realloc(a->t, c * sizeof *x);
    if (!x) return -1;
    a->t = x, a->cap = c;
  }
  memcpy(a->t + a->n, t, n * sizeof *t);
  a->n += n;
  return 0;
}

static int add_text(toks *a, const heed_tokenizer *tk, const char *text, unsigned flags) {
  heed_tokens ids = {0};
  heed_error e = {0};
  if (heed_tokenizer_encode(tk, text, strlen(text), flags, &ids, &e) != HEED_OK) {
    fprintf(stderr, "heed bench reuse: tokenize: %s\n", e.msg);
    return -1;
  }
  int r = toks_add(a, ids.ids, ids.n);
  heed_tokens_free(&ids);
  return r;
}

/* A tool call reading path and its result: the file's first `cap` tokens. */
static int add_read(toks *a, const heed_tokenizer *tk, const char *dir, const char *path, size_t cap) {
  char full[1024], head[1200];
  snprintf(full, sizeof full, "%s/%s", dir, path);
  FILE *f = fopen(full, "rb");
  if (!f) {
    fprintf(stderr, "heed bench reuse: %s: %s (--dir names heed's source folder)\n", full, strerror(errno));
    return -1;
  }
  char *buf = malloc(cap * 8 + 1);
  size_t n = buf ? fread(buf, 1, cap * 8, f) : 0;
  fclose(f);
  if (!buf) return -1;
  buf[n] = 0;
  snprintf(head, sizeof head, "\nAssistant: read_file(\"%s\")\nTool result:\n", path);
  toks body = {0};
  int r = add_text(a, tk, head, 0) || add_text(&body, tk, buf, 0) || toks_add(a, body.t, body.n < cap ? body.n : cap);
  free(buf), free(body.t);
  return r;
}

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int prefill(heed_model *m, int seq, const int32_t *t, size_t n, unsigned batch, float *logits) {
  for (size_t at = 0; at < n;) {
    unsigned k = n - at < batch ? (unsigned)(n - at) : batch;
    int last = at + k == n;
    heed_model_batch_seq b = {.seq = seq, .n_tokens = k, .tokens = t + at, .n_logits = (unsigned)(last && logits),
                              .logits = last ? logits : NULL};
    if (heed_model_step(m, &b, 1) != HEED_OK) {
      fprintf(stderr, "heed bench reuse: step: %s\n", heed_model_last_error(m));
      return -1;
    }
    at += k;
  }
  return 0;
}

static size_t argmax(const float *x, size_t n) {
  size_t b = 0;
  for (size_t i = 1; i < n; i++)
    if (x[i] > x[b]) b = i;
  return b;
}

/* KL(p || q) of the softmaxes of logits a (p) and b (q), in nats. */
static double kl(const float *a, const float *b, size_t n) {
  double ma = -INFINITY, mb = -INFINITY, sa = 0, sb = 0;
  for (size_t i = 0; i < n; i++) ma = fmax(ma, a[i]), mb = fmax(mb, b[i]);
  for (size_t i = 0; i < n; i++) sa += exp(a[i] - ma), sb += exp(b[i] - mb);
  const double la = ma + log(sa), lb = mb + log(sb);
  double k = 0;
  for (size_t i = 0; i < n; i++) {
    const double lp = a[i] - la, lq = b[i] - lb;
    k += exp(lp) * (lp - lq);
  }
  return k > 0 ? k : 0;
}

typedef struct kind_result {
  const char *kind;
  size_t n_old, n_new, exact, shifted, recomputed;
  double t_full, t_reuse, kl_mean, kl_max, top1;
  unsigned gen;
} kind_result;

/* One turn kind: O cached, P two ways, gen positions compared. */
static int run_kind(heed_model *m, const char *kind, const toks *o, const toks *p, unsigned gen, unsigned boundary,
                    unsigned batch, kind_result *out) {
  const size_t V = heed_model_get_config(m)->n_vocab;
  float *rows = malloc(2 * V * sizeof(float));
  int32_t *teach = malloc((gen + 1) * sizeof *teach);
  srv_run *runs = NULL;
  unsigned n_runs = 0;
  int so = -1, sf = -1, sr = -1, rc = -1;
  memset(out, 0, sizeof *out);
  out->kind = kind, out->n_old = o->n, out->n_new = p->n, out->gen = gen;
  if (!rows || !teach || heed_model_seq_new(m, &so) || prefill(m, so, o->t, o->n, batch, NULL)) goto done;
  /* the full recompute */
  double t0 = now_s();
  if (heed_model_seq_new(m, &sf) || prefill(m, sf, p->t, p->n, batch, rows)) goto done;
  out->t_full = now_s() - t0;
  /* chunk reuse, as the server does it */
  t0 = now_s();
  size_t lcp = 0;
  while (lcp < o->n && lcp + 1 < p->n && o->t[lcp] == p->t[lcp]) lcp++;
  if (heed_model_seq_fork(m, so, &sr) || heed_model_seq_truncate(m, sr, (unsigned)lcp)) goto done;
  const int32_t *src[1] = {o->t};
  size_t len[1] = {o->n};
  out->shifted = srv_chunk_runs(p->t, p->n, lcp, src, len, 1, boundary, &runs, &n_runs);
  size_t at = lcp;
  for (unsigned r = 0; r <= n_runs; r++) {
    const size_t stop = r < n_runs ? runs[r].dst : p->n;
    if (stop > at && prefill(m, sr, p->t + at, stop - at, batch, stop == p->n ? rows + V : NULL)) goto done;
    if (r == n_runs) break;
    if (heed_model_seq_copy_shifted(m, sr, so, (unsigned)runs[r].src_pos, (unsigned)runs[r].n) != HEED_OK) {
      fprintf(stderr, "heed bench reuse: copy: %s\n", heed_model_last_error(m));
      goto done;
    }
    at = runs[r].dst + runs[r].n;
  }
  out->t_reuse = now_s() - t0;
  out->exact = lcp, out->recomputed = p->n - lcp - out->shifted;
  /* teacher-forced: the full recompute's greedy tokens into both */
  unsigned agree = 0;
  for (unsigned g = 0; g < gen; g++) {
    const double k = kl(rows, rows + V, V);
    out->kl_mean += k / gen;
    out->kl_max = fmax(out->kl_max, k);
    teach[g] = (int32_t)argmax(rows, V);
    agree += argmax(rows + V, V) == (size_t)teach[g];
    if (g + 1 == gen) break;
    heed_model_batch_seq b[2] = {{.seq = sf, .n_tokens = 1, .tokens = teach + g, .n_logits = 1, .logits = rows},
                                 {.seq = sr, .n_tokens = 1, .tokens = teach + g, .n_logits = 1, .logits = rows + V}};
    if (heed_model_step(m, b, 2) != HEED_OK) {
      fprintf(stderr, "heed bench reuse: step: %s\n", heed_model_last_error(m));
      goto done;
    }
  }
  out->top1 = (double)agree / gen;
  rc = 0;
done:
  if (so >= 0) heed_model_seq_free(m, so);
  if (sf >= 0) heed_model_seq_free(m, sf);
  if (sr >= 0) heed_model_seq_free(m, sr);
  free(rows), free(teach), free(runs);
  return rc;
}

static const char use[] =
    "usage: heed bench reuse MODEL.gguf [--tokens 2000] [--gen 32] [--boundary 8] [--kv f16|q8|...] [--threads N]\n"
    "                        [--dir HEED_SOURCE_DIR] [--json FILE]\n"
    "  chunk reuse (heed serve --cache-reuse chunks) against a full recompute, per turn kind (volatile line,\n"
    "  dropped tool result, compaction): tokens copied, prefill time, and over --gen teacher-forced positions\n"
    "  the KL divergence of the next-token distributions and the top-1 agreement\n";

int heed_bench_reuse_main(int argc, char **argv) {
  const char *path = NULL, *dir = HEED_SOURCE_DIR, *json = NULL;
  unsigned tokens = 2000, gen = 32, boundary = 8, threads = 0;
  heed_dtype kv = HEED_DTYPE_F16;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
    char *end = NULL;
    unsigned long x = 0;
    int num = !strcmp(a, "--tokens") || !strcmp(a, "--gen") || !strcmp(a, "--boundary") || !strcmp(a, "--threads");
    if (num) {
      errno = 0;
      x = v && *v != '-' ? strtoul(v, &end, 10) : 0;
      if (!v || errno || *end || x == 0 || x > 1000000) {
        fprintf(stderr, "heed bench reuse: %s %s: accepted: a whole number in 1..1000000\n", a, v ? v : "(none)");
        return 2;
      }
      i++;
    }
    if (!strcmp(a, "--tokens")) tokens = (unsigned)x;
    else if (!strcmp(a, "--gen")) gen = (unsigned)x;
    else if (!strcmp(a, "--boundary")) boundary = (unsigned)x;
    else if (!strcmp(a, "--threads")) threads = (unsigned)x;
    else if (!strcmp(a, "--dir") && v) dir = v, i++;
    else if (!strcmp(a, "--json") && v) json = v, i++;
    else if (!strcmp(a, "--kv") && v) {
      if (heed_dtype_parse(v, &kv) != HEED_OK) {
        fprintf(stderr, "heed bench reuse: --kv %s: accepted: f16, bf16, f32, q8, q4, e4m3, e5m2\n", v);
        return 2;
      }
      i++;
    } else if (a[0] != '-' && !path) path = a;
    else {
      fprintf(stderr, "heed bench reuse: unexpected argument '%s'\n%s", a, use);
      return 2;
    }
  }
  if (!path) {
    fputs(use, stderr);
    return 2;
  }
  if (tokens < 512) {
    fprintf(stderr, "heed bench reuse: --tokens %u: at least 512, so each kind has runs to find\n", tokens);
    return 2;
  }
  FILE *jf = json ? fopen(json, "w") : NULL;
  if (json && !jf) {
    fprintf(stderr, "heed bench reuse: --json %s: cannot write: %s\n", json, strerror(errno));
    return 1;
  }
  heed_runtime_options ro;
  heed_runtime_options_init(&ro);
  if (threads) ro.n_threads = threads;
  heed_runtime *rt = NULL;
  heed_error e = {0};
  if (heed_runtime_open(&ro, &rt, &e) != HEED_OK) {
    fprintf(stderr, "heed bench reuse: %s\n", e.msg);
    if (jf) fclose(jf);
    return 1;
  }
  heed_model_options mo;
  heed_model_options_init(&mo);
  mo.kv_dtype = kv, mo.max_seqs = 4, mo.max_batch = 512, mo.n_ctx = tokens + tokens / 2 + gen + 256;
  heed_model *m = NULL;
  if (heed_model_open(rt, path, &mo, &m, &e) != HEED_OK) {
    fprintf(stderr, "heed bench reuse: %s\n", e.msg);
    heed_runtime_close(rt);
    if (jf) fclose(jf);
    return 1;
  }
  const heed_tokenizer *tk = heed_model_tokenizer(m);
  /* the pieces: two system lines, four tool results of a quarter of the budget each, a question, a summary */
  static const char *files[4] = {"serve/cache.c", "attention/kv_cache.c", "serve/disk.c", "model/model.c"};
  const char *sys_a = "System: You are a coding agent working in the heed repository. Current time: 2026-12-07 09:14:02."
                      " Tools: read_file(path), run(cmd), edit(path, old, new). Answer briefly.\n";
  const char *sys_b = "System: You are a coding agent working in the heed repository. Current time: 2026-12-07 11:52:47 UTC."
                      " Tools: read_file(path), run(cmd), edit(path, old, new). Answer briefly.\n";
  const char *question = "\nUser: Which function frees a sequence's blocks, and where is it called?\nAssistant:";
  const char *summary = "\nSummary of the session so far: the agent read the prefix cache, the KV cache and the disk"
                        " tier's sources, and is now reading the model's sequence functions.\n";
  toks sa = {0}, sb = {0}, r[4] = {{0}}, q = {0}, sm = {0}, bos = {0};
  int bad = add_text(&bos, tk, "", HEED_TOKENIZE_ADD_SPECIAL) || add_text(&sa, tk, sys_a, 0) ||
            add_text(&sb, tk, sys_b, 0) || add_text(&q, tk, question, 0) || add_text(&sm, tk, summary, 0);
  for (int i = 0; i < 4 && !bad; i++) bad = add_read(&r[i], tk, dir, files[i], (tokens - 200) / 4);
  int rc = 1;
  if (!bad) {
    toks o[3] = {{0}}, p[3] = {{0}};
    const char *kinds[3] = {"volatile", "drop", "compact"};
    for (int k = 0; k < 3; k++) { /* O: bos, system a, r0..r3, question */
      toks_add(&o[k], bos.t, bos.n), toks_add(&o[k], sa.t, sa.n);
      for (int i = 0; i < 4; i++) toks_add(&o[k], r[i].t, r[i].n);
      toks_add(&o[k], q.t, q.n);
      toks_add(&p[k], bos.t, bos.n), toks_add(&p[k], k == 0 ? sb.t : sa.t, k == 0 ? sb.n : sa.n);
    }
    for (int i = 0; i < 4; i++) toks_add(&p[0], r[i].t, r[i].n);
    for (int i = 0; i < 4; i++)
      if (i != 1) toks_add(&p[1], r[i].t, r[i].n);
    toks_add(&p[2], sm.t, sm.n), toks_add(&p[2], r[3].t, r[3].n);
    for (int k = 0; k < 3; k++) toks_add(&p[k], q.t, q.n);
    printf("heed bench reuse: %s, KV %s, boundary %u, %u positions compared (teacher-forced on the full recompute's "
           "greedy tokens)\n", path, heed_dtype_name(kv), boundary, gen);
    printf("%-9s %6s %6s %6s %7s %6s %9s %9s %10s %10s %6s\n", "kind", "old", "new", "exact", "shifted", "recomp",
           "full s", "reuse s", "KL mean", "KL max", "top-1");
    if (jf) fprintf(jf, "{\"schema\":\"heed-bench-reuse/1\",\"model\":\"%s\",\"kv\":\"%s\",\"boundary\":%u,\"gen\":%u,\"kinds\":[",
                    path, heed_dtype_name(kv), boundary, gen);
    rc = 0;
    for (int k = 0; k < 3 && !rc; k++) {
      kind_result x;
      if (run_kind(m, kinds[k], &o[k], &p[k], gen, boundary, mo.max_batch, &x)) {
        rc = 1;
        break;
      }
      printf("%-9s %6zu %6zu %6zu %7zu %6zu %9.2f %9.2f %10.3g %10.3g %5.0f%%\n", x.kind, x.n_old, x.n_new, x.exact,
             x.shifted, x.recomputed, x.t_full, x.t_reuse, x.kl_mean, x.kl_max, 100 * x.top1);
      fflush(stdout);
      if (jf)
        fprintf(jf,
                "%s{\"kind\":\"%s\",\"old_tokens\":%zu,\"new_tokens\":%zu,\"exact\":%zu,\"shifted\":%zu,\"recomputed\":%zu,"
                "\"full_s\":%.4f,\"reuse_s\":%.4f,\"kl_mean\":%.6g,\"kl_max\":%.6g,\"top1\":%.4f}",
                k ? "," : "", x.kind, x.n_old, x.n_new, x.exact, x.shifted, x.recomputed, x.t_full, x.t_reuse,
                x.kl_mean, x.kl_max, x.top1);
    }
    if (jf) fprintf(jf, "]}\n");
    for (int k = 0; k < 3; k++) free(o[k].t), free(p[k].t);
  }
  free(sa.t), free(sb.t), free(q.t), free(sm.t), free(bos.t);
  for (int i = 0; i < 4; i++) free(r[i].t);
  if (jf && fclose(jf) != 0) rc = 1;
  heed_model_close(m);
  heed_runtime_close(rt);
  return rc;
}
