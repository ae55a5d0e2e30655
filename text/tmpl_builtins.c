/* text/tmpl_builtins.c - what templates call: jinja2's filters and tests,
 * the methods of strings, dicts, lists and loops that Python gives them, and
 * the globals Hugging Face adds (raise_exception, strftime_now) beside
 * jinja2's (range, namespace, dict). Each follows the Python behaviour the
 * templates see; strings keep their untrusted ranges through all of them. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "text/tmpl_internal.h"
#include "text/tmpl_unicode.h"

#define MAX_RANGE 100000 /* jinja2's sandbox refuses longer ranges */

/* ---------- small helpers ---------- */

static int fail_type(tm_render *r, uint32_t line, const char *what, tm_val v) {
  return tm_fail(r, line, HEED_E_INVALID, "%s: unsupported value of type '%s'", what, tm_type_name(v));
}

static int new_str(tm_render *r, uint32_t line, tm_buf *b, tm_val *out) {
  const tm_str *s = tm_buf_finish(b, &r->arena);
  if (!s) return tm_fail_mem(r, line);
  *out = tv_str(s);
  return 0;
}

static int str_lit(tm_render *r, uint32_t line, const char *p, size_t n, tm_val *out) {
  const tm_str *s = tm_str_new(&r->arena, p, n, 0);
  if (!s) return tm_fail_mem(r, line);
  *out = tv_str(s);
  return 0;
}

static int new_list(tm_render *r, uint32_t line, const tm_val *items, size_t n, unsigned flags, tm_val *out) {
  tm_list *l = tm_list_new(&r->arena, n);
  if (!l) return tm_fail_mem(r, line);
  if (n) memcpy(l->it, items, n * sizeof *items);
  *out = tv_list(l, flags);
  return 0;
}

/* A growing list of values in the arena. */
typedef struct vec {
  tm_val *v;
  size_t n, cap;
} vec;

static int vec_push(tm_render *r, uint32_t line, vec *x, tm_val v) {
  if (x->n == x->cap) {
    size_t cap = x->cap ? x->cap * 2 : 8;
    tm_val *nv = tm_alloc_n(&r->arena, cap, sizeof *nv);
    if (!nv) return tm_fail_mem(r, line);
    if (x->n) memcpy(nv, x->v, x->n * sizeof *nv);
    x->v = nv;
    x->cap = cap;
  }
  x->v[x->n++] = v;
  return 0;
}

static int as_int_arg(tm_render *r, uint32_t line, const char *what, tm_val v, int64_t *out) {
  if (v.kind == TV_INT) *out = v.i;
  else if (v.kind == TV_BOOL) *out = v.b;
  else if (v.kind == TV_UNDEF) return tm_undef_error(r, line, v);
  else return tm_fail(r, line, HEED_E_INVALID, "%s: an integer is required, not '%s'", what, tm_type_name(v));
  return 0;
}

/* ---------- Unicode: Python's case mappings and character classes (tmpl_unicode.h) ---------- */

static int in_ranges(const uint32_t (*r)[2], size_t n, uint32_t c) {
  size_t lo = 0, hi = n;
  while (lo < hi) {
    size_t mid = lo + (hi - lo) / 2;
    if (c < r[mid][0]) hi = mid;
    else if (c > r[mid][1]) lo = mid + 1;
    else return 1;
  }
  return 0;
}
#define PROP(name, c) in_ranges(tm_prop_##name, HEED_ARRAY_LEN(tm_prop_##name), c)

static int cp_is_upper(uint32_t c) { return c < 0x80 ? c >= 'A' && c <= 'Z' : PROP(upper, c); }
static int cp_is_lower(uint32_t c) { return c < 0x80 ? c >= 'a' && c <= 'z' : PROP(lower, c); }
static int cp_is_title(uint32_t c) { return c >= 0x80 && PROP(title, c); }
static int cp_is_cased(uint32_t c) { return c < 0x80 ? ((c | 32) >= 'a' && (c | 32) <= 'z') : PROP(cased, c); }
static int cp_is_alpha(uint32_t c) { return c < 0x80 ? ((c | 32) >= 'a' && (c | 32) <= 'z') : PROP(alpha, c); }
static int cp_is_decimal(uint32_t c) { return c < 0x80 ? c >= '0' && c <= '9' : PROP(decimal, c); }
static int cp_is_digit(uint32_t c) { return c < 0x80 ? c >= '0' && c <= '9' : PROP(digit, c); }
static int cp_is_numeric(uint32_t c) { return c < 0x80 ? c >= '0' && c <= '9' : PROP(numeric, c); }
static int cp_is_alnum(uint32_t c) { return cp_is_alpha(c) || cp_is_decimal(c) || cp_is_digit(c) || cp_is_numeric(c); }

int tm_uni_printable(uint32_t c) { return c < 0x80 ? c >= 0x20 && c < 0x7F : PROP(printable, c); }

enum { MAP_UPPER = 1, MAP_LOWER = 2, MAP_TITLE = 3 };

/* The full mapping of c (1 to 3 code points) into out; returns the count. */
static size_t map_full(uint32_t c, int which, uint32_t out[4]) {
  if (c < 0x80) {
    out[0] = which == MAP_LOWER ? (c >= 'A' && c <= 'Z' ? c + 32 : c) : (c >= 'a' && c <= 'z' ? c - 32 : c);
    return 1;
  }
  size_t lo = 0, hi = HEED_ARRAY_LEN(tm_case_map);
  while (lo < hi) {
    size_t mid = lo + (hi - lo) / 2;
    if (tm_case_map[mid][0] < c) lo = mid + 1;
    else hi = mid;
  }
  if (lo == HEED_ARRAY_LEN(tm_case_map) || tm_case_map[lo][0] != c) {
    out[0] = c;
    return 1;
  }
  uint32_t v = tm_case_map[lo][which];
  if (!(v & 0x80000000u)) {
    out[0] = v;
    return 1;
  }
  size_t len = (v >> 24) & 0x7F, off = v & 0xFFFFFF;
  memcpy(out, tm_case_seq + off, len * sizeof *out);
  return len;
}

/* Python's lower() of the code point c at byte i (adv bytes), with the final
 * sigma rule looking no further than [lo, hi). */
static size_t lower_at(const tm_str *s, size_t i, size_t adv, uint32_t c, size_t lo, size_t hi, uint32_t out[4]) {
  if (c != 0x3A3) return map_full(c, MAP_LOWER, out);
  int final = 0;
  size_t j = i, a;
  while (j > lo) { /* back over case-ignorables to a cased letter */
    size_t k = j - 1;
    while (k > lo && ((unsigned char)s->p[k] & 0xC0) == 0x80) k--;
    uint32_t p = tm_utf8_dec(s->p + k, s->len - k, &a);
    if (!PROP(case_ignorable, p)) {
      final = cp_is_cased(p);
      break;
    }
    j = k;
  }
  for (j = i + adv; final && j < hi; j += a) { /* and no cased letter after */
    uint32_t n = tm_utf8_dec(s->p + j, s->len - j, &a);
    if (!PROP(case_ignorable, n)) {
      final = !cp_is_cased(n);
      break;
    }
  }
  out[0] = final ? 0x3C2 : 0x3C3;
  return 1;
}

enum { CASE_UPPER, CASE_LOWER, CASE_TITLE, CASE_CAPITALIZE, CASE_SWAP, CASE_JTITLE };

static int jtitle_sep(uint32_t c) { return c == '-' || c == '(' || c == '{' || c == '[' || c == '<' || tm_is_space(c); }

/* Python's upper/lower/title/capitalize/swapcase (full mappings: "ß".upper()
 * is "SS"; final sigma) and jinja2's title filter: each piece between runs of
 * blanks, "-", "(", "{", "[" or "<" becomes piece[0].upper() + piece[1:].lower(). */
static int s_case(tm_render *r, uint32_t line, const tm_str *s, int mode, tm_val *out) {
  if (tm_charge(r, line, s->len / 8)) return -1;
  tm_buf b;
  tm_buf_init(&b, &r->arena, r->max_output);
  size_t i = 0, piece = 0, piece_end = 0, piece_rest = 0; /* jinja2 title: the piece around i */
  int prev_cased = 0;
  while (i < s->len) {
    size_t adv;
    uint32_t c = tm_utf8_dec(s->p + i, s->len - i, &adv), m[4];
    size_t nm = 1;
    m[0] = c;
    switch (mode) {
    case CASE_UPPER: nm = map_full(c, MAP_UPPER, m); break;
    case CASE_LOWER: nm = lower_at(s, i, adv, c, 0, s->len, m); break;
    case CASE_TITLE:
      nm = prev_cased ? lower_at(s, i, adv, c, 0, s->len, m) : map_full(c, MAP_TITLE, m);
      prev_cased = cp_is_cased(c);
      break;
    case CASE_CAPITALIZE: nm = i == 0 ? map_full(c, MAP_TITLE, m) : lower_at(s, i, adv, c, 0, s->len, m); break;
    case CASE_SWAP:
      if (cp_is_upper(c)) nm = lower_at(s, i, adv, c, 0, s->len, m);
      else if (cp_is_lower(c)) nm = map_full(c, MAP_UPPER, m);
      break;
    case CASE_JTITLE:
      if (i >= piece_end) { /* a new piece: a run of separators or of other characters */
        int sep = jtitle_sep(c);
        piece = i;
        piece_rest = i + adv;
        piece_end = piece_rest;
        while (piece_end < s->len) {
          size_t a2;
          uint32_t x = tm_utf8_dec(s->p + piece_end, s->len - piece_end, &a2);
          if (jtitle_sep(x) != sep) break;
          piece_end += a2;
        }
      }
      /* piece[1:] is a string of its own for the final sigma */
      nm = i == piece ? map_full(c, MAP_UPPER, m) : lower_at(s, i, adv, c, piece_rest, piece_end, m);
      break;
    }
    int taint = tm_str_range_tainted(s, i, adv);
    for (size_t k = 0; k < nm; k++) {
      char u[4];
      if (tm_buf_put(&b, u, tm_utf8_enc(m[k], u), taint)) return tm_fail_mem(r, line);
    }
    i += adv;
  }
  return new_str(r, line, &b, out);
}

/* ---------- string operations with Python's semantics ---------- */

typedef struct cpset {
  uint32_t *c;
  size_t n;
  int space; /* whitespace instead of c */
} cpset;

static int cpset_make(tm_render *r, uint32_t line, tm_val chars, cpset *set) {
  set->space = chars.kind == TV_NONE || chars.kind == TV_UNDEF;
  set->c = NULL;
  set->n = 0;
  if (set->space) return 0;
  if (chars.kind != TV_STR)
    return tm_fail(r, line, HEED_E_INVALID, "strip arg must be None or str, not %s", tm_type_name(chars));
  const tm_str *s = chars.s;
  set->c = tm_alloc_n(&r->arena, s->len + 1, sizeof *set->c);
  if (!set->c) return tm_fail_mem(r, line);
  for (size_t i = 0; i < s->len;) {
    size_t adv;
    set->c[set->n++] = tm_utf8_dec(s->p + i, s->len - i, &adv);
    i += adv;
  }
  return 0;
}

static int cpset_has(const cpset *set, uint32_t c) {
  if (set->space) return tm_is_space(c);
  for (size_t i = 0; i < set->n; i++)
    if (set->c[i] == c) return 1;
  return 0;
}

/* strip (which: 1 left, 2 right, 3 both) -> [*b0, *b1) */
static void strip_range(const tm_str *s, const cpset *set, int which, size_t *b0, size_t *b1) {
  size_t i = 0;
  if (which & 1)
    while (i < s->len) {
      size_t adv;
      uint32_t c = tm_utf8_dec(s->p + i, s->len - i, &adv);
      if (!cpset_has(set, c)) break;
      i += adv;
    }
  size_t end = s->len;
  if (which & 2) {
    end = i;
    size_t j = i;
    while (j < s->len) {
      size_t adv;
      uint32_t c = tm_utf8_dec(s->p + j, s->len - j, &adv);
      j += adv;
      if (!cpset_has(set, c)) end = j;
    }
  }
  *b0 = i;
  *b1 = end;
}

static int s_strip(tm_render *r, uint32_t line, const tm_str *s, tm_val chars, int which, tm_val *out) {
  cpset set;
  if (cpset_make(r, line, chars, &set) || tm_charge(r, line, s->len / 16)) return -1;
  size_t b0, b1;
  strip_range(s, &set, which, &b0, &b1);
  const tm_str *res = tm_str_sub(&r->arena, s, b0, b1 - b0);
  if (!res) return tm_fail_mem(r, line);
  *out = tv_str(res);
  return 0;
}

static int sub_push(tm_render *r, uint32_t line, vec *v, const tm_str *s, size_t b0, size_t b1) {
  const tm_str *p = tm_str_sub(&r->arena, s, b0, b1 - b0);
  if (!p) return tm_fail_mem(r, line);
  return vec_push(r, line, v, tv_str(p));
}

static void vec_reverse(vec *v) {
  for (size_t i = 0, j = v->n ? v->n - 1 : 0; i < j; i++, j--) {
    tm_val t = v->v[i];
    v->v[i] = v->v[j];
    v->v[j] = t;
  }
}

/* The code point just before byte offset i (i > 0): its start. */
static size_t prev_cp(const tm_str *s, size_t i) {
  i--;
  while (i > 0 && ((unsigned char)s->p[i] & 0xC0) == 0x80) i--;
  return i;
}

static int s_split(tm_render *r, uint32_t line, const tm_str *s, tm_val sepv, int64_t maxsplit, int right,
                   tm_val *out) {
  vec v = {0};
  uint64_t maxcount = maxsplit < 0 ? UINT64_MAX : (uint64_t)maxsplit;
  if (tm_charge(r, line, s->len / 8)) return -1;
  if (sepv.kind == TV_NONE || sepv.kind == TV_UNDEF) {
    if (!right) {
      size_t i = 0, len = s->len;
      while (maxcount--) {
        size_t adv;
        while (i < len && tm_is_space(tm_utf8_dec(s->p + i, len - i, &adv))) i += adv;
        if (i == len) break;
        size_t j = i;
        while (i < len && !tm_is_space(tm_utf8_dec(s->p + i, len - i, &adv))) i += adv;
        if (sub_push(r, line, &v, s, j, i)) return -1;
      }
      if (i < len) {
        size_t adv;
        while (i < len && tm_is_space(tm_utf8_dec(s->p + i, len - i, &adv))) i += adv;
        if (i != len && sub_push(r, line, &v, s, i, len)) return -1;
      }
    } else {
      size_t i = s->len; /* exclusive end of what is left */
      while (maxcount--) {
        size_t adv;
        while (i > 0) {
          size_t k = prev_cp(s, i);
          if (!tm_is_space(tm_utf8_dec(s->p + k, s->len - k, &adv))) break;
          i = k;
        }
        if (i == 0) break;
        size_t j = i;
        while (i > 0) {
          size_t k = prev_cp(s, i);
          if (tm_is_space(tm_utf8_dec(s->p + k, s->len - k, &adv))) break;
          i = k;
        }
        if (sub_push(r, line, &v, s, i, j)) return -1;
      }
      if (i > 0) {
        size_t adv;
        while (i > 0) {
          size_t k = prev_cp(s, i);
          if (!tm_is_space(tm_utf8_dec(s->p + k, s->len - k, &adv))) break;
          i = k;
        }
        if (i > 0 && sub_push(r, line, &v, s, 0, i)) return -1;
      }
      vec_reverse(&v);
    }
  } else {
    if (sepv.kind != TV_STR) return tm_fail(r, line, HEED_E_INVALID, "must be str or None, not %s", tm_type_name(sepv));
    const tm_str *sep = sepv.s;
    if (!sep->len) return tm_fail(r, line, HEED_E_INVALID, "empty separator");
    if (!right) {
      size_t i = 0;
      while (maxcount--) {
        const char *f = memmem(s->p + i, s->len - i, sep->p, sep->len);
        if (!f) break;
        size_t pos = (size_t)(f - s->p);
        if (sub_push(r, line, &v, s, i, pos)) return -1;
        i = pos + sep->len;
      }
      if (sub_push(r, line, &v, s, i, s->len)) return -1;
    } else {
      size_t j = s->len;
      while (maxcount--) {
        /* the last occurrence ending at or before j */
        size_t pos = SIZE_MAX;
        for (size_t k = j >= sep->len ? j - sep->len + 1 : 0; k-- > 0;)
          if (memcmp(s->p + k, sep->p, sep->len) == 0) {
            pos = k;
            break;
          }
        if (pos == SIZE_MAX) break;
        if (sub_push(r, line, &v, s, pos + sep->len, j)) return -1;
        j = pos;
      }
      if (sub_push(r, line, &v, s, 0, j)) return -1;
      vec_reverse(&v);
    }
  }
  return new_list(r, line, v.v, v.n, 0, out);
}

static int is_linebreak(uint32_t c) {
  return c == '\n' || c == '\r' || c == 0x0B || c == 0x0C || c == 0x1C || c == 0x1D || c == 0x1E || c == 0x85 ||
         c == 0x2028 || c == 0x2029;
}

static int s_splitlines(tm_render *r, uint32_t line, const tm_str *s, int keepends, vec *v) {
  size_t i = 0, len = s->len;
  if (tm_charge(r, line, len / 8)) return -1;
  while (i < len) {
    size_t j = i, adv = 1;
    while (i < len && !is_linebreak(tm_utf8_dec(s->p + i, len - i, &adv))) i += adv;
    size_t eol = i;
    if (i < len) {
      if (s->p[i] == '\r' && i + 1 < len && s->p[i + 1] == '\n') i += 2;
      else i += adv;
      if (keepends) eol = i;
    }
    if (sub_push(r, line, v, s, j, eol)) return -1;
  }
  return 0;
}

static int s_replace(tm_render *r, uint32_t line, const tm_str *s, const tm_str *old, const tm_str *nw, int64_t count,
                     tm_val *out) {
  if (tm_charge(r, line, s->len / 8)) return -1;
  tm_buf b;
  tm_buf_init(&b, &r->arena, r->max_output);
  uint64_t left = count < 0 ? UINT64_MAX : (uint64_t)count;
  if (!old->len) {
    size_t i = 0;
    while (i <= s->len) {
      if (left) {
        if (tm_buf_str(&b, nw)) return tm_fail_mem(r, line);
        left--;
      }
      if (i == s->len) break;
      size_t adv;
      tm_utf8_dec(s->p + i, s->len - i, &adv);
      if (tm_buf_sub(&b, s, i, adv)) return tm_fail_mem(r, line);
      i += adv;
      if (tm_charge(r, line, 1)) return -1;
    }
    return new_str(r, line, &b, out);
  }
  size_t i = 0;
  while (left) {
    const char *f = memmem(s->p + i, s->len - i, old->p, old->len);
    if (!f) break;
    size_t pos = (size_t)(f - s->p);
    if (tm_buf_sub(&b, s, i, pos - i) || tm_buf_str(&b, nw)) return tm_fail_mem(r, line);
    i = pos + old->len;
    left--;
  }
  if (tm_buf_sub(&b, s, i, s->len - i)) return tm_fail_mem(r, line);
  return new_str(r, line, &b, out);
}

static size_t cp_to_byte(const tm_str *s, size_t idx) {
  size_t i = 0;
  while (idx && i < s->len) {
    i++;
    while (i < s->len && ((unsigned char)s->p[i] & 0xC0) == 0x80) i++;
    idx--;
  }
  return i;
}

/* start/end arguments (code points, None allowed, negatives from the end) -> a byte range. 0 if start > len. */
static int cp_range(tm_render *r, uint32_t line, const tm_str *s, tm_val st, tm_val en, size_t *b0, size_t *b1,
                    size_t *cp0) {
  int64_t len = (int64_t)tm_utf8_count(s->p, s->len), a = 0, e = len;
  if (st.kind != TV_NONE && st.kind != TV_UNDEF && as_int_arg(r, line, "slice index", st, &a)) return -1;
  if (en.kind != TV_NONE && en.kind != TV_UNDEF && as_int_arg(r, line, "slice index", en, &e)) return -1;
  if (a < 0) a = a + len < 0 ? 0 : a + len;
  if (e < 0) e = e + len < 0 ? 0 : e + len;
  if (e > len) e = len;
  if (a > len) return 0;
  if (e < a) e = a;
  *cp0 = (size_t)a;
  *b0 = cp_to_byte(s, (size_t)a);
  *b1 = cp_to_byte(s, (size_t)e);
  return 1;
}

/* find/rfind/index/rindex/count */
static int s_find(tm_render *r, uint32_t line, const tm_str *s, const tm_args *a, int mode, tm_val *out) {
  static const char *const params[] = {"sub", "start", "end"};
  tm_val v[3];
  uint8_t g[3];
  if (tm_bind(r, line, "find", params, 3, a, v, g)) return -1;
  if (!g[0]) return tm_fail(r, line, HEED_E_INVALID, "find() takes at least 1 argument");
  if (v[0].kind != TV_STR) return tm_fail(r, line, HEED_E_INVALID, "must be str, not %s", tm_type_name(v[0]));
  const tm_str *sub = v[0].s;
  if (tm_charge(r, line, s->len / 8)) return -1;
  size_t b0, b1, c0;
  int ok = cp_range(r, line, s, g[1] ? v[1] : tv_none(), g[2] ? v[2] : tv_none(), &b0, &b1, &c0);
  if (ok < 0) return -1;
  if (mode == 4) { /* count */
    int64_t n = 0;
    if (ok) {
      if (!sub->len) n = (int64_t)tm_utf8_count(s->p + b0, b1 - b0) + 1;
      else
        for (size_t i = b0; i + sub->len <= b1;) {
          const char *f = memmem(s->p + i, b1 - i, sub->p, sub->len);
          if (!f) break;
          n++;
          i = (size_t)(f - s->p) + sub->len;
        }
    }
    *out = tv_int(n);
    return 0;
  }
  int64_t found = -1;
  if (ok && sub->len <= b1 - b0) {
    if (mode & 1) { /* from the right */
      for (size_t k = b1 - sub->len + 1; k-- > b0;)
        if (memcmp(s->p + k, sub->p, sub->len) == 0) {
          found = (int64_t)(c0 + tm_utf8_count(s->p + b0, k - b0));
          break;
        }
    } else {
      const char *f = sub->len ? memmem(s->p + b0, b1 - b0, sub->p, sub->len) : s->p + b0;
      if (f) found = (int64_t)(c0 + tm_utf8_count(s->p + b0, (size_t)(f - s->p) - b0));
    }
  }
  if (found < 0 && (mode & 2)) return tm_fail(r, line, HEED_E_INVALID, "substring not found");
  *out = tv_int(found);
  return 0;
}

static int s_startswith(tm_render *r, uint32_t line, const tm_str *s, const tm_args *a, int ends, tm_val *out) {
  static const char *const params[] = {"prefix", "start", "end"};
  tm_val v[3];
  uint8_t g[3];
  if (tm_bind(r, line, ends ? "endswith" : "startswith", params, 3, a, v, g)) return -1;
  if (!g[0])
    return tm_fail(r, line, HEED_E_INVALID, "%s() takes at least 1 argument", ends ? "endswith" : "startswith");
  size_t b0 = 0, b1 = s->len, c0;
  int ok = 1;
  if (g[1] || g[2]) ok = cp_range(r, line, s, g[1] ? v[1] : tv_none(), g[2] ? v[2] : tv_none(), &b0, &b1, &c0);
  if (ok < 0) return -1;
  const tm_val *cands = &v[0];
  size_t nc = 1;
  if (v[0].kind == TV_LIST && (v[0].flags & TV_TUPLE)) {
    cands = v[0].l->it;
    nc = v[0].l->n;
  }
  int res = 0;
  for (size_t k = 0; k < nc; k++) {
    if (cands[k].kind != TV_STR)
      return tm_fail(r, line, HEED_E_INVALID, "%s first arg must be str or a tuple of str, not %s",
                     ends ? "endswith" : "startswith", tm_type_name(cands[k]));
    const tm_str *p = cands[k].s;
    if (ok && p->len <= b1 - b0 && memcmp(ends ? s->p + b1 - p->len : s->p + b0, p->p, p->len) == 0) res = 1;
  }
  *out = tv_bool(res);
  return 0;
}

static int s_join(tm_render *r, uint32_t line, const tm_str *sep, tm_val seq, tm_val *out) {
  const tm_val *items;
  size_t n;
  if (tm_items(r, line, seq, &items, &n)) return -1;
  tm_buf b;
  tm_buf_init(&b, &r->arena, r->max_output);
  for (size_t i = 0; i < n; i++) {
    if (items[i].kind != TV_STR)
      return tm_fail(r, line, HEED_E_INVALID, "sequence item %zu: expected str instance, %s found", i,
                     tm_type_name(items[i]));
    if ((i && tm_buf_str(&b, sep)) || tm_buf_str(&b, items[i].s)) return tm_fail_mem(r, line);
  }
  if (tm_charge(r, line, b.len / 16)) return -1;
  return new_str(r, line, &b, out);
}

/* str.center/ljust/rjust: align 0 center, 1 left, 2 right */
static int s_pad(tm_render *r, uint32_t line, const tm_str *s, int64_t width, const tm_str *fill, int align,
                 tm_val *out) {
  int64_t len = (int64_t)tm_utf8_count(s->p, s->len);
  if (width <= len) {
    *out = tv_str(s);
    return 0;
  }
  if (fill && tm_utf8_count(fill->p, fill->len) != 1)
    return tm_fail(r, line, HEED_E_INVALID, "the fill character must be exactly one character long");
  int64_t marg = width - len, left;
  if (align == 0) left = marg / 2 + (marg & width & 1);
  else if (align == 1) left = 0;
  else left = marg;
  if ((uint64_t)marg > r->max_output || (uint64_t)marg * (fill ? fill->len : 1) > r->max_output)
    return tm_fail_mem(r, line);
  if (tm_charge(r, line, (uint64_t)marg / 16)) return -1;
  tm_buf b;
  tm_buf_init(&b, &r->arena, r->max_output);
  for (int64_t k = 0; k < left; k++)
    if (fill ? tm_buf_str(&b, fill) : tm_buf_putc(&b, ' ', 0)) return tm_fail_mem(r, line);
  if (tm_buf_str(&b, s)) return tm_fail_mem(r, line);
  for (int64_t k = 0; k < marg - left; k++)
    if (fill ? tm_buf_str(&b, fill) : tm_buf_putc(&b, ' ', 0)) return tm_fail_mem(r, line);
  return new_str(r, line, &b, out);
}

/* ---------- str.format ---------- */

/* A format spec applied to v: [[fill]align][sign][0][width][.precision][type]. */
static int fmt_field(tm_render *r, uint32_t line, tm_buf *b, tm_val v, const char *spec, size_t sn, char conv) {
  const tm_str *s = NULL;
  if (conv == 'r' || conv == 'a') {
    tm_buf rb;
    tm_buf_init(&rb, &r->arena, r->max_output);
    if (tm_val_repr(r, line, &rb, v)) return -1;
    if (!(s = tm_buf_finish(&rb, &r->arena))) return tm_fail_mem(r, line);
    v = tv_str(s);
  } else if (conv == 's') {
    if (tm_to_str(r, line, v, &s)) return -1;
    v = tv_str(s);
  }
  if (!sn) return tm_val_str(r, line, b, v);
  size_t i = 0;
  uint32_t fill = ' ';
  char align = 0;
  size_t adv = 0;
  if (sn >= 2) {
    uint32_t c = tm_utf8_dec(spec, sn, &adv);
    if (adv < sn && strchr("<>^=", spec[adv])) {
      fill = c;
      align = spec[adv];
      i = adv + 1;
    }
  }
  if (!align && i < sn && strchr("<>^=", spec[i])) align = spec[i++];
  char sign = 0;
  if (i < sn && strchr("+- ", spec[i])) sign = spec[i++];
  int zero = 0;
  if (i < sn && spec[i] == '0') {
    zero = 1;
    i++;
  }
  long width = 0, prec = -1;
  while (i < sn && spec[i] >= '0' && spec[i] <= '9' && width < 100000) width = width * 10 + (spec[i++] - '0');
  if (i < sn && spec[i] == '.') {
    i++;
    prec = 0;
    while (i < sn && spec[i] >= '0' && spec[i] <= '9' && prec < 1000) prec = prec * 10 + (spec[i++] - '0');
  }
  char type = i < sn ? spec[i++] : 0;
  if (i != sn) return tm_fail(r, line, HEED_E_UNSUPPORTED, "format spec '%.*s' is not supported", (int)sn, spec);
  char tmp[1200];
  const char *body;
  size_t blen;
  int numeric = tm_is_number(v);
  if (v.kind == TV_STR && (!type || type == 's')) {
    s = v.s;
    blen = s->len;
    if (prec >= 0) blen = cp_to_byte(s, (size_t)prec);
    body = NULL;
    if (!align) align = '<';
  } else if (numeric && (type == 'd' || (!type && v.kind != TV_FLOAT && prec < 0))) {
    if (v.kind == TV_FLOAT)
      return tm_fail(r, line, HEED_E_INVALID, "unknown format code 'd' for object of type 'float'");
    long long x = v.kind == TV_INT ? v.i : v.b;
    int k = snprintf(tmp, sizeof tmp, sign == '+' ? "%+lld" : sign == ' ' ? "% lld" : "%lld", x);
    body = tmp;
    blen = (size_t)k;
  } else if (numeric && (!type || strchr("fFeEgG%", type))) {
    double x = tm_num(v);
    char f[16];
    int k;
    if (!type) { /* like repr, or 'g' with the precision */
      if (prec < 0) k = (int)tm_fmt_float(x, tmp);
      else {
        snprintf(f, sizeof f, "%%%s.%ldg", sign == '+' ? "+" : sign == ' ' ? " " : "", prec ? prec : 1);
        k = snprintf(tmp, sizeof tmp, f, x);
      }
    } else if (type == '%') {
      snprintf(f, sizeof f, "%%%s.%ldf%%%%", sign == '+' ? "+" : sign == ' ' ? " " : "", prec < 0 ? 6 : prec);
      k = snprintf(tmp, sizeof tmp, f, x * 100);
    } else {
      snprintf(f, sizeof f, "%%%s.%ld%c", sign == '+' ? "+" : sign == ' ' ? " " : "", prec < 0 ? 6 : prec, type);
      k = snprintf(tmp, sizeof tmp, f, x);
    }
    if (k < 0 || (size_t)k >= sizeof tmp) return tm_fail(r, line, HEED_E_UNSUPPORTED, "format field too wide");
    body = tmp;
    blen = (size_t)k;
  } else if ((type == 'x' || type == 'X' || type == 'o' || type == 'b') && (v.kind == TV_INT || v.kind == TV_BOOL)) {
    long long x = v.kind == TV_INT ? v.i : v.b;
    int k;
    if (type == 'b') {
      char bits[70];
      int nb = 0;
      unsigned long long ux = x < 0 ? 0ULL - (unsigned long long)x : (unsigned long long)x;
      do bits[nb++] = (char)('0' + (ux & 1));
      while (ux >>= 1);
      k = 0;
      if (x < 0) tmp[k++] = '-';
      while (nb) tmp[k++] = bits[--nb];
    } else {
      char f[8] = {'%', 'l', 'l', type, 0};
      k = x < 0 ? snprintf(tmp, sizeof tmp, "-") : 0;
      k += snprintf(tmp + k, sizeof tmp - (size_t)k, f, x < 0 ? 0ULL - (unsigned long long)x : (unsigned long long)x);
    }
    body = tmp;
    blen = (size_t)k;
  } else {
    return tm_fail(r, line, HEED_E_UNSUPPORTED, "format spec '%.*s' for a %s is not supported", (int)sn, spec,
                   tm_type_name(v));
  }
  if (!align) align = '>';
  if (zero && align == '>' && numeric) {
    fill = '0';
    align = '=';
  }
  size_t cps = body ? blen : tm_utf8_count(s->p, blen);
  size_t pad = width > 0 && (size_t)width > cps ? (size_t)width - cps : 0;
  size_t left = align == '<' ? 0 : align == '^' ? pad / 2 : pad;
  char fu[4];
  size_t fl = tm_utf8_enc(fill, fu);
  size_t skip = 0;
  if (align == '=' && body && blen && (body[0] == '-' || body[0] == '+' || body[0] == ' ')) {
    if (tm_buf_put(b, body, 1, 0)) return tm_fail_mem(r, line);
    skip = 1;
  }
  for (size_t k = 0; k < left; k++)
    if (tm_buf_put(b, fu, fl, 0)) return tm_fail_mem(r, line);
  if (body ? tm_buf_put(b, body + skip, blen - skip, 0) : tm_buf_sub(b, s, 0, blen)) return tm_fail_mem(r, line);
  for (size_t k = left; k < pad; k++)
    if (tm_buf_put(b, fu, fl, 0)) return tm_fail_mem(r, line);
  return 0;
}

static int s_format(tm_render *r, uint32_t line, const tm_str *f, const tm_args *a, tm_val *out) {
  tm_buf b;
  tm_buf_init(&b, &r->arena, r->max_output);
  size_t i = 0, auto_idx = 0;
  int manual = 0;
  while (i < f->len) {
    char c = f->p[i];
    if (c == '{' && i + 1 < f->len && f->p[i + 1] == '{') {
      if (tm_buf_sub(&b, f, i, 1)) return tm_fail_mem(r, line);
      i += 2;
      continue;
    }
    if (c == '}') {
      if (i + 1 < f->len && f->p[i + 1] == '}') {
        if (tm_buf_sub(&b, f, i, 1)) return tm_fail_mem(r, line);
        i += 2;
        continue;
      }
      return tm_fail(r, line, HEED_E_INVALID, "single '}' encountered in format string");
    }
    if (c != '{') {
      size_t j = i;
      while (j < f->len && f->p[j] != '{' && f->p[j] != '}') j++;
      if (tm_buf_sub(&b, f, i, j - i)) return tm_fail_mem(r, line);
      i = j;
      continue;
    }
    size_t j = i + 1;
    int depth = 1;
    while (j < f->len && depth) {
      if (f->p[j] == '{') depth++;
      else if (f->p[j] == '}') depth--;
      if (depth) j++;
    }
    if (j >= f->len) return tm_fail(r, line, HEED_E_INVALID, "expected '}' before end of string");
    const char *fld = f->p + i + 1;
    size_t fn = j - i - 1;
    i = j + 1;
    size_t k = 0;
    while (k < fn && fld[k] != '.' && fld[k] != '[' && fld[k] != '!' && fld[k] != ':') k++;
    tm_val v;
    if (k == 0) {
      if (manual) return tm_fail(r, line, HEED_E_INVALID, "cannot switch from manual field numbering to automatic");
      if (auto_idx >= a->npos) return tm_fail(r, line, HEED_E_INVALID, "Replacement index %zu out of range", auto_idx);
      v = a->pos[auto_idx++];
    } else if (fld[0] >= '0' && fld[0] <= '9') {
      size_t idx = 0;
      for (size_t q = 0; q < k; q++) {
        if (fld[q] < '0' || fld[q] > '9') return tm_fail(r, line, HEED_E_INVALID, "bad format field");
        idx = idx * 10 + (size_t)(fld[q] - '0');
        if (idx > 1000000) break;
      }
      if (auto_idx) return tm_fail(r, line, HEED_E_INVALID, "cannot switch from automatic field numbering to manual");
      manual = 1;
      if (idx >= a->npos) return tm_fail(r, line, HEED_E_INVALID, "Replacement index %zu out of range", idx);
      v = a->pos[idx];
    } else {
      size_t q = 0;
      for (; q < a->nkw; q++)
        if (a->kwn[q]->len == k && memcmp(a->kwn[q]->p, fld, k) == 0) break;
      if (q == a->nkw) return tm_fail(r, line, HEED_E_INVALID, "format: no argument named '%.*s'", (int)k, fld);
      v = a->kwv[q];
    }
    /* .attr and [key] */
    while (k < fn && (fld[k] == '.' || fld[k] == '[')) {
      if (fld[k] == '.') {
        size_t e = ++k;
        while (e < fn && fld[e] != '.' && fld[e] != '[' && fld[e] != '!' && fld[e] != ':') e++;
        if (tm_getattr(r, line, v, fld + k, e - k, &v)) return -1;
        k = e;
      } else {
        size_t e = ++k;
        while (e < fn && fld[e] != ']') e++;
        if (e >= fn) return tm_fail(r, line, HEED_E_INVALID, "Missing ']' in format string");
        tm_val key;
        int digits = e > k;
        for (size_t q = k; q < e; q++) digits &= fld[q] >= '0' && fld[q] <= '9';
        if (digits) key = tv_int(strtoll(fld + k, NULL, 10));
        else if (str_lit(r, line, fld + k, e - k, &key)) return -1;
        if (tm_getitem(r, line, v, key, &v)) return -1;
        k = e + 1;
      }
    }
    char conv = 0;
    if (k < fn && fld[k] == '!') {
      if (k + 1 >= fn) return tm_fail(r, line, HEED_E_INVALID, "end of string while looking for conversion specifier");
      conv = fld[k + 1];
      if (conv != 'r' && conv != 's' && conv != 'a')
        return tm_fail(r, line, HEED_E_INVALID, "Unknown conversion specifier %c", conv);
      k += 2;
    }
    const char *spec = "";
    size_t sn = 0;
    if (k < fn && fld[k] == ':') {
      spec = fld + k + 1;
      sn = fn - k - 1;
      if (memchr(spec, '{', sn)) return tm_fail(r, line, HEED_E_UNSUPPORTED, "nested format fields are not supported");
    } else if (k != fn) {
      return tm_fail(r, line, HEED_E_INVALID, "bad format field");
    }
    if (v.kind == TV_UNDEF && !sn && !conv) continue; /* str(Undefined) */
    if (fmt_field(r, line, &b, v, spec, sn, conv)) return -1;
  }
  return new_str(r, line, &b, out);
}

/* ---------- attribute paths (sort(attribute=...), map(attribute=...)) ---------- */

static int attr_path(tm_render *r, uint32_t line, tm_val item, tm_val attr, tm_val dflt, int has_default, tm_val *out) {
  if (attr.kind == TV_NONE || attr.kind == TV_UNDEF) {
    *out = item;
    return 0;
  }
  if (attr.kind != TV_STR) {
    if (tm_getitem(r, line, item, attr, &item)) return -1;
    if (has_default && item.kind == TV_UNDEF) item = dflt;
    *out = item;
    return 0;
  }
  const tm_str *s = attr.s;
  size_t i = 0;
  for (;;) {
    const char *dot = memchr(s->p + i, '.', s->len - i);
    size_t e = dot ? (size_t)(dot - s->p) : s->len;
    int digits = e > i;
    for (size_t k = i; k < e; k++) digits &= s->p[k] >= '0' && s->p[k] <= '9';
    tm_val key;
    if (digits && e - i < 18) key = tv_int(strtoll(s->p + i, NULL, 10));
    else {
      const tm_str *part = tm_str_sub(&r->arena, s, i, e - i);
      if (!part) return tm_fail_mem(r, line);
      key = tv_str(part);
    }
    if (tm_getitem(r, line, item, key, &item)) return -1;
    if (has_default && item.kind == TV_UNDEF) item = dflt;
    if (!dot) break;
    i = e + 1;
  }
  *out = item;
  return 0;
}

static int lower_if_str(tm_render *r, uint32_t line, tm_val v, tm_val *out) {
  if (v.kind == TV_STR) return s_case(r, line, v.s, CASE_LOWER, out);
  *out = v;
  return 0;
}

/* ---------- stable sorting ---------- */

typedef struct sort_ctx {
  tm_render *r;
  uint32_t line;
  const tm_val *keys; /* per item: nk key values */
  size_t nk;
  int reverse;
  int failed;
} sort_ctx;

static int key_cmp(sort_ctx *c, size_t a, size_t b) {
  if (c->failed) return 0;
  const tm_val *x = c->keys + a * c->nk, *y = c->keys + b * c->nk;
  int res = 0;
  for (size_t k = 0; k < c->nk; k++) {
    if (tm_equal(x[k], y[k])) continue;
    if (tm_order(c->r, c->line, x[k], y[k], &res)) {
      c->failed = 1;
      return 0;
    }
    break;
  }
  return c->reverse ? -res : res;
}

/* Sorts idx[0..n) by key, stably (merge sort). */
static int stable_sort(sort_ctx *c, size_t *idx, size_t n) {
  if (tm_charge(c->r, c->line, (uint64_t)n * 8)) return -1;
  size_t *tmp = n ? tm_alloc_n(&c->r->arena, n, sizeof *tmp) : NULL;
  if (n && !tmp) return tm_fail_mem(c->r, c->line);
  for (size_t w = 1; w < n; w *= 2) {
    for (size_t lo = 0; lo < n; lo += 2 * w) {
      size_t mid = lo + w < n ? lo + w : n, hi = lo + 2 * w < n ? lo + 2 * w : n, i = lo, j = mid, k = lo;
      while (i < mid && j < hi) tmp[k++] = key_cmp(c, idx[j], idx[i]) < 0 ? idx[j++] : idx[i++];
      while (i < mid) tmp[k++] = idx[i++];
      while (j < hi) tmp[k++] = idx[j++];
    }
    memcpy(idx, tmp, n * sizeof *idx);
    if (c->failed) return -1;
  }
  return c->failed ? -1 : 0;
}

/* ---------- tests ---------- */

static int py_mod_is(tm_render *r, uint32_t line, tm_val v, tm_val m, int64_t want, int *res) {
  tm_val out;
  if (tm_binop(r, line, OP_MOD, v, m, &out)) return -1;
  *res = tm_equal(out, tv_int(want));
  return 0;
}

static int str_is_case(tm_render *r, uint32_t line, tm_val v, int upper, int *res) {
  const tm_str *s;
  if (tm_to_str(r, line, v, &s)) return -1;
  int cased = 0, ok = 1;
  for (size_t i = 0; i < s->len;) {
    size_t adv;
    uint32_t c = tm_utf8_dec(s->p + i, s->len - i, &adv);
    i += adv;
    if ((upper ? cp_is_lower(c) : cp_is_upper(c)) || cp_is_title(c)) ok = 0;
    if (upper ? cp_is_upper(c) : cp_is_lower(c)) cased = 1;
  }
  *res = ok && cased;
  return 0;
}

int tm_test(tm_render *r, uint32_t line, int id, tm_val v, const tm_args *a, int *res) {
  tm_val arg = a->npos ? a->pos[0] : a->nkw ? a->kwv[0] : tv_undef();
  int need_arg = id == TT_DIVISIBLEBY || id == TT_SAMEAS || id == TT_IN || id >= TT_EQ_OP;
  if (need_arg && a->npos + a->nkw < 1)
    return tm_fail(r, line, HEED_E_INVALID, "test '%s' takes an argument", tm_test_names[id]);
  if (a->npos + a->nkw > (size_t)need_arg)
    return tm_fail(r, line, HEED_E_INVALID, "test '%s' takes %s argument", tm_test_names[id], need_arg ? "one" : "no");
  switch (id) {
  case TT_DEFINED: *res = v.kind != TV_UNDEF; return 0;
  case TT_UNDEFINED: *res = v.kind == TV_UNDEF; return 0;
  case TT_NONE: *res = v.kind == TV_NONE; return 0;
  case TT_BOOLEAN: *res = v.kind == TV_BOOL; return 0;
  case TT_FALSE: *res = v.kind == TV_BOOL && !v.b; return 0;
  case TT_TRUE: *res = v.kind == TV_BOOL && v.b; return 0;
  case TT_INTEGER: *res = v.kind == TV_INT; return 0;
  case TT_FLOAT: *res = v.kind == TV_FLOAT; return 0;
  case TT_NUMBER: *res = tm_is_number(v); return 0;
  case TT_STRING: *res = v.kind == TV_STR; return 0;
  case TT_MAPPING: *res = v.kind == TV_DICT; return 0;
  case TT_SEQUENCE: *res = v.kind == TV_STR || v.kind == TV_LIST || v.kind == TV_DICT || v.kind == TV_UNDEF; return 0;
  case TT_ITERABLE:
    *res = v.kind == TV_STR || v.kind == TV_LIST || v.kind == TV_DICT || v.kind == TV_UNDEF || v.kind == TV_LOOP;
    return 0;
  case TT_CALLABLE:
    /* jinja2's Undefined defines __call__ (to fail) */
    *res = v.kind == TV_MACRO || v.kind == TV_FUNC || v.kind == TV_METHOD || v.kind == TV_LOOP || v.kind == TV_UNDEF;
    return 0;
  case TT_ESCAPED: *res = 0; return 0;
  case TT_ODD: return py_mod_is(r, line, v, tv_int(2), 1, res);
  case TT_EVEN: return py_mod_is(r, line, v, tv_int(2), 0, res);
  case TT_DIVISIBLEBY: return py_mod_is(r, line, v, arg, 0, res);
  case TT_LOWER: return str_is_case(r, line, v, 0, res);
  case TT_UPPER: return str_is_case(r, line, v, 1, res);
  case TT_FILTER: *res = v.kind == TV_STR && tm_filter_lookup(v.s->p, v.s->len) >= 0; return 0;
  case TT_TEST: *res = v.kind == TV_STR && tm_test_lookup(v.s->p, v.s->len) >= 0; return 0;
  case TT_SAMEAS:
    if (v.kind != arg.kind) *res = 0;
    else if (v.kind == TV_NONE || v.kind == TV_UNDEF) *res = v.kind == TV_NONE;
    else if (v.kind == TV_BOOL) *res = v.b == arg.b;
    else if (v.kind == TV_INT) *res = v.i == arg.i && v.i >= -5 && v.i <= 256; /* CPython's small ints */
    else if (v.kind == TV_STR) *res = v.s == arg.s;
    else *res = tm_equal(v, arg) && v.l == arg.l;
    return 0;
  case TT_IN: return tm_compare(r, line, TN_CMP_IN, v, arg, res);
  case TT_EQ_OP:
  case TT_EQ:
  case TT_EQUALTO: return tm_compare(r, line, OP_EQ, v, arg, res);
  case TT_NE_OP:
  case TT_NE: return tm_compare(r, line, OP_NE, v, arg, res);
  case TT_GT_OP:
  case TT_GT:
  case TT_GREATERTHAN: return tm_compare(r, line, OP_GT, v, arg, res);
  case TT_GE_OP:
  case TT_GE: return tm_compare(r, line, OP_GTEQ, v, arg, res);
  case TT_LT_OP:
  case TT_LT:
  case TT_LESSTHAN: return tm_compare(r, line, OP_LT, v, arg, res);
  case TT_LE_OP:
  case TT_LE: return tm_compare(r, line, OP_LTEQ, v, arg, res);
  }
  return tm_fail(r, line, HEED_E_INTERNAL, "unknown test %d", id);
}

/* ---------- filters ---------- */

/* soft_str: strings as they are, undefined as "", the rest through str(). */
static int soft_str(tm_render *r, uint32_t line, tm_val v, const tm_str **out) { return tm_to_str(r, line, v, out); }

static int html_escape(tm_render *r, uint32_t line, const tm_str *s, tm_val *out) {
  tm_buf b;
  tm_buf_init(&b, &r->arena, r->max_output);
  size_t run = 0;
  for (size_t i = 0; i < s->len; i++) {
    const char *rep = NULL;
    switch (s->p[i]) {
    case '&': rep = "&amp;"; break;
    case '<': rep = "&lt;"; break;
    case '>': rep = "&gt;"; break;
    case '"': rep = "&#34;"; break;
    case '\'': rep = "&#39;"; break;
    }
    if (!rep) continue;
    if (tm_buf_sub(&b, s, run, i - run) || tm_buf_put(&b, rep, strlen(rep), tm_str_range_tainted(s, i, 1)))
      return tm_fail_mem(r, line);
    run = i + 1;
  }
  if (tm_buf_sub(&b, s, run, s->len - run)) return tm_fail_mem(r, line);
  return new_str(r, line, &b, out);
}

/* Python's int(str, base) for base 10 (with the usual whitespace, sign and
 * underscores); 0 on failure. */
static int parse_py_int(const tm_str *s, int base, int64_t *out) {
  size_t i = 0, n = s->len;
  while (i < n && tm_is_space((unsigned char)s->p[i])) i++;
  while (n > i && tm_is_space((unsigned char)s->p[n - 1])) n--;
  int neg = 0;
  if (i < n && (s->p[i] == '+' || s->p[i] == '-')) neg = s->p[i++] == '-';
  if (base == 0 || base == 16 || base == 8 || base == 2) {
    if (i + 1 < n && s->p[i] == '0') {
      char x = s->p[i + 1] | 0x20;
      int b = x == 'x' ? 16 : x == 'o' ? 8 : x == 'b' ? 2 : 0;
      if (b && (base == 0 || base == b)) {
        base = b;
        i += 2;
        if (i < n && s->p[i] == '_') i++;
      }
    }
    if (base == 0) base = 10;
  }
  if (base < 2 || base > 36 || i >= n) return 0;
  uint64_t v = 0;
  int prev_us = 1;
  for (; i < n; i++) {
    char c = s->p[i];
    if (c == '_') {
      if (prev_us) return 0;
      prev_us = 1;
      continue;
    }
    int d = c >= '0' && c <= '9' ? c - '0' : (c | 32) >= 'a' && (c | 32) <= 'z' ? (c | 32) - 'a' + 10 : 99;
    if (d >= base) return 0;
    if (v > (UINT64_MAX - (uint64_t)d) / (uint64_t)base) return 0;
    v = v * (uint64_t)base + (uint64_t)d;
    prev_us = 0;
  }
  if (prev_us) return 0;
  if (v > (uint64_t)INT64_MAX + (uint64_t)neg) return 0;
  *out = neg ? (int64_t)(0 - v) : (int64_t)v;
  return 1;
}

/* Python's float(str); 0 on failure. */
static int parse_py_float(const tm_str *s, double *out) {
  size_t i = 0, n = s->len;
  while (i < n && tm_is_space((unsigned char)s->p[i])) i++;
  while (n > i && tm_is_space((unsigned char)s->p[n - 1])) n--;
  if (i >= n || n - i > 400) return 0;
  char tmp[410];
  size_t k = 0;
  int prev_digit = 0;
  for (size_t q = i; q < n; q++) {
    char c = s->p[q];
    if (c == '_') { /* only between digits */
      if (!prev_digit || q + 1 >= n || !(s->p[q + 1] >= '0' && s->p[q + 1] <= '9')) return 0;
      continue;
    }
    prev_digit = c >= '0' && c <= '9';
    tmp[k++] = c;
  }
  tmp[k] = '\0';
  const char *p = tmp;
  if (*p == '+' || *p == '-') p++;
  /* strtod accepts hex and "nan(...)": Python does not */
  if ((p[0] == '0' && (p[1] | 32) == 'x') || strchr(tmp, '(')) return 0;
  if (strncasecmp(p, "inf", 3) == 0 || strncasecmp(p, "nan", 3) == 0) {
    if (!(strcasecmp(p, "inf") == 0 || strcasecmp(p, "infinity") == 0 || strcasecmp(p, "nan") == 0)) return 0;
  }
  char *end;
  double d = strtod(tmp, &end);
  if (end == tmp || *end) return 0;
  *out = d;
  return 1;
}

/* Python's round(x, ndigits) for floats. */
static double py_round(double x, int64_t nd) {
  if (!isfinite(x)) return x;
  if (nd > 320) return x;
  if (nd >= 0) {
    char tmp[800]; /* 309 integer digits and 320 decimals at most */
    snprintf(tmp, sizeof tmp, "%.*f", (int)nd, x);
    return strtod(tmp, NULL);
  }
  if (nd < -320) return copysign(0.0, x);
  double p = pow(10.0, (double)-nd), y = x / p, z = nearbyint(y);
  return z * p;
}

static int f_tojson(tm_render *r, uint32_t line, tm_val v, const tm_args *a, tm_val *out) {
  static const char *const params[] = {"ensure_ascii", "indent", "separators", "sort_keys"};
  tm_val s[4];
  uint8_t g[4];
  if (tm_bind(r, line, "tojson", params, 4, a, s, g)) return -1;
  tm_json_opts o = {.ensure_ascii = g[0] && tm_truthy(s[0]), .sort_keys = g[3] && tm_truthy(s[3])};
  if (g[1] && s[1].kind != TV_NONE) {
    if (s[1].kind == TV_STR) {
      o.indent = s[1].s;
    } else {
      int64_t w = 0;
      if (as_int_arg(r, line, "tojson indent", s[1], &w)) return -1;
      if (w > 1000) return tm_fail(r, line, HEED_E_RANGE, "tojson indent %lld is too large", (long long)w);
      char sp[1001];
      memset(sp, ' ', w > 0 ? (size_t)w : 0);
      const tm_str *is = tm_str_new(&r->arena, sp, w > 0 ? (size_t)w : 0, 0);
      if (!is) return tm_fail_mem(r, line);
      o.indent = is;
    }
  }
  const tm_str *item = NULL, *key = NULL;
  if (g[2] && s[2].kind != TV_NONE) {
    if (s[2].kind != TV_LIST || s[2].l->n != 2 || s[2].l->it[0].kind != TV_STR || s[2].l->it[1].kind != TV_STR)
      return tm_fail(r, line, HEED_E_INVALID, "tojson separators must be a pair of strings");
    item = s[2].l->it[0].s;
    key = s[2].l->it[1].s;
  } else {
    item = tm_str_new(&r->arena, o.indent ? "," : ", ", o.indent ? 1 : 2, 0);
    key = tm_str_new(&r->arena, ": ", 2, 0);
    if (!item || !key) return tm_fail_mem(r, line);
  }
  o.item_sep = item;
  o.key_sep = key;
  tm_buf b;
  tm_buf_init(&b, &r->arena, r->max_output);
  if (tm_val_json(r, line, &b, v, &o, 0)) return -1;
  return new_str(r, line, &b, out);
}

/* select/reject/selectattr/rejectattr */
static int f_select(tm_render *r, uint32_t line, tm_val v, const tm_args *a, int attr, int reject, tm_val *out) {
  if (!tm_truthy(v)) return new_list(r, line, NULL, 0, 0, out);
  const tm_val *items;
  size_t n;
  if (tm_items(r, line, v, &items, &n)) return -1;
  size_t off = 0;
  tm_val attrv = tv_none();
  if (attr) {
    if (a->npos < 1) return tm_fail(r, line, HEED_E_INVALID, "Missing parameter for attribute name");
    attrv = a->pos[0];
    off = 1;
  }
  int test = -1;
  if (a->npos > off) {
    tm_val name = a->pos[off];
    if (name.kind != TV_STR) return tm_fail(r, line, HEED_E_INVALID, "the test name must be a string");
    test = tm_test_lookup(name.s->p, name.s->len);
    if (test < 0) return tm_fail(r, line, HEED_E_INVALID, "no test named '%s'", name.s->p);
  }
  tm_args ta = {.pos = a->pos + off + 1,
                .npos = a->npos > off + 1 ? a->npos - off - 1 : 0,
                .kwn = a->kwn,
                .kwv = a->kwv,
                .nkw = a->nkw};
  vec keep = {0};
  for (size_t i = 0; i < n; i++) {
    tm_val x = items[i];
    if (attr && attr_path(r, line, x, attrv, tv_none(), 0, &x)) return -1;
    int res;
    if (test >= 0) {
      if (tm_test(r, line, test, x, &ta, &res)) return -1;
    } else {
      res = tm_truthy(x);
    }
    if (res != reject && vec_push(r, line, &keep, items[i])) return -1;
  }
  return new_list(r, line, keep.v, keep.n, 0, out);
}

static int f_map(tm_render *r, uint32_t line, tm_val v, const tm_args *a, tm_val *out) {
  if (!tm_truthy(v)) return new_list(r, line, NULL, 0, 0, out);
  const tm_val *items;
  size_t n;
  if (tm_items(r, line, v, &items, &n)) return -1;
  tm_val *res = n ? tm_alloc_n(&r->arena, n, sizeof *res) : NULL;
  if (n && !res) return tm_fail_mem(r, line);
  long ai = -1, di = -1;
  for (size_t k = 0; k < a->nkw; k++) {
    if (tm_str_eqc(a->kwn[k], "attribute")) ai = (long)k;
    else if (tm_str_eqc(a->kwn[k], "default")) di = (long)k;
  }
  if (!a->npos && ai >= 0) {
    if ((size_t)(1 + (di >= 0)) != a->nkw) return tm_fail(r, line, HEED_E_INVALID, "map: unexpected keyword argument");
    tm_val dflt = di >= 0 ? a->kwv[di] : tv_none();
    for (size_t i = 0; i < n; i++)
      if (attr_path(r, line, items[i], a->kwv[ai], dflt, di >= 0 && dflt.kind != TV_NONE, &res[i])) return -1;
  } else {
    if (!a->npos) return tm_fail(r, line, HEED_E_INVALID, "map requires a filter argument");
    if (a->pos[0].kind != TV_STR) return tm_fail(r, line, HEED_E_INVALID, "map: the filter name must be a string");
    int f = tm_filter_lookup(a->pos[0].s->p, a->pos[0].s->len);
    if (f < 0) return tm_fail(r, line, HEED_E_INVALID, "no filter named '%s'", a->pos[0].s->p);
    tm_args fa = *a;
    fa.pos++;
    fa.npos--;
    for (size_t i = 0; i < n; i++)
      if (tm_filter(r, line, f, items[i], &fa, &res[i])) return -1;
  }
  return new_list(r, line, res, n, 0, out);
}

/* sort, dictsort, unique, min, max share the key computation */
static int f_sort(tm_render *r, uint32_t line, tm_val v, int reverse, int case_sensitive, tm_val attribute,
                  tm_val *out) {
  const tm_val *items;
  size_t n;
  if (tm_items(r, line, v, &items, &n)) return -1;
  /* attribute may list several, separated by commas */
  tm_val attrs[16];
  size_t na = 1;
  attrs[0] = attribute;
  if (attribute.kind == TV_STR && memchr(attribute.s->p, ',', attribute.s->len)) {
    tm_val parts = tv_none();
    if (s_split(r, line, attribute.s, tv_str(tm_str_new(&r->arena, ",", 1, 0)), -1, 0, &parts)) return -1;
    if (parts.l->n > HEED_ARRAY_LEN(attrs)) return tm_fail(r, line, HEED_E_RANGE, "too many sort attributes");
    na = parts.l->n;
    memcpy(attrs, parts.l->it, na * sizeof *attrs);
  }
  tm_val *keys = n ? tm_alloc_n(&r->arena, n * na, sizeof *keys) : NULL;
  size_t *idx = n ? tm_alloc_n(&r->arena, n, sizeof *idx) : NULL;
  if (n && (!keys || !idx)) return tm_fail_mem(r, line);
  for (size_t i = 0; i < n; i++) {
    idx[i] = i;
    for (size_t k = 0; k < na; k++) {
      tm_val x;
      if (attr_path(r, line, items[i], attrs[k], tv_none(), 0, &x)) return -1;
      if (!case_sensitive && lower_if_str(r, line, x, &x)) return -1;
      keys[i * na + k] = x;
    }
  }
  sort_ctx c = {.r = r, .line = line, .keys = keys, .nk = na, .reverse = reverse};
  if (stable_sort(&c, idx, n)) return -1;
  tm_list *l = tm_list_new(&r->arena, n);
  if (!l) return tm_fail_mem(r, line);
  for (size_t i = 0; i < n; i++) l->it[i] = items[idx[i]];
  *out = tv_list(l, 0);
  return 0;
}

static int f_minmax(tm_render *r, uint32_t line, tm_val v, int max, int case_sensitive, tm_val attribute, tm_val *out) {
  const tm_val *items;
  size_t n;
  if (tm_items(r, line, v, &items, &n)) return -1;
  if (!n) {
    *out = tm_undef_hint("No aggregated item, sequence was empty.");
    return 0;
  }
  size_t best = 0;
  tm_val bk;
  if (attr_path(r, line, items[0], attribute, tv_none(), 0, &bk)) return -1;
  if (!case_sensitive && lower_if_str(r, line, bk, &bk)) return -1;
  for (size_t i = 1; i < n; i++) {
    tm_val k;
    int c;
    if (attr_path(r, line, items[i], attribute, tv_none(), 0, &k)) return -1;
    if (!case_sensitive && lower_if_str(r, line, k, &k)) return -1;
    if (tm_order(r, line, k, bk, &c)) return -1;
    if (max ? c > 0 : c < 0) {
      best = i;
      bk = k;
    }
  }
  *out = items[best];
  return 0;
}

static int f_indent(tm_render *r, uint32_t line, tm_val v, tm_val width, int first, int blank, tm_val *out) {
  if (v.kind == TV_UNDEF) return tm_undef_error(r, line, v);
  if (v.kind != TV_STR) return tm_fail(r, line, HEED_E_INVALID, "indent: a string is needed, not %s", tm_type_name(v));
  tm_buf ib;
  tm_buf_init(&ib, &r->arena, 4096);
  if (width.kind == TV_STR) {
    if (tm_buf_str(&ib, width.s)) return tm_fail_mem(r, line);
  } else {
    int64_t w = 0;
    if (as_int_arg(r, line, "indent width", width, &w)) return -1;
    for (int64_t k = 0; k < w; k++)
      if (tm_buf_putc(&ib, ' ', 0)) return tm_fail(r, line, HEED_E_RANGE, "indent width too large");
  }
  const tm_str *ind = tm_buf_finish(&ib, &r->arena);
  if (!ind) return tm_fail_mem(r, line);
  /* s + "\n", split into lines (Python's splitlines) */
  tm_buf sb;
  tm_buf_init(&sb, &r->arena, r->max_output);
  if (tm_buf_str(&sb, v.s) || tm_buf_putc(&sb, '\n', 0)) return tm_fail_mem(r, line);
  const tm_str *s = tm_buf_finish(&sb, &r->arena);
  if (!s) return tm_fail_mem(r, line);
  vec lines = {0};
  if (s_splitlines(r, line, s, 0, &lines)) return -1;
  tm_buf b;
  tm_buf_init(&b, &r->arena, r->max_output);
  if (first && tm_buf_str(&b, ind)) return tm_fail_mem(r, line);
  for (size_t i = 0; i < lines.n; i++) {
    const tm_str *ln = lines.v[i].s;
    if (i) {
      if (tm_buf_putc(&b, '\n', 0)) return tm_fail_mem(r, line);
      if ((blank || ln->len) && tm_buf_str(&b, ind)) return tm_fail_mem(r, line);
    }
    if (tm_buf_str(&b, ln)) return tm_fail_mem(r, line);
  }
  return new_str(r, line, &b, out);
}

#define BIND(name, ...)                              \
  static const char *const params[] = {__VA_ARGS__}; \
  tm_val s[HEED_ARRAY_LEN(params)];                  \
  uint8_t g[HEED_ARRAY_LEN(params)];                 \
  if (tm_bind(r, line, name, params, HEED_ARRAY_LEN(params), a, s, g)) return -1;

#define NOARGS(name) \
  if (a->npos || a->nkw) return tm_fail(r, line, HEED_E_INVALID, "%s takes no arguments", name);

int tm_filter(tm_render *r, uint32_t line, int id, tm_val v, const tm_args *a, tm_val *out) {
  if (tm_charge(r, line, 1)) return -1;
  const tm_str *str;
  switch (id) {
  case TF_DEFAULT:
  case TF_D: {
    BIND("default", "default_value", "boolean");
    if (v.kind == TV_UNDEF || (g[1] && tm_truthy(s[1]) && !tm_truthy(v))) {
      if (g[0]) *out = s[0];
      else return str_lit(r, line, "", 0, out);
    } else {
      *out = v;
    }
    return 0;
  }
  case TF_LENGTH:
  case TF_COUNT: {
    NOARGS("length");
    switch (v.kind) {
    case TV_UNDEF: *out = tv_int(0); return 0;
    case TV_STR: *out = tv_int((int64_t)tm_utf8_count(v.s->p, v.s->len)); return 0;
    case TV_LIST: *out = tv_int((int64_t)v.l->n); return 0;
    case TV_DICT: *out = tv_int((int64_t)v.d->n); return 0;
    case TV_LOOP: *out = tv_int((int64_t)v.loop->n); return 0;
    default: return tm_fail(r, line, HEED_E_INVALID, "object of type '%s' has no len()", tm_type_name(v));
    }
  }
  case TF_STRING:
  case TF_SAFE:
    NOARGS(id == TF_SAFE ? "safe" : "string");
    if (soft_str(r, line, v, &str)) return -1;
    *out = tv_str(str);
    return 0;
  case TF_E:
  case TF_ESCAPE:
  case TF_FORCEESCAPE:
    NOARGS("escape");
    if (soft_str(r, line, v, &str)) return -1;
    return html_escape(r, line, str, out);
  case TF_UPPER:
  case TF_LOWER:
  case TF_CAPITALIZE:
  case TF_TITLE:
    NOARGS(tm_filter_names[id]);
    if (soft_str(r, line, v, &str)) return -1;
    return s_case(r, line, str,
                  id == TF_UPPER        ? CASE_UPPER
                  : id == TF_LOWER      ? CASE_LOWER
                  : id == TF_CAPITALIZE ? CASE_CAPITALIZE
                                        : CASE_JTITLE,
                  out);
  case TF_TRIM: {
    BIND("trim", "chars");
    if (soft_str(r, line, v, &str)) return -1;
    return s_strip(r, line, str, g[0] ? s[0] : tv_none(), 3, out);
  }
  case TF_REPLACE: {
    BIND("replace", "old", "new", "count");
    if (!g[0] || !g[1]) return tm_fail(r, line, HEED_E_INVALID, "replace needs old and new");
    const tm_str *o, *nw;
    int64_t cnt = -1;
    if (soft_str(r, line, v, &str) || tm_to_str(r, line, s[0], &o) || tm_to_str(r, line, s[1], &nw)) return -1;
    if (g[2] && s[2].kind != TV_NONE && as_int_arg(r, line, "replace count", s[2], &cnt)) return -1;
    return s_replace(r, line, str, o, nw, cnt, out);
  }
  case TF_CENTER: {
    BIND("center", "width");
    int64_t w = 80;
    if (g[0] && as_int_arg(r, line, "center width", s[0], &w)) return -1;
    if (soft_str(r, line, v, &str)) return -1;
    return s_pad(r, line, str, w, NULL, 0, out);
  }
  case TF_TOJSON: return f_tojson(r, line, v, a, out);
  case TF_FIRST:
  case TF_LAST: {
    NOARGS(tm_filter_names[id]);
    if (v.kind == TV_UNDEF) {
      *out = tm_undef_hint(id == TF_FIRST ? "No first item, sequence was empty." : "No last item, sequence was empty.");
      return 0;
    }
    const tm_val *items;
    size_t n;
    if (v.kind == TV_STR && v.s->len) { /* avoid splitting the whole string */
      size_t b = id == TF_FIRST ? 0 : prev_cp(v.s, v.s->len), adv;
      tm_utf8_dec(v.s->p + b, v.s->len - b, &adv);
      const tm_str *c = tm_str_sub(&r->arena, v.s, b, adv);
      if (!c) return tm_fail_mem(r, line);
      *out = tv_str(c);
      return 0;
    }
    if (tm_items(r, line, v, &items, &n)) return -1;
    if (!n)
      *out = tm_undef_hint(id == TF_FIRST ? "No first item, sequence was empty." : "No last item, sequence was empty.");
    else *out = items[id == TF_FIRST ? 0 : n - 1];
    return 0;
  }
  case TF_LIST: {
    NOARGS("list");
    const tm_val *items;
    size_t n;
    if (tm_items(r, line, v, &items, &n)) return -1;
    return new_list(r, line, items, n, 0, out);
  }
  case TF_ITEMS: {
    NOARGS("items");
    if (v.kind == TV_UNDEF) return new_list(r, line, NULL, 0, 0, out);
    if (v.kind != TV_DICT) return tm_fail(r, line, HEED_E_INVALID, "Can only get item pairs from a mapping.");
    return tm_method_call(r, line, v, 0 /* M_ITEMS */, a, out);
  }
  case TF_JOIN: {
    BIND("join", "d", "attribute");
    const tm_val *items;
    size_t n;
    const tm_str *sep = NULL;
    if (g[0] && tm_to_str(r, line, s[0], &sep)) return -1;
    if (tm_items(r, line, v, &items, &n)) return -1;
    tm_buf b;
    tm_buf_init(&b, &r->arena, r->max_output);
    for (size_t i = 0; i < n; i++) {
      tm_val x = items[i];
      if (g[1] && attr_path(r, line, x, s[1], tv_none(), 0, &x)) return -1;
      if (i && sep && tm_buf_str(&b, sep)) return tm_fail_mem(r, line);
      if (tm_val_str(r, line, &b, x)) return -1;
    }
    if (tm_charge(r, line, b.len / 16)) return -1;
    return new_str(r, line, &b, out);
  }
  case TF_REVERSE: {
    NOARGS("reverse");
    if (v.kind == TV_STR) {
      /* s[::-1] */
      const tm_str *s0 = v.s;
      tm_buf b;
      tm_buf_init(&b, &r->arena, r->max_output);
      size_t i = s0->len;
      while (i > 0) {
        size_t k = prev_cp(s0, i);
        if (tm_buf_sub(&b, s0, k, i - k)) return tm_fail_mem(r, line);
        i = k;
      }
      return new_str(r, line, &b, out);
    }
    const tm_val *items;
    size_t n;
    if (tm_items(r, line, v, &items, &n)) return -1;
    tm_list *l = tm_list_new(&r->arena, n);
    if (!l) return tm_fail_mem(r, line);
    for (size_t i = 0; i < n; i++) l->it[i] = items[n - 1 - i];
    *out = tv_list(l, 0);
    return 0;
  }
  case TF_ABS:
    NOARGS("abs");
    if (v.kind == TV_FLOAT) *out = tv_float(fabs(v.f));
    else if (v.kind == TV_INT || v.kind == TV_BOOL) {
      int64_t x = v.kind == TV_INT ? v.i : v.b;
      if (x == INT64_MIN) return tm_fail(r, line, HEED_E_UNSUPPORTED, "integer result does not fit in 64 bits");
      *out = tv_int(x < 0 ? -x : x);
    } else if (v.kind == TV_UNDEF) return tm_undef_error(r, line, v);
    else return tm_fail(r, line, HEED_E_INVALID, "bad operand type for abs(): '%s'", tm_type_name(v));
    return 0;
  case TF_INT: {
    BIND("int", "default", "base");
    int64_t base = 10, iv;
    tm_val dflt = g[0] ? s[0] : tv_int(0);
    if (g[1] && as_int_arg(r, line, "int base", s[1], &base)) return -1;
    if (v.kind == TV_UNDEF) return tm_undef_error(r, line, v);
    if (v.kind == TV_INT || v.kind == TV_BOOL) *out = tv_int(v.kind == TV_INT ? v.i : v.b);
    else if (v.kind == TV_FLOAT) {
      if (!isfinite(v.f)) *out = dflt;
      else if (fabs(v.f) >= 9.2e18)
        return tm_fail(r, line, HEED_E_UNSUPPORTED,
                       "int of %g does not fit in 64 bits (Python would give a big integer)", v.f);
      else *out = tv_int((int64_t)v.f);
    } else if (v.kind == TV_STR) {
      double d;
      if (parse_py_int(v.s, (int)base, &iv)) *out = tv_int(iv);
      else if (parse_py_float(v.s, &d) && isfinite(d) && fabs(d) < 9.2e18) *out = tv_int((int64_t)d);
      else *out = dflt;
    } else {
      *out = dflt;
    }
    return 0;
  }
  case TF_FLOAT: {
    BIND("float", "default");
    tm_val dflt = g[0] ? s[0] : tv_float(0.0);
    double d;
    if (v.kind == TV_UNDEF) return tm_undef_error(r, line, v);
    if (tm_is_number(v)) *out = tv_float(tm_num(v));
    else if (v.kind == TV_STR && parse_py_float(v.s, &d)) *out = tv_float(d);
    else *out = dflt;
    return 0;
  }
  case TF_ROUND: {
    BIND("round", "precision", "method");
    int64_t prec = 0;
    if (g[0] && as_int_arg(r, line, "round precision", s[0], &prec)) return -1;
    const char *method = "common";
    if (g[1]) {
      if (s[1].kind != TV_STR) return tm_fail(r, line, HEED_E_INVALID, "method must be common, ceil or floor");
      method = s[1].s->p;
    }
    if (strcmp(method, "common") && strcmp(method, "ceil") && strcmp(method, "floor"))
      return tm_fail(r, line, HEED_E_INVALID, "method must be common, ceil or floor");
    if (v.kind == TV_UNDEF) return tm_undef_error(r, line, v);
    if (!tm_is_number(v))
      return tm_fail(r, line, HEED_E_INVALID, "type %s doesn't define __round__ method", tm_type_name(v));
    if (!strcmp(method, "common")) {
      if (v.kind != TV_FLOAT) {
        int64_t x = v.kind == TV_INT ? v.i : v.b;
        if (prec < 0) { /* round half to even at 10**-prec */
          if (prec < -18) *out = tv_int(0);
          else {
            int64_t p = 1;
            for (int64_t k = 0; k < -prec; k++) p *= 10;
            int64_t q = x / p, rem = x % p;
            if (rem < 0) {
              q--;
              rem += p;
            }
            if (rem * 2 > p || (rem * 2 == p && (q & 1))) q++;
            int64_t res;
            if (__builtin_mul_overflow(q, p, &res))
              return tm_fail(r, line, HEED_E_UNSUPPORTED, "integer result does not fit in 64 bits");
            *out = tv_int(res);
          }
        } else {
          *out = tv_int(x);
        }
      } else {
        *out = tv_float(py_round(v.f, prec));
      }
    } else {
      double p = pow(10.0, (double)prec), x = tm_num(v) * p;
      *out = tv_float((method[0] == 'c' ? ceil(x) : floor(x)) / p);
    }
    return 0;
  }
  case TF_SELECT: return f_select(r, line, v, a, 0, 0, out);
  case TF_REJECT: return f_select(r, line, v, a, 0, 1, out);
  case TF_SELECTATTR: return f_select(r, line, v, a, 1, 0, out);
  case TF_REJECTATTR: return f_select(r, line, v, a, 1, 1, out);
  case TF_MAP: return f_map(r, line, v, a, out);
  case TF_SORT: {
    BIND("sort", "reverse", "case_sensitive", "attribute");
    return f_sort(r, line, v, g[0] && tm_truthy(s[0]), g[1] && tm_truthy(s[1]), g[2] ? s[2] : tv_none(), out);
  }
  case TF_DICTSORT: {
    BIND("dictsort", "case_sensitive", "by", "reverse");
    int pos = 0;
    if (g[1]) {
      if (s[1].kind == TV_STR && tm_str_eqc(s[1].s, "value")) pos = 1;
      else if (!(s[1].kind == TV_STR && tm_str_eqc(s[1].s, "key")))
        return tm_fail(r, line, HEED_E_INVALID, "You can only sort by either \"key\" or \"value\"");
    }
    if (v.kind != TV_DICT) return fail_type(r, line, "dictsort", v);
    tm_val items;
    tm_args none = {0};
    if (tm_method_call(r, line, v, 0 /* M_ITEMS */, &none, &items)) return -1;
    tm_val attr = tv_int(pos);
    return f_sort(r, line, items, g[2] && tm_truthy(s[2]), g[0] && tm_truthy(s[0]), attr, out);
  }
  case TF_UNIQUE: {
    BIND("unique", "case_sensitive", "attribute");
    const tm_val *items;
    size_t n;
    if (tm_items(r, line, v, &items, &n)) return -1;
    vec keep = {0}, seen = {0};
    for (size_t i = 0; i < n; i++) {
      tm_val k;
      if (attr_path(r, line, items[i], g[1] ? s[1] : tv_none(), tv_none(), 0, &k)) return -1;
      if (!(g[0] && tm_truthy(s[0])) && lower_if_str(r, line, k, &k)) return -1;
      if (!tm_hashable(k)) return tm_fail(r, line, HEED_E_INVALID, "unhashable type: '%s'", tm_type_name(k));
      if (tm_charge(r, line, seen.n)) return -1;
      size_t j = 0;
      for (; j < seen.n; j++)
        if (tm_equal(seen.v[j], k)) break;
      if (j < seen.n) continue;
      if (vec_push(r, line, &seen, k) || vec_push(r, line, &keep, items[i])) return -1;
    }
    return new_list(r, line, keep.v, keep.n, 0, out);
  }
  case TF_MIN:
  case TF_MAX: {
    BIND(tm_filter_names[id], "case_sensitive", "attribute");
    return f_minmax(r, line, v, id == TF_MAX, g[0] && tm_truthy(s[0]), g[1] ? s[1] : tv_none(), out);
  }
  case TF_SUM: {
    BIND("sum", "attribute", "start");
    const tm_val *items;
    size_t n;
    if (tm_items(r, line, v, &items, &n)) return -1;
    tm_val acc = g[1] ? s[1] : tv_int(0);
    for (size_t i = 0; i < n; i++) {
      tm_val x = items[i];
      if (g[0] && attr_path(r, line, x, s[0], tv_none(), 0, &x)) return -1;
      if (tm_binop(r, line, OP_ADD, acc, x, &acc)) return -1;
    }
    *out = acc;
    return 0;
  }
  case TF_BATCH: {
    BIND("batch", "linecount", "fill_with");
    int64_t lc = 0;
    if (!g[0]) return tm_fail(r, line, HEED_E_INVALID, "batch needs linecount");
    if (as_int_arg(r, line, "batch linecount", s[0], &lc)) return -1;
    const tm_val *items;
    size_t n;
    if (tm_items(r, line, v, &items, &n)) return -1;
    vec rows = {0}, cur = {0};
    for (size_t i = 0; i < n; i++) {
      if ((int64_t)cur.n == lc) {
        tm_val row;
        if (new_list(r, line, cur.v, cur.n, 0, &row) || vec_push(r, line, &rows, row)) return -1;
        cur.n = 0;
        cur.v = NULL;
        cur.cap = 0;
      }
      if (vec_push(r, line, &cur, items[i])) return -1;
    }
    if (cur.n) {
      if (g[1] && s[1].kind != TV_NONE)
        while ((int64_t)cur.n < lc)
          if (vec_push(r, line, &cur, s[1])) return -1;
      tm_val row;
      if (new_list(r, line, cur.v, cur.n, 0, &row) || vec_push(r, line, &rows, row)) return -1;
    }
    return new_list(r, line, rows.v, rows.n, 0, out);
  }
  case TF_INDENT: {
    BIND("indent", "width", "first", "blank");
    return f_indent(r, line, v, g[0] ? s[0] : tv_int(4), g[1] && tm_truthy(s[1]), g[2] && tm_truthy(s[2]), out);
  }
  case TF_TRUNCATE: {
    BIND("truncate", "length", "killwords", "end", "leeway");
    int64_t length = 255, leeway = 5;
    if (g[0] && as_int_arg(r, line, "truncate length", s[0], &length)) return -1;
    if (g[3] && s[3].kind != TV_NONE && as_int_arg(r, line, "truncate leeway", s[3], &leeway)) return -1;
    const tm_str *end = NULL;
    if (g[2]) {
      if (tm_to_str(r, line, s[2], &end)) return -1;
    } else if (!(end = tm_str_new(&r->arena, "...", 3, 0))) {
      return tm_fail_mem(r, line);
    }
    int64_t elen = (int64_t)tm_utf8_count(end->p, end->len);
    if (length < elen)
      return tm_fail(r, line, HEED_E_INVALID, "expected length >= %lld, got %lld", (long long)elen, (long long)length);
    if (leeway < 0) return tm_fail(r, line, HEED_E_INVALID, "expected leeway >= 0, got %lld", (long long)leeway);
    if (v.kind == TV_UNDEF) {
      *out = v;
      return 0;
    }
    if (v.kind != TV_STR) return fail_type(r, line, "truncate", v);
    int64_t len = (int64_t)tm_utf8_count(v.s->p, v.s->len);
    if (len <= length || len - length <= leeway) {
      *out = v;
      return 0;
    }
    size_t cut = cp_to_byte(v.s, (size_t)(length - elen));
    tm_buf b;
    tm_buf_init(&b, &r->arena, r->max_output);
    if (g[1] && tm_truthy(s[1])) {
      if (tm_buf_sub(&b, v.s, 0, cut)) return tm_fail_mem(r, line);
    } else {
      /* s[:cut].rsplit(" ", 1)[0] */
      size_t k = cut;
      while (k > 0 && v.s->p[k - 1] != ' ') k--;
      if (tm_buf_sub(&b, v.s, 0, k ? k - 1 : cut)) return tm_fail_mem(r, line);
    }
    if (tm_buf_str(&b, end)) return tm_fail_mem(r, line);
    return new_str(r, line, &b, out);
  }
  case TF_WORDCOUNT: {
    NOARGS("wordcount");
    if (soft_str(r, line, v, &str)) return -1;
    int64_t n = 0;
    int in = 0;
    for (size_t i = 0; i < str->len;) {
      size_t adv;
      uint32_t c = tm_utf8_dec(str->p + i, str->len - i, &adv);
      i += adv;
      int w = c == '_' || cp_is_alnum(c);
      if (w && !in) n++;
      in = w;
    }
    *out = tv_int(n);
    return 0;
  }
  case TF_FORMAT: {
    if (a->npos && a->nkw)
      return tm_fail(r, line, HEED_E_INVALID, "can't handle positional and keyword arguments at the same time");
    if (soft_str(r, line, v, &str)) return -1;
    tm_val args;
    if (a->nkw) {
      tm_dict *d = tm_dict_new(&r->arena, a->nkw);
      if (!d) return tm_fail_mem(r, line);
      for (size_t k = 0; k < a->nkw; k++)
        if (tm_dict_set(&r->arena, d, tv_str(a->kwn[k]), a->kwv[k])) return tm_fail_mem(r, line);
      args = tv_dict(d);
    } else if (new_list(r, line, a->pos, a->npos, TV_TUPLE, &args)) {
      return -1;
    }
    return tm_binop(r, line, OP_MOD, tv_str(str), args, out);
  }
  case TF_ATTR: {
    BIND("attr", "name");
    if (!g[0] || s[0].kind != TV_STR) return tm_fail(r, line, HEED_E_INVALID, "attr needs a name");
    if (v.kind == TV_UNDEF) return tm_undef_error(r, line, v);
    if (v.kind == TV_DICT) { /* an attribute only: a method, never a key */
      int mid;
      if (tm_method_lookup(v, s[0].s->p, s[0].s->len, &mid)) return tm_getattr(r, line, v, s[0].s->p, s[0].s->len, out);
      *out = tm_undef_hint("no such attribute");
      out->u.name = s[0].s->p;
      out->u.len = (uint32_t)s[0].s->len;
      out->u.of = TV_DICT;
      return 0;
    }
    return tm_getattr(r, line, v, s[0].s->p, s[0].s->len, out);
  }
  }
  return tm_fail(r, line, HEED_E_INTERNAL, "unknown filter %d", id);
}

/* ---------- methods ---------- */

enum {
  M_ITEMS, /* 0: used by the items and dictsort filters */
  M_KEYS,
  M_VALUES,
  M_GET,
  M_DCOPY,
  M_UPPER,
  M_LOWER,
  M_TITLE,
  M_CAPITALIZE,
  M_SWAPCASE,
  M_STRIP,
  M_LSTRIP,
  M_RSTRIP,
  M_SPLIT,
  M_RSPLIT,
  M_SPLITLINES,
  M_REPLACE,
  M_STARTSWITH,
  M_ENDSWITH,
  M_FIND,
  M_RFIND,
  M_INDEX,
  M_RINDEX,
  M_SCOUNT,
  M_JOIN,
  M_FORMAT,
  M_ISDIGIT,
  M_ISALPHA,
  M_ISALNUM,
  M_ISSPACE,
  M_ISUPPER,
  M_ISLOWER,
  M_ISTITLE,
  M_ISNUMERIC,
  M_ISDECIMAL,
  M_CENTER,
  M_LJUST,
  M_RJUST,
  M_ZFILL,
  M_REMOVEPREFIX,
  M_REMOVESUFFIX,
  M_PARTITION,
  M_RPARTITION,
  M_LINDEX,
  M_LCOUNT,
  M_LCOPY,
  M_CYCLE,
  M_CHANGED
};

static const struct mdef {
  const char *name;
  uint8_t kind;
  int id;
} methods[] = {
    {"items", TV_DICT, M_ITEMS},
    {"keys", TV_DICT, M_KEYS},
    {"values", TV_DICT, M_VALUES},
    {"get", TV_DICT, M_GET},
    {"copy", TV_DICT, M_DCOPY},
    {"pop", TV_DICT, -1},
    {"popitem", TV_DICT, -1},
    {"update", TV_DICT, -1},
    {"setdefault", TV_DICT, -1},
    {"clear", TV_DICT, -1},
    {"upper", TV_STR, M_UPPER},
    {"lower", TV_STR, M_LOWER},
    {"title", TV_STR, M_TITLE},
    {"capitalize", TV_STR, M_CAPITALIZE},
    {"swapcase", TV_STR, M_SWAPCASE},
    {"strip", TV_STR, M_STRIP},
    {"lstrip", TV_STR, M_LSTRIP},
    {"rstrip", TV_STR, M_RSTRIP},
    {"split", TV_STR, M_SPLIT},
    {"rsplit", TV_STR, M_RSPLIT},
    {"splitlines", TV_STR, M_SPLITLINES},
    {"replace", TV_STR, M_REPLACE},
    {"startswith", TV_STR, M_STARTSWITH},
    {"endswith", TV_STR, M_ENDSWITH},
    {"find", TV_STR, M_FIND},
    {"rfind", TV_STR, M_RFIND},
    {"index", TV_STR, M_INDEX},
    {"rindex", TV_STR, M_RINDEX},
    {"count", TV_STR, M_SCOUNT},
    {"join", TV_STR, M_JOIN},
    {"format", TV_STR, M_FORMAT},
    {"isdigit", TV_STR, M_ISDIGIT},
    {"isalpha", TV_STR, M_ISALPHA},
    {"isalnum", TV_STR, M_ISALNUM},
    {"isspace", TV_STR, M_ISSPACE},
    {"isupper", TV_STR, M_ISUPPER},
    {"islower", TV_STR, M_ISLOWER},
    {"istitle", TV_STR, M_ISTITLE},
    {"isnumeric", TV_STR, M_ISNUMERIC},
    {"isdecimal", TV_STR, M_ISDECIMAL},
    {"center", TV_STR, M_CENTER},
    {"ljust", TV_STR, M_LJUST},
    {"rjust", TV_STR, M_RJUST},
    {"zfill", TV_STR, M_ZFILL},
    {"removeprefix", TV_STR, M_REMOVEPREFIX},
    {"removesuffix", TV_STR, M_REMOVESUFFIX},
    {"partition", TV_STR, M_PARTITION},
    {"rpartition", TV_STR, M_RPARTITION},
    {"index", TV_LIST, M_LINDEX},
    {"count", TV_LIST, M_LCOUNT},
    {"copy", TV_LIST, M_LCOPY},
    {"append", TV_LIST, -1},
    {"extend", TV_LIST, -1},
    {"insert", TV_LIST, -1},
    {"pop", TV_LIST, -1},
    {"remove", TV_LIST, -1},
    {"reverse", TV_LIST, -1},
    {"sort", TV_LIST, -1},
    {"clear", TV_LIST, -1},
    {"cycle", TV_LOOP, M_CYCLE},
    {"changed", TV_LOOP, M_CHANGED},
};

int tm_method_lookup(tm_val obj, const char *name, size_t n, int *id) {
  for (size_t i = 0; i < HEED_ARRAY_LEN(methods); i++) {
    const struct mdef *m = &methods[i];
    if (m->kind != obj.kind) continue;
    if (m->kind == TV_LIST && (obj.flags & TV_TUPLE) && m->id < 0) continue; /* tuples have no mutators */
    if (m->kind == TV_LIST && (obj.flags & TV_TUPLE) && m->id == M_LCOPY) continue;
    if (strlen(m->name) == n && memcmp(m->name, name, n) == 0) {
      *id = m->id;
      return 1;
    }
  }
  return 0;
}

const char *tm_method_name(int id) {
  for (size_t i = 0; i < HEED_ARRAY_LEN(methods); i++)
    if (methods[i].id == id) return methods[i].name;
  return "?";
}

static int dict_view(tm_render *r, uint32_t line, const tm_dict *d, int which, tm_val *out) {
  tm_list *l = tm_list_new(&r->arena, d->n);
  if (!l) return tm_fail_mem(r, line);
  for (size_t i = 0; i < d->n; i++) {
    if (which == 0) {
      tm_list *pair = tm_list_new(&r->arena, 2);
      if (!pair) return tm_fail_mem(r, line);
      pair->it[0] = d->k[i];
      pair->it[1] = d->v[i];
      l->it[i] = tv_list(pair, TV_TUPLE);
    } else {
      l->it[i] = which == 1 ? d->k[i] : d->v[i];
    }
  }
  *out = tv_list(l, which == 0 ? TV_VIEW_ITEMS : which == 1 ? TV_VIEW_KEYS : TV_VIEW_VALUES);
  return 0;
}

static int str_all(const tm_str *s, int (*pred)(uint32_t)) {
  if (!s->len) return 0;
  for (size_t i = 0; i < s->len;) {
    size_t adv;
    uint32_t c = tm_utf8_dec(s->p + i, s->len - i, &adv);
    if (!pred(c)) return 0;
    i += adv;
  }
  return 1;
}
static int pred_space(uint32_t c) { return tm_is_space(c); }

int tm_method_call(tm_render *r, uint32_t line, tm_val self, int id, const tm_args *a, tm_val *out) {
  if (tm_charge(r, line, 1)) return -1;
  const tm_str *str = self.kind == TV_STR ? self.s : NULL;
  switch (id) {
  case M_ITEMS: NOARGS("items()"); return dict_view(r, line, self.d, 0, out);
  case M_KEYS: NOARGS("keys()"); return dict_view(r, line, self.d, 1, out);
  case M_VALUES: NOARGS("values()"); return dict_view(r, line, self.d, 2, out);
  case M_GET: {
    BIND("get()", "key", "default");
    if (!g[0]) return tm_fail(r, line, HEED_E_INVALID, "get expected at least 1 argument, got 0");
    long e = tm_dict_find(self.d, s[0]);
    *out = e >= 0 ? self.d->v[e] : g[1] ? s[1] : tv_none();
    return 0;
  }
  case M_DCOPY: {
    NOARGS("copy()");
    tm_dict *d = tm_dict_new(&r->arena, self.d->n);
    if (!d) return tm_fail_mem(r, line);
    for (size_t i = 0; i < self.d->n; i++)
      if (tm_dict_set(&r->arena, d, self.d->k[i], self.d->v[i])) return tm_fail_mem(r, line);
    *out = tv_dict(d);
    return 0;
  }
  case M_UPPER: NOARGS("upper()"); return s_case(r, line, str, CASE_UPPER, out);
  case M_LOWER: NOARGS("lower()"); return s_case(r, line, str, CASE_LOWER, out);
  case M_TITLE: NOARGS("title()"); return s_case(r, line, str, CASE_TITLE, out);
  case M_CAPITALIZE: NOARGS("capitalize()"); return s_case(r, line, str, CASE_CAPITALIZE, out);
  case M_SWAPCASE: NOARGS("swapcase()"); return s_case(r, line, str, CASE_SWAP, out);
  case M_STRIP:
  case M_LSTRIP:
  case M_RSTRIP: {
    BIND("strip()", "chars");
    return s_strip(r, line, str, g[0] ? s[0] : tv_none(), id == M_STRIP ? 3 : id == M_LSTRIP ? 1 : 2, out);
  }
  case M_SPLIT:
  case M_RSPLIT: {
    BIND("split()", "sep", "maxsplit");
    int64_t maxsplit = -1;
    if (g[1] && as_int_arg(r, line, "maxsplit", s[1], &maxsplit)) return -1;
    return s_split(r, line, str, g[0] ? s[0] : tv_none(), maxsplit, id == M_RSPLIT, out);
  }
  case M_SPLITLINES: {
    BIND("splitlines()", "keepends");
    vec v = {0};
    if (s_splitlines(r, line, str, g[0] && tm_truthy(s[0]), &v)) return -1;
    return new_list(r, line, v.v, v.n, 0, out);
  }
  case M_REPLACE: {
    BIND("replace()", "old", "new", "count");
    if (!g[0] || !g[1]) return tm_fail(r, line, HEED_E_INVALID, "replace expected at least 2 arguments");
    if (s[0].kind != TV_STR || s[1].kind != TV_STR)
      return tm_fail(r, line, HEED_E_INVALID, "replace() arguments must be str");
    int64_t cnt = -1;
    if (g[2] && as_int_arg(r, line, "replace count", s[2], &cnt)) return -1;
    return s_replace(r, line, str, s[0].s, s[1].s, cnt, out);
  }
  case M_STARTSWITH: return s_startswith(r, line, str, a, 0, out);
  case M_ENDSWITH: return s_startswith(r, line, str, a, 1, out);
  case M_FIND: return s_find(r, line, str, a, 0, out);
  case M_RFIND: return s_find(r, line, str, a, 1, out);
  case M_INDEX: return s_find(r, line, str, a, 2, out);
  case M_RINDEX: return s_find(r, line, str, a, 3, out);
  case M_SCOUNT: return s_find(r, line, str, a, 4, out);
  case M_JOIN: {
    BIND("join()", "iterable");
    if (!g[0]) return tm_fail(r, line, HEED_E_INVALID, "join() takes exactly one argument");
    return s_join(r, line, str, s[0], out);
  }
  case M_FORMAT: return s_format(r, line, str, a, out);
  case M_ISDIGIT:
    NOARGS("isdigit()");
    *out = tv_bool(str_all(str, cp_is_digit));
    return 0;
  case M_ISNUMERIC:
    NOARGS("isnumeric()");
    *out = tv_bool(str_all(str, cp_is_numeric));
    return 0;
  case M_ISDECIMAL:
    NOARGS("isdecimal()");
    *out = tv_bool(str_all(str, cp_is_decimal));
    return 0;
  case M_ISALPHA:
    NOARGS("isalpha()");
    *out = tv_bool(str_all(str, cp_is_alpha));
    return 0;
  case M_ISALNUM:
    NOARGS("isalnum()");
    *out = tv_bool(str_all(str, cp_is_alnum));
    return 0;
  case M_ISSPACE:
    NOARGS("isspace()");
    *out = tv_bool(str_all(str, pred_space));
    return 0;
  case M_ISUPPER:
  case M_ISLOWER: {
    NOARGS("isupper()");
    int res;
    if (str_is_case(r, line, self, id == M_ISUPPER, &res)) return -1;
    *out = tv_bool(res);
    return 0;
  }
  case M_ISTITLE: {
    NOARGS("istitle()");
    int prev_cased = 0, cased = 0, ok = 1;
    for (size_t i = 0; i < str->len;) {
      size_t adv;
      uint32_t c = tm_utf8_dec(str->p + i, str->len - i, &adv);
      i += adv;
      if (cp_is_upper(c) || cp_is_title(c)) {
        if (prev_cased) ok = 0;
        prev_cased = cased = 1;
      } else if (cp_is_lower(c)) {
        if (!prev_cased) ok = 0;
        prev_cased = cased = 1;
      } else {
        prev_cased = 0;
      }
    }
    *out = tv_bool(ok && cased);
    return 0;
  }
  case M_CENTER:
  case M_LJUST:
  case M_RJUST: {
    BIND("center()", "width", "fillchar");
    int64_t w = 0;
    if (!g[0]) return tm_fail(r, line, HEED_E_INVALID, "%s() takes at least 1 argument", tm_method_name(id));
    if (as_int_arg(r, line, "width", s[0], &w)) return -1;
    const tm_str *fill = NULL;
    if (g[1]) {
      if (s[1].kind != TV_STR)
        return tm_fail(r, line, HEED_E_INVALID, "the fill character must be a unicode character");
      fill = s[1].s;
    }
    return s_pad(r, line, str, w, fill, id == M_CENTER ? 0 : id == M_LJUST ? 1 : 2, out);
  }
  case M_ZFILL: {
    BIND("zfill()", "width");
    int64_t w = 0;
    if (!g[0] || as_int_arg(r, line, "width", s[0], &w))
      return r->failed ? -1 : tm_fail(r, line, HEED_E_INVALID, "zfill() takes exactly one argument");
    int64_t len = (int64_t)tm_utf8_count(str->p, str->len);
    if (w <= len) {
      *out = self;
      return 0;
    }
    if ((uint64_t)(w - len) > r->max_output) return tm_fail_mem(r, line);
    tm_buf b;
    tm_buf_init(&b, &r->arena, r->max_output);
    size_t sign = str->len && (str->p[0] == '+' || str->p[0] == '-');
    if (sign && tm_buf_sub(&b, str, 0, 1)) return tm_fail_mem(r, line);
    for (int64_t k = 0; k < w - len; k++)
      if (tm_buf_putc(&b, '0', 0)) return tm_fail_mem(r, line);
    if (tm_buf_sub(&b, str, sign, str->len - sign)) return tm_fail_mem(r, line);
    return new_str(r, line, &b, out);
  }
  case M_REMOVEPREFIX:
  case M_REMOVESUFFIX: {
    BIND("removeprefix()", "affix");
    if (!g[0] || s[0].kind != TV_STR)
      return tm_fail(r, line, HEED_E_INVALID, "%s() argument must be str", tm_method_name(id));
    const tm_str *x = s[0].s;
    const tm_str *res = str;
    if (x->len <= str->len) {
      if (id == M_REMOVEPREFIX && memcmp(str->p, x->p, x->len) == 0)
        res = tm_str_sub(&r->arena, str, x->len, str->len - x->len);
      else if (id == M_REMOVESUFFIX && x->len && memcmp(str->p + str->len - x->len, x->p, x->len) == 0)
        res = tm_str_sub(&r->arena, str, 0, str->len - x->len);
    }
    if (!res) return tm_fail_mem(r, line);
    *out = tv_str(res);
    return 0;
  }
  case M_PARTITION:
  case M_RPARTITION: {
    BIND("partition()", "sep");
    if (!g[0] || s[0].kind != TV_STR) return tm_fail(r, line, HEED_E_INVALID, "must be str");
    const tm_str *sep = s[0].s;
    if (!sep->len) return tm_fail(r, line, HEED_E_INVALID, "empty separator");
    size_t pos = SIZE_MAX;
    if (id == M_PARTITION) {
      const char *f = memmem(str->p, str->len, sep->p, sep->len);
      if (f) pos = (size_t)(f - str->p);
    } else if (sep->len <= str->len) {
      for (size_t k = str->len - sep->len + 1; k-- > 0;)
        if (memcmp(str->p + k, sep->p, sep->len) == 0) {
          pos = k;
          break;
        }
    }
    tm_val parts[3];
    const tm_str *e = tm_str_new(&r->arena, "", 0, 0);
    if (!e) return tm_fail_mem(r, line);
    if (pos == SIZE_MAX) {
      parts[0] = id == M_PARTITION ? self : tv_str(e);
      parts[1] = tv_str(e);
      parts[2] = id == M_PARTITION ? tv_str(e) : self;
    } else {
      const tm_str *x = tm_str_sub(&r->arena, str, 0, pos), *y = tm_str_sub(&r->arena, str, pos, sep->len),
                   *z = tm_str_sub(&r->arena, str, pos + sep->len, str->len - pos - sep->len);
      if (!x || !y || !z) return tm_fail_mem(r, line);
      parts[0] = tv_str(x);
      parts[1] = tv_str(y);
      parts[2] = tv_str(z);
    }
    return new_list(r, line, parts, 3, TV_TUPLE, out);
  }
  case M_LINDEX: {
    if (a->npos < 1) return tm_fail(r, line, HEED_E_INVALID, "index expected at least 1 argument");
    for (size_t i = 0; i < self.l->n; i++)
      if (tm_equal(self.l->it[i], a->pos[0])) return *out = tv_int((int64_t)i), 0;
    return tm_fail(r, line, HEED_E_INVALID, "value is not in list");
  }
  case M_LCOUNT: {
    if (a->npos != 1) return tm_fail(r, line, HEED_E_INVALID, "count() takes exactly one argument");
    int64_t n = 0;
    for (size_t i = 0; i < self.l->n; i++) n += tm_equal(self.l->it[i], a->pos[0]);
    *out = tv_int(n);
    return 0;
  }
  case M_LCOPY: NOARGS("copy()"); return new_list(r, line, self.l->it, self.l->n, 0, out);
  case M_CYCLE:
    if (!a->npos) return tm_fail(r, line, HEED_E_INVALID, "no items for cycling given");
    *out = a->pos[self.loop->i % a->npos];
    return 0;
  case M_CHANGED: {
    tm_val now;
    if (new_list(r, line, a->pos, a->npos, 0, &now)) return -1;
    int changed = !self.loop->changed_set || !tm_equal(now, self.loop->changed_last);
    self.loop->changed_last = now;
    self.loop->changed_set = 1;
    *out = tv_bool(changed);
    return 0;
  }
  }
  return tm_fail(r, line, HEED_E_INTERNAL, "unknown method %d", id);
}

/* ---------- global functions ---------- */

enum { FN_RANGE, FN_NAMESPACE, FN_DICT, FN_RAISE_EXCEPTION, FN_STRFTIME_NOW, FN_LIPSUM, FN_CYCLER, FN_JOINER };
static const char *const fn_names[] = {"range",        "namespace", "dict",   "raise_exception",
                                       "strftime_now", "lipsum",    "cycler", "joiner"};

int tm_function_lookup(const char *name, size_t n) {
  for (size_t i = 0; i < HEED_ARRAY_LEN(fn_names); i++)
    if (strlen(fn_names[i]) == n && memcmp(fn_names[i], name, n) == 0) return (int)i;
  return -1;
}

const char *tm_function_name(int id) { return id >= 0 && id < (int)HEED_ARRAY_LEN(fn_names) ? fn_names[id] : "?"; }

/* dict(...) and namespace(...): one optional mapping or list of pairs, then keywords. */
static int build_dict(tm_render *r, uint32_t line, const char *what, const tm_args *a, tm_dict **out) {
  if (a->npos > 1) return tm_fail(r, line, HEED_E_INVALID, "%s expected at most 1 argument, got %zu", what, a->npos);
  tm_dict *d = tm_dict_new(&r->arena, a->nkw + 4);
  if (!d) return tm_fail_mem(r, line);
  if (a->npos) {
    tm_val src = a->pos[0];
    if (src.kind == TV_DICT) {
      for (size_t i = 0; i < src.d->n; i++)
        if (tm_dict_set(&r->arena, d, src.d->k[i], src.d->v[i])) return tm_fail_mem(r, line);
    } else {
      const tm_val *items;
      size_t n;
      if (tm_items(r, line, src, &items, &n)) return -1;
      for (size_t i = 0; i < n; i++) {
        if (items[i].kind != TV_LIST || items[i].l->n != 2)
          return tm_fail(r, line, HEED_E_INVALID, "%s: sequence element #%zu is not a pair", what, i);
        tm_val k = items[i].l->it[0];
        if (!tm_hashable(k)) return tm_fail(r, line, HEED_E_INVALID, "unhashable type: '%s'", tm_type_name(k));
        if (tm_dict_set(&r->arena, d, k, items[i].l->it[1])) return tm_fail_mem(r, line);
      }
    }
  }
  for (size_t k = 0; k < a->nkw; k++)
    if (tm_dict_set(&r->arena, d, tv_str(a->kwn[k]), a->kwv[k])) return tm_fail_mem(r, line);
  *out = d;
  return 0;
}

int tm_function_call(tm_render *r, uint32_t line, int id, const tm_args *a, tm_val *out) {
  switch (id) {
  case FN_RANGE: {
    if (a->nkw) return tm_fail(r, line, HEED_E_INVALID, "range() takes no keyword arguments");
    if (a->npos < 1 || a->npos > 3)
      return tm_fail(r, line, HEED_E_INVALID, "range expected 1 to 3 arguments, got %zu", a->npos);
    int64_t v[3] = {0, 0, 1};
    for (size_t i = 0; i < a->npos; i++)
      if (as_int_arg(r, line, "range", a->pos[i], &v[a->npos == 1 ? 1 : i])) return -1;
    int64_t start = v[0], stop = v[1], step = v[2];
    if (step == 0) return tm_fail(r, line, HEED_E_INVALID, "range() arg 3 must not be zero");
    __int128 len = 0;
    if (step > 0 && start < stop) len = ((__int128)stop - start - 1) / step + 1;
    else if (step < 0 && start > stop) len = ((__int128)start - stop - 1) / (-(__int128)step) + 1;
    if (len > MAX_RANGE)
      return tm_fail(r, line, HEED_E_RANGE, "range too big: the sandbox blocks ranges larger than %d items", MAX_RANGE);
    if (tm_charge(r, line, (uint64_t)len)) return -1;
    tm_range_list *rl = tm_alloc(&r->arena, sizeof *rl);
    tm_val *items = len ? tm_alloc_n(&r->arena, (size_t)len, sizeof *items) : NULL;
    if (!rl || (len && !items)) return tm_fail_mem(r, line);
    for (size_t i = 0; i < (size_t)len; i++) items[i] = tv_int(start + (int64_t)i * step);
    rl->l.it = items;
    rl->l.n = (size_t)len;
    rl->start = start;
    rl->stop = stop;
    rl->step = step;
    *out = tv_list(&rl->l, TV_RANGE);
    return 0;
  }
  case FN_NAMESPACE:
  case FN_DICT: {
    tm_dict *d = NULL;
    if (build_dict(r, line, fn_names[id], a, &d)) return -1;
    tm_val v = {.kind = id == FN_NAMESPACE ? TV_NS : TV_DICT};
    v.d = d;
    *out = v;
    return 0;
  }
  case FN_RAISE_EXCEPTION: {
    const tm_str *msg;
    tm_val m = a->npos ? a->pos[0] : a->nkw ? a->kwv[0] : tv_undef();
    if (a->npos + a->nkw != 1) return tm_fail(r, line, HEED_E_INVALID, "raise_exception takes one argument");
    if (tm_to_str(r, line, m, &msg)) return -1;
    return tm_fail(r, line, HEED_E_INVALID, "raise_exception: %s", msg->p);
  }
  case FN_STRFTIME_NOW: {
    BIND("strftime_now", "format");
    if (!g[0] || s[0].kind != TV_STR) return tm_fail(r, line, HEED_E_INVALID, "strftime_now needs a format string");
    if (memchr(s[0].s->p, '\0', s[0].s->len)) return tm_fail(r, line, HEED_E_INVALID, "embedded null character");
    struct tm tmv;
    time_t now;
    if (r->flags & HEED_TEMPLATE_FIXED_TIME) {
      now = (time_t)r->now;
      if (!gmtime_r(&now, &tmv))
        return tm_fail(r, line, HEED_E_INVALID, "strftime_now: the fixed time is out of range");
    } else {
      now = time(NULL);
      if (!localtime_r(&now, &tmv)) return tm_fail(r, line, HEED_E_INVALID, "strftime_now: no local time");
    }
    if (!s[0].s->len) return str_lit(r, line, "", 0, out);
    for (size_t cap = 256; cap <= ((size_t)1 << 20); cap *= 4) {
      char *buf = tm_alloc(&r->arena, cap);
      if (!buf) return tm_fail_mem(r, line);
      size_t k = strftime(buf, cap, s[0].s->p, &tmv);
      if (k) return str_lit(r, line, buf, k, out);
    }
    return str_lit(r, line, "", 0, out);
  }
  default: return tm_fail(r, line, HEED_E_UNSUPPORTED, "function '%s' is not supported", tm_function_name(id));
  }
}
