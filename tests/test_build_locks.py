"""A DeepSpeed op build killed midway leaves its lock file, and every later launch waited on it
forever (pipeline/build_locks.py): locks nobody holds are removed, held ones are left to their build."""

import os
import shutil
import subprocess
import sys
import threading
import time

import pytest

from conftest import ROOT
from pipeline.build_locks import clear_stale_build_locks, extension_build_root


def lock_file(root, op="deepspeed_shm_comm", age_s=3600.0):
    lock = root / op / "lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    lock.touch()
    os.utime(lock, (time.time() - age_s, time.time() - age_s))
    return lock


def test_a_lock_left_by_a_killed_build_is_removed(tmp_path, capsys):
    lock = lock_file(tmp_path / "py311_cpu")  # the default root's layout
    assert clear_stale_build_locks(remove=True, root=tmp_path) == [lock]
    assert not lock.exists() and "left 60 min ago" in capsys.readouterr().out


@pytest.mark.integration
def test_a_lock_its_build_holds_open_is_kept(tmp_path):
    lock = lock_file(tmp_path)
    holder = subprocess.Popen([sys.executable, "-c", f"f = open({str(lock)!r}); print('open', flush=True); "
                               "import time; time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "open\n"
        assert clear_stale_build_locks(remove=True, root=tmp_path) == []
        assert lock.exists()
    finally:
        holder.kill()


def test_a_young_unheld_lock_is_waited_for_then_removed(tmp_path, capsys):
    """It may be a build on another node sharing the dir: removed only once older than any build."""
    lock = lock_file(tmp_path, age_s=0.0)
    start = time.monotonic()
    assert clear_stale_build_locks(remove=True, root=tmp_path, stale_after_s=1.0, poll_s=0.05) == [lock]
    assert time.monotonic() - start >= 0.9
    assert "waiting up to 1 s for a build on another node" in capsys.readouterr().out


def test_other_local_ranks_only_wait_for_local_rank_0(tmp_path):
    lock = lock_file(tmp_path)
    threading.Timer(0.5, lock.unlink).start()  # local rank 0
    start = time.monotonic()
    assert clear_stale_build_locks(remove=False, root=tmp_path, poll_s=0.05) == []
    assert time.monotonic() - start >= 0.4 and not lock.exists()


@pytest.mark.integration
def test_the_process_group_starts_despite_a_stale_lock(tmp_path):
    """The real init: DeepSpeed's CPU allreduce op is loaded from a build dir holding a stale lock
    (a copy of the op's build when there is one, so that nothing is compiled)."""
    built = next(extension_build_root().glob("*/deepspeed_shm_comm/deepspeed_shm_comm.so"), None)
    if built:
        shutil.copytree(built.parent, tmp_path / "deepspeed_shm_comm", ignore=shutil.ignore_patterns("lock"))
    lock = lock_file(tmp_path)
    env = dict(os.environ, TORCH_EXTENSIONS_DIR=str(tmp_path), DS_ACCELERATOR="cpu")
    env.pop("RANK", None)
    proc = subprocess.run([sys.executable, "-c", "from pipeline.engine import init_distributed; "
                           "print('ranks', init_distributed())"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"[build locks] removed {lock}" in proc.stdout and "ranks (0, 1)" in proc.stdout
