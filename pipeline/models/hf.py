"""The registered model families (pipeline/models/families) as Hugging Face models.

The model code never knows about parallelism: ZeRO-3 partitioned construction is arranged by
`pipeline.engine`, which calls `build_model` inside its DeepSpeed context.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import transformers
from safetensors import safe_open
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig

from pipeline.errors import ConfigError
from pipeline.models.families import family
from pipeline.models.sizes import ModelShape, shape_from_hf


def special_token_ids(tokenizer) -> dict:
    return {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id}


def hf_config(shape: ModelShape, vocab_size: int, token_ids: dict, init_std: float | None = None) -> PretrainedConfig:
    """Our shape -> the HF config of a model this pipeline initializes (its family's defaults)."""
    return family(shape.family).hf_config(shape, vocab_size, token_ids, init_std)


def shape_of(config: PretrainedConfig) -> ModelShape:
    """Our shape of an HF config of a registered family (e.g. a donor checkpoint's)."""
    return shape_from_hf(config.to_dict())


def resized_config(config: PretrainedConfig, shape: ModelShape,
                   layer_sources: list[int] | None = None) -> PretrainedConfig:
    """A copy of an HF config with only the shape changed (every other hyperparameter kept; per-layer
    settings follow `layer_sources`, the source layer of each new one)."""
    return family(shape.family).resized_config(config, shape, layer_sources)


def checkpoint_config(hf_dir: str) -> PretrainedConfig:
    """The config of an HF model dir (its shape and hyperparameters), read before any weight."""
    if not (Path(hf_dir) / "config.json").exists():
        raise ConfigError(f"{hf_dir} is not an HF model dir (no config.json)")
    return AutoConfig.from_pretrained(hf_dir)


def build_model(config: PretrainedConfig | None, init_from: str | None = None) -> transformers.PreTrainedModel:
    """A freshly initialized model from ``config``, or the weights of the HF dir ``init_from``.

    Always through ``from_config``/``from_pretrained``: those honour an active ZeRO-3 context
    (partitioned construction and correct init); calling the model class directly does not.
    """
    if init_from is not None:
        return AutoModelForCausalLM.from_pretrained(init_from, dtype=torch.float32)
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32)


def enable_activation_checkpointing(model: transformers.PreTrainedModel) -> None:
    """Recompute each block's activations in backward (non-reentrant, which ZeRO-3 needs). transformers
    5.23 renamed the switch to activation_checkpointing_enable and deprecates the old name (gone in v6);
    older 5.x have only the old one, and pyproject allows them."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def save_initialized_model(shape: ModelShape, tokenizer, vocab_size: int, out_dir, seed: int) -> None:
    """A freshly initialized model of `shape` with `tokenizer`, written as an HF dir: an untrained donor
    (the growth benchmark's control; the grow-cost benchmark, whose timing does not depend on weights)."""
    torch.manual_seed(seed)
    build_model(hf_config(shape, vocab_size, special_token_ids(tokenizer))).save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


class HFWeights:
    """The tensors of an HF model dir (one safetensors file or an index of shards), read on demand."""

    def __init__(self, hf_dir: Path):
        self.dir = Path(hf_dir)
        index = self.dir / "model.safetensors.index.json"
        if index.exists():
            self.files = json.loads(index.read_text())["weight_map"]
        elif (self.dir / "model.safetensors").exists():
            with safe_open(self.dir / "model.safetensors", framework="pt") as f:
                self.files = dict.fromkeys(f.keys(), "model.safetensors")
        else:
            raise ConfigError(f"{self.dir} holds no safetensors weights (model.safetensors or an index)")
        self.shapes = {}
        for filename in set(self.files.values()):
            with safe_open(self.dir / filename, framework="pt") as f:
                self.shapes.update({name: tuple(f.get_slice(name).get_shape()) for name in f.keys()})

    def get(self, name: str) -> torch.Tensor:
        with safe_open(self.dir / self.files[name], framework="pt") as f:
            return f.get_tensor(name).float()
