"""Named model sizes ("flavors"): from CPU-test shapes up to the published ~1B shapes.

A size fixes the family and the shape; a recipe may override any shape field (``model.layers=6``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from pipeline.errors import ConfigError


@dataclass(frozen=True)
class ModelShape:
    family: str  # "gpt2" or "llama"
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    ffn: int
    max_positions: int

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads


SIZES: dict[str, ModelShape] = {
    # CPU sizes: the tiny pipeline grows a *-nano donor into a *-micro target.
    "llama-nano": ModelShape("llama", layers=2, hidden=128, heads=4, kv_heads=2, ffn=352, max_positions=512),
    "llama-micro": ModelShape("llama", layers=4, hidden=256, heads=8, kv_heads=4, ffn=704, max_positions=512),
    # the non-integer growth benchmark's donor (bench-growth-nonint: 3 -> 4 layers, 5/3 width and heads)
    "llama-nano-3x192": ModelShape("llama", layers=3, hidden=192, heads=6, kv_heads=3, ffn=528, max_positions=512),
    "gpt2-nano": ModelShape("gpt2", layers=2, hidden=128, heads=4, kv_heads=4, ffn=512, max_positions=512),
    "gpt2-micro": ModelShape("gpt2", layers=4, hidden=256, heads=8, kv_heads=8, ffn=1024, max_positions=512),
    # Published shapes.
    "gpt2-124m": ModelShape("gpt2", layers=12, hidden=768, heads=12, kv_heads=12, ffn=3072, max_positions=1024),
    "gpt2-350m": ModelShape("gpt2", layers=24, hidden=1024, heads=16, kv_heads=16, ffn=4096, max_positions=1024),
    "gpt2-774m": ModelShape("gpt2", layers=36, hidden=1280, heads=20, kv_heads=20, ffn=5120, max_positions=1024),
    "gpt2-1.5b": ModelShape("gpt2", layers=48, hidden=1600, heads=25, kv_heads=25, ffn=6400, max_positions=1024),
    "llama-125m": ModelShape("llama", layers=12, hidden=768, heads=12, kv_heads=4, ffn=2048, max_positions=2048),
    "llama-135m": ModelShape("llama", layers=30, hidden=576, heads=9, kv_heads=3, ffn=1536, max_positions=2048),
    "tinyllama-1.1b": ModelShape("llama", layers=22, hidden=2048, heads=32, kv_heads=4, ffn=5632,
                                 max_positions=2048),
}


SHAPE_FIELDS = ("layers", "hidden", "heads", "kv_heads", "ffn", "max_positions")
DEFAULT_SIZE = "llama-micro"  # an unset model.size without a checkpoint to take the shape from
FAMILY_BASE_SIZE = {"llama": "llama-nano", "gpt2": "gpt2-nano"}  # the family of a shape read from a checkpoint


def shape_from_hf(config: dict) -> ModelShape:
    """Our shape of an HF GPT-2 or LLaMA config.json (as a dict)."""
    kind = config.get("model_type")
    if kind == "gpt2":
        return ModelShape("gpt2", layers=config["n_layer"], hidden=config["n_embd"], heads=config["n_head"],
                          kv_heads=config["n_head"], ffn=config.get("n_inner") or 4 * config["n_embd"],
                          max_positions=config["n_positions"])
    if kind != "llama":
        raise ConfigError(f"model_type {kind!r} is not supported: GPT-2 and LLaMA-family checkpoints are")
    heads = config["num_attention_heads"]
    head_dim = config.get("head_dim")
    if head_dim not in (None, config["hidden_size"] // heads):
        raise ConfigError(f"LLaMA config with head_dim={head_dim} != hidden/heads is not supported")
    return ModelShape("llama", layers=config["num_hidden_layers"], hidden=config["hidden_size"], heads=heads,
                      kv_heads=config.get("num_key_value_heads") or heads, ffn=config["intermediate_size"],
                      max_positions=config["max_position_embeddings"])


def resolve_shape(model) -> ModelShape:
    """Named size + explicit overrides (a config.ModelConfig) -> a checked shape."""
    size = model.size or DEFAULT_SIZE
    if size not in SIZES:
        raise ConfigError(f"model.size={size!r} is not a known size; choose one of {sorted(SIZES)}")
    overrides = {name: getattr(model, name) for name in SHAPE_FIELDS if getattr(model, name) is not None}
    shape = replace(SIZES[size], **overrides)
    if shape.family == "gpt2" and "heads" in overrides and "kv_heads" not in overrides:
        shape = replace(shape, kv_heads=shape.heads)
    for name in SHAPE_FIELDS:
        if getattr(shape, name) <= 0:
            raise ConfigError(f"model.{name} must be positive, got {getattr(shape, name)}")
    if shape.hidden % shape.heads:
        raise ConfigError(f"model.heads={shape.heads} does not divide model.hidden={shape.hidden}")
    if shape.heads % shape.kv_heads:
        raise ConfigError(f"model.kv_heads={shape.kv_heads} does not divide model.heads={shape.heads}")
    if shape.family == "gpt2" and shape.kv_heads != shape.heads:
        raise ConfigError(f"GPT-2 has no grouped-query attention: model.kv_heads must equal model.heads "
                          f"({shape.heads}), got {shape.kv_heads}")
    if shape.family == "llama" and shape.head_dim % 2:
        raise ConfigError(f"LLaMA's rotary embedding needs an even head dim; hidden/heads = {shape.head_dim}")
    return shape
