"""`python -m pipeline.export`: a training checkpoint (ZeRO 0, 2, 3; GPT-2 tied, LLaMA untied) becomes an
HF model dir whose logits equal those of the weights the run ended with."""

import json
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
    # each export records where its data order ended (3 and 6 steps of 8 samples x 2 ranks), as the final hf does
    positions = [json.loads((d / "data_position.json").read_text())["next_position"]
                 for d in (tmp_path / "step3", run_dir / "export" / "step6", run_dir / "hf")]
    assert positions == [3 * 16, 6 * 16, 6 * 16]
    refused = export("--run", run_dir, "--tag", "step3", "--out", tmp_path / "step3")
    assert refused.returncode != 0 and "not empty" in refused.stderr
    if ds_config == "zero0":  # a prune round's checkpoint holds the (masked) model too; a grow one does not
        progress = run_dir / "checkpoints" / "step3" / "progress.json"
        for stage, exported in (("prune round1-ticket", True), ("grow", False)):
            progress.write_text(json.dumps({**json.loads(progress.read_text()), "stage": stage}))
            done = export("--run", run_dir, "--tag", "step3", "--out", tmp_path / stage.replace(" ", "-"))
            assert (done.returncode == 0) == exported, done.stderr[-2000:]
        assert "is a grow checkpoint" in done.stderr


def test_hf_files_are_written_as_they_come_in_bounded_shards(prepared, tmp_path):
    """write_hf_files takes weights one at a time (a generator, as the grow export produces them) and
    cuts shards at max_shard_bytes; from_pretrained loads the sharded dir as the same model."""
    from safetensors import safe_open

    from pipeline import checkpoint
    from pipeline.data.tokenizer import load_tokenizer
    from pipeline.models.hf import build_model, hf_config
    from pipeline.models.sizes import SIZES
    _, _, meta = prepared
    torch.manual_seed(0)
    model = build_model(hf_config(SIZES["llama-nano"], 2048, {}))
    tokenizer = load_tokenizer(meta["tokenizer"])
    produced = []

    def weights():
        for name, value in model.state_dict().items():
            produced.append(name)
            yield name, value

    checkpoint.write_hf_files(weights(), model.config, tokenizer, tmp_path, max_shard_bytes=600_000)
    shards = sorted(p.name for p in tmp_path.glob("*.safetensors"))
    assert len(shards) > 3 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    for shard in shards:  # each shard within the bound unless it holds one larger tensor
        with safe_open(tmp_path / shard, "pt") as f:
            sizes = [f.get_tensor(k).numel() * 4 for k in f.keys()]
        assert sum(sizes) <= 600_000 or len(sizes) == 1
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    ids = torch.randint(0, 2048, (1, 16))
    assert torch.equal(loaded(ids).logits, model(ids).logits)
    assert produced == list(model.state_dict())
    # exporting again into the same dir replaces the earlier files: a single-file export after a
    # sharded one leaves no stale shards or index, and a sharded one after it no model.safetensors
    # (from_pretrained would load that one first)
    torch.manual_seed(1)
    other = build_model(hf_config(SIZES["llama-nano"], 2048, {}))
    checkpoint.write_hf_files(other.state_dict().items(), other.config, tokenizer, tmp_path)
    assert sorted(p.name for p in tmp_path.glob("model*")) == ["model.safetensors"]
    checkpoint.write_hf_files(model.state_dict().items(), model.config, tokenizer, tmp_path, max_shard_bytes=600_000)
    assert not (tmp_path / "model.safetensors").exists()
    assert torch.equal(AutoModelForCausalLM.from_pretrained(tmp_path)(ids).logits, model(ids).logits)


STREAMED_EXPORT = """
import resource, sys
from pathlib import Path
from types import SimpleNamespace
import torch
from pipeline.checkpoint import write_hf_files
saver = SimpleNamespace(save_pretrained=lambda out_dir: None)
def weights():  # 24 tensors of 25 MB, each made when asked for, mixed dtypes
    for i in range(24):
        dtype = torch.bfloat16 if i % 2 else torch.float32
        yield f"w{i}", torch.full((25_000_000 // dtype.itemsize,), float(i), dtype=dtype)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
write_hf_files(weights(), saver, saver, Path(sys.argv[1]))
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024)
"""


def test_hf_export_holds_one_tensor_at_a_time(tmp_path):
    """The export writes each tensor as the generator yields it: its peak memory grows by about one
    or two tensors (25 MB each, plus what the allocator keeps), not by the shard (600 MB; safetensors'
    save_file needs the whole shard at once: +600 MB measured), and the file reads back exactly."""
    from safetensors import safe_open
    out = subprocess.run([sys.executable, "-c", STREAMED_EXPORT, str(tmp_path)], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout
    assert int(out.split()[-1]) < 200e6
    with safe_open(tmp_path / "model.safetensors", "pt") as f:
        assert sorted(f.keys()) == sorted(f"w{i}" for i in range(24))
        for i in range(24):
            value = f.get_tensor(f"w{i}")
            assert value.dtype == (torch.bfloat16 if i % 2 else torch.float32) and torch.all(value == i)


def test_hf_export_refuses_a_tensor_name_twice(tmp_path):
    """A repeated name would leave its first bytes unreferenced in the file: safetensors rejects that."""
    from types import SimpleNamespace

    from pipeline.checkpoint import write_hf_files
    saver = SimpleNamespace(save_pretrained=lambda out_dir: None)
    with pytest.raises(ValueError, match="'w' written twice"):
        write_hf_files([("w", torch.ones(3)), ("w", torch.zeros(3))], saver, saver, tmp_path)
