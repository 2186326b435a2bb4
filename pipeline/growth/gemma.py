"""Gemma for growth: LLaMA's graph and names with two twists. Its RMSNorm multiplies by (1 + w), so
canonical gains are 1 + w (adapters.Adapter.gain_offset): lossless growth scales and copies the gain
the norm applies, and a new unit's "1" is w = 0. Its embedding lookups are multiplied by sqrt(width),
so a grown embedding matrix is multiplied by sqrt(D1/D2) to give the donor's lookups, and the final
norm, in front of the tied head that reads the same matrix, by sqrt(D2/D1)."""

from __future__ import annotations

import torch

from pipeline.growth.llama import LlamaAdapter


class GemmaAdapter(LlamaAdapter):
    family = "gemma"
    gain_offset = 1.0

    def embedding_factor(self, donor_hidden: int, target_hidden: int) -> float:
        return (donor_hidden / target_hidden) ** 0.5

    def wire(self, model, wrap, global_weights):
        # the embedding's sqrt(width) scale is a buffer: give the meta-device skeleton a real one
        model.model.embed_tokens.embed_scale = torch.tensor(model.config.hidden_size ** 0.5)
        return super().wire(model, wrap, global_weights)
