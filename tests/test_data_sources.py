"""Weighted multi-source corpora (data.sources), plain-text documents, hf: sources, tokenizer names and BOS."""

import json
import random

import numpy as np
import pytest

from pipeline.config import ConfigError, load_config
from pipeline.data.corpus import load_source, parse_hf_source
from pipeline.data.loader import Blend, TrainBatches, open_samples, validation_batches, validation_sources
from pipeline.data.tokenizer import load_tokenizer
from pipeline.prepare import prepare

PROSE = ["river", "stone", "morning", "quiet", "lantern", "harbor", "willow", "ember", "meadow", "thunder"]
CODE = ["def", "return", "lambda", "yield", "import", "class", "while", "assert", "async", "await"]


def _words(rng: random.Random, vocabulary: list[str], n: int) -> str:
    return " ".join(rng.choice(vocabulary) for _ in range(n))


def write_sources(root):
    """A .txt of blank-line-separated paragraphs and a JSONL dir, in disjoint vocabularies."""
    rng = random.Random(0)
    prose = root / "prose.txt"
    prose.write_text("\n\n".join(_words(rng, PROSE, rng.randint(20, 60)) for _ in range(400)) + "\n")
    records = root / "records"
    records.mkdir()
    for part in range(4):
        (records / f"part{part}.jsonl").write_text("".join(
            json.dumps({"body": _words(rng, CODE, rng.randint(20, 60))}) + "\n" for _ in range(30)))
    return prose, records


def mixture_overrides(root, prose, records, weights=(0.7, 0.3)) -> list[str]:
    sources = [{"path": str(prose), "weight": weights[0], "name": "prose"},
               {"path": str(records), "weight": weights[1], "name": "records", "text_field": "body"}]
    return [f"data.sources={json.dumps(sources)}", "data.vocab_size=300", "data.seq_len=32",
            f"data.tokenizer={root}/tok", f"data.output_dir={root}/mix", "train.micro_batch_size=4"]


@pytest.fixture(scope="module")
def mixture(tmp_path_factory):
    root = tmp_path_factory.mktemp("mixture")
    prose, records = write_sources(root)
    config = load_config("tiny", mixture_overrides(root, prose, records))
    return root, config, prepare(config)


def _source_of_rows(samples) -> dict:
    """Every packed row -> the source it came from, read from each source's own files."""
    return {part.__getitem__(i).tobytes(): name for part, name in zip(samples.parts, ("prose", "records"))
            for i in range(len(part))}


def test_blend_is_exact_per_block_and_seeks():
    blend = Blend([0.7, 0.3], seed=5)
    sources = np.array([blend[g][0] for g in range(3 * Blend.BLOCK)])
    assert np.bincount(sources[:Blend.BLOCK]).tolist() == [5734, 2458]  # 0.7 * 8192 = 5734.4
    assert abs(np.mean(sources[:10_000] == 0) - 0.7) < 0.01
    # the k-th draw of each source is numbered 0, 1, 2, ... in position order: nothing skipped or repeated
    for s in (0, 1):
        draws = [blend[g][1] for g in range(3 * Blend.BLOCK) if sources[g] == s]
        assert draws == list(range(len(draws)))
    far = Blend([0.7, 0.3], seed=5)
    assert far[2 * Blend.BLOCK + 17] == blend[2 * Blend.BLOCK + 17]  # a fresh blend seeks straight there
    other_seed = Blend([0.7, 0.3], seed=6)
    assert [other_seed[g][0] for g in range(50)] != sources[:50].tolist()
    with pytest.raises(ConfigError, match="below 1/8192"):
        Blend([1.0, 1e-5], seed=0)


def test_mixture_prepared_per_source(mixture):
    root, config, meta = mixture
    assert [s["name"] for s in meta["sources"]] == ["prose", "records"]
    assert [s["weight"] for s in meta["sources"]] == pytest.approx([0.7, 0.3])
    assert (root / "mix" / "sources" / "prose" / "train.bin").exists()
    # paragraphs of the .txt are documents: 400 of them between the two splits
    prose_docs = sum(meta["sources"][0]["splits"][s]["documents"] for s in ("train", "validation"))
    assert prose_docs == 400
    assert meta["splits"]["train"]["samples"] == sum(s["splits"]["train"]["samples"] for s in meta["sources"])
    tokenizer = load_tokenizer(meta["tokenizer"])
    samples = open_samples(config.data.output_dir, "train")
    prose_text = tokenizer.decode(samples.parts[0][0].tolist())
    assert set(prose_text.replace("</s>", " ").split()) <= set(PROSE)
    assert prepare(config) == meta  # the same inputs: reused


def test_mixture_proportions_order_and_ranks(mixture):
    _, config, _ = mixture
    samples = open_samples(config.data.output_dir, "train")
    source_of = _source_of_rows(samples)
    one_rank = TrainBatches(samples, 11, micro_batch=4, grad_accum=1, rank=0, world_size=1)
    rows = np.concatenate([one_rank.batch(step, 0).numpy() for step in range(2500)])  # 10k samples
    drawn = [source_of[row.astype(samples.parts[0].tokens.dtype).tobytes()] for row in rows]
    assert abs(drawn.count("prose") / len(drawn) - 0.7) < 0.01
    assert len(samples.parts[1]) * 3 < drawn.count("records")  # the small source repeats: several epochs
    # 2 ranks x micro 2 read the same global order, split between them
    two = [TrainBatches(samples, 11, micro_batch=2, grad_accum=1, rank=r, world_size=2) for r in (0, 1)]
    for step in (0, 7, 2499):
        both = np.concatenate([two[0].batch(step, 0).numpy(), two[1].batch(step, 0).numpy()])
        assert np.array_equal(both, one_rank.batch(step, 0).numpy())
    # resuming mid-epoch: a fresh loader seeks to the step and reads what the uninterrupted one read
    resumed = TrainBatches(open_samples(config.data.output_dir, "train"), 11, 4, 1, 0, 1)
    assert np.array_equal(resumed.batch(1234, 0).numpy(), rows[1234 * 4:1235 * 4])


def test_mixture_validation_in_weights(mixture):
    _, config, _ = mixture
    val = open_samples(config.data.output_dir, "validation")
    source_of = _source_of_rows(val)
    batches = [validation_batches(val, 4, 5, rank=r, world_size=2) for r in (0, 1)]
    rows = [row for r in batches for b in r for row in b.numpy()]
    drawn = [source_of[row.astype(val.parts[0].tokens.dtype).tobytes()] for row in rows]
    assert drawn.count("prose") == 28 and drawn.count("records") == 12  # 0.7 / 0.3 of 40
    with pytest.raises(ConfigError, match="samples of source .* lower train.eval_batches"):
        val.validation_indices(int(len(val.parts[1]) / 0.3) + 50)  # more than the records' split holds


def test_mixture_config_errors(tmp_path):
    prose, records = write_sources(tmp_path)
    base = mixture_overrides(tmp_path, prose, records)
    with pytest.raises(ConfigError, match="not both"):
        load_config("tiny", base + [f"data.source={prose}"])
    with pytest.raises(ConfigError, match="weight must be positive"):
        load_config("tiny", mixture_overrides(tmp_path, prose, records, weights=(1.0, 0)))
    twins = [f"data.sources={json.dumps([{'path': str(prose), 'name': 'a'}, {'path': str(records), 'name': 'a'}])}"]
    with pytest.raises(ConfigError, match="unique"):
        load_config("tiny", twins)
    with pytest.raises(ConfigError, match=r"data.sources\[0\]: expected|unknown key"):
        load_config("tiny", ["data.sources=[{file: x}]"])


def test_changed_mixture_refuses_the_existing_dir(mixture, tmp_path):
    root, config, meta = mixture
    prose = root / "prose.txt"
    records = root / "records"
    mtime = (root / "mix" / "meta.json").stat().st_mtime_ns
    other = load_config("tiny", mixture_overrides(root, prose, records, weights=(0.5, 0.5))
                        + [f"data.tokenizer={tmp_path}/tok2"])
    with pytest.raises(ConfigError, match="holds data prepared from other inputs"):
        prepare(other)
    assert (root / "mix" / "meta.json").stat().st_mtime_ns == mtime


@pytest.mark.parametrize("mode, documents", [("paragraphs", 3), ("lines", 5), ("files", 1)])
def test_txt_documents(tmp_path, mode, documents):
    (tmp_path / "a.txt").write_text("one\ntwo\n\nthree\n\n\nfour\n   \nfive\n")
    (tmp_path / "b.py").write_text("x = 1\n\ny = 2\n")  # not .txt: one document whatever the mode
    (tmp_path / "c.py").write_text("")  # an empty file is still a document (as packed before .txt paragraphs)
    config = load_config("tiny", [f"data.txt_documents={mode}", "data.validation_fraction=0.5"])
    corpus, _, division = load_source(str(tmp_path), "text", config.data)
    assert division == (None if mode == "files" else mode)  # "files" keeps the keys of data packed before
    texts = list(corpus["train"]["text"]) + list(corpus["validation"]["text"])
    assert len(texts) == documents + 2 and "x = 1\n\ny = 2\n" in texts and "" in texts


def test_too_few_documents_names_the_fix(tmp_path):
    single = tmp_path / "one.txt"
    single.write_text("a single paragraph\nwith two lines\n")
    config = load_config("tiny", [f"data.source={single}", f"data.output_dir={tmp_path}/out",
                                  f"data.tokenizer={tmp_path}/tok"])
    with pytest.raises(ConfigError, match="separate them by empty lines"):
        prepare(config)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.txt"]


def test_hf_sources_with_config_and_split(tmp_path):
    with pytest.raises(ConfigError, match="hf:<name>:<config>:<split>"):
        parse_hf_source("hf:a:b:c:d")
    assert parse_hf_source("hf:org/name::train") == ("org/name", None, "train")
    local = tmp_path / "hub-like"
    local.mkdir()
    (local / "train.jsonl").write_text("".join(json.dumps({"text": f"train doc {i}"}) + "\n" for i in range(40)))
    (local / "test.jsonl").write_text("".join(json.dumps({"text": f"held-out doc {i}"}) + "\n" for i in range(10)))
    config = load_config("tiny").data
    whole, _, _ = load_source(f"hf:{local}", "text", config)  # both splits: test is the validation split
    assert len(whole["train"]) == 40 and whole["validation"][0]["text"].startswith("held-out")
    one_split, _, _ = load_source(f"hf:{local}:default:train", "text", config)  # validation held out of train
    assert len(one_split["train"]) + len(one_split["validation"]) == 40
    assert all(t.startswith("train") for t in one_split["validation"]["text"])


def test_a_relative_tokenizer_path_into_an_existing_dir_is_a_path(tmp_path, monkeypatch):
    from pipeline.data.tokenizer import tokenizer_dir
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tokenizers").mkdir()  # not a Hub name: a new tokenizer may be trained there
    assert load_config("tiny", ["data.tokenizer=tokenizers/new"]).data.tokenizer == "tokenizers/new"
    assert tokenizer_dir("tokenizers/new").resolve() == (tmp_path / "tokenizers" / "new").resolve()


def test_bos_follows_the_tokenizer_template(mixture, tmp_path):
    """A tokenizer whose template starts texts with BOS (LLaMA's add_bos_token) gets BOS at every
    document start; ours (no template) gets none; the grow stage refuses data packed the other way."""
    from tokenizers.processors import TemplateProcessing

    from pipeline.data.packing import adds_bos
    from pipeline.grow import check_donor_tokenizer
    root, config, meta = mixture
    plain = load_tokenizer(meta["tokenizer"])
    assert not adds_bos(plain) and meta["bos"] is False
    with_bos = load_tokenizer(meta["tokenizer"])
    with_bos._tokenizer.post_processor = TemplateProcessing(single="<s> $A", special_tokens=[("<s>", plain.bos_token_id)])
    with_bos.save_pretrained(tmp_path / "bos-tok")
    assert adds_bos(load_tokenizer(tmp_path / "bos-tok"))
    corpus = tmp_path / "docs.txt"
    corpus.write_text("\n\n".join(_words(random.Random(i), PROSE, 30) for i in range(60)))
    bos_config = load_config("tiny", [f"data.source={corpus}", f"data.tokenizer={tmp_path}/bos-tok",
                                      f"data.output_dir={tmp_path}/bos-data", "data.seq_len=32", "data.vocab_size=300"])
    bos_meta = prepare(bos_config)
    assert bos_meta["bos"] is True
    tokens = open_samples(tmp_path / "bos-data", "train").tokens
    eos_at = np.flatnonzero(tokens == plain.eos_token_id)
    assert tokens[0] == plain.bos_token_id and (tokens[eos_at[:-1] + 1] == plain.bos_token_id).all()
    assert (tokens == plain.bos_token_id).sum() == bos_meta["splits"]["train"]["documents"]
    check_donor_tokenizer(str(tmp_path / "bos-tok"), 300, str(tmp_path / "bos-data"))  # agree: no error
    with pytest.raises(ConfigError, match="packed without it"):
        check_donor_tokenizer(str(tmp_path / "bos-tok"), 300, config.data.output_dir)


@pytest.mark.distributed
def test_training_on_a_mixture_resumes_exactly(mixture, tmp_path):
    """The train stage on 2 ranks reads the mixture; stopped mid-run and resumed, every later loss equals
    the uninterrupted run's, bit for bit."""
    from conftest import run_deepspeed
    from pipeline.metrics import read_metrics
    from test_distributed import SHORT_RUN, _deterministic
    root, _, _ = mixture
    prose, records = root / "prose.txt", root / "records"

    def train(run_dir, *flags):
        return run_deepspeed(["--module", "pipeline.train", "--config", "tiny", *flags, f"run.dir={run_dir}",
                              *mixture_overrides(root, prose, records), *SHORT_RUN, "train.deepspeed_config=zero2"])

    whole = train(tmp_path / "whole")
    assert "data prose: weight 0.700" in whole.stdout
    train(tmp_path / "parts", "--until-step", "3")
    train(tmp_path / "parts", "--resume", "auto")
    reference = read_metrics(tmp_path / "whole")
    assert [r["train/loss"] for r in reference if "train/loss" in r][-1] < reference[1]["train/loss"]
    assert _deterministic(read_metrics(tmp_path / "parts")) == _deterministic(reference)
    # per-source validation: each source's mean sample loss; weighted by its samples, they make val/loss
    sources = [s for r in (0, 1) for batch in validation_sources(open_samples(root / "mix", "validation"), 4, 2, r, 2)
               for s in batch.tolist()]
    counts = [sources.count(0), sources.count(1)]
    assert counts == [11, 5]  # 0.7 / 0.3 of 16 by largest remainder
    validated = [r for r in reference if "val/loss" in r]
    assert [r["step"] for r in validated] == [0, 4, 8]
    for r in validated:
        combined = (counts[0] * r["val/prose/loss"] + counts[1] * r["val/records/loss"]) / sum(counts)
        assert combined == pytest.approx(r["val/loss"], abs=1e-5)
        assert r["val/prose/loss"] != pytest.approx(r["val/records/loss"], abs=1e-3)  # disjoint vocabularies


def test_a_dir_without_a_tokenizer_is_not_trained_into(tmp_path):
    mine = tmp_path / "my-notes"
    mine.mkdir()
    (mine / "notes.md").write_text("my own files")
    config = load_config("tiny", [f"data.tokenizer={mine}", f"data.output_dir={tmp_path}/out"])
    with pytest.raises(ConfigError, match="exists but holds no tokenizer"):
        prepare(config)
    assert [p.name for p in mine.iterdir()] == ["notes.md"] and not (tmp_path / "out").exists()
