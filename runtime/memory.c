/* runtime/memory.c - aligned allocation, bound to NUMA nodes through hwloc
 * when there is more than one node. A small header in front of the block
 * remembers how to free it. */
#include <errno.h>
#include <hwloc.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "heed/memory.h"
#include "runtime/internal.h"

typedef struct block_hdr {
  void *base;            /* what the allocator returned */
  size_t total;          /* bytes at base */
  hwloc_topology_t hw;   /* non-NULL: free with hwloc_free */
  uint64_t magic;
} block_hdr;

#define BLOCK_MAGIC 0x68656564626c6b31ull /* "heedblk1" */

heed_status heed_mem_alloc(const heed_topology *topo, size_t bytes, size_t align, int numa_node,
                           void **out, heed_error *err) {
  if (!out) return heed_err_set(err, HEED_E_INVALID, "heed_mem_alloc: out is NULL");
  *out = NULL;
  if (!bytes) return heed_err_set(err, HEED_E_INVALID, "heed_mem_alloc: bytes=0; accepted: > 0");
  if (align < 8 || align > 4096 || (align & (align - 1)))
    return heed_err_set(err, HEED_E_INVALID,
                        "heed_mem_alloc: align=%zu; accepted: a power of two in 8..4096", align);
  if (numa_node < HEED_NUMA_INTERLEAVE)
    return heed_err_set(err, HEED_E_INVALID,
                        "heed_mem_alloc: numa_node=%d; accepted: a node's OS index, HEED_NUMA_ANY (-1) "
                        "or HEED_NUMA_INTERLEAVE (-2)", numa_node);
  size_t offset = (sizeof(block_hdr) + align - 1) & ~(align - 1);
  if (bytes > SIZE_MAX - offset)
    return heed_err_set(err, HEED_E_INVALID, "heed_mem_alloc: bytes=%zu overflows", bytes);
  size_t total = bytes + offset;

  hwloc_topology_t hw = topo ? (hwloc_topology_t)heed_topology_hwloc(topo) : NULL;
  unsigned n_numa = topo ? heed_topology_get_summary(topo)->n_numa : 1;
  if (numa_node >= 0) {
    int found = 0;
    for (unsigned i = 0; i < n_numa && topo; i++) {
      unsigned os;
      heed_topology_get_numa(topo, i, &os, NULL);
      found |= (int)os == numa_node;
    }
    if (!found)
      return heed_err_set(err, HEED_E_INVALID, "heed_mem_alloc: numa_node=%d is not a NUMA node of %s",
                          numa_node, topo ? "this topology" : "a NULL topology");
  }

  void *base = NULL;
  hwloc_topology_t freer = NULL;
  if (hw && n_numa > 1 && numa_node != HEED_NUMA_ANY && heed_topology_get_summary(topo)->is_this_system) {
    hwloc_nodeset_t set = hwloc_bitmap_alloc();
    hwloc_membind_policy_t pol = HWLOC_MEMBIND_BIND;
    if (numa_node >= 0)
      hwloc_bitmap_only(set, (unsigned)numa_node);
    else {
      hwloc_bitmap_copy(set, hwloc_topology_get_topology_nodeset(hw));
      pol = HWLOC_MEMBIND_INTERLEAVE;
    }
    base = hwloc_alloc_membind(hw, total, set, pol, HWLOC_MEMBIND_BYNODESET);
    hwloc_bitmap_free(set);
    if (base) freer = hw; /* binding unsupported: fall through to a plain allocation */
  }
  if (!base) {
    size_t a = align < sizeof(void *) ? sizeof(void *) : align;
    if (posix_memalign(&base, a, total) != 0) base = NULL;
  }
  if (!base)
    return heed_err_set(err, HEED_E_NOMEM, "heed_mem_alloc: cannot allocate %zu bytes", bytes);
  char *user = (char *)base + offset;
  block_hdr *h = (block_hdr *)user - 1;
  h->base = base;
  h->total = total;
  h->hw = freer;
  h->magic = BLOCK_MAGIC;
  *out = user;
  return HEED_OK;
}

void heed_mem_free(void *p) {
  if (!p) return;
  block_hdr *h = (block_hdr *)p - 1;
  if (h->magic != BLOCK_MAGIC) abort(); /* not from heed_mem_alloc, or freed twice */
  h->magic = 0;
  if (h->hw)
    hwloc_free(h->hw, h->base, h->total);
  else
    free(h->base);
}
