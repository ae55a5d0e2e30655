#!/usr/bin/env bash
# make test-asan: heed built with ASan + UBSan (HEED_SANITIZE=address) in a
# build folder of its own, the whole ctest suite run under it, then every
# sanitizer report collected. Fails on a failing test and on any report not
# suppressed, including LeakSanitizer reports written when a Criterion worker
# exits, after Criterion has already counted its test passed.
#
#   BUILD_ASAN=dir   build folder (default build-asan)
#   JOBS=N           build jobs (default 2)
#   CI=true          warnings are errors
#   CTEST_ARGS=...   extra ctest arguments, e.g. "-R opencl"
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
root=$PWD
build=${BUILD_ASAN:-build-asan}
case "${CI:-}" in true | 1) werror=ON ;; *) werror=OFF ;; esac

cfg=$(cmake -S . -B "$build" -DHEED_SANITIZE=address -DHEED_WERROR="$werror" 2>&1) || { echo "$cfg"; exit 1; }
grep -E '^-- tests:' <<<"$cfg" || true # what the suite leaves out in this build, and why
cmake --build "$build" -j "${JOBS:-2}" || exit 1
build=$(cd "$build" && pwd)

logs=$build/sanitizer-logs
rm -rf "$logs" "$build/xdg-cache" "$build/Testing/Temporary/LastTest.first.log"
mkdir -p "$logs" "$build/xdg-cache"
# A cold cache every run, for heed's OpenCL binaries and PoCL's kernels alike:
# the compile paths run (and their leaks are met) as on a fresh CI machine.
export XDG_CACHE_HOME=$build/xdg-cache

# Each process (Criterion forks one per test, plus its runner) writes
# asan.<pid>, only if it has something to report; this script reads them all.
#  abort_on_error=1: a memory error inside a test aborts it (Criterion: CRASH).
#  exitcode=0: a leak found at exit leaves the exit status alone. Leaks are
#    judged here, from the files, and never by Criterion: its runner itself
#    leaks now and then (below), which would fail a test that passed.
#  strict_string_checks=1: a string a libc call reads must be NUL-terminated
#    even where the call stops early.
#  Allocation stacks use the default (fast) unwinder; tests/lsan.supp says what
#  that means for PoCL and LLVM, and holds the third-party suppressions.
# A caller's own ASAN_OPTIONS/LSAN_OPTIONS/UBSAN_OPTIONS come last and win.
export ASAN_OPTIONS="log_path=$logs/asan:detect_leaks=1:abort_on_error=1:exitcode=0:strict_string_checks=1${ASAN_OPTIONS:+:$ASAN_OPTIONS}"
export LSAN_OPTIONS="suppressions=$root/tests/lsan.supp:print_suppressions=0${LSAN_OPTIONS:+:$LSAN_OPTIONS}"
# UBSan stops at the first error (the build has -fno-sanitize-recover too) and
# aborts the test. GCC's UBSan ignores log_path and writes to stderr; ctest
# keeps that in Testing/Temporary/LastTest.log, read below.
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:abort_on_error=1${UBSAN_OPTIONS:+:$UBSAN_OPTIONS}"

start=$SECONDS
# shellcheck disable=SC2086
(cd "$build" && ctest -j "${JOBS:-2}" --output-on-failure ${CTEST_ARGS:-})
ctest_rc=$?
echo "test-asan: ctest finished in $((SECONDS - start)) s (exit $ctest_rc)"

# LeakSanitizer's own fault: its tracer thread, stopping the process's threads
# for the leak check at exit, crashes with SIGSEGV now and then ("Tracer caught
# signal 11 ... LeakSanitizer has encountered a fatal error"; a known fault of
# the sanitizer runtime, google/sanitizers#1353), after the test body passed;
# Criterion then counts the test as crashed in its teardown. Such a file holds
# no finding, only a leak check that could not run: it is set aside, and the
# suites ctest counted as failed run once more. A report of anything else, or
# a failure in the second run, still fails this script.
tracer_only() {
  grep -q 'Tracer caught signal' "$1" && grep -q 'LeakSanitizer has encountered a fatal error' "$1" &&
    ! grep -qE 'ERROR: (Address|Leak|Undefined)Sanitizer|runtime error:|^(Direct|Indirect) leak of' "$1"
}
shopt -s nullglob
tracer=0
for f in "$logs"/asan.*; do
  if tracer_only "$f"; then
    tracer=$((tracer + 1))
    mkdir -p "$logs/tracer"
    mv "$f" "$logs/tracer/"
  fi
done
if [ "$tracer" -gt 0 ]; then
  echo "test-asan: LeakSanitizer's tracer crashed at exit in $tracer process(es) (google/sanitizers#1353; files in $logs/tracer): no finding, the leak check did not run there"
  if [ "$ctest_rc" -ne 0 ]; then
    echo "test-asan: rerunning the suites ctest counted as failed, once"
    # the rerun rewrites LastTest.log: the first run's stays for the check below
    cp "$build/Testing/Temporary/LastTest.log" "$build/Testing/Temporary/LastTest.first.log"
    (cd "$build" && ctest --rerun-failed --output-on-failure)
    ctest_rc=$?
    echo "test-asan: the rerun exited $ctest_rc"
    for f in "$logs"/asan.*; do
      if tracer_only "$f"; then
        echo "test-asan: the tracer crashed again in the rerun ($(basename "$f")): counted as a report"
      fi
    done
  fi
fi

# A report made only of leaks whose allocation was called from Criterion's own
# code (frame #1 in libcriterion) is Criterion's, not heed's: BoxFort's timeout
# bookkeeping in the runner (48-byte requests for tests with .timeout) leaks
# now and then. No suppression line can say "called from": every allocation a
# test makes has criterion_internal_test_main further down its stack, so
# leak:libcriterion would hide them all.
criterion_only() {
  awk '/ERROR: AddressSanitizer|runtime error:/ { other = 1 }
       /^(Direct|Indirect) leak of/ { blocks++; want = 1; next }
       want && /^ *#1 / { if ($0 ~ /libcriterion\.so/) crit++; want = 0 }
       END { exit !(blocks > 0 && crit == blocks && !other) }' "$1"
}

reports=0
for f in "$logs"/asan.*; do
  [ -s "$f" ] || continue
  if criterion_only "$f"; then
    echo "test-asan: ignored: leaks allocated by Criterion itself ($(basename "$f"): $(grep -m1 '^SUMMARY' "$f"))"
    continue
  fi
  reports=$((reports + 1))
  echo
  echo "=== sanitizer report $f"
  grep -m1 -E '(ERROR|WARNING): [A-Za-z]+Sanitizer' "$f" || true
  # The first frame in heed's sources (a test's *_impl names the test).
  grep -m1 -E "in [^ ]+ $root/" "$f" | sed 's/^ */first heed frame: /' || true
  cat "$f"
done
# Reports written to stderr (UBSan under GCC; anything if log_path failed), in
# the first run's log and, after a rerun, the rerun's.
pat='runtime error:|ERROR: (Address|Leak|Undefined)Sanitizer'
for last in "$build/Testing/Temporary/LastTest.first.log" "$build/Testing/Temporary/LastTest.log"; do
  if [ -f "$last" ] && grep -qE "$pat" "$last"; then
    reports=$((reports + $(grep -cE "$pat" "$last")))
    echo
    echo "=== sanitizer reports in the tests' output ($last)"
    grep -B2 -A20 -E "$pat" "$last"
  fi
done

echo
if [ "$reports" -gt 0 ]; then
  echo "test-asan: FAILED: $reports sanitizer report(s), above (files in $logs)"
  exit 1
fi
if [ "$ctest_rc" -ne 0 ]; then
  echo "test-asan: FAILED: ctest exited $ctest_rc; no sanitizer report"
  exit "$ctest_rc"
fi
echo "test-asan: passed, no sanitizer reports"
