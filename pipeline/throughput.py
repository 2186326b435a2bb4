"""Throughput you can compare across runs: tokens/s, step and data time, TFLOPs, MFU and HFU.

    MFU = model FLOPs per second per rank / peak FLOPS per rank      (pipeline/flops.py: 6N + 12LHQT)
    HFU = hardware FLOPs per second per rank / peak FLOPS per rank   (+ what the run recomputes)

Only training steps are timed (validation and checkpoint saves are not), and the first
`warmup_steps` steps after every (re)start are excluded: they pay for allocator growth, lazy
initialization and cold caches. Peak FLOPS per rank comes from `train.peak_tflops` if set, else
from the datasheet of a known accelerator for bf16/fp16 training, else from a matmul measured on this
rank's device at start (every rank at once, so on a shared CPU each rank measures its share).
"""

from __future__ import annotations

import time

import torch

# Dense bf16/fp16 tensor-core peaks per device (vendor datasheets), matched in order against the
# device name: "H100 PCIe" before "H100".
DATASHEET_TFLOPS = (("H100 PCIe", 756.0), ("H100", 989.0), ("H200", 989.0), ("A100", 312.0), ("L40S", 362.0), ("L40", 181.0),
                    ("A10G", 70.0), ("L4", 121.0), ("A10", 125.0), ("V100", 125.0))


def datasheet_tflops(device_name: str, dtype: torch.dtype) -> float | None:
    if dtype not in (torch.bfloat16, torch.float16):
        return None  # fp32 peaks depend on TF32 settings: measure instead
    return next((tflops for name, tflops in DATASHEET_TFLOPS if name in device_name), None)


def measured_matmul_tflops(device: str, dtype: torch.dtype, size: int = 1024, seconds: float = 0.5) -> float:
    """Best-of-repeats square matmul rate on `device`: what this rank can actually reach."""
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    torch.matmul(a, b)  # warm-up: thread pools, kernels
    best, deadline = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        torch.matmul(a, b).sum().item()  # .item() waits for asynchronous devices
        best = max(best, 2 * size ** 3 / (time.perf_counter() - start))
    return best / 1e12


class ThroughputMeter:
    """Accumulates timed training steps over one log window; `window()` returns the perf/ scalars."""

    def __init__(self, tokens_per_step: int, samples_per_step: int, world_size: int, model_flops_per_token: float,
                 hardware_flops_per_token: float, peak_tflops_per_rank: float, warmup_steps: int):
        self.tokens_per_step, self.samples_per_step = tokens_per_step, samples_per_step
        self.world_size = world_size
        self.model_flops_per_token, self.hardware_flops_per_token = model_flops_per_token, hardware_flops_per_token
        self.peak_tflops_per_rank = peak_tflops_per_rank
        self.untimed_steps = warmup_steps
        self._reset()

    def _reset(self) -> None:
        self.steps, self.step_seconds, self.data_seconds = 0, 0.0, 0.0

    def record(self, step_seconds: float, data_seconds: float) -> None:
        if self.untimed_steps > 0:
            self.untimed_steps -= 1
            return
        self.steps += 1
        self.step_seconds += step_seconds
        self.data_seconds += data_seconds

    def window(self) -> dict[str, float]:
        """Scalars for the steps recorded since the last call ({} if all were warm-up)."""
        if self.steps == 0:
            return {}
        tokens_per_s = self.steps * self.tokens_per_step / self.step_seconds
        model_tflops = tokens_per_s * self.model_flops_per_token / self.world_size / 1e12
        hardware_tflops = tokens_per_s * self.hardware_flops_per_token / self.world_size / 1e12
        scalars = {"perf/tokens_per_s": tokens_per_s, "perf/tokens_per_s_per_rank": tokens_per_s / self.world_size,
                   "perf/samples_per_s": self.steps * self.samples_per_step / self.step_seconds,
                   "perf/step_time_s": self.step_seconds / self.steps,
                   "perf/data_time_s": self.data_seconds / self.steps,
                   "perf/model_tflops_per_rank": model_tflops, "perf/hardware_tflops_per_rank": hardware_tflops,
                   "perf/mfu": model_tflops / self.peak_tflops_per_rank,
                   "perf/hfu": hardware_tflops / self.peak_tflops_per_rank}
        self._reset()
        return scalars
