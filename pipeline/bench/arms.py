"""Side-by-side measurement: each arm runs in its own fresh single-rank process (so peak RSS is that
arm's alone), and the arms alternate round by round so machine noise hits them alike."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys


def alternate(module: str, arms: tuple[str, ...], rounds: int, child_args: list[str]) -> dict[str, list[dict]]:
    """Run `python -m <module> --arm <arm> <child_args>` for every arm, `rounds` times; each child prints
    a JSON dict as its last stdout line. Returns each arm's list of dicts."""
    results = {arm: [] for arm in arms}
    for round_index in range(rounds):
        for arm_index, arm in enumerate(arms):
            env = dict(os.environ, RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                       MASTER_PORT=str(29700 + round_index * len(arms) + arm_index))
            out = subprocess.run([sys.executable, "-m", module, "--arm", arm, *child_args],
                                 env=env, capture_output=True, text=True)
            if out.returncode != 0:
                sys.exit(f"{arm} arm failed:\n{out.stderr[-3000:]}")
            result = json.loads(out.stdout.strip().splitlines()[-1])
            results[arm].append(result)
            shown = ", ".join(f"{k} {v:.4g}" for k, v in result.items())
            print(f"round {round_index + 1} {arm}: {shown}", flush=True)
    return results


def medians(results: dict[str, list[dict]]) -> dict[str, dict[str, float]]:
    return {arm: {k: statistics.median(r[k] for r in runs) for k in runs[0]} for arm, runs in results.items()}
