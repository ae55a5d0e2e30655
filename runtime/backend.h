/* runtime/backend.h - what a backend is: a vtable plus an opaque context.
 * Internal to libheed; the runtime opens one backend and holds its context.
 *
 * Required slots: open, close. Optional slots may be NULL: the backend does
 * not offer that operation, and the runtime answers HEED_E_UNSUPPORTED naming
 * the backend and the operation (later issues add attention, KV and sampling
 * slots here). */
#ifndef HEED_RUNTIME_BACKEND_H
#define HEED_RUNTIME_BACKEND_H

#include <stddef.h>

#include "heed/kernels.h"
#include "heed/pool.h"
#include "heed/runtime.h"
#include "heed/status.h"
#include "heed/topology.h"

/* What a backend gets at open; everything is borrowed from the runtime and
 * outlives the backend. */
typedef struct heed_backend_open_args {
  const heed_topology *topo;
  const heed_kernel_table *cpu_kernels; /* the host's kernel table */
  heed_pool *pool;                      /* the host's workers */
  int device;                           /* OpenCL device index; -1 for the CPU backend */
} heed_backend_open_args;

typedef struct heed_backend_iface {
  heed_backend_kind kind;
  const char *name;
  heed_status (*open)(const heed_backend_open_args *args, void **ctx, heed_error *err);
  void (*close)(void *ctx);
  /* Optional: one line for `heed info` ("avx2 kernels on 2 workers"). */
  void (*describe)(void *ctx, char *buf, size_t cap);
} heed_backend_iface;

/* The backend of that kind in this build, or NULL. */
const heed_backend_iface *heed_backend_find(heed_backend_kind kind);

extern const heed_backend_iface heed_backend_cpu_iface;

#endif
