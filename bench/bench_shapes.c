/* bench/bench_shapes.c - named attention shapes and the custom-spec parser.
 * Head counts, head dims and windows are the models' published configs
 * (config.json on the Hugging Face hub). Gemma 3 dropped Gemma 2's logit
 * soft-cap (it uses QK-norm), and its local layers see 512 tokens at 270M;
 * Mistral-7B v0.1 attends through a 4096-token sliding window. */
#include "bench/bench_shapes.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "heed/attention.h"

static const heed_bench_shape named[] = {
    {"Llama-3.1-8B", 32, 8, 128, 0, 0.0f},
    {"Qwen2.5-7B", 28, 4, 128, 0, 0.0f},
    {"Qwen3-0.6B", 16, 8, 128, 0, 0.0f},
    {"Mistral-7B", 32, 8, 128, 4096, 0.0f},
    {"Gemma-3-270M", 4, 1, 256, 512, 0.0f},
    {"SmolLM2-135M", 9, 3, 64, 0, 0.0f},
};

const heed_bench_shape *heed_bench_shapes(int *n) {
  *n = (int)(sizeof named / sizeof *named);
  return named;
}

static int parse_uint(const char *v, size_t len, unsigned lo, unsigned hi, unsigned *out) {
  if (!len || len > 10) return -1;
  unsigned long x = 0;
  for (size_t i = 0; i < len; i++) {
    if (!isdigit((unsigned char)v[i])) return -1;
    x = x * 10 + (unsigned long)(v[i] - '0');
  }
  if (x < lo || x > hi) return -1;
  *out = (unsigned)x;
  return 0;
}

int heed_bench_shape_parse(const char *arg, heed_bench_shape *out, char *msg, size_t cap) {
  memset(out, 0, sizeof *out);
  for (size_t i = 0; i < sizeof named / sizeof *named; i++)
    if (strcasecmp(arg, named[i].name) == 0) {
      *out = named[i];
      return 0;
    }
  if (!strchr(arg, '=')) {
    int off = snprintf(msg, cap, "unknown shape '%s'; named shapes:", arg);
    for (size_t i = 0; i < sizeof named / sizeof *named && off > 0 && (size_t)off < cap; i++)
      off += snprintf(msg + off, cap - (size_t)off, " %s", named[i].name);
    if (off > 0 && (size_t)off < cap) snprintf(msg + off, cap - (size_t)off, "; or a spec q=32,kv=8,d=128[,window=N][,softcap=X]");
    return -1;
  }
  /* key=value pairs, comma-separated, each key once */
  static const char *const keys[] = {"q", "kv", "d", "window", "softcap"};
  int seen[5] = {0};
  for (const char *p = arg;;) {
    const char *end = strchr(p, ','), *eq = strchr(p, '=');
    size_t len = end ? (size_t)(end - p) : strlen(p);
    if (!eq || eq >= p + len) {
      snprintf(msg, cap, "shape spec '%s': '%.*s' is not key=value", arg, (int)len, p);
      return -1;
    }
    size_t kl = (size_t)(eq - p), vl = len - kl - 1;
    const char *v = eq + 1;
    int key = -1;
    for (int k = 0; k < 5; k++)
      if (strlen(keys[k]) == kl && strncmp(p, keys[k], kl) == 0) key = k;
    if (key < 0) {
      snprintf(msg, cap, "shape spec '%s': unknown key '%.*s'; accepted: q, kv, d, window, softcap", arg, (int)kl, p);
      return -1;
    }
    if (seen[key]++) {
      snprintf(msg, cap, "shape spec '%s': key '%s' is given twice", arg, keys[key]);
      return -1;
    }
    int bad = 0;
    if (key == 0)
      bad = parse_uint(v, vl, 1, 256, &out->q_heads);
    else if (key == 1)
      bad = parse_uint(v, vl, 1, 256, &out->kv_heads);
    else if (key == 2)
      bad = parse_uint(v, vl, HEED_HEAD_DIM_MIN, HEED_HEAD_DIM_MAX, &out->head_dim) || out->head_dim % 16;
    else if (key == 3)
      bad = parse_uint(v, vl, 0, 1u << 24, &out->window);
    else {
      char tmp[32], *e;
      if (vl == 0 || vl >= sizeof tmp) {
        bad = 1;
      } else {
        memcpy(tmp, v, vl), tmp[vl] = 0;
        errno = 0;
        double x = strtod(tmp, &e);
        bad = *e || errno || !(x >= 0 && x <= 1e4);
        out->softcap = (float)x;
      }
    }
    if (bad) {
      snprintf(msg, cap,
               "shape spec '%s': %.*s=%.*s is out of range (q, kv 1..256; d a multiple of 16 in %d..%d, heed's head "
               "dims; window 0..16777216; softcap 0..10000)",
               arg, (int)kl, p, (int)vl, v, HEED_HEAD_DIM_MIN, HEED_HEAD_DIM_MAX);
      return -1;
    }
    if (!end) break;
    p = end + 1;
  }
  int have_q = seen[0], have_kv = seen[1], have_d = seen[2];
  if (!have_q || !have_kv || !have_d) {
    snprintf(msg, cap, "shape spec '%s' needs q, kv and d (e.g. q=32,kv=8,d=128)", arg);
    return -1;
  }
  if (out->q_heads % out->kv_heads) {
    snprintf(msg, cap, "shape spec '%s': q=%u is not a multiple of kv=%u", arg, out->q_heads, out->kv_heads);
    return -1;
  }
  snprintf(out->name, sizeof out->name, "custom");
  return 0;
}

int heed_bench_shape_json(const heed_bench_shape *s, char *buf, size_t cap) {
  return snprintf(buf, cap, "\"model\":\"%s\",\"q_heads\":%u,\"kv_heads\":%u,\"head_dim\":%u,\"window\":%u,\"softcap\":%g",
                  s->name, s->q_heads, s->kv_heads, s->head_dim, s->window, (double)s->softcap);
}
