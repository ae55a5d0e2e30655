#!/usr/bin/env python3
"""heed's GGUF reader against the gguf package's (gguf.GGUFReader).

usage: gguf_oracle.py HEED_BINARY

For GGUF files this script writes with gguf.GGUFWriter (every value type,
nested arrays, general.alignment 64 and 1, several tensor types, a v2 copy, a
split model) and for the two real models (HEED_MODELS, default
~/.cache/heed/models), `heed model dump` must agree with GGUFReader on every
metadata key (order, type and value, arrays element by element, nested ones
too) and every tensor (name, type, shape, offset, size, which part). A
truncated file must be refused by both. `heed model info --json` on the real
models is checked against the metadata. A real model that is absent is
skipped, saying why. Exit status 1 on any mismatch.
"""
import codecs
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
from collections import Counter

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import gguf
import gguf_fast
from gguf import GGMLQuantizationType as QT
from gguf import GGUFValueType as VT

HEED = sys.argv[1]
VT_NAME = {VT.UINT8: "u8", VT.INT8: "i8", VT.UINT16: "u16", VT.INT16: "i16", VT.UINT32: "u32", VT.INT32: "i32",
           VT.FLOAT32: "f32", VT.BOOL: "bool", VT.STRING: "str", VT.ARRAY: "arr", VT.UINT64: "u64", VT.INT64: "i64",
           VT.FLOAT64: "f64"}
failures = []


def fail(what):
    failures.append(what)
    print("MISMATCH:", what)


# heed writes each byte that is not UTF-8 as U+FFFD: decode the file's bytes alike.
def _one_per_byte(e):
    return "\ufffd", e.start + 1


codecs.register_error("heed_replace", _one_per_byte)


def text(b):
    return bytes(b).decode("utf-8", "heed_replace")


def decode(parts, i, t, raw=False):
    """The value of type t whose parts start at parts[i] (GGUFReader's layout); returns (value, next i).
    raw: strings as bytes, arrays as lists, numbers as GGUFReader's one-element arrays."""
    t = VT(int(t))
    if t == VT.STRING:
        return (bytes(parts[i + 1]) if raw else text(parts[i + 1])), i + 2
    if t == VT.ARRAY:
        et, n = VT(int(parts[i][0])), int(parts[i + 1][0])
        i += 2
        items = []
        for _ in range(n):
            v, i = decode(parts, i, et, raw)
            items.append(v)
        return (items if raw else {"elem_type": VT_NAME[et], "items": items}), i
    return (parts[i] if raw else parts[i][0]), i + 1


def same(h, r, t, where):
    """heed's JSON value h against the reader's value r of type t."""
    if t == "arr":
        if not isinstance(h, dict) or h.get("elem_type") != r["elem_type"]:
            return fail(f"{where}: heed {str(h)[:80]} vs gguf array of {r['elem_type']}")
        if len(h["items"]) != len(r["items"]):
            return fail(f"{where}: heed {len(h['items'])} elements vs gguf {len(r['items'])}")
        bad = 0
        for k, (a, b) in enumerate(zip(h["items"], r["items"])):
            before = len(failures)
            same(a, b, r["elem_type"], f"{where}[{k}]")
            bad += len(failures) > before
            if bad > 5:
                return fail(f"{where}: more mismatches not shown")
        return
    if t in ("f32", "f64"):
        hv = float(h) if not isinstance(h, str) else {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}[h]
        if t == "f32":
            ok = (math.isnan(hv) and np.isnan(r)) or np.float32(hv).tobytes() == np.float32(r).tobytes()
        else:
            ok = (math.isnan(hv) and np.isnan(r)) or np.float64(hv).tobytes() == np.float64(r).tobytes()
        if not ok:
            fail(f"{where}: heed {h!r} vs gguf {r!r} ({t})")
        return
    if t == "bool":
        if h is not bool(r):
            fail(f"{where}: heed {h!r} vs gguf {r!r}")
        return
    if t == "str":
        if h != r:
            fail(f"{where}: heed {h[:60]!r} vs gguf {r[:60]!r}")
        return
    if not isinstance(h, int) or h != int(r):
        fail(f"{where}: heed {h!r} vs gguf {r!r} ({t})")


def fast_same(fv, rv):
    """tests/gguf_fast.py's value against GGUFReader's (decode(..., raw=True)), bit for bit."""
    if isinstance(rv, bytes):
        return isinstance(fv, str) and gguf_fast.raw_bytes(fv) == rv
    if isinstance(rv, list):
        if isinstance(fv, np.ndarray):  # numbers: one array of the element type
            return len(fv) == len(rv) and all(fv.dtype == r.dtype for r in rv[:1]) and \
                fv.tobytes() == b"".join(r.tobytes() for r in rv)
        return isinstance(fv, list) and len(fv) == len(rv) and all(fast_same(a, b) for a, b in zip(fv, rv))
    try:
        return np.array(fv, dtype=rv.dtype).tobytes() == rv.tobytes()
    except (TypeError, ValueError, OverflowError):
        return False


def check_fast(path, r, label, whole_data):
    """gguf_fast.read(path) against GGUFReader r: every key's value, every tensor."""
    try:
        g = gguf_fast.read(path)
    except Exception as e:  # noqa: BLE001 - any failure of the helper is a mismatch
        return fail(f"{label}: gguf_fast: {type(e).__name__}: {e}")
    before = len(failures)
    fields = [(k, f) for k, f in r.fields.items() if not k.startswith("GGUF.")]
    if list(g.kv) != [k for k, _ in fields]:
        fail(f"{label}: gguf_fast keys {list(g.kv)[:6]}... vs gguf {[k for k, _ in fields][:6]}...")
    for k, f in fields:
        rv, _ = decode(f.parts, 3, int(f.parts[2][0]), raw=True)
        if k in g.kv and not fast_same(g.kv[k], rv):
            fail(f"{label}: gguf_fast key {k}: {str(g.kv[k])[:80]} vs gguf {str(rv)[:80]}")
    if len(g.tensors) != len(r.tensors):
        fail(f"{label}: gguf_fast {len(g.tensors)} tensors vs gguf {len(r.tensors)}")
    for a, b in zip(g.tensors, r.tensors):
        mine = (a.name, int(a.tensor_type), [int(x) for x in a.shape], a.n_elements, a.n_bytes, a.data_offset,
                a.data.shape, a.data.dtype)
        theirs = (b.name, int(b.tensor_type), [int(x) for x in b.shape], int(b.n_elements), int(b.n_bytes),
                  int(b.data_offset), b.data.shape, b.data.dtype)
        if mine != theirs:
            fail(f"{label}: gguf_fast tensor {mine} vs gguf {theirs}")
        elif whole_data and a.data.tobytes() != np.asarray(b.data).tobytes():
            fail(f"{label}: gguf_fast tensor {a.name}: the data differ")
    if len(failures) == before:
        print(f"{label}: tests/gguf_fast.py reads the same {len(fields)} keys and {len(g.tensors)} tensors")


_readers = {}


def reader(path):
    """gguf.GGUFReader(path), made once per file: on a real model its fields take 15-30 s."""
    if path not in _readers:
        _readers[path] = gguf.GGUFReader(path)
    return _readers[path]


def dump(path):
    p = subprocess.run([HEED, "model", "dump", path], capture_output=True)
    if p.returncode != 0:
        fail(f"heed model dump {path}: exit {p.returncode}: {p.stderr.decode(errors='replace').strip()}")
        return None
    return json.loads(p.stdout)


def compare(paths, label):
    """paths: the file (or the split parts, in order); heed opens paths[0]."""
    d = dump(paths[0])
    if d is None:
        return
    readers = [reader(p) for p in paths]
    r0 = readers[0]
    before = len(failures)
    if len(d["files"]) != len(paths):
        fail(f"{label}: heed opened {len(d['files'])} files, expected {len(paths)}")
    if d["version"] != int(r0.fields["GGUF.version"].parts[0][0]):
        fail(f"{label}: version {d['version']}")
    if d["alignment"] != int(r0.alignment):
        fail(f"{label}: alignment heed {d['alignment']} vs gguf {r0.alignment}")
    fields = [(k, f) for k, f in r0.fields.items() if not k.startswith("GGUF.")]
    if [m["key"] for m in d["metadata"]] != [k for k, _ in fields]:
        fail(f"{label}: keys differ: heed {[m['key'] for m in d['metadata']][:8]}... vs gguf {[k for k, _ in fields][:8]}...")
    n_values = 0
    for m, (k, f) in zip(d["metadata"], fields):
        t = VT_NAME[VT(int(f.parts[2][0]))]
        if m["type"] != t:
            fail(f"{label}: key {k}: type heed {m['type']} vs gguf {t}")
            continue
        v, end = decode(f.parts, 3, int(f.parts[2][0]))
        if end != len(f.parts):
            fail(f"{label}: key {k}: the oracle's decoding used {end} of {len(f.parts)} parts")
        same(m["value"], v, t, f"{label}: key {k}")
        n_values += 1 + (len(v["items"]) if isinstance(v, dict) else 0)
    tensors = []
    for i, r in enumerate(readers):
        for t in r.tensors:
            tensors.append((i, r.data_offset, t))
    if len(d["tensors"]) != len(tensors):
        fail(f"{label}: heed {len(d['tensors'])} tensors vs gguf {len(tensors)}")
    for h, (part, data_offset, t) in zip(d["tensors"], tensors):
        want = {"name": t.name, "type": QT(t.tensor_type).name, "type_id": int(t.tensor_type),
                "shape": [int(x) for x in t.shape], "n_elems": int(t.n_elements), "bytes": int(t.n_bytes),
                "offset": int(t.data_offset) - int(data_offset), "file": part}
        got = {k: h[k] for k in want}
        if got != want:
            fail(f"{label}: tensor {t.name}: heed {got} vs gguf {want}")
    size = sum(os.path.getsize(p) for p in paths)
    if d["file_bytes"] != size:
        fail(f"{label}: file_bytes {d['file_bytes']} vs {size}")
    if len(paths) == 1:  # the oracles' fast reader (split files: GGUFReader only)
        check_fast(paths[0], r0, label, whole_data=size < (64 << 20))
    status = "OK" if len(failures) == before else "MISMATCH"
    print(f"{label}: {len(fields)} keys ({n_values} values and array elements, types and values), "
          f"{len(tensors)} tensors (name, type, shape, offset, bytes, part) in {len(paths)} file(s): {status}")
    return d


def write(path, fill, alignment=None, split_max_tensors=0):
    w = gguf.GGUFWriter(path, "llama", split_max_tensors=split_max_tensors)
    if alignment:
        w.add_custom_alignment(alignment)
    fill(w)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def every_type(w):
    w.add_uint8("t.u8", 255)
    w.add_int8("t.i8", -128)
    w.add_uint16("t.u16", 65535)
    w.add_int16("t.i16", -32768)
    w.add_uint32("t.u32", 4294967295)
    w.add_int32("t.i32", -2147483648)
    w.add_float32("t.f32", 0.1)
    w.add_float32("t.f32_tiny", 1e-45)
    w.add_float32("t.f32_neg0", -0.0)
    w.add_float32("t.f32_inf", math.inf)
    w.add_float32("t.f32_nan", math.nan)
    w.add_float32("t.f32_max", 3.4028234663852886e38)
    w.add_uint64("t.u64", 2**64 - 1)
    w.add_int64("t.i64", -(2**63))
    w.add_float64("t.f64", 0.1)
    w.add_float64("t.f64_sub", 5e-324)
    w.add_float64("t.f64_big", -1.7976931348623157e308)
    w.add_bool("t.true", True)
    w.add_bool("t.false", False)
    w.add_string("t.str", "héllo, \"world\"\n\t\\ 日本語 🙂")
    w.add_key_value("t.str_empty", "", VT.STRING)
    w.add_key_value("t.str_ctrl", "a\x00b\x01\x1f\x7f", VT.STRING)
    for vt, vals in [(VT.UINT8, [0, 255]), (VT.INT8, [-128, 127]), (VT.UINT16, [0, 65535]), (VT.INT16, [-32768, 7]),
                     (VT.UINT32, [1, 4294967295]), (VT.INT32, [-5, 2147483647]), (VT.FLOAT32, [0.5, -1e-30, 3.0e38]),
                     (VT.BOOL, [True, False, True]), (VT.UINT64, [2**64 - 1, 0]), (VT.INT64, [-(2**63), 2**63 - 1]),
                     (VT.FLOAT64, [math.pi, -0.0]), (VT.STRING, ["a", "", "ü", "<|im_end|>"])]:
        w.add_key_value(f"t.arr_{VT_NAME[vt]}", vals, VT.ARRAY, sub_type=vt)
    w.add_key_value("t.nested", [[1, 2, 3], [4]], VT.ARRAY)
    w.add_key_value("t.nested_mixed", [["x", "yz"], [1.5], [True, False]], VT.ARRAY)
    w.add_key_value("t.nested3", [[[1], [2, 3]], [[4, 5, 6]]], VT.ARRAY)
    w.add_token_list([f"tok{i}" for i in range(1000)])
    w.add_token_scores([float(-i) / 7 for i in range(1000)])
    w.add_token_types([1] * 1000)
    rng = np.random.default_rng(7)
    w.add_tensor("f32.2d", rng.standard_normal((3, 5)).astype(np.float32))
    w.add_tensor("f16.1d", rng.standard_normal(7).astype(np.float16))
    w.add_tensor("bf16.raw", rng.integers(0, 255, (2, 8), dtype=np.uint8), raw_dtype=QT.BF16)
    w.add_tensor("q8_0.raw", rng.integers(0, 255, (2, 34 * 2), dtype=np.uint8), raw_dtype=QT.Q8_0)
    w.add_tensor("q4_k.raw", rng.integers(0, 255, (3, 144), dtype=np.uint8), raw_dtype=QT.Q4_K)
    w.add_tensor("q6_k.3d", rng.integers(0, 255, (2, 2, 210), dtype=np.uint8), raw_dtype=QT.Q6_K)
    w.add_tensor("q5_0.4d", rng.integers(0, 255, (2, 1, 3, 22), dtype=np.uint8), raw_dtype=QT.Q5_0)


def some_tensors(w):
    w.add_string("general.name", "aligned")
    rng = np.random.default_rng(1)
    for i, n in enumerate([1, 7, 64, 65, 3]):
        w.add_tensor(f"t{i}", rng.standard_normal(n).astype(np.float32))
    w.add_tensor("q2_k", rng.integers(0, 255, (1, 84), dtype=np.uint8), raw_dtype=QT.Q2_K)


def split_tensors(w):
    w.add_string("general.name", "split")
    w.add_uint32("llama.block_count", 5)
    for i in range(5):
        w.add_tensor(f"blk.{i}.w", np.full((2, 3 + i), i, dtype=np.float32))


def model_info(path, label):
    p = subprocess.run([HEED, "model", "info", "--json", path], capture_output=True)
    if p.returncode != 0:
        return fail(f"heed model info --json {path}: exit {p.returncode}: {p.stderr.decode(errors='replace')}")
    j = json.loads(p.stdout)
    r = reader(path)
    arch = r.fields["general.architecture"].contents()
    get = lambda k, default=None: r.fields[k].contents() if k in r.fields else default  # noqa: E731
    c = j["config"]
    want = {"n_layer": get(f"{arch}.block_count"), "n_embd": get(f"{arch}.embedding_length"),
            "n_ff": get(f"{arch}.feed_forward_length"), "n_head": get(f"{arch}.attention.head_count"),
            "n_head_kv": get(f"{arch}.attention.head_count_kv"), "n_ctx_train": get(f"{arch}.context_length"),
            "n_vocab": len(r.fields["tokenizer.ggml.tokens"].data),
            "head_dim_k": get(f"{arch}.attention.key_length",
                              get(f"{arch}.embedding_length") // get(f"{arch}.attention.head_count"))}
    for k, v in want.items():
        if c[k] != v:
            fail(f"{label} info: {k} heed {c[k]} vs file {v}")
    if j["architecture"] != arch or j["tensors"]["count"] != len(r.tensors):
        fail(f"{label} info: architecture/tensor count")
    if {x["type"]: x["count"] for x in j["tensors"]["by_type"]} != dict(Counter(QT(t.tensor_type).name for t in r.tensors)):
        fail(f"{label} info: tensors by type {j['tensors']['by_type']}")
    if j["tensors"]["bytes"] != sum(int(t.n_bytes) for t in r.tensors):
        fail(f"{label} info: tensor bytes")
    toks = r.fields["tokenizer.ggml.tokens"]
    for name, key in [("bos", "tokenizer.ggml.bos_token_id"), ("eos", "tokenizer.ggml.eos_token_id"),
                      ("pad", "tokenizer.ggml.padding_token_id"), ("unk", "tokenizer.ggml.unknown_token_id")]:
        s = j["tokenizer"]["special"][name]
        if key not in r.fields:
            if s is not None:
                fail(f"{label} info: {name} {s} but the file has no {key}")
        elif s is None or s["id"] != get(key) or s["text"] != toks.contents(get(key)):
            fail(f"{label} info: {name} {s} vs {get(key)}")
    tmpl = get("tokenizer.chat_template")
    if j["chat_template"] != {"present": tmpl is not None, "bytes": len(tmpl.encode()) if tmpl else 0}:
        fail(f"{label} info: chat_template {j['chat_template']}")
    kv = {x["dtype"]: x["bytes_per_token"] for x in j["kv_cache"]["per_token"]}
    if set(kv) != {"f32", "f16", "bf16", "q8", "q4", "e4m3", "e5m2"}:
        fail(f"{label} info: KV dtypes {sorted(kv)}")
    f16 = c["n_layer"] * 2 * c["n_head_kv"] * c["head_dim_k"] * 2
    if kv.get("f16") != f16 or kv.get("f32") != 2 * f16 or not (f16 / 4 < kv.get("q4", 0) < kv.get("q8", 0) < f16 * 0.6):
        fail(f"{label} info: KV bytes per token {kv}, f16 should be {f16}")
    for x in j["kv_cache"]["per_token"]:
        if abs(x["mib_32k"] - x["bytes_per_token"] * 32768 / 2**20) > 1e-3:
            fail(f"{label} info: {x}")
    print(f"{label}: heed model info --json: config, tensors by type, special tokens, chat template, KV bytes: "
          f"{'OK' if not failures else 'see above'}")


def main():
    tmp = tempfile.mkdtemp(prefix="heed-gguf-oracle-")
    try:
        p = os.path.join(tmp, "types.gguf")
        write(p, every_type)
        compare([p], "written: every value type, nested arrays, 7 tensor types")
        v2 = os.path.join(tmp, "types-v2.gguf")
        shutil.copy(p, v2)
        with open(v2, "r+b") as f:  # version 2 has the same layout (64-bit counts)
            f.seek(4)
            f.write((2).to_bytes(4, "little"))
        compare([v2], "written: the same as GGUF v2")
        for al in (64, 1):
            p = os.path.join(tmp, f"align{al}.gguf")
            write(p, some_tensors, alignment=al)
            compare([p], f"written: general.alignment={al}")
        write(os.path.join(tmp, "split.gguf"), split_tensors, split_max_tensors=2)
        parts = [os.path.join(tmp, f"split-{i:05d}-of-00003.gguf") for i in (1, 2, 3)]
        if not all(os.path.exists(x) for x in parts):
            fail(f"GGUFWriter wrote no split parts: {sorted(os.listdir(tmp))}")
        else:
            d = compare(parts, "written: a split model (3 parts, opened by part 1)")
            d2 = dump(parts[2])
            if d and d2 and (d2["tensors"] != d["tensors"] or d2["metadata"] != d["metadata"]):
                fail("split model opened by part 3 differs from opened by part 1")
        # a truncated file: both refuse it
        t = os.path.join(tmp, "truncated.gguf")
        with open(os.path.join(tmp, "types.gguf"), "rb") as f:
            data = f.read()
        with open(t, "wb") as f:
            f.write(data[: len(data) // 3])
        pr = subprocess.run([HEED, "model", "dump", t], capture_output=True, text=True)
        try:
            gguf.GGUFReader(t)
            gguf_refused = False
        except Exception:
            gguf_refused = True
        if pr.returncode != 1 or "truncated.gguf" not in pr.stderr or not gguf_refused:
            fail(f"truncated file: heed exit {pr.returncode} ({pr.stderr.strip()}), gguf refused: {gguf_refused}")
        else:
            print(f"written: truncated to a third: both refuse it; heed says: {pr.stderr.strip()[:160]}")

        mdir = os.environ.get("HEED_MODELS") or os.path.expanduser("~/.cache/heed/models")
        for name in ("qwen2.5-coder-1.5b-instruct-q4_k_m.gguf", "gemma-3-270m-q4_k_m.gguf"):
            path = os.path.join(mdir, name)
            if not os.path.exists(path):
                why = os.path.join(mdir, "FETCH_FAILED")
                reason = open(why).read().strip() if os.path.exists(why) else f"{path} is absent (run scripts/fetch-models.sh)"
                print(f"SKIP {name}: {reason}")
                continue
            compare([path], name)
            model_info(path, name)
            _readers.pop(path, None)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if failures:
        print(f"gguf oracle: {len(failures)} mismatches")
        sys.exit(1)
    print("gguf oracle: heed and gguf.GGUFReader agree on everything compared")


main()
