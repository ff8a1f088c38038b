#!/usr/bin/env bash
# The main job on embedded real data: set up, then `dp4tl demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/dp4tl demo "$@"
