"""Phi-3 / Phi-4-mini for growth: LLaMA's graph with q, k, v fused into `qkv_proj` (rows: all query
heads, then key heads, then value heads) and gate and up fused into `gate_up_proj` (gate rows first);
split into canonical modules on the way in, concatenated on the way out. Partial rotary embeddings
(`partial_rotary_factor`) act within each head, and heads grow whole, so they need nothing."""

from __future__ import annotations

import torch

from pipeline.growth.llama import HF_NAMES, LlamaAdapter

FUSED = {"qkv_proj": ("q", "k", "v"), "gate_up_proj": ("gate", "up")}


class Phi3Adapter(LlamaAdapter):
    family = "phi3"

    def __init__(self, hf_config):
        super().__init__(hf_config)
        head_dim = getattr(hf_config, "head_dim", None) or hf_config.hidden_size // hf_config.num_attention_heads
        kv_rows = (hf_config.num_key_value_heads or hf_config.num_attention_heads) * head_dim
        self.split_rows = {"qkv_proj": [hf_config.num_attention_heads * head_dim, kv_rows, kv_rows],
                           "gate_up_proj": [hf_config.intermediate_size] * 2}

    def biases_of(self, hf_config) -> tuple[str, ...]:
        return ()

    def layer_to_canonical(self, hf: dict, prefix: str) -> dict[str, torch.Tensor]:
        out = {}
        for fused, modules in FUSED.items():
            parent = "self_attn" if fused == "qkv_proj" else "mlp"
            parts = hf[f"{prefix}{parent}.{fused}.weight"].split(self.split_rows[fused])
            out.update({f"{module}.weight": part for module, part in zip(modules, parts)})
        for key in ("o", "down", "attn_norm", "mlp_norm"):
            out[f"{key}.weight"] = hf[f"{prefix}{HF_NAMES[key]}.weight"]
        return out

    def layer_to_hf(self, layer: dict) -> dict[str, torch.Tensor]:
        out = {f"{HF_NAMES[key]}.weight": layer[f"{key}.weight"] for key in ("o", "down", "attn_norm", "mlp_norm")}
        out["self_attn.qkv_proj.weight"] = torch.cat([layer["q.weight"], layer["k.weight"], layer["v.weight"]])
        out["mlp.gate_up_proj.weight"] = torch.cat([layer["gate.weight"], layer["up.weight"]])
        return out
