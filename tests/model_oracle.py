#!/usr/bin/env python3
"""tests/model_oracle.py - heed's forward pass against an independent numpy reference.

The reference is tests/model_ref.py (llama.cpp's conventions for llama, qwen2,
qwen3 and gemma3, written from llama.cpp's graph builders; no code shared with
heed). heed's side is build/tests/model_driver (logits of every position of a
sequence, greedy decoding) and `heed perplexity`.

Cases
  tiny synthetic models (always; written at test time with gguf.GGUFWriter,
  random weights in F32/F16/Q8_0, a ~300-token vocabulary):
    llama  (RoPE NORM with rope_freqs factors, SPM vocabulary)
    qwen2  (RoPE NEOX, q/k/v biases, GQA)
    qwen3  (per-head q/k RMSNorm, head dim 64 with n_head * 64 != n_embd)
    gemma3 (six layers: five local with a window of 8 and base 10000, one
            global with its own base; embedding scale, post-norms, GELU)
    the logits of a 40-token sequence against the reference (all at once, and
    for gemma3 also prefilled in chunks of 7 and with --isa scalar), and 8
    greedy tokens;
  the real models (tests/test_models.h: HEED_MODELS, default ~/.cache/heed/models):
    Qwen2.5-Coder-1.5B-Instruct Q4_K_M and Gemma-3-270M Q4_K_M: prompts of
    code, prose and a chat-formatted turn (control tokens parsed), and for
    Gemma one of 600 tokens of a licence text (past its 512-token sliding
    window; also prefilled in chunks of 200); 16 greedy tokens after two
    prompts; perplexity on /usr/share/common-licenses/Apache-2.0 (Qwen ctx
    512, Gemma ctx 1024 so its local layers slide; PPL_WINDOWS windows, the
    first 2048 tokens with --ppl-full) within PPL_REL_BOUND of the
    reference's, and with q8 and q4 KV caches within their own bounds.

What is compared (for a sequence), as fractions of scale = the standard
deviation of the reference's logits (BOUNDS, per model, says how each bound
was chosen): the max |heed - reference| over the vocabulary at every position
but the first, the same at position 0, and the median over positions of the
RMS error. Top-1 must agree wherever the reference's top-2 margin is at least
BOUNDS[..]["margin"] * scale.
Greedy: heed's tokens, fed to the reference as one sequence (teacher forcing),
must each be the reference's argmax, or within margin * scale of it at a
near tie. Up to the first near tie that is the reference's own greedy
continuation; past it the reference follows heed's choice, so the later steps
are still compared.
Perplexity: the same windows as llama-perplexity (model_ref.perplexity); the
ids come from `heed tokenize -f` (the tokenizer has its own oracle).

--self-check runs the reference alone: greedy texts (Qwen after
"def fibonacci(n):", Gemma after "The capital of France is"), Qwen's
perplexity on the first 1024 tokens of the Apache licence with ctx 512 (must
be single digits), and the bounds' justification: the reference with heed's
own rounding emulated (activations quantized to int8 blocks before quantized
weights, K/V rounded to f16) must stay under each bound, and the reference
with a deliberate mistake (RoPE pairing swapped, biases dropped, norms
swapped, the window one key wider, local layers on the global RoPE base,
Gemma norms as x * (1 + w), llama's rope_freqs ignored) must exceed one of them. About 1.5 minutes for
Qwen, 1 for Gemma, 1 second for the tiny models.

Exit: 0 pass, 1 fail, 77 skip (the real models are absent: the synthetic
cases still run first and a failure there is still 1).

usage: model_oracle.py DRIVER HEED [--only tiny|qwen|gemma] [--no-ppl] [--ppl-full]
       model_oracle.py --self-check [--heed HEED] [--only tiny|qwen|gemma]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

import gguf
from gguf import GGMLQuantizationType as QT
from gguf.quants import quantize

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import model_ref as R  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
MODELS = {"qwen": "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf", "gemma": "gemma-3-270m-q4_k_m.gguf"}
APACHE = "/usr/share/common-licenses/Apache-2.0"
LONG_TEXT = "/usr/share/common-licenses/GPL-3"

# Bounds on heed's logits against the reference, as fractions of the standard
# deviation of the reference's logits of the sequence (scale):
#   max    max |heed - ref| over the vocabulary, at every position but the first
#   first  the same at position 0 (Qwen's first token carries the massive
#          activations that int8 activation blocks round worst)
#   rms    the median over positions of the RMS error over the vocabulary
#   margin top-1 (and each greedy step) must agree wherever the reference's top-2
#          margin is at least margin * scale
# Chosen from the reference with heed's own rounding emulated (--self-check
# prints it: int8 activation blocks before quantized weights, f16 K/V): Qwen,
# code, prose and chat prompts: max 0.073-0.105, first 0.49-0.91, rms 0.013; Gemma, 600-token licence
# prompt: max 0.64 (p99 0.32), first 0.04, rms 0.023; tiny models: max <= 0.039,
# rms <= 0.007. Each bound is about 2x that. Top-1 flips under that emulation
# happened only at reference margins <= 0.015 (Gemma) and 0.006 (Qwen), the
# error of a top-1 pair's difference was <= 0.029: margin is 2x to 4x that.
# The planted mistakes
# (--self-check) exceed them 5x to 100x, except a window one key too wide on the
# real Gemma (it moves one position, 512, by 0.09: under the rounding noise),
# which the tiny gemma3 model (window 8) catches at 0.26 against 0.08.
# Gemma's margin is re-derived from heed's measured errors: on the 600-token
# licence prompt the error of the reference's top-2 difference reached 0.136
# (scalar), 0.170 (AVX2, per-block Q5_0 kernel) and 0.106 (AVX2, 8-block Q5_0
# panels) at single positions (p99 0.07 for all three), and top-1 flipped at
# reference margins up to 0.048, 0.041 and 0.079: the int8 activation rounding
# of a later layer moves with the order of a sum, so any two correct builds
# differ that much. 0.2 is above all three.
BOUNDS = {
    "qwen": dict(max=0.2, first=2.0, rms=0.03, margin=0.06),
    "gemma": dict(max=1.3, first=0.3, rms=0.05, margin=0.2),
    "tiny": dict(max=0.08, first=0.08, rms=0.015, margin=0.1),
}
# heed perplexity (f16 KV) against the reference: within 1%.
PPL_REL_BOUND = 0.01
# q8 and q4 KV caches: ppl / reference ppl - 1 at most this much, per model.
# Qwen q4: 2% (issue 20's goal). heed perplexity on Qwen against its f16 KV,
# Apache-2.0: 2 x 512 q8 +0.14%, q4 -0.11%; 4 x 512 q8 -0.17%, q4 +0.30%;
# all of GPL-3 (14 x 512): q8 +0.24%, q4 +0.87%. Before the lead rows and the
# least-squares q4 codes (heed/attention.h) Qwen's q4 was +3.1% on 2 x 512 and
# fails this bound. Gemma's q4 sits near 2% with or without them (ctx 1024,
# Apache 2 windows: +2.0% before, +2.5% after; GPL-3 7 windows: +1.5%, +1.6%);
# its single test window reads +3.2-3.4% (AVX2), which rounding on another ISA
# moves by about a point, so it keeps the old 5% there.
PPL_KV_BOUND = {"qwen": {"q8": 0.01, "q4": 0.02}, "gemma": {"q8": 0.01, "q4": 0.05}}
# Windows of perplexity (heed perplexity --chunks; the reference the same
# tokens). 4 x 512 (Qwen) and 2 x 1024 (Gemma) are the first 2048 tokens, but
# three heed runs (f16, q8, q4 KV) of those took over 5 minutes here, so the
# defaults are smaller; --ppl-full restores them.
PPL_WINDOWS = {"qwen": 2, "gemma": 1}
GREEDY_TOKENS = 16


# ------------------------------------------------------------ tiny synthetic models

def byte_chars():
    keep = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return [table[b] for b in range(256)]


WORDS = ["the", "he", "in", "er", "an", "on", "re", "at", "en", "is", "it", "or", "es", "ing", "ion", "and",
         "def", "ret", "urn", "return", "self", "int", "for", "if", "el", "se", "else", "print"]


def gpt2_vocab(w):
    """256 byte tokens, merges of WORDS (with and without the leading space), a control token."""
    toks = byte_chars()
    merges = []
    have = set(toks)
    for word in WORDS:
        for lead in ("", "\u0120"):
            full = lead + word
            cur = lead + word[0] if lead else word[0]
            parts = [lead, word[0]] if lead else None
            if parts:  # "Ġ" + first letter
                if cur not in have:
                    merges.append(f"{parts[0]} {parts[1]}")
                    toks.append(cur)
                    have.add(cur)
            for ch in word[1:]:
                nxt = cur + ch
                if nxt not in have:
                    merges.append(f"{cur} {ch}")
                    toks.append(nxt)
                    have.add(nxt)
                cur = nxt
            assert cur == full
    types = [1] * len(toks) + [3]
    toks.append("<|endoftext|>")
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("qwen2")
    w.add_token_list(toks)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(len(toks) - 1)
    w.add_eos_token_id(len(toks) - 1)
    w.add_add_bos_token(False)
    return len(toks)


def spm_vocab(w, add_bos=True):
    """<unk> <s> </s>, the 256 byte tokens, then pieces of WORDS with scores."""
    toks = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    types = [2, 3, 3] + [6] * 256
    scores = [0.0] * len(toks)
    have = set(toks)
    for i, word in enumerate(WORDS):
        for piece in (word, "\u2581" + word, word[:2], "\u2581" + word[:2]):
            if piece not in have:
                have.add(piece)
                toks.append(piece)
                types.append(1)
                scores.append(-float(len(toks)))
    for c in "abcdefghijklmnopqrstuvwxyz\u2581":
        if c not in have:
            have.add(c)
            toks.append(c)
            types.append(1)
            scores.append(-1000.0)
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list(toks)
    w.add_token_types(types)
    w.add_token_scores(scores)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_add_bos_token(add_bos)
    w.add_add_space_prefix(False)
    return len(toks)


# (arch, n_embd, n_head, n_head_kv, head_dim, n_ff, n_layer, extra)
TINY = {
    "llama": dict(n_embd=128, n_head=4, n_head_kv=2, head_dim=32, n_ff=256, n_layer=3, base=10000.0, vocab="spm"),
    "qwen2": dict(n_embd=128, n_head=4, n_head_kv=2, head_dim=32, n_ff=256, n_layer=3, base=1000.0, vocab="gpt2"),
    "qwen3": dict(n_embd=128, n_head=4, n_head_kv=2, head_dim=64, n_ff=256, n_layer=2, base=5000.0, vocab="gpt2"),
    "gemma3": dict(n_embd=128, n_head=4, n_head_kv=1, head_dim=64, n_ff=256, n_layer=6, base=100.0, vocab="spm",
                   swa=8),
    # Mistral-style: a llama whose every layer has the window
    "llama-swa": dict(arch="llama", n_embd=128, n_head=4, n_head_kv=2, head_dim=32, n_ff=256, n_layer=2,
                      base=10000.0, vocab="spm", swa=8),
}


def write_tiny(arch, path, seed=1, bad=None):
    """bad: None, or "shape" (attn_k one head too tall), "vocab" (embedding and output one
    row longer than the vocabulary), "missing" (blk.1.ffn_up absent): files heed must refuse."""
    c = TINY[arch]
    rng = np.random.default_rng(seed + sum(map(ord, arch)))
    arch = c.get("arch", arch)
    w = gguf.GGUFWriter(path, arch)
    E, H, KV, D, F, L = c["n_embd"], c["n_head"], c["n_head_kv"], c["head_dim"], c["n_ff"], c["n_layer"]
    w.add_block_count(L)
    w.add_context_length(256)
    w.add_embedding_length(E)
    w.add_feed_forward_length(F)
    w.add_head_count(H)
    w.add_head_count_kv(KV)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_rope_freq_base(c["base"])
    w.add_rope_dimension_count(D)
    if D * H != E or arch == "gemma3":
        w.add_key_length(D)
        w.add_value_length(D)
    if "swa" in c:
        w.add_sliding_window(c["swa"])
    n_vocab = spm_vocab(w) if c["vocab"] == "spm" else gpt2_vocab(w)

    kinds = [np.float32, np.float16, "q8"]
    k = [0]

    def mat(name, rows, cols, scale=None, kind=None):
        a = rng.standard_normal((rows, cols)).astype(np.float32) * np.float32(scale or 1 / np.sqrt(cols))
        kind = kind or kinds[k[0] % 3]
        k[0] += 1
        if kind == "q8":
            w.add_tensor(name, quantize(a, QT.Q8_0), raw_dtype=QT.Q8_0)
        else:
            w.add_tensor(name, a.astype(kind))

    def vec(name, n, mean=1.0, sd=0.1):
        w.add_tensor(name, (mean + sd * rng.standard_normal(n)).astype(np.float32))

    rows = n_vocab + (1 if bad == "vocab" else 0)
    mat("token_embd.weight", rows, E, scale=1.0, kind=np.float16)
    vec("output_norm.weight", E)
    if arch != "gemma3":
        mat("output.weight", rows, E, kind="q8")
    if arch == "llama":
        w.add_tensor("rope_freqs.weight", (1.0 + 7.0 * rng.random(D // 2)).astype(np.float32))
    for il in range(L):
        p = f"blk.{il}."
        vec(p + "attn_norm.weight", E)
        mat(p + "attn_q.weight", H * D, E)
        mat(p + "attn_k.weight", (KV + (1 if bad == "shape" and il == 0 else 0)) * D, E)
        mat(p + "attn_v.weight", KV * D, E)
        mat(p + "attn_output.weight", E, H * D)
        if arch == "qwen2":
            vec(p + "attn_q.bias", H * D, 0.0, 0.5)
            vec(p + "attn_k.bias", KV * D, 0.0, 0.5)
            vec(p + "attn_v.bias", KV * D, 0.0, 0.5)
        if arch in ("qwen3", "gemma3"):
            vec(p + "attn_q_norm.weight", D)
            vec(p + "attn_k_norm.weight", D)
        vec(p + "ffn_norm.weight", E)
        mat(p + "ffn_gate.weight", F, E)
        if not (bad == "missing" and il == 1):
            mat(p + "ffn_up.weight", F, E)
        mat(p + "ffn_down.weight", E, F)
        if arch == "gemma3":
            vec(p + "post_attention_norm.weight", E, 1.0, 0.3)
            vec(p + "post_ffw_norm.weight", E, 1.0, 0.3)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return n_vocab


def tiny_tokens(n_vocab, n=40, seed=7):
    rng = np.random.default_rng(seed)
    return [int(x) for x in rng.integers(3, n_vocab, n)]


# ------------------------------------------------------------------- comparisons

class Report:
    def __init__(self):
        self.failures = []

    def check(self, ok, what):
        print(("  ok    " if ok else "  FAIL  ") + what, flush=True)
        if not ok:
            self.failures.append(what)


def margins(logits):
    top2 = np.partition(logits, -2, axis=-1)[..., -2:]
    return np.abs(top2[..., 1] - top2[..., 0])


def logit_errors(heed, ref):
    """{"first", "max", "rms"} as BOUNDS has them, and the per-position max errors."""
    scale = float(ref.std())
    per_pos = np.empty(len(ref))
    rms = np.empty(len(ref))
    for i in range(0, len(ref), 64):  # a few rows at a time: Gemma's rows are 262144 wide
        d = np.abs(heed[i:i + 64].astype(np.float64) - ref[i:i + 64])
        per_pos[i:i + 64] = d.max(-1) / scale
        rms[i:i + 64] = np.sqrt((d * d).mean(-1)) / scale
    return {"first": float(per_pos[0]), "max": float(per_pos[1:].max()) if len(per_pos) > 1 else 0.0,
            "rms": float(np.median(rms))}, per_pos


def fmt(e):
    return " ".join(f"{k} {v:.4f}" for k, v in e.items())


def compare_logits(rep, label, heed, ref, bd):
    if heed.shape != ref.shape:
        rep.check(False, f"{label}: heed's logits are {heed.shape}, the reference's {ref.shape}")
        return
    if not np.all(np.isfinite(heed)):
        rep.check(False, f"{label}: heed's logits hold NaN or inf")
        return
    scale = float(ref.std())
    e, per_pos = logit_errors(heed, ref)
    thr = bd["margin"] * scale
    sure = margins(ref) >= thr
    agree = heed.argmax(-1) == ref.argmax(-1)
    worst = int(per_pos[1:].argmax()) + 1 if len(per_pos) > 1 else 0
    ok = all(e[k] <= bd[k] for k in e) and bool(agree[sure].all())
    rep.check(ok, f"{label}: {fmt(e)} (bounds {fmt({k: bd[k] for k in e})}; worst position {worst}); top-1 agrees at "
              f"{int(agree.sum())}/{len(agree)} positions, {int(agree[sure].sum())}/{int(sure.sum())} of those with a "
              f"reference margin >= {thr:.3f}")


def check_greedy(rep, label, m, prompt, gen, bd):
    """heed's greedy tokens, fed to the reference as one sequence (teacher forcing):
    each must be the reference's argmax, or (at a near tie) within margin * scale
    of it. Up to the first near tie this is the reference's own greedy
    continuation; after it the reference follows heed's choice, so the steps
    after it are still compared."""
    if not gen:
        rep.check(False, f"{label}: heed generated nothing")
        return
    lg = R.step(R.State(m), prompt + gen[:-1], out_from=len(prompt) - 1)
    thr = bd["margin"] * float(lg.std())  # the scale of the logits that decided
    top = lg.argmax(-1)
    exact, ties = 0, []
    for i, t in enumerate(gen):
        short = float(lg[i, top[i]] - lg[i, t])
        if int(top[i]) == t:
            exact += 1
        elif short <= thr:
            ties.append(i)
        else:
            rep.check(False, f"{label}: greedy step {i}: heed {t} {R.decode(m, [t])!r} is {short:.3f} under the "
                      f"reference's {int(top[i])} {R.decode(m, [int(top[i])])!r} (tolerance {thr:.3f}); heed's "
                      f"continuation {R.decode(m, gen)!r}")
            return
    rep.check(True, f"{label}: {len(gen)} greedy tokens, {exact} the reference's argmax"
              + (f", near ties (within {thr:.3f}) at steps {ties}" if ties else "") + f": {R.decode(m, gen)!r}")


class Heed:
    def __init__(self, driver, cli, tmp):
        self.driver, self.cli, self.tmp = driver, cli, tmp

    def logits(self, model, ids, n_vocab, *extra):
        out = os.path.join(self.tmp, "logits.f32")
        cmd = [self.driver, model, "--tokens", ",".join(map(str, ids)), "--logits", out, *extra]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd[:2])} ... {' '.join(extra)}: exit {r.returncode}: {r.stderr.strip()[-500:]}")
        a = np.fromfile(out, dtype="<f4")
        os.unlink(out)
        if a.size != len(ids) * n_vocab:
            raise RuntimeError(f"model_driver wrote {a.size} floats for {len(ids)} x {n_vocab}")
        return a.reshape(len(ids), n_vocab)

    def greedy(self, model, ids, n, *extra):
        cmd = [self.driver, model, "--tokens", ",".join(map(str, ids)), "--greedy", str(n), *extra]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"model_driver --greedy: exit {r.returncode}: {r.stderr.strip()[-500:]}")
        return [int(x) for x in json.loads(r.stdout.strip().splitlines()[-1])["ids"]]

    def perplexity(self, model, path, ctx, windows, kv=None):
        cmd = [self.cli, "perplexity", model, "-f", path, "--ctx", str(ctx), "--chunks", str(windows), "--json"]
        cmd += ["--kv", kv] if kv else []
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"heed perplexity: exit {r.returncode}: {r.stderr.strip()[-500:]}")
        return json.loads(r.stdout.strip().splitlines()[-1])


def tokenize(cli, model, text=None, path=None, special=False):
    cmd = [cli, "tokenize", model] + (["-p", text] if path is None else ["-f", path]) + ["--ids"]
    if special:
        cmd.append("--parse-special")
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"heed tokenize: exit {r.returncode}: {r.stderr.strip()}")
    return json.loads(r.stdout)


# --------------------------------------------------------------------- real models

CODE = ("def quicksort(xs):\n    \"\"\"Sort a list.\"\"\"\n    if len(xs) <= 1:\n        return xs\n"
        "    pivot = xs[len(xs) // 2]\n    left = [x for x in xs if x < pivot]\n")
PROSE = ("The river wound through the valley, past farms and a ruined mill, until it reached the sea. "
         "Every spring the snow on the mountains melted and")
CHAT = {
    "qwen": "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
            "Write a short poem about the sea.<|im_end|>\n<|im_start|>assistant\n",
    "gemma": "<start_of_turn>user\nWrite a short poem about the sea.<end_of_turn>\n<start_of_turn>model\n",
}
SANITY = {"qwen": "def fibonacci(n):", "gemma": "The capital of France is"}
PPL_CTX = {"qwen": 512, "gemma": 1024}
LONG_TOKENS = 600


def prompts(cli, name, path):
    """[(label, ids, extra driver args)]"""
    out = [("code", tokenize(cli, path, CODE), ()), ("prose", tokenize(cli, path, PROSE), ()),
           ("chat", tokenize(cli, path, CHAT[name], special=True), ())]
    if name == "gemma":
        long_ids = tokenize(cli, path, path=LONG_TEXT)[:LONG_TOKENS]
        out.append(("licence", long_ids, ()))
        out.append(("licence, chunks of 200", long_ids, ("--chunk", "200")))
    else:
        out.append(("code, chunks of 5", out[0][1], ("--chunk", "5")))
    return out


def run_real(rep, heed, name, path, do_ppl):
    t0 = time.time()
    m = R.load(path)
    ps = prompts(heed.cli, name, path)
    ref, ref_ids = None, None
    for label, ids, extra in ps:
        if ids != ref_ids:
            ref, ref_ids = None, None
            ref, ref_ids = R.forward(m, ids), ids
        try:
            h = heed.logits(path, ids, m.n_vocab, *extra)
        except RuntimeError as e:
            rep.check(False, f"{name} {label}: {e}")
            continue
        compare_logits(rep, f"{name} {label} ({len(ids)} tokens)", h, ref, BOUNDS[name])
        del h
    del ref
    for label, ids in ((repr(SANITY[name]), tokenize(heed.cli, path, SANITY[name])), ("chat", ps[2][1])):
        try:
            gen = heed.greedy(path, ids, GREEDY_TOKENS)
        except RuntimeError as e:
            rep.check(False, f"{name} greedy after {label}: {e}")
            continue
        check_greedy(rep, f"{name} greedy after {label}", m, ids, gen, BOUNDS[name])
    print(f"  ({name}: logits and greedy {time.time() - t0:.0f} s)", flush=True)
    if do_ppl:
        t1 = time.time()
        ctx = PPL_CTX[name]
        ids = tokenize(heed.cli, path, path=APACHE)[:PPL_WINDOWS[name] * ctx]
        ref = R.perplexity(m, ids, ctx)
        print(f"  reference perplexity {ref['ppl']:.4f} +/- {ref['err']:.4f} over {ref['n_tokens']} tokens, ctx {ctx} "
              f"({time.time() - t1:.0f} s)", flush=True)
        for kv in (None, "q8", "q4"):
            try:
                h = heed.perplexity(path, APACHE, ctx, PPL_WINDOWS[name], kv)
            except RuntimeError as e:
                rep.check(False, f"{name} perplexity kv {kv or 'default'}: {e}")
                continue
            rel = h["ppl"] / ref["ppl"] - 1
            bound = PPL_KV_BOUND[name][kv] if kv else PPL_REL_BOUND
            same = h.get("windows") == ref["windows"]  # n_tokens: heed may count the whole text
            rep.check(same and (abs(rel) <= bound if not kv else -PPL_REL_BOUND <= rel <= bound),
                      f"{name} perplexity kv {kv or 'default'}: {h['ppl']:.4f} +/- {h.get('err', float('nan')):.4f} "
                      f"over {h.get('n_tokens')} tokens in {h.get('windows')} windows; reference {ref['ppl']:.4f}: "
                      f"{100 * rel:+.2f}% (bound {100 * bound:.0f}%)")
    R.unload(path)


def run_tiny(rep, heed, tmp):
    for arch in TINY:
        path = os.path.join(tmp, f"tiny-{arch}.gguf")
        n_vocab = write_tiny(arch, path)
        m = R.Model(path)
        ids = tiny_tokens(n_vocab)
        ref = R.forward(m, ids)
        runs = [("", ())]
        if arch == "gemma3":
            runs += [(", chunks of 7", ("--chunk", "7")), (", isa scalar", ("--isa", "scalar"))]
        for suffix, extra in runs:
            try:
                h = heed.logits(path, ids, n_vocab, *extra)
            except RuntimeError as e:
                rep.check(False, f"tiny {arch}{suffix}: {e}")
                continue
            compare_logits(rep, f"tiny {arch}{suffix} ({len(ids)} tokens)", h, ref, BOUNDS["tiny"])
        try:
            gen = heed.greedy(path, ids[:12], 8)
            check_greedy(rep, f"tiny {arch} greedy", m, ids[:12], gen, BOUNDS["tiny"])
        except RuntimeError as e:
            rep.check(False, f"tiny {arch} greedy: {e}")
    # files heed must refuse, naming what is wrong
    for bad, needle in (("shape", "'blk.0.attn_k.weight' has shape"), ("vocab", "'token_embd.weight' has shape [128, 350]; the configuration needs [128, 349]"),
                        ("missing", "'blk.1.ffn_up.weight' is missing")):
        path = os.path.join(tmp, f"tiny-bad-{bad}.gguf")
        n_vocab = write_tiny("qwen2", path, bad=bad)
        try:
            heed.logits(path, [1, 2, 3], n_vocab)
            rep.check(False, f"tiny qwen2 with a bad {bad}: heed accepted it")
        except RuntimeError as e:
            rep.check(needle in str(e), f"tiny qwen2 with a bad {bad}: refused: {str(e).strip()[-160:]}")


# ---------------------------------------------------------------------- self-check

MUTATIONS = {
    "llama": ["rope_style", "swap_norm", "no_freq_factors"],
    "qwen2": ["rope_style", "no_bias", "swap_norm"],
    "qwen3": ["rope_style", "swap_norm"],
    "gemma3": ["rope_style", "swap_norm", "swa_off_by_one", "swa_base", "norm_plus_one"],
}


def bound_check(rep, label, m, ids, bd, undetectable=()):
    """The emulated heed error within the bounds, every planted mistake over one of them
    (those in undetectable only reported)."""
    ref = R.forward(m, ids)

    def err(emulate=(), mutate=()):
        m.emulate, m.mutate = set(emulate), set(mutate)
        try:
            return logit_errors(R.forward(m, ids), ref)[0]
        finally:
            m.emulate, m.mutate = set(), set()

    e = err(emulate=("act_q8", "kv_f16"))
    rep.check(all(e[k] <= bd[k] for k in e), f"{label}: emulated heed rounding: {fmt(e)} (bounds "
              f"{fmt({k: bd[k] for k in e})})")
    for mu in MUTATIONS[m.arch]:
        if mu == "no_bias" and not any(n.endswith(".bias") for n in m.t):
            continue
        e = err(mutate=(mu,))
        caught = any(e[k] > bd[k] for k in e)
        if mu in undetectable:
            print(f"  info  {label}: mistake {mu}: {fmt(e)}: {'caught' if caught else 'under the bounds'} here "
                  f"(the tiny model's check covers it)")
        else:
            rep.check(caught, f"{label}: mistake {mu} caught: {fmt(e)}")


def self_check(rep, args, mdir, tmp):
    if args.only in (None, "tiny"):
        for arch in TINY:
            path = os.path.join(tmp, f"tiny-{arch}.gguf")
            n_vocab = write_tiny(arch, path)
            m = R.Model(path)
            ids = tiny_tokens(n_vocab)
            lg = R.forward(m, ids)
            rep.check(lg.shape == (len(ids), n_vocab) and bool(np.isfinite(lg).all()),
                      f"tiny {arch}: {n_vocab} tokens, logits std {lg.std():.3f}")
            bound_check(rep, f"tiny {arch}", m, ids, BOUNDS["tiny"])
    for name in ("qwen", "gemma"):
        if args.only not in (None, name):
            continue
        path = os.path.join(mdir, MODELS[name])
        if not os.path.exists(path):
            print(f"skip {name}: {path} is absent")
            continue
        t0 = time.time()
        m = R.load(path)
        ids = tokenize(args.heed, path, SANITY[name])
        gen, mg = R.greedy(m, ids, GREEDY_TOKENS)
        text = R.decode(m, gen)
        print(f"  {name}: {R.decode(m, ids)!r} -> {text!r} (min margin {min(mg):.3f}; {time.time() - t0:.0f} s with load)")
        rep.check(("return" in text) if name == "qwen" else ("France" in text or "Paris" in text),
                  f"{name}: the greedy continuation reads as sense")
        if name == "qwen":
            t1 = time.time()
            ap = tokenize(args.heed, path, path=APACHE)[:1024]
            p = R.perplexity(m, ap, 512)
            rep.check(p["ppl"] < 10, f"qwen: perplexity of the first 1024 Apache-2.0 tokens, ctx 512: "
                      f"{p['ppl']:.4f} +/- {p['err']:.4f} ({time.time() - t1:.0f} s)")
            bound_check(rep, "qwen code", m, tokenize(args.heed, path, CODE), BOUNDS["qwen"])
        else:
            long_ids = tokenize(args.heed, path, path=LONG_TEXT)[:LONG_TOKENS]
            bound_check(rep, f"gemma licence ({LONG_TOKENS} tokens)", m, long_ids, BOUNDS["gemma"],
                        undetectable=("swa_off_by_one",))
        R.unload(path)
        print(f"  ({name}: {time.time() - t0:.0f} s)", flush=True)


def model_dir():
    env = os.environ.get("HEED_MODELS")
    return env if env else os.path.expanduser("~/.cache/heed/models")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("driver", nargs="?")
    ap.add_argument("heed", nargs="?")
    ap.add_argument("--self-check", action="store_true")
    ap.add_argument("--heed", dest="heed_opt")
    ap.add_argument("--only", choices=["tiny", "qwen", "gemma"])
    ap.add_argument("--no-ppl", action="store_true")
    ap.add_argument("--ppl-full", action="store_true", help="perplexity over the first 2048 tokens")
    args = ap.parse_args()
    args.heed = args.heed_opt or args.heed or os.path.join(HERE, "..", "build", "heed")
    mdir = model_dir()
    if args.ppl_full:
        PPL_WINDOWS.update(qwen=4, gemma=2)
    rep = Report()
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="heed-model-oracle-") as tmp:
        if args.self_check:
            self_check(rep, args, mdir, tmp)
        else:
            if not args.driver or not os.path.exists(args.driver) or not os.path.exists(args.heed):
                print(f"usage: model_oracle.py DRIVER HEED (driver {args.driver!r}, heed {args.heed!r})")
                return 1
            heed = Heed(args.driver, args.heed, tmp)
            if args.only in (None, "tiny"):
                print("tiny synthetic models", flush=True)
                run_tiny(rep, heed, tmp)
            missing = []
            for name in ("qwen", "gemma"):
                if args.only not in (None, name):
                    continue
                path = os.path.join(mdir, MODELS[name])
                if not os.path.exists(path):
                    missing.append(path)
                    continue
                print(name, flush=True)
                run_real(rep, heed, name, path, not args.no_ppl)
            if missing and not rep.failures:
                print(f"\nmodel_oracle: skipped: {', '.join(missing)} absent (make setup fetches them); "
                      f"the synthetic cases passed ({time.time() - t0:.0f} s)")
                return 77
    if rep.failures:
        print(f"\nmodel_oracle: {len(rep.failures)} FAILED ({time.time() - t0:.0f} s):")
        for f in rep.failures:
            print("  " + f)
        return 1
    print(f"\nmodel_oracle: all passed ({time.time() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
