/* tests/test_serve_api.c - serve/api.c: request bodies (OpenAI chat and
 * completions, Anthropic messages, /tokenize, count_tokens) to srv_params,
 * each error naming its field, and the Anthropic-to-OpenAI conversion. */
#include <cjson/cJSON.h>
#include <criterion/criterion.h>
#include <string.h>

#include "serve/serve_internal.h"

static heed_status parse(srv_api api, const char *body, srv_params *p, heed_error *err) {
  return srv_parse_request(api, body, strlen(body), p, err);
}

/* Parses a body that must be accepted. */
static srv_params ok(srv_api api, const char *body) {
  srv_params p;
  heed_error err = {0};
  heed_status st = parse(api, body, &p, &err);
  cr_assert_eq(st, HEED_OK, "%s: %s", body, err.msg);
  return p;
}

/* A body that must fail with HEED_E_INVALID, its message holding part (and
 * part2 when given), and *out left zeroed. */
static void expect_err(srv_api api, const char *body, const char *part, const char *part2) {
  srv_params p, zero;
  memset(&p, 0x5a, sizeof p);
  memset(&zero, 0, sizeof zero);
  heed_error err = {0};
  heed_status st = parse(api, body, &p, &err);
  cr_assert_eq(st, HEED_E_INVALID, "%s: status %d (%s)", body, st, err.msg);
  cr_expect(strstr(err.msg, part), "%s: message '%s' lacks '%s'", body, err.msg, part);
  if (part2) cr_expect(strstr(err.msg, part2), "%s: message '%s' lacks '%s'", body, err.msg, part2);
  cr_expect(memcmp(&p, &zero, sizeof p) == 0, "%s: out not zeroed", body);
}

static cJSON *chat_of(const char *chat_json) {
  cr_assert_not_null(chat_json);
  cJSON *c = cJSON_Parse(chat_json);
  cr_assert(cJSON_IsObject(c), "chat_json does not parse: %s", chat_json);
  return c;
}

static const char *str_at(const cJSON *o, const char *key) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
  return cJSON_IsString(v) ? v->valuestring : NULL;
}

static const cJSON *msg_at(const cJSON *chat, int i) {
  return cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(chat, "messages"), i);
}

#define HELLO "\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]"

/* ---------- accepted bodies ---------- */

Test(serve_api, chat_all_fields) { /* every field the chat API reads lands in its place */
  srv_params p = ok(SRV_API_CHAT,
                    "{\"model\":\"m1\",\"messages\":[{\"role\":\"developer\",\"content\":\"be brief\"},"
                    "{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"hi\"}],\"name\":\"ann\"}],"
                    "\"max_tokens\":100,\"max_completion_tokens\":50,\"temperature\":0.5,\"top_p\":0.9,\"top_k\":40,"
                    "\"min_p\":0.05,\"seed\":-1,\"presence_penalty\":0.5,\"frequency_penalty\":-0.5,"
                    "\"repetition_penalty\":1.1,\"stop\":[\"END\",\"\\n\\n\"],\"stream\":true,"
                    "\"stream_options\":{\"include_usage\":true},\"n\":1,\"logprobs\":true,\"top_logprobs\":3,"
                    "\"response_format\":{\"type\":\"text\"},\"user\":\"u-7\",\"unknown\":{\"x\":[1]},"
                    "\"chat_template_kwargs\":{\"enable_thinking\":false},\"enable_thinking\":true}");
  cr_expect_eq(p.api, SRV_API_CHAT);
  cr_expect_eq(p.max_tokens, 50); /* max_completion_tokens wins */
  cr_expect_float_eq(p.temperature, 0.5f, 1e-6);
  cr_expect_float_eq(p.top_p, 0.9f, 1e-6);
  cr_expect_eq(p.top_k, 40u);
  cr_expect_float_eq(p.min_p, 0.05f, 1e-6);
  cr_expect(p.has_seed && p.seed == UINT64_MAX); /* -1 cast */
  cr_expect_float_eq(p.presence_penalty, 0.5f, 1e-6);
  cr_expect_float_eq(p.frequency_penalty, -0.5f, 1e-6);
  cr_expect_float_eq(p.repetition_penalty, 1.1f, 1e-6);
  cr_assert_eq(p.n_stops, 2);
  cr_expect_str_eq(p.stops[0], "END");
  cr_expect_str_eq(p.stops[1], "\n\n");
  cr_expect(p.stream && p.include_usage);
  cr_expect(p.logprobs && p.top_logprobs == 3);
  cr_expect_str_eq(p.model, "m1");
  cr_expect_str_eq(p.user, "u-7");
  cr_expect_eq(p.tools, 0);
  cr_expect_null(p.prompt);
  cJSON *c = chat_of(p.chat_json);
  cr_expect_str_eq(str_at(msg_at(c, 0), "role"), "system"); /* developer rewritten */
  cr_expect_str_eq(str_at(msg_at(c, 1), "name"), "ann");    /* message fields pass through */
  cr_expect(cJSON_IsArray(cJSON_GetObjectItemCaseSensitive(msg_at(c, 1), "content")));
  cr_expect(cJSON_IsFalse(cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(c, "chat_template_kwargs"),
                                                           "enable_thinking")));
  cr_expect(cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(c, "enable_thinking")));
  cr_expect_null(cJSON_GetObjectItemCaseSensitive(c, "unknown")); /* only what the template reads */
  cr_expect_null(cJSON_GetObjectItemCaseSensitive(c, "temperature"));
  cJSON_Delete(c);
  srv_params_free(&p);
  cr_expect_null(p.chat_json);
}

Test(serve_api, chat_defaults) { /* absent and null fields give the documented defaults */
  srv_params p = ok(SRV_API_CHAT, "{" HELLO ",\"temperature\":null,\"stop\":null,\"stream_options\":{\"include_usage\":true}}");
  cr_expect_eq(p.max_tokens, -1);
  cr_expect_float_eq(p.temperature, 1.0f, 0);
  cr_expect_float_eq(p.top_p, 1.0f, 0);
  cr_expect_eq(p.top_k, 0u);
  cr_expect_float_eq(p.min_p, 0.0f, 0);
  cr_expect_float_eq(p.repetition_penalty, 1.0f, 0);
  cr_expect(!p.has_seed && !p.n_stops && !p.stream && !p.logprobs);
  cr_expect_eq(p.include_usage, 0); /* only with stream */
  cr_expect_null(p.model);
  cr_expect_null(p.user);
  srv_params_free(&p);
}

Test(serve_api, completions_all_fields) { /* prompt, logprobs N and OpenAI's default of 16 tokens */
  srv_params p = ok(SRV_API_COMPLETIONS, "{\"prompt\":\"Once upon\",\"logprobs\":2,\"stop\":\"\\n\",\"seed\":42,"
                                         "\"echo\":false,\"best_of\":1,\"suffix\":null,\"top_k\":5}");
  cr_expect_eq(p.api, SRV_API_COMPLETIONS);
  cr_expect_str_eq(p.prompt, "Once upon");
  cr_expect_eq(p.prompt_len, 9u);
  cr_expect_eq(p.max_tokens, 16);
  cr_expect(p.logprobs && p.top_logprobs == 2);
  cr_expect(p.n_stops == 1 && !strcmp(p.stops[0], "\n"));
  cr_expect(p.has_seed && p.seed == 42);
  cr_expect_eq(p.top_k, 5u);
  cr_expect_null(p.chat_json);
  srv_params_free(&p);
  p = ok(SRV_API_COMPLETIONS, "{\"prompt\":[\"one\"],\"max_tokens\":7,\"logprobs\":0}");
  cr_expect_str_eq(p.prompt, "one");
  cr_expect_eq(p.max_tokens, 7);
  cr_expect(p.logprobs && p.top_logprobs == 0); /* 0: the chosen token's logprob only */
  srv_params_free(&p);
}

Test(serve_api, messages_all_fields) { /* the Anthropic fields, and its temperature range */
  srv_params p = ok(SRV_API_MESSAGES, "{\"model\":\"claude-x\",\"max_tokens\":64,\"temperature\":0.7,\"top_p\":0.8,"
                                      "\"top_k\":10,\"stop_sequences\":[\"###\"],\"stream\":true,"
                                      "\"metadata\":{\"user_id\":\"abc\"},\"thinking\":{\"type\":\"enabled\"},"
                                      "\"system\":\"sys\"," HELLO "}");
  cr_expect_eq(p.api, SRV_API_MESSAGES);
  cr_expect_eq(p.max_tokens, 64);
  cr_expect_float_eq(p.temperature, 0.7f, 1e-6);
  cr_expect_float_eq(p.top_p, 0.8f, 1e-6);
  cr_expect_eq(p.top_k, 10u);
  cr_expect(p.n_stops == 1 && !strcmp(p.stops[0], "###"));
  cr_expect(p.stream && !p.include_usage);
  cr_expect_str_eq(p.user, "abc");
  cr_expect_str_eq(p.model, "claude-x");
  cJSON *c = chat_of(p.chat_json);
  cr_expect_str_eq(str_at(msg_at(c, 0), "role"), "system");
  cr_expect_str_eq(str_at(msg_at(c, 0), "content"), "sys");
  cr_expect_str_eq(str_at(msg_at(c, 1), "role"), "user");
  cr_expect_str_eq(str_at(msg_at(c, 1), "content"), "hi");
  cJSON_Delete(c);
  srv_params_free(&p);
}

Test(serve_api, limits_at_their_edges) { /* the ends of each range are accepted */
  srv_params p = ok(SRV_API_CHAT, "{" HELLO ",\"max_tokens\":16777216,\"temperature\":2,\"top_p\":1,\"min_p\":0,"
                                  "\"presence_penalty\":-2,\"frequency_penalty\":2,\"top_logprobs\":20,\"logprobs\":true,"
                                  "\"seed\":18446744073709549568}");
  cr_expect_eq(p.max_tokens, 1L << 24);
  cr_expect_eq(p.top_logprobs, 20u);
  cr_expect_eq(p.seed, 18446744073709549568ull);
  srv_params_free(&p);
  p = ok(SRV_API_CHAT, "{" HELLO ",\"top_logprobs\":0,\"logprobs\":false,\"max_tokens\":1.0}");
  cr_expect_eq(p.max_tokens, 1); /* 1.0 has no fraction */
  srv_params_free(&p);
}

/* ---------- errors, each naming its field ---------- */

Test(serve_api, body_errors) { /* UTF-8, JSON and the top-level type */
  expect_err(SRV_API_CHAT, "{\"a\":\"\xc0\x80\"}", "not valid UTF-8 (byte 6)", NULL);      /* overlong */
  expect_err(SRV_API_CHAT, "{\"a\":\"\xed\xa0\x80\"}", "not valid UTF-8 (byte 6)", NULL);  /* surrogate */
  expect_err(SRV_API_CHAT, "{\"a\":\"\xf4\x90\x80\x80\"}", "not valid UTF-8 (byte 6)", NULL); /* past U+10FFFF */
  expect_err(SRV_API_CHAT, "{\"a\":\"\xe2\x82\"}", "not valid UTF-8 (byte 6)", NULL);      /* cut short */
  expect_err(SRV_API_CHAT, "\xff", "not valid UTF-8 (byte 0)", NULL);
  expect_err(SRV_API_CHAT, "{" HELLO "} x", "not valid JSON (near byte 46)", NULL); /* trailing garbage */
  expect_err(SRV_API_CHAT, "{" HELLO "}{}", "not valid JSON", NULL);
  expect_err(SRV_API_CHAT, "{\"messages\":", "not valid JSON", NULL);
  expect_err(SRV_API_CHAT, "", "not valid JSON (near byte 0)", NULL);
  expect_err(SRV_API_CHAT, "[1, 2]", "must be a JSON object", NULL);
  expect_err(SRV_API_CHAT, "\"text\"", "must be a JSON object", NULL);
  srv_params p = ok(SRV_API_CHAT, " \r\n{" HELLO "}\n\t "); /* white space around is fine */
  srv_params_free(&p);
}

Test(serve_api, raw_nul_is_not_json) { /* a NUL byte would cut a C string: never accepted */
  static const char body[] = "{\"prompt\":\"a\0b\"}";
  srv_params p;
  heed_error err = {0};
  cr_expect_eq(srv_parse_request(SRV_API_COMPLETIONS, body, sizeof body - 1, &p, &err), HEED_E_INVALID);
  cr_expect(strstr(err.msg, "not valid JSON (near byte 12)"), "%s", err.msg);
}

Test(serve_api, nul_escapes) { /* \u0000 in text is refused by name; in opaque objects it survives */
  expect_err(SRV_API_COMPLETIONS, "{\"prompt\":\"a\\u0000b\"}", "prompt", "NUL");
  expect_err(SRV_API_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\\u0000\"}]}", "messages[0].content",
             "NUL");
  expect_err(SRV_API_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\\u0000\"}] x}",
             "not valid JSON (near byte 50)", NULL); /* offsets count the escape's six bytes */
  srv_params p = ok(SRV_API_COMPLETIONS, "{\"prompt\":\"a\\\\u0000b\"}"); /* an escaped backslash, not a NUL */
  cr_expect_str_eq(p.prompt, "a\\u0000b");
  srv_params_free(&p);
  p = ok(SRV_API_CHAT, "{" HELLO ",\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"f\","
                       "\"parameters\":{\"enum\":[\"a\\u0000b\"]}}}]}");
  cr_expect(strstr(p.chat_json, "\"a\\u0000b\""), "%s", p.chat_json);
  srv_params_free(&p);
}

Test(serve_api, type_errors_name_the_field) { /* wrong JSON types, each naming its field and value */
  expect_err(SRV_API_CHAT, "{" HELLO ",\"max_tokens\":\"100\"}", "max_tokens must be an integer", "\"100\"");
  expect_err(SRV_API_CHAT, "{" HELLO ",\"max_tokens\":2.5}", "max_tokens must be an integer", "2.5");
  expect_err(SRV_API_CHAT, "{" HELLO ",\"temperature\":\"hot\"}", "temperature must be a number", "\"hot\"");
  expect_err(SRV_API_CHAT, "{" HELLO ",\"top_k\":1.5}", "top_k", NULL);
  expect_err(SRV_API_CHAT, "{" HELLO ",\"seed\":\"x\"}", "seed", NULL);
  expect_err(SRV_API_CHAT, "{" HELLO ",\"seed\":1e30}", "seed", NULL);
  expect_err(SRV_API_CHAT, "{" HELLO ",\"stream\":1}", "stream must be true or false", NULL);
  expect_err(SRV_API_CHAT, "{" HELLO ",\"stream_options\":{\"include_usage\":\"yes\"}}", "stream_options.include_usage",
             NULL);
  expect_err(SRV_API_CHAT, "{" HELLO ",\"stream_options\":true}", "stream_options must be an object", NULL);
  expect_err(SRV_API_CHAT, "{" HELLO ",\"model\":7}", "model must be a string", NULL);
  expect_err(SRV_API_CHAT, "{" HELLO ",\"user\":[]}", "user must be a string", NULL);
  expect_err(SRV_API_CHAT, "{" HELLO ",\"logprobs\":3}", "logprobs must be true or false", NULL);
  expect_err(SRV_API_COMPLETIONS, "{\"prompt\":\"x\",\"logprobs\":true}", "logprobs must be an integer", NULL);
  expect_err(SRV_API_MESSAGES, "{\"max_tokens\":5," HELLO ",\"metadata\":[]}", "metadata must be an object", NULL);
  expect_err(SRV_API_MESSAGES, "{\"max_tokens\":5," HELLO ",\"metadata\":{\"user_id\":1}}", "metadata.user_id", NULL);
  expect_err(SRV_API_CHAT, "{" HELLO ",\"chat_template_kwargs\":1}", "chat_template_kwargs", NULL);
  expect_err(SRV_API_CHAT, "{" HELLO ",\"enable_thinking\":\"no\"}", "enable_thinking", NULL);
}

Test(serve_api, range_errors_name_the_field) { /* values outside each documented range */
  expect_err(SRV_API_CHAT, "{" HELLO ",\"max_tokens\":0}", "max_tokens must be at least 1, got 0", NULL);
  expect_err(SRV_API_CHAT, "{" HELLO ",\"max_completion_tokens\":-3}", "max_completion_tokens", NULL);
  expect_err(SRV_API_CHAT, "{" HELLO ",\"max_tokens\":16777217}", "max_tokens must be at most 16777216", NULL);
  expect_err(SRV_API_CHAT, "{" HELLO ",\"temperature\":2.5}", "temperature", "2.5");
  expect_err(SRV_API_CHAT, "{" HELLO ",\"temperature\":-0.1}", "temperature", NULL);
  expect_err(SRV_API_CHAT, "{" HELLO ",\"temperature\":1e999}", "temperature", NULL);
  expect_err(SRV_API_MESSAGES, "{\"max_tokens\":5," HELLO ",\"temperature\":1.5}", "temperature must be between 0 and 1",
             NULL);
  expect_err(SRV_API_CHAT, "{" HELLO ",\"top_p\":0}", "top_p", NULL);
  expect_err(SRV_API_CHAT, "{" HELLO ",\"top_p\":1.01}", "top_p", NULL);
  expect_err(SRV_API_CHAT, "{" HELLO ",\"top_k\":-1}", "top_k must be at least 0", NULL);
  expect_err(SRV_API_CHAT, "{" HELLO ",\"min_p\":1}", "min_p", NULL);
  expect_err(SRV_API_CHAT, "{" HELLO ",\"presence_penalty\":3}", "presence_penalty", NULL);
  expect_err(SRV_API_CHAT, "{" HELLO ",\"frequency_penalty\":-2.5}", "frequency_penalty", NULL);
  expect_err(SRV_API_CHAT, "{" HELLO ",\"repetition_penalty\":0}", "repetition_penalty", NULL);
  expect_err(SRV_API_CHAT, "{" HELLO ",\"n\":3}", "n must be 1 (one choice per request), got 3", NULL);
  expect_err(SRV_API_CHAT, "{" HELLO ",\"logprobs\":true,\"top_logprobs\":21}", "top_logprobs", NULL);
  expect_err(SRV_API_CHAT, "{" HELLO ",\"top_logprobs\":2}", "top_logprobs needs logprobs: true", NULL);
  expect_err(SRV_API_COMPLETIONS, "{\"prompt\":\"x\",\"logprobs\":6}", "logprobs must be at most 5", NULL);
}

Test(serve_api, required_fields) { /* what each API cannot do without */
  expect_err(SRV_API_CHAT, "{}", "messages is required", NULL);
  expect_err(SRV_API_CHAT, "{\"messages\":[]}", "messages must be a non-empty array", NULL);
  expect_err(SRV_API_CHAT, "{\"messages\":{}}", "messages must be a non-empty array", NULL);
  expect_err(SRV_API_COMPLETIONS, "{}", "prompt is required", NULL);
  expect_err(SRV_API_COMPLETIONS, "{\"prompt\":5}", "prompt must be a string, got 5", NULL);
  expect_err(SRV_API_COMPLETIONS, "{\"prompt\":[\"a\",\"b\"]}", "prompt", "2");
  expect_err(SRV_API_COMPLETIONS, "{\"prompt\":[1,2]}", "prompt", NULL);
  expect_err(SRV_API_MESSAGES, "{" HELLO "}", "max_tokens is required", NULL);
  expect_err(SRV_API_MESSAGES, "{\"max_tokens\":5}", "messages is required", NULL);
}

Test(serve_api, unsupported_features) { /* what heed does not do says so, naming it */
  expect_err(SRV_API_CHAT, "{" HELLO ",\"response_format\":{\"type\":\"json_object\"}}",
             "response_format json_object is not supported", "ask for JSON in the prompt");
  expect_err(SRV_API_CHAT, "{" HELLO ",\"response_format\":{\"type\":\"json_schema\",\"json_schema\":{}}}",
             "response_format json_schema is not supported", NULL);
  expect_err(SRV_API_CHAT, "{" HELLO ",\"response_format\":{\"type\":\"yaml\"}}", "response_format.type", "yaml");
  expect_err(SRV_API_COMPLETIONS, "{\"prompt\":\"x\",\"echo\":true}", "echo", NULL);
  expect_err(SRV_API_COMPLETIONS, "{\"prompt\":\"x\",\"suffix\":\"end\"}", "suffix", NULL);
  expect_err(SRV_API_COMPLETIONS, "{\"prompt\":\"x\",\"best_of\":2}", "best_of must be 1", NULL);
  expect_err(SRV_API_CHAT,
             "{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"see\"},"
             "{\"type\":\"image_url\",\"image_url\":{\"url\":\"x\"}}]}]}",
             "messages[0].content[1]: images are not supported (type image_url)", NULL);
  expect_err(SRV_API_CHAT,
             "{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"input_audio\"}]}]}",
             "messages[0].content[0]", "input_audio");
  expect_err(SRV_API_MESSAGES,
             "{\"max_tokens\":5,\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"a\"},"
             "{\"type\":\"image\",\"source\":{}}]}]}",
             "messages[0].content[1]: images are not supported (type image)", NULL);
  expect_err(SRV_API_MESSAGES,
             "{\"max_tokens\":5,\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"document\"}]}]}",
             "messages[0].content[0]", "document");
  expect_err(SRV_API_MESSAGES,
             "{\"max_tokens\":5,\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"search_result\"}]}]}",
             "messages[0].content[0]", "search_result");
  expect_err(SRV_API_MESSAGES,
             "{\"max_tokens\":5," HELLO ",\"tools\":[{\"type\":\"web_search_20250305\",\"name\":\"web_search\"}]}",
             "tools[0]", "web_search_20250305");
}

Test(serve_api, stop_errors) { /* count, emptiness and length of stop strings */
  expect_err(SRV_API_CHAT, "{" HELLO ",\"stop\":[\"1\",\"2\",\"3\",\"4\",\"5\",\"6\",\"7\",\"8\",\"9\"]}", "stop",
             "at most 8");
  expect_err(SRV_API_CHAT, "{" HELLO ",\"stop\":[\"a\",\"\"]}", "stop[1] must not be empty", NULL);
  expect_err(SRV_API_CHAT, "{" HELLO ",\"stop\":\"\"}", "stop must not be empty", NULL);
  expect_err(SRV_API_CHAT, "{" HELLO ",\"stop\":[\"a\",3]}", "stop[1] must be a string", NULL);
  expect_err(SRV_API_CHAT, "{" HELLO ",\"stop\":5}", "stop must be a string or an array of strings", NULL);
  expect_err(SRV_API_MESSAGES, "{\"max_tokens\":5," HELLO ",\"stop_sequences\":\"x\"}",
             "stop_sequences must be an array", NULL);
  char body[600];
  snprintf(body, sizeof body, "{" HELLO ",\"stop\":[\"%0257d\"]}", 0);
  expect_err(SRV_API_CHAT, body, "stop[0] is 257 bytes long", NULL);
  snprintf(body, sizeof body, "{" HELLO ",\"stop\":[\"%0256d\",\"1\",\"2\",\"3\",\"4\",\"5\",\"6\",\"7\"]}", 0);
  srv_params p = ok(SRV_API_CHAT, body); /* 8 stops of up to 256 bytes are fine */
  cr_expect_eq(p.n_stops, 8);
  cr_expect_eq(strlen(p.stops[0]), 256u);
  srv_params_free(&p);
}

Test(serve_api, message_errors_have_paths) { /* a bad message is named by its index and field */
  expect_err(SRV_API_CHAT,
             "{\"messages\":[{\"role\":\"user\",\"content\":\"a\"},{\"role\":\"wizard\",\"content\":\"b\"}]}",
             "messages[1].role must be one of system, developer, user, assistant, tool; got \"wizard\"", NULL);
  expect_err(SRV_API_CHAT, "{\"messages\":[{\"content\":\"b\"}]}", "messages[0].role is required", NULL);
  expect_err(SRV_API_CHAT, "{\"messages\":[\"hi\"]}", "messages[0] must be an object", NULL);
  expect_err(SRV_API_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":5}]}", "messages[0].content", NULL);
  expect_err(SRV_API_CHAT, "{\"messages\":[{\"role\":\"user\"}]}", "messages[0].content is required", NULL);
  expect_err(SRV_API_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":null}]}", "messages[0].content", NULL);
  expect_err(SRV_API_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":1}]}]}",
             "messages[0].content[0].text must be a string", NULL);
  expect_err(SRV_API_CHAT, "{\"messages\":[{\"role\":\"tool\",\"content\":\"r\",\"tool_call_id\":5}]}",
             "messages[0].tool_call_id", NULL);
  expect_err(SRV_API_CHAT, "{\"messages\":[{\"role\":\"user\",\"role\":\"wizard\",\"content\":\"x\"}]}",
             "messages[0].role is given twice", NULL);
  expect_err(SRV_API_CHAT, "{" HELLO ",\"max_tokens\":5,\"max_tokens\":6}", "max_tokens is given twice", NULL);
}

Test(serve_api, chat_tool_calls) { /* assistant tool calls pass through, checked */
  srv_params p = ok(SRV_API_CHAT,
                    "{\"messages\":[{\"role\":\"user\",\"content\":\"weather?\"},"
                    "{\"role\":\"assistant\",\"content\":null,\"tool_calls\":[{\"id\":\"c1\",\"type\":\"function\","
                    "\"function\":{\"name\":\"get\",\"arguments\":\"{\\\"city\\\":\\\"Oslo\\\"}\"}},"
                    "{\"id\":\"c2\",\"type\":\"function\",\"function\":{\"name\":\"get\",\"arguments\":{\"city\":\"Rome\"}}}]},"
                    "{\"role\":\"tool\",\"tool_call_id\":\"c1\",\"content\":\"5C\"}],"
                    "\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"get\",\"description\":\"d\","
                    "\"parameters\":{\"type\":\"object\"}}}],\"tool_choice\":\"auto\"}");
  cr_expect_eq(p.tools, 1);
  cJSON *c = chat_of(p.chat_json);
  cr_expect_eq(cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(c, "tools")), 1);
  cr_expect_eq(cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(msg_at(c, 1), "tool_calls")), 2);
  cJSON_Delete(c);
  srv_params_free(&p);
  const char *pre = "{\"messages\":[{\"role\":\"assistant\",\"tool_calls\":[{\"id\":\"c1\",\"type\":\"function\",";
  char body[512];
  snprintf(body, sizeof body, "%s\"function\":{\"name\":\"f\",\"arguments\":\"{oops\"}}]}]}", pre);
  expect_err(SRV_API_CHAT, body, "messages[0].tool_calls[0].function.arguments is not valid JSON", NULL);
  snprintf(body, sizeof body, "%s\"function\":{\"name\":\"f\",\"arguments\":\"[1]\"}}]}]}", pre);
  expect_err(SRV_API_CHAT, body, "messages[0].tool_calls[0].function.arguments", "object");
  snprintf(body, sizeof body, "%s\"function\":{\"name\":\"f\",\"arguments\":7}}]}]}", pre);
  expect_err(SRV_API_CHAT, body, "messages[0].tool_calls[0].function.arguments must be a string or an object", NULL);
  snprintf(body, sizeof body, "%s\"function\":{\"arguments\":\"{}\"}}]}]}", pre);
  expect_err(SRV_API_CHAT, body, "messages[0].tool_calls[0].function.name is required", NULL);
  snprintf(body, sizeof body, "%s\"function\":{\"name\":\"f\",\"arguments\":\" \"}}]}]}", pre);
  p = ok(SRV_API_CHAT, body); /* blank arguments are {} to the template */
  srv_params_free(&p);
  expect_err(SRV_API_CHAT,
             "{\"messages\":[{\"role\":\"assistant\",\"content\":\"x\",\"tool_calls\":[{\"type\":\"code\","
             "\"function\":{\"name\":\"f\"}}]}]}",
             "messages[0].tool_calls[0].type must be function", NULL);
  expect_err(SRV_API_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\",\"tool_calls\":[]}]}",
             "messages[0].tool_calls", "assistant");
}

Test(serve_api, chat_tools_and_choice) { /* tools checked; tool_choice none leaves them out */
  const char *tools = "\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"f\",\"parameters\":{}}}]";
  char body[512];
  snprintf(body, sizeof body, "{" HELLO ",%s,\"tool_choice\":\"none\"}", tools);
  srv_params p = ok(SRV_API_CHAT, body);
  cr_expect_eq(p.tools, 0);
  cJSON *c = chat_of(p.chat_json);
  cr_expect_null(cJSON_GetObjectItemCaseSensitive(c, "tools"));
  cJSON_Delete(c);
  srv_params_free(&p);
  snprintf(body, sizeof body, "{" HELLO ",%s,\"tool_choice\":{\"type\":\"function\",\"function\":{\"name\":\"f\"}}}",
           tools);
  p = ok(SRV_API_CHAT, body);
  cr_expect_eq(p.tools, 1);
  srv_params_free(&p);
  p = ok(SRV_API_CHAT, "{" HELLO ",\"tools\":[]}"); /* no tools: nothing to scan for */
  cr_expect_eq(p.tools, 0);
  srv_params_free(&p);
  snprintf(body, sizeof body, "{" HELLO ",%s,\"tool_choice\":{\"type\":\"function\",\"function\":{\"name\":\"g\"}}}",
           tools);
  expect_err(SRV_API_CHAT, body, "tool_choice.function.name", "\"g\"");
  snprintf(body, sizeof body, "{" HELLO ",%s,\"tool_choice\":\"sometimes\"}", tools);
  expect_err(SRV_API_CHAT, body, "tool_choice", "sometimes");
  expect_err(SRV_API_CHAT, "{" HELLO ",\"tools\":{}}", "tools must be an array", NULL);
  expect_err(SRV_API_CHAT, "{" HELLO ",\"tools\":[{\"type\":\"function\"}]}", "tools[0].function is required", NULL);
  expect_err(SRV_API_CHAT, "{" HELLO ",\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"f\",\"parameters\":3}}]}",
             "tools[0].function.parameters must be an object", NULL);
  expect_err(SRV_API_CHAT, "{" HELLO ",\"tools\":[{\"type\":\"retrieval\",\"function\":{\"name\":\"f\"}}]}",
             "tools[0].type", "retrieval");
}

/* ---------- Anthropic conversion ---------- */

static char *messages_chat(const char *body) {
  srv_params p = ok(SRV_API_MESSAGES, body);
  char *s = strdup(p.chat_json);
  srv_params_free(&p);
  return s;
}

Test(serve_api, anthropic_system_forms_agree) { /* a one-block system array renders as the same string */
  char *a = messages_chat("{\"max_tokens\":5,\"system\":\"You are terse.\"," HELLO "}");
  char *b = messages_chat("{\"max_tokens\":5,\"system\":[{\"type\":\"text\",\"text\":\"You are terse.\","
                          "\"cache_control\":{\"type\":\"ephemeral\"}}]," HELLO "}");
  cr_expect_str_eq(a, b);
  free(a);
  free(b);
  a = messages_chat("{\"max_tokens\":5,\"system\":[{\"type\":\"text\",\"text\":\"one\"},{\"type\":\"text\",\"text\":"
                    "\"two\"}]," HELLO "}");
  cJSON *c = chat_of(a);
  cr_expect_str_eq(str_at(msg_at(c, 0), "content"), "one\ntwo");
  cJSON_Delete(c);
  free(a);
  a = messages_chat("{\"max_tokens\":5,\"system\":\"\"," HELLO "}"); /* empty: no system message */
  c = chat_of(a);
  cr_expect_str_eq(str_at(msg_at(c, 0), "role"), "user");
  cJSON_Delete(c);
  free(a);
}

Test(serve_api, anthropic_tool_use_and_result) { /* tool_use becomes tool_calls, tool_result tool messages */
  srv_params p = ok(
      SRV_API_MESSAGES,
      "{\"max_tokens\":100,\"messages\":["
      "{\"role\":\"user\",\"content\":\"Weather in Oslo and Rome?\"},"
      "{\"role\":\"assistant\",\"content\":[{\"type\":\"thinking\",\"thinking\":\"hmm\",\"signature\":\"s\"},"
      "{\"type\":\"text\",\"text\":\"Let me \"},{\"type\":\"text\",\"text\":\"check.\"},"
      "{\"type\":\"tool_use\",\"id\":\"tu1\",\"name\":\"get_weather\",\"input\":{\"city\":\"Oslo\"}},"
      "{\"type\":\"tool_use\",\"id\":\"tu2\",\"name\":\"get_weather\",\"input\":{\"city\":\"Rome\"}}]},"
      "{\"role\":\"user\",\"content\":[{\"type\":\"tool_result\",\"tool_use_id\":\"tu1\",\"content\":\"5C\"},"
      "{\"type\":\"tool_result\",\"tool_use_id\":\"tu2\",\"is_error\":true,"
      "\"content\":[{\"type\":\"text\",\"text\":\"timeout\"}]},{\"type\":\"text\",\"text\":\"Thanks\"}]}],"
      "\"tools\":[{\"name\":\"get_weather\",\"description\":\"Weather now\",\"input_schema\":{\"type\":\"object\"},"
      "\"cache_control\":{\"type\":\"ephemeral\"}}],\"tool_choice\":{\"type\":\"tool\",\"name\":\"get_weather\"}}");
  cr_expect_eq(p.tools, 1);
  cJSON *c = chat_of(p.chat_json);
  cr_assert_eq(cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(c, "messages")), 5);
  const cJSON *as = msg_at(c, 1);
  cr_expect_str_eq(str_at(as, "role"), "assistant");
  cr_expect_str_eq(str_at(as, "content"), "Let me check."); /* joined with nothing; thinking skipped */
  const cJSON *calls = cJSON_GetObjectItemCaseSensitive(as, "tool_calls");
  cr_assert_eq(cJSON_GetArraySize(calls), 2);
  const cJSON *c0 = cJSON_GetArrayItem(calls, 0), *fn = cJSON_GetObjectItemCaseSensitive(c0, "function");
  cr_expect_str_eq(str_at(c0, "id"), "tu1");
  cr_expect_str_eq(str_at(c0, "type"), "function");
  cr_expect_str_eq(str_at(fn, "name"), "get_weather");
  cr_expect_str_eq(str_at(cJSON_GetObjectItemCaseSensitive(fn, "arguments"), "city"), "Oslo"); /* an object */
  cr_expect_str_eq(str_at(msg_at(c, 2), "role"), "tool");
  cr_expect_str_eq(str_at(msg_at(c, 2), "tool_call_id"), "tu1");
  cr_expect_str_eq(str_at(msg_at(c, 2), "content"), "5C");
  cr_expect_str_eq(str_at(msg_at(c, 3), "tool_call_id"), "tu2");
  cr_expect_str_eq(str_at(msg_at(c, 3), "content"), "Error: timeout");
  cr_expect_str_eq(str_at(msg_at(c, 4), "role"), "user");
  cr_expect_str_eq(str_at(msg_at(c, 4), "content"), "Thanks");
  const cJSON *tool = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(c, "tools"), 0);
  cr_expect_str_eq(str_at(tool, "type"), "function");
  const cJSON *tf = cJSON_GetObjectItemCaseSensitive(tool, "function");
  cr_expect_str_eq(str_at(tf, "name"), "get_weather");
  cr_expect_str_eq(str_at(tf, "description"), "Weather now");
  cr_expect_str_eq(str_at(cJSON_GetObjectItemCaseSensitive(tf, "parameters"), "type"), "object");
  cJSON_Delete(c);
  srv_params_free(&p);
  /* only tool_use: content null */
  p = ok(SRV_API_MESSAGES, "{\"max_tokens\":9,\"messages\":[" "{\"role\":\"user\",\"content\":\"go\"},"
                           "{\"role\":\"assistant\",\"content\":[{\"type\":\"tool_use\",\"id\":\"a\",\"name\":\"f\","
                           "\"input\":{}}]}]}");
  c = chat_of(p.chat_json);
  cr_expect(cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(msg_at(c, 1), "content")));
  cJSON_Delete(c);
  srv_params_free(&p);
}

Test(serve_api, anthropic_errors) { /* roles, block placement and empty messages */
  expect_err(SRV_API_MESSAGES, "{\"max_tokens\":5,\"messages\":[{\"role\":\"system\",\"content\":\"x\"}]}",
             "messages[0].role must be user or assistant", "system");
  expect_err(SRV_API_MESSAGES,
             "{\"max_tokens\":5,\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"tool_use\",\"id\":\"a\","
             "\"name\":\"f\",\"input\":{}}]}]}",
             "messages[0].content[0]", "tool_use");
  expect_err(SRV_API_MESSAGES,
             "{\"max_tokens\":5,\"messages\":[{\"role\":\"assistant\",\"content\":[{\"type\":\"tool_result\","
             "\"tool_use_id\":\"a\"}]}]}",
             "messages[0].content[0]", "tool_result");
  expect_err(SRV_API_MESSAGES,
             "{\"max_tokens\":5,\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"thinking\"}]}]}",
             "messages[0].content is empty", NULL);
  expect_err(SRV_API_MESSAGES,
             "{\"max_tokens\":5,\"messages\":[{\"role\":\"assistant\",\"content\":[{\"type\":\"tool_use\","
             "\"id\":\"a\",\"name\":\"f\",\"input\":\"x\"}]}]}",
             "messages[0].content[0].input must be an object", NULL);
  expect_err(SRV_API_MESSAGES,
             "{\"max_tokens\":5,\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"tool_result\"}]}]}",
             "messages[0].content[0].tool_use_id is required", NULL);
  expect_err(SRV_API_MESSAGES, "{\"max_tokens\":5,\"system\":5," HELLO "}", "system", NULL);
  expect_err(SRV_API_MESSAGES, "{\"max_tokens\":5," HELLO ",\"tools\":[{\"name\":\"f\"}]}",
             "tools[0].input_schema is required", NULL);
  expect_err(SRV_API_MESSAGES, "{\"max_tokens\":5," HELLO ",\"tool_choice\":\"auto\"}", "tool_choice", NULL);
  expect_err(SRV_API_MESSAGES, "{\"max_tokens\":5," HELLO ",\"tool_choice\":{\"type\":\"sometimes\"}}",
             "tool_choice.type", "sometimes");
  expect_err(SRV_API_MESSAGES, "{\"max_tokens\":5," HELLO ",\"tool_choice\":{\"type\":\"tool\",\"name\":\"nope\"}}",
             "tool_choice.name", "nope");
}

Test(serve_api, anthropic_tool_choice_none) { /* none: tools left out of the prompt and not scanned for */
  srv_params p = ok(SRV_API_MESSAGES, "{\"max_tokens\":5," HELLO ",\"tools\":[{\"name\":\"f\",\"input_schema\":{}}],"
                                      "\"tool_choice\":{\"type\":\"none\"}}");
  cr_expect_eq(p.tools, 0);
  cJSON *c = chat_of(p.chat_json);
  cr_expect_null(cJSON_GetObjectItemCaseSensitive(c, "tools"));
  cJSON_Delete(c);
  srv_params_free(&p);
  p = ok(SRV_API_MESSAGES, "{\"max_tokens\":5," HELLO ",\"tools\":[{\"name\":\"f\",\"input_schema\":{},"
                           "\"type\":\"custom\"}],\"tool_choice\":{\"type\":\"any\"}}");
  cr_expect_eq(p.tools, 1);
  srv_params_free(&p);
}

/* ---------- /tokenize and count_tokens ---------- */

Test(serve_api, tokenize_bodies) { /* content or messages, exactly one */
  char *chat = (char *)1, *content = (char *)1;
  heed_error err = {0};
  const char *b = "{\"content\":\"hello world\",\"add_special\":false}";
  cr_assert_eq(srv_parse_tokenize(b, strlen(b), 0, &chat, &content, &err), HEED_OK, "%s", err.msg);
  cr_expect_null(chat);
  cr_expect_str_eq(content, "hello world");
  free(content);
  b = "{" HELLO ",\"add_generation_prompt\":false,\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"f\"}}]}";
  cr_assert_eq(srv_parse_tokenize(b, strlen(b), 0, &chat, &content, &err), HEED_OK, "%s", err.msg);
  cr_expect_null(content);
  cJSON *c = chat_of(chat);
  cr_expect(cJSON_IsFalse(cJSON_GetObjectItemCaseSensitive(c, "add_generation_prompt")));
  cr_expect_eq(cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(c, "tools")), 1);
  cJSON_Delete(c);
  free(chat);
  b = "{\"content\":\"x\"," HELLO "}";
  cr_expect_eq(srv_parse_tokenize(b, strlen(b), 0, &chat, &content, &err), HEED_E_INVALID);
  cr_expect(strstr(err.msg, "content") && strstr(err.msg, "messages"), "%s", err.msg);
  cr_expect(chat == NULL && content == NULL);
  b = "{}";
  cr_expect_eq(srv_parse_tokenize(b, strlen(b), 0, &chat, &content, &err), HEED_E_INVALID);
  cr_expect(strstr(err.msg, "content or messages is required"), "%s", err.msg);
  b = "{\"messages\":[{\"role\":\"bot\",\"content\":\"x\"}]}";
  cr_expect_eq(srv_parse_tokenize(b, strlen(b), 0, &chat, &content, &err), HEED_E_INVALID);
  cr_expect(strstr(err.msg, "messages[0].role"), "%s", err.msg);
  b = "{\"content\":7}";
  cr_expect_eq(srv_parse_tokenize(b, strlen(b), 0, &chat, &content, &err), HEED_E_INVALID);
  cr_expect(strstr(err.msg, "content must be a string"), "%s", err.msg);
}

Test(serve_api, count_tokens_needs_no_max_tokens) { /* count_tokens takes a messages body without max_tokens */
  char *chat = NULL, *content = NULL;
  heed_error err = {0};
  const char *b = "{\"model\":\"x\",\"system\":\"s\"," HELLO ",\"tools\":[{\"name\":\"f\",\"input_schema\":{}}]}";
  cr_assert_eq(srv_parse_tokenize(b, strlen(b), 1, &chat, &content, &err), HEED_OK, "%s", err.msg);
  cr_expect_null(content);
  char *same = messages_chat("{\"max_tokens\":3,\"system\":\"s\"," HELLO
                             ",\"tools\":[{\"name\":\"f\",\"input_schema\":{}}]}");
  cr_expect_str_eq(chat, same); /* the same conversion as /v1/messages */
  free(same);
  free(chat);
  b = "{\"messages\":[]}";
  cr_expect_eq(srv_parse_tokenize(b, strlen(b), 1, &chat, &content, &err), HEED_E_INVALID);
  cr_expect(strstr(err.msg, "messages must be a non-empty array"), "%s", err.msg);
  cr_expect_null(chat);
}
