"""Qwen2 / Qwen2.5 for growth: LLaMA's graph with biases on the q, k and v projections (not o). A bias
is a row of its projection: copied and split heads carry their head's bias entries."""

from pipeline.growth.llama import LlamaAdapter


class Qwen2Adapter(LlamaAdapter):
    family = "qwen2"

    def biases_of(self, hf_config) -> tuple[str, ...]:
        return ("q", "k", "v")  # Qwen2Attention always has them
