/* spec/spec.c - sampling and speculative verification over vocabulary rows.
 *
 * A row's statistics come from three passes over it:
 *   A (parallel, rows x chunks): max, first argmax, non-finite check;
 *   B (per row): the cut threshold thr from top-k / top-p / min-p;
 *   C (parallel, rows x chunks): Z = sum over x >= thr of exp((x - m) / T);
 * after which p(x) = [x >= thr] exp((x - m) / T) / Z for any token in O(1).
 * With no cut, A and C are one pass (each chunk's C runs while it is in
 * cache). Top-k (k <= 1024) and top-p run that pass too, keeping each
 * block's max (256 tokens), and B finds the cut from the few tokens of the
 * blocks whose max reaches a bound the cut cannot be below (top-k: the k-th
 * largest block max; top-p: V exp((t - m) / T) <= (1 - p) Z); Z is then
 * summed exactly from the kept tokens, and C is skipped. More than
 * KEEP_MAX candidates (a flat row, ties by the thousand) fall back to a
 * histogram of the row and C. C uses the bound kernel (a cheap exp): each chunk's sum, and so Z,
 * is known within an interval; an acceptance test u q(x) < p(x) that the
 * intervals cannot settle makes the widest chunk sums exact (refine), 1, 2,
 * 4, ... at a time, until they do. Long rows are done when the walk first
 * needs them (need), so rows after a rejection are not read (but one, where
 * a chain's rows are read in pairs: on a pool with many workers, where one
 * row gives each fewer than two chunks).
 * Decisions walk the chain or tree. A token from a row's own distribution
 * (the bonus token) is drawn in three steps: its chunk (PCHUNK tokens) by
 * inverse CDF over the chunk sums, settled by their intervals or refined as
 * above, then its block (256 tokens) the same way over the chunk's bounded
 * block sums, then the token inside that block; the row is not read again,
 * and exact exps are taken of a block or two, not of the chunk. A
 * rejection materialises the residual max(0, p - q) in one vocabulary
 * buffer with per-chunk sums (SCHUNK), and a token is drawn from it by
 * inverse CDF. Chunks are fixed, so neither the thread count nor the ISA
 * changes which sums are added in which order, only rounding.
 *
 * Repetition penalty without copying the row: the penalised tokens (sorted)
 * split every pass into plain segments, which go to the kernels, and single
 * tokens, whose penalised values are kept beside the list.
 *
 * On a backend with vocabulary ops (OpenCL) the rows are copied to the
 * device, the penalised values written over them there, and A, B and C run
 * as device passes: per-chunk max and sum of exp, and for the cuts a
 * histogram by distance below the max (counts for top-k, mass for top-p)
 * followed by collecting the values above the chosen bucket's edge. The
 * host merges, decides and materialises the residual from its own rows.
 */
#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "heed/kernels.h"
#include "heed/pool.h"
#include "heed/spec.h"
#include "runtime/backend.h"
#include "runtime/internal.h"
#include "spec/spec_internal.h"

#define PCHUNK HEED_SPEC_CHUNK /* elements per parallel task, and per chunk of a draw */
#define SCHUNK 1024u   /* elements per sampling chunk */
#define LAZY_VOCAB 65536u /* rows at least this long are read when the walk reaches them */
#define KEEP_MAX 4096u /* a cut that keeps at most this many tokens is summed from them, exactly */
#define TOPK_FAST 1024u /* top-k up to this k from candidates */
#define HB 2048        /* top-p histogram buckets ... */
#define HR 32.0f       /* ... over this many nats below the max */
#define DRAW_SAMPLE HEED_SPEC_DRAW_CHUNK  /* draw index of the chunk sampled at row r: DRAW_SAMPLE + r, */
#define DRAW_WITHIN HEED_SPEC_DRAW_WITHIN /* of the block inside it: DRAW_WITHIN + r, */
#define DRAW_TOKEN HEED_SPEC_DRAW_TOKEN   /* and of the token inside that: DRAW_TOKEN + r */
_Static_assert(PCHUNK % HEED_SPEC_BLOCK == 0, "a draw's chunk is whole blocks");

typedef struct penrow {
  const uint32_t *pos; /* [n] sorted, distinct */
  float *val;          /* [n] the penalised logits of this row at pos */
  unsigned n;
} penrow;

typedef struct rowstat {
  const float *x;  /* [vocab] the row */
  penrow pen;
  float m;         /* max of the (penalised) row */
  uint32_t arg;    /* its first index */
  float thr;       /* kept: x >= thr */
  float z;         /* sum of exp((x - m) s) over what is kept: exact, or from the bound kernel */
  float zlo, zhi;  /* the true sum is in [zlo, zhi] (zlo == zhi == z once exact) */
  int zexact;
  int bad;         /* a NaN or +inf in the row */
  int ready;       /* m, arg (greedy) or m, arg, thr, z (sampling) are this call's */
} rowstat;

typedef heed_vocab_part part; /* runtime/backend.h */

struct heed_spec {
  heed_runtime *rt;
  heed_pool *pool;
  heed_spec_config cfg;
  heed_vocab_max_fn vmax;
  heed_vocab_sumexp_fn vsumexp, vsumexp_bound;
  heed_vocab_maxsum_bound_fn vmaxsum;
  heed_vocab_weights_fn vweights;
  heed_vocab_residual_fn vresid;
  heed_vocab_collect_fn vcollect;
  const heed_vocab_ops *dev; /* the backend's passes on its device; NULL: the kernels above on the pool */
  void *dev_ctx, *dev_h;
  atomic_int busy;
  int fault;         /* spec_internal.h: a deliberate bug, for the tests that must catch it */
  heed_error err;
  unsigned n_pchunk, n_schunk, max_rows, pen_cap;
  /* work space, all allocated at create */
  float *w;          /* [vocab] the materialised distribution being sampled */
  float *qw;         /* [vocab] a dense q, materialised */
  float *vals;       /* [vocab] values being sorted (top-k heap, top-p boundary bucket) */
  uint32_t *idx;     /* [vocab] collected indices */
  float *csum;       /* [n_schunk] per-chunk sums of w */
  double *hmass;     /* [n_workers][4][HB]: four copies per pool worker, merged into the first */
  uint32_t *hcnt;    /* [n_workers][4][HB] */
  int n_workers;
  unsigned *hist_seen, hist_call; /* [n_workers]: the histogram call each worker's copies belong to */
  uint32_t *pen_base; /* [max_penalty_tokens] sorted distinct */
  uint32_t *pen_pos; /* [max_rows][pen_cap] */
  float *pen_val;    /* [2 * max_rows][pen_cap] */
  rowstat *rs;       /* [2 * max_rows]: target rows, then dense-logit q rows */
  part *parts;       /* [2 * max_rows][n_pchunk] */
  float *cz;         /* [2 * max_rows][n_pchunk]: each slot's chunk sums of exp((x - m) / T), */
  uint8_t *cx;       /* [2 * max_rows][n_pchunk]: exact, or from the bound kernel */
  float *bmax;       /* [2 * max_rows][n_blk]: each slot's block maxima (a cut's candidates are where they are high) */
  unsigned n_blk;
  struct cutbuf {    /* [n_workers]: a cut's work space, one per pool worker (rows are cut in parallel) */
    struct kept { float v; uint32_t t; } *keep; /* [KEEP_MAX] the kept tokens */
    float *h;        /* [max(n_blk, KEEP_MAX)] values being selected from */
    uint32_t *got;   /* [HEED_VOCAB_BLOCK] one block's collected indices */
    uint32_t *pick;  /* [n_pchunk] chunks being made exact */
  } *cb;
  unsigned n_cut_cand, n_cut_hist; /* spec_internal.h */
  unsigned chain_rows; /* this call's target rows when the drafts are a chain (need reads ahead), else 0 */
  int pairs;           /* spec_internal.h: -1 auto */
};

/* The slot of a row (its index in s->rs), which is also its device slot. */
static inline unsigned slot_of(const heed_spec *s, const rowstat *r) { return (unsigned)(r - s->rs); }

static heed_status fail(heed_spec *s, heed_status st, const char *fmt, ...) HEED_PRINTF(3, 4);
static heed_status fail(heed_spec *s, heed_status st, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  heed_err_vset(&s->err, st, fmt, ap);
  va_end(ap);
  return st;
}

void heed_sampling_init(heed_sampling *s) {
  if (!s) return;
  memset(s, 0, sizeof *s);
  s->top_p = 1.0f;
  s->repetition_penalty = 1.0f;
}

const char *heed_spec_last_error(const heed_spec *s) { return s ? s->err.msg : "heed_spec is NULL"; }
const heed_spec_config *heed_spec_get_config(const heed_spec *s) { return s ? &s->cfg : NULL; }

heed_status heed_spec_create(heed_runtime *rt, const heed_spec_config *cfg, heed_spec **out, heed_error *err) {
  if (out) *out = NULL;
  if (!rt || !cfg || !out) return heed_err_set(err, HEED_E_INVALID, "heed_spec_create: rt, cfg and out must not be NULL");
  if (cfg->vocab < 2 || cfg->vocab > HEED_SPEC_VOCAB_MAX)
    return heed_err_set(err, HEED_E_INVALID, "heed_spec_create: vocab %u is outside 2..%u", cfg->vocab, HEED_SPEC_VOCAB_MAX);
  if (cfg->max_draft < 1 || cfg->max_draft > HEED_SPEC_MAX_DRAFT)
    return heed_err_set(err, HEED_E_INVALID, "heed_spec_create: max_draft %u is outside 1..%d", cfg->max_draft,
                        HEED_SPEC_MAX_DRAFT);
  if (cfg->max_penalty_tokens > (1u << 20))
    return heed_err_set(err, HEED_E_INVALID, "heed_spec_create: max_penalty_tokens %u is above %u",
                        cfg->max_penalty_tokens, 1u << 20);
  if (cfg->max_sparse > (1u << 20))
    return heed_err_set(err, HEED_E_INVALID, "heed_spec_create: max_sparse %u is above %u", cfg->max_sparse, 1u << 20);
  const heed_kernel_table *kt = heed_runtime_kernels(rt);
  heed_spec *s = calloc(1, sizeof *s);
  if (!s) return heed_err_set(err, HEED_E_NOMEM, "heed_spec_create: out of memory");
  s->rt = rt, s->pool = heed_runtime_pool(rt), s->cfg = *cfg, s->pairs = -1;
  s->vmax = heed_kernel_vocab_max(kt), s->vsumexp = heed_kernel_vocab_sumexp(kt);
  s->vsumexp_bound = heed_kernel_vocab_sumexp_bound(kt);
  s->vmaxsum = heed_kernel_vocab_maxsum_bound(kt);
  s->vweights = heed_kernel_vocab_weights(kt), s->vresid = heed_kernel_vocab_residual(kt);
  s->vcollect = heed_kernel_vocab_collect(kt);
  unsigned V = cfg->vocab;
  s->n_pchunk = (V + PCHUNK - 1) / PCHUNK, s->n_schunk = (V + SCHUNK - 1) / SCHUNK;
  s->max_rows = cfg->max_draft + 1, s->pen_cap = cfg->max_penalty_tokens + cfg->max_draft;
  s->w = malloc(sizeof(float) * V), s->qw = malloc(sizeof(float) * V), s->vals = malloc(sizeof(float) * V);
  s->idx = malloc(sizeof(uint32_t) * V), s->csum = malloc(sizeof(float) * s->n_schunk);
  s->n_workers = heed_pool_n_workers(s->pool) > 0 ? heed_pool_n_workers(s->pool) : 1;
  s->hmass = malloc(sizeof(double) * 4 * HB * s->n_workers), s->hcnt = malloc(sizeof(uint32_t) * 4 * HB * s->n_workers);
  s->hist_seen = calloc((size_t)s->n_workers, sizeof(unsigned));
  s->pen_base = malloc(sizeof(uint32_t) * (cfg->max_penalty_tokens + 1));
  s->pen_pos = malloc(sizeof(uint32_t) * ((size_t)s->max_rows * s->pen_cap + 1));
  s->pen_val = malloc(sizeof(float) * ((size_t)2 * s->max_rows * s->pen_cap + 1));
  s->rs = calloc((size_t)2 * s->max_rows, sizeof(rowstat));
  s->parts = malloc(sizeof(part) * (size_t)2 * s->max_rows * s->n_pchunk);
  s->cz = malloc(sizeof(float) * (size_t)2 * s->max_rows * s->n_pchunk);
  s->cx = malloc((size_t)2 * s->max_rows * s->n_pchunk);
  s->n_blk = (V + HEED_VOCAB_BLOCK - 1) / HEED_VOCAB_BLOCK;
  s->bmax = malloc(sizeof(float) * (size_t)2 * s->max_rows * s->n_blk);
  s->cb = calloc((size_t)s->n_workers, sizeof *s->cb);
  int cb_ok = s->cb != NULL;
  for (int w = 0; cb_ok && w < s->n_workers; w++) {
    struct cutbuf *c = &s->cb[w];
    c->keep = malloc(sizeof *c->keep * KEEP_MAX), c->h = malloc(sizeof(float) * (s->n_blk > KEEP_MAX ? s->n_blk : KEEP_MAX));
    c->got = malloc(sizeof(uint32_t) * HEED_VOCAB_BLOCK), c->pick = malloc(sizeof(uint32_t) * s->n_pchunk);
    cb_ok = c->keep && c->h && c->got && c->pick;
  }
  if (!s->bmax || !cb_ok ||
      !s->w || !s->qw || !s->vals || !s->idx || !s->csum || !s->hmass || !s->hcnt || !s->hist_seen || !s->pen_base || !s->pen_pos ||
      !s->pen_val || !s->rs || !s->parts || !s->cz || !s->cx) {
    heed_spec_destroy(s);
    return heed_err_set(err, HEED_E_NOMEM, "heed_spec_create: out of memory for a vocab of %u", V);
  }
  const heed_backend_iface *be = heed_runtime_backend_iface(rt, &s->dev_ctx);
  if (be && be->vocab) { /* the rows go to the device: room for every slot of s->rs */
    heed_status st = be->vocab->open(s->dev_ctx, V, 2 * s->max_rows, &s->dev_h, err);
    if (st) {
      heed_spec_destroy(s);
      return st;
    }
    s->dev = be->vocab;
  }
  *out = s;
  return HEED_OK;
}

void heed_spec_destroy(heed_spec *s) {
  if (!s) return;
  if (s->dev) s->dev->close(s->dev_ctx, s->dev_h);
  free(s->w), free(s->qw), free(s->vals), free(s->idx), free(s->csum), free(s->hmass), free(s->hcnt), free(s->hist_seen);
  free(s->pen_base), free(s->pen_pos), free(s->pen_val), free(s->rs), free(s->parts);
  free(s->cz), free(s->cx), free(s->bmax);
  for (int w = 0; s->cb && w < s->n_workers; w++) free(s->cb[w].keep), free(s->cb[w].h), free(s->cb[w].got), free(s->cb[w].pick);
  free(s->cb);
  free(s);
}

/* ---- checks ---- */

static heed_status check_sampling(heed_spec *s, const heed_sampling *smp) {
  if (!smp) return fail(s, HEED_E_INVALID, "sampling parameters are NULL");
  if (!(smp->temperature >= 0) || isinf(smp->temperature))
    return fail(s, HEED_E_INVALID, "temperature %g: must be 0 (greedy) or positive and finite", smp->temperature);
  if (smp->top_k > s->cfg.vocab)
    return fail(s, HEED_E_INVALID, "top_k %u is above the vocab %u (0 turns it off)", smp->top_k, s->cfg.vocab);
  if (!(smp->top_p > 0 && smp->top_p <= 1))
    return fail(s, HEED_E_INVALID, "top_p %g is outside (0, 1] (1 turns it off)", smp->top_p);
  if (!(smp->min_p >= 0 && smp->min_p < 1))
    return fail(s, HEED_E_INVALID, "min_p %g is outside [0, 1) (0 turns it off)", smp->min_p);
  if (!(smp->repetition_penalty > 0) || isinf(smp->repetition_penalty))
    return fail(s, HEED_E_INVALID, "repetition_penalty %g: must be positive and finite (1 turns it off)",
                smp->repetition_penalty);
  if (smp->repetition_penalty != 1.0f && smp->n_penalty_tokens) {
    if (smp->n_penalty_tokens > s->cfg.max_penalty_tokens)
      return fail(s, HEED_E_RANGE, "%u penalty tokens: this verifier takes at most %u (max_penalty_tokens)",
                  smp->n_penalty_tokens, s->cfg.max_penalty_tokens);
    if (!smp->penalty_tokens) return fail(s, HEED_E_INVALID, "penalty_tokens is NULL with n_penalty_tokens %u", smp->n_penalty_tokens);
    for (unsigned i = 0; i < smp->n_penalty_tokens; i++)
      if (smp->penalty_tokens[i] < 0 || (uint32_t)smp->penalty_tokens[i] >= s->cfg.vocab)
        return fail(s, HEED_E_RANGE, "penalty token %u is %d, outside the vocab 0..%u", i, smp->penalty_tokens[i],
                    s->cfg.vocab - 1);
  }
  return HEED_OK;
}

/* The parameters a call runs with: a temperature below the minimum is greedy. */
static const heed_sampling *effective(const heed_sampling *smp, heed_sampling *buf) {
  if (!(smp->temperature > 0 && smp->temperature < HEED_SPEC_MIN_TEMPERATURE)) return smp;
  *buf = *smp;
  buf->temperature = 0;
  return buf;
}

static heed_status check_tokens(heed_spec *s, const int32_t *tok, unsigned n, const char *what) {
  if (!tok) return fail(s, HEED_E_INVALID, "%s tokens are NULL", what);
  for (unsigned i = 0; i < n; i++)
    if (tok[i] < 0 || (uint32_t)tok[i] >= s->cfg.vocab)
      return fail(s, HEED_E_RANGE, "%s token %u is %d, outside the vocab 0..%u", what, i, tok[i], s->cfg.vocab - 1);
  return HEED_OK;
}

static heed_status check_parents(heed_error *e, const int32_t *parents, unsigned n) {
  if (!parents) return heed_err_set(e, HEED_E_INVALID, "parents are NULL");
  for (unsigned i = 0; i < n; i++)
    if (parents[i] < -1 || parents[i] >= (int32_t)i)
      return heed_err_set(e, HEED_E_INVALID,
                          "parent of node %u is %d: it must be -1 (the root) or a node before it (0..%d)", i,
                          parents[i], (int)i - 1);
  return HEED_OK;
}

static heed_status check_q(heed_spec *s, const heed_draft_q *q, const int32_t *tok, unsigned n) {
  if (!q || q->kind == HEED_DRAFT_ONEHOT) return HEED_OK;
  switch (q->kind) {
    case HEED_DRAFT_DENSE_LOGITS:
    case HEED_DRAFT_DENSE_PROBS:
      if (!q->dense) return fail(s, HEED_E_INVALID, "a dense draft q has dense NULL");
      return HEED_OK;
    case HEED_DRAFT_SPARSE:
      if (!q->ids || !q->probs) return fail(s, HEED_E_INVALID, "a sparse draft q has ids or probs NULL");
      if (q->n_sparse < 1 || q->n_sparse > s->cfg.max_sparse)
        return fail(s, HEED_E_RANGE, "sparse draft q with %u entries per row: this verifier takes 1..%u (max_sparse)",
                    q->n_sparse, s->cfg.max_sparse);
      for (unsigned i = 0; i < n; i++) {
        const int32_t *id = q->ids + (size_t)i * q->n_sparse;
        const float *pr = q->probs + (size_t)i * q->n_sparse;
        int listed = 0;
        for (unsigned j = 0; j < q->n_sparse; j++) {
          if (id[j] == -1) continue;
          if (id[j] < -1 || (uint32_t)id[j] >= s->cfg.vocab)
            return fail(s, HEED_E_RANGE, "sparse q row %u entry %u has id %d, outside the vocab 0..%u (-1: unused)", i, j,
                        id[j], s->cfg.vocab - 1);
          if (!(pr[j] >= 0) || isinf(pr[j]))
            return fail(s, HEED_E_INVALID, "sparse q row %u entry %u (token %d) has probability %g", i, j, id[j], pr[j]);
          if (id[j] == tok[i] && pr[j] > 0) listed = 1;
        }
        if (!listed)
          return fail(s, HEED_E_INVALID, "draft token %d of node %u is not among its sparse q's entries with q > 0",
                      tok[i], i);
      }
      return HEED_OK;
    default: return fail(s, HEED_E_INVALID, "draft q kind %d is not a heed_draft_kind", (int)q->kind);
  }
}

/* ---- penalties ---- */

static int cmp_u32(const void *a, const void *b) {
  uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
  return (x > y) - (x < y);
}

static unsigned sort_unique(uint32_t *v, unsigned n) {
  if (n < 2) return n;
  qsort(v, n, sizeof *v, cmp_u32);
  unsigned k = 1;
  for (unsigned i = 1; i < n; i++)
    if (v[i] != v[k - 1]) v[k++] = v[i];
  return k;
}

static inline float penalised(float x, float r) { return x > 0 ? x / r : x * r; }

/* First j with pos[j] >= a. */
static unsigned pen_lower(const penrow *p, size_t a) {
  unsigned lo = 0, hi = p->n;
  while (lo < hi) {
    unsigned mid = (lo + hi) / 2;
    if (p->pos[mid] < a) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

/* The row's value of token t (penalised when t is in the list). */
static float row_value(const rowstat *r, uint32_t t) {
  unsigned j = pen_lower(&r->pen, t);
  return j < r->pen.n && r->pen.pos[j] == t ? r->pen.val[j] : r->x[t];
}

/* ---- the passes over a range [a, b) of a row, penalised tokens apart ---- */

/* Walks [a, b) in index order as plain runs [sa, sb) (PIECE_RUN) and
 * penalised tokens sa with value v (PIECE_ONE). */
enum { PIECE_END, PIECE_RUN, PIECE_ONE };
typedef struct pieces { const penrow *p; unsigned j; size_t at, b; } pieces;

static pieces pieces_of(const penrow *p, size_t a, size_t b) {
  pieces it = {p, pen_lower(p, a), a, b};
  return it;
}

static int next_piece(pieces *it, size_t *sa, size_t *sb, float *v) {
  if (it->at >= it->b) return PIECE_END;
  if (it->j < it->p->n && it->p->pos[it->j] < it->b) {
    size_t t = it->p->pos[it->j];
    if (t > it->at) {
      *sa = it->at, *sb = t, it->at = t;
      return PIECE_RUN;
    }
    *sa = t, *v = it->p->val[it->j++], it->at = t + 1;
    return PIECE_ONE;
  }
  *sa = it->at, *sb = it->b, it->at = it->b;
  return PIECE_RUN;
}

/* Max of [a, b), and its first index when want_arg (greedy: sampling has no use for it). */
static part part_max(const heed_spec *s, const rowstat *r, size_t a, size_t b, int want_arg) {
  part p = {-INFINITY, (uint32_t)a, 0, 0};
  int bad = 0, k;
  size_t sa, sb = 0;
  float v = 0;
  for (pieces it = pieces_of(&r->pen, a, b); (k = next_piece(&it, &sa, &sb, &v));) {
    if (k == PIECE_RUN) {
      size_t arg = 0;
      float m = s->vmax(r->x + sa, sb - sa, want_arg ? &arg : NULL, &bad);
      if (m > p.m) p.m = m, p.arg = (uint32_t)(sa + arg);
    } else {
      bad |= isnan(v) || v == INFINITY;
      if (v > p.m) p.m = v, p.arg = (uint32_t)sa;
    }
  }
  p.bad = bad;
  return p;
}

/* Sum over [a, b) of exp((v - m) is) for v >= thr, by kernel f (exact or bound). */
static float range_sumexp(heed_vocab_sumexp_fn f, const rowstat *r, float m, float thr, float is, size_t a, size_t b) {
  float z = 0, v = 0;
  size_t sa, sb = 0;
  int k;
  for (pieces it = pieces_of(&r->pen, a, b); (k = next_piece(&it, &sa, &sb, &v));) {
    if (k == PIECE_RUN) z += f(r->x + sa, sb - sa, m, is, thr);
    else if (v >= thr) z += expf((v - m) * is);
  }
  return z;
}

static float range_weights(const heed_spec *s, const rowstat *r, float is, float scale, size_t a, size_t b, float *w) {
  float z = 0, v = 0;
  size_t sa, sb = 0;
  int k;
  for (pieces it = pieces_of(&r->pen, a, b); (k = next_piece(&it, &sa, &sb, &v));) {
    if (k == PIECE_RUN) z += s->vweights(r->x + sa, sb - sa, r->m, is, r->thr, scale, w + sa);
    else z += (w[sa] = v >= r->thr ? expf((v - r->m) * is) * scale : 0.0f);
  }
  return z;
}

/* Indices of [a, b) with value >= thr into idx; returns how many. */
static size_t range_collect(const heed_spec *s, const rowstat *r, float thr, size_t a, size_t b, uint32_t *idx) {
  size_t c = 0, sa, sb = 0;
  float v = 0;
  int k;
  for (pieces it = pieces_of(&r->pen, a, b); (k = next_piece(&it, &sa, &sb, &v));) {
    if (k == PIECE_RUN) {
      size_t got = s->vcollect(r->x + sa, sb - sa, thr, idx + c);
      for (size_t i = 0; i < got; i++) idx[c + i] += (uint32_t)sa;
      c += got;
    } else if (v >= thr) {
      idx[c++] = (uint32_t)sa;
    }
  }
  return c;
}

/* ---- phases A and C on the pool ---- */

/* [a, end) of the chunk of `len` elements that starts at a. */
static inline size_t chunk_end(const heed_spec *s, size_t a, size_t len) {
  return a + len < s->cfg.vocab ? a + len : s->cfg.vocab;
}

typedef struct job {
  heed_spec *s;
  rowstat **rows;
  unsigned n_rows;
  float is;
  int want_arg; /* greedy: phase A's argmax */
  float *w, *csum; /* materialise: where the weights and chunk sums go */
  int mass;        /* histogram: sum the mass too */
  unsigned slot;   /* refine: the row's slot, and */
  const uint32_t *chunks; /* the chunks whose sums are made exact */
  int want_bmax;   /* the fused pass keeps each block's max (s->bmax) */
  const heed_sampling *smp; /* cuts: the sampling, and per row */
  int *done;                /* whether its cut was found from candidates */
  heed_status *st;          /* and how that went */
} job;

static void task_max(void *ctx, size_t begin, size_t end, int worker) {
  (void)worker;
  job *J = ctx;
  heed_spec *s = J->s;
  for (size_t i = begin; i < end; i++) {
    size_t a = (i % s->n_pchunk) * PCHUNK;
    s->parts[i] = part_max(s, J->rows[i / s->n_pchunk], a, chunk_end(s, a, PCHUNK), J->want_arg);
  }
}

static void sumexp_with(void *ctx, size_t begin, size_t end, heed_vocab_sumexp_fn f) {
  job *J = ctx;
  heed_spec *s = J->s;
  for (size_t i = begin; i < end; i++) {
    size_t a = (i % s->n_pchunk) * PCHUNK;
    const rowstat *r = J->rows[i / s->n_pchunk];
    s->parts[i].z = range_sumexp(f, r, r->m, r->thr, J->is, a, chunk_end(s, a, PCHUNK));
  }
}

/* Phase C, bounded (the cheap exp); refine makes chunks exact. */
static void task_sumexp(void *ctx, size_t begin, size_t end, int worker) {
  (void)worker;
  sumexp_with(ctx, begin, end, ((job *)ctx)->s->vsumexp_bound);
}

/* A and C in one pass when nothing is cut: each chunk's max, then its
 * bounded sum of exp relative to that max while the chunk is still in cache
 * (merged with the row's max afterwards). */
static void task_maxsum(void *ctx, size_t begin, size_t end, int worker) {
  (void)worker;
  job *J = ctx;
  heed_spec *s = J->s;
  for (size_t i = begin; i < end; i++) {
    size_t a = (i % s->n_pchunk) * PCHUNK, b = chunk_end(s, a, PCHUNK);
    const rowstat *r = J->rows[i / s->n_pchunk];
    /* one read: runs by the kernel's own online max and bounded sum, a
     * penalised value by expf; each piece joins at the larger max, in double
     * so that however many pieces there are, the joins add no rounding the
     * bracket has to cover */
    part p = {-INFINITY, (uint32_t)a, 0, 0};
    double z = 0;
    size_t sa, sb = 0;
    float v = 0, *bm = s->bmax + (size_t)slot_of(s, r) * s->n_blk + a / HEED_VOCAB_BLOCK;
    int k, whole = 0;
    for (pieces it = pieces_of(&r->pen, a, b); (k = next_piece(&it, &sa, &sb, &v));) {
      whole = k == PIECE_RUN && sa == a && sb == b;
      float m, zp = 1.0f;
      if (k == PIECE_RUN) /* the block maxima from the kernel when the run is the whole chunk */
        m = s->vmaxsum(r->x + sa, sb - sa, J->is, &zp, &p.bad, J->want_bmax && sa == a && sb == b ? bm : NULL);
      else {
        p.bad |= isnan(v) || v == INFINITY;
        m = v;
      }
      if (m == -INFINITY || p.bad) continue;
      if (m > p.m) {
        z = (p.m == -INFINITY ? 0.0 : z * exp((double)(p.m - m) * J->is)) + zp;
        p.m = m;
      } else
        z += zp * exp((double)(m - p.m) * J->is);
    }
    p.z = p.bad ? 0.0f : (float)z;
    s->parts[i] = p;
    if (J->want_bmax && !whole) /* penalised tokens split the chunk: its blocks' maxima again, from cache */
      for (size_t ba = a; ba < b; ba += HEED_VOCAB_BLOCK)
        bm[(ba - a) / HEED_VOCAB_BLOCK] = part_max(s, r, ba, ba + HEED_VOCAB_BLOCK < b ? ba + HEED_VOCAB_BLOCK : b, 0).m;
  }
}

static heed_status run_pool(heed_spec *s, size_t n, heed_pool_task task, job *J) {
  if ((size_t)J->n_rows * s->cfg.vocab <= 65536) { /* less than waking the workers costs */
    task(J, 0, n, 0);
    return HEED_OK;
  }
  /* runs of a few chunks: each worker streams a longer stretch of the row */
  const size_t grain = n / (2 * (size_t)s->n_workers) > 1 ? n / (2 * (size_t)s->n_workers) : 1;
  heed_status st = heed_pool_parallel_for(s->pool, n, HEED_SCHEDULE_DYNAMIC, grain, task, J);
  if (st == HEED_E_BUSY) return fail(s, st, "the runtime's pool is running another call");
  if (st) return fail(s, st, "the pool failed: %s", heed_pool_last_error(s->pool));
  return HEED_OK;
}

/* ---- phase B: the cut threshold of one row ---- */

static int cmp_desc(const void *a, const void *b) {
  float x = *(const float *)a, y = *(const float *)b;
  return (x < y) - (x > y);
}

/* Min-heap of floats. */
static void heap_down(float *h, unsigned n, unsigned i) {
  for (;;) {
    unsigned l = 2 * i + 1, m = i;
    if (l < n && h[l] < h[m]) m = l;
    if (l + 1 < n && h[l + 1] < h[m]) m = l + 1;
    if (m == i) return;
    float t = h[i];
    h[i] = h[m], h[m] = t, i = m;
  }
}


static inline int bucket_of(float x, float m, float is) {
  float d = (m - x) * is * (HB / HR);
  return d < HB - 1 ? (int)d : HB - 1;
}

/* The lower edge of bucket k, a little below it (everything in k is >= it). */
static inline float bucket_floor(int k, float m, float is) {
  return k == HB - 1 ? -INFINITY : m - ((float)k + 1.01f) * (HR / HB) / is;
}

/* The row's values >= lo into s->vals (any order); how many in *n. */
static heed_status collect_vals(heed_spec *s, const rowstat *r, float lo, size_t *n) {
  if (s->dev) {
    heed_status st = s->dev->collect(s->dev_ctx, s->dev_h, slot_of(s, r), lo, s->vals, s->cfg.vocab, n, &s->err);
    if (st) return st;
    if (*n > s->cfg.vocab) return fail(s, HEED_E_INTERNAL, "the device collected %zu values of %u", *n, s->cfg.vocab);
    return HEED_OK;
  }
  size_t c = range_collect(s, r, lo, 0, s->cfg.vocab, s->idx);
  for (size_t i = 0; i < c; i++) s->vals[i] = row_value(r, s->idx[i]);
  *n = c;
  return HEED_OK;
}

/* One chunk of a row into the worker's own histogram (job: rows[0] the row,
 * mass); the weights go to the chunk's part of s->w. A worker clears its
 * copies the first time it runs in a call (hist_call), in parallel, and only
 * the workers that ran are merged. */
static void task_hist(void *ctx, size_t begin, size_t end, int worker) {
  job *J = ctx;
  heed_spec *s = J->s;
  const rowstat *r = J->rows[0];
  const int mass = J->mass;
  uint32_t *hc = s->hcnt + (size_t)worker * 4 * HB;
  double *hm = s->hmass + (size_t)worker * 4 * HB;
  if (s->hist_seen[worker] != s->hist_call) {
    memset(hc, 0, sizeof(uint32_t) * 4 * HB);
    memset(hm, 0, sizeof(double) * 4 * HB);
    s->hist_seen[worker] = s->hist_call;
  }
  float *w = s->w;
  for (size_t c = begin; c < end; c++) {
    size_t a = c * PCHUNK, b = chunk_end(s, a, PCHUNK);
    if (mass) range_weights(s, r, J->is, 1.0f, a, b, w);
    /* the buckets first (a loop the compiler vectorises), then the counts
     * and masses: a loop of loads and adds alone */
    uint32_t *kk = s->idx;
    if (r->pen.n)
      for (size_t i = a; i < b; i++) kk[i] = (uint32_t)bucket_of(row_value(r, (uint32_t)i), r->m, J->is);
    else
      for (size_t i = a; i < b; i++) kk[i] = (uint32_t)bucket_of(r->x[i], r->m, J->is);
    if (!mass)
      for (size_t i = a; i < b; i++) hc[kk[i]]++;
    else { /* four interleaved copies: a bucket that repeats within a few
            * values does not wait on its own store */
      size_t i = a;
      for (; i + 4 <= b; i += 4)
        for (int l = 0; l < 4; l++) {
          const float x = w[i + l];
          const uint32_t k = kk[i + l] + (uint32_t)l * HB;
          hc[k] += x != 0; /* -inf, or below exp's range: never inside a mass cut */
          hm[k] += x;
        }
      for (; i < b; i++) hc[kk[i]] += w[i] != 0, hm[kk[i]] += w[i];
    }
  }
}

/* Histogram of the row by distance below its max into s->hcnt (and, with
 * mass, s->hmass): every value counted, or (mass) those with a positive
 * exp((x - m) is), their mass summed. */
static heed_status histogram(heed_spec *s, const rowstat *r, float is, int mass) {
  if (s->dev)
    return s->dev->hist(s->dev_ctx, s->dev_h, slot_of(s, r), r->m, is, HB / HR, HB, mass, s->hcnt,
                        mass ? s->hmass : NULL, &s->err);
  rowstat *rr = (rowstat *)r;
  job J = {.s = s, .rows = &rr, .n_rows = 1, .is = is, .mass = mass};
  if (++s->hist_call == 0) { /* wrapped: no worker may look current */
    memset(s->hist_seen, 0, sizeof(unsigned) * s->n_workers);
    s->hist_call = 1;
  }
  s->hist_seen[0] = 0; /* worker 0's copies are the result: always cleared */
  heed_status st = run_pool(s, s->n_pchunk, task_hist, &J);
  if (st) return st;
  if (s->hist_seen[0] != s->hist_call) { /* worker 0 ran nothing */
    memset(s->hcnt, 0, sizeof(uint32_t) * 4 * HB);
    memset(s->hmass, 0, sizeof(double) * 4 * HB);
  }
  for (int t = 1; t < 4 * s->n_workers; t++) {
    if (t % 4 == 0 && s->hist_seen[t / 4] != s->hist_call) { /* a worker that did not run */
      t += 3;
      continue;
    }
    for (int k = 0; k < HB; k++) s->hcnt[k] += s->hcnt[(size_t)t * HB + k], s->hmass[k] += s->hmass[(size_t)t * HB + k];
  }
  return HEED_OK;
}

/* The k largest values of the row (with repeats) sorted descending at the
 * start of s->vals; *n_sorted is how many sorted values there are (>= k),
 * and *all_ties says whether they include every value tied with the k-th. */
static heed_status top_k_values(heed_spec *s, const rowstat *r, unsigned k, float is, size_t *n_sorted,
                                int *all_ties) {
  float *h = s->vals;
  if (s->dev) { /* the bucket the k-th value is in, then everything from there up */
    heed_status st = histogram(s, r, is, 0);
    if (st) return st;
    uint64_t cum = 0;
    int kb = 0;
    while (kb < HB - 1 && cum + s->hcnt[kb] < k) cum += s->hcnt[kb++];
    size_t n;
    if ((st = collect_vals(s, r, bucket_floor(kb, r->m, is), &n))) return st;
    if (n < k) return fail(s, HEED_E_INTERNAL, "the device collected %zu values where top_k %u needs more", n, k);
    qsort(h, n, sizeof *h, cmp_desc);
    *n_sorted = n, *all_ties = 1; /* everything above a bucket edge below the k-th */
    return HEED_OK;
  }
  unsigned n = 0;
  float thr = -INFINITY;
  for (size_t a = 0; a < s->cfg.vocab; a += SCHUNK) {
    size_t b = chunk_end(s, a, SCHUNK);
    size_t c = range_collect(s, r, thr, a, b, s->idx);
    for (size_t i = 0; i < c; i++) {
      float v = row_value(r, s->idx[i]);
      if (n < k) {
        h[n++] = v;
        if (n == k)
          for (unsigned j = k / 2 + 1; j-- > 0;) heap_down(h, k, j);
      } else if (v > h[0]) {
        h[0] = v;
        heap_down(h, k, 0);
      }
    }
    if (n == k) thr = h[0];
  }
  qsort(h, n, sizeof *h, cmp_desc);
  *n_sorted = n, *all_ties = 0;
  return HEED_OK;
}

/* Of sorted descending values v[0..n) (plus `before` mass above them), the
 * value at which the cumulative mass first reaches target. */
static float mass_cut(const float *v, size_t n, float m, float is, double before, double target) {
  double cum = before;
  for (size_t i = 0; i < n; i++) {
    cum += expf((v[i] - m) * is);
    if (cum >= target) return v[i];
  }
  return n ? v[n - 1] : -INFINITY;
}

/* Top-p over the whole row: a histogram of mass by distance below the max,
 * then the one bucket the cut falls in, sorted. */
static heed_status top_p_cut(heed_spec *s, const rowstat *r, float is, float top_p, float *thr) {
  heed_status st = histogram(s, r, is, 1);
  if (st) return st;
  double total = 0;
  for (int k = 0; k < HB; k++) total += s->hmass[k];
  double target = top_p * total, cum = 0;
  int kb = -1, last = 0;
  for (int k = 0; k < HB; k++) {
    if (!s->hcnt[k]) continue;
    last = k;
    if (cum + s->hmass[k] >= target) {
      kb = k;
      break;
    }
    cum += s->hmass[k];
  }
  if (kb < 0) kb = last, cum -= s->hmass[last]; /* rounding kept the sum under target: the last bucket */
  /* The boundary bucket's values: everything a little below its lower edge
   * up, then exactly those that fall in it. */
  size_t c, n = 0;
  if ((st = collect_vals(s, r, bucket_floor(kb, r->m, is), &c))) return st;
  for (size_t i = 0; i < c; i++) {
    float x = s->vals[i];
    if (bucket_of(x, r->m, is) == kb && expf((x - r->m) * is) > 0) s->vals[n++] = x;
  }
  qsort(s->vals, n, sizeof(float), cmp_desc);
  *thr = mass_cut(s->vals, n, r->m, is, cum, target);
  return HEED_OK;
}

/* ---- cuts from a few candidates (the CPU): each chunk's top k, or its
 * values above a bound the cut cannot be below; merged, the kept tokens
 * are few, and their sum of exp is exact without another pass ---- */

static void set_z(heed_spec *s, rowstat *r);
static heed_status refine(heed_spec *s, float is, unsigned slot, unsigned k, unsigned *done);
static heed_status refine_in(heed_spec *s, float is, unsigned slot, unsigned k, unsigned *done, uint32_t *pick);

static int cmp_kept_desc(const void *a, const void *b) {
  const float x = ((const struct kept *)a)->v, y = ((const struct kept *)b)->v;
  if (x != y) return x > y ? -1 : 1;
  const uint32_t p = ((const struct kept *)a)->t, q = ((const struct kept *)b)->t;
  return (p > q) - (p < q);
}

/* Kept tokens by value descending, then token: insertion for the few of
 * a top-k (qsort's calls cost more there), qsort past that. */
static void sort_kept(struct kept *k, size_t n) {
  if (n > 64) {
    qsort(k, n, sizeof *k, cmp_kept_desc);
    return;
  }
  for (size_t i = 1; i < n; i++) {
    const struct kept x = k[i];
    size_t j = i;
    for (; j > 0 && cmp_kept_desc(&x, &k[j - 1]) < 0; j--) k[j] = k[j - 1];
    k[j] = x;
  }
}

/* The k-th largest of v[0..n) (1 <= k <= n; no NaN), reordering v:
 * quickselect, the median of three as pivot. */
static float kth_largest(float *v, size_t n, size_t k) {
  size_t lo = 0, hi = n - 1, want = k - 1; /* v[want] once v is partly sorted descending */
  while (lo < hi) {
    const size_t mid = lo + (hi - lo) / 2;
    float a = v[lo], b = v[mid], c = v[hi];
    const float p = a > b ? (b > c ? b : a > c ? c : a) : (a > c ? a : b > c ? c : b);
    size_t i = lo, j = hi;
    while (i <= j) { /* descending: > p left, < p right */
      while (v[i] > p) i++;
      while (v[j] < p) j--;
      if (i <= j) {
        float t = v[i];
        v[i] = v[j], v[j] = t, i++;
        if (j == 0) break;
        j--;
      }
    }
    if (want <= j && j != (size_t)-1) hi = j;
    else if (want >= i) lo = i;
    else return v[want];
  }
  return v[want];
}

/* The tokens >= t of the blocks whose max is >= t into cb->keep (every
 * token >= t is in one); 0 when there are more than KEEP_MAX. */
static int gather(const heed_spec *s, const rowstat *r, float t, struct cutbuf *cb, size_t *n) {
  const float *bm = s->bmax + (size_t)slot_of(s, r) * s->n_blk;
  uint32_t *got = cb->got;
  *n = 0;
  for (unsigned b = 0; b < s->n_blk; b++) {
    if (!(bm[b] >= t)) continue;
    const size_t a = (size_t)b * HEED_VOCAB_BLOCK, m = range_collect(s, r, t, a, chunk_end(s, a, HEED_VOCAB_BLOCK), got);
    if (*n + m > KEEP_MAX) return 0;
    for (size_t i = 0; i < m; i++) cb->keep[*n].v = row_value(r, got[i]), cb->keep[(*n)++].t = got[i];
  }
  return 1;
}

/* Row r's cut from candidates, when the kept tokens are at most KEEP_MAX:
 * sets r->thr, and the chunk sums and z exactly from the kept tokens.
 * *done 0: nothing set (too many candidates, or a cut this does not do);
 * the caller cuts by the histogram and sums by phase C. */
static heed_status cut_from_candidates(heed_spec *s, rowstat *r, const heed_sampling *smp, float is, struct cutbuf *cb,
                                       int *done) {
  *done = 0;
  const unsigned V = s->cfg.vocab, slot = slot_of(s, r);
  const int topk = smp->top_k && smp->top_k < V, topp = smp->top_p < 1;
  if (s->dev || (!topk && !topp) || (topk && smp->top_k > TOPK_FAST)) return HEED_OK;
  const float pmin = smp->min_p > 0 ? r->m + logf(smp->min_p) / is : -INFINITY;
  float cand;
  if (topk) {
    /* The k-th largest block max: k blocks hold a token >= it, so the k-th
     * largest token is >= it too. */
    const unsigned k = smp->top_k;
    if (k > s->n_blk) return HEED_OK;
    float *h = cb->h;
    memcpy(h, s->bmax + (size_t)slot * s->n_blk, sizeof(float) * s->n_blk);
    cand = kth_largest(h, s->n_blk, k);
  } else {
    /* Top-p keeps x >= t for some t, the largest with mass(x >= t) >=
     * p Z; mass(x < t) < V exp((t - m) / T), so t_c with V exp((t_c - m)
     * / T) <= (1 - p) Z_lo has mass(x >= t_c) >= p Z: the cut is >= t_c. */
    cand = r->m + logf((1.0f - smp->top_p) * r->zlo / (float)V) / is;
    if (!(cand > pmin)) cand = pmin;
    cand = nextafterf(cand, -INFINITY); /* the rounding of the line above */
  }
  size_t n = 0;
  if (!gather(s, r, cand, cb, &n)) return HEED_OK; /* too many: the histogram's turn */
  heed_status st = HEED_OK;
  float thr = -INFINITY;
  if (topk) {
    /* the k-th largest candidate (every value >= it is a candidate) */
    const unsigned k = smp->top_k;
    if (n < k) return fail(s, HEED_E_INTERNAL, "top-k %u: only %zu tokens above the %u-th block max", k, n, k);
    float *h = cb->h;
    for (size_t i = 0; i < n; i++) h[i] = cb->keep[i].v;
    thr = kth_largest(h, n, k);
    size_t m = 0; /* the kept: ties with the k-th too */
    for (size_t i = 0; i < n; i++)
      if (cb->keep[i].v >= thr) cb->keep[m++] = cb->keep[i];
    n = m;
    sort_kept(cb->keep, n);
    if (topp) { /* top-p over the top k: its mass is all here */
      double z = 0;
      for (size_t i = 0; i < n; i++) z += expf((cb->keep[i].v - r->m) * is);
      double cum = 0;
      for (size_t i = 0; i < n; i++) {
        cum += expf((cb->keep[i].v - r->m) * is);
        if (cum >= smp->top_p * z) {
          thr = cb->keep[i].v > thr ? cb->keep[i].v : thr;
          break;
        }
      }
    }
  } else {
    sort_kept(cb->keep, n);
    /* The first prefix whose mass reaches p Z, Z the whole row's: within
     * its interval, made exact (the widest chunks first) where it leaves
     * more than one prefix possible. With min-p above t_c the candidates
     * may all fall short of p Z: the cut is below them, min-p's then. */
    double all = 0;
    for (size_t i = 0; i < n; i++) all += expf((cb->keep[i].v - r->m) * is);
    for (unsigned k = 1; all >= smp->top_p * (double)r->zlo || r->zexact; k *= 2) {
      const double lo = smp->top_p * (double)r->zlo, hi = smp->top_p * (double)r->zhi;
      double cum = 0;
      size_t maybe = n, sure = n;
      for (size_t i = 0; i < n; i++) {
        cum += expf((cb->keep[i].v - r->m) * is);
        if (maybe == n && cum >= lo) maybe = i;
        if (cum >= hi) {
          sure = i;
          break;
        }
      }
      unsigned more = 0;
      if (maybe == sure && sure < n) {
        thr = cb->keep[sure].v;
        break;
      }
      if ((st = refine_in(s, is, slot, k, &more, cb->pick))) return st;
      if (!more) break; /* exact, and the candidates' mass is under p Z: the cut is below them */
    }
  }
  if (pmin > thr) thr = pmin;
  if (thr > r->m) thr = r->m; /* the max is always kept */
  /* Below the candidates (their mass short of p Z, min-p not binding: by
   * rounding only) the kept tokens are not all here: the histogram's turn. */
  if (!topk && thr < cand) return HEED_OK;
  r->thr = thr;
  /* the chunk sums and z, exactly, from the kept tokens */
  float *cz = s->cz + (size_t)slot * s->n_pchunk;
  uint8_t *cx = s->cx + (size_t)slot * s->n_pchunk;
  for (unsigned c = 0; c < s->n_pchunk; c++) cz[c] = 0, cx[c] = 1;
  for (size_t i = 0; i < n && cb->keep[i].v >= thr; i++) cz[cb->keep[i].t / PCHUNK] += expf((cb->keep[i].v - r->m) * is);
  set_z(s, r);
  *done = 1;
  return HEED_OK;
}

/* Rows [begin, end) of a job: each one's cut from candidates, in the
 * worker's own work space. */
static void task_cut(void *ctx, size_t begin, size_t end, int worker) {
  job *J = ctx;
  for (size_t i = begin; i < end; i++)
    J->st[i] = cut_from_candidates(J->s, J->rows[i], J->smp, J->is, &J->s->cb[worker], &J->done[i]);
}

static heed_status cut_row(heed_spec *s, rowstat *r, const heed_sampling *smp, float is) {
  float thr = -INFINITY;
  heed_status st;
  if (smp->top_k && smp->top_k < s->cfg.vocab) {
    size_t n_sorted = 0;
    int all_ties = 0;
    if ((st = top_k_values(s, r, smp->top_k, is, &n_sorted, &all_ties))) return st;
    thr = s->vals[smp->top_k - 1];
    if (smp->top_p < 1) {
      /* Ties with the k-th value are kept: count them in. */
      size_t n_ge = smp->top_k;
      if (all_ties)
        while (n_ge < n_sorted && s->vals[n_ge] >= thr) n_ge++;
      else
        n_ge = range_collect(s, r, thr, 0, s->cfg.vocab, s->idx);
      double z = 0;
      for (unsigned i = 0; i < smp->top_k; i++) z += expf((s->vals[i] - r->m) * is);
      z += (double)(n_ge - smp->top_k) * expf((thr - r->m) * is);
      float cut = mass_cut(s->vals, smp->top_k, r->m, is, 0, smp->top_p * z);
      if (cut > thr) thr = cut;
    }
  } else if (smp->top_p < 1) {
    if ((st = top_p_cut(s, r, is, smp->top_p, &thr))) return st;
  }
  if (smp->min_p > 0) {
    float t = r->m + logf(smp->min_p) / is;
    if (t > thr) thr = t;
  }
  if (thr > r->m) thr = r->m; /* the max is always kept */
  r->thr = thr;
  return HEED_OK;
}

/* ---- rows: set up, then the three phases ---- */

/* Penalty list of target row `row` (tokens: the base list plus the path's). */
static void build_pen(heed_spec *s, unsigned row, const uint32_t *base, unsigned n_base, const int32_t *path,
                      unsigned n_path, penrow *out) {
  uint32_t *pos = s->pen_pos + (size_t)row * s->pen_cap;
  uint32_t extra[HEED_SPEC_MAX_DRAFT + 1];
  for (unsigned i = 0; i < n_path; i++) extra[i] = (uint32_t)path[i];
  unsigned ne = sort_unique(extra, n_path), i = 0, j = 0, n = 0;
  while (i < n_base || j < ne) {
    uint32_t v = j >= ne || (i < n_base && base[i] <= extra[j]) ? base[i] : extra[j];
    if (i < n_base && base[i] == v) i++;
    if (j < ne && extra[j] == v) j++;
    pos[n++] = v;
  }
  out->pos = pos, out->n = n;
}

static void attach_row(heed_spec *s, unsigned slot, const float *x, const penrow *pen, float r) {
  rowstat *rs = &s->rs[slot];
  rs->x = x, rs->ready = 0;
  rs->pen.pos = pen->pos, rs->pen.n = pen->n;
  rs->pen.val = s->pen_val + (size_t)slot * s->pen_cap;
  for (unsigned j = 0; j < pen->n; j++) rs->pen.val[j] = penalised(x[pen->pos[j]], r);
}

/* Phase A into s->parts: on the device (after loading the rows), or on the pool. */
static heed_status phase_max(heed_spec *s, const unsigned *slots, unsigned n, job *J) {
  if (!s->dev) return run_pool(s, (size_t)n * s->n_pchunk, task_max, J);
  const float *x[2 * (HEED_SPEC_MAX_DRAFT + 1)];
  const uint32_t *pp[2 * (HEED_SPEC_MAX_DRAFT + 1)];
  const float *pv[2 * (HEED_SPEC_MAX_DRAFT + 1)];
  unsigned pn[2 * (HEED_SPEC_MAX_DRAFT + 1)];
  for (unsigned i = 0; i < n; i++) {
    const rowstat *r = &s->rs[slots[i]];
    x[i] = r->x, pp[i] = r->pen.pos, pv[i] = r->pen.val, pn[i] = r->pen.n;
  }
  heed_vocab_load ld = {n, slots, x, pp, pv, pn};
  heed_status st = s->dev->load(s->dev_ctx, s->dev_h, &ld, &s->err);
  if (!st) st = s->dev->max(s->dev_ctx, s->dev_h, slots, n, PCHUNK, s->parts, &s->err);
  return st;
}

/* Phase C: z of every chunk into s->parts. */
static heed_status phase_sumexp(heed_spec *s, const unsigned *slots, unsigned n, job *J) {
  if (!s->dev) return run_pool(s, (size_t)n * s->n_pchunk, task_sumexp, J);
  float m[2 * (HEED_SPEC_MAX_DRAFT + 1)], thr[2 * (HEED_SPEC_MAX_DRAFT + 1)];
  for (unsigned i = 0; i < n; i++) m[i] = J->rows[i]->m, thr[i] = J->rows[i]->thr;
  return s->dev->sumexp(s->dev_ctx, s->dev_h, slots, m, thr, n, J->is, PCHUNK, s->parts, &s->err);
}

/* Row r's z and its interval from its chunk sums: an exact chunk counts as
 * itself, a bounded one within the interval of heed/kernels.h (the n 2^-126
 * term is below float resolution: z >= 1, the max's own term). Summed in
 * double and widened by an ulp, so the float interval holds the sum. */
static void set_z(heed_spec *s, rowstat *r) {
  const float *cz = s->cz + (size_t)slot_of(s, r) * s->n_pchunk;
  const uint8_t *cx = s->cx + (size_t)slot_of(s, r) * s->n_pchunk;
  double z = 0, lo = 0, hi = 0;
  int exact = 1;
  for (unsigned c = 0; c < s->n_pchunk; c++) {
    z += cz[c];
    if (cx[c]) lo += cz[c], hi += cz[c];
    else lo += cz[c] / (double)HEED_VOCAB_BOUND_HI, hi += cz[c] * (double)HEED_VOCAB_BOUND_LO_INV, exact = 0;
  }
  r->z = (float)z, r->zexact = exact;
  r->zlo = exact ? r->z : nextafterf((float)lo, 0.0f);
  r->zhi = exact ? r->z : nextafterf((float)hi, INFINITY);
}

/* Slot's chunk sums from s->parts (row `row` of the last pass), relative to
 * the row's max m: rescaled when a chunk's sum is against its own max. */
static void keep_chunks(heed_spec *s, unsigned slot, unsigned row, float is, int rescale, int exact) {
  const rowstat *r = &s->rs[slot];
  float *cz = s->cz + (size_t)slot * s->n_pchunk;
  uint8_t *cx = s->cx + (size_t)slot * s->n_pchunk;
  for (unsigned c = 0; c < s->n_pchunk; c++) {
    const part *p = &s->parts[(size_t)row * s->n_pchunk + c];
    cz[c] = !rescale ? p->z : p->m > -INFINITY ? p->z * expf((p->m - r->m) * is) : 0.0f;
    cx[c] = exact || cz[c] == 0; /* an empty chunk's 0 is exact */
  }
}

static int has_cuts(const heed_spec *s, const heed_sampling *smp) {
  return (smp->top_k && smp->top_k < s->cfg.vocab) || smp->top_p < 1 || smp->min_p > 0;
}

/* Phases A-C over rows rs[slots...]. Greedy stops after A; sampling with
 * no cut runs A and C as one pass on the CPU. */
static heed_status stats(heed_spec *s, const heed_sampling *smp, const unsigned *slots, unsigned n, const char *what) {
  rowstat *rows[2 * (HEED_SPEC_MAX_DRAFT + 1)];
  for (unsigned i = 0; i < n; i++) rows[i] = &s->rs[slots[i]];
  float is = smp->temperature > 0 ? 1.0f / smp->temperature : 1.0f;
  job J = {.s = s, .rows = rows, .n_rows = n, .is = is, .want_arg = smp->temperature == 0};
  /* one read for max and bounded sums: sampling with no cut, or top-p by
   * candidates (its bound needs the row's z) */
  const int cuts = has_cuts(s, smp), topk = smp->top_k && smp->top_k < s->cfg.vocab;
  const int fused = !s->dev && smp->temperature > 0 && (!cuts || smp->top_p < 1 || (topk && smp->top_k <= TOPK_FAST));
  J.want_bmax = fused && cuts; /* where the cut's candidates can be */
  heed_status st = fused ? run_pool(s, (size_t)n * s->n_pchunk, task_maxsum, &J) : phase_max(s, slots, n, &J);
  if (st) return st;
  for (unsigned i = 0; i < n; i++) {
    rowstat *r = rows[i];
    r->m = -INFINITY, r->arg = 0, r->bad = 0, r->thr = -INFINITY, r->z = 0;
    for (unsigned c = 0; c < s->n_pchunk; c++) {
      const part *p = &s->parts[(size_t)i * s->n_pchunk + c];
      r->bad |= p->bad;
      if (p->m > r->m) r->m = p->m, r->arg = p->arg;
    }
    if (r->bad)
      for (uint32_t t = 0; t < s->cfg.vocab; t++) {
        float v = row_value(r, t);
        if (isnan(v) || v == INFINITY)
          return fail(s, HEED_E_INVALID, "%s row %u has %g at token %u (NaN and +inf are refused)", what,
                      slots[i] % s->max_rows, v, t);
      }
    if (r->m == -INFINITY)
      return fail(s, HEED_E_INVALID, "%s row %u is -inf everywhere: nothing can be sampled", what,
                  slots[i] % s->max_rows);
    if (fused) {
      keep_chunks(s, slots[i], i, is, 1, 0);
      set_z(s, r);
    }
    r->ready = (fused && !cuts) || smp->temperature == 0;
  }
  if (smp->temperature == 0 || (fused && !cuts)) return HEED_OK;
  /* The cuts: from a few candidates, exactly, where they allow; else by
   * the histogram, then phase C over the rows that still need it. */
  unsigned left[2 * (HEED_SPEC_MAX_DRAFT + 1)], nl = 0;
  int dn[2 * (HEED_SPEC_MAX_DRAFT + 1)] = {0};
  heed_status cst[2 * (HEED_SPEC_MAX_DRAFT + 1)] = {0};
  J.smp = smp, J.done = dn, J.st = cst;
  /* Rows read all at once are cut side by side (each cut's refine then
   * runs inline: one row is under run_pool's threshold); the histogram's
   * rows after, one at a time. */
  if (!s->dev && n > 1 && s->cfg.vocab < LAZY_VOCAB) {
    if ((st = run_pool(s, n, task_cut, &J))) return st;
  } else {
    task_cut(&J, 0, n, 0);
  }
  for (unsigned i = 0; i < n; i++) {
    const int done = dn[i];
    if (cst[i]) return cst[i];
    if (!done && (st = cut_row(s, rows[i], smp, is))) return st;
    if (smp->top_p < 1 || topk) s->n_cut_cand += done != 0, s->n_cut_hist += !done;
    if (done) rows[i]->ready = 1;
    else rows[nl] = rows[i], left[nl++] = slots[i];
  }
  if (!nl) return HEED_OK;
  J.n_rows = nl;
  if ((st = phase_sumexp(s, left, nl, &J))) return st;
  for (unsigned i = 0; i < nl; i++) {
    keep_chunks(s, left[i], i, is, 0, s->dev != NULL); /* the device's sums are exact */
    set_z(s, rows[i]);
    rows[i]->ready = 1;
  }
  return HEED_OK;
}

static void task_chunk_exact(void *ctx, size_t begin, size_t end, int worker) {
  (void)worker;
  job *J = ctx;
  heed_spec *s = J->s;
  const rowstat *r = J->rows[0];
  for (size_t i = begin; i < end; i++) {
    size_t c = J->chunks[i], a = c * PCHUNK;
    s->cz[(size_t)J->slot * s->n_pchunk + c] = range_sumexp(s->vsumexp, r, r->m, r->thr, J->is, a, chunk_end(s, a, PCHUNK));
    s->cx[(size_t)J->slot * s->n_pchunk + c] = 1;
  }
}

/* Makes the sums of up to k more chunks of a ready row exact (phase C
 * again, exactly, on those chunks): the bounded chunks with the largest
 * sums, whose intervals are the widest. Returns how many it made exact. */
static heed_status refine(heed_spec *s, float is, unsigned slot, unsigned k, unsigned *done) {
  return refine_in(s, is, slot, k, done, s->cb[0].pick); /* the caller's thread: worker 0's */
}

/* refine with its own chunk list (a cut running beside others). */
static heed_status refine_in(heed_spec *s, float is, unsigned slot, unsigned k, unsigned *done, uint32_t *pick) {
  rowstat *r = &s->rs[slot];
  const float *cz = s->cz + (size_t)slot * s->n_pchunk;
  const uint8_t *cx = s->cx + (size_t)slot * s->n_pchunk;
  unsigned n = 0;
  for (unsigned c = 0; c < s->n_pchunk; c++)
    if (!cx[c]) pick[n++] = c;
  if (k < n) /* the k largest first: a partial selection sort (n_pchunk is small) */
    for (unsigned i = 0; i < k; i++) {
      unsigned best = i;
      for (unsigned j = i + 1; j < n; j++)
        if (cz[pick[j]] > cz[pick[best]]) best = j;
      uint32_t t = pick[i];
      pick[i] = pick[best], pick[best] = t;
    }
  else
    k = n;
  if (done) *done = k;
  if (!k) return HEED_OK;
  job J = {.s = s, .rows = &r, .n_rows = 1, .is = is, .slot = slot, .chunks = pick};
  heed_status st = k == 1 ? (task_chunk_exact(&J, 0, 1, 0), HEED_OK) : run_pool(s, k, task_chunk_exact, &J);
  if (st) return st;
  set_z(s, r);
  return HEED_OK;
}

/* The exact z of a row whose statistics are ready. */
static heed_status need_exact(heed_spec *s, float is, unsigned slot) {
  if (s->rs[slot].zexact) return HEED_OK;
  return refine(s, is, slot, s->n_pchunk, NULL);
}

/* p(t) of row r is in [*lo, *hi]; both equal p(t) once r's z is exact. */
static void p_bounds(const rowstat *r, float is, uint32_t t, float *lo, float *hi) {
  float v = row_value(r, t), e = v >= r->thr ? expf((v - r->m) * is) : 0.0f;
  *lo = e / r->zhi, *hi = e / r->zlo;
}


/* ---- the materialised distribution w and its chunk sums ---- */

static float csum_total(const heed_spec *s) {
  float t = 0;
  for (unsigned c = 0; c < s->n_schunk; c++) t += s->csum[c];
  return t;
}

static void task_materialise(void *ctx, size_t begin, size_t end, int worker) {
  (void)worker;
  job *J = ctx;
  const rowstat *r = J->rows[0];
  for (size_t c = begin; c < end; c++) {
    size_t a = c * SCHUNK, b = chunk_end(J->s, a, SCHUNK);
    float z = range_weights(J->s, r, J->is, 1.0f / r->z, a, b, J->w);
    if (J->csum) J->csum[c] = z;
  }
}

/* w = row r's weights (scaled by 1 / z), csum (if given) its chunk sums, on the pool. */
static heed_status materialise(heed_spec *s, const rowstat *r, float is, float *w, float *csum) {
  rowstat *rr = (rowstat *)r;
  job J = {.s = s, .rows = &rr, .n_rows = 1, .is = is, .w = w, .csum = csum};
  return run_pool(s, s->n_schunk, task_materialise, &J);
}

static void rechunk(heed_spec *s, uint32_t t) {
  unsigned c = t / SCHUNK;
  size_t a = (size_t)c * SCHUNK, b = chunk_end(s, a, SCHUNK);
  s->csum[c] = s->vresid(s->w + a, NULL, b - a, 1.0f, 0.0f);
}

/* q of node c for token t, in [*lo, *hi] (equal but for dense logits whose
 * z is not exact yet); 0 if c's q gives it none. */
static void q_bounds(heed_spec *s, const heed_draft_q *q, unsigned node, const int32_t *tok, float is, float qsum,
                     int32_t t, float *lo, float *hi) {
  if (q && q->kind == HEED_DRAFT_DENSE_LOGITS) {
    p_bounds(&s->rs[s->max_rows + node], is, (uint32_t)t, lo, hi);
    return;
  }
  float pr = 0;
  if (!q || q->kind == HEED_DRAFT_ONEHOT) {
    pr = t == tok[node] ? 1.0f : 0.0f;
  } else if (q->kind == HEED_DRAFT_DENSE_PROBS) {
    pr = q->dense[(size_t)node * s->cfg.vocab + (size_t)t] / qsum;
  } else {
    for (unsigned j = 0; j < q->n_sparse; j++)
      if (q->ids[(size_t)node * q->n_sparse + j] == t) pr += q->probs[(size_t)node * q->n_sparse + j];
    pr /= qsum;
  }
  *lo = *hi = pr;
}

/* Sum of node's q (dense probs: checked; sparse: its listed mass); 1 otherwise. */
static heed_status q_sum(heed_spec *s, const heed_draft_q *q, unsigned node, float *sum) {
  *sum = 1.0f;
  if (!q) return HEED_OK;
  if (q->kind == HEED_DRAFT_DENSE_PROBS) {
    const float *row = q->dense + (size_t)node * s->cfg.vocab;
    double t = 0;
    for (uint32_t i = 0; i < s->cfg.vocab; i++) {
      if (!(row[i] >= 0) || isinf(row[i]))
        return fail(s, HEED_E_INVALID, "draft q row %u has probability %g at token %u", node, row[i], i);
      t += row[i];
    }
    if (fabs(t - 1.0) > 1e-3)
      return fail(s, HEED_E_INVALID, "draft q row %u sums to %.6g, not 1 (within 1e-3)", node, t);
    *sum = (float)t;
  } else if (q->kind == HEED_DRAFT_SPARSE) {
    float t = 0;
    for (unsigned j = 0; j < q->n_sparse; j++)
      if (q->ids[(size_t)node * q->n_sparse + j] >= 0) t += q->probs[(size_t)node * q->n_sparse + j];
    *sum = t;
  }
  return HEED_OK;
}

/* w = normalise(max(0, w / R - q_node)), csum updated. */
static void subtract_q(heed_spec *s, const heed_draft_q *q, unsigned node, const int32_t *tok, float is, float qsum,
                       float R) {
  if (!q || q->kind == HEED_DRAFT_ONEHOT || q->kind == HEED_DRAFT_SPARSE) {
    if (R != 1.0f)
      for (unsigned c = 0; c < s->n_schunk; c++) {
        size_t a = (size_t)c * SCHUNK, b = chunk_end(s, a, SCHUNK);
        s->csum[c] = s->vresid(s->w + a, NULL, b - a, 1.0f / R, 0.0f);
      }
    if (!q || q->kind == HEED_DRAFT_ONEHOT) {
      s->w[tok[node]] = 0; /* max(0, w - 1) */
      rechunk(s, (uint32_t)tok[node]);
    } else {
      for (unsigned j = 0; j < q->n_sparse; j++) {
        int32_t id = q->ids[(size_t)node * q->n_sparse + j];
        if (id < 0) continue;
        float v = s->w[id] - q->probs[(size_t)node * q->n_sparse + j] / qsum;
        s->w[id] = v > 0 ? v : 0.0f;
        rechunk(s, (uint32_t)id);
      }
    }
    return;
  }
  for (unsigned c = 0; c < s->n_schunk; c++) {
    size_t a = (size_t)c * SCHUNK, b = chunk_end(s, a, SCHUNK);
    const float *qv;
    float qs;
    if (q->kind == HEED_DRAFT_DENSE_LOGITS) {
      const rowstat *qr = &s->rs[s->max_rows + node];
      range_weights(s, qr, is, 1.0f / qr->z, a, b, s->qw);
      qv = s->qw + a, qs = 1.0f;
    } else {
      qv = q->dense + (size_t)node * s->cfg.vocab + a, qs = 1.0f / qsum;
    }
    s->csum[c] = s->vresid(s->w + a, qv, b - a, 1.0f / R, qs);
  }
}

/* The first token of w[a, b) with weight whose running sum (from cum)
 * exceeds target; the last with weight if rounding keeps it under. */
static int32_t walk(const float *w, size_t a, size_t b, float cum, float target) {
  int32_t pick = -1;
  for (size_t i = a; i < b; i++) {
    if (w[i] <= 0) continue;
    pick = (int32_t)i;
    cum += w[i];
    if (cum > target) break;
  }
  return pick;
}

/* Inverse CDF over the materialised w: the chunk, then the token inside it. */
static int32_t draw_from_w(heed_spec *s, float u) {
  float total = csum_total(s), target = u * total, cum = 0;
  unsigned c = 0, last = 0;
  for (; c < s->n_schunk; c++) {
    if (s->csum[c] > 0) last = c;
    if (cum + s->csum[c] > target && s->csum[c] > 0) break;
    cum += s->csum[c];
  }
  if (c == s->n_schunk) c = last, cum -= s->csum[last]; /* rounding ran past the end */
  size_t a = (size_t)c * SCHUNK;
  return walk(s->w, a, chunk_end(s, a, SCHUNK), cum, target);
}

/* Inverse CDF over sums z[0..n) known within intervals (ex[i]: z[i] is
 * exact; else the true sum is in [z / HI - tiny, z LI]): the first j with
 * (1 - u) C(<=j) > u C(>j), C the sums up to and after j (which is C(<=j) >
 * u Z, without Z). *sure: the first j for which it holds at every point of
 * the intervals; *maybe: the first for which it holds at some; the draw is
 * settled when they agree. *last: the last j with mass. n when none. */
static void icdf_bounds(const float *z, const uint8_t *ex, unsigned n, double u, double HI, double LI, double tiny,
                        unsigned *maybe, unsigned *sure, unsigned *last) {
  double alo = 0, ahi = 0, blo = 0, bhi = 0; /* C(>j): all, then less each one passed */
  for (unsigned c = 0; c < n; c++) {
    const double lo = ex[c] ? z[c] : z[c] / HI - tiny;
    blo += lo > 0 ? lo : 0, bhi += ex[c] ? z[c] : z[c] * LI;
  }
  *maybe = *sure = *last = n;
  for (unsigned c = 0; c < n; c++) {
    const double l0 = ex[c] ? z[c] : z[c] / HI - tiny, lo = l0 > 0 ? l0 : 0, hi = ex[c] ? z[c] : z[c] * LI;
    alo += lo, ahi += hi, blo -= lo, bhi -= hi;
    if (z[c] > 0) *last = c;
    if (*maybe == n && (1 - u) * ahi - u * (blo > 0 ? blo : 0) > 0) *maybe = c;
    if ((1 - u) * alo - u * (bhi > 0 ? bhi : 0) > 0) {
      *sure = c;
      return;
    }
  }
}

/* A token from row `slot`'s own distribution in three draws
 * (spec_internal.h): its chunk by u over the chunk sums, its block (256
 * tokens) by u2 over the chunk's block sums, its token by u3 over the
 * block's weights. Bounded sums settle the first two wherever their
 * intervals leave one choice; else the widest are made exact (1, 2, 4, ...
 * at a time) until one is left, so the choice is the one the exact sums
 * give, on every backend, without reading the whole row again, and with
 * exact exps for a block or two of the chunk instead of all of it. */
/* Makes up to k more of the sums exact; *done: how many it did. */
typedef heed_status (*exact_fn)(void *ctx, unsigned k, unsigned *done);

/* The inverse CDF by u over sums z[0..n) (icdf_bounds), settled: while the
 * intervals leave more than one choice, more sums are made exact (1, 2, 4,
 * ... at a time), so the choice is the one the exact sums give. trust: the
 * bounded sums taken as exact (a fault). *pick: n when nothing has mass. */
static heed_status settle(const float *z, const uint8_t *ex, unsigned n, double u, int trust, double tiny, exact_fn f,
                          void *ctx, unsigned *pick) {
  const double HI = trust ? 1.0 : HEED_VOCAB_BOUND_HI, LI = trust ? 1.0 : HEED_VOCAB_BOUND_LO_INV;
  for (unsigned k = 1;; k *= 2) {
    unsigned maybe, sure, last, done = 0;
    icdf_bounds(z, ex, n, u, HI, LI, trust ? 0.0 : tiny, &maybe, &sure, &last);
    if (sure < n && (maybe == sure || trust)) {
      *pick = sure;
      return HEED_OK;
    }
    heed_status st = f(ctx, k, &done);
    if (st) return st;
    if (!done) { /* all exact: rounding ran past the end (u near 1) */
      *pick = sure < n ? sure : last;
      return HEED_OK;
    }
  }
}

/* The chunks of a row: refine. */
typedef struct chunk_sums { heed_spec *s; float is; unsigned slot; } chunk_sums;
static heed_status chunks_exact(void *ctx, unsigned k, unsigned *done) {
  chunk_sums *c = ctx;
  return refine(c->s, c->is, c->slot, k, done);
}

/* The blocks of a chunk [a, ...): the k largest bounded sums, exactly. */
typedef struct block_sums {
  const heed_spec *s;
  const rowstat *r;
  float is;
  size_t a;
  unsigned n;
  float z[PCHUNK / HEED_SPEC_BLOCK];
  uint8_t ex[PCHUNK / HEED_SPEC_BLOCK];
} block_sums;
static heed_status blocks_exact(void *ctx, unsigned k, unsigned *done) {
  block_sums *B = ctx;
  *done = 0;
  for (; *done < k; ++*done) {
    unsigned w = B->n;
    for (unsigned c = 0; c < B->n; c++)
      if (!B->ex[c] && (w == B->n || B->z[c] > B->z[w])) w = c;
    if (w == B->n) break;
    const size_t ba = B->a + (size_t)w * HEED_SPEC_BLOCK;
    B->z[w] = range_sumexp(B->s->vsumexp, B->r, B->r->m, B->r->thr, B->is, ba, chunk_end(B->s, ba, HEED_SPEC_BLOCK));
    B->ex[w] = 1;
  }
  return HEED_OK;
}

static heed_status draw_from_row(heed_spec *s, unsigned slot, float is, float u, float u2, float u3, int32_t *tok) {
  const unsigned n = s->n_pchunk;
  if (s->fault == HEED_SPEC_FAULT_SAME_U) u2 = u; /* the bugs the tests must catch: this and the two trusts */
  unsigned j;
  chunk_sums C = {s, is, slot};
  heed_status st = settle(s->cz + (size_t)slot * n, s->cx + (size_t)slot * n, n, u, s->fault == HEED_SPEC_FAULT_BOUNDED_DRAW,
                          0.0, chunks_exact, &C, &j);
  if (st) return st;
  if (j >= n) return fail(s, HEED_E_INTERNAL, "row %u has no mass to sample from", slot);
  /* The block, from bounded sums of the chunk's blocks (the cheap exp). */
  const rowstat *r = &s->rs[slot];
  const size_t a = (size_t)j * PCHUNK, b = chunk_end(s, a, PCHUNK);
  block_sums B = {.s = s, .r = r, .is = is, .a = a};
  for (size_t ba = a; ba < b; ba += HEED_SPEC_BLOCK, B.n++) {
    B.z[B.n] = range_sumexp(s->vsumexp_bound, r, r->m, r->thr, is, ba, chunk_end(s, ba, HEED_SPEC_BLOCK));
    B.ex[B.n] = B.z[B.n] == 0; /* nothing kept (an empty block's 0 is exact) */
  }
  unsigned kb;
  if ((st = settle(B.z, B.ex, B.n, u2, s->fault == HEED_SPEC_FAULT_BOUNDED_BLOCK, HEED_SPEC_BLOCK * 0x1p-126,
                   blocks_exact, &B, &kb)))
    return st;
  if (kb >= B.n) return fail(s, HEED_E_INTERNAL, "row %u has no mass in chunk %u", slot, j);
  /* The token: the block's weights, walked by u3. */
  const size_t ka = a + (size_t)kb * HEED_SPEC_BLOCK, kz = chunk_end(s, ka, HEED_SPEC_BLOCK);
  const float cb = range_weights(s, r, is, 1.0f, ka, kz, s->w);
  *tok = walk(s->w, ka, kz, 0.0f, u3 * cb);
  if (*tok < 0) return fail(s, HEED_E_INTERNAL, "row %u has no weight in block %u of chunk %u", slot, kb, j);
  return HEED_OK;
}

/* ---- verification ---- */

static heed_status enter(heed_spec *s) {
  int expect = 0;
  /* A refused call leaves s->err alone: the call that runs owns it (and may be writing it now). */
  if (!atomic_compare_exchange_strong(&s->busy, &expect, 1)) return HEED_E_BUSY;
  heed_err_clear(&s->err);
  return HEED_OK;
}

static heed_status leave(heed_spec *s, heed_status st) {
  atomic_store(&s->busy, 0);
  return st;
}

/* Penalty base list, shared by every row of the call. */
static unsigned penalty_base(heed_spec *s, const heed_sampling *smp) {
  if (smp->repetition_penalty == 1.0f || !smp->n_penalty_tokens) return 0;
  for (unsigned i = 0; i < smp->n_penalty_tokens; i++) s->pen_base[i] = (uint32_t)smp->penalty_tokens[i];
  return sort_unique(s->pen_base, smp->n_penalty_tokens);
}

/* The rows a call may need, each with its penalty list, and their statistics:
 * target row r = 0..n (the root, then node r - 1), then the dense-logit q rows. */
static heed_status prepare(heed_spec *s, const heed_sampling *smp, const float *target, const int32_t *tok,
                           const int32_t *parents, unsigned n, const heed_draft_q *q) {
  const unsigned V = s->cfg.vocab;
  const int greedy = smp->temperature == 0;
  const int penal = smp->repetition_penalty != 1.0f;
  unsigned n_base = penalty_base(s, smp);
  s->chain_rows = parents ? 0 : n + 1; /* rows attached below, this call's */
  /* Rows: target row r = 0..n (root, then node r-1); q rows for dense logits. */
  unsigned slots[2 * (HEED_SPEC_MAX_DRAFT + 1)], ns = 0;
  int32_t path[HEED_SPEC_MAX_DRAFT + 1] = {0};
  for (unsigned r = 0; r <= n; r++) {
    unsigned np = 0;
    if (penal)
      for (int u = (int)r - 1; u >= 0; u = parents ? parents[u] : u - 1) path[np++] = tok[u];
    penrow pen = {NULL, NULL, 0};
    if (penal) build_pen(s, r, s->pen_base, n_base, path, np, &pen);
    attach_row(s, r, target + (size_t)r * V, &pen, smp->repetition_penalty);
    slots[ns++] = r;
  }
  const int dense_logits = !greedy && q && q->kind == HEED_DRAFT_DENSE_LOGITS;
  if (dense_logits)
    for (unsigned c = 0; c < n; c++) {
      int par = parents ? parents[c] : (int)c - 1;
      const rowstat *pr = &s->rs[par + 1];
      attach_row(s, s->max_rows + c, q->dense + (size_t)c * V, &pr->pen, smp->repetition_penalty);
      slots[ns++] = s->max_rows + c;
    }
  /* The CPU reads a long row when the walk reaches it (need); rows too short
   * to share out on their own, and the device's, are all done at once. */
  if (!s->dev && V >= LAZY_VOCAB) return HEED_OK;
  heed_status st = stats(s, smp, slots, n + 1, "target");
  if (!st && dense_logits) st = stats(s, smp, slots + n + 1, n, "draft q");
  return st;
}

/* The statistics of row `slot`, computed on first use. */
static heed_status need(heed_spec *s, const heed_sampling *smp, unsigned slot) {
  if (s->rs[slot].ready) return HEED_OK;
  /* A chain's next target row with it, when one row is too short to give
   * every worker two chunks: one pool job instead of two (the row is read
   * in vain only when this one rejects). */
  unsigned two[2] = {slot, slot + 1};
  const int pair = s->chain_rows && slot + 1 < s->chain_rows && !s->rs[slot + 1].ready &&
                   (s->pairs < 0 ? s->n_pchunk < 2u * (unsigned)s->n_workers : s->pairs);
  return stats(s, smp, two, pair ? 2 : 1, slot < s->max_rows ? "target" : "draft q");
}

/* Walks the tree from the root (n = 0: plain sampling of row 0). */
static heed_status verify(heed_spec *s, const heed_sampling *smp, uint64_t seed, uint64_t step, const float *target,
                          const int32_t *tok, const int32_t *parents, unsigned n, const heed_draft_q *q,
                          heed_spec_result *res) {
  const int greedy = smp->temperature == 0;
  const float is = greedy ? 1.0f : 1.0f / smp->temperature;
  heed_status st = prepare(s, smp, target, tok, parents, n, q);
  if (st) return st;
  res->n_accepted = 0;

  int cur = -1; /* the node whose children are tried; -1 the root */
  for (;;) {
    if ((st = need(s, smp, (unsigned)(cur + 1)))) return st;
    const rowstat *pr = &s->rs[cur + 1];
    int moved = 0, materialised = 0;
    float R = 1.0f;
    for (unsigned c = 0; c < n && !moved; c++) {
      int par = parents ? parents[c] : (int)c - 1;
      if (par != cur) continue;
      if (greedy) {
        if ((uint32_t)tok[c] == pr->arg) moved = 1, cur = (int)c;
        continue;
      }
      float qsum;
      if ((st = q_sum(s, q, c, &qsum))) return st;
      const int qlogits = q && q->kind == HEED_DRAFT_DENSE_LOGITS;
      const unsigned qslot = s->max_rows + c;
      if (qlogits && (st = need(s, smp, qslot))) return st;
      /* Accept when u q(x) < p(x). p and q are known within the bounds of
       * their sums; only a u that falls between the bounds needs the exact
       * sums (about one test in twenty). */
      float qlo, qhi, plo, phi;
      q_bounds(s, q, c, tok, is, qsum, tok[c], &qlo, &qhi);
      if (!(qhi > 0))
        return fail(s, HEED_E_INVALID, "draft token %d of node %u has probability 0 under its q", tok[c], c);
      if (materialised) plo = phi = s->w[tok[c]] / R;
      else p_bounds(pr, is, (uint32_t)tok[c], &plo, &phi);
      float u = heed_spec_uniform(seed, step, c);
      if (s->fault == HEED_SPEC_FAULT_IGNORE_Q) qlo = qhi = 1.0f;
      int accept = u * qhi < plo;
      /* Undecided: make the widest chunk sums exact, 1, 2, 4, ... at a time,
       * until the intervals settle it (one chunk, when a few tokens hold most
       * of the mass); once both sums are exact, plo == phi and qlo == qhi. */
      for (unsigned k = 1; !accept && u * qlo < phi; k *= 2) {
        unsigned dp = 0, dq = 0;
        if ((!materialised && (st = refine(s, is, (unsigned)(cur + 1), k, &dp))) || (qlogits && (st = refine(s, is, qslot, k, &dq))))
          return st;
        if (!dp && !dq) break; /* exact already: bounds equal, the test below is the last word */
        if (!materialised) p_bounds(pr, is, (uint32_t)tok[c], &plo, &phi);
        if (qlogits && s->fault != HEED_SPEC_FAULT_IGNORE_Q) q_bounds(s, q, c, tok, is, qsum, tok[c], &qlo, &qhi);
        accept = u * qhi < plo;
      }
      if (accept) {
        moved = 1, cur = (int)c;
        break;
      }
      if (qlogits && (st = need_exact(s, is, qslot))) return st; /* the residual subtracts q itself */
      if (!materialised) {
        if ((st = materialise(s, pr, is, s->w, s->csum))) return st;
        materialised = 1, R = csum_total(s);
      }
      if (s->fault != HEED_SPEC_FAULT_NO_RESIDUAL) subtract_q(s, q, c, tok, is, qsum, R);
      R = csum_total(s);
      if (!(R > 0)) { /* p <= q everywhere: p == q up to rounding; start again from p */
        if ((st = materialise(s, pr, is, s->w, s->csum))) return st;
        R = csum_total(s);
      }
    }
    if (moved) {
      res->path[res->n_accepted++] = cur;
      continue;
    }
    if (greedy) {
      res->next_token = (int32_t)pr->arg;
    } else {
      float u = heed_spec_uniform(seed, step, DRAW_SAMPLE + (uint32_t)(cur + 1));
      if (materialised) res->next_token = draw_from_w(s, u);
      else if ((st = draw_from_row(s, (unsigned)(cur + 1), is, u, heed_spec_uniform(seed, step, DRAW_WITHIN + (uint32_t)(cur + 1)),
                                   heed_spec_uniform(seed, step, DRAW_TOKEN + (uint32_t)(cur + 1)), &res->next_token)))
        return st;
      if (res->next_token < 0) return fail(s, HEED_E_INTERNAL, "row %d has no mass to sample from", cur + 1);
    }
    return HEED_OK;
  }
}

heed_status heed_spec_verify_tree(heed_spec *s, const heed_sampling *smp, uint64_t seed, uint64_t step,
                                  const float *target, const int32_t *tokens, const int32_t *parents, unsigned n,
                                  const heed_draft_q *q, heed_spec_result *res) {
  if (!s) return HEED_E_INVALID;
  heed_status st = enter(s);
  if (st) return st;
  if (!target || !res) return leave(s, fail(s, HEED_E_INVALID, "target and res must not be NULL"));
  if (n < 1 || n > s->cfg.max_draft)
    return leave(s, fail(s, HEED_E_RANGE, "%u draft tokens: this verifier takes 1..%u (max_draft)", n, s->cfg.max_draft));
  if ((st = check_sampling(s, smp)) || (st = check_tokens(s, tokens, n, "draft"))) return leave(s, st);
  heed_sampling eff;
  smp = effective(smp, &eff);
  if (parents && (st = check_parents(&s->err, parents, n))) return leave(s, st);
  if (smp->temperature > 0 && (st = check_q(s, q, tokens, n))) return leave(s, st);
  memset(res, 0, sizeof *res);
  return leave(s, verify(s, smp, seed, step, target, tokens, parents, n, q, res));
}

heed_status heed_spec_verify_chain(heed_spec *s, const heed_sampling *smp, uint64_t seed, uint64_t step,
                                   const float *target, const int32_t *draft, unsigned k, const heed_draft_q *q,
                                   heed_spec_result *res) {
  return heed_spec_verify_tree(s, smp, seed, step, target, draft, NULL, k, q, res);
}

heed_status heed_spec_sample(heed_spec *s, const heed_sampling *smp, uint64_t seed, uint64_t step,
                             const float *logits, int32_t *token) {
  if (!s) return HEED_E_INVALID;
  heed_status st = enter(s);
  if (st) return st;
  if (!logits || !token) return leave(s, fail(s, HEED_E_INVALID, "logits and token must not be NULL"));
  heed_spec_result res;
  heed_sampling eff;
  if ((st = check_sampling(s, smp)) || (st = verify(s, effective(smp, &eff), seed, step, logits, NULL, NULL, 0, NULL, &res)))
    return leave(s, st);
  *token = res.next_token;
  return leave(s, HEED_OK);
}

heed_status heed_spec_probs(heed_spec *s, const heed_sampling *smp, const float *logits, float *probs) {
  if (!s) return HEED_E_INVALID;
  heed_status st = enter(s);
  if (st) return st;
  if (!logits || !probs) return leave(s, fail(s, HEED_E_INVALID, "logits and probs must not be NULL"));
  heed_sampling eff;
  if ((st = check_sampling(s, smp))) return leave(s, st);
  smp = effective(smp, &eff);
  if ((st = prepare(s, smp, logits, NULL, NULL, 0, NULL)) || (st = need(s, smp, 0)) ||
      (smp->temperature > 0 && (st = need_exact(s, 1.0f / smp->temperature, 0))))
    return leave(s, st);
  const rowstat *r = &s->rs[0];
  if (smp->temperature == 0) {
    memset(probs, 0, sizeof(float) * s->cfg.vocab);
    probs[r->arg] = 1.0f;
  } else {
    st = materialise(s, r, 1.0f / smp->temperature, probs, NULL);
  }
  return leave(s, st);
}

heed_status heed_spec_tree_mask(const int32_t *parents, unsigned n, uint8_t *mask, heed_error *err) {
  if (!mask) return heed_err_set(err, HEED_E_INVALID, "heed_spec_tree_mask: mask is NULL");
  if (n < 1 || n > HEED_SPEC_MAX_DRAFT)
    return heed_err_set(err, HEED_E_RANGE, "heed_spec_tree_mask: %u nodes, outside 1..%d", n, HEED_SPEC_MAX_DRAFT);
  heed_status st = check_parents(err, parents, n);
  if (st) return st;
  const unsigned w = n + 1;
  memset(mask, 0, (size_t)w * w);
  mask[0] = 1;
  for (unsigned i = 0; i < n; i++) {
    uint8_t *row = mask + (size_t)(i + 1) * w;
    row[0] = 1;
    for (int u = (int)i; u >= 0; u = parents[u]) row[u + 1] = 1;
  }
  return HEED_OK;
}

void heed_spec_cut_counts(const heed_spec *s, unsigned *from_candidates, unsigned *by_histogram) {
  if (from_candidates) *from_candidates = s ? s->n_cut_cand : 0;
  if (by_histogram) *by_histogram = s ? s->n_cut_hist : 0;
}

void heed_spec_set_pairs(heed_spec *s, int mode) {
  if (s) s->pairs = mode < 0 ? -1 : mode != 0;
}

void heed_spec_set_fault(heed_spec *s, int fault) {
  if (s) s->fault = fault;
}
