#!/usr/bin/env bash
# The `heed` command line as a user runs it: output, JSON validity, exit codes.
set -u
heed=$1
fails=0 passes=0
ok() { passes=$((passes + 1)); }
bad() { echo "FAIL: $*"; fails=$((fails + 1)); }
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT

"$heed" info >"$tmp/info.txt" 2>&1 && grep -q '^choice' "$tmp/info.txt" && grep -q '^tile plan' "$tmp/info.txt" && ok || bad "heed info"
"$heed" info --json >"$tmp/info.json" && python3 -c '
import json,sys; d=json.load(open(sys.argv[1]))
for k in ("machine","caches","numa","cpu_features","opencl_devices","candidates","choice","tile_plans","corrections"): assert k in d, k
gpu=any(x["type"]!="cpu" for x in d["opencl_devices"])  # a GPU outranks the cores; PoCL never does
assert d["choice"]["backend"]==("opencl" if gpu else "cpu"), d["choice"]' "$tmp/info.json" && ok || bad "heed info --json is not the documented JSON"

HEED_DEBUG=1 "$heed" info 2>"$tmp/dbg" >/dev/null && grep -q '^heed: backend \(cpu\|opencl\)' "$tmp/dbg" && ok || bad "HEED_DEBUG=1 logs the choice"

"$heed" bench probes --repeats 3 --json "$tmp/p.json" >"$tmp/p.txt" 2>&1 && python3 -c '
import json,sys; d=json.load(open(sys.argv[1])); r=d["results"]; assert "heed_info" in d and len(r)==6
need={"name","backend","isa","dtype","shape","ms_median","ms_min","ms_max","limit_kind","limit_value","achieved_value","unit","fraction"}
for x in r:
  assert need<=set(x), need-set(x)
  assert x["limit_kind"] in ("read_bandwidth","fma_peak") and x["fraction"]>0 and x["ms_min"]<=x["ms_median"]<=x["ms_max"]
  assert isinstance(x["shape"],dict)' "$tmp/p.json" && ok || { bad "heed bench probes --json"; cat "$tmp/p.txt"; }

"$heed" bench attention --backend cpu --ctx 1024 --repeats 1 --kv q8 --json "$tmp/a.json" >"$tmp/a.txt" 2>&1 && python3 -c '
import json,sys; r=json.load(open(sys.argv[1]))["results"]; names=[x["name"] for x in r]
assert names==["decode.ctx1024","decode.ctx1024.onednn","prefill.f16","prefill.bf16","prefill.onednn",
               "decode.ctx1024.q8","prefill.f16.q8"], names
assert r[5]["dtype"]=="q8" and r[5]["shape"]["k_group"]==32
for x in r: assert x["ms_median"]>0 and x["fraction"]>0, x
assert r[0]["limit_kind"]=="read_bandwidth" and r[2]["limit_kind"]=="fma_peak" and r[0]["shape"]["ctx"]==1024' "$tmp/a.json" &&
  grep -q "faster than the unfused oneDNN baseline" "$tmp/a.txt" && grep -q "decode.ctx1024.q8 .*x the f16 time" "$tmp/a.txt" &&
  ok || { bad "heed bench attention"; cat "$tmp/a.txt"; }

"$heed" bench kvquant --json "$tmp/q.json" >"$tmp/q.txt" 2>&1 && python3 -c '
import json,sys; d=json.load(open(sys.argv[1])); r={(x["format"],x["data"]):x for x in d["results"]}
assert len(r)==22, len(r)
for x in r.values(): assert 0 <= x["nmse"] < 1 and x["max_abs"] >= 0, x
# q8 is far closer than q4; with outlier channels in K, per-channel K (KIVI) beats per-token K
assert r[("q8 per token","random")]["nmse"] < r[("q4 group 32","random")]["nmse"] / 10
assert r[("q4 K/channel 128 V/token 128","outliers")]["nmse"] < r[("q4 group 128","outliers")]["nmse"] / 5' "$tmp/q.json" \
  && ok || { bad "heed bench kvquant"; cat "$tmp/q.txt"; }

"$heed" bench spec --repeats 1 --json "$tmp/s.json" >"$tmp/s.txt" 2>&1 && python3 -c '
import json,sys; r=json.load(open(sys.argv[1]))["results"]; names=[x["name"] for x in r]
assert len(names)==27 and "spec.v32000.k8.sample_accept0.6" in names and "spec.v262144.k16.sample" in names and "spec.v151936.k8.topp0.95" in names, names
for x in r: assert x["ms_median"]>0 and x["fraction"]>0 and x["limit_kind"]=="read_bandwidth", x' "$tmp/s.json" &&
  grep -q "spec.v32000.k4.greedy .*x the time to read its logits once" "$tmp/s.txt" &&
  grep -qE "^ +8 +[0-9]+ +[0-9]+ +[0-9]+ +[0-9.]+%" "$tmp/s.txt" &&
  ok || { bad "heed bench spec"; cat "$tmp/s.txt"; }

expect_fail() { # expect_fail "needle" env... -- args...
  local needle=$1; shift
  local envs=(); while [ "$1" != "--" ]; do envs+=("$1"); shift; done; shift
  if env "${envs[@]}" "$heed" "$@" >"$tmp/o" 2>&1; then bad "'${envs[*]} heed $*' should fail"; return; fi
  grep -qF -- "$needle" "$tmp/o" && ok || { bad "'${envs[*]} heed $*' should say '$needle'"; cat "$tmp/o"; }
}
expect_fail "HEED_BACKEND=gpu: unknown backend" HEED_BACKEND=gpu -- info
expect_fail "HEED_ISA=sse9" HEED_ISA=sse9 -- info
expect_fail "HEED_THREADS=0" HEED_THREADS=0 -- info
expect_fail "HEED_THREADS=99999" HEED_THREADS=99999 -- info
expect_fail "unknown suite 'nope'" X=1 -- bench nope
expect_fail "--repeats 0" X=1 -- bench probes --repeats 0
expect_fail "--ctx 12,x" X=1 -- bench attention --ctx 12,x
expect_fail "--kv q5" X=1 -- bench attention --kv q5
expect_fail "--kv f16" X=1 -- bench attention --kv f16
expect_fail "--backend vulkan" X=1 -- bench attention --backend vulkan
expect_fail "cannot read /nonexistent/x.c" X=1 -- bench spec --file /nonexistent/x.c
expect_fail "unknown command 'frobnicate'" X=1 -- frobnicate
expect_fail "unknown argument '--yaml'" X=1 -- info --yaml

echo "cli: $passes passed, $fails failed"
[ $fails -eq 0 ]
