"""GPT-2 (`GPT2LMHeadModel`): LayerNorm with biases, learned positions, a 4x GELU MLP, no grouped-query
attention, the LM head tied to the token embedding."""

from pipeline.errors import ConfigError
from pipeline.models.family import Family
from pipeline.models.shape import ModelShape


def _shape(layers, hidden, heads, ffn, max_positions) -> ModelShape:
    return ModelShape("gpt2", layers, hidden, heads, heads, ffn, max_positions)


class GPT2(Family):
    name = "gpt2"
    title = "GPT-2"
    adapter = "pipeline.growth.gpt2:GPT2Adapter"
    gated_mlp = False
    rotary = False
    grouped_query = False
    tie_embeddings = True
    config_defaults = dict(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    sizes = {
        "gpt2-nano": _shape(2, 128, 4, 512, 512),  # the CPU donor
        "gpt2-micro": _shape(4, 256, 8, 1024, 512),  # the CPU target
        "gpt2-124m": _shape(12, 768, 12, 3072, 1024),
        "gpt2-350m": _shape(24, 1024, 16, 4096, 1024),
        "gpt2-774m": _shape(36, 1280, 20, 5120, 1024),
        "gpt2-1.5b": _shape(48, 1600, 25, 6400, 1024),
    }

    def shape_from_hf(self, config: dict) -> ModelShape:
        return _shape(config["n_layer"], config["n_embd"], config["n_head"],
                      config.get("n_inner") or 4 * config["n_embd"], config["n_positions"])

    def shape_keys(self, shape: ModelShape) -> dict:
        return dict(n_layer=shape.layers, n_embd=shape.hidden, n_head=shape.heads, n_inner=shape.ffn,
                    n_positions=shape.max_positions)

    def validate(self, shape: ModelShape) -> None:
        super().validate(shape)
        if shape.head_size is not None:
            raise ConfigError(f"GPT-2's head size is hidden / heads: unset model.head_size ({shape.head_size})")


FAMILY = GPT2()
