"""The target model driven by the growth operator: Hugging Face's own modeling code, with every
weight generated from the operator just in time.

The target is built on the meta device (no memory), and each of its weight-holding modules
(embeddings, decoder layers, final norm, head) is replaced by a `Generated` wrapper that, inside an
activation checkpoint, asks its generator for that module's weights and runs the original module
with them (`torch.func.functional_call`). So only one module's generated weights exist at a time and
backward recomputes them instead of storing them: the grow stage needs about the memory of
training the target, not of holding it twice.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn
from torch.func import functional_call
from torch.utils.checkpoint import checkpoint
from transformers import AutoModelForCausalLM

from pipeline.growth.operator import GrowthOperator


class Generated(nn.Module):
    def __init__(self, module: nn.Module, weights: Callable[[], dict[str, torch.Tensor]], recompute: bool):
        super().__init__()
        # plain attributes, not submodules: the meta-device module and the generator are owned elsewhere
        self.__dict__["module"] = module
        self.__dict__["weights"] = weights
        self.recompute = recompute

    def forward(self, *args, **kwargs):
        def run(*args, **kwargs):
            return functional_call(self.module, self.weights(), args, kwargs)
        if self.recompute:
            return checkpoint(run, *args, use_reentrant=False, **kwargs)
        return run(*args, **kwargs)


class GrownModel(nn.Module):
    """`forward(input_ids, labels)` of the target, differentiable w.r.t. the operator only."""

    def __init__(self, operator: GrowthOperator, target_config, recompute: bool = True):
        super().__init__()
        self.recompute = recompute
        self.config = target_config
        self.operator = operator
        with torch.device("meta"):
            skeleton = AutoModelForCausalLM.from_config(target_config)
        self.__dict__["skeleton"] = skeleton  # not a submodule: its meta parameters are never used
        self._wire(skeleton, operator)

    def _wire(self, skeleton, op: GrowthOperator) -> None:
        g = op.globals

        def wrap(module, weights):
            return Generated(module, weights, self.recompute)

        def weight_of(key):
            return lambda: {"weight": g(key)}

        if op.adapter.family == "gpt2":
            body = skeleton.transformer
            body.wte = wrap(body.wte, weight_of("embed"))
            body.wpe = wrap(body.wpe, weight_of("pos"))
            body.ln_f = wrap(body.ln_f, lambda: {"weight": g("final_norm.weight"), "bias": g("final_norm.bias")})
            layers = body.h
        else:
            body = skeleton.model
            body.embed_tokens = wrap(body.embed_tokens, weight_of("embed"))
            body.norm = wrap(body.norm, weight_of("final_norm.weight"))
            # the rotary embedding holds buffers, not weights: give it real ones
            body.rotary_emb = type(body.rotary_emb)(config=skeleton.config)
            layers = body.layers
        skeleton.lm_head = wrap(skeleton.lm_head, weight_of("embed" if op.adapter.tied_head else "head"))
        for i, generator in enumerate(op.layers):
            layers[i] = wrap(layers[i], _layer_weights(generator, op.adapter))

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor | None = None):
        return self.skeleton(input_ids=input_ids, labels=labels, use_cache=False)


def _layer_weights(generator, adapter):
    return lambda: adapter.layer_to_hf(generator())
