#!/usr/bin/env bash
# Issue 14's quality frontier on SmolLM2 (BENCHMARKS.md "The quality frontier"): each method
# plain and on the rotated model (`--rotate`: QuaRot's R1 + R2, seed 0; on SmolLM2 channels 247 and 507 kept,
# the other 574 rotated by a random orthogonal matrix (574 has no Hadamard order), heads by a
# randomized Hadamard of 64),
# scored on the first 24 lee-ppl-v1 windows and on 16 windows of held-out technical
# documentation (assets/heldout-docs.txt, see fetch-assets.sh), with the quantize time and peak
# RSS. Calibrated methods use the Lee calibration documents (0..149), 128 × 512 tokens unless
# CALIB says otherwise. One line per model into WORK/results.tsv; models already there are
# skipped, so the script resumes.
#
# A qat NAME trains the float model through that grid first (`shrink qat`, 100 steps of 512
# tokens against the float model's outputs, on the same calibration documents), then stores it
# with the grid: PTQ (rtnN) against QAT (qatN) at the same bits.
#
# A NAME ending in -spin is that configuration on the learned rotation (SpinQuant: `shrink
# rotate --learn`, trained SPIN_STEPS steps (default 100) of 512 tokens for the configuration's
# bits at group 64, into WORK/spinB, made once per B and shared), instead of --rotate's random one.
#
# A NAME with no configuration below that names a directory in WORK (e.g. the output of
# `shrink finetune`) is scored as it is.
#
# Usage: scripts/bench-frontier.sh WORK [NAME...]   (no NAME: every configuration below)
# SHRINK=path/to/shrink picks the binary (default target/release/shrink).
set -euo pipefail
cd "$(dirname "$0")/.."
work=$1; shift
bin=${SHRINK:-target/release/shrink}
corpus=assets/lee_background.cor
docs=assets/heldout-docs.txt
mkdir -p "$work"
[ -d "$work/f32" ] || "$bin" convert assets/SmolLM2-135M-Instruct.Q4_1.gguf --dtype f32 -o "$work/f32" --no-check >/dev/null
calib=(--calib "$corpus" ${CALIB:-})
declare -A cfg=(
  [rtn4]="--method int --bits 4 --group-size 64"
  [hqq4]="--method hqq --bits 4 --group-size 64"
  [gptq4]="--method gptq --bits 4 --group-size 64 ${calib[*]}"
  [awq4]="--method awq --bits 4 --group-size 64 ${calib[*]}"
  [rtn3]="--method int --bits 3 --group-size 64"
  [hqq3]="--method hqq --bits 3 --group-size 64"
  [gptq3]="--method gptq --bits 3 --group-size 64 ${calib[*]}"
  [rtn2]="--method int --bits 2 --group-size 64"
  [gptq2]="--method gptq --bits 2 --group-size 64 ${calib[*]}"
  [nf4dq]="--method nf4 --double-quant"
  [bap4]="--method block-ap --bits 4 --group-size 64 --calib-samples 64 ${calib[*]}"
  [bap3]="--method block-ap --bits 3 --group-size 64 --calib-samples 64 ${calib[*]}"
  [bap2]="--method block-ap --bits 2 --group-size 64 --weight-lr 2e-5 --calib-samples 64 ${calib[*]}"
  [gptq4-d10]="--method gptq --bits 4 --group-size 64 --damp 0.1 ${calib[*]}"
  [gptaq4]="--method gptq --gptaq --bits 4 --group-size 64 ${calib[*]}"
  [gptaq4-clip]="--method gptq --gptaq --clip-search --bits 4 --group-size 64 ${calib[*]}"
  [gptaq3]="--method gptq --gptaq --bits 3 --group-size 64 ${calib[*]}"
  [gptaq3-clip]="--method gptq --gptaq --clip-search --bits 3 --group-size 64 ${calib[*]}"
  [gptaq2-clip]="--method gptq --gptaq --clip-search --bits 2 --group-size 64 ${calib[*]}"
)
# Quantization-aware training (shrink qat), the learning rate growing as the grid coarsens.
declare -A qat=(
  [qat4]="--bits 4 --group-size 64 --lr 2e-5"
  [qat3]="--bits 3 --group-size 64 --lr 5e-5"
  [qat2]="--bits 2 --group-size 64 --lr 1e-4"
  [qat-nf4dq]="--grid nf4 --double-quant --lr 2e-5"
)
# A NAME ending in -rot is that configuration with --rotate.
names=("$@")
[ ${#names[@]} -gt 0 ] || names=(rtn4 rtn4-rot hqq4 hqq4-rot gptq4 gptq4-rot gptaq4 gptaq4-clip rtn3 gptq3 gptaq3 gptaq3-clip rtn2 gptq2 gptaq2-clip awq4)
res="$work/results.tsv"
[ -s "$res" ] || printf 'model\tbpw_quantized\tbpw_model\tquant_s\tquant_rss_mib\tlee24_ppl\tdocs16_ppl\n' > "$res"
score() { # score NAME DIR QUANT_JSON
  local name=$1 dir=$2 q=$3
  grep -q "^$name	" "$res" && return 0
  local lee held
  lee=$("$bin" eval "$dir" --text "$corpus" --max-windows 24 --json 2>/dev/null | python3 -c 'import json,sys; print("%.4f" % json.load(sys.stdin)["ppl"])')
  held=$("$bin" eval "$dir" --text "$docs" --protocol raw --max-windows 16 --json 2>/dev/null | python3 -c 'import json,sys; print("%.4f" % json.load(sys.stdin)["ppl"])')
  python3 - "$name" "$q" "$lee" "$held" >> "$res" <<'PY'
import json, sys
name, q, lee, docs = sys.argv[1:5]
r = json.load(open(q)) if q else {}
f = lambda k, fmt: (fmt % r[k]) if r.get(k) is not None else "-"
rss = "%.0f" % (r["peak_rss_bytes"] / 2**20) if r.get("peak_rss_bytes") else "-"
print("\t".join([name, f("bits_per_weight_quantized", "%.3f"), f("bits_per_weight_model", "%.3f"),
                 f("seconds", "%.1f"), rss, lee, docs]))
PY
  tail -n1 "$res"
}
score f32 "$work/f32" ""
for name in "${names[@]}"; do
  base=${name%-rot}
  rot=""
  [ "$base" = "$name" ] || rot="--rotate"
  out="$work/$name"
  src="$work/f32"
  if [ "${name%-spin}" != "$name" ]; then
    base=${name%-spin}
    bits=$(sed -n 's/.*--bits \([0-9]\).*/\1/p' <<< "${cfg[$base]:-}")
    [ -n "$bits" ] || { echo "$name: no --bits in ${base}'s configuration" >&2; exit 2; }
    src="$work/spin$bits"
    if [ ! -d "$src" ]; then
      "$bin" rotate "$work/f32" --learn --bits "$bits" --group-size 64 --text "$corpus" \
        --steps "${SPIN_STEPS:-100}" --json -o "$src" > "$src.json" 2> "$src.err" ||
        "$bin" rotate "$work/f32" --learn --bits "$bits" --group-size 64 --text "$corpus" \
          --steps "${SPIN_STEPS:-100}" --resume --json -o "$src" > "$src.json" 2>> "$src.err"
    fi
  fi
  if [ -n "${qat[$name]:-}" ]; then
    if [ ! -d "$out" ]; then
      # shellcheck disable=SC2086
      "$bin" qat "$work/f32" ${qat[$name]} --text "$corpus" --steps 100 --json -o "$out" \
        > "$work/$name.json" 2> "$work/$name.err" || "$bin" qat "$work/f32" ${qat[$name]} \
        --text "$corpus" --steps 100 --resume --json -o "$out" > "$work/$name.json" 2>> "$work/$name.err"
    fi
    score "$name" "$out" "$out/shrink-quantize.json"
    continue
  fi
  if [ -z "${cfg[$base]:-}" ]; then
    # A model made otherwise (shrink finetune, ...) already in WORK: scored as it is.
    [ -d "$out" ] || { echo "unknown configuration $name" >&2; exit 2; }
    score "$name" "$out" "$out/shrink-quantize.json"
    continue
  fi
  if [ ! -d "$out" ]; then
    # shellcheck disable=SC2086
    "$bin" quantize "$src" ${cfg[$base]} $rot --json -o "$out" > "$work/$name.json" 2> "$work/$name.err"
  fi
  score "$name" "$out" "$out/shrink-quantize.json"
done
column -t -s $'\t' "$res"
