#!/usr/bin/env bash
# Side by side: the full lee-ppl-v1 evaluation of SmolLM2 by PyTorch/transformers (float32,
# ../shared/tools/reference_eval.py) and by shrink, on the same machine, one after the other.
# Prints the JSON results and the speed ratios: shrink as lee-ppl-v1 computes (float32), and
# with `--int8-activations` (integer weights against int8-rounded activations, as llama.cpp).
# Run it on an otherwise idle machine.
# Needs: assets fetched; PYTHON pointing at a Python with torch, transformers, accelerate, gguf,
# tokenizers and numpy (e.g. a venv outside the repo). THREADS (default 2), MAX_WINDOWS (default all).
set -euo pipefail
cd "$(dirname "$0")/.."
py="${PYTHON:-python3}"
threads="${THREADS:-2}"
mw="${MAX_WINDOWS:-0}"
model=assets/SmolLM2-135M-Instruct.Q4_1.gguf
corpus=assets/lee_background.cor
cargo build --release -q -p shrink-cli
args=()
[ "$mw" != 0 ] && args=(--max-windows "$mw")
echo "== PyTorch/transformers f32, $threads threads"
torch_json=$("$py" ../shared/tools/reference_eval.py "$model" "$corpus" --threads "$threads" ${args[@]+"${args[@]}"} | tail -n1)
echo "$torch_json"
echo "== shrink, $threads threads"
shrink_json=$(RAYON_NUM_THREADS="$threads" target/release/shrink eval "$model" --text "$corpus" --json ${args[@]+"${args[@]}"})
echo "$shrink_json"
echo "== shrink --int8-activations, $threads threads"
int8_json=$(RAYON_NUM_THREADS="$threads" target/release/shrink eval "$model" --text "$corpus" --json --int8-activations ${args[@]+"${args[@]}"})
echo "$int8_json"
"$py" - "$torch_json" "$shrink_json" "$int8_json" <<'PY'
import json, sys
t, s, i = (json.loads(a) for a in sys.argv[1:4])
for name, r in (("shrink", s), ("shrink int8", i)):
    print(f"{name:12} PPL {r['ppl']:.4f} (torch {t['ppl']:.4f}, relative diff {(r['ppl'] - t['ppl']) / t['ppl']:+.2e})"
          f"  seconds {r['seconds']:.1f} (torch {t['seconds']:.1f}) -> {t['seconds'] / r['seconds']:.2f}x PyTorch's speed"
          f"  peak RSS {r['peak_rss_bytes'] / 2**20:.0f} MiB")
PY
