/* spec/philox.c - Philox4x32-10 (Salmon, Moraes, Dror, Shaw: "Parallel random
 * numbers: as easy as 1, 2, 3", SC 2011), the counter-based generator every
 * heed backend draws from. The OpenCL kernels carry the same rounds. */
#include "heed/spec.h"

static inline void mulhilo(uint32_t a, uint32_t b, uint32_t *hi, uint32_t *lo) {
  uint64_t p = (uint64_t)a * b;
  *hi = (uint32_t)(p >> 32), *lo = (uint32_t)p;
}

void heed_philox4x32(const uint32_t ctr[4], const uint32_t key[2], uint32_t out[4]) {
  uint32_t c0 = ctr[0], c1 = ctr[1], c2 = ctr[2], c3 = ctr[3], k0 = key[0], k1 = key[1];
  for (int r = 0; r < 10; r++) {
    uint32_t h0, l0, h1, l1;
    mulhilo(0xD2511F53u, c0, &h0, &l0);
    mulhilo(0xCD9E8D57u, c2, &h1, &l1);
    uint32_t n0 = h1 ^ c1 ^ k0, n2 = h0 ^ c3 ^ k1;
    c0 = n0, c1 = l1, c2 = n2, c3 = l0;
    k0 += 0x9E3779B9u, k1 += 0xBB67AE85u;
  }
  out[0] = c0, out[1] = c1, out[2] = c2, out[3] = c3;
}

float heed_spec_uniform(uint64_t seed, uint64_t step, uint32_t draw) {
  const uint32_t ctr[4] = {(uint32_t)step, (uint32_t)(step >> 32), draw, 0x68656564u};
  const uint32_t key[2] = {(uint32_t)seed, (uint32_t)(seed >> 32)};
  uint32_t o[4];
  heed_philox4x32(ctr, key, o);
  return (float)(o[0] >> 8) * (1.0f / 16777216.0f);
}
