"""Pre-flight and agreed checks (pipeline/preflight.py) in a real 2-process gloo group: a failure or a
mismatch on one rank becomes an error on every rank instead of a hang."""

import json
import os
from pathlib import Path

import pytest
import torch.distributed as dist
import torch.multiprocessing as mp

from conftest import free_port
from pipeline import preflight
from pipeline.errors import ConfigError


def _worker(rank: int, world_size: int, port: int, scenario: str, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        if scenario == "check_fails_on_rank_1":
            with preflight.all_ranks_agree("the data check"):
                if rank == 1:
                    raise FileNotFoundError("data/packed/train.bin is missing on this node")
        elif scenario == "rank_1_has_other_packages":
            if rank == 1:
                real = preflight.rank_report
                preflight.rank_report = lambda: {**real(), "packages": {**real()["packages"], "torch": "0.0.1"}}
            preflight.preflight(rank, world_size, "cpu")
        else:
            preflight.preflight(rank, world_size, "cpu")
        outcome = "ok"
    except ConfigError as err:
        outcome = f"ConfigError: {err}"
    except FileNotFoundError as err:
        outcome = f"FileNotFoundError: {err}"
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(outcome))
    dist.destroy_process_group()


def run_two_ranks(scenario: str, tmp_path) -> list[str]:
    context = mp.start_processes(_worker, args=(2, free_port(), scenario, str(tmp_path)), nprocs=2, join=False,
                                 start_method="spawn")
    for _ in range(120):  # a hang (the bug this guards against) fails the test instead of blocking it
        if context.join(timeout=1):
            break
    else:
        for process in context.processes:
            process.kill()
        pytest.fail(f"{scenario}: the ranks did not finish within 120 s")
    return [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]


def test_matching_ranks_pass(tmp_path):
    assert run_two_ranks("same", tmp_path) == ["ok", "ok"]


def test_a_check_failing_on_one_rank_stops_every_rank(tmp_path):
    rank0, rank1 = run_two_ranks("check_fails_on_rank_1", tmp_path)
    assert rank1 == "FileNotFoundError: data/packed/train.bin is missing on this node"  # its own error
    assert rank0.startswith("ConfigError: rank 1 failed the data check: FileNotFoundError: data/packed")


def test_ranks_with_different_packages_are_refused_on_every_rank(tmp_path):
    for outcome in run_two_ranks("rank_1_has_other_packages", tmp_path):
        assert outcome.startswith("ConfigError: the ranks do not run the same code: packages: rank 0")
        assert "'torch': '0.0.1'" in outcome and "same installed packages" in outcome


def test_mismatches_name_the_first_differing_rank():
    report = {"host": "a", "repo": "/srv/repo", "python": "3.11.7", "packages": {"torch": "2.13.0"}}
    same = [report, {**report, "host": "b"}]
    assert preflight.mismatches(same) == []  # hosts may differ
    other_repo = [report, {**report, "host": "b"}, {**report, "host": "c", "repo": "/home/me/repo"}]
    assert preflight.mismatches(other_repo) == [
        "repo: rank 0 (host a) has /srv/repo, rank 2 (host c) has /home/me/repo"]
