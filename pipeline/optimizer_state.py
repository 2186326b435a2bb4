"""AdamW's state by parameter name, in and out of a DeepSpeed engine (ZeRO 0-3, fp32 or bf16).

A run exports its optimizer's moments beside its final weights, `<hf>/optimizer/adamw.safetensors`:
tensors "<HF name>.exp_avg" and "<HF name>.exp_avg_sq" (fp32, full shape), the step count, betas and
tokens per step (the batch the moments were gathered at) in the metadata. The grow stage writes the
same file for a grown model (the donor's moments mapped through growth, pipeline/growth/moments.py),
adding "<name>.lr_scale" (a per-coordinate LR factor) and "<name>.new" (coordinates that have no donor
counterpart). A fresh run whose train.init_from carries the file starts its AdamW from it
(train.init_optimizer=auto): moments and step count copied into each rank's optimizer partitions, LR
scales handed to pipeline.engine.AdamW.

The moments live where DeepSpeed keeps them: one flat fp32 tensor per parameter group and rank (ZeRO
1-2, bf16), per sub-group (ZeRO-3), or the parameters themselves (ZeRO-0 fp32). `local_pieces` says
which slice of which of those tensors holds which part of each named parameter on this rank.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors import safe_open

from pipeline.errors import ConfigError

OPTIMIZER_FILE = Path("optimizer") / "adamw.safetensors"
MOMENTS = ("exp_avg", "exp_avg_sq")


@dataclass
class Piece:
    name: str  # the parameter's name in engine.module
    flat: torch.Tensor  # the tensor the optimizer steps
    flat_offset: int  # where this piece starts in flat (flattened)
    param_offset: int  # where it starts in the parameter (flattened)
    numel: int


def local_pieces(engine) -> list[Piece]:
    """This rank's pieces of every trainable parameter inside the optimizer's tensors."""
    pieces = []
    for name, param in engine.module.named_parameters():
        if not param.requires_grad:
            continue
        if hasattr(param, "ds_id"):  # ZeRO-3: this rank's partition, in one sub-group's flat tensor
            z3 = param._z3_optimizer
            group, offset, numel = z3.grad_position[z3.get_param_id(param)]
            start = dist.get_rank(group=param.ds_process_group) * param.ds_tensor.numel()
            numel = min(numel, param.ds_numel - start)  # the last rank's partition ends in padding
            if numel > 0:
                pieces.append(Piece(name, z3.fp32_partitioned_groups_flat[group], offset, start, numel))
        elif hasattr(param, "_hp_mapping"):  # ZeRO 1-2 and bf16: a fragment of the group's flat partition
            mapping = param._hp_mapping
            if mapping is not None:  # None: the parameter lies in other ranks' partitions
                flat = engine.client_optimizer.param_groups[mapping.param_group_index]["params"][0]
                pieces.append(Piece(name, flat, mapping.hp_fragment_address.start,
                                    mapping.lp_fragment_address.start, mapping.lp_fragment_address.numel))
        else:  # ZeRO-0 fp32: the optimizer steps the parameter itself
            pieces.append(Piece(name, param, 0, 0, param.numel()))
    return pieces


def _scatter(piece: Piece, target: torch.Tensor, full: torch.Tensor) -> None:
    target.view(-1).narrow(0, piece.flat_offset, piece.numel).copy_(
        full.reshape(-1).narrow(0, piece.param_offset, piece.numel))


@dataclass
class SavedState:
    """An optimizer file opened for reading (tensors are read one at a time)."""
    path: Path
    step: int
    names: set[str]
    tokens_per_step: int | None  # None in files written before it was recorded

    def get(self, name: str) -> torch.Tensor | None:
        if name not in self.names:
            return None
        with safe_open(self.path, framework="pt") as f:
            return f.get_tensor(name).float()

    @property
    def has_lr_scales(self) -> bool:
        return any(n.endswith(".lr_scale") for n in self.names)


def read_saved_state(model_dir: str | Path) -> SavedState | None:
    """The optimizer file a model dir carries, or None."""
    path = Path(model_dir) / OPTIMIZER_FILE
    if not path.is_file():
        return None
    with safe_open(path, framework="pt") as f:
        meta, names = f.metadata() or {}, set(f.keys())
    if "step" not in meta:
        raise ConfigError(f"{path} has no step count in its metadata: not an optimizer file of this pipeline; "
                          f"remove it or set train.init_optimizer=fresh")
    tokens = meta.get("tokens_per_step")
    return SavedState(path, int(meta["step"]), names, int(tokens) if tokens else None)


def batch_change_note(saved: SavedState, tokens_per_step: int) -> str | None:
    """What to expect when a run continues from moments gathered at a larger batch: the model climbs by
    itself at first (a real-size donor continued at half its batch: +0.024, at its own: +0.010; a lower
    LR or rescaled moments did not remove it: benchmarks/2026-12-04-continued-real-size-batch.md). A
    larger batch than the donor's is not measured: no note."""
    if saved.tokens_per_step is None or tokens_per_step >= saved.tokens_per_step:
        return None
    return (f"the moments in {saved.path} were gathered at {saved.tokens_per_step:,} tokens per step, this run "
            f"takes {tokens_per_step:,}: a trained model continued at a smaller batch than its own climbs by "
            f"itself at first (docs/stages.md); keep the donor's batch to avoid it")


def install_saved_state(engine, saved: SavedState, moments: bool, lr_scales: bool, new_lr_scale: float,
                        new_units: bool = False) -> None:
    """Start the engine's AdamW from `saved` (before its first step; local to each rank, no collective):
    with `moments`, every optimizer tensor gets the saved step count and the moments of the parameters
    the file names (zero elsewhere); with `lr_scales`, the file's LR scales (if any) go to
    AdamW.lr_scales, with `new_lr_scale` at the coordinates it marks new, and with `new_units` too
    the masks of those coordinates go to AdamW.new_units (for the fade-in). Call it after any
    checkpoint load, too: LR scales are not part of a checkpoint."""
    optimizer = engine.client_optimizer
    lr_scales = lr_scales and saved.has_lr_scales
    pieces = local_pieces(engine)
    if moments:
        for flat in {id(p.flat): p.flat for p in pieces}.values():
            optimizer.state[flat] = {"step": torch.tensor(float(saved.step)),
                                     **{key: torch.zeros_like(flat) for key in MOMENTS}}
    for piece in pieces:
        for key in MOMENTS if moments else ():
            value = saved.get(f"{piece.name}.{key}")
            if value is not None:
                _scatter(piece, optimizer.state[piece.flat][key], value)
        scale = saved.get(f"{piece.name}.lr_scale") if lr_scales else None
        if scale is not None:
            new = saved.get(f"{piece.name}.new")
            if new is not None:
                scale = torch.where(new.bool(), torch.full_like(scale, new_lr_scale), scale)
                if new_units:
                    optimizer.new_units_lr_scale = new_lr_scale
                    mask = optimizer.new_units.setdefault(id(piece.flat), torch.zeros_like(piece.flat, dtype=torch.bool))
                    _scatter(piece, mask, new.bool())
            target = optimizer.lr_scales.setdefault(id(piece.flat), torch.ones_like(piece.flat))
            _scatter(piece, target, scale)


def full_moments(engine, rank: int):
    """Yield (name, exp_avg, exp_avg_sq) per trainable parameter, full and fp32 on rank 0 (None
    elsewhere), assembled one parameter at a time from every rank's pieces; every rank must iterate
    to the end (collective when the optimizer is partitioned).

    Not DeepSpeed's safe_get_full_optimizer_state: under ZeRO 1-2 (0.19.8) it links the per-parameter
    views of the optimizer state after the first group's first step, before the other groups have
    state, so the no-decay group's moments are not found."""
    state = engine.client_optimizer.state
    partitioned = engine.zero_optimization_stage() > 0 or any(hasattr(p, "_hp_mapping")
                                                               for p in engine.module.parameters())
    pieces = {piece.name: piece for piece in local_pieces(engine)}
    for name, param in engine.module.named_parameters():
        if not param.requires_grad:
            continue
        numel = getattr(param, "ds_numel", param.numel())
        shape = getattr(param, "ds_shape", param.shape)
        values = []
        for key in MOMENTS:
            full = torch.zeros(numel, dtype=torch.float32, device=engine.device)
            piece = pieces.get(name)
            if piece is not None:
                full.narrow(0, piece.param_offset, piece.numel).copy_(
                    state[piece.flat][key].view(-1).narrow(0, piece.flat_offset, piece.numel))
            if partitioned:
                dist.all_reduce(full)  # the ranks' pieces are disjoint
            values.append(full.view(shape))
        if rank == 0:
            yield name, *(v.to("cpu") for v in values)
        else:
            yield name, None, None


def optimizer_step_count(engine) -> int | None:
    """Steps the AdamW state has taken (None before the first)."""
    for entry in engine.client_optimizer.state.values():
        if "step" in entry:
            return int(entry["step"])
    return None


def optimizer_metadata(step: int, betas: tuple[float, float], tokens_per_step: int) -> dict[str, str]:
    return {"step": str(step), "betas": json.dumps(list(betas)), "tokens_per_step": str(tokens_per_step)}
