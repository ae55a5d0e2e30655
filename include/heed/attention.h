/* heed/attention.h - paged KV cache and IO-aware attention on the CPU backend.
 *
 * KV cache. The cache is a pool of fixed-size blocks in memory the caller owns
 * (heed_kv_cache_bytes says how much), plus per-sequence block tables that heed
 * keeps. A block holds block_len consecutive tokens of one sequence:
 *
 *   block b at  storage + b * block_bytes:
 *     K   [n_kv_heads][block_len/16][dk][16]  k_dtype codes (offset 0; panels of 16 keys)
 *     V   [n_kv_heads][block_len][dv]         v_dtype codes (offset 64-aligned)
 *     aux [n_kv_heads] K scales, then [n_kv_heads] V scales (offset 64-aligned;
 *         0 bytes for f32/f16/bf16):
 *           q8 K  f16 scale [block_len/k_group][dk]      (per channel, over k_group tokens)
 *           q4 K  f16 scale, then f16 min, each [block_len/k_group][dk]
 *           q8 V  f16 scale [block_len][dv/v_group]       (per token, over v_group channels)
 *           q4 V  f16 scale, then f16 min, each [block_len][dv/v_group]
 *           e4m3, e5m2 (K or V)  one f32 scale per (block, head)
 *     lead (quantized sides only) K [n_kv_heads][dk] f16, then V [n_kv_heads][dv] f16
 *         (offset just after aux): row 0 of the block, which reads these
 *         values instead of its codes (below)
 *
 * so the keys of one (block, KV head) are contiguous, packed BLIS-style in
 * panels of 16 keys, each panel [dk][16] (key j, channel d of the block at
 * panel j/16, element d*16 + j%16). A panel streams linearly and stays in L1,
 * q.K becomes an outer product (no horizontal sums), and a channel's values
 * over 16 tokens sit together, which is what per-channel key quantization
 * (KIVI) needs. V stays token-major, [block_len][dv], for the P.V
 * accumulation. Elements come in runs of 16 (a panel row, 16 V columns): 4
 * bytes each for f32, 2 for f16/bf16, 1 for q8/e4m3/e5m2; a q4 run is 8
 * bytes, byte i holding element i in its low nibble and element i+8 in its
 * high one. The formats' values are those of heed/quant.h's reference
 * (de)quantizers: q8 x = code * scale; q4 x = code * scale + min; fp8
 * x = fp8(code) * scale. A block's q4 codes come from heed_q4_quantize_fit
 * (min/max refined by least squares), q8 and fp8 from their quantizers.
 *
 * Token t of a sequence lives in block table[t / block_len], column/row t % block_len.
 * Blocks are shared by reference count: fork copies a block table, not data;
 * the first append that would write into a shared block copies that block
 * first (copy-on-write). Truncate drops tokens from the end (rejected
 * speculative tokens); blocks no sequence uses return to the free list.
 *
 * Quantized caches (K or V in q8, q4, e4m3, e5m2). The pool holds full blocks
 * only, quantized once when they fill and never written again, so forks share
 * them without requantizing. A sequence's newest tokens, up to block_len - 1,
 * stay in its residual block, in the same layout, f16 for a quantized side
 * (a float side keeps its type), in a region after the pool (one residual block per sequence slot, see heed_kv_cache_bytes); fork
 * copies the residual's used rows. A quantized block keeps its row 0 in f16
 * as well (its lead row, about 1% of a q4 block), and that row's K and V are
 * those f16 values, not its codes (which are still written, from the same
 * group ranges). Row 0 of a sequence's first block is the token models attend
 * to most (the attention sink, most heads' resting place); every block has a
 * lead row, so blocks stay interchangeable (fork, prefix cache, disk, chunk
 * reuse). Qwen2.5-Coder 1.5B with q4 K and V, 512-token windows, 2048 scored
 * tokens of licence text and code: mean KL divergence from the f16 cache's
 * next-token distributions 0.0145 before, 0.0133 with the lead row, 0.0107
 * with it and least-squares q4 codes (before their per-value bound); on
 * GPL-3, 4 windows, perplexity +3.7% before, +1.2% now.
 * Truncating into a full block dequantizes
 * the tokens kept from it back into the residual, so that block is
 * requantized exactly once, when it fills again. A caller-managed block table
 * (heed_attn_seq with seq < 0) over a quantized cache covers full blocks only.
 *
 * Attention. Queries are f32, laid out [n_q][n_q_heads][dk]; output is f32
 * [n_q][n_q_heads][dv]; the optional log-sum-exp is [n_q][n_q_heads] (natural
 * log, of the scaled, capped scores and the sink). Query head h reads KV head
 * h / (n_q_heads / n_kv_heads) (GQA; MQA when n_kv_heads is 1). A query at
 * position p sees key position k when
 *   k <= p                                  (always: keys after a query are never seen)
 *   p - k < window                          (when window > 0)
 *   tree_mask[i][j]                         (decode with a tree: for the in-flight tokens)
 * A row that sees no key and has no sink gets output 0 and lse -inf.
 * Queries must be finite: a NaN or inf is refused (HEED_E_INVALID, naming
 * query, head and dim) before anything is written, on every backend, and so
 * is a query whose product with scale overflows (HEED_E_RANGE). A q.k that
 * overflows float (keys near FLT_MAX in an f32 cache) is not checked.
 * Scores are scale * q.k, then cap * tanh(s / cap) when softcap > 0.
 *
 * Work space is the caller's too: heed_attn_*_workspace says how much. Nothing
 * is allocated while attention runs.
 *
 * Threads: a call runs on the runtime's pool, one call at a time per runtime;
 * a second call while one runs (another thread, or from inside a task)
 * returns HEED_E_BUSY and writes nothing. Calls only read the cache, so
 * several runtimes may read one cache at once; appends, forks, truncates and
 * frees must not overlap attention on the same cache.
 */
#ifndef HEED_ATTENTION_H
#define HEED_ATTENTION_H

#include <stddef.h>
#include <stdint.h>

#include "heed/dtype.h"
#include "heed/runtime.h"
#include "heed/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Head dims heed's kernels take: multiples of 16 from 32 to 256 (64, 80, 96,
 * 112, 128, 192, 256 and the rest); dk and dv may differ. */
#define HEED_HEAD_DIM_MIN 32
#define HEED_HEAD_DIM_MAX 256
#define HEED_MAX_DECODE_QUERIES 16

typedef struct heed_kv_cache heed_kv_cache;

typedef struct heed_kv_cache_config {
  unsigned n_kv_heads;   /* 1..256 */
  unsigned dk, dv;       /* head dims of K and V */
  heed_dtype k_dtype;    /* how K is stored: f32, f16, bf16, q8, q4, e4m3, e5m2 */
  heed_dtype v_dtype;    /* how V is stored, chosen independently of K */
  unsigned block_len;    /* tokens per block, a power of two in 16..1024; 0: the runtime's tile plan */
  unsigned k_group;      /* q8/q4 K: tokens sharing a channel's scale, a power of two in
                            16..256, at most block_len; 0: 32 (16 when block_len is 16) */
  unsigned v_group;      /* q8/q4 V: channels sharing a token's scale, a power of two in
                            16..256 dividing dv; 0: 32 when it divides dv, else 16 */
  uint32_t n_blocks;     /* blocks in the pool */
  unsigned max_seqs;     /* sequences alive at once */
  unsigned max_seq_len;  /* tokens one sequence may hold */
} heed_kv_cache_config;

/* Bytes of storage the caller provides (64-byte aligned): the pool's blocks,
 * plus, for a quantized cache, max_seqs residual blocks (block_len tokens
 * each, f16 for a quantized side); and the block length the runtime's plan picks when
 * cfg->block_len is 0. */
heed_status heed_kv_cache_bytes(heed_runtime *rt, const heed_kv_cache_config *cfg, size_t *bytes,
                                unsigned *block_len);
/* storage: borrowed, at least heed_kv_cache_bytes, 64-byte aligned, must
 * outlive the cache. heed allocates only the small tables.
 * On a runtime whose backend computes on a device (opencl) the cache lives in
 * that device's memory: pass storage NULL and storage_bytes 0; create
 * allocates heed_kv_cache_bytes there and destroy frees them. Such a cache is
 * read by attention on that runtime only, and a host cache by CPU runtimes
 * only; either mix-up is refused with a message. */
heed_status heed_kv_cache_create(heed_runtime *rt, const heed_kv_cache_config *cfg, void *storage,
                                 size_t storage_bytes, heed_kv_cache **out, heed_error *err);
void heed_kv_cache_destroy(heed_kv_cache *c); /* NULL is fine; the storage stays the caller's */
/* The message of the last failed call on this cache (append, fork, truncate,
 * free, read, storage access). Attention only reads a cache: its refusals,
 * and those of heed_kv_cache_bytes, are kept by the runtime
 * (heed_runtime_last_error). */
const char *heed_kv_cache_last_error(const heed_kv_cache *c);
/* The configuration in force (block_len filled in). Borrowed. */
const heed_kv_cache_config *heed_kv_cache_get_config(const heed_kv_cache *c);
uint32_t heed_kv_cache_free_blocks(const heed_kv_cache *c);
size_t heed_kv_cache_block_bytes(const heed_kv_cache *c);
void *heed_kv_cache_storage(const heed_kv_cache *c); /* NULL for a cache in device memory */
/* 1 when the cache is in a device's memory (see heed_kv_cache_create). */
int heed_kv_cache_on_device(const heed_kv_cache *c);
/* Raw bytes [offset, offset+bytes) of the storage, host or device: the same
 * layout on every backend, so blocks one backend wrote can be copied to a
 * cache of the same configuration on another and read there through a block
 * table (heed_attn_seq with seq < 0). Writing changes no sequence. */
heed_status heed_kv_cache_storage_read(const heed_kv_cache *c, size_t offset, size_t bytes, void *dst);
heed_status heed_kv_cache_storage_write(heed_kv_cache *c, size_t offset, size_t bytes, const void *src);

/* A new, empty sequence; *seq is its id (0..max_seqs-1). */
heed_status heed_kv_seq_new(heed_kv_cache *c, int *seq);
/* Appends n tokens. k: [n][n_kv_heads][dk] f32, v: [n][n_kv_heads][dv] f32,
 * converted to the cache's dtype (quantized caches: f16 into the residual,
 * each block quantized when it fills). Either all n are appended or none: a
 * NaN or inf (HEED_E_INVALID), or a value the cache would store as inf
 * (HEED_E_RANGE: a magnitude of 65520 or more where values are stored as f16
 * first, which is every quantized side too; 0x1.ff0p127 and up for bf16),
 * refuses the whole append, the message naming token, head and dim. The
 * same on every backend. */
heed_status heed_kv_seq_append(heed_kv_cache *c, int seq, unsigned n, const float *k, const float *v);
/* A new sequence sharing src's tokens (no copy); *dst is its id. */
heed_status heed_kv_seq_fork(heed_kv_cache *c, int src, int *dst);
/* Keeps the first len tokens (len <= current length). */
heed_status heed_kv_seq_truncate(heed_kv_cache *c, int seq, unsigned len);
heed_status heed_kv_seq_free(heed_kv_cache *c, int seq);
/* Tokens held; -1 for a sequence that does not exist. */
long heed_kv_seq_len(const heed_kv_cache *c, int seq);
/* The sequence's block table, borrowed until its next append/truncate/free
 * (a quantized cache: its full blocks; the rest is in its residual block). */
heed_status heed_kv_seq_blocks(const heed_kv_cache *c, int seq, const uint32_t **blocks, unsigned *n_blocks);
/* Tokens [t0, t0+n) of a sequence as the cache holds them, decoded to f32
 * (what attention reads): k [n][n_kv_heads][dk], v [n][n_kv_heads][dv]. */
heed_status heed_kv_seq_read(const heed_kv_cache *c, int seq, unsigned t0, unsigned n, float *k, float *v);
/* Whole blocks as stored, for a tier outside the pool (a server's disk
 * cache): block b (0-based) of a sequence, which must be full, as its
 * heed_kv_cache_block_bytes raw bytes (the layout of every backend); and a
 * block of such bytes appended to a sequence whose length is a multiple of
 * block_len (a fresh pool block; block_len tokens longer). An append is
 * refused, writing nothing, when no block is free, past max_seq_len, or when
 * the bytes hold a value that is not finite; the bytes are otherwise taken
 * as they are, so they must come from a cache of the same configuration. */
heed_status heed_kv_seq_block_read(const heed_kv_cache *c, int seq, unsigned b, void *dst);
heed_status heed_kv_seq_block_append(heed_kv_cache *c, int seq, const void *src);
/* Reference count of a block (0: free). */
unsigned heed_kv_block_refs(const heed_kv_cache *c, uint32_t block);

typedef struct heed_attn_params {
  unsigned n_q_heads, n_kv_heads;  /* n_q_heads a multiple of n_kv_heads */
  unsigned dk, dv;                 /* must match the cache */
  float scale;                     /* multiplies q.k; usually 1/sqrt(dk) */
  unsigned window;                 /* 0: no sliding window */
  float softcap;                   /* 0: none */
  const float *sinks;              /* [n_q_heads] learned logits joining each softmax, or NULL */
} heed_attn_params;

/* Which tokens attention reads: a sequence of the cache, or (seq < 0) a block
 * table the caller manages over the same storage, n_tokens long. */
typedef struct heed_attn_seq {
  int seq;
  const uint32_t *blocks;   /* used when seq < 0: [ceil(n_tokens / block_len)] */
  unsigned n_tokens;        /* used when seq < 0 */
} heed_attn_seq;

/* Prefill: n_q queries at positions q_start .. q_start+n_q-1 of one sequence
 * whose K/V are already appended (the sequence holds >= q_start+n_q tokens).
 * Causal; chunked prefill is several calls with increasing q_start.
 * q: [n_q][n_q_heads][dk]; out: [n_q][n_q_heads][dv]; lse: NULL or [n_q][n_q_heads]. */
heed_status heed_attn_prefill_workspace(heed_runtime *rt, const heed_attn_params *p, unsigned n_q, size_t *bytes);
heed_status heed_attn_prefill(heed_runtime *rt, const heed_kv_cache *c, const heed_attn_params *p,
                              heed_attn_seq s, unsigned q_start, unsigned n_q, const float *q, float *out,
                              float *lse, void *workspace, size_t workspace_bytes);

/* Decode: for each sequence, its last n_q (1..16) tokens are queries (their
 * K/V already appended): causal among themselves, or as tree_mask says
 * ([n_q][n_q], row i: which in-flight tokens query i sees). The queries of
 * all sequences are stacked in q/out/lse in batch order. */
typedef struct heed_attn_decode_seq {
  heed_attn_seq kv;
  unsigned n_q;
  const uint8_t *tree_mask; /* NULL: causal */
} heed_attn_decode_seq;

heed_status heed_attn_decode_workspace(heed_runtime *rt, const heed_attn_params *p,
                                       const heed_attn_decode_seq *seqs, unsigned n_seqs, size_t *bytes);
heed_status heed_attn_decode(heed_runtime *rt, const heed_kv_cache *c, const heed_attn_params *p,
                             const heed_attn_decode_seq *seqs, unsigned n_seqs, const float *q, float *out,
                             float *lse, void *workspace, size_t workspace_bytes);

#ifdef __cplusplus
}
#endif
#endif
