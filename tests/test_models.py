import math
import warnings

import pytest
import torch
from transformers import AutoModelForCausalLM
from transformers.modeling_layers import GradientCheckpointingLayer

from pipeline.config import load_config
from pipeline.models.hf import build_model, enable_activation_checkpointing, hf_config
from pipeline.models.sizes import SIZES, resolve_shape

TOKEN_IDS = {"bos_token_id": 2, "eos_token_id": 3, "pad_token_id": 0}


def _build(size: str, vocab: int = 2048, **overrides):
    config = load_config("tiny", [f"model.size={size}"] + [f"model.{k}={v}" for k, v in overrides.items()])
    return build_model(hf_config(resolve_shape(config.model), vocab, TOKEN_IDS))


def test_llama_gqa_shapes():
    model = _build("llama-micro")  # 8 query heads, 4 KV heads, head_dim 32
    attn = model.model.layers[0].self_attn
    assert attn.q_proj.weight.shape == (256, 256)
    assert attn.k_proj.weight.shape == attn.v_proj.weight.shape == (128, 256)
    assert model.model.layers[0].mlp.gate_proj.weight.shape == (704, 256)
    assert len(model.model.layers) == 4


@pytest.mark.parametrize("init_std", [None, 0.005])
def test_init_std_sets_the_scale_of_matrices_and_embeddings(init_std):
    torch.manual_seed(0)
    model = build_model(hf_config(SIZES["llama-micro"], 2048, TOKEN_IDS, init_std))
    expected = 0.02 if init_std is None else init_std  # HF's default initializer_range
    for weight in (model.model.embed_tokens.weight, model.model.layers[0].mlp.up_proj.weight, model.lm_head.weight):
        assert weight.std().item() == pytest.approx(expected, rel=0.05)


def test_gpt2_shapes_and_tied_head():
    model = _build("gpt2-micro")
    assert model.transformer.h[0].attn.c_attn.weight.shape == (256, 768)  # Conv1D stores (in, out)
    assert model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr()
    assert len(model.transformer.h) == 4


def test_shape_overrides():
    model = _build("llama-nano", layers=3, kv_heads=1)
    assert len(model.model.layers) == 3
    assert model.model.layers[0].self_attn.k_proj.weight.shape == (32, 128)


@pytest.mark.parametrize("size, expected_millions", [
    ("gpt2-124m", 124.4), ("gpt2-350m", 354.8), ("gpt2-774m", 774.0), ("gpt2-1.5b", 1557.6),
    ("tinyllama-1.1b", 1100.0), ("llama-125m", 124.7), ("mistral-7b", 7241.7), ("phi-3-mini", 3821.1),
    ("gemma-2b", 2506.2), ("gemma-7b", 8537.7),  # Gemma's report: 2.51B, 8.54B (tied, 256k vocab)
    ("gemma-2-2b", 2614.3), ("gemma-2-9b", 9241.7),  # Gemma 2's: 2.61B, 9.24B
    ("gemma-3-270m", 268.1), ("gemma-3-1b", 999.9),  # Gemma 3's: 268M, 1B (262k vocab)
    ("olmo-2-1b", 1484.9), ("olmo-2-7b", 7298.6),  # OLMo 2's: 1.48B, 7.30B (100k vocab)
    ("starcoder2-3b", 3030.4), ("starcoder2-7b", 7173.9),  # StarCoder2's: 3.03B, 7.17B (49k vocab)
    # Qwen's model cards: 0.49B / 1.54B / 0.6B / 1.7B in all (tied embeddings of 151,936 tokens)
    ("qwen2.5-0.5b", 494.0), ("qwen2.5-1.5b", 1543.7), ("qwen3-0.6b", 596.0), ("qwen3-1.7b", 1720.6),
])
def test_published_shapes_have_published_parameter_counts(size, expected_millions):
    vocab = 262144 if size.startswith("gemma-3") else \
        {"gpt2": 50257, "qwen": 151936, "phi-": 32064, "gemm": 256000, "olmo": 100352, "star": 49152}.get(size[:4], 32000)
    with torch.device("meta"):  # shapes only: no memory, no init
        model = AutoModelForCausalLM.from_config(hf_config(SIZES[size], vocab, TOKEN_IDS))
    millions = sum(p.numel() for p in model.parameters()) / 1e6
    assert millions == pytest.approx(expected_millions, rel=0.01)


@pytest.mark.parametrize("size", ["llama-nano", "llama-micro", "gpt2-nano", "gpt2-micro"])
def test_step0_loss_near_uniform(size):
    torch.manual_seed(0)
    model = _build(size)
    ids = torch.randint(0, 2048, (4, 64))
    loss = model(input_ids=ids, labels=ids).loss.item()
    assert abs(loss - math.log(2048)) < 0.1 * math.log(2048)


@pytest.mark.parametrize("size", ["gpt2-nano", "llama-nano"])
def test_activation_checkpointing_switches_on_without_a_deprecated_call(size):
    """Under the locked transformers the switch goes through the current API (the old name warns and
    is gone in v6); every block then recomputes."""
    model = _build(size)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        enable_activation_checkpointing(model)
    blocks = [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]
    assert len(blocks) == model.config.num_hidden_layers and all(b.gradient_checkpointing for b in blocks)
