#!/usr/bin/env python3
"""Check that PEFT loads shrink's LoRA adapter over shrink's bitsandbytes checkpoint and computes
what shrink computes.

    check-peft-load.py BASE ADAPTER [--bin target/release/examples/logits] [--tol 1e-3]

BASE is a bitsandbytes 4-bit directory written by `shrink quantize --method nf4|fp4`, ADAPTER a
PEFT adapter directory written by `shrink qlora BASE ...`. transformers loads BASE with
bitsandbytes (float32 compute, CPU), `peft.PeftModel.from_pretrained` puts the adapter over it,
and its logits on the ids (37 i + 5) mod 500, i < 20, are compared with shrink's own forward of
BASE + ADAPTER (`cargo build --release -p shrink-models --example logits`). bitsandbytes' CPU
4-bit matmul does not compute in float32 (its product differs from the float32 product of its
own dequantized weight by ~3e-3 relative, about bfloat16's rounding), so two comparisons:
- strict: each Linear4bit runs bitsandbytes' own `dequantize_4bit` of its weight in a float32
  matmul, PEFT adds the LoRA path as it does: the largest difference must be within --tol
  (relative to the largest logit);
- as shipped: bitsandbytes' own CPU kernel, within --tol-kernel.
The base alone is compared the same way, and the adapter must move the logits by far more than
the strict tolerance (so the check cannot pass with the adapter ignored). Also checks that PEFT finds every adapter tensor (no missing or unexpected
keys) and that the adapter's config round-trips through peft.LoraConfig.

Needs torch, transformers, bitsandbytes and peft (not in CI; `scripts/check-peft.py` reads the
format independently in CI). Exit status 0 when everything agrees.
"""
import argparse
import json
import subprocess
import sys
import warnings

import bitsandbytes as bnb
import bitsandbytes.functional as F
import torch
from peft import LoraConfig, PeftModel
from transformers import AutoModelForCausalLM


def shrink_logits(binary, base, adapter=None):
    args = [binary, base] + ([adapter] if adapter else [])
    out = subprocess.run(args, check=True, capture_output=True, text=True)
    j = json.loads(out.stdout)
    return j["ids"], torch.tensor(j["logits"]).reshape(j["shape"])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("base")
    ap.add_argument("adapter")
    ap.add_argument("--bin", default="target/release/examples/logits")
    ap.add_argument("--tol", type=float, default=1e-4)
    ap.add_argument("--tol-kernel", type=float, default=5e-2)
    a = ap.parse_args()
    torch.manual_seed(0)
    ids, want_base = shrink_logits(a.bin, a.base)
    _, want = shrink_logits(a.bin, a.base, a.adapter)
    x = torch.tensor([ids])
    model = AutoModelForCausalLM.from_pretrained(a.base, dtype=torch.float32, device_map="cpu")
    model.eval()
    n4 = sum(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())
    kernel = bnb.nn.Linear4bit.forward

    def strict(self, inp):
        w = F.dequantize_4bit(self.weight.data, self.weight.quant_state).to(torch.float32)
        return torch.nn.functional.linear(inp, w, self.bias)

    # The strict products first: bitsandbytes' CPU kernel repacks a weight on its first call,
    # after which dequantize_4bit no longer reads it.
    got_base, got = {}, {}
    with torch.no_grad():
        bnb.nn.Linear4bit.forward = strict
        got_base["strict"] = model(x).logits[0]
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            peft_model = PeftModel.from_pretrained(model, a.adapter)
        bad = [str(w.message) for w in caught if "missing" in str(w.message).lower()
               or "unexpected" in str(w.message).lower()]
        peft_model.eval()
        got["strict"] = peft_model(x).logits[0]
        bnb.nn.Linear4bit.forward = kernel
        got["kernel"] = peft_model(x).logits[0]
        with peft_model.disable_adapter():
            got_base["kernel"] = peft_model(x).logits[0]
    cfg = LoraConfig.from_pretrained(a.adapter)
    scale = want.abs().max().item()
    moved = (want - want_base).abs().max().item()
    n_lora = sum(1 for n, _ in peft_model.named_parameters() if "lora_" in n)
    print(f"transformers loaded {n4} bitsandbytes Linear4bit layers; PEFT LoraConfig r={cfg.r} "
          f"lora_alpha={cfg.lora_alpha} targets={sorted(cfg.target_modules)}; "
          f"{n_lora} LoRA tensors loaded")
    ok = True
    if bad:
        print("FAIL: PEFT reported", bad)
        ok = False
    if n4 == 0 or n_lora == 0:
        print("FAIL: no 4-bit layer or no LoRA tensor")
        ok = False
    for what, g, w in (("base", got_base, want_base), ("base + adapter", got, want)):
        for mode, tol in (("strict", a.tol), ("kernel", a.tol_kernel)):
            d = (g[mode] - w).abs().max().item()
            flag = "ok" if d <= tol * scale else "FAIL"
            print(f"{what:15s} {mode:6s} max |Δlogit| vs shrink {d:.3e}"
                  f" (tolerance {tol} × largest logit {scale:.1f}) {flag}")
            ok &= d <= tol * scale
    print(f"the adapter moves shrink's logits by up to {moved:.3e}")
    if moved <= 10 * a.tol * scale:
        print(f"FAIL: the adapter moves the logits by only {moved:.3e}: the check cannot tell")
        ok = False
    print("OK" if ok else "FAILED")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
