"""Time the Python peers' quantization step on SmolLM2's decoder linears, for side-by-side
comparison with `shrink quantize --json` (its `quantize_seconds`):

  optimum-quanto qint4:  quantize(model, weights=qint4, exclude="lm_head"); freeze(model)
  bitsandbytes NF4+DQ:   functional.quantize_4bit(w, blocksize=64, quant_type="nf4",
                         compress_statistics=True) on every decoder linear weight (CPU)

Usage: python scripts/bench-quantize-peers.py F32_HF_DIR [RUNS]
(F32_HF_DIR from `shrink convert assets/SmolLM2-135M-Instruct.Q4_1.gguf --dtype f32 -o DIR`).
Needs torch, transformers, optimum-quanto, bitsandbytes. 2 threads; prints min and median.
"""
import sys
import time

import torch

torch.set_num_threads(2)
path = sys.argv[1]
runs = int(sys.argv[2]) if len(sys.argv) > 2 else 5


def report(name, times):
    times.sort()
    print(f"{name}: min {times[0]:.3f} s, median {times[len(times) // 2]:.3f} s, runs {[round(x, 3) for x in times]}")


from transformers import AutoModelForCausalLM  # noqa: E402
from optimum.quanto import freeze, qint4, quantize  # noqa: E402

times = []
for _ in range(runs):
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    t = time.perf_counter()
    quantize(model, weights=qint4, exclude="lm_head")
    freeze(model)
    times.append(time.perf_counter() - t)
    del model
report("quanto qint4", times)

import bitsandbytes.functional as F  # noqa: E402

model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
weights = [m.weight.data for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and ".layers." in n]
times = []
for _ in range(runs):
    t = time.perf_counter()
    for w in weights:
        F.quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=True)
    times.append(time.perf_counter() - t)
report(f"bitsandbytes nf4+dq ({len(weights)} weights)", times)
