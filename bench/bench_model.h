/* bench/bench_model.h - `heed bench model`: a real model's prefill and decode
 * speed at several context depths and KV formats, beside the limits probed in
 * the same run. */
#ifndef HEED_BENCH_MODEL_H
#define HEED_BENCH_MODEL_H

/* argv[0] is "model"; prints a table (and JSON with --json). 0, 1 on failure, 2 on a usage error. */
int heed_bench_model_main(int argc, char **argv);

#endif
