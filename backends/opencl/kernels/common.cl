/* common.cl - element access shared by heed's OpenCL kernels.
 *
 * Storage types are heed_dtype values (heed/dtype.h): 0 f32, 1 f16, 2 bf16.
 * f16 goes through vload_half/vstore_half, which OpenCL 1.2 has without
 * cl_khr_fp16, so a device without half arithmetic runs every kernel. All
 * arithmetic is f32. Built with -DWG=... -DROWS=... -DACC=... (cl_backend.c). */

#define DT_F32 0
#define DT_F16 1
#define DT_BF16 2

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
