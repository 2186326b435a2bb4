"""Gemma 2 (`Gemma2ForCausalLM`): Gemma with sandwich norms, attention and final-logit soft-capping,
query_pre_attn_scalar, and sliding and global attention alternating by layer (`layer_types`)."""

from functools import partial

from pipeline.models.family import Family
from pipeline.models.shape import ModelShape

_shape = partial(ModelShape, "gemma2")


class Gemma2(Family):
    name = "gemma2"
    title = "Gemma2"
    adapter = "pipeline.growth.gemma2:Gemma2Adapter"
    tie_embeddings = True
    sizes = {
        "gemma2-nano": _shape(2, 128, 4, 2, 352, 512, 48),  # CPU tests: heads x head size != width
        "gemma-2-2b": _shape(26, 2304, 8, 4, 9216, 8192, 256),
        "gemma-2-9b": _shape(42, 3584, 16, 8, 14336, 8192, 256),
    }


FAMILY = Gemma2()
