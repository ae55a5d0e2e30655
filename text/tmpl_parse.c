/* text/tmpl_parse.c - tokens to a tree, by jinja2's grammar:
 *
 *   expression  := or ("if" or ("else" expression)?)*
 *   or, and     := the next level joined by "or" / "and"
 *   not         := "not" not | compare
 *   compare     := math1 ((== != < <= > >= | "in" | "not" "in") math1)*
 *   math1       := concat (("+" | "-") concat)*
 *   concat      := math2 ("~" math2)*
 *   math2       := pow (("*" | "/" | "//" | "%") pow)*
 *   pow         := unary ("**" unary)*
 *   unary       := ("-" | "+") unary-without-filters | primary, then
 *                  postfix (.name  [subscript]  (call)) and filters
 *                  ("|" name(args)  "is" ["not"] name args  (call))
 *
 * so that, as in jinja2, filters bind tighter than arithmetic and -2**2 is 4.
 * Filters and tests are looked up here: an unknown name is an error before
 * anything renders, as in jinja2. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "text/tmpl_internal.h"

#define P_MAX_DEPTH 200

const char *const tm_filter_names[TF_COUNT_] = {
#define TM_X_(id, name) name,
    TM_FILTER_LIST(TM_X_)
#undef TM_X_
};
const char *const tm_test_names[TT_COUNT_] = {
#define TM_X_(id, name) name,
    TM_TEST_LIST(TM_X_)
#undef TM_X_
};

int tm_filter_lookup(const char *name, size_t n) {
  for (int i = 0; i < TF_COUNT_; i++)
    if (strlen(tm_filter_names[i]) == n && memcmp(tm_filter_names[i], name, n) == 0) return i;
  return -1;
}

int tm_test_lookup(const char *name, size_t n) {
  for (int i = 0; i < TT_COUNT_; i++)
    if (strlen(tm_test_names[i]) == n && memcmp(tm_test_names[i], name, n) == 0) return i;
  return -1;
}

/* Is name one of the space-separated words of list? */
static int in_words(const char *list, const char *name, size_t n) {
  const char *p = list;
  while (*p) {
    const char *e = strchr(p, ' ');
    size_t k = e ? (size_t)(e - p) : strlen(p);
    if (k == n && memcmp(p, name, n) == 0) return 1;
    if (!e) break;
    p = e + 1;
  }
  return 0;
}

typedef struct ps {
  heed_template *t;
  tm_arena *a;
  const tm_tok *tk;
  size_t n, i;
  heed_error *err;
  int failed;
  unsigned depth;
  unsigned loops; /* for loops around the current statement (inside the current macro) */
  /* end tags being looked for, innermost last, for messages */
  const char *const *ends[64];
  unsigned n_ends;
  size_t names_cap;
} ps;

static int p_fail(ps *p, uint32_t line, heed_status st, const char *fmt, ...) HEED_PRINTF(4, 5);
static int p_fail(ps *p, uint32_t line, heed_status st, const char *fmt, ...) {
  if (p->failed) return -1;
  char msg[600];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  heed_err_set(p->err, st, "template line %u: %s", line, msg);
  p->failed = 1;
  return -1;
}

static int p_nomem(ps *p) {
  if (!p->failed) heed_err_set(p->err, HEED_E_NOMEM, "template: out of memory");
  p->failed = 1;
  return -1;
}

static const tm_tok *cur(ps *p) { return &p->tk[p->i]; }
static const tm_tok *look(ps *p, size_t k) { return &p->tk[p->i + k < p->n ? p->i + k : p->n - 1]; }
static void next(ps *p) {
  if (p->i + 1 < p->n) p->i++;
}

static int tok_is_name(const tm_tok *t, const char *name) {
  return t->type == TK_NAME && t->len == strlen(name) && memcmp(t->p, name, t->len) == 0;
}
static int tok_is_op(const tm_tok *t, int op) { return t->type == TK_OP && t->op == op; }

static const char *op_text(int op) {
  static const char *const s[] = {"+", "-",  "*",  "/", "//", "%", "**", "~", "[", "]", "(", ")", "{",
                                  "}", "==", "!=", ">", ">=", "<", "<=", "=", ".", ":", "|", ",", ";"};
  return op >= 0 && op < (int)HEED_ARRAY_LEN(s) ? s[op] : "?";
}

/* What a token is, for messages: "'foo'", "end of print statement", ... */
static void describe(const tm_tok *t, char *buf, size_t cap) {
  switch (t->type) {
  case TK_EOF: heed_strlcpy(buf, "end of template", cap); break;
  case TK_DATA: heed_strlcpy(buf, "template data", cap); break;
  case TK_VAR_BEGIN: heed_strlcpy(buf, "'{{'", cap); break;
  case TK_VAR_END: heed_strlcpy(buf, "end of print statement '}}'", cap); break;
  case TK_BLOCK_BEGIN: heed_strlcpy(buf, "'{%'", cap); break;
  case TK_BLOCK_END: heed_strlcpy(buf, "end of statement block '%}'", cap); break;
  case TK_OP: snprintf(buf, cap, "'%s'", op_text(t->op)); break;
  case TK_STRING: heed_strlcpy(buf, "a string", cap); break;
  case TK_INT:
  case TK_FLOAT: snprintf(buf, cap, "number '%.*s'", (int)(t->len > 40 ? 40 : t->len), t->p); break;
  default: snprintf(buf, cap, "'%.*s'", (int)(t->len > 60 ? 60 : t->len), t->p); break;
  }
}

static int p_unexpected(ps *p, const char *expected) {
  char d[128];
  describe(cur(p), d, sizeof d);
  if (expected) return p_fail(p, cur(p)->line, HEED_E_INVALID, "expected %s, got %s", expected, d);
  return p_fail(p, cur(p)->line, HEED_E_INVALID, "unexpected %s", d);
}

static int expect_op(ps *p, int op) {
  if (!tok_is_op(cur(p), op)) {
    char e[16];
    snprintf(e, sizeof e, "'%s'", op_text(op));
    return p_unexpected(p, e);
  }
  next(p);
  return 0;
}

static int expect_type(ps *p, int type, const char *what) {
  if (cur(p)->type != type) return p_unexpected(p, what);
  next(p);
  return 0;
}

static tm_node *node(ps *p, int type, uint32_t line) {
  tm_node *n = tm_zalloc(p->a, sizeof *n);
  if (!n) {
    p_nomem(p);
    return NULL;
  }
  n->type = (uint8_t)type;
  n->line = line;
  return n;
}

/* A growing array of nodes (arena; old copies are left behind). */
typedef struct nvec {
  tm_node **v;
  uint32_t n, cap;
} nvec;

static int nv_push(ps *p, nvec *v, tm_node *x) {
  if (v->n == v->cap) {
    uint32_t cap = v->cap ? v->cap * 2 : 4;
    tm_node **nv = tm_alloc_n(p->a, cap, sizeof *nv);
    if (!nv) return p_nomem(p);
    if (v->n) memcpy(nv, v->v, v->n * sizeof *nv);
    v->v = nv;
    v->cap = cap;
  }
  v->v[v->n++] = x;
  return 0;
}

static int32_t intern(ps *p, const char *s, size_t n) {
  heed_template *t = p->t;
  for (uint32_t i = 0; i < t->n_names; i++)
    if (t->names[i]->len == n && memcmp(t->names[i]->p, s, n) == 0) return (int32_t)i;
  if (t->n_names == p->names_cap) {
    size_t cap = p->names_cap ? p->names_cap * 2 : 32;
    const tm_str **v = tm_alloc_n(p->a, cap, sizeof *v);
    if (!v) return p_nomem(p);
    if (t->n_names) memcpy(v, t->names, t->n_names * sizeof *v);
    t->names = v;
    p->names_cap = cap;
  }
  const tm_str *name = tm_str_new(p->a, s, n, 0);
  if (!name) return p_nomem(p);
  t->names[t->n_names] = name;
  return (int32_t)t->n_names++;
}

static tm_node *p_expr(ps *p, int condexpr);
static tm_node *p_tuple(ps *p, int simplified, int condexpr, const char *extra_end, int explicit_parens);
static tm_node *p_unary(ps *p, int with_filter);
static tm_node *p_primary(ps *p);
static tm_node *p_postfix(ps *p, tm_node *n);
static tm_node *p_filters(ps *p, tm_node *n);
static tm_node *p_filter(ps *p, tm_node *input, int start_inline);

static int enter(ps *p) {
  if (++p->depth > P_MAX_DEPTH)
    return p_fail(p, cur(p)->line, HEED_E_RANGE, "expression or statements nested deeper than %d", P_MAX_DEPTH);
  return 0;
}
static void leave(ps *p) { p->depth--; }

/* (args, kw=values) after a callee, filter or test. */
static int p_call_args(ps *p, tm_node *n) {
  uint32_t line = cur(p)->line;
  if (expect_op(p, OP_LPAREN)) return -1;
  nvec args = {0}, kwv = {0};
  const tm_str **kwn = NULL;
  uint32_t kcap = 0;
  int need_comma = 0;
  while (!tok_is_op(cur(p), OP_RPAREN)) {
    if (need_comma) {
      if (expect_op(p, OP_COMMA)) return -1;
      if (tok_is_op(cur(p), OP_RPAREN)) break;
    }
    if (tok_is_op(cur(p), OP_MUL) || tok_is_op(cur(p), OP_POW))
      return p_fail(p, cur(p)->line, HEED_E_UNSUPPORTED, "*args and **kwargs in calls are not supported");
    if (cur(p)->type == TK_NAME && tok_is_op(look(p, 1), OP_ASSIGN)) {
      const tm_tok *k = cur(p);
      next(p);
      next(p);
      tm_node *v = p_expr(p, 1);
      if (!v) return -1;
      if (kwv.n == kcap) {
        uint32_t cap = kcap ? kcap * 2 : 4;
        const tm_str **nk = tm_alloc_n(p->a, cap, sizeof *nk);
        if (!nk) return p_nomem(p);
        if (kwv.n) memcpy(nk, kwn, kwv.n * sizeof *nk);
        kwn = nk;
        kcap = cap;
      }
      kwn[kwv.n] = tm_str_new(p->a, k->p, k->len, 0);
      if (!kwn[kwv.n] || nv_push(p, &kwv, v)) return p_nomem(p);
    } else {
      if (kwv.n) return p_fail(p, line, HEED_E_INVALID, "invalid syntax for function call expression");
      tm_node *v = p_expr(p, 1);
      if (!v || nv_push(p, &args, v)) return -1;
    }
    need_comma = 1;
  }
  next(p); /* ')' */
  n->v = args.v;
  n->nv = args.n;
  n->w = kwv.v;
  n->nw = kwv.n;
  n->kw = kwn;
  return 0;
}

static tm_node *p_subscribed(ps *p) {
  uint32_t line = cur(p)->line;
  tm_node *parts[3] = {NULL, NULL, NULL};
  if (tok_is_op(cur(p), OP_COLON)) {
    next(p);
  } else {
    tm_node *e = p_expr(p, 1);
    if (!e) return NULL;
    if (!tok_is_op(cur(p), OP_COLON)) return e;
    next(p);
    parts[0] = e;
  }
  if (!tok_is_op(cur(p), OP_COLON) && !tok_is_op(cur(p), OP_RBRACKET) && !tok_is_op(cur(p), OP_COMMA)) {
    parts[1] = p_expr(p, 1);
    if (!parts[1]) return NULL;
  }
  if (tok_is_op(cur(p), OP_COLON)) {
    next(p);
    if (!tok_is_op(cur(p), OP_RBRACKET) && !tok_is_op(cur(p), OP_COMMA)) {
      parts[2] = p_expr(p, 1);
      if (!parts[2]) return NULL;
    }
  }
  tm_node *s = node(p, TN_SLICE, line);
  if (!s) return NULL;
  s->b = parts[0];
  s->c = parts[1];
  s->d = parts[2];
  return s;
}

static tm_node *p_postfix(ps *p, tm_node *n) {
  for (;;) {
    const tm_tok *t = cur(p);
    if (tok_is_op(t, OP_DOT)) {
      next(p);
      const tm_tok *a = cur(p);
      if (a->type == TK_NAME) {
        next(p);
        tm_node *g = node(p, TN_ATTR, t->line);
        if (!g) return NULL;
        g->a = n;
        g->s = tm_str_new(p->a, a->p, a->len, 0);
        if (!g->s) return p_nomem(p), NULL;
        n = g;
      } else if (a->type == TK_INT) {
        next(p);
        tm_node *g = node(p, TN_ITEM, t->line), *k = node(p, TN_LIT, a->line);
        if (!g || !k) return NULL;
        k->lit = tv_int(a->i);
        g->a = n;
        g->b = k;
        n = g;
      } else {
        p_unexpected(p, "a name or number after '.'");
        return NULL;
      }
    } else if (tok_is_op(t, OP_LBRACKET)) {
      next(p);
      nvec args = {0};
      while (!tok_is_op(cur(p), OP_RBRACKET)) {
        if (args.n && expect_op(p, OP_COMMA)) return NULL;
        if (tok_is_op(cur(p), OP_RBRACKET)) break;
        tm_node *e = p_subscribed(p);
        if (!e || nv_push(p, &args, e)) return NULL;
      }
      next(p);
      if (!args.n) {
        p_fail(p, t->line, HEED_E_INVALID, "expected a subscript expression");
        return NULL;
      }
      tm_node *key;
      if (args.n == 1) {
        key = args.v[0];
      } else {
        key = node(p, TN_TUPLE, t->line);
        if (!key) return NULL;
        key->v = args.v;
        key->nv = args.n;
        for (uint32_t i = 0; i < args.n; i++)
          if (args.v[i]->type == TN_SLICE) {
            p_fail(p, t->line, HEED_E_UNSUPPORTED, "multi-dimensional slices are not supported");
            return NULL;
          }
      }
      if (key->type == TN_SLICE) {
        key->a = n;
        n = key;
      } else {
        tm_node *g = node(p, TN_ITEM, t->line);
        if (!g) return NULL;
        g->a = n;
        g->b = key;
        n = g;
      }
    } else if (tok_is_op(t, OP_LPAREN)) {
      tm_node *c = node(p, TN_CALL, t->line);
      if (!c) return NULL;
      c->a = n;
      if (p_call_args(p, c)) return NULL;
      n = c;
    } else {
      return n;
    }
  }
}

/* A filter or test name: name(.name)*. */
static int p_dotted_name(ps *p, char *buf, size_t cap, size_t *len) {
  if (cur(p)->type != TK_NAME) return p_unexpected(p, "a name");
  size_t n = 0;
  for (;;) {
    const tm_tok *t = cur(p);
    if (n + t->len + 1 >= cap) return p_fail(p, t->line, HEED_E_INVALID, "name too long");
    memcpy(buf + n, t->p, t->len);
    n += t->len;
    next(p);
    if (!tok_is_op(cur(p), OP_DOT)) break;
    next(p);
    if (cur(p)->type != TK_NAME) return p_unexpected(p, "a name");
    buf[n++] = '.';
  }
  buf[n] = '\0';
  *len = n;
  return 0;
}

static tm_node *p_filter(ps *p, tm_node *input, int start_inline) {
  while (tok_is_op(cur(p), OP_PIPE) || start_inline) {
    if (!start_inline) next(p);
    start_inline = 0;
    uint32_t line = cur(p)->line;
    char name[128];
    size_t nl;
    if (p_dotted_name(p, name, sizeof name, &nl)) return NULL;
    int id = tm_filter_lookup(name, nl);
    if (id < 0) {
      if (in_words(TM_FILTER_UNSUPPORTED, name, nl))
        p_fail(p, line, HEED_E_UNSUPPORTED, "filter '%s' is not supported", name);
      else p_fail(p, line, HEED_E_INVALID, "unknown filter '%s'", name);
      return NULL;
    }
    tm_node *f = node(p, TN_FILTER, line);
    if (!f) return NULL;
    f->a = input;
    f->id = id;
    if (tok_is_op(cur(p), OP_LPAREN) && p_call_args(p, f)) return NULL;
    input = f;
  }
  return input;
}

static tm_node *p_test(ps *p, tm_node *input) {
  uint32_t line = cur(p)->line;
  next(p); /* is */
  int negated = 0;
  if (tok_is_name(cur(p), "not")) {
    next(p);
    negated = 1;
  }
  char name[128];
  size_t nl;
  if (p_dotted_name(p, name, sizeof name, &nl)) return NULL;
  int id = tm_test_lookup(name, nl);
  if (id < 0) {
    p_fail(p, line, HEED_E_INVALID, "unknown test '%s'", name);
    return NULL;
  }
  tm_node *t = node(p, TN_TEST, line);
  if (!t) return NULL;
  t->a = input;
  t->id = id;
  const tm_tok *c = cur(p);
  if (tok_is_op(c, OP_LPAREN)) {
    if (p_call_args(p, t)) return NULL;
  } else if ((c->type == TK_NAME || c->type == TK_STRING || c->type == TK_INT || c->type == TK_FLOAT ||
              tok_is_op(c, OP_LPAREN) || tok_is_op(c, OP_LBRACKET) || tok_is_op(c, OP_LBRACE)) &&
             !tok_is_name(c, "else") && !tok_is_name(c, "or") && !tok_is_name(c, "and")) {
    if (tok_is_name(c, "is")) {
      p_fail(p, c->line, HEED_E_INVALID, "you cannot chain multiple tests with is");
      return NULL;
    }
    if (enter(p)) return NULL;
    tm_node *arg = p_primary(p);
    if (arg) arg = p_postfix(p, arg);
    leave(p);
    if (!arg) return NULL;
    t->v = tm_alloc(p->a, sizeof *t->v);
    if (!t->v) return p_nomem(p), NULL;
    t->v[0] = arg;
    t->nv = 1;
  }
  if (negated) {
    tm_node *n = node(p, TN_NOT, line);
    if (!n) return NULL;
    n->a = t;
    return n;
  }
  return t;
}

static tm_node *p_filters(ps *p, tm_node *n) {
  for (;;) {
    if (tok_is_op(cur(p), OP_PIPE)) {
      n = p_filter(p, n, 0);
    } else if (tok_is_name(cur(p), "is")) {
      n = p_test(p, n);
    } else if (tok_is_op(cur(p), OP_LPAREN)) {
      tm_node *c = node(p, TN_CALL, cur(p)->line);
      if (!c) return NULL;
      c->a = n;
      if (p_call_args(p, c)) return NULL;
      n = c;
    } else {
      return n;
    }
    if (!n) return NULL;
  }
}

static tm_node *p_list_or_dict(ps *p, int dict) {
  uint32_t line = cur(p)->line;
  next(p);
  int close = dict ? OP_RBRACE : OP_RBRACKET;
  nvec k = {0}, v = {0};
  while (!tok_is_op(cur(p), close)) {
    if (k.n && expect_op(p, OP_COMMA)) return NULL;
    if (tok_is_op(cur(p), close)) break;
    tm_node *e = p_expr(p, 1);
    if (!e || nv_push(p, &k, e)) return NULL;
    if (dict) {
      if (expect_op(p, OP_COLON)) return NULL;
      tm_node *x = p_expr(p, 1);
      if (!x || nv_push(p, &v, x)) return NULL;
    }
  }
  next(p);
  tm_node *n = node(p, dict ? TN_DICT : TN_LIST, line);
  if (!n) return NULL;
  n->v = k.v;
  n->nv = k.n;
  n->w = v.v;
  n->nw = v.n;
  return n;
}

static tm_node *p_primary(ps *p) {
  const tm_tok *t = cur(p);
  tm_node *n;
  if (t->type == TK_NAME) {
    next(p);
    if (tok_is_name(t, "true") || tok_is_name(t, "True") || tok_is_name(t, "false") || tok_is_name(t, "False")) {
      if (!(n = node(p, TN_LIT, t->line))) return NULL;
      n->lit = tv_bool(t->p[0] == 't' || t->p[0] == 'T');
    } else if (tok_is_name(t, "none") || tok_is_name(t, "None")) {
      if (!(n = node(p, TN_LIT, t->line))) return NULL;
      n->lit = tv_none();
    } else {
      if (!(n = node(p, TN_NAME, t->line))) return NULL;
      n->id = intern(p, t->p, t->len);
      if (n->id < 0) return NULL;
    }
    return n;
  }
  if (t->type == TK_STRING) {
    next(p);
    const tm_str *s = t->s;
    if (cur(p)->type == TK_STRING) { /* adjacent literals join */
      tm_buf b;
      tm_buf_init(&b, p->a, SIZE_MAX);
      if (tm_buf_str(&b, s)) return p_nomem(p), NULL;
      while (cur(p)->type == TK_STRING) {
        if (tm_buf_str(&b, cur(p)->s)) return p_nomem(p), NULL;
        next(p);
      }
      s = tm_buf_finish(&b, p->a);
      if (!s) return p_nomem(p), NULL;
    }
    if (!(n = node(p, TN_LIT, t->line))) return NULL;
    n->lit = tv_str(s);
    return n;
  }
  if (t->type == TK_INT || t->type == TK_FLOAT) {
    next(p);
    if (!(n = node(p, TN_LIT, t->line))) return NULL;
    n->lit = t->type == TK_INT ? tv_int(t->i) : tv_float(t->f);
    return n;
  }
  if (tok_is_op(t, OP_LPAREN)) {
    next(p);
    n = p_tuple(p, 0, 1, NULL, 1);
    if (!n || expect_op(p, OP_RPAREN)) return NULL;
    return n;
  }
  if (tok_is_op(t, OP_LBRACKET)) return p_list_or_dict(p, 0);
  if (tok_is_op(t, OP_LBRACE)) return p_list_or_dict(p, 1);
  p_unexpected(p, NULL);
  return NULL;
}

static tm_node *p_unary(ps *p, int with_filter) {
  if (enter(p)) return NULL;
  const tm_tok *t = cur(p);
  tm_node *n;
  if (tok_is_op(t, OP_SUB) || tok_is_op(t, OP_ADD)) {
    next(p);
    tm_node *x = p_unary(p, 0);
    if (!x) return NULL;
    n = node(p, tok_is_op(t, OP_SUB) ? TN_NEG : TN_POS, t->line);
    if (!n) return NULL;
    n->a = x;
  } else {
    n = p_primary(p);
  }
  if (n) n = p_postfix(p, n);
  if (n && with_filter) n = p_filters(p, n);
  leave(p);
  return n;
}

static tm_node *bin(ps *p, int type, int op, uint32_t line, tm_node *a, tm_node *b) {
  tm_node *n = node(p, type, line);
  if (!n) return NULL;
  n->op = (uint8_t)op;
  n->a = a;
  n->b = b;
  return n;
}

static tm_node *p_pow(ps *p) {
  uint32_t line = cur(p)->line;
  tm_node *l = p_unary(p, 1);
  while (l && tok_is_op(cur(p), OP_POW)) {
    next(p);
    tm_node *r = p_unary(p, 1);
    if (!r) return NULL;
    l = bin(p, TN_BIN, OP_POW, line, l, r);
    line = cur(p)->line;
  }
  return l;
}

static tm_node *p_math2(ps *p) {
  uint32_t line = cur(p)->line;
  tm_node *l = p_pow(p);
  while (l && cur(p)->type == TK_OP &&
         (cur(p)->op == OP_MUL || cur(p)->op == OP_DIV || cur(p)->op == OP_FLOORDIV || cur(p)->op == OP_MOD)) {
    int op = cur(p)->op;
    next(p);
    tm_node *r = p_pow(p);
    if (!r) return NULL;
    l = bin(p, TN_BIN, op, line, l, r);
    line = cur(p)->line;
  }
  return l;
}

static tm_node *p_concat(ps *p) {
  uint32_t line = cur(p)->line;
  tm_node *first = p_math2(p);
  if (!first || !tok_is_op(cur(p), OP_TILDE)) return first;
  nvec v = {0};
  if (nv_push(p, &v, first)) return NULL;
  while (tok_is_op(cur(p), OP_TILDE)) {
    next(p);
    tm_node *x = p_math2(p);
    if (!x || nv_push(p, &v, x)) return NULL;
  }
  tm_node *n = node(p, TN_CONCAT, line);
  if (!n) return NULL;
  n->v = v.v;
  n->nv = v.n;
  return n;
}

static tm_node *p_math1(ps *p) {
  uint32_t line = cur(p)->line;
  tm_node *l = p_concat(p);
  while (l && cur(p)->type == TK_OP && (cur(p)->op == OP_ADD || cur(p)->op == OP_SUB)) {
    int op = cur(p)->op;
    next(p);
    tm_node *r = p_concat(p);
    if (!r) return NULL;
    l = bin(p, TN_BIN, op, line, l, r);
    line = cur(p)->line;
  }
  return l;
}

static tm_node *p_compare(ps *p) {
  uint32_t line = cur(p)->line;
  tm_node *first = p_math1(p);
  if (!first) return NULL;
  nvec v = {0};
  uint8_t ops[64];
  for (;;) {
    const tm_tok *t = cur(p);
    int op = -1;
    if (t->type == TK_OP && t->op >= OP_EQ && t->op <= OP_LTEQ) {
      op = t->op;
      next(p);
    } else if (tok_is_name(t, "in")) {
      op = TN_CMP_IN;
      next(p);
    } else if (tok_is_name(t, "not") && tok_is_name(look(p, 1), "in")) {
      op = TN_CMP_NOTIN;
      next(p);
      next(p);
    } else {
      break;
    }
    if (v.n == HEED_ARRAY_LEN(ops)) {
      p_fail(p, t->line, HEED_E_RANGE, "more than %zu chained comparisons", HEED_ARRAY_LEN(ops));
      return NULL;
    }
    ops[v.n] = (uint8_t)op;
    tm_node *x = p_math1(p);
    if (!x || nv_push(p, &v, x)) return NULL;
  }
  if (!v.n) return first;
  tm_node *n = node(p, TN_CMP, line);
  if (!n) return NULL;
  n->a = first;
  n->v = v.v;
  n->nv = v.n;
  n->ops = tm_alloc(p->a, v.n);
  if (!n->ops) return p_nomem(p), NULL;
  memcpy(n->ops, ops, v.n);
  return n;
}

static tm_node *p_not(ps *p) {
  if (tok_is_name(cur(p), "not")) {
    uint32_t line = cur(p)->line;
    next(p);
    if (enter(p)) return NULL;
    tm_node *x = p_not(p);
    leave(p);
    if (!x) return NULL;
    tm_node *n = node(p, TN_NOT, line);
    if (!n) return NULL;
    n->a = x;
    return n;
  }
  return p_compare(p);
}

static tm_node *p_and(ps *p) {
  uint32_t line = cur(p)->line;
  tm_node *l = p_not(p);
  while (l && tok_is_name(cur(p), "and")) {
    next(p);
    tm_node *r = p_not(p);
    if (!r) return NULL;
    l = bin(p, TN_AND, 0, line, l, r);
    line = cur(p)->line;
  }
  return l;
}

static tm_node *p_or(ps *p) {
  uint32_t line = cur(p)->line;
  tm_node *l = p_and(p);
  while (l && tok_is_name(cur(p), "or")) {
    next(p);
    tm_node *r = p_and(p);
    if (!r) return NULL;
    l = bin(p, TN_OR, 0, line, l, r);
    line = cur(p)->line;
  }
  return l;
}

static tm_node *p_expr(ps *p, int condexpr) {
  if (enter(p)) return NULL;
  uint32_t line = cur(p)->line;
  tm_node *e = p_or(p);
  while (e && condexpr && tok_is_name(cur(p), "if")) {
    next(p);
    tm_node *c = p_or(p), *alt = NULL;
    if (!c) return NULL;
    if (tok_is_name(cur(p), "else")) {
      next(p);
      alt = p_expr(p, 1);
      if (!alt) return NULL;
    }
    tm_node *n = node(p, TN_COND, line);
    if (!n) return NULL;
    n->a = e;
    n->b = c;
    n->c = alt;
    e = n;
    line = cur(p)->line;
  }
  leave(p);
  return e;
}

static int tuple_end(ps *p, const char *extra_end) {
  const tm_tok *t = cur(p);
  if (t->type == TK_VAR_END || t->type == TK_BLOCK_END || tok_is_op(t, OP_RPAREN)) return 1;
  return extra_end && tok_is_name(t, extra_end);
}

/* Expressions separated by commas: one of them alone, or a tuple. simplified:
 * names only (assignment targets). */
static tm_node *p_tuple(ps *p, int simplified, int condexpr, const char *extra_end, int explicit_parens) {
  uint32_t line = cur(p)->line;
  nvec v = {0};
  int is_tuple = 0;
  for (;;) {
    if (v.n && expect_op(p, OP_COMMA)) return NULL;
    if (tuple_end(p, extra_end)) break;
    tm_node *e = simplified ? p_primary(p) : p_expr(p, condexpr);
    if (!e || nv_push(p, &v, e)) return NULL;
    if (tok_is_op(cur(p), OP_COMMA)) is_tuple = 1;
    else break;
  }
  if (!is_tuple) {
    if (v.n) return v.v[0];
    if (!explicit_parens) {
      p_unexpected(p, "an expression");
      return NULL;
    }
  }
  tm_node *n = node(p, TN_TUPLE, line);
  if (!n) return NULL;
  n->v = v.v;
  n->nv = v.n;
  return n;
}

/* ---------- statements ---------- */

static tm_node *p_body(ps *p, const char *const *ends);

/* Assignment targets: a name, or names separated by commas (optionally in
 * parentheses). Fills ids/nids/flags of n. */
static int p_targets(ps *p, tm_node *n, const char *extra_end) {
  uint32_t line = cur(p)->line;
  tm_node *t = p_tuple(p, 1, 0, extra_end, 0);
  if (!t) return -1;
  tm_node *one[1] = {t};
  tm_node **items = one;
  uint32_t count = 1;
  if (t->type == TN_TUPLE) {
    items = t->v;
    count = t->nv;
    n->flags |= TN_F_UNPACK;
  }
  n->ids = tm_alloc_n(p->a, count ? count : 1, sizeof *n->ids);
  if (!n->ids) return p_nomem(p);
  for (uint32_t i = 0; i < count; i++) {
    if (items[i]->type == TN_TUPLE)
      return p_fail(p, line, HEED_E_UNSUPPORTED, "nested tuple targets are not supported");
    if (items[i]->type != TN_NAME) return p_fail(p, line, HEED_E_INVALID, "can't assign to this expression");
    n->ids[i] = items[i]->id;
  }
  n->nids = count;
  return 0;
}

static int expect_block_end(ps *p) { return expect_type(p, TK_BLOCK_END, "end of statement block '%}'"); }

static tm_node *p_for(ps *p, uint32_t line) {
  tm_node *n = node(p, TN_FOR, line);
  if (!n || p_targets(p, n, "in")) return NULL;
  if (!tok_is_name(cur(p), "in")) return p_unexpected(p, "'in'"), NULL;
  next(p);
  n->b = p_tuple(p, 0, 0, "recursive", 0);
  if (!n->b) return NULL;
  if (tok_is_name(cur(p), "if")) {
    next(p);
    n->c = p_expr(p, 1);
    if (!n->c) return NULL;
  }
  if (tok_is_name(cur(p), "recursive"))
    return p_fail(p, cur(p)->line, HEED_E_UNSUPPORTED, "recursive for loops are not supported"), NULL;
  if (expect_block_end(p)) return NULL;
  static const char *const ends[] = {"endfor", "else", NULL};
  p->loops++;
  n->d = p_body(p, ends);
  p->loops--;
  if (!n->d) return NULL;
  if (tok_is_name(cur(p), "else")) {
    next(p);
    if (expect_block_end(p)) return NULL;
    static const char *const ends2[] = {"endfor", NULL};
    n->a = p_body(p, ends2);
    if (!n->a) return NULL;
  }
  next(p); /* endfor */
  return n;
}

static tm_node *p_if(ps *p, uint32_t line) {
  tm_node *n = node(p, TN_IF, line);
  if (!n) return NULL;
  nvec conds = {0}, bodies = {0};
  static const char *const ends[] = {"elif", "else", "endif", NULL};
  for (;;) {
    tm_node *c = p_tuple(p, 0, 0, NULL, 0);
    if (!c || nv_push(p, &conds, c) || expect_block_end(p)) return NULL;
    tm_node *b = p_body(p, ends);
    if (!b || nv_push(p, &bodies, b)) return NULL;
    if (tok_is_name(cur(p), "elif")) {
      next(p);
      continue;
    }
    if (tok_is_name(cur(p), "else")) {
      next(p);
      if (expect_block_end(p)) return NULL;
      static const char *const ends2[] = {"endif", NULL};
      n->a = p_body(p, ends2);
      if (!n->a) return NULL;
    }
    next(p); /* endif */
    break;
  }
  n->v = conds.v;
  n->nv = conds.n;
  n->w = bodies.v;
  n->nw = bodies.n;
  return n;
}

static tm_node *p_set(ps *p, uint32_t line) {
  /* ns.attr = ... or targets = ... or a block set */
  if (cur(p)->type == TK_NAME && tok_is_op(look(p, 1), OP_DOT) && look(p, 2)->type == TK_NAME) {
    const tm_tok *ns = cur(p), *attr = look(p, 2);
    p->i += 3;
    int32_t id = intern(p, ns->p, ns->len);
    const tm_str *s = tm_str_new(p->a, attr->p, attr->len, 0);
    if (id < 0 || !s) return p_nomem(p), NULL;
    if (tok_is_op(cur(p), OP_ASSIGN)) {
      next(p);
      tm_node *n = node(p, TN_SET_NS, line);
      if (!n) return NULL;
      n->id = id;
      n->s = s;
      n->a = p_tuple(p, 0, 1, NULL, 0);
      return n->a ? n : NULL;
    }
    tm_node *n = node(p, TN_SET_BLOCK, line);
    if (!n) return NULL;
    n->flags |= TN_F_NS;
    n->id = id;
    n->s = s;
    tm_node *f = p_filter(p, NULL, 0);
    if (p->failed) return NULL;
    if (f) { /* the chain, innermost first */
      nvec v = {0};
      for (tm_node *x = f; x; x = x->a)
        if (nv_push(p, &v, x)) return NULL;
      n->v = v.v;
      n->nv = v.n;
    }
    if (expect_block_end(p)) return NULL;
    static const char *const ends[] = {"endset", NULL};
    n->d = p_body(p, ends);
    if (!n->d) return NULL;
    next(p);
    return n;
  }
  tm_node *n = node(p, TN_SET, line);
  if (!n || p_targets(p, n, NULL)) return NULL;
  if (tok_is_op(cur(p), OP_ASSIGN)) {
    next(p);
    n->a = p_tuple(p, 0, 1, NULL, 0);
    return n->a ? n : NULL;
  }
  if (n->nids != 1 || (n->flags & TN_F_UNPACK))
    return p_fail(p, line, HEED_E_UNSUPPORTED, "a block set needs one name"), NULL;
  n->type = TN_SET_BLOCK;
  n->id = n->ids[0];
  tm_node *f = p_filter(p, NULL, 0);
  if (p->failed) return NULL;
  if (f) {
    nvec v = {0};
    for (tm_node *x = f; x; x = x->a)
      if (nv_push(p, &v, x)) return NULL;
    n->v = v.v;
    n->nv = v.n;
  }
  if (expect_block_end(p)) return NULL;
  static const char *const ends[] = {"endset", NULL};
  n->d = p_body(p, ends);
  if (!n->d) return NULL;
  next(p);
  return n;
}

static tm_node *p_macro(ps *p, uint32_t line) {
  tm_node *n = node(p, TN_MACRO, line);
  if (!n) return NULL;
  if (cur(p)->type != TK_NAME) return p_unexpected(p, "a macro name"), NULL;
  n->id = intern(p, cur(p)->p, cur(p)->len);
  if (n->id < 0) return NULL;
  next(p);
  if (expect_op(p, OP_LPAREN)) return NULL;
  int32_t ids[256];
  nvec defs = {0};
  uint32_t np = 0;
  while (!tok_is_op(cur(p), OP_RPAREN)) {
    if (np && expect_op(p, OP_COMMA)) return NULL;
    if (cur(p)->type != TK_NAME) return p_unexpected(p, "a parameter name"), NULL;
    if (np == HEED_ARRAY_LEN(ids)) return p_fail(p, line, HEED_E_RANGE, "too many macro parameters"), NULL;
    for (uint32_t k = 0; k < np; k++)
      if (p->t->names[ids[k]]->len == cur(p)->len && !memcmp(p->t->names[ids[k]]->p, cur(p)->p, cur(p)->len))
        return p_fail(p, line, HEED_E_INVALID, "duplicate macro parameter '%.*s'", (int)cur(p)->len, cur(p)->p), NULL;
    ids[np] = intern(p, cur(p)->p, cur(p)->len);
    if (ids[np] < 0) return NULL;
    np++;
    next(p);
    if (tok_is_op(cur(p), OP_ASSIGN)) {
      next(p);
      tm_node *d = p_expr(p, 1);
      if (!d || nv_push(p, &defs, d)) return NULL;
    } else if (defs.n) {
      return p_fail(p, line, HEED_E_INVALID, "non-default argument follows default argument"), NULL;
    }
  }
  next(p);
  n->ids = tm_alloc_n(p->a, np ? np : 1, sizeof *n->ids);
  if (!n->ids) return p_nomem(p), NULL;
  memcpy(n->ids, ids, np * sizeof *ids);
  n->nids = np;
  n->w = defs.v;
  n->nw = defs.n;
  if (expect_block_end(p)) return NULL;
  static const char *const ends[] = {"endmacro", NULL};
  unsigned loops = p->loops;
  p->loops = 0;
  n->d = p_body(p, ends);
  p->loops = loops;
  if (!n->d) return NULL;
  next(p);
  return n;
}

static tm_node *p_statement(ps *p) {
  const tm_tok *t = cur(p);
  uint32_t line = t->line;
  if (t->type != TK_NAME) return p_unexpected(p, "a tag name"), NULL;
  if (enter(p)) return NULL;
  tm_node *n = NULL;
  if (tok_is_name(t, "for")) {
    next(p);
    n = p_for(p, line);
  } else if (tok_is_name(t, "if")) {
    next(p);
    n = p_if(p, line);
  } else if (tok_is_name(t, "set")) {
    next(p);
    n = p_set(p, line);
  } else if (tok_is_name(t, "macro")) {
    next(p);
    n = p_macro(p, line);
  } else if (tok_is_name(t, "filter")) {
    next(p);
    n = node(p, TN_FILTER_BLOCK, line);
    if (n) {
      tm_node *f = p_filter(p, NULL, 1);
      nvec v = {0};
      for (tm_node *x = f; x && !p->failed; x = x->a) nv_push(p, &v, x);
      n->v = v.v;
      n->nv = v.n;
      static const char *const ends[] = {"endfilter", NULL};
      if (!f || expect_block_end(p) || !(n->d = p_body(p, ends))) n = NULL;
      else next(p);
    }
  } else if (tok_is_name(t, "with")) {
    next(p);
    n = node(p, TN_WITH, line);
    nvec vals = {0};
    int32_t ids[64];
    uint32_t k = 0;
    while (n && cur(p)->type != TK_BLOCK_END) {
      if (k && expect_op(p, OP_COMMA)) return NULL;
      if (cur(p)->type != TK_NAME) return p_unexpected(p, "a name"), NULL;
      if (k == HEED_ARRAY_LEN(ids)) return p_fail(p, line, HEED_E_RANGE, "too many names in with"), NULL;
      ids[k] = intern(p, cur(p)->p, cur(p)->len);
      if (ids[k] < 0) return NULL;
      k++;
      next(p);
      if (expect_op(p, OP_ASSIGN)) return NULL;
      tm_node *v = p_expr(p, 1);
      if (!v || nv_push(p, &vals, v)) return NULL;
    }
    if (n) {
      n->ids = tm_alloc_n(p->a, k ? k : 1, sizeof *n->ids);
      if (!n->ids) return p_nomem(p), NULL;
      memcpy(n->ids, ids, k * sizeof *ids);
      n->nids = k;
      n->w = vals.v;
      n->nw = vals.n;
      static const char *const ends[] = {"endwith", NULL};
      if (expect_block_end(p) || !(n->d = p_body(p, ends))) n = NULL;
      else next(p);
    }
  } else if (tok_is_name(t, "print")) {
    next(p);
    nvec v = {0};
    while (cur(p)->type != TK_BLOCK_END) {
      if (v.n && expect_op(p, OP_COMMA)) return NULL;
      tm_node *e = p_expr(p, 1);
      if (!e) return NULL;
      tm_node *o = node(p, TN_OUT, e->line);
      if (!o || nv_push(p, &v, o)) return NULL;
      o->a = e;
    }
    n = node(p, TN_BLOCK, line);
    if (n) {
      n->v = v.v;
      n->nv = v.n;
    }
  } else if (tok_is_name(t, "break") || tok_is_name(t, "continue")) {
    if (!p->loops) return p_fail(p, line, HEED_E_INVALID, "'%.*s' outside loop", (int)t->len, t->p), NULL;
    next(p);
    n = node(p, tok_is_name(t, "break") ? TN_BREAK : TN_CONTINUE, line);
  } else if (tok_is_name(t, "call") || tok_is_name(t, "block") || tok_is_name(t, "extends") ||
             tok_is_name(t, "include") || tok_is_name(t, "import") || tok_is_name(t, "from") ||
             tok_is_name(t, "autoescape")) {
    p_fail(p, line, HEED_E_UNSUPPORTED, "tag '%.*s' is not supported", (int)t->len, t->p);
  } else {
    char want[200] = "";
    if (p->n_ends) {
      const char *const *e = p->ends[p->n_ends - 1];
      size_t k = 0;
      for (int j = 0; e[j]; j++)
        k += (size_t)snprintf(want + k, k < sizeof want ? sizeof want - k : 0, "%s'%s'", j ? " or " : "", e[j]);
      p_fail(p, line, HEED_E_INVALID, "unknown tag '%.*s' (looking for %s)", (int)t->len, t->p, want);
    } else {
      p_fail(p, line, HEED_E_INVALID, "unknown tag '%.*s'", (int)t->len, t->p);
    }
  }
  leave(p);
  return n;
}

/* Statements and text until one of ends (a NULL-terminated list) or, with
 * ends NULL, the end of the template. Leaves the current token on the end tag's name. */
static tm_node *p_body(ps *p, const char *const *ends) {
  uint32_t line = cur(p)->line;
  nvec v = {0};
  if (ends) {
    if (p->n_ends == HEED_ARRAY_LEN(p->ends)) return p_fail(p, line, HEED_E_RANGE, "blocks nested too deeply"), NULL;
    p->ends[p->n_ends++] = ends;
  }
  for (;;) {
    const tm_tok *t = cur(p);
    if (t->type == TK_EOF) {
      if (ends) {
        char want[200];
        size_t k = 0;
        for (int j = 0; ends[j]; j++)
          k += (size_t)snprintf(want + k, k < sizeof want ? sizeof want - k : 0, "%s'%s'", j ? " or " : "", ends[j]);
        p_fail(p, t->line, HEED_E_INVALID, "unexpected end of template, expected %s (a block is not closed)", want);
        return NULL;
      }
      break;
    }
    if (t->type == TK_DATA) {
      tm_node *n = node(p, TN_TEXT, t->line);
      if (!n || nv_push(p, &v, n)) return NULL;
      n->s = t->s;
      next(p);
    } else if (t->type == TK_VAR_BEGIN) {
      next(p);
      tm_node *e = p_tuple(p, 0, 1, NULL, 0);
      if (!e) return NULL;
      if (expect_type(p, TK_VAR_END, "end of print statement '}}'")) return NULL;
      tm_node *n = node(p, TN_OUT, t->line);
      if (!n || nv_push(p, &v, n)) return NULL;
      n->a = e;
    } else if (t->type == TK_BLOCK_BEGIN) {
      next(p);
      if (ends)
        for (int j = 0; ends[j]; j++)
          if (tok_is_name(cur(p), ends[j])) {
            p->n_ends--;
            tm_node *b = node(p, TN_BLOCK, line);
            if (!b) return NULL;
            b->v = v.v;
            b->nv = v.n;
            return b;
          }
      tm_node *s = p_statement(p);
      if (!s || nv_push(p, &v, s)) return NULL;
      if (expect_block_end(p)) return NULL;
    } else {
      p_unexpected(p, NULL);
      return NULL;
    }
  }
  tm_node *b = node(p, TN_BLOCK, line);
  if (!b) return NULL;
  b->v = v.v;
  b->nv = v.n;
  return b;
}

int32_t tm_name_id(const heed_template *t, const char *name, size_t n) {
  for (uint32_t i = 0; i < t->n_names; i++)
    if (t->names[i]->len == n && memcmp(t->names[i]->p, name, n) == 0) return (int32_t)i;
  return -1;
}

#define TM_PARSE_MEMORY ((size_t)1 << 30)

heed_status heed_template_parse(const char *src, size_t len, heed_template **out, heed_error *err) {
  if (!out) return heed_err_set(err, HEED_E_INVALID, "heed_template_parse: out is NULL");
  *out = NULL;
  if (!src && len) return heed_err_set(err, HEED_E_INVALID, "heed_template_parse: src is NULL");
  if (!tm_utf8_valid(src ? src : "", len))
    return heed_err_set(err, HEED_E_INVALID, "template: the source is not valid UTF-8");
  heed_template *t = calloc(1, sizeof *t);
  if (!t) return heed_err_set(err, HEED_E_NOMEM, "template: out of memory");
  tm_arena_init(&t->arena, TM_PARSE_MEMORY);
  t->loop_id = -1;
  /* Numbers are read and written the C way whatever the caller's locale. */
  t->loc = newlocale(LC_ALL_MASK, "C", (locale_t)0);
  locale_t old = t->loc ? uselocale(t->loc) : (locale_t)0;
  heed_error local;
  heed_err_clear(&local);
  heed_error *e = err ? err : &local;
  tm_toks toks;
  heed_status st = HEED_OK;
  if (tm_lex(&t->arena, src ? src : "", len, &toks, e)) {
    st = e->status;
  } else {
    ps p = {.t = t, .a = &t->arena, .tk = toks.v, .n = toks.n, .err = e};
    t->root = p_body(&p, NULL);
    if (!t->root || p.failed) st = e->status ? e->status : HEED_E_INVALID;
    else t->loop_id = tm_name_id(t, "loop", 4);
  }
  if (old) uselocale(old);
  if (st) {
    heed_template_free(t);
    return st;
  }
  *out = t;
  return HEED_OK;
}

void heed_template_free(heed_template *t) {
  if (!t) return;
  tm_arena_free(&t->arena);
  if (t->loc) freelocale(t->loc);
  free(t);
}
