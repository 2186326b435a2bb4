"""Lottery-ticket masks: which weights are prunable, magnitude pruning to an exact count (global or per
tensor), the random-pruning control, and mask files. Tensor code only: no DeepSpeed.

A mask maps a parameter name to a bool tensor of the parameter's shape, True = kept. Masks are
computed from weights read one tensor at a time (`models.hf.HFWeights`, an HF dir's safetensors), so a global
threshold over a billion weights never holds more than one tensor.

Global magnitude pruning needs the k-th smallest |w| among the survivors of every prunable tensor. It
is found exactly in two passes of 65536-bin histograms over the bits of |w| (non-negative fp32 values
order like their int32 bit patterns): the high 16 bits, then the low 16 bits inside the bin that
holds the k-th. Entries equal to that threshold are pruned in (tensor, flat index) order until the
count is exact, so the result depends on the weights alone, not on how ZeRO partitions them.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Callable, Iterator

import torch
from safetensors.torch import load_file, save_file

from pipeline.errors import ConfigError


def prunable_names(shapes: dict[str, tuple], include: str, exclude: str) -> list[str]:
    """Matrices (2-D) whose name matches `include` and not `exclude` (regular expressions, re.search)."""
    names = [name for name, shape in shapes.items() if len(shape) == 2 and re.search(include, name)
             and not (exclude and re.search(exclude, name))]
    if not names:
        raise ConfigError(f"no weight matrix matches prune.include={include!r} (minus prune.exclude={exclude!r}); "
                          f"names look like {sorted(shapes)[:4]}")
    return names


def full_masks(shapes: dict[str, tuple], names: list[str]) -> dict[str, torch.Tensor]:
    return {name: torch.ones(shapes[name], dtype=torch.bool) for name in names}


def _bits(values: torch.Tensor) -> torch.Tensor:
    """|values| as int64 keys that order like the magnitudes."""
    return values.float().abs().contiguous().view(torch.int32).long()


def _kth_smallest(keys: Callable[[], Iterator[torch.Tensor]], k: int) -> tuple[int, int]:
    """The k-th smallest (1-based) key over the chunks `keys()` yields, and how many keys are smaller;
    two passes."""
    high = torch.zeros(1 << 16, dtype=torch.int64)
    for chunk in keys():
        high += torch.bincount(chunk >> 16, minlength=1 << 16)
    cumulative = high.cumsum(0)
    top = int(torch.searchsorted(cumulative, k))
    below = int(cumulative[top - 1]) if top else 0
    low = torch.zeros(1 << 16, dtype=torch.int64)
    for chunk in keys():
        low += torch.bincount(chunk[(chunk >> 16) == top] & 0xFFFF, minlength=1 << 16)
    low_cumulative = low.cumsum(0)
    bottom = int(torch.searchsorted(low_cumulative, k - below))
    return (top << 16) | bottom, below + (int(low_cumulative[bottom - 1]) if bottom else 0)


def _prune_count(weights: Callable[[str], torch.Tensor], names: list[str], masks: dict[str, torch.Tensor],
                 count: int) -> dict[str, torch.Tensor]:
    """New masks without the `count` smallest-magnitude survivors among `names` (ties in name, flat order)."""
    if count == 0:
        return {name: masks[name].clone() for name in names}

    def survivor_keys():
        for name in names:
            values = weights(name)
            if not torch.isfinite(values).all():
                raise ConfigError(f"{name} holds non-finite weights: the run diverged, there is no magnitude to prune by")
            yield _bits(values)[masks[name]]

    threshold, smaller = _kth_smallest(survivor_keys, count)
    out, ties_left = {}, count - smaller
    for name in names:
        keys, kept = _bits(weights(name)), masks[name].clone()
        kept &= keys > threshold
        tied = (keys == threshold) & masks[name]
        if ties_left:  # the first `ties_left` ties are pruned, the rest kept
            tied_at = tied.flatten().nonzero().squeeze(1)
            kept.view(-1)[tied_at[ties_left:]] = True
            ties_left -= min(ties_left, len(tied_at))
        else:
            kept |= tied
        out[name] = kept
    return out


def magnitude_masks(weights: Callable[[str], torch.Tensor], previous: dict[str, torch.Tensor], sparsity: float,
                    strategy: str) -> dict[str, torch.Tensor]:
    """Prune the smallest-magnitude survivors of `previous` until `sparsity` of the masked tensors'
    entries are pruned: counted over all of them (global) or within each tensor (layerwise).
    `weights(name)` reads one tensor. The new masks are subsets of `previous`."""
    groups = [list(previous)] if strategy == "global" else [[name] for name in previous]
    out = {}
    for names in groups:
        total = sum(previous[name].numel() for name in names)
        survivors = sum(int(previous[name].sum()) for name in names)
        count = survivors - (total - round(sparsity * total))
        if count < 0:
            raise ConfigError(f"sparsity {sparsity} is below the {1 - survivors / total:.4f} already pruned: "
                              f"prune.sparsities must increase")
        out.update(_prune_count(weights, names, previous, count))
    return out


def random_masks_like(masks: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    """The random-pruning control: per tensor as many kept entries as `masks` (layerwise shuffle),
    at random positions."""
    generator = torch.Generator().manual_seed(seed)
    out = {}
    for name, mask in masks.items():
        kept = torch.zeros(mask.numel(), dtype=torch.bool)
        kept[torch.randperm(mask.numel(), generator=generator)[:int(mask.sum())]] = True
        out[name] = kept.view(mask.shape)
    return out


def density_report(masks: dict[str, torch.Tensor]) -> dict:
    kept = {name: int(mask.sum()) for name, mask in masks.items()}
    total = sum(mask.numel() for mask in masks.values())
    return {"prunable": total, "kept": sum(kept.values()), "density": sum(kept.values()) / total,
            "per_tensor": {name: kept[name] / masks[name].numel() for name in masks}}


def save_masks(path: Path, masks: dict[str, torch.Tensor], manifest: dict) -> None:
    """<path> (safetensors of bool tensors) and <path>.json: the manifest plus the densities. The
    manifest is written last: its presence marks a complete mask."""
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({name: mask.contiguous() for name, mask in masks.items()}, path)
    manifest_path(path).write_text(json.dumps({**manifest, **density_report(masks)}, indent=2))


def manifest_path(path: Path) -> Path:
    return path.with_suffix(".json")


def load_masks(path: Path) -> dict[str, torch.Tensor]:
    return load_file(path)
