/* backends/opencl/cl_backend.h - what the OpenCL backend shows the rest of
 * libheed, its tests and the bench. Internal. */
#ifndef HEED_CL_BACKEND_H
#define HEED_CL_BACKEND_H

#include <limits.h>
#include <stddef.h>

#include "heed/runtime.h"
#include "heed/status.h"

/* How the backend's program came to be and what it was specialised for. */
typedef struct heed_cl_build_info {
  int from_cache;          /* 1: loaded from the binary cache; 0: compiled from source */
  char cache_path[PATH_MAX]; /* the binary's file; "" when there is no cache directory (or its path is too long) */
  char options[200];       /* build options (the specialisation defines) */
  unsigned wg, rows;       /* work-group size; rows (query x head) per attention work-group */
  size_t local_mem;        /* local memory heed plans with (the device's, or HEED_OPENCL_LOCAL_MEM) */
  char device[HEED_NAME_MAX];
} heed_cl_build_info;

/* The backend's one-line description of device d (what
 * heed_runtime_backend_description shows), written like snprintf: the
 * return value is the whole text's length, whatever cap is. */
int heed_cl_describe(const heed_cl_device_info *d, unsigned wg, unsigned rows, size_t local_mem, const char *kernels,
                     char *buf, size_t cap);

/* The open OpenCL backend's build; HEED_E_INVALID when rt runs another backend. */
heed_status heed_cl_runtime_build_info(heed_runtime *rt, heed_cl_build_info *out);

/* Builds src with the backend's options through the binary cache, as open
 * does with heed's own kernels (tests of the cache and of compiler errors).
 * *from_cache says whether the binary came from disk. A failed build's
 * message carries the compiler log. */
heed_status heed_cl_build_source(heed_runtime *rt, const char *src, int *from_cache, heed_error *err);

/* The backend's OpenCL objects (cl_context, cl_command_queue, cl_device_id),
 * for code that enqueues its own work on the same queue: the bench's CLBlast
 * baseline. HEED_E_INVALID when rt runs another backend. Calls must not
 * overlap heed's own on that runtime. */
heed_status heed_cl_runtime_queue(heed_runtime *rt, void **context, void **queue, void **device);

#endif
