/* tests/stress/tsan_stress.c - heed's threads under ThreadSanitizer.
 *
 * Criterion cannot start under TSan, so this is a plain program: it drives
 * the thread pool, attention and speculative verification from several
 * threads at once, checks every result, and exits non-zero on a wrong one
 * (TSan itself fails the run on a race with halt_on_error=1; see
 * scripts/test-tsan.sh). Phases, each with its own threads:
 *
 *   pool   every thread runs many small STATIC and DYNAMIC jobs on a pool of
 *          its own (2..4 workers, recreated now and then) and on its runtime's
 *          pool; each index must run exactly once, on a worker id in range,
 *          STATIC ranges must be the documented ones; a task calling its own
 *          pool must get HEED_E_BUSY; three threads share one pool (each call
 *          OK and complete, or BUSY and untouched; each retried until it runs;
 *          now and then one holds it for three jobs with heed_pool_hold); bad
 *          arguments from all three at once.
 *   attn   every thread opens a runtime of its own and runs decode (a batch:
 *          causal, a forked copy-on-write sequence with a tree mask) and
 *          chunked prefill, with and without window/softcap/sinks, all on ONE
 *          shared KV cache; each output must equal, bit for bit, what the
 *          main thread computed before (itself checked against a naive
 *          reference). Bad arguments from every thread at once must give
 *          their statuses and write nothing.
 *   busy   an owner holds its runtime's pool with a task that waits; two
 *          intruders then call decode, prefill, parallel_for, heed_pool_hold and spec on that
 *          runtime, passing the SAME out/lse/workspace buffers: each must get
 *          HEED_E_BUSY (spec may also finish inline, then with the right
 *          token) and write nothing (the buffers are compared afterwards).
 *   spec   every thread opens a runtime and a heed_spec of its own and runs
 *          greedy and sampled chain verification, a tree, and sampling; each
 *          result must equal the main thread's (Philox: the same seed gives
 *          the same tokens in any thread schedule).
 *   mixed  two threads share a runtime (one attention, one spec), two share
 *          one heed_spec: each call is right, or HEED_E_BUSY and retried.
 * The defaults take about 10-30 s under TSan on 2 shared cores.
 *
 * Usage: heed_tsan_stress [--threads N] [--pool-jobs N] [--attn-iters N]
 *          [--busy-probes N] [--spec-iters N] [--mixed-iters N]
 *          [--only pool,attn,busy,spec,mixed] [--rt-threads N] [--quiet]
 * Exit: 0 all right, 1 a wrong result, 2 a setup failure or bad usage. */
#include <getopt.h>
#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <heed/heed.h>

#include "runtime/pool_internal.h" /* heed_pool_hold: internal, tried here as attention uses it */

/* ---------------- settings, failures, helpers ---------------- */

typedef struct settings {
  int threads;       /* worker threads per phase */
  int pool_jobs;     /* jobs per thread in the pool phase */
  int attn_iters;
  int busy_probes;
  int spec_iters;
  int mixed_iters;
  int rt_threads;    /* pool workers per runtime; 0: min(PUs, 4) */
  unsigned phases;
  int quiet;
} settings;

enum { PH_POOL = 1, PH_ATTN = 2, PH_BUSY = 4, PH_SPEC = 8, PH_MIXED = 16 };
static settings S = {4, 3000, 40, 40, 30, 30, 0, 31, 0};

static atomic_int g_fail;
static pthread_mutex_t g_print = PTHREAD_MUTEX_INITIALIZER;

#define FAIL(...)                                                   \
  do {                                                              \
    if (atomic_fetch_add(&g_fail, 1) < 40) {                        \
      pthread_mutex_lock(&g_print);                                 \
      fprintf(stderr, "tsan_stress: FAIL %s:%d: ", __func__, __LINE__); \
      fprintf(stderr, __VA_ARGS__);                                 \
      fputc('\n', stderr);                                          \
      pthread_mutex_unlock(&g_print);                               \
    }                                                               \
  } while (0)

#define EXPECT_ST(call, want)                                                                          \
  do {                                                                                                 \
    heed_status st_ = (call);                                                                          \
    if (st_ != (want)) FAIL("%s returned %s, expected %s", #call, heed_status_name(st_), heed_status_name(want)); \
  } while (0)

static void die(const char *what, const char *msg) {
  fprintf(stderr, "tsan_stress: setup failed: %s: %s\n", what, msg ? msg : "");
  exit(2);
}

static void *xalloc(size_t bytes) {
  void *p = aligned_alloc(64, (bytes + 63) / 64 * 64);
  if (!p) die("aligned_alloc", "out of memory");
  return p;
}

static uint64_t splitmix(uint64_t *s) {
  uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}
static float unif(uint64_t *s) { return (float)(splitmix(s) >> 40) / (float)(1u << 24) * 2.0f - 1.0f; } /* [-1, 1) */

static double now_s(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* Waits until *a == want (a handshake between threads); 0 after 60 s. */
static int wait_eq(atomic_int *a, int want) {
  double t0 = now_s();
  while (atomic_load(a) != want) {
    if (now_s() - t0 > 60) return 0;
    sched_yield();
  }
  return 1;
}

/* What a call may answer on a runtime, pool or verifier that another thread uses. */
enum { BUSY_NO, BUSY_ONCE /* BUSY allowed, no retry */, BUSY_RETRY /* BUSY allowed: retry until it runs */ };

/* Between the retries of a BUSY call: 0 (and a failure) once one call has waited 120 s. */
static int backoff(double *t0, const char *who) {
  if (*t0 == 0) *t0 = now_s();
  else if (now_s() - *t0 > 120) {
    FAIL("%s: still BUSY after 120 s of retries (a busy flag left set?)", who);
    return 0;
  }
  sched_yield();
  return 1;
}

static void run_threads(int n, void *(*fn)(void *), void *args, size_t arg_size) {
  pthread_t th[64];
  for (int i = 0; i < n; i++)
    if (pthread_create(&th[i], NULL, fn, (char *)args + (size_t)i * arg_size)) die("pthread_create", "");
  for (int i = 0; i < n; i++) pthread_join(th[i], NULL);
}

static heed_runtime *open_rt(int n_threads) {
  heed_runtime_options o;
  heed_runtime_options_init(&o);
  o.flags = HEED_RUNTIME_IGNORE_ENV | HEED_RUNTIME_NO_OPENCL;
  o.backend = HEED_BACKEND_CPU;
  o.n_threads = n_threads;
  heed_runtime *rt = NULL;
  heed_error e = {0};
  if (heed_runtime_open(&o, &rt, &e) != HEED_OK) die("heed_runtime_open", e.msg);
  return rt;
}

/* ---------------- pool ---------------- */

typedef struct pjob {
  uint32_t *out;        /* [n] */
  size_t n;
  uint32_t stamp;       /* unique per job */
  size_t *per_worker;   /* [W * 8]: items each worker ran (a line each) */
  int W;
  heed_pool *pool;
  int nest;             /* the task calls its own pool: must be BUSY */
  atomic_int bad, nest_busy;
} pjob;

/* The task of a call that must be refused. */
static void never_task(void *ctx, size_t b, size_t e, int w) {
  (void)b, (void)e, (void)w;
  if (ctx) atomic_fetch_add(&((pjob *)ctx)->bad, 1000);
  else FAIL("a refused parallel_for ran its task");
}

static void pool_task(void *ctx, size_t b, size_t e, int w) {
  pjob *J = ctx;
  if (w < 0 || w >= J->W || b >= e || e > J->n) {
    atomic_fetch_add(&J->bad, 1);
    return;
  }
  for (size_t i = b; i < e; i++) {
    if (J->out[i] == (J->stamp ^ (uint32_t)i)) atomic_fetch_add(&J->bad, 1); /* ran twice */
    J->out[i] = J->stamp ^ (uint32_t)i;
  }
  J->per_worker[(size_t)w * 8] += e - b; /* plain: one writer per worker id */
  if (J->nest && b == 0) {
    heed_status st = heed_pool_parallel_for(J->pool, 4, HEED_SCHEDULE_DYNAMIC, 1, never_task, J);
    if (st == HEED_E_BUSY) atomic_fetch_add(&J->nest_busy, 1);
    else atomic_fetch_add(&J->bad, 1);
  }
}

/* One job on pool; busy_ok: a BUSY answer is allowed (a shared pool), then nothing may have run.
 * Returns 1 when it ran. */
static int pool_one(heed_pool *pool, pjob *J, uint32_t *stamp, uint64_t *rng, int busy_ok) {
  static const size_t sizes[] = {0, 1, 2, 3, 5, 8, 31, 64, 257, 1000};
  static const size_t chunks[] = {0, 1, 2, 3, 7, 64};
  size_t n = sizes[splitmix(rng) % (sizeof sizes / sizeof *sizes)];
  heed_schedule sched = (splitmix(rng) & 1) ? HEED_SCHEDULE_DYNAMIC : HEED_SCHEDULE_STATIC;
  size_t chunk = chunks[splitmix(rng) % (sizeof chunks / sizeof *chunks)];
  J->pool = pool;
  J->W = heed_pool_n_workers(pool);
  J->n = n;
  J->stamp = ++*stamp;
  J->nest = !busy_ok && n && (splitmix(rng) % 8 == 0);
  atomic_store(&J->bad, 0);
  atomic_store(&J->nest_busy, 0);
  for (int w = 0; w < J->W; w++) J->per_worker[(size_t)w * 8] = 0;
  heed_status st = heed_pool_parallel_for(pool, n, sched, chunk, pool_task, J);
  if (st == HEED_E_BUSY && busy_ok) {
    for (size_t i = 0; i < n; i++)
      if (J->out[i] == (J->stamp ^ (uint32_t)i)) {
        FAIL("a BUSY parallel_for ran index %zu", i);
        break;
      }
    for (int w = 0; w < J->W; w++)
      if (J->per_worker[(size_t)w * 8]) FAIL("a BUSY parallel_for ran on worker %d", w);
    return 0;
  }
  if (st != HEED_OK) {
    FAIL("parallel_for(n=%zu, %s, chunk=%zu) on %d workers: %s (%s)", n, sched ? "DYNAMIC" : "STATIC", chunk, J->W,
         heed_status_name(st), heed_pool_last_error(pool));
    return 0;
  }
  if (atomic_load(&J->bad)) FAIL("job n=%zu %s: %d bad task calls", n, sched ? "DYNAMIC" : "STATIC", atomic_load(&J->bad));
  if (J->nest && atomic_load(&J->nest_busy) != 1) FAIL("the nested call was not refused with BUSY");
  size_t total = 0;
  for (int w = 0; w < J->W; w++) {
    size_t got = J->per_worker[(size_t)w * 8];
    total += got;
    if (sched == HEED_SCHEDULE_STATIC) {
      size_t want = n * (size_t)(w + 1) / (size_t)J->W - n * (size_t)w / (size_t)J->W;
      if (got != want) FAIL("STATIC n=%zu: worker %d of %d ran %zu items, its range has %zu", n, w, J->W, got, want);
    }
  }
  if (total != n) FAIL("job n=%zu ran %zu items", n, total);
  for (size_t i = 0; i < n; i++)
    if (J->out[i] != (J->stamp ^ (uint32_t)i)) {
      FAIL("job n=%zu: index %zu did not run", n, i);
      break;
    }
  return 1;
}

typedef struct pool_arg {
  int id;
  heed_pool *shared;   /* a pool two threads share, or NULL */
  int ran, busy;
} pool_arg;

static pjob *pjob_new(void) {
  pjob *J = xalloc(sizeof *J);
  memset(J, 0, sizeof *J);
  J->out = xalloc(1024 * sizeof *J->out);
  memset(J->out, 0xff, 1024 * sizeof *J->out); /* never stamp ^ i: stamps stay below 2^31 */
  J->per_worker = xalloc(64 * 8 * sizeof *J->per_worker);
  return J;
}
static void pjob_free(pjob *J) {
  free(J->out);
  free(J->per_worker);
  free(J);
}

static void *pool_thread(void *argv) {
  pool_arg *a = argv;
  uint64_t rng = 0x1000 + (uint64_t)a->id;
  uint32_t stamp = (uint32_t)(a->id + 1) << 20;
  pjob *J = pjob_new();
  if (a->shared) { /* contention: OK and complete, or BUSY and untouched */
    double t0 = 0;
    for (int it = 0; it < S.pool_jobs / 2;) {
      if (pool_one(a->shared, J, &stamp, &rng, 1)) {
        a->ran++;
        it++;
        t0 = 0;
      } else {
        a->busy++;
        /* the message of a shared pool, read while the other threads may fail too */
        if (!heed_pool_last_error(a->shared)[0]) FAIL("BUSY without a message");
        if (!backoff(&t0, "shared pool")) break;
        continue;
      }
      /* now and then hold the pool for three jobs in a row: the others get BUSY meanwhile */
      if (it % 8 == 0) {
        heed_status st = heed_pool_hold(a->shared);
        if (st == HEED_OK) {
          for (int k = 0; k < 3; k++) pool_one(a->shared, J, &stamp, &rng, 0);
          if (heed_pool_hold(a->shared) != HEED_E_BUSY) FAIL("a held pool was held twice");
          heed_pool_release(a->shared);
        } else if (st != HEED_E_BUSY)
          FAIL("heed_pool_hold: %s", heed_status_name(st));
      }
      /* a bad argument from all threads at once */
      if (it % 16 == 0) {
        EXPECT_ST(heed_pool_parallel_for(a->shared, 4, HEED_SCHEDULE_STATIC, 0, NULL, J), HEED_E_INVALID);
        EXPECT_ST(heed_pool_parallel_for(a->shared, 4, (heed_schedule)7, 0, pool_task, J), HEED_E_INVALID);
      }
    }
    pjob_free(J);
    return NULL;
  }
  heed_runtime *rt = open_rt(S.rt_threads);
  heed_pool *own = NULL;
  int W = 2 + a->id % 3;
  for (int it = 0; it < S.pool_jobs; it++) {
    if (it % 100 == 0) { /* create/destroy churn, right after a job */
      heed_pool_destroy(own);
      heed_error e = {0};
      if (heed_pool_create(NULL, W, 0, &own, &e) != HEED_OK) die("heed_pool_create", e.msg);
    }
    pool_one((it & 1) ? heed_runtime_pool(rt) : own, J, &stamp, &rng, 0);
  }
  heed_pool_destroy(own);
  heed_runtime_close(rt);
  pjob_free(J);
  return NULL;
}

static void phase_pool(void) {
  int n = S.threads;
  pool_arg args[64];
  memset(args, 0, sizeof args);
  for (int i = 0; i < n; i++) args[i].id = i;
  run_threads(n, pool_thread, args, sizeof *args);
  heed_pool *shared = NULL;
  heed_error e = {0};
  if (heed_pool_create(NULL, 3, 0, &shared, &e) != HEED_OK) die("heed_pool_create", e.msg);
  pool_arg three[3] = {{.id = 100, .shared = shared}, {.id = 101, .shared = shared}, {.id = 102, .shared = shared}};
  run_threads(3, pool_thread, three, sizeof *three);
  heed_pool_destroy(shared);
  if (!S.quiet)
    printf("pool: %d threads x %d jobs; one pool shared by 3 threads: %d+%d+%d ran, %d+%d+%d BUSY\n", n, S.pool_jobs,
           three[0].ran, three[1].ran, three[2].ran, three[0].busy, three[1].busy, three[2].busy);
}

/* ---------------- attention: one shared cache ---------------- */

#define NKV 2
#define NQH 8
#define DK 64
#define DV 64
#define BL 16
#define MAXLEN 256
#define N_DSEQ 4      /* decode batch */
#define PF_SEQ 0
#define PF_START 152  /* prefill: positions 152..199 in chunks */
#define PF_N 48
#define PF_CHUNK 24

typedef struct attn_world {
  heed_runtime *rt0;
  heed_kv_cache *cache;
  void *storage;
  int seq[4];                          /* 0: 200 tokens, 1: 77, 2: 40, 3: fork of 0 + 5 */
  heed_attn_params pa, pb;             /* plain; window + softcap + sinks */
  float sinks[NQH];
  heed_attn_decode_seq dseq[N_DSEQ];
  uint8_t tree[3 * 3];
  unsigned d_rows;                     /* decode query rows */
  float *dq, *pq;                      /* decode q [d_rows][NQH][DK]; prefill q [PF_N][NQH][DK] */
  /* references, by the main thread: [params a/b] */
  float *d_out[2], *d_lse[2], *p_out[2], *p_lse[2];
  size_t ws_bytes;                     /* enough for decode and prefill */
} attn_world;

static attn_world A;

static size_t ws_need(heed_runtime *rt) {
  size_t d = 0, p = 0;
  if (heed_attn_decode_workspace(rt, &A.pb, A.dseq, N_DSEQ, &d) != HEED_OK ||
      heed_attn_prefill_workspace(rt, &A.pb, PF_CHUNK, &p) != HEED_OK)
    die("attention workspace", heed_runtime_last_error(rt));
  size_t d2 = 0;
  heed_attn_decode_workspace(rt, &A.pa, A.dseq, N_DSEQ, &d2);
  d = d2 > d ? d2 : d;
  return d > p ? d : p;
}

static heed_status do_decode(heed_runtime *rt, const heed_attn_params *p, float *out, float *lse, void *ws, size_t wsb) {
  return heed_attn_decode(rt, A.cache, p, A.dseq, N_DSEQ, A.dq, out, lse, ws, wsb);
}

/* Chunked prefill of seq PF_SEQ at PF_START..+PF_N. */
static heed_status do_prefill(heed_runtime *rt, const heed_attn_params *p, float *out, float *lse, void *ws, size_t wsb) {
  heed_attn_seq s = {.seq = A.seq[PF_SEQ]};
  for (unsigned c = 0; c < PF_N; c += PF_CHUNK) {
    heed_status st = heed_attn_prefill(rt, A.cache, p, s, PF_START + c, PF_CHUNK, A.pq + (size_t)c * NQH * DK,
                                       out + (size_t)c * NQH * DV, lse + (size_t)c * NQH, ws, wsb);
    if (st != HEED_OK) return st;
  }
  return HEED_OK;
}

/* Naive attention of one row (causal, window, softcap, sink) over K/V read back from the cache. */
static void naive_row(const heed_attn_params *p, const float *K, const float *V, unsigned qh, unsigned pos,
                      const float *q, double *o, double *lse) {
  unsigned kvh = qh / (NQH / NKV);
  double m = -INFINITY, sum = 0;
  double *s = malloc((pos + 1) * sizeof *s);
  for (unsigned k = 0; k <= pos; k++) {
    s[k] = -INFINITY;
    if (p->window && pos - k >= p->window) continue;
    double d = 0;
    for (unsigned i = 0; i < DK; i++) d += (double)q[i] * K[((size_t)k * NKV + kvh) * DK + i];
    d *= p->scale;
    if (p->softcap > 0) d = p->softcap * tanh(d / p->softcap);
    s[k] = d;
    if (d > m) m = d;
  }
  if (p->sinks && p->sinks[qh] > m) m = p->sinks[qh];
  for (unsigned i = 0; i < DV; i++) o[i] = 0;
  for (unsigned k = 0; k <= pos; k++) {
    if (s[k] == -INFINITY) continue;
    double w = exp(s[k] - m);
    sum += w;
    for (unsigned i = 0; i < DV; i++) o[i] += w * V[((size_t)k * NKV + kvh) * DV + i];
  }
  if (p->sinks) sum += exp(p->sinks[qh] - m);
  for (unsigned i = 0; i < DV; i++) o[i] /= sum;
  *lse = m + log(sum);
  free(s);
}

/* The main thread's result for query rows of seq at positions pos0.., against the naive one. */
static void check_naive(const char *what, const heed_attn_params *p, int seq, unsigned pos0, unsigned n, const float *q,
                        const float *out, const float *lse) {
  long len = heed_kv_seq_len(A.cache, seq);
  float *K = malloc((size_t)len * NKV * DK * sizeof *K), *V = malloc((size_t)len * NKV * DV * sizeof *V);
  if (heed_kv_seq_read(A.cache, seq, 0, (unsigned)len, K, V) != HEED_OK) die("heed_kv_seq_read", heed_kv_cache_last_error(A.cache));
  double o[DV], l, worst = 0;
  for (unsigned i = 0; i < n; i++)
    for (unsigned h = 0; h < NQH; h++) {
      naive_row(p, K, V, h, pos0 + i, q + ((size_t)i * NQH + h) * DK, o, &l);
      const float *got = out + ((size_t)i * NQH + h) * DV;
      for (unsigned d = 0; d < DV; d++) {
        double err = fabs(got[d] - o[d]) / (1e-2 + fabs(o[d]));
        if (err > worst) worst = err;
      }
      double el = fabs(lse[(size_t)i * NQH + h] - l);
      if (el > worst) worst = el;
    }
  if (!(worst < 5e-3)) FAIL("%s: the reference is off the naive attention by %g", what, worst);
  free(K);
  free(V);
}

static void attn_setup(void) {
  A.rt0 = open_rt(S.rt_threads);
  heed_kv_cache_config cfg = {.n_kv_heads = NKV, .dk = DK, .dv = DV, .k_dtype = HEED_DTYPE_F16, .v_dtype = HEED_DTYPE_F16,
                              .block_len = BL, .n_blocks = 64, .max_seqs = 4, .max_seq_len = MAXLEN};
  size_t bytes = 0;
  heed_error e = {0};
  if (heed_kv_cache_bytes(A.rt0, &cfg, &bytes, NULL) != HEED_OK) die("heed_kv_cache_bytes", heed_runtime_last_error(A.rt0));
  A.storage = xalloc(bytes);
  if (heed_kv_cache_create(A.rt0, &cfg, A.storage, bytes, &A.cache, &e) != HEED_OK) die("heed_kv_cache_create", e.msg);
  uint64_t rng = 42;
  static const unsigned lens[3] = {200, 77, 40};
  float *k = malloc((size_t)MAXLEN * NKV * DK * sizeof *k), *v = malloc((size_t)MAXLEN * NKV * DV * sizeof *v);
  for (int s = 0; s < 3; s++) {
    if (heed_kv_seq_new(A.cache, &A.seq[s]) != HEED_OK) die("heed_kv_seq_new", heed_kv_cache_last_error(A.cache));
    for (size_t i = 0; i < (size_t)lens[s] * NKV * DK; i++) k[i] = unif(&rng);
    for (size_t i = 0; i < (size_t)lens[s] * NKV * DV; i++) v[i] = unif(&rng);
    if (heed_kv_seq_append(A.cache, A.seq[s], lens[s], k, v) != HEED_OK) die("heed_kv_seq_append", heed_kv_cache_last_error(A.cache));
  }
  /* a fork sharing seq 0's blocks; its appends copy the last one (copy-on-write) */
  if (heed_kv_seq_fork(A.cache, A.seq[0], &A.seq[3]) != HEED_OK) die("heed_kv_seq_fork", heed_kv_cache_last_error(A.cache));
  for (size_t i = 0; i < (size_t)5 * NKV * DK; i++) k[i] = unif(&rng);
  for (size_t i = 0; i < (size_t)5 * NKV * DV; i++) v[i] = unif(&rng);
  if (heed_kv_seq_append(A.cache, A.seq[3], 5, k, v) != HEED_OK) die("heed_kv_seq_append", heed_kv_cache_last_error(A.cache));
  free(k);
  free(v);

  A.pa = (heed_attn_params){.n_q_heads = NQH, .n_kv_heads = NKV, .dk = DK, .dv = DV, .scale = 0.125f};
  for (int h = 0; h < NQH; h++) A.sinks[h] = 0.5f * unif(&rng);
  A.pb = A.pa;
  A.pb.window = 48;
  A.pb.softcap = 5.0f;
  A.pb.sinks = A.sinks;
  /* decode batch: seq0 1 query, seq1 4 causal, seq3 3 under a tree (root; two children of it), seq2 1 */
  static const uint8_t tree[9] = {1, 0, 0, 1, 1, 0, 1, 0, 1};
  memcpy(A.tree, tree, sizeof tree);
  A.dseq[0] = (heed_attn_decode_seq){.kv = {.seq = A.seq[0]}, .n_q = 1};
  A.dseq[1] = (heed_attn_decode_seq){.kv = {.seq = A.seq[1]}, .n_q = 4};
  A.dseq[2] = (heed_attn_decode_seq){.kv = {.seq = A.seq[3]}, .n_q = 3, .tree_mask = A.tree};
  A.dseq[3] = (heed_attn_decode_seq){.kv = {.seq = A.seq[2]}, .n_q = 1};
  A.d_rows = 1 + 4 + 3 + 1;
  A.dq = xalloc((size_t)A.d_rows * NQH * DK * sizeof(float));
  A.pq = xalloc((size_t)PF_N * NQH * DK * sizeof(float));
  for (size_t i = 0; i < (size_t)A.d_rows * NQH * DK; i++) A.dq[i] = unif(&rng);
  for (size_t i = 0; i < (size_t)PF_N * NQH * DK; i++) A.pq[i] = unif(&rng);
  A.ws_bytes = ws_need(A.rt0);
  void *ws = xalloc(A.ws_bytes);
  for (int b = 0; b < 2; b++) {
    const heed_attn_params *p = b ? &A.pb : &A.pa;
    A.d_out[b] = xalloc((size_t)A.d_rows * NQH * DV * sizeof(float));
    A.d_lse[b] = xalloc((size_t)A.d_rows * NQH * sizeof(float));
    A.p_out[b] = xalloc((size_t)PF_N * NQH * DV * sizeof(float));
    A.p_lse[b] = xalloc((size_t)PF_N * NQH * sizeof(float));
    if (do_decode(A.rt0, p, A.d_out[b], A.d_lse[b], ws, A.ws_bytes) != HEED_OK) die("reference decode", heed_kv_cache_last_error(A.cache));
    if (do_prefill(A.rt0, p, A.p_out[b], A.p_lse[b], ws, A.ws_bytes) != HEED_OK) die("reference prefill", heed_kv_cache_last_error(A.cache));
    /* the causal rows of the decode batch, and the prefill, against the naive attention */
    check_naive(b ? "decode b seq0" : "decode a seq0", p, A.seq[0], 199, 1, A.dq, A.d_out[b], A.d_lse[b]);
    check_naive(b ? "decode b seq1" : "decode a seq1", p, A.seq[1], 73, 4, A.dq + (size_t)1 * NQH * DK,
                A.d_out[b] + (size_t)1 * NQH * DV, A.d_lse[b] + (size_t)1 * NQH);
    check_naive(b ? "decode b seq2" : "decode a seq2", p, A.seq[2], 39, 1, A.dq + (size_t)8 * NQH * DK,
                A.d_out[b] + (size_t)8 * NQH * DV, A.d_lse[b] + (size_t)8 * NQH);
    check_naive(b ? "prefill b" : "prefill a", p, A.seq[PF_SEQ], PF_START, PF_N, A.pq, A.p_out[b], A.p_lse[b]);
  }
  free(ws);
}

static void attn_teardown(void) {
  for (int b = 0; b < 2; b++) free(A.d_out[b]), free(A.d_lse[b]), free(A.p_out[b]), free(A.p_lse[b]);
  free(A.dq);
  free(A.pq);
  heed_kv_cache_destroy(A.cache);
  free(A.storage);
  heed_runtime_close(A.rt0);
  memset(&A, 0, sizeof A);
}

/* Per-thread buffers. */
typedef struct abuf {
  float *out, *lse;     /* big enough for decode and prefill */
  void *ws;
} abuf;

static void abuf_init(abuf *b) {
  size_t rows = A.d_rows > PF_N ? A.d_rows : PF_N;
  b->out = xalloc(rows * NQH * DV * sizeof(float));
  b->lse = xalloc(rows * NQH * sizeof(float));
  b->ws = xalloc(A.ws_bytes);
}
static void abuf_free(abuf *b) {
  free(b->out);
  free(b->lse);
  free(b->ws);
}
static void abuf_poison(abuf *b) {
  size_t rows = A.d_rows > PF_N ? A.d_rows : PF_N;
  memset(b->out, 0xa5, rows * NQH * DV * sizeof(float));
  memset(b->lse, 0xa5, rows * NQH * sizeof(float));
  memset(b->ws, 0xa5, A.ws_bytes);
}
/* Which of the buffers changed since abuf_poison ("" when none). */
static const char *abuf_touched(const abuf *b) {
  size_t rows = A.d_rows > PF_N ? A.d_rows : PF_N;
  const unsigned char *o = (const unsigned char *)b->out, *l = (const unsigned char *)b->lse, *w = b->ws;
  for (size_t i = 0; i < rows * NQH * DV * sizeof(float); i++)
    if (o[i] != 0xa5) return "out";
  for (size_t i = 0; i < rows * NQH * sizeof(float); i++)
    if (l[i] != 0xa5) return "lse";
  for (size_t i = 0; i < A.ws_bytes; i++)
    if (w[i] != 0xa5) return "workspace";
  return "";
}

/* Decode or prefill (b: params a/b) and compare with the reference; busy: BUSY_*.
 * Returns the BUSY answers (the call ran when busy is BUSY_RETRY, or when 0 came back). */
static int attn_check(heed_runtime *rt, abuf *buf, int prefill, int b, int busy, const char *who) {
  const heed_attn_params *p = b ? &A.pb : &A.pa;
  heed_status st;
  int n_busy = 0;
  double t0 = 0;
  for (;;) {
    st = prefill ? do_prefill(rt, p, buf->out, buf->lse, buf->ws, A.ws_bytes)
                 : do_decode(rt, p, buf->out, buf->lse, buf->ws, A.ws_bytes);
    if (st != HEED_E_BUSY || busy == BUSY_NO) break;
    n_busy++;
    if (busy == BUSY_ONCE) return n_busy;
    if (!backoff(&t0, who)) return n_busy;
  }
  if (st != HEED_OK) {
    FAIL("%s: %s (params %c): %s (%s)", who, prefill ? "prefill" : "decode", 'a' + b, heed_status_name(st),
         heed_runtime_last_error(rt));
    return n_busy;
  }
  size_t rows = prefill ? PF_N : A.d_rows;
  const float *ro = prefill ? A.p_out[b] : A.d_out[b], *rl = prefill ? A.p_lse[b] : A.d_lse[b];
  if (memcmp(buf->out, ro, rows * NQH * DV * sizeof(float)) || memcmp(buf->lse, rl, rows * NQH * sizeof(float)))
    FAIL("%s: %s (params %c) differs from the main thread's", who, prefill ? "prefill" : "decode", 'a' + b);
  return n_busy;
}

/* Bad arguments: each must give its status and write nothing into out/lse. */
static void attn_errors(heed_runtime *rt, abuf *buf) {
  size_t rows = A.d_rows > PF_N ? A.d_rows : PF_N;
  memset(buf->out, 0xa5, rows * NQH * DV * sizeof(float));
  memset(buf->lse, 0xa5, rows * NQH * sizeof(float));
  heed_attn_params bad = A.pa;
  bad.dk = 48; /* does not match the cache */
  EXPECT_ST(heed_attn_decode(rt, A.cache, &bad, A.dseq, N_DSEQ, A.dq, buf->out, buf->lse, buf->ws, A.ws_bytes),
            HEED_E_INVALID);
  heed_attn_decode_seq ds[2] = {A.dseq[0], A.dseq[1]};
  ds[1].kv.seq = 3 + 100; /* no such sequence */
  EXPECT_ST(heed_attn_decode(rt, A.cache, &A.pa, ds, 2, A.dq, buf->out, buf->lse, buf->ws, A.ws_bytes), HEED_E_INVALID);
  ds[1] = A.dseq[1];
  ds[1].n_q = HEED_MAX_DECODE_QUERIES + 1;
  EXPECT_ST(heed_attn_decode(rt, A.cache, &A.pa, ds, 2, A.dq, buf->out, buf->lse, buf->ws, A.ws_bytes), HEED_E_INVALID);
  EXPECT_ST(heed_attn_decode(rt, A.cache, &A.pa, A.dseq, N_DSEQ, A.dq, buf->out, buf->lse, buf->ws, 64), HEED_E_TOO_SMALL);
  heed_attn_seq s0 = {.seq = A.seq[PF_SEQ]};
  EXPECT_ST(heed_attn_prefill(rt, A.cache, &A.pa, s0, 190, PF_CHUNK, A.pq, buf->out, buf->lse, buf->ws, A.ws_bytes),
            HEED_E_RANGE);
  bad = A.pa;
  bad.scale = NAN;
  EXPECT_ST(heed_attn_prefill(rt, A.cache, &bad, s0, 0, 4, A.pq, buf->out, buf->lse, buf->ws, A.ws_bytes), HEED_E_INVALID);
  const unsigned char *o = (const unsigned char *)buf->out, *l = (const unsigned char *)buf->lse;
  for (size_t i = 0; i < rows * NQH * DV * sizeof(float); i++)
    if (o[i] != 0xa5) {
      FAIL("a refused attention call wrote into out");
      break;
    }
  for (size_t i = 0; i < rows * NQH * sizeof(float); i++)
    if (l[i] != 0xa5) {
      FAIL("a refused attention call wrote into lse");
      break;
    }
}

typedef struct attn_arg {
  int id;
} attn_arg;

static void *attn_thread(void *argv) {
  attn_arg *a = argv;
  heed_runtime *rt = open_rt(S.rt_threads);
  abuf buf;
  abuf_init(&buf);
  char who[32];
  snprintf(who, sizeof who, "attn thread %d", a->id);
  for (int it = 0; it < S.attn_iters; it++) {
    int b = (it + a->id) & 1;
    attn_check(rt, &buf, 0, b, BUSY_NO, who);
    attn_check(rt, &buf, 1, !b, BUSY_NO, who);
    attn_errors(rt, &buf);
    attn_check(rt, &buf, (it & 2) != 0, b, BUSY_NO, who); /* still right after the refusals */
  }
  abuf_free(&buf);
  heed_runtime_close(rt);
  return NULL;
}

static void phase_attn(void) {
  attn_arg args[64];
  for (int i = 0; i < S.threads; i++) args[i].id = i;
  run_threads(S.threads, attn_thread, args, sizeof *args);
  if (!S.quiet) printf("attn: %d threads x %d iterations on one shared cache\n", S.threads, S.attn_iters);
}

/* ---------------- spec ---------------- */

#define SPEC_V 70000   /* above 65536: the CPU verifier runs its passes on the pool */
#define SPEC_K 4
#define N_SEEDS 4
#define TREE_N 4

typedef struct spec_world {
  float *target;          /* [SPEC_K + 1][SPEC_V] */
  float *draft_logits;    /* [SPEC_K][SPEC_V] */
  int32_t greedy_draft[SPEC_K], sampled_draft[SPEC_K];
  int32_t tree_tok[TREE_N], tree_par[TREE_N];
  int32_t penalty[8];
  heed_sampling greedy, smp;
  int32_t argmax[SPEC_K + 1];
  /* references, per seed */
  heed_spec_result ref_chain[N_SEEDS], ref_tree[N_SEEDS];
  int32_t ref_sample[N_SEEDS];
} spec_world;

static spec_world P;

static heed_spec *spec_new(heed_runtime *rt) {
  heed_spec_config c = {.vocab = SPEC_V, .max_draft = 8, .max_penalty_tokens = 8, .max_sparse = 0};
  heed_spec *s = NULL;
  heed_error e = {0};
  if (heed_spec_create(rt, &c, &s, &e) != HEED_OK) die("heed_spec_create", e.msg);
  return s;
}

static heed_draft_q dense_q(void) {
  return (heed_draft_q){.kind = HEED_DRAFT_DENSE_LOGITS, .dense = P.draft_logits};
}

static int same_result(const heed_spec_result *a, const heed_spec_result *b) {
  if (a->n_accepted != b->n_accepted || a->next_token != b->next_token) return 0;
  for (unsigned i = 0; i < a->n_accepted; i++)
    if (a->path[i] != b->path[i]) return 0;
  return 1;
}

/* 1 when a spec call ran (OK); 0 when it was BUSY (allowed) or failed (recorded). */
static int spec_status(heed_status st, int busy_ok, const char *who, const char *what, const heed_spec *s) {
  if (st == HEED_E_BUSY && busy_ok) return 0;
  if (st != HEED_OK) {
    FAIL("%s: %s: %s (%s)", who, what, heed_status_name(st), heed_spec_last_error(s));
    return 0;
  }
  return 1;
}

/* Each spec call, against the reference for seed; mode: BUSY_*. Returns the BUSY answers. */
static int spec_check(heed_spec *s, int seed, int mode, const char *who) {
  int busy = 0;
  double t0 = 0;
  heed_spec_result r;
  heed_draft_q q = dense_q();
  int32_t tok = -1;
  heed_status st;
/* st = the call, retried while BUSY under BUSY_RETRY */
#define SPEC_CALL(call)                                                          \
  do {                                                                           \
    t0 = 0;                                                                      \
    while ((st = (call)) == HEED_E_BUSY && mode != BUSY_NO && (busy++, mode == BUSY_RETRY) && backoff(&t0, who)) { \
    }                                                                            \
  } while (0)
#define SPEC_STATUS(what) spec_status(st, mode != BUSY_NO, who, what, s)
  /* greedy: drafts 0 and 1 are the argmax, draft 2 is not */
  memset(&r, 0, sizeof r);
  SPEC_CALL(heed_spec_verify_chain(s, &P.greedy, (uint64_t)seed, 0, P.target, P.greedy_draft, SPEC_K, NULL, &r));
  if (SPEC_STATUS("greedy chain") && (r.n_accepted != 2 || r.next_token != P.argmax[2] || r.path[0] != 0 || r.path[1] != 1))
    FAIL("%s: greedy chain accepted %u, next %d; expected 2, next %d", who, r.n_accepted, (int)r.next_token, (int)P.argmax[2]);
  memset(&r, 0, sizeof r);
  SPEC_CALL(heed_spec_verify_chain(s, &P.smp, 1000 + (uint64_t)seed, 7, P.target, P.sampled_draft, SPEC_K, &q, &r));
  if (SPEC_STATUS("sampled chain") && !same_result(&r, &P.ref_chain[seed]))
    FAIL("%s: sampled chain (seed %d): %u accepted, next %d; the main thread had %u, %d", who, seed, r.n_accepted,
         (int)r.next_token, P.ref_chain[seed].n_accepted, (int)P.ref_chain[seed].next_token);
  memset(&r, 0, sizeof r);
  SPEC_CALL(heed_spec_verify_tree(s, &P.smp, 2000 + (uint64_t)seed, 3, P.target, P.tree_tok, P.tree_par, TREE_N, NULL, &r));
  if (SPEC_STATUS("tree") && !same_result(&r, &P.ref_tree[seed]))
    FAIL("%s: tree (seed %d) differs from the main thread's", who, seed);
  SPEC_CALL(heed_spec_sample(s, &P.smp, 3000 + (uint64_t)seed, 11, P.target + SPEC_V, &tok));
  if (SPEC_STATUS("sample") && tok != P.ref_sample[seed])
    FAIL("%s: sample (seed %d) gave %d; the main thread had %d", who, seed, (int)tok, (int)P.ref_sample[seed]);
#undef SPEC_STATUS
#undef SPEC_CALL
  return busy;
}

/* Refusals on a verifier of its own: statuses only. */
static void spec_errors(heed_spec *s) {
  heed_spec_result r;
  EXPECT_ST(heed_spec_verify_chain(s, &P.greedy, 0, 0, P.target, P.greedy_draft, 0, NULL, &r), HEED_E_RANGE);
  heed_sampling bad = P.smp;
  bad.temperature = NAN;
  int32_t tok;
  EXPECT_ST(heed_spec_sample(s, &bad, 0, 0, P.target, &tok), HEED_E_INVALID);
}

static void spec_setup(heed_runtime *rt) {
  uint64_t rng = 7;
  P.target = xalloc((size_t)(SPEC_K + 1) * SPEC_V * sizeof(float));
  P.draft_logits = xalloc((size_t)SPEC_K * SPEC_V * sizeof(float));
  for (size_t i = 0; i < (size_t)(SPEC_K + 1) * SPEC_V; i++) P.target[i] = 3.0f * unif(&rng);
  for (size_t i = 0; i < (size_t)SPEC_K * SPEC_V; i++) P.draft_logits[i] = 3.0f * unif(&rng);
  for (int r = 0; r <= SPEC_K; r++) { /* a few strong tokens per row, so sampling has a head */
    for (int j = 0; j < 6; j++) P.target[(size_t)r * SPEC_V + splitmix(&rng) % SPEC_V] = 7.0f + (float)j * 0.3f;
    float *row = P.target + (size_t)r * SPEC_V;
    int32_t best = 0;
    for (int32_t t = 1; t < SPEC_V; t++)
      if (row[t] > row[best]) best = t;
    P.argmax[r] = best;
  }
  for (int i = 0; i < SPEC_K; i++) {
    P.greedy_draft[i] = i < 2 ? P.argmax[i] : (P.argmax[i] + 1) % SPEC_V;
    P.sampled_draft[i] = i % 2 ? P.argmax[i] : (int32_t)(splitmix(&rng) % SPEC_V);
    /* the draft's own favourite, so that q gives it weight after the cuts */
    P.draft_logits[(size_t)i * SPEC_V + P.sampled_draft[i]] = 8.0f;
  }
  static const int32_t par[TREE_N] = {-1, -1, 0, 1};
  memcpy(P.tree_par, par, sizeof par);
  P.tree_tok[0] = P.argmax[0];
  P.tree_tok[1] = (P.argmax[0] + 5) % SPEC_V;
  P.tree_tok[2] = P.argmax[1];
  P.tree_tok[3] = P.argmax[2];
  for (int i = 0; i < 8; i++) P.penalty[i] = P.argmax[i % (SPEC_K + 1)] + i / 5;
  heed_sampling_init(&P.greedy);
  heed_sampling_init(&P.smp);
  P.smp.temperature = 0.8f;
  P.smp.top_k = 64;
  P.smp.top_p = 0.9f;
  P.smp.min_p = 0.01f;
  P.smp.repetition_penalty = 1.2f;
  P.smp.penalty_tokens = P.penalty;
  P.smp.n_penalty_tokens = 8;
  heed_spec *s = spec_new(rt);
  heed_draft_q q = dense_q();
  for (int seed = 0; seed < N_SEEDS; seed++) {
    if (heed_spec_verify_chain(s, &P.smp, 1000 + (uint64_t)seed, 7, P.target, P.sampled_draft, SPEC_K, &q, &P.ref_chain[seed]) ||
        heed_spec_verify_tree(s, &P.smp, 2000 + (uint64_t)seed, 3, P.target, P.tree_tok, P.tree_par, TREE_N, NULL,
                              &P.ref_tree[seed]) ||
        heed_spec_sample(s, &P.smp, 3000 + (uint64_t)seed, 11, P.target + SPEC_V, &P.ref_sample[seed]))
      die("reference spec", heed_spec_last_error(s));
  }
  /* the main thread's own greedy answer must be the analytic one */
  if (spec_check(s, 0, BUSY_NO, "main thread")) FAIL("BUSY on an idle verifier");
  heed_spec_destroy(s);
}

static void spec_teardown(void) {
  free(P.target);
  free(P.draft_logits);
}

typedef struct spec_arg {
  int id;
} spec_arg;

static void *spec_thread(void *argv) {
  spec_arg *a = argv;
  heed_runtime *rt = open_rt(S.rt_threads);
  heed_spec *s = spec_new(rt);
  char who[32];
  snprintf(who, sizeof who, "spec thread %d", a->id);
  for (int it = 0; it < S.spec_iters; it++) {
    spec_check(s, (a->id + it) % N_SEEDS, BUSY_NO, who);
    if (it % 4 == 0) spec_errors(s);
  }
  heed_spec_destroy(s);
  heed_runtime_close(rt);
  return NULL;
}

static void phase_spec(void) {
  spec_arg args[64];
  for (int i = 0; i < S.threads; i++) args[i].id = i;
  run_threads(S.threads, spec_thread, args, sizeof *args);
  if (!S.quiet) printf("spec: %d threads x %d iterations, each with its own runtime and verifier\n", S.threads, S.spec_iters);
}

/* ---------------- busy: deterministic refusals on a held runtime ---------------- */

#define N_INTRUDERS 2

typedef struct busy_world {
  heed_runtime *rt;
  heed_spec *spec[N_INTRUDERS]; /* on rt, one per intruder */
  abuf shared;                  /* the buffers the owner holds and every intruder passes */
  atomic_int inside, tried;     /* probe number the hold task is in; intruders done with it */
  int n_probes;
  int spec_ran;                 /* spec calls that finished inline instead of BUSY */
} busy_world;

static busy_world B;

static void hold_task(void *ctx, size_t b, size_t e, int w) {
  (void)b, (void)e, (void)w;
  int probe = *(int *)ctx;
  atomic_store(&B.inside, probe);
  if (!wait_eq(&B.tried, probe * N_INTRUDERS)) FAIL("probe %d: the intruders did not come back within 60 s", probe);
}

static void *busy_owner(void *argv) {
  (void)argv;
  for (int probe = 1; probe <= B.n_probes; probe++) {
    abuf_poison(&B.shared);
    int ctx = probe;
    heed_pool *pool = heed_runtime_pool(B.rt);
    EXPECT_ST(heed_pool_parallel_for(pool, 1, (probe & 1) ? HEED_SCHEDULE_STATIC : HEED_SCHEDULE_DYNAMIC, 0, hold_task, &ctx),
              HEED_OK);
    const char *t = abuf_touched(&B.shared);
    if (*t) FAIL("probe %d: a call refused with BUSY wrote into the shared %s", probe, t);
    /* the runtime still answers right afterwards */
    attn_check(B.rt, &B.shared, probe & 2, probe & 1, BUSY_NO, "busy owner");
  }
  return NULL;
}

typedef struct intruder_arg {
  int id;
  int spec_ran;
} intruder_arg;

static void *busy_intruder(void *argv) {
  intruder_arg *a = argv;
  for (int probe = 1; probe <= B.n_probes; probe++) {
    if (!wait_eq(&B.inside, probe)) {
      FAIL("probe %d: the owner's task did not start within 60 s", probe);
      return NULL;
    }
    EXPECT_ST(do_decode(B.rt, &A.pa, B.shared.out, B.shared.lse, B.shared.ws, A.ws_bytes), HEED_E_BUSY);
    EXPECT_ST(do_prefill(B.rt, &A.pb, B.shared.out, B.shared.lse, B.shared.ws, A.ws_bytes), HEED_E_BUSY);
    EXPECT_ST(heed_pool_parallel_for(heed_runtime_pool(B.rt), 8, HEED_SCHEDULE_DYNAMIC, 1, never_task, NULL), HEED_E_BUSY);
    EXPECT_ST(heed_pool_hold(heed_runtime_pool(B.rt)), HEED_E_BUSY);
    /* spec: BUSY, or (a pass small enough to run inline) the right answer */
    int busy = spec_check(B.spec[a->id], probe % N_SEEDS, BUSY_ONCE, "busy intruder");
    a->spec_ran += 4 - busy;
    atomic_fetch_add(&B.tried, 1);
  }
  return NULL;
}

static void phase_busy(void) {
  B.rt = open_rt(S.rt_threads);
  for (int i = 0; i < N_INTRUDERS; i++) B.spec[i] = spec_new(B.rt);
  abuf_init(&B.shared);
  atomic_store(&B.inside, 0);
  atomic_store(&B.tried, 0);
  B.n_probes = S.busy_probes;
  pthread_t own;
  intruder_arg ia[N_INTRUDERS];
  pthread_t th[N_INTRUDERS];
  if (pthread_create(&own, NULL, busy_owner, NULL)) die("pthread_create", "");
  for (int i = 0; i < N_INTRUDERS; i++) {
    ia[i] = (intruder_arg){.id = i};
    if (pthread_create(&th[i], NULL, busy_intruder, &ia[i])) die("pthread_create", "");
  }
  pthread_join(own, NULL);
  int ran = 0;
  for (int i = 0; i < N_INTRUDERS; i++) pthread_join(th[i], NULL), ran += ia[i].spec_ran;
  abuf_free(&B.shared);
  for (int i = 0; i < N_INTRUDERS; i++) heed_spec_destroy(B.spec[i]);
  heed_runtime_close(B.rt);
  if (!S.quiet)
    printf("busy: %d probes, %d intruders each; %d spec calls ran inline (right answer), the rest BUSY\n", B.n_probes,
           N_INTRUDERS, ran);
}

/* ---------------- mixed: shared runtime, shared verifier ---------------- */

typedef struct mixed_arg {
  int id;
  heed_runtime *rt;
  heed_spec *spec;
  int ran, busy;
} mixed_arg;

static void *mixed_thread(void *argv) {
  mixed_arg *a = argv;
  char who[32];
  snprintf(who, sizeof who, "mixed thread %d", a->id);
  if (!a->spec) { /* attention on a runtime a spec thread also uses */
    abuf buf;
    abuf_init(&buf);
    for (int it = 0; it < S.mixed_iters * 4; it++) {
      a->busy += attn_check(a->rt, &buf, it & 1, (it >> 1) & 1, BUSY_RETRY, who);
      a->ran++;
    }
    abuf_free(&buf);
    return NULL;
  }
  for (int it = 0; it < S.mixed_iters; it++) {
    a->busy += spec_check(a->spec, (a->id + it) % N_SEEDS, BUSY_RETRY, who);
    a->ran += 4;
  }
  return NULL;
}

static void phase_mixed(void) {
  heed_runtime *r0 = open_rt(S.rt_threads), *r1 = open_rt(S.rt_threads);
  heed_spec *s0 = spec_new(r0), *s1 = spec_new(r1);
  /* 0: attention on r0; 1: spec s0 on r0; 2 and 3: both on the one verifier s1 */
  mixed_arg args[4] = {{.id = 0, .rt = r0}, {.id = 1, .rt = r0, .spec = s0}, {.id = 2, .spec = s1}, {.id = 3, .spec = s1}};
  run_threads(4, mixed_thread, args, sizeof *args);
  if (!S.quiet)
    printf("mixed: attention+spec on one runtime: %d+%d ran, %d+%d BUSY; two threads on one verifier: %d+%d ran, %d+%d BUSY\n",
           args[0].ran, args[1].ran, args[0].busy, args[1].busy, args[2].ran, args[3].ran, args[2].busy, args[3].busy);
  heed_spec_destroy(s0);
  heed_spec_destroy(s1);
  heed_runtime_close(r0);
  heed_runtime_close(r1);
}

/* ---------------- main ---------------- */

static int parse_phases(const char *s, unsigned *out) {
  static const char *names[] = {"pool", "attn", "busy", "spec", "mixed"};
  unsigned m = 0;
  char buf[128];
  snprintf(buf, sizeof buf, "%s", s);
  for (char *save = NULL, *t = strtok_r(buf, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
    int found = 0;
    for (unsigned i = 0; i < 5; i++)
      if (!strcmp(t, names[i])) m |= 1u << i, found = 1;
    if (!strcmp(t, "all")) m |= 31, found = 1;
    if (!found) return 0;
  }
  *out = m;
  return m != 0;
}

static int parse_count(const char *s, int lo, int hi, int *out) {
  char *end;
  long v = strtol(s, &end, 10);
  if (!*s || *end || v < lo || v > hi) return 0;
  *out = (int)v;
  return 1;
}

int main(int argc, char **argv) {
  static const struct option opts[] = {{"threads", 1, 0, 't'},     {"pool-jobs", 1, 0, 'p'}, {"attn-iters", 1, 0, 'a'},
                                       {"busy-probes", 1, 0, 'b'}, {"spec-iters", 1, 0, 's'}, {"mixed-iters", 1, 0, 'm'},
                                       {"rt-threads", 1, 0, 'r'},  {"only", 1, 0, 'o'},       {"quiet", 0, 0, 'q'},
                                       {"help", 0, 0, 'h'},        {0, 0, 0, 0}};
  int c, ok = 1;
  setvbuf(stdout, NULL, _IOLBF, 0); /* lines reach the log before a TSan report ends the run */
  while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
    switch (c) {
    case 't': ok &= parse_count(optarg, 1, 64, &S.threads); break;
    case 'p': ok &= parse_count(optarg, 0, 1000000, &S.pool_jobs); break;
    case 'a': ok &= parse_count(optarg, 0, 1000000, &S.attn_iters); break;
    case 'b': ok &= parse_count(optarg, 0, 1000000, &S.busy_probes); break;
    case 's': ok &= parse_count(optarg, 0, 1000000, &S.spec_iters); break;
    case 'm': ok &= parse_count(optarg, 0, 1000000, &S.mixed_iters); break;
    case 'r': ok &= parse_count(optarg, 1, 4096, &S.rt_threads); break;
    case 'o': ok &= parse_phases(optarg, &S.phases); break;
    case 'q': S.quiet = 1; break;
    default: ok = 0;
    }
  }
  if (!ok || optind != argc) {
    fprintf(stderr,
            "usage: %s [--threads N] [--pool-jobs N] [--attn-iters N] [--busy-probes N] [--spec-iters N]\n"
            "          [--mixed-iters N] [--rt-threads N] [--only pool,attn,busy,spec,mixed] [--quiet]\n",
            argv[0]);
    return 2;
  }
  if (!S.rt_threads) { /* several workers per runtime, within what HEED_THREADS accepts here */
    heed_runtime *rt = open_rt(0);
    unsigned pus = heed_topology_get_summary(heed_runtime_topology(rt))->n_pus;
    heed_runtime_close(rt);
    S.rt_threads = pus < 2 ? 1 : pus > 4 ? 4 : (int)pus;
  }
  if (!S.quiet) printf("tsan_stress: %d threads, %d pool workers per runtime\n", S.threads, S.rt_threads);
  if (S.phases & PH_POOL) phase_pool();
  if (S.phases & (PH_ATTN | PH_BUSY | PH_SPEC | PH_MIXED)) {
    attn_setup();
    heed_runtime *rt = open_rt(S.rt_threads);
    spec_setup(rt);
    heed_runtime_close(rt);
    if (S.phases & PH_ATTN) phase_attn();
    if (S.phases & PH_BUSY) phase_busy();
    if (S.phases & PH_SPEC) phase_spec();
    if (S.phases & PH_MIXED) phase_mixed();
    spec_teardown();
    attn_teardown();
  }
  int f = atomic_load(&g_fail);
  if (f) {
    fprintf(stderr, "tsan_stress: %d wrong result(s)\n", f);
    return 1;
  }
  if (!S.quiet) printf("tsan_stress: all results right\n");
  return 0;
}
