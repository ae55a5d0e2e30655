/* runtime/pool_internal.h - holding a pool across several parallel_for calls.
 * Internal; not installed. */
#ifndef HEED_POOL_INTERNAL_H
#define HEED_POOL_INTERNAL_H

#include "heed/pool.h"

/* Takes the pool for a sequence of heed_pool_parallel_for calls from this
 * thread, as one call would: a library call that runs several passes, or
 * writes its work space before the first, holds the pool first, so that a
 * call from another thread is refused with HEED_E_BUSY before it has written
 * anything, and cannot take the pool between the passes. While held, this
 * thread's parallel_for calls run (a task's own calls are still refused);
 * other threads' get HEED_E_BUSY. One pool at a time per thread. Returns
 * HEED_E_BUSY (message in heed_pool_last_error) when the pool is running or
 * held, or when this thread already holds a pool. */
heed_status heed_pool_hold(heed_pool *pool);
/* Gives back a pool this thread holds; anything else is ignored. */
void heed_pool_release(heed_pool *pool);

#endif
