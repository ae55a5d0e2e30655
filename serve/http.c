/* serve/http.c - libmicrohttpd glue: connections, limits, auth, routing.
 *
 * A request's life: MHD calls on_request with the headers (auth, the declared
 * size checked, 413 before the body is read), again with each piece of body
 * (kept up to --max-body; past it, or past the upload deadline, the rest is
 * dropped), and a last time when it is complete. Then the route runs:
 * generation requests are parsed (api.c), tokenized, checked against the
 * context and submitted to the engine; the handler then blocks in its own
 * connection thread (thread per connection) on the job, polling the socket
 * for a hang-up, or streams from a content callback that blocks the same way.
 * A client that goes away cancels its job: the engine frees its KV within a
 * step. */
#include <cjson/cJSON.h>
#include <errno.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#include "heed/chat.h"
#include "heed/tokenizer.h"
#include "serve/serve_internal.h"

struct heed_server {
  heed_model *m;
  const heed_tokenizer *tok;
  heed_chat *chat;
  heed_serve_options o;
  char *model_name;
  char *keys[HEED_SERVE_MAX_KEYS];
  size_t key_len[HEED_SERVE_MAX_KEYS];
  unsigned n_keys;
  unsigned n_ctx;
  long created;
  struct MHD_Daemon *d;
  unsigned port;
  srv_engine *eng;
  srv_metrics mx;
};

typedef struct req {
  char *body;
  size_t len, cap;
  int too_large, too_slow;
  double t_start;
  int anthropic;  /* the error shape: Anthropic's on /v1/messages* */
  const char *endpoint;
} req;

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

void heed_serve_options_init(heed_serve_options *o) { memset(o, 0, sizeof *o); }

static unsigned opt_slots(const heed_serve_options *o) { return o->slots ? o->slots : 4; }
static unsigned opt_entries(const heed_serve_options *o) { return o->cache_entries ? o->cache_entries : 64; }

unsigned heed_serve_max_seqs(const heed_serve_options *o) {
  return opt_slots(o) + (o->cache_bytes ? opt_entries(o) : 0);
}

size_t heed_serve_kv_tokens(const heed_serve_options *o, unsigned n_ctx, double kv_bytes_per_token) {
  size_t t = (size_t)opt_slots(o) * n_ctx;
  if (o->cache_bytes && kv_bytes_per_token > 0) t += (size_t)((double)o->cache_bytes / kv_bytes_per_token);
  return t;
}

/* ---------- responses ---------- */

/* text (malloc'd, taken) as the response, with one extra header when hname is given. */
static enum MHD_Result send_text(struct MHD_Connection *c, int status, const char *type, char *text,
                                 const char *hname, const char *hval) {
  if (!text) {
    text = strdup("{\"error\":{\"message\":\"out of memory\",\"type\":\"api_error\",\"param\":null,\"code\":null}}");
    status = 500;
    if (!text) return MHD_NO;
  }
  struct MHD_Response *r = MHD_create_response_from_buffer(strlen(text), text, MHD_RESPMEM_MUST_FREE);
  if (!r) {
    free(text);
    return MHD_NO;
  }
  MHD_add_response_header(r, "Content-Type", type);
  if (hname) MHD_add_response_header(r, hname, hval);
  enum MHD_Result ret = MHD_queue_response(c, (unsigned)status, r);
  MHD_destroy_response(r);
  return ret;
}

static enum MHD_Result send_json(heed_server *s, struct MHD_Connection *c, req *q, int status, char *json) {
  srv_metrics_request(&s->mx, q->endpoint, status);
  return send_text(c, status, "application/json", json, NULL, NULL);
}

static enum MHD_Result send_error(heed_server *s, struct MHD_Connection *c, req *q, int status, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
static enum MHD_Result send_error(heed_server *s, struct MHD_Connection *c, req *q, int status, const char *fmt, ...) {
  char msg[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  srv_metrics_request(&s->mx, q->endpoint, status);
  int retry = status == 429 || status == 503;
  return send_text(c, status, "application/json", srv_error_body(q->anthropic, status, msg), retry ? "Retry-After" : NULL,
                   "1");
}

/* ---------- auth ---------- */

/* Compares every key in full, whatever matched, so the time says nothing. */
static int key_index(const heed_server *s, const char *given) {
  size_t gl = given ? strlen(given) : 0;
  int found = -1;
  for (unsigned i = 0; i < s->n_keys; i++) {
    size_t kl = s->key_len[i];
    volatile unsigned char diff = (unsigned char)(gl != kl);
    for (size_t k = 0; k < kl; k++) diff |= (unsigned char)(s->keys[i][k] ^ (k < gl ? given[k] : 0));
    if (!diff && found < 0) found = (int)i;
  }
  return found;
}

/* -1: no key or a wrong one; else the key's index (0 when no keys are set). */
static int authenticate(heed_server *s, struct MHD_Connection *c) {
  if (!s->n_keys) return 0;
  const char *a = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Authorization");
  const char *x = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "x-api-key");
  if (a && strncasecmp(a, "Bearer ", 7) == 0) {
    a += 7;
    while (*a == ' ') a++;
    int k = key_index(s, a);
    if (k >= 0) return k;
  }
  return x ? key_index(s, x) : -1;
}

/* ---------- waiting on a job ---------- */

/* 1 when the client hung up (its socket reads as closed). */
static int client_gone(struct MHD_Connection *c) {
  const union MHD_ConnectionInfo *ci = MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
  if (!ci) return 0;
  struct pollfd p = {.fd = ci->connect_fd, .events = POLLRDHUP};
  return poll(&p, 1, 0) > 0 && (p.revents & (POLLRDHUP | POLLHUP | POLLERR));
}

/* Copies what is new in j into snap (under the lock), advancing *text_at and
 * *lp_at; the copies are the caller's (free snap->text). */
static void take_snapshot(srv_job *j, size_t *text_at, size_t *lp_at, srv_snapshot *snap, char **text,
                          srv_token_lp **lps, char **lp_text) {
  memset(snap, 0, sizeof *snap);
  size_t nt = j->text_len - *text_at, nl = j->n_lps - *lp_at;
  *text = nt ? malloc(nt) : NULL;
  if (*text) memcpy(*text, j->text + *text_at, nt);
  else nt = 0;
  *lps = nl ? malloc(nl * sizeof **lps) : NULL;
  if (*lps) memcpy(*lps, j->lps + *lp_at, nl * sizeof **lps);
  else nl = 0;
  *lp_text = nl && j->lp_text_len ? malloc(j->lp_text_len) : NULL;
  if (*lp_text) memcpy(*lp_text, j->lp_text, j->lp_text_len);
  *text_at += nt, *lp_at += nl;
  snap->text = *text, snap->text_len = nt;
  snap->lps = *lps, snap->n_lps = nl;
  snap->lp_text = *lp_text ? *lp_text : "";
  snap->finish = j->finish;
  snap->stop_index = j->stop_index;
  snap->err = j->err;
  snap->n_prompt = j->n_prompt, snap->n_cached = j->n_cached, snap->n_generated = j->n_generated;
  snap->cache = j->cache.done ? &j->cache : NULL;
}

/* Under the lock: waits up to 50 ms for j to change, then watches the client
 * (c may be NULL): a hang-up cancels the job. */
static void wait_a_moment(heed_server *s, struct MHD_Connection *c, srv_job *j) {
  pthread_mutex_t *mu = srv_engine_lock(s->eng);
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  ts.tv_nsec += 50 * 1000 * 1000;
  if (ts.tv_nsec >= 1000000000) ts.tv_sec++, ts.tv_nsec -= 1000000000;
  pthread_cond_timedwait(&j->cv, mu, &ts);
  if (!j->finish && !j->cancel && c && client_gone(c)) {
    pthread_mutex_unlock(mu);
    srv_engine_cancel(s->eng, j);
    pthread_mutex_lock(mu);
  }
}

/* Blocks until j is admitted (its cache report made) or finished, or max_s
 * seconds have gone by, watching the client as wait_job does. Under the lock. */
static void wait_admitted(heed_server *s, struct MHD_Connection *c, srv_job *j, double max_s) {
  double until = now_s() + max_s;
  while (!j->finish && !j->cache.done && now_s() < until) wait_a_moment(s, c, j);
}

/* Blocks until j has something past text_at/lp_at or is finished (1), or
 * until max_s seconds have gone by without (0; max_s <= 0: no limit),
 * watching the client: a hang-up cancels the job. Under the lock. */
static int wait_job(heed_server *s, struct MHD_Connection *c, srv_job *j, size_t text_at, size_t lp_at,
                    double max_s) {
  double until = max_s > 0 ? now_s() + max_s : 0;
  while (!j->finish && j->text_len == text_at && j->n_lps == lp_at) {
    if (until && now_s() >= until) return 0;
    wait_a_moment(s, c, j);
  }
  return 1;
}

/* ---------- streaming ---------- */

typedef struct stream {
  heed_server *s;
  struct MHD_Connection *c;
  srv_job *j; /* owns the params the reply reads */
  srv_reply r;
  size_t text_at, lp_at;
  const char *endpoint;
  int counted;
} stream;

/* How long a stream waits in silence before it sends a keep-alive: well
 * within the idle timeout, and at most 15 s. */
static double keepalive_s(const heed_server *s) {
  double t = s->o.timeout_s / 3.0;
  return t < 15 ? t : 15;
}

static ssize_t stream_read(void *cls, uint64_t pos, char *buf, size_t max) {
  (void)pos;
  stream *st = cls;
  srv_reply *r = &st->r;
  while (r->out_pos == r->out_len) {
    if (r->ended) return MHD_CONTENT_READER_END_OF_STREAM;
    r->out_len = r->out_pos = 0;
    pthread_mutex_t *mu = srv_engine_lock(st->s->eng);
    pthread_mutex_lock(mu);
    if (!wait_job(st->s, st->c, st->j, st->text_at, st->lp_at, keepalive_s(st->s))) {
      /* Nothing yet (a long prompt still in prefill, or a queue): bytes keep
       * the connection alive, since the idle timeout (--timeout) counts from
       * the last byte sent. Clients skip both: an SSE comment, Anthropic's ping. */
      pthread_mutex_unlock(mu);
      static const char oa[] = ": keep-alive\n\n", an[] = "event: ping\ndata: {\"type\": \"ping\"}\n\n";
      const char *ka = r->api == SRV_API_MESSAGES ? an : oa;
      size_t n = strlen(ka) < max ? strlen(ka) : max;
      memcpy(buf, ka, n); /* max is MHD's block size (16 KiB), never this short */
      return (ssize_t)n;
    }
    srv_snapshot snap;
    char *text;
    srv_token_lp *lps;
    char *lp_text;
    take_snapshot(st->j, &st->text_at, &st->lp_at, &snap, &text, &lps, &lp_text);
    pthread_mutex_unlock(mu);
    srv_reply_stream(r, &snap);
    free(text), free(lps), free(lp_text);
  }
  size_t n = r->out_len - r->out_pos < max ? r->out_len - r->out_pos : max;
  memcpy(buf, r->out + r->out_pos, n);
  r->out_pos += n;
  return (ssize_t)n;
}

static void stream_free(void *cls) {
  stream *st = cls;
  /* a stream that did not end is a client gone: the engine drops the job */
  srv_reply_free(&st->r);
  srv_engine_release(st->s->eng, st->j);
  free(st);
}

/* ---------- generation ---------- */

/* The prefix-cache partition of a request made with key (key_index's answer). */
static uint64_t tenant_of(const heed_server *s, int key) {
  return s->o.cache_share || s->n_keys < 2 ? 0 : (uint64_t)key + 1;
}

static enum MHD_Result generate(heed_server *s, struct MHD_Connection *c, req *q, srv_api api, int key) {
  srv_params p;
  heed_error e = {0};
  if (srv_parse_request(api, q->body ? q->body : "", q->len, &p, &e))
    return send_error(s, c, q, 400, "%s", e.msg);
  if (s->o.strict_model && p.model && strcmp(p.model, s->model_name) != 0) {
    enum MHD_Result r = send_error(s, c, q, 404, "the model '%s' is not served here; this server serves '%s'", p.model,
                                   s->model_name);
    srv_params_free(&p);
    return r;
  }
  heed_tokens ids = {0};
  heed_status st;
  if (api == SRV_API_COMPLETIONS)
    st = heed_tokenizer_encode(s->tok, p.prompt, p.prompt_len, HEED_TOKENIZE_ADD_SPECIAL, &ids, &e);
  else
    st = heed_chat_prompt(s->chat, p.chat_json, strlen(p.chat_json), NULL, NULL, &ids, &e);
  if (st || !ids.n) {
    enum MHD_Result r = st ? send_error(s, c, q, 400, "%s", e.msg) : send_error(s, c, q, 400, "the prompt is empty");
    heed_tokens_free(&ids);
    srv_params_free(&p);
    return r;
  }
  size_t n = ids.n;
  long max_new;
  if (p.max_tokens > 0 && n + (size_t)p.max_tokens > s->n_ctx) {
    enum MHD_Result r = send_error(s, c, q, 400,
                                   "the prompt has %zu tokens and max_tokens is %ld: %zu in all, over the context of "
                                   "%u tokens (--ctx)", n, p.max_tokens, n + (size_t)p.max_tokens, s->n_ctx);
    heed_tokens_free(&ids);
    srv_params_free(&p);
    return r;
  }
  if (p.max_tokens > 0) {
    max_new = p.max_tokens;
  } else if (n >= s->n_ctx) {
    enum MHD_Result r = send_error(s, c, q, 400,
                                   "the prompt has %zu tokens; the context holds %u (--ctx), with room for at least "
                                   "one more to generate", n, s->n_ctx);
    heed_tokens_free(&ids);
    srv_params_free(&p);
    return r;
  } else {
    max_new = (long)(s->n_ctx - n);
  }
  uint64_t tenant = tenant_of(s, key);
  int stream_it = p.stream;
  /* chunk reuse for this request (x-heed-cache-reuse), else the server's */
  const char *ru = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "x-heed-cache-reuse");
  int reuse = -1;
  if (ru && (reuse = !strcmp(ru, "chunks") ? 1 : !strcmp(ru, "off") ? 0 : -2) == -2) {
    enum MHD_Result r = send_error(s, c, q, 400, "x-heed-cache-reuse: '%.40s'; accepted: off, chunks", ru);
    heed_tokens_free(&ids);
    srv_params_free(&p);
    return r;
  }
  /* the job owns the params from here on: the engine may read them after this
   * handler (or the stream) has let go of the job */
  srv_job *j = srv_job_new(&p, ids.ids, n, (unsigned)max_new, tenant);
  ids.ids = NULL;
  if (!j) return send_error(s, c, q, 500, "out of memory");
  srv_reply_new_id(api, j->origin, sizeof j->origin);
  j->reuse = reuse;
  /* the session: the X-Session-Id header, else the body's user (only a hash is kept) */
  const char *sid = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "X-Session-Id");
  if (!sid || !*sid) sid = j->p.user;
  j->session = sid ? srv_session_id(tenant, sid, strlen(sid)) : 0;
  stream *sm = NULL;
  if (stream_it && !(sm = calloc(1, sizeof *sm))) {
    srv_job_free(j);
    return send_error(s, c, q, 500, "out of memory");
  }
  if (srv_engine_submit(s->eng, j) != HEED_OK) {
    srv_job_free(j);
    free(sm);
    return send_error(s, c, q, 429, "the server is busy: %u requests are running and the queue is full; retry later",
                      opt_slots(&s->o));
  }
  const srv_params *pp = &j->p;
  pthread_mutex_t *mu = srv_engine_lock(s->eng);
  if (stream_it) {
    sm->s = s, sm->c = c, sm->j = j, sm->endpoint = q->endpoint;
    srv_reply_init(&sm->r, api, pp, s->model_name);
    snprintf(sm->r.id, sizeof sm->r.id, "%s", j->origin);
    sm->r.tok = s->tok;
    /* The headers wait for the request's admission, so that x-heed-cache can
     * say what the cache did, but no longer than a keep-alive's interval: a
     * request still queued then starts its stream without the header (the
     * final event's heed_cache has it all the same) and gets keep-alives. */
    char hdr[256] = "";
    pthread_mutex_lock(mu);
    wait_admitted(s, c, j, keepalive_s(s));
    if (j->cache.done) srv_cache_report_header(&j->cache, hdr, sizeof hdr);
    pthread_mutex_unlock(mu);
    struct MHD_Response *r = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 16384, stream_read, sm, stream_free);
    if (!r) {
      stream_free(sm);
      return MHD_NO;
    }
    MHD_add_response_header(r, "Content-Type", "text/event-stream");
    MHD_add_response_header(r, "Cache-Control", "no-cache");
    if (*hdr) MHD_add_response_header(r, "x-heed-cache", hdr);
    srv_metrics_request(&s->mx, q->endpoint, 200);
    enum MHD_Result ret = MHD_queue_response(c, MHD_HTTP_OK, r);
    MHD_destroy_response(r);
    return ret;
  }
  srv_reply rp;
  srv_reply_init(&rp, api, pp, s->model_name);
  snprintf(rp.id, sizeof rp.id, "%s", j->origin);
  rp.tok = s->tok;
  size_t text_at = 0, lp_at = 0;
  char *body = NULL;
  int status = 500;
  for (;;) {
    pthread_mutex_lock(mu);
    wait_job(s, c, j, text_at, lp_at, 0);
    srv_snapshot snap;
    char *text;
    srv_token_lp *lps;
    char *lp_text;
    take_snapshot(j, &text_at, &lp_at, &snap, &text, &lps, &lp_text);
    pthread_mutex_unlock(mu);
    srv_reply_feed(&rp, &snap);
    if (snap.finish) body = srv_reply_body(&rp, &snap, &status);
    free(text), free(lps), free(lp_text);
    if (snap.finish) break;
  }
  char hdr[256] = "";
  if (j->cache.done) srv_cache_report_header(&j->cache, hdr, sizeof hdr); /* fixed once admitted */
  srv_reply_free(&rp);
  srv_engine_release(s->eng, j);
  srv_metrics_request(&s->mx, q->endpoint, status);
  return send_text(c, status, "application/json", body, *hdr ? "x-heed-cache" : NULL, hdr);
}

/* ---------- the other endpoints ---------- */

static enum MHD_Result tokenize(heed_server *s, struct MHD_Connection *c, req *q, int anthropic) {
  char *chat_json = NULL, *content = NULL;
  heed_error e = {0};
  if (srv_parse_tokenize(q->body ? q->body : "", q->len, anthropic, &chat_json, &content, &e))
    return send_error(s, c, q, 400, "%s", e.msg);
  heed_tokens ids = {0};
  heed_template_text tt = {0};
  heed_status st;
  if (chat_json) st = heed_chat_prompt(s->chat, chat_json, strlen(chat_json), NULL, &tt, &ids, &e);
  else st = heed_tokenizer_encode(s->tok, content, strlen(content), 0, &ids, &e);
  if (st) {
    free(chat_json), free(content);
    heed_tokens_free(&ids);
    return send_error(s, c, q, 400, "%s", e.msg);
  }
  cJSON *o = cJSON_CreateObject();
  if (anthropic) {
    cJSON_AddNumberToObject(o, "input_tokens", (double)ids.n);
  } else {
    cJSON *a = cJSON_AddArrayToObject(o, "ids");
    for (size_t i = 0; i < ids.n; i++) cJSON_AddItemToArray(a, cJSON_CreateNumber(ids.ids[i]));
    if (chat_json) {
      cJSON_AddStringToObject(o, "text", tt.text ? tt.text : "");
    } else {
      cJSON_AddStringToObject(o, "text", content);
    }
  }
  heed_template_text_free(&tt);
  heed_tokens_free(&ids);
  free(chat_json), free(content);
  char *out = cJSON_PrintUnformatted(o);
  cJSON_Delete(o);
  return send_json(s, c, q, 200, out);
}

static enum MHD_Result detokenize(heed_server *s, struct MHD_Connection *c, req *q) {
  cJSON *o = cJSON_ParseWithLength(q->body ? q->body : "", q->len);
  cJSON *t = o ? cJSON_GetObjectItem(o, "tokens") : NULL;
  if (!cJSON_IsArray(t)) {
    cJSON_Delete(o);
    return send_error(s, c, q, 400, "tokens must be an array of token ids");
  }
  int n = cJSON_GetArraySize(t);
  int32_t *ids = malloc(((size_t)n + 1) * sizeof *ids);
  heed_tokenizer_info info;
  heed_tokenizer_get_info(s->tok, &info);
  int i = 0;
  cJSON *it;
  cJSON_ArrayForEach(it, t) {
    double v = cJSON_GetNumberValue(it);
    if (!cJSON_IsNumber(it) || v != (double)(int32_t)v || v < 0 || v >= (double)info.n_tokens) {
      free(ids);
      cJSON_Delete(o);
      return send_error(s, c, q, 400, "tokens[%d] must be a token id in 0..%u", i, info.n_tokens - 1);
    }
    ids[i++] = (int32_t)v;
  }
  cJSON_Delete(o);
  size_t len = 0, cap = (size_t)n * (info.max_piece + 3) + 16;
  char *buf = malloc(cap);
  heed_error e = {0};
  heed_status st = heed_tokenizer_decode(s->tok, ids, (size_t)n, HEED_DETOK_REPLACE, buf, cap, &len, &e);
  if (st == HEED_E_TOO_SMALL) {
    free(buf);
    cap = len + 1;
    buf = malloc(cap);
    st = heed_tokenizer_decode(s->tok, ids, (size_t)n, HEED_DETOK_REPLACE, buf, cap, &len, &e);
  }
  free(ids);
  if (st) {
    free(buf);
    return send_error(s, c, q, 400, "%s", e.msg);
  }
  buf[len] = 0;
  o = cJSON_CreateObject();
  cJSON_AddStringToObject(o, "content", buf);
  free(buf);
  char *out = cJSON_PrintUnformatted(o);
  cJSON_Delete(o);
  return send_json(s, c, q, 200, out);
}

static enum MHD_Result models(heed_server *s, struct MHD_Connection *c, req *q) {
  cJSON *o = cJSON_CreateObject(), *a = cJSON_CreateArray(), *m = cJSON_CreateObject();
  cJSON_AddStringToObject(o, "object", "list");
  cJSON_AddStringToObject(m, "id", s->model_name);
  cJSON_AddStringToObject(m, "object", "model");
  cJSON_AddStringToObject(m, "type", "model");
  cJSON_AddStringToObject(m, "display_name", s->model_name);
  cJSON_AddNumberToObject(m, "created", (double)s->created);
  cJSON_AddStringToObject(m, "owned_by", "heed");
  cJSON_AddNumberToObject(m, "context_length", s->n_ctx);
  cJSON_AddItemToArray(a, m);
  cJSON_AddItemToObject(o, "data", a);
  char *out = cJSON_PrintUnformatted(o);
  cJSON_Delete(o);
  return send_json(s, c, q, 200, out);
}

static enum MHD_Result metrics(heed_server *s, struct MHD_Connection *c, req *q) {
  srv_engine_stats st;
  srv_engine_get_stats(s->eng, &st);
  srv_gauges g = {.queued = st.queued, .running = st.running, .cache_seqs = st.cache_seqs,
                  .blocks_used = st.blocks - st.blocks_free, .blocks_free = st.blocks_free,
                  .block_tokens = st.block_tokens};
  if (st.disk)
    g.disk = 1, g.disk_files = st.disk_st.files, g.disk_bytes = st.disk_st.bytes, g.disk_limit = st.disk_st.limit,
    g.disk_written = st.disk_st.written, g.disk_read = st.disk_st.read, g.disk_evicted = st.disk_st.evicted,
    g.disk_deleted_bad = st.disk_st.deleted_bad;
  srv_metrics_request(&s->mx, q->endpoint, 200);
  size_t len;
  char *text = srv_metrics_render(&s->mx, &g, &len);
  return send_text(c, 200, "text/plain; version=0.0.4", text, NULL, NULL);
}

/* ---------- routing ---------- */

typedef enum route {
  R_CHAT, R_COMPLETIONS, R_MESSAGES, R_COUNT, R_TOKENIZE, R_DETOKENIZE, R_MODELS, R_HEALTH, R_METRICS, R_CACHE, R_NONE
} route;

static const struct {
  const char *path, *method;
  route r;
} routes[] = {
    {"/v1/chat/completions", "POST", R_CHAT},  {"/v1/completions", "POST", R_COMPLETIONS},
    {"/v1/messages", "POST", R_MESSAGES},      {"/v1/messages/count_tokens", "POST", R_COUNT},
    {"/tokenize", "POST", R_TOKENIZE},         {"/detokenize", "POST", R_DETOKENIZE},
    {"/v1/models", "GET", R_MODELS},           {"/health", "GET", R_HEALTH},
    {"/metrics", "GET", R_METRICS},           {"/v1/cache", "GET", R_CACHE},
};

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url, const char *method,
                                  const char *version, const char *upload, size_t *upload_size, void **con_cls) {
  (void)version;
  heed_server *s = cls;
  req *q = *con_cls;
  if (!q) {
    q = calloc(1, sizeof *q);
    if (!q) return MHD_NO;
    *con_cls = q;
    q->t_start = now_s();
    q->anthropic = strncmp(url, "/v1/messages", 12) == 0;
    q->endpoint = "other";
    for (size_t i = 0; i < sizeof routes / sizeof routes[0]; i++)
      if (strcmp(url, routes[i].path) == 0) q->endpoint = routes[i].path;
    /* refused before the body is read: the client need not send it */
    const char *cl = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Content-Length");
    if (cl) {
      char *end;
      errno = 0;
      unsigned long long v = strtoull(cl, &end, 10);
      if (errno || *end || v > s->o.max_body) {
        q->too_large = 1;
        return send_error(s, c, q, 413, "the request body has %s bytes; this server takes at most %zu (--max-body)",
                          cl, s->o.max_body);
      }
    }
    return MHD_YES;
  }
  if (*upload_size) {
    if (!q->too_large && !q->too_slow) {
      if (now_s() - q->t_start > s->o.timeout_s) {
        q->too_slow = 1;
      } else if (q->len + *upload_size > s->o.max_body) {
        q->too_large = 1;
      } else {
        if (q->len + *upload_size + 1 > q->cap) {
          size_t cap = q->cap ? q->cap : 4096;
          while (cap < q->len + *upload_size + 1) cap *= 2;
          char *b = realloc(q->body, cap);
          if (!b) return MHD_NO;
          q->body = b, q->cap = cap;
        }
        memcpy(q->body + q->len, upload, *upload_size);
        q->len += *upload_size;
        q->body[q->len] = 0;
      }
    }
    *upload_size = 0;
    /* a body trickling in past the deadline: the connection is closed */
    return q->too_slow ? MHD_NO : MHD_YES;
  }
  if (q->too_large)
    return send_error(s, c, q, 413, "the request body is over %zu bytes (--max-body)", s->o.max_body);
  route r = R_NONE;
  int path_known = 0;
  for (size_t i = 0; i < sizeof routes / sizeof routes[0]; i++)
    if (strcmp(url, routes[i].path) == 0) {
      path_known = 1;
      if (strcmp(method, routes[i].method) == 0) r = routes[i].r;
    }
  if (r == R_HEALTH) {
    srv_metrics_request(&s->mx, q->endpoint, 200);
    return send_text(c, 200, "application/json", strdup("{\"status\":\"ok\"}"), NULL, NULL);
  }
  int key = authenticate(s, c);
  if (key < 0)
    return send_error(s, c, q, 401,
                      "a valid API key is needed: send it as 'Authorization: Bearer KEY' or 'x-api-key: KEY'");
  if (r == R_NONE) {
    if (path_known) return send_error(s, c, q, 405, "%s does not take %s", url, method);
    return send_error(s, c, q, 404, "no such endpoint: %s %s", method, url);
  }
  switch (r) {
  case R_CHAT: return generate(s, c, q, SRV_API_CHAT, key);
  case R_COMPLETIONS: return generate(s, c, q, SRV_API_COMPLETIONS, key);
  case R_MESSAGES: return generate(s, c, q, SRV_API_MESSAGES, key);
  case R_COUNT: return tokenize(s, c, q, 1);
  case R_TOKENIZE: return tokenize(s, c, q, 0);
  case R_DETOKENIZE: return detokenize(s, c, q);
  case R_MODELS: return models(s, c, q);
  case R_METRICS: return metrics(s, c, q);
  case R_CACHE: /* the caller's own partition only: another key's cache is none of its business */
    return send_json(s, c, q, 200, srv_engine_cache_list(s->eng, tenant_of(s, key)));
  default: return send_error(s, c, q, 404, "no such endpoint: %s %s", method, url);
  }
}

static void on_done(void *cls, struct MHD_Connection *c, void **con_cls, enum MHD_RequestTerminationCode toe) {
  (void)cls, (void)c, (void)toe;
  req *q = *con_cls;
  if (!q) return;
  free(q->body);
  free(q);
  *con_cls = NULL;
}

/* ---------- start, stop ---------- */

heed_status heed_serve_start(heed_model *m, const heed_serve_options *o, heed_server **out, heed_error *err) {
  *out = NULL;
  heed_server *s = calloc(1, sizeof *s);
  if (!s) return heed_err_set(err, HEED_E_NOMEM, "serve: out of memory");
  s->m = m;
  s->o = *o;
  if (!s->o.host) s->o.host = "127.0.0.1";
  s->o.slots = opt_slots(o);
  if (!s->o.max_queue) s->o.max_queue = 64;
  if (!s->o.timeout_s) s->o.timeout_s = 60;
  if (!s->o.max_body) s->o.max_body = 64u << 20;
  s->tok = heed_model_tokenizer(m);
  s->n_ctx = heed_model_get_options(m)->n_ctx;
  s->created = (long)time(NULL);
  srv_metrics_init(&s->mx);
  heed_status st;
  for (unsigned i = 0; i < o->n_keys && i < HEED_SERVE_MAX_KEYS; i++) {
    s->keys[s->n_keys] = strdup(o->keys[i]);
    s->key_len[s->n_keys] = strlen(o->keys[i]);
    s->n_keys++;
  }
  s->model_name = strdup(o->model_name ? o->model_name : "heed");
  if ((st = heed_chat_open(heed_model_gguf(m), s->tok, o->chat_template, &s->chat, err))) goto fail;
  srv_engine_config ec = {.slots = s->o.slots, .max_queue = s->o.max_queue, .draft_k = o->draft_k,
                          .cache_bytes = o->cache_bytes, .cache_entries = o->cache_bytes ? opt_entries(o) : 0,
                          .session_keep_s = o->session_keep_s < 0 ? 0 : o->session_keep_s ? o->session_keep_s : 600,
                          .cache_dir = o->cache_dir, .cache_disk = o->cache_disk ? o->cache_disk : 16ull << 30,
                          .cache_reuse = o->cache_reuse != 0, .reuse_boundary = o->reuse_boundary ? o->reuse_boundary : 8};
  if ((st = srv_engine_start(m, &ec, &s->mx, &s->eng, err))) goto fail;
  /* the address: IPv4 or IPv6 literal */
  struct sockaddr_storage ss;
  memset(&ss, 0, sizeof ss);
  unsigned flags = MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ERROR_LOG;
  struct sockaddr_in *v4 = (struct sockaddr_in *)&ss;
  struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)&ss;
  if (inet_pton(AF_INET, s->o.host, &v4->sin_addr) == 1) {
    v4->sin_family = AF_INET;
    v4->sin_port = htons((uint16_t)o->port);
  } else if (inet_pton(AF_INET6, s->o.host, &v6->sin6_addr) == 1) {
    v6->sin6_family = AF_INET6;
    v6->sin6_port = htons((uint16_t)o->port);
    flags |= MHD_USE_IPv6;
  } else {
    st = heed_err_set(err, HEED_E_INVALID, "serve: --host %s is not an IPv4 or IPv6 address", s->o.host);
    goto fail;
  }
  if (o->port > 65535) {
    st = heed_err_set(err, HEED_E_INVALID, "serve: --port %u (0..65535)", o->port);
    goto fail;
  }
  s->d = MHD_start_daemon(flags, (uint16_t)o->port, NULL, NULL, on_request, s, MHD_OPTION_SOCK_ADDR, &ss,
                          MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)s->o.timeout_s, MHD_OPTION_NOTIFY_COMPLETED,
                          on_done, s, MHD_OPTION_CONNECTION_LIMIT, 512u, MHD_OPTION_END);
  if (!s->d) {
    st = heed_err_set(err, HEED_E_IO, "serve: cannot listen on %s port %u: %s", s->o.host, o->port, strerror(errno));
    goto fail;
  }
  const union MHD_DaemonInfo *di = MHD_get_daemon_info(s->d, MHD_DAEMON_INFO_BIND_PORT);
  s->port = di ? di->port : o->port;
  *out = s;
  return HEED_OK;
fail:
  heed_serve_stop(s);
  return st;
}

unsigned heed_serve_port(const heed_server *s) { return s ? s->port : 0; }

void heed_serve_stop(heed_server *s) {
  if (!s) return;
  /* running requests are cut first (their handlers then answer and return),
   * then the connections close, then the engine's memory goes */
  srv_engine_halt(s->eng);
  if (s->d) MHD_stop_daemon(s->d);
  srv_engine_stop(s->eng);
  heed_chat_free(s->chat);
  srv_metrics_destroy(&s->mx);
  for (unsigned i = 0; i < s->n_keys; i++) free(s->keys[i]);
  free(s->model_name);
  free(s);
}
