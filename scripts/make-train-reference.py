"""Reference losses and gradients for shrink-train's tests (run once; output committed).

For every tiny fixture listed in /work/shared/fixtures/tiny-index.json (../shared/fixtures from
the repository root), writes crates/shrink-train/tests/data/grad-<arch>.safetensors, which
crates/shrink-train/tests/gradients.rs checks `shrink_train::grad::backward` (and, for
tiny-llama, `shrink_train::optim::step`) against.

The reference is transformers' own model (AutoModelForCausalLM or
AutoModelForSequenceClassification, float32, eager attention, eval mode so dropout is off) and
PyTorch autograd. The input is row 0 of the fixture's reference.safetensors `input_ids`
(24 tokens, no attention mask, positions from 0). Two losses:

  ce   causal LMs: mean cross-entropy of logits[:-1] against ids[1:] (23 rows);
       classifiers: cross-entropy of the class logits [1, num_labels] against label 1.
  kd   alpha = 0.5, T = 2 (Hinton et al. 2015):
       alpha * T^2 * sum_rows KL(softmax(teacher / T) || softmax(student / T)) / rows
       + (1 - alpha) * ce, where student is the rows ce uses and teacher is fixed random logits
       of the same shape: torch.manual_seed(0); torch.randn(rows, outputs).

Saved tensors (all float32 unless said):
  ids                     int64 [24]     the input
  labels                  int64 [rows]   ids[1:] (causal LMs) or [1] (classifiers)
  teacher                 [rows, outputs] the kd teacher's logits
  <case>.loss             [1]            the loss value
  <case>.grad.<name>      the gradient of every parameter, named as model.named_parameters()
                          names it (tied weights appear once, under the first name: the input
                          embedding), in HF layout (GPT-2 Conv1D weights [in, out])
  adamw.<name>            (tiny-llama only) every parameter after one
                          torch.optim.AdamW(lr=1e-3, betas=(0.9, 0.999), eps=1e-8,
                          weight_decay=0.0) step on the ce gradient
Metadata: torch, transformers, safetensors and numpy versions, the fixture, the cases.

Usage (a venv with torch, transformers, safetensors, numpy; CPU torch is enough):
  python3 -m venv /tmp/torch-venv && /tmp/torch-venv/bin/pip install torch transformers safetensors numpy
  /tmp/torch-venv/bin/python scripts/make-train-reference.py [FIXTURES_DIR [OUT_DIR]]
Last run with torch 2.15.0, transformers 5.24.0, safetensors 0.8.0, numpy 2.4.6. The run is
single-threaded and deterministic: the tensors are the same on every run.
"""
import json
import os
import sys
from importlib.metadata import version

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.numpy import load_file, save_file
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = sys.argv[1] if len(sys.argv) > 1 else os.path.join(HERE, "../../shared/fixtures")
OUT = sys.argv[2] if len(sys.argv) > 2 else os.path.join(HERE, "../crates/shrink-train/tests/data")
ALPHA, TEMP = 0.5, 2.0
CLASS_LABEL = 1
ADAMW = dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
ADAMW_ARCH = "llama"

torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)


def load(d):
    cfg = json.load(open(os.path.join(d, "config.json")))
    classifier = any(a.endswith("ForSequenceClassification") for a in cfg.get("architectures", []))
    cls = AutoModelForSequenceClassification if classifier else AutoModelForCausalLM
    model = cls.from_pretrained(d, dtype=torch.float32, attn_implementation="eager")
    return model.eval(), classifier


def rows_and_labels(model, ids, classifier):
    """The logits the losses read, and their labels."""
    out = model(input_ids=ids[None]).logits
    if classifier:
        return out, torch.tensor([CLASS_LABEL], dtype=torch.int64)
    return out[0, :-1], ids[1:]


def losses(student, labels, teacher):
    ce = F.cross_entropy(student, labels)
    kl = F.kl_div(
        F.log_softmax(student / TEMP, dim=-1),
        F.log_softmax(teacher / TEMP, dim=-1),
        log_target=True,
        reduction="sum",
    ) / student.shape[0]
    return {"ce": ce, "kd": ALPHA * TEMP * TEMP * kl + (1 - ALPHA) * ce}


def main():
    index = json.load(open(os.path.join(FIXTURES, "tiny-index.json")))
    os.makedirs(OUT, exist_ok=True)
    for arch, info in index.items():
        d = os.path.join(FIXTURES, info["dir"])
        model, classifier = load(d)
        ids = torch.from_numpy(load_file(os.path.join(d, "reference.safetensors"))["input_ids"][0].copy())
        names = [n for n, _ in model.named_parameters()]
        tensors = {"ids": ids.numpy()}
        teacher = None
        ce_grads = None
        for case in ["ce", "kd"]:
            model.zero_grad(set_to_none=True)
            student, labels = rows_and_labels(model, ids, classifier)
            if teacher is None:
                torch.manual_seed(0)
                teacher = torch.randn(student.shape, dtype=torch.float32)
                tensors["teacher"] = teacher.numpy()
                tensors["labels"] = labels.numpy()
            loss = losses(student, labels, teacher)[case]
            loss.backward()
            tensors[f"{case}.loss"] = np.array([loss.item()], dtype=np.float32)
            for n, p in model.named_parameters():
                g = p.grad if p.grad is not None else torch.zeros_like(p)
                tensors[f"{case}.grad.{n}"] = g.detach().numpy().copy()
            if case == "ce":
                ce_grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
        if arch == ADAMW_ARCH:
            model.zero_grad(set_to_none=True)
            for n, p in model.named_parameters():
                p.grad = ce_grads.get(n)
            opt = torch.optim.AdamW(model.parameters(), **ADAMW)
            opt.step()
            for n, p in model.named_parameters():
                tensors[f"adamw.{n}"] = p.detach().numpy().copy()
        tensors = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
        meta = {
            "fixture": info["dir"],
            "cases": f"ce, kd (alpha {ALPHA}, T {TEMP})" + (f"; adamw {ADAMW}" if arch == ADAMW_ARCH else ""),
            "torch": torch.__version__,
            "transformers": version("transformers"),
            "safetensors": version("safetensors"),
            "numpy": np.__version__,
        }
        path = os.path.join(OUT, f"grad-{arch}.safetensors")
        save_file(tensors, path, metadata=meta)
        print(
            f"{path}: {len(names)} parameters, ce {tensors['ce.loss'][0]:.6f}, kd {tensors['kd.loss'][0]:.6f}, "
            f"{os.path.getsize(path)} bytes"
        )


if __name__ == "__main__":
    main()
