/* Prefill and decode, every ISA this machine runs, against an fp64 oracle
 * that reads the same stored (rounded) K/V: what is left is the kernels' f32
 * arithmetic, so the bounds are tight enough to catch a wrong mask, a
 * dropped tile or a mis-merged split. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "heed/attention.h"
#include "heed/quant.h"
#include "test_util.h"

#define MAXLEN 320

/* ---------- fixture: a runtime on one ISA, a cache, mirrored K/V ---------- */

typedef struct fx {
  heed_runtime *rt;
  heed_kv_cache *c;
  void *storage;
  heed_kv_cache_config cfg;
  float *K[4], *V[4];   /* per sequence: [MAXLEN][n_kv][dk] as stored */
  uint64_t rng;
} fx;

/* What a fixture runs on: one of the CPU ISAs, or the OpenCL backend on the
 * first OpenCL device (PoCL in CI), where the cache lives in device memory. */
#define TARGET_OPENCL (-2)
static const int targets[] = {HEED_ISA_SCALAR, HEED_ISA_AVX2, HEED_ISA_AVX512, HEED_ISA_NEON, TARGET_OPENCL};
#define N_TARGETS 5

static const char *fx_name(const fx *f) {
  return heed_runtime_backend(f->rt) == HEED_BACKEND_OPENCL ? "opencl" : heed_isa_name(heed_runtime_isa(f->rt));
}

/* 0: the target is not here (this ISA does not run, or no OpenCL device). */
/* The tight oracle tests run the f32 kernels: a runtime with avx512_vnni
 * scores q8 K from an int8 query (runtime/backend.h), which they would see as
 * error; fx_vnni = 1 keeps the feature for the tests of that path. */
static int fx_vnni = 0;

static int fx_open2(fx *f, int target, heed_dtype kt, heed_dtype vt, unsigned n_kv, unsigned dk, unsigned dv, unsigned bl) {
  memset(f, 0, sizeof *f);
  heed_runtime_options o;
  heed_runtime_options_init(&o);
  o.flags = HEED_RUNTIME_IGNORE_ENV | HEED_RUNTIME_NO_OPENCL;
  o.cpu_features_given = 1;
  o.cpu_features = heed_cpu_features_detect() & (fx_vnni ? ~(heed_cpu_features)0 : ~HEED_CPU_FLAG(AVX512_VNNI));
  if (target == TARGET_OPENCL) {
    if (!heed_backend_built(HEED_BACKEND_OPENCL)) return 0;
    o.flags = HEED_RUNTIME_IGNORE_ENV;
    o.backend = HEED_BACKEND_OPENCL;
  } else {
    if (!heed_kernels_compiled((heed_isa)target) || !heed_isa_runs_on((heed_isa)target, heed_cpu_features_detect())) return 0;
    o.isa = target;
  }
  heed_error e = {0};
  heed_status st = heed_runtime_open(&o, &f->rt, &e);
  if (target == TARGET_OPENCL && st == HEED_E_NOT_FOUND) return 0; /* no OpenCL device: test_opencl says whether that is right */
  cr_assert_eq(st, HEED_OK, "%s", e.msg);
  f->cfg = (heed_kv_cache_config){.n_kv_heads = n_kv, .dk = dk, .dv = dv, .k_dtype = kt, .v_dtype = vt, .block_len = bl,
                                  .n_blocks = 4 * ((MAXLEN + bl - 1) / bl) + 4, .max_seqs = 4, .max_seq_len = MAXLEN};
  size_t bytes;
  cr_assert_eq(heed_kv_cache_bytes(f->rt, &f->cfg, &bytes, NULL), HEED_OK);
  f->storage = target == TARGET_OPENCL ? NULL : aligned_alloc(64, bytes);
  cr_assert_eq(heed_kv_cache_create(f->rt, &f->cfg, f->storage, f->storage ? bytes : 0, &f->c, &e), HEED_OK, "%s", e.msg);
  for (int s = 0; s < 4; s++) {
    f->K[s] = calloc((size_t)MAXLEN * n_kv * dk, sizeof(float));
    f->V[s] = calloc((size_t)MAXLEN * n_kv * dv, sizeof(float));
  }
  f->rng = 0x5eed + (unsigned)(target + 2) * 131 + kt * 17 + vt * 5 + dk;
  return 1;
}

static int fx_open(fx *f, int isa, heed_dtype dt, unsigned n_kv, unsigned dk, unsigned dv, unsigned bl) {
  return fx_open2(f, isa, dt, dt, n_kv, dk, dv, bl);
}

static void fx_close(fx *f) {
  heed_kv_cache_destroy(f->c);
  free(f->storage);
  for (int s = 0; s < 4; s++) free(f->K[s]), free(f->V[s]);
  heed_runtime_close(f->rt);
}

static float rounded(heed_dtype dt, float x) {
  if (dt == HEED_DTYPE_F16) return heed_f16_to_f32(heed_f32_to_f16(x));
  if (dt == HEED_DTYPE_BF16) return heed_bf16_to_f32(heed_f32_to_bf16(x));
  return x;
}

/* A quantized side is held in f16 until its block fills. */
static heed_dtype res_type(heed_dtype t) { return heed_dtype_is_quant(t) ? HEED_DTYPE_F16 : t; }

/* heed/quant.h's reference quantize-then-dequantize of x[i * stride], i < n,
 * in groups of `group` (fp8: one scale for all n). */
static void ref_roundtrip(heed_dtype t, float *x, size_t stride, size_t n, unsigned group) {
  float *v = malloc(n * 4), s;
  uint8_t *codes = malloc(n);
  heed_f16 sc[512], mn[512];
  for (size_t i = 0; i < n; i++) v[i] = x[i * stride];
  if (t == HEED_DTYPE_Q8) {
    cr_assert_eq(heed_q8_quantize(v, n, group, (int8_t *)codes, sc, NULL), HEED_OK);
    heed_q8_dequantize((int8_t *)codes, sc, n, group, v);
  } else if (t == HEED_DTYPE_Q4) {
    cr_assert_eq(heed_q4_quantize_fit(v, n, group, codes, sc, mn, NULL), HEED_OK);
    heed_q4_dequantize(codes, sc, mn, n, group, v);
  } else {
    int e5 = t == HEED_DTYPE_E5M2;
    cr_assert_eq(heed_fp8_quantize(e5, v, n, codes, &s, NULL), HEED_OK);
    heed_fp8_dequantize(e5, codes, n, s, v);
  }
  for (size_t i = 0; i < n; i++) x[i * stride] = v[i];
  free(v), free(codes);
}

/* fp8: one scale over `rows` rows of d values, row_stride apart. */
static void fp8_roundtrip_rows(heed_dtype t, float *x0, size_t row_stride, size_t d, size_t rows) {
  float *x = malloc(rows * d * 4);
  for (size_t r = 0; r < rows; r++) memcpy(x + r * d, x0 + r * row_stride, d * 4);
  ref_roundtrip(t, x, 1, rows * d, 0);
  for (size_t r = 0; r < rows; r++) memcpy(x0 + r * row_stride, x + r * d, d * 4);
  free(x);
}

/* Block b of mirror m fills: what the cache stores for a quantized side, from
 * the residual's values, by the reference quantizers: K per channel over
 * k_group tokens, V per token over v_group channels, fp8 per (block, head);
 * row 0 stays as the residual held it (the block's lead row). */
static void fx_seal(fx *f, int m, unsigned b) {
  const heed_kv_cache_config *g = heed_kv_cache_get_config(f->c);
  size_t H = g->n_kv_heads, dk = g->dk, dv = g->dv, bl = g->block_len, t0 = b * bl;
  for (size_t h = 0; h < H; h++) {
    float *K = f->K[m] + (t0 * H + h) * dk, *V = f->V[m] + (t0 * H + h) * dv;
    float k0[HEED_HEAD_DIM_MAX], v0[HEED_HEAD_DIM_MAX];
    memcpy(k0, K, dk * sizeof(float));
    memcpy(v0, V, dv * sizeof(float));
    if (g->k_dtype == HEED_DTYPE_Q8 || g->k_dtype == HEED_DTYPE_Q4) {
      for (size_t tg = 0; tg < bl; tg += g->k_group)
        for (size_t d = 0; d < dk; d++) ref_roundtrip(g->k_dtype, K + tg * H * dk + d, H * dk, g->k_group, g->k_group);
    } else if (heed_dtype_is_quant(g->k_dtype)) {
      fp8_roundtrip_rows(g->k_dtype, K, H * dk, dk, bl);
    }
    if (g->v_dtype == HEED_DTYPE_Q8 || g->v_dtype == HEED_DTYPE_Q4) {
      for (size_t t = 0; t < bl; t++) ref_roundtrip(g->v_dtype, V + t * H * dv, 1, dv, g->v_group);
    } else if (heed_dtype_is_quant(g->v_dtype)) {
      fp8_roundtrip_rows(g->v_dtype, V, H * dv, dv, bl);
    }
    if (heed_dtype_is_quant(g->k_dtype)) memcpy(K, k0, dk * sizeof(float));
    if (heed_dtype_is_quant(g->v_dtype)) memcpy(V, v0, dv * sizeof(float));
  }
}

static int fx_quant(const fx *f) { return heed_dtype_is_quant(f->cfg.k_dtype) || heed_dtype_is_quant(f->cfg.v_dtype); }

/* Mirror m after truncating to len: a full block cut into goes back to the
 * residual, its kept tokens rounded to the residual's types. */
static void fx_truncate(fx *f, int seq, int m, unsigned len) {
  unsigned bl = heed_kv_cache_get_config(f->c)->block_len, H = f->cfg.n_kv_heads, dk = f->cfg.dk, dv = f->cfg.dv;
  long old = heed_kv_seq_len(f->c, seq);
  cr_assert_eq(heed_kv_seq_truncate(f->c, seq, len), HEED_OK);
  if (!fx_quant(f) || len % bl == 0 || len >= old / bl * bl) return;
  for (size_t i = (size_t)len / bl * bl * H * dk; i < (size_t)len * H * dk; i++) f->K[m][i] = rounded(res_type(f->cfg.k_dtype), f->K[m][i]);
  for (size_t i = (size_t)len / bl * bl * H * dv; i < (size_t)len * H * dv; i++) f->V[m][i] = rounded(res_type(f->cfg.v_dtype), f->V[m][i]);
}

/* Appends n random tokens to seq (mirror slot m), keys scaled by kscale. */
static void fx_append(fx *f, int seq, int m, unsigned n, float kscale) {
  long len = heed_kv_seq_len(f->c, seq);
  unsigned H = f->cfg.n_kv_heads, dk = f->cfg.dk, dv = f->cfg.dv;
  float *k = malloc((size_t)n * H * dk * 4), *v = malloc((size_t)n * H * dv * 4);
  for (size_t i = 0; i < (size_t)n * H * dk; i++) k[i] = tu_uniform(&f->rng) * kscale;
  for (size_t i = 0; i < (size_t)n * H * dv; i++) v[i] = tu_uniform(&f->rng);
  cr_assert_eq(heed_kv_seq_append(f->c, seq, n, k, v), HEED_OK, "%s", heed_kv_cache_last_error(f->c));
  heed_dtype kt = fx_quant(f) ? res_type(f->cfg.k_dtype) : f->cfg.k_dtype, vt = fx_quant(f) ? res_type(f->cfg.v_dtype) : f->cfg.v_dtype;
  for (size_t i = 0; i < (size_t)n * H * dk; i++) f->K[m][(size_t)len * H * dk + i] = rounded(kt, k[i]);
  for (size_t i = 0; i < (size_t)n * H * dv; i++) f->V[m][(size_t)len * H * dv + i] = rounded(vt, v[i]);
  unsigned bl = heed_kv_cache_get_config(f->c)->block_len;
  if (fx_quant(f))
    for (unsigned b = (unsigned)len / bl; (b + 1) * bl <= len + n; b++) fx_seal(f, m, b);
  free(k);
  free(v);
}

/* Sequence 0 with n tokens in mirror 0. */
static void fx_seq0(fx *f, unsigned n, float kscale) {
  int s;
  cr_assert_eq(heed_kv_seq_new(f->c, &s), HEED_OK);
  cr_assert_eq(s, 0);
  fx_append(f, 0, 0, n, kscale);
}

static float *rand_q(uint64_t *s, size_t n, float scale) {
  float *q = malloc(n * sizeof(float));
  for (size_t i = 0; i < n; i++) q[i] = tu_uniform(s) * scale;
  return q;
}

/* ---------- the oracle ---------- */

/* Queries i = 0..n_q-1 at positions pos0+i over keys 0..L-1 of mirror m. */
static void oracle(const fx *f, int m, const heed_attn_params *p, unsigned L, unsigned pos0, unsigned n_q, const float *q,
                   const uint8_t *tree, unsigned tree_base, double *out, double *lse) {
  unsigned H = p->n_q_heads, G = H / p->n_kv_heads, dk = p->dk, dv = p->dv, KH = p->n_kv_heads;
  double *sc = malloc(L * sizeof(double));
  for (unsigned i = 0; i < n_q; i++)
    for (unsigned h = 0; h < H; h++) {
      unsigned g = h / G, pos = pos0 + i;
      double mx = -INFINITY;
      for (unsigned k = 0; k < L; k++) {
        int vis = k <= pos && (!p->window || pos - k < p->window) &&
                  (!tree || k < tree_base || tree[(size_t)i * n_q + (k - tree_base)]);
        if (!vis) {
          sc[k] = -INFINITY;
          continue;
        }
        double s = 0;
        for (unsigned d = 0; d < dk; d++) s += (double)q[((size_t)i * H + h) * dk + d] * f->K[m][((size_t)k * KH + g) * dk + d];
        s *= p->scale;
        if (p->softcap > 0) s = p->softcap * tanh(s / p->softcap);
        sc[k] = s;
        mx = s > mx ? s : mx;
      }
      if (p->sinks && p->sinks[h] > mx) mx = p->sinks[h];
      double *o = out + ((size_t)i * H + h) * dv, sum = 0;
      memset(o, 0, dv * sizeof(double));
      if (mx != -INFINITY) {
        for (unsigned k = 0; k < L; k++) {
          if (sc[k] == -INFINITY) continue;
          double w = exp(sc[k] - mx);
          sum += w;
          for (unsigned d = 0; d < dv; d++) o[d] += w * f->V[m][((size_t)k * KH + g) * dv + d];
        }
        if (p->sinks) sum += exp(p->sinks[h] - mx);
      }
      for (unsigned d = 0; d < dv; d++) o[d] = sum > 0 ? o[d] / sum : 0;
      lse[(size_t)i * H + h] = sum > 0 ? mx + log(sum) : -INFINITY;
    }
  free(sc);
}

typedef struct err_stats {
  double max_abs, nmse, max_lse;
} err_stats;

static err_stats compare(const float *got, const double *want, size_t n, const float *lse, const double *wl, size_t nl) {
  err_stats e = {0};
  double num = 0, den = 1e-30;
  for (size_t i = 0; i < n; i++) {
    double d = fabs(got[i] - want[i]);
    cr_assert(isfinite(got[i]), "output %zu is %g", i, got[i]);
    e.max_abs = d > e.max_abs ? d : e.max_abs;
    num += d * d;
    den += want[i] * want[i];
  }
  e.nmse = num / den;
  for (size_t i = 0; lse && i < nl; i++) {
    if (wl[i] == -INFINITY) {
      cr_assert_eq(lse[i], -INFINITY, "lse %zu should be -inf, is %g", i, lse[i]);
      continue;
    }
    /* relative to the score's size: f32 holds a score of 3000 to about 2e-4 */
    double d = fabs(lse[i] - wl[i]) / (1.0 + fabs(wl[i]) * 0.04);
    e.max_lse = d > e.max_lse ? d : e.max_lse;
  }
  return e;
}

#define TOL_ABS 2e-5
#define TOL_NMSE 1e-9


/* Prefill the whole of mirror 0 (L tokens, already appended) and check it. */
static void check_prefill(fx *f, const heed_attn_params *p, unsigned L, float qscale, double tol, const char *what) {
  unsigned H = p->n_q_heads;
  float *q = rand_q(&f->rng, (size_t)L * H * p->dk, qscale);
  float *out = malloc((size_t)L * H * p->dv * 4), *lse = malloc((size_t)L * H * 4);
  double *want = malloc((size_t)L * H * p->dv * 8), *wl = malloc((size_t)L * H * 8);
  size_t wsb;
  cr_assert_eq(heed_attn_prefill_workspace(f->rt, p, L, &wsb), HEED_OK);
  void *ws = malloc(wsb);
  heed_attn_seq s = {.seq = 0};
  heed_status st = heed_attn_prefill(f->rt, f->c, p, s, 0, L, q, out, lse, ws, wsb);
  cr_assert_eq(st, HEED_OK, "%s: %s", what, heed_runtime_last_error(f->rt));
  oracle(f, 0, p, L, 0, L, q, NULL, 0, want, wl);
  err_stats e = compare(out, want, (size_t)L * H * p->dv, lse, wl, (size_t)L * H);
  cr_assert(e.max_abs <= tol && e.nmse <= TOL_NMSE && e.max_lse <= 1e-4, "%s [%s K %s V %s]: max abs %.3g nmse %.3g lse %.3g",
            what, fx_name(f), heed_dtype_name(f->cfg.k_dtype), heed_dtype_name(f->cfg.v_dtype),
            e.max_abs, e.nmse, e.max_lse);
  free(q), free(out), free(lse), free(want), free(wl), free(ws);
}

static heed_attn_params params(unsigned H, unsigned KH, unsigned dk, unsigned dv) {
  return (heed_attn_params){.n_q_heads = H, .n_kv_heads = KH, .dk = dk, .dv = dv, .scale = 1.0f / sqrtf((float)dk)};
}

/* ---------- prefill ---------- */

Test(attention, every_head_dim_and_dtype) {
  static const unsigned dims[][2] = {{64, 64}, {80, 80}, {96, 96}, {112, 112}, {128, 128}, {256, 256}, {192, 128}};
  for (size_t ii = 0; ii < N_TARGETS; ii++)
    for (int dt = 0; dt < HEED_DTYPE_COUNT; dt++)
      for (size_t di = 0; di < 7; di++) {
        fx f;
        if (!fx_open(&f, targets[ii], (heed_dtype)dt, 2, dims[di][0], dims[di][1], 16)) continue;
        fx_seq0(&f, 37, 1.0f);
        heed_attn_params p = params(4, 2, dims[di][0], dims[di][1]);
        char what[64];
        snprintf(what, sizeof what, "dk %u dv %u", dims[di][0], dims[di][1]);
        check_prefill(&f, &p, 37, 1.0f, TOL_ABS, what);
        fx_close(&f);
      }
}

Test(attention, k_and_v_types_chosen_independently) {
  static const unsigned dims[][2] = {{64, 64}, {128, 128}, {192, 128}};
  for (size_t ii = 0; ii < N_TARGETS; ii++)
    for (int kt = 0; kt < HEED_DTYPE_COUNT; kt++)
      for (int vt = 0; vt < HEED_DTYPE_COUNT; vt++)
        for (size_t di = 0; di < 3; di++) {
          fx f;
          if (!fx_open2(&f, targets[ii], (heed_dtype)kt, (heed_dtype)vt, 2, dims[di][0], dims[di][1], 16)) continue;
          fx_seq0(&f, 41, 1.0f);
          heed_attn_params p = params(4, 2, dims[di][0], dims[di][1]);
          check_prefill(&f, &p, 41, 1.0f, TOL_ABS, "mixed K/V types");
          fx_close(&f);
        }
}

Test(attention, lengths_around_the_tile) {
  static const unsigned lens[] = {1, 15, 16, 17, 31, 33, 100};
  for (size_t ii = 0; ii < N_TARGETS; ii++)
    for (size_t li = 0; li < 7; li++) {
      fx f;
      if (!fx_open(&f, targets[ii], HEED_DTYPE_F16, 2, 128, 128, 16)) continue;
      fx_seq0(&f, lens[li], 1.0f);
      heed_attn_params p = params(8, 2, 128, 128);
      char what[32];
      snprintf(what, sizeof what, "L=%u", lens[li]);
      check_prefill(&f, &p, lens[li], 1.0f, TOL_ABS, what);
      fx_close(&f);
    }
}

Test(attention, gqa_ratios_windows_softcap_sinks) {
  for (size_t ii = 0; ii < N_TARGETS; ii++) {
    static const unsigned kvh[] = {8, 4, 2, 1};
    for (int gi = 0; gi < 4; gi++) {
      fx f;
      if (!fx_open(&f, targets[ii], HEED_DTYPE_BF16, kvh[gi], 64, 64, 32)) continue;
      fx_seq0(&f, 70, 1.0f);
      heed_attn_params p = params(8, kvh[gi], 64, 64);
      check_prefill(&f, &p, 70, 1.0f, TOL_ABS, "gqa");
      p.window = 1;
      check_prefill(&f, &p, 70, 1.0f, TOL_ABS, "window 1 (each query sees itself)");
      p.window = 5;
      check_prefill(&f, &p, 70, 1.0f, TOL_ABS, "window 5");
      p.window = 40;
      check_prefill(&f, &p, 70, 1.0f, TOL_ABS, "window 40");
      p.window = 0;
      p.softcap = 2.0f;
      check_prefill(&f, &p, 70, 4.0f, TOL_ABS, "softcap");
      p.softcap = 0;
      float sinks[8] = {-1, 0, 2, 5, -3, 1, 0.5f, 8};
      p.sinks = sinks;
      check_prefill(&f, &p, 70, 1.0f, TOL_ABS, "sinks");
      fx_close(&f);
    }
  }
}

Test(attention, extreme_logits) {
  for (size_t ii = 0; ii < N_TARGETS; ii++) {
    fx f;
    if (!fx_open(&f, targets[ii], HEED_DTYPE_F32, 2, 64, 64, 16)) continue;
    fx_seq0(&f, 50, 30.0f);
    heed_attn_params p = params(4, 2, 64, 64);
    p.scale = 1.0f;
    /* scores reach the thousands: one key takes almost all the weight, exp must not overflow */
    check_prefill(&f, &p, 50, 30.0f, 2e-3, "extreme logits");
    fx_close(&f);
  }
}

Test(attention, chunked_prefill_equals_one_shot) {
  for (size_t ii = 0; ii < N_TARGETS; ii++) {
    fx f;
    if (!fx_open(&f, targets[ii], HEED_DTYPE_F16, 2, 96, 96, 16)) continue;
    fx_seq0(&f, 90, 1.0f);
    heed_attn_params p = params(4, 2, 96, 96);
    p.window = 33;
    size_t n = (size_t)90 * 4, wsb;
    float *q = rand_q(&f.rng, n * 96, 1.0f), *one = malloc(n * 96 * 4), *chunk = malloc(n * 96 * 4);
    heed_attn_prefill_workspace(f.rt, &p, 90, &wsb);
    void *ws = malloc(wsb);
    heed_attn_seq s = {.seq = 0};
    cr_assert_eq(heed_attn_prefill(f.rt, f.c, &p, s, 0, 90, q, one, NULL, ws, wsb), HEED_OK);
    static const unsigned cuts[] = {0, 7, 40, 41, 90};
    for (int k = 0; k < 4; k++) {
      unsigned a = cuts[k], b = cuts[k + 1];
      cr_assert_eq(heed_attn_prefill(f.rt, f.c, &p, s, a, b - a, q + (size_t)a * 4 * 96, chunk + (size_t)a * 4 * 96, NULL, ws,
                                     wsb),
                   HEED_OK);
    }
    double worst = 0;
    for (size_t i = 0; i < n * 96; i++) { /* not fmax(): aarch64 gcc 12 crashes vectorizing that reduction */
      double d = fabs(one[i] - chunk[i]);
      if (d > worst) worst = d;
    }
    cr_assert_leq(worst, 1e-6, "%s: chunked differs by %g", fx_name(&f), worst);
    free(q), free(one), free(chunk), free(ws);
    fx_close(&f);
  }
}

/* ---------- decode ---------- */

typedef struct dcase {
  int seq;
  unsigned ctx, n_q;
  const uint8_t *tree;
} dcase;

static void check_decode(fx *f, const heed_attn_params *p, const dcase *cs, unsigned n, const char *what) {
  unsigned H = p->n_q_heads, rows = 0;
  heed_attn_decode_seq ds[4];
  for (unsigned i = 0; i < n; i++) {
    ds[i] = (heed_attn_decode_seq){.kv = {.seq = cs[i].seq}, .n_q = cs[i].n_q, .tree_mask = cs[i].tree};
    rows += cs[i].n_q;
  }
  float *q = rand_q(&f->rng, (size_t)rows * H * p->dk, 1.0f), *out = malloc((size_t)rows * H * p->dv * 4),
        *lse = malloc((size_t)rows * H * 4);
  size_t wsb;
  cr_assert_eq(heed_attn_decode_workspace(f->rt, p, ds, n, &wsb), HEED_OK);
  void *ws = malloc(wsb);
  cr_assert_eq(heed_attn_decode(f->rt, f->c, p, ds, n, q, out, lse, ws, wsb), HEED_OK, "%s: %s", what,
               heed_runtime_last_error(f->rt));
  unsigned r0 = 0;
  for (unsigned i = 0; i < n; i++) {
    unsigned L = cs[i].ctx + cs[i].n_q, nq = cs[i].n_q;
    double *want = malloc((size_t)nq * H * p->dv * 8), *wl = malloc((size_t)nq * H * 8);
    oracle(f, cs[i].seq, p, L, L - nq, nq, q + (size_t)r0 * H * p->dk, cs[i].tree, L - nq, want, wl);
    err_stats e = compare(out + (size_t)r0 * H * p->dv, want, (size_t)nq * H * p->dv, lse + (size_t)r0 * H, wl, (size_t)nq * H);
    cr_assert(e.max_abs <= TOL_ABS && e.nmse <= TOL_NMSE && e.max_lse <= 1e-4,
              "%s [%s K %s V %s] seq %u (ctx %u, n_q %u): max abs %.3g nmse %.3g lse %.3g", what,
              fx_name(f), heed_dtype_name(f->cfg.k_dtype), heed_dtype_name(f->cfg.v_dtype), i,
              cs[i].ctx, nq, e.max_abs, e.nmse, e.max_lse);
    free(want), free(wl);
    r0 += nq;
  }
  free(q), free(out), free(lse), free(ws);
}

Test(attention, decode_ragged_batch_split_kv) {
  for (size_t ii = 0; ii < N_TARGETS; ii++)
    for (int dt = 0; dt < HEED_DTYPE_COUNT; dt++) {
      fx f;
      if (!fx_open(&f, targets[ii], (heed_dtype)dt, 2, 128, 128, 16)) continue;
      static const unsigned ctx[] = {0, 17, 150, 299}, nq[] = {1, 3, 16, 1};
      dcase cs[4];
      for (int i = 0; i < 4; i++) {
        int s;
        cr_assert_eq(heed_kv_seq_new(f.c, &s), HEED_OK);
        fx_append(&f, s, s, ctx[i] + nq[i], 1.0f);
        cs[i] = (dcase){s, ctx[i], nq[i], NULL};
      }
      heed_attn_params p = params(8, 2, 128, 128);
      check_decode(&f, &p, cs, 4, "ragged batch");
      p.window = 20;
      float sinks[8] = {0, 1, 2, 3, -1, -2, 0.5f, 4};
      p.sinks = sinks;
      check_decode(&f, &p, cs, 4, "window + sinks");
      fx_close(&f);
    }
}

Test(attention, decode_tree_masks_and_fully_masked_rows) {
  /* A tree of 6 draft tokens: 0 <- 1 <- 3, 0 <- 2 <- 4, 2 <- 5 (parents precede children). */
  static const int parent[6] = {-1, 0, 0, 1, 2, 2};
  uint8_t tree[36] = {0}, empty[9] = {0};
  for (int i = 0; i < 6; i++)
    for (int a = i; a >= 0; a = parent[a]) tree[i * 6 + a] = 1;
  empty[1 * 3 + 0] = 1; /* rows 0 and 2 see nothing at all */
  for (size_t ii = 0; ii < N_TARGETS; ii++) {
    fx f;
    if (!fx_open(&f, targets[ii], HEED_DTYPE_F16, 1, 64, 64, 16)) continue;
    int a, b;
    heed_kv_seq_new(f.c, &a);
    heed_kv_seq_new(f.c, &b);
    fx_append(&f, a, a, 40 + 6, 1.0f);
    fx_append(&f, b, b, 3, 1.0f);
    dcase cs[2] = {{a, 40, 6, tree}, {b, 0, 3, empty}};
    heed_attn_params p = params(4, 1, 64, 64);
    check_decode(&f, &p, cs, 2, "tree");
    fx_close(&f);
  }
}

Test(attention, fork_cow_and_truncate_through_attention) {
  for (size_t ii = 0; ii < N_TARGETS; ii++) {
    fx f;
    if (!fx_open(&f, targets[ii], HEED_DTYPE_BF16, 2, 64, 64, 16)) continue;
    int a, b;
    heed_kv_seq_new(f.c, &a);
    fx_append(&f, a, 0, 25, 1.0f);
    cr_assert_eq(heed_kv_seq_fork(f.c, a, &b), HEED_OK);
    memcpy(f.K[1], f.K[0], (size_t)25 * 2 * 64 * 4);
    memcpy(f.V[1], f.V[0], (size_t)25 * 2 * 64 * 4);
    fx_append(&f, b, 1, 4, 1.0f);   /* b diverges inside the shared block */
    fx_append(&f, a, 0, 10, 1.0f);  /* 10 speculative tokens on a ... */
    fx_truncate(&f, a, 0, 27);      /* ... 8 rejected */
    fx_append(&f, a, 0, 3, 1.0f);   /* then 3 accepted ones overwrite them */
    heed_attn_params p = params(4, 2, 64, 64);
    dcase cs[2] = {{a, 26, 4, NULL}, {b, 28, 1, NULL}};
    check_decode(&f, &p, cs, 2, "fork/truncate");
    /* The same tokens through a block table the caller manages. */
    const uint32_t *blocks;
    unsigned nb;
    heed_kv_seq_blocks(f.c, a, &blocks, &nb);
    heed_attn_decode_seq ext = {.kv = {.seq = -1, .blocks = blocks, .n_tokens = 30}, .n_q = 4};
    heed_attn_decode_seq own = {.kv = {.seq = a}, .n_q = 4};
    float *q = rand_q(&f.rng, 4 * 4 * 64, 1.0f), o1[4 * 4 * 64], o2[4 * 4 * 64];
    size_t wsb;
    heed_attn_decode_workspace(f.rt, &p, &own, 1, &wsb);
    void *ws = malloc(wsb);
    cr_assert_eq(heed_attn_decode(f.rt, f.c, &p, &own, 1, q, o1, NULL, ws, wsb), HEED_OK);
    cr_assert_eq(heed_attn_decode(f.rt, f.c, &p, &ext, 1, q, o2, NULL, ws, wsb), HEED_OK);
    cr_assert_arr_eq(o1, o2, sizeof o1);
    free(q), free(ws);
    fx_close(&f);
  }
}

/* ---------- bad input: a status naming the value, output untouched ---------- */

Test(attention, bad_input_leaves_the_output_alone) {
  fx f;
  cr_assert(fx_open(&f, HEED_ISA_SCALAR, HEED_DTYPE_F32, 2, 64, 64, 16));
  fx_seq0(&f, 20, 1.0f);
  heed_attn_params p = params(4, 2, 64, 64);
  size_t wsb;
  heed_attn_prefill_workspace(f.rt, &p, 20, &wsb);
  char *ws = malloc(wsb + 4096);
  float *q = rand_q(&f.rng, 20 * 4 * 64, 1.0f), *out = malloc(20 * 4 * 64 * 4);
  for (int i = 0; i < 20 * 4 * 64; i++) out[i] = 42.0f;
  heed_attn_seq s = {.seq = 0};
#define EXPECT(call, status, needle)                                                                            \
  do {                                                                                                          \
    heed_status st_ = (call);                                                                                   \
    cr_assert_eq(st_, status, "got %s: %s", heed_status_name(st_), heed_runtime_last_error(f.rt));             \
    cr_assert(strstr(heed_runtime_last_error(f.rt), needle), "'%s' lacks '%s'", heed_runtime_last_error(f.rt), needle); \
    for (int i_ = 0; i_ < 20 * 4 * 64; i_++) cr_assert_eq(out[i_], 42.0f, "output written on error");       \
  } while (0)
  heed_attn_params bad = p;
  bad.n_q_heads = 5;
  EXPECT(heed_attn_prefill(f.rt, f.c, &bad, s, 0, 20, q, out, NULL, ws, wsb), HEED_E_INVALID, "n_q_heads=5 is not a multiple of n_kv_heads=2");
  bad = p;
  bad.dk = 72;
  EXPECT(heed_attn_prefill(f.rt, f.c, &bad, s, 0, 20, q, out, NULL, ws, wsb), HEED_E_INVALID, "dk=72");
  bad = p;
  bad.scale = NAN;
  EXPECT(heed_attn_prefill(f.rt, f.c, &bad, s, 0, 20, q, out, NULL, ws, wsb), HEED_E_INVALID, "scale=nan");
  EXPECT(heed_attn_prefill(f.rt, f.c, &p, s, 10, 11, q, out, NULL, ws, wsb), HEED_E_RANGE, "positions 10..20, but the sequence holds 20");
  EXPECT(heed_attn_prefill(f.rt, f.c, &p, s, 0, 20, q, out, NULL, ws, wsb - 1), HEED_E_TOO_SMALL, "workspace");
  EXPECT(heed_attn_prefill(f.rt, f.c, &p, s, 0, 20, q, (float *)q, NULL, ws, wsb), HEED_E_INVALID, "out");
  EXPECT(heed_attn_prefill(f.rt, f.c, &p, s, 0, 20, q, out, NULL, (char *)out + 64, wsb), HEED_E_INVALID, "overlaps workspace");
  EXPECT(heed_attn_prefill(f.rt, f.c, &p, s, 0, 20, q, out, out + 100, ws, wsb), HEED_E_INVALID, "overlaps lse");
  heed_attn_seq gone = {.seq = 3};
  EXPECT(heed_attn_prefill(f.rt, f.c, &p, gone, 0, 1, q, out, NULL, ws, wsb), HEED_E_INVALID, "sequence 3 does not exist");
  uint32_t table[2] = {0, 999};
  heed_attn_seq ext = {.seq = -1, .blocks = table, .n_tokens = 20};
  EXPECT(heed_attn_prefill(f.rt, f.c, &p, ext, 0, 20, q, out, NULL, ws, wsb), HEED_E_RANGE, "block table entry 1 is 999");
  /* decode */
  heed_attn_decode_seq d = {.kv = {.seq = 0}, .n_q = 21};
  size_t dwb;
  heed_attn_decode_seq d1 = {.kv = {.seq = 0}, .n_q = 16};
  heed_attn_decode_workspace(f.rt, &p, &d1, 1, &dwb);
  char *dws = malloc(dwb);
  EXPECT(heed_attn_decode(f.rt, f.c, &p, &d, 1, q, out, NULL, dws, dwb), HEED_E_INVALID, "n_q=21");
  heed_kv_seq_truncate(f.c, 0, 10);
  EXPECT(heed_attn_decode(f.rt, f.c, &p, &d1, 1, q, out, NULL, dws, dwb), HEED_E_RANGE, "16 queries but holds 10 tokens");
  /* The cache's storage is not an output. */
  EXPECT(heed_attn_prefill(f.rt, f.c, &p, s, 0, 10, q, (float *)f.storage, NULL, ws, wsb), HEED_E_INVALID, "KV cache storage");
  free(ws), free(dws), free(q), free(out);
  fx_close(&f);
}

/* The split count follows the worker count; the answer must not. */
Test(attention, decode_is_the_same_for_any_worker_count) {
  heed_isa isa = heed_kernels_compiled(HEED_ISA_AVX2) && heed_isa_runs_on(HEED_ISA_AVX2, heed_cpu_features_detect())
                     ? HEED_ISA_AVX2
                     : HEED_ISA_SCALAR;
  fx f;
  cr_assert(fx_open(&f, isa, HEED_DTYPE_F16, 2, 64, 64, 16));
  fx_seq0(&f, 300, 1.0f);
  heed_attn_params p = params(8, 2, 64, 64);
  heed_attn_decode_seq d = {.kv = {.seq = 0}, .n_q = 2};
  float *q = rand_q(&f.rng, 2 * 8 * 64, 1.0f), first[2 * 8 * 64];
  unsigned pus = heed_topology_get_summary(heed_runtime_topology(f.rt))->n_pus;
  for (unsigned w = 1; w <= pus && w <= 4; w++) {
    heed_runtime_options o;
    heed_runtime_options_init(&o);
    o.flags = HEED_RUNTIME_IGNORE_ENV | HEED_RUNTIME_NO_OPENCL;
    o.isa = (int)isa;
    o.n_threads = (int)w;
    heed_runtime *rt;
    cr_assert_eq(heed_runtime_open(&o, &rt, NULL), HEED_OK);
    size_t wsb;
    heed_attn_decode_workspace(rt, &p, &d, 1, &wsb);
    void *ws = malloc(wsb);
    float out[2 * 8 * 64];
    cr_assert_eq(heed_attn_decode(rt, f.c, &p, &d, 1, q, w == 1 ? first : out, NULL, ws, wsb), HEED_OK);
    if (w > 1)
      for (int i = 0; i < 2 * 8 * 64; i++)
        cr_assert_float_eq(out[i], first[i], 2e-6, "%u workers differ from 1 at %d: %g vs %g", w, i, out[i], first[i]);
    free(ws);
    heed_runtime_close(rt);
  }
  free(q);
  fx_close(&f);
}

/* ---------- quantized caches ---------- */

/* The SIMD level the CPU target runs here: AVX2, NEON, else scalar. */
static heed_isa simd_isa(void) {
  if (heed_kernels_compiled(HEED_ISA_AVX2) && heed_isa_runs_on(HEED_ISA_AVX2, heed_cpu_features_detect()))
    return HEED_ISA_AVX2;
  return heed_kernels_compiled(HEED_ISA_NEON) ? HEED_ISA_NEON : HEED_ISA_SCALAR;
}

/* Every token of mirror m is what heed_kv_seq_read returns, bit for bit: the
 * model (f16 residual, reference quantizers on each full block) is exact. */
static void check_read(fx *f, int seq, int m, const char *what) {
  unsigned L = (unsigned)heed_kv_seq_len(f->c, seq), H = f->cfg.n_kv_heads, dk = f->cfg.dk, dv = f->cfg.dv;
  float *k = malloc((size_t)L * H * dk * 4 + 4), *v = malloc((size_t)L * H * dv * 4 + 4);
  cr_assert_eq(heed_kv_seq_read(f->c, seq, 0, L, k, v), HEED_OK, "%s", heed_kv_cache_last_error(f->c));
  for (size_t i = 0; i < (size_t)L * H * dk; i++)
    cr_assert_eq(k[i], f->K[m][i], "%s [K %s]: K value %zu (token %zu) is %g, want %g", what, heed_dtype_name(f->cfg.k_dtype), i,
                 i / (H * dk), k[i], f->K[m][i]);
  for (size_t i = 0; i < (size_t)L * H * dv; i++)
    cr_assert_eq(v[i], f->V[m][i], "%s [V %s]: V value %zu (token %zu) is %g, want %g", what, heed_dtype_name(f->cfg.v_dtype), i,
                 i / (H * dv), v[i], f->V[m][i]);
  free(k), free(v);
}

Test(attention, quantized_blocks_residual_fork_truncate) {
  static const heed_dtype pairs[][2] = {{HEED_DTYPE_Q4, HEED_DTYPE_Q8}, {HEED_DTYPE_Q8, HEED_DTYPE_Q4},
                                        {HEED_DTYPE_E4M3, HEED_DTYPE_E5M2}, {HEED_DTYPE_F32, HEED_DTYPE_Q4},
                                        {HEED_DTYPE_Q4, HEED_DTYPE_BF16}};
  for (size_t ii = 0; ii < N_TARGETS; ii++)
    for (size_t pi = 0; pi < 5; pi++) {
      fx f;
      if (!fx_open2(&f, targets[ii], pairs[pi][0], pairs[pi][1], 2, 64, 96, 16)) continue;
      uint32_t total = heed_kv_cache_free_blocks(f.c);
      int a, b;
      const uint32_t *bt;
      unsigned nb;
      heed_kv_seq_new(f.c, &a);
      fx_append(&f, a, 0, 40, 1.0f); /* two full blocks, 8 tokens in the residual */
      heed_kv_seq_blocks(f.c, a, &bt, &nb);
      cr_assert_eq(nb, 2);
      cr_assert_eq(heed_kv_cache_free_blocks(f.c), total - 2);
      check_read(&f, a, 0, "append");
      /* fork: the full blocks are shared, the residual copied */
      cr_assert_eq(heed_kv_seq_fork(f.c, a, &b), HEED_OK);
      cr_assert_eq(heed_kv_block_refs(f.c, bt[0]), 2);
      cr_assert_eq(heed_kv_cache_free_blocks(f.c), total - 2);
      memcpy(f.K[1], f.K[0], (size_t)40 * 2 * 64 * 4);
      memcpy(f.V[1], f.V[0], (size_t)40 * 2 * 96 * 4);
      fx_append(&f, b, 1, 4, 1.0f);
      check_read(&f, a, 0, "parent after the child's append");
      check_read(&f, b, 1, "child");
      /* speculative tokens seal a block, are rejected into it, then refilled */
      fx_append(&f, a, 0, 10, 1.0f);
      cr_assert_eq(heed_kv_cache_free_blocks(f.c), total - 3);
      fx_truncate(&f, a, 0, 37);
      cr_assert_eq(heed_kv_cache_free_blocks(f.c), total - 2, "the cut block goes back to the pool");
      check_read(&f, a, 0, "truncated into a full block");
      fx_append(&f, a, 0, 3, 1.0f);
      check_read(&f, a, 0, "refilled residual");
      fx_append(&f, a, 0, 9, 1.0f); /* 49: the block is quantized again, once */
      check_read(&f, a, 0, "resealed");
      heed_attn_params p = params(4, 2, 64, 96);
      dcase cs[2] = {{a, 45, 4, NULL}, {b, 43, 1, NULL}};
      check_decode(&f, &p, cs, 2, "quantized fork/truncate");
      check_prefill(&f, &p, 49, 1.0f, TOL_ABS, "quantized prefill");
      /* a caller-managed table over a quantized cache: full blocks only */
      heed_kv_seq_blocks(f.c, a, &bt, &nb);
      heed_attn_decode_seq ext = {.kv = {.seq = -1, .blocks = bt, .n_tokens = 40}, .n_q = 1};
      size_t wsb;
      heed_attn_decode_workspace(f.rt, &p, &ext, 1, &wsb);
      void *ws = malloc(wsb);
      float q[4 * 64] = {0}, out[4 * 96];
      cr_assert_eq(heed_attn_decode(f.rt, f.c, &p, &ext, 1, q, out, NULL, ws, wsb), HEED_E_INVALID);
      cr_assert(strstr(heed_runtime_last_error(f.rt), "n_tokens=40"), "%s", heed_runtime_last_error(f.rt));
      ext.kv.n_tokens = 48;
      cr_assert_eq(heed_attn_decode(f.rt, f.c, &p, &ext, 1, q, out, NULL, ws, wsb), HEED_OK, "%s", heed_runtime_last_error(f.rt));
      free(ws);
      fx_close(&f);
    }
}

Test(attention, quantized_bad_input) {
  heed_runtime *rt;
  heed_runtime_options o;
  heed_runtime_options_init(&o);
  o.flags = HEED_RUNTIME_IGNORE_ENV | HEED_RUNTIME_NO_OPENCL;
  cr_assert_eq(heed_runtime_open(&o, &rt, NULL), HEED_OK);
  heed_dtype t;
  cr_assert_eq(heed_dtype_parse("q4", &t), HEED_OK);
  cr_assert_eq(t, HEED_DTYPE_Q4);
  cr_assert_eq(heed_dtype_parse("e4m3", &t), HEED_OK);
  cr_assert_neq(heed_dtype_parse("q5", &t), HEED_OK);
  heed_kv_cache_config cfg = {.n_kv_heads = 2, .dk = 64, .dv = 80, .k_dtype = HEED_DTYPE_Q4, .v_dtype = HEED_DTYPE_Q8,
                              .block_len = 32, .n_blocks = 4, .max_seqs = 2, .max_seq_len = 128};
  heed_error e = {0};
  size_t bytes;
  heed_kv_cache *c = NULL;
  char st[64];
  heed_kv_cache_config bad = cfg;
  bad.v_group = 32;
  cr_assert_eq(heed_kv_cache_create(rt, &bad, st, sizeof st, &c, &e), HEED_E_INVALID);
  cr_assert(strstr(e.msg, "v_group=32") && strstr(e.msg, "dv=80"), "%s", e.msg);
  bad = cfg;
  bad.k_group = 64;
  cr_assert_eq(heed_kv_cache_bytes(rt, &bad, &bytes, NULL), HEED_E_INVALID);
  cr_assert_eq(heed_kv_cache_create(rt, &bad, st, sizeof st, &c, &e), HEED_E_INVALID);
  cr_assert(strstr(e.msg, "k_group=64") && strstr(e.msg, "block_len=32"), "%s", e.msg);
  bad = cfg;
  bad.k_group = 24;
  cr_assert_eq(heed_kv_cache_create(rt, &bad, st, sizeof st, &c, &e), HEED_E_INVALID);
  cr_assert(strstr(e.msg, "k_group=24"), "%s", e.msg);
  bad = cfg;
  bad.k_dtype = (heed_dtype)HEED_DTYPE_COUNT;
  cr_assert_eq(heed_kv_cache_create(rt, &bad, st, sizeof st, &c, &e), HEED_E_INVALID);
  cr_assert(strstr(e.msg, "k_dtype="), "%s", e.msg);
  /* NaN on append: an error naming the token and head; nothing written */
  cr_assert_eq(heed_kv_cache_bytes(rt, &cfg, &bytes, NULL), HEED_OK);
  void *mem = aligned_alloc(64, bytes);
  cr_assert_eq(heed_kv_cache_create(rt, &cfg, mem, bytes, &c, &e), HEED_OK, "%s", e.msg);
  cr_assert_eq(heed_kv_cache_get_config(c)->v_group, 16, "the default group divides dv=80");
  int s;
  heed_kv_seq_new(c, &s);
  float k[40 * 2 * 64], v[40 * 2 * 80], k2[40 * 2 * 64], v2[40 * 2 * 80];
  uint64_t rng = 99;
  for (size_t i = 0; i < sizeof k / 4; i++) k[i] = tu_uniform(&rng);
  for (size_t i = 0; i < sizeof v / 4; i++) v[i] = tu_uniform(&rng);
  cr_assert_eq(heed_kv_seq_append(c, s, 20, k, v), HEED_OK);
  float before[20 * 2 * 64], vbefore[20 * 2 * 80];
  cr_assert_eq(heed_kv_seq_read(c, s, 0, 20, before, vbefore), HEED_OK);
  v[(size_t)(20 + 15) * 2 * 80 + 80 + 3] = NAN; /* token 15 of the next append, head 1 */
  cr_assert_eq(heed_kv_seq_append(c, s, 20, k + 20 * 2 * 64, v + 20 * 2 * 80), HEED_E_INVALID);
  cr_assert(strstr(heed_kv_cache_last_error(c), "V of token 15 (position 35), head 1, dim 3"), "%s", heed_kv_cache_last_error(c));
  cr_assert_eq(heed_kv_seq_len(c, s), 20);
  cr_assert_eq(heed_kv_cache_free_blocks(c), 4, "no block sealed");
  cr_assert_eq(heed_kv_seq_read(c, s, 0, 20, k2, v2), HEED_OK);
  cr_assert_eq(memcmp(k2, before, sizeof before), 0);
  cr_assert_eq(memcmp(v2, vbefore, sizeof vbefore), 0);
  cr_assert_eq(heed_kv_seq_read(c, s, 10, 11, k2, v2), HEED_E_RANGE);
  heed_kv_cache_destroy(c);
  free(mem);
  heed_runtime_close(rt);
}

/* Attention through each quantized format against attention on the f32 K/V
 * that went in, on keys with outlier channels (a few channels 30x the rest,
 * as trained models have). The bounds sit a few times above what the formats
 * give, and far below what a wrong scale, a per-token K layout or a skipped
 * residual give. */
Test(attention, quantized_accuracy_against_f32) {
  static const struct {
    heed_dtype k, v;
    double nmse;
  } cases[] = {{HEED_DTYPE_Q8, HEED_DTYPE_Q8, 1e-4}, {HEED_DTYPE_Q4, HEED_DTYPE_Q4, 3e-2}, {HEED_DTYPE_Q8, HEED_DTYPE_Q4, 1e-2},
               {HEED_DTYPE_E4M3, HEED_DTYPE_E4M3, 6e-3}, {HEED_DTYPE_E5M2, HEED_DTYPE_E5M2, 2e-2}};
  heed_isa isa = simd_isa();
  /* and avx512 with whatever it has: with avx512_vnni, q8 K from an int8 query */
  const int where[3] = {isa, TARGET_OPENCL, HEED_ISA_AVX512};
  for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ci++)
    for (int wi = 0; wi < 3; wi++) {
    fx f;
    fx_vnni = wi == 2;
    int opened = fx_open2(&f, where[wi], cases[ci].k, cases[ci].v, 2, 128, 128, 32);
    fx_vnni = 0;
    if (!opened) {
      cr_assert_neq(where[wi], isa, "the CPU target always runs");
      continue;
    }
    const unsigned L = 100, H = 2, d = 128;
    int s;
    heed_kv_seq_new(f.c, &s);
    float *k = malloc((size_t)L * H * d * 4), *v = malloc((size_t)L * H * d * 4);
    for (size_t i = 0; i < (size_t)L * H * d; i++) {
      size_t ch = i % d;
      k[i] = tu_uniform(&f.rng) * (ch == 5 || ch == 77 || ch == 100 ? 30.0f : 1.0f);
      v[i] = tu_uniform(&f.rng);
    }
    cr_assert_eq(heed_kv_seq_append(f.c, s, L, k, v), HEED_OK);
    memcpy(f.K[1], k, (size_t)L * H * d * 4); /* mirror 1: the f32 that went in */
    memcpy(f.V[1], v, (size_t)L * H * d * 4);
    heed_attn_params p = params(8, 2, d, d);
    float *q = rand_q(&f.rng, (size_t)L * 8 * d, 1.0f), *out = malloc((size_t)L * 8 * d * 4);
    double *want = malloc((size_t)L * 8 * d * 8), *wl = malloc((size_t)L * 8 * 8);
    size_t wsb;
    heed_attn_prefill_workspace(f.rt, &p, L, &wsb);
    void *ws = malloc(wsb);
    heed_attn_seq sq = {.seq = s};
    /* all of it; then, with a window of 8, the last 4 queries, whose keys are
     * half in the residual block */
    for (int pass = 0; pass < 2; pass++) {
      p.window = pass ? 8 : 0;
      cr_assert_eq(heed_attn_prefill(f.rt, f.c, &p, sq, 0, L, q, out, NULL, ws, wsb), HEED_OK);
      oracle(&f, 1, &p, L, 0, L, q, NULL, 0, want, wl);
      double num = 0, den = 0, dot = 0, g2 = 0;
      for (size_t i = pass ? (size_t)(L - 4) * 8 * d : 0; i < (size_t)L * 8 * d; i++) {
        num += (out[i] - want[i]) * (out[i] - want[i]), den += want[i] * want[i];
        dot += out[i] * want[i], g2 += (double)out[i] * out[i];
      }
      double nmse = num / den, cosine = dot / sqrt(den * g2);
      const char *what = pass ? "last 4 queries, window 8" : "all queries";
      cr_log_info("%s K %s V %s, %s: nmse %.3g cosine %.6f", fx_name(&f), heed_dtype_name(cases[ci].k),
                  heed_dtype_name(cases[ci].v), what, nmse, cosine);
      cr_assert_leq(nmse, cases[ci].nmse, "%s K %s V %s, %s: nmse %.3g over %.3g", fx_name(&f), heed_dtype_name(cases[ci].k),
                    heed_dtype_name(cases[ci].v), what, nmse, cases[ci].nmse);
      cr_assert_geq(cosine, 1 - cases[ci].nmse, "%s: cosine %.6f", what, cosine);
    }
    free(k), free(v), free(q), free(out), free(want), free(wl), free(ws);
    fx_close(&f);
  }
}

/* An attention sink: token 0 takes about half of every query's attention
 * (its key is large along channels every query leans on), as the first token
 * does in trained models. A quantized block keeps its row 0 in f16 (the lead
 * row), so the sink's score and value are not rounded. Measured nmse against
 * f32 attention (AVX2 / OpenCL on PoCL): q4 4.4e-6 / 1.1e-5, q8 7.4e-8 /
 * 1.3e-7, e4m3 4.3e-7 / 3.9e-7. Row 0 read from its codes instead (planted,
 * both sides): q4 1.1e-4 / 1.4e-4, q8 6.6e-6 / 7.5e-6, e4m3 1.0e-3 / 7.5e-4;
 * only K's lead row dropped (OpenCL): q4 5.4e-5, e4m3 5.9e-5. */
Test(attention, quantized_lead_row_keeps_the_attention_sink) {
  static const struct {
    heed_dtype k, v;
    double nmse;
  } cases[] = {{HEED_DTYPE_Q4, HEED_DTYPE_Q4, 3e-5}, {HEED_DTYPE_Q8, HEED_DTYPE_Q8, 1e-6}, {HEED_DTYPE_E4M3, HEED_DTYPE_E4M3, 5e-6}};
  heed_isa isa = simd_isa();
  const int where[2] = {isa, TARGET_OPENCL};
  for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ci++)
    for (int wi = 0; wi < 2; wi++) {
      fx f;
      if (!fx_open2(&f, where[wi], cases[ci].k, cases[ci].v, 2, 128, 128, 32)) {
        cr_assert_neq(where[wi], isa, "the CPU target always runs");
        continue;
      }
      const unsigned L = 70, H = 2, d = 128;
      int s;
      heed_kv_seq_new(f.c, &s);
      float *k = malloc((size_t)L * H * d * 4), *v = malloc((size_t)L * H * d * 4);
      for (size_t i = 0; i < (size_t)L * H * d; i++) {
        size_t t = i / (H * d), ch = i % d;
        k[i] = tu_uniform(&f.rng);
        v[i] = tu_uniform(&f.rng);
        if (t == 0) { /* the sink: large along channels 0..7, its value far from the others */
          if (ch < 8) k[i] = 3.0f + 0.5f * tu_uniform(&f.rng);
          v[i] = 4.0f + tu_uniform(&f.rng);
        }
      }
      cr_assert_eq(heed_kv_seq_append(f.c, s, L, k, v), HEED_OK);
      memcpy(f.K[1], k, (size_t)L * H * d * 4);
      memcpy(f.V[1], v, (size_t)L * H * d * 4);
      heed_attn_params p = params(8, 2, d, d);
      float *q = rand_q(&f.rng, (size_t)L * 8 * d, 1.0f), *out = malloc((size_t)L * 8 * d * 4);
      for (size_t i = 0; i < (size_t)L * 8 * d; i++)
        if (i % d < 8) q[i] = 2.0f + 0.5f * q[i]; /* every query looks at the sink */
      double *want = malloc((size_t)L * 8 * d * 8), *wl = malloc((size_t)L * 8 * 8);
      size_t wsb;
      heed_attn_prefill_workspace(f.rt, &p, L, &wsb);
      void *ws = malloc(wsb);
      heed_attn_seq sq = {.seq = s};
      cr_assert_eq(heed_attn_prefill(f.rt, f.c, &p, sq, 0, L, q, out, NULL, ws, wsb), HEED_OK);
      oracle(&f, 1, &p, L, 0, L, q, NULL, 0, want, wl);
      double num = 0, den = 0;
      for (size_t i = 0; i < (size_t)L * 8 * d; i++) num += (out[i] - want[i]) * (out[i] - want[i]), den += want[i] * want[i];
      cr_log_info("sink, %s K %s V %s: nmse %.3g", fx_name(&f), heed_dtype_name(cases[ci].k), heed_dtype_name(cases[ci].v),
                  num / den);
      cr_assert_leq(num / den, cases[ci].nmse, "sink, %s K %s V %s: nmse %.3g over %.3g", fx_name(&f),
                    heed_dtype_name(cases[ci].k), heed_dtype_name(cases[ci].v), num / den, cases[ci].nmse);
      free(k), free(v), free(q), free(out), free(want), free(wl), free(ws);
      fx_close(&f);
    }
}

/* What a cache cannot hold and queries that are not finite are refused, the
 * same on every target: all or nothing, the message naming token (query),
 * head and dim, found where the documentation says (the cache's last error
 * for its own calls, the runtime's for attention). An f16 cache stored
 * 70000 as inf (decode gave NaN on the CPU, 0 with lse -inf on OpenCL), and
 * a q8 or q4 cache read it and the rest of its channel group back as 0. */
Test(attention, out_of_range_values_and_queries_are_refused_alike) {
  static const heed_dtype types[] = {HEED_DTYPE_F32, HEED_DTYPE_F16, HEED_DTYPE_BF16, HEED_DTYPE_Q8, HEED_DTYPE_Q4,
                                     HEED_DTYPE_E4M3, HEED_DTYPE_E5M2};
  for (int ti = 0; ti < N_TARGETS; ti++)
    for (size_t di = 0; di < sizeof types / sizeof types[0]; di++) {
      fx f;
      if (!fx_open(&f, targets[ti], types[di], 2, 64, 64, 16)) continue;
      const char *where = fx_name(&f);
      const char *tn = heed_dtype_name(types[di]);
      fx_seq0(&f, 20, 1.0f);
      heed_dtype stored = res_type(types[di]);
      float k[2 * 2 * 64] = {0}, v[2 * 2 * 64] = {0}; /* two tokens */
      if (stored != HEED_DTYPE_F32) {
        const float top = stored == HEED_DTYPE_F16 ? 65504.0f : tu_f32_from_bits(0x7f7f0000u);
        const float over = stored == HEED_DTYPE_F16 ? 65520.0f : tu_f32_from_bits(0x7f7f8000u); /* rounds to inf */
        k[(1 * 2 + 1) * 64 + 3] = over; /* token 1, head 1, dim 3 */
        cr_assert_eq(heed_kv_seq_append(f.c, 0, 2, k, v), HEED_E_RANGE, "%s %s", where, tn);
        const char *m = heed_kv_cache_last_error(f.c);
        cr_assert(strstr(m, "K of token 1 (position 21), head 1, dim 3"), "%s %s: %s", where, tn, m);
        cr_assert(strstr(m, heed_dtype_name(stored)), "%s %s: %s", where, tn, m);
        cr_assert_eq(heed_kv_seq_len(f.c, 0), 20, "%s %s: nothing appended", where, tn);
        k[(1 * 2 + 1) * 64 + 3] = 0;
        v[5] = -over;
        cr_assert_eq(heed_kv_seq_append(f.c, 0, 2, k, v), HEED_E_RANGE, "%s %s", where, tn);
        cr_assert(strstr(heed_kv_cache_last_error(f.c), "V of token 0 (position 20), head 0, dim 5"), "%s %s: %s", where, tn,
                  heed_kv_cache_last_error(f.c));
        /* The largest finite value is stored as itself. */
        v[5] = -top;
        cr_assert_eq(heed_kv_seq_append(f.c, 0, 2, k, v), HEED_OK, "%s %s: %s", where, tn, heed_kv_cache_last_error(f.c));
        float rk[2 * 64], rv[2 * 64];
        cr_assert_eq(heed_kv_seq_read(f.c, 0, 20, 1, rk, rv), HEED_OK);
        cr_assert_eq(rv[5], -top, "%s %s: %g", where, tn, (double)rv[5]);
        cr_assert_eq(heed_kv_seq_truncate(f.c, 0, 20), HEED_OK);
      }
      k[7] = NAN;
      cr_assert_eq(heed_kv_seq_append(f.c, 0, 1, k, v), HEED_E_INVALID, "%s %s", where, tn);
      k[7] = 0;
      /* Queries: a NaN or inf is named; the output is left alone. */
      heed_attn_params p = params(4, 2, 64, 64);
      heed_attn_decode_seq d = {.kv = {.seq = 0}, .n_q = 2};
      size_t dwb, pwb;
      cr_assert_eq(heed_attn_decode_workspace(f.rt, &p, &d, 1, &dwb), HEED_OK);
      cr_assert_eq(heed_attn_prefill_workspace(f.rt, &p, 4, &pwb), HEED_OK);
      void *ws = malloc(dwb > pwb ? dwb : pwb);
      float *q = rand_q(&f.rng, 4 * 4 * 64, 1.0f), out[4 * 4 * 64];
      for (int i = 0; i < 4 * 4 * 64; i++) out[i] = 42.0f;
      q[(1 * 4 + 2) * 64 + 5] = NAN; /* query 1, head 2, dim 5 */
      cr_assert_eq(heed_attn_decode(f.rt, f.c, &p, &d, 1, q, out, NULL, ws, dwb), HEED_E_INVALID, "%s %s", where, tn);
      cr_assert(strstr(heed_runtime_last_error(f.rt), "query 1, head 2, dim 5 is nan"), "%s %s: %s", where, tn,
                heed_runtime_last_error(f.rt));
      q[(1 * 4 + 2) * 64 + 5] = 0;
      q[(3 * 4 + 1) * 64] = -INFINITY;
      heed_attn_seq s = {.seq = 0};
      cr_assert_eq(heed_attn_prefill(f.rt, f.c, &p, s, 10, 4, q, out, NULL, ws, pwb), HEED_E_INVALID, "%s %s", where, tn);
      cr_assert(strstr(heed_runtime_last_error(f.rt), "query 3, head 1, dim 0 is -inf"), "%s %s: %s", where, tn,
                heed_runtime_last_error(f.rt));
      q[(3 * 4 + 1) * 64] = 0;
      /* A finite query that the scale takes past float (it gave an empty row: 0, lse -inf). */
      heed_attn_params big = p;
      big.scale = 1e38f;
      q[(0 * 4 + 3) * 64 + 9] = 10.0f;
      cr_assert_eq(heed_attn_decode(f.rt, f.c, &big, &d, 1, q, out, NULL, ws, dwb), HEED_E_RANGE, "%s %s", where, tn);
      cr_assert(strstr(heed_runtime_last_error(f.rt), "query 0, head 3, dim 9 is 10, and times scale=1e+38 it is inf"),
                "%s %s: %s", where, tn, heed_runtime_last_error(f.rt));
      for (int i = 0; i < 4 * 4 * 64; i++) cr_assert_eq(out[i], 42.0f, "%s %s: output written on error", where, tn);
      cr_assert_eq(heed_attn_decode(f.rt, f.c, &p, &d, 1, q, out, NULL, ws, dwb), HEED_OK, "%s %s: %s", where, tn,
                   heed_runtime_last_error(f.rt));
      for (int i = 0; i < 2 * 4 * 64; i++) cr_assert(isfinite(out[i]), "%s %s", where, tn);
      free(ws), free(q);
      fx_close(&f);
    }
}

/* Every refusal of a call that takes the runtime leaves its message there. */
Test(attention, refusals_are_found_in_the_runtime) {
  fx f;
  cr_assert(fx_open(&f, HEED_ISA_SCALAR, HEED_DTYPE_F16, 2, 64, 64, 16));
  heed_kv_cache_config bad = f.cfg;
  bad.dk = 72;
  size_t bytes;
  cr_assert_eq(heed_kv_cache_bytes(f.rt, &bad, &bytes, NULL), HEED_E_INVALID);
  cr_assert(strstr(heed_runtime_last_error(f.rt), "72"), "heed_kv_cache_bytes: '%s'", heed_runtime_last_error(f.rt));
  heed_attn_params p = params(4, 2, 64, 64);
  p.n_q_heads = 3;
  cr_assert_eq(heed_attn_prefill_workspace(f.rt, &p, 4, &bytes), HEED_E_INVALID);
  cr_assert(strstr(heed_runtime_last_error(f.rt), "n_q_heads=3"), "'%s'", heed_runtime_last_error(f.rt));
  p = params(4, 2, 64, 64);
  heed_attn_decode_seq d = {.kv = {.seq = 0}, .n_q = 0};
  cr_assert_eq(heed_attn_decode_workspace(f.rt, &p, &d, 1, &bytes), HEED_E_INVALID);
  cr_assert(strstr(heed_runtime_last_error(f.rt), "n_q=0"), "'%s'", heed_runtime_last_error(f.rt));
  cr_assert_eq(heed_attn_prefill_workspace(f.rt, &p, 4, NULL), HEED_E_INVALID);
  cr_assert(strstr(heed_runtime_last_error(f.rt), "bytes is NULL"), "'%s'", heed_runtime_last_error(f.rt));
  heed_tile_plan tp;
  cr_assert_eq(heed_runtime_tile_plan(f.rt, 0, 64, HEED_DTYPE_F16, &tp), HEED_E_INVALID);
  cr_assert(strstr(heed_runtime_last_error(f.rt), "dk=0"), "'%s'", heed_runtime_last_error(f.rt));
  fx_close(&f);
}

/* A q8/q4 block holding 65504 decodes a little past it (127 * f16(65504 / 127)
 * = 65532); truncating into that block put it back into the f16 residual as
 * inf (attention then NaN), and the refill kept stale codes (found by
 * fuzz_kv_ops, fuzz/corpus/kv_ops/crash-q8-truncate-f16-inf). */
Test(attention, truncate_into_a_block_at_the_f16_limit) {
  static const heed_dtype types[] = {HEED_DTYPE_Q8, HEED_DTYPE_Q4, HEED_DTYPE_E4M3};
  for (int ti = 0; ti < N_TARGETS; ti++)
    for (int di = 0; di < 3; di++) {
      fx f;
      if (!fx_open(&f, targets[ti], types[di], 1, 32, 32, 16)) continue;
      const char *where = fx_name(&f), *tn = heed_dtype_name(types[di]);
      int s;
      cr_assert_eq(heed_kv_seq_new(f.c, &s), HEED_OK);
      float k[16 * 32], v[16 * 32];
      for (int i = 0; i < 16 * 32; i++) k[i] = v[i] = (float)(i % 7) - 3.0f;
      for (int t = 0; t < 16; t++) k[t * 32 + 3] = v[t * 32 + 3] = t % 2 ? 65504.0f : -65504.0f;
      cr_assert_eq(heed_kv_seq_append(f.c, s, 16, k, v), HEED_OK, "%s %s: %s", where, tn, heed_kv_cache_last_error(f.c));
      cr_assert_eq(heed_kv_seq_truncate(f.c, s, 9), HEED_OK, "%s %s: %s", where, tn, heed_kv_cache_last_error(f.c));
      cr_assert_eq(heed_kv_seq_append(f.c, s, 7, k + 9 * 32, v + 9 * 32), HEED_OK, "%s %s: %s", where, tn,
                   heed_kv_cache_last_error(f.c));
      float rk[16 * 32], rv[16 * 32];
      cr_assert_eq(heed_kv_seq_read(f.c, s, 0, 16, rk, rv), HEED_OK);
      for (int i = 0; i < 16 * 32; i++) {
        /* twice quantized: within two steps of the block's range (2 * 131008 / 15 for q4) */
        float tol = types[di] == HEED_DTYPE_Q4 ? 17500.0f : 1100.0f;
        cr_assert(isfinite(rk[i]) && fabsf(rk[i] - k[i]) <= tol, "%s %s: K %d = %g, appended %g", where, tn, i,
                  (double)rk[i], (double)k[i]);
        cr_assert(isfinite(rv[i]) && fabsf(rv[i] - v[i]) <= tol, "%s %s: V %d = %g, appended %g", where, tn, i,
                  (double)rv[i], (double)v[i]);
      }
      heed_attn_params p = params(1, 1, 32, 32);
      p.scale = 1e-6f;
      heed_attn_decode_seq d = {.kv = {.seq = s}, .n_q = 1};
      size_t wsb;
      cr_assert_eq(heed_attn_decode_workspace(f.rt, &p, &d, 1, &wsb), HEED_OK);
      void *ws = malloc(wsb);
      float q[32], out[32];
      for (int i = 0; i < 32; i++) q[i] = 1.0f;
      cr_assert_eq(heed_attn_decode(f.rt, f.c, &p, &d, 1, q, out, NULL, ws, wsb), HEED_OK, "%s", heed_runtime_last_error(f.rt));
      for (int i = 0; i < 32; i++) cr_assert(isfinite(out[i]), "%s %s: out[%d] = %g", where, tn, i, (double)out[i]);
      free(ws);
      fx_close(&f);
    }
}

/* q8 K scores from an int8 query (avx512_vnni): the same cache and queries
 * through the f32 kernels and through vpdpbusd. The query's rounding
 * (d_r / 508 per channel) moves outputs by nmse ~2.5e-9 here; a wrong code
 * offset, transpose or scale moves them by O(1). */
Test(attention, q8_keys_from_an_int8_query_match_the_f32_kernels) {
  if (!heed_kernels_compiled(HEED_ISA_AVX512) || !heed_isa_runs_on(HEED_ISA_AVX512, heed_cpu_features_detect()) ||
      !HEED_CPU_HAS(heed_cpu_features_detect(), AVX512_VNNI)) {
    cr_log_info("no avx512_vnni here: the int8-query path is not run (tests/test_kernels.c still checks it when it can)");
    return;
  }
  static const heed_dtype vts[] = {HEED_DTYPE_Q8, HEED_DTYPE_Q4, HEED_DTYPE_F16};
  static const unsigned dks[] = {64, 128, 256};
  for (size_t vi = 0; vi < 3; vi++)
    for (size_t di = 0; di < 3; di++) {
      fx f[2];
      const unsigned L = 150, H = 6, KH = 1, d = dks[di];
      for (int i = 0; i < 2; i++) {
        fx_vnni = i;
        cr_assert(fx_open2(&f[i], HEED_ISA_AVX512, HEED_DTYPE_Q8, vts[vi], KH, d, d, 32));
        fx_vnni = 0;
      }
      float *k = malloc((size_t)L * KH * d * 4), *v = malloc((size_t)L * KH * d * 4);
      uint64_t rng = 99 + d;
      for (size_t i = 0; i < (size_t)L * KH * d; i++)
        k[i] = tu_uniform(&rng) * (i % d == 3 ? 20.0f : 1.0f), v[i] = tu_uniform(&rng);
      heed_attn_params p = params(H, KH, d, d);
      float *q = rand_q(&rng, (size_t)L * H * d, 1.0f), *out[2];
      size_t wsb;
      heed_attn_prefill_workspace(f[0].rt, &p, L, &wsb);
      void *ws = malloc(wsb);
      for (int i = 0; i < 2; i++) {
        int s;
        heed_kv_seq_new(f[i].c, &s);
        cr_assert_eq(heed_kv_seq_append(f[i].c, s, L, k, v), HEED_OK);
        out[i] = malloc((size_t)L * H * d * 4);
        heed_attn_seq sq = {.seq = s};
        cr_assert_eq(heed_attn_prefill(f[i].rt, f[i].c, &p, sq, 0, L, q, out[i], NULL, ws, wsb), HEED_OK);
      }
      double num = 0, den = 0, mx = 0;
      for (size_t i = 0; i < (size_t)L * H * d; i++) {
        double e = (double)out[1][i] - out[0][i];
        num += e * e, den += (double)out[0][i] * out[0][i], mx = fabs(e) > mx ? fabs(e) : mx;
      }
      cr_log_info("q8 K, V %s, d %u: int8 query against f32 kernels: nmse %.3g, max abs %.3g", heed_dtype_name(vts[vi]),
                  d, num / den, mx);
      cr_assert_leq(num / den, 2e-8, "q8 K, V %s, d %u: nmse %.3g", heed_dtype_name(vts[vi]), d, num / den);
      cr_assert_leq(mx, 1e-3, "q8 K, V %s, d %u: max abs %.3g", heed_dtype_name(vts[vi]), d, mx);
      free(k), free(v), free(q), free(out[0]), free(out[1]), free(ws);
      fx_close(&f[0]), fx_close(&f[1]);
    }
}
