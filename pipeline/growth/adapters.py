"""Architecture adapters: HF parameter names <-> a canonical, family-independent layout.

Canonical layout (every matrix in torch.nn.Linear orientation, (out, in)):
  globals: embed (V, D), pos (T, D) [learned positions], final_norm.weight/.bias (D), head (V, D) [untied]
  layer:   attn_norm, q, k, v, o, mlp_norm, up, gate [gated MLPs], down   (".weight", ".bias" where present)
           q_norm, k_norm [per-head norms over head_dim, shared by every head: Qwen3]
           attn_out_norm, mlp_out_norm [norms on the blocks' outputs: Gemma2's sandwich, OLMo2]
           q_heads_norm, k_heads_norm [norms over all query (key) heads together: OLMo2]

Each canonical module has a *role*: which width expansion acts on its rows (what it produces) and
which on its columns (what it reads). The growth operator works only with roles, so a new family is
one small file (see gpt2.py, llama.py) that subclasses `Adapter`: its name map, its quirks (GPT-2's
Conv1D stores (in, out) and fuses q/k/v into c_attn), and where the grown model's modules live.
"""

from __future__ import annotations

from typing import Callable

import torch

from pipeline.errors import ConfigError

# role of each canonical layer module: (row expansion, column expansion).
# "residual" rows = writes the residual stream; "residual" columns = reads it.
LAYER_ROLES = {
    "attn_norm": ("residual", None), "mlp_norm": ("residual", None),
    "q": ("q_heads", "residual"), "k": ("k_heads", "residual"), "v": ("v_heads", "residual"),
    "o": ("residual", "q_heads"),  # o reads the attention output, one slot per query head
    "up": ("ffn", "residual"), "gate": ("ffn", "residual"), "down": ("residual", "ffn"),
    # one gain per position within a head: heads grow whole (head_dim fixed), so these never expand
    "q_norm": ("head", None), "k_norm": ("head", None),
    # Gemma2's sandwich norms, on the attention's and the MLP's output before the residual add
    "attn_out_norm": ("residual", None), "mlp_out_norm": ("residual", None),
    # OLMo2's q/k norms over all heads together: one gain per q (k) row, copied with its head
    "q_heads_norm": ("q_heads", None), "k_heads_norm": ("k_heads", None),
}
# Norms of the residual width. Their gains expand alike before a reader (attn_norm) and after a writer
# (attn_out_norm): a lossless writer emits the donor's units and zeros, whose mean square is D1/D2 of
# the donor's, so the normalized old units are sqrt(D2/D1) larger either way and the gain takes the
# stream ratio sqrt(D1/D2); new units are zero at a post-norm's input, so its output there is zero.
NORMS = ("attn_norm", "mlp_norm", "attn_out_norm", "mlp_out_norm")
QK_NORMS = ("q_norm", "k_norm", "q_heads_norm", "k_heads_norm")  # norms of q and k (per head, or over all heads)
GAINS = NORMS + QK_NORMS  # modules whose weight is a norm's gain
# modules that add into the residual stream: a layer whose writers are zero is an identity
RESIDUAL_WRITERS = tuple(k for k, (rows, _) in LAYER_ROLES.items() if rows == "residual" and k not in NORMS)


class Adapter:
    """One model family. Subclasses set the class attributes and implement the name maps."""
    family: str
    layer_modules: tuple[str, ...]  # canonical modules of one decoder layer
    global_names: dict[str, str]  # canonical global key -> HF name
    biases: tuple[str, ...] = ()  # canonical layer modules with a bias
    layer_norm: bool  # LayerNorm (centres the residual stream) rather than RMSNorm
    # norms multiply by (gain_offset + weight): Gemma's 1 + w. Canonical gains are that factor, so that
    # growth, which is linear in the donor's tensors, scales and copies gains, not weights.
    gain_offset = 0.0
    norm_eps_key: str  # the HF config key of the norms' eps

    def __init__(self, hf_config):
        self.tied_head = bool(hf_config.tie_word_embeddings)

    @property
    def residual_writers(self) -> tuple[str, ...]:
        return tuple(k for k in RESIDUAL_WRITERS if k in self.layer_modules)

    @property
    def identity_modules(self) -> tuple[str, ...]:
        """The modules whose zero makes a new layer an identity: its residual writers (what it adds is
        W·a = 0), or the norms on its outputs where a family has them (a zero gain, so the writers stay
        live and their gradient is not the 1/sqrt(eps) of a norm at a zero input)."""
        out_norms = tuple(k for k in ("attn_out_norm", "mlp_out_norm") if k in self.layer_modules)
        return out_norms or self.residual_writers

    def layer_keys(self) -> list[str]:
        keys = []
        for name in self.layer_modules:
            keys.append(f"{name}.weight")
            if name in self.biases:
                keys.append(f"{name}.bias")
        return keys

    def global_name(self, key: str) -> str:
        return self.global_names[key]

    def to_canonical(self, hf: dict[str, torch.Tensor], layers: int,
                     moments: bool = False) -> tuple[dict, list[dict]]:
        """An HF state dict (weights, or AdamW moments: their gains take no offset) -> (globals, one dict
        per layer) in canonical names."""
        try:
            hf = self.normalize_names(hf)
            g = {key: hf[name] for key, name in self.global_names.items() if not (key == "head" and self.tied_head)}
            layer_list = [self.layer_to_canonical(hf, self.layer_prefix(i)) for i in range(layers)]
        except KeyError as err:
            raise ConfigError(f"donor checkpoint has no tensor {err}: it does not match its config.json") from None
        if moments or not self.gain_offset:
            return g, layer_list
        return self._shift_gains(g, self.gain_offset), [self._shift_gains(layer, self.gain_offset) for layer in layer_list]

    def export_layer(self, layer: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Canonical layer weights -> HF names and values (relative to the layer module)."""
        return self.layer_to_hf(self._shift_gains(layer, -self.gain_offset) if self.gain_offset else layer)

    def export_global(self, key: str, value: torch.Tensor) -> torch.Tensor:
        return value - self.gain_offset if key == "final_norm.weight" and self.gain_offset else value

    def _shift_gains(self, tensors: dict[str, torch.Tensor], offset: float) -> dict[str, torch.Tensor]:
        return {key: value + offset if key == "final_norm.weight" or (key.split(".")[0] in GAINS and
                                                                      key.endswith(".weight")) else value
                for key, value in tensors.items()}

    def plan_problem(self, plan) -> str | None:
        """Why this family cannot grow as `plan` asks (None: it can); checked before any work."""
        return None

    def embedding_factor(self, donor_hidden: int, target_hidden: int) -> float:
        """What the grown embedding matrix is multiplied by so its lookups are the donor's expanded (1:
        the model does not scale its embeddings by a function of the width)."""
        return 1.0

    def normalize_names(self, hf: dict) -> dict:
        """Checkpoint naming variants -> the names the HF model class uses."""
        return hf

    def layer_to_canonical(self, hf: dict, prefix: str) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def layer_to_hf(self, layer: dict) -> dict[str, torch.Tensor]:
        """Names relative to one decoder layer module (for torch.func.functional_call)."""
        raise NotImplementedError

    def layer_prefix(self, i: int) -> str:
        raise NotImplementedError

    def wire(self, model, wrap: Callable, global_weights: Callable[..., Callable]) -> torch.nn.ModuleList:
        """Replace the embeddings, final norm and head of an HF model skeleton by `wrap(module, weights)`
        (global_weights(hf param name -> canonical key) makes the weights callable); return its layers."""
        raise NotImplementedError


def adapter_for(hf_config) -> Adapter:
    """The growth adapter of an HF config's family (pipeline/models/families)."""
    from pipeline.models.families import FAMILIES
    model_type = getattr(hf_config, "model_type", None)
    if model_type not in FAMILIES:
        raise ConfigError(f"donor architecture {model_type!r} is not supported: growth knows {sorted(FAMILIES)}")
    return FAMILIES[model_type].growth_adapter(hf_config)
