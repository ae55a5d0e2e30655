/* serve/toolcall.c - generated text split into content and tool calls.
 *
 * The scanner keeps what it cannot decide yet in s->buf and settles the front
 * of it whenever the text so far allows; every decision depends on the text
 * alone, never on where the pieces were cut, so feeding token by token gives
 * what feeding everything at once gives.
 *
 * Outside a call, s->buf holds either white space not yet known to be content
 * (the current stretch between calls has shown nothing else: s->started == 0)
 * followed perhaps by a beginning of "<tool_call>", or only such a beginning.
 * Inside a call (s->in_call) it holds that white space, the tag and the body.
 * s->whole_json: 1 while the output began with '{' or '[' and is held to the
 * end (Llama 3 form), 2 when it began with a ```json fence whose first line
 * opens an object or array (Qwen2.5-Coder's habit), -1 once "<tool_call>"
 * ruled those forms out. */
#include <cjson/cJSON.h>
#include <stdlib.h>
#include <string.h>

#include "serve/serve_internal.h"

static const char OPEN[] = "<tool_call>";
static const char CLOSE[] = "</tool_call>";
#define OPEN_LEN (sizeof OPEN - 1)
#define CLOSE_LEN (sizeof CLOSE - 1)

static int is_ws(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; }

static const char *find(const char *h, size_t hn, const char *needle, size_t nn) {
  if (hn < nn) return NULL;
  for (size_t i = 0; i + nn <= hn; i++) {
    const char *p = memchr(h + i, needle[0], hn - nn + 1 - i);
    if (!p) return NULL;
    if (memcmp(p, needle, nn) == 0) return p;
    i = (size_t)(p - h);
  }
  return NULL;
}

/* Appends to the caller's content; a failed allocation loses the text
 * rather than the buffer (nothing better is left to do with it). */
static void emit(char **content, size_t *content_len, const char *t, size_t n) {
  if (!content || !content_len || (!n && *content)) return;
  char *c = realloc(*content, *content_len + n + 1);
  if (!c) return;
  if (n) memcpy(c + *content_len, t, n);
  *content_len += n;
  c[*content_len] = '\0';
  *content = c;
}

static void consume(srv_toolscan *s, size_t n) {
  memmove(s->buf, s->buf + n, s->len - n);
  s->len -= n;
}

/* The arguments as a JSON object: an object, or a string holding one. NULL
 * when it is neither. */
static cJSON *parse_exact(const char *t, size_t n) {
  if (memchr(t, '\0', n)) return NULL;
  char *z = malloc(n + 1);
  if (!z) return NULL;
  memcpy(z, t, n);
  z[n] = '\0';
  const char *end = NULL;
  cJSON *j = cJSON_ParseWithOpts(z, &end, 1);
  free(z);
  return j;
}

/* Checks one call object and appends it to s->calls. need_args: the Llama
 * form, where an object without arguments is more likely an answer. */
static int add_call(srv_toolscan *s, const cJSON *o, int need_args) {
  if (!cJSON_IsObject(o)) return 0;
  const cJSON *name = cJSON_GetObjectItemCaseSensitive(o, "name");
  if (!cJSON_IsString(name) || !name->valuestring || !name->valuestring[0]) return 0;
  const cJSON *args = cJSON_GetObjectItemCaseSensitive(o, "arguments");
  if (!args) args = cJSON_GetObjectItemCaseSensitive(o, "parameters");
  if (!args && need_args) return 0;
  char *args_text = NULL;
  if (!args) {
    args_text = strdup("{}");
  } else if (cJSON_IsObject(args)) {
    args_text = cJSON_PrintUnformatted(args);
  } else if (cJSON_IsString(args) && args->valuestring) {
    cJSON *inner = parse_exact(args->valuestring, strlen(args->valuestring));
    if (cJSON_IsObject(inner)) args_text = cJSON_PrintUnformatted(inner);
    cJSON_Delete(inner);
    if (!args_text) return 0;
  } else {
    return 0;
  }
  char *name_text = strdup(name->valuestring);
  if (s->n_calls == s->cap_calls) {
    size_t cap = s->cap_calls ? s->cap_calls * 2 : 4;
    srv_tool_call *c = realloc(s->calls, cap * sizeof *c);
    if (c) s->calls = c, s->cap_calls = cap;
  }
  if (!args_text || !name_text || s->n_calls == s->cap_calls) {
    free(args_text), free(name_text);
    return 0;
  }
  s->calls[s->n_calls].name = name_text;
  s->calls[s->n_calls].arguments = args_text;
  s->n_calls++;
  return 1;
}

static void drop_calls_from(srv_toolscan *s, size_t n) {
  while (s->n_calls > n) {
    s->n_calls--;
    free(s->calls[s->n_calls].name), free(s->calls[s->n_calls].arguments);
  }
}

/* The body of <tool_call>...</tool_call>: 1 when it made a call. */
static int hermes_call(srv_toolscan *s, const char *t, size_t n) {
  while (n && is_ws(*t)) t++, n--;
  while (n && is_ws(t[n - 1])) n--;
  cJSON *j = parse_exact(t, n);
  int ok = add_call(s, j, 0);
  cJSON_Delete(j);
  return ok;
}

/* The whole output as one call object or an array of them: the number of
 * calls added (all or none). */
static size_t whole_calls(srv_toolscan *s) {
  const char *t = s->buf;
  size_t n = s->len;
  while (n && is_ws(*t)) t++, n--;
  while (n && is_ws(t[n - 1])) n--;
  if (s->whole_json == 2) {
    /* a fenced block: ```json NEWLINE body ``` (Qwen2.5-Coder answers tools so) */
    const char *nl = memchr(t, '\n', n);
    if (!nl || n < 6 || memcmp(t + n - 3, "```", 3) != 0) return 0;
    size_t at = (size_t)(nl + 1 - t);
    if (at > n - 3) return 0;
    t += at, n -= at + 3;
    while (n && is_ws(t[n - 1])) n--;
  }
  cJSON *j = parse_exact(t, n);
  size_t before = s->n_calls;
  int ok = 0;
  if (cJSON_IsObject(j)) {
    ok = add_call(s, j, 1);
  } else if (cJSON_IsArray(j) && cJSON_GetArraySize(j) > 0) {
    ok = 1;
    const cJSON *e;
    cJSON_ArrayForEach(e, j) {
      if (!add_call(s, e, 1)) {
        ok = 0;
        break;
      }
    }
  }
  cJSON_Delete(j);
  if (!ok) drop_calls_from(s, before);
  return s->n_calls - before;
}

/* Length of the longest suffix of t[0..n) that is a proper prefix of
 * "<tool_call>" (where held-back text starts). */
static size_t open_tail(const char *t, size_t n) {
  size_t from = n > OPEN_LEN - 1 ? n - (OPEN_LEN - 1) : 0;
  for (size_t i = from; i < n; i++)
    if (t[i] == '<' && memcmp(t + i, OPEN, n - i) == 0) return n - i;
  return 0;
}

/* Settles as much of s->buf as the text allows. hint: where new text may
 * first complete a tag (earlier bytes were searched already). */
static void settle(srv_toolscan *s, size_t hint, int final, char **content, size_t *content_len, size_t *n_new) {
  for (;;) {
    if (s->whole_json >= 1) {
      size_t from = hint > OPEN_LEN ? hint - OPEN_LEN : 0;
      if (find(s->buf + from, s->len - from, OPEN, OPEN_LEN)) {
        s->whole_json = -1; /* Hermes after all: the held text is read again from the start */
        hint = 0;
        continue;
      }
      if (!final) return;
      size_t k = whole_calls(s);
      if (k) *n_new += k;
      else emit(content, content_len, s->buf, s->len);
      s->len = 0;
      return;
    }

    if (s->in_call) {
      size_t ws = 0;
      while (ws < s->len && is_ws(s->buf[ws])) ws++;
      size_t body = ws + OPEN_LEN;
      size_t from = hint > body + CLOSE_LEN ? hint - CLOSE_LEN : body;
      const char *end = find(s->buf + from, s->len - from, CLOSE, CLOSE_LEN);
      if (!end) {
        if (final) {
          emit(content, content_len, s->buf, s->len);
          s->len = 0;
          s->in_call = 0;
        }
        return;
      }
      size_t stop = (size_t)(end - s->buf);
      size_t through = stop + CLOSE_LEN;
      s->in_call = 0;
      if (hermes_call(s, s->buf + body, stop - body)) {
        (*n_new)++;
        s->started = 0;
      } else {
        emit(content, content_len, s->buf, through);
        s->started = 1;
      }
      consume(s, through);
      hint = 0;
      continue;
    }

    if (!s->started) {
      size_t p = 0;
      while (p < s->len && is_ws(s->buf[p])) p++;
      if (p == s->len) {
        if (final) {
          /* White space between or after calls is dropped; alone, it is the answer. */
          if (s->n_calls == 0) emit(content, content_len, s->buf, s->len);
          s->len = 0;
        }
        return;
      }
      char c = s->buf[p];
      size_t rest = s->len - p;
      if (c == '<') {
        if (rest >= OPEN_LEN && memcmp(s->buf + p, OPEN, OPEN_LEN) == 0) {
          s->in_call = 1;
          hint = 0;
          continue;
        }
        if (rest < OPEN_LEN && memcmp(s->buf + p, OPEN, rest) == 0 && !final) return;
      } else if ((c == '{' || c == '[') && s->whole_json == 0 && s->n_calls == 0) {
        s->whole_json = 1;
        hint = 0;
        continue;
      } else if (c == '`' && s->whole_json == 0 && s->n_calls == 0) {
        /* "```json" or "```" then a line starting with { or [: held as a possible call */
        if (rest < 3) {
          if (memcmp(s->buf + p, "```", rest) == 0 && !final) return;
        } else if (memcmp(s->buf + p, "```", 3) == 0) {
          const char *nl = memchr(s->buf + p + 3, '\n', rest - 3);
          size_t info = nl ? (size_t)(nl - (s->buf + p + 3)) : rest - 3;
          const char *in = s->buf + p + 3;
          while (info && is_ws(in[info - 1])) info--;
          int json_info = info == 0 || (info == 4 && memcmp(in, "json", 4) == 0);
          /* the first line still coming: wait while it may yet read "```json" */
          if (!nl && !final && info <= 4 && memcmp(in, "json", info) == 0) return;
          if (nl && json_info) {
            size_t q = (size_t)(nl + 1 - s->buf);
            while (q < s->len && is_ws(s->buf[q])) q++;
            if (q == s->len && !final) return;
            if (q < s->len && (s->buf[q] == '{' || s->buf[q] == '[')) {
              s->whole_json = 2;
              hint = 0;
              continue;
            }
          }
        }
      }
      s->started = 1;
      hint = 0;
    }

    /* Content: release all but a tag, or what may still become one. */
    const char *tag = find(s->buf, s->len, OPEN, OPEN_LEN);
    if (tag) {
      size_t at = (size_t)(tag - s->buf);
      emit(content, content_len, s->buf, at);
      consume(s, at);
      s->in_call = 1;
      hint = 0;
      continue;
    }
    size_t keep = final ? 0 : open_tail(s->buf, s->len);
    emit(content, content_len, s->buf, s->len - keep);
    consume(s, s->len - keep);
    return;
  }
}

void srv_toolscan_init(srv_toolscan *s, int enabled) {
  memset(s, 0, sizeof *s);
  s->enabled = enabled;
}

void srv_toolscan_free(srv_toolscan *s) {
  drop_calls_from(s, 0);
  free(s->calls);
  free(s->buf);
  memset(s, 0, sizeof *s);
}

void srv_toolscan_feed(srv_toolscan *s, const char *text, size_t n, int final, char **content, size_t *content_len,
                       size_t *n_new) {
  size_t dummy;
  if (!n_new) n_new = &dummy;
  *n_new = 0;
  if (!text) n = 0;
  if (!s->enabled) {
    emit(content, content_len, text, n);
    return;
  }
  size_t hint = s->len;
  if (s->len + n + 1 > s->cap) {
    size_t cap = s->cap ? s->cap : 64;
    while (cap < s->len + n + 1) cap *= 2;
    char *b = realloc(s->buf, cap);
    if (!b) {
      /* No room to hold text back: what is held and the new text are content. */
      emit(content, content_len, s->buf, s->len);
      emit(content, content_len, text, n);
      s->len = 0;
      s->in_call = 0;
      s->started = 1;
      if (s->whole_json >= 1) s->whole_json = -1;
      return;
    }
    s->buf = b, s->cap = cap;
  }
  if (n) memcpy(s->buf + s->len, text, n);
  s->len += n;
  settle(s, hint, final, content, content_len, n_new);
  emit(content, content_len, "", 0); /* *content is a string even when nothing was released */
}
