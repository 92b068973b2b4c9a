#!/usr/bin/env bash
# Fuzz campaigns, one target after another: each target runs SECONDS under afl-fuzz (continuing
# the queue of an earlier campaign in out/TARGET when there is one), then its figures from
# fuzzer_stats are appended to out/campaigns.txt. Needs the binaries of `cargo afl build
# --release` (see README.md).
# Usage: fuzz/campaign.sh SECONDS TARGET...   (e.g. fuzz/campaign.sh 3600 gguf safetensors)
set -euo pipefail
cd "$(dirname "$0")"
secs="${1:?usage: fuzz/campaign.sh SECONDS TARGET...}"
shift
mkdir -p out
dict() {
  case "$1" in
    gguf | imatrix) echo dict/gguf.dict ;;
    safetensors) echo dict/safetensors.dict ;;
    chat_template) echo dict/jinja.dict ;;
    *) echo dict/json.dict ;;
  esac
}
for t in "$@"; do
  [ -x "target/release/$t" ] || { echo "no target/release/$t: cargo afl build --release" >&2; exit 1; }
  input=(-i "seeds/$t")
  [ -d "out/$t/default/queue" ] && input=(-i -)
  start=$(date -u +%FT%TZ)
  AFL_SKIP_CPUFREQ=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1 AFL_NO_UI=1 AFL_IGNORE_SEED_PROBLEMS=1 \
    cargo afl fuzz "${input[@]}" -o "out/$t" -x "$(dict "$t")" -m 1024 -t 2000 -V "$secs" \
    "target/release/$t" >"out/$t.log" 2>&1 || true
  s="out/$t/default/fuzzer_stats"
  get() { awk -v k="$1" '$1 == k {print $3}' "$s"; }
  echo "$t | $start | $(get run_time) s | $(get execs_done) execs | $(get execs_per_sec)/s | crashes $(get saved_crashes) | hangs $(get saved_hangs) | coverage $(get bitmap_cvg)" \
    | tee -a out/campaigns.txt
done
