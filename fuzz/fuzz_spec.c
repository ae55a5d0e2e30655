/* fuzz/fuzz_spec.c - speculative decoding: heed_spec_verify_chain,
 * heed_spec_verify_tree, heed_spec_sample, heed_spec_probs and
 * heed_spec_tree_mask, with random vocabularies (a few tokens up to the lazy
 * row reading of 65536 and more), logits with NaN, +-Inf, ties and extremes,
 * every draft q kind, and sampling parameters across their range and beyond
 * (temperatures 0, 1e-45, 1e-40, near HEED_SPEC_MIN_TEMPERATURE, FLT_MAX;
 * top-k, top-p, min-p, repetition penalties from 1e-45 to FLT_MAX).
 *
 * Checks:
 *   - never HEED_E_INTERNAL; invalid parameters, tokens, parents and draft
 *     sizes are refused; with a vocab below 65536 (every row read) a NaN or
 *     +Inf in a target row is refused, and at any vocab the rows a result
 *     came from hold none;
 *   - a call whose inputs are all valid (every row with a finite logit,
 *     one-hot or no q) succeeds;
 *   - results: path is a chain of the tree from the root, tokens in the
 *     vocab, never a token whose (penalised) logit is -Inf; greedy (T = 0 or
 *     below HEED_SPEC_MIN_TEMPERATURE) accepts exactly while the draft is the
 *     argmax (ties to the lowest id) and continues with the argmax, the same
 *     on every ISA;
 *   - probs: finite, >= 0, sum 1 within 1e-3, 0 for -Inf logits, greedy one-hot,
 *     the kept set an upper set of the logits no larger than top-k's (ties
 *     aside), min-p respected; a sampled token has p > 0;
 *   - a call repeated gives the same result;
 *   - the n-gram drafter proposes exactly what a brute-force search finds: the
 *     tokens after the most recent earlier occurrence of the longest suffix of
 *     n_max down to n_min tokens. */
#include "fuzz/fuzz_common.h"

#define FLOATS_MAX (1u << 19) /* target rows (and dense q rows) per call, at most */
#define LAZY 65536u

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc, (void)argv;
  fz_open_runtimes();
  return 0;
}

typedef struct call {
  heed_spec *s;
  unsigned V, n;
  heed_sampling smp;
  int32_t pen[40];
  float *target;      /* [(n + 1) V] */
  int32_t tok[HEED_SPEC_MAX_DRAFT], par[HEED_SPEC_MAX_DRAFT];
  int tree;           /* parents used */
  heed_draft_q q;
  int have_q;
  float *qdense;      /* [n V] */
  int32_t qids[HEED_SPEC_MAX_DRAFT * 9];
  float qprobs[HEED_SPEC_MAX_DRAFT * 9];
  uint64_t seed, step;
} call;

static int params_valid(const call *c, const heed_spec_config *cfg) {
  const heed_sampling *m = &c->smp;
  if (!(m->temperature >= 0) || isinf(m->temperature)) return 0;
  if (m->top_k > c->V || !(m->top_p > 0 && m->top_p <= 1) || !(m->min_p >= 0 && m->min_p < 1)) return 0;
  if (!(m->repetition_penalty > 0) || isinf(m->repetition_penalty)) return 0;
  if (m->repetition_penalty != 1.0f && m->n_penalty_tokens) {
    if (m->n_penalty_tokens > cfg->max_penalty_tokens) return 0;
    for (unsigned i = 0; i < m->n_penalty_tokens; i++)
      if (m->penalty_tokens[i] < 0 || (uint32_t)m->penalty_tokens[i] >= c->V) return 0;
  }
  return 1;
}

static int greedy(const heed_sampling *m) { return m->temperature < HEED_SPEC_MIN_TEMPERATURE; }

/* Row r's logits after the repetition penalty (context tokens, plus the draft
 * tokens of node r - 1 and its ancestors), into x [V]. */
static void penalised_row(const call *c, unsigned r, float *x) {
  const unsigned V = c->V;
  memcpy(x, c->target + (size_t)r * V, sizeof(float) * V);
  const float rp = c->smp.repetition_penalty;
  if (rp == 1.0f) return;
  uint8_t *hit = calloc(V, 1);
  for (unsigned i = 0; i < c->smp.n_penalty_tokens; i++)
    if (c->smp.penalty_tokens[i] >= 0 && (uint32_t)c->smp.penalty_tokens[i] < V) hit[c->smp.penalty_tokens[i]] = 1;
  for (int u = (int)r - 1; u >= 0; u = c->tree && c->par[u] < u ? c->par[u] : u - 1)
    if (c->tok[u] >= 0 && (uint32_t)c->tok[u] < V) hit[c->tok[u]] = 1;
  for (unsigned t = 0; t < V; t++)
    if (hit[t]) x[t] = x[t] > 0 ? x[t] / rp : x[t] * rp;
  free(hit);
}

/* argmax, ties to the lowest id; -1 if the row has no finite value or has NaN/+inf. */
static int32_t argmax(const float *x, unsigned V) {
  int32_t best = -1;
  for (unsigned t = 0; t < V; t++) {
    if (isnan(x[t]) || x[t] == INFINITY) return -1;
    if (x[t] != -INFINITY && (best < 0 || x[t] > x[best])) best = (int32_t)t;
  }
  return best;
}

static int row_bad(const float *x, unsigned V) { /* NaN or +inf */
  for (unsigned t = 0; t < V; t++)
    if (isnan(x[t]) || x[t] == INFINITY) return 1;
  return 0;
}
static int row_has_finite(const float *x, unsigned V) {
  for (unsigned t = 0; t < V; t++)
    if (isfinite(x[t])) return 1;
  return 0;
}

static const char *st_name(heed_status st) { return heed_status_name(st); }

/* The sampling parameters, mostly valid. */
static void read_sampling(fz_in *in, call *c, const heed_spec_config *cfg) {
  static const float temps[] = {0.0f, 1.0f, 0.5f, 2.0f, 0.7f, 1e-40f, 1e-45f, 5e-7f, 1e-6f, 1.1e-6f, 1e-3f, 100.0f, 1e10f,
                                3e38f, FLT_MAX, -0.0f};
  static const float top_ps[] = {1.0f, 1.0f, 1.0f, 0.9f, 0.5f, 0.1f, 1e-9f, 0.999999f, 1e-45f, 0.0f, 1.0000001f, NAN};
  static const float min_ps[] = {0.0f, 0.0f, 0.0f, 0.05f, 0.5f, 0.99f, 1e-45f, 0.9999999f, -0.0f, 1.0f, NAN};
  static const float pens[] = {1.0f, 1.0f, 1.0f, 1.2f, 0.8f, 2.0f, 1e-30f, 1e30f, 1e-45f, FLT_MAX, 0.0f, INFINITY, NAN};
  heed_sampling *m = &c->smp;
  heed_sampling_init(m);
  uint8_t t = fz_u8(in);
  m->temperature = t < 64 ? 0.0f : t < 240 ? FZ_PICK(in, temps) : fz_special(in);
  uint8_t k = fz_u8(in);
  m->top_k = k < 160 ? 0 : k < 200 ? 1 : k < 250 ? fz_range(in, 1, c->V < 60000 ? c->V : 60000) : c->V + (k & 1);
  m->top_p = FZ_PICK(in, top_ps);
  m->min_p = FZ_PICK(in, min_ps);
  m->repetition_penalty = FZ_PICK(in, pens);
  unsigned np = fz_range(in, 0, cfg->max_penalty_tokens + 1 < 40 ? cfg->max_penalty_tokens + 1 : 40);
  for (unsigned i = 0; i < np; i++) {
    uint8_t b = fz_u8(in);
    c->pen[i] = b < 250 ? (int32_t)(fz_u16(in) % c->V) : b < 253 ? -1 : (int32_t)c->V;
  }
  m->penalty_tokens = np ? c->pen : NULL;
  m->n_penalty_tokens = np;
}

/* Fills rows [n_rows][V]: random values with ties and specials, sometimes
 * whole rows of -inf (none finite) or one finite value among -infs. */
static void read_rows(fz_in *in, float *x, unsigned n_rows, unsigned V) {
  fz_fill f = fz_fill_read(in, 1);
  fz_fill_apply(&f, x, (size_t)n_rows * V);
  uint8_t shape = fz_u8(in);
  if (shape >= 224) {
    unsigned r = fz_u8(in) % n_rows;
    for (unsigned t = 0; t < V; t++) x[(size_t)r * V + t] = -INFINITY;
    if (shape & 1) x[(size_t)r * V + fz_u16(in) % V] = fz_special(in);
  }
}

static void check_result(const call *c, heed_status st, const heed_spec_result *res) {
  const unsigned V = c->V;
  FZ_CHECK(res->n_accepted <= c->n, "%u of %u accepted", res->n_accepted, c->n);
  FZ_CHECK(res->next_token >= 0 && (uint32_t)res->next_token < V, "next_token %d of vocab %u", res->next_token, V);
  float *x = malloc(sizeof(float) * V);
  int cur = -1;
  for (unsigned i = 0; i <= res->n_accepted; i++) {
    unsigned row = (unsigned)(cur + 1);
    penalised_row(c, row, x);
    FZ_CHECK(!row_bad(c->target + (size_t)row * V, V), "a result from row %u, which holds NaN or +inf (status %s)", row,
             st_name(st));
    if (i == res->n_accepted) {
      FZ_CHECK(x[res->next_token] != -INFINITY, "next_token %d has logit -inf in row %u", res->next_token, row);
      if (greedy(&c->smp) && argmax(x, V) >= 0)
        FZ_CHECK(res->next_token == argmax(x, V), "greedy next_token %d, argmax of row %u is %d", res->next_token, row,
                 argmax(x, V));
      break;
    }
    int node = res->path[i];
    FZ_CHECK(node >= 0 && (unsigned)node < c->n, "path[%u] = %d", i, node);
    FZ_CHECK((c->tree ? c->par[node] : node - 1) == cur, "path[%u] = %d does not follow %d", i, node, cur);
    FZ_CHECK(x[c->tok[node]] != -INFINITY, "accepted node %d's token %d has logit -inf", node, c->tok[node]);
    if (greedy(&c->smp) && argmax(x, V) >= 0)
      FZ_CHECK(c->tok[node] == argmax(x, V), "greedy accepted token %d, argmax of row %u is %d", c->tok[node], row,
               argmax(x, V));
    cur = node;
  }
  /* greedy: no child of the last accepted node is the argmax (else it would have been accepted) */
  if (greedy(&c->smp)) {
    unsigned row = (unsigned)(cur + 1);
    penalised_row(c, row, x);
    int32_t a = argmax(x, V);
    if (a >= 0)
      for (unsigned j = 0; j < c->n; j++)
        if ((c->tree ? c->par[j] : (int)j - 1) == cur)
          FZ_CHECK(c->tok[j] != a, "greedy rejected node %u whose token %d is row %u's argmax", j, a, row);
  }
  free(x);
}

/* descending, -inf last (rows checked here hold no NaN) */
static int cmp_desc(const void *a, const void *b) {
  float x = *(const float *)a, y = *(const float *)b;
  return (x < y) - (x > y);
}

typedef struct zi {
  float z;
  unsigned t;
} zi;
static int cmp_zi(const void *a, const void *b) {
  const zi *x = a, *y = b;
  return (x->z < y->z) - (x->z > y->z);
}

/* top-p: of what top-k kept (B), the kept set is the most likely tokens until
 * their mass (softmax over B) reaches p, with the ties of the last one: its
 * mass reaches p, and without its least likely tie group it would not. */
static void check_top_p(const call *c, const float *x, const float *p) {
  const unsigned V = c->V;
  const float is = 1.0f / c->smp.temperature;
  zi *v = malloc(sizeof(zi) * V);
  unsigned n = 0;
  for (unsigned t = 0; t < V; t++)
    if (x[t] != -INFINITY) v[n].z = x[t] * is, v[n].t = t, n++;
  qsort(v, n, sizeof *v, cmp_zi);
  if (c->smp.top_k && c->smp.top_k < n) { /* top-k first, ties kept */
    unsigned k = c->smp.top_k;
    while (k < n && v[k].z == v[c->smp.top_k - 1].z) k++;
    n = k;
  }
  if (!n || !isfinite(v[0].z)) {
    free(v);
    return;
  }
  double sum = 0, kept = 0, below = 0; /* mass of B; of the kept set; of the kept set but its last tie group */
  for (unsigned i = 0; i < n; i++) sum += exp((double)v[i].z - v[0].z);
  float zmin = INFINITY;
  for (unsigned i = 0; i < n; i++)
    if (p[v[i].t] > 0) zmin = v[i].z < zmin ? v[i].z : zmin;
  for (unsigned i = 0; i < n; i++) {
    double w = exp((double)v[i].z - v[0].z) / sum;
    if (v[i].z >= zmin) kept += w;
    if (v[i].z > zmin) below += w;
  }
  FZ_CHECK(kept >= c->smp.top_p - 1e-3, "top_p %g keeps a mass of %.6g (down to z %g)", c->smp.top_p, kept, zmin);
  FZ_CHECK(below < c->smp.top_p + 1e-3, "top_p %g keeps more than needed: %.6g without the least kept z %g",
           c->smp.top_p, below, zmin);
  fz_stat("top_p checked");
  free(v);
}

static void check_probs(const call *c, const float *p) {
  const unsigned V = c->V;
  float *x = malloc(sizeof(float) * V);
  penalised_row(c, 0, x);
  double sum = 0;
  float pmax = 0, xmin_kept = INFINITY;
  unsigned kept = 0;
  for (unsigned t = 0; t < V; t++) {
    FZ_CHECK(isfinite(p[t]) && p[t] >= 0, "probs[%u] = %g", t, p[t]);
    if (x[t] == -INFINITY) FZ_CHECK(p[t] == 0, "probs[%u] = %g for a -inf logit", t, p[t]);
    sum += p[t];
    pmax = p[t] > pmax ? p[t] : pmax;
    if (p[t] > 0) kept++, xmin_kept = x[t] < xmin_kept ? x[t] : xmin_kept;
  }
  FZ_CHECK(fabs(sum - 1) <= 1e-3, "probs sum to %.9g", sum);
  if (greedy(&c->smp)) {
    int32_t a = argmax(x, V);
    FZ_CHECK(a >= 0 && p[a] == 1.0f && kept == 1, "greedy probs: %u kept, argmax %d has %g", kept, a, a >= 0 ? p[a] : -1.0f);
    free(x);
    return;
  }
  /* "z >= a threshold": every token above the least kept one is kept (ties
   * within rounding aside). A token whose p would be subnormal may come out 0
   * or not, as the exp that made it (a SIMD kernel's or libm's) flushes or
   * not; only tokens whose p is normal are held to this. */
  const float margin = fabsf(xmin_kept) * 4e-7f + 1e-37f;
  float xmax = -INFINITY;
  for (unsigned t = 0; t < V; t++) xmax = x[t] > xmax ? x[t] : xmax;
  for (unsigned t = 0; t < V; t++)
    if (p[t] == 0 && x[t] > xmin_kept + margin && pmax * exp(((double)x[t] - xmax) / c->smp.temperature) >= FLT_MIN) {
      FZ_CHECK(0, "token %u (logit %.9g) dropped while %.9g (the least kept) is kept (V %u, T %g, top_k %u, top_p %g, min_p %g, "
               "penalty %g on %u tokens, raw logit %.9g, p max %g)",
               t, x[t], xmin_kept, V, c->smp.temperature, c->smp.top_k, c->smp.top_p, c->smp.min_p,
               c->smp.repetition_penalty, c->smp.n_penalty_tokens, c->target[t], pmax);
    }
  if (c->smp.top_k) { /* no more than the tokens tied with or above the k-th largest */
    float *sorted = malloc(sizeof(float) * V);
    memcpy(sorted, x, sizeof(float) * V);
    const unsigned k = c->smp.top_k;
    qsort(sorted, V, sizeof(float), cmp_desc);
    const float kth = sorted[k - 1];
    unsigned ge = 0;
    for (unsigned t = 0; t < V; t++) ge += x[t] >= kth - (fabsf(kth) * 4e-7f + 1e-37f);
    FZ_CHECK(kept <= ge, "top_k %u keeps %u tokens; %u are at least the k-th largest %.9g", k, kept, ge, kth);
    free(sorted);
  }
  if (c->smp.top_p < 1 && c->smp.min_p == 0) check_top_p(c, x, p);
  if (c->smp.min_p > 0)
    for (unsigned t = 0; t < V; t++)
      if (p[t] > 0)
        FZ_CHECK(p[t] >= c->smp.min_p * pmax * (1 - 1e-3f) || p[t] < 1e-30f, "min_p %g keeps token %u at %g of %g",
                 c->smp.min_p, t, p[t], pmax);
  free(x);
}

/* The n-gram drafter against a brute-force search of its sequence. */
#define NGRAM_CAP 512
static void fuzz_ngram(fz_in *in) {
  heed_ngram_config nc;
  uint8_t vb = fz_u8(in);
  nc.vocab = vb < 250 ? 2 + vb % 16 : vb < 253 ? vb & 1 : HEED_SPEC_VOCAB_MAX + 1;
  nc.n_min = fz_range(in, 0, 17), nc.n_max = fz_range(in, 0, 17);
  if (fz_u8(in) < 64) nc.n_min = nc.n_max = 0;
  nc.capacity = fz_range(in, 0, NGRAM_CAP);
  int valid = ((!nc.n_min && !nc.n_max) || (nc.n_min >= 1 && nc.n_min <= nc.n_max && nc.n_max <= 16)) && nc.vocab >= 2 &&
              nc.vocab <= HEED_SPEC_VOCAB_MAX && nc.capacity >= 1;
  heed_drafter *d = NULL;
  heed_error err;
  heed_status st = heed_ngram_drafter_create(&nc, &d, &err);
  FZ_CHECK((st == HEED_OK) == valid, "ngram create vocab %u n %u..%u capacity %u: %s %s", nc.vocab, nc.n_min, nc.n_max,
           nc.capacity, st_name(st), err.msg);
  if (st != HEED_OK) return;
  const unsigned n_min = nc.n_min ? nc.n_min : 1, n_max = nc.n_max ? nc.n_max : 4;
  int32_t seq[NGRAM_CAP];
  unsigned len = 0;
  for (int round = 0; round < 12 && (round == 0 || in->n); round++) {
    /* append: new tokens, or a copy of an earlier stretch (long matches) */
    int32_t add[64];
    unsigned n = fz_range(in, 0, 63), bad = 0;
    uint8_t how = fz_u8(in);
    unsigned from = len ? fz_range(in, 0, len - 1) : 0;
    for (unsigned i = 0; i < n; i++) {
      if (how < 128 && len) add[i] = seq[(from + i) % len];
      else add[i] = (int32_t)(fz_u8(in) % nc.vocab);
    }
    if (n && fz_u8(in) >= 248) add[fz_u8(in) % n] = fz_bool(in) ? -1 : (int32_t)nc.vocab, bad = 1;
    int fits = n <= nc.capacity - len;
    st = heed_drafter_append(d, add, n);
    FZ_CHECK((st == HEED_OK) == (fits && !bad), "ngram append of %u (holding %u of %u, bad %u): %s", n, len, nc.capacity,
             bad, st_name(st));
    if (st == HEED_OK) memcpy(seq + len, add, sizeof(int32_t) * n), len += n;
    /* propose, and what a search finds */
    uint8_t kb = fz_u8(in);
    unsigned max_k = kb < 250 ? 1 + kb % 16 : kb < 253 ? 0 : HEED_SPEC_MAX_DRAFT + 1 + (kb & 1) * 1000;
    heed_draft out;
    st = heed_drafter_propose(d, max_k, &out);
    FZ_CHECK((st == HEED_OK) == (max_k >= 1 && max_k <= HEED_SPEC_MAX_DRAFT), "ngram propose max_k %u: %s", max_k,
             st_name(st));
    if (st != HEED_OK) continue;
    unsigned want_k = 0, want_p = 0;
    for (unsigned k = n_max; k >= n_min && !want_k; k--) {
      if (k > len) continue;
      for (unsigned e = len - 1; e >= k; e--) /* the gram seq[e-k, e), followed by seq[e] */
        if (memcmp(seq + e - k, seq + len - k, sizeof(int32_t) * k) == 0) {
          want_k = k, want_p = e;
          break;
        }
    }
    FZ_CHECK(heed_ngram_last_match(d) == want_k, "ngram: match of %u tokens, the search finds %u (len %u)",
             heed_ngram_last_match(d), want_k, len);
    unsigned want_n = want_k ? (len - want_p < max_k ? len - want_p : max_k) : 0;
    FZ_CHECK(out.n == want_n && out.q.kind == HEED_DRAFT_ONEHOT, "ngram proposes %u tokens, the search %u", out.n, want_n);
    if (want_n) FZ_CHECK(memcmp(out.tokens, seq + want_p, sizeof(int32_t) * want_n) == 0, "ngram proposes other tokens");
    fz_stat(want_n ? "ngram proposal" : "ngram nothing");
  }
  heed_drafter_destroy(d);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static const unsigned vocabs[] = {2, 3, 5, 16, 17, 100, 256, 1000, 1024, 1025, 4096, 5000, 2, 32, 65536, 65537, 70000};
  static const unsigned drafts[] = {1, 2, 4, 8, 16, 64, 3};
  fz_in in = {data, size};
  if (size && data[0] >= 240) { /* the n-gram drafter */
    fz_u8(&in);
    fuzz_ngram(&in);
    return 0;
  }
  heed_runtime *rt = fz_runtime(&in);
  heed_spec_config cfg;
  uint8_t vs = fz_u8(&in);
  cfg.vocab = vs < 240 ? vocabs[vs % (sizeof vocabs / sizeof *vocabs)] : vs < 250 ? fz_range(&in, 2, 3000) : vs & 3;
  if (vs >= 254) cfg.vocab = HEED_SPEC_VOCAB_MAX + 1;
  uint8_t ds = fz_u8(&in);
  cfg.max_draft = ds < 250 ? drafts[ds % (sizeof drafts / sizeof *drafts)] : ds == 250 ? 0 : HEED_SPEC_MAX_DRAFT + 1;
  cfg.max_penalty_tokens = fz_range(&in, 0, 16);
  cfg.max_sparse = fz_range(&in, 0, 8);
  heed_spec *s = (heed_spec *)&cfg;
  heed_error err;
  heed_status st = heed_spec_create(rt, &cfg, &s, &err);
  int cfg_ok = cfg.vocab >= 2 && cfg.vocab <= HEED_SPEC_VOCAB_MAX && cfg.max_draft >= 1 &&
               cfg.max_draft <= HEED_SPEC_MAX_DRAFT;
  FZ_CHECK((st == HEED_OK) == cfg_ok, "spec_create vocab %u max_draft %u: %s %s", cfg.vocab, cfg.max_draft, st_name(st),
           err.msg);
  if (st != HEED_OK) {
    FZ_CHECK(s == NULL, "a failed create left *out set");
    return 0;
  }
  call c;
  memset(&c, 0, sizeof c);
  c.s = s;
  c.V = cfg.vocab;
  unsigned n_cap = FLOATS_MAX / c.V - 1; /* draft nodes a call may pass here (their rows fit) */
  if (n_cap > cfg.max_draft) n_cap = cfg.max_draft;
  c.target = malloc(sizeof(float) * (size_t)(n_cap + 1) * c.V);
  c.qdense = malloc(sizeof(float) * (size_t)n_cap * c.V);
  float *probs = malloc(sizeof(float) * c.V);
  heed_spec *s2 = NULL; /* a verifier on another ISA's runtime, for greedy calls */

  for (int round = 0; round < 3 && (round == 0 || in.n); round++) {
    uint8_t op = fz_u8(&in) % 8;
    read_sampling(&in, &c, &cfg);
    const int pvalid = params_valid(&c, &cfg);
    c.seed = fz_u64(&in), c.step = fz_u64(&in);
    if (op >= 5) { /* tree mask */
      unsigned n = fz_range(&in, 0, HEED_SPEC_MAX_DRAFT + 1);
      int32_t par[HEED_SPEC_MAX_DRAFT + 2];
      int ok = n >= 1 && n <= HEED_SPEC_MAX_DRAFT;
      for (unsigned i = 0; i < n; i++) {
        uint8_t b = fz_u8(&in);
        par[i] = b < 248 ? (int32_t)(b % (i + 1)) - 1 : b < 252 ? (int32_t)i : -2;
        ok &= par[i] >= -1 && par[i] < (int32_t)i;
      }
      uint8_t *mask = malloc((size_t)(n + 1) * (n + 1));
      heed_error e;
      st = heed_spec_tree_mask(par, n, mask, &e);
      FZ_CHECK((st == HEED_OK) == ok, "tree_mask of %u nodes: %s", n, st_name(st));
      if (st == HEED_OK)
        for (unsigned i = 0; i <= n; i++)
          for (unsigned j = 0; j <= n; j++) { /* row i: itself, its ancestors and the root */
            int want = j == 0 || j == i;
            for (int u = (int)i - 1; u >= 0 && !want; u = par[u]) want = (unsigned)u + 1 == j;
            FZ_CHECK(mask[(size_t)i * (n + 1) + j] == want, "tree mask [%u][%u] = %u", i, j, mask[(size_t)i * (n + 1) + j]);
          }
      free(mask);
      continue;
    }
    if (op >= 3) { /* sample and probs on one row */
      read_rows(&in, c.target, 1, c.V);
      c.n = 0;
      c.tree = 0;
      const int rows_ok = !row_bad(c.target, c.V);
      int32_t token = -7;
      st = heed_spec_sample(s, &c.smp, c.seed, c.step, c.target, &token);
      FZ_CHECK(st != HEED_E_INTERNAL, "sample: internal error: %s", heed_spec_last_error(s));
      if (!pvalid || !rows_ok) FZ_CHECK(st != HEED_OK, "sample accepted invalid input (params %d row %d)", pvalid, rows_ok);
      if (pvalid && rows_ok && row_has_finite(c.target, c.V))
        FZ_CHECK(st == HEED_OK || st == HEED_E_INVALID, "sample: %s %s", st_name(st), heed_spec_last_error(s));
      heed_status pst = heed_spec_probs(s, &c.smp, c.target, probs);
      FZ_CHECK(pst != HEED_E_INTERNAL, "probs: internal error: %s", heed_spec_last_error(s));
      FZ_CHECK((pst == HEED_OK) == (st == HEED_OK), "sample %s, probs %s (%s)", st_name(st), st_name(pst),
               heed_spec_last_error(s));
      if (st == HEED_OK) {
        heed_spec_result r = {.n_accepted = 0, .next_token = token};
        check_result(&c, st, &r);
        check_probs(&c, probs);
        FZ_CHECK(probs[token] > 0, "sampled token %d has probability 0", token);
        int32_t again = -7;
        FZ_CHECK(heed_spec_sample(s, &c.smp, c.seed, c.step, c.target, &again) == HEED_OK && again == token,
                 "sample again: %d, then %d", token, again);
        fz_stat("sample/probs ok");
      } else {
        fz_stat("sample/probs refused");
      }
      continue;
    }
    /* chain (op 0, 1) or tree (op 2) */
    c.tree = op == 2;
    uint8_t nb = fz_u8(&in);
    /* 0 and max_draft + 1 are refused before anything is read */
    c.n = nb < 250 ? fz_range(&in, 1, n_cap) : nb < 253 ? 0 : cfg.max_draft + 1;
    const unsigned nn = c.n < n_cap ? c.n : n_cap, rows = nn + 1; /* what the buffers hold */
    read_rows(&in, c.target, rows, c.V);
    int ok = c.n >= 1 && c.n <= cfg.max_draft && pvalid;
    for (unsigned i = 0; i < nn; i++) {
      uint8_t b = fz_u8(&in);
      c.par[i] = !c.tree ? (int32_t)i - 1 : b < 250 ? (int32_t)(fz_u8(&in) % (i + 1)) - 1 : (int32_t)i;
      if (c.tree) ok &= c.par[i] >= -1 && c.par[i] < (int32_t)i;
      uint8_t tb = fz_u8(&in);
      if (tb < 128) { /* the argmax of its row: greedy accepts it */
        float *x = malloc(sizeof(float) * c.V);
        penalised_row(&c, (unsigned)(c.par[i] + 1), x);
        int32_t a = argmax(x, c.V);
        c.tok[i] = a >= 0 ? a : 0;
        free(x);
      } else {
        c.tok[i] = tb < 250 ? (int32_t)(fz_u16(&in) % c.V) : tb < 253 ? -1 : (int32_t)c.V;
      }
      ok &= c.tok[i] >= 0 && (uint32_t)c.tok[i] < c.V;
    }
    /* q */
    uint8_t qk = fz_u8(&in) % 6;
    c.have_q = qk != 0;
    memset(&c.q, 0, sizeof c.q);
    int q_simple = qk <= 1 || greedy(&c.smp);
    if (qk == 1) {
      c.q.kind = HEED_DRAFT_ONEHOT;
    } else if (qk == 2) {
      c.q.kind = HEED_DRAFT_DENSE_LOGITS;
      c.q.dense = c.qdense;
      if (nn) read_rows(&in, c.qdense, nn, c.V);
    } else if (qk == 3) { /* probabilities: a softmax of random logits, or raw values */
      c.q.kind = HEED_DRAFT_DENSE_PROBS;
      c.q.dense = c.qdense;
      if (nn) {
        fz_fill f = fz_fill_read(&in, 1);
        fz_fill_apply(&f, c.qdense, (size_t)nn * c.V);
        if (fz_u8(&in) < 200)
          for (unsigned r = 0; r < nn; r++) {
            float *row = c.qdense + (size_t)r * c.V;
            double sum = 0;
            for (unsigned t = 0; t < c.V; t++) row[t] = isfinite(row[t]) ? expf(fminf(fabsf(row[t]), 80.0f) * 0.1f) : 0.0f;
            for (unsigned t = 0; t < c.V; t++) sum += row[t];
            for (unsigned t = 0; t < c.V; t++) row[t] = (float)(row[t] / sum);
          }
      }
    } else if (qk == 4) {
      c.q.kind = HEED_DRAFT_SPARSE;
      c.q.n_sparse = fz_range(&in, 0, cfg.max_sparse + 1 < 9 ? cfg.max_sparse + 1 : 9);
      c.q.ids = c.qids, c.q.probs = c.qprobs;
      for (unsigned i = 0; i < nn; i++)
        for (unsigned j = 0; j < c.q.n_sparse; j++) {
          uint8_t b = fz_u8(&in);
          c.qids[i * c.q.n_sparse + j] = j == 0 && b < 200 ? c.tok[i] : b < 240 ? (int32_t)(fz_u16(&in) % c.V) : -1;
          c.qprobs[i * c.q.n_sparse + j] = b & 1 ? fz_special(&in) : (float)(fz_u8(&in) + 1) / 256.0f;
        }
    } else if (qk == 5) {
      c.q.kind = (heed_draft_kind)(4 + fz_u8(&in) % 4); /* not a kind */
    }
    const heed_draft_q *qp = c.have_q ? &c.q : NULL;
    int rows_ok = 1, rows_finite = 1;
    for (unsigned r = 0; r < rows; r++) {
      rows_ok &= !row_bad(c.target + (size_t)r * c.V, c.V);
      rows_finite &= row_has_finite(c.target + (size_t)r * c.V, c.V);
    }
    heed_spec_result res;
    memset(&res, 0x5a, sizeof res);
    if (c.tree)
      st = heed_spec_verify_tree(s, &c.smp, c.seed, c.step, c.target, c.tok, c.par, c.n, qp, &res);
    else
      st = heed_spec_verify_chain(s, &c.smp, c.seed, c.step, c.target, c.tok, c.n, qp, &res);
    FZ_CHECK(st != HEED_E_INTERNAL, "verify: internal error: %s", heed_spec_last_error(s));
    if (!ok) FZ_CHECK(st != HEED_OK, "verify accepted invalid input (n %u, params %d)", c.n, pvalid);
    if (c.V < LAZY && !rows_ok) FZ_CHECK(st != HEED_OK, "verify accepted a row with NaN or +inf (vocab %u)", c.V);
    if (ok && rows_ok && rows_finite && q_simple)
      FZ_CHECK(st == HEED_OK || st == HEED_E_INVALID, "verify: %s %s", st_name(st), heed_spec_last_error(s));
    fz_stat(st == HEED_OK ? (greedy(&c.smp) ? "verify ok, greedy" : "verify ok, sampling") : "verify refused");
    if (st != HEED_OK) continue;
    check_result(&c, st, &res);
    /* the same call again: the same result */
    heed_spec_result again;
    heed_status st2 = c.tree ? heed_spec_verify_tree(s, &c.smp, c.seed, c.step, c.target, c.tok, c.par, c.n, qp, &again)
                             : heed_spec_verify_chain(s, &c.smp, c.seed, c.step, c.target, c.tok, c.n, qp, &again);
    FZ_CHECK(st2 == HEED_OK && again.n_accepted == res.n_accepted && again.next_token == res.next_token &&
                 memcmp(again.path, res.path, sizeof(int32_t) * res.n_accepted) == 0,
             "verify again: %s, %u accepted (was %u), next %d (was %d)", st_name(st2), again.n_accepted, res.n_accepted,
             again.next_token, res.next_token);
    if (greedy(&c.smp) && fz_n_rts > 1 && fz_u8(&in) < 64) { /* greedy is exact: the same on every ISA */
      if (!s2) {
        int i2 = fz_u8(&in) % fz_n_rts;
        heed_runtime *rt2 = fz_rts[i2] != rt ? fz_rts[i2] : fz_rts[(i2 + 1) % fz_n_rts];
        FZ_CHECK(heed_spec_create(rt2, &cfg, &s2, &err) == HEED_OK, "second verifier: %s", err.msg);
      }
      c.s = s2;
      st2 = c.tree ? heed_spec_verify_tree(s2, &c.smp, c.seed, c.step, c.target, c.tok, c.par, c.n, qp, &again)
                   : heed_spec_verify_chain(s2, &c.smp, c.seed, c.step, c.target, c.tok, c.n, qp, &again);
      c.s = s;
      FZ_CHECK(st2 == HEED_OK && again.n_accepted == res.n_accepted && again.next_token == res.next_token,
               "greedy on another ISA: %s, %u accepted (was %u), next %d (was %d)", st_name(st2), again.n_accepted,
               res.n_accepted, again.next_token, res.next_token);
      fz_stat("greedy, another ISA");
    }
  }
  heed_spec_destroy(s);
  heed_spec_destroy(s2);
  free(c.target), free(c.qdense), free(probs);
  return 0;
}
