/* spec/ngram.c - drafters: the generic interface's entry points, and n-gram
 * prompt lookup.
 *
 * The lookup keeps the sequence and, for each n in n_min..n_max, an
 * open-addressed table from an n-gram to the position of the token that
 * followed its most recent occurrence. Appending token i inserts, for each n,
 * the n-gram ending just before i (it is now followed by something), so an
 * append is O(n_max^2) work whatever the sequence's length, and the suffix
 * itself is never in a table until something follows it. Tables hold at most
 * `capacity` entries at twice that many slots. */
#include <stdlib.h>
#include <string.h>

#include "heed/spec.h"
#include "runtime/internal.h"

heed_status heed_drafter_append(heed_drafter *d, const int32_t *tokens, unsigned n) {
  if (!d || !d->ops || !d->ops->append) return HEED_E_INVALID;
  return d->ops->append(d->self, tokens, n);
}

heed_status heed_drafter_propose(heed_drafter *d, unsigned max_k, heed_draft *out) {
  if (!d || !d->ops || !d->ops->propose) return HEED_E_INVALID;
  return d->ops->propose(d->self, max_k, out);
}

void heed_drafter_destroy(heed_drafter *d) {
  if (!d) return;
  if (d->ops && d->ops->destroy) d->ops->destroy(d->self);
  free(d);
}

const char *heed_drafter_last_error(const heed_drafter *d) {
  if (!d || !d->ops) return "heed_drafter is NULL";
  return d->ops->last_error ? d->ops->last_error(d->self) : "";
}

typedef struct ngram {
  heed_ngram_config cfg;
  int32_t *tok;      /* [capacity] the sequence */
  unsigned len;
  uint32_t mask;     /* table slots - 1 */
  uint32_t *tab;     /* [n_max - n_min + 1][slots]: position + 1 of the following token; 0 empty */
  unsigned last_n;
  heed_error err;
} ngram;

static uint32_t hash_gram(const int32_t *t, unsigned n) {
  uint64_t h = 0x9E3779B97F4A7C15ull ^ n;
  for (unsigned i = 0; i < n; i++) {
    h ^= (uint32_t)t[i];
    h *= 0xBF58476D1CE4E5B9ull;
    h ^= h >> 31;
  }
  return (uint32_t)(h ^ (h >> 32));
}

/* The slot of gram t[0..n) in table tb: where it is, or the empty slot it would go. */
static uint32_t *slot_of(const ngram *g, uint32_t *tb, const int32_t *t, unsigned n) {
  for (uint32_t i = hash_gram(t, n) & g->mask;; i = (i + 1) & g->mask) {
    uint32_t v = tb[i];
    if (!v) return &tb[i];
    uint32_t p = v - 1; /* the n-gram ends just before p */
    if (memcmp(g->tok + p - n, t, n * sizeof *t) == 0) return &tb[i];
  }
}

static heed_status ngram_append(void *self, const int32_t *tokens, unsigned n) {
  ngram *g = self;
  if (!tokens && n) return heed_err_set(&g->err, HEED_E_INVALID, "ngram append: tokens are NULL");
  if (n > g->cfg.capacity - g->len)
    return heed_err_set(&g->err, HEED_E_RANGE, "ngram append of %u tokens: the sequence holds %u of its capacity %u", n,
                        g->len, g->cfg.capacity);
  for (unsigned i = 0; i < n; i++)
    if (tokens[i] < 0 || (uint32_t)tokens[i] >= g->cfg.vocab)
      return heed_err_set(&g->err, HEED_E_RANGE, "ngram append: token %u is %d, outside the vocab 0..%u", i, tokens[i],
                          g->cfg.vocab - 1);
  const size_t slots = (size_t)g->mask + 1;
  for (unsigned i = 0; i < n; i++) {
    unsigned p = g->len;
    g->tok[p] = tokens[i];
    for (unsigned k = g->cfg.n_min; k <= g->cfg.n_max && k <= p; k++) {
      uint32_t *tb = g->tab + (size_t)(k - g->cfg.n_min) * slots;
      *slot_of(g, tb, g->tok + p - k, k) = p + 1;
    }
    g->len = p + 1;
  }
  return HEED_OK;
}

static heed_status ngram_propose(void *self, unsigned max_k, heed_draft *out) {
  ngram *g = self;
  if (!out) return heed_err_set(&g->err, HEED_E_INVALID, "ngram propose: out is NULL");
  memset(out, 0, sizeof *out);
  out->q.kind = HEED_DRAFT_ONEHOT;
  out->tokens = g->tok;
  g->last_n = 0;
  if (max_k < 1 || max_k > HEED_SPEC_MAX_DRAFT)
    return heed_err_set(&g->err, HEED_E_RANGE, "ngram propose: max_k %u is outside 1..%d", max_k, HEED_SPEC_MAX_DRAFT);
  const size_t slots = (size_t)g->mask + 1;
  for (unsigned k = g->cfg.n_max; k >= g->cfg.n_min; k--) {
    if (k > g->len) continue;
    uint32_t v = *slot_of(g, g->tab + (size_t)(k - g->cfg.n_min) * slots, g->tok + g->len - k, k);
    if (!v) continue;
    unsigned p = v - 1, m = g->len - p < max_k ? g->len - p : max_k;
    out->tokens = g->tok + p, out->n = m;
    g->last_n = k;
    return HEED_OK;
  }
  return HEED_OK;
}

static void ngram_destroy(void *self) {
  ngram *g = self;
  if (!g) return;
  free(g->tok), free(g->tab), free(g);
}

static const char *ngram_last_error(const void *self) { return ((const ngram *)self)->err.msg; }

static const heed_drafter_ops ngram_ops = {"ngram", ngram_append, ngram_propose, ngram_destroy, ngram_last_error};

heed_status heed_ngram_drafter_create(const heed_ngram_config *cfg, heed_drafter **out, heed_error *err) {
  if (out) *out = NULL;
  if (!cfg || !out) return heed_err_set(err, HEED_E_INVALID, "heed_ngram_drafter_create: cfg and out must not be NULL");
  heed_ngram_config c = *cfg;
  if (!c.n_min && !c.n_max) c.n_min = 1, c.n_max = 4;
  if (c.n_min < 1 || c.n_min > c.n_max || c.n_max > 16)
    return heed_err_set(err, HEED_E_INVALID, "ngram: n_min %u and n_max %u must satisfy 1 <= n_min <= n_max <= 16",
                        cfg->n_min, cfg->n_max);
  if (c.vocab < 2 || c.vocab > HEED_SPEC_VOCAB_MAX)
    return heed_err_set(err, HEED_E_INVALID, "ngram: vocab %u is outside 2..%u", c.vocab, HEED_SPEC_VOCAB_MAX);
  if (c.capacity < 1 || c.capacity > (1u << 28))
    return heed_err_set(err, HEED_E_INVALID, "ngram: capacity %u is outside 1..%u", c.capacity, 1u << 28);
  uint32_t slots = 2;
  while (slots < 2u * c.capacity) slots <<= 1;
  ngram *g = calloc(1, sizeof *g);
  heed_drafter *d = calloc(1, sizeof *d);
  if (g) {
    g->tok = malloc(sizeof(int32_t) * c.capacity);
    g->tab = calloc((size_t)slots * (c.n_max - c.n_min + 1), sizeof(uint32_t));
  }
  if (!g || !d || !g->tok || !g->tab) {
    ngram_destroy(g), free(d);
    return heed_err_set(err, HEED_E_NOMEM, "ngram: out of memory for capacity %u", c.capacity);
  }
  g->cfg = c, g->mask = slots - 1;
  d->ops = &ngram_ops, d->self = g;
  *out = d;
  return HEED_OK;
}

unsigned heed_ngram_last_match(const heed_drafter *d) {
  return d && d->ops == &ngram_ops ? ((const ngram *)d->self)->last_n : 0;
}
