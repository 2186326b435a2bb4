"""Benchmarks, one subcommand each:

    python -m pipeline.bench growth --config bench-growth      FLOPs to target: scratch vs heuristics vs LiGO
    python -m pipeline.bench continued --donor <hf dir> --grown <hf dir>
                                                               the climb: grown model and donor under each start
    python -m pipeline.bench grow_cost --config tiny grow.donor=runs/tiny/donor/hf
                                                               one grow step vs one training step
    python -m pipeline.bench train_overhead --config tiny      train stage vs a plain PyTorch loop
    python -m pipeline.bench memory --config tiny              peak memory per rank vs ZeRO's theory
    python -m pipeline.bench lottery --config tiny             IMP tickets vs dense vs controls, over seeds
    python -m pipeline.bench packing --config tiny             prepare's tokens/s vs the bare fast tokenizer

`python -m pipeline.bench <name> --help` describes each.
"""

import importlib
import sys

BENCHMARKS = ("growth", "continued", "grow_cost", "train_overhead", "memory", "lottery", "packing")

if len(sys.argv) < 2 or sys.argv[1] not in BENCHMARKS:
    sys.exit(f"usage: python -m pipeline.bench {{{','.join(BENCHMARKS)}}} [options]\n\n{__doc__}")
name = sys.argv.pop(1)
sys.argv[0] = f"python -m pipeline.bench {name}"
importlib.import_module(f"pipeline.bench.{name}").main()
