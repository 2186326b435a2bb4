"""`python -m pipeline.export`: a training checkpoint (ZeRO 0, 2, 3; GPT-2 tied, LLaMA untied) becomes an
HF model dir whose logits equal those of the weights the run ended with."""

import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM

from conftest import ROOT, data_overrides, run_deepspeed
from pipeline.data.loader import PackedSamples, validation_batches
from pipeline.metrics import read_metrics

pytestmark = pytest.mark.distributed

RUN = ["train.steps=6", "train.warmup_steps=2", "train.eval_interval=6", "train.eval_batches=2",
       "train.checkpoint_interval=3", "train.keep_checkpoints=0"]


def export(*args):
    return subprocess.run([sys.executable, "-m", "pipeline.export", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True)


@pytest.mark.parametrize("ds_config, size", [("zero2", "gpt2-nano"), ("zero3", "llama-nano"), ("zero0", "llama-nano")])
def test_exported_checkpoint_has_the_training_models_logits(prepared, tmp_path, ds_config, size):
    root, _, _ = prepared
    run_dir = tmp_path / "run"
    run_deepspeed(["--module", "pipeline.train", "--config", "tiny", f"run.dir={run_dir}", *data_overrides(root),
                   *RUN, f"train.deepspeed_config={ds_config}", f"model.size={size}"])
    done = export("--run", run_dir)  # the newest checkpoint: the final weights, also in <run>/hf
    assert done.returncode == 0, done.stderr[-3000:]
    exported = AutoModelForCausalLM.from_pretrained(run_dir / "export" / "step6").eval()
    final = AutoModelForCausalLM.from_pretrained(run_dir / "hf").eval()
    assert exported.config.tie_word_embeddings == (size == "gpt2-nano")
    samples = PackedSamples(root / "packed", "validation")
    batches = [b for rank in (0, 1) for b in validation_batches(samples, 8, 2, rank, 2)]
    with torch.no_grad():
        for batch in batches:
            assert torch.equal(exported(batch).logits, final(batch).logits)
        # and the validation loss the training engine logged at the last step
        losses = [exported(batch, labels=batch).loss.item() for batch in batches]
    logged = [r["val/loss"] for r in read_metrics(run_dir) if "val/loss" in r][-1]
    assert sum(losses) / len(losses) == pytest.approx(logged, rel=1e-5)
    # an earlier checkpoint exports too, to a chosen dir; an existing non-empty dir is refused
    assert export("--run", run_dir, "--tag", "step3", "--out", tmp_path / "step3").returncode == 0
    refused = export("--run", run_dir, "--tag", "step3", "--out", tmp_path / "step3")
    assert refused.returncode != 0 and "not empty" in refused.stderr
