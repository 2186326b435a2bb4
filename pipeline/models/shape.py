"""A model's shape: the numbers that fix its parameter tensors (plain Python: the config validates
shapes without importing torch)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelShape:
    family: str  # a name in pipeline/models/families (the HF model_type)
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    ffn: int
    max_positions: int
    head_size: int | None = None  # attention head width where it is not hidden / heads (HF's head_dim)

    @property
    def head_dim(self) -> int:
        return self.head_size or self.hidden // self.heads


SHAPE_FIELDS = ("layers", "hidden", "heads", "kv_heads", "ffn", "max_positions", "head_size")
