/* bench/bench_unfused_cl.c - CLBlast SGEMM, softmax kernel, CLBlast SGEMM
 * (bench/bench_unfused_cl.h). */
#define CL_TARGET_OPENCL_VERSION 120
#include <CL/cl.h>
#include <clblast_c.h>
#include <stdio.h>
#include <stdlib.h>

#include "backends/opencl/cl_backend.h"
#include "bench/bench_unfused_cl.h"

/* One work-group per score row; row r belongs to query r / rows_per_query,
 * which sees columns j <= q_start + that query (causal). What it does not see
 * becomes 0, the rest exp(s - max) / sum. */
static const char softmax_src[] =
    "__kernel void softmax_rows(__global float *s, uint n, uint ld, uint q_start, uint rows_per_query,\n"
    "                           __local float *red) {\n"
    "  uint r = get_group_id(0), lid = get_local_id(0), wg = get_local_size(0);\n"
    "  __global float *x = s + (size_t)r * ld;\n"
    "  uint lim = min(n, q_start + r / rows_per_query + 1);\n"
    "  float m = -INFINITY;\n"
    "  for (uint j = lid; j < lim; j += wg) m = fmax(m, x[j]);\n"
    "  red[lid] = m;\n"
    "  barrier(CLK_LOCAL_MEM_FENCE);\n"
    "  for (uint h = wg / 2; h > 0; h /= 2) {\n"
    "    if (lid < h) red[lid] = fmax(red[lid], red[lid + h]);\n"
    "    barrier(CLK_LOCAL_MEM_FENCE);\n"
    "  }\n"
    "  m = red[0];\n"
    "  barrier(CLK_LOCAL_MEM_FENCE);\n"
    "  float sum = 0.0f;\n"
    "  for (uint j = lid; j < lim; j += wg) {\n"
    "    float e = exp(x[j] - m);\n"
    "    x[j] = e;\n"
    "    sum += e;\n"
    "  }\n"
    "  red[lid] = sum;\n"
    "  barrier(CLK_LOCAL_MEM_FENCE);\n"
    "  for (uint h = wg / 2; h > 0; h /= 2) {\n"
    "    if (lid < h) red[lid] += red[lid + h];\n"
    "    barrier(CLK_LOCAL_MEM_FENCE);\n"
    "  }\n"
    "  float inv = 1.0f / red[0];\n"
    "  for (uint j = lid; j < n; j += wg) x[j] = j < lim ? x[j] * inv : 0.0f;\n"
    "}\n";

struct heed_cl_unfused {
  cl_context ctx;
  cl_command_queue q;
  cl_program prog;
  cl_kernel softmax;
  size_t wg;
  cl_mem k, v, qb, s, out;
  unsigned q_heads, kv_heads, max_ctx, d, max_q, max_rows;
};

static int fail(const char *what, int code) {
  fprintf(stderr, "heed bench attention: CLBlast baseline: %s failed (%d)\n", what, code);
  return -1;
}

void heed_cl_unfused_close(heed_cl_unfused *u) {
  if (!u) return;
  cl_mem m[] = {u->k, u->v, u->qb, u->s, u->out};
  for (size_t i = 0; i < sizeof m / sizeof m[0]; i++)
    if (m[i]) clReleaseMemObject(m[i]);
  if (u->softmax) clReleaseKernel(u->softmax);
  if (u->prog) clReleaseProgram(u->prog);
  free(u);
}

heed_cl_unfused *heed_cl_unfused_open(heed_runtime *rt, const float *k32, const float *v32, unsigned q_heads,
                                      unsigned kv_heads, unsigned max_ctx, unsigned d, unsigned max_q) {
  void *ctx, *q, *dev;
  if (heed_cl_runtime_queue(rt, &ctx, &q, &dev) != HEED_OK) {
    fprintf(stderr, "heed bench attention: CLBlast baseline: the runtime is not on the opencl backend\n");
    return NULL;
  }
  heed_cl_unfused *u = calloc(1, sizeof *u);
  if (!u) return NULL;
  unsigned G = q_heads / kv_heads;
  *u = (heed_cl_unfused){.ctx = ctx, .q = q, .q_heads = q_heads, .kv_heads = kv_heads, .max_ctx = max_ctx, .d = d,
                         .max_q = max_q, .max_rows = max_q > G ? max_q : G};
  size_t max_wg = 1;
  clGetDeviceInfo(dev, CL_DEVICE_MAX_WORK_GROUP_SIZE, sizeof max_wg, &max_wg, NULL);
  for (u->wg = 1; u->wg * 2 <= max_wg && u->wg < 256; u->wg *= 2) {
  }
  const char *src = softmax_src;
  cl_int rc;
  u->prog = clCreateProgramWithSource(u->ctx, 1, &src, NULL, &rc);
  if (rc == CL_SUCCESS) rc = clBuildProgram(u->prog, 1, (cl_device_id *)&dev, "-cl-std=CL1.2", NULL, NULL);
  if (rc == CL_SUCCESS) u->softmax = clCreateKernel(u->prog, "softmax_rows", &rc);
  if (rc != CL_SUCCESS) {
    fail("building the softmax kernel", rc);
    goto bad;
  }
  size_t kv_bytes = (size_t)kv_heads * max_ctx * d * sizeof(float);
  cl_mem *bufs[] = {&u->k, &u->v, &u->qb, &u->s, &u->out};
  size_t qo_bytes = (size_t)max_q * q_heads * d * sizeof(float);
  size_t sizes[] = {kv_bytes, kv_bytes, qo_bytes, (size_t)u->max_rows * max_ctx * sizeof(float), qo_bytes};
  for (int i = 0; i < 5; i++) {
    *bufs[i] = clCreateBuffer(u->ctx, CL_MEM_READ_WRITE, sizes[i], NULL, &rc);
    if (rc != CL_SUCCESS) {
      fprintf(stderr, "heed bench attention: CLBlast baseline: a device buffer of %zu bytes failed (%d)\n", sizes[i], rc);
      goto bad;
    }
  }
  rc = clEnqueueWriteBuffer(u->q, u->k, CL_TRUE, 0, kv_bytes, k32, 0, NULL, NULL);
  if (rc == CL_SUCCESS) rc = clEnqueueWriteBuffer(u->q, u->v, CL_TRUE, 0, kv_bytes, v32, 0, NULL, NULL);
  if (rc != CL_SUCCESS) {
    fail("uploading K/V", rc);
    goto bad;
  }
  return u;
bad:
  heed_cl_unfused_close(u);
  return NULL;
}

/* s[rows][L] -> softmax, row r seeing keys <= q_start + r / rpq */
static int softmax(heed_cl_unfused *u, unsigned rows, unsigned L, unsigned q_start, unsigned rpq) {
  cl_uint n = L, ld = L, q0 = q_start, per = rpq;
  cl_int rc = clSetKernelArg(u->softmax, 0, sizeof(cl_mem), &u->s);
  rc |= clSetKernelArg(u->softmax, 1, 4, &n);
  rc |= clSetKernelArg(u->softmax, 2, 4, &ld);
  rc |= clSetKernelArg(u->softmax, 3, 4, &q0);
  rc |= clSetKernelArg(u->softmax, 4, 4, &per);
  rc |= clSetKernelArg(u->softmax, 5, u->wg * sizeof(float), NULL);
  if (rc != CL_SUCCESS) return fail("softmax arguments", rc);
  size_t global = (size_t)rows * u->wg;
  rc = clEnqueueNDRangeKernel(u->q, u->softmax, 1, NULL, &global, &u->wg, 0, NULL, NULL);
  return rc == CL_SUCCESS ? 0 : fail("softmax", rc);
}

int heed_cl_unfused_run(heed_cl_unfused *u, unsigned q_start, unsigned n_q, float scale, const float *q, float *out) {
  const unsigned q_heads = u->q_heads, G = q_heads / u->kv_heads, d = u->d, L = q_start + n_q;
  /* decode: the G heads of a group are one GEMM's rows; prefill: a head's queries */
  const int grouped = n_q == 1;
  const unsigned rows = grouped ? G : n_q;
  if (n_q < 1 || n_q > u->max_q || L > u->max_ctx) {
    fprintf(stderr, "heed bench attention: CLBlast baseline: %u queries over %u keys; it was opened for %u over %u\n", n_q, L,
            u->max_q, u->max_ctx);
    return -1;
  }
  size_t qbytes = (size_t)n_q * q_heads * d * sizeof(float);
  cl_int rc = clEnqueueWriteBuffer(u->q, u->qb, CL_FALSE, 0, qbytes, q, 0, NULL, NULL);
  if (rc != CL_SUCCESS) return fail("uploading q", rc);
  const unsigned n_units = grouped ? u->kv_heads : q_heads;
  for (unsigned i = 0; i < n_units; i++) {
    unsigned g = grouped ? i : i / G;
    size_t q_off = grouped ? (size_t)g * G * d : (size_t)i * d, ld = grouped ? d : (size_t)q_heads * d;
    size_t kv_off = (size_t)g * u->max_ctx * d;
    CLBlastStatusCode st = CLBlastSgemm(CLBlastLayoutRowMajor, CLBlastTransposeNo, CLBlastTransposeYes, rows, L, d, scale,
                                        u->qb, q_off, ld, u->k, kv_off, d, 0.0f, u->s, 0, L, &u->q, NULL);
    if (st != CLBlastSuccess) return fail("CLBlastSgemm (Q K^T)", st);
    if (softmax(u, rows, L, q_start, grouped ? G : 1)) return -1;
    st = CLBlastSgemm(CLBlastLayoutRowMajor, CLBlastTransposeNo, CLBlastTransposeNo, rows, d, L, 1.0f, u->s, 0, L, u->v,
                      kv_off, d, 0.0f, u->out, q_off, ld, &u->q, NULL);
    if (st != CLBlastSuccess) return fail("CLBlastSgemm (P V)", st);
  }
  rc = clEnqueueReadBuffer(u->q, u->out, CL_TRUE, 0, qbytes, out, 0, NULL, NULL);
  return rc == CL_SUCCESS ? 0 : fail("reading the output", rc);
}
