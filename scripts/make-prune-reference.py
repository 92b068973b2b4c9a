"""Reference SparseGPT, Wanda and magnitude masks for shrink's tests (run once; output committed).

Writes crates/shrink-methods/tests/data/prune_reference.safetensors, which
crates/shrink-methods/tests/prune_reference.rs checks `shrink_methods::sparsegpt` and
`shrink_methods::sparsity` against.

The reference is llm-compressor's own code, imported and called unchanged (its version is in
the file's metadata; last run with llmcompressor 0.14.0.1, torch 2.14.0+cu130 run on the CPU,
numpy 2.4.6, safetensors 0.8.0):

  * SparseGPT: `accumulate_hessian` and `sparsify_weight` from
    llmcompressor/modifiers/pruning/sparsegpt/sgpt_sparsify.py (the SparseGPTModifier's loop:
    IST-DASLab/sparsegpt's `fasterprune`), preserve_sparsity_mask=False, dampening_frac 0.01,
    float32 on the CPU;
  * Wanda: `accumulate_row_scalars` and `sparsify_weight` from
    llmcompressor/modifiers/pruning/wanda/wanda_sparsify.py;
  * magnitude: the mask creator the MagnitudePruningModifier uses,
    `PruningMaskFactory.create_mask_creator("unstructured")` from
    llmcompressor/modifiers/pruning/utils/pytorch/mask_factory.py, called with
    scores = |W| as the modifier does (it has no N:M mask structure).

The only reference code copied here is the few lines of sgpt's `sparsify_weight` that build its
inverse-Hessian factor (dead diagonal set to 1, damp = 0.01 * mean(diag), cholesky,
cholesky_inverse, cholesky upper), so that the factor can be saved: `hinv_factor` below. The
script checks that it is bit for bit the factor `sparsify_weight` itself computes (by recording
the result of `torch.linalg.cholesky(..., upper=True)` during each call).

The fixed layer (as scripts/make-gptq-reference.py, another seed): W [64, 256] (out x in)
float32, seeded; calibration inputs X: 8 sequences x 64 tokens x 256 features, correlated (a
random mixing of 32 latent factors plus noise), with 8 outlier features x 8 and one dead
feature (always 0, column 5), fed to `accumulate_hessian` / `accumulate_row_scalars` one
sequence at a time as the modifiers' hooks do: H = 2/8 * sum_s X_s^T X_s and the row scalars
S_j = sum_t x_tj^2 / 8 (num_samples counts sequences), float32.

Cases:

  sgpt_u50        SparseGPT unstructured 0.5, block size 128
  sgpt_u30_b64    SparseGPT unstructured 0.3, block size 64
  sgpt_2of4       SparseGPT 2:4, block size 128
  sgpt_4of8       SparseGPT 4:8, block size 128
  wanda_u50       Wanda unstructured 0.5 (per output row)
  wanda_2of4      Wanda 2:4
  magnitude_u50   magnitude unstructured 0.5 (whole tensor)

Saved tensors:
  W             f32 [64, 256]     the weight
  S             f32 [256]         Wanda's row scalars as accumulate_row_scalars leaves them
  Hinv.upper    f32 [256*257/2]   sgpt's upper Cholesky factor of the dampened H^-1 (float32
                                  torch.linalg), its upper triangle row by row
  {case}.mask   u8  [64, 32]      the pruned positions (SparseGPT and Wanda: W_out == 0;
                                  magnitude: the creator's mask False), bit-packed along each
                                  row: column j is bit j % 8 (LSB first) of byte j / 8
  {sgpt}.kept   f32 [n]           the reference's output weight at the kept positions of the
                                  even rows (0, 2, .., 62), row-major (only every other row, to
                                  keep the file under 300 KB; the masks are whole)
  {sgpt}.loss   f32 [1]           the loss sparsify_weight returns (sum (w - q)^2 / d^2 / 2)
Metadata: llmcompressor, torch, numpy and safetensors versions, each case's parameters.

Usage (the venv that has llm-compressor; the default CPU torch wheel works):
  python3 -m venv /tmp/gptq-ref-venv && /tmp/gptq-ref-venv/bin/pip install llmcompressor
  /tmp/gptq-ref-venv/bin/python scripts/make-prune-reference.py [OUT]
The tensors are the same on every run; the header's metadata order may vary.
"""
import math
import sys
from importlib.metadata import version

import numpy as np
import torch
import torch.nn as nn
from llmcompressor.modifiers.pruning.sparsegpt import sgpt_sparsify
from llmcompressor.modifiers.pruning.utils.pytorch.mask_factory import (
    PruningMaskCreatorArgs,
    PruningMaskFactory,
)
from llmcompressor.modifiers.pruning.wanda import wanda_sparsify
from safetensors.numpy import save_file

OUT = sys.argv[1] if len(sys.argv) > 1 else "crates/shrink-methods/tests/data/prune_reference.safetensors"
ROWS, COLS, NSEQ, SEQLEN = 64, 256, 8, 64
DEAD = 5
DAMP = 0.01
torch.set_num_threads(1)

rng = np.random.default_rng(20250807)
W = (0.05 * rng.standard_normal((ROWS, COLS))).astype(np.float32)
mix = rng.standard_normal((32, COLS))
X = rng.standard_normal((NSEQ * SEQLEN, 32)) @ mix / math.sqrt(32) + 0.3 * rng.standard_normal((NSEQ * SEQLEN, COLS))
X[:, rng.choice(np.delete(np.arange(COLS), DEAD), 8, replace=False)] *= 8.0
X[:, DEAD] = 0.0
X = X.astype(np.float32).reshape(NSEQ, SEQLEN, COLS)


def layer():
    m = nn.Linear(COLS, ROWS, bias=False)
    m.weight.data = torch.from_numpy(W.copy())
    return m


def calibrate():
    m = layer()
    H = sgpt_sparsify.make_empty_hessian(m)
    S = wanda_sparsify.make_empty_row_scalars(m)
    nh = ns = 0
    for s in range(NSEQ):
        inp = torch.from_numpy(X[s : s + 1])
        H, nh = sgpt_sparsify.accumulate_hessian(inp, m, H, nh)
        S, ns = wanda_sparsify.accumulate_row_scalars(inp, m, S, ns)
    return H, S


def hinv_factor(H):
    """The lines of sgpt_sparsify.sparsify_weight that build Hinv (its `try` branch)."""
    H = H.clone()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    damp = DAMP * torch.mean(torch.diag(H))
    diag = torch.arange(H.shape[0], device=H.device)
    H[diag, diag] += damp
    H = torch.linalg.cholesky(H)
    H = torch.cholesky_inverse(H)
    H = torch.linalg.cholesky(H, upper=True)
    return H


# Record the upper factor sparsify_weight computes, to check hinv_factor against it.
_cholesky = torch.linalg.cholesky
_factors = []


def _recording_cholesky(A, *args, upper=False, **kwargs):
    out = _cholesky(A, *args, upper=upper, **kwargs)
    if upper:
        _factors.append(out.clone())
    return out


def pack(mask):
    assert mask.shape == (ROWS, COLS) and mask.dtype == np.bool_
    return np.packbits(mask, axis=1, bitorder="little")


H, S = calibrate()
assert torch.equal(H, H.t())
assert torch.nonzero(torch.diag(H) == 0).flatten().tolist() == [DEAD]
assert torch.nonzero(S == 0).flatten().tolist() == [DEAD]
U = hinv_factor(H)
Un = U.numpy()
assert np.array_equal(np.triu(Un), Un)

tensors = {
    "W": W,
    "S": S.numpy().astype(np.float32),
    "Hinv.upper": Un[np.triu_indices(COLS)].copy(),
}
meta = {
    "llmcompressor": version("llmcompressor"),
    "torch": torch.__version__,
    "numpy": np.__version__,
    "safetensors": version("safetensors"),
    "dampening_frac": str(DAMP),
}

SGPT = {
    # name: (sparsity, prune_n, prune_m, block_size)
    "sgpt_u50": (0.5, 0, 0, 128),
    "sgpt_u30_b64": (0.3, 0, 0, 64),
    "sgpt_2of4": (0.5, 2, 4, 128),
    "sgpt_4of8": (0.5, 4, 8, 128),
}
torch.linalg.cholesky = _recording_cholesky
try:
    for name, (sparsity, n, m, bs) in SGPT.items():
        mod = layer()
        _factors.clear()
        loss, Wout = sgpt_sparsify.sparsify_weight(mod, {mod: H.clone()}, sparsity, n, m, bs, DAMP, False)
        assert len(_factors) == 1 and torch.equal(_factors[0], U), f"{name}: Hinv is not sparsify_weight's"
        Wout = Wout.detach().numpy()
        mask = Wout == 0
        if n:
            assert np.all(mask.reshape(ROWS, COLS // m, m).sum(2) == n), name
        else:
            for b0 in range(0, COLS, bs):
                count = ROWS * min(bs, COLS - b0)
                pruned = int(mask[:, b0 : b0 + bs].sum())
                # `tmp <= thresh`, thresh the int(numel * sparsity)-th smallest: one more than
                # the fraction when there are no ties.
                assert pruned == int(count * sparsity) + 1, (name, b0, pruned)
        tensors[f"{name}.mask"] = pack(mask)
        tensors[f"{name}.kept"] = Wout[::2][~mask[::2]].astype(np.float32)
        tensors[f"{name}.loss"] = np.array([loss], dtype=np.float32)
        meta[name] = f"sparsity={sparsity} prune_n={n} prune_m={m} block_size={bs}"
        print(f"{name}: {int(mask.sum())} pruned, loss {loss:.6g}")
finally:
    torch.linalg.cholesky = _cholesky

WANDA = {"wanda_u50": (0.5, 0, 0), "wanda_2of4": (0.5, 2, 4)}
metric = np.abs(W) * np.sqrt(S.numpy())[None, :]
for name, (sparsity, n, m) in WANDA.items():
    mod = layer()
    Wout = wanda_sparsify.sparsify_weight(mod, {mod: S.clone()}, sparsity, n, m).numpy()
    mask = Wout == 0
    if n:
        # torch.topk's order among equal scores is unspecified: none on this data.
        g = metric.reshape(ROWS, COLS // m, m)
        assert all(len(set(grp)) == m for grp in g.reshape(-1, m).tolist()), name
        assert np.all(mask.reshape(ROWS, COLS // m, m).sum(2) == n), name
    else:
        assert np.all(mask.sum(1) == int(COLS * sparsity)), name
    assert np.array_equal(Wout[~mask], W[~mask]), name
    tensors[f"{name}.mask"] = pack(mask)
    meta[name] = f"sparsity={sparsity} prune_n={n} prune_m={m}"
    print(f"{name}: {int(mask.sum())} pruned")

creator = PruningMaskFactory.create_mask_creator("unstructured")
for name, sparsity in {"magnitude_u50": 0.5}.items():
    param = nn.Parameter(torch.from_numpy(W.copy()))
    keep = creator(PruningMaskCreatorArgs(parameter=param, sparsity=sparsity, scores=param.data.abs())).numpy()
    mask = ~keep
    # `scores > threshold`: exactly int(numel * sparsity) pruned when there are no ties.
    assert int(mask.sum()) == int(W.size * sparsity), name
    tensors[f"{name}.mask"] = pack(mask)
    meta[name] = f"sparsity={sparsity} mask_structure=unstructured"
    print(f"{name}: {int(mask.sum())} pruned")

save_file(tensors, OUT, metadata=meta)
print(f"wrote {OUT}")
