"""Reference outputs of bitsandbytes' LLM.int8() for shrink's tests (run once; output committed).

Writes crates/shrink-models/tests/data/llm_int8_bnb.safetensors with, for a random weight and
input (some input features carrying outliers above the threshold 6.0):
  x [m, k] float32, CB [n, k] int8, SCB [n] float32 (bitsandbytes' weight format),
  y [m, n] float32 = bnb.nn.Linear8bitLt(threshold=6.0, has_fp16_weights=False) forward on CPU,
  y_nothr [m, n] float32 = the same module with threshold 0 (no outlier decomposition).
Needs torch and bitsandbytes (tested with bitsandbytes 0.50.2, torch 2.15).
"""
import sys
import torch
import bitsandbytes as bnb
from safetensors.torch import save_file

torch.manual_seed(0)
m, k, n = 7, 96, 40
w = torch.randn(n, k) * 0.05
x = torch.randn(m, k)
x[:, 5] *= 9.0  # feature 5 holds outliers in most rows
x[2, 70] = -11.0  # one outlier in one row: its whole feature goes through float
outs = {}
for name, thr in [("y", 6.0), ("y_nothr", 0.0)]:
    lin = bnb.nn.Linear8bitLt(k, n, bias=False, has_fp16_weights=False, threshold=thr)
    lin.weight = bnb.nn.Int8Params(w.clone(), requires_grad=False, has_fp16_weights=False)
    lin = lin.to("cpu").eval()  # quantizes the weight; eval: the int8 path (training dequantizes)
    with torch.no_grad():
        outs[name] = lin(x.clone()).float().contiguous()
    cb, scb = lin.state.CB, lin.state.SCB
out = sys.argv[1] if len(sys.argv) > 1 else "crates/shrink-models/tests/data/llm_int8_bnb.safetensors"
save_file({"x": x.contiguous(), "CB": cb.contiguous(), "SCB": scb.float().contiguous(), **outs}, out)
print("wrote", out, {k_: tuple(v.shape) for k_, v in outs.items()}, "bnb", bnb.__version__)
