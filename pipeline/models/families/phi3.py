"""Phi-3 / Phi-4-mini (`Phi3ForCausalLM`): LLaMA's graph with fused qkv and gate/up projections and
partial rotary embeddings (Phi-4-mini: 3/4 of each head). Phi-4-mini grows from its own config (its
tied head and partial rotary are kept); it has no named size here, because a size carries the shape
only and a from-scratch Phi-3 model is untied with full rotary."""

from functools import partial

from pipeline.models.family import Family
from pipeline.models.shape import ModelShape

_shape = partial(ModelShape, "phi3")


class Phi3(Family):
    name = "phi3"
    title = "Phi-3"
    adapter = "pipeline.growth.phi3:Phi3Adapter"
    config_defaults = dict(attention_dropout=0.0, resid_pdrop=0.0, embd_pdrop=0.0)
    sizes = {
        "phi3-nano": _shape(2, 128, 4, 2, 352, 512),  # CPU tests
        "phi-3-mini": _shape(32, 3072, 32, 32, 8192, 4096),
    }


FAMILY = Phi3()
