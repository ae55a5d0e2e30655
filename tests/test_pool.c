#include <criterion/criterion.h>
#include <hwloc.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "heed/pool.h"

typedef struct hits {
  atomic_int *count;  /* [n] */
  atomic_int bad_worker;
  int n_workers;
  size_t *first_of;   /* [n_workers]: first index each worker saw (static check) */
  size_t *last_of;
} hits;

static void count_task(void *ctx, size_t b, size_t e, int w) {
  hits *h = ctx;
  if (w < 0 || w >= h->n_workers) atomic_fetch_add(&h->bad_worker, 1);
  for (size_t i = b; i < e; i++) atomic_fetch_add(&h->count[i], 1);
  if (h->first_of) {
    if (h->first_of[w] == (size_t)-1) h->first_of[w] = b;
    h->last_of[w] = e;
  }
}

static void run_and_check(heed_pool *p, size_t n, heed_schedule sched, size_t chunk) {
  int W = heed_pool_n_workers(p);
  hits h = {.n_workers = W};
  h.count = calloc(n ? n : 1, sizeof *h.count);
  if (sched == HEED_SCHEDULE_STATIC) {
    h.first_of = malloc(W * sizeof(size_t));
    h.last_of = malloc(W * sizeof(size_t));
    for (int w = 0; w < W; w++) h.first_of[w] = h.last_of[w] = (size_t)-1;
  }
  cr_assert_eq(heed_pool_parallel_for(p, n, sched, chunk, count_task, &h), HEED_OK, "%s", heed_pool_last_error(p));
  for (size_t i = 0; i < n; i++)
    cr_assert_eq(atomic_load(&h.count[i]), 1, "index %zu ran %d times (n=%zu W=%d sched=%d chunk=%zu)", i,
                 atomic_load(&h.count[i]), n, W, sched, chunk);
  cr_assert_eq(atomic_load(&h.bad_worker), 0);
  if (h.first_of)
    for (int w = 0; w < W; w++) {
      size_t b = n * (size_t)w / (size_t)W, e = n * (size_t)(w + 1) / (size_t)W;
      if (b < e) {
        cr_assert_eq(h.first_of[w], b, "static: worker %d starts at %zu", w, h.first_of[w]);
        cr_assert_eq(h.last_of[w], e);
      } else {
        cr_assert_eq(h.first_of[w], (size_t)-1, "static: worker %d got an empty range", w);
      }
    }
  free(h.count);
  free(h.first_of);
  free(h.last_of);
}

Test(pool, every_index_runs_exactly_once) {
  static const int workers[] = {1, 2, 3, 8};
  static const size_t sizes[] = {0, 1, 2, 7, 1000, 100003};
  static const size_t chunks[] = {0, 1, 7, 64};
  for (int wi = 0; wi < 4; wi++) {
    heed_pool *p;
    cr_assert_eq(heed_pool_create(NULL, workers[wi], 0, &p, NULL), HEED_OK);
    cr_assert_eq(heed_pool_n_workers(p), workers[wi]);
    for (int si = 0; si < 6; si++) {
      run_and_check(p, sizes[si], HEED_SCHEDULE_STATIC, 0);
      for (int ci = 0; ci < 4; ci++) run_and_check(p, sizes[si], HEED_SCHEDULE_DYNAMIC, chunks[ci]);
    }
    heed_pool_destroy(p);
  }
}

static void tiny(void *ctx, size_t b, size_t e, int w) {
  (void)w;
  atomic_fetch_add((atomic_long *)ctx, (long)(e - b));
}

Test(pool, many_short_jobs_in_a_row) {
  heed_pool *p;
  cr_assert_eq(heed_pool_create(NULL, 3, 0, &p, NULL), HEED_OK);
  atomic_long total = 0;
  for (int i = 0; i < 3000; i++)
    cr_assert_eq(heed_pool_parallel_for(p, 5, i & 1 ? HEED_SCHEDULE_DYNAMIC : HEED_SCHEDULE_STATIC, 1, tiny, &total),
                 HEED_OK);
  cr_assert_eq(atomic_load(&total), 3000L * 5);
  heed_pool_destroy(p);
}

typedef struct nest {
  heed_pool *p;
  atomic_int busy_seen;
  atomic_int other_seen;
} nest;

static void noop(void *ctx, size_t b, size_t e, int w) { (void)ctx, (void)b, (void)e, (void)w; }

static void reenter(void *ctx, size_t b, size_t e, int w) {
  (void)b, (void)e, (void)w;
  nest *n = ctx;
  heed_status st = heed_pool_parallel_for(n->p, 4, HEED_SCHEDULE_STATIC, 0, noop, NULL);
  if (st == HEED_E_BUSY)
    atomic_fetch_add(&n->busy_seen, 1);
  else
    atomic_fetch_add(&n->other_seen, 1);
}

Test(pool, reentrant_use_is_refused) {
  nest n = {0};
  cr_assert_eq(heed_pool_create(NULL, 2, 0, &n.p, NULL), HEED_OK);
  cr_assert_eq(heed_pool_parallel_for(n.p, 2, HEED_SCHEDULE_STATIC, 0, reenter, &n), HEED_OK);
  cr_assert_eq(atomic_load(&n.busy_seen), 2);
  cr_assert_eq(atomic_load(&n.other_seen), 0);
  cr_assert(strstr(heed_pool_last_error(n.p), "inside one of its own tasks"), "%s", heed_pool_last_error(n.p));
  /* The pool still works afterwards. */
  run_and_check(n.p, 100, HEED_SCHEDULE_DYNAMIC, 3);
  heed_pool_destroy(n.p);
}

typedef struct hold {
  heed_pool *p;
  atomic_int entered, release;
} hold;

static void wait_task(void *ctx, size_t b, size_t e, int w) {
  (void)b, (void)e;
  hold *h = ctx;
  if (w == 0) {
    atomic_store(&h->entered, 1);
    while (!atomic_load(&h->release)) sched_yield();
  }
}

static void *runner(void *arg) {
  hold *h = arg;
  heed_pool_parallel_for(h->p, 2, HEED_SCHEDULE_STATIC, 0, wait_task, h);
  return NULL;
}

Test(pool, concurrent_use_from_a_second_thread_is_refused) {
  hold h = {0};
  cr_assert_eq(heed_pool_create(NULL, 2, 0, &h.p, NULL), HEED_OK);
  pthread_t t;
  pthread_create(&t, NULL, runner, &h);
  while (!atomic_load(&h.entered)) sched_yield();
  cr_assert_eq(heed_pool_parallel_for(h.p, 4, HEED_SCHEDULE_STATIC, 0, noop, NULL), HEED_E_BUSY);
  cr_assert(strstr(heed_pool_last_error(h.p), "from a second thread"), "%s", heed_pool_last_error(h.p));
  atomic_store(&h.release, 1);
  pthread_join(t, NULL);
  cr_assert_eq(heed_pool_parallel_for(h.p, 4, HEED_SCHEDULE_STATIC, 0, noop, NULL), HEED_OK);
  heed_pool_destroy(h.p);
}

typedef struct where {
  hwloc_topology_t hw;
  int n;
  int ok[64];
} where;

static void check_binding(void *ctx, size_t b, size_t e, int w) {
  (void)b, (void)e;
  where *wh = ctx;
  if (w == 0) return;
  hwloc_cpuset_t set = hwloc_bitmap_alloc();
  hwloc_obj_t core = hwloc_get_obj_by_type(wh->hw, HWLOC_OBJ_CORE, (unsigned)w);
  if (hwloc_get_cpubind(wh->hw, set, HWLOC_CPUBIND_THREAD) == 0 && core)
    wh->ok[w] = hwloc_bitmap_isequal(set, core->cpuset);
  hwloc_bitmap_free(set);
}

Test(pool, workers_are_pinned_one_per_core) {
  heed_topology *t;
  cr_assert_eq(heed_topology_load(&(heed_topology_options){.no_opencl = 1}, &t, NULL), HEED_OK);
  unsigned cores = heed_topology_get_summary(t)->n_cores;
  int n = cores > 8 ? 8 : (int)cores;
  heed_pool *p;
  cr_assert_eq(heed_pool_create(t, n, 1, &p, NULL), HEED_OK);
  if (heed_pool_n_pinned(p) != n - 1) {
    /* Binding can be impossible (containers, emulators): then the pool must say why. */
    cr_assert_neq(heed_pool_pin_note(p)[0], 0, "pinned %d of %d without a note", heed_pool_n_pinned(p), n - 1);
    cr_log_info("pinning not possible here: %s", heed_pool_pin_note(p));
  } else {
    where wh = {.hw = heed_topology_hwloc(t), .n = n};
    cr_assert_eq(heed_pool_parallel_for(p, (size_t)n, HEED_SCHEDULE_STATIC, 0, check_binding, &wh), HEED_OK);
    for (int w = 1; w < n; w++) cr_assert(wh.ok[w], "worker %d is not bound to core %d", w, w);
    cr_assert_str_eq(heed_pool_pin_note(p), "");
  }
  run_and_check(p, 4096, HEED_SCHEDULE_DYNAMIC, 16);
  heed_pool_destroy(p);
  cr_assert_eq(heed_pool_create(t, n, 0, &p, NULL), HEED_OK);
  cr_assert_eq(heed_pool_n_pinned(p), 0);
  cr_assert_str_eq(heed_pool_pin_note(p), "pinning turned off");
  heed_pool_destroy(p);
  heed_topology_destroy(t);
}

Test(pool, bad_arguments) {
  heed_pool *p = (heed_pool *)0x1;
  heed_error e = {0};
  cr_assert_eq(heed_pool_create(NULL, 0, 0, &p, &e), HEED_E_INVALID);
  cr_assert_null(p);
  cr_assert(strstr(e.msg, "n_workers=0"), "%s", e.msg);
  cr_assert_eq(heed_pool_create(NULL, -3, 0, &p, &e), HEED_E_INVALID);
  cr_assert_eq(heed_pool_create(NULL, 2, 0, NULL, &e), HEED_E_INVALID);
  cr_assert_eq(heed_pool_create(NULL, 2, 0, &p, NULL), HEED_OK);
  cr_assert_eq(heed_pool_parallel_for(p, 10, HEED_SCHEDULE_STATIC, 0, NULL, NULL), HEED_E_INVALID);
  cr_assert(strstr(heed_pool_last_error(p), "task"));
  cr_assert_eq(heed_pool_parallel_for(p, 10, (heed_schedule)9, 0, noop, NULL), HEED_E_INVALID);
  cr_assert_eq(heed_pool_parallel_for(NULL, 10, HEED_SCHEDULE_STATIC, 0, noop, NULL), HEED_E_INVALID);
  heed_pool_destroy(p);
  heed_pool_destroy(NULL);
}

/* A DYNAMIC job ends when its items are done, so a worker that was asleep
 * or put aside may wake into a job that is over, or into the next one while
 * the caller rewrites it. Many small jobs on more workers than this machine
 * has cores (late workers are the rule), STATIC ones between them: every
 * index runs exactly once, and nothing runs after parallel_for returns (a
 * late task would write into the next job's counts). */
Test(pool, late_workers_never_run_a_finished_job, .timeout = 120 * HEED_TEST_TIMEOUT_SCALE) {
  heed_pool *p = NULL;
  heed_error e = {0};
  cr_assert_eq(heed_pool_create(NULL, 8, 0, &p, &e), HEED_OK, "%s", e.msg);
  atomic_int count[64];
  for (int it = 0; it < 20000; it++) {
    const size_t n = 1 + (size_t)(it % 37);
    for (int i = 0; i < 64; i++) atomic_store(&count[i], 0);
    hits h = {.count = count, .n_workers = 8};
    cr_assert_eq(heed_pool_parallel_for(p, n, it % 5 ? HEED_SCHEDULE_DYNAMIC : HEED_SCHEDULE_STATIC, 1 + (size_t)(it % 3),
                                        count_task, &h),
                 HEED_OK);
    for (size_t i = 0; i < 64; i++)
      if (atomic_load(&count[i]) != (i < n)) cr_assert_fail("job %d (n=%zu): index %zu ran %d times", it, n, i, atomic_load(&count[i]));
    cr_assert_eq(atomic_load(&h.bad_worker), 0);
  }
  heed_pool_destroy(p);
}
