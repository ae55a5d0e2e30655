/* text/tmpl_lex.c - template source to tokens, with jinja2's rules for the
 * environment Hugging Face uses: trim_blocks (a newline right after a block
 * or comment tag goes), lstrip_blocks (blanks from the start of a line up to
 * a block or comment tag go), the "-" and "+" markers on tags, raw blocks,
 * newlines normalised to "\n" and one final newline dropped. Whitespace means
 * Python's str.isspace, as in jinja2's regular expressions. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "text/tmpl_internal.h"

typedef struct lx {
  tm_arena *a;
  const char *s; /* normalised source */
  size_t n, pos;
  size_t line_pos; /* line counted up to here */
  uint32_t line;
  tm_toks *toks;
  heed_error *err;
  int line_starting; /* the last match ended with a newline (jinja2's line_starting) */
} lx;

static uint32_t line_at(lx *l, size_t pos) {
  if (pos < l->line_pos) { /* never needed in practice: recount */
    l->line = 1;
    l->line_pos = 0;
  }
  for (size_t i = l->line_pos; i < pos && i < l->n; i++) l->line += l->s[i] == '\n';
  l->line_pos = pos;
  return l->line;
}

static int lx_fail(lx *l, size_t pos, heed_status st, const char *fmt, ...) HEED_PRINTF(4, 5);
static int lx_fail(lx *l, size_t pos, heed_status st, const char *fmt, ...) {
  char msg[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  heed_err_set(l->err, st, "template line %u: %s", line_at(l, pos), msg);
  return -1;
}

static tm_tok *push(lx *l, int type, size_t pos) {
  tm_toks *t = l->toks;
  if (t->n == t->cap) {
    size_t cap = t->cap ? t->cap * 2 : 256;
    tm_tok *v = tm_alloc_n(l->a, cap, sizeof *v);
    if (!v) {
      heed_err_set(l->err, HEED_E_NOMEM, "template: out of memory");
      return NULL;
    }
    if (t->n) memcpy(v, t->v, t->n * sizeof *v);
    t->v = v;
    t->cap = cap;
  }
  tm_tok *k = &t->v[t->n++];
  memset(k, 0, sizeof *k);
  k->type = (uint8_t)type;
  k->line = line_at(l, pos);
  k->p = l->s + pos;
  return k;
}

/* Length of the Python whitespace code point at p (0 if none). */
static size_t space_at(const char *p, size_t n) {
  if (!n) return 0;
  size_t adv;
  uint32_t c = tm_utf8_dec(p, n, &adv);
  return tm_is_space(c) ? adv : 0;
}

static size_t skip_space(const char *s, size_t n, size_t pos) {
  size_t k;
  while (pos < n && (k = space_at(s + pos, n - pos))) pos += k;
  return pos;
}

/* Length of p[0..n) without trailing whitespace (str.rstrip()). */
static size_t rstrip_len(const char *p, size_t n) {
  size_t keep = 0, i = 0;
  while (i < n) {
    size_t k = space_at(p + i, n - i), adv;
    if (k) {
      i += k;
      continue;
    }
    tm_utf8_dec(p + i, n - i, &adv);
    i += adv;
    keep = i;
  }
  return keep;
}

static int all_space(const char *p, size_t n) {
  size_t i = 0, k;
  while (i < n && (k = space_at(p + i, n - i))) i += k;
  return i == n;
}

/* Text before a tag, after the tag's whitespace control (OptionalLStrip). */
static int emit_data(lx *l, size_t from, size_t to, char sign, int lstrip_ok) {
  size_t len = to - from;
  const char *p = l->s + from;
  if (sign == '-') {
    len = rstrip_len(p, len);
  } else if (sign != '+' && lstrip_ok) {
    size_t lpos = 0;
    for (size_t i = len; i > 0; i--)
      if (p[i - 1] == '\n') {
        lpos = i;
        break;
      }
    if ((lpos > 0 || l->line_starting) && len > lpos && all_space(p + lpos, len - lpos)) len = lpos;
  }
  if (!len) return 0;
  tm_tok *k = push(l, TK_DATA, from);
  if (!k) return -1;
  k->s = tm_str_new(l->a, p, len, 0);
  if (!k->s) return heed_err_set(l->err, HEED_E_NOMEM, "template: out of memory"), -1;
  return 0;
}

/* The end of a block tag at pos ("+%}", "-%}" and blanks, or "%}" and a
 * newline): its length, or 0. */
static size_t block_end_at(lx *l, size_t pos) {
  const char *s = l->s;
  size_t n = l->n;
  if (pos + 3 <= n && s[pos] == '+' && s[pos + 1] == '%' && s[pos + 2] == '}') return 3;
  if (pos + 3 <= n && s[pos] == '-' && s[pos + 1] == '%' && s[pos + 2] == '}') return skip_space(s, n, pos + 3) - pos;
  if (pos + 2 <= n && s[pos] == '%' && s[pos + 1] == '}') return pos + 2 < n && s[pos + 2] == '\n' ? 3 : 2;
  return 0;
}

static size_t var_end_at(lx *l, size_t pos) {
  const char *s = l->s;
  size_t n = l->n;
  if (pos + 3 <= n && s[pos] == '-' && s[pos + 1] == '}' && s[pos + 2] == '}') return skip_space(s, n, pos + 3) - pos;
  if (pos + 2 <= n && s[pos] == '}' && s[pos + 1] == '}') return 2;
  return 0;
}

static int is_digit(char c) { return c >= '0' && c <= '9'; }
static int is_name_start(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_'; }
static int is_name_char(char c) { return is_name_start(c) || is_digit(c); }

/* (\d+_)*\d+ : its length at pos, or 0. */
static size_t digits_at(const char *s, size_t n, size_t pos) {
  size_t i = pos;
  if (i >= n || !is_digit(s[i])) return 0;
  for (;;) {
    while (i < n && is_digit(s[i])) i++;
    if (i + 1 < n && s[i] == '_' && is_digit(s[i + 1])) {
      i++;
      continue;
    }
    return i - pos;
  }
}

/* jinja2's float_re at pos: its length or 0. */
static size_t float_at(lx *l, size_t pos) {
  const char *s = l->s;
  size_t n = l->n;
  if (pos > 0 && s[pos - 1] == '.') return 0;
  size_t d = digits_at(s, n, pos);
  if (!d) return 0;
  size_t i = pos + d;
  size_t frac = 0;
  if (i < n && s[i] == '.') frac = digits_at(s, n, i + 1);
  size_t j = frac ? i + 1 + frac : i;
  if (j < n && (s[j] == 'e' || s[j] == 'E')) {
    size_t k = j + 1;
    if (k < n && (s[k] == '+' || s[k] == '-')) k++;
    size_t e = digits_at(s, n, k);
    if (e) return k + e - pos;
  }
  return frac ? i + 1 + frac - pos : 0;
}

/* jinja2's integer_re at pos: its length, or 0; *base set. */
static size_t int_at(lx *l, size_t pos, int *base) {
  const char *s = l->s;
  size_t n = l->n;
  if (pos + 1 < n && s[pos] == '0') {
    char x = s[pos + 1] | 0x20;
    int b = x == 'b' ? 2 : x == 'o' ? 8 : x == 'x' ? 16 : 0;
    if (b) {
      size_t i = pos + 2, cnt = 0;
      for (;;) {
        size_t k = i;
        if (k < n && s[k] == '_') k++;
        if (k >= n) break;
        char c = s[k] | 0x20;
        int dv = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : 99;
        if (dv >= b) break;
        i = k + 1;
        cnt++;
      }
      if (cnt) {
        *base = b;
        return i - pos;
      }
    }
  }
  *base = 10;
  if (pos < n && s[pos] >= '1' && s[pos] <= '9') {
    size_t i = pos + 1;
    for (;;) {
      if (i < n && is_digit(s[i])) i++;
      else if (i + 1 < n && s[i] == '_' && is_digit(s[i + 1])) i += 2;
      else break;
    }
    return i - pos;
  }
  if (pos < n && s[pos] == '0') {
    size_t i = pos + 1;
    for (;;) {
      if (i < n && s[i] == '0') i++;
      else if (i + 1 < n && s[i] == '_' && s[i + 1] == '0') i += 2;
      else break;
    }
    return i - pos;
  }
  return 0;
}

static int hexval(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  c |= 0x20;
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  return -1;
}

/* A string literal's body (between the quotes) decoded as jinja2 does:
 * Python's unicode-escape after backslashreplace. */
static const tm_str *decode_string(lx *l, size_t pos, const char *p, size_t n) {
  tm_buf b;
  tm_buf_init(&b, l->a, SIZE_MAX);
  size_t i = 0;
  while (i < n) {
    const char *bs = memchr(p + i, '\\', n - i);
    size_t run = bs ? (size_t)(bs - (p + i)) : n - i;
    if (run && tm_buf_put(&b, p + i, run, 0)) goto nomem;
    i += run;
    if (i >= n) break;
    /* p[i] == '\\'; the lexer guarantees a character follows */
    char e = p[i + 1];
    i += 2;
    char ch = 0;
    uint32_t cp = 0;
    int is_cp = 0;
    switch (e) {
    case '\n': continue;
    case '\\': ch = '\\'; break;
    case '\'': ch = '\''; break;
    case '"': ch = '"'; break;
    case 'a': ch = '\a'; break;
    case 'b': ch = '\b'; break;
    case 'f': ch = '\f'; break;
    case 'n': ch = '\n'; break;
    case 'r': ch = '\r'; break;
    case 't': ch = '\t'; break;
    case 'v': ch = '\v'; break;
    case 'x':
    case 'u':
    case 'U': {
      int want = e == 'x' ? 2 : e == 'u' ? 4 : 8;
      for (int k = 0; k < want; k++) {
        int h = i + (size_t)k < n ? hexval(p[i + (size_t)k]) : -1;
        if (h < 0) {
          lx_fail(l, pos, HEED_E_INVALID, "truncated \\%cXX escape in a string", e);
          return NULL;
        }
        cp = cp << 4 | (uint32_t)h;
      }
      i += (size_t)want;
      if (cp > 0x10FFFF) {
        lx_fail(l, pos, HEED_E_INVALID, "illegal Unicode character in a string escape");
        return NULL;
      }
      if (cp >= 0xD800 && cp <= 0xDFFF) {
        lx_fail(l, pos, HEED_E_UNSUPPORTED, "surrogate code points in string escapes are not supported");
        return NULL;
      }
      is_cp = 1;
      break;
    }
    case 'N': lx_fail(l, pos, HEED_E_UNSUPPORTED, "\\N{...} escapes are not supported"); return NULL;
    default:
      if (e >= '0' && e <= '7') {
        cp = (uint32_t)(e - '0');
        for (int k = 0; k < 2 && i < n && p[i] >= '0' && p[i] <= '7'; k++) cp = cp * 8 + (uint32_t)(p[i++] - '0');
        is_cp = 1;
        break;
      }
      if ((unsigned char)e >= 0x80) {
        /* backslashreplace turned the character into \xhh, \uhhhh or \Uhhhhhhhh
         * first: the backslash stays, the escape's text follows */
        size_t adv;
        uint32_t c = tm_utf8_dec(p + i - 1, n - (i - 1), &adv);
        char tmp[16];
        int k = c < 0x100     ? snprintf(tmp, sizeof tmp, "\\x%02x", c)
                : c < 0x10000 ? snprintf(tmp, sizeof tmp, "\\u%04x", c)
                              : snprintf(tmp, sizeof tmp, "\\U%08x", c);
        if (tm_buf_put(&b, "\\", 1, 0) || tm_buf_put(&b, tmp, (size_t)k, 0)) goto nomem;
        i += adv - 1;
        continue;
      }
      /* an unknown escape keeps its backslash */
      if (tm_buf_put(&b, p + i - 2, 2, 0)) goto nomem;
      continue;
    }
    if (is_cp) {
      char u[4];
      if (tm_buf_put(&b, u, tm_utf8_enc(cp, u), 0)) goto nomem;
    } else if (tm_buf_putc(&b, ch, 0)) {
      goto nomem;
    }
  }
  const tm_str *s = tm_buf_finish(&b, l->a);
  if (s) return s;
nomem:
  heed_err_set(l->err, HEED_E_NOMEM, "template: out of memory");
  return NULL;
}

static const struct {
  const char *s;
  tm_op op;
} ops2[] = {{"//", OP_FLOORDIV}, {"**", OP_POW}, {"==", OP_EQ}, {"!=", OP_NE}, {">=", OP_GTEQ}, {"<=", OP_LTEQ}};

static int op1(char c) {
  switch (c) {
  case '+': return OP_ADD;
  case '-': return OP_SUB;
  case '/': return OP_DIV;
  case '*': return OP_MUL;
  case '%': return OP_MOD;
  case '~': return OP_TILDE;
  case '[': return OP_LBRACKET;
  case ']': return OP_RBRACKET;
  case '(': return OP_LPAREN;
  case ')': return OP_RPAREN;
  case '{': return OP_LBRACE;
  case '}': return OP_RBRACE;
  case '>': return OP_GT;
  case '<': return OP_LT;
  case '=': return OP_ASSIGN;
  case '.': return OP_DOT;
  case ':': return OP_COLON;
  case '|': return OP_PIPE;
  case ',': return OP_COMMA;
  case ';': return OP_SEMICOLON;
  default: return -1;
  }
}

#define LX_MAX_NEST 256

/* The inside of {{ ... }} or {% ... %}: tokens up to the closing tag. */
static int lex_tag(lx *l, int block, size_t tag_pos) {
  char stack[LX_MAX_NEST];
  size_t nstack = 0;
  const char *s = l->s;
  size_t n = l->n;
  for (;;) {
    size_t pos = l->pos;
    if (pos >= n)
      return lx_fail(l, tag_pos, HEED_E_INVALID, "unexpected end of template: the %s opened here is not closed with %s",
                     block ? "{%" : "{{", block ? "%}" : "}}");
    if (!nstack) {
      size_t e = block ? block_end_at(l, pos) : var_end_at(l, pos);
      if (e) {
        if (!push(l, block ? TK_BLOCK_END : TK_VAR_END, pos)) return -1;
        l->pos = pos + e;
        l->line_starting = s[pos + e - 1] == '\n';
        return 0;
      }
    }
    size_t k = space_at(s + pos, n - pos);
    if (k) {
      l->pos = skip_space(s, n, pos);
      continue;
    }
    size_t m;
    int base;
    if ((m = float_at(l, pos))) {
      char *tmp = tm_alloc(l->a, m + 1); /* the digits without underscores */
      if (!tmp) return heed_err_set(l->err, HEED_E_NOMEM, "template: out of memory"), -1;
      size_t j = 0;
      for (size_t i = pos; i < pos + m; i++)
        if (s[i] != '_') tmp[j++] = s[i];
      tmp[j] = '\0';
      tm_tok *t = push(l, TK_FLOAT, pos);
      if (!t) return -1;
      t->f = strtod(tmp, NULL);
      t->len = m;
      l->pos = pos + m;
      continue;
    }
    if ((m = int_at(l, pos, &base))) {
      uint64_t v = 0;
      size_t i = pos + (base == 10 ? 0 : 2);
      for (; i < pos + m; i++) {
        if (s[i] == '_') continue;
        uint64_t dv = (uint64_t)hexval(s[i]);
        if (v > (UINT64_MAX - dv) / (uint64_t)base || v * (uint64_t)base + dv > (uint64_t)INT64_MAX)
          return lx_fail(l, pos, HEED_E_UNSUPPORTED, "integer literal %.*s is too large (heed's integers are 64-bit)",
                         (int)(m > 40 ? 40 : m), s + pos);
        v = v * (uint64_t)base + dv;
      }
      tm_tok *t = push(l, TK_INT, pos);
      if (!t) return -1;
      t->i = (int64_t)v;
      t->len = m;
      l->pos = pos + m;
      continue;
    }
    if (is_name_start(s[pos])) {
      size_t i = pos + 1;
      while (i < n && is_name_char(s[i])) i++;
      tm_tok *t = push(l, TK_NAME, pos);
      if (!t) return -1;
      t->len = i - pos;
      l->pos = i;
      continue;
    }
    if (s[pos] == '\'' || s[pos] == '"') {
      char q = s[pos];
      size_t i = pos + 1;
      while (i < n && s[i] != q) i += s[i] == '\\' && i + 1 < n ? 2 : 1;
      if (i >= n) return lx_fail(l, pos, HEED_E_INVALID, "unterminated string literal");
      tm_tok *t = push(l, TK_STRING, pos);
      if (!t) return -1;
      t->len = i + 1 - pos;
      t->s = decode_string(l, pos, s + pos + 1, i - pos - 1);
      if (!t->s) return -1;
      l->pos = i + 1;
      continue;
    }
    int op = -1;
    size_t olen = 1;
    for (size_t j = 0; j < HEED_ARRAY_LEN(ops2); j++)
      if (pos + 1 < n && s[pos] == ops2[j].s[0] && s[pos + 1] == ops2[j].s[1]) {
        op = (int)ops2[j].op;
        olen = 2;
        break;
      }
    if (op < 0) op = op1(s[pos]);
    if (op < 0) {
      size_t adv;
      tm_utf8_dec(s + pos, n - pos, &adv);
      return lx_fail(l, pos, (unsigned char)s[pos] >= 0x80 ? HEED_E_UNSUPPORTED : HEED_E_INVALID,
                     "unexpected character '%.*s'%s", (int)adv, s + pos,
                     (unsigned char)s[pos] >= 0x80 ? " (names are ASCII in heed)" : "");
    }
    if (op == OP_LBRACE || op == OP_LPAREN || op == OP_LBRACKET) {
      if (nstack == LX_MAX_NEST) return lx_fail(l, pos, HEED_E_RANGE, "brackets nested too deeply");
      stack[nstack++] = op == OP_LBRACE ? '}' : op == OP_LPAREN ? ')' : ']';
    } else if (op == OP_RBRACE || op == OP_RPAREN || op == OP_RBRACKET) {
      if (!nstack) return lx_fail(l, pos, HEED_E_INVALID, "unexpected '%c'", s[pos]);
      char want = stack[--nstack];
      if (want != s[pos]) return lx_fail(l, pos, HEED_E_INVALID, "unexpected '%c', expected '%c'", s[pos], want);
    }
    tm_tok *t = push(l, TK_OP, pos);
    if (!t) return -1;
    t->op = (uint8_t)op;
    t->len = olen;
    l->pos = pos + olen;
  }
}

/* {% raw %} at pos (just past "{%" and its sign): the length up to the end of
 * the opening tag, or 0 when this is not a raw tag. */
static size_t raw_begin_at(lx *l, size_t pos) {
  size_t i = skip_space(l->s, l->n, pos);
  if (!(i + 3 <= l->n && memcmp(l->s + i, "raw", 3) == 0)) return 0;
  i = skip_space(l->s, l->n, i + 3);
  if (i + 3 <= l->n && memcmp(l->s + i, "-%}", 3) == 0) return skip_space(l->s, l->n, i + 3) - pos;
  if (i + 2 <= l->n && memcmp(l->s + i, "%}", 2) == 0) return i + 2 - pos;
  return 0;
}

/* {% endraw %} at q: its length (trim and signs applied), sign in *sign. */
static size_t raw_end_at(lx *l, size_t q, char *sign) {
  const char *s = l->s;
  size_t n = l->n;
  if (!(q + 2 <= n && s[q] == '{' && s[q + 1] == '%')) return 0;
  size_t i = q + 2;
  *sign = 0;
  if (i < n && (s[i] == '-' || s[i] == '+')) *sign = s[i++];
  i = skip_space(s, n, i);
  if (!(i + 6 <= n && memcmp(s + i, "endraw", 6) == 0)) return 0;
  i = skip_space(s, n, i + 6);
  size_t e = block_end_at(l, i);
  return e ? i + e - q : 0;
}

int tm_lex(tm_arena *a, const char *src, size_t len, tm_toks *toks, heed_error *err) {
  /* \r\n and \r become \n; one final newline goes (keep_trailing_newline off). */
  char *s = tm_alloc(a, len + 1);
  if (!s) return heed_err_set(err, HEED_E_NOMEM, "template: out of memory"), -1;
  size_t n = 0;
  for (size_t i = 0; i < len; i++) {
    if (src[i] == '\r') {
      s[n++] = '\n';
      if (i + 1 < len && src[i + 1] == '\n') i++;
    } else {
      s[n++] = src[i];
    }
  }
  if (n && s[n - 1] == '\n') n--;
  s[n] = '\0';
  lx l = {.a = a, .s = s, .n = n, .line = 1, .toks = toks, .err = err, .line_starting = 1};
  toks->v = NULL;
  toks->n = toks->cap = 0;
  for (;;) {
    size_t pos = l.pos;
    /* the next tag opening */
    size_t q = pos;
    const char *hit = NULL;
    while (q + 1 < n) {
      const char *b = memchr(s + q, '{', n - 1 - q);
      if (!b) break;
      char c = b[1];
      if (c == '{' || c == '%' || c == '#') {
        hit = b;
        break;
      }
      q = (size_t)(b - s) + 1;
    }
    if (!hit) {
      if (pos < n) {
        tm_tok *k = push(&l, TK_DATA, pos);
        if (!k) return -1;
        k->s = tm_str_new(a, s + pos, n - pos, 0);
        if (!k->s) return heed_err_set(err, HEED_E_NOMEM, "template: out of memory"), -1;
      }
      break;
    }
    size_t tag = (size_t)(hit - s);
    char kind = hit[1];
    char sign = tag + 2 < n && (s[tag + 2] == '-' || s[tag + 2] == '+') ? s[tag + 2] : 0;
    size_t after = tag + 2 + (sign ? 1 : 0);
    if (kind == '%') {
      size_t rb = raw_begin_at(&l, after);
      if (rb) {
        if (emit_data(&l, pos, tag, sign, 1)) return -1;
        size_t body = after + rb;
        l.line_starting = s[body - 1] == '\n';
        size_t e = 0, r = body;
        char esign = 0;
        for (; r < n; r++)
          if (s[r] == '{' && (e = raw_end_at(&l, r, &esign))) break;
        if (!e) return lx_fail(&l, tag, HEED_E_INVALID, "missing {%% endraw %%} for the {%% raw %%} opened here");
        if (emit_data(&l, body, r, esign, 1)) return -1;
        l.pos = r + e;
        l.line_starting = s[l.pos - 1] == '\n';
        continue;
      }
    }
    if (emit_data(&l, pos, tag, sign, kind != '{')) return -1;
    l.line_starting = 0;
    if (kind == '#') {
      /* the first "+#}", "-#}" (then blanks) or "#}" (then a newline) */
      size_t c = after, e = 0;
      for (; c + 1 < n; c++) {
        if ((s[c] == '+' || s[c] == '-') && c + 2 < n && s[c + 1] == '#' && s[c + 2] == '}') {
          e = s[c] == '+' ? 3 : skip_space(s, n, c + 3) - c;
          break;
        }
        if (s[c] == '#' && s[c + 1] == '}') {
          e = c + 2 < n && s[c + 2] == '\n' ? 3 : 2;
          break;
        }
      }
      if (!e) return lx_fail(&l, tag, HEED_E_INVALID, "missing end of comment tag");
      l.pos = c + e;
      l.line_starting = s[l.pos - 1] == '\n';
      continue;
    }
    int block = kind == '%';
    if (!push(&l, block ? TK_BLOCK_BEGIN : TK_VAR_BEGIN, tag)) return -1;
    l.pos = after;
    if (lex_tag(&l, block, tag)) return -1;
  }
  if (!push(&l, TK_EOF, n)) return -1;
  return 0;
}
