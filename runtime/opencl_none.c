/* runtime/opencl_none.c - OpenCL discovery in a build without OpenCL. */
#include <stdio.h>

#include "runtime/opencl_enum.h"

heed_status heed_opencl_enumerate(hwloc_topology_t hw, heed_cl_device_info **out, unsigned *n,
                                  char *note, size_t note_len, heed_error *err) {
  (void)hw;
  (void)err;
  *out = NULL;
  *n = 0;
  snprintf(note, note_len, "this libheed was built without OpenCL (HEED_WITH_OPENCL=OFF)");
  return HEED_OK;
}

const char *heed_cl_error_name(int code) {
  (void)code;
  return "CL_UNKNOWN_ERROR";
}
