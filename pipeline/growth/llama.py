"""LLaMA-style decoders for growth: RMSNorm, gated MLP, rotary positions, grouped-query attention,
tied or untied LM head, HF's `model.layers.<i>.self_attn/mlp` names. LLaMA itself (with its optional
attention/MLP biases), and the families that share its graph (mistral.py, qwen2.py, qwen3.py)."""

from __future__ import annotations

import torch

from pipeline.growth.adapters import Adapter

HF_NAMES = {"q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj", "o": "self_attn.o_proj",
            "gate": "mlp.gate_proj", "up": "mlp.up_proj", "down": "mlp.down_proj",
            "attn_norm": "input_layernorm", "mlp_norm": "post_attention_layernorm",
            "q_norm": "self_attn.q_norm", "k_norm": "self_attn.k_norm"}


class LlamaAdapter(Adapter):
    family = "llama"
    layer_modules = ("attn_norm", "q", "k", "v", "o", "mlp_norm", "gate", "up", "down")
    global_names = {"embed": "model.embed_tokens.weight", "final_norm.weight": "model.norm.weight",
                    "head": "lm_head.weight"}
    layer_norm = False
    norm_eps_key = "rms_norm_eps"
    hf_names = HF_NAMES  # canonical layer module -> HF module name within a layer

    def __init__(self, hf_config):
        super().__init__(hf_config)
        self.biases = self.biases_of(hf_config)

    def biases_of(self, hf_config) -> tuple[str, ...]:
        """LLaMA's `attention_bias` puts a bias on q, k, v and o; `mlp_bias` on gate, up and down."""
        return (("q", "k", "v", "o") if getattr(hf_config, "attention_bias", False) else ()) + \
            (("gate", "up", "down") if getattr(hf_config, "mlp_bias", False) else ())

    def layer_prefix(self, i: int) -> str:
        return f"model.layers.{i}."

    def layer_to_canonical(self, hf: dict, prefix: str) -> dict[str, torch.Tensor]:
        return {key: hf[f"{prefix}{self.hf_names[key.split('.')[0]]}.{key.split('.')[1]}"] for key in self.layer_keys()}

    def layer_to_hf(self, layer: dict) -> dict[str, torch.Tensor]:
        return {f"{self.hf_names[key.split('.')[0]]}.{key.split('.')[1]}": value for key, value in layer.items()}

    def wire(self, model, wrap, global_weights):
        body = model.model
        body.embed_tokens = wrap(body.embed_tokens, global_weights(weight="embed"))
        norm = {"weight": "final_norm.weight", "bias": "final_norm.bias"}  # a LayerNorm family's has a bias
        body.norm = wrap(body.norm, global_weights(**{k: v for k, v in norm.items() if v in self.global_names}))
        # the rotary embedding holds buffers, not weights: give it real ones
        body.rotary_emb = type(body.rotary_emb)(config=model.config)
        model.lm_head = wrap(model.lm_head, global_weights(weight="embed" if self.tied_head else "head"))
        return body.layers
