"""Downstream evaluation on 2 ranks: in the training loop under ZeRO-3, through `python -m pipeline.evaluate`
and through lm-eval's own HF backend, the same numbers; the grow stage reports the donor's, the lossless
start's (the same: it computes the donor's function) and the operator's."""

import json

import pytest

from conftest import data_overrides, run_deepspeed
from pipeline.metrics import read_metrics
from test_downstream import run_hf_backend

TASKS = ["eval.tasks=corpus_choice,corpus_next", "eval.corpus_items=40"]


def close(a: dict, b: dict) -> bool:
    """Accuracies equal; perplexities within float noise (ZeRO-3's gathered matmuls vs a plain model's)."""
    assert a.keys() == b.keys()
    return all(a[k] == pytest.approx(b[k], rel=1e-4) if k.endswith("perplexity") else a[k] == b[k] for k in a)


@pytest.fixture(scope="module")
def trained(prepared, tmp_path_factory):
    """A llama-nano trained 3 steps on 2 ranks under ZeRO-3, evaluated in the loop at steps 0 and 3."""
    root, _, _ = prepared
    run_dir = tmp_path_factory.mktemp("downstream") / "train"
    run_deepspeed(["--module", "pipeline.train", "--config", "tiny", f"run.dir={run_dir}", *data_overrides(root),
                   "model.size=llama-nano", "train.steps=3", "train.warmup_steps=1", "train.deepspeed_config=zero3",
                   "eval.interval=3", *TASKS])
    return run_dir


@pytest.mark.distributed
def test_in_the_loop_the_entry_point_and_lm_evals_hf_backend_agree(prepared, trained):
    root, _, _ = prepared
    records = [r for r in read_metrics(trained) if any(k.startswith("eval/") for k in r)]
    assert [r["step"] for r in records] == [0, 3]
    in_loop = {k: v for k, v in records[-1].items() if k.startswith("eval/")}
    assert set(in_loop) == {"eval/corpus_choice/acc", "eval/corpus_choice/acc_norm", "eval/corpus_next/acc",
                            "eval/corpus_next/perplexity"}
    run_deepspeed(["--module", "pipeline.evaluate", "--config", "tiny", "--model", str(trained / "hf"),
                   *data_overrides(root), *TASKS])
    entry_point = json.loads((trained / "hf" / "eval" / "results.json").read_text())["metrics"]
    assert (trained / "hf" / "eval" / "results.md").read_text().startswith("|")
    hf_backend = run_hf_backend(trained / "hf", root / "packed" / "eval_tasks" / "40", ["corpus_choice", "corpus_next"])
    from pipeline.downstream import scalars
    assert close(in_loop, entry_point)
    assert close(in_loop, scalars(hf_backend))


@pytest.mark.distributed
def test_the_grow_report_shows_the_donor_the_lossless_start_and_the_operator(prepared, trained, tmp_path):
    root, _, _ = prepared
    run_dir = tmp_path / "grow"
    run_deepspeed(["--module", "pipeline.grow", "--config", "tiny", f"run.dir={run_dir}", *data_overrides(root),
                   f"grow.donor={trained / 'hf'}", "grow.steps=2", "grow.warmup_steps=1", "train.eval_interval=2",
                   "eval.interval=2", *TASKS])
    report = json.loads((run_dir / "report.json").read_text())["downstream"]
    assert report["donor"].keys() == report["heuristic_init"].keys() == report["after_operator_training"].keys()
    assert close(report["donor"], report["heuristic_init"])  # identity+lossless: the donor's function
    last = [r for r in read_metrics(trained) if any(k.startswith("eval/") for k in r)][-1]
    donor_in_its_own_run = {k[len("eval/"):]: v for k, v in last.items() if k.startswith("eval/")}
    assert close(report["donor"], donor_in_its_own_run)
