#!/usr/bin/env python3
"""Check a LoRA adapter directory written by shrink against PEFT's published format, read
independently of shrink's code.

    check-peft.py ADAPTER_DIR [--base BASE_DIR] [--expect-rank R] [--expect-modules N]

PEFT's LoRA format (peft/utils/save_and_load.py, peft/tuners/lora/config.py and layer.py):
  * adapter_config.json: `peft_type` "LORA", integer `r` > 0, numeric `lora_alpha`,
    `target_modules` (names matched against a module's last component), `bias` "none",
    `use_dora` false, `fan_in_fan_out` a boolean; no per-module `rank_pattern`/`alpha_pattern`
    (shrink writes none);
  * adapter_model.safetensors: for every adapted module `base_model.model.<module>.lora_A.weight`
    of shape [r, in_features] and `base_model.model.<module>.lora_B.weight` of shape
    [out_features, r] (float32, float16 or bfloat16), nothing else; the module's last name
    component is in `target_modules`; every value finite; B not all zero (a trained adapter —
    PEFT starts B at zero).
With --base (the model the adapter was trained on, e.g. shrink's bitsandbytes NF4 directory):
every adapted module exists there as `<module>.weight` and its [out, in] shape — from the
safetensors header, or for a bitsandbytes 4-bit weight from the JSON of its
`quant_state.bitsandbytes__nf4|fp4` tensor — equals [B's rows, A's columns].

Prints the adapter's size and exits 1 with the list of failures on any. Needs numpy and
safetensors.
"""
import argparse
import json
import os
import re
import sys

import numpy as np
from safetensors import safe_open

PREFIX = "base_model.model."


def base_shapes(base):
    """[out, in] of every weight of BASE by tensor name (bitsandbytes 4-bit from its quant state)."""
    shapes = {}
    with safe_open(os.path.join(base, "model.safetensors"), "np") as f:
        names = list(f.keys())
        for n in names:
            m = re.match(r"(.*\.weight)\.quant_state\.bitsandbytes__(nf4|fp4)$", n)
            if m:
                state = json.loads(bytes(f.get_tensor(n).astype(np.uint8)).decode())
                shapes[m.group(1)] = list(state["shape"])
        for n in names:
            if n.endswith(".weight") and n not in shapes:
                shapes[n] = list(f.get_slice(n).get_shape())
    return shapes


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("adapter")
    ap.add_argument("--base")
    ap.add_argument("--expect-rank", type=int)
    ap.add_argument("--expect-modules", type=int)
    a = ap.parse_args()
    fails = []
    cfg = json.load(open(os.path.join(a.adapter, "adapter_config.json")))
    if cfg.get("peft_type") != "LORA":
        fails.append(f"peft_type {cfg.get('peft_type')!r}, not LORA")
    r = cfg.get("r")
    if not isinstance(r, int) or r <= 0:
        fails.append(f"r {r!r} is not a positive integer")
    alpha = cfg.get("lora_alpha")
    if not isinstance(alpha, (int, float)) or not np.isfinite(alpha):
        fails.append(f"lora_alpha {alpha!r} is not a number")
    targets = cfg.get("target_modules")
    if isinstance(targets, str):
        targets = [targets]
    if not isinstance(targets, list) or not targets:
        fails.append(f"target_modules {targets!r} is not a non-empty list")
        targets = []
    if cfg.get("bias", "none") != "none":
        fails.append(f"bias {cfg.get('bias')!r}")
    if cfg.get("use_dora", False):
        fails.append("use_dora is set")
    if not isinstance(cfg.get("fan_in_fan_out", False), bool):
        fails.append("fan_in_fan_out is not a boolean")
    if cfg.get("rank_pattern") or cfg.get("alpha_pattern"):
        fails.append("rank_pattern / alpha_pattern present")
    if a.expect_rank is not None and r != a.expect_rank:
        fails.append(f"r {r} != expected {a.expect_rank}")

    pairs = {}
    params = 0
    with safe_open(os.path.join(a.adapter, "adapter_model.safetensors"), "np") as f:
        for n in f.keys():
            m = re.match(r"^" + re.escape(PREFIX) + r"(.+)\.lora_([AB])\.weight$", n)
            if not m:
                fails.append(f"unexpected tensor {n}")
                continue
            t = f.get_tensor(n)
            if t.dtype not in (np.float32, np.float16) and str(t.dtype) != "bfloat16":
                fails.append(f"{n}: dtype {t.dtype}")
            if not np.all(np.isfinite(t.astype(np.float32))):
                fails.append(f"{n}: non-finite values")
            params += t.size
            pairs.setdefault(m.group(1), {})[m.group(2)] = t.astype(np.float32)
    shapes = base_shapes(a.base) if a.base else None
    trained = 0
    for module, p in sorted(pairs.items()):
        if set(p) != {"A", "B"}:
            fails.append(f"{module}: lora_{'B' if 'A' in p else 'A'} missing")
            continue
        A, B = p["A"], p["B"]
        if A.ndim != 2 or B.ndim != 2 or A.shape[0] != r or B.shape[1] != r:
            fails.append(f"{module}: A {A.shape}, B {B.shape} are not [r, in], [out, r] at r={r}")
            continue
        if module.split(".")[-1] not in targets:
            fails.append(f"{module}: {module.split('.')[-1]} not in target_modules {targets}")
        trained += bool(np.any(B != 0))
        if shapes is not None:
            w = shapes.get(module + ".weight")
            want = [B.shape[0], A.shape[1]]
            if w is None:
                fails.append(f"{module}.weight is not in the base")
            elif w != want and not (cfg.get("fan_in_fan_out") and w == want[::-1]):
                fails.append(f"{module}: base weight {w}, adapter gives [out, in] = {want}")
    if not pairs:
        fails.append("no LoRA pair")
    if trained == 0 and pairs:
        fails.append("every lora_B is zero: the adapter is untrained")
    if a.expect_modules is not None and len(pairs) != a.expect_modules:
        fails.append(f"{len(pairs)} modules, expected {a.expect_modules}")
    scale = alpha / r if isinstance(r, int) and r > 0 and isinstance(alpha, (int, float)) else 0
    print(f"{a.adapter}: LoRA r={r} alpha={alpha} (scale {scale:g}), {len(pairs)} modules "
          f"({trained} with a trained B), {params} parameters"
          + (", shapes agree with the base" if shapes is not None and not fails else ""))
    if fails:
        print("FAILED:\n  " + "\n  ".join(fails))
        sys.exit(1)
    print("OK")


if __name__ == "__main__":
    main()
