/* bench/bench_serve.h - heed bench serve (bench/bench_serve.c). */
#ifndef HEED_BENCH_SERVE_H
#define HEED_BENCH_SERVE_H

/* argv[0] is "serve". */
int heed_bench_serve_main(int argc, char **argv);

#endif
