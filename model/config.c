/* model/config.c - heed_model_config from GGUF metadata (keys as llama.cpp's converters write them). */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "heed/attention.h"
#include "heed/model.h"
#include "runtime/internal.h"

const char *heed_arch_name(heed_arch a) {
  switch (a) {
#define HEED_X_(N, s)    \
  case HEED_ARCH_##N: \
    return s;
    HEED_ARCH_LIST(HEED_X_)
#undef HEED_X_
  default:
    return NULL;
  }
}

heed_status heed_arch_parse(const char *name, heed_arch *out) {
#define HEED_X_(N, s)                     \
  if (name && strcmp(name, s) == 0) {     \
    *out = HEED_ARCH_##N;                 \
    return HEED_OK;                       \
  }
  HEED_ARCH_LIST(HEED_X_)
#undef HEED_X_
  return HEED_E_UNSUPPORTED;
}

/* The list for messages: "llama qwen2 qwen3 gemma3". */
static const char *known_archs(void) {
  return &
#define HEED_X_(N, s) " " s
      HEED_ARCH_LIST(HEED_X_)
#undef HEED_X_
      [1];
}

typedef struct cfg_rd {
  const heed_gguf *g;
  const char *arch;   /* key prefix */
  heed_error *err;
} cfg_rd;

/* "<arch>.<suffix>" */
static void arch_key(const cfg_rd *c, const char *suffix, char *key, size_t cap) { snprintf(key, cap, "%s.%s", c->arch, suffix); }

/* An integer key in lo..hi. required: absent is an error, else *out keeps its default and 0 is returned. */
static heed_status get_uint(const cfg_rd *c, const char *suffix, int required, uint64_t lo, uint64_t hi, uint32_t *out) {
  char key[160];
  arch_key(c, suffix, key, sizeof key);
  uint64_t v;
  heed_status st = heed_gguf_get_u64(c->g, key, &v);
  if (st == HEED_E_NOT_FOUND) {
    if (!required) return HEED_OK;
    return heed_err_set(c->err, st, "%s: key '%s' is absent; %s models need it", heed_gguf_file_path(c->g, 0), key, c->arch);
  }
  if (st) return heed_err_set(c->err, st, "%s", heed_gguf_last_error(c->g));
  if (v < lo || v > hi)
    return heed_err_set(c->err, HEED_E_INVALID, "%s: key '%s' is %llu; accepted: %llu..%llu", heed_gguf_file_path(c->g, 0), key,
                        (unsigned long long)v, (unsigned long long)lo, (unsigned long long)hi);
  *out = (uint32_t)v;
  return HEED_OK;
}

/* A positive, finite number. */
static heed_status get_pos(const cfg_rd *c, const char *suffix, int required, double *out) {
  char key[160];
  arch_key(c, suffix, key, sizeof key);
  double v;
  heed_status st = heed_gguf_get_f64(c->g, key, &v);
  if (st == HEED_E_NOT_FOUND) {
    if (!required) return HEED_OK;
    return heed_err_set(c->err, st, "%s: key '%s' is absent; %s models need it", heed_gguf_file_path(c->g, 0), key, c->arch);
  }
  if (st) return heed_err_set(c->err, st, "%s", heed_gguf_last_error(c->g));
  if (!(v > 0) || !isfinite(v))
    return heed_err_set(c->err, HEED_E_INVALID, "%s: key '%s' is %g; accepted: a finite number > 0", heed_gguf_file_path(c->g, 0),
                        key, v);
  *out = v;
  return HEED_OK;
}

heed_status heed_model_config_read(const heed_gguf *g, heed_model_config *cfg, heed_error *err) {
  if (!g || !cfg) return heed_err_set(err, HEED_E_INVALID, "heed_model_config_read: g or cfg is NULL");
  memset(cfg, 0, sizeof *cfg);
  const char *path = heed_gguf_file_path(g, 0);
  heed_gguf_str a;
  heed_status st = heed_gguf_get_str(g, "general.architecture", &a);
  if (st == HEED_E_NOT_FOUND)
    return heed_err_set(err, st, "%s: key 'general.architecture' is absent; it names the model's architecture", path);
  if (st) return heed_err_set(err, st, "%s", heed_gguf_last_error(g));
  char arch[64];
  if (a.len >= sizeof arch || memchr(a.ptr, 0, (size_t)a.len)) {
    return heed_err_set(err, HEED_E_UNSUPPORTED, "%s: general.architecture '%.*s%s' is not one heed runs; known: %s", path,
                        (int)(a.len < 48 ? a.len : 48), a.ptr, a.len < 48 ? "" : "...", known_archs());
  }
  memcpy(arch, a.ptr, (size_t)a.len);
  arch[a.len] = '\0';
  if (heed_arch_parse(arch, &cfg->arch) != HEED_OK)
    return heed_err_set(err, HEED_E_UNSUPPORTED, "%s: general.architecture '%s' is not one heed runs; known: %s", path, arch,
                        known_archs());
  cfg_rd c = {g, arch, err};
  const uint64_t U = UINT32_MAX;
  if ((st = get_uint(&c, "block_count", 1, 1, 65536, &cfg->n_layer)) ||
      (st = get_uint(&c, "embedding_length", 1, 1, U, &cfg->n_embd)) ||
      (st = get_uint(&c, "feed_forward_length", 1, 1, U, &cfg->n_ff)) ||
      (st = get_uint(&c, "attention.head_count", 1, 1, U, &cfg->n_head)) ||
      (st = get_uint(&c, "context_length", 1, 1, U, &cfg->n_ctx_train)))
    return st;
  cfg->n_head_kv = cfg->n_head; /* llama.cpp: no key, no GQA */
  if ((st = get_uint(&c, "attention.head_count_kv", 0, 1, cfg->n_head, &cfg->n_head_kv))) return st;
  if (cfg->n_head % cfg->n_head_kv)
    return heed_err_set(err, HEED_E_INVALID, "%s: %s.attention.head_count %u is not a multiple of head_count_kv %u", path, arch,
                        cfg->n_head, cfg->n_head_kv);
  cfg->head_dim_k = cfg->head_dim_v = cfg->n_embd / cfg->n_head;
  if ((st = get_uint(&c, "attention.key_length", 0, 1, U, &cfg->head_dim_k)) ||
      (st = get_uint(&c, "attention.value_length", 0, 1, U, &cfg->head_dim_v)))
    return st;
  if (!cfg->head_dim_k || !cfg->head_dim_v)
    return heed_err_set(err, HEED_E_INVALID, "%s: %s.embedding_length %u over %u heads leaves no head dim, and "
                        "attention.key_length/value_length are absent", path, arch, cfg->n_embd, cfg->n_head);
  cfg->n_rot = cfg->head_dim_k;
  if ((st = get_uint(&c, "rope.dimension_count", 0, 1, cfg->head_dim_k, &cfg->n_rot))) return st;
  cfg->rope_freq_base = 10000.0; /* llama.cpp's default when the key is absent */
  if ((st = get_pos(&c, "rope.freq_base", 0, &cfg->rope_freq_base)) ||
      (st = get_pos(&c, "attention.layer_norm_rms_epsilon", 1, &cfg->rms_eps)))
    return st;
  /* Gemma 3's local layers rotate with base 10000 whatever the global base
   * (llama.cpp sets it for gemma3; newer files may carry the key). */
  cfg->rope_freq_base_swa = cfg->arch == HEED_ARCH_GEMMA3 ? 10000.0 : cfg->rope_freq_base;
  if ((st = get_pos(&c, "rope.freq_base_swa", 0, &cfg->rope_freq_base_swa))) return st;
  if (cfg->arch == HEED_ARCH_GEMMA3) {
    /* five local layers, then a global one; no window, no local layers */
    if ((st = get_uint(&c, "attention.sliding_window", 0, 0, U, &cfg->sliding_window))) return st;
    cfg->swa_pattern = cfg->sliding_window ? 6 : 0;
  } else if (cfg->arch == HEED_ARCH_LLAMA) {
    /* Mistral-style: every layer sees the window, at the one RoPE base */
    if ((st = get_uint(&c, "attention.sliding_window", 0, 0, U, &cfg->sliding_window))) return st;
  }
  heed_gguf_value tok;
  st = heed_gguf_get(g, "tokenizer.ggml.tokens", &tok);
  if (st == HEED_E_NOT_FOUND)
    return heed_err_set(err, st, "%s: key 'tokenizer.ggml.tokens' is absent; the vocabulary size comes from it", path);
  if (tok.type != HEED_GGUF_ARRAY || tok.v.arr.elem_type != HEED_GGUF_STRING)
    return heed_err_set(err, HEED_E_INVALID, "%s: key 'tokenizer.ggml.tokens' is %s; accepted: an array of str", path,
                        heed_gguf_vtype_name(tok.type));
  if (tok.v.arr.n < 1 || tok.v.arr.n > INT32_MAX)
    return heed_err_set(err, HEED_E_INVALID, "%s: key 'tokenizer.ggml.tokens' has %llu entries; accepted: 1..2^31-1", path,
                        (unsigned long long)tok.v.arr.n);
  cfg->n_vocab = (uint32_t)tok.v.arr.n;
  return HEED_OK;
}

int heed_model_layer_is_swa(const heed_model_config *cfg, uint32_t il) {
  if (!cfg || !cfg->sliding_window) return 0;
  return !cfg->swa_pattern || (il + 1) % cfg->swa_pattern != 0;
}

heed_status heed_model_kv_bytes_per_token(const heed_model_config *cfg, heed_dtype dtype, double *bytes, heed_error *err) {
  if (!cfg || !bytes) return heed_err_set(err, HEED_E_INVALID, "heed_model_kv_bytes_per_token: cfg or bytes is NULL");
  if ((unsigned)dtype >= HEED_DTYPE_COUNT)
    return heed_err_set(err, HEED_E_INVALID, "KV dtype %d; accepted: f32, f16, bf16, q8, q4, e4m3, e5m2", (int)dtype);
  /* heed_kv_cache_bytes without a runtime keeps no message: its limits are said here */
  const unsigned dims[2] = {cfg->head_dim_k, cfg->head_dim_v};
  for (int i = 0; i < 2; i++)
    if (dims[i] < HEED_HEAD_DIM_MIN || dims[i] > HEED_HEAD_DIM_MAX || dims[i] % 16)
      return heed_err_set(err, HEED_E_UNSUPPORTED, "head dim %s=%u: heed's KV cache takes multiples of 16 in %d..%d",
                          i ? "v" : "k", dims[i], HEED_HEAD_DIM_MIN, HEED_HEAD_DIM_MAX);
  if (cfg->n_head_kv < 1 || cfg->n_head_kv > 256)
    return heed_err_set(err, HEED_E_UNSUPPORTED, "%u KV heads: heed's KV cache takes 1..256", cfg->n_head_kv);
  const unsigned block_len = 256;
  heed_kv_cache_config kc = {.n_kv_heads = cfg->n_head_kv, .dk = cfg->head_dim_k, .dv = cfg->head_dim_v, .k_dtype = dtype,
                             .v_dtype = dtype, .block_len = block_len, .n_blocks = 1, .max_seqs = 1, .max_seq_len = block_len};
  size_t one, two;
  heed_status st = heed_kv_cache_bytes(NULL, &kc, &one, NULL);
  kc.n_blocks = 2;
  if (st == HEED_OK) st = heed_kv_cache_bytes(NULL, &kc, &two, NULL);
  if (st != HEED_OK)
    return heed_err_set(err, st, "heed_kv_cache_bytes refused %u KV heads of dims %u/%u in %s", cfg->n_head_kv, cfg->head_dim_k,
                        cfg->head_dim_v, heed_dtype_name(dtype));
  /* one block more is what a block costs: the residual (quantized caches) is per sequence */
  *bytes = (double)cfg->n_layer * (double)(two - one) / block_len;
  return HEED_OK;
}
