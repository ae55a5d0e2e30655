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

#include "heed/status.h"
#include "heed/template.h"

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


#ifdef __cplusplus
}
#endif
#endif
