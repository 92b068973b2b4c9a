#!/usr/bin/env bash
# shrink's GGUF export against llama.cpp itself, side by side (not part of CI: it downloads
# llama.cpp's source, 77 MB, and builds two of its tools, ~10 min on 2 cores).
#
# 1. llama.cpp's own converter (convert_hf_to_gguf.py) and `shrink export --to gguf --type f32`
#    on the same HF directories: SmolLM2 (the asset converted to HF f32) and the five tiny
#    fixtures (llama, mistral, qwen2, gpt2, gpt_neox, with a byte-level tokenizer). Tensors must
#    be identical (names, order, types, bytes); metadata differences are listed.
# 2. llama.cpp's llama-perplexity on shrink's exports: SmolLM2 F16 and Q4_K_M (the latter
#    against llama.cpp's own converter + llama-quantize Q4_K_M), and each fixture's F32 export.
# 3. Time and peak RSS of both pipelines side by side (HF f32 -> GGUF F16, -> Q4_K_M).
#
# llama.cpp comes from the sdist of llama-cpp-python (`pip download --no-binary`, its
# vendor/llama.cpp), cached in target/llamacpp. PYTHON must have pip, torch, transformers,
# sentencepiece, numpy and gguf.
# Usage: PYTHON=/path/to/venv/bin/python scripts/compare-llamacpp.sh
set -euo pipefail
cd "$(dirname "$0")/.."
py="${PYTHON:-python3}"
bin=target/release/shrink
cargo build --release -q -p shrink-cli
# shellcheck source=scripts/llamacpp.sh
. scripts/llamacpp.sh
llamacpp_build llama-perplexity llama-quantize
work="${WORK:-$(mktemp -d)}"
mkdir -p "$work"
trap 'rm -rf "$work"' EXIT

# The fixtures with a byte-level tokenizer (and the config keys the converter still reads).
"$py" - "$work" <<'PY'
import json, os, shutil, sys
work = sys.argv[1]
bs = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
cs, n = bs[:], 0
for b in range(256):
    if b not in bs:
        bs.append(b); cs.append(256 + n); n += 1
chars = dict(zip(bs, cs))
vocab = {chr(chars[b]): b for b in range(256)}
for name in ["llama", "mistral", "qwen2", "gpt2", "gpt_neox"]:
    src, dst = f"../shared/fixtures/tiny-{name}", os.path.join(work, name)
    os.makedirs(dst)
    for f in os.listdir(src):
        if f != "reference.safetensors":
            shutil.copy(os.path.join(src, f), dst)
    bl = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    tj = {"version": "1.0", "truncation": None, "padding": None, "added_tokens": [],
          "normalizer": None, "pre_tokenizer": bl, "post_processor": None, "decoder": bl,
          "model": {"type": "BPE", "dropout": None, "unk_token": None,
                    "continuing_subword_prefix": None, "end_of_word_suffix": None,
                    "fuse_unk": False, "byte_fallback": False, "vocab": vocab, "merges": []}}
    json.dump(tj, open(os.path.join(dst, "tokenizer.json"), "w"))
    if name == "gpt2":  # transformers 5 dropped n_ctx; the converter reads it
        p = os.path.join(dst, "config.json")
        c = json.load(open(p)); c["n_ctx"] = c["n_positions"]; json.dump(c, open(p, "w"))
PY
"$bin" export assets/SmolLM2-135M-Instruct.Q4_1.gguf --to hf --type f32 -o "$work/smollm2" >/dev/null
status=0
for m in smollm2 llama mistral qwen2 gpt2 gpt_neox; do
  pre=(); [ "$m" = smollm2 ] || pre=(--pre gpt-2)
  "$bin" export "$work/$m" --to gguf --type f32 "${pre[@]}" -o "$work/$m-shrink.gguf" >/dev/null
  "$py" scripts/llamacpp-convert.py "$lc" "$work/$m" --outtype f32 --outfile "$work/$m-llamacpp.gguf" >/dev/null 2>&1
  echo "== $m: shrink export vs llama.cpp convert_hf_to_gguf.py"
  "$py" scripts/compare-gguf.py "$work/$m-shrink.gguf" "$work/$m-llamacpp.gguf" || status=1
done

echo "== llama.cpp llama-perplexity (8 chunks of 512 tokens of the Lee corpus) on SmolLM2"
"$bin" export "$work/smollm2" --to gguf --type f16 -o "$work/shrink-f16.gguf" >/dev/null
"$bin" export "$work/smollm2" --to gguf --type q4_k_m -o "$work/shrink-q4_k_m.gguf" >/dev/null
"$lcbin/llama-quantize" "$work/smollm2-llamacpp.gguf" "$work/llamacpp-q4_k_m.gguf" Q4_K_M 2 >/dev/null 2>&1
for f in shrink-f16 shrink-q4_k_m llamacpp-q4_k_m; do
  r=$("$lcbin/llama-perplexity" -m "$work/$f.gguf" -f assets/lee_background.cor -c 512 -b 512 \
      --chunks 8 -t 2 2>&1 | grep -o 'Final estimate: PPL = [0-9.]* +/- [0-9.]*' || echo "FAILED to run")
  echo "$f: $r"
done
echo "== llama-perplexity on each fixture's F32 export (4 chunks of 64 tokens)"
head -c 20000 assets/lee_background.cor > "$work/short.txt"
for m in llama mistral qwen2 gpt2 gpt_neox; do
  r=$("$lcbin/llama-perplexity" -m "$work/$m-shrink.gguf" -f "$work/short.txt" -c 64 -b 64 \
      --chunks 4 -t 2 2>&1 | grep -o 'Final estimate: PPL = [0-9.]*' || echo "FAILED to load/run")
  echo "$m (shrink export): $r"
done
echo "== time and peak RSS side by side, SmolLM2 HF f32 -> GGUF (3 runs each)"
t() { /usr/bin/time -o "$work/t" -f "%e s, %M KB" "$@" >/dev/null 2>&1; cat "$work/t"; }
for i in 1 2 3; do
  echo "run $i: shrink export f16 [$(t "$bin" export "$work/smollm2" --to gguf --type f16 -o "$work/a-$i.gguf")]" \
    "convert_hf_to_gguf.py f16 [$(t "$py" "$lc/convert_hf_to_gguf.py" "$work/smollm2" --outtype f16 --outfile "$work/b-$i.gguf")]" \
    "shrink export q4_k_m [$(t "$bin" export "$work/smollm2" --to gguf --type q4_k_m -o "$work/c-$i.gguf")]" \
    "llama-quantize f16 -> q4_k_m [$(t "$lcbin/llama-quantize" "$work/b-$i.gguf" "$work/d-$i.gguf" Q4_K_M 2)]"
  rm -f "$work"/[abcd]-"$i".gguf
done
exit $status
