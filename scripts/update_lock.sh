#!/usr/bin/env bash
# Move constraints.txt forward: install the newest versions pyproject.toml allows into a fresh venv, run the suite
# there (ARCHSMITH_UNLOCKED=1: the environment is not the lock yet), and only if it passes write the new lock.
# Usage: scripts/update_lock.sh [VENV_DIR]   (torch stays at the lock's pin unless you edit it first)
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${1:-$(mktemp -d)/venv}"
torch_pin="$(grep -E '^torch==' constraints.txt)"
python3 -m venv "$venv"
"$venv/bin/pip" install -q "$torch_pin" ".[dev]"
ARCHSMITH_UNLOCKED=1 "$venv/bin/pytest"
{
  grep -E '^#' constraints.txt
  "$venv/bin/pip" freeze --exclude-editable | grep -v -i -E '^(archsmith|pip|setuptools|wheel)(==| @)' |
    sed -E 's/^(torch==[^+]+)\+.*/\1/'
} > constraints.txt.new
mv constraints.txt.new constraints.txt
git --no-pager diff --stat constraints.txt
echo "constraints.txt updated from $venv; re-run the slow benchmarks whose tables name versions (docs/dependencies.md)"
