/* runtime/runtime.c - open once: read the machine, rank the backends, apply
 * overrides, build the kernel table, start the pool. */
#include <ctype.h>
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "heed/runtime.h"
#include "runtime/backend.h"
#include "runtime/internal.h"

#define MAX_CANDIDATES 64

struct heed_runtime {
  heed_topology *topo;
  heed_cpu_features features;
  heed_backend_kind backend;
  int cl_device;            /* -1 unless the opencl backend runs */
  heed_isa isa;
  int n_threads;
  heed_kernel_table kernels;
  heed_pool *pool;
  const heed_backend_iface *be; /* the open backend */
  void *be_ctx;
  char *be_desc;            /* malloc'd, as long as the backend's description */
  heed_backend_candidate cand[MAX_CANDIDATES];
  unsigned n_cand;
  char reason[2048];
  char settings[200];       /* where each setting came from */
  int debug;
  heed_log_fn log;
  void *log_user;
  heed_error err;            /* the last refusal of a call on this runtime, under err_lock */
  pthread_mutex_t err_lock;  /* calls on several threads may fail at once (one gets HEED_E_BUSY) */
};

static const char *backend_names[] = {
#define HEED_X_(N, s) s,
    HEED_BACKEND_LIST(HEED_X_)
#undef HEED_X_
};

const char *heed_backend_name(heed_backend_kind k) {
  return (unsigned)k < HEED_BACKEND_COUNT ? backend_names[k] : NULL;
}

int heed_backend_parse(const char *name, heed_backend_kind *out) {
  if (!name || !out) return HEED_E_INVALID;
  for (int i = 0; i < HEED_BACKEND_COUNT; i++)
    if (strcmp(name, backend_names[i]) == 0) {
      *out = (heed_backend_kind)i;
      return HEED_OK;
    }
  return HEED_E_INVALID;
}

void heed_runtime_options_init(heed_runtime_options *o) {
  if (!o) return;
  memset(o, 0, sizeof *o);
  o->backend = HEED_BACKEND_AUTO;
  o->isa = HEED_ISA_AUTO;
  o->opencl_device = -1;
}

static void logf_(heed_runtime *rt, const char *fmt, ...) HEED_PRINTF(2, 3);
static void logf_(heed_runtime *rt, const char *fmt, ...) {
  if (!rt->debug) return;
  char line[4096];
  va_list ap;
  va_start(ap, fmt);
  heed_vfmt(line, sizeof line, fmt, ap);
  va_end(ap);
  if (rt->log)
    rt->log(rt->log_user, line);
  else
    fprintf(stderr, "heed: %s\n", line);
}

static void appendf(char *buf, size_t cap, const char *fmt, ...) HEED_PRINTF(3, 4);
static void appendf(char *buf, size_t cap, const char *fmt, ...) {
  size_t used = strlen(buf);
  if (used + 1 >= cap) return;
  va_list ap;
  va_start(ap, fmt);
  heed_vfmt(buf + used, cap - used, fmt, ap);
  va_end(ap);
}

/* "scalar, avx2, avx512" - the levels this build has. */
static void compiled_isas(char *buf, size_t cap) {
  buf[0] = '\0';
  for (int i = 0; i < HEED_ISA_COUNT; i++)
    if (heed_kernels_compiled((heed_isa)i)) appendf(buf, cap, "%s%s", buf[0] ? ", " : "", heed_isa_name((heed_isa)i));
}

static heed_isa best_isa(heed_cpu_features f) {
  static const heed_isa pref[] = {HEED_ISA_AVX512, HEED_ISA_AVX2, HEED_ISA_NEON};
  for (size_t i = 0; i < HEED_ARRAY_LEN(pref); i++)
    if (heed_kernels_compiled(pref[i]) && heed_isa_runs_on(pref[i], f)) return pref[i];
  return HEED_ISA_SCALAR;
}

/* Scores: an OpenCL GPU or accelerator outranks every CPU configuration; among
 * GPUs more compute units and more memory win. An OpenCL CPU device scores 0:
 * never automatic. */
static void rank(heed_runtime *rt) {
  heed_isa isa = best_isa(rt->features);
  static const int isa_bonus[HEED_ISA_COUNT] = {0, 20, 30, 20};
  heed_backend_candidate *c = &rt->cand[rt->n_cand++];
  memset(c, 0, sizeof *c);
  c->kind = HEED_BACKEND_CPU;
  c->cl_device = -1;
  c->score = 100 + isa_bonus[isa];
  c->built = 1;
  heed_fmt(c->why, sizeof c->why, "cpu with %s kernels on %u cores: 100 + %d for the isa", heed_isa_name(isa),
           heed_topology_get_summary(rt->topo)->n_cores, isa_bonus[isa]);
  unsigned n = heed_topology_n_cl_devices(rt->topo);
  for (unsigned i = 0; i < n && rt->n_cand < MAX_CANDIDATES; i++) {
    const heed_cl_device_info *d = heed_topology_get_cl_device(rt->topo, i);
    c = &rt->cand[rt->n_cand++];
    memset(c, 0, sizeof *c);
    c->kind = HEED_BACKEND_OPENCL;
    c->cl_device = (int)i;
    c->built = heed_backend_built(HEED_BACKEND_OPENCL);
    if (d->type == HEED_CL_DEVICE_GPU || d->type == HEED_CL_DEVICE_ACCELERATOR) {
      int cu = d->compute_units > 100 ? 100 : (int)d->compute_units;
      int mem = d->global_mem_bytes >= (4ull << 30) ? 20 : 0;
      c->score = 200 + cu + mem;
      heed_fmt(c->why, sizeof c->why, "opencl %s '%s': 200 + %d for compute units + %d for >= 4 GiB",
               heed_cl_device_type_name(d->type), d->device_name, cu, mem);
    } else {
      c->score = 0;
      heed_fmt(c->why, sizeof c->why, "opencl %s device '%s': used only when asked for (HEED_BACKEND=opencl)",
               heed_cl_device_type_name(d->type), d->device_name);
    }
  }
  /* Insertion sort, stable: equal scores keep discovery order. */
  for (unsigned i = 1; i < rt->n_cand; i++) {
    heed_backend_candidate tmp = rt->cand[i];
    unsigned j = i;
    while (j > 0 && rt->cand[j - 1].score < tmp.score) {
      rt->cand[j] = rt->cand[j - 1];
      j--;
    }
    rt->cand[j] = tmp;
  }
}

typedef struct settings {
  heed_backend_kind backend;
  int isa;
  int n_threads;
  const char *backend_src, *isa_src, *threads_src; /* "HEED_ISA" or "options.isa" */
  char threads_text[32];
} settings;

static heed_status read_settings(const heed_runtime_options *o, settings *s, int *debug, heed_error *err) {
  memset(s, 0, sizeof *s);
  s->backend = o->backend;
  s->isa = o->isa;
  s->n_threads = o->n_threads;
  s->backend_src = "options.backend";
  s->isa_src = "options.isa";
  s->threads_src = "options.n_threads";
  if ((unsigned)o->backend >= HEED_BACKEND_COUNT)
    return heed_err_set(err, HEED_E_INVALID, "options.backend=%d; accepted: 0 (auto), 1 (cpu), 2 (opencl)",
                        (int)o->backend);
  if (o->isa != HEED_ISA_AUTO && (o->isa < 0 || o->isa >= HEED_ISA_COUNT))
    return heed_err_set(err, HEED_E_INVALID, "options.isa=%d; accepted: -1 (auto) or 0..%d (scalar, avx2, avx512, neon)",
                        o->isa, HEED_ISA_COUNT - 1);
  if (o->n_threads < 0)
    return heed_err_set(err, HEED_E_INVALID, "options.n_threads=%d; accepted: 0 (one per core) or 1..PUs",
                        o->n_threads);
  if (o->opencl_device < -1)
    return heed_err_set(err, HEED_E_INVALID, "options.opencl_device=%d; accepted: -1 (best) or a device index",
                        o->opencl_device);
  snprintf(s->threads_text, sizeof s->threads_text, "%d", o->n_threads);
  *debug = (o->flags & HEED_RUNTIME_DEBUG) != 0;
  if (o->flags & HEED_RUNTIME_IGNORE_ENV) return HEED_OK;

  const char *v = getenv("HEED_DEBUG");
  if (v && v[0]) {
    if (strcmp(v, "1") != 0 && strcmp(v, "0") != 0)
      return heed_err_set(err, HEED_E_INVALID, "HEED_DEBUG=%s: accepted: 1 (log the choice to stderr), 0 or empty (off)", v);
    *debug |= v[0] == '1';
  }
  v = getenv("HEED_BACKEND");
  if (v && v[0] && s->backend == HEED_BACKEND_AUTO) {
    if (heed_backend_parse(v, &s->backend) != HEED_OK)
      return heed_err_set(err, HEED_E_INVALID, "HEED_BACKEND=%s: unknown backend; accepted: auto, cpu, opencl", v);
    s->backend_src = "HEED_BACKEND";
  }
  v = getenv("HEED_ISA");
  if (v && v[0] && s->isa == HEED_ISA_AUTO && strcmp(v, "auto") != 0) {
    heed_isa isa;
    if (heed_isa_parse(v, &isa) != HEED_OK)
      return heed_err_set(err, HEED_E_INVALID, "HEED_ISA=%s: unknown ISA; accepted: auto, scalar, avx2, avx512, neon", v);
    s->isa = (int)isa;
    s->isa_src = "HEED_ISA";
  }
  v = getenv("HEED_THREADS");
  if (v && v[0] && s->n_threads == 0) {
    char *end;
    errno = 0;
    long n = strtol(v, &end, 10);
    if (errno || *end || end == v || !isdigit((unsigned char)v[0]) || n < 1 || n > 1 << 20) /* no sign, no space */
      return heed_err_set(err, HEED_E_INVALID, "HEED_THREADS=%s: accepted: a whole number from 1 to the PUs of this machine", v);
    s->n_threads = (int)n;
    s->threads_src = "HEED_THREADS";
    heed_strlcpy(s->threads_text, v, sizeof s->threads_text);
  }
  return HEED_OK;
}

static heed_status choose_backend(heed_runtime *rt, const settings *s, const heed_runtime_options *o, heed_error *err) {
  rt->cl_device = -1;
  if (s->backend == HEED_BACKEND_CPU) {
    rt->backend = HEED_BACKEND_CPU;
    heed_fmt(rt->reason, sizeof rt->reason, "cpu: asked for by %s", s->backend_src);
    return HEED_OK;
  }
  unsigned ncl = heed_topology_n_cl_devices(rt->topo);
  const heed_topology_summary *sum = heed_topology_get_summary(rt->topo);
  if (s->backend == HEED_BACKEND_OPENCL) {
    if (o->opencl_device >= 0 && (unsigned)o->opencl_device >= ncl)
      return heed_err_set(err, HEED_E_INVALID, "options.opencl_device=%d: this machine has %u OpenCL device(s)%s%s",
                          o->opencl_device, ncl, sum->opencl_note[0] ? ": " : "", sum->opencl_note);
    if (!ncl)
      return heed_err_set(err, HEED_E_NOT_FOUND, "%s=opencl: no OpenCL device found (%s)", s->backend_src,
                          sum->opencl_note[0] ? sum->opencl_note : "none listed");
    int dev = o->opencl_device;
    if (dev < 0)
      for (unsigned i = 0; i < rt->n_cand && dev < 0; i++)
        if (rt->cand[i].kind == HEED_BACKEND_OPENCL) dev = rt->cand[i].cl_device;
    const heed_cl_device_info *d = heed_topology_get_cl_device(rt->topo, (unsigned)dev);
    if (!sum->is_this_system)
      return heed_err_set(err, HEED_E_UNSUPPORTED,
                          "%s=opencl: device %d '%s' is in the replayed recording (%s), not on this machine; a replay "
                          "plans but cannot run it",
                          s->backend_src, dev, d->device_name, sum->source);
    if (!heed_backend_built(HEED_BACKEND_OPENCL))
      return heed_err_set(err, HEED_E_UNSUPPORTED,
                          "%s=opencl: this libheed has no opencl backend yet (built: cpu); device %d would be '%s'",
                          s->backend_src, dev, d->device_name);
    rt->backend = HEED_BACKEND_OPENCL;
    rt->cl_device = dev;
    heed_fmt(rt->reason, sizeof rt->reason, "opencl on device %d '%s': asked for by %s", dev, d->device_name,
             s->backend_src);
    return HEED_OK;
  }
  /* Automatic: the best candidate that scores and is built; skips are written down. */
  rt->reason[0] = '\0';
  for (unsigned i = 0; i < rt->n_cand; i++) {
    const heed_backend_candidate *c = &rt->cand[i];
    if (c->score <= 0) continue;
    if (!c->built) {
      appendf(rt->reason, sizeof rt->reason, "skipped %s (score %d): the %s backend is not in this build; ",
              c->why, c->score, heed_backend_name(c->kind));
      continue;
    }
    if (c->kind == HEED_BACKEND_OPENCL && !sum->is_this_system) {
      appendf(rt->reason, sizeof rt->reason, "skipped %s (score %d): a device of the replayed recording, not of this machine; ",
              c->why, c->score);
      continue;
    }
    rt->backend = c->kind;
    rt->cl_device = c->cl_device;
    appendf(rt->reason, sizeof rt->reason, "chose %s (score %d, highest built)", c->why, c->score);
    return HEED_OK;
  }
  return heed_err_set(err, HEED_E_INTERNAL, "no backend candidate scored above 0");
}

static heed_status choose_isa(heed_runtime *rt, const settings *s, heed_error *err) {
  if (s->isa == HEED_ISA_AUTO) {
    rt->isa = best_isa(rt->features);
    return HEED_OK;
  }
  heed_isa isa = (heed_isa)s->isa;
  if (!heed_kernels_compiled(isa)) {
    char have[64];
    compiled_isas(have, sizeof have);
    return heed_err_set(err, HEED_E_UNSUPPORTED, "%s=%s: not compiled into this libheed; accepted here: %s",
                        s->isa_src, heed_isa_name(isa), have);
  }
  if (!heed_isa_runs_on(isa, rt->features)) {
    char miss[160], has[200];
    heed_cpu_features_str(heed_isa_requires(isa) & ~rt->features, miss, sizeof miss);
    heed_cpu_features_str(rt->features, has, sizeof has);
    return heed_err_set(err, HEED_E_UNSUPPORTED, "%s=%s: this CPU lacks %s (it has: %s)", s->isa_src,
                        heed_isa_name(isa), miss, has[0] ? has : "none of heed's features");
  }
  rt->isa = isa;
  return HEED_OK;
}

heed_status heed_runtime_open(const heed_runtime_options *opt, heed_runtime **out, heed_error *err) {
  if (!out) return heed_err_set(err, HEED_E_INVALID, "heed_runtime_open: out is NULL");
  *out = NULL;
  heed_runtime_options def;
  heed_runtime_options_init(&def);
  const heed_runtime_options *o = opt ? opt : &def;

  heed_runtime *rt = calloc(1, sizeof *rt);
  if (!rt) return heed_err_set(err, HEED_E_NOMEM, "no memory for the runtime");
  pthread_mutex_init(&rt->err_lock, NULL);
  rt->log = o->log;
  rt->log_user = o->log_user;
  settings s;
  heed_status st = read_settings(o, &s, &rt->debug, err);
  if (st != HEED_OK) goto fail;

  heed_topology_options to = {.xml_path = o->topology_xml,
                              .os_mem_bytes = o->os_mem_bytes,
                              .no_opencl = (o->flags & HEED_RUNTIME_NO_OPENCL) != 0};
  if ((st = heed_topology_load(&to, &rt->topo, err)) != HEED_OK) goto fail;
  const heed_topology_summary *sum = heed_topology_get_summary(rt->topo);
  rt->features = o->cpu_features_given ? o->cpu_features : heed_cpu_features_detect();

  rank(rt);
  if ((st = choose_backend(rt, &s, o, err)) != HEED_OK) goto fail;
  if ((st = choose_isa(rt, &s, err)) != HEED_OK) goto fail;
  if (s.n_threads > (int)sum->n_pus) {
    st = heed_err_set(err, HEED_E_INVALID, "%s=%s: more workers than the %u PUs of %s; accepted: 1..%u",
                      s.threads_src, s.threads_text, sum->n_pus, sum->is_this_system ? "this machine" : "the recording",
                      sum->n_pus);
    goto fail;
  }
  rt->n_threads = s.n_threads ? s.n_threads : (int)sum->n_cores;
  if ((st = heed_kernels_build(rt->isa, &rt->kernels, err)) != HEED_OK) goto fail;
  if ((st = heed_pool_create(rt->topo, rt->n_threads, !(o->flags & HEED_RUNTIME_NO_PIN), &rt->pool, err)) != HEED_OK)
    goto fail;
  rt->be = heed_backend_find(rt->backend);
  if (!rt->be) {
    st = heed_err_set(err, HEED_E_INTERNAL, "backend %s was chosen but is not registered", heed_backend_name(rt->backend));
    goto fail;
  }
  heed_backend_open_args args = {.topo = rt->topo, .cpu_kernels = &rt->kernels, .pool = rt->pool,
                                 .features = rt->features, .device = rt->cl_device,
                                 .ignore_env = (o->flags & HEED_RUNTIME_IGNORE_ENV) != 0};
  if ((st = rt->be->open(&args, &rt->be_ctx, err)) != HEED_OK) {
    rt->be = NULL;
    goto fail;
  }
  /* The description is as long as it needs to be: sized by a first call. */
  size_t need = rt->be->describe ? (size_t)rt->be->describe(rt->be_ctx, NULL, 0) + 1 : strlen(rt->be->name) + 1;
  if (!(rt->be_desc = malloc(need))) {
    st = heed_err_set(err, HEED_E_NOMEM, "no memory for the backend's description (%zu bytes)", need);
    goto fail;
  }
  if (rt->be->describe)
    rt->be->describe(rt->be_ctx, rt->be_desc, need);
  else
    memcpy(rt->be_desc, rt->be->name, need);
  heed_fmt(rt->settings, sizeof rt->settings, "backend from %s, isa from %s, threads from %s",
           s.backend == HEED_BACKEND_AUTO ? "ranking" : s.backend_src, s.isa == HEED_ISA_AUTO ? "detection" : s.isa_src,
           s.n_threads ? s.threads_src : "core count");

  if (rt->debug) {
    char f[200];
    heed_cpu_features_str(rt->features, f, sizeof f);
    logf_(rt, "machine: %s; %u packages, %u NUMA, %u cores, %u PUs; features: %s", sum->source, sum->n_packages,
          sum->n_numa, sum->n_cores, sum->n_pus, f[0] ? f : "(none)");
    for (unsigned i = 0; i < heed_topology_n_fixes(rt->topo); i++) {
      const heed_topology_fix *x = heed_topology_get_fix(rt->topo, i);
      logf_(rt, "corrected %s: %s", x->what, x->reason);
    }
    for (unsigned i = 0; i < rt->n_cand; i++)
      logf_(rt, "candidate %u: score %d%s - %s", i, rt->cand[i].score, rt->cand[i].built ? "" : " (not built)",
            rt->cand[i].why);
    logf_(rt, "backend %s: %s; %s", heed_backend_name(rt->backend), rt->be_desc, rt->reason);
    logf_(rt, "isa %s, %d threads (%s); pinned %d of %d pool threads%s%s", heed_isa_name(rt->isa), rt->n_threads,
          rt->settings, heed_pool_n_pinned(rt->pool), rt->n_threads - 1, heed_pool_pin_note(rt->pool)[0] ? ": " : "",
          heed_pool_pin_note(rt->pool));
  }
  *out = rt;
  return HEED_OK;
fail:
  heed_runtime_close(rt);
  return st;
}

void heed_runtime_close(heed_runtime *rt) {
  if (!rt) return;
  if (rt->be) rt->be->close(rt->be_ctx);
  heed_pool_destroy(rt->pool);
  heed_topology_destroy(rt->topo);
  free(rt->be_desc);
  pthread_mutex_destroy(&rt->err_lock);
  free(rt);
}

const heed_topology *heed_runtime_topology(const heed_runtime *rt) { return rt ? rt->topo : NULL; }
const heed_kernel_table *heed_runtime_kernels(const heed_runtime *rt) { return rt ? &rt->kernels : NULL; }
heed_pool *heed_runtime_pool(heed_runtime *rt) { return rt ? rt->pool : NULL; }
heed_backend_kind heed_runtime_backend(const heed_runtime *rt) { return rt ? rt->backend : HEED_BACKEND_AUTO; }
heed_isa heed_runtime_isa(const heed_runtime *rt) { return rt ? rt->isa : HEED_ISA_SCALAR; }
int heed_runtime_n_threads(const heed_runtime *rt) { return rt ? rt->n_threads : 0; }
heed_cpu_features heed_runtime_cpu_features(const heed_runtime *rt) { return rt ? rt->features : 0; }
const char *heed_runtime_choice_reason(const heed_runtime *rt) { return rt ? rt->reason : ""; }
const char *heed_runtime_backend_description(const heed_runtime *rt) { return rt && rt->be_desc ? rt->be_desc : ""; }
const heed_backend_iface *heed_runtime_backend_iface(const heed_runtime *rt, void **ctx) {
  if (ctx) *ctx = rt ? rt->be_ctx : NULL;
  return rt ? rt->be : NULL;
}
void heed_runtime_set_error(heed_runtime *rt, const heed_error *e) {
  if (!rt || !e) return;
  pthread_mutex_lock(&rt->err_lock);
  rt->err = *e;
  pthread_mutex_unlock(&rt->err_lock);
}

const char *heed_runtime_last_error(const heed_runtime *rt) {
  return rt ? heed_err_msg_copy(&rt->err, &((heed_runtime *)rt)->err_lock) : ""; /* the cast: the lock only */
}
unsigned heed_runtime_n_candidates(const heed_runtime *rt) { return rt ? rt->n_cand : 0; }
const heed_backend_candidate *heed_runtime_get_candidate(const heed_runtime *rt, unsigned i) {
  return rt && i < rt->n_cand ? &rt->cand[i] : NULL;
}

heed_status heed_runtime_tile_plan(heed_runtime *rt, unsigned dk, unsigned dv, heed_dtype kv, heed_tile_plan *out) {
  if (!rt) return HEED_E_INVALID;
  const heed_topology_summary *s = heed_topology_get_summary(rt->topo);
  heed_error e = {0};
  heed_status st = heed_tile_plan_make(s->l1d_per_core, s->l2_per_core, dk, dv, kv, out, &e);
  if (st != HEED_OK) heed_runtime_set_error(rt, &e);
  return st;
}

const char *heed_runtime_settings(const heed_runtime *rt) { return rt ? rt->settings : ""; }
