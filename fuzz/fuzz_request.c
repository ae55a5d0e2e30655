/* fuzz/fuzz_request.c - the server's request parser (serve/api.c) on arbitrary bodies.
 *
 * Input: one selector byte (mod 5: chat completions, completions, messages,
 * /tokenize, count_tokens), then the body.
 *
 * Checks, besides the sanitizers:
 *   - a refusal is HEED_E_INVALID with a message and leaves the output zeroed;
 *   - accepted parameters lie in their documented ranges; stops are 1..256
 *     bytes, at most SRV_MAX_STOPS; a completions prompt is prompt_len bytes;
 *   - a chat body (chat, messages, tokenize) is valid UTF-8 and parses back
 *     as an object with a non-empty "messages" array of objects whose role is
 *     system, user, assistant or tool, and "tools" exactly when p->tools;
 *   - parsing again gives the same result (no hidden state). */
#include <cjson/cJSON.h>

#include "fuzz/fuzz_common.h"
#include "serve/serve_internal.h"

static int utf8_ok(const unsigned char *s, size_t n) {
  for (size_t i = 0; i < n;) {
    unsigned c = s[i], k, lo = 0x80, hi = 0xBF;
    if (c < 0x80) {
      i++;
      continue;
    }
    if (c >= 0xC2 && c <= 0xDF) k = 1;
    else if (c >= 0xE0 && c <= 0xEF) k = 2, lo = c == 0xE0 ? 0xA0 : lo, hi = c == 0xED ? 0x9F : hi;
    else if (c >= 0xF0 && c <= 0xF4) k = 3, lo = c == 0xF0 ? 0x90 : lo, hi = c == 0xF4 ? 0x8F : hi;
    else return 0;
    if (n - i <= k || s[i + 1] < lo || s[i + 1] > hi) return 0;
    for (unsigned j = 2; j <= k; j++)
      if ((s[i + j] & 0xC0) != 0x80) return 0;
    i += k + 1;
  }
  return 1;
}

/* A chat body: valid UTF-8, an object with non-empty messages of known roles. */
static void check_chat(const char *json, int tools) {
  FZ_CHECK(json, "no chat body");
  size_t n = strlen(json);
  FZ_CHECK(utf8_ok((const unsigned char *)json, n), "chat body is not valid UTF-8: %s", json);
  cJSON *c = cJSON_ParseWithLength(json, n);
  FZ_CHECK(cJSON_IsObject(c), "chat body does not parse as an object: %s", json);
  const cJSON *msgs = cJSON_GetObjectItemCaseSensitive(c, "messages");
  FZ_CHECK(cJSON_IsArray(msgs) && msgs->child, "chat body without messages: %s", json);
  for (const cJSON *m = msgs->child; m; m = m->next) {
    const cJSON *role = cJSON_GetObjectItemCaseSensitive(m, "role");
    FZ_CHECK(cJSON_IsObject(m) && cJSON_IsString(role), "a message without a role: %s", json);
    const char *r = role->valuestring;
    FZ_CHECK(!strcmp(r, "system") || !strcmp(r, "user") || !strcmp(r, "assistant") || !strcmp(r, "tool"),
             "role '%s' left in the chat body", r);
  }
  const cJSON *t = cJSON_GetObjectItemCaseSensitive(c, "tools");
  if (tools >= 0)
    FZ_CHECK(tools == (cJSON_IsArray(t) && t->child != NULL), "p->tools %d but tools %s in %s", tools,
             t ? "present" : "absent", json);
  cJSON_Delete(c);
}

static void check_params(const srv_params *p, srv_api api) {
  FZ_CHECK(p->api == api, "api %d, asked %d", (int)p->api, (int)api);
  long lo = api == SRV_API_CHAT ? -1 : 1;
  FZ_CHECK(p->max_tokens >= lo && p->max_tokens <= (1L << 24) && p->max_tokens != 0, "max_tokens %ld",
           p->max_tokens);
  FZ_CHECK(p->temperature >= 0 && p->temperature <= (api == SRV_API_MESSAGES ? 1 : 2), "temperature %g",
           p->temperature);
  FZ_CHECK(p->top_p > 0 && p->top_p <= 1, "top_p %g", p->top_p);
  FZ_CHECK(p->min_p >= 0 && p->min_p < 1, "min_p %g", p->min_p);
  FZ_CHECK(fabsf(p->presence_penalty) <= 2 && fabsf(p->frequency_penalty) <= 2, "penalties %g %g",
           p->presence_penalty, p->frequency_penalty);
  FZ_CHECK(p->repetition_penalty > 0 && isfinite(p->repetition_penalty), "repetition_penalty %g",
           p->repetition_penalty);
  FZ_CHECK(p->top_k <= 2147483647u, "top_k %u", p->top_k);
  FZ_CHECK(p->n_stops >= 0 && p->n_stops <= SRV_MAX_STOPS, "n_stops %d", p->n_stops);
  for (int i = 0; i < p->n_stops; i++) {
    size_t n = p->stops[i] ? strlen(p->stops[i]) : 0;
    FZ_CHECK(n >= 1 && n <= 256, "stop %d of %zu bytes", i, n);
  }
  FZ_CHECK(p->logprobs == 0 || p->logprobs == 1, "logprobs %d", p->logprobs);
  FZ_CHECK(p->top_logprobs <= (api == SRV_API_COMPLETIONS ? 5u : (unsigned)SRV_MAX_TOP_LOGPROBS) &&
               (p->logprobs || !p->top_logprobs),
           "top_logprobs %u with logprobs %d", p->top_logprobs, p->logprobs);
  FZ_CHECK(api != SRV_API_MESSAGES || !p->logprobs, "logprobs on messages");
  FZ_CHECK(!p->include_usage || (p->stream && api != SRV_API_MESSAGES), "include_usage without stream");
  FZ_CHECK(p->has_seed || !p->seed, "a seed without has_seed");
  if (api == SRV_API_COMPLETIONS) {
    FZ_CHECK(p->prompt && strlen(p->prompt) == p->prompt_len, "prompt of %zu bytes, prompt_len %zu",
             p->prompt ? strlen(p->prompt) : 0, p->prompt_len);
    FZ_CHECK(!p->chat_json && !p->tools, "completions with a chat body");
  } else {
    FZ_CHECK(!p->prompt, "a prompt on a chat request");
    check_chat(p->chat_json, p->tools);
  }
}

static int same_str(const char *a, const char *b) { return (!a && !b) || (a && b && !strcmp(a, b)); }

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (!size) return 0;
  unsigned sel = data[0] % 5;
  const char *body = (const char *)data + 1;
  size_t n = size - 1;
  heed_error err = {0}, err2 = {0};
  if (sel < 3) {
    srv_api api = (srv_api)sel;
    srv_params p, q, zero;
    memset(&p, 0xa5, sizeof p);
    memset(&zero, 0, sizeof zero);
    heed_status st = srv_parse_request(api, body, n, &p, &err);
    heed_status st2 = srv_parse_request(api, body, n, &q, &err2);
    FZ_CHECK(st == st2, "second parse: %s, first %s", heed_status_name(st2), heed_status_name(st));
    if (st) {
      fz_stat("request refused");
      FZ_CHECK(st == HEED_E_INVALID, "refused with %s: %s", heed_status_name(st), err.msg);
      FZ_CHECK(err.msg[0] && !strcmp(err.msg, err2.msg), "messages '%s' and '%s'", err.msg, err2.msg);
      FZ_CHECK(memcmp(&p, &zero, sizeof p) == 0, "a refused request left output");
      return 0;
    }
    fz_stat(api == SRV_API_CHAT ? "chat accepted" : api == SRV_API_COMPLETIONS ? "completions accepted"
                                                                              : "messages accepted");
    check_params(&p, api);
    FZ_CHECK(same_str(p.chat_json, q.chat_json) && same_str(p.prompt, q.prompt) && p.max_tokens == q.max_tokens &&
                 p.n_stops == q.n_stops && p.seed == q.seed && same_str(p.model, q.model) && same_str(p.user, q.user),
             "a second parse differs");
    srv_params_free(&p);
    srv_params_free(&q);
    FZ_CHECK(memcmp(&p, &zero, sizeof p) == 0, "srv_params_free left fields");
    return 0;
  }
  int anthropic = sel == 4;
  char *chat = (char *)1, *content = (char *)1;
  heed_status st = srv_parse_tokenize(body, n, anthropic, &chat, &content, &err);
  if (st) {
    fz_stat("tokenize refused");
    FZ_CHECK(st == HEED_E_INVALID && err.msg[0], "refused with %s: '%s'", heed_status_name(st), err.msg);
    FZ_CHECK(!chat && !content, "a refused tokenize left output");
    return 0;
  }
  fz_stat(anthropic ? "count_tokens accepted" : "tokenize accepted");
  FZ_CHECK(!chat != !content && (!anthropic || chat), "chat body %p, content %p", (void *)chat, (void *)content);
  if (chat) check_chat(chat, -1);
  free(chat);
  free(content);
  return 0;
}
