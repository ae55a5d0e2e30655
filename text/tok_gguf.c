/* text/tok_gguf.c - a tokenizer from a GGUF's tokenizer.ggml.* keys: reads
 * them into a heed_tokenizer_desc (texts borrowed from the mapping) and
 * hands it to heed_tokenizer_create. */
#include <stdlib.h>
#include <string.h>

#include "heed/gguf.h"
#include "runtime/internal.h"
#include "text/tok_internal.h"

#define KEY "tokenizer.ggml."

/* A string key into buf (NUL-terminated); absent: *present = 0. */
static heed_status get_name(const heed_gguf *g, const char *key, char *buf, size_t cap, int *present, heed_error *err) {
  heed_gguf_value v;
  *present = 0;
  if (heed_gguf_get(g, key, &v) != HEED_OK) return HEED_OK;
  if (v.type != HEED_GGUF_STRING)
    return heed_err_set(err, HEED_E_INVALID, "tokenizer: key '%s' is %s; accepted: str", key, heed_gguf_vtype_name(v.type));
  if (v.v.str.len >= cap || memchr(v.v.str.ptr, 0, v.v.str.len))
    return heed_err_set(err, HEED_E_UNSUPPORTED, "tokenizer: key '%s' is '%.*s', not a name heed knows", key,
                        (int)(v.v.str.len > 64 ? 64 : v.v.str.len), v.v.str.ptr);
  memcpy(buf, v.v.str.ptr, v.v.str.len);
  buf[v.v.str.len] = 0;
  *present = 1;
  return HEED_OK;
}

/* An array key of n elements of type want; absent: *arr.type stays 0 and *found = 0. */
static heed_status get_array(const heed_gguf *g, const char *key, heed_gguf_vtype want, heed_gguf_value *arr,
                             int *found, heed_error *err) {
  *found = 0;
  if (heed_gguf_get(g, key, arr) != HEED_OK) return HEED_OK;
  if (arr->type != HEED_GGUF_ARRAY || arr->v.arr.elem_type != want)
    return heed_err_set(err, HEED_E_INVALID, "tokenizer: key '%s' is %s%s%s; accepted: an array of %s", key,
                        heed_gguf_vtype_name(arr->type), arr->type == HEED_GGUF_ARRAY ? " of " : "",
                        arr->type == HEED_GGUF_ARRAY ? heed_gguf_vtype_name(arr->v.arr.elem_type) : "",
                        heed_gguf_vtype_name(want));
  *found = 1;
  return HEED_OK;
}

static heed_status get_id(const heed_gguf *g, const char *key, heed_token *out, heed_error *err) {
  uint64_t v;
  heed_status st = heed_gguf_get_u64(g, key, &v);
  if (st == HEED_E_NOT_FOUND) return HEED_OK;
  if (st != HEED_OK)
    return heed_err_set(err, HEED_E_INVALID, "tokenizer: key '%s': %s", key, heed_gguf_last_error(g));
  if (v > (uint64_t)INT32_MAX)
    return heed_err_set(err, HEED_E_RANGE, "tokenizer: key '%s' is %llu; accepted: a token id", key,
                        (unsigned long long)v);
  *out = (heed_token)v;
  return HEED_OK;
}

static heed_status get_flag(const heed_gguf *g, const char *key, int *out, heed_error *err) {
  int v;
  heed_status st = heed_gguf_get_bool(g, key, &v);
  if (st == HEED_E_NOT_FOUND) return HEED_OK;
  if (st != HEED_OK) return heed_err_set(err, HEED_E_INVALID, "tokenizer: key '%s': %s", key, heed_gguf_last_error(g));
  *out = v != 0;
  return HEED_OK;
}

/* The n strings of arr: pointers into the mapping and lengths (freed by the caller). */
static heed_status read_strings(const heed_gguf *g, const char *key, const heed_gguf_value *arr, const char ***ptrs,
                                uint32_t **lens, heed_error *err) {
  uint64_t n = arr->v.arr.n;
  *ptrs = malloc((n ? n : 1) * sizeof **ptrs);
  *lens = malloc((n ? n : 1) * sizeof **lens);
  if (!*ptrs || !*lens) return heed_err_set(err, HEED_E_NOMEM, "tokenizer: out of memory for '%s'", key);
  for (uint64_t i = 0; i < n; i++) {
    heed_gguf_value v;
    if (heed_gguf_array_get(g, arr, i, &v) != HEED_OK || v.type != HEED_GGUF_STRING)
      return heed_err_set(err, HEED_E_INVALID, "tokenizer: '%s'[%llu] cannot be read", key, (unsigned long long)i);
    if (v.v.str.len > UINT32_MAX / 2)
      return heed_err_set(err, HEED_E_RANGE, "tokenizer: '%s'[%llu] is %llu bytes long", key, (unsigned long long)i,
                          (unsigned long long)v.v.str.len);
    (*ptrs)[i] = v.v.str.ptr ? v.v.str.ptr : "";
    (*lens)[i] = (uint32_t)v.v.str.len;
  }
  return HEED_OK;
}

heed_status heed_tokenizer_from_gguf(const heed_gguf *g, heed_tokenizer **out, heed_error *err) {
  if (out) *out = NULL;
  if (!g || !out) return heed_err_set(err, HEED_E_INVALID, "tokenizer: NULL gguf or output");
  heed_tokenizer_desc d;
  heed_tokenizer_desc_init(&d);
  char model[64], pre[64];
  int has_model, has_pre, found;
  heed_status st;
  if ((st = get_name(g, KEY "model", model, sizeof model, &has_model, err))) return st;
  if (!has_model) return heed_err_set(err, HEED_E_NOT_FOUND, "tokenizer: the model has no key '" KEY "model'");
  if (strcmp(model, "gpt2") != 0 && strcmp(model, "llama") != 0) /* before reading a vocabulary heed cannot use */
    return heed_err_set(err, HEED_E_UNSUPPORTED,
                        "tokenizer model '%s' (" KEY "model) is not supported; accepted: gpt2, llama", model);
  if ((st = get_name(g, KEY "pre", pre, sizeof pre, &has_pre, err))) return st;
  d.model = model;
  d.pre = has_pre ? pre : NULL; /* absent: "default", as llama.cpp */

  heed_gguf_value toks, scores, types, merges;
  int has_scores, has_types, has_merges;
  if ((st = get_array(g, KEY "tokens", HEED_GGUF_STRING, &toks, &found, err))) return st;
  if (!found) return heed_err_set(err, HEED_E_NOT_FOUND, "tokenizer: the model has no key '" KEY "tokens'");
  if (toks.v.arr.n == 0 || toks.v.arr.n > (uint64_t)INT32_MAX)
    return heed_err_set(err, HEED_E_INVALID, "tokenizer: '" KEY "tokens' has %llu entries; accepted: 1..2^31-1",
                        (unsigned long long)toks.v.arr.n);
  const uint64_t n = toks.v.arr.n;
  if ((st = get_array(g, KEY "scores", HEED_GGUF_FLOAT32, &scores, &has_scores, err)) ||
      (st = get_array(g, KEY "token_type", HEED_GGUF_INT32, &types, &has_types, err)) ||
      (st = get_array(g, KEY "merges", HEED_GGUF_STRING, &merges, &has_merges, err)))
    return st;
  if (has_scores && scores.v.arr.n != n)
    return heed_err_set(err, HEED_E_INVALID, "tokenizer: '" KEY "scores' has %llu entries for %llu tokens",
                        (unsigned long long)scores.v.arr.n, (unsigned long long)n);
  if (has_types && types.v.arr.n != n)
    return heed_err_set(err, HEED_E_INVALID, "tokenizer: '" KEY "token_type' has %llu entries for %llu tokens",
                        (unsigned long long)types.v.arr.n, (unsigned long long)n);
  if (strcmp(model, "gpt2") == 0 && !has_merges)
    return heed_err_set(err, HEED_E_NOT_FOUND, "tokenizer: a gpt2 tokenizer without '" KEY "merges'");
  if (has_merges && merges.v.arr.n > UINT32_MAX)
    return heed_err_set(err, HEED_E_INVALID, "tokenizer: '" KEY "merges' has %llu entries",
                        (unsigned long long)merges.v.arr.n);
  if ((st = get_id(g, KEY "bos_token_id", &d.bos, err)) || (st = get_id(g, KEY "eos_token_id", &d.eos, err)) ||
      (st = get_id(g, KEY "eot_token_id", &d.eot, err)) || (st = get_id(g, KEY "eom_token_id", &d.eom, err)) ||
      (st = get_id(g, KEY "unknown_token_id", &d.unk, err)) || (st = get_id(g, KEY "padding_token_id", &d.pad, err)) ||
      (st = get_flag(g, KEY "add_bos_token", &d.add_bos, err)) ||
      (st = get_flag(g, KEY "add_eos_token", &d.add_eos, err)) ||
      (st = get_flag(g, KEY "add_space_prefix", &d.add_space_prefix, err)))
    return st;

  const char **tok_ptr = NULL, **merge_ptr = NULL;
  uint32_t *tok_len = NULL, *merge_len = NULL;
  float *sc = NULL;
  int32_t *ty = NULL;
  if ((st = read_strings(g, KEY "tokens", &toks, &tok_ptr, &tok_len, err))) goto done;
  if (has_merges && (st = read_strings(g, KEY "merges", &merges, &merge_ptr, &merge_len, err))) goto done;
  if (has_scores || has_types) { /* the element bytes may be unaligned: copied */
    sc = has_scores ? malloc(n * sizeof *sc) : NULL;
    ty = has_types ? malloc(n * sizeof *ty) : NULL;
    const void *ps = has_scores ? heed_gguf_array_data(g, &scores) : NULL;
    const void *pt = has_types ? heed_gguf_array_data(g, &types) : NULL;
    if ((has_scores && !sc) || (has_types && !ty)) {
      st = heed_err_set(err, HEED_E_NOMEM, "tokenizer: out of memory");
      goto done;
    }
    if ((has_scores && !ps) || (has_types && !pt)) {
      st = heed_err_set(err, HEED_E_INVALID, "tokenizer: '" KEY "%s' cannot be read", has_scores && !ps ? "scores" : "token_type");
      goto done;
    }
    for (uint64_t i = 0; i < n; i++) { /* little-endian in the file */
      const uint8_t *b;
      uint32_t u;
      if (sc) {
        b = (const uint8_t *)ps + 4 * i;
        u = (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 | (uint32_t)b[3] << 24;
        memcpy(&sc[i], &u, 4);
      }
      if (ty) {
        b = (const uint8_t *)pt + 4 * i;
        u = (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 | (uint32_t)b[3] << 24;
        memcpy(&ty[i], &u, 4);
      }
    }
  }
  d.n_tokens = (uint32_t)n;
  d.tokens = tok_ptr;
  d.token_lens = tok_len;
  d.scores = sc;
  d.types = ty;
  d.n_merges = has_merges ? (uint32_t)merges.v.arr.n : 0;
  d.merges = merge_ptr;
  d.merge_lens = merge_len;
  st = heed_tokenizer_create(&d, out, err);
done:
  free(tok_ptr);
  free(tok_len);
  free(merge_ptr);
  free(merge_len);
  free(sc);
  free(ty);
  return st;
}
