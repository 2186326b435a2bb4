"""Hugging Face Hub names for grow.donor, train.init_from and data.tokenizer: `org/name`, optionally
`org/name@revision` (a branch, tag or commit), the ecosystem's convention.

A value that exists as a local path is that path, always. Otherwise a Hub name is downloaded with
`huggingface_hub.snapshot_download` into the HF cache (HF_HOME) and the config holds the snapshot's
directory, which names the exact commit (a resumed run whose name now resolves to another commit is
refused like any changed config). Offline (HF_HUB_OFFLINE=1, or no network) a cached snapshot is
used; without one, one ConfigError names the fix before any work, never a newly trained tokenizer.
"""

from __future__ import annotations

import os
import re

from pipeline.errors import ConfigError

HUB_NAME = re.compile(r"(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+)(?:@(?P<revision>[\w./-]+))?")
MODEL_FILES = ["*.json", "*.safetensors", "*.model", "*.txt", "*.tiktoken"]  # config, weights, tokenizer
TOKENIZER_FILES = ["tokenizer*", "special_tokens_map.json", "*.model", "vocab*", "merges.txt", "config.json"]


def is_hub_name(value: str) -> bool:
    """`org/name[@revision]` that is not a local path, nor a new entry in an existing local dir `org`
    (where a new tokenizer may be trained)."""
    path = os.path.expanduser(value)
    return bool(HUB_NAME.fullmatch(value)) and not os.path.exists(path) and not os.path.exists(os.path.dirname(path))


def resolve(value: str | None, key: str, files: list[str] = MODEL_FILES, required: str = "config.json") -> str | None:
    """A local path as given; a Hub name -> its snapshot dir in the HF cache (downloaded if needed),
    which must hold `required` (a model's config.json, a tokenizer's tokenizer_config.json: a tokenizer
    dir without one would have a new tokenizer trained into the cache)."""
    if value is None or not is_hub_name(value):
        return value
    import huggingface_hub
    from huggingface_hub.errors import HfHubHTTPError, HFValidationError, LocalEntryNotFoundError
    match = HUB_NAME.fullmatch(value)
    offline = os.environ.get("HF_HUB_OFFLINE", "0").upper() in ("1", "ON", "YES", "TRUE")
    try:
        snapshot = huggingface_hub.snapshot_download(match["repo"], revision=match["revision"],
                                                     allow_patterns=files, local_files_only=offline)
    except LocalEntryNotFoundError:
        why = "HF_HUB_OFFLINE is set" if offline else "the Hub cannot be reached"
        raise ConfigError(f"{key}={value!r} is a Hub name that is not in the local HF cache and {why}: download "
                          f"it where there is network (`hf download {match['repo']}`, into this machine's HF_HOME) "
                          f"or pass a local dir") from None
    except (HfHubHTTPError, HFValidationError, OSError) as err:
        raise ConfigError(f"{key}={value!r}: the Hub download failed ({type(err).__name__}: {err}); check the "
                          f"name and revision, or pass a local dir") from None
    if not os.path.exists(os.path.join(snapshot, required)):
        raise ConfigError(f"{key}={value!r}: the Hub repo has no {required} (downloaded to {snapshot}); give a "
                          f"repo or local dir that has one")
    return snapshot
