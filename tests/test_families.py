"""The family registry and the families beyond GPT-2 and LLaMA (Mistral, Qwen2/2.5, Qwen3): shapes
round-trip through their HF configs, and each grows losslessly from a random-init model of
transformers' own config class (non-integer width, GQA head counts, a depth that is not a multiple),
its generated forward equals the materialized model, and the export reloads with the same logits."""

from dataclasses import replace

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from pipeline.config import ConfigError, load_config
from pipeline.growth.init import identity_layout
from pipeline.growth.model import GrownModel
from pipeline.models.families import FAMILIES
from pipeline.models.hf import hf_config, resized_config, shape_of
from pipeline.models.sizes import SIZES, resolve_shape
from test_growth import TOKEN_IDS, VOCAB, grow, make_donor, materialized
from test_lossless_growth import relative_error

# every registered family beyond the two the rest of the suite covers: a new family is tested here as is
NEW_FAMILIES = tuple(name for name in FAMILIES if name not in ("gpt2", "llama"))


@pytest.mark.parametrize("size", sorted(SIZES))
def test_every_size_round_trips_through_its_hf_config(size):
    shape = SIZES[size]
    assert shape_of(hf_config(shape, VOCAB, TOKEN_IDS)) == shape
    assert resolve_shape(load_config("tiny", [f"model.size={size}"]).model) == shape


def test_every_family_has_a_cpu_size_and_an_importable_adapter():
    for name, family in FAMILIES.items():
        base = SIZES[family.base_size]
        assert base.family == name and base.layers <= 4 and base.hidden <= 256
        adapter = family.growth_adapter(hf_config(base, VOCAB, TOKEN_IDS))
        assert adapter.family == name


def donor_shape(family):
    """3 layers, 96 wide, 6/2 heads of 16 (of 24 where the family's CPU size sets its own head size, so
    heads x head size != width)."""
    own_head_size = SIZES[FAMILIES[family].base_size].head_size is not None
    return replace(SIZES[FAMILIES[family].base_size], layers=3, hidden=96, heads=6, kv_heads=2, ffn=160,
                   head_size=24 if own_head_size else None)


def target_shape(family):
    """4 layers (not a multiple of 3), 160 wide (5/3), 10/5 heads (GQA groups 3 -> 2), ffn 7/4. OLMo2: 12/4
    heads (its q/k norms over all heads need whole multiples of the donor's)."""
    heads, kv_heads = (12, 4) if family == "olmo2" else (10, 5)
    return replace(donor_shape(family), layers=4, hidden=160, heads=heads, kv_heads=kv_heads, ffn=280)


@pytest.mark.parametrize("family", NEW_FAMILIES)
@pytest.mark.parametrize("tied", [True, False])
def test_lossless_growth_keeps_the_donor_function(family, tied):
    donor = make_donor(donor_shape(family), tied=tied)
    op, config = grow(donor, target_shape(family), depth="identity", width="lossless")
    ids = torch.randint(0, VOCAB, (3, 40))
    with torch.no_grad():
        assert relative_error(materialized(op, config)(ids).logits, donor(ids).logits) <= 1e-5


@pytest.mark.parametrize("family", NEW_FAMILIES)
def test_generated_forward_equals_the_exported_model(family, tmp_path):
    op, config = grow(make_donor(donor_shape(family)), target_shape(family), depth="noisy_stack", width="random")
    with torch.no_grad():  # move away from the init so every operator parameter matters
        for p in op.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.01)
    ids = torch.randint(0, VOCAB, (2, 24))
    with torch.no_grad():
        generated = GrownModel(op, config)(ids).logits
        model = materialized(op, config)
        hf = model(ids).logits
        model.save_pretrained(tmp_path)
        reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
        assert type(reloaded) is type(model) and shape_of(reloaded.config) == target_shape(family)
        again = reloaded(ids).logits
    torch.testing.assert_close(generated, hf, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(again, hf, rtol=0, atol=0)


def test_qwen2_biases_follow_their_heads():
    """q/k/v biases are rows of their projections: a copied head carries its bias entries."""
    donor = make_donor(donor_shape("qwen2"))
    op, _ = grow(donor, target_shape("qwen2"), depth="identity", width="lossless")
    weights = dict(op.materialize())
    head = 16
    donor_bias = donor.model.layers[0].self_attn.q_proj.bias.detach()
    grown_bias = weights["model.layers.0.self_attn.q_proj.bias"]
    assert grown_bias.shape == (10 * head,) and "model.layers.0.self_attn.o_proj.bias" not in weights
    for h in range(10):  # every grown head's bias is one donor head's bias
        block = grown_bias[h * head:(h + 1) * head]
        assert any(torch.equal(block, donor_bias[s * head:(s + 1) * head]) for s in range(6))


def test_qwen3_head_norms_are_kept_for_every_head():
    donor = make_donor(donor_shape("qwen3"))
    op, config = grow(donor, target_shape("qwen3"), depth="identity", width="lossless")
    weights = dict(op.materialize())
    assert config.head_dim == 24 and weights["model.layers.0.self_attn.q_norm.weight"].shape == (24,)
    torch.testing.assert_close(weights["model.layers.0.self_attn.k_norm.weight"],
                               donor.model.layers[0].self_attn.k_norm.weight.detach(), rtol=0, atol=0)


def test_uniform_layer_types_follow_the_depth_and_mixed_ones_refuse_it():
    donor = hf_config(donor_shape("qwen2"), VOCAB, TOKEN_IDS)
    assert resized_config(donor, target_shape("qwen2")).layer_types == ["full_attention"] * 4
    donor.layer_types = ["full_attention", "sliding_attention", "full_attention"]
    with pytest.raises(ConfigError, match="mixes attention types by layer.*keep model.layers=3"):
        resized_config(donor, target_shape("qwen2"))
    assert resized_config(donor, replace(target_shape("qwen2"), layers=3)).layer_types == donor.layer_types


def test_an_unknown_family_names_the_known_ones():
    with pytest.raises(ConfigError, match="'opt' is not supported: the pipeline knows.*qwen3"):
        shape_of(AutoConfig.for_model("opt"))


def test_llama_with_attention_and_mlp_biases_grows_losslessly():
    """LLaMA's attention_bias (q, k, v, o) and mlp_bias (gate, up, down): o's and down's are residual
    writers, zero in the new layers like their weights."""
    torch.manual_seed(0)
    config = hf_config(donor_shape("llama"), VOCAB, TOKEN_IDS)
    config.attention_bias = config.mlp_bias = True
    donor = AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():
        for name, p in donor.named_parameters():
            if name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.2)
    op, grown = grow(donor, target_shape("llama"), depth="identity", width="lossless")
    assert set(op.adapter.biases) == {"q", "k", "v", "o", "gate", "up", "down"}
    ids = torch.randint(0, VOCAB, (3, 40))
    with torch.no_grad():
        assert relative_error(materialized(op, grown)(ids).logits, donor(ids).logits) <= 1e-5


def test_phi3_with_partial_rotary_grows_losslessly():
    """Phi-4-mini's partial rotary (here half of each head) acts within a head; heads grow whole."""
    torch.manual_seed(0)
    config = hf_config(donor_shape("phi3"), VOCAB, TOKEN_IDS)
    config.rope_parameters = {**config.rope_parameters, "partial_rotary_factor": 0.5}
    config.tie_word_embeddings = True
    donor = AutoModelForCausalLM.from_config(config).eval()
    op, grown = grow(donor, target_shape("phi3"), depth="identity", width="lossless")
    assert grown.rope_parameters["partial_rotary_factor"] == 0.5 and grown.tie_word_embeddings
    ids = torch.randint(0, VOCAB, (3, 40))
    with torch.no_grad():
        assert relative_error(materialized(op, grown)(ids).logits, donor(ids).logits) <= 1e-5


def test_gemma2_keeps_each_layers_attention_type_and_grows_identities_by_zero_output_norms():
    """Sliding (window 8, shorter than the batch) and global layers alternate; the grown model keeps
    each donor layer's type (new layers take their source's), its new layers are identities through
    zero sandwich-norm gains (w = -1) with live writers, and it computes the donor's function."""
    torch.manual_seed(0)
    config = hf_config(replace(donor_shape("gemma2"), layers=4), VOCAB, TOKEN_IDS)
    config.sliding_window = 8
    assert config.layer_types == ["sliding_attention", "full_attention"] * 2
    donor = AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():
        for name, p in donor.named_parameters():
            if "norm" in name:
                p.add_(torch.randn_like(p) * 0.2)
    target = replace(target_shape("gemma2"), layers=6)
    op, grown = grow(donor, target, depth="identity", width="lossless")
    sources, new = identity_layout(4, 6, "interleave")  # [0, 0, 1, 2, 2, 3]: new layers 1 and 4
    assert grown.layer_types == [config.layer_types[s] for s in sources] != config.layer_types[:2] * 3
    weights = dict(op.materialize())
    for i in (i for i, is_new in enumerate(new) if is_new):
        assert torch.all(weights[f"model.layers.{i}.post_attention_layernorm.weight"] == -1)
        assert torch.all(weights[f"model.layers.{i}.post_feedforward_layernorm.weight"] == -1)
        assert weights[f"model.layers.{i}.self_attn.o_proj.weight"].abs().sum() > 0
    ids = torch.randint(0, VOCAB, (3, 40))
    with torch.no_grad():
        assert relative_error(materialized(op, grown)(ids).logits, donor(ids).logits) <= 1e-5
        config.layer_types = ["full_attention"] * 4  # the types matter here: all-global is another function
        assert relative_error(AutoModelForCausalLM.from_config(config).eval()(ids).logits, donor(ids).logits) > 1e-3


def test_olmo2_lossless_width_needs_whole_head_multiples_and_names_the_closest():
    donor = make_donor(donor_shape("olmo2"))
    with pytest.raises(ConfigError, match=r"whole multiples of the donor's heads \(6 query / 2 KV\), got 10 / 5: the "
                                          r"closest exact target has model.heads=12 model.kv_heads=4"):
        grow(donor, replace(target_shape("olmo2"), heads=10, kv_heads=5), depth="identity", width="lossless")
    grow(donor, replace(target_shape("olmo2"), heads=10, kv_heads=5), depth="stack", width="random")  # not lossless
