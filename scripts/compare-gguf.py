#!/usr/bin/env python3
"""Compare two GGUF files with llama.cpp's gguf package: metadata keys present in one only,
values that differ, tensor order, and each tensor's type, shape and bytes.

    compare-gguf.py SHRINK.gguf LLAMA_CPP.gguf

Prints the differences; exits 1 when any tensor differs (metadata differences are reported only).
"""
import sys, numpy as np, gguf
a=gguf.GGUFReader(sys.argv[1]); b=gguf.GGUFReader(sys.argv[2])
def val(f):
    try: return f.contents()
    except Exception: return None
ka=[k for k in a.fields if not k.startswith("GGUF.")]; kb=[k for k in b.fields if not k.startswith("GGUF.")]
print("keys only in shrink:", [k for k in ka if k not in kb]); print("keys only in llama.cpp:", [k for k in kb if k not in ka])
print("same key order:", [k for k in ka if k in kb]==[k for k in kb if k in ka])
for k in ka:
    if k in kb:
        va, vb = val(a.fields[k]), val(b.fields[k])
        if va != vb:
            s=lambda v: (str(v)[:80] + (f"... len {len(v)}" if isinstance(v,list) else ""))
            print("differs:", k, "| shrink:", s(va), "| llama.cpp:", s(vb))
tb={t.name:t for t in b.tensors}
print("tensor order same:", [t.name for t in a.tensors]==[t.name for t in b.tensors])
nd=0
for t in a.tensors:
    u=tb.get(t.name)
    if u is None: print("tensor only in shrink", t.name); continue
    if t.tensor_type!=u.tensor_type or list(t.shape)!=list(u.shape) or not np.array_equal(np.asarray(t.data).view(np.uint8), np.asarray(u.data).view(np.uint8)):
        nd+=1
        if nd<5: print("tensor differs", t.name, t.tensor_type.name, u.tensor_type.name, list(t.shape), list(u.shape))
for n in tb:
    if n not in {t.name for t in a.tensors}: print("tensor only in llama.cpp", n)
print(f"{len(a.tensors)} tensors, {nd} differ")
sys.exit(1 if nd or len(a.tensors) != len(b.tensors) else 0)
