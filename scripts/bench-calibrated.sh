#!/usr/bin/env bash
# Issue 4's measurements on SmolLM2 (lee-ppl-v1, first 24 windows as in peers.md): each method
# is quantized (report JSON: bits/weight, seconds, peak RSS) and then scored; one line per
# method in $OUT/summary.tsv. Usage: scripts/bench-calibrated.sh [OUT_DIR] [METHOD_NAME...]
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-target/bench-calibrated}; shift || true
mkdir -p "$OUT"
cargo build --release -p shrink-cli >/dev/null
S=target/release/shrink
G=assets/SmolLM2-135M-Instruct.Q4_1.gguf
T=assets/lee_background.cor
declare -A M=(
  [gptq-w4g64-asym]="--method gptq --bits 4 --group-size 64 --calib $T"
  [gptq-w4g64-asym-16]="--method gptq --bits 4 --group-size 64 --calib $T --calib-samples 16"
  [gptq-w4g64-sym-16]="--method gptq --bits 4 --group-size 64 --sym --calib $T --calib-samples 16"
  [gptq-w3g64-sym]="--method gptq --bits 3 --group-size 64 --sym --calib $T"
  [gptq-w3g64-sym-16]="--method gptq --bits 3 --group-size 64 --sym --calib $T --calib-samples 16"
  [gptq-w3g64-asym]="--method gptq --bits 3 --group-size 64 --calib $T"
  [awq-w4g64]="--method awq --bits 4 --group-size 64 --calib $T --calib-samples 16"
  [rtn-w4g64-asym]="--method int --bits 4 --group-size 64"
  [rtn-w4g64-sym]="--method int --bits 4 --group-size 64 --sym"
  [rtn-w3g64-asym]="--method int --bits 3 --group-size 64"
  [rtn-w3g64-sym]="--method int --bits 3 --group-size 64 --sym"
  [hqq4-g64-axis1]="--method hqq --bits 4 --group-size 64"
  [hqq3-g64-axis1]="--method hqq --bits 3 --group-size 64"
  [hqq2-g64-axis1]="--method hqq --bits 2 --group-size 64"
  [hqq3-g64-axis0]="--method hqq --bits 3 --group-size 64 --axis 0"
  [hqq2-g64-axis0]="--method hqq --bits 2 --group-size 64 --axis 0"
)
names=("$@"); [ ${#names[@]} -eq 0 ] && names=("${!M[@]}")
for n in "${names[@]}"; do
  rm -rf "$OUT/$n"
  # shellcheck disable=SC2086
  $S quantize $G ${M[$n]} --json -o "$OUT/$n" > "$OUT/$n.quantize.json"
  $S eval "$OUT/$n" --text $T --max-windows 24 --json > "$OUT/$n.eval.json"
  python3 - "$OUT" "$n" <<'PY' | tee -a "$OUT/summary.tsv"
import json, sys
out, n = sys.argv[1], sys.argv[2]
q = json.load(open(f"{out}/{n}.quantize.json")); e = json.load(open(f"{out}/{n}.eval.json"))
print(f"{n}\t{q['bits_per_weight_quantized']:.4f}\t{e['ppl']:.4f}\t{q.get('seconds', q.get('read_and_quantize_seconds', 0)):.1f}\t{q['peak_rss_bytes']/2**20:.0f}")
PY
done
# GGUF presets (with and without an importance matrix from the calibration documents).
[ -f "$OUT/smollm2.imatrix.dat" ] || $S imatrix $G --calib $T -o "$OUT/smollm2.imatrix.dat" --json > "$OUT/imatrix.json"
for p in q4_k_m q3_k_m q2_k; do
  for im in "" imat; do
    f="$OUT/$p${im:+-$im}.gguf"; rm -f "$f"
    $S quantize $G --method $p ${im:+--imatrix $OUT/smollm2.imatrix.dat} --allow-requantize --json -o "$f" > "$f.quantize.json"
    $S eval "$f" --text $T --max-windows 24 --json > "$f.eval.json"
    python3 -c "import json,sys; q=json.load(open('$f.quantize.json')); e=json.load(open('$f.eval.json')); print('$p${im:+-$im}', round(q.get('bits_per_weight', 0), 4), round(e['ppl'], 4), sep='\t')" | tee -a "$OUT/summary.tsv"
  done
done
