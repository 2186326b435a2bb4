"""Grow stage: learn a LiGO growth operator from a small pretrained donor to the target shape, then
write the grown target as a plain Hugging Face checkpoint for the train stage.

    deepspeed --num_gpus 2 --master_port 29513 --module pipeline.grow --config tiny \\
        grow.donor=runs/tiny/donor/hf run.dir=runs/tiny/grow
    # the start alone, no operator training: by default the lossless one (the donor's function at the
    # target's shape); or a heuristic, e.g. grow.depth_init=stack grow.width_init=copy
    python -m pipeline.grow --config tiny grow.donor=runs/tiny/donor/hf grow.steps=0 run.dir=runs/tiny/lossless
    # then continue pretraining the grown model
    deepspeed --num_gpus 2 --master_port 29513 --module pipeline.train --config tiny \\
        train.init_from=runs/tiny/grow/hf run.dir=runs/tiny/grown

The target shape is the recipe's `model` section; the donor's tokenizer must be the data's. Only the
operator is trained (the donor is frozen), with the train section's batch / DeepSpeed settings and the
grow section's steps and learning rate (divided per coefficient by its fan-in). The donor's own
validation loss is measured on the same batches and reported beside the grown model's. Checkpoints
and `--resume auto` work as in the train stage.
Outputs in <run>: hf/ (grown model), operator.pt + operator.json (the learned operator), report.json.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModelForCausalLM

from pipeline import checkpoint
from pipeline.config import Config, ConfigError, TrainConfig, parse_stage_args
from pipeline.data.packing import adds_bos, read_meta
from pipeline.data.tokenizer import load_tokenizer
from pipeline.downstream import scalars as downstream_scalars
from pipeline.engine import (
    all_reduce_mean,
    build_engine,
    end_stage_process,
    full_fp32_parameters,
    partitioned_construction,
    set_master_weights,
    trainable_parameters_per_rank,
)
from pipeline.flops import recompute_flops_per_token, training_flops_per_token
from pipeline.growth.adapters import adapter_for
from pipeline.growth.model import GrownModel
from pipeline.growth.moments import MomentMap, exactness_problem
from pipeline.growth.operator import (
    GrowthOperator,
    GrowthPlan,
    OperatorInit,
    check_plan,
    generation_flops,
    grown_config,
    lossy_choices,
    operator_init,
)
from pipeline.metrics import read_metrics
from pipeline.models.hf import shape_of
from pipeline.models.sizes import resolve_shape
from pipeline.optimizer_state import MOMENTS, OPTIMIZER_FILE, read_saved_state
from pipeline.preflight import all_ranks_agree
from pipeline.train import PretrainStage, Trainer, TrainingHalted, stage_flags


def read_donor(path: str):
    donor_dir = Path(path)
    if not (donor_dir / "config.json").exists():
        raise ConfigError(f"grow.donor={path!r} is not an HF model dir (no config.json); point it at a donor's "
                          f"hf/ directory, e.g. runs/tiny/donor/hf")
    config = AutoConfig.from_pretrained(donor_dir)
    adapter = adapter_for(config)  # raises for unsupported architectures
    shards = sorted(donor_dir.glob("*.safetensors"))
    if not shards:
        raise ConfigError(f"{donor_dir} has no .safetensors weights")
    return config, adapter, shards


def check_donor_tokenizer(donor_dir: str, donor_vocab: int, data_dir: str) -> None:
    """The data must be the donor's language: its vocabulary, and BOS at document starts iff the donor's
    tokenizer puts one there (a LLaMA-family donor never saw a document without it)."""
    meta = read_meta(Path(data_dir))
    if meta is None:
        return  # the trainer reports missing data
    if donor_vocab != meta["vocab_size"]:
        raise ConfigError(f"donor vocab {donor_vocab} != data vocab {meta['vocab_size']}: "
                          f"prepare the data with the donor's tokenizer")
    if not (Path(donor_dir) / "tokenizer_config.json").exists():
        return
    donor_tokenizer = load_tokenizer(donor_dir)
    if donor_tokenizer.get_vocab() != load_tokenizer(meta["tokenizer"]).get_vocab():
        raise ConfigError(f"the donor's tokenizer ({donor_dir}) differs from the data's ({meta['tokenizer']}): "
                          f"prepare the data with data.tokenizer={donor_dir}")
    donor_bos, data_bos = adds_bos(donor_tokenizer), meta.get("bos", False)
    if donor_bos != data_bos:
        raise ConfigError(f"the donor's tokenizer ({donor_dir}) {'starts' if donor_bos else 'does not start'} every "
                          f"text with BOS but {data_dir} was packed {'with' if data_bos else 'without'} it: prepare "
                          f"the data again into a new data.output_dir with data.tokenizer={donor_dir}")


class GrowStage(PretrainStage):
    """The train stage's loop with the growth operator as the trained model (first_step, at_step and
    before_update stay the train stage's no-ops)."""
    name = "grow"
    unread_sections = ("bench", "prune")

    def __init__(self):
        self.started = time.time()

    def setup(self, config: Config) -> None:
        g = config.grow
        if g.donor is None:
            raise ConfigError("grow.donor is not set: give the donor's HF model dir (grow.donor=runs/tiny/donor/hf)")
        self.donor_config, self.adapter, self.donor_shards = read_donor(g.donor)
        self.plan = GrowthPlan(shape_of(self.donor_config), resolve_shape(config.model), g.depth_init,
                               g.width_init, config.train.seed, g.depth_coefficients, g.new_layers)
        check_plan(self.plan, self.adapter)
        check_donor_tokenizer(g.donor, self.donor_config.vocab_size, config.data.output_dir)
        if int(os.environ.get("RANK", "0")) == 0:
            print(f"[grow] donor {self.plan.donor} -> target {self.plan.target}", flush=True)
            for note in lossy_choices(self.plan):
                print(f"[grow] warning: grow.{note}", flush=True)
        self.recompute = g.recompute
        if self.recompute == "auto":
            self.recompute = "activations" if config.model.activation_checkpointing else "weights"

    def weights_source(self, config: Config) -> str | None:
        return config.grow.donor

    def saved_optimizer(self, config: Config):
        return None  # the operator's AdamW starts empty

    def schedule(self, config: Config) -> TrainConfig:
        g = config.grow
        return dataclasses.replace(config.train, steps=g.steps, lr=g.lr, warmup_steps=min(g.warmup_steps, g.steps),
                                   moment_warmup_steps=0, min_lr_ratio=g.min_lr_ratio, weight_decay=g.weight_decay,
                                   init_from=None,
                                   eval_interval=min(config.train.eval_interval, max(g.steps, 1)))

    def _operator(self, init: OperatorInit | None = None) -> GrowthOperator:
        state = {}
        for shard in self.donor_shards:
            state.update(load_file(shard))
        donor_globals, donor_layers = self.adapter.to_canonical(state, self.plan.donor.layers)
        del state  # the canonical dicts hold the donor now
        return GrowthOperator(self.plan, self.adapter, donor_globals, donor_layers, init)

    def build_model(self, config: Config, target_config, ds: dict) -> torch.nn.Module:
        init = operator_init(self.plan, self.adapter)  # fp32 on the CPU: not inside zero.Init (see GrowthOperator)
        with partitioned_construction(ds):
            operator = self._operator(init)
        # Outside the partitioning context: the target skeleton lives on the meta device. It keeps the
        # donor's hyperparameters (RoPE base, norm eps, activation, tying) with the new shape, so growth
        # can preserve the donor's function.
        return GrownModel(operator, grown_config(self.donor_config, self.plan, self.adapter), self.recompute)

    def build_engine(self, model: GrownModel, train: TrainConfig, ds: dict, first_step: int = 0):
        """The operator's optimizer: each parameter's peak LR is grow.lr divided by its fan-in (see
        GrowthOperator.fan_in), so one step changes the generated weights by about the same relative
        amount at any size. Under bf16 the fp32 master weights get the exact initial values."""
        groups: dict[tuple[int, float], list] = {}
        for name, param in model.named_parameters():
            if param.requires_grad:
                fan_in = model.operator.fan_in(name.removeprefix("operator."))
                matrix = len(getattr(param, "ds_shape", param.shape)) >= 2
                groups.setdefault((fan_in, train.weight_decay if matrix else 0.0), []).append(param)
        engine = build_engine(model, train, ds, [{"params": params, "lr": train.lr / fan_in, "weight_decay": decay}
                                                 for (fan_in, decay), params in sorted(groups.items())], first_step)
        model.buffers_to(engine.device)
        if ds.get("bf16", {}).get("enabled"):
            set_master_weights(engine, ((f"operator.{name}", value)
                                        for name, value in operator_init(self.plan, self.adapter).named_values()))
        return engine

    @torch.no_grad()
    def reference_losses(self, trainer: Trainer) -> dict:
        """The donor's own validation loss on the same batches, in the training precision: what growth
        should keep. Every rank evaluates its share with a plain copy of the (small) donor."""
        donor = AutoModelForCausalLM.from_pretrained(trainer.config.grow.donor, dtype=trainer.dtype)
        donor = donor.to(trainer.engine.device).eval()
        losses = [donor(input_ids=b.to(trainer.engine.device), labels=b.to(trainer.engine.device)).loss.item()
                  for b in trainer.val_batches]
        references = {"val/donor_loss": all_reduce_mean([sum(losses) / len(losses)])[0]}
        if trainer.downstream is not None:  # eval/<task>/donor_<metric>, beside the grown model's
            results = trainer.downstream.run(lambda input_ids: donor(input_ids=input_ids).logits, trainer.engine.device)
            references.update(downstream_scalars(results, of="donor_"))
        return references

    def _generation_flops_per_token(self, config: Config, vocab_size: int) -> float:
        """Generating the whole target once, spread over the tokens of one micro-batch: every rank
        generates every weight for each of its micro-batches, whatever the batch size."""
        tokens_per_micro_batch = config.train.micro_batch_size * config.data.seq_len
        return generation_flops(self.plan, self.adapter, vocab_size) / tokens_per_micro_batch

    def model_flops_per_token(self, config: Config, vocab_size: int) -> float:
        """The target's forward and backward plus the work growth needs: generating every weight in
        forward and back-propagating through the generation (twice its forward cost)."""
        flops = training_flops_per_token(self.plan.target, vocab_size, config.data.seq_len)
        return flops + 3 * self._generation_flops_per_token(config, vocab_size)

    def hardware_flops_per_token(self, config: Config, vocab_size: int) -> float:
        """Model FLOPs plus what is recomputed to save memory (pipeline/growth/model.py): `activations`
        re-runs whole modules, generation included; `weights` generates every weight twice more (for the
        module's backward, and with grad when backward reaches the operator)."""
        flops = self.model_flops_per_token(config, vocab_size)
        if self.recompute == "activations":
            flops += recompute_flops_per_token(self.plan.target, config.data.seq_len)
        regenerations = {"none": 0, "activations": 1, "weights": 2}[self.recompute]
        return flops + regenerations * self._generation_flops_per_token(config, vocab_size)

    def export(self, trainer: Trainer) -> None:
        """Rank 0 rebuilds the operator in fp32 on CPU from the donor files and the trained coefficients
        (the optimizer's fp32 masters: under bf16 the engine's copies are rounded), then streams the
        target, generated layer by layer, into <run>/hf's shards (never the whole target in memory)."""
        per_rank = trainable_parameters_per_rank(trainer.engine)
        with all_ranks_agree("rebuilding the operator for the export"):  # rank 0 reads the donor files
            operator = self._operator() if trainer.rank == 0 else None
        trainable = {name: p for name, p in operator.named_parameters() if p.requires_grad} if operator else {}
        unknown = []
        # one gathered parameter at a time, straight into the rebuilt operator (collective: every rank)
        for name, value in full_fp32_parameters(trainer.engine, trainer.rank, trainable_only=True):
            if value is not None:
                target = trainable.pop(name.removeprefix("operator."), None)
                if target is None:
                    unknown.append(name)
                else:
                    target.data.copy_(value)
        with all_ranks_agree("matching the trained parameters to the rebuilt operator"):
            if unknown or trainable:
                raise RuntimeError(f"the rebuilt operator lacks {unknown} and has untrained {sorted(trainable)}")
        weights = iter(())
        if trainer.rank == 0:
            learned = {f"operator.{name}": p.detach() for name, p in operator.named_parameters() if p.requires_grad}
            torch.save(learned, trainer.run_dir / "operator.pt")
            operator_parameters = sum(v.numel() for v in learned.values())
            (trainer.run_dir / "operator.json").write_text(json.dumps(
                {"plan": dataclasses.asdict(self.plan), "donor": trainer.config.grow.donor}, indent=2))
            weights = operator.materialize()  # generated a layer at a time as the writer takes them
        trainer.record_data_position(trainer.run_dir / "hf")  # before the weights: config.json comes last
        if trainer.rank == 0:
            self._write_grown_moments(trainer)
        checkpoint.write_hf_dir(weights, trainer.engine.module.config, trainer.tokenizer, trainer.run_dir / "hf",
                                trainer.rank)
        if trainer.rank == 0:
            self._write_report(trainer, operator_parameters, per_rank)

    def _write_grown_moments(self, trainer: Trainer) -> None:
        """Rank 0: the donor's AdamW moments mapped into the grown model with its per-coordinate LR scales
        (pipeline/growth/moments.py), where the donor dir carries them and the map is exact."""
        hf_dir = trainer.run_dir / "hf"
        checkpoint.remove_optimizer_file(hf_dir)
        saved = read_saved_state(trainer.config.grow.donor)
        init = operator_init(self.plan, self.adapter)
        problem = (f"{trainer.config.grow.donor} has no {OPTIMIZER_FILE}" if saved is None
                   else exactness_problem(self.plan, self.adapter, init, trainer.schedule.steps))
        if problem:
            print(f"[grow] the donor's AdamW moments are not carried ({problem}); the train stage warms them up "
                  f"(train.continued.moment_warmup_steps)", flush=True)
            return
        donor = {key: {} for key in MOMENTS}
        for name in sorted(saved.names):
            param, _, key = name.rpartition(".")
            if key in MOMENTS:
                donor[key][param] = saved.get(name)
        canonical = {key: self.adapter.to_canonical(tensors, self.plan.donor.layers, moments=True)
                     for key, tensors in donor.items()}
        del donor
        moment_map = MomentMap(self.plan, self.adapter, init)
        globals_ = {key: canon[0] for key, canon in canonical.items()}
        layers = {key: canon[1] for key, canon in canonical.items()}

        def entries():
            for key in canonical["exp_avg"][0]:
                for kind, value in moment_map.global_tensors(key, globals_, self.plan.target.max_positions).items():
                    yield f"{self.adapter.global_name(key)}.{kind}", value
            for i in range(self.plan.target.layers):
                mapped = moment_map.layer_tensors(i, layers)
                prefix = self.adapter.layer_prefix(i)
                for kind in ("exp_avg", "exp_avg_sq", "lr_scale", "new"):
                    for name, value in self.adapter.layer_to_hf({k: v[kind] for k, v in mapped.items()}).items():
                        yield f"{prefix}{name}.{kind}", value

        with safe_open(saved.path, framework="pt") as f:
            metadata = f.metadata()
        checkpoint.write_optimizer_file(entries(), metadata, hf_dir, rank=0)
        print(f"[grow] the donor's AdamW moments (step {saved.step}) mapped exactly into {hf_dir / OPTIMIZER_FILE}, "
              f"with per-coordinate LR scales", flush=True)

    def _write_report(self, trainer: Trainer, operator_params: int, per_rank: list[int]) -> None:
        records = read_metrics(trainer.run_dir)
        val = [(r["step"], r["val/loss"]) for r in records if "val/loss" in r]
        donor = next(r["val/donor_loss"] for r in records if "val/donor_loss" in r)
        report = {"donor": trainer.config.grow.donor, "plan": dataclasses.asdict(self.plan),
                  "operator_parameters": operator_params,
                  "operator_parameters_per_rank": per_rank, "operator_steps": trainer.schedule.steps,
                  "val_loss_donor": donor, "val_loss_heuristic_init": val[0][1],
                  "val_loss_after_operator_training": val[-1][1],
                  "val_curve": val, "seconds": round(time.time() - self.started, 1)}
        evaluated = [r for r in records if any(k.startswith("eval/") for k in r)]
        if evaluated:  # downstream tasks: the donor, the grown model at step 0 and after the operator steps
            def tasks(record: dict, of: str = "") -> dict:  # "eval/<task>/<of><metric>" -> "<task>/<metric>"
                return {f"{k.split('/')[1]}/{k.split('/')[2][len(of):]}": v for k, v in record.items()
                        if k.startswith("eval/") and k.split("/")[2].startswith("donor_") == bool(of)}
            report["downstream"] = {"donor": tasks(evaluated[0], "donor_"), "heuristic_init": tasks(evaluated[0]),
                                    "after_operator_training": tasks(evaluated[-1])}
        (trainer.run_dir / "report.json").write_text(json.dumps(report, indent=2))
        print(f"[grow] validation loss: donor {donor:.4f}, grown at step 0 ({self.plan.depth_init}+"
              f"{self.plan.width_init}) {val[0][1]:.4f} ({val[0][1] - donor:+.4f}) -> after {trainer.schedule.steps} "
              f"operator steps {val[-1][1]:.4f}; grown model in {trainer.run_dir / 'hf'}", flush=True)
        for name, donor_value in report.get("downstream", {}).get("donor", {}).items():
            d = report["downstream"]
            print(f"[grow] {name}: donor {donor_value:.4g}, grown at step 0 {d['heuristic_init'][name]:.4g} -> after "
                  f"the operator steps {d['after_operator_training'][name]:.4g}", flush=True)


def main(argv: list[str] | None = None) -> None:
    config, args = parse_stage_args("Grow a pretrained donor into the target shape with LiGO.", argv, stage_flags)
    try:
        Trainer(config, args.resume, args.until_step, GrowStage(), overwrite=args.overwrite).fit()
    except (ConfigError, TrainingHalted) as err:
        sys.exit(f"grow error: {err}")
    end_stage_process()


if __name__ == "__main__":
    main()
