"""Tokenize a corpus with `datasets` and pack it into fixed-length samples on disk.

Each split becomes one flat token file (`<split>.bin`, uint16 or uint32) read through `np.memmap`:
documents end with EOS (and start with BOS when the tokenizer's own template adds one, as LLaMA's
`add_bos_token` does) and are concatenated; sample i is tokens[i*seq_len:(i+1)*seq_len], the
ragged tail is dropped. `meta.json` is written last, so its presence means the files are complete.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import datasets
import numpy as np

from pipeline.config import ConfigError

META = "meta.json"


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16 if vocab_size <= np.iinfo(np.uint16).max + 1 else np.uint32)


def adds_bos(tokenizer) -> bool:
    """Whether the tokenizer's own template starts every text with its BOS token."""
    bos = tokenizer.bos_token_id
    return bos is not None and tokenizer("a", add_special_tokens=True)["input_ids"][:1] == [bos]


def _tokenize(split: datasets.Dataset, tokenizer, num_proc: int, name: str) -> datasets.Dataset:
    # special tokens are placed here, not by the template: EOS always ends a document (packing needs the
    # boundary), and literal "</s>" in the text stays text
    eos, bos = [tokenizer.eos_token_id], [tokenizer.bos_token_id] if adds_bos(tokenizer) else []

    def encode(batch):
        ids = tokenizer(batch["text"], add_special_tokens=False)["input_ids"]
        ids = [bos + doc + eos for doc in ids]
        return {"ids": ids, "length": [len(doc) for doc in ids]}

    return split.map(encode, batched=True, batch_size=64, remove_columns=split.column_names,
                     num_proc=min(num_proc, len(split)), desc=f"tokenizing {name}")


def _write_tokens(tokenized: datasets.Dataset, path: Path, dtype: np.dtype) -> int:
    total = int(np.sum(tokenized["length"], dtype=np.int64))
    out = np.memmap(path, dtype=dtype, mode="w+", shape=(max(total, 1),))
    offset = 0
    for batch in tokenized.iter(batch_size=1024):
        flat = np.concatenate([np.asarray(doc, dtype=dtype) for doc in batch["ids"]])
        out[offset:offset + len(flat)] = flat
        offset += len(flat)
    out.flush()
    del out
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
        tokenized = _tokenize(corpus[name], tokenizer, num_proc, name)
        n_tokens = _write_tokens(tokenized, out_dir / f"{name}.bin", dtype)
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
