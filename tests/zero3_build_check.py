"""Launched by tests/test_distributed.py on 2 ranks: builds each family under ZeRO-3 through the
pipeline's engine module and records, per rank, how much of the model it holds and the step-0 loss."""

import json
import sys

import torch

from pipeline.config import load_config
from pipeline.data.loader import PackedSamples, validation_batches
from pipeline.engine import build_engine, deepspeed_config, init_distributed, model_construction
from pipeline.models.hf import build_model, hf_config
from pipeline.models.sizes import resolve_shape

out_path, data_dir = [a for a in sys.argv[1:] if not a.startswith("--local_rank")]
rank, world_size = init_distributed()
results = []
for size in ("llama-micro", "gpt2-micro"):
    config = load_config("tiny", [f"model.size={size}", "train.deepspeed_config=zero3", f"data.output_dir={data_dir}"])
    ds = deepspeed_config(config.train, world_size, resolve_shape(config.model))
    samples = PackedSamples(data_dir, "validation")
    torch.manual_seed(0)
    with model_construction(ds):
        model = build_model(hf_config(resolve_shape(config.model), samples.meta["vocab_size"], {}))
    local = sum(p.ds_tensor.numel() for p in model.parameters())
    full = sum(p.ds_numel for p in model.parameters())
    visible = sum(p.numel() for p in model.parameters())  # 0 under ZeRO-3: nothing materialized
    engine = build_engine(model, config.train, ds)
    batch = validation_batches(samples, 8, 1, rank, world_size)[0]
    with torch.no_grad():
        loss = engine(input_ids=batch, labels=batch).loss.item()
    results.append({"size": size, "rank": rank, "local": local, "full": full, "visible": visible, "loss": loss,
                    "vocab": samples.meta["vocab_size"]})
with open(f"{out_path}.rank{rank}", "w") as f:
    json.dump(results, f)
