"""Train stage: pretrain (or continue pretraining) a causal LM under DeepSpeed ZeRO.

    # 2 CPU ranks (or GPUs) on one machine
    deepspeed --num_gpus 2 --master_port 29512 --module pipeline.train --config tiny
    # continue the same run after an interruption (exact: same losses as an uninterrupted run)
    deepspeed --num_gpus 2 --master_port 29512 --module pipeline.train --config tiny --resume auto
    # start from given weights (a donor or a grown model), fresh optimizer and step
    deepspeed --num_gpus 2 --master_port 29512 --module pipeline.train --config tiny \\
        train.init_from=runs/tiny/grow/hf run.dir=runs/tiny/grown
    # multi-node: launch/run.sh (hostfile, one command per node) or launch/slurm.sbatch; docs/launching.md

Rank 0 writes <run>/config.yaml, TensorBoard events in <run>/tb, <run>/metrics.jsonl, and at the
end the final weights as a Hugging Face model in <run>/hf.
"""

from __future__ import annotations

import hashlib
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pipeline import __version__, checkpoint
from pipeline.config import Config, ConfigError, TrainConfig, parse_stage_args, schedule_for_start
from pipeline.data.loader import (
    TrainBatches,
    data_start,
    open_samples,
    validation_batches,
    validation_sources,
    write_data_position,
)
from pipeline.data.packing import repetition_report
from pipeline.data.tokenizer import load_tokenizer
from pipeline.downstream import Downstream, model_max_length
from pipeline.downstream import scalars as downstream_scalars
from pipeline.engine import (
    all_reduce_max,
    all_reduce_mean,
    build_engine,
    checkpoint_bytes,
    deepspeed_config,
    end_stage_process,
    fade_in_new_units,
    init_distributed,
    model_construction,
    new_units_fade_in,
    offloads_optimizer,
    optimizer_swap_bytes_to_come,
    param_group_decays,
    peak_memory_gb,
    peak_tflops_per_rank,
    restore_param_group_settings,
    return_freed_tensors_to_the_os,
    single_rank_zero3_note,
    skip_next_update,
    swaps_optimizer_to_disk,
    training_dtype,
    wait_for_device,
    zero_stage,
)
from pipeline.flops import recompute_flops_per_token, training_flops_per_token
from pipeline.metrics import MetricsLogger
from pipeline.models.hf import (
    build_model,
    checkpoint_config,
    enable_activation_checkpointing,
    hf_config,
    shape_of,
    special_token_ids,
)
from pipeline.models.sizes import resolve_shape
from pipeline.optimizer_state import SavedState, batch_change_note, install_saved_state, read_saved_state
from pipeline.preemption import StopRequest
from pipeline.preflight import agreed_value, all_ranks_agree
from pipeline.profiling import StepProfiler
from pipeline.resume import check_disk_space, check_launch, checkpoints_to_hold, prepare_run_dir
from pipeline.throughput import ThroughputMeter


def sample_mean_losses(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """Each sample's mean next-token loss (the loss the model's forward computes, per row). One row at a
    time: an fp32 copy of a whole batch's logits is GBs at a 49k vocabulary and 2048 tokens."""
    return torch.stack([torch.nn.functional.cross_entropy(row[:-1].float(), ids[1:])
                        for row, ids in zip(logits, input_ids)])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class PretrainStage:
    """What the train stage builds and exports; the grow stage swaps in its own (pipeline/grow.py)."""
    name = "train"
    unread_sections = ("grow", "bench", "prune")  # config sections whose changes cannot change this stage's weights

    def setup(self, config: Config) -> None:
        """The stage's own checks of its inputs, on every rank before any data is read (the grow
        stage reads its donor here)."""

    def schedule(self, config: Config) -> TrainConfig:
        return schedule_for_start(config.train, self.saved_optimizer(config) is not None)

    def saved_optimizer(self, config: Config) -> SavedState | None:
        """The optimizer state a fresh run starts from (train.init_optimizer), if its model dir has one."""
        t = config.train
        if t.init_from is None or t.init_optimizer == "fresh":
            return None
        return read_saved_state(t.init_from)

    def first_step(self, config: Config) -> int:
        """Where a fresh run starts: its LR schedule and data order are replayed from this step (the
        prune stage's rounds start at the rewind step)."""
        return 0

    def at_step(self, trainer: "Trainer", step: int) -> None:
        """Called on every rank where a run starts (fresh or resumed) and after each step, before that
        step's checkpoint: the prune stage saves weights here."""

    def before_update(self, engine) -> None:
        """Called on every rank after a step's last backward, before the optimizer update."""

    def build_model(self, config: Config, target_config, ds: dict) -> torch.nn.Module:
        init_from = config.train.init_from
        model_config = target_config if init_from is None else checkpoint_config(init_from)
        if model_config.vocab_size != target_config.vocab_size:
            raise ConfigError(f"train.init_from model has vocab {model_config.vocab_size}, the data has "
                              f"{target_config.vocab_size}: use the tokenizer the model was trained with")
        if init_from and shape_of(model_config) != resolve_shape(config.model):
            raise ConfigError(f"train.init_from holds a {shape_of(model_config)}, the recipe's model section says "
                              f"{resolve_shape(config.model)}: leave the shape to the checkpoint (model.size=null and no other "
                              f"model.* shape keys) or set it to the checkpoint's")
        partitioned = zero_stage(ds) == 3
        with model_construction(ds):
            # under ZeRO-3 each rank reads only its partitions of the checkpoint (checkpoint.load_hf_partitions)
            model = build_model(model_config, None if partitioned else init_from)
        if init_from and partitioned:
            checkpoint.load_hf_partitions(model, Path(init_from))
        if config.model.activation_checkpointing:
            enable_activation_checkpointing(model)
        return model

    def build_engine(self, model: torch.nn.Module, train: TrainConfig, ds: dict, first_step: int = 0):
        return build_engine(model, train, ds, first_step=first_step)

    def reference_losses(self, trainer: "Trainer") -> dict:
        """Losses of other models on the validation batches, logged beside the step-0 val/loss."""
        return {}

    def model_flops_per_token(self, config: Config, vocab_size: int) -> float:
        """The work training needs per token (the MFU numerator and the growth benchmark's accounting)."""
        return training_flops_per_token(resolve_shape(config.model), vocab_size, config.data.seq_len)

    def hardware_flops_per_token(self, config: Config, vocab_size: int) -> float:
        """Model FLOPs plus what activation checkpointing recomputes (the HFU numerator)."""
        flops = self.model_flops_per_token(config, vocab_size)
        if config.model.activation_checkpointing:
            flops += recompute_flops_per_token(resolve_shape(config.model), config.data.seq_len)
        return flops

    def weights_source(self, config: Config) -> str | None:
        """The model dir a fresh run starts from (its data position decides where data.start=auto begins)."""
        return config.train.init_from

    def export(self, trainer: "Trainer") -> None:
        t, hf_dir = trainer.config.train, trainer.run_dir / "hf"
        if t.save_hf:
            trainer.record_data_position(hf_dir)  # before the weights: config.json comes last
            if trainer.rank == 0:
                checkpoint.remove_optimizer_file(hf_dir)
            if t.save_hf_optimizer and trainer.offloaded_optimizer:
                if trainer.rank == 0:  # its states live in DeepSpeed's swap buffers, laid out its own way
                    print(f"[{self.name}] AdamW's moments are not exported: the optimizer is offloaded", flush=True)
            elif t.save_hf_optimizer:
                checkpoint.save_optimizer_file(trainer.engine, hf_dir, trainer.rank, trainer.tokens_per_step)
            checkpoint.save_hf_model(trainer.engine, trainer.engine.module.config, trainer.tokenizer,
                                     hf_dir, trainer.rank)


class TrainingHalted(RuntimeError):
    """The run stopped itself (non-finite losses) after saving a checkpoint; the message says what to do."""


@dataclass
class StepResult:
    loss: float  # mean over ranks and micro-batches
    skipped: bool  # some rank's loss was NaN/inf: no rank updated
    stop: bool  # some rank was asked to stop (SIGTERM/SIGINT)
    data_seconds: float


class Trainer:
    def __init__(self, config: Config, resume: str | None, until_step: int | None = None, stage=None,
                 overwrite: bool = False):
        self.stage = stage or PretrainStage()
        self.config, t = config, self.stage.schedule(config)
        self.schedule = t
        self.until_step = t.steps if until_step is None else min(until_step, t.steps)
        self.rank, self.world_size = init_distributed()
        self.run_dir = Path(config.run.dir)
        self.checkpoint_dir = self.run_dir / "checkpoints"
        # every rank checks its own files (a node may lack them) and all agree before rank 0 touches the run dir
        with all_ranks_agree("the checks before training"):
            self.stage.setup(config)
            # raises on a bad batch triad before any work; NVMe offload (if any) swaps into <run>/nvme
            ds = deepspeed_config(t, self.world_size, resolve_shape(config.model), self.run_dir / "nvme")
            if zero_stage(ds) == 3:
                return_freed_tensors_to_the_os()  # before the model: ZeRO-3's gathers churn the heap
            single_rank_note = single_rank_zero3_note(ds, self.world_size)
            if single_rank_note and self.rank == 0:
                print(f"[{self.stage.name}] note: {single_rank_note}", flush=True)
            saved = self.stage.saved_optimizer(config)
            self.offloaded_optimizer = offloads_optimizer(ds)
            if saved is not None and self.offloaded_optimizer:
                raise ConfigError(f"train.init_from carries AdamW's state ({saved.path}), which the offloaded optimizer "
                                  f"(DeepSpeed's CPU Adam, its own state layout) does not take: set "
                                  f"train.init_optimizer=fresh, or train without offload_optimizer")
            self.train_samples = open_samples(config.data.output_dir, "train")
            self.tokenizer = load_tokenizer(self.train_samples.meta["tokenizer"])
            vocab_size = self.train_samples.meta["vocab_size"]
            if self.train_samples.seq_len != config.data.seq_len:
                raise ConfigError(f"{config.data.output_dir} was packed with seq_len={self.train_samples.seq_len}, "
                                  f"the recipe says data.seq_len={config.data.seq_len}: re-run prepare")
            # eval_batches global batches: the same samples whatever the world size and accumulation split
            validation = open_samples(config.data.output_dir, "validation")
            val_layout = (t.micro_batch_size, t.eval_batches * t.grad_accum_steps, self.rank, self.world_size)
            self.val_batches = validation_batches(validation, *val_layout)
            self.val_sources = validation_sources(validation, *val_layout)  # a mixture's: val/<source>/loss too
            self.target_config = hf_config(resolve_shape(config.model), vocab_size,
                                           special_token_ids(self.tokenizer), config.model.init_std)
            # downstream tasks indexed (unknown names refused) and the corpus tasks written before any training
            self.downstream = (Downstream(config.eval, self.tokenizer, model_max_length(self.target_config, self.tokenizer),
                                          config.data.output_dir, t.seed)
                               if config.eval.interval else None)
            self.resume_from = check_launch(self.run_dir, resume, overwrite, config, self.world_size,
                                            ds["train_batch_size"], self.train_samples.meta["key"],
                                            self.stage.unread_sections)
            if self.resume_from is not None and swaps_optimizer_to_disk(ds) and resume != "force":
                raise ConfigError(
                    "this run's optimizer is offloaded to NVMe/disk, and DeepSpeed (0.19.8) does not restore such a "
                    "run exactly: it copies the swap files back but drops the optimizer sub-groups too small to "
                    "swap (< 1 MiB), and a resumed tiny run drifted 0.05 in loss within 2 steps. Pass --resume force "
                    "to continue anyway")
            # a resumed run keeps the start it was launched with, whatever its starting model's dir says now
            start, why = ((self.resume_from.get("data_start", 0), "the resumed run's")
                          if self.resume_from is not None else
                          data_start(config.data.start, self.stage.weights_source(config),
                                     self.train_samples.meta["key"], config.data.order_seed))
        # each rank read the starting model's record itself: ranks reading different orders would be silent
        self.data_start = agreed_value(start, "where the data order starts (data_position.json)")
        self.batches = TrainBatches(self.train_samples, config.data.order_seed, t.micro_batch_size,
                                    t.grad_accum_steps, self.rank, self.world_size, self.data_start)
        if self.rank == 0 and (self.data_start or self.stage.weights_source(config)):
            print(f"[{self.stage.name}] data order starts at sample {self.data_start:,} ({why})", flush=True)
        # a new world size: ZeRO 1-3 partitions are per rank, so load DeepSpeed's universal form
        self.universal = (self.resume_from is not None and self.resume_from["world_size"] != self.world_size
                          and self.resume_from["zero_stage"] > 0)
        with all_ranks_agree("preparing the run dir"):
            if self.rank == 0:
                prepare_run_dir(self.run_dir, self.resume_from, overwrite, config)
                if self.universal:
                    checkpoint.convert_to_universal(self.checkpoint_dir, checkpoint.latest_tag(self.checkpoint_dir))
        if self.universal:
            ds["checkpoint"] = {"load_universal": True}

        seed_everything(t.seed)  # the same initial weights for the same seed, whatever ran before
        model = self.stage.build_model(config, self.target_config, ds)
        first_step = self.stage.first_step(config)
        self.engine = self.stage.build_engine(model, t, ds, first_step)
        self.dtype = training_dtype(ds)
        with all_ranks_agree("the disk-space check"):
            if self.rank == 0:
                swap = (optimizer_swap_bytes_to_come(self.engine, self.run_dir / "nvme")
                        if swaps_optimizer_to_disk(ds) else 0)
                held = checkpoints_to_hold(t.keep_checkpoints, first_step, t.steps, t.checkpoint_interval)
                check_disk_space(self.run_dir, checkpoint_bytes(self.engine), held, swap)
        self.tokens_per_step = self.engine.train_batch_size() * self.train_samples.seq_len
        if self.rank == 0:
            for line in repetition_report(self.train_samples.meta, t.steps * self.engine.train_batch_size()):
                print(f"[{self.stage.name}] data {line}", flush=True)
        peak_tflops, peak_source = peak_tflops_per_rank(t.peak_tflops, training_dtype(ds))
        if self.rank == 0:
            print(f"[{self.stage.name}] MFU denominator: {peak_tflops:.3g} TFLOPS per rank ({peak_source})", flush=True)
        model_flops_per_token = self.stage.model_flops_per_token(config, vocab_size)
        self.model_flops_per_step = self.tokens_per_step * model_flops_per_token
        self.meter = ThroughputMeter(
            self.tokens_per_step, self.engine.train_batch_size(), self.world_size, model_flops_per_token,
            self.stage.hardware_flops_per_token(config, vocab_size), peak_tflops, t.throughput_warmup_steps)

        self.train_seconds = 0.0  # wall time of training steps so far (not validation or saving), over resumes
        self.progress = self._progress(first_step)
        if self.resume_from is not None:
            decays = param_group_decays(self.engine)
            self.progress = checkpoint.load(self.engine, self.checkpoint_dir, self.rank, self.universal)
            self.train_seconds = self.progress.get("train_seconds", 0.0)
            restore_param_group_settings(self.engine, decays, self.universal)
        saved = self.stage.saved_optimizer(config)
        continued = config.train.continued
        self.new_units_factor = new_units_fade_in(continued.new_units_warmup_steps if continued.enabled else 0)
        if saved is not None:  # moments only on a fresh start (a checkpoint has its own); LR scales always
            lr_scales = config.train.init_optimizer == "auto"
            install_saved_state(self.engine, saved, moments=self.resume_from is None, lr_scales=lr_scales,
                                new_lr_scale=continued.new_units_lr_scale,
                                new_units=self.new_units_factor(self.progress["step"]) < 1)
            if self.rank == 0 and self.resume_from is None:
                print(f"[{self.stage.name}] AdamW starts from {saved.path} (step {saved.step}"
                      f"{', per-coordinate LR scales' if lr_scales and saved.has_lr_scales else ''})", flush=True)
                note = batch_change_note(saved, self.tokens_per_step)
                if note:
                    print(f"[{self.stage.name}] note: {note}", flush=True)
        self.metrics = MetricsLogger(self.run_dir, self.rank == 0, 0 if self.resume_from is None else self.progress["step"])
        self.stop = StopRequest(t.preemption_grace_s)
        self.profiler = StepProfiler(t.profile_step, self.run_dir, self.rank)
        self.skipped_in_a_row = 0

    def _progress(self, step: int) -> dict:
        """What a checkpoint records about the run (DeepSpeed saves none of it); see pipeline/resume.py."""
        return {"step": step, "consumed_samples": step * self.engine.train_batch_size(),
                "consumed_tokens": step * self.tokens_per_step, "model_flops": step * self.model_flops_per_step,
                "train_seconds": self.train_seconds, "world_size": self.world_size,
                "global_batch": self.engine.train_batch_size(), "data_key": self.train_samples.meta["key"],
                "data_start": self.data_start,
                "config": self.config.to_dict(), "config_sha256": hashlib.sha256(self.config.to_yaml().encode()).hexdigest(),
                "pipeline_version": __version__, "stage": self.stage.name,
                "zero_stage": self.engine.zero_optimization_stage()}

    def train_step(self, step: int) -> StepResult:
        """One optimizer step. Before the update, one collective shares the loss, whether any rank saw a
        non-finite loss (then no rank updates) and whether any rank was asked to stop: the step's one
        wait of the host for the device (the losses add up on the device, as float64 in micro-step
        order: the same sum as of their host values)."""
        loss_sum, data_seconds = torch.zeros((), dtype=torch.float64, device=self.engine.device), 0.0
        accum = self.schedule.grad_accum_steps
        for micro_step in range(accum):
            fetch_start = time.perf_counter()
            input_ids = self.on_device(self.batches.batch(step, micro_step))
            data_seconds += time.perf_counter() - fetch_start
            loss = self.engine(input_ids=input_ids, labels=input_ids).loss
            self.engine.backward(loss)
            loss_sum += loss.detach()
            if micro_step == accum - 1:
                local_loss = loss_sum / accum
                mean_loss, nonfinite, stop = all_reduce_mean(
                    [local_loss, (~torch.isfinite(local_loss)).double(), float(self.stop.requested)])
                skip_next_update(self.engine, nonfinite > 0)
                fade_in_new_units(self.engine, self.new_units_factor(step))
                self.stage.before_update(self.engine)
            self.engine.step()  # DeepSpeed applies the update only at the accumulation boundary
        return StepResult(mean_loss, nonfinite > 0, stop > 0, data_seconds)

    def on_device(self, batch: torch.Tensor) -> torch.Tensor:
        """A host batch on the engine's device; to an accelerator from pinned memory, asynchronously (the
        host goes on to the forward while it copies)."""
        if self.engine.device.type == "cpu":
            return batch
        return batch.pin_memory().to(self.engine.device, non_blocking=True)

    @torch.no_grad()
    def validate(self) -> dict:
        """`val/loss` on the validation batches; for a mixture also `val/<source>/loss`, each source's
        samples' mean loss (every sample has the same number of predicted tokens, so the batch loss is
        the mean of its samples' losses)."""
        self.engine.eval()
        total = torch.zeros((), dtype=torch.float64, device=self.engine.device)
        names = [source["name"] for source in self.train_samples.meta.get("sources", [])]
        per_source = torch.zeros(len(names), dtype=torch.float64, device=self.engine.device)
        count = torch.zeros_like(per_source)
        for b, batch in enumerate(self.val_batches):
            input_ids = self.on_device(batch)
            output = self.engine(input_ids=input_ids, labels=input_ids)
            total += output.loss.detach()
            if self.val_sources is not None:
                sample_losses = sample_mean_losses(output.logits, input_ids).double()
                sources = self.val_sources[b].to(self.engine.device)
                per_source.index_add_(0, sources, sample_losses)
                count.index_add_(0, sources, torch.ones_like(sample_losses))
        self.engine.train()
        reduced = all_reduce_mean([total / len(self.val_batches), *per_source, *count])
        sums, counts = reduced[1:1 + len(names)], reduced[1 + len(names):]
        return {"val/loss": reduced[0], **{f"val/{name}/loss": s / c for name, s, c in zip(names, sums, counts) if c}}

    @torch.no_grad()
    def evaluate_downstream(self) -> dict:
        """eval.tasks on the model being trained, through the engine's forward on every rank (so under
        ZeRO-3 each forward gathers its parameters as in training): `eval/<task>/<metric>` scalars."""
        if self.downstream is None:
            return {}
        started = time.perf_counter()
        self.engine.eval()
        results = self.downstream.run(lambda input_ids: self.engine(input_ids=input_ids).logits, self.engine.device)
        self.engine.train()
        return {**downstream_scalars(results), "perf/eval_seconds": time.perf_counter() - started}

    def fit(self) -> None:
        t = self.schedule
        step = self.progress["step"]
        if self.resume_from is None:
            self.log(step, {**self.validate(), **self.evaluate_downstream(),
                            **self.stage.reference_losses(self)})
        self.stage.at_step(self, step)
        while step < self.until_step:
            lr = self.engine.get_lr()[0]  # the LR this step uses (the scheduler advances inside it)
            self.profiler.before_step(step)
            step_start = time.perf_counter()
            result = self.train_step(step)
            logs = (step + 1) % t.log_interval == 0 or step + 1 == t.steps
            if logs:
                wait_for_device()  # a throughput window ends: its last update counted in it (one wait per log)
            step_seconds = time.perf_counter() - step_start
            self.profiler.after_step(step + 1)
            self.meter.record(step_seconds, result.data_seconds)
            self.train_seconds += step_seconds
            step += 1
            self.progress = self._progress(step)
            scalars = {"train/loss": result.loss, "train/lr": lr}
            self.skipped_in_a_row = self.skipped_in_a_row + 1 if result.skipped else 0
            if result.skipped:
                scalars["train/skipped_steps_in_a_row"] = self.skipped_in_a_row
            if logs:  # read back only here: each read waits for the device
                grad_norm = self.engine.get_global_grad_norm()
                if grad_norm is not None:
                    scalars["train/grad_norm"] = float(grad_norm)
                scalars.update(self.meter.window())
                scalars["perf/peak_memory_gb"] = all_reduce_max([peak_memory_gb()])[0]
            if step % t.eval_interval == 0 or step == t.steps:
                scalars.update(self.validate())
            if self.downstream is not None and (step % self.config.eval.interval == 0 or step == t.steps):
                scalars.update(self.evaluate_downstream())
            self.log(step, scalars)
            self.stage.at_step(self, step)
            too_many_skipped = self.skipped_in_a_row > t.max_skipped_steps
            if step % t.checkpoint_interval == 0 or step == self.until_step or result.stop or too_many_skipped:
                checkpoint.save(self.engine, self.checkpoint_dir, self.progress, self.rank, t.keep_checkpoints,
                                self.engine.module.config)
            if too_many_skipped:
                raise TrainingHalted(f"the loss was NaN/inf on {self.skipped_in_a_row} steps in a row (up to step {step}; "
                                     f"train.max_skipped_steps={t.max_skipped_steps}); those steps were skipped and "
                                     f"checkpoint step{step} holds the last good weights. Lower train.lr or inspect "
                                     f"the data, then --resume auto (or --resume force after a config change)")
            if result.stop:
                if self.rank == 0:
                    print(f"[{self.stage.name}] stop requested (SIGTERM/SIGINT): checkpoint step{step} written; "
                          f"continue with --resume auto", flush=True)
                break
        self.stop.close()
        self.profiler.close()
        if step < t.steps:
            if self.rank == 0 and step == self.until_step:
                print(f"[{self.stage.name}] stopped at step {step} (--until-step); continue with --resume auto",
                      flush=True)
        else:
            self.stage.export(self)
        self.metrics.close()

    def record_data_position(self, model_dir: Path) -> None:
        """Rank 0 notes in an exported model dir where this run's data order ended."""
        if self.rank == 0:
            model_dir.mkdir(parents=True, exist_ok=True)
            write_data_position(model_dir, self.train_samples.meta["key"], self.config.data.order_seed,
                                self.data_start + self.progress["consumed_samples"])

    def log(self, step: int, scalars: dict) -> None:
        t = self.schedule
        # cumulative counters on every record, so any point of a curve can be placed on a FLOPs or time axis
        self.metrics.log(step, {**scalars, "progress/consumed_tokens": step * self.tokens_per_step,
                                "progress/model_flops": step * self.model_flops_per_step,
                                "perf/train_seconds": self.train_seconds})
        if self.rank == 0 and ("perf/peak_memory_gb" in scalars or "val/loss" in scalars or "perf/eval_seconds" in scalars
                               or step == 0):
            shown = " ".join(f"{k.split('/')[-1] if k.startswith('perf/') else k.replace('/', '_')}={v:.4g}"
                             for k, v in scalars.items() if k.split("/")[0] in ("train", "val", "eval") or k in CONSOLE_PERF)
            print(f"[{self.stage.name}] step {step}/{t.steps} {shown}", flush=True)


CONSOLE_PERF = ("perf/tokens_per_s", "perf/step_time_s", "perf/mfu", "perf/peak_memory_gb")  # the rest: TensorBoard


def stage_flags(parser, until_step: bool = True) -> None:
    parser.add_argument("--resume", choices=["auto", "force"], default=None,
                        help="continue from the newest checkpoint in <run.dir>/checkpoints (fresh start if none); "
                             "'force' accepts a changed config (pipeline/resume.py)")
    parser.add_argument("--overwrite", action="store_true",
                        help="start a new run in a run.dir that holds one (its checkpoints and logs are removed)")
    if until_step:
        parser.add_argument("--until-step", dest="until_step", type=int, default=None,
                            help="stop after this step with a checkpoint (time-limited jobs); the LR schedule "
                                 "still spans train.steps")


def main(argv: list[str] | None = None) -> None:
    config, args = parse_stage_args(
        "Pretrain a causal LM under DeepSpeed.", argv,
        stage_flags)
    try:
        Trainer(config, args.resume, args.until_step, overwrite=args.overwrite).fit()
    except (ConfigError, TrainingHalted) as err:
        sys.exit(f"train error: {err}")
    end_stage_process()


if __name__ == "__main__":
    main()
