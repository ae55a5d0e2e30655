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
#include "heed/runtime.h"
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
  uint32_t swa_pattern;    /* every swa_pattern-th layer is global, the others local (gemma3: 6);
                              0: every layer local when sliding_window > 0 (Mistral-style llama) */
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


/* ---------- running a model ----------
 *
 * heed_model_open maps a GGUF file, reads its configuration, finds every
 * tensor its architecture needs (a missing one, or one of the wrong shape, is
 * an error naming it), builds its tokenizer, and sizes every buffer once:
 * nothing is allocated while it runs. The weights stay in the file's mapping.
 * The KV cache is heed's paged cache (heed/attention.h), one per layer, in the
 * dtype chosen at open; the model's sequences (heed_model_seq_*) act on every
 * layer's cache at once, so a sequence forks, shares blocks and truncates as
 * a whole.
 *
 * The forward pass (model/forward.c) reads like the math, per layer:
 *   h = norm(x); q, k, v = h Wq (+ bq), h Wk (+ bk), h Wv (+ bv)
 *   q, k = norm_head(q), norm_head(k)         qwen3, gemma3
 *   q, k = rope(q, pos), rope(k, pos)         NEOX halves (qwen2, qwen3, gemma3), pairs (llama)
 *   append k, v; o = attention(q, cache)      window on gemma3's local layers
 *   a = o Wo; a = norm(a) (gemma3); x += a
 *   h = norm(x); f = (act(h Wg) * h Wu) Wd    act: silu, gelu-tanh (gemma3)
 *   f = norm(f) (gemma3); x += f
 * and logits = norm(x) Wout (Wout = the embedding when the file has no output).
 */
typedef struct heed_model heed_model;

typedef struct heed_model_options {
  heed_dtype kv_dtype; /* K and V: f16 (default), f32, bf16, q8, q4, e4m3, e5m2 */
  unsigned n_ctx;      /* tokens one sequence may hold; 0: min(trained context, 4096) */
  unsigned max_seqs;   /* sequences alive at once; 0: 1 */
  unsigned max_batch;  /* tokens one step takes, all sequences together; 0: 512 */
  int mmap_weights;    /* 1: read the weights through the file's mapping (resident only as the page cache
                          holds them, 4 KiB pages); 0: load them on huge pages (HEED_GGUF_LOAD) */
  size_t kv_tokens;    /* tokens the KV pool holds, all sequences together, plus one block per sequence
                          (for copy-on-write after a fork); 0: every sequence full (max_seqs * n_ctx).
                          A server keeping finished sequences as a prefix cache sizes the pool to its
                          memory budget instead; heed_model_kv_blocks says what was made. */
} heed_model_options;

void heed_model_options_init(heed_model_options *o); /* all defaults */

/* Opens path on rt (a CPU runtime). *out is the caller's: heed_model_close. */
heed_status heed_model_open(heed_runtime *rt, const char *path, const heed_model_options *opt, heed_model **out,
                            heed_error *err);
void heed_model_close(heed_model *m); /* NULL is fine */

const heed_model_config *heed_model_get_config(const heed_model *m);
const heed_model_options *heed_model_get_options(const heed_model *m); /* defaults filled in */
struct heed_tokenizer;
const struct heed_tokenizer *heed_model_tokenizer(const heed_model *m); /* borrowed */
const heed_gguf *heed_model_gguf(const heed_model *m);                  /* borrowed */
heed_runtime *heed_model_runtime(const heed_model *m);
/* The message of the last failed call on m. */
const char *heed_model_last_error(const heed_model *m);
/* Bytes of the KV caches' storage and of the buffers heed allocated at open. */
size_t heed_model_kv_bytes(const heed_model *m);
size_t heed_model_buffer_bytes(const heed_model *m);
/* The KV pool (every layer's is the same): tokens per block, blocks in all,
 * blocks free now, and the bytes one block takes summed over the layers. */
unsigned heed_model_kv_block_len(const heed_model *m);
uint32_t heed_model_kv_blocks(const heed_model *m);
uint32_t heed_model_kv_free_blocks(const heed_model *m);
size_t heed_model_kv_block_bytes(const heed_model *m);

/* Sequences: ids 0..max_seqs-1, as heed_kv_seq_* but over every layer. */
heed_status heed_model_seq_new(heed_model *m, int *seq);
heed_status heed_model_seq_fork(heed_model *m, int src, int *dst);
heed_status heed_model_seq_truncate(heed_model *m, int seq, unsigned len);
heed_status heed_model_seq_free(heed_model *m, int seq);
long heed_model_seq_len(const heed_model *m, int seq); /* -1: no such sequence */

/* Whole KV blocks of a sequence, every layer's, for a cache tier outside
 * memory: block b (full) as heed_model_kv_block_bytes bytes (layer 0's block,
 * then layer 1's, ...); and such bytes appended to a sequence whose length is
 * a multiple of heed_model_kv_block_len, every layer or none (see
 * heed_kv_seq_block_append: the bytes must come from a model and KV
 * configuration the same as this one's). */
heed_status heed_model_seq_block_read(const heed_model *m, int seq, unsigned b, void *dst);
heed_status heed_model_seq_block_append(heed_model *m, int seq, const void *src);

/* Appends to dst the K/V of src's tokens [src_pos, src_pos + n), moved to
 * dst's next positions: K (stored rotated) is rotated once more by RoPE for
 * the position difference, V is copied; both are stored in dst's format once
 * (a quantized side: requantized once). What a prompt chunk that reappears at
 * another position reuses instead of recomputing; its tokens then did not see
 * the text before them that changed, so the numbers differ from a recompute.
 * Every layer or none; dst and src must differ. */
heed_status heed_model_seq_copy_shifted(heed_model *m, int dst, int src, unsigned src_pos, unsigned n);

/* One sequence's part of a step: n_tokens new tokens after what it holds. A
 * chain (parents NULL: token i at position len + i, each seeing those before
 * it) is a prefill chunk or decode tokens; with parents (n_tokens <= 16, the
 * draft tree of heed_spec_verify_tree: parents[i] < i, -1 for a root) token
 * i sits at position len + depth(i) and sees its ancestors only. The logits
 * of the last n_logits tokens go to logits [n_logits][n_vocab]. */
typedef struct heed_model_batch_seq {
  int seq;
  unsigned n_tokens;
  const int32_t *tokens;  /* [n_tokens] */
  const int32_t *parents; /* NULL, or [n_tokens] */
  unsigned n_logits;      /* 0..n_tokens */
  float *logits;          /* [n_logits][n_vocab] */
} heed_model_batch_seq;

/* Runs one step over n_seqs sequences (each at most once), appending every
 * token's K/V to its sequence. At most max_batch tokens in all; a sequence
 * may not grow past n_ctx (HEED_E_RANGE naming both numbers); a token id out
 * of the vocabulary is HEED_E_INVALID naming it. On failure no sequence has
 * grown. */
heed_status heed_model_step(heed_model *m, const heed_model_batch_seq *seqs, unsigned n_seqs);

/* Where a model's steps spent their time since open or the last reset:
 * matrix products, attention (with the K/V appends), and the rest (norms,
 * RoPE, activations, embedding rows). */
typedef struct heed_model_stats {
  uint64_t steps, tokens;
  double s_matmul, s_attention, s_other;
} heed_model_stats;
void heed_model_get_stats(const heed_model *m, heed_model_stats *s);
void heed_model_reset_stats(heed_model *m);

/* Benchmarks: appends n tokens of synthetic K/V (values from a fixed
 * pseudo-random sequence, |x| < 1) to sequence seq in every layer, as a
 * context of depth n would leave there, without running the model. */
heed_status heed_model_seq_fill_synthetic(heed_model *m, int seq, unsigned n);

#ifdef __cplusplus
}
#endif
#endif
