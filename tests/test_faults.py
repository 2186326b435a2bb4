"""Faults during training, 2 CPU ranks through the `deepspeed` launcher: kill -9 at random steps,
SIGTERM, a crash in the middle of a checkpoint save. Each time the resumed run must end exactly
where an uninterrupted run ends: the same per-step losses, LRs, grad norms, validation losses and
final weights."""

import json
import math
import os
import random
import signal
import time

import psutil
import pytest
import torch
from safetensors.torch import load_file

from conftest import data_overrides, run_deepspeed, start_deepspeed
from pipeline.checkpoint import _rng_state, _set_rng_state
from pipeline.metrics import read_metrics

pytestmark = pytest.mark.distributed

RUN = ["model.size=llama-nano", "train.steps=24", "train.warmup_steps=2", "train.eval_interval=8",
       "train.eval_batches=2", "train.log_interval=1", "train.checkpoint_interval=2", "train.keep_checkpoints=2"]


def args(run_dir, root, ds_config, flags=(), extra=()):
    return ["--module", "pipeline.train", "--config", "tiny", *flags, f"run.dir={run_dir}", *data_overrides(root),
            *RUN, f"train.deepspeed_config={ds_config}", *extra]


def deterministic(run_dir):
    return [{k: v for k, v in r.items() if not k.startswith("perf/")} for r in read_metrics(run_dir)]


def last_step(run_dir) -> int:
    path = run_dir / "metrics.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return max((int(line.split('"step": ')[1].split(",")[0]) for line in lines if line), default=-1)


def wait_for_step(proc, run_dir, step, timeout=300):
    deadline = time.time() + timeout
    while last_step(run_dir) < step:
        assert proc.poll() is None, f"the run ended before step {step}"
        assert time.time() < deadline
        time.sleep(0.02)


def assert_same_run(run_dir, reference_dir):
    assert deterministic(run_dir) == deterministic(reference_dir)
    got, expected = load_file(run_dir / "hf" / "model.safetensors"), load_file(reference_dir / "hf" / "model.safetensors")
    assert got.keys() == expected.keys() and all(torch.equal(got[k], expected[k]) for k in got)


@pytest.fixture(scope="module")
def references(prepared, tmp_path_factory):
    """One uninterrupted run per ZeRO stage, shared by the tests below."""
    root, _, _ = prepared
    cache = {}

    def reference(ds_config):
        if ds_config not in cache:
            run_dir = tmp_path_factory.mktemp(f"reference-{ds_config}")
            run_deepspeed(args(run_dir, root, ds_config))
            cache[ds_config] = run_dir
        return cache[ds_config]
    return reference


@pytest.mark.parametrize("ds_config", ["zero2", "zero3"])
def test_kill_9_at_random_steps_then_resume_is_exact(prepared, references, tmp_path, ds_config):
    root, _, _ = prepared
    reference = references(ds_config)
    rng = random.Random(ds_config)
    kill_steps = sorted(rng.sample(range(3, 22), 3))
    for kill_step in kill_steps:
        with open(tmp_path / f"kill{kill_step}.log", "w") as log:
            proc = start_deepspeed(args(tmp_path / "run", root, ds_config, ["--resume", "auto"]), output=log)
            wait_for_step(proc, tmp_path / "run", kill_step)
            os.killpg(proc.pid, signal.SIGKILL)  # the launcher and both workers, mid-step or mid-save
            proc.wait()
    run_deepspeed(args(tmp_path / "run", root, ds_config, ["--resume", "auto"]))
    assert_same_run(tmp_path / "run", reference)


def test_sigterm_checkpoints_exits_0_and_resumes_exactly(prepared, references, tmp_path):
    root, _, _ = prepared
    run_dir = tmp_path / "run"
    no_periodic = ["train.checkpoint_interval=100"]  # the only checkpoint is the one SIGTERM asks for
    proc = start_deepspeed(args(run_dir, root, "zero2", extra=no_periodic), output=open(tmp_path / "log", "w"))
    wait_for_step(proc, run_dir, 5)
    workers = [p for p in psutil.Process(proc.pid).children(recursive=True)
               if "--local_rank" in " ".join(p.cmdline())]  # not the launcher processes
    assert len(workers) == 2
    workers[1].send_signal(signal.SIGTERM)  # one rank only: both must agree to stop at the same step
    assert proc.wait(timeout=120) == 0
    output = (tmp_path / "log").read_text()
    assert "stop requested (SIGTERM/SIGINT)" in output
    tag = (run_dir / "checkpoints" / "latest").read_text()
    assert 5 <= int(tag.removeprefix("step")) < 24 and not (run_dir / "hf").exists()
    assert len(list((run_dir / "checkpoints").glob("step*"))) == 1
    run_deepspeed(args(run_dir, root, "zero2", ["--resume", "auto"], no_periodic))
    assert_same_run(run_dir, references("zero2"))


def test_crash_during_save_resumes_from_the_previous_checkpoint(prepared, references, tmp_path):
    root, _, _ = prepared
    run_dir = tmp_path / "run"
    crashed = run_deepspeed(args(run_dir, root, "zero2"), expect_ok=False,
                            env={"PIPELINE_TEST_CRASH_IN_SAVE": "step6"})  # dies after writing its files
    assert crashed.returncode != 0
    checkpoints = run_dir / "checkpoints"
    assert (checkpoints / "latest").read_text() == "step4"
    assert (checkpoints / "step6").exists()  # the incomplete save is left, never pointed to
    run_deepspeed(args(run_dir, root, "zero2", ["--resume", "auto"]))
    assert_same_run(run_dir, references("zero2"))
    # train.keep_checkpoints=2: only the newest two complete checkpoints remain
    assert sorted(p.name for p in checkpoints.iterdir() if p.name.startswith("step")) == ["step22", "step24"]


def nonfinite_run(tmp_path, root, nan_steps, *extra):
    out = tmp_path / "fingerprints"
    run_deepspeed(["tests/nonfinite_check.py", str(out), "--config", "tiny", f"run.dir={tmp_path / 'run'}",
                   *data_overrides(root), *RUN, "train.steps=8", "train.deepspeed_config=zero2", *extra],
                  env={"PIPELINE_TEST_NAN_STEPS": ",".join(map(str, nan_steps))})
    return [json.loads((tmp_path / f"fingerprints.rank{r}").read_text()) for r in (0, 1)]


def test_a_nan_loss_on_one_rank_skips_the_step_on_all_ranks(prepared, tmp_path):
    root, _, _ = prepared
    ranks = nonfinite_run(tmp_path, root, [4])
    for rank in ranks:
        assert rank["outcome"] == "finished"
        steps = rank["steps"]
        assert [s["skipped"] for s in steps] == [False] * 4 + [True] + [False] * 3
        assert steps[4]["fingerprint"] == steps[3]["fingerprint"]  # no update, not even a partial one
        assert steps[5]["fingerprint"] != steps[4]["fingerprint"]  # and training goes on
    records = read_metrics(tmp_path / "run")
    assert [r.get("train/skipped_steps_in_a_row") for r in records if r["step"] == 5] == [1]
    assert all(math.isfinite(r["train/loss"]) for r in records if "train/loss" in r and r["step"] != 5)


def test_too_many_nan_steps_stop_with_a_checkpoint_of_the_last_good_weights(prepared, tmp_path):
    root, _, _ = prepared
    ranks = nonfinite_run(tmp_path, root, [4, 5, 6, 7], "train.max_skipped_steps=1")
    for rank in ranks:
        assert rank["outcome"].startswith("halted: the loss was NaN/inf on 2 steps in a row")
        steps = rank["steps"]
        assert len(steps) == 6 and steps[5]["fingerprint"] == steps[3]["fingerprint"]
    assert (tmp_path / "run" / "checkpoints" / "latest").read_text() == "step6"


@pytest.mark.parametrize("ds_config", ["zero2", "zero3"])
def test_resume_on_1_rank_then_back_on_2_through_universal_checkpoints(prepared, references, tmp_path, ds_config):
    """2 ranks -> 1 rank (grad accumulation doubled: same global batch, same data order) -> 2 ranks.
    Not bit-identical (sums are reduced in another order), but the losses continue the reference's."""
    root, _, _ = prepared
    run_dir = tmp_path / "run"
    run_deepspeed(args(run_dir, root, ds_config, ["--until-step", "8"]))
    one_rank = run_deepspeed(args(run_dir, root, ds_config, ["--resume", "auto", "--until-step", "16"],
                                  ["train.grad_accum_steps=2"]), ranks=1)
    assert "converting" in one_rank.stdout  # (later saves removed it again: train.keep_checkpoints=2)
    run_deepspeed(args(run_dir, root, ds_config, ["--resume", "auto"]))
    got, expected = deterministic(run_dir), deterministic(references(ds_config))
    assert [r["step"] for r in got] == [r["step"] for r in expected]
    for mine, theirs in zip(got, expected):
        assert mine.get("train/lr") == theirs.get("train/lr")
        for key in ("train/loss", "val/loss"):
            if key in theirs:
                assert mine[key] == pytest.approx(theirs[key], rel=2e-3), (mine["step"], key)


def test_rng_state_from_another_kind_of_accelerator_restores_the_host_generators_only():
    """A checkpoint written on GPUs resumed here (or the reverse): the device generator's state does not
    fit this accelerator's, so it is left alone (and the resume says so); the host generators resume."""
    saved = _rng_state()
    expected = (random.random(), torch.rand(3))
    foreign = {**saved, "accelerator": torch.zeros(16, dtype=torch.uint8), "accelerator_name": "cuda"}
    assert _set_rng_state(foreign) is False
    got = (random.random(), torch.rand(3))
    assert got[0] == expected[0] and torch.equal(got[1], expected[1])
    assert _set_rng_state(saved) is True
    again = (random.random(), torch.rand(3))
    assert again[0] == expected[0] and torch.equal(again[1], expected[1])

