"""Gemma2 for growth: Gemma (1 + w gains, sqrt(width) embedding scale) with sandwich norms. Its
`post_attention_layernorm` and `post_feedforward_layernorm` normalize the attention's and the MLP's
output before the residual add (canonical attn_out_norm, mlp_out_norm) and `pre_feedforward_layernorm`
is the MLP's input norm. A new identity layer gets zero output-norm gains (w = -1) and live copies of
its source layer's writers (adapters.Adapter.identity_modules). Attention and final-logit soft-capping
and query_pre_attn_scalar act within a head or on the logits, which growth keeps; each layer keeps
the sliding or global attention of the donor layer it copies (pipeline/models/family.py)."""

from pipeline.growth.gemma import GemmaAdapter
from pipeline.growth.llama import HF_NAMES


class Gemma2Adapter(GemmaAdapter):
    family = "gemma2"
    layer_modules = GemmaAdapter.layer_modules + ("attn_out_norm", "mlp_out_norm")
    hf_names = {**HF_NAMES, "attn_out_norm": "post_attention_layernorm", "mlp_norm": "pre_feedforward_layernorm",
                "mlp_out_norm": "post_feedforward_layernorm"}
