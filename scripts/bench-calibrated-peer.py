"""Time llm-compressor's GPTQ, AWQ, SparseGPT and Wanda on SmolLM2 with the calibration shrink
uses, for a side-by-side comparison with `shrink quantize --method gptq|awq --json` and
`shrink prune --method sparsegpt|wanda --json` (their `seconds` and `quantize_seconds`) on the
same machine, same threads.

  GPTQ: GPTQModifier, 4-bit asymmetric groups of 64 (`W4A16_ASYM` with group_size 64),
        dampening 0.01, static act-order ("static": shrink's default)
  AWQ:  AWQModifier, 4-bit asymmetric groups of 64, its default mappings for Llama
  sparsegpt[-2of4], wanda[-2of4]: SparseGPTModifier / WandaPruningModifier, sparsity 0.5
        (mask_structure "0:0", or "2:4"), block size 128 and dampening 0.01 (SparseGPT's
        defaults), every Linear of the decoder layers (the tied lm_head ignored)

Calibration: the lee-ppl-v1 calibration documents (lines 0..149 of the Lee corpus, stripped,
joined with blank lines), tokenized with the model's tokenizer, SAMPLES windows of SEQLEN tokens
at random starts (numpy seed 0, or CALIB_SEED). shrink draws its own windows from the same text with its own
generator, so the two runs see the same amount of the same text, not the same windows.

Usage: python scripts/bench-calibrated-peer.py F32_HF_DIR LEE_CORPUS METHOD OUT_DIR
       [SAMPLES SEQLEN THREADS]
(F32_HF_DIR from `shrink convert assets/SmolLM2-135M-Instruct.Q4_1.gguf --dtype f32 -o DIR`;
defaults 16 samples of 512 tokens, 2 threads). Needs llmcompressor (tested with 0.14.0.1,
torch 2.14.0, transformers 5.17.0). Prints the wall seconds of `oneshot` alone and of the
whole script. With CALIB_IDS_OUT=FILE the windows are also written as token ids, which
`shrink prune|quantize ... --calib FILE --calib-format ids` takes as its samples exactly.
"""
import json
import os
import sys
import time

t_script = time.perf_counter()
import numpy as np  # noqa: E402
import torch  # noqa: E402

path, corpus, method, out = sys.argv[1:5]
samples = int(sys.argv[5]) if len(sys.argv) > 5 else 16
seqlen = int(sys.argv[6]) if len(sys.argv) > 6 else 512
threads = int(sys.argv[7]) if len(sys.argv) > 7 else 2
torch.set_num_threads(threads)

from datasets import Dataset  # noqa: E402
from llmcompressor import oneshot  # noqa: E402
from llmcompressor.modifiers.awq import AWQModifier  # noqa: E402
from llmcompressor.modifiers.quantization import GPTQModifier  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

docs = [line.strip() for line in open(corpus, encoding="utf-8").read().split("\n")]
calib_text = "\n\n".join(docs[:150])
tok = AutoTokenizer.from_pretrained(path)
ids = tok(calib_text, add_special_tokens=False)["input_ids"]
rng = np.random.default_rng(int(os.environ.get("CALIB_SEED", "0")))
starts = rng.integers(0, len(ids) - seqlen, size=samples)
rows = [ids[s : s + seqlen] for s in starts]
if os.environ.get("CALIB_IDS_OUT"):
    # The windows as token ids, for `shrink ... --calib FILE --calib-format ids` (the same samples).
    with open(os.environ["CALIB_IDS_OUT"], "w") as f:
        json.dump([[int(i) for i in r] for r in rows], f)
ds = Dataset.from_dict({"input_ids": rows, "attention_mask": [[1] * seqlen for _ in rows]})

weights = {"num_bits": 4, "type": "int", "symmetric": False, "strategy": "group", "group_size": 64}
if method == "gptq":
    weights["actorder"] = "static"
    recipe = GPTQModifier(
        ignore=["lm_head"],
        config_groups={"g": {"targets": ["Linear"], "weights": weights}},
        dampening_frac=0.01,
    )
elif method == "awq":
    recipe = AWQModifier(
        ignore=["lm_head"],
        config_groups={"g": {"targets": ["Linear"], "weights": weights}},
    )
elif method.split("-")[0] in ("sparsegpt", "wanda"):
    from llmcompressor.modifiers.pruning import WandaPruningModifier  # noqa: E402
    from llmcompressor.modifiers.pruning.sparsegpt import SparseGPTModifier  # noqa: E402

    structure = "2:4" if method.endswith("-2of4") else "0:0"
    # `re:.*lm_head`: with targets ["Linear"] each Linear is its own "layer" and plain
    # "lm_head" does not match (SmolLM2's head is tied to the embedding, which it would prune).
    if method.startswith("sparsegpt"):
        recipe = SparseGPTModifier(
            sparsity=0.5, mask_structure=structure, block_size=128, dampening_frac=0.01,
            ignore=["re:.*lm_head"],
        )
    else:
        recipe = WandaPruningModifier(
            sparsity=0.5, mask_structure=structure, ignore=["re:.*lm_head"]
        )
else:
    sys.exit(f"unknown method {method!r}: gptq, awq, sparsegpt[-2of4] or wanda[-2of4]")

# llm-compressor pins the cached activations for faster host-to-GPU copies, which needs a CUDA
# driver; on a CPU-only machine pinning is skipped (as peers.md's "nopin" run did).
from llmcompressor.pipelines.cache import IntermediatesCache  # noqa: E402

IntermediatesCache.pin_memory = lambda self, *args, **kwargs: None
model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
t = time.perf_counter()
oneshot(
    model=model,
    dataset=ds,
    recipe=recipe,
    max_seq_length=seqlen,
    num_calibration_samples=samples,
    output_dir=out,
)
oneshot_s = time.perf_counter() - t
print(
    f"llmcompressor {method}: oneshot {oneshot_s:.1f} s, script {time.perf_counter() - t_script:.1f} s, "
    f"{samples} x {seqlen} tokens, {threads} threads, torch {torch.__version__}"
)
