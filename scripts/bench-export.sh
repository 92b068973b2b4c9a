#!/usr/bin/env bash
# Full-protocol (74 windows) check that export keeps quality: SmolLM2 (the Q4_1 asset,
# dequantized to float32) exported to GGUF F16 must score within 0.05 % of float32; a model
# already quantized to Q8_0 / Q4_0 / Q4_1, dequantized to an HF float32 directory and exported
# again to the same type, must score exactly what it scored before (Q4_K_M: llama.cpp's K-quant
# searches are not idempotent; a Q4_K_M GGUF exported to Q4_K_M is copied as stored).
# Usage: scripts/bench-export.sh [WINDOWS]   (default: all; needs assets fetched)
set -euo pipefail
cd "$(dirname "$0")/.."
bin=target/release/shrink
text=assets/lee_background.cor
asset=assets/SmolLM2-135M-Instruct.Q4_1.gguf
work="${WORK:-$(mktemp -d)}"
mkdir -p "$work"
trap 'rm -rf "$work"' EXIT
cargo build --release -q -p shrink-cli
win=()
[ $# -ge 1 ] && win=(--max-windows "$1")
ppl() { $bin eval "$1" --text $text "${win[@]}" --json | python3 -c 'import json,sys; print("%.6f" % json.load(sys.stdin)["ppl"])'; }
gexport() { $bin export "$1" --to gguf --type "$2" -o "$3" --json >/dev/null; }

$bin export $asset --to hf --type f32 -o "$work/f32" >/dev/null
base=$(ppl "$work/f32")
echo "float32 (the asset dequantized)      ppl $base"
echo "asset Q4_1 GGUF                      ppl $(ppl $asset)"
gexport "$work/f32" f16 "$work/f16.gguf"
f16=$(ppl "$work/f16.gguf")
echo "export --type f16                    ppl $f16  ($(python3 -c "print('%+.4f %%' % (100*($f16/$base-1)))"))"
gexport "$work/f32" q4_1 "$work/q4_1.gguf"
echo "float32 -> export --type q4_1        ppl $(ppl "$work/q4_1.gguf")  (the asset's own type)"
for ty in q8_0 q4_0 q4_k_m; do
  gexport "$work/f32" $ty "$work/$ty.gguf"
  $bin export "$work/$ty.gguf" --to hf --type f32 -o "$work/$ty-f32" >/dev/null
  gexport "$work/$ty-f32" $ty "$work/$ty-again.gguf"
  echo "$ty: exported ppl $(ppl "$work/$ty.gguf"), dequantized to HF f32 and exported to $ty again ppl $(ppl "$work/$ty-again.gguf")"
done
# From the GGUF itself, tensors already of the target type are copied (as llama-quantize does).
gexport "$work/q4_k_m.gguf" q4_k_m "$work/q4_k_m-copy.gguf"
echo "q4_k_m GGUF exported to q4_k_m: ppl $(ppl "$work/q4_k_m-copy.gguf")"
