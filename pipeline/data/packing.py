"""Tokenize a corpus with `datasets` and pack it into fixed-length samples on disk.

Each split becomes one flat token file (`<split>.bin`, uint16 or uint32) read through `np.memmap`:
documents end with EOS (and start with BOS when the tokenizer's own template adds one, as LLaMA's
`add_bos_token` does) and are concatenated; sample i is tokens[i*seq_len:(i+1)*seq_len], the
ragged tail is dropped. `meta.json` is written last, so its presence means the files are complete.
"""

from __future__ import annotations

import collections
import itertools
import json
import multiprocessing
import os
import time
from pathlib import Path

import datasets
import numpy as np
from tqdm.auto import tqdm

from pipeline.config import ConfigError

META = "meta.json"


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16 if vocab_size <= np.iinfo(np.uint16).max + 1 else np.uint32)


def adds_bos(tokenizer) -> bool:
    """Whether the tokenizer's own template starts every text with its BOS token."""
    bos = tokenizer.bos_token_id
    return bos is not None and tokenizer("a", add_special_tokens=True)["input_ids"][:1] == [bos]


DOCUMENTS_PER_TASK = 256  # a worker's unit of work: small enough to keep every worker busy and memory flat


class _Encoder:
    """Tokenizes a range of a split's documents into one flat token array: [BOS] doc EOS, [BOS] doc EOS, ...
    Special tokens are placed here, not by the template: EOS always ends a document (packing needs the
    boundary), BOS starts it when the tokenizer's own template would add one, and literal "</s>" in the
    text stays text."""

    def __init__(self, split: datasets.Dataset, tokenizer, dtype: np.dtype):
        self.split, self.tokenizer, self.dtype = split, tokenizer, dtype
        self.bos = [tokenizer.bos_token_id] if adds_bos(tokenizer) else []
        self.eos = [tokenizer.eos_token_id]

    def __call__(self, bounds: tuple[int, int]) -> np.ndarray:
        texts = self.split[bounds[0]:bounds[1]]["text"]
        docs = self.tokenizer(texts, add_special_tokens=False)["input_ids"]
        count = sum(len(doc) for doc in docs) + len(docs) * (len(self.bos) + 1)
        return np.fromiter(itertools.chain.from_iterable(self.bos + doc + self.eos for doc in docs), self.dtype, count)


_worker_encoder: _Encoder | None = None


def _start_worker(encoder: _Encoder) -> None:
    global _worker_encoder
    _worker_encoder = encoder


def _encode_in_worker(bounds: tuple[int, int]) -> np.ndarray:
    return _worker_encoder(bounds)


def _in_order(pool, tasks: list, in_flight: int):
    """The workers' results in task order, with at most ``in_flight`` tasks submitted and not yet taken:
    a slow task (one huge document) holds back the submissions, not an unbounded pile of results."""
    pending = collections.deque()
    for task in tasks:
        pending.append(pool.apply_async(_encode_in_worker, (task,)))
        if len(pending) >= in_flight:
            yield pending.popleft().get()
    while pending:
        yield pending.popleft().get()


def _write_tokens(split: datasets.Dataset, tokenizer, dtype: np.dtype, num_proc: int, path: Path, name: str) -> int:
    """Tokenize ``split`` on ``num_proc`` worker processes and write its tokens, in document order, to one
    flat file. Memory stays bounded whatever the corpus size: workers take DOCUMENTS_PER_TASK documents
    at a time, at most two tasks per worker are in flight, and the writer appends results in order."""
    encoder = _Encoder(split, tokenizer, dtype)
    tasks = [(i, min(i + DOCUMENTS_PER_TASK, len(split))) for i in range(0, len(split), DOCUMENTS_PER_TASK)]
    workers = min(num_proc, len(tasks))
    pool = None
    if workers > 1:
        # the workers inherit this at fork: one process per core already, and no "forked after parallelism"
        # warning from a tokenizer whose threads ran in this process
        parallelism = os.environ.get("TOKENIZERS_PARALLELISM")
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
        pool = multiprocessing.get_context("fork").Pool(workers, _start_worker, (encoder,))
        if parallelism is None:
            del os.environ["TOKENIZERS_PARALLELISM"]
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = parallelism
    total, start = 0, time.perf_counter()
    try:
        results = _in_order(pool, tasks, 2 * workers) if pool else map(encoder, tasks)
        with open(path, "wb") as out, tqdm(total=len(split), unit="doc", desc=f"tokenizing {name}") as bar:
            for (first, last), tokens in zip(tasks, results):
                out.write(tokens.tobytes())
                total += len(tokens)
                bar.update(last - first)
                bar.set_postfix_str(f"{total / max(time.perf_counter() - start, 1e-9):,.0f} tokens/s")
    finally:
        if pool:
            pool.terminate()
    return total


def read_meta(out_dir: Path) -> dict | None:
    path = Path(out_dir) / META
    return json.loads(path.read_text()) if path.exists() else None


def pack_corpus(corpus: datasets.DatasetDict, tokenizer, seq_len: int, num_proc: int, out_dir: Path,
                meta: dict) -> dict:
    """Write train.bin / validation.bin and meta.json (``meta`` plus token and sample counts)."""
    dtype = token_dtype(len(tokenizer))
    out_dir.mkdir(parents=True, exist_ok=True)
    meta = dict(meta, dtype=dtype.name, seq_len=seq_len, vocab_size=len(tokenizer), bos=adds_bos(tokenizer), splits={})
    for name in ("train", "validation"):
        n_tokens = _write_tokens(corpus[name], tokenizer, dtype, num_proc, out_dir / f"{name}.bin", name)
        n_samples = n_tokens // seq_len
        if n_samples == 0:
            raise ConfigError(f"the {name} split of {meta['source']!r} has {n_tokens} tokens, fewer than one sample of "
                              f"data.seq_len={seq_len}: use more text or a shorter seq_len")
        meta["splits"][name] = {"documents": len(corpus[name]), "tokens": n_tokens, "samples": n_samples}
    write_meta(out_dir, meta)
    return meta


def write_meta(out_dir: Path, meta: dict) -> None:
    """meta.json, atomically: a dir with meta.json is complete."""
    tmp = Path(out_dir) / (META + ".tmp")
    tmp.write_text(json.dumps(meta, indent=2))
    os.replace(tmp, Path(out_dir) / META)


def repetition_report(meta: dict, samples_drawn: int) -> list[str]:
    """How many times each source's training samples are read when a run draws ``samples_drawn`` samples."""
    sources = meta.get("sources") or [{"name": "corpus", "weight": 1.0, "splits": meta["splits"]}]
    return [f"{s['name']}: weight {s['weight']:.3f}, {s['splits']['train']['samples']:,} samples, read "
            f"{s['weight'] * samples_drawn / s['splits']['train']['samples']:.3g} times" for s in sources]
