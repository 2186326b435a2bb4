"""train.profile_step: torch.profiler around exactly the chosen steps, per rank (pipeline/profiling.py)."""

import json

import pytest
import torch

from conftest import data_overrides, run_deepspeed
from pipeline.config import ConfigError, load_config
from pipeline.profiling import StepProfiler


def test_the_profiler_records_exactly_its_three_steps(tmp_path):
    profiler = StepProfiler(first=2, run_dir=tmp_path, rank=1)
    for done in range(5):
        profiler.before_step(done)
        with torch.profiler.record_function(f"marker_step{done + 1}"):
            torch.randn(64, 64) @ torch.randn(64, 64)
        profiler.after_step(done + 1)
    profiler.close()  # nothing left open: no second write
    trace = json.loads((tmp_path / "profile" / "rank1.trace.json").read_text())
    names = {event.get("name") for event in trace["traceEvents"]}
    assert {"marker_step2", "marker_step3", "marker_step4"} <= names
    assert not {"marker_step1", "marker_step5"} & names
    assert "aten::mm" in (tmp_path / "profile" / "rank1.top.txt").read_text()


def test_profiling_is_off_by_default_and_negative_steps_are_refused(tmp_path):
    profiler = StepProfiler(first=load_config("tiny").train.profile_step, run_dir=tmp_path, rank=0)
    for done in range(4):
        profiler.before_step(done)
        profiler.after_step(done + 1)
    profiler.close()
    assert not (tmp_path / "profile").exists()
    with pytest.raises(ConfigError, match="train.profile_step"):
        load_config("tiny", ["train.profile_step=-1"])


def test_the_train_stage_profiles_every_rank_and_a_window_cut_by_the_end(prepared, tmp_path):
    root, _, _ = prepared
    proc = run_deepspeed(["--module", "pipeline.train", "--config", "tiny", f"run.dir={tmp_path}/run",
                          "model.size=llama-nano", "train.steps=3", "train.warmup_steps=1", "train.profile_step=2", "train.eval_batches=1",
                          "train.save_hf=false", *data_overrides(root)])
    assert "[profile] steps 2-4" in proc.stdout
    for rank in (0, 1):
        assert "aten::" in (tmp_path / "run" / "profile" / f"rank{rank}.top.txt").read_text()
        assert json.loads((tmp_path / "run" / "profile" / f"rank{rank}.trace.json").read_text())["traceEvents"]
