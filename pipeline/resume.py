"""Whether a launch may start or resume in its run directory, decided before any expensive work.

    fresh start   refused over a directory that holds checkpoints, unless --overwrite (which then
                  removes the old run's checkpoints, logs and exports; nothing else is touched)
    --resume auto continues the newest complete checkpoint. Refused if the config changed in a way
                  that breaks an exact continuation (anything but the keys below), the data
                  directory was re-prepared from other inputs, or the global batch changed. Another
                  world size is fine: ZeRO 1-3 checkpoints go through DeepSpeed's universal format
                  (pipeline/checkpoint.py), the data order continues by global sample index
    --resume force  continues despite config changes (the new config is recorded; the old one is
                  kept as config.step<N>.yaml), still refusing changed data and world size

The comparison is against the config the checkpoint was *written* with (its progress.json), not the
run's config.yaml, which a user may have edited.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from pipeline import checkpoint
from pipeline.config import Config, ConfigError

# Changing these does not change the sequence of weights: where the run lives (a moved run dir resumes),
# logging, evaluation, saving, throughput accounting, the non-finite-loss limit. Neither do the config
# sections a stage does not read (its `unread_sections`: `grow` and `prune` for the train stage, `bench` for all),
# nor downstream evaluation (the `eval` section).
HARMLESS_KEYS = {"run.dir", "train.log_interval", "train.eval_interval", "train.eval_batches", "train.checkpoint_interval",
                 "train.keep_checkpoints", "train.throughput_warmup_steps", "train.peak_tflops", "train.profile_step",
                 "train.save_hf", "train.save_hf_optimizer",
                 "train.preemption_grace_s", "train.max_skipped_steps", "data.num_proc",
                 # a resumed run keeps the data start it was launched with (its checkpoint's progress), and
                 # how prepare divided .txt files shows in the packed data's key, which resume checks
                 "data.start", "data.txt_documents"}
# The per-rank split of a step's batch may change as long as the global batch (the data order) does not.
BATCH_SPLIT_KEYS = {"train.micro_batch_size", "train.grad_accum_steps", "train.global_batch_size"}
RUN_FILES = ("checkpoints", "tb", "metrics.jsonl", "hf", "config.yaml", "operator.pt", "operator.json", "report.json",
             "start", "nvme")


def flatten(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat


def breaking_changes(saved: dict, current: dict, unread_sections: tuple[str, ...]) -> list[str]:
    """`key: old -> new` for every change that breaks an exact continuation of a stage that does not
    read `unread_sections`. A key the saved config lacks (added to the pipeline after it was written)
    counts as its default: the code that wrote it behaved as the default does."""
    old, new = {**flatten(Config().to_dict()), **_behaviour_before_keys(saved), **flatten(saved)}, flatten(current)
    unread_keys = _pretrained_start_keys(old, new)
    changed = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k) and k not in HARMLESS_KEYS
                     and k.split(".")[0] not in (*unread_sections, "eval") and not k.startswith(unread_keys))
    if not any(k not in BATCH_SPLIT_KEYS for k in changed):
        changed = []  # only the per-rank split changed: the caller checks the global batch
    return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in changed]


def _pretrained_start_keys(old: dict, new: dict) -> tuple[str, ...]:
    """How a pretrained start is continued (its schedule, its optimizer state) is never read by a run
    from random initialization, so a benchmark may change it without invalidating its scratch runs."""
    if old.get("train.init_from") is None and new.get("train.init_from") is None:
        return ("train.continued.", "train.init_optimizer")
    return ()


def _behaviour_before_keys(saved: dict) -> dict:
    """Keys whose default differs from how the pipeline behaved before they existed: a run from
    train.init_from written before train.continued used the recipe's schedule as a random init does;
    one written before train.continued.new_units_warmup_steps trained new units at once."""
    train = saved.get("train", {})
    if train.get("init_from") and "continued" not in train:
        return {"train.continued.enabled": False}
    if "continued" in train and "new_units_warmup_steps" not in train["continued"]:
        return {"train.continued.new_units_warmup_steps": 0}
    return {}


def check_launch(run_dir: Path, mode: str | None, overwrite: bool, config: Config, world_size: int,
                 global_batch: int, data_key: str, unread_sections: tuple[str, ...]) -> dict | None:
    """Returns the progress of the checkpoint to resume from, or None for a fresh start. Read-only:
    every rank runs it; `prepare_run_dir` (rank 0) acts on the decision."""
    _check_writable(run_dir)
    tag = checkpoint.latest_tag(run_dir / "checkpoints")
    if mode is None:
        if tag is not None and not overwrite:
            raise ConfigError(f"{run_dir} already holds a run: pass --resume auto to continue it, --overwrite to "
                              f"replace it, or choose a new run.dir")
        return None
    if overwrite:
        raise ConfigError("--overwrite starts a new run; it cannot be combined with --resume")
    if tag is None:
        return None
    checkpoint.check_files(run_dir / "checkpoints", tag)
    progress = checkpoint.read_progress(run_dir / "checkpoints", tag)
    where = run_dir / "checkpoints" / tag
    if progress["global_batch"] != global_batch:
        raise ConfigError(f"{where} was trained with a global batch of {progress['global_batch']} samples, this "
                          f"launch has {global_batch}: keep micro_batch_size x grad_accum_steps x ranks equal (e.g. "
                          f"double grad_accum_steps when halving the ranks)")
    if progress["data_key"] != data_key:
        raise ConfigError(f"{config.data.output_dir} was re-prepared from other inputs since {where} was written: "
                          f"the data order would not continue; restore the data or start a new run.dir")
    changes = breaking_changes(progress["config"], config.to_dict(), unread_sections)
    if changes and mode != "force":
        raise ConfigError(f"the config differs from the one {where} was written with, so the run would not "
                          f"continue exactly: {'; '.join(changes)}. Revert these, or pass --resume force")
    return progress


def _check_writable(run_dir: Path) -> None:
    existing = run_dir
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"run.dir={run_dir}: {existing} is a file, not a directory; choose another run.dir")
    if not os.access(existing, os.W_OK):
        raise ConfigError(f"run.dir={run_dir}: {existing} is not writable; choose another run.dir or fix permissions")


def checkpoints_to_hold(keep: int, first_step: int, steps: int, interval: int) -> int:
    """The most new checkpoints of a run needing disk at once: every one still to be written (each
    interval and the end), at most the `keep` newest plus the one being written (keep_checkpoints=0
    keeps all)."""
    to_write = max(1, steps // interval - first_step // interval + (1 if steps % interval else 0))
    return min(keep + 1, to_write) if keep else to_write


def check_disk_space(run_dir: Path, checkpoint_bytes: int, checkpoints: int, swap_bytes: int = 0) -> None:
    """Refuse to start when the disk cannot hold `checkpoints` checkpoints (checkpoints_to_hold) plus what
    an optimizer offloaded to NVMe/disk will still write into its swap files."""
    needed = checkpoint_bytes * checkpoints + swap_bytes
    free = shutil.disk_usage(run_dir).free
    if free < needed:
        swap = f" and {swap_bytes / 1e9:.2f} GB of optimizer swap files" if swap_bytes else ""
        raise ConfigError(f"{run_dir} has {free / 1e9:.2f} GB free; {checkpoints} checkpoints of ~"
                          f"{checkpoint_bytes / 1e9:.2f} GB{swap} need {needed / 1e9:.2f} GB: free space, lower "
                          f"train.keep_checkpoints, or choose a run.dir on a larger disk")


def prepare_run_dir(run_dir: Path, resuming: dict | None, overwrite: bool, config: Config) -> None:
    """Rank 0, after `check_launch` accepted the launch: clear an overwritten run, record the config."""
    if overwrite:
        for name in RUN_FILES:
            path = run_dir / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
    run_dir.mkdir(parents=True, exist_ok=True)
    saved = run_dir / "config.yaml"
    if resuming is not None and saved.exists() and saved.read_text() != config.to_yaml():
        saved.rename(run_dir / f"config.step{resuming['step']}.yaml")  # the config the run had until then
    config.save(saved)
