/* bench/bench_weights.c - `heed bench weights`: heed_matmul on synthetic
 * matrices of Qwen2.5-1.5B's shapes (1536x1536 attention, 8960x1536 FFN up,
 * 1536x8960 FFN down, 151936x1536 output), in Q4_K, Q6_K, Q8_0, Q5_0 and F16.
 *   decode   one token: the weights stream once, so the figure is GB/s of
 *            weights read, beside the read-bandwidth probe of the same run;
 *   prefill  512 tokens: GFLOP/s (2 rows x cols x tokens), beside the f32 FMA
 *            peak probe of the same run (the int8 dot products are not FMAs:
 *            the fraction says how far from the float peak, not a bound).
 * Times are medians of interleaved repeats (heed/bench.h), on the runtime's
 * threads. The weights are random bytes with finite f16 scales: the kernels
 * do the same work whatever the codes are. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench/bench_weights.h"
#include "heed/bench.h"
#include "heed/gguf.h"
#include "heed/runtime.h"
#include "heed/weights.h"

typedef struct wcase {
  heed_runtime *rt;
  heed_matrix m;
  size_t n_tok;
  float *x, *y;
  void *ws;
  size_t ws_bytes;
} wcase;

static void run_case(void *ctx) {
  wcase *c = (wcase *)ctx;
  if (heed_matmul(c->rt, &c->m, c->n_tok, c->x, c->m.cols, c->y, c->m.rows, c->ws, c->ws_bytes) != HEED_OK)
    fprintf(stderr, "bench weights: %s\n", heed_runtime_last_error(c->rt));
}

static uint64_t rnd(uint64_t *s) {
  *s ^= *s << 13, *s ^= *s >> 7, *s ^= *s << 17;
  return *s;
}

/* Random codes; every f16 scale (and F16 value) a finite one between 2^-12 and 2^-2. */
static void fill(int type, uint8_t *w, size_t bytes) {
  uint64_t s = 0x2545F4914F6CDD1Dull;
  for (size_t i = 0; i + 8 <= bytes; i += 8) {
    uint64_t v = rnd(&s);
    memcpy(w + i, &v, 8);
  }
  static const struct { int type, off[2]; } sc[] = {
      {HEED_GGML_Q4_K, {0, 2}}, {HEED_GGML_Q6_K, {208, -1}}, {HEED_GGML_Q8_0, {0, -1}}, {HEED_GGML_Q5_0, {0, -1}}};
  uint32_t be, bb;
  heed_ggml_type_info(type, &be, &bb);
  if (type == HEED_GGML_F16) {
    for (size_t i = 0; i < bytes; i += 2) {
      uint16_t h = (uint16_t)((rnd(&s) & 0x83FF) | (3 + rnd(&s) % 10) << 10);
      memcpy(w + i, &h, 2);
    }
    return;
  }
  for (size_t k = 0; k < sizeof sc / sizeof sc[0]; k++)
    if (sc[k].type == type)
      for (size_t b = 0; b < bytes / bb; b++)
        for (int j = 0; j < 2 && sc[k].off[j] >= 0; j++) {
          uint16_t h = (uint16_t)(0x1000 | (rnd(&s) & 0x3FF));
          memcpy(w + b * bb + sc[k].off[j], &h, 2);
        }
}

static int usage(void) {
  fprintf(stderr, "usage: heed bench weights [--repeats N] [--quick] [--json FILE]\n"
                  "  --quick  the 1536x1536 and 8960x1536 shapes only\n");
  return 1;
}

int heed_bench_weights_main(int argc, char **argv) {
  int repeats = 5, quick = 0;
  const char *json = NULL;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--repeats") && i + 1 < argc) {
      repeats = atoi(argv[++i]);
      if (repeats < 1 || repeats > 1000) return usage();
    } else if (!strcmp(argv[i], "--quick")) {
      quick = 1;
    } else if (!strcmp(argv[i], "--json") && i + 1 < argc) {
      json = argv[++i];
    } else {
      fprintf(stderr, "heed bench weights: unexpected argument '%s'\n", argv[i]);
      return usage();
    }
  }
  heed_runtime *rt = NULL;
  heed_error err = {0};
  if (heed_runtime_open(NULL, &rt, &err) != HEED_OK) {
    fprintf(stderr, "heed bench weights: %s\n", err.msg);
    return 1;
  }
  heed_bench_options bo = {.repeats = repeats};
  heed_bench *b = NULL;
  if (heed_bench_create(rt, &bo, &b, &err) != HEED_OK) {
    fprintf(stderr, "heed bench weights: %s\n", err.msg);
    heed_runtime_close(rt);
    return 1;
  }
  static const struct { const char *name; size_t rows, cols; int prefill; } shapes[] = {
      {"attn_q", 1536, 1536, 1}, {"ffn_up", 8960, 1536, 1}, {"ffn_down", 1536, 8960, 1}, {"output", 151936, 1536, 0}};
  static const int types[] = {HEED_GGML_Q4_K, HEED_GGML_Q6_K, HEED_GGML_Q8_0, HEED_GGML_Q5_0, HEED_GGML_F16};
  const size_t n_shapes = quick ? 2 : 4, n_types = sizeof types / sizeof types[0];
  heed_bench_result *res = calloc(n_shapes * n_types * 2, sizeof *res);
  int n_res = 0, rc = 0;
  const size_t max_tok = 512;
  printf("heed bench weights: %s, %d threads\n", heed_runtime_backend_description(rt), heed_runtime_n_threads(rt));
  for (size_t si = 0; si < n_shapes && !rc; si++)
    for (size_t ti = 0; ti < n_types && !rc; ti++) {
      const int type = types[ti];
      wcase c = {.rt = rt};
      c.m = (heed_matrix){.type = type, .rows = shapes[si].rows, .cols = shapes[si].cols,
                          .row_bytes = heed_weights_row_bytes(type, shapes[si].cols)};
      const size_t wbytes = c.m.rows * c.m.row_bytes;
      uint8_t *w = aligned_alloc(64, (wbytes + 63) & ~(size_t)63);
      c.x = malloc(max_tok * c.m.cols * sizeof(float));
      c.y = malloc(max_tok * c.m.rows * sizeof(float));
      c.ws_bytes = heed_matmul_workspace(&c.m, max_tok);
      c.ws = c.ws_bytes ? aligned_alloc(64, (c.ws_bytes + 63) & ~(size_t)63) : NULL;
      if (!w || !c.x || !c.y || (c.ws_bytes && !c.ws)) {
        fprintf(stderr, "heed bench weights: out of memory for %s %s\n", shapes[si].name, heed_ggml_type_name(type));
        rc = 1;
      } else {
        fill(type, w, wbytes);
        c.m.data = w;
        uint64_t s = 7;
        for (size_t i = 0; i < max_tok * c.m.cols; i++) c.x[i] = (float)((int64_t)(rnd(&s) >> 41) - (1 << 22)) / (1 << 22);
        char name[64], shape[256], dt[16];
        snprintf(dt, sizeof dt, "%s", heed_ggml_type_name(type));
        for (int pf = 0; pf <= shapes[si].prefill && !rc; pf++) {
          c.n_tok = pf ? max_tok : 1;
          snprintf(name, sizeof name, "weights.%s.%s.%s", pf ? "prefill" : "decode", shapes[si].name, dt);
          snprintf(shape, sizeof shape, "{\"rows\":%zu,\"cols\":%zu,\"n_tok\":%zu,\"weight_bytes\":%zu}", c.m.rows,
                   c.m.cols, c.n_tok, wbytes);
          heed_bench_case bc = {.name = name, .dtype = dt, .shape_json = shape,
                                .limit = pf ? HEED_LIMIT_FMA_PEAK : HEED_LIMIT_READ_BANDWIDTH,
                                .work = pf ? 2.0 * (double)c.m.rows * (double)c.m.cols * (double)c.n_tok : (double)wbytes,
                                .run = run_case, .ctx = &c};
          fprintf(stderr, "  %s ...\n", name);
          if (heed_bench_run_case(b, &bc, &res[n_res]) != HEED_OK) {
            fprintf(stderr, "heed bench weights: %s: %s\n", name, heed_bench_last_error(b));
            rc = 1;
          } else {
            n_res++;
          }
        }
      }
      free(w), free(c.x), free(c.y), free(c.ws);
    }
  heed_bench_write_table(res, n_res, stdout);
  if (json) {
    FILE *f = fopen(json, "w");
    if (!f || heed_bench_write_json(rt, res, n_res, f) != HEED_OK) {
      fprintf(stderr, "heed bench weights: cannot write %s\n", json);
      rc = 1;
    }
    if (f) fclose(f);
  }
  free(res);
  heed_bench_destroy(b);
  heed_runtime_close(rt);
  return rc;
}
