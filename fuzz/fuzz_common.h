/* fuzz/fuzz_common.h - what the libFuzzer targets share: reading the input as
 * a stream of choices, generated data (with NaN/Inf and extremes on demand),
 * the runtimes (opened once per process), checks that abort, and a double
 * precision reference for attention. */
#ifndef HEED_FUZZ_COMMON_H
#define HEED_FUZZ_COMMON_H

#include <float.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "heed/heed.h"

/* A violated expectation: say where and what, then abort() (libFuzzer saves the input). */
#define FZ_CHECK(cond, ...)                                                         \
  do {                                                                              \
    if (!(cond)) {                                                                  \
      fprintf(stderr, "\nFUZZ CHECK FAILED %s:%d: %s\n  ", __FILE__, __LINE__, #cond); \
      fprintf(stderr, __VA_ARGS__);                                                 \
      fputc('\n', stderr);                                                          \
      abort();                                                                      \
    }                                                                               \
  } while (0)

/* HEED_FUZZ_SKIP_KNOWN=1 in the environment: skip the inputs that reach a
 * defect already reported and not yet fixed (each skip names it), to look
 * for others meanwhile. Unset (CI): they are found. */
static inline int fz_skip_known(void) {
  static int v = -1;
  if (v < 0) {
    const char *e = getenv("HEED_FUZZ_SKIP_KNOWN");
    v = e && e[0] && strcmp(e, "0") != 0;
  }
  return v;
}

/* HEED_FUZZ_STATS=1: at exit, how often each check ran (is the target reaching them?). */
#define FZ_STAT_MAX 32
static const char *fz_stat_name[FZ_STAT_MAX];
static unsigned long fz_stat_n[FZ_STAT_MAX];
static void fz_stats_print(void) {
  for (int i = 0; i < FZ_STAT_MAX && fz_stat_name[i]; i++) fprintf(stderr, "fuzz stat %-28s %lu\n", fz_stat_name[i], fz_stat_n[i]);
}
static inline void fz_stat(const char *name) {
  static int on = -1;
  if (on < 0) {
    const char *e = getenv("HEED_FUZZ_STATS");
    on = e && e[0] == '1';
    if (on) atexit(fz_stats_print);
  }
  if (!on) return;
  for (int i = 0; i < FZ_STAT_MAX; i++) {
    if (!fz_stat_name[i]) fz_stat_name[i] = name;
    if (fz_stat_name[i] == name || strcmp(fz_stat_name[i], name) == 0) {
      fz_stat_n[i]++;
      return;
    }
  }
}

/* ---------- the input as a stream of choices (zeros once it runs out) ---------- */

typedef struct fz_in {
  const uint8_t *p;
  size_t n;
} fz_in;

static inline uint8_t fz_u8(fz_in *in) {
  if (!in->n) return 0;
  in->n--;
  return *in->p++;
}
static inline uint16_t fz_u16(fz_in *in) { return (uint16_t)(fz_u8(in) | fz_u8(in) << 8); }
static inline uint32_t fz_u32(fz_in *in) { return (uint32_t)fz_u16(in) | (uint32_t)fz_u16(in) << 16; }
static inline uint64_t fz_u64(fz_in *in) { return (uint64_t)fz_u32(in) | (uint64_t)fz_u32(in) << 32; }
/* lo..hi inclusive (hi - lo < 2^16). */
static inline unsigned fz_range(fz_in *in, unsigned lo, unsigned hi) {
  unsigned span = hi - lo + 1;
  return lo + (span > 256 ? fz_u16(in) : fz_u8(in)) % span;
}
static inline int fz_bool(fz_in *in) { return fz_u8(in) & 1; }
/* One of n entries of a table. */
#define FZ_PICK(in, table) ((table)[fz_u8(in) % (sizeof(table) / sizeof *(table))])

static inline float fz_f32_bits(uint32_t u) {
  float f;
  memcpy(&f, &u, 4);
  return f;
}

/* A float worth trying: specials, extremes, subnormals, boundaries, or raw bits. */
static inline float fz_special(fz_in *in) {
  static const float table[] = {0.0f, -0.0f, 1.0f, -1.0f, 0.5f, 2.0f, 1e-40f, -1e-40f, 1e-45f, FLT_MIN, FLT_MAX,
                                -FLT_MAX, 65504.0f, 65520.0f, -65536.0f, 448.0f, 464.0f, 57344.0f, 61440.0f,
                                3.3961e38f, 1e-7f, 1e-6f, 1e10f, 1e30f, -1e30f};
  uint8_t k = fz_u8(in);
  if (k < 16) return (k & 3) == 0 ? NAN : (k & 3) == 1 ? -NAN : (k & 3) == 2 ? INFINITY : -INFINITY;
  if (k < 160) return table[k % (sizeof table / sizeof *table)];
  return fz_f32_bits(fz_u32(in));
}

/* ---------- generated data: splitmix64 seeded from the input ---------- */

static inline uint64_t fz_mix(uint64_t *s) {
  uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}
/* Uniform in [-1, 1). */
static inline float fz_unit(uint64_t *s) { return (float)((fz_mix(s) >> 40) * 0x1p-23 - 1.0); }

/* How a buffer of floats is filled. */
typedef struct fz_fill {
  uint64_t seed;
  float amp;       /* values uniform in [-amp, amp) */
  unsigned levels; /* nonzero: only this many distinct values (ties) */
  unsigned n_special;
  struct {
    uint32_t at;
    float x;
  } special[8]; /* then these overwrite (index modulo the length) */
} fz_fill;

static const float fz_amps[] = {1.0f, 1.0f, 1.0f, 4.0f, 0.0f, 1e-30f, 1e-3f, 30.0f, 100.0f, 6e4f, 1e5f, 1e30f, 3e38f};

/* Choices for a fill; with_specials: may plant NaN/Inf/extremes. */
static inline fz_fill fz_fill_read(fz_in *in, int with_specials) {
  fz_fill f;
  memset(&f, 0, sizeof f);
  f.seed = fz_u32(in);
  f.amp = FZ_PICK(in, fz_amps);
  uint8_t t = fz_u8(in);
  f.levels = t < 200 ? 0 : t % 5 + 1;
  if (with_specials) {
    f.n_special = fz_u8(in) % 32;
    if (f.n_special > 8) f.n_special = 0; /* most fills have none */
    for (unsigned i = 0; i < f.n_special; i++) f.special[i].at = fz_u32(in), f.special[i].x = fz_special(in);
  }
  return f;
}

static inline void fz_fill_apply(const fz_fill *f, float *x, size_t n) {
  uint64_t s = f->seed;
  for (size_t i = 0; i < n; i++) {
    float u = fz_unit(&s);
    if (f->levels) u = (float)((int)((u + 1.0f) * 0.5f * (float)f->levels)) / (float)f->levels;
    x[i] = u * f->amp;
  }
  if (n)
    for (unsigned i = 0; i < f->n_special; i++) x[f->special[i].at % n] = f->special[i].x;
}

static inline int fz_all_finite(const float *x, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (!isfinite(x[i])) return 0;
  return 1;
}
static inline float fz_max_abs(const float *x, size_t n) {
  float m = 0;
  for (size_t i = 0; i < n; i++) m = fabsf(x[i]) > m ? fabsf(x[i]) : m;
  return m;
}

/* 64-byte aligned, at least 64 bytes, contents set to `byte`. */
static inline void *fz_alloc64(size_t bytes, int byte) {
  size_t n = (bytes + 63) & ~(size_t)63;
  void *p = aligned_alloc(64, n ? n : 64);
  if (p) memset(p, byte, n ? n : 64);
  return p;
}

/* ---------- runtimes: one per ISA this CPU runs, opened once ---------- */

#define FZ_MAX_RT HEED_ISA_COUNT
static heed_runtime *fz_rts[FZ_MAX_RT];
static int fz_n_rts;

/* CPU backend, 2 workers, no environment, no OpenCL, one runtime per runnable ISA. */
static inline void fz_open_runtimes(void) {
  if (fz_n_rts) return;
  for (int isa = 0; isa < HEED_ISA_COUNT; isa++) {
    heed_runtime_options o;
    heed_runtime_options_init(&o);
    o.backend = HEED_BACKEND_CPU;
    o.isa = isa;
    o.n_threads = 2;
    o.flags = HEED_RUNTIME_IGNORE_ENV | HEED_RUNTIME_NO_OPENCL | HEED_RUNTIME_NO_PIN;
    heed_error err;
    heed_runtime *rt = NULL;
    if (heed_runtime_open(&o, &rt, &err) == HEED_OK) fz_rts[fz_n_rts++] = rt;
  }
  if (!fz_n_rts) {
    fprintf(stderr, "fuzz: no runtime could be opened\n");
    abort();
  }
}
static inline heed_runtime *fz_runtime(fz_in *in) { return fz_rts[fz_u8(in) % fz_n_rts]; }

/* ---------- a double-precision reference for attention ---------- */

/* K [len][H][dk] and V [len][H][dv] as the cache holds them (decoded). Rows
 * i = 0..n_q-1 are queries at positions pos0 + i; in decode with a tree the
 * in-flight keys are [tree_base, tree_base + n_q) and mask [n_q][n_q] applies
 * to them. q [n_q][Hq][dk]; out [n_q][Hq][dv]; lse [n_q][Hq]. */
static inline void fz_ref_attention(const heed_attn_params *p, const float *K, const float *V, unsigned pos0,
                                    unsigned n_q, const uint8_t *mask, unsigned tree_base, const float *q, double *out,
                                    double *lse) {
  const unsigned H = p->n_kv_heads, Hq = p->n_q_heads, G = Hq / H, dk = p->dk, dv = p->dv;
  for (unsigned i = 0; i < n_q; i++) {
    const unsigned pos = pos0 + i;
    for (unsigned h = 0; h < Hq; h++) {
      const float *qr = q + ((size_t)i * Hq + h) * dk;
      const unsigned kvh = h / G;
      double m = -INFINITY;
      for (unsigned k = 0; k <= pos; k++) { /* the max, first */
        if (p->window && pos - k >= p->window) continue;
        if (mask && k >= tree_base && !mask[(size_t)i * n_q + (k - tree_base)]) continue;
        const float *kr = K + ((size_t)k * H + kvh) * dk;
        double s = 0;
        for (unsigned d = 0; d < dk; d++) s += (double)qr[d] * p->scale * kr[d];
        if (p->softcap > 0) s = p->softcap * tanh(s / p->softcap);
        m = s > m ? s : m;
      }
      double sink = p->sinks ? p->sinks[h] : -INFINITY;
      double mm = m > sink ? m : sink, l = 0;
      double *o = out + ((size_t)i * Hq + h) * dv;
      for (unsigned d = 0; d < dv; d++) o[d] = 0;
      if (mm == -INFINITY) {
        lse[(size_t)i * Hq + h] = -INFINITY;
        continue;
      }
      for (unsigned k = 0; k <= pos; k++) {
        if (p->window && pos - k >= p->window) continue;
        if (mask && k >= tree_base && !mask[(size_t)i * n_q + (k - tree_base)]) continue;
        const float *kr = K + ((size_t)k * H + kvh) * dk, *vr = V + ((size_t)k * H + kvh) * dv;
        double s = 0;
        for (unsigned d = 0; d < dk; d++) s += (double)qr[d] * p->scale * kr[d];
        if (p->softcap > 0) s = p->softcap * tanh(s / p->softcap);
        double w = exp(s - mm);
        l += w;
        for (unsigned d = 0; d < dv; d++) o[d] += w * vr[d];
      }
      if (p->sinks) l += exp(sink - mm);
      for (unsigned d = 0; d < dv; d++) o[d] /= l;
      lse[(size_t)i * Hq + h] = mm + log(l);
    }
  }
}

/* The largest |score| the rows can reach, |scale| * max over rows and keys of
 * sum |q_d k_d| (before the cap): the reference is compared only when it is
 * moderate, where float rounding of the scores cannot move the softmax much. */
static inline double fz_score_bound(const heed_attn_params *p, const float *K, unsigned len, const float *q, unsigned n_q) {
  const unsigned H = p->n_kv_heads, Hq = p->n_q_heads, G = Hq / H, dk = p->dk;
  double best = 0;
  /* heed scales the query first: scale * q must stay finite (else: reported as a limit) */
  for (size_t i = 0; i < (size_t)n_q * Hq * dk; i++)
    if (!(fabsf(q[i] * p->scale) < 1e30f)) return INFINITY;
  for (unsigned i = 0; i < n_q; i++)
    for (unsigned h = 0; h < Hq; h++) {
      const float *qr = q + ((size_t)i * Hq + h) * dk;
      for (unsigned k = 0; k < len; k++) {
        const float *kr = K + ((size_t)k * H + h / G) * dk;
        double s = 0;
        for (unsigned d = 0; d < dk; d++) s += fabs((double)qr[d] * kr[d]);
        best = s > best ? s : best;
      }
    }
  return best * fabs((double)p->scale);
}

/* out/lse against the reference; what: for the message. */
static inline void fz_compare_attention(const char *what, const heed_attn_params *p, unsigned n_q, const float *out,
                                        const float *lse, const double *rout, const double *rlse, float vmax) {
  const size_t rows = (size_t)n_q * p->n_q_heads;
  const double tol = 2e-3 * vmax + 1e-5;
  for (size_t r = 0; r < rows; r++) {
    for (unsigned d = 0; d < p->dv; d++) {
      double x = out[r * p->dv + d], y = rout[r * p->dv + d];
      FZ_CHECK(fabs(x - y) <= tol, "%s: row %zu (query %zu, head %zu) dim %u: heed %.9g, reference %.9g (tolerance %g)",
               what, r, r / p->n_q_heads, r % p->n_q_heads, d, x, y, tol);
    }
    if (lse) {
      double x = lse[r], y = rlse[r];
      if (y == -INFINITY)
        FZ_CHECK(x == -INFINITY, "%s: row %zu sees no key: lse %.9g, expected -inf", what, r, x);
      else
        FZ_CHECK(fabs(x - y) <= 2e-3 + 1e-4 * fabs(y), "%s: row %zu: lse %.9g, reference %.9g", what, r, x, y);
    }
  }
}

#endif
