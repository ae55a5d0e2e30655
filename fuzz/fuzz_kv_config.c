/* fuzz/fuzz_kv_config.c - heed_kv_cache_bytes and heed_kv_cache_create with
 * arbitrary configurations, storage sizes and alignments; a cache that is
 * created then takes a few sequences, appends, reads, a fork and a truncate.
 *
 * Checks: a configuration is accepted exactly when heed/attention.h's rules
 * say it is valid; the sizes cover the documented layout; create refuses
 * short or misaligned storage; the cache in force fills in block_len and the
 * groups as documented; refused appends change nothing; every block comes
 * back to the free list. */
#include "fuzz/fuzz_common.h"

/* Fuzz-only bounds on what one input may make heed allocate or touch. */
#define STORAGE_MAX (16u << 20)          /* bytes of storage the target allocates and passes */
#define TABLES_MAX ((uint64_t)1 << 30)   /* bytes of block tables create allocates (untouched) */
#define TOUCH_MAX (1u << 16)             /* floats of K/V per append */

static int pow2(uint64_t x) { return x && !(x & (x - 1)); }

static unsigned pick_u(fz_in *in, const unsigned *table, size_t n) {
  uint8_t sel = fz_u8(in);
  return sel < 224 ? table[sel % n] : fz_u32(in);
}
#define PICK_U(in, t) pick_u(in, t, sizeof(t) / sizeof *(t))

/* 1: valid by the header's rules; 0: invalid; -1: depends on the runtime's
 * plan (block_len 0 with a k_group). */
static int valid_config(const heed_kv_cache_config *g, int have_rt) {
  if (g->n_kv_heads < 1 || g->n_kv_heads > 256) return 0;
  const unsigned dims[2] = {g->dk, g->dv};
  for (int i = 0; i < 2; i++)
    if (dims[i] < HEED_HEAD_DIM_MIN || dims[i] > HEED_HEAD_DIM_MAX || dims[i] % 16) return 0;
  if ((unsigned)g->k_dtype >= HEED_DTYPE_COUNT || (unsigned)g->v_dtype >= HEED_DTYPE_COUNT) return 0;
  if (g->block_len == 0 && !have_rt) return 0;
  if (g->block_len && (g->block_len < 16 || g->block_len > 1024 || !pow2(g->block_len))) return 0;
  if (g->k_group && (g->k_group < 16 || g->k_group > 256 || !pow2(g->k_group))) return 0;
  if (g->v_group && (g->v_group < 16 || g->v_group > 256 || !pow2(g->v_group) || g->dv % g->v_group)) return 0;
  if (g->n_blocks < 1 || g->max_seqs < 1 || g->max_seqs > 65536 || g->max_seq_len < 1) return 0;
  if (g->k_group && g->block_len && g->k_group > g->block_len) return 0;
  if (g->k_group && !g->block_len) return -1;
  if (g->max_seq_len > (1u << 31)) return -1; /* heed may cap it (fuzz/corpus/kv_config/crash-*-wrap) */
  return 1;
}

/* The least bytes the documented block layout needs (codes and scales, no padding). */
static uint64_t min_block_bytes(const heed_kv_cache_config *g) {
  uint64_t H = g->n_kv_heads, bl = g->block_len;
  uint64_t b = H * bl * (g->dk * heed_dtype_bits(g->k_dtype) + g->dv * heed_dtype_bits(g->v_dtype)) / 8;
  uint64_t kgroups = bl / g->k_group * g->dk, vgroups = bl * (g->dv / g->v_group);
  switch (g->k_dtype) {
  case HEED_DTYPE_Q8: b += H * kgroups * 2; break;
  case HEED_DTYPE_Q4: b += H * kgroups * 4; break;
  case HEED_DTYPE_E4M3: case HEED_DTYPE_E5M2: b += H * 4; break;
  default: break;
  }
  switch (g->v_dtype) {
  case HEED_DTYPE_Q8: b += H * vgroups * 2; break;
  case HEED_DTYPE_Q4: b += H * vgroups * 4; break;
  case HEED_DTYPE_E4M3: case HEED_DTYPE_E5M2: b += H * 4; break;
  default: break;
  }
  return b;
}

/* A caller block table as long as max_seq_len allows (up to 2^22 blocks: with
 * long blocks, the top of the 32-bit range), all block 0 but maybe its last entry, read by one
 * query at its last position through a window of 1 (one key: cheap whatever
 * the length). The table is calloc'ed: untouched pages cost nothing. */
static void long_table(fz_in *in, heed_kv_cache *c, const heed_kv_cache_config *g) {
  const int quant = heed_dtype_is_quant(g->k_dtype) || heed_dtype_is_quant(g->v_dtype);
  uint64_t n_tok = g->max_seq_len - (quant ? g->max_seq_len % g->block_len : 0);
  uint64_t nb = (n_tok + g->block_len - 1) / g->block_len;
  if (!n_tok || nb > (1u << 22) || g->n_kv_heads * (g->dk + g->dv) > TOUCH_MAX) return; /* heed checks every entry */
  uint32_t *table = calloc(nb, sizeof(uint32_t));
  int bad = fz_bool(in);
  if (bad) table[nb - 1] = g->n_blocks; /* out of range: refused */
  heed_runtime *rt = fz_rts[0];
  heed_attn_params p = {.n_q_heads = g->n_kv_heads, .n_kv_heads = g->n_kv_heads, .dk = g->dk, .dv = g->dv,
                        .scale = 0.125f, .window = 1};
  float *q = calloc((size_t)g->n_kv_heads * g->dk, sizeof(float)), *out = malloc(sizeof(float) * g->n_kv_heads * g->dv);
  size_t need;
  FZ_CHECK(heed_attn_prefill_workspace(rt, &p, 1, &need) == HEED_OK, "prefill_workspace");
  void *ws = fz_alloc64(need, 0);
  heed_attn_seq s = {.seq = -1, .blocks = table, .n_tokens = (unsigned)n_tok};
  heed_status st = heed_attn_prefill(rt, c, &p, s, (unsigned)n_tok - 1, 1, q, out, NULL, ws, need);
  FZ_CHECK(bad ? st == HEED_E_RANGE : st == HEED_OK, "prefill at position %llu of a table of %llu blocks%s: %s %s",
           (unsigned long long)n_tok - 1, (unsigned long long)nb, bad ? " (last entry out of range)" : "",
           heed_status_name(st), heed_runtime_last_error(rt));
  free(table), free(q), free(out), free(ws);
}

static void exercise(fz_in *in, heed_kv_cache *c, const heed_kv_cache_config *g, size_t bytes) {
  const int quant = heed_dtype_is_quant(g->k_dtype) || heed_dtype_is_quant(g->v_dtype);
  const unsigned H = g->n_kv_heads, bl = g->block_len;
  FZ_CHECK(heed_kv_cache_free_blocks(c) == g->n_blocks, "a new cache has %u of %u blocks free",
           (unsigned)heed_kv_cache_free_blocks(c), (unsigned)g->n_blocks);
  size_t bb = heed_kv_cache_block_bytes(c);
  FZ_CHECK(bb % 64 == 0 && bb >= min_block_bytes(g) && (uint64_t)bb * g->n_blocks <= bytes,
           "block_bytes %zu (least %llu), %u blocks, storage %zu", bb, (unsigned long long)min_block_bytes(g),
           (unsigned)g->n_blocks, bytes);
  FZ_CHECK(heed_kv_cache_on_device(c) == 0, "a host cache on a device");

  /* storage_read/write: exactly [0, bytes) */
  uint8_t buf[64];
  size_t off = bytes - fz_range(in, 0, 63), n = fz_range(in, 0, 64);
  heed_status st = heed_kv_cache_storage_read(c, off, n, buf);
  FZ_CHECK((st == HEED_OK) == (off + n <= bytes), "storage_read [%zu, +%zu) of %zu: %d", off, n, bytes, st);
  st = heed_kv_cache_storage_read(c, SIZE_MAX - 3, 8, buf);
  FZ_CHECK(st == HEED_E_RANGE, "storage_read at SIZE_MAX - 3: %d", st);

  /* sequences: max_seqs of them, then one too many */
  int seqs[4], n_seqs = 0;
  for (unsigned i = 0; i < 4; i++) {
    int s = -5;
    st = heed_kv_seq_new(c, &s);
    if (i < g->max_seqs) {
      FZ_CHECK(st == HEED_OK && s >= 0 && (unsigned)s < g->max_seqs && heed_kv_seq_len(c, s) == 0, "seq_new %u: %d, id %d", i,
               st, s);
      seqs[n_seqs++] = s;
    } else {
      FZ_CHECK(st != HEED_OK, "seq_new beyond max_seqs=%u succeeded", g->max_seqs);
    }
  }

  /* one append as long as the pool and max_seq_len allow (capped), one token more, read back */
  uint64_t per_tok = (uint64_t)H * (g->dk + g->dv);
  uint64_t cap_pool = quant ? (uint64_t)g->n_blocks * bl + bl - 1 : (uint64_t)g->n_blocks * bl;
  uint64_t want = fz_range(in, 0, 4 * 1024);
  if (want > g->max_seq_len) want = g->max_seq_len;
  if (want > TOUCH_MAX / per_tok) want = TOUCH_MAX / per_tok;
  unsigned nt = (unsigned)want;
  float *k = malloc(sizeof(float) * ((size_t)nt + 1) * H * g->dk), *v = malloc(sizeof(float) * ((size_t)nt + 1) * H * g->dv);
  float *rk = malloc(sizeof(float) * ((size_t)nt + 1) * H * g->dk), *rv = malloc(sizeof(float) * ((size_t)nt + 1) * H * g->dv);
  fz_fill f = fz_fill_read(in, 0);
  f.amp = 1.0f, f.levels = 0;
  fz_fill_apply(&f, k, ((size_t)nt + 1) * H * g->dk);
  fz_fill_apply(&f, v, ((size_t)nt + 1) * H * g->dv);
  int s0 = seqs[0];
  st = heed_kv_seq_append(c, s0, nt, k, v);
  int fits = nt <= cap_pool;
  FZ_CHECK((st == HEED_OK) == fits, "append of %u tokens (pool %u blocks of %u%s, max_seq_len %u): %d %s", nt,
           (unsigned)g->n_blocks, bl, quant ? ", quantized" : "", g->max_seq_len, st, heed_kv_cache_last_error(c));
  unsigned len = st == HEED_OK ? nt : 0;
  FZ_CHECK(heed_kv_seq_len(c, s0) == (long)len, "length %ld after append of %u (%d)", heed_kv_seq_len(c, s0), nt, st);
  if (len == g->max_seq_len) {
    uint32_t free0 = heed_kv_cache_free_blocks(c);
    st = heed_kv_seq_append(c, s0, 1, k, v);
    FZ_CHECK(st == HEED_E_RANGE && heed_kv_seq_len(c, s0) == (long)len && heed_kv_cache_free_blocks(c) == free0,
             "append past max_seq_len=%u: %d, length %ld", g->max_seq_len, st, heed_kv_seq_len(c, s0));
  }
  if (len) {
    FZ_CHECK(heed_kv_seq_read(c, s0, 0, len, rk, rv) == HEED_OK, "read: %s", heed_kv_cache_last_error(c));
    /* inputs in [-1, 1): every format keeps them within 0.13 (e5m2's step) */
    for (size_t i = 0; i < (size_t)len * H * g->dk; i++)
      FZ_CHECK(fabsf(rk[i] - k[i]) <= 0.13f, "K[%zu] %g read back as %g", i, k[i], rk[i]);
    for (size_t i = 0; i < (size_t)len * H * g->dv; i++)
      FZ_CHECK(fabsf(rv[i] - v[i]) <= 0.13f, "V[%zu] %g read back as %g", i, v[i], rv[i]);
    const uint32_t *blocks;
    unsigned nb;
    FZ_CHECK(heed_kv_seq_blocks(c, s0, &blocks, &nb) == HEED_OK, "seq_blocks");
    FZ_CHECK(nb == (quant ? len / bl : (len + bl - 1) / bl), "%u tokens in %u blocks of %u", len, nb, bl);
    for (unsigned i = 0; i < nb; i++)
      FZ_CHECK(blocks[i] < g->n_blocks && heed_kv_block_refs(c, blocks[i]) == 1, "block %u = %u", i, (unsigned)blocks[i]);
  }
  FZ_CHECK(heed_kv_seq_read(c, s0, len, 1, rk, rv) == HEED_E_RANGE, "read past the end");
  {
    int d = -5;
    st = heed_kv_seq_fork(c, s0, &d);
    FZ_CHECK((st == HEED_OK) == ((unsigned)n_seqs < g->max_seqs), "fork with %d of %u slots used: %d", n_seqs, g->max_seqs, st);
    if (st == HEED_OK) {
      FZ_CHECK(heed_kv_seq_len(c, d) == (long)len, "fork length %ld of %u", heed_kv_seq_len(c, d), len);
      FZ_CHECK(heed_kv_seq_truncate(c, d, len / 2) == HEED_OK && heed_kv_seq_len(c, d) == (long)(len / 2), "truncate");
      FZ_CHECK(heed_kv_seq_truncate(c, d, len / 2 + 1) == HEED_E_RANGE, "truncate to more than it holds");
      FZ_CHECK(heed_kv_seq_free(c, d) == HEED_OK && heed_kv_seq_len(c, d) == -1, "free the fork");
    }
  }
  for (int i = 0; i < n_seqs; i++) FZ_CHECK(heed_kv_seq_free(c, seqs[i]) == HEED_OK, "free %d", seqs[i]);
  long_table(in, c, g);
  FZ_CHECK(heed_kv_cache_free_blocks(c) == g->n_blocks, "%u of %u blocks free after freeing everything",
           (unsigned)heed_kv_cache_free_blocks(c), (unsigned)g->n_blocks);
  free(k), free(v), free(rk), free(rv);
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc, (void)argv;
  fz_open_runtimes();
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static const unsigned heads[] = {1, 2, 3, 4, 8, 0, 255, 256, 257, 1024};
  static const unsigned dims[] = {32, 64, 128, 48, 80, 96, 112, 192, 256, 0, 16, 31, 33, 257, 272, 512};
  static const unsigned types[] = {0, 1, 2, 3, 4, 5, 6, 0, 1, 2, 3, 4, 5, 6, 7, 8, 0xffffffffu};
  static const unsigned bls[] = {16, 32, 64, 0, 128, 256, 512, 1024, 1, 8, 24, 48, 2048, 0x80000000u};
  static const unsigned groups[] = {0, 0, 16, 32, 64, 128, 256, 8, 24, 512};
  static const unsigned nblocks[] = {1, 2, 3, 4, 7, 16, 64, 0, 1u << 20, 0xffffffffu};
  static const unsigned nseqs[] = {1, 2, 3, 4, 8, 64, 0, 65536, 65537, 0xffffffffu};
  static const unsigned lens[] = {1, 15, 16, 17, 100, 1024, 4096, 0, 1u << 20, 0x7fffffffu, 0xfffffff0u, 0xfffffff1u,
                                  0xfffffffeu, 0xffffffffu};
  fz_in in = {data, size};
  heed_kv_cache_config g;
  memset(&g, 0, sizeof g);
  g.n_kv_heads = PICK_U(&in, heads);
  g.dk = PICK_U(&in, dims);
  g.dv = PICK_U(&in, dims);
  g.k_dtype = (heed_dtype)PICK_U(&in, types);
  g.v_dtype = (heed_dtype)PICK_U(&in, types);
  g.block_len = PICK_U(&in, bls);
  g.k_group = PICK_U(&in, groups);
  g.v_group = PICK_U(&in, groups);
  g.n_blocks = PICK_U(&in, nblocks);
  g.max_seqs = PICK_U(&in, nseqs);
  g.max_seq_len = PICK_U(&in, lens);
  uint8_t how = fz_u8(&in);
  heed_runtime *rt = how & 1 ? NULL : fz_runtime(&in);

  size_t bytes = 0;
  unsigned bl = 0;
  heed_status st = heed_kv_cache_bytes(rt, &g, &bytes, &bl);
  int valid = valid_config(&g, rt != NULL);
  if (valid >= 0)
    FZ_CHECK((st == HEED_OK) == valid, "heed_kv_cache_bytes: %d, valid %d (heads %u dk %u dv %u types %d/%d bl %u groups %u/%u "
             "blocks %u seqs %u len %u)", st, valid, g.n_kv_heads, g.dk, g.dv, (int)g.k_dtype, (int)g.v_dtype, g.block_len,
             g.k_group, g.v_group, (unsigned)g.n_blocks, g.max_seqs, g.max_seq_len);
  if (st != HEED_OK) { /* create refuses the same configuration (no storage needed to say so) */
    heed_kv_cache *c = (heed_kv_cache *)&g;
    heed_error err;
    void *dummy = fz_alloc64(64, 0);
    FZ_CHECK(heed_kv_cache_create(rt, &g, dummy, 64, &c, &err) == st && c == NULL, "create accepts what bytes refused");
    free(dummy);
    return 0;
  }
  FZ_CHECK(pow2(bl) && bl >= 16 && bl <= 1024 && (!g.block_len || bl == g.block_len), "block_len %u for %u", bl, g.block_len);
  FZ_CHECK(!g.k_group || g.k_group <= bl, "k_group %u accepted over block_len %u", g.k_group, bl);
  heed_kv_cache_config full = g;
  full.block_len = bl;
  full.k_group = g.k_group ? g.k_group : bl < 32 ? 16 : 32;
  full.v_group = g.v_group ? g.v_group : g.dv % 32 ? 16 : 32;
  const int quant = heed_dtype_is_quant(g.k_dtype) || heed_dtype_is_quant(g.v_dtype);
  FZ_CHECK(bytes / g.n_blocks >= min_block_bytes(&full), "%zu bytes for %u blocks of at least %llu", bytes,
           (unsigned)g.n_blocks, (unsigned long long)min_block_bytes(&full));

  /* create: only what this target can afford to allocate */
  uint64_t per_seq = ((uint64_t)g.max_seq_len + bl - 1) / bl; /* a table never has more entries than the pool has blocks */
  uint64_t tables = (uint64_t)g.max_seqs * (per_seq < g.n_blocks ? per_seq : g.n_blocks) * 4;
  if (bytes > STORAGE_MAX || tables > TABLES_MAX) return 0;
  size_t give = bytes;
  int misalign = 0;
  switch ((how >> 1) & 7) {
  case 1: give = bytes - 1 - fz_range(&in, 0, 63) % bytes; break; /* too small */
  case 2: misalign = 8; break;
  default: break;
  }
  char *storage = fz_alloc64(bytes + 64, 0);
  heed_error err;
  heed_kv_cache *c = NULL;
  st = heed_kv_cache_create(rt, &g, storage + misalign, give, &c, &err);
  if (give < bytes || misalign) {
    FZ_CHECK(st != HEED_OK && c == NULL, "create with %zu of %zu bytes at offset %d: %d", give, bytes, misalign, st);
  } else {
    FZ_CHECK(st == HEED_OK || st == HEED_E_NOMEM, "create: %d %s", st, err.msg);
  }
  if (st == HEED_OK) {
    const heed_kv_cache_config *in_force = heed_kv_cache_get_config(c);
    FZ_CHECK(memcmp(in_force, &full, sizeof full) == 0,
             "config in force: bl %u k_group %u v_group %u; expected %u %u %u", in_force->block_len, in_force->k_group,
             in_force->v_group, full.block_len, full.k_group, full.v_group);
    FZ_CHECK(heed_kv_cache_storage(c) == storage, "storage pointer");
    (void)quant;
    exercise(&in, c, &full, bytes);
    heed_kv_cache_destroy(c);
  }
  free(storage);
  return 0;
}
