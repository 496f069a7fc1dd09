#!/usr/bin/env bash
# Creates .venv (if missing) and installs segtune with every dependency pinned by constraints.txt.
# Safe to run again: an up-to-date environment installs nothing new.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "segtune setup: creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.segtune-installed
want="$(cat constraints.txt pyproject.toml | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "segtune setup: installing torch, torchvision and the rest (pinned in constraints.txt); this takes a few minutes"
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[dev]" 2>&1 \
    | grep -v "^WARNING: Location" || true
  .venv/bin/python -c "import torch, torchvision, segtune" \
    || { echo "segtune setup: install failed" >&2; exit 1; }
  echo "$want" > "$stamp"
fi
