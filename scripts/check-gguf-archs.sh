#!/usr/bin/env bash
# shrink's GGUF export of every architecture it maps, checked with llama.cpp's gguf-py:
#
#   scripts/check-gguf-archs.sh PYTHON      (from the repository root; PYTHON has gguf and numpy)
#
# Each tiny fixture of ../shared/fixtures (llama, mistral, qwen2, gpt2, gpt_neox) is copied to a
# temporary directory with a byte-level BPE tokenizer.json (256 tokens, GPT-2's byte-to-unicode
# map, no merges: the one of crates/shrink-cli/tests/common/mod.rs), exported with
# `target/release/shrink export DIR --to gguf --type T --pre gpt-2` for T in f32, f16, q8_0, and
# checked with scripts/check-gguf.py --hf DIR: the metadata keys and types llama.cpp's loader
# reads for the architecture, exactly the tensors (names, ggml shapes) it creates, F32 1-D/norm
# tensors, finite dequantized values, the hyperparameters convert_hf_to_gguf.py derives from
# config.json, and every tensor equal to the fixture's safetensors tensor under the converter's
# transforms re-implemented in numpy (llama Q/K permutation, GPT-2 Conv1D transpose, GPT-NeoX QKV
# regrouping): bit-exact in F32/F16, byte-exact against gguf-py's Q8_0 quantizer.
#
# The fixture tokenizer has no merges; shrink still writes tokenizer.ggml.merges (empty), which
# llama.cpp's vocabulary loader requires for a gpt2 tokenizer.
#
# One line per file; exit status 1 if any export or check fails. Needs target/release/shrink
# (cargo build --release -p shrink-cli).
set -uo pipefail
cd "$(dirname "$0")/.."
py=${1:?usage: scripts/check-gguf-archs.sh PYTHON}
bin=target/release/shrink
fixtures=../shared/fixtures
[ -x "$bin" ] || { echo "error: $bin missing: cargo build --release -p shrink-cli" >&2; exit 2; }
[ -d "$fixtures" ] || { echo "error: $fixtures not found beside the checkout" >&2; exit 2; }
"$py" -c 'import gguf, numpy' 2>/dev/null || { echo "error: $py lacks gguf/numpy (pip install gguf numpy)" >&2; exit 2; }

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
archs="llama mistral qwen2 gpt2 gpt_neox"
for a in $archs; do
  cp -r "$fixtures/tiny-$a" "$tmp/tiny-$a" && chmod -R u+w "$tmp/tiny-$a" || exit 2
done
# The byte-level tokenizer: token i is GPT-2's unicode stand-in for byte i.
"$py" - "$tmp" $archs <<'EOF' || exit 2
import json, os, sys
keep = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
chars, n = keep[:], 0
for b in range(256):
    if b not in keep:
        keep.append(b)
        chars.append(256 + n)
        n += 1
vocab = {chr(c): b for b, c in zip(keep, chars)}
assert sorted(vocab.values()) == list(range(256))
level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
tj = {"version": "1.0", "truncation": None, "padding": None, "added_tokens": [], "normalizer": None,
      "pre_tokenizer": level, "post_processor": None, "decoder": level,
      "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                "vocab": vocab, "merges": []}}
for a in sys.argv[2:]:
    with open(os.path.join(sys.argv[1], f"tiny-{a}", "tokenizer.json"), "w") as f:
        json.dump(tj, f)
EOF

failed=0
for a in $archs; do
  dir="$tmp/tiny-$a"
  for t in f32 f16 q8_0; do
    out="$tmp/$a.$t.gguf"
    label=$(printf '%-9s %-5s' "$a" "$t")
    if ! log=$("$bin" export "$dir" --to gguf --type "$t" --pre gpt-2 -o "$out" 2>&1); then
      echo "FAIL $label export failed"
      printf '%s\n' "$log" | sed 's/^/     /'
      failed=1
      continue
    fi
    if log=$("$py" scripts/check-gguf.py "$out" --hf "$dir" 2>&1); then
      echo "ok   $label $(printf '%s\n' "$log" | grep -F "$out: " | sed "s|^$out: ||")"
    else
      echo "FAIL $label $(printf '%s\n' "$log" | grep -c '^FAIL') failures"
      printf '%s\n' "$log" | grep -v '^ok$' | sed 's/^/     /'
      failed=1
    fi
  done
done
if [ "$failed" != 0 ]; then
  echo "check-gguf-archs: FAILED"
  exit 1
fi
echo "check-gguf-archs: all exports pass"
