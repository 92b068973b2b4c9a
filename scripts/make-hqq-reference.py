"""Write the reference outputs of the hqq library (mobiusml/hqq) that
`crates/shrink-methods/tests/hqq.rs` checks shrink's HQQ optimiser against.

For two weights (64x128 standard normal; 96x192 Student-t(4) x 0.02, heavy-tailed like LLM
weights) and every (bits, axis) in {4, 3, 2} x {0, 1}, group size 64, it runs

  Quantizer.quantize(W, nbits, group_size=64, optimize=True, round_zero=False, axis=axis,
                     bitpack=False, device="cpu")

in float32 on the CPU (hqq's `optimize_weights_proximal_legacy`, 20 iterations, lp 0.7,
beta 10, kappa 1.01) and saves to crates/shrink-methods/tests/data/hqq_reference.safetensors:

  {shape}.W                 the weight, f32 [rows, cols]           shape = r64c128 / r96c192
  {shape}_b{bits}_a{axis}.W_q    hqq's codes, u8, flat in hqq's grouped layout
                                 (axis 1: [N/G, G], axis 0: [G, N/G], N = rows*cols)
  {shape}_b{bits}_a{axis}.scale  hqq's (already inverted) scale, f32, one per group
  {shape}_b{bits}_a{axis}.zero   hqq's float zero point, f32, one per group
  {shape}_b{bits}_a{axis}.W_r    Quantizer.dequantize with compute_dtype float32, [rows, cols]

Usage: python scripts/make-hqq-reference.py [OUT]   (needs torch, safetensors and hqq 0.2.x:
`pip install --no-deps hqq termcolor einops` with DISABLE_CUDA=1 avoids the CUDA build).
"""
import sys

import hqq
import torch
from hqq.core.quantize import Quantizer
from safetensors.torch import save_file

out = sys.argv[1] if len(sys.argv) > 1 else "crates/shrink-methods/tests/data/hqq_reference.safetensors"
torch.set_num_threads(1)
gen = torch.Generator().manual_seed(20231103)

weights = {
    "r64c128": torch.randn(64, 128, generator=gen, dtype=torch.float32),
}
# Student-t with 4 degrees of freedom: normal / sqrt(chi2_4 / 4), chi2_4 = sum of 4 squared normals.
z = torch.randn(96, 192, generator=gen, dtype=torch.float32)
chi2 = (torch.randn(4, 96, 192, generator=gen, dtype=torch.float32) ** 2).sum(0)
weights["r96c192"] = (0.02 * z / torch.sqrt(chi2 / 4)).contiguous()

tensors = {}
for name, W in weights.items():
    tensors[f"{name}.W"] = W
    for bits in (4, 3, 2):
        for axis in (0, 1):
            W_q, meta = Quantizer.quantize(
                W.clone(),
                nbits=bits,
                channel_wise=True,
                group_size=64,
                optimize=True,
                round_zero=False,
                axis=axis,
                bitpack=False,
                device="cpu",
            )
            meta["compute_dtype"] = torch.float32
            W_r = Quantizer.dequantize(W_q, meta)
            key = f"{name}_b{bits}_a{axis}"
            tensors[f"{key}.W_q"] = W_q.to(torch.uint8).flatten().contiguous()
            tensors[f"{key}.scale"] = meta["scale"].float().flatten().contiguous()
            tensors[f"{key}.zero"] = meta["zero"].float().flatten().contiguous()
            tensors[f"{key}.W_r"] = W_r.float().contiguous()
            err = (W - W_r).abs().mean().item()
            print(f"{key}: mean |W - W_r| = {err:.6g}")

save_file(
    tensors,
    out,
    metadata={"hqq": hqq.__version__, "torch": torch.__version__, "group_size": "64"},
)
print(f"wrote {out}")
