"""Downstream tasks made from the prepared data's validation split, in lm-evaluation-harness's YAML task
format, so a model is evaluated on tasks without the Hub (these machines have none) and on text of its
own domain that it never trained on:

  corpus_choice   multiple choice (HellaSwag's form): a validation passage's first `CONTEXT_TOKENS`
                  tokens, and 4 endings of `ENDING_TOKENS` tokens: its own and the endings of 3 other
                  passages; metrics acc and acc_norm (a random model scores ~0.25).
  corpus_next     loglikelihood (LAMBADA's form): the same contexts, and their own next
                  `NEXT_TOKENS` tokens; metrics acc (the model's greedy continuation is exactly them)
                  and perplexity.

Passages come from validation samples spread evenly over the split (as the validation batches are), in
one document (no special token inside). Texts are decoded with the data's tokenizer; an ending is the
decoded context+ending minus the decoded context, so the pair re-tokenizes as lm-eval scores it.

    write_data_corpus_tasks(data.output_dir, tokenizer, items=100)  ->  <data.output_dir>/eval_tasks/100/
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from pipeline.data.loader import open_samples

CORPUS_TASKS = ("corpus_choice", "corpus_next")
CONTEXT_TOKENS, ENDING_TOKENS, NEXT_TOKENS = 48, 16, 2
CHOICES = 4


def _passages(samples, tokenizer, count: int) -> list[tuple[str, str, str]]:
    """Up to `count` (context, ending, next) texts from validation samples spread evenly over the split."""
    special = np.array(sorted(tokenizer.all_special_ids))
    length = CONTEXT_TOKENS + ENDING_TOKENS
    passages = []
    for index in np.linspace(0, len(samples) - 1, num=min(len(samples), 4 * count), dtype=np.int64):
        tokens = np.asarray(samples[int(index)])
        inside = np.flatnonzero(np.isin(tokens, special))  # document boundaries: take the longest run
        bounds = [-1, *inside.tolist(), len(tokens)]
        start, end = max(zip(bounds[:-1], bounds[1:]), key=lambda b: b[1] - b[0])
        if end - start - 1 < length:
            continue
        window = tokens[start + 1:start + 1 + length].tolist()
        context = tokenizer.decode(window[:CONTEXT_TOKENS])
        whole, first = tokenizer.decode(window), tokenizer.decode(window[:CONTEXT_TOKENS + NEXT_TOKENS])
        if not (whole.startswith(context) and first.startswith(context)) or not context.strip():
            continue
        if whole[len(context):].strip() and first[len(context):].strip():
            passages.append((context, whole[len(context):], first[len(context):]))
        if len(passages) == count:
            break
    return passages


def corpus_documents(samples, tokenizer, items: int) -> tuple[list[dict], list[dict]]:
    """The two tasks' documents (deterministic: the same data and tokenizer give the same files)."""
    passages = _passages(samples, tokenizer, items)
    if len(passages) < CHOICES:
        raise ValueError(f"the validation split yields {len(passages)} passages of {CONTEXT_TOKENS + ENDING_TOKENS} "
                         f"tokens inside one document, the corpus tasks need at least {CHOICES}")
    rng = np.random.default_rng(0)
    choice, following = [], []
    for i, (context, ending, next_text) in enumerate(passages):
        others = []  # distinct endings: boilerplate passages can share one
        for k in range(1, len(passages)):
            other = passages[(i + k) % len(passages)][1]
            if other != ending and other not in others:
                others.append(other)
            if len(others) == CHOICES - 1:
                break
        if len(others) < CHOICES - 1:
            continue
        label = int(rng.integers(CHOICES))
        endings = [*others[:label], ending, *others[label:]]
        choice.append({"context": context, "choices": endings, "label": label})
        following.append({"context": context, "next": next_text})
    return choice, following


def _task_yaml(name: str, data_file: Path, body: str) -> str:
    return (f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {json.dumps(str(data_file))}\n"
            f"test_split: test\ndoc_to_text: context\ntarget_delimiter: \"\"\n{body}")


CHOICE_BODY = ("output_type: multiple_choice\ndoc_to_choice: choices\ndoc_to_target: label\nmetric_list:\n"
               "  - metric: acc\n  - metric: acc_norm\n")
NEXT_BODY = ("output_type: loglikelihood\ndoc_to_target: next\nmetric_list:\n  - metric: perplexity\n"
             "  - metric: acc\n")


def _write(path: Path, text: str) -> None:
    """Atomic, so ranks and runs sharing the data dir never read half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_corpus_tasks(samples, tokenizer, items: int, out: Path) -> Path:
    """Writes both tasks (data and YAML) made from `samples` (a split's packed samples) into `out` and
    returns it: lm-eval's include_path for them."""
    out.mkdir(parents=True, exist_ok=True)
    choice, following = corpus_documents(samples, tokenizer, items)
    for name, documents, body in (("corpus_choice", choice, CHOICE_BODY), ("corpus_next", following, NEXT_BODY)):
        data_file = out / f"{name}.jsonl"
        _write(data_file, "".join(json.dumps(doc) + "\n" for doc in documents))
        _write(out / f"{name}.yaml", _task_yaml(name, data_file.resolve(), body))
    return out


def write_data_corpus_tasks(data_dir: str | Path, tokenizer, items: int) -> Path:
    """The tasks of a prepared dataset, from its validation split, in <data_dir>/eval_tasks/<items>/."""
    return write_corpus_tasks(open_samples(data_dir, "validation"), tokenizer, items,
                              Path(data_dir) / "eval_tasks" / str(items))
