/* tests/template_driver.c - renders chat templates for tests/template_oracle.py.
 *
 *   template_driver [options] TEMPLATE_FILE INPUT_FILE
 *       renders TEMPLATE_FILE (or --builtin NAME, then only INPUT_FILE) with
 *       INPUT_FILE as a chat request (default) or, with --context, as the
 *       template's context; the text goes to stdout, errors to stderr (exit 1).
 *       --var NAME=VALUE   a trusted variable (repeatable)
 *       --spans FILE       write the untrusted spans as JSON [[offset, length], ...]
 *       --time SECONDS     strftime_now's time (UTC); default: the clock
 *   template_driver --print-builtin NAME
 *       writes a built-in template's source
 *   template_driver --batch FILE
 *       one case per line, a JSON object {"template": "...", "input": "JSON text",
 *       "builtin": NAME (instead of template), "chat": true|false, "vars": {"bos_token": "<s>", ...}, "time": N};
 *       one JSON line out per case: {"ok": true, "text": "...", "spans":
 *       [[off, len], ...]} or {"ok": false, "status": "HEED_E_...", "error": "..."}.
 */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "heed/chat.h"
#include "heed/template.h"

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
  buf = realloc(buf, n + 1);
  buf[n] = '\0';
  *len = n;
  return buf;
}

static cJSON *spans_json(const heed_template_text *t) {
  cJSON *a = cJSON_CreateArray();
  for (size_t i = 0; i < t->n_spans; i++)
    if (t->spans[i].untrusted) {
      cJSON *p = cJSON_CreateArray();
      cJSON_AddItemToArray(p, cJSON_CreateNumber((double)t->spans[i].offset));
      cJSON_AddItemToArray(p, cJSON_CreateNumber((double)t->spans[i].length));
      cJSON_AddItemToArray(a, p);
    }
  return a;
}

static heed_status render(const char *tmpl, size_t tlen, const char *input, size_t ilen, int chat,
                          const heed_template_var *vars, size_t nvars, const heed_template_options *o,
                          heed_template_text *out, heed_error *err) {
  heed_template *t = NULL;
  heed_status st = heed_template_parse(tmpl, tlen, &t, err);
  if (st) return st;
  st = chat ? heed_chat_render(t, input, ilen, vars, nvars, o, out, err)
            : heed_template_render(t, input, ilen, vars, nvars, o, out, err);
  heed_template_free(t);
  return st;
}

static int batch(const char *path) {
  FILE *f = strcmp(path, "-") ? fopen(path, "rb") : stdin;
  if (!f) {
    fprintf(stderr, "cannot open %s\n", path);
    return 2;
  }
  char *line = NULL;
  size_t cap = 0;
  ssize_t n;
  while ((n = getline(&line, &cap, f)) > 0) {
    cJSON *c = cJSON_ParseWithLength(line, (size_t)n);
    if (!c) {
      fprintf(stderr, "bad case line\n");
      return 2;
    }
    const cJSON *tj = cJSON_GetObjectItem(c, "template"), *ij = cJSON_GetObjectItem(c, "input"),
                *vj = cJSON_GetObjectItem(c, "vars"), *cj = cJSON_GetObjectItem(c, "chat"),
                *tm = cJSON_GetObjectItem(c, "time");
    /* the input as JSON text, never re-printed (cJSON would write 1.0 as 1) */
    const char *input = cJSON_IsString(ij) ? ij->valuestring : NULL;
    heed_template_var vars[32];
    size_t nv = 0;
    for (const cJSON *v = vj ? vj->child : NULL; v && nv < 32; v = v->next)
      if (cJSON_IsString(v)) vars[nv++] = (heed_template_var){v->string, v->valuestring};
    heed_template_options o;
    heed_template_options_init(&o);
    if (cJSON_IsNumber(tm)) {
      o.flags |= HEED_TEMPLATE_FIXED_TIME;
      o.now = (int64_t)tm->valuedouble;
    }
    heed_template_text out;
    heed_error err = {0};
    const char *ts = cJSON_IsString(tj) ? tj->valuestring : "";
    const cJSON *bj = cJSON_GetObjectItem(c, "builtin");
    if (cJSON_IsString(bj)) {
      heed_error berr;
      if (heed_chat_builtin(bj->valuestring, &ts, &berr)) ts = "";
    }
    heed_status st =
        render(ts, strlen(ts), input, input ? strlen(input) : 0, cJSON_IsTrue(cj), vars, nv, &o, &out, &err);
    cJSON *res = cJSON_CreateObject();
    cJSON_AddBoolToObject(res, "ok", st == HEED_OK);
    if (st == HEED_OK) {
      cJSON_AddStringToObject(res, "text", out.text);
      cJSON_AddItemToObject(res, "spans", spans_json(&out));
    } else {
      cJSON_AddStringToObject(res, "status", heed_status_name(st));
      cJSON_AddStringToObject(res, "error", err.msg);
    }
    char *s = cJSON_PrintUnformatted(res);
    fputs(s, stdout);
    fputc('\n', stdout);
    fflush(stdout);
    free(s);
    cJSON_Delete(res);
    heed_template_text_free(&out);
    cJSON_Delete(c);
  }
  free(line);
  if (f != stdin) fclose(f);
  return 0;
}

int main(int argc, char **argv) {
  heed_template_var vars[64];
  size_t nv = 0;
  const char *spans_path = NULL, *builtin = NULL;
  int chat = 1;
  heed_template_options o;
  heed_template_options_init(&o);
  int i = 1;
  for (; i < argc && argv[i][0] == '-' && argv[i][1] == '-'; i++) {
    if (!strcmp(argv[i], "--batch") && i + 1 < argc) return batch(argv[i + 1]);
    if (!strcmp(argv[i], "--print-builtin") && i + 1 < argc) {
      const char *src;
      heed_error err;
      if (heed_chat_builtin(argv[i + 1], &src, &err)) return fprintf(stderr, "error: %s\n", err.msg), 1;
      fputs(src, stdout);
      return 0;
    }
    if (!strcmp(argv[i], "--context")) chat = 0;
    else if (!strcmp(argv[i], "--chat")) chat = 1;
    else if (!strcmp(argv[i], "--var") && i + 1 < argc && nv < 64) {
      char *eq = strchr(argv[++i], '=');
      if (!eq) return fprintf(stderr, "--var NAME=VALUE\n"), 2;
      *eq = '\0';
      vars[nv++] = (heed_template_var){argv[i], eq + 1};
    } else if (!strcmp(argv[i], "--spans") && i + 1 < argc) spans_path = argv[++i];
    else if (!strcmp(argv[i], "--builtin") && i + 1 < argc) builtin = argv[++i];
    else if (!strcmp(argv[i], "--time") && i + 1 < argc) {
      o.flags |= HEED_TEMPLATE_FIXED_TIME;
      o.now = strtoll(argv[++i], NULL, 10);
    } else {
      return fprintf(stderr, "unknown option %s\n", argv[i]), 2;
    }
  }
  if (argc - i != (builtin ? 1 : 2)) {
    fprintf(stderr, "usage: template_driver [--chat|--context] [--var N=V]... [--spans FILE] [--time S] "
                    "(TEMPLATE | --builtin NAME) INPUT\n       template_driver --batch FILE\n");
    return 2;
  }
  size_t tlen = 0, ilen = 0;
  char *tmpl = NULL;
  heed_error err = {0};
  if (builtin) {
    const char *src;
    if (heed_chat_builtin(builtin, &src, &err)) return fprintf(stderr, "error: %s\n", err.msg), 1;
    tmpl = strdup(src);
    tlen = strlen(src);
  } else if (!(tmpl = read_file(argv[i++], &tlen))) {
    return fprintf(stderr, "cannot read %s\n", argv[i - 1]), 2;
  }
  char *input = read_file(argv[i], &ilen);
  if (!input) return fprintf(stderr, "cannot read %s\n", argv[i]), 2;
  heed_template_text out;
  heed_status st = render(tmpl, tlen, input, ilen, chat, vars, nv, &o, &out, &err);
  free(tmpl);
  free(input);
  if (st) {
    fprintf(stderr, "error: %s: %s\n", heed_status_name(st), err.msg);
    return 1;
  }
  fwrite(out.text, 1, out.length, stdout);
  if (spans_path) {
    FILE *f = fopen(spans_path, "w");
    cJSON *a = spans_json(&out);
    char *s = cJSON_PrintUnformatted(a);
    if (f) {
      fputs(s, f);
      fclose(f);
    }
    free(s);
    cJSON_Delete(a);
  }
  heed_template_text_free(&out);
  return 0;
}
