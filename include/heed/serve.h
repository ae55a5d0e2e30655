/* heed/serve.h - an OpenAI- and Anthropic-compatible HTTP server over one model.
 *
 * heed_serve_start opens nothing itself: it serves an open heed_model (whose
 * max_seqs and n_kv_blocks the caller sized with heed_serve_model_options) on
 * host:port until heed_serve_stop. Endpoints: POST /v1/chat/completions,
 * /v1/completions, /v1/messages, /v1/messages/count_tokens, /tokenize,
 * /detokenize; GET /v1/models, /health, /metrics. See README "Serving". */
#ifndef HEED_SERVE_H
#define HEED_SERVE_H

#include <stddef.h>
#include <stdint.h>

#include "heed/model.h"
#include "heed/status.h"

#ifdef __cplusplus
extern "C" {
#endif

#define HEED_SERVE_MAX_KEYS 64

typedef struct heed_serve_options {
  const char *host;            /* "127.0.0.1" when NULL; an IPv4 or IPv6 literal */
  unsigned port;               /* 0: any free port (heed_serve_port says which) */
  unsigned slots;              /* sequences generating at once; 0: 4 */
  unsigned max_queue;          /* requests waiting for a slot before 429; 0: 64 */
  uint64_t cache_bytes;        /* KV memory kept for the prefix cache beyond the slots' own */
  const char *keys[HEED_SERVE_MAX_KEYS]; /* API keys (borrowed); none: no authentication */
  unsigned n_keys;
  int cache_share;             /* 1: one prefix cache for every key (else one per key) */
  unsigned cache_entries;      /* finished sequences the prefix cache keeps at most; 0: 64 */
  unsigned draft_k;            /* n-gram draft tokens per step; 0: no drafting */
  int strict_model;            /* 1: a request naming another model is a 404 */
  const char *model_name;      /* what /v1/models lists and responses name; NULL: the file's name */
  unsigned timeout_s;          /* a connection idle this long is closed, an upload this slow is a 408; 0: 60 */
  size_t max_body;             /* request bytes before 413; 0: 64 MiB */
  const char *chat_template;   /* NULL: the model's own (heed_chat_open) */
  /* A request may name its session (header X-Session-Id, else OpenAI `user` or
   * Anthropic `metadata.user_id`). A session's cached sequences are retained
   * for this many seconds after its last request: evicted only when no other
   * cached sequence is left to evict. 0: 600; negative: none are retained. */
  int session_keep_s;
  /* The disk tier: whole KV blocks of the cached sequences evicted from memory
   * (and of every cached one when the server stops) are written to files in
   * cache_dir, at most cache_disk bytes (the least recently used deleted
   * first), keyed by the model file's bytes, the KV configuration and the
   * tokens, and read back for a prompt they begin instead of recomputed; they
   * survive a restart. A file that fails its checks is deleted, never used.
   * NULL: no disk tier. cache_disk 0: 16 GiB. */
  const char *cache_dir;
  uint64_t cache_disk;
  /* Chunk reuse: when a prompt parts from every cached sequence (a changed
   * line near its top, a dropped tool result), later runs of it that cached
   * sequences hold, at any position, are copied instead of recomputed: K moved
   * to its new position by RoPE, V as it is; the first reuse_boundary tokens
   * of each run (0: 8) are recomputed. Those tokens' K/V were made without the
   * text that changed, so the output may differ from a full recompute: off by
   * default; a request may set it with the header x-heed-cache-reuse: off|chunks. */
  int cache_reuse;
  unsigned reuse_boundary;
} heed_serve_options;

void heed_serve_options_init(heed_serve_options *o);

/* Sequences the server needs the model opened with (heed_model_options.max_seqs):
 * its slots plus the finished sequences the prefix cache may keep. */
unsigned heed_serve_max_seqs(const heed_serve_options *o);
/* Tokens of KV the model should be opened with (heed_model_options.kv_tokens):
 * every slot at n_ctx plus cache_bytes at kv_bytes_per_token (all layers). */
size_t heed_serve_kv_tokens(const heed_serve_options *o, unsigned n_ctx, double kv_bytes_per_token);

typedef struct heed_server heed_server;

/* Starts serving m (borrowed, used by the server's scheduler thread only
 * until heed_serve_stop returns). HEED_E_IO when the address cannot be bound. */
heed_status heed_serve_start(heed_model *m, const heed_serve_options *o, heed_server **out, heed_error *err);
unsigned heed_serve_port(const heed_server *s);
/* Stops taking connections, cuts running requests with a final error,
 * frees every sequence and the server. NULL is fine. */
void heed_serve_stop(heed_server *s);

#ifdef __cplusplus
}
#endif
#endif
