/* heed/runtime.h - the once-opened runtime: machine, backend, ISA, threads.
 *
 * heed_runtime_open reads the machine (hwloc topology, CPU features, OpenCL
 * devices), ranks the backends, applies the caller's and the environment's
 * overrides, builds the kernel table and starts the thread pool. Everything
 * is decided once, here; nothing later re-detects.
 *
 * Overrides. An option left at its "auto" value is filled from the
 * environment (unless HEED_RUNTIME_IGNORE_ENV is set); an option the caller
 * set wins over the environment:
 *   HEED_BACKEND=cpu|opencl   HEED_ISA=scalar|avx2|avx512|neon
 *   HEED_THREADS=N (1..PUs)   HEED_DEBUG=1 (log the choice and why to stderr; 0 or empty: off, other values refused)
 *   HEED_OPENCL_LOCAL_MEM=BYTES (plan OpenCL kernels for at most this much local
 *   memory: tuning, and trying a smaller device's limits)
 * A value that is unknown, or that this machine or build cannot honour, makes
 * open fail with a message naming the value and what is accepted; nothing
 * falls back silently.
 *
 * Ranking. An OpenCL GPU or accelerator outranks the CPU backend; an OpenCL
 * CPU device (PoCL) is never picked automatically but can be asked for. A
 * candidate whose backend is not built into this libheed is skipped, and the
 * skip is written in heed_runtime_choice_reason (and logged under HEED_DEBUG).
 */
#ifndef HEED_RUNTIME_H
#define HEED_RUNTIME_H

#include <stdint.h>
#include <stdio.h>

#include "heed/cpu.h"
#include "heed/kernels.h"
#include "heed/plan.h"
#include "heed/pool.h"
#include "heed/status.h"
#include "heed/topology.h"

#ifdef __cplusplus
extern "C" {
#endif

#define HEED_BACKEND_LIST(X) \
  X(AUTO, "auto")            \
  X(CPU, "cpu")              \
  X(OPENCL, "opencl")

typedef enum heed_backend_kind {
#define HEED_X_(N, s) HEED_BACKEND_##N,
  HEED_BACKEND_LIST(HEED_X_)
#undef HEED_X_
  HEED_BACKEND_COUNT
} heed_backend_kind;

#define HEED_ISA_AUTO (-1)

enum {
  HEED_RUNTIME_IGNORE_ENV = 1u << 0, /* do not read HEED_* variables */
  HEED_RUNTIME_NO_PIN = 1u << 1,     /* do not pin the pool's workers */
  HEED_RUNTIME_DEBUG = 1u << 2,      /* log as HEED_DEBUG=1 would */
  HEED_RUNTIME_NO_OPENCL = 1u << 3   /* do not enumerate OpenCL devices */
};

typedef void (*heed_log_fn)(void *user, const char *line);

typedef struct heed_runtime_options {
  heed_backend_kind backend; /* HEED_BACKEND_AUTO: rank, or HEED_BACKEND */
  int isa;                   /* a heed_isa, or HEED_ISA_AUTO: best this CPU runs, or HEED_ISA */
  int n_threads;             /* 0: one per physical core, or HEED_THREADS */
  int opencl_device;         /* -1: best ranked; else an index into the topology's devices */
  unsigned flags;            /* HEED_RUNTIME_* */
  heed_log_fn log;           /* where debug lines go; NULL: stderr */
  void *log_user;
  /* Replaying a recorded machine (tests, what-if planning): */
  const char *topology_xml;  /* hwloc XML to load instead of this machine: trusted input (topology.h) */
  uint64_t os_mem_bytes;     /* see heed_topology_options */
  int cpu_features_given;    /* nonzero: use cpu_features instead of detecting */
  heed_cpu_features cpu_features;
} heed_runtime_options;

/* Every field at its "auto" value. */
void heed_runtime_options_init(heed_runtime_options *opt);

typedef struct heed_runtime heed_runtime;

/* opt may be NULL (all auto). On failure *out is NULL and err (if given)
 * names the bad value. */
heed_status heed_runtime_open(const heed_runtime_options *opt, heed_runtime **out,
                              heed_error *err);
void heed_runtime_close(heed_runtime *rt); /* NULL is fine */

/* Borrowed from the runtime; valid until heed_runtime_close. */
const heed_topology *heed_runtime_topology(const heed_runtime *rt);
const heed_kernel_table *heed_runtime_kernels(const heed_runtime *rt);
heed_pool *heed_runtime_pool(heed_runtime *rt);
heed_backend_kind heed_runtime_backend(const heed_runtime *rt);
heed_isa heed_runtime_isa(const heed_runtime *rt);
int heed_runtime_n_threads(const heed_runtime *rt);
heed_cpu_features heed_runtime_cpu_features(const heed_runtime *rt);
const char *heed_runtime_choice_reason(const heed_runtime *rt);
/* The message of the last failed call on this runtime, "" if none: the
 * refusals of calls that take the runtime (attention and its workspace
 * sizes, heed_kv_cache_bytes, heed_runtime_tile_plan) are kept here. The
 * text is this thread's copy, valid until its next call of a *_last_error function;
 * when calls on several threads fail at once, it is one of their messages. */
const char *heed_runtime_last_error(const heed_runtime *rt);

/* One ranked way to run: the CPU backend, or an OpenCL device. */
typedef struct heed_backend_candidate {
  heed_backend_kind kind;
  int cl_device;        /* index into the topology's OpenCL devices; -1 for cpu */
  int score;            /* higher wins; 0: never picked automatically */
  int built;            /* the backend is in this build of libheed */
  char why[512];        /* how the score came about */
} heed_backend_candidate;

unsigned heed_runtime_n_candidates(const heed_runtime *rt);
/* Candidates in rank order (best first). Borrowed. */
const heed_backend_candidate *heed_runtime_get_candidate(const heed_runtime *rt, unsigned i);

/* The attention tile plan for a head shape on this machine's caches. */
heed_status heed_runtime_tile_plan(heed_runtime *rt, unsigned dk, unsigned dv, heed_dtype kv,
                                   heed_tile_plan *out);

/* Writes what `heed info --json` prints: machine, caches, NUMA, OpenCL
 * devices, features, candidates, choice, plan and the hwloc corrections. */
heed_status heed_runtime_write_json(heed_runtime *rt, FILE *f);
/* The same for people. */
heed_status heed_runtime_write_text(heed_runtime *rt, FILE *f);

const char *heed_backend_name(heed_backend_kind k); /* "opencl"; NULL if unknown */
int heed_backend_built(heed_backend_kind k);        /* 1 when this libheed has that backend */
/* One line on the open backend ("avx2 kernels on 2 workers (...)"). Borrowed. */
const char *heed_runtime_backend_description(const heed_runtime *rt);
int heed_backend_parse(const char *name, heed_backend_kind *out); /* 0 or HEED_E_INVALID */

#ifdef __cplusplus
}
#endif
#endif
