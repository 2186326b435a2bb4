#!/usr/bin/env bash
# The whole tiny pipeline on the embedded corpus (this Python's standard library), 2 CPU ranks:
#   prepare data -> pretrain a small donor (llama-nano) -> grow it with LiGO into llama-micro ->
#   continue pretraining the grown model inside the prune stage (its dense round), which then finds a
#   50%-sparse lottery ticket of it (rewound to the grown weights) beside a random-pruning control ->
#   and, for comparison, train llama-micro from scratch.
#   bash launch/quickstart.sh            (re-running continues/finishes the same runs)
# Outputs: tokenizers/stdlib-2k, data/stdlib-2k-128, runs/tiny/{donor,grow,prune,scratch}; watch with
#   .venv/bin/tensorboard --logdir runs/tiny
set -euo pipefail
cd "$(dirname "$0")/.."
bash launch/setup.sh
export DS_ACCELERATOR=${DS_ACCELERATOR:-cpu} OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
LAUNCH="deepspeed --num_gpus ${NUM_GPUS:-2} --master_port ${MASTER_PORT:-29517}"
source .venv/bin/activate

# downstream tasks made from the validation split, evaluated at each run's start and end (pipeline/downstream.py)
EVAL="eval.tasks=corpus_choice,corpus_next eval.interval=100000"
python -m pipeline.prepare --config tiny
$LAUNCH --module pipeline.train --config tiny --resume auto run.dir=runs/tiny/donor model.size=llama-nano train.steps=300 $EVAL
$LAUNCH --module pipeline.grow --config tiny --resume auto run.dir=runs/tiny/grow grow.donor=runs/tiny/donor/hf $EVAL
$LAUNCH --module pipeline.prune --config tiny --resume auto run.dir=runs/tiny/prune train.init_from=runs/tiny/grow/hf \
    prune.rewind_step=0 prune.sparsities=0.5 prune.controls=random_prune $EVAL
$LAUNCH --module pipeline.train --config tiny --resume auto run.dir=runs/tiny/scratch $EVAL
python - <<'PY'
import json
from pipeline.metrics import read_metrics
def last(run, prefix):
    """The run's last record with scalars under prefix: {name: value}."""
    records = [r for r in read_metrics(f"runs/tiny/{run}") if any(k.startswith(prefix) for k in r)] or [{"step": 0}]
    return records[-1]["step"], {k: v for k, v in records[-1].items() if k.startswith(prefix)}
grow = json.load(open("runs/tiny/grow/report.json"))
plan, tasks = grow["plan"], grow.get("downstream", {})  # none in a grow run made before the eval section
steps = last("scratch", "val/")[0]
def row(name, loss, scores):
    acc = [f"{scores[k]:.2f}" if k in scores else "-" for k in ("corpus_choice/acc", "corpus_next/acc")]
    print(f"| {name:<52} | {loss:>8.3f} | {acc[0]:>17} | {acc[1]:>15} |")
def trained(run):
    return last(run, "val/loss")[1]["val/loss"], {k[5:]: v for k, v in last(run, "eval/")[1].items()}
print(f"[quickstart] validation loss and the corpus tasks' accuracy (100 documents each; chance: 0.25 and ~0)")
print(f"| {'model':<52} | val loss | corpus_choice acc | corpus_next acc |")
print(f"|{'-' * 54}|----------|-------------------|-----------------|")
row(f"donor llama-nano, {last('donor', 'val/')[0]} steps", grow["val_loss_donor"], tasks.get("donor", {}))
row(f"llama-micro grown ({plan['depth_init']}+{plan['width_init']}), step 0", grow["val_loss_heuristic_init"],
    tasks.get("heuristic_init", {}))
row(f"llama-micro grown, after {grow['operator_steps']} LiGO operator steps", grow["val_loss_after_operator_training"],
    tasks.get("after_operator_training", {}))
row(f"llama-micro grown, then trained {steps} steps", *trained("prune/dense"))
row(f"  its lottery ticket (50%, rewound, {steps} steps)", *trained("prune/round1-ticket"))
row(f"  random pruning control (50%, {steps} steps)", *trained("prune/round1-random_prune"))
row(f"llama-micro from scratch, {steps} steps", *trained("scratch"))
PY
