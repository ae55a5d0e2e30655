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
  char *storage;            /* borrowed: [n_blocks][block_bytes] */
  size_t k_elem, v_elem;    /* bytes per K / V element */
  size_t k_head, v_head;    /* bytes of one head's K / V rows in a block */
  size_t v_off, aux_off;    /* offsets inside a block */
  size_t block_bytes;
  unsigned max_blocks_per_seq;
  uint32_t *refs;           /* [n_blocks] */
  uint32_t *free_list;      /* [n_blocks], a stack */
  uint32_t n_free;
  kv_seq *seqs;             /* [max_seqs] */
  uint32_t *tables;         /* [max_seqs][max_blocks_per_seq] */
  heed_error err;
};

/* Keys of (block, KV head): [dk][block_len], transposed */
static inline const void *kv_k(const heed_kv_cache *c, uint32_t block, unsigned head) {
  return c->storage + (size_t)block * c->block_bytes + head * c->k_head;
}
/* Values of (block, KV head): [block_len][dv] */
static inline const void *kv_v(const heed_kv_cache *c, uint32_t block, unsigned head) {
  return c->storage + (size_t)block * c->block_bytes + c->v_off + head * c->v_head;
}

#endif
