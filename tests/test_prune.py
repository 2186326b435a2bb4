"""Lottery tickets: exact magnitude pruning, nested masks, controls (pipeline/lottery/masks.py), and the
prune stage on 2 ranks: masked weights stay exactly zero under ZeRO-2 and ZeRO-3, rounds start from
the rewind weights x mask, re-running skips finished rounds."""

import json

import pytest
import torch
from safetensors.torch import load_file

from conftest import data_overrides, run_deepspeed
from pipeline.config import ConfigError, load_config
from pipeline.engine import WeightMasks
from pipeline.lottery import DEFAULT_INCLUDE
from pipeline.lottery.masks import full_masks, magnitude_masks, prunable_names, random_masks_like


def random_weights(seed=0, ties=False):
    gen = torch.Generator().manual_seed(seed)
    weights = {f"layers.{i}.mlp.w": torch.randn(37, 53 + i, generator=gen) * (i + 1) for i in range(3)}
    if ties:  # duplicated values, as a copy-grown model has: the count must still be exact
        weights = {name: (w * 4).round() / 4 for name, w in weights.items()}
    return weights


@pytest.mark.parametrize("ties", [False, True])
def test_global_pruning_removes_an_exact_count_below_one_threshold(ties):
    weights = random_weights(ties=ties)
    shapes = {name: tuple(w.shape) for name, w in weights.items()}
    masks = magnitude_masks(weights.__getitem__, full_masks(shapes, list(weights)), 0.37, "global")
    total = sum(w.numel() for w in weights.values())
    pruned = torch.cat([w[~masks[n]].abs() for n, w in weights.items()])
    kept = torch.cat([w[masks[n]].abs() for n, w in weights.items()])
    assert len(pruned) == round(0.37 * total)
    assert pruned.max() <= kept.min()
    # one threshold over all tensors: the per-tensor fractions differ (the tensors' scales differ)
    fractions = [float((~m).float().mean()) for m in masks.values()]
    assert max(fractions) - min(fractions) > 0.2


def test_layerwise_pruning_prunes_each_tensor_to_the_fraction():
    weights = random_weights()
    shapes = {name: tuple(w.shape) for name, w in weights.items()}
    masks = magnitude_masks(weights.__getitem__, full_masks(shapes, list(weights)), 0.5, "layerwise")
    for name, w in weights.items():
        assert int((~masks[name]).sum()) == round(0.5 * w.numel())
        assert w[~masks[name]].abs().max() <= w[masks[name]].abs().min()


def test_iterative_masks_are_nested_with_density_0_8_per_round():
    weights = random_weights(seed=1)
    shapes = {name: tuple(w.shape) for name, w in weights.items()}
    total = sum(w.numel() for w in weights.values())
    masks = full_masks(shapes, list(weights))
    for level in range(1, 5):
        # the trained ticket of a round has its pruned weights at zero: they must not count as survivors
        trained = {n: (w + 0.3 * torch.randn(w.shape, generator=torch.Generator().manual_seed(level))) * masks[n]
                   for n, w in weights.items()}
        new = magnitude_masks(trained.__getitem__, masks, 1 - 0.8 ** level, "global")
        assert all(bool((new[n] <= masks[n]).all()) for n in masks)  # subsets: nothing revives
        assert abs(sum(int(m.sum()) for m in new.values()) - 0.8 ** level * total) <= 1
        masks = new
    with pytest.raises(ConfigError, match="must increase"):
        magnitude_masks(weights.__getitem__, masks, 0.2, "global")
    diverged = {**weights, "layers.1.mlp.w": weights["layers.1.mlp.w"].clone().fill_(float("nan"))}
    with pytest.raises(ConfigError, match="non-finite"):  # NaN would otherwise rank above every magnitude
        magnitude_masks(diverged.__getitem__, full_masks(shapes, list(weights)), 0.5, "global")


def test_random_prune_control_keeps_per_tensor_counts_at_other_positions():
    weights = random_weights()
    shapes = {name: tuple(w.shape) for name, w in weights.items()}
    ticket = magnitude_masks(weights.__getitem__, full_masks(shapes, list(weights)), 0.6, "global")
    control = random_masks_like(ticket, seed=3)
    for name in ticket:
        assert int(control[name].sum()) == int(ticket[name].sum())
        assert not torch.equal(control[name], ticket[name])
    assert all(torch.equal(control[n], m) for n, m in random_masks_like(ticket, seed=3).items())  # seeded


def test_gradient_masks_follow_the_gradient_to_the_accelerator():
    """ZeRO 0-2: the masks are made before the engine moves the module to the accelerator, and the first
    GPU backward would mix devices. The hook moves its mask once to the gradient's device (meta stands in
    for the accelerator) and zeroes the pruned entries, non-finite ones too."""
    model = torch.nn.Linear(4, 3, bias=False)
    mask = torch.tensor([[True, False, True, True]] * 3)
    masks = WeightMasks(model, {"weight": mask})
    assert torch.equal(model.weight.detach() == 0, ~mask)
    model.weight.sum().mul(float("inf")).backward()  # every gradient non-finite
    assert torch.equal(model.weight.grad.isfinite(), ~mask) and not model.weight.grad[~mask].any()
    masked = masks._mask_gradient(0, torch.ones(3, 4, device="meta"))
    assert masked.device.type == "meta" and masks.masked[0][1].device.type == "meta"


@pytest.mark.parametrize("size, per_layer", [("llama-nano", 7), ("gpt2-nano", 4), ("qwen2-nano", 7), ("qwen3-nano", 7),
                                             ("phi3-nano", 4)])
def test_default_prunable_weights_are_the_blocks_matrices(size, per_layer):
    from pipeline.models.hf import build_model, hf_config
    from pipeline.models.sizes import SIZES
    model = build_model(hf_config(SIZES[size], 512, {}))
    shapes = {n: tuple(p.shape) for n, p in model.named_parameters()}
    names = prunable_names(shapes, DEFAULT_INCLUDE, "")
    assert len(names) == SIZES[size].layers * per_layer
    assert not [n for n in names if any(k in n for k in ("embed", "wte", "wpe", "lm_head", "norm", "ln_", "bias"))]
    assert prunable_names(shapes, DEFAULT_INCLUDE, r"\.0\.") == [n for n in names if ".0." not in n]
    with pytest.raises(ConfigError, match="no weight matrix matches"):
        prunable_names(shapes, "nothing-like-this", "")


@pytest.mark.parametrize("override, message", [
    ("prune.sparsities=0.5,0.2", "increasing"),
    ("prune.sparsities=1.0", "increasing"),
    ("prune.controls=random_prune,shuffle", "unknown"),
    ("prune.rewind_step=200", "rewind_step"),
    ("prune.include=(", "regular expression"),
])
def test_bad_prune_settings_are_refused_at_load(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config("tiny", [override])


PRUNE_RUN = ["model.size=llama-nano", "train.steps=5", "train.warmup_steps=1", "train.eval_interval=5",
             "train.eval_batches=1", "train.log_interval=5", "train.checkpoint_interval=5", "prune.rewind_step=1"]


def prune(run_dir, root, *extra, flags=()):
    return run_deepspeed(["--module", "pipeline.prune", "--config", "tiny", *flags, f"run.dir={run_dir}",
                          *data_overrides(root), *PRUNE_RUN, *extra], timeout=900)


def weights_of(hf_dir):
    return load_file(hf_dir / "model.safetensors")


@pytest.mark.distributed
def test_prune_stage_under_zero3_keeps_pruned_weights_zero_and_resume_skips_rounds(prepared, tmp_path):
    root, _, _ = prepared
    run = tmp_path / "prune"
    prune(run, root, "train.deepspeed_config=zero3", "prune.sparsities=0.3,0.6")
    rewind = weights_of(run / "rewind")
    masks = {name: load_file(run / "masks" / f"{name}.safetensors")
             for name in (f"round{r}-{arm}" for r in (1, 2) for arm in ("ticket", "random_prune", "random_reinit"))}
    ticket1, ticket2 = masks["round1-ticket"], masks["round2-ticket"]
    prunable = sum(m.numel() for m in ticket1.values())
    for level, sparsity, ticket in ((1, 0.3, ticket1), (2, 0.6, ticket2)):
        assert sum(int(m.sum()) for m in ticket.values()) == prunable - round(sparsity * prunable)
        for name, mask in masks[f"round{level}-random_prune"].items():  # layerwise shuffle: same counts
            assert int(mask.sum()) == int(ticket[name].sum()) and not torch.equal(mask, ticket[name])
    assert all(bool((ticket2[n] <= ticket1[n]).all()) for n in ticket1)
    for name, mask in masks.items():
        start, final = weights_of(run / name / "start"), weights_of(run / name / "hf")
        for key, kept in mask.items():
            if "random_reinit" not in name:  # rewound: start = rewind weights x mask, exactly
                assert torch.equal(start[key], rewind[key] * kept), (name, key)
            else:  # a new init, same mask
                assert torch.equal(start[key] == 0, ~kept) and not torch.equal(start[key], rewind[key] * kept)
            assert bool((final[key][~kept] == 0).all()), (name, key)  # still zero after the steps
            assert float((final[key] != start[key])[kept].float().mean()) > 0.9  # the survivors trained
        if "random_reinit" not in name:  # tensors outside the mask are not touched by it
            assert torch.equal(start["model.embed_tokens.weight"], rewind["model.embed_tokens.weight"])
    # the protocol-matched dense reference: the rewind weights, unpruned, trained from the rewind step
    dense_rewound = weights_of(run / "dense_rewound" / "start")
    assert all(torch.equal(dense_rewound[k], rewind[k]) for k in rewind)
    summary = json.loads((run / "summary.json").read_text())
    assert [(r["round"], r["arm"]) for r in summary] == [(0, "dense"), (0, "dense_rewound")] + [
        (r, arm) for r in (1, 2) for arm in ("ticket", "random_prune", "random_reinit")]
    assert (run / "loss_vs_sparsity.png").stat().st_size > 0
    # a re-run trains nothing: every round is finished
    again = prune(run, root, "train.deepspeed_config=zero3", "prune.sparsities=0.3,0.6", flags=["--resume", "auto"])
    assert again.stdout.count("finished earlier, skipped") == 8 and ": training" not in again.stdout


@pytest.mark.distributed
def test_one_shot_layerwise_prune_under_zero2_gpt2_keeps_pruned_weights_zero(prepared, tmp_path):
    root, _, _ = prepared
    run = tmp_path / "prune"
    prune(run, root, "train.deepspeed_config=zero2", "model.size=gpt2-nano", "prune.sparsities=0.3,0.6",
          "prune.controls=", "prune.strategy=layerwise", "prune.mode=one_shot")
    dense = weights_of(run / "dense" / "hf")
    for level, sparsity in ((1, 0.3), (2, 0.6)):
        mask = load_file(run / "masks" / f"round{level}-ticket.safetensors")
        manifest = json.loads((run / "masks" / f"round{level}-ticket.json").read_text())
        assert manifest["source"] == str(run / "dense" / "hf") and manifest["strategy"] == "layerwise"
        final = weights_of(run / f"round{level}-ticket" / "hf")
        assert {k.split(".")[-2] for k in mask} == {"c_attn", "c_proj", "c_fc"}
        for key, kept in mask.items():
            assert int((~kept).sum()) == round(sparsity * kept.numel())
            # one-shot: the dense model's smallest weights in each tensor
            assert dense[key][~kept].abs().max() <= dense[key][kept].abs().min()
            assert bool((final[key][~kept] == 0).all()) and bool((final[key][kept] != 0).all())

def test_lottery_benchmark_aggregates_seeds_and_judges_matching():
    from pipeline.bench.lottery import aggregate

    def seed(dense, ticket, control):
        return [{"round": 0, "arm": "dense", "sparsity": 0.0, "val_loss_final": dense, "nonzero_parameters": 10,
                 "parameters_dense_kernels": 10},
                {"round": 1, "arm": "ticket", "sparsity": 0.5, "val_loss_final": ticket, "nonzero_parameters": 5,
                 "parameters_dense_kernels": 10},
                {"round": 1, "arm": "random_prune", "sparsity": 0.5, "val_loss_final": control,
                 "nonzero_parameters": 5, "parameters_dense_kernels": 10}]

    rows = aggregate([seed(3.0, 3.05, 3.2), seed(3.2, 3.15, 3.3)])
    dense, ticket, control = rows
    assert dense["val_loss_final"] == pytest.approx(3.1) and dense["val_loss_sd"] == pytest.approx(0.1414, abs=1e-4)
    assert ticket["val_loss_final"] == pytest.approx(3.1) and ticket["matches_dense"] and ticket["below_every_control"]
    assert "matches_dense_rewound" not in ticket  # that reference was not trained
    assert control["delta_vs_dense"] == pytest.approx(0.15)
    worse = aggregate([seed(3.0, 3.4, 3.2), seed(3.0, 3.4, 3.3)])[1]  # no seed spread: must not exceed dense
    assert not worse["matches_dense"] and not worse["below_every_control"]


@pytest.mark.distributed
def test_prune_under_zero3_bf16_keeps_pruned_weights_zero(prepared, tmp_path):
    root, _, _ = prepared
    run = tmp_path / "prune"
    prune(run, root, "train.deepspeed_config=zero3_bf16", "prune.sparsities=0.5", "prune.controls=")
    rewind, mask = weights_of(run / "rewind"), load_file(run / "masks" / "round1-ticket.safetensors")
    start, final = weights_of(run / "round1-ticket" / "start"), weights_of(run / "round1-ticket" / "hf")
    for key, kept in mask.items():
        # the bf16 model is built from the fp32 rewind weights, and its fp32 masters from the bf16 values
        assert torch.equal(start[key], rewind[key].bfloat16().float() * kept), key
        assert bool((final[key][~kept] == 0).all()), key
        assert float((final[key] != start[key])[kept].float().mean()) > 0.9


def test_prune_from_given_weights_rewinds_to_them(prepared, tmp_path):
    """A grown or pretrained start (train.init_from) with rewind step 0: the rounds restart from those
    weights (the BERT-ticket setting). One rank, plain python."""
    import subprocess
    import sys

    from conftest import ROOT
    from pipeline.data.tokenizer import load_tokenizer
    from pipeline.models.hf import save_initialized_model
    from pipeline.models.sizes import SIZES
    root, _, meta = prepared
    start = tmp_path / "given"
    save_initialized_model(SIZES["llama-nano"], load_tokenizer(meta["tokenizer"]), meta["vocab_size"], start, seed=7)
    run = tmp_path / "prune"
    args = [sys.executable, "-m", "pipeline.prune", "--config", "tiny", f"run.dir={run}", *data_overrides(root),
            *PRUNE_RUN, "prune.rewind_step=0", f"train.init_from={start}", "prune.sparsities=0.5", "prune.controls="]
    subprocess.run(args, cwd=ROOT, check=True, capture_output=True)
    given, mask = weights_of(start), load_file(run / "masks" / "round1-ticket.safetensors")
    ticket_start = weights_of(run / "round1-ticket" / "start")
    assert all(torch.equal(weights_of(run / "rewind")[k], given[k]) for k in given)
    assert all(torch.equal(ticket_start[k], given[k] * mask[k]) for k in mask)
    # a launch without --resume over the finished run is refused before it touches anything
    config_before = (run / "config.yaml").read_text()
    fresh = subprocess.run([*args, "prune.strategy=layerwise"], cwd=ROOT, capture_output=True, text=True)
    assert fresh.returncode != 0 and "already holds a prune run" in fresh.stderr
    assert (run / "config.yaml").read_text() == config_before
    # resuming with other prune settings is refused: the finished rounds and masks would not belong to them
    changed = subprocess.run([*args, "prune.strategy=layerwise", "--resume", "auto"], cwd=ROOT, capture_output=True,
                             text=True)
    assert changed.returncode != 0 and "prune.strategy: 'global' -> 'layerwise'" in changed.stderr
    assert (run / "masks" / "round1-ticket.safetensors").exists()  # nothing was removed
