#include <criterion/criterion.h>
#include <string.h>

#include "heed/plan.h"

#define KiB 1024ull

static int pow2(unsigned v) { return v && !(v & (v - 1)); }

/* The formula of heed/plan.h, by exhaustive search. */
static void oracle(uint64_t l1, uint64_t l2, unsigned dk, unsigned dv, double kvb, unsigned *q, unsigned *kv) {
  *kv = 16;
  for (unsigned c = 16; c <= 256; c *= 2)
    if (c * (dk + dv) * kvb <= l2 / 2.0) *kv = c;
  *q = 1;
  for (unsigned c = 1; c <= 64; c *= 2)
    if ((uint64_t)c * (dk + dv + 2) * 4 <= l1 / 2 && (uint64_t)c * *kv * 4 <= l2 / 4) *q = c;
}

Test(plan, follows_the_documented_formula) {
  static const unsigned dims[][2] = {{64, 64}, {80, 80}, {96, 96}, {112, 112}, {128, 128}, {256, 256}, {192, 128}};
  static const uint64_t l1s[] = {32 * KiB, 48 * KiB, 64 * KiB, 128 * KiB};
  static const uint64_t l2s[] = {256 * KiB, 512 * KiB, 1280 * KiB, 2048 * KiB};
  for (size_t d = 0; d < 7; d++)
    for (size_t a = 0; a < 4; a++)
      for (size_t b = 0; b < 4; b++)
        for (int dt = 0; dt < HEED_DTYPE_COUNT; dt++) {
          heed_tile_plan p;
          cr_assert_eq(heed_tile_plan_make(l1s[a], l2s[b], dims[d][0], dims[d][1], (heed_dtype)dt, &p, NULL), HEED_OK);
          unsigned q, kv;
          oracle(l1s[a], l2s[b], dims[d][0], dims[d][1], heed_dtype_bits((heed_dtype)dt) / 8.0, &q, &kv);
          cr_assert_eq(p.kv_block, kv, "dk %u l2 %llu", dims[d][0], (unsigned long long)l2s[b]);
          cr_assert_eq(p.q_rows, q);
          cr_assert(pow2(p.kv_block) && p.kv_block >= 16 && p.kv_block <= 256);
          cr_assert(pow2(p.q_rows) && p.q_rows <= 64);
          cr_assert_eq(p.l1_working_set, (uint64_t)p.q_rows * (p.dk + p.dv + 2) * 4);
          if (p.kv_block > 16) cr_assert_leq(p.l2_working_set, l2s[b] / 2 + l2s[b] / 4);
        }
}

Test(plan, known_values) {
  heed_tile_plan p;
  /* this VM: 32 KiB L1d, 512 KiB L2, d=128 f16 */
  cr_assert_eq(heed_tile_plan_make(32 * KiB, 512 * KiB, 128, 128, HEED_DTYPE_F16, &p, NULL), HEED_OK);
  cr_assert_eq(p.kv_block, 256);
  cr_assert_eq(p.q_rows, 8);
  /* a small core: 16 KiB L1d, 128 KiB L2, d=256 f32: 512*4*kv <= 64 KiB -> kv 32;
   * q*(514)*4 <= 8 KiB -> q 2 (4 rows would need 8224 bytes) */
  cr_assert_eq(heed_tile_plan_make(16 * KiB, 128 * KiB, 256, 256, HEED_DTYPE_F32, &p, NULL), HEED_OK);
  cr_assert_eq(p.kv_block, 32);
  cr_assert_eq(p.q_rows, 2);
}

Test(plan, bad_arguments) {
  heed_tile_plan p;
  heed_error e = {0};
  cr_assert_eq(heed_tile_plan_make(32 * KiB, 512 * KiB, 0, 128, HEED_DTYPE_F16, &p, &e), HEED_E_INVALID);
  cr_assert(strstr(e.msg, "dk=0"), "%s", e.msg);
  cr_assert_eq(heed_tile_plan_make(32 * KiB, 512 * KiB, 128, 2000, HEED_DTYPE_F16, &p, &e), HEED_E_INVALID);
  cr_assert(strstr(e.msg, "dv=2000"), "%s", e.msg);
  cr_assert_eq(heed_tile_plan_make(32 * KiB, 512 * KiB, 128, 128, (heed_dtype)9, &p, &e), HEED_E_INVALID);
  cr_assert_eq(heed_tile_plan_make(0, 512 * KiB, 128, 128, HEED_DTYPE_F16, &p, &e), HEED_E_INVALID);
  cr_assert(strstr(e.msg, "l1d=0"), "%s", e.msg);
  cr_assert_eq(heed_tile_plan_make(32 * KiB, 512 * KiB, 128, 128, HEED_DTYPE_F16, NULL, &e), HEED_E_INVALID);
}
