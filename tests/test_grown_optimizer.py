"""AdamW's state through growth (pipeline/growth/moments.py): with the donor's moments mapped into the
lossless start and the per-coordinate LR scales, one AdamW step of the grown model changes its function
exactly as the donor's own step changes the donor's; and training still breaks the copies' symmetry."""

from dataclasses import replace

import pytest
import torch

from conftest import data_overrides, run_deepspeed
from pipeline.engine import AdamW, fade_in_new_units, new_units_fade_in
from pipeline.growth.adapters import adapter_for
from pipeline.growth.moments import MomentMap, exactness_problem
from pipeline.growth.operator import GrowthOperator, GrowthPlan, grown_config, operator_init
from pipeline.metrics import read_metrics
from pipeline.models.hf import HFWeights, shape_of
from pipeline.models.sizes import ModelShape
from pipeline.optimizer_state import SavedState, batch_change_note, read_saved_state
from test_growth import VOCAB, make_donor, materialized

LR, BETAS, DECAY = 1e-3, (0.9, 0.95), 0.1

CASES = {  # width-only at non-integer ratios (and new layers for GPT-2, whose residual cannot grow exactly)
    "llama 5/3: hidden 48 -> 80, 6/3 -> 10/5 heads, ffn 96 -> 160": (
        ModelShape("llama", 2, 48, 6, 3, 96, 64), ModelShape("llama", 2, 80, 10, 5, 160, 64)),
    "llama GQA 9/3 -> 15/5, untied": (
        ModelShape("llama", 2, 72, 9, 3, 128, 64), ModelShape("llama", 2, 120, 15, 5, 208, 64)),
    "qwen2 q/k/v biases, GQA 6/3 -> 10/5": (
        ModelShape("qwen2", 2, 48, 6, 3, 96, 64), ModelShape("qwen2", 2, 80, 10, 5, 160, 64)),
    "gpt2 ffn 7/4, 2 -> 3 layers": (
        ModelShape("gpt2", 2, 64, 2, 2, 128, 64), ModelShape("gpt2", 3, 64, 2, 2, 224, 64)),
}


def batch(seed, rows=4, length=24):
    return torch.randint(0, VOCAB, (rows, length), generator=torch.Generator().manual_seed(seed))


def step(model, optimizer, ids):
    optimizer.zero_grad()
    model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()


def decay_groups(model):
    return [{"params": [p for p in model.parameters() if p.dim() >= 2], "weight_decay": DECAY},
            {"params": [p for p in model.parameters() if p.dim() < 2], "weight_decay": 0.0}]


def trained_donor(shape, tied):
    """A donor with real moments: a few AdamW steps on random batches."""
    donor = make_donor(shape, tied=tied)  # eval mode: no dropout, a step is a function of the weights
    optimizer = AdamW(decay_groups(donor), lr=LR, betas=BETAS, eps=1e-8)
    for s in range(4):
        step(donor, optimizer, batch(100 + s))
    return donor, optimizer


def grown_with_moments(donor, optimizer, target):
    """The lossless start and its AdamW: the donor's moments mapped, LR scales from the map."""
    adapter = adapter_for(donor.config)
    donor_shape = shape_of(donor.config)
    plan = GrowthPlan(donor_shape, target, "identity", "lossless", 0)
    init = operator_init(plan, adapter)
    assert exactness_problem(plan, adapter, init, operator_steps=0) is None
    names = {id(p): n for n, p in donor.named_parameters()}
    moments = {key: {names[id(p)]: optimizer.state[p][key] for p in donor.parameters()}
               for key in ("exp_avg", "exp_avg_sq")}
    canonical = {key: adapter.to_canonical(m, donor_shape.layers, moments=True) for key, m in moments.items()}
    g, layers = adapter.to_canonical(donor.state_dict(), donor_shape.layers)
    op = GrowthOperator(plan, adapter, g, layers, init)
    model = materialized(op, grown_config(donor.config, plan, adapter))
    moment_map = MomentMap(plan, adapter, init)
    mapped = {}
    for key in canonical["exp_avg"][0]:
        mapped[adapter.global_name(key)] = moment_map.global_tensors(
            key, {k: c[0] for k, c in canonical.items()}, target.max_positions)
    for i in range(target.layers):
        tensors = moment_map.layer_tensors(i, {k: c[1] for k, c in canonical.items()})
        for kind in ("exp_avg", "exp_avg_sq", "lr_scale", "new"):
            for name, value in adapter.layer_to_hf({k: v[kind] for k, v in tensors.items()}).items():
                mapped.setdefault(adapter.layer_prefix(i) + name, {})[kind] = value
    return model, mapped, float(next(iter(optimizer.state.values()))["step"])


def grown_optimizer(model, mapped, donor_step, new_lr_scale, lr_scales=True):
    optimizer = AdamW(decay_groups(model), lr=LR, betas=BETAS, eps=1e-8)
    for name, p in model.named_parameters():
        entry = mapped[name]
        optimizer.state[p] = {"step": torch.tensor(donor_step), "exp_avg": entry["exp_avg"].clone(),
                              "exp_avg_sq": entry["exp_avg_sq"].clone()}
        if lr_scales:
            optimizer.lr_scales[id(p)] = torch.where(entry["new"], torch.tensor(new_lr_scale), entry["lr_scale"])
            optimizer.new_units[id(p)] = entry["new"].bool()
    optimizer.new_units_lr_scale = new_lr_scale
    return optimizer


def relative_error(got, expected):
    return ((got - expected).abs().max() / expected.abs().max()).item()


@pytest.mark.parametrize("case", CASES)
def test_one_step_of_the_grown_model_is_the_donors_step(case):
    donor_shape, target = CASES[case]
    donor, donor_optimizer = trained_donor(donor_shape, tied="untied" not in case)
    grown, mapped, donor_step = grown_with_moments(donor, donor_optimizer, target)
    optimizer = grown_optimizer(grown, mapped, donor_step, new_lr_scale=0.0)  # new units held still
    ids, probe = batch(0), batch(1)
    with torch.no_grad():
        assert relative_error(grown(probe).logits, donor(probe).logits) <= 1e-5  # lossless start
        before = donor(probe).logits
    step(donor, donor_optimizer, ids)
    step(grown, optimizer, ids)
    with torch.no_grad():
        expected, got = donor(probe).logits, grown(probe).logits
    moved = relative_error(expected, before)
    assert moved > 1e-3  # the step changed the donor's function clearly
    assert relative_error(got, expected) <= 1e-5


@pytest.mark.parametrize("family, donor, target, reason", [
    ("gpt2", ModelShape("gpt2", 2, 64, 2, 2, 128, 64), ModelShape("gpt2", 2, 96, 3, 3, 128, 64), "LayerNorm re-centres"),
    ("qwen3", ModelShape("qwen3", 2, 48, 6, 3, 96, 64, 16), ModelShape("qwen3", 2, 80, 10, 5, 160, 64, 16),
     "q/k norms' rescaled eps"),
])
def test_starts_whose_moments_cannot_map_exactly_say_why(family, donor, target, reason):
    plan = GrowthPlan(donor, target, "identity", "lossless", 0)
    adapter = adapter_for(make_donor(donor).config)
    assert reason in exactness_problem(plan, adapter, operator_init(plan, adapter), operator_steps=0)


def test_a_fresh_optimizer_does_not_take_the_donors_step():
    """The control: without the moments and LR scales the same step leaves the donor's function by far."""
    donor_shape, target = CASES["llama 5/3: hidden 48 -> 80, 6/3 -> 10/5 heads, ffn 96 -> 160"]
    donor, donor_optimizer = trained_donor(donor_shape, tied=True)
    grown, _, _ = grown_with_moments(donor, donor_optimizer, target)
    optimizer = AdamW(decay_groups(grown), lr=LR, betas=BETAS, eps=1e-8)
    ids, probe = batch(0), batch(1)
    step(donor, donor_optimizer, ids)
    step(grown, optimizer, ids)
    with torch.no_grad():
        assert relative_error(grown(probe).logits, donor(probe).logits) > 1e-2


def copies_gap(model, rows: list[int]) -> float:
    """Largest relative difference between the up-projection rows of two copies of one MLP unit."""
    up = model.model.layers[0].mlp.up_proj.weight
    return ((up[rows[0]] - up[rows[1]]).abs().max() / up[rows[0]].abs().max()).item()


@pytest.mark.parametrize("residual_grows, new_lr_scale, fade_in, lr_scales, diverge", [
    (True, 0.0, 0, True, False),  # exact scales, new units still: the copies stay in lockstep
    (True, 1.0, 0, True, True),  # new residual units train and break the symmetry...
    (True, 1.0, 4, True, True),  # ...faded in too (the defaults)
    (False, 1.0, 0, True, False),  # no new residual units: exact scales keep copies in lockstep...
    (False, 1.0, 0, False, True),  # ...the moments without the LR scales do not
])
def test_copies_diverge_with_the_default_settings(residual_grows, new_lr_scale, fade_in, lr_scales, diverge):
    donor_shape, target = CASES["llama 5/3: hidden 48 -> 80, 6/3 -> 10/5 heads, ffn 96 -> 160"]
    if not residual_grows:
        target = replace(donor_shape, ffn=target.ffn)
    donor, donor_optimizer = trained_donor(donor_shape, tied=True)
    grown, mapped, donor_step = grown_with_moments(donor, donor_optimizer, target)
    optimizer = grown_optimizer(grown, mapped, donor_step, new_lr_scale, lr_scales)
    copies = [0, donor_shape.ffn]  # MLP unit 0 and its first copy
    new_rows = grown.model.layers[0].mlp.down_proj.weight[donor_shape.hidden:]  # writers of new residual units
    assert copies_gap(grown, copies) == 0.0 and (new_rows == 0).all()
    factor = new_units_fade_in(fade_in)
    for s in range(6):
        optimizer.fade_in(factor(s))
        step(grown, optimizer, batch(200 + s))
    gap = copies_gap(grown, copies)
    assert gap > 1e-3 if diverge else gap < 1e-5
    if residual_grows:  # new units leave their zero start unless held still
        assert (new_rows.abs().max() > 1e-4) == (new_lr_scale > 0)


def test_fade_in_scales_only_the_new_coordinates_update():
    """The new units' fade-in: factor f multiplies the Adam term of the coordinates marked new (their
    moments fill as usual), leaves the others' update alone, and frees the masks at 1."""
    torch.manual_seed(0)
    start, grad = torch.zeros(6), torch.randn(6)  # from 0, and a factor of 1/4: the updates compare exactly
    new = torch.tensor([False, False, False, True, True, True])
    updates = {}
    for factor in (1.0, 0.25):
        p = torch.nn.Parameter(start.clone())
        optimizer = AdamW([p], lr=LR, betas=BETAS, eps=1e-8, weight_decay=0.0)
        optimizer.lr_scales[id(p)] = torch.tensor([0.5, 1.0, 2.0, 1.0, 1.0, 1.0])  # new ones: new_units_lr_scale
        optimizer.new_units[id(p)] = new
        optimizer.fade_in(factor)
        p.grad = grad.clone()
        optimizer.step()
        updates[factor] = p.detach() - start
        assert torch.equal(optimizer.state[p]["exp_avg"], (1 - BETAS[0]) * grad)  # moments fill for every coordinate
    assert torch.equal(updates[0.25][~new], updates[1.0][~new])
    assert torch.equal(updates[0.25][new], 0.25 * updates[1.0][new]) and (updates[1.0] != 0).all()
    assert [new_units_fade_in(4)(s) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert new_units_fade_in(0)(0) == 1.0

    class Engine:
        client_optimizer = optimizer
    fade_in_new_units(Engine, 0.5)
    assert optimizer.lr_scales[id(p)].tolist() == [0.5, 1.0, 2.0, 0.5, 0.5, 0.5] and optimizer.new_units
    fade_in_new_units(Engine, 1.0)
    assert optimizer.lr_scales[id(p)].tolist() == [0.5, 1.0, 2.0, 1.0, 1.0, 1.0] and not optimizer.new_units


# -- through the stages: DeepSpeed partitions, 2 ranks --------------------------------------------------

STAGE = ["train.eval_batches=2", "train.log_interval=1", "train.grad_clip=0"]  # clipping would mix scales
GROWN = ["model.layers=3", "model.hidden=192", "model.heads=6", "model.kv_heads=3", "model.ffn=500"]


def stage(module, run_dir, root, *extra, flags=()):
    return run_deepspeed(["--module", f"pipeline.{module}", "--config", "tiny", *flags, f"run.dir={run_dir}",
                          *data_overrides(root), *STAGE, *extra])


def val_losses(run_dir):
    return {r["step"]: r["val/loss"] for r in read_metrics(run_dir) if "val/loss" in r}


def test_a_run_at_a_smaller_batch_than_the_moments_is_told_what_to_expect(tmp_path):
    saved = SavedState(tmp_path / "adamw.safetensors", 150, set(), tokens_per_step=2048)
    assert batch_change_note(saved, 2048) is None and batch_change_note(saved, 4096) is None  # larger: not measured
    assert "2,048 tokens per step, this run takes 1,024" in batch_change_note(saved, 1024)
    assert batch_change_note(SavedState(saved.path, 150, set(), tokens_per_step=None), 1024) is None  # not recorded


@pytest.mark.distributed
def test_grown_run_takes_the_donors_step_through_zero3_and_resumes_exactly(prepared, tmp_path):
    root, _, _ = prepared
    donor = tmp_path / "donor"
    stage("train", donor, root, "model.size=llama-nano", "train.steps=8", "train.warmup_steps=2",
          "train.eval_interval=8", "train.deepspeed_config=zero2")
    saved = read_saved_state(donor / "hf")
    assert saved.step == 8 and not saved.has_lr_scales
    assert saved.tokens_per_step == 2 * 8 * 128  # 2 ranks x the tiny recipe's micro batch x seq_len
    assert len(saved.names) == 2 * len(HFWeights(donor / "hf").files)
    grow = tmp_path / "grow"
    out = stage("grow", grow, root, "model.size=llama-nano", *GROWN, f"grow.donor={donor}/hf", "grow.steps=0")
    assert "mapped exactly" in out.stdout
    assert read_saved_state(grow / "hf").has_lr_scales
    assert read_saved_state(grow / "hf").tokens_per_step == saved.tokens_per_step  # the donor's batch, through growth

    # one step from the donor's own moments vs one step of the grown model (new units held still):
    # the same batch, LR and function, so the same validation loss after it
    one_step = ["train.steps=4", "train.eval_interval=1", "train.deepspeed_config=zero3", "train.continued.lr_ratio=1",
                "--until-step", "1"]
    continued = stage("train", tmp_path / "donor-continued", root, "model.size=null", f"train.init_from={donor}/hf",
                      *one_step)
    assert "AdamW starts from" in continued.stdout and "tokens per step" not in continued.stdout  # same batch
    stage("train", tmp_path / "grown-exact", root, "model.size=null", f"train.init_from={grow}/hf",
          "train.continued.new_units_lr_scale=0", *one_step)
    donor_losses, grown_losses = val_losses(tmp_path / "donor-continued"), val_losses(tmp_path / "grown-exact")
    assert grown_losses[0] == pytest.approx(donor_losses[0], rel=1e-5)
    assert abs(donor_losses[1] - donor_losses[0]) > 1e-3  # the step moved the donor
    assert grown_losses[1] == pytest.approx(donor_losses[1], rel=1e-5)

    # the default settings (new units faded in over the whole run), interrupted and resumed inside the
    # fade-in: bit-identical to an uninterrupted run
    run = ["model.size=null", f"train.init_from={grow}/hf", "train.steps=6", "train.eval_interval=3",
           "train.checkpoint_interval=3", "train.deepspeed_config=zero3"]
    stage("train", tmp_path / "whole", root, *run)
    stage("train", tmp_path / "parts", root, *run, flags=["--until-step", "3"])
    stage("train", tmp_path / "parts", root, *run, flags=["--resume", "auto"])
    deterministic = [[{k: v for k, v in r.items() if not k.startswith("perf/")} for r in read_metrics(tmp_path / d)]
                     for d in ("whole", "parts")]
    assert deterministic[0] == deterministic[1]
    # the fade-in is applied: new units at their full LR from the first update train differently
    stage("train", tmp_path / "at-once", root, *run, "train.continued.new_units_warmup_steps=0", flags=["--until-step", "2"])
    faded, at_once = ({r["step"]: r["train/loss"] for r in read_metrics(tmp_path / d) if "train/loss" in r}
                      for d in ("whole", "at-once"))
    assert faded[1] == at_once[1] and faded[2] != at_once[2]
