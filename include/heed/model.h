/* heed/model.h - a model's configuration, read from its GGUF metadata.
 *
 * heed_model_config_read takes the hyperparameters llama.cpp's converters
 * write ("<arch>.block_count", "<arch>.attention.head_count", ...) and
 * checks them against each other. Keys an architecture cannot do without are
 * required (a missing one is named); the others get llama.cpp's defaults.
 * The config is a plain struct of values, the caller's: nothing borrows the
 * heed_gguf after the call.
 */
#ifndef HEED_MODEL_H
#define HEED_MODEL_H

#include <stdint.h>

#include "heed/dtype.h"
#include "heed/gguf.h"
#include "heed/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Architectures heed knows. X(NAME, general.architecture value). */
#define HEED_ARCH_LIST(X) \
  X(LLAMA, "llama")       \
  X(QWEN2, "qwen2")       \
  X(QWEN3, "qwen3")       \
  X(GEMMA3, "gemma3")

typedef enum heed_arch {
#define HEED_X_(N, s) HEED_ARCH_##N,
  HEED_ARCH_LIST(HEED_X_)
#undef HEED_X_
  HEED_ARCH_COUNT
} heed_arch;

const char *heed_arch_name(heed_arch a); /* "qwen2"; NULL for a value not in the list */
/* Parses a general.architecture value; HEED_E_UNSUPPORTED for another. */
heed_status heed_arch_parse(const char *name, heed_arch *out);

typedef struct heed_model_config {
  heed_arch arch;
  uint32_t n_layer;        /* transformer blocks */
  uint32_t n_embd;         /* residual stream width: x is [n_embd] per token */
  uint32_t n_ff;           /* feed-forward hidden width: gate/up are [n_ff][n_embd] */
  uint32_t n_head;         /* query heads: q is [n_head][head_dim_k] per token */
  uint32_t n_head_kv;      /* KV heads (GQA: n_head is a multiple): k [n_head_kv][head_dim_k], v [n_head_kv][head_dim_v] */
  uint32_t head_dim_k;     /* attention.key_length, else n_embd / n_head */
  uint32_t head_dim_v;     /* attention.value_length, else n_embd / n_head */
  uint32_t n_rot;          /* rope.dimension_count: leading channels of each head rotated; else head_dim_k */
  uint32_t n_ctx_train;    /* context_length: tokens the model was trained on */
  uint32_t n_vocab;        /* entries of tokenizer.ggml.tokens: logits are [n_vocab] */
  double rope_freq_base;   /* rope.freq_base; 10000 when absent */
  double rope_freq_base_swa; /* sliding-window layers' base: rope.freq_base_swa; gemma3: 10000 when absent; else rope_freq_base */
  double rms_eps;          /* attention.layer_norm_rms_epsilon */
  uint32_t sliding_window; /* attention.sliding_window: tokens a local layer sees; 0: none */
  uint32_t swa_pattern;    /* every swa_pattern-th layer is global, the others local (gemma3: 6); 0: all global */
} heed_model_config;

/* Reads the configuration of g's model. HEED_E_UNSUPPORTED for an
 * architecture not in the list (the message names it and the known ones);
 * HEED_E_NOT_FOUND naming a required key that is absent; HEED_E_INVALID for a
 * value of the wrong type or out of range (naming key and value). */
heed_status heed_model_config_read(const heed_gguf *g, heed_model_config *cfg, heed_error *err);

/* 1 when layer il uses the sliding window (local attention). */
int heed_model_layer_is_swa(const heed_model_config *cfg, uint32_t il);

/* KV-cache bytes one token takes, K and V in every layer, both stored as
 * dtype, in heed's paged cache (heed_kv_cache_bytes: codes, the scales of
 * the quantized formats, block alignment) with blocks of 256 tokens, counted
 * for full blocks. A quantized cache also keeps, per sequence, one f16
 * residual block of up to 255 tokens; that is not part of this figure. Every
 * layer counts a token, local (sliding-window) layers too.
 * HEED_E_UNSUPPORTED when heed's cache does not take the head dims. */
heed_status heed_model_kv_bytes_per_token(const heed_model_config *cfg, heed_dtype dtype, double *bytes, heed_error *err);

#ifdef __cplusplus
}
#endif
#endif
