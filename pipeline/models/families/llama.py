"""LLaMA (`LlamaForCausalLM`): RMSNorm, rotary positions, SwiGLU MLP, grouped-query attention. Covers
the shapes of TinyLlama, SmolLM and Llama 2/3."""

from functools import partial

from pipeline.models.family import Family
from pipeline.models.shape import ModelShape

_shape = partial(ModelShape, "llama")


class Llama(Family):
    name = "llama"
    title = "LLaMA"
    adapter = "pipeline.growth.llama:LlamaAdapter"
    sizes = {
        # CPU sizes: the tiny pipeline grows a *-nano donor into a *-micro target.
        "llama-nano": _shape(2, 128, 4, 2, 352, 512),
        "llama-micro": _shape(4, 256, 8, 4, 704, 512),
        # the non-integer growth benchmark's donor (bench-growth-nonint: 3 -> 4 layers, 5/3 width and heads)
        "llama-nano-3x192": _shape(3, 192, 6, 3, 528, 512),
        # Published shapes.
        "llama-125m": _shape(12, 768, 12, 4, 2048, 2048),
        "llama-135m": _shape(30, 576, 9, 3, 1536, 2048),  # SmolLM-135M's shape
        "llama-360m": _shape(32, 960, 15, 5, 2560, 2048),  # SmolLM-360M's shape
        "tinyllama-1.1b": _shape(22, 2048, 32, 4, 5632, 2048),
    }


FAMILY = Llama()
