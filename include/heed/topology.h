/* heed/topology.h - the machine as heed sees it: hwloc plus sanity checks.
 *
 * Life cycle (hwloc's): heed_topology_load -> query -> heed_topology_destroy.
 * The topology owns every object it returns; callers borrow them until destroy.
 *
 * hwloc's numbers are checked before use. Values outside what real hardware
 * has (an L3 of 508 MiB per core, total memory far from what the OS reports)
 * are replaced by a safe estimate, and each replacement is recorded as a
 * heed_topology_fix that `heed info` prints.
 */
#ifndef HEED_TOPOLOGY_H
#define HEED_TOPOLOGY_H

#include <stddef.h>
#include <stdint.h>

#include "heed/status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct heed_topology heed_topology;

typedef struct heed_topology_options {
  /* NULL: discover this machine. Otherwise a recorded hwloc XML file (as
   * `lstopo --of xml` writes it), replayed without touching the hardware.
   * Trusted input: hwloc's XML loader is not hardened (2.9 crashes on some
   * malformed files). heed refuses a file that is not well-formed XML with a
   * <topology> root before hwloc reads it (HEED_E_TOPOLOGY), and does the
   * same for the file hwloc's own HWLOC_XMLFILE names; a well-formed but
   * hostile recording is still hwloc's to read. */
  const char *xml_path;
  /* Total memory the OS reports, which hwloc's figure is checked against.
   * 0: ask the OS when the topology is this machine; skip the check for a
   * recording. Tests set it to replay a machine whose hwloc memory was wrong. */
  uint64_t os_mem_bytes;
  /* Nonzero: do not enumerate OpenCL devices through the ICD loader. */
  int no_opencl;
} heed_topology_options;

/* Cache sizes are per core: the size of the cache instance above a core,
 * divided by the number of cores sharing it, minimum over all cores (so a
 * hybrid laptop is planned for its smaller cores). 0 means "no such level". */
typedef struct heed_topology_summary {
  unsigned n_packages;
  unsigned n_numa;
  unsigned n_cores;  /* physical cores */
  unsigned n_pus;    /* hardware threads */
  uint64_t mem_bytes;      /* total memory, after the checks */
  uint64_t l1d_per_core;
  uint64_t l2_per_core;
  uint64_t l3_per_core;
  uint64_t l3_total;       /* sum over L3 instances, after the checks */
  unsigned cache_line;     /* bytes; 64 when hwloc does not say */
  int is_this_system;      /* 0 for a replayed recording */
  char cpu_model[96];      /* from hwloc's CPUModel info, "" when absent */
  char source[1024];       /* "this machine (hwloc 2.9.0)" or "recording PATH" */
  char opencl_note[160];   /* why OpenCL enumeration found nothing or failed, "" otherwise */
} heed_topology_summary;

/* One value hwloc reported that heed did not believe. */
typedef struct heed_topology_fix {
  char what[32];       /* "L3 per core", "memory", ... */
  uint64_t reported;   /* bytes, as hwloc reported them */
  uint64_t used;       /* bytes, what heed uses instead */
  char reason[200];
} heed_topology_fix;

typedef enum heed_cl_device_type {
  HEED_CL_DEVICE_GPU,
  HEED_CL_DEVICE_CPU,
  HEED_CL_DEVICE_ACCELERATOR,
  HEED_CL_DEVICE_OTHER
} heed_cl_device_type;

/* An OpenCL device, found through the ICD loader (this machine) or read from
 * the recording's hwloc OpenCL OS devices (replay). */
/* Room for a device, platform or vendor name. A longer name (OpenCL sets no
 * limit) is kept as its first HEED_NAME_MAX - 4 bytes and "...". */
#define HEED_NAME_MAX 256

typedef struct heed_cl_device_info {
  int platform_index;        /* position in clGetPlatformIDs' list */
  int device_index;          /* position in that platform's device list */
  char platform_name[HEED_NAME_MAX];
  char device_name[HEED_NAME_MAX];
  char vendor[HEED_NAME_MAX];
  char version[HEED_NAME_MAX];        /* CL_DEVICE_VERSION, "" when replayed */
  char driver_version[HEED_NAME_MAX]; /* CL_DRIVER_VERSION, "" when replayed */
  heed_cl_device_type type;
  unsigned compute_units;
  uint64_t global_mem_bytes;
  uint64_t local_mem_bytes;  /* 0 when unknown */
  size_t max_work_group_size;/* 0 when unknown */
  int has_fp16;              /* cl_khr_fp16; -1 when unknown */
  int has_subgroups;         /* cl_khr_subgroups or cl_intel_subgroups; -1 when unknown */
  char pci_busid[20];        /* "0000:01:00.0", "" when the device has none */
  int numa_node;             /* OS index of the closest NUMA node, -1: whole machine */
  char locality[48];         /* "Package L#1", "Machine", ... */
} heed_cl_device_info;

heed_status heed_topology_load(const heed_topology_options *opt, heed_topology **out,
                               heed_error *err);
void heed_topology_destroy(heed_topology *topo); /* NULL is fine */

/* Borrowed until heed_topology_destroy. */
const heed_topology_summary *heed_topology_get_summary(const heed_topology *topo);
unsigned heed_topology_n_fixes(const heed_topology *topo);
const heed_topology_fix *heed_topology_get_fix(const heed_topology *topo, unsigned i);
unsigned heed_topology_n_cl_devices(const heed_topology *topo);
const heed_cl_device_info *heed_topology_get_cl_device(const heed_topology *topo, unsigned i);
/* The NUMA node i (0 <= i < n_numa): its OS index and memory after the checks. */
heed_status heed_topology_get_numa(const heed_topology *topo, unsigned i, unsigned *os_index,
                                   uint64_t *mem_bytes);
/* The loaded hwloc_topology_t, borrowed, for embedders who want more. Never
 * modify it: heed shares it with its threads. */
void *heed_topology_hwloc(const heed_topology *topo);

const char *heed_cl_device_type_name(heed_cl_device_type t); /* "gpu", "cpu", ... */

#ifdef __cplusplus
}
#endif
#endif
