/* fuzz/fuzz_attn.h - one prefill or decode call chosen by the input, on a
 * cache that fuzz_kv_ops or fuzz_attention has filled, with the checks that
 * go with it:
 *   - the call succeeds exactly when its arguments are valid by
 *     heed/attention.h (shapes, params, block tables, n_q, workspace, overlap);
 *   - a refused call writes nothing to out or lse;
 *   - with finite queries on a clean cache, every output is a convex
 *     combination of V (|out| <= max |V|), and, where the scores are moderate
 *     and the call small, out and lse match a double-precision reference.
 * Queries hold NaN/Inf often: they must be refused (HEED_E_INVALID). */
#ifndef HEED_FUZZ_ATTN_H
#define HEED_FUZZ_ATTN_H

#include "fuzz/fuzz_common.h"

#define FA_MAX_GROUP 8       /* query heads per KV head */
#define FA_MAX_Q_HEADS 16
#define FA_MAX_PREFILL_Q 40
#define FA_MAX_DECODE_SEQS 4
#define FA_REF_WORK 2000000.0 /* multiply-adds the reference may spend on one call */
#define FA_SENTINEL 0xA5

typedef struct fa_cache {
  heed_runtime *rt;
  heed_kv_cache *c;
  heed_kv_cache_config g; /* in force */
  int quant;
  int clean; /* every stored value finite, and sequence reads are what attention reads */
} fa_cache;

/* Which tokens a call reads, and what the caller can know about them. */
typedef struct fa_view {
  heed_attn_seq s;
  uint32_t *table; /* a caller table (owned), or NULL */
  int ok;          /* resolves (the call may still be refused for another reason) */
  unsigned len;    /* its tokens, when ok */
  int ref_seq;     /* a sequence whose first len tokens are these (-1: unknown) */
} fa_view;

static inline unsigned fa_n_full(const fa_cache *x, unsigned len) {
  return x->quant ? len / x->g.block_len : (len + x->g.block_len - 1) / x->g.block_len;
}

static inline int fa_pick_alive(fz_in *in, const fa_cache *x) {
  int alive[64], n = 0;
  for (unsigned s = 0; s < x->g.max_seqs && n < 64; s++)
    if (heed_kv_seq_len(x->c, (int)s) >= 0) alive[n++] = (int)s;
  uint8_t k = fz_u8(in);
  return n ? alive[k % n] : -1;
}

static inline void fa_view_pick(fz_in *in, const fa_cache *x, fa_view *v) {
  memset(v, 0, sizeof *v);
  v->ref_seq = -1;
  const unsigned bl = x->g.block_len;
  uint8_t kind = fz_u8(in) % 10;
  int s = fa_pick_alive(in, x);
  if (s < 0 && kind < 8) kind = 8;
  if (kind < 5) { /* a sequence of the cache */
    v->s.seq = s;
    v->ok = 1;
    v->len = (unsigned)heed_kv_seq_len(x->c, s);
    v->ref_seq = s;
    return;
  }
  if (kind == 8) { /* an id that is not alive */
    static const int ids[] = {0, 1, 2, 7, 64, 65536, 0x7fffffff};
    int id = FZ_PICK(in, ids);
    if (fz_bool(in)) id = (int)x->g.max_seqs + (id & 3);
    v->s.seq = id;
    v->ok = heed_kv_seq_len(x->c, id) >= 0;
    v->len = v->ok ? (unsigned)heed_kv_seq_len(x->c, id) : 0;
    v->ref_seq = v->ok ? id : -1;
    return;
  }
  static const int negs[] = {-1, -1, -2, -1000, (int)0x80000000};
  v->s.seq = FZ_PICK(in, negs);
  unsigned n_tokens, nb;
  if (kind < 8) { /* a prefix of a sequence's own table */
    const uint32_t *b;
    unsigned n;
    FZ_CHECK(heed_kv_seq_blocks(x->c, s, &b, &n) == HEED_OK, "seq_blocks of alive %d", s);
    unsigned len = (unsigned)heed_kv_seq_len(x->c, s);
    n_tokens = x->quant ? fz_range(in, 0, n) * bl : fz_range(in, 0, len);
    nb = (n_tokens + bl - 1) / bl;
    v->table = malloc(sizeof(uint32_t) * (nb ? nb : 1));
    memcpy(v->table, b, sizeof(uint32_t) * nb);
    v->ok = 1;
    v->ref_seq = s;
  } else { /* random entries, some out of range */
    n_tokens = fz_range(in, 0, 6 * bl);
    if (fz_u8(in) >= 248) n_tokens = x->g.max_seq_len + fz_range(in, 1, 3);
    if (n_tokens > 16 * bl) n_tokens = 16 * bl; /* the table is allocated in full: keep it short */
    nb = (n_tokens + bl - 1) / bl;
    v->table = malloc(sizeof(uint32_t) * (nb ? nb : 1));
    for (unsigned i = 0; i < nb; i++) v->table[i] = fz_u8(in) % x->g.n_blocks;
    v->ok = n_tokens <= x->g.max_seq_len && (!x->quant || n_tokens % bl == 0);
  }
  if (nb && fz_u8(in) >= 232) { /* one entry out of range */
    static const uint32_t bad[] = {0, 1, 1000};
    unsigned at = fz_u8(in) % nb;
    v->table[at] = fz_bool(in) ? 0xffffffffu : x->g.n_blocks + FZ_PICK(in, bad);
    v->ok = 0;
  }
  v->s.blocks = v->table;
  v->s.n_tokens = n_tokens;
  v->len = n_tokens;
  if (fz_u8(in) >= 248) { /* no table at all */
    v->s.blocks = NULL;
    v->ok = 0;
  }
}

static inline void fa_view_free(fa_view *v) {
  free(v->table);
  v->table = NULL;
}

/* Params: mostly valid for the cache; *valid says whether they are. */
/* A call's queries (filled from the input), and out and lse (lse only
 * sometimes) holding the sentinel, for `rows` query rows. */
static inline void fa_io(fz_in *in, size_t rows, const heed_attn_params *p, float **q, size_t *qn, float **out, size_t *on,
                         float **lse, size_t *ln) {
  const size_t Hq = p->n_q_heads ? p->n_q_heads : 1;
  *qn = rows * Hq * p->dk, *on = rows * Hq * p->dv, *ln = rows * Hq;
  *q = malloc(sizeof(float) * (*qn ? *qn : 1));
  *out = malloc(sizeof(float) * (*on ? *on : 1));
  *lse = fz_bool(in) ? malloc(sizeof(float) * (*ln ? *ln : 1)) : NULL;
  fz_fill f = fz_fill_read(in, 1);
  fz_fill_apply(&f, *q, *qn);
  memset(*out, FA_SENTINEL, sizeof(float) * (*on ? *on : 1));
  if (*lse) memset(*lse, FA_SENTINEL, sizeof(float) * (*ln ? *ln : 1));
}

/* Queries attention takes: finite, and finite times the scale (attention.h). */
static inline int fa_q_ok(const float *q, size_t n, float scale) {
  for (size_t i = 0; i < n; i++)
    if (!isfinite(q[i] * scale)) return 0;
  return 1;
}

/* A refused call wrote nothing: out and lse still hold the sentinel. */
static inline void fa_untouched(const char *what, heed_status st, const float *out, size_t on, const float *lse, size_t ln) {
  for (size_t i = 0; i < sizeof(float) * on; i++)
    FZ_CHECK(((const uint8_t *)out)[i] == FA_SENTINEL, "refused %s (%d) wrote out byte %zu", what, st, i);
  for (size_t i = 0; lse && i < sizeof(float) * ln; i++)
    FZ_CHECK(((const uint8_t *)lse)[i] == FA_SENTINEL, "refused %s (%d) wrote lse byte %zu", what, st, i);
}

static inline void fa_params_pick(fz_in *in, const fa_cache *x, heed_attn_params *p, float *sinks, int *valid) {
  static const unsigned groups[] = {1, 1, 2, 4, 3, 8, 1, 0};
  static const float scales[] = {1.0f, 1.0f, 0.25f, 2.0f, 8.0f, -1.0f, 1e-3f};
  static const unsigned windows[] = {0, 0, 0, 0, 1, 2, 3, 7, 16, 17, 64, 1000, 0xffffffffu};
  static const float caps[] = {0, 0, 0, 0, 50.0f, 30.0f, 1.0f, 0.01f, 1e-30f, 1e30f};
  memset(p, 0, sizeof *p);
  const heed_kv_cache_config *g = &x->g;
  uint8_t sel = fz_u8(in);
  p->n_kv_heads = sel % 23 == 5 ? g->n_kv_heads + 1 : g->n_kv_heads;
  unsigned G = FZ_PICK(in, groups);
  if (G * p->n_kv_heads > FA_MAX_Q_HEADS) G = 1;
  p->n_q_heads = G * p->n_kv_heads;
  if (sel % 29 == 7) p->n_q_heads += 1; /* not a multiple */
  if (p->n_q_heads > FA_MAX_Q_HEADS) p->n_q_heads = FA_MAX_Q_HEADS;
  p->dk = sel % 31 == 9 ? g->dk + 16 : g->dk;
  p->dv = sel % 37 == 11 ? g->dv - 16 : g->dv;
  uint8_t ss = fz_u8(in);
  p->scale = ss < 224 ? FZ_PICK(in, scales) / sqrtf((float)g->dk) : fz_special(in);
  p->window = FZ_PICK(in, windows);
  uint8_t cs = fz_u8(in);
  p->softcap = cs < 232 ? FZ_PICK(in, caps) : fz_special(in);
  p->sinks = NULL;
  int sinks_ok = 1;
  if (fz_u8(in) < 64) {
    fz_fill f = fz_fill_read(in, 1);
    if (f.amp > 30) f.amp = 30;
    fz_fill_apply(&f, sinks, FA_MAX_Q_HEADS);
    for (unsigned h = 0; h < p->n_q_heads; h++) sinks_ok &= isfinite(sinks[h]) != 0;
    p->sinks = sinks;
  }
  *valid = p->n_kv_heads == g->n_kv_heads && p->n_q_heads >= 1 && p->n_q_heads % p->n_kv_heads == 0 && p->dk == g->dk &&
           p->dv == g->dv && isfinite(p->scale) && p->scale != 0 && isfinite(p->softcap) && p->softcap >= 0 && sinks_ok;
}

/* K/V of a view's first len tokens, decoded, when known (clean cache, a sequence behind it). */
static inline int fa_kv_of(const fa_cache *x, const fa_view *v, float **K, float **V) {
  *K = *V = NULL;
  if (!x->clean || v->ref_seq < 0 || !v->ok) return 0;
  const heed_kv_cache_config *g = &x->g;
  size_t n = v->len ? v->len : 1;
  *K = malloc(sizeof(float) * n * g->n_kv_heads * g->dk);
  *V = malloc(sizeof(float) * n * g->n_kv_heads * g->dv);
  heed_status st = heed_kv_seq_read(x->c, v->ref_seq, 0, v->len, *K, *V);
  FZ_CHECK(st == HEED_OK, "read of %u tokens of %d: %s", v->len, v->ref_seq, heed_kv_cache_last_error(x->c));
  return 1;
}

/* The checks on a successful call's rows for one view: rows [row0, row0 + n_q).
 * Returns max |V| when the scores are moderate (two runs may then be compared
 * within 2e-3 of it), else -1. */
static inline float fa_check_rows(const char *what, const fa_cache *x, const heed_attn_params *p, const fa_view *v,
                                 unsigned pos0, unsigned n_q, const uint8_t *mask, const float *q, const float *out,
                                 const float *lse) {
  const size_t on = (size_t)n_q * p->n_q_heads * p->dv;
  float *K, *V;
  if (!fa_kv_of(x, v, &K, &V)) return -1;
  const unsigned len = v->len;
  const heed_kv_cache_config *g = &x->g;
  double bound = fz_score_bound(p, K, pos0 + n_q, q, n_q);
  float vmax = fz_max_abs(V, (size_t)len * g->n_kv_heads * g->dv);
  /* No score overflows, and V leaves room for the unnormalised sum of up to
   * 2^10 weighted rows (f32 V near FLT_MAX overflows there: accepted as a limit):
   * each output is a convex combination of V. */
  if (bound < 1e30 && vmax < 1e34f) {
    fz_stat(what[0] == 'p' ? "prefill convex" : "decode convex");
    for (size_t i = 0; i < on; i++)
      FZ_CHECK(fabsf(out[i]) <= vmax * (1 + 1e-5f) + 1e-6f, "%s: out[%zu] = %g outside max |V| = %g", what, i, out[i], vmax);
    if (lse)
      for (size_t i = 0; i < (size_t)n_q * p->n_q_heads; i++)
        FZ_CHECK(!isnan(lse[i]) && lse[i] != INFINITY, "%s: lse[%zu] = %g", what, i, lse[i]);
  }
  double work = (double)n_q * p->n_q_heads * (pos0 + n_q) * (p->dk + p->dv) * 2;
  if (bound <= 50 && vmax < 1e34f && work <= FA_REF_WORK) {
    double *rout = malloc(sizeof(double) * (on ? on : 1)), *rlse = malloc(sizeof(double) * n_q * p->n_q_heads + 8);
    fz_stat(what[0] == 'p' ? "prefill reference" : mask ? "decode reference, tree" : "decode reference");
    if (getenv("HEED_FUZZ_DEBUG"))
      fprintf(stderr, "%s: kv %u q %u heads, dk %u dv %u, scale %g window %u softcap %g sinks %d; seq %d (%u tokens, ref %d), "
              "pos0 %u n_q %u, mask %d; cache %s/%s block_len %u\n", what, p->n_kv_heads, p->n_q_heads, p->dk, p->dv,
              p->scale, p->window, p->softcap, p->sinks != NULL, v->s.seq, v->len, v->ref_seq, pos0, n_q, mask != NULL,
              heed_dtype_name(x->g.k_dtype), heed_dtype_name(x->g.v_dtype), x->g.block_len);
    fz_ref_attention(p, K, V, pos0, n_q, mask, pos0, q, rout, rlse);
    fz_compare_attention(what, p, n_q, out, lse, rout, rlse, vmax);
    free(rout), free(rlse);
  }
  free(K), free(V);
  return bound <= 50 && vmax < 1e34f ? vmax : -1;
}

/* A second run of a call that succeeded (another workspace, filled with other
 * bytes): on the same runtime the result is the same to the bit (no race, no
 * read of stale work space); on another ISA's runtime, within the tolerance
 * when vmax >= 0. rows: query rows; what: for the messages. */
typedef heed_status (*fa_run_fn)(void *call, heed_runtime *rt, float *out, float *lse, void *ws, size_t ws_bytes,
                                 size_t *need);
static inline void fa_again(fz_in *in, const char *what, const fa_cache *x, fa_run_fn run, void *call, size_t on,
                            size_t ln, const float *out, const float *lse, float vmax) {
  if (fz_u8(in) >= 96) return;
  heed_runtime *rt2 = fz_runtime(in);
  size_t need = 0;
  FZ_CHECK(run(call, rt2, NULL, NULL, NULL, 0, &need) == HEED_OK, "%s: workspace on the second runtime", what);
  void *ws = fz_alloc64(need, 0xC3);
  float *out2 = malloc(sizeof(float) * (on ? on : 1)), *lse2 = lse ? malloc(sizeof(float) * (ln ? ln : 1)) : NULL;
  memset(out2, 0x3C, sizeof(float) * (on ? on : 1));
  heed_status st = run(call, rt2, out2, lse2, ws, need, NULL);
  FZ_CHECK(st == HEED_OK, "%s: again on %s: %d %s", what, heed_isa_name(heed_runtime_isa(rt2)), st,
           heed_runtime_last_error(rt2));
  fz_stat(rt2 == x->rt ? "again, same runtime" : "again, another ISA");
  if (rt2 == x->rt) {
    FZ_CHECK(memcmp(out, out2, sizeof(float) * on) == 0, "%s: a second run on the same runtime differs", what);
    FZ_CHECK(!lse || memcmp(lse, lse2, sizeof(float) * ln) == 0, "%s: a second run's lse differs", what);
  } else if (vmax >= 0) {
    const float tol = 4e-3f * vmax + 1e-5f;
    for (size_t i = 0; i < on; i++)
      FZ_CHECK(fabsf(out[i] - out2[i]) <= tol, "%s: out[%zu] %.9g on %s, %.9g on %s", what, i, out[i],
               heed_isa_name(heed_runtime_isa(x->rt)), out2[i], heed_isa_name(heed_runtime_isa(rt2)));
    for (size_t i = 0; lse && i < ln; i++)
      FZ_CHECK((lse[i] == -INFINITY && lse2[i] == -INFINITY) || fabsf(lse[i] - lse2[i]) <= 4e-3f + 2e-4f * fabsf(lse[i]),
               "%s: lse[%zu] %.9g on %s, %.9g on %s", what, i, lse[i], heed_isa_name(heed_runtime_isa(x->rt)), lse2[i],
               heed_isa_name(heed_runtime_isa(rt2)));
  }
  free(ws), free(out2), free(lse2);
}

/* The calls, bound to their arguments (need != NULL: the workspace size only). */
typedef struct fa_prefill_call {
  const fa_cache *x;
  const heed_attn_params *p;
  heed_attn_seq s;
  unsigned q_start, n_q;
  const float *q;
} fa_prefill_call;
static inline heed_status fa_run_prefill(void *call, heed_runtime *rt, float *out, float *lse, void *ws, size_t ws_bytes,
                                         size_t *need) {
  fa_prefill_call *c = call;
  if (need) return heed_attn_prefill_workspace(rt, c->p, c->n_q, need);
  return heed_attn_prefill(rt, c->x->c, c->p, c->s, c->q_start, c->n_q, c->q, out, lse, ws, ws_bytes);
}
typedef struct fa_decode_call {
  const fa_cache *x;
  const heed_attn_params *p;
  const heed_attn_decode_seq *ds;
  unsigned ns;
  const float *q;
} fa_decode_call;
static inline heed_status fa_run_decode(void *call, heed_runtime *rt, float *out, float *lse, void *ws, size_t ws_bytes,
                                        size_t *need) {
  fa_decode_call *c = call;
  if (need) return heed_attn_decode_workspace(rt, c->p, c->ds, c->ns, need);
  return heed_attn_decode(rt, c->x->c, c->p, c->ds, c->ns, c->q, out, lse, ws, ws_bytes);
}

static inline void fa_workspace(fz_in *in, size_t need, int need_ok, void **ws, size_t *ws_bytes, int *ws_ok) {
  uint8_t w = fz_u8(in);
  *ws = NULL, *ws_bytes = 0, *ws_ok = 0;
  if (!need_ok) {
    *ws = fz_alloc64(64, 0), *ws_bytes = 64;
    return;
  }
  if (w >= 240) return; /* none */
  size_t give = w >= 224 && need >= 4 ? need - 4 : need;
  *ws = fz_alloc64(give, 0x5a);
  *ws_bytes = give;
  *ws_ok = give >= need;
}

static inline void fa_prefill(fz_in *in, fa_cache *x) {
  heed_attn_params p;
  float sinks[FA_MAX_Q_HEADS];
  int pvalid;
  fa_params_pick(in, x, &p, sinks, &pvalid);
  fa_view v;
  fa_view_pick(in, x, &v);
  unsigned len = v.ok ? v.len : 0;
  unsigned q_start = fz_range(in, 0, len), n_q = fz_range(in, 1, FA_MAX_PREFILL_Q);
  if (n_q > len - q_start && fz_u8(in) < 240) n_q = len - q_start; /* mostly in range */
  if (fz_u8(in) >= 250) n_q = 0;
  size_t qn, on, ln;
  float *q, *out, *lse;
  fa_io(in, n_q, &p, &q, &qn, &out, &on, &lse, &ln);
  size_t need = 0;
  int need_ok = heed_attn_prefill_workspace(x->rt, &p, n_q, &need) == HEED_OK;
  FZ_CHECK(need_ok == pvalid || !pvalid, "prefill_workspace refused valid params");
  void *ws;
  size_t ws_bytes;
  int ws_ok;
  fa_workspace(in, need, need_ok, &ws, &ws_bytes, &ws_ok);
  float *lse_arg = lse;
  int overlap = 0;
  if (lse && ln && on && fz_u8(in) >= 248) lse_arg = out, overlap = 1; /* lse inside out */
  int qfinite = fa_q_ok(q, qn, p.scale);
  int expect = pvalid && v.ok && (n_q == 0 || ((uint64_t)q_start + n_q <= len && qfinite && ws_ok && !overlap));
  heed_status st = heed_attn_prefill(x->rt, x->c, &p, v.s, q_start, n_q, q, out, lse_arg, ws, ws_bytes);
  FZ_CHECK((st == HEED_OK) == expect,
           "prefill: status %d, expected %s (params %d view %d len %u q_start %u n_q %u ws %d overlap %d q finite %d): %s / %s", st,
           expect ? "success" : "a refusal", pvalid, v.ok, len, q_start, n_q, ws_ok, overlap, qfinite, heed_kv_cache_last_error(x->c), heed_runtime_last_error(x->rt));
  FZ_CHECK(st != HEED_E_INTERNAL, "prefill: internal error");
  fz_stat(st == HEED_OK ? "prefill ok" : "prefill refused");
  if (st != HEED_OK) {
    fa_untouched("prefill", st, out, on, lse, ln);
  } else if (n_q) {
    float vmax = fa_check_rows("prefill", x, &p, &v, q_start, n_q, NULL, q, out, lse_arg);
    fa_prefill_call call = {x, &p, v.s, q_start, n_q, q};
    fa_again(in, "prefill", x, fa_run_prefill, &call, on, ln, out, lse_arg, vmax);
  }
  fa_view_free(&v);
  free(q), free(out), free(lse), free(ws);
}

static inline void fa_decode(fz_in *in, fa_cache *x) {
  heed_attn_params p;
  float sinks[FA_MAX_Q_HEADS];
  int pvalid;
  fa_params_pick(in, x, &p, sinks, &pvalid);
  unsigned ns = fz_range(in, 0, FA_MAX_DECODE_SEQS);
  if (ns == 0 && fz_u8(in) >= 8) ns = 1;
  fa_view v[FA_MAX_DECODE_SEQS];
  heed_attn_decode_seq ds[FA_MAX_DECODE_SEQS];
  uint8_t *masks[FA_MAX_DECODE_SEQS];
  int all_ok = 1;
  size_t rows = 0;
  for (unsigned i = 0; i < ns; i++) {
    fa_view_pick(in, x, &v[i]);
    unsigned len = v[i].ok ? v[i].len : 0;
    unsigned nq = fz_range(in, 1, HEED_MAX_DECODE_QUERIES);
    if (nq > len && fz_u8(in) < 240) nq = len ? len : 1;
    uint8_t odd = fz_u8(in);
    if (odd >= 250) nq = odd >= 253 ? 0 : HEED_MAX_DECODE_QUERIES + 1;
    masks[i] = NULL;
    uint8_t mk = fz_u8(in) % 4;
    if (nq >= 1 && nq <= HEED_MAX_DECODE_QUERIES && mk) {
      masks[i] = malloc((size_t)nq * nq);
      if (mk == 1 && nq >= 2) { /* a real tree: root plus nq - 1 nodes */
        int32_t parents[HEED_MAX_DECODE_QUERIES];
        for (unsigned k = 0; k + 1 < nq; k++) parents[k] = (int32_t)fz_range(in, 0, k) - 1;
        FZ_CHECK(heed_spec_tree_mask(parents, nq - 1, masks[i], NULL) == HEED_OK, "tree_mask of valid parents");
      } else { /* any bytes: nonzero is seen */
        for (size_t k = 0; k < (size_t)nq * nq; k++) masks[i][k] = fz_u8(in) % 3 == 0 ? 0 : fz_u8(in);
      }
    }
    ds[i].kv = v[i].s;
    ds[i].n_q = nq;
    ds[i].tree_mask = masks[i];
    all_ok &= v[i].ok && nq >= 1 && nq <= HEED_MAX_DECODE_QUERIES && nq <= len;
    rows += nq;
  }
  size_t qn, on, ln;
  float *q, *out, *lse;
  fa_io(in, rows, &p, &q, &qn, &out, &on, &lse, &ln);
  size_t need = 0;
  int need_ok = heed_attn_decode_workspace(x->rt, &p, ds, ns, &need) == HEED_OK;
  void *ws;
  size_t ws_bytes;
  int ws_ok;
  fa_workspace(in, need, need_ok, &ws, &ws_bytes, &ws_ok);
  float *lse_arg = lse;
  int overlap = 0;
  if (lse && ln && on && fz_u8(in) >= 248) lse_arg = out, overlap = 1;
  int qfinite = fa_q_ok(q, qn, p.scale);
  int expect = pvalid && (ns == 0 || (all_ok && qfinite && ws_ok && !overlap));
  heed_status st = heed_attn_decode(x->rt, x->c, &p, ds, ns, q, out, lse_arg, ws, ws_bytes);
  FZ_CHECK((st == HEED_OK) == expect, "decode: status %d, expected %s (params %d, %u seqs ok %d, ws %d, overlap %d, q finite %d): %s / %s",
           st, expect ? "success" : "a refusal", pvalid, ns, all_ok, ws_ok, overlap, qfinite, heed_kv_cache_last_error(x->c), heed_runtime_last_error(x->rt));
  FZ_CHECK(st != HEED_E_INTERNAL, "decode: internal error");
  fz_stat(st == HEED_OK ? "decode ok" : "decode refused");
  if (st != HEED_OK) {
    fa_untouched("decode", st, out, on, lse, ln);
  } else if (ns) {
    size_t row = 0;
    float vmax = 0;
    for (unsigned i = 0; i < ns; i++) {
      unsigned nq = ds[i].n_q;
      float vm = fa_check_rows("decode", x, &p, &v[i], v[i].len - nq, nq, masks[i], q + row * p.n_q_heads * p.dk,
                               out + row * p.n_q_heads * p.dv, lse_arg ? lse_arg + row * p.n_q_heads : NULL);
      vmax = vm < 0 || vmax < 0 ? -1 : vm > vmax ? vm : vmax;
      row += nq;
    }
    fa_decode_call call = {x, &p, ds, ns, q};
    fa_again(in, "decode", x, fa_run_decode, &call, on, ln, out, lse_arg, vmax);
  }
  for (unsigned i = 0; i < ns; i++) fa_view_free(&v[i]), free(masks[i]);
  free(q), free(out), free(lse), free(ws);
}

#endif
