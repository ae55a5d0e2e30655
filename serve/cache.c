/* serve/cache.c - the prefix cache's index: a radix tree of finished sequences
 * by their tokens, one tree per tenant (serve_internal.h says what a node holds).
 *
 * Invariants: every leaf holds a sequence and every inner node none; an inner
 * node other than a root has at least two children (a node left with one is
 * merged into it); no two children of a node begin with the same token. So
 * the tree has fewer inner nodes than leaves, and a lookup walks each token
 * of the prompt once. Leaves are also kept in a flat array: eviction scans it
 * for the least recently used (tens of entries: less than a model step). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "serve/serve_internal.h"

static size_t common_prefix(const int32_t *a, size_t na, const int32_t *b, size_t nb) {
  size_t n = na < nb ? na : nb, i = 0;
  while (i < n && a[i] == b[i]) i++;
  return i;
}

static srv_cache_node *node_new(const int32_t *tok, size_t n_tok, int seq) {
  srv_cache_node *x = calloc(1, sizeof *x);
  if (!x) return NULL;
  x->tok = malloc((n_tok ? n_tok : 1) * sizeof *x->tok);
  if (!x->tok) {
    free(x);
    return NULL;
  }
  if (n_tok) memcpy(x->tok, tok, n_tok * sizeof *x->tok);
  x->n_tok = n_tok;
  x->seq = seq;
  return x;
}

static void node_free(srv_cache_node *x) {
  if (!x) return;
  for (unsigned i = 0; i < x->n_kids; i++) node_free(x->kids[i]);
  free(x->kids);
  free(x->tok);
  free(x);
}

static int reserve_kid(srv_cache_node *x) {
  if (x->n_kids < x->cap_kids) return 0;
  unsigned cap = x->cap_kids ? x->cap_kids * 2 : 2;
  srv_cache_node **k = realloc(x->kids, cap * sizeof *k);
  if (!k) return -1;
  x->kids = k, x->cap_kids = cap;
  return 0;
}

static int reserve_leaf(srv_cache *c) {
  if (c->n < c->cap) return 0;
  unsigned cap = c->cap ? c->cap * 2 : 8;
  srv_cache_node **l = realloc(c->leaves, cap * sizeof *l);
  if (!l) return -1;
  c->leaves = l, c->cap = cap;
  return 0;
}

static srv_cache_node *kid_starting(const srv_cache_node *x, int32_t t) {
  for (unsigned i = 0; i < x->n_kids; i++)
    if (x->kids[i]->tok[0] == t) return x->kids[i];
  return NULL;
}

static void replace_kid(srv_cache_node *x, srv_cache_node *old, srv_cache_node *with) {
  for (unsigned i = 0; i < x->n_kids; i++)
    if (x->kids[i] == old) x->kids[i] = with;
  if (with) with->parent = x;
}

static void remove_kid(srv_cache_node *x, srv_cache_node *k) {
  for (unsigned i = 0; i < x->n_kids; i++)
    if (x->kids[i] == k) {
      x->kids[i] = x->kids[--x->n_kids];
      return;
    }
}

static srv_cache_node *root_of(const srv_cache *c, uint64_t tenant) {
  for (unsigned i = 0; i < c->n_roots; i++)
    if (c->roots[i].tenant == tenant) return c->roots[i].node;
  return NULL;
}

/* The most recently used leaf at or below x. */
static const srv_cache_node *newest_leaf(const srv_cache_node *x) {
  if (!x->n_kids) return x;
  const srv_cache_node *best = NULL;
  for (unsigned i = 0; i < x->n_kids; i++) {
    const srv_cache_node *l = newest_leaf(x->kids[i]);
    if (!best || l->last_used > best->last_used) best = l;
  }
  return best;
}

int srv_cache_lookup(const srv_cache *c, const int32_t *ids, size_t n, uint64_t tenant, size_t *lcp) {
  const srv_cache_node *x = root_of(c, tenant), *hit = NULL;
  size_t pos = 0;
  if (!ids) n = 0;
  while (x && pos < n) {
    const srv_cache_node *k = kid_starting(x, ids[pos]);
    if (!k) break;
    size_t m = common_prefix(k->tok, k->n_tok, ids + pos, n - pos);
    pos += m, hit = k;
    if (m < k->n_tok) break;
    x = k;
  }
  if (lcp) *lcp = hit ? pos : 0;
  return hit ? newest_leaf(hit)->seq : -1;
}

/* x is no longer needed as it is: an inner node left with one child is merged
 * into it, one left with none (after its last leaf went) is removed in turn. */
static void tidy(srv_cache *c, srv_cache_node *x) {
  while (x && x->parent) {
    srv_cache_node *up = x->parent;
    if (x->n_kids == 0 && x->seq < 0) {
      remove_kid(up, x);
      node_free(x);
      x = up;
      continue;
    }
    if (x->n_kids == 1 && x->seq < 0) {
      srv_cache_node *k = x->kids[0];
      int32_t *t = malloc((x->n_tok + k->n_tok) * sizeof *t);
      if (!t) return; /* an unmerged inner node is harmless: only the shape is less tight */
      memcpy(t, x->tok, x->n_tok * sizeof *t);
      memcpy(t + x->n_tok, k->tok, k->n_tok * sizeof *t);
      free(k->tok);
      k->tok = t, k->n_tok += x->n_tok;
      replace_kid(up, x, k);
      x->n_kids = 0;
      node_free(x);
    }
    return;
  }
  /* a root left empty goes too */
  if (x && !x->parent && !x->n_kids) {
    for (unsigned i = 0; i < c->n_roots; i++)
      if (c->roots[i].node == x) {
        c->roots[i] = c->roots[--c->n_roots];
        break;
      }
    node_free(x);
  }
}

static srv_cache_node *root_make(srv_cache *c, uint64_t tenant) {
  srv_cache_node *r = root_of(c, tenant);
  if (r) return r;
  if (c->n_roots == c->cap_roots) {
    unsigned cap = c->cap_roots ? c->cap_roots * 2 : 2;
    struct srv_cache_root *a = realloc(c->roots, cap * sizeof *a);
    if (!a) return NULL;
    c->roots = a, c->cap_roots = cap;
  }
  r = node_new(NULL, 0, -1);
  if (!r) return NULL;
  c->roots[c->n_roots++] = (struct srv_cache_root){.tenant = tenant, .node = r};
  return r;
}

heed_status srv_cache_insert(srv_cache *c, int seq, const int32_t *ids, size_t n, uint64_t tenant, int *drop,
                             unsigned *n_drop) {
  unsigned dropped = 0;
  if (n_drop) *n_drop = 0;
  if (!n || !ids || seq < 0) return HEED_E_INVALID;
  if (reserve_leaf(c)) return HEED_E_NOMEM;
  srv_cache_node *x = root_make(c, tenant);
  if (!x) return HEED_E_NOMEM;
  size_t pos = 0;
  int inside = 0; /* ids ended inside x's edge */
  for (;;) {
    srv_cache_node *k = pos < n ? kid_starting(x, ids[pos]) : NULL;
    if (!k) break;
    size_t m = common_prefix(k->tok, k->n_tok, ids + pos, n - pos);
    if (m == k->n_tok) {
      pos += m, x = k;
      continue;
    }
    if (pos + m == n) { /* ids ends inside k's edge: a prefix of what is cached */
      x = k, pos = n, inside = 1;
      break;
    }
    /* the paths part inside k's edge: a new inner node where they do */
    srv_cache_node *mid = node_new(k->tok, m, -1), *leaf = node_new(ids + pos + m, n - pos - m, seq);
    int32_t *rest = malloc((k->n_tok - m) * sizeof *rest);
    if (!mid || !leaf || !rest || reserve_kid(mid)) { /* a first reserve makes room for two */
      node_free(mid), node_free(leaf), free(rest);
      tidy(c, x);
      return HEED_E_NOMEM;
    }
    memcpy(rest, k->tok + m, (k->n_tok - m) * sizeof *rest);
    free(k->tok);
    k->tok = rest, k->n_tok -= m;
    replace_kid(x, k, mid);
    mid->kids[0] = k, k->parent = mid;
    mid->kids[1] = leaf, leaf->parent = mid, mid->n_kids = 2;
    leaf->last_used = ++c->clock;
    c->leaves[c->n++] = leaf;
    return HEED_OK;
  }
  if (pos == n) {
    if (!inside && !x->n_kids) { /* the same tokens: the new sequence replaces the old */
      if (drop) drop[dropped] = x->seq;
      dropped++;
      x->seq = seq;
      x->last_used = ++c->clock;
    } else { /* a prefix of a cached path: seq adds nothing */
      if (drop) drop[dropped] = seq;
      dropped++;
      srv_cache_touch(c, newest_leaf(x)->seq);
    }
    if (n_drop) *n_drop = dropped;
    return HEED_OK;
  }
  if (x->parent && !x->n_kids) { /* a cached sequence is a prefix of ids: extend its leaf */
    int32_t *t = realloc(x->tok, (x->n_tok + n - pos) * sizeof *t);
    if (!t) return HEED_E_NOMEM;
    memcpy(t + x->n_tok, ids + pos, (n - pos) * sizeof *t);
    x->tok = t, x->n_tok += n - pos;
    if (drop) drop[dropped] = x->seq;
    dropped++;
    x->seq = seq;
    x->last_used = ++c->clock;
    if (n_drop) *n_drop = dropped;
    return HEED_OK;
  }
  srv_cache_node *leaf = node_new(ids + pos, n - pos, seq);
  if (!leaf || reserve_kid(x)) {
    node_free(leaf);
    tidy(c, x);
    return HEED_E_NOMEM;
  }
  x->kids[x->n_kids++] = leaf, leaf->parent = x;
  leaf->last_used = ++c->clock;
  c->leaves[c->n++] = leaf;
  return HEED_OK;
}

/* Hashes of ids' first k * SRV_GHOST_STRIDE tokens, for k = 1.. (FNV-1a over the ids' bytes). */
static size_t stride_hashes(const int32_t *ids, size_t n, uint64_t *h, size_t max) {
  uint64_t x = 0xcbf29ce484222325ull;
  size_t k = 0;
  for (size_t i = 0; i < n && k < max; i++) {
    uint32_t v = (uint32_t)ids[i];
    for (int b = 0; b < 4; b++) x = (x ^ ((v >> (8 * b)) & 0xff)) * 0x100000001b3ull;
    if ((i + 1) % SRV_GHOST_STRIDE == 0) h[k++] = x;
  }
  return k;
}

static void ghost_record(srv_cache *c, const srv_cache_node *leaf, uint64_t tenant, double now, const char *why) {
  srv_cache_ghost *g = &c->ghosts[c->ghost_next];
  size_t len = srv_cache_tokens(leaf, 0, NULL, 0), n_h = len / SRV_GHOST_STRIDE;
  int32_t *ids = malloc((len ? len : 1) * sizeof *ids);
  uint64_t *h = malloc((n_h ? n_h : 1) * sizeof *h);
  if (!ids || !h) { /* no record: a later miss is only less well explained */
    free(ids), free(h);
    return;
  }
  srv_cache_tokens(leaf, 0, ids, len);
  free(g->h);
  *g = (srv_cache_ghost){.tenant = tenant, .session = leaf->session, .h = h, .len = len, .t_evicted = now,
                         .why = why ? why : "room"};
  g->n_h = stride_hashes(ids, len, h, n_h);
  snprintf(g->origin, sizeof g->origin, "%s", leaf->origin);
  free(ids);
  c->ghost_next = (c->ghost_next + 1) % SRV_GHOSTS;
}

const srv_cache_ghost *srv_cache_ghost_match(const srv_cache *c, const int32_t *ids, size_t n, uint64_t tenant,
                                             size_t *shared) {
  size_t n_h = n / SRV_GHOST_STRIDE, best_k = 0;
  const srv_cache_ghost *best = NULL;
  if (shared) *shared = 0;
  uint64_t *h = n_h ? malloc(n_h * sizeof *h) : NULL;
  if (!h) return NULL;
  n_h = stride_hashes(ids, n, h, n_h);
  for (unsigned i = 0; i < SRV_GHOSTS; i++) {
    const srv_cache_ghost *g = &c->ghosts[i];
    if (!g->h || g->tenant != tenant) continue;
    size_t k = 0;
    while (k < n_h && k < g->n_h && g->h[k] == h[k]) k++;
    if (k > best_k || (k == best_k && k && g->t_evicted > best->t_evicted)) best = g, best_k = k;
  }
  free(h);
  if (shared) *shared = best_k * SRV_GHOST_STRIDE;
  return best;
}

int srv_cache_evict(srv_cache *c, double now, int *seq, int *retained) {
  return srv_cache_evict_why(c, now, NULL, seq, retained);
}

/* The victim: not retained before retained; among retained, the session
 * seen longest ago; then the least recently used leaf. -1 when empty. */
static int victim(const srv_cache *c, double now, int *retained) {
  int best = -1, best_ret = 0;
  double best_seen = 0;
  for (unsigned i = 0; i < c->n; i++) {
    const srv_cache_node *x = c->leaves[i];
    double until = 0;
    int ret = srv_cache_session_retained(c, x->session, now, &until);
    int better;
    if (best < 0) better = 1;
    else if (ret != best_ret) better = !ret;
    else if (ret && until != best_seen) better = until < best_seen;
    else better = x->last_used < c->leaves[best]->last_used;
    if (better) best = (int)i, best_ret = ret, best_seen = until;
  }
  if (retained) *retained = best_ret;
  return best;
}

const srv_cache_node *srv_cache_victim(const srv_cache *c, double now) {
  int i = victim(c, now, NULL);
  return i < 0 ? NULL : c->leaves[i];
}

int srv_cache_evict_why(srv_cache *c, double now, const char *why, int *seq, int *retained) {
  int best = victim(c, now, retained);
  if (best < 0) return 0;
  unsigned lru = (unsigned)best;
  srv_cache_node *x = c->leaves[lru], *up = x->parent;
  ghost_record(c, x, srv_cache_leaf_tenant(c, x), now, why);
  c->leaves[lru] = c->leaves[--c->n];
  if (seq) *seq = x->seq;
  remove_kid(up, x);
  node_free(x);
  tidy(c, up);
  return 1;
}

const srv_cache_node *srv_cache_leaf(const srv_cache *c, int seq) {
  if (seq < 0) return NULL;
  for (unsigned i = 0; i < c->n; i++)
    if (c->leaves[i]->seq == seq) return c->leaves[i];
  return NULL;
}

size_t srv_cache_tokens(const srv_cache_node *leaf, size_t from, int32_t *out, size_t max) {
  size_t total = 0;
  for (const srv_cache_node *x = leaf; x; x = x->parent) total += x->n_tok;
  /* edges from the leaf up: each edge's first position is what lies above it */
  size_t end = total;
  for (const srv_cache_node *x = leaf; x && max; x = x->parent) {
    size_t start = end - x->n_tok;
    /* the part of [from, from + max) in [start, end) */
    size_t lo = from > start ? from : start, hi = from + max < end ? from + max : end;
    for (size_t i = lo; i < hi; i++) out[i - from] = x->tok[i - start];
    end = start;
  }
  return total;
}

void srv_cache_set_origin(srv_cache *c, int seq, const char *origin, int finished, double t_made, uint64_t session) {
  srv_cache_node *x = (srv_cache_node *)srv_cache_leaf(c, seq);
  if (!x) return;
  snprintf(x->origin, sizeof x->origin, "%s", origin ? origin : "");
  x->finished = finished, x->t_made = x->t_used = t_made, x->session = session;
}

uint64_t srv_session_id(uint64_t tenant, const char *name, size_t len) {
  if (!name || !len) return 0;
  uint64_t h = 0xcbf29ce484222325ull ^ (tenant * 0x9e3779b97f4a7c15ull); /* FNV-1a, seeded by the tenant */
  for (size_t i = 0; i < len; i++) h = (h ^ (unsigned char)name[i]) * 0x100000001b3ull;
  return h ? h : 1;
}

static struct srv_cache_session *session_of(const srv_cache *c, uint64_t id) {
  for (unsigned i = 0; i < c->n_sessions; i++)
    if (c->sessions[i].id == id) return &c->sessions[i];
  return NULL;
}

void srv_cache_session_seen(srv_cache *c, uint64_t session, double now) {
  if (!session) return;
  struct srv_cache_session *s = session_of(c, session);
  if (!s) {
    if (c->n_sessions == c->cap_sessions && c->cap_sessions < SRV_MAX_SESSIONS) {
      unsigned cap = c->cap_sessions ? c->cap_sessions * 2 : 16;
      if (cap > SRV_MAX_SESSIONS) cap = SRV_MAX_SESSIONS;
      struct srv_cache_session *a = realloc(c->sessions, cap * sizeof *a);
      if (a) c->sessions = a, c->cap_sessions = cap;
    }
    if (c->n_sessions < c->cap_sessions) {
      s = &c->sessions[c->n_sessions++];
    } else if (c->n_sessions) { /* full (or out of memory): forget the one seen longest ago */
      s = &c->sessions[0];
      for (unsigned i = 1; i < c->n_sessions; i++)
        if (c->sessions[i].t_last < s->t_last) s = &c->sessions[i];
    } else {
      return;
    }
    s->id = session;
  }
  s->t_last = now;
}

int srv_cache_session_retained(const srv_cache *c, uint64_t session, double now, double *until) {
  const struct srv_cache_session *s = session ? session_of(c, session) : NULL;
  if (until) *until = s ? s->t_last + c->keep_s : 0;
  return s && c->keep_s > 0 && now < s->t_last + c->keep_s;
}

uint64_t srv_cache_leaf_tenant(const srv_cache *c, const srv_cache_node *leaf) {
  const srv_cache_node *x = leaf;
  while (x && x->parent) x = x->parent;
  for (unsigned i = 0; i < c->n_roots; i++)
    if (c->roots[i].node == x) return c->roots[i].tenant;
  return 0;
}

static double mono_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

int srv_cache_evict_lru(srv_cache *c, int *seq) { return srv_cache_evict(c, mono_s(), seq, NULL); }

void srv_cache_touch(srv_cache *c, int seq) {
  srv_cache_node *x = (srv_cache_node *)srv_cache_leaf(c, seq);
  if (!x) return;
  x->last_used = ++c->clock;
  x->t_used = mono_s();
}

void srv_cache_free(srv_cache *c) {
  for (unsigned i = 0; i < c->n_roots; i++) node_free(c->roots[i].node);
  free(c->roots);
  free(c->leaves);
  free(c->sessions);
  for (unsigned i = 0; i < SRV_GHOSTS; i++) free(c->ghosts[i].h);
  memset(c, 0, sizeof *c);
}
