/* tests/test_util.h - shared test helpers: a seeded RNG and fp64 references. */
#ifndef HEED_TEST_UTIL_H
#define HEED_TEST_UTIL_H

#include <math.h>
#include <stdint.h>
#include <string.h>

/* splitmix64: deterministic across platforms, so failures reproduce. */
static inline uint64_t tu_next(uint64_t *s) {
  uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

/* Uniform in [-1, 1). */
static inline float tu_uniform(uint64_t *s) { return (float)((tu_next(s) >> 40) * 0x1p-23 - 1.0); }

static inline uint32_t tu_f32_bits(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  return u;
}

static inline float tu_f32_from_bits(uint32_t u) {
  float f;
  memcpy(&f, &u, 4);
  return f;
}

#endif
