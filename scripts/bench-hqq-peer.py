"""Time the hqq library (mobiusml/hqq 0.2.x) quantizing every decoder linear of a model on the
CPU with 2 threads, for side-by-side comparison with shrink's HQQ
(`SHRINK_HQQ_MODEL=DIR cargo test --release -p shrink-methods --test hqq -- --ignored
--nocapture` prints the same JSON for shrink).

For each config (4-bit g64 axis 1 — hqq's defaults —, 3-bit and 2-bit g64 axis 1) it runs

  Quantizer.quantize(W, nbits, group_size=64, optimize=True, round_zero=False, axis=1,
                     bitpack=False, device="cpu")

in float32 on every `model.layers.*.{self_attn,mlp}.*_proj.weight`, and prints one JSON
object: per config the best wall time in seconds over RUNS runs, the weights and elements
quantized, and the mean |W − W_r| over all of them (float32 scale and zero).

Usage: python scripts/bench-hqq-peer.py F32_HF_DIR [RUNS]
(F32_HF_DIR from `shrink convert assets/SmolLM2-135M-Instruct.Q4_1.gguf --dtype f32 -o DIR`).
Needs torch, safetensors and hqq (`DISABLE_CUDA=1 pip install --no-deps hqq termcolor einops`).
"""
import glob
import json
import os
import re
import sys
import time

import torch
from hqq.core.quantize import Quantizer
from safetensors.torch import load_file

torch.set_num_threads(2)
path = sys.argv[1]
runs = int(sys.argv[2]) if len(sys.argv) > 2 else 3

LINEAR = re.compile(r"^model\.layers\.\d+\.(self_attn|mlp)\.\w+_proj\.weight$")
weights = []
for f in sorted(glob.glob(os.path.join(path, "*.safetensors"))):
    for name, t in load_file(f).items():
        if LINEAR.match(name):
            weights.append((name, t.float().contiguous()))
weights.sort()
if not weights:
    sys.exit(f"no decoder linear weights in {path}")
elements = sum(w.numel() for _, w in weights)

configs = [(4, 64, 1), (3, 64, 1), (2, 64, 1)]
report = {
    "library": "hqq",
    "threads": torch.get_num_threads(),
    "weights": len(weights),
    "elements": elements,
}
for bits, group, axis in configs:
    best = None
    err_sum = 0.0
    for run in range(runs):
        start = time.perf_counter()
        outs = []
        for _, w in weights:
            outs.append(
                Quantizer.quantize(
                    w,
                    nbits=bits,
                    channel_wise=True,
                    group_size=group,
                    optimize=True,
                    round_zero=False,
                    axis=axis,
                    bitpack=False,
                    device="cpu",
                )
            )
        seconds = time.perf_counter() - start
        best = seconds if best is None else min(best, seconds)
        if run == 0:
            for (_, w), (w_q, meta) in zip(weights, outs):
                meta["compute_dtype"] = torch.float32
                err_sum += (w - Quantizer.dequantize(w_q, meta)).abs().double().sum().item()
    report[f"hqq{bits}-g{group}-axis{axis}"] = {
        "seconds": round(best, 3),
        "mean_abs_error": err_sum / elements,
    }
print(json.dumps(report, indent=1))
