"""GPT-2 for growth: Conv1D weights stored (in, out), q/k/v fused in c_attn, learned positions,
LayerNorm with biases, LM head tied to the token embedding."""

from __future__ import annotations

import torch

from pipeline.growth.adapters import Adapter


class GPT2Adapter(Adapter):
    family = "gpt2"
    layer_modules = ("attn_norm", "q", "k", "v", "o", "mlp_norm", "up", "down")
    global_names = {"embed": "transformer.wte.weight", "pos": "transformer.wpe.weight",
                    "final_norm.weight": "transformer.ln_f.weight", "final_norm.bias": "transformer.ln_f.bias"}
    biases = layer_modules
    layer_norm = True
    norm_eps_key = "layer_norm_epsilon"

    def __init__(self, hf_config):
        super().__init__(hf_config)
        self.tied_head = True  # GPT2LMHeadModel always ties

    def normalize_names(self, hf: dict) -> dict:
        if "wte.weight" in hf:  # original GPT-2 checkpoints store the body without its prefix
            return {f"transformer.{k}": v for k, v in hf.items()}
        return hf

    def layer_prefix(self, i: int) -> str:
        return f"transformer.h.{i}."

    def layer_to_canonical(self, hf: dict, p: str) -> dict[str, torch.Tensor]:
        q_w, k_w, v_w = hf[p + "attn.c_attn.weight"].T.chunk(3, dim=0)  # Conv1D (in, out) -> (out, in)
        q_b, k_b, v_b = hf[p + "attn.c_attn.bias"].chunk(3)
        return {
            "attn_norm.weight": hf[p + "ln_1.weight"], "attn_norm.bias": hf[p + "ln_1.bias"],
            "q.weight": q_w, "q.bias": q_b, "k.weight": k_w, "k.bias": k_b, "v.weight": v_w, "v.bias": v_b,
            "o.weight": hf[p + "attn.c_proj.weight"].T, "o.bias": hf[p + "attn.c_proj.bias"],
            "mlp_norm.weight": hf[p + "ln_2.weight"], "mlp_norm.bias": hf[p + "ln_2.bias"],
            "up.weight": hf[p + "mlp.c_fc.weight"].T, "up.bias": hf[p + "mlp.c_fc.bias"],
            "down.weight": hf[p + "mlp.c_proj.weight"].T, "down.bias": hf[p + "mlp.c_proj.bias"],
        }

    def layer_to_hf(self, layer: dict) -> dict[str, torch.Tensor]:
        return {"ln_1.weight": layer["attn_norm.weight"], "ln_1.bias": layer["attn_norm.bias"],
                "ln_2.weight": layer["mlp_norm.weight"], "ln_2.bias": layer["mlp_norm.bias"],
                "attn.c_attn.weight": torch.cat([layer["q.weight"], layer["k.weight"], layer["v.weight"]]).T,
                "attn.c_attn.bias": torch.cat([layer["q.bias"], layer["k.bias"], layer["v.bias"]]),
                "attn.c_proj.weight": layer["o.weight"].T, "attn.c_proj.bias": layer["o.bias"],
                "mlp.c_fc.weight": layer["up.weight"].T, "mlp.c_fc.bias": layer["up.bias"],
                "mlp.c_proj.weight": layer["down.weight"].T, "mlp.c_proj.bias": layer["down.bias"]}

    def wire(self, model, wrap, global_weights):
        body = model.transformer
        body.wte = wrap(body.wte, global_weights(weight="embed"))
        body.wpe = wrap(body.wpe, global_weights(weight="pos"))
        body.ln_f = wrap(body.ln_f, global_weights(weight="final_norm.weight", bias="final_norm.bias"))
        model.lm_head = wrap(model.lm_head, global_weights(weight="embed"))
        return body.h
