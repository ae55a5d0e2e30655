"""tests/gguf_fast.py - a GGUF header reader for the oracles, fast on big vocabularies.

gguf.GGUFReader builds a numpy view for every element of every array: on
Qwen2.5's and Gemma 3's vocabularies (151k and 262k tokens, scores, types and
merges) that is 15 to 30 seconds a file, and the oracles opened the two real
models ten times a suite (twice in CI: the plain and the ASan build). This
reads the same file layout (GGUF v2 and v3, one file) with struct, one pass
over the header, numbers arrays as numpy arrays, tensor data as views of one
read-only mmap, shaped as GGUFReader shapes them (typed for F16/F32/F64/I8..I64,
rows of bytes for every other type), so gguf.quants.dequantize takes them as
it takes GGUFReader's.

It is an oracle's helper, not the oracle: tests/gguf_oracle.py checks that it
returns what gguf.GGUFReader returns (every key's value, every tensor's name,
type, shape, offset and bytes) on every file that test writes and on the two
real models, so the oracles that read through it see what GGUFReader sees.

    g = gguf_fast.read(path)
    g.kv["general.architecture"]  -> "qwen2"          (strings as str,
    g.kv["tokenizer.ggml.tokens"] -> [str, ...]         arrays of strings as lists,
    g.kv["tokenizer.ggml.scores"] -> numpy float32 array  numbers as numpy arrays)
    g.tensors[i].name, .tensor_type, .shape, .data, .data_offset, .n_bytes
Strings are decoded as UTF-8 with surrogateescape (the bytes come back with
.encode("utf-8", "surrogateescape")); raw_bytes(s) does that.
"""
import mmap
import struct

import numpy as np

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

# GGUF value types: struct format (scalars) and numpy dtype (arrays)
_SCALAR = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_NP = {0: np.uint8, 1: np.int8, 2: np.uint16, 3: np.int16, 4: np.uint32, 5: np.int32, 6: np.float32, 7: np.bool_,
       10: np.uint64, 11: np.int64, 12: np.float64}
_STRING, _ARRAY = 8, 9
# tensor types whose data GGUFReader gives typed; every other type: bytes
_TYPED = {GGMLQuantizationType.F16: np.float16, GGMLQuantizationType.F32: np.float32,
          GGMLQuantizationType.F64: np.float64, GGMLQuantizationType.I8: np.int8,
          GGMLQuantizationType.I16: np.int16, GGMLQuantizationType.I32: np.int32,
          GGMLQuantizationType.I64: np.int64}


def raw_bytes(s):
    return s.encode("utf-8", "surrogateescape")


class Tensor:
    __slots__ = ("name", "tensor_type", "shape", "n_elements", "n_bytes", "data_offset", "data")


class File:
    def __init__(self, path):
        self.path = path
        with open(path, "rb") as f:
            self._mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        mm = self._mm
        self._p = 0
        if mm[:4] != b"GGUF":
            raise ValueError(f"{path}: not a GGUF file (magic {bytes(mm[:4])!r})")
        self._p = 4
        self.version = self._u(4)
        if self.version not in (2, 3):
            raise ValueError(f"{path}: GGUF version {self.version}; this reader knows 2 and 3")
        n_tensors, n_kv = self._u(8), self._u(8)
        self.kv = {}
        for _ in range(n_kv):
            key = self._str()
            self.kv[key] = self._value(self._u(4))
        infos = []
        for _ in range(n_tensors):
            name = self._str()
            n_dims = self._u(4)
            dims = [self._u(8) for _ in range(n_dims)]
            infos.append((name, dims, self._u(4), self._u(8)))
        align = int(self.kv.get("general.alignment", 32))
        start = self._p + (align - self._p % align) % align
        self.tensors = []
        for name, dims, ttype, off in infos:
            t = Tensor()
            t.name, t.tensor_type = name, GGMLQuantizationType(ttype)
            t.shape = np.array(dims, dtype=np.uint64)
            t.n_elements = int(np.prod(dims)) if dims else 1
            bs, ts = GGML_QUANT_SIZES[t.tensor_type]
            t.n_bytes = t.n_elements * ts // bs
            t.data_offset = start + off
            np_dims = [int(d) for d in reversed(dims)]
            if t.tensor_type in _TYPED:
                dt = _TYPED[t.tensor_type]
                t.data = np.frombuffer(mm, dtype=dt, count=t.n_elements, offset=t.data_offset).reshape(np_dims)
            else:
                np_dims[-1] = np_dims[-1] // bs * ts
                t.data = np.frombuffer(mm, dtype=np.uint8, count=t.n_bytes, offset=t.data_offset).reshape(np_dims)
            self.tensors.append(t)

    def _u(self, n):
        v = int.from_bytes(self._mm[self._p:self._p + n], "little")
        self._p += n
        return v

    def _str(self):
        n = self._u(8)
        s = self._mm[self._p:self._p + n].decode("utf-8", "surrogateescape")
        self._p += n
        return s

    def _value(self, t):
        if t == _STRING:
            return self._str()
        if t == _ARRAY:
            et, n = self._u(4), self._u(8)
            if et == _STRING:
                mm, p, out = self._mm, self._p, []
                for _ in range(n):
                    ln = int.from_bytes(mm[p:p + 8], "little")
                    out.append(mm[p + 8:p + 8 + ln].decode("utf-8", "surrogateescape"))
                    p += 8 + ln
                self._p = p
                return out
            if et == _ARRAY:
                return [self._value(_ARRAY) for _ in range(n)]  # each element: its own type and count
            if et not in _NP:
                raise ValueError(f"{self.path}: array of value type {et} at byte {self._p}")
            a = np.frombuffer(self._mm, dtype=_NP[et], count=n, offset=self._p).copy()
            self._p += a.nbytes
            return a
        if t not in _SCALAR:
            raise ValueError(f"{self.path}: value type {t} at byte {self._p}")
        fmt = _SCALAR[t]
        v = struct.unpack_from(fmt, self._mm, self._p)[0]
        self._p += struct.calcsize(fmt)
        return v


def read(path):
    return File(path)
