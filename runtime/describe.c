/* runtime/describe.c - what `heed info` prints, for people and as JSON. */
#include <stdio.h>
#include <string.h>

#include "heed/heed.h"
#include "runtime/internal.h"

void heed_json_str(FILE *f, const char *s) {
  if (!s) {
    fputs("null", f);
    return;
  }
  fputc('"', f);
  for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
    switch (*p) {
      case '"': fputs("\\\"", f); break;
      case '\\': fputs("\\\\", f); break;
      case '\n': fputs("\\n", f); break;
      case '\t': fputs("\\t", f); break;
      case '\r': fputs("\\r", f); break;
      default:
        if (*p < 0x20)
          fprintf(f, "\\u%04x", *p);
        else
          fputc(*p, f);
    }
  }
  fputc('"', f);
}

/* Head shapes `heed info` shows a plan for: {dk, dv, dtype}. */
static const struct {
  unsigned dk, dv;
  heed_dtype dt;
} plan_shapes[] = {{64, 64, HEED_DTYPE_F16},   {128, 128, HEED_DTYPE_F16}, {256, 256, HEED_DTYPE_F16},
                   {192, 128, HEED_DTYPE_F16}, {128, 128, HEED_DTYPE_F32}, {128, 128, HEED_DTYPE_BF16}};

static void size_str(uint64_t b, char *buf, size_t cap) {
  if (b >= (1ull << 30))
    snprintf(buf, cap, "%.1f GiB", (double)b / (1ull << 30));
  else if (b >= (1ull << 20))
    snprintf(buf, cap, "%.1f MiB", (double)b / (1ull << 20));
  else
    snprintf(buf, cap, "%llu KiB", (unsigned long long)(b >> 10));
}

heed_status heed_runtime_write_text(heed_runtime *rt, FILE *f) {
  if (!rt || !f) return HEED_E_INVALID;
  const heed_topology *t = heed_runtime_topology(rt);
  const heed_topology_summary *s = heed_topology_get_summary(t);
  char a[32], b[32], c[32], d[32], feat[256];
  fprintf(f, "heed %s\n", HEED_VERSION_STRING);
  size_str(s->mem_bytes, a, sizeof a);
  fprintf(f, "machine     %s%s%s\n", s->source, s->cpu_model[0] ? ": " : "", s->cpu_model);
  fprintf(f, "            %u package(s), %u NUMA node(s), %u cores, %u PUs, %s memory\n", s->n_packages, s->n_numa,
          s->n_cores, s->n_pus, a);
  size_str(s->l1d_per_core, a, sizeof a);
  size_str(s->l2_per_core, b, sizeof b);
  size_str(s->l3_per_core, c, sizeof c);
  size_str(s->l3_total, d, sizeof d);
  fprintf(f, "caches      per core: L1d %s, L2 %s, L3 %s (L3 in all %s), line %u B\n", a, b,
          s->l3_per_core ? c : "none", s->l3_per_core ? d : "0", s->cache_line);
  for (unsigned i = 0; i < s->n_numa; i++) {
    unsigned os;
    uint64_t mem;
    heed_topology_get_numa(t, i, &os, &mem);
    size_str(mem, a, sizeof a);
    fprintf(f, "numa        node %u: %s\n", os, a);
  }
  heed_cpu_features_str(heed_runtime_cpu_features(rt), feat, sizeof feat);
  fprintf(f, "features    %s\n", feat[0] ? feat : "(none heed uses)");
  fprintf(f, "isa levels ");
  for (int i = 0; i < HEED_ISA_COUNT; i++)
    fprintf(f, " %s(%s%s)", heed_isa_name((heed_isa)i), heed_kernels_compiled((heed_isa)i) ? "built" : "not built",
            heed_isa_runs_on((heed_isa)i, heed_runtime_cpu_features(rt)) ? ", runs" : "");
  fputc('\n', f);
  unsigned ncl = heed_topology_n_cl_devices(t);
  if (!ncl) fprintf(f, "opencl      no device: %s\n", s->opencl_note[0] ? s->opencl_note : "none listed");
  for (unsigned i = 0; i < ncl; i++) {
    const heed_cl_device_info *x = heed_topology_get_cl_device(t, i);
    size_str(x->global_mem_bytes, a, sizeof a);
    size_str(x->local_mem_bytes, b, sizeof b);
    fprintf(f, "opencl %-4u %s / %s: %s, %u CU, %s global, %s local, fp16 %s, subgroups %s, %s%s%s\n", i,
            x->platform_name, x->device_name, heed_cl_device_type_name(x->type), x->compute_units, a,
            x->local_mem_bytes ? b : "?", x->has_fp16 < 0 ? "?" : x->has_fp16 ? "yes" : "no",
            x->has_subgroups < 0 ? "?" : x->has_subgroups ? "yes" : "no", x->locality, x->pci_busid[0] ? " pci " : "",
            x->pci_busid);
  }
  for (unsigned i = 0; i < heed_runtime_n_candidates(rt); i++) {
    const heed_backend_candidate *cd = heed_runtime_get_candidate(rt, i);
    fprintf(f, "%s %u. score %3d%s  %s\n", i ? "           " : "candidates", i + 1, cd->score,
            cd->built ? "" : " (not built)", cd->why);
  }
  heed_pool *pool = heed_runtime_pool(rt);
  fprintf(f, "choice      backend %s, isa %s, %d threads, %d of %d pool threads pinned%s%s\n",
          heed_backend_name(heed_runtime_backend(rt)), heed_isa_name(heed_runtime_isa(rt)),
          heed_runtime_n_threads(rt), heed_pool_n_pinned(pool), heed_runtime_n_threads(rt) - 1,
          heed_pool_pin_note(pool)[0] ? ": " : "", heed_pool_pin_note(pool));
  fprintf(f, "            %s: %s\n            %s\n            %s\n", heed_backend_name(heed_runtime_backend(rt)),
          heed_runtime_backend_description(rt), heed_runtime_choice_reason(rt), heed_runtime_settings(rt));
  for (size_t i = 0; i < HEED_ARRAY_LEN(plan_shapes); i++) {
    heed_tile_plan p;
    if (heed_runtime_tile_plan(rt, plan_shapes[i].dk, plan_shapes[i].dv, plan_shapes[i].dt, &p) != HEED_OK) continue;
    fprintf(f, "%s dk %3u dv %3u %-4s: q_rows %2u, kv_block %3u (L1d %5.1f KiB of %llu, L2 %6.1f KiB of %llu)\n",
            i ? "           " : "tile plan  ", p.dk, p.dv, heed_dtype_name(p.kv_dtype), p.q_rows, p.kv_block,
            p.l1_working_set / 1024.0, (unsigned long long)(p.l1d_bytes >> 10), p.l2_working_set / 1024.0,
            (unsigned long long)(p.l2_bytes >> 10));
  }
  unsigned nf = heed_topology_n_fixes(t);
  if (!nf) fprintf(f, "corrected   nothing: every hwloc value looked plausible\n");
  for (unsigned i = 0; i < nf; i++) {
    const heed_topology_fix *x = heed_topology_get_fix(t, i);
    fprintf(f, "%s %s: %s\n", i ? "           " : "corrected  ", x->what, x->reason);
  }
  return HEED_OK;
}

heed_status heed_runtime_write_json(heed_runtime *rt, FILE *f) {
  if (!rt || !f) return HEED_E_INVALID;
  const heed_topology *t = heed_runtime_topology(rt);
  const heed_topology_summary *s = heed_topology_get_summary(t);
  char feat[256];
  fprintf(f, "{\"version\":\"%s\",\"machine\":{\"source\":", HEED_VERSION_STRING);
  heed_json_str(f, s->source);
  fprintf(f, ",\"cpu_model\":");
  heed_json_str(f, s->cpu_model);
  fprintf(f,
          ",\"is_this_system\":%s,\"packages\":%u,\"numa_nodes\":%u,\"cores\":%u,\"pus\":%u,\"mem_bytes\":%llu},"
          "\"caches\":{\"l1d_per_core\":%llu,\"l2_per_core\":%llu,\"l3_per_core\":%llu,\"l3_total\":%llu,"
          "\"line\":%u},\"numa\":[",
          s->is_this_system ? "true" : "false", s->n_packages, s->n_numa, s->n_cores, s->n_pus,
          (unsigned long long)s->mem_bytes, (unsigned long long)s->l1d_per_core,
          (unsigned long long)s->l2_per_core, (unsigned long long)s->l3_per_core,
          (unsigned long long)s->l3_total, s->cache_line);
  for (unsigned i = 0; i < s->n_numa; i++) {
    unsigned os;
    uint64_t mem;
    heed_topology_get_numa(t, i, &os, &mem);
    fprintf(f, "%s{\"os_index\":%u,\"mem_bytes\":%llu}", i ? "," : "", os, (unsigned long long)mem);
  }
  heed_cpu_features_str(heed_runtime_cpu_features(rt), feat, sizeof feat);
  fprintf(f, "],\"cpu_features\":");
  heed_json_str(f, feat);
  fprintf(f, ",\"isa_levels\":[");
  for (int i = 0; i < HEED_ISA_COUNT; i++)
    fprintf(f, "%s{\"name\":\"%s\",\"built\":%s,\"runs\":%s}", i ? "," : "", heed_isa_name((heed_isa)i),
            heed_kernels_compiled((heed_isa)i) ? "true" : "false",
            heed_isa_runs_on((heed_isa)i, heed_runtime_cpu_features(rt)) ? "true" : "false");
  fprintf(f, "],\"opencl_note\":");
  heed_json_str(f, s->opencl_note);
  fprintf(f, ",\"opencl_devices\":[");
  for (unsigned i = 0; i < heed_topology_n_cl_devices(t); i++) {
    const heed_cl_device_info *x = heed_topology_get_cl_device(t, i);
    fprintf(f, "%s{\"index\":%u,\"platform_index\":%d,\"device_index\":%d,\"platform\":", i ? "," : "", i,
            x->platform_index, x->device_index);
    heed_json_str(f, x->platform_name);
    fprintf(f, ",\"name\":");
    heed_json_str(f, x->device_name);
    fprintf(f, ",\"vendor\":");
    heed_json_str(f, x->vendor);
    fprintf(f, ",\"version\":");
    heed_json_str(f, x->version);
    fprintf(f, ",\"driver_version\":");
    heed_json_str(f, x->driver_version);
    fprintf(f,
            ",\"type\":\"%s\",\"compute_units\":%u,\"global_mem_bytes\":%llu,\"local_mem_bytes\":%llu,"
            "\"max_work_group_size\":%zu,\"fp16\":%s,\"subgroups\":%s,\"pci_busid\":",
            heed_cl_device_type_name(x->type), x->compute_units, (unsigned long long)x->global_mem_bytes,
            (unsigned long long)x->local_mem_bytes, x->max_work_group_size,
            x->has_fp16 < 0 ? "null" : x->has_fp16 ? "true" : "false",
            x->has_subgroups < 0 ? "null" : x->has_subgroups ? "true" : "false");
    heed_json_str(f, x->pci_busid);
    fprintf(f, ",\"numa_node\":%d,\"locality\":", x->numa_node);
    heed_json_str(f, x->locality);
    fputc('}', f);
  }
  fprintf(f, "],\"candidates\":[");
  for (unsigned i = 0; i < heed_runtime_n_candidates(rt); i++) {
    const heed_backend_candidate *c = heed_runtime_get_candidate(rt, i);
    fprintf(f, "%s{\"backend\":\"%s\",\"opencl_device\":%d,\"score\":%d,\"built\":%s,\"why\":", i ? "," : "",
            heed_backend_name(c->kind), c->cl_device, c->score, c->built ? "true" : "false");
    heed_json_str(f, c->why);
    fputc('}', f);
  }
  heed_pool *pool = heed_runtime_pool(rt);
  fprintf(f, "],\"choice\":{\"backend\":\"%s\",\"isa\":\"%s\",\"threads\":%d,\"pinned\":%d,\"pin_note\":",
          heed_backend_name(heed_runtime_backend(rt)), heed_isa_name(heed_runtime_isa(rt)),
          heed_runtime_n_threads(rt), heed_pool_n_pinned(pool));
  heed_json_str(f, heed_pool_pin_note(pool));
  fprintf(f, ",\"backend_description\":");
  heed_json_str(f, heed_runtime_backend_description(rt));
  fprintf(f, ",\"reason\":");
  heed_json_str(f, heed_runtime_choice_reason(rt));
  fprintf(f, ",\"settings\":");
  heed_json_str(f, heed_runtime_settings(rt));
  fprintf(f, "},\"tile_plans\":[");
  int first = 1;
  for (size_t i = 0; i < HEED_ARRAY_LEN(plan_shapes); i++) {
    heed_tile_plan p;
    if (heed_runtime_tile_plan(rt, plan_shapes[i].dk, plan_shapes[i].dv, plan_shapes[i].dt, &p) != HEED_OK) continue;
    fprintf(f,
            "%s{\"dk\":%u,\"dv\":%u,\"kv_dtype\":\"%s\",\"q_rows\":%u,\"kv_block\":%u,\"l1_working_set\":%llu,"
            "\"l2_working_set\":%llu}",
            first ? "" : ",", p.dk, p.dv, heed_dtype_name(p.kv_dtype), p.q_rows, p.kv_block,
            (unsigned long long)p.l1_working_set, (unsigned long long)p.l2_working_set);
    first = 0;
  }
  fprintf(f, "],\"corrections\":[");
  for (unsigned i = 0; i < heed_topology_n_fixes(t); i++) {
    const heed_topology_fix *x = heed_topology_get_fix(t, i);
    fprintf(f, "%s{\"what\":", i ? "," : "");
    heed_json_str(f, x->what);
    fprintf(f, ",\"reported\":%llu,\"used\":%llu,\"reason\":", (unsigned long long)x->reported,
            (unsigned long long)x->used);
    heed_json_str(f, x->reason);
    fputc('}', f);
  }
  fprintf(f, "]}");
  return HEED_OK;
}
