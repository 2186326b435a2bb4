"""Prune stage: lottery tickets by iterative magnitude pruning with rewinding (Frankle & Carbin, ICLR
2019; rewinding to an early step: Frankle et al., arXiv 1903.01611) for the pipeline's LMs, ZeRO 0-3.

    deepspeed --num_gpus 2 --master_port 29514 --module pipeline.prune --config tiny run.dir=runs/tiny/prune
    # tickets in a grown model: rewinding to step 0 resets to the grown weights (the BERT-ticket setting)
    deepspeed --num_gpus 2 --master_port 29514 --module pipeline.prune --config tiny \\
        train.init_from=runs/tiny/grow/hf prune.rewind_step=0 run.dir=runs/tiny/prune-grown
    # after an interruption: finished rounds are skipped, the interrupted one resumes from its checkpoint
    deepspeed --num_gpus 2 --master_port 29514 --module pipeline.prune --config tiny run.dir=runs/tiny/prune --resume auto

The dense round trains the model (a random init with train.seed, or train.init_from) for train.steps and
keeps its weights at prune.rewind_step. Round r then prunes the prunable weights by magnitude to the
r-th of prune.sparsities (iterative: from round r-1's trained ticket, among its survivors; one_shot:
from the trained dense model), resets the survivors to the rewind weights, and trains them from the
rewind step to train.steps with the mask fixed: a fresh optimizer, the LR schedule and the data order
replayed from the rewind step (as open_lth). Beside each ticket, with the same steps, the controls:
random_prune (the ticket's per-tensor counts at random positions, rewind weights) and random_reinit
(the ticket's mask on a new random init); once per run, dense_rewound: the unpruned model retrained
from the rewind weights the way the rounds are, the dense reference with the rounds' protocol (a
fresh optimizer and schedule restarted mid-warmup alone moved the final loss by 0.1-0.17 in the tiny
benchmark). Pruned weights are exactly zero in every forward and in the fp32 master weights
(engine.WeightMasks).

Outputs in <run>: dense/, dense_rewound/ and round<r>-<arm>/ (train run dirs: metrics, TensorBoard, checkpoints, hf/ =
final weights, start/ = start weights x mask), rewind/ (HF weights at the rewind step), masks/
(round<r>-<arm>.safetensors + .json manifest: densities, strategy, source hash, config hash),
summary.json, summary.md and loss_vs_sparsity.png (pipeline/lottery/report.py).
"""

from __future__ import annotations

import dataclasses
import gc
import hashlib
import shutil
import sys
from pathlib import Path

import yaml

from pipeline import checkpoint
from pipeline.config import Config, ConfigError, parse_stage_args
from pipeline.data.loader import data_start
from pipeline.data.packing import read_meta
from pipeline.engine import WeightMasks, all_reduce_max, end_stage_process, init_distributed, zero_stage
from pipeline.lottery.masks import (
    full_masks,
    load_masks,
    magnitude_masks,
    manifest_path,
    prunable_names,
    random_masks_like,
    save_masks,
)
from pipeline.lottery.report import write_summary
from pipeline.models.hf import HFWeights
from pipeline.preflight import all_ranks_agree
from pipeline.resume import breaking_changes
from pipeline.train import PretrainStage, Trainer, TrainingHalted, stage_flags

# seeds of the controls, apart from the train.seed values a multi-seed benchmark uses for its dense runs
REINIT_SEED_OFFSET = 1_000_003
RANDOM_PRUNE_SEED_OFFSET = 2_000_003


def hf_complete(hf_dir: Path) -> bool:
    """Every rank agrees: config.json is written after the weights (checkpoint.write_hf_files)."""
    return all_reduce_max([float(not (hf_dir / "config.json").exists())])[0] == 0


class SavesWeightsAt(PretrainStage):
    """Writes the weights at one step as an HF dir (collective), once."""
    unread_sections = ("grow", "bench")  # the prune section decides the rounds' masks and start

    def __init__(self, step: int, out_dir: Path):
        self.save_step, self.out_dir = step, out_dir

    def at_step(self, trainer: Trainer, step: int) -> None:
        if step == self.save_step and not hf_complete(self.out_dir):
            checkpoint.save_hf_model(trainer.engine, trainer.engine.module.config, trainer.tokenizer, self.out_dir,
                                     trainer.rank)


class RewoundStage(SavesWeightsAt):
    """Training from the rewind step (its LR schedule and data order replayed, a fresh optimizer) from
    the round's start weights, which it keeps (<round>/start)."""

    def __init__(self, rewind_step: int, run_dir: Path):
        super().__init__(rewind_step, run_dir / "start")

    def first_step(self, config: Config) -> int:
        return self.save_step


class MaskedStage(RewoundStage):
    """A round: a RewoundStage with the round's mask fixed."""

    def __init__(self, rewind_step: int, run_dir: Path, mask_path: Path):
        super().__init__(rewind_step, run_dir)
        self.mask_path = mask_path

    def build_model(self, config: Config, target_config, ds: dict):
        model = super().build_model(config, target_config, ds)
        # under ZeRO-3 each rank reads only the slices of the masks that match its partitions
        masks = (checkpoint.load_partitions(dict(model.named_parameters()), self.mask_path) if zero_stage(ds) == 3
                 else load_masks(self.mask_path))
        self.masks = WeightMasks(model, masks)
        return model

    def before_update(self, engine) -> None:
        self.masks.before_update()


class LotteryRun:
    def __init__(self, config: Config, resume: str | None, overwrite: bool):
        self.config, self.resume, self.overwrite = config, resume, overwrite
        self.run_dir = Path(config.run.dir)
        p, t = config.prune, config.train
        self.rewind_step = round(0.05 * t.steps) if p.rewind_step is None else p.rewind_step
        self.rank, self.world_size = init_distributed()
        self.config_sha256 = hashlib.sha256(config.to_yaml().encode()).hexdigest()
        self.rounds: list[dict] = []
        self.data_start = 0  # set by run(): the dense round's, recorded in the prune run's config.yaml

    def run(self) -> None:
        p = self.config.prune
        with all_ranks_agree("preparing the prune run dir"):
            if self.rank == 0:
                self._prepare_run_dir()
        # every round replays the dense round's data order (from the rewind step on): one start for all,
        # decided once by the dense round's starting model and kept in config.yaml (runs from before
        # data.start read from 0)
        self.data_start = int(yaml.safe_load((self.run_dir / "config.yaml").read_text())["data"].get("start", 0))
        self.train_round("dense", 0, "dense", SavesWeightsAt(self.rewind_step, self.run_dir / "rewind"),
                         self.config.train.init_from, self.config.train.seed)
        if not hf_complete(self.run_dir / "rewind"):
            raise ConfigError(f"{self.run_dir}/rewind (the weights at step {self.rewind_step}) is missing although "
                              f"the dense round finished: start the prune run again with --overwrite")
        if "dense_rewound" in p.control_names():
            self.train_round("dense_rewound", 0, "dense_rewound",
                             RewoundStage(self.rewind_step, self.run_dir / "dense_rewound"),
                             str(self.run_dir / "rewind"), self.config.train.seed)
        for level, sparsity in enumerate(self.config.prune.levels(), 1):
            with all_ranks_agree(f"computing the round {level} masks"):
                if self.rank == 0 and not manifest_path(self.mask_path(level, "ticket")).exists():
                    self._write_masks(level, sparsity)
            for arm in ("ticket", *round_controls(p.control_names())):
                name = f"round{level}-{arm}"
                reinit = arm == "random_reinit"
                self.train_round(name, level, arm, MaskedStage(self.rewind_step, self.run_dir / name,
                                                               self.mask_path(level, arm)),
                                 None if reinit else str(self.run_dir / "rewind"),
                                 self.config.train.seed + REINIT_SEED_OFFSET * reinit)
        with all_ranks_agree("writing the summary"):
            if self.rank == 0:
                write_summary(self.run_dir, self.rounds, self.config)

    def mask_path(self, level: int, arm: str) -> Path:
        return self.run_dir / "masks" / f"round{level}-{arm}.safetensors"

    def _prepare_run_dir(self) -> None:
        saved = self.run_dir / "config.yaml"
        if self.resume is None and not self.overwrite and saved.exists():
            raise ConfigError(f"{self.run_dir} already holds a prune run: pass --resume auto to continue it, "
                              f"--overwrite to replace it, or choose a new run.dir")
        if self.resume == "auto" and saved.exists():  # finished rounds and masks are reused as they are
            changes = breaking_changes(yaml.safe_load(saved.read_text()), self.config.to_dict(),
                                       SavesWeightsAt.unread_sections)
            if changes:
                raise ConfigError(f"the config differs from the one {self.run_dir} was started with, so its finished "
                                  f"rounds and masks would not belong to this run: {'; '.join(changes)}. Revert "
                                  f"these, or pass --resume force (finished rounds and masks are kept as they are)")
        if self.overwrite:  # the rounds' own dirs are cleared by their Trainer (--overwrite)
            for name in ("masks", "rewind"):
                shutil.rmtree(self.run_dir / name, ignore_errors=True)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        start = None
        if self.resume is not None and saved.exists():
            start = str(yaml.safe_load(saved.read_text())["data"].get("start", 0))
        if start is None or not start.isdigit():
            meta = read_meta(Path(self.config.data.output_dir))
            start = str(0 if meta is None else data_start(self.config.data.start, self.config.train.init_from,
                                                          meta["key"], self.config.data.order_seed)[0])
        dataclasses.replace(self.config, data=dataclasses.replace(self.config.data, start=start)).save(saved)

    def _write_masks(self, level: int, sparsity: float) -> None:
        """Rank 0: the round's ticket mask, pruned from the dense model's final weights (round 1, or
        one_shot) or the previous ticket's among its survivors (iterative), and the control masks."""
        p = self.config.prune
        if level == 1 or p.mode == "one_shot":
            weights = HFWeights(self.run_dir / "dense" / "hf")
            previous = full_masks(weights.shapes, prunable_names(weights.shapes, p.include, p.exclude))
        else:
            weights = HFWeights(self.run_dir / f"round{level - 1}-ticket" / "hf")
            previous = load_masks(self.mask_path(level - 1, "ticket"))
        ticket = magnitude_masks(weights.get, previous, sparsity, p.strategy)
        manifest = {"round": level, "target_sparsity": sparsity, "mode": p.mode, "strategy": p.strategy,
                    "rewind_step": self.rewind_step, "source": str(weights.dir),
                    "source_sha256": _files_sha256(weights), "config_sha256": self.config_sha256}
        for arm in round_controls(p.control_names()):
            seed = RANDOM_PRUNE_SEED_OFFSET + 1000 * self.config.train.seed + level  # distinct per (seed, round)
            control = random_masks_like(ticket, seed) if arm == "random_prune" else ticket
            save_masks(self.mask_path(level, arm), control, {**manifest, "arm": arm})
        # the ticket's manifest last: its presence marks the round's masks complete
        save_masks(self.mask_path(level, "ticket"), ticket, {**manifest, "arm": "ticket"})

    def train_round(self, name: str, level: int, arm: str, stage: PretrainStage, init_from: str | None,
                    seed: int) -> None:
        round_dir = self.run_dir / name
        self.rounds.append({"name": name, "round": level, "arm": arm, "dir": str(round_dir)})
        if self.resume is not None and hf_complete(round_dir / "hf"):
            if self.rank == 0:
                print(f"[prune] {name}: finished earlier, skipped", flush=True)
            return
        if self.rank == 0:
            print(f"[prune] {name}: training", flush=True)
        t = PretrainStage().schedule(self.config)  # every round replays the dense round's schedule
        config = dataclasses.replace(self.config, run=dataclasses.replace(self.config.run, dir=str(round_dir)),
                                     data=dataclasses.replace(self.config.data, start=str(self.data_start)),
                                     train=dataclasses.replace(t, init_from=init_from, seed=seed, save_hf=True))
        stage.name = f"prune {name}"
        Trainer(config, self.resume, stage=stage, overwrite=self.overwrite).fit()
        gc.collect()  # the round's engine and model go before the next round builds its own


def round_controls(controls: list[str]) -> list[str]:
    """The controls trained in every round (dense_rewound is trained once)."""
    return [c for c in controls if c != "dense_rewound"]


def _files_sha256(weights: HFWeights) -> str:
    digest = hashlib.sha256()
    for filename in sorted(set(weights.files.values())):
        with open(weights.dir / filename, "rb") as f:
            for block in iter(lambda: f.read(1 << 24), b""):
                digest.update(block)
    return digest.hexdigest()


def main(argv: list[str] | None = None) -> None:
    config, args = parse_stage_args("Find lottery tickets by iterative magnitude pruning with rewinding.", argv,
                                    lambda parser: stage_flags(parser, until_step=False))
    try:
        LotteryRun(config, args.resume, args.overwrite).run()
    except (ConfigError, TrainingHalted) as err:
        sys.exit(f"prune error: {err}")
    end_stage_process()


if __name__ == "__main__":
    main()
