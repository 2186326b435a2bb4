import pytest
import torch
from deepspeed.profiling.flops_profiler import get_model_profile
from torch.utils.flop_counter import FlopCounterMode

from pipeline.flops import matmul_parameters, recompute_flops_per_token, training_flops_per_token
from pipeline.models.hf import build_model, enable_activation_checkpointing, hf_config
from pipeline.models.sizes import SIZES


@pytest.mark.parametrize("size", ["gpt2-nano", "llama-nano", "llama-micro"])  # MHA + GELU; GQA + SwiGLU
def test_flops_formula_matches_deepspeed_profiler(size):
    shape, vocab, seq_len, batch = SIZES[size], 2048, 128, 2
    model = build_model(hf_config(shape, vocab, {"bos_token_id": 2, "eos_token_id": 3, "pad_token_id": 0})).eval()
    ids = torch.randint(0, vocab, (batch, seq_len))
    forward_flops, _, _ = get_model_profile(model, kwargs={"input_ids": ids}, print_profile=False, as_string=False)
    measured_per_token = 3 * forward_flops / (batch * seq_len)  # backward = 2x forward
    assert training_flops_per_token(shape, vocab, seq_len) == pytest.approx(measured_per_token, rel=0.01)


def test_matmul_parameters_of_a_published_shape():
    # GPT-2 124M: 85M in the blocks (no biases/norms counted) + the 50257 x 768 head
    assert matmul_parameters(SIZES["gpt2-124m"], 50257) == 12 * (4 * 768 * 768 + 2 * 768 * 3072) + 50257 * 768


@pytest.mark.parametrize("size", ["gpt2-nano", "llama-nano"])
def test_recompute_flops_are_what_activation_checkpointing_adds(size):
    """HFU's extra term: counted FLOPs of a training step with activation checkpointing minus without
    (eager attention: torch's counter does not see the CPU fused attention kernel)."""
    shape, vocab, seq_len, batch = SIZES[size], 512, 64, 2
    config = hf_config(shape, vocab, {"bos_token_id": 2, "eos_token_id": 3, "pad_token_id": 0})
    config._attn_implementation = "eager"
    model = build_model(config)
    ids = torch.randint(0, vocab, (batch, seq_len))
    counted = []
    for checkpointing in (False, True):
        if checkpointing:
            enable_activation_checkpointing(model)
        with FlopCounterMode(display=False) as counter:
            model(input_ids=ids, labels=ids).loss.backward()
        counted.append(counter.get_total_flops())
    extra_per_token = (counted[1] - counted[0]) / (batch * seq_len)
    assert recompute_flops_per_token(shape, seq_len) == pytest.approx(extra_per_token, rel=0.01)
