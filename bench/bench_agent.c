/* bench/bench_agent.c - `heed bench agent`: agent-like sessions replayed
 * against heed serve (started in this process) or any OpenAI-compatible
 * server (--url, e.g. llama.cpp's llama-server on the same GGUF).
 *
 * The trace (deterministic): --sessions sessions, each a system prompt of
 * about --system-tokens (a timestamp line, then tool schemas) and a task;
 * then turns that append an assistant tool call and its result (slices of
 * heed's own sources, as read_file would return them), a turn whose
 * timestamp changed ("volatile"), and a last turn that rebuilds the context
 * from a summary plus the last exchange ("compact"). Sessions take turns (a
 * sub-agent interleaved with its parent), and a short side request (a title
 * for the task, no session) comes between rounds. Session turns send
 * X-Session-Id. The outputs asked for are short; the trace appends its own
 * assistant messages, so every server sees the same prompts.
 *
 * Per request the bench records the time to first token (streamed), the
 * prompt tokens the server says it read from its cache (usage), and heed's
 * explanation; it computes, from the prompts' tokens (this model's
 * tokenizer and chat template), the ideal: the longest exact prefix any
 * earlier prompt offers, and what chunk reuse (serve/chunks.c) could recover
 * beyond it. Then, per turn kind, the largest request is sent again to a
 * cold server (heed: restarted; --url: "cache_prompt": false) for its cold
 * time to first token. Reported per turn kind. */
#include <arpa/inet.h>
#include <cjson/cJSON.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "bench/bench_agent.h"
#include "heed/chat.h"
#include "heed/heed.h"
#include "heed/serve.h"
#include "heed/tokenizer.h"
#include "serve/serve_internal.h"

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

enum { K_FIRST, K_CONTINUE, K_VOLATILE, K_COMPACT, K_SIDE, K_COUNT };
static const char *kind_name[K_COUNT] = {"first", "continue", "volatile", "compact", "side"};

typedef struct areq {
  int kind, session;          /* session -1: a side request */
  char *body;                 /* the request, JSON */
  int32_t *ids;               /* its prompt tokens (this model's template) */
  size_t n, ideal, chunks;    /* ideal: exact prefix an earlier prompt offers; chunks: what chunk reuse adds */
  long cached;                /* the server's cached_tokens (-1: not said) */
  double ttft, cold;          /* seconds; cold: 0 when not measured */
  char why[96];               /* heed's explanation, short */
  int ok;
} areq;

typedef struct target {
  char host[64];
  unsigned port;
} target;

/* ---------- HTTP: one request per connection ---------- */

static int http_post(const target *t, const char *path, const char *session, const char *body, double *ttft,
                     char **resp) {
  *resp = NULL, *ttft = 0;
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)t->port)};
  inet_pton(AF_INET, t->host, &a.sin_addr);
  const double t0 = now_s();
  if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof a)) {
    if (fd >= 0) close(fd);
    return -1;
  }
  char head[512], sid[128] = "";
  if (session) snprintf(sid, sizeof sid, "X-Session-Id: %s\r\n", session);
  const size_t bl = strlen(body);
  int hl = snprintf(head, sizeof head,
                    "POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n%sContent-Length: %zu\r\n"
                    "Connection: close\r\n\r\n",
                    path, t->host, sid, bl);
  if (send(fd, head, (size_t)hl, MSG_NOSIGNAL) != hl || send(fd, body, bl, MSG_NOSIGNAL) != (ssize_t)bl) {
    close(fd);
    return -1;
  }
  size_t cap = 1 << 16, have = 0;
  char *buf = malloc(cap);
  double t_fin = 0;
  for (;;) {
    if (have + 1 >= cap) buf = realloc(buf, cap *= 2);
    ssize_t k = recv(fd, buf + have, cap - 1 - have, 0);
    if (k <= 0) break;
    have += (size_t)k;
    buf[have] = 0;
    /* the first event carrying text: the first token; else (an output of only an end token) the finish */
    for (const char *c = buf; !*ttft && (c = strstr(c, "\"content\":\"")); c += 11)
      if (c[11] != '"') *ttft = now_s() - t0;
    if (!t_fin && strstr(buf, "\"finish_reason\":\"")) t_fin = now_s() - t0;
  }
  if (!*ttft) *ttft = t_fin;
  close(fd);
  buf[have] = 0;
  *resp = buf;
  return strncmp(buf, "HTTP/1.1 200", 12) == 0 ? 0 : -1;
}

static int http_get(const target *t, const char *path, char **resp) {
  *resp = NULL;
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)t->port)};
  inet_pton(AF_INET, t->host, &a.sin_addr);
  if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof a)) {
    if (fd >= 0) close(fd);
    return -1;
  }
  char head[256];
  int hl = snprintf(head, sizeof head, "GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n", path, t->host);
  if (send(fd, head, (size_t)hl, MSG_NOSIGNAL) != hl) {
    close(fd);
    return -1;
  }
  size_t cap = 1 << 16, have = 0;
  char *buf = malloc(cap);
  ssize_t k;
  while ((k = recv(fd, buf + have, cap - 1 - have, 0)) > 0)
    if ((have += (size_t)k) + 1 >= cap) buf = realloc(buf, cap *= 2);
  close(fd);
  buf[have] = 0;
  *resp = buf;
  return 0;
}

/* The JSON of the last stream event holding key (malloc'd), or NULL. */
static char *last_event(const char *resp, const char *key) {
  const char *u = NULL;
  for (const char *p = strstr(resp, key); p; p = strstr(p + 1, key)) u = p;
  if (!u) return NULL;
  const char *start = u;
  while (start > resp && strncmp(start, "data:", 5)) start--;
  if (strncmp(start, "data:", 5)) return NULL;
  start += 5;
  const char *end = strchr(start, '\n');
  return strndup(start, end ? (size_t)(end - start) : strlen(start));
}

/* From a streamed response: cached_tokens (the event with usage) and heed's explanation (heed_cache). */
static void read_usage(const char *resp, areq *r) {
  r->cached = -1;
  char *line = last_event(resp, "\"usage\"");
  cJSON *j = line ? cJSON_Parse(line) : NULL;
  free(line);
  const cJSON *us = j ? cJSON_GetObjectItem(j, "usage") : NULL;
  const cJSON *d = us ? cJSON_GetObjectItem(us, "prompt_tokens_details") : NULL;
  const cJSON *c = d ? cJSON_GetObjectItem(d, "cached_tokens") : NULL;
  if (cJSON_IsNumber(c)) r->cached = (long)c->valuedouble;
  cJSON_Delete(j);
  line = last_event(resp, "\"heed_cache\"");
  j = line ? cJSON_Parse(line) : NULL;
  free(line);
  const cJSON *hc = j ? cJSON_GetObjectItem(j, "heed_cache") : NULL;
  if (hc) {
    const cJSON *m = cJSON_GetObjectItem(hc, "match"), *dv = cJSON_GetObjectItem(hc, "divergence");
    const cJSON *src = m ? cJSON_GetObjectItem(m, "source") : NULL, *tk = dv ? cJSON_GetObjectItem(dv, "token") : NULL;
    const cJSON *sh = cJSON_GetObjectItem(hc, "reused_shifted"), *ev = cJSON_GetObjectItem(hc, "evicted");
    char at[32] = "";
    if (cJSON_IsNumber(tk)) snprintf(at, sizeof at, ", parts at %.0f", tk->valuedouble);
    snprintf(r->why, sizeof r->why, "match %s%s, %.0f shifted%s%s", cJSON_IsString(src) ? src->valuestring : "?", at,
             cJSON_IsNumber(sh) ? sh->valuedouble : 0, dv && cJSON_GetObjectItem(dv, "hint") ? ", hint" : "",
             ev ? ", evicted" : "");
  }
  cJSON_Delete(j);
}

/* ---------- the trace ---------- */

typedef struct convo {
  cJSON *msgs; /* the messages so far */
  char ts[40];
  int round;
} convo;

static char *slice(const char *dir, const char *file, size_t off, size_t len) {
  char p[1024];
  snprintf(p, sizeof p, "%s/%s", dir, file);
  FILE *f = fopen(p, "rb");
  if (!f) return NULL;
  fseek(f, 0, SEEK_END);
  long size = ftell(f);
  if (size <= 0) {
    fclose(f);
    return NULL;
  }
  off %= (size_t)size;
  fseek(f, (long)off, SEEK_SET);
  char *b = calloc(len + 1, 1);
  size_t n = b ? fread(b, 1, len, f) : 0;
  fclose(f);
  if (b) b[n] = 0;
  return b;
}

static void add_msg(cJSON *msgs, const char *role, const char *content) {
  cJSON *m = cJSON_CreateObject();
  cJSON_AddStringToObject(m, "role", role);
  cJSON_AddStringToObject(m, "content", content);
  cJSON_AddItemToArray(msgs, m);
}

/* The system prompt of session s: its timestamp line, then tool schemas up to about `tokens` tokens. */
static char *system_text(int s, const char *ts, unsigned tokens) {
  size_t cap = (size_t)tokens * 6 + 1024, at = 0;
  char *b = malloc(cap);
  at += (size_t)snprintf(b + at, cap - at,
                         "You are %s #%d, a coding agent in the heed repository. Current time: %s.\nTools:\n",
                         s ? "sub-agent" : "agent", s, ts);
  static const char *verbs[] = {"read", "write", "list", "search", "run", "edit", "diff", "test"};
  static const char *nouns[] = {"file", "folder", "symbol", "command", "benchmark", "issue", "commit", "log"};
  for (int i = 0; at + 400 < cap && at < (size_t)tokens * 4; i++)
    at += (size_t)snprintf(b + at, cap - at,
                           "{\"name\": \"%s_%s_%d\", \"description\": \"%s a %s of the repository and return what it "
                           "holds, at most max_bytes of it\", \"parameters\": {\"path\": \"string\", \"max_bytes\": "
                           "\"integer\", \"recursive\": \"boolean\"}}\n",
                           verbs[i % 8], nouns[i / 8 % 8], i, verbs[i % 8], nouns[i / 8 % 8]);
  return b;
}

static const char *files[] = {"serve/cache.c", "serve/engine.c", "attention/kv_cache.c", "model/model.c",
                              "serve/disk.c", "attention/attention.c", "model/forward.c", "serve/http.c"};

/* ---------- the bench ---------- */

typedef struct cfg {
  unsigned sessions, turns, system_tokens, tool_tokens, gen;
  const char *dir;
} cfg;

static char *request_body(cJSON *msgs, unsigned gen, int cold_llama) {
  cJSON *o = cJSON_CreateObject();
  cJSON_AddStringToObject(o, "model", "bench");
  cJSON_AddItemToObject(o, "messages", cJSON_Duplicate(msgs, 1));
  cJSON_AddNumberToObject(o, "max_tokens", gen);
  cJSON_AddNumberToObject(o, "temperature", 0);
  cJSON_AddBoolToObject(o, "stream", 1);
  cJSON *so = cJSON_AddObjectToObject(o, "stream_options");
  cJSON_AddBoolToObject(so, "include_usage", 1);
  if (cold_llama) cJSON_AddBoolToObject(o, "cache_prompt", 0);
  char *s = cJSON_PrintUnformatted(o);
  cJSON_Delete(o);
  return s;
}

/* Builds the trace's requests in order. */
static int build_trace(const cfg *c, areq **out, size_t *n_out) {
  size_t cap = (size_t)c->sessions * (c->turns + 1) * 2 + 8, n = 0;
  areq *r = calloc(cap, sizeof *r);
  convo *cv = calloc(c->sessions, sizeof *cv);
  if (!r || !cv) return -1;
  for (unsigned s = 0; s < c->sessions; s++) {
    snprintf(cv[s].ts, sizeof cv[s].ts, "2026-12-07 09:%02u:%02u", 10 + s, 7 * s % 60);
    cv[s].msgs = cJSON_CreateArray();
    char *sys = system_text((int)s, cv[s].ts, c->system_tokens);
    add_msg(cv[s].msgs, "system", sys);
    free(sys);
    char task[256];
    snprintf(task, sizeof task, "Task %u: find why a cached prefix is recomputed after a restart, and fix it.", s);
    add_msg(cv[s].msgs, "user", task);
  }
  unsigned file_i = 0;
  for (unsigned t = 0; t < c->turns; t++) {
    for (unsigned s = 0; s < c->sessions; s++) {
      convo *v = &cv[s];
      int kind = t == 0 ? K_FIRST : t == c->turns / 2 ? K_VOLATILE : t + 1 == c->turns && t > 1 ? K_COMPACT : K_CONTINUE;
      if (t > 0) { /* the previous turn's tool call and its result */
        const char *f = files[file_i++ % (sizeof files / sizeof *files)];
        char call[160];
        snprintf(call, sizeof call, "read_file(\"%s\")", f);
        add_msg(v->msgs, "assistant", call);
        char *body = slice(c->dir, f, (size_t)t * 977, (size_t)c->tool_tokens * 4);
        if (!body) {
          fprintf(stderr, "heed bench agent: cannot read %s/%s (--dir names heed's source folder)\n", c->dir, f);
          return -1;
        }
        size_t bl = strlen(body) + 32;
        char *res = malloc(bl);
        snprintf(res, bl, "Tool result:\n%s", body);
        add_msg(v->msgs, "user", res);
        free(body), free(res);
      }
      if (kind == K_VOLATILE) { /* the clock moved: the system prompt's first line changes */
        snprintf(v->ts, sizeof v->ts, "2026-12-07 10:%02u:%02u UTC", 31 + s, 13 * s % 60);
        char *sys = system_text((int)s, v->ts, c->system_tokens);
        cJSON *m = cJSON_CreateObject();
        cJSON_AddStringToObject(m, "role", "system");
        cJSON_AddStringToObject(m, "content", sys);
        cJSON_ReplaceItemInArray(v->msgs, 0, m);
        free(sys);
      }
      if (kind == K_COMPACT) { /* system, a summary, the last two exchanges (the older one was sent before) */
        const int n = cJSON_GetArraySize(v->msgs);
        cJSON *keep = cJSON_CreateArray();
        cJSON_AddItemToArray(keep, cJSON_Duplicate(cJSON_GetArrayItem(v->msgs, 0), 1));
        add_msg(keep, "user", "Summary of the session so far: the agent read the prefix cache, the engine and the KV "
                              "cache's sources and traced the restart path; it is now reading the disk tier.");
        for (int k = n - 4 > 2 ? n - 4 : 2; k < n; k++)
          cJSON_AddItemToArray(keep, cJSON_Duplicate(cJSON_GetArrayItem(v->msgs, k), 1));
        cJSON_Delete(v->msgs);
        v->msgs = keep;
      }
      r[n++] = (areq){.kind = kind, .session = (int)s, .body = request_body(v->msgs, c->gen, 0)};
    }
    /* a side request between rounds: a title for session 0's task */
    if (t + 1 < c->turns) {
      cJSON *m = cJSON_CreateArray();
      add_msg(m, "system", "Write a title of at most six words for the user's task.");
      add_msg(m, "user", "Task 0: find why a cached prefix is recomputed after a restart, and fix it.");
      r[n++] = (areq){.kind = K_SIDE, .session = -1, .body = request_body(m, c->gen, 0)};
      cJSON_Delete(m);
    }
  }
  for (unsigned s = 0; s < c->sessions; s++) cJSON_Delete(cv[s].msgs);
  free(cv);
  *out = r, *n_out = n;
  return 0;
}

/* The ideal for each request: the longest exact prefix of an earlier prompt
 * (the last token is always run), and what chunk reuse finds beyond it. */
static void ideals(areq *r, size_t n) {
  for (size_t i = 0; i < n; i++) {
    size_t best = 0;
    for (size_t k = 0; k < i; k++) {
      size_t l = 0;
      while (l < r[k].n && l < r[i].n && r[k].ids[l] == r[i].ids[l]) l++;
      best = l > best ? l : best;
    }
    r[i].ideal = best < r[i].n ? best : r[i].n - 1;
    const int32_t **src = malloc((i ? i : 1) * sizeof *src);
    size_t *len = malloc((i ? i : 1) * sizeof *len);
    srv_run *runs = NULL;
    unsigned nr = 0;
    for (size_t k = 0; k < i; k++) src[k] = r[k].ids, len[k] = r[k].n;
    r[i].chunks = i ? srv_chunk_runs(r[i].ids, r[i].n, r[i].ideal, src, len, (unsigned)i, 8, &runs, &nr) : 0;
    free(runs), free(src), free(len);
  }
}

typedef struct server {
  heed_runtime *rt;
  heed_model *m;
  heed_server *srv;
} server;

static int server_start(server *sv, const char *model, unsigned threads, unsigned ctx, int reuse, target *t) {
  heed_error e = {0};
  heed_runtime_options ro;
  heed_runtime_options_init(&ro);
  ro.backend = HEED_BACKEND_CPU;
  ro.n_threads = (int)threads;
  heed_serve_options so;
  heed_serve_options_init(&so);
  so.slots = 1, so.max_queue = 64, so.draft_k = 4, so.cache_bytes = 2ull << 30, so.cache_reuse = reuse;
  heed_model_options mo;
  heed_model_options_init(&mo);
  mo.n_ctx = ctx;
  mo.max_seqs = heed_serve_max_seqs(&so);
  /* the slots' own tokens, and room for eight cached sequences of the longest prompt (the trace's sessions,
   * side requests and forks) instead of a byte budget */
  mo.kv_tokens = heed_serve_kv_tokens(&so, ctx, 0) + 8 * (size_t)ctx;
  memset(sv, 0, sizeof *sv);
  if (heed_runtime_open(&ro, &sv->rt, &e) || heed_model_open(sv->rt, model, &mo, &sv->m, &e) ||
      heed_serve_start(sv->m, &so, &sv->srv, &e)) {
    fprintf(stderr, "heed bench agent: %s\n", e.msg);
    heed_serve_stop(sv->srv), heed_model_close(sv->m), heed_runtime_close(sv->rt);
    return -1;
  }
  snprintf(t->host, sizeof t->host, "127.0.0.1");
  t->port = heed_serve_port(sv->srv);
  return 0;
}

static void server_stop(server *sv) {
  heed_serve_stop(sv->srv), heed_model_close(sv->m), heed_runtime_close(sv->rt);
  memset(sv, 0, sizeof *sv);
}

static int cmp_d(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

static const char use[] =
    "usage: heed bench agent MODEL.gguf [--url http://IPV4:PORT] [--sessions 2] [--turns 5] [--system-tokens 3000]\n"
    "                        [--tool-tokens 500] [--gen 8] [--reuse chunks|off] [--threads N] [--ctx N]\n"
    "                        [--cold KIND,... | --no-cold] [--dir HEED_SOURCE_DIR] [--json FILE]\n"
    "  agent-like sessions (tool results, a changed timestamp, a compaction, a sub-agent, side requests) against heed\n"
    "  serve in this process, or the server at --url (MODEL then gives the tokenizer and template for the ideal)\n";

static int parse_u(const char *opt, const char *v, unsigned lo, unsigned hi, unsigned *out) {
  char *end;
  errno = 0;
  unsigned long x = v && *v != '-' ? strtoul(v, &end, 10) : 0;
  if (!v || errno || *end || x < lo || x > hi) {
    fprintf(stderr, "heed bench agent: %s %s: accepted: a whole number in %u..%u\n", opt, v ? v : "(none)", lo, hi);
    return -1;
  }
  *out = (unsigned)x;
  return 0;
}

/* --cold first,continue,...: a bit per kind. */
static int parse_kinds(const char *v, unsigned *out) {
  unsigned m = 0;
  const char *p = v;
  while (*p) {
    size_t len = strcspn(p, ",");
    int k = 0;
    while (k < K_COUNT && !(strlen(kind_name[k]) == len && !strncmp(p, kind_name[k], len))) k++;
    if (k == K_COUNT) {
      fprintf(stderr, "heed bench agent: --cold %s: '%.*s' is not a turn kind; accepted: first, continue, volatile, "
                      "compact, side\n", v, (int)len, p);
      return 1;
    }
    m |= 1u << k;
    p += len + (p[len] == ',');
  }
  if (!m) {
    fprintf(stderr, "heed bench agent: --cold '': name a turn kind (or --no-cold)\n");
    return 1;
  }
  *out = m;
  return 0;
}

int heed_bench_agent_main(int argc, char **argv) {
  cfg c = {.sessions = 2, .turns = 5, .system_tokens = 3000, .tool_tokens = 500, .gen = 8, .dir = HEED_SOURCE_DIR};
  const char *model = NULL, *url = NULL, *json = NULL;
  unsigned threads = 0, ctx = 0;
  int reuse = 1;
  unsigned cold = (1u << K_COUNT) - 1; /* the kinds whose largest request is also sent cold */
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
    int bad = 0;
    if (!strcmp(a, "--no-cold")) cold = 0; /* (--cold KIND,... below: only those kinds) */
    else if (a[0] != '-' && !model) model = a;
    else if (!v) bad = 1;
    else if (!strcmp(a, "--sessions")) bad = parse_u(a, v, 1, 8, &c.sessions), i++;
    else if (!strcmp(a, "--turns")) bad = parse_u(a, v, 2, 64, &c.turns), i++;
    else if (!strcmp(a, "--system-tokens")) bad = parse_u(a, v, 100, 200000, &c.system_tokens), i++;
    else if (!strcmp(a, "--tool-tokens")) bad = parse_u(a, v, 10, 100000, &c.tool_tokens), i++;
    else if (!strcmp(a, "--gen")) bad = parse_u(a, v, 1, 4096, &c.gen), i++;
    else if (!strcmp(a, "--threads")) bad = parse_u(a, v, 1, 4096, &threads), i++;
    else if (!strcmp(a, "--ctx")) bad = parse_u(a, v, 256, 1u << 20, &ctx), i++;
    else if (!strcmp(a, "--url")) url = v, i++;
    else if (!strcmp(a, "--json")) json = v, i++;
    else if (!strcmp(a, "--dir")) c.dir = v, i++;
    else if (!strcmp(a, "--cold")) bad = parse_kinds(v, &cold), i++;
    else if (!strcmp(a, "--reuse")) {
      reuse = !strcmp(v, "chunks") ? 1 : !strcmp(v, "off") ? 0 : -1;
      if (reuse < 0) fprintf(stderr, "heed bench agent: --reuse %s: accepted: chunks, off\n", v), bad = 1;
      i++;
    } else {
      fprintf(stderr, "heed bench agent: unexpected argument '%s'\n%s", a, use);
      return 2;
    }
    if (bad) {
      if (!v) fprintf(stderr, "heed bench agent: %s needs a value\n%s", a, use);
      return 2;
    }
  }
  if (!model) {
    fputs(use, stderr);
    return 2;
  }
  target t = {.port = 0};
  if (url && sscanf(url, "http://%63[^:/]:%u", t.host, &t.port) != 2) {
    fprintf(stderr, "heed bench agent: --url %s: accepted: http://IPV4:PORT\n", url);
    return 2;
  }
  FILE *jf = json ? fopen(json, "w") : NULL;
  if (json && !jf) {
    fprintf(stderr, "heed bench agent: cannot write --json %s: %s\n", json, strerror(errno));
    return 1;
  }
  /* the prompts' tokens, for the ideal: this model's tokenizer and template */
  heed_error e = {0};
  heed_gguf *g = NULL;
  heed_tokenizer *tk = NULL;
  heed_chat *chat = NULL;
  areq *r = NULL;
  size_t n = 0;
  int rc = 1;
  if (heed_gguf_open(model, &g, &e) || heed_tokenizer_from_gguf(g, &tk, &e) || heed_chat_open(g, tk, NULL, &chat, &e)) {
    fprintf(stderr, "heed bench agent: %s\n", e.msg);
    goto done;
  }
  if (build_trace(&c, &r, &n)) goto done;
  size_t longest = 0;
  for (size_t i = 0; i < n; i++) {
    heed_tokens ids = {0};
    if (heed_chat_prompt(chat, r[i].body, strlen(r[i].body), NULL, NULL, &ids, &e)) {
      fprintf(stderr, "heed bench agent: the chat template: %s\n", e.msg);
      goto done;
    }
    r[i].ids = ids.ids, r[i].n = ids.n;
    longest = ids.n > longest ? ids.n : longest;
  }
  ideals(r, n);
  if (!ctx) ctx = (unsigned)longest + c.gen + 256;
  server sv = {0};
  if (!url && server_start(&sv, model, threads, ctx, reuse, &t)) goto done;
  printf("heed bench agent: %s, %zu requests (%u sessions x %u turns, side requests between rounds), prompts up to %zu "
         "tokens, %u generated each; server %s%s\n",
         model, n, c.sessions, c.turns, longest, c.gen, url ? url : "heed", url ? "" : reuse ? " --cache-reuse chunks" : "");
  printf("%3s %-9s %4s %6s %6s %6s %6s %8s  %s\n", "#", "kind", "sess", "prompt", "cached", "ideal", "+chunk", "TTFT s",
         "heed's explanation");
  for (size_t i = 0; i < n; i++) {
    char sid[32], *resp = NULL;
    snprintf(sid, sizeof sid, "agent-session-%d", r[i].session);
    r[i].ok = http_post(&t, "/v1/chat/completions", r[i].session >= 0 ? sid : NULL, r[i].body, &r[i].ttft, &resp) == 0;
    if (resp) read_usage(resp, &r[i]);
    free(resp);
    printf("%3zu %-9s %4d %6zu %6ld %6zu %6zu %8.2f  %s%s\n", i, kind_name[r[i].kind], r[i].session, r[i].n, r[i].cached,
           r[i].ideal, r[i].chunks, r[i].ttft, r[i].why, r[i].ok ? "" : " (FAILED)");
    fflush(stdout);
  }
  /* evictions of retained sessions (heed) */
  long retained_evictions = -1;
  if (!url) {
    char *m = NULL;
    if (http_get(&t, "/metrics", &m) == 0 && m) {
      const char *p = strstr(m, "heed_cache_evictions_total{retained=\"1\"}");
      if (p) retained_evictions = strtol(p + strlen("heed_cache_evictions_total{retained=\"1\"}"), NULL, 10);
    }
    free(m);
  }
  /* cold: per kind, its largest request alone on an empty cache */
  if (cold)
    for (int k = 0; k < K_COUNT; k++) {
      if (!((cold >> k) & 1)) continue;
      size_t bi = n;
      for (size_t i = 0; i < n; i++)
        if (r[i].kind == k && (bi == n || r[i].n > r[bi].n)) bi = i;
      if (bi == n) continue;
      char *body = r[bi].body, *resp = NULL;
      if (!url) {
        server_stop(&sv);
        if (server_start(&sv, model, threads, ctx, reuse, &t)) goto done;
      } else { /* llama-server: the same request, told not to use its cache */
        cJSON *o = cJSON_Parse(body);
        cJSON_AddBoolToObject(o, "cache_prompt", 0);
        body = cJSON_PrintUnformatted(o);
        cJSON_Delete(o);
      }
      http_post(&t, "/v1/chat/completions", NULL, body, &r[bi].cold, &resp);
      free(resp);
      if (body != r[bi].body) free(body);
    }
  if (!url) server_stop(&sv);
  /* per kind */
  printf("\n%-9s %4s %8s %8s %8s %8s %9s %9s %9s %9s\n", "kind", "n", "prompt", "cached", "ideal", "+chunks",
         "of ideal", "of prompt", "TTFT p50", "cold TTFT");
  /* of ideal: cached / (exact ideal + what chunk reuse finds beyond it) */
  if (jf) fprintf(jf, "{\"schema\":\"heed-bench-agent/1\",\"server\":\"%s\",\"reuse\":\"%s\",\"kinds\":[", url ? url : "heed",
                  url ? "n/a" : reuse ? "chunks" : "off");
  int first = 1;
  for (int k = 0; k < K_COUNT; k++) {
    size_t cnt = 0, sp = 0, sc = 0, si = 0, sch = 0;
    double tt[256], coldt = 0;
    for (size_t i = 0; i < n; i++)
      if (r[i].kind == k) {
        sp += r[i].n, sc += r[i].cached > 0 ? (size_t)r[i].cached : 0, si += r[i].ideal, sch += r[i].chunks;
        if (cnt < 256) tt[cnt] = r[i].ttft;
        cnt++;
        if (r[i].cold > 0) coldt = r[i].cold;
      }
    if (!cnt) continue;
    qsort(tt, cnt < 256 ? cnt : 256, sizeof *tt, cmp_d);
    const double p50 = tt[(cnt < 256 ? cnt : 256) / 2];
    printf("%-9s %4zu %8zu %8zu %8zu %8zu %8.1f%% %8.1f%% %9.2f %9.2f\n", kind_name[k], cnt, sp, sc, si, sch,
           si + sch ? 100.0 * (double)sc / (double)(si + sch) : 100.0, 100.0 * (double)sc / (double)sp, p50, coldt);
    if (jf)
      fprintf(jf,
              "%s{\"kind\":\"%s\",\"requests\":%zu,\"prompt_tokens\":%zu,\"cached\":%zu,\"ideal\":%zu,\"chunks\":%zu,"
              "\"ttft_p50_s\":%.4f,\"cold_ttft_s\":%.4f}",
              first ? "" : ",", kind_name[k], cnt, sp, sc, si, sch, p50, coldt);
    first = 0;
  }
  if (retained_evictions >= 0) printf("evictions of retained sessions' sequences: %ld\n", retained_evictions);
  if (jf) fprintf(jf, "],\"retained_evictions\":%ld}\n", retained_evictions);
  rc = 0;
  for (size_t i = 0; i < n; i++) rc |= !r[i].ok;
done:
  if (jf && fclose(jf) != 0) rc = 1;
  for (size_t i = 0; r && i < n; i++) free(r[i].body), free(r[i].ids);
  free(r);
  heed_chat_free(chat);
  heed_tokenizer_free(tk);
  heed_gguf_close(g);
  return rc;
}
