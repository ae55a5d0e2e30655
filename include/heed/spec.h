/* heed/spec.h - speculative decoding: verification (greedy, lossless
 * rejection sampling, token trees), sampling, and drafters.
 *
 * Logits. A row is the target's (or draft's) logits for one position, f32
 * [vocab]. Rows are the caller's and are only read. Verification of a draft
 * of n tokens reads n + 1 target rows: row 0 is the distribution after the
 * last accepted token (the tree's root), row i + 1 the one after draft node i.
 *
 * Sampling transforms (heed_sampling), applied to every row in this order,
 * to the target's rows and to a draft's dense logits alike:
 *   1. repetition penalty r: for each token in the penalty set (the caller's
 *      context tokens plus the draft tokens on the path before the row),
 *      logit > 0 becomes logit / r and logit <= 0 becomes logit * r;
 *   2. temperature T: z = logit / T; T = 0 is greedy (argmax, ties to the
 *      lowest id), where 3-5 do not apply;
 *   3. top-k: keep the tokens whose z is at least the k-th largest z;
 *   4. top-p: of what is kept, keep the most likely tokens until their mass
 *      reaches p (all tokens tied with the last one taken are kept too);
 *   5. min-p: keep the tokens whose probability is at least min_p times the
 *      largest.
 * Each cut keeps every token tied with its threshold, so what is kept is
 * always "z >= a threshold"; p is the softmax of z over it. -inf logits are
 * allowed (never sampled); NaN and +inf are refused.
 *
 * Lossless rejection sampling (Leviathan et al. 2023, Chen et al. 2023):
 * draft token x, drawn from the draft's q, is accepted with probability
 * min(1, p(x) / q(x)); on rejection the next token is drawn from
 * normalize(max(0, p - q)). The output has exactly the target's distribution
 * p whatever q is. Trees (SpecInfer): a node's children are tried in index
 * order, each against the residual the earlier siblings left; the first one
 * accepted is followed, and when all are rejected the next token is drawn
 * from the last residual. This keeps p exactly when each child's token was
 * drawn from that child's q given its earlier siblings (for example the same
 * q with replacement; or, with one-hot q, any deterministic choice of
 * distinct tokens).
 *
 * Randomness is Philox4x32-10, counter-based: every uniform is a pure
 * function of (seed, step, which draw), so a seed gives the same tokens on
 * every backend and ISA and in any thread schedule (up to a draw landing
 * within float rounding of a boundary, about one in 10^6). Use step to tell
 * apart the calls of one generation (for example the number of tokens
 * generated so far).
 *
 * Rows are read as the walk reaches them: on the CPU, with a vocab of 65536
 * or more, a row after the first rejection is never read, so its NaN or
 * +inf is not seen (every row that is used is checked). Sampling decides
 * u q(x) < p(x) from bounds on the softmax's sum (a cheap exp); only a u
 * that falls between the bounds, about one test in twenty, takes the exact
 * sum, so the decisions are those of exact arithmetic.
 *
 * Where it runs: on the CPU backend a verifier runs its vocabulary passes on
 * the runtime's pool; on the OpenCL backend it copies the rows it reads to
 * the device (room for 2 (max_draft + 1) rows is allocated at create) and
 * runs the passes there (max, top-k/top-p selection, sum of exp). The
 * decisions, and the one residual row a rejection needs, are on the host.
 * One call at a time per verifier and per runtime (HEED_E_BUSY otherwise).
 */
#ifndef HEED_SPEC_H
#define HEED_SPEC_H

#include <stddef.h>
#include <stdint.h>

#include "heed/runtime.h"
#include "heed/status.h"

#ifdef __cplusplus
extern "C" {
#endif

#define HEED_SPEC_MAX_DRAFT 64      /* the most draft tokens (chain or tree nodes) a call takes */
#define HEED_SPEC_VOCAB_MAX (1u << 22)

/* Temperatures above 0 and below this are greedy, exactly as 0 is. At such a
 * T, logits one float step apart (about 1e-6 near 10) are already e^1 or
 * more apart after the division, so a draw is the argmax but for exact ties
 * (which greedy gives to the lowest id), and 1/T (+inf below about 2.9e-38)
 * and the scaled logits stay far from float's range. */
#define HEED_SPEC_MIN_TEMPERATURE 1e-6f

typedef struct heed_sampling {
  float temperature;               /* 0: greedy; (0, HEED_SPEC_MIN_TEMPERATURE): greedy too;
                                      else > 0 and finite */
  unsigned top_k;                  /* 0: off; else 1..vocab */
  float top_p;                     /* 1: off; else in (0, 1] */
  float min_p;                     /* 0: off; else in [0, 1) */
  float repetition_penalty;        /* 1: off; else > 0 and finite */
  const int32_t *penalty_tokens;   /* [n_penalty_tokens] the context's tokens (repeats are fine) */
  unsigned n_penalty_tokens;
} heed_sampling;

/* Greedy, every cut off, no penalty. */
void heed_sampling_init(heed_sampling *s);

/* What the draft's token was drawn from, per draft node (row i: node i). */
typedef enum heed_draft_kind {
  HEED_DRAFT_ONEHOT,       /* deterministic drafts (n-gram lookup, argmax of a model): q(x) = 1 */
  HEED_DRAFT_DENSE_LOGITS, /* dense: [n][vocab] the draft model's logits; the same heed_sampling
                              transforms make its q */
  HEED_DRAFT_DENSE_PROBS,  /* dense: [n][vocab] probabilities as sampled from (>= 0, finite, sum 1
                              within 1e-3) */
  HEED_DRAFT_SPARSE        /* ids/probs: [n][n_sparse] the draft's top entries (id -1: unused);
                              q is them renormalised, every other token 0 */
} heed_draft_kind;

typedef struct heed_draft_q {
  heed_draft_kind kind;
  const float *dense;      /* DENSE_*: [n][vocab] */
  const int32_t *ids;      /* SPARSE: [n][n_sparse] */
  const float *probs;      /* SPARSE: [n][n_sparse], >= 0 and finite */
  unsigned n_sparse;       /* SPARSE: entries per row, 1..max_sparse */
} heed_draft_q;

typedef struct heed_spec_config {
  unsigned vocab;              /* 2..HEED_SPEC_VOCAB_MAX */
  unsigned max_draft;          /* 1..HEED_SPEC_MAX_DRAFT; a call with more draft tokens is refused */
  unsigned max_penalty_tokens; /* the most heed_sampling.n_penalty_tokens a call may pass */
  unsigned max_sparse;         /* the most heed_draft_q.n_sparse (0: sparse drafts refused) */
} heed_spec_config;

/* The outcome of a verification. */
typedef struct heed_spec_result {
  unsigned n_accepted;                 /* draft tokens accepted */
  int32_t path[HEED_SPEC_MAX_DRAFT];   /* the accepted nodes, in order (chain: 0..n_accepted-1) */
  int32_t next_token;                  /* the target's token after them: a correction, or the
                                          bonus token when a whole branch was accepted */
} heed_spec_result;

/* A verifier: the vocabulary-sized work space for one configuration, allocated
 * here once (about 16 bytes per vocabulary entry); nothing is allocated per call.
 * rt is borrowed and must outlive the verifier. */
typedef struct heed_spec heed_spec;
heed_status heed_spec_create(heed_runtime *rt, const heed_spec_config *cfg, heed_spec **out,
                             heed_error *err);
void heed_spec_destroy(heed_spec *s); /* NULL is fine */
const char *heed_spec_last_error(const heed_spec *s);
const heed_spec_config *heed_spec_get_config(const heed_spec *s);

/* Chain verification of k draft tokens (1..max_draft) against k + 1 target
 * rows [k + 1][vocab]. q: what each draft token was drawn from (NULL: one-hot;
 * ignored when smp->temperature is 0). Greedy (temperature 0): draft token i
 * is accepted while it is the argmax of row i; the first mismatch is replaced
 * by that argmax; when all k match, next_token is row k's argmax. */
heed_status heed_spec_verify_chain(heed_spec *s, const heed_sampling *smp, uint64_t seed, uint64_t step,
                                   const float *target, const int32_t *draft, unsigned k,
                                   const heed_draft_q *q, heed_spec_result *res);

/* Tree verification of n nodes (1..max_draft). tokens: [n]; parents: [n],
 * parents[i] = -1 (a child of the root) or a node before i. target:
 * [n + 1][vocab] (row 0 the root, row i + 1 node i); q: per node, as in the
 * chain. The accepted path's nodes are in res->path. */
heed_status heed_spec_verify_tree(heed_spec *s, const heed_sampling *smp, uint64_t seed, uint64_t step,
                                  const float *target, const int32_t *tokens, const int32_t *parents,
                                  unsigned n, const heed_draft_q *q, heed_spec_result *res);

/* One token from one row (plain decoding with the same transforms and RNG). */
heed_status heed_spec_sample(heed_spec *s, const heed_sampling *smp, uint64_t seed, uint64_t step,
                             const float *logits, int32_t *token);

/* The row's probabilities after the transforms (what verification samples
 * from), into probs [vocab]. Greedy: 1 at the argmax. */
heed_status heed_spec_probs(heed_spec *s, const heed_sampling *smp, const float *logits, float *probs);

/* The attention mask of a tree for heed_attn_decode's tree_mask: the
 * in-flight tokens are the root (the last accepted token) and the n nodes,
 * n + 1 queries in that order; mask [n + 1][n + 1], row i has 1 for i itself
 * and its ancestors (the root for everyone), 0 elsewhere. The cached context
 * is seen by all. parents as in heed_spec_verify_tree; err may be NULL. */
heed_status heed_spec_tree_mask(const int32_t *parents, unsigned n, uint8_t *mask, heed_error *err);

/* Philox4x32-10 (Salmon et al. 2011): out = bijection of ctr under key. */
void heed_philox4x32(const uint32_t ctr[4], const uint32_t key[2], uint32_t out[4]);
/* The uniform in [0, 1) heed draws for (seed, step, draw): 24 bits of
 * philox(ctr = {step lo, step hi, draw, 0x68656564}, key = {seed lo, seed hi}). */
float heed_spec_uniform(uint64_t seed, uint64_t step, uint32_t draw);

/* ---- Drafters ----
 * A drafter proposes tokens to follow a sequence it has been shown. Any draft
 * model can be one: fill heed_drafter_ops. The proposal's memory is the
 * drafter's, valid until its next call. */
typedef struct heed_draft {
  unsigned n;              /* tokens proposed (0: nothing to propose) */
  const int32_t *tokens;   /* [n] a chain */
  heed_draft_q q;          /* what each was drawn from */
} heed_draft;

typedef struct heed_drafter_ops {
  const char *name;
  /* The sequence grew by n tokens (the prompt, then accepted tokens). */
  heed_status (*append)(void *self, const int32_t *tokens, unsigned n);
  /* Up to max_k tokens to follow the sequence. */
  heed_status (*propose)(void *self, unsigned max_k, heed_draft *out);
  void (*destroy)(void *self);
  const char *(*last_error)(const void *self);
} heed_drafter_ops;

typedef struct heed_drafter {
  const heed_drafter_ops *ops;
  void *self;
} heed_drafter;

heed_status heed_drafter_append(heed_drafter *d, const int32_t *tokens, unsigned n);
heed_status heed_drafter_propose(heed_drafter *d, unsigned max_k, heed_draft *out);
void heed_drafter_destroy(heed_drafter *d); /* NULL is fine; frees d too */
const char *heed_drafter_last_error(const heed_drafter *d);

/* N-gram prompt lookup: the longest suffix of the sequence (n_max tokens down
 * to n_min) that occurred before proposes the tokens that followed its most
 * recent earlier occurrence. Each appended token updates one hash entry per n
 * (O(n_max), no rescan); a proposal costs O(n_max) lookups. q is one-hot. */
typedef struct heed_ngram_config {
  unsigned vocab;       /* token ids must be below it */
  unsigned n_min, n_max; /* 1 <= n_min <= n_max <= 16; 0, 0: 1 and 4 */
  unsigned capacity;    /* the most tokens the sequence may hold */
} heed_ngram_config;

heed_status heed_ngram_drafter_create(const heed_ngram_config *cfg, heed_drafter **out, heed_error *err);
/* The n of the match behind the last proposal (0: none). */
unsigned heed_ngram_last_match(const heed_drafter *d);

#ifdef __cplusplus
}
#endif
#endif
