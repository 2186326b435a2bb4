#!/usr/bin/env bash
# The whole tiny pipeline on the embedded corpus (this Python's standard library), 2 CPU ranks:
#   prepare data -> pretrain a small donor (llama-nano) -> train the larger target (llama-micro) from scratch.
#   bash launch/quickstart.sh            (re-running continues/finishes the same runs)
# Outputs: tokenizers/stdlib-2k, data/stdlib-2k-128, runs/tiny/{donor,scratch}; watch with
#   .venv/bin/tensorboard --logdir runs/tiny
set -euo pipefail
cd "$(dirname "$0")/.."
bash launch/setup.sh
export DS_ACCELERATOR=${DS_ACCELERATOR:-cpu} OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
PORT=${MASTER_PORT:-29517}
NPROC=${NUM_GPUS:-2}
RUN="deepspeed --num_gpus $NPROC --master_port $PORT --module pipeline.train --config tiny --resume auto"
source .venv/bin/activate

python -m pipeline.prepare --config tiny
$RUN run.dir=runs/tiny/donor model.size=llama-nano train.steps=300
$RUN run.dir=runs/tiny/scratch model.size=llama-micro train.steps=300
python - <<'PY'
from pipeline.metrics import read_metrics
for name in ("donor", "scratch"):
    vals = [r["val/loss"] for r in read_metrics(f"runs/tiny/{name}") if "val/loss" in r]
    print(f"[quickstart] {name}: validation loss {vals[0]:.3f} -> {vals[-1]:.3f}  (runs/tiny/{name}/hf)")
PY
