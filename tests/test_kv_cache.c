/* The paged KV cache: layout, append, fork with copy-on-write, truncate, free, bad input. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "heed/attention.h"
#include "test_util.h"

static heed_runtime *rt;
static void setup(void) {
  heed_runtime_options o;
  heed_runtime_options_init(&o);
  o.flags = HEED_RUNTIME_IGNORE_ENV | HEED_RUNTIME_NO_OPENCL;
  cr_assert_eq(heed_runtime_open(&o, &rt, NULL), HEED_OK);
}
static void teardown(void) { heed_runtime_close(rt); }

static heed_kv_cache *make(heed_dtype dt, unsigned bl, uint32_t nb, void **storage) {
  heed_kv_cache_config cfg = {.n_kv_heads = 2, .dk = 32, .dv = 48, .k_dtype = dt, .v_dtype = dt, .block_len = bl, .n_blocks = nb,
                              .max_seqs = 4, .max_seq_len = 200};
  size_t bytes;
  cr_assert_eq(heed_kv_cache_bytes(rt, &cfg, &bytes, NULL), HEED_OK);
  *storage = aligned_alloc(64, bytes);
  heed_kv_cache *c;
  heed_error e = {0};
  cr_assert_eq(heed_kv_cache_create(rt, &cfg, *storage, bytes, &c, &e), HEED_OK, "%s", e.msg);
  return c;
}

/* Token t's K for head h as stored, read back through the documented layout. */
static float stored_k(heed_kv_cache *c, int seq, unsigned t, unsigned h, unsigned d) {
  const heed_kv_cache_config *g = heed_kv_cache_get_config(c);
  const uint32_t *blocks;
  unsigned nb;
  cr_assert_eq(heed_kv_seq_blocks(c, seq, &blocks, &nb), HEED_OK);
  const char *blk = (const char *)heed_kv_cache_storage(c) + blocks[t / g->block_len] * heed_kv_cache_block_bytes(c);
  size_t row = t % g->block_len; /* K is [heads][block_len/16][dk][16] */
  size_t idx = (size_t)h * g->dk * g->block_len + (row / 16) * 16 * g->dk + (size_t)d * 16 + row % 16;
  if (g->k_dtype == HEED_DTYPE_F32) return ((const float *)blk)[idx];
  if (g->k_dtype == HEED_DTYPE_F16) return heed_f16_to_f32(((const heed_f16 *)blk)[idx]);
  return heed_bf16_to_f32(((const heed_bf16 *)blk)[idx]);
}

static void fill(float *x, size_t n, float base) {
  for (size_t i = 0; i < n; i++) x[i] = base + (float)(i % 97) * 0.25f;
}

/* The float types, read from the raw storage (quantized caches: test_attention). */
Test(kv_cache, layout_and_append_across_blocks, .init = setup, .fini = teardown) {
  for (int dt = 0; dt < HEED_DTYPE_FLOAT_COUNT; dt++) {
    void *st;
    heed_kv_cache *c = make((heed_dtype)dt, 16, 8, &st);
    int s;
    cr_assert_eq(heed_kv_seq_new(c, &s), HEED_OK);
    float k[40 * 2 * 32], v[40 * 2 * 48];
    fill(k, sizeof k / 4, 1.0f);
    fill(v, sizeof v / 4, -3.0f);
    cr_assert_eq(heed_kv_seq_append(c, s, 17, k, v), HEED_OK);
    cr_assert_eq(heed_kv_seq_append(c, s, 23, k + 17 * 64, v + 17 * 96), HEED_OK);
    cr_assert_eq(heed_kv_seq_len(c, s), 40);
    cr_assert_eq(heed_kv_cache_free_blocks(c), 8 - 3);
    for (unsigned t = 0; t < 40; t++)
      for (unsigned h = 0; h < 2; h++)
        for (unsigned d = 0; d < 32; d += 7) {
          float want = k[(t * 2 + h) * 32 + d];
          if (dt == HEED_DTYPE_F16) want = heed_f16_to_f32(heed_f32_to_f16(want));
          if (dt == HEED_DTYPE_BF16) want = heed_bf16_to_f32(heed_f32_to_bf16(want));
          cr_assert_eq(stored_k(c, s, t, h, d), want, "%s t=%u h=%u d=%u", heed_dtype_name((heed_dtype)dt), t, h, d);
        }
    heed_kv_cache_destroy(c);
    free(st);
  }
}

Test(kv_cache, k_and_v_types_are_independent, .init = setup, .fini = teardown) {
  heed_kv_cache_config cfg = {.n_kv_heads = 2, .dk = 32, .dv = 48, .k_dtype = HEED_DTYPE_F16, .v_dtype = HEED_DTYPE_BF16,
                              .block_len = 16, .n_blocks = 4, .max_seqs = 1, .max_seq_len = 64};
  size_t bytes;
  cr_assert_eq(heed_kv_cache_bytes(rt, &cfg, &bytes, NULL), HEED_OK);
  cr_assert_eq(bytes, 4 * (2 * 16 * 32 * 2 + 2 * 16 * 48 * 2), "16-bit K and V, 64-aligned parts");
  void *st = aligned_alloc(64, bytes);
  heed_kv_cache *c;
  cr_assert_eq(heed_kv_cache_create(rt, &cfg, st, bytes, &c, NULL), HEED_OK);
  int s;
  heed_kv_seq_new(c, &s);
  float k[3 * 64], v[3 * 96];
  fill(k, 3 * 64, 1.0f);
  fill(v, 3 * 96, 1.001f);
  cr_assert_eq(heed_kv_seq_append(c, s, 3, k, v), HEED_OK);
  const char *blk = (const char *)st;
  size_t v_off = 2 * 16 * 32 * 2; /* K of both heads, f16 */
  /* token 2, head 1, dim 5 of V: bf16 at V + (head*16 + row)*48 + dim */
  heed_bf16 got = ((const heed_bf16 *)(blk + v_off))[(1 * 16 + 2) * 48 + 5];
  cr_assert_eq(got, heed_f32_to_bf16(v[(2 * 2 + 1) * 48 + 5]));
  cr_assert_eq(stored_k(c, s, 2, 1, 5), heed_f16_to_f32(heed_f32_to_f16(k[(2 * 2 + 1) * 32 + 5])));
  heed_kv_cache_destroy(c);
  free(st);
}

Test(kv_cache, fork_shares_blocks_and_copies_on_the_first_divergent_write, .init = setup, .fini = teardown) {
  void *st;
  heed_kv_cache *c = make(HEED_DTYPE_F32, 16, 8, &st);
  int a, b;
  float k[64 * 32], v[64 * 48];
  fill(k, sizeof k / 4, 0.0f);
  fill(v, sizeof v / 4, 0.0f);
  cr_assert_eq(heed_kv_seq_new(c, &a), HEED_OK);
  cr_assert_eq(heed_kv_seq_append(c, a, 20, k, v), HEED_OK); /* a full block and 4 rows of a second */
  cr_assert_eq(heed_kv_seq_fork(c, a, &b), HEED_OK);
  const uint32_t *ba, *bb;
  unsigned na, nb;
  heed_kv_seq_blocks(c, a, &ba, &na);
  heed_kv_seq_blocks(c, b, &bb, &nb);
  cr_assert_eq(na, 2);
  cr_assert_arr_eq(ba, bb, 2 * sizeof *ba, "fork copies the table, not the data");
  cr_assert_eq(heed_kv_block_refs(c, ba[0]), 2);
  cr_assert_eq(heed_kv_block_refs(c, ba[1]), 2);
  cr_assert_eq(heed_kv_cache_free_blocks(c), 6);
  /* b diverges: its shared, partly filled block is copied first; a's data stays. */
  float k2[32 * 2], v2[48 * 2];
  fill(k2, 64, 100.0f);
  fill(v2, 96, 100.0f);
  cr_assert_eq(heed_kv_seq_append(c, b, 1, k2, v2), HEED_OK);
  heed_kv_seq_blocks(c, a, &ba, &na);
  heed_kv_seq_blocks(c, b, &bb, &nb);
  cr_assert_eq(ba[0], bb[0], "the full block stays shared");
  cr_assert_neq(ba[1], bb[1], "the written block is b's own copy");
  cr_assert_eq(heed_kv_block_refs(c, ba[0]), 2);
  cr_assert_eq(heed_kv_block_refs(c, ba[1]), 1);
  cr_assert_eq(heed_kv_block_refs(c, bb[1]), 1);
  for (unsigned t = 16; t < 20; t++) cr_assert_eq(stored_k(c, b, t, 1, 3), stored_k(c, a, t, 1, 3), "copied rows");
  cr_assert_eq(stored_k(c, b, 20, 0, 0), 100.0f);
  cr_assert_eq(heed_kv_seq_len(c, a), 20);
  cr_assert_eq(heed_kv_seq_len(c, b), 21);
  /* a appends into its (now private) block in place: no new block. */
  uint32_t before = heed_kv_cache_free_blocks(c);
  cr_assert_eq(heed_kv_seq_append(c, a, 1, k, v), HEED_OK);
  cr_assert_eq(heed_kv_cache_free_blocks(c), before);
  /* Freeing both returns every block. */
  cr_assert_eq(heed_kv_seq_free(c, a), HEED_OK);
  cr_assert_eq(heed_kv_block_refs(c, bb[0]), 1);
  cr_assert_eq(heed_kv_seq_free(c, b), HEED_OK);
  cr_assert_eq(heed_kv_cache_free_blocks(c), 8);
  cr_assert_eq(heed_kv_seq_len(c, a), -1);
  heed_kv_cache_destroy(c);
  free(st);
}

Test(kv_cache, truncate_rolls_back_and_releases_blocks, .init = setup, .fini = teardown) {
  void *st;
  heed_kv_cache *c = make(HEED_DTYPE_F16, 16, 8, &st);
  int a, b;
  float k[40 * 2 * 32], v[40 * 2 * 48];
  fill(k, sizeof k / 4, 0.5f);
  fill(v, sizeof v / 4, 0.5f);
  heed_kv_seq_new(c, &a);
  cr_assert_eq(heed_kv_seq_append(c, a, 40, k, v), HEED_OK);
  cr_assert_eq(heed_kv_seq_truncate(c, a, 17), HEED_OK);
  cr_assert_eq(heed_kv_seq_len(c, a), 17);
  cr_assert_eq(heed_kv_cache_free_blocks(c), 6, "third block released");
  /* A shared block that is truncated into and appended to is copied, not overwritten. */
  cr_assert_eq(heed_kv_seq_fork(c, a, &b), HEED_OK);
  cr_assert_eq(heed_kv_seq_truncate(c, b, 10), HEED_OK);
  float k2[64], v2[96];
  fill(k2, 64, 9.0f);
  fill(v2, 96, 9.0f);
  cr_assert_eq(heed_kv_seq_append(c, b, 1, k2, v2), HEED_OK);
  cr_assert_eq(stored_k(c, b, 10, 0, 0), 9.0f);
  cr_assert_eq(stored_k(c, a, 10, 0, 0), heed_f16_to_f32(heed_f32_to_f16(k[10 * 64])), "a keeps its token 10");
  cr_assert_eq(heed_kv_seq_truncate(c, a, 18), HEED_E_RANGE);
  cr_assert(strstr(heed_kv_cache_last_error(c), "holds 17"), "%s", heed_kv_cache_last_error(c));
  cr_assert_eq(heed_kv_seq_truncate(c, a, 0), HEED_OK);
  cr_assert_eq(heed_kv_seq_len(c, a), 0);
  heed_kv_cache_destroy(c);
  free(st);
}

Test(kv_cache, bad_input_writes_nothing, .init = setup, .fini = teardown) {
  void *st;
  heed_kv_cache *c = make(HEED_DTYPE_F32, 16, 2, &st);
  int a;
  heed_kv_seq_new(c, &a);
  float k[40 * 64], v[40 * 96];
  fill(k, sizeof k / 4, 0.0f);
  fill(v, sizeof v / 4, 0.0f);
  cr_assert_eq(heed_kv_seq_append(c, a, 5, k, v), HEED_OK);
  k[3 * 64 + 32 + 7] = NAN; /* token 3, head 1, dim 7 */
  cr_assert_eq(heed_kv_seq_append(c, a, 5, k, v), HEED_E_INVALID);
  cr_assert(strstr(heed_kv_cache_last_error(c), "token 3 (position 8), head 1, dim 7"), "%s", heed_kv_cache_last_error(c));
  cr_assert_eq(heed_kv_seq_len(c, a), 5, "nothing appended");
  k[3 * 64 + 32 + 7] = 0;
  v[0] = INFINITY;
  cr_assert_eq(heed_kv_seq_append(c, a, 1, k, v), HEED_E_INVALID);
  cr_assert(strstr(heed_kv_cache_last_error(c), "V of token 0"), "%s", heed_kv_cache_last_error(c));
  v[0] = 0;
  cr_assert_eq(heed_kv_seq_append(c, a, 30, k, v), HEED_E_NOMEM, "35 tokens need 3 blocks of 16; there are 2");
  cr_assert(strstr(heed_kv_cache_last_error(c), "needs 2 free blocks; 1 are free"), "%s", heed_kv_cache_last_error(c));
  cr_assert_eq(heed_kv_seq_len(c, a), 5);
  cr_assert_eq(heed_kv_seq_append(c, 3, 1, k, v), HEED_E_INVALID);
  cr_assert(strstr(heed_kv_cache_last_error(c), "sequence 3 does not exist"));
  cr_assert_eq(heed_kv_seq_append(c, -1, 1, k, v), HEED_E_INVALID);
  cr_assert_eq(heed_kv_seq_append(c, a, 1, NULL, v), HEED_E_INVALID);
  int ids[4];
  for (int i = 0; i < 3; i++) cr_assert_eq(heed_kv_seq_new(c, &ids[i]), HEED_OK);
  cr_assert_eq(heed_kv_seq_new(c, &ids[3]), HEED_E_NOMEM, "4 slots in use");
  heed_kv_cache_destroy(c);
  free(st);
}

Test(kv_cache, bad_configs_name_the_value, .init = setup, .fini = teardown) {
  heed_kv_cache_config ok = {.n_kv_heads = 2, .dk = 64, .dv = 64, .k_dtype = HEED_DTYPE_F16, .v_dtype = HEED_DTYPE_BF16,
                             .block_len = 0, .n_blocks = 4,
                             .max_seqs = 2, .max_seq_len = 100};
  size_t bytes;
  unsigned bl;
  cr_assert_eq(heed_kv_cache_bytes(rt, &ok, &bytes, &bl), HEED_OK);
  heed_tile_plan plan;
  heed_runtime_tile_plan(rt, 64, 64, HEED_DTYPE_F16, &plan);
  cr_assert_eq(bl, plan.kv_block, "block_len 0 takes the plan's");
  cr_assert_eq(bytes % 64, 0);
  struct {
    heed_kv_cache_config cfg;
    const char *needle;
  } bad[] = {
      {ok, "dk=100"}, {ok, "dv=512"}, {ok, "block_len=24"}, {ok, "n_kv_heads=0"}, {ok, "n_blocks=0"}, {ok, "max_seqs=0"},
      {ok, "v_dtype=7"},
  };
  bad[0].cfg.dk = 100;
  bad[1].cfg.dv = 512;
  bad[2].cfg.block_len = 24;
  bad[3].cfg.n_kv_heads = 0;
  bad[4].cfg.n_blocks = 0;
  bad[5].cfg.max_seqs = 0;
  bad[6].cfg.v_dtype = (heed_dtype)7;
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    heed_kv_cache *c = (heed_kv_cache *)0x1;
    heed_error e = {0};
    char storage[64] __attribute__((aligned(64)));
    cr_assert_eq(heed_kv_cache_create(rt, &bad[i].cfg, storage, sizeof storage, &c, &e), HEED_E_INVALID);
    cr_assert_null(c);
    cr_assert(strstr(e.msg, bad[i].needle), "'%s' lacks '%s'", e.msg, bad[i].needle);
  }
  heed_kv_cache *c;
  heed_error e = {0};
  void *st = aligned_alloc(64, bytes);
  cr_assert_eq(heed_kv_cache_create(rt, &ok, st, bytes - 1, &c, &e), HEED_E_TOO_SMALL);
  cr_assert_eq(heed_kv_cache_create(rt, &ok, (char *)st + 8, bytes, &c, &e), HEED_E_INVALID);
  cr_assert(strstr(e.msg, "64-byte aligned"));
  free(st);
}

/* max_seq_len near 2^32: the block table's length was computed in 32 bits and
 * wrapped to 0 or 1 entries, and appends wrote past it (found by fuzz_kv_config,
 * fuzz/corpus/kv_config/crash-max-seq-len-wrap). A table never needs more
 * entries than the pool has blocks. */
Test(kv_cache, max_seq_len_near_2_to_the_32, .init = setup, .fini = teardown) {
  static const heed_dtype types[] = {HEED_DTYPE_F16, HEED_DTYPE_Q8};
  for (int i = 0; i < 2; i++) {
    heed_kv_cache_config cfg = {.n_kv_heads = 1, .dk = 32, .dv = 32, .k_dtype = types[i], .v_dtype = types[i],
                                .block_len = 16, .n_blocks = 4, .max_seqs = 2, .max_seq_len = 0xffffffffu};
    size_t bytes;
    cr_assert_eq(heed_kv_cache_bytes(rt, &cfg, &bytes, NULL), HEED_OK);
    void *st = aligned_alloc(64, bytes);
    heed_kv_cache *c;
    heed_error e = {0};
    cr_assert_eq(heed_kv_cache_create(rt, &cfg, st, bytes, &c, &e), HEED_OK, "%s", e.msg);
    int a, b;
    cr_assert_eq(heed_kv_seq_new(c, &a), HEED_OK);
    cr_assert_eq(heed_kv_seq_new(c, &b), HEED_OK);
    float k[80 * 32], v[80 * 32];
    fill(k, 80 * 32, 1.0f);
    fill(v, 80 * 32, -1.0f);
    const unsigned fits = i ? 64 + 15 : 64; /* a quantized cache keeps its last 15 in the residual */
    cr_assert_eq(heed_kv_seq_append(c, a, fits, k, v), HEED_OK, "%s", heed_kv_cache_last_error(c));
    cr_assert_eq(heed_kv_seq_append(c, a, 1, k, v), HEED_E_NOMEM, "the pool is full");
    cr_assert_eq(heed_kv_seq_len(c, a), fits);
    float rk[80 * 32], rv[80 * 32];
    cr_assert_eq(heed_kv_seq_read(c, a, 0, fits, rk, rv), HEED_OK);
    for (unsigned j = 0; j < fits * 32; j++) cr_assert(fabsf(rk[j] - k[j]) <= 0.02f * fabsf(k[j]) + 0.1f, "%u", j);
    cr_assert_eq(heed_kv_seq_append(c, b, 1, k, v), i ? HEED_OK : HEED_E_NOMEM);
    heed_kv_cache_destroy(c);
    free(st);
  }
}

/* Raw bytes written over a quantized cache's residual (NaN codes: 0x7e7e is
 * an f16 NaN) are refused when the residual seals, naming the cause, with
 * the sequence left as it was; the cache goes on serving (fuzz_kv_ops found
 * this as an internal error). */
Test(kv_cache, raw_bytes_over_a_residual_are_refused_at_its_seal, .init = setup, .fini = teardown) {
  void *st;
  heed_kv_cache *c = make(HEED_DTYPE_E4M3, 16, 3, &st);
  size_t bytes, pool = (size_t)3 * heed_kv_cache_block_bytes(c);
  heed_kv_cache_config cfg = *heed_kv_cache_get_config(c);
  cr_assert_eq(heed_kv_cache_bytes(rt, &cfg, &bytes, NULL), HEED_OK);
  int a;
  cr_assert_eq(heed_kv_seq_new(c, &a), HEED_OK);
  float k[16 * 64], v[16 * 96];
  fill(k, sizeof k / 4, -3.0f);
  fill(v, sizeof v / 4, 1.0f);
  cr_assert_eq(heed_kv_seq_append(c, a, 5, k, v), HEED_OK);
  cr_assert_gt(bytes, pool, "the residuals follow the pool");
  unsigned char *junk = malloc(bytes - pool);
  memset(junk, 0x7e, bytes - pool);
  cr_assert_eq(heed_kv_cache_storage_write(c, pool, bytes - pool, junk), HEED_OK);
  free(junk);
  cr_assert_eq(heed_kv_seq_append(c, a, 11, k, v), HEED_E_INVALID);
  cr_assert(strstr(heed_kv_cache_last_error(c), "raw bytes written into the storage"), "%s", heed_kv_cache_last_error(c));
  cr_assert_eq(heed_kv_seq_len(c, a), 5, "the sequence as it was");
  cr_assert_eq(heed_kv_cache_free_blocks(c), 3, "no block kept");
  cr_assert_eq(heed_kv_seq_truncate(c, a, 0), HEED_OK);
  cr_assert_eq(heed_kv_seq_append(c, a, 16, k, v), HEED_OK, "%s", heed_kv_cache_last_error(c));
  cr_assert_eq(heed_kv_cache_free_blocks(c), 2);
  heed_kv_cache_destroy(c);
  free(st);
}

/* Whole blocks out and back in (a server's disk tier): a block read from one
 * sequence and appended to another reads back the same, for float, quantized
 * and fp8 caches; appends at a non-block length, of a block holding inf or
 * NaN, or with no block free are refused and write nothing. */
Test(kv_cache, blocks_out_and_back_in, .init = setup, .fini = teardown) {
  static const heed_dtype types[] = {HEED_DTYPE_F32, HEED_DTYPE_F16, HEED_DTYPE_BF16, HEED_DTYPE_Q8, HEED_DTYPE_Q4,
                                     HEED_DTYPE_E4M3, HEED_DTYPE_E5M2};
  for (size_t ti = 0; ti < sizeof types / sizeof types[0]; ti++) {
    void *mem;
    heed_kv_cache *c = make(types[ti], 16, 8, &mem);
    const char *dn = heed_dtype_name(types[ti]);
    const size_t bb = heed_kv_cache_block_bytes(c);
    int a, b;
    cr_assert_eq(heed_kv_seq_new(c, &a), HEED_OK);
    float k[40 * 64], v[40 * 96];
    for (size_t i = 0; i < sizeof k / sizeof *k; i++) k[i] = sinf((float)i * 0.37f) * 3;
    for (size_t i = 0; i < sizeof v / sizeof *v; i++) v[i] = cosf((float)i * 0.11f) * 2;
    cr_assert_eq(heed_kv_seq_append(c, a, 40, k, v), HEED_OK, "%s", heed_kv_cache_last_error(c));
    uint8_t *blk = aligned_alloc(64, 2 * bb);
    cr_assert_eq(heed_kv_seq_block_read(c, a, 0, blk), HEED_OK);
    cr_assert_eq(heed_kv_seq_block_read(c, a, 1, blk + bb), HEED_OK);
    cr_assert_eq(heed_kv_seq_block_read(c, a, 2, blk), HEED_E_RANGE, "%s: block 2 holds 8 of 16 tokens", dn);
    cr_assert_eq(heed_kv_seq_new(c, &b), HEED_OK);
    const uint32_t free0 = heed_kv_cache_free_blocks(c);
    cr_assert_eq(heed_kv_seq_block_append(c, b, blk), HEED_OK, "%s: %s", dn, heed_kv_cache_last_error(c));
    cr_assert_eq(heed_kv_seq_block_append(c, b, blk + bb), HEED_OK);
    cr_assert_eq(heed_kv_seq_len(c, b), 32);
    cr_assert_eq(heed_kv_cache_free_blocks(c), free0 - 2);
    float ka[32 * 64], va[32 * 96], kb[32 * 64], vb[32 * 96];
    cr_assert_eq(heed_kv_seq_read(c, a, 0, 32, ka, va), HEED_OK);
    cr_assert_eq(heed_kv_seq_read(c, b, 0, 32, kb, vb), HEED_OK);
    cr_assert(!memcmp(ka, kb, sizeof ka) && !memcmp(va, vb, sizeof va), "%s: the appended blocks read back differently", dn);
    /* and attention over them gives the same bits: a's first two blocks by their table, b as a sequence */
    {
      const uint32_t *ta;
      unsigned nta;
      cr_assert_eq(heed_kv_seq_blocks(c, a, &ta, &nta), HEED_OK);
      heed_attn_params ap = {.n_q_heads = 4, .n_kv_heads = 2, .dk = 32, .dv = 48, .scale = 0.18f};
      heed_attn_decode_seq sa = {.kv = {.seq = -1, .blocks = ta, .n_tokens = 32}, .n_q = 1},
                           sb = {.kv = {.seq = b}, .n_q = 1};
      float q[4 * 32], oa[4 * 48], ob[4 * 48];
      for (int i = 0; i < 4 * 32; i++) q[i] = sinf((float)i);
      size_t wsb = 0, w2 = 0;
      cr_assert_eq(heed_attn_decode_workspace(rt, &ap, &sa, 1, &wsb), HEED_OK);
      cr_assert_eq(heed_attn_decode_workspace(rt, &ap, &sb, 1, &w2), HEED_OK);
      if (w2 > wsb) wsb = w2;
      void *ws = aligned_alloc(64, (wsb + 63) & ~(size_t)63);
      cr_assert_eq(heed_attn_decode(rt, c, &ap, &sa, 1, q, oa, NULL, ws, wsb), HEED_OK, "%s", heed_runtime_last_error(rt));
      cr_assert_eq(heed_attn_decode(rt, c, &ap, &sb, 1, q, ob, NULL, ws, wsb), HEED_OK, "%s", heed_runtime_last_error(rt));
      cr_assert(!memcmp(oa, ob, sizeof oa), "%s: attention over the appended blocks differs", dn);
      free(ws);
    }
    /* then the sequence goes on as any other */
    cr_assert_eq(heed_kv_seq_append(c, b, 3, k, v), HEED_OK);
    /* refusals */
    cr_assert_eq(heed_kv_seq_block_append(c, b, blk), HEED_E_INVALID, "%s: 35 tokens is not a block boundary", dn);
    cr_assert(strstr(heed_kv_cache_last_error(c), "35 tokens"), "%s", heed_kv_cache_last_error(c));
    cr_assert_eq(heed_kv_seq_len(c, b), 35);
    cr_assert_eq(heed_kv_seq_truncate(c, b, 32), HEED_OK);
    uint8_t *bad = aligned_alloc(64, bb);
    memcpy(bad, blk, bb);
    /* a value that is not finite where this type can hold one: the codes of a
     * float type, the scales of a quantized one */
    const heed_kv_cache_config *g = heed_kv_cache_get_config(c);
    const size_t codes = (size_t)g->n_kv_heads * g->block_len * g->dk * heed_dtype_bits(types[ti]) / 8;
    if (types[ti] == HEED_DTYPE_F32) memcpy(bad + 4, &(float){INFINITY}, 4);
    else if (types[ti] == HEED_DTYPE_F16) bad[3] = 0x7C, bad[2] = 0x00;
    else if (types[ti] == HEED_DTYPE_BF16) bad[3] = 0x7F, bad[2] = 0xC0;
    else if (types[ti] == HEED_DTYPE_E4M3) bad[5] = 0x7F;
    else if (types[ti] == HEED_DTYPE_E5M2) bad[5] = 0x7E;
    else { /* q8/q4: the first K scale, after the codes of both sides (64-byte aligned) */
      size_t off = bb;
      for (size_t o = codes; o < bb; o++) /* the scales start at the first 64-byte boundary past the V codes */
        if (o % 64 == 0 && o >= codes + (size_t)g->n_kv_heads * g->block_len * g->dv * heed_dtype_bits(types[ti]) / 8) {
          off = o;
          break;
        }
      cr_assert(off + 2 <= bb);
      bad[off] = 0x00, bad[off + 1] = 0x7C; /* f16 inf */
    }
    cr_assert_eq(heed_kv_seq_block_append(c, b, bad), HEED_E_INVALID, "%s: a block holding inf", dn);
    cr_assert(strstr(heed_kv_cache_last_error(c), "not finite"), "%s", heed_kv_cache_last_error(c));
    cr_assert_eq(heed_kv_seq_len(c, b), 32);
    cr_assert_eq(heed_kv_cache_free_blocks(c), free0 - 2);
    /* no block free: a and b hold 3 + 2, the rest taken by a third sequence */
    int d3;
    cr_assert_eq(heed_kv_seq_new(c, &d3), HEED_OK);
    while (heed_kv_cache_free_blocks(c)) cr_assert_eq(heed_kv_seq_block_append(c, d3, blk), HEED_OK);
    cr_assert_eq(heed_kv_seq_block_append(c, b, blk), HEED_E_NOMEM);
    cr_assert_eq(heed_kv_seq_len(c, b), 32);
    free(bad), free(blk);
    heed_kv_cache_destroy(c);
    free(mem);
  }
}
