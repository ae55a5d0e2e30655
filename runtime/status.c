/* runtime/status.c - status names and messages, generated from HEED_STATUS_LIST. */
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "heed/status.h"
#include "runtime/internal.h"

const char *heed_status_name(int status) {
  switch (status) {
#define HEED_X_(name, value, msg) \
  case value:                     \
    return "HEED_" #name;
    HEED_STATUS_LIST(HEED_X_)
#undef HEED_X_
  }
  return "HEED_E_UNKNOWN";
}

const char *heed_status_str(int status) {
  switch (status) {
#define HEED_X_(name, value, msg) \
  case value:                     \
    return msg;
    HEED_STATUS_LIST(HEED_X_)
#undef HEED_X_
  }
  return "unknown status";
}

/* Ends a cut text with "...", at a UTF-8 character boundary. */
static void mark_cut(char *buf, size_t cap) {
  if (cap < 4) return;
  size_t n = cap - 4; /* room for "..." and the terminator */
  while (n && ((unsigned char)buf[n] & 0xC0) == 0x80) n--; /* buf[n] starts a character: cut before it */
  memcpy(buf + n, "...", 4);
}

int heed_vfmt(char *buf, size_t cap, const char *fmt, va_list ap) {
  if (!cap) return 0;
  int n = vsnprintf(buf, cap, fmt, ap);
  if (n < 0) {
    buf[0] = '\0';
    return 0;
  }
  if ((size_t)n < cap) return 0;
  mark_cut(buf, cap);
  return 1;
}

int heed_fmt(char *buf, size_t cap, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  int cut = heed_vfmt(buf, cap, fmt, ap);
  va_end(ap);
  return cut;
}

heed_status heed_err_vset(heed_error *e, heed_status status, const char *fmt, va_list ap) {
  if (e) { /* through a copy: an argument may be e->msg itself (a message that wraps an earlier one) */
    char buf[sizeof e->msg];
    heed_vfmt(buf, sizeof buf, fmt, ap);
    e->status = status;
    memcpy(e->msg, buf, sizeof buf);
  }
  return status;
}

heed_status heed_err_set(heed_error *e, heed_status status, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  heed_err_vset(e, status, fmt, ap);
  va_end(ap);
  return status;
}

heed_status heed_err_copy(heed_error *dst, const heed_error *src) {
  if (dst && dst != src) *dst = *src;
  return src->status;
}

const char *heed_err_msg_copy(const heed_error *e, void *mu) {
  static _Thread_local char msg[HEED_ERROR_MSG_MAX];
  pthread_mutex_lock(mu);
  memcpy(msg, e->msg, sizeof msg);
  pthread_mutex_unlock(mu);
  return msg;
}

void heed_err_clear(heed_error *e) {
  if (e) {
    e->status = HEED_OK;
    e->msg[0] = '\0';
  }
}

int heed_strlcpy(char *dst, const char *src, size_t cap) {
  if (!cap) return 0;
  size_t n = src ? strlen(src) : 0;
  int cut = n >= cap;
  if (cut) n = cap - 1;
  if (n) memmove(dst, src, n);
  dst[n] = '\0';
  if (cut) mark_cut(dst, cap);
  return cut;
}
