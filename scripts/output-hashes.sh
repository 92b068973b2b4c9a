#!/usr/bin/env bash
# SHA-256 of every file shrink writes for SmolLM2 with six methods (nf4 + double quant, int4 g64,
# GPTQ w4 g64 static groups, AWQ w4 g64, HQQ 4-bit g64, Q4_K_M with an importance matrix), the
# run reports (shrink-quantize.json: timings) left out. Run it with two builds of shrink to show
# a change leaves every output byte-identical:
#   scripts/output-hashes.sh /tmp/shrink-before > before.txt
#   scripts/output-hashes.sh target/release/shrink > after.txt && diff before.txt after.txt
# CALIB sets the calibration size of GPTQ, AWQ and imatrix (default the methods' own, 128 × 512;
# AWQ then takes about a quarter of an hour on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."
bin=$(realpath "${1:-target/release/shrink}")
calib=${CALIB:-}
src=$PWD/assets/SmolLM2-135M-Instruct.Q4_1.gguf
text=$PWD/assets/lee_background.cor
[ -s "$src" ] || ./scripts/fetch-assets.sh >&2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# Outputs are named relative to the temporary folder: the Q4_K_M GGUF records the imatrix's path.
cd "$tmp"
q() { "$bin" quantize "$src" -o "$1" "${@:2}" >/dev/null; }
q nf4-dq --method nf4 --double-quant
q int4-g64 --method int --bits 4 --group-size 64
q hqq4-g64 --method hqq --bits 4 --group-size 64
# shellcheck disable=SC2086
q gptq-w4g64 --method gptq --bits 4 --group-size 64 --calib "$text" $calib
# shellcheck disable=SC2086
q awq-w4g64 --method awq --bits 4 --group-size 64 --calib "$text" $calib
# shellcheck disable=SC2086
"$bin" imatrix "$src" --calib "$text" -o imatrix.dat $calib >/dev/null
"$bin" quantize "$src" --method q4_k_m --imatrix imatrix.dat -o q4_k_m.gguf >/dev/null
find . -type f ! -name shrink-quantize.json | sort | xargs sha256sum
