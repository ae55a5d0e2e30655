#!/usr/bin/env bash
# scripts/test-tsan.sh - heed's threads under ThreadSanitizer.
#
# Criterion cannot start under TSan ("Could not initialize inheritable
# arena"), so this builds the plain stress program tests/stress/tsan_stress.c
# in build-tsan (-DHEED_SANITIZE=thread, no Criterion tests, no tools) and runs
# it: the pool, attention on one shared KV cache, refusals on a busy runtime
# and speculative verification, from several threads, every result checked.
# Any TSan report fails the run (halt_on_error=1), as does a wrong result.
#
#   bash scripts/test-tsan.sh [stress options]   (see tests/stress/tsan_stress.c)
#   BUILD_TSAN=dir  build folder (build-tsan)    JOBS=N  build jobs (2)
#   CI=true         warnings are errors          CC=clang  another compiler
#   TSAN_OPTIONS    appended to ours (later options win)
#
# The suppressions in tests/stress/tsan.supp are for third-party code only.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=${BUILD_TSAN:-$root/build-tsan}
jobs=${JOBS:-2}
case "${CI:-}" in true | 1) werror=ON ;; *) werror=OFF ;; esac

echo "test-tsan: configuring $build"
cmake -S "$root" -B "$build" -DHEED_SANITIZE=thread -DHEED_BUILD_TESTS=OFF -DHEED_BUILD_TOOLS=OFF \
  -DHEED_WERROR="$werror" >/dev/null
if [ ! -d "$build/tests/stress" ]; then
  echo "test-tsan: the build has no heed_tsan_stress target: the top-level CMakeLists.txt must" >&2
  echo "  add_subdirectory(tests/stress) when HEED_SANITIZE=thread" >&2
  exit 2
fi
cmake --build "$build" --target heed_tsan_stress -j "$jobs"
bin=$build/tests/stress/heed_tsan_stress

export TSAN_OPTIONS="halt_on_error=1:second_deadlock_stack=1:exitcode=66:suppressions=$root/tests/stress/tsan.supp${TSAN_OPTIONS:+:$TSAN_OPTIONS}"

# Some kernels place mappings where this TSan runtime does not expect them
# ("FATAL: ThreadSanitizer: unexpected memory mapping", or a failed shadow
# mapping with a high vm.mmap_rnd_bits): then run without address-space
# randomisation (setarch -R), which puts everything back where TSan wants it.
runner=()
probe_log=$(mktemp)
trap 'rm -f "$probe_log"' EXIT
if ! "$bin" --only pool --threads 1 --pool-jobs 0 --quiet >"$probe_log" 2>&1; then
  if grep -Eq 'unexpected memory mapping|FATAL: ThreadSanitizer|failed to allocate|personality' "$probe_log"; then
    echo "test-tsan: TSan cannot start with this address-space layout; retrying under setarch -R:" >&2
    sed 's/^/  | /' "$probe_log" | head -5 >&2
    runner=(setarch "$(uname -m)" -R)
    if ! "${runner[@]}" "$bin" --only pool --threads 1 --pool-jobs 0 --quiet >"$probe_log" 2>&1; then
      echo "test-tsan: TSan cannot start here, even without ASLR:" >&2
      cat "$probe_log" >&2
      exit 2
    fi
  else
    echo "test-tsan: the stress fails before it starts:" >&2
    cat "$probe_log" >&2
    exit 1
  fi
fi

log=$build/tsan-stress.log
echo "test-tsan: running ${runner[*]:+${runner[*]} }$bin $*"
set +e
timeout 900 "${runner[@]}" "$bin" "$@" 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
set -e
if grep -q 'WARNING: ThreadSanitizer\|ERROR: ThreadSanitizer' "$log"; then
  echo "test-tsan: FAILED: ThreadSanitizer reported (log: $log)" >&2
  exit 1
fi
if [ "$rc" -ne 0 ]; then
  case $rc in
    124) why="timed out after 900 s" ;;
    66) why="ThreadSanitizer reported" ;;
    *) why="exit status $rc" ;;
  esac
  echo "test-tsan: FAILED: $why (log: $log)" >&2
  exit 1
fi
echo "test-tsan: passed"
