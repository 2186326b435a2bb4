"""OLMo 2 (`Olmo2ForCausalLM`): LLaMA's projections with output norms instead of input norms and q/k
norms over all heads together."""

from functools import partial

from pipeline.models.family import Family
from pipeline.models.shape import ModelShape

_shape = partial(ModelShape, "olmo2")


class Olmo2(Family):
    name = "olmo2"
    title = "OLMo 2"
    adapter = "pipeline.growth.olmo2:Olmo2Adapter"
    sizes = {
        "olmo2-nano": _shape(2, 128, 4, 2, 352, 512, 48),  # CPU tests: heads x head size != width
        "olmo-2-1b": _shape(16, 2048, 16, 16, 8192, 4096),
        "olmo-2-7b": _shape(32, 4096, 32, 32, 11008, 4096),
    }


FAMILY = Olmo2()
