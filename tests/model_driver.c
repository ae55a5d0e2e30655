/* tests/model_driver.c - heed's forward pass from the command line, for the
 * model oracle (tests/model_oracle.py).
 *
 *   model_driver MODEL.gguf --tokens 1,2,3 --logits OUT.f32 [options]
 *       the tokens as one sequence from position 0 (prefill in chunks of
 *       --chunk tokens, default all at once); OUT gets the logits of every
 *       position, float32 little-endian, [n_tokens][n_vocab]
 *   model_driver MODEL.gguf --tokens 1,2,3 --greedy N [options]
 *       prints {"ids": [...]}: N tokens decoded greedily, one a step
 * options: --kv f16|f32|bf16|q8|q4|e4m3|e5m2  --isa scalar|avx2|avx512|neon
 *          --threads N  --chunk N */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "heed/heed.h"

/* What main holds, released on every exit (die included), so that refusals
 * run clean under the leak checker. */
static heed_runtime *g_rt;
static heed_model *g_m;
static int32_t *g_ids;
static float *g_logits;
static FILE *g_f;

static void release(void) {
  if (g_f) fclose(g_f);
  free(g_logits);
  free(g_ids);
  if (g_m) heed_model_close(g_m);
  if (g_rt) heed_runtime_close(g_rt);
  g_f = NULL, g_logits = NULL, g_ids = NULL, g_m = NULL, g_rt = NULL;
}

static int die(const char *what, const char *msg) {
  fprintf(stderr, "model_driver: %s: %s\n", what, msg);
  release();
  return 1;
}

int main(int argc, char **argv) {
  const char *model = NULL, *tokens_arg = NULL, *logits_path = NULL, *kv = "f16", *isa = NULL;
  long greedy = -1, threads = 0, chunk = 0;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
    if (strcmp(a, "--tokens") == 0 && v) tokens_arg = argv[++i];
    else if (strcmp(a, "--logits") == 0 && v) logits_path = argv[++i];
    else if (strcmp(a, "--kv") == 0 && v) kv = argv[++i];
    else if (strcmp(a, "--isa") == 0 && v) isa = argv[++i];
    else if (strcmp(a, "--greedy") == 0 && v) greedy = strtol(argv[++i], NULL, 10);
    else if (strcmp(a, "--threads") == 0 && v) threads = strtol(argv[++i], NULL, 10);
    else if (strcmp(a, "--chunk") == 0 && v) chunk = strtol(argv[++i], NULL, 10);
    else if (a[0] != '-' && !model) model = a;
    else return die("usage", "model_driver MODEL.gguf --tokens IDS (--logits OUT.f32 | --greedy N) [--kv DT] [--isa ISA] [--threads N] [--chunk N]");
  }
  if (!model || !tokens_arg || (!logits_path && greedy < 0)) return die("usage", "model, --tokens and --logits or --greedy");
  /* ids */
  size_t n = 0, cap = 64;
  int32_t *ids = g_ids = malloc(cap * sizeof *ids);
  for (const char *p = tokens_arg; *p;) {
    char *end;
    long v = strtol(p, &end, 10);
    if (end == p) return die("--tokens", "a comma-separated list of ids");
    if (n == cap) ids = g_ids = realloc(ids, (cap *= 2) * sizeof *ids);
    ids[n++] = (int32_t)v;
    p = *end == ',' ? end + 1 : end;
  }
  heed_runtime_options ro;
  heed_runtime_options_init(&ro);
  ro.backend = HEED_BACKEND_CPU;
  ro.n_threads = (int)threads;
  if (isa) {
    heed_isa is;
    if (heed_isa_parse(isa, &is) != HEED_OK) return die("--isa", isa);
    ro.isa = is;
  }
  heed_error e = {0};
  heed_runtime *rt;
  if (heed_runtime_open(&ro, &rt, &e) != HEED_OK) return die("runtime", e.msg);
  g_rt = rt;
  heed_model_options mo;
  heed_model_options_init(&mo);
  if (heed_dtype_parse(kv, &mo.kv_dtype) != HEED_OK) return die("--kv", kv);
  mo.max_batch = (unsigned)(chunk > 0 ? chunk : (long)n < 16 ? 16 : (long)n);
  mo.n_ctx = (unsigned)(n + (greedy > 0 ? greedy : 0) + 16);
  heed_model *m;
  if (heed_model_open(rt, model, &mo, &m, &e) != HEED_OK) return die("open", e.msg);
  g_m = m;
  size_t V = heed_model_get_config(m)->n_vocab;
  int seq;
  if (heed_model_seq_new(m, &seq) != HEED_OK) return die("sequence", heed_model_last_error(m));
  float *logits = g_logits = malloc((size_t)mo.max_batch * V * sizeof(float));
  FILE *f = g_f = logits_path ? fopen(logits_path, "wb") : NULL;
  if (logits_path && !f) return die(logits_path, strerror(errno));
  for (size_t at = 0; at < n;) {
    unsigned k = (unsigned)(n - at < mo.max_batch ? n - at : mo.max_batch);
    unsigned want = logits_path ? k : (at + k == n ? 1 : 0);
    heed_model_batch_seq b = {.seq = seq, .n_tokens = k, .tokens = ids + at, .n_logits = want, .logits = logits};
    if (heed_model_step(m, &b, 1) != HEED_OK) return die("step", heed_model_last_error(m));
    if (f && fwrite(logits, sizeof(float) * V, k, f) != k) return die(logits_path, "write failed");
    at += k;
  }
  g_f = NULL;
  if (f && fclose(f) != 0) return die(logits_path, "write failed");
  if (greedy >= 0) {
    if (logits_path) { /* the last row again, for the argmax */
      heed_model_seq_truncate(m, seq, (unsigned)n - 1);
      heed_model_batch_seq b = {.seq = seq, .n_tokens = 1, .tokens = ids + n - 1, .n_logits = 1, .logits = logits};
      if (heed_model_step(m, &b, 1) != HEED_OK) return die("step", heed_model_last_error(m));
    }
    printf("{\"ids\": [");
    for (long g = 0; g < greedy; g++) {
      int32_t best = 0;
      for (size_t i = 1; i < V; i++)
        if (logits[i] > logits[best]) best = (int32_t)i;
      printf("%s%d", g ? ", " : "", (int)best);
      if (g + 1 == greedy) break;
      heed_model_batch_seq b = {.seq = seq, .n_tokens = 1, .tokens = &best, .n_logits = 1, .logits = logits};
      if (heed_model_step(m, &b, 1) != HEED_OK) return die("step", heed_model_last_error(m));
    }
    printf("]}\n");
  }
  release();
  return 0;
}
