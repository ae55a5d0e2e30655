/* serve/chunks.c - chunk reuse's search: the runs of a prompt that earlier
 * token sequences hold, at any position.
 *
 * Every SRV_CHUNK-th position of each source goes into a hash table by the
 * hash of the SRV_CHUNK tokens there; the prompt is scanned at every position
 * by a rolling hash of the same kind. A hit is checked token by token and
 * grown backwards to where the texts part (but not into the prompt's first
 * `from` tokens, nor into the run before it) and forwards to where they part again (but not over the last
 * prompt token, which is always run). A run longer than boundary + SRV_CHUNK/2
 * is kept, less its first `boundary` tokens, which are recomputed: they would
 * otherwise be the tokens most changed by the text that changed before them.
 * The scan goes on after the run. O(prompt + sources). */
#include <stdlib.h>
#include <string.h>

#include "serve/serve_internal.h"

#define CH_BASE 0x100000001b3ull

static uint64_t ch_mix(int32_t t) { return ((uint64_t)(uint32_t)t + 1) * 0x9e3779b97f4a7c15ull; }
static uint64_t ch_hash(const int32_t *t) {
  uint64_t h = 0;
  for (unsigned i = 0; i < SRV_CHUNK; i++) h = h * CH_BASE + ch_mix(t[i]);
  return h;
}

typedef struct ch_entry {
  uint64_t h;
  unsigned src; /* + 1; 0: an empty slot */
  size_t pos;
} ch_entry;

size_t srv_chunk_runs(const int32_t *p, size_t n, size_t from, const int32_t *const *src, const size_t *src_len,
                      unsigned n_src, unsigned boundary, srv_run **runs, unsigned *n_runs) {
  *runs = NULL, *n_runs = 0;
  const size_t end = n ? n - 1 : 0;
  size_t n_ch = 0, planned = 0;
  if (from + SRV_CHUNK > end) return 0;
  for (unsigned l = 0; l < n_src; l++) n_ch += src_len[l] / SRV_CHUNK;
  if (!n_ch) return 0;
  size_t cap = 16;
  while (cap < 2 * n_ch) cap *= 2;
  ch_entry *tab = calloc(cap, sizeof *tab);
  if (!tab) return 0;
  for (unsigned l = 0; l < n_src; l++)
    for (size_t r = 0; r + SRV_CHUNK <= src_len[l]; r += SRV_CHUNK) {
      const uint64_t h = ch_hash(src[l] + r);
      size_t i = h & (cap - 1);
      while (tab[i].src && tab[i].h != h) i = (i + 1) & (cap - 1);
      if (!tab[i].src) tab[i] = (ch_entry){.h = h, .src = l + 1, .pos = r};
    }
  uint64_t top = 1;
  for (unsigned i = 0; i + 1 < SRV_CHUNK; i++) top *= CH_BASE;
  size_t q = from, lo = from, cap_runs = 0; /* lo: a run grows back no further (from, or the last run's end) */
  uint64_t h = ch_hash(p + q);
  for (;;) {
    const ch_entry *hit = NULL;
    for (size_t i = h & (cap - 1); tab[i].src; i = (i + 1) & (cap - 1))
      if (tab[i].h == h) {
        hit = &tab[i];
        break;
      }
    if (hit && !memcmp(p + q, src[hit->src - 1] + hit->pos, SRV_CHUNK * sizeof(int32_t))) {
      const int32_t *t = src[hit->src - 1];
      const size_t tl = src_len[hit->src - 1];
      size_t a = q, r = hit->pos, b = q + SRV_CHUNK, rb = r + SRV_CHUNK;
      while (a > lo && r > 0 && p[a - 1] == t[r - 1]) a--, r--;
      while (b < end && rb < tl && p[b] == t[rb]) b++, rb++;
      if (b - a > boundary + SRV_CHUNK / 2) {
        if (*n_runs == cap_runs) {
          cap_runs = cap_runs ? 2 * cap_runs : 4;
          srv_run *x = realloc(*runs, cap_runs * sizeof *x);
          if (!x) break; /* out of memory: the runs so far */
          *runs = x;
        }
        (*runs)[(*n_runs)++] = (srv_run){.dst = a + boundary, .src_pos = r + boundary, .n = b - a - boundary,
                                         .src = hit->src - 1};
        planned += b - a - boundary;
      }
      q = lo = b;
      if (q + SRV_CHUNK > end) break;
      h = ch_hash(p + q);
      continue;
    }
    if (q + SRV_CHUNK >= end) break;
    h = (h - ch_mix(p[q]) * top) * CH_BASE + ch_mix(p[q + SRV_CHUNK]);
    q++;
  }
  free(tab);
  return planned;
}
