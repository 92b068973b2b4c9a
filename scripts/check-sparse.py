"""Check a sparse checkpoint against its dense original, reading compressed-tensors' public
sparse layouts independently of shrink (numpy only; written from compressed-tensors 0.14's
`sparse_compressors/sparse_bitmask.py`, `sparse_24_bitmask.py` and `utils/helpers.py`
`unpack_bitmasks`, not from shrink's code).

Usage: python scripts/check-sparse.py SPARSE_DIR DENSE_DIR

For `quantization_config.sparsity_config.format`:
  sparse-bitmask     <module>.shape int64 [2], .compressed [nnz] (the dense dtype),
                     .bitmask uint8 [rows, ceil(cols/8)], .row_offsets int64 [rows]
  sparse-24-bitmask  <module>.shape int64 [2, 1], .compressed [rows, cols/2], .bitmask as above
the bitmask is numpy.packbits(W != 0, axis=-1, bitorder="little") (2:4: two bits in every group
of four), and the dense weight is zeros with W[mask] = compressed in row-major order.

Every sparse module is decoded and compared exactly (value for value, same dtype) with the
dense directory's `<module>.weight`; every other tensor must be byte-identical; the config must
carry compressed-tensors' keys. Exits 1 with the reasons on any mismatch.
"""
import json
import os
import sys

import numpy as np

DTYPES = {
    "F32": np.float32, "F16": np.float16, "BF16": "bf16", "F64": np.float64,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8,
    "BOOL": np.bool_,
}


def load_dir(d):
    """name -> (dtype name, numpy array) of every safetensors file of a model directory
    (bfloat16 widened exactly to float32)."""
    out = {}
    for f in sorted(os.listdir(d)):
        if not f.endswith(".safetensors"):
            continue
        raw = open(os.path.join(d, f), "rb").read()
        n = int.from_bytes(raw[:8], "little")
        header = json.loads(raw[8 : 8 + n])
        base = 8 + n
        for name, info in header.items():
            if name == "__metadata__":
                continue
            a, b = info["data_offsets"]
            buf = raw[base + a : base + b]
            ty = DTYPES[info["dtype"]]
            if ty == "bf16":
                arr = (np.frombuffer(buf, "<u2").astype(np.uint32) << 16).view(np.float32)
            else:
                arr = np.frombuffer(buf, np.dtype(ty).newbyteorder("<"))
            out[name] = (info["dtype"], arr.reshape(info["shape"]))
    return out


def main():
    sparse_dir, dense_dir = sys.argv[1:3]
    errors = []
    cfg = json.load(open(os.path.join(sparse_dir, "config.json")))
    q = cfg.get("quantization_config") or {}
    s = q.get("sparsity_config") or {}
    fmt = s.get("format")
    if q.get("quant_method") != "compressed-tensors":
        errors.append(f"quant_method is {q.get('quant_method')!r}, not compressed-tensors")
    if fmt not in ("sparse-bitmask", "sparse-24-bitmask"):
        errors.append(f"sparsity_config.format is {fmt!r}")
    for k in ("format", "global_sparsity", "sparsity_structure", "targets", "ignore"):
        if k not in s:
            errors.append(f"sparsity_config has no {k!r}")
    if fmt == "sparse-24-bitmask" and s.get("sparsity_structure") != "2:4":
        errors.append(f"sparse-24-bitmask with sparsity_structure {s.get('sparsity_structure')!r}")
    gs = s.get("global_sparsity")
    if not isinstance(gs, (int, float)) or not 0 <= gs <= 1:
        errors.append(f"global_sparsity {gs!r} is not a fraction")

    sparse, dense = load_dir(sparse_dir), load_dir(dense_dir)
    modules = sorted(n[: -len(".compressed")] for n in sparse if n.endswith(".compressed"))
    used = set()
    zeros = total = 0
    for m in modules:
        parts = ["shape", "compressed", "bitmask"]
        if fmt == "sparse-bitmask":
            parts.append("row_offsets")
        if any(f"{m}.{p}" not in sparse for p in parts):
            errors.append(f"{m}: parts {parts} are not all present")
            continue
        used.update(f"{m}.{p}" for p in parts)
        (sdt, shape), (cdt, comp), (bdt, bits) = (sparse[f"{m}.{p}"] for p in parts[:3])
        if sdt != "I64" or bdt != "U8":
            errors.append(f"{m}: shape dtype {sdt}, bitmask dtype {bdt}")
            continue
        want_shape_shape = (2,) if fmt == "sparse-bitmask" else (2, 1)
        if shape.shape != want_shape_shape:
            errors.append(f"{m}.shape has shape {shape.shape}, expected {want_shape_shape}")
        rows, cols = (int(v) for v in shape.flatten())
        if bits.shape != (rows, (cols + 7) // 8):
            errors.append(f"{m}.bitmask shape {bits.shape} for a [{rows}, {cols}] weight")
            continue
        mask = np.unpackbits(bits, axis=-1, count=cols, bitorder="little").astype(bool)
        if mask.sum() != comp.size:
            errors.append(f"{m}: bitmask sets {mask.sum()} bits, compressed has {comp.size}")
            continue
        if fmt == "sparse-24-bitmask":
            if comp.shape != (rows, cols // 2) or cols % 4:
                errors.append(f"{m}.compressed shape {comp.shape} for [{rows}, {cols}]")
            if not (mask.reshape(-1, 4).sum(axis=1) == 2).all():
                errors.append(f"{m}: a group of four without exactly two bitmask bits")
        else:
            offsets = sparse[f"{m}.row_offsets"][1]
            counts = mask.sum(axis=1)
            if not np.array_equal(offsets, np.cumsum(counts) - counts):
                errors.append(f"{m}.row_offsets are not the running row counts")
            if (comp == 0).any():
                errors.append(f"{m}: sparse-bitmask stores a zero")
        decoded = np.zeros((rows, cols), comp.dtype)
        decoded[mask] = comp.flatten()
        name = f"{m}.weight"
        if name not in dense:
            errors.append(f"{name}: not in the dense directory")
            continue
        ddt, want = dense[name]
        if ddt != cdt:
            errors.append(f"{name}: compressed dtype {cdt}, dense {ddt}")
        if want.shape != (rows, cols) or not np.array_equal(decoded, want):
            bad = "shape" if want.shape != (rows, cols) else int((decoded != want).sum())
            errors.append(f"{name}: decoded weight differs from the dense one ({bad})")
        zeros += int((want == 0).sum())
        total += want.size
        used.add(name)
    for name, (dt, arr) in dense.items():
        if name in used:
            continue
        if name not in sparse:
            errors.append(f"{name}: missing from the sparse directory")
        elif sparse[name][0] != dt or sparse[name][1].tobytes() != arr.tobytes():
            errors.append(f"{name}: differs from the dense directory")
    extra = set(sparse) - used - set(dense)
    if extra:
        errors.append(f"tensors only in the sparse directory: {sorted(extra)[:5]}")
    all_zeros = sum(int((a == 0).sum()) for _, a in dense.values() if a.dtype.kind == "f")
    all_params = sum(a.size for _, a in dense.values() if a.dtype.kind == "f")
    print(
        f"{sparse_dir}: {fmt}, {len(modules)} sparse modules, "
        f"{zeros / max(total, 1):.4f} of their weights zero; "
        f"zeros over all dense parameters {all_zeros / max(all_params, 1):.4f}, "
        f"config global_sparsity {gs}"
    )
    if errors:
        print("FAILED:\n  " + "\n  ".join(errors))
        sys.exit(1)
    print("OK: every sparse weight decodes exactly to the dense one")


if __name__ == "__main__":
    main()
