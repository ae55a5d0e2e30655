/* attention/attention.c - prefill and decode: validation, then the portable
 * tiled driver the CPU backend runs (FlashAttention-2 style online softmax,
 * Flash-Decoding split-KV with a log-sum-exp merge).
 *
 * A work item owns R = n_pos * G rows: n_pos consecutive query positions
 * times the G query heads of one KV head, row r = i * G + hh. Its queries are
 * packed (pre-scaled) into [R][dk]; each K/V tile is read once for all R rows. */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "attention/kv_internal.h"
#include "backends/cpu/kv_elem.h"
#include "runtime/backend.h"
#include "runtime/internal.h"
#include "runtime/pool_internal.h"

#define SCOLS 256      /* keys per score tile at most */
#define MAX_ROWS_PREFILL 64
#define MAX_SPLITS 64

/* ---------- sizes ---------- */

static unsigned prefill_qtile(heed_runtime *rt, const heed_attn_params *p) {
  heed_tile_plan plan;
  unsigned G = p->n_q_heads / p->n_kv_heads, qt = 8;
  if (heed_runtime_tile_plan(rt, p->dk, p->dv, HEED_DTYPE_F16, &plan) == HEED_OK) qt = plan.q_rows;
  if (qt * G > MAX_ROWS_PREFILL) qt = MAX_ROWS_PREFILL / G ? MAX_ROWS_PREFILL / G : 1;
  return qt ? qt : 1;
}

/* Floats of the scratch for the quantized formats: Q scaled per K group
 * [R][dk], P scaled per V group [R][SCOLS], a tile's V scales and mins
 * [2][SCOLS][dv/16], a bias per row [R], the scales as stored (token-major,
 * converted to f32 in one call before they are transposed) [SCOLS][dv/16], a
 * block's lead row in f32 [max(dk, dv)] and its probability per row [R]. */
static size_t quant_floats(unsigned R, const heed_attn_params *p) {
  return (size_t)R * p->dk + (size_t)R * SCOLS + 3 * (size_t)SCOLS * (p->dv / 16) + R +
         (p->dk > p->dv ? p->dk : p->dv) + R;
}

/* Per-worker scratch: packed Q, score tile, the quantized formats' part,
 * and (prefill) O, m, l. */
static size_t scratch_floats(unsigned R, const heed_attn_params *p, int with_o) {
  return (size_t)R * p->dk + (size_t)R * SCOLS + quant_floats(R, p) + (with_o ? (size_t)R * p->dv + 2 * (size_t)R : 0) +
         16;
}

/* Decode scratch: packed Q and scores in pass 1, the merged O, m, l in pass 2. */
static size_t decode_scratch_floats(unsigned G, const heed_attn_params *p) {
  size_t a = scratch_floats(HEED_MAX_DECODE_QUERIES * G, p, 0), b = (size_t)HEED_MAX_DECODE_QUERIES * G * (p->dv + 2);
  return a > b ? a : b;
}

/* Enough KV splits that every worker gets about 16 items: on a shared machine a
 * late worker then costs one small item, not a whole head (the merge is cheap). */
/* Floats of one decode work item's partial result: O [R][dv], m [R], l [R]. */
static size_t item_floats(const heed_attn_params *p, unsigned n_q) {
  return (size_t)n_q * (p->n_q_heads / p->n_kv_heads) * (p->dv + 2);
}

/* Floats of every partial result of a batch, at `splits` splits per (sequence, KV head). */
static size_t decode_partial_floats(const heed_attn_params *p, const heed_attn_decode_seq *seqs, unsigned n,
                                    unsigned splits) {
  size_t total = 0;
  for (unsigned i = 0; i < n; i++) total += (size_t)p->n_kv_heads * splits * item_floats(p, seqs[i].n_q);
  return total;
}

static unsigned decode_max_splits(heed_runtime *rt, const heed_attn_params *p, unsigned n_seqs) {
  unsigned W = (unsigned)heed_runtime_n_threads(rt), items = n_seqs * p->n_kv_heads;
  unsigned s = (16 * W + items - 1) / (items ? items : 1);
  return s < 1 ? 1 : s > MAX_SPLITS ? MAX_SPLITS : s;
}

/* ---------- validation ---------- */

static heed_status check_params(heed_runtime *rt, const heed_kv_cache *c, const heed_attn_params *p, heed_error *e) {
  if (!p) return heed_err_set(e, HEED_E_INVALID, "attention: params is NULL");
  if (p->n_kv_heads < 1 || p->n_q_heads < 1 || p->n_q_heads % p->n_kv_heads)
    return heed_err_set(e, HEED_E_INVALID, "attention: n_q_heads=%u is not a multiple of n_kv_heads=%u", p->n_q_heads,
                        p->n_kv_heads);
  const unsigned dims[2] = {p->dk, p->dv};
  for (int i = 0; i < 2; i++)
    if (dims[i] < HEED_HEAD_DIM_MIN || dims[i] > HEED_HEAD_DIM_MAX || dims[i] % 16)
      return heed_err_set(e, HEED_E_INVALID, "attention: head dim %s=%u; accepted: a multiple of 16 in %d..%d",
                          i ? "dv" : "dk", dims[i], HEED_HEAD_DIM_MIN, HEED_HEAD_DIM_MAX);
  if (c) {
    const heed_kv_cache_config *g = &c->cfg;
    if (g->n_kv_heads != p->n_kv_heads || g->dk != p->dk || g->dv != p->dv)
      return heed_err_set(e, HEED_E_INVALID, "attention: params (n_kv_heads=%u dk=%u dv=%u) do not match the cache (%u, %u, %u)",
                          p->n_kv_heads, p->dk, p->dv, g->n_kv_heads, g->dk, g->dv);
  }
  if (!isfinite(p->scale) || p->scale == 0)
    return heed_err_set(e, HEED_E_INVALID, "attention: scale=%g; accepted: finite, nonzero", p->scale);
  if (!isfinite(p->softcap) || p->softcap < 0)
    return heed_err_set(e, HEED_E_INVALID, "attention: softcap=%g; accepted: 0 (off) or > 0", p->softcap);
  if (p->sinks)
    for (unsigned h = 0; h < p->n_q_heads; h++)
      if (!isfinite(p->sinks[h]))
        return heed_err_set(e, HEED_E_INVALID, "attention: sinks[%u]=%g; accepted: finite", h, p->sinks[h]);
  if (!rt) return heed_err_set(e, HEED_E_INVALID, "attention: runtime is NULL");
  return HEED_OK;
}

/* The tokens a view reads: its block table and length, checked against the cache. */
heed_status kv_resolve_seq(const heed_kv_cache *c, heed_attn_seq s, const uint32_t **blocks, unsigned *len,
                               heed_error *e) {
  if (s.seq >= 0) {
    if ((unsigned)s.seq >= c->cfg.max_seqs || !c->seqs[s.seq].alive)
      return heed_err_set(e, HEED_E_INVALID, "attention: sequence %d does not exist in the cache", s.seq);
    *blocks = c->seqs[s.seq].blocks;
    *len = c->seqs[s.seq].len;
    return HEED_OK;
  }
  if (!s.blocks) return heed_err_set(e, HEED_E_INVALID, "attention: seq < 0 needs a block table");
  if (s.n_tokens > c->cfg.max_seq_len)
    return heed_err_set(e, HEED_E_RANGE, "attention: n_tokens=%u beyond max_seq_len=%u", s.n_tokens, c->cfg.max_seq_len);
  unsigned nb = kv_blocks_for(s.n_tokens, c->cfg.block_len);
  for (unsigned i = 0; i < nb; i++)
    if (s.blocks[i] >= c->cfg.n_blocks)
      return heed_err_set(e, HEED_E_RANGE, "attention: block table entry %u is %u; the cache has blocks 0..%u", i,
                          (unsigned)s.blocks[i], (unsigned)c->cfg.n_blocks - 1);
  if (c->quant && s.n_tokens % c->cfg.block_len)
    return heed_err_set(e, HEED_E_INVALID,
                        "attention: n_tokens=%u with a block table over a quantized cache; accepted: a multiple of "
                        "block_len=%u (its tables hold full blocks only)",
                        s.n_tokens, c->cfg.block_len);
  *blocks = s.blocks;
  *len = s.n_tokens;
  return HEED_OK;
}

typedef struct span {
  const void *p;
  size_t n;
  const char *name;
} span;

static int overlaps(span a, span b) {
  if (!a.p || !b.p || !a.n || !b.n) return 0;
  uintptr_t x = (uintptr_t)a.p, y = (uintptr_t)b.p;
  return x < y + b.n && y < x + a.n;
}

/* Written buffers must not overlap anything else. */
static heed_status check_overlap(const heed_kv_cache *c, size_t rows, const heed_attn_params *p, const float *q,
                                 const float *out, const float *lse, const void *ws, size_t ws_bytes, heed_error *e) {
  span sp[5] = {{out, rows * p->n_q_heads * p->dv * sizeof(float), "out"},
                {lse, lse ? rows * p->n_q_heads * sizeof(float) : 0, "lse"},
                {ws, ws_bytes, "workspace"},
                {q, rows * p->n_q_heads * p->dk * sizeof(float), "q"},
                {c->storage, c->block_bytes * c->cfg.n_blocks, "the KV cache storage"}};
  for (int i = 0; i < 3; i++)
    for (int j = i + 1; j < 5; j++)
      if (overlaps(sp[i], sp[j]))
        return heed_err_set(e, HEED_E_INVALID, "attention: %s [%p, +%zu) overlaps %s [%p, +%zu)", sp[i].name, sp[i].p,
                            sp[i].n, sp[j].name, sp[j].p, sp[j].n);
  return HEED_OK;
}

/* Runs the call on the runtime's backend; a refusal gets its message in e. */
static heed_status dispatch(heed_runtime *rt, const heed_attn_call *call, int decode, heed_error *e) {
  void *ctx;
  const heed_backend_iface *be = heed_runtime_backend_iface(rt, &ctx);
  heed_status (*fn)(void *, const heed_attn_call *) = decode ? be->attn_decode : be->attn_prefill;
  const char *what = decode ? "decode" : "prefill";
  if (!fn) return heed_err_set(e, HEED_E_UNSUPPORTED, "%s: the %s backend has no attention", what, be->name);
  const heed_kv_cache *c = call->cache;
  if (c->dev && (c->dev_be != be || c->dev_ctx != ctx))
    return heed_err_set(e, HEED_E_INVALID, "%s: the cache is in the memory of another runtime's %s device; this runtime runs %s",
                        what, c->dev_be->name, be->name);
  if (!c->dev && be->kv_alloc)
    return heed_err_set(e, HEED_E_INVALID,
                        "%s: the %s backend reads caches in device memory; this one is in host memory (create it on this "
                        "runtime with storage NULL)",
                        what, be->name);
  heed_status st = fn(ctx, call);
  if (st == HEED_E_BUSY) return heed_err_set(e, st, "%s: the runtime's pool is running another call", what);
  return st;
}

/* Attention's refusals are kept by the runtime (heed_runtime_last_error), not
 * by the cache: a cache is only read here, by several runtimes at once. */
static heed_status refused(heed_runtime *rt, heed_status st, const heed_error *e) {
  if (st != HEED_OK) heed_runtime_set_error(rt, e);
  return st;
}

/* Queries are finite, and so are they times the scale (the kernels scale q
 * first): a NaN or inf would give NaN or empty rows that differ by backend. */
static heed_status check_queries(const float *q, size_t rows, const heed_attn_params *p, heed_error *e) {
  const size_t per_row = (size_t)p->n_q_heads * p->dk;
  for (size_t i = 0; i < rows * per_row; i++)
    if (!isfinite(q[i] * p->scale)) {
      if (!isfinite(q[i]))
        return heed_err_set(e, HEED_E_INVALID, "attention: query %zu, head %zu, dim %zu is %g; accepted: finite",
                            i / per_row, i % per_row / p->dk, i % p->dk, q[i]);
      return heed_err_set(e, HEED_E_RANGE, "attention: query %zu, head %zu, dim %zu is %g, and times scale=%g it is %g",
                          i / per_row, i % per_row / p->dk, i % p->dk, q[i], p->scale, q[i] * p->scale);
    }
  return HEED_OK;
}

heed_status heed_attn_prefill_workspace(heed_runtime *rt, const heed_attn_params *p, unsigned n_q, size_t *bytes) {
  heed_error e = {0};
  heed_status st = check_params(rt, NULL, p, &e);
  if (st != HEED_OK) return refused(rt, st, &e);
  if (!bytes) return refused(rt, heed_err_set(&e, HEED_E_INVALID, "prefill workspace: bytes is NULL"), &e);
  (void)n_q;
  unsigned R = prefill_qtile(rt, p) * (p->n_q_heads / p->n_kv_heads);
  *bytes = (size_t)heed_runtime_n_threads(rt) * scratch_floats(R, p, 1) * sizeof(float);
  return HEED_OK;
}

static heed_status prefill(heed_runtime *rt, const heed_kv_cache *c, const heed_attn_params *p, heed_attn_seq s,
                           unsigned q_start, unsigned n_q, const float *q, float *out, float *lse, void *ws, size_t ws_bytes,
                           heed_error *e) {
  if (!c) return heed_err_set(e, HEED_E_INVALID, "attention: cache is NULL");
  heed_status st = check_params(rt, c, p, e);
  if (st != HEED_OK) return st;
  const uint32_t *blocks = NULL;
  unsigned len = 0;
  if ((st = kv_resolve_seq(c, s, &blocks, &len, e)) != HEED_OK) return st;
  if (n_q == 0) return HEED_OK;
  if ((uint64_t)q_start + n_q > len)
    return heed_err_set(e, HEED_E_RANGE, "prefill: queries at positions %u..%u, but the sequence holds %u tokens", q_start,
                        q_start + n_q - 1, len);
  if (!q || !out) return heed_err_set(e, HEED_E_INVALID, "prefill: q or out is NULL");
  if ((st = check_queries(q, n_q, p, e)) != HEED_OK) return st;
  size_t need;
  heed_attn_prefill_workspace(rt, p, n_q, &need);
  if (!ws || ws_bytes < need)
    return heed_err_set(e, HEED_E_TOO_SMALL, "prefill: workspace of %zu bytes; needs %zu", ws ? ws_bytes : 0, need);
  if ((st = check_overlap(c, n_q, p, q, out, lse, ws, ws_bytes, e)) != HEED_OK) return st;
  heed_attn_call call = {.cache = c, .p = p, .err = e, .seq = s, .q_start = q_start, .n_q = n_q, .q_tile = prefill_qtile(rt, p),
                         .q = q, .out = out, .lse = lse, .ws = ws, .ws_bytes = ws_bytes};
  call.seq.blocks = blocks;
  call.seq.n_tokens = len;
  return dispatch(rt, &call, 0, e);
}

heed_status heed_attn_prefill(heed_runtime *rt, const heed_kv_cache *c, const heed_attn_params *p, heed_attn_seq s,
                              unsigned q_start, unsigned n_q, const float *q, float *out, float *lse, void *ws,
                              size_t ws_bytes) {
  heed_error e = {0};
  return refused(rt, prefill(rt, c, p, s, q_start, n_q, q, out, lse, ws, ws_bytes, &e), &e);
}

heed_status heed_attn_decode_workspace(heed_runtime *rt, const heed_attn_params *p, const heed_attn_decode_seq *seqs,
                                       unsigned n_seqs, size_t *bytes) {
  heed_error e = {0};
  heed_status st = check_params(rt, NULL, p, &e);
  if (st != HEED_OK) return refused(rt, st, &e);
  if (!bytes || (n_seqs && !seqs))
    return refused(rt, heed_err_set(&e, HEED_E_INVALID, "decode workspace: bytes or seqs is NULL"), &e);
  unsigned G = p->n_q_heads / p->n_kv_heads;
  for (unsigned i = 0; i < n_seqs; i++)
    if (seqs[i].n_q < 1 || seqs[i].n_q > HEED_MAX_DECODE_QUERIES)
      return refused(rt,
                     heed_err_set(&e, HEED_E_INVALID, "decode workspace: sequence %u has n_q=%u; accepted: 1..%d", i,
                                  seqs[i].n_q, HEED_MAX_DECODE_QUERIES),
                     &e);
  size_t partial = decode_partial_floats(p, seqs, n_seqs, decode_max_splits(rt, p, n_seqs));
  *bytes = (size_t)heed_runtime_n_threads(rt) * decode_scratch_floats(G, p) * sizeof(float) + partial * sizeof(float) +
           (3 * (size_t)n_seqs + 1) * sizeof(unsigned) + (size_t)n_seqs * sizeof(size_t) + 64;
  return HEED_OK;
}

static heed_status decode(heed_runtime *rt, const heed_kv_cache *c, const heed_attn_params *p,
                          const heed_attn_decode_seq *seqs, unsigned n_seqs, const float *q, float *out, float *lse,
                          void *ws, size_t ws_bytes, heed_error *e) {
  if (!c) return heed_err_set(e, HEED_E_INVALID, "attention: cache is NULL");
  heed_status st = check_params(rt, c, p, e);
  if (st != HEED_OK) return st;
  if (n_seqs == 0) return HEED_OK;
  if (!seqs || !q || !out) return heed_err_set(e, HEED_E_INVALID, "decode: seqs, q or out is NULL");
  size_t rows = 0;
  for (unsigned i = 0; i < n_seqs; i++) {
    const uint32_t *blocks = NULL;
    unsigned len = 0;
    if ((st = kv_resolve_seq(c, seqs[i].kv, &blocks, &len, e)) != HEED_OK) return st;
    unsigned nq = seqs[i].n_q;
    if (nq < 1 || nq > HEED_MAX_DECODE_QUERIES)
      return heed_err_set(e, HEED_E_INVALID, "decode: sequence %u has n_q=%u; accepted: 1..%d", i, nq, HEED_MAX_DECODE_QUERIES);
    if (nq > len)
      return heed_err_set(e, HEED_E_RANGE, "decode: sequence %u has %u queries but holds %u tokens (append them first)", i,
                          nq, len);
    rows += nq;
  }
  if ((st = check_queries(q, rows, p, e)) != HEED_OK) return st;
  size_t need;
  heed_attn_decode_workspace(rt, p, seqs, n_seqs, &need);
  if (!ws || ws_bytes < need)
    return heed_err_set(e, HEED_E_TOO_SMALL, "decode: workspace of %zu bytes; needs %zu", ws ? ws_bytes : 0, need);
  if ((st = check_overlap(c, rows, p, q, out, lse, ws, ws_bytes, e)) != HEED_OK) return st;
  heed_attn_call call = {.cache = c, .p = p, .err = e, .seqs = seqs, .n_seqs = n_seqs,
                         .max_splits = decode_max_splits(rt, p, n_seqs), .q = q, .out = out, .lse = lse, .ws = ws,
                         .ws_bytes = ws_bytes};
  return dispatch(rt, &call, 1, e);
}

heed_status heed_attn_decode(heed_runtime *rt, const heed_kv_cache *c, const heed_attn_params *p,
                             const heed_attn_decode_seq *seqs, unsigned n_seqs, const float *q, float *out, float *lse,
                             void *ws, size_t ws_bytes) {
  heed_error e = {0};
  return refused(rt, decode(rt, c, p, seqs, n_seqs, q, out, lse, ws, ws_bytes, &e), &e);
}

/* ---------- the tiled driver ---------- */

typedef struct job {
  const heed_attn_call *call;
  const heed_kv_cache *c;
  const heed_attn_params *p;
  heed_attn_qk_fn qk_of[HEED_DTYPE_COUNT]; /* by storage type: the cache's, and f16 for residuals */
  heed_attn_pv_fn pv_of[HEED_DTYPE_COUNT];
  heed_to_f32_fn f16_to_f32; /* the quantized formats' scales and mins */
  heed_dot_fn dot;           /* f32 dot products: a q4 minimum's share of a score or an output, a lead row */
  heed_attn_qk_q8_fn qk_q8;  /* q8 K from a quantized query; NULL: the float kernels */
  heed_attn_pv_q8_fn pv_q8;  /* q8 V from a quantized P; NULL: the float kernels */
  heed_softmax_row_fn sm;
  unsigned G, H, bl, cols;
  float *scratch;       /* [W][scratch_stride] */
  size_t scratch_stride;
  /* prefill */
  unsigned qtile, n_tiles;
  /* decode */
  unsigned max_splits;
  unsigned *item_off;   /* [n_seqs+1]: first item of each sequence */
  unsigned *row_off;    /* [n_seqs]: first query row of each sequence */
  unsigned *splits;     /* [n_seqs] */
  float *partial;       /* per item: O [R][dv], m [R], l [R] */
  size_t *part_off;     /* [n_seqs]: float offset of the sequence's first item */
} job;

/* The queries one item handles: positions pos0 .. pos0+n_pos-1. In-flight
 * tokens [tree_base, tree_base+n_pos) follow tree (row i: which of them query i sees). */
typedef struct rowset {
  unsigned n_pos, R, pos0;
  unsigned tree_base;
  const uint8_t *tree;
} rowset;

static void pack_q(const job *J, const rowset *rs, unsigned kvh, size_t qrow0, float *qp) {
  const heed_attn_params *p = J->p;
  for (unsigned i = 0; i < rs->n_pos; i++)
    for (unsigned hh = 0; hh < J->G; hh++) {
      const float *src = J->call->q + ((qrow0 + i) * J->H + kvh * J->G + hh) * p->dk;
      float *dst = qp + (size_t)(i * J->G + hh) * p->dk;
      for (unsigned d = 0; d < p->dk; d++) dst[d] = src[d] * p->scale;
    }
}

/* Visible keys of query i: [lo, hi] (and, in the tree region, what the mask allows). */
static inline void visible(const job *J, const rowset *rs, unsigned i, unsigned *lo, unsigned *hi) {
  unsigned pos = rs->pos0 + i, w = J->p->window;
  *hi = pos;
  *lo = w && pos + 1 > w ? pos + 1 - w : 0;
}

/* The tokens one item reads: a block table, its full blocks, the residual. */
typedef struct kv_src {
  const uint32_t *blocks;
  unsigned len, n_full;
  int res; /* residual slot (sequence id), -1 for none */
} kv_src;

static kv_src src_of(const heed_kv_cache *c, heed_attn_seq s, const uint32_t *blocks, unsigned len) {
  kv_src r = {blocks, len, kv_n_full(c, len), c->quant && s.seq >= 0 ? s.seq : -1};
  return r;
}

/* Quantized-format scratch of a worker (quant_floats). */
typedef struct qscratch {
  float *q2, *p2, *vs, *vm, *bias, *tmp, *lead, *p0;
} qscratch;

static qscratch qscratch_at(float *base, unsigned R, const heed_attn_params *p) {
  qscratch x;
  x.q2 = base;
  x.p2 = x.q2 + (size_t)R * p->dk;
  x.vs = x.p2 + (size_t)R * SCOLS;
  x.vm = x.vs + (size_t)SCOLS * (p->dv / 16);
  x.bias = x.vm + (size_t)SCOLS * (p->dv / 16);
  x.tmp = x.bias + R;
  x.lead = x.tmp + (size_t)SCOLS * (p->dv / 16);
  x.p0 = x.lead + (p->dk > p->dv ? p->dk : p->dv);
  return x;
}

/* S[R][n] (row stride cols) = scores of keys off..off+n of a view. Quantized
 * K: the per-channel scales fold into the query (one pass per K group) and a
 * q4 minimum adds sum_d q_d * min_d to each score; fp8 scales the scores. */
static void scores_coded(const job *J, const kv_view *w, unsigned R, const float *qp, unsigned off, unsigned n, float *S,
                         const qscratch *x) {
  const heed_attn_params *p = J->p;
  const unsigned dk = p->dk, cols = J->cols, kg = J->c->cfg.k_group;
  const unsigned B = heed_run_bytes(w->kt);
  if (w->kt != HEED_DTYPE_Q8 && w->kt != HEED_DTYPE_Q4) {
    J->qk_of[w->kt](qp, (int)R, HEED_K_RUN(w->k, B, dk, off, 0), (int)n, (int)dk, S, (int)cols);
    if (w->kt == HEED_DTYPE_E4M3 || w->kt == HEED_DTYPE_E5M2)
      for (unsigned r = 0; r < R; r++)
        for (unsigned j = 0; j < n; j++) S[(size_t)r * cols + j] *= w->kscale;
    return;
  }
  for (unsigned t0 = off; t0 < off + n;) {
    unsigned g = t0 / kg, t1 = (g + 1) * kg < off + n ? (g + 1) * kg : off + n;
    const heed_f16 *sc = w->ks + (size_t)g * dk, *mn = w->km ? w->km + (size_t)g * dk : NULL;
    J->f16_to_f32(sc, x->vs, dk);
    float *St = S + (t0 - off);
    if (w->kt == HEED_DTYPE_Q8 && J->qk_q8) { /* q8 K: the query quantized per row (x->q2 is its scratch: 4 R dk bytes) */
      J->qk_q8(qp, (int)R, x->vs, HEED_K_RUN(w->k, B, dk, t0, 0), (int)(t1 - t0), (int)dk, St, (int)cols, x->q2);
      t0 = t1;
      continue;
    }
    if (mn) J->f16_to_f32(mn, x->vm, dk); /* x->vm is free until accumulate() */
    for (unsigned r = 0; r < R; r++) {
      const float *qr = qp + (size_t)r * dk;
      float *q2 = x->q2 + (size_t)r * dk;
      for (unsigned d = 0; d < dk; d++) q2[d] = qr[d] * x->vs[d];
      x->bias[r] = mn ? J->dot(qr, x->vm, dk) : 0.0f;
    }
    J->qk_of[w->kt](x->q2, (int)R, HEED_K_RUN(w->k, B, dk, t0, 0), (int)(t1 - t0), (int)dk, St, (int)cols);
    if (mn)
      for (unsigned r = 0; r < R; r++)
        for (unsigned j = 0; j < t1 - t0; j++) St[(size_t)r * cols + j] += x->bias[r];
    t0 = t1;
  }
}

/* The scores of a view's keys; a pool block's quantized K row 0 is its lead
 * row (f16), whose scores replace those the codes give. */
static void scores(const job *J, const kv_view *w, unsigned R, const float *qp, unsigned off, unsigned n, float *S,
                   const qscratch *x) {
  scores_coded(J, w, R, qp, off, n, S, x);
  if (off || !w->kl || !n) return;
  const unsigned dk = J->p->dk;
  J->f16_to_f32(w->kl, x->lead, dk);
  for (unsigned r = 0; r < R; r++) S[(size_t)r * J->cols] = J->dot(qp + (size_t)r * dk, x->lead, dk);
}

/* O[R][dv] += P[R][n] . V(off..off+n). Quantized V: the per-token scales fold
 * into P (one pass per V group) and a q4 minimum adds sum_j p_j * min_j; fp8
 * scales P. P is overwritten for fp8. */
static void accumulate_coded(const job *J, const kv_view *w, unsigned R, float *P, unsigned off, unsigned n, float *O,
                             const qscratch *x) {
  const heed_attn_params *p = J->p;
  const unsigned dv = p->dv, cols = J->cols, vg = J->c->cfg.v_group, ng = dv / vg;
  const unsigned B = heed_run_bytes(w->vt);
  const char *v = (const char *)HEED_V_RUN(w->v, B, dv, off, 0);
  if (w->vt != HEED_DTYPE_Q8 && w->vt != HEED_DTYPE_Q4) {
    if (w->vt == HEED_DTYPE_E4M3 || w->vt == HEED_DTYPE_E5M2)
      for (unsigned r = 0; r < R; r++)
        for (unsigned j = 0; j < n; j++) P[(size_t)r * cols + j] *= w->vscale;
    J->pv_of[w->vt](P, (int)cols, (int)R, v, (int)n, (int)dv, (int)dv, O);
    return;
  }
  /* the scales (and mins) of keys off..off+n, [n][ng] as stored, to [ng][SCOLS] */
  for (int m = 0; m < (w->vm ? 2 : 1); m++) {
    float *dst = m ? x->vm : x->vs;
    const heed_f16 *src = (m ? w->vm : w->vs) + (size_t)off * ng;
    if (ng == 1) {
      J->f16_to_f32(src, dst, n);
      continue;
    }
    J->f16_to_f32(src, x->tmp, (size_t)n * ng);
    for (unsigned j = 0; j < n; j++)
      for (unsigned g = 0; g < ng; g++) dst[(size_t)g * SCOLS + j] = x->tmp[(size_t)j * ng + g];
  }
  if (w->vt == HEED_DTYPE_Q8 && J->pv_q8) { /* q8 V: P times the scales quantized per row (x->p2 is its scratch) */
    for (unsigned g = 0; g < ng; g++)
      J->pv_q8(P, (int)cols, (int)R, x->vs + (size_t)g * SCOLS, (const char *)HEED_V_RUN(v, B, dv, 0, g * vg), (int)n,
               (int)vg, (int)dv, O + g * vg, x->p2);
    return;
  }
  for (unsigned g = 0; g < ng; g++) {
    const float *sg = x->vs + (size_t)g * SCOLS, *mg = x->vm + (size_t)g * SCOLS;
    for (unsigned r = 0; r < R; r++) {
      const float *pr = P + (size_t)r * cols;
      float *p2 = x->p2 + (size_t)r * cols;
      for (unsigned j = 0; j < n; j++) p2[j] = pr[j] * sg[j];
      if (w->vm) {
        float b = J->dot(pr, mg, n), *o = O + (size_t)r * dv + g * vg;
        for (unsigned c = 0; c < vg; c++) o[c] += b;
      }
    }
    J->pv_of[w->vt](x->p2, (int)cols, (int)R, (const char *)HEED_V_RUN(v, B, dv, 0, g * vg), (int)n, (int)vg, (int)dv,
                    O + g * vg);
  }
}

/* The same; a pool block's quantized V row 0 is its lead row (f16): the codes
 * get probability 0 there and the lead row gets it. P[.][0] is overwritten. */
static void accumulate(const job *J, const kv_view *w, unsigned R, float *P, unsigned off, unsigned n, float *O,
                       const qscratch *x) {
  const unsigned cols = J->cols, dv = J->p->dv;
  const int lead = !off && w->vl && n;
  if (lead)
    for (unsigned r = 0; r < R; r++) {
      x->p0[r] = P[(size_t)r * cols];
      P[(size_t)r * cols] = 0.0f;
    }
  accumulate_coded(J, w, R, P, off, n, O, x);
  if (!lead) return;
  J->f16_to_f32(w->vl, x->lead, dv);
  for (unsigned r = 0; r < R; r++) {
    const float p0 = x->p0[r];
    if (p0 == 0.0f) continue;
    float *o = O + (size_t)r * dv;
    for (unsigned d = 0; d < dv; d++) o[d] += p0 * x->lead[d];
  }
}

/* Accumulates keys [kb, ke) into (O, M, L) for the rows of rs. */
static void run_keys(const job *J, const rowset *rs, const kv_src *src, unsigned kvh, unsigned kb, unsigned ke,
                     const float *qp, float *S, float *O, float *M, float *L, const qscratch *x) {
  const heed_kv_cache *c = J->c;
  const heed_attn_params *p = J->p;
  const unsigned R = rs->R, G = J->G, cols = J->cols;
  const float cap = p->softcap;
  /* Start on a key panel; the keys before kb that this adds are masked below
   * (every caller's kb is the first key some row may see, or a block start). */
  kb -= kb % HEED_KEY_PANEL;
  for (unsigned k0 = kb; k0 < ke;) {
    unsigned b = k0 / J->bl, off = k0 % J->bl, n = ke - k0;
    if (n > J->bl - off) n = J->bl - off;
    if (n > cols) n = cols;
    kv_view w;
    kv_view_of(c, src->blocks, src->n_full, src->res, b, kvh, &w);
    /* A full quantized block is read in whole panels (its kernels take
     * multiples of 16 keys); the keys past ke this adds are masked below. */
    unsigned nk = n;
    if (b < src->n_full && c->quant) {
      nk = (n + HEED_KEY_PANEL - 1) / HEED_KEY_PANEL * HEED_KEY_PANEL;
      if (nk > cols) nk = cols;
    }
    scores(J, &w, R, qp, off, nk, S, x);
    if (cap > 0)
      for (unsigned r = 0; r < R; r++)
        for (unsigned j = 0; j < nk; j++) S[(size_t)r * cols + j] = cap * tanhf(S[(size_t)r * cols + j] / cap);
    for (unsigned i = 0; i < rs->n_pos; i++) {
      unsigned lo, hi;
      visible(J, rs, i, &lo, &hi);
      unsigned jlo = lo > k0 ? lo - k0 : 0, jhi = hi + 1 > k0 ? hi + 1 - k0 : 0;
      if (jlo > nk) jlo = nk;
      if (jhi > nk) jhi = nk;
      if (jhi < jlo) jhi = jlo;
      int tree = rs->tree && k0 + nk > rs->tree_base;
      if (jlo == 0 && jhi == nk && !tree) continue;
      for (unsigned hh = 0; hh < G; hh++) {
        float *srow = S + (size_t)(i * G + hh) * cols;
        for (unsigned j = 0; j < jlo; j++) srow[j] = -INFINITY;
        for (unsigned j = jhi; j < nk; j++) srow[j] = -INFINITY;
        if (tree)
          for (unsigned j = jlo; j < jhi; j++) {
            unsigned key = k0 + j;
            if (key >= rs->tree_base && !rs->tree[(size_t)i * rs->n_pos + (key - rs->tree_base)]) srow[j] = -INFINITY;
          }
      }
    }
    for (unsigned r = 0; r < R; r++) {
      float alpha = J->sm(S + (size_t)r * cols, (int)nk, &M[r], &L[r]);
      if (alpha != 1.0f) {
        float *o = O + (size_t)r * p->dv;
        for (unsigned d = 0; d < p->dv; d++) o[d] *= alpha;
      }
    }
    accumulate(J, &w, R, S, off, nk, O, x);
    k0 += n;
  }
}

/* Sinks, normalisation, log-sum-exp; writes the rows' output. */
static void finalize(const job *J, const rowset *rs, unsigned kvh, size_t qrow0, const float *O, const float *M,
                     const float *L) {
  const heed_attn_params *p = J->p;
  for (unsigned i = 0; i < rs->n_pos; i++)
    for (unsigned hh = 0; hh < J->G; hh++) {
      unsigned r = i * J->G + hh, h = kvh * J->G + hh;
      double m = M[r], l = L[r], keep = 1.0;
      if (p->sinks) {
        double sk = p->sinks[h], mf = m > sk ? m : sk;
        keep = m == -INFINITY ? 0.0 : exp(m - mf);
        l = l * keep + exp(sk - mf);
        m = mf;
      }
      size_t at = (qrow0 + i) * J->H + h;
      float *dst = J->call->out + at * p->dv;
      const float *o = O + (size_t)r * p->dv;
      float inv = l > 0 ? (float)(keep / l) : 0.0f;
      for (unsigned d = 0; d < p->dv; d++) dst[d] = o[d] * inv;
      if (J->call->lse) J->call->lse[at] = l > 0 ? (float)(m + log(l)) : -INFINITY;
    }
}

static void job_init(job *J, heed_cpu_ctx *x, const heed_attn_call *call) {
  memset(J, 0, sizeof *J);
  J->call = call;
  J->c = call->cache;
  J->p = call->p;
  for (int t = 0; t < HEED_DTYPE_COUNT; t++) {
    J->qk_of[t] = heed_kernel_attn_qk(x->kernels, (heed_dtype)t);
    J->pv_of[t] = heed_kernel_attn_pv(x->kernels, (heed_dtype)t);
  }
  J->f16_to_f32 = heed_kernel_to_f32(x->kernels, HEED_DTYPE_F16);
  J->dot = heed_kernel_dot(x->kernels, HEED_DTYPE_F32);
  J->qk_q8 = x->qk_q8;
  J->pv_q8 = x->pv_q8;
  J->sm = heed_kernel_softmax_row(x->kernels);
  J->G = call->p->n_q_heads / call->p->n_kv_heads;
  J->H = call->p->n_q_heads;
  J->bl = call->cache->cfg.block_len;
  J->cols = J->bl < SCOLS ? J->bl : SCOLS;
}

static void prefill_item(void *ctx, size_t b, size_t e, int w) {
  const job *J = ctx;
  const heed_attn_call *call = J->call;
  const heed_attn_params *p = J->p;
  float *qp = J->scratch + (size_t)w * J->scratch_stride;
  for (size_t it = b; it < e; it++) {
    unsigned tile = J->n_tiles - 1 - (unsigned)(it / p->n_kv_heads); /* latest (longest) tiles first */
    unsigned kvh = (unsigned)(it % p->n_kv_heads);
    rowset rs = {.pos0 = call->q_start + tile * J->qtile};
    rs.n_pos = call->n_q - tile * J->qtile < J->qtile ? call->n_q - tile * J->qtile : J->qtile;
    rs.R = rs.n_pos * J->G;
    float *S = qp + (size_t)rs.R * p->dk, *O = S + (size_t)rs.R * SCOLS, *M = O + (size_t)rs.R * p->dv, *L = M + rs.R;
    qscratch x = qscratch_at(L + rs.R, rs.R, p);
    kv_src src = src_of(J->c, call->seq, call->seq.blocks, call->seq.n_tokens);
    pack_q(J, &rs, kvh, (size_t)tile * J->qtile, qp);
    memset(O, 0, (size_t)rs.R * p->dv * sizeof(float));
    for (unsigned r = 0; r < rs.R; r++) M[r] = -INFINITY, L[r] = 0;
    unsigned lo, hi;
    visible(J, &rs, 0, &lo, &hi);                            /* the earliest key any row sees */
    run_keys(J, &rs, &src, kvh, lo, rs.pos0 + rs.n_pos, qp, S, O, M, L, &x);
    finalize(J, &rs, kvh, (size_t)tile * J->qtile, O, M, L);
  }
}

heed_status heed_cpu_attn_prefill(void *ctx, const heed_attn_call *call) {
  heed_cpu_ctx *x = ctx;
  job J;
  job_init(&J, x, call);
  J.qtile = call->q_tile;
  J.n_tiles = (call->n_q + J.qtile - 1) / J.qtile;
  J.scratch = call->ws;
  J.scratch_stride = scratch_floats(J.qtile * J.G, call->p, 1);
  return heed_pool_parallel_for(x->pool, (size_t)J.n_tiles * call->p->n_kv_heads, HEED_SCHEDULE_DYNAMIC, 1,
                                prefill_item, &J);
}

/* Decode pass 1: item = (sequence, KV head, split) over a contiguous run of blocks. */
static void decode_item(void *ctx, size_t b, size_t e, int w) {
  const job *J = ctx;
  const heed_attn_call *call = J->call;
  const heed_attn_params *p = J->p;
  float *qp = J->scratch + (size_t)w * J->scratch_stride;
  for (size_t it = b; it < e; it++) {
    unsigned i = 0;
    while (J->item_off[i + 1] <= it) i++;
    unsigned local = (unsigned)it - J->item_off[i], ns = J->splits[i];
    unsigned kvh = local / ns, sp = local % ns;
    const heed_attn_decode_seq *sq = &call->seqs[i];
    const uint32_t *blocks = NULL;
    unsigned len = 0;
    kv_resolve_seq(J->c, sq->kv, &blocks, &len, NULL);
    rowset rs = {.n_pos = sq->n_q, .R = sq->n_q * J->G, .pos0 = len - sq->n_q, .tree_base = len - sq->n_q, .tree = sq->tree_mask};
    float *S = qp + (size_t)rs.R * p->dk;
    qscratch x = qscratch_at(S + (size_t)rs.R * SCOLS, rs.R, p);
    kv_src src = src_of(J->c, sq->kv, blocks, len);
    float *O = J->partial + J->part_off[i] + (size_t)local * rs.R * (p->dv + 2), *M = O + (size_t)rs.R * p->dv, *L = M + rs.R;
    memset(O, 0, (size_t)rs.R * p->dv * sizeof(float));
    for (unsigned r = 0; r < rs.R; r++) M[r] = -INFINITY, L[r] = 0;
    unsigned nb = kv_blocks_for(len, J->bl);
    unsigned kb = (unsigned)((size_t)nb * sp / ns) * J->bl, ke = (unsigned)((size_t)nb * (sp + 1) / ns) * J->bl;
    if (ke > len) ke = len;
    unsigned lo, hi;
    visible(J, &rs, 0, &lo, &hi);
    if (kb < lo) kb = lo;
    if (kb >= ke) continue;
    pack_q(J, &rs, kvh, J->row_off[i], qp);
    run_keys(J, &rs, &src, kvh, kb, ke, qp, S, O, M, L, &x);
  }
}

/* Decode pass 2: merge the splits of (sequence, KV head) by log-sum-exp, then finalize. */
static void decode_merge(void *ctx, size_t b, size_t e, int w) {
  const job *J = ctx;
  const heed_attn_params *p = J->p;
  float *acc = J->scratch + (size_t)w * J->scratch_stride;
  for (size_t it = b; it < e; it++) {
    unsigned i = (unsigned)(it / p->n_kv_heads), kvh = (unsigned)(it % p->n_kv_heads), ns = J->splits[i];
    const heed_attn_decode_seq *sq = &J->call->seqs[i];
    unsigned R = sq->n_q * J->G;
    float *O = acc, *M = O + (size_t)R * p->dv, *L = M + R;
    const size_t stride = (size_t)R * (p->dv + 2);
    const float *part = J->partial + J->part_off[i] + (size_t)kvh * ns * stride;
    for (unsigned r = 0; r < R; r++) {
      float m = -INFINITY;
      for (unsigned s = 0; s < ns; s++) {
        float ms = part[s * stride + (size_t)R * p->dv + r];
        m = ms > m ? ms : m;
      }
      float l = 0, *o = O + (size_t)r * p->dv;
      memset(o, 0, p->dv * sizeof(float));
      if (m != -INFINITY)
        for (unsigned s = 0; s < ns; s++) {
          const float *ps = part + s * stride;
          float ms = ps[(size_t)R * p->dv + r];
          if (ms == -INFINITY) continue;
          float f = expf(ms - m);
          l += ps[(size_t)R * p->dv + R + r] * f;
          const float *os = ps + (size_t)r * p->dv;
          for (unsigned d = 0; d < p->dv; d++) o[d] += os[d] * f;
        }
      M[r] = m;
      L[r] = l;
    }
    const uint32_t *blocks = NULL;
    unsigned len = 0;
    kv_resolve_seq(J->c, sq->kv, &blocks, &len, NULL);
    rowset rs = {.n_pos = sq->n_q, .R = R, .pos0 = len - sq->n_q};
    finalize(J, &rs, kvh, J->row_off[i], O, M, L);
  }
}

heed_status heed_cpu_attn_decode(void *ctx, const heed_attn_call *call) {
  heed_cpu_ctx *x = ctx;
  job J;
  job_init(&J, x, call);
  const heed_attn_params *p = call->p;
  unsigned W = (unsigned)heed_pool_n_workers(x->pool), n = call->n_seqs;
  /* Hold the pool before the workspace is written: a refused call writes nothing,
   * and no other call can take the pool between the two passes. */
  heed_status st = heed_pool_hold(x->pool);
  if (st != HEED_OK) return st;
  /* Workspace: [W][scratch] | partials | item_off[n+1] row_off[n] splits[n] | part_off[n] */
  J.scratch = call->ws;
  J.scratch_stride = decode_scratch_floats(J.G, p);
  char *cur = (char *)call->ws + (size_t)W * J.scratch_stride * sizeof(float);
  J.partial = (float *)cur;
  cur += decode_partial_floats(p, call->seqs, n, call->max_splits) * sizeof(float);
  J.item_off = (unsigned *)cur;
  J.row_off = J.item_off + n + 1;
  J.splits = J.row_off + n;
  J.part_off = (size_t *)(((uintptr_t)(J.splits + n) + 7) & ~(uintptr_t)7);
  unsigned items = 0, rows = 0;
  size_t poff = 0;
  for (unsigned i = 0; i < n; i++) {
    const uint32_t *blocks = NULL;
    unsigned len = 0;
    kv_resolve_seq(J.c, call->seqs[i].kv, &blocks, &len, NULL);
    unsigned nb = kv_blocks_for(len, J.bl);
    J.splits[i] = call->max_splits < nb ? call->max_splits : (nb ? nb : 1);
    J.item_off[i] = items;
    J.row_off[i] = rows;
    J.part_off[i] = poff;
    items += p->n_kv_heads * J.splits[i];
    rows += call->seqs[i].n_q;
    poff += (size_t)p->n_kv_heads * J.splits[i] * item_floats(p, call->seqs[i].n_q);
  }
  J.item_off[n] = items;
  st = heed_pool_parallel_for(x->pool, items, HEED_SCHEDULE_DYNAMIC, 1, decode_item, &J);
  if (st == HEED_OK)
    st = heed_pool_parallel_for(x->pool, (size_t)n * p->n_kv_heads, HEED_SCHEDULE_DYNAMIC, 1, decode_merge, &J);
  heed_pool_release(x->pool);
  return st;
}
