/* tools/serve_cmd.c - heed serve MODEL: the OpenAI- and Anthropic-compatible server. */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "heed/heed.h"
#include "heed/serve.h"
#include "tools/commands.h"

static const char serve_use[] =
    "usage: heed serve MODEL.gguf [--host 127.0.0.1] [--port 8080] [--ctx N] [--slots N] [--queue N]\n"
    "                  [--kv f16|bf16|q8|q4|e4m3|e5m2] [--cache-mem SIZE] [--api-key KEY | --api-key-file F]\n"
    "                  [--cache-share] [--draft ngram|none] [--draft-k K] [--threads N] [--batch N]\n"
    "                  [--timeout S] [--cache-entries N] [--session-keep S] [--max-body SIZE] [--strict-model] [--model-name NAME]\n"
    "                  [--chat-template NAME] [--cache-dir DIR [--cache-disk SIZE]] [--cache-reuse off|chunks]\n"
    "                  [--cache-reuse-boundary N]\n"
    "  --ctx N          tokens one request may hold, prompt and output (default min(trained, 4096))\n"
    "  --slots N        requests generating at once (default 4); more wait in a queue of --queue (default 64),\n"
    "                   beyond it a 429 with Retry-After\n"
    "  --cache-mem SIZE KV memory the prefix cache keeps beyond the slots' own (default 1G; 0 turns it off)\n"
    "  --api-key KEY    required as 'Authorization: Bearer KEY' or 'x-api-key: KEY' (repeatable; --api-key-file:\n"
    "                   one key a line); with several keys each has its own prefix cache unless --cache-share\n"
    "  --draft ngram    n-gram speculative decoding (default; --draft none turns it off), --draft-k tokens a step (4)\n"
    "  --batch N        tokens one step runs, all requests together: the chunked-prefill budget (default 512)\n"
    "  --timeout S      an idle connection is closed after S seconds, a body still arriving too (default 60)\n"
    "  --cache-entries N sequences the prefix cache keeps at most (default 64)\n"
    "  --session-keep S a named session's cached sequences (X-Session-Id, or the body's user / metadata.user_id)\n"
    "                   are evicted last for S seconds after its last request (default 600; 0: not retained)\n"
    "  --cache-dir DIR  KV blocks evicted from memory (and all cached ones at shutdown) go to files in DIR and\n"
    "                   are read back instead of recomputed, also after a restart; --cache-disk: at most SIZE of\n"
    "                   them (default 16G), the least recently used deleted first\n"
    "  --cache-reuse chunks  after a prompt parts from every cached one, runs of it found in cached sequences (at\n"
    "                   any position) are copied, K moved by RoPE, instead of recomputed; the first\n"
    "                   --cache-reuse-boundary tokens of each run (8) are recomputed. Outputs may then differ from a\n"
    "                   full recompute (default off; a request's header x-heed-cache-reuse: off|chunks overrides)\n"
    "  --max-body SIZE  request bodies over SIZE get a 413 (default 64M)\n"
    "  --strict-model   a request naming another model gets a 404 (default: any name is served by this model)\n"
    "SIZE: bytes, or with K, M or G (binary).\n";

static int parse_size(const char *v, uint64_t *out) {
  char *end;
  errno = 0;
  if (!*v || *v == '-') return -1;
  double d = strtod(v, &end);
  if (errno || end == v || d < 0) return -1;
  uint64_t mul = 1;
  if (*end == 'K' || *end == 'k') mul = 1ull << 10, end++;
  else if (*end == 'M' || *end == 'm') mul = 1ull << 20, end++;
  else if (*end == 'G' || *end == 'g') mul = 1ull << 30, end++;
  else if (*end == 'T' || *end == 't') mul = 1ull << 40, end++;
  if (*end == 'i' && mul > 1) end++;
  if (*end == 'B' || *end == 'b') end++;
  if (*end || d * (double)mul > 1e15) return -1;
  *out = (uint64_t)(d * (double)mul);
  return 0;
}

static int parse_uint(const char *v, unsigned long lo, unsigned long hi, unsigned *out) {
  char *end;
  errno = 0;
  if (!*v || *v == '-') return -1;
  unsigned long x = strtoul(v, &end, 10);
  if (errno || *end || x < lo || x > hi) return -1;
  *out = (unsigned)x;
  return 0;
}

/* The model's name as responses give it: the file's name without .gguf. */
static char *model_name_of(const char *path) {
  const char *b = strrchr(path, '/');
  b = b ? b + 1 : path;
  char *n = strdup(b);
  size_t l = strlen(n);
  if (l > 5 && strcmp(n + l - 5, ".gguf") == 0) n[l - 5] = 0;
  return n;
}

int heed_cmd_serve(int argc, char **argv) {
  heed_serve_options so;
  heed_serve_options_init(&so);
  so.port = 8080;
  so.cache_bytes = 1ull << 30;
  so.draft_k = 4;
  const char *model = NULL, *key_file = NULL, *name = NULL;
  unsigned ctx = 0, threads = 0, batch = 0;
  heed_dtype kv = HEED_DTYPE_F16;
  int draft = 1;
  for (int i = 0; i < argc; i++) {
    const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
    int bad = 0;
    if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
      fputs(serve_use, stdout);
      return 0;
    } else if (strcmp(a, "--strict-model") == 0) {
      so.strict_model = 1;
    } else if (strcmp(a, "--cache-share") == 0) {
      so.cache_share = 1;
    } else if (a[0] == '-' && a[1] == '-' && !v) {
      fprintf(stderr, "heed serve: %s needs a value\n%s", a, serve_use);
      return 2;
    } else if (strcmp(a, "--host") == 0) {
      so.host = v, i++;
    } else if (strcmp(a, "--port") == 0) {
      bad = parse_uint(v, 0, 65535, &so.port), i++;
    } else if (strcmp(a, "--ctx") == 0 || strcmp(a, "-c") == 0) {
      bad = parse_uint(v, 16, 1u << 24, &ctx), i++;
    } else if (strcmp(a, "--slots") == 0) {
      bad = parse_uint(v, 1, 256, &so.slots), i++;
    } else if (strcmp(a, "--queue") == 0) {
      bad = parse_uint(v, 1, 1u << 20, &so.max_queue), i++;
    } else if (strcmp(a, "--threads") == 0 || strcmp(a, "-t") == 0) {
      bad = parse_uint(v, 1, 1024, &threads), i++;
    } else if (strcmp(a, "--batch") == 0) {
      bad = parse_uint(v, 16, 65536, &batch), i++;
    } else if (strcmp(a, "--timeout") == 0) {
      bad = parse_uint(v, 1, 86400, &so.timeout_s), i++;
    } else if (strcmp(a, "--cache-entries") == 0) {
      bad = parse_uint(v, 1, 4096, &so.cache_entries), i++;
    } else if (strcmp(a, "--session-keep") == 0) {
      unsigned keep = 0;
      bad = parse_uint(v, 0, 7 * 86400, &keep), i++;
      so.session_keep_s = keep ? (int)keep : -1;
    } else if (strcmp(a, "--draft-k") == 0) {
      bad = parse_uint(v, 1, 15, &so.draft_k), i++;
    } else if (strcmp(a, "--draft") == 0) {
      if (strcmp(v, "ngram") == 0) draft = 1;
      else if (strcmp(v, "none") == 0) draft = 0;
      else bad = 1;
      i++;
    } else if (strcmp(a, "--kv") == 0) {
      bad = heed_dtype_parse(v, &kv) != HEED_OK, i++;
    } else if (strcmp(a, "--cache-mem") == 0) {
      bad = parse_size(v, &so.cache_bytes), i++;
    } else if (strcmp(a, "--cache-reuse") == 0) {
      so.cache_reuse = !strcmp(v, "chunks") ? 1 : !strcmp(v, "off") ? 0 : -1;
      bad = so.cache_reuse < 0, i++;
    } else if (strcmp(a, "--cache-reuse-boundary") == 0) {
      bad = parse_uint(v, 1, 4096, &so.reuse_boundary), i++;
    } else if (strcmp(a, "--cache-dir") == 0) {
      bad = !*v, so.cache_dir = v, i++;
    } else if (strcmp(a, "--cache-disk") == 0) {
      bad = parse_size(v, &so.cache_disk) || so.cache_disk == 0, i++;
    } else if (strcmp(a, "--max-body") == 0) {
      uint64_t b;
      bad = parse_size(v, &b) || b < 1024;
      so.max_body = (size_t)b, i++;
    } else if (strcmp(a, "--api-key") == 0) {
      if (so.n_keys == HEED_SERVE_MAX_KEYS || !*v) bad = 1;
      else so.keys[so.n_keys++] = v;
      i++;
    } else if (strcmp(a, "--api-key-file") == 0) {
      key_file = v, i++;
    } else if (strcmp(a, "--model-name") == 0) {
      name = v, i++;
    } else if (strcmp(a, "--chat-template") == 0) {
      so.chat_template = v, i++;
    } else if (a[0] == '-') {
      fprintf(stderr, "heed serve: unknown option %s\n%s", a, serve_use);
      return 2;
    } else if (!model) {
      model = a;
    } else {
      fprintf(stderr, "heed serve: one model only (%s, then %s)\n", model, a);
      return 2;
    }
    if (bad) {
      fprintf(stderr, "heed serve: %s %s: not an accepted value\n%s", a, v, serve_use);
      return 2;
    }
  }
  if (!model) {
    fputs(serve_use, stderr);
    return 2;
  }
  if (!draft) so.draft_k = 0;
  if (so.cache_disk && !so.cache_dir) {
    fprintf(stderr, "heed serve: --cache-disk needs --cache-dir (the folder the disk tier writes to)\n");
    return 2;
  }
  /* keys from a file: one a line, blank lines and # comments skipped */
  char *key_lines[HEED_SERVE_MAX_KEYS];
  unsigned n_key_lines = 0;
  if (key_file) {
    FILE *f = fopen(key_file, "r");
    if (!f) {
      fprintf(stderr, "heed serve: --api-key-file %s: %s\n", key_file, strerror(errno));
      return 1;
    }
    char line[4096];
    while (fgets(line, sizeof line, f)) {
      size_t l = strcspn(line, "\r\n");
      line[l] = 0;
      char *k = line;
      while (*k == ' ' || *k == '\t') k++;
      if (!*k || *k == '#') continue;
      if (so.n_keys == HEED_SERVE_MAX_KEYS) {
        fprintf(stderr, "heed serve: --api-key-file %s: more than %d keys\n", key_file, HEED_SERVE_MAX_KEYS);
        fclose(f);
        return 1;
      }
      key_lines[n_key_lines] = strdup(k);
      so.keys[so.n_keys++] = key_lines[n_key_lines++];
    }
    fclose(f);
    if (!so.n_keys) {
      fprintf(stderr, "heed serve: --api-key-file %s holds no key\n", key_file);
      return 1;
    }
  }
  /* SIGINT and SIGTERM are blocked in every thread (they inherit the mask)
   * and taken by sigwait below, once the server runs */
  sigset_t stop_set;
  sigemptyset(&stop_set);
  sigaddset(&stop_set, SIGINT);
  sigaddset(&stop_set, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop_set, NULL);
  signal(SIGPIPE, SIG_IGN);
  int rc = 1;
  heed_runtime *rt = NULL;
  heed_model *m = NULL;
  heed_server *srv = NULL;
  heed_gguf *g = NULL;
  char *mname = name ? strdup(name) : model_name_of(model);
  heed_error e = {0};
  heed_runtime_options ro;
  heed_runtime_options_init(&ro);
  ro.backend = HEED_BACKEND_CPU;
  ro.n_threads = (int)threads;
  if (heed_runtime_open(&ro, &rt, &e)) goto fail;
  /* the KV pool: every slot full, plus --cache-mem for finished sequences */
  heed_model_config cfg;
  double bpt = 0;
  if (heed_gguf_open(model, &g, &e) || heed_model_config_read(g, &cfg, &e) ||
      heed_model_kv_bytes_per_token(&cfg, kv, &bpt, &e))
    goto fail;
  heed_gguf_close(g);
  g = NULL;
  heed_model_options mo;
  heed_model_options_init(&mo);
  mo.kv_dtype = kv;
  mo.n_ctx = ctx ? ctx : (cfg.n_ctx_train && cfg.n_ctx_train < 4096 ? cfg.n_ctx_train : 4096);
  mo.max_batch = batch;
  mo.max_seqs = heed_serve_max_seqs(&so);
  mo.kv_tokens = heed_serve_kv_tokens(&so, mo.n_ctx, bpt);
  if (heed_model_open(rt, model, &mo, &m, &e)) goto fail;
  so.model_name = mname;
  if (heed_serve_start(m, &so, &srv, &e)) goto fail;
  const heed_model_options *o = heed_model_get_options(m);
  const char *host = so.host ? so.host : "127.0.0.1";
  int v6 = strchr(host, ':') != NULL;
  fprintf(stderr, "heed serve: %s as '%s': context %u, %u slots, KV %s %.0f MiB (%u blocks), draft %s\n", model, mname,
          o->n_ctx, so.slots ? so.slots : 4, heed_dtype_name(o->kv_dtype), heed_model_kv_bytes(m) / 1048576.0,
          heed_model_kv_blocks(m), so.draft_k ? "ngram" : "none");
  fprintf(stderr, "heed serve: listening on http://%s%s%s:%u\n", v6 ? "[" : "", host, v6 ? "]" : "",
          heed_serve_port(srv));
  fprintf(stderr, "heed serve: ready\n");
  int sig = 0;
  sigwait(&stop_set, &sig);
  fprintf(stderr, "heed serve: %s: stopping\n", sig == SIGINT ? "SIGINT" : "SIGTERM");
  heed_serve_stop(srv);
  srv = NULL;
  fprintf(stderr, "heed serve: stopped\n");
  rc = 0;
  goto done;
fail:
  fprintf(stderr, "heed serve: %s\n", e.msg[0] ? e.msg : heed_status_str(e.status));
done:
  heed_serve_stop(srv);
  heed_gguf_close(g);
  heed_model_close(m);
  heed_runtime_close(rt);
  free(mname);
  for (unsigned i = 0; i < n_key_lines; i++) free(key_lines[i]);
  return rc;
}
