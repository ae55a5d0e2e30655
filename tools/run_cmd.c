/* tools/run_cmd.c - `heed run` (generate text with a model, streaming) and
 * `heed perplexity` (how well a model predicts a text).
 *
 * run: the prompt is prefilled in chunks of --batch tokens, then tokens are
 * made one step at a time (or, with --draft ngram, a step verifies up to
 * --draft-k drafted tokens at once through heed/spec.h: lossless at any
 * temperature, the same tokens as plain greedy decoding at temperature 0).
 * Text streams to stdout as tokens come, never splitting a UTF-8 sequence,
 * holding back only what could still become a --stop string. The closing
 * stats line goes to stderr.
 *
 * perplexity: llama.cpp's llama-perplexity method: the text's tokens (BOS
 * first when the model adds one) in non-overlapping windows of --ctx tokens,
 * each window's first token replaced by BOS when the model adds one, and the
 * tokens of each window's second half scored (token j predicted from the
 * logits at j - 1, for j from ctx/2 + 1 to ctx - 1). Prints the running
 * estimate per window and the final PPL with its standard error. */
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "heed/heed.h"
#include "tools/commands.h"

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static char *read_all(const char *path, size_t *len) {
  FILE *f = strcmp(path, "-") == 0 ? stdin : fopen(path, "rb");
  if (!f) return NULL;
  size_t cap = 1 << 16, n = 0;
  char *b = malloc(cap + 1);
  while (b) {
    n += fread(b + n, 1, cap - n, f);
    if (n < cap) break;
    char *nb = realloc(b, 2 * cap + 1);
    if (!nb) free(b);
    b = nb, cap *= 2;
  }
  int bad = ferror(f);
  if (f != stdin) fclose(f);
  if (!b || bad) {
    free(b);
    errno = b ? EIO : ENOMEM;
    return NULL;
  }
  b[n] = 0;
  *len = n;
  return b;
}

/* Options shared by run and perplexity. */
typedef struct common {
  const char *model;
  unsigned ctx, batch;
  heed_dtype kv;
  int threads;
  int verbose;
  int mmap_weights;
} common;

/* 1: argv[*i] was one of the common options (consumed); 0: not; -1: bad value (printed). */
static int common_arg(const char *cmd, common *c, int argc, char **argv, int *i) {
  const char *a = argv[*i], *v = *i + 1 < argc ? argv[*i + 1] : NULL;
  char *end;
  if (strcmp(a, "--kv") == 0 && v) {
    ++*i;
    if (heed_dtype_parse(v, &c->kv) != HEED_OK) {
      fprintf(stderr, "heed %s: --kv %s: accepted: f32 f16 bf16 q8 q4 e4m3 e5m2\n", cmd, v);
      return -1;
    }
    return 1;
  }
  unsigned long *dst = NULL;
  unsigned long val;
  unsigned long lo = 1, hi = 1u << 24;
  if (strcmp(a, "--ctx") == 0 || strcmp(a, "-c") == 0 || strcmp(a, "--batch") == 0 || strcmp(a, "--threads") == 0 ||
      strcmp(a, "-t") == 0) {
    if (!v) return 0;
    ++*i;
    errno = 0;
    val = strtoul(v, &end, 10);
    if (strcmp(a, "--threads") == 0 || strcmp(a, "-t") == 0) hi = 1024;
    if (strcmp(a, "--batch") == 0) hi = 65536;
    if (errno || *end || !*v || v[0] == '-' || val < lo || val > hi) {
      fprintf(stderr, "heed %s: %s %s: accepted: %lu..%lu\n", cmd, a, v, lo, hi);
      return -1;
    }
    (void)dst;
    if (strcmp(a, "--batch") == 0) c->batch = (unsigned)val;
    else if (strcmp(a, "--threads") == 0 || strcmp(a, "-t") == 0) c->threads = (int)val;
    else c->ctx = (unsigned)val;
    return 1;
  }
  if (strcmp(a, "--verbose") == 0 || strcmp(a, "-v") == 0) {
    c->verbose = 1;
    return 1;
  }
  if (strcmp(a, "--mmap") == 0) {
    c->mmap_weights = 1;
    return 1;
  }
  return 0;
}

static heed_status open_model(const char *cmd, const common *c, unsigned max_seqs, heed_runtime **rt, heed_model **m) {
  heed_runtime_options ro;
  heed_runtime_options_init(&ro);
  ro.backend = HEED_BACKEND_CPU;
  ro.n_threads = c->threads;
  heed_error e = {0};
  heed_status st = heed_runtime_open(&ro, rt, &e);
  if (st) {
    fprintf(stderr, "heed %s: %s\n", cmd, e.msg);
    return st;
  }
  heed_model_options mo;
  heed_model_options_init(&mo);
  mo.kv_dtype = c->kv;
  mo.n_ctx = c->ctx;
  mo.mmap_weights = c->mmap_weights;
  mo.max_batch = c->batch;
  mo.max_seqs = max_seqs;
  double t0 = now_s();
  st = heed_model_open(*rt, c->model, &mo, m, &e);
  if (st) {
    fprintf(stderr, "heed %s: %s\n", cmd, e.msg);
    heed_runtime_close(*rt);
    *rt = NULL;
    return st;
  }
  if (c->verbose) {
    const heed_model_config *cfg = heed_model_get_config(*m);
    const heed_model_options *o = heed_model_get_options(*m);
    fprintf(stderr, "heed %s: %s (%s, %u layers) opened in %.2f s; %s; KV %s, context %u, %.1f MiB; buffers %.1f MiB\n",
            cmd, c->model, heed_arch_name(cfg->arch), cfg->n_layer, now_s() - t0, heed_runtime_backend_description(*rt),
            heed_dtype_name(o->kv_dtype), o->n_ctx, heed_model_kv_bytes(*m) / 1048576.0,
            heed_model_buffer_bytes(*m) / 1048576.0);
  }
  return HEED_OK;
}

/* Resident memory of this process, from /proc (MiB; -1 when unknown). */
static double rss_mib(void) {
  FILE *f = fopen("/proc/self/statm", "r");
  long pages = -1, rss = -1;
  if (f) {
    if (fscanf(f, "%ld %ld", &pages, &rss) != 2) rss = -1;
    fclose(f);
  }
  return rss < 0 ? -1 : rss * 4096.0 / 1048576.0;
}

/* ---------- run ---------- */

#define MAX_STOPS 8

/* Output that waits for the stop strings to be ruled out. */
typedef struct outbuf {
  char *buf;
  size_t len, cap;
  const char *stops[MAX_STOPS];
  int n_stops;
  size_t max_stop;
  int stopped;
} outbuf;

/* Appends text; writes out all that can no longer start a stop string; sets stopped when one appears. */
static void out_push(outbuf *o, const char *s, size_t n, int final) {
  if (o->stopped) return;
  if (o->len + n + 1 > o->cap) {
    o->cap = 2 * (o->len + n + 1);
    o->buf = realloc(o->buf, o->cap);
  }
  memcpy(o->buf + o->len, s, n);
  o->len += n;
  size_t emit = o->len;
  for (int i = 0; i < o->n_stops; i++) {
    size_t sl = strlen(o->stops[i]);
    for (size_t at = 0; at + sl <= o->len; at++)
      if (memcmp(o->buf + at, o->stops[i], sl) == 0) {
        if (at < emit) emit = at;
        o->stopped = 1;
        break;
      }
  }
  if (!o->stopped && !final && o->n_stops) {
    /* hold back a tail that is a prefix of some stop string */
    size_t keep = 0;
    for (int i = 0; i < o->n_stops; i++) {
      size_t sl = strlen(o->stops[i]);
      for (size_t k = sl - 1; k > keep; k--)
        if (k <= o->len && memcmp(o->buf + o->len - k, o->stops[i], k) == 0) {
          keep = k;
          break;
        }
    }
    emit = o->len - keep;
  }
  fwrite(o->buf, 1, emit, stdout);
  fflush(stdout);
  memmove(o->buf, o->buf + emit, o->len - emit);
  o->len -= emit;
  if (o->stopped) o->len = 0;
}

static const char run_use[] =
    "usage: heed run MODEL.gguf (-p TEXT | -f FILE) [--chat [--system TEXT] [--chat-template NAME]]\n"
    "                [-n N] [--temp T] [--top-k K] [--top-p P] [--min-p P] [--repeat-penalty R] [--seed S]\n"
    "                [--stop STR]... [--ignore-eos] [--draft ngram [--draft-k K]] [--ctx N] [--batch N]\n"
    "                [--kv f16|bf16|f32|q8|q4|e4m3|e5m2] [--threads N] [--mmap] [--verbose]\n"
    "  --chat: the prompt is a user message, rendered by the model's chat template (or its built-in)\n"
    "  --mmap: read the weights through the file's mapping instead of loading them on huge pages\n"
    "  defaults: -n 256, --temp 0.8, --top-k 40, --top-p 0.95, --min-p 0.05, --repeat-penalty 1, --seed from the clock\n";

static int parse_float(const char *opt, const char *v, double lo, double hi, float *out) {
  char *end;
  errno = 0;
  double d = v ? strtod(v, &end) : 0;
  if (!v || errno || *end || !*v || !(d >= lo && d <= hi)) {
    fprintf(stderr, "heed run: %s %s: accepted: %g..%g\n%s", opt, v ? v : "(missing)", lo, hi, run_use);
    return -1;
  }
  *out = (float)d;
  return 0;
}

int heed_cmd_run(int argc, char **argv) {
  common c = {.kv = HEED_DTYPE_F16};
  const char *prompt = NULL, *file = NULL, *system = NULL, *tmpl = NULL, *draft = NULL;
  int chat = 0, ignore_eos = 0;
  unsigned long n_predict = 256, draft_k = 8;
  heed_sampling smp;
  heed_sampling_init(&smp);
  smp.temperature = 0.8f, smp.top_k = 40, smp.top_p = 0.95f, smp.min_p = 0.05f;
  uint64_t seed = (uint64_t)time(NULL);
  outbuf out = {0};
  for (int i = 0; i < argc; i++) {
    const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
    int r = common_arg("run", &c, argc, argv, &i);
    if (r < 0) return 2;
    if (r) continue;
    float f;
    char *end;
    if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
      fputs(run_use, stdout);
      return 0;
    } else if (strcmp(a, "-p") == 0 && v) prompt = argv[++i];
    else if (strcmp(a, "-f") == 0 && v) file = argv[++i];
    else if (strcmp(a, "--system") == 0 && v) system = argv[++i];
    else if (strcmp(a, "--chat-template") == 0 && v) tmpl = argv[++i];
    else if (strcmp(a, "--chat") == 0) chat = 1;
    else if (strcmp(a, "--ignore-eos") == 0) ignore_eos = 1;
    else if (strcmp(a, "--stop") == 0 && v) {
      if (out.n_stops == MAX_STOPS || !*v) {
        fprintf(stderr, "heed run: --stop: at most %d non-empty strings\n", MAX_STOPS);
        return 2;
      }
      out.stops[out.n_stops++] = argv[++i];
    } else if (strcmp(a, "--draft") == 0 && v) {
      draft = argv[++i];
      if (strcmp(draft, "ngram") != 0) {
        fprintf(stderr, "heed run: --draft %s: accepted: ngram\n", draft);
        return 2;
      }
    } else if ((strcmp(a, "-n") == 0 || strcmp(a, "--draft-k") == 0 || strcmp(a, "--top-k") == 0 ||
                strcmp(a, "--seed") == 0) &&
               v) {
      errno = 0;
      unsigned long long x = strtoull(argv[++i], &end, 10);
      int is_k = strcmp(a, "--draft-k") == 0;
      unsigned long long hi = is_k ? HEED_MAX_DECODE_QUERIES - 1 : strcmp(a, "--seed") == 0 ? UINT64_MAX : 1u << 24;
      unsigned long long lo = is_k ? 1 : 0;
      if (errno || *end || !*v || v[0] == '-' || x < lo || x > hi) {
        fprintf(stderr, "heed run: %s %s: accepted: %llu..%llu\n", a, v, lo, hi);
        return 2;
      }
      if (strcmp(a, "-n") == 0) n_predict = (unsigned long)x;
      else if (is_k) draft_k = (unsigned long)x;
      else if (strcmp(a, "--top-k") == 0) smp.top_k = (unsigned)x;
      else seed = x;
    } else if (strcmp(a, "--temp") == 0) {
      if (parse_float(a, v, 0, 100, &f)) return 2;
      smp.temperature = f, i++;
    } else if (strcmp(a, "--top-p") == 0) {
      if (parse_float(a, v, 1e-6, 1, &f)) return 2;
      smp.top_p = f, i++;
    } else if (strcmp(a, "--min-p") == 0) {
      if (parse_float(a, v, 0, 0.999999, &f)) return 2;
      smp.min_p = f, i++;
    } else if (strcmp(a, "--repeat-penalty") == 0) {
      if (parse_float(a, v, 1e-3, 100, &f)) return 2;
      smp.repetition_penalty = f, i++;
    } else if (a[0] != '-' && !c.model) c.model = a;
    else {
      fprintf(stderr, "heed run: unexpected argument '%s'\n%s", a, run_use);
      return 2;
    }
  }
  if (!c.model || !!prompt + !!file != 1) {
    fprintf(stderr, "heed run: %s\n%s", !c.model ? "which model?" : "give one of -p and -f", run_use);
    return 2;
  }
  if ((system || tmpl) && !chat) {
    fprintf(stderr, "heed run: --system and --chat-template go with --chat\n%s", run_use);
    return 2;
  }
  char *text = NULL;
  size_t text_len = 0;
  if (file) {
    if (!(text = read_all(file, &text_len))) {
      fprintf(stderr, "heed run: cannot read '%s': %s\n", file, strerror(errno));
      return 1;
    }
  } else {
    text = strdup(prompt);
    text_len = strlen(text);
  }
  if (!c.ctx) c.ctx = 4096;
  heed_runtime *rt = NULL;
  heed_model *m = NULL;
  heed_spec *spec = NULL;
  heed_drafter *drafter = NULL;
  heed_chat *ct = NULL;
  heed_tokens ids = {0};
  float *logits = NULL;
  int rc = 1;
  heed_error e = {0};
  if (open_model("run", &c, 1, &rt, &m)) goto done;
  const heed_tokenizer *tok = heed_model_tokenizer(m);
  const heed_model_config *cfg = heed_model_get_config(m);
  const heed_model_options *mo = heed_model_get_options(m);
  /* the prompt's tokens */
  if (chat) {
    if (heed_chat_open(heed_model_gguf(m), tok, tmpl, &ct, &e)) {
      fprintf(stderr, "heed run: %s\n", e.msg);
      goto done;
    }
    /* {"messages": [{"role": "system", ...}, {"role": "user", "content": TEXT}]} as JSON */
    size_t cap = 2 * text_len + (system ? 2 * strlen(system) : 0) + 256;
    char *req = malloc(6 * cap);
    FILE *f = fmemopen(req, 6 * cap, "w");
    fputs("{\"messages\": [", f);
    if (system) {
      fputs("{\"role\": \"system\", \"content\": ", f);
      heed_cli_json_str(f, system, strlen(system));
      fputs("}, ", f);
    }
    fputs("{\"role\": \"user\", \"content\": ", f);
    heed_cli_json_str(f, text, text_len);
    fputs("}]}", f);
    long rl = ftell(f);
    fclose(f);
    heed_status st = heed_chat_prompt(ct, req, (size_t)rl, NULL, NULL, &ids, &e);
    free(req);
    if (st) {
      fprintf(stderr, "heed run: --chat: %s\n", e.msg);
      goto done;
    }
  } else if (heed_tokenizer_encode(tok, text, text_len, HEED_TOKENIZE_ADD_SPECIAL, &ids, &e)) {
    fprintf(stderr, "heed run: %s\n", e.msg);
    goto done;
  }
  if (!ids.n) {
    fprintf(stderr, "heed run: the prompt is empty\n");
    goto done;
  }
  if (ids.n + 1 > mo->n_ctx) {
    fprintf(stderr, "heed run: the prompt has %zu tokens; the context (--ctx) holds %u\n", ids.n, mo->n_ctx);
    goto done;
  }
  size_t V = cfg->n_vocab, K = draft ? draft_k : 0;
  logits = malloc((K + 1) * V * sizeof(float));
  /* the context for the penalty and the drafter: prompt, then every token made */
  int32_t *ctx_ids = malloc(((size_t)mo->n_ctx + K + 2) * sizeof(int32_t));
  memcpy(ctx_ids, ids.ids, ids.n * sizeof(int32_t));
  size_t n_ctx_ids = ids.n;
  heed_spec_config sc = {.vocab = (unsigned)V, .max_draft = K ? (unsigned)K : 1, .max_penalty_tokens = mo->n_ctx + (unsigned)K + 2};
  if (heed_spec_create(rt, &sc, &spec, &e)) {
    fprintf(stderr, "heed run: %s\n", e.msg);
    free(ctx_ids);
    goto done;
  }
  if (K) {
    heed_ngram_config nc = {.vocab = (unsigned)V, .capacity = mo->n_ctx + (unsigned)K + 2};
    if (heed_ngram_drafter_create(&nc, &drafter, &e) || heed_drafter_append(drafter, ids.ids, (unsigned)ids.n)) {
      fprintf(stderr, "heed run: drafter: %s\n", drafter ? heed_drafter_last_error(drafter) : e.msg);
      free(ctx_ids);
      goto done;
    }
  }
  int seq;
  if (heed_model_seq_new(m, &seq)) goto model_error;
  /* prefill */
  double t0 = now_s();
  for (size_t at = 0; at < ids.n;) {
    unsigned k = (unsigned)(ids.n - at < mo->max_batch ? ids.n - at : mo->max_batch);
    heed_model_batch_seq b = {.seq = seq, .n_tokens = k, .tokens = ids.ids + at, .n_logits = at + k == ids.n, .logits = logits};
    if (heed_model_step(m, &b, 1)) goto model_error;
    at += k;
  }
  double t_prefill = now_s() - t0;
  uint64_t step = 0;
  int32_t pending;
  smp.penalty_tokens = ctx_ids, smp.n_penalty_tokens = (unsigned)n_ctx_ids;
  if (heed_spec_sample(spec, &smp, seed, step++, logits, &pending)) goto spec_error;
  /* decode */
  heed_detok_state ds = HEED_DETOK_STATE_INIT;
  size_t dcap = heed_tokenizer_detok_bound(tok);
  char *dbuf = malloc(dcap);
  unsigned long made = 0, drafted = 0, accepted = 0, steps = 0;
  int stop_eos = 0;
  t0 = now_s();
  for (;;) {
    /* emit pending */
    if (!ignore_eos && heed_tokenizer_is_eog(tok, pending)) {
      stop_eos = 1;
      break;
    }
    size_t dl;
    heed_tokenizer_detok_push(tok, &ds, pending, 0, dbuf, dcap, &dl);
    out_push(&out, dbuf, dl, 0);
    made++;
    ctx_ids[n_ctx_ids++] = pending;
    if (out.stopped || made >= n_predict || (unsigned long)heed_model_seq_len(m, seq) + 1 + K >= mo->n_ctx) break;
    /* feed pending (and a draft), get the next */
    heed_draft d = {0};
    if (drafter) {
      if (heed_drafter_append(drafter, &pending, 1) || heed_drafter_propose(drafter, (unsigned)K, &d)) {
        fprintf(stderr, "heed run: drafter: %s\n", heed_drafter_last_error(drafter));
        goto done_decode;
      }
    }
    int32_t feed[HEED_MAX_DECODE_QUERIES];
    feed[0] = pending;
    for (unsigned j = 0; j < d.n; j++) feed[1 + j] = d.tokens[j];
    long len0 = heed_model_seq_len(m, seq);
    heed_model_batch_seq b = {.seq = seq, .n_tokens = 1 + d.n, .tokens = feed, .n_logits = 1 + d.n, .logits = logits};
    if (heed_model_step(m, &b, 1)) goto model_error_decode;
    steps++;
    smp.n_penalty_tokens = (unsigned)n_ctx_ids;
    if (!d.n) {
      if (heed_spec_sample(spec, &smp, seed, step++, logits, &pending)) goto spec_error_decode;
      continue;
    }
    heed_spec_result res;
    if (heed_spec_verify_chain(spec, &smp, seed, step++, logits, d.tokens, d.n, &d.q, &res)) goto spec_error_decode;
    drafted += d.n, accepted += res.n_accepted;
    if (heed_model_seq_truncate(m, seq, (unsigned)len0 + 1 + res.n_accepted)) goto model_error_decode;
    /* the accepted drafts are output in order, then the next token is pending */
    int done_early = 0;
    for (unsigned j = 0; j < res.n_accepted; j++) {
      int32_t t = d.tokens[j];
      if (!ignore_eos && heed_tokenizer_is_eog(tok, t)) {
        stop_eos = done_early = 1;
        break;
      }
      heed_tokenizer_detok_push(tok, &ds, t, 0, dbuf, dcap, &dl);
      out_push(&out, dbuf, dl, 0);
      made++;
      ctx_ids[n_ctx_ids++] = t;
      if (drafter) heed_drafter_append(drafter, &t, 1);
      if (out.stopped || made >= n_predict) {
        done_early = 1;
        break;
      }
    }
    if (done_early) break;
    pending = res.next_token;
  }
  {
    size_t dl;
    heed_tokenizer_detok_flush(&ds, 0, dbuf, dcap, &dl);
    out_push(&out, dbuf, dl, 1);
  }
  double t_decode = now_s() - t0;
  putchar('\n');
  fflush(stdout);
  fprintf(stderr, "\nheed run: prompt %zu tokens in %.2f s (%.1f tok/s); generated %lu tokens in %.2f s (%.1f tok/s, %lu steps)",
          ids.n, t_prefill, ids.n / t_prefill, made, t_decode, made > 1 ? (made - 1) / t_decode : 0.0, steps);
  if (K)
    fprintf(stderr, "; draft ngram k=%zu: %lu of %lu accepted (%.0f%%)", K, accepted, drafted,
            drafted ? 100.0 * accepted / drafted : 0.0);
  fprintf(stderr, "; stop: %s", stop_eos ? "end of generation" : out.stopped ? "stop string" : "length");
  if (c.verbose) fprintf(stderr, "; resident %.0f MiB", rss_mib());
  fprintf(stderr, "\n");
  rc = 0;
  goto done_decode;
model_error_decode:
  fprintf(stderr, "heed run: %s\n", heed_model_last_error(m));
  goto done_decode;
spec_error_decode:
  fprintf(stderr, "heed run: %s\n", heed_spec_last_error(spec));
done_decode:
  free(dbuf);
  free(ctx_ids);
  goto done;
model_error:
  fprintf(stderr, "heed run: %s\n", heed_model_last_error(m));
  free(ctx_ids);
  goto done;
spec_error:
  fprintf(stderr, "heed run: %s\n", heed_spec_last_error(spec));
  free(ctx_ids);
done:
  free(out.buf);
  free(logits);
  free(text);
  heed_tokens_free(&ids);
  heed_drafter_destroy(drafter);
  heed_spec_destroy(spec);
  heed_chat_free(ct);
  heed_model_close(m);
  heed_runtime_close(rt);
  return rc;
}

/* ---------- perplexity ---------- */

static const char ppl_use[] = "usage: heed perplexity MODEL.gguf -f FILE [--ctx N] [--kv DTYPE] [--chunks N] [--batch N] "
                              "[--threads N] [--mmap] [--json] [--verbose]\n"
                              "  defaults: --ctx 512, every whole window of the text\n";

int heed_cmd_perplexity(int argc, char **argv) {
  common c = {.kv = HEED_DTYPE_F16};
  const char *file = NULL;
  int json = 0;
  unsigned long max_chunks = 0;
  for (int i = 0; i < argc; i++) {
    int r = common_arg("perplexity", &c, argc, argv, &i);
    if (r < 0) return 2;
    if (r) continue;
    const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
    if (strcmp(a, "-f") == 0 && v) file = argv[++i];
    else if (strcmp(a, "--json") == 0) json = 1;
    else if (strcmp(a, "--chunks") == 0 && v) {
      char *end;
      max_chunks = strtoul(argv[++i], &end, 10);
      if (*end || !max_chunks) {
        fprintf(stderr, "heed perplexity: --chunks %s: accepted: 1 or more\n", v);
        return 2;
      }
    } else if (a[0] != '-' && !c.model) c.model = a;
    else {
      fprintf(stderr, "heed perplexity: unexpected argument '%s'\n%s", a, ppl_use);
      return 2;
    }
  }
  if (!c.model || !file) {
    fprintf(stderr, "heed perplexity: %s\n%s", !c.model ? "which model?" : "which text (-f FILE)?", ppl_use);
    return 2;
  }
  if (!c.ctx) c.ctx = 512;
  if (c.ctx < 8) {
    fprintf(stderr, "heed perplexity: --ctx %u: at least 8\n", c.ctx);
    return 2;
  }
  size_t len;
  char *text = read_all(file, &len);
  if (!text) {
    fprintf(stderr, "heed perplexity: cannot read '%s': %s\n", file, strerror(errno));
    return 1;
  }
  heed_runtime *rt = NULL;
  heed_model *m = NULL;
  heed_tokens ids = {0};
  float *logits = NULL;
  int rc = 1;
  heed_error e = {0};
  if (!c.batch) c.batch = c.ctx < 512 ? c.ctx : 512;
  if (open_model("perplexity", &c, 1, &rt, &m)) goto done;
  const heed_tokenizer *tok = heed_model_tokenizer(m);
  heed_tokenizer_info ti;
  heed_tokenizer_get_info(tok, &ti);
  if (heed_tokenizer_encode(tok, text, len, HEED_TOKENIZE_ADD_SPECIAL, &ids, &e)) {
    fprintf(stderr, "heed perplexity: %s\n", e.msg);
    goto done;
  }
  const heed_model_options *mo = heed_model_get_options(m);
  unsigned n_ctx = c.ctx, B = mo->max_batch;
  size_t n_chunks = ids.n / n_ctx;
  if (max_chunks && n_chunks > max_chunks) n_chunks = max_chunks;
  if (!n_chunks) {
    fprintf(stderr, "heed perplexity: the text has %zu tokens; one window of --ctx %u needs more\n", ids.n, n_ctx);
    goto done;
  }
  size_t V = heed_model_get_config(m)->n_vocab;
  logits = malloc((size_t)n_ctx * V * sizeof(float));
  int32_t *win = malloc(n_ctx * sizeof(int32_t));
  double nll = 0, nll2 = 0;
  size_t count = 0;
  double t0 = now_s();
  unsigned first = n_ctx / 2;
  for (size_t ch = 0; ch < n_chunks; ch++) {
    memcpy(win, ids.ids + ch * n_ctx, n_ctx * sizeof(int32_t));
    if (ti.add_bos && ti.bos != HEED_TOKEN_NONE) win[0] = ti.bos;
    int seq;
    if (heed_model_seq_new(m, &seq)) goto model_error;
    for (unsigned at = 0; at < n_ctx;) {
      unsigned k = n_ctx - at < B ? n_ctx - at : B;
      heed_model_batch_seq b = {.seq = seq, .n_tokens = k, .tokens = win + at, .n_logits = k, .logits = logits + (size_t)at * V};
      if (heed_model_step(m, &b, 1)) goto model_error;
      at += k;
    }
    heed_model_seq_free(m, seq);
    for (unsigned j = first; j + 1 < n_ctx; j++) {
      const float *row = logits + (size_t)j * V;
      float mx = row[0];
      for (size_t i = 1; i < V; i++)
        if (row[i] > mx) mx = row[i];
      double z = 0;
      for (size_t i = 0; i < V; i++) z += exp((double)row[i] - mx);
      double l = -((double)row[win[j + 1]] - mx - log(z));
      nll += l, nll2 += l * l, count++;
    }
    if (!json) {
      fprintf(stderr, "[%zu]%.4f%s", ch + 1, exp(nll / count), ch + 1 == n_chunks ? "\n" : ",");
      fflush(stderr);
    }
  }
  double mean = nll / count, var = nll2 / count - mean * mean, ppl = exp(mean);
  double err = var > 0 && count > 1 ? sqrt(var / (count - 1)) * ppl : 0;
  double secs = now_s() - t0;
  if (json)
    printf("{\"ppl\": %.6f, \"err\": %.6f, \"n_tokens\": %zu, \"windows\": %zu, \"ctx\": %u, \"kv\": \"%s\", \"seconds\": %.2f}\n",
           ppl, err, count, n_chunks, n_ctx, heed_dtype_name(mo->kv_dtype), secs);
  else
    printf("Final estimate: PPL = %.4f +/- %.5f  (%zu windows of %u tokens, %zu scored, KV %s, %.1f s, %.0f tok/s)\n", ppl,
           err, n_chunks, n_ctx, count, heed_dtype_name(mo->kv_dtype), secs, n_chunks * n_ctx / secs);
  rc = 0;
  free(win);
  goto done;
model_error:
  fprintf(stderr, "heed perplexity: %s\n", heed_model_last_error(m));
  free(win);
done:
  free(logits);
  free(text);
  heed_tokens_free(&ids);
  heed_model_close(m);
  heed_runtime_close(rt);
  return rc;
}
