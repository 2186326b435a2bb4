"""Growth benchmark: does growing save compute? FLOPs and wall time to reach the scratch model's quality.

    python -m pipeline.bench growth --config bench-growth                  # 1 seed, ~29-30 min on 2 CPU cores
    python -m pipeline.bench growth --config bench-growth --seeds 3        # for reporting (~90 min)
    python -m pipeline.bench growth --config bench-growth --ranks 8 bench.arms=scratch,stack+copy,ligo

For every seed it pretrains a donor (`bench.donor_size`, `bench.donor_steps`), then trains the target
(the `model` section) for train.steps steps in every arm, on the same data order, through the real
stages (pipeline.train, pipeline.grow), each launched as its own job. Arms (`bench.arms`):

    scratch                 the target from random initialization: the reference
    <depth>+<width>         a start without operator training (grow.steps=0): identity+lossless (the
                            donor's function at any shape), stack+copy (G_stack depth, HyperCloning
                            width), interpolate+copy, stack+aki (bert2BERT-AKI width)
    ligo                    LiGO started from `bench.ligo_init` (default: the best heuristic arm),
                            trained grow.steps steps, then the target is trained
    ligo-from-<depth>+<width>   LiGO from that start (several may run side by side)
    ligo-official           LiGO from the official code's init (noisy_stack depth, random width)
    ligo-untrained-donor    the control: `ligo` from a randomly initialized donor of the same shape;
                            a saving here would come from the operator's structure, not knowledge
    donor-continued         (optional) the donor trained further for the FLOPs of the target's training
                            (fresh warmup and schedule): is the larger model worth its cost at all?

Seed s sets train.seed and data.order_seed (recipe value + s) for every stage of that seed.
Outputs in --out: seed<s>/<arm>/{grow,train} run dirs with their logs, results.json (every curve and
number), results.md (the table) and loss_vs_flops.png / loss_vs_time.png. Accounting:
pipeline/bench/growth_report.py. Re-running the same command reuses finished stages.
"""

from __future__ import annotations

import datetime
import json
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from pipeline.bench.growth_report import Curve, crossing, markdown_table, plot_curves, seed_result, summarize
from pipeline.bench.jobs import run_stage_job, seeded_bench_arguments
from pipeline.config import Config, ConfigError, load_config
from pipeline.data.packing import read_meta
from pipeline.data.tokenizer import load_tokenizer
from pipeline.flops import training_flops_per_token
from pipeline.grow import GrowStage
from pipeline.growth.schemes import DEPTH_SCHEMES, WIDTH_SCHEMES
from pipeline.metrics import read_metrics
from pipeline.models.hf import save_initialized_model
from pipeline.models.sizes import SHAPE_FIELDS, resolve_shape
from pipeline.resume import breaking_changes
from pipeline.train import PretrainStage

OFFICIAL_INIT = "noisy_stack+random"  # VITA-Group/LiGO's --fuse_init_scheme stackbert_noisy rand


@dataclass(frozen=True)
class Arm:
    name: str
    init: str | None = None  # depth+width of the grow stage; None: from scratch
    operator_steps: bool = False  # train the operator (grow.steps) or use the heuristic as is
    untrained_donor: bool = False
    continues_donor: bool = False

    def describe(self) -> str:
        if self.continues_donor:
            return "donor trained further, same FLOPs as the target's training"
        if self.init is None:
            return "target from scratch"
        donor = "untrained donor" if self.untrained_donor else "trained donor"
        return f"{'LiGO from ' if self.operator_steps else 'heuristic '}{self.init}, {donor}"


LIGO_FROM = "ligo-from-"


def is_heuristic(name: str) -> bool:
    depth, plus, width = name.partition("+")
    return bool(plus) and depth in DEPTH_SCHEMES and width in WIDTH_SCHEMES


def is_ligo_from(name: str) -> bool:
    return name.startswith(LIGO_FROM) and is_heuristic(name.removeprefix(LIGO_FROM))


def parse_arms(bench) -> list[str]:
    """The arm names in run order (scratch, heuristics, LiGO arms); one clear error for a bad list."""
    names = [n.strip() for n in bench.arms.split(",") if n.strip()]
    known = ("scratch", "ligo", "ligo-official", "ligo-untrained-donor", "donor-continued")
    bad = [n for n in names if n not in known and not is_heuristic(n) and not is_ligo_from(n)]
    if bad or "scratch" not in names or len(set(names)) != len(names):
        raise ConfigError(f"bench.arms={bench.arms!r}: need 'scratch' (the reference) once, and arms from {known}, "
                          f"depth+width heuristics (depth in {DEPTH_SCHEMES}, width in {WIDTH_SCHEMES}) or "
                          f"{LIGO_FROM}depth+width"
                          + (f"; unknown: {bad}" if bad else ""))
    if bench.ligo_init == "best":
        if {"ligo", "ligo-untrained-donor"} & set(names) and not any(is_heuristic(n) for n in names):
            raise ConfigError("bench.ligo_init=best picks the best heuristic arm, but bench.arms has none: add one "
                              "(e.g. stack+copy) or set bench.ligo_init=stack+copy")
    elif not is_heuristic(bench.ligo_init):
        raise ConfigError(f"bench.ligo_init={bench.ligo_init!r}: use 'best' or depth+width, e.g. stack+copy")
    order = {"scratch": 0, "ligo": 2, "ligo-official": 2, "ligo-untrained-donor": 3, "donor-continued": 3}
    return sorted(names, key=lambda n: order.get(n, 2 if is_ligo_from(n) else 1))


class Bench:
    def __init__(self, recipe: str, overrides: list[str], out: Path, ranks: int, overwrite: bool):
        self.recipe, self.overrides, self.out, self.ranks, self.overwrite = recipe, overrides, out, ranks, overwrite
        self.config: Config = load_config(recipe, overrides)
        try:
            self.donor_model = load_config(recipe, [*overrides, *self.donor_shape()]).model
        except ConfigError as err:
            raise ConfigError(f"bench.donor_size={self.config.bench.donor_size!r}: {err}") from None
        self.arm_names = parse_arms(self.config.bench)
        self.ligo_init = None if self.config.bench.ligo_init == "best" else self.config.bench.ligo_init

    def arm(self, name: str) -> Arm:
        if name == "scratch":
            return Arm(name)
        if is_heuristic(name):
            return Arm(name, init=name)
        if name == "donor-continued":
            return Arm(name, continues_donor=True)
        if name == "ligo-official":
            return Arm(name, init=OFFICIAL_INIT, operator_steps=True)
        if is_ligo_from(name):
            return Arm(name, init=name.removeprefix(LIGO_FROM), operator_steps=True)
        return Arm(name, init=self.ligo_init, operator_steps=True, untrained_donor=name == "ligo-untrained-donor")

    # -- running stages -----------------------------------------------------------------------------

    def stage(self, module: str, run_dir: Path, overrides: list[str]) -> list[dict]:
        """Run (or reuse) one stage into run_dir; returns its metrics records."""
        overrides = [*self.overrides, *overrides, f"run.dir={run_dir}"]
        config = load_config(self.recipe, overrides)
        stage = {"train": PretrainStage, "grow": GrowStage}[module]
        if not self.overwrite and self._finished(run_dir, config, stage.unread_sections):
            print(f"[bench] {run_dir}: finished earlier, reused", flush=True)
            return read_metrics(run_dir)
        log = run_dir.parent / f"{run_dir.name}.log"
        started = time.time()
        print(f"[bench] {module} -> {run_dir} (log: {log})", flush=True)
        run_stage_job(module, ["--config", self.recipe, *(["--overwrite"] if self.overwrite else ["--resume", "auto"]),
                               *overrides], self.ranks, log)
        records = read_metrics(run_dir)
        last = [r for r in records if "val/loss" in r][-1]
        print(f"[bench]   done in {time.time() - started:.0f} s: step {last['step']}, val loss {last['val/loss']:.4f}",
              flush=True)
        return records

    def _finished(self, run_dir: Path, config: Config, unread_sections: tuple[str, ...]) -> bool:
        """Exported, by a config that gives the same weights as this one (the stage's own resume rule,
        so a copied benchmark dir can be extended: e.g. only the LiGO arms rerun after grow.lr changes)."""
        if not (run_dir / "hf" / "config.json").exists() or not (run_dir / "config.yaml").exists():
            return False
        saved = yaml.safe_load((run_dir / "config.yaml").read_text())
        return not breaking_changes(self._rebased(saved, run_dir), config.to_dict(), unread_sections)

    def _rebased(self, saved: dict, run_dir: Path) -> dict:
        """The saved config of a stage in a copied or moved benchmark dir: its inputs inside the old --out
        (the donor, a grown model) are the same files inside this one."""
        old_out = Path(saved["run"]["dir"])
        for _ in run_dir.relative_to(self.out).parts:
            old_out = old_out.parent
        for section, key in (("grow", "donor"), ("train", "init_from")):
            value = saved[section][key]
            if value and Path(value).is_relative_to(old_out):
                saved[section][key] = str(self.out / Path(value).relative_to(old_out))
        return saved

    def donor_shape(self) -> list[str]:
        """Overrides that turn the recipe's target into the donor shape."""
        return [f"model.size={self.config.bench.donor_size}", *(f"model.{f}=null" for f in SHAPE_FIELDS)]

    def donor_continuation(self) -> list[str]:
        """Train-section overrides giving the donor the FLOPs of the target's train.steps (same batch and
        sequence length, so steps scale by the FLOPs-per-token ratio) and evaluations at the same FLOPs."""
        vocab, seq_len = read_meta(Path(self.config.data.output_dir))["vocab_size"], self.config.data.seq_len
        t = self.config.train
        ratio = (training_flops_per_token(resolve_shape(self.config.model), vocab, seq_len)
                 / training_flops_per_token(resolve_shape(self.donor_model), vocab, seq_len))
        steps, interval = round(t.steps * ratio), max(1, round(t.eval_interval * ratio))
        return [f"train.steps={steps}", f"train.eval_interval={interval}", f"train.log_interval={interval}",
                f"train.checkpoint_interval={steps}"]

    def seed_overrides(self, seed: int) -> list[str]:
        """Seed s shifts the init and data-order seeds. Every stage reads the order from its beginning
        (data.start=0, not after its starting model's samples): the arms differ only in their start."""
        c = self.config
        return [f"train.seed={c.train.seed + seed}", f"data.order_seed={c.data.order_seed + seed}", "data.start=0"]

    def donor(self, seed: int) -> tuple[Path, dict]:
        """Pretrain the seed's donor; returns its HF dir and its cost."""
        b = self.config.bench
        run_dir = self.out / f"seed{seed}" / "donor"
        records = self.stage("train", run_dir, [*self.seed_overrides(seed), *self.donor_shape(),
                                                f"train.steps={b.donor_steps}", "train.init_from=null"])
        return run_dir / "hf", {"flops": records[-1]["progress/model_flops"],
                                "seconds": records[-1]["perf/train_seconds"]}

    def untrained_donor(self, seed: int) -> Path:
        out_dir = self.out / f"seed{seed}" / "untrained-donor"
        if not (out_dir / "config.json").exists():
            meta = read_meta(Path(self.config.data.output_dir))
            save_initialized_model(resolve_shape(self.donor_model), load_tokenizer(meta["tokenizer"]), meta["vocab_size"],
                                   out_dir, seed=self.config.train.seed + seed)
        return out_dir

    def run_arm(self, arm: Arm, seed: int, donor_dir: Path) -> Curve:
        """The arm's validation curve: operator training (if any), then the target's training."""
        arm_dir = self.out / f"seed{seed}" / arm.name
        seeded = self.seed_overrides(seed)
        if arm.continues_donor:
            return Curve.from_records(self.stage("train", arm_dir / "train", [
                *seeded, *self.donor_shape(), f"train.init_from={donor_dir}", *self.donor_continuation()]))
        if arm.init is None:
            return Curve.from_records(self.stage("train", arm_dir / "train", [*seeded, "train.init_from=null"]))
        depth, width = arm.init.split("+")
        grow_records = self.stage("grow", arm_dir / "grow", [
            *seeded, f"grow.donor={donor_dir}", f"grow.depth_init={depth}", f"grow.width_init={width}",
            *([] if arm.operator_steps else ["grow.steps=0"])])
        grown = Curve.from_records(grow_records)
        train_records = self.stage("train", arm_dir / "train", [*seeded, f"train.init_from={arm_dir / 'grow' / 'hf'}"])
        return grown.then(Curve.from_records(train_records, grown.flops[-1], grown.seconds[-1]))

    # -- the whole benchmark ------------------------------------------------------------------------

    def run(self, seeds: int) -> dict:
        self.check_data()
        started = time.time()
        curves: dict[str, list[Curve]] = {name: [] for name in self.arm_names}
        per_seed, donors = [], []
        for seed in range(seeds):
            donor_dir, donor_cost = self.donor(seed)
            donors.append(donor_cost)
            seed_curves, donor_costs = {}, {}
            for name in self.arm_names:
                arm = self.arm(name)
                if arm.operator_steps and arm.init is None:
                    arm = self.arm_with_best_init(arm, seed_curves)
                source = self.untrained_donor(seed) if arm.untrained_donor else donor_dir
                seed_curves[name] = self.run_arm(arm, seed, source)
                curves[name].append(seed_curves[name])
                uses_donor = (arm.init is not None and not arm.untrained_donor) or arm.continues_donor
                donor_costs[name] = donor_cost if uses_donor else {"flops": 0.0, "seconds": 0.0}
            per_seed.append(seed_result(seed_curves, donor_costs))
        return self.write_report(curves, per_seed, donors, seeds, time.time() - started)

    def arm_with_best_init(self, arm: Arm, seed_curves: dict[str, Curve]) -> Arm:
        """bench.ligo_init=best: the heuristic arm that reached the scratch arm's final loss with the fewest
        FLOPs on the first seed, the benchmark's own measure (ties and arms that never reach it: lowest final
        loss). Heuristic arms run before LiGO arms."""
        if self.ligo_init is None:
            target = seed_curves["scratch"].loss[-1]

            def cost(name: str) -> tuple[float, float]:
                curve = seed_curves[name]
                reached = crossing(curve.flops, curve.loss, target)
                return (float("inf") if reached is None else reached, curve.loss[-1])
            self.ligo_init = min((name for name in seed_curves if is_heuristic(name)), key=cost)
            print(f"[bench] best heuristic (fewest FLOPs to the scratch loss, first seed): {self.ligo_init}", flush=True)
        return self.arm(arm.name)

    def check_data(self) -> None:
        if read_meta(Path(self.config.data.output_dir)) is None:
            raise ConfigError(f"no prepared data in {self.config.data.output_dir}: run "
                              f"`python -m pipeline.prepare --config {self.recipe}` first (same data overrides)")

    def write_report(self, curves: dict[str, list[Curve]], per_seed: list[dict], donors: list[dict], seeds: int,
                     seconds: float) -> dict:
        summary = summarize(per_seed)
        descriptions = {name: self.arm(name).describe() for name in self.arm_names}
        target = summary["scratch"]["target_loss"]["mean"]
        command = "python -m pipeline.bench growth " + shlex.join(sys.argv[1:])
        b, t = self.config.bench, self.config.train
        header = (f"Growth benchmark, {datetime.date.today()}: `{command}`\n\n"
                  f"Target {self.config.model.size} trained {t.steps} steps in every arm; donor {b.donor_size} "
                  f"pretrained {b.donor_steps} steps (cost per seed: "
                  f"{sum(d['flops'] for d in donors) / len(donors) / 1e15:.3g} PFLOPs, "
                  f"{sum(d['seconds'] for d in donors) / len(donors):.0f} s of training); LiGO operator "
                  f"{self.config.grow.steps} steps. {seeds} seed(s): mean ± sample std. Target loss: the scratch "
                  f"arm's final validation loss ({target:.4f}). Savings are relative to scratch's cost to reach it.\n\n")
        (self.out / "results.md").write_text(header + markdown_table(summary, descriptions))
        plot_curves(curves, target, "flops", self.out / "loss_vs_flops.png")
        plot_curves(curves, target, "seconds", self.out / "loss_vs_time.png")
        results = {"command": command, "date": str(datetime.date.today()), "seeds": seeds,
                   "seconds_this_invocation": round(seconds, 1), "config": self.config.to_dict(), "ranks": self.ranks,
                   "ligo_init": self.ligo_init, "arms": descriptions, "donor_cost": donors, "per_seed": per_seed,
                   "summary": summary, "curves": {arm: [c.__dict__ for c in cs] for arm, cs in curves.items()}}
        (self.out / "results.json").write_text(json.dumps(results, indent=1))
        print(header + markdown_table(summary, descriptions), flush=True)
        print(f"[bench] results in {self.out}: results.md, results.json, loss_vs_flops.png, loss_vs_time.png",
              flush=True)
        return results


def main(argv: list[str] | None = None) -> None:
    args, overrides = seeded_bench_arguments(
        "growth", __doc__, "bench-growth", 1, argv,
        lambda parser: parser.add_argument("--overwrite", action="store_true",
                                           help="retrain every stage instead of reusing finished ones"))
    try:
        Bench(args.config, overrides, Path(args.out), args.ranks, args.overwrite).run(args.seeds)
    except ConfigError as err:
        sys.exit(f"bench error: {err}")


if __name__ == "__main__":
    main()
