/* runtime/backend.c - the backends built into this libheed. A backend joins
 * by adding its vtable here. */
#include "runtime/backend.h"

static const heed_backend_iface *const registry[] = {
    &heed_backend_cpu_iface,
#ifdef HEED_HAVE_OPENCL
    &heed_backend_opencl_iface,
#endif
};

const heed_backend_iface *heed_backend_find(heed_backend_kind kind) {
  for (size_t i = 0; i < sizeof registry / sizeof registry[0]; i++)
    if (registry[i]->kind == kind) return registry[i];
  return NULL;
}

int heed_backend_built(heed_backend_kind kind) { return heed_backend_find(kind) != NULL; }
