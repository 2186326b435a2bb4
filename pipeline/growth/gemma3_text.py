"""Gemma 3 (text) for growth: Gemma 2's layer with per-head q/k norms (Qwen3's kind, with Gemma's 1 + w
gains) and per-attention-type RoPE settings, which follow each layer's type. As for Qwen3, q and k are
scaled to meet the eps that lossless width shrinks (operator.qk_factor)."""

from pipeline.growth.gemma2 import Gemma2Adapter


class Gemma3TextAdapter(Gemma2Adapter):
    family = "gemma3_text"
    layer_modules = Gemma2Adapter.layer_modules + ("q_norm", "k_norm")
