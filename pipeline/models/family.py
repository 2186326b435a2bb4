"""What a model family is, in one place: its HF config <-> our shape, a config resized to another
shape, its named sizes, its FLOPs terms, its shape rules and its growth adapter. One file per family
in pipeline/models/families/ subclasses `Family`; the registry there lists them.

Plain Python (no torch): the config validates shapes with it. The HF config classes are reached
through `AutoConfig.for_model` and the growth adapter by its import path, both only when needed.
"""

from __future__ import annotations

import importlib
from dataclasses import replace

from pipeline.errors import ConfigError
from pipeline.models.shape import ModelShape


class Family:
    """The defaults describe a LLaMA-like decoder (HF keys hidden_size, num_attention_heads, ...;
    RMSNorm, rotary positions, gated MLP); a family overrides what differs."""
    name: str  # model.family, and the HF config's model_type
    title: str  # how people write it (messages, docs)
    sizes: dict[str, ModelShape]  # named sizes; the first is the base of a shape read from a checkpoint
    adapter: str  # "module:Class" of its growth adapter (pipeline/growth/)
    gated_mlp = True  # gate, up and down projections (SwiGLU/GeGLU): three MLP matrices
    rotary = True  # rotary positions (need an even head dim); False: learned positions
    grouped_query = True  # kv_heads may divide heads; False: kv_heads = heads (and follows it)
    tie_embeddings = False  # the LM head of a model trained from scratch shares the embedding
    config_defaults: dict = {"attention_dropout": 0.0}  # HF config values for models it initializes

    @property
    def base_size(self) -> str:
        return next(iter(self.sizes))

    # --- HF config <-> shape ---
    def shape_from_hf(self, config: dict) -> ModelShape:
        """Our shape of an HF config.json of this family (as a dict)."""
        heads = config["num_attention_heads"]
        return canonical(ModelShape(self.name, layers=config["num_hidden_layers"], hidden=config["hidden_size"],
                                    heads=heads, kv_heads=config.get("num_key_value_heads") or heads,
                                    ffn=config["intermediate_size"],
                                    max_positions=config["max_position_embeddings"],
                                    head_size=config.get("head_dim")))

    def shape_keys(self, shape: ModelShape) -> dict:
        """The HF config values that hold `shape`."""
        return dict(num_hidden_layers=shape.layers, hidden_size=shape.hidden, num_attention_heads=shape.heads,
                    num_key_value_heads=shape.kv_heads, intermediate_size=shape.ffn,
                    max_position_embeddings=shape.max_positions, head_dim=shape.head_dim)

    def hf_config(self, shape: ModelShape, vocab_size: int, token_ids: dict, init_std: float | None = None):
        """The HF config of a model this pipeline initializes. Dropout is off: pretraining at this scale
        does not use it, and it keeps the loss curve a pure function of (config, seed, data order).
        Special token ids not given are unset, not the config class's (Phi-3's pad id 32000 would not
        even fit a small vocabulary)."""
        from transformers import AutoConfig
        init = {} if init_std is None else {"initializer_range": init_std}
        token_ids = {"bos_token_id": None, "eos_token_id": None, "pad_token_id": None, **token_ids}
        return AutoConfig.for_model(self.name, vocab_size=vocab_size, tie_word_embeddings=self.tie_embeddings,
                                    **self.shape_keys(shape), **self.config_defaults, **token_ids, **init)

    def resized_config(self, config, shape: ModelShape, layer_sources: list[int] | None = None):
        """A copy of an HF config with only the shape changed (every other hyperparameter kept). Per-layer
        settings (`layer_types`: sliding or full attention) follow the new depth: each new layer takes
        the type of its source layer (`layer_sources`: the donor layer each one copies), so every donor
        layer keeps its own; uniform settings simply extend."""
        config = config.__class__.from_dict(config.to_dict())
        config.update(self.shape_keys(shape))
        layer_types = getattr(config, "layer_types", None)
        if layer_types is not None and layer_sources is not None:
            config.layer_types = [layer_types[source] for source in layer_sources]
        elif layer_types is not None and len(layer_types) != shape.layers:
            if len(set(layer_types)) > 1:
                raise ConfigError(f"the {self.title} config mixes attention types by layer ({sorted(set(layer_types))}): "
                                  f"changing its depth ({len(layer_types)} -> {shape.layers} layers) would shift "
                                  f"the pattern; keep model.layers={len(layer_types)}")
            config.layer_types = layer_types[:1] * shape.layers
        return config

    # --- shape rules and FLOPs ---
    def validate(self, shape: ModelShape) -> None:
        """Raise ConfigError for a shape this family cannot build (beyond the generic checks)."""
        if not self.grouped_query and shape.kv_heads != shape.heads:
            raise ConfigError(f"{self.title} has no grouped-query attention: model.kv_heads must equal model.heads "
                              f"({shape.heads}), got {shape.kv_heads}")
        if self.rotary and shape.head_dim % 2:
            raise ConfigError(f"{self.title}'s rotary embedding needs an even head dim, got {shape.head_dim}")

    def mlp_matrices(self) -> int:
        return 3 if self.gated_mlp else 2

    # --- growth ---
    def growth_adapter(self, hf_config):
        module, cls = self.adapter.split(":")
        return getattr(importlib.import_module(module), cls)(hf_config)


def canonical(shape: ModelShape) -> ModelShape:
    """A head size equal to hidden / heads is the default, so it is left unset (shapes compare equal
    whether or not a config.json wrote it)."""
    if shape.head_size is not None and shape.heads and shape.head_size * shape.heads == shape.hidden:
        return replace(shape, head_size=None)
    return shape
