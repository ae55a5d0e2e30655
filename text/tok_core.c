/* text/tok_core.c - building a tokenizer from its descriptor, matching the
 * special tokens, and everything on the way back (pieces, decode, streaming).
 * The BPE of each kind lives in tok_bpe.c (gpt2) and tok_spm.c (llama). */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/internal.h"
#include "text/tok_internal.h"

const char *heed_token_type_name(int type) {
  switch (type) {
#define HEED_X_(N, v, s) \
  case v:                \
    return s;
    HEED_TOKEN_TYPE_LIST(HEED_X_)
#undef HEED_X_
  }
  return NULL;
}

static const char *kind_model(heed_tokenizer_kind k) {
  switch (k) {
#define HEED_X_(N, v, s) \
  case v:                \
    return s;
    HEED_TOKENIZER_KIND_LIST(HEED_X_)
#undef HEED_X_
  }
  return "?";
}

void heed_tokenizer_desc_init(heed_tokenizer_desc *d) {
  if (!d) return;
  memset(d, 0, sizeof *d);
  d->bos = d->eos = d->eot = d->eom = d->unk = d->pad = HEED_TOKEN_NONE;
  d->add_bos = d->add_eos = d->add_space_prefix = -1;
}

/* ---------- the text -> id map ---------- */

static int map_init(tok_map *m, uint64_t n) {
  uint64_t cap = 16;
  while (cap < n + n / 2 + 1) cap <<= 1; /* load <= 2/3 */
  m->slots = malloc(cap * sizeof *m->slots);
  if (!m->slots) return -1;
  for (uint64_t i = 0; i < cap; i++) m->slots[i].id = -1;
  m->mask = cap - 1;
  return 0;
}

int32_t tok_map_find(const tok_map *m, const char *pool, const uint64_t *off, const char *s, size_t n) {
  if (!m->slots) return -1;
  uint64_t h = tok_hash(s, n);
  uint32_t fp = (uint32_t)(h >> 32);
  for (uint64_t i = h & m->mask;; i = (i + 1) & m->mask) {
    const tok_slot *sl = &m->slots[i];
    if (sl->id < 0) return -1;
    if (sl->fp == fp && off[sl->id + 1] - off[sl->id] == n && memcmp(pool + off[sl->id], s, n) == 0) return sl->id;
  }
}

/* Adds id under its text in pool unless the text is there already (the lower
 * id, inserted first, keeps it). */
static void map_add(tok_map *m, const char *pool, const uint64_t *off, int32_t id) {
  const char *s = pool + off[id];
  size_t n = (size_t)(off[id + 1] - off[id]);
  uint64_t h = tok_hash(s, n);
  uint32_t fp = (uint32_t)(h >> 32);
  for (uint64_t i = h & m->mask;; i = (i + 1) & m->mask) {
    tok_slot *sl = &m->slots[i];
    if (sl->id < 0) {
      sl->id = id;
      sl->fp = fp;
      return;
    }
    if (sl->fp == fp && off[sl->id + 1] - off[sl->id] == n && memcmp(pool + off[sl->id], s, n) == 0) return;
  }
}

/* ---------- creation ---------- */

void heed_tokenizer_free(heed_tokenizer *t) {
  if (!t) return;
  tok_bpe_free(t);
  free(t->type);
  free(t->flags);
  free(t->score);
  free(t->text);
  free(t->text_off);
  free(t->piece);
  free(t->piece_off);
  free(t->vocab.slots);
  free(t->eog);
  free(t->trie);
  free(t);
}

static size_t str_len(const char *const *strs, const uint32_t *lens, uint32_t i) {
  return lens ? lens[i] : strlen(strs[i]);
}

/* The piece of token i, written at out; returns its length. Never longer
 * than the stored text (every rewrite here shrinks or keeps it). */
static size_t make_piece(const heed_tokenizer *t, int32_t i, char *out) {
  size_t n;
  const char *s = tok_text(t, i, &n);
  const uint8_t *u = (const uint8_t *)s;
  int ty = t->type[i];
  if (ty == HEED_TOKEN_CONTROL || ty == HEED_TOKEN_UNKNOWN || ty == HEED_TOKEN_UNUSED) {
    memcpy(out, s, n);
    return n;
  }
  size_t w = 0;
  if (t->kind == HEED_TOKENIZER_BPE) {
    if (ty == HEED_TOKEN_USER_DEFINED) { /* added tokens are stored as written, not byte-level */
      memcpy(out, s, n);
      return n;
    }
    for (size_t k = 0; k < n;) {
      size_t l = tok_utf8_len(u + k, n - k);
      if (l == 0) { /* not UTF-8: kept as it is */
        out[w++] = s[k++];
        continue;
      }
      uint32_t cp = l == 1 ? u[k] : l == 2 ? (uint32_t)(u[k] & 0x1F) << 6 | (u[k + 1] & 0x3F) : 0xFFFFFFFFu;
      int b = tok_cp_byte(cp);
      if (b >= 0) {
        out[w++] = (char)b;
      } else { /* outside the byte-level alphabet: kept as it is */
        memcpy(out + w, s + k, l);
        w += l;
      }
      k += l;
    }
    return w;
  }
  /* llama */
  if (ty == HEED_TOKEN_BYTE && n == 6 && s[0] == '<' && s[1] == '0' && s[2] == 'x' && s[5] == '>') {
    unsigned v;
    char hex[3] = {s[3], s[4], 0};
    char *end;
    v = (unsigned)strtoul(hex, &end, 16);
    if (end == hex + 2) {
      out[0] = (char)v;
      return 1;
    }
  }
  for (size_t k = 0; k < n;) {
    if (k + 3 <= n && u[k] == 0xE2 && u[k + 1] == 0x96 && u[k + 2] == 0x81) {
      out[w++] = ' ';
      k += 3;
    } else {
      out[w++] = s[k++];
    }
  }
  return w;
}

/* Texts llama.cpp also stops generation at (see the header). */
static const char *const eog_texts[] = {"<|im_end|>", "<|endoftext|>", "<end_of_turn>", "<|eot_id|>", "<|eom_id|>",
                                        "<|end|>",    "<EOT>",         "<|fim_pad|>",   "<|repo_name|>", "<|file_sep|>"};

static int build_trie(heed_tokenizer *t) {
  size_t cap = 0;
  for (uint32_t i = 0; i < t->n_tokens; i++) {
    int ty = t->type[i];
    if (ty == HEED_TOKEN_USER_DEFINED || ty == HEED_TOKEN_CONTROL || ty == HEED_TOKEN_UNKNOWN)
      cap += (size_t)(t->text_off[i + 1] - t->text_off[i]);
  }
  for (int b = 0; b < 256; b++) t->trie_root[b] = -1;
  t->trie = malloc((cap ? cap : 1) * sizeof *t->trie);
  if (!t->trie) return -1;
  t->n_trie = 0;
  for (uint32_t i = 0; i < t->n_tokens; i++) {
    int ty = t->type[i];
    if (ty != HEED_TOKEN_USER_DEFINED && ty != HEED_TOKEN_CONTROL && ty != HEED_TOKEN_UNKNOWN) continue;
    size_t n;
    const uint8_t *s = (const uint8_t *)tok_text(t, (int32_t)i, &n);
    if (n == 0) continue;
    int32_t *link = &t->trie_root[s[0]];
    int32_t node = -1;
    for (size_t k = 0; k < n; k++) {
      /* find s[k] among the children at *link (root: one slot per byte) */
      int32_t c = *link;
      if (k > 0)
        while (c >= 0 && t->trie[c].byte != s[k]) c = t->trie[c].sibling;
      if (c < 0) {
        c = (int32_t)t->n_trie++;
        t->trie[c] = (tok_trie_node){.child = -1, .sibling = k > 0 ? *link : -1, .id = -1, .byte = s[k]};
        *link = c;
      }
      node = c;
      link = &t->trie[c].child;
    }
    if (t->trie[node].id < 0) t->trie[node].id = (int32_t)i; /* the lower id keeps a shared text */
  }
  return 0;
}

static int cmp_token(const void *a, const void *b) {
  heed_token x = *(const heed_token *)a, y = *(const heed_token *)b;
  return (x > y) - (x < y);
}

static int build_eog(heed_tokenizer *t) {
  for (uint32_t i = 0; i < t->n_tokens; i++) {
    int ty = t->type[i];
    if (ty != HEED_TOKEN_CONTROL && ty != HEED_TOKEN_USER_DEFINED) continue;
    size_t n;
    const char *s = tok_text(t, (int32_t)i, &n);
    for (size_t k = 0; k < HEED_ARRAY_LEN(eog_texts); k++)
      if (strlen(eog_texts[k]) == n && memcmp(eog_texts[k], s, n) == 0) t->flags[i] |= TOK_F_EOG;
  }
  heed_token ids[] = {t->eos, t->eot, t->eom};
  for (size_t k = 0; k < HEED_ARRAY_LEN(ids); k++)
    if (ids[k] >= 0) t->flags[ids[k]] |= TOK_F_EOG;
  size_t n = 0;
  for (uint32_t i = 0; i < t->n_tokens; i++) n += (t->flags[i] & TOK_F_EOG) != 0;
  t->eog = malloc((n ? n : 1) * sizeof *t->eog);
  if (!t->eog) return -1;
  t->n_eog = 0;
  for (uint32_t i = 0; i < t->n_tokens; i++)
    if (t->flags[i] & TOK_F_EOG) t->eog[t->n_eog++] = (heed_token)i;
  qsort(t->eog, t->n_eog, sizeof *t->eog, cmp_token);
  return 0;
}

static heed_status check_id(const heed_tokenizer_desc *d, const char *what, heed_token id, heed_token *dst,
                            heed_error *err) {
  if (id == HEED_TOKEN_NONE) {
    *dst = HEED_TOKEN_NONE;
    return HEED_OK;
  }
  if (id < 0 || (uint32_t)id >= d->n_tokens)
    return heed_err_set(err, HEED_E_RANGE, "tokenizer: %s token id %d is out of range; accepted: 0..%u or none", what,
                        (int)id, d->n_tokens - 1);
  *dst = id;
  return HEED_OK;
}

static const struct {
  const char *name;
  tok_pre pre;
} pre_names[] = {{"default", TOK_PRE_GPT2},  {"gpt2", TOK_PRE_GPT2},       {"gpt-2", TOK_PRE_GPT2},
                 {"qwen2", TOK_PRE_QWEN2},   {"llama-bpe", TOK_PRE_LLAMA3}, {"llama3", TOK_PRE_LLAMA3},
                 {"llama-v3", TOK_PRE_LLAMA3}};

heed_status heed_tokenizer_create(const heed_tokenizer_desc *d, heed_tokenizer **out, heed_error *err) {
  if (out) *out = NULL;
  if (!d || !out) return heed_err_set(err, HEED_E_INVALID, "tokenizer: NULL descriptor or output");
  heed_tokenizer_kind kind;
  if (d->model && strcmp(d->model, "gpt2") == 0)
    kind = HEED_TOKENIZER_BPE;
  else if (d->model && strcmp(d->model, "llama") == 0)
    kind = HEED_TOKENIZER_SPM;
  else
    return heed_err_set(err, d->model ? HEED_E_UNSUPPORTED : HEED_E_INVALID,
                        "tokenizer model '%s' is not supported; accepted: gpt2 (byte-level BPE), llama (SentencePiece BPE)",
                        d->model ? d->model : "(none)");
  tok_pre pre = TOK_PRE_GPT2;
  const char *pre_name = d->pre ? d->pre : "default";
  if (kind == HEED_TOKENIZER_BPE) {
    size_t k = 0;
    while (k < HEED_ARRAY_LEN(pre_names) && strcmp(pre_names[k].name, pre_name) != 0) k++;
    if (k == HEED_ARRAY_LEN(pre_names))
      return heed_err_set(err, HEED_E_UNSUPPORTED,
                          "tokenizer pre-tokenizer '%s' is not supported; accepted: qwen2, llama-bpe (llama3, llama-v3), "
                          "default (gpt2, gpt-2)",
                          pre_name);
    pre = pre_names[k].pre;
  }
  if (d->n_tokens == 0 || d->n_tokens > (uint32_t)INT32_MAX || !d->tokens)
    return heed_err_set(err, HEED_E_INVALID, "tokenizer: %u tokens; accepted: 1..2^31-1 with their texts", d->n_tokens);
  if (d->n_merges && !d->merges)
    return heed_err_set(err, HEED_E_INVALID, "tokenizer: %u merges without their texts", d->n_merges);
  for (uint32_t i = 0; i < d->n_tokens; i++) {
    if (!d->tokens[i]) return heed_err_set(err, HEED_E_INVALID, "tokenizer: token %u has no text", i);
    if (d->types && (d->types[i] < HEED_TOKEN_NORMAL || d->types[i] > HEED_TOKEN_BYTE))
      return heed_err_set(err, HEED_E_INVALID,
                          "tokenizer: token %u has type %d; accepted: 1 normal, 2 unknown, 3 control, 4 user-defined, "
                          "5 unused, 6 byte",
                          i, (int)d->types[i]);
    if (d->scores && isnan(d->scores[i]))
      return heed_err_set(err, HEED_E_INVALID, "tokenizer: token %u has score NaN", i);
  }

  heed_tokenizer *t = calloc(1, sizeof *t);
  if (!t) return heed_err_set(err, HEED_E_NOMEM, "tokenizer: out of memory");
  heed_status st = HEED_OK;
  t->kind = kind;
  heed_strlcpy(t->model, kind_model(kind), sizeof t->model);
  heed_strlcpy(t->pre_name, kind == HEED_TOKENIZER_BPE ? pre_name : "", sizeof t->pre_name);
  t->pre = pre;
  t->n_tokens = d->n_tokens;
  const uint32_t n = d->n_tokens;
  uint64_t total = 0;
  for (uint32_t i = 0; i < n; i++) total += str_len(d->tokens, d->token_lens, i);
  t->type = malloc(n);
  t->flags = calloc(n, 1);
  t->score = malloc((size_t)n * sizeof *t->score);
  t->text = malloc(total ? total : 1);
  t->text_off = malloc(((size_t)n + 1) * sizeof *t->text_off);
  t->piece = malloc(total ? total : 1);
  t->piece_off = malloc(((size_t)n + 1) * sizeof *t->piece_off);
  if (!t->type || !t->flags || !t->score || !t->text || !t->text_off || !t->piece || !t->piece_off ||
      map_init(&t->vocab, n) != 0) {
    st = heed_err_set(err, HEED_E_NOMEM, "tokenizer: out of memory for %u tokens", n);
    goto fail;
  }
  uint64_t at = 0;
  for (uint32_t i = 0; i < n; i++) {
    size_t l = str_len(d->tokens, d->token_lens, i);
    t->text_off[i] = at;
    memcpy(t->text + at, d->tokens[i], l);
    at += l;
    t->type[i] = (uint8_t)(d->types ? d->types[i] : HEED_TOKEN_NORMAL);
    t->score[i] = d->scores ? d->scores[i] : 0.0f;
  }
  t->text_off[n] = at;
  for (uint32_t i = 0; i < n; i++) map_add(&t->vocab, t->text, t->text_off, (int32_t)i);

  if ((st = check_id(d, "bos", d->bos, &t->bos, err)) || (st = check_id(d, "eos", d->eos, &t->eos, err)) ||
      (st = check_id(d, "eot", d->eot, &t->eot, err)) || (st = check_id(d, "eom", d->eom, &t->eom, err)) ||
      (st = check_id(d, "unknown", d->unk, &t->unk, err)))
    goto fail;
  t->pad = d->pad >= 0 && (uint32_t)d->pad < n ? d->pad : HEED_TOKEN_NONE; /* never used here: a bad one is dropped */
  t->add_bos = d->add_bos >= 0 ? d->add_bos != 0 : (kind == HEED_TOKENIZER_SPM || pre == TOK_PRE_LLAMA3);
  t->add_eos = d->add_eos >= 0 ? d->add_eos != 0 : 0;
  t->add_space_prefix = d->add_space_prefix >= 0 ? d->add_space_prefix != 0 : kind == HEED_TOKENIZER_SPM;

  /* pieces */
  at = 0;
  for (uint32_t i = 0; i < n; i++) {
    t->piece_off[i] = at;
    size_t l = make_piece(t, (int32_t)i, t->piece + at);
    at += l;
    if (l > t->max_piece) t->max_piece = l;
    int ty = t->type[i];
    if (ty == HEED_TOKEN_CONTROL || ty == HEED_TOKEN_UNKNOWN || ty == HEED_TOKEN_UNUSED) t->flags[i] |= TOK_F_SPECIAL_PIECE;
  }
  t->piece_off[n] = at;

  for (int b = 0; b < 256; b++) t->byte_tok[b] = -1;
  if (kind == HEED_TOKENIZER_SPM) {
    int missing = -1;
    for (int b = 0; b < 256; b++) {
      char name[8];
      snprintf(name, sizeof name, "<0x%02X>", b);
      t->byte_tok[b] = tok_map_find(&t->vocab, t->text, t->text_off, name, 6);
      if (t->byte_tok[b] < 0 && missing < 0) missing = b;
    }
    if (missing >= 0 && t->unk < 0) {
      st = heed_err_set(err, HEED_E_INVALID,
                        "tokenizer: llama vocabulary has no token <0x%02X> (byte fallback) and no unknown token: "
                        "text with characters outside the vocabulary could not be encoded",
                        missing);
      goto fail;
    }
  } else if ((st = tok_bpe_build(t, d, err)) != HEED_OK) {
    goto fail;
  }
  if (build_trie(t) != 0 || build_eog(t) != 0) {
    st = heed_err_set(err, HEED_E_NOMEM, "tokenizer: out of memory");
    goto fail;
  }
  *out = t;
  return HEED_OK;
fail:
  heed_tokenizer_free(t);
  return st;
}

/* ---------- queries ---------- */

void heed_tokenizer_get_info(const heed_tokenizer *t, heed_tokenizer_info *info) {
  if (!info) return;
  memset(info, 0, sizeof *info);
  if (!t) return;
  info->kind = t->kind;
  info->model = t->model;
  info->pre = t->pre_name;
  info->n_tokens = t->n_tokens;
  info->n_merges = t->n_merges;
  info->bos = t->bos;
  info->eos = t->eos;
  info->eot = t->eot;
  info->eom = t->eom;
  info->unk = t->unk;
  info->pad = t->pad;
  info->add_bos = t->add_bos;
  info->add_eos = t->add_eos;
  info->add_space_prefix = t->add_space_prefix;
  info->max_piece = t->max_piece;
}

static int in_range(const heed_tokenizer *t, heed_token id) { return t && id >= 0 && (uint32_t)id < t->n_tokens; }

int heed_tokenizer_token_type(const heed_tokenizer *t, heed_token id) { return in_range(t, id) ? t->type[id] : 0; }

heed_status heed_tokenizer_token_text(const heed_tokenizer *t, heed_token id, const char **text, size_t *len) {
  if (!in_range(t, id) || !text || !len) return HEED_E_RANGE;
  *text = tok_text(t, id, len);
  return HEED_OK;
}

heed_token heed_tokenizer_find(const heed_tokenizer *t, const char *text, size_t len) {
  if (!t || (!text && len)) return HEED_TOKEN_NONE;
  return tok_map_find(&t->vocab, t->text, t->text_off, text ? text : "", len);
}

int heed_tokenizer_is_eog(const heed_tokenizer *t, heed_token id) {
  return in_range(t, id) && (t->flags[id] & TOK_F_EOG) != 0;
}

size_t heed_tokenizer_eog_ids(const heed_tokenizer *t, const heed_token **ids) {
  if (!t) {
    if (ids) *ids = NULL;
    return 0;
  }
  if (ids) *ids = t->eog;
  return t->n_eog;
}

/* ---------- encoding ---------- */

void heed_tokens_free(heed_tokens *l) {
  if (!l) return;
  free(l->ids);
  memset(l, 0, sizeof *l);
}

int tok_run_push(tok_run *r, heed_token id) {
  heed_tokens *o = r->out;
  if (o->n == o->cap) {
    size_t cap = o->cap ? o->cap * 2 : 256;
    heed_token *p = realloc(o->ids, cap * sizeof *p);
    if (!p) {
      r->st = HEED_E_NOMEM;
      return -1;
    }
    o->ids = p;
    o->cap = cap;
  }
  o->ids[o->n++] = id;
  return 0;
}

void tok_run_free(tok_run *r) {
  free(r->sym);
  free(r->heap);
  free(r->esc);
  free(r->cache);
  free(r->arena);
  if (r->md) pcre2_match_data_free(r->md);
  if (r->mctx) pcre2_match_context_free(r->mctx);
  if (r->jit_stack) pcre2_jit_stack_free(r->jit_stack);
}

static void fragment(tok_run *r, size_t off, size_t len) {
  if (len == 0 || r->st != HEED_OK) return;
  if (r->t->kind == HEED_TOKENIZER_BPE)
    tok_bpe_fragment(r, off, len);
  else
    tok_spm_fragment(r, off, len);
}

static heed_status encode_impl(const heed_tokenizer *t, const char *text, size_t len, const heed_text_span *spans,
                               size_t n_spans, int has_spans, unsigned flags, heed_tokens *out, heed_error *err) {
  if (!t || !out) return heed_err_set(err, HEED_E_INVALID, "tokenizer: NULL tokenizer or output");
  if (!text && len) return heed_err_set(err, HEED_E_INVALID, "tokenizer: NULL text of %zu bytes", len);
  if (len > ((size_t)1 << 30)) /* offsets are 32-bit, and llama's escaped text is up to 3 times as long */
    return heed_err_set(err, HEED_E_RANGE, "tokenizer: text of %zu bytes; accepted: up to 1 GiB", len);
  if (!text) text = "";
  /* trusted_end[k]: where the run of trusted spans from span k ends (k itself when untrusted) */
  size_t *trusted_end = NULL;
  if (has_spans) {
    if (n_spans && !spans) return heed_err_set(err, HEED_E_INVALID, "tokenizer: %zu spans but NULL spans", n_spans);
    size_t at = 0;
    for (size_t k = 0; k < n_spans; k++) {
      if (spans[k].offset != at || spans[k].length > len - at)
        return heed_err_set(err, HEED_E_INVALID,
                            "tokenizer: span %zu is [%zu, +%zu) but must start at %zu and end by %zu: spans cover [0, %zu) in order",
                            k, spans[k].offset, spans[k].length, at, len, len);
      at += spans[k].length;
    }
    if (at != len)
      return heed_err_set(err, HEED_E_INVALID, "tokenizer: spans cover [0, %zu) of a text of %zu bytes", at, len);
    trusted_end = malloc((n_spans ? n_spans : 1) * sizeof *trusted_end);
    if (!trusted_end) return heed_err_set(err, HEED_E_NOMEM, "tokenizer: out of memory");
    size_t end = 0;
    for (size_t k = n_spans; k-- > 0;) {
      if (spans[k].untrusted)
        end = spans[k].offset;
      else if (k + 1 == n_spans || spans[k + 1].untrusted)
        end = spans[k].offset + spans[k].length;
      trusted_end[k] = spans[k].untrusted ? spans[k].offset : end;
    }
  }
  const int parse_special = (flags & HEED_TOKENIZE_PARSE_SPECIAL) != 0;
  const size_t n0 = out->n;
  tok_run r;
  memset(&r, 0, sizeof r);
  r.t = t;
  r.out = out;
  r.text = text;
  r.prev_special = 1;
  if ((flags & HEED_TOKENIZE_ADD_SPECIAL) && t->add_bos && t->bos >= 0) tok_run_push(&r, t->bos);

  const uint8_t *s = (const uint8_t *)text;
  size_t frag = 0, sk = 0;
  for (size_t i = 0; i < len && r.st == HEED_OK;) {
    int32_t node = t->trie_root[s[i]];
    if (node < 0) {
      i++;
      continue;
    }
    size_t tend = len; /* control tokens may end by here */
    if (!parse_special) {
      tend = 0;
    } else if (has_spans) {
      while (sk < n_spans && spans[sk].offset + spans[sk].length <= i) sk++;
      tend = sk < n_spans ? trusted_end[sk] : 0;
    }
    int32_t best = -1;
    size_t best_len = 0;
    for (size_t depth = 1;; depth++) {
      const tok_trie_node *nd = &t->trie[node];
      if (nd->id >= 0 && (t->type[nd->id] == HEED_TOKEN_USER_DEFINED || i + depth <= tend)) {
        best = nd->id;
        best_len = depth;
      }
      if (i + depth >= len) break;
      int32_t c = nd->child;
      while (c >= 0 && t->trie[c].byte != s[i + depth]) c = t->trie[c].sibling;
      if (c < 0) break;
      node = c;
    }
    if (best < 0) {
      i++;
      continue;
    }
    fragment(&r, frag, i - frag);
    tok_run_push(&r, best);
    r.prev_special = 1;
    i += best_len;
    frag = i;
  }
  fragment(&r, frag, len - frag);
  if ((flags & HEED_TOKENIZE_ADD_SPECIAL) && t->add_eos && t->eos >= 0) tok_run_push(&r, t->eos);
  heed_status st = r.st;
  int pcre_rc = r.pcre_rc;
  tok_run_free(&r);
  free(trusted_end);
  if (st != HEED_OK) {
    out->n = n0;
    if (st == HEED_E_NOMEM) return heed_err_set(err, st, "tokenizer: out of memory encoding %zu bytes", len);
    PCRE2_UCHAR msg[160];
    pcre2_get_error_message(pcre_rc, msg, sizeof msg);
    return heed_err_set(err, st, "tokenizer: the pre-tokenizer regex failed: %s (PCRE2 %d)", (const char *)msg, pcre_rc);
  }
  return HEED_OK;
}

heed_status heed_tokenizer_encode(const heed_tokenizer *t, const char *text, size_t len, unsigned flags,
                                  heed_tokens *out, heed_error *err) {
  return encode_impl(t, text, len, NULL, 0, 0, flags, out, err);
}

heed_status heed_tokenizer_encode_spans(const heed_tokenizer *t, const char *text, size_t len,
                                        const heed_text_span *spans, size_t n_spans, unsigned flags,
                                        heed_tokens *out, heed_error *err) {
  return encode_impl(t, text, len, spans, n_spans, 1, flags, out, err);
}

heed_status heed_tokenizer_encode_to(const heed_tokenizer *t, const char *text, size_t len, unsigned flags,
                                     heed_token *ids, size_t cap, size_t *n_ids, heed_error *err) {
  if (n_ids) *n_ids = 0;
  if (!n_ids || (!ids && cap)) return heed_err_set(err, HEED_E_INVALID, "tokenizer: NULL ids or count");
  heed_tokens l = {0};
  heed_status st = heed_tokenizer_encode(t, text, len, flags, &l, err);
  if (st != HEED_OK) return st;
  *n_ids = l.n;
  if (l.n > cap) {
    heed_tokens_free(&l);
    return heed_err_set(err, HEED_E_TOO_SMALL, "tokenizer: %zu ids do not fit in %zu", *n_ids, cap);
  }
  if (l.n) memcpy(ids, l.ids, l.n * sizeof *ids);
  heed_tokens_free(&l);
  return HEED_OK;
}

/* ---------- decoding ---------- */

int tok_utf8_incomplete(const uint8_t *s, size_t n) {
  uint8_t c = s[0], lo = 0x80, hi = 0xBF;
  size_t need;
  if (c >= 0xC2 && c <= 0xDF) {
    need = 2;
  } else if (c >= 0xE0 && c <= 0xEF) {
    need = 3;
    if (c == 0xE0) lo = 0xA0;
    if (c == 0xED) hi = 0x9F;
  } else if (c >= 0xF0 && c <= 0xF4) {
    need = 4;
    if (c == 0xF0) lo = 0x90;
    if (c == 0xF4) hi = 0x8F;
  } else {
    return 0;
  }
  if (n >= need) return 0;
  for (size_t i = 1; i < n; i++)
    if (i == 1 ? (s[i] < lo || s[i] > hi) : (s[i] & 0xC0) != 0x80) return 0;
  return 1;
}

static const char *piece_of(const heed_tokenizer *t, heed_token id, unsigned flags, size_t *len) {
  if ((t->flags[id] & TOK_F_SPECIAL_PIECE) && !(flags & HEED_DETOK_SPECIAL)) {
    *len = 0;
    return "";
  }
  *len = (size_t)(t->piece_off[id + 1] - t->piece_off[id]);
  return t->piece + t->piece_off[id];
}

heed_status heed_tokenizer_piece(const heed_tokenizer *t, heed_token id, unsigned flags, const char **bytes,
                                 size_t *len) {
  if (!in_range(t, id) || !bytes || !len) return HEED_E_RANGE;
  *bytes = piece_of(t, id, flags, len);
  return HEED_OK;
}

static const char replacement[3] = {(char)0xEF, (char)0xBF, (char)0xBD};

/* Writes the bytes of a then b (one text, split in two) to out (NULL: only
 * counts), every complete character as it is and every byte that starts
 * none raw or as U+FFFD. Unless final, a trailing incomplete sequence is not
 * written: *used says how much was. Returns the bytes written. */
static size_t emit_utf8(const uint8_t *a, size_t na, const uint8_t *b, size_t nb, int final, int replace, char *out,
                        size_t *used) {
  const size_t n = na + nb;
  size_t i = 0, w = 0;
  while (i < n) {
    uint8_t tmp[4];
    const uint8_t *p;
    size_t avail;
    if (i >= na) {
      p = b + (i - na);
      avail = n - i;
    } else { /* across the seam: gather what a character there could span */
      avail = n - i < 4 ? n - i : 4;
      for (size_t k = 0; k < avail; k++) tmp[k] = i + k < na ? a[i + k] : b[i + k - na];
      p = tmp;
    }
    if (p[0] < 0x80) {
      if (out) out[w] = (char)p[0];
      w++;
      i++;
      continue;
    }
    size_t l = tok_utf8_len(p, avail);
    if (l) {
      if (out) memcpy(out + w, p, l);
      w += l;
      i += l;
      continue;
    }
    if (!final && n - i <= 3 && tok_utf8_incomplete(p, n - i)) break;
    if (replace) {
      if (out) memcpy(out + w, replacement, 3);
      w += 3;
    } else {
      if (out) out[w] = (char)p[0];
      w++;
    }
    i++;
  }
  *used = i;
  return w;
}

heed_status heed_tokenizer_decode(const heed_tokenizer *t, const heed_token *ids, size_t n, unsigned flags, char *buf,
                                  size_t cap, size_t *len, heed_error *err) {
  if (len) *len = 0;
  if (!t || !len || (!ids && n) || (!buf && cap))
    return heed_err_set(err, HEED_E_INVALID, "tokenizer: NULL tokenizer, ids, buffer or length");
  size_t total = 0;
  for (size_t i = 0; i < n; i++) {
    if (!in_range(t, ids[i]))
      return heed_err_set(err, HEED_E_RANGE, "tokenizer: ids[%zu] = %d is out of range; accepted: 0..%u", i, (int)ids[i],
                          t->n_tokens - 1);
    size_t l;
    piece_of(t, ids[i], flags, &l);
    total += l;
  }
  char *raw = buf;
  int own = 0;
  if (flags & HEED_DETOK_REPLACE) { /* the raw text first, then one pass over it */
    raw = malloc(total ? total : 1);
    if (!raw) return heed_err_set(err, HEED_E_NOMEM, "tokenizer: out of memory decoding %zu ids", n);
    own = 1;
  } else if (total > cap) {
    *len = total;
    return heed_err_set(err, HEED_E_TOO_SMALL, "tokenizer: the text is %zu bytes; the buffer holds %zu", total, cap);
  }
  size_t w = 0;
  for (size_t i = 0; i < n; i++) {
    size_t l;
    const char *p = piece_of(t, ids[i], flags, &l);
    if (l) memcpy(raw + w, p, l);
    w += l;
  }
  if (own) {
    size_t used;
    size_t need = emit_utf8((const uint8_t *)raw, w, NULL, 0, 1, 1, NULL, &used);
    if (need > cap) {
      free(raw);
      *len = need;
      return heed_err_set(err, HEED_E_TOO_SMALL, "tokenizer: the text is %zu bytes; the buffer holds %zu", need, cap);
    }
    w = emit_utf8((const uint8_t *)raw, w, NULL, 0, 1, 1, buf, &used);
    free(raw);
  }
  *len = w;
  if (w < cap) buf[w] = '\0';
  return HEED_OK;
}

size_t heed_tokenizer_detok_bound(const heed_tokenizer *t) { return t ? 3 * (t->max_piece + 3) : 0; }

heed_status heed_tokenizer_detok_push(const heed_tokenizer *t, heed_detok_state *s, heed_token id, unsigned flags,
                                      char *buf, size_t cap, size_t *len) {
  if (len) *len = 0;
  if (!in_range(t, id)) return HEED_E_RANGE;
  if (!s || !len || (!buf && cap) || s->n_pending > 3) return HEED_E_INVALID;
  size_t pl, used;
  const uint8_t *p = (const uint8_t *)piece_of(t, id, flags, &pl);
  const int replace = (flags & HEED_DETOK_REPLACE) != 0;
  size_t need = emit_utf8(s->pending, s->n_pending, p, pl, 0, replace, NULL, &used);
  if (need > cap) {
    *len = need;
    return HEED_E_TOO_SMALL;
  }
  size_t w = emit_utf8(s->pending, s->n_pending, p, pl, 0, replace, buf, &used);
  /* keep what was held back: at most 3 bytes, from the end of pending + piece */
  const size_t n = s->n_pending + pl;
  uint8_t keep[3];
  size_t nk = n - used;
  for (size_t k = 0; k < nk; k++) {
    size_t j = used + k;
    keep[k] = j < s->n_pending ? s->pending[j] : p[j - s->n_pending];
  }
  memcpy(s->pending, keep, nk);
  s->n_pending = (uint8_t)nk;
  *len = w;
  return HEED_OK;
}

heed_status heed_tokenizer_detok_flush(heed_detok_state *s, unsigned flags, char *buf, size_t cap, size_t *len) {
  if (len) *len = 0;
  if (!s || !len || (!buf && cap) || s->n_pending > 3) return HEED_E_INVALID;
  size_t used;
  const int replace = (flags & HEED_DETOK_REPLACE) != 0;
  size_t need = emit_utf8(s->pending, s->n_pending, NULL, 0, 1, replace, NULL, &used);
  if (need > cap) {
    *len = need;
    return HEED_E_TOO_SMALL;
  }
  *len = emit_utf8(s->pending, s->n_pending, NULL, 0, 1, replace, buf, &used);
  s->n_pending = 0;
  return HEED_OK;
}
