"""Mistral (`MistralForCausalLM`): LLaMA's graph with a sliding attention window (`sliding_window`,
the same for every layer), no biases."""

from pipeline.models.family import Family
from pipeline.models.shape import ModelShape


class Mistral(Family):
    name = "mistral"
    title = "Mistral"
    adapter = "pipeline.growth.mistral:MistralAdapter"
    sizes = {
        "mistral-nano": ModelShape("mistral", 2, 128, 4, 2, 352, 512),  # CPU tests
        "mistral-7b": ModelShape("mistral", 32, 4096, 32, 8, 14336, 32768),
    }


FAMILY = Mistral()
