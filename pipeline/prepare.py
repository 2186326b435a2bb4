"""Data stage: corpus -> sentencepiece tokenizer -> packed, memory-mapped samples.

    python -m pipeline.prepare --config tiny
    python -m pipeline.prepare --config tiny data.source=/path/to/texts data.tokenizer=mytok \\
        data.output_dir=data/mytok-512 data.seq_len=512
    python -m pipeline.prepare --config tiny data.output_dir=data/mix \\
        'data.sources=[{path: web.jsonl, weight: 0.7}, {path: stdlib, weight: 0.3}]'

Re-running with the same inputs reuses the tokenizer and the packed files; different inputs aimed
at an existing tokenizer or output dir are refused rather than overwritten. With several weighted
sources (data.sources) each is packed into <output_dir>/sources/<name>/ and meta.json lists them;
training draws from them by weight (pipeline/data/loader.py).
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from pathlib import Path

from pipeline import __version__
from pipeline.config import Config, ConfigError, DataConfig, SourceConfig, parse_stage_args, source_names
from pipeline.data.corpus import load_source
from pipeline.data.packing import pack_corpus, read_meta, repetition_report, write_meta
from pipeline.data.tokenizer import load_or_train_tokenizer, tokenizer_dir

SOURCES_DIR = "sources"


def sources_of(d: DataConfig) -> list[SourceConfig]:
    """data.sources with their names and text fields resolved and weights normalized to sum to 1, or
    data.source as the one source of weight 1."""
    if not d.sources:
        return [SourceConfig(d.source, 1.0, d.text_field, "corpus")]
    total = sum(s.weight for s in d.sources)
    return [SourceConfig(s.path, s.weight / total, s.text_field or d.text_field, name)
            for name, s in zip(source_names(d), d.sources)]


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def _tokenizer_record(d: DataConfig, sources: list[SourceConfig], fingerprints: list[str]) -> dict:
    common = {"vocab_size": d.vocab_size, "train_chars": d.tokenizer_train_chars,
              "validation_fraction": d.validation_fraction}
    if not d.sources:  # the single-source record of earlier versions: their tokenizers and data stay reusable
        return {"source": d.source, "corpus": fingerprints[0], **common, "text_field": d.text_field}
    return {"sources": [{"name": s.name, "source": s.path, "corpus": f, "text_field": s.text_field,
                         "weight": s.weight} for s, f in zip(sources, fingerprints)], **common}


def prepare(config: Config) -> dict:
    d = config.data
    out_dir = Path(d.output_dir)
    start = time.time()
    tokenizer_dir(d.tokenizer)  # a dir that is not a tokenizer is refused before the corpus is read
    sources = sources_of(d)
    corpora, fingerprints, divisions = [], [], []
    for source in sources:
        corpus, fingerprint, division = load_source(source.path, source.text_field, d)
        corpora.append(corpus)
        fingerprints.append(fingerprint)
        divisions.append(division)
        print(f"[prepare] source {source.path!r}: {len(corpus['train'])} train / {len(corpus['validation'])} "
              f"validation documents", flush=True)
    tok_record = _tokenizer_record(d, sources, fingerprints)
    train_texts = [(c["train"], max(1, round(d.tokenizer_train_chars * s.weight))) for s, c in zip(sources, corpora)]
    tokenizer, tok_dir, trained = load_or_train_tokenizer(d.tokenizer, train_texts, d.vocab_size, tok_record)
    print(f"[prepare] tokenizer {tok_dir} ({'trained' if trained else 'reused'}, {len(tokenizer)} tokens)",
          flush=True)
    tokenizer_files = sorted(p for p in tok_dir.iterdir() if p.is_file())
    # the tokenizer learns from lines, whatever the documents; the packed data depends on the documents
    txt = {"txt_documents": divisions} if any(divisions) else {}
    key = _digest({"corpus": tok_record, "seq_len": d.seq_len, "pipeline": __version__, **txt,
                   "tokenizer": [hashlib.sha256(p.read_bytes()).hexdigest() for p in tokenizer_files]})
    existing = read_meta(out_dir)
    if existing is not None:
        if existing["key"] != key:
            hint = (" (data prepared before data.txt_documents existed took each .txt file whole: "
                    "data.txt_documents=files)" if any(divisions) else "")
            raise ConfigError(f"{out_dir} holds data prepared from other inputs (key {existing['key']}, now "
                              f"{key}){hint}; choose another data.output_dir or delete it yourself")
        print(f"[prepare] reusing {out_dir} (same inputs)", flush=True)
        _print_repetition(config, existing)
        return existing
    common = {"key": key, "tokenizer": str(tok_dir.resolve())}
    if not d.sources:
        meta = pack_corpus(corpora[0], tokenizer, d.seq_len, d.num_proc, out_dir, {**common, "source": d.source})
    else:
        meta = _pack_mixture(d, sources, corpora, tokenizer, out_dir, common)
    for name, split in meta["splits"].items():
        print(f"[prepare] {name}: {split['documents']} documents, {split['tokens']:,} tokens, "
              f"{split['samples']:,} samples of {d.seq_len}", flush=True)
    _print_repetition(config, meta)
    print(f"[prepare] wrote {out_dir} in {time.time() - start:.1f}s", flush=True)
    return meta


def _print_repetition(config: Config, meta: dict) -> None:
    t = config.train
    per_step = t.global_batch_size or t.micro_batch_size * t.grad_accum_steps
    ranks = "" if t.global_batch_size else " per data-parallel rank (with N ranks, N times the reads below)"
    print(f"[prepare] train.steps={t.steps} x {per_step} samples{ranks}:", flush=True)
    for line in repetition_report(meta, t.steps * per_step):
        print(f"[prepare]   {line}", flush=True)


def _pack_mixture(d: DataConfig, sources: list[SourceConfig], corpora: list, tokenizer, out_dir: Path,
                  common: dict) -> dict:
    """Each source packed on its own into sources/<name>/; the top meta.json (written last) lists them."""
    parts, packed = [], {}
    for source, corpus in zip(sources, corpora):
        print(f"[prepare] packing source {source.name} ({source.path})", flush=True)
        part_dir = f"{SOURCES_DIR}/{source.name}"
        packed = pack_corpus(corpus, tokenizer, d.seq_len, d.num_proc, out_dir / part_dir, {**common, "source": source.path})
        parts.append({"name": source.name, "path": source.path, "weight": source.weight, "dir": part_dir,
                      "splits": packed["splits"]})
    splits = {name: {field: sum(p["splits"][name][field] for p in parts) for field in ("documents", "tokens", "samples")}
              for name in ("train", "validation")}
    meta = {**common, "source": "mixture", "dtype": packed["dtype"], "seq_len": d.seq_len,
            "vocab_size": packed["vocab_size"], "bos": packed["bos"], "sources": parts, "splits": splits}
    write_meta(out_dir, meta)
    return meta


def main(argv: list[str] | None = None) -> None:
    config, _ = parse_stage_args("Tokenize and pack a corpus.", argv)
    try:
        prepare(config)
    except ConfigError as err:
        sys.exit(f"prepare error: {err}")


if __name__ == "__main__":
    main()
