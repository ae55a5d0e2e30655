/* common.cl - element access shared by heed's OpenCL kernels.
 *
 * Storage types are heed_dtype values (heed/dtype.h): 0 f32, 1 f16, 2 bf16,
 * then the KV formats of heed/quant.h: 3 q8, 4 q4, 5 e4m3, 6 e5m2.
 * f16 goes through vload_half/vstore_half, which OpenCL 1.2 has without
 * cl_khr_fp16, so a device without half arithmetic runs every kernel. All
 * arithmetic is f32. Built with -DWG=... -DROWS=... -DDMAX=... (cl_backend.c). */

#define DT_F32 0
#define DT_F16 1
#define DT_BF16 2
#define DT_Q8 3
#define DT_Q4 4
#define DT_E4M3 5
#define DT_E5M2 6

/* Element i of an array of type dt starting at byte p. */
static inline float ld_elem(const __global uchar *p, size_t i, int dt) {
  if (dt == DT_F32) return ((const __global float *)p)[i];
  if (dt == DT_F16) return vload_half(i, (const __global half *)p);
  return as_float((uint)((const __global ushort *)p)[i] << 16);
}

/* Round to nearest even, as heed_f32_to_bf16 (values are finite: append checks). */
static inline ushort to_bf16(float x) {
  uint u = as_uint(x);
  u += 0x7fffu + ((u >> 16) & 1u);
  return (ushort)(u >> 16);
}

static inline void st_elem(__global uchar *p, size_t i, float x, int dt) {
  if (dt == DT_F32)
    ((__global float *)p)[i] = x;
  else if (dt == DT_F16)
    vstore_half_rte(x, i, (__global half *)p);
  else
    ((__global ushort *)p)[i] = to_bf16(x);
}

/* fp8 codes as values (heed/quant.h): sign, exponent, mantissa. Neither a
 * NaN nor an infinity is ever stored (the encoders saturate, append refuses
 * non-finite input), so only normal and subnormal codes are decoded. */
static inline float e4m3_value(uint c) {
  uint e = (c >> 3) & 15u, m = c & 7u;
  float v = e ? ldexp((float)(8u + m), (int)e - 10) : ldexp((float)m, -9);
  return c & 0x80u ? -v : v;
}
static inline float e5m2_value(uint c) {
  uint e = (c >> 2) & 31u, m = c & 3u;
  float v = e ? ldexp((float)(4u + m), (int)e - 17) : ldexp((float)m, -16);
  return c & 0x80u ? -v : v;
}

/* Element i of a KV array of type dt stored in runs of 16 (heed/attention.h):
 * the value of a float type, the code of a q8/q4 one (scales apply outside),
 * the unscaled value of an fp8 one. A q4 run is 8 bytes: element j < 8 in the
 * low nibble of byte j, element j >= 8 in the high nibble of byte j - 8. */
static inline float ld_run(const __global uchar *p, size_t i, int dt) {
  if (dt <= DT_BF16) return ld_elem(p, i, dt);
  if (dt == DT_Q8) return (float)((const __global char *)p)[i];
  if (dt == DT_Q4) {
    uint j = (uint)(i % 16), b = p[i / 16 * 8 + (j & 7u)];
    return (float)(j < 8 ? b & 15u : b >> 4);
  }
  return dt == DT_E4M3 ? e4m3_value(p[i]) : e5m2_value(p[i]);
}
