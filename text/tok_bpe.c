/* text/tok_bpe.c - gpt2 byte-level BPE: the pre-tokenizer regexes, the merge
 * table and the merge loop.
 *
 * The work is done on raw bytes and token ids, never on byte-level strings:
 * a pre-token's bytes start as the 256 byte tokens, and a merge is looked up
 * by the pair of ids. Equal pre-tokens recur all through a text (keywords,
 * indentation), so each call keeps the ids of every pre-token it has merged. */
#include <stdlib.h>
#include <string.h>

#include "runtime/internal.h"
#include "text/tok_internal.h"

/* The split regexes, as in the models' tokenizer.json (Hugging Face runs them
 * with Oniguruma; PCRE2 with UTF and UCP agrees on these constructs:
 * (?i:...) folds 'ſ and the Kelvin sign as Oniguruma does, and \s(?!\S)
 * backtracks the same way). */
static const char re_gpt2[] = "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";
static const char re_llama3[] = "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}|"
                                " ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
static const char re_qwen2[] = "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}|"
                               " ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

/* GPT-2's byte-level alphabet: the printable bytes stand for themselves, the
 * other 68 (controls, space, DEL, C1, NBSP, soft hyphen) for U+0100.. in order. */
static int byte_printable(unsigned b) { return (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || b >= 174; }

uint32_t tok_byte_cp(uint8_t b) {
  if (byte_printable(b)) return b;
  if (b <= 32) return 256u + b;
  if (b <= 160) return 256u + 33u + (b - 127u);
  return 256u + 67u; /* 173 */
}

int tok_cp_byte(uint32_t cp) {
  if (cp < 256) return byte_printable(cp) ? (int)cp : -1;
  if (cp < 256 + 33) return (int)(cp - 256);
  if (cp < 256 + 67) return (int)(cp - 256 - 33 + 127);
  if (cp == 256 + 67) return 173;
  return -1;
}

static size_t put_utf8(uint32_t cp, char *out) {
  if (cp < 0x80) {
    out[0] = (char)cp;
    return 1;
  }
  out[0] = (char)(0xC0 | cp >> 6); /* the alphabet stops at U+0143 */
  out[1] = (char)(0x80 | (cp & 0x3F));
  return 2;
}

static uint64_t merge_key(int32_t a, int32_t b) { return (uint64_t)(uint32_t)a << 32 | (uint32_t)b; }

static const tok_merge *merge_find(const heed_tokenizer *t, int32_t a, int32_t b) {
  if (!t->merges) return NULL;
  uint64_t k = merge_key(a, b);
  uint64_t h = k * 0x9E3779B97F4A7C15ull;
  for (uint64_t i = (h >> 20) & t->merge_mask;; i = (i + 1) & t->merge_mask) {
    const tok_merge *m = &t->merges[i];
    if (m->key == k) return m;
    if (m->key == UINT64_MAX) return NULL;
  }
}

void tok_bpe_free(heed_tokenizer *t) {
  free(t->merges);
  t->merges = NULL;
  free(t->piece_map.slots);
  t->piece_map.slots = NULL;
  if (t->re) pcre2_code_free(t->re);
  t->re = NULL;
}

heed_status tok_bpe_build(heed_tokenizer *t, const heed_tokenizer_desc *d, heed_error *err) {
  for (int b = 0; b < 256; b++) {
    char s[2];
    size_t n = put_utf8(tok_byte_cp((uint8_t)b), s);
    t->byte_tok[b] = tok_map_find(&t->vocab, t->text, t->text_off, s, n);
    if (t->byte_tok[b] < 0)
      return heed_err_set(err, HEED_E_INVALID,
                          "tokenizer: gpt2 vocabulary has no token for byte 0x%02X (\"%.*s\"): byte-level BPE needs all 256",
                          b, (int)n, s);
  }

  /* merges: rank = index; the first of two equal pairs keeps its rank */
  uint64_t cap = 16;
  while (cap < (uint64_t)d->n_merges + d->n_merges / 3 + 1) cap <<= 1;
  t->merges = malloc(cap * sizeof *t->merges);
  size_t longest = 0;
  for (uint32_t i = 0; i < d->n_merges; i++) {
    if (!d->merges[i]) return heed_err_set(err, HEED_E_INVALID, "tokenizer: merge %u has no text", i);
    size_t l = d->merge_lens ? d->merge_lens[i] : strlen(d->merges[i]);
    if (l > longest) longest = l;
  }
  char *cat = malloc(longest + 1);
  if (!t->merges || !cat) {
    free(cat);
    return heed_err_set(err, HEED_E_NOMEM, "tokenizer: out of memory for %u merges", d->n_merges);
  }
  for (uint64_t i = 0; i < cap; i++) t->merges[i].key = UINT64_MAX;
  t->merge_mask = cap - 1;
  t->n_merges = 0;
  for (uint32_t i = 0; i < d->n_merges; i++) {
    const char *s = d->merges[i];
    size_t l = d->merge_lens ? d->merge_lens[i] : strlen(s);
    /* the separator is the first space after the first byte (byte-level texts hold no space) */
    const char *sp = l > 1 ? memchr(s + 1, ' ', l - 1) : NULL;
    if (!sp) {
      free(cat);
      return heed_err_set(err, HEED_E_INVALID, "tokenizer: merge %u \"%.*s\" is not \"left right\"", i,
                          (int)(l > 64 ? 64 : l), s);
    }
    size_t nl = (size_t)(sp - s), nr = l - nl - 1;
    int32_t a = tok_map_find(&t->vocab, t->text, t->text_off, s, nl);
    int32_t b = tok_map_find(&t->vocab, t->text, t->text_off, sp + 1, nr);
    memcpy(cat, s, nl);
    memcpy(cat + nl, sp + 1, nr);
    int32_t m = tok_map_find(&t->vocab, t->text, t->text_off, cat, nl + nr);
    if (a < 0 || b < 0 || m < 0) continue; /* documented: skipped */
    uint64_t k = merge_key(a, b);
    uint64_t h = k * 0x9E3779B97F4A7C15ull;
    for (uint64_t j = (h >> 20) & t->merge_mask;; j = (j + 1) & t->merge_mask) {
      tok_merge *e = &t->merges[j];
      if (e->key == k) break;
      if (e->key == UINT64_MAX) {
        *e = (tok_merge){.key = k, .rank = i, .id = m};
        t->n_merges++;
        break;
      }
    }
  }
  free(cat);

  t->ignore_merges = t->pre == TOK_PRE_LLAMA3;
  if (t->ignore_merges) { /* decoded bytes of normal tokens -> id */
    uint64_t pcap = 16;
    while (pcap < (uint64_t)t->n_tokens + t->n_tokens / 2 + 1) pcap <<= 1;
    t->piece_map.slots = malloc(pcap * sizeof *t->piece_map.slots);
    if (!t->piece_map.slots) return heed_err_set(err, HEED_E_NOMEM, "tokenizer: out of memory");
    for (uint64_t i = 0; i < pcap; i++) t->piece_map.slots[i].id = -1;
    t->piece_map.mask = pcap - 1;
    for (uint32_t i = 0; i < t->n_tokens; i++) {
      if (t->type[i] != HEED_TOKEN_NORMAL) continue;
      const char *s = t->piece + t->piece_off[i];
      size_t n = (size_t)(t->piece_off[i + 1] - t->piece_off[i]);
      if (tok_map_find(&t->piece_map, t->piece, t->piece_off, s, n) >= 0) continue;
      uint64_t h = tok_hash(s, n);
      for (uint64_t j = h & t->piece_map.mask;; j = (j + 1) & t->piece_map.mask) {
        if (t->piece_map.slots[j].id < 0) {
          t->piece_map.slots[j] = (tok_slot){.fp = (uint32_t)(h >> 32), .id = (int32_t)i};
          break;
        }
      }
    }
  }

  const char *pat = t->pre == TOK_PRE_QWEN2 ? re_qwen2 : t->pre == TOK_PRE_LLAMA3 ? re_llama3 : re_gpt2;
  int ec;
  PCRE2_SIZE eo;
  t->re = pcre2_compile((PCRE2_SPTR)pat, PCRE2_ZERO_TERMINATED, PCRE2_UTF | PCRE2_UCP, &ec, &eo, NULL);
  if (!t->re) {
    PCRE2_UCHAR msg[160];
    pcre2_get_error_message(ec, msg, sizeof msg);
    return heed_err_set(err, HEED_E_INTERNAL, "tokenizer: the %s regex does not compile at %zu: %s", t->pre_name,
                        (size_t)eo, (const char *)msg);
  }
  /* Without JIT (a platform PCRE2 has none for) the interpreter gives the same splits, slower. */
  t->re_jit = pcre2_jit_compile(t->re, PCRE2_JIT_COMPLETE) == 0;
  return HEED_OK;
}

/* ---------- the merge loop ---------- */

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

/* Lowest rank first, then the leftmost. */
static int cand_before(const tok_cand *x, const tok_cand *y) {
  return x->k.rank != y->k.rank ? x->k.rank < y->k.rank : x->left < y->left;
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
  const tok_sym *s = r->sym;
  int32_t nx = s[l].next;
  if (nx < 0) return;
  const tok_merge *m = merge_find(r->t, s[l].id, s[nx].id);
  if (!m) return;
  heap_push(r, (tok_cand){.k.rank = m->rank, .left = (uint32_t)l, .a = s[l].id, .b = s[nx].id, .m = m->id});
}

/* Merges w[0..n) (n >= 2) and appends its ids to the arena. */
static int bpe_merge(tok_run *r, const uint8_t *w, size_t n) {
  const heed_tokenizer *t = r->t;
  /* each merge adds at most two candidates to the n - 1 first ones */
  if (grow((void **)&r->sym, &r->sym_cap, n, sizeof *r->sym))
    return -1;
  tok_sym *s = r->sym;
  for (size_t i = 0; i < n; i++)
    s[i] = (tok_sym){.id = t->byte_tok[w[i]], .start = (uint32_t)i, .len = 1, .prev = (int32_t)i - 1,
                     .next = i + 1 < n ? (int32_t)i + 1 : -1};
  r->heap_n = 0;
  for (size_t i = 0; i + 1 < n; i++) try_pair(r, (int32_t)i);
  while (r->heap_n) {
    tok_cand c = heap_pop(r);
    int32_t l = (int32_t)c.left, nx = s[l].next;
    /* stale: either side changed since the pair was queued (symbols only grow) */
    if (s[l].len == 0 || nx < 0 || s[l].id != c.a || s[nx].id != c.b) continue;
    s[l].id = c.m;
    s[l].len += s[nx].len;
    s[l].next = s[nx].next;
    if (s[nx].next >= 0) s[s[nx].next].prev = l;
    s[nx].len = 0;
    try_pair(r, s[l].prev);
    try_pair(r, l);
  }
  size_t k = 0;
  for (int32_t i = 0; i >= 0; i = s[i].next) k++;
  if (grow((void **)&r->arena, &r->arena_cap, r->arena_n + k, sizeof *r->arena)) return -1;
  for (int32_t i = 0; i >= 0; i = s[i].next) r->arena[r->arena_n++] = s[i].id;
  return 0;
}

#define CACHE_MAX_WORD 256 /* longer pre-tokens (whitespace runs, base64) rarely recur */

static int cache_grow(tok_run *r) {
  uint64_t cap = r->cache ? (r->cache_mask + 1) * 2 : 1024;
  tok_cache_slot *c = calloc(cap, sizeof *c);
  if (!c) return -1;
  for (uint64_t i = 0; r->cache && i <= r->cache_mask; i++) {
    tok_cache_slot *e = &r->cache[i];
    if (!e->len) continue;
    uint64_t j = e->h & (cap - 1);
    while (c[j].len) j = (j + 1) & (cap - 1);
    c[j] = *e;
  }
  free(r->cache);
  r->cache = c;
  r->cache_mask = cap - 1;
  return 0;
}

/* One pre-token: text[off .. off + len). */
static void bpe_word(tok_run *r, size_t off, size_t len) {
  const heed_tokenizer *t = r->t;
  const uint8_t *w = (const uint8_t *)r->text + off;
  if (len == 1) {
    tok_run_push(r, t->byte_tok[w[0]]);
    return;
  }
  if (t->ignore_merges) {
    int32_t id = tok_map_find(&t->piece_map, t->piece, t->piece_off, (const char *)w, len);
    if (id >= 0) {
      tok_run_push(r, id);
      return;
    }
  }
  tok_cache_slot *slot = NULL;
  uint64_t h = 0;
  if (len <= CACHE_MAX_WORD) {
    if ((r->cache_n + 1) * 2 > (r->cache ? r->cache_mask + 1 : 0) && cache_grow(r)) {
      r->st = HEED_E_NOMEM;
      return;
    }
    h = tok_hash(w, len);
    for (uint64_t i = h & r->cache_mask;; i = (i + 1) & r->cache_mask) {
      tok_cache_slot *e = &r->cache[i];
      if (!e->len) {
        slot = e;
        break;
      }
      if (e->h == h && e->len == len && memcmp(r->text + e->off, w, len) == 0) {
        for (uint32_t k = 0; k < e->n_ids; k++)
          if (tok_run_push(r, r->arena[e->ids_at + k])) return;
        return;
      }
    }
  }
  size_t at = r->arena_n;
  if (bpe_merge(r, w, len)) {
    r->st = HEED_E_NOMEM;
    return;
  }
  for (size_t k = at; k < r->arena_n; k++)
    if (tok_run_push(r, r->arena[k])) return;
  if (slot) {
    *slot = (tok_cache_slot){.h = h, .off = (uint32_t)off, .len = (uint32_t)len, .ids_at = (uint32_t)at,
                             .n_ids = (uint32_t)(r->arena_n - at)};
    r->cache_n++;
  } else {
    r->arena_n = at; /* not kept */
  }
}

/* The regex over a valid UTF-8 run: matches and the gaps between them are
 * pre-tokens (Hugging Face's Split with "isolated"). */
static void split_run(tok_run *r, size_t off, size_t len) {
  const heed_tokenizer *t = r->t;
  if (!r->md) {
    r->md = pcre2_match_data_create(1, NULL);
    r->mctx = pcre2_match_context_create(NULL);
    r->jit_stack = pcre2_jit_stack_create(32 * 1024, 8 * 1024 * 1024, NULL);
    if (!r->md || !r->mctx || !r->jit_stack) {
      r->st = HEED_E_NOMEM;
      return;
    }
    /* Text of any length must split as the regex says, not stop at a limit. */
    pcre2_set_match_limit(r->mctx, UINT32_MAX);
    pcre2_set_depth_limit(r->mctx, UINT32_MAX);
    pcre2_jit_stack_assign(r->mctx, NULL, r->jit_stack);
  }
  PCRE2_SPTR subj = (PCRE2_SPTR)r->text + off;
  size_t pos = 0;
  PCRE2_SIZE *ov = pcre2_get_ovector_pointer(r->md);
  while (pos < len && r->st == HEED_OK) {
    int rc = t->re_jit ? pcre2_jit_match(t->re, subj, len, pos, 0, r->md, r->mctx)
                       : pcre2_match(t->re, subj, len, pos, PCRE2_NO_UTF_CHECK, r->md, r->mctx);
    if (rc < 0 && rc != PCRE2_ERROR_NOMATCH && t->re_jit) /* the JIT's stack ran out: the interpreter has no such limit */
      rc = pcre2_match(t->re, subj, len, pos, PCRE2_NO_UTF_CHECK | PCRE2_NO_JIT, r->md, r->mctx);
    if (rc == PCRE2_ERROR_NOMATCH) {
      bpe_word(r, off + pos, len - pos);
      return;
    }
    if (rc < 0) {
      r->st = HEED_E_INTERNAL;
      r->pcre_rc = rc;
      return;
    }
    size_t s = ov[0], e = ov[1];
    if (s > pos) bpe_word(r, off + pos, s - pos);
    if (e == s) { /* an empty match (none of heed's regexes has one): the next character stands alone */
      size_t l = tok_utf8_len(subj + s, len - s);
      e = s + (l ? l : 1);
    }
    bpe_word(r, off + s, e - s);
    pos = e;
  }
}

void tok_bpe_fragment(tok_run *r, size_t off, size_t len) {
  const uint8_t *s = (const uint8_t *)r->text + off;
  size_t i = 0;
  while (i < len && r->st == HEED_OK) {
    size_t j = i;
    while (j < len) {
      if (s[j] < 0x80) {
        j++;
        continue;
      }
      size_t l = tok_utf8_len(s + j, len - j);
      if (!l) break;
      j += l;
    }
    if (j > i) split_run(r, off + i, j - i);
    size_t k = j;
    while (k < len && tok_utf8_len(s + k, len - k) == 0) k++;
    if (k > j && r->st == HEED_OK) bpe_word(r, off + j, k - j); /* invalid bytes: one pre-token */
    i = k;
  }
}
