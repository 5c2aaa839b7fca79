#!/usr/bin/env python3
"""Writes tests/data/hf_tiny/: tiny Hugging Face checkpoints and a PyTorch reference for them.

Five model families of the Hugging Face `transformers` library, rebuilt here in plain PyTorch
(no `transformers` import: it is not installed on the machines that build rolora) following
the modeling code line by line:

  bert           BertForSequenceClassification    (models/bert/modeling_bert.py)
  roberta        RobertaForSequenceClassification (models/roberta/modeling_roberta.py)
  llama          LlamaForCausalLM, tied embeddings (models/llama/modeling_llama.py)
  llama3_scaled  LlamaForCausalLM, untied, rope_scaling "llama3" (modeling_rope_utils.py)
  qwen2          Qwen2ForCausalLM, q/k/v bias      (models/qwen2/modeling_qwen2.py)

plus the loader variants llama_bf16/, bert_fp16/, qwen2_sharded/ and the PEFT adapter
directories bert_peft/, llama_peft/. See tests/data/hf_tiny/README.md for the file contents.

Precision: the checkpoint weights are drawn in float32 (or rounded to bf16/fp16 for the
variants) and stored as such; the reference forward and backward are computed in float64
from exactly those stored values, and the reference outputs are stored as float32. The
only place the float64 reference departs from what HF computes in float32 is rounding
(e.g. HF builds inv_freq / cos / sin of the rotary embedding in float32; here in float64).

Run:  /usr/bin/python3 tests/models/make_tiny_checkpoints.py   (from the repository root)
"""

import json
import math
import os
import shutil
import struct
import sys

import numpy as np
import torch
import torch.nn.functional as F

OUT_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "data", "hf_tiny")
TRANSFORMERS_VERSION = "4.46.3"  # the version whose config.json layout is reproduced

LORA_R = 4
LORA_ALPHA = 8
LORA_SCALING = LORA_ALPHA / LORA_R  # PEFT: scaling = lora_alpha / r (use_rslora false)
BATCH, SEQ = 3, 7
SEQ_LENS = [7, 5, 3]  # sequences 2 and 3 are right-padded

# --------------------------------------------------------------------------------------------
# safetensors: 8-byte little-endian header length N, N bytes of JSON, then the raw data.
# --------------------------------------------------------------------------------------------
_DTYPE_TO_ST = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32",
}
_ST_TO_DTYPE = {v: k for k, v in _DTYPE_TO_ST.items()}


def _tensor_bytes(t):
    t = t.detach().contiguous().cpu()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().astype("<i2").tobytes()
    return t.numpy().astype(t.numpy().dtype.newbyteorder("<")).tobytes()


def save_safetensors(path, tensors, metadata=None):
    """tensors: dict name -> torch.Tensor. Data laid out in name order; header padded with
    spaces to a multiple of 8 bytes (as the reference implementation does)."""
    header = {"__metadata__": metadata if metadata is not None else {"format": "pt"}}
    blobs, offset = [], 0
    for name in sorted(tensors):
        t = tensors[name]
        data = _tensor_bytes(t)
        header[name] = {"dtype": _DTYPE_TO_ST[t.dtype], "shape": list(t.shape),
                        "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    hjson = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hjson += b" " * ((8 - len(hjson) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hjson)))
        f.write(hjson)
        for b in blobs:
            f.write(b)


def load_safetensors(path):
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n].decode("utf-8"))
    base = 8 + n
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        begin, end = info["data_offsets"]
        buf = raw[base + begin:base + end]
        dt = _ST_TO_DTYPE[info["dtype"]]
        if dt == torch.bfloat16:
            t = torch.from_numpy(np.frombuffer(buf, dtype="<i2").copy()).view(torch.bfloat16)
        else:
            np_dt = torch.empty(0, dtype=dt).numpy().dtype.newbyteorder("<")
            t = torch.from_numpy(np.frombuffer(buf, dtype=np_dt).astype(np_dt.newbyteorder("=")))
        out[name] = t.reshape(info["shape"])
    return out, header.get("__metadata__")


def write_json(path, obj):
    # HF: json.dumps(config_dict, indent=2, sort_keys=True) + "\n"
    with open(path, "w") as f:
        f.write(json.dumps(obj, indent=2, sort_keys=True) + "\n")


# --------------------------------------------------------------------------------------------
# Configurations (config.json as PretrainedConfig.save_pretrained writes it, use_diff=True)
# --------------------------------------------------------------------------------------------
def bert_config(torch_dtype="float32"):
    return {
        "architectures": ["BertForSequenceClassification"],
        "attention_probs_dropout_prob": 0.1,
        "classifier_dropout": None,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "hidden_size": 64,
        "id2label": {"0": "LABEL_0", "1": "LABEL_1", "2": "LABEL_2"},
        "initializer_range": 0.02,
        "intermediate_size": 128,
        "label2id": {"LABEL_0": 0, "LABEL_1": 1, "LABEL_2": 2},
        "layer_norm_eps": 1e-12,
        "max_position_embeddings": 32,
        "model_type": "bert",
        "num_attention_heads": 4,
        "num_hidden_layers": 2,
        "pad_token_id": 0,
        "position_embedding_type": "absolute",
        "torch_dtype": torch_dtype,
        "transformers_version": TRANSFORMERS_VERSION,
        "type_vocab_size": 2,
        "use_cache": True,
        "vocab_size": 100,
    }


def roberta_config():
    c = bert_config()
    c.update({
        "architectures": ["RobertaForSequenceClassification"],
        "bos_token_id": 0,
        "eos_token_id": 2,
        "layer_norm_eps": 1e-05,
        "max_position_embeddings": 34,
        "model_type": "roberta",
        "pad_token_id": 1,
        "type_vocab_size": 1,
    })
    return c


def llama_config(torch_dtype="float32", scaled=False):
    c = {
        "architectures": ["LlamaForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "head_dim": 16,
        "hidden_act": "silu",
        "hidden_size": 64,
        "initializer_range": 0.02,
        "intermediate_size": 160,
        "max_position_embeddings": 64,
        "mlp_bias": False,
        "model_type": "llama",
        "num_attention_heads": 4,
        "num_hidden_layers": 2,
        "num_key_value_heads": 2,
        "pretraining_tp": 1,
        "rms_norm_eps": 1e-06,
        "rope_scaling": None,
        "rope_theta": 10000.0,
        "tie_word_embeddings": True,
        "torch_dtype": torch_dtype,
        "transformers_version": TRANSFORMERS_VERSION,
        "use_cache": True,
        "vocab_size": 128,
    }
    if scaled:
        # original_max_position_embeddings 48 (not Llama 3.1's 8192, nor 16): with head_dim 16 and
        # theta 5e5 the wavelengths 2*pi/inv_freq are 6.3, 32.4, 167, ...; high_freq_wavelen = 48/4
        # = 12 and low_freq_wavelen = 48/1 = 48 then put frequency 0 in the unchanged band, 1 in the
        # smoothed band and 2..7 in the divided-by-factor band: all three branches are exercised.
        c.update({
            "rope_scaling": {"factor": 8.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                             "original_max_position_embeddings": 48, "rope_type": "llama3"},
            "rope_theta": 500000.0,
            "tie_word_embeddings": False,
        })
    return c


def qwen2_config():
    return {
        "architectures": ["Qwen2ForCausalLM"],
        "attention_dropout": 0.0,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "hidden_act": "silu",
        "hidden_size": 64,
        "initializer_range": 0.02,
        "intermediate_size": 160,
        "max_position_embeddings": 64,
        "max_window_layers": 28,
        "model_type": "qwen2",
        "num_attention_heads": 4,
        "num_hidden_layers": 2,
        "num_key_value_heads": 2,
        "rms_norm_eps": 1e-06,
        "rope_scaling": None,
        "rope_theta": 1000000.0,
        "sliding_window": 4096,
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
        "transformers_version": TRANSFORMERS_VERSION,
        "use_cache": True,
        "use_sliding_window": False,
        "vocab_size": 128,
    }


# --------------------------------------------------------------------------------------------
# Random weights, named as model.state_dict() of the HF class names them. Buffers
# (position_ids, token_type_ids, inv_freq) are registered persistent=False by current HF and
# are not saved. Order = state_dict order (matters only for sharding).
# --------------------------------------------------------------------------------------------
def _normal(g, shape, std):
    return torch.randn(*shape, generator=g, dtype=torch.float32) * std


def _norm_weight(g, n):
    return 1.0 + 0.1 * torch.randn(n, generator=g, dtype=torch.float32)


def _bias(g, n):
    return 0.02 * torch.randn(n, generator=g, dtype=torch.float32)


def encoder_weights(cfg, g, prefix):
    H, I, V = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    w = {}
    e = prefix + ".embeddings."
    w[e + "word_embeddings.weight"] = _normal(g, (V, H), 0.02)
    w[e + "word_embeddings.weight"][cfg["pad_token_id"]] = 0.0  # _init_weights zeroes padding_idx
    w[e + "position_embeddings.weight"] = _normal(g, (cfg["max_position_embeddings"], H), 0.02)
    if cfg["model_type"] == "roberta":
        w[e + "position_embeddings.weight"][cfg["pad_token_id"]] = 0.0  # padding_idx there too
    w[e + "token_type_embeddings.weight"] = _normal(g, (cfg["type_vocab_size"], H), 0.02)
    w[e + "LayerNorm.weight"] = _norm_weight(g, H)
    w[e + "LayerNorm.bias"] = _bias(g, H)
    for i in range(cfg["num_hidden_layers"]):
        p = f"{prefix}.encoder.layer.{i}."
        for name in ("query", "key", "value"):
            w[p + f"attention.self.{name}.weight"] = _normal(g, (H, H), 0.02)
            w[p + f"attention.self.{name}.bias"] = _bias(g, H)
        w[p + "attention.output.dense.weight"] = _normal(g, (H, H), 0.02)
        w[p + "attention.output.dense.bias"] = _bias(g, H)
        w[p + "attention.output.LayerNorm.weight"] = _norm_weight(g, H)
        w[p + "attention.output.LayerNorm.bias"] = _bias(g, H)
        w[p + "intermediate.dense.weight"] = _normal(g, (I, H), 0.02)
        w[p + "intermediate.dense.bias"] = _bias(g, I)
        w[p + "output.dense.weight"] = _normal(g, (H, I), 0.02)
        w[p + "output.dense.bias"] = _bias(g, H)
        w[p + "output.LayerNorm.weight"] = _norm_weight(g, H)
        w[p + "output.LayerNorm.bias"] = _bias(g, H)
    L = 3
    if cfg["model_type"] == "bert":
        w["bert.pooler.dense.weight"] = _normal(g, (H, H), 0.02)
        w["bert.pooler.dense.bias"] = _bias(g, H)
        w["classifier.weight"] = _normal(g, (L, H), 0.02)
        w["classifier.bias"] = _bias(g, L)
    else:  # RobertaForSequenceClassification: RobertaModel(add_pooling_layer=False) + head
        w["classifier.dense.weight"] = _normal(g, (H, H), 0.02)
        w["classifier.dense.bias"] = _bias(g, H)
        w["classifier.out_proj.weight"] = _normal(g, (L, H), 0.02)
        w["classifier.out_proj.bias"] = _bias(g, L)
    return w


def decoder_weights(cfg, g, qkv_bias):
    H, I, V = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    hd = H // cfg["num_attention_heads"]
    kvd = cfg["num_key_value_heads"] * hd
    w = {"model.embed_tokens.weight": _normal(g, (V, H), 0.02)}
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        w[p + "self_attn.q_proj.weight"] = _normal(g, (H, H), 0.02)
        if qkv_bias:
            w[p + "self_attn.q_proj.bias"] = _bias(g, H)
        w[p + "self_attn.k_proj.weight"] = _normal(g, (kvd, H), 0.02)
        if qkv_bias:
            w[p + "self_attn.k_proj.bias"] = _bias(g, kvd)
        w[p + "self_attn.v_proj.weight"] = _normal(g, (kvd, H), 0.02)
        if qkv_bias:
            w[p + "self_attn.v_proj.bias"] = _bias(g, kvd)
        w[p + "self_attn.o_proj.weight"] = _normal(g, (H, H), 0.02)
        w[p + "mlp.gate_proj.weight"] = _normal(g, (I, H), 0.02)
        w[p + "mlp.up_proj.weight"] = _normal(g, (I, H), 0.02)
        w[p + "mlp.down_proj.weight"] = _normal(g, (H, I), 0.02)
        w[p + "input_layernorm.weight"] = _norm_weight(g, H)
        w[p + "post_attention_layernorm.weight"] = _norm_weight(g, H)
    w["model.norm.weight"] = _norm_weight(g, H)
    if not cfg["tie_word_embeddings"]:
        w["lm_head.weight"] = _normal(g, (V, H), 0.02)
    return w


def lora_factors(weights, g, targets, prefix_filter):
    """PEFT keys base_model.model.<module>.lora_A.weight [r, in] / lora_B.weight [out, r]."""
    out = {}
    for name, t in weights.items():
        if not name.endswith(".weight"):
            continue
        module = name[: -len(".weight")]
        if module.split(".")[-1] in targets and module.startswith(prefix_filter):
            out_f, in_f = t.shape
            out["base_model.model." + module + ".lora_A.weight"] = _normal(g, (LORA_R, in_f), 0.1)
            out["base_model.model." + module + ".lora_B.weight"] = _normal(g, (out_f, LORA_R), 0.1)
    return out


# --------------------------------------------------------------------------------------------
# The float64 models (autograd through LoRA factors and classifier head)
# --------------------------------------------------------------------------------------------
class Params:
    def __init__(self, base, lora):
        self.base = base  # name -> float64 tensor
        self.lora = lora  # PEFT key -> float64 tensor (requires_grad)

    def linear(self, x, module):
        # nn.Linear, then PEFT LoRA: result + lora_B(lora_A(dropout(x))) * scaling (dropout 0/eval)
        y = x @ self.base[module + ".weight"].T
        b = self.base.get(module + ".bias")
        if b is not None:
            y = y + b
        a_key = "base_model.model." + module + ".lora_A.weight"
        if a_key in self.lora:
            A = self.lora[a_key]
            B = self.lora["base_model.model." + module + ".lora_B.weight"]
            y = y + ((x @ A.T) @ B.T) * LORA_SCALING
        return y


def encoder_extended_mask(attention_mask, dtype):
    # get_extended_attention_mask: (1.0 - mask[:, None, None, :]) * torch.finfo(dtype).min
    m = attention_mask[:, None, None, :].to(dtype)
    return (1.0 - m) * torch.finfo(dtype).min


def roberta_position_ids(input_ids, padding_idx):
    # create_position_ids_from_input_ids(input_ids, padding_idx, past_key_values_length=0)
    mask = input_ids.ne(padding_idx).int()
    incremental_indices = torch.cumsum(mask, dim=1).type_as(mask) * mask
    return incremental_indices.long() + padding_idx


def encoder_forward(cfg, P, input_ids, attention_mask, token_type_ids):
    prefix = cfg["model_type"]
    H, nh = cfg["hidden_size"], cfg["num_attention_heads"]
    hd = H // nh
    eps = cfg["layer_norm_eps"]
    B, S = input_ids.shape
    e = prefix + ".embeddings."
    if prefix == "roberta":
        position_ids = roberta_position_ids(input_ids, cfg["pad_token_id"])
    else:
        position_ids = torch.arange(S)[None, :].expand(B, S)
    h = (P.base[e + "word_embeddings.weight"][input_ids]
         + P.base[e + "token_type_embeddings.weight"][token_type_ids]
         + P.base[e + "position_embeddings.weight"][position_ids])
    h = F.layer_norm(h, (H,), P.base[e + "LayerNorm.weight"], P.base[e + "LayerNorm.bias"], eps)
    ext = encoder_extended_mask(attention_mask, h.dtype)
    for i in range(cfg["num_hidden_layers"]):
        p = f"{prefix}.encoder.layer.{i}."

        def heads(x):  # [B, S, H] -> [B, nh, S, hd]
            return x.view(B, S, nh, hd).permute(0, 2, 1, 3)

        q = heads(P.linear(h, p + "attention.self.query"))
        k = heads(P.linear(h, p + "attention.self.key"))
        v = heads(P.linear(h, p + "attention.self.value"))
        scores = q @ k.transpose(-1, -2) / math.sqrt(hd) + ext
        probs = torch.softmax(scores, dim=-1)
        ctx = (probs @ v).permute(0, 2, 1, 3).reshape(B, S, H)
        a = P.linear(ctx, p + "attention.output.dense")
        a = F.layer_norm(a + h, (H,), P.base[p + "attention.output.LayerNorm.weight"],
                         P.base[p + "attention.output.LayerNorm.bias"], eps)
        inter = F.gelu(P.linear(a, p + "intermediate.dense"))  # "gelu" = erf form
        o = P.linear(inter, p + "output.dense")
        h = F.layer_norm(o + a, (H,), P.base[p + "output.LayerNorm.weight"],
                         P.base[p + "output.LayerNorm.bias"], eps)
    first = h[:, 0]
    if prefix == "bert":
        pooled = torch.tanh(P.linear(first, "bert.pooler.dense"))
        return P.linear(pooled, "classifier")
    x = torch.tanh(P.linear(first, "classifier.dense"))
    return P.linear(x, "classifier.out_proj")


def default_inv_freq(cfg, dtype=torch.float64):
    hd = cfg["hidden_size"] // cfg["num_attention_heads"]
    base = cfg["rope_theta"]
    return 1.0 / (base ** (torch.arange(0, hd, 2, dtype=torch.int64).to(dtype) / hd))


def rope_inv_freq(cfg):
    """ROPE_INIT_FUNCTIONS[rope_type](config): 'default' or 'llama3' (_compute_llama3_parameters)."""
    inv_freq = default_inv_freq(cfg)
    rs = cfg.get("rope_scaling")
    if rs is None:
        return inv_freq
    assert rs["rope_type"] == "llama3"
    factor = rs["factor"]
    low_freq_factor = rs["low_freq_factor"]
    high_freq_factor = rs["high_freq_factor"]
    old_context_len = rs["original_max_position_embeddings"]
    low_freq_wavelen = old_context_len / low_freq_factor
    high_freq_wavelen = old_context_len / high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    inv_freq_llama = torch.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
    smooth_factor = (old_context_len / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    smoothed_inv_freq = (1 - smooth_factor) * inv_freq_llama / factor + smooth_factor * inv_freq_llama
    is_medium_freq = ~(wavelen < high_freq_wavelen) * ~(wavelen > low_freq_wavelen)
    return torch.where(is_medium_freq, smoothed_inv_freq, inv_freq_llama)


def rotary_cos_sin(cfg, position_ids):
    # LlamaRotaryEmbedding.forward: freqs = inv_freq @ position_ids; emb = cat(freqs, freqs);
    # cos/sin (* attention_scaling, 1.0 for default and llama3)
    inv_freq = rope_inv_freq(cfg)
    freqs = position_ids.to(torch.float64)[:, :, None] * inv_freq[None, None, :]
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()


def rotate_half(x):
    x1 = x[..., : x.shape[-1] // 2]
    x2 = x[..., x.shape[-1] // 2:]
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim=1):
    cos = cos.unsqueeze(unsqueeze_dim)
    sin = sin.unsqueeze(unsqueeze_dim)
    return (q * cos) + (rotate_half(q) * sin), (k * cos) + (rotate_half(k) * sin)


def repeat_kv(hidden_states, n_rep):
    batch, num_key_value_heads, slen, head_dim = hidden_states.shape
    if n_rep == 1:
        return hidden_states
    hidden_states = hidden_states[:, :, None, :, :].expand(batch, num_key_value_heads, n_rep, slen, head_dim)
    return hidden_states.reshape(batch, num_key_value_heads * n_rep, slen, head_dim)


def rms_norm(x, weight, eps):
    # LlamaRMSNorm / Qwen2RMSNorm: computed in float32 (here the input is already float64),
    # weight * (x * rsqrt(mean(x^2) + eps)) -- the weight multiplies after the cast back.
    variance = x.pow(2).mean(-1, keepdim=True)
    return weight * (x * torch.rsqrt(variance + eps))


def causal_mask(attention_mask, dtype):
    """[B, 1, S, S] additive mask as LlamaModel._update_causal_mask builds it: min_dtype above the
    diagonal and at key positions whose attention_mask is 0, 0 elsewhere."""
    B, S = attention_mask.shape
    min_dtype = torch.finfo(dtype).min
    m = torch.full((S, S), min_dtype, dtype=dtype).triu(1)[None, None].expand(B, 1, S, S).clone()
    padding = (m + attention_mask[:, None, None, :].to(dtype)) == 0
    m = m.masked_fill(padding, min_dtype)
    return m


def gqa_attention(q, k, v, mask, n_rep):
    # eager_attention_forward: repeat_kv, q k^T * head_dim^-0.5 + mask, softmax, @ v
    k = repeat_kv(k, n_rep)
    v = repeat_kv(v, n_rep)
    w = q @ k.transpose(2, 3) * (q.shape[-1] ** -0.5) + mask
    w = torch.softmax(w, dim=-1)
    return w @ v  # [B, nh, S, hd]


def decoder_forward(cfg, P, input_ids, attention_mask):
    H, nh, nkv = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd = H // nh
    eps = cfg["rms_norm_eps"]
    B, S = input_ids.shape
    h = P.base["model.embed_tokens.weight"][input_ids]
    position_ids = torch.arange(S)[None, :].expand(B, S)  # cache_position: NOT from attention_mask
    cos, sin = rotary_cos_sin(cfg, position_ids)
    mask = causal_mask(attention_mask, h.dtype)
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        x = rms_norm(h, P.base[p + "input_layernorm.weight"], eps)
        q = P.linear(x, p + "self_attn.q_proj").view(B, S, nh, hd).transpose(1, 2)
        k = P.linear(x, p + "self_attn.k_proj").view(B, S, nkv, hd).transpose(1, 2)
        v = P.linear(x, p + "self_attn.v_proj").view(B, S, nkv, hd).transpose(1, 2)
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        a = gqa_attention(q, k, v, mask, nh // nkv).transpose(1, 2).reshape(B, S, H)
        h = h + P.linear(a, p + "self_attn.o_proj")
        x = rms_norm(h, P.base[p + "post_attention_layernorm.weight"], eps)
        mlp = P.linear(F.silu(P.linear(x, p + "mlp.gate_proj")) * P.linear(x, p + "mlp.up_proj"),
                       p + "mlp.down_proj")
        h = h + mlp
    h = rms_norm(h, P.base["model.norm.weight"], eps)
    head = P.base["lm_head.weight"] if "lm_head.weight" in P.base else P.base["model.embed_tokens.weight"]
    return h @ head.T


def causal_lm_loss(logits, labels):
    # ForCausalLMLoss: shift inside the loss, cross entropy mean over labels != -100
    shift_logits = logits[:, :-1, :].reshape(-1, logits.shape[-1])
    shift_labels = labels[:, 1:].reshape(-1)
    return F.cross_entropy(shift_logits, shift_labels, ignore_index=-100, reduction="mean")


# --------------------------------------------------------------------------------------------
# Self-checks against independent formulations
# --------------------------------------------------------------------------------------------
def naive_attention(q, k, v, allowed, n_rep):
    """Per (batch, head, query) loop; kv head = head // n_rep; softmax over allowed keys only."""
    B, nh, S, hd = q.shape
    out = torch.zeros_like(q)
    for b in range(B):
        for hh in range(nh):
            kvh = hh // n_rep
            for i in range(S):
                js = [j for j in range(S) if allowed(b, i, j)]
                s = torch.stack([(q[b, hh, i] * k[b, kvh, j]).sum() / math.sqrt(hd) for j in js])
                pr = torch.exp(s - s.max())
                pr = pr / pr.sum()
                out[b, hh, i] = sum(pr[n] * v[b, kvh, j] for n, j in enumerate(js))
    return out


def check_attention(g):
    B, nh, nkv, S, hd = 3, 4, 2, 7, 16
    q = torch.randn(B, nh, S, hd, generator=g, dtype=torch.float64)
    k = torch.randn(B, nkv, S, hd, generator=g, dtype=torch.float64)
    v = torch.randn(B, nkv, S, hd, generator=g, dtype=torch.float64)
    am = attention_mask_for()
    fast = gqa_attention(q, k, v, causal_mask(am, torch.float64), nh // nkv)
    slow = naive_attention(q, k, v, lambda b, i, j: j <= i and am[b, j] == 1, nh // nkv)
    err_dec = (fast - slow).abs().max().item()
    assert err_dec < 1e-12, err_dec
    # encoder: all heads own their k/v, padding mask only
    k4 = torch.randn(B, nh, S, hd, generator=g, dtype=torch.float64)
    v4 = torch.randn(B, nh, S, hd, generator=g, dtype=torch.float64)
    ext = encoder_extended_mask(am, torch.float64)
    fast = torch.softmax(q @ k4.transpose(-1, -2) / math.sqrt(hd) + ext, dim=-1) @ v4
    slow = naive_attention(q, k4, v4, lambda b, i, j: am[b, j] == 1, 1)
    err_enc = (fast - slow).abs().max().item()
    assert err_enc < 1e-12, err_enc
    return err_dec, err_enc


def check_rotary(cfg, g):
    """rotate_half layout: pair (x[i], x[i + d/2]) is the complex number x[i] + 1j x[i + d/2],
    rotated by exp(1j * pos * inv_freq[i])."""
    B, nh, S, hd = 2, 4, 7, 16
    x = torch.randn(B, nh, S, hd, generator=g, dtype=torch.float64)
    pos = torch.arange(S)[None, :].expand(B, S)
    cos, sin = rotary_cos_sin(cfg, pos)
    fast, _ = apply_rotary_pos_emb(x, x, cos, sin)
    z = torch.complex(x[..., : hd // 2], x[..., hd // 2:])
    ang = pos.to(torch.float64)[:, None, :, None] * rope_inv_freq(cfg)
    zr = z * torch.polar(torch.ones_like(ang), ang)
    slow = torch.cat((zr.real, zr.imag), dim=-1)
    err = (fast - slow).abs().max().item()
    assert err < 1e-12, err
    return err


def check_llama3_inv_freq(cfg):
    """Branch-by-branch scalar formula of Llama 3.1's apply_scaling; all three bands must occur."""
    rs = cfg["rope_scaling"]
    base = default_inv_freq(cfg).tolist()
    got = rope_inv_freq(cfg).tolist()
    lo_w = rs["original_max_position_embeddings"] / rs["low_freq_factor"]
    hi_w = rs["original_max_position_embeddings"] / rs["high_freq_factor"]
    bands = set()
    for f, gf in zip(base, got):
        wl = 2 * math.pi / f
        if wl < hi_w:
            want, band = f, "high"
        elif wl > lo_w:
            want, band = f / rs["factor"], "low"
        else:
            s = (rs["original_max_position_embeddings"] / wl - rs["low_freq_factor"]) / (
                rs["high_freq_factor"] - rs["low_freq_factor"])
            want, band = (1 - s) * f / rs["factor"] + s * f, "medium"
        bands.add(band)
        assert abs(gf - want) <= 1e-15 * abs(want), (gf, want)
    assert bands == {"high", "medium", "low"}, bands
    return got


def check_finite_difference(loss_fn, lora, g, h=1e-3):
    """Central differences on 3 randomly chosen LoRA entries (among the larger half of |grad| of
    the chosen tensor), Richardson-extrapolated: D(h) = (L(x+h) - L(x-h)) / 2h has error O(h^2),
    (4 D(h/2) - D(h)) / 3 has error O(h^4). A plain central difference in float64 cannot reach
    1e-6 relative on the smallest gradients (query LoRA entries of ~4e-6): its rounding error
    eps*L/h and its truncation error h^2 * (third derivative) / 6 cross above that."""
    names = sorted(lora)
    results = []
    for _ in range(3):
        name = names[int(torch.randint(len(names), (1,), generator=g))]
        t = lora[name]
        grad = t.grad.reshape(-1)
        big = (grad.abs() >= grad.abs().median()).nonzero().reshape(-1)
        idx = int(big[int(torch.randint(len(big), (1,), generator=g))])

        def central(step):
            with torch.no_grad():
                flat = t.view(-1)
                old = flat[idx].item()
                flat[idx] = old + step
                lp = loss_fn().item()
                flat[idx] = old - step
                lm = loss_fn().item()
                flat[idx] = old
            return (lp - lm) / (2 * step)

        d1, d2 = central(h), central(h / 2)
        fd = (4 * d2 - d1) / 3
        ag = grad[idx].item()
        rel = abs(fd - ag) / abs(ag)
        rel_plain = abs(d2 - ag) / abs(ag)
        assert rel < 1e-6, (name, idx, fd, ag, rel)
        results.append((name.replace("base_model.model.", ""), idx, f"autograd {ag:.6e}",
                        f"fd {fd:.6e}", f"rel {rel:.1e}", f"plain central(h/2) rel {rel_plain:.1e}"))
    return results


# --------------------------------------------------------------------------------------------
# The fixed batch
# --------------------------------------------------------------------------------------------
def attention_mask_for():
    am = torch.zeros(BATCH, SEQ, dtype=torch.int64)
    for b, n in enumerate(SEQ_LENS):
        am[b, :n] = 1
    return am


def encoder_batch(cfg, g):
    pad = cfg["pad_token_id"]
    am = attention_mask_for()
    ids = torch.randint(3, cfg["vocab_size"], (BATCH, SEQ), generator=g, dtype=torch.int64)
    ids = torch.where(am == 1, ids, torch.full_like(ids, pad))
    tt = torch.zeros(BATCH, SEQ, dtype=torch.int64)
    if cfg["type_vocab_size"] > 1:
        tt[0, SEQ // 2 + 1:] = 1  # sequence 0 (unpadded): second half is segment B
    labels = torch.tensor([2, 0, 1], dtype=torch.int64)
    return ids, am, tt, labels


def decoder_batch(cfg, g):
    am = attention_mask_for()
    ids = torch.randint(3, cfg["vocab_size"], (BATCH, SEQ), generator=g, dtype=torch.int64)
    ids[:, 0] = cfg["bos_token_id"]
    ids = torch.where(am == 1, ids, torch.full_like(ids, cfg["eos_token_id"]))  # pad with eos
    labels = torch.where(am == 1, ids, torch.full_like(ids, -100))
    return ids, am, labels


# --------------------------------------------------------------------------------------------
# Writing one model directory
# --------------------------------------------------------------------------------------------
def to64(weights):
    return {k: v.detach().to(torch.float64) for k, v in weights.items()}


def run_reference(kind, cfg, weights, lora32, batch, head_params, g_check, checks_log, fd=True):
    base = to64(weights)
    lora = {k: v.to(torch.float64).requires_grad_(True) for k, v in lora32.items()}
    for k in head_params:
        base[k].requires_grad_(True)
    P = Params(base, lora)
    if kind == "encoder":
        ids, am, tt, labels = batch

        def loss_fn():
            logits = encoder_forward(cfg, P, ids, am, tt)
            return F.cross_entropy(logits, labels), logits
    else:
        ids, am, labels = batch

        def loss_fn():
            logits = decoder_forward(cfg, P, ids, am)
            return causal_lm_loss(logits, labels), logits

    loss, logits = loss_fn()
    loss.backward()
    for name, t in lora.items():
        assert t.grad is not None and t.grad.abs().max() > 0, name
    if fd:
        checks_log.append(("finite differences", check_finite_difference(lambda: loss_fn()[0], lora, g_check)))
    ref = {"logits": logits.detach().float(), "loss": loss.detach().float().reshape(())}
    for k, t in lora.items():
        ref[k] = lora32[k]
        ref["grad." + k] = t.grad.float()
    for k in head_params:
        ref["grad." + k] = base[k].grad.float()
    return ref, loss.item()


def write_model_dir(name, cfg, weights, ref, batch_tensors, dtype=torch.float32):
    d = os.path.join(OUT_DIR, name)
    os.makedirs(d, exist_ok=True)
    write_json(os.path.join(d, "config.json"), cfg)
    save_safetensors(os.path.join(d, "model.safetensors"), {k: v.to(dtype) for k, v in weights.items()})
    tensors = dict(batch_tensors)
    tensors.update(ref)
    save_safetensors(os.path.join(d, "reference.safetensors"), tensors)


def write_sharded(name, cfg, weights, ref, batch_tensors):
    d = os.path.join(OUT_DIR, name)
    os.makedirs(d, exist_ok=True)
    write_json(os.path.join(d, "config.json"), cfg)
    names = list(weights)  # state_dict order, filled into shards in order like shard_checkpoint
    sizes = [weights[n].numel() * weights[n].element_size() for n in names]
    total = sum(sizes)
    shards, acc = [[], []], 0
    for n, s in zip(names, sizes):
        shards[0 if acc < total // 2 else 1].append(n)
        acc += s
    weight_map = {}
    for i, shard in enumerate(shards):
        fname = f"model-{i + 1:05d}-of-00002.safetensors"
        save_safetensors(os.path.join(d, fname), {n: weights[n] for n in shard})
        for n in shard:
            weight_map[n] = fname
    write_json(os.path.join(d, "model.safetensors.index.json"),
               {"metadata": {"total_size": total}, "weight_map": weight_map})
    tensors = dict(batch_tensors)
    tensors.update(ref)
    save_safetensors(os.path.join(d, "reference.safetensors"), tensors)


def write_peft_dir(name, base_name, task_type, targets, lora32, extra=None):
    d = os.path.join(OUT_DIR, name)
    os.makedirs(d, exist_ok=True)
    cfg = {
        "alpha_pattern": {},
        "auto_mapping": None,
        "base_model_name_or_path": "tests/data/hf_tiny/" + base_name,
        "bias": "none",
        "fan_in_fan_out": False,
        "inference_mode": True,
        "init_lora_weights": True,
        "layer_replication": None,
        "layers_pattern": None,
        "layers_to_transform": None,
        "loftq_config": {},
        "lora_alpha": LORA_ALPHA,
        "lora_dropout": 0.0,
        "megatron_config": None,
        "megatron_core": "megatron.core",
        "modules_to_save": ["classifier", "score"] if task_type == "SEQ_CLS" else None,
        "peft_type": "LORA",
        "r": LORA_R,
        "rank_pattern": {},
        "revision": None,
        "target_modules": sorted(targets),
        "task_type": task_type,
        "use_dora": False,
        "use_rslora": False,
    }
    write_json(os.path.join(d, "adapter_config.json"), cfg)
    tensors = dict(lora32)
    if extra:
        tensors.update(extra)
    save_safetensors(os.path.join(d, "adapter_model.safetensors"), tensors)


def main():
    torch.manual_seed(0)
    if os.path.isdir(OUT_DIR):
        for entry in os.listdir(OUT_DIR):
            p = os.path.join(OUT_DIR, entry)
            if os.path.isdir(p):
                shutil.rmtree(p)
    os.makedirs(OUT_DIR, exist_ok=True)
    g_check = torch.Generator().manual_seed(1234)
    log = []

    log.append(("GQA/causal+padding attention vs naive loop (max abs err dec, enc)", check_attention(g_check)))
    summary = {}

    # ---------------- encoders ----------------
    for name, cfg, seed in (("bert", bert_config(), 10), ("roberta", roberta_config(), 20)):
        g = torch.Generator().manual_seed(seed)
        w = encoder_weights(cfg, g, cfg["model_type"])
        lora = lora_factors(w, g, ("query", "value"), cfg["model_type"] + ".encoder")
        assert len(lora) == 2 * 2 * cfg["num_hidden_layers"]
        batch = encoder_batch(cfg, g)
        ids, am, tt, labels = batch
        bt = {"input_ids": ids, "attention_mask": am, "token_type_ids": tt, "labels": labels}
        head = [k for k in w if k.startswith("classifier.")]
        variants = [(name, cfg, torch.float32)]
        if name == "bert":
            variants.append(("bert_fp16", bert_config("float16"), torch.float16))
        for vname, vcfg, dt in variants:
            wv = {k: v.to(dt).to(torch.float32) for k, v in w.items()}  # rounded to what is stored
            ref, loss = run_reference("encoder", vcfg, wv, lora, batch, head, g_check, log, fd=(dt == torch.float32))
            write_model_dir(vname, vcfg, wv, ref, bt, dt)
            summary[vname] = loss
        if name == "bert":
            write_peft_dir("bert_peft", "bert", "SEQ_CLS", ("query", "value"), lora,
                           {"base_model.model." + k: w[k] for k in head})

    # ---------------- decoders ----------------
    log.append(("rotary (rotate_half) vs complex formulation, theta 1e4 (max abs err)", check_rotary(llama_config(), g_check)))
    log.append(("rotary vs complex formulation, llama3 scaling (max abs err)",
                check_rotary(llama_config(scaled=True), g_check)))
    log.append(("llama3 inv_freq vs scalar branch formula; scaled/unscaled",
                [a / b for a, b in zip(check_llama3_inv_freq(llama_config(scaled=True)),
                                       default_inv_freq(llama_config(scaled=True)).tolist())]))
    for name, cfg, seed, qkv_bias in (("llama", llama_config(), 30, False),
                                      ("llama3_scaled", llama_config(scaled=True), 40, False),
                                      ("qwen2", qwen2_config(), 50, True)):
        g = torch.Generator().manual_seed(seed)
        w = decoder_weights(cfg, g, qkv_bias)
        lora = lora_factors(w, g, ("q_proj", "v_proj"), "model.layers")
        assert len(lora) == 2 * 2 * cfg["num_hidden_layers"]
        batch = decoder_batch(cfg, g)
        ids, am, labels = batch
        bt = {"input_ids": ids, "attention_mask": am, "labels": labels}
        ref, loss = run_reference("decoder", cfg, w, lora, batch, [], g_check, log)
        write_model_dir(name, cfg, w, ref, bt)
        summary[name] = loss
        if name == "llama":
            wb = {k: v.to(torch.bfloat16).to(torch.float32) for k, v in w.items()}
            cfgb = llama_config("bfloat16")
            refb, lossb = run_reference("decoder", cfgb, wb, lora, batch, [], g_check, log, fd=False)
            write_model_dir("llama_bf16", cfgb, wb, refb, bt, torch.bfloat16)
            summary["llama_bf16"] = lossb
            write_peft_dir("llama_peft", "llama", "CAUSAL_LM", ("q_proj", "v_proj"), lora)
        if name == "qwen2":
            write_sharded("qwen2_sharded", cfg, w, ref, bt)

    verify_outputs()
    for what, val in log:
        print(what, ":", val)
    print("losses:", summary)
    print("torch", torch.__version__)


def verify_outputs():
    """Everything written loads back with the reader, bit for bit where it should."""
    for d in sorted(os.listdir(OUT_DIR)):
        p = os.path.join(OUT_DIR, d)
        if not os.path.isdir(p):
            continue
        for f in sorted(os.listdir(p)):
            if f.endswith(".safetensors"):
                t, meta = load_safetensors(os.path.join(p, f))
                assert meta == {"format": "pt"}, (d, f, meta)
                for k, v in t.items():
                    assert torch.isfinite(v.float()).all(), (d, f, k)
    a, _ = load_safetensors(os.path.join(OUT_DIR, "qwen2", "model.safetensors"))
    b = {}
    idx = json.load(open(os.path.join(OUT_DIR, "qwen2_sharded", "model.safetensors.index.json")))
    for fname in sorted(set(idx["weight_map"].values())):
        b.update(load_safetensors(os.path.join(OUT_DIR, "qwen2_sharded", fname))[0])
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert idx["metadata"]["total_size"] == sum(v.numel() * v.element_size() for v in a.values())
    bf, _ = load_safetensors(os.path.join(OUT_DIR, "llama_bf16", "model.safetensors"))
    assert all(v.dtype == torch.bfloat16 for v in bf.values())
    r, _ = load_safetensors(os.path.join(OUT_DIR, "bert", "reference.safetensors"))
    pe, _ = load_safetensors(os.path.join(OUT_DIR, "bert_peft", "adapter_model.safetensors"))
    for k, v in pe.items():
        if ".lora_" in k:
            assert torch.equal(v, r[k]), k


if __name__ == "__main__":
    sys.exit(main())
