"""The target model driven by the growth operator: Hugging Face's own modeling code, with every
weight generated from the operator just in time.

The target is built on the meta device (no memory), and each of its weight-holding modules
(embeddings, decoder layers, final norm, head) is replaced by a `Generated` wrapper that asks its
generator for that module's weights and runs the original module with them
(`torch.func.functional_call`). Backward needs those weights again; storing them would hold an
unsharded copy of the whole target per rank. Instead:
  recompute="weights"      autograd saves a reference in place of each generated weight and
                           backward regenerates the module's weights (activations are stored as in
                           training), and the generation itself runs in a checkpoint (its
                           intermediates are recomputed when backward reaches the operator): the
                           memory of training the target, at two extra generations per step;
  recompute="activations"  the whole module runs in an activation checkpoint (weights and
                           activations recomputed): the memory of training with activation
                           checkpointing;
  recompute="none"         generated weights are kept for backward (fastest, most memory).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn
from torch.func import functional_call
from torch.utils.checkpoint import checkpoint
from transformers import AutoModelForCausalLM

from pipeline.growth.operator import GrowthOperator
from pipeline.growth.schemes import RECOMPUTE_MODES


class RegeneratedWeights:
    """Saved-tensor hooks for one forward of one module: a saved tensor that is (a view of) a
    generated weight is packed as (name, view geometry); the first unpack in backward regenerates
    all the module's weights without grad, and the cache is dropped once every packed view is used."""

    def __init__(self, weights: dict[str, torch.Tensor], generate: Callable[[], dict[str, torch.Tensor]]):
        self.names = {w.untyped_storage().data_ptr(): name for name, w in weights.items()}
        self.generate = generate
        self.pending = 0
        self.cache = None

    def pack(self, tensor: torch.Tensor):
        name = self.names.get(tensor.untyped_storage().data_ptr())
        if name is None:
            return tensor
        self.pending += 1
        return name, tensor.size(), tensor.stride(), tensor.storage_offset()

    def unpack(self, packed):
        if isinstance(packed, torch.Tensor):
            return packed
        name, size, stride, offset = packed
        if self.cache is None:
            with torch.no_grad():  # the same ops as the forward's generation: bit-identical values
                self.cache = self.generate()
        view = self.cache[name].as_strided(size, stride, offset)
        self.pending -= 1
        if self.pending <= 0:
            self.cache = None
        return view


class Generated(nn.Module):
    def __init__(self, module: nn.Module, weights: Callable[[], dict[str, torch.Tensor]], recompute: str):
        super().__init__()
        # plain attributes, not submodules: the meta-device module and the generator are owned elsewhere
        self.__dict__["module"] = module
        self.__dict__["weights"] = weights
        self.recompute = recompute

    def train(self, mode: bool = True):
        super().train(mode)
        self.module.train(mode)  # a plain attribute: not reached by nn.Module.train
        return self

    def forward(self, *args, **kwargs):
        if self.recompute == "activations":
            return checkpoint(self._generate_and_run, *args, use_reentrant=False, **kwargs)
        return self._generate_and_run(*args, **kwargs)

    def _generate_and_run(self, *args, **kwargs):
        # "activations": already inside a checkpoint, whose recompute regenerates the weights (hooks of
        # our own here would replace the checkpoint's and keep the module's activations)
        if self.recompute != "weights" or not torch.is_grad_enabled():
            return functional_call(self.module, self.weights(), args, kwargs)
        # the generation's intermediates (depth blends, half-expanded products) are not kept either:
        # backward regenerates them when it reaches the operator
        weights = checkpoint(self.weights, use_reentrant=False)
        hooks = RegeneratedWeights(weights, self.weights)
        with torch.autograd.graph.saved_tensors_hooks(hooks.pack, hooks.unpack):
            return functional_call(self.module, weights, args, kwargs)


class GrownModel(nn.Module):
    """`forward(input_ids, labels)` of the target, differentiable w.r.t. the operator only."""

    def __init__(self, operator: GrowthOperator, target_config, recompute: str = "weights"):
        super().__init__()
        if recompute not in RECOMPUTE_MODES:
            raise ValueError(f"recompute={recompute!r}: choose one of {RECOMPUTE_MODES}")
        self.recompute = recompute
        self.config = target_config
        self.operator = operator
        with torch.device("meta"):
            skeleton = AutoModelForCausalLM.from_config(target_config)
        self.__dict__["skeleton"] = skeleton  # not a submodule: its meta parameters are never used
        self._wire(skeleton, operator)

    def _wire(self, skeleton, op: GrowthOperator) -> None:
        def wrap(module, weights):
            return Generated(module, weights, self.recompute)

        def global_weights(**keys):  # HF parameter name -> canonical global key
            return lambda: {name: op.globals(key) for name, key in keys.items()}

        layers = op.adapter.wire(skeleton, wrap, global_weights)
        for i, generator in enumerate(op.layers):
            layers[i] = wrap(layers[i], _layer_weights(generator, op.adapter))

    def train(self, mode: bool = True):
        """The skeleton is not a submodule (its meta parameters must stay out of the engine), so train/eval
        mode reaches it here: a donor config with dropout gets it in training and none in evaluation."""
        super().train(mode)
        self.skeleton.train(mode)
        return self

    def buffers_to(self, device: torch.device | str) -> None:
        """Moves every real buffer (the operator's frozen donor and unit masks, the skeleton's rotary
        tables) to `device`. DeepSpeed moves a model to the accelerator only when it was not built under
        ZeRO-3's zero.Init (whose partitioned parameters are there already, its buffers made from CPU
        tensors are not), and the skeleton, not a submodule, is never moved by anyone."""
        for module in [*self.operator.modules(), *self.skeleton.modules()]:
            for name, buffer in module.named_buffers(recurse=False):
                if buffer.device.type != "meta":
                    setattr(module, name, buffer.to(device))

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor | None = None):
        return self.skeleton(input_ids=input_ids, labels=labels, use_cache=False)


def _layer_weights(generator, adapter):
    return lambda: adapter.export_layer(generator())
