/* quant/kvq.c - reference encoders/decoders of the KV formats (heed/quant.h). */
#include <math.h>
#include <string.h>

#include "heed/quant.h"
#include "runtime/internal.h"

/* ---------- FP8 ---------- */

typedef struct fp8_fmt {
  int mbits, bias;
  double max;
  uint8_t max_code, nan_code;
  int has_inf;
} fp8_fmt;

static const fp8_fmt E4M3 = {3, 7, 448.0, 0x7e, 0x7f, 0};
static const fp8_fmt E5M2 = {2, 15, 57344.0, 0x7b, 0x7e, 1};

static uint8_t fp8_encode(const fp8_fmt *f, float xf) {
  if (isnan(xf)) return f->nan_code;
  uint8_t sign = signbit(xf) ? 0x80 : 0;
  double a = fabs((double)xf);
  if (a >= f->max) return sign | f->max_code; /* saturate; infinity included */
  int emin = 1 - f->bias;
  double step = ldexp(1.0, emin - f->mbits); /* the subnormal spacing */
  if (a < ldexp(1.0, emin)) {
    /* subnormal (or rounding up into the smallest normal: code 1 << mbits is exactly that) */
    double m = nearbyint(a / step); /* ties to even in the default rounding mode */
    return sign | (uint8_t)m;
  }
  int e;
  frexp(a, &e);
  e -= 1; /* a = 1.xxx * 2^e */
  double m = nearbyint((a / ldexp(1.0, e) - 1.0) * (1 << f->mbits));
  if (m == (1 << f->mbits)) m = 0, e += 1;
  return sign | (uint8_t)(((e + f->bias) << f->mbits) | (int)m);
}

static float fp8_decode(const fp8_fmt *f, uint8_t c) {
  int sign = c & 0x80, ebits = 7 - f->mbits;
  int exp = (c >> f->mbits) & ((1 << ebits) - 1), man = c & ((1 << f->mbits) - 1);
  double v;
  if (f->has_inf && exp == (1 << ebits) - 1)
    v = man ? NAN : INFINITY;
  else if (!f->has_inf && (c & 0x7f) == f->nan_code)
    v = NAN;
  else if (exp == 0)
    v = ldexp((double)man, 1 - f->bias - f->mbits);
  else
    v = ldexp(1.0 + (double)man / (1 << f->mbits), exp - f->bias);
  return (float)(sign ? -v : v);
}

uint8_t heed_f32_to_e4m3(float x) { return fp8_encode(&E4M3, x); }
float heed_e4m3_to_f32(uint8_t c) { return fp8_decode(&E4M3, c); }
uint8_t heed_f32_to_e5m2(float x) { return fp8_encode(&E5M2, x); }
float heed_e5m2_to_f32(uint8_t c) { return fp8_decode(&E5M2, c); }

/* ---------- checks shared by the group formats ---------- */

static heed_status check(const char *what, const float *x, size_t n, unsigned group, const void *out, heed_error *err) {
  if (!x || !out) return heed_err_set(err, HEED_E_INVALID, "%s: a buffer is NULL", what);
  if (group < 16 || group > 256 || (group & (group - 1)))
    return heed_err_set(err, HEED_E_INVALID, "%s: group=%u; accepted: 16, 32, 64, 128, 256", what, group);
  if (n % group)
    return heed_err_set(err, HEED_E_INVALID, "%s: group=%u does not divide n=%zu", what, group, n);
  for (size_t i = 0; i < n; i++)
    if (!isfinite(x[i])) return heed_err_set(err, HEED_E_INVALID, "%s: x[%zu] is %g", what, i, x[i]);
  return HEED_OK;
}

/* f16 of v, clamped to the largest finite half (a scale must stay finite). */
static heed_f16 f16_finite(float v) { return heed_f32_to_f16(v > 65504.0f ? 65504.0f : v); }

/* ---------- q8 ---------- */

heed_status heed_q8_quantize(const float *x, size_t n, unsigned group, int8_t *codes, heed_f16 *scales, heed_error *err) {
  heed_status st = check("q8", x, n, group, codes && scales ? codes : NULL, err);
  if (st != HEED_OK) return st;
  for (size_t g = 0; g < n / group; g++) {
    const float *xg = x + g * group;
    float amax = 0;
    for (unsigned i = 0; i < group; i++) amax = fmaxf(amax, fabsf(xg[i]));
    scales[g] = f16_finite(amax / 127.0f);
    float s = heed_f16_to_f32(scales[g]);
    for (unsigned i = 0; i < group; i++) {
      float c = s > 0 ? nearbyintf(xg[i] / s) : 0.0f;
      codes[g * group + i] = (int8_t)(c > 127 ? 127 : c < -127 ? -127 : c);
    }
  }
  return HEED_OK;
}

void heed_q8_dequantize(const int8_t *codes, const heed_f16 *scales, size_t n, unsigned group, float *y) {
  for (size_t i = 0; i < n; i++) y[i] = (float)codes[i] * heed_f16_to_f32(scales[i / group]);
}

/* ---------- q4 ---------- */

heed_status heed_q4_quantize(const float *x, size_t n, unsigned group, uint8_t *codes, heed_f16 *scales, heed_f16 *mins,
                             heed_error *err) {
  heed_status st = check("q4", x, n, group, codes && scales && mins ? codes : NULL, err);
  if (st != HEED_OK) return st;
  memset(codes, 0, n / 2);
  for (size_t g = 0; g < n / group; g++) {
    const float *xg = x + g * group;
    float lo = xg[0], hi = xg[0];
    for (unsigned i = 1; i < group; i++) lo = fminf(lo, xg[i]), hi = fmaxf(hi, xg[i]);
    mins[g] = heed_f32_to_f16(lo < -65504.0f ? -65504.0f : lo > 65504.0f ? 65504.0f : lo);
    float mn = heed_f16_to_f32(mins[g]);
    scales[g] = f16_finite((hi - mn) / 15.0f);
    float s = heed_f16_to_f32(scales[g]);
    for (unsigned i = 0; i < group; i++) {
      float c = s > 0 ? nearbyintf((xg[i] - mn) / s) : 0.0f;
      uint8_t q = (uint8_t)(c > 15 ? 15 : c < 0 ? 0 : c);
      size_t at = g * group + i;
      codes[at / 2] |= (uint8_t)(at % 2 ? q << 4 : q);
    }
  }
  return HEED_OK;
}

/* Codes of x[n] against (mn, s) (both as stored), into q; their squared
 * error, and the largest error of one value in *worst. */
static double q4_code(const float *x, unsigned n, float mn, float s, uint8_t *q, double *worst) {
  double e = 0, w = 0;
  for (unsigned i = 0; i < n; i++) {
    float c = s > 0 ? nearbyintf((x[i] - mn) / s) : 0.0f;
    c = c > 15 ? 15 : c < 0 ? 0 : c;
    q[i] = (uint8_t)c;
    double d = (double)c * s + mn - x[i];
    e += d * d;
    w = fabs(d) > w ? fabs(d) : w;
  }
  *worst = w;
  return e;
}

heed_status heed_q4_quantize_fit(const float *x, size_t n, unsigned group, uint8_t *codes, heed_f16 *scales,
                                 heed_f16 *mins, heed_error *err) {
  heed_status st = heed_q4_quantize(x, n, group, codes, scales, mins, err);
  if (st != HEED_OK) return st;
  uint8_t q[256], bq[256];
  for (size_t g = 0; g < n / group; g++) {
    const float *xg = x + g * group;
    double limit, worst;
    double best = q4_code(xg, group, heed_f16_to_f32(mins[g]), heed_f16_to_f32(scales[g]), q, &limit);
    memcpy(bq, q, group);
    int better = 0;
    for (int it = 0; it < 2; it++) {
      /* the (scale, min) of least squared error for these codes */
      double sq = 0, sqq = 0, sx = 0, sqx = 0;
      for (unsigned i = 0; i < group; i++) sq += q[i], sqq += (double)q[i] * q[i], sx += xg[i], sqx += (double)q[i] * xg[i];
      double det = group * sqq - sq * sq;
      if (!(det > 0)) break;
      double ns = (group * sqx - sq * sx) / det, nm = (sx - ns * sq) / group;
      if (!(ns > 0) || ns > 65504.0 || !(fabs(nm) <= 65504.0)) break;
      heed_f16 cm = heed_f32_to_f16((float)nm), cs = heed_f32_to_f16((float)ns);
      double e = q4_code(xg, group, heed_f16_to_f32(cm), heed_f16_to_f32(cs), q, &worst);
      if (!(e < best) || worst > limit) break; /* no value may lose more than min/max's worst */
      best = e, mins[g] = cm, scales[g] = cs, better = 1;
      memcpy(bq, q, group);
    }
    if (!better) continue;
    for (unsigned i = 0; i < group; i++) {
      size_t at = g * group + i;
      codes[at / 2] = (uint8_t)(at % 2 ? (codes[at / 2] & 15u) | bq[i] << 4 : (codes[at / 2] & 0xF0u) | bq[i]);
    }
  }
  return HEED_OK;
}

void heed_q4_dequantize(const uint8_t *codes, const heed_f16 *scales, const heed_f16 *mins, size_t n, unsigned group,
                        float *y) {
  for (size_t i = 0; i < n; i++) {
    unsigned q = i % 2 ? codes[i / 2] >> 4 : codes[i / 2] & 15;
    y[i] = (float)q * heed_f16_to_f32(scales[i / group]) + heed_f16_to_f32(mins[i / group]);
  }
}

/* ---------- fp8 with a shared scale ---------- */

heed_status heed_fp8_quantize(int e5m2, const float *x, size_t n, uint8_t *codes, float *scale, heed_error *err) {
  if (!x || !codes || !scale) return heed_err_set(err, HEED_E_INVALID, "fp8: a buffer is NULL");
  float amax = 0;
  for (size_t i = 0; i < n; i++) {
    if (!isfinite(x[i])) return heed_err_set(err, HEED_E_INVALID, "fp8: x[%zu] is %g", i, x[i]);
    amax = fmaxf(amax, fabsf(x[i]));
  }
  const fp8_fmt *f = e5m2 ? &E5M2 : &E4M3;
  float s = amax > 0 ? amax / (float)f->max : 1.0f;
  for (size_t i = 0; i < n; i++) codes[i] = fp8_encode(f, x[i] / s);
  *scale = s;
  return HEED_OK;
}

void heed_fp8_dequantize(int e5m2, const uint8_t *codes, size_t n, float scale, float *y) {
  const fp8_fmt *f = e5m2 ? &E5M2 : &E4M3;
  for (size_t i = 0; i < n; i++) y[i] = fp8_decode(f, codes[i]) * scale;
}
