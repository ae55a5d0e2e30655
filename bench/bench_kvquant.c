/* bench/bench_kvquant.c - `heed bench kvquant`: how much each KV format moves
 * the attention output. K and V go through a format's reference quantizer
 * and back; attention is then computed in fp64 on the dequantized values and
 * compared with fp64 attention on the originals, so the figures are the
 * format's own error, not a kernel's. Data: uniform random, and the same with
 * a few K channels 20-50x larger (as trained models have). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench/bench_kvquant.h"
#include "heed/heed.h"

#define H 4       /* query heads */
#define KVH 1     /* KV heads (GQA 4) */
#define D 128     /* head dim */
#define L 2048    /* context */
#define NQ 8      /* query positions, decode-like: they see the whole context */
#define BLOCK 64  /* tokens per block: the unit of per-channel K groups and fp8 scales */

typedef enum { FMT_Q8, FMT_Q4, FMT_E4M3, FMT_E5M2 } fmt_kind;

/* How one of K or V is stored. axis: 0 groups along head_dim (per token),
 * 1 groups along tokens (per channel, KIVI's choice for K). */
typedef struct kvfmt {
  fmt_kind kind;
  unsigned group;
  int axis;
} kvfmt;

typedef struct config {
  const char *name;
  kvfmt k, v;
} config;

static const config configs[] = {
    {"q8 per token", {FMT_Q8, D, 0}, {FMT_Q8, D, 0}},
    {"q8 group 32", {FMT_Q8, 32, 0}, {FMT_Q8, 32, 0}},
    {"q4 group 32", {FMT_Q4, 32, 0}, {FMT_Q4, 32, 0}},
    {"q4 group 64", {FMT_Q4, 64, 0}, {FMT_Q4, 64, 0}},
    {"q4 group 128", {FMT_Q4, 128, 0}, {FMT_Q4, 128, 0}},
    {"q4 K/channel 32 V/token 32", {FMT_Q4, 32, 1}, {FMT_Q4, 32, 0}},
    {"q4 K/channel 64 V/token 64", {FMT_Q4, 64, 1}, {FMT_Q4, 64, 0}},
    {"q4 K/channel 128 V/token 128", {FMT_Q4, 128, 1}, {FMT_Q4, 128, 0}},
    {"K q8/token, V q4 group 32", {FMT_Q8, D, 0}, {FMT_Q4, 32, 0}},
    {"fp8 e4m3 per (block, head)", {FMT_E4M3, BLOCK, 0}, {FMT_E4M3, BLOCK, 0}},
    {"fp8 e5m2 per (block, head)", {FMT_E5M2, BLOCK, 0}, {FMT_E5M2, BLOCK, 0}},
};

static uint64_t rng;
static float urand(void) {
  rng = rng * 6364136223846793005ull + 1442695040888963407ull;
  return (float)((rng >> 40) * 0x1p-24 * 2.0 - 1.0);
}

/* x: [L][D] of one head, quantized and dequantized in place as f describes. */
static int roundtrip(const kvfmt *f, float *x) {
  size_t n = (size_t)L * D;
  float *buf = malloc(n * sizeof(float)), *out = malloc(n * sizeof(float));
  int8_t *c8 = malloc(n);
  uint8_t *c4 = malloc(n);
  heed_f16 *sc = malloc(n / 16 * sizeof(heed_f16)), *mn = malloc(n / 16 * sizeof(heed_f16));
  int rc = 0;
  if (f->axis == 1) /* per channel over tokens: quantize the transpose */
    for (size_t t = 0; t < L; t++)
      for (size_t d = 0; d < D; d++) buf[d * L + t] = x[t * D + d];
  else
    memcpy(buf, x, n * sizeof(float));
  heed_error e = {0};
  if (f->kind == FMT_Q8) {
    rc = heed_q8_quantize(buf, n, f->group, c8, sc, &e);
    heed_q8_dequantize(c8, sc, n, f->group, out);
  } else if (f->kind == FMT_Q4) {
    rc = heed_q4_quantize_fit(buf, n, f->group, c4, sc, mn, &e);
    heed_q4_dequantize(c4, sc, mn, n, f->group, out);
  } else { /* fp8: one scale per block of BLOCK tokens of this head */
    for (size_t b = 0; b < L / BLOCK && !rc; b++) {
      float s;
      size_t m = (size_t)BLOCK * D;
      rc = heed_fp8_quantize(f->kind == FMT_E5M2, buf + b * m, m, c4 + b * m, &s, &e);
      heed_fp8_dequantize(f->kind == FMT_E5M2, c4 + b * m, m, s, out + b * m);
    }
  }
  if (rc) fprintf(stderr, "heed bench kvquant: %s\n", e.msg);
  if (f->axis == 1)
    for (size_t t = 0; t < L; t++)
      for (size_t d = 0; d < D; d++) x[t * D + d] = out[d * L + t];
  else
    memcpy(x, out, n * sizeof(float));
  free(buf), free(out), free(c8), free(c4), free(sc), free(mn);
  return rc;
}

/* out: [NQ][H][D], fp64 softmax attention over all L keys (GQA: every query head reads KV head 0). */
static void attend(const float *q, const float *k, const float *v, double *out) {
  double *s = malloc(L * sizeof(double));
  for (int i = 0; i < NQ; i++)
    for (int h = 0; h < H; h++) {
      const float *qr = q + ((size_t)i * H + h) * D;
      double mx = -INFINITY, sum = 0;
      for (int t = 0; t < L; t++) {
        double a = 0;
        for (int d = 0; d < D; d++) a += (double)qr[d] * k[(size_t)t * D + d];
        s[t] = a / sqrt((double)D);
        mx = s[t] > mx ? s[t] : mx;
      }
      double *o = out + ((size_t)i * H + h) * D;
      memset(o, 0, D * sizeof(double));
      for (int t = 0; t < L; t++) {
        double w = exp(s[t] - mx);
        sum += w;
        for (int d = 0; d < D; d++) o[d] += w * v[(size_t)t * D + d];
      }
      for (int d = 0; d < D; d++) o[d] /= sum;
    }
  free(s);
}

int heed_bench_kvquant(FILE *json) {
  size_t n = (size_t)L * D;
  float *k0 = malloc(n * 4), *v0 = malloc(n * 4), *k = malloc(n * 4), *v = malloc(n * 4), *q = malloc((size_t)NQ * H * D * 4);
  double *ref = malloc((size_t)NQ * H * D * 8), *got = malloc((size_t)NQ * H * D * 8);
  int rc = 0;
  if (json) fprintf(json, "{\"context\":%d,\"head_dim\":%d,\"q_heads\":%d,\"kv_heads\":%d,\"results\":[", L, D, H, KVH);
  printf("attention output error against unquantized K/V (fp64 attention; %d keys, d=%d, GQA %d)\n", L, D, H / KVH);
  printf("%-30s %-9s %11s %11s %13s\n", "format", "data", "max abs", "nmse", "1 - cosine");
  int first = 1;
  for (int data = 0; data < 2 && !rc; data++) {
    rng = 0x9e3779b97f4a7c15ull;
    for (size_t i = 0; i < n; i++) k0[i] = urand(), v0[i] = urand();
    for (size_t i = 0; i < (size_t)NQ * H * D; i++) q[i] = urand();
    if (data) /* outlier channels in K: 4 of 128, 20x to 50x the rest */
      for (int c = 0; c < 4; c++) {
        int ch = 7 + 31 * c;
        float f = 20.0f + 10.0f * c;
        for (size_t t = 0; t < L; t++) k0[t * D + ch] *= f;
      }
    attend(q, k0, v0, ref);
    for (size_t ci = 0; ci < sizeof configs / sizeof configs[0] && !rc; ci++) {
      memcpy(k, k0, n * 4);
      memcpy(v, v0, n * 4);
      rc = roundtrip(&configs[ci].k, k) || roundtrip(&configs[ci].v, v);
      attend(q, k, v, got);
      double max_abs = 0, num = 0, den = 0, dot = 0, ng = 0;
      for (size_t i = 0; i < (size_t)NQ * H * D; i++) {
        double d = got[i] - ref[i];
        max_abs = fabs(d) > max_abs ? fabs(d) : max_abs;
        num += d * d, den += ref[i] * ref[i], dot += got[i] * ref[i], ng += got[i] * got[i];
      }
      double nmse = num / den, cosd = 1.0 - dot / sqrt(den * ng);
      const char *dn = data ? "outliers" : "random";
      printf("%-30s %-9s %11.3e %11.3e %13.3e\n", configs[ci].name, dn, max_abs, nmse, cosd);
      if (json) {
        fprintf(json, "%s{\"format\":\"%s\",\"data\":\"%s\",\"max_abs\":%.6e,\"nmse\":%.6e,\"one_minus_cosine\":%.6e}",
                first ? "" : ",", configs[ci].name, dn, max_abs, nmse, cosd);
        first = 0;
      }
    }
  }
  if (json) fprintf(json, "]}\n");
  free(k0), free(v0), free(k), free(v), free(q), free(ref), free(got);
  return rc ? -1 : 0;
}
