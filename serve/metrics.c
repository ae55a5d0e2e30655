/* serve/metrics.c - counters and histograms, shown by /metrics in the
 * Prometheus text format (version 0.0.4).
 *
 * Requests are counted per (endpoint, status) in a fixed table. Its last
 * slots are kept for ("other", status) rows so that a flood of odd paths can
 * neither grow memory nor lose counts: they are folded, never dropped. */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "serve/serve_internal.h"

static const double TTFT_LE[SRV_TTFT_BUCKETS] = {0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64, 128};
static const double TPOT_LE[SRV_TPOT_BUCKETS] = {0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1};

#define REQ_SLOTS (sizeof(((srv_metrics *)0)->req) / sizeof(((srv_metrics *)0)->req[0]))
#define REQ_OTHER_SLOTS 16u   /* ("other", status) rows once the named ones fill the table */
#define STATUS_ANY (-1)       /* the last slot: "other" endpoint and status, when all else is full */

void srv_metrics_init(srv_metrics *m) {
  memset(m, 0, sizeof *m);
  pthread_mutex_init(&m->mu, NULL);
}

void srv_metrics_destroy(srv_metrics *m) { pthread_mutex_destroy(&m->mu); }

static int find_row(const srv_metrics *m, const char *endpoint, int status) {
  for (unsigned i = 0; i < m->n_req; i++)
    if (m->req[i].status == status && strcmp(m->req[i].endpoint, endpoint) == 0) return (int)i;
  return -1;
}

static int add_row(srv_metrics *m, const char *endpoint, int status) {
  unsigned i = m->n_req++;
  memcpy(m->req[i].endpoint, endpoint, strlen(endpoint) + 1);
  m->req[i].status = status;
  m->req[i].n = 0;
  return (int)i;
}

void srv_metrics_request(srv_metrics *m, const char *endpoint, int status) {
  /* Label values must be UTF-8: bytes outside printable ASCII (but the
   * newline, which is escaped) become '?', and a cut cannot split a character. */
  char ep[sizeof m->req[0].endpoint];
  size_t n = 0;
  if (!endpoint) endpoint = "other";
  for (; endpoint[n] && n < sizeof ep - 1; n++) {
    unsigned char c = (unsigned char)endpoint[n];
    ep[n] = (c == '\n' || (c >= 0x20 && c < 0x7f)) ? (char)c : '?';
  }
  ep[n] = '\0';
  if (status == STATUS_ANY) status = 0;

  pthread_mutex_lock(&m->mu);
  int i = find_row(m, ep, status);
  if (i < 0 && m->n_req < REQ_SLOTS - REQ_OTHER_SLOTS) i = add_row(m, ep, status);
  if (i < 0) i = find_row(m, "other", status);
  if (i < 0 && m->n_req < REQ_SLOTS - 1) i = add_row(m, "other", status);
  if (i < 0) i = find_row(m, "other", STATUS_ANY);
  if (i < 0) i = add_row(m, "other", STATUS_ANY); /* the last slot is always free for it */
  m->req[i].n++;
  pthread_mutex_unlock(&m->mu);
}

static void observe(uint64_t *b, const double *le, unsigned nb, double s, uint64_t n, double *sum, uint64_t *count) {
  if (!isfinite(s) || n == 0) return;
  if (s < 0) s = 0;
  unsigned i = 0;
  while (i < nb && s > le[i]) i++;
  b[i] += n;
  *sum += s * (double)n;
  *count += n;
}

void srv_metrics_ttft(srv_metrics *m, double s) {
  pthread_mutex_lock(&m->mu);
  observe(m->ttft_b, TTFT_LE, SRV_TTFT_BUCKETS, s, 1, &m->ttft_sum, &m->ttft_n);
  pthread_mutex_unlock(&m->mu);
}

void srv_metrics_tpot(srv_metrics *m, double s, uint64_t n) {
  pthread_mutex_lock(&m->mu);
  observe(m->tpot_b, TPOT_LE, SRV_TPOT_BUCKETS, s, n, &m->tpot_sum, &m->tpot_n);
  pthread_mutex_unlock(&m->mu);
}

void srv_metrics_tokens(srv_metrics *m, uint64_t prompt, uint64_t generated, uint64_t cached, uint64_t drafted,
                        uint64_t accepted) {
  pthread_mutex_lock(&m->mu);
  m->prompt_tokens += prompt;
  m->generated_tokens += generated;
  m->cached_tokens += cached;
  m->draft_tokens += drafted;
  m->draft_accepted += accepted;
  pthread_mutex_unlock(&m->mu);
}

void srv_metrics_restored(srv_metrics *m, uint64_t restored, uint64_t shifted) {
  pthread_mutex_lock(&m->mu);
  m->restored_tokens += restored;
  m->shifted_tokens += shifted;
  pthread_mutex_unlock(&m->mu);
}

void srv_metrics_eviction(srv_metrics *m, int retained) {
  pthread_mutex_lock(&m->mu);
  m->evictions[retained ? 1 : 0]++;
  pthread_mutex_unlock(&m->mu);
}

void srv_metrics_match(srv_metrics *m, unsigned source) {
  if (source > 2) return;
  pthread_mutex_lock(&m->mu);
  m->matches[source]++;
  pthread_mutex_unlock(&m->mu);
}

/* ---------- the text ---------- */

typedef struct out {
  char *b;
  size_t n, cap;
  int failed;
} out;

static void put(out *o, const char *fmt, ...) HEED_PRINTF(2, 3);
static void put(out *o, const char *fmt, ...) {
  if (o->failed) return;
  for (;;) {
    va_list ap;
    va_start(ap, fmt);
    int k = vsnprintf(o->b ? o->b + o->n : NULL, o->b ? o->cap - o->n : 0, fmt, ap);
    va_end(ap);
    if (k < 0) {
      o->failed = 1;
      return;
    }
    if (o->b && (size_t)k < o->cap - o->n) {
      o->n += (size_t)k;
      return;
    }
    size_t cap = o->cap ? o->cap : 4096;
    while (cap < o->n + (size_t)k + 1) cap *= 2;
    char *b = realloc(o->b, cap);
    if (!b) {
      o->failed = 1;
      return;
    }
    o->b = b, o->cap = cap;
  }
}

static void family(out *o, const char *name, const char *type, const char *help) {
  put(o, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void label_value(out *o, const char *v) {
  for (; *v; v++) {
    if (*v == '\\') put(o, "\\\\");
    else if (*v == '"') put(o, "\\\"");
    else if (*v == '\n') put(o, "\\n");
    else put(o, "%c", *v);
  }
}

static void histogram(out *o, const char *name, const char *help, const uint64_t *b, const double *le, unsigned nb,
                      double sum, uint64_t count) {
  family(o, name, "histogram", help);
  uint64_t cum = 0;
  for (unsigned i = 0; i < nb; i++) {
    cum += b[i];
    put(o, "%s_bucket{le=\"%g\"} %llu\n", name, le[i], (unsigned long long)cum);
  }
  cum += b[nb];
  put(o, "%s_bucket{le=\"+Inf\"} %llu\n", name, (unsigned long long)cum);
  put(o, "%s_sum %.15g\n", name, sum);
  put(o, "%s_count %llu\n", name, (unsigned long long)count);
}

static void counter(out *o, const char *name, const char *help, uint64_t v) {
  family(o, name, "counter", help);
  put(o, "%s %llu\n", name, (unsigned long long)v);
}

static void gauge(out *o, const char *name, const char *help, uint64_t v) {
  family(o, name, "gauge", help);
  put(o, "%s %llu\n", name, (unsigned long long)v);
}

char *srv_metrics_render(srv_metrics *m, const srv_gauges *g, size_t *len) {
  /* A copy taken under the lock; the text is written without it. */
  srv_metrics *c = malloc(sizeof *c);
  if (len) *len = 0;
  if (!c) return NULL;
  pthread_mutex_lock(&m->mu);
  memcpy(c, m, sizeof *c);
  pthread_mutex_unlock(&m->mu);
  srv_gauges gz = {0};
  if (!g) g = &gz;

  out o = {0};
  family(&o, "heed_requests_total", "counter", "HTTP requests answered, by endpoint and status.");
  for (unsigned i = 0; i < c->n_req; i++) {
    put(&o, "heed_requests_total{endpoint=\"");
    label_value(&o, c->req[i].endpoint);
    if (c->req[i].status == STATUS_ANY) put(&o, "\",status=\"other\"} %llu\n", (unsigned long long)c->req[i].n);
    else put(&o, "\",status=\"%d\"} %llu\n", c->req[i].status, (unsigned long long)c->req[i].n);
  }
  counter(&o, "heed_prompt_tokens_total", "Prompt tokens of finished requests.", c->prompt_tokens);
  counter(&o, "heed_generated_tokens_total", "Tokens generated.", c->generated_tokens);
  counter(&o, "heed_cached_prompt_tokens_total", "Prompt tokens found in the prefix cache.", c->cached_tokens);
  family(&o, "heed_cache_prompt_tokens_total", "counter",
         "Prompt tokens of finished requests by what the cache did: reused as they were, reused after a shift, "
         "restored from disk, recomputed.");
  put(&o, "heed_cache_prompt_tokens_total{how=\"reused\"} %llu\n",
      (unsigned long long)(c->cached_tokens - c->restored_tokens - c->shifted_tokens));
  put(&o, "heed_cache_prompt_tokens_total{how=\"shifted\"} %llu\n", (unsigned long long)c->shifted_tokens);
  put(&o, "heed_cache_prompt_tokens_total{how=\"restored\"} %llu\n", (unsigned long long)c->restored_tokens);
  put(&o, "heed_cache_prompt_tokens_total{how=\"recomputed\"} %llu\n",
      (unsigned long long)(c->prompt_tokens - c->cached_tokens));
  family(&o, "heed_cache_matches_total", "counter",
         "Requests by the source of their longest shared prefix: none, the cache, a running request, the disk tier.");
  static const char *src[] = {"none", "cache", "running", "disk"};
  for (int i = 0; i < 4; i++)
    put(&o, "heed_cache_matches_total{source=\"%s\"} %llu\n", src[i], (unsigned long long)c->matches[i]);
  family(&o, "heed_cache_evictions_total", "counter",
         "Cached sequences evicted; retained=\"1\": those of a session within its keep window (--session-keep).");
  put(&o, "heed_cache_evictions_total{retained=\"0\"} %llu\n", (unsigned long long)c->evictions[0]);
  put(&o, "heed_cache_evictions_total{retained=\"1\"} %llu\n", (unsigned long long)c->evictions[1]);
  counter(&o, "heed_draft_tokens_total", "Draft tokens proposed for verification.", c->draft_tokens);
  counter(&o, "heed_draft_accepted_total", "Draft tokens the model accepted.", c->draft_accepted);
  gauge(&o, "heed_queue_depth", "Requests waiting for a slot.", g->queued);
  gauge(&o, "heed_running_sequences", "Sequences generating now.", g->running);
  gauge(&o, "heed_kv_blocks_used", "KV cache blocks in use.", g->blocks_used);
  gauge(&o, "heed_kv_blocks_free", "KV cache blocks free.", g->blocks_free);
  gauge(&o, "heed_kv_block_tokens", "Tokens a KV cache block holds.", g->block_tokens);
  gauge(&o, "heed_cache_sequences", "Sequences the prefix cache keeps: finished ones, and prompts once prefilled.", g->cache_seqs);
  if (g->disk) {
    gauge(&o, "heed_cache_disk_blocks", "KV blocks in the disk tier's files (--cache-dir).", g->disk_files);
    gauge(&o, "heed_cache_disk_bytes", "Bytes of the disk tier's files.", g->disk_bytes);
    gauge(&o, "heed_cache_disk_limit_bytes", "The disk tier's limit (--cache-disk).", g->disk_limit);
    family(&o, "heed_cache_disk_blocks_total", "counter",
           "Disk tier blocks by event: written, read back, deleted for room, deleted as corrupt or foreign.");
    put(&o, "heed_cache_disk_blocks_total{event=\"written\"} %llu\n", (unsigned long long)g->disk_written);
    put(&o, "heed_cache_disk_blocks_total{event=\"read\"} %llu\n", (unsigned long long)g->disk_read);
    put(&o, "heed_cache_disk_blocks_total{event=\"evicted\"} %llu\n", (unsigned long long)g->disk_evicted);
    put(&o, "heed_cache_disk_blocks_total{event=\"deleted_bad\"} %llu\n", (unsigned long long)g->disk_deleted_bad);
  }
  histogram(&o, "heed_time_to_first_token_seconds", "Seconds from a request's arrival to its first token.",
            c->ttft_b, TTFT_LE, SRV_TTFT_BUCKETS, c->ttft_sum, c->ttft_n);
  histogram(&o, "heed_time_per_output_token_seconds", "Seconds per generated token after the first.", c->tpot_b,
            TPOT_LE, SRV_TPOT_BUCKETS, c->tpot_sum, c->tpot_n);
  free(c);
  if (o.failed) {
    free(o.b);
    return NULL;
  }
  if (len) *len = o.n;
  return o.b;
}
