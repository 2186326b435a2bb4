#!/usr/bin/env bash
# The first numbers from a GPU machine, with no network, in under ~10 minutes on one GPU:
#   1. the tiny pipeline on the GPU: prepare -> donor (llama-nano) -> LiGO grow -> train the grown llama-micro (run second)
#   2. a 360M-class growth: a llama-135m donor (SmolLM-135M's shape; its weights from 1 training step:
#      this measures the path and its speed, not quality) grown with LiGO into llama-360m (SmolLM-360M's:
#      32 x 960, 15/5 heads) for 10 operator steps, then 30 training steps of 8 x 2048 tokens per GPU,
#      both under ZeRO-3 bf16 (NCCL), and 20 of those training steps under ZeRO-2 bf16 to compare
#   and prints, per stage, tokens/s, MFU (against the GPU's datasheet bf16 peak) and peak memory per rank.
#   bash launch/gpu_check.sh                 (NUM_GPUS=1 by default; outputs in runs/gpu-check/)
#   The two parts run independently, the 360M one first (a failure in one still measures the other); it exits
#   non-zero naming the parts that failed, after the summary of what did run.
#   WHEELS=dir bash launch/gpu_check.sh      (offline: first installs every wheel in dir, without dependencies,
#                                             into runs/gpu-check-site; make them elsewhere: docs/launching.md)
# Uses the python of .venv when there is one, else python3 (with torch and transformers installed).
set -uo pipefail  # not -e here: each part sets it in its own subshell (below)
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] && PY=.venv/bin/python
if [ -n "${WHEELS:-}" ]; then
  # --no-deps into a folder of its own: the machine's packages stay as they are, and pip does not try to
  # resolve (offline) a newer version of something already there
  "$PY" -m pip install -q --no-index --no-deps --no-compile --upgrade --target runs/gpu-check-site "$WHEELS"/*.whl || exit 1
  export PYTHONPATH=$PWD/runs/gpu-check-site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} HF_HUB_OFFLINE=1
LAUNCH="$PY -m deepspeed.launcher.runner --num_gpus ${NUM_GPUS:-1} --master_port ${MASTER_PORT:-29521}"
RUNS=runs/gpu-check
BF16=train.deepspeed_config=zero3_bf16

tiny_pipeline() {
  set -e
  "$PY" -m pipeline.prepare --config tiny
  $LAUNCH --module pipeline.train --config tiny --resume auto run.dir=$RUNS/tiny-donor model.size=llama-nano \
      train.steps=300 $BF16
  $LAUNCH --module pipeline.grow --config tiny --resume auto run.dir=$RUNS/tiny-grow grow.donor=$RUNS/tiny-donor/hf $BF16
  $LAUNCH --module pipeline.train --config tiny --resume auto run.dir=$RUNS/tiny-grown train.init_from=$RUNS/tiny-grow/hf \
      model.size=null $BF16
}

# 360M-class, 2048-token samples (the billion-gpu recipe's data)
grow_360m() {
  set -e
  "$PY" -m pipeline.prepare --config billion-gpu
  local BATCH="train.micro_batch_size=8 train.grad_accum_steps=1"
  $LAUNCH --module pipeline.train --config billion-gpu --resume auto run.dir=$RUNS/donor-135m model.size=llama-135m \
      $BF16 $BATCH train.steps=1 train.warmup_steps=0 train.eval_interval=1 train.checkpoint_interval=1
  $LAUNCH --module pipeline.grow --config billion-gpu --resume auto run.dir=$RUNS/grow-360m grow.donor=$RUNS/donor-135m/hf \
      model.size=llama-360m $BF16 $BATCH grow.steps=10
  $LAUNCH --module pipeline.train --config billion-gpu --resume auto run.dir=$RUNS/train-360m \
      train.init_from=$RUNS/grow-360m/hf model.size=null $BF16 $BATCH train.steps=30 train.warmup_steps=5 train.eval_interval=30 \
      train.checkpoint_interval=30 train.profile_step=21  # steps 21-23 profiled: the step-10 and -20 windows stay clean
  # the same model under ZeRO-2 (it fits one GPU whole): what ZeRO-3's per-module gathers cost there
  $LAUNCH --module pipeline.train --config billion-gpu --resume auto run.dir=$RUNS/train-360m-zero2 \
      train.init_from=$RUNS/grow-360m/hf model.size=null train.deepspeed_config=zero2_bf16 $BATCH train.steps=20 \
      train.warmup_steps=5 train.eval_interval=20 train.checkpoint_interval=20
}

"$PY" -c "import torch, deepspeed, transformers; print('[gpu-check]', torch.cuda.get_device_name(), 'torch',
    torch.__version__, 'deepspeed', deepspeed.__version__, 'transformers', transformers.__version__)" || exit 1
failed=""
for part in grow_360m tiny_pipeline; do  # the 360M numbers first: they matter most
  started=$SECONDS
  # a subshell run as a plain command, so that the `set -e` inside it takes effect (in `( ) || ...` it would not)
  ( "$part" )
  status=$?
  echo "[gpu-check] $part: exit status $status after $((SECONDS - started)) s"
  [ "$status" -eq 0 ] || failed="$failed $part"
done

"$PY" - <<'PY'
import os

from pipeline.metrics import read_metrics

for run in ("tiny-donor", "tiny-grow", "tiny-grown", "donor-135m", "grow-360m", "train-360m", "train-360m-zero2"):
    if not os.path.exists(f"runs/gpu-check/{run}/metrics.jsonl"):
        print(f"[gpu-check] {run}: no metrics (the stage did not run or failed before its first step)")
        continue
    records = read_metrics(f"runs/gpu-check/{run}")
    perf = [r for r in records if "perf/tokens_per_s" in r]
    val = [round(r["val/loss"], 3) for r in records if "val/loss" in r]
    peak = max((r.get("perf/peak_memory_gb", 0) for r in records), default=0)
    speed = (f"{perf[-1]['perf/tokens_per_s']:.0f} tokens/s, MFU {perf[-1]['perf/mfu']:.1%}" if perf
             else "too few steps for throughput")
    print(f"[gpu-check] {run}: {speed}, peak memory per rank {peak:.2f} GB, validation loss {val}")
PY
TOP=$RUNS/train-360m/profile/rank0.top.txt  # where a ZeRO-3 step's time goes (the whole trace beside it)
[ -f $TOP ] && { echo "[gpu-check] train-360m, steps 21-23, ops by own time on the GPU ($TOP):"; head -n 24 $TOP; }
[ -z "$failed" ] || { echo "[gpu-check] failed:$failed"; exit 1; }
