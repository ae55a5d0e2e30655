/* tools/tokenize_cmd.c - `heed tokenize`: text or a chat request to a model's
 * token ids, with each token's piece, as the model run and the server will
 * tokenize it.
 *
 *   heed tokenize MODEL -p TEXT | -f FILE | --chat REQUEST.json
 *                 [--json | --ids] [--parse-special] [--no-add-special]
 *                 [--chat-template gguf|chatml|gemma|llama3]
 *
 * Plain text (-p, -f) gets the BOS/EOS the model's metadata asks for (unless
 * --no-add-special); control tokens written in it stay text unless
 * --parse-special. A chat request (the JSON body of /v1/chat/completions) is
 * rendered through the model's template, or the built-in for its
 * architecture when it has none, and tokenized with control tokens matched in
 * the template's own text only: a message cannot inject them. FILE and
 * REQUEST.json may be "-" for standard input.
 *
 * --bench [N] times the plain-text encode instead: one warm-up, then N runs
 * (default 7) on one thread, printing the median, min and max time, MB/s and
 * tokens/s (tests/tokenizer_oracle.py --bench FILE puts Hugging Face's
 * tokenizers beside it in the same run). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "heed/chat.h"
#include "heed/gguf.h"
#include "heed/tokenizer.h"
#include "tools/commands.h"

static const char use[] = "usage: heed tokenize MODEL.gguf (-p TEXT | -f FILE | --chat REQUEST.json) "
                          "[--json | --ids]\n"
                          "                     [--parse-special] [--no-add-special] "
                          "[--chat-template gguf|chatml|gemma|llama3] [--bench [N]]\n"
                          "  -p TEXT / -f FILE     plain text (FILE '-': standard input); BOS/EOS as "
                          "the model says\n"
                          "  --chat REQUEST.json   an OpenAI chat request (messages, tools, ...), "
                          "rendered by the model's template\n"
                          "  --json                {\"ids\", \"pieces\", \"n_tokens\"} (+ "
                          "\"template\", \"text\" for --chat)\n"
                          "  --ids                 the ids only, as a JSON array\n"
                          "  --parse-special       plain text: control tokens written in it are "
                          "matched (e.g. <|im_start|>)\n"
                          "  --no-add-special      plain text: no BOS/EOS added\n"
                          "  --chat-template NAME  gguf (the file's own), or a built-in: chatml, "
                          "gemma, llama3\n"
                          "  --bench [N]           -p/-f: time the encode, median of N runs (default "
                          "7), one thread\n";

static double now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

/* Times the encode of text: median of n runs after one warm-up. */
static int bench(const heed_tokenizer *tok, const char *text, size_t len, unsigned flags, int n) {
  heed_tokens ids = {0};
  heed_error e = {0};
  double *ms = malloc((size_t)n * sizeof *ms);
  int rc = 1;
  if (!ms) goto done;
  if (heed_tokenizer_encode(tok, text, len, flags, &ids, &e) != HEED_OK) goto fail; /* page faults, caches */
  for (int r = 0; r < n; r++) {
    ids.n = 0;
    double a = now_ms();
    if (heed_tokenizer_encode(tok, text, len, flags, &ids, &e) != HEED_OK) goto fail;
    ms[r] = now_ms() - a;
  }
  qsort(ms, (size_t)n, sizeof *ms, cmp_double);
  double med = n % 2 ? ms[n / 2] : (ms[n / 2 - 1] + ms[n / 2]) / 2;
  heed_tokenizer_info info;
  heed_tokenizer_get_info(tok, &info);
  printf("tokenize %s/%s: %zu bytes -> %zu tokens; median %.2f ms (min %.2f, "
         "max %.2f, %d runs, one thread): "
         "%.1f MB/s, %.2f M tokens/s\n",
         info.model, info.pre[0] ? info.pre : "-", len, ids.n, med, ms[0], ms[n - 1], n, len / 1e3 / med,
         ids.n / 1e3 / med);
  rc = 0;
  goto done;
fail:
  fprintf(stderr, "heed tokenize --bench: %s\n", e.msg);
done:
  free(ms);
  heed_tokens_free(&ids);
  return rc;
}

/* The whole of path ("-": stdin) into a new buffer; NULL with errno set. */
static char *read_all(const char *path, size_t *len) {
  FILE *f = strcmp(path, "-") == 0 ? stdin : fopen(path, "rb");
  if (!f) return NULL;
  size_t cap = 1 << 16, n = 0;
  char *buf = malloc(cap + 1);
  for (;;) {
    if (!buf) break;
    n += fread(buf + n, 1, cap - n, f);
    if (n < cap) break;
    char *nb = realloc(buf, 2 * cap + 1);
    if (!nb) {
      free(buf);
      buf = NULL;
      errno = ENOMEM;
      break;
    }
    buf = nb, cap *= 2;
  }
  int bad = ferror(f);
  if (f != stdin) fclose(f);
  if (bad || !buf) {
    free(buf);
    if (bad) errno = EIO;
    return NULL;
  }
  buf[n] = 0;
  *len = n;
  return buf;
}

/* A piece for a terminal: printable bytes as they are, the rest escaped. */
static void print_piece(FILE *f, const char *p, size_t n) {
  putc('\'', f);
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)p[i];
    if (c == '\n') fputs("\\n", f);
    else if (c == '\t') fputs("\\t", f);
    else if (c == '\r') fputs("\\r", f);
    else if (c == '\\' || c == '\'') putc('\\', f), putc(c, f);
    else if (c < 0x20 || c == 0x7f) fprintf(f, "\\x%02x", c);
    else putc(c, f); /* UTF-8 (whole or part) as is */
  }
  putc('\'', f);
}

int heed_cmd_tokenize(int argc, char **argv) {
  const char *model = NULL, *text_arg = NULL, *file = NULL, *chat_file = NULL, *tmpl_name = NULL;
  int json = 0, ids_only = 0, parse_special = 0, add_special = 1, bench_runs = 0;
  for (int i = 0; i < argc; i++) {
    const char *a = argv[i];
    int has_val = i + 1 < argc;
    if (strcmp(a, "-p") == 0 && has_val) text_arg = argv[++i];
    else if (strcmp(a, "-f") == 0 && has_val) file = argv[++i];
    else if (strcmp(a, "--chat") == 0 && has_val) chat_file = argv[++i];
    else if (strcmp(a, "--chat-template") == 0 && has_val) tmpl_name = argv[++i];
    else if (strcmp(a, "--json") == 0) json = 1;
    else if (strcmp(a, "--ids") == 0) ids_only = 1;
    else if (strcmp(a, "--parse-special") == 0) parse_special = 1;
    else if (strcmp(a, "--no-add-special") == 0) add_special = 0;
    else if (strcmp(a, "--bench") == 0) {
      bench_runs = 7;
      if (has_val && argv[i + 1][0] >= '0' && argv[i + 1][0] <= '9') {
        char *end;
        long v = strtol(argv[++i], &end, 10);
        if (*end || v < 1 || v > 1000) {
          fprintf(stderr, "heed tokenize: --bench %s: accepted: 1..1000 runs\n%s", argv[i], use);
          return 2;
        }
        bench_runs = (int)v;
      }
    } else if (a[0] != '-' && !model) model = a;
    else {
      fprintf(stderr, "heed tokenize: %s '%s'\n%s",
              (strcmp(a, "-p") == 0 || strcmp(a, "-f") == 0 || strcmp(a, "--chat") == 0 ||
               strcmp(a, "--chat-template") == 0)
                  ? "missing the value of"
                  : "unexpected argument",
              a, use);
      return 2;
    }
  }
  int n_inputs = !!text_arg + !!file + !!chat_file;
  const char *why = !model                                         ? "which model?"
                    : n_inputs != 1                                ? "give exactly one of -p, -f and --chat"
                    : json && ids_only                             ? "--json and --ids exclude each other"
                    : chat_file && (parse_special || !add_special) ? "--parse-special and --no-add-special apply to -p "
                                                                     "and -f (a chat prompt matches control "
                                                                     "tokens in the template's text only, and the "
                                                                     "template writes BOS/EOS)"
                    : tmpl_name && !chat_file                      ? "--chat-template applies to --chat"
                    : bench_runs && (chat_file || json || ids_only)
                        ? "--bench times -p or -f, and prints its own report"
                        : NULL;
  if (why) {
    fprintf(stderr, "heed tokenize: %s\n%s", why, use);
    return 2;
  }

  heed_error e = {0};
  heed_gguf *g = NULL;
  heed_tokenizer *tok = NULL;
  heed_chat *chat = NULL;
  heed_tokens ids = {0};
  heed_template_text rendered = {0};
  char *input = NULL;
  size_t input_len = 0;
  int rc = 1;
  if (heed_gguf_open(model, &g, &e) != HEED_OK || heed_tokenizer_from_gguf(g, &tok, &e) != HEED_OK) {
    fprintf(stderr, "heed tokenize: %s: %s\n", model, e.msg);
    goto done;
  }
  if (chat_file && heed_chat_open(g, tok, tmpl_name, &chat, &e) != HEED_OK) {
    fprintf(stderr, "heed tokenize: %s: %s\n", model, e.msg);
    goto done;
  }
  heed_gguf_close(g), g = NULL; /* the tokenizer and the template keep copies */
  if (text_arg) {
    input = strdup(text_arg);
    input_len = input ? strlen(input) : 0;
  } else {
    input = read_all(file ? file : chat_file, &input_len);
  }
  if (!input) {
    fprintf(stderr, "heed tokenize: cannot read '%s': %s\n",
            file        ? file
            : chat_file ? chat_file
                        : "-p",
            strerror(errno));
    goto done;
  }
  if (bench_runs) {
    unsigned flags =
        (add_special ? HEED_TOKENIZE_ADD_SPECIAL : 0u) | (parse_special ? HEED_TOKENIZE_PARSE_SPECIAL : 0u);
    rc = bench(tok, input, input_len, flags, bench_runs);
    goto done;
  }
  heed_status st;
  if (chat) {
    st = heed_chat_prompt(chat, input, input_len, NULL, &rendered, &ids, &e);
  } else {
    unsigned flags =
        (add_special ? HEED_TOKENIZE_ADD_SPECIAL : 0u) | (parse_special ? HEED_TOKENIZE_PARSE_SPECIAL : 0u);
    st = heed_tokenizer_encode(tok, input, input_len, flags, &ids, &e);
  }
  if (st) {
    fprintf(stderr, "heed tokenize: %s%s: %s\n", chat ? "--chat " : "", chat ? chat_file : "", e.msg);
    goto done;
  }

  static char obuf[1 << 16];
  setvbuf(stdout, obuf, _IOFBF, sizeof obuf);
  if (ids_only || json) {
    fputs(json ? "{\"ids\": [" : "[", stdout);
    for (size_t i = 0; i < ids.n; i++) printf("%s%d", i ? ", " : "", (int)ids.ids[i]);
    fputs("]", stdout);
    if (json) {
      fputs(", \"pieces\": [", stdout);
      for (size_t i = 0; i < ids.n; i++) {
        const char *p;
        size_t n;
        heed_tokenizer_piece(tok, ids.ids[i], HEED_DETOK_SPECIAL, &p, &n);
        if (i) fputs(", ", stdout);
        heed_cli_json_str(stdout, p, n);
      }
      printf("], \"n_tokens\": %zu", ids.n);
      if (chat) {
        fputs(", \"template\": ", stdout);
        heed_cli_json_str(stdout, heed_chat_name(chat), strlen(heed_chat_name(chat)));
        fputs(", \"text\": ", stdout);
        heed_cli_json_str(stdout, rendered.text, rendered.length);
      }
      fputs("}", stdout);
    }
    fputs("\n", stdout);
  } else {
    for (size_t i = 0; i < ids.n; i++) {
      const char *p;
      size_t n;
      heed_tokenizer_piece(tok, ids.ids[i], HEED_DETOK_SPECIAL, &p, &n);
      printf("%8d  ", (int)ids.ids[i]);
      print_piece(stdout, p, n);
      putchar('\n');
    }
    printf("%zu tokens", ids.n);
    if (chat) printf(" (chat template: %s, %zu bytes rendered)", heed_chat_name(chat), rendered.length);
    putchar('\n');
  }
  rc = fflush(stdout) != 0 || ferror(stdout) ? 1 : 0;
  if (rc) fprintf(stderr, "heed tokenize: writing the output failed\n");
done:
  heed_template_text_free(&rendered);
  heed_tokens_free(&ids);
  free(input);
  heed_chat_free(chat);
  heed_tokenizer_free(tok);
  heed_gguf_close(g);
  return rc;
}
