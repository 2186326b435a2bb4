import json

import numpy as np
import pytest

from conftest import data_overrides
from pipeline.config import ConfigError, load_config
from pipeline.data.corpus import load_corpus
from pipeline.data.loader import GlobalOrder, PackedSamples, TrainBatches, micro_batch_positions, validation_batches
from pipeline.data.tokenizer import load_tokenizer
from pipeline.prepare import prepare


def test_same_seed_same_order_other_seed_other_order():
    a, b, c = GlobalOrder(1000, seed=1), GlobalOrder(1000, seed=1), GlobalOrder(1000, seed=2)
    first = [a[g] for g in range(2500)]
    assert first == [b[g] for g in range(2500)]
    assert first != [c[g] for g in range(2500)]
    # every epoch is a permutation, and epochs differ
    assert sorted(first[:1000]) == list(range(1000))
    assert first[:1000] != first[1000:2000]


def test_seek_equals_iterating(prepared):
    """Rank 1 of 2, micro-batch 4, accumulation 2: its k-th micro-batch, read by a fresh loader seeking
    straight to it, equals the k-th slice of the global order consumed sample by sample."""
    _, config, _ = prepared
    samples = PackedSamples(config.data.output_dir, "train")
    n = len(samples)
    stream = np.concatenate([np.random.default_rng([7, e]).permutation(n) for e in range(2)])  # 2 epochs
    global_batch = 4 * 2 * 2
    for step, micro in ((0, 0), (1, 1), (5, 0), (n // global_batch, 1)):  # the last one crosses an epoch
        start = step * global_batch + (micro * 2 + 1) * 4  # micro-steps interleave ranks: (a * ranks + r)
        expected = np.stack([samples[i] for i in stream[start:start + 4]])
        fresh = TrainBatches(samples, 7, micro_batch=4, grad_accum=2, rank=1, world_size=2)
        assert np.array_equal(fresh.batch(step, micro).numpy(), expected)


def test_seek_crosses_epochs_in_constant_time(prepared):
    _, config, _ = prepared
    samples = PackedSamples(config.data.output_dir, "train")
    order = GlobalOrder(len(samples), 3)
    far = 5 * len(samples) + 17  # in epoch 5, computed without touching epochs 0..4
    assert order[far] == int(np.random.default_rng([3, 5]).permutation(len(samples))[17])


@pytest.mark.parametrize("world_size, micro, accum", [(1, 8, 1), (2, 4, 2), (4, 2, 3)])
def test_ranks_disjoint_and_covering(world_size, micro, accum):
    for step in (0, 5):
        seen = []
        for rank in range(world_size):
            for micro_step in range(accum):
                seen.extend(micro_batch_positions(step, micro_step, rank, micro, accum, world_size))
        batch = micro * accum * world_size
        assert sorted(seen) == list(range(step * batch, (step + 1) * batch))  # disjoint and covering


def test_validation_set_fixed_and_rank_disjoint(prepared):
    _, config, _ = prepared
    val = PackedSamples(config.data.output_dir, "validation")
    r0 = validation_batches(val, 4, 3, rank=0, world_size=2)
    r1 = validation_batches(val, 4, 3, rank=1, world_size=2)
    assert len(r0) == len(r1) == 3
    rows = {tuple(row.tolist()) for b in r0 + r1 for row in b}
    assert len(rows) == 24
    # spread over the whole split (consecutive samples would be one document): 24 evenly strided samples
    stride = len(val) / 24
    expected = {tuple(val[int(g * stride)].tolist()) for g in range(24)}
    assert rows == expected and int(23 * stride) > len(val) * 0.9
    with pytest.raises(ConfigError, match="lower train.eval_batches"):
        validation_batches(val, 4, 10**6, rank=0, world_size=2)


def test_packed_samples_are_the_tokenized_corpus(prepared):
    _, config, meta = prepared
    tokenizer = load_tokenizer(meta["tokenizer"])
    samples = PackedSamples(config.data.output_dir, "validation")
    corpus, _ = load_corpus(config.data)
    first_doc = tokenizer(corpus["validation"][0]["text"], add_special_tokens=False)["input_ids"]
    expected = (first_doc + [tokenizer.eos_token_id])[:config.data.seq_len]
    assert samples[0][:len(expected)].tolist() == expected
    assert len(samples) == meta["splits"]["validation"]["tokens"] // config.data.seq_len


def test_tokenizer_round_trips_and_saves(prepared, tmp_path):
    _, config, meta = prepared
    tokenizer = load_tokenizer(meta["tokenizer"])
    corpus, _ = load_corpus(config.data)
    for text in corpus["validation"]["text"][:10]:  # unseen text, whitespace-heavy code
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert tokenizer.decode(ids) == text
    text = "def f(x):\n\treturn x  # ünïcödé ✓ </s>\n"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == text
    assert tokenizer.eos_token_id not in ids  # literal "</s>" in text is not an end-of-document marker
    tokenizer.save_pretrained(tmp_path)
    assert load_tokenizer(tmp_path)(text, add_special_tokens=False)["input_ids"] == ids
    assert len(tokenizer) == config.data.vocab_size


def test_tokenizer_matches_sentencepiece(prepared):
    import sentencepiece as spm
    _, config, meta = prepared
    sp = spm.SentencePieceProcessor(model_file=f"{meta['tokenizer']}/tokenizer.model")
    tokenizer = load_tokenizer(meta["tokenizer"])
    corpus, _ = load_corpus(config.data)
    for text in corpus["validation"]["text"][:10]:
        if "<s>" not in text and "</s>" not in text and "<pad>" not in text and "<unk>" not in text:
            assert tokenizer(text, add_special_tokens=False)["input_ids"] == sp.encode(text)


def test_prepare_reuses_cache_and_refuses_to_overwrite(prepared, capsys):
    root, config, meta = prepared
    mtime = (root / "packed" / "train.bin").stat().st_mtime_ns
    assert prepare(config) == meta
    assert "reusing" in capsys.readouterr().out
    assert (root / "packed" / "train.bin").stat().st_mtime_ns == mtime
    other = load_config("tiny", data_overrides(root) + ["data.seq_len=64"])
    with pytest.raises(ConfigError, match="holds data prepared from other inputs"):
        prepare(other)
    other_vocab = load_config("tiny", data_overrides(root) + ["data.vocab_size=1024"])
    with pytest.raises(ConfigError, match="trained from other inputs"):
        prepare(other_vocab)
    assert (root / "packed" / "train.bin").stat().st_mtime_ns == mtime


def test_local_jsonl_and_text_sources(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    for i in range(6):
        (docs / f"part{i}.jsonl").write_text("".join(json.dumps({"body": f"record {i}-{j} " * 20}) + "\n"
                                                   for j in range(30)))
    config = load_config("tiny", [f"data.source={docs}", "data.text_field=body", "data.validation_fraction=0.3"])
    corpus, fingerprint = load_corpus(config.data)
    assert len(corpus["train"]) + len(corpus["validation"]) == 180
    assert corpus["train"].column_names == ["text"]
    train_text, val_text = set(corpus["train"]["text"]), set(corpus["validation"]["text"])
    assert not train_text & val_text
    assert load_corpus(config.data)[0]["validation"]["text"] == corpus["validation"]["text"]  # deterministic
    single = tmp_path / "one.txt"
    single.write_text("a single document\n")
    with pytest.raises(ConfigError, match="too few to hold out"):
        load_corpus(load_config("tiny", [f"data.source={single}"]).data)


def test_datasets_saved_dir_source(tmp_path):
    import datasets
    ds = datasets.Dataset.from_dict({"text": [f"document number {i}" for i in range(50)]})
    ds.save_to_disk(str(tmp_path / "saved"))
    corpus, _ = load_corpus(load_config("tiny", [f"data.source={tmp_path / 'saved'}"]).data)
    assert len(corpus["train"]) + len(corpus["validation"]) == 50 and len(corpus["validation"]) > 0


@pytest.mark.parametrize("make, message", [
    (lambda p: p / "missing", "does not exist"),
    (lambda p: (p / "empty").mkdir() or p / "empty", "holds no"),
    (lambda p: (p / "blank").mkdir() or (p / "blank" / "a.txt").write_text("") or
     (p / "blank" / "b.txt").write_text("") or p / "blank", "every file is empty"),
])
def test_missing_or_empty_corpus_fails_clearly(tmp_path, make, message):
    source = make(tmp_path)
    with pytest.raises(ConfigError, match=message):
        prepare(load_config("tiny", [f"data.source={source}", f"data.output_dir={tmp_path}/out",
                                     f"data.tokenizer={tmp_path}/tok"]))
    assert not (tmp_path / "out").exists()


def test_tokenizers_dir_does_not_shadow_the_library():
    import tokenizers

    from pipeline.config import PROJECT_ROOT
    assert not (PROJECT_ROOT / "tokenizers" / "__init__.py").exists()
    assert "site-packages" in tokenizers.__file__


def test_data_start_continues_after_the_starting_models_samples(prepared, tmp_path):
    from pipeline.data.loader import data_start, write_data_position
    _, config, _ = prepared
    write_data_position(tmp_path, "key-a", 5, 640)
    assert data_start("auto", str(tmp_path), "key-a", 5)[0] == 640
    assert data_start("auto", str(tmp_path), "key-b", 5)[0] == 0  # other data
    assert data_start("auto", str(tmp_path), "key-a", 6)[0] == 0  # another order
    assert data_start("auto", str(tmp_path / "no-record"), "key-a", 5)[0] == 0
    assert data_start("auto", None, "key-a", 5)[0] == 0
    assert data_start("12", str(tmp_path), "key-a", 5)[0] == 12  # an explicit start wins
    samples = PackedSamples(config.data.output_dir, "train")
    late = TrainBatches(samples, 7, micro_batch=4, grad_accum=2, rank=1, world_size=2, start=3 * 16)
    early = TrainBatches(samples, 7, micro_batch=4, grad_accum=2, rank=1, world_size=2)
    assert np.array_equal(late.batch(0, 1).numpy(), early.batch(3, 1).numpy())
    for bad in ("-1", "soon"):
        with pytest.raises(ConfigError, match="data.start must be auto or a sample position"):
            load_config("tiny", [f"data.start={bad}"])
