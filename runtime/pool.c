/* runtime/pool.c - pinned worker threads and a parallel-for.
 *
 * Workers wait for a new generation number: a short spin (a decode step is
 * tens of microseconds, a futex wake is several), then a condition variable.
 * The caller runs worker 0's share itself.
 *
 * A DYNAMIC job is over when its items are done, not when every worker has
 * checked in: a worker that sleeps, or that the OS has put aside for
 * another process, does not hold up a job the others finished (with 16
 * workers on a shared machine that cost milliseconds on 50-microsecond
 * jobs). Such a worker may wake into a job that is over, or into the next
 * one: the generation is odd while the caller rewrites the job, a worker
 * counts itself active before it reads the job and backs off if the
 * generation moved, and the caller waits for the active ones to leave
 * before it rewrites (sequentially consistent: one of the two sees the
 * other). STATIC gives each worker its own range, so it waits for all. */
#include <errno.h>
#include <hwloc.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "heed/pool.h"
#include "runtime/internal.h"
#include "runtime/pool_internal.h"

/* Waiting: SPIN_NS of pauses (a time, not a count: a pause is 3 cycles on
 * one core and 140 on another, and 2000 of them were under 2 microseconds
 * on Zen 1, so workers slept between the jobs of one call and each job paid
 * a futex wake), then YIELD_ITERS sched_yield calls, which hand the core to
 * a thread we may be waiting for when the machine is oversubscribed, then a
 * condition variable. */
#define SPIN_NS 50000
#define YIELD_ITERS 64


#if defined(__x86_64__) || defined(__i386__)
#define CPU_RELAX() __builtin_ia32_pause()
#elif defined(__aarch64__)
#define CPU_RELAX() __asm__ volatile("yield")
#else
#define CPU_RELAX() ((void)0)
#endif

static uint64_t now_ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

/* One step of a wait; returns 0 once the spinning and yielding are over. */
static inline int wait_step(int *spins, uint64_t *t0) {
  if (*spins < 0) { /* yielding */
    if (*spins <= -YIELD_ITERS) return 0;
    (*spins)--;
    sched_yield();
    return 1;
  }
  if ((++*spins & 63) == 0) { /* the clock every 64 pauses */
    uint64_t t = now_ns();
    if (!*t0) *t0 = t;
    else if (t - *t0 > SPIN_NS) *spins = -1;
  }
  CPU_RELAX();
  return 1;
}

struct heed_pool {
  int n;
  const heed_topology *topo;
  pthread_t *threads;   /* [n-1]: workers 1..n-1 */
  pthread_mutex_t mu;
  pthread_cond_t cv_work, cv_done;
  /* Each counter on a cache line of its own: the workers spin on gen, and a
   * write to a counter beside it would pull the line from every one of
   * them (on 16 cores, several microseconds a job). */
  _Alignas(64) atomic_ulong gen; /* even: a job (or shutdown) is posted; odd: the caller is rewriting it */
  _Alignas(64) atomic_int remaining; /* STATIC: workers 1..n-1 still on their ranges */
  _Alignas(64) atomic_int active;    /* workers inside the current job's fields */
  _Alignas(64) atomic_size_t done;   /* DYNAMIC: items finished */
  _Alignas(64) atomic_int busy; /* a parallel_for is running (the counters below are cold) */
  atomic_int started;   /* workers past their pinning */
  atomic_int n_pinned;
  atomic_int stop;
  /* the current job */
  heed_pool_task task;
  void *ctx;
  size_t n_items, chunk;
  heed_schedule sched;
  _Alignas(64) atomic_size_t next;
  char pad_[64];
  char pin_note[160];
  heed_error err;
};

typedef struct worker_arg {
  heed_pool *pool;
  int id;
} worker_arg;

static _Thread_local const heed_pool *tls_running; /* the pool whose task this thread runs */
static _Thread_local const heed_pool *tls_held;    /* the pool this thread holds (heed_pool_hold) */

static void run_share(heed_pool *p, int w) {
  const heed_pool *outer = tls_running;
  tls_running = p;
  if (p->sched == HEED_SCHEDULE_STATIC) {
    size_t b = p->n_items * (size_t)w / (size_t)p->n, e = p->n_items * (size_t)(w + 1) / (size_t)p->n;
    if (b < e) p->task(p->ctx, b, e, w);
  } else {
    for (;;) {
      size_t b = atomic_fetch_add_explicit(&p->next, p->chunk, memory_order_relaxed);
      if (b >= p->n_items) break;
      size_t e = b + p->chunk < p->n_items ? b + p->chunk : p->n_items;
      p->task(p->ctx, b, e, w);
      if (atomic_fetch_add_explicit(&p->done, e - b, memory_order_acq_rel) + (e - b) == p->n_items && w) {
        pthread_mutex_lock(&p->mu); /* the last items: the caller may be waiting */
        pthread_cond_signal(&p->cv_done);
        pthread_mutex_unlock(&p->mu);
      }
    }
  }
  tls_running = outer;
}

static void pin_self(heed_pool *p, int id) {
  hwloc_topology_t hw = (hwloc_topology_t)heed_topology_hwloc(p->topo);
  const heed_topology_summary *s = heed_topology_get_summary(p->topo);
  /* One worker per core while there are cores; beyond that, one per PU. */
  hwloc_obj_t o = (unsigned)p->n <= s->n_cores
                      ? hwloc_get_obj_by_type(hw, HWLOC_OBJ_CORE, (unsigned)id)
                      : hwloc_get_obj_by_type(hw, HWLOC_OBJ_PU, (unsigned)id % s->n_pus);
  if (!o) o = hwloc_get_obj_by_type(hw, HWLOC_OBJ_PU, (unsigned)id % s->n_pus);
  if (o && hwloc_set_cpubind(hw, o->cpuset, HWLOC_CPUBIND_THREAD) == 0) {
    atomic_fetch_add(&p->n_pinned, 1);
    return;
  }
  int e = errno;
  pthread_mutex_lock(&p->mu);
  if (!p->pin_note[0])
    snprintf(p->pin_note, sizeof p->pin_note, "hwloc_set_cpubind failed for worker %d: %s%s", id,
             strerror(e), (e == ENOSYS || e == EXDEV) ? " (binding not possible here; running unpinned)" : "");
  pthread_mutex_unlock(&p->mu);
}

static void *worker_main(void *argv) {
  worker_arg a = *(worker_arg *)argv;
  free(argv);
  heed_pool *p = a.pool;
  if (p->topo) pin_self(p, a.id);
  unsigned long seen = atomic_load(&p->gen);
  atomic_fetch_add(&p->started, 1);
  for (;;) {
    int spins = 0;
    uint64_t t0 = 0;
    unsigned long g;
    while (((g = atomic_load(&p->gen)) == seen || (g & 1)) && wait_step(&spins, &t0)) {
    }
    if ((g = atomic_load(&p->gen)) == seen || (g & 1)) {
      pthread_mutex_lock(&p->mu);
      while (((g = atomic_load(&p->gen)) == seen || (g & 1)) && !atomic_load(&p->stop)) pthread_cond_wait(&p->cv_work, &p->mu);
      pthread_mutex_unlock(&p->mu);
    }
    if (atomic_load(&p->stop)) break;
    atomic_fetch_add(&p->active, 1);
    if (atomic_load(&p->gen) != g) { /* the caller is rewriting the job: look again */
      atomic_fetch_sub(&p->active, 1);
      continue;
    }
    seen = g;
    const int stat = p->sched == HEED_SCHEDULE_STATIC;
    run_share(p, a.id);
    if (stat && atomic_fetch_sub_explicit(&p->remaining, 1, memory_order_acq_rel) == 1) {
      pthread_mutex_lock(&p->mu);
      pthread_cond_signal(&p->cv_done);
      pthread_mutex_unlock(&p->mu);
    }
    atomic_fetch_sub(&p->active, 1);
  }
  return NULL;
}

heed_status heed_pool_create(const heed_topology *topo, int n, int pin, heed_pool **out, heed_error *err) {
  if (!out) return heed_err_set(err, HEED_E_INVALID, "heed_pool_create: out is NULL");
  *out = NULL;
  if (n < 1 || n > 4096)
    return heed_err_set(err, HEED_E_INVALID, "heed_pool_create: n_workers=%d; accepted: 1..4096", n);
  heed_pool *p = aligned_alloc(64, (sizeof *p + 63) / 64 * 64);
  if (p) memset(p, 0, sizeof *p);
  if (!p) return heed_err_set(err, HEED_E_NOMEM, "no memory for a pool of %d workers", n);
  p->n = n;
  pthread_mutex_init(&p->mu, NULL);
  pthread_cond_init(&p->cv_work, NULL);
  pthread_cond_init(&p->cv_done, NULL);
  if (pin && topo) {
    if (!heed_topology_get_summary(topo)->is_this_system)
      snprintf(p->pin_note, sizeof p->pin_note, "the topology is a recording, not this machine; running unpinned");
    else
      p->topo = topo;
  } else {
    snprintf(p->pin_note, sizeof p->pin_note, "%s", topo ? "pinning turned off" : "no topology given");
  }
  if (n > 1) {
    p->threads = calloc((size_t)n - 1, sizeof *p->threads);
    if (!p->threads) {
      free(p);
      return heed_err_set(err, HEED_E_NOMEM, "no memory for %d worker threads", n - 1);
    }
  }
  for (int i = 1; i < n; i++) {
    worker_arg *a = malloc(sizeof *a);
    int rc = a ? 0 : ENOMEM;
    if (a) {
      a->pool = p;
      a->id = i;
      rc = pthread_create(&p->threads[i - 1], NULL, worker_main, a);
      if (rc) free(a);
    }
    if (rc) {
      p->n = i; /* join the ones that started */
      heed_pool_destroy(p);
      return heed_err_set(err, HEED_E_NOMEM, "cannot start worker %d of %d: %s", i, n, strerror(rc));
    }
  }
  while (atomic_load(&p->started) < n - 1) CPU_RELAX();
  *out = p;
  return HEED_OK;
}

void heed_pool_destroy(heed_pool *p) {
  if (!p) return;
  pthread_mutex_lock(&p->mu);
  atomic_store(&p->stop, 1);
  atomic_fetch_add(&p->gen, 2);
  pthread_cond_broadcast(&p->cv_work);
  pthread_mutex_unlock(&p->mu);
  for (int i = 1; i < p->n; i++) pthread_join(p->threads[i - 1], NULL);
  pthread_cond_destroy(&p->cv_work);
  pthread_cond_destroy(&p->cv_done);
  pthread_mutex_destroy(&p->mu);
  free(p->threads);
  free(p);
}

int heed_pool_n_workers(const heed_pool *p) { return p ? p->n : 0; }
int heed_pool_n_pinned(const heed_pool *p) { return p ? atomic_load(&((heed_pool *)p)->n_pinned) : 0; }
const char *heed_pool_pin_note(const heed_pool *p) { return p ? p->pin_note : ""; }
/* p->err is written under p->mu by any thread whose call is refused (two at
 * once when both find the pool busy), so the reader takes a copy under it. */
const char *heed_pool_last_error(const heed_pool *p) {
  return p ? heed_err_msg_copy(&p->err, &((heed_pool *)p)->mu) : ""; /* the cast: the lock only */
}

static heed_status pool_fail(heed_pool *p, heed_status st, const char *fmt, const char *a) {
  pthread_mutex_lock(&p->mu);
  heed_err_set(&p->err, st, fmt, a);
  pthread_mutex_unlock(&p->mu);
  return st;
}

heed_status heed_pool_parallel_for(heed_pool *p, size_t n, heed_schedule sched, size_t chunk,
                                   heed_pool_task task, void *ctx) {
  if (!p) return HEED_E_INVALID;
  if (!task) return pool_fail(p, HEED_E_INVALID, "heed_pool_parallel_for: task is %s", "NULL");
  if (sched != HEED_SCHEDULE_STATIC && sched != HEED_SCHEDULE_DYNAMIC)
    return pool_fail(p, HEED_E_INVALID, "heed_pool_parallel_for: schedule %s; accepted: STATIC, DYNAMIC",
                     "is not a heed_schedule");
  int expect = 0;
  const int held = tls_held == p && tls_running != p; /* this thread holds it: busy is already ours */
  if (!held && !atomic_compare_exchange_strong(&p->busy, &expect, 1))
    return pool_fail(p, HEED_E_BUSY,
                     "heed_pool_parallel_for: called %s while this pool runs another parallel_for",
                     tls_running == p ? "from inside one of its own tasks" : "from a second thread");
  if (n == 0) {
    if (!held) atomic_store(&p->busy, 0);
    return HEED_OK;
  }
  if (p->n > 1) { /* odd: no worker enters; those still in the last job leave (they are running) */
    atomic_fetch_add(&p->gen, 1);
    while (atomic_load(&p->active) > 0) CPU_RELAX();
  }
  p->task = task;
  p->ctx = ctx;
  p->n_items = n;
  p->sched = sched;
  p->chunk = chunk ? chunk : 1;
  atomic_store_explicit(&p->next, 0, memory_order_relaxed);
  atomic_store_explicit(&p->done, 0, memory_order_relaxed);
  if (p->n > 1) {
    atomic_store_explicit(&p->remaining, p->n - 1, memory_order_relaxed);
    pthread_mutex_lock(&p->mu);
    atomic_fetch_add(&p->gen, 1); /* even: posted */
    pthread_cond_broadcast(&p->cv_work);
    pthread_mutex_unlock(&p->mu);
  }
  run_share(p, 0);
  if (p->n > 1) { /* STATIC: every worker's range; DYNAMIC: every item */
    atomic_int *wr = &p->remaining;
    const int stat = sched == HEED_SCHEDULE_STATIC;
#define POOL_OPEN() (stat ? atomic_load_explicit(wr, memory_order_acquire) > 0 : atomic_load_explicit(&p->done, memory_order_acquire) < n)
    int spins = 0;
    uint64_t t0 = 0;
    while (POOL_OPEN() && wait_step(&spins, &t0)) {
    }
    if (POOL_OPEN()) {
      pthread_mutex_lock(&p->mu);
      while (POOL_OPEN()) pthread_cond_wait(&p->cv_done, &p->mu);
      pthread_mutex_unlock(&p->mu);
    }
#undef POOL_OPEN
  }
  if (!held) atomic_store_explicit(&p->busy, 0, memory_order_release);
  return HEED_OK;
}

heed_status heed_pool_hold(heed_pool *p) {
  if (!p) return HEED_E_INVALID;
  int expect = 0;
  if (tls_running == p)
    return pool_fail(p, HEED_E_BUSY, "heed_pool_hold: called %s while this pool runs another parallel_for",
                     "from inside one of its own tasks");
  if (tls_held) return pool_fail(p, HEED_E_BUSY, "heed_pool_hold: %s", "this thread already holds a pool");
  if (!atomic_compare_exchange_strong(&p->busy, &expect, 1))
    return pool_fail(p, HEED_E_BUSY, "heed_pool_hold: called %s while this pool runs another parallel_for",
                     "from a second thread");
  tls_held = p;
  return HEED_OK;
}

void heed_pool_release(heed_pool *p) {
  if (!p || tls_held != p) return;
  tls_held = NULL;
  atomic_store_explicit(&p->busy, 0, memory_order_release);
}
