#!/usr/bin/env bash
# Rewrite launch/constraints.txt from .venv: the exact versions the tests last passed with, which
# launch/setup.sh installs (pyproject.toml keeps the compatible ranges for other environments).
#   bash launch/lock.sh     # after upgrading a package in .venv and running the tests
set -euo pipefail
cd "$(dirname "$0")/.."
frozen=$(.venv/bin/python -m pip freeze --exclude-editable | grep -v "^#")  # fails before anything is written
{
  echo "# Versions the test suite last passed with (bash launch/lock.sh writes this; launch/setup.sh reads it)."
  # the local build label (+cpu) is dropped: "torch==2.13.0" also admits the CUDA build of that version
  echo "$frozen" | sed -E 's/^(torch==[^+]*)\+.*/\1/'
} > launch/constraints.txt.tmp
mv launch/constraints.txt.tmp launch/constraints.txt
echo "wrote launch/constraints.txt ($(grep -vc '^#' launch/constraints.txt) packages)"
