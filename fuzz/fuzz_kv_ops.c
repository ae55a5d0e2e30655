/* fuzz/fuzz_kv_ops.c - a byte-driven program of KV cache operations
 * (seq_new, append, fork, truncate, free, read, storage read/write) with
 * prefill and decode calls between them, on a small cache of any format.
 *
 * A model keeps each sequence's length and values. After every operation:
 *   - lengths, block tables, reference counts and the free count agree
 *     (refs[b] = the tables holding b; free = blocks no table holds);
 *   - an operation succeeds exactly when the header says it should (an append
 *     that needs more blocks than are free, or holds a NaN, is refused), and a
 *     refused one changes nothing;
 *   - the sequence it touched reads back as the model says: exactly, after
 *     the format's rounding (f16, bf16, and a quantized cache's residual), or
 *     within the format's error bound for a quantized block.
 * Attention calls are checked as fuzz/fuzz_attn.h says. */
#include "fuzz/fuzz_attn.h"

#define MAX_OPS 48
#define MODEL_FLOATS (1u << 20) /* the model's values for every slot, at most */

typedef struct mseq {
  int alive;
  unsigned len;
  float *k, *v; /* [max_seq_len][H][dk], [max_seq_len][H][dv] */
} mseq;

typedef struct prog {
  fa_cache x;
  mseq *m;          /* [max_seqs] */
  int dirty;        /* raw bytes were written: values are no longer checked */
  float *rk, *rv;   /* read buffers, one sequence long */
  unsigned *stamp;  /* [n_blocks] */
  unsigned *count;  /* [n_blocks] */
} prog;

static const char *tname(heed_dtype t) { return heed_dtype_name(t) ? heed_dtype_name(t) : "?"; }

static float round_to(heed_dtype t, float x) {
  switch (t) {
  case HEED_DTYPE_F32: return x;
  case HEED_DTYPE_BF16: return heed_bf16_to_f32(heed_f32_to_bf16(x));
  default: return heed_f16_to_f32(heed_f32_to_f16(x));
  }
}

/* The value the format keeps of x outside a quantized block: the side's
 * float type, or f16 for a quantized side's residual. Append refuses what f16
 * cannot hold; a value above 65504 reaches an f16 store only as a q8/q4 value
 * dequantized back into the residual by a truncate, which keeps it at 65504. */
static float keep_of(heed_dtype t, float x) {
  if (t == HEED_DTYPE_F16) x = fminf(fmaxf(x, -65504.0f), 65504.0f);
  return round_to(t, x);
}

/* A finite value the store would turn into an infinity (append refuses it: E_RANGE). */
static int overflows(heed_dtype t, float x) { return isfinite(x) && !isfinite(round_to(t, x)); }

/* Error bound of a quantized block's value, times the block-head's max |x|. */
static float quant_factor(heed_dtype t) {
  switch (t) {
  case HEED_DTYPE_Q8: return 0.0075f;
  case HEED_DTYPE_Q4: return 0.072f;
  case HEED_DTYPE_E4M3: return 0.066f;
  case HEED_DTYPE_E5M2: return 0.13f;
  default: return 0;
  }
}

static void check_structure(prog *P, const char *after) {
  const heed_kv_cache_config *g = &P->x.g;
  heed_kv_cache *c = P->x.c;
  memset(P->count, 0, sizeof(unsigned) * g->n_blocks);
  for (unsigned s = 0; s < g->max_seqs; s++) {
    const mseq *m = &P->m[s];
    long len = heed_kv_seq_len(c, (int)s);
    FZ_CHECK(len == (m->alive ? (long)m->len : -1), "after %s: sequence %u has length %ld, model %ld", after, s, len,
             m->alive ? (long)m->len : -1L);
    if (!m->alive) continue;
    const uint32_t *b;
    unsigned nb;
    FZ_CHECK(heed_kv_seq_blocks(c, (int)s, &b, &nb) == HEED_OK, "after %s: seq_blocks(%u)", after, s);
    FZ_CHECK(nb == fa_n_full(&P->x, m->len), "after %s: sequence %u of %u tokens has %u blocks", after, s, m->len, nb);
    for (unsigned i = 0; i < nb; i++) {
      FZ_CHECK(b[i] < g->n_blocks, "after %s: sequence %u block %u is %u", after, s, i, (unsigned)b[i]);
      FZ_CHECK(P->stamp[b[i]] != s + 1, "after %s: sequence %u holds block %u twice", after, s, (unsigned)b[i]);
      P->stamp[b[i]] = s + 1;
      P->count[b[i]]++;
    }
  }
  uint32_t n_free = 0;
  for (uint32_t b = 0; b < g->n_blocks; b++) {
    FZ_CHECK(heed_kv_block_refs(c, b) == P->count[b], "after %s: block %u has %u refs, %u tables hold it", after,
             (unsigned)b, heed_kv_block_refs(c, b), P->count[b]);
    n_free += P->count[b] == 0;
    P->stamp[b] = 0;
  }
  FZ_CHECK(heed_kv_cache_free_blocks(c) == n_free, "after %s: %u blocks free, %u unused", after,
           (unsigned)heed_kv_cache_free_blocks(c), (unsigned)n_free);
}

/* One side (K or V) of a sequence: read r against model m, [len][H][d]. */
static void check_side(prog *P, unsigned s, const char *after, const char *side, heed_dtype t, unsigned d, const float *r,
                       const float *m, unsigned len, int exact) {
  const heed_kv_cache_config *g = &P->x.g;
  const unsigned H = g->n_kv_heads, bl = g->block_len, full = P->x.quant ? len / bl * bl : 0;
  for (unsigned t0 = 0; t0 < len; t0 += bl)
    for (unsigned h = 0; h < H; h++) {
      unsigned t1 = t0 + bl < len ? t0 + bl : len;
      int quantized = t0 < full && heed_dtype_is_quant(t);
      float mx = 0;
      for (unsigned tt = t0; tt < t1; tt++)
        for (unsigned i = 0; i < d; i++) {
          size_t at = ((size_t)tt * H + h) * d + i;
          mx = fabsf(m[at]) > mx ? fabsf(m[at]) : mx;
          /* append takes finite values the store can hold: nothing may turn them into Inf or NaN */
          FZ_CHECK(isfinite(r[at]), "after %s: sequence %u %s[%u][%u][%u] (%s%s) reads %g (model %g)", after, s, side, tt, h,
                   i, tname(t), quantized ? " block" : t0 >= full && heed_dtype_is_quant(t) ? " residual, f16" : "", r[at],
                   m[at]);
        }
      const float tol = exact || !quantized ? 0 : quant_factor(t) * mx + 2e-5f;
      if (quantized && !exact) fz_stat("quantized block checked");
      for (unsigned tt = t0; tt < t1; tt++)
        for (unsigned i = 0; i < d; i++) {
          size_t at = ((size_t)tt * H + h) * d + i;
          float want = m[at], got = r[at];
          if (exact || !quantized) {
            float kept = exact ? want : keep_of(heed_dtype_is_quant(t) ? HEED_DTYPE_F16 : t, want);
            FZ_CHECK(memcmp(&got, &kept, 4) == 0 || (got == kept),
                     "after %s: sequence %u %s[%u][%u][%u] (%s) reads %.9g, expected %.9g (model %.9g)", after, s, side, tt,
                     h, i, tname(t), got, kept, want);
          } else {
            FZ_CHECK(fabsf(got - want) <= tol, "after %s: sequence %u %s[%u][%u][%u] (%s block) reads %.9g, model %.9g, "
                     "bound %g (block max %g)", after, s, side, tt, h, i, tname(t), got, want, tol, mx);
          }
        }
    }
}

/* Sequence s against the model; exact: nothing may have changed since the last sync. */
static void check_seq(prog *P, unsigned s, const char *after, int exact) {
  mseq *m = &P->m[s];
  if (!m->alive || P->dirty) return;
  const heed_kv_cache_config *g = &P->x.g;
  heed_status st = heed_kv_seq_read(P->x.c, (int)s, 0, m->len, P->rk, P->rv);
  FZ_CHECK(st == HEED_OK, "after %s: read of sequence %u (%u tokens): %d", after, s, m->len, st);
  check_side(P, s, after, "K", g->k_dtype, g->dk, P->rk, m->k, m->len, exact);
  check_side(P, s, after, "V", g->v_dtype, g->dv, P->rv, m->v, m->len, exact);
  /* from now on the model holds what the cache holds */
  memcpy(m->k, P->rk, sizeof(float) * m->len * g->n_kv_heads * g->dk);
  memcpy(m->v, P->rv, sizeof(float) * m->len * g->n_kv_heads * g->dv);
}

static void sync_all(prog *P) {
  const heed_kv_cache_config *g = &P->x.g;
  for (unsigned s = 0; s < g->max_seqs; s++)
    if (P->m[s].alive)
      FZ_CHECK(heed_kv_seq_read(P->x.c, (int)s, 0, P->m[s].len, P->m[s].k, P->m[s].v) == HEED_OK, "sync read");
}

static int pick_id(fz_in *in, const prog *P) {
  uint8_t k = fz_u8(in);
  if (k < 200) return (int)(k % P->x.g.max_seqs);
  static const int odd[] = {-1, -2, 64, 65536, 0x7fffffff, (int)0x80000000};
  return k < 240 ? (int)P->x.g.max_seqs + (k & 3) : FZ_PICK(in, odd);
}

static int alive(const prog *P, int s) { return s >= 0 && (unsigned)s < P->x.g.max_seqs && P->m[s].alive; }

static void op_append(fz_in *in, prog *P) {
  const heed_kv_cache_config *g = &P->x.g;
  const unsigned H = g->n_kv_heads, bl = g->block_len;
  int s = pick_id(in, P);
  uint8_t nk = fz_u8(in);
  unsigned n = nk < 200 ? fz_range(in, 0, 2 * bl + 1) : nk < 240 ? fz_range(in, 0, 8) : g->max_seq_len + 1;
  if (n > 4 * bl + g->max_seq_len) n = 4 * bl + g->max_seq_len;
  size_t kn = (size_t)n * H * g->dk, vn = (size_t)n * H * g->dv;
  float *k = malloc(sizeof(float) * (kn ? kn : 1)), *v = malloc(sizeof(float) * (vn ? vn : 1));
  fz_fill fk = fz_fill_read(in, 1), fv = fz_fill_read(in, 1);
  fz_fill_apply(&fk, k, kn);
  fz_fill_apply(&fv, v, vn);
  /* finite, and within what the store keeps (f16 for a quantized side) */
  heed_dtype kt = heed_dtype_is_quant(g->k_dtype) ? HEED_DTYPE_F16 : g->k_dtype,
             vt = heed_dtype_is_quant(g->v_dtype) ? HEED_DTYPE_F16 : g->v_dtype;
  int finite = fz_all_finite(k, kn) && fz_all_finite(v, vn);
  for (size_t i = 0; finite && i < kn; i++) finite = !overflows(kt, k[i]);
  for (size_t i = 0; finite && i < vn; i++) finite = !overflows(vt, v[i]);
  uint32_t free0 = heed_kv_cache_free_blocks(P->x.c);
  int expect = 0;
  if (alive(P, s)) {
    mseq *m = &P->m[s];
    unsigned have = fa_n_full(&P->x, m->len);
    int cow = 0;
    if (!P->x.quant && m->len % bl) {
      const uint32_t *b;
      unsigned nb;
      heed_kv_seq_blocks(P->x.c, s, &b, &nb);
      cow = heed_kv_block_refs(P->x.c, b[nb - 1]) > 1;
    }
    uint64_t need = (uint64_t)m->len + n <= g->max_seq_len ? fa_n_full(&P->x, m->len + n) - have + (unsigned)cow : 0;
    expect = n == 0 || (finite && (uint64_t)m->len + n <= g->max_seq_len && need <= free0);
  }
  heed_status st = heed_kv_seq_append(P->x.c, s, n, k, v);
  if (P->dirty && expect && st == HEED_E_INVALID && P->x.quant && strstr(heed_kv_cache_last_error(P->x.c), "raw bytes")) {
    /* raw bytes over a residual: its seal refuses; the sequence keeps the whole blocks sealed before */
    mseq *m = &P->m[s];
    long len = heed_kv_seq_len(P->x.c, s);
    FZ_CHECK(len == (long)m->len || (len > (long)m->len && len < (long)(m->len + n) && len % bl == 0),
             "a refused seal left sequence %d at %ld tokens (had %u, appending %u)", s, len, m->len, n);
    const unsigned kept = (unsigned)len - m->len;
    memcpy(m->k + (size_t)m->len * H * g->dk, k, sizeof(float) * kept * H * g->dk);
    memcpy(m->v + (size_t)m->len * H * g->dv, v, sizeof(float) * kept * H * g->dv);
    m->len = (unsigned)len;
    fz_stat("append refused: raw bytes in the residual");
    free(k), free(v);
    check_structure(P, "append");
    return;
  }
  FZ_CHECK((st == HEED_OK) == expect, "append of %u tokens to %d (alive %d, finite %d, free %u): %d %s", n, s, alive(P, s),
           finite, (unsigned)free0, st, heed_kv_cache_last_error(P->x.c));
  fz_stat(st == HEED_OK ? "append ok" : "append refused");
  if (st == HEED_OK && n) {
    mseq *m = &P->m[s];
    memcpy(m->k + (size_t)m->len * H * g->dk, k, sizeof(float) * kn);
    memcpy(m->v + (size_t)m->len * H * g->dv, v, sizeof(float) * vn);
    m->len += n;
  }
  check_structure(P, "append");
  if (alive(P, s)) check_seq(P, (unsigned)s, "append", st != HEED_OK);
  free(k), free(v);
}

static void op_fork(fz_in *in, prog *P) {
  int s = pick_id(in, P), d = -5;
  int slot_free = 0;
  for (unsigned i = 0; i < P->x.g.max_seqs; i++) slot_free |= !P->m[i].alive;
  heed_status st = heed_kv_seq_fork(P->x.c, s, &d);
  FZ_CHECK((st == HEED_OK) == (alive(P, s) && slot_free), "fork of %d (alive %d, a slot free %d): %d", s, alive(P, s),
           slot_free, st);
  if (st == HEED_OK) {
    FZ_CHECK(d >= 0 && (unsigned)d < P->x.g.max_seqs && !P->m[d].alive, "fork gave id %d", d);
    const heed_kv_cache_config *g = &P->x.g;
    mseq *m = &P->m[s], *n = &P->m[d];
    n->alive = 1, n->len = m->len;
    memcpy(n->k, m->k, sizeof(float) * m->len * g->n_kv_heads * g->dk);
    memcpy(n->v, m->v, sizeof(float) * m->len * g->n_kv_heads * g->dv);
  }
  check_structure(P, "fork");
  if (st == HEED_OK) check_seq(P, (unsigned)d, "fork", 1);
}

static void op_truncate(fz_in *in, prog *P) {
  int s = pick_id(in, P);
  unsigned cur = alive(P, s) ? P->m[s].len : 0;
  uint8_t how = fz_u8(in);
  unsigned len = how < 240 ? fz_range(in, 0, cur) : how < 250 ? cur + 1 : 0xffffffffu;
  heed_status st = heed_kv_seq_truncate(P->x.c, s, len);
  FZ_CHECK((st == HEED_OK) == (alive(P, s) && len <= cur), "truncate %d (alive %d, %u tokens) to %u: %d", s, alive(P, s),
           cur, len, st);
  if (st == HEED_OK) P->m[s].len = len;
  check_structure(P, "truncate");
  /* a quantized cache dequantizes the kept part of a full block into the residual (f16) */
  if (alive(P, s)) check_seq(P, (unsigned)s, "truncate", st != HEED_OK || !P->x.quant);
}

static void op_free(fz_in *in, prog *P) {
  int s = pick_id(in, P);
  heed_status st = heed_kv_seq_free(P->x.c, s);
  FZ_CHECK((st == HEED_OK) == alive(P, s), "free %d (alive %d): %d", s, alive(P, s), st);
  if (st == HEED_OK) P->m[s].alive = 0, P->m[s].len = 0;
  check_structure(P, "free");
}

static void op_new(prog *P) {
  int s = -5, slot_free = 0;
  for (unsigned i = 0; i < P->x.g.max_seqs; i++) slot_free |= !P->m[i].alive;
  heed_status st = heed_kv_seq_new(P->x.c, &s);
  FZ_CHECK((st == HEED_OK) == slot_free, "seq_new with a slot free %d: %d", slot_free, st);
  if (st == HEED_OK) {
    FZ_CHECK(s >= 0 && (unsigned)s < P->x.g.max_seqs && !P->m[s].alive, "seq_new gave id %d", s);
    P->m[s].alive = 1, P->m[s].len = 0;
  }
  check_structure(P, "seq_new");
}

static void op_read(fz_in *in, prog *P) {
  const heed_kv_cache_config *g = &P->x.g;
  int s = pick_id(in, P);
  unsigned cur = alive(P, s) ? P->m[s].len : 0;
  unsigned t0 = fz_range(in, 0, cur + 1), n = fz_range(in, 0, cur + 1);
  if (fz_u8(in) >= 248) t0 = 0xffffffffu;
  int expect = alive(P, s) && (uint64_t)t0 + n <= cur;
  size_t kn = (size_t)(n ? n : 1) * g->n_kv_heads * g->dk, vn = (size_t)(n ? n : 1) * g->n_kv_heads * g->dv;
  float *k = malloc(sizeof(float) * kn), *v = malloc(sizeof(float) * vn);
  heed_status st = heed_kv_seq_read(P->x.c, s, t0, n, k, v);
  FZ_CHECK((st == HEED_OK) == expect, "read %d [%u, +%u) of %u: %d", s, t0, n, cur, st);
  if (st == HEED_OK && !P->dirty) {
    const mseq *m = &P->m[s];
    /* the model is in sync with the cache: a partial read is the same values */
    FZ_CHECK(memcmp(k, m->k + (size_t)t0 * g->n_kv_heads * g->dk, sizeof(float) * n * g->n_kv_heads * g->dk) == 0,
             "read %d [%u, +%u): K differs from a full read", s, t0, n);
    FZ_CHECK(memcmp(v, m->v + (size_t)t0 * g->n_kv_heads * g->dv, sizeof(float) * n * g->n_kv_heads * g->dv) == 0,
             "read %d [%u, +%u): V differs from a full read", s, t0, n);
  }
  free(k), free(v);
}

/* Raw bytes into the storage (NaN and Inf codes included): values are not checked afterwards. */
static void op_storage(fz_in *in, prog *P, size_t total) {
  uint8_t how = fz_u8(in);
  size_t off = how < 240 ? fz_u32(in) % total : total - fz_range(in, 0, 8);
  size_t n = fz_range(in, 0, 64);
  uint8_t buf[64], back[64];
  for (size_t i = 0; i < n; i++) buf[i] = fz_u8(in);
  heed_status st = heed_kv_cache_storage_write(P->x.c, off, n, buf);
  FZ_CHECK((st == HEED_OK) == (off + n <= total), "storage_write [%zu, +%zu) of %zu: %d", off, n, total, st);
  if (st == HEED_OK) {
    FZ_CHECK(heed_kv_cache_storage_read(P->x.c, off, n, back) == HEED_OK && memcmp(buf, back, n) == 0,
             "storage_read of what was written");
    if (n) P->dirty = 1, P->x.clean = 0;
    sync_all(P);
  }
  check_structure(P, "storage_write");
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc, (void)argv;
  fz_open_runtimes();
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static const unsigned heads[] = {1, 1, 2, 3, 4};
  static const unsigned dims[] = {32, 32, 64, 48, 80, 128, 256};
  static const unsigned bls[] = {16, 16, 32, 64, 128};
  static const unsigned kgroups[] = {0, 0, 16, 32, 64, 128};
  static const unsigned vgroups[] = {0, 0, 16, 32, 64, 128, 256};
  fz_in in = {data, size};
  prog P;
  memset(&P, 0, sizeof P);
  P.x.rt = fz_runtime(&in);
  heed_kv_cache_config g;
  memset(&g, 0, sizeof g);
  g.n_kv_heads = FZ_PICK(&in, heads);
  g.dk = FZ_PICK(&in, dims);
  g.dv = FZ_PICK(&in, dims);
  g.k_dtype = (heed_dtype)(fz_u8(&in) % HEED_DTYPE_COUNT);
  g.v_dtype = (heed_dtype)(fz_u8(&in) % HEED_DTYPE_COUNT);
  g.block_len = FZ_PICK(&in, bls);
  g.k_group = FZ_PICK(&in, kgroups);
  g.v_group = FZ_PICK(&in, vgroups);
  if (g.k_group > g.block_len) g.k_group = 0;
  if (g.v_group && g.dv % g.v_group) g.v_group = 0;
  g.n_blocks = fz_range(&in, 1, 24);
  g.max_seqs = fz_range(&in, 1, 6);
  g.max_seq_len = fz_range(&in, 1, 8 * g.block_len);
  size_t per_tok = (size_t)g.n_kv_heads * (g.dk + g.dv);
  if ((size_t)g.max_seqs * g.max_seq_len * per_tok > MODEL_FLOATS)
    g.max_seq_len = (unsigned)(MODEL_FLOATS / (g.max_seqs * per_tok));
  if (!g.max_seq_len) g.max_seq_len = 1;

  size_t bytes = 0;
  heed_status st = heed_kv_cache_bytes(P.x.rt, &g, &bytes, NULL);
  FZ_CHECK(st == HEED_OK, "kv_cache_bytes of a valid config: %d", st);
  char *storage = fz_alloc64(bytes, 0);
  heed_error err;
  st = heed_kv_cache_create(P.x.rt, &g, storage, bytes, &P.x.c, &err);
  FZ_CHECK(st == HEED_OK, "create: %s", err.msg);
  P.x.g = *heed_kv_cache_get_config(P.x.c);
  P.x.quant = heed_dtype_is_quant(g.k_dtype) || heed_dtype_is_quant(g.v_dtype);
  P.x.clean = 1;
  P.m = calloc(g.max_seqs, sizeof *P.m);
  for (unsigned s = 0; s < g.max_seqs; s++) {
    P.m[s].k = malloc(sizeof(float) * g.max_seq_len * g.n_kv_heads * g.dk);
    P.m[s].v = malloc(sizeof(float) * g.max_seq_len * g.n_kv_heads * g.dv);
  }
  P.rk = malloc(sizeof(float) * g.max_seq_len * g.n_kv_heads * g.dk);
  P.rv = malloc(sizeof(float) * g.max_seq_len * g.n_kv_heads * g.dv);
  P.stamp = calloc(g.n_blocks, sizeof *P.stamp);
  P.count = calloc(g.n_blocks, sizeof *P.count);

  for (int i = 0; i < MAX_OPS && in.n; i++) {
    uint8_t op = fz_u8(&in) % 16;
    switch (op) {
    case 0: case 1: op_new(&P); break;
    case 2: case 3: case 4: case 5: op_append(&in, &P); break;
    case 6: op_fork(&in, &P); break;
    case 7: case 8: op_truncate(&in, &P); break;
    case 9: op_free(&in, &P); break;
    case 10: op_read(&in, &P); break;
    case 11: case 12: fa_prefill(&in, &P.x); break;
    case 13: fa_decode(&in, &P.x); break;
    case 14: op_storage(&in, &P, bytes); break;
    default: P.x.rt = fz_runtime(&in); break; /* the same cache, read with another ISA's kernels */
    }
  }
  for (unsigned s = 0; s < g.max_seqs; s++) check_seq(&P, s, "the program", 1);
  /* freeing every sequence gives every block back */
  for (unsigned s = 0; s < g.max_seqs; s++)
    if (P.m[s].alive) FZ_CHECK(heed_kv_seq_free(P.x.c, (int)s) == HEED_OK, "final free");
  FZ_CHECK(heed_kv_cache_free_blocks(P.x.c) == g.n_blocks, "%u of %u blocks free at the end",
           (unsigned)heed_kv_cache_free_blocks(P.x.c), (unsigned)g.n_blocks);

  heed_kv_cache_destroy(P.x.c);
  for (unsigned s = 0; s < g.max_seqs; s++) free(P.m[s].k), free(P.m[s].v);
  free(P.m), free(P.rk), free(P.rv), free(P.stamp), free(P.count), free(storage);
  return 0;
}
