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
HEED_DEBUG=0 "$heed" info 2>"$tmp/dbg" >/dev/null && ! grep -q '^heed:' "$tmp/dbg" && ok || bad "HEED_DEBUG=0 logs nothing"

"$heed" bench probes --repeats 3 --json "$tmp/p.json" >"$tmp/p.txt" 2>&1 && python3 -c '
import json,sys; d=json.load(open(sys.argv[1])); r=d["results"]; assert "heed_info" in d and 6<=len(r)<=8, len(r)
# the dot-product peaks, where the level has them, come last, beside the FMA peak
assert [x["name"] for x in r[6:]] in ([], ["probe.int8_dot_peak"], ["probe.int8_dot_peak","probe.bf16_dot_peak"]), r[6:]
assert len(r)>6 or r[0]["isa"] not in ("avx2","avx512"), "an x86 SIMD level has an int8 probe"
need={"name","backend","isa","dtype","shape","ms_median","ms_min","ms_max","limit_kind","limit_value","achieved_value","unit","fraction"}
for x in r:
  assert need<=set(x), need-set(x)
  assert x["limit_kind"] in ("read_bandwidth","fma_peak") and x["fraction"]>0 and x["ms_min"]<=x["ms_median"]<=x["ms_max"]
  assert isinstance(x["shape"],dict)' "$tmp/p.json" && ok || { bad "heed bench probes --json"; cat "$tmp/p.txt"; }

"$heed" bench attention --backend cpu --ctx 1024 --repeats 1 --kv q8 --json "$tmp/a.json" >"$tmp/a.txt" 2>&1 && python3 -c '
import json,sys; r=json.load(open(sys.argv[1]))["results"]; by={x["name"]:x for x in r}
# with a SIMD ISA each decode case has a twin on the reference (scalar) kernels; prefill only where one call is cheap
ref=r[0]["isa"]!="scalar"; R=lambda n: [n+".reference"] if ref else []
names=[x["name"] for x in r if not (x["name"].startswith("prefill.") and x["name"].endswith(".reference"))]
assert names==["decode.ctx1024"]+R("decode.ctx1024")+["decode.ctx1024.onednn","prefill.f16","prefill.bf16","prefill.onednn",
               "decode.ctx1024.q8"]+R("decode.ctx1024.q8")+["prefill.f16.q8"], names
q8=by["decode.ctx1024.q8"]; assert q8["dtype"]=="q8" and q8["shape"]["k_group"]==32
for x in r: assert x["ms_median"]>0 and x["fraction"]>0, x
assert r[0]["limit_kind"]=="read_bandwidth" and by["prefill.f16"]["limit_kind"]=="fma_peak" and r[0]["shape"]["ctx"]==1024
# each case names its twins and the speed-up over them: the other median over its own
v={x["name"]:{(e["kind"],e["case"]):e["speedup"] for e in x["versus"]} for x in r}
def twin(n,kind,o):
  s=v[n][(kind,o)]; assert abs(s-by[o]["ms_median"]/by[n]["ms_median"]) <= 1e-3*s, (n,kind,o,s)
twin("decode.ctx1024","baseline","decode.ctx1024.onednn"); twin("prefill.f16","baseline","prefill.onednn")
twin("prefill.bf16","baseline","prefill.onednn"); twin("decode.ctx1024.q8","baseline","decode.ctx1024.onednn")
twin("decode.ctx1024.q8","f16","decode.ctx1024"); twin("prefill.f16.q8","f16","prefill.f16")
if ref: twin("decode.ctx1024","reference","decode.ctx1024.reference"); twin("decode.ctx1024.q8","reference","decode.ctx1024.q8.reference")
assert len(v["decode.ctx1024"])==1+ref and v["decode.ctx1024.onednn"]=={} and v["prefill.onednn"]=={}' "$tmp/a.json" &&
  grep -qE "(faster|slower) than the unfused oneDNN baseline" "$tmp/a.txt" && grep -q "decode.ctx1024.q8 .*x the f16 time" "$tmp/a.txt" &&
  { grep -q "isa scalar" "$tmp/a.txt" || grep -q "decode.ctx1024 .*faster than the reference (scalar) kernels" "$tmp/a.txt"; } &&
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

# Every JSON the tool writes follows bench/schema.json.
schema=$(dirname "$0")/../bench/schema.json
for j in p a s; do
  python3 -c '
import json,sys,jsonschema; jsonschema.validate(json.load(open(sys.argv[1])), json.load(open(sys.argv[2])))' "$tmp/$j.json" "$schema" \
    && ok || bad "$j.json does not follow bench/schema.json"
done

# A named shape with a sliding window, a batch, and the plot: the oneDNN baseline
# (window applied) must agree with heed before it is timed.
"$heed" bench attention --backend cpu --shape gemma-3-270m --batch 2 --ctx 1024 --kv none --repeats 1 \
    --json "$tmp/g.json" --plot "$tmp/g.png" >"$tmp/g.txt" 2>&1 && python3 -c '
import json,sys,struct,zlib,jsonschema
d=json.load(open(sys.argv[1])); jsonschema.validate(d, json.load(open(sys.argv[3])))
r={x["name"]:x for x in d["results"]}
sh=r["decode.ctx1024"]["shape"]
assert (sh["model"],sh["q_heads"],sh["kv_heads"],sh["head_dim"],sh["window"],sh["batch"])==("Gemma-3-270M",4,1,256,512,2), sh
assert "decode.ctx1024.onednn" in r and "prefill.onednn" in r, list(r)
# decode is charged the window: 2 sequences x 512 keys x 1 head x (K+V) x 256 x 2 bytes
x=r["decode.ctx1024"]; assert abs(x["achieved_value"]*x["ms_median"]*1e6 - 2*512*2*256*2) < 2*512*2*256*2*1e-3, x
# the plot is a PNG: signature, chunks with good CRCs, IHDR first, IEND last, image data that inflates
b=open(sys.argv[2],"rb").read(); assert b[:8]==b"\x89PNG\r\n\x1a\n"
i=8; kinds=[]; idat=b""
while i < len(b):
  n,=struct.unpack(">I",b[i:i+4]); k=b[i+4:i+8]; c=b[i+8:i+8+n]; crc,=struct.unpack(">I",b[i+8+n:i+12+n])
  assert zlib.crc32(k+c)&0xffffffff==crc, k; kinds.append(k); idat+=c if k==b"IDAT" else b""; i+=12+n
assert kinds[0]==b"IHDR" and kinds[-1]==b"IEND" and b"IDAT" in kinds, kinds
w,h=struct.unpack(">II",b[16:24]); assert w>=800 and h>=400, (w,h); assert len(zlib.decompress(idat)) > w*h' \
  "$tmp/g.json" "$tmp/g.png" "$schema" && ok || { bad "heed bench attention --shape gemma-3-270m --batch 2 --plot"; cat "$tmp/g.txt"; }

# --compare: an identical file passes, a planted 2x regression is flagged (exit 1)
"$heed" bench compare "$tmp/g.json" "$tmp/g.json" >"$tmp/c.txt" 2>&1 && grep -q "0 regressions" "$tmp/c.txt" && ok ||
  { bad "heed bench compare of a file with itself"; cat "$tmp/c.txt"; }
python3 -c '
import json,sys; d=json.load(open(sys.argv[1])); d["results"][0]["ms_median"]*=2; json.dump(d,open(sys.argv[2],"w"))' \
  "$tmp/g.json" "$tmp/g2.json"
"$heed" bench compare "$tmp/g.json" "$tmp/g2.json" >"$tmp/c.txt" 2>&1; rc=$?
[ $rc = 1 ] && grep -q "decode.ctx1024 .* 2.000  REGRESSION" "$tmp/c.txt" && grep -q "1 regression beyond 10%" "$tmp/c.txt" && ok ||
  { bad "heed bench compare: a 2x regression is flagged with exit 1 (rc $rc)"; cat "$tmp/c.txt"; }
"$heed" bench compare "$tmp/g2.json" "$tmp/g.json" >"$tmp/c.txt" 2>&1 && grep -q "0.500  faster" "$tmp/c.txt" && ok ||
  { bad "heed bench compare: 2x faster is not a regression"; cat "$tmp/c.txt"; }
echo '{"schema":"heed-bench/1","results":[{"name":"x"}]}' >"$tmp/bad.json"
echo 'not json' >"$tmp/notjson.json"

expect_fail() { # expect_fail "needle" env... -- args...
  local needle=$1; shift
  local envs=(); while [ "$1" != "--" ]; do envs+=("$1"); shift; done; shift
  if env "${envs[@]}" "$heed" "$@" >"$tmp/o" 2>&1; then bad "'${envs[*]} heed $*' should fail"; return; fi
  grep -qF -- "$needle" "$tmp/o" && ok || { bad "'${envs[*]} heed $*' should say '$needle'"; cat "$tmp/o"; }
}
expect_fail "HEED_BACKEND=gpu: unknown backend" HEED_BACKEND=gpu -- info
expect_fail "HEED_ISA=sse9" HEED_ISA=sse9 -- info
expect_fail "HEED_THREADS=0" HEED_THREADS=0 -- info
expect_fail "HEED_DEBUG=yes: accepted: 1" HEED_DEBUG=yes -- info
expect_fail "HEED_DEBUG=2: accepted: 1" HEED_DEBUG=2 -- info
expect_fail "HEED_THREADS=99999" HEED_THREADS=99999 -- info
expect_fail "HEED_THREADS=+2" "HEED_THREADS=+2" -- info
expect_fail "HEED_THREADS= 2" "HEED_THREADS= 2" -- info
expect_fail "unknown suite 'nope'" X=1 -- bench nope
expect_fail "--repeats 0" X=1 -- bench probes --repeats 0
expect_fail "--ctx 12,x" X=1 -- bench attention --ctx 12,x
expect_fail "--kv q5" X=1 -- bench attention --kv q5
expect_fail "--kv f16" X=1 -- bench attention --kv f16
expect_fail "--backend vulkan" X=1 -- bench attention --backend vulkan
expect_fail "cannot read /nonexistent/x.c" X=1 -- bench spec --file /nonexistent/x.c
expect_fail "unknown command 'frobnicate'" X=1 -- frobnicate
expect_fail "unknown argument '--yaml'" X=1 -- info --yaml

expect_fail "unknown shape 'Llama-9'; named shapes: Llama-3.1-8B" X=1 -- bench attention --shape Llama-9
expect_fail "q=30 is not a multiple of kv=8" X=1 -- bench attention --shape q=30,kv=8,d=128
expect_fail "needs q, kv and d" X=1 -- bench attention --shape q=32,d=128
expect_fail "unknown key 'heads'" X=1 -- bench attention --shape heads=32,kv=8,d=128
expect_fail "d=0 is out of range" X=1 -- bench attention --shape q=32,kv=8,d=0
expect_fail "d=100 is out of range (q, kv 1..256; d a multiple of 16 in 32..256" X=1 -- bench attention --shape q=32,kv=8,d=100
expect_fail "d=272 is out of range" X=1 -- bench attention --shape q=32,kv=8,d=272
expect_fail "key 'q' is given twice" X=1 -- bench attention --shape q=32,q=64,kv=8,d=128
expect_fail "'' is not key=value" X=1 -- bench attention --shape q=32,kv=8,d=128,
# One rule for every list: empty items, and items given twice, are refused alike.
expect_fail "--ctx 4096,,8192: item 2 is empty" X=1 -- bench attention --ctx 4096,,8192
expect_fail "--kv q8,,q4: item 2 is empty" X=1 -- bench attention --kv q8,,q4
expect_fail "--ctx ,4096: item 1 is empty" X=1 -- bench attention --ctx ,4096
expect_fail "--kv q8,: item 2 is empty" X=1 -- bench attention --kv q8,
expect_fail "--ctx 4096,4096: 4096 is listed twice" X=1 -- bench attention --ctx 4096,4096
expect_fail "--kv q4,q4: q4 is listed twice" X=1 -- bench attention --kv q4,q4
expect_fail "--ctx 1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17: more than 16 items" X=1 -- bench attention \
  --ctx 1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17
expect_fail "--batch 0" X=1 -- bench attention --batch 0
expect_fail "--isa sse9" X=1 -- bench attention --isa sse9
expect_fail "a context of 16000000 tokens x batch 8 of Llama-3.1-8B needs 902.2 GiB" X=1 -- bench attention --ctx 16000000 --batch 8
expect_fail "notjson.json is not JSON (a parse error at byte 0)" X=1 -- bench compare "$tmp/notjson.json" "$tmp/g.json"
expect_fail "is not a heed bench result" X=1 -- bench compare "$tmp/q.json" "$tmp/g.json"
expect_fail "results[0] lacks a field" X=1 -- bench compare "$tmp/bad.json" "$tmp/g.json"
expect_fail "cannot read /nonexistent/old.json" X=1 -- bench probes --compare /nonexistent/old.json
expect_fail "no case of this run is in the earlier file" X=1 -- bench compare "$tmp/g.json" "$tmp/p.json"
expect_fail "--threshold -1" X=1 -- bench compare "$tmp/g.json" "$tmp/g.json" --threshold -1
expect_fail "--plot: the plots are of the attention suite" X=1 -- bench probes --plot "$tmp/x.png"

# A malformed recording named by hwloc's HWLOC_XMLFILE is refused, not handed to
# hwloc (whose XML loader crashed on it: exit 139).
printf '<topologyversion="2.0' >"$tmp/bad.xml"
HWLOC_XMLFILE="$tmp/bad.xml" "$heed" info >"$tmp/o" 2>&1; rc=$?
[ $rc = 1 ] && grep -q "HWLOC_XMLFILE '$tmp/bad.xml' is not well-formed XML" "$tmp/o" && ok ||
  { bad "HWLOC_XMLFILE=bad.xml heed info: rc $rc (want 1 and a message)"; cat "$tmp/o"; }

# Output paths are opened before anything is measured: a bad one fails at once,
# with no case run (no "[1/N]" progress line) and the path named.
expect_fail_early() { # expect_fail_early "needle" -- args...
  local needle=$1; shift 2
  if timeout 60 "$heed" "$@" >"$tmp/o" 2>&1; then bad "'heed $*' should fail"; return; fi
  grep -qF -- "$needle" "$tmp/o" && ! grep -q '^\[1/' "$tmp/o" && ok ||
    { bad "'heed $*' should say '$needle' before measuring anything"; cat "$tmp/o"; }
}
expect_fail_early "--json /nonexistent/dir/x.json: cannot write" -- bench probes --repeats 1 --json /nonexistent/dir/x.json
expect_fail_early "--plot /nonexistent/dir/x.png: cannot write" -- bench attention --ctx 256 --kv none --repeats 1 \
  --no-baseline --plot /nonexistent/dir/x.png
expect_fail_early "--json /nonexistent/dir/q.json: cannot write" -- bench kvquant --json /nonexistent/dir/q.json

# heed model info/dump on the tiny GGUFs of the fuzz seeds (the real models: tests/gguf_oracle.py).
seeds=$(cd "$(dirname "$0")/../fuzz/corpus/gguf" && pwd)
"$heed" model info "$seeds/seed-qwen2" >"$tmp/o" 2>&1 && grep -q '^architecture  qwen2' "$tmp/o" &&
  grep -q '^  q4 ' "$tmp/o" && ok || { bad "heed model info"; cat "$tmp/o"; }
"$heed" model info --json "$seeds/seed-gemma3" >"$tmp/m.json" && python3 -c '
import json,sys; d=json.load(open(sys.argv[1])); c=d["config"]
assert d["architecture"]=="gemma3" and c["n_layer"]==2 and c["head_dim_k"]==32 and c["sliding_window"]==16, c
assert [x["dtype"] for x in d["kv_cache"]["per_token"]]==["f32","f16","bf16","q8","q4","e4m3","e5m2"]
assert d["tokenizer"]["special"]["eos"]=={"id":1,"text":"t1"}, d["tokenizer"]' "$tmp/m.json" && ok || bad "heed model info --json"
"$heed" model dump "$seeds/seed-types" >"$tmp/d.json" && python3 -c '
import json,sys; d=json.load(open(sys.argv[1])); m={x["key"]:x for x in d["metadata"]}
assert m["arr.nested"]["value"]=={"elem_type":"arr","items":[{"elem_type":"i32","items":[1,2]},{"elem_type":"i32","items":[3]}]}
assert m["f64"]["value"]==1e-300 and m["i8"]["value"]==-7 and [t["name"] for t in d["tensors"]]==["f32","f16","q8_0","q4_k"]' \
  "$tmp/d.json" && ok || bad "heed model dump"
"$heed" model info "$tmp/absent.gguf" >"$tmp/o" 2>&1; rc=$?
[ $rc = 1 ] && grep -q "absent.gguf: cannot open" "$tmp/o" && ok || bad "heed model info on a missing file: rc $rc"
"$heed" model dump "$seeds/seed-split-part" >"$tmp/o" 2>&1; rc=$?
[ $rc = 1 ] && grep -q "key 'split.count'" "$tmp/o" && ok || bad "heed model dump on a lone split part: rc $rc"
"$heed" model info >"$tmp/o" 2>&1; rc=$?
[ $rc = 2 ] && grep -q "usage: heed model info" "$tmp/o" && ok || bad "heed model info without a file: rc $rc"

# heed tokenize: usage and refusals (the tiny seeds have no usable tokenizer), then
# the real models when setup could fetch them (chat_prompt_check.py compares them
# with jinja2 and `tokenizers`).
"$heed" tokenize "$seeds/seed-qwen2" -p hi >"$tmp/o" 2>&1; rc=$?
[ $rc = 1 ] && grep -q "gpt2 tokenizer without 'tokenizer.ggml.merges'" "$tmp/o" && ok || bad "heed tokenize, no merges: rc $rc"
"$heed" tokenize "$seeds/seed-types" -p hi >"$tmp/o" 2>&1; rc=$?
[ $rc = 1 ] && grep -q "no key 'tokenizer.ggml.model'" "$tmp/o" && ok || bad "heed tokenize, no tokenizer: rc $rc"
for args in "X" "X -p a -f b" "X -p a --chat-template chatml" "X --chat r.json --parse-special" "X -p a --json --ids" "X -p"; do
  "$heed" tokenize $args >"$tmp/o" 2>&1; rc=$?
  [ $rc = 2 ] && grep -q "usage: heed tokenize" "$tmp/o" && ok || bad "heed tokenize $args: rc $rc, expected a usage error"
done
models=${HEED_MODELS:-$HOME/.cache/heed/models}
qwen=$models/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf
gemma=$models/gemma-3-270m-q4_k_m.gguf
if [ -f "$qwen" ] && [ -f "$gemma" ]; then
  # control text stays text unless --parse-special
  [ "$("$heed" tokenize "$qwen" -p 'a<|im_start|>b' --ids)" = "[64, 27, 91, 318, 4906, 91, 29, 65]" ] && ok ||
    bad "heed tokenize without --parse-special"
  [ "$("$heed" tokenize "$qwen" -p 'a<|im_start|>b' --ids --parse-special)" = "[64, 151644, 65]" ] && ok ||
    bad "heed tokenize --parse-special"
  # Gemma adds <bos> (add_bos_token), not with --no-add-special; pieces in the text listing
  [ "$("$heed" tokenize "$gemma" -p 'Hello world' --ids)" = "[2, 9259, 1902]" ] && ok || bad "heed tokenize gemma bos"
  [ "$("$heed" tokenize "$gemma" -p 'Hello world' --ids --no-add-special)" = "[9259, 1902]" ] && ok ||
    bad "heed tokenize --no-add-special"
  printf 'x\ty\n' | "$heed" tokenize "$gemma" -f - >"$tmp/o" && grep -q "'\\\\t'" "$tmp/o" && grep -q '^5 tokens$' "$tmp/o" &&
    ok || { bad "heed tokenize -f -"; cat "$tmp/o"; }
  echo '{"messages":[{"role":"user","content":"hi"}]}' >"$tmp/req.json"
  "$heed" tokenize "$gemma" --chat "$tmp/req.json" --chat-template chatml --json >"$tmp/o" && python3 -c '
import json,sys; d=json.load(open(sys.argv[1]))
assert d["template"]=="chatml" and d["text"]=="<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n", d' "$tmp/o" &&
    ok || bad "heed tokenize --chat-template chatml"
  "$heed" tokenize "$gemma" --chat "$tmp/req.json" --chat-template gguf >"$tmp/o" 2>&1; rc=$?
  [ $rc = 1 ] && grep -q "has no chat template" "$tmp/o" && ok || bad "heed tokenize --chat-template gguf on gemma: rc $rc"
  "$heed" tokenize "$qwen" --chat "$tmp/req.json" --chat-template mistral >"$tmp/o" 2>&1; rc=$?
  [ $rc = 1 ] && grep -q "unknown built-in chat template 'mistral'; known: chatml, gemma, llama3" "$tmp/o" && ok ||
    bad "heed tokenize --chat-template mistral: rc $rc"
  echo '{"messages":[{"role":"user","content":"hi"},{"role":"assistant","tool_calls":[{"function":{"name":"f","arguments":"{bad"}}]}]}' >"$tmp/req.json"
  "$heed" tokenize "$qwen" --chat "$tmp/req.json" >"$tmp/o" 2>&1; rc=$?
  [ $rc = 1 ] && grep -q "messages\[1\].tool_calls\[0\].function.arguments is not valid JSON" "$tmp/o" && ok ||
    { bad "heed tokenize --chat, bad arguments: rc $rc"; cat "$tmp/o"; }
  "$heed" tokenize "$qwen" --chat "$tmp/absent.json" >"$tmp/o" 2>&1; rc=$?
  [ $rc = 1 ] && grep -q "cannot read '$tmp/absent.json'" "$tmp/o" && ok || bad "heed tokenize --chat on a missing file: rc $rc"

  # heed run / perplexity: refusals name the bad value; a short greedy run works
  "$heed" run "$gemma" -p "$(printf 'word %.0s' $(seq 1 80))" --ctx 32 >"$tmp/o" 2>&1; rc=$?
  [ $rc = 1 ] && grep -q "the prompt has .* tokens; the context (--ctx) holds 32" "$tmp/o" && ok || { bad "heed run, prompt past --ctx: rc $rc"; cat "$tmp/o"; }
  "$heed" run "$gemma" -p hi --kv q5 >"$tmp/o" 2>&1; rc=$?
  [ $rc = 2 ] && grep -q -- "--kv q5: accepted" "$tmp/o" && ok || bad "heed run --kv q5: rc $rc"
  "$heed" run "$gemma" -p hi --temp -1 >"$tmp/o" 2>&1; rc=$?
  [ $rc = 2 ] && grep -q -- "--temp -1: accepted" "$tmp/o" && ok || bad "heed run --temp -1: rc $rc"
  "$heed" run "$tmp/absent.gguf" -p hi >"$tmp/o" 2>&1; rc=$?
  [ $rc = 1 ] && grep -q "absent.gguf" "$tmp/o" && ok || bad "heed run on a missing model: rc $rc"
  "$heed" run "$gemma" -p "The capital of France is" -n 8 --temp 0 >"$tmp/o" 2>"$tmp/e" && grep -q "generated 8 tokens" "$tmp/e" &&
    grep -q "stop: length" "$tmp/e" && [ -s "$tmp/o" ] && ok || { bad "heed run greedy"; cat "$tmp/o" "$tmp/e"; }
  "$heed" run "$gemma" -p "a b a b a b a b" -n 12 --temp 0 --draft ngram --draft-k 4 >"$tmp/o2" 2>"$tmp/e" &&
    grep -q "draft ngram k=4" "$tmp/e" && ok || { bad "heed run --draft ngram"; cat "$tmp/e"; }
  "$heed" run "$gemma" -p "a b a b a b a b" -n 12 --temp 0 >"$tmp/o3" 2>/dev/null && cmp -s "$tmp/o2" "$tmp/o3" && ok ||
    bad "heed run: speculative and plain greedy runs differ"
  "$heed" run "$gemma" -p "1, 2, 3, 4," -n 40 --temp 0 --stop "7," >"$tmp/o" 2>"$tmp/e" && ! grep -q "7," "$tmp/o" &&
    grep -q "stop: stop string" "$tmp/e" && ok || { bad "heed run --stop"; cat "$tmp/o" "$tmp/e"; }
  "$heed" perplexity "$gemma" -f /usr/share/common-licenses/GPL-3 --ctx 64 --chunks 2 --json >"$tmp/o" 2>&1 && python3 -c '
import json,sys; d=json.load(open(sys.argv[1])); assert d["windows"]==2 and 1 < d["ppl"] < 1000, d' "$tmp/o" && ok ||
    { bad "heed perplexity --json"; cat "$tmp/o"; }
  "$heed" perplexity "$gemma" -f /etc/hostname --ctx 512 >"$tmp/o" 2>&1; rc=$?
  [ $rc = 1 ] && grep -q "one window of --ctx 512 needs more" "$tmp/o" && ok || bad "heed perplexity on a short text: rc $rc"
  # heed bench model: the heed-bench/1 schema, a plot, and --compare against a 100x faster run (so that
  # the noise of --repeats 1 beside other suites can never hide the regression)
  "$heed" bench model "$gemma" --depth 0,32 --kv f16,q8 --prompt 8 --gen 2 --repeats 1 --json "$tmp/bm.json" \
    --plot "$tmp/bm.png" >"$tmp/o" 2>&1 && python3 -c '
import json,sys,jsonschema
d=json.load(open(sys.argv[1])); jsonschema.validate(d, json.load(open(sys.argv[3])))
r=d["results"]; assert len(r)==8, len(r)
assert {(x["name"],x["dtype"],x["shape"]["depth"]) for x in r}=={(n,k,z) for n in ("model.prefill","model.decode") for k in ("f16","q8") for z in (0,32)}
assert all(x["shape"]["model"]=="gemma-3-270m-q4_k_m.gguf" and x["fraction"]>0 and x["limit_value"]>0 for x in r), r
assert {x["limit_kind"] for x in r if x["name"]=="model.decode"}=={"read_bandwidth"}
import platform  # the quantized matrices run on int8 dot products where the weight kernels have them (x86: avx2, vnni)
assert {x["limit_kind"] for x in r if x["name"]=="model.prefill"}=={"int8_dot_peak" if platform.machine()=="x86_64" else "fma_peak"}, r
assert open(sys.argv[2],"rb").read(8)==b"\x89PNG\r\n\x1a\n"' "$tmp/bm.json" "$tmp/bm.png" "$schema" && ok ||
    { bad "heed bench model --json --plot"; cat "$tmp/o"; }
  python3 -c '
import json,sys; d=json.load(open(sys.argv[1]))
for x in d["results"]: x["ms_median"]/=100
json.dump(d,open(sys.argv[2],"w"))' "$tmp/bm.json" "$tmp/bm2.json"
  "$heed" bench model "$gemma" --depth 0 --kv f16 --prompt 8 --gen 2 --repeats 1 --compare "$tmp/bm2.json" --threshold 0.2 \
    >"$tmp/o" 2>&1; rc=$?
  [ $rc = 1 ] && grep -q "model.decode f16 depth 0 .*REGRESSION" "$tmp/o" && grep -q "2 of 2 cases compared" "$tmp/o" && ok ||
    { bad "heed bench model --compare: a 100x regression flagged (rc $rc)"; cat "$tmp/o"; }
  "$heed" bench model "$gemma" --repeats 0 >"$tmp/o" 2>&1; rc=$?
  [ $rc = 2 ] && grep -q -- "--repeats 0: accepted: 1..15" "$tmp/o" && ok || bad "heed bench model --repeats 0: rc $rc"
  "$heed" bench model "$gemma" --compare "$tmp/absent.json" >"$tmp/o" 2>&1; rc=$?
  [ $rc = 1 ] && grep -q "absent.json" "$tmp/o" && ok || bad "heed bench model --compare of a missing file: rc $rc"
  # heed bench serve: two streaming clients against heed in process, the JSON's numbers adding up
  "$heed" bench serve "$gemma" --clients 2 --prompt 24 --gen 4 --requests 2 --threads 2 --json "$tmp/bs.json" \
    >"$tmp/o" 2>&1 && python3 -c '
import json,sys; d=json.load(open(sys.argv[1]))
assert d["schema"]=="heed-bench-serve/1" and d["server"]=="heed" and len(d["cases"])==1, d
c=d["cases"][0]
assert c["clients"]==2 and c["requests"]==4 and c["failed"]==0, c
assert 4 <= c["output_tokens"] <= 16 and c["output_tok_s"] > 0 and c["wall_s"] > 0, c
assert 0 < c["ttft_s"]["p50"] <= c["ttft_s"]["p90"] <= c["ttft_s"]["p99"] < c["wall_s"], c
assert c["tpot_s"]["p50"] >= 0 and c["cached_prompt_tokens"] >= 0, c' "$tmp/bs.json" && ok ||
    { bad "heed bench serve --json"; cat "$tmp/o" "$tmp/bs.json"; }
  # nothing listens there: every request fails, said in the table, the JSON (null percentiles) and the exit status
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  "$heed" bench serve --url "http://127.0.0.1:$port" --clients 1 --prompt 8 --gen 2 --requests 1 --json "$tmp/bs.json" \
    >"$tmp/o" 2>&1; rc=$?
  [ $rc = 1 ] && grep -q "1 requests failed" "$tmp/o" && python3 -c '
import json,sys; c=json.load(open(sys.argv[1]))["cases"][0]
assert c["failed"]==1 and c["ttft_s"]["p50"] is None, c' "$tmp/bs.json" && ok ||
    { bad "heed bench serve --url with nothing listening: rc $rc"; cat "$tmp/o"; }
  expect_fail "--prompt 0: accepted: a whole number in 1..100000" X=1 -- bench serve "$gemma" --prompt 0
  expect_fail "--gen x: accepted: a whole number" X=1 -- bench serve "$gemma" --gen x
  expect_fail "--requests -1: accepted" X=1 -- bench serve "$gemma" --requests -1
  expect_fail "--clients 0: numbers in 1..256" X=1 -- bench serve "$gemma" --clients 0
  expect_fail "--draft eagle: accepted: ngram, none" X=1 -- bench serve "$gemma" --draft eagle
  expect_fail "a MODEL or --url, not both" X=1 -- bench serve "$gemma" --url http://127.0.0.1:1
  expect_fail "a MODEL or --url is needed" X=1 -- bench serve --gen 4
  expect_fail "--url localhost:80: accepted: http://IPV4:PORT" X=1 -- bench serve --url localhost:80
  expect_fail "cannot write --json /nonexistent/x.json" X=1 -- bench serve "$gemma" --json /nonexistent/x.json
  # heed bench reuse: the three turn kinds, counts that add up, KL and top-1 in range
  "$heed" bench reuse "$gemma" --tokens 512 --gen 2 --threads 2 --json "$tmp/br.json" >"$tmp/o" 2>&1 &&
    python3 - "$tmp/br.json" <<'PY' && ok || { bad "heed bench reuse"; cat "$tmp/o" "$tmp/br.json"; }
import json, sys
d = json.load(open(sys.argv[1]))
assert d["schema"] == "heed-bench-reuse/1" and [k["kind"] for k in d["kinds"]] == ["volatile", "drop", "compact"], d
for k in d["kinds"]:
    assert k["exact"] + k["shifted"] + k["recomputed"] == k["new_tokens"], k
    assert k["shifted"] > 0 and 0 <= k["kl_mean"] <= k["kl_max"] and 0 <= k["top1"] <= 1, k
PY
  expect_fail "--tokens 100: at least 512" X=1 -- bench reuse "$gemma" --tokens 100
  expect_fail "--gen x: accepted: a whole number" X=1 -- bench reuse "$gemma" --gen x
  # heed bench agent: a small trace, every kind reported, cached tokens within their ideal.
  # HEED_CLI_LIGHT=1 (the sanitizer builds): one session, not two interleaved (the
  # same code; the native run keeps the second session's shared system prompt).
  sessions=2
  [ "${HEED_CLI_LIGHT:-0}" = 1 ] && sessions=1
  "$heed" bench agent "$gemma" --sessions $sessions --turns 4 --system-tokens 200 --tool-tokens 60 --cold side --threads 2 \
    --json "$tmp/ba.json" >"$tmp/o" 2>&1 &&
    python3 - "$tmp/ba.json" <<'PY' && ok || { bad "heed bench agent"; cat "$tmp/o" "$tmp/ba.json"; }
import json, sys
d = json.load(open(sys.argv[1]))
assert d["schema"] == "heed-bench-agent/1" and d["retained_evictions"] == 0, d
kinds = {k["kind"]: k for k in d["kinds"]}
assert set(kinds) == {"first", "continue", "volatile", "compact", "side"}, kinds
for k in kinds.values():
    assert 0 <= k["cached"] <= k["prompt_tokens"] and k["ideal"] + k["chunks"] <= k["prompt_tokens"], k
assert kinds["continue"]["cached"] >= kinds["continue"]["ideal"] > 0, kinds["continue"]
assert kinds["volatile"]["cached"] > kinds["volatile"]["ideal"], kinds["volatile"]  # chunk reuse is on
assert kinds["side"]["cold_ttft_s"] > 0 and all(k["cold_ttft_s"] == 0 for n, k in kinds.items() if n != "side"), kinds
PY
  expect_fail "--reuse maybe: accepted: chunks, off" X=1 -- bench agent "$gemma" --reuse maybe
  expect_fail "--cold continue,later: 'later' is not a turn kind" X=1 -- bench agent "$gemma" --cold continue,later
  expect_fail "--turns 1: accepted: a whole number in 2..64" X=1 -- bench agent "$gemma" --turns 1
  # heed serve's cache options, refused before the model loads
  expect_fail "--cache-reuse shift: not an accepted value" X=1 -- serve "$gemma" --cache-reuse shift
  expect_fail "--cache-reuse-boundary 0: not an accepted value" X=1 -- serve "$gemma" --cache-reuse-boundary 0
  expect_fail "--cache-disk needs --cache-dir" X=1 -- serve "$gemma" --cache-disk 1G
  expect_fail "--cache-disk 0: not an accepted value" X=1 -- serve "$gemma" --cache-dir /tmp --cache-disk 0
else
  echo "cli: heed tokenize on the real models SKIPPED: $qwen or $gemma is absent $(cat "$models/FETCH_FAILED" 2>/dev/null)"
fi

echo "cli: $passes passed, $fails failed"
[ $fails -eq 0 ]
