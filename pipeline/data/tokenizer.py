"""Train a sentencepiece BPE tokenizer and expose it as a Hugging Face fast tokenizer.

Sentencepiece settings are chosen so that text round-trips exactly (code corpora depend on
whitespace): identity normalization, no dummy prefix, whitespace kept, newline and tab as their
own symbols, and byte fallback for characters outside the vocabulary.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import datasets
import sentencepiece as spm
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
from transformers import AutoTokenizer, PreTrainedTokenizerFast
from transformers.convert_slow_tokenizer import SentencePieceExtractor

from pipeline.config import PROJECT_ROOT, ConfigError

SPECIALS = {"pad": "<pad>", "unk": "<unk>", "bos": "<s>", "eos": "</s>"}  # ids 0..3 in this order
USER_SYMBOLS = ["\n", "\t"]
TRAINING_RECORD = "pipeline_tokenizer.json"


def tokenizer_dir(name_or_path: str) -> Path:
    """A bare name lives in the project's tokenizers/ directory; anything with a slash is a path (a Hub
    name, "org/model", was resolved to its snapshot dir by the config: pipeline/hub.py).

    Refused: a non-empty dir without a tokenizer (a new one would be trained into the user's files; a
    training interrupted before it saved leaves such a dir too: delete it)."""
    path = PROJECT_ROOT / "tokenizers" / name_or_path if "/" not in name_or_path else Path(name_or_path).expanduser()
    if path.is_dir() and any(path.iterdir()) and not (path / "tokenizer_config.json").exists():
        raise ConfigError(f"data.tokenizer={name_or_path!r}: {path} exists but holds no tokenizer "
                          f"(tokenizer_config.json); give a tokenizer dir, or a new name to train one (a dir left "
                          f"by an interrupted training: delete it)")
    return path


def _training_lines(texts: list[tuple[datasets.Dataset, int]]):
    """Non-empty lines of each source's training text, up to that source's character budget."""
    for split, budget in texts:
        for text in split["text"]:
            for line in text.split("\n"):
                if line.strip():
                    yield line
                    budget -= len(line)
                    if budget <= 0:
                        break
            if budget <= 0:
                break


def _as_hf_tokenizer(model_path: Path) -> PreTrainedTokenizerFast:
    """Rebuild the sentencepiece BPE model in `tokenizers` so the HF tokenizer gives the same ids."""
    extracted = SentencePieceExtractor(str(model_path)).extract(models.BPE)
    bpe = models.BPE(vocab=extracted["vocab"], merges=extracted["merges"], unk_token=SPECIALS["unk"],
                     byte_fallback=True, fuse_unk=True)
    tok = Tokenizer(bpe)
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never", split=False)
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    tok.add_tokens([AddedToken(s, normalized=False) for s in USER_SYMBOLS])
    tok.add_special_tokens(list(SPECIALS.values()))
    # split_special_tokens: "</s>" inside the corpus text is text, not an end-of-document marker.
    return PreTrainedTokenizerFast(tokenizer_object=tok, clean_up_tokenization_spaces=False,
                                   split_special_tokens=True,
                                   **{f"{role}_token": text for role, text in SPECIALS.items()})


def train_tokenizer(train_texts: list[tuple[datasets.Dataset, int]], vocab_size: int, out_dir: Path,
                    record: dict) -> PreTrainedTokenizerFast:
    """Train on the training splits only (validation text must stay unseen), each source's up to its
    character budget, and save into ``out_dir``."""
    proto = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=_training_lines(train_texts), model_writer=proto, vocab_size=vocab_size,
        model_type="bpe", normalization_rule_name="identity", remove_extra_whitespaces=False,
        add_dummy_prefix=False, allow_whitespace_only_pieces=True, split_digits=True, byte_fallback=True,
        user_defined_symbols=USER_SYMBOLS, pad_id=0, unk_id=1, bos_id=2, eos_id=3,
        pad_piece=SPECIALS["pad"], unk_piece=SPECIALS["unk"], bos_piece=SPECIALS["bos"],
        eos_piece=SPECIALS["eos"], max_sentence_length=1 << 16, num_threads=2, minloglevel=2)
    out_dir.mkdir(parents=True, exist_ok=True)
    model_path = out_dir / "tokenizer.model"  # the sentencepiece original, for other toolchains
    model_path.write_bytes(proto.getvalue())
    tokenizer = _as_hf_tokenizer(model_path)
    tokenizer.save_pretrained(out_dir)
    (out_dir / TRAINING_RECORD).write_text(json.dumps(record, indent=2))
    return tokenizer


def load_or_train_tokenizer(name_or_path: str, train_texts: list[tuple[datasets.Dataset, int]], vocab_size: int,
                            record: dict) -> tuple[PreTrainedTokenizerFast, Path, bool]:
    """Reuse the tokenizer at ``name_or_path`` if it was trained from the same inputs, train it if absent.

    An existing tokenizer trained from other inputs is never overwritten: that would silently change
    the ids of every dataset and model already made with it.
    """
    out_dir = tokenizer_dir(name_or_path)
    if (out_dir / "tokenizer_config.json").exists():
        stored = out_dir / TRAINING_RECORD
        if stored.exists() and json.loads(stored.read_text()) != record:
            raise ConfigError(f"tokenizer {out_dir} was trained from other inputs ({stored}); choose a new "
                              f"data.tokenizer name or delete that directory yourself")
        return load_tokenizer(out_dir), out_dir, False
    return train_tokenizer(train_texts, vocab_size, out_dir, record), out_dir, True


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerFast:
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    if tokenizer.eos_token_id is None:
        raise ConfigError(f"tokenizer {path} has no EOS token; packing needs one to separate documents")
    return tokenizer
