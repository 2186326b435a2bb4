"""Qwen3 (`Qwen3ForCausalLM`): LLaMA's graph with an RMSNorm on every query and key head, a head size
set apart from the width (`head_dim`), tied embeddings at the small sizes."""

from functools import partial

from pipeline.models.family import Family
from pipeline.models.shape import ModelShape

_shape = partial(ModelShape, "qwen3")


class Qwen3(Family):
    name = "qwen3"
    title = "Qwen3"
    adapter = "pipeline.growth.qwen3:Qwen3Adapter"
    tie_embeddings = True
    sizes = {
        "qwen3-nano": _shape(2, 128, 4, 2, 352, 512, 48),  # CPU tests: heads x head size != width
        "qwen3-0.6b": _shape(28, 1024, 16, 8, 3072, 40960, 128),
        "qwen3-1.7b": _shape(28, 2048, 16, 8, 6144, 40960, 128),
    }


FAMILY = Qwen3()
