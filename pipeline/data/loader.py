"""Deterministic, seekable access to packed samples.

The training order is a pure function of (number of samples, order seed): epoch e visits the
samples in the permutation drawn from seed (order_seed, e). Global position g (the g-th sample the
run consumes) is sample ``order[g]`` -- an O(1) lookup, so resuming at any step reads exactly the
samples an uninterrupted run would have read, without replaying anything.

Optimizer step s consumes global positions [s*B, (s+1)*B) with B = micro * accum * ranks; within a
step, micro-step a of rank r takes the contiguous slice starting at s*B + (a*ranks + r)*micro, so the
ranks' slices are disjoint and together cover the step's batch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from pipeline.config import ConfigError
from pipeline.data.packing import read_meta


class PackedSamples:
    """Samples of one split, memory-mapped: nothing is loaded until indexed."""

    def __init__(self, data_dir: str | Path, split: str):
        meta = read_meta(Path(data_dir))
        if meta is None:
            raise ConfigError(f"no prepared data in {data_dir}: run `python -m pipeline.prepare --config ...` "
                              f"first (or fix data.output_dir)")
        self.meta = meta
        self.seq_len = meta["seq_len"]
        self.num_samples = meta["splits"][split]["samples"]
        self.tokens = np.memmap(Path(data_dir) / f"{split}.bin", dtype=np.dtype(meta["dtype"]), mode="r")

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int) -> np.ndarray:
        start = int(index) * self.seq_len
        return self.tokens[start:start + self.seq_len]


class GlobalOrder:
    """Global position -> sample index, one seeded permutation per epoch."""

    def __init__(self, num_samples: int, seed: int):
        self.num_samples, self.seed = num_samples, seed
        self._epoch, self._perm = -1, None

    def permutation(self, epoch: int) -> np.ndarray:
        if epoch != self._epoch:  # the current epoch's permutation is cached
            self._epoch = epoch
            self._perm = np.random.default_rng([self.seed, epoch]).permutation(self.num_samples)
        return self._perm

    def __getitem__(self, position: int) -> int:
        epoch, offset = divmod(int(position), self.num_samples)
        return int(self.permutation(epoch)[offset])


def micro_batch_positions(step: int, micro_step: int, rank: int, micro_batch: int, grad_accum: int,
                          world_size: int) -> range:
    """Global positions read by ``rank`` at (optimizer ``step``, ``micro_step``)."""
    start = step * micro_batch * grad_accum * world_size + (micro_step * world_size + rank) * micro_batch
    return range(start, start + micro_batch)


class TrainBatches:
    """Micro-batches for one data-parallel rank, addressed by (step, micro_step)."""

    def __init__(self, samples: PackedSamples, order_seed: int, micro_batch: int, grad_accum: int,
                 rank: int, world_size: int):
        self.samples = samples
        self.order = GlobalOrder(len(samples), order_seed)
        self.layout = dict(micro_batch=micro_batch, grad_accum=grad_accum, world_size=world_size)
        self.rank = rank

    def batch(self, step: int, micro_step: int) -> torch.Tensor:
        positions = micro_batch_positions(step, micro_step, self.rank, **self.layout)
        rows = [self.samples[self.order[g]] for g in positions]
        return torch.from_numpy(np.stack(rows).astype(np.int64))


def validation_positions(num_samples: int, needed: int) -> list[int]:
    """The validation set's sample indices: `needed` samples spread evenly over the split. Consecutive
    samples come from one document (the packing keeps documents in order), so the first N would measure
    one or two files; a stride covers every part of the split at the same cost."""
    return [g * num_samples // needed for g in range(needed)]


def validation_batches(samples: PackedSamples, micro_batch: int, num_batches: int, rank: int,
                       world_size: int) -> list[torch.Tensor]:
    """A fixed validation set: num_batches*micro*ranks samples spread evenly over the split
    (validation_positions), sliced by rank.

    Every rank gets the same number of batches, so ZeRO-3 forwards stay in lockstep."""
    needed = num_batches * micro_batch * world_size
    if needed > len(samples):
        raise ConfigError(f"validation needs {needed} samples (train.eval_batches x micro_batch_size x ranks) "
                          f"but the split has {len(samples)}: lower train.eval_batches")
    positions = validation_positions(len(samples), needed)
    out = []
    for b in range(num_batches):
        start = (b * world_size + rank) * micro_batch
        out.append(torch.from_numpy(np.stack([samples[i] for i in positions[start:start + micro_batch]])
                                    .astype(np.int64)))
    return out
