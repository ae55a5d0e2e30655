/* fuzz/fuzz_attention.c - prefill and decode over caches of random shapes:
 * any head dims heed takes (32..256, dk != dv), 1..4 KV heads with GQA groups
 * up to 8, every K/V format and block length, sequences that share blocks
 * (forks, then appends: copy-on-write), truncated ones, raw NaN/Inf codes
 * written into the storage, caller block tables (seq < 0) with out-of-range
 * entries, tree masks, windows, soft-caps, sinks, extreme scales.
 *
 * Input: the cache's shape, how its sequences are filled, then up to 4 calls
 * (fuzz/fuzz_attn.h draws and checks each one; ISA chosen per call). */
#include "fuzz/fuzz_attn.h"

#define CACHE_FLOATS (1u << 17) /* K and V values one input may append */

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc, (void)argv;
  fz_open_runtimes();
  return 0;
}

/* n tokens of finite values into seq; a refusal (too large for the store, no blocks) is fine. */
static void fill(fz_in *in, fa_cache *x, int seq, unsigned n) {
  const heed_kv_cache_config *g = &x->g;
  size_t kn = (size_t)n * g->n_kv_heads * g->dk, vn = (size_t)n * g->n_kv_heads * g->dv;
  float *k = malloc(sizeof(float) * (kn ? kn : 1)), *v = malloc(sizeof(float) * (vn ? vn : 1));
  fz_fill fk = fz_fill_read(in, 0), fv = fz_fill_read(in, 0);
  fz_fill_apply(&fk, k, kn);
  fz_fill_apply(&fv, v, vn);
  heed_status st = heed_kv_seq_append(x->c, seq, n, k, v);
  if (st == HEED_E_RANGE) { /* values the store cannot hold: the same shape, tamer values */
    fk.amp = fv.amp = 1.0f;
    fz_fill_apply(&fk, k, kn);
    fz_fill_apply(&fv, v, vn);
    st = heed_kv_seq_append(x->c, seq, n, k, v);
  }
  FZ_CHECK(st == HEED_OK || st == HEED_E_NOMEM || st == HEED_E_RANGE, "fill append: %d %s", st,
           heed_kv_cache_last_error(x->c));
  free(k), free(v);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static const unsigned heads[] = {1, 1, 2, 4, 3};
  static const unsigned bls[] = {16, 16, 32, 64, 128, 256};
  static const unsigned kgroups[] = {0, 0, 16, 32, 64, 128, 256};
  static const unsigned vgroups[] = {0, 0, 16, 32, 64, 128, 256};
  fz_in in = {data, size};
  fa_cache x;
  memset(&x, 0, sizeof x);
  x.rt = fz_runtime(&in);
  heed_kv_cache_config g;
  memset(&g, 0, sizeof g);
  g.n_kv_heads = FZ_PICK(&in, heads);
  g.dk = 16 * fz_range(&in, 2, 16);
  g.dv = fz_bool(&in) ? g.dk : 16 * fz_range(&in, 2, 16);
  g.k_dtype = (heed_dtype)(fz_u8(&in) % HEED_DTYPE_COUNT);
  g.v_dtype = fz_bool(&in) ? g.k_dtype : (heed_dtype)(fz_u8(&in) % HEED_DTYPE_COUNT);
  g.block_len = FZ_PICK(&in, bls);
  g.k_group = FZ_PICK(&in, kgroups);
  g.v_group = FZ_PICK(&in, vgroups);
  if (g.k_group > g.block_len) g.k_group = 0;
  if (g.v_group && g.dv % g.v_group) g.v_group = 0;
  g.max_seqs = fz_range(&in, 1, 4);
  size_t per_tok = (size_t)g.n_kv_heads * (g.dk + g.dv);
  unsigned cap = (unsigned)(CACHE_FLOATS / per_tok); /* tokens all sequences may hold together */
  g.max_seq_len = fz_range(&in, 1, 1024);
  if (g.max_seq_len > cap) g.max_seq_len = cap ? cap : 1;
  g.n_blocks = fz_range(&in, 1, 24);
  if ((uint64_t)g.n_blocks * g.block_len > cap + g.block_len) g.n_blocks = cap / g.block_len + 1;

  size_t bytes = 0;
  FZ_CHECK(heed_kv_cache_bytes(x.rt, &g, &bytes, NULL) == HEED_OK, "bytes of a valid config");
  char *storage = fz_alloc64(bytes, 0);
  heed_error err;
  FZ_CHECK(heed_kv_cache_create(x.rt, &g, storage, bytes, &x.c, &err) == HEED_OK, "create: %s", err.msg);
  x.g = *heed_kv_cache_get_config(x.c);
  x.quant = heed_dtype_is_quant(g.k_dtype) || heed_dtype_is_quant(g.v_dtype);
  x.clean = 1;

  /* the sequences: appended, some forked and grown apart (copy-on-write), some truncated */
  unsigned n_seqs = fz_range(&in, 1, g.max_seqs);
  for (unsigned i = 0; i < n_seqs; i++) {
    uint8_t how = fz_u8(&in);
    int s = -1;
    if (i > 0 && how < 80) {
      FZ_CHECK(heed_kv_seq_fork(x.c, (int)(how % i), &s) == HEED_OK, "fork: %s", heed_kv_cache_last_error(x.c));
    } else {
      FZ_CHECK(heed_kv_seq_new(x.c, &s) == HEED_OK, "seq_new");
    }
    unsigned have = (unsigned)heed_kv_seq_len(x.c, s), room = g.max_seq_len - have;
    unsigned n = fz_range(&in, 0, room < 320 ? room : 320);
    fill(&in, &x, s, n);
    if (fz_u8(&in) >= 208) {
      unsigned len = (unsigned)heed_kv_seq_len(x.c, s);
      FZ_CHECK(heed_kv_seq_truncate(x.c, s, fz_range(&in, 0, len)) == HEED_OK, "truncate");
    }
  }
  /* raw bytes (NaN and Inf codes among them) into the storage */
  unsigned n_raw = fz_u8(&in) >= 224 ? fz_range(&in, 1, 8) : 0;
  for (unsigned i = 0; i < n_raw; i++) {
    uint8_t buf[16];
    size_t off = fz_u32(&in) % bytes, n = fz_range(&in, 1, 16);
    if (off + n > bytes) n = bytes - off;
    for (size_t k = 0; k < n; k++) buf[k] = fz_u8(&in);
    FZ_CHECK(heed_kv_cache_storage_write(x.c, off, n, buf) == HEED_OK, "storage_write");
    x.clean = 0;
  }

  unsigned calls = 1 + (fz_u8(&in) + 1u) % 4; /* 2 when the input has run out */
  for (unsigned i = 0; i < calls && (i == 0 || in.n); i++) {
    x.rt = fz_runtime(&in);
    if (fz_bool(&in) ^ (i & 1)) /* prefill, decode, ... when the input has run out */
      fa_decode(&in, &x);
    else
      fa_prefill(&in, &x);
  }
  heed_kv_cache_destroy(x.c);
  free(storage);
  return 0;
}
