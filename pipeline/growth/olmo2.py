"""OLMo 2 for growth: no input norms (attention and MLP read the raw residual stream), RMSNorm on each
block's output before the residual add (canonical attn_out_norm, mlp_out_norm: a new identity layer
gets zero gains there), and q/k norms over all query (key) heads together, one gain per row.

Those q/k norms are why lossless width needs whole multiples of the donor's head counts: a norm over
all heads sees each donor head as often as it is copied, so unequal copy counts change its RMS; with
every head copied k times it is the donor's. (They also read rms_norm_eps, which lossless width
shrinks for the output norms: q and k are scaled to match, operator.qk_factor.)"""

from pipeline.growth.llama import HF_NAMES, LlamaAdapter


class Olmo2Adapter(LlamaAdapter):
    family = "olmo2"
    layer_modules = ("q", "k", "v", "o", "q_heads_norm", "k_heads_norm", "attn_out_norm", "gate", "up", "down",
                     "mlp_out_norm")
    hf_names = {**HF_NAMES, "q_heads_norm": "self_attn.q_norm", "k_heads_norm": "self_attn.k_norm",
                "attn_out_norm": "post_attention_layernorm", "mlp_out_norm": "post_feedforward_layernorm"}

    def plan_problem(self, plan) -> str | None:
        d, t = plan.donor, plan.target
        if plan.width_init != "lossless" or (t.heads % d.heads == 0 and t.kv_heads % d.kv_heads == 0):
            return None
        k = max(1, round(t.heads / d.heads))
        return (f"OLMo2 normalizes q and k over all heads together, so lossless width needs whole multiples of "
                f"the donor's heads ({d.heads} query / {d.kv_heads} KV), got {t.heads} / {t.kv_heads}: the closest "
                f"exact target has model.heads={k * d.heads} model.kv_heads={k * d.kv_heads}")
