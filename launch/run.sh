#!/usr/bin/env bash
# Launch any stage (train, grow, prune, ...: the module pipeline.<stage>) with the `deepspeed` launcher,
# on this node, on many nodes over ssh, or as one command per node without ssh.
#   bash launch/run.sh train --config tiny run.dir=runs/exp1                   # all local devices
#   NUM_GPUS=8 bash launch/run.sh grow --config billion-gpu grow.donor=... --resume auto
#   HOSTFILE=hosts MASTER_ADDR=node1 bash launch/run.sh train --config billion-gpu   # from node1, pdsh/ssh to all
#   HOSTFILE=hosts MASTER_ADDR=node1 NODE_RANK=1 bash launch/run.sh train ...      # on each node, no ssh
#   DRY_RUN=1 bash launch/run.sh ...                       # print what would be written and run, run nothing
# A hostfile has one line per node ("node1 slots=8"); every node sees the same repo path, .venv, data
# and run dirs (a shared filesystem). Over ssh the launcher forwards NCCL*/PYTHON* variables and the
# lines of ./.deepspeed_env, where this script writes the variables named in FORWARD_ENV (merged into
# an existing file: other lines are kept). Without ssh (NODE_RANK set: Slurm's srun, launch/slurm.sbatch)
# each node's own environment is used. Set MASTER_PORT (default 29500) to a port no other job uses.
set -euo pipefail
cd "$(dirname "$0")/.."
stage=${1:?usage: launch/run.sh <stage: train|grow|...> [--config RECIPE] [overrides...]}
shift
[ -f "pipeline/$stage.py" ] || { echo "launch/run.sh: no stage '$stage' (pipeline/$stage.py)" >&2; exit 2; }
DEEPSPEED=${DEEPSPEED:-.venv/bin/deepspeed}
FORWARD_ENV=${FORWARD_ENV:-DS_ACCELERATOR OMP_NUM_THREADS HF_HOME HF_HUB_OFFLINE TOKENIZERS_PARALLELISM CUDA_DEVICE_MAX_CONNECTIONS}

args=(--master_port "${MASTER_PORT:-29500}")
if [ -n "${HOSTFILE:-}" ]; then
  [ -f "$HOSTFILE" ] || { echo "launch/run.sh: HOSTFILE=$HOSTFILE does not exist" >&2; exit 2; }
  : "${MASTER_ADDR:?set MASTER_ADDR to the address of the first node in HOSTFILE}"
  args+=(--hostfile "$HOSTFILE" --master_addr "$MASTER_ADDR")
  if [ -n "${NODE_RANK:-}" ]; then
    args+=(--no_ssh --node_rank "$NODE_RANK")
  else  # over ssh: remote shells start without this one's variables
    env_lines=$(for name in $FORWARD_ENV; do [ -n "${!name:-}" ] && echo "$name=${!name}"; done || true)
    if [ -n "$env_lines" ]; then
      kept=$([ -f .deepspeed_env ] && grep -v -E "^($(echo $FORWARD_ENV | tr ' ' '|'))=" .deepspeed_env || true)
      merged=$(printf '%s\n%s\n' "$kept" "$env_lines" | sed '/^$/d')
      if [ -n "${DRY_RUN:-}" ]; then
        printf '# .deepspeed_env\n%s\n' "$merged"
      else
        printf '%s\n' "$merged" > .deepspeed_env
      fi
    fi
  fi
elif [ -n "${NODE_RANK:-}" ]; then
  echo "launch/run.sh: NODE_RANK needs HOSTFILE (every node's name and slots) and MASTER_ADDR" >&2; exit 2
fi
[ -n "${NUM_NODES:-}" ] && args+=(--num_nodes "$NUM_NODES")
[ -n "${NUM_GPUS:-}" ] && args+=(--num_gpus "$NUM_GPUS")
cmd=("$DEEPSPEED" "${args[@]}" --module "pipeline.$stage" "$@")
if [ -n "${DRY_RUN:-}" ]; then
  printf '%q ' "${cmd[@]}"; echo
else
  exec "${cmd[@]}"
fi
