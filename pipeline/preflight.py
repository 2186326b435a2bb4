"""Pre-flight of a multi-rank job, and the rule for checks that can fail on some ranks only.

Before a stage loads any data, every rank reports its host, the repo path it runs from and the
versions it imports; one all-reduce proves the process group works, and ranks that differ in what
must be the same (a node with another checkout or another venv) get one clear error on every rank.

A check that can fail on one rank only (a file missing on one node's disk, work rank 0 does alone)
must not let the other ranks walk into the next collective, where they would wait for the failed
rank until the process-group timeout: `all_ranks_agree` runs such a block on every rank, then every
rank learns whether any failed and raises.
"""

from __future__ import annotations

import importlib.metadata
import platform
import socket
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.distributed as dist

from pipeline import __version__
from pipeline.errors import ConfigError

PACKAGES = ("torch", "deepspeed", "transformers", "datasets", "accelerate", "safetensors")
MUST_MATCH = ("repo", "python", "packages")  # hosts and process ids may differ


def rank_report() -> dict:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    versions["pipeline"] = __version__
    return {"host": socket.gethostname(), "repo": str(Path(__file__).resolve().parents[1]),
            "python": platform.python_version(), "packages": versions}


def mismatches(reports: list[dict]) -> list[str]:
    """What differs between ranks in MUST_MATCH, each against rank 0."""
    problems = []
    for key in MUST_MATCH:
        for rank, report in enumerate(reports):
            if report[key] != reports[0][key]:
                problems.append(f"{key}: rank 0 (host {reports[0]['host']}) has {reports[0][key]}, rank {rank} "
                                f"(host {report['host']}) has {report[key]}")
                break
    return problems


def preflight(rank: int, world_size: int, device: str) -> list[dict]:
    """Prove the group and refuse ranks that run different code; returns every rank's report.
    `device`: where the backend reduces (the rank's accelerator; "cpu" for gloo)."""
    token = torch.ones(1, device=device)
    dist.all_reduce(token)
    if int(token.item()) != world_size:
        raise RuntimeError(f"the process group is broken: an all-reduce of ones over {world_size} ranks gave "
                           f"{token.item()}")
    reports = [None] * world_size
    dist.all_gather_object(reports, rank_report())
    problems = mismatches(reports)
    if problems:
        raise ConfigError("the ranks do not run the same code: " + "; ".join(problems) + ". Every node needs the "
                          "same repo path and the same installed packages (a shared filesystem, or the same "
                          "launch/setup.sh on each)")
    if rank == 0 and world_size > 1:
        hosts = sorted({r["host"] for r in reports})
        p = reports[0]["packages"]
        print(f"[preflight] {world_size} ranks on {len(hosts)} host(s) ({', '.join(hosts[:4])}"
              f"{', ...' if len(hosts) > 4 else ''}), repo {reports[0]['repo']}, python {reports[0]['python']}, "
              f"torch {p['torch']}, deepspeed {p['deepspeed']}, transformers {p['transformers']}", flush=True)
    return reports


@contextmanager
def all_ranks_agree(what: str):
    """Run a block that may fail on some ranks only; then every rank raises if any rank failed (the
    failed rank its own error, the others a ConfigError naming it). The block must not run
    collectives: a failed rank leaves it early."""
    failure = None
    try:
        yield
    except Exception as err:  # noqa: BLE001 - any failure must reach the other ranks
        failure = err
    messages = [None] * dist.get_world_size()
    dist.all_gather_object(messages, None if failure is None else f"{type(failure).__name__}: {failure}")
    if failure is not None:
        raise failure
    failed = [(rank, message) for rank, message in enumerate(messages) if message]
    if failed:
        rank, message = failed[0]
        others = f" (and {len(failed) - 1} other rank(s))" if len(failed) > 1 else ""
        raise ConfigError(f"rank {rank}{others} failed {what}: {message}")


def agreed_value(value, what: str):
    """``value`` as every rank computed it (e.g. from files each node reads itself); if the ranks differ,
    every rank raises the same error instead of silently running apart. A collective: every rank calls it."""
    values = [None] * dist.get_world_size()
    dist.all_gather_object(values, value)
    if any(v != values[0] for v in values):
        raise ConfigError(f"the ranks disagree on {what}: {dict(enumerate(values))}; make the files every node "
                          f"reads identical")
    return values[0]
