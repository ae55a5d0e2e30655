/* heed/memory.h - aligned, NUMA-aware allocation for big buffers.
 *
 * Big memory (KV cache, workspaces) belongs to the caller; these helpers give
 * it the right alignment and placement. On a machine with more than one NUMA
 * node, memory can be bound to a node or interleaved over all of them; on one
 * node the binding is skipped (nothing to choose).
 */
#ifndef HEED_MEMORY_H
#define HEED_MEMORY_H

#include <stddef.h>

#include "heed/status.h"
#include "heed/topology.h"

#ifdef __cplusplus
extern "C" {
#endif

enum {
  HEED_NUMA_ANY = -1,        /* first touch decides */
  HEED_NUMA_INTERLEAVE = -2  /* pages spread over all nodes */
};

/* Allocates bytes (> 0) aligned to align (a power of two, 8..4096), placed on
 * NUMA node numa_node (an OS index of a node in topo) or as HEED_NUMA_ANY /
 * HEED_NUMA_INTERLEAVE. topo is borrowed (NULL: no placement). The memory is
 * the caller's; free it with heed_mem_free. Contents are not initialised. */
heed_status heed_mem_alloc(const heed_topology *topo, size_t bytes, size_t align, int numa_node,
                           void **out, heed_error *err);
/* NULL is fine. Freeing a block twice, or a pointer heed_mem_alloc did not
 * return, aborts (as glibc's free does on a detected double free). */
void heed_mem_free(void *p);

#ifdef __cplusplus
}
#endif
#endif
