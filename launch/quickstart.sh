#!/usr/bin/env bash
# The whole tiny pipeline on the embedded corpus (this Python's standard library), 2 CPU ranks:
#   prepare data -> pretrain a small donor (llama-nano) -> grow it with LiGO into llama-micro ->
#   continue pretraining the grown model, and, for comparison, train llama-micro from scratch.
#   bash launch/quickstart.sh            (re-running continues/finishes the same runs)
# Outputs: tokenizers/stdlib-2k, data/stdlib-2k-128, runs/tiny/{donor,grow,grown,scratch}; watch with
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
$LAUNCH --module pipeline.train --config tiny --resume auto run.dir=runs/tiny/grown train.init_from=runs/tiny/grow/hf
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
      f"grown {val('grown')[-1][1]:.3f}")
PY
