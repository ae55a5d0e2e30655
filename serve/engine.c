/* serve/engine.c - the scheduler: continuous batching over one model.
 *
 * One thread owns the model. Each turn it
 *   1. cuts cancelled jobs (their sequences freed, not cached) and admits
 *      queued ones into free slots, each starting from the cached or running
 *      sequence sharing the longest prefix with its prompt (forked, so the
 *      blocks are shared by reference count, and truncated to that prefix);
 *   2. builds one batch: every decoding job's pending token (plus its n-gram
 *      draft), then slices of pending prefills under the step's token budget,
 *      so a long prompt arriving never stalls the streams already running;
 *   3. runs heed_model_step once, then samples (or verifies the drafts with
 *      heed's lossless rejection sampling) per job, appending text;
 *   4. files finished jobs' sequences in the prefix cache (LRU, evicted when
 *      a step needs their blocks).
 * The lock guards the queue and each job's shared part; the model, the
 * cache index and the slots are this thread's alone, so the model step runs
 * unlocked. */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "heed/heed.h"
#include "heed/spec.h"
#include "heed/tokenizer.h"
#include "serve/serve_internal.h"

#define SRV_PREFILL_WHILE_DECODING 128

struct srv_engine {
  heed_model *m;
  const heed_tokenizer *tok;
  srv_engine_config cfg;
  srv_metrics *mx;
  unsigned V, n_ctx, max_batch, block_len;
  pthread_t thread;
  pthread_mutex_t mu;
  pthread_cond_t wake;       /* a job arrived, was cancelled, or stop */
  int stopping, joined;
  srv_job *q_head, *q_tail;  /* waiting for a slot, in arrival order */
  unsigned n_queued;
  srv_engine_stats stats;    /* published under mu after each turn */
  /* the thread's own */
  srv_job **slot;            /* [cfg.slots] running jobs, NULL where free */
  srv_cache cache;
  int *drop;                 /* [cfg.cache_entries + 1] sequences the cache let go */
  heed_spec *spec;
  float *logits;             /* [cfg.slots * (draft_k + 1)][V] */
  heed_model_batch_seq *batch; /* [cfg.slots] */
  srv_job **in_batch;        /* [cfg.slots] */
  long *len0;                /* [cfg.slots] each batched job's sequence length before the step */
  int32_t *feed;             /* [cfg.slots][draft_k + 1] */
  unsigned *n_draft;         /* [cfg.slots] */
  char *dbuf;
  size_t dcap;
  float *lp;                 /* [V] log-probabilities of one row */
  uint64_t seed_counter;
  /* the disk tier (NULL: off) */
  srv_disk *disk;
  void *disk_buf;            /* [heed_model_kv_block_bytes] one block */
  int32_t *disk_tok;         /* [n_ctx + draft_k + 2] a cached sequence's tokens */
  int disk_warned;           /* a failed write was reported */
};

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

srv_job *srv_job_new(srv_params *p, int32_t *prompt, size_t n_prompt, unsigned max_new, uint64_t tenant) {
  srv_job *j = calloc(1, sizeof *j);
  if (!j) {
    free(prompt);
    srv_params_free(p);
    return NULL;
  }
  j->p = *p, j->prompt = prompt, j->n_prompt = n_prompt, j->max_new = max_new, j->tenant = tenant;
  memset(p, 0, sizeof *p);
  j->seq = -1;
  j->reuse = -1;
  j->ds = (heed_detok_state)HEED_DETOK_STATE_INIT;
  pthread_condattr_t a;
  pthread_condattr_init(&a);
  pthread_condattr_setclock(&a, CLOCK_MONOTONIC);
  pthread_cond_init(&j->cv, &a);
  pthread_condattr_destroy(&a);
  return j;
}

void srv_job_free(srv_job *j) {
  if (!j) return;
  pthread_cond_destroy(&j->cv);
  srv_params_free(&j->p);
  free(j->prompt);
  free(j->text);
  free(j->lps);
  free(j->lp_text);
  free(j->ctx);
  free(j->counts_ids);
  free(j->distinct);
  free(j->hold);
  free(j->imp);
  heed_drafter_destroy(j->drafter);
  free(j);
}

/* Under mu. */
static void job_unref(srv_job *j) {
  if (--j->refs == 0) srv_job_free(j);
}

pthread_mutex_t *srv_engine_lock(srv_engine *e) { return &e->mu; }

static int grow(void **p, size_t *cap, size_t need, size_t elem) {
  if (need <= *cap) return 0;
  size_t c = *cap ? *cap : 64;
  while (c < need) c *= 2;
  void *n = realloc(*p, c * elem);
  if (!n) return -1;
  *p = n, *cap = c;
  return 0;
}

/* ---------- text out: stop strings held back, then released to the job ---------- */

/* Under mu. Appends s to the text, or the part of it before a stop string. */
/* Appends s[0..n) and a NUL to a job's growing buffer; out of memory ends the job. */
static int job_append(srv_job *j, char **buf, size_t *len, size_t *cap, const char *s, size_t n) {
  if (grow((void **)buf, cap, *len + n + 1, 1)) {
    j->finish = SRV_FINISH_ERROR;
    snprintf(j->err, sizeof j->err, "out of memory for the output text");
    return -1;
  }
  memcpy(*buf + *len, s, n);
  *len += n;
  (*buf)[*len] = 0;
  return 0;
}

static void text_release(srv_job *j, const char *s, size_t n) {
  if (n) job_append(j, &j->text, &j->text_len, &j->text_cap, s, n);
}

/* Under mu. The new bytes go through the hold buffer: everything that can no
 * longer be part of a stop string is released; a stop string ends the job. */
static void text_push(srv_job *j, const char *s, size_t n, int final) {
  const srv_params *p = &j->p;
  if (!p->n_stops) {
    text_release(j, s, n);
    return;
  }
  if (job_append(j, &j->hold, &j->hold_len, &j->hold_cap, s, n)) return;
  /* the earliest stop string; only its last occurrence can be new, but the hold is short */
  size_t cut = j->hold_len;
  int which = -1;
  for (int i = 0; i < p->n_stops; i++) {
    const char *f = memmem(j->hold, j->hold_len, p->stops[i], strlen(p->stops[i]));
    if (f && (size_t)(f - j->hold) < cut) cut = (size_t)(f - j->hold), which = i;
  }
  if (which >= 0) {
    text_release(j, j->hold, cut);
    j->hold_len = 0;
    if (!j->finish) j->finish = SRV_FINISH_STOP, j->stop_index = which;
    return;
  }
  size_t keep = 0;
  if (!final)
    for (int i = 0; i < p->n_stops; i++) {
      size_t sl = strlen(p->stops[i]);
      for (size_t k = sl - 1; k > keep; k--)
        if (k <= j->hold_len && memcmp(j->hold + j->hold_len - k, p->stops[i], k) == 0) {
          keep = k;
          break;
        }
    }
  text_release(j, j->hold, j->hold_len - keep);
  memmove(j->hold, j->hold + j->hold_len - keep, keep);
  j->hold_len = keep;
}

/* ---------- sampling ---------- */

static void sampling_of(const srv_job *j, heed_sampling *s) {
  const srv_params *p = &j->p;
  heed_sampling_init(s);
  s->temperature = p->temperature;
  s->top_k = p->top_k;
  s->top_p = p->top_p > 0 ? p->top_p : 1;
  s->min_p = p->min_p;
  s->repetition_penalty = p->repetition_penalty > 0 ? p->repetition_penalty : 1;
  if (s->repetition_penalty != 1) s->penalty_tokens = j->ctx, s->n_penalty_tokens = (unsigned)j->n_ctx_ids;
}

/* OpenAI's presence and frequency penalties over the tokens made so far. */
static void apply_penalties(const srv_job *j, float *row) {
  const srv_params *p = &j->p;
  if (!j->counts_ids) return;
  for (size_t i = 0; i < j->n_distinct; i++) {
    int32_t t = j->distinct[i];
    row[t] -= p->presence_penalty + p->frequency_penalty * (float)j->counts_ids[t];
  }
}

/* The log-probabilities of the row (the model's, after the penalties), and
 * the token's entry with the top n. */
static void record_logprobs(srv_engine *e, srv_job *j, const float *row, int32_t tok) {
  unsigned V = e->V;
  double mx = -INFINITY;
  for (unsigned i = 0; i < V; i++)
    if (row[i] > mx) mx = row[i];
  double sum = 0;
  for (unsigned i = 0; i < V; i++) sum += exp((double)row[i] - mx);
  double lse = mx + log(sum);
  if (grow((void **)&j->lps, &j->cap_lps, j->n_lps + 1, sizeof *j->lps)) return;
  srv_token_lp *o = &j->lps[j->n_lps++];
  memset(o, 0, sizeof *o);
  o->id = tok;
  o->logprob = (float)((double)row[tok] - lse);
  unsigned n = j->p.top_logprobs;
  /* top n by insertion into a short sorted list */
  for (unsigned i = 0; i < V && n; i++) {
    float v = row[i];
    if (o->n_top == n && v <= row[o->top_id[n - 1]]) continue;
    unsigned at = o->n_top < n ? o->n_top++ : n - 1;
    while (at > 0 && row[o->top_id[at - 1]] < v) {
      o->top_id[at] = o->top_id[at - 1];
      at--;
    }
    o->top_id[at] = (int32_t)i;
  }
  for (unsigned k = 0; k < o->n_top; k++) o->top_lp[k] = (float)((double)row[o->top_id[k]] - lse);
}

/* Under mu. A token the model made: the end of the turn, or text. Returns 1
 * when the job is finished. */
static int accept_token(srv_engine *e, srv_job *j, int32_t t, const float *row) {
  if (j->t_first == 0) {
    j->t_first = now_s();
    srv_metrics_ttft(e->mx, j->t_first - j->t_submit);
  }
  if (heed_tokenizer_is_eog(e->tok, t)) {
    if (!j->finish) j->finish = SRV_FINISH_EOS;
    return 1;
  }
  if (j->p.logprobs && row) record_logprobs(e, j, row, t);
  size_t dl = 0;
  heed_tokenizer_detok_push(e->tok, &j->ds, t, HEED_DETOK_REPLACE, e->dbuf, e->dcap, &dl);
  if (j->p.logprobs && row && j->n_lps &&
      !grow((void **)&j->lp_text, &j->lp_text_cap, j->lp_text_len + dl + 1, 1)) {
    memcpy(j->lp_text + j->lp_text_len, e->dbuf, dl);
    j->lps[j->n_lps - 1].text_off = (uint32_t)j->lp_text_len;
    j->lps[j->n_lps - 1].text_len = (uint32_t)dl;
    j->lp_text_len += dl;
  }
  j->n_generated++;
  j->ctx[j->n_ctx_ids++] = t;
  if (j->counts_ids && j->counts_ids[t]++ == 0) j->distinct[j->n_distinct++] = t;
  if (j->drafter && heed_drafter_append(j->drafter, &t, 1)) j->draft_off = 1;
  text_push(j, e->dbuf, dl, 0);
  if (j->finish) return 1;
  if (j->n_generated >= j->max_new) {
    j->finish = SRV_FINISH_LENGTH;
    return 1;
  }
  return 0;
}

/* ---------- admission, the cache, the end of a job ---------- */

static void publish_stats(srv_engine *e) {
  unsigned running = 0;
  for (unsigned i = 0; i < e->cfg.slots; i++) running += e->slot[i] != NULL;
  e->stats.queued = e->n_queued;
  e->stats.running = running;
  e->stats.cache_seqs = e->cache.n;
  e->stats.blocks = heed_model_kv_blocks(e->m);
  e->stats.blocks_free = heed_model_kv_free_blocks(e->m);
  e->stats.block_tokens = e->block_len;
  e->stats.disk = e->disk != NULL;
  srv_disk_get_stats(e->disk, &e->stats.disk_st);
}

static void cache_drop(srv_engine *e, int seq) { heed_model_seq_free(e->m, seq); }

/* ---------- the disk tier ---------- */

static void make_room(srv_engine *e, uint32_t need);

/* The first block's parent in the chain of block hashes: one chain per
 * tenant, so no tenant reads another's blocks. */
static uint64_t disk_seed(uint64_t tenant) { return srv_disk_chain(0x68656564u, (const int32_t *)&tenant, 2); }

/* Writes the full blocks of a cached sequence that the disk does not hold. */
static void disk_save(srv_engine *e, const srv_cache_node *leaf) {
  size_t len = srv_cache_tokens(leaf, 0, NULL, 0);
  const unsigned bl = e->block_len;
  if (len / bl == 0 || len > (size_t)e->n_ctx + e->cfg.draft_k + 2) return;
  srv_cache_tokens(leaf, 0, e->disk_tok, len);
  uint64_t h = disk_seed(srv_cache_leaf_tenant(&e->cache, leaf));
  for (unsigned b = 0; b < len / bl; b++) {
    const uint64_t parent = h;
    h = srv_disk_chain(parent, e->disk_tok + (size_t)b * bl, bl);
    if (srv_disk_has(e->disk, h)) {
      srv_disk_put(e->disk, h, parent, b, NULL, NULL); /* marks it used */
      continue;
    }
    heed_status st = heed_model_seq_block_read(e->m, leaf->seq, b, e->disk_buf);
    if (st == HEED_OK) st = srv_disk_put(e->disk, h, parent, b, e->disk_tok + (size_t)b * bl, e->disk_buf);
    if (st != HEED_OK) { /* a full disk or an IO error: the rest is only not saved; said once */
      if (!e->disk_warned) fprintf(stderr, "heed serve: warning: the disk tier could not write a block: %s\n", heed_status_str(st));
      e->disk_warned = 1;
      return;
    }
  }
}

/* j's sequence holds its prompt's first *reuse tokens; the blocks after
 * those that the disk holds are appended (the sequence cut back to a block
 * boundary first), up to the last prompt token, which is always run. Returns
 * the tokens read back and updates *reuse to what the sequence holds. */
static size_t disk_restore(srv_engine *e, srv_job *j, size_t *reuse) {
  const unsigned bl = e->block_len;
  const size_t b0 = *reuse / bl, last = (j->n_prompt - 1) / bl; /* blocks [b0, last) may come from disk */
  if (b0 >= last) return 0;
  uint64_t h = disk_seed(j->tenant);
  for (size_t b = 0; b < b0; b++) h = srv_disk_chain(h, j->prompt + b * bl, bl);
  if (!srv_disk_has(e->disk, srv_disk_chain(h, j->prompt + b0 * bl, bl))) return 0;
  size_t b = b0;
  for (; b < last; b++) {
    const uint64_t hb = srv_disk_chain(h, j->prompt + b * bl, bl);
    if (!srv_disk_has(e->disk, hb)) break;
    make_room(e, 1);
    if (srv_disk_get(e->disk, hb, h, j->prompt + b * bl, e->disk_buf) != 1) break;
    if (b == b0 && heed_model_seq_truncate(e->m, j->seq, (unsigned)(b0 * bl)) != HEED_OK) break;
    if (heed_model_seq_block_append(e->m, j->seq, e->disk_buf) != HEED_OK) break;
    h = hb;
  }
  if (b == b0) return 0;
  long held = heed_model_seq_len(e->m, j->seq);
  *reuse = held > 0 ? (size_t)held : 0;
  return (b - b0) * bl;
}

/* ---------- chunk reuse ---------- */

/* Plans j's chunk reuse (serve/chunks.c) over the tenant's cached
 * sequences: after the first `from` tokens (what the sequence holds), runs
 * of the prompt they hold, each but its first boundary tokens to be copied.
 * Returns the tokens planned. */
static size_t reuse_plan(srv_engine *e, srv_job *j, size_t from) {
  size_t planned = 0;
  if (from + SRV_CHUNK >= j->n_prompt || !e->cache.n) return 0;
  unsigned nl = 0, n_runs = 0;
  const srv_cache_node **lv = malloc(e->cache.n * sizeof *lv);
  int32_t **tok = calloc(e->cache.n, sizeof *tok);
  size_t *len = calloc(e->cache.n, sizeof *len);
  srv_run *runs = NULL;
  if (!lv || !tok || !len) goto out;
  for (unsigned i = 0; i < e->cache.n; i++) {
    const srv_cache_node *x = e->cache.leaves[i];
    if (srv_cache_leaf_tenant(&e->cache, x) != j->tenant) continue;
    size_t L = srv_cache_tokens(x, 0, NULL, 0);
    if (L < SRV_CHUNK || !(tok[nl] = malloc(L * sizeof(int32_t)))) continue;
    srv_cache_tokens(x, 0, tok[nl], L);
    lv[nl] = x, len[nl] = L, nl++;
  }
  planned = srv_chunk_runs(j->prompt, j->n_prompt, from, (const int32_t *const *)tok, len, nl, e->cfg.reuse_boundary,
                           &runs, &n_runs);
  if (n_runs && !(j->imp = malloc(n_runs * sizeof *j->imp))) planned = 0, n_runs = 0;
  for (unsigned r = 0; r < n_runs; r++) {
    j->imp[r] = (struct srv_import){.dst = runs[r].dst, .src_pos = runs[r].src_pos, .n = runs[r].n,
                                    .src_seq = lv[runs[r].src]->seq};
    srv_cache_touch(&e->cache, lv[runs[r].src]->seq); /* less likely to be evicted before the copy */
  }
  j->n_imp = n_runs;
out:
  for (unsigned l = 0; l < nl; l++) free(tok[l]);
  free(tok), free(len), free(lv), free(runs);
  return planned;
}

/* Unlocked, the engine thread. j's prefill has reached its next planned
 * run: copies it from the cached sequence if that still holds those tokens
 * (else they are recomputed). */
static void reuse_copy(srv_engine *e, srv_job *j) {
  const struct srv_import *x = &j->imp[j->i_imp++];
  make_room(e, (uint32_t)((x->n + e->block_len - 1) / e->block_len + 1));
  const srv_cache_node *leaf = srv_cache_leaf(&e->cache, x->src_seq);
  int ok = leaf && srv_cache_tokens(leaf, 0, NULL, 0) >= x->src_pos + x->n;
  if (ok) {
    int32_t *t = malloc(x->n * sizeof *t);
    if (t) srv_cache_tokens(leaf, x->src_pos, t, x->n);
    ok = t && !memcmp(t, j->prompt + x->dst, x->n * sizeof *t);
    free(t);
  }
  if (ok && heed_model_seq_copy_shifted(e->m, j->seq, x->src_seq, (unsigned)x->src_pos, (unsigned)x->n) == HEED_OK) {
    pthread_mutex_lock(&e->mu);
    j->n_fed += x->n, j->n_cached += x->n, j->n_shifted += x->n;
    pthread_mutex_unlock(&e->mu);
    return;
  }
  pthread_mutex_lock(&e->mu);
  j->cache.shifted -= x->n; /* planned, not done: recomputed */
  pthread_mutex_unlock(&e->mu);
}

/* Under mu. Evicts one cached sequence (a retained session's last) and frees
 * it, recording why; 0 when the cache is empty. With the disk tier on, its
 * full blocks go to disk first. */
static int evict_one(srv_engine *e, const char *why) {
  int seq, retained = 0;
  const double now = now_s();
  if (e->disk) {
    const srv_cache_node *v = srv_cache_victim(&e->cache, now);
    if (v) disk_save(e, v);
  }
  if (!srv_cache_evict_why(&e->cache, now, why, &seq, &retained)) return 0;
  srv_metrics_eviction(e->mx, retained);
  cache_drop(e, seq);
  return 1;
}

/* Frees cached sequences, least recently used first, until `need` blocks are free. */
static void make_room(srv_engine *e, uint32_t need) {
  while (heed_model_kv_free_blocks(e->m) < need && evict_one(e, "memory: KV blocks for running requests")) {
  }
}

/* Under mu. A prompt just prefilled goes to the cache at once, as a fork
 * sharing every block with the job's sequence: a request arriving meanwhile
 * finds it there, and it outlives a job that is cancelled (agents cancel and
 * send the same prompt again). Costs a sequence of the cache's and, once the
 * job writes past it, a copy of the shared last block. When the job finishes,
 * its whole sequence extends this entry and the fork is let go. */
static void cache_prompt(srv_engine *e, srv_job *j) {
  if (!e->cfg.cache_entries || j->n_prompt < 2 || heed_model_seq_len(e->m, j->seq) != (long)j->n_prompt) return;
  while (e->cache.n >= e->cfg.cache_entries && evict_one(e, "the entry limit (--cache-entries)")) {
  }
  int fork;
  if (heed_model_seq_fork(e->m, j->seq, &fork) != HEED_OK) return; /* no sequence free: only not cached */
  unsigned n_drop = 0;
  if (srv_cache_insert(&e->cache, fork, j->prompt, j->n_prompt, j->tenant, e->drop, &n_drop) != HEED_OK) {
    heed_model_seq_free(e->m, fork);
    return;
  }
  srv_cache_set_origin(&e->cache, fork, j->origin, 0, now_s(), j->session);
  for (unsigned i = 0; i < n_drop; i++) cache_drop(e, e->drop[i]);
}

/* Under mu. The job leaves its slot: its sequence goes to the prefix cache
 * (cancelled or failed: freed), the text still held is settled. */
static void job_finish(srv_engine *e, unsigned slot) {
  srv_job *j = e->slot[slot];
  e->slot[slot] = NULL;
  if (j->finish == SRV_FINISH_EOS || j->finish == SRV_FINISH_LENGTH) {
    size_t dl = 0;
    heed_tokenizer_detok_flush(&j->ds, HEED_DETOK_REPLACE, e->dbuf, e->dcap, &dl);
    text_push(j, e->dbuf, dl, 1);
    if (j->finish == SRV_FINISH_STOP) j->finish = SRV_FINISH_STOP; /* the flush completed a stop string */
  }
  int cached = 0;
  if (j->seq >= 0 && j->finish != SRV_FINISH_CANCELLED && j->finish != SRV_FINISH_ERROR && e->cfg.cache_entries) {
    /* the tokens whose K/V the sequence holds: the prompt and every token fed since */
    long len = heed_model_seq_len(e->m, j->seq);
    if (len > 0 && (size_t)len <= j->n_ctx_ids) {
      while (e->cache.n >= e->cfg.cache_entries && evict_one(e, "the entry limit (--cache-entries)")) {
      }
      unsigned n_drop = 0;
      if (srv_cache_insert(&e->cache, j->seq, j->ctx, (size_t)len, j->tenant, e->drop, &n_drop) == HEED_OK) {
        cached = 1;
        srv_cache_set_origin(&e->cache, j->seq, j->origin, 1, now_s(), j->session);
        for (unsigned i = 0; i < n_drop; i++) cache_drop(e, e->drop[i]);
      }
    }
  }
  if (!cached && j->seq >= 0) heed_model_seq_free(e->m, j->seq);
  j->seq = -1;
  if (j->n_generated > 1 && j->t_first > 0) {
    double dt = now_s() - j->t_first;
    srv_metrics_tpot(e->mx, dt / (double)(j->n_generated - 1), j->n_generated - 1);
  }
  srv_metrics_tokens(e->mx, j->n_prompt, j->n_generated, j->n_cached, j->draft_prop, j->draft_acc);
  srv_metrics_restored(e->mx, j->n_restored, j->n_shifted);
  if (j->cache.done) srv_metrics_match(e->mx, j->cache.source);
  pthread_cond_broadcast(&j->cv);
  job_unref(j);
}

/* Under mu. j's cache report: lcp tokens shared with sequence src (a cached
 * one, or running job o's), and a few tokens either side of where they part. */
static void report_match(srv_engine *e, srv_job *j, size_t lcp, srv_cache_source source, int src, const srv_job *o) {
  srv_cache_report *r = &j->cache;
  memset(r, 0, sizeof *r);
  r->done = 1;
  r->n_prompt = j->n_prompt, r->reused = j->n_cached, r->lcp = lcp, r->source = source;
  size_t b0 = lcp > SRV_EXCERPT ? lcp - SRV_EXCERPT : 0;
  r->n_before = (unsigned)(lcp - b0);
  memcpy(r->before, j->prompt + b0, r->n_before * sizeof(int32_t));
  size_t nn = j->n_prompt - lcp < SRV_EXCERPT ? j->n_prompt - lcp : SRV_EXCERPT;
  memcpy(r->new_next, j->prompt + lcp, nn * sizeof(int32_t));
  r->n_new_next = (unsigned)nn;
  if (source == SRV_SRC_CACHE) {
    const srv_cache_node *leaf = srv_cache_leaf(&e->cache, src);
    if (leaf) {
      r->match_len = srv_cache_tokens(leaf, lcp, r->old_next, SRV_EXCERPT);
      size_t on = r->match_len - lcp;
      r->n_old_next = (unsigned)(on < SRV_EXCERPT ? on : SRV_EXCERPT);
      snprintf(r->origin, sizeof r->origin, "%s", leaf->origin);
      r->age_s = now_s() - leaf->t_made;
      r->source_finished = leaf->finished;
    }
  } else if (source == SRV_SRC_DISK) {
    r->match_len = lcp; /* the disk tier holds whole blocks: where they end is all it knows */
  } else if (source == SRV_SRC_RUNNING && o) {
    long held = heed_model_seq_len(e->m, o->seq);
    r->match_len = held > 0 ? (size_t)held : 0;
    size_t on = r->match_len > lcp ? r->match_len - lcp : 0;
    r->n_old_next = (unsigned)(on < SRV_EXCERPT ? on : SRV_EXCERPT);
    memcpy(r->old_next, o->ctx + lcp, r->n_old_next * sizeof(int32_t));
    snprintf(r->origin, sizeof r->origin, "%s", o->origin);
    r->age_s = now_s() - o->t_submit;
  }
  /* a miss the cache once could have served: say what evicted it */
  size_t shared = 0;
  const srv_cache_ghost *g = lcp + SRV_GHOST_STRIDE <= j->n_prompt
                                 ? srv_cache_ghost_match(&e->cache, j->prompt, j->n_prompt, j->tenant, &shared)
                                 : NULL;
  if (g && shared > lcp) {
    r->evicted_shared = shared;
    snprintf(r->evicted_origin, sizeof r->evicted_origin, "%s", g->origin);
    r->evicted_ago_s = now_s() - g->t_evicted;
    r->evicted_why = g->why;
  }
}

/* Under mu. Starts j in a slot: from the cached sequence sharing the longest
 * prefix (at least one prompt token is always run: its logits start the
 * output), else a new sequence. */
static int job_admit(srv_engine *e, srv_job *j, unsigned slot) {
  size_t cap = (size_t)e->n_ctx + e->cfg.draft_k + 2;
  j->ctx = malloc(cap * sizeof(int32_t));
  if (!j->ctx) goto nomem;
  memcpy(j->ctx, j->prompt, j->n_prompt * sizeof(int32_t));
  j->n_ctx_ids = j->n_prompt;
  const srv_params *p = &j->p;
  if (p->presence_penalty != 0 || p->frequency_penalty != 0) {
    j->counts_ids = calloc(e->V, sizeof(uint32_t));
    j->distinct = malloc(cap * sizeof(int32_t));
    if (!j->counts_ids || !j->distinct) goto nomem;
  }
  size_t lcp = 0;
  int src = srv_cache_lookup(&e->cache, j->prompt, j->n_prompt, j->tenant, &lcp), hit = src;
  const srv_job *from_job = NULL;
  /* running requests share too: agents send sub-requests with one long prefix
   * at once; only what the running sequence already holds can be shared */
  for (unsigned s = 0; s < e->cfg.slots; s++) {
    const srv_job *o = e->slot[s];
    if (!o || o->tenant != j->tenant || o->seq < 0) continue;
    long held = heed_model_seq_len(e->m, o->seq);
    size_t k = 0, lim = held > 0 ? (size_t)held : 0;
    if (lim > j->n_prompt) lim = j->n_prompt;
    while (k < lim && o->ctx[k] == j->prompt[k]) k++;
    if (k > lcp) lcp = k, src = o->seq, hit = -1, from_job = o;
  }
  size_t reuse = lcp < j->n_prompt ? lcp : j->n_prompt - 1;
  heed_status st;
  if (src >= 0 && reuse > 0) {
    if (hit >= 0) srv_cache_touch(&e->cache, hit);
    st = heed_model_seq_fork(e->m, src, &j->seq);
    if (st == HEED_OK) st = heed_model_seq_truncate(e->m, j->seq, (unsigned)reuse);
  } else {
    reuse = 0;
    st = heed_model_seq_new(e->m, &j->seq);
  }
  if (st != HEED_OK) {
    /* no free sequence: give one cached sequence back and start cold */
    if (j->seq >= 0) heed_model_seq_free(e->m, j->seq), j->seq = -1;
    reuse = 0;
    if (!evict_one(e, "a free sequence for a new request") || heed_model_seq_new(e->m, &j->seq)) {
      j->seq = -1;
      j->finish = SRV_FINISH_ERROR;
      snprintf(j->err, sizeof j->err, "no KV sequence is free: %s", heed_model_last_error(e->m));
      return -1;
    }
  }
  const size_t restored = e->disk ? disk_restore(e, j, &reuse) : 0;
  const size_t shifted = (j->reuse < 0 ? e->cfg.cache_reuse : j->reuse) ? reuse_plan(e, j, reuse) : 0;
  j->n_cached = j->n_fed = reuse;
  j->n_restored = restored;
  srv_cache_session_seen(&e->cache, j->session, now_s());
  srv_cache_source source = src >= 0 && lcp ? (hit >= 0 ? SRV_SRC_CACHE : SRV_SRC_RUNNING) : SRV_SRC_NONE;
  if (restored && reuse > lcp) source = SRV_SRC_DISK, lcp = reuse; /* the disk held more than memory */
  report_match(e, j, lcp, source, src, from_job);
  j->cache.reused = reuse - restored, j->cache.restored = restored, j->cache.shifted = shifted;
  j->seed = p->has_seed ? p->seed : (uint64_t)time(NULL) * 0x9e3779b97f4a7c15ull + ++e->seed_counter;
  /* drafting: lossless only where every row is sampled as the first would be */
  if (e->cfg.draft_k && !p->logprobs && !j->counts_ids && (p->repetition_penalty == 0 || p->repetition_penalty == 1)) {
    heed_ngram_config nc = {.vocab = e->V, .capacity = (unsigned)cap};
    heed_error err;
    if (heed_ngram_drafter_create(&nc, &j->drafter, &err) == HEED_OK &&
        heed_drafter_append(j->drafter, j->prompt, (unsigned)j->n_prompt) != HEED_OK) {
      heed_drafter_destroy(j->drafter);
      j->drafter = NULL;
    }
  }
  j->admitted = 1;
  pthread_cond_broadcast(&j->cv);
  e->slot[slot] = j;
  return 0;
nomem:
  j->finish = SRV_FINISH_ERROR;
  snprintf(j->err, sizeof j->err, "out of memory admitting the request");
  return -1;
}

/* ---------- the loop ---------- */

/* Blocks a sequence of len needs to take n more tokens, a copied shared last block included. */
static uint32_t blocks_for(unsigned bl, long len, unsigned n) {
  uint32_t have = (uint32_t)((len + bl - 1) / bl), want = (uint32_t)((len + n + bl - 1) / bl);
  return want - have + 1;
}

/* Under mu: cancellations, the stop, admissions. */
static void turn_begin(srv_engine *e) {
  for (unsigned s = 0; s < e->cfg.slots; s++) {
    srv_job *j = e->slot[s];
    if (!j) continue;
    if (j->cancel) j->finish = SRV_FINISH_CANCELLED;
    else if (e->stopping) {
      j->finish = SRV_FINISH_ERROR;
      snprintf(j->err, sizeof j->err, "the server is stopping");
    }
    if (j->finish) job_finish(e, s);
  }
  /* queued jobs cancelled meanwhile leave the queue */
  for (srv_job **pp = &e->q_head; *pp;) {
    srv_job *j = *pp;
    if (j->cancel || e->stopping) {
      *pp = j->next;
      e->n_queued--;
      j->finish = j->cancel ? SRV_FINISH_CANCELLED : SRV_FINISH_ERROR;
      if (!j->cancel) snprintf(j->err, sizeof j->err, "the server is stopping");
      pthread_cond_broadcast(&j->cv);
      job_unref(j);
    } else {
      pp = &j->next;
    }
  }
  e->q_tail = NULL;
  for (srv_job *j = e->q_head; j; j = j->next) e->q_tail = j;
  for (unsigned s = 0; s < e->cfg.slots && e->q_head; s++) {
    if (e->slot[s]) continue;
    srv_job *j = e->q_head;
    e->q_head = j->next;
    if (!e->q_head) e->q_tail = NULL;
    e->n_queued--;
    j->next = NULL;
    if (job_admit(e, j, s)) {
      pthread_cond_broadcast(&j->cv);
      job_unref(j);
      s--; /* the slot is still free */
      continue;
    }
  }
}

/* Unlocked: the batch of this turn. Returns the number of sequences in it. */
static unsigned build_batch(srv_engine *e, float **rows_end) {
  unsigned n = 0, budget = e->max_batch, K = e->cfg.draft_k;
  float *rows = e->logits;
  uint32_t need = 0;
  /* decode rows first: the streams already running are never starved */
  for (unsigned s = 0; s < e->cfg.slots; s++) {
    srv_job *j = e->slot[s];
    if (!j || j->n_fed < j->n_prompt || budget == 0) continue;
    int32_t *feed = e->feed + (size_t)n * (K + 1);
    feed[0] = j->pending;
    unsigned d = 0;
    if (j->drafter && !j->draft_off && K) {
      /* drafts past max_new or the context would be wasted */
      long len = heed_model_seq_len(e->m, j->seq);
      long room_ctx = (long)e->n_ctx - len - 1;
      long room_new = (long)j->max_new - (long)j->n_generated - 1;
      long k = K;
      if (k > room_ctx) k = room_ctx;
      if (k > room_new) k = room_new;
      if (k > (long)budget - 1) k = (long)budget - 1;
      heed_draft dr = {0};
      if (k > 0 && heed_drafter_propose(j->drafter, (unsigned)k, &dr) == HEED_OK) {
        d = dr.n;
        memcpy(feed + 1, dr.tokens, d * sizeof(int32_t));
      }
    }
    e->n_draft[n] = d;
    e->in_batch[n] = j;
    e->len0[n] = heed_model_seq_len(e->m, j->seq);
    e->batch[n] = (heed_model_batch_seq){.seq = j->seq, .n_tokens = 1 + d, .tokens = feed, .n_logits = 1 + d,
                                         .logits = rows};
    rows += (size_t)(1 + d) * e->V;
    budget -= 1 + d;
    need += blocks_for(e->block_len, e->len0[n], 1 + d);
    n++;
  }
  /* then prefill slices, oldest first (slots in admission order is close
   * enough). While streams are decoding, each prompt still prefilling gets
   * SRV_PREFILL_WHILE_DECODING tokens of the step, as each stream gets its
   * token and draft: one long prompt arriving holds the streams' next token
   * for only that many tokens' time, while a crowd of waiting prompts is not
   * starved by the streams either. (Zen 3, 2 threads, Qwen2.5-Coder 1.5B,
   * 16 clients of 256-word prompts: a flat 128-token cap left the last
   * arrivals waiting, TTFT p90 145 s against llama-server's 56 s.) */
  if (n) {
    unsigned waiting = 0;
    for (unsigned s = 0; s < e->cfg.slots; s++)
      if (e->slot[s] && e->slot[s]->n_fed < e->slot[s]->n_prompt) waiting++;
    unsigned cap = SRV_PREFILL_WHILE_DECODING * (waiting ? waiting : 1);
    if (budget > cap) budget = cap;
  }
  for (unsigned s = 0; s < e->cfg.slots && budget; s++) {
    srv_job *j = e->slot[s];
    if (!j || j->n_fed >= j->n_prompt) continue;
    while (j->i_imp < j->n_imp && j->imp[j->i_imp].dst == j->n_fed) reuse_copy(e, j);
    size_t stop_at = j->i_imp < j->n_imp ? j->imp[j->i_imp].dst : j->n_prompt; /* the next copied run */
    unsigned k = (unsigned)(stop_at - j->n_fed < budget ? stop_at - j->n_fed : budget);
    int last = j->n_fed + k == j->n_prompt;
    e->n_draft[n] = 0;
    e->in_batch[n] = j;
    e->len0[n] = (long)j->n_fed;
    e->batch[n] = (heed_model_batch_seq){.seq = j->seq, .n_tokens = k, .tokens = j->prompt + j->n_fed,
                                         .n_logits = (unsigned)last, .logits = last ? rows : NULL};
    if (last) rows += e->V;
    budget -= k;
    need += blocks_for(e->block_len, (long)j->n_fed, k);
    n++;
  }
  make_room(e, need);
  *rows_end = rows;
  return n;
}

/* Under mu: what the step's logits make of each job. */
static void turn_end(srv_engine *e, unsigned n, heed_status st) {
  for (unsigned b = 0; b < n; b++) {
    srv_job *j = e->in_batch[b];
    unsigned slot = 0;
    while (e->slot[slot] != j) slot++;
    if (st != HEED_OK) {
      j->finish = SRV_FINISH_ERROR;
      snprintf(j->err, sizeof j->err, "the model step failed: %s", heed_model_last_error(e->m));
      job_finish(e, slot);
      continue;
    }
    heed_model_batch_seq *bs = &e->batch[b];
    heed_sampling smp;
    sampling_of(j, &smp);
    if (j->n_fed < j->n_prompt) { /* a prefill slice: its last one samples the first token */
      j->n_fed += bs->n_tokens;
      if (j->n_fed < j->n_prompt) continue;
      cache_prompt(e, j);
    }
    if (e->n_draft[b] == 0) { /* one row: the next token */
      int32_t t;
      apply_penalties(j, bs->logits);
      if (heed_spec_sample(e->spec, &smp, j->seed, j->step++, bs->logits, &t) != HEED_OK) {
        j->finish = SRV_FINISH_ERROR;
        snprintf(j->err, sizeof j->err, "sampling: %s", heed_spec_last_error(e->spec));
      } else if (!accept_token(e, j, t, bs->logits)) {
        j->pending = t;
      }
    } else { /* the pending token and a draft: verify, keep the accepted part */
      unsigned d = e->n_draft[b];
      const int32_t *draft = bs->tokens + 1;
      heed_spec_result res;
      if (heed_spec_verify_chain(e->spec, &smp, j->seed, j->step++, bs->logits, draft, d, NULL, &res) != HEED_OK) {
        j->finish = SRV_FINISH_ERROR;
        snprintf(j->err, sizeof j->err, "verification: %s", heed_spec_last_error(e->spec));
      } else if (heed_model_seq_truncate(e->m, j->seq, (unsigned)e->len0[b] + 1 + res.n_accepted) != HEED_OK) {
        j->finish = SRV_FINISH_ERROR;
        snprintf(j->err, sizeof j->err, "truncating a draft: %s", heed_model_last_error(e->m));
      } else {
        j->draft_steps++, j->draft_prop += d, j->draft_acc += res.n_accepted;
        /* a drafter that keeps missing costs more than it saves: off for this job */
        if (j->draft_prop >= 32 && j->draft_acc * 4 < j->draft_prop) j->draft_off = 1;
        int done = 0;
        for (unsigned i = 0; i < res.n_accepted && !done; i++) done = accept_token(e, j, draft[i], NULL);
        if (!done && !accept_token(e, j, res.next_token, NULL)) j->pending = res.next_token;
      }
    }
    if (j->finish) job_finish(e, slot);
  }
}

static void *engine_main(void *arg) {
  srv_engine *e = arg;
  pthread_mutex_lock(&e->mu);
  for (;;) {
    turn_begin(e);
    publish_stats(e);
    unsigned running = e->stats.running;
    if (e->stopping && !running && !e->q_head) break;
    if (!running) {
      pthread_cond_wait(&e->wake, &e->mu);
      continue;
    }
    pthread_mutex_unlock(&e->mu);
    float *rows_end;
    unsigned n = build_batch(e, &rows_end);
    heed_status st = n ? heed_model_step(e->m, e->batch, n) : HEED_OK;
    pthread_mutex_lock(&e->mu);
    turn_end(e, n, st);
  }
  pthread_mutex_unlock(&e->mu);
  return NULL;
}

/* Opens the disk tier of cfg.cache_dir, keyed by the model file's bytes and the KV layout. */
static heed_status disk_open(srv_engine *e, heed_error *err) {
  const heed_model_options *mo = heed_model_get_options(e->m);
  const heed_model_config *mc = heed_model_get_config(e->m);
  char layout[256], msg[512];
  snprintf(layout, sizeof layout, "heed-kvb-2 kv=%s block_len=%u layers=%u block_bytes=%zu arch=%s",
           heed_dtype_name(mo->kv_dtype), e->block_len, mc->n_layer, heed_model_kv_block_bytes(e->m),
           heed_arch_name(mc->arch) ? heed_arch_name(mc->arch) : "?");
  srv_disk_config dc = {.dir = e->cfg.cache_dir, .limit = e->cfg.cache_disk, .payload_bytes = heed_model_kv_block_bytes(e->m),
                        .block_len = e->block_len};
  const heed_gguf *g = heed_model_gguf(e->m);
  const char *paths[64];
  unsigned n_paths = 0;
  for (uint32_t i = 0; i < heed_gguf_n_files(g) && n_paths < 64; i++) paths[n_paths++] = heed_gguf_file_path(g, i);
  heed_status st = srv_disk_model_key(paths, n_paths, layout, &dc.key, msg, sizeof msg);
  if (st == HEED_OK) st = srv_disk_open(&dc, &e->disk, msg, sizeof msg);
  if (st != HEED_OK) return heed_err_set(err, st, "serve: %s", msg);
  e->disk_buf = malloc(dc.payload_bytes);
  e->disk_tok = malloc(((size_t)e->n_ctx + e->cfg.draft_k + 2) * sizeof(int32_t));
  if (!e->disk_buf || !e->disk_tok) return heed_err_set(err, HEED_E_NOMEM, "serve: out of memory for the disk tier's buffers");
  return HEED_OK;
}

heed_status srv_engine_start(heed_model *m, const srv_engine_config *cfg, srv_metrics *mx, srv_engine **out,
                             heed_error *err) {
  *out = NULL;
  const heed_model_options *mo = heed_model_get_options(m);
  if (!cfg->slots || cfg->slots + cfg->cache_entries > mo->max_seqs)
    return heed_err_set(err, HEED_E_INVALID, "serve: %u slots and %u cached sequences; the model was opened for %u",
                        cfg->slots, cfg->cache_entries, mo->max_seqs);
  if (cfg->draft_k + 1 > HEED_MAX_DECODE_QUERIES || cfg->draft_k > HEED_SPEC_MAX_DRAFT)
    return heed_err_set(err, HEED_E_INVALID, "serve: draft_k %u (0..%u)", cfg->draft_k, HEED_MAX_DECODE_QUERIES - 1);
  srv_engine *e = calloc(1, sizeof *e);
  if (!e) return heed_err_set(err, HEED_E_NOMEM, "serve: out of memory");
  e->m = m, e->cfg = *cfg, e->mx = mx;
  e->cache.keep_s = cfg->session_keep_s > 0 ? cfg->session_keep_s : 0;
  e->tok = heed_model_tokenizer(m);
  e->V = heed_model_get_config(m)->n_vocab;
  e->n_ctx = mo->n_ctx, e->max_batch = mo->max_batch;
  e->block_len = heed_model_kv_block_len(m);
  unsigned S = cfg->slots, K = cfg->draft_k;
  e->slot = calloc(S, sizeof *e->slot);
  e->drop = calloc(cfg->cache_entries + 1, sizeof *e->drop);
  e->logits = malloc((size_t)S * (K + 1) * e->V * sizeof(float));
  e->batch = calloc(S, sizeof *e->batch);
  e->in_batch = calloc(S, sizeof *e->in_batch);
  e->len0 = calloc(S, sizeof *e->len0);
  e->feed = calloc((size_t)S * (K + 1), sizeof *e->feed);
  e->n_draft = calloc(S, sizeof *e->n_draft);
  e->dcap = heed_tokenizer_detok_bound(e->tok);
  e->dbuf = malloc(e->dcap);
  heed_status st = HEED_OK;
  if (!e->slot || !e->drop || !e->logits || !e->batch || !e->in_batch || !e->len0 || !e->feed || !e->n_draft || !e->dbuf) {
    st = heed_err_set(err, HEED_E_NOMEM, "serve: out of memory for %u slots' buffers", S);
    goto fail;
  }
  if (cfg->cache_dir && disk_open(e, err) != HEED_OK) {
    /* an unwritable folder, a model file that cannot be read: memory only, said once */
    fprintf(stderr, "heed serve: warning: no disk tier: %s; the prefix cache is in memory only\n", err->msg);
    srv_disk_close(e->disk);
    free(e->disk_buf), free(e->disk_tok);
    e->disk = NULL, e->disk_buf = NULL, e->disk_tok = NULL;
    memset(err, 0, sizeof *err);
  }
  heed_spec_config sc = {.vocab = e->V, .max_draft = K ? K : 1, .max_penalty_tokens = e->n_ctx + K + 2};
  if ((st = heed_spec_create(heed_model_runtime(m), &sc, &e->spec, err))) goto fail;
  pthread_mutex_init(&e->mu, NULL);
  pthread_cond_init(&e->wake, NULL);
  if (pthread_create(&e->thread, NULL, engine_main, e)) {
    st = heed_err_set(err, HEED_E_NOMEM, "serve: cannot start the scheduler thread");
    pthread_mutex_destroy(&e->mu);
    pthread_cond_destroy(&e->wake);
    goto fail;
  }
  *out = e;
  return HEED_OK;
fail:
  heed_spec_destroy(e->spec);
  srv_disk_close(e->disk);
  free(e->disk_buf), free(e->disk_tok);
  free(e->slot), free(e->drop), free(e->logits), free(e->batch), free(e->in_batch), free(e->len0), free(e->feed);
  free(e->n_draft), free(e->dbuf);
  free(e);
  return st;
}

void srv_engine_halt(srv_engine *e) {
  if (!e) return;
  pthread_mutex_lock(&e->mu);
  int joined = e->joined;
  e->stopping = 1;
  e->joined = 1;
  pthread_cond_signal(&e->wake);
  pthread_mutex_unlock(&e->mu);
  if (!joined) pthread_join(e->thread, NULL);
}

void srv_engine_stop(srv_engine *e) {
  if (!e) return;
  srv_engine_halt(e);
  /* what the cache holds survives a restart through the disk tier */
  for (unsigned i = 0; e->disk && i < e->cache.n; i++) disk_save(e, e->cache.leaves[i]);
  int seq;
  while (srv_cache_evict_lru(&e->cache, &seq)) heed_model_seq_free(e->m, seq);
  srv_cache_free(&e->cache);
  heed_spec_destroy(e->spec);
  srv_disk_close(e->disk);
  free(e->disk_buf), free(e->disk_tok);
  pthread_mutex_destroy(&e->mu);
  pthread_cond_destroy(&e->wake);
  free(e->slot), free(e->drop), free(e->logits), free(e->batch), free(e->in_batch), free(e->len0), free(e->feed);
  free(e->n_draft), free(e->dbuf);
  free(e);
}

heed_status srv_engine_submit(srv_engine *e, srv_job *j) {
  pthread_mutex_lock(&e->mu);
  if (e->stopping || e->n_queued >= e->cfg.max_queue) {
    pthread_mutex_unlock(&e->mu);
    return HEED_E_BUSY;
  }
  j->refs = 2;
  j->t_submit = now_s();
  j->next = NULL;
  if (e->q_tail) e->q_tail->next = j;
  else e->q_head = j;
  e->q_tail = j;
  e->n_queued++;
  e->stats.queued = e->n_queued;
  pthread_cond_signal(&e->wake);
  pthread_mutex_unlock(&e->mu);
  return HEED_OK;
}

void srv_engine_cancel(srv_engine *e, srv_job *j) {
  pthread_mutex_lock(&e->mu);
  if (!j->finish) {
    j->cancel = 1;
    pthread_cond_signal(&e->wake);
  }
  pthread_mutex_unlock(&e->mu);
}

void srv_engine_release(srv_engine *e, srv_job *j) {
  pthread_mutex_lock(&e->mu);
  if (!j->finish) {
    j->cancel = 1;
    pthread_cond_signal(&e->wake);
  }
  job_unref(j);
  pthread_mutex_unlock(&e->mu);
}

static int by_recent_use(const void *a, const void *b) {
  const srv_cache_node *x = *(const srv_cache_node *const *)a, *y = *(const srv_cache_node *const *)b;
  return x->last_used < y->last_used ? 1 : x->last_used > y->last_used ? -1 : 0;
}

char *srv_engine_cache_list(srv_engine *e, uint64_t tenant) {
  cJSON *o = cJSON_CreateObject(), *a = cJSON_AddArrayToObject(o, "entries");
  pthread_mutex_lock(&e->mu);
  double now = now_s();
  unsigned n = e->cache.n;
  srv_cache_node **l = malloc((n ? n : 1) * sizeof *l);
  size_t tokens = 0, count = 0;
  if (l) {
    memcpy(l, e->cache.leaves, n * sizeof *l);
    qsort(l, n, sizeof *l, by_recent_use);
    for (unsigned i = 0; i < n; i++) {
      if (srv_cache_leaf_tenant(&e->cache, l[i]) != tenant) continue;
      size_t t = srv_cache_tokens(l[i], 0, NULL, 0);
      cJSON *x = cJSON_CreateObject();
      cJSON_AddStringToObject(x, "request", l[i]->origin);
      cJSON_AddStringToObject(x, "kind", l[i]->finished ? "finished" : "prompt");
      cJSON_AddNumberToObject(x, "tokens", (double)t);
      cJSON_AddNumberToObject(x, "blocks", (double)((t + e->block_len - 1) / e->block_len));
      cJSON_AddNumberToObject(x, "age_s", (double)(long)((now - l[i]->t_made) * 10 + 0.5) / 10);
      cJSON_AddNumberToObject(x, "idle_s", (double)(long)((now - l[i]->t_used) * 10 + 0.5) / 10);
      if (l[i]->session) {
        char h[17];
        snprintf(h, sizeof h, "%016llx", (unsigned long long)l[i]->session);
        cJSON_AddStringToObject(x, "session", h);
        double until = 0;
        int ret = srv_cache_session_retained(&e->cache, l[i]->session, now, &until);
        cJSON_AddBoolToObject(x, "retained", ret);
        if (ret) cJSON_AddNumberToObject(x, "retained_s", (double)(long)((until - now) * 10 + 0.5) / 10);
      } else {
        cJSON_AddNullToObject(x, "session");
        cJSON_AddBoolToObject(x, "retained", 0);
      }
      cJSON_AddItemToArray(a, x);
      tokens += t, count++;
    }
    free(l);
  }
  cJSON_AddNumberToObject(o, "count", (double)count);
  cJSON_AddNumberToObject(o, "tokens", (double)tokens);
  cJSON_AddNumberToObject(o, "block_tokens", e->block_len);
  cJSON_AddNumberToObject(o, "kv_blocks", heed_model_kv_blocks(e->m));
  cJSON_AddNumberToObject(o, "kv_blocks_free", heed_model_kv_free_blocks(e->m));
  cJSON_AddNumberToObject(o, "max_entries", e->cfg.cache_entries);
  cJSON_AddNumberToObject(o, "session_keep_s", e->cache.keep_s);
  if (e->disk) { /* the disk tier, every tenant's blocks together */
    srv_disk_stats ds;
    srv_disk_get_stats(e->disk, &ds);
    cJSON *d = cJSON_AddObjectToObject(o, "disk");
    cJSON_AddNumberToObject(d, "blocks", (double)ds.files);
    cJSON_AddNumberToObject(d, "bytes", (double)ds.bytes);
    cJSON_AddNumberToObject(d, "limit_bytes", (double)ds.limit);
    cJSON_AddNumberToObject(d, "written", (double)ds.written);
    cJSON_AddNumberToObject(d, "read", (double)ds.read);
    cJSON_AddNumberToObject(d, "evicted", (double)ds.evicted);
    cJSON_AddNumberToObject(d, "deleted_bad", (double)ds.deleted_bad);
  }
  pthread_mutex_unlock(&e->mu);
  char *s = cJSON_PrintUnformatted(o);
  cJSON_Delete(o);
  return s;
}

void srv_engine_get_stats(srv_engine *e, srv_engine_stats *s) {
  pthread_mutex_lock(&e->mu);
  *s = e->stats;
  pthread_mutex_unlock(&e->mu);
}
