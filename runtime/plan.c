/* runtime/plan.c - tile sizes from cache sizes; the formula is in heed/plan.h. */
#include "heed/plan.h"
#include "runtime/internal.h"

heed_status heed_tile_plan_make(uint64_t l1d, uint64_t l2, unsigned dk, unsigned dv, heed_dtype kv,
                                heed_tile_plan *out, heed_error *err) {
  if (!out) return heed_err_set(err, HEED_E_INVALID, "heed_tile_plan_make: out is NULL");
  if (dk < 1 || dk > 1024 || dv < 1 || dv > 1024)
    return heed_err_set(err, HEED_E_INVALID, "tile plan: head dims dk=%u dv=%u; accepted: 1..1024", dk, dv);
  if ((unsigned)kv >= HEED_DTYPE_COUNT)
    return heed_err_set(err, HEED_E_INVALID, "tile plan: kv dtype %d is not a heed_dtype", (int)kv);
  if (!l1d || !l2)
    return heed_err_set(err, HEED_E_INVALID, "tile plan: cache sizes l1d=%llu l2=%llu; accepted: > 0",
                        (unsigned long long)l1d, (unsigned long long)l2);
  double kv_bytes = heed_dtype_bits(kv) / 8.0;
  unsigned kvb = 16;
  while (kvb < 256 && (double)(kvb * 2) * (dk + dv) * kv_bytes <= (double)l2 / 2) kvb *= 2;
  unsigned q = 1;
  while (q < 64 && (uint64_t)(q * 2) * (dk + dv + 2) * 4 <= l1d / 2 &&
         (uint64_t)(q * 2) * kvb * 4 <= l2 / 4)
    q *= 2;
  out->dk = dk;
  out->dv = dv;
  out->kv_dtype = kv;
  out->q_rows = q;
  out->kv_block = kvb;
  out->l1d_bytes = l1d;
  out->l2_bytes = l2;
  out->l1_working_set = (uint64_t)q * (dk + dv + 2) * 4;
  out->l2_working_set = (uint64_t)((double)kvb * (dk + dv) * kv_bytes) + (uint64_t)q * kvb * 4;
  return HEED_OK;
}
