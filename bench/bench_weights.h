/* bench/bench_weights.h - `heed bench weights`: the weight formats' matrix
 * products (heed/weights.h) beside the machine's limits probed in the same run. */
#ifndef HEED_BENCH_WEIGHTS_H
#define HEED_BENCH_WEIGHTS_H

/* argv[0] is "weights"; prints a table. 0, or 1 on a usage error or failure. */
int heed_bench_weights_main(int argc, char **argv);

#endif
