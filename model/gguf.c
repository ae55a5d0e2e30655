/* model/gguf.c - the GGUF reader (format in heed/gguf.h).
 *
 * One pass over the header of each part: every length, count and extent is
 * checked against the bytes that remain before it is used or allocated for,
 * in 64-bit checked arithmetic. A count is bounded by the smallest encoding
 * of what it counts (an array of 2^60 strings needs 2^63 bytes: refused
 * before anything is allocated), and tables grow only as entries are read,
 * so memory follows what the file really holds. Values are decoded byte by
 * byte (little-endian whatever the host; no unaligned loads).
 *
 * Messages name the file, the key or tensor (and the array element), the
 * byte offset where the bad field starts, the value and what is accepted. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "model/gguf_internal.h"
#include "runtime/internal.h"

/* ---------- the tables ---------- */

const char *heed_gguf_vtype_name(int t) {
  switch (t) {
#define HEED_X_(N, v, s, b) \
  case v:                   \
    return s;
    HEED_GGUF_VTYPE_LIST(HEED_X_)
#undef HEED_X_
  }
  return NULL;
}

/* Bytes of a fixed-size value type; 0 for STRING, ARRAY and unknown values. */
static unsigned vtype_bytes(uint32_t t) {
  switch (t) {
#define HEED_X_(N, v, s, b) \
  case v:                   \
    return b;
    HEED_GGUF_VTYPE_LIST(HEED_X_)
#undef HEED_X_
  }
  return 0;
}

static int vtype_known(uint32_t t) { return heed_gguf_vtype_name((int)t) != NULL; }

/* The smallest encoding of one value of type t: what bounds an element count. */
static unsigned vtype_min_bytes(uint32_t t) {
  if (t == HEED_GGUF_STRING) return 8;      /* the length, of an empty string */
  if (t == HEED_GGUF_ARRAY) return 4 + 8;   /* element type and count, of an empty array */
  return vtype_bytes(t);
}

/* ggml's names for every type it has had, read or not: messages name what a
 * file holds. Values missing here were never ggml types. */
#define GGML_ALL_TYPES(X)                                                                       \
  X(9, "Q8_1") X(16, "IQ2_XXS") X(17, "IQ2_XS") X(18, "IQ3_XXS") X(19, "IQ1_S") X(20, "IQ4_NL") \
  X(21, "IQ3_S") X(22, "IQ2_S") X(23, "IQ4_XS") X(24, "I8") X(25, "I16") X(26, "I32")            \
  X(27, "I64") X(28, "F64") X(29, "IQ1_M") X(31, "Q4_0_4_4") X(32, "Q4_0_4_8")                     \
  X(33, "Q4_0_8_8") X(34, "TQ1_0") X(35, "TQ2_0") X(36, "IQ4_NL_4_4") X(37, "IQ4_NL_4_8")       \
  X(38, "IQ4_NL_8_8") X(39, "MXFP4") X(40, "NVFP4") X(41, "Q1_0")

const char *heed_ggml_type_name(int t) {
  switch (t) {
#define HEED_X_(N, v, s, e, b) \
  case v:                      \
    return s;
    HEED_GGML_TYPE_LIST(HEED_X_)
#undef HEED_X_
#define HEED_X_(v, s) \
  case v:             \
    return s;
    GGML_ALL_TYPES(HEED_X_)
#undef HEED_X_
  }
  return NULL;
}

int heed_ggml_type_info(int t, uint32_t *block_elems, uint32_t *block_bytes) {
  uint32_t e = 0, b = 0;
  switch (t) {
#define HEED_X_(N, v, s, el, by) \
  case v:                        \
    e = el, b = by;              \
    break;
    HEED_GGML_TYPE_LIST(HEED_X_)
#undef HEED_X_
  default:
    return 0;
  }
  if (block_elems) *block_elems = e;
  if (block_bytes) *block_bytes = b;
  return 1;
}

/* The types heed reads, for messages: "F32 F16 ...". */
static const char *readable_types(void) {
  return &
#define HEED_X_(N, v, s, e, b) " " s
      HEED_GGML_TYPE_LIST(HEED_X_)
#undef HEED_X_
      [1];
}

/* ---------- little-endian reads (any host, any alignment) ---------- */

static uint64_t le(const uint8_t *b, unsigned n) {
  uint64_t v = 0;
  for (unsigned i = n; i-- > 0;) v = v << 8 | b[i];
  return v;
}

/* A scalar of fixed-size type t at b. */
static void decode_scalar(uint32_t t, const uint8_t *b, heed_gguf_value *out) {
  out->type = (heed_gguf_vtype)t;
  uint64_t raw = le(b, vtype_bytes(t));
  switch (t) {
  case HEED_GGUF_INT8: out->v.i = (int8_t)(uint8_t)raw; break;
  case HEED_GGUF_INT16: out->v.i = (int16_t)(uint16_t)raw; break;
  case HEED_GGUF_INT32: out->v.i = (int32_t)(uint32_t)raw; break;
  case HEED_GGUF_INT64: out->v.i = (int64_t)raw; break;
  case HEED_GGUF_BOOL: out->v.u = raw != 0; break; /* ggml writes 0 or 1; any other byte reads as true */
  case HEED_GGUF_FLOAT32: {
    uint32_t u = (uint32_t)raw;
    float f;
    memcpy(&f, &u, 4);
    out->v.f = f;
    break;
  }
  case HEED_GGUF_FLOAT64: {
    double d;
    memcpy(&d, &raw, 8);
    out->v.f = d;
    break;
  }
  default: out->v.u = raw; break; /* the unsigned types */
  }
}

/* ---------- messages ---------- */

/* A name from the file, printable: control bytes become '?', at most cap-1 bytes. */
static void printable(char *dst, size_t cap, const uint8_t *s, uint64_t len) {
  size_t n = len < cap - 1 ? (size_t)len : cap - 1;
  for (size_t i = 0; i < n; i++) dst[i] = s[i] < 0x20 || s[i] == 0x7f ? '?' : (char)s[i];
  dst[n] = '\0';
  if (len > n && cap > 4) memcpy(dst + cap - 4, "...", 4);
}

/* The parse of one part: a cursor and where it is, for messages. */
typedef struct rd {
  gg_part *p;
  uint64_t off;
  heed_error *err;
  char where[320];                 /* "key 'general.name'", "tensor 'output.weight'" */
  int depth;                       /* inside this many arrays */
  uint64_t idx[HEED_GGUF_MAX_DEPTH]; /* the element index at each depth */
} rd;

static heed_status fail_at(rd *r, uint64_t at, heed_status st, const char *fmt, ...) HEED_PRINTF(4, 5);
static heed_status fail_at(rd *r, uint64_t at, heed_status st, const char *fmt, ...) {
  char msg[640], el[200] = "";
  va_list ap;
  va_start(ap, fmt);
  heed_vfmt(msg, sizeof msg, fmt, ap);
  va_end(ap);
  if (r->depth == 1) {
    snprintf(el, sizeof el, " element %llu", (unsigned long long)r->idx[0]);
  } else if (r->depth > 1) {
    size_t n = (size_t)snprintf(el, sizeof el, " element ");
    for (int d = 0; d < r->depth && n < sizeof el; d++)
      n += (size_t)snprintf(el + n, sizeof el - n, "[%llu]", (unsigned long long)r->idx[d]);
  }
  return heed_err_set(r->err, st, "%s: %s%s at byte %llu: %s", r->p->path, r->where, el, (unsigned long long)at, msg);
}

static heed_status nomem(rd *r, const char *what) {
  return fail_at(r, r->off, HEED_E_NOMEM, "no memory for %s", what);
}

/* ---------- growing tables (the counts they hold are bounded by file bytes) ---------- */

static int grow(void **ptr, uint64_t *cap, uint64_t need, size_t elem) {
  if (need <= *cap) return 0;
  uint64_t nc = *cap ? *cap : 16;
  while (nc < need) {
    if (nc > UINT64_MAX / 2) return -1;
    nc *= 2;
  }
  if (nc > SIZE_MAX / elem) return -1;
  void *q = realloc(*ptr, (size_t)(nc * elem));
  if (!q) return -1;
  *ptr = q;
  *cap = nc;
  return 0;
}

/* ---------- the cursor ---------- */

static uint64_t left(const rd *r) { return r->p->size - r->off; }

static heed_status need(rd *r, uint64_t n, const char *what) {
  if (left(r) < n)
    return fail_at(r, r->off, HEED_E_INVALID, "the file ends inside %s (%llu bytes needed, %llu left)", what,
                   (unsigned long long)n, (unsigned long long)left(r));
  return HEED_OK;
}

static heed_status get_u32(rd *r, uint32_t *v, const char *what) {
  heed_status st = need(r, 4, what);
  if (st) return st;
  *v = (uint32_t)le(r->p->base + r->off, 4);
  r->off += 4;
  return HEED_OK;
}

static heed_status get_u64(rd *r, uint64_t *v, const char *what) {
  heed_status st = need(r, 8, what);
  if (st) return st;
  *v = le(r->p->base + r->off, 8);
  r->off += 8;
  return HEED_OK;
}

/* A string: *at is where its bytes start, *len how many. */
static heed_status get_str(rd *r, uint64_t *at, uint64_t *len, const char *what) {
  uint64_t start = r->off;
  heed_status st = get_u64(r, len, what);
  if (st) return st;
  if (*len > left(r))
    return fail_at(r, start, HEED_E_INVALID, "%s of %llu bytes runs past the end of the file (%llu bytes left)", what,
                   (unsigned long long)*len, (unsigned long long)left(r));
  *at = r->off;
  r->off += *len;
  return HEED_OK;
}

/* ---------- values ---------- */

/* The array whose element type and count start at r->off, into node slot
 * `slot` (already reserved). depth: how many arrays enclose it, itself included. */
static heed_status parse_array(rd *r, uint64_t slot, int depth) {
  gg_part *p = r->p;
  uint64_t start = r->off, n;
  uint32_t elem;
  heed_status st;
  if (depth > HEED_GGUF_MAX_DEPTH)
    return fail_at(r, start, HEED_E_UNSUPPORTED, "arrays nested %d deep; heed reads at most %d levels", depth,
                   HEED_GGUF_MAX_DEPTH);
  if ((st = get_u32(r, &elem, "an array's element type")) || (st = get_u64(r, &n, "an array's element count"))) return st;
  if (!vtype_known(elem))
    return fail_at(r, start, HEED_E_INVALID, "array element type %u; accepted: 0..12 (u8 i8 u16 i16 u32 i32 f32 bool str arr u64 i64 f64)",
                   elem);
  uint64_t min = vtype_min_bytes(elem);
  if (n > left(r) / min) {
    char need_s[64];
    if (n <= UINT64_MAX / min) snprintf(need_s, sizeof need_s, "%llu bytes", (unsigned long long)(n * min));
    else snprintf(need_s, sizeof need_s, "more than 2^64 bytes");
    return fail_at(r, start, HEED_E_INVALID, "an array of %llu %s elements needs at least %s (%llu per element); the file "
                   "has %llu bytes left", (unsigned long long)n, heed_gguf_vtype_name((int)elem), need_s,
                   (unsigned long long)min, (unsigned long long)left(r));
  }
  uint64_t at = r->off, index = 0;
  if (elem == HEED_GGUF_STRING) {
    index = p->n_str;
    if (grow((void **)&p->str_at, &p->cap_str, p->n_str + n, sizeof *p->str_at)) return nomem(r, "a string array's index");
    p->n_str += n;
    for (uint64_t i = 0; i < n; i++) {
      r->idx[depth - 1] = i;
      r->depth = depth;
      p->str_at[index + i] = r->off;
      uint64_t sat, slen;
      if ((st = get_str(r, &sat, &slen, "a string"))) return st;
    }
  } else if (elem == HEED_GGUF_ARRAY) {
    index = p->n_nodes; /* the children are consecutive nodes; their own children come after them */
    if (grow((void **)&p->nodes, &p->cap_nodes, p->n_nodes + n, sizeof *p->nodes)) return nomem(r, "nested arrays");
    p->n_nodes += n;
    for (uint64_t i = 0; i < n; i++) {
      r->idx[depth - 1] = i;
      r->depth = depth;
      if ((st = parse_array(r, index + i, depth + 1))) return st;
    }
  } else {
    r->off += n * min; /* n * min <= left: checked above */
  }
  r->depth = depth - 1;
  gg_node *nd = &p->nodes[slot]; /* only now: the recursion may have moved the table */
  nd->elem = (heed_gguf_vtype)elem;
  nd->n = n;
  nd->at = at;
  nd->index = index;
  return HEED_OK;
}

/* A key's value of type t. */
static heed_status parse_value(rd *r, uint32_t t, uint64_t type_at, heed_gguf_value *out) {
  gg_part *p = r->p;
  heed_status st;
  memset(out, 0, sizeof *out);
  if (!vtype_known(t))
    return fail_at(r, type_at, HEED_E_INVALID, "value type %u; accepted: 0..12 (u8 i8 u16 i16 u32 i32 f32 bool str arr u64 i64 f64)", t);
  if (t == HEED_GGUF_STRING) {
    uint64_t at, len;
    if ((st = get_str(r, &at, &len, "a string value"))) return st;
    out->type = HEED_GGUF_STRING;
    out->v.str.ptr = (const char *)p->base + at;
    out->v.str.len = len;
    return HEED_OK;
  }
  if (t == HEED_GGUF_ARRAY) {
    uint64_t slot = p->n_nodes;
    if (grow((void **)&p->nodes, &p->cap_nodes, p->n_nodes + 1, sizeof *p->nodes)) return nomem(r, "an array");
    p->n_nodes++;
    if ((st = parse_array(r, slot, 1))) return st;
    out->type = HEED_GGUF_ARRAY;
    out->v.arr.elem_type = p->nodes[slot].elem;
    out->v.arr.n = p->nodes[slot].n;
    out->v.arr.node = slot;
    return HEED_OK;
  }
  if ((st = need(r, vtype_bytes(t), "a value"))) return st;
  decode_scalar(t, p->base + r->off, out);
  r->off += vtype_bytes(t);
  return HEED_OK;
}

/* ---------- hashing (keys and tensor names) ---------- */

static uint64_t fnv1a(const void *s, uint64_t n) {
  const uint8_t *b = s;
  uint64_t h = 0xcbf29ce484222325ull;
  for (uint64_t i = 0; i < n; i++) h = (h ^ b[i]) * 0x100000001b3ull;
  return h;
}

static uint64_t hash_cap_for(uint64_t n) {
  uint64_t c = 16;
  while (c < 2 * n) c *= 2;
  return c;
}

static const uint8_t *kv_key(const gg_part *p, uint64_t i) { return p->base + p->kv[i].key_at; }

/* Index of the key in part p, or -1. */
static int64_t part_find(const gg_part *p, const void *key, uint64_t len) {
  if (!p->kv_hash_cap) return -1;
  uint64_t m = p->kv_hash_cap - 1;
  for (uint64_t h = fnv1a(key, len) & m;; h = (h + 1) & m) {
    uint32_t e = p->kv_hash[h];
    if (!e) return -1;
    if (p->kv[e - 1].key_len == len && memcmp(kv_key(p, e - 1), key, (size_t)len) == 0) return e - 1;
  }
}

/* ---------- one part ---------- */

static heed_status parse_kvs(rd *r, uint64_t n_kv) {
  gg_part *p = r->p;
  heed_status st;
  for (uint64_t i = 0; i < n_kv; i++) {
    uint64_t rec = r->off, kat, klen;
    uint32_t t;
    snprintf(r->where, sizeof r->where, "key %llu of %llu", (unsigned long long)i, (unsigned long long)n_kv);
    if ((st = get_str(r, &kat, &klen, "a key"))) return st;
    char name[256];
    printable(name, sizeof name, p->base + kat, klen);
    snprintf(r->where, sizeof r->where, "key '%s'", name);
    uint64_t type_at = r->off;
    if ((st = get_u32(r, &t, "a value type"))) return st;
    if (grow((void **)&p->kv, &p->cap_kv, p->n_kv + 1, sizeof *p->kv)) return nomem(r, "the keys");
    gg_kv *kv = &p->kv[p->n_kv];
    kv->rec_at = rec;
    kv->key_at = kat;
    kv->key_len = klen;
    if ((st = parse_value(r, t, type_at, &p->kv[p->n_kv].val))) return st;
    p->n_kv++;
  }
  /* The index, and duplicates (the second entry is the one named). */
  p->kv_hash_cap = hash_cap_for(p->n_kv);
  if (!(p->kv_hash = calloc((size_t)p->kv_hash_cap, sizeof *p->kv_hash))) return nomem(r, "the key index");
  uint64_t m = p->kv_hash_cap - 1;
  for (uint64_t i = 0; i < p->n_kv; i++) {
    uint64_t h = fnv1a(kv_key(p, i), p->kv[i].key_len) & m;
    for (;; h = (h + 1) & m) {
      uint32_t e = p->kv_hash[h];
      if (!e) break;
      if (p->kv[e - 1].key_len == p->kv[i].key_len && memcmp(kv_key(p, e - 1), kv_key(p, i), (size_t)p->kv[i].key_len) == 0) {
        char name[256];
        printable(name, sizeof name, kv_key(p, i), p->kv[i].key_len);
        snprintf(r->where, sizeof r->where, "key '%s'", name);
        return fail_at(r, p->kv[i].rec_at, HEED_E_INVALID, "duplicate key (first at byte %llu)",
                       (unsigned long long)p->kv[e - 1].rec_at);
      }
    }
    p->kv_hash[h] = (uint32_t)(i + 1);
  }
  return HEED_OK;
}

/* general.alignment: a u32, a nonzero power of two (as ggml requires). */
static heed_status read_alignment(rd *r) {
  gg_part *p = r->p;
  p->alignment = HEED_GGUF_DEFAULT_ALIGNMENT;
  int64_t i = part_find(p, "general.alignment", 17);
  if (i < 0) return HEED_OK;
  const gg_kv *kv = &p->kv[i];
  snprintf(r->where, sizeof r->where, "key 'general.alignment'");
  if (kv->val.type != HEED_GGUF_UINT32)
    return fail_at(r, kv->rec_at, HEED_E_INVALID, "type %s; accepted: u32", heed_gguf_vtype_name(kv->val.type));
  uint64_t a = kv->val.v.u;
  if (a == 0 || (a & (a - 1)))
    return fail_at(r, kv->rec_at, HEED_E_INVALID, "alignment %llu; accepted: a power of two (1, 2, 4, ... 2^31)",
                   (unsigned long long)a);
  p->alignment = (uint32_t)a;
  return HEED_OK;
}

static heed_status parse_tensor_infos(rd *r, uint64_t n_tensors) {
  gg_part *p = r->p;
  heed_status st;
  for (uint64_t i = 0; i < n_tensors; i++) {
    uint64_t rec = r->off, nat, nlen;
    snprintf(r->where, sizeof r->where, "tensor %llu of %llu", (unsigned long long)i, (unsigned long long)n_tensors);
    if ((st = get_str(r, &nat, &nlen, "a tensor name"))) return st;
    char name[256];
    printable(name, sizeof name, p->base + nat, nlen);
    snprintf(r->where, sizeof r->where, "tensor '%s'", name);
    if (memchr(p->base + nat, 0, (size_t)nlen))
      return fail_at(r, rec, HEED_E_INVALID, "the name holds a NUL byte");
    if (grow((void **)&p->tensors, &p->cap_tensors, p->n_tensors + 1, sizeof *p->tensors) ||
        grow((void **)&p->tensor_rec, &p->cap_rec, p->n_tensors + 1, sizeof *p->tensor_rec))
      return nomem(r, "the tensors");
    heed_gguf_tensor t;
    memset(&t, 0, sizeof t);
    uint64_t at = r->off;
    if ((st = get_u32(r, &t.n_dims, "n_dims"))) return st;
    if (t.n_dims < 1 || t.n_dims > HEED_GGUF_MAX_DIMS)
      return fail_at(r, at, HEED_E_INVALID, "n_dims=%u; accepted: 1..%d", t.n_dims, HEED_GGUF_MAX_DIMS);
    uint64_t n = 1;
    for (uint32_t d = 0; d < HEED_GGUF_MAX_DIMS; d++) {
      t.ne[d] = 1;
      if (d >= t.n_dims) continue;
      at = r->off;
      if ((st = get_u64(r, &t.ne[d], "a dimension"))) return st;
      /* ggml keeps ne in int64; an empty tensor has no use in a model */
      if (t.ne[d] < 1 || t.ne[d] > (uint64_t)INT64_MAX)
        return fail_at(r, at, HEED_E_INVALID, "ne[%u]=%llu; accepted: 1..2^63-1", d, (unsigned long long)t.ne[d]);
      if (__builtin_mul_overflow(n, t.ne[d], &n) || n > (uint64_t)INT64_MAX)
        return fail_at(r, at, HEED_E_INVALID, "ne[%u]=%llu makes more than 2^63-1 elements", d, (unsigned long long)t.ne[d]);
    }
    t.n_elems = n;
    uint32_t type, be, bb;
    at = r->off;
    if ((st = get_u32(r, &type, "a tensor type"))) return st;
    if (!heed_ggml_type_info((int)type, &be, &bb)) {
      const char *tn = heed_ggml_type_name((int)type);
      if (tn)
        return fail_at(r, at, HEED_E_UNSUPPORTED, "type %s (%u) is not one heed reads; accepted: %s", tn, type,
                       readable_types());
      return fail_at(r, at, HEED_E_INVALID, "type %u is no ggml type; accepted: %s", type, readable_types());
    }
    t.type = (heed_ggml_type)type;
    if (t.ne[0] % be)
      return fail_at(r, at, HEED_E_INVALID, "ne[0]=%llu is not a multiple of %s's block of %u elements",
                     (unsigned long long)t.ne[0], heed_ggml_type_name((int)type), be);
    if (__builtin_mul_overflow(n / be, (uint64_t)bb, &t.bytes))
      return fail_at(r, at, HEED_E_INVALID, "%llu elements of %s take more than 2^64 bytes", (unsigned long long)n,
                     heed_ggml_type_name((int)type));
    if ((st = get_u64(r, &t.offset, "a tensor offset"))) return st;
    t.name = NULL; /* set once the names are copied */
    p->tensors[p->n_tensors] = t;
    p->tensor_rec[p->n_tensors] = rec;
    p->n_tensors++;
  }
  return HEED_OK;
}

/* The name of tensor i of p as the file holds it (its info starts with the name). */
static void tensor_where(rd *r, uint64_t i) {
  const gg_part *p = r->p;
  uint64_t rec = p->tensor_rec[i];
  char name[256];
  printable(name, sizeof name, p->base + rec + 8, le(p->base + rec, 8));
  snprintf(r->where, sizeof r->where, "tensor '%s'", name);
}

typedef struct off_ix {
  uint64_t off, i;
} off_ix;

static int cmp_off(const void *a, const void *b) {
  const off_ix *x = a, *y = b;
  return x->off < y->off ? -1 : x->off > y->off ? 1 : (x->i > y->i) - (x->i < y->i);
}

/* The data section and each tensor's place in it: aligned, inside the file, no overlap. */
static heed_status place_tensors(rd *r) {
  gg_part *p = r->p;
  const uint64_t a = p->alignment;
  p->header_end = r->off;
  int has_key = part_find(p, "general.alignment", 17) >= 0;
  if (has_key) snprintf(r->where, sizeof r->where, "key 'general.alignment'");
  else snprintf(r->where, sizeof r->where, "header");
  uint64_t ds;
  if (__builtin_add_overflow(p->header_end, a - 1, &ds))
    return fail_at(r, p->header_end, HEED_E_INVALID, "aligning the header's end to %llu overflows", (unsigned long long)a);
  p->data_start = ds & ~(a - 1);
  if (!p->n_tensors) return HEED_OK;
  if (p->data_start > p->size)
    return fail_at(r, p->header_end, HEED_E_INVALID,
                   "the data section would start at byte %llu (the header's end aligned to %llu), past the end of the "
                   "file (%llu bytes)", (unsigned long long)p->data_start, (unsigned long long)a, (unsigned long long)p->size);
  const uint64_t room = p->size - p->data_start;
  for (uint64_t i = 0; i < p->n_tensors; i++) {
    const heed_gguf_tensor *t = &p->tensors[i];
    if (t->offset % a) {
      tensor_where(r, i);
      return fail_at(r, p->tensor_rec[i], HEED_E_INVALID, "data offset %llu is not a multiple of the alignment %llu",
                     (unsigned long long)t->offset, (unsigned long long)a);
    }
    if (t->offset > room || t->bytes > room - t->offset) {
      tensor_where(r, i);
      return fail_at(r, p->tensor_rec[i], HEED_E_INVALID,
                     "data [%llu, +%llu bytes) runs past the end of the file (the data section, from byte %llu, holds "
                     "%llu bytes)", (unsigned long long)t->offset, (unsigned long long)t->bytes,
                     (unsigned long long)p->data_start, (unsigned long long)room);
    }
  }
  off_ix *ord = malloc((size_t)p->n_tensors * sizeof *ord);
  if (!ord) return nomem(r, "sorting the tensors");
  for (uint64_t i = 0; i < p->n_tensors; i++) ord[i] = (off_ix){p->tensors[i].offset, i};
  qsort(ord, (size_t)p->n_tensors, sizeof *ord, cmp_off);
  for (uint64_t k = 1; k < p->n_tensors; k++) {
    const heed_gguf_tensor *prev = &p->tensors[ord[k - 1].i], *cur = &p->tensors[ord[k].i];
    if (prev->offset + prev->bytes > cur->offset) { /* no overflow: both lie inside the file */
      char other[256];
      tensor_where(r, ord[k - 1].i);
      heed_strlcpy(other, r->where, sizeof other);
      tensor_where(r, ord[k].i);
      uint64_t rec = p->tensor_rec[ord[k].i];
      free(ord);
      return fail_at(r, rec, HEED_E_INVALID, "data [%llu, +%llu bytes) overlaps the data of %s, [%llu, +%llu bytes)",
                     (unsigned long long)cur->offset, (unsigned long long)cur->bytes, other,
                     (unsigned long long)prev->offset, (unsigned long long)prev->bytes);
    }
  }
  free(ord);
  return HEED_OK;
}

/* The names, copied once (each NUL-terminated), and each tensor's data pointer. */
static heed_status finish_tensors(rd *r) {
  gg_part *p = r->p;
  uint64_t total = 0;
  for (uint64_t i = 0; i < p->n_tensors; i++) total += le(p->base + p->tensor_rec[i], 8) + 1; /* <= header bytes */
  if (total > SIZE_MAX || !(p->names = malloc(total ? (size_t)total : 1))) return nomem(r, "the tensor names");
  uint64_t at = 0;
  for (uint64_t i = 0; i < p->n_tensors; i++) {
    uint64_t rec = p->tensor_rec[i], len = le(p->base + rec, 8);
    memcpy(p->names + at, p->base + rec + 8, (size_t)len);
    p->names[at + len] = '\0';
    p->tensors[i].name = p->names + at;
    p->tensors[i].data = p->base + p->data_start + p->tensors[i].offset;
    at += len + 1;
  }
  return HEED_OK;
}

static heed_status parse_part(gg_part *p, heed_error *err) {
  rd r;
  memset(&r, 0, sizeof r);
  r.p = p;
  r.err = err;
  snprintf(r.where, sizeof r.where, "header");
  heed_status st = need(&r, 4, "the magic");
  if (st) return st;
  const uint8_t *m = p->base;
  if (memcmp(m, "GGUF", 4) != 0)
    return fail_at(&r, 0, HEED_E_INVALID, "magic %02x %02x %02x %02x; accepted: 47 47 55 46 ('GGUF'): not a GGUF file", m[0],
                   m[1], m[2], m[3]);
  r.off = 4;
  if ((st = get_u32(&r, &p->version, "the version"))) return st;
  if (p->version == 1)
    return fail_at(&r, 4, HEED_E_UNSUPPORTED, "GGUF version 1 is not supported (accepted: 2, 3); convert the model again");
  if (p->version != 2 && p->version != 3) {
    if ((p->version & 0xffff) == 0)
      return fail_at(&r, 4, HEED_E_UNSUPPORTED, "version field reads 0x%08x: a big-endian GGUF (version %u byte-swapped); "
                     "big-endian files are not supported, heed reads little-endian GGUF", p->version,
                     (unsigned)__builtin_bswap32(p->version));
    return fail_at(&r, 4, HEED_E_UNSUPPORTED, "GGUF version %u; accepted: 2, 3", p->version);
  }
  uint64_t n_tensors, n_kv;
  if ((st = get_u64(&r, &n_tensors, "the tensor count")) || (st = get_u64(&r, &n_kv, "the key count"))) return st;
  /* A key takes at least 13 bytes (empty key, type, a u8), a tensor info 32
   * (empty name, n_dims, one dimension, type, offset). */
  if (n_kv > left(&r) / 13 || n_kv >= UINT32_MAX)
    return fail_at(&r, 16, HEED_E_INVALID, "%llu keys: at 13 bytes or more each, the %llu bytes left hold at most %llu",
                   (unsigned long long)n_kv, (unsigned long long)left(&r), (unsigned long long)(left(&r) / 13));
  if (n_tensors > (left(&r) - n_kv * 13) / 32 || n_tensors >= UINT32_MAX)
    return fail_at(&r, 8, HEED_E_INVALID, "%llu tensors: at 32 bytes or more each, the %llu bytes left after %llu keys hold at most %llu",
                   (unsigned long long)n_tensors, (unsigned long long)left(&r), (unsigned long long)n_kv,
                   (unsigned long long)((left(&r) - n_kv * 13) / 32));
  if ((st = parse_kvs(&r, n_kv)) || (st = read_alignment(&r)) || (st = parse_tensor_infos(&r, n_tensors)) ||
      (st = place_tensors(&r)) || (st = finish_tensors(&r)))
    return st;
  return HEED_OK;
}

/* ---------- files and split sets ---------- */

/* Reads fd's size bytes into anonymous memory on huge pages (HEED_GGUF_LOAD). */
static heed_status load_file(gg_part *p, int fd, size_t size, const char *path, heed_error *err) {
  const size_t huge = (size_t)2 << 20, len = (size + huge - 1) / huge * huge + huge;
  void *m = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (m == MAP_FAILED)
    return heed_err_set(err, HEED_E_NOMEM, "%s: no memory to load %zu bytes: %s", path, size, strerror(errno));
  uint8_t *a = (uint8_t *)(((uintptr_t)m + huge - 1) & ~(uintptr_t)(huge - 1));
  (void)madvise(a, len - (size_t)(a - (uint8_t *)m), MADV_HUGEPAGE); /* advice: without THP it still works */
  for (size_t off = 0; off < size;) {
    ssize_t r = pread(fd, a + off, size - off, (off_t)off);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) {
      heed_status st = heed_err_set(err, HEED_E_IO, "%s: read failed at byte %zu of %zu: %s", path, off, size,
                                    r < 0 ? strerror(errno) : "the file got shorter");
      munmap(m, len);
      return st;
    }
    off += (size_t)r;
  }
  p->base = a;
  p->size = (uint64_t)size;
  p->mapped = 1;
  p->map_addr = m;
  p->map_len = len;
  return HEED_OK;
}

static heed_status map_file(gg_part *p, const char *path, unsigned flags, heed_error *err) {
  if (!(p->path = strdup(path))) return heed_err_set(err, HEED_E_NOMEM, "no memory for a path");
  /* O_NONBLOCK: a FIFO would otherwise block the open until a writer came (it is refused below) */
  int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0)
    return heed_err_set(err, errno == ENOENT ? HEED_E_NOT_FOUND : HEED_E_IO, "%s: cannot open: %s", path, strerror(errno));
  struct stat sb;
  heed_status st = HEED_OK;
  if (fstat(fd, &sb) != 0) {
    st = heed_err_set(err, HEED_E_IO, "%s: cannot stat: %s", path, strerror(errno));
  } else if (!S_ISREG(sb.st_mode)) {
    st = heed_err_set(err, HEED_E_INVALID, "%s: not a regular file", path);
  } else if (sb.st_size == 0) {
    st = heed_err_set(err, HEED_E_INVALID, "%s: empty file; a GGUF file starts with 'GGUF' and a 24-byte header", path);
  } else if ((uint64_t)sb.st_size > SIZE_MAX) {
    st = heed_err_set(err, HEED_E_UNSUPPORTED, "%s: %llu bytes do not fit this machine's address space", path,
                      (unsigned long long)sb.st_size);
  } else if (flags & HEED_GGUF_LOAD) {
    st = load_file(p, fd, (size_t)sb.st_size, path, err);
  } else {
    void *m = mmap(NULL, (size_t)sb.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (m == MAP_FAILED) {
      st = heed_err_set(err, errno == ENOMEM ? HEED_E_NOMEM : HEED_E_IO, "%s: cannot map %llu bytes: %s", path,
                        (unsigned long long)sb.st_size, strerror(errno));
    } else {
      p->base = m;
      p->size = (uint64_t)sb.st_size;
      p->mapped = 1;
      p->map_addr = m;
      p->map_len = (size_t)sb.st_size;
    }
  }
  close(fd);
  return st;
}

/* "name-00002-of-00005.gguf": *no = 2 and *count = 5 (1-based, as the names
 * are), prefix_len the bytes before "-00002". 0 when path is no split name. */
static int split_name(const char *path, size_t *prefix_len, unsigned *no, unsigned *count) {
  static const char tail[] = "-NNNNN-of-MMMMM.gguf";
  size_t n = strlen(path), t = sizeof tail - 1;
  if (n < t) return 0;
  const char *s = path + n - t;
  unsigned a = 0, b = 0;
  for (size_t i = 0; i < t; i++) {
    char c = s[i], want = tail[i];
    if (want == 'N' || want == 'M') {
      if (c < '0' || c > '9') return 0;
      if (want == 'N') a = a * 10 + (unsigned)(c - '0');
      else b = b * 10 + (unsigned)(c - '0');
    } else if (c != want) {
      return 0;
    }
  }
  if (a < 1 || b < 1 || a > b) return 0;
  *prefix_len = n - t;
  *no = a;
  *count = b;
  return 1;
}

/* An integer key of part p: 1 found (*v set), 0 absent, -1 not a non-negative integer. */
static int part_uint(const gg_part *p, const char *key, uint64_t *v, uint64_t *rec) {
  int64_t i = part_find(p, key, strlen(key));
  if (i < 0) return 0;
  const heed_gguf_value *x = &p->kv[i].val;
  *rec = p->kv[i].rec_at;
  switch (x->type) {
  case HEED_GGUF_UINT8: case HEED_GGUF_UINT16: case HEED_GGUF_UINT32: case HEED_GGUF_UINT64:
    *v = x->v.u;
    return 1;
  case HEED_GGUF_INT8: case HEED_GGUF_INT16: case HEED_GGUF_INT32: case HEED_GGUF_INT64:
    if (x->v.i < 0) return -1;
    *v = (uint64_t)x->v.i;
    return 1;
  default:
    return -1;
  }
}

/* Part i of a split set of n, opened as part of a set (want_set) or alone. */
static heed_status check_split_keys(const gg_part *p, uint32_t i, uint32_t n, int want_set, uint64_t n_tensors_total,
                                    heed_error *err) {
  static const char *const keys[3] = {"split.no", "split.count", "split.tensors.count"};
  uint64_t v[3], rec[3];
  for (int k = 0; k < 3; k++) {
    int f = part_uint(p, keys[k], &v[k], &rec[k]);
    if (f < 0)
      return heed_err_set(err, HEED_E_INVALID, "%s: key '%s' at byte %llu: not a non-negative integer", p->path, keys[k],
                          (unsigned long long)rec[k]);
    if (!f) {
      if (!want_set) return HEED_OK; /* a single file need not say so */
      return heed_err_set(err, HEED_E_INVALID, "%s: key '%s' is absent; every part of a split model (%u parts, from its "
                          "name) has split.no, split.count and split.tensors.count", p->path, keys[k], n);
    }
  }
  if (!want_set) {
    if (v[1] > 1)
      return heed_err_set(err, HEED_E_INVALID, "%s: key 'split.count' at byte %llu: the file is part %llu of a split model of "
                          "%llu parts; open it by its split name (name-%05llu-of-%05llu.gguf) with its parts beside it",
                          p->path, (unsigned long long)rec[1], (unsigned long long)v[0] + 1, (unsigned long long)v[1],
                          (unsigned long long)v[0] + 1, (unsigned long long)v[1]);
    return HEED_OK;
  }
  if (v[0] != i)
    return heed_err_set(err, HEED_E_INVALID, "%s: key 'split.no' at byte %llu: %llu; accepted: %u (the file's name says part %u)",
                        p->path, (unsigned long long)rec[0], (unsigned long long)v[0], i, i + 1);
  if (v[1] != n)
    return heed_err_set(err, HEED_E_INVALID, "%s: key 'split.count' at byte %llu: %llu; accepted: %u (from the file's name)",
                        p->path, (unsigned long long)rec[1], (unsigned long long)v[1], n);
  if (v[2] != n_tensors_total)
    return heed_err_set(err, HEED_E_INVALID, "%s: key 'split.tensors.count' at byte %llu: %llu; the %u parts hold %llu tensors",
                        p->path, (unsigned long long)rec[2], (unsigned long long)v[2], n, (unsigned long long)n_tensors_total);
  return HEED_OK;
}

static void free_part(gg_part *p) {
  if (p->mapped && p->map_addr) munmap(p->map_addr, p->map_len);
  free(p->kv);
  free(p->kv_hash);
  free(p->nodes);
  free(p->str_at);
  free(p->tensors);
  free(p->tensor_rec);
  free(p->names);
  free(p->path);
}

void heed_gguf_close(heed_gguf *g) {
  if (!g) return;
  for (uint32_t i = 0; i < g->n_parts; i++) free_part(&g->parts[i]);
  free(g->parts);
  free(g->tensors);
  free(g->t_hash);
  pthread_mutex_destroy(&g->mu);
  free(g);
}

static heed_gguf *alloc_gguf(uint32_t n_parts) {
  heed_gguf *g = calloc(1, sizeof *g);
  if (!g) return NULL;
  if (!(g->parts = calloc(n_parts, sizeof *g->parts))) {
    free(g);
    return NULL;
  }
  g->n_parts = n_parts;
  pthread_mutex_init(&g->mu, NULL);
  return g;
}

/* The whole model: split keys, every part's tensors in one table, unique names. */
static heed_status finish(heed_gguf *g, int want_set, heed_error *err) {
  uint64_t total = 0;
  for (uint32_t i = 0; i < g->n_parts; i++) {
    total += g->parts[i].n_tensors; /* each < 2^32 */
    g->file_bytes += g->parts[i].size;
  }
  for (uint32_t i = 0; i < g->n_parts; i++) {
    heed_status st = check_split_keys(&g->parts[i], i, g->n_parts, want_set, total, err);
    if (st) return st;
  }
  if (total >= UINT32_MAX) /* the name index holds 32-bit entries */
    return heed_err_set(err, HEED_E_UNSUPPORTED, "%s: %llu tensors in %u parts; heed reads fewer than 2^32-1",
                        g->parts[0].path, (unsigned long long)total, g->n_parts);
  if (total > SIZE_MAX / sizeof *g->tensors || !(g->tensors = malloc(total ? (size_t)total * sizeof *g->tensors : 1)))
    return heed_err_set(err, HEED_E_NOMEM, "no memory for %llu tensors", (unsigned long long)total);
  g->n_tensors = 0;
  for (uint32_t i = 0; i < g->n_parts; i++)
    for (uint64_t k = 0; k < g->parts[i].n_tensors; k++) {
      g->tensors[g->n_tensors] = g->parts[i].tensors[k];
      g->tensors[g->n_tensors++].file = i;
    }
  g->t_hash_cap = hash_cap_for(total);
  if (!(g->t_hash = calloc((size_t)g->t_hash_cap, sizeof *g->t_hash)))
    return heed_err_set(err, HEED_E_NOMEM, "no memory for the tensor index");
  uint64_t m = g->t_hash_cap - 1;
  for (uint64_t i = 0; i < total; i++) {
    const char *name = g->tensors[i].name;
    uint64_t h = fnv1a(name, strlen(name)) & m;
    for (;; h = (h + 1) & m) {
      uint32_t e = g->t_hash[h];
      if (!e) break;
      if (strcmp(g->tensors[e - 1].name, name) == 0) {
        const heed_gguf_tensor *a = &g->tensors[e - 1], *b = &g->tensors[i];
        char shown[256];
        printable(shown, sizeof shown, (const uint8_t *)name, strlen(name));
        return heed_err_set(err, HEED_E_INVALID, "%s: tensor '%s': duplicate name (first in %s)", g->parts[b->file].path,
                            shown, g->parts[a->file].path);
      }
    }
    g->t_hash[h] = (uint32_t)(i + 1);
  }
  return HEED_OK;
}

heed_status heed_gguf_open_memory(const void *data, size_t size, heed_gguf **out, heed_error *err) {
  if (!out) return heed_err_set(err, HEED_E_INVALID, "heed_gguf_open_memory: out is NULL");
  *out = NULL;
  if (!data && size) return heed_err_set(err, HEED_E_INVALID, "heed_gguf_open_memory: data is NULL");
  heed_gguf *g = alloc_gguf(1);
  if (!g) return heed_err_set(err, HEED_E_NOMEM, "no memory for a GGUF reader");
  gg_part *p = &g->parts[0];
  if (!(p->path = strdup("<memory>"))) {
    heed_gguf_close(g);
    return heed_err_set(err, HEED_E_NOMEM, "no memory for a GGUF reader");
  }
  p->base = data ? data : (const uint8_t *)"";
  p->size = size;
  heed_status st = parse_part(p, err);
  if (st == HEED_OK) st = finish(g, 0, err);
  if (st != HEED_OK) {
    heed_gguf_close(g);
    return st;
  }
  heed_err_clear(err);
  *out = g;
  return HEED_OK;
}

heed_status heed_gguf_open(const char *path, heed_gguf **out, heed_error *err) {
  return heed_gguf_open_flags(path, 0, out, err);
}

heed_status heed_gguf_open_flags(const char *path, unsigned flags, heed_gguf **out, heed_error *err) {
  if (!out) return heed_err_set(err, HEED_E_INVALID, "heed_gguf_open: out is NULL");
  *out = NULL;
  if (flags & ~HEED_GGUF_LOAD)
    return heed_err_set(err, HEED_E_INVALID, "heed_gguf_open: flags 0x%x; accepted: HEED_GGUF_LOAD (0x1)", flags);
  if (!path) return heed_err_set(err, HEED_E_INVALID, "heed_gguf_open: path is NULL");
  size_t prefix;
  unsigned no, count;
  int set = split_name(path, &prefix, &no, &count) && count > 1;
  heed_gguf *g = alloc_gguf(set ? count : 1);
  if (!g) return heed_err_set(err, HEED_E_NOMEM, "no memory for a GGUF reader");
  heed_status st = HEED_OK;
  for (uint32_t i = 0; i < g->n_parts && st == HEED_OK; i++) {
    char buf[4096];
    const char *pp = path;
    if (set) {
      if (heed_fmt(buf, sizeof buf, "%.*s-%05u-of-%05u.gguf", (int)prefix, path, i + 1, count)) {
        st = heed_err_set(err, HEED_E_INVALID, "%s: the parts' names are too long", path);
        break;
      }
      pp = buf;
    }
    st = map_file(&g->parts[i], pp, flags, err);
    if (st != HEED_OK && set && err) /* say which model the missing part belongs to */
      heed_err_set(err, st, "part %u of the %u of split model %s: %s", i + 1, count, path, err->msg);
    if (st == HEED_OK) st = parse_part(&g->parts[i], err);
  }
  if (st == HEED_OK) st = finish(g, set, err);
  if (st != HEED_OK) {
    heed_gguf_close(g);
    return st;
  }
  heed_err_clear(err);
  *out = g;
  return HEED_OK;
}

/* ---------- reading ---------- */

/* Records a refusal of a const getter (the lock: concurrent readers may fail at once). */
static heed_status g_fail(const heed_gguf *g, heed_status st, const char *fmt, ...) HEED_PRINTF(3, 4);
static heed_status g_fail(const heed_gguf *g, heed_status st, const char *fmt, ...) {
  heed_gguf *w = (heed_gguf *)g; /* the cast: the error record only */
  char msg[HEED_ERROR_MSG_MAX];
  va_list ap;
  va_start(ap, fmt);
  heed_vfmt(msg, sizeof msg, fmt, ap);
  va_end(ap);
  pthread_mutex_lock(&w->mu);
  heed_err_set(&w->err, st, "%s", msg);
  pthread_mutex_unlock(&w->mu);
  return st;
}

const char *heed_gguf_last_error(const heed_gguf *g) {
  return g ? heed_err_msg_copy(&g->err, &((heed_gguf *)g)->mu) : ""; /* the cast: the lock only */
}

uint32_t heed_gguf_version(const heed_gguf *g) { return g ? g->parts[0].version : 0; }
uint32_t heed_gguf_alignment(const heed_gguf *g) { return g ? g->parts[0].alignment : 0; }
uint32_t heed_gguf_n_files(const heed_gguf *g) { return g ? g->n_parts : 0; }
uint64_t heed_gguf_file_bytes(const heed_gguf *g) { return g ? g->file_bytes : 0; }
uint64_t heed_gguf_n_kv(const heed_gguf *g) { return g ? g->parts[0].n_kv : 0; }

heed_status heed_gguf_kv_at(const heed_gguf *g, uint64_t i, heed_gguf_str *key, heed_gguf_value *val) {
  if (!g) return HEED_E_INVALID;
  const gg_part *p = &g->parts[0];
  if (i >= p->n_kv)
    return g_fail(g, HEED_E_RANGE, "heed_gguf_kv_at: entry %llu; the file has %llu", (unsigned long long)i,
                  (unsigned long long)p->n_kv);
  if (key) key->ptr = (const char *)kv_key(p, i), key->len = p->kv[i].key_len;
  if (val) *val = p->kv[i].val;
  return HEED_OK;
}

int64_t heed_gguf_find_key(const heed_gguf *g, const char *key) {
  if (!g || !key) return -1;
  return part_find(&g->parts[0], key, strlen(key));
}

heed_status heed_gguf_get(const heed_gguf *g, const char *key, heed_gguf_value *val) {
  if (!g || !key || !val) return g ? g_fail(g, HEED_E_INVALID, "heed_gguf_get: key or val is NULL") : HEED_E_INVALID;
  int64_t i = heed_gguf_find_key(g, key);
  if (i < 0) return g_fail(g, HEED_E_NOT_FOUND, "%s: key '%s' is absent", g->parts[0].path, key);
  *val = g->parts[0].kv[i].val;
  return HEED_OK;
}

static int is_uint(heed_gguf_vtype t) {
  return t == HEED_GGUF_UINT8 || t == HEED_GGUF_UINT16 || t == HEED_GGUF_UINT32 || t == HEED_GGUF_UINT64;
}
static int is_int(heed_gguf_vtype t) {
  return t == HEED_GGUF_INT8 || t == HEED_GGUF_INT16 || t == HEED_GGUF_INT32 || t == HEED_GGUF_INT64;
}

/* The refusal of a typed read: names the key, the type found and what converts. */
static heed_status bad_type(const heed_gguf *g, const char *key, const heed_gguf_value *v, const char *want) {
  return g_fail(g, HEED_E_INVALID, "%s: key '%s' is %s%s%s; accepted: %s", g->parts[0].path, key,
                heed_gguf_vtype_name(v->type), v->type == HEED_GGUF_ARRAY ? " of " : "",
                v->type == HEED_GGUF_ARRAY ? heed_gguf_vtype_name(v->v.arr.elem_type) : "", want);
}

heed_status heed_gguf_get_u64(const heed_gguf *g, const char *key, uint64_t *out) {
  heed_gguf_value v;
  heed_status st = out ? heed_gguf_get(g, key, &v) : g ? g_fail(g, HEED_E_INVALID, "heed_gguf_get_u64: out is NULL") : HEED_E_INVALID;
  if (st) return st;
  if (is_uint(v.type) || v.type == HEED_GGUF_BOOL) *out = v.v.u;
  else if (is_int(v.type) && v.v.i >= 0) *out = (uint64_t)v.v.i;
  else if (is_int(v.type))
    return g_fail(g, HEED_E_INVALID, "%s: key '%s' is %s %lld; accepted: a value >= 0", g->parts[0].path, key,
                  heed_gguf_vtype_name(v.type), (long long)v.v.i);
  else return bad_type(g, key, &v, "an integer >= 0 or a bool");
  return HEED_OK;
}

heed_status heed_gguf_get_i64(const heed_gguf *g, const char *key, int64_t *out) {
  heed_gguf_value v;
  heed_status st = out ? heed_gguf_get(g, key, &v) : g ? g_fail(g, HEED_E_INVALID, "heed_gguf_get_i64: out is NULL") : HEED_E_INVALID;
  if (st) return st;
  if (is_int(v.type)) *out = v.v.i;
  else if (is_uint(v.type) && v.v.u <= (uint64_t)INT64_MAX) *out = (int64_t)v.v.u;
  else if (is_uint(v.type))
    return g_fail(g, HEED_E_INVALID, "%s: key '%s' is %s %llu; accepted: at most 2^63-1", g->parts[0].path, key,
                  heed_gguf_vtype_name(v.type), (unsigned long long)v.v.u);
  else return bad_type(g, key, &v, "an integer");
  return HEED_OK;
}

heed_status heed_gguf_get_f64(const heed_gguf *g, const char *key, double *out) {
  heed_gguf_value v;
  heed_status st = out ? heed_gguf_get(g, key, &v) : g ? g_fail(g, HEED_E_INVALID, "heed_gguf_get_f64: out is NULL") : HEED_E_INVALID;
  if (st) return st;
  if (v.type == HEED_GGUF_FLOAT32 || v.type == HEED_GGUF_FLOAT64) *out = v.v.f;
  else if (is_int(v.type)) *out = (double)v.v.i;
  else if (is_uint(v.type)) *out = (double)v.v.u;
  else return bad_type(g, key, &v, "a number");
  return HEED_OK;
}

heed_status heed_gguf_get_bool(const heed_gguf *g, const char *key, int *out) {
  heed_gguf_value v;
  heed_status st = out ? heed_gguf_get(g, key, &v) : g ? g_fail(g, HEED_E_INVALID, "heed_gguf_get_bool: out is NULL") : HEED_E_INVALID;
  if (st) return st;
  if (v.type != HEED_GGUF_BOOL) return bad_type(g, key, &v, "bool");
  *out = (int)v.v.u;
  return HEED_OK;
}

heed_status heed_gguf_get_str(const heed_gguf *g, const char *key, heed_gguf_str *out) {
  heed_gguf_value v;
  heed_status st = out ? heed_gguf_get(g, key, &v) : g ? g_fail(g, HEED_E_INVALID, "heed_gguf_get_str: out is NULL") : HEED_E_INVALID;
  if (st) return st;
  if (v.type != HEED_GGUF_STRING) return bad_type(g, key, &v, "str");
  *out = v.v.str;
  return HEED_OK;
}

/* The node behind an array value, or NULL (with the refusal recorded) when arr is no array of g's. */
static const gg_node *array_node(const heed_gguf *g, const heed_gguf_value *arr, const char *fn) {
  const gg_part *p = &g->parts[0];
  if (!arr || arr->type != HEED_GGUF_ARRAY || arr->v.arr.node >= p->n_nodes) {
    g_fail(g, HEED_E_INVALID, "%s: the value is not an array of this file", fn);
    return NULL;
  }
  const gg_node *nd = &p->nodes[arr->v.arr.node];
  if (nd->n != arr->v.arr.n || nd->elem != arr->v.arr.elem_type) {
    g_fail(g, HEED_E_INVALID, "%s: the value does not match the array it names", fn);
    return NULL;
  }
  return nd;
}

heed_status heed_gguf_array_get(const heed_gguf *g, const heed_gguf_value *arr, uint64_t i, heed_gguf_value *out) {
  if (!g || !out) return g ? g_fail(g, HEED_E_INVALID, "heed_gguf_array_get: out is NULL") : HEED_E_INVALID;
  const gg_node *nd = array_node(g, arr, "heed_gguf_array_get");
  if (!nd) return HEED_E_INVALID;
  if (i >= nd->n)
    return g_fail(g, HEED_E_RANGE, "heed_gguf_array_get: element %llu of an array of %llu", (unsigned long long)i,
                  (unsigned long long)nd->n);
  const gg_part *p = &g->parts[0];
  memset(out, 0, sizeof *out);
  if (nd->elem == HEED_GGUF_STRING) {
    uint64_t at = p->str_at[nd->index + i];
    out->type = HEED_GGUF_STRING;
    out->v.str.len = le(p->base + at, 8);
    out->v.str.ptr = (const char *)p->base + at + 8;
  } else if (nd->elem == HEED_GGUF_ARRAY) {
    const gg_node *c = &p->nodes[nd->index + i];
    out->type = HEED_GGUF_ARRAY;
    out->v.arr.elem_type = c->elem;
    out->v.arr.n = c->n;
    out->v.arr.node = nd->index + i;
  } else {
    decode_scalar(nd->elem, p->base + nd->at + i * vtype_bytes(nd->elem), out);
  }
  return HEED_OK;
}

const void *heed_gguf_array_data(const heed_gguf *g, const heed_gguf_value *arr) {
  if (!g) return NULL;
  const gg_node *nd = array_node(g, arr, "heed_gguf_array_data");
  if (!nd || !vtype_bytes(nd->elem)) return NULL;
  return g->parts[0].base + nd->at;
}

uint64_t heed_gguf_n_tensors(const heed_gguf *g) { return g ? g->n_tensors : 0; }

const heed_gguf_tensor *heed_gguf_tensor_at(const heed_gguf *g, uint64_t i) {
  return g && i < g->n_tensors ? &g->tensors[i] : NULL;
}

const heed_gguf_tensor *heed_gguf_find_tensor(const heed_gguf *g, const char *name) {
  if (!g || !name || !g->t_hash_cap) return NULL;
  uint64_t m = g->t_hash_cap - 1;
  for (uint64_t h = fnv1a(name, strlen(name)) & m;; h = (h + 1) & m) {
    uint32_t e = g->t_hash[h];
    if (!e) return NULL;
    if (strcmp(g->tensors[e - 1].name, name) == 0) return &g->tensors[e - 1];
  }
}

const char *heed_gguf_file_path(const heed_gguf *g, uint32_t i) { return g && i < g->n_parts ? g->parts[i].path : NULL; }
