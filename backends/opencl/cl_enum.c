/* backends/opencl/cl_enum.c - OpenCL platforms and devices through the ICD
 * loader, each placed in the hwloc topology by its PCI bus where the driver
 * tells it (cl_khr_pci_bus_info, or AMD/NVIDIA's own queries). */
#define CL_TARGET_OPENCL_VERSION 120
#include <CL/cl.h>
#include <hwloc.h>
#include <hwloc/opencl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/internal.h"
#include "runtime/opencl_enum.h"

#ifndef CL_PLATFORM_NOT_FOUND_KHR
#define CL_PLATFORM_NOT_FOUND_KHR -1001
#endif

#define HEED_CL_ERROR_LIST(X)                                                                  \
  X(0, CL_SUCCESS) X(-1, CL_DEVICE_NOT_FOUND) X(-2, CL_DEVICE_NOT_AVAILABLE)                   \
  X(-3, CL_COMPILER_NOT_AVAILABLE) X(-4, CL_MEM_OBJECT_ALLOCATION_FAILURE)                     \
  X(-5, CL_OUT_OF_RESOURCES) X(-6, CL_OUT_OF_HOST_MEMORY) X(-7, CL_PROFILING_INFO_NOT_AVAILABLE) \
  X(-8, CL_MEM_COPY_OVERLAP) X(-9, CL_IMAGE_FORMAT_MISMATCH) X(-10, CL_IMAGE_FORMAT_NOT_SUPPORTED) \
  X(-11, CL_BUILD_PROGRAM_FAILURE) X(-12, CL_MAP_FAILURE) X(-13, CL_MISALIGNED_SUB_BUFFER_OFFSET) \
  X(-14, CL_EXEC_STATUS_ERROR_FOR_EVENTS_IN_WAIT_LIST) X(-15, CL_COMPILE_PROGRAM_FAILURE)       \
  X(-16, CL_LINKER_NOT_AVAILABLE) X(-17, CL_LINK_PROGRAM_FAILURE) X(-18, CL_DEVICE_PARTITION_FAILED) \
  X(-19, CL_KERNEL_ARG_INFO_NOT_AVAILABLE) X(-30, CL_INVALID_VALUE) X(-31, CL_INVALID_DEVICE_TYPE) \
  X(-32, CL_INVALID_PLATFORM) X(-33, CL_INVALID_DEVICE) X(-34, CL_INVALID_CONTEXT)             \
  X(-35, CL_INVALID_QUEUE_PROPERTIES) X(-36, CL_INVALID_COMMAND_QUEUE) X(-37, CL_INVALID_HOST_PTR) \
  X(-38, CL_INVALID_MEM_OBJECT) X(-39, CL_INVALID_IMAGE_FORMAT_DESCRIPTOR)                     \
  X(-40, CL_INVALID_IMAGE_SIZE) X(-41, CL_INVALID_SAMPLER) X(-42, CL_INVALID_BINARY)           \
  X(-43, CL_INVALID_BUILD_OPTIONS) X(-44, CL_INVALID_PROGRAM) X(-45, CL_INVALID_PROGRAM_EXECUTABLE) \
  X(-46, CL_INVALID_KERNEL_NAME) X(-47, CL_INVALID_KERNEL_DEFINITION) X(-48, CL_INVALID_KERNEL)  \
  X(-49, CL_INVALID_ARG_INDEX) X(-50, CL_INVALID_ARG_VALUE) X(-51, CL_INVALID_ARG_SIZE)        \
  X(-52, CL_INVALID_KERNEL_ARGS) X(-53, CL_INVALID_WORK_DIMENSION) X(-54, CL_INVALID_WORK_GROUP_SIZE) \
  X(-55, CL_INVALID_WORK_ITEM_SIZE) X(-56, CL_INVALID_GLOBAL_OFFSET) X(-57, CL_INVALID_EVENT_WAIT_LIST) \
  X(-58, CL_INVALID_EVENT) X(-59, CL_INVALID_OPERATION) X(-60, CL_INVALID_GL_OBJECT)            \
  X(-61, CL_INVALID_BUFFER_SIZE) X(-62, CL_INVALID_MIP_LEVEL) X(-63, CL_INVALID_GLOBAL_WORK_SIZE) \
  X(-64, CL_INVALID_PROPERTY) X(-65, CL_INVALID_IMAGE_DESCRIPTOR) X(-66, CL_INVALID_COMPILER_OPTIONS) \
  X(-67, CL_INVALID_LINKER_OPTIONS) X(-68, CL_INVALID_DEVICE_PARTITION_COUNT)                  \
  X(-69, CL_INVALID_PIPE_SIZE) X(-70, CL_INVALID_DEVICE_QUEUE) X(-71, CL_INVALID_SPEC_ID)      \
  X(-72, CL_MAX_SIZE_RESTRICTION_EXCEEDED) X(-1001, CL_PLATFORM_NOT_FOUND_KHR)

const char *heed_cl_error_name(int code) {
  switch (code) {
#define HEED_X_(v, name) \
  case v:                \
    return #name;
    HEED_CL_ERROR_LIST(HEED_X_)
#undef HEED_X_
  }
  return "CL_UNKNOWN_ERROR";
}

void heed_cl_device_string(void *dv, unsigned what, char *buf, size_t cap) {
  cl_device_id d = dv;
  size_t n = 0;
  buf[0] = '\0';
  if (clGetDeviceInfo(d, what, 0, NULL, &n) != CL_SUCCESS || !n) return;
  char *full = malloc(n + 1);
  if (!full) return;
  if (clGetDeviceInfo(d, what, n, full, NULL) == CL_SUCCESS) {
    full[n] = '\0';
    heed_strlcpy(buf, full, cap);
  }
  free(full);
}

static void dev_str(cl_device_id d, cl_device_info what, char *buf, size_t cap) { heed_cl_device_string(d, what, buf, cap); }

static void fill_device(hwloc_topology_t hw, cl_device_id dev, heed_cl_device_info *d) {
  cl_device_type ty = 0;
  cl_uint cu = 0;
  cl_ulong gmem = 0, lmem = 0;
  size_t wg = 0;
  clGetDeviceInfo(dev, CL_DEVICE_TYPE, sizeof ty, &ty, NULL);
  clGetDeviceInfo(dev, CL_DEVICE_MAX_COMPUTE_UNITS, sizeof cu, &cu, NULL);
  clGetDeviceInfo(dev, CL_DEVICE_GLOBAL_MEM_SIZE, sizeof gmem, &gmem, NULL);
  clGetDeviceInfo(dev, CL_DEVICE_LOCAL_MEM_SIZE, sizeof lmem, &lmem, NULL);
  clGetDeviceInfo(dev, CL_DEVICE_MAX_WORK_GROUP_SIZE, sizeof wg, &wg, NULL);
  d->type = (ty & CL_DEVICE_TYPE_GPU)           ? HEED_CL_DEVICE_GPU
            : (ty & CL_DEVICE_TYPE_CPU)         ? HEED_CL_DEVICE_CPU
            : (ty & CL_DEVICE_TYPE_ACCELERATOR) ? HEED_CL_DEVICE_ACCELERATOR
                                                : HEED_CL_DEVICE_OTHER;
  d->compute_units = cu;
  d->global_mem_bytes = gmem;
  d->local_mem_bytes = lmem;
  d->max_work_group_size = wg;
  dev_str(dev, CL_DEVICE_NAME, d->device_name, sizeof d->device_name);
  dev_str(dev, CL_DEVICE_VENDOR, d->vendor, sizeof d->vendor);
  dev_str(dev, CL_DEVICE_VERSION, d->version, sizeof d->version);
  dev_str(dev, CL_DRIVER_VERSION, d->driver_version, sizeof d->driver_version);
  size_t ext_len = 0;
  d->has_fp16 = d->has_subgroups = 0;
  if (clGetDeviceInfo(dev, CL_DEVICE_EXTENSIONS, 0, NULL, &ext_len) == CL_SUCCESS && ext_len) {
    char *ext = malloc(ext_len + 1);
    if (ext && clGetDeviceInfo(dev, CL_DEVICE_EXTENSIONS, ext_len, ext, NULL) == CL_SUCCESS) {
      ext[ext_len] = '\0';
      d->has_fp16 = strstr(ext, "cl_khr_fp16") != NULL;
      d->has_subgroups = strstr(ext, "cl_khr_subgroups") != NULL || strstr(ext, "cl_intel_subgroups") != NULL;
    }
    free(ext);
  }
  unsigned dom = 0, bus = 0, dv = 0, fn = 0;
  hwloc_obj_t pci = NULL;
  if (hwloc_opencl_get_device_pci_busid(dev, &dom, &bus, &dv, &fn) == 0) {
    snprintf(d->pci_busid, sizeof d->pci_busid, "%04x:%02x:%02x.%01x", dom, bus, dv, fn);
    pci = hwloc_get_pcidev_by_busid(hw, dom, bus, dv, fn);
  }
  heed_topology_place_device(hw, pci, d);
}

heed_status heed_opencl_enumerate(hwloc_topology_t hw, heed_cl_device_info **out, unsigned *n,
                                  char *note, size_t note_len, heed_error *err) {
  *out = NULL;
  *n = 0;
  note[0] = '\0';
  cl_uint np = 0;
  cl_int rc = clGetPlatformIDs(0, NULL, &np);
  if (rc == CL_PLATFORM_NOT_FOUND_KHR || (rc == CL_SUCCESS && np == 0)) {
    snprintf(note, note_len, "the OpenCL ICD loader found no platform (no vendor ICD installed)");
    return HEED_OK;
  }
  if (rc != CL_SUCCESS) {
    snprintf(note, note_len, "clGetPlatformIDs failed: %s (%d)", heed_cl_error_name(rc), rc);
    return HEED_OK;
  }
  cl_platform_id *plats = calloc(np, sizeof *plats);
  if (!plats) return heed_err_set(err, HEED_E_NOMEM, "no memory for %u OpenCL platforms", np);
  clGetPlatformIDs(np, plats, NULL);
  unsigned total = 0;
  for (cl_uint p = 0; p < np; p++) {
    cl_uint nd = 0;
    if (clGetDeviceIDs(plats[p], CL_DEVICE_TYPE_ALL, 0, NULL, &nd) == CL_SUCCESS) total += nd;
  }
  heed_cl_device_info *list = total ? calloc(total, sizeof *list) : NULL;
  if (total && !list) {
    free(plats);
    return heed_err_set(err, HEED_E_NOMEM, "no memory for %u OpenCL devices", total);
  }
  unsigned k = 0;
  for (cl_uint p = 0; p < np && k < total; p++) {
    char pname[HEED_NAME_MAX] = "";
    size_t pn = 0;
    if (clGetPlatformInfo(plats[p], CL_PLATFORM_NAME, 0, NULL, &pn) == CL_SUCCESS && pn) {
      char *full = malloc(pn + 1);
      if (full && clGetPlatformInfo(plats[p], CL_PLATFORM_NAME, pn, full, NULL) == CL_SUCCESS) {
        full[pn] = '\0';
        heed_strlcpy(pname, full, sizeof pname);
      }
      free(full);
    }
    cl_uint nd = 0;
    if (clGetDeviceIDs(plats[p], CL_DEVICE_TYPE_ALL, 0, NULL, &nd) != CL_SUCCESS || !nd) continue;
    if (nd > total - k) nd = total - k;
    cl_device_id devs[64];
    if (nd > 64) nd = 64;
    if (clGetDeviceIDs(plats[p], CL_DEVICE_TYPE_ALL, nd, devs, NULL) != CL_SUCCESS) continue;
    for (cl_uint i = 0; i < nd; i++, k++) {
      heed_cl_device_info *d = &list[k];
      d->platform_index = (int)p;
      d->device_index = (int)i;
      heed_strlcpy(d->platform_name, pname, sizeof d->platform_name);
      fill_device(hw, devs[i], d);
    }
  }
  free(plats);
  if (!k) snprintf(note, note_len, "%u OpenCL platform(s) but no device", np);
  *out = list;
  *n = k;
  return HEED_OK;
}
