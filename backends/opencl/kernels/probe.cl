/* probe.cl - the device's read bandwidth, the limit `heed bench --backend
 * opencl` puts beside each kernel: every work-item sums a strided walk over
 * float4s (coalesced: neighbours read neighbours), one store per work-item
 * so the reads cannot be dropped. */
__kernel void probe_read(__global const float4 *src, ulong n4, __global float *sink) {
  size_t gid = get_global_id(0), stride = get_global_size(0);
  float4 acc = (float4)(0.0f);
  for (size_t i = gid; i < n4; i += stride) acc += src[i];
  sink[gid] = acc.x + acc.y + acc.z + acc.w;
}
