"""Gemma 3, text only (`Gemma3ForCausalLM`, model_type gemma3_text): Gemma 2's graph with per-head q/k
norms, five sliding layers per global one, and separate RoPE bases for the two attention types."""

from functools import partial

from pipeline.models.family import Family
from pipeline.models.shape import ModelShape

_shape = partial(ModelShape, "gemma3_text")


class Gemma3Text(Family):
    name = "gemma3_text"
    title = "Gemma 3"
    adapter = "pipeline.growth.gemma3_text:Gemma3TextAdapter"
    tie_embeddings = True
    sizes = {
        "gemma3-nano": _shape(2, 128, 4, 2, 352, 512, 48),  # CPU tests: heads x head size != width
        "gemma-3-270m": _shape(18, 640, 4, 1, 2048, 32768, 256),
        "gemma-3-1b": _shape(26, 1152, 4, 1, 6912, 32768, 256),
    }


FAMILY = Gemma3Text()
