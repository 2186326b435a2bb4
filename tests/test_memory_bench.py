"""The memory benchmark's theory (pipeline/bench/memory.py) and one real measurement."""

import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT, data_overrides
from pipeline.bench.memory import activation_bytes, model_state_bytes, parameter_counts
from pipeline.models.sizes import SIZES


def test_model_states_follow_zero_partitioning():
    n = 1000
    assert model_state_bytes(n, 0, 2, bf16=False) == {"parameters": 4000, "gradients": 4000,
                                                      "optimizer (AdamW m, v)": 8000}
    assert model_state_bytes(n, 2, 4, bf16=False) == {"parameters": 4000, "gradients": 1000,
                                                      "optimizer (AdamW m, v)": 2000}
    assert model_state_bytes(n, 3, 2, bf16=True) == {"parameters": 1000, "gradients": 1000,
                                                     "optimizer (AdamW m, v)": 4000, "fp32 master weights": 2000}
    assert sum(model_state_bytes(n, 3, 1, bf16=False).values()) == 16 * n  # ZeRO's 16 bytes per parameter


def test_parameter_counts_are_the_models():
    from pipeline.models.hf import build_model, hf_config
    for size in ("llama-nano", "gpt2-nano"):
        model = build_model(hf_config(SIZES[size], 2048, {}))
        total, block = parameter_counts(SIZES[size], 2048)
        assert total == sum(p.numel() for p in model.parameters())  # a tied head counted once
        first = model.model.layers[0] if size.startswith("llama") else model.transformer.h[0]
        assert block == sum(p.numel() for p in first.parameters())


def test_activation_checkpointing_keeps_block_inputs_and_one_block():
    shape = SIZES["llama-micro"]
    full = activation_bytes(shape, 2, 128, 4, checkpointing=False)
    kept = activation_bytes(shape, 2, 128, 4, checkpointing=True)
    assert kept == 4 * shape.layers * 2 * 128 * shape.hidden + full / shape.layers


def test_benchmark_measures_a_stage(prepared, tmp_path):
    root, _, _ = prepared
    cmd = [sys.executable, "-m", "pipeline.bench", "memory", "--config", "tiny", "--ranks", "1", "--stages", "train",
           "--phases", "--out", str(tmp_path), *data_overrides(root)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    (row,) = results["rows"]
    assert row["stage"] == "train" and row["ranks"] == 1
    # the whole stage (checkpoint and export included) peaks at least where its training steps did, above the floor
    assert row["stage_peak_gb"] >= row["training_peak_gb"] > results["runtime_floor_gb"] > 0.1
    assert row["theory_gb"] == pytest.approx(sum(row["theory_parts_gb"].values()))
    assert "| train | 1 |" in proc.stdout
    phases = {p["phase"]: p for p in row["phases"]}  # the probe: resident memory after each phase
    assert list(phases)[:3] == ["libraries + process group", "model built", "engine built"]
    assert "step 2 optimizer" in phases
    peaks = [p["peak_gb"] for p in row["phases"]]
    assert all(p["resident_gb"] > 0.1 for p in row["phases"]) and peaks == sorted(peaks)  # a peak only grows


FRAGMENTED_HEAP = """
import os, sys
import torch
from pipeline.engine import return_freed_tensors_to_the_os
if sys.argv[1] == "set":
    return_freed_tensors_to_the_os()

def resident():
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

torch.ones(2_000_000)  # one 8 MB block made and freed: glibc now serves blocks of 8 MB from the heap
before = resident()
weights, kept = [], []
for _ in range(40):  # gathered 8 MB weights with small long-lived tensors made between them
    weights.append(torch.ones(2_000_000))
    kept.append(torch.ones(64_000))
del weights
print(resident() - before)
"""


@pytest.mark.integration
def test_freed_tensors_go_back_to_the_os():
    """Every stage under ZeRO-3 calls return_freed_tensors_to_the_os before its model: 40 freed blocks of
    8 MB that were made among small long-lived tensors leave the process. Without it glibc keeps them
    (its mmap threshold rose to 8 MB with the first freed block), about 320 MB resident."""
    env = {k: v for k, v in os.environ.items() if k not in ("MALLOC_MMAP_THRESHOLD_", "GLIBC_TUNABLES")}
    kept = {mode: int(subprocess.run([sys.executable, "-c", FRAGMENTED_HEAP, mode], cwd=ROOT, env=env, check=True,
                                     capture_output=True, text=True).stdout.split()[-1]) for mode in ("set", "unset")}
    assert kept["unset"] > 250e6  # the failure this guards against, shown
    assert kept["set"] < 50e6
