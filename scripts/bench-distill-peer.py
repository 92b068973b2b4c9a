"""PyTorch's training speed beside `shrink distill`'s: the same student, teacher, loss, optimiser,
steps, sequence length and threads, timed step by step.

The loop is what `shrink distill` does (crates/shrink-train/src/distill.rs):
  windows of SEQ_LEN + 1 tokens cut from the lee-ppl-v1 calibration ids (the fixture
  smollm2/tokens.safetensors `calib_ids`: documents 0..149 as llama.cpp tokenizes them);
  loss per token  alpha·T²·KL(softmax(teacher/T) ‖ softmax(student/T)) + (1 − alpha)·CE;
  with TOPK > 0 the teacher's K largest logits per position are computed once for every window
  (timed apart) and the teacher distribution is the softmax over those K;
  AdamW (betas 0.9/0.999, eps 1e-8, no weight decay), linear warmup (5 % of the steps) then
  cosine decay to 10 % of LR, global-norm clipping at 1.0.
The window order differs from shrink's (numpy's generator, not Rust's), so losses are not
compared step by step; speed is. Without GRAD_CKPT=1 PyTorch keeps every activation (faster,
more memory); with it, it recomputes each layer as shrink does.

Usage: python scripts/bench-distill-peer.py TEACHER_HF_DIR STUDENT_HF_DIR TOKENS_SAFETENSORS
       [STEPS SEQ_LEN ALPHA TEMPERATURE TOPK LR THREADS]
Defaults: 10 steps, 512 tokens, alpha 0.5, T 2, top-64, lr 1e-4, 2 threads. Needs torch,
transformers, safetensors (tested with torch 2.15.0, transformers 5.24.0). Prints one JSON line:
mean seconds per step after the first (warm-up) step, tokens/s, peak RSS, the teacher-cache time.
"""
import json
import math
import os
import resource
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.numpy import load_file
from transformers import AutoModelForCausalLM

teacher_dir, student_dir, tokens = sys.argv[1:4]
a = sys.argv[4:]
steps = int(a[0]) if len(a) > 0 else 10
seq = int(a[1]) if len(a) > 1 else 512
alpha = float(a[2]) if len(a) > 2 else 0.5
temp = float(a[3]) if len(a) > 3 else 2.0
topk = int(a[4]) if len(a) > 4 else 64
lr = float(a[5]) if len(a) > 5 else 1e-4
threads = int(a[6]) if len(a) > 6 else 2
torch.set_num_threads(threads)
torch.manual_seed(0)

ids = load_file(tokens)["calib_ids"].astype(np.int64)
n = len(ids) // (seq + 1)
windows = torch.from_numpy(ids[: n * (seq + 1)].reshape(n, seq + 1))

student = AutoModelForCausalLM.from_pretrained(student_dir, dtype=torch.float32)
student.train()
if os.environ.get("GRAD_CKPT") == "1":
    student.gradient_checkpointing_enable()
teacher = None
if alpha > 0:
    teacher = AutoModelForCausalLM.from_pretrained(teacher_dir, dtype=torch.float32).eval()

cache_s = 0.0
cache = None
if teacher is not None and topk > 0:
    t0 = time.perf_counter()
    cache = []
    with torch.no_grad():
        for w in windows:
            z = teacher(w[None, :seq]).logits[0]
            v, i = z.topk(topk, dim=-1)
            cache.append((v, i))
    cache_s = time.perf_counter() - t0

opt = torch.optim.AdamW(student.parameters(), lr=lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
warm = steps // 20


def factor(s):
    if warm > 0 and s <= warm:
        return s / warm
    p = min((s - warm) / max(steps - warm, 1), 1.0)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * p))


order = np.random.default_rng(0).permutation(n)
times = []
for s in range(1, steps + 1):
    t0 = time.perf_counter()
    wi = int(order[(s - 1) % n])
    w = windows[wi]
    x, y = w[None, :seq], w[1:]
    z = student(x).logits[0]
    ce = F.cross_entropy(z, y)
    loss = (1 - alpha) * ce
    if alpha > 0:
        logq = F.log_softmax(z / temp, dim=-1)
        if cache is not None:
            tv, ti = cache[wi]
            p = F.softmax(tv / temp, dim=-1)
            kl = (p * (p.log() - logq.gather(-1, ti))).sum(-1).mean()
        else:
            with torch.no_grad():
                zt = teacher(x).logits[0]
            logp = F.log_softmax(zt / temp, dim=-1)
            kl = (logp.exp() * (logp - logq)).sum(-1).mean()
        loss = loss + alpha * temp * temp * kl
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
    for g in opt.param_groups:
        g["lr"] = lr * factor(s)
    opt.step()
    times.append(time.perf_counter() - t0)
    print(f"step {s} loss {loss.item():.4f} {times[-1]:.2f} s", file=sys.stderr)

per = sum(times[1:]) / max(len(times) - 1, 1)
print(json.dumps({
    "tool": f"pytorch {torch.__version__}",
    "steps": steps, "seq_len": seq, "alpha": alpha, "temperature": temp, "topk": topk,
    "threads": threads, "grad_ckpt": os.environ.get("GRAD_CKPT") == "1",
    "seconds_per_step": per, "tokens_per_s": seq / per,
    "teacher_cache_seconds": cache_s,
    "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
}))
