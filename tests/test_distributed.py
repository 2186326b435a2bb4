"""2 CPU ranks through the `deepspeed` launcher: ZeRO-3 partitioned build, training, exact resume."""

import json
import math
from pathlib import Path

import pytest
import yaml

from conftest import data_overrides, run_deepspeed
from pipeline.metrics import read_metrics

pytestmark = pytest.mark.distributed

SHORT_RUN = ["model.size=llama-nano", "train.steps=8", "train.warmup_steps=2", "train.eval_interval=4",
             "train.eval_batches=2", "train.log_interval=2", "train.checkpoint_interval=4"]


def _deterministic(records):
    """Everything but wall-clock measurements."""
    return [{k: v for k, v in r.items() if not k.startswith("perf/")} for r in records]


def _tensorboard_scalars(log_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(log_dir))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def train(run_dir, root, *extra, flags=()):
    return run_deepspeed(["--module", "pipeline.train", "--config", "tiny", *flags, f"run.dir={run_dir}",
                          *data_overrides(root), *SHORT_RUN, *extra])


def test_zero3_build_is_partitioned_and_step0_loss_is_uniform(prepared, tmp_path):
    root, config, _ = prepared
    out = tmp_path / "zero3"
    run_deepspeed(["tests/zero3_build_check.py", str(out), config.data.output_dir])
    ranks = [json.loads((tmp_path / f"zero3.rank{r}").read_text()) for r in (0, 1)]
    for per_size in zip(*ranks):
        full = per_size[0]["full"]
        assert full > 1_000_000
        for result in per_size:
            assert result["visible"] == 0  # nothing materialized outside the partitions
            assert 0.45 * full <= result["local"] <= 0.55 * full  # each rank holds ~half
            assert abs(result["loss"] - math.log(result["vocab"])) < 0.1 * math.log(result["vocab"])
        assert sum(r["local"] for r in per_size) >= full


@pytest.mark.parametrize("ds_config, extra", [
    ("zero2", ["model.size=gpt2-nano"]),
    ("zero3", []),
    ("zero3_bf16", ["model.activation_checkpointing=true"]),
])
def test_training_decreases_loss_and_resumes_exactly(prepared, tmp_path, ds_config, extra):
    root, _, _ = prepared
    stage = [f"train.deepspeed_config={ds_config}", *extra]
    whole, parts = tmp_path / "whole", tmp_path / "parts"

    train(whole, root, *stage)
    reference = read_metrics(whole)
    losses = [r["train/loss"] for r in reference if "train/loss" in r]
    assert len(losses) == 8
    assert losses[-1] < losses[0] - 0.5, losses

    first = train(parts, root, *stage, flags=["--until-step", "3"])
    assert "stopped at step 3" in first.stdout
    assert not (parts / "hf").exists()
    refused = run_deepspeed(["--module", "pipeline.train", "--config", "tiny", f"run.dir={parts}",
                             *data_overrides(root), *SHORT_RUN, *stage], expect_ok=False)
    assert refused.returncode != 0 and "already holds a run" in refused.stdout + refused.stderr
    train(parts, root, *stage, flags=["--resume", "auto"])
    resumed = read_metrics(parts)
    # every later step's loss, LR and validation loss equal the uninterrupted run's, bit for bit
    assert [r["step"] for r in resumed] == [r["step"] for r in reference]
    assert _deterministic(resumed) == _deterministic(reference)
    # the cumulative counters continue across the resume: model FLOPs (exact, compared above) and training time
    assert all(r["progress/model_flops"] == r["step"] * reference[1]["progress/model_flops"] for r in resumed)
    seconds = [r["perf/train_seconds"] for r in resumed]
    assert seconds[0] == 0 and seconds == sorted(seconds) and seconds[-1] > seconds[3] > 0
    assert (parts / "hf" / "model.safetensors").exists()
    # TensorBoard: the resumed run's curves continue without overlapping the interrupted part
    scalars = _tensorboard_scalars(parts / "tb")
    assert {"train/loss", "train/lr", "train/grad_norm", "val/loss", "perf/tokens_per_s",
            "perf/model_tflops_per_rank"} <= set(scalars)
    assert [step for step, _ in scalars["train/loss"]] == list(range(1, 9))
    assert [v for _, v in scalars["train/loss"]] == pytest.approx(losses, rel=1e-6)


@pytest.mark.skipif(not Path("/usr/include/libaio.h").exists(),
                    reason="NVMe offload needs libaio's headers (apt-get install libaio-dev; launch/billion.sh does)")
def test_nvme_offloaded_optimizer_trains_and_resumes_only_when_forced(prepared, tmp_path):
    """ZeRO-3 bf16 with the optimizer states swapped to <run>/nvme (DeepSpeed's CPU Adam, async I/O): the
    loss falls. DeepSpeed 0.19.8 does not restore such a run exactly (it copies the swap files back and
    drops the in-memory sub-groups too small to swap), so --resume auto refuses and --resume force
    continues on the same LR schedule and data from the trained weights (not from a restart)."""
    root, _, _ = prepared
    stage = ["train.deepspeed_config=zero3_bf16_nvme", "train.steps=4", "train.eval_interval=2",
             "train.checkpoint_interval=2"]
    train(tmp_path / "whole", root, *stage)
    reference = read_metrics(tmp_path / "whole")
    assert list((tmp_path / "whole" / "nvme" / "zero_stage_3" / "optimizer").glob("rank*/exp_avg*.swp"))
    # the disk-space check's estimate of the swap files (16 bytes per trainable element) is not exceeded
    swapped = sum(f.stat().st_size for f in (tmp_path / "whole" / "nvme").rglob("*") if f.is_file())
    from pipeline.bench.memory import parameter_counts
    from pipeline.models.hf import checkpoint_config, shape_of
    exported = checkpoint_config(tmp_path / "whole" / "hf")
    assert 0 < swapped <= 16 * parameter_counts(shape_of(exported), exported.vocab_size)[0]
    losses = [r["train/loss"] for r in reference if "train/loss" in r]
    assert losses[-1] < losses[0]
    train(tmp_path / "parts", root, *stage, flags=["--until-step", "2"])
    refused = run_deepspeed(["--module", "pipeline.train", "--config", "tiny", "--resume", "auto",
                             f"run.dir={tmp_path / 'parts'}", *data_overrides(root), *SHORT_RUN, *stage],
                            expect_ok=False)
    assert refused.returncode != 0 and "Pass --resume force" in refused.stdout + refused.stderr
    train(tmp_path / "parts", root, *stage, flags=["--resume", "force"])
    resumed = read_metrics(tmp_path / "parts")
    assert [r.get("train/lr") for r in resumed] == [r.get("train/lr") for r in reference]
    assert _deterministic(resumed[:3]) == _deterministic(reference[:3])  # up to the stop: identical
    assert abs(resumed[3]["train/loss"] - reference[3]["train/loss"]) < 0.05  # trained weights, not a restart
    assert resumed[3]["train/loss"] < reference[1]["train/loss"] - 0.1


def test_resume_refuses_a_changed_config(prepared, tmp_path):
    root, _, _ = prepared
    train(tmp_path / "run", root, flags=["--until-step", "1"])
    proc = run_deepspeed(["--module", "pipeline.train", "--config", "tiny", "--resume", "auto",
                          f"run.dir={tmp_path / 'run'}", *data_overrides(root), *SHORT_RUN, "train.lr=1e-4"],
                         expect_ok=False)
    assert proc.returncode != 0 and "config differs" in proc.stdout + proc.stderr


@pytest.mark.parametrize("ds_config", ["zero1", "zero2_bf16"])
def test_other_shipped_deepspeed_configs_train(prepared, tmp_path, ds_config):
    root, _, _ = prepared
    train(tmp_path / "run", root, f"train.deepspeed_config={ds_config}")
    losses = [r["train/loss"] for r in read_metrics(tmp_path / "run") if "train/loss" in r]
    assert len(losses) == 8 and losses[-1] < losses[0] - 0.5


def test_init_from_hf_weights_is_not_a_resume(prepared, tmp_path):
    """A finished run's HF export seeds a new run: same weights (step-0 validation loss equals the source
    run's final one), but a fresh step counter and LR schedule (train.continued), its AdamW started from
    the moments the export carries. The seeded run states no shape (model.size=null): it is the checkpoint's."""
    root, _, _ = prepared
    stage = ["train.deepspeed_config=zero3"]
    train(tmp_path / "source", root, *stage, "train.steps=4", "train.eval_interval=4")
    source_final = [r["val/loss"] for r in read_metrics(tmp_path / "source") if "val/loss" in r][-1]
    seeded_run = train(tmp_path / "seeded", root, *stage, f"train.init_from={tmp_path / 'source' / 'hf'}",
                       "model.size=null", "train.continued.lr_ratio=0.1", flags=["--until-step", "1"])
    assert "AdamW starts from" in seeded_run.stdout
    assert yaml.safe_load((tmp_path / "seeded" / "config.yaml").read_text())["model"]["hidden"] == 128  # llama-nano's
    seeded = read_metrics(tmp_path / "seeded")
    assert seeded[0]["step"] == 0
    assert seeded[0]["val/loss"] == pytest.approx(source_final, rel=1e-5)
    assert seeded[1]["train/lr"] == pytest.approx(2e-3 * 0.1)  # train.continued: the lr_ratio, no warmup


@pytest.fixture(scope="module")
def donor(prepared, tmp_path_factory):
    """A briefly pretrained llama-nano donor (an HF dir), as the donor stage makes it."""
    root, _, _ = prepared
    run = tmp_path_factory.mktemp("donor")
    train(run, root, "train.steps=30", "train.warmup_steps=5", "train.eval_interval=30",
          "train.checkpoint_interval=30")
    return run / "hf"


def grow(run_dir, root, donor_dir, *extra):
    return run_deepspeed(["--module", "pipeline.grow", "--config", "tiny", f"run.dir={run_dir}",
                          *data_overrides(root), f"grow.donor={donor_dir}", "model.size=llama-micro",
                          "grow.steps=6", "grow.warmup_steps=2", "train.eval_batches=2", "train.log_interval=2",
                          "train.eval_interval=6", *extra])


def test_grow_under_zero3_is_partitioned_learns_and_matches_zero0(prepared, donor, tmp_path):
    root, _, _ = prepared
    grow(tmp_path / "z3", root, donor, "train.deepspeed_config=zero3")
    grow(tmp_path / "z0", root, donor, "train.deepspeed_config=zero0")
    grow(tmp_path / "z2", root, donor, "train.deepspeed_config=zero2", "grow.recompute=none")
    z3 = json.loads((tmp_path / "z3" / "report.json").read_text())
    z0 = json.loads((tmp_path / "z0" / "report.json").read_text())
    total = z3["operator_parameters"]
    assert total == z0["operator_parameters"] > 0
    assert all(0.45 * total <= n <= 0.55 * total for n in z3["operator_parameters_per_rank"])  # partitioned
    assert z0["operator_parameters_per_rank"] == [total, total]  # replicated without ZeRO
    assert z3["val_loss_heuristic_init"] == pytest.approx(z3["val_loss_donor"], rel=1e-5)  # the lossless default
    assert z3["val_loss_after_operator_training"] < z3["val_loss_heuristic_init"]  # the operator learns
    losses3 = [r["train/loss"] for r in read_metrics(tmp_path / "z3") if "train/loss" in r]
    losses0 = [r["train/loss"] for r in read_metrics(tmp_path / "z0") if "train/loss" in r]
    losses2 = [r["train/loss"] for r in read_metrics(tmp_path / "z2") if "train/loss" in r]
    assert losses3 == pytest.approx(losses0, rel=1e-4) and losses2 == pytest.approx(losses0, rel=1e-4)
    assert z3["val_loss_after_operator_training"] == pytest.approx(z0["val_loss_after_operator_training"], rel=1e-4)
    # the exported grown model is a plain HF checkpoint whose loss is the operator's
    import torch
    from transformers import AutoModelForCausalLM

    from pipeline.data.loader import PackedSamples, validation_batches
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "z3" / "hf").eval()
    assert model.config.num_hidden_layers == 4 and model.config.hidden_size == 256
    val = PackedSamples(root / "packed", "validation")
    with torch.no_grad():
        per_rank = [sum(model(input_ids=b, labels=b).loss.item() for b in batches) / len(batches)
                    for batches in (validation_batches(val, 8, 2, r, 2) for r in (0, 1))]
    assert sum(per_rank) / 2 == pytest.approx(z3["val_loss_after_operator_training"], rel=1e-5)


def test_grow_gpt2_under_zero3(prepared, tmp_path):
    """GPT-2 (Conv1D, fused c_attn, learned positions, tied head) through the launcher: an untrained
    gpt2-nano donor grown into gpt2-micro; the operator learns and the export reproduces its loss."""
    import torch
    from transformers import AutoModelForCausalLM

    from pipeline.data.loader import PackedSamples, validation_batches
    from pipeline.data.tokenizer import load_tokenizer
    from pipeline.models.hf import build_model, hf_config, special_token_ids
    from pipeline.models.sizes import SIZES
    root, _, meta = prepared
    tokenizer = load_tokenizer(meta["tokenizer"])
    torch.manual_seed(0)
    build_model(hf_config(SIZES["gpt2-nano"], meta["vocab_size"], special_token_ids(tokenizer))).save_pretrained(
        tmp_path / "donor")
    run_deepspeed(["--module", "pipeline.grow", "--config", "tiny", f"run.dir={tmp_path / 'grow'}",
                   *data_overrides(root), f"grow.donor={tmp_path / 'donor'}", "model.size=gpt2-micro",
                   "grow.steps=4", "grow.warmup_steps=1", "train.eval_batches=2", "train.eval_interval=4",
                   "train.deepspeed_config=zero3"])
    report = json.loads((tmp_path / "grow" / "report.json").read_text())
    assert report["val_loss_after_operator_training"] < report["val_loss_heuristic_init"]
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "grow" / "hf").eval()
    assert model.config.n_layer == 4 and model.config.n_embd == 256
    assert model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr()
    val = PackedSamples(root / "packed", "validation")
    with torch.no_grad():
        per_rank = [sum(model(input_ids=b, labels=b).loss.item() for b in batches) / len(batches)
                    for batches in (validation_batches(val, 8, 2, r, 2) for r in (0, 1))]
    assert sum(per_rank) / 2 == pytest.approx(report["val_loss_after_operator_training"], rel=1e-5)


def test_grow_heuristic_only_with_plain_python(prepared, donor, tmp_path):
    """`python -m pipeline.grow ... grow.steps=0` (no launcher, 1 rank) writes the heuristic's model."""
    import os
    import subprocess
    import sys

    from conftest import ROOT
    root, _, _ = prepared
    cmd = [sys.executable, "-m", "pipeline.grow", "--config", "tiny", f"run.dir={tmp_path / 'stack'}",
           *data_overrides(root), f"grow.donor={donor}", "grow.steps=0", "train.eval_batches=2"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE")})
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "stack" / "report.json").read_text())
    assert report["operator_steps"] == 0
    assert report["val_loss_heuristic_init"] == report["val_loss_after_operator_training"]
    assert (tmp_path / "stack" / "hf" / "model.safetensors").exists()


def exported_val_loss(model_dir, root, ranks=2):
    """An HF dir's fp32 loss on the validation batches the stages use on `ranks` ranks (eval_batches=2)."""
    import torch
    from transformers import AutoModelForCausalLM

    from pipeline.data.loader import PackedSamples, validation_batches
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    val = PackedSamples(root / "packed", "validation")
    with torch.no_grad():
        per_rank = [sum(model(input_ids=b, labels=b).loss.item() for b in batches) / len(batches)
                    for batches in (validation_batches(val, 8, 2, r, ranks) for r in range(ranks))]
    return sum(per_rank) / ranks


@pytest.mark.parametrize("ds_config", ["zero3", "zero3_bf16"])
def test_lossless_growth_through_the_stage_keeps_the_donor_loss(prepared, donor, tmp_path, ds_config):
    """A pretrained donor grown at non-integer ratios (width and heads 3/2, depth 2 -> 3) on 2 ranks
    under ZeRO-3: the exported model's loss is the donor's. Under bf16 the stage's own step-0
    evaluation runs in bf16, but the export comes from fp32 masters that hold the exact initial
    coefficients, so it is lossless to fp32 precision too."""
    root, _, _ = prepared
    grow(tmp_path / "g", root, donor, f"train.deepspeed_config={ds_config}", "grow.steps=0",
         "model.size=llama-nano", "model.layers=3", "model.hidden=192", "model.heads=6", "model.kv_heads=3",
         "model.ffn=528")
    report = json.loads((tmp_path / "g" / "report.json").read_text())
    assert report["plan"]["depth_init"] == "identity" and report["plan"]["width_init"] == "lossless"
    donor_loss = exported_val_loss(donor, root)
    assert exported_val_loss(tmp_path / "g" / "hf", root) == pytest.approx(donor_loss, rel=1e-4)
    bf16 = ds_config.endswith("bf16")
    assert report["val_loss_donor"] == pytest.approx(donor_loss, rel=1e-2 if bf16 else 1e-5)
    assert report["val_loss_heuristic_init"] == pytest.approx(report["val_loss_donor"], rel=1e-2 if bf16 else 1e-5)
    assert_saved_operator_is_its_exact_init(tmp_path / "g", donor)


@pytest.mark.parametrize("family", ["qwen2", "qwen3", "gemma", "gemma2"])
def test_other_families_grow_losslessly_through_the_stage(prepared, tmp_path, family):
    """A Qwen2 (q/k/v biases, tied head), Qwen3 (per-head q/k norms, head size 48 != width / heads) or
    Gemma (1 + w gains, sqrt(width) embedding scale, tied head, head size 48) or Gemma2 (and sandwich
    norms, soft-capping, sliding and global layers) donor grown 2 -> 3 layers, width 3/2, heads 4/2 -> 6/3 on 2 ranks under ZeRO-3: the exported
    model's loss is the donor's on the same batches, and the stage's own evaluations agree."""
    from pipeline.data.tokenizer import load_tokenizer
    from pipeline.models.hf import save_initialized_model
    from pipeline.models.sizes import SIZES
    root, _, meta = prepared
    donor = tmp_path / "donor"
    save_initialized_model(SIZES[f"{family}-nano"], load_tokenizer(meta["tokenizer"]), meta["vocab_size"], donor, 0)
    grow(tmp_path / "g", root, donor, "train.deepspeed_config=zero3", "grow.steps=0", f"model.size={family}-nano",
         "model.layers=3", "model.hidden=192", "model.heads=6", "model.kv_heads=3", "model.ffn=528")
    report = json.loads((tmp_path / "g" / "report.json").read_text())
    assert report["plan"]["depth_init"] == "identity" and report["plan"]["target"]["family"] == family
    donor_loss = exported_val_loss(donor, root)
    assert exported_val_loss(tmp_path / "g" / "hf", root) == pytest.approx(donor_loss, rel=1e-5)
    assert report["val_loss_heuristic_init"] == pytest.approx(donor_loss, rel=1e-5)
    if family == "gemma2":  # and the grown model trains on: the train stage from its export, ZeRO-3
        train(tmp_path / "t", root, "train.deepspeed_config=zero3", f"train.init_from={tmp_path / 'g' / 'hf'}",
              "model.size=null")
        losses = [r["train/loss"] for r in read_metrics(tmp_path / "t") if "train/loss" in r]
        assert len(losses) > 1 and all(math.isfinite(x) for x in losses)


def assert_saved_operator_is_its_exact_init(run_dir, donor):
    """The learned operator (fp32 masters) of a grow run with grow.steps=0 is the exact fp32 init, not
    its bf16 rounding (0.6 -> 0.6016)."""
    import torch
    from transformers import AutoConfig

    from pipeline.growth.adapters import adapter_for
    from pipeline.growth.operator import GrowthPlan, operator_init
    from pipeline.models.sizes import ModelShape
    plan = json.loads((run_dir / "report.json").read_text())["plan"]
    plan = GrowthPlan(**{**plan, "donor": ModelShape(**plan["donor"]), "target": ModelShape(**plan["target"])})
    saved = torch.load(run_dir / "operator.pt")
    init = dict(operator_init(plan, adapter_for(AutoConfig.from_pretrained(donor))).named_values())
    assert saved.keys() == {f"operator.{name}" for name in init}
    assert all(torch.equal(saved[f"operator.{name}"], value) for name, value in init.items())


def test_grow_under_zero3_bf16_with_operator_sizes_the_ranks_do_not_divide(prepared, tmp_path):
    """Odd head counts (6/3 heads grown to 9/3) give operator parameters of odd size (9 q-head scales,
    3 x 3 kv-head mixing), which 2 ranks do not divide: DeepSpeed 0.19.8's safe_set_full_fp32_param
    reads past the end of such a value on the last rank (it crashed the 15/5-head grow); the stage
    writes each rank's slice. The masters hold the exact init and growth is lossless."""
    from pipeline.data.tokenizer import load_tokenizer
    from pipeline.models.hf import save_initialized_model
    from pipeline.models.sizes import SIZES
    root, _, meta = prepared
    donor = tmp_path / "donor"
    save_initialized_model(SIZES["llama-nano-3x192"], load_tokenizer(meta["tokenizer"]), meta["vocab_size"], donor, 0)
    grow(tmp_path / "g", root, donor, "train.deepspeed_config=zero3_bf16", "grow.steps=0", "model.size=llama-nano",
         "model.layers=4", "model.hidden=288", "model.heads=9", "model.kv_heads=3", "model.ffn=792")
    assert_saved_operator_is_its_exact_init(tmp_path / "g", donor)
    assert exported_val_loss(tmp_path / "g" / "hf", root) == pytest.approx(exported_val_loss(donor, root), rel=1e-4)


def run_two_nodes(tmp_path, stage, args, timeout=600):
    """A 2-node job on this machine, started as on two nodes: two invocations of launch/run.sh with
    NODE_RANK 0 and 1 (the launcher's --no_ssh --node_rank), one rank each, loopback master."""
    import os
    import subprocess

    from conftest import DEEPSPEED, ROOT, free_port
    hosts = tmp_path / "hosts"
    hosts.write_text("node0 slots=1\nnode1 slots=1\n")
    env = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", HOSTFILE=str(hosts),
               MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), DEEPSPEED=str(DEEPSPEED))
    logs = [tmp_path / f"{stage}.node{r}.log" for r in (0, 1)]
    nodes = [subprocess.Popen(["bash", "launch/run.sh", stage, *args], cwd=ROOT, env={**env, "NODE_RANK": str(r)},
                              stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
             for r, log in enumerate(logs)]  # files, not pipes: a full pipe would stall one node mid-collective
    for node, log in zip(nodes, logs):
        assert node.wait(timeout=timeout) == 0, log.read_text()[-4000:]
    return [log.read_text() for log in logs]


def test_two_node_job_grows_then_trains_and_resumes(prepared, donor, tmp_path):
    """Grow, then train with a checkpoint and a resume, as a 2-node job: the same losses as the same
    training on one node with 2 ranks."""
    root, _, _ = prepared
    logs = run_two_nodes(tmp_path, "grow", [
        "--config", "tiny", f"run.dir={tmp_path / 'grow'}", *data_overrides(root), f"grow.donor={donor}",
        "model.size=llama-micro", "grow.steps=4", "grow.warmup_steps=1", "train.eval_batches=2",
        "train.eval_interval=4"])
    assert "WORLD INFO DICT: {'node0': [0], 'node1': [0]}" in logs[0] and "[preflight] 2 ranks on 1 host(s)" in logs[0]
    report = json.loads((tmp_path / "grow" / "report.json").read_text())
    assert len(report["operator_parameters_per_rank"]) == 2
    assert report["val_loss_heuristic_init"] == pytest.approx(report["val_loss_donor"], rel=1e-5)
    # the operator read the data after the donor's samples, and the grown model's training reads after the
    # operator's (data.start=auto): 4 steps x 8 samples x 2 ranks
    donor_end = json.loads((donor / "data_position.json").read_text())["next_position"]
    grow_end = json.loads((tmp_path / "grow" / "hf" / "data_position.json").read_text())["next_position"]
    assert donor_end == 30 * 16 and grow_end == donor_end + 4 * 16

    overrides = [*data_overrides(root), "model.size=llama-micro", f"train.init_from={tmp_path / 'grow' / 'hf'}",
                 "train.steps=6", "train.warmup_steps=2", "train.eval_interval=3", "train.eval_batches=2",
                 "train.log_interval=3", "train.checkpoint_interval=3", "train.deepspeed_config=zero3"]
    two_nodes, one_node = tmp_path / "two_nodes", tmp_path / "one_node"
    run_two_nodes(tmp_path, "train", ["--config", "tiny", "--until-step", "3", f"run.dir={two_nodes}", *overrides])
    assert (two_nodes / "checkpoints").exists() and not (two_nodes / "hf").exists()
    run_two_nodes(tmp_path, "train", ["--config", "tiny", "--resume", "auto", f"run.dir={two_nodes}", *overrides])
    run_deepspeed(["--module", "pipeline.train", "--config", "tiny", f"run.dir={one_node}", *overrides])
    assert _deterministic(read_metrics(two_nodes)) == _deterministic(read_metrics(one_node))
    assert (two_nodes / "hf" / "model.safetensors").exists()
    assert json.loads((two_nodes / "checkpoints" / "step6" / "progress.json").read_text())["data_start"] == grow_end
    assert json.loads((two_nodes / "hf" / "data_position.json").read_text())["next_position"] == grow_end + 6 * 16


def test_zero3_init_from_reads_each_ranks_partition(prepared, donor, tmp_path):
    """train.init_from under ZeRO-3 fills each rank's partitions from the safetensors directly. On 3
    ranks the partitions split rows and pad the last rank; the source is written in several shards:
    the step-0 validation loss is the source model's own."""
    import torch
    from transformers import AutoModelForCausalLM

    from pipeline import checkpoint
    from pipeline.data.tokenizer import load_tokenizer
    root, _, meta = prepared
    model = AutoModelForCausalLM.from_pretrained(donor, dtype=torch.float32)
    source = tmp_path / "source"
    checkpoint.write_hf_files(model.state_dict().items(), model.config, load_tokenizer(meta["tokenizer"]), source,
                              max_shard_bytes=400_000)
    assert len(list(source.glob("model-*.safetensors"))) > 2
    run_deepspeed(["--module", "pipeline.train", "--config", "tiny", "--until-step", "1", f"run.dir={tmp_path / 'run'}",
                   *data_overrides(root), *SHORT_RUN, f"train.init_from={source}", "train.deepspeed_config=zero3"],
                  ranks=3)
    step0 = read_metrics(tmp_path / "run")[0]["val/loss"]
    assert step0 == pytest.approx(exported_val_loss(source, root, ranks=3), rel=1e-5)
