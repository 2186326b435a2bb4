"""Benchmark: peak memory per rank of the train and grow stages, next to what they must hold.

    python -m pipeline.bench memory --config tiny                       # llama-micro from llama-nano, 1 and 2 ranks
    python -m pipeline.bench memory --config tiny --ranks 2,1 train.deepspeed_config=zero3 \\
        model.size=llama-125m model.layers=32 model.hidden=960 model.heads=15 model.kv_heads=5 model.ffn=2560 \\
        model.max_positions=512 train.micro_batch_size=2 --donor llama-135m:max_positions=512 \\
        data.seq_len=256 data.vocab_size=49152 data.tokenizer=stdlib-49k data.output_dir=data/stdlib-49k-256
        # the 360M-class target of issue 12 (docs/benchmarks.md, "Memory per rank": prepare that data first)

Each (stage, ranks) runs the real stage through the `deepspeed` launcher for --steps steps in a fresh
run dir (its final checkpoint and HF export included: they are part of a stage's peak), from a
randomly initialized donor of --donor's shape (memory does not depend on the weights). Measured: the
largest resident set of any rank over the whole stage (the launcher's children's peak, read by a
wrapper process) and the peak over the training steps alone (the stage's perf/peak_memory_gb), and
the runtime floor (a rank that imports the stages' modules and libraries and joins the group, no
model). The theory is per rank (`theory`): ZeRO's model states (parameters, gradients, AdamW
moments, fp32 masters under bf16, divided by the ranks where the stage partitions them), activations
of one micro-batch, the logits and the loss's fp32 copies, and DeepSpeed's communication buckets; for
the grow stage the operator's states, the frozen donor and the generated target weights instead of
the target's states.

Written for CPU ranks, where the model states live in the resident set. On an accelerator they live in
device memory: there compare the training-steps column (perf/peak_memory_gb, the device's peak
allocation) with the theory; the "measured / theory" ratios, read from host RSS, do not apply.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from pipeline.bench.grow_cost import save_random_donor, shape_from_spec, stage_engine
from pipeline.config import load_config
from pipeline.data.packing import read_meta
from pipeline.engine import free_port
from pipeline.metrics import read_metrics
from pipeline.models.sizes import ModelShape, resolve_shape

GB = 1e9
# DeepSpeed's defaults (deepspeed/runtime/zero/config.py) for the keys a shipped JSON leaves unset
BUCKET_DEFAULTS = {"reduce_bucket_size": 5e8, "stage3_prefetch_bucket_size": 5e7}
WRAPPER = ("import resource, subprocess, sys; code = subprocess.call(sys.argv[1:]); "
           "print('peak_rss_kb', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(code)")
# VmHWM, the peak of this process's own memory: Linux's ru_maxrss of a child started with vfork + exec
# (Python's subprocess) begins at its parent's peak, which here may hold a random donor
FLOOR = ("import re, pipeline.train, pipeline.grow; from pipeline.engine import init_distributed; "
         "init_distributed(); status = open('/proc/self/status').read(); "
         "print('floor_rss_kb', re.search(r'VmHWM:\\s+(\\d+)', status)[1])")


def parameter_counts(shape: ModelShape, vocab_size: int) -> tuple[int, int]:
    """(all parameters, one block's), exact, from the HF model built on the meta device (embeddings,
    norms and the head included; a tied head counted once)."""
    from transformers import AutoModelForCausalLM

    from pipeline.models.hf import hf_config
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(hf_config(shape, vocab_size, {}))
    total = sum(p.numel() for p in model.parameters())
    block = sum(p.numel() for name, p in model.named_parameters() if re.search(r"\.(layers|h)\.0\.", name))
    return total, block


def activation_bytes(shape: ModelShape, micro_batch: int, seq_len: int, dtype_bytes: int, checkpointing: bool) -> float:
    """What backward keeps of one micro-batch, per block (a count for these blocks in the manner of
    Korthikanti et al. 2022): norm inputs and outputs, q/k/v and their rotated copies, the attention
    scores and probabilities (eager attention; fused kernels keep less), the attention output, the MLP's
    gate/up/activation/product. Under activation checkpointing: each block's input, plus one block."""
    s, b, h, f = seq_len, micro_batch, shape.hidden, shape.ffn
    kv = shape.kv_heads * shape.head_dim
    per_block = s * b * (7 * h + 3 * kv + 4 * f) + 2 * shape.heads * s * s * b
    if checkpointing:
        return dtype_bytes * (shape.layers * s * b * h + per_block)
    return dtype_bytes * shape.layers * per_block


def model_state_bytes(n: int, zero: int, ranks: int, bf16: bool) -> dict[str, float]:
    """ZeRO's accounting (Rajbhandari et al. 2020) with torch AdamW: stage 1 partitions the optimizer
    states, 2 also the gradients, 3 also the parameters; bf16 adds fp32 master weights (partitioned
    with the optimizer states) and keeps 16-bit parameters and gradients."""
    low = 2 if bf16 else 4
    per = lambda stage: ranks if zero >= stage else 1  # noqa: E731 - the divisor at each stage
    states = {"parameters": low * n / per(3), "gradients": low * n / per(2), "optimizer (AdamW m, v)": 8 * n / per(1)}
    if bf16:
        states["fp32 master weights"] = 4 * n / per(1)
    return states


def bucket_bytes(ds: dict, n: int, zero: int, bf16: bool) -> float:
    """Gradient reduction bucket (ZeRO >= 2) and ZeRO-3's parameter prefetch bucket, each at most the
    model: DeepSpeed's defaults are sized for large GPUs."""
    if zero < 2:
        return 0.0
    z = ds.get("zero_optimization", {})
    low = 2 if bf16 else 4
    total = min(z.get("reduce_bucket_size", BUCKET_DEFAULTS["reduce_bucket_size"]), n) * low
    if zero == 3:
        total += min(z.get("stage3_prefetch_bucket_size", BUCKET_DEFAULTS["stage3_prefetch_bucket_size"]), n) * low
    return total


def theory(stage: str, config, ds: dict, ranks: int, vocab_size: int, donor: ModelShape | None) -> dict[str, float]:
    """Per-rank bytes the stage must hold, by component."""
    from pipeline.growth.adapters import adapter_for
    from pipeline.growth.operator import GrowthPlan, operator_init
    from pipeline.models.hf import hf_config
    t = config.train
    shape = resolve_shape(config.model)
    zero, bf16 = ds.get("zero_optimization", {}).get("stage", 0), ds.get("bf16", {}).get("enabled", False)
    n, block = parameter_counts(shape, vocab_size)
    seq = config.data.seq_len
    parts = {}
    if stage == "train":
        parts.update(model_state_bytes(n, zero, ranks, bf16))
    else:
        g = config.grow
        plan = GrowthPlan(donor, shape, g.depth_init, g.width_init, t.seed, g.depth_coefficients, g.new_layers)
        adapter = adapter_for(hf_config(donor, vocab_size, {}))
        n_operator = sum(value.numel() for _, value in operator_init(plan, adapter).named_values())
        for name, value in model_state_bytes(n_operator, zero, ranks, bf16).items():
            parts[f"operator {name}"] = value
        parts["frozen donor (fp32, every rank)"] = 4 * parameter_counts(donor, vocab_size)[0]
        # generated once per step (embeddings, head, final norm); blocks one at a time (grow.recompute)
        parts["generated weights (globals + one block)"] = 4 * (n - (shape.layers - 1) * block)
        n = n_operator
    parts["activations (one micro-batch)"] = activation_bytes(shape, t.micro_batch_size, seq, 2 if bf16 else 4,
                                                              config.model.activation_checkpointing)
    parts["logits + fp32 loss copies"] = 3 * 4 * t.micro_batch_size * seq * vocab_size
    parts["communication buckets"] = bucket_bytes(ds, n, zero, bf16)
    return parts


def child_env(ranks: int) -> dict:
    """The environment of a measured run: launched fresh, with the CPU threads split between the ranks
    (threads matter to memory too: the allocator keeps an arena per thread)."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // ranks)))
    return env


def run_stage(stage: str, ranks: int, recipe: str, overrides: list[str], run_dir: Path) -> dict:
    """The stage through the launcher (plain python for 1 rank); returns its measured peaks in GB."""
    module = ["-m", f"pipeline.{stage}"]
    if ranks == 1:
        launch = [sys.executable, *module]
    else:
        deepspeed = str(Path(sys.executable).parent / "deepspeed")
        launch = [deepspeed, "--num_gpus", str(ranks), "--master_port", str(free_port()), "--module",
                  f"pipeline.{stage}"]
    # --overwrite: the run dir is this benchmark's own (a stage refuses to start over a finished run)
    cmd = [sys.executable, "-c", WRAPPER, *launch, "--config", recipe, "--overwrite", f"run.dir={run_dir}", *overrides]
    log = run_dir.parent / f"{run_dir.name}.log"
    with log.open("w") as f:
        code = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=child_env(ranks)).returncode
    text = log.read_text()
    if code != 0:
        sys.exit(f"[memory] {stage} on {ranks} rank(s) failed (exit {code}); last lines of {log}:\n{text[-3000:]}")
    peak_kb = int(text.rsplit("peak_rss_kb", 1)[1].split()[0])
    shutil.rmtree(run_dir / "checkpoints")  # measured: the benchmark's own checkpoints only take disk
    steps = [r["perf/peak_memory_gb"] for r in read_metrics(run_dir) if "perf/peak_memory_gb" in r]
    return {"stage_peak_gb": peak_kb * 1024 / GB, "training_peak_gb": max(steps)}


def resident_gb() -> float:
    """This process's resident set now (not its peak)."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / GB


def probe_phases(stage: str, recipe: str, overrides: list[str], out_file: Path, steps: int) -> None:
    """Inside each rank (under the launcher): build the stage's model and engine with its own code and
    run `steps` steps, appending the resident set and the peak so far after each phase to out_file."""
    from pipeline.engine import init_distributed, peak_memory_gb
    rank, world_size = init_distributed()

    def record(phase: str) -> None:
        with out_file.open("a") as f:
            f.write(json.dumps({"rank": rank, "phase": phase, "resident_gb": resident_gb(),
                                "peak_gb": peak_memory_gb()}) + "\n")

    record("libraries + process group")
    engine, batches = stage_engine(stage, load_config(recipe, overrides), rank, world_size, record)
    for step in range(steps):
        ids = batches.batch(step, 0).to(engine.device)
        loss = engine(input_ids=ids, labels=ids).loss
        record(f"step {step + 1} forward")
        engine.backward(loss)
        record(f"step {step + 1} backward")
        engine.step()
        record(f"step {step + 1} optimizer")


def run_phases(stage: str, ranks: int, recipe: str, overrides: list[str], out_file: Path, steps: int) -> list[dict]:
    """Per phase, the largest resident set and peak over the ranks (GB)."""
    out_file.unlink(missing_ok=True)
    deepspeed = str(Path(sys.executable).parent / "deepspeed")
    cmd = [deepspeed, "--num_gpus", str(ranks), "--master_port", str(free_port()), "--no_local_rank", "--module",
           "pipeline.bench.memory",
           "--probe", stage, "--probe-out", str(out_file), "--steps", str(steps), "--config", recipe, *overrides]
    log = out_file.with_suffix(".log")
    with log.open("w") as f:
        if subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=child_env(ranks)).returncode != 0:
            sys.exit(f"[memory] the {stage} probe failed; last lines of {log}:\n{log.read_text()[-3000:]}")
    records = [json.loads(line) for line in out_file.read_text().splitlines()]
    phases = list(dict.fromkeys(r["phase"] for r in records))
    return [{"phase": p, "resident_gb": max(r["resident_gb"] for r in records if r["phase"] == p),
             "peak_gb": max(r["peak_gb"] for r in records if r["phase"] == p)} for p in phases]


def runtime_floor_gb() -> float:
    env = dict(os.environ, RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    out = subprocess.run([sys.executable, "-c", FLOOR], capture_output=True, text=True, env=env, check=True).stdout
    return int(out.rsplit("floor_rss_kb", 1)[1].split()[0]) * 1024 / GB


def main() -> None:
    from pipeline.engine import deepspeed_config
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="tiny")
    parser.add_argument("--ranks", default="1,2", help="comma-separated rank counts (default 1,2)")
    parser.add_argument("--stages", default="train,grow", help="comma-separated (default train,grow)")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--donor", default="llama-nano", metavar="SIZE[:field=value,...]",
                        help="the grow stage's donor shape (randomly initialized)")
    parser.add_argument("--out", default=None, help="run dirs and results.json (default: a temporary dir)")
    parser.add_argument("--phases", action="store_true",
                        help="also probe each (stage, ranks): resident memory after each build and step phase")
    parser.add_argument("--probe", choices=["train", "grow"], help=argparse.SUPPRESS)  # child mode (each rank)
    parser.add_argument("--probe-out", help=argparse.SUPPRESS)
    args, overrides = parser.parse_known_args()
    if args.probe:
        probe_phases(args.probe, args.config, overrides, Path(args.probe_out), args.steps)
        return
    overrides = [*overrides, f"train.steps={args.steps}", "train.warmup_steps=1", "train.eval_batches=1",
                 f"train.eval_interval={args.steps}", f"train.log_interval={args.steps}",
                 f"train.checkpoint_interval={args.steps}", "train.keep_checkpoints=1", f"grow.steps={args.steps}",
                 "grow.warmup_steps=1",
                 "train.throughput_warmup_steps=0"]
    config = load_config(args.config, overrides)  # fail fast on a bad recipe
    meta = read_meta(Path(config.data.output_dir))
    if meta is None:
        sys.exit(f"[memory] no prepared data in {config.data.output_dir}: run python -m pipeline.prepare --config "
                 f"{args.config} first")
    out = Path(args.out or tempfile.mkdtemp(prefix="memory-bench-"))
    out.mkdir(parents=True, exist_ok=True)
    donor_dir = out / "donor"
    if "grow" in args.stages and not (donor_dir / "config.json").exists():
        save_random_donor(args.donor, config, donor_dir)
    donor_shape = shape_from_spec(args.donor)
    floor = runtime_floor_gb()
    rows = []
    for ranks in (int(r) for r in args.ranks.split(",")):
        ds = deepspeed_config(config.train, ranks, resolve_shape(config.model))
        for stage in args.stages.split(","):
            extra = [f"grow.donor={donor_dir}"] if stage == "grow" else []
            measured = run_stage(stage, ranks, args.config, [*overrides, *extra], out / f"{stage}-{ranks}ranks")
            parts = theory(stage, config, ds, ranks, meta["vocab_size"], donor_shape)
            total = sum(parts.values()) / GB
            if args.phases:
                measured["phases"] = run_phases(stage, ranks, args.config, [*overrides, *extra],
                                                out / f"{stage}-{ranks}ranks-phases.jsonl", args.steps)
            rows.append({"stage": stage, "ranks": ranks, **measured, "theory_gb": total,
                         "theory_parts_gb": {k: v / GB for k, v in parts.items()},
                         "stage_peak_over_theory": measured["stage_peak_gb"] / total,
                         "stage_peak_minus_floor_over_theory": (measured["stage_peak_gb"] - floor) / total})
            print(f"[memory] {stage}, {ranks} rank(s): peak {measured['stage_peak_gb']:.2f} GB per rank "
                  f"(training steps {measured['training_peak_gb']:.2f}), theory {total:.2f} GB "
                  f"(x{measured['stage_peak_gb'] / total:.2f}; runtime floor {floor:.2f} GB)", flush=True)
    results = {"config": args.config, "overrides": overrides, "deepspeed_config": config.train.deepspeed_config,
               "runtime_floor_gb": floor, "rows": rows}
    (out / "results.json").write_text(json.dumps(results, indent=2))
    print(markdown(results))


def markdown(results: dict) -> str:
    lines = ["| stage | ranks | measured peak (stage) | peak in training steps | theory | measured / theory | "
             "(measured − floor) / theory |", "|---|---|---|---|---|---|---|"]
    for r in results["rows"]:
        lines.append(f"| {r['stage']} | {r['ranks']} | {r['stage_peak_gb']:.2f} GB | {r['training_peak_gb']:.2f} GB | "
                     f"{r['theory_gb']:.2f} GB | {r['stage_peak_over_theory']:.2f} | "
                     f"{r['stage_peak_minus_floor_over_theory']:.2f} |")
    lines.append(f"\nRuntime floor (libraries imported, group joined, no model): {results['runtime_floor_gb']:.2f} GB "
                 f"per rank. Theory by component (GB per rank):\n")
    for r in results["rows"]:
        parts = ", ".join(f"{k} {v:.3f}" for k, v in r["theory_parts_gb"].items())
        lines.append(f"- {r['stage']}, {r['ranks']} rank(s): {parts}")
    for r in results["rows"]:
        if "phases" in r:
            lines.append(f"\n{r['stage']}, {r['ranks']} rank(s), by phase (max over ranks): " + "; ".join(
                f"{p['phase']} {p['resident_gb']:.2f} GB resident (peak {p['peak_gb']:.2f})" for p in r["phases"]))
    return "\n".join(lines)


if __name__ == "__main__":
    main()
