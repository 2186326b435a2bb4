"""Benchmark: the train stage's tokens/s against a plain PyTorch training loop (goal: >= 0.95).

    python -m pipeline.bench.train_overhead --config tiny
    python -m pipeline.bench.train_overhead --config tiny train.deepspeed_config=zero0 --rounds 5

Both arms train the same model (same seed, shape and data order) with the same batch, AdamW, LR
schedule and gradient clipping, on 1 rank with the same torch threads, timing steps the same way
(data fetch to loss on the host, the first --warmup steps excluded), on the same device (an accelerator
if there is one). Both in fp32: a bf16/fp16 DeepSpeed config is refused (the plain loop has no
mixed-precision twin here). The "stage" arm is the real train
stage (DeepSpeed engine with the recipe's ZeRO config, logging, loss all-reduce) and reads its
tokens/s from its own metrics; the "plain" arm is model/loss.backward/clip/optimizer.step by hand.
The arms alternate for --rounds rounds in fresh processes; the script prints medians and the ratio.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import torch

from pipeline.bench.arms import alternate, medians
from pipeline.config import load_config, load_deepspeed_json
from pipeline.engine import training_dtype


def stage_tokens_per_s(config) -> float:
    from pipeline.metrics import read_metrics
    from pipeline.train import Trainer
    Trainer(config, resume=None).fit()
    return [r for r in read_metrics(config.run.dir) if "perf/tokens_per_s" in r][-1]["perf/tokens_per_s"]


def plain_tokens_per_s(config, warmup: int) -> float:
    from pipeline.data.loader import TrainBatches, open_samples
    from pipeline.data.tokenizer import load_tokenizer
    from pipeline.engine import local_device, parameter_groups, warmup_cosine
    from pipeline.models.hf import build_model, hf_config, special_token_ids
    from pipeline.models.sizes import resolve_shape
    from pipeline.train import seed_everything

    t = config.train
    samples = open_samples(config.data.output_dir, "train")
    target = hf_config(resolve_shape(config.model), samples.meta["vocab_size"],
                       special_token_ids(load_tokenizer(samples.meta["tokenizer"])))
    seed_everything(t.seed)
    device = local_device()
    model = build_model(target).train().to(device)
    optimizer = torch.optim.AdamW(parameter_groups(model, t.weight_decay), lr=t.lr, betas=(t.beta1, t.beta2), eps=1e-8)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(t))
    batches = TrainBatches(samples, config.data.order_seed, t.micro_batch_size, 1, 0, 1)
    timed_seconds = 0.0
    for step in range(t.steps):
        start = time.perf_counter()
        ids = batches.batch(step, 0).to(device)
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        loss.item()
        if step >= warmup:
            timed_seconds += time.perf_counter() - start
    return (t.steps - warmup) * t.micro_batch_size * samples.seq_len / timed_seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="tiny")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per run")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--arm", choices=["stage", "plain"], help=argparse.SUPPRESS)  # child mode
    args, overrides = parser.parse_known_args()
    total = args.steps + args.warmup
    overrides = [*overrides, "train.grad_accum_steps=1", f"train.steps={total}", f"train.warmup_steps={args.warmup}",
                 f"train.log_interval={total}", f"train.eval_interval={total}", f"train.checkpoint_interval={total}",
                 f"train.throughput_warmup_steps={args.warmup}", "train.eval_batches=1", "train.save_hf=false"]
    if args.arm:
        with tempfile.TemporaryDirectory(prefix="train-overhead-") as run_dir:
            config = load_config(args.config, [*overrides, f"run.dir={run_dir}/run"])
            tokens_per_s = stage_tokens_per_s(config) if args.arm == "stage" else \
                plain_tokens_per_s(config, args.warmup)
        print(json.dumps({"tokens_per_s": tokens_per_s}))
        return
    config = load_config(args.config, overrides)  # fail fast on a bad recipe
    if training_dtype(load_deepspeed_json(config.train.deepspeed_config)) != torch.float32:
        raise SystemExit(f"train_overhead compares fp32 loops: {config.train.deepspeed_config} trains in bf16/fp16; "
                         f"give an fp32 DeepSpeed config (zero0, zero1, zero2, zero3)")
    child_args = ["--config", args.config, "--steps", str(args.steps), "--warmup", str(args.warmup), *overrides]
    median = medians(alternate("pipeline.bench.train_overhead", ("stage", "plain"), args.rounds, child_args))
    print(json.dumps({"median": median,
                      "stage_over_plain_tokens_per_s": median["stage"]["tokens_per_s"] / median["plain"]["tokens_per_s"]},
                     indent=2))


if __name__ == "__main__":
    main()
