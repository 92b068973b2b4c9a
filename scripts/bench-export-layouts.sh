#!/usr/bin/env bash
# Full-protocol (74 windows) check that exporting a quantized checkpoint keeps it exactly:
# a GPTQ checkpoint (shrink's, 16 x 512 calibration) and an NF4 (double-quant) one, exported to
# the other ecosystem layouts and to GGUF F32, read back by shrink, must score the same
# perplexity to the last digit; a requantizing export (GPTQ -> GGUF Q4_K_M) is shown for contrast.
# Peak RSS of each export is printed. Usage: scripts/bench-export-layouts.sh [WINDOWS]
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
rss() { /usr/bin/time -f "%M" "$@" 2>&1 >/dev/null | tail -n1; }
ex() { # SRC TO OUT [ARGS...]: export, print peak RSS and the PPL of the result
  local src=$1 to=$2 out=$3; shift 3
  kb=$(rss $bin export "$src" --to "$to" "$@" -o "$out")
  echo "  -> $to $* : ppl $(ppl "$out")  (export peak RSS $((kb / 1024)) MiB)"
}

$bin export $asset --to hf --type f32 -o "$work/f32" >/dev/null
$bin quantize "$work/f32" --method gptq --bits 4 --group-size 64 --calib $text \
  --calib-samples 16 --calib-seqlen 512 -o "$work/gptq" >/dev/null
echo "GPTQ w4 g64 (shrink quantize --method gptq, 16x512): ppl $(ppl "$work/gptq")"
ex "$work/gptq" compressed-tensors "$work/gptq-ct"
ex "$work/gptq" awq "$work/gptq-awq"
ex "$work/gptq-awq" gptq "$work/gptq-awq-gptq"
ex "$work/gptq" gguf "$work/gptq-f32.gguf" --type f32
ex "$work/gptq" gguf "$work/gptq-q4_k_m.gguf" --type q4_k_m
$bin quantize "$work/f32" --method nf4 --double-quant -o "$work/nf4" >/dev/null
echo "NF4 double-quant (bitsandbytes layout): ppl $(ppl "$work/nf4")"
ex "$work/nf4" bitsandbytes "$work/nf4-bnb"
ex "$work/nf4" gguf "$work/nf4-f32.gguf" --type f32
