/* runtime/topology.c - hwloc discovery, checked before use.
 *
 * hwloc is loaded once (I/O objects kept, so OpenCL devices can be placed
 * next to their PCI bus). The values heed plans with are then checked against
 * what hardware can be; an implausible value is replaced and the replacement
 * recorded, never used silently. */
#include <errno.h>
#include <hwloc.h>
#include <libxml/parser.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "heed/topology.h"
#include "runtime/internal.h"
#include "runtime/opencl_enum.h"

#define KiB (1024ull)
#define MiB (1024ull * 1024)
#define GiB (1024ull * 1024 * 1024)

/* Plausible per-core cache shares. Bounds hold for every shipping CPU we know
 * (Apple's 192 KiB L1d, 3D V-Cache's 12 MiB of L3 a core) with room to spare. */
#define L1D_MIN (4 * KiB)
#define L1D_MAX (512 * KiB)
#define L1D_SAFE (32 * KiB)
#define L2_MIN (64 * KiB)
#define L2_MAX (32 * MiB)
#define L2_SAFE (256 * KiB)
#define L3_MAX_PER_CORE (64 * MiB)
#define L3_MAX_TOTAL (4 * GiB)
#define L3_SAFE_PER_CORE (2 * MiB)
#define MEM_TOLERANCE 0.10 /* hwloc and the OS may differ by reserved memory */

#define MAX_FIXES 8

struct heed_topology {
  hwloc_topology_t hw;
  heed_topology_summary sum;
  heed_topology_fix fixes[MAX_FIXES];
  unsigned n_fixes;
  heed_cl_device_info *cl; /* [n_cl] */
  unsigned n_cl;
  unsigned *numa_os;       /* [sum.n_numa] */
  uint64_t *numa_mem;      /* [sum.n_numa] */
};

static void add_fix(heed_topology *t, const char *what, uint64_t reported, uint64_t used,
                    const char *reason) {
  if (t->n_fixes >= MAX_FIXES) return;
  heed_topology_fix *f = &t->fixes[t->n_fixes++];
  heed_strlcpy(f->what, what, sizeof f->what);
  f->reported = reported;
  f->used = used;
  heed_strlcpy(f->reason, reason, sizeof f->reason);
}

static unsigned cores_inside(hwloc_topology_t hw, hwloc_obj_t o) {
  int n = hwloc_get_nbobjs_inside_cpuset_by_type(hw, o->cpuset, HWLOC_OBJ_CORE);
  if (n <= 0) n = hwloc_get_nbobjs_inside_cpuset_by_type(hw, o->cpuset, HWLOC_OBJ_PU);
  return n > 0 ? (unsigned)n : 1;
}

/* The cache of a level above a core (data or unified), or NULL. */
static hwloc_obj_t cache_above(hwloc_obj_t o, hwloc_obj_type_t type) {
  for (hwloc_obj_t p = o->parent; p; p = p->parent)
    if (p->type == type && p->attr && p->attr->cache.type != HWLOC_OBJ_CACHE_INSTRUCTION) return p;
  return NULL;
}

static void read_caches(heed_topology *t, uint64_t *l1d, uint64_t *l2, uint64_t *l3) {
  hwloc_topology_t hw = t->hw;
  hwloc_obj_type_t unit = hwloc_get_nbobjs_by_type(hw, HWLOC_OBJ_CORE) > 0 ? HWLOC_OBJ_CORE
                                                                           : HWLOC_OBJ_PU;
  const hwloc_obj_type_t types[3] = {HWLOC_OBJ_L1CACHE, HWLOC_OBJ_L2CACHE, HWLOC_OBJ_L3CACHE};
  uint64_t *outs[3] = {l1d, l2, l3};
  for (int lv = 0; lv < 3; lv++) {
    uint64_t best = 0;
    int seen = 0;
    for (hwloc_obj_t c = hwloc_get_next_obj_by_type(hw, unit, NULL); c;
         c = hwloc_get_next_obj_by_type(hw, unit, c)) {
      hwloc_obj_t cache = cache_above(c, types[lv]);
      if (!cache) continue;
      uint64_t share = cache->attr->cache.size / cores_inside(hw, cache);
      if (!seen || share < best) best = share;
      seen = 1;
      if (lv == 0 && cache->attr->cache.linesize) t->sum.cache_line = cache->attr->cache.linesize;
    }
    *outs[lv] = best;
  }
  uint64_t total = 0;
  for (hwloc_obj_t c = hwloc_get_next_obj_by_type(hw, HWLOC_OBJ_L3CACHE, NULL); c;
       c = hwloc_get_next_obj_by_type(hw, HWLOC_OBJ_L3CACHE, c))
    total += c->attr->cache.size;
  t->sum.l3_total = total;
}

static void check_caches(heed_topology *t, uint64_t l1d, uint64_t l2, uint64_t l3) {
  heed_topology_summary *s = &t->sum;
  char why[200];
  if (l1d < L1D_MIN || l1d > L1D_MAX) {
    snprintf(why, sizeof why, "%s; using %llu KiB",
             l1d ? "outside the 4 KiB..512 KiB real cores have" : "hwloc reported no L1d",
             (unsigned long long)(L1D_SAFE / KiB));
    add_fix(t, "L1d per core", l1d, L1D_SAFE, why);
    l1d = L1D_SAFE;
  }
  if (l2 < L2_MIN || l2 > L2_MAX || l2 < l1d) {
    snprintf(why, sizeof why, "%s; using %llu KiB",
             !l2 ? "hwloc reported no L2"
                 : l2 < l1d ? "smaller than the L1d" : "outside the 64 KiB..32 MiB real cores have",
             (unsigned long long)(L2_SAFE / KiB));
    add_fix(t, "L2 per core", l2, L2_SAFE, why);
    l2 = L2_SAFE;
  }
  if (l3 && (l3 > L3_MAX_PER_CORE || s->l3_total > L3_MAX_TOTAL ||
             (s->mem_bytes && s->l3_total > s->mem_bytes / 16))) {
    snprintf(why, sizeof why,
             "%llu MiB per core (%llu MiB in all) is more than any CPU has; using %llu MiB per core",
             (unsigned long long)(l3 / MiB), (unsigned long long)(s->l3_total / MiB),
             (unsigned long long)(L3_SAFE_PER_CORE / MiB));
    add_fix(t, "L3 per core", l3, L3_SAFE_PER_CORE, why);
    l3 = L3_SAFE_PER_CORE;
    s->l3_total = L3_SAFE_PER_CORE * s->n_cores;
  }
  s->l1d_per_core = l1d;
  s->l2_per_core = l2;
  s->l3_per_core = l3;
}

static uint64_t os_total_memory(void) {
  long pages = sysconf(_SC_PHYS_PAGES), size = sysconf(_SC_PAGESIZE);
  return pages > 0 && size > 0 ? (uint64_t)pages * (uint64_t)size : 0;
}

static void check_memory(heed_topology *t, uint64_t os_mem) {
  heed_topology_summary *s = &t->sum;
  uint64_t hw = s->mem_bytes;
  if (!os_mem) {
    if (!hw) add_fix(t, "memory", 0, 0, "hwloc reported no memory and the OS total is unknown");
    return;
  }
  double rel = hw ? ((double)hw - (double)os_mem) / (double)os_mem : -1.0;
  if (rel >= -MEM_TOLERANCE && rel <= MEM_TOLERANCE) return;
  char why[200];
  snprintf(why, sizeof why,
           "hwloc's NUMA nodes add up to %.1f GiB but the OS reports %.1f GiB; using the OS total, "
           "shared out over the nodes as hwloc proportioned it",
           (double)hw / GiB, (double)os_mem / GiB);
  add_fix(t, "memory", hw, os_mem, why);
  for (unsigned i = 0; i < s->n_numa; i++)
    t->numa_mem[i] = hw ? (uint64_t)((double)t->numa_mem[i] * ((double)os_mem / (double)hw))
                        : os_mem / s->n_numa;
  s->mem_bytes = os_mem;
}

static heed_cl_device_type type_from_string(const char *v) {
  if (!v) return HEED_CL_DEVICE_OTHER;
  if (strstr(v, "GPU")) return HEED_CL_DEVICE_GPU;
  if (strstr(v, "CPU")) return HEED_CL_DEVICE_CPU;
  if (strstr(v, "ACCELERATOR")) return HEED_CL_DEVICE_ACCELERATOR;
  return HEED_CL_DEVICE_OTHER;
}

void heed_topology_place_device(void *hwv, hwloc_obj_t near, heed_cl_device_info *d) {
  hwloc_topology_t hw = (hwloc_topology_t)hwv;
  hwloc_obj_t anc = near ? hwloc_get_non_io_ancestor_obj(hw, near) : hwloc_get_root_obj(hw);
  d->numa_node = -1;
  if (anc && anc != hwloc_get_root_obj(hw) && anc->nodeset &&
      hwloc_bitmap_weight(anc->nodeset) == 1)
    d->numa_node = hwloc_bitmap_first(anc->nodeset);
  snprintf(d->locality, sizeof d->locality, "%s L#%u", anc ? hwloc_obj_type_string(anc->type) : "Machine",
           anc ? anc->logical_index : 0);
}

/* Replay: OpenCL devices as hwloc's opencl backend recorded them. */
static heed_status cl_from_xml(heed_topology *t, heed_error *err) {
  unsigned n = 0;
  for (hwloc_obj_t o = hwloc_get_next_osdev(t->hw, NULL); o; o = hwloc_get_next_osdev(t->hw, o))
    if (o->subtype && strcmp(o->subtype, "OpenCL") == 0) n++;
  if (!n) return HEED_OK;
  t->cl = calloc(n, sizeof *t->cl);
  if (!t->cl) return heed_err_set(err, HEED_E_NOMEM, "no memory for %u OpenCL device records", n);
  for (hwloc_obj_t o = hwloc_get_next_osdev(t->hw, NULL); o; o = hwloc_get_next_osdev(t->hw, o)) {
    if (!o->subtype || strcmp(o->subtype, "OpenCL") != 0) continue;
    heed_cl_device_info *d = &t->cl[t->n_cl++];
    const char *v;
    d->platform_index = (v = hwloc_obj_get_info_by_name(o, "OpenCLPlatformIndex")) ? atoi(v) : 0;
    d->device_index = (v = hwloc_obj_get_info_by_name(o, "OpenCLPlatformDeviceIndex")) ? atoi(v) : 0;
    heed_strlcpy(d->platform_name, hwloc_obj_get_info_by_name(o, "OpenCLPlatformName"),
                 sizeof d->platform_name);
    heed_strlcpy(d->device_name, hwloc_obj_get_info_by_name(o, "GPUModel"), sizeof d->device_name);
    if (!d->device_name[0]) heed_strlcpy(d->device_name, o->name, sizeof d->device_name);
    heed_strlcpy(d->vendor, hwloc_obj_get_info_by_name(o, "GPUVendor"), sizeof d->vendor);
    d->type = type_from_string(hwloc_obj_get_info_by_name(o, "OpenCLDeviceType"));
    d->compute_units = (v = hwloc_obj_get_info_by_name(o, "OpenCLComputeUnits")) ? (unsigned)atoi(v) : 0;
    /* hwloc records OpenCLGlobalMemorySize in kB. */
    d->global_mem_bytes =
        (v = hwloc_obj_get_info_by_name(o, "OpenCLGlobalMemorySize")) ? strtoull(v, NULL, 10) * 1024 : 0;
    d->has_fp16 = -1;
    d->has_subgroups = -1;
    if (o->parent && o->parent->type == HWLOC_OBJ_PCI_DEVICE) {
      struct hwloc_pcidev_attr_s *p = &o->parent->attr->pcidev;
      snprintf(d->pci_busid, sizeof d->pci_busid, "%04x:%02x:%02x.%01x", p->domain, p->bus, p->dev,
               p->func);
    }
    heed_topology_place_device(t->hw, o, d);
  }
  return HEED_OK;
}

static heed_status fill_numa(heed_topology *t, heed_error *err) {
  unsigned n = (unsigned)hwloc_get_nbobjs_by_type(t->hw, HWLOC_OBJ_NUMANODE);
  if (!n) n = 1;
  t->numa_os = calloc(n, sizeof *t->numa_os);
  t->numa_mem = calloc(n, sizeof *t->numa_mem);
  if (!t->numa_os || !t->numa_mem) return heed_err_set(err, HEED_E_NOMEM, "no memory for %u NUMA records", n);
  uint64_t total = 0;
  unsigned i = 0;
  for (hwloc_obj_t o = hwloc_get_next_obj_by_type(t->hw, HWLOC_OBJ_NUMANODE, NULL); o && i < n;
       o = hwloc_get_next_obj_by_type(t->hw, HWLOC_OBJ_NUMANODE, o), i++) {
    t->numa_os[i] = o->os_index;
    t->numa_mem[i] = o->attr ? o->attr->numanode.local_memory : 0;
    total += t->numa_mem[i];
  }
  t->sum.n_numa = n;
  t->sum.mem_bytes = total;
  return HEED_OK;
}

/* hwloc 2.9's XML loader dereferences NULL on malformed documents (21 bytes,
 * '<topologyversion="2.0', crash it), so a recording is read by libxml2
 * first, without network access, and refused unless it is well-formed XML
 * whose root is hwloc's <topology>. That keeps malformed files away from
 * hwloc; it does not make a hostile well-formed one safe, so recordings
 * stay trusted input (topology.h). */
static pthread_once_t xml_once = PTHREAD_ONCE_INIT;
static void xml_init(void) { xmlInitParser(); }

static heed_status check_xml(const char *path, const char *what, heed_error *err) {
  pthread_once(&xml_once, xml_init);
  xmlParserCtxtPtr ctx = xmlNewParserCtxt();
  if (!ctx) return heed_err_set(err, HEED_E_NOMEM, "no memory to read %s '%s'", what, path);
  xmlDocPtr doc = xmlCtxtReadFile(ctx, path, NULL, XML_PARSE_NONET | XML_PARSE_NOERROR | XML_PARSE_NOWARNING);
  heed_status st = HEED_OK;
  if (!doc) {
    const xmlError *x = xmlCtxtGetLastError(ctx);
    char why[256];
    heed_strlcpy(why, x && x->message ? x->message : "unreadable", sizeof why);
    for (char *p = why + strlen(why); p > why && (p[-1] == '\n' || p[-1] == ' '); p--) p[-1] = '\0';
    st = heed_err_set(err, HEED_E_TOPOLOGY, "%s '%s' is not well-formed XML (line %d: %s); hwloc is not given it", what,
                      path, x ? x->line : 0, why);
  } else {
    xmlNodePtr root = xmlDocGetRootElement(doc);
    if (!root || strcmp((const char *)root->name, "topology") != 0)
      st = heed_err_set(err, HEED_E_TOPOLOGY, "%s '%s' is XML whose root is <%s>, not hwloc's <topology>", what, path,
                        root ? (const char *)root->name : "");
    xmlFreeDoc(doc);
  }
  xmlFreeParserCtxt(ctx);
  return st;
}

heed_status heed_topology_load(const heed_topology_options *opt, heed_topology **out, heed_error *err) {
  if (!out) return heed_err_set(err, HEED_E_INVALID, "heed_topology_load: out is NULL");
  *out = NULL;
  heed_topology_options def = {0};
  if (!opt) opt = &def;
  if (opt->xml_path && access(opt->xml_path, R_OK) != 0)
    return heed_err_set(err, HEED_E_IO, "cannot read hwloc XML '%s': %s", opt->xml_path, strerror(errno));
  heed_status cx = HEED_OK;
  if (opt->xml_path)
    cx = check_xml(opt->xml_path, "the hwloc XML", err);
  else if (getenv("HWLOC_XMLFILE") && getenv("HWLOC_XMLFILE")[0]) /* hwloc loads it in place of this machine */
    cx = check_xml(getenv("HWLOC_XMLFILE"), "HWLOC_XMLFILE", err);
  if (cx != HEED_OK) return cx;

  heed_topology *t = calloc(1, sizeof *t);
  if (!t) return heed_err_set(err, HEED_E_NOMEM, "no memory for the topology");
  heed_status st = HEED_OK;
  if (hwloc_topology_init(&t->hw) != 0) {
    free(t);
    return heed_err_set(err, HEED_E_TOPOLOGY, "hwloc_topology_init failed: %s", strerror(errno));
  }
  hwloc_topology_set_io_types_filter(t->hw, HWLOC_TYPE_FILTER_KEEP_IMPORTANT);
  if (opt->xml_path && hwloc_topology_set_xml(t->hw, opt->xml_path) != 0) {
    st = heed_err_set(err, HEED_E_TOPOLOGY, "hwloc cannot use XML '%s': %s", opt->xml_path, strerror(errno));
    goto fail;
  }
  if (hwloc_topology_load(t->hw) != 0) {
    st = heed_err_set(err, HEED_E_TOPOLOGY, "hwloc_topology_load failed%s%s: %s",
                      opt->xml_path ? " on " : "", opt->xml_path ? opt->xml_path : "", strerror(errno));
    goto fail;
  }

  heed_topology_summary *s = &t->sum;
  s->is_this_system = hwloc_topology_is_thissystem(t->hw);
  if (opt->xml_path)
    heed_fmt(s->source, sizeof s->source, "recording %s", opt->xml_path);
  else
    snprintf(s->source, sizeof s->source, "this machine (hwloc %s)", HWLOC_VERSION);
  int np = hwloc_get_nbobjs_by_type(t->hw, HWLOC_OBJ_PACKAGE);
  s->n_packages = np > 0 ? (unsigned)np : 1;
  s->n_pus = (unsigned)hwloc_get_nbobjs_by_type(t->hw, HWLOC_OBJ_PU);
  int nc = hwloc_get_nbobjs_by_type(t->hw, HWLOC_OBJ_CORE);
  s->n_cores = nc > 0 ? (unsigned)nc : s->n_pus;
  if (!s->n_pus) {
    st = heed_err_set(err, HEED_E_TOPOLOGY, "hwloc found no processing units%s%s",
                      opt->xml_path ? " in " : "", opt->xml_path ? opt->xml_path : "");
    goto fail;
  }
  s->cache_line = 64;
  const char *model = hwloc_obj_get_info_by_name(hwloc_get_root_obj(t->hw), "CPUModel");
  hwloc_obj_t pkg = hwloc_get_obj_by_type(t->hw, HWLOC_OBJ_PACKAGE, 0);
  if (!model && pkg) model = hwloc_obj_get_info_by_name(pkg, "CPUModel");
  heed_strlcpy(s->cpu_model, model, sizeof s->cpu_model);

  if ((st = fill_numa(t, err)) != HEED_OK) goto fail;
  uint64_t os_mem = opt->os_mem_bytes;
  if (!os_mem && s->is_this_system && !opt->xml_path) os_mem = os_total_memory();
  check_memory(t, os_mem);

  uint64_t l1d, l2, l3;
  read_caches(t, &l1d, &l2, &l3);
  check_caches(t, l1d, l2, l3);

  if (opt->xml_path)
    st = cl_from_xml(t, err);
  else if (!opt->no_opencl)
    st = heed_opencl_enumerate(t->hw, &t->cl, &t->n_cl, s->opencl_note, sizeof s->opencl_note, err);
  if (st != HEED_OK) goto fail;

  *out = t;
  return HEED_OK;
fail:
  heed_topology_destroy(t);
  return st;
}

void heed_topology_destroy(heed_topology *t) {
  if (!t) return;
  if (t->hw) hwloc_topology_destroy(t->hw);
  free(t->cl);
  free(t->numa_os);
  free(t->numa_mem);
  free(t);
}

const heed_topology_summary *heed_topology_get_summary(const heed_topology *t) { return t ? &t->sum : NULL; }
unsigned heed_topology_n_fixes(const heed_topology *t) { return t ? t->n_fixes : 0; }
const heed_topology_fix *heed_topology_get_fix(const heed_topology *t, unsigned i) {
  return t && i < t->n_fixes ? &t->fixes[i] : NULL;
}
unsigned heed_topology_n_cl_devices(const heed_topology *t) { return t ? t->n_cl : 0; }
const heed_cl_device_info *heed_topology_get_cl_device(const heed_topology *t, unsigned i) {
  return t && i < t->n_cl ? &t->cl[i] : NULL;
}

heed_status heed_topology_get_numa(const heed_topology *t, unsigned i, unsigned *os_index, uint64_t *mem) {
  if (!t || i >= t->sum.n_numa) return HEED_E_RANGE;
  if (os_index) *os_index = t->numa_os[i];
  if (mem) *mem = t->numa_mem[i];
  return HEED_OK;
}

void *heed_topology_hwloc(const heed_topology *t) { return t ? (void *)t->hw : NULL; }

const char *heed_cl_device_type_name(heed_cl_device_type ty) {
  switch (ty) {
    case HEED_CL_DEVICE_GPU: return "gpu";
    case HEED_CL_DEVICE_CPU: return "cpu";
    case HEED_CL_DEVICE_ACCELERATOR: return "accelerator";
    default: return "other";
  }
}
