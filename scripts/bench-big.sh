#!/usr/bin/env bash
# A model larger than the machine's memory (issue 16): writes a synthetic Llama with
# Llama-2-7B's shapes (32 layers, hidden 4096, MLP 11008, 32 heads, untied head; the vocabulary
# is SmolLM2's 49152 so that its tokenizer can calibrate and export it) as ~27.5 GB of float32
# safetensors in shards, then runs
#   convert --dtype bf16, quantize --method nf4 --double-quant,
#   quantize --method gptq --calib-samples 4, export --to gguf --type q4_k_m
# on it, recording each command's wall time and peak RSS (GNU time) beside the machine's RAM.
# Each output is deleted once measured (disk: the input plus the largest output, ~42 GB).
# GPTQ runs with --resume: a run killed or stopped (Ctrl-C) continues after its last kept layer
# when the script is run again; its line then says after how many layers it resumed.
# Not part of CI. Usage: [STEPS="quantize-gptq ..."] scripts/bench-big.sh WORK_DIR [PYTHON]
# PYTHON needs numpy and safetensors (default: target/check-venv, made as scripts/test.sh does).
set -euo pipefail
cd "$(dirname "$0")/.."
work="${1:?usage: scripts/bench-big.sh WORK_DIR [PYTHON]}"
py="${2:-target/check-venv/bin/python}"
if [ ! -x "$py" ]; then
  python3 -m venv target/check-venv
  target/check-venv/bin/pip install -q --disable-pip-version-check numpy safetensors
  py=target/check-venv/bin/python
fi
# SHRINK: a binary to measure (default: a fresh release build).
bin="${SHRINK:-target/release/shrink}"
[ -n "${SHRINK:-}" ] || cargo build --release -q -p shrink-cli
mkdir -p "$work"
model="$work/llama-7b-shapes"
results="$work/results.txt"

if [ ! -f "$model/model.safetensors.index.json" ]; then
  rm -rf "$model" "$work/smol"
  # SmolLM2's tokenizer files, from the real model's GGUF.
  $bin convert assets/SmolLM2-135M-Instruct.Q4_1.gguf --dtype bf16 --no-check -o "$work/smol" >/dev/null
  "$py" - "$model" "$work/smol" <<'PY'
import json, os, shutil, sys
import numpy as np
from safetensors.numpy import save_file

out, smol = sys.argv[1:3]
os.makedirs(out)
h, inter, layers, heads, vocab = 4096, 11008, 32, 32, 49152
cfg = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": h,
    "intermediate_size": inter, "num_hidden_layers": layers, "num_attention_heads": heads,
    "num_key_value_heads": heads, "head_dim": h // heads, "vocab_size": vocab,
    "max_position_embeddings": 4096, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
    "tie_word_embeddings": False, "hidden_act": "silu", "torch_dtype": "float32",
    "bos_token_id": 1, "eos_token_id": 2,
}
json.dump(cfg, open(os.path.join(out, "config.json"), "w"), indent=2)
for f in ("tokenizer.json", "tokenizer_config.json"):
    shutil.copy(os.path.join(smol, f), out)
rng = np.random.default_rng(0)

def w(*shape, std=0.02):
    return (rng.standard_normal(shape, dtype=np.float32) * std).astype(np.float32)

# One shard per layer, embedding and head in shards of their own, each written as it is made.
def layer(l):
    p = f"model.layers.{l}."
    return {
        p + "self_attn.q_proj.weight": w(h, h), p + "self_attn.k_proj.weight": w(h, h),
        p + "self_attn.v_proj.weight": w(h, h), p + "self_attn.o_proj.weight": w(h, h),
        p + "mlp.gate_proj.weight": w(inter, h), p + "mlp.up_proj.weight": w(inter, h),
        p + "mlp.down_proj.weight": w(h, inter),
        p + "input_layernorm.weight": np.ones(h, np.float32),
        p + "post_attention_layernorm.weight": np.ones(h, np.float32),
    }

makers = [lambda: {"model.embed_tokens.weight": w(vocab, h)}]
makers += [lambda l=l: layer(l) for l in range(layers)]
makers += [lambda: {"model.norm.weight": np.ones(h, np.float32), "lm_head.weight": w(vocab, h)}]
weight_map, total = {}, 0
for i, make in enumerate(makers):
    tensors = make()
    name = f"model-{i + 1:05d}-of-{len(makers):05d}.safetensors"
    save_file(tensors, os.path.join(out, name), metadata={"format": "pt"})
    for k, v in tensors.items():
        weight_map[k] = name
        total += v.nbytes
    del tensors
json.dump({"metadata": {"total_size": total}, "weight_map": weight_map},
          open(os.path.join(out, "model.safetensors.index.json"), "w"), indent=2)
print(f"wrote {total / 1e9:.2f} GB in {len(makers)} shards")
PY
  rm -rf "$work/smol"
fi

{
  echo "# bench-big $(date -u +%FT%TZ) commit $(git rev-parse --short HEAD)"
  echo "# cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) cores"
  echo "# ram: $(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo)"
  echo "# input: $(du -sb "$model" | cut -f1) bytes ($(ls "$model"/*.safetensors | wc -l) shards)"
  echo "# command | wall s | peak RSS MiB | output bytes"
} | tee -a "$results"

steps="${STEPS:-convert-bf16 quantize-nf4-dq quantize-gptq export-q4_k_m}"
run() {
  local name=$1 out=$2
  shift 2
  case " $steps " in *" $name "*) ;; *) return 0 ;; esac
  rm -rf "$out"
  sync
  if /usr/bin/time -f "%e %M" -o "$work/time.txt" "$bin" "$@" >"$work/$name.log" 2>&1; then
    read -r wall rss <"$work/time.txt"
    resumed=$(grep -o 'resumed .*after [0-9]* finished layers' "$work/$name.log" || true)
    echo "$name | $wall | $((rss / 1024)) | $(du -sb "$out" | cut -f1)${resumed:+ | $resumed}" \
      | tee -a "$results"
  else
    # The last line of GNU time's output holds the figures, the one before it why it stopped.
    echo "$name | failed: $(tail -n 2 "$work/time.txt" | tr '\n' ' ')| $(tail -n 1 "$work/$name.log")" \
      | tee -a "$results"
  fi
  rm -rf "$out"
}

run convert-bf16 "$work/bf16" convert "$model" --dtype bf16 -o "$work/bf16"
run quantize-nf4-dq "$work/nf4" quantize "$model" --method nf4 --double-quant -o "$work/nf4"
run quantize-gptq "$work/gptq" quantize "$model" --method gptq --calib assets/lee_background.cor \
  --calib-samples 4 --resume -o "$work/gptq"
run export-q4_k_m "$work/q4km.gguf" export "$model" --to gguf --type q4_k_m -o "$work/q4km.gguf"
