"""Qwen3 for growth: LLaMA's graph (biases on q, k, v, o under `attention_bias`, as LLaMA's) plus an
RMSNorm over each query and key head (`q_norm`, `k_norm`: one gain per position within a head, shared
by all heads) and a head size independent of the width. Heads grow whole, so the head norms keep
their gains, and new heads use them too. The head norms read the model's one rms_norm_eps, which
lossless width shrinks for the residual norms: q and k are scaled to match (operator.qk_factor)."""

from pipeline.growth.llama import LlamaAdapter


class Qwen3Adapter(LlamaAdapter):
    family = "qwen3"
    layer_modules = LlamaAdapter.layer_modules + ("q_norm", "k_norm")
