/* bench/bench_attention.h - the attention cases of the heed tool. */
#ifndef HEED_BENCH_ATTENTION_H
#define HEED_BENCH_ATTENTION_H

#include <stdio.h>

#include "bench/bench_shapes.h"
#include "heed/bench.h"

#define HEED_BENCH_MAX_BATCH 64

/* Decode (batch sequences, 1 query each, f16 KV, the shape's heads, head
 * dim, window and soft-cap) at each context in ctxs, then prefill (512
 * queries after a 3584-token prefix, causal, f16 and bf16 KV); with baseline
 * != 0 the unfused twin of each (oneDNN on the CPU, CLBlast on a device);
 * then decode and prefill through a cache of each quantized format in kv
 * (K and V). 0 or -1. */
int heed_bench_attention(heed_runtime *rt, heed_bench *b, const heed_bench_shape *shape, const unsigned *ctxs, int n_ctx,
                         unsigned batch, int baseline, const heed_dtype *kv, int n_kv, heed_bench_result *out, int cap,
                         int *n_out);
/* The memory those cases need, in bytes (the KV caches as the runtime sizes
 * them, the baseline's f32 copy). */
size_t heed_bench_attention_bytes(heed_runtime *rt, const heed_bench_shape *shape, const unsigned *ctxs, int n_ctx, unsigned batch,
                                  int baseline, const heed_dtype *kv, int n_kv);
/* Fills each heed case's versus[] with its twins of the same run: the
 * unfused baseline, the reference kernels, and a format's f16 twin. */
void heed_bench_attention_link(heed_bench_result *r, int n);
void heed_bench_attention_speedups(const heed_bench_result *r, int n, FILE *f);

#endif
