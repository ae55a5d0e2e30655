/* text/tmpl_eval.c - the tree walked against a context: statements write
 * text (with its untrusted ranges) to the current sink, expressions give
 * values. Scoping follows jinja2: a for loop's body, a macro and `with` get a
 * scope of their own (each loop iteration a fresh one, so that a set inside a
 * loop does not outlive it: namespace() is the way out), `if` does not.
 *
 * Every render owns an arena, so values are shared freely and never freed one
 * by one; lists and dicts are immutable, as in jinja2's
 * ImmutableSandboxedEnvironment, except namespace attributes. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "text/tmpl_internal.h"

#define EV_MAX_DEPTH 600 /* nested statements and expressions being evaluated */
#define EV_MAX_MACRO_DEPTH 100

enum { FLOW_OK = 0, FLOW_BREAK = 1, FLOW_CONTINUE = 2, FLOW_ERR = -1 };

/* ---------- errors and limits ---------- */

int tm_fail(tm_render *r, uint32_t line, heed_status st, const char *fmt, ...) {
  if (r->failed) return -1;
  char msg[900];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  if (line) heed_err_set(r->err, st, "template line %u: %s", line, msg);
  else heed_err_set(r->err, st, "template: %s", msg);
  r->failed = 1;
  return -1;
}

int tm_fail_mem(tm_render *r, uint32_t line) {
  if (r->arena.over == 2 || r->out.err == 2) return tm_fail(r, line, HEED_E_NOMEM, "out of memory");
  if (r->arena.over == 1)
    return tm_fail(r, line, HEED_E_RANGE, "rendering needs more than %zu bytes of memory (the limit)", r->arena.cap);
  return tm_fail(r, line, HEED_E_RANGE, "text longer than %zu bytes (the output limit)", r->max_output);
}

int tm_charge(tm_render *r, uint32_t line, uint64_t units) {
  r->steps += units;
  if (r->steps > r->max_steps)
    return tm_fail(r, line, HEED_E_RANGE, "rendering takes more than %llu steps (the limit)",
                   (unsigned long long)r->max_steps);
  return 0;
}

static int enter(tm_render *r, uint32_t line) {
  if (++r->depth > EV_MAX_DEPTH)
    return tm_fail(r, line, HEED_E_RANGE, "nested deeper than %d (statements, expressions and macro calls)",
                   EV_MAX_DEPTH);
  return tm_charge(r, line, 1);
}

tm_val tm_undef_hint(const char *hint) {
  tm_val v = tv_undef();
  v.u.name = hint;
  v.u.len = (uint32_t)strlen(hint);
  v.u.of = 255;
  return v;
}

static tm_val undef_var(const tm_str *name) {
  tm_val v = tv_undef();
  v.u.name = name->p;
  v.u.len = (uint32_t)name->len;
  v.u.of = TV_UNDEF;
  return v;
}

static tm_val undef_attr(tm_val obj, const char *name, size_t n) {
  tm_val v = tv_undef();
  v.u.name = name;
  v.u.len = (uint32_t)n;
  v.u.of = obj.kind == TV_UNDEF ? TV_NONE : obj.kind;              /* never a variable */
  if (obj.kind == TV_LIST && (obj.flags & TV_TUPLE)) v.u.of = 254; /* tuple */
  return v;
}

/* jinja2's object_type_repr */
static const char *object_repr(uint8_t of) {
  switch (of) {
  case TV_NONE: return "None";
  case TV_BOOL: return "bool object";
  case TV_INT: return "int object";
  case TV_FLOAT: return "float object";
  case TV_STR: return "str object";
  case TV_LIST: return "list object";
  case 254: return "tuple object";
  case TV_DICT: return "dict object";
  case TV_NS: return "jinja2.utils.Namespace object";
  case TV_LOOP: return "jinja2.runtime.LoopContext object";
  default: return "object";
  }
}

int tm_undef_error(tm_render *r, uint32_t line, tm_val u) {
  if (!u.u.name) return tm_fail(r, line, HEED_E_INVALID, "a value is undefined");
  if (u.u.of == TV_UNDEF) return tm_fail(r, line, HEED_E_INVALID, "'%.*s' is undefined", (int)u.u.len, u.u.name);
  if (u.u.of == 255) return tm_fail(r, line, HEED_E_INVALID, "%.*s", (int)u.u.len, u.u.name);
  if (u.u.of == 253)
    return tm_fail(r, line, HEED_E_INVALID,
                   "access to attribute '%.*s' is unsafe (the sandbox forbids changing objects)", (int)u.u.len,
                   u.u.name);
  return tm_fail(r, line, HEED_E_INVALID, "'%s' has no attribute '%.*s'", object_repr(u.u.of), (int)u.u.len, u.u.name);
}

/* ---------- scopes ---------- */

static tm_scope *scope_new(tm_render *r, tm_scope *up) {
  tm_scope *s = tm_zalloc(&r->arena, sizeof *s);
  if (s) s->up = up;
  return s;
}

static int scope_set(tm_render *r, uint32_t line, tm_scope *s, int32_t id, tm_val v) {
  for (uint32_t i = 0; i < s->n; i++)
    if (s->ids[i] == id) {
      s->vals[i] = v;
      return 0;
    }
  if (s->n == s->cap) {
    uint32_t cap = s->cap ? s->cap * 2 : 4;
    int32_t *ids = tm_alloc_n(&r->arena, cap, sizeof *ids);
    tm_val *vals = tm_alloc_n(&r->arena, cap, sizeof *vals);
    if (!ids || !vals) return tm_fail_mem(r, line);
    if (s->n) {
      memcpy(ids, s->ids, s->n * sizeof *ids);
      memcpy(vals, s->vals, s->n * sizeof *vals);
    }
    s->ids = ids;
    s->vals = vals;
    s->cap = cap;
  }
  s->ids[s->n] = id;
  s->vals[s->n] = v;
  s->n++;
  return 0;
}

static const tm_val *scope_get(const tm_scope *s, int32_t id) {
  for (; s; s = s->up)
    for (uint32_t i = 0; i < s->n; i++)
      if (s->ids[i] == id) return &s->vals[i];
  return NULL;
}

/* ---------- strings ---------- */

int tm_to_str(tm_render *r, uint32_t line, tm_val v, const tm_str **out) {
  if (v.kind == TV_STR) {
    *out = v.s;
    return 0;
  }
  tm_buf b;
  tm_buf_init(&b, &r->arena, r->max_output);
  if (tm_val_str(r, line, &b, v)) return -1;
  *out = tm_buf_finish(&b, &r->arena);
  return *out ? 0 : tm_fail_mem(r, line);
}

static int emit(tm_render *r, uint32_t line, tm_val v) {
  if (v.kind == TV_STR) {
    if (tm_charge(r, line, v.s->len / 64) || tm_buf_str(r->sink, v.s)) return r->failed ? -1 : tm_fail_mem(r, line);
    return 0;
  }
  if (v.kind == TV_UNDEF) return 0;
  if (tm_val_str(r, line, r->sink, v)) return -1;
  return 0;
}

/* ---------- binding arguments ---------- */

int tm_bind(tm_render *r, uint32_t line, const char *what, const char *const *params, size_t np, const tm_args *a,
            tm_val *slots, uint8_t *given) {
  for (size_t i = 0; i < np; i++) {
    slots[i] = tv_undef();
    given[i] = 0;
  }
  if (a->npos > np)
    return tm_fail(r, line, HEED_E_INVALID, "%s takes at most %zu positional argument(s), %zu given", what, np,
                   a->npos);
  for (size_t i = 0; i < a->npos; i++) {
    slots[i] = a->pos[i];
    given[i] = 1;
  }
  for (size_t k = 0; k < a->nkw; k++) {
    size_t i = 0;
    for (; i < np; i++)
      if (tm_str_eqc(a->kwn[k], params[i])) break;
    if (i == np)
      return tm_fail(r, line, HEED_E_INVALID, "%s got an unexpected keyword argument '%s'", what, a->kwn[k]->p);
    if (given[i]) return tm_fail(r, line, HEED_E_INVALID, "%s got multiple values for argument '%s'", what, params[i]);
    slots[i] = a->kwv[k];
    given[i] = 1;
  }
  return 0;
}

/* ---------- iteration ---------- */

int tm_items(tm_render *r, uint32_t line, tm_val v, const tm_val **items, size_t *n) {
  switch (v.kind) {
  case TV_UNDEF:
    *items = NULL;
    *n = 0;
    return 0;
  case TV_LIST:
    *items = v.l->it;
    *n = v.l->n;
    return 0;
  case TV_DICT: /* dicts do not change once built (namespaces are not iterable) */
    *items = v.d->k;
    *n = v.d->n;
    return 0;
  case TV_STR: {
    const tm_str *s = v.s;
    size_t cnt = tm_utf8_count(s->p, s->len);
    if (tm_charge(r, line, cnt)) return -1;
    tm_val *it = cnt ? tm_alloc_n(&r->arena, cnt, sizeof *it) : NULL;
    if (cnt && !it) return tm_fail_mem(r, line);
    size_t i = 0, k = 0;
    while (i < s->len) {
      size_t adv;
      tm_utf8_dec(s->p + i, s->len - i, &adv);
      const tm_str *c = tm_str_sub(&r->arena, s, i, adv);
      if (!c) return tm_fail_mem(r, line);
      it[k++] = tv_str(c);
      i += adv;
    }
    *items = it;
    *n = k;
    return 0;
  }
  default: return tm_fail(r, line, HEED_E_INVALID, "'%s' object is not iterable", tm_type_name(v));
  }
}

/* ---------- attributes and items ---------- */

/* Code point index -> byte offset (idx <= count). */
static size_t cp_byte(const tm_str *s, size_t idx) {
  size_t i = 0;
  while (idx && i < s->len) {
    i++;
    while (i < s->len && ((unsigned char)s->p[i] & 0xC0) == 0x80) i++;
    idx--;
  }
  return i;
}

static int loop_attr(tm_render *r, uint32_t line, tm_loop *l, const char *name, size_t n, tm_val *out) {
  (void)r;
  (void)line;
#define IS(s) (n == sizeof(s) - 1 && memcmp(name, s, n) == 0)
  int64_t i = (int64_t)l->i, len = (int64_t)l->n;
  if (IS("index")) *out = tv_int(i + 1);
  else if (IS("index0")) *out = tv_int(i);
  else if (IS("revindex")) *out = tv_int(len - i);
  else if (IS("revindex0")) *out = tv_int(len - i - 1);
  else if (IS("first")) *out = tv_bool(i == 0);
  else if (IS("last")) *out = tv_bool(i == len - 1);
  else if (IS("length")) *out = tv_int(len);
  else if (IS("depth")) *out = tv_int(1);
  else if (IS("depth0")) *out = tv_int(0);
  else if (IS("previtem")) *out = i > 0 ? l->items[i - 1] : tm_undef_hint("there is no previous item");
  else if (IS("nextitem")) *out = i + 1 < len ? l->items[i + 1] : tm_undef_hint("there is no next item");
  else return 0;
#undef IS
  return 1;
}

static int method_value(tm_render *r, uint32_t line, tm_val obj, int id, tm_val *out) {
  tm_method *m = tm_alloc(&r->arena, sizeof *m);
  if (!m) return tm_fail_mem(r, line);
  m->self = obj;
  m->id = id;
  tm_val v = {.kind = TV_METHOD};
  v.meth = m;
  *out = v;
  return 0;
}

/* obj.name without the item fallback; 1 found, 0 not. */
static int attr_only(tm_render *r, uint32_t line, tm_val obj, const char *name, size_t n, tm_val *out) {
  int id;
  if (obj.kind == TV_NS) {
    long e = tm_dict_findc(obj.d, name, n);
    if (e >= 0) {
      *out = obj.d->v[e];
      return 1;
    }
    return 0;
  }
  if (obj.kind == TV_LOOP && loop_attr(r, line, obj.loop, name, n, out)) return 1;
  if (tm_method_lookup(obj, name, n, &id)) {
    if (id < 0) { /* a method the sandbox forbids (list.append, dict.update, ...) */
      tm_val u = tv_undef();
      u.u.name = name;
      u.u.len = (uint32_t)n;
      u.u.of = 253;
      *out = u;
      return 1;
    }
    return method_value(r, line, obj, id, out) ? -1 : 1;
  }
  return 0;
}

int tm_getattr(tm_render *r, uint32_t line, tm_val obj, const char *name, size_t n, tm_val *out) {
  if (obj.kind == TV_UNDEF) return tm_undef_error(r, line, obj);
  int f = attr_only(r, line, obj, name, n, out);
  if (f) return f < 0 ? -1 : 0;
  if (obj.kind == TV_DICT) {
    long e = tm_dict_findc(obj.d, name, n);
    if (e >= 0) {
      *out = obj.d->v[e];
      return 0;
    }
  }
  *out = undef_attr(obj, name, n);
  return 0;
}

int tm_getitem(tm_render *r, uint32_t line, tm_val obj, tm_val key, tm_val *out) {
  if (obj.kind == TV_UNDEF) return tm_undef_error(r, line, obj);
  if (obj.kind == TV_DICT) {
    long e = tm_dict_find(obj.d, key);
    if (e >= 0) {
      *out = obj.d->v[e];
      return 0;
    }
  } else if ((obj.kind == TV_LIST || obj.kind == TV_STR) && (key.kind == TV_INT || key.kind == TV_BOOL)) {
    int64_t i = key.kind == TV_INT ? key.i : key.b;
    if (obj.kind == TV_LIST) {
      int64_t len = (int64_t)obj.l->n;
      if (i < 0) i += len;
      if (i >= 0 && i < len) {
        *out = obj.l->it[i];
        return 0;
      }
    } else {
      const tm_str *s = obj.s;
      int64_t len = (int64_t)tm_utf8_count(s->p, s->len);
      if (tm_charge(r, line, s->len / 16)) return -1;
      if (i < 0) i += len;
      if (i >= 0 && i < len) {
        size_t b = cp_byte(s, (size_t)i), adv;
        tm_utf8_dec(s->p + b, s->len - b, &adv);
        const tm_str *c = tm_str_sub(&r->arena, s, b, adv);
        if (!c) return tm_fail_mem(r, line);
        *out = tv_str(c);
        return 0;
      }
    }
  }
  if (key.kind == TV_STR) {
    int f = attr_only(r, line, obj, key.s->p, key.s->len, out);
    if (f) return f < 0 ? -1 : 0;
    *out = undef_attr(obj, key.s->p, key.s->len);
    return 0;
  }
  /* a missing element: named in the message when it is a number */
  char tmp[40];
  size_t kn = 0;
  if (key.kind == TV_INT) kn = tm_fmt_int(key.i, tmp);
  else if (key.kind == TV_FLOAT) kn = tm_fmt_float(key.f, tmp);
  else kn = (size_t)snprintf(tmp, sizeof tmp, "%s", tm_type_name(key));
  const tm_str *k = tm_str_new(&r->arena, tmp, kn, 0);
  if (!k) return tm_fail_mem(r, line);
  *out = undef_attr(obj, k->p, k->len);
  return 0;
}

/* Python's slice indices for a sequence of len items. */
static int slice_indices(tm_render *r, uint32_t line, const tm_val *lo, const tm_val *hi, const tm_val *st, int64_t len,
                         int64_t *start, int64_t *stop, int64_t *step) {
  const tm_val *v[3] = {lo, hi, st};
  int64_t x[3] = {0, 0, 1};
  int has[3] = {0, 0, 0};
  for (int k = 0; k < 3; k++) {
    if (!v[k] || v[k]->kind == TV_NONE) continue;
    if (v[k]->kind == TV_INT) x[k] = v[k]->i;
    else if (v[k]->kind == TV_BOOL) x[k] = v[k]->b;
    else if (v[k]->kind == TV_UNDEF) return tm_undef_error(r, line, *v[k]);
    else return tm_fail(r, line, HEED_E_INVALID, "slice indices must be integers or None");
    has[k] = 1;
  }
  if (x[2] == 0) return tm_fail(r, line, HEED_E_INVALID, "slice step cannot be zero");
  *step = x[2];
  for (int k = 0; k < 2; k++) {
    int64_t i = x[k];
    if (!has[k]) {
      i = k == 0 ? (*step < 0 ? len - 1 : 0) : (*step < 0 ? -1 : len);
    } else if (i < 0) {
      i += len;
      if (i < 0) i = *step < 0 ? -1 : 0;
    } else if (i >= len) {
      i = *step < 0 ? len - 1 : len;
    }
    if (k == 0) *start = i;
    else *stop = i;
  }
  return 0;
}

/* How many indices start, start + step, ... lie before stop (no overflow). */
static size_t slice_count(int64_t start, int64_t stop, int64_t step) {
  if (step > 0 && start < stop) return (size_t)(((__int128)stop - start - 1) / step + 1);
  if (step < 0 && start > stop) return (size_t)(((__int128)start - stop - 1) / -(__int128)step + 1);
  return 0;
}

static int do_slice(tm_render *r, uint32_t line, tm_val obj, const tm_val *lo, const tm_val *hi, const tm_val *st,
                    tm_val *out) {
  if (obj.kind == TV_UNDEF) return tm_undef_error(r, line, obj);
  int64_t start, stop, step;
  if (obj.kind == TV_LIST) {
    if (slice_indices(r, line, lo, hi, st, (int64_t)obj.l->n, &start, &stop, &step)) return -1;
    size_t cnt = slice_count(start, stop, step);
    if (tm_charge(r, line, cnt)) return -1;
    tm_list *l = tm_list_new(&r->arena, cnt);
    if (!l) return tm_fail_mem(r, line);
    size_t k = 0;
    for (size_t j = 0; j < cnt; j++) l->it[k++] = obj.l->it[start + (int64_t)j * step];
    *out = tv_list(l, obj.flags & TV_TUPLE); /* a range's slice is a list here (Python: a range) */
    return 0;
  }
  if (obj.kind == TV_STR) {
    const tm_str *s = obj.s;
    size_t cnt = tm_utf8_count(s->p, s->len);
    if (tm_charge(r, line, s->len / 16)) return -1;
    if (slice_indices(r, line, lo, hi, st, (int64_t)cnt, &start, &stop, &step)) return -1;
    if (step == 1) {
      size_t b0 = start < stop ? cp_byte(s, (size_t)start) : 0, b1 = start < stop ? cp_byte(s, (size_t)stop) : 0;
      const tm_str *sub = tm_str_sub(&r->arena, s, b0, b1 - b0);
      if (!sub) return tm_fail_mem(r, line);
      *out = tv_str(sub);
      return 0;
    }
    /* byte offsets of every code point, then pick */
    size_t *off = tm_alloc_n(&r->arena, cnt + 1, sizeof *off);
    if (!off) return tm_fail_mem(r, line);
    size_t i = 0, k = 0;
    while (i < s->len) {
      size_t adv;
      off[k++] = i;
      tm_utf8_dec(s->p + i, s->len - i, &adv);
      i += adv;
    }
    off[k] = s->len;
    tm_buf b;
    tm_buf_init(&b, &r->arena, r->max_output);
    size_t take = slice_count(start, stop, step);
    for (size_t q = 0; q < take; q++) {
      int64_t j = start + (int64_t)q * step;
      if (tm_buf_sub(&b, s, off[j], off[j + 1] - off[j])) return tm_fail_mem(r, line);
    }
    const tm_str *res = tm_buf_finish(&b, &r->arena);
    if (!res) return tm_fail_mem(r, line);
    *out = tv_str(res);
    return 0;
  }
  /* jinja2: obj[slice] fails with TypeError and gives undefined */
  *out = undef_attr(obj, "slice", 5);
  return 0;
}

/* ---------- operators ---------- */

static int is_int(tm_val v) { return v.kind == TV_INT || v.kind == TV_BOOL; }
static int64_t ival(tm_val v) { return v.kind == TV_INT ? v.i : v.b; }

static int type_error(tm_render *r, uint32_t line, const char *op, tm_val a, tm_val b) {
  return tm_fail(r, line, HEED_E_INVALID, "unsupported operand type(s) for %s: '%s' and '%s'", op, tm_type_name(a),
                 tm_type_name(b));
}

static int repeat(tm_render *r, uint32_t line, tm_val seq, int64_t times, tm_val *out) {
  if (times < 0) times = 0;
  if (seq.kind == TV_STR) {
    const tm_str *s = seq.s;
    if (s->len && (uint64_t)times > r->max_output / s->len) return tm_fail_mem(r, line);
    if (tm_charge(r, line, (uint64_t)times * s->len / 16)) return -1;
    tm_buf b;
    tm_buf_init(&b, &r->arena, r->max_output);
    for (int64_t k = 0; k < times && s->len; k++)
      if (tm_buf_str(&b, s)) return tm_fail_mem(r, line);
    const tm_str *res = tm_buf_finish(&b, &r->arena);
    if (!res) return tm_fail_mem(r, line);
    *out = tv_str(res);
    return 0;
  }
  size_t n = seq.l->n;
  if (n && (uint64_t)times > (r->arena.cap / sizeof(tm_val)) / n) return tm_fail_mem(r, line);
  if (tm_charge(r, line, (uint64_t)times * n)) return -1;
  tm_list *l = tm_list_new(&r->arena, n * (size_t)times);
  if (!l) return tm_fail_mem(r, line);
  for (int64_t k = 0; k < times; k++)
    if (n) memcpy(l->it + (size_t)k * n, seq.l->it, n * sizeof(tm_val));
  *out = tv_list(l, seq.flags & TV_TUPLE);
  return 0;
}

/* Python's float divmod. */
static void float_divmod(double x, double y, double *fdiv, double *fmodv) {
  double mod = fmod(x, y), div = (x - mod) / y;
  if (mod) {
    if ((y < 0) != (mod < 0)) {
      mod += y;
      div -= 1.0;
    }
  } else {
    mod = copysign(0.0, y);
  }
  double floordiv;
  if (div) {
    floordiv = floor(div);
    if (div - floordiv > 0.5) floordiv += 1.0;
  } else {
    floordiv = copysign(0.0, x / y);
  }
  *fdiv = floordiv;
  *fmodv = mod;
}

static int str_percent(tm_render *r, uint32_t line, const tm_str *fmt, tm_val args, tm_val *out);

int tm_binop(tm_render *r, uint32_t line, int op, tm_val a, tm_val b, tm_val *out) {
  if (a.kind == TV_UNDEF) return tm_undef_error(r, line, a);
  if (b.kind == TV_UNDEF) return tm_undef_error(r, line, b);
  int nums = tm_is_number(a) && tm_is_number(b);
  int ints = is_int(a) && is_int(b);
  switch (op) {
  case OP_ADD:
    if (ints) {
      int64_t x;
      if (__builtin_add_overflow(ival(a), ival(b), &x)) goto overflow;
      *out = tv_int(x);
      return 0;
    }
    if (nums) {
      *out = tv_float(tm_num(a) + tm_num(b));
      return 0;
    }
    if (a.kind == TV_STR && b.kind == TV_STR) {
      if (tm_charge(r, line, (a.s->len + b.s->len) / 16)) return -1;
      tm_buf buf;
      tm_buf_init(&buf, &r->arena, r->max_output);
      if (tm_buf_str(&buf, a.s) || tm_buf_str(&buf, b.s)) return tm_fail_mem(r, line);
      const tm_str *s = tm_buf_finish(&buf, &r->arena);
      if (!s) return tm_fail_mem(r, line);
      *out = tv_str(s);
      return 0;
    }
    if (a.kind == TV_LIST && b.kind == TV_LIST && (a.flags & TV_TUPLE) == (b.flags & TV_TUPLE) &&
        !((a.flags | b.flags) & TV_RANGE)) {
      if (tm_charge(r, line, a.l->n + b.l->n)) return -1;
      tm_list *l = tm_list_new(&r->arena, a.l->n + b.l->n);
      if (!l) return tm_fail_mem(r, line);
      if (a.l->n) memcpy(l->it, a.l->it, a.l->n * sizeof(tm_val));
      if (b.l->n) memcpy(l->it + a.l->n, b.l->it, b.l->n * sizeof(tm_val));
      *out = tv_list(l, a.flags & TV_TUPLE);
      return 0;
    }
    if (a.kind == TV_STR)
      return tm_fail(r, line, HEED_E_INVALID, "can only concatenate str (not \"%s\") to str", tm_type_name(b));
    return type_error(r, line, "+", a, b);
  case OP_SUB:
    if (ints) {
      int64_t x;
      if (__builtin_sub_overflow(ival(a), ival(b), &x)) goto overflow;
      *out = tv_int(x);
      return 0;
    }
    if (nums) {
      *out = tv_float(tm_num(a) - tm_num(b));
      return 0;
    }
    return type_error(r, line, "-", a, b);
  case OP_MUL:
    if (ints) {
      int64_t x;
      if (__builtin_mul_overflow(ival(a), ival(b), &x)) goto overflow;
      *out = tv_int(x);
      return 0;
    }
    if (nums) {
      *out = tv_float(tm_num(a) * tm_num(b));
      return 0;
    }
    if ((a.kind == TV_STR || (a.kind == TV_LIST && !(a.flags & TV_RANGE))) && is_int(b))
      return repeat(r, line, a, ival(b), out);
    if ((b.kind == TV_STR || (b.kind == TV_LIST && !(b.flags & TV_RANGE))) && is_int(a))
      return repeat(r, line, b, ival(a), out);
    return type_error(r, line, "*", a, b);
  case OP_DIV:
    if (!nums) return type_error(r, line, "/", a, b);
    if (tm_num(b) == 0) return tm_fail(r, line, HEED_E_INVALID, "division by zero");
    *out = tv_float(tm_num(a) / tm_num(b));
    return 0;
  case OP_FLOORDIV:
  case OP_MOD:
    if (op == OP_MOD && a.kind == TV_STR) return str_percent(r, line, a.s, b, out);
    if (!nums) return type_error(r, line, op == OP_MOD ? "%" : "//", a, b);
    if (ints) {
      int64_t x = ival(a), y = ival(b);
      if (y == 0) return tm_fail(r, line, HEED_E_INVALID, "integer division or modulo by zero");
      if (x == INT64_MIN && y == -1) {
        if (op == OP_MOD) return *out = tv_int(0), 0;
        goto overflow;
      }
      int64_t q = x / y, m = x % y;
      if (m && ((m < 0) != (y < 0))) {
        q--;
        m += y;
      }
      *out = tv_int(op == OP_MOD ? m : q);
      return 0;
    } else {
      double x = tm_num(a), y = tm_num(b), d, m;
      if (y == 0) return tm_fail(r, line, HEED_E_INVALID, "float division by zero");
      float_divmod(x, y, &d, &m);
      *out = tv_float(op == OP_MOD ? m : d);
      return 0;
    }
  case OP_POW:
    if (!nums) return type_error(r, line, "** or pow()", a, b);
    if (ints && ival(b) >= 0) {
      int64_t base = ival(a), e = ival(b), acc = 1;
      while (e) {
        if (e & 1)
          if (__builtin_mul_overflow(acc, base, &acc)) goto overflow;
        e >>= 1;
        if (e && __builtin_mul_overflow(base, base, &base)) goto overflow;
      }
      *out = tv_int(acc);
      return 0;
    }
    {
      double x = tm_num(a), y = tm_num(b);
      if (x == 0 && y < 0) return tm_fail(r, line, HEED_E_INVALID, "zero to a negative power");
      if (x < 0 && y != floor(y))
        return tm_fail(r, line, HEED_E_UNSUPPORTED,
                       "a negative number to a fractional power (complex) is not supported");
      double z = pow(x, y);
      if (isinf(z) && !isinf(x) && !isinf(y)) return tm_fail(r, line, HEED_E_RANGE, "numerical result out of range");
      *out = tv_float(z);
      return 0;
    }
  }
  return tm_fail(r, line, HEED_E_INTERNAL, "unknown operator");
overflow:
  return tm_fail(r, line, HEED_E_UNSUPPORTED,
                 "integer result does not fit in 64 bits (Python would give a big integer)");
}

int tm_order(tm_render *r, uint32_t line, tm_val a, tm_val b, int *res) {
  if (a.kind == TV_UNDEF) return tm_undef_error(r, line, a);
  if (b.kind == TV_UNDEF) return tm_undef_error(r, line, b);
  if (tm_is_number(a) && tm_is_number(b)) {
    if (is_int(a) && is_int(b)) {
      *res = (ival(a) > ival(b)) - (ival(a) < ival(b));
    } else {
      double x = tm_num(a), y = tm_num(b);
      *res = (x > y) - (x < y);
    }
    return 0;
  }
  if (a.kind == TV_STR && b.kind == TV_STR) {
    size_t n = a.s->len < b.s->len ? a.s->len : b.s->len;
    int c = memcmp(a.s->p, b.s->p, n);
    *res = c ? (c > 0) - (c < 0) : (a.s->len > b.s->len) - (a.s->len < b.s->len);
    return 0;
  }
  if (a.kind == TV_LIST && b.kind == TV_LIST && (a.flags & TV_TUPLE) == (b.flags & TV_TUPLE)) {
    size_t n = a.l->n < b.l->n ? a.l->n : b.l->n;
    for (size_t i = 0; i < n; i++) {
      if (tm_equal(a.l->it[i], b.l->it[i])) continue;
      if (++r->depth > EV_MAX_DEPTH) return tm_fail(r, line, HEED_E_RANGE, "values nested too deeply to compare");
      int rc = tm_order(r, line, a.l->it[i], b.l->it[i], res);
      r->depth--;
      return rc;
    }
    *res = (a.l->n > b.l->n) - (a.l->n < b.l->n);
    return 0;
  }
  return tm_fail(r, line, HEED_E_INVALID, "'<' not supported between instances of '%s' and '%s'", tm_type_name(a),
                 tm_type_name(b));
}

static int contains(tm_render *r, uint32_t line, tm_val item, tm_val seq, int *res) {
  switch (seq.kind) {
  case TV_UNDEF: *res = 0; return 0;
  case TV_STR:
    if (item.kind == TV_UNDEF) return tm_undef_error(r, line, item);
    if (item.kind != TV_STR)
      return tm_fail(r, line, HEED_E_INVALID, "'in <string>' requires string as left operand, not %s",
                     tm_type_name(item));
    if (tm_charge(r, line, seq.s->len / 16)) return -1;
    *res = item.s->len == 0 || memmem(seq.s->p, seq.s->len, item.s->p, item.s->len) != NULL;
    return 0;
  case TV_LIST:
    if (tm_charge(r, line, seq.l->n)) return -1;
    for (size_t i = 0; i < seq.l->n; i++)
      if (tm_equal(seq.l->it[i], item)) return *res = 1, 0;
    *res = 0;
    return 0;
  case TV_DICT:
    if (!tm_hashable(item))
      return tm_fail(r, line, HEED_E_INVALID, "unhashable type: '%s'", tm_type_name(item));
    *res = tm_dict_find(seq.d, item) >= 0;
    return 0;
  default: return tm_fail(r, line, HEED_E_INVALID, "argument of type '%s' is not iterable", tm_type_name(seq));
  }
}

int tm_compare(tm_render *r, uint32_t line, int op, tm_val a, tm_val b, int *res) {
  switch (op) {
  case OP_EQ: *res = tm_equal(a, b); return 0;
  case OP_NE: *res = !tm_equal(a, b); return 0;
  case TN_CMP_IN: return contains(r, line, a, b, res);
  case TN_CMP_NOTIN:
    if (contains(r, line, a, b, res)) return -1;
    *res = !*res;
    return 0;
  default: {
    int c;
    if (tm_order(r, line, a, b, &c)) return -1;
    if (op == OP_LT) *res = c < 0;
    else if (op == OP_LTEQ) *res = c <= 0;
    else if (op == OP_GT) *res = c > 0;
    else *res = c >= 0;
    /* NaN orders with nothing */
    if ((a.kind == TV_FLOAT && isnan(a.f)) || (b.kind == TV_FLOAT && isnan(b.f))) *res = 0;
    return 0;
  }
  }
}

/* ---------- printf-style formatting (str % args) ---------- */

static int str_percent(tm_render *r, uint32_t line, const tm_str *fmt, tm_val args, tm_val *out) {
  const tm_val *av = &args;
  size_t an = 1, ai = 0;
  const tm_dict *map = NULL;
  if (args.kind == TV_LIST && (args.flags & TV_TUPLE)) {
    av = args.l->it;
    an = args.l->n;
  } else if (args.kind == TV_DICT) {
    map = args.d;
  }
  tm_buf b;
  tm_buf_init(&b, &r->arena, r->max_output);
  size_t i = 0;
  while (i < fmt->len) {
    const char *pc = memchr(fmt->p + i, '%', fmt->len - i);
    size_t run = pc ? (size_t)(pc - (fmt->p + i)) : fmt->len - i;
    if (run && tm_buf_sub(&b, fmt, i, run)) return tm_fail_mem(r, line);
    i += run;
    if (i >= fmt->len) break;
    i++;
    if (i >= fmt->len) return tm_fail(r, line, HEED_E_INVALID, "incomplete format");
    tm_val v;
    int have_v = 0;
    if (fmt->p[i] == '(') {
      const char *close = memchr(fmt->p + i, ')', fmt->len - i);
      if (!close || !map) return tm_fail(r, line, HEED_E_INVALID, "format requires a mapping");
      long e = tm_dict_findc(map, fmt->p + i + 1, (size_t)(close - fmt->p - i - 1));
      if (e < 0) return tm_fail(r, line, HEED_E_INVALID, "format: key not found");
      v = map->v[e];
      have_v = 1;
      i = (size_t)(close - fmt->p) + 1;
    }
    char spec[32];
    size_t sn = 0;
    spec[sn++] = '%';
    while (i < fmt->len && strchr("-+ #0", fmt->p[i]) && sn < 8) spec[sn++] = fmt->p[i++];
    while (i < fmt->len && fmt->p[i] >= '0' && fmt->p[i] <= '9' && sn < 16) spec[sn++] = fmt->p[i++];
    if (i < fmt->len && fmt->p[i] == '.') {
      spec[sn++] = fmt->p[i++];
      while (i < fmt->len && fmt->p[i] >= '0' && fmt->p[i] <= '9' && sn < 24) spec[sn++] = fmt->p[i++];
    }
    if (i >= fmt->len) return tm_fail(r, line, HEED_E_INVALID, "incomplete format");
    spec[sn] = '\0';
    char conv = fmt->p[i++];
    if (conv == '%') {
      if (tm_buf_putc(&b, '%', 0)) return tm_fail_mem(r, line);
      continue;
    }
    if (!have_v) {
      if (map) v = args;
      else if (ai < an) v = av[ai++];
      else return tm_fail(r, line, HEED_E_INVALID, "not enough arguments for format string");
    }
    char tmp[512];
    int k;
    switch (conv) {
    case 's':
    case 'r':
    case 'a': {
      const tm_str *s;
      if (conv == 's') {
        if (tm_to_str(r, line, v, &s)) return -1;
      } else {
        tm_buf rb;
        tm_buf_init(&rb, &r->arena, r->max_output);
        if (tm_val_repr(r, line, &rb, v)) return -1;
        if (!(s = tm_buf_finish(&rb, &r->arena))) return tm_fail_mem(r, line);
      }
      /* width and precision count code points; taint kept */
      int width = 0, prec = -1, left = 0;
      for (size_t q = 1; q < sn; q++) {
        if (spec[q] == '-') left = 1;
        else if (spec[q] == '.') {
          prec = atoi(spec + q + 1);
          break;
        } else if (spec[q] >= '1' && spec[q] <= '9' && !width) width = atoi(spec + q);
      }
      size_t len = s->len, cps = tm_utf8_count(s->p, s->len);
      if (prec >= 0 && (size_t)prec < cps) {
        len = cp_byte(s, (size_t)prec);
        cps = (size_t)prec;
      }
      size_t pad = width > 0 && (size_t)width > cps ? (size_t)width - cps : 0;
      for (size_t q = 0; !left && q < pad; q++)
        if (tm_buf_putc(&b, ' ', 0)) return tm_fail_mem(r, line);
      if (tm_buf_sub(&b, s, 0, len)) return tm_fail_mem(r, line);
      for (size_t q = 0; left && q < pad; q++)
        if (tm_buf_putc(&b, ' ', 0)) return tm_fail_mem(r, line);
      continue;
    }
    case 'd':
    case 'i':
    case 'u':
      if (!tm_is_number(v))
        return tm_fail(r, line, HEED_E_INVALID, "%%d format: a real number is required, not %s", tm_type_name(v));
      if (v.kind == TV_FLOAT && !(fabs(v.f) < 9.2e18)) {
        if (isnan(v.f) || isinf(v.f))
          return tm_fail(r, line, HEED_E_INVALID, "cannot convert float %s to integer",
                         isnan(v.f) ? "NaN" : "infinity");
        return tm_fail(r, line, HEED_E_UNSUPPORTED, "%%d of %g does not fit in 64 bits", v.f);
      }
      spec[sn++] = 'l';
      spec[sn++] = 'l';
      spec[sn++] = 'd';
      spec[sn] = '\0';
      k = snprintf(tmp, sizeof tmp, spec, v.kind == TV_FLOAT ? (long long)trunc(v.f) : (long long)ival(v));
      break;
    case 'f':
    case 'F':
    case 'e':
    case 'E':
    case 'g':
    case 'G':
      if (!tm_is_number(v)) return tm_fail(r, line, HEED_E_INVALID, "must be real number, not %s", tm_type_name(v));
      spec[sn++] = conv;
      spec[sn] = '\0';
      k = snprintf(tmp, sizeof tmp, spec, tm_num(v));
      break;
    case 'x':
    case 'X':
    case 'o':
      if (!is_int(v)) return tm_fail(r, line, HEED_E_INVALID, "%%%c format: an integer is required", conv);
      spec[sn++] = 'l';
      spec[sn++] = 'l';
      spec[sn++] = conv;
      spec[sn] = '\0';
      { /* Python writes the sign and the magnitude: '%x' % -255 is '-ff' */
        long long x = (long long)ival(v);
        if (x < 0) { /* "%" "ll" conv: no flags or width, which would go around the sign */
          if (sn > 4) return tm_fail(r, line, HEED_E_UNSUPPORTED, "flags or width with a negative %%%c", conv);
          k = snprintf(tmp, sizeof tmp,
                       conv == 'o'   ? "-%llo"
                       : conv == 'x' ? "-%llx"
                                     : "-%llX",
                       0ULL - (unsigned long long)x);
        } else {
          k = snprintf(tmp, sizeof tmp, spec, x);
        }
      }
      break;
    default: return tm_fail(r, line, HEED_E_UNSUPPORTED, "format character '%c' is not supported", conv);
    }
    if (k < 0 || (size_t)k >= sizeof tmp) return tm_fail(r, line, HEED_E_UNSUPPORTED, "format field too wide");
    if (tm_buf_put(&b, tmp, (size_t)k, 0)) return tm_fail_mem(r, line);
  }
  /* Python complains about unused arguments only for a tuple or a single
   * non-mapping value (lists count as mappings there, strings do not) */
  int mapping_like = args.kind == TV_DICT || (args.kind == TV_LIST && !(args.flags & TV_TUPLE));
  if (!mapping_like && ai < an)
    return tm_fail(r, line, HEED_E_INVALID, "not all arguments converted during string formatting");
  const tm_str *s = tm_buf_finish(&b, &r->arena);
  if (!s) return tm_fail_mem(r, line);
  *out = tv_str(s);
  return 0;
}

/* ---------- expressions ---------- */

static int ev(tm_render *r, const tm_node *n, tm_val *out);
static int ex_block(tm_render *r, const tm_node *b);

typedef struct ev_args {
  tm_args a;
  tm_val small[8];
} ev_args;

static int eval_args(tm_render *r, const tm_node *n, tm_val *first, ev_args *ea) {
  size_t extra = first ? 1 : 0;
  size_t total = extra + n->nv + n->nw;
  tm_val *v = total <= HEED_ARRAY_LEN(ea->small) ? ea->small : tm_alloc_n(&r->arena, total, sizeof *v);
  if (!v) return tm_fail_mem(r, n->line);
  if (first) v[0] = *first;
  for (uint32_t i = 0; i < n->nv; i++)
    if (ev(r, n->v[i], &v[extra + i])) return -1;
  for (uint32_t i = 0; i < n->nw; i++)
    if (ev(r, n->w[i], &v[extra + n->nv + i])) return -1;
  ea->a.pos = v;
  ea->a.npos = extra + n->nv;
  ea->a.kwv = v + extra + n->nv;
  ea->a.kwn = n->kw;
  ea->a.nkw = n->nw;
  return 0;
}

static tm_scope *cur_scope(tm_render *r);
static void set_scope(tm_render *r, tm_scope *s);

static int call_macro(tm_render *r, uint32_t line, tm_macro *m, const tm_args *a, tm_val *out) {
  const tm_node *def = m->def;
  const tm_str *name = r->t->names[def->id];
  if (r->macro_depth >= EV_MAX_MACRO_DEPTH)
    return tm_fail(r, line, HEED_E_RANGE, "macro calls nested deeper than %d", EV_MAX_MACRO_DEPTH);
  if (a->npos > def->nids)
    return tm_fail(r, line, HEED_E_INVALID, "macro '%s' takes not more than %u argument(s)", name->p, def->nids);
  tm_scope *s = scope_new(r, m->closure);
  if (!s) return tm_fail_mem(r, line);
  uint8_t given_small[32], *given = def->nids <= 32 ? given_small : tm_zalloc(&r->arena, def->nids);
  if (!given) return tm_fail_mem(r, line);
  memset(given, 0, def->nids);
  for (size_t i = 0; i < a->npos; i++) {
    if (scope_set(r, line, s, def->ids[i], a->pos[i])) return -1;
    given[i] = 1;
  }
  for (size_t k = 0; k < a->nkw; k++) {
    uint32_t i = 0;
    for (; i < def->nids; i++)
      if (tm_str_eq(r->t->names[def->ids[i]], a->kwn[k])) break;
    if (i == def->nids)
      return tm_fail(r, line, HEED_E_INVALID, "macro '%s' takes no keyword argument '%s'", name->p, a->kwn[k]->p);
    if (given[i])
      return tm_fail(r, line, HEED_E_INVALID, "macro '%s' got multiple values for argument '%s'", name->p,
                     a->kwn[k]->p);
    if (scope_set(r, line, s, def->ids[i], a->kwv[k])) return -1;
    given[i] = 1;
  }
  tm_scope *saved_scope = cur_scope(r);
  set_scope(r, s);
  uint32_t first_default = def->nids - def->nw;
  for (uint32_t i = 0; i < def->nids; i++) {
    if (given[i]) continue;
    tm_val v = undef_var(r->t->names[def->ids[i]]);
    if (i >= first_default && ev(r, def->w[i - first_default], &v)) return set_scope(r, saved_scope), -1;
    if (scope_set(r, line, s, def->ids[i], v)) return set_scope(r, saved_scope), -1;
  }
  tm_buf cap;
  tm_buf_init(&cap, &r->arena, r->max_output);
  tm_buf *saved_sink = r->sink;
  r->sink = &cap;
  r->macro_depth++;
  int rc = ex_block(r, def->d);
  r->macro_depth--;
  r->sink = saved_sink;
  set_scope(r, saved_scope);
  if (rc < 0) return -1;
  const tm_str *res = tm_buf_finish(&cap, &r->arena);
  if (!res) return tm_fail_mem(r, line);
  *out = tv_str(res);
  return 0;
}

int tm_call(tm_render *r, uint32_t line, tm_val callee, const tm_args *a, tm_val *out) {
  switch (callee.kind) {
  case TV_MACRO: return call_macro(r, line, callee.m, a, out);
  case TV_FUNC: return tm_function_call(r, line, callee.fn, a, out);
  case TV_METHOD: return tm_method_call(r, line, callee.meth->self, callee.meth->id, a, out);
  case TV_UNDEF: return tm_undef_error(r, line, callee);
  default: return tm_fail(r, line, HEED_E_INVALID, "'%s' object is not callable", tm_type_name(callee));
  }
}

static int lookup(tm_render *r, const tm_node *n, tm_val *out) {
  const tm_val *v = scope_get(cur_scope(r), n->id);
  if (v) {
    *out = *v;
    return 0;
  }
  const tm_str *name = r->t->names[n->id];
  int fn = tm_function_lookup(name->p, name->len);
  if (fn >= 0) {
    tm_val f = {.kind = TV_FUNC};
    f.fn = fn;
    *out = f;
    return 0;
  }
  *out = undef_var(name);
  return 0;
}

static int ev(tm_render *r, const tm_node *n, tm_val *out) {
  if (enter(r, n->line)) return -1;
  int rc = 0;
  tm_val a, b;
  switch (n->type) {
  case TN_LIT: *out = n->lit; break;
  case TN_NAME: rc = lookup(r, n, out); break;
  case TN_ATTR:
    rc = ev(r, n->a, &a);
    if (!rc) rc = tm_getattr(r, n->line, a, n->s->p, n->s->len, out);
    break;
  case TN_ITEM:
    rc = ev(r, n->a, &a);
    if (!rc) rc = ev(r, n->b, &b);
    if (!rc) rc = tm_getitem(r, n->line, a, b, out);
    break;
  case TN_SLICE: {
    tm_val p[3];
    const tm_val *pp[3] = {NULL, NULL, NULL};
    const tm_node *parts[3] = {n->b, n->c, n->d};
    rc = ev(r, n->a, &a);
    for (int k = 0; k < 3 && !rc; k++)
      if (parts[k]) {
        rc = ev(r, parts[k], &p[k]);
        pp[k] = &p[k];
      }
    if (!rc) rc = do_slice(r, n->line, a, pp[0], pp[1], pp[2], out);
    break;
  }
  case TN_CALL: {
    ev_args ea;
    rc = ev(r, n->a, &a);
    if (!rc) rc = eval_args(r, n, NULL, &ea);
    if (!rc) rc = tm_call(r, n->line, a, &ea.a, out);
    break;
  }
  case TN_FILTER: {
    ev_args ea;
    rc = ev(r, n->a, &a);
    if (!rc) rc = eval_args(r, n, NULL, &ea);
    if (!rc) rc = tm_filter(r, n->line, n->id, a, &ea.a, out);
    break;
  }
  case TN_TEST: {
    ev_args ea;
    int res = 0;
    rc = ev(r, n->a, &a);
    if (!rc) rc = eval_args(r, n, NULL, &ea);
    if (!rc) rc = tm_test(r, n->line, n->id, a, &ea.a, &res);
    *out = tv_bool(res);
    break;
  }
  case TN_BIN:
    rc = ev(r, n->a, &a);
    if (!rc) rc = ev(r, n->b, &b);
    if (!rc) rc = tm_binop(r, n->line, n->op, a, b, out);
    break;
  case TN_NEG:
  case TN_POS:
    rc = ev(r, n->a, &a);
    if (rc) break;
    if (a.kind == TV_UNDEF) rc = tm_undef_error(r, n->line, a);
    else if (a.kind == TV_FLOAT) *out = tv_float(n->type == TN_NEG ? -a.f : a.f);
    else if (is_int(a)) {
      if (n->type == TN_NEG && ival(a) == INT64_MIN)
        rc = tm_fail(r, n->line, HEED_E_UNSUPPORTED, "integer result does not fit in 64 bits");
      else *out = tv_int(n->type == TN_NEG ? -ival(a) : ival(a));
    } else {
      rc = tm_fail(r, n->line, HEED_E_INVALID, "bad operand type for unary %c: '%s'", n->type == TN_NEG ? '-' : '+',
                   tm_type_name(a));
    }
    break;
  case TN_NOT:
    rc = ev(r, n->a, &a);
    *out = tv_bool(!tm_truthy(a));
    break;
  case TN_AND:
  case TN_OR:
    rc = ev(r, n->a, &a);
    if (rc) break;
    if (tm_truthy(a) == (n->type == TN_OR)) *out = a;
    else rc = ev(r, n->b, out);
    break;
  case TN_CMP: {
    rc = ev(r, n->a, &a);
    int res = 1;
    for (uint32_t i = 0; !rc && i < n->nv; i++) {
      rc = ev(r, n->v[i], &b);
      if (!rc) rc = tm_compare(r, n->line, n->ops[i], a, b, &res);
      if (rc || !res) break;
      a = b;
    }
    *out = tv_bool(res);
    break;
  }
  case TN_CONCAT: {
    tm_buf buf;
    tm_buf_init(&buf, &r->arena, r->max_output);
    for (uint32_t i = 0; !rc && i < n->nv; i++) {
      rc = ev(r, n->v[i], &a);
      if (!rc) rc = tm_val_str(r, n->line, &buf, a);
    }
    if (!rc) {
      const tm_str *s = tm_buf_finish(&buf, &r->arena);
      if (!s) rc = tm_fail_mem(r, n->line);
      else *out = tv_str(s);
    }
    break;
  }
  case TN_COND:
    rc = ev(r, n->b, &a);
    if (rc) break;
    if (tm_truthy(a)) rc = ev(r, n->a, out);
    else if (n->c) rc = ev(r, n->c, out);
    else *out = tm_undef_hint("the inline if-expression evaluated to false and no else section was defined");
    break;
  case TN_LIST:
  case TN_TUPLE: {
    tm_list *l = tm_list_new(&r->arena, n->nv);
    if (!l) {
      rc = tm_fail_mem(r, n->line);
      break;
    }
    for (uint32_t i = 0; !rc && i < n->nv; i++) rc = ev(r, n->v[i], &l->it[i]);
    *out = tv_list(l, n->type == TN_TUPLE ? TV_TUPLE : 0);
    break;
  }
  case TN_DICT: {
    tm_dict *d = tm_dict_new(&r->arena, n->nv);
    if (!d) {
      rc = tm_fail_mem(r, n->line);
      break;
    }
    for (uint32_t i = 0; !rc && i < n->nv; i++) {
      rc = ev(r, n->v[i], &a);
      if (!rc) rc = ev(r, n->w[i], &b);
      if (rc) break;
      if (!tm_hashable(a))
        rc = tm_fail(r, n->line, HEED_E_INVALID, "unhashable type: '%s'", tm_type_name(a));
      else if (tm_dict_set(&r->arena, d, a, b)) rc = tm_fail_mem(r, n->line);
    }
    *out = tv_dict(d);
    break;
  }
  default: rc = tm_fail(r, n->line, HEED_E_INTERNAL, "unknown expression node %d", n->type); break;
  }
  r->depth--;
  return rc ? -1 : 0;
}

/* ---------- statements ---------- */

static tm_scope *cur_scope(tm_render *r) { return r->scope; }
static void set_scope(tm_render *r, tm_scope *s) { r->scope = s; }

static int assign_targets(tm_render *r, uint32_t line, tm_scope *s, const tm_node *n, tm_val v) {
  if (!(n->flags & TN_F_UNPACK) && n->nids == 1) return scope_set(r, line, s, n->ids[0], v);
  const tm_val *items;
  size_t cnt;
  if (v.kind == TV_UNDEF) return tm_undef_error(r, line, v);
  if (v.kind != TV_LIST && v.kind != TV_STR && v.kind != TV_DICT)
    return tm_fail(r, line, HEED_E_INVALID, "cannot unpack non-iterable %s object", tm_type_name(v));
  if (tm_items(r, line, v, &items, &cnt)) return -1;
  if (cnt != n->nids)
    return tm_fail(r, line, HEED_E_INVALID, "%s values to unpack (expected %u, got %zu)",
                   cnt > n->nids ? "too many" : "not enough", n->nids, cnt);
  for (uint32_t i = 0; i < n->nids; i++)
    if (scope_set(r, line, s, n->ids[i], items[i])) return -1;
  return 0;
}

static int apply_filter_chain(tm_render *r, const tm_node *n, tm_val in, tm_val *out) {
  /* n->v holds the chain outermost first: apply from the end */
  for (uint32_t k = n->nv; k > 0; k--) {
    const tm_node *f = n->v[k - 1];
    ev_args ea;
    if (eval_args(r, f, NULL, &ea)) return -1;
    if (tm_filter(r, f->line, f->id, in, &ea.a, &in)) return -1;
  }
  *out = in;
  return 0;
}

static int capture(tm_render *r, const tm_node *body, const tm_str **out, int *flow) {
  tm_buf cap;
  tm_buf_init(&cap, &r->arena, r->max_output);
  tm_buf *saved = r->sink;
  r->sink = &cap;
  int rc = ex_block(r, body);
  r->sink = saved;
  if (rc < 0) return -1;
  *flow = rc;
  *out = tm_buf_finish(&cap, &r->arena);
  return *out ? 0 : tm_fail_mem(r, body->line);
}

static int ex_for(tm_render *r, const tm_node *n) {
  tm_val seq;
  if (ev(r, n->b, &seq)) return -1;
  const tm_val *items;
  size_t cnt;
  if (tm_items(r, n->line, seq, &items, &cnt)) return -1;
  tm_scope *outer = cur_scope(r);
  if (n->c) { /* for x in seq if cond: filter first, loop over what passes */
    tm_val *kept = cnt ? tm_alloc_n(&r->arena, cnt, sizeof *kept) : NULL;
    if (cnt && !kept) return tm_fail_mem(r, n->line);
    size_t k = 0;
    tm_scope *s = NULL;
    for (size_t i = 0; i < cnt; i++) {
      if (tm_charge(r, n->line, 1)) return -1;
      if (!s || s->captured) s = scope_new(r, outer);
      else s->n = 0;
      if (!s || assign_targets(r, n->line, s, n, items[i])) return s ? -1 : tm_fail_mem(r, n->line);
      set_scope(r, s);
      tm_val c;
      int rc = ev(r, n->c, &c);
      set_scope(r, outer);
      if (rc) return -1;
      if (tm_truthy(c)) kept[k++] = items[i];
    }
    items = kept;
    cnt = k;
  }
  tm_loop *loop = tm_zalloc(&r->arena, sizeof *loop);
  if (!loop) return tm_fail_mem(r, n->line);
  loop->items = items;
  loop->n = cnt;
  tm_val lv = {.kind = TV_LOOP};
  lv.loop = loop;
  /* Each iteration gets a fresh scope; the same memory serves unless a macro
   * defined in the body keeps it as its closure. */
  tm_scope *s = NULL;
  for (size_t i = 0; i < cnt; i++) {
    loop->i = i;
    if (tm_charge(r, n->line, 1)) return -1;
    if (!s || s->captured) s = scope_new(r, outer);
    else s->n = 0;
    if (!s) return tm_fail_mem(r, n->line);
    if (r->t->loop_id >= 0 && scope_set(r, n->line, s, r->t->loop_id, lv)) return -1;
    if (assign_targets(r, n->line, s, n, items[i])) return -1;
    set_scope(r, s);
    int rc = ex_block(r, n->d);
    set_scope(r, outer);
    if (rc < 0) return -1;
    if (rc == FLOW_BREAK) break;
  }
  if (!cnt && n->a) {
    tm_scope *s = scope_new(r, outer);
    if (!s) return tm_fail_mem(r, n->line);
    set_scope(r, s);
    int rc = ex_block(r, n->a);
    set_scope(r, outer);
    return rc;
  }
  return 0;
}

static int ex(tm_render *r, const tm_node *n) {
  if (enter(r, n->line)) return -1;
  int rc = FLOW_OK;
  tm_val v;
  switch (n->type) {
  case TN_BLOCK: rc = ex_block(r, n); break;
  case TN_TEXT:
    if (tm_buf_str(r->sink, n->s)) rc = tm_fail_mem(r, n->line);
    break;
  case TN_OUT:
    rc = ev(r, n->a, &v);
    if (!rc) rc = emit(r, n->line, v);
    break;
  case TN_IF:
    for (uint32_t i = 0; i < n->nv; i++) {
      if (ev(r, n->v[i], &v)) {
        rc = -1;
        break;
      }
      if (tm_truthy(v)) {
        rc = ex_block(r, n->w[i]);
        goto done;
      }
    }
    if (rc == 0 && n->a) rc = ex_block(r, n->a);
    break;
  case TN_FOR: rc = ex_for(r, n); break;
  case TN_SET:
    rc = ev(r, n->a, &v);
    if (!rc) rc = assign_targets(r, n->line, cur_scope(r), n, v);
    break;
  case TN_SET_NS: {
    const tm_val *ns = scope_get(cur_scope(r), n->id);
    if (!ns || ns->kind != TV_NS) {
      rc = tm_fail(r, n->line, HEED_E_INVALID, "cannot assign attribute on non-namespace object");
      break;
    }
    tm_dict *d = ns->d;
    rc = ev(r, n->a, &v);
    if (!rc && tm_dict_set(&r->arena, d, tv_str(n->s), v)) rc = tm_fail_mem(r, n->line);
    break;
  }
  case TN_SET_BLOCK: {
    const tm_str *s;
    int flow = 0;
    rc = capture(r, n->d, &s, &flow);
    if (rc) break;
    rc = apply_filter_chain(r, n, tv_str(s), &v);
    if (rc) break;
    if (n->flags & TN_F_NS) {
      const tm_val *ns = scope_get(cur_scope(r), n->id);
      if (!ns || ns->kind != TV_NS)
        rc = tm_fail(r, n->line, HEED_E_INVALID, "cannot assign attribute on non-namespace object");
      else if (tm_dict_set(&r->arena, ns->d, tv_str(n->s), v)) rc = tm_fail_mem(r, n->line);
    } else {
      rc = scope_set(r, n->line, cur_scope(r), n->id, v);
    }
    if (!rc) rc = flow;
    break;
  }
  case TN_MACRO: {
    tm_macro *m = tm_alloc(&r->arena, sizeof *m);
    if (!m) {
      rc = tm_fail_mem(r, n->line);
      break;
    }
    m->def = n;
    m->closure = cur_scope(r);
    for (tm_scope *x = m->closure; x && !x->captured; x = x->up) x->captured = 1;
    tm_val mv = {.kind = TV_MACRO};
    mv.m = m;
    rc = scope_set(r, n->line, cur_scope(r), n->id, mv);
    break;
  }
  case TN_BREAK: rc = FLOW_BREAK; break;
  case TN_CONTINUE: rc = FLOW_CONTINUE; break;
  case TN_FILTER_BLOCK: {
    const tm_str *s;
    int flow = 0;
    rc = capture(r, n->d, &s, &flow);
    if (!rc) rc = apply_filter_chain(r, n, tv_str(s), &v);
    if (!rc) rc = emit(r, n->line, v);
    if (!rc) rc = flow;
    break;
  }
  case TN_WITH: {
    tm_scope *outer = cur_scope(r), *s = scope_new(r, outer);
    if (!s) {
      rc = tm_fail_mem(r, n->line);
      break;
    }
    for (uint32_t i = 0; !rc && i < n->nids; i++) {
      rc = ev(r, n->w[i], &v);
      if (!rc) rc = scope_set(r, n->line, s, n->ids[i], v);
    }
    if (rc) break;
    set_scope(r, s);
    rc = ex_block(r, n->d);
    set_scope(r, outer);
    break;
  }
  default: rc = tm_fail(r, n->line, HEED_E_INTERNAL, "unknown statement node %d", n->type); break;
  }
done:
  r->depth--;
  return rc;
}

static int ex_block(tm_render *r, const tm_node *b) {
  for (uint32_t i = 0; i < b->nv; i++) {
    int rc = ex(r, b->v[i]);
    if (rc) return rc;
  }
  return FLOW_OK;
}

/* ---------- rendering ---------- */

void heed_template_options_init(heed_template_options *opt) {
  memset(opt, 0, sizeof *opt);
  opt->max_output = HEED_TEMPLATE_MAX_OUTPUT;
  opt->max_memory = HEED_TEMPLATE_MAX_MEMORY;
  opt->max_steps = HEED_TEMPLATE_MAX_STEPS;
}

void heed_template_text_free(heed_template_text *t) {
  if (!t) return;
  free(t->text);
  free(t->spans);
  memset(t, 0, sizeof *t);
}

heed_status tm_render_init(tm_render *r, const heed_template *t, const heed_template_options *opt, heed_error *err) {
  memset(r, 0, sizeof *r);
  heed_template_options def;
  if (!opt) {
    heed_template_options_init(&def);
    opt = &def;
  }
  r->t = t;
  r->err = err;
  r->max_output = opt->max_output ? opt->max_output : HEED_TEMPLATE_MAX_OUTPUT;
  r->max_steps = opt->max_steps ? opt->max_steps : HEED_TEMPLATE_MAX_STEPS;
  r->now = opt->now;
  r->flags = opt->flags;
  tm_arena_init(&r->arena, opt->max_memory ? opt->max_memory : HEED_TEMPLATE_MAX_MEMORY);
  tm_buf_init(&r->out, NULL, r->max_output);
  r->sink = &r->out;
  r->globals = scope_new(r, NULL);
  if (!r->globals) return heed_err_set(err, HEED_E_NOMEM, "template: out of memory");
  r->scope = r->globals;
  return HEED_OK;
}

int tm_render_set(tm_render *r, const char *name, size_t n, tm_val v) {
  int32_t id = tm_name_id(r->t, name, n);
  if (id < 0) return 0;
  return scope_set(r, 0, r->globals, id, v);
}

void tm_render_fini(tm_render *r) {
  tm_buf_release(&r->out);
  tm_arena_free(&r->arena);
}

heed_status tm_render_run(tm_render *r, heed_template_text *out) {
  memset(out, 0, sizeof *out);
  locale_t old = r->t->loc ? uselocale(r->t->loc) : (locale_t)0;
  int rc = ex_block(r, r->t->root);
  if (old) uselocale(old);
  if (rc < 0 || r->failed) return r->err ? r->err->status : HEED_E_INVALID;
  /* spans: a partition of the text, alternating */
  const tm_buf *b = &r->out;
  size_t n = 0;
  size_t at = 0;
  for (size_t i = 0; i < b->nr; i++) {
    if (b->r[i].off > at) n++;
    n++;
    at = b->r[i].off + b->r[i].len;
  }
  if (at < b->len) n++;
  heed_text_span *sp = n ? malloc(n * sizeof *sp) : NULL;
  char *text = malloc(b->len + 1);
  if ((n && !sp) || !text) {
    free(sp);
    free(text);
    return heed_err_set(r->err, HEED_E_NOMEM, "template: out of memory");
  }
  size_t k = 0;
  at = 0;
  for (size_t i = 0; i < b->nr; i++) {
    if (b->r[i].off > at) sp[k++] = (heed_text_span){at, b->r[i].off - at, 0};
    sp[k++] = (heed_text_span){b->r[i].off, b->r[i].len, 1};
    at = b->r[i].off + b->r[i].len;
  }
  if (at < b->len) sp[k++] = (heed_text_span){at, b->len - at, 0};
  if (b->len) memcpy(text, b->p, b->len);
  text[b->len] = '\0';
  out->text = text;
  out->length = b->len;
  out->spans = sp;
  out->n_spans = k;
  return HEED_OK;
}

heed_status heed_template_render(const heed_template *t, const char *context_json, size_t context_len,
                                 const heed_template_var *trusted, size_t n_trusted, const heed_template_options *opt,
                                 heed_template_text *out, heed_error *err) {
  if (!out) return heed_err_set(err, HEED_E_INVALID, "heed_template_render: out is NULL");
  memset(out, 0, sizeof *out);
  if (!t) return heed_err_set(err, HEED_E_INVALID, "heed_template_render: template is NULL");
  heed_error local;
  heed_err_clear(&local);
  heed_error *e = err ? err : &local;
  tm_render r;
  heed_status st = tm_render_init(&r, t, opt, e);
  if (st) {
    tm_render_fini(&r);
    return st;
  }
  if (context_json && context_len) {
    tm_val ctx;
    char msg[256];
    locale_t old = t->loc ? uselocale(t->loc) : (locale_t)0;
    int rc = tm_json_parse(&r.arena, context_json, context_len, 1, &ctx, msg, sizeof msg);
    if (old) uselocale(old);
    if (rc) {
      tm_render_fini(&r);
      return heed_err_set(err, r.arena.over == 2 ? HEED_E_NOMEM : HEED_E_INVALID, "template context: %s", msg);
    }
    if (ctx.kind != TV_DICT) {
      tm_render_fini(&r);
      return heed_err_set(err, HEED_E_INVALID, "template context: a JSON object is needed, not %s", tm_type_name(ctx));
    }
    for (size_t i = 0; i < ctx.d->n; i++)
      if (tm_render_set(&r, ctx.d->k[i].s->p, ctx.d->k[i].s->len, ctx.d->v[i])) {
        tm_render_fini(&r);
        return e->status;
      }
  }
  for (size_t i = 0; i < n_trusted; i++) {
    if (!trusted[i].name || !trusted[i].value) {
      tm_render_fini(&r);
      return heed_err_set(err, HEED_E_INVALID, "heed_template_render: trusted variable %zu has a NULL name or value",
                          i);
    }
    size_t vl = strlen(trusted[i].value);
    if (!tm_utf8_valid(trusted[i].value, vl)) {
      tm_render_fini(&r);
      return heed_err_set(err, HEED_E_INVALID, "trusted variable '%s' is not valid UTF-8", trusted[i].name);
    }
    const tm_str *s = tm_str_new(&r.arena, trusted[i].value, vl, 0);
    if (!s || tm_render_set(&r, trusted[i].name, strlen(trusted[i].name), tv_str(s))) {
      tm_render_fini(&r);
      return heed_err_set(err, HEED_E_NOMEM, "template: out of memory");
    }
  }
  st = tm_render_run(&r, out);
  tm_render_fini(&r);
  return st;
}
