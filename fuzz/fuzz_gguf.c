/* fuzz/fuzz_gguf.c - heed_gguf_open_memory on arbitrary bytes, then the model
 * configuration.
 *
 * The input is the file itself (seeds: small valid GGUFs in
 * fuzz/corpus/gguf/, fuzz/gguf_seeds.py writes them). A file that opens is
 * walked whole: every key, every array element (nested arrays too, up to a
 * budget), every string and tensor, touching the first and last byte of each
 * so that ASan reports any pointer outside the input.
 *
 * Checks: a refusal has a terminated message naming "<memory>" and leaves
 * *out NULL; never HEED_E_INTERNAL; what an opened file returns lies inside
 * the input; lookups by key and name find the entry walked; tensors are
 * aligned, inside the data, do not overlap, and their sizes agree with their
 * shapes and types. */
#include "fuzz/fuzz_common.h"
#include "heed/gguf.h"
#include "heed/model.h"

#define ELEM_BUDGET (1u << 16) /* array elements walked per input */

static const uint8_t *lo, *hi; /* the input */
static volatile uint8_t sink;

/* p[0..n) lies inside the input; touch its ends. */
static void touch(const void *ptr, uint64_t n, const char *what) {
  const uint8_t *p = ptr;
  FZ_CHECK(n == 0 || (p >= lo && p <= hi && n <= (uint64_t)(hi - p)), "%s [%p, +%llu) outside the input [%p, %p)", what,
           ptr, (unsigned long long)n, (const void *)lo, (const void *)hi);
  if (n) sink ^= p[0] ^ p[n - 1];
}

static void walk(const heed_gguf *g, const heed_gguf_value *v, unsigned *budget, int depth) {
  FZ_CHECK(depth <= 17, "value nested %d deep", depth);
  switch (v->type) {
  case HEED_GGUF_STRING: touch(v->v.str.ptr, v->v.str.len, "string"); break;
  case HEED_GGUF_BOOL: FZ_CHECK(v->v.u <= 1, "bool %llu", (unsigned long long)v->v.u); break;
  case HEED_GGUF_ARRAY: {
    const char *tn = heed_gguf_vtype_name(v->v.arr.elem_type);
    FZ_CHECK(tn, "array element type %d", (int)v->v.arr.elem_type);
    const void *raw = heed_gguf_array_data(g, v);
    int fixed = v->v.arr.elem_type != HEED_GGUF_STRING && v->v.arr.elem_type != HEED_GGUF_ARRAY;
    FZ_CHECK(fixed == (raw != NULL), "array_data of %s: %p", tn, raw);
    if (fixed) {
      uint64_t size;
      switch (v->v.arr.elem_type) {
      case HEED_GGUF_UINT8: case HEED_GGUF_INT8: case HEED_GGUF_BOOL: size = 1; break;
      case HEED_GGUF_UINT16: case HEED_GGUF_INT16: size = 2; break;
      case HEED_GGUF_UINT32: case HEED_GGUF_INT32: case HEED_GGUF_FLOAT32: size = 4; break;
      default: size = 8; break;
      }
      touch(raw, v->v.arr.n * size, "array data");
    }
    for (uint64_t i = 0; i < v->v.arr.n; i++) {
      heed_gguf_value e;
      /* the ends always; the middle while the budget lasts */
      if (*budget == 0 && i != v->v.arr.n - 1) i = v->v.arr.n - 1;
      if (*budget) --*budget;
      heed_status st = heed_gguf_array_get(g, v, i, &e);
      FZ_CHECK(st == HEED_OK, "array_get %llu of %llu: %s", (unsigned long long)i, (unsigned long long)v->v.arr.n,
               heed_gguf_last_error(g));
      FZ_CHECK(e.type == v->v.arr.elem_type, "element type %d of an array of %s", (int)e.type, tn);
      walk(g, &e, budget, depth + 1);
    }
    heed_gguf_value e;
    FZ_CHECK(heed_gguf_array_get(g, v, v->v.arr.n, &e) == HEED_E_RANGE, "element n of n");
    break;
  }
  default: break;
  }
}

typedef struct span {
  uint64_t off, end;
} span;
static int cmp_span(const void *a, const void *b) {
  const span *x = a, *y = b;
  return x->off < y->off ? -1 : x->off > y->off;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  lo = data, hi = data + size;
  heed_gguf *g = (heed_gguf *)&g;
  heed_error e;
  memset(&e, 0x55, sizeof e); /* a message must be written, terminated */
  heed_status st = heed_gguf_open_memory(data, size, &g, &e);
  if (st != HEED_OK) {
    fz_stat("refused");
    FZ_CHECK(g == NULL, "refused, yet *out is set");
    FZ_CHECK(st != HEED_E_INTERNAL && e.status == st, "status %s, recorded %s", heed_status_name(st), heed_status_name(e.status));
    FZ_CHECK(memchr(e.msg, 0, sizeof e.msg), "message not terminated");
    FZ_CHECK(strncmp(e.msg, "<memory>: ", 10) == 0 || st == HEED_E_NOMEM, "message does not name the input: %s", e.msg);
    return 0;
  }
  fz_stat("opened");
  FZ_CHECK(heed_gguf_version(g) == 2 || heed_gguf_version(g) == 3, "version %u", heed_gguf_version(g));
  uint32_t al = heed_gguf_alignment(g);
  FZ_CHECK(al && !(al & (al - 1)), "alignment %u", al);
  FZ_CHECK(heed_gguf_n_files(g) == 1 && heed_gguf_file_bytes(g) == size, "files");
  unsigned budget = ELEM_BUDGET;
  for (uint64_t i = 0; i < heed_gguf_n_kv(g); i++) {
    heed_gguf_str k;
    heed_gguf_value v;
    FZ_CHECK(heed_gguf_kv_at(g, i, &k, &v) == HEED_OK, "kv_at %llu", (unsigned long long)i);
    touch(k.ptr, k.len, "key");
    walk(g, &v, &budget, 1);
    if (k.len < 256 && !memchr(k.ptr, 0, (size_t)k.len)) {
      char key[256];
      memcpy(key, k.ptr, (size_t)k.len);
      key[k.len] = 0;
      FZ_CHECK(heed_gguf_find_key(g, key) == (int64_t)i, "find_key '%s': %lld, walked at %llu", key,
               (long long)heed_gguf_find_key(g, key), (unsigned long long)i);
      uint64_t u;
      int64_t s;
      double d;
      int b;
      heed_gguf_str str;
      heed_gguf_get_u64(g, key, &u), heed_gguf_get_i64(g, key, &s), heed_gguf_get_f64(g, key, &d);
      heed_gguf_get_bool(g, key, &b), heed_gguf_get_str(g, key, &str);
      FZ_CHECK(memchr(heed_gguf_last_error(g), 0, HEED_ERROR_MSG_MAX), "last_error not terminated");
    }
  }
  heed_gguf_str k;
  FZ_CHECK(heed_gguf_kv_at(g, heed_gguf_n_kv(g), &k, NULL) == HEED_E_RANGE, "kv_at n");
  uint64_t nt = heed_gguf_n_tensors(g);
  span *sp = malloc((nt ? nt : 1) * sizeof *sp);
  uint64_t data_start = nt ? (uint64_t)((const uint8_t *)heed_gguf_tensor_at(g, 0)->data - lo) - heed_gguf_tensor_at(g, 0)->offset : 0;
  FZ_CHECK(data_start % al == 0, "data section at %llu, alignment %u", (unsigned long long)data_start, al);
  for (uint64_t i = 0; i < nt; i++) {
    const heed_gguf_tensor *t = heed_gguf_tensor_at(g, i);
    uint32_t be, bb;
    FZ_CHECK(heed_ggml_type_info((int)t->type, &be, &bb), "tensor type %d", (int)t->type);
    FZ_CHECK(t->n_dims >= 1 && t->n_dims <= 4 && t->ne[0] % be == 0, "shape");
    uint64_t n = 1;
    for (int d = 0; d < 4; d++) n *= t->ne[d];
    FZ_CHECK(n == t->n_elems && t->bytes == n / be * bb, "tensor '%s': %llu elements, %llu bytes", t->name,
             (unsigned long long)t->n_elems, (unsigned long long)t->bytes);
    FZ_CHECK(t->offset % al == 0, "tensor '%s' offset %llu", t->name, (unsigned long long)t->offset);
    FZ_CHECK((const uint8_t *)t->data == lo + data_start + t->offset, "tensor '%s' data pointer", t->name);
    touch(t->data, t->bytes, "tensor data");
    FZ_CHECK(heed_gguf_find_tensor(g, t->name) == t, "find_tensor '%s'", t->name);
    sp[i] = (span){t->offset, t->offset + t->bytes};
  }
  qsort(sp, (size_t)nt, sizeof *sp, cmp_span);
  for (uint64_t i = 1; i < nt; i++) FZ_CHECK(sp[i - 1].end <= sp[i].off, "tensors overlap");
  free(sp);
  FZ_CHECK(heed_gguf_tensor_at(g, nt) == NULL, "tensor_at n");
  heed_model_config c;
  if (heed_model_config_read(g, &c, &e) == HEED_OK) {
    fz_stat("config");
    FZ_CHECK(c.n_layer >= 1 && c.n_head >= 1 && c.n_head_kv >= 1 && c.n_head % c.n_head_kv == 0, "config");
    FZ_CHECK(c.n_vocab >= 1 && c.rms_eps > 0 && c.rope_freq_base > 0, "config values");
    for (int d = 0; d < HEED_DTYPE_COUNT; d++) {
      double per;
      if (heed_model_kv_bytes_per_token(&c, (heed_dtype)d, &per, &e) == HEED_OK) {
        fz_stat("kv bytes");
        FZ_CHECK(per > 0, "KV bytes per token %g", per);
      }
    }
  } else {
    FZ_CHECK(memchr(e.msg, 0, sizeof e.msg) && e.status != HEED_E_INTERNAL, "config refusal");
  }
  heed_gguf_close(g);
  return 0;
}
