#!/usr/bin/env bash
# Issue 15's speed table (BENCHMARKS.md "Speed of the compressed models"): shrink bench beside
# llama.cpp's llama-bench on the same files, side by side in one run, then prompt processing as a
# perplexity run of 8 windows of 512 tokens (llama-perplexity against shrink eval).
#
# Files: SmolLM2 exported by shrink to GGUF F32, Q8_0, Q4_0, Q4_K_M (exports llama.cpp's own
# reader and converter agree with, scripts/compare-llamacpp.sh); shrink's own int4 g64 (decoder
# Linears), int4 / int8 g64 with the embedding (the tied head) quantized too (int4e, int8e),
# NF4 + double quant (nf4dq; nf4dqe with the embedding too), and int4e repacked losslessly to
# the GPTQ and AWQ layouts (whose float16 embedding stays float16: the tied head reads it as
# such), and a GPTQ 4-bit act-order checkpoint (g_idx) — shrink bench only: llama.cpp cannot
# read them; compared with its Q4_0 and Q8_0. Each test: 5 repetitions, 2 threads, pp512 and tg128, as llama-bench's defaults;
# then Q4_0 generation after 1024 cached tokens (-d 1024), shrink's float32 and float16 caches.
# Not part of CI (it builds llama-bench and llama-perplexity from source, ~10 min on 2 cores).
#
# Usage: scripts/bench-speed.sh [WORK]   (THREADS=2 REPS=5 override; results in WORK/speed.tsv)
set -euo pipefail
cd "$(dirname "$0")/.."
work=${1:-target/bench-speed}
threads=${THREADS:-2}
reps=${REPS:-5}
bin=${SHRINK:-target/release/shrink}
[ -n "${SHRINK:-}" ] || cargo build --release -q -p shrink-cli
# shellcheck source=scripts/llamacpp.sh
. scripts/llamacpp.sh
llamacpp_build llama-bench llama-perplexity
mkdir -p "$work"
src=assets/SmolLM2-135M-Instruct.Q4_1.gguf
[ -d "$work/f32" ] || "$bin" convert "$src" --dtype f32 -o "$work/f32" --no-check >/dev/null
for t in f32 q8_0 q4_0 q4_k_m; do
  [ -f "$work/$t.gguf" ] || "$bin" export "$work/f32" --to gguf --type "$t" -o "$work/$t.gguf" >/dev/null
done
[ -d "$work/int4" ] || "$bin" quantize "$work/f32" --method int --bits 4 --group-size 64 -o "$work/int4" >/dev/null
[ -d "$work/nf4dq" ] || "$bin" quantize "$work/f32" --method nf4 --double-quant -o "$work/nf4dq" >/dev/null
# The embedding quantized too (it is also the tied head, read whole for every token), as
# llama.cpp's Q4_0 and Q8_0 files store theirs.
for b in 4 8; do
  [ -d "$work/int${b}e" ] || "$bin" quantize "$work/f32" --method int --bits "$b" --group-size 64 \
    --include model.embed_tokens --include 'model.layers.*' -o "$work/int${b}e" >/dev/null
done
[ -d "$work/nf4dqe" ] || "$bin" quantize "$work/f32" --method nf4 --double-quant \
  --include model.embed_tokens --include 'model.layers.*' -o "$work/nf4dqe" >/dev/null
for l in gptq awq; do
  [ -d "$work/int4e-$l" ] || "$bin" export "$work/int4e" --to "$l" -o "$work/int4e-$l" >/dev/null
done
# GPTQ with act-order (AutoGPTQ's desc_act: g_idx), float32 embedding as quantize leaves it.
[ -d "$work/gptq4-act" ] || "$bin" quantize "$work/f32" --method gptq --bits 4 --group-size 64 \
  --act-order group --calib assets/lee_background.cor --calib-samples 16 --calib-seqlen 256 \
  -o "$work/gptq4-act" >/dev/null
lscpu | grep -E "Model name|^CPU\(s\)|Flags" | sed 's/Flags:.*\(avx512_vnni\).*/Flags: ... \1 .../' | head -3
out="$work/speed.tsv"
printf 'model\ttool\ttest\tavg_ts\tstddev_ts\tbytes_per_token\tbandwidth_GBps\tshare_of_limit\n' > "$out"
bw=""
row() { printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$@" >> "$out"; }
for m in f32.gguf q8_0.gguf q4_0.gguf q4_k_m.gguf int4 int4e int8e nf4dq nf4dqe int4e-gptq int4e-awq gptq4-act; do
  f="$work/$m"
  j=$("$bin" bench "$f" -p 512 -n 128 -r "$reps" -t "$threads" --json 2>/dev/null)
  read -r bpt bw_s pp pps tg tgs share < <(python3 -c '
import json, sys
v = json.load(sys.stdin); r = {t["test"]: t for t in v["results"]}
print(v["bytes_per_token"], v["limit"]["bandwidth_bytes_per_s"], r["pp512"]["avg_ts"], r["pp512"]["stddev_ts"],
      r["tg128"]["avg_ts"], r["tg128"]["stddev_ts"], v["share_of_limit"])' <<< "$j")
  bw=$bw_s
  gb=$(python3 -c "print('%.1f' % ($bw_s / 1e9))")
  row "$m" shrink pp512 "$pp" "$pps" "$bpt" "$gb" -
  row "$m" shrink tg128 "$tg" "$tgs" "$bpt" "$gb" "$share"
  case $m in *.gguf) ;; *) continue ;; esac
  # llama.cpp reads every tensor of the file once per token (SmolLM2's head is its tied
  # token_embd), so its bytes per token are the model size llama-bench reports.
  lj=$("$lcbin/llama-bench" -m "$f" -p 512 -n 128 -r "$reps" -t "$threads" -o json 2>/dev/null)
  python3 -c '
import json, sys
m, bw = sys.argv[1], float(sys.argv[2])
for t in json.load(sys.stdin):
    test = ("pp%d" % t["n_prompt"]) if t["n_prompt"] else ("tg%d" % t["n_gen"])
    share = "%.4f" % (t["avg_ts"] * t["model_size"] / bw) if t["n_gen"] else "-"
    print("\t".join([m, "llama.cpp", test, "%.3f" % t["avg_ts"], "%.3f" % t["stddev_ts"],
                     str(t["model_size"]), "%.1f" % (bw / 1e9), share]))' "$m" "$bw" <<< "$lj" >> "$out"
done
# Prompt processing as a perplexity run: 8 windows of 512 tokens, whole command timed:
t() { /usr/bin/time -f %e "$@" 2>&1 >/dev/null | tail -n1; }
# shrink as lee-ppl-v1 computes (float32), and with int8 activations as llama.cpp computes.
for m in f32 q8_0 q4_0 q4_k_m; do
  ls=$(t "$lcbin/llama-perplexity" -m "$work/$m.gguf" -f assets/lee_background.cor -c 512 -b 512 --chunks 8 -t "$threads")
  ss=$(RAYON_NUM_THREADS=$threads t "$bin" eval "$work/$m.gguf" --text assets/lee_background.cor --max-windows 8)
  si=$(RAYON_NUM_THREADS=$threads t "$bin" eval "$work/$m.gguf" --text assets/lee_background.cor --max-windows 8 --int8-activations)
  row "$m.gguf" llama.cpp ppl8x512_s "$ls" - - - -
  row "$m.gguf" shrink ppl8x512_s "$ss" - - - -
  row "$m.gguf" shrink-int8 ppl8x512_s "$si" - - - -
done
# Generation after a long context (llama-bench's -d): 128 tokens after 1024 already cached,
# shrink with float32 and float16 caches, llama.cpp with its default float16 one.
for d in 1024; do
  for kv in f32 f16; do
    j=$("$bin" bench "$work/q4_0.gguf" -p 0 -n 128 -d "$d" --kv-cache "$kv" -r "$reps" -t "$threads" --no-bandwidth --json 2>/dev/null)
    read -r tg tgs < <(python3 -c 'import json, sys; r = json.load(sys.stdin)["results"][0]; print(r["avg_ts"], r["stddev_ts"])' <<< "$j")
    row q4_0.gguf "shrink-kv-$kv" "tg128@d$d" "$tg" "$tgs" - - -
  done
  lj=$("$lcbin/llama-bench" -m "$work/q4_0.gguf" -p 0 -n 128 -d "$d" -r "$reps" -t "$threads" -o json 2>/dev/null)
  read -r tg tgs < <(python3 -c 'import json, sys; r = json.load(sys.stdin)[0]; print(r["avg_ts"], r["stddev_ts"])' <<< "$lj")
  row q4_0.gguf llama.cpp "tg128@d$d" "$tg" "$tgs" - - -
done
column -t -s $'\t' "$out"
