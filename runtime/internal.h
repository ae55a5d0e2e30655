/* runtime/internal.h - helpers shared inside libheed; not installed. */
#ifndef HEED_RUNTIME_INTERNAL_H
#define HEED_RUNTIME_INTERNAL_H

#include <stdarg.h>
#include <stddef.h>

#include "heed/status.h"

#if defined(__GNUC__)
#define HEED_PRINTF(a, b) __attribute__((format(printf, a, b)))
#else
#define HEED_PRINTF(a, b)
#endif

/* Records status and message in e (when e is not NULL) and returns status. */
heed_status heed_err_set(heed_error *e, heed_status status, const char *fmt, ...) HEED_PRINTF(3, 4);
heed_status heed_err_vset(heed_error *e, heed_status status, const char *fmt, va_list ap);
/* Copies one error into another (dst may be NULL) and returns its status. */
heed_status heed_err_copy(heed_error *dst, const heed_error *src);
void heed_err_clear(heed_error *e);
/* A context's last error message, copied under its lock into this thread's
 * buffer (another thread may fail meanwhile); valid until this thread's next
 * *_last_error call. mu is a pthread_mutex_t. */
const char *heed_err_msg_copy(const heed_error *e, void *mu);

/* No text heed builds is cut silently. These copy or format into a fixed
 * buffer, always terminated; a text that does not fit ends in "..." (at a
 * UTF-8 character boundary), and they return 1 when it was cut, else 0.
 * Buffers are sized so that realistic texts fit: names of up to
 * HEED_NAME_MAX bytes, paths through PATH_MAX. */
int heed_strlcpy(char *dst, const char *src, size_t cap);
int heed_fmt(char *buf, size_t cap, const char *fmt, ...) HEED_PRINTF(3, 4);
int heed_vfmt(char *buf, size_t cap, const char *fmt, va_list ap);

#define HEED_ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

#include <stdio.h>
/* Writes s as a JSON string literal, escaped. NULL writes null. */
void heed_json_str(FILE *f, const char *s);

struct heed_runtime;
/* Where each setting came from ("backend from ranking, isa from HEED_ISA, ..."). */
const char *heed_runtime_settings(const struct heed_runtime *rt);

#endif
