/* runtime/opencl_enum.h - OpenCL device discovery used by the topology.
 * Internal. Implemented in backends/opencl/cl_enum.c, or by
 * runtime/opencl_none.c in a build without OpenCL. */
#ifndef HEED_OPENCL_ENUM_H
#define HEED_OPENCL_ENUM_H

#include <hwloc.h>
#include <stddef.h>

#include "heed/status.h"
#include "heed/topology.h"

/* Fills *out (malloc'd, [*n]) with every device of every platform the ICD
 * loader knows. Finding no platform is not an error: *n is 0 and note says
 * why. Only running out of memory fails. */
heed_status heed_opencl_enumerate(hwloc_topology_t hw, heed_cl_device_info **out, unsigned *n,
                                  char *note, size_t note_len, heed_error *err);

/* Sets d->numa_node and d->locality from the non-I/O ancestor of `near`
 * (NULL: the whole machine). */
void heed_topology_place_device(void *hw, hwloc_obj_t near, heed_cl_device_info *d);

/* A string property of an OpenCL device (CL_DEVICE_NAME, ...) of any length,
 * kept whole when it fits in cap, else as its start and "..."; "" when the
 * device does not answer. d is a cl_device_id. */
void heed_cl_device_string(void *d, unsigned what, char *buf, size_t cap);

/* "CL_OUT_OF_RESOURCES" for -5; "CL_UNKNOWN_ERROR" otherwise. */
const char *heed_cl_error_name(int code);

#endif
