#!/usr/bin/env bash
# Round-to-nearest quantization of SmolLM2, measured: every method is quantized (bits/weight,
# bytes, quantizer seconds), scored on peers.md's comparison set (first 24 windows, KLD and
# top-1 against the f32 model) and, with FULL=1, on the full lee-ppl-v1 protocol; then eval
# throughput and peak RSS of the f32, int8, int4 and NF4 models are measured side by side,
# interleaved ROUNDS times (default 3) over SPEED_WINDOWS windows (default 8).
# Prints one TSV line per measurement. Run it on an otherwise idle machine. Needs the assets.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p shrink-cli
bin=target/release/shrink
gguf=assets/SmolLM2-135M-Instruct.Q4_1.gguf
text=assets/lee_background.cor
out="${OUT:-target/bench-quantized}"
rounds="${ROUNDS:-3}"
sw="${SPEED_WINDOWS:-8}"
rm -rf "$out" && mkdir -p "$out"
methods=(
  "nf4-dq|--method nf4 --double-quant"
  "nf4|--method nf4"
  "fp4|--method fp4"
  "int4-g64|--method int --bits 4 --group-size 64"
  "int8-channel|--method absmax-int8 --granularity channel"
  "llm-int8|--method llm-int8"
  "dynamic-int8|--method dynamic-int8"
  "absmax-int8-tensor|--method absmax-int8"
  "zeropoint-int8-tensor|--method zeropoint-int8"
  "absmax-int8-tensor-LE|--method absmax-int8 --include model.embed_tokens"
  "zeropoint-int8-tensor-LE|--method zeropoint-int8 --include model.embed_tokens"
)
"$bin" convert "$gguf" --dtype f32 -o "$out/f32" --json > /dev/null
field() { python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print(d.get(sys.argv[2]))" "$@"; }
printf 'method\tbits/w quantized\tbits/w model\tmodel bytes\tquantize s\tquantize peak RSS\tPPL24\tKLD24\ttop1-24\tPPL full\n'
for m in "${methods[@]}"; do
  name=${m%%|*}; flags=${m#*|}
  # shellcheck disable=SC2086
  "$bin" quantize "$gguf" $flags -o "$out/$name" --json > "$out/$name.quantize.json"
  "$bin" eval "$out/$name" --base "$out/f32" --text "$text" --max-windows 24 --json > "$out/$name.eval24.json"
  full=-
  if [ "${FULL:-0}" = 1 ]; then
    "$bin" eval "$out/$name" --base "$out/f32" --text "$text" --json > "$out/$name.full.json"
    full="$(field "$out/$name.full.json" ppl) (KLD $(field "$out/$name.full.json" kld))"
  fi
  q="$out/$name.quantize.json"; e="$out/$name.eval24.json"
  printf '%s\t%.4f\t%.4f\t%s\t%.3f\t%s\t%.4f\t%.5f\t%.4f\t%s\n' "$name" \
    "$(field "$q" bits_per_weight_quantized)" "$(field "$q" bits_per_weight_model)" \
    "$(field "$q" model_bytes)" "$(field "$q" quantize_seconds)" "$(field "$q" peak_rss_bytes)" \
    "$(field "$e" ppl)" "$(field "$e" kld)" "$(field "$e" top1_agreement)" "$full"
done
printf '\nround\tmodel\tscored tokens/s\tpeak RSS bytes\tmodel bytes on disk\n'
for r in $(seq "$rounds"); do
  for name in f32 int8-channel int4-g64 nf4-dq llm-int8 dynamic-int8; do
    "$bin" eval "$out/$name" --text "$text" --max-windows "$sw" --json > "$out/$name.speed$r.json"
    printf '%s\t%s\t%.1f\t%s\t%s\n' "$r" "$name" "$(field "$out/$name.speed$r.json" tokens_per_second)" \
      "$(field "$out/$name.speed$r.json" peak_rss_bytes)" "$(stat -c %s "$out/$name/model.safetensors")"
  done
done
