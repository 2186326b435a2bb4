import pytest
import torch

from pipeline.throughput import ThroughputMeter, datasheet_tflops, measured_matmul_tflops


def test_meter_excludes_warmup_and_reports_per_window():
    meter = ThroughputMeter(tokens_per_step=1000, samples_per_step=10, world_size=2, model_flops_per_token=6e9,
                            hardware_flops_per_token=8e9, peak_tflops_per_rank=10.0, warmup_steps=2)
    meter.record(step_seconds=5.0, data_seconds=1.0)  # warm-up: slow, not counted
    meter.record(step_seconds=5.0, data_seconds=1.0)
    assert meter.window() == {}
    meter.record(step_seconds=1.0, data_seconds=0.1)
    meter.record(step_seconds=3.0, data_seconds=0.3)
    perf = meter.window()
    assert perf["perf/tokens_per_s"] == pytest.approx(500.0)  # 2000 tokens in 4 s
    assert perf["perf/tokens_per_s_per_rank"] == pytest.approx(250.0)
    assert perf["perf/samples_per_s"] == pytest.approx(5.0)
    assert perf["perf/step_time_s"] == pytest.approx(2.0)
    assert perf["perf/data_time_s"] == pytest.approx(0.2)
    assert perf["perf/model_tflops_per_rank"] == pytest.approx(1.5)  # 250 tokens/s x 6 GFLOP
    assert perf["perf/mfu"] == pytest.approx(0.15)
    assert perf["perf/hfu"] == pytest.approx(0.2)
    meter.record(step_seconds=1.0, data_seconds=0.0)  # a new window starts from scratch
    assert meter.window()["perf/step_time_s"] == pytest.approx(1.0)


def test_datasheet_peaks_only_for_known_half_precision_devices():
    assert datasheet_tflops("NVIDIA H100 80GB HBM3", torch.bfloat16) == 989.0
    assert datasheet_tflops("NVIDIA H100 PCIe", torch.bfloat16) == 756.0
    assert datasheet_tflops("NVIDIA A100-SXM4-40GB", torch.float16) == 312.0
    assert datasheet_tflops("NVIDIA A100-SXM4-40GB", torch.float32) is None
    assert datasheet_tflops("Some Future Accelerator", torch.bfloat16) is None


def test_measured_matmul_rate_is_plausible_for_this_cpu():
    tflops = measured_matmul_tflops("cpu", torch.float32, size=256, seconds=0.2)
    assert 1e-4 < tflops < 100  # between 0.1 GFLOPS and a datacenter GPU
