#!/usr/bin/env python3
"""Check a quantized Hugging Face directory written by shrink with the ecosystem's own definitions.

    check-safetensors.py QUANT_DIR [--reference DEQ_DIR] [--original F32_DIR --max-rel-rmse X]

QUANT_DIR holds config.json (with `quantization_config`) and model.safetensors (or shards with
model.safetensors.index.json). Its tensors are read with the `safetensors` package and every
quantized linear is dequantized by the small numpy dequantizers below, written from each format's
public definition (sources cited at each one), not from shrink's code:

  gptq                AutoGPTQ / GPTQModel (`checkpoint_format` gptq = v1 zero points, or gptq_v2)
  awq                 AutoAWQ WQLinear_GEMM (`version: gemm`)
  bitsandbytes        4-bit NF4 / FP4 (optionally double quant) and 8-bit LLM.int8
  compressed-tensors  pack-quantized, naive-quantized, int-quantized (integer weights)

Checks:
  * config.json's quantization_config has the keys and values the ecosystem's loader needs
    (transformers' GPTQConfig / AwqConfig / BitsAndBytesConfig, compressed-tensors'
    QuantizationConfig), and the side files (gptq's quantize_config.json, AutoAWQ's
    quant_config.json) agree with it;
  * every tensor of a quantized module is present with the right dtype and shape, and no tensor is
    left unaccounted for;
  * --reference DEQ_DIR (a float32 directory, e.g. `shrink export QUANT_DIR --to hf --type f32`):
    each dequantized weight equals DEQ_DIR's to within --tol (max |diff| / max |ref|), and every
    other tensor equals DEQ_DIR's exactly; DEQ_DIR holds no other tensor;
  * --original F32_DIR: the relative RMSE ||W_deq - W|| / ||W|| of each quantized weight against the
    original float weight stays below --max-rel-rmse (AWQ: after the best per-row and per-column
    rescale, since AWQ folds its activation scales into the weights).

Prints one summary line per format and exits 1 with the list of failures on any. Needs only
numpy and safetensors from PyPI.
"""
import argparse
import json
import math
import os
import re
import sys

import numpy as np
from safetensors import safe_open


class CheckError(Exception):
    pass


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------


class Tensors:
    """The tensors of a directory (model.safetensors, or the shards of its index), read lazily."""

    def __init__(self, directory):
        self.dir = directory
        index = os.path.join(directory, "model.safetensors.index.json")
        single = os.path.join(directory, "model.safetensors")
        if os.path.exists(single):
            files = ["model.safetensors"]
        elif os.path.exists(index):
            with open(index) as f:
                files = sorted(set(json.load(f)["weight_map"].values()))
        else:
            raise CheckError(f"{directory}: no model.safetensors nor model.safetensors.index.json")
        self.where = {}
        self.path = {}
        self.headers = {}
        for name in files:
            path = os.path.join(directory, name)
            h = safe_open(path, framework="np")
            for k in h.keys():
                if k in self.where:
                    raise CheckError(f"{directory}: tensor {k} stored twice")
                self.where[k] = h
                self.path[k] = path

    def keys(self):
        return self.where.keys()

    def __contains__(self, k):
        return k in self.where

    def dtype(self, k):
        return self.where[k].get_slice(k).get_dtype()

    def shape(self, k):
        return list(self.where[k].get_slice(k).get_shape())

    def get(self, k):
        if self.dtype(k) == "BF16":  # numpy has no bfloat16: read its bits, as float32
            return to_f32(self.raw(k, np.uint16))
        return self.where[k].get_tensor(k)

    def raw(self, k, dtype):
        """A tensor's bytes as `dtype`, from the file's header (u64 length, JSON) and data."""
        path = self.path[k]
        if path not in self.headers:
            with open(path, "rb") as f:
                n = int.from_bytes(f.read(8), "little")
                self.headers[path] = (8 + n, json.loads(f.read(n)))
        base, header = self.headers[path]
        begin, end = header[k]["data_offsets"]
        dt = np.dtype(dtype).newbyteorder("<")
        a = np.fromfile(path, dtype=dt, count=(end - begin) // dt.itemsize, offset=base + begin)
        return a.astype(dtype).reshape(header[k]["shape"])


def load_json(path):
    with open(path) as f:
        return json.load(f)


def to_f32(a):
    """A float tensor as float32 (exactly, from f16, f32, or bfloat16 given as its uint16 bits)."""
    if a.dtype == np.float32:
        return a
    if a.dtype == np.uint16:  # bfloat16 bits: the high half of a float32
        return (a.astype(np.uint32) << 16).view(np.float32)
    return a.astype(np.float32)


def round_to(a, dtype):
    """float32 array rounded to `dtype` ("float32", "float16", "bfloat16") and back, as torch's
    `.to(dtype)` does (round to nearest even)."""
    if dtype == "float32":
        return a
    if dtype == "float16":
        return a.astype(np.float16).astype(np.float32)
    if dtype == "bfloat16":
        u = a.astype(np.float32).view(np.uint32).astype(np.uint64)
        u = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
        return (u.astype(np.uint32) << 16).view(np.float32)
    raise CheckError(f"unsupported dtype {dtype}")


# ---------------------------------------------------------------------------------------------
# GPTQ. AutoGPTQ QuantLinear (auto_gptq/nn_modules/qlinear/qlinear_cuda_old.py): `pack` packs
# `intweight` [in, out] along the input dim, 32/bits codes per int32 LSB first (3-bit: 32 codes in
# 3 words, code 10 and 21 straddling words), and qzeros [groups, out] the same way along the
# output dim after `zeros -= 1`; `forward` unpacks with the shifts `wf` and computes
# `scales * (weight - (zeros + 1))` with group `g_idx`. GPTQModel (which transformers uses) turns
# v1 into v2 zero points (gptqmodel/utils/model.py convert_gptq_v1_to_v2_format_module) by adding
# the constant 0x55555555 / 0x11111111 / 0x01010101 to each int32 word for 2 / 4 / 8 bits and, for
# 3 bits, +1 modulo 8 to each decoded field (`_correct_gptq_v1_qzeros`).
# ---------------------------------------------------------------------------------------------


def gptq_unpack_rows(words, bits):
    """Codes packed along axis 0 of an int32 array as AutoGPTQ packs them: [n*bits/32, ...] ->
    [n, ...] uint8."""
    w = np.ascontiguousarray(words).view(np.uint32)
    mask = np.uint32((1 << bits) - 1)
    if bits in (2, 4, 8):
        per = 32 // bits
        codes = np.empty((w.shape[0], per) + w.shape[1:], dtype=np.uint8)
        for j in range(per):
            codes[:, j] = (w >> np.uint32(bits * j)) & mask
        return codes.reshape((w.shape[0] * per,) + w.shape[1:])
    if bits == 3:
        if w.shape[0] % 3:
            raise CheckError("3-bit GPTQ tensor with a packed length not a multiple of 3")
        w = w.reshape((w.shape[0] // 3, 3) + w.shape[1:])
        w0, w1, w2 = w[:, 0], w[:, 1], w[:, 2]
        codes = np.empty((w.shape[0], 32) + w.shape[2:], dtype=np.uint8)
        seven = np.uint32(7)
        for k in range(10):
            codes[:, k] = (w0 >> np.uint32(3 * k)) & seven
            codes[:, 11 + k] = (w1 >> np.uint32(3 * k + 1)) & seven
            codes[:, 22 + k] = (w2 >> np.uint32(3 * k + 2)) & seven
        codes[:, 10] = ((w0 >> np.uint32(30)) & np.uint32(3)) | ((w1 & np.uint32(1)) << np.uint32(2))
        codes[:, 21] = ((w1 >> np.uint32(31)) & np.uint32(1)) | ((w2 & np.uint32(3)) << np.uint32(1))
        return codes.reshape((w.shape[0] * 32,) + w.shape[2:])
    raise CheckError(f"GPTQ bits {bits} not in 2, 3, 4, 8")


def gptq_zeros(qzeros, bits, checkpoint_format):
    """Zero points [groups, out] from qzeros [groups, out*bits/32]. Returns (zeros as the current
    loader GPTQModel reads them, zeros as AutoGPTQ's forward reads them)."""
    fields = gptq_unpack_rows(qzeros.T, bits).T.astype(np.int32)
    if checkpoint_format == "gptq_v2":
        return fields, fields
    autogptq = fields + 1  # no wrap: a stored all-ones field reads as 2^bits
    if bits == 3:
        gptqmodel = (fields + 1) & 7
    else:
        const = {2: 0x55555555, 4: 0x11111111, 8: 0x01010101}[bits]
        words = (qzeros.view(np.uint32).astype(np.uint64) + const) & 0xFFFFFFFF
        gptqmodel = gptq_unpack_rows(words.astype(np.uint32).view(np.int32).T, bits).T.astype(np.int32)
    return gptqmodel, autogptq


# ---------------------------------------------------------------------------------------------
# AWQ. AutoAWQ awq/utils/packing_utils.py: `unpack_awq` shifts each int32 of qweight [in, out/8]
# and qzeros [groups, out/8] by 0, 4, ..., 28; `reverse_awq_order` undoes the packing order
# AWQ_ORDER = [0, 2, 4, 6, 1, 3, 5, 7] (nibble k of a word holds column 8j + AWQ_ORDER[k]);
# `dequantize_gemm` = (iweight - izeros) * scales with groups of group_size input rows.
# ---------------------------------------------------------------------------------------------

AWQ_ORDER = [0, 2, 4, 6, 1, 3, 5, 7]


def awq_unpack(words):
    """[rows, cols/8] int32 -> [rows, cols] uint8 in column order."""
    w = np.ascontiguousarray(words).view(np.uint32)
    out = np.empty((w.shape[0], w.shape[1], 8), dtype=np.uint8)
    for k in range(8):
        out[:, :, AWQ_ORDER[k]] = (w >> np.uint32(4 * k)) & np.uint32(0xF)
    return out.reshape(w.shape[0], w.shape[1] * 8)


# ---------------------------------------------------------------------------------------------
# bitsandbytes. functional.py: QuantState.as_dict(packed=True) / from_dict (`absmax`, `quant_map`,
# `nested_absmax`, `nested_quant_map`, and the JSON `quant_state.bitsandbytes__<type>` with
# quant_type, blocksize, dtype, shape, nested_blocksize, nested_dtype, nested_offset);
# dequantize_4bit: with double quant absmax = dequantize_blockwise(absmax, state2) + offset, i.e.
# nested_quant_map[code] * nested_absmax[i // nested_blocksize] + offset; then
# backends/default/ops.py _dequantize_4bit_compute: element 2i in the HIGH nibble of byte i,
# code[q] * absmax[i // blocksize] in float32, then cast to the state's dtype (the checker keeps the
# float32 value and reports how far that cast rounds). The 4-bit kernel uses its
# own table (get_4bit_type), not the stored quant_map, so that one must equal it.
# 8-bit (_ops.py int8_vectorwise_dequant): A * SCB[:, None] * 7.874015718698502e-3 (1/127).
# ---------------------------------------------------------------------------------------------

NF4 = [-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
       -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
       0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
       0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0]
FP4 = [0, 0.0625, 8.0, 12.0, 4.0, 6.0, 2.0, 3.0, -0.0, -0.0625, -8.0, -12.0, -4.0, -6.0, -2.0, -3.0]


def bnb_4bit_code(quant_type):
    if quant_type == "nf4":
        return np.array(NF4, dtype=np.float32)
    # get_4bit_type: torch.tensor(data) / max(|data|) in float32
    d = np.array(FP4, dtype=np.float32)
    return d / np.abs(d).max()


def bnb_dynamic_map():
    """bitsandbytes create_dynamic_map(signed=True) (7 exponent bits, 8 bits), in float32."""
    data = []
    for i in range(7):
        items = 2 ** i + 1
        b = np.linspace(0.1, 1, items, dtype=np.float32)
        means = (b[:-1] + b[1:]) / np.float32(2.0)
        data += ((10 ** (-6 + i)) * means.astype(np.float64)).tolist()
        data += (-(10 ** (-6 + i)) * means.astype(np.float64)).tolist()
    data += [0.0, 1.0]
    data += [0.0] * (256 - len(data))
    return np.array(sorted(data), dtype=np.float32)


BNB_QS_KEYS = {"absmax", "quant_map", "nested_absmax", "nested_quant_map", "quant_state",
               "quant_type", "blocksize", "dtype", "shape", "nested_blocksize", "nested_dtype",
               "nested_offset"}
BNB_BLOCKSIZES = (32, 64, 128, 256, 512, 1024, 2048, 4096)


# ---------------------------------------------------------------------------------------------
# compressed-tensors. compressors/pack_quantized/helpers.py: pack_to_int32 adds 2^(bits-1) and
# writes element i at bit i*bits of the row's little-endian int32 stream (densely, across word
# boundaries, zero padded); unpack_from_int32 reverses it; the weight is packed along dim 1, the
# asymmetric group/channel zero point [out, groups] along dim 0. pack_quantized/base.py and
# naive_quantized/base.py decompress with quantization/lifecycle/forward_helpers.py _dequantize:
# (x_q - zero_point) * scale, computed in the scale's dtype.
# ---------------------------------------------------------------------------------------------


def ct_unpack(words, bits, n):
    """Rows of a dense LSB-first bit stream: int32 [rows, ceil(n*bits/32)] -> int32 [rows, n]
    unsigned codes."""
    words = np.ascontiguousarray(words)
    rows, nw = words.shape
    if nw != math.ceil(n * bits / 32):
        raise CheckError(f"packed width {nw} != ceil({n}*{bits}/32)")
    if bits in (4, 8):  # byte-aligned: the int32 words' little-endian bytes
        b = words.astype("<i4").view(np.uint8).reshape(rows, nw * 4)
        if bits == 8:
            return b[:, :n].astype(np.int32)
        return np.stack([b & 0xF, b >> 4], axis=2).reshape(rows, nw * 8)[:, :n].astype(np.int32)
    w = words.view(np.uint32).astype(np.uint64)
    # 64-bit windows: word j and word j+1, so a value straddling two words is read whole
    nxt = np.concatenate([w[:, 1:], np.zeros((rows, 1), dtype=np.uint64)], axis=1)
    pair = w | (nxt << np.uint64(32))
    start = np.arange(n, dtype=np.int64) * bits
    word = start // 32
    shift = (start % 32).astype(np.uint64)
    return ((pair[:, word] >> shift) & np.uint64((1 << bits) - 1)).astype(np.int32)


CT_ARGS_FIELDS = {"actorder", "block_structure", "dynamic", "group_size", "num_bits", "observer",
                  "observer_kwargs", "scale_dtype", "strategy", "symmetric", "type", "zp_dtype"}
CT_SCHEME_FIELDS = {"format", "input_activations", "output_activations", "targets", "weights"}
CT_FORMATS = {"pack-quantized", "naive-quantized", "int-quantized"}


# ---------------------------------------------------------------------------------------------
# The checker
# ---------------------------------------------------------------------------------------------


class Checker:
    def __init__(self, args):
        self.args = args
        self.errors = []
        self.notes = []
        self.qdir = args.quant_dir
        cfg_path = os.path.join(self.qdir, "config.json")
        if not os.path.exists(cfg_path):
            raise CheckError(f"{cfg_path} not found")
        self.config = load_json(cfg_path)
        self.qc = self.config.get("quantization_config")
        if not isinstance(self.qc, dict):
            raise CheckError(f"{cfg_path}: no quantization_config object")
        self.t = Tensors(self.qdir)
        self.ref = Tensors(args.reference) if args.reference else None
        self.orig = Tensors(args.original) if args.original else None
        self.used = set()  # tensors of QUANT_DIR accounted for
        self.modules = {}  # name -> (W float32 [out, in], label)
        self.max_abs = 0.0
        self.max_rel = 0.0
        self.rmse = []  # (rel rmse, name)
        self.abandoned = set()  # modules that failed before their dequantization
        self.rounding = {}  # (library, dtype) -> max relative rounding of its own dequantization

    def fail(self, msg):
        self.errors.append(msg)

    def need(self, cond, msg):
        if not cond:
            self.fail(msg)
        return cond

    # tensors -------------------------------------------------------------------------------

    def tensor(self, key, dtype, shape=None, what=None):
        """QUANT_DIR's tensor `key`, checked for dtype (a name or a tuple) and shape."""
        if key not in self.t:
            raise CheckError(f"{key}: missing" + (f" ({what})" if what else ""))
        self.used.add(key)
        dt = self.t.dtype(key)
        ok = dtype if isinstance(dtype, tuple) else (dtype,)
        if dt not in ok:
            raise CheckError(f"{key}: dtype {dt}, expected {'/'.join(ok)}")
        sh = self.t.shape(key)
        if shape is not None and sh != list(shape):
            raise CheckError(f"{key}: shape {sh}, expected {list(shape)}")
        return self.t.get(key)

    def abandon(self, name, err):
        """A module that failed: record why, and count its tensors as seen."""
        self.fail(str(err))
        self.abandoned.add(name)
        self.used.update(k for k in self.t.keys() if k.startswith(name + "."))

    def module_done(self, name, w, label):
        self.modules[name] = (w, label)

    def lib_rounding(self, who, dtype, w):
        """Record how far a library that multiplies in `dtype` (F16 / BF16) rounds the exact
        float32 value `w` (max |diff| / max |w|)."""
        key = (who, dtype)
        seen, worst = self.rounding.get(key, (0, 0.0))
        if seen >= 8:  # a sample is enough to say how large it is
            return
        lib = round_to(w, "float16" if dtype == "F16" else "bfloat16")
        rel = float(np.abs(lib - w).max() / max(float(np.abs(w).max()), 1e-30))
        self.rounding[key] = (seen + 1, max(worst, rel))

    # config checks -------------------------------------------------------------------------

    def require_keys(self, d, keys, where):
        missing = [k for k in keys if k not in d]
        self.need(not missing, f"{where}: missing keys {missing}")

    # ---------------------------------------------------------------------------------------
    # GPTQ
    # ---------------------------------------------------------------------------------------

    def check_gptq(self):
        qc = self.qc
        self.require_keys(qc, ["bits", "group_size", "desc_act", "sym", "quant_method"],
                          "quantization_config")
        bits = qc.get("bits")
        gs = qc.get("group_size")
        if bits not in (2, 3, 4, 8):
            raise CheckError(f"gptq bits {bits} not in 2, 3, 4, 8 (GPTQConfig.post_init)")
        self.need(isinstance(gs, int) and (gs == -1 or gs > 0), f"gptq group_size {gs} invalid")
        dp = qc.get("damp_percent", 0.1)
        self.need(isinstance(dp, (int, float)) and 0 < dp < 1, f"gptq damp_percent {dp} not in (0, 1)")
        fmt = (qc.get("checkpoint_format") or qc.get("format") or "gptq").lower()
        self.need(fmt in ("gptq", "gptq_v2"), f"gptq checkpoint_format {fmt} not gptq / gptq_v2")
        desc_act = bool(qc.get("desc_act"))
        sym = bool(qc.get("sym"))
        side = os.path.join(self.qdir, "quantize_config.json")
        if os.path.exists(side):
            sc = load_json(side)
            for k in ("bits", "group_size", "desc_act", "sym"):
                self.need(sc.get(k) == qc.get(k),
                          f"quantize_config.json {k}={sc.get(k)!r} != quantization_config {qc.get(k)!r}")
            sf = (sc.get("checkpoint_format") or "gptq").lower()
            self.need(sf == fmt, f"quantize_config.json checkpoint_format {sf} != {fmt}")
        else:
            self.notes.append("no quantize_config.json")
        names = sorted(k[: -len(".qweight")] for k in self.t.keys() if k.endswith(".qweight"))
        if not names:
            raise CheckError("gptq: no <module>.qweight tensor")
        zero0 = 0  # zero points read differently by AutoGPTQ's forward and GPTQModel
        act = 0
        for m in names:
            try:
                qw = self.tensor(m + ".qweight", "I32")
                kin = qw.shape[0] * 32 // bits
                if qw.shape[0] * 32 % bits:
                    raise CheckError(f"{m}.qweight: {qw.shape[0]} rows not a multiple of bits/32")
                out = qw.shape[1]
                G = kin if gs == -1 else gs
                ng = math.ceil(kin / G)
                if out * bits % 32:
                    raise CheckError(f"{m}: out {out} * bits not a multiple of 32")
                qz = self.tensor(m + ".qzeros", "I32", [ng, out * bits // 32])
                sc = to_f32(self.tensor(m + ".scales", "F16", [ng, out]))
                gi = self.tensor(m + ".g_idx", "I32", [kin]).astype(np.int64)
                if gi.min() < 0 or gi.max() >= ng:
                    raise CheckError(f"{m}.g_idx: values outside [0, {ng})")
                trivial = np.array_equal(gi, np.arange(kin) // G)
                if not trivial:
                    act += 1
                    self.need(desc_act, f"{m}.g_idx is not c // group_size but desc_act is false "
                                        "(exllama/marlin kernels ignore g_idx then)")
                codes = gptq_unpack_rows(qw, bits).astype(np.int32)  # [in, out]
                z, z_autogptq = gptq_zeros(qz, bits, fmt)  # [groups, out]
                zero0 += int((z != z_autogptq).sum())
                if sym:
                    self.need(np.all(z == 2 ** (bits - 1)),
                              f"{m}: sym is true but zero points are not all 2^(bits-1)")
                w = (codes - z[gi]).astype(np.float32) * sc[gi]  # [in, out]
                self.lib_rounding("AutoGPTQ's torch forward", "F16", w)
                self.module_done(m, np.ascontiguousarray(w.T), "gptq")
            except CheckError as e:
                self.abandon(m, e)
        if zero0:
            self.notes.append(f"{zero0} zero points read one way by GPTQModel (transformers), which "
                              "undoes v1's `zero - 1` word-wise (3-bit: modulo 8), and another by "
                              "AutoGPTQ's and vLLM's gptq kernels, which add 1 to each field: v1 "
                              f"cannot hold a zero point of 0 (they read it as 2^{bits})")
        desc = (f"gptq {fmt} int{bits} group {gs} {'sym' if sym else 'asym'}"
                f"{' desc_act' if desc_act else ''}")
        if act:
            desc += f" ({act} act-order g_idx)"
        return desc

    # ---------------------------------------------------------------------------------------
    # AWQ
    # ---------------------------------------------------------------------------------------

    def check_awq(self):
        qc = self.qc
        self.require_keys(qc, ["bits", "group_size", "zero_point", "quant_method"],
                          "quantization_config")
        version = (qc.get("version") or qc.get("format") or "").lower()
        self.need(version == "gemm", f"awq version {version!r}, this checker reads only gemm")
        bits, gs = qc.get("bits"), qc.get("group_size")
        if bits != 4:
            raise CheckError(f"awq bits {bits}: GEMM is 4-bit")
        self.need(isinstance(gs, int) and gs > 0, f"awq group_size {gs} invalid")
        side = os.path.join(self.qdir, "quant_config.json")
        if os.path.exists(side):  # AutoAWQ's own file
            sc = load_json(side)
            for k, v in (("w_bit", bits), ("q_group_size", gs), ("zero_point", qc.get("zero_point"))):
                self.need(sc.get(k) == v, f"quant_config.json {k}={sc.get(k)!r} != {v!r}")
            self.need(str(sc.get("version", "")).lower() == "gemm",
                      f"quant_config.json version {sc.get('version')!r}")
        names = sorted(k[: -len(".qweight")] for k in self.t.keys() if k.endswith(".qweight"))
        if not names:
            raise CheckError("awq: no <module>.qweight tensor")
        for m in names:
            try:
                qw = self.tensor(m + ".qweight", "I32")
                kin, out = qw.shape[0], qw.shape[1] * 8
                if kin % gs:
                    raise CheckError(f"{m}: group_size {gs} does not divide in {kin}")
                ng = kin // gs
                qz = self.tensor(m + ".qzeros", "I32", [ng, out // 8])
                sc = to_f32(self.tensor(m + ".scales", "F16", [ng, out]))
                q = awq_unpack(qw).astype(np.int32)  # [in, out]
                z = awq_unpack(qz).astype(np.int32)  # [groups, out]
                g = np.arange(kin) // gs
                w = (q - z[g]).astype(np.float32) * sc[g]
                self.lib_rounding("AutoAWQ's dequantize_gemm", "F16", w)
                self.module_done(m, np.ascontiguousarray(w.T), "awq")
            except CheckError as e:
                self.abandon(m, e)
        return f"awq gemm int4 group {gs}" + ("" if qc.get("zero_point") else " no zero point")

    # ---------------------------------------------------------------------------------------
    # bitsandbytes
    # ---------------------------------------------------------------------------------------

    def check_bnb(self):
        qc = self.qc
        l4, l8 = bool(qc.get("load_in_4bit")), bool(qc.get("load_in_8bit"))
        if l4 == l8:
            raise CheckError("bitsandbytes: exactly one of load_in_4bit / load_in_8bit must be true")
        # BitsAndBytesConfig defaults the rest; a missing bnb_4bit_quant_type would read as fp4
        self.require_keys(qc, ["quant_method"] + (["bnb_4bit_quant_type"] if l4 else []),
                          "quantization_config")
        self.need(not qc.get("llm_int8_has_fp16_weight", False),
                  "llm_int8_has_fp16_weight is true: the loader would expect float weights")
        self.need(isinstance(qc.get("llm_int8_threshold", 6.0), (int, float)),
                  "llm_int8_threshold not a number")
        cd = qc.get("bnb_4bit_compute_dtype")
        self.need(cd in (None, "float32", "float16", "bfloat16"), f"bnb_4bit_compute_dtype {cd!r}")
        qs = qc.get("bnb_4bit_quant_storage", "uint8")
        self.need(qs == "uint8", f"bnb_4bit_quant_storage {qs!r} (this checker reads uint8)")
        skip = qc.get("llm_int8_skip_modules")
        self.need(skip is None or isinstance(skip, list), "llm_int8_skip_modules not null or a list")
        return self.check_bnb4() if l4 else self.check_bnb8()

    def check_bnb4(self):
        qc = self.qc
        qt = qc.get("bnb_4bit_quant_type")
        if qt not in ("nf4", "fp4"):
            raise CheckError(f"bnb_4bit_quant_type {qt!r} not nf4 / fp4")
        dq = bool(qc.get("bnb_4bit_use_double_quant"))
        suffix = ".weight.quant_state.bitsandbytes__" + qt
        names = sorted(k[: -len(suffix)] for k in self.t.keys() if k.endswith(suffix))
        other = [k for k in self.t.keys() if ".quant_state.bitsandbytes__" in k and not k.endswith(suffix)]
        self.need(not other, f"quant_state of another type than the config's {qt}: {other[:3]}")
        if not names:
            raise CheckError(f"bitsandbytes 4-bit: no <module>{suffix} tensor")
        table = bnb_4bit_code(qt)
        dmap = bnb_dynamic_map()
        blocksizes = set()
        for m in names:
            p = m + ".weight"
            try:
                raw = self.tensor(p + ".quant_state.bitsandbytes__" + qt, "U8")
                st = json.loads(bytes(raw.reshape(-1)).decode("utf-8"))
                bad = set(st) - BNB_QS_KEYS
                if bad:
                    raise CheckError(f"{m}: quant_state keys {sorted(bad)} unknown to QuantState.from_dict")
                for k in ("quant_type", "blocksize", "dtype", "shape"):
                    if k not in st:
                        raise CheckError(f"{m}: quant_state JSON lacks {k}")
                if st["quant_type"] != qt:
                    raise CheckError(f"{m}: quant_state quant_type {st['quant_type']} != config {qt}")
                bs = st["blocksize"]
                blocksizes.add(bs)
                if bs not in BNB_BLOCKSIZES:
                    raise CheckError(f"{m}: blocksize {bs} not one dequantize_4bit accepts")
                if st["dtype"] not in ("float32", "float16", "bfloat16"):
                    raise CheckError(f"{m}: dtype {st['dtype']} not a 16/32-bit float")
                shape = st["shape"]
                n = int(np.prod(shape))
                nb = math.ceil(n / bs)
                packed = self.tensor(p, "U8", [(n + 1) // 2, 1]).reshape(-1)
                qmap = self.tensor(p + ".quant_map", "F32", [16])
                if not np.array_equal(qmap, table):
                    raise CheckError(f"{m}: quant_map differs from bitsandbytes' {qt} table "
                                     "(its 4-bit kernel uses its own table)")
                nested = (p + ".nested_absmax") in self.t
                if nested != dq:
                    raise CheckError(f"{m}: double quant tensors {'present' if nested else 'absent'} "
                                     f"but bnb_4bit_use_double_quant is {dq}")
                if nested:
                    for k in ("nested_blocksize", "nested_dtype", "nested_offset"):
                        if k not in st:
                            raise CheckError(f"{m}: quant_state JSON lacks {k}")
                    nbs = st["nested_blocksize"]
                    if st["nested_dtype"] != "float32":
                        raise CheckError(f"{m}: nested_dtype {st['nested_dtype']}")
                    codes8 = self.tensor(p + ".absmax", "U8", [nb])
                    nabs = self.tensor(p + ".nested_absmax", "F32", [math.ceil(nb / nbs)])
                    nmap = self.tensor(p + ".nested_quant_map", "F32", [256])
                    if np.abs(nmap - dmap).max() > 1e-6:
                        self.notes.append(f"{m}: nested_quant_map is not create_dynamic_map() "
                                          "(read from the file, as bitsandbytes does)")
                    off = np.float32(float(st["nested_offset"]))
                    absmax = nmap[codes8] * nabs[np.arange(nb) // nbs] + off
                else:
                    absmax = self.tensor(p + ".absmax", "F32", [nb])
                hi = packed >> 4
                lo = packed & 0xF
                codes = np.stack([hi, lo], axis=1).reshape(-1)[:n]
                if len(shape) != 2:
                    raise CheckError(f"{m}: shape {shape} is not 2-D")
                w = (table[codes] * absmax[np.arange(n) // bs]).astype(np.float32).reshape(shape)
                if st["dtype"] != "float32":  # dequantize_4bit returns the state's dtype
                    self.lib_rounding("bitsandbytes' dequantize_4bit",
                                      "F16" if st["dtype"] == "float16" else "BF16", w)
                self.module_done(m, w, "bnb4")
            except CheckError as e:
                self.abandon(m, e)
        bsd = "/".join(str(b) for b in sorted(blocksizes))
        return f"bitsandbytes {qt}{' double-quant' if dq else ''} blocksize {bsd}"

    def check_bnb8(self):
        names = sorted(k[: -len(".SCB")] for k in self.t.keys() if k.endswith(".SCB"))
        if not names:
            raise CheckError("bitsandbytes 8-bit: no <module>.SCB tensor")
        inv127 = np.float32(7.874015718698502e-3)
        for m in names:
            try:
                q = self.tensor(m + ".weight", "I8")
                if q.ndim != 2:
                    raise CheckError(f"{m}.weight: not 2-D")
                scb = self.tensor(m + ".SCB", "F32", [q.shape[0]])
                fk = m + ".weight_format"
                if fk in self.t:
                    f = self.tensor(fk, "U8")
                    if f.size != 1 or int(f.reshape(-1)[0]) != 0:
                        raise CheckError(f"{fk}: {f} is not 0 (row)")
                w = (q.astype(np.float32) * scb[:, None]) * inv127
                self.module_done(m, w, "bnb8")
            except CheckError as e:
                self.abandon(m, e)
        return f"bitsandbytes llm-int8 (threshold {self.qc.get('llm_int8_threshold')})"

    # ---------------------------------------------------------------------------------------
    # compressed-tensors
    # ---------------------------------------------------------------------------------------

    def check_ct(self):
        qc = self.qc
        self.require_keys(qc, ["config_groups", "format", "quant_method", "quantization_status"],
                          "quantization_config")
        status = qc.get("quantization_status")
        self.need(status == "compressed", f"quantization_status {status!r}, expected compressed")
        top_fmt = qc.get("format")
        groups = qc.get("config_groups")
        if not isinstance(groups, dict) or not groups:
            raise CheckError("config_groups empty")
        schemes = []
        for gname, g in groups.items():
            extra = set(g) - CT_SCHEME_FIELDS
            self.need(not extra, f"config_groups.{gname}: unknown keys {sorted(extra)} (extra=forbid)")
            w = g.get("weights")
            if not isinstance(w, dict):
                raise CheckError(f"config_groups.{gname}: no weights")
            extra = set(w) - CT_ARGS_FIELDS
            self.need(not extra, f"config_groups.{gname}.weights: unknown keys {sorted(extra)} (extra=forbid)")
            for side in ("input_activations", "output_activations"):
                a = g.get(side)
                if a is not None:
                    extra = set(a) - CT_ARGS_FIELDS
                    self.need(not extra, f"config_groups.{gname}.{side}: unknown keys {sorted(extra)}")
            if w.get("type", "int") != "int":
                raise CheckError(f"config_groups.{gname}: weight type {w.get('type')}, this checker reads int")
            strat = w.get("strategy", "tensor")
            if strat not in ("tensor", "channel", "group"):
                raise CheckError(f"config_groups.{gname}: strategy {strat} not tensor/channel/group")
            if strat == "group":
                self.need(isinstance(w.get("group_size"), int) and w["group_size"] > 0,
                          f"config_groups.{gname}: group strategy without a group_size")
            self.need(not w.get("dynamic", False), f"config_groups.{gname}: dynamic weights")
            fmt = g.get("format") or top_fmt
            if fmt not in CT_FORMATS:
                raise CheckError(f"config_groups.{gname}: format {fmt!r} not one of {sorted(CT_FORMATS)}")
            targets = g.get("targets") or []
            self.need(isinstance(targets, list) and targets, f"config_groups.{gname}: no targets")
            schemes.append((gname, targets, w, fmt))
        ignore = qc.get("ignore") or []

        def scheme_of(m):
            hits = []
            for s in schemes:
                for t in s[1]:
                    if t.startswith("re:"):
                        if re.match(t[3:], m):
                            hits.append(s)
                            break
                    elif t == m or t in ("Linear", "torch.nn.Linear"):
                        hits.append(s)
                        break
            if not hits:
                raise CheckError(f"{m}: quantized, but no config_groups target matches it")
            return hits[0]

        names = set()
        for k in self.t.keys():
            if k.endswith(".weight_packed"):
                names.add(k[: -len(".weight_packed")])
            elif k.endswith(".weight_scale"):
                names.add(k[: -len(".weight_scale")])
        if not names:
            raise CheckError("compressed-tensors: no <module>.weight_packed / weight_scale tensor")
        descs = set()
        for m in sorted(names):
            try:
                if m in ignore:
                    raise CheckError(f"{m}: quantized but listed in ignore")
                gname, _, w, fmt = scheme_of(m)
                bits = w.get("num_bits", 8)
                strat = w.get("strategy", "tensor")
                sym = w.get("symmetric", True)
                gs = w.get("group_size")
                qmin = -(1 << (bits - 1))
                qmax = (1 << (bits - 1)) - 1
                if fmt == "pack-quantized":
                    if not 1 <= bits <= 8:
                        raise CheckError(f"{m}: pack-quantized num_bits {bits}")
                    shp = self.tensor(m + ".weight_shape", ("I64", "I32"), [2])
                    out, kin = int(shp[0]), int(shp[1])
                    packed = self.tensor(m + ".weight_packed", "I32", [out, math.ceil(kin * bits / 32)])
                    q = ct_unpack(packed, bits, kin) - (1 << (bits - 1))
                else:
                    # QuantizationArgs.pytorch_dtype(): int8 storage for num_bits <= 8
                    if not 1 <= bits <= 8:
                        raise CheckError(f"{m}: {fmt} with num_bits {bits}")
                    q = self.tensor(m + ".weight", "I8").astype(np.int32)
                    out, kin = q.shape
                    if m + ".weight_shape" in self.t:
                        raise CheckError(f"{m}.weight_shape: not part of {fmt} (only pack-quantized "
                                         "has it; transformers reports it as UNEXPECTED)")
                if strat == "group":
                    if kin % gs:
                        raise CheckError(f"{m}: group_size {gs} does not divide in {kin}")
                    ng = kin // gs
                    sshape = [out, ng]
                elif strat == "channel":
                    ng = 1
                    sshape = [out, 1]
                else:
                    ng = 1
                    sshape = [1]
                sk = m + ".weight_scale"
                scale_raw = self.tensor(sk, ("F32", "F16", "BF16"))
                if self.t.shape(sk) != sshape and not (strat == "tensor" and self.t.shape(sk) in ([], [1, 1])):
                    raise CheckError(f"{sk}: shape {self.t.shape(sk)}, expected {sshape}")
                sdt = self.t.dtype(sk)
                scale = to_f32(scale_raw).reshape(sshape if strat != "tensor" else [1])
                zk = m + ".weight_zero_point"
                if sym:
                    if zk in self.t:
                        zp = self.tensor(zk, ("I8", "I32"))
                        if np.any(zp != 0):
                            raise CheckError(f"{zk}: nonzero zero points with symmetric: true")
                    zp = np.zeros(sshape if strat != "tensor" else [1], dtype=np.int32)
                else:
                    if fmt == "pack-quantized" and strat in ("group", "channel"):
                        zraw = self.tensor(zk, "I32", [math.ceil(out * bits / 32), ng])
                        zp = ct_unpack(np.ascontiguousarray(zraw.T), bits, out).T - (1 << (bits - 1))
                    else:
                        zp = self.tensor(zk, ("I8", "I32")).astype(np.int32).reshape(
                            sshape if strat != "tensor" else [1])
                    if zp.min() < qmin or zp.max() > qmax:
                        raise CheckError(f"{zk}: zero points outside [{qmin}, {qmax}]")
                if q.min() < qmin or q.max() > qmax:
                    raise CheckError(f"{m}: codes outside [{qmin}, {qmax}]")
                if strat == "group":
                    g = np.arange(kin) // gs
                    diff = (q - zp[:, g]).astype(np.float32)
                    s = scale[:, g]
                elif strat == "channel":
                    diff = (q - zp).astype(np.float32)
                    s = scale
                else:
                    diff = (q - zp[0]).astype(np.float32)
                    s = scale[0]
                wt = diff * s  # exact in float32: <= 9-bit integer times <= 24-bit scale
                if sdt != "F32":
                    # compressed-tensors computes in the scale dtype
                    self.lib_rounding("compressed-tensors' decompress", sdt, wt)
                self.module_done(m, wt, "ct")
                descs.add(f"{fmt} int{bits} {strat}{' ' + str(gs) if strat == 'group' else ''} "
                          f"{'sym' if sym else 'asym'} scale {sdt}")
            except CheckError as e:
                self.abandon(m, e)
        for i in ignore:
            self.need(i not in names, f"{i} listed in ignore but quantized")
        return "compressed-tensors " + ", ".join(sorted(descs))

    # ---------------------------------------------------------------------------------------
    # comparisons
    # ---------------------------------------------------------------------------------------

    def compare_reference(self):
        ref = self.ref
        expected = set()
        for m, (w, _) in self.modules.items():
            k = m + ".weight"
            expected.add(k)
            if k not in ref:
                self.fail(f"reference lacks {k}")
                continue
            r = ref.get(k)
            if ref.dtype(k) != "F32":
                self.fail(f"reference {k} is {ref.dtype(k)}, expected F32")
            r = to_f32(r)
            if list(r.shape) != list(w.shape):
                self.fail(f"{k}: dequantized shape {list(w.shape)} != reference {list(r.shape)}")
                continue
            d = float(np.abs(w - r).max())
            rel = d / max(float(np.abs(r).max()), 1e-30)
            if d > self.max_abs:
                self.max_abs = d
            if rel > self.max_rel:
                self.max_rel = rel
            if not rel <= self.args.tol:
                bad = np.unravel_index(np.argmax(np.abs(w - r)), w.shape)
                self.fail(f"{k}: numpy dequantization differs from the reference: max |diff| {d:.3g} "
                          f"(relative {rel:.3g}) at {tuple(int(i) for i in bad)}: "
                          f"{w[bad]!r} vs {r[bad]!r}")
        expected.update(m + ".weight" for m in self.abandoned)
        dense = [k for k in self.t.keys() if k not in self.used]
        self.dense_count = len(dense)
        for k in dense:
            expected.add(k)
            if k not in ref:
                self.fail(f"reference lacks {k}")
                continue
            a = self.t.get(k)
            b = ref.get(k)
            if a.dtype.kind == "f":
                a = to_f32(a)
            if b.dtype.kind == "f":
                b = to_f32(b)
            if a.shape != b.shape or not np.array_equal(a, b):
                self.fail(f"{k}: dense tensor differs from the reference")
        extra = sorted(set(ref.keys()) - expected)
        self.need(not extra, f"reference has tensors the quantized model lacks: {extra[:5]}")

    def compare_original(self):
        orig = self.orig
        for m, (w, label) in self.modules.items():
            k = m + ".weight"
            if k not in orig:
                self.fail(f"original lacks {k}")
                continue
            o = to_f32(orig.get(k))
            if list(o.shape) != list(w.shape):
                self.fail(f"{k}: shape {list(w.shape)} != original {list(o.shape)}")
                continue
            if label == "awq":
                o = rescaled(o, w)
            e = (w - o).ravel()
            den = float(np.dot(o.ravel(), o.ravel()))
            rr = math.sqrt(float(np.dot(e, e)) / den) if den > 0 else float(np.abs(w).max())
            self.rmse.append((rr, m))
        if self.rmse and self.args.max_rel_rmse is not None:
            for rr, m in self.rmse:
                if not rr <= self.args.max_rel_rmse:
                    self.fail(f"{m}: relative RMSE {rr:.4g} against the original above "
                              f"{self.args.max_rel_rmse}")

    def run(self):
        method = self.qc.get("quant_method")
        fn = {"gptq": self.check_gptq, "awq": self.check_awq, "bitsandbytes": self.check_bnb,
              "compressed-tensors": self.check_ct}.get(method)
        if fn is None:
            raise CheckError(f"quant_method {method!r} not one of gptq, awq, bitsandbytes, compressed-tensors")
        desc = fn()
        if self.ref:
            self.compare_reference()
        else:
            self.dense_count = len([k for k in self.t.keys() if k not in self.used])
        if self.orig:
            self.compare_original()
        line = f"{desc}: {len(self.modules)} modules"
        if self.ref:
            line += (f", = reference (max |diff| {self.max_abs:.3g}, relative {self.max_rel:.3g}),"
                     f" {self.dense_count} dense tensors equal")
        else:
            line += f", {self.dense_count} dense tensors"
        if self.rmse:
            worst = max(self.rmse)
            line += f"; rel RMSE vs original max {worst[0]:.4f} ({worst[1]})"
            if self.qc.get("quant_method") == "awq":
                line += " after the best row/column rescale"
            if self.args.max_rel_rmse is not None:
                line += f" <= {self.args.max_rel_rmse}"
        for (who, dt), (_, rel) in sorted(self.rounding.items()):
            if rel:
                line += f"; {who} gives {dt}, off the exact value by up to {rel:.2g} relative"
        return line


def rescaled(o, d, iters=4):
    """o scaled per row and per column (diag(r) o diag(c)) to fit d best in least squares, for
    AWQ, which multiplies a linear's input columns by its activation scales (and an up_proj's rows
    by the following down_proj's inverse scales)."""
    r = np.ones(o.shape[0], dtype=o.dtype)
    c = np.ones(o.shape[1], dtype=o.dtype)
    for _ in range(iters):
        oc = o * r[:, None]
        c = np.sum(d * oc, axis=0) / np.maximum(np.sum(oc * oc, axis=0), 1e-30)
        orr = o * c[None, :]
        r = np.sum(d * orr, axis=1) / np.maximum(np.sum(orr * orr, axis=1), 1e-30)
    return o * r[:, None] * c[None, :]


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("quant_dir", help="quantized Hugging Face directory")
    p.add_argument("--reference", help="float32 directory of the same model dequantized by shrink")
    p.add_argument("--original", help="float directory of the model before quantization")
    p.add_argument("--max-rel-rmse", type=float, help="bound on each weight's relative RMSE vs --original")
    p.add_argument("--tol", type=float, default=1e-6,
                   help="max |diff| / max |reference| allowed per weight (default 1e-6)")
    args = p.parse_args()
    if args.max_rel_rmse is not None and not args.original:
        p.error("--max-rel-rmse needs --original")
    name = os.path.basename(os.path.normpath(args.quant_dir))
    try:
        c = Checker(args)
        line = c.run()
    except CheckError as e:
        print(f"check-safetensors: {name}: FAIL: {e}", file=sys.stderr)
        return 1
    if c.errors:
        print(f"check-safetensors: {name}: FAIL ({len(c.errors)} problems)", file=sys.stderr)
        for e in c.errors[:20]:
            print(f"  {e}", file=sys.stderr)
        if len(c.errors) > 20:
            print(f"  ... and {len(c.errors) - 20} more", file=sys.stderr)
        return 1
    print(f"{name}: OK: {line}")
    for n in c.notes:
        print(f"  note: {n}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
