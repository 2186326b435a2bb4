"""Bad input to the train stage and its checkpoints: one clear error naming the problem and the fix,
raised before any model is built, and nothing in the run directory changed or deleted.

Each case resumes (or starts) a copy of one short finished 1-rank run with something wrong."""

import json
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT
from pipeline.config import ConfigError
from pipeline.resume import check_disk_space, checkpoints_to_hold

RUN = ["model.size=llama-nano", "train.steps=2", "train.warmup_steps=1", "train.eval_batches=1",
       "train.checkpoint_interval=1", "train.keep_checkpoints=0", "train.save_hf=false"]


def train(run_dir, data_dir, *extra, flags=("--resume", "auto")):
    return subprocess.run([sys.executable, "-m", "pipeline.train", "--config", "tiny", *flags, f"run.dir={run_dir}",
                           f"data.output_dir={data_dir}", *RUN, *extra], cwd=ROOT, capture_output=True, text=True)


@pytest.fixture(scope="module")
def finished(prepared, tmp_path_factory):
    """A 1-rank run with checkpoints step1 and step2, on its own copy of the prepared data."""
    root, _, _ = prepared
    base = tmp_path_factory.mktemp("finished")
    shutil.copytree(root / "packed", base / "data")
    done = train(base / "run", base / "data", flags=())
    assert done.returncode == 0, done.stderr[-3000:]
    return base


@pytest.fixture
def case(finished, tmp_path):
    shutil.copytree(finished, tmp_path, dirs_exist_ok=True)
    return tmp_path / "run", tmp_path / "data"


def snapshot(run_dir):
    return {str(p.relative_to(run_dir)): (p.stat().st_size, p.stat().st_mtime_ns) for p in run_dir.rglob("*")
            if p.is_file()}


def refused(run_dir, data_dir, message, *extra, flags=("--resume", "auto")):
    before = snapshot(run_dir)
    proc = train(run_dir, data_dir, *extra, flags=flags)
    assert proc.returncode != 0
    assert message in proc.stderr, proc.stderr[-2000:]
    assert "train error:" in proc.stderr and "Traceback" not in proc.stderr  # one clear line, no stack
    assert "[train] MFU denominator" not in proc.stdout  # refused before the engine was built
    assert snapshot(run_dir) == before  # nothing written, nothing deleted


def test_missing_checkpoint_shard(case):
    run_dir, data_dir = case
    (run_dir / "checkpoints" / "step2" / "zero_pp_rank_0_mp_rank_00_optim_states.pt").unlink()
    refused(run_dir, data_dir, "zero_pp_rank_0_mp_rank_00_optim_states.pt (missing)")


def test_truncated_checkpoint_shard(case):
    run_dir, data_dir = case
    shard = run_dir / "checkpoints" / "step2" / "mp_rank_00_model_states.pt"
    shard.write_bytes(shard.read_bytes()[:1000])
    refused(run_dir, data_dir, "mp_rank_00_model_states.pt (size changed)")


def test_checkpoint_without_its_record(case):
    run_dir, data_dir = case
    (run_dir / "checkpoints" / "step2" / "progress.json").unlink()
    refused(run_dir, data_dir, "progress.json (missing)")


def test_checkpoint_of_another_model_shape(case):
    run_dir, data_dir = case
    refused(run_dir, data_dir, "model.size: 'llama-nano' -> 'gpt2-nano'", "model.size=gpt2-nano")


def test_resume_into_another_zero_stage(case):
    run_dir, data_dir = case
    refused(run_dir, data_dir, "train.deepspeed_config: 'zero2' -> 'zero3'", "train.deepspeed_config=zero3")


def test_changed_global_batch(case):
    run_dir, data_dir = case
    refused(run_dir, data_dir, "global batch of 8 samples, this launch has 16", "train.micro_batch_size=16")


def test_data_re_prepared_since_the_checkpoint(case):
    run_dir, data_dir = case
    meta = json.loads((data_dir / "meta.json").read_text())
    (data_dir / "meta.json").write_text(json.dumps({**meta, "key": "0123456789abcdef"}))
    refused(run_dir, data_dir, "was re-prepared from other inputs")


def test_run_dir_holding_a_run_is_not_overwritten(case):
    run_dir, data_dir = case
    refused(run_dir, data_dir, "already holds a run", flags=())
    refused(run_dir, data_dir, "cannot be combined", flags=("--resume", "auto", "--overwrite"))


def test_run_dir_under_a_file(case, tmp_path):
    _, data_dir = case
    (tmp_path / "a_file").write_text("x")
    proc = train(tmp_path / "a_file" / "run", data_dir, flags=())
    assert proc.returncode != 0 and "is a file, not a directory" in proc.stderr


def test_missing_data(case, tmp_path):
    run_dir, _ = case
    refused(run_dir, tmp_path / "no-such-data", "no prepared data in")


def test_disk_space_shortfall(tmp_path):
    with pytest.raises(ConfigError, match="GB free; 4 checkpoints of"):
        check_disk_space(tmp_path, checkpoint_bytes=10 ** 18, checkpoints=4)
    free = shutil.disk_usage(tmp_path).free
    check_disk_space(tmp_path, checkpoint_bytes=free // 8, checkpoints=4)  # 4 checkpoints fit
    with pytest.raises(ConfigError, match="GB of optimizer swap files need"):
        check_disk_space(tmp_path, checkpoint_bytes=free // 8, checkpoints=4, swap_bytes=free)


def test_the_disk_budget_counts_the_checkpoints_a_run_holds():
    """keep_checkpoints=0 keeps all: the disk must hold every checkpoint still to come, not 2; a run
    that writes fewer than keep + 1 (a short run from a big model) is not refused for the rest."""
    assert checkpoints_to_hold(keep=3, first_step=0, steps=1000, interval=100) == 4  # 3 kept + 1 being written
    assert checkpoints_to_hold(keep=0, first_step=0, steps=1000, interval=100) == 10
    assert checkpoints_to_hold(keep=0, first_step=0, steps=1050, interval=100) == 11  # and the final one
    assert checkpoints_to_hold(keep=0, first_step=400, steps=1000, interval=100) == 6  # resumed at 400
    assert checkpoints_to_hold(keep=3, first_step=0, steps=20, interval=100) == 1  # only the final one
    assert checkpoints_to_hold(keep=3, first_step=850, steps=1000, interval=100) == 2  # 900 and the end
