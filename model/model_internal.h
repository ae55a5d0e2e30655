/* model/model_internal.h - what a heed_model holds: the configuration, the
 * weights as views of the GGUF mapping, the per-layer KV caches and the
 * buffers of a step, sized once at open (llama2.c's Config, weights and
 * RunState). */
#ifndef HEED_MODEL_INTERNAL_H
#define HEED_MODEL_INTERNAL_H

#include "heed/attention.h"
#include "heed/model.h"
#include "heed/tokenizer.h"
#include "heed/weights.h"
#include "runtime/internal.h"

typedef struct model_layer {
  const float *attn_norm;        /* [n_embd] */
  heed_matrix wq, wk, wv, wo;    /* [n_head*hd_k][n_embd], [n_kv*hd_k][n_embd], [n_kv*hd_v][n_embd], [n_embd][n_head*hd_v] */
  const float *bq, *bk, *bv;     /* qwen2: [n_head*hd_k], [n_kv*hd_k], [n_kv*hd_v]; else NULL */
  const float *q_norm, *k_norm;  /* qwen3, gemma3: [hd_k]; else NULL */
  const float *post_attn_norm;   /* gemma3: [n_embd] */
  const float *ffn_norm;         /* [n_embd] */
  heed_matrix w_gate, w_up;      /* [n_ff][n_embd] */
  heed_matrix w_down;            /* [n_embd][n_ff] */
  const float *post_ffn_norm;    /* gemma3: [n_embd] */
  int swa;                       /* local layer: sliding window and its RoPE base */
  heed_kv_cache *kv;
  void *kv_storage;
} model_layer;

struct heed_model {
  heed_runtime *rt;
  heed_gguf *g;
  heed_tokenizer *tok;
  heed_model_config cfg;
  heed_model_options opt;
  uint32_t n_kv_blocks;      /* blocks in each layer's KV pool */
  int rope_neox;             /* 1: rotate halves (x[i], x[i + n_rot/2]); 0: pairs (x[2i], x[2i+1]) */
  float embd_scale;          /* gemma3: sqrt(n_embd); else 1 */
  int gelu;                  /* gemma3: gelu-tanh gate; else silu */
  int32_t eos_pad;           /* unused */
  heed_matrix tok_embd;      /* [n_vocab][n_embd] */
  heed_matrix output;        /* [n_vocab][n_embd]: output.weight, or tok_embd when tied */
  const float *output_norm;  /* [n_embd] */
  const float *rope_freqs;   /* llama: [n_rot/2] divisors of each frequency, or NULL */
  model_layer *layers;       /* [n_layer] */
  double *inv_freq[2];       /* [n_rot/2] per base: [0] global layers, [1] local layers */
  size_t kv_bytes;

  /* step buffers, [max_batch] rows each */
  float *x;            /* [B][n_embd] residual stream */
  float *h;            /* [B][n_embd] normed */
  float *q;            /* [B][n_head*hd_k] */
  float *k;            /* [B][n_kv*hd_k] */
  float *v;            /* [B][n_kv*hd_v] */
  float *att;          /* [B][n_head*hd_v] */
  float *gate;         /* [B][n_ff] */
  float *up;           /* [B][n_ff] */
  int32_t *pos;        /* [B] position of each row */
  int32_t *row_seq;    /* [B] which batch entry a row belongs to */
  float *rope_cs;      /* [B][n_rot] cos, sin per row (for one base) */
  void *mm_work;       /* heed_matmul's */
  size_t mm_work_bytes;
  void *attn_work;     /* attention's */
  size_t attn_work_bytes;
  uint8_t *masks;      /* [max_seqs][16*16] tree masks */
  heed_attn_decode_seq *dseqs; /* [max_seqs] */
  unsigned *order;     /* [max_seqs] batch entries, decode ones first */
  unsigned *row0;      /* [max_seqs] first row of each batch entry */
  long *len0;          /* [max_seqs] sequence length before the step */
  size_t buf_bytes;

  heed_model_stats stats;
  char err[HEED_ERROR_MSG_MAX];
};

double model_now(void); /* seconds, monotonic */

heed_status model_fail(heed_model *m, heed_status st, const char *fmt, ...) HEED_PRINTF(3, 4);

#endif
