/* bench/bench_kvquant.h - the KV-format accuracy report of the heed tool. */
#ifndef HEED_BENCH_KVQUANT_H
#define HEED_BENCH_KVQUANT_H

#include <stdio.h>

/* Prints, per format and data kind, the attention-output error the format
 * causes (max abs, NMSE, 1 - cosine); with json != NULL writes it there too.
 * 0, or -1 when a quantizer refused its input. */
int heed_bench_kvquant(FILE *json);

#endif
