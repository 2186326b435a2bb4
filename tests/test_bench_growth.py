"""The growth benchmark: crossing interpolation, savings accounting, FLOPs on known shapes, bad input,
and a miniature run of `python -m pipeline.bench growth` that must produce the report files."""

import json
import re
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT, data_overrides
from pipeline.bench.growth import Bench, parse_arms
from pipeline.bench.growth_report import Curve, crossing, markdown_table, seed_result, summarize
from pipeline.config import BenchConfig, ConfigError, load_config
from pipeline.flops import training_flops_per_token
from pipeline.models.sizes import SIZES


def test_crossing_interpolates_between_the_evaluations_around_it():
    xs, losses = [0.0, 10.0, 20.0, 30.0], [5.0, 3.0, 4.0, 2.0]
    assert crossing(xs, losses, 3.5) == pytest.approx(7.5)  # first crossing, linear between x=0 and x=10
    assert crossing(xs, losses, 2.5) == pytest.approx(20 + 10 * (4.0 - 2.5) / (4.0 - 2.0))
    assert crossing(xs, losses, 6.0) == 0.0  # already below at the first evaluation
    assert crossing(xs, losses, 2.0) == 30.0
    assert crossing(xs, losses, 1.0) is None  # never reached


def test_savings_exclude_and_include_the_donor():
    steps = [0, 50, 100]
    scratch = Curve([0, 100, 200], [0, 10, 20], [8.0, 5.0, 4.0], steps=steps)
    operator = Curve([0, 50], [0, 6], [7.0, 4.5], steps=[0, 10])  # 50 FLOPs / 6 s of operator training, then the target's
    grown = operator.then(Curve([50, 100, 150], [6, 11, 16], [4.5, 4.0, 3.5], steps=steps))
    never = Curve([0, 100, 200], [0, 10, 20], [8.0, 6.0, 5.0], steps=steps)
    result = seed_result({"scratch": scratch, "grown": grown, "never": never},
                         {"scratch": {"flops": 0, "seconds": 0}, "grown": {"flops": 30, "seconds": 4},
                          "never": {"flops": 0, "seconds": 0}})
    assert result["scratch"]["flops_saving_excl_donor"] == 0.0 and result["scratch"]["target_loss"] == 4.0
    g = result["grown"]
    assert g["flops_to_target"] == 100 and g["flops_saving_excl_donor"] == pytest.approx(0.5)
    assert g["flops_saving_free_operator"] == pytest.approx(1 - 50 / 200)  # 50 of the 100 FLOPs were the operator's
    assert result["scratch"]["flops_saving_free_operator"] == 0.0
    assert g["flops_saving_incl_donor"] == pytest.approx(1 - 130 / 200)
    assert g["seconds_saving_excl_donor"] == pytest.approx(1 - 11 / 20)
    assert g["seconds_saving_incl_donor"] == pytest.approx(1 - 15 / 20)
    assert g["step0_loss"] == 7.0 and g["final_loss"] == 3.5
    assert g["climb"] == 0.0 and result["scratch"]["climb"] == 0.0  # the operator's 7.0 is not the target's start
    below = Curve([0, 50], [0, 6], [3.9, 3.8], steps=[0, 10]).then(
        Curve([50, 100, 150, 200], [6, 11, 16, 21], [3.8, 4.1, 3.9, 4.5], steps=[0, 50, 100, 150]))  # a donor below the target
    started_below = seed_result({"scratch": scratch, "below": below}, {"scratch": {"flops": 0, "seconds": 0},
                                                                       "below": {"flops": 30, "seconds": 4}})["below"]
    assert started_below["flops_to_target"] == 0 and started_below["flops_saving_free_operator"] == 1.0
    assert started_below["climb"] == pytest.approx(0.3)  # 4.1 - 3.8 within the first 100 steps (4.5 at 150 is not)
    assert result["never"]["flops_to_target"] is None and result["never"]["flops_saving_excl_donor"] is None

    second = seed_result({"scratch": scratch, "grown": Curve([50, 100, 150], [6, 11, 16], [4.0, 3.9, 3.5], steps=steps),
                          "never": never}, {arm: {"flops": 0, "seconds": 0} for arm in ("scratch", "grown", "never")})
    summary = summarize([result, second])
    savings = summary["grown"]["flops_saving_excl_donor"]
    assert savings["values"] == [pytest.approx(0.5), pytest.approx(0.75)]
    assert savings["mean"] == pytest.approx(0.625) and savings["std"] == pytest.approx(0.1767767, rel=1e-6)
    assert summary["never"]["flops_to_target"]["mean"] is None  # not reached on a seed: no mean


def test_downstream_scores_at_the_end_become_columns():
    """With eval.tasks in the loop, each arm's target scores at its end are a column (a grown arm's are its
    training's, not its operator's); a score some seed lacks is left out, an arm without it shows "-"."""
    def records(loss0, loss1, acc=None):
        evaluated = {} if acc is None else {"eval/corpus_choice/acc": acc, "eval/corpus_choice/donor_acc": 0.1}
        return [{"step": 0, "val/loss": loss0, "progress/model_flops": 0, "perf/train_seconds": 0, **evaluated},
                {"step": 10, "val/loss": loss1, "progress/model_flops": 10, "perf/train_seconds": 1,
                 **({} if acc is None else {"eval/corpus_choice/acc": acc + 0.1})}]
    scratch = Curve.from_records(records(8.0, 4.0, acc=0.2))
    grown = Curve.from_records(records(4.5, 4.4, acc=0.3)).then(Curve.from_records(records(4.4, 3.5, acc=0.5), 10, 1))
    plain = Curve.from_records(records(8.0, 3.9))
    costs = {arm: {"flops": 0, "seconds": 0} for arm in ("scratch", "grown", "plain")}
    seed = seed_result({"scratch": scratch, "grown": grown, "plain": plain}, costs)
    assert seed["grown"]["final corpus_choice/acc"] == pytest.approx(0.6)
    assert seed["scratch"]["final corpus_choice/acc"] == pytest.approx(0.3) and "final corpus_choice/acc" not in seed["plain"]
    table = markdown_table(summarize([seed]), {})
    assert table.splitlines()[0].endswith(" final corpus_choice/acc |")
    assert table.splitlines()[3].endswith(" 0.6 |") and table.splitlines()[4].endswith(" - |")


def test_training_flops_of_a_known_shape():
    # llama-nano (2 layers, 128 wide, 4 query / 2 KV heads of 32, SwiGLU 352), 2048 vocab, 128 context:
    # N = 2 * (q,o: 2*128*128 + k,v: 2*128*64 + 3*128*352) + head 2048*128 = 630,784; attention 12*L*H*Q*T
    assert training_flops_per_token(SIZES["llama-nano"], 2048, 128) == 6 * 630_784 + 12 * 2 * 4 * 32 * 128


@pytest.mark.parametrize("arms, ligo_init, message", [
    ("stack+copy,ligo", "best", "need 'scratch'"),
    ("scratch,stack+widen", "best", "unknown: ['stack+widen']"),
    ("scratch,scratch", "best", "need 'scratch'"),
    ("scratch,ligo", "best", "has none"),
    ("scratch,ligo", "stack", "use 'best' or depth+width"),
    ("scratch,ligo-from-stack", "best", "unknown: ['ligo-from-stack']"),
])
def test_bad_arm_lists_are_refused(arms, ligo_init, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_arms(BenchConfig(arms=arms, ligo_init=ligo_init))


def test_arms_run_scratch_then_heuristics_then_ligo():
    order = parse_arms(BenchConfig(arms="ligo-untrained-donor,ligo-from-stack+copy,ligo,stack+aki,scratch,"
                                        "identity+lossless,ligo-from-identity+lossless"))
    assert order == ["scratch", "stack+aki", "identity+lossless", "ligo-from-stack+copy", "ligo",
                     "ligo-from-identity+lossless", "ligo-untrained-donor"]
    bench = Bench("bench-growth", ["bench.arms=scratch,ligo-from-identity+lossless"], ROOT / "runs" / "unused", 1, False)
    arm = bench.arm("ligo-from-identity+lossless")
    assert arm.init == "identity+lossless" and arm.operator_steps and not arm.untrained_donor


def test_best_heuristic_is_the_one_with_fewest_flops_to_target():
    bench = Bench("bench-growth", ["bench.arms=scratch,stack+copy,stack+aki,ligo"], ROOT / "runs" / "unused", 1, False)
    curves = {"scratch": Curve([0, 100, 200], [0, 1, 2], [8.0, 5.0, 4.0]),
              # stack+aki ends lower, stack+copy reaches the scratch loss 4.0 sooner (at 50 vs 75 FLOPs)
              "stack+copy": Curve([0, 50, 200], [0, 1, 2], [4.5, 4.0, 3.6]),
              "stack+aki": Curve([0, 50, 100, 200], [0, 1, 2, 3], [6.0, 4.5, 3.5, 3.5])}
    arm = bench.arm_with_best_init(bench.arm("ligo"), curves)
    assert bench.ligo_init == "stack+copy" and arm.init == "stack+copy" and arm.operator_steps


def test_a_copied_benchmark_dir_reuses_its_grown_arms(tmp_path):
    """Stages read their inputs (donor, grown model) from inside --out; in a copy those paths point into
    the copy, which holds the same files, so the stages count as finished."""
    def stage_config(out, init_from):
        return load_config("bench-growth", [f"run.dir={out / 'seed0' / 'ligo' / 'train'}", f"train.init_from={init_from}"])
    old, new = tmp_path / "bench", tmp_path / "copy"
    run_dir = old / "seed0" / "ligo" / "train"
    (run_dir / "hf").mkdir(parents=True)
    (run_dir / "hf" / "config.json").write_text("{}")
    stage_config(old, old / "seed0" / "ligo" / "grow" / "hf").save(run_dir / "config.yaml")
    shutil.copytree(old, new)
    bench = Bench("bench-growth", [], new, 1, False)
    copied = new / "seed0" / "ligo" / "train"
    assert bench._finished(copied, stage_config(new, new / "seed0" / "ligo" / "grow" / "hf"), ())
    assert not bench._finished(copied, stage_config(new, tmp_path / "elsewhere" / "hf"), ())


def run_bench(out, prepared_root, extra=()):
    cmd = [sys.executable, "-m", "pipeline.bench", "growth", "--config", "tiny", "--out", str(out),
           *data_overrides(prepared_root), *extra]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)


@pytest.mark.integration
def test_bench_refuses_missing_data_before_training(tmp_path):
    proc = run_bench(tmp_path / "bench", tmp_path / "nothing-prepared")
    assert proc.returncode != 0 and "no prepared data" in proc.stderr and "pipeline.prepare" in proc.stderr
    assert not (tmp_path / "bench").exists()


def test_miniature_benchmark_writes_its_report(prepared, tmp_path):
    root, _, meta = prepared
    out = tmp_path / "bench"
    steps = ["train.steps=4", "train.warmup_steps=1", "train.eval_interval=2", "train.eval_batches=1",
             "train.checkpoint_interval=4", "train.log_interval=2", "bench.donor_steps=3", "grow.steps=2",
             "grow.warmup_steps=1", "train.deepspeed_config=zero0",
             "bench.arms=scratch,stack+copy,interpolate+copy,ligo,ligo-official,ligo-untrained-donor,donor-continued"]
    proc = run_bench(out, root, steps)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    arms = ["scratch", "stack+copy", "interpolate+copy", "ligo", "ligo-official", "ligo-untrained-donor",
            "donor-continued"]
    assert list(results["arms"]) == arms and results["ligo_init"] in ("stack+copy", "interpolate+copy")
    for name in ("loss_vs_flops.png", "loss_vs_time.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = (out / "results.md").read_text()
    assert all(f"| `{arm}` |" in table for arm in arms)

    # FLOPs come from the shapes: donor and scratch are plain training, 8 x 128-token samples per step
    tokens_per_step, vocab = 8 * 128, meta["vocab_size"]
    donor = results["donor_cost"][0]
    assert donor["flops"] == 3 * tokens_per_step * training_flops_per_token(SIZES["llama-nano"], vocab, 128)
    curves = results["curves"]
    scratch = curves["scratch"][0]
    assert scratch["flops"][-1] == 4 * tokens_per_step * training_flops_per_token(SIZES["llama-micro"], vocab, 128)
    assert len(scratch["loss"]) == 3 and scratch["seconds"][-1] > 0  # evaluations at steps 0, 2, 4
    # a heuristic arm costs nothing before training; a LiGO arm's training starts after its operator's cost
    assert curves["stack+copy"][0]["flops"][0] == 0 and curves["stack+copy"][0]["flops"][-1] == scratch["flops"][-1]
    ligo = curves["ligo"][0]
    assert ligo["flops"][-1] > scratch["flops"][-1] and len(ligo["loss"]) == 2 + 3
    # the continued donor spends the target's training FLOPs in whole donor steps
    donor_step = tokens_per_step * training_flops_per_token(SIZES["llama-nano"], vocab, 128)
    continued = curves["donor-continued"][0]
    assert continued["flops"][0] == 0 and abs(continued["flops"][-1] - scratch["flops"][-1]) <= donor_step / 2
    seed = results["per_seed"][0]
    assert seed["scratch"]["flops_saving_excl_donor"] == 0.0 and seed["scratch"]["target_loss"] == scratch["loss"][-1]
    for arm in arms:  # including the donor can only lower a saving
        row = seed[arm]
        if row["flops_to_target"] is not None:
            assert row["flops_saving_incl_donor"] <= row["flops_saving_excl_donor"]
    assert seed["ligo-untrained-donor"]["flops_saving_incl_donor"] == seed["ligo-untrained-donor"]["flops_saving_excl_donor"]

    rerun = run_bench(out, root, steps)  # finished stages are reused, the report is rebuilt
    assert rerun.returncode == 0 and rerun.stdout.count("reused") == 1 + 1 + 2 * 5 + 1
    assert json.loads((out / "results.json").read_text())["per_seed"] == results["per_seed"]


@pytest.mark.distributed
def test_benchmark_on_2_ranks_partitions_the_operator(prepared, tmp_path):
    """--ranks 2 launches every stage through the deepspeed launcher; under ZeRO-3 each rank holds about
    half of the operator, and FLOPs follow the doubled global batch."""
    root, _, meta = prepared
    out = tmp_path / "bench"
    proc = run_bench(out, root, ["--ranks", "2", "train.deepspeed_config=zero3", "train.steps=2",
                                 "train.warmup_steps=1", "train.eval_interval=2", "train.eval_batches=1",
                                 "train.checkpoint_interval=2", "bench.donor_steps=2", "grow.steps=2",
                                 "grow.warmup_steps=1", "bench.arms=scratch,ligo", "bench.ligo_init=stack+copy"])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    tokens_per_step = 2 * 8 * 128  # 2 ranks x micro-batch 8 x 128 tokens
    flops = training_flops_per_token(SIZES["llama-micro"], meta["vocab_size"], 128)
    assert results["ranks"] == 2 and results["curves"]["scratch"][0]["flops"][-1] == 2 * tokens_per_step * flops
    report = json.loads((out / "seed0" / "ligo" / "grow" / "report.json").read_text())
    per_rank = report["operator_parameters_per_rank"]
    assert len(per_rank) == 2 and all(0.4 * report["operator_parameters"] < n < 0.6 * report["operator_parameters"]
                                      for n in per_rank)
