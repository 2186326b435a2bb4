"""Benchmark: what one grow-stage step costs against one target training step.

    python -m pipeline.bench.grow_cost --config tiny grow.donor=runs/tiny/donor/hf
    # no donor at hand: time a randomly initialized donor of a given shape (weights do not change cost)
    python -m pipeline.bench.grow_cost --config tiny model.size=llama-125m \
        --random-donor llama-125m:layers=6,hidden=384,heads=6,kv_heads=2,ffn=1024

Each arm (train: the target from scratch; grow: the LiGO operator on the same target) runs in its own
single-rank process, built by the stages' own code (same DeepSpeed config, batch and data), so each
process's peak RSS is that arm's. The arms alternate for --rounds rounds; the script prints the median
step time and peak RSS of each arm and the ratios grow/train (goals: time <= 1.5x, memory <= 1.0x).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import tempfile
import time
from pathlib import Path

import torch

from pipeline.bench.arms import alternate, medians
from pipeline.config import load_config


def stage_engine(arm: str, config, rank: int, world_size: int, on_phase=lambda name: None):
    """The arm's model and engine built by the stages' own code (the recipe's DeepSpeed config and
    data), and its training batches. `on_phase(name)` is called after the model and after the engine."""
    from pipeline.data.loader import TrainBatches, open_samples
    from pipeline.data.tokenizer import load_tokenizer
    from pipeline.engine import deepspeed_config
    from pipeline.grow import GrowStage
    from pipeline.models.hf import hf_config, special_token_ids
    from pipeline.models.sizes import resolve_shape
    from pipeline.train import PretrainStage

    stage = GrowStage() if arm == "grow" else PretrainStage()
    stage.setup(config)
    schedule = stage.schedule(config)
    ds = deepspeed_config(schedule, world_size, resolve_shape(config.model))
    samples = open_samples(config.data.output_dir, "train")
    tokenizer = load_tokenizer(samples.meta["tokenizer"])
    target = hf_config(resolve_shape(config.model), samples.meta["vocab_size"], special_token_ids(tokenizer))
    torch.manual_seed(0)
    model = stage.build_model(config, target, ds)
    on_phase("model built")
    engine = stage.build_engine(model, schedule, ds)
    on_phase("engine built")
    batches = TrainBatches(samples, config.data.order_seed, schedule.micro_batch_size, 1, rank, world_size)
    return engine, batches


def run_arm(arm: str, recipe: str, overrides: list[str], steps: int, warmup: int) -> dict:
    """Inside the child process: build the arm's model and engine, time `steps` training steps."""
    from pipeline.engine import init_distributed, wait_for_device
    rank, world_size = init_distributed()
    engine, batches = stage_engine(arm, load_config(recipe, overrides), rank, world_size)
    times = []
    for step in range(warmup + steps):
        ids = batches.batch(step, 0).to(engine.device)
        wait_for_device()  # on an accelerator the clock must wait for the work it times
        start = time.perf_counter()
        engine.backward(engine(input_ids=ids, labels=ids).loss)
        engine.step()
        wait_for_device()
        times.append(time.perf_counter() - start)
    return {"step_s": statistics.median(times[warmup:]),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def shape_from_spec(spec: str):
    """A model shape from "SIZE[:field=value,...]", e.g. "llama-125m:layers=24,hidden=576"."""
    from pipeline.models.sizes import resolve_shape
    size, _, fields = spec.partition(":")
    return resolve_shape(load_config("tiny", [f"model.size={size}", *(f"model.{f}" for f in fields.split(",") if f)]).model)


def save_random_donor(spec: str, config, out_dir: Path) -> None:
    from pipeline.data.packing import read_meta
    from pipeline.data.tokenizer import load_tokenizer
    from pipeline.models.hf import save_initialized_model
    shape = shape_from_spec(spec)
    meta = read_meta(Path(config.data.output_dir))
    save_initialized_model(shape, load_tokenizer(meta["tokenizer"]), meta["vocab_size"], out_dir, seed=0)
    print(f"random donor {shape} in {out_dir}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="tiny")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--random-donor", metavar="SIZE[:field=value,...]",
                        help="use a randomly initialized donor of this shape instead of grow.donor")
    parser.add_argument("--arm", choices=["train", "grow"], help=argparse.SUPPRESS)  # child mode
    args, overrides = parser.parse_known_args()
    overrides = [*overrides, "train.deepspeed_config=zero0", "train.grad_accum_steps=1"]  # one micro-step = one step
    if args.arm:
        print(json.dumps(run_arm(args.arm, args.config, overrides, args.steps, args.warmup)))
        return
    config = load_config(args.config, overrides)  # fail fast on a bad recipe
    if args.random_donor:
        donor_dir = Path(tempfile.mkdtemp(prefix="random-donor-"))
        save_random_donor(args.random_donor, config, donor_dir)
        overrides.append(f"grow.donor={donor_dir}")
    child_args = ["--config", args.config, "--steps", str(args.steps), "--warmup", str(args.warmup), *overrides]
    median = medians(alternate("pipeline.bench.grow_cost", ("train", "grow"), args.rounds, child_args))
    print(json.dumps({"median": median,
                      "grow_over_train_step_time": median["grow"]["step_s"] / median["train"]["step_s"],
                      "grow_over_train_peak_rss": median["grow"]["peak_rss_mb"] / median["train"]["peak_rss_mb"]},
                     indent=2))


if __name__ == "__main__":
    main()
