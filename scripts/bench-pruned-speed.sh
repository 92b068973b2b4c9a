#!/usr/bin/env bash
# Speed of pruned models against their base, side by side on this machine: eval's scored tokens/s
# on the first WINDOWS lee-ppl-v1 windows (prompt processing) and generate's tokens/s over TOKENS
# greedy tokens (one token at a time), best of REPS runs each. For unstructured / 2:4 models the
# same model is also run with SHRINK_SPARSE=0 (every weight held dense) to show what shrink's
# sparse runtime form (non-zeros + bitmask) changes.
# Usage: scripts/bench-pruned-speed.sh BASE MODEL... (HF directories); needs a release build and
# assets/lee_background.cor.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=target/release/shrink
windows=${WINDOWS:-4}
tokens=${TOKENS:-128}
reps=${REPS:-3}
best() {  # best (highest) tokens_per_second of REPS runs of: command...
  local b=0 t
  for _ in $(seq "$reps"); do
    t=$("$@" --json 2>/dev/null | python3 -c 'import json,sys; print(json.load(sys.stdin)["tokens_per_second"])')
    b=$(python3 -c "print(max($b, $t))")
  done
  echo "$b"
}
row() {  # label, env assignment, model
  local e g
  e=$(env "$2" bash -c "$(declare -f best); reps=$reps best $bin eval '$3' --text assets/lee_background.cor --max-windows $windows")
  g=$(env "$2" bash -c "$(declare -f best); reps=$reps best $bin generate '$3' --prompt 'The history of the city' --max-tokens $tokens")
  printf '%-48s eval %8.1f tok/s   generate %6.2f tok/s\n' "$1" "$e" "$g"
}
echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) threads"
for m in "$@"; do
  row "$(basename "$m")" SHRINK_SPARSE=1 "$m"
  zeros=$("$bin" inspect "$m" --json 2>/dev/null | python3 -c 'import json,sys; print(json.load(sys.stdin)["sparsity"]["linear_weights"])')
  if python3 -c "import sys; sys.exit(0 if $zeros >= 0.4 else 1)"; then
    row "$(basename "$m") (SHRINK_SPARSE=0: held dense)" SHRINK_SPARSE=0 "$m"
  fi
done
