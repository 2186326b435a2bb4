"""Stale locks of DeepSpeed's op builds.

DeepSpeed builds its C++ ops on first use (the CPU shared-memory allreduce when the process group
starts, CPU Adam, async I/O) through torch's cpp_extension, which holds a `lock` file in the op's
build dir for the build and removes it at the end. A build killed midway (Ctrl-C, a killed rank, a
job's time limit) leaves the file behind, and every later launch on that machine waits on it
forever, silently: no output, no CPU. This is what hung CI for 90 minutes.

A lock is live while its builder holds it open. Before DeepSpeed builds anything, local rank 0
removes the locks that no process on this machine holds open and that are older than any build
(`STALE_AFTER_S`: a rank on another node that shares the home dir may be building right now);
younger unheld locks are waited for, with a message, then removed. The other local ranks only wait
until no unheld lock is left, so that two ranks never remove one lock (the second might remove the
first's new, live one).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

STALE_AFTER_S = 300.0  # builds take 30-90 s on 2 cores; one on another node is not visible in /proc


def extension_build_root() -> Path:
    from torch.utils.cpp_extension import get_default_build_root
    return Path(os.environ.get("TORCH_EXTENSIONS_DIR") or get_default_build_root())


def build_locks(root: Path) -> list[Path]:
    """Lock files of every op's build dir: root/<op>/lock (TORCH_EXTENSIONS_DIR) or
    root/<py311_cpu>/<op>/lock (the default root)."""
    return sorted([*root.glob("*/lock"), *root.glob("*/*/lock")])


def held_open(paths: list[Path]) -> set[Path]:
    """The paths some process on this machine has open (Linux /proc; elsewhere nothing is known, and
    only a lock's age decides)."""
    wanted = {str(path.resolve()): path for path in paths}
    held = set()
    for fd_dir in Path("/proc").glob("[0-9]*/fd"):
        try:
            for fd in fd_dir.iterdir():
                target = os.readlink(fd)
                if target in wanted:
                    held.add(wanted[target])
        except OSError:  # the process ended, or is another user's
            continue
    return held


def clear_stale_build_locks(remove: bool, root: Path | None = None, stale_after_s: float = STALE_AFTER_S,
                            poll_s: float = 1.0) -> list[Path]:
    """Wait until no op-build lock is left that nobody holds; `remove`: remove those older than
    `stale_after_s` (else another process must). Returns the removed paths."""
    root = root or extension_build_root()
    removed, announced = [], set()
    while True:
        locks = [lock for lock in build_locks(root) if lock not in removed]
        if not locks:  # the usual case: no /proc scan
            return removed
        held = held_open(locks)
        unheld = [lock for lock in locks if lock not in held]
        waiting = []
        for lock in unheld:
            try:
                age = time.time() - lock.stat().st_mtime
            except FileNotFoundError:  # its build just ended
                continue
            if remove and age >= stale_after_s:
                lock.unlink(missing_ok=True)
                removed.append(lock)
                print(f"[build locks] removed {lock}, left {age / 60:.0f} min ago by an op build that was "
                      f"killed (nothing holds it; DeepSpeed would have waited on it forever)", flush=True)
            else:
                waiting.append(lock)
                if lock not in announced:
                    announced.add(lock)
                    then = (f"up to {stale_after_s - age:.0f} s for a build on another node, then removing it"
                            if remove else "for local rank 0 to remove it")
                    print(f"[build locks] {lock} is held by no process here: waiting {then}", flush=True)
        if not waiting:
            return removed
        time.sleep(poll_s)
