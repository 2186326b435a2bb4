"""Lossless growth at any shape (grow.depth_init=identity, grow.width_init=lossless): the grown model
computes the donor's function at step 0, for non-integer width, head and depth ratios, GPT-2 and LLaMA
(GQA, tied and untied heads), and training breaks the symmetry of copied and new units."""

from dataclasses import replace

import pytest
import torch

from pipeline.config import ConfigError, load_config
from pipeline.growth.adapters import adapter_for
from pipeline.growth.init import identity_layout
from pipeline.growth.operator import GrowthPlan, check_plan, lossy_choices, operator_init
from pipeline.models.sizes import ModelShape
from test_growth import GPT2, LLAMA, VOCAB, grow, make_donor, materialized


def llama(layers, heads, kv_heads, ffn, head_dim=16):
    return ModelShape("llama", layers, heads * head_dim, heads, kv_heads, ffn, 512)


def gpt2(layers, heads, ffn, head_dim=32):
    return ModelShape("gpt2", layers, heads * head_dim, heads, heads, ffn, 512)


CASES = {  # donor -> target; width ratio, heads, depth
    "llama 5/3, 9/3 -> 15/5 heads, 3 -> 4 layers": (llama(3, 9, 3, 384), llama(4, 15, 5, 640)),
    "llama 3/2, 4/2 -> 6/3 heads, 2 -> 5 layers": (llama(2, 4, 2, 352, 32), llama(5, 6, 3, 528, 32)),
    "llama 2, 4/2 -> 8/4 heads, 7 -> 8 layers": (llama(7, 4, 2, 352, 32), llama(8, 8, 4, 704, 32)),
    "llama 5/3, MHA 3/3 -> 5/5, ffn 7/4": (llama(2, 3, 3, 256, 32), llama(3, 5, 5, 448, 32)),
    "gpt2 5/3, 3 -> 5 heads, 3 -> 4 layers": (gpt2(3, 3, 384), gpt2(4, 5, 640)),
    "gpt2 3/2, 2 -> 5 layers": (gpt2(2, 4, 512), gpt2(5, 6, 768)),
    "gpt2 2, 7 -> 8 layers": (gpt2(7, 4, 512), gpt2(8, 8, 1024)),
}


def donor_and_grown_logits(donor_shape, target, tied=False, **grow_args):
    donor = make_donor(donor_shape, tied=tied)
    op, config = grow(donor, target, depth="identity", width="lossless", **grow_args)
    ids = torch.randint(0, VOCAB, (3, 40))
    with torch.no_grad():
        return donor(ids).logits, materialized(op, config)(ids).logits


def relative_error(got, expected):
    return ((got - expected).abs().max() / expected.abs().max()).item()


@pytest.mark.parametrize("case, tied", [(c, tied) for c in CASES for tied in (True, False)
                                        if tied or CASES[c][0].family == "llama"])  # GPT-2 always ties
def test_lossless_growth_keeps_the_donor_function(case, tied):
    donor_shape, target = CASES[case]
    expected, got = donor_and_grown_logits(donor_shape, target, tied)
    assert relative_error(got, expected) <= 1e-5


@pytest.mark.parametrize("placement", ["interleave", "top", "middle"])
@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_identity_layers_are_lossless_wherever_they_go(placement, family):
    donor_shape = replace(LLAMA if family == "llama" else GPT2, layers=3)
    expected, got = donor_and_grown_logits(donor_shape, replace(donor_shape, layers=7), new_layers=placement)
    assert relative_error(got, expected) <= 1e-5


@pytest.mark.parametrize("l1, l2, placement, sources, new", [
    (3, 4, "interleave", [0, 1, 1, 2], [False, False, True, False]),
    (2, 5, "interleave", [0, 0, 0, 0, 1], [False, True, True, True, False]),
    (7, 8, "interleave", [0, 1, 2, 3, 3, 4, 5, 6], [False] * 4 + [True] + [False] * 3),
    (30, 32, "interleave", None, None),
    (3, 5, "top", [0, 1, 2, 2, 2], [False, False, False, True, True]),
    (4, 6, "middle", [0, 1, 1, 1, 2, 3], [False, False, True, True, False, False]),
])
def test_identity_layout_places_new_layers(l1, l2, placement, sources, new):
    got_sources, got_new = identity_layout(l1, l2, placement)
    assert len(got_sources) == l2 and sum(got_new) == l2 - l1
    assert [s for s, n in zip(got_sources, got_new) if not n] == list(range(l1))  # donor layers in order
    if sources is not None:
        assert (got_sources, got_new) == (sources, new)
    else:  # 30 -> 32: the two new layers sit about a quarter and three quarters of the way up
        assert [i for i, n in enumerate(got_new) if n] == [8, 23]


def test_new_layers_start_as_identities_with_live_readers():
    donor = make_donor(replace(LLAMA, layers=2))
    op, _ = grow(donor, replace(LLAMA, layers=3), depth="identity", width="lossless")
    grown = dict(op.materialize())
    d = donor.state_dict()
    for name in ("self_attn.o_proj.weight", "mlp.down_proj.weight"):  # new layer 1: writers zero
        assert not grown[f"model.layers.1.{name}"].any()
    for name in ("self_attn.q_proj.weight", "mlp.up_proj.weight", "input_layernorm.weight"):  # readers: layer 0's
        assert torch.equal(grown[f"model.layers.1.{name}"], d[f"model.layers.0.{name}"])
        assert torch.equal(grown[f"model.layers.2.{name}"], d[f"model.layers.1.{name}"])


def test_norm_eps_follows_the_residual_stream():
    """Zero (RMSNorm) or mean (LayerNorm) new units shrink the norm statistic by D1/D2; so does the eps."""
    for shape, key in ((LLAMA, "rms_norm_eps"), (GPT2, "layer_norm_epsilon")):
        donor = make_donor(shape)
        target = replace(shape, hidden=192, heads=6, kv_heads=3 if shape.family == "llama" else 6)
        _, config = grow(donor, target, depth="identity", width="lossless")
        assert getattr(config, key) == pytest.approx(getattr(donor.config, key) * 128 / 192, rel=1e-12)
        _, config = grow(donor, target, depth="stack", width="copy")
        assert getattr(config, key) == getattr(donor.config, key)


def train_a_few_steps(model, steps=4, lr=1e-2):
    """Plain AdamW on random tokens: what the train stage does to a grown model, in miniature."""
    torch.manual_seed(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    model.train()
    for _ in range(steps):
        ids = torch.randint(0, VOCAB, (4, 32))
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad()


def update_gap(before, after, a, b):
    """How differently rows a and b moved, relative to how far a moved (0: they moved identically)."""
    delta = after - before
    return ((delta[a] - delta[b]).norm() / delta[a].norm()).item()


@pytest.mark.parametrize("width", ["lossless", "copy"])
def test_training_breaks_the_symmetry_of_copies_and_new_units(width):
    """Lossless: copies of a unit (MLP units, heads) and new residual units receive different gradients
    and diverge, and identity layers' writers come alive. Plain equal-count copies (width=copy, ratio 3)
    move in lockstep forever: the baseline that shows this test can fail."""
    shape = LLAMA  # 128 wide, 4/2 heads of 32, ffn 352
    target = replace(LLAMA, layers=3, hidden=384, heads=12, kv_heads=6, ffn=1056)  # x3: two copies of each unit
    op, config = grow(make_donor(shape), target, depth="identity", width=width)
    model = materialized(op, config)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    train_a_few_steps(model)
    after = model.state_dict()
    up = "model.layers.0.mlp.up_proj.weight"  # unit 5 and its copies 357 and 709 start as identical rows
    q = "model.layers.0.self_attn.q_proj.weight"  # head 1 (rows 32-63) and its copies
    q_src = op.layers[0].expansions["q_heads"].weight.argmax(dim=1).tolist()
    copy_of_head_1 = [h for h, s in enumerate(q_src) if s == 1 and h != 1][0]
    gaps = [update_gap(before[up], after[up], 5, 357), update_gap(before[up], after[up], 357, 709),
            update_gap(before[q].view(12, -1), after[q].view(12, -1), 1, copy_of_head_1)]
    if width == "copy":
        assert max(gaps) < 1e-4
        return
    assert min(gaps) > 0.02  # measured 0.05-0.1 after 4 steps
    # new residual units (>= 128) are written as zero at first; training makes them live and distinct
    o = "model.layers.0.self_attn.o_proj.weight"
    assert not before[o][128:].any() and after[o][128:].abs().sum() > 0
    new_rows = after[o][128:]
    # Exact distances (cdist's default matmul path rounds a small distance to 0). The closest pairs are the
    # two new units made from one donor unit: their reader columns are that unit's times i.i.d. factors, so
    # their gradients differ in scale, which Adam ignores; they part only as fast as the factors differ
    # (closest pair measured 3.4e-4 of a row's norm after 4 steps, growing; median 0.014; others >= 0.4).
    gaps = torch.cdist(new_rows, new_rows, compute_mode="donot_use_mm_for_euclid_dist").fill_diagonal_(float("inf"))
    assert (gaps.min(dim=1).values / new_rows.norm(dim=1)).min() > 1e-5  # no two new units alike: ~100x rounding
    # the identity layer (target layer 1, inserted after donor layer 0) gets non-zero writers
    assert not before["model.layers.1.mlp.down_proj.weight"].any()
    assert after["model.layers.1.mlp.down_proj.weight"].abs().sum() > 0


def test_stack_for_a_non_multiple_depth_names_the_lossless_alternative():
    donor = ModelShape("llama", 30, 576, 9, 3, 1536, 2048)
    target = ModelShape("llama", 32, 960, 15, 5, 2560, 2048)
    notes = lossy_choices(GrowthPlan(donor, target, "stack", "copy"))
    assert any("depth_init=identity is lossless" in n and "30 -> 32" in n for n in notes)
    assert any("width_init=lossless" in n and "hidden 576 -> 960" in n for n in notes)
    assert lossy_choices(GrowthPlan(donor, target)) == []  # the defaults: identity + lossless
    assert lossy_choices(GrowthPlan(donor, replace(target, layers=60), "stack", "copy")) == [
        n for n in notes if "width" in n]  # 30 -> 60 stacks whole copies


def test_identity_needs_per_module_depth_coefficients():
    with pytest.raises(ConfigError, match="identity needs grow.depth_coefficients=per_module"):
        load_config("tiny", ["grow.depth_coefficients=shared"])
    load_config("tiny", ["grow.depth_coefficients=shared", "grow.depth_init=stack"])
    with pytest.raises(ConfigError, match="per_module depth coefficients"):
        check_plan(GrowthPlan(LLAMA, replace(LLAMA, layers=3), depth_coefficients="shared"))


def test_operator_init_names_every_trainable_parameter():
    """The grow stage writes these exact fp32 values into the optimizer's master weights under bf16."""
    for shape, target in (CASES["llama 5/3, 9/3 -> 15/5 heads, 3 -> 4 layers"], CASES["gpt2 3/2, 2 -> 5 layers"]):
        op, _ = grow(make_donor(shape), target, depth="identity", width="lossless")
        trainable = {n: p for n, p in op.named_parameters() if p.requires_grad}
        values = dict(operator_init(op.plan, adapter_for(make_donor(shape).config)).named_values())
        assert values.keys() == trainable.keys()
        assert all(torch.equal(values[n], p.detach()) for n, p in trainable.items())


def test_every_operator_parameter_has_the_fan_in_its_lr_is_divided_by():
    """The grow stage's per-parameter LR is grow.lr / fan_in: how many donor units or layers a coefficient
    blends (the donor's width, head counts, MLP width, depth), 1 for per-unit scales and gates."""
    donor_shape, target = CASES["gpt2 5/3, 3 -> 5 heads, 3 -> 4 layers"]
    op, _ = grow(make_donor(donor_shape), target, depth="identity", width="lossless")
    d = op.plan.donor
    expected = {"residual.weight": d.hidden, "residual.writer": d.hidden, "residual.scale": 1,
                "residual.norm_bias_gate": 1, "layers.0.depth.o": d.layers, "layers.3.expansions.ffn.weight": d.ffn,
                "layers.0.expansions.ffn.scale": 1, "layers.1.expansions.q_heads.weight": d.heads,
                "layers.1.expansions.k_heads.weight": d.kv_heads}
    assert {name: op.fan_in(name) for name in expected} == expected
    assert all(op.fan_in(n) >= 1 for n, p in op.named_parameters() if p.requires_grad)  # every one is known
