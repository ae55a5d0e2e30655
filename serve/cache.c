/* serve/cache.c - the prefix cache's index: finished sequences by their tokens.
 *
 * A plain array scanned whole: the cache holds tens of sequences, and a scan
 * costs less than one step of the model. Entries move (a removal swaps in the
 * last one), so an index is good only until the next insert or eviction. */
#include <stdlib.h>
#include <string.h>

#include "serve/serve_internal.h"

static size_t common_prefix(const int32_t *a, size_t na, const int32_t *b, size_t nb) {
  size_t n = na < nb ? na : nb, i = 0;
  while (i < n && a[i] == b[i]) i++;
  return i;
}

static void remove_at(srv_cache *c, unsigned i) {
  free(c->e[i].ids);
  c->e[i] = c->e[--c->n];
}

int srv_cache_lookup(const srv_cache *c, const int32_t *ids, size_t n, uint64_t tenant, size_t *lcp) {
  int best = -1;
  size_t best_len = 0;
  if (ids || !n) {
    for (unsigned i = 0; i < c->n; i++) {
      const srv_cache_entry *e = &c->e[i];
      if (e->tenant != tenant) continue;
      size_t l = common_prefix(e->ids, e->n, ids, n);
      if (l == 0) continue;
      if (l > best_len || (l == best_len && e->last_used > c->e[best].last_used)) best = (int)i, best_len = l;
    }
  }
  if (lcp) *lcp = best_len;
  return best;
}

heed_status srv_cache_insert(srv_cache *c, int seq, const int32_t *ids, size_t n, uint64_t tenant, int *drop,
                             unsigned *n_drop) {
  if (n_drop) *n_drop = 0;
  if (n && !ids) return HEED_E_INVALID;
  /* Everything that can fail comes first: a failure leaves the cache as it was. */
  int32_t *copy = malloc((n ? n : 1) * sizeof *copy);
  if (!copy) return HEED_E_NOMEM;
  if (n) memcpy(copy, ids, n * sizeof *copy);
  if (c->n == c->cap) {
    unsigned cap = c->cap ? c->cap * 2 : 8;
    srv_cache_entry *e = cap > c->cap ? realloc(c->e, (size_t)cap * sizeof *e) : NULL;
    if (!e) {
      free(copy);
      return HEED_E_NOMEM;
    }
    c->e = e, c->cap = cap;
  }
  /* An entry whose tokens begin ids holds nothing the new one does not. */
  unsigned dropped = 0;
  for (unsigned i = 0; i < c->n;) {
    srv_cache_entry *e = &c->e[i];
    if (e->tenant == tenant && e->n <= n && common_prefix(e->ids, e->n, ids, n) == e->n) {
      if (drop) drop[dropped] = e->seq;
      dropped++;
      remove_at(c, i);
    } else {
      i++;
    }
  }
  if (n_drop) *n_drop = dropped;
  c->e[c->n++] = (srv_cache_entry){.seq = seq, .ids = copy, .n = n, .tenant = tenant, .last_used = ++c->clock};
  return HEED_OK;
}

int srv_cache_evict_lru(srv_cache *c, int *seq) {
  if (!c->n) return 0;
  unsigned lru = 0;
  for (unsigned i = 1; i < c->n; i++)
    if (c->e[i].last_used < c->e[lru].last_used) lru = i;
  if (seq) *seq = c->e[lru].seq;
  remove_at(c, lru);
  return 1;
}

void srv_cache_touch(srv_cache *c, int i) {
  if (i >= 0 && (unsigned)i < c->n) c->e[i].last_used = ++c->clock;
}

void srv_cache_free(srv_cache *c) {
  for (unsigned i = 0; i < c->n; i++) free(c->e[i].ids);
  free(c->e);
  memset(c, 0, sizeof *c);
}
