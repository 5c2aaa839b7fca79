#!/usr/bin/python3
"""PyTorch peer of bench/dp_sgd_step.cpp: one DP-SGD step vs one plain step on rolora's transformer.

The model, LoRA placement and data are bench/pytorch_reference.py's (imported from it). The plain
step: mean cross-entropy, backward, optimizer step. The private step, as Opacus-style code writes
it with PyTorch 1.13's functorch: per-sample gradients of the trainable parameters (LoRA factors
and the classifier head) by `vmap(grad(loss of one example))` over the batch, each example's
gradient clipped to L2 norm C over all trainable parameters together, summed, Gaussian noise
N(0, (z C)^2) per coordinate, divided by the batch size, optimizer step.

Prints `plain_step_seconds S` and `private_step_seconds S` (medians; the two kinds alternate
step by step so that both see the same machine load). Run it with
/usr/bin/python3 (Debian's python3-torch) with OPENBLAS_NUM_THREADS=1 for one thread.
"""
import argparse
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from functorch import grad, vmap
from torch.nn.utils import stateless

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pytorch_reference import Classifier, attach_lora, trainable_state  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--d-model", type=int, default=128)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--d-ff", type=int, default=512)
    ap.add_argument("--vocab", type=int, default=259)
    ap.add_argument("--classes", type=int, default=3)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--rank", type=int, default=2)
    ap.add_argument("--alpha", type=float, default=8.0)
    ap.add_argument("--targets", default="q,v")
    ap.add_argument("--factors", default="AB", help="factors trained: A, B or AB")
    ap.add_argument("--clip-norm", type=float, default=1.0)
    ap.add_argument("--noise-multiplier", type=float, default=1.0)
    ap.add_argument("--steps", type=int, default=10, help="timed steps of each kind")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()

    torch.manual_seed(a.seed)
    torch.set_num_threads(a.threads)
    model = Classifier(a)
    attach_lora(model, a.targets.split(","), a.rank, a.alpha)
    with torch.no_grad():  # an A step needs B != 0, as after a B round
        for name, p in model.named_parameters():
            if name.endswith("lora_B"):
                p.fill_(0.01)
    model.train()
    pad = min(256, a.vocab - 1)
    g = torch.Generator().manual_seed(a.seed)
    ids = torch.randint(0, pad, (a.batch, a.seq_len), generator=g)
    lengths = torch.randint(a.seq_len // 4, a.seq_len + 1, (a.batch,), generator=g)
    ids[torch.arange(a.seq_len)[None, :] >= lengths[:, None]] = pad
    labels = torch.randint(0, a.classes, (a.batch,), generator=g)

    params = trainable_state(model, a.factors)
    for p in model.parameters():
        p.requires_grad_(False)
    for p in params.values():
        p.requires_grad_(True)
    opt = torch.optim.SGD(params.values(), lr=1e-3)
    names = list(params)

    def plain_step():
        loss = F.cross_entropy(model(ids, pad), labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def example_loss(trainable, x, y):  # one example: x [L], y []
        logits = stateless.functional_call(model, trainable, (x[None], pad))
        return F.cross_entropy(logits, y[None])

    per_example_grads = vmap(grad(example_loss), in_dims=(None, 0, 0))

    def private_step():
        detached = {k: v.detach() for k, v in params.items()}
        g = per_example_grads(detached, ids, labels)  # each [n, *shape]
        norms = torch.sqrt(sum(g[k].flatten(1).pow(2).sum(1) for k in names))  # [n]
        factor = (a.clip_norm / (norms + 1e-12)).clamp(max=1.0)
        std = a.noise_multiplier * a.clip_norm
        for k in names:
            s = torch.einsum("n,n...->...", factor, g[k])
            params[k].grad = (s + std * torch.randn_like(s)) / a.batch
        opt.step()

    plain_step()  # warm-up
    private_step()
    times = {"plain": [], "private": []}
    for _ in range(a.steps):  # alternating, so that both kinds see the same machine load
        for name, fn in (("plain", plain_step), ("private", private_step)):
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    for name, t in times.items():
        print(f"{name}_step_seconds {statistics.median(t):.6f}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{sum(p.numel() for p in params.values())} trainable scalars")


if __name__ == "__main__":
    main()
