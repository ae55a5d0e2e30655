/* attention/kv_cache.c - the paged KV cache (layout in heed/attention.h). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "attention/kv_internal.h"
#include "heed/kernels.h"
#include "runtime/internal.h"

#define ALIGN64(x) (((x) + 63) & ~(size_t)63)

static heed_status check_config(heed_runtime *rt, const heed_kv_cache_config *cfg, heed_kv_cache_config *out,
                                heed_error *err) {
  if (!cfg) return heed_err_set(err, HEED_E_INVALID, "KV cache: config is NULL");
  *out = *cfg;
  if (cfg->n_kv_heads < 1 || cfg->n_kv_heads > 256)
    return heed_err_set(err, HEED_E_INVALID, "KV cache: n_kv_heads=%u; accepted: 1..256", cfg->n_kv_heads);
  const unsigned dims[2] = {cfg->dk, cfg->dv};
  for (int i = 0; i < 2; i++)
    if (dims[i] < HEED_HEAD_DIM_MIN || dims[i] > HEED_HEAD_DIM_MAX || dims[i] % 16)
      return heed_err_set(err, HEED_E_INVALID, "KV cache: %s=%u; accepted: a multiple of 16 in %d..%d",
                          i ? "dv" : "dk", dims[i], HEED_HEAD_DIM_MIN, HEED_HEAD_DIM_MAX);
  const heed_dtype types[2] = {cfg->k_dtype, cfg->v_dtype};
  for (int i = 0; i < 2; i++)
    if (types[i] != HEED_DTYPE_F32 && types[i] != HEED_DTYPE_F16 && types[i] != HEED_DTYPE_BF16)
      return heed_err_set(err, HEED_E_INVALID, "KV cache: %s=%d; accepted: f32, f16, bf16", i ? "v_dtype" : "k_dtype",
                          (int)types[i]);
  /* The plan sizes blocks for the wider of the two. */
  heed_dtype wide = heed_dtype_bits(cfg->k_dtype) >= heed_dtype_bits(cfg->v_dtype) ? cfg->k_dtype : cfg->v_dtype;
  if (cfg->block_len == 0) {
    heed_tile_plan plan;
    if (!rt) return heed_err_set(err, HEED_E_INVALID, "KV cache: block_len=0 needs a runtime to plan it");
    heed_status st = heed_runtime_tile_plan(rt, cfg->dk, cfg->dv, wide, &plan);
    if (st != HEED_OK) return heed_err_set(err, st, "KV cache: %s", heed_runtime_last_error(rt));
    out->block_len = plan.kv_block;
  } else if (cfg->block_len < 16 || cfg->block_len > 1024 || (cfg->block_len & (cfg->block_len - 1))) {
    return heed_err_set(err, HEED_E_INVALID, "KV cache: block_len=%u; accepted: 0 (plan) or a power of two in 16..1024",
                        cfg->block_len);
  }
  if (cfg->n_blocks < 1)
    return heed_err_set(err, HEED_E_INVALID, "KV cache: n_blocks=%u; accepted: >= 1", (unsigned)cfg->n_blocks);
  if (cfg->max_seqs < 1 || cfg->max_seqs > 65536)
    return heed_err_set(err, HEED_E_INVALID, "KV cache: max_seqs=%u; accepted: 1..65536", cfg->max_seqs);
  if (cfg->max_seq_len < 1)
    return heed_err_set(err, HEED_E_INVALID, "KV cache: max_seq_len=%u; accepted: >= 1", cfg->max_seq_len);
  return HEED_OK;
}

static void layout(heed_kv_cache *c) {
  const heed_kv_cache_config *g = &c->cfg;
  c->k_elem = heed_dtype_bits(g->k_dtype) / 8;
  c->v_elem = heed_dtype_bits(g->v_dtype) / 8;
  c->k_head = (size_t)g->block_len * g->dk * c->k_elem;
  c->v_head = (size_t)g->block_len * g->dv * c->v_elem;
  c->v_off = ALIGN64(g->n_kv_heads * c->k_head);
  c->aux_off = ALIGN64(c->v_off + g->n_kv_heads * c->v_head);
  c->block_bytes = c->aux_off; /* no per-block scales for float formats */
  c->max_blocks_per_seq = (g->max_seq_len + g->block_len - 1) / g->block_len;
}

heed_status heed_kv_cache_bytes(heed_runtime *rt, const heed_kv_cache_config *cfg, size_t *bytes, unsigned *block_len) {
  heed_kv_cache c;
  memset(&c, 0, sizeof c);
  heed_status st = check_config(rt, cfg, &c.cfg, NULL);
  if (st != HEED_OK) return st;
  layout(&c);
  if (bytes) *bytes = c.block_bytes * c.cfg.n_blocks;
  if (block_len) *block_len = c.cfg.block_len;
  return HEED_OK;
}

heed_status heed_kv_cache_create(heed_runtime *rt, const heed_kv_cache_config *cfg, void *storage, size_t storage_bytes,
                                 heed_kv_cache **out, heed_error *err) {
  if (!out) return heed_err_set(err, HEED_E_INVALID, "heed_kv_cache_create: out is NULL");
  *out = NULL;
  heed_kv_cache *c = calloc(1, sizeof *c);
  if (!c) return heed_err_set(err, HEED_E_NOMEM, "no memory for the KV cache");
  heed_status st = check_config(rt, cfg, &c->cfg, err);
  if (st != HEED_OK) goto fail;
  layout(c);
  size_t need = c->block_bytes * c->cfg.n_blocks;
  if (!storage || ((uintptr_t)storage & 63)) {
    st = heed_err_set(err, HEED_E_INVALID, "KV cache: storage %p; accepted: 64-byte aligned, not NULL", storage);
    goto fail;
  }
  if (storage_bytes < need) {
    st = heed_err_set(err, HEED_E_TOO_SMALL, "KV cache: storage of %zu bytes; %u blocks of %zu need %zu", storage_bytes,
                      (unsigned)c->cfg.n_blocks, c->block_bytes, need);
    goto fail;
  }
  c->storage = storage;
  c->refs = calloc(c->cfg.n_blocks, sizeof *c->refs);
  c->free_list = malloc(c->cfg.n_blocks * sizeof *c->free_list);
  c->seqs = calloc(c->cfg.max_seqs, sizeof *c->seqs);
  c->tables = malloc((size_t)c->cfg.max_seqs * c->max_blocks_per_seq * sizeof *c->tables);
  if (!c->refs || !c->free_list || !c->seqs || !c->tables) {
    st = heed_err_set(err, HEED_E_NOMEM, "no memory for the tables of %u sequences", c->cfg.max_seqs);
    goto fail;
  }
  for (uint32_t i = 0; i < c->cfg.n_blocks; i++) c->free_list[i] = c->cfg.n_blocks - 1 - i; /* pop gives block 0 first */
  c->n_free = c->cfg.n_blocks;
  for (unsigned s = 0; s < c->cfg.max_seqs; s++) c->seqs[s].blocks = c->tables + (size_t)s * c->max_blocks_per_seq;
  *out = c;
  return HEED_OK;
fail:
  heed_kv_cache_destroy(c);
  return st;
}

void heed_kv_cache_destroy(heed_kv_cache *c) {
  if (!c) return;
  free(c->refs);
  free(c->free_list);
  free(c->seqs);
  free(c->tables);
  free(c);
}

const char *heed_kv_cache_last_error(const heed_kv_cache *c) { return c ? c->err.msg : ""; }
const heed_kv_cache_config *heed_kv_cache_get_config(const heed_kv_cache *c) { return c ? &c->cfg : NULL; }
uint32_t heed_kv_cache_free_blocks(const heed_kv_cache *c) { return c ? c->n_free : 0; }
size_t heed_kv_cache_block_bytes(const heed_kv_cache *c) { return c ? c->block_bytes : 0; }
void *heed_kv_cache_storage(const heed_kv_cache *c) { return c ? c->storage : NULL; }

static heed_status get_seq(heed_kv_cache *c, int seq, kv_seq **out) {
  if (seq < 0 || (unsigned)seq >= c->cfg.max_seqs || !c->seqs[seq].alive)
    return heed_err_set(&c->err, HEED_E_INVALID, "sequence %d does not exist (ids 0..%u, alive ones only)", seq,
                        c->cfg.max_seqs - 1);
  *out = &c->seqs[seq];
  return HEED_OK;
}

static heed_status new_slot(heed_kv_cache *c, int *seq) {
  for (unsigned s = 0; s < c->cfg.max_seqs; s++)
    if (!c->seqs[s].alive) {
      *seq = (int)s;
      return HEED_OK;
    }
  return heed_err_set(&c->err, HEED_E_NOMEM, "all %u sequence slots are in use", c->cfg.max_seqs);
}

static uint32_t take_block(heed_kv_cache *c) {
  uint32_t b = c->free_list[--c->n_free];
  c->refs[b] = 1;
  return b;
}

static void drop_block(heed_kv_cache *c, uint32_t b) {
  if (--c->refs[b] == 0) c->free_list[c->n_free++] = b;
}

heed_status heed_kv_seq_new(heed_kv_cache *c, int *seq) {
  if (!c) return HEED_E_INVALID;
  if (!seq) return heed_err_set(&c->err, HEED_E_INVALID, "heed_kv_seq_new: seq is NULL");
  heed_status st = new_slot(c, seq);
  if (st != HEED_OK) return st;
  kv_seq *s = &c->seqs[*seq];
  s->alive = 1;
  s->len = 0;
  s->n_blocks = 0;
  return HEED_OK;
}

/* Stores n values, the i-th at dst + i * stride elements (stride 1: a V row;
 * HEED_KEY_PANEL: a key's channels in its K panel). */
typedef void (*store_fn)(void *dst, size_t stride, const float *src, unsigned n);
static void store_f32(void *dst, size_t stride, const float *src, unsigned n) {
  for (unsigned i = 0; i < n; i++) ((float *)dst)[i * stride] = src[i];
}
static void store_f16(void *dst, size_t stride, const float *src, unsigned n) {
  for (unsigned i = 0; i < n; i++) ((heed_f16 *)dst)[i * stride] = heed_f32_to_f16(src[i]);
}
static void store_bf16(void *dst, size_t stride, const float *src, unsigned n) {
  for (unsigned i = 0; i < n; i++) ((heed_bf16 *)dst)[i * stride] = heed_f32_to_bf16(src[i]);
}

heed_status heed_kv_seq_append(heed_kv_cache *c, int seq, unsigned n, const float *k, const float *v) {
  if (!c) return HEED_E_INVALID;
  kv_seq *s = NULL;
  heed_status st = get_seq(c, seq, &s);
  if (st != HEED_OK) return st;
  if (n == 0) return HEED_OK;
  if (!k || !v) return heed_err_set(&c->err, HEED_E_INVALID, "append to sequence %d: k or v is NULL", seq);
  const heed_kv_cache_config *g = &c->cfg;
  if ((uint64_t)s->len + n > g->max_seq_len)
    return heed_err_set(&c->err, HEED_E_RANGE, "append of %u tokens to sequence %d (holding %u): beyond max_seq_len=%u", n,
                        seq, s->len, g->max_seq_len);
  /* Nothing is written unless every value is finite. */
  for (unsigned t = 0; t < n; t++)
    for (unsigned h = 0; h < g->n_kv_heads; h++) {
      const float *kr = k + ((size_t)t * g->n_kv_heads + h) * g->dk, *vr = v + ((size_t)t * g->n_kv_heads + h) * g->dv;
      for (unsigned d = 0; d < g->dk; d++)
        if (!isfinite(kr[d]))
          return heed_err_set(&c->err, HEED_E_INVALID, "append to sequence %d: K of token %u (position %u), head %u, dim %u is %g",
                              seq, t, s->len + t, h, d, kr[d]);
      for (unsigned d = 0; d < g->dv; d++)
        if (!isfinite(vr[d]))
          return heed_err_set(&c->err, HEED_E_INVALID, "append to sequence %d: V of token %u (position %u), head %u, dim %u is %g",
                              seq, t, s->len + t, h, d, vr[d]);
    }
  unsigned bl = g->block_len, new_len = s->len + n;
  unsigned need_blocks = (new_len + bl - 1) / bl;
  int cow = s->len % bl != 0 && c->refs[s->blocks[s->n_blocks - 1]] > 1;
  uint32_t want = need_blocks - s->n_blocks + (cow ? 1 : 0);
  if (want > c->n_free)
    return heed_err_set(&c->err, HEED_E_NOMEM, "append of %u tokens to sequence %d needs %u free blocks; %u are free", n,
                        seq, (unsigned)want, (unsigned)c->n_free);
  if (cow) { /* the partly filled last block is shared: write into a private copy */
    uint32_t old = s->blocks[s->n_blocks - 1], fresh = take_block(c);
    memcpy(c->storage + (size_t)fresh * c->block_bytes, c->storage + (size_t)old * c->block_bytes, c->block_bytes);
    drop_block(c, old);
    s->blocks[s->n_blocks - 1] = fresh;
  }
  while (s->n_blocks < need_blocks) s->blocks[s->n_blocks++] = take_block(c);
  static const store_fn stores[HEED_DTYPE_COUNT] = {[HEED_DTYPE_F32] = store_f32, [HEED_DTYPE_F16] = store_f16,
                                                    [HEED_DTYPE_BF16] = store_bf16};
  store_fn store_k = stores[g->k_dtype], store_v = stores[g->v_dtype];
  for (unsigned t = 0; t < n; t++) {
    unsigned pos = s->len + t;
    char *blk = c->storage + (size_t)s->blocks[pos / bl] * c->block_bytes;
    size_t row = pos % bl;
    for (unsigned h = 0; h < g->n_kv_heads; h++) {
      size_t kcol = ((row / HEED_KEY_PANEL) * g->dk * HEED_KEY_PANEL + row % HEED_KEY_PANEL) * c->k_elem;
      store_k(blk + h * c->k_head + kcol, HEED_KEY_PANEL, k + ((size_t)t * g->n_kv_heads + h) * g->dk, g->dk);
      store_v(blk + c->v_off + h * c->v_head + row * g->dv * c->v_elem, 1, v + ((size_t)t * g->n_kv_heads + h) * g->dv,
              g->dv);
    }
  }
  s->len = new_len;
  return HEED_OK;
}

heed_status heed_kv_seq_fork(heed_kv_cache *c, int src, int *dst) {
  if (!c) return HEED_E_INVALID;
  kv_seq *s = NULL;
  heed_status st = get_seq(c, src, &s);
  if (st != HEED_OK) return st;
  if (!dst) return heed_err_set(&c->err, HEED_E_INVALID, "heed_kv_seq_fork: dst is NULL");
  if ((st = new_slot(c, dst)) != HEED_OK) return st;
  kv_seq *d = &c->seqs[*dst];
  d->alive = 1;
  d->len = s->len;
  d->n_blocks = s->n_blocks;
  memcpy(d->blocks, s->blocks, s->n_blocks * sizeof *s->blocks);
  for (unsigned i = 0; i < s->n_blocks; i++) c->refs[s->blocks[i]]++;
  return HEED_OK;
}

heed_status heed_kv_seq_truncate(heed_kv_cache *c, int seq, unsigned len) {
  if (!c) return HEED_E_INVALID;
  kv_seq *s = NULL;
  heed_status st = get_seq(c, seq, &s);
  if (st != HEED_OK) return st;
  if (len > s->len)
    return heed_err_set(&c->err, HEED_E_RANGE, "truncate sequence %d to %u tokens: it holds %u", seq, len, s->len);
  unsigned keep = (len + c->cfg.block_len - 1) / c->cfg.block_len;
  while (s->n_blocks > keep) drop_block(c, s->blocks[--s->n_blocks]);
  s->len = len;
  return HEED_OK;
}

heed_status heed_kv_seq_free(heed_kv_cache *c, int seq) {
  heed_status st = heed_kv_seq_truncate(c, seq, 0);
  if (st != HEED_OK) return st;
  c->seqs[seq].alive = 0;
  return HEED_OK;
}

long heed_kv_seq_len(const heed_kv_cache *c, int seq) {
  if (!c || seq < 0 || (unsigned)seq >= c->cfg.max_seqs || !c->seqs[seq].alive) return -1;
  return (long)c->seqs[seq].len;
}

heed_status heed_kv_seq_blocks(const heed_kv_cache *c, int seq, const uint32_t **blocks, unsigned *n) {
  if (!c || seq < 0 || (unsigned)seq >= c->cfg.max_seqs || !c->seqs[seq].alive || !blocks || !n) return HEED_E_INVALID;
  *blocks = c->seqs[seq].blocks;
  *n = c->seqs[seq].n_blocks;
  return HEED_OK;
}

unsigned heed_kv_block_refs(const heed_kv_cache *c, uint32_t block) {
  return c && block < c->cfg.n_blocks ? c->refs[block] : 0;
}
