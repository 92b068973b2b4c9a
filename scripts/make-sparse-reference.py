"""Write sparse checkpoints with compressed-tensors' own sparse compressors, for shrink's tests.

compressed-tensors wrote `sparse-bitmask` and `sparse-24-bitmask` from 0.8 to 0.14 (its 0.15
dropped the compressors); this script needs one of those versions importable, e.g.

  git clone https://github.com/vllm-project/compressed-tensors && cd compressed-tensors
  git archive 0.14.0 src/compressed_tensors | tar -x -C /tmp/ct014
  # version.py is generated at install time: write one
  echo '__version__ = version = "0.14.0"' > /tmp/ct014/src/compressed_tensors/version.py
  PYTHONPATH=/tmp/ct014/src python scripts/make-sparse-reference.py OUT_DIR

(or `pip install compressed-tensors==0.14.0`; tested with torch 2.14.0, numpy 2.4).

OUT_DIR gets four model directories, each with config.json and model.safetensors:
  sparse-bitmask-dense/     unstructured sparse weights (float32, bfloat16, float16) and a norm
  sparse-bitmask/           the same through BitmaskCompressor.compress
  sparse-24-bitmask-dense/  2:4 sparse weights (float32, bfloat16, float16)
  sparse-24-bitmask/        the same through Sparse24BitMaskCompressor.compress
and the config.json of the sparse ones is written by ModelCompressor.update_config
(`python scripts/check-sparse.py OUT_DIR/sparse-bitmask OUT_DIR/sparse-bitmask-dense` checks
one). The weights
are random (torch seed 0) with rows that are not multiples of 8 and columns that are not
multiples of 8, a row of zeros, a −0.0 (a zero to compressed-tensors), and 2:4 groups with fewer
than two non-zeros. A norm weight stays dense (not a target).
"""
import json
import os
import sys

import torch
from safetensors.torch import save_file

import compressed_tensors
from compressed_tensors.compressors import (
    BitmaskCompressor,
    ModelCompressor,
    Sparse24BitMaskCompressor,
)
from compressed_tensors.config import BitmaskConfig, Sparse24BitMaskConfig

out = sys.argv[1]
torch.manual_seed(0)


def unstructured(rows, cols, density, dtype):
    w = torch.randn(rows, cols)
    w[torch.rand(rows, cols) >= density] = 0
    return w.to(dtype)


def two_four(rows, cols, dtype):
    w = torch.randn(rows, cols)
    g = w.view(-1, 4)
    drop = g.abs().topk(2, dim=1, largest=False).indices
    g.scatter_(1, drop, 0.0)
    # Some groups with a single non-zero, and an all-zero group.
    g[1, :] = torch.tensor([0.0, 0.0, 0.0, 1.5])
    g[2, :] = 0.0
    return w.to(dtype)


up = unstructured(12, 20, 0.5, torch.float32)
up[3] = 0.0  # a row of zeros
up[0, 1] = -0.0
down = unstructured(5, 13, 0.3, torch.bfloat16)
gate = unstructured(9, 8, 0.6, torch.float16)
dense_unstructured = {
    "model.layers.0.mlp.up_proj.weight": up,
    "model.layers.0.mlp.down_proj.weight": down,
    "model.layers.0.mlp.gate_proj.weight": gate,
    "model.layers.0.input_layernorm.weight": torch.ones(20),
}
dense_24 = {
    "model.layers.0.self_attn.q_proj.weight": two_four(8, 16, torch.float32),
    "model.layers.0.self_attn.k_proj.weight": two_four(6, 12, torch.bfloat16),
    "model.layers.0.self_attn.v_proj.weight": two_four(3, 24, torch.float16),
}
targets = {
    "sparse-bitmask": [k[: -len(".weight")] for k in dense_unstructured if "proj" in k],
    "sparse-24-bitmask": [k[: -len(".weight")] for k in dense_24],
}


def write_dir(name, tensors, quantization_config=None):
    d = os.path.join(out, name)
    os.makedirs(d, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(d, "model.safetensors"))
    cfg = {"model_type": "llama", "architectures": ["LlamaForCausalLM"]}
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2, sort_keys=True)
    return d


def zeros_fraction(tensors):
    total = sum(v.numel() for v in tensors.values())
    return sum(int((v == 0).sum()) for v in tensors.values()) / total


for fmt, state, compressor_cls, config_cls in [
    ("sparse-bitmask", dense_unstructured, BitmaskCompressor, BitmaskConfig),
    ("sparse-24-bitmask", dense_24, Sparse24BitMaskCompressor, Sparse24BitMaskConfig),
]:
    config = config_cls(
        global_sparsity=zeros_fraction(state), targets=["Linear"], ignore=["lm_head"]
    )
    write_dir(f"{fmt}-dense", state)
    compressor = compressor_cls(config=config)
    compressed = compressor.compress(dict(state), compression_targets=set(targets[fmt]))
    d = write_dir(fmt, compressed)
    ModelCompressor(sparsity_config=config).update_config(d)
    # Check compressed-tensors decodes its own output to the dense weights.
    for prefix, back in compressor.decompress_from_state_dict(compressed):
        if prefix.endswith(".weight") and prefix in state:
            back = back if isinstance(back, torch.Tensor) else back["weight"]
            assert torch.equal(back, state[prefix]), prefix
    print(fmt, sorted(compressed))
print("compressed-tensors", compressed_tensors.__version__)
