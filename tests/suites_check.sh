#!/usr/bin/env bash
# scripts/run-suites.sh runs every suite even when an earlier one fails, says
# how each went, and fails at the end.
set -u
here=$(cd "$(dirname "$0")/.." && pwd)
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
cat >"$tmp/make" <<'M'
#!/usr/bin/env bash
t=${@: -1}
echo "$t" >>"$(dirname "$0")/ran"
[ "$t" != native ]
M
chmod +x "$tmp/make"
MAKE="$tmp/make" bash "$here/scripts/run-suites.sh" native arm64 >"$tmp/out" 2>&1; rc=$?
fails=0
[ $rc -ne 0 ] || { echo "FAIL: a failed suite must fail the run"; fails=1; }
[ "$(tr '\n' ' ' <"$tmp/ran")" = "native arm64 " ] || { echo "FAIL: both suites must run; ran: $(cat "$tmp/ran")"; fails=1; }
grep -q '^  native: FAILED' "$tmp/out" && grep -q '^  arm64: passed' "$tmp/out" ||
  { echo "FAIL: each suite's result must be reported"; cat "$tmp/out"; fails=1; }
rm -f "$tmp/ran"
MAKE="$tmp/make" bash "$here/scripts/run-suites.sh" arm64 >"$tmp/out" 2>&1 || { echo "FAIL: passing suites pass"; fails=1; }
[ $fails = 0 ] && echo "suites: run-suites.sh checked"
exit $fails
