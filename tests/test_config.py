import json

import pytest

from pipeline.config import (
    PROJECT_ROOT,
    Config,
    ConfigError,
    check_batch_triad,
    load_config,
    load_deepspeed_json,
    parse_overrides,
    recipe_names,
)
from pipeline.models.sizes import ModelShape, resolve_shape


def test_every_recipe_loads_and_round_trips(tmp_path):
    assert "tiny" in recipe_names()
    for name in recipe_names():
        config = load_config(name)
        path = tmp_path / f"{name}.yaml"
        config.save(path)
        assert load_config(str(path)) == config


def test_overrides_apply_in_both_syntaxes():
    config = load_config("tiny", ["train.lr=3e-4", "--model.size", "gpt2-nano", "--data.seq_len=64",
                                  "train.global_batch_size=null"])
    assert config.train.lr == 3e-4 and isinstance(config.train.lr, float)
    assert config.model.size == "gpt2-nano"
    assert config.data.seq_len == 64
    assert config.train.global_batch_size is None


def test_cli_beats_recipe_beats_defaults():
    assert Config().run.dir == "runs/tiny"
    assert load_config("tiny").run.dir == "runs/tiny/scratch"  # the recipe sets it
    assert load_config("tiny", ["run.dir=elsewhere"]).run.dir == "elsewhere"
    assert load_config("tiny").train.beta2 == Config().train.beta2  # the recipe leaves it: default


@pytest.mark.parametrize("overrides, message", [
    (["train.lrr=1"], "unknown key(s) train.lrr"),
    (["optim.lr=1"], "unknown key(s) optim"),
    (["train.steps=ten"], "train.steps: expected int"),
    (["train.steps=1.5"], "train.steps: expected int"),
    (["model.activation_checkpointing=3"], "expected bool"),
    (["model.hidden=250"], "model.heads=8 does not divide model.hidden=250"),
    (["model.kv_heads=3"], "model.kv_heads=3 does not divide model.heads=8"),
    (["model.size=gpt2-nano", "model.kv_heads=2"], "GPT-2 has no grouped-query attention"),
    (["model.size=llama-huge"], "model.size='llama-huge' is not a known size"),
    (["data.seq_len=1024"], "data.seq_len=1024 exceeds the model's max_positions=512"),
    (["train.global_batch_size=12", "train.micro_batch_size=8"], "global_batch_size=12 != micro_batch_size 8"),
    (["train.warmup_steps=500"], "train.warmup_steps=500 must be in"),
    (["data.validation_fraction=1.5"], "validation_fraction must be in (0, 1)"),
    (["train.deepspeed_config=zero9"], "DeepSpeed config 'zero9' not found"),
    (["train.lr"], "cannot read override"),
    (["model.init_std=0"], "model.init_std must be positive"),
    (["bench.donor_steps=0"], "bench.donor_steps must be positive"),
    (["grow.depth_coefficients=per_layer"], "grow.depth_coefficients must be one of ('per_module', 'shared')"),
])
def test_invalid_configs_rejected_with_clear_message(overrides, message):
    with pytest.raises(ConfigError) as err:
        load_config("tiny", overrides)
    assert message in str(err.value)


def test_batch_triad_checked_against_world_size():
    config = load_config("tiny", ["train.global_batch_size=32", "train.micro_batch_size=8",
                                  "train.grad_accum_steps=2"])
    assert check_batch_triad(config.train, world_size=2) == 32
    with pytest.raises(ConfigError, match="x 4 ranks"):
        check_batch_triad(config.train, world_size=4)


def test_missing_recipe_names_the_choices():
    with pytest.raises(ConfigError, match="one of .*tiny"):
        load_config("no-such-recipe")


def test_deepspeed_json_typos_and_owned_keys_rejected(tmp_path):
    typo = tmp_path / "typo.json"
    typo.write_text(json.dumps({"zero_optimization": {"stage": 2}, "gradient_acumulation_steps": 4}))
    with pytest.raises(ConfigError, match="unknown DeepSpeed key 'gradient_acumulation_steps'"):
        load_deepspeed_json(str(typo))
    owned = tmp_path / "owned.json"
    owned.write_text(json.dumps({"train_micro_batch_size_per_gpu": 4}))
    with pytest.raises(ConfigError, match="set by the recipe .train.micro_batch_size"):
        load_deepspeed_json(str(owned))
    fp16 = tmp_path / "fp16.json"
    fp16.write_text(json.dumps({"fp16": {"enabled": True}}))
    with pytest.raises(ConfigError, match="use bf16"):
        load_deepspeed_json(str(fp16))


def test_shipped_deepspeed_configs_are_valid():
    shipped = sorted((PROJECT_ROOT / "ds_configs").glob("*.json"))
    assert {p.stem for p in shipped} >= {"zero0", "zero1", "zero2", "zero3", "zero2_bf16", "zero3_bf16"}
    for path in shipped:
        ds = load_deepspeed_json(str(path))
        assert ds["zero_optimization"]["stage"] == int(path.stem[4])
        assert ds["bf16"]["enabled"] == ("bf16" in path.stem)


def test_parse_overrides_types():
    assert parse_overrides(["a.b=1", "a.c=x", "--d.e", "true"]) == {"a": {"b": 1, "c": "x"}, "d": {"e": True}}


def test_resume_ignores_what_a_stage_does_not_read_and_where_the_run_lives():
    from pipeline.grow import GrowStage
    from pipeline.resume import breaking_changes
    from pipeline.train import PretrainStage
    saved = load_config("tiny").to_dict()
    moved = load_config("tiny", ["run.dir=elsewhere", "grow.lr=0.1", "bench.donor_steps=7"]).to_dict()
    assert breaking_changes(saved, moved, PretrainStage.unread_sections) == []
    assert breaking_changes(saved, moved, GrowStage.unread_sections) == ["grow.lr: 0.03 -> 0.1"]
    changed_lr = load_config("tiny", ["train.lr=1e-3"]).to_dict()
    assert breaking_changes(saved, changed_lr, PretrainStage.unread_sections) == ["train.lr: 0.002 -> 0.001"]
    # a run written before a key existed: the missing key counts as its default
    older = {**saved, "data": {k: v for k, v in saved["data"].items() if k not in ("sources", "txt_documents")}}
    assert breaking_changes(older, saved, PretrainStage.unread_sections) == []
    mixture = load_config("tiny", ["data.sources=[{path: a.txt}]", "data.txt_documents=lines"]).to_dict()
    assert [c.split(":")[0] for c in breaking_changes(older, mixture, PretrainStage.unread_sections)] == \
        ["data.sources"]  # how .txt files divide shows in the data's key, which resume checks instead


@pytest.mark.integration
def test_loading_a_config_imports_no_model_code():
    """config.py is a leaf: validating names and shapes must not pull in torch or transformers."""
    import subprocess
    import sys
    code = ("import sys; from pipeline.config import load_config; load_config('tiny'); "
            "print(sorted(m for m in ('torch', 'transformers', 'deepspeed') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_auto_zero_sizes_are_filled_from_the_model_shape(tmp_path):
    from pipeline.engine import auto_zero_size, deepspeed_config
    from pipeline.flops import layer_matmul_parameters
    from pipeline.models.sizes import SIZES
    shape = SIZES["llama-125m"]
    ds = deepspeed_config(load_config("tiny", ["train.deepspeed_config=zero3"]).train, 2, shape)
    zero = ds["zero_optimization"]
    block = layer_matmul_parameters(shape) // shape.layers
    assert zero["reduce_bucket_size"] == 768 ** 2 and zero["stage3_param_persistence_threshold"] == 7680
    assert zero["stage3_max_live_parameters"] == 2 * block and zero["stage3_max_reuse_distance"] == block
    assert zero["sub_group_size"] == 2 * block
    assert not [k for k, v in zero.items() if v == "auto"]
    custom = tmp_path / "custom.json"
    custom.write_text('{"zero_optimization": {"stage": 3, "reduce_bucket_size": 123, "elastic_checkpoint": "auto"}}')
    with pytest.raises(ConfigError, match='elastic_checkpoint: "auto" is supported for'):
        deepspeed_config(load_config("tiny", [f"train.deepspeed_config={custom}"]).train, 2, shape)
    assert auto_zero_size("allgather_bucket_size", shape) == 768 ** 2


def test_zero3_on_a_single_rank_is_pointed_out_unless_it_offloads():
    from pipeline.engine import deepspeed_config, single_rank_zero3_note
    from pipeline.models.sizes import SIZES

    def note(ds_name, ranks):
        train = load_config("tiny", [f"train.deepspeed_config={ds_name}"]).train
        return single_rank_zero3_note(deepspeed_config(train, ranks, SIZES["llama-micro"], "nvme"), ranks)

    assert "ZeRO-2 config" in note("zero3_bf16", 1)
    assert note("zero3_bf16", 2) is None and note("zero2", 1) is None
    assert note("zero3_bf16_nvme", 1) is None  # offloading is what ZeRO-3 buys on one rank


def test_shapes_from_checkpoints(tmp_path):
    """train.init_from with no shape in the recipe takes the checkpoint's; "<factor>x" fields are relative to
    grow.donor; a set shape is kept (the train stage then checks it against the checkpoint)."""
    llama = tmp_path / "llama"
    llama.mkdir()
    (llama / "config.json").write_text(json.dumps({
        "model_type": "llama", "num_hidden_layers": 30, "hidden_size": 576, "num_attention_heads": 9,
        "num_key_value_heads": 3, "intermediate_size": 1536, "max_position_embeddings": 2048, "head_dim": 64}))
    taken = load_config("tiny", [f"train.init_from={llama}", "model.size=null"]).model
    assert resolve_shape(taken) == ModelShape("llama", 30, 576, 9, 3, 1536, 2048)
    kept = load_config("tiny", [f"train.init_from={llama}"]).model  # the recipe's llama-micro: checked later
    assert resolve_shape(kept).hidden == 256
    grown = load_config("tiny", [f"grow.donor={llama}", "model.size=null", "model.layers=32", "model.hidden=1.6667x",
                                 "model.heads=15", "model.kv_heads=5", "model.ffn=1.6667x"]).model
    assert resolve_shape(grown) == ModelShape("llama", 32, 960, 15, 5, 2560, 2048)
    doubled = load_config("tiny", [f"grow.donor={llama}", "model.layers=2x"]).model
    assert resolve_shape(doubled).layers == 60 and doubled.size == "llama-micro"  # a set size stays the base
    gpt2 = tmp_path / "gpt2"
    gpt2.mkdir()
    (gpt2 / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_layer": 2, "n_embd": 128, "n_head": 4,
                                                  "n_inner": None, "n_positions": 512}))
    assert resolve_shape(load_config("tiny", [f"train.init_from={gpt2}", "model.size=null"]).model) == \
        ModelShape("gpt2", 2, 128, 4, 4, 512, 512)
    # no size: the donor is the base when there is no train.init_from
    assert resolve_shape(load_config("tiny", [f"grow.donor={llama}", "model.size=null", "model.layers=8"]).model) == \
        ModelShape("llama", 8, 576, 9, 3, 1536, 2048)
    assert load_config("tiny", ["model.size=null"]).model.size == "llama-micro"  # nothing to take it from
    for overrides, message in [(["model.hidden=2x"], "relative to the donor: set grow.donor"),
                               ([f"grow.donor={llama}", "model.hidden=twice"], "like 2x or 1.5x"),
                               ([f"grow.donor={llama}", "model.head_size=2x"], "keeps the donor's head size"),
                               (["model.hidden=1.5"], "an integer or a factor"),
                               (["model.layers=true"], "an integer or a factor"),
                               ([f"train.init_from={tmp_path}", "model.size=null"], "has no config.json")]:
        with pytest.raises(ConfigError, match=message):
            load_config("tiny", overrides)
