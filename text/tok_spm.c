/* text/tok_spm.c - llama (SentencePiece) BPE by scores, with byte fallback.
 *
 * A fragment (text between special tokens) is one sequence: spaces become
 * U+2581, each character a symbol, and the adjacent pair whose concatenation
 * is a mergeable vocabulary entry with the highest score merges, ties to the
 * leftmost, until no pair is left. Symbols are a linked list over the escaped
 * text and candidates a binary heap, so a fragment of n characters costs
 * O(n log n) whatever its length (a 500 KB prompt without a newline is one
 * fragment). */
#include <stdlib.h>
#include <string.h>

#include "text/tok_internal.h"

/* What a merge may produce (SentencePiece's pieces): never control, unknown,
 * unused or byte tokens. */
static int mergeable(int type) { return type == HEED_TOKEN_NORMAL || type == HEED_TOKEN_USER_DEFINED; }

static int grow(void **p, size_t *cap, size_t need, size_t elem) {
  if (need <= *cap) return 0;
  size_t c = *cap ? *cap : 64;
  while (c < need) c *= 2;
  void *q = realloc(*p, c * elem);
  if (!q) return -1;
  *p = q;
  *cap = c;
  return 0;
}

/* Highest score first, then the leftmost. */
static int cand_before(const tok_cand *x, const tok_cand *y) {
  return x->k.score != y->k.score ? x->k.score > y->k.score : x->left < y->left;
}

static void heap_push(tok_run *r, tok_cand c) {
  if (r->heap_n == r->heap_cap && grow((void **)&r->heap, &r->heap_cap, r->heap_n + 1, sizeof *r->heap)) {
    r->st = HEED_E_NOMEM; /* the loop still ends: fewer candidates, and the call fails */
    return;
  }
  size_t i = r->heap_n++;
  while (i > 0) {
    size_t p = (i - 1) / 2;
    if (!cand_before(&c, &r->heap[p])) break;
    r->heap[i] = r->heap[p];
    i = p;
  }
  r->heap[i] = c;
}

static tok_cand heap_pop(tok_run *r) {
  tok_cand top = r->heap[0], last = r->heap[--r->heap_n];
  size_t i = 0, n = r->heap_n;
  for (;;) {
    size_t c = 2 * i + 1;
    if (c >= n) break;
    if (c + 1 < n && cand_before(&r->heap[c + 1], &r->heap[c])) c++;
    if (!cand_before(&r->heap[c], &last)) break;
    r->heap[i] = r->heap[c];
    i = c;
  }
  if (n) r->heap[i] = last;
  return top;
}

static void try_pair(tok_run *r, int32_t l) {
  if (l < 0) return;
  const heed_tokenizer *t = r->t;
  const tok_sym *s = r->sym;
  int32_t nx = s[l].next;
  if (nx < 0) return;
  /* neighbours are contiguous in the escaped text */
  size_t n = (size_t)s[l].len + s[nx].len;
  int32_t id = tok_map_find(&t->vocab, t->text, t->text_off, r->esc + s[l].start, n);
  if (id < 0 || !mergeable(t->type[id])) return;
  heap_push(r, (tok_cand){.k.score = t->score[id], .left = (uint32_t)l, .b = (int32_t)n, .m = id});
}

/* A symbol left after merging: its token, else its bytes' <0xNN> tokens,
 * else unk (create made sure one of the two exists). */
static void emit_symbol(tok_run *r, const tok_sym *s) {
  const heed_tokenizer *t = r->t;
  if (s->id >= 0) {
    tok_run_push(r, s->id);
    return;
  }
  const char *p = r->esc + s->start;
  int32_t id = tok_map_find(&t->vocab, t->text, t->text_off, p, s->len);
  if (id >= 0 && mergeable(t->type[id])) {
    tok_run_push(r, id);
    return;
  }
  for (uint32_t k = 0; k < s->len; k++)
    if (t->byte_tok[(uint8_t)p[k]] < 0) {
      tok_run_push(r, t->unk);
      return;
    }
  for (uint32_t k = 0; k < s->len; k++) tok_run_push(r, t->byte_tok[(uint8_t)p[k]]);
}

void tok_spm_fragment(tok_run *r, size_t off, size_t len) {
  const heed_tokenizer *t = r->t;
  const char *src = r->text + off;
  /* llama.cpp's rule: a space goes in front of the text and of each text after a special token */
  const int prefix = t->add_space_prefix && r->prev_special;
  r->prev_special = 0;
  size_t n_space = 0;
  for (size_t i = 0; i < len; i++) n_space += src[i] == ' ';
  const size_t n = len + 2 * n_space + (prefix ? 3 : 0);
  if (grow((void **)&r->esc, &r->esc_cap, n, 1)) {
    r->st = HEED_E_NOMEM;
    return;
  }
  char *e = r->esc;
  size_t w = 0;
  if (prefix) memcpy(e, "\xE2\x96\x81", 3), w = 3;
  for (size_t i = 0; i < len; i++) {
    if (src[i] == ' ')
      memcpy(e + w, "\xE2\x96\x81", 3), w += 3;
    else
      e[w++] = src[i];
  }

  /* symbols: characters; a byte that starts no valid sequence stands alone */
  if (grow((void **)&r->sym, &r->sym_cap, n, sizeof *r->sym)) {
    r->st = HEED_E_NOMEM;
    return;
  }
  tok_sym *s = r->sym;
  int32_t ns = 0;
  for (size_t i = 0; i < n;) {
    size_t l = tok_utf8_len((const uint8_t *)e + i, n - i);
    if (!l) l = 1;
    s[ns] = (tok_sym){.id = -1, .start = (uint32_t)i, .len = (uint32_t)l, .prev = ns - 1, .next = ns + 1};
    ns++;
    i += l;
  }
  if (ns == 0) return;
  s[ns - 1].next = -1;

  r->heap_n = 0;
  for (int32_t i = 0; i + 1 < ns; i++) try_pair(r, i);
  while (r->heap_n) {
    tok_cand c = heap_pop(r);
    int32_t l = (int32_t)c.left, nx = s[l].next;
    /* stale: a side merged since (symbols only grow, so the length tells) */
    if (s[l].len == 0 || nx < 0 || s[l].len + s[nx].len != (uint32_t)c.b) continue;
    s[l].id = c.m;
    s[l].len += s[nx].len;
    s[l].next = s[nx].next;
    if (s[nx].next >= 0) s[s[nx].next].prev = l;
    s[nx].len = 0;
    try_pair(r, s[l].prev);
    try_pair(r, l);
  }
  for (int32_t i = 0; i >= 0 && r->st == HEED_OK; i = s[i].next) emit_symbol(r, &s[i]);
}
