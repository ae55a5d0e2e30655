/* bench/bench_model.c - `heed bench model MODEL`: prefill and decode speed
 * of a real model at several context depths and KV formats, each figure
 * beside its limit measured in the same run:
 *   decode   tok/s against read bandwidth / (weight bytes read per token +
 *            KV bytes read at that depth)
 *   prefill  tok/s against the time the same-run peaks allow per token: the
 *            quantized matrices' 2 x weights at the int8 dot-product peak
 *            (their kernels' instruction: vpdpbusd, or vpmaddubsw on avx2),
 *            the float matrices' and the attention's flops at the FMA peak
 *            (all at the FMA peak where the weight kernels have no int8
 *            probe); the output projection counts once per prompt, as
 *            only the last position's logits are made
 * plus the share of the time in matrix products, attention and the rest.
 * Each case runs --repeats times (medians kept); --json writes the
 * heed-bench/1 schema (cases model.prefill / model.decode, shape {model,
 * depth, tokens, threads}), so --compare and `heed bench compare` read it,
 * and --plot draws tok/s against depth beside the limits.
 * The context at depth D is D tokens of synthetic K/V appended straight to
 * the cache (heed_model_seq_fill_synthetic): attention reads the same bytes
 * as after a real prefill, without a prefill of D tokens per case. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench/bench_model.h"
#include "bench/bench_report.h"
#include "heed/heed.h"

#define MAX_DEPTHS 8
#define MAX_KV 4
#define MAX_REPEATS 15

typedef struct row {
  unsigned depth;
  heed_dtype kv;
  double prefill_tps, prefill_limit, decode_tps, decode_limit;
  heed_model_stats ps, ds;
} row;

static int cmp_d(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

/* Median of n values (sorted in place), and their min and max. */
static double median(double *v, int n, double *lo, double *hi) {
  qsort(v, (size_t)n, sizeof *v, cmp_d);
  if (lo) *lo = v[0];
  if (hi) *hi = v[n - 1];
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

/* One case as a heed-bench/1 result: ms per token over the repeats, the
 * limit's probes, and the work per token (bytes or flops). */
static void to_result(heed_bench_result *x, const char *name, heed_runtime *rt, heed_dtype kv, const char *shape,
                      double *ms, int n_ms, heed_limit_kind lk, double *lim, int n_lim, double work) {
  memset(x, 0, sizeof *x);
  snprintf(x->name, sizeof x->name, "%s", name);
  snprintf(x->backend, sizeof x->backend, "cpu");
  snprintf(x->isa, sizeof x->isa, "%s", heed_isa_name(heed_runtime_isa(rt)));
  snprintf(x->dtype, sizeof x->dtype, "%s", heed_dtype_name(kv));
  snprintf(x->shape_json, sizeof x->shape_json, "%s", shape);
  x->repeats = n_ms;
  x->ms_median = median(ms, n_ms, &x->ms_min, &x->ms_max);
  x->limit_kind = lk;
  x->limit_value = median(lim, n_lim, &x->limit_min, &x->limit_max);
  x->achieved_value = work / (x->ms_median * 1e6); /* GB/s or GFLOP/s */
  x->fraction = x->achieved_value / x->limit_value;
}

/* Weight bytes a token reads: every tensor but the embedding (a row of it is
 * read), which counts when it is also the output. The matrices' elements, by
 * kind: quantized (int8 kernels) and float, [0] without the output
 * projection, [1] the output projection alone. */
typedef struct mat_elems {
  double quant[2], flt[2];
} mat_elems;
static double weight_bytes(const heed_gguf *g, mat_elems *me) {
  int tied = heed_gguf_find_tensor(g, "output.weight") == NULL;
  double b = 0;
  memset(me, 0, sizeof *me);
  for (uint64_t i = 0; i < heed_gguf_n_tensors(g); i++) {
    const heed_gguf_tensor *t = heed_gguf_tensor_at(g, i);
    int embd = strcmp(t->name, "token_embd.weight") == 0;
    if (embd && !tied) continue;
    b += (double)t->bytes;
    if (t->n_dims != 2) continue;
    const int out = tied ? embd : strcmp(t->name, "output.weight") == 0;
    const int flt = t->type == HEED_GGML_F32 || t->type == HEED_GGML_F16 || t->type == HEED_GGML_BF16;
    (flt ? me->flt : me->quant)[out] += (double)t->n_elems;
  }
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
  const char *plot = NULL, *compare = NULL;
  double threshold = 0.10;
  int n_depths = 4, n_kv = 1, threads = 0, repeats = 3, mmap_weights = 0;
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
    } else if ((strcmp(a, "--prompt") == 0 || strcmp(a, "--gen") == 0 || strcmp(a, "--threads") == 0 ||
                strcmp(a, "--repeats") == 0) && v) {
      unsigned hi = strcmp(a, "--repeats") == 0 ? MAX_REPEATS : 65536;
      if (parse_list(a, argv[++i], tmp, 1, hi) != 1 || !tmp[0]) {
        fprintf(stderr, "heed bench model: %s %s: accepted: 1..%u\n", a, argv[i], hi);
        return 2;
      }
      if (strcmp(a, "--prompt") == 0) n_prompt = tmp[0];
      else if (strcmp(a, "--gen") == 0) n_gen = tmp[0];
      else if (strcmp(a, "--repeats") == 0) repeats = (int)tmp[0];
      else threads = (int)tmp[0];
    } else if (strcmp(a, "--json") == 0 && v) json = argv[++i];
    else if (strcmp(a, "--plot") == 0 && v) plot = argv[++i];
    else if (strcmp(a, "--compare") == 0 && v) compare = argv[++i];
    else if (strcmp(a, "--threshold") == 0 && v) {
      char *end;
      threshold = strtod(argv[++i], &end);
      if (*end || !(threshold > 0 && threshold < 10)) {
        fprintf(stderr, "heed bench model: --threshold %s: a fraction above 0 and below 10\n", argv[i]);
        return 2;
      }
    }
    else if (strcmp(a, "--mmap") == 0) mmap_weights = 1;
    else if (a[0] != '-' && !model) model = a;
    else {
      fprintf(stderr, "heed bench model: unexpected argument '%s'\nusage: heed bench model MODEL.gguf [--depth 0,4096,16384,32768] "
                      "[--kv f16,q8] [--prompt 512] [--gen 128] [--repeats 3] [--threads N] [--mmap] [--json FILE] [--plot FILE.png] "
                      "[--compare OLD.json [--threshold 0.10]]\n", a);
      return 2;
    }
  }
  if (!model) {
    fprintf(stderr, "heed bench model: which model?\n");
    return 2;
  }
  char msg[512];
  heed_bench_result *old = NULL;
  int n_old = 0;
  if (compare && heed_bench_load_json(compare, &old, &n_old, msg, sizeof msg)) { /* before any timing */
    fprintf(stderr, "heed bench model --compare: %s\n", msg);
    return 1;
  }
  /* output files are opened before anything is measured, and removed if the run fails */
  FILE *jf = NULL;
  if (json && !(jf = fopen(json, "w"))) {
    fprintf(stderr, "heed bench model: --json %s: cannot write: %s\n", json, strerror(errno));
    free(old);
    return 1;
  }
  if (plot) {
    FILE *pf = fopen(plot, "w");
    if (!pf) {
      fprintf(stderr, "heed bench model: --plot %s: cannot write: %s\n", plot, strerror(errno));
      if (jf) fclose(jf), remove(json);
      free(old);
      return 1;
    }
    fclose(pf);
  }
  const char *base = strrchr(model, '/') ? strrchr(model, '/') + 1 : model;
  heed_runtime_options ro;
  heed_runtime_options_init(&ro);
  ro.backend = HEED_BACKEND_CPU;
  ro.n_threads = threads;
  heed_runtime *rt = NULL;
  heed_bench *bench = NULL;
  heed_error e = {0};
  int rc = 1;
  row rows[MAX_DEPTHS * MAX_KV];
  heed_bench_result res[2 * MAX_DEPTHS * MAX_KV];
  int n_rows = 0, n_res = 0;
  float *logits = NULL;
  int32_t *toks = NULL;
  if (heed_runtime_open(&ro, &rt, &e) || heed_bench_create(rt, NULL, &bench, &e)) {
    fprintf(stderr, "heed bench model: %s\n", e.msg);
    goto done;
  }
  double probe0;
  const int have_dot = heed_bench_probe(bench, HEED_LIMIT_INT8_DOT_PEAK, &probe0) == HEED_OK;
  unsigned max_depth = 0;
  for (int d = 0; d < n_depths; d++) max_depth = depths[d] > max_depth ? depths[d] : max_depth;
  printf("heed bench model: %s; %s; prompt %u tokens, %u generated, %d repeats (medians); context at each depth: "
         "synthetic K/V\n", model, heed_runtime_backend_description(rt), n_prompt, n_gen, repeats);
  printf("%-6s %6s  %10s %8s %6s  %10s %8s %6s   %s\n", "kv", "depth", "prefill", "limit", "frac", "decode", "limit",
         "frac", "time in matmul / attention / other (prefill; decode)");
  for (int k = 0; k < n_kv; k++) {
    heed_model_options mo;
    heed_model_options_init(&mo);
    mo.kv_dtype = kvs[k];
    mo.n_ctx = max_depth + n_prompt + n_gen + 16;
    mo.mmap_weights = mmap_weights;
    mo.max_batch = n_prompt < 512 ? n_prompt : 512;
    heed_model *m;
    if (heed_model_open(rt, model, &mo, &m, &e)) {
      fprintf(stderr, "heed bench model: %s\n", e.msg);
      goto done;
    }
    const heed_model_config *c = heed_model_get_config(m);
    mat_elems me;
    double wbytes = weight_bytes(heed_model_gguf(m), &me), kv_tok;
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
      double bw[2 * MAX_REPEATS + 1], fma[2 * MAX_REPEATS + 1], dot[2 * MAX_REPEATS + 1], pms[MAX_REPEATS],
          dms[MAX_REPEATS];
      int np = 0;
      heed_bench_probe(bench, HEED_LIMIT_READ_BANDWIDTH, &bw[np]);
      if (have_dot) heed_bench_probe(bench, HEED_LIMIT_INT8_DOT_PEAK, &dot[np]);
      heed_bench_probe(bench, HEED_LIMIT_FMA_PEAK, &fma[np++]);
      int seq;
      if (heed_model_seq_new(m, &seq) || heed_model_seq_fill_synthetic(m, seq, depths[d])) goto model_error;
      heed_model_stats ps = {0}, ds = {0}, st;
      for (int rep = 0; rep < repeats; rep++) {
        /* prefill */
        heed_model_reset_stats(m);
        double t0 = heed_bench_now_ms();
        for (unsigned at = 0; at < n_prompt;) {
          unsigned n = n_prompt - at < mo.max_batch ? n_prompt - at : mo.max_batch;
          heed_model_batch_seq b = {.seq = seq, .n_tokens = n, .tokens = toks + at, .n_logits = at + n == n_prompt, .logits = logits};
          if (heed_model_step(m, &b, 1)) goto model_error;
          at += n;
        }
        pms[rep] = (heed_bench_now_ms() - t0) / n_prompt;
        heed_model_get_stats(m, &st);
        ps.s_matmul += st.s_matmul, ps.s_attention += st.s_attention, ps.s_other += st.s_other;
        heed_bench_probe(bench, HEED_LIMIT_READ_BANDWIDTH, &bw[np]);
        if (have_dot) heed_bench_probe(bench, HEED_LIMIT_INT8_DOT_PEAK, &dot[np]);
        heed_bench_probe(bench, HEED_LIMIT_FMA_PEAK, &fma[np++]);
        /* decode after depth tokens (the prompt dropped) */
        if (heed_model_seq_truncate(m, seq, depths[d])) goto model_error;
        heed_model_reset_stats(m);
        t0 = heed_bench_now_ms();
        for (unsigned g = 0; g < n_gen; g++) {
          heed_model_batch_seq b = {.seq = seq, .n_tokens = 1, .tokens = toks + n_prompt + g, .n_logits = 1, .logits = logits};
          if (heed_model_step(m, &b, 1)) goto model_error;
        }
        dms[rep] = (heed_bench_now_ms() - t0) / n_gen;
        heed_model_get_stats(m, &st);
        ds.s_matmul += st.s_matmul, ds.s_attention += st.s_attention, ds.s_other += st.s_other;
        if (heed_model_seq_truncate(m, seq, depths[d])) goto model_error;
        heed_bench_probe(bench, HEED_LIMIT_READ_BANDWIDTH, &bw[np]);
        if (have_dot) heed_bench_probe(bench, HEED_LIMIT_INT8_DOT_PEAK, &dot[np]);
        heed_bench_probe(bench, HEED_LIMIT_FMA_PEAK, &fma[np++]);
      }
      heed_model_seq_free(m, seq);
      r->ps = ps, r->ds = ds;
      /* work per token: prefill ops, decode bytes read. With an int8 probe the
       * prefill limit is int8_dot_peak and the flops run at the FMA peak count
       * as the int8 ops the same time would allow (x dot / fma, medians). */
      const double qops = 2.0 * (me.quant[0] + me.quant[1] / n_prompt);
      const double fflops = 2.0 * (me.flt[0] + me.flt[1] / n_prompt) + attn_flops(c, depths[d], n_prompt) / n_prompt;
      double fmin, fmax, dmin, dmax;
      const double fmed = median(fma, np, &fmin, &fmax), dmed = have_dot ? median(dot, np, &dmin, &dmax) : 0;
      const double pflops = have_dot ? qops + fflops * (dmed / fmed) : qops + fflops;
      const double dbytes = wbytes + kv_tok * (depths[d] + n_gen / 2.0);
      char shape[200];
      snprintf(shape, sizeof shape, "{\"model\":\"%s\",\"depth\":%u,\"tokens\":%u,\"threads\":%d}", base, depths[d],
               n_prompt, heed_runtime_n_threads(rt));
      for (char *q = shape + 10; *q && q < shape + 10 + strlen(base); q++)
        if (*q == '"' || *q == '\\' || (unsigned char)*q < 32) *q = '_';
      to_result(&res[n_res], "model.prefill", rt, kvs[k], shape, pms, repeats,
                have_dot ? HEED_LIMIT_INT8_DOT_PEAK : HEED_LIMIT_FMA_PEAK, have_dot ? dot : fma, np, pflops);
      r->prefill_tps = 1e3 / res[n_res].ms_median;
      r->prefill_limit = r->prefill_tps / res[n_res].fraction;
      n_res++;
      snprintf(shape, sizeof shape, "{\"model\":\"%s\",\"depth\":%u,\"tokens\":%u,\"threads\":%d}", base, depths[d],
               n_gen, heed_runtime_n_threads(rt));
      for (char *q = shape + 10; *q && q < shape + 10 + strlen(base); q++)
        if (*q == '"' || *q == '\\' || (unsigned char)*q < 32) *q = '_';
      double bwc[2 * MAX_REPEATS + 1];
      memcpy(bwc, bw, sizeof(double) * (size_t)np);
      to_result(&res[n_res], "model.decode", rt, kvs[k], shape, dms, repeats, HEED_LIMIT_READ_BANDWIDTH, bwc, np, dbytes);
      r->decode_tps = 1e3 / res[n_res].ms_median;
      r->decode_limit = r->decode_tps / res[n_res].fraction;
      n_res++;
      double ps_ = r->ps.s_matmul + r->ps.s_attention + r->ps.s_other, ds_ = r->ds.s_matmul + r->ds.s_attention + r->ds.s_other;
      printf("%-6s %6u  %10.1f %8.1f %6.2f  %10.1f %8.1f %6.2f   %2.0f/%2.0f/%2.0f%%; %2.0f/%2.0f/%2.0f%%\n",
             heed_dtype_name(kvs[k]), depths[d], r->prefill_tps, r->prefill_limit, r->prefill_tps / r->prefill_limit,
             r->decode_tps, r->decode_limit, r->decode_tps / r->decode_limit, 100 * r->ps.s_matmul / ps_,
             100 * r->ps.s_attention / ps_, 100 * r->ps.s_other / ps_, 100 * r->ds.s_matmul / ds_,
             100 * r->ds.s_attention / ds_, 100 * r->ds.s_other / ds_);
      fflush(stdout);
    }
    heed_model_close(m);
    continue;
  model_error:
    fprintf(stderr, "heed bench model: %s\n", heed_model_last_error(m));
    heed_model_close(m);
    goto done;
  }
  printf("tok/s; limits: prefill = %s, decode = read bandwidth / (weight bytes + KV bytes at the depth) per token, probes "
         "in the same run\n",
         have_dot ? "2 x quantized matrix weights at the int8 dot peak + float matrices and attention at the FMA peak"
                  : "FMA peak / (2 x matrix weights + attention) per token");
  if (jf) {
    heed_bench_write_json(rt, res, n_res, jf);
    int bad = fclose(jf) != 0;
    jf = NULL;
    if (bad) {
      fprintf(stderr, "heed bench model: --json %s: cannot write: %s\n", json, strerror(errno));
      remove(json);
      goto done;
    }
    printf("wrote %s\n", json);
  }
  if (plot) {
    char title[200];
    snprintf(title, sizeof title, "heed bench model, %s, %s, %d threads", base, heed_isa_name(heed_runtime_isa(rt)),
             heed_runtime_n_threads(rt));
    for (char *q = title; *q; q++)
      if (*q == '\'' || *q == '\\') *q = ' ';
    if (heed_bench_plot_model(res, n_res, title, plot, msg, sizeof msg)) {
      fprintf(stderr, "heed bench model --plot: %s\n", msg);
      goto done;
    }
    printf("wrote %s\n", plot);
    plot = NULL; /* kept */
  }
  if (old) {
    int reg = heed_bench_compare(old, n_old, res, n_res, threshold, stdout, msg, sizeof msg);
    if (reg < 0) fprintf(stderr, "heed bench model --compare %s: %s\n", compare, msg);
    if (reg != 0) goto done;
  }
  rc = 0;
done:
  if (jf) fclose(jf), remove(json);
  if (plot && rc) remove(plot);
  free(old);
  free(logits), free(toks);
  heed_bench_destroy(bench);
  heed_runtime_close(rt);
  return rc;
}
