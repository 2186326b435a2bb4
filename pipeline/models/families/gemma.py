"""Gemma (`GemmaForCausalLM`): LLaMA's graph with (1 + w) RMSNorm gains, embeddings scaled by
sqrt(width), a tied head, GeGLU, and a head size apart from the width (256 at the published sizes)."""

from functools import partial

from pipeline.models.family import Family
from pipeline.models.shape import ModelShape

_shape = partial(ModelShape, "gemma")


class Gemma(Family):
    name = "gemma"
    title = "Gemma"
    adapter = "pipeline.growth.gemma:GemmaAdapter"
    tie_embeddings = True
    sizes = {
        "gemma-nano": _shape(2, 128, 4, 2, 352, 512, 48),  # CPU tests: heads x head size != width
        "gemma-2b": _shape(18, 2048, 8, 1, 16384, 8192, 256),
        "gemma-7b": _shape(28, 3072, 16, 16, 24576, 8192, 256),
    }


FAMILY = Gemma()
