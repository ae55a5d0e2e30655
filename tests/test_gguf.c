/* The GGUF reader and the model configuration: files written here, byte by
 * byte (every value type, nested arrays, alignment, v2/v3, split sets), every
 * way a file can be bad (each refusal's status and the field its message
 * names), and the two real models. */
#include <criterion/criterion.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "heed/gguf.h"
#include "heed/model.h"
#include "test_models.h"

/* ---------- a small GGUF writer ---------- */

typedef struct gw {
  uint8_t *b;
  size_t n, cap;
} gw;

static void gw_bytes(gw *w, const void *p, size_t n) {
  if (w->n + n > w->cap) {
    w->cap = (w->n + n) * 2 + 64;
    w->b = realloc(w->b, w->cap);
    cr_assert(w->b);
  }
  if (n) memcpy(w->b + w->n, p, n);
  w->n += n;
}
static void gw_le(gw *w, uint64_t v, int n) {
  uint8_t b[8];
  for (int i = 0; i < n; i++) b[i] = (uint8_t)(v >> (8 * i));
  gw_bytes(w, b, (size_t)n);
}
static void gw_u8(gw *w, uint8_t v) { gw_le(w, v, 1); }
static void gw_u16(gw *w, uint16_t v) { gw_le(w, v, 2); }
static void gw_u32(gw *w, uint32_t v) { gw_le(w, v, 4); }
static void gw_u64(gw *w, uint64_t v) { gw_le(w, v, 8); }
static void gw_f32(gw *w, float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  gw_u32(w, u);
}
static void gw_f64(gw *w, double d) {
  uint64_t u;
  memcpy(&u, &d, 8);
  gw_u64(w, u);
}
static void gw_strn(gw *w, const char *s, size_t n) {
  gw_u64(w, n);
  gw_bytes(w, s, n);
}
static void gw_str(gw *w, const char *s) { gw_strn(w, s, strlen(s)); }
static void gw_header(gw *w, uint32_t version, uint64_t n_tensors, uint64_t n_kv) {
  gw_bytes(w, "GGUF", 4);
  gw_u32(w, version);
  gw_u64(w, n_tensors);
  gw_u64(w, n_kv);
}
static void gw_key(gw *w, const char *k, uint32_t type) {
  gw_str(w, k);
  gw_u32(w, type);
}
static void kv_u32(gw *w, const char *k, uint32_t v) { gw_key(w, k, HEED_GGUF_UINT32), gw_u32(w, v); }
static void kv_f32(gw *w, const char *k, float v) { gw_key(w, k, HEED_GGUF_FLOAT32), gw_f32(w, v); }
static void kv_str(gw *w, const char *k, const char *v) { gw_key(w, k, HEED_GGUF_STRING), gw_str(w, v); }
static void gw_free(gw *w) { free(w->b), memset(w, 0, sizeof *w); }

typedef struct tinfo {
  const char *name;
  uint32_t n_dims;
  uint64_t ne[5];
  uint32_t type;
  uint64_t offset;
} tinfo;

static void gw_tinfo(gw *w, const tinfo *t) {
  gw_str(w, t->name);
  gw_u32(w, t->n_dims);
  for (uint32_t d = 0; d < t->n_dims; d++) gw_u64(w, t->ne[d]);
  gw_u32(w, t->type);
  gw_u64(w, t->offset);
}

static uint64_t tbytes(const tinfo *t) {
  uint32_t be, bb;
  cr_assert(heed_ggml_type_info((int)t->type, &be, &bb));
  uint64_t n = 1;
  for (uint32_t d = 0; d < t->n_dims; d++) n *= t->ne[d];
  return n / be * bb;
}

/* Pads to align, then the data section: byte i is (i * 7 + 1) & 255. */
static size_t gw_data(gw *w, uint32_t align, uint64_t bytes) {
  while (w->n % align) gw_u8(w, 0);
  size_t start = w->n;
  for (uint64_t i = 0; i < bytes; i++) gw_u8(w, (uint8_t)(i * 7 + 1));
  return start;
}

/* Opens w's bytes from an exact-size copy (ASan sees any read past the end).
 * Returns the status; *g is the reader (close it) or NULL. */
static uint8_t *g_copy;
static heed_status open_w(const gw *w, size_t n, heed_gguf **g, heed_error *e) {
  free(g_copy);
  g_copy = malloc(n ? n : 1);
  cr_assert(g_copy);
  memcpy(g_copy, w->b, n);
  memset(e, 0, sizeof *e);
  return heed_gguf_open_memory(g_copy, n, g, e);
}

/* Expects a refusal with status st and a message holding every one of the strings. */
#define EXPECT_REFUSED(w, st_, ...)                                                                        \
  do {                                                                                                     \
    heed_gguf *g_ = (heed_gguf *)1;                                                                        \
    heed_error e_;                                                                                         \
    heed_status got_ = open_w((w), (w)->n, &g_, &e_);                                                      \
    cr_assert_eq(got_, st_, "status %s, expected %s: %s", heed_status_name(got_), heed_status_name(st_), e_.msg); \
    cr_assert_null(g_);                                                                                    \
    cr_assert_eq(e_.status, st_);                                                                          \
    const char *want_[] = {__VA_ARGS__};                                                                   \
    for (size_t i_ = 0; i_ < sizeof want_ / sizeof *want_; i_++)                                           \
      cr_assert(strstr(e_.msg, want_[i_]), "message '%s' lacks '%s'", e_.msg, want_[i_]);                   \
  } while (0)

/* A valid file: 4 keys, 3 tensors (F32 [8], Q8_0 [64][2], F16 [4][3]); the
 * last tensor ends the file (no padding after it), so any prefix is invalid. */
static const tinfo STD_T[3] = {{"tok_embd", 1, {8}, HEED_GGML_F32, 0},
                               {"blk.0.attn_q.weight", 2, {64, 2}, HEED_GGML_Q8_0, 64},
                               {"output_norm", 2, {4, 3}, HEED_GGML_F16, 256}};
static void std_file(gw *w, uint32_t version) {
  gw_header(w, version, 3, 4);
  kv_str(w, "general.architecture", "llama");
  gw_key(w, "tokenizer.ggml.tokens", HEED_GGUF_ARRAY);
  gw_u32(w, HEED_GGUF_STRING);
  gw_u64(w, 3);
  gw_str(w, "<s>"), gw_str(w, ""), gw_str(w, "hello");
  kv_u32(w, "llama.block_count", 2);
  gw_key(w, "scores", HEED_GGUF_ARRAY);
  gw_u32(w, HEED_GGUF_FLOAT32);
  gw_u64(w, 2);
  gw_f32(w, 0.5f), gw_f32(w, -1.25f);
  for (int i = 0; i < 3; i++) gw_tinfo(w, &STD_T[i]);
  gw_data(w, 32, STD_T[2].offset + tbytes(&STD_T[2]));
}

/* ---------- valid files ---------- */

Test(gguf, std_file_v2_and_v3) {
  for (uint32_t ver = 2; ver <= 3; ver++) {
    gw w = {0};
    std_file(&w, ver);
    heed_gguf *g;
    heed_error e;
    cr_assert_eq(open_w(&w, w.n, &g, &e), HEED_OK, "%s", e.msg);
    cr_assert_eq(heed_gguf_version(g), ver);
    cr_assert_eq(heed_gguf_alignment(g), 32);
    cr_assert_eq(heed_gguf_n_files(g), 1);
    cr_assert_eq(heed_gguf_file_bytes(g), w.n);
    cr_assert_str_eq(heed_gguf_file_path(g, 0), "<memory>");
    cr_assert_null(heed_gguf_file_path(g, 1));
    cr_assert_eq(heed_gguf_n_kv(g), 4);
    cr_assert_eq(heed_gguf_n_tensors(g), 3);
    size_t data_start = (w.n - (size_t)(STD_T[2].offset + tbytes(&STD_T[2])));
    for (int i = 0; i < 3; i++) {
      const heed_gguf_tensor *t = heed_gguf_tensor_at(g, (uint64_t)i);
      cr_assert_str_eq(t->name, STD_T[i].name);
      cr_assert_eq(heed_gguf_find_tensor(g, STD_T[i].name), t);
      cr_assert_eq(t->type, STD_T[i].type);
      cr_assert_eq(t->n_dims, STD_T[i].n_dims);
      cr_assert_eq(t->bytes, tbytes(&STD_T[i]));
      cr_assert_eq(t->offset, STD_T[i].offset);
      cr_assert_eq(t->file, 0);
      cr_assert_eq(t->ne[3], 1);
      cr_assert_eq((const uint8_t *)t->data, g_copy + data_start + STD_T[i].offset);
      cr_assert_eq(((const uint8_t *)t->data)[0], (uint8_t)(STD_T[i].offset * 7 + 1));
    }
    cr_assert_eq(heed_gguf_tensor_at(g, 1)->n_elems, 128);
    cr_assert_null(heed_gguf_tensor_at(g, 3));
    cr_assert_null(heed_gguf_find_tensor(g, "nope"));
    heed_gguf_str s;
    cr_assert_eq(heed_gguf_get_str(g, "general.architecture", &s), HEED_OK);
    cr_assert(s.len == 5 && memcmp(s.ptr, "llama", 5) == 0);
    heed_gguf_close(g);
    gw_free(&w);
  }
}

Test(gguf, every_value_type) {
  gw w = {0};
  gw_header(&w, 3, 0, 16);
  gw_key(&w, "u8", HEED_GGUF_UINT8), gw_u8(&w, 250);
  gw_key(&w, "i8", HEED_GGUF_INT8), gw_u8(&w, 0x80);
  gw_key(&w, "u16", HEED_GGUF_UINT16), gw_u16(&w, 65535);
  gw_key(&w, "i16", HEED_GGUF_INT16), gw_u16(&w, 0x8001);
  gw_key(&w, "u32", HEED_GGUF_UINT32), gw_u32(&w, 4000000000u);
  gw_key(&w, "i32", HEED_GGUF_INT32), gw_u32(&w, (uint32_t)-7);
  gw_key(&w, "f32", HEED_GGUF_FLOAT32), gw_f32(&w, 0.1f);
  gw_key(&w, "bool", HEED_GGUF_BOOL), gw_u8(&w, 1);
  gw_key(&w, "str", HEED_GGUF_STRING), gw_strn(&w, "a\0b", 3);
  gw_key(&w, "u64", HEED_GGUF_UINT64), gw_u64(&w, UINT64_MAX);
  gw_key(&w, "i64", HEED_GGUF_INT64), gw_u64(&w, (uint64_t)INT64_MIN);
  gw_key(&w, "f64", HEED_GGUF_FLOAT64), gw_f64(&w, 0.1);
  gw_key(&w, "arr_i16", HEED_GGUF_ARRAY), gw_u32(&w, HEED_GGUF_INT16), gw_u64(&w, 3);
  gw_u16(&w, 1), gw_u16(&w, (uint16_t)-2), gw_u16(&w, 300);
  gw_key(&w, "arr_bool", HEED_GGUF_ARRAY), gw_u32(&w, HEED_GGUF_BOOL), gw_u64(&w, 2);
  gw_u8(&w, 0), gw_u8(&w, 1);
  gw_key(&w, "arr_f64", HEED_GGUF_ARRAY), gw_u32(&w, HEED_GGUF_FLOAT64), gw_u64(&w, 2);
  gw_f64(&w, -2.5), gw_f64(&w, 1e300);
  gw_key(&w, "arr_empty", HEED_GGUF_ARRAY), gw_u32(&w, HEED_GGUF_UINT32), gw_u64(&w, 0);
  heed_gguf *g;
  heed_error e;
  cr_assert_eq(open_w(&w, w.n, &g, &e), HEED_OK, "%s", e.msg);
  heed_gguf_value v;
  heed_gguf_str k;
  const heed_gguf_vtype types[16] = {HEED_GGUF_UINT8, HEED_GGUF_INT8,    HEED_GGUF_UINT16, HEED_GGUF_INT16,
                                     HEED_GGUF_UINT32, HEED_GGUF_INT32, HEED_GGUF_FLOAT32, HEED_GGUF_BOOL,
                                     HEED_GGUF_STRING, HEED_GGUF_UINT64, HEED_GGUF_INT64, HEED_GGUF_FLOAT64,
                                     HEED_GGUF_ARRAY,  HEED_GGUF_ARRAY, HEED_GGUF_ARRAY,  HEED_GGUF_ARRAY};
  static const char *const names[16] = {"u8", "i8", "u16", "i16", "u32", "i32", "f32", "bool",
                                         "str", "u64", "i64", "f64", "arr_i16", "arr_bool", "arr_f64", "arr_empty"};
  for (uint64_t i = 0; i < 16; i++) {
    cr_assert_eq(heed_gguf_kv_at(g, i, &k, &v), HEED_OK);
    cr_assert_eq(v.type, types[i], "entry %llu", (unsigned long long)i);
    cr_assert(k.len == strlen(names[i]) && memcmp(k.ptr, names[i], k.len) == 0);
    cr_assert_eq(heed_gguf_find_key(g, names[i]), (int64_t)i);
  }
  cr_assert_eq(heed_gguf_kv_at(g, 16, &k, &v), HEED_E_RANGE);
  cr_assert(strstr(heed_gguf_last_error(g), "16"));
  cr_assert_eq(heed_gguf_find_key(g, "f64"), 11);
  cr_assert_eq(heed_gguf_find_key(g, "f6"), -1);
  heed_gguf_get(g, "u8", &v); cr_assert_eq(v.v.u, 250);
  heed_gguf_get(g, "i8", &v); cr_assert_eq(v.v.i, -128);
  heed_gguf_get(g, "u16", &v); cr_assert_eq(v.v.u, 65535);
  heed_gguf_get(g, "i16", &v); cr_assert_eq(v.v.i, -32767);
  heed_gguf_get(g, "u32", &v); cr_assert_eq(v.v.u, 4000000000u);
  heed_gguf_get(g, "i32", &v); cr_assert_eq(v.v.i, -7);
  heed_gguf_get(g, "f32", &v); cr_assert_eq(v.v.f, (double)0.1f);
  heed_gguf_get(g, "bool", &v); cr_assert_eq(v.v.u, 1);
  heed_gguf_get(g, "str", &v); cr_assert(v.v.str.len == 3 && memcmp(v.v.str.ptr, "a\0b", 3) == 0);
  heed_gguf_get(g, "u64", &v); cr_assert_eq(v.v.u, UINT64_MAX);
  heed_gguf_get(g, "i64", &v); cr_assert_eq(v.v.i, INT64_MIN);
  heed_gguf_get(g, "f64", &v); cr_assert_eq(v.v.f, 0.1);
  /* typed reads: conversions and refusals naming key and type */
  uint64_t u;
  int64_t i;
  double d;
  int b;
  heed_gguf_str s;
  cr_assert_eq(heed_gguf_get_u64(g, "u8", &u), HEED_OK); cr_assert_eq(u, 250);
  cr_assert_eq(heed_gguf_get_u64(g, "bool", &u), HEED_OK); cr_assert_eq(u, 1);
  cr_assert_eq(heed_gguf_get_u64(g, "i32", &u), HEED_E_INVALID);
  cr_assert(strstr(heed_gguf_last_error(g), "'i32'") && strstr(heed_gguf_last_error(g), "-7"), "%s", heed_gguf_last_error(g));
  cr_assert_eq(heed_gguf_get_u64(g, "f32", &u), HEED_E_INVALID);
  cr_assert(strstr(heed_gguf_last_error(g), "'f32'") && strstr(heed_gguf_last_error(g), "f32"));
  cr_assert_eq(heed_gguf_get_i64(g, "i16", &i), HEED_OK); cr_assert_eq(i, -32767);
  cr_assert_eq(heed_gguf_get_i64(g, "u32", &i), HEED_OK); cr_assert_eq(i, 4000000000);
  cr_assert_eq(heed_gguf_get_i64(g, "u64", &i), HEED_E_INVALID);
  cr_assert(strstr(heed_gguf_last_error(g), "'u64'"));
  cr_assert_eq(heed_gguf_get_i64(g, "bool", &i), HEED_E_INVALID);
  cr_assert_eq(heed_gguf_get_f64(g, "i8", &d), HEED_OK); cr_assert_eq(d, -128.0);
  cr_assert_eq(heed_gguf_get_f64(g, "u64", &d), HEED_OK); cr_assert_eq(d, 18446744073709551615.0);
  cr_assert_eq(heed_gguf_get_f64(g, "str", &d), HEED_E_INVALID);
  cr_assert(strstr(heed_gguf_last_error(g), "'str' is str"), "%s", heed_gguf_last_error(g));
  cr_assert_eq(heed_gguf_get_bool(g, "bool", &b), HEED_OK); cr_assert_eq(b, 1);
  cr_assert_eq(heed_gguf_get_bool(g, "u8", &b), HEED_E_INVALID);
  cr_assert_eq(heed_gguf_get_str(g, "str", &s), HEED_OK);
  cr_assert_eq(heed_gguf_get_str(g, "arr_i16", &s), HEED_E_INVALID);
  cr_assert(strstr(heed_gguf_last_error(g), "arr of i16"), "%s", heed_gguf_last_error(g));
  cr_assert_eq(heed_gguf_get_u64(g, "missing.key", &u), HEED_E_NOT_FOUND);
  cr_assert(strstr(heed_gguf_last_error(g), "'missing.key'"));
  /* arrays */
  heed_gguf_value a, el;
  cr_assert_eq(heed_gguf_get(g, "arr_i16", &a), HEED_OK);
  cr_assert(a.type == HEED_GGUF_ARRAY && a.v.arr.elem_type == HEED_GGUF_INT16 && a.v.arr.n == 3);
  const int64_t want[3] = {1, -2, 300};
  for (uint64_t j = 0; j < 3; j++) {
    cr_assert_eq(heed_gguf_array_get(g, &a, j, &el), HEED_OK);
    cr_assert(el.type == HEED_GGUF_INT16 && el.v.i == want[j]);
  }
  cr_assert_eq(heed_gguf_array_get(g, &a, 3, &el), HEED_E_RANGE);
  const uint8_t *raw = heed_gguf_array_data(g, &a);
  cr_assert(raw && raw[2] == 0xfe && raw[3] == 0xff);
  cr_assert_eq(heed_gguf_get(g, "arr_bool", &a), HEED_OK);
  heed_gguf_array_get(g, &a, 1, &el); cr_assert(el.type == HEED_GGUF_BOOL && el.v.u == 1);
  cr_assert_eq(heed_gguf_get(g, "arr_f64", &a), HEED_OK);
  heed_gguf_array_get(g, &a, 1, &el); cr_assert(el.type == HEED_GGUF_FLOAT64 && el.v.f == 1e300);
  cr_assert_eq(heed_gguf_get(g, "arr_empty", &a), HEED_OK);
  cr_assert_eq(a.v.arr.n, 0);
  cr_assert_eq(heed_gguf_array_get(g, &a, 0, &el), HEED_E_RANGE);
  /* a forged handle is refused, not followed */
  heed_gguf_value forged = a;
  forged.v.arr.node = 1u << 30;
  cr_assert_eq(heed_gguf_array_get(g, &forged, 0, &el), HEED_E_INVALID);
  cr_assert_null(heed_gguf_array_data(g, &forged));
  heed_gguf_get(g, "u8", &v);
  cr_assert_eq(heed_gguf_array_get(g, &v, 0, &el), HEED_E_INVALID);
  heed_gguf_close(g);
  gw_free(&w);
}

/* arr[arr[arr[u16]]], arr[arr[str]]: every element read back, in any order. */
Test(gguf, nested_arrays) {
  gw w = {0};
  gw_header(&w, 3, 0, 2);
  gw_key(&w, "n3", HEED_GGUF_ARRAY), gw_u32(&w, HEED_GGUF_ARRAY), gw_u64(&w, 3);
  for (int i = 0; i < 3; i++) {
    gw_u32(&w, HEED_GGUF_ARRAY), gw_u64(&w, (uint64_t)i + 1);
    for (int j = 0; j <= i; j++) {
      gw_u32(&w, HEED_GGUF_UINT16), gw_u64(&w, (uint64_t)j + 2);
      for (int k = 0; k < j + 2; k++) gw_u16(&w, (uint16_t)(100 * i + 10 * j + k));
    }
  }
  gw_key(&w, "s2", HEED_GGUF_ARRAY), gw_u32(&w, HEED_GGUF_ARRAY), gw_u64(&w, 2);
  gw_u32(&w, HEED_GGUF_STRING), gw_u64(&w, 2), gw_str(&w, "x"), gw_str(&w, "yy");
  gw_u32(&w, HEED_GGUF_STRING), gw_u64(&w, 1), gw_str(&w, "zzz");
  heed_gguf *g;
  heed_error e;
  cr_assert_eq(open_w(&w, w.n, &g, &e), HEED_OK, "%s", e.msg);
  heed_gguf_value top, a1, a2, x;
  cr_assert_eq(heed_gguf_get(g, "n3", &top), HEED_OK);
  cr_assert(top.v.arr.elem_type == HEED_GGUF_ARRAY && top.v.arr.n == 3);
  cr_assert_null(heed_gguf_array_data(g, &top));
  for (int i = 2; i >= 0; i--) {
    cr_assert_eq(heed_gguf_array_get(g, &top, (uint64_t)i, &a1), HEED_OK);
    cr_assert(a1.type == HEED_GGUF_ARRAY && a1.v.arr.elem_type == HEED_GGUF_ARRAY && a1.v.arr.n == (uint64_t)i + 1);
    for (int j = i; j >= 0; j--) {
      cr_assert_eq(heed_gguf_array_get(g, &a1, (uint64_t)j, &a2), HEED_OK);
      cr_assert(a2.v.arr.elem_type == HEED_GGUF_UINT16 && a2.v.arr.n == (uint64_t)j + 2);
      for (int k = 0; k < j + 2; k++) {
        cr_assert_eq(heed_gguf_array_get(g, &a2, (uint64_t)k, &x), HEED_OK);
        cr_assert_eq(x.v.u, (uint64_t)(100 * i + 10 * j + k));
      }
    }
  }
  cr_assert_eq(heed_gguf_get(g, "s2", &top), HEED_OK);
  heed_gguf_array_get(g, &top, 1, &a1);
  heed_gguf_array_get(g, &a1, 0, &x);
  cr_assert(x.type == HEED_GGUF_STRING && x.v.str.len == 3 && memcmp(x.v.str.ptr, "zzz", 3) == 0);
  heed_gguf_array_get(g, &top, 0, &a1);
  heed_gguf_array_get(g, &a1, 1, &x);
  cr_assert(x.v.str.len == 2 && memcmp(x.v.str.ptr, "yy", 2) == 0);
  heed_gguf_close(g);
  gw_free(&w);
}

static void nest(gw *w, int depth) {
  gw_header(w, 3, 0, 1);
  gw_key(w, "deep", HEED_GGUF_ARRAY);
  for (int d = 1; d < depth; d++) gw_u32(w, HEED_GGUF_ARRAY), gw_u64(w, 1);
  gw_u32(w, HEED_GGUF_UINT8), gw_u64(w, 1), gw_u8(w, 42);
}

Test(gguf, nesting_depth_limit) {
  gw w = {0};
  nest(&w, 16);
  heed_gguf *g;
  heed_error e;
  cr_assert_eq(open_w(&w, w.n, &g, &e), HEED_OK, "%s", e.msg);
  heed_gguf_value v;
  heed_gguf_get(g, "deep", &v);
  for (int d = 1; d < 16; d++) cr_assert_eq(heed_gguf_array_get(g, &v, 0, &v), HEED_OK);
  cr_assert_eq(heed_gguf_array_get(g, &v, 0, &v), HEED_OK);
  cr_assert(v.type == HEED_GGUF_UINT8 && v.v.u == 42);
  heed_gguf_close(g);
  gw_free(&w);
  nest(&w, 17);
  EXPECT_REFUSED(&w, HEED_E_UNSUPPORTED, "key 'deep' element [0]", "nested 17 deep", "at byte");
  gw_free(&w);
}

/* general.alignment 64 and 1: offsets multiples of it, data at the aligned end of the header. */
Test(gguf, alignment) {
  const uint32_t aligns[] = {64, 1, 4096};
  for (size_t k = 0; k < 3; k++) {
    uint32_t al = aligns[k];
    gw w = {0};
    gw_header(&w, 3, 2, 1);
    kv_u32(&w, "general.alignment", al);
    tinfo a = {"a", 1, {3}, HEED_GGML_F32, 0}, b = {"b", 1, {5}, HEED_GGML_F16, al > 12 ? al : 12};
    gw_tinfo(&w, &a), gw_tinfo(&w, &b);
    size_t hdr = w.n;
    size_t start = gw_data(&w, al, b.offset + 10);
    cr_assert_eq(start % al, 0);
    heed_gguf *g;
    heed_error e;
    cr_assert_eq(open_w(&w, w.n, &g, &e), HEED_OK, "alignment %u: %s", al, e.msg);
    cr_assert_eq(heed_gguf_alignment(g), al);
    cr_assert_eq((const uint8_t *)heed_gguf_find_tensor(g, "b")->data, g_copy + start + b.offset);
    cr_assert(start >= hdr && start - hdr < al);
    heed_gguf_close(g);
    gw_free(&w);
  }
}

/* ---------- bad files ---------- */

Test(gguf, truncated_at_every_byte) {
  gw w = {0};
  std_file(&w, 3);
  for (size_t n = 0; n < w.n; n++) {
    heed_gguf *g = (heed_gguf *)1;
    heed_error e;
    heed_status st = open_w(&w, n, &g, &e);
    cr_assert_neq(st, HEED_OK, "a prefix of %zu of %zu bytes opened", n, w.n);
    cr_assert_null(g);
    cr_assert(strstr(e.msg, "<memory>: ") && strstr(e.msg, "at byte"), "prefix %zu: %s", n, e.msg);
  }
  heed_gguf *g;
  heed_error e;
  cr_assert_eq(open_w(&w, w.n, &g, &e), HEED_OK, "%s", e.msg);
  heed_gguf_close(g);
  gw_free(&w);
}

Test(gguf, magic_and_version) {
  gw w = {0};
  std_file(&w, 3);
  memcpy(w.b, "GGML", 4);
  EXPECT_REFUSED(&w, HEED_E_INVALID, "header at byte 0", "magic 47 47 4d 4c", "not a GGUF file");
  memcpy(w.b, "GGUF", 4);
  w.b[4] = 1;
  EXPECT_REFUSED(&w, HEED_E_UNSUPPORTED, "header at byte 4", "version 1 is not supported");
  w.b[4] = 0, w.b[7] = 3; /* 0x03000000: a big-endian v3 */
  EXPECT_REFUSED(&w, HEED_E_UNSUPPORTED, "0x03000000", "big-endian", "not supported");
  w.b[4] = 4, w.b[7] = 0;
  EXPECT_REFUSED(&w, HEED_E_UNSUPPORTED, "version 4", "accepted: 2, 3");
  gw_free(&w);
}

/* Absurd counts and lengths are refused at once, before anything is allocated for them. */
Test(gguf, absurd_counts_refused_fast) {
  clock_t t0 = clock();
  gw w = {0};
  gw_header(&w, 3, 1ull << 60, 0);
  EXPECT_REFUSED(&w, HEED_E_INVALID, "header at byte 8", "1152921504606846976 tensors");
  gw_free(&w);
  gw_header(&w, 3, 0, 1ull << 60);
  EXPECT_REFUSED(&w, HEED_E_INVALID, "header at byte 16", "1152921504606846976 keys");
  gw_free(&w);
  gw_header(&w, 3, 0, 1); /* a key 2^40 bytes long */
  gw_u64(&w, 1ull << 40);
  gw_bytes(&w, "abcdefghijklmnopqrstuvwxyz", 26);
  EXPECT_REFUSED(&w, HEED_E_INVALID, "key 0 of 1 at byte 24", "a key of 1099511627776 bytes runs past the end");
  gw_free(&w);
  gw_header(&w, 3, 0, 1); /* a string value 2^40 bytes long */
  gw_key(&w, "general.name", HEED_GGUF_STRING);
  gw_u64(&w, 1ull << 40);
  gw_bytes(&w, "abcdefghijklmnopqrstuvwxyz", 26);
  EXPECT_REFUSED(&w, HEED_E_INVALID, "key 'general.name' at byte", "1099511627776 bytes runs past the end");
  gw_free(&w);
  const uint32_t elems[] = {HEED_GGUF_UINT8, HEED_GGUF_STRING, HEED_GGUF_ARRAY, HEED_GGUF_FLOAT64};
  for (int k = 0; k < 4; k++) { /* 2^60 elements of a type */
    gw_header(&w, 3, 0, 1);
    gw_key(&w, "tokenizer.ggml.tokens", HEED_GGUF_ARRAY);
    gw_u32(&w, elems[k]);
    gw_u64(&w, 1ull << 60);
    for (int i = 0; i < 64; i++) gw_u8(&w, 0);
    EXPECT_REFUSED(&w, HEED_E_INVALID, "key 'tokenizer.ggml.tokens' at byte", "an array of 1152921504606846976");
    gw_free(&w);
  }
  /* inside a nested array, the message names the element */
  gw_header(&w, 3, 0, 1);
  gw_key(&w, "outer", HEED_GGUF_ARRAY);
  gw_u32(&w, HEED_GGUF_ARRAY), gw_u64(&w, 2);
  gw_u32(&w, HEED_GGUF_UINT8), gw_u64(&w, 1), gw_u8(&w, 1);
  gw_u32(&w, HEED_GGUF_STRING), gw_u64(&w, 2), gw_str(&w, "ok"), gw_u64(&w, 1ull << 40);
  EXPECT_REFUSED(&w, HEED_E_INVALID, "key 'outer' element [1][1] at byte", "1099511627776 bytes");
  gw_free(&w);
  double secs = (double)(clock() - t0) / CLOCKS_PER_SEC;
  cr_assert(secs < 1.0, "refusals took %.2f s of CPU", secs);
}

Test(gguf, element_of_string_array_named) {
  gw w = {0};
  gw_header(&w, 3, 0, 1);
  gw_key(&w, "tokenizer.ggml.tokens", HEED_GGUF_ARRAY);
  gw_u32(&w, HEED_GGUF_STRING), gw_u64(&w, 7);
  for (int i = 0; i < 5; i++) gw_str(&w, "tok");
  gw_u64(&w, 1000); /* element 5 runs past the end */
  gw_bytes(&w, "short", 5);
  gw_str(&w, "x");
  EXPECT_REFUSED(&w, HEED_E_INVALID, "key 'tokenizer.ggml.tokens' element 5 at byte", "a string of 1000 bytes runs past");
  gw_free(&w);
}

/* One tensor (with a valid key) whose info the caller gives; data of `data` bytes at alignment 32. */
static void one_tensor(gw *w, const tinfo *t, uint64_t data) {
  gw_header(w, 3, 1, 1);
  kv_str(w, "general.architecture", "llama");
  gw_tinfo(w, t);
  gw_data(w, 32, data);
}

Test(gguf, tensor_shapes_and_types) {
  gw w = {0};
  tinfo t = {"blk.0.attn_q.weight", 5, {2, 2, 2, 2, 2}, HEED_GGML_F32, 0};
  one_tensor(&w, &t, 256);
  EXPECT_REFUSED(&w, HEED_E_INVALID, "tensor 'blk.0.attn_q.weight' at byte", "n_dims=5; accepted: 1..4");
  gw_free(&w);
  t.n_dims = 0;
  one_tensor(&w, &t, 256);
  EXPECT_REFUSED(&w, HEED_E_INVALID, "tensor 'blk.0.attn_q.weight'", "n_dims=0");
  gw_free(&w);
  t = (tinfo){"blk.0.attn_q.weight", 2, {256, 4}, 16 /* IQ2_XXS */, 0};
  one_tensor(&w, &t, 4096);
  EXPECT_REFUSED(&w, HEED_E_UNSUPPORTED, "tensor 'blk.0.attn_q.weight'", "IQ2_XXS", "not one heed reads", "Q4_K");
  gw_free(&w);
  t.type = 9; /* Q8_1 */
  one_tensor(&w, &t, 4096);
  EXPECT_REFUSED(&w, HEED_E_UNSUPPORTED, "tensor 'blk.0.attn_q.weight'", "Q8_1");
  gw_free(&w);
  t.type = 99;
  one_tensor(&w, &t, 4096);
  EXPECT_REFUSED(&w, HEED_E_INVALID, "tensor 'blk.0.attn_q.weight'", "type 99 is no ggml type");
  gw_free(&w);
  t = (tinfo){"ffn_up", 2, {100, 4}, HEED_GGML_Q4_K, 0};
  one_tensor(&w, &t, 4096);
  EXPECT_REFUSED(&w, HEED_E_INVALID, "tensor 'ffn_up'", "ne[0]=100 is not a multiple of Q4_K's block of 256");
  gw_free(&w);
  t = (tinfo){"zero", 2, {4, 0}, HEED_GGML_F32, 0};
  one_tensor(&w, &t, 64);
  EXPECT_REFUSED(&w, HEED_E_INVALID, "tensor 'zero'", "ne[1]=0");
  gw_free(&w);
  t = (tinfo){"neg", 1, {(uint64_t)-4}, HEED_GGML_F32, 0};
  one_tensor(&w, &t, 64);
  EXPECT_REFUSED(&w, HEED_E_INVALID, "tensor 'neg'", "ne[0]=18446744073709551612");
  gw_free(&w);
  t = (tinfo){"huge", 3, {1ull << 31, 1ull << 31, 4}, HEED_GGML_F32, 0}; /* 2^64 elements */
  one_tensor(&w, &t, 64);
  EXPECT_REFUSED(&w, HEED_E_INVALID, "tensor 'huge'", "ne[2]=4 makes more than 2^63-1 elements");
  gw_free(&w);
  t = (tinfo){"big", 2, {1ull << 31, 1ull << 31}, HEED_GGML_F32, 0}; /* 2^62 elements, 2^64 bytes */
  one_tensor(&w, &t, 64);
  EXPECT_REFUSED(&w, HEED_E_INVALID, "tensor 'big'", "more than 2^64 bytes");
  gw_free(&w);
  gw_header(&w, 3, 1, 0);
  gw_strn(&w, "a\0b", 3);
  gw_u32(&w, 1), gw_u64(&w, 1), gw_u32(&w, 0), gw_u64(&w, 0);
  gw_data(&w, 32, 4);
  EXPECT_REFUSED(&w, HEED_E_INVALID, "tensor 'a?b'", "NUL byte");
  gw_free(&w);
}

Test(gguf, tensor_extents) {
  gw w = {0};
  tinfo t = {"output.weight", 2, {8, 4}, HEED_GGML_F32, 0}; /* 128 bytes */
  one_tensor(&w, &t, 127);
  EXPECT_REFUSED(&w, HEED_E_INVALID, "tensor 'output.weight' at byte", "runs past the end of the file", "holds 127 bytes");
  gw_free(&w);
  one_tensor(&w, &t, 128); /* exactly fits */
  heed_gguf *g;
  heed_error e;
  cr_assert_eq(open_w(&w, w.n, &g, &e), HEED_OK, "%s", e.msg);
  heed_gguf_close(g);
  gw_free(&w);
  t.offset = 1ull << 62;
  one_tensor(&w, &t, 128);
  EXPECT_REFUSED(&w, HEED_E_INVALID, "tensor 'output.weight'", "[4611686018427387904, +128 bytes) runs past");
  gw_free(&w);
  t.offset = UINT64_MAX - 31; /* aligned to 32, offset + bytes wraps */
  one_tensor(&w, &t, 128);
  EXPECT_REFUSED(&w, HEED_E_INVALID, "tensor 'output.weight'", "runs past the end");
  gw_free(&w);
  t.offset = 16;
  one_tensor(&w, &t, 256);
  EXPECT_REFUSED(&w, HEED_E_INVALID, "tensor 'output.weight'", "offset 16 is not a multiple of the alignment 32");
  gw_free(&w);
  /* overlap: b starts inside a */
  gw_header(&w, 3, 3, 0);
  tinfo a = {"a", 1, {16}, HEED_GGML_F32, 0}, b = {"b", 1, {16}, HEED_GGML_F32, 32}, c = {"c", 1, {8}, HEED_GGML_F32, 128};
  gw_tinfo(&w, &c), gw_tinfo(&w, &b), gw_tinfo(&w, &a); /* out of order: sorted by offset to find it */
  gw_data(&w, 32, 256);
  EXPECT_REFUSED(&w, HEED_E_INVALID, "tensor 'b'", "overlaps the data of tensor 'a'");
  gw_free(&w);
  /* the same places, not overlapping, out of order: fine */
  gw_header(&w, 3, 3, 0);
  b.offset = 64;
  gw_tinfo(&w, &c), gw_tinfo(&w, &b), gw_tinfo(&w, &a);
  gw_data(&w, 32, 256);
  cr_assert_eq(open_w(&w, w.n, &g, &e), HEED_OK, "%s", e.msg);
  heed_gguf_close(g);
  gw_free(&w);
}

Test(gguf, duplicates) {
  gw w = {0};
  gw_header(&w, 3, 0, 3);
  kv_u32(&w, "llama.block_count", 2);
  kv_str(&w, "general.name", "x");
  kv_u32(&w, "llama.block_count", 3);
  EXPECT_REFUSED(&w, HEED_E_INVALID, "key 'llama.block_count' at byte", "duplicate key (first at byte 24)");
  gw_free(&w);
  gw_header(&w, 3, 2, 0);
  tinfo a = {"tok_embd.weight", 1, {8}, HEED_GGML_F32, 0}, b = {"tok_embd.weight", 1, {8}, HEED_GGML_F32, 32};
  gw_tinfo(&w, &a), gw_tinfo(&w, &b);
  gw_data(&w, 32, 64);
  EXPECT_REFUSED(&w, HEED_E_INVALID, "tensor 'tok_embd.weight'", "duplicate name");
  gw_free(&w);
}

Test(gguf, bad_alignment) {
  const uint64_t bad[] = {0, 48, 3};
  gw w = {0};
  for (int k = 0; k < 3; k++) {
    gw_header(&w, 3, 0, 1);
    kv_u32(&w, "general.alignment", (uint32_t)bad[k]);
    char want[64];
    snprintf(want, sizeof want, "alignment %llu; accepted: a power of two", (unsigned long long)bad[k]);
    EXPECT_REFUSED(&w, HEED_E_INVALID, "key 'general.alignment' at byte 24", want);
    gw_free(&w);
  }
  /* 2^31: a power of two, but the data section would start past the end of the file */
  gw_header(&w, 3, 1, 1);
  kv_u32(&w, "general.alignment", 1u << 31);
  tinfo t = {"a", 1, {8}, HEED_GGML_F32, 0};
  gw_tinfo(&w, &t);
  gw_data(&w, 32, 64);
  EXPECT_REFUSED(&w, HEED_E_INVALID, "key 'general.alignment'", "would start at byte 2147483648", "past the end");
  gw_free(&w);
  gw_header(&w, 3, 0, 1);
  gw_key(&w, "general.alignment", HEED_GGUF_UINT64), gw_u64(&w, 64);
  EXPECT_REFUSED(&w, HEED_E_INVALID, "key 'general.alignment'", "type u64; accepted: u32");
  gw_free(&w);
}

Test(gguf, bad_value_types) {
  gw w = {0};
  gw_header(&w, 3, 0, 1);
  gw_key(&w, "k", 13);
  gw_u64(&w, 0);
  EXPECT_REFUSED(&w, HEED_E_INVALID, "key 'k' at byte 33", "value type 13");
  gw_free(&w);
  gw_header(&w, 3, 0, 1);
  gw_key(&w, "k", HEED_GGUF_ARRAY), gw_u32(&w, 77), gw_u64(&w, 1);
  EXPECT_REFUSED(&w, HEED_E_INVALID, "key 'k' at byte", "array element type 77");
  gw_free(&w);
}

/* ---------- files on disk ---------- */

static char tmpdir[256];
static void mk_tmp(void) {
  snprintf(tmpdir, sizeof tmpdir, "/tmp/heed-test-gguf-XXXXXX");
  cr_assert(mkdtemp(tmpdir));
}
static void rm_tmp(void) {
  char cmd[320];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
  cr_assert_eq(system(cmd), 0);
}
static void write_file(const char *path, const gw *w) {
  FILE *f = fopen(path, "wb");
  cr_assert(f);
  cr_assert_eq(fwrite(w->b, 1, w->n, f), w->n);
  fclose(f);
}

/* Part i of n: split keys (counts as given), tensor "t<i>.<j>" for j < per, data
 * bytes starting with i. */
static void split_part(gw *w, int i, int n, int per, uint64_t no, uint64_t count, uint64_t total, int with_keys) {
  gw_header(w, 3, (uint64_t)per, (uint64_t)(with_keys ? 3 : 0) + (i == 0));
  if (i == 0) kv_str(w, "general.architecture", "llama");
  if (with_keys) {
    gw_key(w, "split.no", HEED_GGUF_UINT16), gw_u16(w, (uint16_t)no);
    gw_key(w, "split.count", HEED_GGUF_UINT16), gw_u16(w, (uint16_t)count);
    gw_key(w, "split.tensors.count", HEED_GGUF_INT32), gw_u32(w, (uint32_t)total);
  }
  (void)n;
  for (int j = 0; j < per; j++) {
    char name[32];
    snprintf(name, sizeof name, "t%d.%d", i, j);
    tinfo t = {name, 1, {8}, HEED_GGML_F32, (uint64_t)j * 32};
    gw_tinfo(w, &t);
  }
  while (w->n % 32) gw_u8(w, 0);
  for (int j = 0; j < per * 32; j++) gw_u8(w, (uint8_t)(i * 16 + j / 32));
}

static void write_split(int n, int per, int bad_part, uint64_t bad_no, uint64_t bad_count, uint64_t bad_total) {
  for (int i = 0; i < n; i++) {
    gw w = {0};
    int bad = i == bad_part;
    split_part(&w, i, n, per, bad ? bad_no : (uint64_t)i, bad ? bad_count : (uint64_t)n,
               bad ? bad_total : (uint64_t)(n * per), 1);
    char path[400];
    snprintf(path, sizeof path, "%s/model-%05d-of-%05d.gguf", tmpdir, i + 1, n);
    write_file(path, &w);
    gw_free(&w);
  }
}

Test(gguf, split_model, .init = mk_tmp, .fini = rm_tmp) {
  write_split(3, 2, -1, 0, 0, 0);
  char path[400];
  for (int open_no = 1; open_no <= 3; open_no++) { /* any part opens the set */
    snprintf(path, sizeof path, "%s/model-%05d-of-00003.gguf", tmpdir, open_no);
    heed_gguf *g;
    heed_error e = {0};
    cr_assert_eq(heed_gguf_open_flags(path, open_no == 2 ? HEED_GGUF_LOAD : 0, &g, &e), HEED_OK, "%s", e.msg);
    cr_assert_eq(heed_gguf_n_files(g), 3);
    cr_assert_eq(heed_gguf_n_tensors(g), 6);
    cr_assert(strstr(heed_gguf_file_path(g, 2), "model-00003-of-00003.gguf"));
    cr_assert_eq(heed_gguf_find_key(g, "general.architecture"), 0); /* metadata: the first part's */
    for (int i = 0; i < 3; i++)
      for (int j = 0; j < 2; j++) {
        char name[32];
        snprintf(name, sizeof name, "t%d.%d", i, j);
        const heed_gguf_tensor *t = heed_gguf_find_tensor(g, name);
        cr_assert(t, "%s", name);
        cr_assert_eq(t->file, (uint32_t)i);
        cr_assert_eq(heed_gguf_tensor_at(g, (uint64_t)(i * 2 + j)), t);
        cr_assert_eq(((const uint8_t *)t->data)[0], i * 16 + j);
        cr_assert_eq(((const uint8_t *)t->data)[31], i * 16 + j);
      }
    heed_gguf_close(g);
  }
  /* a part missing */
  snprintf(path, sizeof path, "%s/model-00002-of-00003.gguf", tmpdir);
  cr_assert_eq(unlink(path), 0);
  snprintf(path, sizeof path, "%s/model-00001-of-00003.gguf", tmpdir);
  heed_gguf *g = (heed_gguf *)1;
  heed_error e = {0};
  cr_assert_eq(heed_gguf_open(path, &g, &e), HEED_E_NOT_FOUND);
  cr_assert_null(g);
  cr_assert(strstr(e.msg, "part 2 of the 3") && strstr(e.msg, "model-00002-of-00003.gguf"), "%s", e.msg);
}

Test(gguf, split_keys_checked, .init = mk_tmp, .fini = rm_tmp) {
  char path[400];
  snprintf(path, sizeof path, "%s/model-00001-of-00002.gguf", tmpdir);
  struct {
    uint64_t no, count, total;
    const char *want;
  } cases[] = {{0, 2, 4, "key 'split.no' at byte"},
               {1, 3, 4, "key 'split.count' at byte"},
               {1, 2, 5, "key 'split.tensors.count' at byte"}};
  for (int k = 0; k < 3; k++) {
    write_split(2, 2, 1, cases[k].no, cases[k].count, cases[k].total);
    heed_gguf *g;
    heed_error e = {0};
    cr_assert_eq(heed_gguf_open(path, &g, &e), HEED_E_INVALID, "case %d: %s", k, e.msg);
    cr_assert(strstr(e.msg, cases[k].want) && strstr(e.msg, "model-00002-of-00002.gguf"), "case %d: %s", k, e.msg);
  }
  /* a part without the keys */
  write_split(2, 2, -1, 0, 0, 0);
  gw w = {0};
  split_part(&w, 1, 2, 2, 1, 2, 4, 0);
  snprintf(path, sizeof path, "%s/model-00002-of-00002.gguf", tmpdir);
  write_file(path, &w);
  gw_free(&w);
  heed_gguf *g;
  heed_error e = {0};
  cr_assert_eq(heed_gguf_open(path, &g, &e), HEED_E_INVALID);
  cr_assert(strstr(e.msg, "key 'split.no' is absent"), "%s", e.msg);
  /* a part opened alone, under another name: refused, not half a model */
  split_part(&w, 0, 2, 2, 0, 2, 4, 1);
  snprintf(path, sizeof path, "%s/renamed.gguf", tmpdir);
  write_file(path, &w);
  gw_free(&w);
  cr_assert_eq(heed_gguf_open(path, &g, &e), HEED_E_INVALID);
  cr_assert(strstr(e.msg, "renamed.gguf: key 'split.count'") && strstr(e.msg, "part 1 of a split model of 2"), "%s", e.msg);
  /* a 1-of-1 split name is a single file */
  split_part(&w, 0, 1, 2, 0, 1, 2, 1);
  snprintf(path, sizeof path, "%s/one-00001-of-00001.gguf", tmpdir);
  write_file(path, &w);
  gw_free(&w);
  cr_assert_eq(heed_gguf_open(path, &g, &e), HEED_OK, "%s", e.msg);
  cr_assert_eq(heed_gguf_n_files(g), 1);
  heed_gguf_close(g);
}

Test(gguf, open_errors, .init = mk_tmp, .fini = rm_tmp) {
  heed_gguf *g;
  heed_error e = {0};
  char path[400];
  snprintf(path, sizeof path, "%s/absent.gguf", tmpdir);
  cr_assert_eq(heed_gguf_open(path, &g, &e), HEED_E_NOT_FOUND);
  cr_assert(strstr(e.msg, "absent.gguf: cannot open"), "%s", e.msg);
  cr_assert_eq(heed_gguf_open(tmpdir, &g, &e), HEED_E_INVALID);
  cr_assert(strstr(e.msg, "not a regular file"), "%s", e.msg);
  snprintf(path, sizeof path, "%s/empty.gguf", tmpdir);
  fclose(fopen(path, "wb"));
  cr_assert_eq(heed_gguf_open(path, &g, &e), HEED_E_INVALID);
  cr_assert(strstr(e.msg, "empty.gguf: empty file"), "%s", e.msg);
  snprintf(path, sizeof path, "%s/fifo.gguf", tmpdir); /* refused at once, not waited on */
  cr_assert_eq(mkfifo(path, 0600), 0);
  cr_assert_eq(heed_gguf_open(path, &g, &e), HEED_E_INVALID);
  cr_assert(strstr(e.msg, "fifo.gguf: not a regular file"), "%s", e.msg);
  snprintf(path, sizeof path, "%s/empty.gguf", tmpdir);
  cr_assert_eq(heed_gguf_open(NULL, &g, &e), HEED_E_INVALID);
  cr_assert_eq(heed_gguf_open(path, NULL, NULL), HEED_E_INVALID);
  /* a good file on disk: tensors point into the mapping */
  gw w = {0};
  std_file(&w, 3);
  snprintf(path, sizeof path, "%s/good.gguf", tmpdir);
  write_file(path, &w);
  cr_assert_eq(heed_gguf_open(path, &g, &e), HEED_OK, "%s", e.msg);
  const heed_gguf_tensor *t = heed_gguf_find_tensor(g, "output_norm");
  cr_assert_eq(memcmp(t->data, w.b + w.n - t->bytes, t->bytes), 0);
  cr_assert_eq((uintptr_t)t->data % 32, 0);
  cr_assert_str_eq(heed_gguf_file_path(g, 0), path);
  cr_assert_str_eq(heed_gguf_last_error(g), "");
  heed_gguf_close(g);
  heed_gguf_close(NULL);
  /* loaded instead of mapped: the same bytes, on a 2 MiB boundary; unknown flags refused */
  cr_assert_eq(heed_gguf_open_flags(path, HEED_GGUF_LOAD, &g, &e), HEED_OK, "%s", e.msg);
  t = heed_gguf_find_tensor(g, "output_norm");
  cr_assert_eq(memcmp(t->data, w.b + w.n - t->bytes, t->bytes), 0);
  cr_assert_eq(((uintptr_t)t->data - (w.n - t->bytes)) % (2u << 20), 0, "the copy starts on a huge page");
  cr_assert_eq(heed_gguf_n_tensors(g), 3);
  heed_gguf_close(g);
  g = (heed_gguf *)1;
  cr_assert_eq(heed_gguf_open_flags(path, 6, &g, &e), HEED_E_INVALID);
  cr_assert_null(g);
  cr_assert(strstr(e.msg, "0x6"), "%s", e.msg);
  gw_free(&w);
}

Test(gguf, type_names) {
  cr_assert_str_eq(heed_ggml_type_name(12), "Q4_K");
  cr_assert_str_eq(heed_ggml_type_name(30), "BF16");
  const char *ggml[][2] = {{"16", "IQ2_XXS"}, {"17", "IQ2_XS"}, {"18", "IQ3_XXS"}, {"19", "IQ1_S"}, {"20", "IQ4_NL"},
                           {"21", "IQ3_S"},   {"22", "IQ2_S"},  {"23", "IQ4_XS"},  {"24", "I8"},    {"25", "I16"},
                           {"26", "I32"},     {"27", "I64"},    {"28", "F64"},     {"29", "IQ1_M"}, {"34", "TQ1_0"},
                           {"35", "TQ2_0"},   {"39", "MXFP4"},  {"9", "Q8_1"}};
  for (size_t i = 0; i < sizeof ggml / sizeof *ggml; i++) {
    int t = atoi(ggml[i][0]);
    cr_assert_str_eq(heed_ggml_type_name(t), ggml[i][1]);
    cr_assert_eq(heed_ggml_type_info(t, NULL, NULL), 0);
  }
  cr_assert_null(heed_ggml_type_name(4));
  cr_assert_null(heed_ggml_type_name(-1));
  cr_assert_null(heed_ggml_type_name(1000));
  uint32_t e, b;
  cr_assert(heed_ggml_type_info(HEED_GGML_Q6_K, &e, &b) && e == 256 && b == 210);
  cr_assert_str_eq(heed_gguf_vtype_name(HEED_GGUF_FLOAT64), "f64");
  cr_assert_null(heed_gguf_vtype_name(13));
}

/* ---------- the real models ---------- */

static heed_gguf *open_model(const char *file) {
  char path[1024];
  const char *why;
  if (!tm_model_path(file, path, sizeof path, &why)) {
    cr_skip_test("%s", why);
    return NULL;
  }
  heed_gguf *g;
  heed_error e = {0};
  cr_assert_eq(heed_gguf_open(path, &g, &e), HEED_OK, "%s", e.msg);
  return g;
}

Test(gguf, qwen_model) {
  heed_gguf *g = open_model(TM_QWEN);
  if (!g) return;
  cr_assert_eq(heed_gguf_n_tensors(g), 339);
  cr_assert_eq(heed_gguf_version(g), 3);
  cr_assert_eq(heed_gguf_n_kv(g), 26);
  heed_gguf_value toks, x;
  cr_assert_eq(heed_gguf_get(g, "tokenizer.ggml.tokens", &toks), HEED_OK);
  cr_assert_eq(toks.v.arr.n, 151936);
  cr_assert_eq(heed_gguf_array_get(g, &toks, 151645, &x), HEED_OK);
  cr_assert(x.v.str.len == 10 && memcmp(x.v.str.ptr, "<|im_end|>", 10) == 0);
  uint64_t u;
  cr_assert_eq(heed_gguf_get_u64(g, "tokenizer.ggml.eos_token_id", &u), HEED_OK);
  cr_assert_eq(u, 151645);
  const heed_gguf_tensor *t = heed_gguf_find_tensor(g, "blk.0.attn_q.weight");
  cr_assert(t && t->ne[0] == 1536 && t->ne[1] == 1536 && t->n_dims == 2);
  t = heed_gguf_find_tensor(g, "blk.0.attn_q.bias");
  cr_assert(t && t->type == HEED_GGML_F32 && t->ne[0] == 1536);
  uint64_t sum = 0;
  for (uint64_t i = 0; i < heed_gguf_n_tensors(g); i++) sum += heed_gguf_tensor_at(g, i)->bytes;
  cr_assert_leq(sum, heed_gguf_file_bytes(g));
  heed_model_config c;
  heed_error e = {0};
  cr_assert_eq(heed_model_config_read(g, &c, &e), HEED_OK, "%s", e.msg);
  cr_assert_eq(c.arch, HEED_ARCH_QWEN2);
  cr_assert_eq(c.n_layer, 28);
  cr_assert_eq(c.n_embd, 1536);
  cr_assert_eq(c.n_ff, 8960);
  cr_assert_eq(c.n_head, 12);
  cr_assert_eq(c.n_head_kv, 2);
  cr_assert_eq(c.head_dim_k, 128);
  cr_assert_eq(c.head_dim_v, 128);
  cr_assert_eq(c.n_ctx_train, 32768);
  cr_assert_eq(c.n_vocab, 151936);
  cr_assert_eq(c.rope_freq_base, 1e6);
  cr_assert_eq(c.rms_eps, (double)1e-6f);
  cr_assert_eq(c.sliding_window, 0);
  cr_assert_eq(heed_model_layer_is_swa(&c, 3), 0);
  double f16, q8, q4;
  cr_assert_eq(heed_model_kv_bytes_per_token(&c, HEED_DTYPE_F16, &f16, &e), HEED_OK, "%s", e.msg);
  cr_assert_eq(f16, 28.0 * 2 * 2 * 128 * 2); /* layers x K,V x heads x dim x 2 bytes */
  heed_model_kv_bytes_per_token(&c, HEED_DTYPE_Q8, &q8, &e);
  heed_model_kv_bytes_per_token(&c, HEED_DTYPE_Q4, &q4, &e);
  cr_assert(q8 > f16 / 2 && q8 < f16 * 0.6, "q8 %g", q8); /* codes plus f16 scales */
  cr_assert(q4 > f16 / 4 && q4 < q8, "q4 %g", q4);
  heed_gguf_close(g);
}

Test(gguf, gemma_model) {
  heed_gguf *g = open_model(TM_GEMMA);
  if (!g) return;
  cr_assert_eq(heed_gguf_n_tensors(g), 236);
  heed_gguf_value tags, x;
  cr_assert_eq(heed_gguf_get(g, "general.tags", &tags), HEED_OK);
  cr_assert(tags.v.arr.elem_type == HEED_GGUF_STRING && tags.v.arr.n == 4);
  cr_assert_eq(heed_gguf_array_get(g, &tags, 3, &x), HEED_OK);
  heed_gguf_value scores;
  cr_assert_eq(heed_gguf_get(g, "tokenizer.ggml.scores", &scores), HEED_OK);
  cr_assert(scores.v.arr.elem_type == HEED_GGUF_FLOAT32 && scores.v.arr.n == 262144);
  cr_assert_not_null(heed_gguf_array_data(g, &scores));
  int add_bos;
  cr_assert_eq(heed_gguf_get_bool(g, "tokenizer.ggml.add_bos_token", &add_bos), HEED_OK);
  cr_assert_eq(add_bos, 1);
  heed_model_config c;
  heed_error e = {0};
  cr_assert_eq(heed_model_config_read(g, &c, &e), HEED_OK, "%s", e.msg);
  cr_assert_eq(c.arch, HEED_ARCH_GEMMA3);
  cr_assert_eq(c.n_layer, 18);
  cr_assert_eq(c.n_embd, 640);
  cr_assert_eq(c.n_head, 4);
  cr_assert_eq(c.n_head_kv, 1);
  cr_assert_eq(c.head_dim_k, 256);
  cr_assert_eq(c.head_dim_v, 256);
  cr_assert_eq(c.sliding_window, 512);
  cr_assert_eq(c.swa_pattern, 6);
  cr_assert_eq(c.rope_freq_base, 1e6);
  cr_assert_eq(c.rope_freq_base_swa, 10000.0);
  cr_assert_eq(c.n_vocab, 262144);
  cr_assert(heed_model_layer_is_swa(&c, 0) && heed_model_layer_is_swa(&c, 4) && !heed_model_layer_is_swa(&c, 5) &&
            !heed_model_layer_is_swa(&c, 17));
  heed_gguf_close(g);
}

/* ---------- model configuration from written files ---------- */

/* A llama-style file: the keys given (NULL value: left out), a 3-token vocabulary. */
static void config_file(gw *w, const char *arch, int with_layers, int with_kv_heads) {
  gw_header(w, 3, 0, (uint64_t)(7 + with_layers + with_kv_heads));
  kv_str(w, "general.architecture", arch);
  char k[128];
  if (with_layers) snprintf(k, sizeof k, "%s.block_count", arch), kv_u32(w, k, 4);
  snprintf(k, sizeof k, "%s.embedding_length", arch), kv_u32(w, k, 512);
  snprintf(k, sizeof k, "%s.feed_forward_length", arch), kv_u32(w, k, 1024);
  snprintf(k, sizeof k, "%s.attention.head_count", arch), kv_u32(w, k, 8);
  if (with_kv_heads) snprintf(k, sizeof k, "%s.attention.head_count_kv", arch), kv_u32(w, k, 3);
  snprintf(k, sizeof k, "%s.context_length", arch), kv_u32(w, k, 2048);
  snprintf(k, sizeof k, "%s.attention.layer_norm_rms_epsilon", arch), kv_f32(w, k, 1e-5f);
  gw_key(w, "tokenizer.ggml.tokens", HEED_GGUF_ARRAY);
  gw_u32(w, HEED_GGUF_STRING), gw_u64(w, 3), gw_str(w, "a"), gw_str(w, "b"), gw_str(w, "c");
}

Test(model, config_defaults_and_refusals) {
  gw w = {0};
  config_file(&w, "llama", 1, 0);
  heed_gguf *g;
  heed_error e;
  cr_assert_eq(open_w(&w, w.n, &g, &e), HEED_OK, "%s", e.msg);
  heed_model_config c;
  cr_assert_eq(heed_model_config_read(g, &c, &e), HEED_OK, "%s", e.msg);
  cr_assert_eq(c.arch, HEED_ARCH_LLAMA);
  cr_assert_eq(c.n_head_kv, 8); /* no key: no GQA */
  cr_assert_eq(c.head_dim_k, 64);
  cr_assert_eq(c.head_dim_v, 64);
  cr_assert_eq(c.n_rot, 64);
  cr_assert_eq(c.rope_freq_base, 10000.0);
  cr_assert_eq(c.rope_freq_base_swa, 10000.0);
  cr_assert_eq(c.n_vocab, 3);
  cr_assert_eq(c.rms_eps, (double)1e-5f);
  heed_gguf_close(g);
  gw_free(&w);
  config_file(&w, "phi3", 1, 0);
  cr_assert_eq(open_w(&w, w.n, &g, &e), HEED_OK, "%s", e.msg);
  cr_assert_eq(heed_model_config_read(g, &c, &e), HEED_E_UNSUPPORTED);
  cr_assert(strstr(e.msg, "'phi3'") && strstr(e.msg, "llama qwen2 qwen3 gemma3"), "%s", e.msg);
  heed_gguf_close(g);
  gw_free(&w);
  config_file(&w, "qwen3", 0, 0);
  cr_assert_eq(open_w(&w, w.n, &g, &e), HEED_OK, "%s", e.msg);
  cr_assert_eq(heed_model_config_read(g, &c, &e), HEED_E_NOT_FOUND);
  cr_assert(strstr(e.msg, "key 'qwen3.block_count' is absent"), "%s", e.msg);
  heed_gguf_close(g);
  gw_free(&w);
  config_file(&w, "qwen2", 1, 1); /* 8 heads over 3 KV heads */
  cr_assert_eq(open_w(&w, w.n, &g, &e), HEED_OK, "%s", e.msg);
  cr_assert_eq(heed_model_config_read(g, &c, &e), HEED_E_INVALID);
  cr_assert(strstr(e.msg, "head_count 8 is not a multiple of head_count_kv 3"), "%s", e.msg);
  heed_gguf_close(g);
  gw_free(&w);
  heed_arch a;
  cr_assert_eq(heed_arch_parse("gemma3", &a), HEED_OK);
  cr_assert_eq(a, HEED_ARCH_GEMMA3);
  cr_assert_eq(heed_arch_parse("gemma2", &a), HEED_E_UNSUPPORTED);
  cr_assert_str_eq(heed_arch_name(HEED_ARCH_QWEN3), "qwen3");
  cr_assert_null(heed_arch_name(HEED_ARCH_COUNT));
}

Test(model, kv_bytes_per_token) {
  heed_model_config c = {.arch = HEED_ARCH_LLAMA, .n_layer = 32, .n_head = 32, .n_head_kv = 8, .head_dim_k = 128, .head_dim_v = 128};
  double b[HEED_DTYPE_COUNT];
  heed_error e = {0};
  for (int d = 0; d < HEED_DTYPE_COUNT; d++)
    cr_assert_eq(heed_model_kv_bytes_per_token(&c, (heed_dtype)d, &b[d], &e), HEED_OK, "%s", e.msg);
  cr_assert_eq(b[HEED_DTYPE_F32], 32.0 * 2 * 8 * 128 * 4);
  cr_assert_eq(b[HEED_DTYPE_F16], b[HEED_DTYPE_BF16]);
  cr_assert_eq(b[HEED_DTYPE_F16], b[HEED_DTYPE_F32] / 2);
  /* the quantized formats: codes plus their scales */
  cr_assert_gt(b[HEED_DTYPE_Q8], b[HEED_DTYPE_F16] / 2);
  cr_assert_gt(b[HEED_DTYPE_Q4], b[HEED_DTYPE_F16] / 4);
  cr_assert_gt(b[HEED_DTYPE_E4M3], b[HEED_DTYPE_F16] / 2);
  cr_assert_eq(b[HEED_DTYPE_E4M3], b[HEED_DTYPE_E5M2]);
  c.head_dim_k = 72;
  cr_assert_eq(heed_model_kv_bytes_per_token(&c, HEED_DTYPE_F16, &b[0], &e), HEED_E_UNSUPPORTED);
  cr_assert(strstr(e.msg, "k=72"), "%s", e.msg);
}
