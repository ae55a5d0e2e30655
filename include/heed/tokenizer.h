/* heed/tokenizer.h - text to token ids and back, as the model's GGUF says.
 *
 * Two tokenizer models, chosen by tokenizer.ggml.model:
 *   "gpt2"   byte-level BPE (Qwen, Llama 3, GPT-2): the text is split into
 *            pre-tokens by the regex tokenizer.ggml.pre names, each pre-token's
 *            bytes are merged by the ranks of tokenizer.ggml.merges ("a b",
 *            rank = index; lowest rank first, ties leftmost).
 *   "llama"  SentencePiece BPE by scores (Gemma, Llama 2): spaces become U+2581
 *            "▁", the whole text between special tokens is one sequence, and
 *            the adjacent pair whose concatenation is a vocabulary entry with
 *            the highest score merges first (ties leftmost); a character left
 *            that is not in the vocabulary becomes its bytes' <0xNN> tokens
 *            (byte fallback), or the unknown token when those are missing.
 *            No pre-tokenizer (neither SentencePiece nor Gemma's tokenizer.json
 *            has one); Gemma's "\n" and whitespace-run tokens are user-defined,
 *            so they split the text as special tokens do. With
 *            add_space_prefix (Llama 2; Gemma 3 has it off) a "▁" goes in front
 *            of the text and of each text after a special token, as llama.cpp
 *            does (Hugging Face's Llama tokenizer prepends one only).
 * Any other model ("bert", "t5", "rwkv", ...) is refused with
 * HEED_E_UNSUPPORTED naming it.
 *
 * Pre-tokenizers (gpt2 only; tokenizer.ggml.pre):
 *   "qwen2"                            Qwen2's Hugging Face Split regex
 *   "llama-bpe", "llama3", "llama-v3"  Llama 3's (digits in groups of 1-3; a
 *                                      pre-token that is a whole vocabulary
 *                                      entry is taken as is: ignore_merges)
 *   "default", "gpt2", "gpt-2"         GPT-2's regex
 * A missing key means "default" (llama.cpp does the same, with a warning);
 * another name is refused with HEED_E_UNSUPPORTED naming it. Unlike llama.cpp,
 * whose "default" is a chain of four older regexes, heed's "default" is the
 * GPT-2 regex that Hugging Face's ByteLevel pre-tokenizer uses. The regexes
 * run in PCRE2 (UTF, Unicode properties, JIT) exactly as written in the
 * models' tokenizer.json, (?i:...) included (llama.cpp rewrites it to ASCII
 * [sS]; Oniguruma, as PCRE2, also folds 'ſ and the Kelvin sign); \p{L} and
 * \p{N} come from PCRE2's Unicode tables. heed does not apply the NFC
 * normalizer of Qwen2's tokenizer.json (llama.cpp does not either): text that
 * is not in NFC may tokenize differently from Hugging Face.
 *
 * Special tokens. Before any BPE, the text is split at tokens of type
 * user-defined, control and unknown written in it, leftmost first and the
 * longest at a position (Hugging Face's added-token rule):
 *   user-defined tokens (Gemma's "\n", runs of spaces and tabs; Qwen's
 *     <tool_call>) always match: they are ordinary text in the vocabulary;
 *   control and unknown tokens ("<|im_start|>", "<start_of_turn>", "<bos>")
 *     match only with HEED_TOKENIZE_PARSE_SPECIAL, and with
 *     heed_tokenizer_encode_spans only inside trusted spans.
 * "Longest" is among the tokens allowed there. (Hugging Face takes the
 * leftmost-longest of all added tokens and then drops a special one it may not
 * match, without trying a shorter one at that place; llama.cpp matches the
 * longest token text everywhere first, then the next longest. All three agree
 * unless special texts overlap, as no Qwen or Gemma token does.)
 * BPE then runs on each fragment between matches. Merges never produce a
 * control, unknown, unused or byte token (SentencePiece's rule; llama.cpp's
 * SPM would merge into any vocabulary entry, which no Gemma 3 control token
 * allows anyway), so text alone never yields a control token.
 *
 * Invalid UTF-8 in the input is kept, never replaced. gpt2: every byte maps
 * through the byte-level table, so any bytes tokenize and decode back to
 * themselves exactly; a maximal run of invalid bytes ends the pre-token
 * before it, is one pre-token of its own (its bytes may merge), and the
 * regex starts afresh after it (as at the end of the text). llama.cpp instead
 * turns each invalid byte into U+FFFD. llama: each invalid byte is a symbol
 * of its own that no merge can join (vocabulary entries are valid UTF-8), so
 * it becomes its <0xNN> token (or unk). A byte is invalid when no well-formed
 * UTF-8 sequence (no overlong forms, no surrogates, at most U+10FFFF) starts
 * at it, as Python's strict decoder decides.
 *
 * Token types (tokenizer.ggml.token_type) and what decoding gives:
 *   normal        gpt2: the bytes of its byte-level text; llama: its text
 *                 with "▁" as a space
 *   byte          llama: "<0xNN>" is the byte NN
 *   user-defined  its text as written (llama: "▁" as a space)
 *   control, unknown, unused
 *                 nothing, or their text with HEED_DETOK_SPECIAL
 *
 * A tokenizer is immutable once created: any number of threads may encode
 * and decode with it at once; each call allocates its own scratch.
 */
#ifndef HEED_TOKENIZER_H
#define HEED_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

#include "heed/gguf.h"
#include "heed/status.h"
#include "heed/template.h" /* heed_text_span */

#ifdef __cplusplus
extern "C" {
#endif

typedef int32_t heed_token;
#define HEED_TOKEN_NONE ((heed_token)-1)

/* GGUF token types, numbered as in the file. X(NAME, value, name). */
#define HEED_TOKEN_TYPE_LIST(X)      \
  X(NORMAL, 1, "normal")             \
  X(UNKNOWN, 2, "unknown")           \
  X(CONTROL, 3, "control")           \
  X(USER_DEFINED, 4, "user-defined") \
  X(UNUSED, 5, "unused")             \
  X(BYTE, 6, "byte")

typedef enum heed_token_type {
#define HEED_X_(N, v, s) HEED_TOKEN_##N = v,
  HEED_TOKEN_TYPE_LIST(HEED_X_)
#undef HEED_X_
} heed_token_type;

const char *heed_token_type_name(int type); /* "control"; NULL for a value not in the list */

/* Tokenizer models. X(NAME, value, name in tokenizer.ggml.model). */
#define HEED_TOKENIZER_KIND_LIST(X) \
  X(BPE, 0, "gpt2")                 \
  X(SPM, 1, "llama")

typedef enum heed_tokenizer_kind {
#define HEED_X_(N, v, s) HEED_TOKENIZER_##N = v,
  HEED_TOKENIZER_KIND_LIST(HEED_X_)
#undef HEED_X_
} heed_tokenizer_kind;

typedef struct heed_tokenizer heed_tokenizer;

/* What heed_tokenizer_create builds from: the tokenizer.ggml.* metadata,
 * borrowed for the call only (everything is copied). */
typedef struct heed_tokenizer_desc {
  const char *model;          /* "gpt2" or "llama" */
  const char *pre;            /* gpt2: a pre-tokenizer name above; NULL: "default" */
  uint32_t n_tokens;          /* 1..2^31-1 */
  const char *const *tokens;  /* [n_tokens] token texts as stored (gpt2: byte-level) */
  const uint32_t *token_lens; /* [n_tokens] their byte lengths; NULL: NUL-terminated */
  const float *scores;        /* [n_tokens] llama: merge priority; NULL: all 0 */
  const int32_t *types;       /* [n_tokens] heed_token_type; NULL: all normal */
  uint32_t n_merges;
  const char *const *merges;  /* [n_merges] gpt2: "left right" (byte-level texts) */
  const uint32_t *merge_lens; /* [n_merges]; NULL: NUL-terminated */
  /* Special ids, HEED_TOKEN_NONE when the model has none. */
  heed_token bos, eos, eot, eom, unk, pad;
  /* 1 or 0; -1: the model's default (add_bos: 1 for llama and llama-bpe, else
   * 0; add_eos: 0; add_space_prefix: 1 for llama, 0 for gpt2) */
  int add_bos, add_eos, add_space_prefix;
} heed_tokenizer_desc;

/* Every id HEED_TOKEN_NONE, every flag -1, the rest zero. */
void heed_tokenizer_desc_init(heed_tokenizer_desc *d);

/* Builds a tokenizer. *out is the caller's, freed by heed_tokenizer_free. On
 * failure *out is NULL and err (may be NULL) names the bad value:
 * HEED_E_UNSUPPORTED for an unknown model or pre-tokenizer; HEED_E_INVALID for
 * a bad token type, a merge without a space, a gpt2 vocabulary missing one of
 * the 256 byte tokens, a llama vocabulary with neither all <0xNN> tokens nor
 * an unknown token; HEED_E_RANGE for a special id >= n_tokens (pad: ignored).
 * A merge whose parts or result are not in the vocabulary is skipped. When
 * two tokens have the same text, the lower id is the one text maps to. */
heed_status heed_tokenizer_create(const heed_tokenizer_desc *d, heed_tokenizer **out, heed_error *err);

/* The same from a GGUF's tokenizer.ggml.* keys: model, pre, tokens, scores,
 * token_type, merges, bos/eos/eot/eom/unknown/padding_token_id,
 * add_bos_token, add_eos_token, add_space_prefix. g may be closed afterwards.
 * A key of the wrong type fails with HEED_E_INVALID naming it. */
heed_status heed_tokenizer_from_gguf(const heed_gguf *g, heed_tokenizer **out, heed_error *err);

void heed_tokenizer_free(heed_tokenizer *t); /* NULL is fine */

/* What a tokenizer is; strings are static or owned by t. */
typedef struct heed_tokenizer_info {
  heed_tokenizer_kind kind;
  const char *model; /* "gpt2" or "llama" */
  const char *pre;   /* gpt2: the pre-tokenizer name (as given, or "default"); llama: "" */
  uint32_t n_tokens;
  uint32_t n_merges; /* gpt2: merges in use (after skipping bad ones) */
  heed_token bos, eos, eot, eom, unk, pad;
  int add_bos, add_eos, add_space_prefix; /* resolved: 0 or 1 */
  size_t max_piece;  /* bytes of the longest decoded token (special text included) */
} heed_tokenizer_info;

void heed_tokenizer_get_info(const heed_tokenizer *t, heed_tokenizer_info *info);

/* The type of token id; 0 when id is out of range. */
int heed_tokenizer_token_type(const heed_tokenizer *t, heed_token id);
/* The token's text as stored in the vocabulary (gpt2: byte-level), borrowed
 * from t. HEED_E_RANGE when id is out of range. */
heed_status heed_tokenizer_token_text(const heed_tokenizer *t, heed_token id, const char **text, size_t *len);
/* The id whose stored text is exactly text[0..len), or HEED_TOKEN_NONE. */
heed_token heed_tokenizer_find(const heed_tokenizer *t, const char *text, size_t len);

/* End of generation: eos, eot and eom, and any control or user-defined token
 * whose text is one of <|im_end|>, <|endoftext|>, <end_of_turn>, <|eot_id|>,
 * <|eom_id|>, <|end|>, <EOT>, <|fim_pad|>, <|repo_name|>, <|file_sep|>
 * (llama.cpp's list: GGUFs name only one eos, while Qwen stops at <|im_end|>
 * and <|endoftext|>, Gemma at <end_of_turn> and <eos>). 0 for ids out of range. */
int heed_tokenizer_is_eog(const heed_tokenizer *t, heed_token id);
/* All of them, ascending; borrowed from t. */
size_t heed_tokenizer_eog_ids(const heed_tokenizer *t, const heed_token **ids);

/* ---------- encoding ---------- */

enum {
  HEED_TOKENIZE_ADD_SPECIAL = 1u << 0,  /* bos first / eos last, as the model's add_bos / add_eos say */
  HEED_TOKENIZE_PARSE_SPECIAL = 1u << 1 /* control and unknown tokens written in the text are matched */
};

/* A growable list of ids. Zero-initialise it; encode calls append to it
 * (reusing its memory), heed_tokens_free releases it. */
typedef struct heed_tokens {
  heed_token *ids; /* [n] */
  size_t n;
  size_t cap;
} heed_tokens;

void heed_tokens_free(heed_tokens *l); /* frees ids and zeroes *l; NULL is fine */

/* Appends the ids of text[0..len) (any bytes, NULs included) to out.
 * HEED_E_NOMEM leaves out as it was (possibly with more capacity);
 * HEED_E_INVALID for text NULL with len > 0. */
heed_status heed_tokenizer_encode(const heed_tokenizer *t, const char *text, size_t len, unsigned flags,
                                  heed_tokens *out, heed_error *err);

/* The same into the caller's ids[0..cap): *n_ids is the count. When they do
 * not fit: HEED_E_TOO_SMALL, *n_ids the count needed, ids unspecified. */
heed_status heed_tokenizer_encode_to(const heed_tokenizer *t, const char *text, size_t len, unsigned flags,
                                     heed_token *ids, size_t cap, size_t *n_ids, heed_error *err);

/* A rendered chat prompt: spans (heed_template_render's) cover [0, len) in
 * order. A control or unknown token is matched only when
 * HEED_TOKENIZE_PARSE_SPECIAL is given and all its bytes lie in trusted spans,
 * so message text (untrusted) never becomes <|im_start|> however it is
 * written; user-defined tokens match everywhere. Otherwise the text is
 * tokenized as one: spans do not cut pre-tokens or BPE. HEED_E_INVALID when
 * the spans do not cover [0, len) in order. */
heed_status heed_tokenizer_encode_spans(const heed_tokenizer *t, const char *text, size_t len,
                                        const heed_text_span *spans, size_t n_spans, unsigned flags,
                                        heed_tokens *out, heed_error *err);

/* ---------- decoding ---------- */

enum {
  HEED_DETOK_SPECIAL = 1u << 0, /* control, unknown and unused tokens give their text (else nothing) */
  HEED_DETOK_REPLACE = 1u << 1  /* each byte that starts no valid UTF-8 sequence becomes U+FFFD */
};

/* The bytes token id stands for (see the table above), borrowed from t.
 * Raw: no replacement of invalid UTF-8. HEED_E_RANGE for id out of range. */
heed_status heed_tokenizer_piece(const heed_tokenizer *t, heed_token id, unsigned flags, const char **bytes,
                                 size_t *len);

/* The text of ids[0..n) into buf[0..cap): *len bytes, then a NUL when there
 * is room. Without HEED_DETOK_REPLACE the bytes are the pieces' bytes as they
 * are (invalid UTF-8 included); with it, each byte that starts no complete
 * valid sequence becomes U+FFFD (EF BF BD). HEED_E_TOO_SMALL when cap < *len
 * (then *len is the size needed, without the NUL); HEED_E_RANGE naming an id
 * out of range. */
heed_status heed_tokenizer_decode(const heed_tokenizer *t, const heed_token *ids, size_t n, unsigned flags, char *buf,
                                  size_t cap, size_t *len, heed_error *err);

/* Streaming decode for generation: one token at a time, never emitting part
 * of a UTF-8 sequence. The caller owns the state (zero it, or
 * HEED_DETOK_STATE_INIT, before the first token); it holds the bytes of a
 * sequence not yet complete (at most 3). What push and flush emit over a
 * stream of tokens, concatenated, is exactly heed_tokenizer_decode of those
 * tokens with the same flags. */
typedef struct heed_detok_state {
  uint8_t pending[3];
  uint8_t n_pending;
} heed_detok_state;
#define HEED_DETOK_STATE_INIT {{0, 0, 0}, 0}

/* Bytes that always suffice for one push or flush: 3 * (max_piece + 3). */
size_t heed_tokenizer_detok_bound(const heed_tokenizer *t);

/* Appends token id's piece to what the state holds and writes out every
 * complete character (and, without HEED_DETOK_REPLACE, every byte that can
 * start none) to buf[0..cap), *len bytes (no NUL). HEED_E_TOO_SMALL leaves
 * the state unchanged (*len: the size needed); HEED_E_RANGE for id out of
 * range. */
heed_status heed_tokenizer_detok_push(const heed_tokenizer *t, heed_detok_state *s, heed_token id, unsigned flags,
                                      char *buf, size_t cap, size_t *len);
/* The end of the stream: writes what the state still holds (an incomplete
 * sequence: raw, or one U+FFFD per byte with HEED_DETOK_REPLACE) and clears
 * it. HEED_E_TOO_SMALL as above. */
heed_status heed_tokenizer_detok_flush(heed_detok_state *s, unsigned flags, char *buf, size_t cap, size_t *len);

#ifdef __cplusplus
}
#endif
#endif
