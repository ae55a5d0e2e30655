#!/usr/bin/env bash
# scripts/fuzz.sh - build heed's libFuzzer targets (fuzz/, clang with ASan and
# UBSan, in build-fuzz/) and run them.
#
#   scripts/fuzz.sh                 each target for FUZZ_SECONDS (default 30) seconds,
#                                   starting from its committed corpus (fuzz/corpus/<target>/)
#   scripts/fuzz.sh --regress       only run every committed corpus file once (no fuzzing)
#   scripts/fuzz.sh [--regress] kv_ops spec    some targets only (parse kv_config kv_ops attention spec gguf tokenizer template request)
#
# The committed corpus is copied into a scratch corpus under build-fuzz/fuzz-work/
# first and never written to. Fails if a target crashes (sanitizer report,
# failed check, timeout, leak or out-of-memory), naming the target and the
# reproducer; rerun one with: build-fuzz/fuzz/fuzz_<target> <reproducer>.
# A reproducer worth keeping goes into fuzz/corpus/<target>/crash-<what>.
#
# Environment: FUZZ_SECONDS (per target), FUZZ_BUILD (build-fuzz), JOBS (2: build jobs, and
# targets fuzzed at once), FUZZ_CC (clang),
# CI=true (warnings are errors, as in the main build), HEED_FUZZ_SKIP_KNOWN=1 (skip
# the inputs that reach defects already reported, to look for others meanwhile).
set -euo pipefail
cd "$(dirname "$0")/.."

ALL=(parse kv_config kv_ops attention spec gguf tokenizer template request)
BUILD=${FUZZ_BUILD:-build-fuzz}
SECS=${FUZZ_SECONDS:-30}
JOBS=${JOBS:-2}
CC=${FUZZ_CC:-clang}
mode=fuzz
targets=()
for a in "$@"; do
  case $a in
  --regress) mode=regress ;;
  -h | --help) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
  *)
    t=${a#fuzz_}
    [[ " ${ALL[*]} " == *" $t "* ]] || { echo "fuzz: unknown target '$a'; targets: ${ALL[*]}" >&2; exit 2; }
    targets+=("$t") ;;
  esac
done
((${#targets[@]})) || targets=("${ALL[@]}")
[[ $SECS =~ ^[0-9]+$ && $SECS -ge 1 ]] || { echo "fuzz: FUZZ_SECONDS=$SECS: accepted: a whole number of seconds >= 1" >&2; exit 2; }
command -v "$CC" >/dev/null || { echo "fuzz: needs clang (FUZZ_CC=$CC is not installed)" >&2; exit 2; }

werror=OFF
[[ ${CI:-} == true || ${CI:-} == 1 ]] && werror=ON
# OpenCL off: PoCL's compiler under ASan and libFuzzer is far too slow, and the targets run the CPU backend.
cmake -S . -B "$BUILD" -DCMAKE_C_COMPILER="$CC" -DHEED_FUZZ=ON -DHEED_BUILD_TESTS=OFF -DHEED_BUILD_TOOLS=OFF \
  -DHEED_WITH_OPENCL=OFF -DHEED_WERROR=$werror >/dev/null
cmake --build "$BUILD" -j "$JOBS" --target "${targets[@]/#/fuzz_}"

export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
LIBFUZZER_OPTS=(-timeout=10 -rss_limit_mb=2048 -print_final_stats=1)
# The inputs are programs (a byte per choice): let them be long from the start.
GROW_OPTS=(-max_len=2048 -len_control=0)
work=$BUILD/fuzz-work
failed=()

# The first lines that say what went wrong, from a log.
why() {
  grep -m1 -A1 -E 'FUZZ CHECK FAILED|ERROR: (AddressSanitizer|LeakSanitizer|libFuzzer)|runtime error:|SUMMARY:' "$1" |
    head -3 | sed 's/^/    /'
}

# One target's run; its result goes to $work/$t/status, its lines to
# $work/$t/summary (printed once every target has run, in order). Always 0:
# the caller reads the status.
fuzz_one() {
  local t=$1 exe=$BUILD/fuzz/fuzz_$1 seeds=fuzz/corpus/$1 dir=$work/$1 rc runs repro grow
  [[ -d $seeds ]] && cp -r "$seeds"/. "$dir/corpus/"
  echo "fuzz_$t: fuzzing for ${SECS}s from $(find "$dir/corpus" -type f | wc -l) seeds"
  grow=("${GROW_OPTS[@]}")
  case $t in
  gguf) grow=(-max_len=8192 -len_control=0) ;; # inputs are whole files; seeds up to 4 KB
  esac
  set +e
  timeout $((SECS + 300)) "$exe" "${LIBFUZZER_OPTS[@]}" "${grow[@]}" -max_total_time="$SECS" -artifact_prefix="$dir/artifacts/" \
    "$dir/corpus" >"$dir/log" 2>&1
  rc=$?
  set -e
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$dir/log" | tail -1)
  if ((rc != 0)); then
    echo FAILED >"$dir/status"
    repro=$(find "$dir/artifacts" -type f | head -1)
    {
      echo "fuzz_$t: FAILED (exit $rc) after ${runs:-?} runs; reproducer: ${repro:-none written (see the log)}; log: $dir/log"
      why "$dir/log"
      if [[ -n $repro ]]; then echo "    rerun: $exe $repro"; fi
    } >"$dir/summary"
  else
    echo ok >"$dir/status"
    echo "fuzz_$t: ok, ${runs:-?} runs, corpus $(find "$dir/corpus" -type f | wc -l) files" >"$dir/summary"
  fi
  return 0
}

for t in "${targets[@]}"; do
  exe=$BUILD/fuzz/fuzz_$t
  seeds=fuzz/corpus/$t
  dir=$work/$t
  rm -rf "$dir"
  mkdir -p "$dir/corpus" "$dir/artifacts"
  if [[ $mode == regress ]]; then
    n=0 bad=0
    for f in "$seeds"/*; do
      [[ -f $f ]] || continue
      n=$((n + 1))
      log=$dir/log-$(basename "$f")
      if ! "$exe" "${LIBFUZZER_OPTS[@]}" "$f" >"$log" 2>&1; then
        bad=$((bad + 1))
        failed+=("$t")
        echo "fuzz_$t: FAILED on $f (log: $log)"
        why "$log"
      fi
    done
    echo "fuzz_$t: $n corpus files, $bad failed"
  fi
done

# Fuzzing: JOBS targets at a time (each libFuzzer process is one thread), each
# for SECS seconds as before; the summaries then in the targets' order.
if [[ $mode == fuzz ]]; then
  running=0
  for t in "${targets[@]}"; do
    if ((running >= JOBS)); then
      wait -n || true # fuzz_one returns 0; its status file says how it went
      running=$((running - 1))
    fi
    fuzz_one "$t" &
    running=$((running + 1))
  done
  wait || true
  for t in "${targets[@]}"; do
    cat "$work/$t/summary" 2>/dev/null || echo "fuzz_$t: FAILED: no result (the run was killed?)"
    [[ $(cat "$work/$t/status" 2>/dev/null) == ok ]] || failed+=("$t")
  done
fi

if ((${#failed[@]})); then
  echo "fuzz: FAILED: $(printf '%s\n' "${failed[@]}" | sort -u | tr '\n' ' ')" >&2
  exit 1
fi
echo "fuzz: all passed (${targets[*]})"
