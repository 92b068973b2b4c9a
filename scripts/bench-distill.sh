#!/usr/bin/env bash
# Issue 13's language-model distillation measurement on SmolLM2 (BENCHMARKS.md "Distillation"):
#   the teacher (30 layers) → a student with 6 layers removed by Block Influence, then
#   (a) distilled: alpha 0.5, T 1, teacher top-64 cached (and at T 2, which did worse);  (b) the same steps with CE only
#   (alpha 0), no teacher;  each scored on the first 24 lee-ppl-v1 evaluation windows and the
#   full protocol, beside the undistilled student and the teacher.
# Then the training speed beside PyTorch's (scripts/bench-distill-peer.py), same student, same
# steps and sequence length, 2 threads: run that part on an otherwise idle machine.
#
# Usage: scripts/bench-distill.sh WORK_DIR [STEPS] [PYTHON_WITH_TORCH]
set -euo pipefail
cd "$(dirname "$0")/.."
work=$1
steps=${2:-250}
py=${3:-}
bin=target/release/shrink
corpus=assets/lee_background.cor
mkdir -p "$work"
[ -d "$work/f32" ] || "$bin" convert assets/SmolLM2-135M-Instruct.Q4_1.gguf --dtype f32 -o "$work/f32" >/dev/null
if [ ! -d "$work/student24" ]; then
  # The undistilled student: 6 of 30 blocks dropped (Block Influence measured on the training
  # text cut into windows of 128 tokens).
  "$bin" distill --teacher "$work/f32" --student-from-teacher layers=24 --text "$corpus" \
    --steps 1 --seq-len 128 --alpha 0 -o "$work/probe" >/dev/null
  cp -r "$work/probe.run/student-init" "$work/student24"
  rm -rf "$work/probe" "$work/probe.run"
fi
common=(--teacher "$work/f32" --student "$work/student24" --text "$corpus" --seq-len 512
        --lr 1e-4 --holdout 2 --json)
long=(--steps "$steps" --eval-every 50 --save-every 50)
[ -d "$work/kd" ] || "$bin" distill "${common[@]}" "${long[@]}" --alpha 0.5 --temperature 1 --teacher-topk 64 -o "$work/kd" > "$work/kd.json"
[ -d "$work/kd-t2" ] || "$bin" distill "${common[@]}" "${long[@]}" --alpha 0.5 --temperature 2 --teacher-topk 64 -o "$work/kd-t2" > "$work/kd-t2.json"
[ -d "$work/ce" ] || "$bin" distill "${common[@]}" "${long[@]}" --alpha 0 -o "$work/ce" > "$work/ce.json"
for m in f32 student24 ce kd kd-t2; do
  echo "== $m"
  "$bin" eval "$work/$m" --text "$corpus" --max-windows 24 | grep -i "ppl"
  "$bin" eval "$work/$m" --text "$corpus" | grep -i "ppl"
done
if [ -n "$py" ]; then
  # Speed: 12 steps each (the first one, warming up, left out of the mean).
  rm -rf "$work/speed" "$work/speed.run"
  "$bin" distill "${common[@]}" --steps 12 --save-every 0 \
    --alpha 0.5 --temperature 2 --teacher-topk 64 -o "$work/speed" > "$work/speed.json"
  python3 - "$work/speed.run/train.jsonl" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])][1:]
print(json.dumps({"tool": "shrink", "tokens_per_s": len(rows) * 512 / sum(512 / r["tokens_per_s"] for r in rows)}))
PY
  grep -o '"peak_rss_mib": [0-9.]*' "$work/speed.json"
  "$py" scripts/bench-distill-peer.py "$work/f32" "$work/student24" \
    ../shared/fixtures/smollm2/tokens.safetensors 12 512 0.5 2 64 1e-4 2
  GRAD_CKPT=1 "$py" scripts/bench-distill-peer.py "$work/f32" "$work/student24" \
    ../shared/fixtures/smollm2/tokens.safetensors 12 512 0.5 2 64 1e-4 2
fi
