/* tests/test_spec.c - speculative decoding: the vocabulary kernels of every
 * ISA against fp64, the sampling transforms against an fp64 reference,
 * greedy verification against plain greedy decoding, the rejection
 * sampler's output distribution by chi-square (with deliberately broken
 * variants shown to fail), trees and their attention masks, the n-gram
 * drafter, reproducibility, and bad input. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "heed/attention.h"
#include "heed/kernels.h"
#include "heed/spec.h"
#include "spec/spec_internal.h"
#include "test_util.h"

static const int isas[] = {HEED_ISA_SCALAR, HEED_ISA_AVX2, HEED_ISA_AVX512, HEED_ISA_NEON};

/* Where verification can run: each CPU ISA, and the OpenCL backend (the
 * vocabulary passes on its device). */
#define ON_OPENCL (-2)
static const int variants[] = {HEED_ISA_SCALAR, HEED_ISA_AVX2, HEED_ISA_AVX512, HEED_ISA_NEON, ON_OPENCL};
static const char *variant_name(int v) { return v == ON_OPENCL ? "opencl" : heed_isa_name((heed_isa)v); }

/* The OpenCL runtime: the native suite must have one (setup installs PoCL);
 * under qemu-aarch64 there is none, and NULL skips it. */
static heed_runtime *open_cl_rt(void) {
  heed_runtime_options o;
  heed_runtime_options_init(&o);
  o.flags = HEED_RUNTIME_IGNORE_ENV;
  o.backend = HEED_BACKEND_OPENCL;
  heed_runtime *rt = NULL;
  heed_error e = {0};
  heed_status st = heed_runtime_open(&o, &rt, &e);
#if !defined(__x86_64__)
  if (st == HEED_E_NOT_FOUND || st == HEED_E_UNSUPPORTED) return NULL;
#endif
  cr_assert_eq(st, HEED_OK, "the native suite runs on PoCL (scripts/setup.sh installs it): %s", e.msg);
  return rt;
}

static heed_runtime *open_rt(int isa, int threads) {
  if (isa == ON_OPENCL) return open_cl_rt();
  if (isa != HEED_ISA_AUTO &&
      (!heed_kernels_compiled((heed_isa)isa) || !heed_isa_runs_on((heed_isa)isa, heed_cpu_features_detect())))
    return NULL;
  heed_runtime_options o;
  heed_runtime_options_init(&o);
  o.flags = HEED_RUNTIME_IGNORE_ENV | HEED_RUNTIME_NO_OPENCL;
  o.isa = isa;
  o.n_threads = threads;
  heed_runtime *rt = NULL;
  heed_error e = {0};
  cr_assert_eq(heed_runtime_open(&o, &rt, &e), HEED_OK, "%s", e.msg);
  return rt;
}

static heed_spec *open_spec(heed_runtime *rt, unsigned vocab, unsigned max_draft) {
  heed_spec_config c = {.vocab = vocab, .max_draft = max_draft, .max_penalty_tokens = 4096, .max_sparse = 64};
  heed_spec *s = NULL;
  heed_error e = {0};
  cr_assert_eq(heed_spec_create(rt, &c, &s, &e), HEED_OK, "%s", e.msg);
  return s;
}

/* ---- Philox ---- */

Test(spec, philox_known_answers) {
  /* Random123's kat_vectors for philox4x32_10. */
  static const uint32_t ctr[3][4] = {{0, 0, 0, 0},
                                     {0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu},
                                     {0x243f6a88u, 0x85a308d3u, 0x13198a2eu, 0x03707344u}};
  static const uint32_t key[3][2] = {{0, 0}, {0xffffffffu, 0xffffffffu}, {0xa4093822u, 0x299f31d0u}};
  static const uint32_t want[3][4] = {{0x6627e8d5u, 0xe169c58du, 0xbc57ac4cu, 0x9b00dbd8u},
                                      {0x408f276du, 0x41c83b0eu, 0xa20bc7c6u, 0x6d5451fdu},
                                      {0xd16cfe09u, 0x94fdccebu, 0x5001e420u, 0x24126ea1u}};
  for (int i = 0; i < 3; i++) {
    uint32_t o[4];
    heed_philox4x32(ctr[i], key[i], o);
    for (int j = 0; j < 4; j++) cr_assert_eq(o[j], want[i][j], "vector %d word %d: %08x, want %08x", i, j, o[j], want[i][j]);
  }
  /* Uniforms: in [0, 1), a pure function of (seed, step, draw), and about uniform. */
  double sum = 0;
  for (uint32_t d = 0; d < 20000; d++) {
    float u = heed_spec_uniform(42, 7, d);
    cr_assert(u >= 0 && u < 1);
    sum += u;
  }
  cr_assert(fabs(sum / 20000 - 0.5) < 0.01, "mean %g", sum / 20000);
  cr_assert_eq(heed_spec_uniform(1, 2, 3), heed_spec_uniform(1, 2, 3));
  cr_assert_neq(heed_spec_uniform(1, 2, 3), heed_spec_uniform(1, 3, 3));
  cr_assert_neq(heed_spec_uniform(1, 2, 3), heed_spec_uniform(2, 2, 3));
}

/* ---- vocabulary kernels against fp64 ---- */

static const size_t lens[] = {1, 2, 3, 7, 8, 9, 15, 16, 17, 31, 33, 100, 1000, 4099, 8193};

static void fill_row(float *x, size_t n, uint64_t *r, int adversarial) {
  for (size_t i = 0; i < n; i++) x[i] = 6.0f * tu_uniform(r);
  if (!adversarial) return;
  for (size_t i = 0; i < n; i += 5) x[i] = -INFINITY;
  if (n > 3) x[n / 2] = x[n - 1] = 40.0f; /* tied maxima: the first must be reported */
  if (n > 7) x[3] = -1e30f;               /* exp underflows to 0 */
}

/* vocab_maxsum_bound: the max and a bracket of the sum in one read, on rows
 * that make the SIMD kernels move their reference max (a rise of more than
 * 40/s within a block), at every length around the vector widths and blocks,
 * with large offsets (up to |max| s past what a float reference can place),
 * a spike in the scalar tail, -inf blocks first, NaN or +inf anywhere, and
 * finite rows whose plain sum overflows (the SIMD NaN check). */
static void maxsum_row(float *x, size_t n, int kind, uint64_t *r) {
  for (size_t i = 0; i < n; i++) {
    float u = 6.0f * tu_uniform(r);
    switch (kind) {
    case 0: x[i] = u; break;
    case 1: x[i] = 0.5f * (float)i + u; break;                  /* rises ~90 nats a block */
    case 2: x[i] = -0.5f * (float)i + u; break;                 /* falls */
    case 3: x[i] = 10000.0f + u; break;                         /* large logits */
    case 4: x[i] = i < n / 2 ? -INFINITY : u; break;            /* nothing, then values */
    case 5: x[i] = i % 5 ? u : -INFINITY; break;
    case 7: x[i] = 2e7f + 2.0f * (float)(i % 7); break;         /* |max| s 1e7..6e7: a reference nats off the max */
    case 8: x[i] = 3e12f + 262144.0f * (float)(i % 7); break;   /* past what a float reference can place: the fallback */
    default: x[i] = (i / 256) % 2 ? u + 80.0f : u - 80.0f; break; /* blocks that jump both ways */
    }
  }
  if (kind == 5 && n > 2) x[n - 1] = 200.0f; /* a spike in the last (tail) element */
}

Test(spec, vocab_maxsum_bound_one_read) {
  static const size_t ns[] = {1, 3, 7, 8, 9, 15, 16, 17, 33, 255, 256, 257, 300, 1000, 4099, 8191, 8192};
  for (unsigned ii = 0; ii < sizeof isas / sizeof *isas; ii++) {
    heed_kernel_table t;
    if (!heed_kernels_compiled((heed_isa)isas[ii]) || !heed_isa_runs_on((heed_isa)isas[ii], heed_cpu_features_detect()))
      continue;
    cr_assert_eq(heed_kernels_build((heed_isa)isas[ii], &t, NULL), HEED_OK);
    heed_vocab_maxsum_bound_fn f = heed_kernel_vocab_maxsum_bound(&t);
    const char *nm = heed_isa_name((heed_isa)isas[ii]);
    uint64_t r = 4242 + ii;
    float *x = malloc(8192 * sizeof *x);
    for (unsigned li = 0; li < sizeof ns / sizeof *ns; li++)
      for (int kind = 0; kind < 9; kind++)
        for (int si = 0; si < 2; si++) {
          const size_t n = ns[li];
          const float s = si ? 3.0f : 0.7f;
          maxsum_row(x, n, kind, &r);
          double M = -INFINITY, ref = 0;
          for (size_t i = 0; i < n; i++) /* (not fmax: aarch64 gcc 12 fails to vectorise it) */
            if (x[i] > M) M = x[i];
          int bad = 0;
          float z = -1, bmax[8192 / HEED_VOCAB_BLOCK + 1], m;
          const size_t nb = (n + HEED_VOCAB_BLOCK - 1) / HEED_VOCAB_BLOCK;
          for (size_t b = 0; b <= nb && b < sizeof bmax / sizeof *bmax; b++) bmax[b] = 12345.0f; /* one past: untouched */
          m = f(x, n, s, &z, &bad, si ? bmax : NULL); /* with and without the block maxima */
          cr_assert_eq(bad, 0, "%s n=%zu kind %d: bad set on a finite row", nm, n, kind);
          cr_assert_eq(m, (float)M, "%s n=%zu kind %d: max %.9g want %.9g", nm, n, kind, m, M);
          for (size_t b = 0; si && b < nb; b++) {
            float want = -INFINITY;
            for (size_t i = b * HEED_VOCAB_BLOCK; i < n && i < (b + 1) * HEED_VOCAB_BLOCK; i++) want = x[i] > want ? x[i] : want;
            cr_assert_eq(bmax[b], want, "%s n=%zu kind %d: block %zu max %.9g want %.9g", nm, n, kind, b, bmax[b], want);
          }
          if (si && nb < sizeof bmax / sizeof *bmax)
            cr_assert_eq(bmax[nb], 12345.0f, "%s n=%zu: wrote past its %zu block maxima", nm, n, nb);
          if (M == -INFINITY) {
            cr_assert_eq(z, 0.0f, "%s n=%zu: all -inf gives z %g", nm, n, z);
            continue;
          }
          for (size_t i = 0; i < n; i++) ref += exp(((double)x[i] - M) * s);
          cr_assert(z / HEED_VOCAB_BOUND_HI - n * 0x1p-126 <= ref && ref <= z * HEED_VOCAB_BOUND_LO_INV,
                    "%s n=%zu kind %d s %g: %.9g does not bracket %.9g", nm, n, kind, s, z, ref);
        }
    /* NaN or +inf at the start, in the vector body, in a later block and in the tail */
    static const size_t at[] = {0, 5, 17, 300, 1002};
    for (unsigned ai = 0; ai < sizeof at / sizeof *at; ai++)
      for (int inf = 0; inf < 2; inf++) {
        const size_t n = 1003;
        maxsum_row(x, n, 0, &r);
        x[at[ai]] = inf ? INFINITY : NAN;
        int bad = 0;
        float z;
        f(x, n, 1.0f, &z, &bad, NULL);
        cr_assert_eq(bad, 1, "%s: %s at %zu not reported", nm, inf ? "+inf" : "NaN", at[ai]);
      }
    /* finite, but their plain sum overflows: not bad, and bracketed */
    for (int neg = 0; neg < 2; neg++) {
      const size_t n = 4099;
      double M = -INFINITY, ref = 0;
      for (size_t i = 0; i < n; i++) {
        x[i] = (neg && i % 2 ? -3e37f : 3e37f) * (1.0f + 0.01f * tu_uniform(&r));
        M = x[i] > M ? x[i] : M;
      }
      for (size_t i = 0; i < n; i++) ref += exp(((double)x[i] - M) * 1e-36);
      int bad = 0;
      float z, m = f(x, n, 1e-36f, &z, &bad, NULL);
      cr_assert_eq(bad, 0, "%s: a finite row whose sum overflows reported bad", nm);
      cr_assert_eq(m, (float)M, "%s: max %.9g want %.9g on huge values", nm, m, M);
      cr_assert(z / HEED_VOCAB_BOUND_HI - n * 0x1p-126 <= ref && ref <= z * HEED_VOCAB_BOUND_LO_INV,
                "%s: huge values, %.9g does not bracket %.9g", nm, z, ref);
    }
    free(x);
  }
}

Test(spec, vocab_kernels_against_fp64) {
  for (unsigned ii = 0; ii < sizeof isas / sizeof *isas; ii++) {
    heed_kernel_table t;
    if (!heed_kernels_compiled((heed_isa)isas[ii]) || !heed_isa_runs_on((heed_isa)isas[ii], heed_cpu_features_detect()))
      continue;
    cr_assert_eq(heed_kernels_build((heed_isa)isas[ii], &t, NULL), HEED_OK);
    const char *nm = heed_isa_name((heed_isa)isas[ii]);
    uint64_t r = 99 + ii;
    for (unsigned li = 0; li < sizeof lens / sizeof *lens; li++)
      for (int adv = 0; adv < 2; adv++) {
        size_t n = lens[li];
        float *x = malloc(n * 4), *w = malloc(n * 4), *q = malloc(n * 4), *w2 = malloc(n * 4);
        uint32_t *idx = malloc(n * 4);
        fill_row(x, n, &r, adv);
        size_t arg = 7777;
        int bad = 0;
        float m = heed_kernel_vocab_max(&t)(x, n, &arg, &bad);
        size_t ra = 0;
        for (size_t i = 1; i < n; i++)
          if (x[i] > x[ra]) ra = i;
        if (x[ra] == -INFINITY) ra = 0;
        cr_assert_eq(m, x[ra], "%s n=%zu max %g want %g", nm, n, m, x[ra]);
        cr_assert_eq(arg, ra, "%s n=%zu argmax %zu want %zu", nm, n, arg, ra);
        cr_assert_eq(bad, 0);
        if (m == -INFINITY) { /* every element masked: nothing to weigh */
          free(x), free(w), free(q), free(w2), free(idx);
          continue;
        }
        const float s = 0.7f, thr = adv ? 1.0f : -INFINITY;
        double ref = 0;
        for (size_t i = 0; i < n; i++)
          if (x[i] >= thr) ref += exp(((double)x[i] - m) * s);
        float z = heed_kernel_vocab_sumexp(&t)(x, n, m, s, thr);
        cr_assert(fabs(z - ref) <= 2e-6 * ref + 1e-30, "%s n=%zu sumexp %.9g want %.9g", nm, n, z, ref);
        /* The cheap sum brackets the true one (heed/kernels.h). */
        float zb = heed_kernel_vocab_sumexp_bound(&t)(x, n, m, s, thr);
        cr_assert(zb / HEED_VOCAB_BOUND_HI - n * 0x1p-126 <= ref && ref <= zb * HEED_VOCAB_BOUND_LO_INV,
                  "%s n=%zu sumexp_bound %.9g does not bracket %.9g", nm, n, zb, ref);
        for (size_t i = 0; i < n && i < 64; i++) { /* and each term on its own (32 copies: the SIMD path) */
          float same[32];
          for (int j = 0; j < 32; j++) same[j] = x[i];
          double e = exp(((double)x[i] - m) * s);
          float b = heed_kernel_vocab_sumexp_bound(&t)(same, 32, m, s, -INFINITY) / 32;
          if (e > 0x1p-126) cr_assert(b >= e * (1 - 3e-5) && b <= e * 1.0616, "%s term %.9g for %.9g", nm, b, e);
        }
        float zw = heed_kernel_vocab_weights(&t)(x, n, m, s, thr, 0.5f, w);
        cr_assert(fabs(zw - 0.5 * ref) <= 2e-6 * ref + 1e-30, "%s n=%zu weights sum %.9g want %.9g", nm, n, zw, 0.5 * ref);
        for (size_t i = 0; i < n; i++) {
          /* float (x - m) * s carries a relative error of 2^-23 of itself into exp */
          double arg = ((double)x[i] - m) * s, e = x[i] >= thr ? 0.5 * exp(arg) : 0;
          cr_assert(e == 0 ? w[i] == 0 : fabs(w[i] - e) <= (2.5e-7 + 1.2e-7 * fabs(arg)) * e + 1e-38, "%s n=%zu w[%zu] %.9g want %.9g", nm, n, i, w[i], e);
        }
        for (size_t i = 0; i < n; i++) q[i] = 0.3f * (tu_uniform(&r) + 1.0f);
        memcpy(w2, w, n * 4);
        float zr = heed_kernel_vocab_residual(&t)(w2, q, n, 2.0f, 0.25f);
        double rr = 0;
        for (size_t i = 0; i < n; i++) {
          double e = fmax(0.0, (double)w[i] * 2.0 - (double)q[i] * 0.25);
          cr_assert(fabs(w2[i] - e) <= 1e-6 * fabs(e) + 1e-7, "%s residual[%zu] %g want %g", nm, i, w2[i], e);
          rr += e;
        }
        cr_assert(fabs(zr - rr) <= 1e-5 * rr + 1e-6, "%s n=%zu residual sum %g want %g", nm, n, zr, rr);
        size_t c = heed_kernel_vocab_collect(&t)(x, n, 0.5f, idx), rc = 0;
        for (size_t i = 0; i < n; i++)
          if (x[i] >= 0.5f) {
            cr_assert(rc < c && idx[rc] == i, "%s n=%zu collect: entry %zu", nm, n, rc);
            rc++;
          }
        cr_assert_eq(c, rc);
        if (n > 2) { /* NaN and +inf are reported wherever they are */
          float keep = x[n - 2];
          x[n - 2] = NAN;
          bad = 0;
          heed_kernel_vocab_max(&t)(x, n, &arg, &bad);
          cr_assert_eq(bad, 1, "%s n=%zu: NaN not reported", nm, n);
          x[n - 2] = INFINITY, bad = 0;
          heed_kernel_vocab_max(&t)(x, n, &arg, &bad);
          cr_assert_eq(bad, 1, "%s n=%zu: +inf not reported", nm, n);
          x[n - 2] = keep;
        }
        free(x), free(w), free(q), free(w2), free(idx);
      }
  }
}

/* ---- the transforms against an fp64 reference ---- */

static int cmp_desc_f(const void *a, const void *b) {
  float x = *(const float *)a, y = *(const float *)b;
  return (x < y) - (x > y);
}

/* heed/spec.h's order: penalty, temperature, top-k, top-p, min-p, each cut
 * keeping ties. extra: draft tokens that join the penalty set. */
static void ref_probs(const float *x0, unsigned V, const heed_sampling *smp, const int32_t *extra, unsigned n_extra,
                      double *p) {
  float *v = malloc(V * 4), *srt = malloc(V * 4);
  memcpy(v, x0, V * 4);
  char *pen = calloc(V, 1);
  if (smp->repetition_penalty != 1.0f) {
    for (unsigned i = 0; i < smp->n_penalty_tokens; i++) pen[smp->penalty_tokens[i]] = 1;
    for (unsigned i = 0; i < n_extra; i++) pen[extra[i]] = 1;
    for (unsigned t = 0; t < V; t++)
      if (pen[t]) v[t] = v[t] > 0 ? v[t] / smp->repetition_penalty : v[t] * smp->repetition_penalty;
  }
  unsigned am = 0;
  for (unsigned t = 1; t < V; t++)
    if (v[t] > v[am]) am = t;
  if (smp->temperature == 0) {
    for (unsigned t = 0; t < V; t++) p[t] = t == am;
    goto done;
  }
  double T = smp->temperature, m = v[am];
  memcpy(srt, v, V * 4);
  qsort(srt, V, 4, cmp_desc_f);
  float thr = -INFINITY;
  unsigned nk = V;
  if (smp->top_k && smp->top_k < V) {
    thr = srt[smp->top_k - 1];
    nk = 0;
    while (nk < V && srt[nk] >= thr) nk++;
  }
  if (smp->top_p < 1) {
    double z = 0, cum = 0;
    for (unsigned i = 0; i < nk; i++) z += exp((srt[i] - m) / T);
    for (unsigned i = 0; i < nk; i++) {
      cum += exp((srt[i] - m) / T);
      if (cum >= smp->top_p * z) {
        if (srt[i] > thr) thr = srt[i];
        break;
      }
    }
  }
  if (smp->min_p > 0 && m + T * log(smp->min_p) > thr) thr = (float)(m + T * log(smp->min_p));
  double z = 0;
  for (unsigned t = 0; t < V; t++) z += (p[t] = v[t] >= thr ? exp((v[t] - m) / T) : 0);
  for (unsigned t = 0; t < V; t++) p[t] /= z;
done:
  free(v), free(srt), free(pen);
}

static heed_sampling samp(float T, unsigned k, float tp, float mp, float pen, const int32_t *pt, unsigned npt) {
  heed_sampling s;
  heed_sampling_init(&s);
  s.temperature = T, s.top_k = k, s.top_p = tp, s.min_p = mp, s.repetition_penalty = pen;
  s.penalty_tokens = pt, s.n_penalty_tokens = npt;
  return s;
}

Test(spec, transforms_against_fp64) {
  static const unsigned vocabs[] = {2, 17, 1000, 40007};
  int32_t pt[40];
  for (unsigned ii = 0; ii < sizeof variants / sizeof *variants; ii++) {
    heed_runtime *rt = open_rt(variants[ii], 0);
    if (!rt) continue;
    uint64_t r = 7 + ii;
    for (unsigned vi = 0; vi < sizeof vocabs / sizeof *vocabs; vi++) {
      unsigned V = vocabs[vi];
      heed_spec *s = open_spec(rt, V, 4);
      float *x = malloc(V * 4), *p = malloc(V * 4);
      double *ref = malloc(V * 8);
      for (unsigned i = 0; i < 40; i++) pt[i] = (int32_t)(tu_next(&r) % V);
      for (int adv = 0; adv < 3; adv++) {
        /* adv 2: logits over 120 nats, so cuts land beyond the histograms' range */
        for (unsigned i = 0; i < V; i++) x[i] = (adv == 2 ? 120.0f : 8.0f) * tu_uniform(&r);
        if (adv == 1) { /* ties, masked tokens, a dominant logit */
          for (unsigned i = 0; i + 3 < V; i += 7) x[i + 1] = x[i];
          for (unsigned i = 2; i < V; i += 11) x[i] = -INFINITY;
          x[V / 2] = 60.0f;
        }
        heed_sampling cases[] = {
            samp(1.0f, 0, 1, 0, 1, NULL, 0),       samp(0.6f, 0, 1, 0, 1, NULL, 0),
            samp(1.3f, 5, 1, 0, 1, NULL, 0),       samp(1.0f, 0, 0.9f, 0, 1, NULL, 0),
            samp(0.8f, 0, 0.5f, 0, 1, NULL, 0),    samp(1.0f, 0, 1, 0.05f, 1, NULL, 0),
            samp(0.7f, 40, 0.95f, 0.01f, 1, NULL, 0), samp(1.0f, 0, 0.9f, 0, 1.5f, pt, 40),
            samp(0.9f, 3, 0.8f, 0, 0.7f, pt, 40),  samp(0, 0, 1, 0, 1.3f, pt, 40),
            samp(1.0f, V / 2 + 1, 1, 0, 1, NULL, 0), samp(0.5f, V - 1, 0.999999f, 0, 1, NULL, 0),
        };
        for (unsigned ci = 0; ci < sizeof cases / sizeof *cases; ci++) {
          heed_sampling *sm = &cases[ci];
          if (sm->top_k > V) sm->top_k = V;
          cr_assert_eq(heed_spec_probs(s, sm, x, p), HEED_OK, "%s", heed_spec_last_error(s));
          ref_probs(x, V, sm, NULL, 0, ref);
          double err = 0, tot = 0;
          for (unsigned t = 0; t < V; t++) {
            err = fmax(err, fabs(p[t] - ref[t]) / (ref[t] + 1e-7));
            tot += p[t];
            if (ref[t] == 0) cr_assert_eq(p[t], 0.0f, "%s V=%u case %u: token %u cut by the reference has p %g",
                                          variant_name(variants[ii]), V, ci, t, p[t]);
          }
          cr_assert(err < 2e-4, "%s V=%u adv=%d case %u: relative error %g", variant_name(variants[ii]), V, adv,
                    ci, err);
          cr_assert(fabs(tot - 1) < 1e-4, "sum %g", tot);
        }
      }
      free(x), free(p), free(ref);
      heed_spec_destroy(s);
    }
    heed_runtime_close(rt);
  }
}

/* ---- a toy model: logits as a function of the context ---- */

static void toy_logits(const int32_t *ctx, unsigned n, unsigned V, float *out) {
  uint64_t h = 0x1234567ull + (n ? (uint64_t)ctx[n - 1] * 1000003u : 0) + (n > 1 ? (uint64_t)ctx[n - 2] * 7919u : 0);
  for (unsigned t = 0; t < V; t++) out[t] = 3.0f * tu_uniform(&h);
}

/* Greedy verification gives plain greedy decoding's tokens, with and without
 * a repetition penalty (where the drafts join the penalty set row by row). */
Test(spec, greedy_verification_equals_greedy_decoding) {
  const unsigned V = 300, N = 160;
  heed_runtime *rt = open_rt(HEED_ISA_AUTO, 0);
  heed_spec *s = open_spec(rt, V, 16);
  float *rows = malloc((size_t)17 * V * 4);
  for (int pen = 0; pen < 2; pen++) {
    int32_t plain[200], seq[240];
    unsigned n = 0, calls = 0, accepted = 0;
    plain[0] = seq[0] = 5;
    for (unsigned i = 1; i < N; i++) {
      heed_sampling g = samp(0, 0, 1, 0, pen ? 1.4f : 1.0f, plain, i);
      toy_logits(plain, i, V, rows);
      cr_assert_eq(heed_spec_sample(s, &g, 1, i, rows, &plain[i]), HEED_OK, "%s", heed_spec_last_error(s));
    }
    heed_drafter *d;
    heed_ngram_config nc = {.vocab = V, .capacity = 1024};
    cr_assert_eq(heed_ngram_drafter_create(&nc, &d, NULL), HEED_OK);
    n = 1;
    cr_assert_eq(heed_drafter_append(d, seq, 1), HEED_OK);
    uint64_t r = 3;
    while (n < N) {
      heed_draft dr;
      cr_assert_eq(heed_drafter_propose(d, 8, &dr), HEED_OK);
      int32_t draft[16];
      unsigned k = dr.n;
      memcpy(draft, dr.tokens, k * 4);
      if (k == 0) { /* nothing to look up: a guess, right or wrong */
        k = 3;
        for (unsigned i = 0; i < k; i++) draft[i] = (int32_t)(tu_next(&r) % V);
        if (n + 1 < N) draft[0] = plain[n];
      }
      int32_t ctx[260];
      memcpy(ctx, seq, n * 4);
      for (unsigned i = 0; i <= k; i++) {
        if (i) ctx[n + i - 1] = draft[i - 1];
        toy_logits(ctx, n + i, V, rows + (size_t)i * V);
      }
      heed_sampling g = samp(0, 0, 1, 0, pen ? 1.4f : 1.0f, seq, n);
      heed_spec_result res;
      cr_assert_eq(heed_spec_verify_chain(s, &g, 1, n, rows, draft, k, NULL, &res), HEED_OK, "%s",
                   heed_spec_last_error(s));
      for (unsigned i = 0; i < res.n_accepted; i++) {
        cr_assert_eq(res.path[i], (int32_t)i);
        seq[n + i] = draft[i];
      }
      seq[n + res.n_accepted] = res.next_token;
      cr_assert_eq(heed_drafter_append(d, seq + n, res.n_accepted + 1), HEED_OK);
      n += res.n_accepted + 1, calls++, accepted += res.n_accepted;
    }
    for (unsigned i = 0; i < N; i++) cr_assert_eq(seq[i], plain[i], "penalty %d: token %u is %d, greedy gives %d", pen, i, seq[i], plain[i]);
    cr_assert(accepted > 0, "some drafts must be accepted (%u calls)", calls);
    cr_assert(calls < N - 1, "verification must save calls: %u for %u tokens", calls, N);
    heed_drafter_destroy(d);
  }
  free(rows);
  heed_spec_destroy(s);
  heed_runtime_close(rt);
}

/* ---- the rejection sampler's output distribution ---- */

#define TRIALS 100000
/* The verifier's draws: a quarter of them under the emulator (NEON under qemu,
 * single-threaded: 35 s of the arm64 suite), where a correct verifier's
 * chi-square keeps its law and the planted faults still land near 100x over
 * the limit they must pass 4x (14874, 26517, 20703 at the full count). */
#define VERIFY_TRIALS (HEED_TEST_EMULATED ? TRIALS / 4 : TRIALS)

/* Wilson-Hilferty: the chi-square value exceeded with probability about 1e-5. */
static double chi2_crit(int df) {
  double a = 2.0 / (9.0 * df), z = 4.265;
  return df * pow(1 - a + z * sqrt(a), 3);
}

/* Chi-square of observed counts against probabilities; an observation where
 * p is 0 is infinitely unlikely. */
static double chi2(const long *obs, const double *p, int n, long N, int *df) {
  double c = 0;
  *df = -1;
  for (int i = 0; i < n; i++) {
    double e = p[i] * N;
    if (e == 0) {
      if (obs[i]) return INFINITY;
      continue;
    }
    c += (obs[i] - e) * (obs[i] - e) / e;
    (*df)++;
  }
  return c;
}

/* Observed counts must pass the chi-square test against p. */
static void assert_law(const long *obs, const double *p, int n, const char *what) {
  int df;
  double c = chi2(obs, p, n, TRIALS, &df);
  cr_assert(c < chi2_crit(df), "%s: chi-square %.1f over %d df (limit %.1f)", what, c, df, chi2_crit(df));
}

static int draw_from(const double *p, int n, uint64_t *r) {
  double u = (tu_next(r) >> 11) * 0x1p-53, c = 0;
  for (int i = 0; i < n; i++) {
    c += p[i];
    if (u < c) return i;
  }
  for (int i = n; i-- > 0;)
    if (p[i] > 0) return i;
  return 0;
}

enum { QK_DENSE_PROBS, QK_DENSE_LOGITS, QK_SPARSE, QK_ONEHOT };

/* First-token distribution of chain verification with k = 2 drafts (or a
 * tree: root children drawn i.i.d. from q), for one q kind and transform.
 * Returns the chi-square statistic over df. */
static double first_token_chi2(heed_runtime *rt, int qkind, int tree, const heed_sampling *sm, int fault, int *df) {
  enum { V = 9 };
  heed_spec *s = open_spec(rt, V, 8);
  heed_spec_set_fault(s, fault);
  uint64_t r = 1000 + (uint64_t)qkind * 10 + (uint64_t)tree;
  /* target rows: one per node and the root's (the 4-node tree reads 5) */
  float tgt[5][V], qlog[V], qd[4][V];
  for (int i = 0; i < 4; i++)
    for (int t = 0; t < V; t++) tgt[i][t] = 2.0f * tu_uniform(&r);
  for (int t = 0; t < V; t++) qlog[t] = 2.0f * tu_uniform(&r);
  for (int t = 0; t < V; t++) tgt[4][t] = 2.0f * tu_uniform(&r);
  double p[V], q[V];
  ref_probs(tgt[0], V, sm, NULL, 0, p);
  /* q: the draft's distribution (transformed like p for logits; sparse: its top 4). */
  if (qkind == QK_DENSE_LOGITS) {
    ref_probs(qlog, V, sm, NULL, 0, q);
  } else {
    heed_sampling plain = samp(1, 0, 1, 0, 1, NULL, 0);
    ref_probs(qlog, V, &plain, NULL, 0, q);
    if (qkind == QK_SPARSE) {
      for (int t = 0; t < V; t++)
        if (t % 2) q[t] = 0;
      double z = 0;
      for (int t = 0; t < V; t++) z += q[t];
      for (int t = 0; t < V; t++) q[t] /= z;
    }
  }
  int32_t ids[4][V];
  float probs[4][V];
  for (int i = 0; i < 4; i++)
    for (int t = 0; t < V; t++) {
      qd[i][t] = qkind == QK_DENSE_LOGITS ? qlog[t] : (float)q[t];
      ids[i][t] = q[t] > 0 ? t : -1, probs[i][t] = (float)q[t];
    }
  heed_draft_q dq = {.kind = qkind == QK_DENSE_PROBS    ? HEED_DRAFT_DENSE_PROBS
                             : qkind == QK_DENSE_LOGITS ? HEED_DRAFT_DENSE_LOGITS
                             : qkind == QK_SPARSE       ? HEED_DRAFT_SPARSE
                                                        : HEED_DRAFT_ONEHOT,
                     .dense = &qd[0][0], .ids = &ids[0][0], .probs = &probs[0][0], .n_sparse = V};
  long obs[V] = {0};
  /* tree: three root children and one grandchild; chain: two drafts. */
  const int32_t parents_tree[4] = {-1, -1, 0, -1};
  for (long n = 0; n < VERIFY_TRIALS; n++) {
    int32_t tok[4];
    if (qkind == QK_ONEHOT) { /* deterministic drafts: distinct tokens */
      tok[0] = 2, tok[1] = 5, tok[2] = 7, tok[3] = 4;
    } else {
      for (int i = 0; i < 4; i++) tok[i] = draw_from(q, V, &r);
    }
    heed_spec_result res;
    heed_status st = tree ? heed_spec_verify_tree(s, sm, 77, (uint64_t)n, &tgt[0][0], tok, parents_tree, 4, &dq, &res)
                          : heed_spec_verify_chain(s, sm, 77, (uint64_t)n, &tgt[0][0], tok, 2, &dq, &res);
    cr_assert_eq(st, HEED_OK, "%s", heed_spec_last_error(s));
    int first = res.n_accepted ? tok[res.path[0]] : res.next_token;
    cr_assert(first >= 0 && first < V);
    obs[first]++;
  }
  heed_spec_destroy(s);
  return chi2(obs, p, V, VERIFY_TRIALS, df);
}

static void expect_chi2(heed_runtime *rt, int qkind, int tree, heed_sampling sm, int fault, int want_pass, const char *what) {
  int df;
  double c = first_token_chi2(rt, qkind, tree, &sm, fault, &df);
  cr_log_info("%s: chi-square %.1f over %d df (limit %.1f)", what, c, df, chi2_crit(df));
  if (want_pass)
    cr_assert(c < chi2_crit(df), "%s: chi-square %.1f over %d df (limit %.1f)", what, c, df, chi2_crit(df));
  else
    cr_assert(c > 4 * chi2_crit(df), "%s: a broken verifier passed with chi-square %.1f over %d df (limit %.1f)", what, c,
              df, chi2_crit(df));
}

Test(spec, rejection_sampling_keeps_the_target_distribution, .timeout = 240 * HEED_TEST_TIMEOUT_SCALE) {
  heed_runtime *rt = open_rt(HEED_ISA_AUTO, 1);
  heed_sampling plain = samp(1, 0, 1, 0, 1, NULL, 0), cut = samp(0.7f, 6, 0.9f, 0.02f, 1, NULL, 0);
  expect_chi2(rt, QK_DENSE_PROBS, 0, plain, 0, 1, "chain, dense q");
  expect_chi2(rt, QK_DENSE_LOGITS, 0, cut, 0, 1, "chain, dense q logits, temperature + top-k + top-p + min-p");
  expect_chi2(rt, QK_SPARSE, 0, plain, 0, 1, "chain, sparse q");
  expect_chi2(rt, QK_ONEHOT, 0, cut, 0, 1, "chain, one-hot q");
  expect_chi2(rt, QK_DENSE_PROBS, 1, plain, 0, 1, "tree, children i.i.d. from q");
  expect_chi2(rt, QK_DENSE_LOGITS, 1, cut, 0, 1, "tree, dense q logits with cuts");
  expect_chi2(rt, QK_ONEHOT, 1, plain, 0, 1, "tree, distinct deterministic children");
  /* The same test catches the classic bugs. */
  expect_chi2(rt, QK_DENSE_PROBS, 0, plain, HEED_SPEC_FAULT_NO_RESIDUAL, 0, "chain, residual not taken");
  expect_chi2(rt, QK_DENSE_PROBS, 0, plain, HEED_SPEC_FAULT_IGNORE_Q, 0, "chain, q ignored");
  expect_chi2(rt, QK_ONEHOT, 1, plain, HEED_SPEC_FAULT_NO_RESIDUAL, 0, "tree, residual not taken");
  heed_runtime_close(rt);
}

/* The first two tokens of generation with chain verification (k = 2, dense
 * draft depending on the first draft token) have the target's joint law. */
Test(spec, two_token_joint_distribution, .timeout = 120 * HEED_TEST_TIMEOUT_SCALE) {
  enum { V = 5 };
  heed_runtime *rt = open_rt(HEED_ISA_AUTO, 1);
  heed_spec *s = open_spec(rt, V, 4);
  heed_sampling sm = samp(0.9f, 0, 1, 0, 1, NULL, 0);
  float rows[3][V], q2[V][V], q1[V];
  uint64_t r = 5;
  for (int t = 0; t < V; t++) q1[t] = (float)(0.2 + 0.1 * (t % 3));
  for (int a = 0; a < V; a++) {
    float z = 0;
    for (int t = 0; t < V; t++) z += (q2[a][t] = (float)(1 + ((a + t) % V)));
    for (int t = 0; t < V; t++) q2[a][t] /= z;
  }
  float z1 = 0;
  for (int t = 0; t < V; t++) z1 += q1[t];
  for (int t = 0; t < V; t++) q1[t] /= z1;
  double pj[V * V];
  {
    double p0[V], p1[V];
    int32_t c[1];
    toy_logits(NULL, 0, V, rows[0]);
    ref_probs(rows[0], V, &sm, NULL, 0, p0);
    for (int a = 0; a < V; a++) {
      c[0] = a;
      toy_logits(c, 1, V, rows[1]);
      ref_probs(rows[1], V, &sm, NULL, 0, p1);
      for (int b = 0; b < V; b++) pj[a * V + b] = p0[a] * p1[b];
    }
  }
  long obs[V * V] = {0};
  for (long n = 0; n < TRIALS; n++) {
    double qq[V];
    for (int t = 0; t < V; t++) qq[t] = q1[t];
    int32_t d[2];
    d[0] = draw_from(qq, V, &r);
    for (int t = 0; t < V; t++) qq[t] = q2[d[0]][t];
    d[1] = draw_from(qq, V, &r);
    float qd[2][V];
    memcpy(qd[0], q1, sizeof q1), memcpy(qd[1], q2[d[0]], sizeof q1);
    toy_logits(NULL, 0, V, rows[0]);
    toy_logits(d, 1, V, rows[1]);
    toy_logits(d, 2, V, rows[2]);
    heed_draft_q dq = {.kind = HEED_DRAFT_DENSE_PROBS, .dense = &qd[0][0]};
    heed_spec_result res;
    cr_assert_eq(heed_spec_verify_chain(s, &sm, 9, (uint64_t)n * 2, &rows[0][0], d, 2, &dq, &res), HEED_OK, "%s",
                 heed_spec_last_error(s));
    int32_t out[3];
    unsigned m = 0;
    for (unsigned i = 0; i < res.n_accepted; i++) out[m++] = d[i];
    out[m++] = res.next_token;
    if (m < 2) { /* the second token by plain sampling */
      float row[V];
      toy_logits(out, 1, V, row);
      cr_assert_eq(heed_spec_sample(s, &sm, 9, (uint64_t)n * 2 + 1, row, &out[1]), HEED_OK);
    }
    obs[out[0] * V + out[1]]++;
  }
  assert_law(obs, pj, V * V, "joint law");
  heed_spec_destroy(s);
  heed_runtime_close(rt);
}

/* Plain sampling (the verifier's sampler with no draft) follows the transformed p. */
Test(spec, sampling_follows_the_transformed_distribution) {
  enum { V = 12 };
  heed_runtime *rt = open_rt(HEED_ISA_AUTO, 1);
  heed_spec *s = open_spec(rt, V, 1);
  int32_t pt[3] = {0, 4, 4};
  heed_sampling sm = samp(1.2f, 8, 0.85f, 0.03f, 1.5f, pt, 3);
  float x[V];
  uint64_t r = 11;
  for (int t = 0; t < V; t++) x[t] = 2.0f * tu_uniform(&r);
  double p[V];
  ref_probs(x, V, &sm, NULL, 0, p);
  long obs[V] = {0};
  for (long n = 0; n < TRIALS; n++) {
    int32_t t;
    cr_assert_eq(heed_spec_sample(s, &sm, 3, (uint64_t)n, x, &t), HEED_OK);
    obs[t]++;
  }
  assert_law(obs, p, V, "plain sampling");
  heed_spec_destroy(s);
  heed_runtime_close(rt);
}

/* A long row's token, drawn as spec_internal.h says, against the same draw
 * from fp64 probabilities: the chunk by u over the chunk masses, the block
 * by u2 inside it, the token by u3 inside that. The verifier picks the
 * chunk and the block from bounded sums, made exact only where they leave a
 * doubt, so this is where a wrong bracket or an unrefined decision would
 * show. Returns how many draws differ (draws
 * within 1e-5 of a boundary, where rounding may decide, are not counted). */
static unsigned long_row_mismatches(heed_runtime *rt, const float *x, unsigned V, const heed_sampling *sm, unsigned n_seeds,
                                    int fault, unsigned *n_checked, unsigned *n_cand, unsigned *n_hist) {
  heed_spec *s = open_spec(rt, V, 1);
  heed_spec_set_fault(s, fault);
  double *p = malloc(sizeof(double) * V);
  ref_probs(x, V, sm, NULL, 0, p);
  const unsigned nc = (V + HEED_SPEC_CHUNK - 1) / HEED_SPEC_CHUNK;
  double cm[16] = {0};
  for (unsigned t = 0; t < V; t++) cm[t / HEED_SPEC_CHUNK] += p[t];
  unsigned bad = 0, checked = 0;
  for (unsigned seed = 0; seed < n_seeds; seed++) {
    int32_t tok;
    cr_assert_eq(heed_spec_sample(s, sm, seed, 3, x, &tok), HEED_OK, "%s", heed_spec_last_error(s));
    cr_assert(tok >= 0 && (unsigned)tok < V && p[tok] > 0, "seed %u: token %d has p %g", seed, tok, tok >= 0 ? p[tok] : -1);
    const double u = heed_spec_uniform(seed, 3, HEED_SPEC_DRAW_CHUNK), u2 = heed_spec_uniform(seed, 3, HEED_SPEC_DRAW_WITHIN),
                 u3 = heed_spec_uniform(seed, 3, HEED_SPEC_DRAW_TOKEN);
    double c = 0, near = 1;
    unsigned j = nc - 1;
    for (unsigned k = 0; k < nc; k++) {
      c += cm[k];
      near = fmin(near, fabs(c - u));
      if (c > u) {
        j = k;
        break;
      }
    }
    /* the block inside the chunk by u2, the token inside the block by u3 */
    const unsigned a = j * HEED_SPEC_CHUNK, b = a + HEED_SPEC_CHUNK < V ? a + HEED_SPEC_CHUNK : V;
    unsigned ba = a, bb = a + HEED_SPEC_BLOCK < b ? a + HEED_SPEC_BLOCK : b, want = b - 1;
    c = 0;
    for (unsigned k = a; k < b; k += HEED_SPEC_BLOCK) {
      const unsigned e = k + HEED_SPEC_BLOCK < b ? k + HEED_SPEC_BLOCK : b;
      double mk = 0;
      for (unsigned t = k; t < e; t++) mk += p[t];
      c += mk / cm[j];
      near = fmin(near, fabs(c - u2));
      ba = k, bb = e;
      if (c > u2) break;
    }
    double mb = 0;
    for (unsigned t = ba; t < bb; t++) mb += p[t];
    c = 0;
    for (unsigned t = ba; t < bb; t++) {
      c += p[t] / mb;
      near = fmin(near, fabs(c - u3));
      if (c > u3) {
        want = t;
        break;
      }
    }
    if (near < 1e-5) continue;
    checked++;
    bad += (unsigned)tok != want;
  }
  if (n_cand) heed_spec_cut_counts(s, n_cand, n_hist);
  heed_spec_destroy(s);
  free(p);
  *n_checked = checked;
  return bad;
}

Test(spec, long_rows_draw_what_exact_sums_draw, .timeout = 240 * HEED_TEST_TIMEOUT_SCALE) {
  const unsigned V = 9 * HEED_SPEC_CHUNK + 77; /* ten chunks, the last short; read lazily, on the pool */
  float *x = malloc(sizeof(float) * V);
  int32_t pt[3] = {8191, 8192, 40000};
  const heed_sampling plain = samp(1, 0, 1, 0, 1, NULL, 0), cut = samp(0.7f, 5000, 0.9f, 0, 1.3f, pt, 3),
                      k50 = samp(0.9f, 50, 0.9f, 0, 1.2f, pt, 3), topp = samp(1.1f, 0, 0.8f, 0.01f, 1, NULL, 0),
                      k20 = samp(1, 20, 1, 0, 1, NULL, 0), topp_flat = samp(1, 0, 0.5f, 0, 1, NULL, 0);
  /* Rows, the sampling, and how the cut is found: 1 from a few candidates,
   * 0 by the histogram (too many candidates, or a k past the fast path),
   * -1 no cut. */
  static const struct { int data; int smp; int cand; } kinds[] = {
      {0, 0, -1}, {1, 0, -1}, {2, 0, -1}, {3, 1, 0}, /* no cut; top-k 5000 */
      {4, 2, 1},                                     /* top-k 50 with ties at the 50th, top-p, penalties */
      {2, 3, 1},                                     /* top-p with min-p on a model's spread */
      {5, 4, 0},                                     /* top-k 20 tied with half the row */
      {0, 5, 0},                                     /* top-p over a flat row: thousands kept */
      {6, 0, -1},                                    /* blocks whose bounded sums err by 0 and by 6% */
  };
  const heed_sampling *smps[] = {&plain, &cut, &k50, &topp, &k20, &topp_flat};
  for (unsigned kind = 0; kind < sizeof kinds / sizeof *kinds; kind++) {
    const int d = kinds[kind].data;
    uint64_t r = 500 + (uint64_t)d;
    for (unsigned t = 0; t < V; t++) {
      const double g = tu_uniform(&r);
      /* 0: chunks of about equal mass, each about flat, every other one led
       * by a token ln(2) / 2 above the rest: chunks are summed against their
       * own max, so the cheap exp errs by 0 in one chunk and by 6% in the
       * next (bounded sums move each boundary by ~0.3% of the mass), and
       * the intervals of the sums leave every boundary in doubt */
      x[t] = d == 0 ? (float)(0.02 * g + (t % HEED_SPEC_CHUNK || !(t / HEED_SPEC_CHUNK % 2) ? 0 : 0.34657))
           : d == 1 ? (float)(90 * g - 80)            /* from -80 to 10: chunk masses far apart */
           : d == 2 ? (float)(8 * g - 6)              /* a model's spread ... */
           : d == 3 ? (float)(3 * g)                  /* (cut, penalised) */
           : d == 4 ? (float)(4 * g)                  /* (60 tokens tied at the 50th largest, below) */
           : d == 5 ? (float)(g > 0 ? 1.0 : g)        /* half the row tied at the max */
                    /* 6: every other block ln(2) / 2 higher, under a max of 1: (x - m) log2(e) is near
                     * an integer in one block and half-way in the next */
                    : (float)(0.01 * g + (t / HEED_SPEC_BLOCK % 2 ? 0.34657 : 0));
    }
    if (d == 6) x[0] = 1.0f;
    if (d == 2) x[12345] = 14.0f, x[8191] = 12.5f, x[8192] = 12.5f, x[V - 1] = 13.0f; /* ... and a few heavy tokens */
    if (d == 4)
      for (unsigned i = 0; i < 60; i++) x[(i * 7919u + 11) % V] = 3.999f; /* 8 above: the 50th is one of them */
    const heed_sampling *sm = smps[kinds[kind].smp];
    for (unsigned ii = 0; ii < sizeof variants / sizeof *variants; ii++) {
      heed_runtime *rt = open_rt(variants[ii], 2);
      if (!rt) continue;
      unsigned cand1 = 0, hist1 = 0;
      unsigned checked, bad = long_row_mismatches(rt, x, V, sm, kind == 0 ? 300 : 100, 0, &checked, &cand1, &hist1);
      cr_assert(checked > (kind == 0 ? 250u : 80u), "%s row %u: only %u draws checked", variant_name(variants[ii]), kind, checked);
      cr_assert_eq(bad, 0, "%s row %u: %u of %u draws differ from the fp64 draw", variant_name(variants[ii]), kind, bad, checked);
      if (variants[ii] != ON_OPENCL) { /* the path the cut took (the device has its own) */
        const int want = kinds[kind].cand;
        cr_assert(want < 0 ? cand1 + hist1 == 0 : want ? cand1 > 0 && hist1 == 0 : hist1 > 0 && cand1 == 0,
                  "%s row %u: cuts from candidates %u, by histogram %u", variant_name(variants[ii]), kind, cand1, hist1);
      }
      /* The bugs this test exists for, planted in the C logic every level shares:
       * natively only (under the emulator they were three quarters of its draws). */
      if (kind == 0 && variants[ii] != ON_OPENCL && !HEED_TEST_EMULATED) {
        unsigned c2, b1 = long_row_mismatches(rt, x, V, sm, 1500, HEED_SPEC_FAULT_BOUNDED_DRAW, &c2, NULL, NULL); /* ~1.4% differ */
        cr_assert(b1 >= 5, "%s: chunks picked from bounded sums went unnoticed (%u of %u differ)", variant_name(variants[ii]), b1, c2);
        unsigned b2 = long_row_mismatches(rt, x, V, sm, 100, HEED_SPEC_FAULT_SAME_U, &c2, NULL, NULL);
        cr_assert(b2 > c2 / 2, "%s: one uniform for chunk and block went unnoticed (%u of %u differ)", variant_name(variants[ii]), b2, c2);
      }
      if (d == 6 && variants[ii] != ON_OPENCL && !HEED_TEST_EMULATED) {
        unsigned c2, b1 = long_row_mismatches(rt, x, V, sm, 1500, HEED_SPEC_FAULT_BOUNDED_BLOCK, &c2, NULL, NULL);
        cr_assert(b1 >= 5, "%s: blocks picked from bounded sums went unnoticed (%u of %u differ)", variant_name(variants[ii]), b1, c2);
      }
      heed_runtime_close(rt);
    }
  }
  free(x);
}

/* ---- trees ---- */

Test(spec, tree_mask_shape) {
  /*        root
   *       /  |  \
   *      0   1   4
   *     / \      |
   *    2   3     5     */
  const int32_t par[6] = {-1, -1, 0, 0, -1, 4};
  uint8_t m[49];
  cr_assert_eq(heed_spec_tree_mask(par, 6, m, NULL), HEED_OK);
  static const uint8_t want[7][7] = {{1, 0, 0, 0, 0, 0, 0}, {1, 1, 0, 0, 0, 0, 0}, {1, 0, 1, 0, 0, 0, 0},
                                     {1, 1, 0, 1, 0, 0, 0}, {1, 1, 0, 0, 1, 0, 0}, {1, 0, 0, 0, 0, 1, 0},
                                     {1, 0, 0, 0, 0, 1, 1}};
  for (int i = 0; i < 7; i++)
    for (int j = 0; j < 7; j++) cr_assert_eq(m[i * 7 + j], want[i][j], "mask[%d][%d]", i, j);
  heed_error e = {0};
  const int32_t badp[3] = {-1, 2, 0};
  cr_assert_eq(heed_spec_tree_mask(badp, 3, m, &e), HEED_E_INVALID);
  cr_assert(strstr(e.msg, "node 1") && strstr(e.msg, "is 2"), "%s", e.msg);
}

/* Decode with the tree mask gives each node what decoding its own path as a
 * chain gives: the mask is what attention over a token tree needs. */
Test(spec, tree_mask_drives_decode_attention) {
  const int32_t par[6] = {-1, -1, 0, 0, -1, 4};
  const unsigned n = 6, C = 37, H = 2, HK = 1, D = 64, L = C + n + 1;
  heed_runtime *rt = open_rt(HEED_ISA_AUTO, 0);
  heed_kv_cache_config cfg = {.n_kv_heads = HK, .dk = D, .dv = D, .k_dtype = HEED_DTYPE_F32, .v_dtype = HEED_DTYPE_F32,
                              .block_len = 16, .n_blocks = 64, .max_seqs = 8, .max_seq_len = 64};
  size_t bytes;
  cr_assert_eq(heed_kv_cache_bytes(rt, &cfg, &bytes, NULL), HEED_OK);
  void *mem = aligned_alloc(64, (bytes + 63) / 64 * 64);
  heed_kv_cache *c;
  cr_assert_eq(heed_kv_cache_create(rt, &cfg, mem, bytes, &c, NULL), HEED_OK);
  float *K = malloc((size_t)L * HK * D * 4), *Vv = malloc((size_t)L * HK * D * 4), *q = malloc((size_t)(n + 1) * H * D * 4);
  uint64_t r = 17;
  for (size_t i = 0; i < (size_t)L * HK * D; i++) K[i] = tu_uniform(&r), Vv[i] = tu_uniform(&r);
  for (size_t i = 0; i < (size_t)(n + 1) * H * D; i++) q[i] = tu_uniform(&r);
  int seq;
  cr_assert_eq(heed_kv_seq_new(c, &seq), HEED_OK);
  cr_assert_eq(heed_kv_seq_append(c, seq, L, K, Vv), HEED_OK);
  uint8_t mask[49];
  cr_assert_eq(heed_spec_tree_mask(par, n, mask, NULL), HEED_OK);
  heed_attn_params p = {.n_q_heads = H, .n_kv_heads = HK, .dk = D, .dv = D, .scale = 0.125f};
  heed_attn_decode_seq ds = {.kv = {.seq = seq}, .n_q = n + 1, .tree_mask = mask};
  size_t wsb;
  cr_assert_eq(heed_attn_decode_workspace(rt, &p, &ds, 1, &wsb), HEED_OK);
  void *ws = malloc(wsb + 64);
  float *out = malloc((size_t)(n + 1) * H * D * 4), one[2 * 64];
  cr_assert_eq(heed_attn_decode(rt, c, &p, &ds, 1, q, out, NULL, ws, wsb), HEED_OK);
  for (unsigned i = 0; i <= n; i++) { /* query i: the root (i = 0) or node i - 1 */
    unsigned path[8], np = 0;
    for (int u = (int)i - 1; u >= 0; u = par[u]) path[np++] = (unsigned)u + 1;
    path[np++] = 0;
    int s2;
    cr_assert_eq(heed_kv_seq_new(c, &s2), HEED_OK);
    cr_assert_eq(heed_kv_seq_append(c, s2, C, K, Vv), HEED_OK);
    for (unsigned j = np; j-- > 0;) /* root first, down to the node */
      cr_assert_eq(heed_kv_seq_append(c, s2, 1, K + (size_t)(C + path[j]) * HK * D, Vv + (size_t)(C + path[j]) * HK * D),
                   HEED_OK);
    heed_attn_decode_seq d1 = {.kv = {.seq = s2}, .n_q = 1};
    size_t w1;
    cr_assert_eq(heed_attn_decode_workspace(rt, &p, &d1, 1, &w1), HEED_OK);
    void *ws1 = malloc(w1 + 64);
    cr_assert_eq(heed_attn_decode(rt, c, &p, &d1, 1, q + (size_t)i * H * D, one, NULL, ws1, w1), HEED_OK);
    for (unsigned k = 0; k < H * D; k++)
      cr_assert(fabsf(one[k] - out[(size_t)i * H * D + k]) < 1e-5f, "query %u element %u: %g vs chain %g", i, k,
                out[(size_t)i * H * D + k], one[k]);
    free(ws1);
    cr_assert_eq(heed_kv_seq_free(c, s2), HEED_OK);
  }
  free(K), free(Vv), free(q), free(out), free(ws);
  heed_kv_cache_destroy(c);
  free(mem);
  heed_runtime_close(rt);
}

/* Greedy trees follow the argmax through the tree; a missing branch stops. */
Test(spec, greedy_tree_walk) {
  enum { V = 20 };
  heed_runtime *rt = open_rt(HEED_ISA_AUTO, 0);
  heed_spec *s = open_spec(rt, V, 8);
  float rows[6][V];
  for (int i = 0; i < 6; i++)
    for (int t = 0; t < V; t++) rows[i][t] = (float)((t * 7 + i * 3) % V) * 0.1f;
  /* argmax of row i: the t with (7t + 3i) % 20 == 19. */
  int am[6];
  for (int i = 0; i < 6; i++)
    for (int t = 0; t < V; t++)
      if ((t * 7 + i * 3) % V == 19) am[i] = t;
  /* root children 0 (wrong), 1 (right); node 1's children 2 (wrong), 3 (right); node 3's child 4 (wrong). */
  int32_t tok[5] = {(am[0] + 1) % V, am[0], 0, 0, 0}, par[5] = {-1, -1, 1, 1, 3};
  tok[2] = (am[2] + 1) % V, tok[3] = am[2], tok[4] = (am[4] + 1) % V;
  heed_sampling g = samp(0, 0, 1, 0, 1, NULL, 0);
  heed_spec_result res;
  cr_assert_eq(heed_spec_verify_tree(s, &g, 0, 0, &rows[0][0], tok, par, 5, NULL, &res), HEED_OK, "%s",
               heed_spec_last_error(s));
  cr_assert_eq(res.n_accepted, 2);
  cr_assert_eq(res.path[0], 1);
  cr_assert_eq(res.path[1], 3);
  cr_assert_eq(res.next_token, am[4]);
  heed_spec_destroy(s);
  heed_runtime_close(rt);
}

/* ---- the n-gram drafter ---- */

Test(spec, ngram_proposals) {
  heed_drafter *d;
  heed_ngram_config nc = {.vocab = 100, .n_min = 1, .n_max = 3, .capacity = 64};
  cr_assert_eq(heed_ngram_drafter_create(&nc, &d, NULL), HEED_OK);
  heed_draft dr;
  cr_assert_eq(heed_drafter_propose(d, 4, &dr), HEED_OK);
  cr_assert_eq(dr.n, 0, "an empty sequence proposes nothing");
  /* 1 2 3 9 | 7 2 3 8 | 1 2 3 : "1 2 3" matched at 0..2 (n=3) beats "2 3" at 5..6. */
  const int32_t a[] = {1, 2, 3, 9, 7, 2, 3, 8, 1, 2, 3};
  cr_assert_eq(heed_drafter_append(d, a, 11), HEED_OK);
  cr_assert_eq(heed_drafter_propose(d, 4, &dr), HEED_OK);
  cr_assert_eq(dr.q.kind, HEED_DRAFT_ONEHOT);
  cr_assert_eq(heed_ngram_last_match(d), 3);
  const int32_t w1[] = {9, 7, 2, 3};
  cr_assert_eq(dr.n, 4);
  for (int i = 0; i < 4; i++) cr_assert_eq(dr.tokens[i], w1[i], "token %d", i);
  /* Append 5: "3 5" and "5" never occurred: no match at 3, 2 or 1 tokens. */
  const int32_t b[] = {5};
  cr_assert_eq(heed_drafter_append(d, b, 1), HEED_OK);
  cr_assert_eq(heed_drafter_propose(d, 4, &dr), HEED_OK);
  cr_assert_eq(dr.n, 0);
  cr_assert_eq(heed_ngram_last_match(d), 0);
  /* Append 2: only "2" matches (n=1), most recent occurrence first: 2 at 9 -> "3 5 2". */
  const int32_t c[] = {2};
  cr_assert_eq(heed_drafter_append(d, c, 1), HEED_OK);
  cr_assert_eq(heed_drafter_propose(d, 8, &dr), HEED_OK);
  cr_assert_eq(heed_ngram_last_match(d), 1);
  const int32_t w2[] = {3, 5, 2};
  cr_assert_eq(dr.n, 3, "up to the end of the sequence: %u", dr.n);
  for (int i = 0; i < 3; i++) cr_assert_eq(dr.tokens[i], w2[i]);
  /* Bad input. */
  const int32_t oov[] = {100};
  cr_assert_eq(heed_drafter_append(d, oov, 1), HEED_E_RANGE);
  cr_assert(strstr(heed_drafter_last_error(d), "100"), "%s", heed_drafter_last_error(d));
  int32_t many[64] = {0};
  cr_assert_eq(heed_drafter_append(d, many, 64), HEED_E_RANGE);
  cr_assert(strstr(heed_drafter_last_error(d), "capacity 64"), "%s", heed_drafter_last_error(d));
  cr_assert_eq(heed_drafter_propose(d, 0, &dr), HEED_E_RANGE);
  heed_drafter_destroy(d);
  heed_ngram_config bad = {.vocab = 100, .n_min = 3, .n_max = 2, .capacity = 8};
  heed_error e = {0};
  cr_assert_eq(heed_ngram_drafter_create(&bad, &d, &e), HEED_E_INVALID);
  cr_assert(strstr(e.msg, "n_min 3"), "%s", e.msg);
}

/* Long sequences: appends stay cheap (no rescan) and lookups find the longest
 * match; a brute-force search agrees on every proposal. */
Test(spec, ngram_matches_brute_force) {
  const unsigned N = 20000, V = 8;
  heed_drafter *d;
  heed_ngram_config nc = {.vocab = V, .n_min = 1, .n_max = 4, .capacity = N};
  cr_assert_eq(heed_ngram_drafter_create(&nc, &d, NULL), HEED_OK);
  int32_t *seq = malloc(N * 4);
  uint64_t r = 23;
  for (unsigned i = 0; i < N; i++) {
    seq[i] = (int32_t)(tu_next(&r) % V);
    cr_assert_eq(heed_drafter_append(d, seq + i, 1), HEED_OK);
    if (i % 97 && i > 50) continue;
    heed_draft dr;
    cr_assert_eq(heed_drafter_propose(d, 6, &dr), HEED_OK);
    unsigned len = i + 1, want_n = 0, want_p = 0;
    for (unsigned n = 4; n >= 1 && !want_n; n--) {
      if (n > len) continue;
      for (unsigned p = len - 1; p >= n && !want_n; p--) /* the n-gram ends before p */
        if (!memcmp(seq + p - n, seq + len - n, n * 4)) want_n = n, want_p = p;
    }
    cr_assert_eq(heed_ngram_last_match(d), want_n, "at %u", i);
    if (want_n) cr_assert_eq(dr.tokens[0], seq[want_p], "at %u", i);
  }
  free(seq);
  heed_drafter_destroy(d);
}

/* ---- reproducibility ---- */

/* Same seed, same tokens: across ISAs, thread counts, rows read one or two
 * at a time, and the OpenCL backend. */
/* The same tokens on every backend, thread count and row schedule: rows of
 * V 70000 (read lazily on the CPU, all at once on the device) under top-p,
 * and of V 40000 (read all at once, their cuts found side by side on the
 * pool) under top-k 50 and top-p. */
static void same_tokens(unsigned V, int topk) {
  enum { K = 4 };
  float *rows = malloc((size_t)(K + 1) * V * 4), *qrows = malloc((size_t)K * V * 4);
  uint64_t r = 31;
  for (size_t i = 0; i < (size_t)(K + 1) * V; i++) rows[i] = 5.0f * tu_uniform(&r);
  for (size_t i = 0; i < (size_t)K * V; i++) qrows[i] = rows[i] + 0.5f * tu_uniform(&r);
  int32_t draft[K];
  for (unsigned i = 0; i < K; i++) { /* a likely token of each row */
    unsigned best = 0;
    for (unsigned t = 0; t < V; t++)
      if (qrows[(size_t)i * V + t] > qrows[(size_t)i * V + best]) best = t;
    draft[i] = (int32_t)best;
  }
  const int32_t pen[2] = {7, 11}; /* under top-k, a penalised draft could leave its q's top 50 */
  heed_sampling sm = samp(0.8f, topk ? 50 : 0, 0.95f, 0, 1.1f, topk ? pen : draft, 2);
  heed_draft_q dq = {.kind = HEED_DRAFT_DENSE_LOGITS, .dense = qrows};
  int32_t ref_tok[64], ref_next[16];
  unsigned ref_acc[16];
  int have = 0;
  for (unsigned ii = 0; ii < sizeof variants / sizeof *variants; ii++)
    for (int cfg = 0; cfg < (variants[ii] == ON_OPENCL ? 1 : 3); cfg++) { /* 1 thread, 2, 2 reading rows in pairs */
      const int th = cfg ? 2 : 1;
      heed_runtime *rt = open_rt(variants[ii], th);
      if (!rt) continue;
      heed_spec *s = open_spec(rt, V, K);
      if (cfg == 2) heed_spec_set_pairs(s, 1);
      for (unsigned seed = 0; seed < 64; seed++) {
        int32_t t;
        cr_assert_eq(heed_spec_sample(s, &sm, seed, 5, rows, &t), HEED_OK, "%s", heed_spec_last_error(s));
        if (have) cr_assert_eq(t, ref_tok[seed], "V %u %s, %d threads, seed %u: token %d, first run %d", V,
                               variant_name(variants[ii]), th, seed, t, ref_tok[seed]);
        else ref_tok[seed] = t;
      }
      for (unsigned seed = 0; seed < 16; seed++) {
        heed_spec_result res;
        cr_assert_eq(heed_spec_verify_chain(s, &sm, seed, 9, rows, draft, K, &dq, &res), HEED_OK, "%s",
                     heed_spec_last_error(s));
        if (have) {
          cr_assert_eq(res.n_accepted, ref_acc[seed], "V %u %s, %d threads, seed %u", V, variant_name(variants[ii]), th, seed);
          cr_assert_eq(res.next_token, ref_next[seed], "V %u %s, %d threads, seed %u", V, variant_name(variants[ii]), th, seed);
        } else {
          ref_acc[seed] = res.n_accepted, ref_next[seed] = res.next_token;
        }
      }
      have = 1;
      heed_spec_destroy(s);
      heed_runtime_close(rt);
    }
  /* Different seeds do differ. */
  int differ = 0;
  for (unsigned i = 1; i < 64; i++) differ += ref_tok[i] != ref_tok[0];
  cr_assert(differ > 10);
  free(rows), free(qrows);
}

/* (Under the emulator the rows read at once are 17000 long, three chunks,
 * the last one partial, as 40000's five: 42 s of one core there.) */
Test(spec, same_seed_same_tokens) {
  same_tokens(70000, 0);
  same_tokens(HEED_TEST_EMULATED ? 17000 : 40000, 1);
}

/* The device's passes: ties at the max go to the first index wherever the
 * tied tokens sit (one work-item, two, two chunks), NaN/+inf are found and
 * named, and a long row's distribution matches the CPU's under every cut. */
Test(spec, opencl_passes_agree_with_the_cpu) {
  heed_runtime *cl = open_cl_rt(), *cpu = open_rt(HEED_ISA_AUTO, 0);
  if (!cl) {
    heed_runtime_close(cpu);
    return;
  }
  const unsigned V = 20000;
  heed_spec *sc = open_spec(cl, V, 4), *sh = open_spec(cpu, V, 4);
  float *x = malloc(V * 4);
  uint64_t r = 5;
  static const unsigned ties[][3] = {{8192 + 70, 8192 + 3, 8195}, {8192 + 3, 8192 + 67, 8195}, {100, 9000, 100},
                                     {19999, 8191, 8191}, {64, 0, 0}};
  heed_sampling greedy = samp(0, 0, 1, 0, 1, NULL, 0);
  for (unsigned i = 0; i < sizeof ties / sizeof *ties; i++) {
    for (unsigned t = 0; t < V; t++) x[t] = tu_uniform(&r);
    x[ties[i][0]] = x[ties[i][1]] = 5.0f;
    int32_t got;
    cr_assert_eq(heed_spec_sample(sc, &greedy, 0, 0, x, &got), HEED_OK, "%s", heed_spec_last_error(sc));
    cr_assert_eq(got, (int32_t)ties[i][2], "tie between %u and %u: %d", ties[i][0], ties[i][1], got);
  }
  x[12345] = NAN;
  cr_assert_eq(heed_spec_sample(sc, &greedy, 0, 0, x, &(int32_t){0}), HEED_E_INVALID);
  cr_assert(strstr(heed_spec_last_error(sc), "nan at token 12345"), "%s", heed_spec_last_error(sc));
  x[12345] = INFINITY;
  cr_assert_eq(heed_spec_sample(sc, &greedy, 0, 0, x, &(int32_t){0}), HEED_E_INVALID);
  cr_assert(strstr(heed_spec_last_error(sc), "inf at token 12345"), "%s", heed_spec_last_error(sc));
  for (unsigned t = 0; t < V; t++) x[t] = -INFINITY;
  cr_assert_eq(heed_spec_sample(sc, &greedy, 0, 0, x, &(int32_t){0}), HEED_E_INVALID);
  cr_assert(strstr(heed_spec_last_error(sc), "-inf everywhere"), "%s", heed_spec_last_error(sc));
  heed_spec_destroy(sc), heed_spec_destroy(sh);

  /* A 151936 row: both backends' probabilities, cut for cut. */
  const unsigned W = 151936;
  sc = open_spec(cl, W, 4), sh = open_spec(cpu, W, 4);
  float *y = malloc((size_t)W * 4), *pc = malloc((size_t)W * 4), *ph = malloc((size_t)W * 4);
  for (unsigned t = 0; t < W; t++) y[t] = 12.0f * tu_uniform(&r) * tu_uniform(&r);
  int32_t pt[64];
  for (unsigned i = 0; i < 64; i++) pt[i] = (int32_t)(tu_next(&r) % W);
  heed_sampling cases[] = {samp(1, 0, 1, 0, 1, NULL, 0), samp(0.7f, 50, 1, 0, 1, NULL, 0),
                           samp(1, 0, 0.9f, 0, 1, NULL, 0), samp(0.8f, 50, 0.95f, 0.02f, 1.2f, pt, 64),
                           samp(1.1f, 0, 0.5f, 0, 1.3f, pt, 64)};
  for (unsigned ci = 0; ci < sizeof cases / sizeof *cases; ci++) {
    cr_assert_eq(heed_spec_probs(sc, &cases[ci], y, pc), HEED_OK, "%s", heed_spec_last_error(sc));
    cr_assert_eq(heed_spec_probs(sh, &cases[ci], y, ph), HEED_OK, "%s", heed_spec_last_error(sh));
    unsigned kept = 0;
    for (unsigned t = 0; t < W; t++) {
      cr_assert_eq(pc[t] > 0, ph[t] > 0, "case %u token %u: opencl p %g, cpu p %g", ci, t, pc[t], ph[t]);
      cr_assert(fabsf(pc[t] - ph[t]) <= 1e-5f * ph[t] + 1e-12f, "case %u token %u: %g vs %g", ci, t, pc[t], ph[t]);
      kept += ph[t] > 0;
    }
    cr_assert(ci == 0 || kept < W, "case %u cut nothing", ci);
  }
  free(x), free(y), free(pc), free(ph);
  heed_spec_destroy(sc), heed_spec_destroy(sh);
  heed_runtime_close(cl), heed_runtime_close(cpu);
}

/* ---- bad input ---- */

Test(spec, bad_input_is_named) {
  enum { V = 50 };
  heed_runtime *rt = open_rt(HEED_ISA_AUTO, 0);
  heed_spec *s = open_spec(rt, V, 4);
  float rows[5][V];
  uint64_t r = 1;
  for (int i = 0; i < 5; i++)
    for (int t = 0; t < V; t++) rows[i][t] = tu_uniform(&r);
  heed_sampling sm = samp(1, 0, 1, 0, 1, NULL, 0);
  heed_spec_result res;
  int32_t d[5] = {1, 2, 3, 4, 5};
#define EXPECT(call, code, needle)                                                                     \
  do {                                                                                                  \
    cr_assert_eq((call), (code), "%s", heed_spec_last_error(s));                                       \
    cr_assert(strstr(heed_spec_last_error(s), needle), "message '%s' lacks '%s'", heed_spec_last_error(s), needle); \
  } while (0)
  EXPECT(heed_spec_verify_chain(s, &sm, 0, 0, &rows[0][0], d, 0, NULL, &res), HEED_E_RANGE, "0 draft tokens");
  EXPECT(heed_spec_verify_chain(s, &sm, 0, 0, &rows[0][0], d, 5, NULL, &res), HEED_E_RANGE, "5 draft tokens");
  d[1] = V;
  EXPECT(heed_spec_verify_chain(s, &sm, 0, 0, &rows[0][0], d, 3, NULL, &res), HEED_E_RANGE, "is 50");
  d[1] = -3;
  EXPECT(heed_spec_verify_chain(s, &sm, 0, 0, &rows[0][0], d, 3, NULL, &res), HEED_E_RANGE, "is -3");
  d[1] = 2;
  rows[0][7] = NAN;
  EXPECT(heed_spec_verify_chain(s, &sm, 0, 0, &rows[0][0], d, 3, NULL, &res), HEED_E_INVALID, "row 0 has nan at token 7");
  rows[0][7] = 0;
  /* A row is checked when the walk reaches it: greedy drafts that match rows 0 and 1 reach row 2. */
  heed_sampling gr = samp(0, 0, 1, 0, 1, NULL, 0);
  int32_t gd[3] = {0, 0, 0};
  for (int i = 0; i < 2; i++)
    for (int t = 1; t < V; t++)
      if (rows[i][t] > rows[i][gd[i]]) gd[i] = t;
  rows[2][7] = NAN;
  EXPECT(heed_spec_verify_chain(s, &gr, 0, 0, &rows[0][0], gd, 3, NULL, &res), HEED_E_INVALID, "row 2 has nan at token 7");
  rows[2][7] = INFINITY;
  EXPECT(heed_spec_sample(s, &sm, 0, 0, rows[2], &d[4]), HEED_E_INVALID, "inf at token 7");
  rows[2][7] = 0;
  const int32_t par[3] = {-1, 2, 0};
  EXPECT(heed_spec_verify_tree(s, &sm, 0, 0, &rows[0][0], d, par, 3, NULL, &res), HEED_E_INVALID, "parent of node 1 is 2");
  float qp[3][V];
  for (int i = 0; i < 3; i++)
    for (int t = 0; t < V; t++) qp[i][t] = 1.0f / V;
  heed_draft_q dq = {.kind = HEED_DRAFT_DENSE_PROBS, .dense = &qp[0][0]};
  qp[0][9] = -0.5f;
  EXPECT(heed_spec_verify_chain(s, &sm, 0, 0, &rows[0][0], d, 3, &dq, &res), HEED_E_INVALID, "probability -0.5 at token 9");
  qp[0][9] = NAN;
  EXPECT(heed_spec_verify_chain(s, &sm, 0, 0, &rows[0][0], d, 3, &dq, &res), HEED_E_INVALID, "probability nan at token 9");
  qp[0][9] = 0.5f;
  EXPECT(heed_spec_verify_chain(s, &sm, 0, 0, &rows[0][0], d, 3, &dq, &res), HEED_E_INVALID, "sums to");
  qp[0][9] = 1.0f / V;
  qp[0][d[0]] = 0, qp[0][0] += 1.0f / V;
  EXPECT(heed_spec_verify_chain(s, &sm, 0, 0, &rows[0][0], d, 3, &dq, &res), HEED_E_INVALID, "probability 0 under its q");
  int32_t ids[3][2] = {{1, -1}, {7, 8}, {3, 9}};
  float pr[3][2] = {{1, 0}, {0.5f, 0.5f}, {0.5f, -1}};
  heed_draft_q sq = {.kind = HEED_DRAFT_SPARSE, .ids = &ids[0][0], .probs = &pr[0][0], .n_sparse = 2};
  EXPECT(heed_spec_verify_chain(s, &sm, 0, 0, &rows[0][0], d, 3, &sq, &res), HEED_E_INVALID,
         "draft token 2 of node 1 is not among");
  ids[1][0] = 2, ids[2][1] = 60;
  EXPECT(heed_spec_verify_chain(s, &sm, 0, 0, &rows[0][0], d, 3, &sq, &res), HEED_E_RANGE, "id 60");
  ids[2][1] = 9;
  EXPECT(heed_spec_verify_chain(s, &sm, 0, 0, &rows[0][0], d, 3, &sq, &res), HEED_E_INVALID, "probability -1");
  heed_sampling b1 = samp(-1, 0, 1, 0, 1, NULL, 0), b2 = samp(1, 51, 1, 0, 1, NULL, 0), b3 = samp(1, 0, 0, 0, 1, NULL, 0),
                b4 = samp(1, 0, 1, 1.0f, 1, NULL, 0), b5 = samp(1, 0, 1, 0, NAN, NULL, 0);
  int32_t pt[2] = {3, 77};
  heed_sampling b6 = samp(1, 0, 1, 0, 1.2f, pt, 2);
  EXPECT(heed_spec_sample(s, &b1, 0, 0, rows[0], &d[4]), HEED_E_INVALID, "temperature -1");
  EXPECT(heed_spec_sample(s, &b2, 0, 0, rows[0], &d[4]), HEED_E_INVALID, "top_k 51");
  EXPECT(heed_spec_sample(s, &b3, 0, 0, rows[0], &d[4]), HEED_E_INVALID, "top_p 0");
  EXPECT(heed_spec_sample(s, &b4, 0, 0, rows[0], &d[4]), HEED_E_INVALID, "min_p 1");
  EXPECT(heed_spec_sample(s, &b5, 0, 0, rows[0], &d[4]), HEED_E_INVALID, "repetition_penalty nan");
  EXPECT(heed_spec_sample(s, &b6, 0, 0, rows[0], &d[4]), HEED_E_RANGE, "penalty token 1 is 77");
  for (int t = 0; t < V; t++) rows[0][t] = -INFINITY;
  EXPECT(heed_spec_sample(s, &sm, 0, 0, rows[0], &d[4]), HEED_E_INVALID, "-inf everywhere");
  heed_spec_config bad = {.vocab = 1, .max_draft = 4};
  heed_spec *s2;
  heed_error e = {0};
  cr_assert_eq(heed_spec_create(rt, &bad, &s2, &e), HEED_E_INVALID);
  cr_assert(strstr(e.msg, "vocab 1"), "%s", e.msg);
  bad.vocab = 10, bad.max_draft = 65;
  cr_assert_eq(heed_spec_create(rt, &bad, &s2, &e), HEED_E_INVALID);
  cr_assert(strstr(e.msg, "max_draft 65"), "%s", e.msg);
  heed_spec_destroy(s);
  heed_runtime_close(rt);
}

#define TU_LEN(a) (sizeof(a) / sizeof((a)[0]))

/* A temperature below HEED_SPEC_MIN_TEMPERATURE is greedy on every backend
 * (T = 1e-40 made 1/T +inf: NaN probabilities, HEED_E_INTERNAL from sample,
 * and next token 11 instead of 5 from verify_chain). Just above the minimum,
 * sampling runs and stays finite. Long rows (V 40000) take the fused and
 * lazily read paths, short ones (V 12) the rest. */
Test(spec, tiny_temperatures_are_greedy_on_every_backend) {
  static const unsigned vocabs[] = {12, 40000};
  static const float tiny[] = {1e-40f, 1e-38f, 2.9e-38f, 1e-7f, 0.99e-6f};
  for (size_t vi = 0; vi < TU_LEN(variants); vi++) {
    heed_runtime *rt = open_rt(variants[vi], 0);
    if (!rt) continue;
    for (size_t ui = 0; ui < TU_LEN(vocabs); ui++) {
      const unsigned V = vocabs[ui];
      heed_spec *s = open_spec(rt, V, 4);
      float *rows = malloc(sizeof(float) * 3 * V), *probs = malloc(sizeof(float) * V);
      uint64_t r = 7 + V;
      const int32_t arg[3] = {5, 2, 7};
      for (int i = 0; i < 3; i++) {
        for (unsigned t = 0; t < V; t++) rows[i * V + t] = 4 * tu_uniform(&r); /* in [-4, 4) */
        rows[i * V + arg[i]] = 4.5f;
      }
      const int32_t accept1[2] = {5, 3}, reject0[1] = {11};
      heed_sampling g = samp(0, 0, 1, 0, 1, NULL, 0);
      heed_spec_result want_a, want_r, got;
      cr_assert_eq(heed_spec_verify_chain(s, &g, 1, 0, rows, accept1, 2, NULL, &want_a), HEED_OK);
      cr_assert_eq(heed_spec_verify_chain(s, &g, 1, 0, rows, reject0, 1, NULL, &want_r), HEED_OK);
      cr_assert_eq(want_a.n_accepted, 1);
      cr_assert_eq(want_a.next_token, 2);
      cr_assert_eq(want_r.n_accepted, 0);
      cr_assert_eq(want_r.next_token, 5);
      for (size_t ti = 0; ti < TU_LEN(tiny); ti++) {
        const char *where = variant_name(variants[vi]);
        heed_sampling t = samp(tiny[ti], 0, 1, 0, 1, NULL, 0);
        cr_assert_eq(heed_spec_probs(s, &t, rows, probs), HEED_OK, "%s V %u T %g: %s", where, V, (double)tiny[ti],
                     heed_spec_last_error(s));
        for (unsigned k = 0; k < V; k++)
          cr_assert_eq(probs[k], k == 5 ? 1.0f : 0.0f, "%s V %u T %g: p[%u] = %g", where, V, (double)tiny[ti], k,
                       (double)probs[k]);
        int32_t tok = -1;
        cr_assert_eq(heed_spec_sample(s, &t, 3, 1, rows, &tok), HEED_OK, "%s: %s", where, heed_spec_last_error(s));
        cr_assert_eq(tok, 5, "%s V %u T %g", where, V, (double)tiny[ti]);
        cr_assert_eq(heed_spec_verify_chain(s, &t, 1, 0, rows, accept1, 2, NULL, &got), HEED_OK);
        cr_assert(got.n_accepted == want_a.n_accepted && got.next_token == want_a.next_token, "%s V %u T %g: %u, %d",
                  where, V, (double)tiny[ti], got.n_accepted, got.next_token);
        cr_assert_eq(heed_spec_verify_chain(s, &t, 1, 0, rows, reject0, 1, NULL, &got), HEED_OK);
        cr_assert(got.n_accepted == 0 && got.next_token == 5, "%s V %u T %g: %u, %d", where, V, (double)tiny[ti],
                  got.n_accepted, got.next_token);
      }
      /* Just above the minimum it samples: every other logit is 0.5 or more below, e^(-0.5/2e-6) = 0. */
      heed_sampling t = samp(2e-6f, 0, 1, 0, 1, NULL, 0);
      cr_assert_eq(heed_spec_probs(s, &t, rows, probs), HEED_OK, "%s", heed_spec_last_error(s));
      double sum = 0;
      for (unsigned k = 0; k < V; k++) {
        cr_assert(isfinite(probs[k]));
        sum += probs[k];
      }
      cr_assert_float_eq(sum, 1.0, 1e-6);
      cr_assert_eq(probs[5], 1.0f);
      int32_t tok = -1;
      cr_assert_eq(heed_spec_sample(s, &t, 3, 1, rows, &tok), HEED_OK, "%s", heed_spec_last_error(s));
      cr_assert_eq(tok, 5);
      free(rows), free(probs);
      heed_spec_destroy(s);
    }
    heed_runtime_close(rt);
  }
}
