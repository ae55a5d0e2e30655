/* tools/model_cmd.c - `heed model info` and `heed model dump`: what a GGUF file holds.
 *
 * info: the model as heed reads it (architecture, hyperparameters, tensors by
 * type, tokenizer, special tokens, chat template, KV-cache bytes per token in
 * every KV format), as text or JSON. dump: every metadata key with its full
 * value and every tensor, as JSON, so that tests can compare heed's reading
 * with the gguf package's and users can look inside a file.
 *
 * JSON strings from the file are escaped; bytes that are not UTF-8 become
 * U+FFFD. Floats are written so that they read back to the same value (f32
 * %.9g, f64 %.17g); NaN and infinities, which JSON lacks, as the strings
 * "nan", "inf", "-inf". */
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "heed/gguf.h"
#include "heed/model.h"
#include "tools/commands.h"

/* ---------- JSON ---------- */

/* Length of the valid UTF-8 sequence at s (n bytes left), 0 when s starts no valid one. */
static size_t utf8_len(const unsigned char *s, size_t n) {
  unsigned c = s[0];
  size_t len;
  uint32_t cp, min;
  if (c < 0x80) return 1;
  if (c >= 0xC2 && c <= 0xDF) len = 2, cp = c & 0x1F, min = 0x80;
  else if (c >= 0xE0 && c <= 0xEF) len = 3, cp = c & 0x0F, min = 0x800;
  else if (c >= 0xF0 && c <= 0xF4) len = 4, cp = c & 0x07, min = 0x10000;
  else return 0;
  if (n < len) return 0;
  for (size_t i = 1; i < len; i++) {
    if ((s[i] & 0xC0) != 0x80) return 0;
    cp = cp << 6 | (s[i] & 0x3F);
  }
  if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
  return len;
}

void heed_cli_json_str(FILE *f, const char *p, uint64_t n) {
  const unsigned char *s = (const unsigned char *)p;
  putc('"', f);
  for (uint64_t i = 0; i < n;) {
    unsigned c = s[i];
    if (c == '"' || c == '\\') {
      putc('\\', f), putc((int)c, f), i++;
    } else if (c < 0x20 || c == 0x7f) {
      switch (c) {
      case '\n': fputs("\\n", f); break;
      case '\t': fputs("\\t", f); break;
      case '\r': fputs("\\r", f); break;
      default: fprintf(f, "\\u%04x", c); break;
      }
      i++;
    } else {
      size_t len = utf8_len(s + i, (size_t)(n - i < 4 ? n - i : 4));
      if (len) fwrite(s + i, 1, len, f), i += len;
      else fputs("\\ufffd", f), i++;
    }
  }
  putc('"', f);
}

static void json_str(FILE *f, const char *s) {
  if (s) heed_cli_json_str(f, s, strlen(s));
  else fputs("null", f);
}

/* A float that reads back exactly: digits = 9 (f32) or 17 (f64). */
static void json_float(FILE *f, double x, int digits) {
  if (isnan(x)) fputs("\"nan\"", f);
  else if (isinf(x)) fputs(x > 0 ? "\"inf\"" : "\"-inf\"", f);
  else if (x == 0 && signbit(x)) fputs("-0.0", f); /* "-0" would read back as the integer 0 */
  else fprintf(f, "%.*g", digits, x);
}

/* ---------- values ---------- */

static void dump_value(FILE *f, const heed_gguf *g, const heed_gguf_value *v);

/* An array: {"elem_type": T, "items": [...]}, arrays of arrays nested alike. */
static void dump_array(FILE *f, const heed_gguf *g, const heed_gguf_value *v) {
  fprintf(f, "{\"elem_type\": \"%s\", \"items\": [", heed_gguf_vtype_name(v->v.arr.elem_type));
  for (uint64_t i = 0; i < v->v.arr.n; i++) {
    heed_gguf_value e;
    if (heed_gguf_array_get(g, v, i, &e) != HEED_OK) { /* cannot happen on an opened file */
      fprintf(stderr, "heed model dump: %s\n", heed_gguf_last_error(g));
      exit(1);
    }
    if (i) fputs(", ", f);
    dump_value(f, g, &e);
  }
  fputs("]}", f);
}

static void dump_value(FILE *f, const heed_gguf *g, const heed_gguf_value *v) {
  switch (v->type) {
  case HEED_GGUF_UINT8: case HEED_GGUF_UINT16: case HEED_GGUF_UINT32: case HEED_GGUF_UINT64:
    fprintf(f, "%" PRIu64, v->v.u);
    break;
  case HEED_GGUF_INT8: case HEED_GGUF_INT16: case HEED_GGUF_INT32: case HEED_GGUF_INT64:
    fprintf(f, "%" PRId64, v->v.i);
    break;
  case HEED_GGUF_BOOL: fputs(v->v.u ? "true" : "false", f); break;
  case HEED_GGUF_FLOAT32: json_float(f, v->v.f, 9); break;
  case HEED_GGUF_FLOAT64: json_float(f, v->v.f, 17); break;
  case HEED_GGUF_STRING: heed_cli_json_str(f, v->v.str.ptr, v->v.str.len); break;
  case HEED_GGUF_ARRAY: dump_array(f, g, v); break;
  }
}

static void json_files(FILE *f, const heed_gguf *g) {
  fputs("[", f);
  for (uint32_t i = 0; i < heed_gguf_n_files(g); i++) {
    if (i) fputs(", ", f);
    json_str(f, heed_gguf_file_path(g, i));
  }
  fputs("]", f);
}

static int cmd_dump(const heed_gguf *g) {
  FILE *f = stdout;
  fputs("{\n  \"files\": ", f);
  json_files(f, g);
  fprintf(f, ",\n  \"file_bytes\": %" PRIu64 ",\n  \"version\": %u,\n  \"alignment\": %u,\n  \"metadata\": [",
          heed_gguf_file_bytes(g), heed_gguf_version(g), heed_gguf_alignment(g));
  for (uint64_t i = 0; i < heed_gguf_n_kv(g); i++) {
    heed_gguf_str k;
    heed_gguf_value v;
    heed_gguf_kv_at(g, i, &k, &v);
    fputs(i ? ",\n    {\"key\": " : "\n    {\"key\": ", f);
    heed_cli_json_str(f, k.ptr, k.len);
    fprintf(f, ", \"type\": \"%s\", \"value\": ", heed_gguf_vtype_name(v.type));
    dump_value(f, g, &v);
    fputs("}", f);
  }
  fputs("\n  ],\n  \"tensors\": [", f);
  for (uint64_t i = 0; i < heed_gguf_n_tensors(g); i++) {
    const heed_gguf_tensor *t = heed_gguf_tensor_at(g, i);
    fputs(i ? ",\n    {\"name\": " : "\n    {\"name\": ", f);
    json_str(f, t->name);
    fprintf(f, ", \"type\": \"%s\", \"type_id\": %d, \"shape\": [", heed_ggml_type_name((int)t->type), (int)t->type);
    for (uint32_t d = 0; d < t->n_dims; d++) fprintf(f, "%s%" PRIu64, d ? ", " : "", t->ne[d]);
    fprintf(f, "], \"n_elems\": %" PRIu64 ", \"bytes\": %" PRIu64 ", \"offset\": %" PRIu64 ", \"file\": %u}", t->n_elems,
            t->bytes, t->offset, t->file);
  }
  fputs("\n  ]\n}\n", f);
  return ferror(f) ? 1 : 0;
}

/* ---------- info ---------- */

/* Text of a string value for a terminal: control bytes as '?', at most max bytes. */
static void print_text(FILE *f, const char *s, uint64_t n, uint64_t max) {
  for (uint64_t i = 0; i < n && i < max; i++) {
    unsigned char c = (unsigned char)s[i];
    putc(c < 0x20 || c == 0x7f ? '?' : c, f);
  }
  if (n > max) fputs("...", f);
}

typedef struct special {
  const char *name, *key;
  int has;
  uint64_t id;
  heed_gguf_str text; /* ptr NULL: id outside the vocabulary */
} special;

static const double MIB = 1048576.0;
static const unsigned CTX_SHOWN[2] = {32768, 131072};

static int cmd_info(const heed_gguf *g, int json) {
  heed_model_config c;
  heed_error e = {0};
  if (heed_model_config_read(g, &c, &e) != HEED_OK) {
    fprintf(stderr, "heed model info: %s\n", e.msg);
    return 1;
  }
  /* tensors by type */
  uint64_t count[64] = {0}, bytes[64] = {0}, all_bytes = 0, n_params = 0;
  for (uint64_t i = 0; i < heed_gguf_n_tensors(g); i++) {
    const heed_gguf_tensor *t = heed_gguf_tensor_at(g, i);
    count[t->type & 63]++, bytes[t->type & 63] += t->bytes;
    all_bytes += t->bytes, n_params += t->n_elems;
  }
  /* tokenizer */
  heed_gguf_str tk_model = {0}, tk_pre = {0}, name = {0}, tmpl = {0};
  heed_gguf_get_str(g, "tokenizer.ggml.model", &tk_model);
  heed_gguf_get_str(g, "tokenizer.ggml.pre", &tk_pre);
  heed_gguf_get_str(g, "general.name", &name);
  int has_tmpl = heed_gguf_get_str(g, "tokenizer.chat_template", &tmpl) == HEED_OK;
  heed_gguf_value toks, merges;
  heed_gguf_get(g, "tokenizer.ggml.tokens", &toks); /* there: the config read it */
  uint64_t n_merges = heed_gguf_get(g, "tokenizer.ggml.merges", &merges) == HEED_OK && merges.type == HEED_GGUF_ARRAY
                          ? merges.v.arr.n : 0;
  special sp[] = {{"bos", "tokenizer.ggml.bos_token_id", 0, 0, {0}},       {"eos", "tokenizer.ggml.eos_token_id", 0, 0, {0}},
                  {"eot", "tokenizer.ggml.eot_token_id", 0, 0, {0}},       {"pad", "tokenizer.ggml.padding_token_id", 0, 0, {0}},
                  {"unk", "tokenizer.ggml.unknown_token_id", 0, 0, {0}}};
  for (size_t i = 0; i < sizeof sp / sizeof *sp; i++) {
    if (heed_gguf_get_u64(g, sp[i].key, &sp[i].id) != HEED_OK) continue;
    sp[i].has = 1;
    heed_gguf_value v;
    if (sp[i].id < c.n_vocab && heed_gguf_array_get(g, &toks, sp[i].id, &v) == HEED_OK) sp[i].text = v.v.str;
  }
  /* KV cache */
  double kv[HEED_DTYPE_COUNT];
  int kv_ok[HEED_DTYPE_COUNT];
  char kv_why[HEED_ERROR_MSG_MAX] = "";
  for (int d = 0; d < HEED_DTYPE_COUNT; d++) {
    heed_error ke = {0};
    kv_ok[d] = heed_model_kv_bytes_per_token(&c, (heed_dtype)d, &kv[d], &ke) == HEED_OK;
    if (!kv_ok[d]) memcpy(kv_why, ke.msg, sizeof kv_why);
  }

  FILE *f = stdout;
  if (json) {
    fputs("{\n  \"files\": ", f);
    json_files(f, g);
    fprintf(f, ",\n  \"file_bytes\": %" PRIu64 ",\n  \"gguf_version\": %u,\n  \"alignment\": %u,\n  \"n_kv\": %" PRIu64
            ",\n  \"name\": ", heed_gguf_file_bytes(g), heed_gguf_version(g), heed_gguf_alignment(g), heed_gguf_n_kv(g));
    if (name.ptr) heed_cli_json_str(f, name.ptr, name.len);
    else fputs("null", f);
    fputs(",\n  \"architecture\": ", f);
    json_str(f, heed_arch_name(c.arch));
    fprintf(f, ",\n  \"config\": {\"n_layer\": %u, \"n_embd\": %u, \"n_ff\": %u, \"n_head\": %u, \"n_head_kv\": %u, "
            "\"head_dim_k\": %u, \"head_dim_v\": %u, \"n_rot\": %u, \"n_ctx_train\": %u, \"n_vocab\": %u, \"rope_freq_base\": ",
            c.n_layer, c.n_embd, c.n_ff, c.n_head, c.n_head_kv, c.head_dim_k, c.head_dim_v, c.n_rot, c.n_ctx_train, c.n_vocab);
    json_float(f, c.rope_freq_base, 17);
    fputs(", \"rope_freq_base_swa\": ", f);
    json_float(f, c.rope_freq_base_swa, 17);
    fputs(", \"rms_eps\": ", f);
    json_float(f, c.rms_eps, 17);
    fprintf(f, ", \"sliding_window\": %u, \"swa_pattern\": %u},\n", c.sliding_window, c.swa_pattern);
    fprintf(f, "  \"tensors\": {\"count\": %" PRIu64 ", \"bytes\": %" PRIu64 ", \"params\": %" PRIu64 ", \"by_type\": [",
            heed_gguf_n_tensors(g), all_bytes, n_params);
    int first = 1;
    for (int t = 0; t < 64; t++)
      if (count[t]) {
        fprintf(f, "%s{\"type\": \"%s\", \"count\": %" PRIu64 ", \"bytes\": %" PRIu64 "}", first ? "" : ", ", heed_ggml_type_name(t),
                count[t], bytes[t]);
        first = 0;
      }
    fputs("]},\n  \"tokenizer\": {\"model\": ", f);
    if (tk_model.ptr) heed_cli_json_str(f, tk_model.ptr, tk_model.len);
    else fputs("null", f);
    fputs(", \"pre\": ", f);
    if (tk_pre.ptr) heed_cli_json_str(f, tk_pre.ptr, tk_pre.len);
    else fputs("null", f);
    fprintf(f, ", \"n_vocab\": %u, \"n_merges\": %" PRIu64 ", \"special\": {", c.n_vocab, n_merges);
    for (size_t i = 0; i < sizeof sp / sizeof *sp; i++) {
      fprintf(f, "%s\"%s\": ", i ? ", " : "", sp[i].name);
      if (!sp[i].has) {
        fputs("null", f);
        continue;
      }
      fprintf(f, "{\"id\": %" PRIu64 ", \"text\": ", sp[i].id);
      if (sp[i].text.ptr) heed_cli_json_str(f, sp[i].text.ptr, sp[i].text.len);
      else fputs("null", f);
      fputs("}", f);
    }
    fprintf(f, "}},\n  \"chat_template\": {\"present\": %s, \"bytes\": %" PRIu64 "},\n  \"kv_cache\": {\"block_len\": 256, "
            "\"per_token\": [", has_tmpl ? "true" : "false", has_tmpl ? tmpl.len : 0);
    first = 1;
    for (int d = 0; d < HEED_DTYPE_COUNT; d++) {
      if (!kv_ok[d]) continue;
      fprintf(f, "%s\n    {\"dtype\": \"%s\", \"bytes_per_token\": %.17g, \"mib_32k\": %.6f, \"mib_128k\": %.6f}", first ? "" : ",",
              heed_dtype_name((heed_dtype)d), kv[d], kv[d] * CTX_SHOWN[0] / MIB, kv[d] * CTX_SHOWN[1] / MIB);
      first = 0;
    }
    fputs("],\n    \"refused\": ", f);
    json_str(f, kv_why[0] ? kv_why : NULL);
    fputs("}\n}\n", f);
    return ferror(f) ? 1 : 0;
  }

  for (uint32_t i = 0; i < heed_gguf_n_files(g); i++)
    fprintf(f, "%-13s %s\n", i ? "" : (heed_gguf_n_files(g) > 1 ? "files" : "file"), heed_gguf_file_path(g, i));
  fprintf(f, "%-13s version %u, alignment %u, %" PRIu64 " keys, %" PRIu64 " bytes\n", "gguf", heed_gguf_version(g),
          heed_gguf_alignment(g), heed_gguf_n_kv(g), heed_gguf_file_bytes(g));
  if (name.ptr) {
    fprintf(f, "%-13s ", "name");
    print_text(f, name.ptr, name.len, 200);
    putc('\n', f);
  }
  fprintf(f, "%-13s %s\n", "architecture", heed_arch_name(c.arch));
  fprintf(f, "  layers %u, embedding %u, feed-forward %u\n", c.n_layer, c.n_embd, c.n_ff);
  fprintf(f, "  heads %u query, %u KV (%u queries per KV head); head dim K %u, V %u; rope dims %u\n", c.n_head, c.n_head_kv,
          c.n_head / c.n_head_kv, c.head_dim_k, c.head_dim_v, c.n_rot);
  fprintf(f, "  trained context %u tokens; rope base %g", c.n_ctx_train, c.rope_freq_base);
  if (c.swa_pattern) fprintf(f, " (local layers %g)", c.rope_freq_base_swa);
  fprintf(f, "; rms eps %g\n", c.rms_eps);
  if (c.sliding_window && !c.swa_pattern)
    fprintf(f, "  sliding window %u tokens on every layer\n", c.sliding_window);
  else if (c.sliding_window)
    fprintf(f, "  sliding window %u tokens on %u of every %u layers\n", c.sliding_window, c.swa_pattern - 1, c.swa_pattern);
  fprintf(f, "%-13s %" PRIu64 ", %.1f MiB, %.3g parameters\n", "tensors", heed_gguf_n_tensors(g), all_bytes / MIB, (double)n_params);
  for (int t = 0; t < 64; t++)
    if (count[t]) fprintf(f, "  %-6s %5" PRIu64 " tensors %10.1f MiB\n", heed_ggml_type_name(t), count[t], bytes[t] / MIB);
  fprintf(f, "%-13s ", "tokenizer");
  if (tk_model.ptr) print_text(f, tk_model.ptr, tk_model.len, 64);
  else fputs("(no tokenizer.ggml.model)", f);
  if (tk_pre.ptr) fputs(", pre ", f), print_text(f, tk_pre.ptr, tk_pre.len, 64);
  fprintf(f, "; %u tokens", c.n_vocab);
  if (n_merges) fprintf(f, ", %" PRIu64 " merges", n_merges);
  putc('\n', f);
  for (size_t i = 0; i < sizeof sp / sizeof *sp; i++) {
    fprintf(f, "  %s ", sp[i].name);
    if (!sp[i].has) fputs("-", f);
    else if (!sp[i].text.ptr) fprintf(f, "%" PRIu64 " (outside the vocabulary)", sp[i].id);
    else {
      fprintf(f, "%" PRIu64 " '", sp[i].id);
      print_text(f, sp[i].text.ptr, sp[i].text.len, 64);
      putc('\'', f);
    }
    putc('\n', f);
  }
  if (has_tmpl) fprintf(f, "%-13s present, %" PRIu64 " bytes\n", "chat template", tmpl.len);
  else fprintf(f, "%-13s none\n", "chat template");
  fprintf(f, "KV cache      per token, K and V in all %u layers (blocks of 256 tokens)\n", c.n_layer);
  fprintf(f, "  %-6s %12s %14s %14s\n", "dtype", "bytes/token", "MiB per 32k", "MiB per 128k");
  for (int d = 0; d < HEED_DTYPE_COUNT; d++)
    if (kv_ok[d])
      fprintf(f, "  %-6s %12.1f %14.1f %14.1f\n", heed_dtype_name((heed_dtype)d), kv[d], kv[d] * CTX_SHOWN[0] / MIB,
              kv[d] * CTX_SHOWN[1] / MIB);
  if (kv_why[0]) fprintf(f, "  %s\n", kv_why);
  return ferror(f) ? 1 : 0;
}

int heed_cmd_model(int argc, char **argv) {
  static const char use[] = "usage: heed model info FILE [--json]\n       heed model dump FILE\n";
  if (argc < 1 || (strcmp(argv[0], "info") != 0 && strcmp(argv[0], "dump") != 0)) {
    fprintf(stderr, "%s%s%s", argc ? "heed model: unknown subcommand '" : "", argc ? argv[0] : "", argc ? "'\n" : "");
    fputs(use, stderr);
    return 2;
  }
  int info = strcmp(argv[0], "info") == 0, json = 0;
  const char *path = NULL;
  for (int i = 1; i < argc; i++) {
    if (info && strcmp(argv[i], "--json") == 0) {
      json = 1;
    } else if (argv[i][0] != '-' && !path) {
      path = argv[i];
    } else {
      fprintf(stderr, "heed model %s: unexpected argument '%s'\n%s", argv[0], argv[i], use);
      return 2;
    }
  }
  if (!path) {
    fprintf(stderr, "heed model %s: which file?\n%s", argv[0], use);
    return 2;
  }
  heed_gguf *g;
  heed_error e = {0};
  if (heed_gguf_open(path, &g, &e) != HEED_OK) {
    fprintf(stderr, "heed model %s: %s (%s)\n", argv[0], e.msg, heed_status_name(e.status));
    return 1;
  }
  static char buf[1 << 16]; /* a vocabulary is a few MB of JSON */
  setvbuf(stdout, buf, _IOFBF, sizeof buf);
  int rc = info ? cmd_info(g, json) : cmd_dump(g);
  if (fflush(stdout) != 0) rc = 1;
  heed_gguf_close(g);
  return rc;
}
