"""Continued pretraining from pretrained weights (train.init_from): the continued schedule, the moment
warm-up (LR-0 steps that leave the weights bit-identical) and exact resume through it."""

import json
import subprocess
import sys

import pytest
import torch

from conftest import ROOT, data_overrides, run_deepspeed
from pipeline.config import ConfigError, load_config, schedule_for_start
from pipeline.engine import warmup_cosine
from pipeline.metrics import read_metrics
from pipeline.models.hf import HFWeights


def test_a_random_init_keeps_the_recipe_schedule():
    t = load_config("tiny").train
    assert schedule_for_start(t) is t


def test_a_pretrained_start_takes_the_continued_schedule(tmp_path):
    t = load_config("tiny", ["train.init_from=x", "model.size=llama-micro"]).train
    resolved = schedule_for_start(t)
    c = t.continued
    assert resolved.lr == t.lr * c.lr_ratio and resolved.warmup_steps == c.warmup_steps
    assert resolved.moment_warmup_steps == min(c.moment_warmup_steps, t.steps // 10)
    assert schedule_for_start(t, carries_moments=True).moment_warmup_steps == 0  # moments need no warm-up
    assert schedule_for_start(resolved) == resolved  # a prune round from rewound weights replays it
    off = load_config("tiny", ["train.init_from=x", "model.size=llama-micro", "train.continued.enabled=false"]).train
    assert schedule_for_start(off) is off


@pytest.mark.parametrize("overrides, message", [
    (["train.continued.lr_ratio=0"], "lr_ratio > 0"),
    (["train.init_from=x", "train.continued.warmup_steps=300"], "train.continued.warmup_steps=300 must be in"),
    (["train.moment_warmup_steps=190"], "train.moment_warmup_steps=190 must be in"),
    (["train.init_optimizer=warm"], "train.init_optimizer must be one of"),
])
def test_bad_continued_settings_are_refused(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config("tiny", ["model.size=llama-micro", *overrides])


def test_moment_warmup_holds_the_lr_at_zero_then_runs_the_schedule():
    t = load_config("tiny", ["train.steps=50", "train.warmup_steps=5", "train.moment_warmup_steps=10"]).train
    factor = warmup_cosine(t)
    assert [factor(s) for s in range(10)] == [0.0] * 10
    assert factor(10) == pytest.approx(1 / 5) and factor(14) == pytest.approx(1.0)
    assert factor(49) == pytest.approx(t.min_lr_ratio)


RUN = ["train.steps=8", "train.eval_interval=4", "train.eval_batches=2", "train.log_interval=1",
       "train.checkpoint_interval=3", "train.deepspeed_config=zero2"]


def train(run_dir, root, *extra, flags=()):
    return run_deepspeed(["--module", "pipeline.train", "--config", "tiny", *flags, f"run.dir={run_dir}",
                          *data_overrides(root), *RUN, *extra])


@pytest.mark.distributed
def test_moment_warmup_leaves_the_weights_bit_identical_and_resumes_exactly(prepared, tmp_path):
    root, _, _ = prepared
    donor = tmp_path / "donor"
    train(donor, root, "model.size=llama-nano", "train.warmup_steps=2")
    start = ["model.size=null", f"train.init_from={donor}/hf", "train.init_optimizer=fresh",
             "train.continued.moment_warmup_steps=3", "train.steps=30"]  # at most a tenth of the steps: 3
    train(tmp_path / "warm", root, *start, flags=["--until-step", "3"])
    lrs = [r["train/lr"] for r in read_metrics(tmp_path / "warm") if "train/lr" in r]
    assert lrs == [0.0, 0.0, 0.0]
    subprocess.run([sys.executable, "-m", "pipeline.export", "--run", str(tmp_path / "warm"), "--out",
                    str(tmp_path / "at3")], check=True, cwd=ROOT)
    before, after = HFWeights(donor / "hf"), HFWeights(tmp_path / "at3")
    for name in before.files:
        assert torch.equal(before.get(name), after.get(name)), name
    # the run goes on past the warm-up as an uninterrupted run does, bit for bit
    train(tmp_path / "warm", root, *start, flags=["--resume", "auto", "--until-step", "6"])
    train(tmp_path / "whole", root, *start, flags=["--until-step", "6"])
    strip = [[{k: v for k, v in r.items() if not k.startswith("perf/")} for r in read_metrics(tmp_path / d)]
             for d in ("warm", "whole")]
    assert strip[0] == strip[1]
    assert [r["train/lr"] for r in read_metrics(tmp_path / "whole") if "train/lr" in r][3] > 0


def test_continued_benchmark_runs_each_mode_from_both_models(prepared, tmp_path):
    """The benchmark's plumbing on a tiny donor and its lossless grown model, 2 steps per mode, 1 rank."""
    root, _, _ = prepared
    donor, grown = tmp_path / "donor", tmp_path / "grow"
    base = [*data_overrides(root), "train.eval_batches=1", "train.deepspeed_config=zero0"]
    subprocess.run([sys.executable, "-m", "pipeline.train", "--config", "tiny", f"run.dir={donor}", *base,
                    "model.size=llama-nano", "train.steps=4", "train.warmup_steps=1"], check=True, cwd=ROOT,
                   capture_output=True)
    subprocess.run([sys.executable, "-m", "pipeline.grow", "--config", "tiny", f"run.dir={grown}", *base,
                    "model.size=llama-nano", "model.hidden=192", "model.heads=6", "model.kv_heads=3",
                    f"grow.donor={donor}/hf", "grow.steps=0"], check=True, cwd=ROOT, capture_output=True)
    out = tmp_path / "bench"

    def bench_command(modes, bench_out):
        return [sys.executable, "-m", "pipeline.bench", "continued", "--config", "tiny", "--donor", f"{donor}/hf",
                "--grown", f"{grown}/hf", "--modes", modes, "--steps", "2", "--out", str(bench_out), *base,
                "train.steps=20", "train.eval_interval=1"]

    command = bench_command("recipe,at-once,default", out)
    first = subprocess.run(command, check=True, cwd=ROOT, capture_output=True, text=True)
    results = json.loads((out / "results.json").read_text())["results"]
    for model in ("grown", "donor"):
        for mode in ("recipe", "default"):
            row = results[model][mode]
            assert row["steps"] == [0, 1, 2] and row["climb"] == max(row["val_loss"]) - row["val_loss"][0]
    assert "at-once" in results["grown"] and "at-once" not in results["donor"]  # a donor has no new units
    trained = [line.split("/")[-1] for line in first.stdout.splitlines() if line.startswith("[bench] train ->")]
    assert trained == ["grown-recipe", "donor-recipe", "grown-at-once", "grown-default", "donor-default"]
    assert results["grown"]["default"]["step0_loss"] == pytest.approx(results["donor"]["default"]["step0_loss"], rel=1e-5)
    assert "AdamW starts from" in (out / "grown-default.log").read_text()
    assert "AdamW starts from" not in (out / "grown-recipe.log").read_text()
    assert (out / "loss_curves.png").stat().st_size > 0 and "| grown | `default` |" in (out / "results.md").read_text()
    again = subprocess.run(command, check=True, cwd=ROOT, capture_output=True, text=True)
    assert again.stdout.count("finished earlier, reused") == 5 and "reused" not in first.stdout
    # a mode this recipe cannot run (no room for the moment warm-up in 20 steps) is refused before any run
    refused = subprocess.run(bench_command("default,warmup", tmp_path / "refused"), cwd=ROOT, capture_output=True,
                             text=True)
    assert refused.returncode != 0 and "mode warmup for the grown model" in refused.stderr
    assert not (tmp_path / "refused").exists()


def test_a_run_from_before_the_continued_schedule_is_not_resumed_under_it():
    """A run from train.init_from saved before train.continued existed used the recipe's schedule: resuming
    it under the continued one would change its LR mid-run, so the change is named (a random-init run's
    is not: it never used the continued schedule)."""
    from pipeline.resume import breaking_changes
    current = load_config("tiny", ["train.init_from=x", "model.size=llama-micro"]).to_dict()
    old = load_config("tiny", ["train.init_from=x", "model.size=llama-micro"]).to_dict()
    del old["train"]["continued"]
    assert breaking_changes(old, current, ()) == ["train.continued.enabled: False -> True",
                                                  "train.continued.lr_ratio: 0.1 -> 1.0"]  # tiny's own ratio
    scratch = load_config("tiny").to_dict()
    old_scratch = load_config("tiny").to_dict()
    del old_scratch["train"]["continued"]
    assert breaking_changes(old_scratch, scratch, ()) == []


def test_a_run_from_before_the_new_units_fade_in_is_not_resumed_with_it():
    """A run saved before train.continued.new_units_warmup_steps existed trained new units at once."""
    from pipeline.resume import breaking_changes
    current = load_config("tiny", ["train.init_from=x", "model.size=llama-micro"]).to_dict()
    old = load_config("tiny", ["train.init_from=x", "model.size=llama-micro"]).to_dict()
    del old["train"]["continued"]["new_units_warmup_steps"]
    assert breaking_changes(old, current, ()) == ["train.continued.new_units_warmup_steps: 0 -> 100"]
    old["train"]["continued"]["new_units_warmup_steps"] = 100
    assert breaking_changes(old, current, ()) == []


def test_the_continued_settings_do_not_invalidate_a_random_init_run():
    """A benchmark that changes train.continued reuses its scratch runs (they never read it); a run from
    a pretrained start still names the change."""
    from pipeline.resume import breaking_changes
    overrides = ["train.continued.lr_ratio=0.5", "train.init_optimizer=fresh"]
    scratch, changed = load_config("tiny").to_dict(), load_config("tiny", overrides).to_dict()
    assert breaking_changes(scratch, changed, ()) == []
    grown = load_config("tiny", ["train.init_from=x"]).to_dict()
    grown_changed = load_config("tiny", ["train.init_from=x", *overrides]).to_dict()
    assert breaking_changes(grown, grown_changed, ()) == ["train.continued.lr_ratio: 1.0 -> 0.5",
                                                          "train.init_optimizer: 'auto' -> 'fresh'"]


def test_the_continued_benchmark_reruns_a_mode_that_failed_before_it_logged(tmp_path, monkeypatch):
    """A run refused at its checks (say, disk space) leaves its config but no metrics: the benchmark run
    again trains it instead of failing on the missing metrics."""
    from pipeline.bench import continued

    run_dir = tmp_path / "grown-default"
    run_dir.mkdir()
    load_config("tiny", [f"run.dir={run_dir}"]).save(run_dir / "config.yaml")
    launched = []

    def train(module, args, ranks, log):
        launched.append(module)
        (run_dir / "metrics.jsonl").write_text(json.dumps({"step": 2, "val/loss": 1.0}) + "\n")

    monkeypatch.setattr(continued, "run_stage_job", train)
    assert continued.run_mode("tiny", [], run_dir, 2, 1) == [{"step": 2, "val/loss": 1.0}]
    assert launched == ["train"]
