"""Reference GPTQ codes for shrink's tests (run once; output committed).

Writes crates/shrink-methods/tests/data/gptq_reference.safetensors, which
crates/shrink-methods/tests/gptq_reference.rs checks `shrink_methods::gptq` against.

The algorithm below is the reference's own code, copied rather than imported (the GPTQ
authors' repo is no package, and AutoGPTQ's package brings transformers and CUDA kernels that
this does not need):

  * `Quantizer` and `quantize`: IST-DASLab/gptq quant.py at commit
    2d65066eeb06a5c9ff5184d8cebdf33662c67faf (identical, up to formatting, to AutoGPTQ's
    auto_gptq/quantization/quantizer.py at 9f7d37072917ab3a7545835f23e808294a542153);
  * `GPTQ.add_batch` and `GPTQ.fasterquant`: AutoGPTQ auto_gptq/quantization/gptq.py at
    9f7d37072917ab3a7545835f23e808294a542153, whose quantization loop is the same as
    IST-DASLab/gptq gptq.py's at 2d65066 (both have `static_groups`); AutoGPTQ's adds only
    the bookkeeping that returns `scale, zero, g_idx`.

Edits to the copied code, all marked `# EDIT`:
  * the Conv1D / Conv2d branches are dropped (the layer is an nn.Linear), so are the DEBUG
    prints, the timing/logging and `torch.cuda.synchronize()`;
  * `fasterquant` also returns the processing order `perm`, its inverse-Hessian factor
    `Hinv` and the dequantized `Q`;
  * `Quantizer.find_params` rounds the scale to float16 before the zero point is computed from
    it. The HF `gptq` layout (and AutoGPTQ's pack) stores scales in float16, and shrink
    quantizes on the grid it stores, so its `params` rounds the scale to f16 first; without
    this edit every code near a rounding boundary would differ for that reason alone, and the
    error feedback would carry each such difference to the rest of the row (on this data 192
    to 507 of the 16384 codes of a case differ without it). Everything else
    (min/max with 0, symmetric range, `round(-xmin / scale)`, round-half-even, clamping, the
    Hessian, dampening, Cholesky inverse, block updates) is the reference's, in float32 on
    the CPU.

The fixed layer: W [64, 256] (out x in) float32, seeded; calibration inputs X: 8 sequences x
64 tokens x 256 features, correlated (a random mixing of 32 latent factors plus noise), with 8
outlier features x 8 and one dead feature (always 0, column 5), fed to `add_batch` one
sequence at a time as the reference's hooks do, so H = 2/8 * sum_s X_s^T X_s in float32.

Cases (bits 4, percdamp 0.01, blocksize 128 unless named):

  {g64,g32}_none        groups in column order (act-order off), asymmetric
  {g64,g32}_group       act-order, groups in processing order (g_idx), asymmetric
  {g64,g32}_static      act-order, static_groups (groups of the original columns, params from
                        the weight before any update), asymmetric
  g64_static_noact      static_groups without act-order
  g64_none_sym, g64_group_sym   symmetric
  g64_none_b96          blocksize 96: groups straddle the blocks

Saved tensors:
  W        f32 [64, 256]      the weight
  H.upper  f32 [256*257/2]    the Hessian as add_batch leaves it (dead diagonal still 0), its
                              upper triangle row by row (it is exactly symmetric)
  Hinv_none.upper, Hinv_act.upper  f32 [256*257/2]
                              the reference's own upper Cholesky factor of the dampened H^-1
                              (float32 torch.linalg), in column order and in act-order,
                              upper triangle row by row (the same for every case of that order)
  {case}.codes  u8 [64, 256]  the integer codes q = clamp(round(w/scale) + zero, 0, 15), in
                              the original column order (recovered from Q as
                              Q / scale[g_idx] + zero[g_idx], exact: scale is a float16 value
                              and |q - zero| <= 15, so scale * (q - zero) is exact in f32; the
                              script asserts that Q is exactly scale * (codes - zero))
  {case}.scales f32 [64, ngroups]   as fasterquant returns them (float16 values)
  {case}.zeros  u8  [64, ngroups]
  {case}.g_idx  i32 [256]
  {case}.perm   i32 [256]     processing order (identity without act-order)
Metadata: torch and numpy versions, and each case's bits/group_size/sym/act_order/
static_groups/block_size.

Usage (a scratch venv, nothing else needed; the default torch wheel works on the CPU):
  python3 -m venv /tmp/gptq-ref && /tmp/gptq-ref/bin/pip install torch numpy safetensors
  /tmp/gptq-ref/bin/python scripts/make-gptq-reference.py [OUT]
Last run with torch 2.15.0 (the default PyPI wheel, on the CPU), numpy 2.4.6 and safetensors
0.8.0 (torch's and numpy's versions are also in the file's metadata). The tensors are the same
on every run; the header's metadata order may vary.
"""
import copy
import math
import sys

import numpy as np
import torch
import torch.nn as nn
from safetensors.numpy import save_file

OUT = sys.argv[1] if len(sys.argv) > 1 else "crates/shrink-methods/tests/data/gptq_reference.safetensors"
ROWS, COLS, NSEQ, SEQLEN = 64, 256, 8, 64
DEAD = 5
torch.set_num_threads(1)


# ---------------------------------------------------------------------------------------------
# The reference's code (see the docstring). quant.py:
# ---------------------------------------------------------------------------------------------


def quantize(x, scale, zero, maxq):
    if maxq < 0:
        return (x > scale / 2).float() * scale + (x < zero / 2).float() * zero
    q = torch.clamp(torch.round(x / scale) + zero, 0, maxq)
    return scale * (q - zero)


class Quantizer(nn.Module):
    def __init__(self, shape=1):
        super(Quantizer, self).__init__()
        self.register_buffer("maxq", torch.tensor(0))
        self.register_buffer("scale", torch.zeros(shape))
        self.register_buffer("zero", torch.zeros(shape))

    def configure(self, bits, perchannel=False, sym=True, mse=False, norm=2.4, grid=100, maxshrink=0.8, trits=False):
        self.maxq = torch.tensor(2**bits - 1)
        self.perchannel = perchannel
        self.sym = sym
        self.mse = mse
        self.norm = norm
        self.grid = grid
        self.maxshrink = maxshrink
        if trits:
            self.maxq = torch.tensor(-1)

    def find_params(self, x, weight=False):
        dev = x.device
        self.maxq = self.maxq.to(dev)

        shape = x.shape
        if self.perchannel:
            if weight:
                x = x.flatten(1)
            else:
                if len(shape) == 4:
                    x = x.permute([1, 0, 2, 3])
                    x = x.flatten(1)
                if len(shape) == 3:
                    x = x.reshape((-1, shape[-1])).t()
                if len(shape) == 2:
                    x = x.t()
        else:
            x = x.flatten().unsqueeze(0)

        tmp = torch.zeros(x.shape[0], device=dev)
        xmin = torch.minimum(x.min(1)[0], tmp)
        xmax = torch.maximum(x.max(1)[0], tmp)

        if self.sym:
            xmax = torch.maximum(torch.abs(xmin), xmax)
            tmp = xmin < 0
            if torch.any(tmp):
                xmin[tmp] = -xmax[tmp]
        tmp = (xmin == 0) & (xmax == 0)
        xmin[tmp] = -1
        xmax[tmp] = +1

        if self.maxq < 0:
            self.scale = xmax
            self.zero = xmin
        else:
            self.scale = (xmax - xmin) / self.maxq
            # EDIT: the scale as the gptq layout stores it (float16), before the zero point.
            self.scale = self.scale.half().float()
            if self.sym:
                self.zero = torch.full_like(self.scale, (self.maxq + 1) / 2)
            else:
                self.zero = torch.round(-xmin / self.scale)

        if self.mse:
            best = torch.full([x.shape[0]], float("inf"), device=dev)
            for i in range(int(self.maxshrink * self.grid)):
                p = 1 - i / self.grid
                xmin1 = p * xmin
                xmax1 = p * xmax
                scale1 = (xmax1 - xmin1) / self.maxq
                zero1 = torch.round(-xmin1 / scale1) if not self.sym else self.zero
                q = quantize(x, scale1.unsqueeze(1), zero1.unsqueeze(1), self.maxq)
                q -= x
                q.abs_()
                q.pow_(self.norm)
                err = torch.sum(q, 1)
                tmp = err < best
                if torch.any(tmp):
                    best[tmp] = err[tmp]
                    self.scale[tmp] = scale1[tmp]
                    self.zero[tmp] = zero1[tmp]
        if not self.perchannel:
            if weight:
                tmp = shape[0]
            else:
                tmp = shape[1] if len(shape) != 3 else shape[2]
            self.scale = self.scale.repeat(tmp)
            self.zero = self.zero.repeat(tmp)

        if weight:
            shape = [-1] + [1] * (len(shape) - 1)
            self.scale = self.scale.reshape(shape)
            self.zero = self.zero.reshape(shape)
            return
        if len(shape) == 4:
            self.scale = self.scale.reshape((1, -1, 1, 1))
            self.zero = self.zero.reshape((1, -1, 1, 1))
        if len(shape) == 3:
            self.scale = self.scale.reshape((1, 1, -1))
            self.zero = self.zero.reshape((1, 1, -1))
        if len(shape) == 2:
            self.scale = self.scale.unsqueeze(0)
            self.zero = self.zero.unsqueeze(0)

    def quantize(self, x):
        if self.ready():
            return quantize(x, self.scale, self.zero, self.maxq)
        return x

    def enabled(self):
        return self.maxq > 0

    def ready(self):
        return torch.all(self.scale != 0)


# ---------------------------------------------------------------------------------------------
# gptq.py (AutoGPTQ's; the loop is IST-DASLab/gptq's):
# ---------------------------------------------------------------------------------------------


class GPTQ:
    def __init__(self, layer):
        self.layer = layer
        self.dev = self.layer.weight.device
        W = layer.weight.data.clone()
        # EDIT: no Conv2d / Conv1D branches (an nn.Linear).
        self.rows = W.shape[0]
        self.columns = W.shape[1]
        self.H = torch.zeros((self.columns, self.columns), device=self.dev)
        self.nsamples = 0
        self.quantizer = Quantizer()

    def add_batch(self, inp, out):
        if len(inp.shape) == 2:
            inp = inp.unsqueeze(0)
        tmp = inp.shape[0]
        if isinstance(self.layer, nn.Linear):  # EDIT: `or transformers.Conv1D` dropped
            if len(inp.shape) == 3:
                inp = inp.reshape((-1, inp.shape[-1]))
            inp = inp.t()
        self.H *= self.nsamples / (self.nsamples + tmp)
        self.nsamples += tmp
        inp = math.sqrt(2 / self.nsamples) * inp.float()
        self.H += inp.matmul(inp.t())

    def fasterquant(self, blocksize=128, percdamp=0.01, group_size=-1, actorder=False, static_groups=False):
        W = self.layer.weight.data.clone()
        W = W.float()

        if not self.quantizer.ready():
            self.quantizer.find_params(W, weight=True)

        H = self.H
        del self.H
        dead = torch.diag(H) == 0
        H[dead, dead] = 1
        W[:, dead] = 0

        g_idx = []
        scale = []
        zero = []
        now_idx = 1

        if static_groups:
            groups = []
            for i in range(0, self.columns, group_size):
                quantizer = copy.deepcopy(self.quantizer)
                quantizer.find_params(W[:, i : (i + group_size)], weight=True)
                scale.append(quantizer.scale)
                zero.append(quantizer.zero)
                groups.append(quantizer)

        perm = torch.arange(self.columns)  # EDIT: returned
        if actorder:
            perm = torch.argsort(torch.diag(H), descending=True)
            W = W[:, perm]
            H = H[perm][:, perm]
            invperm = torch.argsort(perm)

        Losses = torch.zeros_like(W)
        Q = torch.zeros_like(W)

        damp = percdamp * torch.mean(torch.diag(H))
        diag = torch.arange(self.columns, device=self.dev)
        H[diag, diag] += damp
        H = torch.linalg.cholesky(H)
        H = torch.cholesky_inverse(H)
        H = torch.linalg.cholesky(H, upper=True)
        Hinv = H

        for i1 in range(0, self.columns, blocksize):
            i2 = min(i1 + blocksize, self.columns)
            count = i2 - i1

            W1 = W[:, i1:i2].clone()
            Q1 = torch.zeros_like(W1)
            Err1 = torch.zeros_like(W1)
            Losses1 = torch.zeros_like(W1)
            Hinv1 = Hinv[i1:i2, i1:i2]

            for i in range(count):
                w = W1[:, i]
                d = Hinv1[i, i]

                if group_size != -1:
                    if not static_groups:
                        if (i1 + i) % group_size == 0:
                            self.quantizer.find_params(W[:, (i1 + i) : (i1 + i + group_size)], weight=True)

                        if ((i1 + i) // group_size) - now_idx == -1:
                            scale.append(self.quantizer.scale)
                            zero.append(self.quantizer.zero)
                            now_idx += 1
                    else:
                        idx = i1 + i
                        if actorder:
                            idx = perm[idx]
                        self.quantizer = groups[idx // group_size]

                q = self.quantizer.quantize(w.unsqueeze(1)).flatten()
                Q1[:, i] = q
                Losses1[:, i] = (w - q) ** 2 / d**2

                err1 = (w - q) / d
                W1[:, i:] -= err1.unsqueeze(1).matmul(Hinv1[i, i:].unsqueeze(0))
                Err1[:, i] = err1

            Q[:, i1:i2] = Q1
            Losses[:, i1:i2] = Losses1 / 2

            W[:, i2:] -= Err1.matmul(Hinv[i1:i2, i2:])

        # EDIT: no synchronize / timing / logging.

        group_size = group_size if group_size != -1 else self.columns
        if static_groups and actorder:
            g_idx = [perm[i] // group_size for i in range(self.columns)]
        else:
            g_idx = [i // group_size for i in range(self.columns)]
        g_idx = torch.tensor(g_idx, dtype=torch.int32, device=Q.device)
        if actorder:
            Q = Q[:, invperm]
            g_idx = g_idx[invperm]

        self.layer.weight.data = Q.reshape(self.layer.weight.shape).type_as(self.layer.weight.data)

        if scale == []:
            scale.append(self.quantizer.scale)
            zero.append(self.quantizer.zero)
        scale = torch.cat(scale, dim=1)
        zero = torch.cat(zero, dim=1)
        return scale, zero, g_idx, perm, Hinv, Q  # EDIT: perm, Hinv and Q too


# ---------------------------------------------------------------------------------------------
# The fixed layer and calibration batch, and the cases.
# ---------------------------------------------------------------------------------------------

rng = np.random.default_rng(20250612)
W = (0.05 * rng.standard_normal((ROWS, COLS))).astype(np.float32)
mix = rng.standard_normal((32, COLS))
X = rng.standard_normal((NSEQ * SEQLEN, 32)) @ mix / math.sqrt(32) + 0.3 * rng.standard_normal((NSEQ * SEQLEN, COLS))
X[:, rng.choice(COLS, 8, replace=False)] *= 8.0
X[:, DEAD] = 0.0
X = X.astype(np.float32).reshape(NSEQ, SEQLEN, COLS)

CASES = {
    # name: (group_size, sym, actorder, static_groups, blocksize)
    "g64_none": (64, False, False, False, 128),
    "g32_none": (32, False, False, False, 128),
    "g64_group": (64, False, True, False, 128),
    "g32_group": (32, False, True, False, 128),
    "g64_static": (64, False, True, True, 128),
    "g32_static": (32, False, True, True, 128),
    "g64_static_noact": (64, False, False, True, 128),
    "g64_none_sym": (64, True, False, False, 128),
    "g64_group_sym": (64, True, True, False, 128),
    "g64_none_b96": (64, False, False, False, 96),
}
BITS = 4


def hessian():
    layer = nn.Linear(COLS, ROWS, bias=False)
    g = GPTQ(layer)
    for s in range(NSEQ):
        g.add_batch(torch.from_numpy(X[s : s + 1]), None)
    return g.H


H = hessian()
diag = torch.diag(H)
live = diag[diag != 0]
assert torch.unique(live).numel() == live.numel(), "ties in diag(H): argsort order undefined"

Hn = H.numpy()
assert np.array_equal(Hn, Hn.T)
tensors = {"W": W, "H.upper": Hn[np.triu_indices(COLS)].copy()}
meta = {"torch": torch.__version__, "numpy": np.__version__, "bits": str(BITS), "percdamp": "0.01"}
for name, (gs, sym, actorder, static_groups, blocksize) in CASES.items():
    layer = nn.Linear(COLS, ROWS, bias=False)
    layer.weight.data = torch.from_numpy(W.copy())
    g = GPTQ(layer)
    g.H = H.clone()
    g.nsamples = NSEQ
    g.quantizer.configure(BITS, perchannel=True, sym=sym, mse=False)
    scale, zero, g_idx, perm, Hinv, Q = g.fasterquant(
        blocksize=blocksize, percdamp=0.01, group_size=gs, actorder=actorder, static_groups=static_groups
    )
    scale = scale.numpy()
    zero = zero.numpy()
    gi = g_idx.numpy().astype(np.int64)
    Q = Q.numpy()
    s_col = scale[:, gi]
    z_col = zero[:, gi]
    assert np.all(scale.astype(np.float16).astype(np.float32) == scale)
    diff = Q / s_col
    assert np.all(diff == np.round(diff)), name
    codes = diff + z_col
    assert codes.min() >= 0 and codes.max() <= 2**BITS - 1, name
    assert np.array_equal((s_col * (codes - z_col)).astype(np.float32), Q), name
    tensors[f"{name}.codes"] = codes.astype(np.uint8)
    tensors[f"{name}.scales"] = np.ascontiguousarray(scale, dtype=np.float32)
    tensors[f"{name}.zeros"] = np.ascontiguousarray(zero).astype(np.uint8)
    tensors[f"{name}.g_idx"] = g_idx.numpy().astype(np.int32)
    tensors[f"{name}.perm"] = perm.numpy().astype(np.int32)
    factor = f"Hinv_{'act' if actorder else 'none'}.upper"
    U = Hinv.numpy()
    assert np.array_equal(np.triu(U), U)
    if factor in tensors:
        assert np.array_equal(tensors[factor], U[np.triu_indices(COLS)]), name
    tensors[factor] = U[np.triu_indices(COLS)].copy()
    meta[name] = (
        f"bits={BITS} group_size={gs} sym={sym} act_order={actorder} "
        f"static_groups={static_groups} block_size={blocksize}"
    )
    err = float(np.abs(W - Q).mean())
    print(f"{name}: mean |W - Q| = {err:.6g}")

save_file(tensors, OUT, metadata=meta)
print(f"wrote {OUT}")
