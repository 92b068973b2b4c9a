#!/usr/bin/env python3
"""Check that transformers loads shrink's structurally pruned models and computes what shrink
computes.

    check-structured.py [--bin target/release/examples/structured]
                        [--fixtures ../shared/fixtures] [--dir PRUNED_DIR ...] [--tol 1e-5]

For every tiny fixture and every mode that applies (layers: remove 1; neurons: keep 0.5; heads:
keep 0.5 on the Llama family — llama, mistral, qwen2), prune with the example binary
(`cargo build --release -p shrink-methods --example structured`), then load the result with
transformers (AutoModelForCausalLM / AutoModelForSequenceClassification, float32, eval) and
compare its logits on the fixed ids (37 i + 5) mod 500, i < 20, with shrink's own forward of the
same directory (`structured logits DIR`): the largest difference must be within --tol of the
largest logit (float32 noise: the unpruned SmolLM2 itself differs by ~1e-4 on logits ~30). Each `--dir` (an already pruned model, e.g. SmolLM2) is
compared the same way. Also checks that transformers loads every weight it expects (no
missing/unexpected keys) and that the config says the pruned sizes. Needs torch and transformers
(not in CI).
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

import torch
import transformers
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

FIXTURES = ["tiny-llama", "tiny-mistral", "tiny-qwen2", "tiny-gpt2", "tiny-gpt_neox",
            "tiny-bert_cls", "tiny-distilbert_cls"]
LLAMA_FAMILY = {"tiny-llama", "tiny-mistral", "tiny-qwen2"}


def shrink_logits(binary, d):
    out = subprocess.run([binary, "logits", d], check=True, capture_output=True, text=True)
    j = json.loads(out.stdout)
    return j["ids"], torch.tensor(j["logits"]).reshape(j["shape"])


def hf_logits(d, ids):
    cfg = AutoConfig.from_pretrained(d)
    cls = (AutoModelForSequenceClassification if cfg.model_type in ("bert", "distilbert")
           else AutoModelForCausalLM)
    model, info = cls.from_pretrained(d, dtype=torch.float32, output_loading_info=True)
    model.eval()
    bad = {k: v for k, v in info.items() if v and k in ("missing_keys", "unexpected_keys",
                                                          "mismatched_keys")}
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0]
    return logits, bad


def check(binary, d, tol):
    ids, ours = shrink_logits(binary, d)
    theirs, bad = hf_logits(d, ids)
    diff = (ours - theirs).abs().max().item()
    rel = diff / theirs.abs().max().item()
    ok = rel <= tol and not bad
    print(f"{'ok ' if ok else 'BAD'} {d}: max |Δlogit| {diff:.3e} = {rel:.2e} of max |logit|"
          f" over {tuple(ours.shape)}"
          + (f" loading: {bad}" if bad else ""))
    return ok


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    root = os.path.dirname(here)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--bin", default=os.path.join(root, "target/release/examples/structured"))
    ap.add_argument("--fixtures", default=os.path.join(root, "../shared/fixtures"))
    ap.add_argument("--dir", action="append", default=[])
    ap.add_argument("--tol", type=float, default=1e-5, help="max |Δ| / max |logit|")
    a = ap.parse_args()
    print(f"transformers {transformers.__version__}, torch {torch.__version__}")
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        for f in FIXTURES:
            modes = [("layers", "1"), ("neurons", "0.5")]
            if f in LLAMA_FAMILY:
                modes.append(("heads", "0.5"))
            for mode, arg in modes:
                out = os.path.join(tmp, f"{f}-{mode}")
                subprocess.run([a.bin, os.path.join(a.fixtures, f), out, mode, arg], check=True,
                               capture_output=True)
                ok &= check(a.bin, out, a.tol)
        for d in a.dir:
            ok &= check(a.bin, d, a.tol)
    print("all ok" if ok else "FAILED")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
