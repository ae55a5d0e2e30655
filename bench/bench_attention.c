/* bench/bench_attention.c - `heed bench attention`: heed's decode and prefill
 * beside the same-run read-bandwidth / FMA-peak probes, and the unfused
 * baseline a user would write (sgemm QK^T, softmax, sgemm PV on f32 K/V) in
 * the same process: oneDNN on the CPU, CLBlast on an OpenCL device. Each
 * baseline is checked once against heed's output before it is timed. Part of
 * the heed tool, not of libheed. */
#include <math.h>
#include <oneapi/dnnl/dnnl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench/bench_attention.h"
#include "heed/heed.h"
#ifdef HEED_HAVE_OPENCL
#include "bench/bench_unfused_cl.h"
#else
typedef struct heed_cl_unfused heed_cl_unfused;
#endif

/* the shape of this run (heed_bench_attention's argument) */
static heed_bench_shape S;
#define H_Q S.q_heads
#define H_KV S.kv_heads
#define G (H_Q / H_KV)
#define D S.head_dim
#define PREFIX 3584
#define NQ 512

typedef struct attn_bench {
  heed_runtime *rt;
  heed_attn_params p;
  /* decode: one f16 cache of the longest context; shorter ones are prefix views */
  heed_kv_cache *c;
  void *storage;
  const uint32_t *blocks;        /* sequence 0's (prefill) */
  const uint32_t *bblk[HEED_BENCH_MAX_BATCH]; /* each decode sequence's */
  unsigned ctx, batch;
  float *q, *out, *lse;
  void *ws;
  size_t ws_bytes;
  /* baseline: f32 K/V [H_KV][max_ctx][D]; its output; heed's prefill.f16 output to check it against */
  float *k32, *v32, *s, *bout, *ref;
  unsigned max_ctx;
  heed_cl_unfused *unf; /* the CLBlast baseline (opencl backend) */
  /* prefill */
  unsigned n_q, q_start;
  char shape_json[160]; /* the model's members of every case's shape object */
  /* where it runs: an ISA or "opencl", and the limits beside each case (the device's on a device backend) */
  const char *isa;
  heed_limit_kind lim_bw, lim_fl;
  /* the same cases on the portable reference (scalar) kernels: a second CPU
   * runtime on the same cache (its layout does not depend on the ISA) */
  heed_runtime *ref_rt;
  void *ref_ws;
  size_t ref_ws_bytes;
  float *ref_out;
} attn_bench;

/* A reference case is timed when one call of it takes at most this long. */
#define REF_BUDGET_MS 300.0

static uint64_t rng = 12345;
static float urand(void) {
  rng = rng * 6364136223846793005ull + 1442695040888963407ull;
  return (float)((rng >> 40) * 0x1p-24 * 2.0 - 1.0);
}

/* Fills a cache with n_seqs sequences of the same n random tokens (and
 * sequence 0's f32 copy for the baseline); their block tables into a. */
static int fill_cache(attn_bench *a, heed_dtype dt, unsigned n, unsigned n_seqs, heed_kv_cache **c, void **storage, float *k32,
                      float *v32, unsigned max_ctx) {
  heed_runtime *rt = a->rt;
  heed_kv_cache_config cfg = {.n_kv_heads = H_KV, .dk = D, .dv = D, .k_dtype = dt, .v_dtype = dt, .block_len = 0, .n_blocks = 1,
                              .max_seqs = n_seqs, .max_seq_len = n};
  unsigned bl = 0;
  size_t bytes = 0;
  heed_error e = {0};
  if (heed_kv_cache_bytes(rt, &cfg, &bytes, &bl) != HEED_OK) { /* the plan's block length */
    fprintf(stderr, "heed bench attention: cannot size the KV cache\n");
    return -1;
  }
  cfg.n_blocks = n_seqs * ((n + bl - 1) / bl);
  heed_kv_cache_bytes(rt, &cfg, &bytes, NULL);
  *storage = NULL; /* a device backend allocates the cache in its memory */
  int on_device = heed_runtime_backend(rt) == HEED_BACKEND_OPENCL;
  if ((!on_device && heed_mem_alloc(heed_runtime_topology(rt), bytes, 64, HEED_NUMA_INTERLEAVE, storage, &e) != HEED_OK) ||
      heed_kv_cache_create(rt, &cfg, *storage, on_device ? 0 : bytes, c, &e) != HEED_OK) {
    fprintf(stderr, "heed bench attention: %s\n", e.msg);
    return -1;
  }
  int seq[HEED_BENCH_MAX_BATCH];
  for (unsigned b = 0; b < n_seqs; b++) heed_kv_seq_new(*c, &seq[b]);
  const unsigned chunk = 1024;
  float *k = malloc((size_t)chunk * H_KV * D * 4), *v = malloc((size_t)chunk * H_KV * D * 4);
  for (unsigned t0 = 0; t0 < n; t0 += chunk) {
    unsigned m = n - t0 < chunk ? n - t0 : chunk;
    for (size_t i = 0; i < (size_t)m * H_KV * D; i++) k[i] = urand(), v[i] = urand();
    for (unsigned b = 0; b < n_seqs; b++)
      if (heed_kv_seq_append(*c, seq[b], m, k, v) != HEED_OK) {
        fprintf(stderr, "heed bench attention: filling the KV cache: %s\n", heed_kv_cache_last_error(*c));
        free(k), free(v);
        return -1;
      }
    if (k32)
      for (unsigned t = 0; t < m; t++)
        for (unsigned h = 0; h < H_KV; h++) {
          memcpy(k32 + ((size_t)h * max_ctx + t0 + t) * D, k + ((size_t)t * H_KV + h) * D, D * 4);
          memcpy(v32 + ((size_t)h * max_ctx + t0 + t) * D, v + ((size_t)t * H_KV + h) * D, D * 4);
        }
  }
  free(k);
  free(v);
  unsigned nb;
  heed_kv_seq_blocks(*c, seq[0], &a->blocks, &nb);
  for (unsigned b = 0; b < n_seqs; b++) heed_kv_seq_blocks(*c, seq[b], &a->bblk[b], &nb);
  return 0;
}

/* One decode call on heed's runtime, or (ref) on the reference one into ref_out. */
static heed_status decode_on(attn_bench *a, int ref) {
  heed_attn_decode_seq s[HEED_BENCH_MAX_BATCH];
  for (unsigned b = 0; b < a->batch; b++)
    s[b] = (heed_attn_decode_seq){.kv = {.seq = -1, .blocks = a->bblk[b], .n_tokens = a->ctx}, .n_q = 1};
  return ref ? heed_attn_decode(a->ref_rt, a->c, &a->p, s, a->batch, a->q, a->ref_out, NULL, a->ref_ws, a->ref_ws_bytes)
             : heed_attn_decode(a->rt, a->c, &a->p, s, a->batch, a->q, a->out, a->lse, a->ws, a->ws_bytes);
}
static heed_status decode_once(attn_bench *a) { return decode_on(a, 0); }
static void run_decode(void *ctx) { decode_on(ctx, 0); }
static void run_decode_ref(void *ctx) { decode_on(ctx, 1); }

/* softmax over each row of s [rows][n] (what a user writes around two sgemms) */
static void softmax_rows(float *s, unsigned rows, unsigned n, size_t lds) {
  for (unsigned r = 0; r < rows; r++) {
    float *x = s + r * lds, m = -INFINITY, sum = 0;
    for (unsigned j = 0; j < n; j++) m = x[j] > m ? x[j] : m;
    for (unsigned j = 0; j < n; j++) sum += (x[j] = expf(x[j] - m));
    float inv = 1.0f / sum;
    for (unsigned j = 0; j < n; j++) x[j] *= inv;
  }
}

/* the soft-cap, as heed applies it, on n scores */
static void softcap_scores(float *x, size_t n) {
  if (S.softcap > 0)
    for (size_t j = 0; j < n; j++) x[j] = S.softcap * tanhf(x[j] / S.softcap);
}

static void run_decode_onednn(void *ctx) {
  attn_bench *a = ctx;
  /* a sliding window: the last `window` keys only */
  const unsigned k0 = S.window && a->ctx > S.window ? a->ctx - S.window : 0, n = a->ctx - k0;
  for (unsigned b = 0; b < a->batch; b++) /* every sequence of the batch reads the one f32 copy */
    for (unsigned g = 0; g < H_KV; g++) {
      const float *K = a->k32 + ((size_t)g * a->max_ctx + k0) * D, *V = a->v32 + ((size_t)g * a->max_ctx + k0) * D;
      dnnl_sgemm('N', 'T', G, n, D, a->p.scale, a->q + g * G * D, D, K, D, 0.0f, a->s, n);
      softcap_scores(a->s, (size_t)G * n);
      softmax_rows(a->s, G, n, n);
      dnnl_sgemm('N', 'N', G, D, n, 1.0f, a->s, n, V, D, 0.0f, a->bout + g * G * D, D);
    }
}

/* One prefill call, on heed's runtime or (ref) the reference one. */
static heed_status prefill_on(attn_bench *a, int ref) {
  heed_attn_seq s = {.seq = -1, .blocks = a->blocks, .n_tokens = a->q_start + a->n_q};
  return heed_attn_prefill(ref ? a->ref_rt : a->rt, a->c, &a->p, s, a->q_start, a->n_q, a->q, ref ? a->ref_out : a->out,
                           NULL, ref ? a->ref_ws : a->ws, ref ? a->ref_ws_bytes : a->ws_bytes);
}
static heed_status prefill_once(attn_bench *a) { return prefill_on(a, 0); }
static void run_prefill(void *ctx) { prefill_on(ctx, 0); }
static void run_prefill_ref(void *ctx) { prefill_on(ctx, 1); }

/* ||got - want|| / ||want|| over n values, in double. */
static double rel_l2(const float *got, const float *want, size_t n) {
  double num = 0, den = 0;
  for (size_t i = 0; i < n; i++) {
    const double d = (double)got[i] - want[i];
    num += d * d, den += (double)want[i] * want[i];
  }
  return sqrt(num / den);
}

/* A case is timed only after one checked call: a failing call must not time as 0 ms. */
static int check(attn_bench *a, heed_status st, const char *what) {
  if (st == HEED_OK) return 0;
  fprintf(stderr, "heed bench attention: %s failed: %s (%s)\n", what, heed_kv_cache_last_error(a->c), heed_status_name(st));
  return -1;
}

static void run_prefill_onednn(void *ctx) {
  attn_bench *a = ctx;
  unsigned L = a->q_start + a->n_q;
  for (unsigned h = 0; h < H_Q; h++) {
    unsigned g = h / G;
    const float *K = a->k32 + (size_t)g * a->max_ctx * D, *V = a->v32 + (size_t)g * a->max_ctx * D;
    dnnl_sgemm('N', 'T', a->n_q, L, D, a->p.scale, a->q + h * D, H_Q * D, K, D, 0.0f, a->s, L);
    softcap_scores(a->s, (size_t)a->n_q * L);
    for (unsigned i = 0; i < a->n_q; i++) { /* causal mask and window, after the fact */
      const unsigned pos = a->q_start + i;
      for (unsigned j = pos + 1; j < L; j++) a->s[(size_t)i * L + j] = -INFINITY;
      if (S.window && pos + 1 > S.window)
        for (unsigned j = 0; j + S.window <= pos; j++) a->s[(size_t)i * L + j] = -INFINITY;
    }
    softmax_rows(a->s, a->n_q, L, L);
    dnnl_sgemm('N', 'N', a->n_q, D, L, 1.0f, a->s, L, V, D, 0.0f, a->bout + h * D, H_Q * D);
  }
}

#ifdef HEED_HAVE_OPENCL
static void run_clblast(void *ctx) {
  attn_bench *a = ctx;
  heed_cl_unfused_run(a->unf, a->q_start, a->n_q, a->p.scale, a->q, a->bout);
}
static void run_decode_clblast(void *ctx) {
  attn_bench *a = ctx;
  heed_cl_unfused_run(a->unf, a->ctx - 1, 1, a->p.scale, a->q, a->bout);
}
#else /* no OpenCL backend: dev is never true */
#define run_clblast run_prefill_onednn
#define run_decode_clblast run_decode_onednn
#endif

/* One baseline call, checked against heed's output on the same queries (f16
 * K/V against f32: a relative L2 difference of ~1e-3; a baseline that
 * computes something else, e.g. without the causal mask, is far off). */
static int baseline_checked(attn_bench *a, void (*run)(void *), const float *want, size_t n, const char *name) {
  for (size_t i = 0; i < n; i++) a->bout[i] = NAN;
  run(a);
  const double rel = rel_l2(a->bout, want, n);
  if (rel <= 2e-2) return 0;
  fprintf(stderr, "heed bench attention: %s: the baseline's output differs from heed's by %.3g (relative L2); not timed\n", name,
          rel);
  return -1;
}

static int add(heed_bench *b, const heed_bench_case *c, heed_bench_result *out, int cap, int *n) {
  if (*n >= cap) return 0;
  if (heed_bench_run_case(b, c, &out[*n]) != HEED_OK) {
    fprintf(stderr, "heed bench attention: %s\n", heed_bench_last_error(b));
    return -1;
  }
  (*n)++;
  return 0;
}

/* Case c (just run, its output in a->out) on the reference (scalar) kernels,
 * named c's name + ".reference": when one call would fit REF_BUDGET_MS, it is
 * checked against c's output, then timed; else a note says what it would take. */
static int reference_case(attn_bench *a, heed_bench *b, const heed_bench_case *c, int prefill, heed_bench_result *out, int cap,
                          int *n) {
  if (!a->ref_rt) return 0;
  const size_t m = (size_t)(prefill ? a->n_q : a->batch) * H_Q * D;
  char name[80];
  snprintf(name, sizeof name, "%s.reference", c->name);
  /* First the cost of one call, from a small piece of it (the last 16
   * queries of prefill; decode over the first 1024 tokens), run twice. */
  const unsigned keep_ctx = a->ctx, keep_start = a->q_start, keep_nq = a->n_q;
  double scale = 1, est = 0;
  if (prefill && a->n_q > 16)
    scale = a->n_q / 16.0, a->q_start += a->n_q - 16, a->n_q = 16;
  else if (!prefill) { /* a whole number of blocks: a quantized view holds full blocks only */
    const unsigned bl = heed_kv_cache_get_config(a->c)->block_len, small = 1024 / bl ? 1024 / bl * bl : bl;
    if (a->ctx > small) scale = (double)a->ctx / small, a->ctx = small;
  }
  for (int k = 0; k < 2; k++) {
    double t0 = heed_bench_now_ms();
    heed_status st = prefill ? prefill_on(a, 1) : decode_on(a, 1);
    est = (heed_bench_now_ms() - t0) * scale;
    if (check(a, st, name)) return -1;
  }
  a->ctx = keep_ctx, a->q_start = keep_start, a->n_q = keep_nq;
  if (est > REF_BUDGET_MS) {
    fprintf(stderr, "heed bench attention: %s not timed: one call of the reference (scalar) kernels would take about %.0f ms"
            " (budget %.0f)\n", name, est, REF_BUDGET_MS);
    return 0;
  }
  for (size_t i = 0; i < m; i++) a->ref_out[i] = NAN;
  if (check(a, prefill ? prefill_on(a, 1) : decode_on(a, 1), name)) return -1;
  /* the same cache and queries, f32 accumulation in another order: ~1e-6 */
  const double rel = rel_l2(a->ref_out, a->out, m);
  if (!(rel <= 1e-3)) {
    fprintf(stderr, "heed bench attention: %s: the reference kernel's output differs from %s's by %.3g (relative L2)\n", name,
            a->isa, rel);
    return -1;
  }
  heed_bench_case r = *c;
  r.name = name;
  r.isa = "scalar";
  r.run = prefill ? run_prefill_ref : run_decode_ref;
  return add(b, &r, out, cap, n);
}

/* Decode at each context and prefill through a cache of format dt (K and V),
 * named "<f16 case>.<format>"; bytes are the codes and scales read. */
static int quant_cases(attn_bench *a, heed_bench *b, heed_dtype dt, const unsigned *ctxs, int n_ctx, double flops,
                       heed_bench_result *out, int cap, int *n_out) {
  heed_kv_cache *keep = a->c;
  void *keep_st = a->storage;
  const uint32_t *keep_blocks = a->blocks, *keep_b[HEED_BENCH_MAX_BATCH];
  memcpy(keep_b, a->bblk, sizeof keep_b);
  heed_kv_cache *c2 = NULL;
  void *st2 = NULL;
  const char *fmt = heed_dtype_name(dt), *isa = a->isa;
  fprintf(stderr, "heed bench attention: filling %u x %u tokens of %s KV cache\n", a->batch, a->max_ctx, fmt);
  if (fill_cache(a, dt, a->max_ctx, a->batch, &c2, &st2, NULL, NULL, 0)) return -1;
  a->c = c2;
  const heed_kv_cache_config *cfg = heed_kv_cache_get_config(c2);
  double per_token = (double)heed_kv_cache_block_bytes(c2) / cfg->block_len;
  char shape[256], name[64];
  int rc = 0;
  for (int i = 0; i < n_ctx && !rc; i++) {
    a->ctx = ctxs[i];
    if (a->ctx % cfg->block_len) { /* a view of a quantized cache holds full blocks only */
      fprintf(stderr, "heed bench attention: decode.ctx%u.%s skipped: not a multiple of the block length %u\n", a->ctx, fmt,
              cfg->block_len);
      continue;
    }
    snprintf(shape, sizeof shape, "{%s,\"batch\":%u,\"n_q\":1,\"ctx\":%u,\"k_group\":%u,\"v_group\":%u}", a->shape_json,
             a->batch, a->ctx, cfg->k_group, cfg->v_group);
    snprintf(name, sizeof name, "decode.ctx%u.%s", a->ctx, fmt);
    heed_bench_case c = {name, NULL, isa, fmt, shape, a->lim_bw, per_token * a->ctx * a->batch, run_decode, a};
    rc = check(a, decode_once(a), name);
    if (!rc) rc = add(b, &c, out, cap, n_out);
    if (!rc) rc = reference_case(a, b, &c, 0, out, cap, n_out);
  }
  if (!rc) {
    a->q_start = PREFIX;
    a->n_q = NQ;
    snprintf(shape, sizeof shape, "{%s,\"n_q\":%d,\"prefix\":%d,\"causal\":true}", a->shape_json, NQ, PREFIX);
    snprintf(name, sizeof name, "prefill.f16.%s", fmt);
    heed_bench_case c = {name, NULL, isa, fmt, shape, a->lim_fl, flops, run_prefill, a};
    rc = check(a, prefill_once(a), name);
    if (!rc) rc = add(b, &c, out, cap, n_out);
    if (!rc) rc = reference_case(a, b, &c, 1, out, cap, n_out);
  }
  a->c = keep;
  a->storage = keep_st;
  a->blocks = keep_blocks;
  memcpy(a->bblk, keep_b, sizeof keep_b);
  heed_kv_cache_destroy(c2);
  heed_mem_free(st2);
  return rc;
}

/* the bytes of a cache of n_seqs x n tokens of dt, as the runtime would size it */
static size_t cache_bytes(heed_runtime *rt, const heed_bench_shape *sh, heed_dtype dt, unsigned n, unsigned n_seqs) {
  heed_kv_cache_config cfg = {.n_kv_heads = sh->kv_heads, .dk = sh->head_dim, .dv = sh->head_dim, .k_dtype = dt, .v_dtype = dt,
                              .n_blocks = 1, .max_seqs = n_seqs, .max_seq_len = n};
  size_t bytes = 0;
  unsigned bl = 0;
  if (heed_kv_cache_bytes(rt, &cfg, &bytes, &bl) != HEED_OK || !bl) return 0;
  cfg.n_blocks = n_seqs * ((n + bl - 1) / bl);
  return heed_kv_cache_bytes(rt, &cfg, &bytes, NULL) == HEED_OK ? bytes : 0;
}

size_t heed_bench_attention_bytes(heed_runtime *rt, const heed_bench_shape *sh, const unsigned *ctxs, int n_ctx, unsigned batch,
                                  int baseline, const heed_dtype *kv, int n_kv) {
  unsigned max_ctx = PREFIX + NQ;
  for (int i = 0; i < n_ctx; i++) max_ctx = ctxs[i] > max_ctx ? ctxs[i] : max_ctx;
  size_t quant = 0; /* each format's cache lives while it runs beside the f16 one: the largest counts */
  for (int i = 0; i < n_kv; i++) {
    size_t b = cache_bytes(rt, sh, kv[i], max_ctx, batch);
    if (b > quant) quant = b;
  }
  const size_t row = (size_t)sh->kv_heads * sh->head_dim * 2; /* K and V elements of one token */
  size_t base = baseline ? (size_t)max_ctx * row * 4 + (size_t)NQ * max_ctx * 4 : 0; /* f32 K/V and the score matrix */
  return cache_bytes(rt, sh, HEED_DTYPE_F16, max_ctx, batch) + quant + base + (size_t)NQ * sh->q_heads * sh->head_dim * 4 * 4;
}

int heed_bench_attention(heed_runtime *rt, heed_bench *b, const heed_bench_shape *shape, const unsigned *ctxs, int n_ctx,
                         unsigned batch, int baseline, const heed_dtype *kv, int n_kv, heed_bench_result *out, int cap,
                         int *n_out) {
  attn_bench a;
  memset(&a, 0, sizeof a);
  S = *shape;
  a.rt = rt;
  a.batch = batch ? batch : 1;
  heed_bench_shape_json(&S, a.shape_json, sizeof a.shape_json);
  a.p = (heed_attn_params){.n_q_heads = H_Q, .n_kv_heads = H_KV, .dk = D, .dv = D, .scale = 1.0f / sqrtf((float)D),
                           .window = S.window, .softcap = S.softcap};
  *n_out = 0;
  const int dev = heed_runtime_backend(rt) == HEED_BACKEND_OPENCL;
  const char *base_name = dev ? "clblast" : "onednn";
  if (baseline && dev && (S.window || S.softcap > 0)) { /* the CLBlast twin computes full, uncapped attention */
    fprintf(stderr, "heed bench attention: no CLBlast baseline for %s (it has no sliding window or soft-cap)\n", S.name);
    baseline = 0;
  }
  unsigned max_ctx = PREFIX + NQ;
  for (int i = 0; i < n_ctx; i++) max_ctx = ctxs[i] > max_ctx ? ctxs[i] : max_ctx;
  a.max_ctx = max_ctx;
  if (baseline) {
    a.k32 = malloc((size_t)H_KV * max_ctx * D * 4);
    a.v32 = malloc((size_t)H_KV * max_ctx * D * 4);
    a.s = malloc((size_t)NQ * max_ctx * 4);
    a.bout = malloc((size_t)NQ * H_Q * D * 4);
    a.ref = malloc((size_t)NQ * H_Q * D * 4);
    if (!a.k32 || !a.v32 || !a.s || !a.bout || !a.ref) {
      fprintf(stderr, "heed bench attention: the %s baseline needs %.1f GiB of f32 K/V\n", base_name,
              2.0 * H_KV * max_ctx * D * 4 / (1 << 30));
      free(a.k32), free(a.v32), free(a.s), free(a.bout), free(a.ref);
      return -1;
    }
  }
  fprintf(stderr, "heed bench attention: filling %u x %u tokens of f16 KV cache (%s: %u/%u heads, d=%u)\n", a.batch, max_ctx,
          S.name, H_Q, H_KV, D);
  if (fill_cache(&a, HEED_DTYPE_F16, max_ctx, a.batch, &a.c, &a.storage, a.k32, a.v32, max_ctx)) return -1;
#ifdef HEED_HAVE_OPENCL
  if (baseline && dev && !(a.unf = heed_cl_unfused_open(rt, a.k32, a.v32, H_Q, H_KV, max_ctx, D, NQ))) return -1;
#endif
  const size_t nq_rows = NQ > a.batch ? NQ : a.batch;
  a.q = malloc(nq_rows * H_Q * D * 4);
  a.out = malloc(nq_rows * H_Q * D * 4);
  a.lse = malloc(nq_rows * H_Q * 4);
  for (size_t i = 0; i < nq_rows * H_Q * D; i++) a.q[i] = urand();
  heed_attn_decode_seq many[HEED_BENCH_MAX_BATCH];
  for (unsigned i = 0; i < a.batch; i++) many[i] = (heed_attn_decode_seq){.kv = {.seq = (int)i}, .n_q = 1};
  size_t wd = 0, wp = 0;
  heed_attn_decode_workspace(rt, &a.p, many, a.batch, &wd);
  heed_attn_prefill_workspace(rt, &a.p, NQ, &wp);
  a.ws_bytes = wd > wp ? wd : wp;
  a.ws = malloc(a.ws_bytes ? a.ws_bytes : 1);
  if (baseline && !dev && heed_runtime_isa(rt) != HEED_ISA_SCALAR) { /* the reference kernels, on as many threads */
    heed_runtime_options ro;
    heed_runtime_options_init(&ro);
    ro.backend = HEED_BACKEND_CPU;
    ro.isa = HEED_ISA_SCALAR;
    ro.n_threads = heed_runtime_n_threads(rt);
    ro.flags = HEED_RUNTIME_IGNORE_ENV | HEED_RUNTIME_NO_OPENCL;
    heed_error e = {0};
    if (heed_runtime_open(&ro, &a.ref_rt, &e) != HEED_OK) {
      fprintf(stderr, "heed bench attention: no reference (scalar) runtime: %s\n", e.msg);
      a.ref_rt = NULL;
    } else {
      heed_attn_decode_workspace(a.ref_rt, &a.p, many, a.batch, &wd);
      heed_attn_prefill_workspace(a.ref_rt, &a.p, NQ, &wp);
      a.ref_ws_bytes = wd > wp ? wd : wp;
      a.ref_ws = malloc(a.ref_ws_bytes ? a.ref_ws_bytes : 1);
      a.ref_out = malloc(nq_rows * H_Q * D * 4);
    }
  }
  /* On a device backend the limits are the device's, probed by its own kernels. */
  const char *isa = a.isa = dev ? "opencl" : heed_isa_name(heed_runtime_isa(rt));
  const heed_limit_kind lim_bw = a.lim_bw = dev ? HEED_LIMIT_DEVICE_READ_BANDWIDTH : HEED_LIMIT_READ_BANDWIDTH,
                        lim_fl = a.lim_fl = dev ? HEED_LIMIT_DEVICE_FMA_PEAK : HEED_LIMIT_FMA_PEAK;
  char shape_s[256];
  int rc = 0;
  for (int i = 0; i < n_ctx && !rc; i++) {
    a.ctx = ctxs[i];
    /* bytes of K and V read: the window's keys only */
    const unsigned seen = S.window && a.ctx > S.window ? S.window : a.ctx;
    double bytes = (double)a.batch * seen * H_KV * 2 * D * 2;
    snprintf(shape_s, sizeof shape_s, "{%s,\"batch\":%u,\"n_q\":1,\"ctx\":%u}", a.shape_json, a.batch, a.ctx);
    char name[64];
    snprintf(name, sizeof name, "decode.ctx%u", a.ctx);
    heed_bench_case c = {name, NULL, isa, "f16", shape_s, lim_bw, bytes, run_decode, &a};
    rc = check(&a, decode_once(&a), name);
    if (!rc) rc = add(b, &c, out, cap, n_out);
    if (!rc) rc = reference_case(&a, b, &c, 0, out, cap, n_out);
    if (baseline && !rc) {
      snprintf(name, sizeof name, "decode.ctx%u.%s", a.ctx, base_name);
      heed_bench_case cb = {name, base_name, base_name, "f32", shape_s, lim_bw, 2 * bytes, dev ? run_decode_clblast : run_decode_onednn,
                            &a};
      rc = baseline_checked(&a, cb.run, a.out, (size_t)H_Q * D, name);
      if (!rc) rc = add(b, &cb, out, cap, n_out);
    }
  }
  /* prefill: 512 queries after a 3584-token prefix, causal; flops of the pairs that are seen only */
  a.q_start = PREFIX;
  a.n_q = NQ;
  double pairs = 0;
  for (unsigned i = 0; i < NQ; i++) {
    const unsigned pos = PREFIX + i;
    pairs += S.window && pos + 1 > S.window ? S.window : pos + 1;
  }
  double flops = pairs * H_Q * (2.0 * D + 2.0 * D);
  snprintf(shape_s, sizeof shape_s, "{%s,\"n_q\":%d,\"prefix\":%d,\"causal\":true}", a.shape_json, NQ, PREFIX);
  for (int dt = HEED_DTYPE_F16; dt <= HEED_DTYPE_BF16 && !rc; dt++) {
    heed_kv_cache *keep = a.c;
    void *keep_st = a.storage;
    const uint32_t *keep_blocks = a.blocks, *keep_b[HEED_BENCH_MAX_BATCH];
    memcpy(keep_b, a.bblk, sizeof keep_b);
    heed_kv_cache *c2 = NULL;
    void *st2 = NULL;
    if (dt == HEED_DTYPE_BF16) {
      if (fill_cache(&a, HEED_DTYPE_BF16, PREFIX + NQ, 1, &c2, &st2, NULL, NULL, 0)) {
        rc = -1;
        break;
      }
      a.c = c2;
      a.storage = st2;
    }
    char name[64];
    snprintf(name, sizeof name, "prefill.%s", heed_dtype_name((heed_dtype)dt));
    heed_bench_case c = {name, NULL, isa, heed_dtype_name((heed_dtype)dt), shape_s, lim_fl, flops, run_prefill, &a};
    rc = check(&a, prefill_once(&a), name);
    if (!rc && dt == HEED_DTYPE_F16 && a.ref) memcpy(a.ref, a.out, (size_t)NQ * H_Q * D * sizeof(float));
    if (!rc) rc = add(b, &c, out, cap, n_out);
    if (!rc) rc = reference_case(&a, b, &c, 1, out, cap, n_out);
    a.c = keep;
    a.storage = keep_st;
    a.blocks = keep_blocks;
    memcpy(a.bblk, keep_b, sizeof keep_b);
    heed_kv_cache_destroy(c2);
    heed_mem_free(st2);
  }
  if (baseline && !rc) {
    char name[64];
    snprintf(name, sizeof name, "prefill.%s", base_name);
    heed_bench_case cb = {name, base_name, base_name, "f32", shape_s, lim_fl, flops, dev ? run_clblast : run_prefill_onednn, &a};
    rc = baseline_checked(&a, cb.run, a.ref, (size_t)NQ * H_Q * D, name);
    if (!rc) rc = add(b, &cb, out, cap, n_out);
  }
  for (int i = 0; i < n_kv && !rc; i++) rc = quant_cases(&a, b, kv[i], ctxs, n_ctx, flops, out, cap, n_out);
  if (!rc) heed_bench_attention_link(out, *n_out);
  heed_kv_cache_destroy(a.c);
  heed_mem_free(a.storage);
  heed_runtime_close(a.ref_rt);
  free(a.ref_ws), free(a.ref_out);
  free(a.q), free(a.out), free(a.lse), free(a.ws), free(a.k32), free(a.v32), free(a.s), free(a.bout), free(a.ref);
#ifdef HEED_HAVE_OPENCL
  heed_cl_unfused_close(a.unf);
#endif
  return rc;
}

static int ends_with(const char *s, const char *tail) {
  size_t n = strlen(s), m = strlen(tail);
  return n >= m && strcmp(s + n - m, tail) == 0;
}

static const heed_bench_result *find(const heed_bench_result *r, int n, const char *name) {
  for (int j = 0; j < n; j++)
    if (strcmp(r[j].name, name) == 0) return &r[j];
  return NULL;
}

static void versus(heed_bench_result *x, const char *kind, const heed_bench_result *other) {
  if (!other || x->n_versus >= HEED_BENCH_MAX_VERSUS || !(x->ms_median > 0)) return;
  heed_bench_versus *v = &x->versus[x->n_versus++];
  snprintf(v->kind, sizeof v->kind, "%s", kind);
  snprintf(v->name, sizeof v->name, "%s", other->name);
  v->speedup = other->ms_median / x->ms_median;
}

/* Links each heed case to its twins of the same run: the unfused baseline
 * (decode.ctxN[.fmt] -> decode.ctxN.onednn|clblast; prefill.* ->
 * prefill.onednn|clblast), the reference kernels (name + ".reference") and,
 * for a quantized format, its f16 twin (the name without ".fmt"). */
void heed_bench_attention_link(heed_bench_result *r, int n) {
  for (int i = 0; i < n; i++) {
    heed_bench_result *x = &r[i];
    x->n_versus = 0;
    if (strcmp(x->backend, "onednn") == 0 || strcmp(x->backend, "clblast") == 0 || ends_with(x->name, ".reference")) continue;
    const int prefill = strncmp(x->name, "prefill.", 8) == 0;
    if (!prefill && strncmp(x->name, "decode.", 7) != 0) continue;
    char twin[96], stem[64];
    /* decode.ctxN[.fmt]: the stem is decode.ctxN */
    snprintf(stem, sizeof stem, "%s", x->name);
    if (!prefill) {
      char *dot = strchr(stem + 7, '.');
      if (dot) *dot = 0;
    }
    for (int k = 0; k < 2; k++) {
      snprintf(twin, sizeof twin, "%s.%s", prefill ? "prefill" : stem, k ? "clblast" : "onednn");
      versus(x, "baseline", find(r, n, twin));
    }
    snprintf(twin, sizeof twin, "%s.reference", x->name);
    versus(x, "reference", find(r, n, twin));
    const char *dot = strrchr(x->name, '.');
    heed_dtype dt;
    if (dot && heed_dtype_parse(dot + 1, &dt) == 0 && heed_dtype_is_quant(dt)) {
      snprintf(twin, sizeof twin, "%.*s", (int)(dot - x->name), x->name);
      versus(x, "f16", find(r, n, twin));
    }
  }
}

/* Prints each heed case's versus entries (heed_bench_attention_link). */
void heed_bench_attention_speedups(const heed_bench_result *r, int n, FILE *f) {
  for (int i = 0; i < n; i++)
    for (int v = 0; v < r[i].n_versus; v++) {
      const heed_bench_versus *x = &r[i].versus[v];
      const heed_bench_result *o = find(r, n, x->name);
      if (!o) continue;
      if (strcmp(x->kind, "f16") == 0) {
        fprintf(f, "%-22s %5.2fx the f16 time (%.3f ms vs %.3f ms, medians, same run)\n", r[i].name, 1 / x->speedup,
                r[i].ms_median, o->ms_median);
        continue;
      }
      const double s = x->speedup; /* > 1: heed is faster */
      char what[48];
      if (strcmp(x->kind, "reference") == 0)
        snprintf(what, sizeof what, "the reference (scalar) kernels");
      else
        snprintf(what, sizeof what, "the unfused %s baseline", strcmp(o->backend, "clblast") == 0 ? "CLBlast" : "oneDNN");
      fprintf(f, "%-22s %5.2fx %s than %s (%.3f ms vs %.3f ms, medians)\n", r[i].name, s >= 1 ? s : 1 / s,
              s >= 1 ? "faster" : "slower", what, r[i].ms_median, o->ms_median);
    }
}
