/* bench/bench_serve.c - heed bench serve: N concurrent streaming clients
 * against heed serve (started in this process) or any OpenAI-compatible
 * server (--url, e.g. llama.cpp's llama-server on the same GGUF), with the
 * same prompts and client either way.
 *
 * Each client sends --requests streaming /v1/completions requests one after
 * another: a prompt of about --prompt tokens of its own text (plus
 * --shared-prefix tokens common to all, as agents send), --gen tokens asked
 * for at temperature 0. Reported per N: aggregate output tok/s over the
 * wall time, time to first token and time per output token (median, p90,
 * p99 over requests), and the prompt tokens the server says it read from its
 * cache. The client speaks just enough HTTP/1.1 to send one request per
 * connection and read a chunked event stream. */
#include <arpa/inet.h>
#include <errno.h>
#include <math.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "bench/bench_serve.h"
#include "heed/heed.h"
#include "heed/serve.h"

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

typedef struct target {
  char host[64];
  unsigned port;
} target;

typedef struct result {
  double ttft, tpot, total;
  long gen, prompt, cached;
  int ok;
} result;

typedef struct client {
  const target *t;
  int id, n_req;
  unsigned prompt_words, shared_words, gen;
  result *res; /* [n_req] */
} client;

/* Deterministic English-like words: client c's own text, or (c < 0) the shared prefix. */
static void words(char *out, size_t cap, int c, unsigned n) {
  static const char *w[] = {"the", "harbor", "crane", "lifted", "a", "rusty", "container", "while", "gulls",
                            "circled", "over", "quiet", "water", "and", "workers", "counted", "boxes", "near",
                            "old", "lighthouse", "every", "morning", "before", "ships", "arrived", "from", "north"};
  size_t at = 0;
  uint64_t x = 0x9e3779b97f4a7c15ull * (uint64_t)(c + 7);
  for (unsigned i = 0; i < n && at + 16 < cap; i++) {
    x ^= x << 13, x ^= x >> 7, x ^= x << 17;
    at += (size_t)snprintf(out + at, cap - at, "%s%s", i ? " " : "", w[x % (sizeof w / sizeof *w)]);
  }
  out[at] = 0;
}

/* Reads until "\r\n\r\n"; returns the header length (0 on failure); leftover bytes stay in buf. */
static size_t read_headers(int fd, char *buf, size_t cap, size_t *have) {
  *have = 0;
  for (;;) {
    ssize_t n = recv(fd, buf + *have, cap - 1 - *have, 0);
    if (n <= 0) return 0;
    *have += (size_t)n;
    buf[*have] = 0;
    char *e = strstr(buf, "\r\n\r\n");
    if (e) return (size_t)(e - buf) + 4;
    if (*have + 1 >= cap) return 0;
  }
}

static long json_long(const char *s, const char *key) {
  const char *p = strstr(s, key);
  if (!p) return -1;
  p += strlen(key);
  while (*p == '"' || *p == ':' || *p == ' ') p++;
  return strtol(p, NULL, 10);
}

/* One streaming request; the body is de-chunked as it comes and scanned for
 * "data:" events. */
static void one_request(const target *t, const char *prompt, unsigned gen, result *r) {
  memset(r, 0, sizeof *r);
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)t->port)};
  inet_pton(AF_INET, t->host, &a.sin_addr);
  double t0 = now_s();
  if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof a)) {
    if (fd >= 0) close(fd);
    return;
  }
  size_t blen = strlen(prompt) + 512;
  char *body = malloc(blen);
  int bl = snprintf(body, blen,
                    "{\"model\":\"bench\",\"prompt\":\"%s\",\"max_tokens\":%u,\"temperature\":0,\"stream\":true,"
                    "\"stream_options\":{\"include_usage\":true}}",
                    prompt, gen);
  char head[512];
  int hl = snprintf(head, sizeof head,
                    "POST /v1/completions HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
                    "Content-Length: %d\r\nConnection: close\r\n\r\n",
                    t->host, bl);
  if (send(fd, head, (size_t)hl, MSG_NOSIGNAL) != hl || send(fd, body, (size_t)bl, MSG_NOSIGNAL) != bl) goto out;
  size_t cap = 1 << 16, have;
  char *buf = malloc(cap);
  size_t h = read_headers(fd, buf, cap, &have);
  if (!h || strncmp(buf, "HTTP/1.1 200", 12) != 0) {
    free(buf);
    goto out;
  }
  int chunked = strcasestr(buf, "transfer-encoding: chunked") != NULL;
  /* the body, de-chunked into ev; events split at blank lines */
  size_t ecap = 1 << 16, elen = 0;
  char *ev = malloc(ecap);
  memmove(buf, buf + h, have - h);
  have -= h;
  size_t chunk_left = 0;
  int done = 0;
  double t_first = 0, t_last = 0;
  long n_events = 0; /* events with text: the token count when the server sends no usage */
  while (!done) {
    /* move what buf holds into ev */
    size_t at = 0;
    while (at < have) {
      if (chunked && chunk_left == 0) {
        char *nl = memchr(buf + at, '\n', have - at);
        if (!nl) break;
        chunk_left = strtoul(buf + at, NULL, 16);
        at = (size_t)(nl - buf) + 1;
        if (chunk_left == 0) {
          done = 1;
          break;
        }
        chunk_left += 2; /* its CRLF */
        continue;
      }
      size_t take = have - at;
      if (chunked && take > chunk_left) take = chunk_left;
      if (elen + take + 1 > ecap) ev = realloc(ev, ecap = 2 * (elen + take + 1));
      memcpy(ev + elen, buf + at, take);
      elen += take, at += take;
      if (chunked) chunk_left -= take;
    }
    memmove(buf, buf + at, have - at);
    have -= at;
    ev[elen] = 0;
    /* complete events */
    char *e;
    while ((e = strstr(ev, "\n\n"))) {
      *e = 0;
      char *d = strstr(ev, "data:");
      if (d) {
        d += 5;
        while (*d == ' ') d++;
        if (strncmp(d, "[DONE]", 6) == 0) {
          done = 1;
        } else {
          char *tx = strstr(d, "\"text\":\"");
          if (tx && tx[8] != '"') {
            n_events++;
            t_last = now_s();
            if (!t_first) t_first = t_last;
          }
          if (strstr(d, "\"usage\"") && strstr(d, "\"completion_tokens\"")) {
            r->gen = json_long(d, "\"completion_tokens\"");
            r->prompt = json_long(d, "\"prompt_tokens\"");
            long c = json_long(d, "\"cached_tokens\"");
            r->cached = c > 0 ? c : 0;
          }
        }
      }
      size_t used = (size_t)(e - ev) + 2;
      memmove(ev, ev + used, elen - used + 1);
      elen -= used;
    }
    if (done) break;
    if (have + 1 >= cap) buf = realloc(buf, cap *= 2);
    ssize_t n = recv(fd, buf + have, cap - 1 - have, 0);
    if (n <= 0) break;
    have += (size_t)n;
  }
  free(ev);
  free(buf);
  if (r->gen <= 0) r->gen = n_events;
  if (t_first > 0 && r->gen > 0) {
    r->ok = 1;
    r->ttft = t_first - t0;
    r->total = t_last - t0;
    r->tpot = r->gen > 1 ? (t_last - t_first) / (double)(r->gen - 1) : 0;
  }
out:
  free(body);
  close(fd);
}

static void *client_main(void *arg) {
  client *c = arg;
  size_t cap = (size_t)(c->prompt_words + c->shared_words) * 12 + 64;
  char *p = malloc(cap), *own = malloc(cap);
  for (int i = 0; i < c->n_req; i++) {
    p[0] = 0;
    if (c->shared_words) {
      words(p, cap, -1, c->shared_words);
      strcat(p, " ");
    }
    words(own, cap, c->id * 1000 + i, c->prompt_words);
    strcat(p, own);
    one_request(c->t, p, c->gen, &c->res[i]);
  }
  free(p), free(own);
  return NULL;
}

static int cmp_d(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

static double pct(double *v, size_t n, double q) {
  if (!n) return NAN;
  size_t i = (size_t)(q * (double)(n - 1) + 0.5);
  return v[i];
}

/* A whole number in lo..hi, or a message naming the option and the value. */
static int parse_uint(const char *opt, const char *v, unsigned long lo, unsigned long hi, unsigned *out) {
  char *end;
  errno = 0;
  unsigned long x = strtoul(v, &end, 10);
  if (!*v || *end || errno || v[0] == '-' || v[0] == '+' || v[0] == ' ' || x < lo || x > hi) {
    fprintf(stderr, "heed bench serve: %s %s: accepted: a whole number in %lu..%lu\n", opt, v, lo, hi);
    return -1;
  }
  *out = (unsigned)x;
  return 0;
}

static const char use[] =
    "usage: heed bench serve MODEL.gguf [--clients 1,4,16] [--prompt TOKENS] [--gen TOKENS] [--requests N]\n"
    "                        [--shared-prefix TOKENS] [--draft ngram|none] [--threads N] [--ctx N] [--json FILE]\n"
    "       heed bench serve --url http://127.0.0.1:8080 [the same load options]   (any OpenAI-compatible server)\n";

int heed_bench_serve_main(int argc, char **argv) {
  const char *model = NULL, *url = NULL, *json = NULL;
  unsigned clients[8] = {1, 4, 16}, n_clients = 3, prompt = 512, gen = 128, reqs = 2, shared = 0, threads = 0;
  unsigned ctx = 0, draft = 1;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
    if (a[0] != '-') {
      model = a;
      continue;
    }
    if (!v) {
      fprintf(stderr, "heed bench serve: %s needs a value\n%s", a, use);
      return 2;
    }
    i++;
    if (strcmp(a, "--clients") == 0) {
      n_clients = 0;
      for (char *s = (char *)v; *s && n_clients < 8;) {
        long x = strtol(s, &s, 10);
        if (x < 1 || x > 256) {
          fprintf(stderr, "heed bench serve: --clients %s: numbers in 1..256\n", v);
          return 2;
        }
        clients[n_clients++] = (unsigned)x;
        if (*s == ',') s++;
        else if (*s) {
          fprintf(stderr, "heed bench serve: --clients %s: a list like 1,4,16\n", v);
          return 2;
        }
      }
    } else if (strcmp(a, "--prompt") == 0) {
      if (parse_uint(a, v, 1, 100000, &prompt)) return 2;
    } else if (strcmp(a, "--gen") == 0) {
      if (parse_uint(a, v, 1, 100000, &gen)) return 2;
    } else if (strcmp(a, "--requests") == 0) {
      if (parse_uint(a, v, 1, 100000, &reqs)) return 2;
    } else if (strcmp(a, "--shared-prefix") == 0) {
      if (parse_uint(a, v, 0, 100000, &shared)) return 2;
    } else if (strcmp(a, "--threads") == 0) {
      if (parse_uint(a, v, 1, 4096, &threads)) return 2;
    } else if (strcmp(a, "--ctx") == 0) {
      if (parse_uint(a, v, 16, 1u << 20, &ctx)) return 2;
    } else if (strcmp(a, "--draft") == 0) {
      if (strcmp(v, "none") && strcmp(v, "ngram")) {
        fprintf(stderr, "heed bench serve: --draft %s: accepted: ngram, none\n", v);
        return 2;
      }
      draft = strcmp(v, "none") != 0;
    } else if (strcmp(a, "--url") == 0) url = v;
    else if (strcmp(a, "--json") == 0) json = v;
    else {
      fprintf(stderr, "heed bench serve: unknown option %s\n%s", a, use);
      return 2;
    }
  }
  if (!model == !url) {
    fprintf(stderr, "heed bench serve: %s\n%s", model ? "a MODEL or --url, not both" : "a MODEL or --url is needed", use);
    return 2;
  }
  FILE *jf = NULL;
  if (json && !(jf = fopen(json, "w"))) {
    fprintf(stderr, "heed bench serve: cannot write --json %s: %s\n", json, strerror(errno));
    return 1;
  }
  unsigned max_c = 1;
  for (unsigned i = 0; i < n_clients; i++) max_c = clients[i] > max_c ? clients[i] : max_c;
  target t = {.port = 0};
  heed_runtime *rt = NULL;
  heed_model *m = NULL;
  heed_server *srv = NULL;
  heed_error e = {0};
  if (url) {
    if (sscanf(url, "http://%63[^:/]:%u", t.host, &t.port) != 2) {
      fprintf(stderr, "heed bench serve: --url %s: accepted: http://IPV4:PORT\n", url);
      if (jf) fclose(jf), remove(json);
      return 2;
    }
  } else {
    heed_runtime_options ro;
    heed_runtime_options_init(&ro);
    ro.backend = HEED_BACKEND_CPU;
    ro.n_threads = (int)threads;
    heed_serve_options so;
    heed_serve_options_init(&so);
    so.slots = max_c;
    so.max_queue = 1024;
    so.draft_k = draft ? 4 : 0;
    so.cache_bytes = 256u << 20;
    heed_model_options mo;
    heed_model_options_init(&mo);
    /* words are about 1.3 tokens: room for the prompt, the output and slack */
    mo.n_ctx = ctx ? ctx : (unsigned)((prompt + shared) * 2 + gen + 64);
    mo.max_seqs = heed_serve_max_seqs(&so);
    mo.kv_tokens = heed_serve_kv_tokens(&so, mo.n_ctx, 0) + 4 * (size_t)mo.n_ctx; /* and room to cache */
    if (heed_runtime_open(&ro, &rt, &e) || heed_model_open(rt, model, &mo, &m, &e) ||
        heed_serve_start(m, &so, &srv, &e)) {
      fprintf(stderr, "heed bench serve: %s\n", e.msg);
      if (jf) fclose(jf), remove(json);
      heed_serve_stop(srv);
      heed_model_close(m);
      heed_runtime_close(rt);
      return 1;
    }
    snprintf(t.host, sizeof t.host, "127.0.0.1");
    t.port = heed_serve_port(srv);
  }
  if (jf) fprintf(jf, "{\"schema\": \"heed-bench-serve/1\", \"server\": \"%s\", \"cases\": [", url ? url : "heed");
  printf("server %s: prompt ~%u words (+%u shared), %u tokens asked, %u requests per client, temperature 0\n",
         url ? url : "heed (in process)", prompt, shared, gen, reqs);
  printf("%8s %12s %10s %10s %10s %10s %10s %10s %8s\n", "clients", "out tok/s", "ttft p50", "ttft p90", "ttft p99",
         "tpot p50", "tpot p90", "cached", "failed");
  /* words: prompt tokens are about 1.3 a word; ask for prompt/1.3 words */
  unsigned pw = (unsigned)(prompt / 1.3), sw = (unsigned)(shared / 1.3);
  size_t failed = 0;
  for (unsigned k = 0; k < n_clients; k++) {
    unsigned N = clients[k];
    client *cs = calloc(N, sizeof *cs);
    pthread_t *th = calloc(N, sizeof *th);
    result *res = calloc((size_t)N * reqs, sizeof *res);
    double t0 = now_s();
    for (unsigned c = 0; c < N; c++) {
      cs[c] = (client){.t = &t, .id = (int)(k * 1000 + c), .n_req = (int)reqs, .prompt_words = pw,
                       .shared_words = sw, .gen = gen, .res = res + (size_t)c * reqs};
      pthread_create(&th[c], NULL, client_main, &cs[c]);
    }
    for (unsigned c = 0; c < N; c++) pthread_join(th[c], NULL);
    double wall = now_s() - t0;
    size_t n = (size_t)N * reqs, ok = 0;
    long tokens = 0, cached = 0;
    double *ttft = malloc(n * sizeof(double)), *tpot = malloc(n * sizeof(double));
    for (size_t i = 0; i < n; i++)
      if (res[i].ok) {
        ttft[ok] = res[i].ttft, tpot[ok] = res[i].tpot;
        tokens += res[i].gen, cached += res[i].cached;
        ok++;
      }
    qsort(ttft, ok, sizeof *ttft, cmp_d);
    qsort(tpot, ok, sizeof *tpot, cmp_d);
    double tps = tokens / wall;
    printf("%8u %12.1f %9.3fs %9.3fs %9.3fs %8.1fms %8.1fms %10ld %8zu\n", N, tps, pct(ttft, ok, 0.5),
           pct(ttft, ok, 0.9), pct(ttft, ok, 0.99), 1e3 * pct(tpot, ok, 0.5), 1e3 * pct(tpot, ok, 0.9), cached, n - ok);
    if (jf) {
      /* no request done: no percentiles (null, not NaN, which JSON lacks) */
      char q[5][32];
      const double qv[5] = {pct(ttft, ok, 0.5), pct(ttft, ok, 0.9), pct(ttft, ok, 0.99), pct(tpot, ok, 0.5),
                            pct(tpot, ok, 0.9)};
      for (int i = 0; i < 5; i++) {
        if (isfinite(qv[i])) snprintf(q[i], sizeof q[i], "%.5f", qv[i]);
        else snprintf(q[i], sizeof q[i], "null");
      }
      fprintf(jf,
              "%s{\"clients\": %u, \"requests\": %zu, \"failed\": %zu, \"output_tokens\": %ld, \"wall_s\": %.3f, "
              "\"output_tok_s\": %.2f, \"ttft_s\": {\"p50\": %s, \"p90\": %s, \"p99\": %s}, "
              "\"tpot_s\": {\"p50\": %s, \"p90\": %s}, \"cached_prompt_tokens\": %ld}",
              k ? ", " : "", N, n, n - ok, tokens, wall, tps, q[0], q[1], q[2], q[3], q[4], cached);
    }
    failed += n - ok;
    fflush(stdout);
    free(ttft), free(tpot), free(cs), free(th), free(res);
  }
  if (jf) {
    fprintf(jf, "]}\n");
    fclose(jf);
  }
  heed_serve_stop(srv);
  heed_model_close(m);
  heed_runtime_close(rt);
  if (failed) fprintf(stderr, "heed bench serve: %zu requests failed (the \"failed\" column)\n", failed);
  return failed ? 1 : 0;
}
