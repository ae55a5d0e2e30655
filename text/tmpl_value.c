/* text/tmpl_value.c - the template interpreter's memory, strings and values:
 * an arena per parse and per render, strings that carry the byte ranges that
 * came from the caller's data, Python's equality and number formatting, JSON
 * in (json.loads) and out (json.dumps), str() and repr(). */
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "text/tmpl_internal.h"

/* ---------- arena ---------- */

struct tm_chunk {
  tm_chunk *next;
  size_t size, used;
  _Alignas(16) unsigned char data[];
};

void tm_arena_init(tm_arena *a, size_t cap) {
  a->head = NULL;
  a->used = 0;
  a->cap = cap;
  a->over = 0;
}

void tm_arena_free(tm_arena *a) {
  tm_chunk *c = a->head;
  while (c) {
    tm_chunk *n = c->next;
    free(c);
    c = n;
  }
  a->head = NULL;
  a->used = 0;
}

void *tm_alloc(tm_arena *a, size_t n) {
  if (n > ((size_t)1 << 40)) {
    a->over = 1;
    return NULL;
  }
  n = (n + 15) & ~(size_t)15;
  if (!n) n = 16;
  tm_chunk *c = a->head;
  if (c && c->size - c->used >= n) {
    void *p = c->data + c->used;
    c->used += n;
    return p;
  }
  /* Chunks grow with the arena (64 KiB .. 4 MiB); a big request gets its own. */
  size_t size = a->used / 4;
  if (size < ((size_t)64 << 10)) size = (size_t)64 << 10;
  if (size > ((size_t)4 << 20)) size = (size_t)4 << 20;
  if (size < n) size = n;
  if (a->used + size + sizeof(tm_chunk) > a->cap) {
    if (a->used + n + sizeof(tm_chunk) > a->cap) {
      a->over = 1;
      return NULL;
    }
    size = n;
  }
  tm_chunk *nc = malloc(sizeof(tm_chunk) + size);
  if (!nc) {
    a->over = 2;
    return NULL;
  }
  nc->size = size;
  nc->used = n;
  a->used += size + sizeof(tm_chunk);
  /* A chunk for one big request goes behind the current one, which keeps its free room. */
  if (c && size == n && c->size - c->used > size / 8 + 256) {
    nc->next = c->next;
    c->next = nc;
  } else {
    nc->next = c;
    a->head = nc;
  }
  return nc->data;
}

void *tm_zalloc(tm_arena *a, size_t n) {
  void *p = tm_alloc(a, n);
  if (p) memset(p, 0, n);
  return p;
}

void *tm_alloc_n(tm_arena *a, size_t n, size_t size) {
  if (size && n > SIZE_MAX / size) {
    a->over = 1;
    return NULL;
  }
  return tm_alloc(a, n * size);
}

/* ---------- growing strings ---------- */

void tm_buf_init(tm_buf *b, tm_arena *arena, size_t max) {
  memset(b, 0, sizeof *b);
  b->arena = arena;
  b->max = max;
}

void tm_buf_release(tm_buf *b) {
  if (!b->arena) {
    free(b->p);
    free(b->r);
  }
  b->p = NULL;
  b->r = NULL;
  b->len = b->cap = b->nr = b->rcap = 0;
}

static void *buf_grow(tm_buf *b, void *old, size_t old_bytes, size_t new_bytes) {
  if (!b->arena) return realloc(old, new_bytes);
  void *p = tm_alloc(b->arena, new_bytes);
  if (p && old_bytes) memcpy(p, old, old_bytes);
  return p;
}

static int buf_reserve(tm_buf *b, size_t n) {
  if (b->err) return -1;
  if (n > b->max || b->len + n > b->max) {
    b->err = 1;
    return -1;
  }
  if (b->len + n + 1 <= b->cap) return 0;
  size_t cap = b->cap ? b->cap : 64;
  while (cap < b->len + n + 1) cap = cap > SIZE_MAX / 2 ? SIZE_MAX : cap * 2;
  char *p = buf_grow(b, b->p, b->len, cap);
  if (!p) {
    b->err = 2;
    return -1;
  }
  b->p = p;
  b->cap = cap;
  return 0;
}

static int buf_add_range(tm_buf *b, size_t off, size_t len) {
  if (!len) return 0;
  if (b->nr && b->r[b->nr - 1].off + b->r[b->nr - 1].len == off) {
    b->r[b->nr - 1].len += len;
    return 0;
  }
  if (b->nr == b->rcap) {
    size_t cap = b->rcap ? b->rcap * 2 : 4;
    tm_range *r = buf_grow(b, b->r, b->nr * sizeof *r, cap * sizeof *r);
    if (!r) {
      b->err = 2;
      return -1;
    }
    b->r = r;
    b->rcap = cap;
  }
  b->r[b->nr].off = off;
  b->r[b->nr].len = len;
  b->nr++;
  return 0;
}

int tm_buf_put(tm_buf *b, const char *s, size_t n, int taint) {
  if (buf_reserve(b, n)) return -1;
  if (n) memcpy(b->p + b->len, s, n);
  size_t off = b->len;
  b->len += n;
  b->p[b->len] = '\0';
  return taint ? buf_add_range(b, off, n) : 0;
}

int tm_buf_putc(tm_buf *b, char c, int taint) { return tm_buf_put(b, &c, 1, taint); }

int tm_buf_mark(tm_buf *b, size_t from) {
  if (b->err) return -1;
  if (from >= b->len) return 0;
  /* The new range may overlap the last ones: trim them first. */
  while (b->nr && b->r[b->nr - 1].off >= from) b->nr--;
  if (b->nr && b->r[b->nr - 1].off + b->r[b->nr - 1].len > from) b->r[b->nr - 1].len = from - b->r[b->nr - 1].off;
  return buf_add_range(b, from, b->len - from);
}

/* The first range of s that ends after off. */
static uint32_t first_range(const tm_str *s, size_t off) {
  uint32_t lo = 0, hi = s->n_taint;
  while (lo < hi) {
    uint32_t mid = lo + (hi - lo) / 2;
    if (s->taint[mid].off + s->taint[mid].len <= off) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

int tm_buf_sub(tm_buf *b, const tm_str *s, size_t off, size_t n) {
  size_t at = b->len;
  if (tm_buf_put(b, s->p + off, n, 0)) return -1;
  for (uint32_t i = s->n_taint ? first_range(s, off) : 0; i < s->n_taint; i++) {
    size_t lo = s->taint[i].off, hi = lo + s->taint[i].len;
    if (lo >= off + n) break;
    if (lo < off) lo = off;
    if (hi > off + n) hi = off + n;
    if (hi > lo && buf_add_range(b, at + (lo - off), hi - lo)) return -1;
  }
  return 0;
}

int tm_buf_str(tm_buf *b, const tm_str *s) { return tm_buf_sub(b, s, 0, s->len); }

const tm_str *tm_buf_finish(tm_buf *b, tm_arena *a) {
  if (b->err) return NULL;
  tm_str *s = tm_alloc(a, sizeof *s);
  char *p = tm_alloc(a, b->len + 1);
  tm_range *r = b->nr ? tm_alloc_n(a, b->nr, sizeof *r) : NULL;
  if (!s || !p || (b->nr && !r)) return NULL;
  if (b->len) memcpy(p, b->p, b->len);
  p[b->len] = '\0';
  if (b->nr) memcpy(r, b->r, b->nr * sizeof *r);
  s->p = p;
  s->len = b->len;
  s->taint = r;
  s->n_taint = (uint32_t)b->nr;
  return s;
}

int tm_str_tainted(const tm_str *s) { return s->n_taint != 0; }

int tm_str_range_tainted(const tm_str *s, size_t off, size_t n) {
  if (!s->n_taint || !n) return 0;
  uint32_t i = first_range(s, off);
  return i < s->n_taint && s->taint[i].off < off + n;
}

const tm_str *tm_str_new(tm_arena *a, const char *p, size_t n, int taint) {
  tm_str *s = tm_alloc(a, sizeof *s + (taint && n ? sizeof(tm_range) : 0));
  char *q = tm_alloc(a, n + 1);
  if (!s || !q) return NULL;
  if (n) memcpy(q, p, n);
  q[n] = '\0';
  s->p = q;
  s->len = n;
  s->taint = NULL;
  s->n_taint = 0;
  if (taint && n) {
    tm_range *r = (tm_range *)(s + 1);
    r->off = 0;
    r->len = n;
    s->taint = r;
    s->n_taint = 1;
  }
  return s;
}

const tm_str *tm_str_sub(tm_arena *a, const tm_str *s, size_t off, size_t n) {
  if (off == 0 && n == s->len) return s;
  /* copied: strings end in a NUL that others rely on */
  tm_buf b;
  tm_buf_init(&b, a, SIZE_MAX);
  if (tm_buf_sub(&b, s, off, n)) return NULL;
  return tm_buf_finish(&b, a);
}

int tm_str_eq(const tm_str *a, const tm_str *b) { return a->len == b->len && memcmp(a->p, b->p, a->len) == 0; }

int tm_str_eqc(const tm_str *a, const char *c) {
  size_t n = strlen(c);
  return a->len == n && memcmp(a->p, c, n) == 0;
}

/* ---------- UTF-8 ---------- */

int tm_utf8_valid(const char *s, size_t n) {
  const unsigned char *p = (const unsigned char *)s;
  size_t i = 0;
  while (i < n) {
    unsigned c = p[i];
    if (c < 0x80) {
      i++;
      continue;
    }
    size_t k;
    uint32_t cp;
    if (c >= 0xC2 && c <= 0xDF) k = 1, cp = c & 0x1F;
    else if (c >= 0xE0 && c <= 0xEF) k = 2, cp = c & 0x0F;
    else if (c >= 0xF0 && c <= 0xF4) k = 3, cp = c & 0x07;
    else return 0;
    if (n - i <= k) return 0;
    for (size_t j = 1; j <= k; j++) {
      if ((p[i + j] & 0xC0) != 0x80) return 0;
      cp = cp << 6 | (p[i + j] & 0x3F);
    }
    if ((k == 2 && cp < 0x800) || (k == 3 && (cp < 0x10000 || cp > 0x10FFFF)) || (cp >= 0xD800 && cp <= 0xDFFF))
      return 0;
    i += k + 1;
  }
  return 1;
}

uint32_t tm_utf8_dec(const char *s, size_t n, size_t *adv) {
  const unsigned char *p = (const unsigned char *)s;
  if (!n) {
    *adv = 0;
    return 0;
  }
  unsigned c = p[0];
  size_t k;
  uint32_t cp;
  if (c < 0x80) {
    *adv = 1;
    return c;
  }
  if (c >= 0xC0 && c <= 0xDF) k = 1, cp = c & 0x1F;
  else if (c >= 0xE0 && c <= 0xEF) k = 2, cp = c & 0x0F;
  else if (c >= 0xF0 && c <= 0xF7) k = 3, cp = c & 0x07;
  else {
    *adv = 1;
    return c;
  }
  if (n <= k) {
    *adv = 1;
    return c;
  }
  for (size_t j = 1; j <= k; j++) {
    if ((p[j] & 0xC0) != 0x80) {
      *adv = 1;
      return c;
    }
    cp = cp << 6 | (p[j] & 0x3F);
  }
  *adv = k + 1;
  return cp;
}

size_t tm_utf8_enc(uint32_t cp, char out[4]) {
  if (cp < 0x80) {
    out[0] = (char)cp;
    return 1;
  }
  if (cp < 0x800) {
    out[0] = (char)(0xC0 | cp >> 6);
    out[1] = (char)(0x80 | (cp & 0x3F));
    return 2;
  }
  if (cp < 0x10000) {
    out[0] = (char)(0xE0 | cp >> 12);
    out[1] = (char)(0x80 | (cp >> 6 & 0x3F));
    out[2] = (char)(0x80 | (cp & 0x3F));
    return 3;
  }
  out[0] = (char)(0xF0 | cp >> 18);
  out[1] = (char)(0x80 | (cp >> 12 & 0x3F));
  out[2] = (char)(0x80 | (cp >> 6 & 0x3F));
  out[3] = (char)(0x80 | (cp & 0x3F));
  return 4;
}

size_t tm_utf8_count(const char *p, size_t n) {
  size_t c = 0;
  for (size_t i = 0; i < n; i++) c += ((unsigned char)p[i] & 0xC0) != 0x80;
  return c;
}

int tm_is_space(uint32_t c) {
  if (c < 0x80) return c == ' ' || (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x1F);
  return c == 0x85 || c == 0xA0 || c == 0x1680 || (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 ||
         c == 0x202F || c == 0x205F || c == 0x3000;
}

/* ---------- lists and dicts ---------- */

tm_list *tm_list_new(tm_arena *a, size_t n) {
  tm_list *l = tm_alloc(a, sizeof *l);
  if (!l) return NULL;
  l->n = n;
  l->it = n ? tm_alloc_n(a, n, sizeof(tm_val)) : NULL;
  if (n && !l->it) return NULL;
  for (size_t i = 0; i < n; i++) l->it[i] = tv_undef();
  return l;
}

tm_dict *tm_dict_new(tm_arena *a, size_t cap) {
  tm_dict *d = tm_zalloc(a, sizeof *d);
  if (!d) return NULL;
  if (cap) {
    d->k = tm_alloc_n(a, cap, sizeof(tm_val));
    d->v = tm_alloc_n(a, cap, sizeof(tm_val));
    if (!d->k || !d->v) return NULL;
    d->cap = cap;
  }
  return d;
}

static uint32_t str_hash(const char *p, size_t n) {
  uint32_t h = 2166136261u;
  for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)p[i]) * 16777619u;
  return h;
}

#define TM_DICT_INDEX_MIN 8

static int dict_reindex(tm_arena *a, tm_dict *d) {
  size_t icap = 16;
  while (icap < d->n * 2 + 2) icap *= 2;
  uint32_t *idx = tm_zalloc(a, icap * sizeof *idx);
  if (!idx) return -1;
  for (size_t e = 0; e < d->n; e++) {
    if (d->k[e].kind != TV_STR) continue;
    size_t h = str_hash(d->k[e].s->p, d->k[e].s->len) & (icap - 1);
    while (idx[h]) h = (h + 1) & (icap - 1);
    idx[h] = (uint32_t)(e + 1);
  }
  d->idx = idx;
  d->icap = icap;
  return 0;
}

long tm_dict_findc(const tm_dict *d, const char *key, size_t n) {
  if (d->idx) {
    size_t h = str_hash(key, n) & (d->icap - 1);
    while (d->idx[h]) {
      const tm_val *k = &d->k[d->idx[h] - 1];
      if (k->s->len == n && memcmp(k->s->p, key, n) == 0) return (long)d->idx[h] - 1;
      h = (h + 1) & (d->icap - 1);
    }
    return -1;
  }
  for (size_t e = 0; e < d->n; e++)
    if (d->k[e].kind == TV_STR && d->k[e].s->len == n && memcmp(d->k[e].s->p, key, n) == 0) return (long)e;
  return -1;
}

long tm_dict_find(const tm_dict *d, tm_val key) {
  if (key.kind == TV_STR) return tm_dict_findc(d, key.s->p, key.s->len);
  for (size_t e = 0; e < d->n; e++)
    if (d->k[e].kind != TV_STR && tm_equal(d->k[e], key)) return (long)e;
  return -1;
}

int tm_dict_set(tm_arena *a, tm_dict *d, tm_val key, tm_val val) {
  long e = tm_dict_find(d, key);
  if (e >= 0) {
    d->v[e] = val;
    return 0;
  }
  if (d->n == d->cap) {
    size_t cap = d->cap ? d->cap * 2 : 4;
    tm_val *k = tm_alloc_n(a, cap, sizeof *k), *v = tm_alloc_n(a, cap, sizeof *v);
    if (!k || !v) return -1;
    if (d->n) {
      memcpy(k, d->k, d->n * sizeof *k);
      memcpy(v, d->v, d->n * sizeof *v);
    }
    d->k = k;
    d->v = v;
    d->cap = cap;
  }
  d->k[d->n] = key;
  d->v[d->n] = val;
  d->n++;
  if (key.kind == TV_STR && (d->idx || d->n > TM_DICT_INDEX_MIN)) {
    if (!d->idx || d->n * 2 + 2 > d->icap) return dict_reindex(a, d);
    size_t h = str_hash(key.s->p, key.s->len) & (d->icap - 1);
    while (d->idx[h]) h = (h + 1) & (d->icap - 1);
    d->idx[h] = (uint32_t)d->n;
  }
  return 0;
}

/* ---------- truth, numbers, equality ---------- */

int tm_truthy(tm_val v) {
  switch (v.kind) {
  case TV_UNDEF:
  case TV_NONE: return 0;
  case TV_BOOL: return v.b;
  case TV_INT: return v.i != 0;
  case TV_FLOAT: return v.f != 0.0;
  case TV_STR: return v.s->len != 0;
  case TV_LIST: return v.l->n != 0;
  case TV_DICT: return v.d->n != 0;
  default: return 1;
  }
}

int tm_hashable(tm_val v) {
  if (v.kind == TV_DICT || v.kind == TV_NS) return 0;
  if (v.kind != TV_LIST) return 1;
  if (v.flags & TV_RANGE) return 1;
  if (!(v.flags & TV_TUPLE)) return 0;
  for (size_t i = 0; i < v.l->n; i++)
    if (v.l->it[i].kind == TV_LIST && !(v.l->it[i].flags & (TV_TUPLE | TV_RANGE))) return 0;
    else if (v.l->it[i].kind == TV_DICT || v.l->it[i].kind == TV_NS) return 0;
  return 1; /* deeper nesting is taken as hashable */
}

int tm_is_number(tm_val v) { return v.kind == TV_BOOL || v.kind == TV_INT || v.kind == TV_FLOAT; }

double tm_num(tm_val v) {
  return v.kind == TV_FLOAT ? v.f : v.kind == TV_INT ? (double)v.i : v.kind == TV_BOOL ? (double)v.b : 0.0;
}

static int64_t as_int(tm_val v) { return v.kind == TV_INT ? v.i : v.b; }

/* int == float, exactly (as Python compares them). */
static int int_eq_float(int64_t i, double f) {
  if (!(f >= -9223372036854775808.0 && f < 9223372036854775808.0)) return 0;
  return (double)(int64_t)f == f && (int64_t)f == i;
}

static int equal_depth(tm_val a, tm_val b, unsigned depth) {
  if (depth > 200) return 0;
  if (tm_is_number(a) && tm_is_number(b)) {
    if (a.kind != TV_FLOAT && b.kind != TV_FLOAT) return as_int(a) == as_int(b);
    if (a.kind == TV_FLOAT && b.kind == TV_FLOAT) return a.f == b.f;
    return a.kind == TV_FLOAT ? int_eq_float(as_int(b), a.f) : int_eq_float(as_int(a), b.f);
  }
  if (a.kind != b.kind) return 0;
  switch (a.kind) {
  case TV_UNDEF:
  case TV_NONE: return 1;
  case TV_STR: return tm_str_eq(a.s, b.s);
  case TV_LIST:
    if ((a.flags & (TV_TUPLE | TV_RANGE)) != (b.flags & (TV_TUPLE | TV_RANGE)) || a.l->n != b.l->n) return 0;
    for (size_t i = 0; i < a.l->n; i++)
      if (!equal_depth(a.l->it[i], b.l->it[i], depth + 1)) return 0;
    return 1;
  case TV_DICT:
    if (a.d->n != b.d->n) return 0;
    for (size_t i = 0; i < a.d->n; i++) {
      long j = tm_dict_find(b.d, a.d->k[i]);
      if (j < 0 || !equal_depth(a.d->v[i], b.d->v[j], depth + 1)) return 0;
    }
    return 1;
  case TV_NS: return a.d == b.d;
  case TV_LOOP: return a.loop == b.loop;
  case TV_MACRO: return a.m == b.m;
  case TV_FUNC: return a.fn == b.fn;
  case TV_METHOD: return a.meth == b.meth;
  default: return 0;
  }
}

int tm_equal(tm_val a, tm_val b) { return equal_depth(a, b, 0); }

const char *tm_type_name(tm_val v) {
  switch (v.kind) {
  case TV_UNDEF: return "Undefined";
  case TV_NONE: return "NoneType";
  case TV_BOOL: return "bool";
  case TV_INT: return "int";
  case TV_FLOAT: return "float";
  case TV_STR: return "str";
  case TV_LIST: return v.flags & TV_RANGE ? "range" : v.flags & TV_TUPLE ? "tuple" : "list";
  case TV_DICT: return "dict";
  case TV_NS: return "Namespace";
  case TV_LOOP: return "LoopContext";
  case TV_MACRO: return "Macro";
  case TV_FUNC: return "function";
  default: return "builtin_function_or_method";
  }
}

/* ---------- number formatting (Python's repr) ---------- */

size_t tm_fmt_int(int64_t i, char *buf) { return (size_t)sprintf(buf, "%" PRId64, i); }

size_t tm_fmt_float(double f, char *buf) {
  if (isnan(f)) return (size_t)sprintf(buf, "nan");
  if (isinf(f)) return (size_t)sprintf(buf, f < 0 ? "-inf" : "inf");
  if (f == 0) return (size_t)sprintf(buf, signbit(f) ? "-0.0" : "0.0");
  /* The fewest significant digits that read back as f. */
  char tmp[40];
  for (int prec = 1; prec <= 17; prec++) {
    snprintf(tmp, sizeof tmp, "%.*e", prec - 1, f);
    if (strtod(tmp, NULL) == f) break;
  }
  /* tmp: [-]d[.ddd]e[+-]xx */
  char digits[24];
  size_t nd = 0;
  const char *p = tmp;
  int neg = 0;
  if (*p == '-') neg = 1, p++;
  for (; *p && *p != 'e'; p++)
    if (*p >= '0' && *p <= '9') digits[nd++] = *p;
  int e10 = atoi(p + 1);
  while (nd > 1 && digits[nd - 1] == '0') nd--;
  int decpt = e10 + 1;
  char *o = buf;
  if (neg) *o++ = '-';
  if (decpt > -4 && decpt <= 16) {
    if (decpt <= 0) {
      *o++ = '0';
      *o++ = '.';
      for (int k = 0; k < -decpt; k++) *o++ = '0';
      memcpy(o, digits, nd);
      o += nd;
    } else if ((size_t)decpt >= nd) {
      memcpy(o, digits, nd);
      o += nd;
      for (size_t k = nd; k < (size_t)decpt; k++) *o++ = '0';
      *o++ = '.';
      *o++ = '0';
    } else {
      memcpy(o, digits, (size_t)decpt);
      o += decpt;
      *o++ = '.';
      memcpy(o, digits + decpt, nd - (size_t)decpt);
      o += nd - (size_t)decpt;
    }
  } else {
    *o++ = digits[0];
    if (nd > 1) {
      *o++ = '.';
      memcpy(o, digits + 1, nd - 1);
      o += nd - 1;
    }
    int x = decpt - 1;
    o += sprintf(o, "e%c%02d", x < 0 ? '-' : '+', x < 0 ? -x : x);
  }
  *o = '\0';
  return (size_t)(o - buf);
}

/* ---------- JSON in ----------
 * Written here rather than with cJSON (which serve/ uses for the API): a
 * template's output depends on what json.loads would have made of the
 * request, and cJSON keeps every number as a double, so 1 and 1.0 (a tool
 * schema's "default": 1.0 renders through tojson as 1.0) and integers past
 * 2^53 could not be told apart; it also cannot put strings in the render's
 * bounded arena or mark them untrusted. */

typedef struct jp {
  tm_arena *a;
  const char *p, *end;
  int taint;
  char *msg;
  size_t msg_cap;
  int failed;
} jp;

static int jp_fail(jp *j, const char *what) {
  if (!j->failed) {
    snprintf(j->msg, j->msg_cap, "%s", j->a->over ? "out of memory" : what);
  }
  j->failed = 1;
  return -1;
}

static void jp_ws(jp *j) {
  while (j->p < j->end && (*j->p == ' ' || *j->p == '\t' || *j->p == '\n' || *j->p == '\r')) j->p++;
}

static int hex4(const char *p, uint32_t *out) {
  uint32_t v = 0;
  for (int i = 0; i < 4; i++) {
    char c = p[i];
    v <<= 4;
    if (c >= '0' && c <= '9') v |= (uint32_t)(c - '0');
    else if (c >= 'a' && c <= 'f') v |= (uint32_t)(c - 'a' + 10);
    else if (c >= 'A' && c <= 'F') v |= (uint32_t)(c - 'A' + 10);
    else return -1;
  }
  *out = v;
  return 0;
}

static int jp_string(jp *j, const tm_str **out) {
  j->p++; /* the opening quote */
  const char *start = j->p;
  /* Fast path: no escapes. */
  const char *q = start;
  while (q < j->end && *q != '"' && *q != '\\' && (unsigned char)*q >= 0x20) q++;
  if (q < j->end && *q == '"') {
    if (!tm_utf8_valid(start, (size_t)(q - start))) return jp_fail(j, "string is not valid UTF-8");
    *out = tm_str_new(j->a, start, (size_t)(q - start), j->taint);
    j->p = q + 1;
    return *out ? 0 : jp_fail(j, "out of memory");
  }
  tm_buf b;
  tm_buf_init(&b, j->a, SIZE_MAX);
  while (j->p < j->end && *j->p != '"') {
    unsigned char c = (unsigned char)*j->p;
    if (c < 0x20) return jp_fail(j, "control character in string");
    if (c != '\\') {
      const char *run = j->p;
      while (j->p < j->end && *j->p != '"' && *j->p != '\\' && (unsigned char)*j->p >= 0x20) j->p++;
      if (!tm_utf8_valid(run, (size_t)(j->p - run))) return jp_fail(j, "string is not valid UTF-8");
      if (tm_buf_put(&b, run, (size_t)(j->p - run), 0)) return jp_fail(j, "out of memory");
      continue;
    }
    if (j->end - j->p < 2) return jp_fail(j, "unterminated string");
    char e = j->p[1];
    char ch;
    j->p += 2;
    switch (e) {
    case '"': ch = '"'; break;
    case '\\': ch = '\\'; break;
    case '/': ch = '/'; break;
    case 'b': ch = '\b'; break;
    case 'f': ch = '\f'; break;
    case 'n': ch = '\n'; break;
    case 'r': ch = '\r'; break;
    case 't': ch = '\t'; break;
    case 'u': {
      uint32_t cp;
      if (j->end - j->p < 4 || hex4(j->p, &cp)) return jp_fail(j, "bad \\u escape");
      j->p += 4;
      if (cp >= 0xD800 && cp <= 0xDBFF) {
        uint32_t lo;
        if (j->end - j->p < 6 || j->p[0] != '\\' || j->p[1] != 'u' || hex4(j->p + 2, &lo) || lo < 0xDC00 || lo > 0xDFFF)
          return jp_fail(j, "lone surrogate in \\u escape");
        j->p += 6;
        cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
      } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
        return jp_fail(j, "lone surrogate in \\u escape");
      }
      char u[4];
      if (tm_buf_put(&b, u, tm_utf8_enc(cp, u), 0)) return jp_fail(j, "out of memory");
      continue;
    }
    default: return jp_fail(j, "bad escape in string");
    }
    if (tm_buf_putc(&b, ch, 0)) return jp_fail(j, "out of memory");
  }
  if (j->p >= j->end) return jp_fail(j, "unterminated string");
  j->p++;
  if (j->taint && tm_buf_mark(&b, 0)) return jp_fail(j, "out of memory");
  *out = tm_buf_finish(&b, j->a);
  return *out ? 0 : jp_fail(j, "out of memory");
}

static int jp_number(jp *j, tm_val *out) {
  const char *s = j->p, *q = s;
  int is_float = 0;
  if (q < j->end && *q == '-') q++;
  if (q < j->end && *q == '0') q++;
  else if (q < j->end && *q >= '1' && *q <= '9')
    while (q < j->end && *q >= '0' && *q <= '9') q++;
  else return jp_fail(j, "bad number");
  if (q < j->end && *q == '.') {
    q++;
    if (!(q < j->end && *q >= '0' && *q <= '9')) return jp_fail(j, "bad number");
    while (q < j->end && *q >= '0' && *q <= '9') q++;
    is_float = 1;
  }
  if (q < j->end && (*q == 'e' || *q == 'E')) {
    q++;
    if (q < j->end && (*q == '+' || *q == '-')) q++;
    if (!(q < j->end && *q >= '0' && *q <= '9')) return jp_fail(j, "bad number");
    while (q < j->end && *q >= '0' && *q <= '9') q++;
    is_float = 1;
  }
  char tmp[64];
  size_t n = (size_t)(q - s);
  char *heap = NULL, *buf = tmp;
  if (n >= sizeof tmp) {
    heap = malloc(n + 1);
    if (!heap) return jp_fail(j, "out of memory");
    buf = heap;
  }
  memcpy(buf, s, n);
  buf[n] = '\0';
  j->p = q;
  if (!is_float) {
    errno = 0;
    long long v = strtoll(buf, NULL, 10);
    if (errno != ERANGE) {
      free(heap);
      *out = tv_int(v);
      return 0;
    }
    /* Beyond 64 bits: kept as the nearest float (Python keeps the exact integer). */
  }
  double d = strtod(buf, NULL);
  free(heap);
  *out = tv_float(d);
  return 0;
}

static int jp_value(jp *j, tm_val *out, unsigned depth);

static int jp_value(jp *j, tm_val *out, unsigned depth) {
  if (depth > 256) return jp_fail(j, "nested too deeply");
  jp_ws(j);
  if (j->p >= j->end) return jp_fail(j, "unexpected end");
  char c = *j->p;
  size_t left = (size_t)(j->end - j->p);
  if (c == '{') {
    j->p++;
    tm_dict *d = tm_dict_new(j->a, 0);
    if (!d) return jp_fail(j, "out of memory");
    jp_ws(j);
    if (j->p < j->end && *j->p == '}') {
      j->p++;
      *out = tv_dict(d);
      return 0;
    }
    for (;;) {
      jp_ws(j);
      if (j->p >= j->end || *j->p != '"') return jp_fail(j, "expected a string key");
      const tm_str *k;
      if (jp_string(j, &k)) return -1;
      jp_ws(j);
      if (j->p >= j->end || *j->p != ':') return jp_fail(j, "expected ':'");
      j->p++;
      tm_val v;
      if (jp_value(j, &v, depth + 1)) return -1;
      if (tm_dict_set(j->a, d, tv_str(k), v)) return jp_fail(j, "out of memory");
      jp_ws(j);
      if (j->p < j->end && *j->p == ',') {
        j->p++;
        continue;
      }
      if (j->p < j->end && *j->p == '}') {
        j->p++;
        break;
      }
      return jp_fail(j, "expected ',' or '}'");
    }
    *out = tv_dict(d);
    return 0;
  }
  if (c == '[') {
    j->p++;
    size_t n = 0, cap = 0;
    tm_val *items = NULL;
    jp_ws(j);
    if (j->p < j->end && *j->p == ']') {
      j->p++;
    } else {
      for (;;) {
        tm_val v;
        if (jp_value(j, &v, depth + 1)) return -1;
        if (n == cap) {
          size_t nc = cap ? cap * 2 : 4;
          tm_val *ni = tm_alloc_n(j->a, nc, sizeof *ni);
          if (!ni) return jp_fail(j, "out of memory");
          if (n) memcpy(ni, items, n * sizeof *ni);
          items = ni;
          cap = nc;
        }
        items[n++] = v;
        jp_ws(j);
        if (j->p < j->end && *j->p == ',') {
          j->p++;
          continue;
        }
        if (j->p < j->end && *j->p == ']') {
          j->p++;
          break;
        }
        return jp_fail(j, "expected ',' or ']'");
      }
    }
    tm_list *l = tm_alloc(j->a, sizeof *l);
    if (!l) return jp_fail(j, "out of memory");
    l->it = items;
    l->n = n;
    *out = tv_list(l, 0);
    return 0;
  }
  if (c == '"') {
    const tm_str *s;
    if (jp_string(j, &s)) return -1;
    *out = tv_str(s);
    return 0;
  }
  if (left >= 4 && memcmp(j->p, "true", 4) == 0) return j->p += 4, *out = tv_bool(1), 0;
  if (left >= 5 && memcmp(j->p, "false", 5) == 0) return j->p += 5, *out = tv_bool(0), 0;
  if (left >= 4 && memcmp(j->p, "null", 4) == 0) return j->p += 4, *out = tv_none(), 0;
  if (left >= 3 && memcmp(j->p, "NaN", 3) == 0) return j->p += 3, *out = tv_float(NAN), 0;
  if (left >= 8 && memcmp(j->p, "Infinity", 8) == 0) return j->p += 8, *out = tv_float(INFINITY), 0;
  if (left >= 9 && memcmp(j->p, "-Infinity", 9) == 0) return j->p += 9, *out = tv_float(-INFINITY), 0;
  if (c == '-' || (c >= '0' && c <= '9')) return jp_number(j, out);
  return jp_fail(j, "unexpected character");
}

int tm_json_parse(tm_arena *a, const char *p, size_t n, int taint, tm_val *out, char *msg, size_t msg_cap) {
  jp j = {.a = a, .p = p, .end = p + n, .taint = taint, .msg = msg, .msg_cap = msg_cap};
  if (jp_value(&j, out, 0)) {
    if (!a->over) { /* say where */
      size_t k = strlen(msg);
      snprintf(msg + k, msg_cap > k ? msg_cap - k : 0, " at byte %zu", (size_t)(j.p - p));
    }
    return -1;
  }
  jp_ws(&j);
  if (j.p != j.end) {
    snprintf(msg, msg_cap, "extra data at byte %zu", (size_t)(j.p - p));
    return -1;
  }
  return 0;
}

/* ---------- str(), repr(), json.dumps ---------- */

static int put(tm_render *r, uint32_t line, tm_buf *b, const char *s, size_t n) {
  if (tm_buf_put(b, s, n, 0)) return tm_fail_mem(r, line);
  return 0;
}
#define PUTS(s) put(r, line, b, s, strlen(s))

static int repr_str(tm_render *r, uint32_t line, tm_buf *b, const tm_str *s) {
  int has_sq = memchr(s->p, '\'', s->len) != NULL, has_dq = memchr(s->p, '"', s->len) != NULL;
  char q = has_sq && !has_dq ? '"' : '\'';
  size_t from = b->len;
  if (put(r, line, b, &q, 1)) return -1;
  size_t i = 0;
  while (i < s->len) {
    size_t adv;
    uint32_t c = tm_utf8_dec(s->p + i, s->len - i, &adv);
    char tmp[16];
    const char *o = tmp;
    size_t on;
    if (c == '\\') o = "\\\\", on = 2;
    else if (c == (uint32_t)q) on = (size_t)sprintf(tmp, "\\%c", q);
    else if (c == '\t') o = "\\t", on = 2;
    else if (c == '\n') o = "\\n", on = 2;
    else if (c == '\r') o = "\\r", on = 2;
    else if (tm_uni_printable(c)) o = s->p + i, on = adv;
    else if (c < 0x100) on = (size_t)sprintf(tmp, "\\x%02x", c);
    else if (c < 0x10000) on = (size_t)sprintf(tmp, "\\u%04x", c);
    else on = (size_t)sprintf(tmp, "\\U%08x", c);
    if (put(r, line, b, o, on)) return -1;
    i += adv;
  }
  if (put(r, line, b, &q, 1)) return -1;
  if (tm_str_tainted(s) && tm_buf_mark(b, from)) return tm_fail_mem(r, line);
  return 0;
}

static int repr_depth(tm_render *r, uint32_t line, tm_buf *b, tm_val v, int top, unsigned depth);

static int repr_items(tm_render *r, uint32_t line, tm_buf *b, const tm_list *l, unsigned depth) {
  for (size_t i = 0; i < l->n; i++) {
    if (i && PUTS(", ")) return -1;
    if (repr_depth(r, line, b, l->it[i], 0, depth + 1)) return -1;
  }
  return 0;
}

static int repr_dict(tm_render *r, uint32_t line, tm_buf *b, const tm_dict *d, unsigned depth) {
  if (PUTS("{")) return -1;
  for (size_t i = 0; i < d->n; i++) {
    if (i && PUTS(", ")) return -1;
    if (repr_depth(r, line, b, d->k[i], 0, depth + 1) || PUTS(": ") || repr_depth(r, line, b, d->v[i], 0, depth + 1))
      return -1;
  }
  return PUTS("}");
}

static int repr_depth(tm_render *r, uint32_t line, tm_buf *b, tm_val v, int top, unsigned depth) {
  if (depth > 200) return tm_fail(r, line, HEED_E_RANGE, "value nested too deeply to print");
  if (tm_charge(r, line, 1)) return -1;
  char tmp[40];
  switch (v.kind) {
  case TV_UNDEF: return top ? 0 : PUTS("Undefined");
  case TV_NONE: return PUTS("None");
  case TV_BOOL: return PUTS(v.b ? "True" : "False");
  case TV_INT: return put(r, line, b, tmp, tm_fmt_int(v.i, tmp));
  case TV_FLOAT: return put(r, line, b, tmp, tm_fmt_float(v.f, tmp));
  case TV_STR:
    if (top) return tm_buf_str(b, v.s) ? tm_fail_mem(r, line) : 0;
    return repr_str(r, line, b, v.s);
  case TV_LIST:
    if (v.flags & TV_RANGE) {
      const tm_range_list *rl = (const tm_range_list *)v.l;
      int n = rl->step == 1 ? snprintf(tmp, sizeof tmp, "range(%lld, %lld)", (long long)rl->start, (long long)rl->stop)
                            : snprintf(tmp, sizeof tmp, "range(%lld, %lld, %lld)", (long long)rl->start,
                                       (long long)rl->stop, (long long)rl->step);
      return put(r, line, b, tmp, (size_t)n);
    }
    if (v.flags & TV_TUPLE) {
      if (PUTS("(") || repr_items(r, line, b, v.l, depth)) return -1;
      return PUTS(v.l->n == 1 ? ",)" : ")");
    } else {
      const char *pre = v.flags & TV_VIEW_ITEMS    ? "dict_items(["
                        : v.flags & TV_VIEW_KEYS   ? "dict_keys(["
                        : v.flags & TV_VIEW_VALUES ? "dict_values(["
                                                   : "[";
      if (PUTS(pre) || repr_items(r, line, b, v.l, depth)) return -1;
      return PUTS(v.flags & (TV_VIEW_ITEMS | TV_VIEW_KEYS | TV_VIEW_VALUES) ? "])" : "]");
    }
  case TV_DICT: return repr_dict(r, line, b, v.d, depth);
  case TV_NS:
    if (PUTS("<Namespace ") || repr_dict(r, line, b, v.d, depth)) return -1;
    return PUTS(">");
  case TV_MACRO: {
    const tm_str *name = r->t->names[v.m->def->id];
    return PUTS("<Macro '") || put(r, line, b, name->p, name->len) || PUTS("'>");
  }
  case TV_LOOP: {
    int n = snprintf(tmp, sizeof tmp, "<LoopContext %zu/%zu>", v.loop->i + 1, v.loop->n);
    return put(r, line, b, tmp, (size_t)n);
  }
  default: return tm_fail(r, line, HEED_E_UNSUPPORTED, "printing a %s is not supported", tm_type_name(v));
  }
}

int tm_val_str(tm_render *r, uint32_t line, tm_buf *b, tm_val v) { return repr_depth(r, line, b, v, 1, 0); }
int tm_val_repr(tm_render *r, uint32_t line, tm_buf *b, tm_val v) { return repr_depth(r, line, b, v, 0, 0); }

static int json_str(tm_render *r, uint32_t line, tm_buf *b, const tm_str *s, int ascii) {
  size_t from = b->len;
  if (PUTS("\"")) return -1;
  size_t i = 0, run = 0;
  while (i < s->len) {
    unsigned char c = (unsigned char)s->p[i];
    int plain = c >= 0x20 && c != '"' && c != '\\' && (c < 0x80 ? !(ascii && c == 0x7F) : !ascii);
    if (plain) {
      i++;
      continue;
    }
    if (i > run && put(r, line, b, s->p + run, i - run)) return -1;
    char tmp[16];
    size_t on;
    const char *o = tmp;
    size_t adv = 1;
    switch (c) {
    case '"': o = "\\\"", on = 2; break;
    case '\\': o = "\\\\", on = 2; break;
    case '\n': o = "\\n", on = 2; break;
    case '\r': o = "\\r", on = 2; break;
    case '\t': o = "\\t", on = 2; break;
    case '\b': o = "\\b", on = 2; break;
    case '\f': o = "\\f", on = 2; break;
    default:
      if (c < 0x80) {
        on = (size_t)sprintf(tmp, "\\u%04x", c);
      } else {
        uint32_t cp = tm_utf8_dec(s->p + i, s->len - i, &adv);
        if (cp >= 0x10000) {
          cp -= 0x10000;
          on = (size_t)sprintf(tmp, "\\u%04x\\u%04x", 0xD800 + (cp >> 10), 0xDC00 + (cp & 0x3FF));
        } else {
          on = (size_t)sprintf(tmp, "\\u%04x", cp);
        }
      }
    }
    if (put(r, line, b, o, on)) return -1;
    i += adv;
    run = i;
  }
  if (i > run && put(r, line, b, s->p + run, i - run)) return -1;
  if (PUTS("\"")) return -1;
  if (tm_str_tainted(s) && tm_buf_mark(b, from)) return tm_fail_mem(r, line);
  return 0;
}

static int json_newline(tm_render *r, uint32_t line, tm_buf *b, const tm_json_opts *o, unsigned level) {
  if (PUTS("\n")) return -1;
  for (unsigned k = 0; k < level; k++)
    if (tm_buf_str(b, o->indent)) return tm_fail_mem(r, line);
  return 0;
}

/* A dict key as json.dumps writes it: strings as they are, numbers, true, false, null. */
static int json_key(tm_render *r, uint32_t line, tm_buf *b, tm_val k, const tm_json_opts *o) {
  char tmp[40];
  switch (k.kind) {
  case TV_STR: return json_str(r, line, b, k.s, o->ensure_ascii);
  case TV_BOOL: return PUTS(k.b ? "\"true\"" : "\"false\"");
  case TV_NONE: return PUTS("\"null\"");
  case TV_INT: tmp[0] = '"'; return put(r, line, b, tmp, tm_fmt_int(k.i, tmp + 1) + 1) || PUTS("\"");
  case TV_FLOAT: {
    size_t n;
    if (isnan(k.f)) n = (size_t)sprintf(tmp + 1, "NaN");
    else if (isinf(k.f)) n = (size_t)sprintf(tmp + 1, k.f < 0 ? "-Infinity" : "Infinity");
    else n = tm_fmt_float(k.f, tmp + 1);
    tmp[0] = '"';
    return put(r, line, b, tmp, n + 1) || PUTS("\"");
  }
  default:
    return tm_fail(r, line, HEED_E_INVALID, "keys must be str, int, float, bool or None, not %s", tm_type_name(k));
  }
}

/* Python's ordering of two dict keys for sort_keys (same types only). */
static int key_cmp(tm_val a, tm_val b, int *err) {
  if (a.kind == TV_STR && b.kind == TV_STR) {
    size_t n = a.s->len < b.s->len ? a.s->len : b.s->len;
    int c = memcmp(a.s->p, b.s->p, n);
    return c ? c : (a.s->len > b.s->len) - (a.s->len < b.s->len);
  }
  if (tm_is_number(a) && tm_is_number(b)) {
    double x = tm_num(a), y = tm_num(b);
    return (x > y) - (x < y);
  }
  *err = 1;
  return 0;
}

int tm_val_json(tm_render *r, uint32_t line, tm_buf *b, tm_val v, const tm_json_opts *o, unsigned depth) {
  if (depth > 200) return tm_fail(r, line, HEED_E_RANGE, "value nested too deeply for tojson");
  if (tm_charge(r, line, 1)) return -1;
  char tmp[40];
  switch (v.kind) {
  case TV_NONE: return PUTS("null");
  case TV_BOOL: return PUTS(v.b ? "true" : "false");
  case TV_INT: return put(r, line, b, tmp, tm_fmt_int(v.i, tmp));
  case TV_FLOAT:
    if (isnan(v.f)) return PUTS("NaN");
    if (isinf(v.f)) return PUTS(v.f < 0 ? "-Infinity" : "Infinity");
    return put(r, line, b, tmp, tm_fmt_float(v.f, tmp));
  case TV_STR: return json_str(r, line, b, v.s, o->ensure_ascii);
  case TV_LIST: {
    if (v.flags & TV_RANGE)
      return tm_fail(r, line, HEED_E_INVALID, "tojson: Object of type range is not JSON serializable");
    if (!v.l->n) return PUTS("[]");
    if (PUTS("[")) return -1;
    if (o->indent && json_newline(r, line, b, o, depth + 1)) return -1;
    for (size_t i = 0; i < v.l->n; i++) {
      if (i) {
        if (tm_buf_str(b, o->item_sep)) return tm_fail_mem(r, line);
        if (o->indent && json_newline(r, line, b, o, depth + 1)) return -1;
      }
      if (tm_val_json(r, line, b, v.l->it[i], o, depth + 1)) return -1;
    }
    if (o->indent && json_newline(r, line, b, o, depth)) return -1;
    return PUTS("]");
  }
  case TV_DICT: {
    const tm_dict *d = v.d;
    if (!d->n) return PUTS("{}");
    size_t *order = tm_alloc_n(&r->arena, d->n, sizeof *order);
    if (!order) return tm_fail_mem(r, line);
    for (size_t i = 0; i < d->n; i++) order[i] = i;
    if (o->sort_keys) { /* insertion sort: stable, and dicts in templates are small */
      if (tm_charge(r, line, (uint64_t)d->n * d->n / 8)) return -1;
      int err = 0;
      for (size_t i = 1; i < d->n; i++) {
        size_t x = order[i], j = i;
        while (j > 0 && key_cmp(d->k[order[j - 1]], d->k[x], &err) > 0) {
          order[j] = order[j - 1];
          j--;
        }
        order[j] = x;
      }
      if (err) return tm_fail(r, line, HEED_E_INVALID, "tojson: sort_keys with keys of different types");
    }
    if (PUTS("{")) return -1;
    if (o->indent && json_newline(r, line, b, o, depth + 1)) return -1;
    for (size_t i = 0; i < d->n; i++) {
      if (i) {
        if (tm_buf_str(b, o->item_sep)) return tm_fail_mem(r, line);
        if (o->indent && json_newline(r, line, b, o, depth + 1)) return -1;
      }
      if (json_key(r, line, b, d->k[order[i]], o)) return -1;
      if (tm_buf_str(b, o->key_sep)) return tm_fail_mem(r, line);
      if (tm_val_json(r, line, b, d->v[order[i]], o, depth + 1)) return -1;
    }
    if (o->indent && json_newline(r, line, b, o, depth)) return -1;
    return PUTS("}");
  }
  default:
    return tm_fail(r, line, HEED_E_INVALID, "tojson: Object of type %s is not JSON serializable", tm_type_name(v));
  }
}
