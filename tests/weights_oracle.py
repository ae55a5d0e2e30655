#!/usr/bin/env python3
"""tests/weights_oracle.py - heed_weights_dequant against gguf.quants.dequantize, bit for bit.

Two sets of records go through tests/weights_driver (heed's side, one process):
  * random blocks of every type heed computes with (F32, F16, BF16, Q4_0, Q4_1,
    Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K): random bytes, with the f16 scales
    (and F16 values) drawn from the finite f16 numbers, subnormals, zeros and
    negative zero included;
  * the first rows of every tensor of both real models (tests/test_models.h:
    HEED_MODELS, default ~/.cache/heed/models), up to ROWS rows each.
Every float is compared as its 32 bits (so -0 and 0 differ). Exits 0 when all
match, 1 on a mismatch (naming the record, the element and both values), 77
(skip) when neither model is there, saying why. The random part always runs.

Usage: weights_oracle.py --driver build/tests/weights_driver [--rows N]
"""
import argparse
import os
import struct
import subprocess
import sys

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf.constants import GGML_QUANT_SIZES
from gguf.quants import dequantize

import gguf_fast  # tests/, beside this script

TYPES = [T.F32, T.F16, T.BF16, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0, T.Q4_K, T.Q5_K, T.Q6_K]
# Byte offsets of the f16 scales inside each block.
SCALES = {T.Q4_0: [0], T.Q4_1: [0, 2], T.Q5_0: [0], T.Q5_1: [0, 2], T.Q8_0: [0], T.Q4_K: [0, 2],
          T.Q5_K: [0, 2], T.Q6_K: [208]}
MODELS = ["qwen2.5-coder-1.5b-instruct-q4_k_m.gguf", "gemma-3-270m-q4_k_m.gguf"]


def finite_f16(rng, n):
    """n finite f16 bit patterns: uniform over the finite encodings, with zeros,
    -0, the smallest subnormal and the largest values forced in."""
    bits = rng.integers(0, 1 << 16, size=n, dtype=np.uint32).astype(np.uint16)
    bits = np.where((bits & 0x7C00) == 0x7C00, bits & 0x83FF, bits).astype(np.uint16)
    special = np.array([0x0000, 0x8000, 0x0001, 0x8001, 0x7BFF, 0xFBFF, 0x3C00, 0x03FF], dtype=np.uint16)
    k = min(n, len(special))
    bits[:k] = special[:k]
    return bits


def random_records(rng, n_blocks):
    recs = []
    for t in TYPES:
        be, bb = GGML_QUANT_SIZES[t]
        n = n_blocks * 256 if be == 1 else n_blocks * be
        raw = rng.integers(0, 256, size=(n // be, bb), dtype=np.uint32).astype(np.uint8)
        if t == T.F16:
            raw = finite_f16(rng, n).view(np.uint8).reshape(n, 2)
        for off in SCALES.get(t, []):
            raw[:, off:off + 2] = finite_f16(rng, raw.shape[0]).view(np.uint8).reshape(-1, 2)
        if be > 1:
            # adversarial blocks first: every code at its max (all bits set beyond the scales)
            keep = raw[0, :].copy()
            raw[0, :] = 0xFF
            for off in SCALES.get(t, []):
                raw[0, off:off + 2] = keep[off:off + 2]
            raw[1, :] = 0
            raw[1, SCALES[t][0]:SCALES[t][0] + 2] = [0x00, 0x3C]
        recs.append((f"random {t.name}", int(t), n, raw.reshape(-1)))
    return recs


def model_records(path, rows):
    recs = []
    r = gguf_fast.read(path)  # GGUFReader's tensors (tests/gguf_oracle.py checks), fast
    for ten in r.tensors:
        t = T(int(ten.tensor_type))
        if t not in TYPES:
            continue
        be, bb = GGML_QUANT_SIZES[t]
        ne0 = int(ten.shape[0])
        data = np.asarray(ten.data).view(np.uint8).reshape(-1)
        row_bytes = ne0 // be * bb
        n_rows = min(rows, data.size // row_bytes)
        recs.append((f"{os.path.basename(path)}: {ten.name} ({t.name}, first {n_rows} rows)", int(t), n_rows * ne0,
                     data[:n_rows * row_bytes]))
    return recs


def run(driver, recs):
    buf = bytearray()
    for _, t, n, raw in recs:
        buf += struct.pack("<iQ", t, n)
        buf += raw.tobytes()
    p = subprocess.run([driver], input=bytes(buf), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if p.returncode != 0:
        print(f"weights_driver failed ({p.returncode}): {p.stderr.decode(errors='replace')}")
        return None
    return np.frombuffer(p.stdout, dtype=np.uint32)


def compare(recs, got):
    bad = 0
    pos = 0
    for name, t, n, raw in recs:
        be, bb = GGML_QUANT_SIZES[T(t)]
        want = dequantize(raw.reshape(-1, bb) if be > 1 else raw.view(np.float16 if t == T.F16 else np.uint8),
                          T(t)) if t not in (T.F32, T.F16) else None
        if t == T.F32:
            want = raw.view(np.float32)
        elif t == T.F16:
            want = raw.view(np.float16).astype(np.float32)
        elif t == T.BF16:
            want = dequantize(raw, T(t))
        want = np.asarray(want, dtype=np.float32).reshape(-1).view(np.uint32)
        have = got[pos:pos + n]
        pos += n
        if have.size != want.size:
            print(f"{name}: {have.size} floats from heed, {want.size} from gguf")
            bad += 1
            continue
        diff = np.nonzero(have != want)[0]
        if diff.size:
            i = int(diff[0])
            hv = have[i:i + 1].view(np.float32)[0]
            wv = want[i:i + 1].view(np.float32)[0]
            print(f"MISMATCH {name}: {diff.size} of {n} differ; first at element {i} (block {i // be}): "
                  f"heed {hv!r} (0x{int(have[i]):08x}), gguf {wv!r} (0x{int(want[i]):08x})")
            bad += 1
    if pos != got.size:
        print(f"heed wrote {got.size} floats, {pos} expected")
        bad += 1
    return bad


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--driver", required=True)
    ap.add_argument("--rows", type=int, default=16)
    ap.add_argument("--blocks", type=int, default=4096)
    a = ap.parse_args()
    rng = np.random.default_rng(20)
    recs = random_records(rng, a.blocks)
    got = run(a.driver, recs)
    if got is None:
        return 1
    bad = compare(recs, got)
    print(f"random blocks: {len(recs)} types x {a.blocks} blocks, {bad} mismatching")
    mdir = os.environ.get("HEED_MODELS") or os.path.expanduser("~/.cache/heed/models")
    present = [os.path.join(mdir, m) for m in MODELS if os.path.exists(os.path.join(mdir, m))]
    for m in MODELS:
        if not os.path.exists(os.path.join(mdir, m)):
            print(f"model {m} is not in {mdir} (scripts/fetch-models.sh): not compared")
    for path in present:
        recs = model_records(path, a.rows)
        got = run(a.driver, recs)
        if got is None:
            return 1
        nb = compare(recs, got)
        print(f"{os.path.basename(path)}: {len(recs)} tensors, first {a.rows} rows each: "
              f"{sum(r[2] for r in recs)} weights, {nb} mismatching")
        bad += nb
    if bad:
        return 1
    if not present:
        print("weights oracle: no model present: the random blocks matched; the models were skipped")
        return 77
    return 0


if __name__ == "__main__":
    sys.exit(main())
