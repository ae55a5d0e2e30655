/* text/tmpl_internal.h - the chat-template interpreter's pieces: an arena,
 * strings that carry their untrusted byte ranges, values, the lexer's tokens,
 * the syntax tree and the render state. Not installed.
 *
 *   tmpl_lex.c    source -> tokens (jinja2's whitespace rules)
 *   tmpl_parse.c  tokens -> tree (jinja2's grammar), heed_template_parse
 *   tmpl_eval.c   tree + context -> text and spans, heed_template_render
 *   tmpl_value.c  the arena, strings, values, JSON in and out, Python's
 *                 formatting of numbers and reprs
 *   chat.c        OpenAI requests -> context; the built-in templates
 */
#ifndef HEED_TEXT_TMPL_INTERNAL_H
#define HEED_TEXT_TMPL_INTERNAL_H

#include <locale.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include "heed/template.h"
#include "runtime/internal.h"

/* ---------- arena: everything a parse or a render allocates, freed at once ---------- */

typedef struct tm_chunk tm_chunk;
typedef struct tm_arena {
  tm_chunk *head;
  size_t used; /* bytes taken from malloc so far */
  size_t cap;  /* refuse to go past this */
  int over;    /* 1: an allocation went past cap; 2: malloc failed */
} tm_arena;

void tm_arena_init(tm_arena *a, size_t cap);
void tm_arena_free(tm_arena *a);
void *tm_alloc(tm_arena *a, size_t n);  /* 16-byte aligned; NULL when over cap or out of memory */
void *tm_zalloc(tm_arena *a, size_t n); /* zeroed */
/* n * size with overflow checked. */
void *tm_alloc_n(tm_arena *a, size_t n, size_t size);

/* ---------- strings with their untrusted byte ranges ---------- */

typedef struct tm_range {
  size_t off, len;
} tm_range;

/* Immutable once built. taint: sorted, disjoint, non-adjacent ranges of bytes
 * that came from the caller's data. p is NUL-terminated. */
typedef struct tm_str {
  const char *p;
  size_t len;
  const tm_range *taint;
  uint32_t n_taint;
} tm_str;

/* A growing string (render output, captures, results of string operations).
 * arena NULL: heap memory (realloc), freed by tm_buf_release. */
typedef struct tm_buf {
  tm_arena *arena;
  char *p;
  size_t len, cap;
  tm_range *r;
  size_t nr, rcap;
  size_t max; /* bound on len */
  int err;    /* 1: past max; 2: out of memory */
} tm_buf;

void tm_buf_init(tm_buf *b, tm_arena *arena, size_t max);
void tm_buf_release(tm_buf *b); /* heap buffers only */
int tm_buf_put(tm_buf *b, const char *s, size_t n, int taint);
int tm_buf_putc(tm_buf *b, char c, int taint);
int tm_buf_str(tm_buf *b, const tm_str *s);                       /* with its taint */
int tm_buf_sub(tm_buf *b, const tm_str *s, size_t off, size_t n); /* a byte range, with its taint */
int tm_buf_mark(tm_buf *b, size_t from);                          /* taint bytes [from, len) */
const tm_str *tm_buf_finish(tm_buf *b, tm_arena *a);              /* copy into a, NULL on failure */

int tm_str_tainted(const tm_str *s);                             /* any untrusted byte */
int tm_str_range_tainted(const tm_str *s, size_t off, size_t n); /* any untrusted byte in the range */
const tm_str *tm_str_new(tm_arena *a, const char *p, size_t n, int taint);
const tm_str *tm_str_sub(tm_arena *a, const tm_str *s, size_t off, size_t n);
int tm_str_eq(const tm_str *a, const tm_str *b);
int tm_str_eqc(const tm_str *a, const char *c);

/* UTF-8 (input is validated: well-formed, no surrogates). */
int tm_utf8_valid(const char *p, size_t n);
uint32_t tm_utf8_dec(const char *p, size_t n, size_t *adv); /* one code point; adv >= 1 even on bad bytes */
size_t tm_utf8_enc(uint32_t cp, char out[4]);
size_t tm_utf8_count(const char *p, size_t n); /* code points */
int tm_is_space(uint32_t cp);                  /* Python's str.isspace */
int tm_uni_printable(uint32_t cp);             /* Python's str.isprintable (tmpl_builtins.c) */

/* ---------- values ---------- */

typedef enum tm_kind {
  TV_UNDEF,
  TV_NONE,
  TV_BOOL,
  TV_INT,
  TV_FLOAT,
  TV_STR,
  TV_LIST, /* flags TV_TUPLE: a tuple (repr with parentheses) */
  TV_DICT,
  TV_NS,   /* namespace(): the one mutable object */
  TV_LOOP, /* a for loop's `loop` */
  TV_MACRO,
  TV_FUNC,  /* a global function: range, namespace, dict, raise_exception, strftime_now */
  TV_METHOD /* a bound method: "abc".upper, d.items, loop.cycle */
} tm_kind;

#define TV_TUPLE 1u
/* Lists from dict.items()/keys()/values(), printed as Python prints those views. */
#define TV_VIEW_ITEMS 2u
#define TV_VIEW_KEYS 4u
#define TV_VIEW_VALUES 8u
#define TV_RANGE 16u /* from range(): a tm_range_list, printed "range(0, 3)" */

typedef struct tm_list tm_list;
typedef struct tm_dict tm_dict;
typedef struct tm_loop tm_loop;
typedef struct tm_macro tm_macro;
typedef struct tm_method tm_method;

typedef struct tm_val {
  uint8_t kind;
  uint8_t flags;
  union {
    int b;
    int64_t i;
    double f;
    const tm_str *s;
    tm_list *l;
    tm_dict *d;
    tm_loop *loop;
    tm_macro *m;
    tm_method *meth;
    int fn;
    struct { /* undefined: what was looked up, for the message when it is used */
      const char *name;
      uint32_t len;
      uint8_t of; /* tm_kind of the object it was looked up in; TV_UNDEF: a variable */
    } u;
  };
} tm_val;

struct tm_list {
  tm_val *it;
  size_t n;
};

/* range(start, stop, step): the items, and the arguments for its repr. */
typedef struct tm_range_list {
  tm_list l;
  int64_t start, stop, step;
} tm_range_list;

/* Insertion-ordered; idx hashes string keys once there are more than a few. */
struct tm_dict {
  tm_val *k, *v;
  size_t n, cap;
  uint32_t *idx; /* 0: empty; else entry + 1 */
  size_t icap;
};

struct tm_macro {
  const struct tm_node *def;
  struct tm_scope *closure;
};

struct tm_method {
  tm_val self;
  int id;
};

struct tm_loop {
  const tm_val *items;
  size_t n, i;
  tm_val changed_last;
  int changed_set;
};

static inline tm_val tv_undef(void) {
  tm_val v = {.kind = TV_UNDEF};
  return v;
}
static inline tm_val tv_none(void) {
  tm_val v = {.kind = TV_NONE};
  return v;
}
static inline tm_val tv_bool(int b) {
  tm_val v = {.kind = TV_BOOL};
  v.b = !!b;
  return v;
}
static inline tm_val tv_int(int64_t i) {
  tm_val v = {.kind = TV_INT};
  v.i = i;
  return v;
}
static inline tm_val tv_float(double f) {
  tm_val v = {.kind = TV_FLOAT};
  v.f = f;
  return v;
}
static inline tm_val tv_str(const tm_str *s) {
  tm_val v = {.kind = TV_STR};
  v.s = s;
  return v;
}
static inline tm_val tv_list(tm_list *l, unsigned flags) {
  tm_val v = {.kind = TV_LIST, .flags = (uint8_t)flags};
  v.l = l;
  return v;
}
static inline tm_val tv_dict(tm_dict *d) {
  tm_val v = {.kind = TV_DICT};
  v.d = d;
  return v;
}

tm_list *tm_list_new(tm_arena *a, size_t n); /* n items, all undefined */
tm_dict *tm_dict_new(tm_arena *a, size_t cap);
/* Sets key to val (replacing, in place, an equal key). 0 or -1 (no memory). */
int tm_dict_set(tm_arena *a, tm_dict *d, tm_val key, tm_val val);
/* The entry for key, or -1. */
long tm_dict_find(const tm_dict *d, tm_val key);
long tm_dict_findc(const tm_dict *d, const char *key, size_t n);

int tm_truthy(tm_val v);
int tm_hashable(tm_val v);  /* usable as a dict key (Python's hash() would succeed) */
int tm_is_number(tm_val v); /* int, float or bool */
double tm_num(tm_val v);
/* Python's ==. */
int tm_equal(tm_val a, tm_val b);
const char *tm_type_name(tm_val v); /* Python's type name: 'str', 'dict', 'NoneType', ... */

/* Python's float repr: 1.0, 1e-05, 0.1, inf. buf >= 32. */
size_t tm_fmt_float(double f, char *buf);
size_t tm_fmt_int(int64_t i, char *buf);

/* JSON text -> value (Python's json.loads: ints stay ints, NaN and Infinity
 * accepted), strings tainted when taint. 0, or -1 with msg filled. */
int tm_json_parse(tm_arena *a, const char *p, size_t n, int taint, tm_val *out, char *msg, size_t msg_cap);

/* ---------- tokens ---------- */

typedef enum tm_tok_type {
  TK_EOF,
  TK_DATA,
  TK_VAR_BEGIN,
  TK_VAR_END,
  TK_BLOCK_BEGIN,
  TK_BLOCK_END,
  TK_NAME,
  TK_STRING,
  TK_INT,
  TK_FLOAT,
  TK_OP
} tm_tok_type;

typedef enum tm_op {
  OP_ADD,
  OP_SUB,
  OP_MUL,
  OP_DIV,
  OP_FLOORDIV,
  OP_MOD,
  OP_POW,
  OP_TILDE,
  OP_LBRACKET,
  OP_RBRACKET,
  OP_LPAREN,
  OP_RPAREN,
  OP_LBRACE,
  OP_RBRACE,
  OP_EQ,
  OP_NE,
  OP_GT,
  OP_GTEQ,
  OP_LT,
  OP_LTEQ,
  OP_ASSIGN,
  OP_DOT,
  OP_COLON,
  OP_PIPE,
  OP_COMMA,
  OP_SEMICOLON
} tm_op;

typedef struct tm_tok {
  uint8_t type;
  uint8_t op;
  uint32_t line;
  const char *p; /* the name's bytes (TK_NAME), into the normalised source */
  size_t len;
  union {
    int64_t i;
    double f;
    const tm_str *s; /* TK_DATA, TK_STRING: decoded */
  };
} tm_tok;

typedef struct tm_toks {
  tm_tok *v;
  size_t n, cap;
} tm_toks;

/* Lexes src (newlines normalised, one final newline dropped) into toks,
 * allocating from a. 0, or -1 with err set ("template line N: ..."). */
int tm_lex(tm_arena *a, const char *src, size_t len, tm_toks *toks, heed_error *err);

/* ---------- the tree ---------- */

typedef enum tm_ntype {
  /* statements */
  TN_BLOCK, /* v: statements */
  TN_TEXT,  /* s */
  TN_OUT,   /* a */
  TN_IF,    /* v: conditions, w: their blocks, a: else block or NULL */
  TN_FOR, /* ids: targets (nids > 1 or TN_F_UNPACK: unpack), b: iterable, c: filter or NULL, d: body, a: else or NULL */
  TN_SET, /* ids: targets (as TN_FOR), a: value */
  TN_SET_NS,    /* id: the namespace variable, s: attribute, a: value */
  TN_SET_BLOCK, /* id (or id + s with TN_F_NS): target, d: body, v: filters applied (TN_FILTER with a NULL) */
  TN_MACRO,     /* id: name, ids: parameters, w: defaults of the last nw parameters, d: body */
  TN_BREAK,
  TN_CONTINUE,
  TN_FILTER_BLOCK, /* v: filters, d: body */
  TN_WITH,         /* ids: names, w: values, d: body */
  /* expressions */
  TN_LIT,    /* lit */
  TN_NAME,   /* id */
  TN_ATTR,   /* a.s */
  TN_ITEM,   /* a[b] */
  TN_SLICE,  /* a[b:c:d], NULL parts absent */
  TN_CALL,   /* a(v..., kw[i]=w[i]...) */
  TN_FILTER, /* a | id(v..., kw=w...) */
  TN_TEST,   /* a is id(v..., kw=w...) */
  TN_BIN,    /* a op b; op: OP_ADD..OP_POW */
  TN_NEG,
  TN_POS,
  TN_NOT,
  TN_AND,
  TN_OR,
  TN_CMP,    /* a ops[0] v[0] ops[1] v[1] ... ; ops: OP_EQ..OP_LTEQ, TN_CMP_IN, TN_CMP_NOTIN */
  TN_CONCAT, /* v joined with ~ */
  TN_COND,   /* a if b else c (c NULL: undefined) */
  TN_LIST,   /* v */
  TN_TUPLE,  /* v */
  TN_DICT    /* v: keys, w: values */
} tm_ntype;

#define TN_CMP_IN 100
#define TN_CMP_NOTIN 101
#define TN_F_UNPACK 1u /* TN_FOR/TN_SET target written as a tuple */
#define TN_F_NS 2u     /* TN_SET_BLOCK target is ns.attr */

typedef struct tm_node tm_node;
struct tm_node {
  uint8_t type;
  uint8_t op;
  uint8_t flags;
  uint32_t line;
  tm_node *a, *b, *c, *d;
  tm_node **v;
  uint32_t nv;
  tm_node **w;
  uint32_t nw;
  const tm_str **kw; /* keyword names of TN_CALL/TN_FILTER/TN_TEST, nw of them */
  const tm_str *s;
  uint8_t *ops;
  int32_t id;
  int32_t *ids;
  uint32_t nids;
  tm_val lit;
};

/* Filters and tests: X(ID, "name"). The jinja2 ones heed lacks are refused by
 * name as unsupported; any other unknown name is an error, as in jinja2. */
// clang-format off
#define TM_FILTER_LIST(X) \
  X(ABS, "abs") X(ATTR, "attr") X(BATCH, "batch") X(CAPITALIZE, "capitalize") X(CENTER, "center")              \
  X(COUNT, "count") X(D, "d") X(DEFAULT, "default") X(DICTSORT, "dictsort") X(E, "e") X(ESCAPE, "escape")      \
  X(FIRST, "first") X(FLOAT, "float") X(FORCEESCAPE, "forceescape") X(FORMAT, "format") X(INDENT, "indent")    \
  X(INT, "int") X(ITEMS, "items") X(JOIN, "join") X(LAST, "last") X(LENGTH, "length") X(LIST, "list")          \
  X(LOWER, "lower") X(MAP, "map") X(MAX, "max") X(MIN, "min") X(REJECT, "reject") X(REJECTATTR, "rejectattr")  \
  X(REPLACE, "replace") X(REVERSE, "reverse") X(ROUND, "round") X(SAFE, "safe") X(SELECT, "select")            \
  X(SELECTATTR, "selectattr") X(SORT, "sort") X(STRING, "string") X(SUM, "sum") X(TITLE, "title")              \
  X(TOJSON, "tojson") X(TRIM, "trim") X(TRUNCATE, "truncate") X(UNIQUE, "unique") X(UPPER, "upper")            \
  X(WORDCOUNT, "wordcount")
#define TM_FILTER_UNSUPPORTED "filesizeformat groupby pprint random slice striptags urlencode urlize wordwrap xmlattr"

#define TM_TEST_LIST(X) \
  X(ODD, "odd") X(EVEN, "even") X(DIVISIBLEBY, "divisibleby") X(DEFINED, "defined") X(UNDEFINED, "undefined")  \
  X(FILTER, "filter") X(TEST, "test") X(NONE, "none") X(BOOLEAN, "boolean") X(FALSE, "false") X(TRUE, "true")  \
  X(INTEGER, "integer") X(FLOAT, "float") X(LOWER, "lower") X(UPPER, "upper") X(STRING, "string")              \
  X(MAPPING, "mapping") X(NUMBER, "number") X(SEQUENCE, "sequence") X(ITERABLE, "iterable")                    \
  X(CALLABLE, "callable") X(SAMEAS, "sameas") X(ESCAPED, "escaped") X(IN, "in") X(EQ_OP, "==") X(EQ, "eq")     \
  X(EQUALTO, "equalto") X(NE_OP, "!=") X(NE, "ne") X(GT_OP, ">") X(GT, "gt") X(GREATERTHAN, "greaterthan")     \
  X(GE, "ge") X(GE_OP, ">=") X(LT_OP, "<") X(LT, "lt") X(LESSTHAN, "lessthan") X(LE_OP, "<=") X(LE, "le")
// clang-format on

typedef enum tm_filter_id {
#define TM_X_(id, name) TF_##id,
  TM_FILTER_LIST(TM_X_)
#undef TM_X_
      TF_COUNT_
} tm_filter_id;

typedef enum tm_test_id {
#define TM_X_(id, name) TT_##id,
  TM_TEST_LIST(TM_X_)
#undef TM_X_
      TT_COUNT_
} tm_test_id;

extern const char *const tm_filter_names[TF_COUNT_];
extern const char *const tm_test_names[TT_COUNT_];
int tm_filter_lookup(const char *name, size_t n); /* TF_* or -1 */
int tm_test_lookup(const char *name, size_t n);   /* TT_* or -1 */

struct heed_template {
  tm_arena arena;
  tm_node *root;        /* TN_BLOCK */
  const tm_str **names; /* variable names by id */
  uint32_t n_names;
  int32_t loop_id; /* the id of `loop`, -1 when the template never names it */
  locale_t loc;    /* the "C" locale, for strtod and printf; (locale_t)0 if none */
};

/* The id of a variable name the template uses, or -1. */
int32_t tm_name_id(const heed_template *t, const char *name, size_t n);

/* ---------- rendering ---------- */

typedef struct tm_scope tm_scope;
struct tm_scope {
  tm_scope *up;
  int32_t *ids;
  tm_val *vals;
  uint32_t n, cap;
  int captured; /* a macro's closure: never reused */
};

typedef struct tm_render {
  const heed_template *t;
  tm_arena arena;
  tm_buf out;   /* the top-level text (heap) */
  tm_buf *sink; /* where output goes now: out, or a capture */
  tm_scope *globals;
  tm_scope *scope; /* where statements run now */
  uint64_t steps, max_steps;
  unsigned depth, macro_depth;
  size_t max_output;
  int64_t now;
  unsigned flags;
  heed_error *err;
  int failed;
} tm_render;

/* Error with "template line N: " in front (line 0: none); returns -1. */
int tm_fail(tm_render *r, uint32_t line, heed_status st, const char *fmt, ...) HEED_PRINTF(4, 5);
/* The arena's or a buffer's failure as an error; returns -1. */
int tm_fail_mem(tm_render *r, uint32_t line);
/* Counts work; -1 (error set) past the limit. */
int tm_charge(tm_render *r, uint32_t line, uint64_t units);

heed_status tm_render_init(tm_render *r, const heed_template *t, const heed_template_options *opt, heed_error *err);
/* Binds a global variable (ignored when the template never names it). */
int tm_render_set(tm_render *r, const char *name, size_t n, tm_val v);
heed_status tm_render_run(tm_render *r, heed_template_text *out);
void tm_render_fini(tm_render *r);

/* str(v) and repr(v) appended to b (containers via repr); -1 with r's error set. */
int tm_val_str(tm_render *r, uint32_t line, tm_buf *b, tm_val v);
int tm_val_repr(tm_render *r, uint32_t line, tm_buf *b, tm_val v);
/* json.dumps(v, ensure_ascii, indent, separators, sort_keys). indent NULL: none.
 * A string is untrusted in the output when it has any untrusted byte. */
typedef struct tm_json_opts {
  int ensure_ascii;
  const tm_str *indent; /* NULL: no indent */
  const tm_str *item_sep, *key_sep;
  int sort_keys;
} tm_json_opts;
int tm_val_json(tm_render *r, uint32_t line, tm_buf *b, tm_val v, const tm_json_opts *o, unsigned depth);

/* ---------- shared by the evaluator (tmpl_eval.c) and the built-ins (tmpl_builtins.c) ---------- */

/* Arguments of a call, filter, test or method. */
typedef struct tm_args {
  const tm_val *pos;
  size_t npos;
  const tm_str *const *kwn;
  const tm_val *kwv;
  size_t nkw;
} tm_args;

/* Binds a to params[0..np) by position, then by keyword. slots start
 * undefined; given[i] says whether param i was passed. Errors name `what`. */
int tm_bind(tm_render *r, uint32_t line, const char *what, const char *const *params, size_t np, const tm_args *a,
            tm_val *slots, uint8_t *given);
/* The items iterating v gives (list items, dict keys, characters; none for undefined). */
int tm_items(tm_render *r, uint32_t line, tm_val v, const tm_val **items, size_t *n);
/* obj.name (attribute first, then item) and obj[key] (item first), with jinja2's sandbox rules. */
int tm_getattr(tm_render *r, uint32_t line, tm_val obj, const char *name, size_t n, tm_val *out);
int tm_getitem(tm_render *r, uint32_t line, tm_val obj, tm_val key, tm_val *out);
int tm_binop(tm_render *r, uint32_t line, int op, tm_val a, tm_val b, tm_val *out);
/* op: OP_EQ..OP_LTEQ, TN_CMP_IN, TN_CMP_NOTIN. */
int tm_compare(tm_render *r, uint32_t line, int op, tm_val a, tm_val b, int *res);
/* Python's a < b for sorting: *res -1, 0, 1; an error for types that do not order. */
int tm_order(tm_render *r, uint32_t line, tm_val a, tm_val b, int *res);
/* The error using an undefined value raises. */
int tm_undef_error(tm_render *r, uint32_t line, tm_val u);
/* An undefined value with a message for when it is used ("No first item, ..."). */
tm_val tm_undef_hint(const char *hint);
/* str(v) as a string (a string is itself, taint kept). */
int tm_to_str(tm_render *r, uint32_t line, tm_val v, const tm_str **out);
int tm_call(tm_render *r, uint32_t line, tm_val callee, const tm_args *a, tm_val *out);

/* tmpl_builtins.c */
int tm_filter(tm_render *r, uint32_t line, int id, tm_val in, const tm_args *a, tm_val *out);
int tm_test(tm_render *r, uint32_t line, int id, tm_val in, const tm_args *a, int *res);
/* A method of obj named name: *id set, 1; or 0 when obj has none by that name. */
int tm_method_lookup(tm_val obj, const char *name, size_t n, int *id);
int tm_method_call(tm_render *r, uint32_t line, tm_val self, int id, const tm_args *a, tm_val *out);
/* A global function by name: its id, or -1. */
int tm_function_lookup(const char *name, size_t n);
int tm_function_call(tm_render *r, uint32_t line, int id, const tm_args *a, tm_val *out);
const char *tm_function_name(int id);
const char *tm_method_name(int id);

#endif
