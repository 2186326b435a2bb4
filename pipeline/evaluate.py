"""Evaluate stage: downstream tasks (lm-evaluation-harness) on any Hugging Face model dir the pipeline
writes or reads: a donor, a grown model (<grow run>/hf), a trained one (<run>/hf, or an exported
checkpoint), a lottery ticket.

    python -m pipeline.evaluate --config tiny --model runs/tiny/grow/hf eval.tasks=corpus_choice,corpus_next
    # 2 ranks (or GPUs): every rank loads the model and scores its share of each batch (pipeline/downstream.py)
    deepspeed --num_gpus 2 --master_port 29513 --module pipeline.evaluate --config tiny --model runs/tiny/grow/hf \\
        eval.tasks=corpus_choice,corpus_next
    # standard tasks (datasets from the Hub): eval.tasks=hellaswag,arc_easy,piqa,lambada_openai eval.num_fewshot=0

Writes <out>/results.json (lm-eval's results) and <out>/results.md (its table); <out> defaults to
<model>/eval. The corpus tasks are built from the recipe's prepared data (data.output_dir).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from deepspeed.accelerator import get_accelerator
from transformers import AutoModelForCausalLM, AutoTokenizer

from pipeline.config import ConfigError, parse_stage_args
from pipeline.downstream import Downstream, model_max_length, scalars
from pipeline.engine import end_stage_process, init_distributed
from pipeline.preflight import all_ranks_agree

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def evaluate_flags(parser) -> None:
    parser.add_argument("--model", required=True, help="a Hugging Face model dir (config.json, weights, tokenizer)")
    parser.add_argument("--out", default=None, help="where results.json and results.md go (default: <model>/eval)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32", help="the weights' dtype (default float32)")


def main(argv: list[str] | None = None) -> None:
    config, args = parse_stage_args("Evaluate a model dir on downstream tasks (lm-evaluation-harness).", argv,
                                    evaluate_flags)
    model_dir = Path(args.model)
    try:
        if not config.eval.task_names():
            raise ConfigError("eval.tasks is empty: name the tasks, e.g. eval.tasks=corpus_choice,corpus_next")
        if not (model_dir / "config.json").is_file():
            raise ConfigError(f"--model {model_dir} has no config.json: give a Hugging Face model dir (a run's hf/)")
        rank, _ = init_distributed()
        device = get_accelerator().current_device_name()
        with all_ranks_agree("loading the model and indexing the tasks"):
            tokenizer = AutoTokenizer.from_pretrained(model_dir)
            model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=DTYPES[args.dtype]).to(device).eval()
            downstream = Downstream(config.eval, tokenizer, model_max_length(model.config, tokenizer),
                                    config.data.output_dir, config.train.seed)
        results = downstream.run(lambda input_ids: model(input_ids=input_ids).logits, device, stderr_resamples=1000)
    except ConfigError as err:
        sys.exit(f"evaluate error: {err}")
    if rank == 0:
        from lm_eval.utils import make_table
        out = Path(args.out) if args.out else model_dir / "eval"
        out.mkdir(parents=True, exist_ok=True)
        record = {"model": str(model_dir), "eval": config.to_dict()["eval"], "dtype": args.dtype,
                  "metrics": scalars(results), "results": results["results"], "n-shot": results.get("n-shot")}
        (out / "results.json").write_text(json.dumps(record, indent=2, default=str))
        table = make_table(results)
        (out / "results.md").write_text(table)
        print(table, flush=True)
        print(f"[evaluate] results in {out}", flush=True)
    end_stage_process()


if __name__ == "__main__":
    main()
