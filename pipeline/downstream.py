"""Downstream evaluation through EleutherAI's lm-evaluation-harness (`lm-eval`, the `eval` extra), over
any function from token ids to logits: the training engine's own forward in the train, grow and prune
stages (eval.interval), a plain Hugging Face model in `python -m pipeline.evaluate`.

lm-eval builds the requests (prompts, few-shot examples) and the metrics; `ForwardLM` scores them. The
work is split over ranks inside ForwardLM, not by lm-eval: lm-eval sees one process and hands every
rank the same requests; each rank scores every world_size-th request of each global batch, every rank
runs the same number of forwards (a rank left without requests in the last batch scores a dummy one:
under ZeRO-3 a forward gathers parameters from all ranks, so no rank may forward alone), and the scores
are all-gathered, so every rank returns the same full list and computes the same metrics. Scoring
follows lm-eval's Hugging Face backend (HFLM): the same tokenization of context and continuation, left
truncation to max_length, right padding, no attention mask (causal: padding on the right changes
nothing before it); tests/test_downstream.py checks the two agree.
"""

from __future__ import annotations

import logging
import math
import random
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from pipeline.config import EvalConfig
from pipeline.data.eval_tasks import CORPUS_TASKS, write_data_corpus_tasks
from pipeline.errors import ConfigError

Forward = Callable[[torch.Tensor], torch.Tensor]  # (batch, length) token ids -> (batch, length, vocab) logits


def require_lm_eval():
    try:
        import lm_eval
    except ImportError as err:
        raise ConfigError("downstream evaluation (eval.tasks) needs lm-evaluation-harness: pip install -e '.[eval]' "
                          "(launch/setup.sh installs it)") from err
    logging.getLogger("lm_eval").setLevel(logging.ERROR)  # per-task INFO lines drown the training log
    return lm_eval


def forward_lm_class():
    """ForwardLM as a subclass of lm-eval's TemplateLM (lm_eval is imported only when evaluation runs)."""
    from lm_eval.api.model import TemplateLM
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

    class ForwardLM(TemplateLM):
        def __init__(self, forward: Forward, tokenizer, max_length: int, batch_size: int, device):
            super().__init__()
            self.forward, self.tokenizer, self.scoring_device = forward, tokenizer, device
            self._max_length, self._batch_size = max_length, batch_size

        @property
        def eot_token_id(self) -> int:
            return self.tokenizer.eos_token_id

        @property
        def prefix_token_id(self) -> int:
            bos = self.tokenizer.bos_token_id
            return bos if bos is not None else self.tokenizer.eos_token_id

        @property
        def max_length(self) -> int:
            return self._max_length

        def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
            # HFLM without add_bos_token: the tokenizer's own default, unless the text starts with BOS
            options = {} if add_special_tokens is None else {"add_special_tokens": add_special_tokens}
            bos = self.tokenizer.decode(self.prefix_token_id)
            if add_special_tokens is None and bos and string.startswith(bos):
                options["add_special_tokens"] = False
            return self.tokenizer.encode(string, **options)

        def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
            inputs = [(context + continuation)[-(self.max_length + 1):][:-1] for _, context, continuation in requests]
            return score_split_over_ranks(self.forward, inputs, [c for _, _, c in requests], self._batch_size,
                                          self.scoring_device)

        def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
            windows, owner = [], []
            for index, (text,) in enumerate(req.args for req in requests):
                for window in get_rolling_token_windows(self.tok_encode(text), self.prefix_token_id,
                                                        self.max_length, 1):
                    windows.append((None, *make_disjoint_window(window)))
                    owner.append(index)
            totals = [0.0] * len(requests)
            for index, (logprob, _) in zip(owner, self._loglikelihood_tokens(windows)):
                totals[index] += logprob
            return totals

        def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
            raise ConfigError("generation tasks (output_type generate_until) are not evaluated by the pipeline; the "
                              "exported model dir is a plain HF checkpoint: run lm-eval's own CLI on it, "
                              "lm_eval --model hf --model_args pretrained=<run>/hf --tasks <task>")

    return ForwardLM


def score_split_over_ranks(forward: Forward, inputs: list[list[int]], continuations: list[list[int]],
                           batch_size: int, device) -> list[tuple[float, bool]]:
    """(sum of the continuation's log-probabilities, whether it is the greedy continuation) per request.
    Collective when a process group is up: every rank passes the same requests and gets all scores."""
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    order = sorted(range(len(inputs)), key=lambda i: (-len(inputs[i]), i))  # long first: fewer padded tokens
    mine: dict[int, tuple[float, bool]] = {}
    per_forward = batch_size * world
    for start in range(0, len(order), per_forward):
        batch = order[start:start + per_forward][rank::world]
        scores = _score_batch(forward, [inputs[i] for i in batch] or [[0]], [continuations[i] for i in batch] or [[0]],
                              device)
        mine.update(zip(batch, scores))
    gathered = [mine]
    if world > 1:
        gathered = [None] * world
        dist.all_gather_object(gathered, mine)
    scores = {i: s for part in gathered for i, s in part.items()}
    return [scores[i] for i in range(len(inputs))]


@torch.no_grad()
def _score_batch(forward: Forward, inputs: list[list[int]], continuations: list[list[int]], device):
    width = max(len(x) for x in inputs)
    ids = torch.zeros(len(inputs), width, dtype=torch.long)
    for row, x in enumerate(inputs):
        ids[row, :len(x)] = torch.tensor(x)
    logits = forward(ids.to(device))
    scores = []
    for row, (x, continuation) in enumerate(zip(inputs, continuations)):
        # only the positions that predict the continuation, in fp32 (not the whole batch's logits: GBs at 49k vocab)
        picked = F.log_softmax(logits[row, len(x) - len(continuation):len(x)].float(), dim=-1).cpu()
        target = torch.tensor(continuation)
        scores.append((float(picked.gather(1, target[:, None]).sum()), bool((picked.argmax(-1) == target).all())))
    return scores


def model_max_length(model_config, tokenizer) -> int:
    """The context lm-eval's HF backend gives this model (its config's positions, else the tokenizer's)."""
    require_lm_eval()
    from lm_eval.models.utils import resolve_max_length
    return resolve_max_length(model_config, tokenizer)


class Downstream:
    """The configured tasks (eval section), indexed once; `run(forward)` evaluates a model on them. Unknown
    task names are refused here, before any training."""

    def __init__(self, config: EvalConfig, tokenizer, max_length: int, data_dir: str | None = None, seed: int = 0):
        """`data_dir`: the prepared data the corpus tasks are made from (None: only eval.include_path's)."""
        lm_eval = require_lm_eval()
        from lm_eval.tasks import TaskManager
        self.config, self.tokenizer, self.max_length, self.seed = config, tokenizer, max_length, seed
        self.tasks = config.task_names()
        include = [config.include_path] if config.include_path else []
        if data_dir is not None and any(name in CORPUS_TASKS for name in self.tasks):  # every rank writes its own copy, atomically
            include.append(str(write_data_corpus_tasks(data_dir, tokenizer, config.corpus_items)))
        # lm-eval's own index (thousands of task YAMLs) takes seconds to build: only when a task needs it
        self.manager = TaskManager(include_path=include or None, include_defaults=False)
        if any(name not in self.manager.all_tasks for name in self.tasks):
            self.manager = TaskManager(include_path=include or None)
        unknown = [name for name in self.tasks if name not in self.manager.all_tasks]
        if unknown:
            raise ConfigError(f"eval.tasks: unknown lm-eval task(s) {unknown}: give names from `lm_eval ls tasks`, the "
                              f"corpus tasks {', '.join(CORPUS_TASKS)}, or YAMLs of your own in eval.include_path")
        self.simple_evaluate = lm_eval.simple_evaluate

    def run(self, forward: Forward, device, stderr_resamples: int = 0) -> dict | None:
        """lm-eval's results dict (collective under a process group: every rank calls it, every rank scores
        its share; lm-eval assembles the results on each node's first rank only, elsewhere None). The RNGs are left
        as they were (lm-eval seeds them): evaluating never changes what training draws next.
        `stderr_resamples`: bootstrap resamples for the standard errors of metrics without a closed form
        (0: no standard errors, as in the training loop)."""
        c = self.config
        model = forward_lm_class()(forward, self.tokenizer, self.max_length, c.batch_size, device)
        python_state, numpy_state = random.getstate(), np.random.get_state()
        device = torch.device(device)
        on_accelerator = device.type != "cpu"  # lm-eval's torch.manual_seed reseeds the device's generator too
        with torch.random.fork_rng(devices=[device] if on_accelerator else [],
                                   device_type=device.type if on_accelerator else "cuda"):
            results = self.simple_evaluate(model=model, tasks=self.tasks, num_fewshot=c.num_fewshot, limit=c.limit,
                                           task_manager=self.manager, bootstrap_iters=stderr_resamples, random_seed=self.seed,
                                           numpy_random_seed=self.seed, torch_random_seed=self.seed,
                                           fewshot_random_seed=self.seed, log_samples=False)
        random.setstate(python_state)
        np.random.set_state(numpy_state)
        return results


def scalars(results: dict | None, of: str = "") -> dict[str, float]:
    """`eval/<task>/<of><metric>` for every numeric metric (lm-eval's "acc,none" -> "acc"; another filter
    than "none" keeps its name: "acc_<filter>"); standard errors are left out. None (no results on this
    rank) gives none."""
    out = {}
    if results is None:
        return out
    for task, metrics in results["results"].items():
        for key, value in metrics.items():
            metric, _, filter_name = key.partition(",")
            if not filter_name or "_stderr" in metric or not isinstance(value, (int, float)) or isinstance(value, bool):
                continue
            name = metric if filter_name == "none" else f"{metric}_{filter_name}"
            if math.isfinite(value):
                out[f"eval/{task}/{of}{name}"] = float(value)
    return out
