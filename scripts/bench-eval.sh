#!/usr/bin/env bash
# Side by side: the full lee-ppl-v1 evaluation of SmolLM2 by PyTorch/transformers (float32,
# ../shared/tools/reference_eval.py) and by shrink, on the same machine, one after the other.
# Prints both JSON results and the speed ratio. Run it on an otherwise idle machine.
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
"$py" - "$torch_json" "$shrink_json" <<'PY'
import json, sys
t, s = json.loads(sys.argv[1]), json.loads(sys.argv[2])
print(f"PPL      torch {t['ppl']:.4f}   shrink {s['ppl']:.4f}   (relative diff {(s['ppl'] - t['ppl']) / t['ppl']:+.2e})")
print(f"seconds  torch {t['seconds']:.1f}   shrink {s['seconds']:.1f}   -> shrink is {t['seconds'] / s['seconds']:.2f}x PyTorch's speed")
print(f"shrink peak RSS {s['peak_rss_bytes'] / 2**20:.0f} MiB")
PY
