/* bench/bench_shapes.h - the attention shapes `heed bench` runs: named
 * models with their real head counts, head dims and windows, or a custom
 * spec. Part of the heed tool, not of libheed. */
#ifndef HEED_BENCH_SHAPES_H
#define HEED_BENCH_SHAPES_H

#include <stddef.h>

typedef struct heed_bench_shape {
  char name[48];       /* "Llama-3.1-8B", or the custom spec as given */
  unsigned q_heads, kv_heads, head_dim;
  unsigned window;     /* sliding window in tokens; 0: none */
  float softcap;       /* attention logit soft-cap; 0: none */
} heed_bench_shape;

/* The named shapes, in the order `heed bench --shape list` prints them. */
const heed_bench_shape *heed_bench_shapes(int *n);

/* NAME (case-insensitive), or a custom spec "q=32,kv=8,d=128[,window=4096][,softcap=50]":
 * each key once, d a head dim heed's kernels take (a multiple of 16 in 32..256).
 * 0 on success; otherwise -1 with why in msg. */
int heed_bench_shape_parse(const char *arg, heed_bench_shape *out, char *msg, size_t cap);

/* The shape as a JSON object's members: "model":"...","q_heads":..,... */
int heed_bench_shape_json(const heed_bench_shape *s, char *buf, size_t cap);

#endif
