#!/usr/bin/env bash
# Launch the train stage with the `deepspeed` launcher on one node or many.
#   bash launch/train.sh --config tiny run.dir=runs/exp1                   # all local devices
#   NUM_GPUS=8 bash launch/train.sh --config tiny --resume auto             # 8 GPUs on this node
#   HOSTFILE=hosts MASTER_ADDR=node1 bash launch/train.sh --config ...     # every node in `hosts`
# A hostfile has one line per node: "node1 slots=8". Every node must see the same repo path, the same
# .venv and the same data/run dirs (a shared filesystem); `deepspeed` reaches them over passwordless ssh
# (pdsh) and forwards NCCL*/PYTHON* variables plus the lines of a .deepspeed_env file in this directory.
set -euo pipefail
cd "$(dirname "$0")/.."
args=(--master_port "${MASTER_PORT:-29500}")
[ -n "${HOSTFILE:-}" ] && args+=(--hostfile "$HOSTFILE" --master_addr "${MASTER_ADDR:?set MASTER_ADDR to the first node}")
[ -n "${NUM_NODES:-}" ] && args+=(--num_nodes "$NUM_NODES")
[ -n "${NUM_GPUS:-}" ] && args+=(--num_gpus "$NUM_GPUS")
exec .venv/bin/deepspeed "${args[@]}" --module pipeline.train "$@"
