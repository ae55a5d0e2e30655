/* bench/bench_unfused_cl.h - the unfused attention a user would write on an
 * OpenCL device: CLBlast SGEMM for S = scale * Q K^T, a row softmax kernel,
 * CLBlast SGEMM for O = P V, on f32 K/V in device memory, on the queue of
 * the runtime's OpenCL backend. The device twin of the oneDNN baseline;
 * part of the heed tool, not of libheed. */
#ifndef HEED_BENCH_UNFUSED_CL_H
#define HEED_BENCH_UNFUSED_CL_H

#include "heed/runtime.h"

typedef struct heed_cl_unfused heed_cl_unfused;

/* k32, v32: [kv_heads][max_ctx][d] f32, copied to the device; calls have
 * q_heads query heads and up to max_q queries. NULL, with the reason on
 * stderr, when it cannot open. */
heed_cl_unfused *heed_cl_unfused_open(heed_runtime *rt, const float *k32, const float *v32, unsigned q_heads,
                                      unsigned kv_heads, unsigned max_ctx, unsigned d, unsigned max_q);

/* Causal attention of n_q queries at positions q_start.. over keys
 * 0..q_start+n_q-1 (decode: n_q = 1). q: [n_q][q_heads][d]; out likewise.
 * Uploads q, runs, reads out back, as heed's own call does. 0 or -1 (stderr). */
int heed_cl_unfused_run(heed_cl_unfused *u, unsigned q_start, unsigned n_q, float scale, const float *q, float *out);

void heed_cl_unfused_close(heed_cl_unfused *u);

#endif
