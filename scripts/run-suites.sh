#!/usr/bin/env bash
# Runs each make target named, whatever the ones before it did, then says how
# each went and fails at the end if any failed: a native failure must not hide
# whether the arm64 (NEON) suite passes. MAKE names the make to run.
#
#   scripts/run-suites.sh test-native test-arm64
set -u
make=${MAKE:-make}
status=0 summary=""
for t in "$@"; do
  start=$(date +%s)
  if $make --no-print-directory "$t"; then r=passed; else r=FAILED status=1; fi
  summary+="  $t: $r ($(( $(date +%s) - start )) s)"$'\n'
done
printf '\nsuites:\n%s' "$summary"
exit $status
