"""Reference GPTQ and AWQ checkpoint tensors for shrink's tests (run once; output committed).

Writes crates/shrink-formats/tests/data/gptq_awq_reference.safetensors: for a [64, 128] weight
(out = 64, in = 128) with groups of 32 input columns, the tensors that the public packers
write, computed here with their own code ported to numpy (sources cited at each function):

  gptq{B}_{case}.*  for bits B in 2, 3, 4, 8 and case
      triv: g_idx = c // 32, zero points in [1, 2^B - 1];
      act:  act-order g_idx (GPTQ's `g_idx[perm[i]] = i // G` for a random permutation),
            zero points in [0, 2^B - 1], several of them 0;
    inputs   codes uint8 [out, in], zeros uint8 [out, ngroups], scales_in float32
             [out, ngroups] (float16 values), g_idx int32 [in];
    outputs  qweight int32 [in*B/32, out], qzeros_v1 / qzeros_v2 int32 [ngroups, out*B/32],
             scales float16 [ngroups, out], dequant float32 [out, in].
  awq4.*  (AutoAWQ WQLinear_GEMM, 4-bit, zero points in [0, 15])
    inputs   codes, zeros, scales_in as above;
    outputs  qweight int32 [in, out/8], qzeros int32 [ngroups, out/8], scales float16
             [ngroups, out], dequant float32 [out, in].

The packers' `intweight` (the rounded codes) is given directly: this tests the layouts, not the
quantizers. The dequantized weights are computed in float32 (the public code computes
`scales * (w - zeros)` in float16): (code - zero) has at most 9 bits and a float16 scale 11,
so the float32 product is exact, which is what shrink's dequantizers return.

Needs numpy and safetensors (tested with numpy 2.4.6, safetensors 0.8.0).
"""
import sys

import numpy as np
from safetensors.numpy import save_file

OUT, IN, G = 64, 128, 32
NG = IN // G
rng = np.random.default_rng(20250611)


# ---------------------------------------------------------------------------------------------
# GPTQ
# ---------------------------------------------------------------------------------------------


def autogptq_pack_qweight(intweight, bits):
    """AutoGPTQ QuantLinear.pack, the qweight loop (auto_gptq/nn_modules/qlinear/
    qlinear_cuda_old.py). intweight: uint32 [in, out] (the code of input i, output o)."""
    i = 0
    row = 0
    qweight = np.zeros((intweight.shape[0] // 32 * bits, intweight.shape[1]), dtype=np.uint32)
    while row < qweight.shape[0]:
        if bits in [2, 4, 8]:
            for j in range(i, i + (32 // bits)):
                qweight[row] |= intweight[j] << (bits * (j - i))
            i += 32 // bits
            row += 1
        elif bits == 3:
            for j in range(i, i + 10):
                qweight[row] |= intweight[j] << (3 * (j - i))
            i += 10
            qweight[row] |= intweight[i] << 30
            row += 1
            qweight[row] |= (intweight[i] >> 2) & 1
            i += 1
            for j in range(i, i + 10):
                qweight[row] |= intweight[j] << (3 * (j - i) + 1)
            i += 10
            qweight[row] |= intweight[i] << 31
            row += 1
            qweight[row] |= (intweight[i] >> 1) & 0x3
            i += 1
            for j in range(i, i + 10):
                qweight[row] |= intweight[j] << (3 * (j - i) + 2)
            i += 10
            row += 1
        else:
            raise NotImplementedError("Only 2,3,4,8 bits are supported.")
    return qweight.astype(np.int32)


def autogptq_pack_qzeros(zeros, bits):
    """AutoGPTQ QuantLinear.pack, the qzeros loop (same file). zeros: uint32 [ngroups, out],
    already `zeros -= 1` for v1 (AutoGPTQ does that just before); GPTQModel's v2 pack is the
    same loop without it."""
    qzeros = np.zeros((zeros.shape[0], zeros.shape[1] // 32 * bits), dtype=np.uint32)
    i = 0
    col = 0
    while col < qzeros.shape[1]:
        if bits in [2, 4, 8]:
            for j in range(i, i + (32 // bits)):
                qzeros[:, col] |= zeros[:, j] << (bits * (j - i))
            i += 32 // bits
            col += 1
        elif bits == 3:
            for j in range(i, i + 10):
                qzeros[:, col] |= zeros[:, j] << (3 * (j - i))
            i += 10
            qzeros[:, col] |= zeros[:, i] << 30
            col += 1
            qzeros[:, col] |= (zeros[:, i] >> 2) & 1
            i += 1
            for j in range(i, i + 10):
                qzeros[:, col] |= zeros[:, j] << (3 * (j - i) + 1)
            i += 10
            qzeros[:, col] |= zeros[:, i] << 31
            col += 1
            qzeros[:, col] |= (zeros[:, i] >> 1) & 0x3
            i += 1
            for j in range(i, i + 10):
                qzeros[:, col] |= zeros[:, j] << (3 * (j - i) + 2)
            i += 10
            col += 1
        else:
            raise NotImplementedError("Only 2,3,4,8 bits are supported.")
    return qzeros.astype(np.int32)


WF3 = np.array(
    [
        [0, 3, 6, 9, 12, 15, 18, 21, 24, 27, 30, 0],
        [0, 1, 4, 7, 10, 13, 16, 19, 22, 25, 28, 31],
        [0, 2, 5, 8, 11, 14, 17, 20, 23, 26, 29, 0],
    ],
    dtype=np.int32,
).reshape(1, 3, 12)


def autogptq_unpack_zeros(qzeros, bits):
    """The zero-point half of QuantLinear.forward's torch fallback (same file), without its
    `zeros + 1`: [ngroups, out*bits/32] int32 -> [ngroups, out] fields."""
    if bits in [2, 4, 8]:
        wf = np.arange(0, 32, bits, dtype=np.int32)[None, :]
        zeros = np.right_shift(qzeros[:, :, None], wf[None, :, :])
        zeros = zeros & ((2**bits) - 1)
        return zeros.reshape(zeros.shape[0], -1)
    zeros = np.broadcast_to(
        qzeros.reshape(qzeros.shape[0], qzeros.shape[1] // 3, 3, 1), (qzeros.shape[0], qzeros.shape[1] // 3, 3, 12)
    )
    zeros = (zeros >> WF3[None]).copy()
    zeros[:, :, 0, 10] = (zeros[:, :, 0, 10] & 0x3) | ((zeros[:, :, 1, 0] << 2) & 0x4)
    zeros[:, :, 1, 11] = (zeros[:, :, 1, 11] & 0x1) | ((zeros[:, :, 2, 0] << 1) & 0x6)
    zeros = zeros & 0x7
    zeros = np.concatenate([zeros[:, :, 0, :11], zeros[:, :, 1, 1:12], zeros[:, :, 2, 1:11]], axis=2)
    return zeros.reshape(zeros.shape[0], -1)


def autogptq_unpack_weight(qweight, bits):
    """The weight half of QuantLinear.forward's torch fallback (same file):
    [in*bits/32, out] int32 -> [in, out] codes."""
    if bits in [2, 4, 8]:
        wf = np.arange(0, 32, bits, dtype=np.int32)[None, :]
        weight = np.right_shift(qweight[:, None, :], wf[:, :, None]) & ((2**bits) - 1)
        return weight.reshape(-1, weight.shape[2])
    weight = np.broadcast_to(
        qweight.reshape(qweight.shape[0] // 3, 3, 1, qweight.shape[1]),
        (qweight.shape[0] // 3, 3, 12, qweight.shape[1]),
    )
    weight = ((weight >> WF3[..., None]) & 0x7).copy()
    weight[:, 0, 10] = (weight[:, 0, 10] & 0x3) | ((weight[:, 1, 0] << 2) & 0x4)
    weight[:, 1, 11] = (weight[:, 1, 11] & 0x1) | ((weight[:, 2, 0] << 1) & 0x6)
    weight = weight & 0x7
    weight = np.concatenate([weight[:, 0, :11], weight[:, 1, 1:12], weight[:, 2, 1:11]], axis=1)
    return weight.reshape(-1, weight.shape[2])


def gptqmodel_v2_to_v1(qzeros_v2, bits):
    """GPTQModel convert_gptq_v2_to_v1_format_module (gptqmodel/utils/model.py): 2/4/8 bits
    subtract a 1 from every field of each int32 word (borrows wrap); 3 bits shift each logical
    field on its own (`_shift_gptq_qzeros(delta=-1)`: unpack, (z - 1) & 7, repack)."""
    if bits == 3:
        z = autogptq_unpack_zeros(qzeros_v2, bits).astype(np.uint32)
        return autogptq_pack_qzeros((z - 1) & 0x7, bits)
    ones = {2: 0b01010101010101010101010101010101, 4: 0b00010001000100010001000100010001,
            8: 0b00000001000000010000000100000001}[bits]
    return (qzeros_v2.view(np.uint32) - np.uint32(ones)).view(np.int32)


def gptqmodel_v1_to_v2(qzeros_v1, bits):
    """GPTQModel convert_gptq_v1_to_v2_format_module (same file): the inverse."""
    if bits == 3:
        z = autogptq_unpack_zeros(qzeros_v1, bits).astype(np.uint32)
        return autogptq_pack_qzeros((z + 1) & 0x7, bits)
    ones = {2: 0b01010101010101010101010101010101, 4: 0b00010001000100010001000100010001,
            8: 0b00000001000000010000000100000001}[bits]
    return (qzeros_v1.view(np.uint32) + np.uint32(ones)).view(np.int32)


def gptq_dequant(qweight, qzeros, scales, g_idx, bits, v1):
    """QuantLinear.forward's torch fallback with act-order (`scales[g_idx] * (weight -
    zeros[g_idx])`, as in AutoGPTQ's later qlinear_cuda_old and GPTQModel's
    `dequantize_weight`), v1 adding 1 to each field, in float32. Returns [out, in]."""
    zeros = autogptq_unpack_zeros(qzeros, bits).astype(np.int32)
    if v1:
        zeros = zeros + 1
    weight = autogptq_unpack_weight(qweight, bits).astype(np.int32)
    g = g_idx.astype(np.int64)
    w = scales.astype(np.float32)[g] * (weight - zeros[g]).astype(np.float32)
    return np.ascontiguousarray(w.T)


def gptq_case(bits, act, tensors):
    maxq = 2**bits - 1
    name = f"gptq{bits}_{'act' if act else 'triv'}"
    codes = rng.integers(0, maxq + 1, size=(OUT, IN), dtype=np.uint8)
    if act:
        zeros = rng.integers(0, maxq + 1, size=(OUT, NG), dtype=np.uint8)
        zeros[rng.integers(0, OUT, size=6), rng.integers(0, NG, size=6)] = 0
        perm = rng.permutation(IN)
        g_idx = np.zeros(IN, dtype=np.int32)
        g_idx[perm] = np.arange(IN) // G  # GPTQ: g_idx = [i // G for i](invperm)
    else:
        zeros = rng.integers(1, maxq + 1, size=(OUT, NG), dtype=np.uint8)
        g_idx = (np.arange(IN) // G).astype(np.int32)
    scales_in = rng.uniform(2e-4, 0.08, size=(OUT, NG)).astype(np.float16)
    scales_in[0, 0] = np.float16(3.0e-5)  # a subnormal float16 scale
    intweight = codes.T.astype(np.uint32)  # AutoGPTQ: intweight.t() -> [in, out]
    qweight = autogptq_pack_qweight(np.ascontiguousarray(intweight), bits)
    zt = np.ascontiguousarray(zeros.T.astype(np.uint32))  # AutoGPTQ: zeros.t() -> [ng, out]
    qzeros_v2 = autogptq_pack_qzeros(zt, bits)
    qzeros_v1 = gptqmodel_v2_to_v1(qzeros_v2, bits)
    if not act:
        # All zero points >= 1: AutoGPTQ's own `zeros -= 1` pack gives the same words.
        assert np.array_equal(qzeros_v1, autogptq_pack_qzeros(zt - 1, bits)), name
    assert np.array_equal(gptqmodel_v1_to_v2(qzeros_v1, bits), qzeros_v2), name
    scales = np.ascontiguousarray(scales_in.T)  # [ng, out]
    deq = gptq_dequant(qweight, qzeros_v2, scales, g_idx, bits, v1=False)
    if not act:
        assert np.array_equal(deq, gptq_dequant(qweight, qzeros_v1, scales, g_idx, bits, v1=True)), name
    assert np.array_equal(autogptq_unpack_weight(qweight, bits).T, codes), name
    tensors.update({
        f"{name}.codes": codes, f"{name}.zeros": zeros,
        f"{name}.scales_in": scales_in.astype(np.float32), f"{name}.g_idx": g_idx,
        f"{name}.qweight": qweight, f"{name}.qzeros_v1": qzeros_v1, f"{name}.qzeros_v2": qzeros_v2,
        f"{name}.scales": scales, f"{name}.dequant": deq,
    })


# ---------------------------------------------------------------------------------------------
# AWQ
# ---------------------------------------------------------------------------------------------

AWQ_ORDER = [0, 2, 4, 6, 1, 3, 5, 7]
AWQ_REVERSE_ORDER = [0, 4, 1, 5, 2, 6, 3, 7]


def autoawq_pack(intweight, zeros, w_bit=4):
    """AutoAWQ WQLinear_GEMM.from_linear, the packing loops (awq/modules/linear/gemm.py).
    intweight [in, out], zeros [ngroups, out]."""
    pack_num = 32 // w_bit
    qweight = np.zeros((intweight.shape[0], intweight.shape[1] // 32 * w_bit), dtype=np.uint32)
    for col in range(intweight.shape[1] // pack_num):
        order_map = [0, 2, 4, 6, 1, 3, 5, 7]
        for i in range(pack_num):
            qweight_col = intweight[:, col * pack_num + order_map[i]]
            qweight[:, col] |= qweight_col << (i * w_bit)
    qzeros = np.zeros((zeros.shape[0], zeros.shape[1] // 32 * w_bit), dtype=np.uint32)
    for col in range(zeros.shape[1] // pack_num):
        order_map = [0, 2, 4, 6, 1, 3, 5, 7]
        for i in range(pack_num):
            qzero_col = zeros[:, col * pack_num + order_map[i]]
            qzeros[:, col] |= qzero_col << (i * w_bit)
    return qweight.view(np.int32), qzeros.view(np.int32)


def autoawq_dequantize_gemm(qweight, qzeros, scales, bits, group_size):
    """AutoAWQ dequantize_gemm with unpack_awq and reverse_awq_order
    (awq/utils/packing_utils.py), in float32. Returns [in, out]."""
    shifts = np.arange(0, 32, bits, dtype=np.int32)
    iweights = np.right_shift(qweight[:, :, None], shifts[None, None, :]).astype(np.int8)
    iweights = iweights.reshape(iweights.shape[0], -1)
    izeros = np.right_shift(qzeros[:, :, None], shifts[None, None, :]).astype(np.int8)
    izeros = izeros.reshape(izeros.shape[0], -1)
    reverse_order_tensor = np.arange(izeros.shape[-1], dtype=np.int32)
    reverse_order_tensor = reverse_order_tensor.reshape(-1, 32 // bits)
    reverse_order_tensor = reverse_order_tensor[:, AWQ_REVERSE_ORDER]
    reverse_order_tensor = reverse_order_tensor.reshape(-1)
    izeros = izeros[:, reverse_order_tensor]
    iweights = iweights[:, reverse_order_tensor]
    iweights = np.bitwise_and(iweights, (2**bits) - 1)
    izeros = np.bitwise_and(izeros, (2**bits) - 1)
    scales = np.repeat(scales.astype(np.float32), group_size, axis=0)
    izeros = np.repeat(izeros, group_size, axis=0)
    return (iweights.astype(np.int32) - izeros.astype(np.int32)).astype(np.float32) * scales


def awq_case(tensors):
    codes = rng.integers(0, 16, size=(OUT, IN), dtype=np.uint8)
    zeros = rng.integers(0, 16, size=(OUT, NG), dtype=np.uint8)
    zeros[3, 1] = 0
    scales_in = rng.uniform(2e-4, 0.08, size=(OUT, NG)).astype(np.float16)
    intweight = np.ascontiguousarray(codes.T.astype(np.uint32))
    zt = np.ascontiguousarray(zeros.T.astype(np.uint32))  # AutoAWQ: zeros.t() -> [ng, out]
    qweight, qzeros = autoawq_pack(intweight, zt)
    scales = np.ascontiguousarray(scales_in.T)
    deq = np.ascontiguousarray(autoawq_dequantize_gemm(qweight, qzeros, scales, 4, G).T)
    tensors.update({
        "awq4.codes": codes, "awq4.zeros": zeros, "awq4.scales_in": scales_in.astype(np.float32),
        "awq4.qweight": qweight, "awq4.qzeros": qzeros, "awq4.scales": scales, "awq4.dequant": deq,
    })


def main():
    tensors = {}
    for bits in [2, 3, 4, 8]:
        for act in [False, True]:
            gptq_case(bits, act, tensors)
    awq_case(tensors)
    out = sys.argv[1] if len(sys.argv) > 1 else "crates/shrink-formats/tests/data/gptq_awq_reference.safetensors"
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, out)
    print("wrote", out, len(tensors), "tensors", "numpy", np.__version__)


if __name__ == "__main__":
    main()
