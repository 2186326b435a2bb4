"""The step-cost benchmarks run end to end (pipeline.bench train_overhead and grow_cost: both arms in
their own processes, on the device the stage would use) and refuse what they cannot compare."""

import json
import subprocess
import sys

from conftest import ROOT, data_overrides


def bench(name, prepared, *args):
    root, _, _ = prepared
    proc = subprocess.run([sys.executable, "-m", f"pipeline.bench.{name}", "--config", "tiny", "--rounds", "1",
                           "--steps", "2", "--warmup", "1", *args, *data_overrides(root)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    return proc


def last_json(stdout):
    return json.loads(stdout[stdout.rindex("\n{") + 1:])


def test_train_overhead_times_both_arms_and_refuses_mixed_precision(prepared):
    proc = bench("train_overhead", prepared)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = last_json(proc.stdout)
    assert result["median"]["stage"]["tokens_per_s"] > 0 and result["median"]["plain"]["tokens_per_s"] > 0
    refused = bench("train_overhead", prepared, "train.deepspeed_config=zero3_bf16")
    assert refused.returncode != 0 and "compares fp32 loops" in refused.stderr


def test_grow_cost_times_a_grow_step_against_a_train_step(prepared):
    proc = bench("grow_cost", prepared, "--random-donor", "llama-nano")
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = last_json(proc.stdout)
    assert result["grow_over_train_step_time"] > 0 and result["grow_over_train_peak_rss"] > 0
