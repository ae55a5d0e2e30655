/* runtime/backend.h - what a backend is: a vtable plus an opaque context.
 * Internal to libheed; the runtime opens one backend and holds its context.
 *
 * Required slots: open, close. Optional slots may be NULL: the backend does
 * not offer that operation: the runtime answers HEED_E_UNSUPPORTED naming
 * the backend and the operation, or (KV storage, vocabulary passes) the host
 * does the work. */
#ifndef HEED_RUNTIME_BACKEND_H
#define HEED_RUNTIME_BACKEND_H

#include <stddef.h>

#include "heed/attention.h"
#include "heed/kernels.h"
#include "heed/pool.h"
#include "heed/runtime.h"
#include "heed/status.h"
#include "heed/topology.h"

/* What a backend gets at open; everything is borrowed from the runtime and
 * outlives the backend. */
typedef struct heed_backend_open_args {
  const heed_topology *topo;
  const heed_kernel_table *cpu_kernels; /* the host's kernel table */
  heed_pool *pool;                      /* the host's workers */
  heed_cpu_features features;           /* the runtime's CPU features */
  int device;                           /* OpenCL device index; -1 for the CPU backend */
  int ignore_env;                       /* HEED_RUNTIME_IGNORE_ENV: read no HEED_* variable */
} heed_backend_open_args;

/* One attention call, validated by attention/attention.c before any backend
 * sees it. Arrays are the caller's (see heed/attention.h). */
typedef struct heed_attn_call {
  const heed_kv_cache *cache;
  const heed_attn_params *p;
  /* prefill: seq.blocks/n_tokens resolved; q_tile query positions per work item */
  heed_attn_seq seq;
  unsigned q_start, n_q, q_tile;
  /* decode: at most max_splits KV splits per (sequence, KV head) */
  const heed_attn_decode_seq *seqs;
  unsigned n_seqs, max_splits;
  const float *q;
  float *out, *lse;
  void *ws;
  size_t ws_bytes;
  heed_error *err; /* where a backend's refusal or failure is explained (the cache's) */
} heed_attn_call;

/* Tokens to write into a cache in device memory: n tokens of f32 K/V (host
 * memory) going to rows row0 .. row0+n-1 of the blocks in `blocks` (a slice
 * of the sequence's table: row r is in blocks[r / block_len]). The geometry
 * is the cache's (heed/attention.h). */
typedef struct heed_kv_put {
  heed_dtype kt, vt;
  unsigned n_kv_heads, dk, dv, block_len;
  size_t block_bytes, k_head, v_off, v_head;
  const uint32_t *blocks;
  unsigned n_blocks, row0, n;
  const float *k, *v; /* [n][n_kv_heads][dk], [n][n_kv_heads][dv] */
} heed_kv_put;

/* The limits a device backend probes for the bench. */
typedef enum heed_backend_probe { HEED_PROBE_READ, HEED_PROBE_FMA } heed_backend_probe;

/* One chunk of a vocabulary row for heed_spec: its max, the max's first
 * index, a NaN/+inf flag, and a sum of exp. */
typedef struct heed_vocab_part {
  float m;
  uint32_t arg;
  int bad;
  float z;
} heed_vocab_part;

/* Host rows to put in a device vocabulary handle: x[i] (vocab floats) goes
 * to slot slots[i], where tokens pen_pos[i][0..pen_n[i]) then take the
 * values pen_val[i][...] (the repetition penalty applied). */
typedef struct heed_vocab_load {
  unsigned n;
  const unsigned *slots;
  const float *const *x;
  const uint32_t *const *pen_pos;
  const float *const *pen_val;
  const unsigned *pen_n;
} heed_vocab_load;

/* A device's passes over vocabulary rows (spec/spec.c says what each is
 * for). A handle holds `slots` rows of `vocab` floats in device memory.
 *   max, sumexp: parts[i * n_chunks + c] for chunk c (`chunk` elements) of
 *     slot slots[i]; max fills m, arg, bad; sumexp fills z, the sum over the
 *     chunk of exp((v - m[i]) is) for v >= thr[i].
 *   hist: one slot, by distance below m: bucket min((m - v) is bscale, nb - 1);
 *     mass = 0 counts every value, mass = 1 counts the values whose
 *     exp((v - m) is) is positive and sums that into mass_out[nb].
 *   collect: the slot's values >= lo into vals (any order); *n is how many
 *     there are, of which at most cap are stored. */
typedef struct heed_vocab_ops {
  heed_status (*open)(void *ctx, unsigned vocab, unsigned slots, void **h, heed_error *err);
  void (*close)(void *ctx, void *h);
  heed_status (*load)(void *ctx, void *h, const heed_vocab_load *ld, heed_error *err);
  heed_status (*max)(void *ctx, void *h, const unsigned *slots, unsigned n, unsigned chunk, heed_vocab_part *parts,
                     heed_error *err);
  heed_status (*sumexp)(void *ctx, void *h, const unsigned *slots, const float *m, const float *thr, unsigned n,
                        float is, unsigned chunk, heed_vocab_part *parts, heed_error *err);
  heed_status (*hist)(void *ctx, void *h, unsigned slot, float m, float is, float bscale, unsigned nb, int mass,
                      uint32_t *cnt, double *mass_out, heed_error *err);
  heed_status (*collect)(void *ctx, void *h, unsigned slot, float lo, float *vals, size_t cap, size_t *n,
                         heed_error *err);
} heed_vocab_ops;

typedef struct heed_backend_iface {
  heed_backend_kind kind;
  const char *name;
  heed_status (*open)(const heed_backend_open_args *args, void **ctx, heed_error *err);
  void (*close)(void *ctx);
  /* Optional: one line for `heed info` ("avx2 kernels on 2 workers"). */
  /* One line on the open backend, written like snprintf: returns the
   * length of the whole text (buf NULL, cap 0 asks for it). */
  int (*describe)(void *ctx, char *buf, size_t cap);
  /* Optional: attention (absent: HEED_E_UNSUPPORTED). */
  heed_status (*attn_prefill)(void *ctx, const heed_attn_call *call);
  heed_status (*attn_decode)(void *ctx, const heed_attn_call *call);
  /* Optional: KV caches in device memory (absent: caches live in host memory
   * the caller provides). kv_alloc returns a handle for `bytes` of device
   * storage; the others work on that handle. kv_check says whether attention
   * on this device can read a cache of this configuration. */
  heed_status (*kv_alloc)(void *ctx, const heed_kv_cache_config *cfg, size_t bytes, void **dev, heed_error *err);
  void (*kv_free)(void *ctx, void *dev);
  heed_status (*kv_put)(void *ctx, void *dev, const heed_kv_put *put, heed_error *err);
  heed_status (*kv_copy)(void *ctx, void *dev, size_t dst, size_t src, size_t bytes, heed_error *err);
  heed_status (*kv_io)(void *ctx, void *dev, int write, size_t offset, size_t bytes, void *host, heed_error *err);
  /* Optional: one measurement of the device's read bandwidth (GB/s) or
   * multiply-add peak (GFLOP/s), for the bench's device limits. */
  heed_status (*probe)(void *ctx, heed_backend_probe what, double *value, heed_error *err);
  /* Optional: heed_spec's vocabulary passes on the device (absent: the
   * host's kernels on the pool). */
  const heed_vocab_ops *vocab;
} heed_backend_iface;

/* The open backend of a runtime and its context. */
const heed_backend_iface *heed_runtime_backend_iface(const heed_runtime *rt, void **ctx);
/* Keeps e as the runtime's last error (heed_runtime_last_error); safe from any thread. */
void heed_runtime_set_error(heed_runtime *rt, const heed_error *e);

/* The CPU backend's context, which the portable attention driver runs on. */
/* q8 K scores from a quantized query: for n keys (a multiple of 16) of one K
 * group whose per-channel scales are ks [dk] f32, s[r * lds + j] = the score
 * of row r of q [R][dk] (times ks) with key j, the query quantized per row as
 * each implementation says:
 *   _vnni (backends/cpu/avx512/attn_avx512vnni.c): v_r = q ks * 127 / max
 *     |q ks|, h_r = nearbyint(v_r), l_r = nearbyint((v_r - h_r) * 254), both
 *     int8, d_r = max |q ks| / 127, s = d_r * sum_d (h_r[d] + l_r[d] / 254) K(j, d);
 *   _sdot (backends/cpu/neon/attn_q8_neon.c, Armv8.2 dotprod): as _vnni;
 *   _avx2 (backends/cpu/avx2/attn_q8_avx2.c): c_r = nearbyint(q ks * 32767 /
 *     max |q ks|) int16, d_r = max |q ks| / 32767, s = d_r * sum_d c_r[d] K(j, d);
 * each the query to within d_r / 2 (of its own d_r) per channel, sums exact.
 * scratch: HEED_QK_Q8_SCRATCH(R, dk) bytes, 4-byte aligned. */
typedef void (*heed_attn_qk_q8_fn)(const float *q, int R, const float *ks, const void *kt, int n, int dk, float *s,
                                   int lds, void *scratch);
#define HEED_QK_Q8_SCRATCH(R, dk) (2 * (size_t)(R) * (dk) + 12 * (size_t)(R))
void heed_attn_qk_q8_vnni(const float *q, int R, const float *ks, const void *kt, int n, int dk, float *s, int lds,
                          void *scratch);
void heed_attn_qk_q8_avx2(const float *q, int R, const float *ks, const void *kt, int n, int dk, float *s, int lds,
                          void *scratch);
void heed_attn_qk_q8_sdot(const float *q, int R, const float *ks, const void *kt, int n, int dk, float *s, int lds,
                          void *scratch);
/* q8 V sums from a quantized P: o[r * dv + c] += sum_j p[r * ldp + j] vs[j]
 * V(j, c) for the nc columns (a multiple of 16) of one V group of n keys (a
 * multiple of 16) of V rows dv elements apart, vs the keys' scales for that
 * group; P times vs quantized per row as _avx2's query above (int16, step
 * d_r = max |p vs| / 32767), sums exact. scratch: HEED_PV_Q8_SCRATCH(R, n)
 * bytes, 4-byte aligned. */
typedef void (*heed_attn_pv_q8_fn)(const float *p, int ldp, int R, const float *vs, const void *v, int n, int nc,
                                   int dv, float *o, void *scratch);
#define HEED_PV_Q8_SCRATCH(R, n) (2 * (size_t)(R) * (n) + 4 * (size_t)(R))
void heed_attn_pv_q8_avx2(const float *p, int ldp, int R, const float *vs, const void *v, int n, int nc, int dv,
                          float *o, void *scratch);

typedef struct heed_cpu_ctx {
  const heed_kernel_table *kernels;
  heed_pool *pool;
  heed_attn_qk_q8_fn qk_q8; /* NULL: q8 K runs the table's float kernels */
  heed_attn_pv_q8_fn pv_q8; /* NULL: q8 V runs the table's float kernels */
} heed_cpu_ctx;
heed_status heed_cpu_attn_prefill(void *ctx, const heed_attn_call *call);
heed_status heed_cpu_attn_decode(void *ctx, const heed_attn_call *call);

/* The backend of that kind in this build, or NULL. */
const heed_backend_iface *heed_backend_find(heed_backend_kind kind);

extern const heed_backend_iface heed_backend_cpu_iface;
extern const heed_backend_iface heed_backend_opencl_iface; /* in builds with OpenCL */

#endif
