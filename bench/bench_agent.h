/* bench/bench_agent.h - heed bench agent (bench/bench_agent.c). */
#ifndef HEED_BENCH_AGENT_H
#define HEED_BENCH_AGENT_H

/* argv[0] is "agent". */
int heed_bench_agent_main(int argc, char **argv);

#endif
