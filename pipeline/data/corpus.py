"""Corpus sources -> a `datasets.DatasetDict` with "train" and "validation" splits of one "text" column.

File sources are split by file (a stable hash of the relative path), so no document straddles the
split and the split never changes when files are added elsewhere. A single file or a dataset
without a validation split is split by record index instead.

Documents: a JSONL record; a paragraph of a .txt file (text between empty lines, `data.txt_documents`
also takes "lines" or "files"); any other text file (.py, .md, .rst) whole.
"""

from __future__ import annotations

import hashlib
import sysconfig
from pathlib import Path

import datasets

from pipeline.config import ConfigError, DataConfig

TEXT_SUFFIXES = {".txt", ".md", ".py", ".rst"}
JSON_SUFFIXES = {".jsonl", ".json"}


def stdlib_files() -> tuple[Path, list[Path]]:
    """The running interpreter's standard library sources, without tests and installed packages."""
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"}
    files = sorted(p for p in root.rglob("*.py") if not skip & set(p.relative_to(root).parts))
    return root, files


def _in_validation(key: str, fraction: float) -> bool:
    digest = hashlib.sha256(key.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def _split_files(root: Path, files: list[Path], fraction: float) -> tuple[list[Path], list[Path]]:
    keys = [str(p.relative_to(root)) if p != root else p.name for p in files]
    val = [p for p, k in zip(files, keys) if _in_validation(k, fraction)]
    train = [p for p, k in zip(files, keys) if not _in_validation(k, fraction)]
    if not val or not train:  # few files: keep both splits non-empty, still deterministic
        ranked = sorted(zip(keys, files), key=lambda kf: hashlib.sha256(kf[0].encode()).digest())
        val, train = [ranked[0][1]], [f for _, f in ranked[1:]]
    return train, val


def _split_records(ds: datasets.Dataset, fraction: float) -> datasets.DatasetDict:
    val_idx = [i for i in range(len(ds)) if _in_validation(f"record-{i}", fraction)]
    val_set = set(val_idx)
    train_idx = [i for i in range(len(ds)) if i not in val_set]
    if not val_idx or not train_idx:
        raise ConfigError(f"corpus has {len(ds)} record(s): too few to hold out a validation split of "
                          f"{fraction:g}; give more documents (in a .txt, separate them by empty lines: "
                          f"data.txt_documents=paragraphs), several files, or a larger data.validation_fraction")
    return datasets.DatasetDict(train=ds.select(train_idx), validation=ds.select(val_idx))


TXT_SAMPLE_BY = {"paragraphs": "paragraph", "lines": "line", "files": "document"}  # datasets' "text" loader


def _load_files(files: list[Path], text_field: str, txt_documents: str) -> datasets.Dataset:
    kinds = {"json" if p.suffix in JSON_SUFFIXES else "text" for p in files}
    if len(kinds) > 1:
        raise ConfigError("data.source mixes text and JSON files; point it at one kind")
    if kinds.pop() == "json":
        return _only_text(datasets.load_dataset("json", data_files=[str(p) for p in files], split="train"),
                          text_field)
    if txt_documents == "files":  # every file one document, in path order
        groups = [("document", files)]
    else:
        groups = [(TXT_SAMPLE_BY[txt_documents], [p for p in files if p.suffix == ".txt"]),
                  ("document", [p for p in files if p.suffix != ".txt"])]
    parts = []
    for sample_by, group in groups:
        if group:
            texts = datasets.load_dataset("text", data_files=[str(p) for p in group], sample_by=sample_by,
                                          split="train")
            if sample_by != "document":  # blank lines and whitespace between paragraphs are not documents
                texts = texts.filter(lambda batch: [bool(t.strip()) for t in batch["text"]], batched=True)
            parts.append(texts)
    return datasets.concatenate_datasets(parts) if len(parts) > 1 else parts[0]


def _only_text(ds: datasets.Dataset, text_field: str) -> datasets.Dataset:
    if text_field not in ds.column_names:
        raise ConfigError(f"records have no {text_field!r} field (fields: {ds.column_names}); set data.text_field")
    ds = ds.select_columns([text_field])
    return ds if text_field == "text" else ds.rename_column(text_field, "text")


def _file_fingerprint(files: list[Path]) -> str:
    h = hashlib.sha256()
    for p in files:
        st = p.stat()
        h.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _from_files(root: Path, files: list[Path], text_field: str, cfg: DataConfig) -> tuple[datasets.DatasetDict, str]:
    if not files:
        raise ConfigError(f"data source {root} holds no {sorted(TEXT_SUFFIXES | JSON_SUFFIXES)} files")
    if sum(p.stat().st_size for p in files) == 0:
        raise ConfigError(f"data source {root}: every file is empty")
    fingerprint = _file_fingerprint(files)
    if len(files) == 1:
        return _split_records(_load_files(files, text_field, cfg.txt_documents), cfg.validation_fraction), fingerprint
    train, val = _split_files(root, files, cfg.validation_fraction)
    return datasets.DatasetDict(train=_load_files(train, text_field, cfg.txt_documents),
                                validation=_load_files(val, text_field, cfg.txt_documents)), fingerprint


def _from_datasets(obj, text_field: str, cfg: DataConfig) -> datasets.DatasetDict:
    if isinstance(obj, datasets.Dataset):
        obj = datasets.DatasetDict(train=obj)
    if "train" not in obj:
        raise ConfigError(f"dataset has no 'train' split (splits: {list(obj)})")
    obj = datasets.DatasetDict({name: _only_text(split, text_field) for name, split in obj.items()})
    val_name = next((n for n in ("validation", "valid", "val", "test") if n in obj), None)
    if val_name is None:
        return _split_records(obj["train"], cfg.validation_fraction)
    return datasets.DatasetDict(train=obj["train"], validation=obj[val_name])


def parse_hf_source(source: str) -> tuple[str, str | None, str | None]:
    """"hf:<name>[:<config>[:<split>]]" -> (name, config or None, split or None); empty parts are unset."""
    parts = source[len("hf:"):].split(":")
    if len(parts) > 3 or not parts[0]:
        raise ConfigError(f"data source {source!r}: write hf:<name>, hf:<name>:<config> or hf:<name>:<config>:<split> "
                          f"(hf:<name>::<split> without a config)")
    name, config, split = (parts + [""] * 3)[:3]
    return name, config or None, split or None


def _from_hf(source: str, text_field: str, cfg: DataConfig) -> datasets.DatasetDict:
    name, config, split = parse_hf_source(source)
    loaded = datasets.load_dataset(name, config, split=split)
    # one named split: the training text, with the validation split held out of it
    return _from_datasets(datasets.DatasetDict(train=loaded) if split else loaded, text_field, cfg)


def load_source(source: str, text_field: str, cfg: DataConfig) -> tuple[datasets.DatasetDict, str, str | None]:
    """One source as train/validation splits, a fingerprint that changes when its files' content may
    have, and how its .txt files were divided into documents (data.txt_documents; None without .txt
    files or when each is one document)."""
    division = None
    if source == "stdlib":
        root, files = stdlib_files()
        corpus, fingerprint = _from_files(root, files, text_field, cfg)
    elif source.startswith("hf:"):
        corpus = _from_hf(source, text_field, cfg)
        fingerprint = corpus["train"]._fingerprint + corpus["validation"]._fingerprint
    else:
        path = Path(source).expanduser()
        if not path.exists():
            raise ConfigError(f"data source {source!r} does not exist: give a file, a directory, a saved "
                              f"`datasets` dir, 'stdlib' or 'hf:<name>'")
        if (path / "dataset_dict.json").exists() or (path / "dataset_info.json").exists():
            corpus = _from_datasets(datasets.load_from_disk(str(path)), text_field, cfg)
            fingerprint = corpus["train"]._fingerprint + corpus["validation"]._fingerprint
        else:
            files = [path] if path.is_file() else sorted(
                p for p in path.rglob("*") if p.is_file() and p.suffix in TEXT_SUFFIXES | JSON_SUFFIXES)
            corpus, fingerprint = _from_files(path, files, text_field, cfg)
            # "files" is how .txt files were read before data.txt_documents existed: their data keys stay valid
            division = cfg.txt_documents if cfg.txt_documents != "files" and any(p.suffix == ".txt" for p in files) \
                else None
    for name in ("train", "validation"):
        if len(corpus[name]) == 0:
            raise ConfigError(f"data source {source!r}: the {name} split is empty (no text in it); add text or "
                              f"change data.validation_fraction")
    return corpus, fingerprint, division


def load_corpus(cfg: DataConfig) -> tuple[datasets.DatasetDict, str]:
    """data.source (the single-source form) as train/validation splits, plus its fingerprint."""
    return load_source(cfg.source, cfg.text_field, cfg)[:2]
