"""StarCoder2 for growth: LLaMA's attention (rotary, GQA, q/k/v/o_proj) with LayerNorm and biases
everywhere (`use_bias`), like GPT-2's, and a plain GELU MLP (`c_fc`, `c_proj`). The LayerNorm
residual grows as GPT-2's does (new units written as the mean of the old ones)."""

from __future__ import annotations

from pipeline.growth.llama import HF_NAMES, LlamaAdapter


class Starcoder2Adapter(LlamaAdapter):
    family = "starcoder2"
    layer_modules = ("attn_norm", "q", "k", "v", "o", "mlp_norm", "up", "down")
    global_names = {**LlamaAdapter.global_names, "final_norm.bias": "model.norm.bias"}
    layer_norm = True
    norm_eps_key = "norm_epsilon"
    hf_names = {**HF_NAMES, "up": "mlp.c_fc", "down": "mlp.c_proj"}

    def biases_of(self, hf_config) -> tuple[str, ...]:
        return self.layer_modules if getattr(hf_config, "use_bias", True) else ()
