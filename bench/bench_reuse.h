/* bench/bench_reuse.h - heed bench reuse (bench/bench_reuse.c). */
#ifndef HEED_BENCH_REUSE_H
#define HEED_BENCH_REUSE_H

/* argv[0] is "reuse". */
int heed_bench_reuse_main(int argc, char **argv);

#endif
