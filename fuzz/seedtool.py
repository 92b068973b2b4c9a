#!/usr/bin/env python3
"""Helpers of fuzz/make-seeds.sh: craft, trim and convert seed files (standard library only).

Usage: seedtool.py COMMAND ARGS... (see the COMMANDS table at the bottom).
"""
import json
import os
import struct
import sys

# ---------------------------------------------------------------------------------------------
# safetensors
# ---------------------------------------------------------------------------------------------


def st_read(path):
    b = open(path, "rb").read()
    n = struct.unpack("<Q", b[:8])[0]
    header = json.loads(b[8:8 + n])
    data = b[8 + n:]
    meta = header.pop("__metadata__", None)
    tensors = {}
    for name, info in header.items():
        s, e = info["data_offsets"]
        tensors[name] = (info["dtype"], info["shape"], data[s:e])
    return tensors, meta


def st_bytes(tensors, meta=None):
    """Serialise {name: (dtype, shape, bytes)} (sorted names, header padded to 8 bytes)."""
    header = {}
    if meta is not None:
        header["__metadata__"] = meta
    data = b""
    for name in sorted(tensors):
        dtype, shape, raw = tensors[name]
        header[name] = {"dtype": dtype, "shape": shape,
                        "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + data


def f32_to(raw, dtype):
    vals = struct.unpack("<%df" % (len(raw) // 4), raw)
    if dtype == "F32":
        return raw
    if dtype == "F16":
        return struct.pack("<%de" % len(vals), *vals)
    if dtype == "BF16":
        out = bytearray()
        for v in vals:
            bits = struct.unpack("<I", struct.pack("<f", v))[0]
            bits = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
            out += struct.pack("<H", bits)
        return bytes(out)
    raise ValueError(dtype)


VOCAB = 64  # the vocabulary of the harness's tiny-llama config for safetensors and layouts


def truncate_embed(tensors, rows=VOCAB):
    """The embedding (and an untied head) cut to their first `rows` rows."""
    for name in list(tensors):
        dt, shape, raw = tensors[name]
        if ("embed_tokens" in name or name == "lm_head.weight") and shape[0] > rows:
            per_row = len(raw) // shape[0]
            tensors[name] = (dt, [rows] + shape[1:], raw[:rows * per_row])
    return tensors


def st_subset(src, dst, dtype, which):
    tensors, meta = st_read(src)
    tensors = truncate_embed(tensors)
    dtype = dtype.upper()
    keep = {}
    for name, (dt, shape, raw) in tensors.items():
        if which == "layer0" and not (".layers.0." in name or "norm" in name):
            continue
        if which == "noembed" and "embed" in name:
            continue
        if which == "norms" and "norm" not in name:
            continue
        keep[name] = (dtype, shape, f32_to(raw, dtype) if dt == "F32" else raw)
    open(dst, "wb").write(st_bytes(keep, meta))


def st_dtypes(dst):
    """One small tensor of every safetensors dtype."""
    t = {
        "f32": ("F32", [2, 2], struct.pack("<4f", 1, -2, 0.5, 0)),
        "f16": ("F16", [4], struct.pack("<4e", 1, -2, 0.5, 0)),
        "bf16": ("BF16", [2, 2], f32_to(struct.pack("<4f", 1, -2, 0.5, 0), "BF16")),
        "f64": ("F64", [2], struct.pack("<2d", 1, 2)),
        "i8": ("I8", [4], bytes([1, 255, 3, 128])),
        "u8": ("U8", [4], bytes([1, 2, 3, 4])),
        "i16": ("I16", [2], struct.pack("<2h", -1, 2)),
        "i32": ("I32", [2], struct.pack("<2i", -1, 2)),
        "i64": ("I64", [2], struct.pack("<2q", -1, 2)),
        "u16": ("U16", [1], struct.pack("<H", 7)),
        "u32": ("U32", [1], struct.pack("<I", 7)),
        "u64": ("U64", [1], struct.pack("<Q", 7)),
        "bool": ("BOOL", [2], bytes([0, 1])),
        "f8e4m3": ("F8_E4M3", [2], bytes([0x38, 0xb8])),
        "f8e5m2": ("F8_E5M2", [2], bytes([0x3c, 0xbc])),
        "empty": ("F32", [0, 3], b""),
        "scalar": ("F32", [], struct.pack("<f", 3)),
    }
    open(dst, "wb").write(st_bytes(t, {"format": "pt"}))


def index(src, outdir):
    """The index of the harness's two shards (names in sorted order split in two halves)."""
    tensors, _ = st_read(src)
    names = sorted(tensors)
    half = len(names) // 2
    wm = {n: ("model-00001-of-00002.safetensors" if i < half else
              "model-00002-of-00002.safetensors") for i, n in enumerate(names)}
    total = sum(len(tensors[n][2]) for n in names)
    good = {"metadata": {"total_size": total}, "weight_map": wm}
    dump(good, os.path.join(outdir, "index.json"))
    one = dict(wm)
    for k in list(one)[:3]:
        one[k] = "model-00001-of-00002.safetensors"
    dump({"metadata": {"total_size": total}, "weight_map": one}, os.path.join(outdir, "moved.json"))
    dump({"weight_map": {names[0]: "model-00001-of-00002.safetensors"}},
         os.path.join(outdir, "one-shard.json"))
    dump({"weight_map": {names[0]: "config.json", names[1]: "model-00002-of-00002.safetensors"}},
         os.path.join(outdir, "not-a-shard.json"))


def dump(v, path):
    open(path, "w").write(json.dumps(v, indent=1))

# ---------------------------------------------------------------------------------------------
# config.json variants
# ---------------------------------------------------------------------------------------------


def config_variants(d):
    base = json.load(open(os.path.join(d, "llama.json")))
    v = dict(base, rope_scaling={"rope_type": "default", "rope_theta": 5e5},
             head_dim=16, sliding_window=8, attention_bias=True, mlp_bias=True)
    dump(v, os.path.join(d, "llama-options.json"))
    q = json.load(open(os.path.join(d, "qwen2.json")))
    dump(dict(q, use_sliding_window=True, sliding_window=4, tie_word_embeddings=True),
         os.path.join(d, "qwen2-window.json"))
    n = json.load(open(os.path.join(d, "gpt_neox.json")))
    dump(dict(n, rope_parameters={"partial_rotary_factor": 0.5, "rope_theta": 1e4},
              use_parallel_residual=False), os.path.join(d, "gpt_neox-rope.json"))
    g = json.load(open(os.path.join(d, "gpt2.json")))
    dump(dict(g, n_inner=128, activation_function="gelu", scale_attn_by_inverse_layer_idx=True),
         os.path.join(d, "gpt2-options.json"))

# ---------------------------------------------------------------------------------------------
# tokenizers and templates
# ---------------------------------------------------------------------------------------------


def byte_chars():
    keep = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    chars = list(keep)
    n = 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + n)
            n += 1
    out = [""] * 256
    for b, c in zip(keep, chars):
        out[b] = chr(c)
    return out


CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + "
          "message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")


def tokenizer(d):
    """A byte-level BPE (ids 0..255, a few merges) plus two special tokens, as
    tokenizer.json, tokenizer_config.json (ChatML) in directory d."""
    chars = byte_chars()
    vocab = {c: i for i, c in enumerate(chars)}
    merges = []
    for a, b in [("t", "h"), ("th", "e"), ("Ġ", "t"), ("i", "n"), ("e", "r")]:
        vocab[a + b] = len(vocab)
        merges.append(a + " " + b)
    special = ["<|im_start|>", "<|im_end|>"]
    added = []
    for s in special:
        added.append({"id": len(vocab), "content": s, "single_word": False, "lstrip": False,
                      "rstrip": False, "normalized": False, "special": True})
        vocab[s] = len(vocab)
    tj = {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                          "use_regex": True},
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                    "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None,
                  "continuing_subword_prefix": None, "end_of_word_suffix": None,
                  "fuse_unk": False, "byte_fallback": False, "vocab": vocab, "merges": merges},
    }
    open(os.path.join(d, "tokenizer.json"), "w").write(json.dumps(tj, ensure_ascii=False))
    dump({"bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "add_bos_token": False,
          "chat_template": CHATML}, os.path.join(d, "tokenizer_config.json"))


def trim_tokenizer(src, dst, n):
    """Keep ids < n (and the merges among them) of a BPE or WordPiece tokenizer.json."""
    n = int(n)
    tj = json.load(open(src))
    m = tj["model"]
    m["vocab"] = {k: v for k, v in m["vocab"].items() if v < n}
    if m["type"] == "BPE":
        keep = []
        for mg in m.get("merges", []):
            a, b = mg.split(" ", 1) if isinstance(mg, str) else mg
            if a in m["vocab"] and b in m["vocab"] and a + b in m["vocab"]:
                keep.append(mg)
        m["merges"] = keep
    tj["added_tokens"] = [t for t in tj.get("added_tokens", []) if t["id"] < n]
    open(dst, "w").write(json.dumps(tj, ensure_ascii=False, separators=(",", ":")))


def gguf_tokenizer(src, d):
    """tokenizer.json (byte-level BPE, SmolLM2's pre-tokenizer: digits split, then ByteLevel)
    and chat_template.jinja from a GGUF's tokenizer.ggml.* metadata."""
    meta, _, _, _ = gguf_read(src, tensors=False)
    tokens = meta["tokenizer.ggml.tokens"][1]
    types = meta.get("tokenizer.ggml.token_type", (None, [1] * len(tokens)))[1]
    merges = meta["tokenizer.ggml.merges"][1]
    vocab = {t: i for i, t in enumerate(tokens)}
    added = [{"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": True}
             for i, (t, ty) in enumerate(zip(tokens, types)) if ty == 3]
    tj = {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": True},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
             "use_regex": True}]},
        "post_processor": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False,
                           "use_regex": True},
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True,
                    "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None,
                  "continuing_subword_prefix": None, "end_of_word_suffix": None,
                  "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": vocab, "merges": merges},
    }
    os.makedirs(d, exist_ok=True)
    open(os.path.join(d, "tokenizer.json"), "w").write(json.dumps(tj, ensure_ascii=False))
    tmpl = meta.get("tokenizer.chat_template", (None, ""))[1]
    open(os.path.join(d, "chat_template.jinja"), "w").write(tmpl)


def templates(d):
    t = {
        "chatml.jinja": CHATML,
        "llama3.jinja": (
            "{{ bos_token }}{% for message in messages %}{{ '<|start_header_id|>' + message['role'] "
            "+ '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}{% endfor %}"
            "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
            "{% endif %}"),
        "mistral.jinja": (
            "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != "
            "(loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate "
            "user/assistant/user/assistant/...') }}{% endif %}{% if message['role'] == 'user' %}"
            "{{ '[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] == "
            "'assistant' %}{{ message['content'] + eos_token}}{% else %}{{ raise_exception('Only "
            "user and assistant roles are supported!') }}{% endif %}{% endfor %}"),
        "methods.jinja": (
            "{%- set ns = namespace(sys='') -%}{%- for m in messages -%}{%- if m.role == 'system' -%}"
            "{%- set ns.sys = m.content.strip() -%}{%- else -%}{{ m['role'].upper() }}: "
            "{{ m.content.split(' ')|join('_') }}{{ m.get('name', 'x') }}"
            "{{ m.content.startswith('Hi') }}{{ m | tojson }}{%- endif -%}{%- endfor -%}"
            "{{ ns.sys.replace('terse', 'brief') }}{% for k, v in messages[0].items() %}{{ k }}={{ v }}"
            "{% endfor %}{{ messages|length }}{{ range(3)|list }}{% if loop is defined %}x{% endif %}"),
    }
    for name, text in t.items():
        open(os.path.join(d, name), "w").write(text)

# ---------------------------------------------------------------------------------------------
# GGUF
# ---------------------------------------------------------------------------------------------

SCALAR = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q",
          11: "<q", 12: "<d"}


def gguf_read(path, tensors=True):
    """(metadata {key: (type, value)}, tensor infos [(name, ne, ty, offset)], data, alignment)."""
    b = open(path, "rb").read()
    assert b[:4] == b"GGUF"
    pos = 4
    version, n_t, n_kv = struct.unpack_from("<IQQ", b, pos)
    pos += 20

    def string():
        nonlocal pos
        n = struct.unpack_from("<Q", b, pos)[0]
        pos += 8
        s = b[pos:pos + n].decode()
        pos += n
        return s

    def value(ty):
        nonlocal pos
        if ty == 8:
            return string()
        if ty == 9:
            et, n = struct.unpack_from("<IQ", b, pos)
            pos += 12
            return (et, [value(et) for _ in range(n)])
        fmt = SCALAR[ty]
        v = struct.unpack_from(fmt, b, pos)[0]
        pos += struct.calcsize(fmt)
        return v

    meta = {}
    for _ in range(n_kv):
        k = string()
        ty = struct.unpack_from("<I", b, pos)[0]
        pos += 4
        v = value(ty)
        meta[k] = (9, v[1]) if ty == 9 else (ty, v)
    infos = []
    if tensors:
        for _ in range(n_t):
            name = string()
            nd = struct.unpack_from("<I", b, pos)[0]
            pos += 4
            ne = list(struct.unpack_from("<%dQ" % nd, b, pos))
            pos += 8 * nd
            ty, off = struct.unpack_from("<IQ", b, pos)
            pos += 12
            infos.append((name, ne, ty, off))
    align = meta.get("general.alignment", (4, 32))[1]
    data_start = (pos + align - 1) // align * align
    return meta, infos, b[data_start:], align


class GgufWriter:
    def __init__(self):
        self.kv = []
        self.tensors = []

    def add(self, key, ty, v, elem=None):
        self.kv.append((key, ty, v, elem))

    def tensor(self, name, ne, ty, raw):
        self.tensors.append((name, ne, ty, raw))

    @staticmethod
    def _str(s):
        s = s.encode()
        return struct.pack("<Q", len(s)) + s

    def _val(self, ty, v, elem):
        if ty == 8:
            return self._str(v)
        if ty == 9:
            out = struct.pack("<IQ", elem, len(v))
            for x in v:
                out += self._val(elem, x, None)
            return out
        return struct.pack(SCALAR[ty], v)

    def bytes(self, align=32):
        out = b"GGUF" + struct.pack("<IQQ", 3, len(self.tensors), len(self.kv))
        for k, ty, v, elem in self.kv:
            out += self._str(k) + struct.pack("<I", ty) + self._val(ty, v, elem)
        off = 0
        offsets = []
        for name, ne, ty, raw in self.tensors:
            offsets.append(off)
            out += self._str(name) + struct.pack("<I", len(ne)) + struct.pack("<%dQ" % len(ne), *ne)
            out += struct.pack("<IQ", ty, off)
            off += len(raw)
            off += -off % align
        out += b"\0" * (-len(out) % align)
        for (name, ne, ty, raw), o in zip(self.tensors, offsets):
            out += raw + b"\0" * (-len(raw) % align)
        return out


def elem_of(v):
    if isinstance(v, str):
        return 8
    if isinstance(v, bool):
        return 7
    if isinstance(v, float):
        return 6
    return 5


def gguf_subset(src, dst):
    """The GGUF's metadata (tokenizer arrays kept) and only its F32/F16 tensors."""
    meta, infos, data, align = gguf_read(src)
    w = GgufWriter()
    raw_meta = gguf_raw_meta(src)
    for k, ty, v, elem in raw_meta:
        w.add(k, ty, v, elem)
    sizes = {0: 4, 1: 2}
    ordered = sorted(infos, key=lambda t: t[3])
    for i, (name, ne, ty, off) in enumerate(ordered):
        if ty not in sizes:
            continue
        n = 1
        for d in ne:
            n *= d
        w.tensor(name, ne, ty, data[off:off + n * sizes[ty]])
    open(dst, "wb").write(w.bytes(align))


def gguf_raw_meta(path):
    """[(key, type, value, elem_type)] in file order."""
    b = open(path, "rb").read()
    pos = 24
    n_kv = struct.unpack_from("<Q", b, 16)[0]
    out = []

    def string():
        nonlocal pos
        n = struct.unpack_from("<Q", b, pos)[0]
        pos += 8
        s = b[pos:pos + n].decode()
        pos += n
        return s

    def value(ty):
        nonlocal pos
        if ty == 8:
            return string()
        fmt = SCALAR[ty]
        v = struct.unpack_from(fmt, b, pos)[0]
        pos += struct.calcsize(fmt)
        return v

    for _ in range(n_kv):
        k = string()
        ty = struct.unpack_from("<I", b, pos)[0]
        pos += 4
        if ty == 9:
            et, n = struct.unpack_from("<IQ", b, pos)
            pos += 12
            out.append((k, 9, [value(et) for _ in range(n)], et))
        else:
            out.append((k, ty, value(ty), None))
    return out


def imatrix_gguf(src, dst):
    """llama.cpp's GGUF imatrix of the same entries as a legacy .dat (chunk size 64)."""
    b = open(src, "rb").read()
    pos = 0
    n = struct.unpack_from("<i", b, pos)[0]
    pos += 4
    entries = []
    for _ in range(n):
        ln = struct.unpack_from("<i", b, pos)[0]
        pos += 4
        name = b[pos:pos + ln].decode()
        pos += ln
        ncall, nval = struct.unpack_from("<ii", b, pos)
        pos += 8
        vals = struct.unpack_from("<%df" % nval, b, pos)
        pos += 4 * nval
        entries.append((name, ncall, vals))
    chunk = 64
    w = GgufWriter()
    w.add("general.type", 8, "imatrix")
    w.add("imatrix.datasets", 9, ["calib.txt"], 8)
    w.add("imatrix.chunk_count", 4, max(e[1] for e in entries))
    w.add("imatrix.chunk_size", 4, chunk)
    for name, ncall, vals in entries[:6]:
        count = float(max(ncall, 1) * chunk)
        sums = [v / max(ncall, 1) * count for v in vals]
        w.tensor(name + ".in_sum2", [len(vals), 1], 0, struct.pack("<%df" % len(sums), *sums))
        w.tensor(name + ".counts", [1, 1], 0, struct.pack("<f", count))
    open(dst, "wb").write(w.bytes())

# ---------------------------------------------------------------------------------------------
# quantized layouts, PEFT, dictionaries
# ---------------------------------------------------------------------------------------------


def layouts(work, layouts_dir, seeds, *names):
    """layouts_dir/<name>/config.json (+ quantize_config.json; vocab_size cut to VOCAB) and
    seeds/<i>-<name>: byte i, then the layout's safetensors with the embedding cut to VOCAB rows
    and float32 tensors over 4 KB stored as float16; and for every third layout a seed with the
    high bit set: byte 0x80|i, config.json, NUL, safetensors."""
    for i, name in enumerate(names):
        src = os.path.join(work, "q-" + name)
        out = os.path.join(layouts_dir, name)
        os.makedirs(out, exist_ok=True)
        for f in ["config.json", "quantize_config.json"]:
            p = os.path.join(src, f)
            if os.path.exists(p):
                open(os.path.join(out, f), "w").write(open(p).read())
        cfg = json.load(open(os.path.join(src, "config.json")))
        cfg["vocab_size"] = VOCAB
        open(os.path.join(out, "config.json"), "w").write(json.dumps(cfg, indent=2))
        tensors, meta = st_read(os.path.join(src, "model.safetensors"))
        keep = truncate_embed(tensors)
        for k, (dt, shape, raw) in keep.items():
            if dt == "F32" and len(raw) > 4096:
                keep[k] = ("F16", shape, f32_to(raw, "F16"))
        st = st_bytes(keep, meta)
        open(os.path.join(seeds, "%02d-%s" % (i, name)), "wb").write(bytes([i]) + st)
        if i % 3 == 0:
            cfg = open(os.path.join(out, "config.json"), "rb").read()
            open(os.path.join(seeds, "%02d-%s-with-config" % (i, name)), "wb").write(
                bytes([0x80 | i]) + cfg + b"\0" + st)


def peft(adapter, outdir):
    cfg = open(os.path.join(adapter, "adapter_config.json"), "rb").read()
    st = open(os.path.join(adapter, "adapter_model.safetensors"), "rb").read()
    open(os.path.join(outdir, "qlora-r4"), "wb").write(cfg + b"\0" + st)
    # Crafted: rank 2 on two modules of layer 0, bf16 and f16, rslora, fan_in_fan_out.
    a = {"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight":
         ("BF16", [2, 64], f32_to(struct.pack("<128f", *[0.01 * i for i in range(128)]), "BF16")),
         "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight":
         ("F16", [64, 2], struct.pack("<128e", *[0.001 * i for i in range(128)])),
         "base_model.model.model.layers.0.mlp.down_proj.lora_A.weight":
         ("F32", [2, 160], struct.pack("<320f", *[0.0] * 320)),
         "base_model.model.model.layers.0.mlp.down_proj.lora_B.weight":
         ("F32", [64, 2], struct.pack("<128f", *[0.5] * 128))}
    c = {"peft_type": "LORA", "r": 2, "lora_alpha": 4, "use_rslora": True, "bias": "none",
         "target_modules": ["q_proj", "down_proj"], "fan_in_fan_out": False,
         "base_model_name_or_path": "tiny-llama", "task_type": "CAUSAL_LM"}
    open(os.path.join(outdir, "crafted-r2"), "wb").write(
        json.dumps(c).encode() + b"\0" + st_bytes(a, {"format": "pt"}))


GGUF_KEYS = """general.architecture general.alignment general.type general.file_type general.name
tokenizer.ggml.model tokenizer.ggml.pre tokenizer.ggml.tokens tokenizer.ggml.token_type
tokenizer.ggml.merges tokenizer.ggml.bos_token_id tokenizer.ggml.eos_token_id
tokenizer.ggml.eot_token_id tokenizer.ggml.eom_token_id tokenizer.ggml.unknown_token_id
tokenizer.ggml.padding_token_id tokenizer.ggml.add_bos_token tokenizer.ggml.add_eos_token
tokenizer.ggml.add_space_prefix tokenizer.chat_template imatrix.datasets imatrix.chunk_count
imatrix.chunk_size llama qwen2 gpt2 gptneox .context_length .embedding_length .block_count
.feed_forward_length .attention.head_count .attention.head_count_kv .attention.key_length
.attention.layer_norm_rms_epsilon .attention.layer_norm_epsilon .rope.freq_base
.rope.dimension_count .vocab_size .use_parallel_residual token_embd.weight output.weight
output_norm.weight blk.0. blk.1. attn_q attn_k attn_v attn_output attn_qkv attn_norm ffn_norm
ffn_up ffn_down ffn_gate .weight .bias .in_sum2 .counts""".split()

JSON_TOKENS = """model_type llama mistral qwen2 gpt2 gpt_neox bert distilbert hidden_size
intermediate_size num_hidden_layers num_attention_heads num_key_value_heads head_dim vocab_size
rms_norm_eps rope_theta rope_scaling rope_parameters rope_type partial_rotary_factor rotary_pct
rotary_emb_base max_position_embeddings tie_word_embeddings attention_bias mlp_bias
sliding_window use_sliding_window n_embd n_head n_layer n_inner n_positions layer_norm_epsilon
layer_norm_eps activation_function use_parallel_residual hidden_act num_labels dim n_heads
n_layers hidden_dim id2label label2id quantization_config quant_method bits group_size desc_act
sym zero_point version config_groups group_0 weights num_bits strategy symmetric type dynamic
input_activations format pack-quantized naive-quantized int-quantized sparsity_config
sparse-bitmask sparse-24-bitmask compressed-tensors gptq awq bitsandbytes load_in_4bit
load_in_8bit bnb_4bit_quant_type llm_int8_threshold shrink-hqq axis nbits quant_state
blocksize shape nested_offset nested_blocksize weight_map metadata total_size peft_type LORA r
lora_alpha use_rslora use_dora target_modules fan_in_fan_out bias rank_pattern alpha_pattern
chat_template bos_token eos_token unk_token pad_token add_bos_token add_eos_token added_tokens
content special normalizer pre_tokenizer post_processor decoder model BPE WordPiece WordLevel
Unigram ByteLevel Split Sequence Digits vocab merges unk_token continuing_subword_prefix
byte_fallback __metadata__ dtype data_offsets F32 F16 BF16 I8 U8 I32 I64 F8_E4M3 BOOL
qweight qzeros scales g_idx weight_packed weight_scale weight_zero_point weight_shape SCB absmax
nested_absmax W_q scale zero compressed bitmask row_offsets""".split()

JINJA = """{% %} {{ }} {# #} {%- -%} for in endfor if elif else endif set namespace macro endmacro
call endcall filter endfilter raw endraw loop.index0 loop.last messages message role content
add_generation_prompt bos_token eos_token raise_exception tojson trim strip split join upper
lower replace startswith endswith items get length range list selectattr map default first last
reverse sort ~ + * // % == != and or not is defined none true false <|im_start|> <|im_end|>""".split()


def dicts(d):
    os.makedirs(d, exist_ok=True)

    def write(name, words):
        with open(os.path.join(d, name), "w") as f:
            seen = set()
            for w in words:
                if w in seen:
                    continue
                seen.add(w)
                f.write('"%s"\n' % "".join(c if 32 <= ord(c) < 127 and c not in '"\\'
                                           else "\\x%02x" % ord(c) for c in w))

    write("gguf.dict", ["GGUF"] + GGUF_KEYS)
    write("json.dict", ['"' + t + '"' for t in JSON_TOKENS] +
          ["{", "}", "[", "]", ":", ",", "null", "true", "false", "-1", "0", "1e309",
           "18446744073709551615", "9223372036854775807", "4294967296"])
    write("jinja.dict", JINJA)
    write("safetensors.dict", ['"' + t + '"' for t in JSON_TOKENS[-40:]] +
          ['"dtype":"F32"', '"shape":[', '"data_offsets":[', "__metadata__"])


def calib(path):
    words = ("the model weights are quantized to four bits with scales that protect salient "
             "channels of activations and groups of rows").split()
    out = []
    x = 1
    for _ in range(4000):
        x = (x * 1103515245 + 12345) % (1 << 31)
        out.append(words[x % len(words)])
    open(path, "w").write(" ".join(out) + "\n")


COMMANDS = {
    "st-subset": st_subset, "st-dtypes": st_dtypes, "index": index,
    "config-variants": config_variants, "tokenizer": tokenizer,
    "trim-tokenizer": trim_tokenizer, "gguf-tokenizer": gguf_tokenizer, "templates": templates,
    "gguf-subset": gguf_subset, "imatrix-gguf": imatrix_gguf, "layouts": layouts, "peft": peft,
    "dicts": dicts, "calib": calib,
}

if __name__ == "__main__":
    COMMANDS[sys.argv[1]](*sys.argv[2:])
