/* attention/kv_cache.c - the paged KV cache (layout in heed/attention.h). */
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "attention/kv_internal.h"
#include "backends/cpu/kv_elem.h"
#include "heed/kernels.h"
#include "heed/quant.h"
#include "runtime/backend.h"
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
    if ((unsigned)types[i] >= HEED_DTYPE_COUNT)
      return heed_err_set(err, HEED_E_INVALID, "KV cache: %s=%d; accepted: f32, f16, bf16, q8, q4, e4m3, e5m2",
                          i ? "v_dtype" : "k_dtype", (int)types[i]);
  /* The plan sizes blocks for the wider of the two (a quantized cache reads f16 residuals too). */
  heed_dtype wide = heed_dtype_bits(cfg->k_dtype) >= heed_dtype_bits(cfg->v_dtype) ? cfg->k_dtype : cfg->v_dtype;
  if (heed_dtype_is_quant(wide)) wide = HEED_DTYPE_F16;
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
  if (cfg->k_group && (cfg->k_group < 16 || cfg->k_group > 256 || (cfg->k_group & (cfg->k_group - 1)) ||
                       cfg->k_group > out->block_len))
    return heed_err_set(err, HEED_E_INVALID, "KV cache: k_group=%u; accepted: 0 or a power of two in 16..256, at most block_len=%u",
                        cfg->k_group, out->block_len);
  if (cfg->v_group && (cfg->v_group < 16 || cfg->v_group > 256 || (cfg->v_group & (cfg->v_group - 1)) || cfg->dv % cfg->v_group))
    return heed_err_set(err, HEED_E_INVALID, "KV cache: v_group=%u; accepted: 0 or a power of two in 16..256 dividing dv=%u",
                        cfg->v_group, cfg->dv);
  if (!out->k_group) out->k_group = out->block_len < 32 ? 16 : 32;
  if (!out->v_group) out->v_group = cfg->dv % 32 ? 16 : 32;
  if (cfg->n_blocks < 1)
    return heed_err_set(err, HEED_E_INVALID, "KV cache: n_blocks=%u; accepted: >= 1", (unsigned)cfg->n_blocks);
  if (cfg->max_seqs < 1 || cfg->max_seqs > 65536)
    return heed_err_set(err, HEED_E_INVALID, "KV cache: max_seqs=%u; accepted: 1..65536", cfg->max_seqs);
  if (cfg->max_seq_len < 1)
    return heed_err_set(err, HEED_E_INVALID, "KV cache: max_seq_len=%u; accepted: >= 1", cfg->max_seq_len);
  return HEED_OK;
}

/* Bytes of a format's scales for one head of a block: K per (k_group, channel),
 * V per (token, v_group), fp8 one f32. */
static size_t aux_bytes(heed_dtype t, size_t groups) {
  switch (t) {
  case HEED_DTYPE_Q8: return groups * sizeof(heed_f16);
  case HEED_DTYPE_Q4: return 2 * groups * sizeof(heed_f16);
  case HEED_DTYPE_E4M3:
  case HEED_DTYPE_E5M2: return sizeof(float);
  default: return 0;
  }
}

static void layout(heed_kv_cache *c) {
  const heed_kv_cache_config *g = &c->cfg;
  size_t H = g->n_kv_heads, bl = g->block_len;
  c->quant = heed_dtype_is_quant(g->k_dtype) || heed_dtype_is_quant(g->v_dtype);
  c->k_head = bl * g->dk * heed_dtype_bits(g->k_dtype) / 8;
  c->v_head = bl * g->dv * heed_dtype_bits(g->v_dtype) / 8;
  c->v_off = ALIGN64(H * c->k_head);
  c->aux_off = ALIGN64(c->v_off + H * c->v_head);
  c->k_aux = aux_bytes(g->k_dtype, bl / g->k_group * g->dk);
  c->v_aux = aux_bytes(g->v_dtype, bl * (g->dv / g->v_group));
  c->lead_off = c->aux_off + H * (c->k_aux + c->v_aux);
  c->k_lead = heed_dtype_is_quant(g->k_dtype) ? (size_t)g->dk * sizeof(heed_f16) : 0;
  c->v_lead = heed_dtype_is_quant(g->v_dtype) ? (size_t)g->dv * sizeof(heed_f16) : 0;
  c->block_bytes = ALIGN64(c->lead_off + H * (c->k_lead + c->v_lead));
  /* In 64 bits: max_seq_len near 2^32 wrapped to a tiny table (found by fuzz_kv_config). A
   * sequence holds at most every block of the pool, so its table needs no more. */
  unsigned per_seq = kv_blocks_for(g->max_seq_len, g->block_len);
  c->max_blocks_per_seq = per_seq < g->n_blocks ? per_seq : g->n_blocks;
  c->res_off = c->block_bytes * g->n_blocks;
  /* the residual keeps a float type as it is and holds a quantized one in f16 */
  c->res_kt = heed_dtype_is_quant(g->k_dtype) ? HEED_DTYPE_F16 : g->k_dtype;
  c->res_vt = heed_dtype_is_quant(g->v_dtype) ? HEED_DTYPE_F16 : g->v_dtype;
  if (c->quant) {
    c->res_k_head = bl * g->dk * heed_dtype_bits(c->res_kt) / 8;
    c->res_v_head = bl * g->dv * heed_dtype_bits(c->res_vt) / 8;
    c->res_v_off = ALIGN64(H * c->res_k_head);
    c->res_bytes = ALIGN64(c->res_v_off + H * c->res_v_head);
  }
}

static size_t total_bytes(const heed_kv_cache *c) { return c->res_off + c->res_bytes * (c->quant ? c->cfg.max_seqs : 0); }

heed_status heed_kv_cache_bytes(heed_runtime *rt, const heed_kv_cache_config *cfg, size_t *bytes, unsigned *block_len) {
  heed_kv_cache c;
  memset(&c, 0, sizeof c);
  heed_error e = {0};
  heed_status st = check_config(rt, cfg, &c.cfg, &e);
  if (st != HEED_OK) {
    heed_runtime_set_error(rt, &e); /* where heed_runtime_last_error finds it */
    return st;
  }
  layout(&c);
  if (bytes) *bytes = total_bytes(&c);
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
  size_t need = total_bytes(c);
  void *bctx = NULL;
  const heed_backend_iface *be = rt ? heed_runtime_backend_iface(rt, &bctx) : NULL;
  if (be && be->kv_alloc) { /* the backend keeps caches in its device's memory */
    if (storage) {
      st = heed_err_set(err, HEED_E_INVALID, "KV cache: storage %p on the %s backend; accepted: NULL (it allocates the %zu bytes "
                        "in device memory)", storage, be->name, need);
      goto fail;
    }
    if ((st = be->kv_alloc(bctx, &c->cfg, need, &c->dev, err)) != HEED_OK) goto fail;
    c->dev_be = be;
    c->dev_ctx = bctx;
    if (!(c->blk_host = malloc(c->block_bytes)) ||
        (c->quant && !(c->res_host = calloc(c->cfg.max_seqs, c->res_bytes)))) {
      st = heed_err_set(err, HEED_E_NOMEM, "no memory for a block of %zu bytes and %u residual blocks in host memory",
                        c->block_bytes, c->quant ? c->cfg.max_seqs : 0);
      goto fail;
    }
  } else if (!storage || ((uintptr_t)storage & 63)) {
    st = heed_err_set(err, HEED_E_INVALID, "KV cache: storage %p; accepted: 64-byte aligned, not NULL", storage);
    goto fail;
  }
  if (!c->dev && storage_bytes < need) {
    st = heed_err_set(err, HEED_E_TOO_SMALL, "KV cache: storage of %zu bytes; %u blocks of %zu%s need %zu", storage_bytes,
                      (unsigned)c->cfg.n_blocks, c->block_bytes, c->quant ? " and the residual blocks" : "", need);
    goto fail;
  }
  c->storage = storage;
  c->refs = calloc(c->cfg.n_blocks, sizeof *c->refs);
  c->free_list = malloc(c->cfg.n_blocks * sizeof *c->free_list);
  c->seqs = calloc(c->cfg.max_seqs, sizeof *c->seqs);
  c->tables = malloc((size_t)c->cfg.max_seqs * c->max_blocks_per_seq * sizeof *c->tables);
  size_t tmp_n = (size_t)c->cfg.block_len * (c->cfg.dk > c->cfg.dv ? c->cfg.dk : c->cfg.dv) + c->cfg.dk + c->cfg.dv;
  c->tmp = malloc(tmp_n * sizeof *c->tmp);
  c->tmp_codes = malloc(tmp_n);
  if (!c->refs || !c->free_list || !c->seqs || !c->tables || !c->tmp || !c->tmp_codes) {
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
  if (c->dev) c->dev_be->kv_free(c->dev_ctx, c->dev);
  free(c->blk_host);
  free(c->res_host);
  free(c->refs);
  free(c->free_list);
  free(c->seqs);
  free(c->tables);
  free(c->tmp);
  free(c->tmp_codes);
  free(c);
}

const char *heed_kv_cache_last_error(const heed_kv_cache *c) { return c ? c->err.msg : ""; }
const heed_kv_cache_config *heed_kv_cache_get_config(const heed_kv_cache *c) { return c ? &c->cfg : NULL; }
uint32_t heed_kv_cache_free_blocks(const heed_kv_cache *c) { return c ? c->n_free : 0; }
size_t heed_kv_cache_block_bytes(const heed_kv_cache *c) { return c ? c->block_bytes : 0; }
void *heed_kv_cache_storage(const heed_kv_cache *c) { return c ? c->storage : NULL; }
int heed_kv_cache_on_device(const heed_kv_cache *c) { return c && c->dev; }

static heed_status storage_io(heed_kv_cache *c, int write, size_t off, size_t bytes, void *host) {
  if (!c) return HEED_E_INVALID;
  size_t total = total_bytes(c);
  if (off > total || bytes > total - off)
    return heed_err_set(&c->err, HEED_E_RANGE, "KV cache storage %s of bytes [%zu, +%zu): the storage has %zu",
                        write ? "write" : "read", off, bytes, total);
  if (bytes && !host) return heed_err_set(&c->err, HEED_E_INVALID, "KV cache storage %s: the buffer is NULL", write ? "write" : "read");
  if (c->dev) {
    heed_status st = c->dev_be->kv_io(c->dev_ctx, c->dev, write, off, bytes, host, &c->err);
    if (st == HEED_OK && write && c->res_host && off + bytes > c->res_off) { /* keep the host copy of the residuals */
      size_t from = off > c->res_off ? off : c->res_off;
      memcpy(c->res_host + (from - c->res_off), (const char *)host + (from - off), off + bytes - from);
    }
    return st;
  }
  if (write)
    memmove(c->storage + off, host, bytes);
  else
    memmove(host, c->storage + off, bytes);
  return HEED_OK;
}

heed_status heed_kv_cache_storage_read(const heed_kv_cache *c, size_t offset, size_t bytes, void *dst) {
  return storage_io((heed_kv_cache *)c, 0, offset, bytes, dst); /* only its error message is written */
}

heed_status heed_kv_cache_storage_write(heed_kv_cache *c, size_t offset, size_t bytes, const void *src) {
  return storage_io(c, 1, offset, bytes, (void *)src);
}

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

/* ---------- where things are ---------- */

static char *blk_of(const heed_kv_cache *c, uint32_t b) { return c->storage + (size_t)b * c->block_bytes; }
static char *res_of(const heed_kv_cache *c, int seq) {
  return c->res_host ? c->res_host + (size_t)seq * c->res_bytes : c->storage + c->res_off + (size_t)seq * c->res_bytes;
}

/* ---------- device caches: blocks pass through host memory ---------- */

/* Pool block b's bytes in host memory: the storage, or (device) a copy read into blk_host. */
static heed_status blk_get(heed_kv_cache *c, uint32_t b, const char **out) {
  if (!c->dev) {
    *out = blk_of(c, b);
    return HEED_OK;
  }
  *out = c->blk_host;
  return c->dev_be->kv_io(c->dev_ctx, c->dev, 0, (size_t)b * c->block_bytes, c->block_bytes, c->blk_host, &c->err);
}

/* Rows [lo, hi) of seq's residual (every head's K panels and V rows), from
 * the host copy to the device; nothing to do for a cache in host memory. */
static heed_status res_push(heed_kv_cache *c, int seq, unsigned lo, unsigned hi) {
  if (!c->dev || lo >= hi) return HEED_OK;
  const heed_kv_cache_config *g = &c->cfg;
  size_t base = (size_t)seq * c->res_bytes, panel = (size_t)g->dk * heed_run_bytes(c->res_kt),
         vrow = (size_t)g->dv * heed_dtype_bits(c->res_vt) / 8;
  for (unsigned h = 0; h < g->n_kv_heads; h++) {
    size_t ko = base + h * c->res_k_head + lo / 16 * panel, kn = ((hi + 15) / 16 - lo / 16) * panel;
    size_t vo = base + c->res_v_off + h * c->res_v_head + lo * vrow, vn = (hi - lo) * vrow;
    heed_status st = c->dev_be->kv_io(c->dev_ctx, c->dev, 1, c->res_off + ko, kn, c->res_host + ko, &c->err);
    if (st == HEED_OK) st = c->dev_be->kv_io(c->dev_ctx, c->dev, 1, c->res_off + vo, vn, c->res_host + vo, &c->err);
    if (st != HEED_OK) return st;
  }
  return HEED_OK;
}

void kv_view_of(const heed_kv_cache *c, const uint32_t *blocks, unsigned n_full, int res_seq, unsigned b, unsigned h,
                kv_view *o) {
  memset(o, 0, sizeof *o);
  if (b >= n_full && res_seq >= 0) { /* the residual block */
    const char *r = res_of(c, res_seq);
    o->k = r + h * c->res_k_head;
    o->v = r + c->res_v_off + h * c->res_v_head;
    o->kt = c->res_kt;
    o->vt = c->res_vt;
    return;
  }
  kv_view_block(c, blk_of(c, blocks[b]), h, o);
}

/* A quantized side's lead row of head h in block bytes blk (heed/attention.h); NULL for a float side. */
static heed_f16 *lead_of(const heed_kv_cache *c, const char *blk, int v_side, unsigned h) {
  size_t bytes = v_side ? c->v_lead : c->k_lead;
  if (!bytes) return NULL;
  return (heed_f16 *)(blk + c->lead_off + (v_side ? c->cfg.n_kv_heads * c->k_lead : 0) + h * bytes);
}

void kv_view_block(const heed_kv_cache *c, const char *blk, unsigned h, kv_view *o) {
  const heed_kv_cache_config *g = &c->cfg;
  memset(o, 0, sizeof *o);
  const char *ka = blk + c->aux_off + h * c->k_aux, *va = blk + c->aux_off + g->n_kv_heads * c->k_aux + h * c->v_aux;
  o->k = blk + h * c->k_head;
  o->v = blk + c->v_off + h * c->v_head;
  o->kt = g->k_dtype;
  o->vt = g->v_dtype;
  size_t kgroups = (size_t)g->block_len / g->k_group * g->dk, vgroups = (size_t)g->block_len * (g->dv / g->v_group);
  if (o->kt == HEED_DTYPE_Q8 || o->kt == HEED_DTYPE_Q4) o->ks = (const heed_f16 *)ka;
  if (o->kt == HEED_DTYPE_Q4) o->km = o->ks + kgroups;
  if (o->vt == HEED_DTYPE_Q8 || o->vt == HEED_DTYPE_Q4) o->vs = (const heed_f16 *)va;
  if (o->vt == HEED_DTYPE_Q4) o->vm = o->vs + vgroups;
  if (o->kt == HEED_DTYPE_E4M3 || o->kt == HEED_DTYPE_E5M2) memcpy(&o->kscale, ka, sizeof(float));
  if (o->vt == HEED_DTYPE_E4M3 || o->vt == HEED_DTYPE_E5M2) memcpy(&o->vscale, va, sizeof(float));
  if (o->kt == HEED_DTYPE_E4M3) o->kscale *= 256.0f; /* the kernels read e4m3 codes at 2^-8 */
  if (o->vt == HEED_DTYPE_E4M3) o->vscale *= 256.0f;
  o->kl = lead_of(c, blk, 0, h);
  o->vl = lead_of(c, blk, 1, h);
}

/* ---------- elements ---------- */

static float ld1_any(heed_dtype t, const uint8_t *run, int i) {
  switch (t) {
  case HEED_DTYPE_F32: return ld1_f32(run, i);
  case HEED_DTYPE_F16: return ld1_f16(run, i);
  case HEED_DTYPE_BF16: return ld1_bf16(run, i);
  case HEED_DTYPE_Q8: return ld1_q8(run, i);
  case HEED_DTYPE_Q4: return ld1_q4(run, i);
  case HEED_DTYPE_E4M3: return ld1_e4m3(run, i);
  default: return ld1_e5m2(run, i);
  }
}

/* Writes element i of a run: a float type converts x, a quantized one stores
 * the code (a q4 run must start zeroed). */
static void st1(heed_dtype t, uint8_t *run, int i, float x, unsigned code) {
  switch (t) {
  case HEED_DTYPE_F32: memcpy(run + 4 * i, &x, 4); break;
  case HEED_DTYPE_F16: { heed_f16 h = heed_f32_to_f16(x); memcpy(run + 2 * i, &h, 2); } break;
  case HEED_DTYPE_BF16: { heed_bf16 h = heed_f32_to_bf16(x); memcpy(run + 2 * i, &h, 2); } break;
  case HEED_DTYPE_Q4: run[i % 8] |= (uint8_t)(i < 8 ? code : code << 4); break;
  default: run[i] = (uint8_t)code; break;
  }
}

/* Decoded K(t, d) and V(t, c) of a view. */
static float k_value(const heed_kv_cache *c, const kv_view *w, unsigned t, unsigned d) {
  const heed_kv_cache_config *g = &c->cfg;
  if (t == 0 && w->kl) return heed_f16_to_f32(w->kl[d]);
  float raw = ld1_any(w->kt, HEED_K_RUN(w->k, heed_run_bytes(w->kt), g->dk, t, d), (int)(t % 16));
  size_t at = (size_t)(t / g->k_group) * g->dk + d;
  switch (w->kt) {
  case HEED_DTYPE_Q8: return raw * heed_f16_to_f32(w->ks[at]);
  case HEED_DTYPE_Q4: return raw * heed_f16_to_f32(w->ks[at]) + heed_f16_to_f32(w->km[at]);
  case HEED_DTYPE_E4M3:
  case HEED_DTYPE_E5M2: return raw * w->kscale;
  default: return raw;
  }
}
static float v_value(const heed_kv_cache *c, const kv_view *w, unsigned t, unsigned col) {
  const heed_kv_cache_config *g = &c->cfg;
  if (t == 0 && w->vl) return heed_f16_to_f32(w->vl[col]);
  float raw = ld1_any(w->vt, HEED_V_RUN(w->v, heed_run_bytes(w->vt), g->dv, t, col), (int)(col % 16));
  size_t at = (size_t)t * (g->dv / g->v_group) + col / g->v_group;
  switch (w->vt) {
  case HEED_DTYPE_Q8: return raw * heed_f16_to_f32(w->vs[at]);
  case HEED_DTYPE_Q4: return raw * heed_f16_to_f32(w->vs[at]) + heed_f16_to_f32(w->vm[at]);
  case HEED_DTYPE_E4M3:
  case HEED_DTYPE_E5M2: return raw * w->vscale;
  default: return raw;
  }
}

/* Stores one token's K and V rows (f32) at row `row` of a float-format block
 * (or a residual block, f16): K into its panel, V into its row. */
static void store_token(const heed_kv_cache *c, char *kbase, char *vbase, heed_dtype kt, heed_dtype vt, size_t row,
                        const float *k, const float *v) {
  const heed_kv_cache_config *g = &c->cfg;
  for (unsigned d = 0; d < g->dk; d++) st1(kt, (uint8_t *)HEED_K_RUN(kbase, heed_run_bytes(kt), g->dk, row, d), (int)(row % 16), k[d], 0);
  for (unsigned d = 0; d < g->dv; d += 16)
    for (unsigned i = 0; i < 16; i++) st1(vt, (uint8_t *)HEED_V_RUN(vbase, heed_run_bytes(vt), g->dv, row, d), (int)i, v[d + i], 0);
}

/* ---------- quantizing a full residual into a pool block ---------- */

/* The reference quantizers define the codes; x: [n] in the order the codes
 * go to `put` (element e of the list -> (run, index)). */
static heed_status quantize_k(heed_kv_cache *c, const kv_view *res, char *kc, char *ka, heed_f16 *kl, heed_error *e) {
  const heed_kv_cache_config *g = &c->cfg;
  const unsigned bl = g->block_len, dk = g->dk, kg = g->k_group, B = heed_run_bytes(g->k_dtype);
  float *x = c->tmp;
  uint8_t *codes = c->tmp_codes;
  memset(kc, 0, c->k_head);
  if (kl) /* row 0 kept as the residual holds it (f16): the lead row (heed/attention.h) */
    for (unsigned d = 0; d < dk; d++) kl[d] = heed_f32_to_f16(k_value(c, res, 0, d));
  if (!heed_dtype_is_quant(g->k_dtype)) {
    for (unsigned t = 0; t < bl; t++)
      for (unsigned d = 0; d < dk; d++)
        st1(g->k_dtype, (uint8_t *)HEED_K_RUN(kc, B, dk, t, d), (int)(t % 16), k_value(c, res, t, d), 0);
    return HEED_OK;
  }
  if (g->k_dtype == HEED_DTYPE_E4M3 || g->k_dtype == HEED_DTYPE_E5M2) {
    for (unsigned t = 0; t < bl; t++)
      for (unsigned d = 0; d < dk; d++) x[(size_t)t * dk + d] = k_value(c, res, t, d);
    float scale;
    heed_status st = heed_fp8_quantize(g->k_dtype == HEED_DTYPE_E5M2, x, (size_t)bl * dk, codes, &scale, e);
    if (st != HEED_OK) return st;
    for (unsigned t = 0; t < bl; t++)
      for (unsigned d = 0; d < dk; d++)
        st1(g->k_dtype, (uint8_t *)HEED_K_RUN(kc, B, dk, t, d), (int)(t % 16), 0, codes[(size_t)t * dk + d]);
    memcpy(ka, &scale, sizeof scale);
    return HEED_OK;
  }
  /* q8/q4: per channel over k_group tokens (KIVI) */
  heed_f16 *sc = (heed_f16 *)ka, *mn = sc + (size_t)bl / kg * dk;
  for (unsigned t0 = 0; t0 < bl; t0 += kg)
    for (unsigned d = 0; d < dk; d++) {
      for (unsigned i = 0; i < kg; i++) x[i] = k_value(c, res, t0 + i, d);
      size_t at = (size_t)(t0 / kg) * dk + d;
      heed_status st = g->k_dtype == HEED_DTYPE_Q8 ? heed_q8_quantize(x, kg, kg, (int8_t *)codes, sc + at, e)
                                                   : heed_q4_quantize_fit(x, kg, kg, codes, sc + at, mn + at, e);
      if (st != HEED_OK) return st;
      for (unsigned i = 0; i < kg; i++) {
        unsigned code = g->k_dtype == HEED_DTYPE_Q8 ? codes[i] : i % 2 ? codes[i / 2] >> 4 : codes[i / 2] & 15u;
        unsigned t = t0 + i;
        st1(g->k_dtype, (uint8_t *)HEED_K_RUN(kc, B, dk, t, d), (int)(t % 16), 0, code);
      }
    }
  return HEED_OK;
}

static heed_status quantize_v(heed_kv_cache *c, const kv_view *res, char *vc, char *va, heed_f16 *vl, heed_error *e) {
  const heed_kv_cache_config *g = &c->cfg;
  const unsigned bl = g->block_len, dv = g->dv, vg = g->v_group, ng = dv / vg, B = heed_run_bytes(g->v_dtype);
  float *x = c->tmp;
  uint8_t *codes = c->tmp_codes;
  memset(vc, 0, c->v_head);
  if (vl)
    for (unsigned col = 0; col < dv; col++) vl[col] = heed_f32_to_f16(v_value(c, res, 0, col));
  int fp8 = g->v_dtype == HEED_DTYPE_E4M3 || g->v_dtype == HEED_DTYPE_E5M2;
  if (!heed_dtype_is_quant(g->v_dtype) || fp8) {
    for (unsigned t = 0; t < bl; t++)
      for (unsigned col = 0; col < dv; col++) x[(size_t)t * dv + col] = v_value(c, res, t, col);
    float scale = 1;
    if (fp8) {
      heed_status st = heed_fp8_quantize(g->v_dtype == HEED_DTYPE_E5M2, x, (size_t)bl * dv, codes, &scale, e);
      if (st != HEED_OK) return st;
    }
    for (unsigned t = 0; t < bl; t++)
      for (unsigned col = 0; col < dv; col++)
        st1(g->v_dtype, (uint8_t *)HEED_V_RUN(vc, B, dv, t, col), (int)(col % 16), x[(size_t)t * dv + col],
            fp8 ? codes[(size_t)t * dv + col] : 0);
    if (fp8) memcpy(va, &scale, sizeof scale);
    return HEED_OK;
  }
  /* q8/q4: per token over v_group channels */
  heed_f16 *sc = (heed_f16 *)va, *mn = sc + (size_t)bl * ng;
  for (unsigned t = 0; t < bl; t++) {
    for (unsigned col = 0; col < dv; col++) x[col] = v_value(c, res, t, col);
    heed_status st = g->v_dtype == HEED_DTYPE_Q8
                         ? heed_q8_quantize(x, dv, vg, (int8_t *)codes, sc + (size_t)t * ng, e)
                         : heed_q4_quantize_fit(x, dv, vg, codes, sc + (size_t)t * ng, mn + (size_t)t * ng, e);
    if (st != HEED_OK) return st;
    for (unsigned col = 0; col < dv; col++) {
      unsigned code = g->v_dtype == HEED_DTYPE_Q8 ? codes[col] : col % 2 ? codes[col / 2] >> 4 : codes[col / 2] & 15u;
      st1(g->v_dtype, (uint8_t *)HEED_V_RUN(vc, B, dv, t, col), (int)(col % 16), 0, code);
    }
  }
  return HEED_OK;
}

/* The full residual of seq becomes pool block b: quantized once, by the
 * host's reference quantizers (a device cache gets the block's bytes). */
static heed_status seal_residual(heed_kv_cache *c, int seq, uint32_t b) {
  char *blk = c->dev ? c->blk_host : blk_of(c, b);
  if (c->dev) memset(blk, 0, c->block_bytes);
  for (unsigned h = 0; h < c->cfg.n_kv_heads; h++) {
    kv_view res;
    kv_view_of(c, NULL, 0, seq, 0, h, &res);
    heed_error e = {0};
    /* Appends refuse what the residual cannot hold, so only raw bytes written
     * over it (heed_kv_cache_storage_write) can make this fail: say so, write
     * no stale codes. */
    const unsigned H = c->cfg.n_kv_heads;
    if (quantize_k(c, &res, blk + h * c->k_head, blk + c->aux_off + h * c->k_aux, lead_of(c, blk, 0, h), &e) != HEED_OK ||
        quantize_v(c, &res, blk + c->v_off + h * c->v_head, blk + c->aux_off + H * c->k_aux + h * c->v_aux,
                   lead_of(c, blk, 1, h), &e) != HEED_OK)
      return heed_err_set(&c->err, HEED_E_INVALID,
                          "quantizing sequence %d's full residual (head %u) into block %u: %s (the residual holds a "
                          "value no append stored: raw bytes written into the storage?)",
                          seq, h, (unsigned)b, e.msg);
  }
  if (!c->dev) return HEED_OK;
  return c->dev_be->kv_io(c->dev_ctx, c->dev, 1, (size_t)b * c->block_bytes, c->block_bytes, blk, &c->err);
}

/* Copies rows [0, rows) of one residual into another (fork). */
static void copy_residual(heed_kv_cache *c, int from, int to, unsigned rows) {
  const heed_kv_cache_config *g = &c->cfg;
  char *s = res_of(c, from), *d = res_of(c, to);
  size_t kb = (size_t)(rows + 15) / 16 * g->dk * heed_run_bytes(c->res_kt),
         vb = (size_t)rows * g->dv * heed_dtype_bits(c->res_vt) / 8;
  for (unsigned h = 0; h < g->n_kv_heads; h++) {
    memcpy(d + h * c->res_k_head, s + h * c->res_k_head, kb);
    memcpy(d + c->res_v_off + h * c->res_v_head, s + c->res_v_off + h * c->res_v_head, vb);
  }
}

/* What values stored as t (the residual's type for a quantized side) can
 * be: the largest finite magnitude, and the smallest that round-to-nearest-
 * even turns into inf (half a step above it). */
typedef struct {
  float largest, overflow;
} kv_range;

static kv_range range_of(heed_dtype t) {
  if (t == HEED_DTYPE_F16) return (kv_range){65504.0f, 65520.0f};
  if (t == HEED_DTYPE_BF16) return (kv_range){0x1.fep127f, 0x1.ffp127f};
  return (kv_range){FLT_MAX, INFINITY};
}

/* Refuses a K or V value that is NaN, inf, or beyond what the cache stores
 * finitely (f16: a magnitude of 65520 or more); the first one is named. */
static heed_status check_values(heed_kv_cache *c, int seq, unsigned t0, const char *side, heed_dtype stored, unsigned n,
                                unsigned d_head, const float *x) {
  const heed_kv_cache_config *g = &c->cfg;
  const kv_range r = range_of(stored);
  const size_t per_token = (size_t)g->n_kv_heads * d_head;
  for (size_t i = 0; i < (size_t)n * per_token; i++)
    if (!(fabsf(x[i]) < r.overflow)) {
      unsigned t = (unsigned)(i / per_token), h = (unsigned)(i % per_token / d_head), d = (unsigned)(i % d_head);
      if (!isfinite(x[i]))
        return heed_err_set(&c->err, HEED_E_INVALID, "append to sequence %d: %s of token %u (position %u), head %u, dim %u is %g",
                            seq, side, t, t0 + t, h, d, x[i]);
      return heed_err_set(&c->err, HEED_E_RANGE,
                          "append to sequence %d: %s of token %u (position %u), head %u, dim %u is %g, beyond what this "
                          "cache stores as %s (magnitudes below %g; the largest is %g)",
                          seq, side, t, t0 + t, h, d, x[i], heed_dtype_name(stored), r.overflow, r.largest);
    }
  return HEED_OK;
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
  /* Nothing is written unless every value is finite and fits the storage. */
  if ((st = check_values(c, seq, s->len, "K", c->res_kt, n, g->dk, k)) != HEED_OK ||
      (st = check_values(c, seq, s->len, "V", c->res_vt, n, g->dv, v)) != HEED_OK)
    return st;
  unsigned bl = g->block_len, new_len = s->len + n;
  unsigned need_blocks = kv_n_full(c, new_len);
  int cow = !c->quant && s->len % bl != 0 && c->refs[s->blocks[s->n_blocks - 1]] > 1;
  uint32_t want = need_blocks - s->n_blocks + (cow ? 1 : 0);
  if (want > c->n_free)
    return heed_err_set(&c->err, HEED_E_NOMEM, "append of %u tokens to sequence %d needs %u free blocks; %u are free", n,
                        seq, (unsigned)want, (unsigned)c->n_free);
  if (c->quant) { /* f16 into the residual; a block that fills is quantized into the pool */
    unsigned done = s->len, lo = s->len % bl; /* tokens safely stored; residual rows not yet on the device */
    for (unsigned t = 0; t < n; t++) {
      unsigned pos = s->len + t, row = pos % bl;
      for (unsigned h = 0; h < g->n_kv_heads; h++) {
        kv_view res;
        kv_view_of(c, NULL, 0, seq, 0, h, &res);
        store_token(c, (char *)res.k, (char *)res.v, c->res_kt, c->res_vt, row,
                    k + ((size_t)t * g->n_kv_heads + h) * g->dk, v + ((size_t)t * g->n_kv_heads + h) * g->dv);
      }
      if (row == bl - 1) {
        uint32_t b = take_block(c);
        if ((st = seal_residual(c, seq, b)) != HEED_OK) {
          drop_block(c, b);
          break;
        }
        s->blocks[s->n_blocks++] = b;
        done = pos + 1;
        lo = 0;
      }
    }
    if (st == HEED_OK) st = res_push(c, seq, lo, new_len % bl);
    if (st != HEED_OK) { /* a device error: keep what is stored, say how much */
      s->len = done;
      return heed_err_set(&c->err, st, "append of %u tokens to sequence %d: %s; the sequence holds its first %u tokens",
                          n, seq, c->err.msg, done);
    }
    s->len = new_len;
    return HEED_OK;
  }
  if (cow) { /* the partly filled last block is shared: write into a private copy */
    uint32_t old = s->blocks[s->n_blocks - 1], fresh = take_block(c);
    if (c->dev) {
      st = c->dev_be->kv_copy(c->dev_ctx, c->dev, (size_t)fresh * c->block_bytes, (size_t)old * c->block_bytes, c->block_bytes,
                              &c->err);
      if (st != HEED_OK) {
        drop_block(c, fresh);
        return st;
      }
    } else {
      memcpy(blk_of(c, fresh), blk_of(c, old), c->block_bytes);
    }
    drop_block(c, old);
    s->blocks[s->n_blocks - 1] = fresh;
  }
  unsigned had_blocks = s->n_blocks;
  while (s->n_blocks < need_blocks) s->blocks[s->n_blocks++] = take_block(c);
  if (c->dev) { /* one kernel writes the n tokens */
    unsigned first = s->len / bl;
    heed_kv_put put = {.kt = g->k_dtype, .vt = g->v_dtype, .n_kv_heads = g->n_kv_heads, .dk = g->dk, .dv = g->dv,
                       .block_len = bl, .block_bytes = c->block_bytes, .k_head = c->k_head, .v_off = c->v_off,
                       .v_head = c->v_head, .blocks = s->blocks + first, .n_blocks = need_blocks - first,
                       .row0 = s->len - first * bl, .n = n, .k = k, .v = v};
    st = c->dev_be->kv_put(c->dev_ctx, c->dev, &put, &c->err);
    if (st != HEED_OK) { /* nothing appended: give the new blocks back */
      while (s->n_blocks > had_blocks) drop_block(c, s->blocks[--s->n_blocks]);
      return st;
    }
    s->len = new_len;
    return HEED_OK;
  }
  for (unsigned t = 0; t < n; t++) {
    unsigned pos = s->len + t;
    char *blk = blk_of(c, s->blocks[pos / bl]);
    for (unsigned h = 0; h < g->n_kv_heads; h++)
      store_token(c, blk + h * c->k_head, blk + c->v_off + h * c->v_head, g->k_dtype, g->v_dtype, pos % bl,
                  k + ((size_t)t * g->n_kv_heads + h) * g->dk, v + ((size_t)t * g->n_kv_heads + h) * g->dv);
  }
  s->len = new_len;
  return HEED_OK;
}

heed_status heed_kv_seq_read(const heed_kv_cache *c, int seq, unsigned t0, unsigned n, float *k, float *v) {
  if (!c) return HEED_E_INVALID;
  heed_kv_cache *cm = (heed_kv_cache *)c; /* only its error message is written */
  kv_seq *s = NULL;
  heed_status st = get_seq(cm, seq, &s);
  if (st != HEED_OK) return st;
  if ((uint64_t)t0 + n > s->len)
    return heed_err_set(&cm->err, HEED_E_RANGE, "read of tokens %u..%u of sequence %d: it holds %u", t0, t0 + n - 1, seq,
                        s->len);
  if (n && (!k || !v)) return heed_err_set(&cm->err, HEED_E_INVALID, "read of sequence %d: k or v is NULL", seq);
  const heed_kv_cache_config *g = &c->cfg;
  unsigned bl = g->block_len, n_full = kv_n_full(c, s->len), have = UINT32_MAX;
  for (unsigned t = t0; t < t0 + n; t++)
    for (unsigned h = 0; h < g->n_kv_heads; h++) {
      kv_view w;
      if (c->dev && t / bl < n_full) { /* a copy of the block in host memory */
        const char *blk = c->blk_host;
        if (have != t / bl) {
          if ((st = blk_get(cm, s->blocks[t / bl], &blk)) != HEED_OK) return st;
          have = t / bl;
        }
        kv_view_block(c, blk, h, &w);
      } else {
        kv_view_of(c, s->blocks, n_full, seq, t / bl, h, &w);
      }
      float *kr = k + ((size_t)(t - t0) * g->n_kv_heads + h) * g->dk, *vr = v + ((size_t)(t - t0) * g->n_kv_heads + h) * g->dv;
      for (unsigned d = 0; d < g->dk; d++) kr[d] = k_value(c, &w, t % bl, d);
      for (unsigned d = 0; d < g->dv; d++) vr[d] = v_value(c, &w, t % bl, d);
    }
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
  if (c->quant) {
    unsigned rows = s->len % c->cfg.block_len;
    copy_residual(c, src, *dst, rows);
    if ((st = res_push(c, *dst, 0, rows)) != HEED_OK) {
      heed_kv_seq_free(c, *dst);
      *dst = -1;
      return st;
    }
  }
  return HEED_OK;
}

/* A quantized value back into its residual: codes of a block whose values
 * reach the residual's largest (f16: 65504) can decode a little past it (the
 * scale is rounded too), which the residual would store as inf (found by
 * fuzz_kv_ops). The value appended was at most that, so it goes back as that. */
static float fit(heed_dtype res, float x) {
  const float m = range_of(res).largest;
  return fabsf(x) > m ? copysignf(m, x) : x;
}

heed_status heed_kv_seq_truncate(heed_kv_cache *c, int seq, unsigned len) {
  if (!c) return HEED_E_INVALID;
  kv_seq *s = NULL;
  heed_status st = get_seq(c, seq, &s);
  if (st != HEED_OK) return st;
  if (len > s->len)
    return heed_err_set(&c->err, HEED_E_RANGE, "truncate sequence %d to %u tokens: it holds %u", seq, len, s->len);
  const unsigned bl = c->cfg.block_len, keep = kv_n_full(c, len);
  if (c->quant && len % bl && keep < s->n_blocks) {
    /* the tokens kept from a full block go back to the residual (f16), to be
     * quantized again, once, when the block fills */
    const char *blk;
    if ((st = blk_get(c, s->blocks[keep], &blk)) != HEED_OK) return st;
    for (unsigned h = 0; h < c->cfg.n_kv_heads; h++) {
      kv_view w, res;
      kv_view_block(c, blk, h, &w);
      kv_view_of(c, NULL, 0, seq, 0, h, &res);
      for (unsigned row = 0; row < len % bl; row++) {
        for (unsigned d = 0; d < c->cfg.dk; d++) c->tmp[d] = fit(c->res_kt, k_value(c, &w, row, d));
        for (unsigned d = 0; d < c->cfg.dv; d++) c->tmp[c->cfg.dk + d] = fit(c->res_vt, v_value(c, &w, row, d));
        store_token(c, (char *)res.k, (char *)res.v, c->res_kt, c->res_vt, row, c->tmp, c->tmp + c->cfg.dk);
      }
    }
    if ((st = res_push(c, seq, 0, len % bl)) != HEED_OK) { /* a device error: keep the full blocks only */
      while (s->n_blocks > keep) drop_block(c, s->blocks[--s->n_blocks]);
      s->len = keep * bl;
      return heed_err_set(&c->err, st, "truncate sequence %d to %u tokens: %s; it holds %u tokens", seq, len, c->err.msg,
                          s->len);
    }
  }
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

/* ---------- whole blocks as stored (a disk tier) ---------- */

heed_status heed_kv_seq_block_read(const heed_kv_cache *c, int seq, unsigned b, void *dst) {
  if (!c) return HEED_E_INVALID;
  heed_kv_cache *cm = (heed_kv_cache *)c; /* only its error message is written */
  kv_seq *s = NULL;
  heed_status st = get_seq(cm, seq, &s);
  if (st != HEED_OK) return st;
  if (!dst) return heed_err_set(&cm->err, HEED_E_INVALID, "block read of sequence %d: dst is NULL", seq);
  if ((uint64_t)(b + 1) * c->cfg.block_len > s->len)
    return heed_err_set(&cm->err, HEED_E_RANGE, "block read: block %u of sequence %d is not full (it holds %u tokens, %u a block)",
                        b, seq, s->len, c->cfg.block_len);
  return storage_io(cm, 0, (size_t)s->blocks[b] * c->block_bytes, c->block_bytes, dst);
}

/* 1 when every value of n stored elements of type t at p is finite. */
static int codes_finite(heed_dtype t, const uint8_t *p, size_t n) {
  uint32_t bad = 0;
  switch (t) {
  case HEED_DTYPE_F32:
    for (size_t i = 0; i < n; i++) {
      uint32_t u;
      memcpy(&u, p + 4 * i, 4);
      bad |= (u & 0x7F800000u) == 0x7F800000u;
    }
    break;
  case HEED_DTYPE_F16:
  case HEED_DTYPE_BF16: {
    const uint16_t m = t == HEED_DTYPE_F16 ? 0x7C00 : 0x7F80;
    for (size_t i = 0; i < n; i++) {
      uint16_t u;
      memcpy(&u, p + 2 * i, 2);
      bad |= (u & m) == m;
    }
    break;
  }
  case HEED_DTYPE_E4M3:
    for (size_t i = 0; i < n; i++) bad |= (p[i] & 0x7F) == 0x7F;
    break;
  case HEED_DTYPE_E5M2:
    for (size_t i = 0; i < n; i++) bad |= (p[i] & 0x7C) == 0x7C;
    break;
  default: /* integer codes */
    break;
  }
  return !bad;
}

/* 1 when a block's bytes hold only finite values: codes, then the scales. */
static int block_finite(const heed_kv_cache *c, const uint8_t *blk) {
  const heed_kv_cache_config *g = &c->cfg;
  const size_t H = g->n_kv_heads, bl = g->block_len;
  if (!codes_finite(g->k_dtype, blk, H * bl * g->dk) || !codes_finite(g->v_dtype, blk + c->v_off, H * bl * g->dv))
    return 0;
  for (int side = 0; side < 2; side++) {
    const heed_dtype t = side ? g->v_dtype : g->k_dtype;
    const size_t aux = side ? c->v_aux : c->k_aux;
    const uint8_t *a = blk + c->aux_off + (side ? H * c->k_aux : 0);
    if (t == HEED_DTYPE_Q8 || t == HEED_DTYPE_Q4) {
      if (!codes_finite(HEED_DTYPE_F16, a, H * aux / 2)) return 0;
    } else if (aux && !codes_finite(HEED_DTYPE_F32, a, H * aux / 4)) {
      return 0;
    }
  }
  return 1;
}

heed_status heed_kv_seq_block_append(heed_kv_cache *c, int seq, const void *src) {
  if (!c) return HEED_E_INVALID;
  kv_seq *s = NULL;
  heed_status st = get_seq(c, seq, &s);
  if (st != HEED_OK) return st;
  const unsigned bl = c->cfg.block_len;
  if (!src) return heed_err_set(&c->err, HEED_E_INVALID, "block append to sequence %d: src is NULL", seq);
  if (s->len % bl)
    return heed_err_set(&c->err, HEED_E_INVALID,
                        "block append to sequence %d: it holds %u tokens, not a multiple of the block's %u", seq, s->len, bl);
  if ((uint64_t)s->len + bl > c->cfg.max_seq_len)
    return heed_err_set(&c->err, HEED_E_RANGE, "block append to sequence %d (holding %u): beyond max_seq_len=%u", seq,
                        s->len, c->cfg.max_seq_len);
  if (!c->n_free) return heed_err_set(&c->err, HEED_E_NOMEM, "block append to sequence %d: no block is free", seq);
  if (!block_finite(c, (const uint8_t *)src))
    return heed_err_set(&c->err, HEED_E_INVALID,
                        "block append to sequence %d: the block holds a value that is not finite (inf or NaN)", seq);
  const uint32_t b = take_block(c);
  if ((st = storage_io(c, 1, (size_t)b * c->block_bytes, c->block_bytes, (void *)src)) != HEED_OK) {
    drop_block(c, b);
    return st;
  }
  s->blocks[s->n_blocks++] = b;
  s->len += bl;
  return HEED_OK;
}

unsigned heed_kv_block_refs(const heed_kv_cache *c, uint32_t block) {
  return c && block < c->cfg.n_blocks ? c->refs[block] : 0;
}
