"""Grow LLMs instead of pretraining them from scratch: prepare -> donor -> grow -> train, on DeepSpeed."""

__version__ = "0.1.0"
