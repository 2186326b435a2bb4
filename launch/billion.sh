#!/usr/bin/env bash
# A billion-parameter target on one 2-core, 24 GB CPU machine (pipeline/recipes/billion-cpu.yaml):
#   prepare (64-token samples) -> pretrain a 135M-class donor a few steps (DONOR_STEPS, default 20) ->
#   grow it with LiGO into the TinyLlama-1.1B shape (2 operator steps, ZeRO-3 bf16) -> train the grown
#   model 2 steps (ZeRO-3 bf16, optimizer states offloaded to <run>/nvme on disk) -> print per-rank peak
#   memory, step times and disk use.
#   bash launch/billion.sh          (re-running continues/finishes the same runs; outputs in runs/billion/)
# Uses ~30 GB of disk (the 1.1B grown model in fp32, a bf16 checkpoint, the offloaded optimizer); the
# train stage's disk check asks for up to ~43 GB free (it counts a second checkpoint written beside the kept one).
set -euo pipefail
cd "$(dirname "$0")/.."
bash launch/setup.sh
if [ ! -e /usr/include/libaio.h ]; then  # DeepSpeed's async I/O op (the NVMe offload) builds against libaio
  if [ "$(id -u)" = 0 ]; then
    apt-get install -y -q libaio-dev >/dev/null || { apt-get update -q >/dev/null && apt-get install -y -q libaio-dev >/dev/null; }
  else
    echo "billion.sh: DeepSpeed's NVMe offload needs libaio's headers: sudo apt-get install libaio-dev" >&2
    exit 1
  fi
fi
export DS_ACCELERATOR=${DS_ACCELERATOR:-cpu} OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
LAUNCH="deepspeed --num_gpus ${NUM_GPUS:-2} --master_port ${MASTER_PORT:-29519}"
DONOR_STEPS=${DONOR_STEPS:-20}
source .venv/bin/activate

python -m pipeline.prepare --config billion-cpu
$LAUNCH --module pipeline.train --config billion-cpu --resume auto run.dir=runs/billion/donor model.size=llama-135m \
    model.activation_checkpointing=false train.deepspeed_config=zero2_bf16 train.micro_batch_size=4 \
    train.steps="$DONOR_STEPS" train.lr=1e-3 train.eval_interval="$DONOR_STEPS" train.checkpoint_interval="$DONOR_STEPS"
$LAUNCH --module pipeline.grow --config billion-cpu --resume auto run.dir=runs/billion/grow \
    grow.donor=runs/billion/donor/hf train.deepspeed_config=zero3_bf16
$LAUNCH --module pipeline.train --config billion-cpu --resume auto run.dir=runs/billion/train \
    train.init_from=runs/billion/grow/hf model.size=null
python - <<'PY'
import json, subprocess
from pipeline.metrics import read_metrics
for run in ("donor", "grow", "train"):
    records = read_metrics(f"runs/billion/{run}")
    peak = max(r.get("perf/peak_memory_gb", 0) for r in records)
    seconds = [r["perf/train_seconds"] for r in records]  # cumulative: each step's time is a difference
    steps = [round(b - a, 1) for a, b in zip(seconds, seconds[1:])]
    val = [round(r["val/loss"], 3) for r in records if "val/loss" in r]
    print(f"[billion] {run}: peak memory per rank {peak:.2f} GB, step times {steps} s, val loss {val}")
du = subprocess.run(["du", "-sh", "runs/billion/grow/hf", "runs/billion/train/checkpoints", "runs/billion/train/nvme"],
                    capture_output=True, text=True).stdout
print("[billion] disk:", " | ".join(" ".join(line.split()[::-1]) for line in du.splitlines()))
PY
