"""Continued pretraining after growth, side by side: how a grown model and its donor fare under each way
of starting the train stage from them (the climb, and the loss after the run).

    python -m pipeline.bench continued --config bench-growth-nonint \\
        --donor runs/bench/growth-nonint/seed0/donor/hf --grown runs/exp/grown/hf --out runs/bench/continued
    python -m pipeline.bench continued ... --modes recipe,default --steps 100 train.continued.lr_ratio=0.25

For each model (the grown one, and the donor it came from: is the climb growth's or re-warming's?) and
each mode it runs the train stage from that model's dir with the recipe's batch, data and train.steps
(the LR schedule spans them; --steps stops earlier), both reading the data order from its beginning
(data.start=0, as the growth benchmark does), each as its own job. Modes (MODES):

    recipe      the recipe's random-init schedule and an empty AdamW: what the train stage did before
                train.continued existed
    warmup      the same after a moment warm-up (train.moment_warmup_steps=10)
    fresh       the train.continued schedule with an empty AdamW (and its moment warm-up)
    moments     train.continued with AdamW from the moments the dir carries, without LR scales
    at-once     the same, with a grown model's new units at their full LR from the first step
                (train.continued.new_units_warmup_steps=0)
    default     the defaults: train.continued, AdamW from the dir's moments and per-coordinate LR scales
                when it carries them (a donor trained by this pipeline, a lossless grown start), the
                new units faded in

Modes run in the order given, the grown model and its donor together (the donor skips at-once: it
has no new units).

The climb is the highest validation loss over the first 100 steps above the step-0 loss. Outputs in
--out: <model>-<mode>/ run dirs and logs, results.json, results.md, loss_curves.png. Finished runs
are reused (a run is finished when its metrics reach the last step and its config is unchanged).
"""

from __future__ import annotations

import argparse
import datetime
import json
import shlex
import sys
from pathlib import Path

import yaml

from pipeline.bench.growth_report import CLIMB_STEPS, Curve
from pipeline.bench.jobs import run_stage_job
from pipeline.config import ConfigError, load_config
from pipeline.metrics import read_metrics
from pipeline.models.sizes import SHAPE_FIELDS
from pipeline.resume import breaking_changes
from pipeline.train import PretrainStage

MODES = {
    "recipe": ("the recipe's random-init schedule, empty AdamW",
               ["train.continued.enabled=false", "train.init_optimizer=fresh"]),
    "warmup": ("the recipe's schedule after a 10-step moment warm-up",
               ["train.continued.enabled=false", "train.init_optimizer=fresh", "train.moment_warmup_steps=10"]),
    "fresh": ("train.continued, empty AdamW with the moment warm-up", ["train.init_optimizer=fresh"]),
    "moments": ("train.continued, the carried moments without LR scales", ["train.init_optimizer=moments"]),
    "at-once": ("train.continued, carried moments and LR scales, new units at once",
                ["train.continued.new_units_warmup_steps=0"]),
    "default": ("train.continued, carried moments and LR scales, new units faded in (the defaults)", []),
}
# A donor has no new units, so these change nothing for it: not run.
MODES_SAME_AS_DEFAULT_FOR_A_DONOR = {"at-once"}
SHAPE_FROM_CHECKPOINT = ["model.size=null", *(f"model.{name}=null" for name in SHAPE_FIELDS)]


def run_mode(recipe: str, overrides: list[str], run_dir: Path, steps: int | None, ranks: int) -> list[dict]:
    """One train stage from a model dir, or its finished metrics if an identical run already finished."""
    config = load_config(recipe, [*overrides, f"run.dir={run_dir}"])
    last = steps or config.train.steps
    # a run refused at its checks (disk space, say) leaves its config.yaml but no metrics
    logged = (run_dir / "config.yaml").exists() and (run_dir / "metrics.jsonl").exists()
    if logged and any(r["step"] == last for r in read_metrics(run_dir)):
        saved = yaml.safe_load((run_dir / "config.yaml").read_text())
        if not breaking_changes(saved, config.to_dict(), PretrainStage.unread_sections):
            print(f"[bench] {run_dir}: finished earlier, reused", flush=True)
            return read_metrics(run_dir)
    print(f"[bench] train -> {run_dir}", flush=True)
    run_stage_job("train", ["--config", recipe, "--overwrite", *overrides, f"run.dir={run_dir}",
                            *([f"--until-step={steps}"] if steps else [])], ranks, run_dir.parent / f"{run_dir.name}.log")
    return read_metrics(run_dir)


def summary_row(records: list[dict]) -> dict:
    curve = Curve.from_records(records)
    return {"step0_loss": curve.loss[0], "climb": curve.climb(), "final_step": curve.steps[-1],
            "final_loss": curve.loss[-1], "steps": curve.steps, "val_loss": curve.loss}


def markdown(results: dict) -> str:
    lines = [f"| model | mode | what | step-0 val loss | climb (first {CLIMB_STEPS} steps) | val loss at the end |",
             "|---|---|---|---|---|---|"]
    for model, modes in results.items():
        for mode, row in modes.items():
            lines.append(f"| {model} | `{mode}` | {MODES[mode][0]} | {row['step0_loss']:.4f} | {row['climb']:+.3f} | "
                         f"{row['final_loss']:.4f} (step {row['final_step']}) |")
    return "\n".join(lines) + "\n"


def plot(results: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5), dpi=120)
    colours = dict(zip(MODES, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    for model, modes in results.items():
        for mode, row in modes.items():
            ax.plot(row["steps"], row["val_loss"], color=colours[mode], linestyle="-" if model == "grown" else "--",
                    label=f"{model}, {mode}", linewidth=1.5)
    ax.set_xlabel("train stage step")
    ax.set_ylabel("validation loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pipeline.bench continued", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="bench-growth-nonint", help="recipe name or YAML path")
    parser.add_argument("--donor", required=True, help="the donor's HF dir")
    parser.add_argument("--grown", required=True, help="the grown model's HF dir (the grow stage's <run>/hf)")
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma-separated, from {list(MODES)}")
    parser.add_argument("--steps", type=int, default=None, help="stop after this many steps (default train.steps)")
    parser.add_argument("--out", default="runs/bench/continued", help="benchmark directory")
    parser.add_argument("--ranks", type=int, default=1,
                        help="processes per run: 1 runs `python -m`, more the `deepspeed` launcher")
    args, overrides = parser.parse_known_args(argv)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = [m for m in modes if m not in MODES]
    if unknown or not modes:
        sys.exit(f"bench error: --modes {args.modes!r}: choose from {list(MODES)}")
    out = Path(args.out)
    # Mode by mode, the pair together: a benchmark stopped early still compares like with like.
    runs = [(model, mode, [*overrides, f"train.init_from={model_dir}", *SHAPE_FROM_CHECKPOINT, "data.start=0",
                           *MODES[mode][1]])
            for mode in modes for model, model_dir in (("grown", args.grown), ("donor", args.donor))
            if not (model == "donor" and mode in MODES_SAME_AS_DEFAULT_FOR_A_DONOR)]
    try:
        for model, mode, run in runs:  # every run's config checked before the first one trains
            load_config(args.config, run)
    except ConfigError as err:
        sys.exit(f"bench error: mode {mode} for the {model} model: {err}")
    results: dict[str, dict] = {}
    for model, mode, run in runs:
        records = run_mode(args.config, run, out / f"{model}-{mode}", args.steps, args.ranks)
        results.setdefault(model, {})[mode] = summary_row(records)
    command = "python -m pipeline.bench continued " + shlex.join(sys.argv[1:])
    table = f"Continued pretraining, {datetime.date.today()}: `{command}`\n\n" + markdown(results)
    (out / "results.md").write_text(table)
    (out / "results.json").write_text(json.dumps({"command": command, "date": str(datetime.date.today()),
                                                  "modes": {m: MODES[m][0] for m in modes}, "results": results},
                                                 indent=1))
    plot(results, out / "loss_curves.png")
    print(table + f"[bench] results in {out}: results.md, results.json, loss_curves.png", flush=True)


if __name__ == "__main__":
    main()
