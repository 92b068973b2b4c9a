#!/usr/bin/env python3
"""Run llama.cpp's own `convert_hf_to_gguf.py` (from a llama.cpp source tree) on an HF directory.

    llamacpp-convert.py LLAMA_CPP_DIR HF_DIR --outtype f32 --outfile OUT.gguf

Two shims, for the tiny test fixtures only: their byte-level tokenizer is not one of the
tokenizer hashes the converter knows (an unknown one is called `gpt-2`, as `shrink export --pre gpt-2`
is told), and transformers 5 moved GPT-NeoX's `rotary_pct` into `rope_parameters`. Needs torch,
transformers, sentencepiece and numpy (scripts/compare-llamacpp.sh).
"""
import sys
root = sys.argv[1]
sys.path.insert(0, root)
sys.argv = ["convert_hf_to_gguf.py"] + sys.argv[2:]
import conversion.base as base
# The fixtures' byte-level tokenizer is not one of the hashes llama.cpp knows: call it gpt-2, as
# shrink's export is told with --pre gpt-2.
_pre = base.TextModel.get_vocab_base_pre
def get_vocab_base_pre(self, tokenizer):
    try:
        return _pre(self, tokenizer)
    except NotImplementedError:
        return "gpt-2"
base.TextModel.get_vocab_base_pre = get_vocab_base_pre
# transformers 5 moved GPT-NeoX's rotary_pct into rope_parameters (the converter predates it).
_load = base.ModelBase.load_hparams
def load_hparams(*a, **k):
    h = _load(*a, **k)
    rp = h.get("rope_parameters") or {}
    if "rotary_pct" not in h and "partial_rotary_factor" in rp:
        h["rotary_pct"] = rp["partial_rotary_factor"]
    return h
base.ModelBase.load_hparams = staticmethod(load_hparams)
import runpy
runpy.run_path(root + "/convert_hf_to_gguf.py", run_name="__main__")
