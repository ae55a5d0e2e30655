/* tests/tokenize_driver.c - heed's tokenizers from the command line, for the
 * oracle (tests/tokenizer_oracle.py) and the tokenizer benchmark.
 *
 *   tokenize_driver MODEL.gguf --records FILE   encode each record, one line of ids each
 *   tokenize_driver MODEL.gguf --bench FILE     encode FILE 5 times: median ms, MB/s
 *   tokenize_driver MODEL.gguf [--special] [--add] TEXT   ids of TEXT as JSON
 *
 * A records file is a sequence of (u32 flags, u32 length, bytes), little
 * endian; flags are HEED_TOKENIZE_* bits. The output has one line per
 * record: the ids separated by spaces, or "ERROR <message>".
 *
 * The benchmark's text is 500 KB of this machine's source code, on one core:
 *   (find /usr/include -maxdepth 1 -name '*.h'; find /usr/lib -maxdepth 2 -path '/usr/lib/python3.*' -name '*.py') |
 *     sort | xargs cat | head -c 500000 > src.txt
 *   taskset -c 0 build/tests/tokenize_driver MODEL.gguf --bench src.txt */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "heed/gguf.h"
#include "heed/tokenizer.h"

static char *read_file(const char *path, size_t *len) {
  FILE *f = fopen(path, "rb");
  if (!f) return NULL;
  size_t cap = 1 << 16, n = 0;
  char *buf = malloc(cap);
  for (;;) {
    if (n == cap) buf = realloc(buf, cap *= 2);
    size_t k = fread(buf + n, 1, cap - n, f);
    if (!k) break;
    n += k;
  }
  fclose(f);
  *len = n;
  return buf;
}

static double now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

static uint32_t le32(const unsigned char *p) { return p[0] | p[1] << 8 | p[2] << 16 | (uint32_t)p[3] << 24; }

int main(int argc, char **argv) {
  if (argc < 3) {
    fprintf(stderr, "usage: %s MODEL.gguf (--records FILE | --bench FILE | [--special] [--add] TEXT)\n", argv[0]);
    return 2;
  }
  heed_error err;
  heed_gguf *g = NULL;
  heed_tokenizer *tok = NULL;
  if (heed_gguf_open(argv[1], &g, &err) != HEED_OK) {
    fprintf(stderr, "tokenize_driver: %s\n", err.msg);
    return 1;
  }
  double t0 = now_ms();
  if (heed_tokenizer_from_gguf(g, &tok, &err) != HEED_OK) {
    fprintf(stderr, "tokenize_driver: %s\n", err.msg);
    return 1;
  }
  double t_load = now_ms() - t0;
  heed_gguf_close(g);

  if (strcmp(argv[2], "--records") == 0 && argc == 4) {
    size_t len;
    unsigned char *data = (unsigned char *)read_file(argv[3], &len);
    if (!data) {
      fprintf(stderr, "tokenize_driver: cannot read %s\n", argv[3]);
      return 1;
    }
    heed_tokens ids = {0};
    size_t at = 0;
    while (at + 8 <= len) {
      uint32_t flags = le32(data + at), n = le32(data + at + 4);
      at += 8;
      if (n > len - at) {
        fprintf(stderr, "tokenize_driver: truncated record\n");
        return 1;
      }
      ids.n = 0;
      if (heed_tokenizer_encode(tok, (const char *)data + at, n, flags, &ids, &err) != HEED_OK) {
        printf("ERROR %s\n", err.msg);
      } else {
        for (size_t i = 0; i < ids.n; i++) printf(i ? " %d" : "%d", ids.ids[i]);
        putchar('\n');
      }
      at += n;
    }
    heed_tokens_free(&ids);
    free(data);
  } else if (strcmp(argv[2], "--bench") == 0 && argc == 4) {
    size_t len;
    char *text = read_file(argv[3], &len);
    if (!text) {
      fprintf(stderr, "tokenize_driver: cannot read %s\n", argv[3]);
      return 1;
    }
    heed_tokens ids = {0};
    double ms[5];
    heed_tokenizer_encode(tok, text, len, 0, &ids, &err); /* warm-up: page faults, caches */
    for (int r = 0; r < 5; r++) {
      ids.n = 0;
      double a = now_ms();
      if (heed_tokenizer_encode(tok, text, len, 0, &ids, &err) != HEED_OK) {
        fprintf(stderr, "tokenize_driver: %s\n", err.msg);
        return 1;
      }
      ms[r] = now_ms() - a;
    }
    qsort(ms, 5, sizeof *ms, cmp_double);
    heed_tokenizer_info info;
    heed_tokenizer_get_info(tok, &info);
    printf("{\"model\": \"%s\", \"pre\": \"%s\", \"bytes\": %zu, \"tokens\": %zu, \"load_ms\": %.1f, \"median_ms\": %.2f, "
           "\"min_ms\": %.2f, \"max_ms\": %.2f, \"mb_per_s\": %.1f}\n",
           info.model, info.pre, len, ids.n, t_load, ms[2], ms[0], ms[4], len / 1e6 / (ms[2] / 1e3));
    heed_tokens_free(&ids);
    free(text);
  } else {
    unsigned flags = 0;
    int i = 2;
    for (; i < argc - 1; i++) {
      if (strcmp(argv[i], "--special") == 0)
        flags |= HEED_TOKENIZE_PARSE_SPECIAL;
      else if (strcmp(argv[i], "--add") == 0)
        flags |= HEED_TOKENIZE_ADD_SPECIAL;
      else
        break;
    }
    heed_tokens ids = {0};
    if (heed_tokenizer_encode(tok, argv[i], strlen(argv[i]), flags, &ids, &err) != HEED_OK) {
      fprintf(stderr, "tokenize_driver: %s\n", err.msg);
      return 1;
    }
    putchar('[');
    for (size_t k = 0; k < ids.n; k++) printf(k ? ", %d" : "%d", ids.ids[k]);
    puts("]");
    heed_tokens_free(&ids);
  }
  heed_tokenizer_free(tok);
  return 0;
}
