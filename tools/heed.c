/* tools/heed.c - the `heed` command line: info, bench, model, tokenize, run, perplexity. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bench/bench_attention.h"
#include "bench/bench_report.h"
#include "bench/bench_shapes.h"
#include "bench/bench_kvquant.h"
#include "bench/bench_model.h"
#include "bench/bench_serve.h"
#include "bench/bench_agent.h"
#include "bench/bench_reuse.h"
#include "bench/bench_weights.h"
#include "bench/bench_spec.h"
#include "heed/heed.h"
#include "tools/cli_parse.h"
#include "tools/commands.h"

static void usage(FILE *f) {
  fprintf(f,
          "usage: heed info [--json]\n"
          "       heed bench probes|attention|spec|all [--repeats N] [--ctx N,N,...] [--kv q8,q4,e4m3,e5m2|none]\n"
          "                  [--shape NAME|q=32,kv=8,d=128[,window=N][,softcap=X]] [--batch N] [--no-baseline]\n"
          "                  [--backend auto|cpu|opencl] [--isa scalar|avx2|avx512|neon] [--json FILE] [--plot FILE.png]\n"
          "                  [--compare OLD.json [--threshold 0.10]] [--file SOURCE (spec: the text to edit)]\n"
          "       heed bench compare OLD.json NEW.json [--threshold 0.10]   (exit 1 on a regression)\n"
          "       heed bench shapes   (the named shapes)\n"
          "       heed bench kvquant [--json FILE]   (attention error of each KV format)\n"
          "       heed bench weights [--quick] [--repeats N] [--json FILE]   (weight products beside the probed limits)\n"
          "       heed bench model FILE.gguf [--depth 0,4096,16384,32768] [--kv f16,q8] [--json FILE]   (prefill, decode)\n"
          "       heed bench serve FILE.gguf | --url URL [--clients 1,4,16] [--prompt N] [--gen N] [--shared-prefix N]\n"
          "                  (concurrent streaming clients: tok/s, TTFT, TPOT)\n"
          "       heed bench reuse FILE.gguf [--tokens 2000] [--gen 32] [--boundary 8] [--json FILE]\n"
          "                  (chunk reuse against a full recompute: KL divergence, top-1 agreement)\n"
          "       heed bench agent FILE.gguf [--url URL] [--sessions 2] [--turns 5] [--system-tokens 3000] [--json FILE]\n"
          "                  (agent-like sessions: tokens reused against the ideal, TTFT against cold, per turn kind)\n"
          "       heed model info FILE.gguf [--json]   (architecture, tensors, tokenizer, KV-cache bytes per token)\n"
          "       heed model dump FILE.gguf            (every key and tensor of a GGUF file, as JSON)\n"
          "       heed tokenize FILE.gguf (-p TEXT | -f FILE | --chat REQUEST.json) [--json | --ids]\n"
          "                     [--parse-special] [--no-add-special] [--chat-template gguf|chatml|gemma|llama3] [--bench [N]]\n"
          "       heed run FILE.gguf (-p TEXT | -f FILE) [--chat] [-n N] [--temp T] [--draft ngram] ...   (generate; heed run -h)\n"
          "       heed perplexity FILE.gguf -f TEXT [--ctx N] [--kv DTYPE] [--json]\n"
          "       heed serve FILE.gguf [--port 8080] [--slots N] [--api-key KEY] ...   (OpenAI/Anthropic API; heed serve -h)\n"
          "       heed version\n"
          "environment: HEED_BACKEND=cpu|opencl HEED_ISA=scalar|avx2|avx512|neon HEED_THREADS=N HEED_DEBUG=1\n");
}

static int fail(const char *what, const heed_error *e) {
  fprintf(stderr, "heed: %s: %s (%s)\n", what, e->msg[0] ? e->msg : heed_status_str(e->status),
          heed_status_name(e->status));
  return 1;
}

static int cmd_info(int argc, char **argv) {
  int json = 0;
  for (int i = 0; i < argc; i++) {
    if (strcmp(argv[i], "--json") == 0)
      json = 1;
    else {
      fprintf(stderr, "heed info: unknown argument '%s'\n", argv[i]);
      usage(stderr);
      return 2;
    }
  }
  heed_runtime *rt;
  heed_error e = {0};
  if (heed_runtime_open(NULL, &rt, &e) != HEED_OK) return fail("cannot open the runtime", &e);
  if (json) {
    heed_runtime_write_json(rt, stdout);
    fputc('\n', stdout);
  } else {
    heed_runtime_write_text(rt, stdout);
  }
  heed_runtime_close(rt);
  return 0;
}

/* A line per case; on a terminal the same line is rewritten, then cleared. */
static void progress(void *user, const char *name, int i, int n) {
  (void)user;
  if (isatty(2))
    fprintf(stderr, "\r\033[K[%d/%d] %s", i + 1, n, name);
  else
    fprintf(stderr, "[%d/%d] %s\n", i + 1, n, name);
  fflush(stderr);
}

static int parse_threshold(const char *a, double *t) {
  char *end;
  double v = strtod(a, &end);
  if (*end || !(v > 0 && v <= 10)) {
    fprintf(stderr, "heed bench: --threshold %s: accepted: a fraction above 0 and at most 10 (0.10: flag 10%% slower)\n", a);
    return -1;
  }
  *t = v;
  return 0;
}

/* heed bench compare OLD NEW: no timing, two files. */
static int cmd_compare(int argc, char **argv) {
  double threshold = 0.10;
  const char *paths[2] = {NULL, NULL};
  int np = 0;
  for (int i = 0; i < argc; i++) {
    if (strcmp(argv[i], "--threshold") == 0 && i + 1 < argc) {
      if (parse_threshold(argv[++i], &threshold)) return 2;
    } else if (argv[i][0] != '-' && np < 2) {
      paths[np++] = argv[i];
    } else {
      fprintf(stderr, "heed bench compare: unexpected argument '%s'\n", argv[i]);
      return 2;
    }
  }
  if (np != 2) {
    fprintf(stderr, "usage: heed bench compare OLD.json NEW.json [--threshold 0.10]\n");
    return 2;
  }
  heed_bench_result *r[2] = {NULL, NULL};
  int n[2];
  char msg[512];
  for (int k = 0; k < 2; k++)
    if (heed_bench_load_json(paths[k], &r[k], &n[k], msg, sizeof msg)) {
      fprintf(stderr, "heed bench compare: %s\n", msg);
      free(r[0]);
      return 1;
    }
  int reg = heed_bench_compare(r[0], n[0], r[1], n[1], threshold, stdout, msg, sizeof msg);
  if (reg < 0) fprintf(stderr, "heed bench compare: %s and %s: %s\n", paths[0], paths[1], msg);
  free(r[0]), free(r[1]);
  return reg != 0;
}

/* Opens an output file for writing; NULL (with the path and the reason on stderr) when it cannot. */
static FILE *open_output(const char *opt, const char *path) {
  FILE *f = fopen(path, "w");
  if (!f) fprintf(stderr, "heed bench: %s %s: cannot write: %s\n", opt, path, strerror(errno));
  return f;
}

static int cmd_bench(int argc, char **argv) {
  if (argc < 1) {
    usage(stderr);
    return 2;
  }
  if (strcmp(argv[0], "weights") == 0) return heed_bench_weights_main(argc, argv);
  if (strcmp(argv[0], "model") == 0) return heed_bench_model_main(argc, argv);
  if (strcmp(argv[0], "serve") == 0) return heed_bench_serve_main(argc, argv);
  if (strcmp(argv[0], "reuse") == 0) return heed_bench_reuse_main(argc, argv);
  if (strcmp(argv[0], "agent") == 0) return heed_bench_agent_main(argc, argv);
  if (strcmp(argv[0], "shapes") == 0) {
    int ns;
    const heed_bench_shape *sh = heed_bench_shapes(&ns);
    printf("%-14s %7s %8s %8s %7s %8s\n", "shape", "q heads", "kv heads", "head dim", "window", "softcap");
    for (int i = 0; i < ns; i++)
      printf("%-14s %7u %8u %8u %7u %8g\n", sh[i].name, sh[i].q_heads, sh[i].kv_heads, sh[i].head_dim, sh[i].window,
             (double)sh[i].softcap);
    return 0;
  }
  if (strcmp(argv[0], "compare") == 0) return cmd_compare(argc - 1, argv + 1);
  const char *suite = argv[0], *json_path = NULL, *spec_file = HEED_SOURCE_DIR "/spec/spec.c";
  const char *plot_path = NULL, *compare_path = NULL;
  double threshold = 0.10;
  heed_bench_shape shape;
  char msg[512];
  heed_bench_shape_parse("Llama-3.1-8B", &shape, msg, sizeof msg);
  unsigned batch = 1;
  heed_bench_options bo = {0};
  bo.progress = progress;
  unsigned ctx[HEED_CLI_MAX_CTX] = {4096, 16384, 65536, 98304, 131072};
  int n_ctx = 5, baseline = 1;
  heed_dtype kv[HEED_CLI_MAX_KV] = {HEED_DTYPE_Q8, HEED_DTYPE_Q4};
  int n_kv = 2;
  heed_runtime_options ro;
  heed_runtime_options_init(&ro);
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--json") == 0 && i + 1 < argc)
      json_path = argv[++i];
    else if (strcmp(argv[i], "--repeats") == 0 && i + 1 < argc) {
      char *end;
      long v = strtol(argv[++i], &end, 10);
      if (*end || v < 1 || v > 101) {
        fprintf(stderr, "heed bench: --repeats %s: accepted: 1..101\n", argv[i]);
        return 2;
      }
      bo.repeats = (int)v;
    } else if (strcmp(argv[i], "--ctx") == 0 && i + 1 < argc) {
      if ((n_ctx = heed_cli_parse_ctx(argv[++i], ctx, HEED_CLI_MAX_CTX, msg, sizeof msg)) < 1) {
        fprintf(stderr, "heed bench: %s\n", msg);
        return 2;
      }
    } else if (strcmp(argv[i], "--kv") == 0 && i + 1 < argc) {
      if ((n_kv = heed_cli_parse_kv(argv[++i], kv, HEED_CLI_MAX_KV, msg, sizeof msg)) < 0) {
        fprintf(stderr, "heed bench: %s\n", msg);
        return 2;
      }
    } else if (strcmp(argv[i], "--file") == 0 && i + 1 < argc) {
      spec_file = argv[++i];
    } else if (strcmp(argv[i], "--shape") == 0 && i + 1 < argc) {
      if (heed_bench_shape_parse(argv[++i], &shape, msg, sizeof msg)) {
        fprintf(stderr, "heed bench: %s\n", msg);
        return 2;
      }
    } else if (strcmp(argv[i], "--batch") == 0 && i + 1 < argc) {
      char *end;
      long v = strtol(argv[++i], &end, 10);
      if (*end || v < 1 || v > HEED_BENCH_MAX_BATCH) {
        fprintf(stderr, "heed bench: --batch %s: accepted: 1..%d sequences\n", argv[i], HEED_BENCH_MAX_BATCH);
        return 2;
      }
      batch = (unsigned)v;
    } else if (strcmp(argv[i], "--isa") == 0 && i + 1 < argc) {
      heed_isa isa;
      if (heed_isa_parse(argv[++i], &isa) != 0) {
        fprintf(stderr, "heed bench: --isa %s: accepted: scalar, avx2, avx512, neon\n", argv[i]);
        return 2;
      }
      ro.isa = isa;
    } else if (strcmp(argv[i], "--plot") == 0 && i + 1 < argc) {
      plot_path = argv[++i];
    } else if (strcmp(argv[i], "--compare") == 0 && i + 1 < argc) {
      compare_path = argv[++i];
    } else if (strcmp(argv[i], "--threshold") == 0 && i + 1 < argc) {
      if (parse_threshold(argv[++i], &threshold)) return 2;
    } else if (strcmp(argv[i], "--no-baseline") == 0) {
      baseline = 0;
    } else if (strcmp(argv[i], "--backend") == 0 && i + 1 < argc) {
      if (heed_backend_parse(argv[++i], &ro.backend) != HEED_OK) {
        fprintf(stderr, "heed bench: --backend %s: accepted: auto, cpu, opencl\n", argv[i]);
        return 2;
      }
    } else {
      fprintf(stderr, "heed bench: unknown argument '%s'\n", argv[i]);
      usage(stderr);
      return 2;
    }
  }
  if (strcmp(suite, "kvquant") == 0) { /* an accuracy report: no timing, no limits */
    FILE *f = NULL;
    if (json_path && !(f = open_output("--json", json_path))) return 1;
    int rc = heed_bench_kvquant(f) ? 1 : 0;
    if (f) fclose(f), printf("wrote %s\n", json_path);
    return rc;
  }
  int probes = strcmp(suite, "probes") == 0 || strcmp(suite, "all") == 0;
  int attention = strcmp(suite, "attention") == 0 || strcmp(suite, "all") == 0;
  int spec = strcmp(suite, "spec") == 0 || strcmp(suite, "all") == 0;
  if (!probes && !attention && !spec) {
    fprintf(stderr, "heed bench: unknown suite '%s'; accepted: probes, attention, kvquant, spec, weights, model, all\n", suite);
    return 2;
  }
  if (plot_path && !attention) {
    fprintf(stderr, "heed bench --plot: the plots are of the attention suite's decode cases; run attention or all\n");
    return 2;
  }
  if (spec) { /* before any timing: the code-editing text must be there */
    FILE *sf = fopen(spec_file, "rb");
    if (!sf) {
      fprintf(stderr, "heed bench spec: cannot read %s (give a source file with --file)\n", spec_file);
      return 1;
    }
    fclose(sf);
  }
  heed_bench_result *old = NULL;
  int n_old = 0;
  if (compare_path && heed_bench_load_json(compare_path, &old, &n_old, msg, sizeof msg)) { /* before any timing */
    fprintf(stderr, "heed bench --compare: %s\n", msg);
    return 1;
  }
  /* Output files are opened before anything is measured: a path that cannot
   * be written fails now, not after the run with its results lost. Files of a
   * run that fails are removed. */
  FILE *json = NULL, *plot = NULL;
  int plot_pending = 0; /* the --plot file is created and not written yet: removed if the run fails */
  heed_runtime *rt = NULL;
  heed_bench *b = NULL;
  int n = 0, rc = 1;
  if ((json_path && !(json = open_output("--json", json_path))) || (plot_path && !(plot = open_output("--plot", plot_path))))
    goto done;
  if (plot) fclose(plot), plot_pending = 1; /* gnuplot writes it */
  heed_error e = {0};
  if (heed_runtime_open(&ro, &rt, &e) != HEED_OK) {
    fail("cannot open the runtime", &e);
    goto done;
  }
  if (attention) { /* the caches must fit: say how much they need before filling them */
    size_t need = heed_bench_attention_bytes(rt, &shape, ctx, n_ctx, batch, baseline, kv, n_kv);
    const heed_topology_summary *ts = heed_topology_get_summary(heed_runtime_topology(rt));
    unsigned max_ctx = 0;
    for (int i = 0; i < n_ctx; i++) max_ctx = ctx[i] > max_ctx ? ctx[i] : max_ctx;
    if ((double)need > 0.8 * (double)ts->mem_bytes) {
      fprintf(stderr,
              "heed bench attention: a context of %u tokens x batch %u of %s needs %.1f GiB (KV caches%s); this machine has "
              "%.1f GiB, of which heed bench uses at most 80%%. Use a smaller --ctx or --batch%s.\n",
              max_ctx, batch, shape.name, need / 1073741824.0, baseline ? " and the baseline's f32 copy" : "",
              ts->mem_bytes / 1073741824.0, baseline ? ", or --no-baseline" : "");
      goto done;
    }
  }
  if (heed_bench_create(rt, &bo, &b, &e) != HEED_OK) {
    fail("cannot set up the bench", &e);
    goto done;
  }
  heed_bench_result res[160];
  rc = 0;
  if (probes) {
    heed_status st = heed_bench_suite_probes(b, res, 160, &n);
    if (st != HEED_OK) {
      fprintf(stderr, "heed bench: %s (%s)\n", heed_bench_last_error(b), heed_status_name(st));
      rc = 1;
    }
  }
  if (attention && !rc) {
    int m = 0;
    if (heed_bench_attention(rt, b, &shape, ctx, n_ctx, batch, baseline, kv, n_kv, res + n, 160 - n, &m)) rc = 1;
    n += m;
  }
  if (spec && !rc) {
    int m = 0;
    if (heed_bench_spec(rt, b, res + n, 160 - n, &m)) rc = 1;
    n += m;
  }
  if (isatty(2)) fprintf(stderr, "\r\033[K");
  printf("backend %s, isa %s, %d threads; each figure beside its limit probed in the same run\n",
         heed_backend_name(heed_runtime_backend(rt)), heed_isa_name(heed_runtime_isa(rt)), heed_runtime_n_threads(rt));
  if (heed_runtime_backend(rt) != HEED_BACKEND_CPU) printf("device: %s\n", heed_runtime_backend_description(rt));
  heed_bench_write_table(res, n, stdout);
  heed_bench_attention_speedups(res, n, stdout);
  heed_bench_spec_summary(res, n, stdout);
  if (spec && !rc && heed_bench_spec_ngram(spec_file, stdout)) rc = 1;
  if (json) { /* what was measured is kept, even when a later case failed */
    heed_bench_write_json(rt, res, n, json);
    if (fclose(json) != 0) {
      fprintf(stderr, "heed bench: --json %s: cannot write: %s\n", json_path, strerror(errno));
      rc = 1;
    } else {
      printf("wrote %s\n", json_path);
    }
    json = NULL;
    json_path = NULL; /* kept */
  }
  if (plot_pending && !rc) {
    char title[160];
    snprintf(title, sizeof title, "heed bench, %s on %s, batch %u", shape.name, heed_runtime_backend(rt) == HEED_BACKEND_CPU ?
             heed_isa_name(heed_runtime_isa(rt)) : heed_backend_name(heed_runtime_backend(rt)), batch);
    for (char *c = title; *c; c++)
      if (*c == '\'' || *c == '\\') *c = ' ';
    if (heed_bench_plot(res, n, title, plot_path, msg, sizeof msg)) {
      fprintf(stderr, "heed bench --plot: %s\n", msg);
      rc = 1;
    } else {
      printf("wrote %s\n", plot_path);
      plot_pending = 0; /* kept */
    }
  }
  if (old && !rc) {
    int reg = heed_bench_compare(old, n_old, res, n, threshold, stdout, msg, sizeof msg);
    if (reg < 0) fprintf(stderr, "heed bench --compare %s: %s\n", compare_path, msg);
    if (reg != 0) rc = 1;
  }
done:
  if (json) fclose(json), remove(json_path);
  if (plot_pending) remove(plot_path);
  free(old);
  heed_bench_destroy(b);
  heed_runtime_close(rt);
  return rc;
}

int main(int argc, char **argv) {
  if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
    usage(argc < 2 ? stderr : stdout);
    return argc < 2 ? 2 : 0;
  }
  if (strcmp(argv[1], "info") == 0) return cmd_info(argc - 2, argv + 2);
  if (strcmp(argv[1], "bench") == 0) {
    /* oneDNN's OpenMP workers spin for a while after each sgemm (the default
     * wait policy), taking the cores from the probe or case that follows: the
     * probes after the baseline read ~40% slower. libgomp reads the policy
     * when it loads, before main, so the tool starts itself again with it
     * set, unless the caller chose one. */
    if (!getenv("OMP_WAIT_POLICY")) {
      setenv("OMP_WAIT_POLICY", "PASSIVE", 1);
      execv("/proc/self/exe", argv);
      fprintf(stderr, "heed bench: note: could not restart with OMP_WAIT_POLICY=PASSIVE; the oneDNN baseline's idle "
                      "threads may slow the probes after it\n");
    }
    return cmd_bench(argc - 2, argv + 2);
  }
  if (strcmp(argv[1], "model") == 0) return heed_cmd_model(argc - 2, argv + 2);
  if (strcmp(argv[1], "tokenize") == 0) return heed_cmd_tokenize(argc - 2, argv + 2);
  if (strcmp(argv[1], "run") == 0) return heed_cmd_run(argc - 2, argv + 2);
  if (strcmp(argv[1], "perplexity") == 0) return heed_cmd_perplexity(argc - 2, argv + 2);
  if (strcmp(argv[1], "serve") == 0) return heed_cmd_serve(argc - 2, argv + 2);
  if (strcmp(argv[1], "version") == 0) {
    printf("heed %s\n", HEED_VERSION_STRING);
    return 0;
  }
  fprintf(stderr, "heed: unknown command '%s'\n", argv[1]);
  usage(stderr);
  return 2;
}
