#!/usr/bin/env bash
# Peak RSS of `shrink convert`, `quantize` and `export` against model size: converts SmolLM2 (30
# layers) and a 3x deeper copy of it (90 layers, layers repeated) from f32 to bf16, and quantizes
# both to NF4 and int4. Streaming means the two peaks are the
# same: bounded by the largest tensor plus a fixed overhead, whatever the number of layers.
# Needs: assets fetched, a release build, and PYTHON with numpy + safetensors (for the deep copy).
set -euo pipefail
cd "$(dirname "$0")/.."
py="${PYTHON:-python3}"
bin=target/release/shrink
work="${WORK:-$(mktemp -d)}"
mkdir -p "$work"
trap 'rm -rf "$work"' EXIT
cargo build --release -q -p shrink-cli
rss() { /usr/bin/time -f "%M" "$@" 2>&1 >/dev/null | tail -n1; }

$bin convert assets/SmolLM2-135M-Instruct.Q4_1.gguf --dtype f32 -o "$work/f32-30" --no-check >/dev/null
"$py" - "$work/f32-30" "$work/f32-90" <<'PY'
import json, os, sys, shutil
from safetensors.numpy import load_file, save_file
src, dst = sys.argv[1:3]
os.makedirs(dst)
t = load_file(os.path.join(src, "model.safetensors"))
cfg = json.load(open(os.path.join(src, "config.json")))
n = cfg["num_hidden_layers"]
out = {k: v for k, v in t.items() if not k.startswith("model.layers.")}
for i in range(3 * n):
    for k, v in t.items():
        p = f"model.layers.{i % n}."
        if k.startswith(p):
            out[f"model.layers.{i}." + k[len(p):]] = v
save_file(out, os.path.join(dst, "model.safetensors"), metadata={"format": "pt"})
cfg["num_hidden_layers"] = 3 * n
json.dump(cfg, open(os.path.join(dst, "config.json"), "w"))
for f in ("tokenizer.json", "tokenizer_config.json"):
    shutil.copy(os.path.join(src, f), dst)
PY
largest=$($bin inspect "$work/f32-90" --tensors --json | "$py" -c 'import json,sys; d=json.load(sys.stdin); print(max(t["bytes"] for t in d["tensor_list"]))')
for m in f32-30 f32-90; do
  size=$(stat -c %s "$work/$m/model.safetensors")
  kb=$(rss $bin convert "$work/$m" --dtype bf16 -o "$work/$m-bf16" --no-check)
  echo "convert $m -> bf16: input $((size / 1048576)) MiB, largest tensor $((largest / 1048576)) MiB, peak RSS $((kb / 1024)) MiB"
done
for m in f32-30 f32-90; do
  for q in "nf4 --double-quant" "int --bits 4 --group-size 64"; do
    # shellcheck disable=SC2086
    kb=$(rss $bin quantize "$work/$m" --method $q -o "$work/$m-q-$RANDOM")
    echo "quantize $m --method $q: peak RSS $((kb / 1024)) MiB"
  done
done
# Calibrated and optimised methods go layer by layer: peak RSS = one layer + the calibration
# activations, whatever the depth (4 samples of 512 tokens here, to keep the 90-layer run short).
for m in f32-30 f32-90; do
  for q in "gptq --bits 4 --group-size 64 --calib assets/lee_background.cor --calib-samples 4" \
           "hqq --bits 4 --group-size 64"; do
    # shellcheck disable=SC2086
    kb=$(rss $bin quantize "$work/$m" --method $q -o "$work/$m-q-$RANDOM")
    echo "quantize $m --method $q: peak RSS $((kb / 1024)) MiB"
  done
done
# Export streams too: one tensor read, converted and written at a time.
for m in f32-30 f32-90; do
  for t in f16 q4_k_m; do
    kb=$(rss $bin export "$work/$m" --to gguf --type $t -o "$work/$m-$t.gguf")
    echo "export $m --to gguf --type $t: peak RSS $((kb / 1024)) MiB"
  done
  # Ecosystem safetensors layouts, and a quantized checkpoint exported on (repacked / dequantized).
  kb=$(rss $bin export "$work/$m" --to gptq --type int4 -o "$work/$m-gptq")
  echo "export $m --to gptq --type int4: peak RSS $((kb / 1024)) MiB"
  kb=$(rss $bin export "$work/$m-gptq" --to compressed-tensors -o "$work/$m-gptq-ct")
  echo "export $m-gptq --to compressed-tensors (repacked): peak RSS $((kb / 1024)) MiB"
  kb=$(rss $bin export "$work/$m-gptq" --to gguf --type q4_k_m -o "$work/$m-gptq.gguf")
  echo "export $m-gptq --to gguf --type q4_k_m (dequantized): peak RSS $((kb / 1024)) MiB"
done
kb=$(rss $bin convert assets/SmolLM2-135M-Instruct.Q4_1.gguf --dtype f32 -o "$work/gguf-f32" --no-check)
echo "convert GGUF (Q4_1/Q8_0) -> f32 HF: peak RSS $((kb / 1024)) MiB"
kb=$(rss $bin inspect assets/SmolLM2-135M-Instruct.Q4_1.gguf)
echo "baseline (inspect, no tensor read): peak RSS $((kb / 1024)) MiB"
# Pruning goes layer by layer too (SparseGPT and Wanda, 4 samples of 512 tokens).
for m in f32-30 f32-90; do
  for p in "sparsegpt --sparsity 0.5" "wanda --pattern 2:4"; do
    # shellcheck disable=SC2086
    kb=$(rss $bin prune "$work/$m" --method $p --calib assets/lee_background.cor --calib-samples 4 -o "$work/$m-p-$RANDOM")
    echo "prune $m --method $p: peak RSS $((kb / 1024)) MiB"
  done
done
