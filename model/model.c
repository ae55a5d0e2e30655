/* model/model.c - opening a model: its tensors checked against its
 * architecture, its tokenizer, its KV caches and every buffer a step uses,
 * sized once; and its sequences, which act on every layer's cache at once. */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "heed/memory.h"
#include "model/model_internal.h"
#include "runtime/internal.h"

heed_status model_fail(heed_model *m, heed_status st, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  heed_vfmt(m->err, sizeof m->err, fmt, ap);
  va_end(ap);
  return st;
}

void heed_model_options_init(heed_model_options *o) {
  memset(o, 0, sizeof *o);
  o->kv_dtype = HEED_DTYPE_F16;
}

const heed_model_config *heed_model_get_config(const heed_model *m) { return &m->cfg; }
const heed_model_options *heed_model_get_options(const heed_model *m) { return &m->opt; }
const struct heed_tokenizer *heed_model_tokenizer(const heed_model *m) { return m->tok; }
const heed_gguf *heed_model_gguf(const heed_model *m) { return m->g; }
heed_runtime *heed_model_runtime(const heed_model *m) { return m->rt; }
const char *heed_model_last_error(const heed_model *m) { return m ? m->err : ""; }
size_t heed_model_kv_bytes(const heed_model *m) { return m->kv_bytes; }
size_t heed_model_buffer_bytes(const heed_model *m) { return m->buf_bytes; }

/* ---------- tensors ---------- */

typedef struct loader {
  heed_model *m;
  heed_error *err;
} loader;

/* The tensor called name, with shape ne[0..n) (ggml order: ne[0] is the row
 * length). required 0: absent gives NULL. */
static const heed_gguf_tensor *tensor(loader *L, const char *name, int required, uint32_t n, const uint64_t *ne,
                                      heed_status *st) {
  const heed_gguf_tensor *t = heed_gguf_find_tensor(L->m->g, name);
  if (!t) {
    if (required)
      *st = heed_err_set(L->err, HEED_E_NOT_FOUND, "%s: tensor '%s' is missing; %s models need it",
                         heed_gguf_file_path(L->m->g, 0), name, heed_arch_name(L->m->cfg.arch));
    return NULL;
  }
  int ok = t->n_dims == n;
  for (uint32_t i = 0; ok && i < n; i++) ok = t->ne[i] == ne[i];
  if (!ok) {
    char want[96] = "", got[96] = "";
    for (uint32_t i = 0; i < n; i++)
      snprintf(want + strlen(want), sizeof want - strlen(want), "%s%llu", i ? ", " : "", (unsigned long long)ne[i]);
    for (uint32_t i = 0; i < t->n_dims; i++)
      snprintf(got + strlen(got), sizeof got - strlen(got), "%s%llu", i ? ", " : "", (unsigned long long)t->ne[i]);
    *st = heed_err_set(L->err, HEED_E_INVALID, "%s: tensor '%s' has shape [%s]; the configuration needs [%s]",
                       heed_gguf_file_path(L->m->g, 0), name, got, want);
    return NULL;
  }
  return t;
}

/* An f32 vector of n (norms, biases). */
static const float *vec(loader *L, const char *name, int required, uint64_t n, heed_status *st) {
  if (*st) return NULL;
  const heed_gguf_tensor *t = tensor(L, name, required, 1, &n, st);
  if (!t) return NULL;
  if (t->type != HEED_GGML_F32) {
    *st = heed_err_set(L->err, HEED_E_UNSUPPORTED, "%s: tensor '%s' is %s; heed reads norms and biases as F32",
                       heed_gguf_file_path(L->m->g, 0), name, heed_ggml_type_name(t->type));
    return NULL;
  }
  return (const float *)t->data;
}

/* A matrix [rows][cols]. */
static void mat(loader *L, const char *name, int required, uint64_t rows, uint64_t cols, heed_matrix *out,
                heed_status *st) {
  memset(out, 0, sizeof *out);
  if (*st) return;
  uint64_t ne[2] = {cols, rows};
  const heed_gguf_tensor *t = tensor(L, name, required, 2, ne, st);
  if (!t) return;
  heed_error e;
  if (heed_matrix_from_tensor(t, out, &e) != HEED_OK)
    *st = heed_err_set(L->err, e.status, "%s: %s", heed_gguf_file_path(L->m->g, 0), e.msg);
}

static heed_status load_tensors(heed_model *m, heed_error *err) {
  loader L = {m, err};
  const heed_model_config *c = &m->cfg;
  heed_status st = HEED_OK;
  uint64_t d = c->n_embd, qd = (uint64_t)c->n_head * c->head_dim_k, kd = (uint64_t)c->n_head_kv * c->head_dim_k,
           vd = (uint64_t)c->n_head_kv * c->head_dim_v, od = (uint64_t)c->n_head * c->head_dim_v;
  int gemma = c->arch == HEED_ARCH_GEMMA3, qwen2 = c->arch == HEED_ARCH_QWEN2, qk_norm = gemma || c->arch == HEED_ARCH_QWEN3;
  mat(&L, "token_embd.weight", 1, c->n_vocab, d, &m->tok_embd, &st);
  m->output_norm = vec(&L, "output_norm.weight", 1, d, &st);
  mat(&L, "output.weight", 0, c->n_vocab, d, &m->output, &st);
  if (!st && !m->output.data) m->output = m->tok_embd; /* tied */
  if (!st && c->arch == HEED_ARCH_LLAMA) m->rope_freqs = vec(&L, "rope_freqs.weight", 0, c->n_rot / 2, &st);
  for (uint32_t il = 0; il < c->n_layer && !st; il++) {
    model_layer *l = &m->layers[il];
    char n[96];
#define NAME(s) (snprintf(n, sizeof n, "blk.%u." s, il), n)
    l->attn_norm = vec(&L, NAME("attn_norm.weight"), 1, d, &st);
    mat(&L, NAME("attn_q.weight"), 1, qd, d, &l->wq, &st);
    mat(&L, NAME("attn_k.weight"), 1, kd, d, &l->wk, &st);
    mat(&L, NAME("attn_v.weight"), 1, vd, d, &l->wv, &st);
    mat(&L, NAME("attn_output.weight"), 1, d, od, &l->wo, &st);
    l->bq = vec(&L, NAME("attn_q.bias"), qwen2, qd, &st);
    l->bk = vec(&L, NAME("attn_k.bias"), qwen2, kd, &st);
    l->bv = vec(&L, NAME("attn_v.bias"), qwen2, vd, &st);
    if (qk_norm) {
      l->q_norm = vec(&L, NAME("attn_q_norm.weight"), 1, c->head_dim_k, &st);
      l->k_norm = vec(&L, NAME("attn_k_norm.weight"), 1, c->head_dim_k, &st);
    }
    if (gemma) {
      l->post_attn_norm = vec(&L, NAME("post_attention_norm.weight"), 1, d, &st);
      l->post_ffn_norm = vec(&L, NAME("post_ffw_norm.weight"), 1, d, &st);
    }
    l->ffn_norm = vec(&L, NAME("ffn_norm.weight"), 1, d, &st);
    mat(&L, NAME("ffn_gate.weight"), 1, c->n_ff, d, &l->w_gate, &st);
    mat(&L, NAME("ffn_up.weight"), 1, c->n_ff, d, &l->w_up, &st);
    mat(&L, NAME("ffn_down.weight"), 1, d, c->n_ff, &l->w_down, &st);
#undef NAME
    l->swa = heed_model_layer_is_swa(c, il);
  }
  return st;
}

/* ---------- open ---------- */

static void *buf(heed_model *m, size_t bytes, heed_status *st) {
  if (*st) return NULL;
  void *p = NULL;
  if (posix_memalign(&p, 64, bytes ? bytes : 64)) {
    *st = HEED_E_NOMEM;
    return NULL;
  }
  m->buf_bytes += bytes;
  return p;
}

static heed_status open_caches(heed_model *m, heed_error *err) {
  const heed_model_config *c = &m->cfg;
  for (uint32_t il = 0; il < c->n_layer; il++) {
    heed_kv_cache_config kc = {.n_kv_heads = c->n_head_kv, .dk = c->head_dim_k, .dv = c->head_dim_v,
                               .k_dtype = m->opt.kv_dtype, .v_dtype = m->opt.kv_dtype, .max_seqs = m->opt.max_seqs,
                               .max_seq_len = m->opt.n_ctx, .n_blocks = 1};
    size_t bytes;
    unsigned block_len;
    if (heed_kv_cache_bytes(m->rt, &kc, &bytes, &block_len) != HEED_OK)
      return heed_err_set(err, HEED_E_UNSUPPORTED, "KV cache for layer %u: %s", il, heed_runtime_last_error(m->rt));
    kc.block_len = block_len;
    /* every sequence full, plus one block each for copy-on-write after a fork */
    size_t tokens = m->opt.kv_tokens ? m->opt.kv_tokens : (size_t)m->opt.max_seqs * m->opt.n_ctx;
    size_t blocks = (tokens + block_len - 1) / block_len + m->opt.max_seqs;
    if (blocks > UINT32_MAX / 2)
      return heed_err_set(err, HEED_E_RANGE, "model options: kv_tokens %zu makes %zu KV blocks (at most %u)", tokens,
                          blocks, UINT32_MAX / 2);
    kc.n_blocks = (uint32_t)blocks;
    m->n_kv_blocks = kc.n_blocks;
    heed_status st = heed_kv_cache_bytes(m->rt, &kc, &bytes, &block_len);
    if (st) return heed_err_set(err, st, "KV cache for layer %u: %s", il, heed_runtime_last_error(m->rt));
    heed_error e;
    st = heed_mem_alloc(heed_runtime_topology(m->rt), bytes, 64, HEED_NUMA_ANY, &m->layers[il].kv_storage, &e);
    if (st) return heed_err_set(err, st, "KV cache for layer %u (%zu bytes): %s", il, bytes, e.msg);
    st = heed_kv_cache_create(m->rt, &kc, m->layers[il].kv_storage, bytes, &m->layers[il].kv, &e);
    if (st) return heed_err_set(err, st, "KV cache for layer %u: %s", il, e.msg);
    m->kv_bytes += bytes;
  }
  return HEED_OK;
}

static heed_status open_buffers(heed_model *m, heed_error *err) {
  const heed_model_config *c = &m->cfg;
  size_t B = m->opt.max_batch, S = m->opt.max_seqs;
  heed_status st = HEED_OK;
  m->x = buf(m, B * c->n_embd * sizeof(float), &st);
  m->h = buf(m, B * c->n_embd * sizeof(float), &st);
  m->q = buf(m, B * c->n_head * c->head_dim_k * sizeof(float), &st);
  m->k = buf(m, B * c->n_head_kv * c->head_dim_k * sizeof(float), &st);
  m->v = buf(m, B * c->n_head_kv * c->head_dim_v * sizeof(float), &st);
  m->att = buf(m, B * c->n_head * c->head_dim_v * sizeof(float), &st);
  m->gate = buf(m, B * c->n_ff * sizeof(float), &st);
  m->up = buf(m, B * c->n_ff * sizeof(float), &st);
  m->pos = buf(m, B * sizeof(int32_t), &st);
  m->row_seq = buf(m, B * sizeof(int32_t), &st);
  m->rope_cs = buf(m, B * c->n_rot * sizeof(float), &st);
  m->masks = buf(m, S * HEED_MAX_DECODE_QUERIES * HEED_MAX_DECODE_QUERIES, &st);
  m->dseqs = buf(m, S * sizeof(heed_attn_decode_seq), &st);
  m->order = buf(m, S * sizeof(unsigned), &st);
  m->row0 = buf(m, S * sizeof(unsigned), &st);
  m->len0 = buf(m, S * sizeof(long), &st);
  for (int b = 0; b < 2 && !st; b++) {
    m->inv_freq[b] = buf(m, (c->n_rot / 2 + 1) * sizeof(double), &st);
    double base = b ? c->rope_freq_base_swa : c->rope_freq_base;
    for (uint32_t i = 0; !st && i < c->n_rot / 2; i++) {
      double f = pow(base, -2.0 * i / c->n_rot);
      if (m->rope_freqs) f /= m->rope_freqs[i];
      m->inv_freq[b][i] = f;
    }
  }
  if (st) return heed_err_set(err, st, "out of memory for the step buffers (%zu tokens)", B);
  /* matmul work: the largest any product of the model takes at B tokens */
  size_t w = heed_matmul_workspace(&m->output, B);
  for (uint32_t il = 0; il < c->n_layer; il++) {
    const model_layer *l = &m->layers[il];
    const heed_matrix *ms[] = {&l->wq, &l->wk, &l->wv, &l->wo, &l->w_gate, &l->w_up, &l->w_down};
    for (size_t i = 0; i < HEED_ARRAY_LEN(ms); i++) {
      size_t b = heed_matmul_workspace(ms[i], B);
      if (b > w) w = b;
    }
  }
  m->mm_work_bytes = w;
  m->mm_work = buf(m, w, &st);
  /* attention work: prefill of B queries, or decode of every sequence with 16 queries */
  heed_attn_params p = {.n_q_heads = c->n_head, .n_kv_heads = c->n_head_kv, .dk = c->head_dim_k, .dv = c->head_dim_v,
                        .scale = 1};
  size_t a = 0, b = 0;
  if (heed_attn_prefill_workspace(m->rt, &p, (unsigned)B, &a) != HEED_OK)
    return heed_err_set(err, HEED_E_UNSUPPORTED, "attention: %s", heed_runtime_last_error(m->rt));
  for (size_t n = 1; n <= S; n++) {
    heed_attn_decode_seq *ds = m->dseqs;
    for (size_t i = 0; i < n; i++) ds[i] = (heed_attn_decode_seq){.kv = {.seq = (int)i}, .n_q = HEED_MAX_DECODE_QUERIES};
    if (heed_attn_decode_workspace(m->rt, &p, ds, (unsigned)n, &b) != HEED_OK)
      return heed_err_set(err, HEED_E_UNSUPPORTED, "attention: %s", heed_runtime_last_error(m->rt));
    if (b > a) a = b;
  }
  m->attn_work_bytes = a;
  m->attn_work = buf(m, a, &st);
  if (st) return heed_err_set(err, st, "out of memory for the work spaces");
  return HEED_OK;
}

heed_status heed_model_open(heed_runtime *rt, const char *path, const heed_model_options *opt, heed_model **out,
                            heed_error *err) {
  if (!out) return heed_err_set(err, HEED_E_INVALID, "heed_model_open: out is NULL");
  *out = NULL;
  if (!rt || !path) return heed_err_set(err, HEED_E_INVALID, "heed_model_open: a runtime and a path are needed");
  if (heed_runtime_backend(rt) != HEED_BACKEND_CPU)
    return heed_err_set(err, HEED_E_UNSUPPORTED, "heed_model_open: models run on the CPU backend; this runtime is %s",
                        heed_backend_name(heed_runtime_backend(rt)));
  heed_model *m = calloc(1, sizeof *m);
  if (!m) return heed_err_set(err, HEED_E_NOMEM, "out of memory");
  m->rt = rt;
  heed_model_options_init(&m->opt);
  if (opt) m->opt = *opt;
  heed_status st = heed_gguf_open_flags(path, m->opt.mmap_weights ? 0 : HEED_GGUF_LOAD, &m->g, err);
  if (!st) st = heed_model_config_read(m->g, &m->cfg, err);
  if (st) goto fail;
  const heed_model_config *c = &m->cfg;
  if (!m->opt.n_ctx) m->opt.n_ctx = c->n_ctx_train && c->n_ctx_train < 4096 ? c->n_ctx_train : 4096;
  if (!m->opt.max_seqs) m->opt.max_seqs = 1;
  if (!m->opt.max_batch) m->opt.max_batch = 512;
  if (m->opt.n_ctx > (1u << 24) || m->opt.max_seqs > 1024 || m->opt.max_batch > 65536) {
    st = heed_err_set(err, HEED_E_RANGE, "model options: n_ctx %u (1..16777216), max_seqs %u (1..1024), max_batch %u (1..65536)",
                      m->opt.n_ctx, m->opt.max_seqs, m->opt.max_batch);
    goto fail;
  }
  if ((unsigned)m->opt.kv_dtype >= HEED_DTYPE_COUNT) {
    st = heed_err_set(err, HEED_E_INVALID, "model options: KV dtype %d is not one heed stores", (int)m->opt.kv_dtype);
    goto fail;
  }
  if (c->n_rot > c->head_dim_k || c->n_rot % 2) {
    st = heed_err_set(err, HEED_E_UNSUPPORTED, "%s: rope dimension %u with head dim %u is not supported", path, c->n_rot,
                      c->head_dim_k);
    goto fail;
  }
  m->rope_neox = c->arch != HEED_ARCH_LLAMA;
  m->gelu = c->arch == HEED_ARCH_GEMMA3;
  m->embd_scale = c->arch == HEED_ARCH_GEMMA3 ? sqrtf((float)c->n_embd) : 1.0f;
  m->layers = calloc(c->n_layer, sizeof *m->layers);
  if (!m->layers) {
    st = heed_err_set(err, HEED_E_NOMEM, "out of memory");
    goto fail;
  }
  if ((st = load_tensors(m, err))) goto fail;
  if ((st = heed_tokenizer_from_gguf(m->g, &m->tok, err))) goto fail;
  heed_tokenizer_info ti;
  heed_tokenizer_get_info(m->tok, &ti);
  if (ti.n_tokens != c->n_vocab) {
    st = heed_err_set(err, HEED_E_INVALID, "%s: the vocabulary has %u tokens but the embedding has %u rows", path,
                      ti.n_tokens, c->n_vocab);
    goto fail;
  }
  if ((st = open_caches(m, err)) || (st = open_buffers(m, err))) goto fail;
  *out = m;
  return HEED_OK;
fail:
  heed_model_close(m);
  return st;
}

void heed_model_close(heed_model *m) {
  if (!m) return;
  if (m->layers)
    for (uint32_t il = 0; il < m->cfg.n_layer; il++) {
      heed_kv_cache_destroy(m->layers[il].kv);
      heed_mem_free(m->layers[il].kv_storage);
    }
  free(m->layers);
  void *bufs[] = {m->x, m->h, m->q, m->k, m->v, m->att, m->gate, m->up, m->pos, m->row_seq, m->rope_cs, m->masks,
                  m->dseqs, m->order, m->row0, m->len0, m->inv_freq[0], m->inv_freq[1], m->mm_work, m->attn_work};
  for (size_t i = 0; i < HEED_ARRAY_LEN(bufs); i++) free(bufs[i]);
  heed_tokenizer_free(m->tok);
  heed_gguf_close(m->g);
  free(m);
}

static heed_status kv_fail(heed_model *m, heed_status st, uint32_t il, const char *what);

/* ---------- statistics, synthetic context ---------- */

double model_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

void heed_model_get_stats(const heed_model *m, heed_model_stats *s) { *s = m->stats; }
void heed_model_reset_stats(heed_model *m) { memset(&m->stats, 0, sizeof m->stats); }

heed_status heed_model_seq_fill_synthetic(heed_model *m, int seq, unsigned n) {
  const heed_model_config *c = &m->cfg;
  long len = heed_model_seq_len(m, seq);
  if (len < 0) return model_fail(m, HEED_E_INVALID, "fill: sequence %d does not exist", seq);
  if ((uint64_t)len + n > m->opt.n_ctx)
    return model_fail(m, HEED_E_RANGE, "fill: sequence %d holds %ld tokens; %u more exceed the context of %u", seq, len, n,
                      m->opt.n_ctx);
  size_t kd = (size_t)c->n_head_kv * c->head_dim_k, vd = (size_t)c->n_head_kv * c->head_dim_v;
  uint32_t x = 0x9e3779b9u;
  for (unsigned at = 0; at < n;) {
    unsigned k = n - at < m->opt.max_batch ? n - at : m->opt.max_batch;
    for (uint32_t il = 0; il < c->n_layer; il++) {
      for (size_t i = 0; i < (size_t)k * kd; i++) x = x * 1664525u + 1013904223u, m->k[i] = (float)(int32_t)x * 0x1p-31f;
      for (size_t i = 0; i < (size_t)k * vd; i++) x = x * 1664525u + 1013904223u, m->v[i] = (float)(int32_t)x * 0x1p-31f;
      heed_status st = heed_kv_seq_append(m->layers[il].kv, seq, k, m->k, m->v);
      if (st) return kv_fail(m, st, il, "fill");
    }
    at += k;
  }
  return HEED_OK;
}

/* ---------- sequences ---------- */

static heed_status kv_fail(heed_model *m, heed_status st, uint32_t il, const char *what) {
  return model_fail(m, st, "%s (layer %u): %s", what, il, heed_kv_cache_last_error(m->layers[il].kv));
}

heed_status heed_model_seq_new(heed_model *m, int *seq) {
  if (!m || !seq) return HEED_E_INVALID;
  for (uint32_t il = 0; il < m->cfg.n_layer; il++) {
    int s;
    heed_status st = heed_kv_seq_new(m->layers[il].kv, &s);
    if (st) {
      for (uint32_t j = 0; j < il; j++) heed_kv_seq_free(m->layers[j].kv, *seq);
      return kv_fail(m, st, il, "new sequence");
    }
    if (il == 0) *seq = s;
    else if (s != *seq) return model_fail(m, HEED_E_INTERNAL, "layer caches out of step (sequence %d vs %d)", s, *seq);
  }
  return HEED_OK;
}

heed_status heed_model_seq_fork(heed_model *m, int src, int *dst) {
  if (!m || !dst) return HEED_E_INVALID;
  for (uint32_t il = 0; il < m->cfg.n_layer; il++) {
    int s;
    heed_status st = heed_kv_seq_fork(m->layers[il].kv, src, &s);
    if (st) {
      for (uint32_t j = 0; j < il; j++) heed_kv_seq_free(m->layers[j].kv, *dst);
      return kv_fail(m, st, il, "fork");
    }
    if (il == 0) *dst = s;
    else if (s != *dst) return model_fail(m, HEED_E_INTERNAL, "layer caches out of step (sequence %d vs %d)", s, *dst);
  }
  return HEED_OK;
}

heed_status heed_model_seq_truncate(heed_model *m, int seq, unsigned len) {
  if (!m) return HEED_E_INVALID;
  for (uint32_t il = 0; il < m->cfg.n_layer; il++) {
    heed_status st = heed_kv_seq_truncate(m->layers[il].kv, seq, len);
    if (st) return kv_fail(m, st, il, "truncate");
  }
  return HEED_OK;
}

heed_status heed_model_seq_free(heed_model *m, int seq) {
  if (!m) return HEED_E_INVALID;
  heed_status first = HEED_OK;
  for (uint32_t il = 0; il < m->cfg.n_layer; il++) {
    heed_status st = heed_kv_seq_free(m->layers[il].kv, seq);
    if (st && !first) first = kv_fail(m, st, il, "free");
  }
  return first;
}

unsigned heed_model_kv_block_len(const heed_model *m) {
  return m && m->cfg.n_layer ? heed_kv_cache_get_config(m->layers[0].kv)->block_len : 0;
}
uint32_t heed_model_kv_blocks(const heed_model *m) { return m ? m->n_kv_blocks : 0; }
uint32_t heed_model_kv_free_blocks(const heed_model *m) {
  return m && m->cfg.n_layer ? heed_kv_cache_free_blocks(m->layers[0].kv) : 0;
}
size_t heed_model_kv_block_bytes(const heed_model *m) {
  size_t b = 0;
  for (uint32_t il = 0; m && il < m->cfg.n_layer; il++) b += heed_kv_cache_block_bytes(m->layers[il].kv);
  return b;
}

heed_status heed_model_seq_block_read(const heed_model *m, int seq, unsigned b, void *dst) {
  if (!m || !dst) return HEED_E_INVALID;
  heed_model *mm = (heed_model *)m; /* only its error message is written */
  char *o = (char *)dst;
  for (uint32_t il = 0; il < m->cfg.n_layer; il++) {
    heed_status st = heed_kv_seq_block_read(m->layers[il].kv, seq, b, o);
    if (st) return kv_fail(mm, st, il, "block read");
    o += heed_kv_cache_block_bytes(m->layers[il].kv);
  }
  return HEED_OK;
}

heed_status heed_model_seq_block_append(heed_model *m, int seq, const void *src) {
  if (!m || !src) return HEED_E_INVALID;
  const char *p = (const char *)src;
  for (uint32_t il = 0; il < m->cfg.n_layer; il++) {
    heed_status st = heed_kv_seq_block_append(m->layers[il].kv, seq, p);
    if (st) { /* every layer or none */
      long len = heed_kv_seq_len(m->layers[il].kv, seq);
      for (uint32_t j = 0; j < il; j++) heed_kv_seq_truncate(m->layers[j].kv, seq, (unsigned)len);
      return kv_fail(m, st, il, "block append");
    }
    p += heed_kv_cache_block_bytes(m->layers[il].kv);
  }
  return HEED_OK;
}

heed_status heed_model_seq_copy_shifted(heed_model *m, int dst, int src, unsigned src_pos, unsigned n) {
  if (!m) return HEED_E_INVALID;
  const heed_model_config *c = &m->cfg;
  const long dlen = heed_model_seq_len(m, dst), slen = heed_model_seq_len(m, src);
  if (dlen < 0 || slen < 0 || dst == src)
    return model_fail(m, HEED_E_INVALID, "copy: sequences %d -> %d: both must exist and differ", src, dst);
  if ((uint64_t)src_pos + n > (uint64_t)slen)
    return model_fail(m, HEED_E_RANGE, "copy: tokens %u..%u of sequence %d: it holds %ld", src_pos, src_pos + n, src, slen);
  if ((uint64_t)dlen + n > m->opt.n_ctx)
    return model_fail(m, HEED_E_RANGE, "copy: sequence %d holds %ld tokens; %u more exceed the context of %u", dst, dlen,
                      n, m->opt.n_ctx);
  /* the same rotation for every token: by the angle of the position difference, per base */
  const double delta = (double)dlen - (double)src_pos;
  const unsigned half = c->n_rot / 2;
  float cs[2][HEED_HEAD_DIM_MAX];
  for (int b = 0; b < 2; b++)
    for (unsigned i = 0; i < half; i++) {
      const double a = delta * m->inv_freq[b][i];
      cs[b][i] = (float)cos(a), cs[b][half + i] = (float)sin(a);
    }
  for (unsigned at = 0; at < n;) {
    const unsigned k = n - at < m->opt.max_batch ? n - at : m->opt.max_batch;
    for (uint32_t il = 0; il < c->n_layer; il++) {
      heed_kv_cache *kv = m->layers[il].kv;
      heed_status st = heed_kv_seq_read(kv, src, src_pos + at, k, m->k, m->v);
      if (st) return kv_fail(m, st, il, "copy");
      const float *r = cs[m->layers[il].swa && c->arch == HEED_ARCH_GEMMA3];
      for (size_t t = 0; t < (size_t)k * c->n_head_kv; t++) {
        float *x = m->k + t * c->head_dim_k;
        for (unsigned i = 0; i < half; i++) {
          const unsigned a = m->rope_neox ? i : 2 * i, b = m->rope_neox ? i + half : 2 * i + 1;
          const float x0 = x[a], x1 = x[b];
          x[a] = x0 * r[i] - x1 * r[half + i];
          x[b] = x0 * r[half + i] + x1 * r[i];
        }
      }
      if ((st = heed_kv_seq_append(kv, dst, k, m->k, m->v))) {
        for (uint32_t j = 0; j <= il; j++) heed_kv_seq_truncate(m->layers[j].kv, dst, (unsigned)dlen); /* none */
        return kv_fail(m, st, il, "copy");
      }
    }
    at += k;
  }
  return HEED_OK;
}

long heed_model_seq_len(const heed_model *m, int seq) { return m ? heed_kv_seq_len(m->layers[0].kv, seq) : -1; }
