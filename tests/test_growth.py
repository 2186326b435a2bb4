"""The LiGO operator on CPU: shapes and tying, exact heuristics, function preservation, generated forward
== materialized HF model, parameter count, and bad input."""

from dataclasses import replace

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import AutoModelForCausalLM, BertConfig

from pipeline.config import ConfigError, load_config
from pipeline.growth.adapters import adapter_for
from pipeline.growth.init import depth_sources, head_sources, original_units
from pipeline.growth.model import GrownModel
from pipeline.growth.operator import GrowthOperator, GrowthPlan, generation_flops, grown_config
from pipeline.models.hf import build_model, hf_config, shape_of
from pipeline.models.sizes import SIZES

TOKEN_IDS = {"bos_token_id": 2, "eos_token_id": 3, "pad_token_id": 0}
VOCAB = 300
LLAMA = SIZES["llama-nano"]  # 2 layers, 128 wide, 4 query / 2 KV heads of 32, ffn 352
GPT2 = SIZES["gpt2-nano"]


def make_donor(shape, seed=0, tied=False):
    torch.manual_seed(seed)
    config = hf_config(shape, VOCAB, TOKEN_IDS)
    config.tie_word_embeddings = tied or shape.family == "gpt2"
    donor = build_model(config).eval()
    with torch.no_grad():  # non-trivial norms and biases, so tying mistakes show
        for name, p in donor.named_parameters():
            if "norm" in name or "ln_" in name or name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.2)
    return donor


def grow(donor, target, depth="stack", width="copy", seed=0, depth_coefficients="per_module",
         new_layers="interleave"):
    adapter = adapter_for(donor.config)
    g, layers = adapter.to_canonical(donor.state_dict(), shape_of(donor.config).layers)
    plan = GrowthPlan(shape_of(donor.config), target, depth, width, seed, depth_coefficients, new_layers)
    op = GrowthOperator(plan, adapter, g, layers)
    return op, grown_config(donor.config, plan, adapter)


def assert_same(got, expected):
    """Equal up to float rounding (x * (1/3) vs x / 3): at most a few ulp."""
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-9)


def materialized(op, target_config):
    model = AutoModelForCausalLM.from_config(target_config).eval()
    missing, unexpected = model.load_state_dict(dict(op.materialize()), strict=False)
    assert unexpected == [] and missing == (["lm_head.weight"] if op.adapter.tied_head else [])
    return model


TARGETS = {
    "llama wider, GQA 4/2 -> 8/4": (LLAMA, replace(LLAMA, hidden=256, heads=8, kv_heads=4, ffn=704)),
    "llama deeper+wider": (LLAMA, SIZES["llama-micro"]),
    "llama non-integer width, depth 2->3": (LLAMA, replace(LLAMA, layers=3, hidden=192, heads=6, kv_heads=3, ffn=500)),
    "llama shrink depth 2->1": (LLAMA, replace(LLAMA, layers=1, hidden=160, heads=5, kv_heads=5, ffn=400)),
    "gpt2 deeper+wider": (GPT2, SIZES["gpt2-micro"]),
    "gpt2 non-integer width": (GPT2, replace(GPT2, layers=3, hidden=224, heads=7, kv_heads=7, ffn=800)),
}


@pytest.mark.parametrize("case", list(TARGETS))
def test_generated_forward_equals_materialized_model(case):
    donor_shape, target = TARGETS[case]
    op, target_config = grow(make_donor(donor_shape), target, depth="noisy_stack", width="random")
    with torch.no_grad():  # move away from the init so every operator parameter matters
        for p in op.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.01)
    ids = torch.randint(0, VOCAB, (2, 24))
    generated = GrownModel(op, target_config)(ids).logits
    hf = materialized(op, target_config)(ids).logits
    assert generated.shape == (2, 24, VOCAB)
    assert torch.allclose(generated, hf, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape, target, tied", [
    (LLAMA, replace(LLAMA, hidden=256, heads=8, kv_heads=4, ffn=704), False),   # 2x, GQA groups doubled
    (LLAMA, replace(LLAMA, hidden=384, heads=12, kv_heads=2, ffn=1056), False),  # 3x, query heads per group x3
    (LLAMA, replace(LLAMA, hidden=256, heads=8, kv_heads=4, ffn=704), True),    # tied LM head
    (GPT2, replace(GPT2, hidden=256, heads=8, kv_heads=8, ffn=1024), True),
])
def test_copy_width_growth_preserves_the_function(shape, target, tied):
    donor = make_donor(shape, tied=tied)
    op, target_config = grow(donor, target, depth="stack", width="copy")
    assert op.adapter.tied_head == tied and target_config.tie_word_embeddings == tied
    ids = torch.randint(0, VOCAB, (3, 32))
    with torch.no_grad():
        expected = donor(ids).logits
        got = materialized(op, target_config)(ids).logits
    assert (got - expected).abs().max() <= 1e-5 * expected.abs().max()


def test_copy_width_is_hypercloning_exactly():
    """Each target matrix is the donor's with rows copied and columns copied and divided by the copies."""
    donor = make_donor(LLAMA)
    target = replace(LLAMA, hidden=320, heads=10, kv_heads=5, ffn=704)  # non-integer residual ratio 2.5
    op, target_config = grow(donor, target)
    grown = dict(op.materialize())
    res = [i if i < 128 else (i - 128) % 128 for i in range(320)]
    res_copies = torch.bincount(torch.tensor(res)).float()
    ffn = [i if i < 352 else (i - 352) % 352 for i in range(704)]
    ffn_copies = torch.bincount(torch.tensor(ffn)).float()
    d = donor.state_dict()
    up = d["model.layers.1.mlp.up_proj.weight"]
    assert_same(grown["model.layers.1.mlp.up_proj.weight"], up[ffn][:, res] / res_copies[res])
    down = d["model.layers.0.mlp.down_proj.weight"]
    assert_same(grown["model.layers.0.mlp.down_proj.weight"], down[res][:, ffn] / ffn_copies[ffn])
    q_heads, kv_heads = head_sources(4, 2, 10, 5)
    q_rows = [h * 32 + j for h in q_heads for j in range(32)]
    q = d["model.layers.0.self_attn.q_proj.weight"]
    assert_same(grown["model.layers.0.self_attn.q_proj.weight"], q[q_rows][:, res] / res_copies[res])
    kv_rows = [g * 32 + j for g in kv_heads for j in range(32)]
    k = d["model.layers.0.self_attn.k_proj.weight"]
    assert_same(grown["model.layers.0.self_attn.k_proj.weight"], k[kv_rows][:, res] / res_copies[res])
    o = d["model.layers.1.self_attn.o_proj.weight"]
    q_copies = torch.bincount(torch.tensor(q_heads)).float().repeat_interleave(32)
    assert_same(grown["model.layers.1.self_attn.o_proj.weight"], o[res][:, q_rows] / q_copies[q_rows])
    assert_same(grown["model.embed_tokens.weight"], d["model.embed_tokens.weight"][:, res])
    assert op.residual.stream_ratio().item() == pytest.approx(1.0)  # one 1 per row: no norm correction
    norm = d["model.layers.1.input_layernorm.weight"]
    assert_same(grown["model.layers.1.input_layernorm.weight"], norm[res])


@pytest.mark.parametrize("scheme, l1, l2, expected", [
    ("stack", 2, 5, [0, 1, 0, 1, 0]),
    ("interpolate", 2, 5, [0, 0, 0, 1, 1]),
    ("midas", 4, 6, [0, 1, 2, 1, 2, 3]),
    ("midas", 2, 5, [0, 1, 1, 0, 1]),  # [0,1] -> [0,1,0,1] -> middle layer repeated
    ("stack", 4, 2, [0, 2]),  # shrinking keeps evenly spaced layers
])
def test_depth_heuristics_copy_the_right_layers(scheme, l1, l2, expected):
    assert depth_sources(scheme, l1, l2) == expected
    donor = make_donor(replace(LLAMA, layers=l1))
    op, _ = grow(donor, replace(LLAMA, layers=l2), depth=scheme)  # same width: pure depth growth
    grown, d = dict(op.materialize()), donor.state_dict()
    for i, j in enumerate(expected):
        for name in ("self_attn.v_proj.weight", "mlp.gate_proj.weight", "post_attention_layernorm.weight"):
            assert torch.equal(grown[f"model.layers.{i}.{name}"], d[f"model.layers.{j}.{name}"])


def test_official_ligo_init():
    op, _ = grow(make_donor(LLAMA), SIZES["llama-micro"], depth="noisy_stack", width="random", seed=3)
    w = op.depth_matrix("q").detach()
    assert torch.allclose(w.sum(dim=1), torch.ones(4))
    assert w.argmax(dim=1).tolist() == [0, 1, 0, 1]
    assert (w.max(dim=1).values >= 1 / 1.06).all()  # one-hot plus at most 0.03 noise per entry
    p = op.residual.weight.detach()
    assert torch.equal(p[:128], torch.eye(128))  # old units kept
    assert (p[128:] >= 0).all() and torch.allclose(p[128:].sum(dim=1), torch.ones(128))  # convex blends
    assert torch.equal(op.residual.scale.detach(), torch.ones(256))
    again, _ = grow(make_donor(LLAMA), SIZES["llama-micro"], depth="noisy_stack", width="random", seed=3)
    assert torch.equal(again.residual.weight, op.residual.weight)  # seeded


def test_gqa_heads_read_their_own_kv_group():
    q_src, kv_src = head_sources(4, 2, 12, 6)  # donor 2 query heads per group, target 2 per group
    for h, source in enumerate(q_src):
        assert kv_src[h // 2] == source // 2  # target head's group copies its donor head's group
    q_src, kv_src = head_sources(8, 2, 8, 4)  # 4 -> 2 query heads per group: groups split the heads
    assert sorted(q_src) == list(range(8))


def test_operator_parameter_count_matches_the_factorization():
    d, t = LLAMA, SIZES["llama-micro"]
    op, _ = grow(make_donor(d), t)
    trainable = sum(p.numel() for p in op.parameters() if p.requires_grad)
    depth = 9 * t.layers * d.layers  # one L2 x L1 matrix per module type (9 in LLaMA)
    residual = t.hidden * d.hidden + t.hidden  # P and a consumer scale per target unit
    per_layer = (t.heads * d.heads + t.heads) + 2 * t.kv_heads * d.kv_heads + t.ffn * d.ffn + t.ffn
    assert trainable == depth + residual + t.layers * per_layer
    assert all(not p.requires_grad for p in op.donor.parameters())


@pytest.mark.parametrize("width", ["copy", "aki"])
def test_shared_depth_coefficients_start_the_same_and_train_as_one(width):
    d, t = LLAMA, SIZES["llama-micro"]
    per_module, _ = grow(make_donor(d), t, width=width)
    shared, _ = grow(make_donor(d), t, width=width, depth_coefficients="shared")
    def count(op):
        return sum(p.numel() for p in op.parameters() if p.requires_grad)
    copies = 2 if width == "aki" else 1  # AKI blends new units from their own (next-layer) coefficients
    assert count(per_module) - count(shared) == copies * (9 - 1) * t.layers * d.layers  # 9 module types -> 1
    a, b = dict(per_module.materialize()), dict(shared.materialize())
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # same heuristic start
    sum(w.sum() for w in shared.layers[0]().values()).backward()
    coefficients = shared.layers[0].depth["shared"]
    assert list(shared.layers[0].depth) == ["shared"] and coefficients.grad.abs().sum() > 0
    assert torch.equal(shared.depth_matrix("q"), shared.depth_matrix("down"))


@pytest.mark.parametrize("target, message", [
    (replace(LLAMA, hidden=96, heads=3, kv_heads=1), "narrower than the donor"),
    (replace(LLAMA, hidden=256, heads=4, kv_heads=2), "head_dim differs"),
    (replace(LLAMA, hidden=256, heads=8, kv_heads=8, ffn=704), None),  # MHA target from GQA donor is fine
    (replace(LLAMA, hidden=128, heads=4, kv_heads=4, ffn=352), None),
    (replace(SIZES["llama-nano"], heads=4, kv_heads=1), "narrower than the donor"),
])
def test_bad_growth_targets_rejected(target, message):
    if message is None:
        grow(make_donor(LLAMA), target)
        return
    with pytest.raises(ConfigError, match=message):
        grow(make_donor(LLAMA), target)


def test_kv_groups_that_cannot_map_rejected():
    with pytest.raises(ConfigError, match="cannot map attention heads"):
        head_sources(8, 2, 9, 3)  # donor group 1 has 4 query heads, its single copy has room for 3


def test_unsupported_donor_architecture_rejected():
    with pytest.raises(ConfigError, match="'bert' is not supported"):
        adapter_for(BertConfig())


def test_grow_stage_rejects_bad_donors_before_compute(tmp_path, prepared):
    from pipeline.grow import GrowStage
    root, _, _ = prepared

    def setup(config):
        GrowStage().setup(config)

    overrides = [f"data.tokenizer={root}/tokenizer", f"data.output_dir={root}/packed"]
    with pytest.raises(ConfigError, match="grow.donor is not set"):
        setup(load_config("tiny", overrides))
    with pytest.raises(ConfigError, match="not an HF model dir"):
        setup(load_config("tiny", overrides + [f"grow.donor={tmp_path}"]))
    make_donor(LLAMA).save_pretrained(tmp_path / "donor300")  # vocab 300, the data has 2048
    with pytest.raises(ConfigError, match="donor vocab 300 != data vocab 2048"):
        setup(load_config("tiny", overrides + [f"grow.donor={tmp_path / 'donor300'}"]))
    gpt2 = build_model(hf_config(GPT2, 2048, TOKEN_IDS))
    gpt2.save_pretrained(tmp_path / "gpt2")
    with pytest.raises(ConfigError, match="donor is gpt2, target is llama"):
        setup(load_config("tiny", overrides + [f"grow.donor={tmp_path / 'gpt2'}"]))


def test_random_operator_starts_are_drawn_outside_zero_init(tmp_path, prepared, monkeypatch):
    """DeepSpeed's zero.Init creates torch.zeros/eye/randn on the accelerator in the training dtype but
    leaves torch.rand on the CPU, so random starts (noisy_stack depth, random width) drawn inside it
    would mix devices on a GPU. The grow stage draws the whole start before entering it."""
    import contextlib

    import pipeline.grow as grow_stage
    from pipeline.data.tokenizer import load_tokenizer
    from pipeline.models.hf import save_initialized_model
    root, _, meta = prepared
    save_initialized_model(SIZES["llama-nano"], load_tokenizer(meta["tokenizer"]), meta["vocab_size"],
                           tmp_path / "donor", seed=0)
    inside, draws, real_rand = [], [], torch.rand

    @contextlib.contextmanager
    def partitioned(ds):  # stands in for zero.Init: records what runs inside it
        inside.append(True)
        yield
        inside.pop()

    def rand(*args, **kwargs):
        draws.append(bool(inside))
        return real_rand(*args, **kwargs)

    monkeypatch.setattr(grow_stage, "partitioned_construction", partitioned)
    monkeypatch.setattr(torch, "rand", rand)
    config = load_config("tiny", [f"data.tokenizer={root}/tokenizer", f"data.output_dir={root}/packed",
                                  f"grow.donor={tmp_path / 'donor'}", "grow.depth_init=noisy_stack",
                                  "grow.width_init=random"])
    stage = grow_stage.GrowStage()
    stage.setup(config)
    stage.build_model(config, None, {})
    assert draws and not any(draws)


def test_aki_takes_new_units_from_the_next_layer():
    """bert2BERT-AKI: entries touching only old units are the copy init of layer j; entries touching a new
    unit come from donor layer j + 1 (the top layer uses itself)."""
    donor = make_donor(replace(LLAMA, layers=3))
    target = replace(LLAMA, layers=3, hidden=256, heads=8, kv_heads=4, ffn=704)
    aki, _ = grow(donor, target, width="aki")
    copy, _ = grow(donor, target, width="copy")
    # same depth: with copy init, target layer j is the width-copied donor layer j
    grown_aki, grown_copy = dict(aki.materialize()), dict(copy.materialize())
    name = "mlp.up_proj.weight"
    for i, upper in ((0, 1), (1, 2), (2, 2)):
        got = grown_aki[f"model.layers.{i}.{name}"]
        old = grown_copy[f"model.layers.{i}.{name}"]
        new = grown_copy[f"model.layers.{upper}.{name}"]
        assert_same(got[:352, :128], old[:352, :128])  # donor units: layer i
        assert_same(got[352:, :], new[352:, :])  # new hidden units: layer i + 1
        assert_same(got[:352, 128:], new[:352, 128:])  # new residual units: layer i + 1
    assert aki.layers[0].depth_new is not None and copy.layers[0].depth_new is None


def test_aki_keeps_donor_heads_when_query_groups_grow():
    """4 query / 2 KV -> 12 query / 2 KV: donor head 2 lands at target slot 6 (group 1), not slot 2. Its
    weights must come from the donor's own layer; its extra copies from the next layer."""
    donor = make_donor(replace(LLAMA, layers=2))
    target = replace(LLAMA, hidden=384, heads=12, kv_heads=2, ffn=352)
    q_src, _ = head_sources(4, 2, 12, 2)
    aki = dict(grow(donor, target, width="aki")[0].materialize())
    copy = dict(grow(donor, target, width="copy")[0].materialize())
    q_aki, q_copy = (m["model.layers.0.self_attn.q_proj.weight"].view(12, 32, 384) for m in (aki, copy))
    d = donor.state_dict()
    q_next = d["model.layers.1.self_attn.q_proj.weight"].view(4, 32, 128)
    first = {}
    for slot, source in enumerate(q_src):
        first.setdefault(source, slot)
    for slot, source in enumerate(q_src):
        if first[source] == slot:  # the donor's own head: same as copy init on the old residual columns
            assert_same(q_aki[slot, :, :128], q_copy[slot, :, :128])
        else:  # an extra copy: the next layer's head (columns are the residual copies, divided)
            assert_same(q_aki[slot, :, :128], q_next[source] / 3)


def test_the_frozen_donor_is_held_in_buffers_not_parameters():
    """ZeRO-3 partitions and gathers parameters: the donor must not be one (every generated layer would
    gather it), nor be saved in the operator's checkpoints."""
    op, _ = grow(make_donor(LLAMA), TARGETS["llama non-integer width, depth 2->3"][1])
    assert all(p.requires_grad for p in op.parameters())
    assert not [name for name in op.state_dict() if name.startswith(("donor.", "globals."))]
    assert {name.split(".")[0] for name, _ in op.named_buffers()} >= {"donor", "globals"}


def test_the_frozen_donor_is_cast_once_per_dtype_and_kept_exact_in_fp32():
    """Under bf16 each step generates every layer up to three times: the donor is cast once, not per
    generation, and its fp32 copy (what an fp32 export reads) is not rounded by the cast."""
    op, _ = grow(make_donor(LLAMA), TARGETS["llama non-integer width, depth 2->3"][1])
    key = "q.weight"
    fp32 = op.donor.get(key, torch.float32)
    first, second = op.donor.get(key, torch.bfloat16), op.donor.get(key, torch.bfloat16)
    assert first is second and first.dtype == torch.bfloat16
    assert op.donor.get(key, torch.float32) is fp32 and fp32.dtype == torch.float32
    assert not torch.equal(first.float(), fp32)  # the cast rounds; the kept fp32 stack does not


def test_recompute_changes_memory_not_math():
    """Regenerating weights (or whole modules) in backward gives the same loss and operator gradients
    as storing the generated weights."""
    op, target_config = grow(make_donor(GPT2), SIZES["gpt2-micro"], depth="noisy_stack", width="random")
    ids = torch.randint(0, VOCAB, (2, 16))
    results = []
    generations = []
    op.layers[0].register_forward_pre_hook(lambda *_: generations.append(1))
    stored = {}
    target_bytes = sum(w.numel() * 4 for _, w in op.materialize())
    for recompute in ("weights", "activations", "none"):
        op.zero_grad()
        generations.clear()
        saved = []

        def pack(tensor):  # what autograd keeps for backward outside the model's own recompute hooks
            saved.append(tensor.numel() * tensor.element_size())
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = GrownModel(op, target_config, recompute=recompute)(ids, labels=ids).loss
        stored[recompute] = sum(saved)
        loss.backward()
        # backward regenerates: for the module's backward and (weights) for the operator's
        assert len(generations) == {"weights": 3, "activations": 2, "none": 1}[recompute]
        results.append((loss.item(), [p.grad.clone() for p in op.parameters() if p.requires_grad]))  # none unused
    # storing generated weights keeps more than the target; regenerating keeps only (small) activations
    # (hidden here by the model's own hooks), not the generation's intermediates either
    assert stored["none"] > target_bytes and stored["weights"] < 0.1 * target_bytes
    (loss_a, grads_a), *others = results
    for loss_b, grads_b in others:
        assert loss_a == loss_b
        assert all(torch.allclose(a, b, rtol=1e-5, atol=1e-8) for a, b in zip(grads_a, grads_b))
    assert any(g.abs().sum() > 0 for g in grads_a)


@pytest.mark.parametrize("case", ["llama wider, GQA 4/2 -> 8/4", "llama non-integer width, depth 2->3",
                                  "gpt2 non-integer width"])
@pytest.mark.parametrize("width", ["copy", "aki", "lossless"])
def test_generation_flops_match_a_flop_counter(case, width):
    """The analytic cost of generating the target (grow-stage HFU, growth benchmark accounting) equals
    the matmul FLOPs torch counts while the operator generates every weight once."""
    donor_shape, target = TARGETS[case]
    op, _ = grow(make_donor(donor_shape), target, width=width)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        dict(op.materialize())
    assert generation_flops(op.plan, op.adapter, VOCAB) == counter.get_total_flops()


def test_eval_mode_reaches_the_generated_target():
    """A donor whose config has dropout (Hub GPT-2: 0.1): the grown model evaluates without it (the
    grow stage's validation, like the donor's own loss) and trains with it."""
    torch.manual_seed(0)
    config = hf_config(GPT2, VOCAB, TOKEN_IDS)
    config.resid_pdrop = config.embd_pdrop = config.attn_pdrop = 0.1
    donor = build_model(config).eval()
    op, target_config = grow(donor, SIZES["gpt2-micro"], depth="identity", width="lossless")
    model = GrownModel(op, target_config)
    ids = torch.randint(0, VOCAB, (2, 24))
    with torch.no_grad():
        model.eval()
        assert torch.equal(model(ids).logits, model(ids).logits)
        torch.testing.assert_close(model(ids).logits, donor(ids).logits, rtol=1e-5, atol=1e-5)
        model.train()
        assert not torch.equal(model(ids).logits, model(ids).logits)


@pytest.mark.parametrize("case", ["llama non-integer width, depth 2->3", "gpt2 non-integer width"])
def test_buffers_follow_the_parameters_to_the_accelerator(case):
    """On a GPU, ZeRO-3 leaves a model built under zero.Init where it is: parameters on the accelerator,
    buffers made from CPU tensors (the frozen donor, the skeleton's rotary tables) on the CPU, and the
    grow stage's first forward failed (seen on an H200). buffers_to moves every buffer a forward reads;
    the meta device stands for the accelerator here (it mixes with CPU tensors without an error, so a
    forward on it would not show a buffer left behind)."""
    donor_shape, target = TARGETS[case]
    model = GrownModel(*grow(make_donor(donor_shape), target))

    def devices():
        return {b.device.type for b in [*model.operator.buffers(), *model.skeleton.buffers()]}

    assert "cpu" in devices()
    model.buffers_to("meta")
    assert devices() == {"meta"}
    assert {p.device.type for p in model.parameters()} == {"cpu"}  # parameters are ZeRO's to place


def test_original_units_stay_on_their_inputs_device():
    """Inside ZeRO-3's zero.Init, torch.arange/full default to the accelerator while the operator's
    init matrices are on the CPU: the first GPU run crashed there. A default device of meta stands in."""
    copies = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])  # unit 2 copies unit 0 again
    blended = torch.tensor([[0.5, 0.5], [0.0, 1.0], [1.0, 0.0]])
    with torch.device("meta"):
        assert original_units(copies).tolist() == [True, True, False]
        assert original_units(blended).tolist() == [True, True, False]  # the first N1 units
