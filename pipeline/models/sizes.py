"""Named model sizes ("flavors") of every registered family, from CPU-test shapes up to the published
~1B shapes, and the checks of a shape.

A size fixes the family and the shape; a recipe may override any shape field (``model.layers=6``).
"""

from __future__ import annotations

from dataclasses import replace

from pipeline.errors import ConfigError
from pipeline.models.families import FAMILIES, family
from pipeline.models.family import canonical
from pipeline.models.shape import SHAPE_FIELDS, ModelShape

SIZES: dict[str, ModelShape] = {name: canonical(shape) for f in FAMILIES.values() for name, shape in f.sizes.items()}
DEFAULT_SIZE = "llama-micro"  # an unset model.size without a checkpoint to take the shape from


def shape_from_hf(config: dict) -> ModelShape:
    """Our shape of an HF config.json (as a dict) of a registered family."""
    return family(config.get("model_type")).shape_from_hf(config)


def resolve_shape(model) -> ModelShape:
    """Named size + explicit overrides (a config.ModelConfig) -> a checked shape."""
    size = model.size or DEFAULT_SIZE
    if size not in SIZES:
        raise ConfigError(f"model.size={size!r} is not a known size; choose one of {sorted(SIZES)}")
    overrides = {name: getattr(model, name) for name in SHAPE_FIELDS if getattr(model, name) is not None}
    shape = replace(SIZES[size], **overrides)
    rules = family(shape.family)
    if not rules.grouped_query and "heads" in overrides and "kv_heads" not in overrides:
        shape = replace(shape, kv_heads=shape.heads)
    for name in SHAPE_FIELDS:
        if getattr(shape, name) is not None and getattr(shape, name) <= 0:
            raise ConfigError(f"model.{name} must be positive, got {getattr(shape, name)}")
    if shape.head_size is None and shape.hidden % shape.heads:
        raise ConfigError(f"model.heads={shape.heads} does not divide model.hidden={shape.hidden} (or set "
                          f"model.head_size)")
    if shape.heads % shape.kv_heads:
        raise ConfigError(f"model.kv_heads={shape.kv_heads} does not divide model.heads={shape.heads}")
    rules.validate(shape)
    return canonical(shape)
