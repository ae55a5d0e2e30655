/* kv.cl - writing tokens into the paged KV cache (layout in heed/attention.h):
 * K into panels [bl/16][dk][16] of its (block, head), V into rows [bl][dv]. */

/* Token t (0..n-1) goes to row (row0 + t) of the sequence's blocks, a slice
 * of its block table starting at the block row0 falls in.
 * k: [n][H][dk] f32; v: [n][H][dv] f32. Global size (16, H, n). */
__kernel void kv_put(__global uchar *kv, __global const uint *blocks, uint row0, __global const float *k,
                     __global const float *v, uint H, uint dk, uint dv, uint bl, ulong block_bytes, ulong k_head,
                     ulong v_off, ulong v_head, int kt, int vt) {
  uint lane = get_global_id(0), h = get_global_id(1), t = get_global_id(2);
  uint r = row0 + t, row = r % bl;
  __global uchar *blk = kv + (size_t)blocks[r / bl] * block_bytes;
  __global uchar *kb = blk + h * k_head;
  __global uchar *vb = blk + v_off + h * v_head;
  const __global float *kr = k + ((size_t)t * H + h) * dk;
  const __global float *vr = v + ((size_t)t * H + h) * dv;
  size_t panel = (size_t)(row / 16) * dk * 16 + row % 16;
  for (uint d = lane; d < dk; d += 16) st_elem(kb, panel + (size_t)d * 16, kr[d], kt);
  for (uint c = lane; c < dv; c += 16) st_elem(vb, (size_t)row * dv + c, vr[c], vt);
}
