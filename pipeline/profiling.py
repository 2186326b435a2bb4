"""Where a training step's time goes: torch.profiler around a few steps of any stage (train.profile_step).

    deepspeed --num_gpus 1 --master_port 29500 --module pipeline.train --config tiny train.profile_step=10

profiles steps 10 to 12 (numbered as the logs number them) on every rank and writes, per rank,
<run>/profile/rank<r>.trace.json (open in https://ui.perfetto.dev or chrome://tracing) and
<run>/profile/rank<r>.top.txt (the ops by their own time on the accelerator, or on the CPU without one).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

PROFILED_STEPS = 3


class StepProfiler:
    """Records steps first .. first + PROFILED_STEPS - 1 (1-based: the step the logs show after it);
    first = 0: off, every call returns at once. Nothing here synchronizes outside those steps."""

    def __init__(self, first: int, run_dir: Path, rank: int):
        self.first, self.out_dir, self.rank = first, run_dir / "profile", rank
        self.on_cuda = torch.cuda.is_available()  # the profiler's device activity: CUDA (and ROCm through it)
        self.active: profile | None = None

    def before_step(self, done: int) -> None:
        """`done`: the steps finished so far; the next one is step done + 1."""
        if self.first and done + 1 == self.first:
            activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self.on_cuda else [])
            self.active = profile(activities=activities)
            self.active.__enter__()

    def after_step(self, done: int) -> None:
        if self.active is not None and done >= self.first + PROFILED_STEPS - 1:
            self.close()

    def close(self) -> None:
        """Stops and writes a recording still open (a run that ended or stopped inside the window)."""
        if self.active is None:
            return
        recording, self.active = self.active, None
        recording.__exit__(None, None, None)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        recording.export_chrome_trace(str(self.out_dir / f"rank{self.rank}.trace.json"))
        sort_by = "self_device_time_total" if self.on_cuda else "self_cpu_time_total"
        table = recording.key_averages().table(sort_by=sort_by, row_limit=30)
        (self.out_dir / f"rank{self.rank}.top.txt").write_text(table + "\n")
        if self.rank == 0:
            print(f"[profile] steps {self.first}-{self.first + PROFILED_STEPS - 1}: {self.out_dir}/rank0.top.txt "
                  f"(ops by own time), rank0.trace.json (timeline)", flush=True)
