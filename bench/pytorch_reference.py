#!/usr/bin/python3
"""PyTorch reference of one federated LoRA round of rolora's transformer (bench/).

The same model as include/rolora/nn (pre-LN encoder, learned positions, multi-head attention with
q, k, v, o, erf-GELU MLP fc1/fc2, final LayerNorm, mean pooling over non-PAD tokens, linear
classifier), the same LoRA placement (PEFT-style: W0 x + (alpha / r) B A x on the target linears,
A kaiming-uniform, B = 0), the same round: every client starts from the global adapters, runs
`local_steps` optimizer steps on batches of `batch` sequences of length `seq_len`, and the server
takes the sample-weighted mean of the shared factors (and of the classifier head, PEFT's
modules_to_save). The data are random tokens: the timing does not depend on them.

With --bf16 the forward pass and the loss run under `torch.autocast("cpu", dtype=torch.bfloat16)`
(PyTorch's mixed precision: the linears' GEMMs in bf16, parameters, gradients and optimizer state
in fp32), the peer of rolora's bf16 frozen base at the same precision.

Prints one line per timed round and a final `seconds_per_round <median>`; bench/run_round.sh
compares it with rolora's bench_round in the same run. Needs Debian's python3-torch (run with
/usr/bin/python3) and libopenblas0-pthread.
"""
import contextlib
import argparse
import math
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class LoRALinear(nn.Module):
    """y = W0 x + b + s B (A x); W0 and b frozen; A [r, in], B [out, r] as PEFT."""

    def __init__(self, base: nn.Linear, r: int, alpha: float):
        super().__init__()
        self.base = base
        self.lora_A = nn.Parameter(torch.empty(r, base.in_features))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, r))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.scaling = alpha / r

    def forward(self, x):
        return self.base(x) + self.scaling * F.linear(F.linear(x, self.lora_A), self.lora_B)


class Block(nn.Module):
    def __init__(self, d, heads, d_ff):
        super().__init__()
        self.heads = heads
        self.ln1 = nn.LayerNorm(d)
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
        self.ln2 = nn.LayerNorm(d)
        self.fc1 = nn.Linear(d, d_ff)
        self.fc2 = nn.Linear(d_ff, d)

    def forward(self, x, key_padding):  # x [n, L, d], key_padding [n, L] True = PAD
        n, L, d = x.shape
        h = self.ln1(x)
        split = lambda t: t.view(n, L, self.heads, d // self.heads).transpose(1, 2)
        q, k, v = split(self.q(h)), split(self.k(h)), split(self.v(h))
        scores = q @ k.transpose(-1, -2) / math.sqrt(d // self.heads)  # [n, heads, L, L]
        scores = scores.masked_fill(key_padding[:, None, None, :], float("-inf"))
        ctx = (scores.softmax(-1) @ v).transpose(1, 2).reshape(n, L, d)
        x = x + self.o(ctx)
        return x + self.fc2(F.gelu(self.fc1(self.ln2(x))))


class Classifier(nn.Module):
    def __init__(self, a):
        super().__init__()
        self.word = nn.Embedding(a.vocab, a.d_model)
        self.pos = nn.Embedding(a.seq_len, a.d_model)
        self.blocks = nn.ModuleList(Block(a.d_model, a.heads, a.d_ff) for _ in range(a.layers))
        self.final_ln = nn.LayerNorm(a.d_model)
        self.classifier = nn.Linear(a.d_model, a.classes)

    def forward(self, ids, pad_id):
        pad = ids == pad_id
        x = self.word(ids) + self.pos.weight[None, : ids.shape[1]]
        for b in self.blocks:
            x = b(x, pad)
        x = self.final_ln(x)
        keep = (~pad).float()[..., None]
        pooled = (x * keep).sum(1) / keep.sum(1).clamp(min=1)
        return self.classifier(pooled)


def attach_lora(model, targets, r, alpha):
    for p in model.parameters():
        p.requires_grad_(False)
    for b in model.blocks:
        for name in targets:
            setattr(b, name, LoRALinear(getattr(b, name), r, alpha))
    for p in model.classifier.parameters():  # PEFT's modules_to_save for sequence classification
        p.requires_grad_(True)


def trainable_state(model, factors):
    """The parameters a client trains in this round: LoRA factors named by `factors` + the head."""
    out = {}
    for name, p in model.named_parameters():
        if name.startswith("classifier."):
            out[name] = p
        elif name.endswith("lora_A") and "A" in factors:
            out[name] = p
        elif name.endswith("lora_B") and "B" in factors:
            out[name] = p
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--d-model", type=int, default=128)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--d-ff", type=int, default=512)
    ap.add_argument("--vocab", type=int, default=259)
    ap.add_argument("--classes", type=int, default=3)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--clients", type=int, default=20)
    ap.add_argument("--local-steps", type=int, default=2)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--rank", type=int, default=2)
    ap.add_argument("--alpha", type=float, default=16.0)
    ap.add_argument("--targets", default="q,v")
    ap.add_argument("--factors", default="B", help="factors trained this round: A, B or AB")
    ap.add_argument("--optimizer", choices=["sgd", "adamw"], default="adamw")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--rounds", type=int, default=3, help="timed rounds (after one warm-up)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--bf16", action="store_true",
                    help='forward and loss under torch.autocast("cpu", dtype=torch.bfloat16)')
    a = ap.parse_args()
    precision = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if a.bf16 else \
        contextlib.nullcontext

    torch.manual_seed(a.seed)
    torch.set_num_threads(a.threads)
    model = Classifier(a)
    attach_lora(model, a.targets.split(","), a.rank, a.alpha)
    model.train()
    # Local data: random token sequences with a random real length, the rest PAD (as rolora's
    # byte tokenizer: ids 0..255 bytes, PAD = 256).
    pad = min(256, a.vocab - 1)
    g = torch.Generator().manual_seed(a.seed)
    samples = a.batch * a.local_steps
    data = []
    for _ in range(a.clients):
        ids = torch.randint(0, pad, (samples, a.seq_len), generator=g)
        lengths = torch.randint(a.seq_len // 4, a.seq_len + 1, (samples,), generator=g)
        ids[torch.arange(a.seq_len)[None, :] >= lengths[:, None]] = pad
        data.append((ids, torch.randint(0, a.classes, (samples,), generator=g)))

    shared = {k: v.detach().clone() for k, v in trainable_state(model, "AB").items()}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{'autocast bf16' if a.bf16 else 'fp32'}, "
          f"{sum(p.numel() for p in trainable_state(model, a.factors).values())} trainable scalars")
    times = []
    for rnd in range(a.rounds + 1):
        start = time.perf_counter()
        sums = {k: torch.zeros_like(v) for k, v in shared.items()}
        for ids, labels in data:
            with torch.no_grad():  # download the global state
                for k, p in dict(model.named_parameters()).items():
                    if k in shared:
                        p.copy_(shared[k])
            params = trainable_state(model, a.factors)
            for p in model.parameters():
                p.requires_grad_(False)
            for p in params.values():
                p.requires_grad_(True)
            opt = (torch.optim.AdamW(params.values(), lr=a.lr) if a.optimizer == "adamw"
                   else torch.optim.SGD(params.values(), lr=a.lr))
            for s in range(a.local_steps):
                batch = slice(s * a.batch, (s + 1) * a.batch)
                with precision():
                    loss = F.cross_entropy(model(ids[batch], pad), labels[batch])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            with torch.no_grad():  # upload; equal sample counts: the plain mean
                for k, p in params.items():
                    sums[k] += p / a.clients
        with torch.no_grad():
            for k in trainable_state(model, a.factors):
                shared[k] = sums[k]
        seconds = time.perf_counter() - start
        if rnd > 0:
            times.append(seconds)
        print(f"round {rnd}{' (warm-up)' if rnd == 0 else ''}: {seconds:.3f} s, last loss {loss.item():.4f}")
    print(f"seconds_per_round {statistics.median(times):.6f}")


if __name__ == "__main__":
    main()
