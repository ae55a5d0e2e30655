#include <criterion/criterion.h>
#include <math.h>

#include "heed/dtype.h"
#include "test_util.h"

/* The nearest half to x by brute force in double, ties to even: the oracle. */
static uint16_t f16_oracle(float xf) {
  double x = xf;
  if (isnan(x)) return 0x7e00;
  uint16_t sign = signbit(x) ? 0x8000 : 0;
  double a = fabs(x);
  if (a >= 65520.0) return sign | 0x7c00; /* 65504 + half an ulp (16) rounds up to inf */
  uint16_t best = 0;
  double bestd = INFINITY;
  /* The answer is within one step of the truncated value; scan a window. */
  for (uint32_t h = 0; h < 0x7c00; h++) {
    double v = heed_f16_to_f32((heed_f16)h);
    double d = fabs(v - a);
    if (d < bestd || (d == bestd && (h & 1) == 0)) {
      bestd = d;
      best = (uint16_t)h;
    }
    if (v > a * 2 + 1) break;
  }
  return sign | best;
}

Test(dtype, names_bits_and_parsing) {
  cr_assert_str_eq(heed_dtype_name(HEED_DTYPE_F16), "f16");
  cr_assert_eq(heed_dtype_bits(HEED_DTYPE_BF16), 16);
  cr_assert_eq(heed_dtype_bits(HEED_DTYPE_F32), 32);
  cr_assert_null(heed_dtype_name((heed_dtype)99));
  heed_dtype t;
  cr_assert_eq(heed_dtype_parse("bf16", &t), 0);
  cr_assert_eq(t, HEED_DTYPE_BF16);
  cr_assert_neq(heed_dtype_parse("fp16", &t), 0);
  cr_assert_neq(heed_dtype_parse(NULL, &t), 0);
}

Test(dtype, every_half_round_trips_exactly) {
  for (uint32_t h = 0; h < 65536; h++) {
    float f = heed_f16_to_f32((heed_f16)h);
    if ((h & 0x7c00) == 0x7c00 && (h & 0x3ff)) {
      cr_assert(isnan(f), "0x%04x should be NaN", h);
      cr_assert(tu_f32_bits(f) & 0x400000u, "NaN 0x%04x should come back quiet", h);
      cr_assert(isnan(heed_f16_to_f32(heed_f32_to_f16(f))));
      continue;
    }
    cr_assert_eq(heed_f32_to_f16(f), h, "0x%04x -> %a -> 0x%04x", h, f, heed_f32_to_f16(f));
  }
}

Test(dtype, half_values_known_by_hand) {
  cr_assert_eq(heed_f32_to_f16(1.0f), 0x3c00);
  cr_assert_eq(heed_f32_to_f16(-2.0f), 0xc000);
  cr_assert_eq(heed_f32_to_f16(65504.0f), 0x7bff);
  cr_assert_eq(heed_f32_to_f16(65519.99f), 0x7bff);
  cr_assert_eq(heed_f32_to_f16(65520.0f), 0x7c00);              /* tie at max rounds to inf (even) */
  cr_assert_eq(heed_f32_to_f16(0x1p-24f), 0x0001);              /* smallest subnormal */
  cr_assert_eq(heed_f32_to_f16(0x1p-25f), 0x0000);              /* tie to even: 0 */
  cr_assert_eq(heed_f32_to_f16(0x1.8p-24f), 0x0002);            /* 1.5 steps: tie to even 2 */
  cr_assert_eq(heed_f32_to_f16(1.0f + 0x1p-11f), 0x3c00);       /* tie to even down */
  cr_assert_eq(heed_f32_to_f16(1.0f + 3 * 0x1p-11f), 0x3c02);   /* tie to even up */
  cr_assert_eq(heed_f32_to_f16(INFINITY), 0x7c00);
  cr_assert_eq(heed_f32_to_f16(-0.0f), 0x8000);
  cr_assert(heed_f32_to_f16(NAN) > 0x7c00 && (heed_f32_to_f16(NAN) & 0x7fff) != 0x7c00);
}

Test(dtype, half_rounding_matches_the_oracle_on_random_floats) {
  uint64_t s = 42;
  for (int i = 0; i < 1500; i++) {
    /* exponents around the half range, subnormals and overflow included */
    float x = tu_uniform(&s) * ldexpf(1.0f, (int)(tu_next(&s) % 44) - 26);
    cr_assert_eq(heed_f32_to_f16(x), f16_oracle(x), "x=%a", x);
  }
}

Test(dtype, bfloat16_round_trips_and_rounds_to_nearest_even) {
  for (uint32_t h = 0; h < 65536; h++) {
    float f = heed_bf16_to_f32((heed_bf16)h);
    if (isnan(f)) continue;
    cr_assert_eq(heed_f32_to_bf16(f), h);
  }
  cr_assert_eq(heed_f32_to_bf16(1.0f), 0x3f80);
  cr_assert_eq(heed_f32_to_bf16(tu_f32_from_bits(0x3f808000u)), 0x3f80); /* tie, even down */
  cr_assert_eq(heed_f32_to_bf16(tu_f32_from_bits(0x3f818000u)), 0x3f82); /* tie, even up */
  cr_assert_eq(heed_f32_to_bf16(tu_f32_from_bits(0x3f808001u)), 0x3f81);
  cr_assert(isnan(heed_bf16_to_f32(heed_f32_to_bf16(NAN))));
  cr_assert_eq(heed_f32_to_bf16(tu_f32_from_bits(0x7f7fffffu)), 0x7f80); /* max float rounds to inf */
  uint64_t s = 7;
  for (int i = 0; i < 100000; i++) {
    float x = tu_uniform(&s) * 1000.0f;
    double got = heed_bf16_to_f32(heed_f32_to_bf16(x));
    cr_assert_leq(fabs(got - x), fabs((double)x) * 0x1p-8, "x=%a", x); /* half an ulp of 8 bits */
  }
}
