/* model/forward.c - one step of the transformer over a ragged batch: every
 * sequence's new tokens stacked as rows (sequences that decode, up to 16
 * tokens, first; prefill chunks after), run through every layer together,
 * their K/V appended to each layer's cache, attention per sequence, logits
 * for the rows asked for. Reads top to bottom like the math (model.h). */
#include <math.h>
#include <string.h>

#include "model/model_internal.h"
#include "runtime/internal.h"

/* ---------- the small operations ---------- */

/* y = x / rms(x) * w, over n. */
static void rmsnorm(float *y, const float *x, const float *w, size_t n, double eps) {
  double ss = 0;
  for (size_t i = 0; i < n; i++) ss += (double)x[i] * x[i];
  float r = (float)(1.0 / sqrt(ss / (double)n + eps));
  for (size_t i = 0; i < n; i++) y[i] = x[i] * r * w[i];
}

/* Rotates the first n_rot channels of each of n_heads heads (hd apart) by
 * the angles whose cos, sin are cs[0..n_rot/2), cs[n_rot/2..n_rot). */
static void rope(float *x, unsigned n_heads, unsigned hd, unsigned n_rot, const float *cs, int neox) {
  unsigned half = n_rot / 2;
  const float *cosv = cs, *sinv = cs + half;
  for (unsigned h = 0; h < n_heads; h++) {
    float *v = x + (size_t)h * hd;
    for (unsigned i = 0; i < half; i++) {
      unsigned a = neox ? i : 2 * i, b = neox ? i + half : 2 * i + 1;
      float x0 = v[a], x1 = v[b];
      v[a] = x0 * cosv[i] - x1 * sinv[i];
      v[b] = x0 * sinv[i] + x1 * cosv[i];
    }
  }
}

/* The per-row operations (norms, biases, RoPE, residual adds) over the pool,
 * a contiguous range of rows per worker: each row is computed by the same
 * scalar code whatever the split. One row (decode) runs here. */
typedef void (*rows_fn)(heed_model *m, uint32_t il, int arg, size_t r0, size_t r1);
typedef struct rows_ctx {
  heed_model *m;
  uint32_t il;
  int arg;
  rows_fn fn;
} rows_ctx;

static void rows_task(void *vc, size_t begin, size_t end, int worker) {
  (void)worker;
  const rows_ctx *c = (const rows_ctx *)vc;
  c->fn(c->m, c->il, c->arg, begin, end);
}

static void over_rows(heed_model *m, uint32_t il, int arg, size_t rows, rows_fn fn) {
  rows_ctx c = {m, il, arg, fn};
  heed_pool *pool = heed_runtime_pool(m->rt);
  if (!pool || rows < 2 || heed_pool_parallel_for(pool, rows, HEED_SCHEDULE_STATIC, 0, rows_task, &c) != HEED_OK)
    fn(m, il, arg, 0, rows);
}

/* ---------- the step ---------- */

static heed_status matmul(heed_model *m, const heed_matrix *w, size_t n, const float *x, size_t ldx, float *y,
                          size_t ldy, const char *what, uint32_t il) {
  double t0 = model_now();
  heed_status st = heed_matmul(m->rt, w, n, x, ldx, y, ldy, m->mm_work, m->mm_work_bytes);
  m->stats.s_matmul += model_now() - t0;
  if (st) return model_fail(m, st, "layer %u, %s: %s", il, what, heed_runtime_last_error(m->rt));
  return HEED_OK;
}

static heed_status check_batch(heed_model *m, const heed_model_batch_seq *seqs, unsigned n_seqs, size_t *n_rows) {
  const heed_model_config *c = &m->cfg;
  if (!seqs && n_seqs) return model_fail(m, HEED_E_INVALID, "step: seqs is NULL");
  if (n_seqs > m->opt.max_seqs)
    return model_fail(m, HEED_E_RANGE, "step: %u sequences; the model was opened for %u", n_seqs, m->opt.max_seqs);
  size_t rows = 0;
  for (unsigned i = 0; i < n_seqs; i++) {
    const heed_model_batch_seq *s = &seqs[i];
    long len = heed_model_seq_len(m, s->seq);
    if (len < 0) return model_fail(m, HEED_E_INVALID, "step: entry %u names sequence %d, which does not exist", i, s->seq);
    for (unsigned j = 0; j < i; j++)
      if (seqs[j].seq == s->seq) return model_fail(m, HEED_E_INVALID, "step: sequence %d appears twice", s->seq);
    if (!s->n_tokens || !s->tokens)
      return model_fail(m, HEED_E_INVALID, "step: sequence %d has no tokens", s->seq);
    if ((uint64_t)len + s->n_tokens > m->opt.n_ctx)
      return model_fail(m, HEED_E_RANGE, "step: sequence %d holds %ld tokens; %u more exceed the context of %u", s->seq,
                        len, s->n_tokens, m->opt.n_ctx);
    for (unsigned t = 0; t < s->n_tokens; t++)
      if (s->tokens[t] < 0 || (uint32_t)s->tokens[t] >= c->n_vocab)
        return model_fail(m, HEED_E_INVALID, "step: sequence %d, token %u: id %d is outside the vocabulary (0..%u)",
                          s->seq, t, (int)s->tokens[t], c->n_vocab - 1);
    if (s->parents && s->n_tokens > HEED_MAX_DECODE_QUERIES)
      return model_fail(m, HEED_E_RANGE, "step: sequence %d: a tree of %u tokens; at most %d", s->seq, s->n_tokens,
                        HEED_MAX_DECODE_QUERIES);
    if (s->n_logits > s->n_tokens || (s->n_logits && !s->logits))
      return model_fail(m, HEED_E_INVALID, "step: sequence %d asks for %u logits rows of %u tokens%s", s->seq,
                        s->n_logits, s->n_tokens, s->n_logits && !s->logits ? " with logits NULL" : "");
    rows += s->n_tokens;
  }
  if (rows > m->opt.max_batch)
    return model_fail(m, HEED_E_RANGE, "step: %zu tokens; the model was opened for %u a step", rows, m->opt.max_batch);
  *n_rows = rows;
  return HEED_OK;
}

/* Orders the entries (decode first), gives every row its position, builds the tree masks. */
static heed_status plan_rows(heed_model *m, const heed_model_batch_seq *seqs, unsigned n_seqs, unsigned *n_decode) {
  unsigned k = 0, r = 0;
  for (int pass = 0; pass < 2; pass++)
    for (unsigned i = 0; i < n_seqs; i++) {
      int dec = seqs[i].n_tokens <= HEED_MAX_DECODE_QUERIES;
      if (dec != (pass == 0)) continue;
      m->order[k++] = i;
      if (dec) (*n_decode)++;
    }
  for (unsigned o = 0; o < n_seqs; o++) {
    unsigned i = m->order[o];
    const heed_model_batch_seq *s = &seqs[i];
    long len = heed_model_seq_len(m, s->seq);
    m->len0[i] = len;
    m->row0[i] = r;
    uint8_t *mask = m->masks + (size_t)o * HEED_MAX_DECODE_QUERIES * HEED_MAX_DECODE_QUERIES;
    if (s->parents) { /* row t: t itself and its ancestors */
      unsigned n = s->n_tokens;
      memset(mask, 0, (size_t)n * n);
      for (unsigned t = 0; t < n; t++) {
        if (s->parents[t] < -1 || s->parents[t] >= (int32_t)t)
          return model_fail(m, HEED_E_INVALID, "step: sequence %d: token %u has parent %d; accepted: -1..%d", s->seq, t,
                            (int)s->parents[t], (int)t - 1);
        mask[t * n + t] = 1;
        if (s->parents[t] >= 0)
          for (unsigned j = 0; j < t; j++) mask[t * n + j] = mask[(unsigned)s->parents[t] * n + j];
      }
    }
    for (unsigned t = 0; t < s->n_tokens; t++) {
      int depth = 0;
      if (s->parents)
        for (int p = s->parents[t]; p >= 0; p = s->parents[p]) depth++;
      m->pos[r + t] = (int32_t)(len + (s->parents ? depth : (int)t));
      m->row_seq[r + t] = (int32_t)i;
    }
    if (o < *n_decode)
      m->dseqs[o] = (heed_attn_decode_seq){.kv = {.seq = s->seq}, .n_q = s->n_tokens, .tree_mask = s->parents ? mask : NULL};
    r += s->n_tokens;
  }
  return HEED_OK;
}

/* cos and sin of rows [r0, r1)'s angles for one RoPE base: rope_cs [rows][n_rot]. */
static void rope_angles(heed_model *m, size_t r0, size_t r1, int local) {
  unsigned half = m->cfg.n_rot / 2;
  const double *f = m->inv_freq[local];
  for (size_t r = r0; r < r1; r++) {
    float *cs = m->rope_cs + r * m->cfg.n_rot;
    for (unsigned i = 0; i < half; i++) {
      double a = (double)m->pos[r] * f[i];
      cs[i] = (float)cos(a);
      cs[half + i] = (float)sin(a);
    }
  }
}

/* h = norm(x) before attention. */
static void rows_attn_norm(heed_model *m, uint32_t il, int arg, size_t r0, size_t r1) {
  (void)arg;
  const size_t d = m->cfg.n_embd;
  for (size_t r = r0; r < r1; r++) rmsnorm(m->h + r * d, m->x + r * d, m->layers[il].attn_norm, d, m->cfg.rms_eps);
}

/* q, k, v: the biases, the per-head norms, RoPE (arg: 1 + the base whose
 * angles rope_cs must be filled with first, or 0 when it holds them). */
static void rows_qkv(heed_model *m, uint32_t il, int arg, size_t r0, size_t r1) {
  const heed_model_config *c = &m->cfg;
  const model_layer *l = &m->layers[il];
  const size_t qd = (size_t)c->n_head * c->head_dim_k, kd = (size_t)c->n_head_kv * c->head_dim_k,
               vd = (size_t)c->n_head_kv * c->head_dim_v;
  if (arg) rope_angles(m, r0, r1, arg - 1);
  for (size_t r = r0; r < r1; r++) {
    float *q = m->q + r * qd, *k = m->k + r * kd, *v = m->v + r * vd;
    if (l->bq)
      for (size_t i = 0; i < qd; i++) q[i] += l->bq[i];
    if (l->bk)
      for (size_t i = 0; i < kd; i++) k[i] += l->bk[i];
    if (l->bv)
      for (size_t i = 0; i < vd; i++) v[i] += l->bv[i];
    if (l->q_norm)
      for (unsigned h = 0; h < c->n_head; h++)
        rmsnorm(q + h * c->head_dim_k, q + h * c->head_dim_k, l->q_norm, c->head_dim_k, c->rms_eps);
    if (l->k_norm)
      for (unsigned h = 0; h < c->n_head_kv; h++)
        rmsnorm(k + h * c->head_dim_k, k + h * c->head_dim_k, l->k_norm, c->head_dim_k, c->rms_eps);
    const float *cs = m->rope_cs + r * c->n_rot;
    rope(q, c->n_head, c->head_dim_k, c->n_rot, cs, m->rope_neox);
    rope(k, c->n_head_kv, c->head_dim_k, c->n_rot, cs, m->rope_neox);
  }
}

/* The residual add of a block's output (in h), after its post-norm where the
 * architecture has one (Gemma 3): arg 0 the attention's, after which h =
 * norm(x) feeds the feed-forward; arg 1 the feed-forward's. */
static void rows_residual(heed_model *m, uint32_t il, int arg, size_t r0, size_t r1) {
  const model_layer *l = &m->layers[il];
  const float *post = arg ? l->post_ffn_norm : l->post_attn_norm;
  const size_t d = m->cfg.n_embd;
  for (size_t r = r0; r < r1; r++) {
    float *h = m->h + r * d, *x = m->x + r * d;
    if (post) rmsnorm(h, h, post, d, m->cfg.rms_eps);
    for (size_t i = 0; i < d; i++) x[i] += h[i];
    if (!arg) rmsnorm(h, x, l->ffn_norm, d, m->cfg.rms_eps);
  }
}

static heed_status layer(heed_model *m, uint32_t il, const heed_model_batch_seq *seqs, unsigned n_seqs, size_t rows,
                         unsigned n_decode, int *rope_local) {
  const heed_model_config *c = &m->cfg;
  const model_layer *l = &m->layers[il];
  const size_t d = c->n_embd, qd = (size_t)c->n_head * c->head_dim_k, kd = (size_t)c->n_head_kv * c->head_dim_k,
               vd = (size_t)c->n_head_kv * c->head_dim_v, od = (size_t)c->n_head * c->head_dim_v;
  heed_status st;

  /* attention: h = norm(x); q, k, v (+ biases, per-head norms), RoPE */
  over_rows(m, il, 0, rows, rows_attn_norm);
  if ((st = matmul(m, &l->wq, rows, m->h, d, m->q, qd, "attn_q", il)) ||
      (st = matmul(m, &l->wk, rows, m->h, d, m->k, kd, "attn_k", il)) ||
      (st = matmul(m, &l->wv, rows, m->h, d, m->v, vd, "attn_v", il)))
    return st;
  const int local = l->swa && c->arch == HEED_ARCH_GEMMA3;
  over_rows(m, il, *rope_local != local ? 1 + local : 0, rows, rows_qkv);
  *rope_local = local;

  /* K/V into the cache, then attention */
  double t_att = model_now();
  for (unsigned i = 0; i < n_seqs; i++) {
    size_t r0 = m->row0[i];
    st = heed_kv_seq_append(l->kv, seqs[i].seq, seqs[i].n_tokens, m->k + r0 * kd, m->v + r0 * vd);
    if (st) return model_fail(m, st, "layer %u: K/V append: %s", il, heed_kv_cache_last_error(l->kv));
  }
  heed_attn_params p = {.n_q_heads = c->n_head, .n_kv_heads = c->n_head_kv, .dk = c->head_dim_k, .dv = c->head_dim_v,
                        .scale = 1.0f / sqrtf((float)c->head_dim_k), .window = l->swa ? c->sliding_window : 0};
  if (n_decode) {
    st = heed_attn_decode(m->rt, l->kv, &p, m->dseqs, n_decode, m->q, m->att, NULL, m->attn_work, m->attn_work_bytes);
    if (st) return model_fail(m, st, "layer %u: attention: %s", il, heed_runtime_last_error(m->rt));
  }
  for (unsigned o = n_decode; o < n_seqs; o++) {
    unsigned i = m->order[o];
    size_t r0 = m->row0[i];
    heed_attn_seq s = {.seq = seqs[i].seq};
    st = heed_attn_prefill(m->rt, l->kv, &p, s, (unsigned)m->len0[i], seqs[i].n_tokens, m->q + r0 * qd, m->att + r0 * od,
                           NULL, m->attn_work, m->attn_work_bytes);
    if (st) return model_fail(m, st, "layer %u: attention: %s", il, heed_runtime_last_error(m->rt));
  }
  m->stats.s_attention += model_now() - t_att;
  /* x += norm(att Wo); h = norm(x) */
  if ((st = matmul(m, &l->wo, rows, m->att, od, m->h, d, "attn_output", il))) return st;
  over_rows(m, il, 0, rows, rows_residual);

  /* feed-forward: x += norm((act(h Wg) * h Wu) Wd) */
  if ((st = matmul(m, &l->w_gate, rows, m->h, d, m->gate, c->n_ff, "ffn_gate", il)) ||
      (st = matmul(m, &l->w_up, rows, m->h, d, m->up, c->n_ff, "ffn_up", il)))
    return st;
  if ((st = heed_glu(m->rt, m->gelu ? HEED_GLU_GELU_TANH : HEED_GLU_SILU, m->gate, m->up, rows * c->n_ff)))
    return model_fail(m, st, "layer %u: gated activation: %s", il, heed_runtime_last_error(m->rt));
  if ((st = matmul(m, &l->w_down, rows, m->gate, c->n_ff, m->h, d, "ffn_down", il))) return st;
  over_rows(m, il, 1, rows, rows_residual);
  return HEED_OK;
}

heed_status heed_model_step(heed_model *m, const heed_model_batch_seq *seqs, unsigned n_seqs) {
  if (!m) return HEED_E_INVALID;
  m->err[0] = 0;
  const heed_model_config *c = &m->cfg;
  size_t rows = 0;
  unsigned n_decode = 0;
  heed_status st = check_batch(m, seqs, n_seqs, &rows);
  if (st || !rows) return st;
  if ((st = plan_rows(m, seqs, n_seqs, &n_decode))) return st;
  double t_step = model_now();
  heed_model_stats before = m->stats;

  /* x = embedding rows (gemma3: times sqrt(n_embd)) */
  const size_t d = c->n_embd;
  for (unsigned i = 0; i < n_seqs; i++)
    for (unsigned t = 0; t < seqs[i].n_tokens; t++) {
      float *x = m->x + (m->row0[i] + t) * d;
      const char *row = (const char *)m->tok_embd.data + (size_t)seqs[i].tokens[t] * m->tok_embd.row_bytes;
      heed_error e;
      if ((st = heed_weights_dequant(m->tok_embd.type, row, d, x, &e)))
        return model_fail(m, st, "token embedding: %s", e.msg);
      if (m->embd_scale != 1.0f)
        for (size_t k = 0; k < d; k++) x[k] *= m->embd_scale;
    }

  int rope_local = -1;
  for (uint32_t il = 0; il < c->n_layer; il++)
    if ((st = layer(m, il, seqs, n_seqs, rows, n_decode, &rope_local))) goto undo;

  /* logits = norm(x) Wout for the rows asked for */
  for (unsigned i = 0; i < n_seqs; i++) {
    const heed_model_batch_seq *s = &seqs[i];
    if (!s->n_logits) continue;
    size_t r0 = m->row0[i] + s->n_tokens - s->n_logits;
    for (size_t r = r0; r < r0 + s->n_logits; r++) rmsnorm(m->h + r * d, m->x + r * d, m->output_norm, d, c->rms_eps);
    if ((st = matmul(m, &m->output, s->n_logits, m->h + r0 * d, d, s->logits, c->n_vocab, "output", c->n_layer)))
      goto undo;
  }
  m->stats.steps++, m->stats.tokens += rows;
  m->stats.s_other += (model_now() - t_step) - (m->stats.s_matmul - before.s_matmul) -
                      (m->stats.s_attention - before.s_attention);
  return HEED_OK;
undo:
  /* no sequence grows on failure */
  for (unsigned i = 0; i < n_seqs; i++)
    for (uint32_t il = 0; il < c->n_layer; il++)
      if (heed_kv_seq_len(m->layers[il].kv, seqs[i].seq) > m->len0[i])
        heed_kv_seq_truncate(m->layers[il].kv, seqs[i].seq, (unsigned)m->len0[i]);
  return st;
}
