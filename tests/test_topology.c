/* Topology on this machine and on recorded ones (hwloc XML in tests/data). */
#include <criterion/criterion.h>
#include <hwloc.h>
#include <sched.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "heed/topology.h"

#define KiB 1024ull
#define MiB (1024ull * 1024)
#define GiB (1024ull * 1024 * 1024)
#define DATA(f) HEED_TEST_DATA "/" f

static heed_topology *load(const char *xml, uint64_t os_mem) {
  heed_topology_options o = {.xml_path = xml, .os_mem_bytes = os_mem};
  heed_topology *t = NULL;
  heed_error e = {0};
  cr_assert_eq(heed_topology_load(&o, &t, &e), HEED_OK, "%s", e.msg);
  return t;
}

static const heed_topology_fix *find_fix(const heed_topology *t, const char *what) {
  for (unsigned i = 0; i < heed_topology_n_fixes(t); i++)
    if (strcmp(heed_topology_get_fix(t, i)->what, what) == 0) return heed_topology_get_fix(t, i);
  return NULL;
}

Test(topology, this_machine_is_plausible) {
  heed_topology_options o = {0};
  heed_topology *t;
  cr_assert_eq(heed_topology_load(&o, &t, NULL), HEED_OK);
  const heed_topology_summary *s = heed_topology_get_summary(t);
  cr_assert(s->is_this_system);
  cr_assert_geq(s->n_pus, 1);
  cr_assert_geq(s->n_cores, 1);
  cr_assert_leq(s->n_cores, s->n_pus);
  cr_assert_geq(s->n_numa, 1);
  cr_assert_geq(s->l1d_per_core, 4 * KiB);
  cr_assert_leq(s->l1d_per_core, 512 * KiB);
  cr_assert_geq(s->l2_per_core, 64 * KiB);
  cr_assert_leq(s->l3_per_core, 64 * MiB);
  cr_assert_gt(s->mem_bytes, 0);
  /* Memory after the checks is within 10% of what the OS says. */
  double os = (double)sysconf(_SC_PHYS_PAGES) * (double)sysconf(_SC_PAGESIZE);
  cr_assert_leq(s->mem_bytes, os * 1.1);
  cr_assert_geq(s->mem_bytes, os * 0.9);
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof set, &set) == 0)
    cr_assert_eq(s->n_pus, (unsigned)CPU_COUNT(&set), "hwloc PUs vs the PUs this process may use");
  heed_topology_destroy(t);
}

Test(topology, the_team_vm_with_bogus_l3_and_memory_is_corrected) {
  /* hwloc 2.9 on the team's 2-core VM: 508 MiB of L3 per core, 6.7 GB of memory; the OS had 24 GiB. */
  heed_topology *t = load(DATA("vm-2core-bogus.xml"), 24 * GiB);
  const heed_topology_summary *s = heed_topology_get_summary(t);
  cr_assert_eq(s->n_cores, 2);
  cr_assert_eq(s->l3_per_core, 2 * MiB, "safe estimate");
  cr_assert_eq(s->l3_total, 4 * MiB);
  cr_assert_eq(s->mem_bytes, 24 * GiB);
  const heed_topology_fix *f = find_fix(t, "L3 per core");
  cr_assert_not_null(f);
  cr_assert_eq(f->reported, 508 * MiB);
  cr_assert_eq(f->used, 2 * MiB);
  cr_assert(strstr(f->reason, "508 MiB"), "%s", f->reason);
  f = find_fix(t, "memory");
  cr_assert_not_null(f);
  cr_assert_eq(f->reported, 6700000000ull);
  cr_assert_eq(f->used, 24 * GiB);
  uint64_t mem;
  cr_assert_eq(heed_topology_get_numa(t, 0, NULL, &mem), HEED_OK);
  cr_assert_eq(mem, 24 * GiB, "the node gets the OS total");
  /* Untouched values stay as recorded. */
  cr_assert_eq(s->l1d_per_core, 32 * KiB);
  cr_assert_eq(s->l2_per_core, 512 * KiB);
  cr_assert_null(find_fix(t, "L1d per core"));
  heed_topology_destroy(t);
}

Test(topology, a_recording_is_not_checked_against_this_machines_memory) {
  heed_topology *t = load(DATA("vm-2core-bogus.xml"), 0);
  cr_assert_null(find_fix(t, "memory"));
  cr_assert_not_null(find_fix(t, "L3 per core"));
  cr_assert_not(heed_topology_get_summary(t)->is_this_system);
  heed_topology_destroy(t);
}

Test(topology, this_vm_as_recorded) {
  /* Recorded here: hwloc's NUMA node says 4.8 GiB, the OS 23.5 GiB; the L3 (8 MiB for 2 cores) is fine. */
  heed_topology *t = load(DATA("vm-2core-epyc.xml"), 24683656ull * 1024);
  const heed_topology_summary *s = heed_topology_get_summary(t);
  cr_assert_eq(s->l3_per_core, 4 * MiB);
  cr_assert_null(find_fix(t, "L3 per core"));
  cr_assert_not_null(find_fix(t, "memory"));
  cr_assert_str_eq(s->cpu_model, "AMD EPYC");
  cr_assert_eq(heed_topology_n_cl_devices(t), 0);
  heed_topology_destroy(t);
}

Test(topology, two_socket_server_with_a_gpu_on_socket_1) {
  heed_topology *t = load(DATA("server-2s-2numa.xml"), 128 * GiB);
  const heed_topology_summary *s = heed_topology_get_summary(t);
  cr_assert_eq(s->n_packages, 2);
  cr_assert_eq(s->n_numa, 2);
  cr_assert_eq(s->n_cores, 32);
  cr_assert_eq(s->n_pus, 64);
  cr_assert_eq(s->l1d_per_core, 48 * KiB);
  cr_assert_eq(s->l2_per_core, 1280 * KiB);
  cr_assert_eq(s->l3_per_core, 24 * MiB / 16);
  cr_assert_eq(s->l3_total, 48 * MiB);
  cr_assert_eq(s->mem_bytes, 128 * GiB);
  cr_assert_eq(heed_topology_n_fixes(t), 0);
  for (unsigned i = 0; i < 2; i++) {
    unsigned os;
    uint64_t mem;
    cr_assert_eq(heed_topology_get_numa(t, i, &os, &mem), HEED_OK);
    cr_assert_eq(os, i);
    cr_assert_eq(mem, 64 * GiB);
  }
  cr_assert_eq(heed_topology_get_numa(t, 2, NULL, NULL), HEED_E_RANGE);
  cr_assert_str_eq(s->cpu_model, "Intel(R) Xeon(R) Gold 6326 CPU @ 2.90GHz");
  cr_assert_eq(heed_topology_n_cl_devices(t), 1);
  const heed_cl_device_info *d = heed_topology_get_cl_device(t, 0);
  cr_assert_eq(d->type, HEED_CL_DEVICE_GPU);
  cr_assert_str_eq(d->device_name, "AMD Instinct MI210");
  cr_assert_eq(d->compute_units, 104);
  cr_assert_eq(d->global_mem_bytes, 67092480ull * 1024);
  cr_assert_str_eq(d->pci_busid, "0000:81:00.0");
  cr_assert_eq(d->numa_node, 1, "the GPU hangs off socket 1");
  cr_assert_str_eq(d->locality, "Package L#1");
  cr_assert_null(heed_topology_get_cl_device(t, 1));
  heed_topology_destroy(t);
}

Test(topology, hybrid_laptop_plans_for_its_smaller_cores) {
  heed_topology *t = load(DATA("laptop-intel-igpu.xml"), 16 * GiB);
  const heed_topology_summary *s = heed_topology_get_summary(t);
  cr_assert_eq(s->n_cores, 12);
  cr_assert_eq(s->n_pus, 16);
  cr_assert_eq(s->l1d_per_core, 32 * KiB, "E-core L1d");
  cr_assert_eq(s->l2_per_core, 512 * KiB, "2 MiB shared by 4 E-cores");
  cr_assert_eq(s->l3_per_core, 18 * MiB / 12);
  cr_assert_eq(heed_topology_n_fixes(t), 0);
  cr_assert_eq(heed_topology_n_cl_devices(t), 1);
  const heed_cl_device_info *d = heed_topology_get_cl_device(t, 0);
  cr_assert_eq(d->type, HEED_CL_DEVICE_GPU);
  cr_assert_str_eq(d->device_name, "Intel(R) Iris(R) Xe Graphics");
  cr_assert_str_eq(d->platform_name, "Intel(R) OpenCL Graphics");
  cr_assert_eq(d->numa_node, -1, "an integrated GPU is local to the whole machine");
  cr_assert_str_eq(d->locality, "Machine L#0");
  heed_topology_destroy(t);
}

Test(topology, arm_board_without_l3) {
  heed_topology *t = load(DATA("arm-board-4core.xml"), 0);
  const heed_topology_summary *s = heed_topology_get_summary(t);
  cr_assert_eq(s->n_cores, 4);
  cr_assert_eq(s->n_pus, 4);
  cr_assert_eq(s->l1d_per_core, 32 * KiB);
  cr_assert_eq(s->l2_per_core, 256 * KiB);
  cr_assert_eq(s->l3_per_core, 0, "no L3 is not an error");
  cr_assert_eq(s->mem_bytes, 4 * GiB);
  cr_assert_eq(heed_topology_n_fixes(t), 0);
  heed_topology_destroy(t);
}

Test(topology, missing_caches_get_safe_estimates) {
  /* A machine hwloc knows nothing of the caches of: write one with hwloc's synthetic backend. */
  char path[] = "/tmp/heed-nocache-XXXXXX";
  int fd = mkstemp(path);
  cr_assert_geq(fd, 0);
  close(fd);
  hwloc_topology_t hw;
  hwloc_topology_init(&hw);
  cr_assert_eq(hwloc_topology_set_synthetic(hw, "pack:1 [numa(memory=1073741824)] core:2 pu:1"), 0);
  cr_assert_eq(hwloc_topology_load(hw), 0);
  cr_assert_eq(hwloc_topology_export_xml(hw, path, 0), 0);
  hwloc_topology_destroy(hw);
  heed_topology *t = load(path, 0);
  const heed_topology_summary *s = heed_topology_get_summary(t);
  cr_assert_eq(s->l1d_per_core, 32 * KiB);
  cr_assert_eq(s->l2_per_core, 256 * KiB);
  cr_assert_not_null(find_fix(t, "L1d per core"));
  cr_assert(strstr(find_fix(t, "L2 per core")->reason, "no L2"));
  heed_topology_destroy(t);
  unlink(path);
}

Test(topology, bad_input_is_refused_with_the_path) {
  heed_topology *t = (heed_topology *)0x1;
  heed_error e = {0};
  heed_topology_options o = {.xml_path = "/nonexistent/machine.xml"};
  cr_assert_eq(heed_topology_load(&o, &t, &e), HEED_E_IO);
  cr_assert_null(t);
  cr_assert(strstr(e.msg, "/nonexistent/machine.xml"), "%s", e.msg);
  char path[] = "/tmp/heed-garbage-XXXXXX";
  int fd = mkstemp(path);
  cr_assert_eq(write(fd, "not xml at all", 14), 14);
  close(fd);
  o.xml_path = path;
  cr_assert_eq(heed_topology_load(&o, &t, &e), HEED_E_TOPOLOGY);
  cr_assert(strstr(e.msg, path), "%s", e.msg);
  unlink(path);
  cr_assert_eq(heed_topology_load(&o, NULL, &e), HEED_E_INVALID);
  heed_topology_destroy(NULL);
  cr_assert_null(heed_topology_get_summary(NULL));
}

/* hwloc 2.9 crashes (NULL dereference in hwloc_topology_load) on malformed
 * XML such as these 21 bytes; heed refuses them before hwloc sees them, given
 * as a path or through hwloc's own HWLOC_XMLFILE. */
static void write_file(char *path, const char *text) {
  int fd = mkstemp(path);
  cr_assert_geq(fd, 0);
  cr_assert_eq(write(fd, text, strlen(text)), (ssize_t)strlen(text));
  close(fd);
}

Test(topology, malformed_xml_never_reaches_hwloc) {
  static const char *bad[][2] = {
      {"<topologyversion=\"2.0", "not well-formed XML"},
      {"<topology version=\"2.0\"><object type=\"Machine\">", "not well-formed XML"},
      {"<?xml version=\"1.0\"?><machine/>", "root is <machine>, not hwloc's <topology>"},
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    char path[] = "/tmp/heed-badxml-XXXXXX";
    write_file(path, bad[i][0]);
    heed_topology *t = (heed_topology *)0x1;
    heed_error e = {0};
    heed_topology_options o = {.xml_path = path, .no_opencl = 1};
    cr_assert_eq(heed_topology_load(&o, &t, &e), HEED_E_TOPOLOGY, "%s", bad[i][0]);
    cr_assert_null(t);
    cr_assert(strstr(e.msg, bad[i][1]) && strstr(e.msg, path), "%s", e.msg);
    /* The same file named by HWLOC_XMLFILE, for a load of "this machine". */
    setenv("HWLOC_XMLFILE", path, 1);
    heed_topology_options none = {.no_opencl = 1};
    cr_assert_eq(heed_topology_load(&none, &t, &e), HEED_E_TOPOLOGY, "%s", bad[i][0]);
    cr_assert(strstr(e.msg, "HWLOC_XMLFILE") && strstr(e.msg, bad[i][1]), "%s", e.msg);
    unsetenv("HWLOC_XMLFILE");
    unlink(path);
  }
  /* A good recording still loads, by path and through HWLOC_XMLFILE. */
  setenv("HWLOC_XMLFILE", DATA("vm-2core-bogus.xml"), 1);
  heed_topology_options none = {.no_opencl = 1};
  heed_topology *t = NULL;
  heed_error e = {0};
  cr_assert_eq(heed_topology_load(&none, &t, &e), HEED_OK, "%s", e.msg);
  heed_topology_destroy(t);
  unsetenv("HWLOC_XMLFILE");
}

Test(topology, opencl_devices_through_the_icd_loader) {
  heed_topology *t;
  heed_topology_options o = {0};
  cr_assert_eq(heed_topology_load(&o, &t, NULL), HEED_OK);
  const heed_topology_summary *s = heed_topology_get_summary(t);
#if defined(__x86_64__)
  /* setup installs PoCL: a CPU device must show up. */
  cr_assert_geq(heed_topology_n_cl_devices(t), 1, "no OpenCL device: %s", s->opencl_note);
  int pocl = 0;
  for (unsigned i = 0; i < heed_topology_n_cl_devices(t); i++) {
    const heed_cl_device_info *d = heed_topology_get_cl_device(t, i);
    cr_assert_gt(d->compute_units, 0);
    cr_assert_gt(d->global_mem_bytes, 0);
    cr_assert_gt(d->max_work_group_size, 0);
    cr_assert_neq(d->device_name[0], 0);
    if (strstr(d->platform_name, "Portable Computing Language")) {
      pocl = 1;
      cr_assert_eq(d->type, HEED_CL_DEVICE_CPU);
      cr_assert_eq(d->numa_node, -1);
    }
  }
  cr_assert(pocl, "PoCL platform not found");
#else
  if (heed_topology_n_cl_devices(t) == 0) cr_assert_neq(s->opencl_note[0], 0, "an empty list must say why");
#endif
  heed_topology_destroy(t);
  o.no_opencl = 1;
  cr_assert_eq(heed_topology_load(&o, &t, NULL), HEED_OK);
  cr_assert_eq(heed_topology_n_cl_devices(t), 0);
  heed_topology_destroy(t);
}
