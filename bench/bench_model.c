/* bench/bench_model.c - `heed bench model MODEL`: prefill and decode speed
 * of a real model at several context depths and KV formats, each figure
 * beside its limit measured in the same run:
 *   decode   tok/s against read bandwidth / (weight bytes read per token +
 *            KV bytes read at that depth)
 *   prefill  tok/s against the FMA peak / (2 x weights multiplied per token +
 *            the attention's multiply-adds at that depth)
 * plus the share of the time in matrix products, attention and the rest.
 * The context at depth D is D tokens of synthetic K/V appended straight to
 * the cache (heed_model_seq_fill_synthetic): attention reads the same bytes
 * as after a real prefill, without a prefill of D tokens per case. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench/bench_model.h"
#include "heed/heed.h"

#define MAX_DEPTHS 8
#define MAX_KV 4

typedef struct row {
  unsigned depth;
  heed_dtype kv;
  double prefill_tps, prefill_limit, decode_tps, decode_limit;
  heed_model_stats ps, ds;
} row;

static double median3(double a, double b, double c) {
  return a > b ? (b > c ? b : a > c ? c : a) : (a > c ? a : b > c ? c : b);
}

/* Weight bytes a token reads: every tensor but the embedding (a row of it is
 * read), which counts when it is also the output. */
static double weight_bytes(const heed_gguf *g, double *mat_elems) {
  int tied = heed_gguf_find_tensor(g, "output.weight") == NULL;
  double b = 0, e = 0;
  for (uint64_t i = 0; i < heed_gguf_n_tensors(g); i++) {
    const heed_gguf_tensor *t = heed_gguf_tensor_at(g, i);
    int embd = strcmp(t->name, "token_embd.weight") == 0;
    if (embd && !tied) continue;
    b += (double)t->bytes;
    if (t->n_dims == 2) e += (double)t->n_elems;
  }
  *mat_elems = e;
  return b;
}

/* Attention multiply-adds (q.k and p.v) of n queries after depth tokens, all layers. */
static double attn_flops(const heed_model_config *c, unsigned depth, unsigned n) {
  double f = 0;
  for (uint32_t il = 0; il < c->n_layer; il++) {
    int swa = heed_model_layer_is_swa(c, il);
    for (unsigned i = 0; i < n; i++) {
      double seen = depth + i + 1;
      if (swa && seen > c->sliding_window) seen = c->sliding_window;
      f += 2.0 * c->n_head * (c->head_dim_k + c->head_dim_v) * seen;
    }
  }
  return f;
}

static int parse_list(const char *opt, const char *arg, unsigned *out, int cap, unsigned hi) {
  int n = 0;
  const char *p = arg;
  while (*p) {
    char *end;
    errno = 0;
    unsigned long v = strtoul(p, &end, 10);
    if (end == p || errno || v > hi || (*end && *end != ',') || n == cap) {
      fprintf(stderr, "heed bench model: %s %s: a list of up to %d numbers 0..%u\n", opt, arg, cap, hi);
      return -1;
    }
    out[n++] = (unsigned)v;
    p = *end ? end + 1 : end;
  }
  return n;
}

int heed_bench_model_main(int argc, char **argv) {
  const char *model = NULL, *json = NULL;
  unsigned depths[MAX_DEPTHS] = {0, 4096, 16384, 32768}, n_prompt = 512, n_gen = 128;
  int n_depths = 4, n_kv = 1, threads = 0;
  heed_dtype kvs[MAX_KV] = {HEED_DTYPE_F16};
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
    unsigned tmp[1];
    if (strcmp(a, "--depth") == 0 && v) {
      if ((n_depths = parse_list(a, argv[++i], depths, MAX_DEPTHS, 1u << 20)) < 1) return 2;
    } else if (strcmp(a, "--kv") == 0 && v) {
      n_kv = 0;
      char buf[128];
      snprintf(buf, sizeof buf, "%s", argv[++i]);
      for (char *t = strtok(buf, ","); t; t = strtok(NULL, ",")) {
        if (n_kv == MAX_KV || heed_dtype_parse(t, &kvs[n_kv]) != HEED_OK) {
          fprintf(stderr, "heed bench model: --kv %s: up to %d of f32 f16 bf16 q8 q4 e4m3 e5m2\n", v, MAX_KV);
          return 2;
        }
        n_kv++;
      }
      if (!n_kv) return 2;
    } else if ((strcmp(a, "--prompt") == 0 || strcmp(a, "--gen") == 0 || strcmp(a, "--threads") == 0) && v) {
      if (parse_list(a, argv[++i], tmp, 1, 65536) != 1 || !tmp[0]) return 2;
      if (strcmp(a, "--prompt") == 0) n_prompt = tmp[0];
      else if (strcmp(a, "--gen") == 0) n_gen = tmp[0];
      else threads = (int)tmp[0];
    } else if (strcmp(a, "--json") == 0 && v) json = argv[++i];
    else if (a[0] != '-' && !model) model = a;
    else {
      fprintf(stderr, "heed bench model: unexpected argument '%s'\nusage: heed bench model MODEL.gguf [--depth 0,4096,16384,32768] "
                      "[--kv f16,q8] [--prompt 512] [--gen 128] [--threads N] [--json FILE]\n", a);
      return 2;
    }
  }
  if (!model) {
    fprintf(stderr, "heed bench model: which model?\n");
    return 2;
  }
  heed_runtime_options ro;
  heed_runtime_options_init(&ro);
  ro.backend = HEED_BACKEND_CPU;
  ro.n_threads = threads;
  heed_runtime *rt = NULL;
  heed_bench *bench = NULL;
  heed_error e = {0};
  int rc = 1;
  row rows[MAX_DEPTHS * MAX_KV];
  int n_rows = 0;
  float *logits = NULL;
  int32_t *toks = NULL;
  if (heed_runtime_open(&ro, &rt, &e) || heed_bench_create(rt, NULL, &bench, &e)) {
    fprintf(stderr, "heed bench model: %s\n", e.msg);
    goto done;
  }
  unsigned max_depth = 0;
  for (int d = 0; d < n_depths; d++) max_depth = depths[d] > max_depth ? depths[d] : max_depth;
  printf("heed bench model: %s; %s; prompt %u tokens, %u generated; context at each depth: synthetic K/V\n", model,
         heed_runtime_backend_description(rt), n_prompt, n_gen);
  printf("%-6s %6s  %10s %8s %6s  %10s %8s %6s   %s\n", "kv", "depth", "prefill", "limit", "frac", "decode", "limit",
         "frac", "time in matmul / attention / other (prefill; decode)");
  for (int k = 0; k < n_kv; k++) {
    heed_model_options mo;
    heed_model_options_init(&mo);
    mo.kv_dtype = kvs[k];
    mo.n_ctx = max_depth + n_prompt + n_gen + 16;
    mo.max_batch = n_prompt < 512 ? n_prompt : 512;
    heed_model *m;
    if (heed_model_open(rt, model, &mo, &m, &e)) {
      fprintf(stderr, "heed bench model: %s\n", e.msg);
      goto done;
    }
    const heed_model_config *c = heed_model_get_config(m);
    double mat_elems, wbytes = weight_bytes(heed_model_gguf(m), &mat_elems), kv_tok;
    heed_model_kv_bytes_per_token(c, kvs[k], &kv_tok, NULL);
    size_t V = c->n_vocab;
    free(logits), free(toks);
    logits = malloc(V * sizeof(float));
    toks = malloc((n_prompt + n_gen) * sizeof(int32_t));
    for (unsigned i = 0; i < n_prompt + n_gen; i++) toks[i] = (int32_t)(1000 + (i * 7919u) % 20000u) % (int32_t)V;
    for (int d = 0; d < n_depths; d++) {
      row *r = &rows[n_rows++];
      memset(r, 0, sizeof *r);
      r->depth = depths[d], r->kv = kvs[k];
      double bw[3], fma[3];
      heed_bench_probe(bench, HEED_LIMIT_READ_BANDWIDTH, &bw[0]);
      heed_bench_probe(bench, HEED_LIMIT_FMA_PEAK, &fma[0]);
      int seq;
      if (heed_model_seq_new(m, &seq) || heed_model_seq_fill_synthetic(m, seq, depths[d])) goto model_error;
      /* prefill */
      heed_model_reset_stats(m);
      double t0 = heed_bench_now_ms();
      for (unsigned at = 0; at < n_prompt;) {
        unsigned n = n_prompt - at < mo.max_batch ? n_prompt - at : mo.max_batch;
        heed_model_batch_seq b = {.seq = seq, .n_tokens = n, .tokens = toks + at, .n_logits = at + n == n_prompt, .logits = logits};
        if (heed_model_step(m, &b, 1)) goto model_error;
        at += n;
      }
      double tp = (heed_bench_now_ms() - t0) / 1e3;
      heed_model_get_stats(m, &r->ps);
      heed_bench_probe(bench, HEED_LIMIT_READ_BANDWIDTH, &bw[1]);
      heed_bench_probe(bench, HEED_LIMIT_FMA_PEAK, &fma[1]);
      /* decode after depth tokens (the prompt dropped) */
      if (heed_model_seq_truncate(m, seq, depths[d])) goto model_error;
      heed_model_reset_stats(m);
      t0 = heed_bench_now_ms();
      for (unsigned g = 0; g < n_gen; g++) {
        heed_model_batch_seq b = {.seq = seq, .n_tokens = 1, .tokens = toks + n_prompt + g, .n_logits = 1, .logits = logits};
        if (heed_model_step(m, &b, 1)) goto model_error;
      }
      double td = (heed_bench_now_ms() - t0) / 1e3;
      heed_model_get_stats(m, &r->ds);
      heed_model_seq_free(m, seq);
      heed_bench_probe(bench, HEED_LIMIT_READ_BANDWIDTH, &bw[2]);
      heed_bench_probe(bench, HEED_LIMIT_FMA_PEAK, &fma[2]);
      double B = median3(bw[0], bw[1], bw[2]) * 1e9, F = median3(fma[0], fma[1], fma[2]) * 1e9;
      r->prefill_tps = n_prompt / tp;
      r->prefill_limit = F / ((2.0 * mat_elems * n_prompt + attn_flops(c, depths[d], n_prompt)) / n_prompt);
      r->decode_tps = n_gen / td;
      r->decode_limit = B / (wbytes + kv_tok * (depths[d] + n_gen / 2.0));
      double ps = r->ps.s_matmul + r->ps.s_attention + r->ps.s_other, ds = r->ds.s_matmul + r->ds.s_attention + r->ds.s_other;
      printf("%-6s %6u  %10.1f %8.1f %6.2f  %10.1f %8.1f %6.2f   %2.0f/%2.0f/%2.0f%%; %2.0f/%2.0f/%2.0f%%\n",
             heed_dtype_name(kvs[k]), depths[d], r->prefill_tps, r->prefill_limit, r->prefill_tps / r->prefill_limit,
             r->decode_tps, r->decode_limit, r->decode_tps / r->decode_limit, 100 * r->ps.s_matmul / ps,
             100 * r->ps.s_attention / ps, 100 * r->ps.s_other / ps, 100 * r->ds.s_matmul / ds,
             100 * r->ds.s_attention / ds, 100 * r->ds.s_other / ds);
      fflush(stdout);
    }
    heed_model_close(m);
    continue;
  model_error:
    fprintf(stderr, "heed bench model: %s\n", heed_model_last_error(m));
    heed_model_close(m);
    goto done;
  }
  printf("tok/s; limits: prefill = FMA peak / (2 x matrix weights + attention) per token, decode = read bandwidth / "
         "(weight bytes + KV bytes at the depth) per token, probes in the same run\n");
  if (json) {
    FILE *f = fopen(json, "w");
    if (!f) {
      fprintf(stderr, "heed bench model: --json %s: cannot write: %s\n", json, strerror(errno));
      goto done;
    }
    fprintf(f, "{\"model\": \"%s\", \"prompt\": %u, \"gen\": %u, \"threads\": %d, \"results\": [", model, n_prompt, n_gen,
            heed_runtime_n_threads(rt));
    for (int i = 0; i < n_rows; i++) {
      const row *r = &rows[i];
      fprintf(f,
              "%s\n  {\"kv\": \"%s\", \"depth\": %u, \"prefill_tok_s\": %.3f, \"prefill_limit_tok_s\": %.3f, "
              "\"decode_tok_s\": %.3f, \"decode_limit_tok_s\": %.3f, \"prefill_s\": {\"matmul\": %.4f, \"attention\": "
              "%.4f, \"other\": %.4f}, \"decode_s\": {\"matmul\": %.4f, \"attention\": %.4f, \"other\": %.4f}}",
              i ? "," : "", heed_dtype_name(r->kv), r->depth, r->prefill_tps, r->prefill_limit, r->decode_tps,
              r->decode_limit, r->ps.s_matmul, r->ps.s_attention, r->ps.s_other, r->ds.s_matmul, r->ds.s_attention,
              r->ds.s_other);
    }
    fprintf(f, "\n]}\n");
    fclose(f);
    printf("wrote %s\n", json);
  }
  rc = 0;
done:
  free(logits), free(toks);
  heed_bench_destroy(bench);
  heed_runtime_close(rt);
  return rc;
}
