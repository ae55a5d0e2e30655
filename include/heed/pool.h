/* heed/pool.h - a thread pool with one worker per physical core, pinned.
 *
 * The calling thread is worker 0 and runs its share of every parallel_for;
 * workers 1..n-1 are pool threads pinned to their own cores with
 * hwloc_set_cpubind. The caller's thread is not pinned (it is not heed's).
 * Pinning failures that mean "cannot here" (ENOSYS, EXDEV, or a replayed
 * topology) are soft: the pool runs unpinned and says so.
 *
 * One parallel_for at a time: a call from inside a task, or from a second
 * thread while one runs, returns HEED_E_BUSY instead of deadlocking.
 */
#ifndef HEED_POOL_H
#define HEED_POOL_H

#include <stddef.h>

#include "heed/status.h"
#include "heed/topology.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct heed_pool heed_pool;

typedef enum heed_schedule {
  HEED_SCHEDULE_STATIC,  /* [0,n) cut into one contiguous range per worker */
  HEED_SCHEDULE_DYNAMIC  /* workers take `chunk` indices at a time until none are left */
} heed_schedule;

/* Runs indices [begin, end) on worker `worker` (0 <= worker < n_workers). */
typedef void (*heed_pool_task)(void *ctx, size_t begin, size_t end, int worker);

/* topo is borrowed and must outlive the pool; NULL runs unpinned.
 * pin != 0: pin workers 1..n-1, one per core (per PU when n exceeds the cores). */
heed_status heed_pool_create(const heed_topology *topo, int n_workers, int pin, heed_pool **out,
                             heed_error *err);
void heed_pool_destroy(heed_pool *pool); /* joins the workers; NULL is fine */

int heed_pool_n_workers(const heed_pool *pool);
/* Workers whose pinning succeeded (0 when pinning was off or failed softly). */
int heed_pool_n_pinned(const heed_pool *pool);
/* Why pinning did not happen, "" when it did. Borrowed. */
const char *heed_pool_pin_note(const heed_pool *pool);

/* Calls task over [0, n) and returns when every index has run exactly once.
 * chunk: indices taken at a time under DYNAMIC (0 means 1); ignored by STATIC. */
heed_status heed_pool_parallel_for(heed_pool *pool, size_t n, heed_schedule sched, size_t chunk,
                                   heed_pool_task task, void *ctx);

/* The message of the last failed call on this pool. The text is this
 * thread's copy, valid until its next call of a *_last_error function; when calls on
 * several threads fail at once, it is one of their messages. */
const char *heed_pool_last_error(const heed_pool *pool);

#ifdef __cplusplus
}
#endif
#endif
