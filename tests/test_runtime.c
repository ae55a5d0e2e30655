/* Backend choice, overrides and bad input, replayed on recorded machines. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "heed/runtime.h"

#define DATA(f) HEED_TEST_DATA "/" f
#define F(N) HEED_CPU_FLAG(N)
#define GiB (1024ull * 1024 * 1024)

static const heed_cpu_features avx512_server = F(AVX) | F(AVX2) | F(FMA) | F(F16C) | F(AVX512F) | F(AVX512BW) |
                                               F(AVX512VL) | F(AVX512_VNNI);
static const heed_cpu_features laptop_avx2 = F(AVX) | F(AVX2) | F(FMA) | F(F16C) | F(AVX_VNNI);
static const heed_cpu_features cortex_a72 = F(NEON);

static heed_runtime_options replay(const char *xml, heed_cpu_features f) {
  heed_runtime_options o;
  heed_runtime_options_init(&o);
  o.topology_xml = xml;
  o.cpu_features_given = 1;
  o.cpu_features = f;
  return o;
}

static heed_runtime *open_ok(const heed_runtime_options *o) {
  heed_runtime *rt = NULL;
  heed_error e = {0};
  cr_assert_eq(heed_runtime_open(o, &rt, &e), HEED_OK, "%s", e.msg);
  cr_assert_not_null(rt);
  return rt;
}

static void open_fails(const heed_runtime_options *o, heed_status want, const char *a, const char *b) {
  heed_runtime *rt = (heed_runtime *)0x1;
  heed_error e = {0};
  heed_status st = heed_runtime_open(o, &rt, &e);
  cr_assert_eq(st, want, "got %s (%s)", heed_status_name(st), e.msg);
  cr_assert_null(rt);
  cr_assert_eq(e.status, want);
  if (a) cr_assert(strstr(e.msg, a), "message '%s' lacks '%s'", e.msg, a);
  if (b) cr_assert(strstr(e.msg, b), "message '%s' lacks '%s'", e.msg, b);
}

static heed_isa native_best(heed_cpu_features f) {
  static const heed_isa pref[] = {HEED_ISA_AVX512, HEED_ISA_AVX2, HEED_ISA_NEON};
  for (int i = 0; i < 3; i++)
    if (heed_kernels_compiled(pref[i]) && heed_isa_runs_on(pref[i], f)) return pref[i];
  return HEED_ISA_SCALAR;
}

/* What the default choice must be here: an OpenCL device that is not a CPU
 * (a GPU or an accelerator) outranks the cores; PoCL's CPU device never
 * does. CI has only PoCL, so CI expects the CPU backend; on a GPU machine
 * (the H100 lent to one session ran these tests) the GPU is expected. */
static heed_backend_kind expected_backend(heed_runtime *rt) {
  const heed_topology *t = heed_runtime_topology(rt);
  for (unsigned i = 0; i < heed_topology_n_cl_devices(t); i++)
    if (heed_topology_get_cl_device(t, i)->type != HEED_CL_DEVICE_CPU) return HEED_BACKEND_OPENCL;
  return HEED_BACKEND_CPU;
}

Test(runtime, opens_on_this_machine_with_defaults) {
  heed_runtime *rt = open_ok(NULL);
  const heed_topology_summary *s = heed_topology_get_summary(heed_runtime_topology(rt));
  cr_assert_eq(heed_runtime_backend(rt), expected_backend(rt), "%s", heed_runtime_choice_reason(rt));
  cr_assert_eq(heed_runtime_isa(rt), native_best(heed_cpu_features_detect()));
  cr_assert_eq(heed_runtime_n_threads(rt), (int)s->n_cores, "one worker per physical core");
  cr_assert_eq(heed_pool_n_workers(heed_runtime_pool(rt)), (int)s->n_cores);
  cr_assert_eq(heed_runtime_kernels(rt)->isa, heed_runtime_isa(rt));
  cr_assert_str_eq(heed_runtime_last_error(rt), "");
  /* The open backend is the cpu vtable, and it describes itself. */
  const char *d = heed_runtime_backend_description(rt);
  if (heed_runtime_backend(rt) == HEED_BACKEND_CPU)
    cr_assert(strstr(d, heed_isa_name(heed_runtime_isa(rt))) && strstr(d, "workers"), "%s", d);
  else
    cr_assert(strstr(d, "opencl on '"), "%s", d);
  heed_runtime_close(rt);
  heed_runtime_close(NULL);
}

Test(runtime, the_backend_registry) {
  cr_assert(heed_backend_built(HEED_BACKEND_CPU));
  cr_assert(heed_backend_built(HEED_BACKEND_OPENCL), "this build has OpenCL (HEED_WITH_OPENCL)");
  cr_assert_not(heed_backend_built(HEED_BACKEND_AUTO));
  cr_assert_not(heed_backend_built((heed_backend_kind)99));
}

Test(runtime, server_ranks_its_gpu_first_and_says_why_it_runs_on_cpu) {
  heed_runtime_options o = replay(DATA("server-2s-2numa.xml"), avx512_server);
  heed_runtime *rt = open_ok(&o);
  cr_assert_eq(heed_runtime_n_candidates(rt), 2);
  const heed_backend_candidate *c0 = heed_runtime_get_candidate(rt, 0), *c1 = heed_runtime_get_candidate(rt, 1);
  cr_assert_eq(c0->kind, HEED_BACKEND_OPENCL, "a GPU outranks the CPU");
  cr_assert_eq(c0->cl_device, 0);
  cr_assert_gt(c0->score, c1->score);
  cr_assert(strstr(c0->why, "MI210"), "%s", c0->why);
  cr_assert_eq(c1->kind, HEED_BACKEND_CPU);
  /* The GPU is in the recording, not on this machine: the next candidate runs, and the skip is written down. */
  cr_assert_eq(heed_runtime_backend(rt), HEED_BACKEND_CPU);
  cr_assert_eq(c0->built, 1);
  cr_assert(strstr(heed_runtime_choice_reason(rt), "skipped opencl gpu 'AMD Instinct MI210'"), "%s",
            heed_runtime_choice_reason(rt));
  cr_assert(strstr(heed_runtime_choice_reason(rt), "replayed recording"));
  cr_assert_eq(heed_runtime_isa(rt), native_best(avx512_server));
  cr_assert_eq(heed_runtime_n_threads(rt), 32);
  cr_assert_eq(heed_pool_n_pinned(heed_runtime_pool(rt)), 0, "a recording is not pinned to");
  cr_assert(strstr(heed_pool_pin_note(heed_runtime_pool(rt)), "recording"));
  heed_runtime_close(rt);
}

Test(runtime, laptop_igpu_outranks_the_cpu) {
  heed_runtime_options o = replay(DATA("laptop-intel-igpu.xml"), laptop_avx2);
  heed_runtime *rt = open_ok(&o);
  const heed_backend_candidate *c0 = heed_runtime_get_candidate(rt, 0);
  cr_assert_eq(c0->kind, HEED_BACKEND_OPENCL);
  cr_assert_eq(c0->score, 200 + 96 + 20);
  cr_assert_eq(heed_runtime_get_candidate(rt, 1)->kind, HEED_BACKEND_CPU);
  cr_assert_eq(heed_runtime_get_candidate(rt, 1)->score, heed_kernels_compiled(HEED_ISA_AVX2) ? 120 : 100);
  cr_assert_eq(heed_runtime_n_threads(rt), 12);
  heed_runtime_close(rt);
}

/* A recorded machine whose OpenCL device name is long: name, candidate,
 * choice and `heed info` carry it whole; past HEED_NAME_MAX it ends in "...". */
static heed_runtime *open_with_device_name(const char *name, char *xml_path, size_t cap) {
  FILE *in = fopen(DATA("laptop-intel-igpu.xml"), "r");
  cr_assert_not_null(in);
  snprintf(xml_path, cap, "/tmp/heed-test-longname-%d.xml", (int)getpid());
  FILE *out = fopen(xml_path, "w");
  cr_assert_not_null(out);
  char line[4096];
  while (fgets(line, sizeof line, in)) {
    if (strstr(line, "name=\"GPUModel\""))
      fprintf(out, "          <info name=\"GPUModel\" value=\"%s\" />\n", name);
    else
      fputs(line, out);
  }
  fclose(in);
  fclose(out);
  heed_runtime_options o = replay(xml_path, laptop_avx2);
  return open_ok(&o);
}

Test(runtime, long_device_names_are_never_cut_silently) {
  char name[400], xml[128];
  for (int i = 0; i < 230; i++) name[i] = (char)('A' + i % 26);
  name[230] = '\0';
  heed_runtime *rt = open_with_device_name(name, xml, sizeof xml);
  const heed_topology *t = heed_runtime_topology(rt);
  cr_assert_str_eq(heed_topology_get_cl_device(t, 0)->device_name, name);
  cr_assert(strstr(heed_runtime_get_candidate(rt, 0)->why, name), "%s", heed_runtime_get_candidate(rt, 0)->why);
  cr_assert(strstr(heed_runtime_get_candidate(rt, 0)->why, ">= 4 GiB"), "%s", heed_runtime_get_candidate(rt, 0)->why);
  cr_assert(strstr(heed_runtime_choice_reason(rt), name), "%s", heed_runtime_choice_reason(rt));
  char *buf = NULL;
  size_t len = 0;
  FILE *f = open_memstream(&buf, &len);
  heed_runtime_write_text(rt, f);
  fclose(f);
  cr_assert(strstr(buf, name), "heed info lacks the whole name");
  free(buf);
  heed_runtime_close(rt);
  /* Past HEED_NAME_MAX bytes: the start of the name and "...", said everywhere alike. */
  for (int i = 230; i < 300; i++) name[i] = (char)('a' + i % 26);
  name[300] = '\0';
  rt = open_with_device_name(name, xml, sizeof xml);
  const char *kept = heed_topology_get_cl_device(heed_runtime_topology(rt), 0)->device_name;
  cr_assert_eq(strlen(kept), HEED_NAME_MAX - 1);
  cr_assert(strncmp(kept, name, HEED_NAME_MAX - 4) == 0);
  cr_assert_str_eq(kept + HEED_NAME_MAX - 4, "...");
  cr_assert(strstr(heed_runtime_get_candidate(rt, 0)->why, kept), "%s", heed_runtime_get_candidate(rt, 0)->why);
  heed_runtime_close(rt);
  remove(xml);
}

Test(runtime, arm_board_takes_neon_where_built) {
  heed_runtime_options o = replay(DATA("arm-board-4core.xml"), cortex_a72);
  heed_runtime *rt = open_ok(&o);
  cr_assert_eq(heed_runtime_isa(rt), heed_kernels_compiled(HEED_ISA_NEON) ? HEED_ISA_NEON : HEED_ISA_SCALAR);
  cr_assert_eq(heed_runtime_n_threads(rt), 4);
  cr_assert_eq(heed_runtime_n_candidates(rt), 1);
  heed_tile_plan p;
  cr_assert_eq(heed_runtime_tile_plan(rt, 128, 128, HEED_DTYPE_F16, &p), HEED_OK);
  cr_assert_eq(p.l2_bytes, 256 * 1024);
  heed_runtime_close(rt);
}

Test(runtime, environment_overrides) {
  heed_runtime_options o = replay(DATA("server-2s-2numa.xml"), avx512_server);
  setenv("HEED_BACKEND", "cpu", 1);
  setenv("HEED_ISA", "scalar", 1);
  setenv("HEED_THREADS", "3", 1);
  heed_runtime *rt = open_ok(&o);
  cr_assert_eq(heed_runtime_backend(rt), HEED_BACKEND_CPU);
  cr_assert(strstr(heed_runtime_choice_reason(rt), "HEED_BACKEND"), "%s", heed_runtime_choice_reason(rt));
  cr_assert_eq(heed_runtime_isa(rt), HEED_ISA_SCALAR);
  cr_assert_eq(heed_runtime_n_threads(rt), 3);
  cr_assert_eq(heed_runtime_kernels(rt)->slot[HEED_OP_DOT][HEED_DTYPE_F16].isa, HEED_ISA_SCALAR);
  heed_runtime_close(rt);
  /* An option the caller set wins over the environment; IGNORE_ENV ignores it all. */
  o.isa = HEED_ISA_SCALAR;
  o.n_threads = 2;
  setenv("HEED_ISA", "bogus", 1);
  setenv("HEED_THREADS", "zero", 1);
  rt = open_ok(&o);
  cr_assert_eq(heed_runtime_n_threads(rt), 2);
  heed_runtime_close(rt);
  o = replay(DATA("server-2s-2numa.xml"), avx512_server);
  o.flags = HEED_RUNTIME_IGNORE_ENV;
  setenv("HEED_BACKEND", "gpu", 1);
  rt = open_ok(&o);
  cr_assert_eq(heed_runtime_n_threads(rt), 32);
  heed_runtime_close(rt);
}

Test(runtime, unknown_environment_values_name_the_value) {
  heed_runtime_options o = replay(DATA("vm-2core-epyc.xml"), laptop_avx2);
  setenv("HEED_BACKEND", "gpu", 1);
  open_fails(&o, HEED_E_INVALID, "HEED_BACKEND=gpu", "accepted: auto, cpu, opencl");
  unsetenv("HEED_BACKEND");
  setenv("HEED_ISA", "sse9", 1);
  open_fails(&o, HEED_E_INVALID, "HEED_ISA=sse9", "accepted");
  unsetenv("HEED_ISA");
  setenv("HEED_THREADS", "0", 1);
  open_fails(&o, HEED_E_INVALID, "HEED_THREADS=0", "accepted");
  setenv("HEED_THREADS", "2x", 1);
  open_fails(&o, HEED_E_INVALID, "HEED_THREADS=2x", NULL);
  setenv("HEED_THREADS", "3", 1);
  open_fails(&o, HEED_E_INVALID, "HEED_THREADS=3", "more workers than the 2 PUs");
  setenv("HEED_THREADS", "2", 1);
  heed_runtime *rt = open_ok(&o);
  cr_assert_eq(heed_runtime_n_threads(rt), 2);
  heed_runtime_close(rt);
}

Test(runtime, an_isa_this_cpu_lacks_is_refused) {
  heed_runtime_options o = replay(DATA("vm-2core-epyc.xml"), laptop_avx2);
  if (heed_kernels_compiled(HEED_ISA_AVX512)) {
    setenv("HEED_ISA", "avx512", 1);
    open_fails(&o, HEED_E_UNSUPPORTED, "HEED_ISA=avx512: this CPU lacks avx512f avx512bw avx512vl", "it has: avx");
  }
  heed_isa foreign = heed_kernels_compiled(HEED_ISA_NEON) ? HEED_ISA_AVX2 : HEED_ISA_NEON;
  setenv("HEED_ISA", heed_isa_name(foreign), 1);
  open_fails(&o, HEED_E_UNSUPPORTED, "not compiled into this libheed", "scalar");
  unsetenv("HEED_ISA");
  o.isa = HEED_ISA_AVX2;
  o.cpu_features = 0; /* a CPU without AVX2: asking for it through the options fails alike */
  if (heed_kernels_compiled(HEED_ISA_AVX2)) open_fails(&o, HEED_E_UNSUPPORTED, "options.isa=avx2", "lacks avx");
}

Test(runtime, opencl_requests) {
  heed_runtime_options o = replay(DATA("laptop-intel-igpu.xml"), laptop_avx2);
  o.backend = HEED_BACKEND_OPENCL;
  open_fails(&o, HEED_E_UNSUPPORTED, "replayed recording", "Iris(R) Xe");
  o.opencl_device = 3;
  open_fails(&o, HEED_E_INVALID, "opencl_device=3", "1 OpenCL device");
  o = replay(DATA("arm-board-4core.xml"), cortex_a72);
  setenv("HEED_BACKEND", "opencl", 1);
  open_fails(&o, HEED_E_NOT_FOUND, "HEED_BACKEND=opencl: no OpenCL device", NULL);
}

Test(runtime, pocl_is_never_picked_automatically) {
  heed_runtime *rt = open_ok(NULL);
  for (unsigned i = 0; i < heed_runtime_n_candidates(rt); i++) {
    const heed_backend_candidate *c = heed_runtime_get_candidate(rt, i);
    if (c->kind != HEED_BACKEND_OPENCL) continue;
    const heed_cl_device_info *d = heed_topology_get_cl_device(heed_runtime_topology(rt), (unsigned)c->cl_device);
    if (d->type == HEED_CL_DEVICE_CPU) {
      cr_assert_eq(c->score, 0);
      cr_assert(strstr(c->why, "only when asked for"));
    }
  }
  cr_assert_eq(heed_runtime_backend(rt), expected_backend(rt));
  heed_runtime_close(rt);
}

Test(runtime, bad_options_are_refused) {
  heed_runtime_options o;
  heed_runtime_options_init(&o);
  o.flags = HEED_RUNTIME_IGNORE_ENV;
  o.backend = (heed_backend_kind)7;
  open_fails(&o, HEED_E_INVALID, "options.backend=7", NULL);
  heed_runtime_options_init(&o);
  o.isa = 9;
  open_fails(&o, HEED_E_INVALID, "options.isa=9", NULL);
  heed_runtime_options_init(&o);
  o.n_threads = -1;
  open_fails(&o, HEED_E_INVALID, "options.n_threads=-1", NULL);
  heed_runtime_options_init(&o);
  o.opencl_device = -5;
  open_fails(&o, HEED_E_INVALID, "options.opencl_device=-5", NULL);
  heed_runtime_options_init(&o);
  o.topology_xml = "/no/such.xml";
  open_fails(&o, HEED_E_IO, "/no/such.xml", NULL);
  cr_assert_eq(heed_runtime_open(NULL, NULL, NULL), HEED_E_INVALID);
  heed_backend_kind k;
  cr_assert_eq(heed_backend_parse("opencl", &k), HEED_OK);
  cr_assert_eq(k, HEED_BACKEND_OPENCL);
  cr_assert_neq(heed_backend_parse("cuda", &k), HEED_OK);
}

static char logged[4096];
static void capture(void *user, const char *line) {
  (void)user;
  strncat(logged, line, sizeof logged - strlen(logged) - 2);
  strcat(logged, "\n");
}

Test(runtime, debug_logs_the_choice_and_the_corrections) {
  heed_runtime_options o = replay(DATA("vm-2core-bogus.xml"), laptop_avx2);
  o.os_mem_bytes = 24 * GiB;
  o.log = capture;
  setenv("HEED_DEBUG", "1", 1);
  heed_runtime *rt = open_ok(&o);
  cr_assert(strstr(logged, "corrected L3 per core"), "%s", logged);
  cr_assert(strstr(logged, "corrected memory"), "%s", logged);
  cr_assert(strstr(logged, "backend cpu"), "%s", logged);
  cr_assert(strstr(logged, "candidate 0"), "%s", logged);
  heed_runtime_close(rt);
  logged[0] = '\0';
  setenv("HEED_DEBUG", "0", 1);
  rt = open_ok(&o);
  cr_assert_str_eq(logged, "", "HEED_DEBUG=0 logs nothing");
  heed_runtime_close(rt);
}

Test(runtime, info_json_and_text_carry_everything) {
  heed_runtime_options o = replay(DATA("server-2s-2numa.xml"), avx512_server);
  heed_runtime *rt = open_ok(&o);
  char *buf = NULL;
  size_t len = 0;
  FILE *f = open_memstream(&buf, &len);
  cr_assert_eq(heed_runtime_write_json(rt, f), HEED_OK);
  fclose(f);
  static const char *keys[] = {"\"machine\"", "\"caches\"", "\"numa\"", "\"opencl_devices\"", "\"cpu_features\"",
                               "\"candidates\"", "\"choice\"", "\"tile_plans\"", "\"corrections\"",
                               "\"AMD Instinct MI210\"", "\"numa_node\":1", "\"l2_per_core\":1310720"};
  for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) cr_assert(strstr(buf, keys[i]), "json lacks %s", keys[i]);
  int depth = 0, in_str = 0;
  for (char *p = buf; *p; p++) {
    if (in_str) {
      if (*p == '\\') p++;
      else if (*p == '"') in_str = 0;
      continue;
    }
    if (*p == '"') in_str = 1;
    if (*p == '{' || *p == '[') depth++;
    if (*p == '}' || *p == ']') depth--;
    cr_assert_geq(depth, 0);
  }
  cr_assert_eq(depth, 0, "unbalanced JSON");
  free(buf);
  f = open_memstream(&buf, &len);
  cr_assert_eq(heed_runtime_write_text(rt, f), HEED_OK);
  fclose(f);
  cr_assert(strstr(buf, "tile plan"));
  cr_assert(strstr(buf, "candidates"));
  cr_assert(strstr(buf, "AMD Instinct MI210"));
  free(buf);
  heed_tile_plan p;
  cr_assert_eq(heed_runtime_tile_plan(rt, 0, 128, HEED_DTYPE_F16, &p), HEED_E_INVALID);
  cr_assert(strstr(heed_runtime_last_error(rt), "dk=0"), "%s", heed_runtime_last_error(rt));
  heed_runtime_close(rt);
}
