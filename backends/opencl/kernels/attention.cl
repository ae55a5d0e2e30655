/* attention.cl - tiled attention over the paged KV cache, split over keys.
 *
 * attn_part: one work-group per (split, row block, sequence x KV head). Its
 * ROWS rows are (query, head) pairs of one KV head's GQA group, so every K/V
 * element staged in local memory serves all the heads that read it. Keys are
 * walked in tiles of tk (a multiple of 16, so a tile never straddles a K
 * panel or a block): the K tile is staged [dk][tk], scores go to local
 * memory, each row's running max and sum are updated online
 * (FlashAttention-2), then the V tile is staged [tk][dv] and multiplied in.
 * Each work-item keeps ACC accumulators: output element lid + i*WG of the
 * block's [ROWS][dv]. The unnormalised result (m, l, acc) of each split goes
 * to a record; attn_merge folds the splits and the sink, normalises, and
 * writes out and lse.
 *
 * info, per sequence (10 ints): table offset, keys held, n_q, position of
 * its first query, tree-mask offset (-1: causal), first record, row blocks,
 * first query row, pool blocks, residual slot (-1: none). Keys in the first
 * `pool blocks` blocks are read through the table; the rest (a quantized
 * cache's last, partial block) from the sequence's residual block.
 * lay: the cache's layout (LAY_*, from attention/kv_internal.h).
 * Records: [ROWS] m, [ROWS] l, [ROWS][dv] acc. */

#define INFO_TABLE 0
#define INFO_KEYS 1
#define INFO_NQ 2
#define INFO_POS0 3
#define INFO_MASK 4
#define INFO_REC 5
#define INFO_NRB 6
#define INFO_QROW 7
#define INFO_NFULL 8
#define INFO_RES 9
#define INFO_INTS 10

#define LAY_BL 0
#define LAY_BLOCK 1
#define LAY_K_HEAD 2
#define LAY_V_OFF 3
#define LAY_V_HEAD 4
#define LAY_AUX 5
#define LAY_K_AUX 6
#define LAY_V_AUX 7
#define LAY_RES 8
#define LAY_RES_BYTES 9
#define LAY_RES_K_HEAD 10
#define LAY_RES_V_OFF 11
#define LAY_RES_V_HEAD 12
#define LAY_KT 13
#define LAY_VT 14
#define LAY_RES_KT 15
#define LAY_RES_VT 16
#define LAY_K_GROUP 17
#define LAY_V_GROUP 18
#define LAY_COUNT 19

/* x read by ld_run from a quantized array, scaled: q8 code * scale,
 * q4 code * scale + min (scales at aux[at], mins n_groups further), fp8
 * value * the (block, head) scale. */
static inline float dequant(float x, int dt, const __global uchar *aux, size_t at, size_t n_groups) {
  if (dt < DT_Q8) return x;
  if (dt >= DT_E4M3) return x * *(const __global float *)aux;
  const __global half *sc = (const __global half *)aux;
  return dt == DT_Q4 ? x * vload_half(at, sc) + vload_half(n_groups + at, sc) : x * vload_half(at, sc);
}

__kernel __attribute__((reqd_work_group_size(WG, 1, 1))) void attn_part(
    __global const uchar *kv, __global const uint *tables, __global const int *info, __global const float *q,
    __global const uchar *masks, __global float *rec, uint H, uint KH, uint dk, uint dv, __global const ulong *lay,
    float scale, uint window, float softcap, uint n_splits,
    uint tk, __local float *qs, __local float *kvs, __local float *ss, __local float *st) {
  const uint lid = get_local_id(0), split = get_group_id(0), rb = get_group_id(1);
  const uint seq = get_group_id(2) / KH, kvh = get_group_id(2) % KH, G = H / KH;
  __global const int *in = info + INFO_INTS * seq;
  const uint bl = (uint)lay[LAY_BL], kg = (uint)lay[LAY_K_GROUP], vg = (uint)lay[LAY_V_GROUP];
  const int kt = (int)lay[LAY_KT], vt = (int)lay[LAY_VT], rkt = (int)lay[LAY_RES_KT], rvt = (int)lay[LAY_RES_VT];
  const ulong block_bytes = lay[LAY_BLOCK], k_head = lay[LAY_K_HEAD], v_off = lay[LAY_V_OFF], v_head = lay[LAY_V_HEAD];
  const ulong k_aux = lay[LAY_AUX] + kvh * lay[LAY_K_AUX], v_aux = lay[LAY_AUX] + KH * lay[LAY_K_AUX] + kvh * lay[LAY_V_AUX];
  const size_t k_groups = (size_t)(bl / kg) * dk, v_groups = (size_t)bl * (dv / vg);
  const uint n_full = (uint)in[INFO_NFULL];
  __global const uchar *res = in[INFO_RES] < 0 ? kv : kv + lay[LAY_RES] + (size_t)in[INFO_RES] * lay[LAY_RES_BYTES];
  __global const uchar *res_k = res + kvh * lay[LAY_RES_K_HEAD], *res_v = res + lay[LAY_RES_V_OFF] + kvh * lay[LAY_RES_V_HEAD];
  const uint n_q = (uint)in[INFO_NQ], pos0 = (uint)in[INFO_POS0], n_rb = (uint)in[INFO_NRB];
  /* a row block past this sequence's runs no tile and writes nothing (no early
   * return: every work-item reaches every barrier) */
  const int active = rb < n_rb;
  const uint rows = n_q * G, r0 = rb * ROWS;
  const int mask_off = in[INFO_MASK];
  __global const uint *table = tables + in[INFO_TABLE];
  __local float *m_ = st, *l_ = st + ROWS, *a_ = st + 2 * ROWS;
  __global float *out = rec + (size_t)(in[INFO_REC] + ((size_t)kvh * n_rb + rb) * n_splits + split) * ROWS * (2 + dv);

  /* the keys these rows may see, 16-aligned, and this split's share */
  uint qi_lo = r0 / G, qi_hi = min(n_q - 1, (r0 + ROWS - 1) / G);
  uint key_hi = pos0 + qi_hi + 1, first = pos0 + qi_lo;
  uint key_lo = window && first + 1 > window ? first + 1 - window : 0;
  key_lo &= ~15u;
  uint per = (key_hi - key_lo + n_splits - 1) / n_splits;
  per = (per + 15) & ~15u;
  uint s_lo = key_lo + split * per, s_hi = active ? min(key_hi, s_lo + per) : 0;

  for (uint e = lid; e < ROWS * dk; e += WG) {
    uint r = e / dk, gr = r0 + r;
    float x = 0.0f;
    if (gr < rows) {
      uint qi = gr / G, h = kvh * G + gr % G;
      x = q[((size_t)(in[INFO_QROW] + qi) * H + h) * dk + e % dk] * scale;
    }
    qs[e] = x;
  }
  for (uint r = lid; r < ROWS; r += WG) {
    m_[r] = -INFINITY;
    l_[r] = 0.0f;
  }
  float acc[ACC];
  for (int i = 0; i < ACC; i++) acc[i] = 0.0f;
  barrier(CLK_LOCAL_MEM_FENCE);

  for (uint t0 = s_lo; t0 < s_hi; t0 += tk) {
    const uint nk = min(tk, s_hi - t0);
    /* K tile [dk][tk]: panel by panel, a panel's [dk][16] read in order */
    for (uint e = lid; e < tk * dk; e += WG) {
      uint p = e / (16 * dk), w = e % (16 * dk), d = w / 16, j = p * 16 + w % 16;
      float x = 0.0f;
      if (j < nk) {
        uint key = t0 + j, b = key / bl, row = key % bl;
        size_t i = (size_t)(row / 16) * dk * 16 + (size_t)d * 16 + row % 16;
        if (b < n_full) {
          const __global uchar *blk = kv + (size_t)table[b] * block_bytes;
          x = dequant(ld_run(blk + kvh * k_head, i, kt), kt, blk + k_aux, (size_t)(row / kg) * dk + d, k_groups);
        } else {
          x = ld_run(res_k, i, rkt);
        }
      }
      kvs[d * tk + j] = x;
    }
    barrier(CLK_LOCAL_MEM_FENCE);
    for (uint e = lid; e < ROWS * tk; e += WG) {
      uint r = e / tk, j = e % tk, gr = r0 + r, key = t0 + j;
      float s = -INFINITY;
      if (j < nk && gr < rows) {
        uint qi = gr / G, pos = pos0 + qi;
        int vis = key <= pos && (!window || pos - key < window);
        if (vis && mask_off >= 0 && key >= pos0) vis = masks[mask_off + qi * n_q + (key - pos0)] != 0;
        if (vis) {
          float dot = 0.0f;
          for (uint d = 0; d < dk; d++) dot = fma(qs[r * dk + d], kvs[d * tk + j], dot);
          s = softcap > 0.0f ? softcap * tanh(dot / softcap) : dot;
        }
      }
      ss[e] = s;
    }
    barrier(CLK_LOCAL_MEM_FENCE);
    if (lid < ROWS) { /* online softmax of row lid: new max, rescale, exponentiate (ROWS <= WG) */
      const uint r = lid;
      float mo = m_[r], mx = mo;
      for (uint j = 0; j < tk; j++) mx = fmax(mx, ss[r * tk + j]);
      float alpha = mx == -INFINITY ? 1.0f : exp(mo - mx), sum = 0.0f;
      for (uint j = 0; j < tk; j++) {
        float s = ss[r * tk + j], pj = s == -INFINITY ? 0.0f : exp(s - mx);
        ss[r * tk + j] = pj;
        sum += pj;
      }
      m_[r] = mx;
      l_[r] = l_[r] * alpha + sum;
      a_[r] = alpha;
    }
    /* Not needed by the memory model (the V tile does not touch what the
     * softmax reads), but PoCL 3.1 drops the softmax block above without it. */
    barrier(CLK_LOCAL_MEM_FENCE);
    /* V tile [tk][dv], rows read in order */
    for (uint e = lid; e < tk * dv; e += WG) {
      uint j = e / dv, c = e % dv;
      float x = 0.0f;
      if (j < nk) {
        uint key = t0 + j, b = key / bl, row = key % bl;
        size_t i = (size_t)row * dv + c;
        if (b < n_full) {
          const __global uchar *blk = kv + (size_t)table[b] * block_bytes;
          x = dequant(ld_run(blk + v_off + kvh * v_head, i, vt), vt, blk + v_aux, (size_t)row * (dv / vg) + c / vg, v_groups);
        } else {
          x = ld_run(res_v, i, rvt);
        }
      }
      kvs[e] = x; /* K is no longer read: the scores are done */
    }
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int i = 0; i < ACC; i++) {
      uint e = lid + (uint)i * WG;
      if (e < ROWS * dv) {
        uint r = e / dv, c = e % dv;
        float a = acc[i] * a_[r];
        for (uint j = 0; j < nk; j++) a = fma(ss[r * tk + j], kvs[j * dv + c], a);
        acc[i] = a;
      }
    }
    barrier(CLK_LOCAL_MEM_FENCE);
  }
  if (!active) return;
  for (uint r = lid; r < ROWS; r += WG) {
    out[r] = m_[r];
    out[ROWS + r] = l_[r];
  }
  for (int i = 0; i < ACC; i++) {
    uint e = lid + (uint)i * WG;
    if (e < ROWS * dv) out[2 * ROWS + e] = acc[i];
  }
}

/* One work-item per output element: omap[o] = (first record, row) of output
 * row o = query row * H + head. Splits and the head's sink join one softmax. */
__kernel void attn_merge(__global const float *rec, __global const int *omap, __global const float *sinks, uint H,
                         uint dv, uint n_splits, __global float *out, __global float *lse, uint n_out) {
  size_t gid = get_global_id(0);
  uint o = gid / dv, c = gid % dv;
  if (o >= n_out) return;
  uint h = o % H, r = (uint)omap[2 * o + 1];
  __global const float *r0 = rec + (size_t)omap[2 * o] * ROWS * (2 + dv);
  size_t step = (size_t)ROWS * (2 + dv);
  float m = -INFINITY;
  for (uint s = 0; s < n_splits; s++) m = fmax(m, r0[s * step + r]);
  float sk = sinks ? sinks[h] : -INFINITY, mf = fmax(m, sk);
  float l = 0.0f, a = 0.0f;
  if (mf != -INFINITY) {
    for (uint s = 0; s < n_splits; s++) {
      __global const float *x = r0 + s * step;
      float ms = x[r];
      if (ms == -INFINITY) continue;
      float w = exp(ms - mf);
      l += w * x[ROWS + r];
      a += w * x[2 * ROWS + r * dv + c];
    }
    if (sinks) l += exp(sk - mf);
  }
  out[(size_t)o * dv + c] = l > 0.0f ? a / l : 0.0f;
  if (lse && c == 0) lse[o] = l > 0.0f ? mf + log(l) : -INFINITY;
}
