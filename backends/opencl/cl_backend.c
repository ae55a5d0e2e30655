/* backends/opencl/cl_backend.c - the OpenCL backend: one context and one
 * in-order queue on one device, heed's kernels (the .cl files in kernels/, embedded at
 * build time) specialised for the device's limits and cached as a binary on
 * disk, KV caches in device memory, attention, and heed_spec's vocabulary
 * passes (kernels/spec.cl).
 *
 * Specialisation. The work-group size (WG) and the rows of one attention
 * work-group (ROWS) are build-time defines chosen from the device's limits;
 * head dims, storage types and tile lengths are arguments, so one program
 * serves every cache. Local memory is sized per call from dk, dv and the key
 * tile, which is the largest of 64, 32, 16 that fits.
 *
 * Binary cache. $XDG_CACHE_HOME/heed (or ~/.cache/heed) holds
 * opencl-<hash>.bin, the hash over platform, device, device and driver
 * versions, build options and source; a second start loads it instead of
 * compiling. A binary the driver refuses is rebuilt from source. */
#define CL_TARGET_OPENCL_VERSION 120
#include <CL/cl.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <math.h>
#include <stdatomic.h>
#include <time.h>
#include <unistd.h>

#include "attention/kv_internal.h"
#include "backends/opencl/cl_backend.h"
#include "runtime/backend.h"
#include "runtime/internal.h"
#include "runtime/opencl_enum.h"

extern const char heed_cl_source[];
extern const size_t heed_cl_source_len;

#define WG_MAX 64u
#define MAX_SPLITS 64u

/* A grow-only device buffer (scratch reused across calls). */
typedef struct dbuf {
  cl_mem m;
  size_t cap;
} dbuf;

typedef struct cl_ctx {
  cl_platform_id plat;
  cl_device_id dev;
  cl_context ctx;
  cl_command_queue q;
  heed_cl_device_info info;
  size_t local_mem;      /* what heed plans with */
  size_t max_wg;
  unsigned wg, rows;
  int profiling;
  cl_program prog;
  cl_kernel k_put, k_part, k_merge, k_probe, k_fma;
  cl_kernel k_scatter, k_vmax, k_vsum, k_vhist, k_vcol; /* spec.cl */
  size_t part_static;    /* local memory the attention kernel declares itself */
  heed_cl_build_info build;
  dbuf qb, out, lse, rec, info_b, tables, masks, omap, sinks, kin, vin, blocks, lay;
  dbuf probe_src, probe_sink;
  size_t probe_bytes;
  void *host;            /* grow-only host scratch for info, tables, masks, omap */
  size_t host_cap;
  atomic_int busy;       /* one call at a time: the scratch buffers are shared */
} cl_ctx;

/* Calls that use the shared scratch run one at a time per runtime; a second
 * concurrent one gets HEED_E_BUSY, as on the CPU backend. */
static heed_status enter(cl_ctx *c, heed_error *err, const char *what) {
  int idle = 0;
  if (atomic_compare_exchange_strong(&c->busy, &idle, 1)) return HEED_OK;
  return heed_err_set(err, HEED_E_BUSY, "opencl: %s while another call runs on this runtime", what);
}
static void leave(cl_ctx *c) { atomic_store(&c->busy, 0); }

/* The body of an entry point: `call` (a *_locked function) between enter and leave. */
#define LOCKED(ctx, err, what, call)            \
  do {                                          \
    heed_status st_ = enter((ctx), (err), what); \
    if (st_ != HEED_OK) return st_;             \
    st_ = (call);                               \
    leave(ctx);                                 \
    return st_;                                 \
  } while (0)

typedef struct cl_kv {
  cl_mem buf;
} cl_kv;

#define CL_FAIL(err, rc, ...) cl_fail(err, rc, __VA_ARGS__)

static heed_status cl_fail(heed_error *err, cl_int rc, const char *fmt, ...) HEED_PRINTF(3, 4);
static heed_status cl_fail(heed_error *err, cl_int rc, const char *fmt, ...) {
  char what[200];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(what, sizeof what, fmt, ap);
  va_end(ap);
  return heed_err_set(err, HEED_E_OPENCL, "opencl: %s: %s (%d)", what, heed_cl_error_name(rc), (int)rc);
}

/* ---------- buffers ---------- */

static heed_status dbuf_fit(cl_ctx *c, dbuf *b, size_t bytes, heed_error *err) {
  if (bytes == 0) bytes = 16;
  if (b->m && b->cap >= bytes) return HEED_OK;
  if (b->m) clReleaseMemObject(b->m);
  b->m = NULL;
  b->cap = 0;
  size_t cap = bytes + bytes / 4;
  cl_int rc;
  b->m = clCreateBuffer(c->ctx, CL_MEM_READ_WRITE, cap, NULL, &rc);
  if (rc != CL_SUCCESS) return CL_FAIL(err, rc, "allocating %zu bytes of scratch on '%s'", cap, c->info.device_name);
  b->cap = cap;
  return HEED_OK;
}

static void dbuf_free(dbuf *b) {
  if (b->m) clReleaseMemObject(b->m);
  b->m = NULL;
  b->cap = 0;
}

static heed_status upload(cl_ctx *c, dbuf *b, const void *src, size_t bytes, heed_error *err) {
  heed_status st = dbuf_fit(c, b, bytes, err);
  if (st != HEED_OK || !bytes) return st;
  cl_int rc = clEnqueueWriteBuffer(c->q, b->m, CL_TRUE, 0, bytes, src, 0, NULL, NULL);
  return rc == CL_SUCCESS ? HEED_OK : CL_FAIL(err, rc, "writing %zu bytes to the device", bytes);
}

static void *host_fit(cl_ctx *c, size_t bytes) {
  if (bytes <= c->host_cap) return c->host;
  void *p = realloc(c->host, bytes);
  if (!p) return NULL;
  c->host = p;
  c->host_cap = bytes;
  return p;
}

/* ---------- the program and its binary cache ---------- */

static uint64_t fnv1a(uint64_t h, const void *p, size_t n) {
  const unsigned char *b = p;
  for (size_t i = 0; i < n; i++) h = (h ^ b[i]) * 0x100000001b3ull;
  return h ^ 0xff; /* separates fields: ("ab","c") != ("a","bc") */
}

/* The binary cache's folder, or "" when there is none: no home, or a path
 * too long for buf (a cut path would name another folder). */
static void cache_dir(char *buf, size_t cap) {
  const char *x = getenv("XDG_CACHE_HOME"), *home = getenv("HOME");
  int n = -1;
  if (x && x[0] == '/')
    n = snprintf(buf, cap, "%s/heed", x);
  else if (home && home[0])
    n = snprintf(buf, cap, "%s/.cache/heed", home);
  if (n < 0 || (size_t)n >= cap) buf[0] = '\0';
}

/* mkdir -p; failures show up when the file is written. */
static void make_dirs(const char *dir) {
  char tmp[PATH_MAX];
  if (heed_strlcpy(tmp, dir, sizeof tmp)) return;
  for (char *p = tmp + 1; *p; p++)
    if (*p == '/') {
      *p = '\0';
      mkdir(tmp, 0755);
      *p = '/';
    }
  mkdir(tmp, 0755);
}

static heed_status build_log(cl_ctx *c, cl_program prog, cl_int rc, heed_error *err) {
  size_t n = 0;
  char log[HEED_ERROR_MSG_MAX] = "";
  if (clGetProgramBuildInfo(prog, c->dev, CL_PROGRAM_BUILD_LOG, 0, NULL, &n) == CL_SUCCESS && n) {
    char *full = malloc(n + 1);
    if (full && clGetProgramBuildInfo(prog, c->dev, CL_PROGRAM_BUILD_LOG, n, full, NULL) == CL_SUCCESS) {
      full[n] = '\0';
      /* the first error line is what a reader needs; keep from there */
      const char *at = strstr(full, "error");
      const char *from = at ? at : full;
      while (from > full && from[-1] != '\n') from--;
      heed_strlcpy(log, from, sizeof log);
      for (char *p = log; *p; p++)
        if (*p == '\n') *p = ' ';
    }
    free(full);
  }
  return heed_err_set(err, HEED_E_OPENCL, "opencl: building kernels for '%s' failed: %s (%d); compiler log: %s",
                      c->info.device_name, heed_cl_error_name(rc), (int)rc, log[0] ? log : "(empty)");
}

static void save_binary(cl_ctx *c, cl_program prog, const char *path) {
  size_t n = 0;
  if (clGetProgramInfo(prog, CL_PROGRAM_BINARY_SIZES, sizeof n, &n, NULL) != CL_SUCCESS || !n) return;
  unsigned char *bin = malloc(n);
  if (!bin) return;
  if (clGetProgramInfo(prog, CL_PROGRAM_BINARIES, sizeof bin, &bin, NULL) == CL_SUCCESS) {
    char tmp[PATH_MAX + 32];
    snprintf(tmp, sizeof tmp, "%s.%ld.tmp", path, (long)getpid()); /* fits: path is under PATH_MAX */
    FILE *f = fopen(tmp, "wb");
    if (f) {
      int ok = fwrite(bin, 1, n, f) == n;
      ok &= fclose(f) == 0;
      if (!ok || rename(tmp, path) != 0) remove(tmp); /* concurrent starts: the last rename wins, all equal */
    }
  }
  free(bin);
  (void)c;
}

static cl_program load_binary(cl_ctx *c, const char *path, const char *opts) {
  FILE *f = fopen(path, "rb");
  if (!f) return NULL;
  cl_program prog = NULL;
  unsigned char *bin = NULL;
  long n = -1;
  if (fseek(f, 0, SEEK_END) == 0) n = ftell(f);
  if (n > 0 && fseek(f, 0, SEEK_SET) == 0 && (bin = malloc((size_t)n)) && fread(bin, 1, (size_t)n, f) == (size_t)n) {
    size_t len = (size_t)n;
    const unsigned char *p = bin;
    cl_int bst, rc;
    prog = clCreateProgramWithBinary(c->ctx, 1, &c->dev, &len, &p, &bst, &rc);
    if (rc != CL_SUCCESS || bst != CL_SUCCESS) {
      if (prog) clReleaseProgram(prog);
      prog = NULL;
    } else if (clBuildProgram(prog, 1, &c->dev, opts, NULL, NULL) != CL_SUCCESS) {
      clReleaseProgram(prog);
      prog = NULL;
    }
  }
  free(bin);
  fclose(f);
  return prog;
}

/* src built with opts, through the cache. */
static heed_status build(cl_ctx *c, const char *src, size_t len, const char *opts, cl_program *out, int *from_cache,
                         char *path, size_t path_cap, heed_error *err) {
  char dir[PATH_MAX - 32]; /* room for "/opencl-<16 hex>.bin" */
  cache_dir(dir, sizeof dir);
  uint64_t h = 0xcbf29ce484222325ull;
  char plat[HEED_NAME_MAX] = ""; /* hashed: a cut version only makes the key coarser, never wrong */
  clGetPlatformInfo(c->plat, CL_PLATFORM_VERSION, sizeof plat, plat, NULL);
  plat[sizeof plat - 1] = '\0';
  h = fnv1a(h, plat, strlen(plat));
  h = fnv1a(h, c->info.platform_name, strlen(c->info.platform_name));
  h = fnv1a(h, c->info.device_name, strlen(c->info.device_name));
  h = fnv1a(h, c->info.version, strlen(c->info.version));
  h = fnv1a(h, c->info.driver_version, strlen(c->info.driver_version));
  h = fnv1a(h, opts, strlen(opts));
  h = fnv1a(h, src, len);
  path[0] = '\0';
  if (dir[0]) snprintf(path, path_cap, "%s/opencl-%016llx.bin", dir, (unsigned long long)h);
  *from_cache = 0;
  if (path[0] && (*out = load_binary(c, path, opts))) {
    *from_cache = 1;
    return HEED_OK;
  }
  cl_int rc;
  cl_program prog = clCreateProgramWithSource(c->ctx, 1, &src, &len, &rc);
  if (rc != CL_SUCCESS) return CL_FAIL(err, rc, "creating the program for '%s'", c->info.device_name);
  rc = clBuildProgram(prog, 1, &c->dev, opts, NULL, NULL);
  if (rc != CL_SUCCESS) {
    heed_status st = build_log(c, prog, rc, err);
    clReleaseProgram(prog);
    return st;
  }
  if (path[0]) {
    make_dirs(dir);
    save_binary(c, prog, path);
  }
  *out = prog;
  return HEED_OK;
}

/* ---------- open, close ---------- */

static heed_status find_device(cl_ctx *c, const heed_cl_device_info *d, heed_error *err) {
  cl_uint np = 0;
  cl_int rc = clGetPlatformIDs(0, NULL, &np);
  if (rc != CL_SUCCESS || (unsigned)d->platform_index >= np)
    return heed_err_set(err, HEED_E_NOT_FOUND, "opencl: device '%s' (platform %d) is not on this machine (%u platforms)",
                        d->device_name, d->platform_index, (unsigned)np);
  cl_platform_id plats[16];
  if (np > 16) np = 16;
  clGetPlatformIDs(np, plats, NULL);
  c->plat = plats[d->platform_index];
  cl_device_id devs[64];
  cl_uint nd = 0;
  rc = clGetDeviceIDs(c->plat, CL_DEVICE_TYPE_ALL, 64, devs, &nd);
  if (rc != CL_SUCCESS || (unsigned)d->device_index >= nd)
    return heed_err_set(err, HEED_E_NOT_FOUND, "opencl: device '%s' (index %d) is not on this machine", d->device_name,
                        d->device_index);
  c->dev = devs[d->device_index];
  char name[HEED_NAME_MAX]; /* kept as the topology keeps it, so long names compare alike */
  heed_cl_device_string(c->dev, CL_DEVICE_NAME, name, sizeof name);
  if (strcmp(name, d->device_name) != 0)
    return heed_err_set(err, HEED_E_NOT_FOUND, "opencl: the topology lists '%s' but this machine has '%s' there (a replayed "
                        "recording?)", d->device_name, name);
  return HEED_OK;
}

static heed_status read_local_cap(cl_ctx *c, int ignore_env, heed_error *err) {
  cl_ulong lm = 0;
  clGetDeviceInfo(c->dev, CL_DEVICE_LOCAL_MEM_SIZE, sizeof lm, &lm, NULL);
  c->local_mem = (size_t)lm;
  const char *v = ignore_env ? NULL : getenv("HEED_OPENCL_LOCAL_MEM");
  if (v && v[0]) {
    char *end;
    errno = 0;
    unsigned long long x = strtoull(v, &end, 10);
    if (errno || *end || end == v || x < 1024)
      return heed_err_set(err, HEED_E_INVALID, "HEED_OPENCL_LOCAL_MEM=%s: accepted: bytes of local memory, >= 1024", v);
    if (x < c->local_mem) c->local_mem = (size_t)x;
  }
  return HEED_OK;
}

/* attn_part's per-row softmax state: max, sum, and 16 lanes' partial max and sum (attention.cl). */
#define ST_FLOATS(rows) ((size_t)(rows) * (2 + 2 * 16))

/* Local bytes attn_part needs for head dims dk, dv and key tile tk. */
static size_t part_local(const cl_ctx *c, unsigned dk, unsigned dv, unsigned tk) {
  size_t kvw = dk > dv ? dk : dv;
  return ((size_t)c->rows * dk + kvw * tk + (size_t)c->rows * tk + ST_FLOATS(c->rows)) * sizeof(float) + c->part_static;
}

/* The largest key tile that fits, or 0. */
static unsigned pick_tile(const cl_ctx *c, unsigned dk, unsigned dv) {
  for (unsigned tk = 64; tk >= 16; tk /= 2)
    if (part_local(c, dk, dv, tk) <= c->local_mem) return tk;
  return 0;
}

static heed_status need_tile(const cl_ctx *c, unsigned dk, unsigned dv, unsigned *tk, heed_error *err) {
  *tk = pick_tile(c, dk, dv);
  if (*tk) return HEED_OK;
  return heed_err_set(err, HEED_E_UNSUPPORTED,
                      "opencl: attention with dk=%u dv=%u needs %zu bytes of local memory (16-key tiles, %u rows); "
                      "'%s' offers %zu",
                      dk, dv, part_local(c, dk, dv, 16), c->rows, c->info.device_name, c->local_mem);
}

static void cl_close(void *ctx) {
  cl_ctx *c = ctx;
  if (!c) return;
  /* Work still queued (an append's kv_put, say) finishes before close
   * returns: the driver's threads must not run it while the process exits
   * (PoCL crashed in LLVM at exit, found by make test-asan with a cold cache). */
  if (c->q) clFinish(c->q);
  dbuf *bufs[] = {&c->qb, &c->out, &c->lse, &c->rec, &c->info_b, &c->tables, &c->masks, &c->omap, &c->sinks, &c->kin, &c->vin, &c->blocks, &c->lay,
                  &c->probe_src, &c->probe_sink};
  for (size_t i = 0; i < HEED_ARRAY_LEN(bufs); i++) dbuf_free(bufs[i]);
  cl_kernel ks[] = {c->k_put,     c->k_part, c->k_merge, c->k_probe, c->k_fma,
                    c->k_scatter, c->k_vmax, c->k_vsum,  c->k_vhist, c->k_vcol};
  for (size_t i = 0; i < HEED_ARRAY_LEN(ks); i++)
    if (ks[i]) clReleaseKernel(ks[i]);
  if (c->prog) clReleaseProgram(c->prog);
  if (c->q) clReleaseCommandQueue(c->q);
  if (c->ctx) clReleaseContext(c->ctx);
  free(c->host);
  free(c);
}

static heed_status cl_open(const heed_backend_open_args *a, void **out, heed_error *err) {
  if (!a->topo || a->device < 0 || (unsigned)a->device >= heed_topology_n_cl_devices(a->topo))
    return heed_err_set(err, HEED_E_INTERNAL, "opencl backend: device index %d is not in the topology", a->device);
  cl_ctx *c = calloc(1, sizeof *c);
  if (!c) return heed_err_set(err, HEED_E_NOMEM, "no memory for the opencl backend");
  c->info = *heed_topology_get_cl_device(a->topo, (unsigned)a->device);
  heed_status st = find_device(c, &c->info, err);
  if (st != HEED_OK) goto fail;
  if ((st = read_local_cap(c, a->ignore_env, err)) != HEED_OK) goto fail;
  clGetDeviceInfo(c->dev, CL_DEVICE_MAX_WORK_GROUP_SIZE, sizeof c->max_wg, &c->max_wg, NULL);
  if (c->max_wg < 16) {
    st = heed_err_set(err, HEED_E_UNSUPPORTED, "opencl: '%s' allows work-groups of %zu; heed's kernels need 16 or more",
                      c->info.device_name, c->max_wg);
    goto fail;
  }
  c->wg = c->max_wg >= WG_MAX ? WG_MAX : c->max_wg >= 32 ? 32 : 16;
  c->rows = c->local_mem >= 48 * 1024 ? 16 : 8;
  cl_int rc;
  c->ctx = clCreateContext(NULL, 1, &c->dev, NULL, NULL, &rc);
  if (rc != CL_SUCCESS) {
    st = CL_FAIL(err, rc, "creating a context on '%s'", c->info.device_name);
    goto fail;
  }
  c->q = clCreateCommandQueue(c->ctx, c->dev, CL_QUEUE_PROFILING_ENABLE, &rc);
  c->profiling = rc == CL_SUCCESS;
  if (rc != CL_SUCCESS) c->q = clCreateCommandQueue(c->ctx, c->dev, 0, &rc);
  if (rc != CL_SUCCESS) {
    st = CL_FAIL(err, rc, "creating a queue on '%s'", c->info.device_name);
    goto fail;
  }
  snprintf(c->build.options, sizeof c->build.options, "-cl-std=CL1.2 -DWG=%u -DROWS=%u -DDMAX=%d", c->wg, c->rows,
           HEED_HEAD_DIM_MAX);
  if ((st = build(c, heed_cl_source, heed_cl_source_len, c->build.options, &c->prog, &c->build.from_cache,
                  c->build.cache_path, sizeof c->build.cache_path, err)) != HEED_OK)
    goto fail;
  struct {
    cl_kernel *k;
    const char *name;
  } ks[] = {{&c->k_put, "kv_put"},         {&c->k_part, "attn_part"},  {&c->k_merge, "attn_merge"},
            {&c->k_probe, "probe_read"},   {&c->k_fma, "probe_fma"},   {&c->k_scatter, "spec_scatter"},
            {&c->k_vmax, "spec_max"},      {&c->k_vsum, "spec_sumexp"}, {&c->k_vhist, "spec_hist"},
            {&c->k_vcol, "spec_collect"}};
  for (size_t i = 0; i < HEED_ARRAY_LEN(ks); i++) {
    *ks[i].k = clCreateKernel(c->prog, ks[i].name, &rc);
    if (rc != CL_SUCCESS) {
      st = CL_FAIL(err, rc, "kernel %s on '%s'", ks[i].name, c->info.device_name);
      goto fail;
    }
  }
  size_t kwg = 0;
  cl_ulong kl = 0;
  clGetKernelWorkGroupInfo(c->k_part, c->dev, CL_KERNEL_WORK_GROUP_SIZE, sizeof kwg, &kwg, NULL);
  clGetKernelWorkGroupInfo(c->k_part, c->dev, CL_KERNEL_LOCAL_MEM_SIZE, sizeof kl, &kl, NULL);
  c->part_static = (size_t)kl;
  if (kwg && kwg < c->wg) {
    st = heed_err_set(err, HEED_E_UNSUPPORTED, "opencl: attn_part needs work-groups of %u on '%s', which allows %zu for it",
                      c->wg, c->info.device_name, kwg);
    goto fail;
  }
  unsigned tk;
  if ((st = need_tile(c, HEED_HEAD_DIM_MIN, HEED_HEAD_DIM_MIN, &tk, err)) != HEED_OK) goto fail;
  *out = c;
  return HEED_OK;
fail:
  cl_close(c);
  return st;
}

int heed_cl_describe(const heed_cl_device_info *d, unsigned wg, unsigned rows, size_t local_mem, const char *kernels,
                     char *buf, size_t cap) {
  return snprintf(buf, cap, "opencl on '%s' (%s, driver %s): work-groups of %u, %u rows, %zu KiB local; kernels %s",
                  d->device_name, d->platform_name, d->driver_version, wg, rows, local_mem / 1024, kernels);
}

static int cl_describe(void *ctx, char *buf, size_t cap) {
  cl_ctx *c = ctx;
  return heed_cl_describe(&c->info, c->wg, c->rows, c->local_mem,
                          c->build.from_cache ? "from the binary cache" : "compiled", buf, cap);
}

/* ---------- KV cache in device memory ---------- */

static heed_status cl_kv_alloc(void *ctx, const heed_kv_cache_config *cfg, size_t bytes, void **dev, heed_error *err) {
  cl_ctx *c = ctx;
  unsigned tk;
  heed_status st = need_tile(c, cfg->dk, cfg->dv, &tk, err);
  if (st != HEED_OK) return st;
  cl_ulong most = 0;
  clGetDeviceInfo(c->dev, CL_DEVICE_MAX_MEM_ALLOC_SIZE, sizeof most, &most, NULL);
  if (most && bytes > most)
    return heed_err_set(err, HEED_E_NOMEM,
                        "opencl: a KV cache of %zu bytes (n_blocks=%u) is more than one buffer may hold on '%s' (%llu "
                        "bytes); use fewer blocks",
                        bytes, (unsigned)cfg->n_blocks, c->info.device_name, (unsigned long long)most);
  cl_kv *kv = calloc(1, sizeof *kv);
  if (!kv) return heed_err_set(err, HEED_E_NOMEM, "no memory for a device cache handle");
  cl_int rc;
  kv->buf = clCreateBuffer(c->ctx, CL_MEM_READ_WRITE, bytes, NULL, &rc);
  if (rc == CL_SUCCESS) { /* touch it, so an allocation the device cannot back fails here and not in a kernel */
    unsigned char zero = 0;
    rc = clEnqueueFillBuffer(c->q, kv->buf, &zero, 1, 0, bytes, 0, NULL, NULL);
    if (rc == CL_SUCCESS) rc = clFinish(c->q);
  }
  if (rc != CL_SUCCESS) {
    if (kv->buf) clReleaseMemObject(kv->buf);
    free(kv);
    return CL_FAIL(err, rc, "allocating a KV cache of %zu bytes on '%s' (%llu bytes of memory)", bytes,
                   c->info.device_name, (unsigned long long)c->info.global_mem_bytes);
  }
  *dev = kv;
  return HEED_OK;
}

static void cl_kv_free(void *ctx, void *dev) {
  (void)ctx;
  cl_kv *kv = dev;
  if (!kv) return;
  clReleaseMemObject(kv->buf);
  free(kv);
}

static heed_status set_args(cl_kernel k, heed_error *err, const char *name, unsigned n, const size_t *sizes,
                            const void *const *vals) {
  for (unsigned i = 0; i < n; i++) {
    cl_int rc = clSetKernelArg(k, i, sizes[i], vals[i]);
    if (rc != CL_SUCCESS) return CL_FAIL(err, rc, "%s argument %u", name, i);
  }
  return HEED_OK;
}

static heed_status kv_put_locked(cl_ctx *c, cl_kv *kv, const heed_kv_put *p, heed_error *err);
static heed_status cl_kv_put(void *ctx, void *dev, const heed_kv_put *p, heed_error *err) {
  LOCKED(ctx, err, "append", kv_put_locked(ctx, dev, p, err));
}

static heed_status kv_put_locked(cl_ctx *c, cl_kv *kv, const heed_kv_put *p, heed_error *err) {
  heed_status st;
  size_t kb = (size_t)p->n * p->n_kv_heads * p->dk * sizeof(float), vb = (size_t)p->n * p->n_kv_heads * p->dv * sizeof(float);
  if ((st = upload(c, &c->kin, p->k, kb, err)) != HEED_OK || (st = upload(c, &c->vin, p->v, vb, err)) != HEED_OK ||
      (st = upload(c, &c->blocks, p->blocks, p->n_blocks * sizeof(uint32_t), err)) != HEED_OK)
    return st;
  cl_uint H = p->n_kv_heads, dk = p->dk, dv = p->dv, bl = p->block_len, row0 = p->row0;
  cl_ulong bb = p->block_bytes, kh = p->k_head, vo = p->v_off, vh = p->v_head;
  cl_int kt = (cl_int)p->kt, vt = (cl_int)p->vt;
  const void *vals[] = {&kv->buf, &c->blocks.m, &row0, &c->kin.m, &c->vin.m, &H, &dk, &dv, &bl, &bb, &kh, &vo, &vh, &kt, &vt};
  const size_t sizes[] = {sizeof(cl_mem), sizeof(cl_mem), 4, sizeof(cl_mem), sizeof(cl_mem), 4, 4, 4, 4, 8, 8, 8, 8, 4, 4};
  if ((st = set_args(c->k_put, err, "kv_put", HEED_ARRAY_LEN(vals), sizes, vals)) != HEED_OK) return st;
  size_t global[3] = {16, H, p->n};
  cl_int rc = clEnqueueNDRangeKernel(c->q, c->k_put, 3, NULL, global, NULL, 0, NULL, NULL);
  return rc == CL_SUCCESS ? HEED_OK : CL_FAIL(err, rc, "kv_put of %u tokens", p->n);
}

static heed_status cl_kv_copy(void *ctx, void *dev, size_t dst, size_t src, size_t bytes, heed_error *err) {
  cl_ctx *c = ctx;
  cl_kv *kv = dev;
  cl_int rc = clEnqueueCopyBuffer(c->q, kv->buf, kv->buf, src, dst, bytes, 0, NULL, NULL);
  return rc == CL_SUCCESS ? HEED_OK : CL_FAIL(err, rc, "copying %zu bytes of the KV cache", bytes);
}

static heed_status cl_kv_io(void *ctx, void *dev, int write, size_t off, size_t bytes, void *host, heed_error *err) {
  cl_ctx *c = ctx;
  cl_kv *kv = dev;
  if (!bytes) return HEED_OK;
  cl_int rc = write ? clEnqueueWriteBuffer(c->q, kv->buf, CL_TRUE, off, bytes, host, 0, NULL, NULL)
                    : clEnqueueReadBuffer(c->q, kv->buf, CL_TRUE, off, bytes, host, 0, NULL, NULL);
  return rc == CL_SUCCESS ? HEED_OK : CL_FAIL(err, rc, "%s %zu bytes of the KV cache", write ? "writing" : "reading", bytes);
}

/* ---------- attention ---------- */

/* One sequence of a call as the kernels see it: keys in n_full pool blocks,
 * then (a quantized cache) in residual slot res, -1 for none. */
typedef struct cl_seq {
  const uint32_t *blocks;
  unsigned keys, n_full, n_q, pos0, q_row0;
  int res;
  const uint8_t *mask;
} cl_seq;

static cl_seq seq_of(const heed_kv_cache *c, heed_attn_seq s, const uint32_t *blocks, unsigned keys) {
  return (cl_seq){.blocks = blocks, .keys = keys, .n_full = kv_n_full(c, keys), .res = c->quant && s.seq >= 0 ? s.seq : -1};
}

/* The cache's layout in the order of attention.cl's LAY_* indices. */
#define INFO_INTS 10
#define LAY_COUNT 22
static void layout_of(const heed_kv_cache *c, cl_ulong *l) {
  const heed_kv_cache_config *g = &c->cfg;
  const cl_ulong v[LAY_COUNT] = {g->block_len, c->block_bytes, c->k_head,   c->v_off,      c->v_head,     c->aux_off, c->k_aux,
                                 c->v_aux,     c->res_off,     c->res_bytes, c->res_k_head, c->res_v_off, c->res_v_head,
                                 g->k_dtype,   g->v_dtype,     c->res_kt,   c->res_vt,     g->k_group,   g->v_group,
                                 c->lead_off,  c->k_lead,      c->v_lead};
  memcpy(l, v, sizeof v);
}

static unsigned n_splits_for(const cl_ctx *c, unsigned groups, unsigned max_keys, unsigned tk) {
  unsigned want = 4 * (c->info.compute_units ? c->info.compute_units : 1);
  unsigned s = groups >= want ? 1 : (want + groups - 1) / groups;
  unsigned most = max_keys / (4 * tk); /* at least 4 tiles a split */
  if (s > most) s = most;
  if (s > MAX_SPLITS) s = MAX_SPLITS;
  return s ? s : 1;
}

static heed_status attention_locked(cl_ctx *c, const heed_attn_call *call, const cl_seq *sq, unsigned n);
static heed_status run_attention(cl_ctx *c, const heed_attn_call *call, const cl_seq *sq, unsigned n) {
  heed_status st = enter(c, call->err, "attention");
  if (st != HEED_OK) return st;
  st = attention_locked(c, call, sq, n);
  leave(c);
  return st;
}

static heed_status attention_locked(cl_ctx *c, const heed_attn_call *call, const cl_seq *sq, unsigned n) {
  const heed_kv_cache *kc = call->cache;
  const heed_attn_params *p = call->p;
  heed_error *err = call->err;
  const unsigned H = p->n_q_heads, KH = p->n_kv_heads, G = H / KH, dk = p->dk, dv = p->dv;
  unsigned tk;
  heed_status st = need_tile(c, dk, dv, &tk, err);
  if (st != HEED_OK) return st;
  /* host tables: info [n][8], block tables, masks, output map */
  size_t n_tab = 0, n_mask = 0, rows = 0;
  unsigned max_rb = 1, max_keys = 0, groups = 0;
  for (unsigned i = 0; i < n; i++) {
    n_tab += sq[i].n_full;
    if (sq[i].mask) n_mask += (size_t)sq[i].n_q * sq[i].n_q;
    unsigned rb = (sq[i].n_q * G + c->rows - 1) / c->rows;
    max_rb = rb > max_rb ? rb : max_rb;
    max_keys = sq[i].keys > max_keys ? sq[i].keys : max_keys;
    groups += rb * KH;
    rows += sq[i].n_q;
  }
  unsigned splits = n_splits_for(c, groups, max_keys, tk);
  size_t info_b = (size_t)n * INFO_INTS * sizeof(int), tab_b = n_tab * sizeof(uint32_t), omap_b = rows * H * 2 * sizeof(int);
  char *hb = host_fit(c, info_b + tab_b + omap_b + n_mask + 16);
  if (!hb) return heed_err_set(err, HEED_E_NOMEM, "opencl: no memory for the tables of %u sequences", n);
  int *info = (int *)hb, *omap = (int *)(hb + info_b + tab_b);
  uint32_t *tab = (uint32_t *)(hb + info_b);
  uint8_t *mask = (uint8_t *)(hb + info_b + tab_b + omap_b);
  size_t t_at = 0, m_at = 0, rec = 0;
  for (unsigned i = 0; i < n; i++) {
    unsigned nb = sq[i].n_full, rb = (sq[i].n_q * G + c->rows - 1) / c->rows;
    int *in = info + INFO_INTS * i;
    in[0] = (int)t_at;
    in[1] = (int)sq[i].keys;
    in[2] = (int)sq[i].n_q;
    in[3] = (int)sq[i].pos0;
    in[4] = sq[i].mask ? (int)m_at : -1;
    in[5] = (int)rec;
    in[6] = (int)rb;
    in[7] = (int)sq[i].q_row0;
    in[8] = (int)sq[i].n_full;
    in[9] = sq[i].res;
    memcpy(tab + t_at, sq[i].blocks, nb * sizeof(uint32_t));
    t_at += nb;
    if (sq[i].mask) {
      memcpy(mask + m_at, sq[i].mask, (size_t)sq[i].n_q * sq[i].n_q);
      m_at += (size_t)sq[i].n_q * sq[i].n_q;
    }
    for (unsigned qi = 0; qi < sq[i].n_q; qi++)
      for (unsigned h = 0; h < H; h++) {
        unsigned kvh = h / G, gr = qi * G + h % G;
        size_t o = ((size_t)sq[i].q_row0 + qi) * H + h;
        omap[2 * o] = (int)(rec + ((size_t)kvh * rb + gr / c->rows) * splits);
        omap[2 * o + 1] = (int)(gr % c->rows);
      }
    rec += (size_t)KH * rb * splits;
  }
  size_t rec_b = rec * c->rows * (2 + dv) * sizeof(float);
  if ((st = upload(c, &c->info_b, info, info_b, err)) != HEED_OK || (st = upload(c, &c->tables, tab, tab_b, err)) != HEED_OK ||
      (st = upload(c, &c->masks, mask, n_mask, err)) != HEED_OK || (st = upload(c, &c->omap, omap, omap_b, err)) != HEED_OK ||
      (st = upload(c, &c->qb, call->q, rows * H * dk * sizeof(float), err)) != HEED_OK ||
      (st = dbuf_fit(c, &c->rec, rec_b, err)) != HEED_OK || (st = dbuf_fit(c, &c->out, rows * H * dv * sizeof(float), err)) != HEED_OK ||
      (st = dbuf_fit(c, &c->lse, rows * H * sizeof(float), err)) != HEED_OK)
    return st;
  if (p->sinks && (st = upload(c, &c->sinks, p->sinks, H * sizeof(float), err)) != HEED_OK) return st;
  cl_ulong lay[LAY_COUNT];
  layout_of(kc, lay);
  if ((st = upload(c, &c->lay, lay, sizeof lay, err)) != HEED_OK) return st;

  const cl_kv *kv = kc->dev;
  cl_uint uH = H, uKH = KH, udk = dk, udv = dv, win = p->window, usplits = splits, utk = tk;
  cl_float scale = p->scale, cap = p->softcap;
  cl_mem no_mask = n_mask ? c->masks.m : NULL;
  size_t kvw = dk > dv ? dk : dv;
  const void *pv[] = {&kv->buf, &c->tables.m, &c->info_b.m, &c->qb.m, &no_mask, &c->rec.m, &uH, &uKH, &udk, &udv,
                      &c->lay.m, &scale, &win, &cap, &usplits, &utk, NULL, NULL, NULL, NULL};
  const size_t ps[] = {sizeof(cl_mem), sizeof(cl_mem), sizeof(cl_mem), sizeof(cl_mem), sizeof(cl_mem), sizeof(cl_mem), 4, 4, 4, 4,
                       sizeof(cl_mem), 4, 4, 4, 4, 4,
                       (size_t)c->rows * dk * sizeof(float), kvw * tk * sizeof(float), (size_t)c->rows * tk * sizeof(float),
                       ST_FLOATS(c->rows) * sizeof(float)};
  if ((st = set_args(c->k_part, err, "attn_part", HEED_ARRAY_LEN(pv), ps, pv)) != HEED_OK) return st;
  size_t global[3] = {(size_t)c->wg * splits, max_rb, (size_t)n * KH}, local[3] = {c->wg, 1, 1};
  cl_int rc = clEnqueueNDRangeKernel(c->q, c->k_part, 3, NULL, global, local, 0, NULL, NULL);
  if (rc != CL_SUCCESS)
    return CL_FAIL(err, rc, "attn_part over %u sequences (%u splits, work-groups of %u, %zu bytes of local memory)", n, splits,
                   c->wg, part_local(c, dk, dv, tk));
  cl_mem sinks = p->sinks ? c->sinks.m : NULL, lse = call->lse ? c->lse.m : NULL;
  cl_uint n_out = (cl_uint)(rows * H);
  const void *mv[] = {&c->rec.m, &c->omap.m, &sinks, &uH, &udv, &usplits, &c->out.m, &lse, &n_out};
  const size_t ms[] = {sizeof(cl_mem), sizeof(cl_mem), sizeof(cl_mem), 4, 4, 4, sizeof(cl_mem), sizeof(cl_mem), 4};
  if ((st = set_args(c->k_merge, err, "attn_merge", HEED_ARRAY_LEN(mv), ms, mv)) != HEED_OK) return st;
  size_t mg = (size_t)n_out * dv;
  rc = clEnqueueNDRangeKernel(c->q, c->k_merge, 1, NULL, &mg, NULL, 0, NULL, NULL);
  if (rc != CL_SUCCESS) return CL_FAIL(err, rc, "attn_merge of %u rows", n_out);
  rc = clEnqueueReadBuffer(c->q, c->out.m, CL_TRUE, 0, mg * sizeof(float), call->out, 0, NULL, NULL);
  if (rc == CL_SUCCESS && call->lse)
    rc = clEnqueueReadBuffer(c->q, c->lse.m, CL_TRUE, 0, n_out * sizeof(float), call->lse, 0, NULL, NULL);
  return rc == CL_SUCCESS ? HEED_OK : CL_FAIL(err, rc, "reading the attention output");
}

static heed_status cl_attn_prefill(void *ctx, const heed_attn_call *call) {
  cl_seq s = seq_of(call->cache, call->seq, call->seq.blocks, call->seq.n_tokens); /* the residual is the sequence's */
  s.keys = call->q_start + call->n_q;
  s.n_q = call->n_q;
  s.pos0 = call->q_start;
  return run_attention(ctx, call, &s, 1);
}

#define SEQ_BATCH 64

static heed_status cl_attn_decode(void *ctx, const heed_attn_call *call) {
  cl_seq sq[SEQ_BATCH];
  unsigned row0 = 0;
  const heed_attn_params *p = call->p;
  /* batches of SEQ_BATCH sequences, each one call of the kernels */
  for (unsigned b = 0; b < call->n_seqs; b += SEQ_BATCH) {
    unsigned n = call->n_seqs - b < SEQ_BATCH ? call->n_seqs - b : SEQ_BATCH, rows = 0;
    for (unsigned i = 0; i < n; i++) {
      const heed_attn_decode_seq *d = &call->seqs[b + i];
      const uint32_t *blocks = NULL;
      unsigned len = 0;
      heed_status st = kv_resolve_seq(call->cache, d->kv, &blocks, &len, call->err);
      if (st != HEED_OK) return st;
      sq[i] = seq_of(call->cache, d->kv, blocks, len);
      sq[i].n_q = d->n_q;
      sq[i].pos0 = len - d->n_q;
      sq[i].q_row0 = rows;
      sq[i].mask = d->tree_mask;
      rows += d->n_q;
    }
    heed_attn_call part = *call;
    part.q = call->q + (size_t)row0 * p->n_q_heads * p->dk;
    part.out = call->out + (size_t)row0 * p->n_q_heads * p->dv;
    part.lse = call->lse ? call->lse + (size_t)row0 * p->n_q_heads : NULL;
    heed_status st = run_attention(ctx, &part, sq, n);
    if (st != HEED_OK) return st;
    row0 += rows;
  }
  return HEED_OK;
}

/* ---------- heed_spec's vocabulary passes (kernels/spec.cl) ---------- */

#define HIST_MAX 2048u /* spec.cl's */

/* A verifier's rows in device memory, and its own scratch (so two verifiers
 * on one runtime never share state between their calls). */
typedef struct cl_vocab {
  cl_mem x; /* [slots][vocab] */
  unsigned vocab, slots;
  dbuf sl, pen_row, pen_pos, pen_val, pm, parg, pbad, rm, rthr, hcnt, hlo, hhi, col, count;
} cl_vocab;

static void vocab_close(void *ctx, void *h) {
  (void)ctx;
  cl_vocab *v = h;
  if (!v) return;
  if (v->x) clReleaseMemObject(v->x);
  dbuf *bufs[] = {&v->sl, &v->pen_row, &v->pen_pos, &v->pen_val, &v->pm, &v->parg, &v->pbad, &v->rm, &v->rthr,
                  &v->hcnt, &v->hlo, &v->hhi, &v->col, &v->count};
  for (size_t i = 0; i < HEED_ARRAY_LEN(bufs); i++) dbuf_free(bufs[i]);
  free(v);
}

static heed_status vocab_open(void *ctx, unsigned vocab, unsigned slots, void **out, heed_error *err) {
  cl_ctx *c = ctx;
  cl_ulong dev_local = 0, kl = 0, most = 0;
  clGetDeviceInfo(c->dev, CL_DEVICE_LOCAL_MEM_SIZE, sizeof dev_local, &dev_local, NULL);
  clGetKernelWorkGroupInfo(c->k_vhist, c->dev, CL_KERNEL_LOCAL_MEM_SIZE, sizeof kl, &kl, NULL);
  if (kl > dev_local)
    return heed_err_set(err, HEED_E_UNSUPPORTED,
                        "opencl: the sampling histogram needs %llu bytes of local memory; '%s' has %llu",
                        (unsigned long long)kl, c->info.device_name, (unsigned long long)dev_local);
  size_t bytes = (size_t)vocab * slots * sizeof(float);
  clGetDeviceInfo(c->dev, CL_DEVICE_MAX_MEM_ALLOC_SIZE, sizeof most, &most, NULL);
  if (most && bytes > most)
    return heed_err_set(err, HEED_E_NOMEM,
                        "opencl: %u vocabulary rows of %u need %zu bytes in one buffer; '%s' allows %llu (lower max_draft)",
                        slots, vocab, bytes, c->info.device_name, (unsigned long long)most);
  cl_vocab *v = calloc(1, sizeof *v);
  if (!v) return heed_err_set(err, HEED_E_NOMEM, "no memory for a vocabulary handle");
  v->vocab = vocab, v->slots = slots;
  cl_int rc;
  v->x = clCreateBuffer(c->ctx, CL_MEM_READ_WRITE, bytes, NULL, &rc);
  if (rc == CL_SUCCESS) { /* touch it: an allocation the device cannot back fails here */
    float zero = 0;
    rc = clEnqueueFillBuffer(c->q, v->x, &zero, sizeof zero, 0, bytes, 0, NULL, NULL);
    if (rc == CL_SUCCESS) rc = clFinish(c->q);
  }
  if (rc != CL_SUCCESS) {
    vocab_close(c, v);
    return CL_FAIL(err, rc, "allocating %u vocabulary rows of %u (%zu bytes) on '%s'", slots, vocab, bytes,
                   c->info.device_name);
  }
  *out = v;
  return HEED_OK;
}

static heed_status vocab_load_locked(cl_ctx *c, cl_vocab *v, const heed_vocab_load *ld, heed_error *err) {
  size_t row_b = (size_t)v->vocab * sizeof(float), n_pen = 0;
  for (unsigned i = 0; i < ld->n; i++) {
    cl_int rc = clEnqueueWriteBuffer(c->q, v->x, CL_FALSE, ld->slots[i] * row_b, row_b, ld->x[i], 0, NULL, NULL);
    if (rc != CL_SUCCESS) {
      clFinish(c->q); /* the caller's rows must not be read after we return */
      return CL_FAIL(err, rc, "writing vocabulary row %u", i);
    }
    n_pen += ld->pen_n[i];
  }
  cl_int rc = clFinish(c->q);
  if (rc != CL_SUCCESS) return CL_FAIL(err, rc, "writing %u vocabulary rows", ld->n);
  if (!n_pen) return HEED_OK;
  uint32_t *h = host_fit(c, n_pen * (2 * sizeof(uint32_t) + sizeof(float)));
  if (!h) return heed_err_set(err, HEED_E_NOMEM, "no host memory for %zu penalised tokens", n_pen);
  uint32_t *row = h, *pos = h + n_pen;
  float *val = (float *)(h + 2 * n_pen);
  size_t k = 0;
  for (unsigned i = 0; i < ld->n; i++)
    for (unsigned j = 0; j < ld->pen_n[i]; j++, k++)
      row[k] = ld->slots[i], pos[k] = ld->pen_pos[i][j], val[k] = ld->pen_val[i][j];
  heed_status st;
  if ((st = upload(c, &v->pen_row, row, n_pen * 4, err)) || (st = upload(c, &v->pen_pos, pos, n_pen * 4, err)) ||
      (st = upload(c, &v->pen_val, val, n_pen * 4, err)))
    return st;
  cl_uint V = v->vocab, n = (cl_uint)n_pen;
  const void *vals[] = {&v->x, &V, &v->pen_row.m, &v->pen_pos.m, &v->pen_val.m, &n};
  const size_t sizes[] = {sizeof(cl_mem), 4, sizeof(cl_mem), sizeof(cl_mem), sizeof(cl_mem), 4};
  if ((st = set_args(c->k_scatter, err, "spec_scatter", 6, sizes, vals))) return st;
  size_t local = c->wg, global = (n_pen + local - 1) / local * local;
  rc = clEnqueueNDRangeKernel(c->q, c->k_scatter, 1, NULL, &global, &local, 0, NULL, NULL);
  return rc == CL_SUCCESS ? HEED_OK : CL_FAIL(err, rc, "spec_scatter of %zu penalised tokens", n_pen);
}

static heed_status read_back(cl_ctx *c, dbuf *b, void *dst, size_t bytes, heed_error *err, const char *what) {
  cl_int rc = clEnqueueReadBuffer(c->q, b->m, CL_TRUE, 0, bytes, dst, 0, NULL, NULL);
  return rc == CL_SUCCESS ? HEED_OK : CL_FAIL(err, rc, "reading %s", what);
}

/* One pass of k over chunks x rows (work-groups of wg). */
static heed_status run_rows(cl_ctx *c, cl_kernel k, const char *name, unsigned n_chunks, unsigned n, heed_error *err) {
  size_t global[2] = {(size_t)c->wg * n_chunks, n}, local[2] = {c->wg, 1};
  cl_int rc = clEnqueueNDRangeKernel(c->q, k, 2, NULL, global, local, 0, NULL, NULL);
  return rc == CL_SUCCESS ? HEED_OK : CL_FAIL(err, rc, "%s over %u rows", name, n);
}

static heed_status vocab_max_locked(cl_ctx *c, cl_vocab *v, const unsigned *slots, unsigned n, unsigned chunk,
                                    heed_vocab_part *parts, heed_error *err) {
  unsigned nc = (v->vocab + chunk - 1) / chunk;
  size_t np = (size_t)nc * n;
  heed_status st;
  if ((st = upload(c, &v->sl, slots, n * sizeof(unsigned), err)) || (st = dbuf_fit(c, &v->pm, np * 4, err)) ||
      (st = dbuf_fit(c, &v->parg, np * 4, err)) || (st = dbuf_fit(c, &v->pbad, np * 4, err)))
    return st;
  cl_uint V = v->vocab, ch = chunk;
  const void *vals[] = {&v->x, &V, &ch, &v->sl.m, &v->pm.m, &v->parg.m, &v->pbad.m};
  const size_t sizes[] = {sizeof(cl_mem), 4, 4, sizeof(cl_mem), sizeof(cl_mem), sizeof(cl_mem), sizeof(cl_mem)};
  if ((st = set_args(c->k_vmax, err, "spec_max", 7, sizes, vals)) || (st = run_rows(c, c->k_vmax, "spec_max", nc, n, err)))
    return st;
  uint32_t *h = host_fit(c, np * 12);
  if (!h) return heed_err_set(err, HEED_E_NOMEM, "no host memory for %zu chunk maxima", np);
  if ((st = read_back(c, &v->pm, h, np * 4, err, "chunk maxima")) ||
      (st = read_back(c, &v->parg, h + np, np * 4, err, "chunk argmaxima")) ||
      (st = read_back(c, &v->pbad, h + 2 * np, np * 4, err, "chunk flags")))
    return st;
  for (size_t i = 0; i < np; i++) {
    memcpy(&parts[i].m, h + i, sizeof(float));
    parts[i].arg = h[np + i], parts[i].bad = h[2 * np + i] != 0;
  }
  return HEED_OK;
}

static heed_status vocab_sumexp_locked(cl_ctx *c, cl_vocab *v, const unsigned *slots, const float *m, const float *thr,
                                       unsigned n, float is, unsigned chunk, heed_vocab_part *parts, heed_error *err) {
  unsigned nc = (v->vocab + chunk - 1) / chunk;
  size_t np = (size_t)nc * n;
  heed_status st;
  if ((st = upload(c, &v->sl, slots, n * sizeof(unsigned), err)) || (st = upload(c, &v->rm, m, n * 4, err)) ||
      (st = upload(c, &v->rthr, thr, n * 4, err)) || (st = dbuf_fit(c, &v->pm, np * 4, err)))
    return st;
  cl_uint V = v->vocab, ch = chunk;
  cl_float fis = is;
  const void *vals[] = {&v->x, &V, &ch, &v->sl.m, &v->rm.m, &v->rthr.m, &fis, &v->pm.m};
  const size_t sizes[] = {sizeof(cl_mem), 4, 4, sizeof(cl_mem), sizeof(cl_mem), sizeof(cl_mem), 4, sizeof(cl_mem)};
  if ((st = set_args(c->k_vsum, err, "spec_sumexp", 8, sizes, vals)) ||
      (st = run_rows(c, c->k_vsum, "spec_sumexp", nc, n, err)))
    return st;
  float *h = host_fit(c, np * 4);
  if (!h) return heed_err_set(err, HEED_E_NOMEM, "no host memory for %zu chunk sums", np);
  if ((st = read_back(c, &v->pm, h, np * 4, err, "chunk sums"))) return st;
  for (size_t i = 0; i < np; i++) parts[i].z = h[i];
  return HEED_OK;
}

static heed_status vocab_hist_locked(cl_ctx *c, cl_vocab *v, unsigned slot, float m, float is, float bscale, unsigned nb,
                                     int mass, uint32_t *cnt, double *mass_out, heed_error *err) {
  if (nb < 1 || nb > HIST_MAX)
    return heed_err_set(err, HEED_E_INTERNAL, "opencl: a histogram of %u buckets (1..%u)", nb, HIST_MAX);
  heed_status st;
  dbuf *hb[3] = {&v->hcnt, &v->hlo, &v->hhi};
  cl_uint zero = 0;
  for (int i = 0; i < 3; i++) {
    if ((st = dbuf_fit(c, hb[i], (size_t)nb * 4, err))) return st;
    cl_int rc = clEnqueueFillBuffer(c->q, hb[i]->m, &zero, 4, 0, (size_t)nb * 4, 0, NULL, NULL);
    if (rc != CL_SUCCESS) return CL_FAIL(err, rc, "clearing a histogram");
  }
  cl_uint V = v->vocab, sl = slot, unb = nb;
  cl_int imass = mass;
  cl_float fm = m, fis = is, fbs = bscale;
  const void *vals[] = {&v->x, &V, &sl, &fm, &fis, &fbs, &unb, &imass, &v->hcnt.m, &v->hlo.m, &v->hhi.m};
  const size_t sizes[] = {sizeof(cl_mem), 4, 4, 4, 4, 4, 4, 4, sizeof(cl_mem), sizeof(cl_mem), sizeof(cl_mem)};
  if ((st = set_args(c->k_vhist, err, "spec_hist", 11, sizes, vals))) return st;
  size_t groups = (v->vocab + 8191) / 8192, local = c->wg, global = groups * local;
  cl_int rc = clEnqueueNDRangeKernel(c->q, c->k_vhist, 1, NULL, &global, &local, 0, NULL, NULL);
  if (rc != CL_SUCCESS) return CL_FAIL(err, rc, "spec_hist over %u values", v->vocab);
  uint32_t *h = host_fit(c, (size_t)3 * nb * 4);
  if (!h) return heed_err_set(err, HEED_E_NOMEM, "no host memory for a histogram");
  for (int i = 0; i < 3; i++)
    if ((st = read_back(c, hb[i], h + (size_t)i * nb, (size_t)nb * 4, err, "a histogram"))) return st;
  for (unsigned k = 0; k < nb; k++) {
    cnt[k] = h[k];
    if (mass_out) mass_out[k] = ldexp((double)(((uint64_t)h[2 * nb + k] << 32) | h[nb + k]), -40);
  }
  return HEED_OK;
}

static heed_status vocab_collect_locked(cl_ctx *c, cl_vocab *v, unsigned slot, float lo, float *vals_out, size_t cap,
                                        size_t *n, heed_error *err) {
  heed_status st;
  if ((st = dbuf_fit(c, &v->col, cap * 4, err)) || (st = dbuf_fit(c, &v->count, 4, err))) return st;
  cl_uint zero = 0;
  cl_int rc = clEnqueueFillBuffer(c->q, v->count.m, &zero, 4, 0, 4, 0, NULL, NULL);
  if (rc != CL_SUCCESS) return CL_FAIL(err, rc, "clearing a counter");
  cl_uint V = v->vocab, sl = slot, ucap = (cl_uint)cap;
  cl_float flo = lo;
  const void *vals[] = {&v->x, &V, &sl, &flo, &v->col.m, &ucap, &v->count.m};
  const size_t sizes[] = {sizeof(cl_mem), 4, 4, 4, sizeof(cl_mem), 4, sizeof(cl_mem)};
  if ((st = set_args(c->k_vcol, err, "spec_collect", 7, sizes, vals))) return st;
  size_t local = c->wg, global = (v->vocab + local - 1) / local * local;
  if ((rc = clEnqueueNDRangeKernel(c->q, c->k_vcol, 1, NULL, &global, &local, 0, NULL, NULL)) != CL_SUCCESS)
    return CL_FAIL(err, rc, "spec_collect over %u values", v->vocab);
  cl_uint got = 0;
  if ((st = read_back(c, &v->count, &got, 4, err, "a count"))) return st;
  *n = got;
  size_t keep = got < cap ? got : cap;
  return keep ? read_back(c, &v->col, vals_out, keep * 4, err, "collected values") : HEED_OK;
}

/* The vocab ops, each under the runtime's one-call-at-a-time rule. */
static heed_status vocab_load(void *ctx, void *h, const heed_vocab_load *ld, heed_error *err) {
  LOCKED(ctx, err, "loading vocabulary rows", vocab_load_locked(ctx, h, ld, err));
}
static heed_status vocab_max(void *ctx, void *h, const unsigned *slots, unsigned n, unsigned chunk,
                             heed_vocab_part *parts, heed_error *err) {
  LOCKED(ctx, err, "a vocabulary max", vocab_max_locked(ctx, h, slots, n, chunk, parts, err));
}
static heed_status vocab_sumexp(void *ctx, void *h, const unsigned *slots, const float *m, const float *thr, unsigned n,
                                float is, unsigned chunk, heed_vocab_part *parts, heed_error *err) {
  LOCKED(ctx, err, "a vocabulary sum", vocab_sumexp_locked(ctx, h, slots, m, thr, n, is, chunk, parts, err));
}
static heed_status vocab_hist(void *ctx, void *h, unsigned slot, float m, float is, float bscale, unsigned nb, int mass,
                              uint32_t *cnt, double *mass_out, heed_error *err) {
  LOCKED(ctx, err, "a vocabulary histogram", vocab_hist_locked(ctx, h, slot, m, is, bscale, nb, mass, cnt, mass_out, err));
}
static heed_status vocab_collect(void *ctx, void *h, unsigned slot, float lo, float *vals, size_t cap, size_t *n,
                                 heed_error *err) {
  LOCKED(ctx, err, "a vocabulary collect", vocab_collect_locked(ctx, h, slot, lo, vals, cap, n, err));
}

static const heed_vocab_ops cl_vocab_ops = {
    .open = vocab_open,
    .close = vocab_close,
    .load = vocab_load,
    .max = vocab_max,
    .sumexp = vocab_sumexp,
    .hist = vocab_hist,
    .collect = vocab_collect,
};

/* ---------- what tests and the bench ask ---------- */

static cl_ctx *ctx_of(heed_runtime *rt) {
  void *ctx = NULL;
  const heed_backend_iface *be = heed_runtime_backend_iface(rt, &ctx);
  return be == &heed_backend_opencl_iface ? ctx : NULL;
}

heed_status heed_cl_runtime_queue(heed_runtime *rt, void **context, void **queue, void **device) {
  cl_ctx *c = ctx_of(rt);
  if (!c || !context || !queue || !device) return HEED_E_INVALID;
  *context = c->ctx;
  *queue = c->q;
  *device = c->dev;
  return HEED_OK;
}

heed_status heed_cl_runtime_build_info(heed_runtime *rt, heed_cl_build_info *out) {
  cl_ctx *c = ctx_of(rt);
  if (!c || !out) return HEED_E_INVALID;
  *out = c->build; /* how it was built; the rest is the context's */
  out->wg = c->wg;
  out->rows = c->rows;
  out->local_mem = c->local_mem;
  heed_strlcpy(out->device, c->info.device_name, sizeof out->device);
  return HEED_OK;
}

heed_status heed_cl_build_source(heed_runtime *rt, const char *src, int *from_cache, heed_error *err) {
  cl_ctx *c = ctx_of(rt);
  if (!c || !src || !from_cache) return heed_err_set(err, HEED_E_INVALID, "heed_cl_build_source: no opencl runtime or source");
  cl_program prog = NULL;
  char path[PATH_MAX];
  heed_status st = build(c, src, strlen(src), c->build.options, &prog, from_cache, path, sizeof path, err);
  if (prog) clReleaseProgram(prog);
  return st;
}

/* Seconds one run of k over `items` work-items takes (profiling events when
 * the queue has them, else the wall clock around a finish). */
static heed_status timed_run(cl_ctx *c, cl_kernel k, size_t items, double *sec, heed_error *err) {
  struct timespec a, b;
  cl_event ev = NULL;
  size_t local = c->wg;
  clock_gettime(CLOCK_MONOTONIC, &a);
  cl_int rc = clEnqueueNDRangeKernel(c->q, k, 1, NULL, &items, &local, 0, NULL, c->profiling ? &ev : NULL);
  if (rc == CL_SUCCESS) rc = clFinish(c->q);
  clock_gettime(CLOCK_MONOTONIC, &b);
  *sec = (double)(b.tv_sec - a.tv_sec) + 1e-9 * (double)(b.tv_nsec - a.tv_nsec);
  cl_ulong t0, t1;
  if (rc == CL_SUCCESS && ev && clGetEventProfilingInfo(ev, CL_PROFILING_COMMAND_START, sizeof t0, &t0, NULL) == CL_SUCCESS &&
      clGetEventProfilingInfo(ev, CL_PROFILING_COMMAND_END, sizeof t1, &t1, NULL) == CL_SUCCESS && t1 > t0)
    *sec = (double)(t1 - t0) * 1e-9;
  if (ev) clReleaseEvent(ev);
  return rc == CL_SUCCESS ? HEED_OK : CL_FAIL(err, rc, "running a probe kernel");
}

/* One measurement of a device limit: the median of 3 runs. Read: a buffer of
 * 256 MiB (or half the largest allocation), allocated and filled once. */
static heed_status probe_locked(cl_ctx *c, heed_backend_probe what, double *value, heed_error *err);
static heed_status cl_probe(void *ctx, heed_backend_probe what, double *value, heed_error *err) {
  LOCKED(ctx, err, "probe", probe_locked(ctx, what, value, err));
}

static heed_status probe_locked(cl_ctx *c, heed_backend_probe what, double *value, heed_error *err) {
  size_t groups = (size_t)(c->info.compute_units ? c->info.compute_units : 1) * 16, items = groups * c->wg;
  heed_status st = dbuf_fit(c, &c->probe_sink, items * sizeof(float), err);
  if (st != HEED_OK) return st;
  cl_kernel k = what == HEED_PROBE_READ ? c->k_probe : c->k_fma;
  double work;
  if (what == HEED_PROBE_READ) {
    if (!c->probe_src.m) {
      cl_ulong most = 0;
      clGetDeviceInfo(c->dev, CL_DEVICE_MAX_MEM_ALLOC_SIZE, sizeof most, &most, NULL);
      size_t bytes = (size_t)256 << 20;
      if (most && bytes > most / 2) bytes = (size_t)(most / 2) & ~(size_t)15;
      float one = 1.0f;
      cl_int rc;
      if ((st = dbuf_fit(c, &c->probe_src, bytes, err)) != HEED_OK) return st;
      c->probe_bytes = bytes;
      if ((rc = clEnqueueFillBuffer(c->q, c->probe_src.m, &one, sizeof one, 0, bytes, 0, NULL, NULL)) != CL_SUCCESS)
        return CL_FAIL(err, rc, "filling the probe's %zu bytes", bytes);
    }
    cl_ulong n4 = c->probe_bytes / 16;
    const void *vals[] = {&c->probe_src.m, &n4, &c->probe_sink.m};
    const size_t sizes[] = {sizeof(cl_mem), 8, sizeof(cl_mem)};
    if ((st = set_args(k, err, "probe_read", 3, sizes, vals)) != HEED_OK) return st;
    work = (double)c->probe_bytes * 1e-9;
  } else {
    cl_uint iters = 4096;
    cl_float x = 0.5f;
    const void *vals[] = {&iters, &x, &c->probe_sink.m};
    const size_t sizes[] = {4, 4, sizeof(cl_mem)};
    if ((st = set_args(k, err, "probe_fma", 3, sizes, vals)) != HEED_OK) return st;
    work = (double)items * iters * 64 * 1e-9;
  }
  double t[3];
  for (int i = 0; i < 3; i++)
    if ((st = timed_run(c, k, items, &t[i], err)) != HEED_OK) return st;
  double lo = fmin(t[0], fmin(t[1], t[2])), hi = fmax(t[0], fmax(t[1], t[2])), mid = t[0] + t[1] + t[2] - lo - hi;
  *value = work / mid;
  return HEED_OK;
}

const heed_backend_iface heed_backend_opencl_iface = {
    .kind = HEED_BACKEND_OPENCL,
    .name = "opencl",
    .open = cl_open,
    .close = cl_close,
    .describe = cl_describe,
    .attn_prefill = cl_attn_prefill,
    .attn_decode = cl_attn_decode,
    .kv_alloc = cl_kv_alloc,
    .kv_free = cl_kv_free,
    .kv_put = cl_kv_put,
    .kv_copy = cl_kv_copy,
    .kv_io = cl_kv_io,
    .probe = cl_probe,
    .vocab = &cl_vocab_ops,
};
