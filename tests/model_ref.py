#!/usr/bin/env python3
"""tests/model_ref.py - an independent reference forward pass in numpy.

Reads a GGUF with tests/gguf_fast.py (the same values as the `gguf`
package's GGUFReader, checked by tests/gguf_oracle.py, in a fraction of the
time; every tensor dequantized with gguf.quants.dequantize, cached in memory
per process) and computes the
logits the way llama.cpp's graph builders do (src/models/{llama,qwen2,qwen3,
gemma3}.cpp, hyper-parameters as src/llama-model.cpp reads them). It shares no
code with heed: it is what heed's forward pass is checked against
(tests/model_oracle.py).

Conventions, per architecture (as llama.cpp has them):

  all      RMSNorm y = x / sqrt(mean(x^2) + eps) * w (eps: attention.
           layer_norm_rms_epsilon); causal attention over the sequence,
           scores scaled by 1/sqrt(head_dim_k); GQA: query head h reads KV
           head h // (n_head / n_head_kv) (ggml's broadcast in mul_mat);
           RoPE angle pos * freq_scale * base^(-2i/n_rot) / freq_factor[i]
           over the first n_rot dims of each head (rope.dimension_count,
           default the head dim); an optional bias on q/k/v/o is added when
           the file has one; output = output.weight, or token_embd (tied)
           when the file has none.
  llama    RoPE "NORM": rotated pairs are (x[2i], x[2i+1]); rope_freqs.weight
           (when present) gives freq_factor; SwiGLU FFN down(silu(gate) * up).
  qwen2    as llama, but RoPE "NEOX": pairs (x[i], x[i + n_rot/2]); q/k/v
           carry biases.
  qwen3    as qwen2 without biases, plus an RMSNorm of each q and k head
           (attn_q_norm, attn_k_norm, over the head dim) before RoPE.
  gemma3   RoPE NEOX; the embeddings scaled by sqrt(n_embd); per layer:
           attn_norm, q/k per-head RMSNorm, RoPE, attention (q scaled by
           1/sqrt(key_length); 1/sqrt(n_embd/n_head) for the 62-layer 27B, as
           llama.cpp), attn_output, post_attention_norm, residual; ffn_norm,
           down(gelu_tanh(gate) * up), post_ffw_norm, residual. The GGUF
           converter has already added 1 to Gemma's norm weights, so the norm
           is x * w like the others. Sliding window: layer il is global when
           (il + 1) % 6 == 0, else local, attending to keys with
           q_pos - k_pos < sliding_window (llama.cpp's LLAMA_SWA_TYPE_STANDARD
           masks q_pos - k_pos >= n_swa). Local layers rotate with base
           rope.freq_base_swa (default 10000) and no scaling; global layers
           with rope.freq_base and rope.scaling.factor (linear) when present.
           Tied output, no final logit soft-cap (llama.cpp applies none in
           the sliding-window build).

Precision: weights are dequantized to float32 and the matmuls run in float32
(numpy's BLAS); norms, RoPE angles, softmax and the attention products run in
float64.

API
  load(path) -> Model                (cached per process)
  forward(model, ids) -> float32 [n_tokens][n_vocab], one sequence from pos 0
  greedy(model, ids, n) -> (generated ids, top-2 margin at each step)
  perplexity(model, ids, ctx) -> {"ppl", "err", "n_tokens", "windows"} as
      llama-perplexity computes them (ids: the whole text tokenized, BOS
      first when the model adds one)
  decode(model, ids) -> str          (the GGUF's vocabulary, for reading)

Run directly: model_ref.py MODEL.gguf TOKEN_IDS (comma-separated) [N] prints
a greedy continuation of N (default 16) tokens.
"""
import math
import os
import sys

import numpy as np
from gguf.quants import dequantize

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gguf_fast  # noqa: E402

ARCHS = ("llama", "qwen2", "qwen3", "gemma3")


def _field(r, key, default=None):
    v = r.kv.get(key, default)
    return v.tolist() if isinstance(v, np.ndarray) else v


class Model:
    def __init__(self, path):
        self.path = path
        r = gguf_fast.read(path)
        self.reader = r
        self.arch = _field(r, "general.architecture")
        if self.arch not in ARCHS:
            raise ValueError(f"{path}: architecture {self.arch!r}; the reference knows {', '.join(ARCHS)}")
        a = self.arch

        def kv(suffix, default=None):
            return _field(r, f"{a}.{suffix}", default)

        self.n_layer = int(kv("block_count"))
        self.n_embd = int(kv("embedding_length"))
        self.n_ff = int(kv("feed_forward_length"))
        self.n_head = int(kv("attention.head_count"))
        self.n_head_kv = int(kv("attention.head_count_kv", self.n_head))
        self.head_dim_k = int(kv("attention.key_length", self.n_embd // self.n_head))
        self.head_dim_v = int(kv("attention.value_length", self.n_embd // self.n_head))
        self.n_rot = int(kv("rope.dimension_count", self.head_dim_k))
        self.eps = float(kv("attention.layer_norm_rms_epsilon"))
        self.rope_base = float(kv("rope.freq_base", 10000.0))
        stype = kv("rope.scaling.type")
        factor = kv("rope.scaling.factor")
        if factor is None and kv("rope.scale_linear") is not None:
            stype, factor = "linear", kv("rope.scale_linear")
        if stype not in (None, "none", "linear") and factor not in (None, 0.0, 1.0):
            raise ValueError(f"{path}: rope scaling {stype!r} is not in the reference")
        self.freq_scale = 1.0 / float(factor) if factor else 1.0
        self.n_swa = 0
        self.swa_pattern = 0
        self.rope_base_swa = self.rope_base
        self.freq_scale_swa = self.freq_scale
        self.attn_scale = 1.0 / math.sqrt(self.head_dim_k)
        if a == "gemma3":
            self.n_swa = int(kv("attention.sliding_window", 0) or 0)
            if self.n_swa:
                self.swa_pattern = 6
                self.rope_base_swa = float(kv("rope.freq_base_swa", 10000.0))
                self.freq_scale_swa = 1.0
            if self.n_layer == 62:  # llama.cpp: Gemma 3 27B scales by n_embd / n_head
                self.attn_scale = 1.0 / math.sqrt(self.n_embd // self.n_head)
        if a == "llama":  # Mistral-style: every layer windowed, one RoPE base
            self.n_swa = int(kv("attention.sliding_window", 0) or 0)
        self.rope_neox = a in ("qwen2", "qwen3", "gemma3")
        self.tokens = [gguf_fast.raw_bytes(t).decode("utf-8", "replace") for t in r.kv["tokenizer.ggml.tokens"]]
        self.n_vocab = len(self.tokens)
        self.tok_model = _field(r, "tokenizer.ggml.model")
        self.bos = _field(r, "tokenizer.ggml.bos_token_id")
        add_bos = _field(r, "tokenizer.ggml.add_bos_token")
        self.add_bos = bool(add_bos) if add_bos is not None else self.tok_model == "llama"
        self.t = {t.name: t for t in r.tensors}
        self._w = {}
        self._rope_cache = {}
        self.freq_factors = None
        if "rope_freqs.weight" in self.t:
            self.freq_factors = self.w("rope_freqs.weight").astype(np.float64).reshape(-1)
            if self.freq_factors.size != self.n_rot // 2:
                raise ValueError(f"{path}: rope_freqs has {self.freq_factors.size} factors for n_rot {self.n_rot}")
        self.out_name = "output.weight" if "output.weight" in self.t else "token_embd.weight"
        # Knobs for tuning the oracle's bounds, all off by default (the reference
        # proper uses none of them):
        #   emulate: "act_q8" quantizes the activations entering a product with
        #     quantized weights to blocks of 32 int8 (d = max|x|/127), as heed's
        #     kernels do (heed/weights.h); "kv_f16" rounds K and V to f16.
        #   mutate: deliberate mistakes the oracle's bounds must catch:
        #     "rope_style" (NORM for NEOX and back), "no_bias", "swap_norm"
        #     (attn_norm <-> ffn_norm; Gemma: post_attention_norm <-> post_ffw_norm),
        #     "swa_off_by_one" (window q - k <= n_swa), "swa_base" (local layers
        #     rotate with the global base), "norm_plus_one" (Gemma: x * (1 + w)),
        #     "no_freq_factors" (rope_freqs ignored).
        self.emulate = set()
        self.mutate = set()

    def has(self, name):
        return name in self.t

    def w(self, name):
        """The dequantized tensor, numpy order ([rows][cols] for a matrix), float32."""
        x = self._w.get(name)
        if x is None:
            t = self.t[name]
            x = np.ascontiguousarray(dequantize(t.data, t.tensor_type), dtype=np.float32)
            shape = tuple(int(s) for s in reversed(t.shape.tolist()))
            x = x.reshape(shape)
            self._w[name] = x
        return x

    def embed_rows(self, ids):
        t = self.t["token_embd.weight"]
        if "token_embd.weight" in self._w:
            return self._w["token_embd.weight"][ids]
        if self.out_name == "token_embd.weight":
            return self.w("token_embd.weight")[ids]
        rows = np.asarray(t.data)[np.asarray(ids)]  # only the rows needed (the untied table is large)
        return dequantize(rows, t.tensor_type).astype(np.float32).reshape(len(ids), self.n_embd)

    def layer_is_swa(self, il):
        if not self.n_swa:
            return False
        return not self.swa_pattern or (il + 1) % self.swa_pattern != 0

    def rope_tables(self, swa, pos):
        """cos, sin [n_pos][n_rot/2] (float64) for positions pos."""
        base = self.rope_base_swa if swa else self.rope_base
        scale = self.freq_scale_swa if swa else self.freq_scale
        i = np.arange(self.n_rot // 2, dtype=np.float64)
        inv = base ** (-2.0 * i / self.n_rot)
        if self.freq_factors is not None and "no_freq_factors" not in self.mutate:
            inv = inv / self.freq_factors
        theta = np.asarray(pos, dtype=np.float64)[:, None] * (scale * inv)[None, :]
        return np.cos(theta), np.sin(theta)


_MODELS = {}


def load(path):
    m = _MODELS.get(path)
    if m is None:
        m = _MODELS[path] = Model(path)
    return m


def unload(path):
    _MODELS.pop(path, None)


def _m(model):
    return model if isinstance(model, Model) else load(model)


def rms_norm(x, w, eps):
    """Over the last axis, in float64; w broadcast over the rest."""
    x64 = x.astype(np.float64)
    y = x64 / np.sqrt(np.mean(x64 * x64, axis=-1, keepdims=True) + eps)
    return (y * w.astype(np.float64)).astype(np.float32)


def rope(x, cos, sin, n_rot, neox):
    """x [n_tok][n_heads][head_dim]; the first n_rot dims of every head rotated."""
    x = x.astype(np.float64)
    out = x.copy()
    c, s = cos[:, None, :], sin[:, None, :]
    if neox:
        h = n_rot // 2
        x0, x1 = x[..., :h], x[..., h:n_rot]
        out[..., :h] = x0 * c - x1 * s
        out[..., h:n_rot] = x0 * s + x1 * c
    else:
        x0, x1 = x[..., 0:n_rot:2], x[..., 1:n_rot:2]
        out[..., 0:n_rot:2] = x0 * c - x1 * s
        out[..., 1:n_rot:2] = x0 * s + x1 * c
    return out


def gelu_tanh(x):
    x64 = x.astype(np.float64)
    return (0.5 * x64 * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x64 + 0.044715 * x64 ** 3)))).astype(np.float32)


def silu(x):
    x64 = x.astype(np.float64)
    return (x64 / (1.0 + np.exp(-x64))).astype(np.float32)


class State:
    """One sequence's KV cache: per layer K [n_kv][T][dk], V [n_kv][T][dv] (float64, K after RoPE)."""

    def __init__(self, m):
        self.m = m
        self.n_past = 0
        self.k = [None] * m.n_layer
        self.v = [None] * m.n_layer


_PLAIN = ("F32", "F16", "BF16")


def _q8_blocks(x):
    """x [n][k] rounded as heed quantizes activations: blocks of 32, d = max|x|/127."""
    n, k = x.shape
    b = x.astype(np.float32).reshape(n, k // 32, 32)
    d = np.abs(b).max(axis=-1, keepdims=True) / np.float32(127)
    q = np.where(d > 0, np.round(b / np.where(d > 0, d, 1)), 0)
    return (q * d).reshape(n, k).astype(np.float32)


def _linear(m, x, name):
    wn = name + ".weight"
    if "act_q8" in m.emulate and m.t[wn].tensor_type.name not in _PLAIN:
        x = _q8_blocks(x)
    y = x @ m.w(wn).T
    bn = name + ".bias"
    if m.has(bn) and "no_bias" not in m.mutate:
        y = y + m.w(bn)
    return y.astype(np.float32, copy=False)


def _attention(m, st, il, x, pos):
    pre = f"blk.{il}."
    n, H, KV, dk, dv = x.shape[0], m.n_head, m.n_head_kv, m.head_dim_k, m.head_dim_v
    q = _linear(m, x, pre + "attn_q").reshape(n, H, dk)
    k = _linear(m, x, pre + "attn_k").reshape(n, KV, dk)
    v = _linear(m, x, pre + "attn_v").reshape(n, KV, dv)
    if m.has(pre + "attn_q_norm.weight"):  # qwen3, gemma3
        q = rms_norm(q, m.w(pre + "attn_q_norm.weight"), m.eps)
        k = rms_norm(k, m.w(pre + "attn_k_norm.weight"), m.eps)
    swa = m.layer_is_swa(il)
    cos, sin = m.rope_tables(swa and "swa_base" not in m.mutate, pos)
    neox = m.rope_neox != ("rope_style" in m.mutate)
    q = rope(q, cos, sin, m.n_rot, neox) * m.attn_scale
    k = rope(k, cos, sin, m.n_rot, neox)
    if "kv_f16" in m.emulate:
        k = k.astype(np.float16).astype(np.float64)
        v = v.astype(np.float16)
    k = k.transpose(1, 0, 2)  # [KV][n][dk]
    v = v.astype(np.float64).transpose(1, 0, 2)
    st.k[il] = k if st.k[il] is None else np.concatenate([st.k[il], k], axis=1)
    st.v[il] = v if st.v[il] is None else np.concatenate([st.v[il], v], axis=1)
    K, V = st.k[il], st.v[il]
    T = K.shape[1]
    qpos = np.asarray(pos)[:, None]
    kpos = np.arange(T)[None, :]
    allowed = kpos <= qpos
    if swa:
        allowed &= (qpos - kpos) < m.n_swa + ("swa_off_by_one" in m.mutate)
    g = H // KV
    qg = q.transpose(1, 0, 2).reshape(KV, g * n, dk)  # head h = kv * g + j
    s = np.matmul(qg, K.transpose(0, 2, 1)).reshape(KV, g, n, T)
    s = np.where(allowed[None, None], s, -np.inf)
    s -= s.max(axis=-1, keepdims=True)
    p = np.exp(s)
    p /= p.sum(axis=-1, keepdims=True)
    o = np.matmul(p.reshape(KV, g * n, T), V).reshape(KV, g, n, dv)  # [KV][g][n][dv]
    o = o.reshape(H, n, dv).transpose(1, 0, 2).reshape(n, H * dv).astype(np.float32)
    return _linear(m, o, pre + "attn_output")


def _ffn(m, il, x):
    pre = f"blk.{il}."
    gate = _linear(m, x, pre + "ffn_gate")
    up = _linear(m, x, pre + "ffn_up")
    act = gelu_tanh(gate) if m.arch == "gemma3" else silu(gate)
    return _linear(m, act * up, pre + "ffn_down")


def step(st, ids, out_from=0):
    """Runs ids after what st holds; returns the logits [n - out_from][n_vocab] of
    positions out_from.. of this batch (float32)."""
    m = st.m
    ids = [int(i) for i in ids]
    n = len(ids)
    pos = np.arange(st.n_past, st.n_past + n)
    x = m.embed_rows(ids).astype(np.float32)
    if m.arch == "gemma3":
        x = x * np.float32(math.sqrt(m.n_embd))
    gemma = m.arch == "gemma3"
    swap = "swap_norm" in m.mutate
    names = ["attn_norm", "ffn_norm", "post_attention_norm", "post_ffw_norm"]
    if swap and gemma:
        names = ["attn_norm", "ffn_norm", "post_ffw_norm", "post_attention_norm"]
    elif swap:
        names = ["ffn_norm", "attn_norm", "", ""]

    def norm(v, name):
        w = m.w(name)
        if "norm_plus_one" in m.mutate and gemma:
            w = w + 1
        return rms_norm(v, w, m.eps)

    for il in range(m.n_layer):
        pre = f"blk.{il}."
        h = norm(x, pre + names[0] + ".weight")
        a = _attention(m, st, il, h, pos)
        if gemma:
            a = norm(a, pre + names[2] + ".weight")
        x = x + a
        h = norm(x, pre + names[1] + ".weight")
        f = _ffn(m, il, h)
        if gemma:
            f = norm(f, pre + names[3] + ".weight")
        x = x + f
    st.n_past += n
    x = rms_norm(x[out_from:], m.w("output_norm.weight"), m.eps)
    return (x @ m.w(m.out_name).T).astype(np.float32)


def forward(model, ids):
    """Logits [n_tokens][n_vocab] (float32) of ids as one sequence from position 0."""
    m = _m(model)
    return step(State(m), ids)


def greedy(model, ids, n):
    """n greedy tokens after ids (one per step after the prompt); also the top-2
    logit margin of every step (the margin that decided each generated token)."""
    m = _m(model)
    st = State(m)
    logits = step(st, ids, out_from=len(ids) - 1)[-1]
    out, margins = [], []
    for i in range(n):
        top2 = np.partition(logits, -2)[-2:]
        margins.append(float(abs(top2[1] - top2[0])))
        t = int(np.argmax(logits))
        out.append(t)
        if i + 1 < n:
            logits = step(st, [t])[-1]
    return out, margins


def log_softmax_nll(logits, target):
    l64 = logits.astype(np.float64)
    mx = l64.max()
    lse = mx + math.log(np.exp(l64 - mx).sum())
    return lse - l64[target]


def perplexity(model, ids, ctx):
    """As llama-perplexity: n_tokens // ctx windows of ctx tokens, each starting
    with BOS when the model adds BOS (replacing the window's first token); the
    NLL of tokens ctx/2+1 .. ctx-1 of each window, each predicted from the
    logits of the position before. Returns ppl = exp(mean NLL) and the error
    llama-perplexity prints: ppl * sqrt((E[nll^2] - E[nll]^2) / (count - 1))."""
    m = _m(model)
    ids = [int(i) for i in ids]
    windows = len(ids) // ctx
    if windows < 1:
        raise ValueError(f"perplexity: {len(ids)} tokens, fewer than one window of {ctx}")
    first = ctx // 2
    nll = nll2 = 0.0
    count = 0
    for w in range(windows):
        toks = ids[w * ctx:(w + 1) * ctx]
        if m.add_bos:
            toks[0] = m.bos
        lg = step(State(m), toks, out_from=first)  # logits of positions first..ctx-1
        for j in range(ctx - 1 - first):
            v = log_softmax_nll(lg[j], toks[first + j + 1])
            nll += v
            nll2 += v * v
            count += 1
    nll /= count
    nll2 /= count
    ppl = math.exp(nll)
    var = nll2 - nll * nll
    err = math.sqrt(var / (count - 1)) * ppl if var > 0 else float("nan")
    return {"ppl": ppl, "err": err, "n_tokens": windows * ctx, "windows": windows, "count": count}


def _byte_decoder():
    keep = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[chr(b)] = b
        else:
            table[chr(256 + extra)] = b
            extra += 1
    return table


_BYTES = _byte_decoder()


def decode(model, ids):
    """Text of ids from the GGUF's vocabulary: byte-level (gpt2) or SentencePiece
    pieces (llama: '▁' is a space, <0xNN> a byte)."""
    m = _m(model)
    out = bytearray()
    for i in ids:
        t = m.tokens[i]
        if m.tok_model == "gpt2":
            if all(c in _BYTES for c in t):
                out += bytes(_BYTES[c] for c in t)
            else:
                out += t.encode()
        else:
            if len(t) == 6 and t.startswith("<0x") and t.endswith(">"):
                out.append(int(t[3:5], 16))
            else:
                out += t.replace("\u2581", " ").encode()
    return out.decode("utf-8", "replace")


if __name__ == "__main__":
    if len(sys.argv) < 3:
        raise SystemExit(__doc__.split("Run directly: ")[1])
    mdl = load(sys.argv[1])
    prompt = [int(s) for s in sys.argv[2].split(",")]
    gen, mg = greedy(mdl, prompt, int(sys.argv[3]) if len(sys.argv) > 3 else 16)
    print(gen)
    print(repr(decode(mdl, prompt)) + " -> " + repr(decode(mdl, gen)))
    print("min top-2 margin %.3f" % min(mg))
