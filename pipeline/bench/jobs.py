"""Benchmarks run the real stages, each as its own job, as a user would."""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from pipeline.engine import free_port


def run_stage_job(module: str, args: list[str], ranks: int, log: Path) -> None:
    """`pipeline.<module> <args>` on `ranks` processes (1: `python -m`, more: the deepspeed launcher),
    its output in `log`; exits with the log's last lines if the job fails."""
    if ranks == 1:
        cmd = [sys.executable, "-m", f"pipeline.{module}", *args]
    else:
        launcher = shutil.which("deepspeed") or str(Path(sys.executable).parent / "deepspeed")
        cmd = [launcher, "--num_gpus", str(ranks), "--master_port", str(free_port()), "--module", f"pipeline.{module}",
               *args]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // ranks)))
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as f:
        f.write(shlex.join(cmd) + "\n")
        f.flush()
        code = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env).returncode
    if code != 0:
        tail = "".join(log.read_text().splitlines(keepends=True)[-25:])
        raise SystemExit(f"[bench] pipeline.{module} failed (exit {code}); last lines of {log}:\n{tail}")


def seeded_bench_arguments(name: str, doc: str, default_config: str, default_seeds: int, argv: list[str] | None,
                           add_arguments=None) -> tuple[argparse.Namespace, list[str]]:
    """The command line of a benchmark that repeats stages over seeds; the rest are config overrides."""
    parser = argparse.ArgumentParser(prog=f"python -m pipeline.bench {name}", description=doc,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=default_config, help="recipe name or YAML path")
    parser.add_argument("--seeds", type=int, default=default_seeds, help=f"seeds 0..N-1 (default {default_seeds})")
    parser.add_argument("--out", default=f"runs/bench/{name}", help="benchmark directory")
    parser.add_argument("--ranks", type=int, default=1,
                        help="processes per stage: 1 runs `python -m`, more the `deepspeed` launcher")
    if add_arguments is not None:
        add_arguments(parser)
    args, overrides = parser.parse_known_args(argv)
    if args.seeds < 1 or args.ranks < 1:
        sys.exit(f"bench error: --seeds and --ranks must be >= 1 (got {args.seeds}, {args.ranks})")
    return args, overrides
