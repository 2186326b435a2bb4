#!/usr/bin/env bash
# Create .venv and install the pipeline with its test and eval (lm-evaluation-harness) extras, at the versions in launch/constraints.txt
# (the ones the tests last passed with; bash launch/lock.sh rewrites it).
#   bash launch/setup.sh
# torch is installed first, pinned, because an unpinned torch resolves to a multi-GB CUDA build even
# on CPU machines. On a GPU cluster set TORCH_SPEC to the build you want, e.g. TORCH_SPEC="torch==2.13.0".
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
CONSTRAINTS=launch/constraints.txt
if [ -n "${TORCH_SPEC:-}" ]; then
  .venv/bin/python -m pip install -q $TORCH_SPEC
  # the torch build chosen above wins over the locked one
  CONSTRAINTS=$(mktemp) && trap 'rm -f "$CONSTRAINTS"' EXIT && grep -v "^torch==" launch/constraints.txt > "$CONSTRAINTS"
else
  .venv/bin/python -c "import torch" 2>/dev/null || .venv/bin/python -m pip install -q -c "$CONSTRAINTS" torch
fi
.venv/bin/python -m pip install -q -c "$CONSTRAINTS" -e ".[test,eval]"
.venv/bin/python -c "import torch, deepspeed, transformers; print(f'torch {torch.__version__}, deepspeed {deepspeed.__version__}, transformers {transformers.__version__}')"
