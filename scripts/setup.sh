#!/usr/bin/env bash
# Set up everything the demo and the tests need: a venv in .venv with dp4tl-data[dev].
# Idempotent: reinstalls only when pyproject.toml changed. Safe to run as root with no stdin.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
stamp=".venv/.dp4tl-setup-$(sha256sum pyproject.toml | cut -c1-16)"
if [ ! -f "$stamp" ]; then
    .venv/bin/python -m pip install -q --upgrade pip
    # torch/torchvision come from this machine's local wheels (capped at 2.14.1 / 0.29.1)
    .venv/bin/python -m pip install -q -e ".[dev]"
    rm -f .venv/.dp4tl-setup-*
    touch "$stamp"
fi
