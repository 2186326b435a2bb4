"""LLaMA-family models for growth: RMSNorm without biases, gated MLP, rotary positions, grouped-query
attention, tied or untied LM head."""

from __future__ import annotations

import torch

from pipeline.errors import ConfigError
from pipeline.growth.adapters import Adapter

HF_NAMES = {"q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj", "o": "self_attn.o_proj",
            "gate": "mlp.gate_proj", "up": "mlp.up_proj", "down": "mlp.down_proj",
            "attn_norm": "input_layernorm", "mlp_norm": "post_attention_layernorm"}


class LlamaAdapter(Adapter):
    family = "llama"
    layer_modules = ("attn_norm", "q", "k", "v", "o", "mlp_norm", "gate", "up", "down")
    global_names = {"embed": "model.embed_tokens.weight", "final_norm.weight": "model.norm.weight",
                    "head": "lm_head.weight"}
    has_bias = False
    layer_norm = False
    norm_eps_key = "rms_norm_eps"

    def __init__(self, hf_config):
        if getattr(hf_config, "attention_bias", False) or getattr(hf_config, "mlp_bias", False):
            raise ConfigError("LLaMA donors with attention/MLP biases are not supported yet")
        super().__init__(hf_config)

    def layer_prefix(self, i: int) -> str:
        return f"model.layers.{i}."

    def layer_to_canonical(self, hf: dict, prefix: str) -> dict[str, torch.Tensor]:
        return {f"{k}.weight": hf[f"{prefix}{name}.weight"] for k, name in HF_NAMES.items()}

    def layer_to_hf(self, layer: dict) -> dict[str, torch.Tensor]:
        return {f"{HF_NAMES[key.split('.')[0]]}.weight": value for key, value in layer.items()}

    def wire(self, model, wrap, global_weights):
        body = model.model
        body.embed_tokens = wrap(body.embed_tokens, global_weights(weight="embed"))
        body.norm = wrap(body.norm, global_weights(weight="final_norm.weight"))
        # the rotary embedding holds buffers, not weights: give it real ones
        body.rotary_emb = type(body.rotary_emb)(config=model.config)
        model.lm_head = wrap(model.lm_head, global_weights(weight="embed" if self.tied_head else "head"))
        return body.layers
