/* text/tok_internal.h - the tokenizer's tables, shared by text/tok_*.c only;
 * not installed.
 *
 * Everything here is built once by heed_tokenizer_create and only read
 * afterwards; an encode call keeps its scratch in a tok_run of its own. */
#ifndef HEED_TEXT_TOK_INTERNAL_H
#define HEED_TEXT_TOK_INTERNAL_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "heed/tokenizer.h"

/* Which split regex a gpt2 tokenizer runs. */
typedef enum tok_pre { TOK_PRE_GPT2, TOK_PRE_LLAMA3, TOK_PRE_QWEN2 } tok_pre;

/* ---------- hashing ---------- */

/* A fast 64-bit hash of a short byte string; only ever compared within one
 * process, so the byte order of the loads does not matter. */
static inline uint64_t tok_hash(const void *p, size_t n) {
  const uint8_t *s = (const uint8_t *)p;
  uint64_t h = 0x9E3779B97F4A7C15ull ^ ((uint64_t)n * 0xFF51AFD7ED558CCDull);
  while (n >= 8) {
    uint64_t v;
    memcpy(&v, s, 8);
    h = (h ^ v) * 0xBF58476D1CE4E5B9ull;
    h ^= h >> 31;
    s += 8;
    n -= 8;
  }
  uint64_t v = 0;
  for (size_t i = 0; i < n; i++) v |= (uint64_t)s[i] << (8 * i);
  h = (h ^ v) * 0x94D049BB133111EBull;
  h ^= h >> 29;
  h *= 0xBF58476D1CE4E5B9ull;
  return h ^ (h >> 32);
}

/* Text -> id, open addressing. The slot keeps 32 bits of the hash so that a
 * probe rarely compares bytes it need not. */
typedef struct tok_slot {
  uint32_t fp; /* high half of the hash */
  int32_t id;  /* -1: empty */
} tok_slot;

typedef struct tok_map {
  tok_slot *slots; /* [mask + 1] */
  uint64_t mask;
} tok_map;

/* (left id, right id) -> rank and merged id: a gpt2 merge. */
typedef struct tok_merge {
  uint64_t key;  /* (uint64_t)left << 32 | right; UINT64_MAX: empty */
  uint32_t rank; /* index in tokenizer.ggml.merges */
  int32_t id;    /* the merged token */
} tok_merge;

/* The special tokens (user-defined, control, unknown) as a byte trie, for
 * leftmost-longest matching before BPE. */
typedef struct tok_trie_node {
  int32_t child;   /* first child, -1: none */
  int32_t sibling; /* next child of the same parent, -1: none */
  int32_t id;      /* token ending here, -1: none */
  uint8_t byte;
} tok_trie_node;

/* Per-token flags beside the type. */
enum { TOK_F_EOG = 1u << 0, TOK_F_SPECIAL_PIECE = 1u << 1 /* piece only with HEED_DETOK_SPECIAL */ };

struct heed_tokenizer {
  heed_tokenizer_kind kind;
  char model[8];
  char pre_name[64];
  tok_pre pre;
  uint32_t n_tokens;
  uint8_t *type;      /* [n_tokens] heed_token_type */
  uint8_t *flags;     /* [n_tokens] TOK_F_* */
  float *score;       /* [n_tokens] SPM merge priority */
  char *text;         /* stored texts, concatenated */
  uint64_t *text_off; /* [n_tokens + 1] token i is text[text_off[i] .. text_off[i + 1]) */
  char *piece;        /* decoded bytes, concatenated */
  uint64_t *piece_off; /* [n_tokens + 1] */
  size_t max_piece;
  tok_map vocab;      /* stored text -> lowest id with it */

  heed_token bos, eos, eot, eom, unk, pad;
  int add_bos, add_eos, add_space_prefix;
  heed_token *eog; /* [n_eog] ascending */
  size_t n_eog;

  /* special tokens */
  int32_t trie_root[256]; /* first byte -> node, -1: none */
  tok_trie_node *trie;    /* [n_trie] */
  size_t n_trie;

  /* gpt2: BPE over raw bytes */
  int32_t byte_tok[256]; /* gpt2: byte b's byte-level token; llama: <0xNN>; -1 when absent */
  tok_merge *merges;     /* [merge_mask + 1] open addressing */
  uint64_t merge_mask;
  uint32_t n_merges;
  int ignore_merges;     /* llama-bpe: a pre-token that is a whole normal token is taken as is */
  tok_map piece_map;     /* ignore_merges: decoded bytes of normal tokens -> id */
  pcre2_code *re;
  int re_jit;            /* JIT compiled: pcre2_jit_match */
};

/* Stored text and decoded piece of token id. */
static inline const char *tok_text(const heed_tokenizer *t, int32_t id, size_t *len) {
  *len = (size_t)(t->text_off[id + 1] - t->text_off[id]);
  return t->text + t->text_off[id];
}

/* Lowest id whose stored text is s[0..n), or -1. */
int32_t tok_map_find(const tok_map *m, const char *pool, const uint64_t *off, const char *s, size_t n);

/* ---------- UTF-8 ---------- */

/* Length of the well-formed sequence starting at s[0..n) (1..4), or 0 when
 * none starts there (Python's strict decoder: no overlongs, no surrogates,
 * nothing above U+10FFFF; a truncated sequence is none too). */
static inline size_t tok_utf8_len(const uint8_t *s, size_t n) {
  uint8_t c = s[0];
  if (c < 0x80) return 1;
  if (c < 0xC2) return 0;
  if (c < 0xE0) return n >= 2 && (s[1] & 0xC0) == 0x80 ? 2 : 0;
  if (c < 0xF0) {
    if (n < 3 || (s[1] & 0xC0) != 0x80 || (s[2] & 0xC0) != 0x80) return 0;
    if (c == 0xE0 && s[1] < 0xA0) return 0; /* overlong */
    if (c == 0xED && s[1] >= 0xA0) return 0; /* surrogate */
    return 3;
  }
  if (c < 0xF5) {
    if (n < 4 || (s[1] & 0xC0) != 0x80 || (s[2] & 0xC0) != 0x80 || (s[3] & 0xC0) != 0x80) return 0;
    if (c == 0xF0 && s[1] < 0x90) return 0; /* overlong */
    if (c == 0xF4 && s[1] >= 0x90) return 0; /* above U+10FFFF */
    return 4;
  }
  return 0;
}

/* 1 when s[0..n) (n <= 3) is a proper prefix of some well-formed sequence:
 * more bytes could still complete it. */
int tok_utf8_incomplete(const uint8_t *s, size_t n);

/* ---------- per-call scratch ---------- */

typedef struct tok_sym {
  int32_t id;     /* gpt2: current token */
  uint32_t start; /* byte offset in the word / escaped fragment */
  uint32_t len;   /* 0: merged into its left neighbour */
  int32_t prev, next;
} tok_sym;

typedef struct tok_cand {
  union {
    uint32_t rank; /* gpt2: lower first */
    float score;   /* llama: higher first */
  } k;
  uint32_t left;   /* symbol index: ties go to the leftmost */
  int32_t a, b;    /* gpt2: the ids the pair had; llama: b = the pair's total length */
  int32_t m;       /* the merged token */
} tok_cand;

typedef struct tok_cache_slot {
  uint64_t h;
  uint32_t off, len;     /* the word: text[off .. off + len) of the call's input */
  uint32_t ids_at, n_ids; /* its ids in the run's arena */
} tok_cache_slot;

typedef struct tok_run {
  const heed_tokenizer *t;
  heed_tokens *out;
  heed_status st; /* first failure (HEED_E_NOMEM) */
  int prev_special; /* llama: the last thing emitted was a special token (or nothing) */
  const char *text; /* the call's input, for the cache keys */
  tok_sym *sym;
  size_t sym_cap;
  tok_cand *heap;
  size_t heap_n, heap_cap;
  char *esc; /* llama: the fragment with spaces as U+2581 */
  size_t esc_cap;
  /* gpt2: pre-token -> ids, for this call */
  tok_cache_slot *cache;
  uint64_t cache_mask, cache_n;
  heed_token *arena;
  size_t arena_n, arena_cap;
  pcre2_match_data *md;
  pcre2_match_context *mctx;
  pcre2_jit_stack *jit_stack;
  int pcre_rc; /* a PCRE2 failure other than no match, for the message */
} tok_run;

int tok_run_push(tok_run *r, heed_token id);

/* gpt2: a fragment (no special tokens in it) at r->text + off. */
void tok_bpe_fragment(tok_run *r, size_t off, size_t len);
/* llama: the same. */
void tok_spm_fragment(tok_run *r, size_t off, size_t len);

/* gpt2 tables: byte tokens, merges, the regex. Called by create after the
 * vocabulary is in place. */
heed_status tok_bpe_build(heed_tokenizer *t, const heed_tokenizer_desc *d, heed_error *err);
void tok_bpe_free(heed_tokenizer *t);
/* The byte-level alphabet: byte b is written as code point tok_byte_cp(b). */
uint32_t tok_byte_cp(uint8_t b);
/* The byte code point cp stands for, or -1 when cp is not in the alphabet. */
int tok_cp_byte(uint32_t cp);

void tok_run_free(tok_run *r);

#endif
