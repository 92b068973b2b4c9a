#!/usr/bin/env python3
"""Check a llama GGUF with llama.cpp's own Python reader (the `gguf` package from PyPI).

    check-gguf.py OUT.gguf [REFERENCE.gguf] [--ignore KEY ...] [--rel-rmse X]

Without a reference: every tensor's type is known to gguf-py, its shape is what llama's
hyperparameters imply (token_embd, output_norm, output, blk.N.{attn_norm,attn_q,attn_k,attn_v,
attn_output,ffn_norm,ffn_gate,ffn_up,ffn_down}), `gguf.quants.dequantize` gives finite values of
that shape, and every metadata key llama.cpp reads for llama is present with the right type.

With a reference: also every metadata key of the reference (but general.file_type and the
--ignore keys) has the same type and value in OUT, the tensor names and shapes are the same, and
each tensor dequantized equals the reference's dequantized (exactly by default; with --rel-rmse X,
within a relative RMS error of X).

Needs `pip install gguf numpy` (e.g. /work/refvenv/bin/python). Exit status 1 on any failure.
"""

import argparse
import sys

import numpy as np
import gguf
from gguf import GGUFValueType as VT

# (key, type, required) that llama.cpp's llama loader and vocabulary read.
LLAMA_KEYS = [
    ("general.architecture", VT.STRING, True),
    ("llama.context_length", VT.UINT32, True),
    ("llama.embedding_length", VT.UINT32, True),
    ("llama.block_count", VT.UINT32, True),
    ("llama.feed_forward_length", VT.UINT32, True),
    ("llama.attention.head_count", VT.UINT32, True),
    ("llama.attention.layer_norm_rms_epsilon", VT.FLOAT32, True),
    ("llama.attention.head_count_kv", VT.UINT32, False),
    ("llama.rope.dimension_count", VT.UINT32, False),
    ("llama.rope.freq_base", VT.FLOAT32, False),
    ("llama.vocab_size", VT.UINT32, False),
    ("general.file_type", VT.UINT32, False),
    ("general.quantization_version", VT.UINT32, False),
    ("tokenizer.ggml.model", VT.STRING, True),
    ("tokenizer.ggml.pre", VT.STRING, False),
    ("tokenizer.ggml.tokens", VT.ARRAY, True),
    ("tokenizer.ggml.token_type", VT.ARRAY, False),
    ("tokenizer.ggml.merges", VT.ARRAY, False),
    ("tokenizer.ggml.bos_token_id", VT.UINT32, False),
    ("tokenizer.ggml.eos_token_id", VT.UINT32, False),
    ("tokenizer.ggml.unknown_token_id", VT.UINT32, False),
    ("tokenizer.ggml.padding_token_id", VT.UINT32, False),
    ("tokenizer.ggml.add_bos_token", VT.BOOL, False),
    ("tokenizer.ggml.add_eos_token", VT.BOOL, False),
    ("tokenizer.ggml.add_space_prefix", VT.BOOL, False),
    ("tokenizer.chat_template", VT.STRING, False),
]

failures = []


def fail(msg):
    failures.append(msg)
    print("FAIL", msg)


def value(f):
    return f.contents()


def check_metadata(r):
    for key, ty, required in LLAMA_KEYS:
        f = r.fields.get(key)
        if f is None:
            if required:
                fail(f"metadata {key} missing")
            continue
        if f.types[0] != ty:
            fail(f"metadata {key}: type {f.types[0].name}, llama.cpp wants {ty.name}")
    arch = r.fields.get("general.architecture")
    if arch is not None and value(arch) != "llama":
        fail(f"general.architecture is {value(arch)!r}, not 'llama'")
    tok = r.fields.get("tokenizer.ggml.tokens")
    if tok is not None:
        n = len(tok.data)
        if tok.types[1:] != [VT.STRING]:
            fail("tokenizer.ggml.tokens is not an array of strings")
        tt = r.fields.get("tokenizer.ggml.token_type")
        if tt is not None and (len(tt.data) != n or tt.types[1:] != [VT.INT32]):
            fail(f"tokenizer.ggml.token_type: {len(tt.data)} {tt.types[1:]} for {n} tokens")
        for k in ("bos", "eos", "unknown", "padding"):
            f = r.fields.get(f"tokenizer.ggml.{k}_token_id")
            if f is not None and not 0 <= value(f) < n:
                fail(f"tokenizer.ggml.{k}_token_id {value(f)} outside the {n} tokens")
        if r.fields.get("tokenizer.ggml.model") and value(r.fields["tokenizer.ggml.model"]) == "gpt2":
            if "tokenizer.ggml.merges" not in r.fields:
                fail("a gpt2 tokenizer without tokenizer.ggml.merges")


def expected_shapes(r):
    """ggml ne of every tensor llama needs (output.weight optional), from the metadata."""
    g = lambda k: value(r.fields[k]) if k in r.fields else None
    emb, nl, ff = g("llama.embedding_length"), g("llama.block_count"), g("llama.feed_forward_length")
    nh = g("llama.attention.head_count")
    if None in (emb, nl, ff, nh):
        return {}
    nkv = g("llama.attention.head_count_kv") or nh
    hd = g("llama.attention.key_length") or emb // nh
    tok = r.fields.get("tokenizer.ggml.tokens")
    vocab = g("llama.vocab_size") or (len(tok.data) if tok else None)
    want = {"token_embd.weight": [emb, vocab], "output_norm.weight": [emb]}
    for i in range(nl):
        p = f"blk.{i}."
        want[p + "attn_norm.weight"] = [emb]
        want[p + "attn_q.weight"] = [emb, nh * hd]
        want[p + "attn_k.weight"] = [emb, nkv * hd]
        want[p + "attn_v.weight"] = [emb, nkv * hd]
        want[p + "attn_output.weight"] = [nh * hd, emb]
        want[p + "ffn_norm.weight"] = [emb]
        want[p + "ffn_gate.weight"] = [emb, ff]
        want[p + "ffn_up.weight"] = [emb, ff]
        want[p + "ffn_down.weight"] = [ff, emb]
    return want


def dequant(t):
    x = gguf.quants.dequantize(t.data, t.tensor_type)
    return np.asarray(x, dtype=np.float32).reshape([int(d) for d in reversed(t.shape)])


def check_tensors(r):
    want = expected_shapes(r)
    have = {t.name: t for t in r.tensors}
    for name, ne in want.items():
        if name not in have:
            fail(f"tensor {name} missing")
        elif [int(d) for d in have[name].shape] != ne:
            fail(f"tensor {name}: ne {list(have[name].shape)}, llama wants {ne}")
    for t in r.tensors:
        if t.name not in want and t.name != "output.weight":
            fail(f"tensor {t.name} is not one llama.cpp's llama loader reads")
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
            e = float(np.sqrt(np.mean((a - b) ** 2)) / max(np.sqrt(np.mean(b**2)), 1e-30))
            worst = max(worst, e)
            if e > rel_rmse:
                fail(f"tensor {t.name}: relative RMS error {e:.3g} > {rel_rmse}")
    if rel_rmse:
        print(f"worst relative RMS error {worst:.3g}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out")
    ap.add_argument("reference", nargs="?")
    ap.add_argument("--ignore", action="append", default=[], help="metadata key not compared")
    ap.add_argument("--rel-rmse", type=float, default=0.0, help="tolerance for tensors (0: exact)")
    a = ap.parse_args()
    r = gguf.GGUFReader(a.out)
    check_metadata(r)
    check_tensors(r)
    if a.reference:
        compare(r, gguf.GGUFReader(a.reference), set(a.ignore), a.rel_rmse)
    types = {}
    for t in r.tensors:
        types[t.tensor_type.name] = types.get(t.tensor_type.name, 0) + 1
    print(f"{a.out}: {len(r.tensors)} tensors {types}, {len(r.fields)} fields")
    if failures:
        print(f"{len(failures)} failures")
        sys.exit(1)
    print("ok")


if __name__ == "__main__":
    main()
