/* heed/plan.h - attention tile sizes chosen from the core's caches.
 *
 * A FlashAttention-style kernel keeps, per worker:
 *   Q tile   q_rows x dk  f32      O accumulator  q_rows x dv f32 (+ 2 floats a row)
 *   K block  kv_block x dk  kv     V block        kv_block x dv  kv
 *   S tile   q_rows x kv_block f32
 * The plan picks
 *   kv_block = largest power of two in [16, 256] with
 *              kv_block * (dk + dv) * kv_bytes <= L2_per_core / 2
 *   q_rows   = largest power of two in [1, 64] with
 *              q_rows * (dk + dv + 2) * 4 <= L1d_per_core / 2   and
 *              q_rows * kv_block * 4       <= L2_per_core / 4
 * so a K/V block and the S tile stay in L2 beside each other and the rows a
 * worker updates stay in L1d. Half of each cache is left for the streams and
 * the other hardware thread. kv_block is also the paged KV cache's block length.
 */
#ifndef HEED_PLAN_H
#define HEED_PLAN_H

#include <stddef.h>
#include <stdint.h>

#include "heed/dtype.h"
#include "heed/status.h"
#include "heed/topology.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct heed_tile_plan {
  unsigned dk, dv;          /* head dims of K and V */
  heed_dtype kv_dtype;
  unsigned q_rows;          /* query rows per prefill tile */
  unsigned kv_block;        /* KV tokens per tile and per paged-cache block */
  uint64_t l1d_bytes;       /* the per-core cache sizes the plan used */
  uint64_t l2_bytes;
  uint64_t l1_working_set;  /* bytes of the rows kept in L1d */
  uint64_t l2_working_set;  /* bytes of K block + V block + S tile */
} heed_tile_plan;

/* dk, dv in 1..1024; l1d and l2 per-core sizes > 0 (heed_topology_summary's). */
heed_status heed_tile_plan_make(uint64_t l1d_per_core, uint64_t l2_per_core, unsigned dk,
                                unsigned dv, heed_dtype kv_dtype, heed_tile_plan *out,
                                heed_error *err);

#ifdef __cplusplus
}
#endif
#endif
