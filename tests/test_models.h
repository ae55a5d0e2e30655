/* tests/test_models.h - where the real models are (scripts/fetch-models.sh).
 *
 * HEED_MODELS (default ~/.cache/heed/models) holds them. A test that needs one
 * and finds it absent skips with the reason fetch-models recorded (a download
 * that was impossible) - never silently. */
#ifndef HEED_TEST_MODELS_H
#define HEED_TEST_MODELS_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define TM_QWEN "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"
#define TM_GEMMA "gemma-3-270m-q4_k_m.gguf"

/* Fills buf with the model's path; returns 1 when the file is there. When it
 * is not, *why (static storage) says why. */
static inline int tm_model_path(const char *file, char *buf, size_t cap, const char **why) {
  const char *dir = getenv("HEED_MODELS");
  const char *home = getenv("HOME");
  if (dir && *dir)
    snprintf(buf, cap, "%s/%s", dir, file);
  else
    snprintf(buf, cap, "%s/.cache/heed/models/%s", home ? home : "", file);
  if (access(buf, R_OK) == 0) return 1;
  static char reason[1280]; /* a path of up to 1024 bytes and the advice */
  char failed[1024];
  snprintf(failed, sizeof failed, "%.*s/FETCH_FAILED", (int)(strrchr(buf, '/') - buf), buf);
  FILE *f = fopen(failed, "r");
  size_t n = f ? fread(reason, 1, sizeof reason - 1, f) : 0;
  if (f) fclose(f);
  reason[n] = 0;
  if (n == 0) snprintf(reason, sizeof reason, "%s is absent (run scripts/fetch-models.sh)", buf);
  *why = reason;
  return 0;
}

#endif
