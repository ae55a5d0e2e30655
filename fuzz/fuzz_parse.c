/* fuzz/fuzz_parse.c - heed's string parsers: dtype, ISA and backend names,
 * `heed bench --shape` specs (bench/bench_shapes.c), the heed tool's list
 * options (tools/cli_parse.c), and the HEED_* environment variables as
 * heed_runtime_open reads them.
 *
 * Input: byte 0 picks the message capacity (tiny ones exercise truncation)
 * and byte 1 the list capacity; the rest is the string (NUL-terminated here,
 * cut at the first NUL). Every parser gets the same string. A success must
 * give a value that round-trips; a failure must leave a terminated message. */
#include <errno.h>
#include <strings.h>

#include "bench/bench_shapes.h"
#include "fuzz/fuzz_common.h"
#include "tools/cli_parse.h"

#define MAX_TEXT 512

/* The name parsers: exactly the list's names are accepted, and round-trip. */
static void check_names(const char *s) {
  heed_dtype dt = (heed_dtype)-7;
  int st = heed_dtype_parse(s, &dt);
  int listed = 0;
  for (int i = 0; i < HEED_DTYPE_COUNT; i++) listed |= strcmp(s, heed_dtype_name((heed_dtype)i)) == 0;
  FZ_CHECK((st == HEED_OK) == listed, "heed_dtype_parse('%s') = %d, listed %d", s, st, listed);
  if (st == HEED_OK) FZ_CHECK(strcmp(heed_dtype_name(dt), s) == 0 && heed_dtype_bits(dt) > 0, "dtype '%s' round trip", s);

  heed_isa isa = (heed_isa)-7;
  st = heed_isa_parse(s, &isa);
  listed = 0;
  for (int i = 0; i < HEED_ISA_COUNT; i++) listed |= strcmp(s, heed_isa_name((heed_isa)i)) == 0;
  FZ_CHECK((st == HEED_OK) == listed, "heed_isa_parse('%s') = %d, listed %d", s, st, listed);
  if (st == HEED_OK) FZ_CHECK(strcmp(heed_isa_name(isa), s) == 0, "isa '%s' round trip", s);

  heed_backend_kind be = (heed_backend_kind)-7;
  st = heed_backend_parse(s, &be);
  listed = 0;
  for (int i = 0; i < HEED_BACKEND_COUNT; i++) listed |= strcmp(s, heed_backend_name((heed_backend_kind)i)) == 0;
  FZ_CHECK((st == HEED_OK) == listed, "heed_backend_parse('%s') = %d, listed %d", s, st, listed);
  if (st == HEED_OK) FZ_CHECK(strcmp(heed_backend_name(be), s) == 0, "backend '%s' round trip", s);
}

/* A failed parse leaves a terminated message inside the caller's capacity. */
static void check_msg(const char *what, const char *s, const char *msg, size_t cap) {
  if (cap) FZ_CHECK(memchr(msg, 0, cap) != NULL, "%s('%s'): message not terminated within %zu bytes", what, s, cap);
}

static void check_shape(const char *s, size_t cap) {
  char *msg = malloc(cap ? cap : 1); /* exactly cap: ASan sees a write past it */
  heed_bench_shape sh;
  int st = heed_bench_shape_parse(s, &sh, msg, cap);
  if (st != 0) {
    FZ_CHECK(st == -1, "heed_bench_shape_parse('%s') = %d", s, st);
    check_msg("heed_bench_shape_parse", s, msg, cap);
    free(msg);
    return;
  }
  free(msg);
  FZ_CHECK(sh.q_heads >= 1 && sh.q_heads <= 256 && sh.kv_heads >= 1 && sh.kv_heads <= 256 && sh.q_heads % sh.kv_heads == 0,
           "shape '%s': q=%u kv=%u", s, sh.q_heads, sh.kv_heads);
  FZ_CHECK(sh.head_dim >= HEED_HEAD_DIM_MIN && sh.head_dim <= HEED_HEAD_DIM_MAX && sh.head_dim % 16 == 0,
           "shape '%s': d=%u", s, sh.head_dim);
  FZ_CHECK(sh.window <= 1u << 24 && isfinite(sh.softcap) && sh.softcap >= 0 && sh.softcap <= 1e4f,
           "shape '%s': window=%u softcap=%g", s, sh.window, sh.softcap);
  FZ_CHECK(memchr(sh.name, 0, sizeof sh.name) != NULL, "shape '%s': name not terminated", s);
  if (strcmp(sh.name, "custom") != 0) { /* a named shape: the name as given, any case */
    FZ_CHECK(strcasecmp(s, sh.name) == 0, "shape '%s' parsed as named '%s'", s, sh.name);
    return;
  }
  /* A custom spec: printing it and parsing that again gives the same shape. */
  char again[160], msg2[256];
  snprintf(again, sizeof again, "q=%u,kv=%u,d=%u,window=%u,softcap=%.9g", sh.q_heads, sh.kv_heads, sh.head_dim, sh.window,
           (double)sh.softcap);
  heed_bench_shape sh2;
  FZ_CHECK(heed_bench_shape_parse(again, &sh2, msg2, sizeof msg2) == 0, "'%s' -> '%s' refused: %s", s, again, msg2);
  FZ_CHECK(sh2.q_heads == sh.q_heads && sh2.kv_heads == sh.kv_heads && sh2.head_dim == sh.head_dim &&
               sh2.window == sh.window && sh2.softcap == sh.softcap,
           "'%s' -> '%s' does not round-trip", s, again);
  char json[64]; /* short on purpose: snprintf must stay inside it */
  heed_bench_shape_json(&sh, json, sizeof json);
  FZ_CHECK(memchr(json, 0, sizeof json) != NULL, "shape json not terminated");
}

/* Items of a list as the rule has them: split at every comma. */
static int count_items(const char *s) {
  int n = 1;
  for (const char *p = s; *p; p++) n += *p == ',';
  return n;
}

static void check_ctx(const char *s, int cap, size_t msg_cap) {
  unsigned *ctx = malloc(sizeof *ctx * (cap > 0 ? (size_t)cap : 1));
  char *msg = malloc(msg_cap ? msg_cap : 1);
  int n = heed_cli_parse_ctx(s, ctx, cap, msg, msg_cap);
  if (n < 0) {
    FZ_CHECK(n == -1, "heed_cli_parse_ctx('%s') = %d", s, n);
    check_msg("heed_cli_parse_ctx", s, msg, msg_cap);
  } else {
    FZ_CHECK(n >= 1 && n <= cap && n == count_items(s), "heed_cli_parse_ctx('%s', cap %d) = %d items", s, cap, n);
    char again[16 * HEED_CLI_MAX_CTX + 16] = "";
    size_t off = 0;
    for (int i = 0; i < n; i++) {
      FZ_CHECK(ctx[i] >= 1 && ctx[i] <= HEED_CLI_CTX_MAX_TOKENS, "ctx '%s' item %d = %u", s, i, ctx[i]);
      for (int j = 0; j < i; j++) FZ_CHECK(ctx[j] != ctx[i], "ctx '%s': %u twice", s, ctx[i]);
      if (off < sizeof again) off += (size_t)snprintf(again + off, sizeof again - off, "%s%u", i ? "," : "", ctx[i]);
    }
    unsigned ctx2[HEED_CLI_MAX_CTX];
    char msg2[256];
    if (n <= HEED_CLI_MAX_CTX) {
      FZ_CHECK(heed_cli_parse_ctx(again, ctx2, HEED_CLI_MAX_CTX, msg2, sizeof msg2) == n, "'%s' -> '%s': %s", s, again, msg2);
      FZ_CHECK(memcmp(ctx, ctx2, sizeof *ctx * (size_t)n) == 0, "'%s' -> '%s' does not round-trip", s, again);
    }
  }
  free(ctx);
  free(msg);
}

static void check_kv(const char *s, int cap, size_t msg_cap) {
  heed_dtype *kv = malloc(sizeof *kv * (cap > 0 ? (size_t)cap : 1));
  char *msg = malloc(msg_cap ? msg_cap : 1);
  int n = heed_cli_parse_kv(s, kv, cap, msg, msg_cap);
  if (n < 0) {
    FZ_CHECK(n == -1, "heed_cli_parse_kv('%s') = %d", s, n);
    check_msg("heed_cli_parse_kv", s, msg, msg_cap);
  } else if (n == 0) {
    FZ_CHECK(strcmp(s, "none") == 0, "heed_cli_parse_kv('%s') = 0 items", s);
  } else {
    FZ_CHECK(n <= cap && n == count_items(s), "heed_cli_parse_kv('%s', cap %d) = %d items", s, cap, n);
    char again[64] = "";
    size_t off = 0;
    for (int i = 0; i < n; i++) {
      FZ_CHECK(heed_dtype_is_quant(kv[i]), "kv '%s' item %d = %d", s, i, (int)kv[i]);
      for (int j = 0; j < i; j++) FZ_CHECK(kv[j] != kv[i], "kv '%s': %d twice", s, (int)kv[i]);
      if (off < sizeof again) off += (size_t)snprintf(again + off, sizeof again - off, "%s%s", i ? "," : "", heed_dtype_name(kv[i]));
    }
    FZ_CHECK(strcmp(again, s) == 0, "kv '%s' reads back as '%s'", s, again);
  }
  free(kv);
  free(msg);
}

/* The HEED_* variables through heed_runtime_open (one in sixteen inputs: an
 * open that gets past the variables loads the topology, which is slow). */
static void quiet(void *user, const char *line) { (void)user, (void)line; }

static void check_env(const char *s, uint8_t which) {
  static const char *const vars[] = {"HEED_DEBUG", "HEED_BACKEND", "HEED_ISA", "HEED_THREADS"};
  const char *var = vars[which % 4];
  for (int i = 0; i < 4; i++) unsetenv(vars[i]);
  setenv(var, s, 1);
  heed_runtime_options o;
  heed_runtime_options_init(&o);
  o.flags = HEED_RUNTIME_NO_OPENCL | HEED_RUNTIME_NO_PIN;
  o.log = quiet; /* HEED_DEBUG=1 logs here */
  if (which & 4) o.backend = HEED_BACKEND_CPU; /* then HEED_BACKEND is not read */
  heed_error err;
  memset(&err, 0x55, sizeof err);
  heed_runtime *rt = (heed_runtime *)&err;
  heed_status st = heed_runtime_open(&o, &rt, &err);
  if (st == HEED_OK) {
    FZ_CHECK(rt != NULL, "open OK without a runtime");
    if (var == vars[3] && s[0]) { /* the thread count is the one asked for */
      char *end;
      long n = strtol(s, &end, 10);
      FZ_CHECK(heed_runtime_n_threads(rt) == (int)n, "%s='%s': %d threads", var, s, heed_runtime_n_threads(rt));
    }
    heed_runtime_close(rt);
  } else {
    FZ_CHECK(rt == NULL, "failed open left *out set");
    FZ_CHECK(memchr(err.msg, 0, sizeof err.msg) != NULL && err.msg[0], "%s='%s': no message", var, s);
  }
  unsetenv(var);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 2) return 0;
  uint8_t cap_byte = data[0], list_byte = data[1];
  data += 2, size -= 2;
  char s[MAX_TEXT + 1];
  size_t len = size < MAX_TEXT ? size : MAX_TEXT;
  memcpy(s, data, len);
  s[len] = '\0';
  size_t msg_cap = cap_byte < 128 ? cap_byte % 24 : 256; /* 0..23: truncation; else a roomy buffer */
  int list_cap = list_byte % (HEED_CLI_MAX_CTX + 2);  /* 0..17 */

  check_names(s);
  check_shape(s, msg_cap);
  check_ctx(s, list_cap, msg_cap);
  check_kv(s, list_cap % (HEED_CLI_MAX_KV + 2), msg_cap);
  if ((list_byte & 0xf0) == 0xf0) check_env(s, list_byte);
  return 0;
}
