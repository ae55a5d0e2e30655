/* tests/weights_driver.c - heed's side of tests/weights_oracle.py.
 *
 * Reads records from stdin until EOF, each: int32 ggml type, uint64 element
 * count n, then the n elements' bytes (whole blocks); writes for each the n
 * floats heed_weights_dequant gives, to stdout (little-endian, as stored).
 * Exit 0, or 1 (a message on stderr) on a short read or a refused record. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "heed/weights.h"

int main(void) {
  for (unsigned rec = 0;; rec++) {
    int32_t type;
    uint64_t n;
    size_t got = fread(&type, sizeof type, 1, stdin);
    if (got == 0 && feof(stdin)) return 0;
    if (got != 1 || fread(&n, sizeof n, 1, stdin) != 1) {
      fprintf(stderr, "weights_driver: record %u: short header\n", rec);
      return 1;
    }
    const size_t bytes = heed_weights_row_bytes(type, (size_t)n);
    if (!bytes) {
      fprintf(stderr, "weights_driver: record %u: type %d, n %llu: not whole blocks of a supported type\n", rec,
              (int)type, (unsigned long long)n);
      return 1;
    }
    void *src = malloc(bytes);
    float *dst = malloc((size_t)n * sizeof *dst);
    if (!src || !dst || fread(src, 1, bytes, stdin) != bytes) {
      fprintf(stderr, "weights_driver: record %u: short data (%zu bytes expected)\n", rec, bytes);
      return 1;
    }
    heed_error err = {0};
    if (heed_weights_dequant(type, src, (size_t)n, dst, &err) != HEED_OK) {
      fprintf(stderr, "weights_driver: record %u: %s\n", rec, err.msg);
      return 1;
    }
    fwrite(dst, sizeof *dst, (size_t)n, stdout);
    free(src);
    free(dst);
  }
}
