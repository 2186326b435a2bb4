"""Deterministic, seekable access to packed samples.

The training order is a pure function of (number of samples, order seed): epoch e visits the
samples in the permutation drawn from seed (order_seed, e). Global position g (the g-th sample the
run consumes) is sample ``order[g]`` -- an O(1) lookup, so resuming at any step reads exactly the
samples an uninterrupted run would have read, without replaying anything.

A mixture of weighted sources (``data.sources``) keeps that property: a ``Blend`` maps position g to
(source, k), the k-th draw from that source, and the source's own epoch permutations give the sample.
The blend deals positions in blocks of ``Blend.BLOCK``: each block holds every source's share of the
block exactly (largest remainder), shuffled by a seeded permutation of the block, so the proportions
are exact to 1/BLOCK at every block boundary and a seek computes one block (Megatron's blended dataset
gets the same exactness from a precomputed index over the whole run instead).

Optimizer step s consumes global positions [s*B, (s+1)*B) with B = micro * accum * ranks; within a
step, micro-step a of rank r takes the contiguous slice starting at s*B + (a*ranks + r)*micro, so the
ranks' slices are disjoint and together cover the step's batch.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

from pipeline.config import BLEND_BLOCK, ConfigError
from pipeline.data.packing import read_meta


def _read_prepared_meta(data_dir: str | Path) -> dict:
    meta = read_meta(Path(data_dir))
    if meta is None:
        raise ConfigError(f"no prepared data in {data_dir}: run `python -m pipeline.prepare --config ...` "
                          f"first (or fix data.output_dir)")
    return meta


class PackedSamples:
    """Samples of one split, memory-mapped: nothing is loaded until indexed."""

    def __init__(self, data_dir: str | Path, split: str):
        meta = _read_prepared_meta(data_dir)
        self.meta = meta
        self.seq_len = meta["seq_len"]
        self.num_samples = meta["splits"][split]["samples"]
        self.tokens = np.memmap(Path(data_dir) / f"{split}.bin", dtype=np.dtype(meta["dtype"]), mode="r")

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int) -> np.ndarray:
        start = int(index) * self.seq_len
        return self.tokens[start:start + self.seq_len]

    def order(self, seed: int) -> "GlobalOrder":
        return GlobalOrder(len(self), seed)

    def validation_indices(self, needed: int) -> list[int]:
        return validation_positions(len(self), needed)


class GlobalOrder:
    """Global position -> sample index, one seeded permutation per epoch. ``stream`` tells apart the
    orders of a mixture's sources drawn from one seed."""

    def __init__(self, num_samples: int, seed: int, stream: tuple[int, ...] = ()):
        self.num_samples, self.seed, self.stream = num_samples, seed, stream
        self._epoch, self._perm = -1, None

    def permutation(self, epoch: int) -> np.ndarray:
        if epoch != self._epoch:  # the current epoch's permutation is cached
            self._epoch = epoch
            rng = np.random.default_rng([self.seed, *self.stream, epoch])
            self._perm = rng.permutation(self.num_samples)
        return self._perm

    def __getitem__(self, position: int) -> int:
        epoch, offset = divmod(int(position), self.num_samples)
        return int(self.permutation(epoch)[offset])


def shares_of(weights: list[float], total: int) -> np.ndarray:
    """``total`` split in proportion to ``weights`` by largest remainder (ties to the earlier source)."""
    exact = np.asarray(weights, dtype=np.float64) / np.sum(weights) * total
    counts = np.floor(exact).astype(np.int64)
    counts[np.argsort(-(exact - counts), kind="stable")[:total - int(counts.sum())]] += 1
    return counts


class Blend:
    """Global position -> (source, k): position g is the k-th draw from that source. Exact per block."""

    BLOCK = BLEND_BLOCK
    STREAM = 1  # the blend's RNG stream; source s orders with stream (2, s)

    def __init__(self, weights: list[float], seed: int):
        counts = shares_of(weights, self.BLOCK)
        if (counts == 0).any():  # validate_sources refuses such weights before prepare
            raise ConfigError(f"data.sources weights {list(weights)}: a source's share is below 1/{self.BLOCK} "
                              f"of the samples; raise its weight or drop it")
        self.counts, self.seed = counts, seed
        self._block, self._source, self._draw = -1, None, None

    def _deal(self, block: int) -> None:
        source = np.random.default_rng([self.seed, self.STREAM, block]).permutation(
            np.repeat(np.arange(len(self.counts)), self.counts))
        draw = np.empty(self.BLOCK, dtype=np.int64)  # how many earlier positions of the block share the source
        for s in range(len(self.counts)):
            mine = source == s
            draw[mine] = np.arange(int(mine.sum()))
        self._block, self._source, self._draw = block, source, draw

    def __getitem__(self, position: int) -> tuple[int, int]:
        block, offset = divmod(int(position), self.BLOCK)
        if block != self._block:
            self._deal(block)
        source = int(self._source[offset])
        return source, block * int(self.counts[source]) + int(self._draw[offset])


class SampleMixture:
    """The splits of several packed sources read as one: concatenated indices for random access, a
    weighted order for training and a weighted validation set (``data.sources``)."""

    def __init__(self, data_dir: str | Path, split: str, meta: dict):
        self.meta, self.seq_len = meta, meta["seq_len"]
        self.parts = [PackedSamples(Path(data_dir) / source["dir"], split) for source in meta["sources"]]
        self.weights = [source["weight"] for source in meta["sources"]]
        self.offsets = np.cumsum([0] + [len(p) for p in self.parts])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getitem__(self, index: int) -> np.ndarray:
        source = self.source_of(index)
        return self.parts[source][int(index) - int(self.offsets[source])]

    def source_of(self, index: int) -> int:
        return int(np.searchsorted(self.offsets, index, side="right")) - 1

    def order(self, seed: int) -> "MixtureOrder":
        return MixtureOrder(self, seed)

    def validation_indices(self, needed: int) -> list[int]:
        """``needed`` samples in the sources' weights (exactly, by largest remainder), each source's spread
        over its split, the sources interleaved evenly (each sample at its fractional place in its source)."""
        placed = []
        for s, (part, n, source) in enumerate(zip(self.parts, shares_of(self.weights, needed), self.meta["sources"])):
            if n > len(part):
                raise ConfigError(f"validation needs {n} samples of source {source['name']!r} but its split has "
                                  f"{len(part)}: lower train.eval_batches")
            placed += [((j + 0.5) / n, s, int(self.offsets[s]) + i)
                       for j, i in enumerate(validation_positions(len(part), int(n)))]
        return [index for _, _, index in sorted(placed)]


class MixtureOrder:
    """Global position -> concatenated sample index of a ``SampleMixture``."""

    def __init__(self, mixture: SampleMixture, seed: int):
        self.blend = Blend(mixture.weights, seed)
        self.sources = [GlobalOrder(len(part), seed, stream=(2, s)) for s, part in enumerate(mixture.parts)]
        self.offsets = mixture.offsets

    def __getitem__(self, position: int) -> int:
        source, k = self.blend[position]
        return int(self.offsets[source]) + self.sources[source][k]


def open_samples(data_dir: str | Path, split: str) -> PackedSamples | SampleMixture:
    """One split of prepared data: a single packed source, or a mixture when prepare wrote several."""
    meta = _read_prepared_meta(data_dir)
    return SampleMixture(data_dir, split, meta) if "sources" in meta else PackedSamples(data_dir, split)


DATA_POSITION = "data_position.json"  # in a model dir the pipeline wrote: where its training data order ended


def write_data_position(model_dir: Path, data_key: str, order_seed: int, next_position: int) -> None:
    path = Path(model_dir) / DATA_POSITION
    tmp = path.with_suffix(".tmp")  # written whole or not at all
    tmp.write_text(json.dumps({"data_key": data_key, "order_seed": order_seed, "next_position": next_position},
                              indent=2))
    os.replace(tmp, path)


def data_start(setting: str, model_dir: str | None, data_key: str, order_seed: int) -> tuple[int, str]:
    """The global position a fresh run's data order starts at, and why. ``setting`` is data.start: an
    integer, or "auto": after the samples the run's starting model (train.init_from, grow.donor) was
    trained on, when the pipeline trained it on this data in this order (so a grown model does not
    re-read the batches its operator was fitted on); otherwise 0."""
    if setting != "auto":
        return int(setting), f"data.start={setting}"
    if model_dir is None:
        return 0, "a new model"
    path = Path(model_dir) / DATA_POSITION
    if not path.exists():
        return 0, f"{model_dir} has no {DATA_POSITION}: not trained by this pipeline on record; data.start=N to choose"
    record = json.loads(path.read_text())
    if record["data_key"] != data_key or record["order_seed"] != order_seed:
        return 0, f"{model_dir} was trained on other data or in another order (data.order_seed); data.start=N to choose"
    return record["next_position"], (f"after the {record['next_position']:,} samples {model_dir} was trained on; "
                                     f"data.start=0 reads from the beginning")


def micro_batch_positions(step: int, micro_step: int, rank: int, micro_batch: int, grad_accum: int,
                          world_size: int, start: int = 0) -> range:
    """Global positions read by ``rank`` at (optimizer ``step``, ``micro_step``), the run's order
    beginning at position ``start``."""
    start += step * micro_batch * grad_accum * world_size + (micro_step * world_size + rank) * micro_batch
    return range(start, start + micro_batch)


class TrainBatches:
    """Micro-batches for one data-parallel rank, addressed by (step, micro_step)."""

    def __init__(self, samples: PackedSamples | SampleMixture, order_seed: int, micro_batch: int, grad_accum: int,
                 rank: int, world_size: int, start: int = 0):
        self.samples = samples
        self.order = samples.order(order_seed)
        self.layout = dict(micro_batch=micro_batch, grad_accum=grad_accum, world_size=world_size, start=start)
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


def _validation_rows(samples: PackedSamples | SampleMixture, micro_batch: int, num_batches: int, rank: int,
                     world_size: int) -> list[list[int]]:
    needed = num_batches * micro_batch * world_size
    if needed > len(samples):
        raise ConfigError(f"validation needs {needed} samples (train.eval_batches x micro_batch_size x ranks) "
                          f"but the split has {len(samples)}: lower train.eval_batches")
    positions = samples.validation_indices(needed)
    return [positions[(b * world_size + rank) * micro_batch:(b * world_size + rank + 1) * micro_batch]
            for b in range(num_batches)]


def validation_batches(samples: PackedSamples | SampleMixture, micro_batch: int, num_batches: int, rank: int,
                       world_size: int) -> list[torch.Tensor]:
    """A fixed validation set: num_batches*micro*ranks samples spread evenly over the split
    (validation_positions; for a mixture, over each source's split in the sources' weights), sliced by rank.

    Every rank gets the same number of batches, so ZeRO-3 forwards stay in lockstep."""
    return [torch.from_numpy(np.stack([samples[i] for i in rows]).astype(np.int64))
            for rows in _validation_rows(samples, micro_batch, num_batches, rank, world_size)]


def validation_sources(samples: PackedSamples | SampleMixture, micro_batch: int, num_batches: int, rank: int,
                       world_size: int) -> list[torch.Tensor] | None:
    """For a mixture, the source of each sample of validation_batches (same arguments); None for one source."""
    if not isinstance(samples, SampleMixture):
        return None
    return [torch.tensor([samples.source_of(i) for i in rows])
            for rows in _validation_rows(samples, micro_batch, num_batches, rank, world_size)]
