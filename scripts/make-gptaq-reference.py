"""Reference GPTAQ codes for shrink's tests (run once; output committed).

Writes crates/shrink-methods/tests/data/gptaq_reference.safetensors, which
crates/shrink-methods/tests/gptaq_reference.rs checks `PreparedHessian::with_asymmetry` and
`shrink_methods::gptq::quantize` with GPTAQ's term against.

GPTAQ (Li, Yin, Panda, ICML 2025, "GPTAQ: Efficient Finetuning-Free Quantization for
Asymmetric Calibration") quantizes a layer whose inputs come from the already-quantized model
(x~) so that its output fits the float model's (whose inputs are x): besides GPTQ's Hessian
H = 2/n * sum x~ x~^T it accumulates dXXT = 2/n * sum (x - x~) x~^T and, with U the upper
Cholesky factor of the dampened H^-1, P = alpha * triu_1(dXXT U^T) U; each column's step then
moves the rest of its row by -e * U[j, j+1:] + w_j * P[j, j+1:].

The algorithm below is the reference's own code, copied rather than imported (the GPTAQ
authors' repo is no package, and its fake_quant imports QuaRot's CUDA Hadamard kernels):

  * `GPTAQ.add_batch` and `GPTAQ.fasterquant`: Intelligent-Computing-Lab-Yale/GPTAQ
    fake_quant/gptaq_utils.py at commit 883afc64f40ac061a59ef8cbe5bd794c01377e37;
  * `Quantizer` and `quantize`: IST-DASLab/gptq quant.py at commit
    2d65066eeb06a5c9ff5184d8cebdf33662c67faf, with the f16 edit of
    scripts/make-gptq-reference.py (below). GPTAQ's fake_quant uses QuaRot's
    `quant_utils.WeightQuantizer` ("From GPTQ Repo"; spcl/QuaRot fake_quant/quant_utils.py at
    f06f680b72824e80aac2034690d232dc2bf13fed), whose asymmetric grid is quant.py's:
    scale = (xmax - xmin) / maxq with min/max taken with 0, zero = round(-xmin / scale),
    q = clamp(round(x / scale) + zero, 0, maxq), dequantized scale * (q - zero); it only adds
    clamp(min=1e-5) to the range, which no group here comes near. Its symmetric grid
    (zero 0, maxq 2^(bits-1) - 1) is not GPTQ's (nor shrink's), so every case is asymmetric.

Edits to the copied code, all marked `# EDIT`:
  * `torch.cuda.synchronize()` and the NaN check's logging are dropped;
  * `find_params` is called with `weight=True` (QuaRot's `find_params(x)` always takes x as a
    weight, quant.py's only with `weight=True`);
  * `fasterquant` also keeps AutoGPTQ's bookkeeping of the groups' scales and zero points
    (appended where a group's parameters are found, as AutoGPTQ's auto_gptq/quantization/
    gptq.py at 9f7d37072917ab3a7545835f23e808294a542153 does) and `g_idx`, and returns them
    with the processing order `perm`, its inverse-Hessian factor `Hinv`, `P` and the
    dequantized `Q`;
  * `Quantizer.find_params` rounds the scale to float16 before the zero point is computed from
    it, as scripts/make-gptq-reference.py's edit does: the HF `gptq` layout stores float16
    scales and shrink quantizes on the grid it stores.
Everything else (the Hessian and dXXT accumulation with the reference's running rescaling,
dead columns, act-order, dampening, the Cholesky inverse, P, the in-block and lazy block
updates) is the reference's, in float32 on the CPU. Note that the lazy update's `W1` is the
block as the in-block updates left it: each column j of W1 ends as w_j - ((w_j - q_j) / d) * d
(P's diagonal is 0), the rounded value q_j up to the last bits of that product.

The fixed layer: W [64, 192] (out x in) float32, seeded (192 input features rather than
make-gptq-reference.py's 256, so that D, the two factors and three P matrices stay under
1 MB). Float-model inputs X: 8 sequences x 64 tokens x 192 features, correlated as in
make-gptq-reference.py (a random mixing of 32 latent factors plus noise), 8 outlier
features x 8 and one dead feature (column 5). The quantized model's inputs X~ = X +
0.1 * X M + 0.02 * noise, M a seeded random mixing (192 x 192, entries N(0, 1/192)): the drift
a quantized previous layer leaves, correlated with X; column 5 is 0 in both. They are fed to
`add_batch` one sequence at a time as the reference's hooks do (`fp_inp` holding each
sequence's X^T, as its FPInputsCache stores them), so H = 2/8 * sum_s X~_s^T X~_s and
dXXT = 2/8 * sum_s (X_s - X~_s)^T X~_s in float32 (n = 8 sequences, not 512 tokens: P does not
depend on a scale common to H and dXXT).

Cases (percdamp 0.01, blocksize 128 unless named; asymmetric):

  g64_none       4 bits, groups of 64 in column order (act-order off), alpha 0.25
  g64_none_a05   the same with alpha 0.5
  g64_none_a0    the same with alpha 0: P = 0, GPTQ's loop (the reference's GPTAQ loop with
                 P = 0 computes exactly what GPTQ's does)
  g64_none_b96   blocksize 96 (groups straddle the blocks), alpha 0.25
  g64_group      act-order, groups in processing order (g_idx), alpha 0.25
  g32_static     act-order, static_groups, groups of 32, alpha 0.25
  b3_g64_none    3 bits, groups of 64, act-order off, alpha 0.25

Saved tensors:
  W        f32 [64, 192]      the weight
  H.upper  f32 [192*193/2]    the Hessian (of X~) as add_batch leaves it (dead diagonal still
                              0), its upper triangle row by row (it is exactly symmetric)
  D        f32 [192, 192]     dXXT as add_batch leaves it, row-major (not symmetric; its dead
                              row and column are 0)
  Hinv_none.upper, Hinv_act.upper  f32 [192*193/2]
                              the reference's own upper Cholesky factor of the dampened H^-1
                              (float32 torch.linalg), in column order and in act-order,
                              upper triangle row by row (the same for every case of that order)
  P_none_a0.25.upper, P_none_a0.5.upper, P_act_a0.25.upper  f32 [192*193/2]
                              the reference's P (in processing order), upper triangle row by
                              row (its diagonal is 0; the script checks P is strictly upper
                              and the same for every case of that order and alpha)
  {case}.codes  u8 [64, 192]  the integer codes, in the original column order (recovered from
                              Q as Q / scale[g_idx] + zero[g_idx], exact: the script asserts
                              that Q is exactly scale * (codes - zero))
  {case}.scales f32 [64, ngroups]   float16 values
  {case}.zeros  u8  [64, ngroups]
  {case}.g_idx  i32 [192]
  {case}.perm   i32 [192]     processing order (identity without act-order)
Metadata: torch and numpy versions, and each case's bits/group_size/act_order/static_groups/
block_size/alpha.

Usage (the scratch venv of make-gptq-reference.py; the default torch wheel works on the CPU):
  python3 -m venv /tmp/gptq-ref && /tmp/gptq-ref/bin/pip install torch numpy safetensors
  /tmp/gptq-ref/bin/python scripts/make-gptaq-reference.py [OUT]
Last run with torch 2.15.0 (the default PyPI wheel, on the CPU), numpy 2.4.6 and safetensors
0.8.0 (torch's and numpy's versions are also in the file's metadata). The tensors are the same
on every run; the header's metadata order may vary.
"""
import math
import sys

import numpy as np
import torch
import torch.nn as nn
from safetensors.numpy import save_file

OUT = sys.argv[1] if len(sys.argv) > 1 else "crates/shrink-methods/tests/data/gptaq_reference.safetensors"
ROWS, COLS, NSEQ, SEQLEN = 64, 192, 8, 64
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
# fake_quant/gptaq_utils.py (GPTAQ's):
# ---------------------------------------------------------------------------------------------


class GPTAQ:

    def __init__(self, layer):
        self.layer = layer
        self.dev = self.layer.weight.device
        W = layer.weight.data.clone()
        self.rows = W.shape[0]
        self.columns = W.shape[1]
        self.H = torch.zeros((self.columns, self.columns), device=self.dev)
        self.dXXT = torch.zeros((self.columns, self.columns), device=self.dev)
        self.nsamples = 0
        self.fp_inp = []

    def add_batch(self, inp, out):

        if len(inp.shape) == 2:
            inp = inp.unsqueeze(0)
        tmp = inp.shape[0]
        if len(inp.shape) == 3:
            inp = inp.reshape((-1, inp.shape[-1]))

        inp = inp.t()

        self.H *= self.nsamples / (self.nsamples + tmp)
        self.dXXT *= self.nsamples / (self.nsamples + tmp)
        self.nsamples += tmp
        inp = math.sqrt(2 / self.nsamples) * inp.float()
        self.H += inp.matmul(inp.t())
        dX = self.fp_inp[0].float() * math.sqrt(2 / self.nsamples) - inp
        self.dXXT += dX.matmul(inp.t())

        del self.fp_inp[0]

    def fasterquant(
            self, blocksize=128, percdamp=.01, groupsize=-1, actorder=False, static_groups=False, alpha=0.25
    ):
        W = self.layer.weight.data.clone()
        W = W.float()

        if not self.quantizer.ready():
            self.quantizer.find_params(W, weight=True)  # EDIT: weight=True

        H = self.H
        del self.H
        dead = torch.diag(H) == 0
        H[dead, dead] = 1
        W[:, dead] = 0
        self.dXXT[:, dead] = 0

        scale = []  # EDIT: AutoGPTQ's bookkeeping of the groups' parameters
        zero = []  # EDIT

        if static_groups:
            import copy
            groups = []
            for i in range(0, self.columns, groupsize):
                quantizer = copy.deepcopy(self.quantizer)
                quantizer.find_params(W[:, i:(i + groupsize)], weight=True)  # EDIT: weight=True
                scale.append(quantizer.scale)  # EDIT
                zero.append(quantizer.zero)  # EDIT
                groups.append(quantizer)

        perm = torch.arange(self.columns)  # EDIT: returned
        if actorder:
            perm = torch.argsort(torch.diag(H), descending=True)
            W = W[:, perm]
            H = H[perm][:, perm]
            self.dXXT = self.dXXT[perm][:, perm]
            invperm = torch.argsort(perm)

        Losses = torch.zeros_like(W)
        Q = torch.zeros_like(W)

        damp = percdamp * torch.mean(torch.diag(H))
        diag = torch.arange(self.columns, device=self.dev)
        H[diag, diag] += damp
        Hinv = torch.linalg.cholesky(H)
        Hinv = torch.cholesky_inverse(Hinv)
        Hinv = torch.linalg.cholesky(Hinv, upper=True)

        # scale it by alpha due to collection of dXXT axnd H
        P = alpha * ((self.dXXT @ Hinv.T).triu_(diagonal=1)) @ Hinv
        del self.dXXT

        for i1 in range(0, self.columns, blocksize):
            i2 = min(i1 + blocksize, self.columns)
            count = i2 - i1

            W1 = W[:, i1:i2].clone()
            Q1 = torch.zeros_like(W1)
            Err1 = torch.zeros_like(W1)
            Losses1 = torch.zeros_like(W1)
            Hinv1 = Hinv[i1:i2, i1:i2]
            P1 = P[i1:i2, i1:i2]

            for i in range(count):
                w = W1[:, i]
                d = Hinv1[i, i]

                if groupsize != -1:
                    if not static_groups:
                        if (i1 + i) % groupsize == 0:
                            self.quantizer.find_params(W[:, (i1 + i):(i1 + i + groupsize)], weight=True)  # EDIT
                            scale.append(self.quantizer.scale)  # EDIT
                            zero.append(self.quantizer.zero)  # EDIT
                    else:
                        idx = i1 + i
                        if actorder:
                            idx = perm[idx]
                        self.quantizer = groups[idx // groupsize]

                q = self.quantizer.quantize(w.unsqueeze(1)).flatten()
                Q1[:, i] = q
                Losses1[:, i] = (w - q) ** 2 / d ** 2

                err1 = (w - q) / d
                W1[:, i:] -= err1.unsqueeze(1).matmul(Hinv1[i, i:].unsqueeze(0)) - w.unsqueeze(1).matmul(P1[i, i:].unsqueeze(0))
                Err1[:, i] = err1

            Q[:, i1:i2] = Q1
            Losses[:, i1:i2] = Losses1 / 2

            W[:, i2:] -= Err1.matmul(Hinv[i1:i2, i2:]) - W1.matmul(P[i1:i2, i2:])

        # EDIT: no torch.cuda.synchronize().

        # EDIT: AutoGPTQ's g_idx.
        if static_groups and actorder:
            g_idx = [perm[i] // groupsize for i in range(self.columns)]
        else:
            g_idx = [i // groupsize for i in range(self.columns)]
        g_idx = torch.tensor(g_idx, dtype=torch.int32)

        if actorder:
            Q = Q[:, invperm]
            g_idx = g_idx[invperm]  # EDIT

        self.layer.weight.data = Q.reshape(self.layer.weight.shape).to(self.layer.weight.data.dtype)
        if torch.any(torch.isnan(self.layer.weight.data)):
            # EDIT: no logging / pprint.
            raise ValueError('NaN in weights')
        # EDIT: the groups' parameters, g_idx, perm, Hinv, P and Q returned.
        return torch.cat(scale, dim=1), torch.cat(zero, dim=1), g_idx, perm, Hinv, P, Q


# ---------------------------------------------------------------------------------------------
# The fixed layer and calibration batch, and the cases.
# ---------------------------------------------------------------------------------------------

rng = np.random.default_rng(20250613)
W = (0.05 * rng.standard_normal((ROWS, COLS))).astype(np.float32)
mix = rng.standard_normal((32, COLS))
X = rng.standard_normal((NSEQ * SEQLEN, 32)) @ mix / math.sqrt(32) + 0.3 * rng.standard_normal((NSEQ * SEQLEN, COLS))
X[:, rng.choice(COLS, 8, replace=False)] *= 8.0
X[:, DEAD] = 0.0
M = rng.standard_normal((COLS, COLS)) / math.sqrt(COLS)
XQ = X + 0.1 * X @ M + 0.02 * rng.standard_normal((NSEQ * SEQLEN, COLS))
XQ[:, DEAD] = 0.0
X = X.astype(np.float32).reshape(NSEQ, SEQLEN, COLS)
XQ = XQ.astype(np.float32).reshape(NSEQ, SEQLEN, COLS)

CASES = {
    # name: (bits, group_size, actorder, static_groups, blocksize, alpha)
    "g64_none": (4, 64, False, False, 128, 0.25),
    "g64_none_a05": (4, 64, False, False, 128, 0.5),
    "g64_none_a0": (4, 64, False, False, 128, 0.0),
    "g64_none_b96": (4, 64, False, False, 96, 0.25),
    "g64_group": (4, 64, True, False, 128, 0.25),
    "g32_static": (4, 32, True, True, 128, 0.25),
    "b3_g64_none": (3, 64, False, False, 128, 0.25),
}


def statistics():
    layer = nn.Linear(COLS, ROWS, bias=False)
    g = GPTAQ(layer)
    # The float model's inputs to this layer, as FPInputsCache keeps them: one [cols, tokens]
    # per sequence.
    g.fp_inp = [torch.from_numpy(X[s]).t() for s in range(NSEQ)]
    for s in range(NSEQ):
        g.add_batch(torch.from_numpy(XQ[s : s + 1]), None)
    assert g.nsamples == NSEQ and not g.fp_inp
    return g.H, g.dXXT


def upper(m, name):
    assert np.array_equal(np.triu(m), m), name
    return m[np.triu_indices(COLS)].copy()


H, D = statistics()
diag = torch.diag(H)
live = diag[diag != 0]
assert torch.unique(live).numel() == live.numel(), "ties in diag(H): argsort order undefined"
assert torch.nonzero(diag == 0).flatten().tolist() == [DEAD]

Hn = H.numpy()
Dn = D.numpy()
assert np.array_equal(Hn, Hn.T)
assert not np.any(Dn[DEAD]) and not np.any(Dn[:, DEAD])
tensors = {"W": W, "H.upper": upper(np.triu(Hn), "H"), "D": Dn.copy()}
meta = {"torch": torch.__version__, "numpy": np.__version__, "percdamp": "0.01"}
codes_of = {}
for name, (bits, gs, actorder, static_groups, blocksize, alpha) in CASES.items():
    layer = nn.Linear(COLS, ROWS, bias=False)
    layer.weight.data = torch.from_numpy(W.copy())
    g = GPTAQ(layer)
    g.H = H.clone()
    g.dXXT = D.clone()
    g.nsamples = NSEQ
    g.quantizer = Quantizer()
    g.quantizer.configure(bits, perchannel=True, sym=False, mse=False)
    scale, zero, g_idx, perm, Hinv, P, Q = g.fasterquant(
        blocksize=blocksize, percdamp=0.01, groupsize=gs, actorder=actorder, static_groups=static_groups, alpha=alpha
    )
    scale = scale.numpy()
    zero = zero.numpy()
    gi = g_idx.numpy().astype(np.int64)
    Q = Q.numpy()
    assert scale.shape == (ROWS, COLS // gs), name
    s_col = scale[:, gi]
    z_col = zero[:, gi]
    assert np.all(scale.astype(np.float16).astype(np.float32) == scale)
    diff = Q / s_col
    assert np.all(diff == np.round(diff)), name
    codes = diff + z_col
    assert codes.min() >= 0 and codes.max() <= 2**bits - 1, name
    assert np.array_equal((s_col * (codes - z_col)).astype(np.float32), Q), name
    codes_of[name] = codes.astype(np.uint8)
    tensors[f"{name}.codes"] = codes.astype(np.uint8)
    tensors[f"{name}.scales"] = np.ascontiguousarray(scale, dtype=np.float32)
    tensors[f"{name}.zeros"] = np.ascontiguousarray(zero).astype(np.uint8)
    tensors[f"{name}.g_idx"] = g_idx.numpy().astype(np.int32)
    tensors[f"{name}.perm"] = perm.numpy().astype(np.int32)
    order = "act" if actorder else "none"
    for key, m in ((f"Hinv_{order}.upper", Hinv.numpy()), (f"P_{order}_a{alpha}.upper", P.numpy())):
        if alpha == 0.0 and key.startswith("P_"):
            assert not np.any(m), name  # P = 0: nothing to store
            continue
        t = upper(m, key)
        if key.startswith("P_"):
            assert not np.any(np.diag(m)), key
        if key in tensors:
            assert np.array_equal(tensors[key], t), (name, key)
        tensors[key] = t
    meta[name] = (
        f"bits={bits} group_size={gs} act_order={actorder} static_groups={static_groups} "
        f"block_size={blocksize} alpha={alpha}"
    )
    # How well the layer on its own (quantized-model) inputs fits the float layer's outputs.
    x = X.reshape(-1, COLS)
    xq = XQ.reshape(-1, COLS)
    e_out = float(np.square(x @ W.T - xq @ Q.T).sum())
    print(f"{name}: mean |W - Q| = {float(np.abs(W - Q).mean()):.6g}, |X W^T - X~ Q^T|^2 = {e_out:.6g}")

for name in ("g64_none", "g64_none_a05"):
    n = int(np.sum(codes_of[name] != codes_of["g64_none_a0"]))
    print(f"{name}: {n} of {ROWS * COLS} codes differ from alpha 0 (GPTQ)")
# P is linear in alpha, and 0.25 -> 0.5 is a power of two: the reference's P doubles exactly.
assert np.array_equal(tensors["P_none_a0.5.upper"], 2 * tensors["P_none_a0.25.upper"])

save_file(tensors, OUT, metadata=meta)
print(f"wrote {OUT}")
