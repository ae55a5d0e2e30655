/* bench/bench_attention.h - the attention cases of the heed tool. */
#ifndef HEED_BENCH_ATTENTION_H
#define HEED_BENCH_ATTENTION_H

#include <stdio.h>

#include "heed/bench.h"

/* Decode (1 sequence, 1 query, 32/8 heads, d=128, f16 KV) at each context in
 * ctxs, then prefill (512 queries after a 3584-token prefix, causal, f16 and
 * bf16 KV); with baseline != 0 the unfused oneDNN twin of each; then decode
 * and prefill through a cache of each quantized format in kv (K and V). 0 or -1. */
int heed_bench_attention(heed_runtime *rt, heed_bench *b, const unsigned *ctxs, int n_ctx, int baseline,
                         const heed_dtype *kv, int n_kv, heed_bench_result *out, int cap, int *n_out);
void heed_bench_attention_speedups(const heed_bench_result *r, int n, FILE *f);

#endif
