/* probe.cl - the device's limits that `heed bench --backend opencl` puts
 * beside each kernel. Read bandwidth: every work-item sums a strided walk
 * over float4s (coalesced: neighbours read neighbours), one store per
 * work-item so the reads cannot be dropped. */
__kernel void probe_read(__global const float4 *src, ulong n4, __global float *sink) {
  size_t gid = get_global_id(0), stride = get_global_size(0);
  float4 acc = (float4)(0.0f);
  for (size_t i = gid; i < n4; i += stride) acc += src[i];
  sink[gid] = acc.x + acc.y + acc.z + acc.w;
}

/* The device's multiply-add peak: 8 independent float4 chains per
 * work-item, so each round is 8 x 4 lanes x 2 = 64 flops. */
__kernel void probe_fma(uint iters, float x, __global float *sink) {
  float4 a0 = (float4)(x), a1 = a0 + 1.0f, a2 = a0 + 2.0f, a3 = a0 + 3.0f;
  float4 a4 = a0 + 4.0f, a5 = a0 + 5.0f, a6 = a0 + 6.0f, a7 = a0 + 7.0f;
  const float4 m = (float4)(0.999999f), k = (float4)(1e-7f);
  for (uint i = 0; i < iters; i++) {
    a0 = fma(a0, m, k); a1 = fma(a1, m, k); a2 = fma(a2, m, k); a3 = fma(a3, m, k);
    a4 = fma(a4, m, k); a5 = fma(a5, m, k); a6 = fma(a6, m, k); a7 = fma(a7, m, k);
  }
  float4 s = a0 + a1 + a2 + a3 + a4 + a5 + a6 + a7;
  sink[get_global_id(0)] = s.x + s.y + s.z + s.w;
}
