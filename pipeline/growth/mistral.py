"""Mistral for growth: LLaMA's graph (no biases) with a sliding attention window, which the grown
config keeps: every layer attends within the same window, so growth changes nothing about it."""

from pipeline.growth.llama import LlamaAdapter


class MistralAdapter(LlamaAdapter):
    family = "mistral"
