/* serve/serve_internal.h - the server's parts and what they share.
 *
 * A request's life, in the order it meets the files:
 *   http.c     libmicrohttpd calls back with the body; auth, size and time limits; routing
 *   api.c      the body (OpenAI chat/completions, Anthropic messages) becomes one srv_params,
 *              or a 4xx naming the bad field
 *   engine.c   the prompt's tokens become a srv_job; the scheduler thread runs every job's
 *              tokens in batched steps (continuous batching, chunked prefill), samples or
 *              verifies drafts, and appends text to the job as it is made
 *   cache.c    finished sequences stay in the KV pool, found again by longest token prefix
 *   toolcall.c generated text split into content and tool calls, also while streaming
 *   reply.c    the job's text and tokens as the API's JSON or SSE events
 *   metrics.c  counters and histograms, /metrics in Prometheus text
 * The server state is one srv_server passed explicitly (serve.c). */
#ifndef HEED_SERVE_INTERNAL_H
#define HEED_SERVE_INTERNAL_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#include "heed/heed.h"
#include "heed/serve.h"
#include "runtime/internal.h" /* heed_err_set */

/* ---------- api.c: requests ---------- */

#define SRV_MAX_STOPS 8
#define SRV_MAX_TOP_LOGPROBS 20

typedef enum srv_api { SRV_API_CHAT, SRV_API_COMPLETIONS, SRV_API_MESSAGES } srv_api;

/* One generation request, whatever API it came through. Owned strings. */
typedef struct srv_params {
  srv_api api;
  int stream, include_usage;
  long max_tokens;          /* -1: not given (until the context is full) */
  float temperature, top_p, min_p;
  unsigned top_k;
  float presence_penalty, frequency_penalty, repetition_penalty;
  int has_seed;
  uint64_t seed;
  char *stops[SRV_MAX_STOPS];
  int n_stops;
  int logprobs;             /* chat: logprobs true; completions: logprobs N */
  unsigned top_logprobs;    /* 0..SRV_MAX_TOP_LOGPROBS */
  char *model;              /* as the client named it; NULL when absent */
  char *chat_json;          /* chat and messages: an OpenAI-style body for heed_chat_prompt */
  char *prompt;             /* completions: the prompt text (prompt_len bytes) */
  size_t prompt_len;
  int tools;                /* tools offered (and tool_choice is not none): the output is scanned for calls */
  char *user;               /* OpenAI user / Anthropic metadata.user_id; NULL when absent */
} srv_params;

void srv_params_free(srv_params *p);

/* Parses and checks the body of a request to api. HEED_E_INVALID with a
 * message naming the field and the bad value; nothing is allocated then.
 * Independent of any model: the fuzz target calls it alone. */
heed_status srv_parse_request(srv_api api, const char *body, size_t len, srv_params *out, heed_error *err);

/* /tokenize and count_tokens bodies: *chat_json an OpenAI-style chat body
 * (owned), or *content the text to tokenize (owned). Anthropic's count_tokens
 * body when anthropic is 1. */
heed_status srv_parse_tokenize(const char *body, size_t len, int anthropic, char **chat_json, char **content,
                               heed_error *err);

/* ---------- toolcall.c: tool calls in generated text ---------- */

typedef struct srv_tool_call {
  char *name;
  char *arguments; /* a JSON object's text */
} srv_tool_call;

/* Splits a stream of generated text into content and tool calls. Hermes/Qwen
 * form: <tool_call>{"name": ..., "arguments": {...}}</tool_call>, anywhere and
 * repeated; Llama 3 form: the whole output one JSON object with "name" and
 * "parameters" (or "arguments"). A call that does not parse is content. */
typedef struct srv_toolscan {
  int enabled;
  int in_call;       /* inside <tool_call> */
  int whole_json;    /* 1: began with '{' or '[', 2: with a ```json fence: held to the end; -1: ruled out */
  int started;       /* something other than white space was seen */
  char *buf;         /* text held back */
  size_t len, cap;
  srv_tool_call *calls;
  size_t n_calls, cap_calls;
} srv_toolscan;

void srv_toolscan_init(srv_toolscan *s, int enabled);
void srv_toolscan_free(srv_toolscan *s);
/* Feeds text; appends what is now known to be content to *content (a
 * growing buffer the caller frees), and returns through *n_new the calls
 * completed by this text (they are s->calls[s->n_calls - *n_new ...]).
 * final: the end of the output (everything held is settled). */
void srv_toolscan_feed(srv_toolscan *s, const char *text, size_t n, int final, char **content, size_t *content_len,
                       size_t *n_new);

/* ---------- metrics.c ---------- */

#define SRV_TTFT_BUCKETS 12
#define SRV_TPOT_BUCKETS 10
#define SRV_MAX_ENDPOINTS 12

typedef struct srv_metrics {
  pthread_mutex_t mu;
  struct {
    char endpoint[32];
    int status;
    uint64_t n;
  } req[SRV_MAX_ENDPOINTS * 8];
  unsigned n_req;
  uint64_t prompt_tokens, generated_tokens, cached_tokens, draft_tokens, draft_accepted;
  uint64_t restored_tokens; /* of cached_tokens, those read back from the disk tier */
  uint64_t shifted_tokens;  /* of cached_tokens, those of chunks moved to new positions */
  uint64_t matches[4];   /* requests by where their prefix came from: none, the cache, a running request, the disk tier */
  uint64_t evictions[2]; /* cached sequences evicted: [1] those of a retained session */
  uint64_t ttft_b[SRV_TTFT_BUCKETS + 1], tpot_b[SRV_TPOT_BUCKETS + 1];
  double ttft_sum, tpot_sum;
  uint64_t ttft_n, tpot_n;
} srv_metrics;

void srv_metrics_init(srv_metrics *m);
void srv_metrics_destroy(srv_metrics *m);
void srv_metrics_request(srv_metrics *m, const char *endpoint, int status);
void srv_metrics_ttft(srv_metrics *m, double s);
void srv_metrics_tpot(srv_metrics *m, double s, uint64_t n); /* n tokens at s each */
void srv_metrics_tokens(srv_metrics *m, uint64_t prompt, uint64_t generated, uint64_t cached, uint64_t drafted,
                        uint64_t accepted);
void srv_metrics_match(srv_metrics *m, unsigned source); /* an srv_cache_source */
void srv_metrics_eviction(srv_metrics *m, int retained);
void srv_metrics_restored(srv_metrics *m, uint64_t restored, uint64_t shifted);
/* The gauges /metrics shows beside the counters, read from the engine. */
typedef struct srv_gauges {
  unsigned queued, running, cache_seqs;
  uint32_t blocks_used, blocks_free, block_tokens;
  int disk;                                   /* the disk tier is on: its figures follow */
  uint64_t disk_files, disk_bytes, disk_limit;
  uint64_t disk_written, disk_read, disk_evicted, disk_deleted_bad;
} srv_gauges;
/* The Prometheus text exposition (version 0.0.4) of m and g; malloc'd, NUL-terminated. */
char *srv_metrics_render(srv_metrics *m, const srv_gauges *g, size_t *len);

/* ---------- engine.c: jobs and the scheduler ---------- */

typedef enum srv_finish {
  SRV_RUNNING = 0,
  SRV_FINISH_EOS,     /* the model ended its turn */
  SRV_FINISH_STOP,    /* a stop string; stop_index says which */
  SRV_FINISH_LENGTH,  /* max_tokens, or the context is full */
  SRV_FINISH_ERROR,   /* err says why */
  SRV_FINISH_CANCELLED
} srv_finish;

typedef struct srv_token_lp {
  int32_t id;
  float logprob;
  uint32_t text_off, text_len; /* the text this token added, in the job's lp_text */
  unsigned n_top;
  int32_t top_id[SRV_MAX_TOP_LOGPROBS];
  float top_lp[SRV_MAX_TOP_LOGPROBS];
} srv_token_lp;

typedef struct srv_engine srv_engine;

/* What the prefix cache did for one request, filled when it is admitted: the
 * counts, the sequence it matched best (cached or running) and, around the
 * first prompt token that sequence does not have, a few tokens of each side. */
#define SRV_EXCERPT 12
typedef enum srv_cache_source { SRV_SRC_NONE = 0, SRV_SRC_CACHE, SRV_SRC_RUNNING, SRV_SRC_DISK } srv_cache_source;
typedef struct srv_cache_report {
  int done;                   /* filled */
  size_t n_prompt, reused;    /* prompt tokens, and those whose K/V were reused as they were */
  size_t restored;            /* prompt tokens whose K/V were read back from the disk tier */
  size_t shifted;             /* prompt tokens whose K/V came from a cached chunk at another place (chunk reuse) */
  size_t lcp;                 /* tokens the best match shares with the prompt */
  size_t match_len;           /* tokens the best match holds */
  srv_cache_source source;
  int source_finished;        /* SRV_SRC_CACHE: a finished sequence (else a prompt cached once prefilled) */
  char origin[48];            /* the request that made the match */
  double age_s;               /* how long ago it was made */
  int32_t before[SRV_EXCERPT], old_next[SRV_EXCERPT], new_next[SRV_EXCERPT];
  unsigned n_before, n_old_next, n_new_next; /* tokens before lcp; the match's and the prompt's from lcp */
  /* an evicted sequence that would have shared more than lcp (about: whole strides) */
  size_t evicted_shared;      /* 0: none */
  char evicted_origin[48];
  double evicted_ago_s;
  const char *evicted_why;
} srv_cache_report;

/* One generation. The submitter fills the first part and hands the job to
 * the engine; then everything below "shared" is read and written under the
 * engine's lock only, and the job is freed by whichever side lets go last. */
typedef struct srv_job {
  srv_params p;          /* owned: moved in by srv_job_new, freed with the job, so the engine
                          * may read it after the submitter has let go */
  int32_t *prompt;       /* [n_prompt], owned */
  size_t n_prompt;
  unsigned max_new;      /* tokens it may make */
  uint64_t tenant;       /* prefix-cache partition (0: shared) */
  char origin[48];       /* the request's id, kept with its cached sequences */
  uint64_t session;      /* its session (0: none), from srv_session_id */
  double t_submit;
  /* shared, under the engine's lock */
  pthread_cond_t cv;     /* signalled when text, tokens or the finish change */
  char *text;            /* the output so far, stop strings cut and their prefixes held back */
  size_t text_len, text_cap;
  srv_token_lp *lps;     /* [n_lps] when p->logprobs */
  size_t n_lps, cap_lps;
  char *lp_text;         /* every logprob token's text, in order */
  size_t lp_text_len, lp_text_cap;
  size_t n_generated, n_cached; /* n_cached: prompt tokens not recomputed (reused or restored) */
  size_t n_restored;             /* of those, read back from the disk tier */
  size_t n_shifted;              /* of those, chunks of cached sequences moved to their new positions */
  int reuse;                     /* chunk reuse for this request: -1 the server's (--cache-reuse), 0 off, 1 on */
  /* chunk reuse's plan: prompt runs [dst, dst + n) whose K/V come from cached sequence src_seq at src_pos,
   * copied when the prefill reaches dst (checked again then: the sequence may have been evicted) */
  struct srv_import {
    size_t dst, src_pos, n;
    int src_seq;
  } *imp;
  unsigned n_imp, i_imp;
  srv_cache_report cache;
  int admitted;
  srv_finish finish;
  int stop_index;
  char err[512];
  int cancel;
  int refs;
  double t_first;
  /* the engine's own */
  struct srv_job *next;
  int seq;
  size_t n_fed;          /* prompt tokens in the KV */
  int32_t pending;       /* the last token made, not yet fed */
  int32_t *ctx;          /* [n_ctx + draft + 2] prompt then made tokens: penalties, drafter, cache entry */
  size_t n_ctx_ids;
  uint32_t *counts_ids;  /* presence/frequency penalties: token -> times made ([vocab], only when asked) */
  int32_t *distinct;     /* [n_distinct] the tokens made so far, each once (with counts_ids) */
  size_t n_distinct;
  heed_drafter *drafter;
  unsigned draft_steps, draft_acc, draft_prop;
  int draft_off;
  uint64_t step;
  uint64_t seed;
  heed_detok_state ds;
  char *hold;            /* text not yet released: a stop string may still start in it */
  size_t hold_len, hold_cap;
  size_t max_stop;
  double t_last;
} srv_job;

/* ---------- chunks.c: chunk reuse's search ---------- */

#define SRV_CHUNK 64 /* tokens a chunk hash covers */
/* A run of the prompt, [dst, dst + n), that source src holds at src_pos. */
typedef struct srv_run {
  size_t dst, src_pos, n;
  unsigned src;
} srv_run;
/* The runs of prompt p[0..n) after its first `from` tokens that the n_src
 * sources (token arrays) hold at any position, each less its first boundary
 * tokens, none covering p's last token; in prompt order, not overlapping.
 * *runs is malloc'd (NULL when none). Returns the tokens the runs cover. */
size_t srv_chunk_runs(const int32_t *p, size_t n, size_t from, const int32_t *const *src, const size_t *src_len,
                      unsigned n_src, unsigned boundary, srv_run **runs, unsigned *n_runs);

/* ---------- disk.c: the prefix cache's disk tier ---------- */

/* Whole KV blocks of cached prefixes in files under a folder, read back
 * instead of recomputed (serve/disk.c says how they are named and checked). */
typedef struct srv_disk srv_disk;
typedef struct srv_disk_config {
  const char *dir;        /* --cache-dir; the blocks go in a subfolder named by key */
  uint64_t limit;         /* bytes the files may take (--cache-disk) */
  uint64_t key;           /* the model file and KV layout (srv_disk_model_key) */
  size_t payload_bytes;   /* one block, every layer (heed_model_kv_block_bytes) */
  unsigned block_len;     /* tokens per block */
} srv_disk_config;
typedef struct srv_disk_stats {
  uint64_t files, bytes, limit;
  uint64_t written, read, evicted; /* blocks written, read back, deleted for room */
  uint64_t deleted_bad;            /* files deleted as corrupt or foreign */
  uint64_t write_errors;
} srv_disk_stats;

/* A key for the model files' bytes (read once, XXH3) and kv_layout (a text
 * naming the KV configuration). */
heed_status srv_disk_model_key(const char *const *paths, unsigned n_paths, const char *kv_layout, uint64_t *key,
                               char *err, size_t errlen);
/* Makes the folder if needed and indexes what is there; deletes what cannot
 * be this key's blocks, and the oldest files past the limit. */
heed_status srv_disk_open(const srv_disk_config *cfg, srv_disk **out, char *err, size_t errlen);
void srv_disk_close(srv_disk *d); /* NULL is fine */
/* The hash naming the block of tokens[0..n) that follows the prefix hashed
 * to parent (the first block's parent: a seed, e.g. the tenant). Never 0. */
uint64_t srv_disk_chain(uint64_t parent, const int32_t *tokens, unsigned n);
int srv_disk_has(const srv_disk *d, uint64_t h);
/* Writes block h (index: its place in the sequence), making room under the
 * limit; a block already there is only marked used. */
heed_status srv_disk_put(srv_disk *d, uint64_t h, uint64_t parent, unsigned index, const int32_t *tokens,
                         const void *payload);
/* Reads block h into payload: 1 when it is there and every check passes
 * (header, parent, tokens equal to tokens, checksums); 0 when absent; -1 when
 * the file failed a check (it is deleted). */
int srv_disk_get(srv_disk *d, uint64_t h, uint64_t parent, const int32_t *tokens, void *payload);
void srv_disk_get_stats(const srv_disk *d, srv_disk_stats *s);

typedef struct srv_engine_config {
  unsigned slots, max_queue;
  unsigned draft_k;        /* 0: no drafting */
  uint64_t cache_bytes;    /* KV memory the prefix cache may hold beyond the running sequences */
  unsigned cache_entries;  /* finished sequences kept, at most */
  double session_keep_s;   /* a session's sequences are retained this long after its last request (0: none are) */
  /* the disk tier (off when cache_dir is NULL): whole blocks of evicted (and, at stop, of every) cached
   * sequence go to files there, at most cache_disk bytes, and are read back for a prompt they begin */
  const char *cache_dir;
  uint64_t cache_disk;
  /* chunk reuse (--cache-reuse chunks): after the prompt parts from every cached sequence, later runs of it
   * found in cached sequences (anywhere, at other positions) are copied with K moved by RoPE, but for the
   * first reuse_boundary tokens of each run, which are recomputed */
  int cache_reuse;
  unsigned reuse_boundary;
} srv_engine_config;

/* A session's id for the cache: a 64-bit hash of the tenant and the name the
 * client gave (never 0; 0 for no name). Only the hash is kept. */
uint64_t srv_session_id(uint64_t tenant, const char *name, size_t len);

heed_status srv_engine_start(heed_model *m, const srv_engine_config *cfg, srv_metrics *mx, srv_engine **out,
                             heed_error *err);
/* Stops the scheduler: running and queued jobs are cut (SRV_FINISH_ERROR,
 * "the server is stopping") and their sequences freed; submissions are refused
 * from here on. The engine stays valid for release/cancel until srv_engine_stop. */
void srv_engine_halt(srv_engine *e);
/* Halts if needed, then frees everything (no job may still be held). */
void srv_engine_stop(srv_engine *e);

/* Takes a job (refs = 2: the engine's and the caller's). HEED_E_BUSY when the
 * queue is full (the job is not taken). */
heed_status srv_engine_submit(srv_engine *e, srv_job *j);
/* The caller lets go of its job (after cancel, or once finished). */
void srv_engine_release(srv_engine *e, srv_job *j);
void srv_engine_cancel(srv_engine *e, srv_job *j);
pthread_mutex_t *srv_engine_lock(srv_engine *e);
/* A job for p's request. *p and prompt are owned by the job from here on,
 * also when this fails and returns NULL (*p is then freed and zeroed). */
srv_job *srv_job_new(srv_params *p, int32_t *prompt, size_t n_prompt, unsigned max_new, uint64_t tenant);
/* Frees a job the engine never took (srv_engine_submit said HEED_E_BUSY). */
void srv_job_free(srv_job *j);

typedef struct srv_engine_stats {
  unsigned queued, running, cache_seqs;
  uint32_t blocks, blocks_free, block_tokens;
  int disk;                 /* the disk tier is on */
  srv_disk_stats disk_st;
} srv_engine_stats;
void srv_engine_get_stats(srv_engine *e, srv_engine_stats *s);
/* GET /v1/cache: tenant's cached sequences, most recently used first, as JSON (malloc'd). */
char *srv_engine_cache_list(srv_engine *e, uint64_t tenant);

/* ---------- reply.c: the job as the API's JSON or events ---------- */

/* What a handler copied from its job under the lock: the text and logprobs
 * since the last snapshot, and how things stand. */
typedef struct srv_snapshot {
  const char *text;        /* new text */
  size_t text_len;
  const srv_token_lp *lps; /* new logprob entries */
  size_t n_lps;
  const char *lp_text;     /* the job's lp_text (for the entries' text_off) */
  srv_finish finish;
  int stop_index;
  const char *err;
  size_t n_prompt, n_cached, n_generated;
  const srv_cache_report *cache; /* NULL until the job is admitted; fixed from then on */
} srv_snapshot;

typedef struct srv_reply {
  srv_api api;
  const srv_params *p;
  const char *model;
  const struct heed_tokenizer *tok; /* for the top logprobs' token texts; set after init */
  char id[48];
  long created;
  srv_toolscan ts;
  char *content;           /* content so far (after tool-call scanning) */
  size_t content_len, content_sent;
  size_t calls_sent;
  /* the JSON logprobs entries so far (non-streaming: all of them) */
  void *lp_json;           /* cJSON array */
  int started, block_open, block_index;
  char *out;               /* bytes ready to send */
  size_t out_len, out_cap, out_pos;
  int ended;
} srv_reply;

void srv_reply_init(srv_reply *r, srv_api api, const srv_params *p, const char *model);
/* A new response id for api ("chatcmpl-", "cmpl-" or "msg_" and 24 hex digits). */
void srv_reply_new_id(srv_api api, char *id, size_t cap);
/* The cache report as the "heed_cache" JSON object (text excerpts through
 * tok, control tokens shown), and as the one-line x-heed-cache header value. */
void *srv_cache_report_json(const srv_cache_report *c, const struct heed_tokenizer *tok);
void srv_cache_report_header(const srv_cache_report *c, char *buf, size_t cap);
void srv_reply_free(srv_reply *r);
/* Streaming: turns the snapshot into events appended to r->out (the last
 * ones, with usage and the end marker, once s->finish is set). */
void srv_reply_stream(srv_reply *r, const srv_snapshot *s);
/* Not streaming: feeds the snapshot; once s->finish is set, *json is the
 * whole response body (malloc'd) and *status its HTTP status. */
void srv_reply_feed(srv_reply *r, const srv_snapshot *s);
char *srv_reply_body(srv_reply *r, const srv_snapshot *s, int *status);
/* An error body in the API's shape (OpenAI's for everything but /v1/messages). */
char *srv_error_body(int anthropic, int status, const char *message);
const char *srv_error_type(int status);

/* ---------- cache.c: the prefix cache ---------- */

/* A radix tree over token ids, one per tenant. Each leaf is a finished
 * sequence: its model sequence holds the KV of every token on the path from
 * the root. Inner nodes are the points where cached sequences part; they hold
 * no sequence of their own, since the paged cache's reference counts already
 * share the blocks of a common prefix between the leaves below it. Matching
 * is per token, not per block: a hit that ends inside a block reuses it
 * through the cache's copy-on-write of a shared last block. */
typedef struct srv_cache_node {
  struct srv_cache_node *parent;
  struct srv_cache_node **kids;
  unsigned n_kids, cap_kids;
  int32_t *tok;          /* [n_tok] the edge from the parent */
  size_t n_tok;
  int seq;               /* leaves: the model sequence; inner nodes: -1 */
  uint64_t last_used;    /* leaves */
  /* leaves: where the sequence came from, for the cache's reports */
  char origin[48];       /* the id of the request that made it */
  double t_made, t_used; /* when it was made and last used (CLOCK_MONOTONIC seconds) */
  int finished;          /* 1: a whole finished sequence; 0: a prompt, cached once prefilled */
  uint64_t session;      /* the session it belongs to (0: none) */
} srv_cache_node;

/* What an evicted sequence held, kept after it is gone so that a later miss
 * can say "this was cached, and evicted": hashes of its first k * SRV_GHOST_STRIDE
 * tokens for each k, and where it came from. */
#define SRV_GHOST_STRIDE 32
#define SRV_GHOSTS 128
typedef struct srv_cache_ghost {
  uint64_t tenant, session;
  uint64_t *h;           /* [n_h] h[k]: the hash of the first (k + 1) * SRV_GHOST_STRIDE tokens */
  size_t n_h, len;
  double t_evicted;
  const char *why;       /* what needed the room (a static string) */
  char origin[48];
} srv_cache_ghost;

typedef struct srv_cache {
  struct srv_cache_root {
    uint64_t tenant;
    srv_cache_node *node;
  } *roots;
  unsigned n_roots, cap_roots;
  srv_cache_node **leaves; /* every leaf, for LRU and for finding one by sequence */
  unsigned n, cap;         /* n: leaves, the sequences the cache holds */
  uint64_t clock;
  /* sessions: when each was last seen; a session seen within keep_s is retained */
  struct srv_cache_session {
    uint64_t id;
    double t_last;
  } *sessions;
  unsigned n_sessions, cap_sessions;
  double keep_s;           /* 0: nothing is retained (plain LRU) */
  srv_cache_ghost ghosts[SRV_GHOSTS]; /* the last evictions, a ring */
  unsigned ghost_next;
} srv_cache;

/* The sequence sharing the longest prefix with ids[0..n) among tenant's (the
 * most recently used of those that share it), and that length; -1 when none
 * shares a token. Costs O(n), whatever the cache holds. */
int srv_cache_lookup(const srv_cache *c, const int32_t *ids, size_t n, uint64_t tenant, size_t *lcp);
/* Adds a finished sequence holding ids (copied). A cached sequence whose tokens
 * are a prefix of ids is let go, as is seq itself when ids is a prefix of one
 * already cached: the longer one holds every block of the shorter. *drop: the
 * sequences the caller frees (at most 1 + the leaves replaced), *n_drop their
 * count. On failure (HEED_E_NOMEM) the cache is as it was and seq the caller's. */
heed_status srv_cache_insert(srv_cache *c, int seq, const int32_t *ids, size_t n, uint64_t tenant, int *drop,
                             unsigned *n_drop);
/* Removes the least recently used sequence, put in *seq. 0 when empty.
 * Sequences of a retained session (one seen within keep_s of now) go last:
 * first the least recently used of the rest, then, when only retained ones
 * are left, those of the session seen longest ago. *retained (may be NULL)
 * says whether the one removed was retained. */
int srv_cache_evict(srv_cache *c, double now, int *seq, int *retained);
/* The same, recording why (a static string) with the evicted sequence's ghost. */
int srv_cache_evict_why(srv_cache *c, double now, const char *why, int *seq, int *retained);
/* The leaf srv_cache_evict at now would remove (NULL: empty). */
const srv_cache_node *srv_cache_victim(const srv_cache *c, double now);
/* The evicted sequence of tenant that shared the most of ids[0..n) (in whole
 * strides; *shared says how many tokens), or NULL when none shared a stride. */
const srv_cache_ghost *srv_cache_ghost_match(const srv_cache *c, const int32_t *ids, size_t n, uint64_t tenant,
                                             size_t *shared);
int srv_cache_evict_lru(srv_cache *c, int *seq); /* srv_cache_evict at the current time */
/* A request of session (nonzero) at time now: the session is retained until
 * now + keep_s. At most SRV_MAX_SESSIONS are remembered (the one seen longest
 * ago is forgotten first). */
#define SRV_MAX_SESSIONS 4096
void srv_cache_session_seen(srv_cache *c, uint64_t session, double now);
/* Whether session is retained at now, and until when (*until, may be NULL). */
int srv_cache_session_retained(const srv_cache *c, uint64_t session, double now, double *until);
/* The leaf holding seq (NULL: not cached); its tokens are the path from the root. */
const srv_cache_node *srv_cache_leaf(const srv_cache *c, int seq);
/* Tokens on leaf's path: the count, and up to max of them from position `from` in out. */
size_t srv_cache_tokens(const srv_cache_node *leaf, size_t from, int32_t *out, size_t max);
/* The tenant whose tree holds leaf. */
uint64_t srv_cache_leaf_tenant(const srv_cache *c, const srv_cache_node *leaf);
/* Says where seq's tokens came from (no effect for a sequence not cached). */
void srv_cache_set_origin(srv_cache *c, int seq, const char *origin, int finished, double t_made, uint64_t session);
/* Marks the cached sequence seq used now (no effect for one not cached). */
void srv_cache_touch(srv_cache *c, int seq);
void srv_cache_free(srv_cache *c);

#endif
