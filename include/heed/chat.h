/* heed/chat.h - an OpenAI-style chat request rendered through a chat template.
 *
 * heed_chat_render turns the body of a /v1/chat/completions request into the
 * prompt text, as Hugging Face's apply_chat_template would for the same
 * messages, with the untrusted spans of heed/template.h.
 *
 * What the template sees (the variables apply_chat_template passes):
 *   messages               the request's messages, each as given except:
 *                          content given as an array of parts is flattened
 *                          to its text parts joined by "\n" (as llama-server
 *                          does); a tool call's function.arguments given as a
 *                          JSON string (OpenAI clients send strings) is parsed
 *                          to its value ("" is {}).
 *   tools                  the request's tools, or none when absent
 *   documents              none
 *   add_generation_prompt  the request's, default true
 *   the members of chat_template_kwargs (e.g. enable_thinking), and a
 *   top-level enable_thinking, when the request has them
 *   the trusted variables the caller passes (bos_token, eos_token, ...)
 *
 * Bad requests fail with HEED_E_INVALID and a message naming the place
 * ("messages[2].tool_calls[0].function.arguments is not valid JSON: ...").
 */
#ifndef HEED_CHAT_H
#define HEED_CHAT_H

#include <stddef.h>

#include "heed/gguf.h"
#include "heed/status.h"
#include "heed/template.h"
#include "heed/tokenizer.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Renders request_json[0..len) through t; see heed_template_render for
 * trusted, opt, out and the errors a template raises. */
heed_status heed_chat_render(const heed_template *t, const char *request_json, size_t len,
                             const heed_template_var *trusted, size_t n_trusted, const heed_template_options *opt,
                             heed_template_text *out, heed_error *err);

/* Built-in templates for models that ship none, written as Jinja and rendered
 * like any other: "chatml" (<|im_start|>role\n...<|im_end|>\n), "gemma"
 * (<start_of_turn>user\n...<end_of_turn>\n, the system message prepended to
 * the first user turn) and "llama3" (<|start_header_id|>role<|end_header_id|>
 * \n\n...<|eot_id|>). They use bos_token where the model family does. */
#define HEED_CHAT_BUILTIN_NAMES "chatml, gemma, llama3"

/* *source: the named template's text (static storage). An unknown name fails
 * with HEED_E_INVALID listing the known ones. */
heed_status heed_chat_builtin(const char *name, const char **source, heed_error *err);

/* The built-in to use for a GGUF general.architecture: "gemma", "gemma2",
 * "gemma3" (and other gemma*) give "gemma", "llama" gives "llama3", anything
 * else (NULL too) "chatml". Static storage. */
const char *heed_chat_builtin_for_arch(const char *arch);

/* ---------- a model's chat format ---------- */

/* What a model needs to turn a chat request into prompt tokens: its template
 * (the GGUF's tokenizer.chat_template, or a built-in), compiled once, and the
 * trusted variables apply_chat_template passes (bos_token, eos_token,
 * unk_token, pad_token: the texts of the tokenizer's special tokens, those
 * the model has). Immutable once opened: any number of threads may render
 * with it at once. */
typedef struct heed_chat heed_chat;

/* Opens g's chat format for tokenizer tok (made from g; borrowed: it must
 * outlive the heed_chat). name NULL: the GGUF's own template, or, when the
 * file has none, the built-in heed_chat_builtin_for_arch gives for its
 * general.architecture. name "gguf": the file's template, HEED_E_NOT_FOUND
 * when it has none. Another name: that built-in (HEED_E_INVALID listing the
 * known ones when there is no such). A template that does not compile fails
 * with the parser's error, prefixed with where it came from. g may be closed
 * afterwards. */
heed_status heed_chat_open(const heed_gguf *g, const heed_tokenizer *tok, const char *name, heed_chat **out,
                           heed_error *err);
void heed_chat_free(heed_chat *c); /* NULL is fine */

/* "gguf" for the model's own template, else the built-in's name. Static or
 * owned by c. */
const char *heed_chat_name(const heed_chat *c);

/* Renders request_json (the body of a /v1/chat/completions request, as for
 * heed_chat_render) with c's template and trusted variables, then tokenizes
 * the text as Hugging Face does for a rendered chat (no BOS or EOS added: the
 * template writes them), matching control tokens only in the template's own
 * text (heed_tokenizer_encode_spans with HEED_TOKENIZE_PARSE_SPECIAL), so no
 * message can inject "<|im_start|>". text may be NULL when only the ids are
 * wanted; ids are appended to. opt as for heed_template_render. On failure
 * text is zeroed and ids are left as they were. */
heed_status heed_chat_prompt(const heed_chat *c, const char *request_json, size_t len, const heed_template_options *opt,
                             heed_template_text *text, heed_tokens *ids, heed_error *err);

#ifdef __cplusplus
}
#endif
#endif
