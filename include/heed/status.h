/* heed/status.h - status codes shared by every heed function.
 *
 * Every fallible heed function returns a heed_status: 0 is success, errors are
 * negative. The context that failed (runtime, pool, ...) keeps a message naming
 * the bad value; constructors, which have no context yet, fill a caller-given
 * heed_error instead (NULL is allowed: then only the code comes back).
 */
#ifndef HEED_STATUS_H
#define HEED_STATUS_H

#ifdef __cplusplus
extern "C" {
#endif

/* X(NAME, value, message). The enum, heed_status_name() and heed_status_str()
 * are all generated from this one list. */
#define HEED_STATUS_LIST(X)                                                      \
  X(OK, 0, "success")                                                           \
  X(E_INVALID, -1, "invalid argument")                                          \
  X(E_NOMEM, -2, "out of memory")                                               \
  X(E_UNSUPPORTED, -3, "not supported by this machine or build")                \
  X(E_NOT_FOUND, -4, "not found")                                               \
  X(E_BUSY, -5, "busy: re-entrant or concurrent use")                           \
  X(E_IO, -6, "input/output error")                                             \
  X(E_TOPOLOGY, -7, "topology discovery failed")                                \
  X(E_OPENCL, -8, "OpenCL error")                                               \
  X(E_RANGE, -9, "value out of range")                                          \
  X(E_TOO_SMALL, -10, "buffer too small")                                       \
  X(E_INTERNAL, -11, "internal error")

typedef enum heed_status {
#define HEED_X_(name, value, msg) HEED_##name = value,
  HEED_STATUS_LIST(HEED_X_)
#undef HEED_X_
} heed_status;

/* "HEED_E_INVALID"; "HEED_E_UNKNOWN" for a value not in the list. Static storage. */
const char *heed_status_name(int status);
/* "invalid argument"; "unknown status" for a value not in the list. Static storage. */
const char *heed_status_str(int status);

/* Error report filled by constructors (which have no context to keep it in).
 * Room for a message naming a few device names (HEED_NAME_MAX) and a path; a
 * longer one ends in "..." rather than being cut silently. */
#define HEED_ERROR_MSG_MAX 1024
typedef struct heed_error {
  heed_status status;
  char msg[HEED_ERROR_MSG_MAX]; /* names the bad value and what is accepted */
} heed_error;

#ifdef __cplusplus
}
#endif
#endif
