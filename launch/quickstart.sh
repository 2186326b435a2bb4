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

python -m pipeline.prepare --config tiny
$LAUNCH --module pipeline.train --config tiny --resume auto run.dir=runs/tiny/donor model.size=llama-nano train.steps=300
$LAUNCH --module pipeline.grow --config tiny --resume auto run.dir=runs/tiny/grow grow.donor=runs/tiny/donor/hf
$LAUNCH --module pipeline.prune --config tiny --resume auto run.dir=runs/tiny/prune train.init_from=runs/tiny/grow/hf \
    prune.rewind_step=0 prune.sparsities=0.5 prune.controls=random_prune
$LAUNCH --module pipeline.train --config tiny --resume auto run.dir=runs/tiny/scratch
python - <<'PY'
import json
from pipeline.metrics import read_metrics
def val(run):
    return [(r["step"], r["val/loss"]) for r in read_metrics(f"runs/tiny/{run}") if "val/loss" in r]
grow = json.load(open("runs/tiny/grow/report.json"))
print(f"[quickstart] donor llama-nano: validation loss {val('donor')[0][1]:.3f} -> {val('donor')[-1][1]:.3f}")
plan = grow["plan"]
print(f"[quickstart] llama-micro at step 0: scratch {val('scratch')[0][1]:.3f}, grown ({plan['depth_init']}+"
      f"{plan['width_init']}) {grow['val_loss_heuristic_init']:.3f} (the donor: {grow['val_loss_donor']:.3f}), "
      f"LiGO after {grow['operator_steps']} operator steps {grow['val_loss_after_operator_training']:.3f}")
steps = val('scratch')[-1][0]
print(f"[quickstart] llama-micro after {steps} steps: scratch {val('scratch')[-1][1]:.3f}, "
      f"grown {val('prune/dense')[-1][1]:.3f}")
print(f"[quickstart] 50% of the grown model's block matrices pruned, rewound to the grown weights, trained "
      f"{steps} steps: lottery ticket {val('prune/round1-ticket')[-1][1]:.3f}, random pruning "
      f"{val('prune/round1-random_prune')[-1][1]:.3f}")
PY
