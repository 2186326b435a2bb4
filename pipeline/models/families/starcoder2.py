"""StarCoder2 (`Starcoder2ForCausalLM`): rotary GQA attention, LayerNorm with biases, a GELU MLP,
biases on every projection, tied embeddings."""

from functools import partial

from pipeline.models.family import Family
from pipeline.models.shape import ModelShape

_shape = partial(ModelShape, "starcoder2")


class Starcoder2(Family):
    name = "starcoder2"
    title = "StarCoder2"
    adapter = "pipeline.growth.starcoder2:Starcoder2Adapter"
    gated_mlp = False
    tie_embeddings = True
    config_defaults = dict(attention_dropout=0.0, residual_dropout=0.0, embedding_dropout=0.0)
    sizes = {
        "starcoder2-nano": _shape(2, 128, 4, 2, 512, 512),  # CPU tests
        "starcoder2-3b": _shape(30, 3072, 24, 2, 12288, 16384),
        "starcoder2-7b": _shape(32, 4608, 36, 4, 18432, 16384),
    }


FAMILY = Starcoder2()
