#!/usr/bin/env bash
# Make the fuzz seeds (fuzz/seeds/<target>/) and the fixed quantized-layout configs the
# harness embeds (crates/shrink-fuzz/layouts/) from the tiny fixtures in ../shared/fixtures,
# with the release binary. Python 3 (standard library only) trims and crafts files.
#
#   cargo build --release -p shrink-cli && fuzz/make-seeds.sh
#
# Seeds are kept small (≤ ~200 KB each): AFL mutates small files much faster.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
S=${SHRINK:-$ROOT/target/release/shrink}
FIX=${SHRINK_FIXTURES:-$ROOT/../shared/fixtures}
W=$(mktemp -d /tmp/shrink-seeds.XXXXXX)
trap 'rm -rf "$W"' EXIT
SEEDS=$ROOT/fuzz/seeds
LAYOUTS=$ROOT/crates/shrink-fuzz/layouts
mkdir -p "$SEEDS" "$LAYOUTS"
for t in gguf safetensors safetensors_index config tokenizer_json chat_template imatrix \
         quantized_layouts peft; do
  rm -rf "${SEEDS:?}/$t"; mkdir -p "$SEEDS/$t"
done
PY="python3 $ROOT/fuzz/seedtool.py"

# Fixture copies with a byte-level tokenizer (ids 0..255, <|im_start|> 256, <|im_end|> 257)
# and a ChatML template, so that GGUF exports and calibrated methods work on them.
for a in llama mistral qwen2 gpt2 gpt_neox; do
  mkdir -p "$W/$a"
  cp "$FIX/tiny-$a"/{config.json,model.safetensors} "$W/$a/"
  chmod u+w "$W/$a"/*
  $PY tokenizer "$W/$a"
done
# Calibration text (raw): pseudo-words.
$PY calib "$W/calib.txt"

# --- gguf: exports of every decoder family in several block types, and re-quantized GGUFs.
$S export "$W/llama" --to gguf --type q4_0 -o "$SEEDS/gguf/llama-q4_0.gguf" >/dev/null
$S export "$W/llama" --to gguf --type q8_0 -o "$W/llama-q8_0.gguf" >/dev/null
$S export "$W/mistral" --to gguf --type q8_0 -o "$SEEDS/gguf/mistral-q8_0.gguf" >/dev/null
$S export "$W/qwen2" --to gguf --type q4_k_m -o "$SEEDS/gguf/qwen2-q4_k_m.gguf" >/dev/null
$S export "$W/gpt2" --to gguf --type q5_1 -o "$SEEDS/gguf/gpt2-q5_1.gguf" >/dev/null
$S export "$W/gpt_neox" --to gguf --type q4_1 -o "$SEEDS/gguf/gpt_neox-q4_1.gguf" >/dev/null
$S export "$W/llama" --to gguf --type iq4_nl -o "$SEEDS/gguf/llama-iq4_nl.gguf" >/dev/null
$S quantize "$W/llama-q8_0.gguf" --method q2_k -o "$SEEDS/gguf/llama-q2_k.gguf" >/dev/null
$S quantize "$W/llama-q8_0.gguf" --method q5_0 -o "$SEEDS/gguf/llama-q5_0.gguf" >/dev/null
# A GGUF of float tensors only (layer 0), so F32/F16 readers are seeded too.
$PY gguf-subset "$W/llama-q8_0.gguf" "$SEEDS/gguf/llama-f32-norms.gguf"

# --- safetensors: the fixture's tensors with the embedding cut to 64 rows (the harness's config
# says vocab_size 64), whole in f16, layer 0 and the norms in f32, the norms in bf16; plus one
# file holding every dtype.
$PY st-subset "$FIX/tiny-llama/model.safetensors" "$SEEDS/safetensors/llama-v64-f16.safetensors" f16 all
$PY st-subset "$FIX/tiny-llama/model.safetensors" "$SEEDS/safetensors/llama-layer0-f32.safetensors" f32 layer0
$PY st-subset "$FIX/tiny-llama/model.safetensors" "$SEEDS/safetensors/llama-norms-bf16.safetensors" bf16 norms
$PY st-dtypes "$SEEDS/safetensors/every-dtype.safetensors"

# --- safetensors_index: the index of the two shards the harness writes, and variants.
$PY index "$FIX/tiny-llama/model.safetensors" "$SEEDS/safetensors_index"

# --- config: every architecture's config.json, and variants.
for a in llama mistral qwen2 gpt2 gpt_neox bert_cls distilbert_cls; do
  cp "$FIX/tiny-$a/config.json" "$SEEDS/config/$a.json"
done
$PY config-variants "$SEEDS/config"

# --- tokenizer_json / chat_template: the byte-level fixture tokenizer, the encoder tokenizer of
# assets/all-MiniLM-L6-v2 and SmolLM2's (from the GGUF in assets/) trimmed to fit; templates.
cp "$W/llama/tokenizer.json" "$SEEDS/tokenizer_json/byte-level.json"
if [ -f "$ROOT/assets/all-MiniLM-L6-v2/tokenizer.json" ]; then
  $PY trim-tokenizer "$ROOT/assets/all-MiniLM-L6-v2/tokenizer.json" "$SEEDS/tokenizer_json/minilm-wordpiece-trimmed.json" 1500
fi
if [ -f "$ROOT/assets/SmolLM2-135M-Instruct.Q4_1.gguf" ]; then
  $PY gguf-tokenizer "$ROOT/assets/SmolLM2-135M-Instruct.Q4_1.gguf" "$W/smol"
  $PY trim-tokenizer "$W/smol/tokenizer.json" "$SEEDS/tokenizer_json/smollm2-bpe-trimmed.json" 1500
  cp "$W/smol/chat_template.jinja" "$SEEDS/chat_template/smollm2.jinja"
fi
$PY templates "$SEEDS/chat_template"

# --- imatrix: legacy .dat written by shrink, and a GGUF imatrix crafted from it.
$S imatrix "$W/llama" --calib "$W/calib.txt" --calib-format raw --calib-samples 4 --calib-seqlen 64 \
  -o "$SEEDS/imatrix/llama.dat" >/dev/null
$S imatrix "$W/gpt2" --calib "$W/calib.txt" --calib-format raw --calib-samples 2 --calib-seqlen 32 \
  -o "$SEEDS/imatrix/gpt2.dat" >/dev/null
$PY imatrix-gguf "$SEEDS/imatrix/llama.dat" "$SEEDS/imatrix/llama.imatrix.gguf"

# --- quantized_layouts: tiny-llama in every layout shrink reads. Each layout's config.json
# (and quantize_config.json) goes to crates/shrink-fuzz/layouts/<n>-<name>/; the seed is the
# layout's number byte then its safetensors trimmed to layer 0 (dense tensors dropped).
q() { # name, then the command's arguments after MODEL (output appended)
  local name=$1; shift
  "$S" "$@" -o "$W/q-$name" >/dev/null 2>&1 || { echo "layout $name failed: $*" >&2; exit 1; }
}
q gptq quantize "$W/llama" --method gptq --bits 4 --group-size 32 --calib "$W/calib.txt" --calib-format raw --calib-samples 4 --calib-seqlen 64
q gptq-actorder quantize "$W/llama" --method gptq --bits 4 --group-size 16 --act-order group --calib "$W/calib.txt" --calib-format raw --calib-samples 4 --calib-seqlen 64
q gptq-int3-sym export "$W/llama" --to gptq --type int3 --group-size 32 --sym
q awq export "$W/llama" --to awq --type int4 --group-size 32
q bnb-nf4 quantize "$W/llama" --method nf4
q bnb-fp4-dq quantize "$W/llama" --method fp4 --double-quant
q bnb-int8 quantize "$W/llama" --method llm-int8
q ct-pack-int4 quantize "$W/llama" --method int --bits 4 --group-size 32
q ct-naive-int8-channel quantize "$W/llama" --method zeropoint-int8 --granularity channel
q ct-int6-tensor quantize "$W/llama" --method int --bits 6 --granularity tensor --sym
q ct-w8a8 quantize "$W/llama" --method dynamic-int8
q hqq-4 quantize "$W/llama" --method hqq --bits 4 --group-size 32
q hqq-axis0 quantize "$W/llama" --method hqq --bits 2 --group-size 16 --axis 0
q sparse-bitmask prune "$W/llama" --method magnitude --sparsity 0.5 --format sparse-bitmask
q sparse-24 prune "$W/llama" --method magnitude --sparsity 0.5 --pattern 2:4 --format sparse-24-bitmask
$PY layouts "$W" "$LAYOUTS" "$SEEDS/quantized_layouts" \
  gptq gptq-actorder gptq-int3-sym awq bnb-nf4 bnb-fp4-dq bnb-int8 ct-pack-int4 \
  ct-naive-int8-channel ct-int6-tensor ct-w8a8 hqq-4 hqq-axis0 sparse-bitmask sparse-24

# --- peft: an adapter trained by shrink qlora (over the int4 layout), and a crafted one; the seed is
# adapter_config.json, a NUL byte, then adapter_model.safetensors.
$S qlora "$W/q-ct-pack-int4" --text "$W/calib.txt" --text-format raw --steps 1 --seq-len 16 --batch 1 \
  --rank 4 -o "$W/adapter" >/dev/null 2>&1
$PY peft "$W/adapter" "$SEEDS/peft"

# --- dictionaries
$PY dicts "$ROOT/fuzz/dict"
du -ab "$SEEDS" | sort -n | tail -5
