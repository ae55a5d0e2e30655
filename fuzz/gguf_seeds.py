#!/usr/bin/env python3
"""Writes fuzz_gguf's seed corpus, fuzz/corpus/gguf/seed-*: small GGUF files
(each under 4 KB) made with the gguf package (~/.cache/heed/venv/bin/python).

  seed-types        every value type, nested arrays, four tensor types
  seed-align64      general.alignment 64, tensors of odd sizes
  seed-align1       general.alignment 1
  seed-v2           seed-types as GGUF version 2
  seed-qwen2        a tiny qwen2 model whose configuration reads (heed_model_config_read)
  seed-gemma3       the same for gemma3 (sliding window, key_length)
  seed-header-4k    the first 4 KB of a model with a 600-token vocabulary: a header cut short
  seed-split-part   part 1 of a split model (refused alone)

usage: fuzz/gguf_seeds.py [DIR]   (default: fuzz/corpus/gguf next to this script)
"""
import os
import shutil
import sys
import tempfile

import numpy as np

import gguf
from gguf import GGMLQuantizationType as QT
from gguf import GGUFValueType as VT

out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus", "gguf")
os.makedirs(out, exist_ok=True)
tmp = tempfile.mkdtemp()


def write(name, arch, fill, alignment=None, split_max_tensors=0, cut=None):
    path = os.path.join(tmp, name + ".gguf")
    w = gguf.GGUFWriter(path, arch, split_max_tensors=split_max_tensors)
    if alignment:
        w.add_custom_alignment(alignment)
    fill(w)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    if split_max_tensors:
        path = os.path.join(tmp, name + "-00001-of-00002.gguf")
    data = open(path, "rb").read()
    if cut:
        data = data[:cut]
    assert len(data) <= 4096, (name, len(data))
    open(os.path.join(out, "seed-" + name), "wb").write(data)
    return data


def types(w):
    w.add_uint8("u8", 7)
    w.add_int8("i8", -7)
    w.add_uint16("u16", 700)
    w.add_int16("i16", -700)
    w.add_uint32("u32", 70000)
    w.add_int32("i32", -70000)
    w.add_float32("f32", 0.25)
    w.add_bool("b", True)
    w.add_string("s", "text")
    w.add_uint64("u64", 2**40)
    w.add_int64("i64", -(2**40))
    w.add_float64("f64", 1e-300)
    w.add_key_value("arr.str", ["a", "bc", ""], VT.ARRAY, sub_type=VT.STRING)
    w.add_key_value("arr.u16", [1, 2, 3], VT.ARRAY, sub_type=VT.UINT16)
    w.add_key_value("arr.nested", [[1, 2], [3]], VT.ARRAY)
    w.add_key_value("arr.nested_str", [["x"], ["y", "z"]], VT.ARRAY)
    w.add_tensor("f32", np.arange(8, dtype=np.float32))
    w.add_tensor("f16", np.arange(4, dtype=np.float16).reshape(2, 2))
    w.add_tensor("q8_0", np.zeros((1, 34), dtype=np.uint8), raw_dtype=QT.Q8_0)
    w.add_tensor("q4_k", np.zeros((1, 144), dtype=np.uint8), raw_dtype=QT.Q4_K)


def odd(w):
    for i, n in enumerate([1, 3, 17]):
        w.add_tensor(f"t{i}", np.ones(n, dtype=np.float32))


def model(arch, n_vocab, gemma=False):
    def fill(w):
        w.add_block_count(2)
        w.add_context_length(128)
        w.add_embedding_length(64)
        w.add_feed_forward_length(128)
        w.add_head_count(2)
        w.add_head_count_kv(1)
        w.add_layer_norm_rms_eps(1e-6)
        w.add_rope_freq_base(10000.0)
        if gemma:
            w.add_key_length(32)
            w.add_value_length(32)
            w.add_sliding_window(16)
        w.add_tokenizer_model("gpt2")
        w.add_token_list([f"t{i}" for i in range(n_vocab)])
        w.add_bos_token_id(0)
        w.add_eos_token_id(1)
        w.add_tensor("token_embd.weight", np.zeros((n_vocab, 64), dtype=np.float16) if n_vocab < 20 else
                     np.zeros((1, 64), dtype=np.float16))
        w.add_tensor("blk.0.attn_norm.weight", np.ones(64, dtype=np.float32))
    return fill


def split(w):
    w.add_string("general.name", "split")
    for i in range(3):
        w.add_tensor(f"blk.{i}.w", np.ones(8, dtype=np.float32))


try:
    t = write("types", "llama", types)
    write("align64", "llama", odd, alignment=64)
    write("align1", "llama", odd, alignment=1)
    v2 = bytearray(t)
    v2[4:8] = (2).to_bytes(4, "little")
    open(os.path.join(out, "seed-v2"), "wb").write(v2)
    write("qwen2", "qwen2", model("qwen2", 8))
    write("gemma3", "gemma3", model("gemma3", 8, gemma=True))
    write("header-4k", "qwen2", model("qwen2", 600), cut=4096)
    write("split-part", "llama", split, split_max_tensors=2)
finally:
    shutil.rmtree(tmp)
for f in sorted(os.listdir(out)):
    print(f, os.path.getsize(os.path.join(out, f)))
