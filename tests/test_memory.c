#include <criterion/criterion.h>
#include <stdint.h>
#include <string.h>

#include "heed/memory.h"

#define DATA(f) HEED_TEST_DATA "/" f

Test(memory, aligned_and_writable) {
  heed_topology *t;
  cr_assert_eq(heed_topology_load(&(heed_topology_options){.no_opencl = 1}, &t, NULL), HEED_OK);
  static const size_t sizes[] = {1, 3, 64, 4095, 4096, 1 << 20, 3 << 20};
  for (size_t a = 8; a <= 4096; a *= 2)
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++)
      for (int node = -2; node <= 0; node++) {
        void *p = NULL;
        heed_error e = {0};
        cr_assert_eq(heed_mem_alloc(t, sizes[i], a, node, &p, &e), HEED_OK, "%s", e.msg);
        cr_assert_eq((uintptr_t)p % a, 0, "align %zu", a);
        memset(p, 0xab, sizes[i]);
        cr_assert_eq(((unsigned char *)p)[sizes[i] - 1], 0xab);
        heed_mem_free(p);
      }
  heed_topology_destroy(t);
  heed_mem_free(NULL);
  void *p;
  cr_assert_eq(heed_mem_alloc(NULL, 100, 64, HEED_NUMA_ANY, &p, NULL), HEED_OK);
  heed_mem_free(p);
}

Test(memory, nodes_of_a_recording_are_checked) {
  heed_topology *t;
  cr_assert_eq(heed_topology_load(&(heed_topology_options){.xml_path = DATA("server-2s-2numa.xml")}, &t, NULL), HEED_OK);
  void *p;
  heed_error e = {0};
  cr_assert_eq(heed_mem_alloc(t, 1000, 64, 1, &p, &e), HEED_OK, "%s", e.msg); /* node 1 exists there */
  heed_mem_free(p);
  cr_assert_eq(heed_mem_alloc(t, 1000, 64, 2, &p, &e), HEED_E_INVALID);
  cr_assert(strstr(e.msg, "numa_node=2"), "%s", e.msg);
  heed_topology_destroy(t);
}

Test(memory, bad_arguments_name_the_value) {
  void *p = (void *)0x1;
  heed_error e = {0};
  cr_assert_eq(heed_mem_alloc(NULL, 0, 64, -1, &p, &e), HEED_E_INVALID);
  cr_assert_null(p);
  cr_assert(strstr(e.msg, "bytes=0"), "%s", e.msg);
  cr_assert_eq(heed_mem_alloc(NULL, 8, 48, -1, &p, &e), HEED_E_INVALID);
  cr_assert(strstr(e.msg, "align=48"), "%s", e.msg);
  cr_assert_eq(heed_mem_alloc(NULL, 8, 8192, -1, &p, &e), HEED_E_INVALID);
  cr_assert_eq(heed_mem_alloc(NULL, 8, 4, -1, &p, &e), HEED_E_INVALID);
  cr_assert_eq(heed_mem_alloc(NULL, 8, 64, -3, &p, &e), HEED_E_INVALID);
  cr_assert(strstr(e.msg, "numa_node=-3"), "%s", e.msg);
  cr_assert_eq(heed_mem_alloc(NULL, 8, 64, 0, &p, &e), HEED_E_INVALID, "no topology, no nodes to name");
  cr_assert_eq(heed_mem_alloc(NULL, SIZE_MAX - 8, 64, -1, &p, &e), HEED_E_INVALID);
  cr_assert_eq(heed_mem_alloc(NULL, 8, 64, -1, NULL, &e), HEED_E_INVALID);
}
