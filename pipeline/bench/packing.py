"""Benchmark: prepare's tokenize-and-pack throughput against the bare fast tokenizer (goal: >= 0.8).

    python -m pipeline.bench packing --config tiny                # after `python -m pipeline.prepare --config tiny`
    python -m pipeline.bench packing --config tiny --repeat 8 --rounds 5 data.num_proc=2

Both arms read the same text: the recipe's training split(s) (repeated --repeat times, so the work dwarfs
process start-up) with the tokenizer prepare made for it, on all the machine's cores. The "tokenizer" arm
is the bare HF fast tokenizer's batched call (1000 documents per call, its Rust threads on every core,
the text already in memory): the ceiling for any packer built on it. The "packing" arm is prepare's own
writer (pipeline/data/packing.py: data.num_proc worker processes, text read from the Arrow split,
tokens written to a flat file). Tokens/s counts the tokenizer's tokens in both (not the EOS/BOS packing
adds). The arms alternate for --rounds rounds in fresh processes; the script prints medians and the ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from pipeline.bench.arms import alternate, medians
from pipeline.config import ConfigError, load_config

TOKENIZER_BATCH = 1000


def _split_and_tokenizer(config, repeat: int):
    import datasets

    from pipeline.data.corpus import load_source
    from pipeline.data.packing import read_meta
    from pipeline.data.tokenizer import load_tokenizer
    from pipeline.prepare import sources_of
    meta = read_meta(Path(config.data.output_dir))
    if meta is None:
        raise ConfigError(f"no prepared data in {config.data.output_dir}: run `python -m pipeline.prepare` with the same "
                          f"recipe first (the benchmark uses its tokenizer)")
    train = [load_source(s.path, s.text_field, config.data)[0]["train"] for s in sources_of(config.data)]
    return datasets.concatenate_datasets(train * repeat), load_tokenizer(meta["tokenizer"])


def tokenizer_arm(config, repeat: int) -> dict:
    split, tokenizer = _split_and_tokenizer(config, repeat)
    texts = list(split["text"])
    start = time.perf_counter()
    tokens = 0
    for i in range(0, len(texts), TOKENIZER_BATCH):
        tokens += sum(len(ids) for ids in tokenizer(texts[i:i + TOKENIZER_BATCH], add_special_tokens=False)["input_ids"])
    return {"tokens_per_s": tokens / (time.perf_counter() - start), "tokens": tokens}


def packing_arm(config, repeat: int) -> dict:
    from pipeline.data.packing import _write_tokens, adds_bos, token_dtype
    split, tokenizer = _split_and_tokenizer(config, repeat)
    with tempfile.TemporaryDirectory(prefix="packing-bench-") as out:
        start = time.perf_counter()
        written = _write_tokens(split, tokenizer, token_dtype(len(tokenizer)), config.data.num_proc,
                                Path(out) / "train.bin", "train")
        seconds = time.perf_counter() - start
    tokens = written - len(split) * (1 + adds_bos(tokenizer))  # the tokenizer's tokens, without EOS/BOS
    return {"tokens_per_s": tokens / seconds, "tokens": tokens}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="tiny")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=4, help="times the training split is read in each arm")
    parser.add_argument("--arm", choices=["packing", "tokenizer"], help=argparse.SUPPRESS)  # child mode
    args, overrides = parser.parse_known_args()
    cores = os.cpu_count() or 1
    overrides = [f"data.num_proc={cores}", *overrides]  # a recipe's num_proc on the command line wins
    config = load_config(args.config, overrides)
    if args.arm:
        arm = packing_arm if args.arm == "packing" else tokenizer_arm
        print(json.dumps(arm(config, args.repeat)))
        return
    _split_and_tokenizer(config, 1)  # fail fast: no prepared data
    child_args = ["--config", args.config, "--repeat", str(args.repeat), *overrides]
    os.environ["TOKENIZERS_PARALLELISM"] = "true"  # the bare tokenizer's Rust threads on every core
    median = medians(alternate("pipeline.bench.packing", ("packing", "tokenizer"), args.rounds, child_args))
    if median["packing"]["tokens"] != median["tokenizer"]["tokens"]:
        raise SystemExit(f"the arms tokenized different text: {median}")
    print(json.dumps({"median": median, "cores": cores, "num_proc": config.data.num_proc,
                      "packing_over_tokenizer_tokens_per_s":
                          median["packing"]["tokens_per_s"] / median["tokenizer"]["tokens_per_s"]}, indent=2))


if __name__ == "__main__":
    main()
