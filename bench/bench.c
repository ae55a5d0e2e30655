/* bench/bench.c - the harness: probes and cases interleaved, medians kept.
 * The probe buffer is allocated and first-touched once, by the workers that
 * later read it, so on a NUMA machine each reads its own node's pages. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "heed/heed.h"
#include "runtime/backend.h"
#include "runtime/internal.h"
#include "backends/cpu/weights_kernels.h"

#define MiB (1024ull * 1024)
#define MAX_REPEATS 101
#define MAX_WORKERS 1024

static const struct {
  const char *name, *unit;
} limits[] = {
#define HEED_X_(N, s, u) {s, u},
    HEED_LIMIT_LIST(HEED_X_)
#undef HEED_X_
};

const char *heed_limit_name(heed_limit_kind k) { return (unsigned)k < HEED_LIMIT_COUNT ? limits[k].name : NULL; }
const char *heed_limit_unit(heed_limit_kind k) { return (unsigned)k < HEED_LIMIT_COUNT ? limits[k].unit : NULL; }

struct heed_bench {
  heed_runtime *rt;
  heed_pool *pool;
  int n_workers;
  heed_probe_read_fn read;  /* chosen ISA */
  heed_probe_fma_fn fma;
  heed_probe_fma_fn dot;    /* int8 dot products (the weight kernels'); NULL: none */
  heed_probe_fma_fn bf16;   /* bf16 dot products (vdpbf16ps); NULL: none */
  heed_kernel_table scalar; /* for the reference-kernel cases */
  float *buf;               /* [n_floats] */
  size_t n_floats;
  uint64_t fma_iters;       /* per worker, per probe */
  uint64_t dot_iters, bf16_iters;
  heed_bench_options o;
  heed_error err;
  float sink[MAX_WORKERS];
  /* what the current parallel task runs */
  heed_probe_read_fn task_read;
  heed_probe_fma_fn task_fma;
  uint64_t task_iters;
  double task_flops[MAX_WORKERS];
};

double heed_bench_now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static void touch_task(void *ctx, size_t b, size_t e, int w) {
  (void)w;
  heed_bench *bn = ctx;
  for (size_t i = b; i < e; i++) bn->buf[i] = (float)(i & 1023) * 1e-3f;
}

static void read_task(void *ctx, size_t b, size_t e, int w) {
  heed_bench *bn = ctx;
  bn->sink[w] += bn->task_read(bn->buf + b, e - b);
}

static void fma_task(void *ctx, size_t b, size_t e, int w) {
  heed_bench *bn = ctx;
  for (size_t i = b; i < e; i++) bn->task_flops[w] += bn->task_fma(bn->task_iters, &bn->sink[w]);
}

/* All workers read the whole buffer once; returns GB/s. */
static double read_all(heed_bench *b, heed_probe_read_fn fn) {
  b->task_read = fn;
  double t0 = heed_bench_now_ms();
  heed_pool_parallel_for(b->pool, b->n_floats, HEED_SCHEDULE_STATIC, 0, read_task, b);
  double ms = heed_bench_now_ms() - t0;
  return (double)b->n_floats * sizeof(float) / (ms * 1e6);
}

/* Every worker runs `iters` rounds of fn; returns GFLOP/s (GOP/s). */
static double fma_all(heed_bench *b, heed_probe_fma_fn fn, uint64_t iters) {
  b->task_fma = fn;
  b->task_iters = iters;
  memset(b->task_flops, 0, sizeof b->task_flops);
  double t0 = heed_bench_now_ms();
  heed_pool_parallel_for(b->pool, (size_t)b->n_workers, HEED_SCHEDULE_STATIC, 0, fma_task, b);
  double ms = heed_bench_now_ms() - t0;
  double flops = 0;
  for (int w = 0; w < b->n_workers; w++) flops += b->task_flops[w];
  return flops / (ms * 1e6);
}

/* Iterations of an FMA-like probe that take about 30 ms on one worker. */
static uint64_t size_probe(heed_bench *b, heed_probe_fma_fn f) {
  double t0 = heed_bench_now_ms();
  f(1u << 16, &b->sink[0]);
  double ms = heed_bench_now_ms() - t0;
  uint64_t it = (uint64_t)((1u << 16) * (30.0 / (ms > 1e-3 ? ms : 1e-3)));
  return it < 1024 ? 1024 : it;
}

heed_status heed_bench_create(heed_runtime *rt, const heed_bench_options *opt, heed_bench **out, heed_error *err) {
  if (!out) return heed_err_set(err, HEED_E_INVALID, "heed_bench_create: out is NULL");
  *out = NULL;
  if (!rt) return heed_err_set(err, HEED_E_INVALID, "heed_bench_create: runtime is NULL");
  heed_bench_options o = {0};
  if (opt) o = *opt;
  if (o.repeats < 0 || o.repeats > MAX_REPEATS)
    return heed_err_set(err, HEED_E_INVALID, "bench: repeats=%d; accepted: 1..%d (0: 7)", o.repeats, MAX_REPEATS);
  if (o.min_run_ms < 0 || o.min_run_ms > 10000)
    return heed_err_set(err, HEED_E_INVALID, "bench: min_run_ms=%g; accepted: 0..10000", o.min_run_ms);
  if (!o.repeats) o.repeats = 7;
  if (!o.min_run_ms) o.min_run_ms = 20;
  const heed_topology_summary *s = heed_topology_get_summary(heed_runtime_topology(rt));
  if (!o.probe_bytes) {
    uint64_t want = 16 * s->l3_total, cap = 1024 * MiB;
    if (s->mem_bytes && s->mem_bytes / 8 < cap) cap = s->mem_bytes / 8;
    if (want < 256 * MiB) want = 256 * MiB;
    if (want > cap) want = cap;
    o.probe_bytes = (size_t)want;
  }
  if (o.probe_bytes < 1 * MiB)
    return heed_err_set(err, HEED_E_INVALID, "bench: probe_bytes=%zu; accepted: at least 1 MiB", o.probe_bytes);

  heed_bench *b = calloc(1, sizeof *b);
  if (!b) return heed_err_set(err, HEED_E_NOMEM, "no memory for the bench");
  b->rt = rt;
  b->o = o;
  b->pool = heed_runtime_pool(rt);
  b->n_workers = heed_pool_n_workers(b->pool);
  if (b->n_workers > MAX_WORKERS) {
    int nw = b->n_workers;
    free(b);
    return heed_err_set(err, HEED_E_UNSUPPORTED, "bench: %d workers; the harness handles up to %d", nw, MAX_WORKERS);
  }
  const heed_kernel_table *k = heed_runtime_kernels(rt);
  b->read = heed_kernel_probe_read(k);
  b->fma = heed_kernel_probe_fma(k);
  const heed_weights_table *wt = heed_weights_table_get(heed_runtime_isa(rt), heed_runtime_cpu_features(rt));
  b->dot = wt ? wt->probe_dot : NULL;
  b->bf16 = heed_cpu_probe_bf16(heed_runtime_isa(rt), heed_runtime_cpu_features(rt));
  heed_kernels_build(HEED_ISA_SCALAR, &b->scalar, NULL);
  b->n_floats = o.probe_bytes / sizeof(float);
  heed_status st = heed_mem_alloc(heed_runtime_topology(rt), b->n_floats * sizeof(float), 64,
                                  s->n_numa > 1 ? HEED_NUMA_INTERLEAVE : HEED_NUMA_ANY, (void **)&b->buf, err);
  if (st != HEED_OK) {
    free(b);
    return st;
  }
  heed_pool_parallel_for(b->pool, b->n_floats, HEED_SCHEDULE_STATIC, 0, touch_task, b);
  read_all(b, b->read); /* warm: page tables, frequency */
  /* Each FMA-like probe sized to about 30 ms. */
  b->fma_iters = size_probe(b, b->fma);
  if (b->dot) b->dot_iters = size_probe(b, b->dot);
  if (b->bf16) b->bf16_iters = size_probe(b, b->bf16);
  *out = b;
  return HEED_OK;
}

void heed_bench_destroy(heed_bench *b) {
  if (!b) return;
  heed_mem_free(b->buf);
  free(b);
}

const char *heed_bench_last_error(const heed_bench *b) { return b ? b->err.msg : ""; }

heed_status heed_bench_probe(heed_bench *b, heed_limit_kind k, double *value) {
  if (!b || !value) return HEED_E_INVALID;
  if (k == HEED_LIMIT_READ_BANDWIDTH)
    *value = read_all(b, b->read);
  else if (k == HEED_LIMIT_FMA_PEAK)
    *value = fma_all(b, b->fma, b->fma_iters);
  else if (k == HEED_LIMIT_INT8_DOT_PEAK) {
    if (!b->dot)
      return heed_err_set(&b->err, HEED_E_UNSUPPORTED, "bench: int8_dot_peak: the %s weight kernels have no int8 dot product",
                          heed_isa_name(heed_runtime_isa(b->rt)));
    *value = fma_all(b, b->dot, b->dot_iters);
  } else if (k == HEED_LIMIT_BF16_DOT_PEAK) {
    if (!b->bf16)
      return heed_err_set(&b->err, HEED_E_UNSUPPORTED,
                          "bench: bf16_dot_peak: needs the avx512 level on a CPU with avx512_bf16 (this is %s)",
                          heed_isa_name(heed_runtime_isa(b->rt)));
    *value = fma_all(b, b->bf16, b->bf16_iters);
  }
  else if (k == HEED_LIMIT_DEVICE_READ_BANDWIDTH || k == HEED_LIMIT_DEVICE_FMA_PEAK) {
    void *ctx;
    const heed_backend_iface *be = heed_runtime_backend_iface(b->rt, &ctx);
    if (!be->probe)
      return heed_err_set(&b->err, HEED_E_UNSUPPORTED, "bench: %s is a device limit; the %s backend has no device",
                          heed_limit_name(k), be->name);
    return be->probe(ctx, k == HEED_LIMIT_DEVICE_READ_BANDWIDTH ? HEED_PROBE_READ : HEED_PROBE_FMA, value, &b->err);
  } else
    return heed_err_set(&b->err, HEED_E_INVALID,
                        "bench: limit kind %d; accepted: read_bandwidth, fma_peak, device_read_bandwidth, device_fma_peak, "
                        "int8_dot_peak, bf16_dot_peak", (int)k);
  return HEED_OK;
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

static double median(double *v, int n) {
  qsort(v, (size_t)n, sizeof *v, cmp_double);
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

heed_status heed_bench_run_case(heed_bench *b, const heed_bench_case *c, heed_bench_result *r) {
  if (!b) return HEED_E_INVALID;
  if (!c || !r || !c->run || !c->name)
    return heed_err_set(&b->err, HEED_E_INVALID, "bench: case, its name, its run function and the result are required");
  if ((unsigned)c->limit >= HEED_LIMIT_COUNT)
    return heed_err_set(&b->err, HEED_E_INVALID, "bench case %s: limit kind %d is not a heed_limit_kind", c->name,
                        (int)c->limit);
  if (!(c->work > 0) || !isfinite(c->work))
    return heed_err_set(&b->err, HEED_E_INVALID, "bench case %s: work=%g; accepted: > 0", c->name, c->work);
  memset(r, 0, sizeof *r);
  heed_strlcpy(r->name, c->name, sizeof r->name);
  heed_strlcpy(r->backend, c->backend ? c->backend : heed_backend_name(heed_runtime_backend(b->rt)), sizeof r->backend);
  heed_strlcpy(r->isa, c->isa ? c->isa : heed_isa_name(heed_runtime_isa(b->rt)), sizeof r->isa);
  heed_strlcpy(r->dtype, c->dtype ? c->dtype : "f32", sizeof r->dtype);
  heed_strlcpy(r->shape_json, c->shape_json ? c->shape_json : "{}", sizeof r->shape_json);
  r->limit_kind = c->limit;
  r->repeats = b->o.repeats;

  /* Warm up once and find how many runs make one timed sample. */
  double t0 = heed_bench_now_ms();
  c->run(c->ctx);
  double once = heed_bench_now_ms() - t0;
  int inner = once >= b->o.min_run_ms ? 1 : (int)ceil(b->o.min_run_ms / (once > 1e-4 ? once : 1e-4));
  if (inner > 1000000) inner = 1000000;

  double ms[MAX_REPEATS], lim[MAX_REPEATS];
  for (int i = 0; i < b->o.repeats; i++) {
    heed_status st = heed_bench_probe(b, c->limit, &lim[i]);
    if (st != HEED_OK) return st;
    t0 = heed_bench_now_ms();
    for (int j = 0; j < inner; j++) c->run(c->ctx);
    ms[i] = (heed_bench_now_ms() - t0) / inner;
  }
  r->ms_median = median(ms, b->o.repeats);
  r->ms_min = ms[0];
  r->ms_max = ms[b->o.repeats - 1];
  r->limit_value = median(lim, b->o.repeats);
  r->limit_min = lim[0];
  r->limit_max = lim[b->o.repeats - 1];
  r->achieved_value = c->work / (r->ms_median * 1e6); /* bytes or flops per ns = G per s */
  r->fraction = r->limit_value > 0 ? r->achieved_value / r->limit_value : 0;
  return HEED_OK;
}

/* The cases of the probes suite. */
typedef struct probe_case {
  heed_bench *b;
  heed_probe_read_fn read;
  heed_probe_fma_fn fma;
  int all_workers;
  uint64_t iters; /* fma probes: per worker; 0: the FMA probe's */
} probe_case;

static void run_read(void *ctx) {
  probe_case *p = ctx;
  if (p->all_workers)
    read_all(p->b, p->read);
  else
    p->b->sink[0] += p->read(p->b->buf, p->b->n_floats);
}

static void run_fma(void *ctx) {
  probe_case *p = ctx;
  const uint64_t it = p->iters ? p->iters : p->b->fma_iters;
  if (p->all_workers)
    fma_all(p->b, p->fma, it);
  else
    p->fma(it, &p->b->sink[0]);
}

heed_status heed_bench_suite_probes(heed_bench *b, heed_bench_result *out, int cap, int *n_out) {
  if (!b || !out || !n_out) return HEED_E_INVALID;
  *n_out = 0;
  int W = b->n_workers;
  const char *isa = heed_isa_name(heed_runtime_isa(b->rt));
  double bytes = (double)b->n_floats * sizeof(float);
  double flops_one = b->fma(1, &b->sink[0]) * (double)b->fma_iters;
  double flops_one_scalar = heed_kernel_probe_fma(&b->scalar)(1, &b->sink[0]) * (double)b->fma_iters;
  char rshape[96], rshape1[96], fshape[96], fshape1[96];
  snprintf(rshape, sizeof rshape, "{\"bytes\":%.0f,\"workers\":%d}", bytes, W);
  snprintf(rshape1, sizeof rshape1, "{\"bytes\":%.0f,\"workers\":1}", bytes);
  snprintf(fshape, sizeof fshape, "{\"iters\":%llu,\"workers\":%d}", (unsigned long long)b->fma_iters, W);
  snprintf(fshape1, sizeof fshape1, "{\"iters\":%llu,\"workers\":1}", (unsigned long long)b->fma_iters);
  char dshape[96], bshape[96];
  snprintf(dshape, sizeof dshape, "{\"iters\":%llu,\"workers\":%d}", (unsigned long long)b->dot_iters, W);
  snprintf(bshape, sizeof bshape, "{\"iters\":%llu,\"workers\":%d}", (unsigned long long)b->bf16_iters, W);
  probe_case pc[8] = {
      {b, b->read, NULL, 1, 0},
      {b, b->read, NULL, 0, 0},
      {b, heed_kernel_probe_read(&b->scalar), NULL, 1, 0},
      {b, NULL, b->fma, 1, 0},
      {b, NULL, b->fma, 0, 0},
      {b, NULL, heed_kernel_probe_fma(&b->scalar), 1, 0},
      {b, NULL, b->dot, 1, b->dot_iters},
      {b, NULL, b->bf16, 1, b->bf16_iters},
  };
  heed_bench_case cases[8] = {
      {"probe.read_bandwidth", NULL, isa, "f32", rshape, HEED_LIMIT_READ_BANDWIDTH, bytes, run_read, &pc[0]},
      {"read.one_worker", NULL, isa, "f32", rshape1, HEED_LIMIT_READ_BANDWIDTH, bytes, run_read, &pc[1]},
      {"read.scalar_kernel", NULL, "scalar", "f32", rshape, HEED_LIMIT_READ_BANDWIDTH, bytes, run_read, &pc[2]},
      {"probe.fma_peak", NULL, isa, "f32", fshape, HEED_LIMIT_FMA_PEAK, flops_one * W, run_fma, &pc[3]},
      {"fma.one_worker", NULL, isa, "f32", fshape1, HEED_LIMIT_FMA_PEAK, flops_one, run_fma, &pc[4]},
      {"fma.scalar_kernel", NULL, "scalar", "f32", fshape, HEED_LIMIT_FMA_PEAK, flops_one_scalar * W, run_fma, &pc[5]},
      /* the dot-product peaks, each a case judged against the FP32 FMA peak:
       * its fraction is how many times the FMA peak the level's int8 or bf16
       * products reach */
      {"probe.int8_dot_peak", NULL, isa, "i8", dshape, HEED_LIMIT_FMA_PEAK,
       b->dot ? b->dot(1, &b->sink[0]) * (double)b->dot_iters * W : 0, run_fma, &pc[6]},
      {"probe.bf16_dot_peak", NULL, isa, "bf16", bshape, HEED_LIMIT_FMA_PEAK,
       b->bf16 ? b->bf16(1, &b->sink[0]) * (double)b->bf16_iters * W : 0, run_fma, &pc[7]},
  };
  int n = 0;
  for (int i = 0; i < 8 && n < cap; i++) {
    if ((i == 6 && !b->dot) || (i == 7 && !b->bf16)) continue;
    if (b->o.progress) b->o.progress(b->o.progress_user, cases[i].name, n, cap < 8 ? cap : 8);
    heed_status st = heed_bench_run_case(b, &cases[i], &out[n]);
    if (st != HEED_OK) return st;
    *n_out = ++n;
  }
  return HEED_OK;
}

heed_status heed_bench_write_json(heed_runtime *rt, const heed_bench_result *r, int n, FILE *f) {
  if (!rt || !f || (n > 0 && !r) || n < 0) return HEED_E_INVALID;
  fprintf(f, "{\"schema\":\"heed-bench/1\",\"heed_info\":");
  heed_runtime_write_json(rt, f);
  fprintf(f, ",\"results\":[");
  for (int i = 0; i < n; i++) {
    const heed_bench_result *x = &r[i];
    fprintf(f, "%s\n{\"name\":", i ? "," : "");
    heed_json_str(f, x->name);
    fprintf(f, ",\"backend\":");
    heed_json_str(f, x->backend);
    fprintf(f, ",\"isa\":");
    heed_json_str(f, x->isa);
    fprintf(f, ",\"dtype\":");
    heed_json_str(f, x->dtype);
    fprintf(f,
            ",\"shape\":%s,\"repeats\":%d,\"ms_median\":%.6g,\"ms_min\":%.6g,\"ms_max\":%.6g,\"limit_kind\":\"%s\","
            "\"limit_value\":%.6g,\"limit_min\":%.6g,\"limit_max\":%.6g,\"achieved_value\":%.6g,\"unit\":\"%s\","
            "\"fraction\":%.4f",
            x->shape_json, x->repeats, x->ms_median, x->ms_min, x->ms_max, heed_limit_name(x->limit_kind),
            x->limit_value, x->limit_min, x->limit_max, x->achieved_value, heed_limit_unit(x->limit_kind),
            x->fraction);
    fprintf(f, ",\"versus\":[");
    for (int v = 0; v < x->n_versus && v < HEED_BENCH_MAX_VERSUS; v++) {
      fprintf(f, "%s{\"kind\":", v ? "," : "");
      heed_json_str(f, x->versus[v].kind);
      fprintf(f, ",\"case\":");
      heed_json_str(f, x->versus[v].name);
      fprintf(f, ",\"speedup\":%.4g}", x->versus[v].speedup);
    }
    fprintf(f, "]}");
  }
  fprintf(f, "\n]}\n");
  return HEED_OK;
}

void heed_bench_write_table(const heed_bench_result *r, int n, FILE *f) {
  fprintf(f, "%-22s %-7s %10s %21s %12s %18s %9s\n", "case", "runs on", "ms median", "[min .. max]", "achieved",
          "limit (median)", "fraction");
  for (int i = 0; i < n; i++) {
    const heed_bench_result *x = &r[i];
    char range[32], ach[24], lim[32];
    snprintf(range, sizeof range, "[%.3f .. %.3f]", x->ms_min, x->ms_max);
    snprintf(ach, sizeof ach, "%.1f %s", x->achieved_value, heed_limit_unit(x->limit_kind));
    snprintf(lim, sizeof lim, "%.1f %s", x->limit_value, heed_limit_unit(x->limit_kind));
    /* the ISA on the CPU, else the backend (opencl) or the baseline library */
    const char *where = strcmp(x->backend, "cpu") == 0 ? x->isa : x->backend;
    fprintf(f, "%-22s %-7s %10.3f %21s %12s %18s %9.3f\n", x->name, where, x->ms_median, range, ach, lim, x->fraction);
  }
}
