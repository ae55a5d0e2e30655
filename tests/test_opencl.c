/* The OpenCL backend on the first OpenCL device (PoCL in CI): its program
 * and binary cache, compiler errors, device limits, caches in device memory
 * and their layout against the CPU's. Attention numerics are in
 * test_attention.c, which runs every case on this backend too. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "backends/opencl/cl_backend.h"
#include "runtime/internal.h"
#include "heed/attention.h"
#include "heed/bench.h"
#include "test_util.h"

/* NULL when this machine has no OpenCL device: the x86-64 suite must have
 * one (setup installs PoCL); under qemu-aarch64 there is none. */
static heed_runtime *open_cl_env(int read_env) {
  heed_runtime_options o;
  heed_runtime_options_init(&o);
  o.flags = read_env ? 0 : HEED_RUNTIME_IGNORE_ENV;
  o.backend = HEED_BACKEND_OPENCL;
  heed_runtime *rt = NULL;
  heed_error e = {0};
  heed_status st = heed_runtime_open(&o, &rt, &e);
#if defined(__x86_64__)
  cr_assert_eq(st, HEED_OK, "the native suite runs on PoCL (scripts/setup.sh installs it): %s", e.msg);
#else
  if (st == HEED_E_NOT_FOUND) return NULL;
  cr_assert_eq(st, HEED_OK, "%s", e.msg);
#endif
  return rt;
}

static heed_runtime *open_cl(void) { return open_cl_env(0); }

static heed_runtime *open_cpu(void) {
  heed_runtime_options o;
  heed_runtime_options_init(&o);
  o.flags = HEED_RUNTIME_IGNORE_ENV | HEED_RUNTIME_NO_OPENCL;
  heed_runtime *rt = NULL;
  cr_assert_eq(heed_runtime_open(&o, &rt, NULL), HEED_OK);
  return rt;
}

/* A private cache directory for this test process. */
static void fresh_cache_dir(char *dir, size_t cap) {
  snprintf(dir, cap, "/tmp/heed-cl-test-XXXXXX");
  cr_assert_not_null(mkdtemp(dir));
  setenv("XDG_CACHE_HOME", dir, 1);
}

static int file_exists(const char *p) {
  struct stat st;
  return stat(p, &st) == 0 && st.st_size > 0;
}

/* A description is as long as its device name needs (a 167-character one
 * was cut at "kernels from the bina" on PoCL over a Zen 5). */
Test(opencl, a_long_device_name_is_described_whole) {
  heed_cl_device_info d = {0};
  for (int i = 0; i < 230; i++) d.device_name[i] = (char)('a' + i % 26);
  heed_strlcpy(d.platform_name, "Portable Computing Language", sizeof d.platform_name);
  heed_strlcpy(d.driver_version, "3.1+debian", sizeof d.driver_version);
  char buf[1024];
  int n = heed_cl_describe(&d, 64, 16, 1 << 20, "from the binary cache", buf, sizeof buf);
  cr_assert_eq((size_t)n, strlen(buf));
  cr_assert(n > 300, "%d", n);
  cr_assert(strstr(buf, d.device_name), "%s", buf);
  const char *tail = "kernels from the binary cache";
  cr_assert_str_eq(buf + n - strlen(tail), tail);
  cr_assert_eq(heed_cl_describe(&d, 64, 16, 1 << 20, "from the binary cache", NULL, 0), n, "sized without a buffer");
  /* The runtime keeps the backend's whole description, however long. */
  heed_runtime *rt = open_cl();
  if (!rt) cr_skip_test("no OpenCL device");
  heed_cl_build_info b;
  cr_assert_eq(heed_cl_runtime_build_info(rt, &b), HEED_OK);
  const heed_cl_device_info *di = NULL;
  const heed_topology *t = heed_runtime_topology(rt);
  for (unsigned i = 0; i < heed_topology_n_cl_devices(t); i++)
    if (strcmp(heed_topology_get_cl_device(t, i)->device_name, b.device) == 0) di = heed_topology_get_cl_device(t, i);
  cr_assert_not_null(di);
  n = heed_cl_describe(di, b.wg, b.rows, b.local_mem, b.from_cache ? "from the binary cache" : "compiled", buf, sizeof buf);
  cr_assert_str_eq(heed_runtime_backend_description(rt), buf);
  heed_runtime_close(rt);
}

Test(opencl, second_start_loads_the_binary_cache) {
  char dir[64];
  fresh_cache_dir(dir, sizeof dir);
  heed_runtime *rt = open_cl();
  if (!rt) cr_skip_test("no OpenCL device");
  heed_cl_build_info a, b;
  cr_assert_eq(heed_cl_runtime_build_info(rt, &a), HEED_OK);
  cr_assert_eq(a.from_cache, 0, "a fresh cache directory cannot hold the binary");
  cr_assert(strncmp(a.cache_path, dir, strlen(dir)) == 0, "%s is not under %s", a.cache_path, dir);
  cr_assert(file_exists(a.cache_path), "no binary at %s", a.cache_path);
  cr_assert(strstr(a.options, "-DWG=") && strstr(a.options, "-DROWS="), "%s", a.options);
  cr_assert(strstr(heed_runtime_backend_description(rt), "compiled"), "%s", heed_runtime_backend_description(rt));
  heed_runtime_close(rt);
  rt = open_cl();
  cr_assert_eq(heed_cl_runtime_build_info(rt, &b), HEED_OK);
  cr_assert_eq(b.from_cache, 1, "the second start must load %s", b.cache_path);
  cr_assert_str_eq(a.cache_path, b.cache_path);
  cr_assert(strstr(heed_runtime_backend_description(rt), "binary cache"), "%s", heed_runtime_backend_description(rt));
  /* A source that changes gets another key: rebuilt, then cached in turn. */
  const char *v1 = "__kernel void k(__global float *x) { x[get_global_id(0)] = 1.0f; }\n";
  const char *v2 = "__kernel void k(__global float *x) { x[get_global_id(0)] = 2.0f; }\n";
  int from = -1;
  heed_error e = {0};
  cr_assert_eq(heed_cl_build_source(rt, v1, &from, &e), HEED_OK, "%s", e.msg);
  cr_assert_eq(from, 0);
  cr_assert_eq(heed_cl_build_source(rt, v1, &from, &e), HEED_OK, "%s", e.msg);
  cr_assert_eq(from, 1, "the same source again comes from the cache");
  cr_assert_eq(heed_cl_build_source(rt, v2, &from, &e), HEED_OK, "%s", e.msg);
  cr_assert_eq(from, 0, "a changed source is rebuilt");
  heed_runtime_close(rt);
  /* A corrupt binary is not trusted: the start rebuilds from source. */
  FILE *f = fopen(b.cache_path, "wb");
  cr_assert_not_null(f);
  fputs("not a program binary", f);
  fclose(f);
  rt = open_cl();
  cr_assert_eq(heed_cl_runtime_build_info(rt, &b), HEED_OK);
  cr_assert_eq(b.from_cache, 0);
  heed_runtime_close(rt);
}

Test(opencl, a_broken_kernel_reports_its_compiler_log) {
  char dir[64];
  fresh_cache_dir(dir, sizeof dir);
  heed_runtime *rt = open_cl();
  if (!rt) cr_skip_test("no OpenCL device");
  int from = -1;
  heed_error e = {0};
  const char *bad = "__kernel void k(__global float *x) { x[0] = undeclared_thing_42; }\n";
  heed_status st = heed_cl_build_source(rt, bad, &from, &e);
  cr_assert_eq(st, HEED_E_OPENCL);
  cr_assert(strstr(e.msg, "CL_BUILD_PROGRAM_FAILURE"), "%s", e.msg);
  cr_assert(strstr(e.msg, "compiler log") && strstr(e.msg, "undeclared_thing_42"), "the log names the culprit: %s", e.msg);
  heed_runtime_close(rt);
}

static heed_kv_cache_config cfg_of(heed_dtype kt, heed_dtype vt, unsigned dk, unsigned dv) {
  return (heed_kv_cache_config){.n_kv_heads = 2, .dk = dk, .dv = dv, .k_dtype = kt, .v_dtype = vt, .block_len = 16,
                                .n_blocks = 32, .max_seqs = 4, .max_seq_len = 256};
}

/* Decode (3 queries, GQA 8/2: rows that span two row blocks) and prefill
 * through device cache c give what the CPU gives on the same tokens. */
static void same_as_cpu(heed_runtime *rt, heed_kv_cache *c, const char *what) {
  heed_runtime *cpu = open_cpu();
  const heed_kv_cache_config *cfg = heed_kv_cache_get_config(c);
  size_t bytes;
  cr_assert_eq(heed_kv_cache_bytes(cpu, cfg, &bytes, NULL), HEED_OK);
  void *host = aligned_alloc(64, bytes);
  heed_kv_cache *hc;
  cr_assert_eq(heed_kv_cache_create(cpu, cfg, host, bytes, &hc, NULL), HEED_OK);
  enum { L = 45, H = 8, KH = 2, NQ = 3 };
  unsigned dk = cfg->dk, dv = cfg->dv;
  uint64_t rng = 99;
  float *k = malloc(sizeof(float) * L * KH * dk), *v = malloc(sizeof(float) * L * KH * dv);
  for (size_t i = 0; i < (size_t)L * KH * dk; i++) k[i] = tu_uniform(&rng) * 2.0f;
  for (size_t i = 0; i < (size_t)L * KH * dv; i++) v[i] = tu_uniform(&rng);
  int s;
  heed_kv_seq_new(c, &s), heed_kv_seq_new(hc, &s);
  cr_assert_eq(heed_kv_seq_append(c, s, L, k, v), HEED_OK, "%s", heed_kv_cache_last_error(c));
  cr_assert_eq(heed_kv_seq_append(hc, s, L, k, v), HEED_OK);
  heed_attn_params p = {.n_q_heads = H, .n_kv_heads = KH, .dk = dk, .dv = dv, .scale = 0.125f};
  float *q = malloc(sizeof(float) * L * H * dk), *o1 = malloc(sizeof(float) * L * H * dv), *o2 = malloc(sizeof(float) * L * H * dv);
  for (size_t i = 0; i < (size_t)L * H * dk; i++) q[i] = tu_uniform(&rng);
  heed_attn_decode_seq d = {.kv = {.seq = s}, .n_q = NQ};
  size_t wd, wp;
  heed_attn_decode_workspace(cpu, &p, &d, 1, &wd);
  heed_attn_prefill_workspace(cpu, &p, L, &wp);
  void *ws = malloc(wd > wp ? wd : wp);
  size_t wsb = wd > wp ? wd : wp;
  cr_assert_eq(heed_attn_decode(rt, c, &p, &d, 1, q, o1, NULL, ws, wsb), HEED_OK, "%s", heed_runtime_last_error(rt));
  cr_assert_eq(heed_attn_decode(cpu, hc, &p, &d, 1, q, o2, NULL, ws, wsb), HEED_OK);
  for (size_t i = 0; i < (size_t)NQ * H * dv; i++) cr_assert_float_eq(o1[i], o2[i], 2e-5, "%s: decode element %zu: %g vs %g", what, i, o1[i], o2[i]);
  heed_attn_seq sq = {.seq = s};
  cr_assert_eq(heed_attn_prefill(rt, c, &p, sq, 0, L, q, o1, NULL, ws, wsb), HEED_OK, "%s", heed_runtime_last_error(rt));
  cr_assert_eq(heed_attn_prefill(cpu, hc, &p, sq, 0, L, q, o2, NULL, ws, wsb), HEED_OK);
  for (size_t i = 0; i < (size_t)L * H * dv; i++) cr_assert_float_eq(o1[i], o2[i], 2e-5, "%s: prefill element %zu: %g vs %g", what, i, o1[i], o2[i]);
  free(k), free(v), free(q), free(o1), free(o2), free(ws), free(host);
  heed_kv_cache_destroy(hc);
  heed_runtime_close(cpu);
}

Test(opencl, device_limits_give_a_clear_status) {
  setenv("HEED_OPENCL_LOCAL_MEM", "8192", 1);
  heed_runtime *rt = open_cl_env(1);
  if (!rt) cr_skip_test("no OpenCL device");
  heed_cl_build_info bi;
  heed_cl_runtime_build_info(rt, &bi);
  cr_assert_eq(bi.local_mem, 8192);
  cr_assert_eq(bi.rows, 8, "a small local memory gets the 8-row variant");
  heed_kv_cache_config cfg = cfg_of(HEED_DTYPE_F16, HEED_DTYPE_F16, 256, 256);
  heed_kv_cache *c = (heed_kv_cache *)0x1;
  heed_error e = {0};
  cr_assert_eq(heed_kv_cache_create(rt, &cfg, NULL, 0, &c, &e), HEED_E_UNSUPPORTED);
  cr_assert_null(c);
  cr_assert(strstr(e.msg, "dk=256") && strstr(e.msg, "offers 8192"), "%s", e.msg);
  cfg = cfg_of(HEED_DTYPE_F16, HEED_DTYPE_F16, 64, 64);
  cr_assert_eq(heed_kv_cache_create(rt, &cfg, NULL, 0, &c, &e), HEED_OK, "head dim 64 fits: %s", e.msg);
  same_as_cpu(rt, c, "8 rows, 16-key tiles");
  heed_kv_cache_destroy(c);
  heed_runtime_close(rt);
  /* Too little for any head dim: refused at open. */
  setenv("HEED_OPENCL_LOCAL_MEM", "2048", 1);
  heed_runtime_options o;
  heed_runtime_options_init(&o);
  o.backend = HEED_BACKEND_OPENCL;
  rt = (heed_runtime *)0x1;
  cr_assert_eq(heed_runtime_open(&o, &rt, &e), HEED_E_UNSUPPORTED, "%s", e.msg);
  cr_assert_null(rt);
  cr_assert(strstr(e.msg, "dk=32") && strstr(e.msg, "offers 2048"), "%s", e.msg);
  setenv("HEED_OPENCL_LOCAL_MEM", "lots", 1);
  cr_assert_eq(heed_runtime_open(&o, &rt, &e), HEED_E_INVALID);
  cr_assert(strstr(e.msg, "HEED_OPENCL_LOCAL_MEM=lots"), "%s", e.msg);
  unsetenv("HEED_OPENCL_LOCAL_MEM");
  /* A cache larger than one device buffer may be: a status naming the size, nothing allocated. */
  rt = open_cl();
  cfg = cfg_of(HEED_DTYPE_F32, HEED_DTYPE_F32, 256, 256);
  cfg.n_blocks = 1u << 22; /* 2^22 blocks of 64 KiB: 256 GiB */
  cr_assert_eq(heed_kv_cache_create(rt, &cfg, NULL, 0, &c, &e), HEED_E_NOMEM);
  cr_assert(strstr(e.msg, "n_blocks=4194304") && strstr(e.msg, "more than one buffer"), "%s", e.msg);
  heed_runtime_close(rt);
}

Test(opencl, caches_and_runtimes_are_not_mixed_up) {
  heed_runtime *rt = open_cl();
  if (!rt) cr_skip_test("no OpenCL device");
  heed_runtime *cpu = open_cpu();
  heed_error e = {0};
  heed_kv_cache *c = NULL, *hc = NULL;
  heed_kv_cache_config cfg = cfg_of(HEED_DTYPE_F16, HEED_DTYPE_F16, 64, 64);
  size_t bytes;
  cr_assert_eq(heed_kv_cache_bytes(rt, &cfg, &bytes, NULL), HEED_OK);
  void *host = aligned_alloc(64, bytes);
  cr_assert_eq(heed_kv_cache_create(rt, &cfg, host, bytes, &c, &e), HEED_E_INVALID);
  cr_assert(strstr(e.msg, "accepted: NULL"), "%s", e.msg);
  cr_assert_eq(heed_kv_cache_create(rt, &cfg, NULL, 0, &c, &e), HEED_OK, "%s", e.msg);
  cr_assert(heed_kv_cache_on_device(c));
  cr_assert_null(heed_kv_cache_storage(c));
  cr_assert_eq(heed_kv_cache_create(cpu, &cfg, host, bytes, &hc, &e), HEED_OK, "%s", e.msg);
  int s;
  float k[2 * 64], v[2 * 64], q[4 * 64], out[4 * 64];
  for (int i = 0; i < 2 * 64; i++) k[i] = v[i] = 0.5f;
  for (int i = 0; i < 4 * 64; i++) q[i] = 0.1f, out[i] = 42.0f;
  heed_kv_seq_new(c, &s);
  heed_kv_seq_new(hc, &s);
  cr_assert_eq(heed_kv_seq_append(c, 0, 1, k, v), HEED_OK);
  cr_assert_eq(heed_kv_seq_append(hc, 0, 1, k, v), HEED_OK);
  heed_attn_params p = {.n_q_heads = 4, .n_kv_heads = 2, .dk = 64, .dv = 64, .scale = 0.125f};
  heed_attn_decode_seq d = {.kv = {.seq = 0}, .n_q = 1};
  size_t wsb;
  heed_attn_decode_workspace(cpu, &p, &d, 1, &wsb);
  void *ws = malloc(wsb);
  cr_assert_eq(heed_attn_decode(rt, hc, &p, &d, 1, q, out, NULL, ws, wsb), HEED_E_INVALID);
  cr_assert(strstr(heed_runtime_last_error(rt), "host memory"), "%s", heed_runtime_last_error(rt));
  cr_assert_eq(heed_attn_decode(cpu, c, &p, &d, 1, q, out, NULL, ws, wsb), HEED_E_INVALID);
  cr_assert(strstr(heed_runtime_last_error(cpu), "another runtime"), "%s", heed_runtime_last_error(cpu));
  cr_assert_eq(out[0], 42.0f, "a refused call writes nothing");
  /* storage access out of range */
  char b[16];
  cr_assert_eq(heed_kv_cache_storage_read(c, bytes - 8, 16, b), HEED_E_RANGE);
  cr_assert(strstr(heed_kv_cache_last_error(c), "the storage has"), "%s", heed_kv_cache_last_error(c));
  cr_assert_eq(heed_kv_cache_storage_write(c, 0, 16, NULL), HEED_E_INVALID);
  heed_kv_cache_destroy(c);
  heed_kv_cache_destroy(hc);
  free(host), free(ws);
  heed_runtime_close(cpu);
  heed_runtime_close(rt);
}

/* Rows [0, rows) of residual slot `slot` in two copies of a quantized
 * cache's storage (heed/attention.h: after the pool, one block per slot in
 * the block layout, f16 for a quantized side), element by element: rows past
 * them are scratch nobody reads. */
static void same_residual_rows(const char *x, const char *y, const heed_kv_cache_config *cfg, size_t pool, size_t slot_bytes,
                               int slot, unsigned rows) {
  size_t ek = heed_dtype_is_quant(cfg->k_dtype) ? 2 : heed_dtype_bits(cfg->k_dtype) / 8,
         ev = heed_dtype_is_quant(cfg->v_dtype) ? 2 : heed_dtype_bits(cfg->v_dtype) / 8;
  size_t bl = cfg->block_len, k_head = bl * cfg->dk * ek, v_head = bl * cfg->dv * ev;
  size_t v_off = (cfg->n_kv_heads * k_head + 63) / 64 * 64, base = pool + (size_t)slot * slot_bytes;
  for (size_t h = 0; h < cfg->n_kv_heads; h++)
    for (size_t r = 0; r < rows; r++) {
      for (size_t d = 0; d < cfg->dk; d++) {
        size_t at = base + h * k_head + ((r / 16 * cfg->dk + d) * 16 + r % 16) * ek;
        cr_assert(!memcmp(x + at, y + at, ek), "slot %d head %zu: K of row %zu, channel %zu differs", slot, h, r, d);
      }
      size_t at = base + v_off + h * v_head + r * cfg->dv * ev;
      cr_assert(!memcmp(x + at, y + at, cfg->dv * ev), "slot %d head %zu: V of row %zu differs", slot, h, r);
    }
}

/* The same appends, forks and truncates on a CPU cache and a device cache
 * leave the same bytes (f16 and bf16 round to nearest even on both), and
 * blocks written by one are read by the other's attention. */
Test(opencl, one_layout_on_both_backends) {
  heed_runtime *rt = open_cl();
  if (!rt) cr_skip_test("no OpenCL device");
  heed_runtime *cpu = open_cpu();
  static const heed_dtype types[][2] = {{HEED_DTYPE_F16, HEED_DTYPE_F16}, {HEED_DTYPE_BF16, HEED_DTYPE_F32},
                                        {HEED_DTYPE_F32, HEED_DTYPE_BF16}, {HEED_DTYPE_Q8, HEED_DTYPE_Q4},
                                        {HEED_DTYPE_Q4, HEED_DTYPE_Q8}, {HEED_DTYPE_E4M3, HEED_DTYPE_E5M2},
                                        {HEED_DTYPE_Q4, HEED_DTYPE_BF16}};
  for (int ti = 0; ti < 7; ti++) {
    heed_kv_cache_config cfg = cfg_of(types[ti][0], types[ti][1], 96, 64);
    int quant = heed_dtype_is_quant(cfg.k_dtype) || heed_dtype_is_quant(cfg.v_dtype);
    size_t bytes;
    cr_assert_eq(heed_kv_cache_bytes(cpu, &cfg, &bytes, NULL), HEED_OK);
    void *host = aligned_alloc(64, bytes), *back = malloc(bytes);
    memset(host, 0, bytes);
    heed_kv_cache *dc, *hc;
    heed_error e = {0};
    cr_assert_eq(heed_kv_cache_create(rt, &cfg, NULL, 0, &dc, &e), HEED_OK, "%s", e.msg);
    cr_assert_eq(heed_kv_cache_create(cpu, &cfg, host, bytes, &hc, &e), HEED_OK, "%s", e.msg);
    uint64_t rng = 77 + ti;
    const unsigned steps[] = {37, 5, 1, 20};
    int a = 0, b = 1, s;
    heed_kv_seq_new(dc, &s), heed_kv_seq_new(hc, &s);
    for (int i = 0; i < 4; i++) {
      unsigned n = steps[i];
      float *k = malloc((size_t)n * 2 * 96 * 4), *v = malloc((size_t)n * 2 * 64 * 4);
      for (size_t j = 0; j < (size_t)n * 2 * 96; j++) k[j] = tu_uniform(&rng) * 3.0f;
      for (size_t j = 0; j < (size_t)n * 2 * 64; j++) v[j] = tu_uniform(&rng) * 1e-3f; /* small: f16 subnormals too */
      int seq = i == 3 ? b : a;
      cr_assert_eq(heed_kv_seq_append(dc, seq, n, k, v), HEED_OK, "%s", heed_kv_cache_last_error(dc));
      cr_assert_eq(heed_kv_seq_append(hc, seq, n, k, v), HEED_OK);
      free(k), free(v);
      if (i == 1) { /* fork inside a block: the next append to b copies it on the device (or its residual) */
        cr_assert_eq(heed_kv_seq_fork(dc, a, &b), HEED_OK);
        cr_assert_eq(heed_kv_seq_fork(hc, a, &b), HEED_OK);
      }
      if (i == 2) { /* into a full block: a quantized one goes back to the residual */
        cr_assert_eq(heed_kv_seq_truncate(dc, a, 30), HEED_OK, "%s", heed_kv_cache_last_error(dc));
        cr_assert_eq(heed_kv_seq_truncate(hc, a, 30), HEED_OK);
      }
    }
    cr_assert_eq(heed_kv_cache_free_blocks(dc), heed_kv_cache_free_blocks(hc));
    cr_assert_eq(heed_kv_cache_storage_read(dc, 0, bytes, back), HEED_OK);
    size_t pool = cfg.n_blocks * heed_kv_cache_block_bytes(hc);
    cr_assert(memcmp(back, host, pool) == 0, "K %s V %s: device and host pool blocks differ",
              heed_dtype_name(types[ti][0]), heed_dtype_name(types[ti][1]));
    cr_assert_eq(bytes > pool, quant, "residual blocks for a quantized cache only");
    for (int seq = 0; quant && seq < 2; seq++)
      same_residual_rows(back, host, &cfg, pool, (bytes - pool) / cfg.max_seqs, seq,
                         (unsigned)heed_kv_seq_len(hc, seq) % cfg.block_len);
    /* heed_kv_seq_read decodes a device cache as it does a host one */
    for (int seq = 0; seq < 2; seq++) {
      unsigned L = (unsigned)heed_kv_seq_len(hc, seq);
      float *k1 = malloc((size_t)L * 2 * 96 * 4), *v1 = malloc((size_t)L * 2 * 64 * 4), *k2 = malloc((size_t)L * 2 * 96 * 4),
            *v2 = malloc((size_t)L * 2 * 64 * 4);
      cr_assert_eq(heed_kv_seq_read(dc, seq, 0, L, k1, v1), HEED_OK, "%s", heed_kv_cache_last_error(dc));
      cr_assert_eq(heed_kv_seq_read(hc, seq, 0, L, k2, v2), HEED_OK);
      cr_assert(!memcmp(k1, k2, (size_t)L * 2 * 96 * 4) && !memcmp(v1, v2, (size_t)L * 2 * 64 * 4));
      free(k1), free(v1), free(k2), free(v2);
    }
    /* Host-written bytes into a fresh device cache, read through the host's block table. */
    heed_kv_cache *dc2;
    cr_assert_eq(heed_kv_cache_create(rt, &cfg, NULL, 0, &dc2, &e), HEED_OK);
    cr_assert_eq(heed_kv_cache_storage_write(dc2, 0, bytes, host), HEED_OK);
    const uint32_t *blocks;
    unsigned nb;
    heed_kv_seq_blocks(hc, b, &blocks, &nb);
    unsigned L = (unsigned)heed_kv_seq_len(hc, b);
    heed_attn_params p = {.n_q_heads = 4, .n_kv_heads = 2, .dk = 96, .dv = 64, .scale = 0.1f};
    /* a table over a quantized cache holds full blocks only: both sides read it */
    heed_attn_decode_seq ext = {.kv = {.seq = -1, .blocks = blocks, .n_tokens = quant ? L / 16 * 16 : L}, .n_q = 3};
    heed_attn_decode_seq own = quant ? ext : (heed_attn_decode_seq){.kv = {.seq = b}, .n_q = 3};
    float q[3 * 4 * 96], o1[3 * 4 * 64], o2[3 * 4 * 64];
    for (int i = 0; i < 3 * 4 * 96; i++) q[i] = tu_uniform(&rng);
    size_t wsb;
    heed_attn_decode_workspace(cpu, &p, &own, 1, &wsb);
    void *ws = malloc(wsb);
    cr_assert_eq(heed_attn_decode(cpu, hc, &p, &own, 1, q, o1, NULL, ws, wsb), HEED_OK);
    cr_assert_eq(heed_attn_decode(rt, dc2, &p, &ext, 1, q, o2, NULL, ws, wsb), HEED_OK, "%s", heed_runtime_last_error(rt));
    for (int i = 0; i < 3 * 4 * 64; i++) cr_assert_float_eq(o1[i], o2[i], 2e-6, "element %d: %g vs %g", i, o1[i], o2[i]);
    free(ws);
    if (quant) { /* raw writes into the residual region reach what append and read use */
      char *zero = calloc(1, bytes - pool);
      cr_assert_eq(heed_kv_cache_storage_write(dc, pool, bytes - pool, zero), HEED_OK);
      unsigned La = (unsigned)heed_kv_seq_len(dc, a), r0 = La / 16 * 16;
      float kk[16 * 2 * 96], vv[16 * 2 * 64];
      cr_assert_eq(heed_kv_seq_read(dc, a, r0, La - r0, kk, vv), HEED_OK);
      for (unsigned i = 0; i < (La - r0) * 2 * 96; i++) cr_assert_eq(kk[i], 0.0f, "K %u of the zeroed residual", i);
      for (unsigned i = 0; i < (La - r0) * 2 * 64; i++) cr_assert_eq(vv[i], 0.0f, "V %u of the zeroed residual", i);
      free(zero);
    }
    heed_kv_cache_destroy(dc2);
    heed_kv_cache_destroy(dc);
    heed_kv_cache_destroy(hc);
    free(host), free(back);
  }
  heed_runtime_close(cpu);
  heed_runtime_close(rt);
}

/* What the device offers is read at enumeration: fp16 and subgroups are
 * known (0 or 1) for a live device, and `heed info --json` carries them. */
Test(opencl, device_features_are_read) {
  heed_runtime *rt = open_cl();
  if (!rt) cr_skip_test("no OpenCL device");
  const heed_topology *t = heed_runtime_topology(rt);
  cr_assert_geq(heed_topology_n_cl_devices(t), 1);
  const heed_cl_device_info *d = heed_topology_get_cl_device(t, 0);
  cr_assert(d->has_fp16 == 0 || d->has_fp16 == 1, "fp16 %d", d->has_fp16);
  cr_assert(d->has_subgroups == 0 || d->has_subgroups == 1, "subgroups %d", d->has_subgroups);
  char *buf = NULL;
  size_t len = 0;
  FILE *f = open_memstream(&buf, &len);
  cr_assert_eq(heed_runtime_write_json(rt, f), HEED_OK);
  fclose(f);
  cr_assert(strstr(buf, "\"fp16\":") && strstr(buf, "\"subgroups\":"), "%s", buf);
  free(buf);
  heed_runtime_close(rt);
}

Test(opencl, the_bench_probes_the_device) {
  heed_runtime *rt = open_cl();
  if (!rt) cr_skip_test("no OpenCL device");
  heed_bench_options bo = {.repeats = 3, .probe_bytes = 8u << 20};
  heed_bench *b;
  heed_error e = {0};
  cr_assert_eq(heed_bench_create(rt, &bo, &b, &e), HEED_OK, "%s", e.msg);
  double bw = 0, fl = 0;
  cr_assert_eq(heed_bench_probe(b, HEED_LIMIT_DEVICE_READ_BANDWIDTH, &bw), HEED_OK, "%s", heed_bench_last_error(b));
  cr_assert_eq(heed_bench_probe(b, HEED_LIMIT_DEVICE_FMA_PEAK, &fl), HEED_OK, "%s", heed_bench_last_error(b));
  cr_assert(bw > 0.01 && isfinite(bw) && fl > 0.01 && isfinite(fl), "%g GB/s, %g GFLOP/s", bw, fl);
  heed_bench_destroy(b);
  heed_runtime_close(rt);
  /* the CPU backend has no device to probe */
  heed_runtime *cpu = open_cpu();
  cr_assert_eq(heed_bench_create(cpu, &bo, &b, &e), HEED_OK, "%s", e.msg);
  cr_assert_eq(heed_bench_probe(b, HEED_LIMIT_DEVICE_READ_BANDWIDTH, &bw), HEED_E_UNSUPPORTED);
  cr_assert(strstr(heed_bench_last_error(b), "cpu backend has no device"), "%s", heed_bench_last_error(b));
  heed_bench_destroy(b);
  heed_runtime_close(cpu);
}

#ifdef HEED_TEST_CLBLAST
#include "bench/bench_unfused_cl.h"

/* The bench's CLBlast baseline (SGEMM, softmax, SGEMM) computes the same
 * causal attention as heed's kernels on an f32 cache: prefill at an offset
 * (the causal mask inside the score rows) and decode (a GQA group per GEMM). */
Test(opencl, the_clblast_baseline_computes_the_same_attention) {
  heed_runtime *rt = open_cl();
  if (!rt) cr_skip_test("no OpenCL device");
  enum { H = 4, KH = 2, D = 64, L = 70, NQ = 20, Q0 = 50 };
  heed_kv_cache_config cfg = cfg_of(HEED_DTYPE_F32, HEED_DTYPE_F32, D, D);
  heed_kv_cache *c;
  heed_error e = {0};
  cr_assert_eq(heed_kv_cache_create(rt, &cfg, NULL, 0, &c, &e), HEED_OK, "%s", e.msg);
  uint64_t rng = 2024;
  float *k = malloc(sizeof(float) * L * KH * D), *v = malloc(sizeof(float) * L * KH * D);
  float *k32 = malloc(sizeof(float) * L * KH * D), *v32 = malloc(sizeof(float) * L * KH * D);
  for (int i = 0; i < L * KH * D; i++) k[i] = tu_uniform(&rng) * 2.0f, v[i] = tu_uniform(&rng);
  for (int t = 0; t < L; t++) /* the baseline's layout: [KH][L][D] */
    for (int h = 0; h < KH; h++) {
      memcpy(k32 + ((size_t)h * L + t) * D, k + ((size_t)t * KH + h) * D, D * sizeof(float));
      memcpy(v32 + ((size_t)h * L + t) * D, v + ((size_t)t * KH + h) * D, D * sizeof(float));
    }
  int s;
  heed_kv_seq_new(c, &s);
  cr_assert_eq(heed_kv_seq_append(c, s, L, k, v), HEED_OK);
  heed_cl_unfused *u = heed_cl_unfused_open(rt, k32, v32, H, KH, L, D, NQ);
  cr_assert_not_null(u);
  heed_attn_params p = {.n_q_heads = H, .n_kv_heads = KH, .dk = D, .dv = D, .scale = 0.125f};
  float q[NQ * H * D], o1[NQ * H * D], o2[NQ * H * D];
  for (int i = 0; i < NQ * H * D; i++) q[i] = tu_uniform(&rng);
  size_t wsb;
  heed_attn_prefill_workspace(rt, &p, NQ, &wsb);
  void *ws = malloc(wsb);
  heed_attn_seq sq = {.seq = s};
  cr_assert_eq(heed_attn_prefill(rt, c, &p, sq, Q0, NQ, q, o1, NULL, ws, wsb), HEED_OK, "%s", heed_runtime_last_error(rt));
  cr_assert_eq(heed_cl_unfused_run(u, Q0, NQ, p.scale, q, o2), 0);
  for (int i = 0; i < NQ * H * D; i++) cr_assert_float_eq(o1[i], o2[i], 1e-5, "prefill element %d: %g vs %g", i, o1[i], o2[i]);
  heed_attn_decode_seq d = {.kv = {.seq = s}, .n_q = 1};
  size_t wdb;
  heed_attn_decode_workspace(rt, &p, &d, 1, &wdb);
  void *wd = malloc(wdb);
  cr_assert_eq(heed_attn_decode(rt, c, &p, &d, 1, q, o1, NULL, wd, wdb), HEED_OK, "%s", heed_runtime_last_error(rt));
  cr_assert_eq(heed_cl_unfused_run(u, L - 1, 1, p.scale, q, o2), 0);
  for (int i = 0; i < H * D; i++) cr_assert_float_eq(o1[i], o2[i], 1e-5, "decode element %d: %g vs %g", i, o1[i], o2[i]);
  /* more queries than it was opened for: refused, not overrun */
  cr_assert_eq(heed_cl_unfused_run(u, 0, NQ + 1, p.scale, q, o2), -1);
  heed_cl_unfused_close(u);
  heed_kv_cache_destroy(c);
  free(k), free(v), free(k32), free(v32), free(ws), free(wd);
  heed_runtime_close(rt);
}
#endif
