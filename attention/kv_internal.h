/* attention/kv_internal.h - the cache's inside, shared with the attention
 * driver. Internal. */
#ifndef HEED_KV_INTERNAL_H
#define HEED_KV_INTERNAL_H

#include "heed/attention.h"

typedef struct kv_seq {
  int alive;
  unsigned len;      /* tokens */
  unsigned n_blocks; /* blocks in use: ceil(len / block_len) */
  uint32_t *blocks;  /* [max_blocks_per_seq] */
} kv_seq;

struct heed_kv_cache {
  heed_kv_cache_config cfg;
  char *storage;            /* borrowed: [n_blocks][block_bytes], then [max_seqs][res_bytes] */
  int quant;                /* K or V quantized: full blocks only, plus a residual block per sequence */
  size_t k_head, v_head;    /* bytes of one head's K / V codes in a block */
  size_t v_off, aux_off;    /* offsets inside a block */
  size_t k_aux, v_aux;      /* bytes of one head's K / V scales (at aux_off, then aux_off + heads * k_aux) */
  size_t lead_off;          /* a quantized side's row 0 in f16 (heed/attention.h): K [heads][dk], then V [heads][dv] */
  size_t k_lead, v_lead;    /* bytes of one head's K / V lead row: 0 for a float side */
  size_t block_bytes;
  size_t res_off;           /* the residual blocks (quant only): K panels then V rows, */
  heed_dtype res_kt, res_vt; /* f16 for a quantized side, the side's type for a float one */
  size_t res_k_head, res_v_head, res_v_off, res_bytes;
  unsigned max_blocks_per_seq;
  uint32_t *refs;           /* [n_blocks] */
  uint32_t *free_list;      /* [n_blocks], a stack */
  uint32_t n_free;
  kv_seq *seqs;             /* [max_seqs] */
  uint32_t *tables;         /* [max_seqs][max_blocks_per_seq] */
  float *tmp;               /* quantizing scratch: block_len * max(dk, dv) + dk + dv values */
  uint8_t *tmp_codes;       /* and as many codes */
  /* device memory (a backend with kv_alloc, e.g. opencl): storage is NULL */
  void *dev;                       /* the backend's handle */
  const struct heed_backend_iface *dev_be;
  void *dev_ctx;
  char *blk_host;                  /* [block_bytes]: a block read back or sealed in host memory */
  char *res_host;                  /* quantized: the residual blocks, [max_seqs][res_bytes], kept in host
                                    * memory as well, where append, seal, fork and truncate work on them;
                                    * the rows they change are written through to the device */
  heed_error err;
};

/* Keys of (block, KV head): [block_len/16][dk][16] panels */
static inline const void *kv_k(const heed_kv_cache *c, uint32_t block, unsigned head) {
  return c->storage + (size_t)block * c->block_bytes + head * c->k_head;
}
/* Values of (block, KV head): [block_len][dv] */
static inline const void *kv_v(const heed_kv_cache *c, uint32_t block, unsigned head) {
  return c->storage + (size_t)block * c->block_bytes + c->v_off + head * c->v_head;
}

/* Where one block's tokens of one KV head are, and how they are stored:
 * a pool block (any format) or a sequence's residual block (f16 for a quantized side). */
typedef struct kv_view {
  const char *k, *v;         /* codes: K panels, V rows */
  heed_dtype kt, vt;
  const heed_f16 *ks, *km;   /* q8/q4 K: scales, mins [block_len / k_group][dk] */
  const heed_f16 *vs, *vm;   /* q8/q4 V: scales, mins [block_len][dv / v_group] */
  float kscale, vscale;      /* fp8: the (block, head) scale, times 2^8 for e4m3 (heed/kernels.h) */
  const heed_f16 *kl, *vl;   /* a quantized side of a pool block: row 0 as it is read, f16 [dk] / [dv]; else NULL */
} kv_view;

/* Block index b (0-based) of a sequence whose table is blocks and whose
 * residual slot is res_seq (-1: none): b < n_full is a pool block. */
void kv_view_of(const heed_kv_cache *c, const uint32_t *blocks, unsigned n_full, int res_seq, unsigned b, unsigned head,
                kv_view *out);
/* The same for a pool block whose bytes are at blk (the storage, or a copy). */
void kv_view_block(const heed_kv_cache *c, const char *blk, unsigned head, kv_view *out);
/* Blocks of bl tokens that len tokens take, rounded up in 64 bits (len may be
 * near 2^32 when max_seq_len is; 32 bits wrapped to 0, found by fuzzing). */
static inline unsigned kv_blocks_for(unsigned len, unsigned bl) { return (unsigned)(((uint64_t)len + bl - 1) / bl); }

/* Full (pool) blocks of a sequence of len tokens: all of them for a float cache. */
static inline unsigned kv_n_full(const heed_kv_cache *c, unsigned len) {
  return c->quant ? len / c->cfg.block_len : kv_blocks_for(len, c->cfg.block_len);
}

/* The tokens a view reads: its block table and length, checked against the
 * cache (attention/attention.c). */
heed_status kv_resolve_seq(const heed_kv_cache *c, heed_attn_seq s, const uint32_t **blocks, unsigned *len,
                           heed_error *e);

#endif
