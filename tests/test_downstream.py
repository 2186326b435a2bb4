"""Downstream evaluation (pipeline/downstream.py, pipeline/data/eval_tasks.py): the corpus tasks, scoring
as lm-eval's own HF backend scores, the split over ranks, the config. The distributed acceptance test
(in the loop under ZeRO-3 on 2 ranks = the entry point = lm-eval's HF backend) is in
tests/test_downstream_distributed.py."""

import json
import random
import sysconfig
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from pipeline import downstream
from pipeline.config import ConfigError, EvalConfig, load_config
from pipeline.data.eval_tasks import CHOICES, CONTEXT_TOKENS, corpus_documents, write_corpus_tasks
from pipeline.data.tokenizer import train_tokenizer

SEQ_LEN = 96


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A 400-piece tokenizer and packed samples from real text (a few stdlib modules), made in-process."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    texts = [(stdlib / name).read_text() for name in ("argparse.py", "textwrap.py", "shlex.py", "calendar.py")]
    out = tmp_path_factory.mktemp("downstream")
    tokenizer = train_tokenizer([(datasets.Dataset.from_dict({"text": texts[:2]}), 200_000)], 400,
                                out / "tokenizer", {"test": True})
    stream = []
    for text in texts[2:]:  # held-out text, documents separated by EOS as prepare packs them
        stream += tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    samples = [np.array(stream[i:i + SEQ_LEN]) for i in range(0, len(stream) - SEQ_LEN, SEQ_LEN)]
    return tokenizer, samples, out


@pytest.fixture(scope="module")
def model_dir(corpus):
    tokenizer, _, out = corpus
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    LlamaForCausalLM(config).save_pretrained(out / "model")
    tokenizer.save_pretrained(out / "model")
    return out / "model"


def test_corpus_tasks_are_well_formed_and_deterministic(corpus):
    tokenizer, samples, _ = corpus
    choice, following = corpus_documents(samples, tokenizer, 12)
    assert len(choice) == len(following) == 12
    assert corpus_documents(samples, tokenizer, 12) == (choice, following)
    for doc, nxt in zip(choice, following):
        assert len(doc["choices"]) == CHOICES == len(set(doc["choices"]))
        assert 0 <= doc["label"] < CHOICES
        assert doc["context"] == nxt["context"]
        # the true ending continues the context (the next tokens are its start): the passage read on
        assert doc["choices"][doc["label"]].startswith(nxt["next"])
        assert len(tokenizer(doc["context"], add_special_tokens=False)["input_ids"]) >= CONTEXT_TOKENS - 2
        assert tokenizer.eos_token not in doc["context"] + "".join(doc["choices"])
    assert len({doc["label"] for doc in choice}) > 1  # the answer is not always in one place


def test_corpus_tasks_refuse_a_split_too_small(corpus):
    tokenizer, samples, _ = corpus
    with pytest.raises(ValueError, match="at least 4"):
        corpus_documents([np.array([tokenizer.eos_token_id] * SEQ_LEN)] * 8, tokenizer, 5)


def run_hf_backend(model_dir, include: Path, tasks: list[str]) -> dict:
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager
    hflm = HFLM(pretrained=str(model_dir), device="cpu", batch_size=4)
    return lm_eval.simple_evaluate(model=hflm, tasks=tasks, task_manager=TaskManager(include_path=str(include)),
                                   bootstrap_iters=0, log_samples=False)


@pytest.mark.integration  # lm-eval's simple_evaluate runs `git describe`
def test_forward_scoring_matches_lm_evals_hf_backend(corpus, model_dir, tmp_path):
    """Both tasks through ForwardLM over the model's forward and through lm-eval's HFLM on its dir: the
    same accuracies, and the same perplexity (a function of every request's log-likelihood)."""
    from transformers import AutoModelForCausalLM
    tokenizer, samples, _ = corpus
    include = write_corpus_tasks(samples, tokenizer, 16, tmp_path / "tasks")
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    config = EvalConfig(tasks="corpus_choice,corpus_next", batch_size=3, include_path=str(include))
    ours = downstream.Downstream(config, tokenizer, downstream.model_max_length(model.config, tokenizer))
    mine = downstream.scalars(ours.run(lambda ids: model(input_ids=ids).logits, "cpu"))
    theirs = downstream.scalars(run_hf_backend(model_dir, include, ["corpus_choice", "corpus_next"]))
    assert set(mine) == {"eval/corpus_choice/acc", "eval/corpus_choice/acc_norm", "eval/corpus_next/acc",
                         "eval/corpus_next/perplexity"}
    assert mine.keys() == theirs.keys()
    for key in mine:
        assert mine[key] == pytest.approx(theirs[key], rel=1e-5), key


@pytest.mark.integration  # lm-eval's simple_evaluate runs `git describe`
def test_evaluation_leaves_the_rngs_as_they_were(corpus, model_dir, tmp_path):
    from transformers import AutoModelForCausalLM
    tokenizer, samples, _ = corpus
    include = write_corpus_tasks(samples, tokenizer, 8, tmp_path / "tasks")
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    ours = downstream.Downstream(EvalConfig(tasks="corpus_choice", include_path=str(include)), tokenizer, 128,
                                 seed=5)
    torch.manual_seed(1), random.seed(1), np.random.seed(1)
    expected = (torch.rand(3), random.random(), np.random.rand())
    torch.manual_seed(1), random.seed(1), np.random.seed(1)
    ours.run(lambda ids: model(input_ids=ids).logits, "cpu")
    assert torch.equal(torch.rand(3), expected[0]) and random.random() == expected[1] and np.random.rand() == expected[2]


def test_ranks_run_the_same_forwards_and_together_score_every_request(monkeypatch):
    """7 requests, batch 2, 2 ranks: each rank forwards twice (the second time rank 1 has no request and
    scores a dummy), and the ranks' shares are disjoint and cover all 7."""
    inputs = [[1] * (n + 2) for n in range(7)]
    continuations = [[1] for _ in inputs]
    shares, forwards = {}, {}
    for rank in (0, 1):
        calls = []

        def forward(ids):
            calls.append(ids.shape)
            return torch.zeros(*ids.shape, 5)

        def gather(out, mine):
            shares[rank] = set(mine)
            out[:] = [mine, {i: (0.0, True) for i in range(len(inputs)) if i not in mine}]

        monkeypatch.setattr(downstream.dist, "is_initialized", lambda: True)
        monkeypatch.setattr(downstream.dist, "get_rank", lambda: rank)
        monkeypatch.setattr(downstream.dist, "get_world_size", lambda: 2)
        monkeypatch.setattr(downstream.dist, "all_gather_object", gather)
        scores = downstream.score_split_over_ranks(forward, inputs, continuations, 2, "cpu")
        assert len(scores) == 7
        forwards[rank] = calls
    assert len(forwards[0]) == len(forwards[1]) == 2
    assert shares[0].isdisjoint(shares[1]) and shares[0] | shares[1] == set(range(7))


def test_scores_are_the_continuations_log_probabilities_and_greedy_flags():
    logits = torch.log_softmax(torch.randn(1, 4, 6), dim=-1)
    forward = lambda ids: logits[:, :ids.shape[1]]  # noqa: E731 - a fixed "model"
    best = logits[0].argmax(-1).tolist()
    (logprob, greedy), = downstream.score_split_over_ranks(forward, [[0, 0, 0, 0]], [best[2:4]], 4, "cpu")
    assert logprob == pytest.approx(float(logits[0, 2, best[2]] + logits[0, 3, best[3]]), abs=1e-6)
    assert greedy
    other = [(best[3] + 1) % 6]
    (_, greedy), = downstream.score_split_over_ranks(forward, [[0, 0, 0, 0]], [other], 4, "cpu")
    assert not greedy


def test_scalars_name_every_numeric_metric_and_leave_out_standard_errors():
    results = {"results": {"t": {"alias": "t", "acc,none": 0.5, "acc_stderr,none": 0.1, "exact_match,strict": 0.25,
                                 "perplexity,none": 3.0}}}
    assert downstream.scalars(results) == {"eval/t/acc": 0.5, "eval/t/exact_match_strict": 0.25,
                                           "eval/t/perplexity": 3.0}
    assert downstream.scalars(results, of="donor_")["eval/t/donor_acc"] == 0.5
    assert downstream.scalars(None) == {}


@pytest.mark.parametrize("overrides, message", [
    (["eval.interval=10"], "eval.tasks is empty"),
    (["eval.tasks=corpus_choice", "eval.batch_size=0"], "batch_size > 0"),
    (["eval.tasks=corpus_choice", "eval.include_path=/nonexistent"], "not a directory"),
])
def test_bad_eval_settings_are_refused(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config("tiny", overrides)


def test_unknown_task_names_are_refused_before_any_work(corpus, tmp_path):
    tokenizer, samples, _ = corpus
    include = write_corpus_tasks(samples, tokenizer, 8, tmp_path / "tasks")
    with pytest.raises(ConfigError, match="unknown lm-eval task"):
        downstream.Downstream(EvalConfig(tasks="corpus_choice,no_such_task_anywhere", include_path=str(include)),
                              tokenizer, 128)


def test_the_task_yaml_points_at_its_own_data(corpus, tmp_path):
    tokenizer, samples, _ = corpus
    include = write_corpus_tasks(samples, tokenizer, 8, tmp_path / "tasks")
    yaml_text = (include / "corpus_choice.yaml").read_text()
    assert json.dumps(str((include / "corpus_choice.jsonl").resolve())) in yaml_text
    assert len((include / "corpus_next.jsonl").read_text().splitlines()) == 8
