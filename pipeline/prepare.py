"""Data stage: corpus -> sentencepiece tokenizer -> packed, memory-mapped samples.

    python -m pipeline.prepare --config tiny
    python -m pipeline.prepare --config tiny data.source=/path/to/texts data.tokenizer=mytok \\
        data.output_dir=data/mytok-512 data.seq_len=512

Re-running with the same inputs reuses the tokenizer and the packed files; different inputs aimed
at an existing tokenizer or output dir are refused rather than overwritten.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from pathlib import Path

from pipeline import __version__
from pipeline.config import Config, ConfigError, parse_stage_args
from pipeline.data.corpus import load_corpus
from pipeline.data.packing import pack_corpus, read_meta
from pipeline.data.tokenizer import load_or_train_tokenizer


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def prepare(config: Config) -> dict:
    d = config.data
    out_dir = Path(d.output_dir)
    start = time.time()
    corpus, fingerprint = load_corpus(d)
    print(f"[prepare] corpus {d.source!r}: {len(corpus['train'])} train / {len(corpus['validation'])} "
          f"validation documents", flush=True)
    tok_record = {"source": d.source, "corpus": fingerprint, "vocab_size": d.vocab_size,
                  "train_chars": d.tokenizer_train_chars, "validation_fraction": d.validation_fraction,
                  "text_field": d.text_field}
    tokenizer, tok_dir, trained = load_or_train_tokenizer(d.tokenizer, corpus["train"], d.vocab_size,
                                                          d.tokenizer_train_chars, tok_record)
    print(f"[prepare] tokenizer {tok_dir} ({'trained' if trained else 'reused'}, {len(tokenizer)} tokens)",
          flush=True)
    tokenizer_files = sorted(p for p in tok_dir.iterdir() if p.is_file())
    key = _digest({"corpus": tok_record, "seq_len": d.seq_len, "pipeline": __version__,
                   "tokenizer": [hashlib.sha256(p.read_bytes()).hexdigest() for p in tokenizer_files]})
    existing = read_meta(out_dir)
    if existing is not None:
        if existing["key"] != key:
            raise ConfigError(f"{out_dir} holds data prepared from other inputs (key {existing['key']}, now "
                              f"{key}); choose another data.output_dir or delete it yourself")
        print(f"[prepare] reusing {out_dir} (same inputs)", flush=True)
        return existing
    meta = pack_corpus(corpus, tokenizer, d.seq_len, d.num_proc, out_dir,
                       {"key": key, "tokenizer": str(tok_dir.resolve()), "source": d.source})
    for name, split in meta["splits"].items():
        print(f"[prepare] {name}: {split['documents']} documents, {split['tokens']:,} tokens, "
              f"{split['samples']:,} samples of {d.seq_len}", flush=True)
    print(f"[prepare] wrote {out_dir} in {time.time() - start:.1f}s", flush=True)
    return meta


def main(argv: list[str] | None = None) -> None:
    config, _ = parse_stage_args("Tokenize and pack a corpus.", argv)
    try:
        prepare(config)
    except ConfigError as err:
        sys.exit(f"prepare error: {err}")


if __name__ == "__main__":
    main()
