#!/usr/bin/env python3
"""One LoRA training step of a roberta-base- or SmolLM2-135M-shaped model in plain PyTorch:
the peer of bench/hf_step.cpp (bench/run_hf_step.sh runs both).

Written from Hugging Face transformers' modeling code (modeling_roberta.py, modeling_llama.py),
not from rolora's C++:
  RoBERTa (RobertaForSequenceClassification, eval-mode: no dropout): embeddings word + position
    (create_position_ids_from_input_ids: padding_idx + cumsum of non-pad ids) + token type, LayerNorm;
    post-LN layers (self-attention with additive mask, GELU (erf) MLP); RobertaClassificationHead
    (dense, tanh, out_proj on the first token); cross-entropy.
  Llama (LlamaForCausalLM): RMSNorm (fp32 variance), rotary rotate-half (inv_freq = 1 /
    theta^(2i / head_dim), cos/sin of cat(freqs, freqs)), repeat_kv for grouped-query attention,
    causal mask, softmax in fp32, SwiGLU MLP, final norm, lm_head tied to embed_tokens; loss: the
    shifted next-token cross-entropy.
LoRA (PEFT's Linear): y = base(x) + lora_B(lora_A(x)) * alpha / r on q and v of every layer; the
base is frozen (requires_grad False), only lora_A / lora_B train. Random weights, random tokens,
no padding; batch 8 x 128 (as the C++ side).

Prints the BLAS in use, seconds per step (best, median of --steps after one warm-up), tokens/s and
peak RSS. --precision bf16 runs the step under torch.autocast("cpu", dtype=torch.bfloat16).
"""
import argparse
import ctypes
import math
import resource
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn


class LoraLinear(nn.Module):
    """PEFT's lora.Linear: frozen base + lora_B(lora_A(x)) * scaling."""

    def __init__(self, base: nn.Linear, r: int, alpha: float):
        super().__init__()
        self.base = base
        self.lora_A = nn.Linear(base.in_features, r, bias=False)
        self.lora_B = nn.Linear(r, base.out_features, bias=False)
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.uniform_(self.lora_B.weight, -0.01, 0.01)  # as the C++ side: a later step's B
        self.scaling = alpha / r

    def forward(self, x):
        return self.base(x) + self.lora_B(self.lora_A(x)) * self.scaling


# ----- RoBERTa ------------------------------------------------------------------------------


class RobertaLayer(nn.Module):
    def __init__(self, d, heads, ff, eps):
        super().__init__()
        self.heads, self.hd = heads, d // heads
        self.query, self.key, self.value = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        self.attn_out, self.ln1 = nn.Linear(d, d), nn.LayerNorm(d, eps=eps)
        self.intermediate, self.output = nn.Linear(d, ff), nn.Linear(ff, d)
        self.ln2 = nn.LayerNorm(d, eps=eps)

    def forward(self, h, add_mask):
        b, t, d = h.shape
        split = lambda x: x.view(b, t, self.heads, self.hd).transpose(1, 2)  # noqa: E731
        q, k, v = split(self.query(h)), split(self.key(h)), split(self.value(h))
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.hd) + add_mask
        ctx = (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, t, d)
        a = self.ln1(self.attn_out(ctx) + h)
        return self.ln2(self.output(F.gelu(self.intermediate(a))) + a)


class Roberta(nn.Module):
    def __init__(self, vocab=50265, d=768, layers=12, heads=12, ff=3072, max_pos=514, pad=1,
                 type_vocab=1, eps=1e-5, labels=2):
        super().__init__()
        self.pad = pad
        self.word = nn.Embedding(vocab, d, padding_idx=pad)
        self.position = nn.Embedding(max_pos, d, padding_idx=pad)
        self.token_type = nn.Embedding(type_vocab, d)
        self.embed_ln = nn.LayerNorm(d, eps=eps)
        self.layers = nn.ModuleList(RobertaLayer(d, heads, ff, eps) for _ in range(layers))
        self.dense, self.out_proj = nn.Linear(d, d), nn.Linear(d, labels)

    def forward(self, ids, labels):
        real = ids.ne(self.pad).int()
        pos = torch.cumsum(real, dim=1).type_as(real) * real + self.pad
        h = self.embed_ln(self.word(ids) + self.position(pos) +
                          self.token_type(torch.zeros_like(ids)))
        add_mask = (1.0 - real[:, None, None, :].to(h.dtype)) * torch.finfo(h.dtype).min
        for layer in self.layers:
            h = layer(h, add_mask)
        logits = self.out_proj(torch.tanh(self.dense(h[:, 0])))
        return F.cross_entropy(logits.float(), labels)

    def lora_targets(self):
        return [(layer, name) for layer in self.layers for name in ("query", "value")]


# ----- Llama --------------------------------------------------------------------------------


class RMSNorm(nn.Module):
    def __init__(self, d, eps):
        super().__init__()
        self.weight, self.eps = nn.Parameter(torch.ones(d)), eps

    def forward(self, x):
        dtype = x.dtype
        x = x.to(torch.float32)
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


def rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class LlamaLayer(nn.Module):
    def __init__(self, d, heads, kv_heads, hd, ff, eps):
        super().__init__()
        self.heads, self.kv_heads, self.hd = heads, kv_heads, hd
        self.input_layernorm = RMSNorm(d, eps)
        self.q_proj = nn.Linear(d, heads * hd, bias=False)
        self.k_proj = nn.Linear(d, kv_heads * hd, bias=False)
        self.v_proj = nn.Linear(d, kv_heads * hd, bias=False)
        self.o_proj = nn.Linear(heads * hd, d, bias=False)
        self.post_attention_layernorm = RMSNorm(d, eps)
        self.gate_proj = nn.Linear(d, ff, bias=False)
        self.up_proj = nn.Linear(d, ff, bias=False)
        self.down_proj = nn.Linear(ff, d, bias=False)

    def forward(self, h, cos, sin, add_mask):
        b, t, _ = h.shape
        x = self.input_layernorm(h)
        q = self.q_proj(x).view(b, t, self.heads, self.hd).transpose(1, 2)
        k = self.k_proj(x).view(b, t, self.kv_heads, self.hd).transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.kv_heads, self.hd).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        rep = self.heads // self.kv_heads  # repeat_kv
        k = k[:, :, None].expand(b, self.kv_heads, rep, t, self.hd).reshape(b, self.heads, t, self.hd)
        v = v[:, :, None].expand(b, self.kv_heads, rep, t, self.hd).reshape(b, self.heads, t, self.hd)
        scores = q @ k.transpose(2, 3) / math.sqrt(self.hd) + add_mask
        probs = scores.softmax(-1, dtype=torch.float32).to(q.dtype)
        ctx = (probs @ v).transpose(1, 2).reshape(b, t, self.heads * self.hd)
        h = h + self.o_proj(ctx)
        x = self.post_attention_layernorm(h)
        return h + self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Llama(nn.Module):
    def __init__(self, vocab=49152, d=576, layers=30, heads=9, kv_heads=3, hd=64, ff=1536,
                 eps=1e-5, theta=100000.0):
        super().__init__()
        self.embed_tokens = nn.Embedding(vocab, d)
        self.layers = nn.ModuleList(LlamaLayer(d, heads, kv_heads, hd, ff, eps)
                                    for _ in range(layers))
        self.norm = RMSNorm(d, eps)
        self.register_buffer("inv_freq", 1.0 / theta ** (torch.arange(0, hd, 2).float() / hd))

    def forward(self, ids, labels):
        b, t = ids.shape
        h = self.embed_tokens(ids)
        freqs = torch.arange(t, dtype=torch.float32)[:, None] * self.inv_freq[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        cos, sin = emb.cos().to(h.dtype), emb.sin().to(h.dtype)
        add_mask = torch.full((t, t), torch.finfo(h.dtype).min).triu(1).to(h.dtype)
        for layer in self.layers:
            h = layer(h, cos, sin, add_mask)
        logits = F.linear(self.norm(h), self.embed_tokens.weight)  # tied lm_head
        return F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]),
                               labels[:, 1:].reshape(-1))

    def lora_targets(self):
        return [(layer, name) for layer in self.layers for name in ("q_proj", "v_proj")]


def openblas_core():
    """The OpenBLAS kernel this process runs (openblas_get_corename), or what BLAS is loaded."""
    with open("/proc/self/maps") as f:
        libs = sorted({line.split()[-1] for line in f if "blas" in line.lower() and "/" in line})
    for lib in libs:
        try:
            fn = ctypes.CDLL(lib).openblas_get_corename
            fn.restype = ctypes.c_char_p
            return f"OpenBLAS {fn().decode()} ({lib})"
        except (OSError, AttributeError):
            continue
    return "no OpenBLAS loaded: " + (", ".join(libs) or "none")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", choices=["roberta-base", "smollm2-135m"], default="roberta-base")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    p.add_argument("--steps", type=int, default=3, help="timed steps after one warm-up")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                   help="bf16: torch.autocast('cpu', dtype=torch.bfloat16)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--alpha", type=float, default=16)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    model = Roberta() if args.model == "roberta-base" else Llama()
    with torch.no_grad():  # HF-like init scale; speed does not depend on it
        for prm in model.parameters():
            if prm.dim() > 1:
                prm.normal_(0, 0.02)
    model_bytes = sum(t.numel() * t.element_size() for t in model.parameters())
    model.requires_grad_(False)
    for layer, name in model.lora_targets():
        setattr(layer, name, LoraLinear(getattr(layer, name), args.rank, args.alpha))
    trainable = [prm for prm in model.parameters() if prm.requires_grad]
    model.eval()  # no dropout (there is none here; as the C++ side)

    vocab = model.word.num_embeddings if args.model == "roberta-base" else model.embed_tokens.num_embeddings
    ids = torch.randint(3, vocab, (args.batch, args.seq_len))
    labels = torch.randint(0, 2, (args.batch,)) if args.model == "roberta-base" else ids.clone()

    def step():
        for prm in trainable:
            prm.grad = None
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.precision == "bf16"):
            loss = model(ids, labels)
        loss.backward()
        return loss.item()

    print(f"PyTorch {torch.__version__} {args.model} {args.precision}"
          f"{' (autocast bf16)' if args.precision == 'bf16' else ''}, torch threads "
          f"{torch.get_num_threads()}, {openblas_core()}, mkldnn "
          f"{torch.backends.mkldnn.is_available()}, {sum(t.numel() for t in trainable)} trainable "
          f"scalars, model {model_bytes / 2**20:.1f} MiB", flush=True)
    t = time.perf_counter()
    loss = step()
    print(f"warm-up step {time.perf_counter() - t:.3f} s, loss {loss:.6f}", flush=True)
    times = []
    for _ in range(args.steps):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    tokens = args.batch * args.seq_len
    print("steps: " + " ".join(f"{s:.3f}" for s in times))
    print(f"seconds_per_step best {min(times):.4f} median {statistics.median(times):.4f}")
    print(f"tokens_per_s {tokens * len(times) / sum(times):.1f} (all timed steps; best step: "
          f"{tokens / min(times):.1f})")
    print(f"peak_rss_mib {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.1f}")


if __name__ == "__main__":
    main()
