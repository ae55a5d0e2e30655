/* attention.cl - tiled attention over the paged KV cache, split over keys.
 *
 * attn_part: one work-group per (split, row block, sequence x KV head). Its
 * ROWS rows are (query, head) pairs of one KV head's GQA group, so every K/V
 * element staged in local memory serves all the heads that read it. Keys are
 * walked in tiles of tk (a multiple of 16, so a tile never straddles a K
 * panel or a block): the K tile is staged [dk][tk], scores go to local
 * memory, each row's running max and sum are updated online
 * (FlashAttention-2), then the V tile is staged [tk][dv] and multiplied in.
 *
 * Register tiles. The rows go in WG/16 groups of SR, each served by 16
 * work-items (KL). For scores a work-item holds SR rows x (keys kl, kl+16,
 * ...): per channel it reads SR q values (the same for the whole group: a
 * broadcast) and its keys (neighbours read neighbours), then does SR
 * multiply-adds per key. For P.V it holds SR rows x (columns kl, kl+16, ...)
 * of the output the same way. (A first version with 4-row groups of WG/RG
 * work-items gave wrong output on PoCL 3.1 with 8 rows, 32 work-items a
 * group, though a host emulation of its index math was exact; 16-wide groups
 * run correctly in every variant.)
 * The unnormalised result (m, l, acc) of each split goes
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
#define LAY_LEAD 19
#define LAY_K_LEAD 20
#define LAY_V_LEAD 21
#define LAY_COUNT 22

#define KL 16                           /* work-items per row group */
#define SR (ROWS * KL / WG)             /* rows per group (WG / KL groups) */
#define MK ((64 + KL - 1) / KL)         /* keys per work-item (tiles of up to 64) */
#define MC ((DMAX + KL - 1) / KL)       /* output columns per work-item */

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
  /* a quantized side's row 0 of a pool block is its lead row, f16 (0 bytes: none) */
  const ulong k_lead = lay[LAY_K_LEAD] ? lay[LAY_LEAD] + kvh * lay[LAY_K_LEAD] : 0;
  const ulong v_lead = lay[LAY_V_LEAD] ? lay[LAY_LEAD] + KH * lay[LAY_K_LEAD] + kvh * lay[LAY_V_LEAD] : 0;
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
  /* per row: running max and sum; each lane's partial max and sum of a tile */
  __local float *m_ = st, *l_ = st + ROWS, *red_m = st + 2 * ROWS, *red_s = st + 2 * ROWS + ROWS * KL;
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
  const uint rg = lid / KL, kl = lid % KL, nc = (dv - min(kl, dv) + KL - 1) / KL; /* this work-item's columns: kl + n*KL < dv */
  float acc[SR][MC], alpha[SR], m_new[SR];
  for (int i = 0; i < SR; i++)
    for (int n = 0; n < MC; n++) acc[i][n] = 0.0f;
  barrier(CLK_LOCAL_MEM_FENCE);

  for (uint t0 = s_lo; t0 < s_hi; t0 += tk) {
    const uint nk = min(tk, s_hi - t0);
    /* K tile [dk][tk], panel by panel: the 16 keys of a panel share a block
     * (tiles start 16-aligned, blocks are multiples of 16), and the panel's
     * [dk][16] elements are contiguous, read in order */
    for (uint p = 0; p < tk / 16; p++) {
      const uint key0 = t0 + p * 16, b = key0 / bl, row0 = key0 % bl;
      const int pool = b < n_full && p * 16 < nk; /* (a panel past the split's keys reads nothing) */
      const __global uchar *blk = pool ? kv + (size_t)table[b] * block_bytes : kv;
      const __global uchar *src = pool ? blk + kvh * k_head : res_k;
      const int dt = pool ? kt : rkt;
      const size_t base = (size_t)(row0 / 16) * dk * 16, sc0 = (size_t)(row0 / kg) * dk; /* a panel is within a K group */
      for (uint e = lid; e < 16 * dk; e += WG) {
        uint d = e / 16, j = p * 16 + e % 16;
        float x = 0.0f;
        if (j < nk) {
          if (pool && k_lead && row0 == 0 && e % 16 == 0)
            x = vload_half(d, (const __global half *)(blk + k_lead));
          else {
            x = ld_run(src, base + e, dt);
            if (pool) x = dequant(x, kt, blk + k_aux, sc0 + d, k_groups);
          }
        }
        kvs[d * tk + j] = x;
      }
    }
    barrier(CLK_LOCAL_MEM_FENCE);
    {
      const uint nm = (tk - min(kl, tk) + KL - 1) / KL; /* this work-item's keys: kl + m*KL < tk */
      float dot[SR][MK];
      for (int i = 0; i < SR; i++)
        for (int m = 0; m < MK; m++) dot[i][m] = 0.0f;
      __local const float *qg = qs + rg * SR * dk;
      for (uint d = 0; d < dk; d++) {
        float a[SR];
        for (int i = 0; i < SR; i++) a[i] = qg[i * dk + d];
        for (int m = 0; m < MK; m++)
          if (m < nm) {
            float kx = kvs[d * tk + kl + m * KL];
            for (int i = 0; i < SR; i++) dot[i][m] = fma(a[i], kx, dot[i][m]);
          }
      }
      for (int i = 0; i < SR; i++)
        for (int m = 0; m < MK; m++)
          if (m < nm) {
            uint r = rg * SR + i, j = kl + m * KL, gr = r0 + r, key = t0 + j;
            float s = -INFINITY;
            if (j < nk && gr < rows) {
              uint qi = gr / G, pos = pos0 + qi;
              int vis = key <= pos && (!window || pos - key < window);
              if (vis && mask_off >= 0 && key >= pos0) vis = masks[mask_off + qi * n_q + (key - pos0)] != 0;
              if (vis) s = softcap > 0.0f ? softcap * tanh(dot[i][m] / softcap) : dot[i][m];
            }
            dot[i][m] = s;
          }
      /* online softmax (FlashAttention-2), the row's lanes together: the
       * tile's max over the lanes' partial maxima, p = exp(s - max) into ss,
       * the lanes' partial sums; the rescale factor stays in registers */
      for (int i = 0; i < SR; i++) {
        float mx = -INFINITY;
        for (int m = 0; m < MK; m++)
          if (m < nm) mx = fmax(mx, dot[i][m]);
        red_m[(rg * SR + i) * KL + kl] = mx;
      }
      barrier(CLK_LOCAL_MEM_FENCE);
      for (int i = 0; i < SR; i++) {
        const uint r = rg * SR + i;
        float mo = m_[r], mx = mo, sum = 0.0f;
        for (uint l = 0; l < KL; l++) mx = fmax(mx, red_m[r * KL + l]);
        alpha[i] = mx == -INFINITY ? 1.0f : exp(mo - mx);
        m_new[i] = mx;
        for (int m = 0; m < MK; m++)
          if (m < nm) {
            float pj = dot[i][m] == -INFINITY ? 0.0f : exp(dot[i][m] - mx);
            ss[r * tk + kl + m * KL] = pj;
            sum += pj;
          }
        red_s[r * KL + kl] = sum;
      }
    }
    barrier(CLK_LOCAL_MEM_FENCE);
    if (kl == 0) /* every lane has read the old m_ */
      for (int i = 0; i < SR; i++) {
        const uint r = rg * SR + i;
        float sum = 0.0f;
        for (uint l = 0; l < KL; l++) sum += red_s[r * KL + l];
        l_[r] = l_[r] * alpha[i] + sum;
        m_[r] = m_new[i];
      }
    /* V tile [tk][dv], 16 rows (one block) at a time, rows read in order;
     * K is no longer read: the scores are done */
    for (uint p = 0; p < tk / 16; p++) {
      const uint key0 = t0 + p * 16, b = key0 / bl, row0 = key0 % bl;
      const int pool = b < n_full && p * 16 < nk; /* (a panel past the split's keys reads nothing) */
      const __global uchar *blk = pool ? kv + (size_t)table[b] * block_bytes : kv;
      const __global uchar *src = pool ? blk + v_off + kvh * v_head : res_v;
      const int dt = pool ? vt : rvt;
      const uint ng = dv / vg;
      for (uint jj = 0; jj < 16; jj++) {
        const uint j = p * 16 + jj, row = row0 + jj;
        for (uint c = lid; c < dv; c += WG) {
          float x = 0.0f;
          if (j < nk) {
            if (pool && v_lead && row == 0)
              x = vload_half(c, (const __global half *)(blk + v_lead));
            else {
              x = ld_run(src, (size_t)row * dv + c, dt);
              if (pool) x = dequant(x, vt, blk + v_aux, (size_t)row * ng + c / vg, v_groups);
            }
          }
          kvs[j * dv + c] = x;
        }
      }
    }
    barrier(CLK_LOCAL_MEM_FENCE);
    {
      __local const float *pg = ss + rg * SR * tk;
      for (int i = 0; i < SR; i++)
        for (int n = 0; n < MC; n++) acc[i][n] *= alpha[i];
      for (uint j = 0; j < nk; j++) {
        float pr[SR];
        for (int i = 0; i < SR; i++) pr[i] = pg[i * tk + j];
        for (int n = 0; n < MC; n++)
          if (n < nc) {
            float vx = kvs[j * dv + kl + n * KL];
            for (int i = 0; i < SR; i++) acc[i][n] = fma(pr[i], vx, acc[i][n]);
          }
      }
    }
    barrier(CLK_LOCAL_MEM_FENCE);
  }
  if (!active) return;
  for (uint r = lid; r < ROWS; r += WG) {
    out[r] = m_[r];
    out[ROWS + r] = l_[r];
  }
  for (int i = 0; i < SR; i++)
    for (int n = 0; n < MC; n++)
      if (n < nc) out[2 * ROWS + (rg * SR + i) * dv + kl + n * KL] = acc[i][n];
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
