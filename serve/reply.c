/* serve/reply.c - a job's output as each API writes it.
 *
 * OpenAI chat completions and completions (one JSON body, or "data:" chunks
 * ending in [DONE]) and Anthropic messages (one body, or the event sequence
 * message_start, content_block_start/delta/stop per block, message_delta,
 * message_stop). Generated text first goes through the tool-call scanner when
 * the request offered tools, so calls come out as tool_calls / tool_use
 * blocks, also while streaming. */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "heed/tokenizer.h"
#include "serve/serve_internal.h"

const char *srv_error_type(int status) {
  switch (status) {
  case 400: return "invalid_request_error";
  case 401: return "authentication_error";
  case 403: return "permission_error";
  case 404: return "not_found_error";
  case 408: return "timeout_error";
  case 413: return "request_too_large";
  case 429: return "rate_limit_error";
  case 503: return "overloaded_error";
  default: return status >= 500 ? "api_error" : "invalid_request_error";
  }
}

char *srv_error_body(int anthropic, int status, const char *message) {
  cJSON *o = cJSON_CreateObject(), *e = cJSON_CreateObject();
  if (anthropic) cJSON_AddStringToObject(o, "type", "error");
  cJSON_AddStringToObject(e, "type", srv_error_type(status));
  cJSON_AddStringToObject(e, "message", message);
  if (!anthropic) {
    cJSON_AddNullToObject(e, "param");
    cJSON_AddNullToObject(e, "code");
  }
  cJSON_AddItemToObject(o, "error", e);
  char *s = cJSON_PrintUnformatted(o);
  cJSON_Delete(o);
  return s;
}

static void out_add(srv_reply *r, const char *s, size_t n) {
  if (r->out_len + n + 1 > r->out_cap) {
    size_t c = r->out_cap ? r->out_cap : 4096;
    while (c < r->out_len + n + 1) c *= 2;
    char *o = realloc(r->out, c);
    if (!o) return;
    r->out = o, r->out_cap = c;
  }
  memcpy(r->out + r->out_len, s, n);
  r->out_len += n;
  r->out[r->out_len] = 0;
}

/* One server-sent event; event NULL: data only (OpenAI). Takes o. */
static void sse(srv_reply *r, const char *event, cJSON *o) {
  char *s = cJSON_PrintUnformatted(o);
  cJSON_Delete(o);
  if (!s) return;
  if (event) {
    out_add(r, "event: ", 7);
    out_add(r, event, strlen(event));
    out_add(r, "\n", 1);
  }
  out_add(r, "data: ", 6);
  out_add(r, s, strlen(s));
  out_add(r, "\n\n", 2);
  free(s);
}

void srv_reply_init(srv_reply *r, srv_api api, const srv_params *p, const char *model) {
  memset(r, 0, sizeof *r);
  r->api = api, r->p = p, r->model = model;
  r->created = (long)time(NULL);
  srv_reply_new_id(api, r->id, sizeof r->id);
  srv_toolscan_init(&r->ts, p && p->tools && api != SRV_API_COMPLETIONS);
  r->lp_json = cJSON_CreateArray();
}

void srv_reply_new_id(srv_api api, char *id, size_t cap) {
  static const char *prefix[] = {"chatcmpl-", "cmpl-", "msg_"};
  unsigned char b[12];
  FILE *f = fopen("/dev/urandom", "rb");
  if (!f || fread(b, 1, sizeof b, f) != sizeof b) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    for (unsigned i = 0; i < sizeof b; i++) b[i] = (unsigned char)((uint64_t)ts.tv_nsec >> (i % 8 * 8)) ^ (unsigned char)(uintptr_t)id;
  }
  if (f) fclose(f);
  int n = snprintf(id, cap, "%s", prefix[api]);
  for (unsigned i = 0; i < sizeof b && n > 0 && (size_t)n < cap; i++) n += snprintf(id + n, cap - (size_t)n, "%02x", b[i]);
}

/* ---------- the cache report ---------- */


/* The text of ids (control tokens shown; bytes that are no UTF-8 replaced). */
static char *ids_text(const struct heed_tokenizer *tok, const int32_t *ids, unsigned n) {
  size_t len = 0;
  heed_error e;
  char *buf = calloc(1, 1);
  unsigned fl = HEED_DETOK_SPECIAL | HEED_DETOK_REPLACE;
  if (!tok || !n || !buf) return buf;
  heed_status st = heed_tokenizer_decode(tok, ids, n, fl, buf, 1, &len, &e);
  if (st != HEED_E_TOO_SMALL) return buf; /* nothing to show, or an id out of range: shown as nothing */
  char *b = realloc(buf, len + 1);
  if (!b) return buf;
  buf = b;
  if (heed_tokenizer_decode(tok, ids, n, fl, buf, len + 1, &len, &e) != HEED_OK) len = 0;
  buf[len] = 0;
  return buf;
}

static const char *source_name(srv_cache_source s) {
  return s == SRV_SRC_CACHE ? "cache" : s == SRV_SRC_RUNNING ? "running" : s == SRV_SRC_DISK ? "disk" : "none";
}

void *srv_cache_report_json(const srv_cache_report *c, const struct heed_tokenizer *tok) {
  cJSON *o = cJSON_CreateObject();
  cJSON_AddNumberToObject(o, "prompt_tokens", (double)c->n_prompt);
  cJSON_AddNumberToObject(o, "reused", (double)c->reused);
  cJSON_AddNumberToObject(o, "reused_shifted", (double)c->shifted);
  cJSON_AddNumberToObject(o, "restored", (double)c->restored);
  cJSON_AddNumberToObject(o, "recomputed", (double)(c->n_prompt - c->reused - c->restored - c->shifted));
  cJSON *m = cJSON_AddObjectToObject(o, "match");
  cJSON_AddStringToObject(m, "source", source_name(c->source));
  if (c->source != SRV_SRC_NONE && c->source != SRV_SRC_DISK) {
    cJSON_AddStringToObject(m, "request", c->origin);
    if (c->source == SRV_SRC_CACHE) cJSON_AddStringToObject(m, "kind", c->source_finished ? "finished" : "prompt");
    cJSON_AddNumberToObject(m, "age_s", (double)(long)(c->age_s * 10 + 0.5) / 10);
    cJSON_AddNumberToObject(m, "tokens", (double)c->match_len);
  }
  cJSON_AddNumberToObject(m, "shared_tokens", (double)c->lcp);
  if (c->evicted_shared) {
    cJSON *v = cJSON_AddObjectToObject(o, "evicted");
    cJSON_AddStringToObject(v, "request", c->evicted_origin);
    cJSON_AddNumberToObject(v, "would_share", (double)c->evicted_shared);
    cJSON_AddNumberToObject(v, "ago_s", (double)(long)(c->evicted_ago_s * 10 + 0.5) / 10);
    cJSON_AddStringToObject(v, "why", c->evicted_why ? c->evicted_why : "room");
  }
  /* where the prompt stops matching: none when the whole prompt matched */
  if (c->lcp < c->n_prompt) {
    cJSON *d = cJSON_AddObjectToObject(o, "divergence");
    cJSON_AddNumberToObject(d, "token", (double)c->lcp);
    char *before = ids_text(tok, c->before, c->n_before), *was = ids_text(tok, c->old_next, c->n_old_next),
         *now = ids_text(tok, c->new_next, c->n_new_next);
    cJSON_AddStringToObject(d, "before", before ? before : "");
    if (c->source != SRV_SRC_NONE && c->source != SRV_SRC_DISK) cJSON_AddStringToObject(d, "cached", was ? was : "");
    cJSON_AddStringToObject(d, "new", now ? now : "");
    /* a long prompt that parts from a long cached one near its top: the
     * usual cause is a line that changes every request (a date, a listing) */
    if (c->source != SRV_SRC_NONE && c->source != SRV_SRC_DISK && c->n_prompt >= 1024 && c->lcp * 20 < c->n_prompt && c->match_len * 2 > c->n_prompt) {
      char hint[400];
      snprintf(hint, sizeof hint,
               "the prompt stops matching the cached one at token %zu of %zu, near its top: text there changes between "
               "requests (cached \"%.60s\", now \"%.60s\"); move volatile text such as dates after the stable prefix",
               c->lcp, c->n_prompt, was ? was : "", now ? now : "");
      cJSON_AddStringToObject(d, "hint", hint);
    }
    free(before), free(was), free(now);
  }
  return o;
}

void srv_cache_report_header(const srv_cache_report *c, char *buf, size_t cap) {
  int n = snprintf(buf, cap, "reused=%zu; shifted=%zu; restored=%zu; recomputed=%zu; source=%s", c->reused, c->shifted,
                   c->restored, c->n_prompt - c->reused - c->restored - c->shifted, source_name(c->source));
  if (n > 0 && (size_t)n < cap && c->source != SRV_SRC_NONE && c->source != SRV_SRC_DISK)
    n += snprintf(buf + n, cap - (size_t)n, "; request=%s", c->origin);
  if (n > 0 && (size_t)n < cap && c->lcp < c->n_prompt) n += snprintf(buf + n, cap - (size_t)n, "; diverged_at=%zu", c->lcp);
  if (n > 0 && (size_t)n < cap && c->evicted_shared)
    snprintf(buf + n, cap - (size_t)n, "; evicted=%s", c->evicted_origin);
}

void srv_reply_free(srv_reply *r) {
  srv_toolscan_free(&r->ts);
  free(r->content);
  free(r->out);
  cJSON_Delete(r->lp_json);
  memset(r, 0, sizeof *r);
}

/* ---------- pieces ---------- */

static const char *openai_finish(const srv_reply *r, const srv_snapshot *s) {
  if (s->finish == SRV_FINISH_LENGTH) return "length";
  if (r->ts.n_calls && r->api == SRV_API_CHAT) return "tool_calls";
  return "stop";
}

static const char *anthropic_stop(const srv_reply *r, const srv_snapshot *s) {
  if (s->finish == SRV_FINISH_LENGTH) return "max_tokens";
  if (s->finish == SRV_FINISH_STOP) return "stop_sequence";
  if (r->ts.n_calls) return "tool_use";
  return "end_turn";
}

static cJSON *openai_usage(const srv_snapshot *s) {
  cJSON *u = cJSON_CreateObject();
  cJSON_AddNumberToObject(u, "prompt_tokens", (double)s->n_prompt);
  cJSON_AddNumberToObject(u, "completion_tokens", (double)s->n_generated);
  cJSON_AddNumberToObject(u, "total_tokens", (double)(s->n_prompt + s->n_generated));
  cJSON *d = cJSON_AddObjectToObject(u, "prompt_tokens_details");
  cJSON_AddNumberToObject(d, "cached_tokens", (double)s->n_cached);
  return u;
}

static cJSON *anthropic_usage(const srv_snapshot *s, int with_output) {
  cJSON *u = cJSON_CreateObject();
  /* Anthropic counts input as uncached + cache reads + cache writes; heed
   * writes every prompt to its cache without being asked, so nothing is
   * billed as a cache write. */
  cJSON_AddNumberToObject(u, "input_tokens", (double)(s->n_prompt - s->n_cached));
  cJSON_AddNumberToObject(u, "cache_creation_input_tokens", 0);
  cJSON_AddNumberToObject(u, "cache_read_input_tokens", (double)s->n_cached);
  cJSON_AddNumberToObject(u, "output_tokens", with_output ? (double)s->n_generated : 0);
  return u;
}

static cJSON *bytes_array(const char *t, size_t n) {
  cJSON *a = cJSON_CreateArray();
  for (size_t i = 0; i < n; i++) cJSON_AddItemToArray(a, cJSON_CreateNumber((unsigned char)t[i]));
  return a;
}

/* A NUL-terminated copy of t[0..n) for cJSON. */
static char *dupn(const char *t, size_t n) {
  char *s = malloc(n + 1);
  if (!s) return NULL;
  memcpy(s, t, n);
  s[n] = 0;
  return s;
}

/* The logprob entries of the snapshot, as chat's logprobs.content items, or
 * (completions) as items {token, logprob, top: {text: lp}} converted at the end. */
static cJSON *lp_items(const srv_snapshot *s, const srv_reply *r) {
  cJSON *a = cJSON_CreateArray();
  for (size_t i = 0; i < s->n_lps; i++) {
    const srv_token_lp *l = &s->lps[i];
    cJSON *o = cJSON_CreateObject();
    char *tt = dupn(s->lp_text + l->text_off, l->text_len);
    cJSON_AddStringToObject(o, "token", tt ? tt : "");
    cJSON_AddNumberToObject(o, "logprob", l->logprob);
    cJSON_AddItemToObject(o, "bytes", bytes_array(s->lp_text + l->text_off, l->text_len));
    free(tt);
    cJSON *top = cJSON_AddArrayToObject(o, "top_logprobs");
    for (unsigned k = 0; k < l->n_top; k++) {
      cJSON *t = cJSON_CreateObject();
      char buf[512];
      size_t bl = 0;
      if (!r->tok || heed_tokenizer_decode(r->tok, &l->top_id[k], 1, HEED_DETOK_REPLACE, buf, sizeof buf - 1, &bl, NULL))
        bl = 0;
      buf[bl] = 0;
      cJSON_AddStringToObject(t, "token", buf);
      cJSON_AddItemToObject(t, "bytes", bytes_array(buf, bl));
      cJSON_AddNumberToObject(t, "id", l->top_id[k]);
      cJSON_AddNumberToObject(t, "logprob", l->top_lp[k]);
      cJSON_AddItemToArray(top, t);
    }
    cJSON_AddNumberToObject(o, "id", l->id);
    cJSON_AddItemToArray(a, o);
  }
  return a;
}

/* The text of the snapshot through the tool-call scanner: new content goes
 * to r->content; returns the number of calls completed. */
static size_t scan(srv_reply *r, const srv_snapshot *s) {
  size_t n_new = 0;
  srv_toolscan_feed(&r->ts, s->text ? s->text : "", s->text_len, s->finish != SRV_RUNNING, &r->content,
                    &r->content_len, &n_new);
  return n_new;
}

static cJSON *tool_call_json(const srv_tool_call *c, size_t index, const char *id_base, int with_index) {
  cJSON *o = cJSON_CreateObject();
  if (with_index) cJSON_AddNumberToObject(o, "index", (double)index);
  char id[80];
  snprintf(id, sizeof id, "call_%.24s_%zu", id_base, index);
  cJSON_AddStringToObject(o, "id", id);
  cJSON_AddStringToObject(o, "type", "function");
  cJSON *f = cJSON_AddObjectToObject(o, "function");
  cJSON_AddStringToObject(f, "name", c->name);
  cJSON_AddStringToObject(f, "arguments", c->arguments);
  return o;
}

static cJSON *tool_use_json(const srv_tool_call *c, size_t index, const char *id_base, int input_empty) {
  cJSON *o = cJSON_CreateObject();
  cJSON_AddStringToObject(o, "type", "tool_use");
  char id[80];
  snprintf(id, sizeof id, "toolu_%.24s_%zu", id_base, index);
  cJSON_AddStringToObject(o, "id", id);
  cJSON_AddStringToObject(o, "name", c->name);
  cJSON *in = input_empty ? NULL : cJSON_Parse(c->arguments);
  cJSON_AddItemToObject(o, "input", in ? in : cJSON_CreateObject());
  return o;
}

/* ---------- streaming ---------- */

static cJSON *chunk(srv_reply *r, const char *object) {
  cJSON *o = cJSON_CreateObject();
  cJSON_AddStringToObject(o, "id", r->id);
  cJSON_AddStringToObject(o, "object", object);
  cJSON_AddNumberToObject(o, "created", (double)r->created);
  cJSON_AddStringToObject(o, "model", r->model);
  return o;
}

static void stream_chat(srv_reply *r, const srv_snapshot *s, size_t n_new_calls) {
  int comp = r->api == SRV_API_COMPLETIONS;
  const char *object = comp ? "text_completion" : "chat.completion.chunk";
  if (!r->started) {
    r->started = 1;
    if (!comp) {
      cJSON *o = chunk(r, object), *ch = cJSON_AddArrayToObject(o, "choices"), *c = cJSON_CreateObject();
      cJSON_AddNumberToObject(c, "index", 0);
      cJSON *d = cJSON_AddObjectToObject(c, "delta");
      cJSON_AddStringToObject(d, "role", "assistant");
      cJSON_AddStringToObject(d, "content", "");
      cJSON_AddNullToObject(c, "logprobs");
      cJSON_AddNullToObject(c, "finish_reason");
      cJSON_AddItemToArray(ch, c);
      sse(r, NULL, o);
    }
  }
  int have_text = r->content_len > r->content_sent;
  if (have_text || s->n_lps) {
    cJSON *o = chunk(r, object), *ch = cJSON_AddArrayToObject(o, "choices"), *c = cJSON_CreateObject();
    cJSON_AddNumberToObject(c, "index", 0);
    char *t = dupn(r->content + r->content_sent, r->content_len - r->content_sent);
    if (comp) {
      cJSON_AddStringToObject(c, "text", t ? t : "");
    } else {
      cJSON *d = cJSON_AddObjectToObject(c, "delta");
      cJSON_AddStringToObject(d, "content", t ? t : "");
    }
    free(t);
    r->content_sent = r->content_len;
    if (s->n_lps) {
      cJSON *lp = cJSON_AddObjectToObject(c, "logprobs");
      cJSON_AddItemToObject(lp, "content", lp_items(s, r));
    } else {
      cJSON_AddNullToObject(c, "logprobs");
    }
    cJSON_AddNullToObject(c, "finish_reason");
    cJSON_AddItemToArray(ch, c);
    sse(r, NULL, o);
  }
  for (size_t i = r->ts.n_calls - n_new_calls; i < r->ts.n_calls; i++) {
    cJSON *o = chunk(r, object), *ch = cJSON_AddArrayToObject(o, "choices"), *c = cJSON_CreateObject();
    cJSON_AddNumberToObject(c, "index", 0);
    cJSON *d = cJSON_AddObjectToObject(c, "delta"), *tc = cJSON_AddArrayToObject(d, "tool_calls");
    cJSON_AddItemToArray(tc, tool_call_json(&r->ts.calls[i], i, r->id + 9, 1));
    cJSON_AddNullToObject(c, "finish_reason");
    cJSON_AddItemToArray(ch, c);
    sse(r, NULL, o);
  }
  if (s->finish == SRV_RUNNING) return;
  if (s->finish == SRV_FINISH_ERROR || s->finish == SRV_FINISH_CANCELLED) {
    cJSON *o = cJSON_CreateObject(), *e = cJSON_AddObjectToObject(o, "error");
    cJSON_AddStringToObject(e, "message", s->err && *s->err ? s->err : "the request was cancelled");
    cJSON_AddStringToObject(e, "type", "server_error");
    cJSON_AddNullToObject(e, "param");
    cJSON_AddNullToObject(e, "code");
    sse(r, NULL, o);
  } else {
    cJSON *o = chunk(r, object), *ch = cJSON_AddArrayToObject(o, "choices"), *c = cJSON_CreateObject();
    cJSON_AddNumberToObject(c, "index", 0);
    if (comp) cJSON_AddStringToObject(c, "text", "");
    else cJSON_AddObjectToObject(c, "delta");
    cJSON_AddNullToObject(c, "logprobs");
    cJSON_AddStringToObject(c, "finish_reason", openai_finish(r, s));
    cJSON_AddItemToArray(ch, c);
    if (s->cache) cJSON_AddItemToObject(o, "heed_cache", srv_cache_report_json(s->cache, r->tok));
    sse(r, NULL, o);
    if (r->p->include_usage) {
      o = chunk(r, object);
      cJSON_AddArrayToObject(o, "choices");
      cJSON_AddItemToObject(o, "usage", openai_usage(s));
      sse(r, NULL, o);
    }
  }
  out_add(r, "data: [DONE]\n\n", 14);
  r->ended = 1;
}

static void block_stop(srv_reply *r) {
  if (!r->block_open) return;
  cJSON *o = cJSON_CreateObject();
  cJSON_AddStringToObject(o, "type", "content_block_stop");
  cJSON_AddNumberToObject(o, "index", r->block_index++);
  sse(r, "content_block_stop", o);
  r->block_open = 0;
}

static void stream_messages(srv_reply *r, const srv_snapshot *s, size_t n_new_calls) {
  if (!r->started) {
    r->started = 1;
    cJSON *o = cJSON_CreateObject(), *m = cJSON_AddObjectToObject(o, "message");
    cJSON_AddStringToObject(o, "type", "message_start");
    cJSON_AddStringToObject(m, "id", r->id);
    cJSON_AddStringToObject(m, "type", "message");
    cJSON_AddStringToObject(m, "role", "assistant");
    cJSON_AddStringToObject(m, "model", r->model);
    cJSON_AddArrayToObject(m, "content");
    cJSON_AddNullToObject(m, "stop_reason");
    cJSON_AddNullToObject(m, "stop_sequence");
    cJSON_AddItemToObject(m, "usage", anthropic_usage(s, 0));
    sse(r, "message_start", o);
  }
  /* text first: whatever came before the new calls */
  if (r->content_len > r->content_sent) {
    if (!r->block_open) {
      cJSON *o = cJSON_CreateObject(), *b = cJSON_AddObjectToObject(o, "content_block");
      cJSON_AddStringToObject(o, "type", "content_block_start");
      cJSON_AddNumberToObject(o, "index", r->block_index);
      cJSON_AddStringToObject(b, "type", "text");
      cJSON_AddStringToObject(b, "text", "");
      sse(r, "content_block_start", o);
      r->block_open = 1;
    }
    cJSON *o = cJSON_CreateObject(), *d = cJSON_AddObjectToObject(o, "delta");
    cJSON_AddStringToObject(o, "type", "content_block_delta");
    cJSON_AddNumberToObject(o, "index", r->block_index);
    cJSON_AddStringToObject(d, "type", "text_delta");
    char *t = dupn(r->content + r->content_sent, r->content_len - r->content_sent);
    cJSON_AddStringToObject(d, "text", t ? t : "");
    free(t);
    r->content_sent = r->content_len;
    sse(r, "content_block_delta", o);
  }
  for (size_t i = r->ts.n_calls - n_new_calls; i < r->ts.n_calls; i++) {
    block_stop(r);
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "type", "content_block_start");
    cJSON_AddNumberToObject(o, "index", r->block_index);
    cJSON_AddItemToObject(o, "content_block", tool_use_json(&r->ts.calls[i], i, r->id + 4, 1));
    sse(r, "content_block_start", o);
    o = cJSON_CreateObject();
    cJSON *d = cJSON_AddObjectToObject(o, "delta");
    cJSON_AddStringToObject(o, "type", "content_block_delta");
    cJSON_AddNumberToObject(o, "index", r->block_index);
    cJSON_AddStringToObject(d, "type", "input_json_delta");
    cJSON_AddStringToObject(d, "partial_json", r->ts.calls[i].arguments);
    sse(r, "content_block_delta", o);
    r->block_open = 1;
    block_stop(r);
  }
  if (s->finish == SRV_RUNNING) return;
  if (s->finish == SRV_FINISH_ERROR || s->finish == SRV_FINISH_CANCELLED) {
    block_stop(r);
    cJSON *o = cJSON_CreateObject(), *e = cJSON_AddObjectToObject(o, "error");
    cJSON_AddStringToObject(o, "type", "error");
    cJSON_AddStringToObject(e, "type", "api_error");
    cJSON_AddStringToObject(e, "message", s->err && *s->err ? s->err : "the request was cancelled");
    sse(r, "error", o);
    r->ended = 1;
    return;
  }
  if (!r->block_open && r->block_index == 0) {
    /* an empty answer still has its one text block */
    cJSON *o = cJSON_CreateObject(), *b = cJSON_AddObjectToObject(o, "content_block");
    cJSON_AddStringToObject(o, "type", "content_block_start");
    cJSON_AddNumberToObject(o, "index", 0);
    cJSON_AddStringToObject(b, "type", "text");
    cJSON_AddStringToObject(b, "text", "");
    sse(r, "content_block_start", o);
    r->block_open = 1;
  }
  block_stop(r);
  cJSON *o = cJSON_CreateObject(), *d = cJSON_AddObjectToObject(o, "delta");
  cJSON_AddStringToObject(o, "type", "message_delta");
  cJSON_AddStringToObject(d, "stop_reason", anthropic_stop(r, s));
  if (s->finish == SRV_FINISH_STOP && s->stop_index >= 0 && s->stop_index < r->p->n_stops)
    cJSON_AddStringToObject(d, "stop_sequence", r->p->stops[s->stop_index]);
  else
    cJSON_AddNullToObject(d, "stop_sequence");
  cJSON_AddItemToObject(o, "usage", anthropic_usage(s, 1));
  if (s->cache) cJSON_AddItemToObject(o, "heed_cache", srv_cache_report_json(s->cache, r->tok));
  sse(r, "message_delta", o);
  o = cJSON_CreateObject();
  cJSON_AddStringToObject(o, "type", "message_stop");
  sse(r, "message_stop", o);
  r->ended = 1;
}

void srv_reply_stream(srv_reply *r, const srv_snapshot *s) {
  if (r->ended) return;
  size_t n_new = scan(r, s);
  if (r->api == SRV_API_MESSAGES) stream_messages(r, s, n_new);
  else stream_chat(r, s, n_new);
}

/* ---------- one body ---------- */

void srv_reply_feed(srv_reply *r, const srv_snapshot *s) {
  scan(r, s);
  if (s->n_lps) {
    cJSON *a = lp_items(s, r), *it;
    while ((it = cJSON_DetachItemFromArray(a, 0))) cJSON_AddItemToArray(r->lp_json, it);
    cJSON_Delete(a);
  }
}

/* Completions' logprobs: {tokens, token_logprobs, top_logprobs, text_offset}. */
static cJSON *completion_logprobs(cJSON *items) {
  cJSON *o = cJSON_CreateObject(), *toks = cJSON_AddArrayToObject(o, "tokens"),
        *lps = cJSON_AddArrayToObject(o, "token_logprobs"), *tops = cJSON_AddArrayToObject(o, "top_logprobs"),
        *offs = cJSON_AddArrayToObject(o, "text_offset");
  size_t off = 0;
  cJSON *it;
  cJSON_ArrayForEach(it, items) {
    const char *t = cJSON_GetStringValue(cJSON_GetObjectItem(it, "token"));
    cJSON_AddItemToArray(toks, cJSON_CreateString(t ? t : ""));
    cJSON_AddItemToArray(lps, cJSON_CreateNumber(cJSON_GetNumberValue(cJSON_GetObjectItem(it, "logprob"))));
    cJSON *top = cJSON_CreateObject(), *e;
    cJSON_ArrayForEach(e, cJSON_GetObjectItem(it, "top_logprobs")) {
      const char *tt = cJSON_GetStringValue(cJSON_GetObjectItem(e, "token"));
      if (tt && !cJSON_GetObjectItem(top, tt))
        cJSON_AddNumberToObject(top, tt, cJSON_GetNumberValue(cJSON_GetObjectItem(e, "logprob")));
    }
    cJSON_AddItemToArray(tops, top);
    cJSON_AddItemToArray(offs, cJSON_CreateNumber((double)off));
    off += t ? strlen(t) : 0;
  }
  return o;
}

char *srv_reply_body(srv_reply *r, const srv_snapshot *s, int *status) {
  if (s->finish == SRV_FINISH_ERROR || s->finish == SRV_FINISH_CANCELLED) {
    *status = 500;
    return srv_error_body(r->api == SRV_API_MESSAGES, 500, s->err && *s->err ? s->err : "the request was cancelled");
  }
  *status = 200;
  cJSON *o = cJSON_CreateObject();
  char *content = dupn(r->content ? r->content : "", r->content_len);
  if (r->api == SRV_API_MESSAGES) {
    cJSON_AddStringToObject(o, "id", r->id);
    cJSON_AddStringToObject(o, "type", "message");
    cJSON_AddStringToObject(o, "role", "assistant");
    cJSON_AddStringToObject(o, "model", r->model);
    cJSON *c = cJSON_AddArrayToObject(o, "content");
    if (r->content_len || !r->ts.n_calls) {
      cJSON *b = cJSON_CreateObject();
      cJSON_AddStringToObject(b, "type", "text");
      cJSON_AddStringToObject(b, "text", content ? content : "");
      cJSON_AddItemToArray(c, b);
    }
    for (size_t i = 0; i < r->ts.n_calls; i++) cJSON_AddItemToArray(c, tool_use_json(&r->ts.calls[i], i, r->id + 4, 0));
    cJSON_AddStringToObject(o, "stop_reason", anthropic_stop(r, s));
    if (s->finish == SRV_FINISH_STOP && s->stop_index >= 0 && s->stop_index < r->p->n_stops)
      cJSON_AddStringToObject(o, "stop_sequence", r->p->stops[s->stop_index]);
    else
      cJSON_AddNullToObject(o, "stop_sequence");
    cJSON_AddItemToObject(o, "usage", anthropic_usage(s, 1));
  } else {
    int comp = r->api == SRV_API_COMPLETIONS;
    cJSON_AddStringToObject(o, "id", r->id);
    cJSON_AddStringToObject(o, "object", comp ? "text_completion" : "chat.completion");
    cJSON_AddNumberToObject(o, "created", (double)r->created);
    cJSON_AddStringToObject(o, "model", r->model);
    cJSON *ch = cJSON_AddArrayToObject(o, "choices"), *c = cJSON_CreateObject();
    cJSON_AddNumberToObject(c, "index", 0);
    if (comp) {
      cJSON_AddStringToObject(c, "text", content ? content : "");
    } else {
      cJSON *m = cJSON_AddObjectToObject(c, "message");
      cJSON_AddStringToObject(m, "role", "assistant");
      if (r->content_len || !r->ts.n_calls) cJSON_AddStringToObject(m, "content", content ? content : "");
      else cJSON_AddNullToObject(m, "content");
      if (r->ts.n_calls) {
        cJSON *tc = cJSON_AddArrayToObject(m, "tool_calls");
        for (size_t i = 0; i < r->ts.n_calls; i++) cJSON_AddItemToArray(tc, tool_call_json(&r->ts.calls[i], i, r->id + 9, 0));
      }
    }
    if (r->p->logprobs) {
      if (comp) {
        cJSON_AddItemToObject(c, "logprobs", completion_logprobs(r->lp_json));
      } else {
        cJSON *lp = cJSON_AddObjectToObject(c, "logprobs");
        cJSON_AddItemToObject(lp, "content", r->lp_json);
        r->lp_json = cJSON_CreateArray();
      }
    } else {
      cJSON_AddNullToObject(c, "logprobs");
    }
    cJSON_AddStringToObject(c, "finish_reason", openai_finish(r, s));
    cJSON_AddItemToArray(ch, c);
    cJSON_AddItemToObject(o, "usage", openai_usage(s));
  }
  if (s->cache) cJSON_AddItemToObject(o, "heed_cache", srv_cache_report_json(s->cache, r->tok));
  free(content);
  char *body = cJSON_PrintUnformatted(o);
  cJSON_Delete(o);
  return body;
}
