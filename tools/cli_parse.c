/* tools/cli_parse.c - comma-separated lists of the heed command line. */
#include "tools/cli_parse.h"

#include <ctype.h>
#include <stdio.h>
#include <string.h>

/* Calls item(i, text, len, user) for each item of arg; -1 (msg filled) at the
 * first empty item, or when item() refuses one. */
typedef int (*item_fn)(int i, const char *s, size_t len, void *user, char *msg, size_t cap);

static int each_item(const char *opt, const char *arg, item_fn item, void *user, char *msg, size_t cap) {
  int i = 0;
  for (const char *p = arg;; i++) {
    const char *c = strchr(p, ',');
    size_t len = c ? (size_t)(c - p) : strlen(p);
    if (!len) {
      snprintf(msg, cap, "%s %s: item %d is empty (items are separated by single commas, none empty)", opt, arg, i + 1);
      return -1;
    }
    if (item(i, p, len, user, msg, cap)) return -1;
    if (!c) return i + 1;
    p = c + 1;
  }
}

typedef struct {
  const char *opt, *arg;
  unsigned *out;
  int cap;
} ctx_list;

static int ctx_item(int i, const char *s, size_t len, void *user, char *msg, size_t cap) {
  ctx_list *l = user;
  unsigned long long v = 0;
  int ok = len <= 9;
  for (size_t k = 0; ok && k < len; k++) {
    ok = isdigit((unsigned char)s[k]);
    v = v * 10 + (unsigned)(s[k] - '0');
  }
  if (!ok || v < 1 || v > HEED_CLI_CTX_MAX_TOKENS) {
    snprintf(msg, cap, "%s %s: '%.*s' is not a token count; accepted: 1..%u", l->opt, l->arg, (int)len, s,
             HEED_CLI_CTX_MAX_TOKENS);
    return -1;
  }
  if (i == l->cap) {
    snprintf(msg, cap, "%s %s: more than %d items", l->opt, l->arg, l->cap);
    return -1;
  }
  for (int k = 0; k < i; k++)
    if (l->out[k] == v) {
      snprintf(msg, cap, "%s %s: %llu is listed twice", l->opt, l->arg, v);
      return -1;
    }
  l->out[i] = (unsigned)v;
  return 0;
}

int heed_cli_parse_ctx(const char *arg, unsigned *ctx, int cap, char *msg, size_t msg_cap) {
  ctx_list l = {"--ctx", arg, ctx, cap};
  return each_item("--ctx", arg, ctx_item, &l, msg, msg_cap);
}

typedef struct {
  const char *arg;
  heed_dtype *out;
  int cap;
} kv_list;

static int kv_item(int i, const char *s, size_t len, void *user, char *msg, size_t cap) {
  kv_list *l = user;
  char name[16];
  heed_dtype dt;
  int ok = len < sizeof name;
  if (ok) {
    memcpy(name, s, len), name[len] = '\0';
    ok = heed_dtype_parse(name, &dt) == 0 && heed_dtype_is_quant(dt);
  }
  if (!ok) {
    snprintf(msg, cap, "--kv %s: '%.*s' is not a quantized KV format; accepted: none, or q8, q4, e4m3, e5m2", l->arg,
             (int)len, s);
    return -1;
  }
  if (i == l->cap) {
    snprintf(msg, cap, "--kv %s: more than %d items", l->arg, l->cap);
    return -1;
  }
  for (int k = 0; k < i; k++)
    if (l->out[k] == dt) {
      snprintf(msg, cap, "--kv %s: %s is listed twice", l->arg, name);
      return -1;
    }
  l->out[i] = dt;
  return 0;
}

int heed_cli_parse_kv(const char *arg, heed_dtype *kv, int cap, char *msg, size_t msg_cap) {
  if (strcmp(arg, "none") == 0) return 0;
  kv_list l = {arg, kv, cap};
  return each_item("--kv", arg, kv_item, &l, msg, msg_cap);
}
