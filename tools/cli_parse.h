/* tools/cli_parse.h - the list options of the heed command line (--ctx,
 * --kv). Part of the heed tool, not of libheed.
 *
 * One rule for every list: items separated by single commas, each item
 * non-empty and given once. ",," (an empty item), a leading or trailing
 * comma, and an item given twice are refused with a message naming them. */
#ifndef HEED_CLI_PARSE_H
#define HEED_CLI_PARSE_H

#include <stddef.h>

#include "heed/dtype.h"

#define HEED_CLI_MAX_CTX 16
#define HEED_CLI_CTX_MAX_TOKENS (1u << 24)
#define HEED_CLI_MAX_KV 4

/* "4096,16384" -> token counts, each 1..16777216, at most cap of them.
 * Returns how many; -1 with why in msg. */
int heed_cli_parse_ctx(const char *arg, unsigned *ctx, int cap, char *msg, size_t msg_cap);

/* "q8,q4" -> quantized KV formats (q8, q4, e4m3, e5m2), at most cap of them;
 * "none" -> 0 of them. Returns how many; -1 with why in msg. */
int heed_cli_parse_kv(const char *arg, heed_dtype *kv, int cap, char *msg, size_t msg_cap);

#endif
