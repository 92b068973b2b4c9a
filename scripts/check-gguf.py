#!/usr/bin/env python3
"""Check a GGUF for llama.cpp with its own Python reader (the `gguf` package from PyPI).

    check-gguf.py OUT.gguf [REFERENCE.gguf] [--ignore KEY ...] [--rel-rmse X]
                  [--hf HF_DIR] [--allow-no-merges]

Architectures (`general.architecture`): llama, qwen2, gpt2, gptneox. For each, without options:
- every metadata key llama.cpp's loader reads for it is present when required and has the type
  llama.cpp's typed getter accepts (general.*, `<arch>.*` of `load_hparams`, `tokenizer.ggml.*` of
  the vocabulary loader); the hyperparameters are coherent (token ids inside the vocabulary,
  `<arch>.vocab_size` = number of tokens, llama's rope.dimension_count = head size, as llama.cpp
  demands; partial rotary even and within the head); no `<other arch>.*` key is written;
- the tensors are exactly those `load_tensors` creates for the architecture, with the ggml shapes
  (ne) its `create_tensor` calls imply from the hyperparameters: every required one present,
  optional ones (below) allowed, nothing else (llama.cpp refuses a file with a tensor it does not
  create: "wrong number of tensors"); every name is one gguf-py's MODEL_TENSORS lists for the arch;
- 1-D tensors, `*_norm.weight` and position_embd are F32 (convert_hf_to_gguf.py forces that, and
  llama-quantize leaves them so: "most of the codebase that takes in 1D tensors or norms only
  handles F32 tensors");
- every tensor's type is known to gguf-py, and `gguf.quants.dequantize` gives finite values.

Tensors per architecture (E embedding_length, V number of tokens, H/Hkv heads, Dk/Dv head size
(attention.key_length/value_length, else E/H), F feed_forward_length, C context_length, G = Dv*Hkv;
blk.N.* for every layer; "?" optional, else required):
- llama: token_embd [E,V], output_norm [E], output? [E,V], rope_freqs? [n_rot/2]; attn_norm [E],
  attn_q [E,Dk*H], attn_k [E,Dk*Hkv], attn_v [E,Dv*Hkv], attn_output [Dk*H,E], attn_q.bias? [E],
  attn_k.bias? [G], attn_v.bias? [G], attn_output.bias? [E], ffn_norm [E], ffn_gate [E,F],
  ffn_down [F,E], ffn_up [E,F], ffn_gate.bias? [F], ffn_down.bias? [E], ffn_up.bias? [F].
- qwen2: token_embd [E,V], output_norm [E], output? [E,V], output.bias? [V]; attn_norm [E],
  attn_q [E,E], attn_k [E,G], attn_v [E,G], attn_output [E,E], attn_q.bias [E], attn_k.bias [G],
  attn_v.bias [G], ffn_norm [E], ffn_gate [E,F], ffn_down [F,E], ffn_up [E,F].
- gpt2: token_embd [E,V], position_embd [E,C], output_norm{,.bias} [E], output? [E,V] (tied to
  token_embd when absent); attn_norm{,.bias} [E], attn_qkv [E,E+2G], attn_qkv.bias [E+2G],
  attn_output [E,E], attn_output.bias [E], ffn_norm{,.bias} [E], ffn_down [F,E], ffn_down.bias [E],
  ffn_up [E,F], ffn_up.bias [F].
- gptneox: as gpt2 without position_embd, and output [E,V] is required (no tied fallback).

With a reference GGUF: also every metadata key of the reference (but general.file_type and the
--ignore keys) has the same type and value in OUT, the tensor names and shapes are the same, and
each tensor dequantized equals the reference's dequantized (exactly by default; with --rel-rmse X,
within a relative RMS error of X).

With --hf HF_DIR (the Hugging Face directory OUT was made from: config.json and *.safetensors):
an independent numpy re-implementation of convert_hf_to_gguf.py for llama/mistral (Q/K rows
permuted: reshape(n_head, 2, d/2, ...).swapaxes(1, 2), n_head_kv heads for K), qwen2 (as is),
gpt2 (Conv1D c_attn/c_proj/c_fc weights transposed) and gpt_neox (fused QKV reshape(n_head, 3,
d, n_embd) regrouped [q; k; v], bias likewise). Every HF tensor (but buffers) must map to a GGUF
tensor and back, and each GGUF tensor must equal its transformed HF tensor stored in the GGUF's
type: bit-exact for F32 and F16, byte-exact against gguf-py's reference quantizer
(`gguf.quants.quantize`, no imatrix) where it implements the type, else within --rel-rmse (when
given). The `<arch>.*` hyperparameters must equal what the converter derives from config.json.

--allow-no-merges: a gpt2-model tokenizer without tokenizer.ggml.merges is a note, not a failure
(llama.cpp's vocabulary loader refuses it: "cannot find tokenizer merges in model file"; the
converter also omits an empty merge list).

Sources (stored public copies looked up while writing this):
- ggml-org/llama.cpp src/llama-model.cpp @ 00342301d01add50835550e8a916f12097d94517:
  `llama_model::load_hparams` (generic get_key/get_key_or_arr calls, the n_rot check for
  LLM_ARCH_LLAMA, the LLAMA/QWEN2/GPT2/GPTNEOX cases) and `load_tensors` (create_tensor calls
  of LLM_ARCH_LLAMA, LLM_ARCH_QWEN2, LLM_ARCH_GPT2, LLM_ARCH_GPTNEOX; n_vocab = number of tokens).
- ggml-org/llama.cpp src/llama-model-loader.cpp (`done_getting_tensors`: "wrong number of
  tensors") and src/llama-vocab.cpp ("cannot find tokenizer merges in model file").
- gguf-py gguf/constants.py (`Keys`, `MODEL_TENSORS`, `TENSOR_NAMES`; used at run time too).
- ggml-org/llama.cpp conversion/llama.py (`LlamaModel.permute`, q/k weight and bias),
  conversion/gpt2.py, conversion/gpt_neox.py, convert_hf_to_gguf.py `prepare_tensors` (F32 rule).

Needs `pip install gguf numpy` (e.g. /work/refvenv/bin/python). Exit status 1 on any failure.
"""

import argparse
import glob
import json
import os
import re
import sys

import numpy as np
import gguf
from gguf import GGUFValueType as VT

ARCHS = ("llama", "qwen2", "gpt2", "gptneox")

# (key, type, required): general.* and tokenizer.ggml.* that llama.cpp reads.
GENERAL_KEYS = [
    ("general.architecture", VT.STRING, True),
    ("general.name", VT.STRING, False),
    ("general.file_type", VT.UINT32, False),
    ("general.quantization_version", VT.UINT32, False),
]
VOCAB_KEYS = [
    ("tokenizer.ggml.model", VT.STRING, True),
    ("tokenizer.ggml.pre", VT.STRING, False),
    ("tokenizer.ggml.tokens", VT.ARRAY, True),
    ("tokenizer.ggml.token_type", VT.ARRAY, False),
    ("tokenizer.ggml.scores", VT.ARRAY, False),
    ("tokenizer.ggml.merges", VT.ARRAY, False),
    ("tokenizer.ggml.bos_token_id", VT.UINT32, False),
    ("tokenizer.ggml.eos_token_id", VT.UINT32, False),
    ("tokenizer.ggml.unknown_token_id", VT.UINT32, False),
    ("tokenizer.ggml.seperator_token_id", VT.UINT32, False),
    ("tokenizer.ggml.padding_token_id", VT.UINT32, False),
    ("tokenizer.ggml.add_bos_token", VT.BOOL, False),
    ("tokenizer.ggml.add_eos_token", VT.BOOL, False),
    ("tokenizer.ggml.add_space_prefix", VT.BOOL, False),
    ("tokenizer.chat_template", VT.STRING, False),
]
# `<arch>.` keys of load_hparams for every architecture. feed_forward_length and head_count are
# read as optional there, but the tensor shapes of these four architectures need them.
ARCH_COMMON_KEYS = [
    ("context_length", VT.UINT32, True),
    ("embedding_length", VT.UINT32, True),
    ("block_count", VT.UINT32, True),
    ("feed_forward_length", VT.UINT32, True),
    ("attention.head_count", VT.UINT32, True),
    ("attention.head_count_kv", VT.UINT32, False),
    ("attention.key_length", VT.UINT32, False),
    ("attention.value_length", VT.UINT32, False),
    ("rope.freq_base", VT.FLOAT32, False),
    ("rope.dimension_count", VT.UINT32, False),
    ("rope.scaling.type", VT.STRING, False),
    ("rope.scaling.factor", VT.FLOAT32, False),
    ("vocab_size", VT.UINT32, False),
    ("expert_count", VT.UINT32, False),
    ("expert_used_count", VT.UINT32, False),
]
# The arch-specific case of load_hparams.
ARCH_KEYS = {
    "llama": [("attention.layer_norm_rms_epsilon", VT.FLOAT32, True)],
    "qwen2": [
        ("attention.layer_norm_rms_epsilon", VT.FLOAT32, True),
        ("pooling_type", VT.UINT32, False),
    ],
    "gpt2": [("attention.layer_norm_epsilon", VT.FLOAT32, True)],
    "gptneox": [
        ("attention.layer_norm_epsilon", VT.FLOAT32, True),
        ("use_parallel_residual", VT.BOOL, True),
    ],
}
GGUF_ARCH = {"llama": gguf.MODEL_ARCH.LLAMA, "qwen2": gguf.MODEL_ARCH.QWEN2,
             "gpt2": gguf.MODEL_ARCH.GPT2, "gptneox": gguf.MODEL_ARCH.GPTNEOX}

failures = []


def fail(msg):
    failures.append(msg)
    print("FAIL", msg)


def value(f):
    return f.contents()


def arch_of(r):
    f = r.fields.get("general.architecture")
    return value(f) if f is not None else None


def key_table(arch):
    return GENERAL_KEYS + [(f"{arch}.{k}", t, req) for k, t, req in ARCH_COMMON_KEYS + ARCH_KEYS[arch]] + VOCAB_KEYS


def check_metadata(r, allow_no_merges):
    arch = arch_of(r)
    if arch not in ARCHS:
        fail(f"general.architecture is {arch!r}, not one of {', '.join(ARCHS)} (not handled by this check)")
        return
    for key, ty, required in key_table(arch):
        f = r.fields.get(key)
        if f is None:
            if required:
                fail(f"metadata {key} missing")
            continue
        if f.types[0] != ty:
            fail(f"metadata {key}: type {f.types[0].name}, llama.cpp wants {ty.name}")
    for key in r.fields:
        head = key.split(".", 1)[0]
        if head in ARCHS and head != arch:
            fail(f"metadata {key}: a {head} key in a {arch} file (llama.cpp never reads it)")
    g = lambda k: value(r.fields[k]) if k in r.fields else None
    tok = r.fields.get("tokenizer.ggml.tokens")
    if tok is not None:
        n = len(tok.data)
        if tok.types[1:] != [VT.STRING]:
            fail("tokenizer.ggml.tokens is not an array of strings")
        for k, sub in (("token_type", VT.INT32), ("scores", VT.FLOAT32)):
            tt = r.fields.get(f"tokenizer.ggml.{k}")
            if tt is not None and (len(tt.data) != n or tt.types[1:] != [sub]):
                fail(f"tokenizer.ggml.{k}: {len(tt.data)} {[t.name for t in tt.types[1:]]} for {n} tokens")
        m = r.fields.get("tokenizer.ggml.merges")
        # gguf-py records no element type for an empty array (shrink writes string-typed).
        if m is not None and len(m.data) and m.types[1:] != [VT.STRING]:
            fail("tokenizer.ggml.merges is not an array of strings")
        for k in ("bos", "eos", "unknown", "seperator", "padding"):
            v = g(f"tokenizer.ggml.{k}_token_id")
            if v is not None and not 0 <= v < n:
                fail(f"tokenizer.ggml.{k}_token_id {v} outside the {n} tokens")
        vs = g(f"{arch}.vocab_size")
        if vs is not None and vs != n:
            fail(f"{arch}.vocab_size {vs} but {n} tokens (llama.cpp sizes token_embd by the tokens)")
        if g("tokenizer.ggml.model") == "gpt2" and m is None:
            msg = "a gpt2 tokenizer without tokenizer.ggml.merges (llama.cpp: cannot find tokenizer merges in model file)"
            if allow_no_merges:
                print("note:", msg)
            else:
                fail(msg)
    emb, nh = g(f"{arch}.embedding_length"), g(f"{arch}.attention.head_count")
    if emb and nh:
        hk = g(f"{arch}.attention.key_length") or emb // nh
        rot = g(f"{arch}.rope.dimension_count")
        if arch == "llama" and rot is not None and rot != hk:
            fail(f"llama.rope.dimension_count {rot} != head size {hk} (llama.cpp: invalid n_rot)")
        if rot is not None and (rot > hk or rot % 2):
            fail(f"{arch}.rope.dimension_count {rot}: not an even count within the head size {hk}")
        if emb % nh and g(f"{arch}.attention.key_length") is None:
            fail(f"{arch}.embedding_length {emb} is not a multiple of {nh} heads and no key_length is given")


def expected_tensors(r):
    """{name: (ne, required)} of every tensor llama.cpp's load_tensors creates for the arch."""
    arch = arch_of(r)
    g = lambda k: value(r.fields[k]) if k in r.fields else None
    E, L, F = g(f"{arch}.embedding_length"), g(f"{arch}.block_count"), g(f"{arch}.feed_forward_length")
    H, C = g(f"{arch}.attention.head_count"), g(f"{arch}.context_length")
    tok = r.fields.get("tokenizer.ggml.tokens")
    if arch not in ARCHS or None in (E, L, F, H, C) or tok is None:
        return {}
    V = len(tok.data)
    Hkv = g(f"{arch}.attention.head_count_kv") or H
    Dk = g(f"{arch}.attention.key_length") or E // H
    Dv = g(f"{arch}.attention.value_length") or E // H
    G = Dv * Hkv
    rot = g(f"{arch}.rope.dimension_count") or Dk
    want = {}

    def add(name, ne, req=True):
        want[name] = (ne, req)

    add("token_embd.weight", [E, V])
    add("output_norm.weight", [E])
    if arch in ("gpt2", "gptneox"):
        add("output_norm.bias", [E])
    add("output.weight", [E, V], arch == "gptneox")
    if arch == "gpt2":
        add("position_embd.weight", [E, C])
    if arch == "qwen2":
        add("output.bias", [V], False)
    if arch == "llama":
        add("rope_freqs.weight", [rot // 2], False)
    for i in range(L):
        p = f"blk.{i}."
        add(p + "attn_norm.weight", [E])
        add(p + "ffn_norm.weight", [E])
        if arch in ("llama", "qwen2"):
            q = Dk * H if arch == "llama" else E
            add(p + "attn_q.weight", [E, q])
            add(p + "attn_k.weight", [E, Dk * Hkv if arch == "llama" else G])
            add(p + "attn_v.weight", [E, G])
            add(p + "attn_output.weight", [q, E])
            add(p + "ffn_gate.weight", [E, F])
            add(p + "ffn_down.weight", [F, E])
            add(p + "ffn_up.weight", [E, F])
            bias = arch == "qwen2"
            add(p + "attn_q.bias", [E], bias)
            add(p + "attn_k.bias", [G], bias)
            add(p + "attn_v.bias", [G], bias)
            if arch == "llama":
                add(p + "attn_output.bias", [E], False)
                add(p + "ffn_gate.bias", [F], False)
                add(p + "ffn_down.bias", [E], False)
                add(p + "ffn_up.bias", [F], False)
        else:
            add(p + "attn_norm.bias", [E])
            add(p + "attn_qkv.weight", [E, E + 2 * G])
            add(p + "attn_qkv.bias", [E + 2 * G])
            add(p + "attn_output.weight", [E, E])
            add(p + "attn_output.bias", [E])
            add(p + "ffn_norm.bias", [E])
            add(p + "ffn_down.weight", [F, E])
            add(p + "ffn_down.bias", [E])
            add(p + "ffn_up.weight", [E, F])
            add(p + "ffn_up.bias", [F])
    return want


def gguf_py_names(arch, n_layer):
    """Tensor base names gguf-py's MODEL_TENSORS lists for the arch."""
    names = set()
    for t in gguf.MODEL_TENSORS[GGUF_ARCH[arch]]:
        pat = gguf.TENSOR_NAMES[t]
        for i in range(n_layer if "{bid}" in pat else 1):
            names.add(pat.format(bid=i))
    return names


def dequant(t):
    x = gguf.quants.dequantize(t.data, t.tensor_type)
    return np.asarray(x, dtype=np.float32).reshape([int(d) for d in reversed(t.shape)])


def check_tensors(r):
    arch = arch_of(r)
    want = expected_tensors(r)
    have = {t.name: t for t in r.tensors}
    if want:
        for name, (ne, req) in want.items():
            if name not in have:
                if req:
                    fail(f"tensor {name} missing")
            elif [int(d) for d in have[name].shape] != ne:
                fail(f"tensor {name}: ne {[int(d) for d in have[name].shape]}, {arch} wants {ne}")
        known = gguf_py_names(arch, value(r.fields[f"{arch}.block_count"]))
    for t in r.tensors:
        if want and t.name not in want:
            fail(f"tensor {t.name} is not one llama.cpp's {arch} loader reads")
        elif want and t.name.rsplit(".", 1)[0] not in known:
            fail(f"tensor {t.name}: gguf-py's MODEL_TENSORS[{arch}] does not list it")
        f32_only = len(t.shape) == 1 or t.name.endswith("_norm.weight") or t.name == "position_embd.weight"
        if f32_only and t.tensor_type != gguf.GGMLQuantizationType.F32:
            fail(f"tensor {t.name} is {t.tensor_type.name}: 1-D, norm and position tensors are F32 for llama.cpp")
        try:
            x = dequant(t)
        except Exception as e:  # noqa: BLE001 - report whatever gguf-py raises
            fail(f"tensor {t.name} ({t.tensor_type.name}): dequantize failed: {e}")
            continue
        if x.size != int(np.prod(t.shape)):
            fail(f"tensor {t.name}: {x.size} values for shape {list(t.shape)}")
        if not np.isfinite(x).all():
            fail(f"tensor {t.name} ({t.tensor_type.name}): non-finite values")


def compare(r, ref, ignore, rel_rmse):
    for key, f in ref.fields.items():
        if key.startswith("GGUF.") or key == "general.file_type" or key in ignore:
            continue
        g = r.fields.get(key)
        if g is None:
            fail(f"metadata {key} of the reference missing")
        elif g.types != f.types:
            fail(f"metadata {key}: types {[t.name for t in g.types]} vs reference {[t.name for t in f.types]}")
        elif value(g) != value(f):
            fail(f"metadata {key}: {str(value(g))[:60]!r} vs reference {str(value(f))[:60]!r}")
    for key in r.fields:
        if not key.startswith("GGUF.") and key not in ref.fields and key not in ignore:
            print(f"note: metadata {key} is not in the reference")
    names = [t.name for t in r.tensors]
    ref_t = {t.name: t for t in ref.tensors}
    if sorted(names) != sorted(ref_t):
        fail(f"tensor names differ: only in out {sorted(set(names) - set(ref_t))}, only in reference {sorted(set(ref_t) - set(names))}")
    worst = 0.0
    for t in r.tensors:
        u = ref_t.get(t.name)
        if u is None:
            continue
        if list(t.shape) != list(u.shape):
            fail(f"tensor {t.name}: ne {list(t.shape)} vs reference {list(u.shape)}")
            continue
        a, b = dequant(t), dequant(u)
        if rel_rmse == 0:
            if not np.array_equal(a, b):
                fail(f"tensor {t.name}: values differ (max |d| {np.abs(a - b).max():.3g})")
        else:
            e = rel_err(a, b)
            worst = max(worst, e)
            if e > rel_rmse:
                fail(f"tensor {t.name}: relative RMS error {e:.3g} > {rel_rmse}")
    if rel_rmse:
        print(f"worst relative RMS error {worst:.3g}")


def rel_err(a, b):
    return float(np.sqrt(np.mean((a - b) ** 2)) / max(np.sqrt(np.mean(b**2)), 1e-30))


# --- --hf: an independent re-implementation of convert_hf_to_gguf.py's tensor transforms ---

def read_safetensors(hf_dir):
    """Every float tensor of hf_dir's weight files as float32 numpy arrays (numpy only)."""
    dtypes = {"F32": np.float32, "F16": np.float16, "F64": np.float64}
    index = os.path.join(hf_dir, "model.safetensors.index.json")
    if os.path.exists(index):
        files = sorted({os.path.join(hf_dir, f) for f in json.load(open(index))["weight_map"].values()})
    elif os.path.exists(os.path.join(hf_dir, "model.safetensors")):
        files = [os.path.join(hf_dir, "model.safetensors")]  # not the fixtures' reference.safetensors
    else:
        files = sorted(glob.glob(os.path.join(hf_dir, "*.safetensors")))
    out = {}
    for path in files:
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(n))
        buf = np.memmap(path, dtype=np.uint8, mode="r")
        for name, info in header.items():
            if name == "__metadata__":
                continue
            s, e = info["data_offsets"]
            raw = np.asarray(buf[8 + n + s: 8 + n + e])
            if info["dtype"] == "BF16":
                a = (raw.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
            elif info["dtype"] in dtypes:
                a = raw.view(dtypes[info["dtype"]]).astype(np.float32)
            else:
                continue  # integer buffers are not weights
            out[name] = a.reshape(info["shape"])
    return out


def llama_permute(w, n_head, n_head_kv):
    """LlamaModel.permute of conversion/llama.py."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def neox_qkv(w, n_head, n_embd):
    """GPTNeoXModel.modify_tensors of conversion/gpt_neox.py (weight [3E, E] or bias [3E])."""
    if w.ndim == 2:
        x = w.reshape(n_head, 3, n_embd // n_head, n_embd)
        return np.concatenate([x[:, j].reshape(-1, n_embd) for j in range(3)], axis=0)
    x = w.reshape(n_head, 3, n_embd // n_head)
    return np.concatenate([x[:, j].reshape(n_embd) for j in range(3)], axis=0)


LLAMA_MAP = [
    (r"model\.embed_tokens\.weight", "token_embd.weight"),
    (r"model\.norm\.weight", "output_norm.weight"),
    (r"lm_head\.weight", "output.weight"),
    (r"model\.layers\.(\d+)\.input_layernorm\.weight", "blk.{}.attn_norm.weight"),
    (r"model\.layers\.(\d+)\.self_attn\.q_proj\.(weight|bias)", "blk.{}.attn_q.{}"),
    (r"model\.layers\.(\d+)\.self_attn\.k_proj\.(weight|bias)", "blk.{}.attn_k.{}"),
    (r"model\.layers\.(\d+)\.self_attn\.v_proj\.(weight|bias)", "blk.{}.attn_v.{}"),
    (r"model\.layers\.(\d+)\.self_attn\.o_proj\.(weight|bias)", "blk.{}.attn_output.{}"),
    (r"model\.layers\.(\d+)\.post_attention_layernorm\.weight", "blk.{}.ffn_norm.weight"),
    (r"model\.layers\.(\d+)\.mlp\.gate_proj\.(weight|bias)", "blk.{}.ffn_gate.{}"),
    (r"model\.layers\.(\d+)\.mlp\.up_proj\.(weight|bias)", "blk.{}.ffn_up.{}"),
    (r"model\.layers\.(\d+)\.mlp\.down_proj\.(weight|bias)", "blk.{}.ffn_down.{}"),
]
GPT2_MAP = [
    (r"(?:transformer\.)?wte\.weight", "token_embd.weight"),
    (r"(?:transformer\.)?wpe\.weight", "position_embd.weight"),
    (r"(?:transformer\.)?ln_f\.(weight|bias)", "output_norm.{}"),
    (r"lm_head\.weight", "output.weight"),
    (r"(?:transformer\.)?h\.(\d+)\.ln_1\.(weight|bias)", "blk.{}.attn_norm.{}"),
    (r"(?:transformer\.)?h\.(\d+)\.attn\.c_attn\.(weight|bias)", "blk.{}.attn_qkv.{}"),
    (r"(?:transformer\.)?h\.(\d+)\.attn\.c_proj\.(weight|bias)", "blk.{}.attn_output.{}"),
    (r"(?:transformer\.)?h\.(\d+)\.ln_2\.(weight|bias)", "blk.{}.ffn_norm.{}"),
    (r"(?:transformer\.)?h\.(\d+)\.mlp\.c_fc\.(weight|bias)", "blk.{}.ffn_up.{}"),
    (r"(?:transformer\.)?h\.(\d+)\.mlp\.c_proj\.(weight|bias)", "blk.{}.ffn_down.{}"),
]
NEOX_MAP = [
    (r"gpt_neox\.embed_in\.weight", "token_embd.weight"),
    (r"gpt_neox\.final_layer_norm\.(weight|bias)", "output_norm.{}"),
    (r"embed_out\.weight", "output.weight"),
    (r"gpt_neox\.layers\.(\d+)\.input_layernorm\.(weight|bias)", "blk.{}.attn_norm.{}"),
    (r"gpt_neox\.layers\.(\d+)\.attention\.query_key_value\.(weight|bias)", "blk.{}.attn_qkv.{}"),
    (r"gpt_neox\.layers\.(\d+)\.attention\.dense\.(weight|bias)", "blk.{}.attn_output.{}"),
    (r"gpt_neox\.layers\.(\d+)\.post_attention_layernorm\.(weight|bias)", "blk.{}.ffn_norm.{}"),
    (r"gpt_neox\.layers\.(\d+)\.mlp\.dense_h_to_4h\.(weight|bias)", "blk.{}.ffn_up.{}"),
    (r"gpt_neox\.layers\.(\d+)\.mlp\.dense_4h_to_h\.(weight|bias)", "blk.{}.ffn_down.{}"),
]
# Buffers the converter drops.
SKIP = re.compile(r".*(rotary_emb\.inv_freq|\.attn\.bias|\.attn\.masked_bias|\.attention\.bias|\.attention\.masked_bias)$")


def rope_theta(cfg):
    return cfg.get("rope_theta", (cfg.get("rope_parameters") or {}).get("rope_theta", 10000.0))


def hf_expected(cfg):
    """(gguf arch, {key: value} the converter writes, [(regex, gguf name)], transform)."""
    mt = cfg["model_type"]
    if mt in ("llama", "mistral", "qwen2"):
        arch = "qwen2" if mt == "qwen2" else "llama"
        E, H = cfg["hidden_size"], cfg["num_attention_heads"]
        Hkv = cfg.get("num_key_value_heads") or H
        hp = {"context_length": cfg["max_position_embeddings"], "embedding_length": E,
              "block_count": cfg["num_hidden_layers"], "feed_forward_length": cfg["intermediate_size"],
              "attention.head_count": H, "attention.head_count_kv": Hkv,
              "rope.freq_base": rope_theta(cfg), "attention.layer_norm_rms_epsilon": cfg["rms_norm_eps"]}
        if arch == "llama":
            hp["vocab_size"] = cfg["vocab_size"]
            hp["rope.dimension_count"] = cfg.get("head_dim") or E // H

        def tf(hf, w):
            if arch == "llama" and re.search(r"q_proj\.(weight|bias)$", hf):
                return llama_permute(w, H, H)
            if arch == "llama" and re.search(r"k_proj\.(weight|bias)$", hf):
                return llama_permute(w, H, Hkv)
            return w
        return arch, hp, LLAMA_MAP, tf
    if mt == "gpt2":
        E = cfg["n_embd"]
        hp = {"context_length": cfg.get("n_ctx") or cfg["n_positions"], "embedding_length": E,
              "block_count": cfg["n_layer"], "feed_forward_length": cfg.get("n_inner") or 4 * E,
              "attention.head_count": cfg["n_head"], "attention.layer_norm_epsilon": cfg["layer_norm_epsilon"]}

        def tf(hf, w):
            if re.search(r"\.(attn\.c_attn|attn\.c_proj|mlp\.c_fc|mlp\.c_proj)\.weight$", hf):
                return w.T
            return w
        return "gpt2", hp, GPT2_MAP, tf
    if mt == "gpt_neox":
        E, H = cfg["hidden_size"], cfg["num_attention_heads"]
        pct = cfg.get("rotary_pct", cfg.get("partial_rotary_factor",
                      (cfg.get("rope_parameters") or {}).get("partial_rotary_factor", 1.0)))
        hp = {"context_length": cfg["max_position_embeddings"], "embedding_length": E,
              "block_count": cfg["num_hidden_layers"], "feed_forward_length": cfg["intermediate_size"],
              "rope.dimension_count": int(pct * (E // H)), "attention.head_count": H,
              "use_parallel_residual": cfg.get("use_parallel_residual", True),
              "attention.layer_norm_epsilon": cfg["layer_norm_eps"],
              "rope.freq_base": rope_theta(cfg)}

        def tf(hf, w):
            if re.search(r"attention\.query_key_value\.(weight|bias)$", hf):
                return neox_qkv(w, H, E)
            return w
        return "gptneox", hp, NEOX_MAP, tf
    fail(f"--hf: model_type {mt!r} has no converter mapping here")
    return None


def as_stored(x, t):
    """x (float32) in t's type: bytes as the GGUF stores them, or None where gguf-py cannot."""
    try:
        q = gguf.quants.quantize(np.ascontiguousarray(x, dtype=np.float32), t.tensor_type)
    except (NotImplementedError, gguf.quants.QuantError, KeyError, ValueError):
        return None
    return np.ascontiguousarray(q).view(np.uint8).reshape(-1)


def check_hf(r, hf_dir, rel_rmse):
    cfg = json.load(open(os.path.join(hf_dir, "config.json")))
    got = hf_expected(cfg)
    if got is None:
        return ""
    arch, hp, mapping, tf = got
    if arch_of(r) != arch:
        fail(f"--hf: model_type {cfg['model_type']} converts to {arch}, file says {arch_of(r)}")
        return ""
    for k, v in hp.items():
        f = r.fields.get(f"{arch}.{k}")
        if f is None:
            if not (k == "rope.freq_base" and v == 10000.0):  # llama.cpp's default
                fail(f"--hf: {arch}.{k} missing (config.json gives {v})")
            continue
        have = value(f)
        same = np.float32(have) == np.float32(v) if isinstance(v, float) else have == v
        if not same:
            fail(f"--hf: {arch}.{k} = {have}, the converter writes {v} from config.json")
    hf = read_safetensors(hf_dir)
    if not hf:
        fail(f"--hf: no *.safetensors weights in {hf_dir}")
        return ""
    have = {t.name: t for t in r.tensors}
    seen, exact, approx, worst = set(), 0, 0, 0.0
    for name, w in hf.items():
        if SKIP.match(name):
            continue
        target = None
        for pat, out in mapping:
            m = re.fullmatch(pat, name)
            if m:
                target = out.format(*m.groups())
                break
        if target is None:
            fail(f"--hf: HF tensor {name} has no GGUF name in the converter's mapping")
            continue
        t = have.get(target)
        if t is None:
            fail(f"--hf: HF tensor {name} -> {target} is not in the GGUF")
            continue
        seen.add(target)
        x = tf(name, w)
        if list(x.shape) != [int(d) for d in reversed(t.shape)]:
            fail(f"--hf: {target}: transformed HF shape {list(x.shape)} vs GGUF {[int(d) for d in reversed(t.shape)]}")
            continue
        want = as_stored(x, t)
        if want is not None:
            got_b = np.ascontiguousarray(np.asarray(t.data)).view(np.uint8).reshape(-1)
            if got_b.shape != want.shape or not np.array_equal(got_b, want):
                e = rel_err(dequant(t), x)
                fail(f"--hf: {target} ({t.tensor_type.name}) differs from {name} under the converter's transform (rel RMS {e:.3g})")
            else:
                exact += 1
        else:
            e = rel_err(dequant(t), x)
            worst, approx = max(worst, e), approx + 1
            if rel_rmse and e > rel_rmse:
                fail(f"--hf: {target} ({t.tensor_type.name}): relative RMS error {e:.3g} vs {name} > {rel_rmse}")
    for name in have:
        if name not in seen:
            fail(f"--hf: GGUF tensor {name} comes from no HF tensor")
    s = f", HF {exact} exact"
    return s + (f", {approx} within rel RMS {worst:.3g}" if approx else "")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out")
    ap.add_argument("reference", nargs="?")
    ap.add_argument("--ignore", action="append", default=[], help="metadata key not compared")
    ap.add_argument("--rel-rmse", type=float, default=0.0, help="tolerance for tensors (0: exact)")
    ap.add_argument("--hf", metavar="HF_DIR", help="compare with the HF directory OUT was converted from")
    ap.add_argument("--allow-no-merges", action="store_true",
                    help="a gpt2 tokenizer without merges is a note, not a failure")
    a = ap.parse_args()
    r = gguf.GGUFReader(a.out)
    check_metadata(r, a.allow_no_merges)
    check_tensors(r)
    if a.reference:
        compare(r, gguf.GGUFReader(a.reference), set(a.ignore), a.rel_rmse)
    hf = check_hf(r, a.hf, a.rel_rmse) if a.hf else ""
    types = {}
    for t in r.tensors:
        types[t.tensor_type.name] = types.get(t.tensor_type.name, 0) + 1
    print(f"{a.out}: {arch_of(r)}, {len(r.tensors)} tensors {types}, {len(r.fields)} fields{hf}")
    if failures:
        print(f"{len(failures)} failures")
        sys.exit(1)
    print("ok")


if __name__ == "__main__":
    main()
