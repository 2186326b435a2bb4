"""Qwen2 / Qwen2.5 (`Qwen2ForCausalLM`): LLaMA's graph with biases on q, k and v, tied embeddings at the
small sizes, per-layer attention types (`layer_types`)."""

from functools import partial

from pipeline.models.family import Family
from pipeline.models.shape import ModelShape

_shape = partial(ModelShape, "qwen2")


class Qwen2(Family):
    name = "qwen2"
    title = "Qwen2"
    adapter = "pipeline.growth.qwen2:Qwen2Adapter"
    tie_embeddings = True
    sizes = {
        "qwen2-nano": _shape(2, 128, 4, 2, 352, 512),  # CPU tests
        "qwen2.5-0.5b": _shape(24, 896, 14, 2, 4864, 32768),
        "qwen2.5-1.5b": _shape(28, 1536, 12, 2, 8960, 32768),
    }


FAMILY = Qwen2()
