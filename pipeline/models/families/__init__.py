"""The family registry: every model family the pipeline builds, trains and grows. A new family is its
file here (a `Family` subclass and its instance `FAMILY`: shapes, config, sizes, FLOPs, rules), its
growth adapter in pipeline/growth/, and its name added to FAMILY_MODULES."""

from __future__ import annotations

import importlib

from pipeline.errors import ConfigError
from pipeline.models.family import Family

FAMILY_MODULES = ("gpt2", "llama", "mistral", "qwen2", "qwen3", "phi3", "gemma", "gemma2", "gemma3_text", "olmo2", "starcoder2")

FAMILIES: dict[str, Family] = {}
for _module in FAMILY_MODULES:
    _family = importlib.import_module(f"{__name__}.{_module}").FAMILY
    FAMILIES[_family.name] = _family


def family(name: str | None) -> Family:
    """The family of an HF model_type or a shape's family name."""
    if name not in FAMILIES:
        raise ConfigError(f"model family {name!r} is not supported: the pipeline knows {sorted(FAMILIES)}")
    return FAMILIES[name]
