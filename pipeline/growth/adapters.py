"""Architecture adapters: HF parameter names <-> a canonical, family-independent layout.

Canonical layout (every matrix in torch.nn.Linear orientation, (out, in)):
  globals: embed (V, D), pos (T, D) [GPT-2], final_norm.weight/.bias (D), head (V, D) [untied only]
  layer:   attn_norm, q, k, v, o, mlp_norm, up, gate [LLaMA], down   (".weight", ".bias" where present)

Each canonical module has a *role*: which width expansion acts on its rows (what it produces) and
which on its columns (what it reads). The growth operator works only with roles, so a new family
needs only a name map and its quirks (GPT-2's Conv1D stores (in, out) and fuses q/k/v into c_attn).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pipeline.config import ConfigError

# role of each canonical layer module: (row expansion, column expansion); None = not expanded.
# "residual" rows = writes the residual stream; "residual" columns = reads it.
LAYER_ROLES = {
    "attn_norm": ("residual", None), "mlp_norm": ("residual", None),
    "q": ("q_heads", "residual"), "k": ("k_heads", "residual"), "v": ("v_heads", "residual"),
    "o": ("residual", "q_heads"),  # o reads the attention output, one slot per query head
    "up": ("ffn", "residual"), "gate": ("ffn", "residual"), "down": ("residual", "ffn"),
}
NORMS = ("attn_norm", "mlp_norm")
GLOBAL_NAMES = {
    "gpt2": {"embed": "transformer.wte.weight", "pos": "transformer.wpe.weight",
             "final_norm.weight": "transformer.ln_f.weight", "final_norm.bias": "transformer.ln_f.bias"},
    "llama": {"embed": "model.embed_tokens.weight", "final_norm.weight": "model.norm.weight", "head": "lm_head.weight"},
}
LLAMA_NAMES = {"q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj", "o": "self_attn.o_proj",
               "gate": "mlp.gate_proj", "up": "mlp.up_proj", "down": "mlp.down_proj",
               "attn_norm": "input_layernorm", "mlp_norm": "post_attention_layernorm"}


@dataclass(frozen=True)
class Adapter:
    family: str
    layer_modules: tuple[str, ...]
    has_bias: bool
    tied_head: bool

    def layer_keys(self) -> list[str]:
        keys = []
        for name in self.layer_modules:
            keys.append(f"{name}.weight")
            if self.has_bias:
                keys.append(f"{name}.bias")
        return keys

    # --- HF -> canonical -----------------------------------------------------------------------
    def to_canonical(self, hf: dict[str, torch.Tensor], layers: int) -> tuple[dict, list[dict]]:
        try:
            if self.family == "gpt2":
                if "wte.weight" in hf:  # original GPT-2 checkpoints store the body without its prefix
                    hf = {f"transformer.{k}": v for k, v in hf.items()}
                return _gpt2_to_canonical(hf, layers)
            return _llama_to_canonical(hf, layers, self.tied_head)
        except KeyError as err:
            raise ConfigError(f"donor checkpoint has no tensor {err}: it does not match its config.json") from None

    # --- canonical -> HF -----------------------------------------------------------------------
    def layer_to_hf(self, layer: dict) -> dict[str, torch.Tensor]:
        """Names relative to one decoder layer module (for torch.func.functional_call)."""
        if self.family == "gpt2":
            out = {"ln_1.weight": layer["attn_norm.weight"], "ln_1.bias": layer["attn_norm.bias"],
                   "ln_2.weight": layer["mlp_norm.weight"], "ln_2.bias": layer["mlp_norm.bias"],
                   "attn.c_attn.weight": torch.cat([layer["q.weight"], layer["k.weight"], layer["v.weight"]]).T,
                   "attn.c_attn.bias": torch.cat([layer["q.bias"], layer["k.bias"], layer["v.bias"]]),
                   "attn.c_proj.weight": layer["o.weight"].T, "attn.c_proj.bias": layer["o.bias"],
                   "mlp.c_fc.weight": layer["up.weight"].T, "mlp.c_fc.bias": layer["up.bias"],
                   "mlp.c_proj.weight": layer["down.weight"].T, "mlp.c_proj.bias": layer["down.bias"]}
            return out
        return {f"{LLAMA_NAMES[key.split('.')[0]]}.weight": value for key, value in layer.items()}

    def layer_prefix(self, i: int) -> str:
        return f"transformer.h.{i}." if self.family == "gpt2" else f"model.layers.{i}."

    def global_name(self, key: str) -> str:
        return GLOBAL_NAMES[self.family][key]

def adapter_for(hf_config) -> Adapter:
    model_type = getattr(hf_config, "model_type", None)
    if model_type == "gpt2":
        return Adapter("gpt2", ("attn_norm", "q", "k", "v", "o", "mlp_norm", "up", "down"), has_bias=True,
                       tied_head=True)
    if model_type == "llama":
        if getattr(hf_config, "attention_bias", False) or getattr(hf_config, "mlp_bias", False):
            raise ConfigError("LLaMA donors with attention/MLP biases are not supported yet")
        return Adapter("llama", ("attn_norm", "q", "k", "v", "o", "mlp_norm", "gate", "up", "down"),
                       has_bias=False, tied_head=bool(hf_config.tie_word_embeddings))
    raise ConfigError(f"donor architecture {model_type!r} is not supported: growth knows 'gpt2' and 'llama'")


def _globals_to_canonical(hf: dict, family: str, tied: bool) -> dict:
    return {key: hf[name] for key, name in GLOBAL_NAMES[family].items() if not (key == "head" and tied)}


def _gpt2_to_canonical(hf: dict, layers: int) -> tuple[dict, list[dict]]:
    g = _globals_to_canonical(hf, "gpt2", tied=True)
    out = []
    for i in range(layers):
        p = f"transformer.h.{i}."
        qkv_w = hf[p + "attn.c_attn.weight"].T  # Conv1D (in, out) -> (out, in)
        q_w, k_w, v_w = qkv_w.chunk(3, dim=0)
        q_b, k_b, v_b = hf[p + "attn.c_attn.bias"].chunk(3)
        out.append({
            "attn_norm.weight": hf[p + "ln_1.weight"], "attn_norm.bias": hf[p + "ln_1.bias"],
            "q.weight": q_w, "q.bias": q_b, "k.weight": k_w, "k.bias": k_b, "v.weight": v_w, "v.bias": v_b,
            "o.weight": hf[p + "attn.c_proj.weight"].T, "o.bias": hf[p + "attn.c_proj.bias"],
            "mlp_norm.weight": hf[p + "ln_2.weight"], "mlp_norm.bias": hf[p + "ln_2.bias"],
            "up.weight": hf[p + "mlp.c_fc.weight"].T, "up.bias": hf[p + "mlp.c_fc.bias"],
            "down.weight": hf[p + "mlp.c_proj.weight"].T, "down.bias": hf[p + "mlp.c_proj.bias"],
        })
    return g, out


def _llama_to_canonical(hf: dict, layers: int, tied: bool) -> tuple[dict, list[dict]]:
    g = _globals_to_canonical(hf, "llama", tied)
    return g, [{f"{k}.weight": hf[f"model.layers.{i}.{name}.weight"] for k, name in LLAMA_NAMES.items()}
               for i in range(layers)]
