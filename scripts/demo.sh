#!/usr/bin/env bash
# The main job on embedded real data: set up, then `dp4tl demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# Fashion-MNIST ships as a Debian package; the demo's source uses it when present (best effort).
if [ ! -d /usr/share/datasets/fashion-mnist ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    (apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 \
        || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1; }) \
        || echo "note: dataset-fashion-mnist not installed; the demo runs without it" >&2
fi
exec .venv/bin/dp4tl demo "$@"
