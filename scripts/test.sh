#!/usr/bin/env bash
# Run every check: lint, format, types, then the tests. `--slow` runs the slow tests too.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
paths=$(ls -d dp4tl_data plugins tests benchmarks examples 2>/dev/null || true)
ruff check $paths
ruff format --check $paths
mypy dp4tl_data plugins
if [ "${1:-}" = "--slow" ]; then
    shift
    exec python -m pytest -q -m "slow or not slow" "$@"
fi
exec python -m pytest -q "$@"
