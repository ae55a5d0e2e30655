/* spec.cl - the vocabulary passes of heed_spec (spec/spec.c) on the device.
 *
 * A verifier's rows live in one buffer x, [slots][V] f32; slot s is row s of
 * the verifier's layout (target rows, then dense-logit draft rows). Passes
 * that cover several rows take a slot list: work-group (c, i) covers chunk c
 * of row slots[i] and writes part (i, c), the same chunks (CHUNK elements)
 * the CPU path splits a row into, so the host merges parts the same way.
 *
 * spec_hist accumulates mass in 64-bit fixed point (2^-40 units) with 32-bit
 * atomics and an explicit carry: integer sums do not depend on the order the
 * work-items add in, so the histogram is the same on every run. */

/* Penalised values into the loaded rows: x[row[i]][pos[i]] = val[i]. */
__kernel void spec_scatter(__global float *x, uint V, __global const uint *row, __global const uint *pos,
                           __global const float *val, uint n) {
  uint i = get_global_id(0);
  if (i < n) x[(size_t)row[i] * V + pos[i]] = val[i];
}

/* Max, its first index and a NaN/+inf flag of each chunk. */
__kernel void spec_max(__global const float *x, uint V, uint chunk, __global const uint *slots,
                       __global float *pm, __global uint *parg, __global int *pbad) {
  __local float lm[WG];
  __local uint la[WG];
  __local int lb[WG];
  uint c = get_group_id(0), i = get_group_id(1), l = get_local_id(0);
  __global const float *row = x + (size_t)slots[i] * V;
  uint a = c * chunk, b = min(a + chunk, V);
  float m = -INFINITY;
  uint arg = a;
  int bad = 0;
  for (uint t = a + l; t < b; t += WG) { /* increasing t: the first of equal values stays */
    float v = row[t];
    bad |= isnan(v) || v == INFINITY;
    if (v > m) m = v, arg = t;
  }
  lm[l] = m, la[l] = arg, lb[l] = bad;
  barrier(CLK_LOCAL_MEM_FENCE);
  for (uint h = WG / 2; h > 0; h >>= 1) {
    if (l < h) {
      float o = lm[l + h];
      uint oa = la[l + h];
      if (o > lm[l] || (o == lm[l] && oa < la[l])) lm[l] = o, la[l] = oa;
      lb[l] |= lb[l + h];
    }
    barrier(CLK_LOCAL_MEM_FENCE);
  }
  if (l == 0) {
    size_t p = (size_t)i * get_num_groups(0) + c;
    pm[p] = lm[0], parg[p] = la[0], pbad[p] = lb[0];
  }
}

/* Sum over the chunk of exp((v - m) is) for v >= thr (m, thr: the row's, by i). */
__kernel void spec_sumexp(__global const float *x, uint V, uint chunk, __global const uint *slots,
                          __global const float *rm, __global const float *rthr, float is, __global float *pz) {
  __local float lz[WG];
  uint c = get_group_id(0), i = get_group_id(1), l = get_local_id(0);
  __global const float *row = x + (size_t)slots[i] * V;
  uint a = c * chunk, b = min(a + chunk, V);
  float m = rm[i], thr = rthr[i], z = 0.0f;
  for (uint t = a + l; t < b; t += WG) {
    float v = row[t];
    if (v >= thr) z += exp((v - m) * is);
  }
  lz[l] = z;
  barrier(CLK_LOCAL_MEM_FENCE);
  for (uint h = WG / 2; h > 0; h >>= 1) {
    if (l < h) lz[l] += lz[l + h];
    barrier(CLK_LOCAL_MEM_FENCE);
  }
  if (l == 0) pz[(size_t)i * get_num_groups(0) + c] = lz[0];
}

#define HIST_MAX 2048

/* lo/hi += v (64-bit, as two 32-bit words). */
static inline void add64_local(volatile __local uint *lo, volatile __local uint *hi, ulong v) {
  uint vl = (uint)v, old = atomic_add(lo, vl);
  atomic_add(hi, (uint)(v >> 32) + (uint)(old + vl < old));
}
static inline void add64_global(volatile __global uint *lo, volatile __global uint *hi, ulong v) {
  uint vl = (uint)v, old = atomic_add(lo, vl);
  atomic_add(hi, (uint)(v >> 32) + (uint)(old + vl < old));
}

/* Histogram of one row by distance below its max m: bucket
 * min((m - v) * is * bscale, nb - 1). mass = 0: every value is counted;
 * mass = 1: values whose exp((v - m) is) is positive are counted and their
 * mass added. Into gcnt[nb], glo[nb], ghi[nb] (zeroed by the host). */
__kernel void spec_hist(__global const float *x, uint V, uint slot, float m, float is, float bscale, uint nb, int mass,
                        __global uint *gcnt, __global uint *glo, __global uint *ghi) {
  __local uint cnt[HIST_MAX], lo[HIST_MAX], hi[HIST_MAX];
  uint l = get_local_id(0);
  for (uint k = l; k < nb; k += WG) cnt[k] = 0, lo[k] = 0, hi[k] = 0;
  barrier(CLK_LOCAL_MEM_FENCE);
  __global const float *row = x + (size_t)slot * V;
  for (uint t = get_global_id(0); t < V; t += get_global_size(0)) {
    float v = row[t], e = 0.0f;
    if (mass) {
      e = exp((v - m) * is);
      if (!(e > 0.0f)) continue;
    }
    float d = (m - v) * is * bscale;
    uint k = d < (float)(nb - 1) ? (uint)d : nb - 1;
    atomic_inc(&cnt[k]);
    if (mass) add64_local(&lo[k], &hi[k], (ulong)(e * 0x1p40f));
  }
  barrier(CLK_LOCAL_MEM_FENCE);
  for (uint k = l; k < nb; k += WG)
    if (cnt[k]) {
      atomic_add(&gcnt[k], cnt[k]);
      if (mass) add64_global(&glo[k], &ghi[k], ((ulong)hi[k] << 32) | lo[k]);
    }
}

/* The values of one row that are >= lo, in no particular order; *count
 * (zeroed by the host) ends as how many there are, of which the first cap
 * are stored. Each work-group gathers its own first, so the global counter
 * sees one atomic per group. */
__kernel void spec_collect(__global const float *x, uint V, uint slot, float lo, __global float *out, uint cap,
                           volatile __global uint *count) {
  __local float lv[WG];
  __local uint ln, base;
  uint t = get_global_id(0), l = get_local_id(0);
  if (l == 0) ln = 0;
  barrier(CLK_LOCAL_MEM_FENCE);
  float v = t < V ? x[(size_t)slot * V + t] : -INFINITY;
  if (t < V && v >= lo) lv[atomic_inc(&ln)] = v;
  barrier(CLK_LOCAL_MEM_FENCE);
  if (l == 0) base = ln ? atomic_add(count, ln) : 0;
  barrier(CLK_LOCAL_MEM_FENCE);
  if (l < ln && base + l < cap) out[base + l] = lv[l];
}
