"""Training checkpoints (DeepSpeed engine state + what DeepSpeed does not save) and HF model export.

A checkpoint is ``<run>/checkpoints/step<N>/`` written by ``engine.save_checkpoint``; ``latest``
names the newest *complete* one. DeepSpeed saves model, optimizer and LR-scheduler state but no RNG
state and no data position, so we add ``progress.json`` (step, consumed samples and tokens, world
size, global batch, the data's key, the resolved config, the pipeline version: readable without
loading any tensor) and each rank's RNG states in ``rng_rank<r>.pt``. Only the newest
``train.keep_checkpoints`` complete checkpoints are kept.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
import torch.distributed as dist
from deepspeed.accelerator import get_accelerator
from deepspeed.checkpoint.ds_to_universal import main as ds_to_universal
from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
from safetensors import safe_open

from pipeline.config import ConfigError
from pipeline.engine import full_fp32_parameters
from pipeline.models.hf import HFWeights
from pipeline.optimizer_state import MOMENTS, OPTIMIZER_FILE, full_moments, optimizer_metadata, optimizer_step_count


def latest_tag(checkpoint_dir: Path) -> str | None:
    pointer = checkpoint_dir / "latest"
    return pointer.read_text().strip() if pointer.exists() else None


def _rng_state() -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
            "accelerator": get_accelerator().get_rng_state(), "accelerator_name": get_accelerator().device_name()}


def _set_rng_state(state: dict) -> bool:
    """Restores the saved generators; False when the checkpoint was written on another kind of
    accelerator (a CPU run resumed on GPUs, say), whose generator state this one cannot take."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state.get("accelerator_name", "cpu") != get_accelerator().device_name():  # unnamed: written on the CPU
        return False
    get_accelerator().set_rng_state(state["accelerator"])
    return True


def check_files(checkpoint_dir: Path, tag: str) -> None:
    """Every file the save recorded is there with its size (cheap: no tensor is read)."""
    where = checkpoint_dir / tag
    try:
        recorded = json.loads((where / "manifest.json").read_text())
    except (OSError, ValueError) as err:
        raise ConfigError(f"{where / 'manifest.json'} is missing or unreadable ({err}): the checkpoint is incomplete; "
                          f"resume from an earlier one by writing its name into {checkpoint_dir / 'latest'}") from err
    damaged = [f"{name} ({'missing' if not (where / name).exists() else 'size changed'})"
               for name, size in recorded.items() if not (where / name).exists() or (where / name).stat().st_size != size]
    if damaged:
        raise ConfigError(f"checkpoint {where} is damaged: {', '.join(damaged)}. Restore the files, or resume from "
                          f"an earlier checkpoint by writing its name (e.g. step100) into {checkpoint_dir / 'latest'}")


def read_progress(checkpoint_dir: Path, tag: str) -> dict:
    path = checkpoint_dir / tag / "progress.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ConfigError(f"{path} is missing or unreadable ({err}): the checkpoint is incomplete or from an older "
                          f"version; point `latest` at an earlier step<N> or start a new run.dir") from err


def save(engine, checkpoint_dir: Path, progress: dict, rank: int, keep: int = 0, model_config=None) -> None:
    """Collective: every rank must call it at the same step. The checkpoint becomes `latest` only once
    every rank's files (DeepSpeed's and ours) are written, so a kill mid-save leaves the previous
    checkpoint as the one to resume from. Then all but the newest `keep` complete ones go (0: keep all)."""
    tag = f"step{progress['step']}"
    engine.save_checkpoint(str(checkpoint_dir), tag=tag, client_state={"progress": progress}, save_latest=False)
    (checkpoint_dir / tag).mkdir(parents=True, exist_ok=True)  # ranks without DeepSpeed files of their own
    torch.save(_rng_state(), checkpoint_dir / tag / f"rng_rank{rank}.pt")
    if rank == 0:
        (checkpoint_dir / tag / "progress.json").write_text(json.dumps(progress, indent=1))
        if model_config is not None:
            model_config.to_json_file(checkpoint_dir / tag / "config.json")
    if os.environ.get("PIPELINE_TEST_CRASH_IN_SAVE") == tag:  # fault-injection hook of tests/test_faults.py
        os._exit(17)
    dist.barrier()
    if rank == 0:
        # every rank's files are complete: record their sizes, so a truncated or missing file is found
        # at the next resume before any model is built
        files = {p.name: p.stat().st_size for p in sorted((checkpoint_dir / tag).iterdir()) if p.is_file()}
        (checkpoint_dir / tag / "manifest.json").write_text(json.dumps(files, indent=1))
        pointer = checkpoint_dir / "latest.tmp"
        pointer.write_text(tag)
        os.replace(pointer, checkpoint_dir / "latest")
        if keep > 0:
            _remove_old_checkpoints(checkpoint_dir, progress["step"], keep)
    dist.barrier()  # nobody proceeds (or exits) before the pointer is in place


def _remove_old_checkpoints(checkpoint_dir: Path, latest_step: int, keep: int) -> None:
    """Delete complete checkpoints older than the newest `keep`; never `latest` or anything newer
    (a newer directory is an interrupted save that the next save of that step overwrites)."""
    steps = sorted(int(m.group(1)) for p in checkpoint_dir.iterdir()
                   if (m := re.fullmatch(r"step(\d+)", p.name)) and int(m.group(1)) <= latest_step)
    for step in steps[:-keep]:
        shutil.rmtree(checkpoint_dir / f"step{step}")
        shutil.rmtree(checkpoint_dir / universal_tag(f"step{step}"), ignore_errors=True)


def load(engine, checkpoint_dir: Path, rank: int, universal: bool = False) -> dict:
    """Restore the engine and RNG from the newest checkpoint; returns the saved progress. With
    `universal`, from its universal form (another world size; see `convert_to_universal`): a rank
    that did not exist then keeps its seeded RNG (the models here draw no random numbers in training)."""
    tag = latest_tag(checkpoint_dir)
    try:
        path, client_state = engine.load_checkpoint(str(checkpoint_dir), tag=universal_tag(tag) if universal else tag)
    except Exception as err:  # DeepSpeed raises assorted errors for missing or truncated files
        raise ConfigError(f"cannot load checkpoint {checkpoint_dir / tag} ({type(err).__name__}: {err}); restore its "
                          f"files, or resume from an earlier checkpoint by writing its name into "
                          f"{checkpoint_dir / 'latest'}") from err
    if path is None:
        raise ConfigError(f"DeepSpeed found no loadable checkpoint in {checkpoint_dir / tag}")
    rng = checkpoint_dir / tag / f"rng_rank{rank}.pt"
    if rng.exists() and not _set_rng_state(torch.load(rng, weights_only=False)) and rank == 0:
        print(f"[resume] {checkpoint_dir / tag} was written on another kind of accelerator: its device random "
              f"state is not restored (dropout and other device randomness continue from a new seed; the rest "
              f"resumes exactly)", flush=True)
    return client_state["progress"]


def universal_tag(tag: str) -> str:
    return f"{tag}_universal"


def convert_to_universal(checkpoint_dir: Path, tag: str) -> None:
    """DeepSpeed's universal checkpoint of ZeRO 1-3 `tag` (per-parameter fp32 weights and Adam moments,
    independent of the world size) beside it, unless already there. One process, offline."""
    out = checkpoint_dir / universal_tag(tag)
    if (out / "zero" / "optimizer_state.pt").exists():
        return
    print(f"[checkpoint] converting {checkpoint_dir / tag} to a universal checkpoint for a new world size", flush=True)
    ds_to_universal(SimpleNamespace(input_folder=str(checkpoint_dir / tag), output_folder=str(out),
                                    num_extract_workers=1, num_merge_workers=1, keep_temp_folder=False,
                                    strict=True, inject_missing_state=True))


def consolidated_state_dict(checkpoint_dir: Path, tag: str, zero_stage: int) -> dict[str, torch.Tensor]:
    """The full fp32 weights of a checkpoint, offline (no process group). ZeRO 1-3: merged from every
    rank's fp32 master partitions by DeepSpeed's zero_to_fp32 (tied weights restored); ZeRO-0: the
    module state, which is the full model."""
    if zero_stage == 0:
        state = torch.load(checkpoint_dir / tag / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=False)
        return {name: value.float() for name, value in state["module"].items()}
    return get_fp32_state_dict_from_zero_checkpoint(str(checkpoint_dir), tag=tag)


def load_hf_partitions(model, hf_dir: Path) -> None:
    """Fill a ZeRO-3-partitioned model's local partitions from an HF dir's safetensors: each rank reads
    only the slice of each tensor that it holds (whole rows around it), never the whole checkpoint and
    without gathering a parameter. transformers' own ZeRO-3 loading has rank 0 read every file and
    gather each layer to hand it out."""
    files = HFWeights(hf_dir).files
    params = list(model.named_parameters())
    missing = [name for name, _ in params if name not in files]
    if missing:
        raise ConfigError(f"{hf_dir} lacks {missing[:3]}{' ...' if len(missing) > 3 else ''}: not a checkpoint of "
                          f"this architecture")
    by_file: dict[str, list] = {}
    for name, param in params:
        by_file.setdefault(files[name], []).append((name, param))
    for filename, entries in by_file.items():
        with safe_open(hf_dir / filename, framework="pt") as f:
            for name, param in entries:
                _load_partition(f.get_slice(name), param, name, hf_dir)


def _load_partition(stored, param, name: str, hf_dir: Path) -> None:
    shape = tuple(stored.get_shape())
    if shape != tuple(param.ds_shape):
        raise ConfigError(f"{hf_dir}: {name} has shape {shape}, the model expects {tuple(param.ds_shape)}")
    with torch.no_grad():
        param.ds_tensor.data.copy_(read_partition(stored, param).to(param.ds_tensor.dtype))


def read_partition(stored, param) -> torch.Tensor:
    """This rank's flat slice [rank * size, (rank + 1) * size) of a ZeRO-3 parameter, read from a
    safetensors slice of the whole tensor (whole rows around it), zero-padded to the partition's size."""
    local = torch.zeros(param.ds_tensor.numel(), dtype=_TORCH_DTYPES[stored.get_dtype()])
    start = dist.get_rank(group=param.ds_process_group) * local.numel()
    end = min(start + local.numel(), param.ds_numel)
    if start >= end:
        return local  # padding only
    shape = tuple(stored.get_shape())
    row = int(np.prod(shape[1:], dtype=np.int64)) if len(shape) > 1 else 1
    first, last = start // row, -(-end // row)
    local[:end - start] = stored[first:last].reshape(-1)[start - first * row:end - first * row]
    return local


_TORCH_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "BOOL": torch.bool,
                 "F64": torch.float64, "U8": torch.uint8, "I8": torch.int8, "I16": torch.int16, "I32": torch.int32,
                 "I64": torch.int64}


def load_partitions(params: dict[str, torch.nn.Parameter], path: Path) -> dict[str, torch.Tensor]:
    """Each rank's partition slice (read_partition) of the tensors in one safetensors file that name
    ZeRO-3 parameters in `params`, e.g. a pruning mask: never the whole tensor."""
    with safe_open(path, framework="pt") as f:
        return {name: read_partition(f.get_slice(name), params[name]) for name in f.keys()}


def save_hf_model(engine, hf_config, tokenizer, out_dir: Path, rank: int) -> None:
    """Write the engine's weights as a plain Hugging Face model dir, one parameter at a time (rank 0
    never holds more than a shard). Collective."""
    write_hf_dir(full_fp32_parameters(engine, rank), hf_config, tokenizer, out_dir, rank)


def save_optimizer_file(engine, out_dir: Path, rank: int, tokens_per_step: int) -> None:
    """AdamW's moments, one parameter at a time, into <out_dir>/optimizer/adamw.safetensors (see
    pipeline/optimizer_state.py), with the tokens per step they were gathered at. Collective. Written
    before the weights: config.json, written last, marks the whole dir complete."""
    step = optimizer_step_count(engine)
    entries = ((f"{name}.{key}", value) for name, *values in full_moments(engine, rank)
               for key, value in zip(MOMENTS, values))
    betas = engine.client_optimizer.param_groups[0]["betas"]
    write_optimizer_file(entries, optimizer_metadata(step or 0, betas, tokens_per_step), out_dir, rank)


def write_optimizer_file(entries, metadata: dict[str, str], out_dir: Path, rank: int) -> None:
    """Rank 0 streams (name, tensor) pairs into <out_dir>/optimizer/adamw.safetensors; other ranks
    iterate `entries` (a generator may run collectives; their values are None)."""
    if rank != 0:
        for _ in entries:
            pass
        return
    path = out_dir / OPTIMIZER_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = SafetensorsWriter(path.with_suffix(".tmp"), metadata)
    for name, tensor in entries:
        writer.add(name, tensor)
    writer.close()
    os.replace(path.with_suffix(".tmp"), path)


def remove_optimizer_file(out_dir: Path) -> None:
    """An earlier export's moments must not pass for this export's."""
    (out_dir / OPTIMIZER_FILE).unlink(missing_ok=True)


def write_hf_dir(weights, hf_config, tokenizer, out_dir: Path, rank: int) -> None:
    """Rank 0 writes the model dir from `weights`, (HF name, tensor) pairs; every rank iterates them (a
    generator may run collectives; other ranks' values are None) and ends with a barrier."""
    if rank == 0:
        write_hf_files(weights, hf_config, tokenizer, out_dir)
    else:
        for _ in weights:
            pass
    dist.barrier()


class SafetensorsWriter:
    """One safetensors file written a tensor at a time: each tensor's bytes go to disk as it comes,
    after room kept for the JSON header, which is written last and padded with spaces (the format
    allows that). safetensors' own save_file needs every tensor at once and copies them all into
    one buffer (seen as +0.8 GB on rank 0 at the end of a 318M-parameter train stage)."""

    HEADER_ROOM = 256 * 1024  # ~2,000 tensor entries; a fuller shard is closed (has_room)
    DTYPES = {dtype: code for code, dtype in _TORCH_DTYPES.items()}

    def __init__(self, path: Path, metadata: dict[str, str] | None = None):
        self.path = path
        self.file = path.open("wb")
        self.file.seek(8 + self.HEADER_ROOM)
        self.header = {"__metadata__": {"format": "pt", **(metadata or {})}}
        self.data_bytes = 0

    def _entry(self, tensor: torch.Tensor) -> dict:
        size = tensor.numel() * tensor.element_size()
        return {"dtype": self.DTYPES[tensor.dtype], "shape": list(tensor.shape),
                "data_offsets": [self.data_bytes, self.data_bytes + size]}

    def has_room(self, name: str, tensor: torch.Tensor) -> bool:
        return len(json.dumps({**self.header, name: self._entry(tensor)})) <= self.HEADER_ROOM

    def add(self, name: str, tensor: torch.Tensor) -> None:
        if name in self.header:  # its bytes would stay in the file, unreferenced: not a valid file
            raise ValueError(f"{self.path}: tensor {name!r} written twice")
        entry = self._entry(tensor)
        self.file.write(tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy())
        self.header[name] = entry
        self.data_bytes = entry["data_offsets"][1]

    def close(self) -> list[str]:
        """Write the header; the tensor names in the file."""
        header = json.dumps(self.header).encode()
        if len(header) > self.HEADER_ROOM:  # only a single tensor with a name of ~250k characters gets here
            raise ValueError(f"{self.path}: safetensors header of {len(header)} bytes exceeds {self.HEADER_ROOM}")
        self.file.seek(0)
        self.file.write(self.HEADER_ROOM.to_bytes(8, "little"))
        self.file.write(header.ljust(self.HEADER_ROOM, b" "))
        self.file.close()
        return [name for name in self.header if name != "__metadata__"]


def write_hf_files(weights, hf_config, tokenizer, out_dir: Path, max_shard_bytes: int = 2 * 10**9) -> None:
    """`weights`, (HF name, tensor) pairs as they are produced (a layer at a time), as safetensors shards
    of at most `max_shard_bytes` (one larger tensor gets its own) + index + config + tokenizer, which
    ``AutoModelForCausalLM.from_pretrained`` loads. Each tensor is written as it comes: the export never
    holds more than the tensor in hand."""
    out_dir.mkdir(parents=True, exist_ok=True)
    shards, writer, total = [], None, 0
    for name, tensor in weights:
        size = tensor.numel() * tensor.element_size()
        if writer and writer.data_bytes and (writer.data_bytes + size > max_shard_bytes
                                             or not writer.has_room(name, tensor)):
            shards.append((writer.path, writer.close()))
            writer = None
        if writer is None:
            writer = SafetensorsWriter(out_dir / f"model.part{len(shards)}.safetensors")
        writer.add(name, tensor)
        total += size
    if writer or not shards:
        writer = writer or SafetensorsWriter(out_dir / f"model.part{len(shards)}.safetensors")
        shards.append((writer.path, writer.close()))
    # an earlier export into this directory (another shard count) must not survive beside this one:
    # from_pretrained takes model.safetensors before an index, so a stale one would load instead
    written = {path for path, _ in shards}
    for stale in [*out_dir.glob("model*.safetensors"), out_dir / "model.safetensors.index.json"]:
        if stale not in written:
            stale.unlink(missing_ok=True)
    if len(shards) == 1:
        shards[0][0].rename(out_dir / "model.safetensors")
    else:  # the names from_pretrained expects, known once the count is
        weight_map = {}
        for i, (path, names) in enumerate(shards):
            filename = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
            path.rename(out_dir / filename)
            weight_map.update(dict.fromkeys(names, filename))
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (out_dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    tokenizer.save_pretrained(out_dir)
    hf_config.save_pretrained(out_dir)  # last: config.json marks a complete dir (prune stage)
