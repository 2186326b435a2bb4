"""Run metrics: TensorBoard scalars and a JSONL of the same records, written by rank 0 only.

On resume both continue without overlap: TensorBoard purges events after the resume step, and JSONL
records from those steps (written after the checkpoint by the interrupted run) are dropped.
"""

from __future__ import annotations

import json
from pathlib import Path

from torch.utils.tensorboard import SummaryWriter


class MetricsLogger:
    def __init__(self, run_dir: Path, enabled: bool, resume_step: int = 0):
        self.enabled = enabled
        if not enabled:
            return
        self.jsonl = run_dir / "metrics.jsonl"
        if resume_step > 0 and self.jsonl.exists():
            kept = [line for line in self.jsonl.read_text().splitlines()
                    if line and json.loads(line)["step"] <= resume_step]
            self.jsonl.write_text("".join(line + "\n" for line in kept))
        elif self.jsonl.exists():
            self.jsonl.unlink()  # a fresh run in this dir (guarded by the caller) starts a new log
        # purge_step drops earlier events at steps >= it: after the resume step on resume, all on a fresh start
        self.writer = SummaryWriter(log_dir=str(run_dir / "tb"), purge_step=resume_step + 1 if resume_step else 0)

    def log(self, step: int, scalars: dict[str, float]) -> None:
        if not self.enabled:
            return
        for name, value in scalars.items():
            self.writer.add_scalar(name, value, step)
        with self.jsonl.open("a") as f:
            f.write(json.dumps({"step": step, **scalars}) + "\n")

    def close(self) -> None:
        if self.enabled:
            self.writer.close()


def read_metrics(run_dir: str | Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line]
