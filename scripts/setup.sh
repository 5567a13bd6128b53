#!/usr/bin/env bash
# One command: create the virtual environment, install opsmedic with its test tools, and run the demo.
# Usage: ./scripts/setup.sh            (set OPSMEDIC_SKIP_DEMO=1 to skip the demo)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
"$PY" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "opsmedic needs Python 3.11 or newer")'
# opsmedic gets its own environment: another distribution shipping a top-level `agents` package would clash.
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q -U pip
.venv/bin/python -m pip install -q -e '.[dev]'
export DO_NOT_TRACK=true
if [ "${OPSMEDIC_SKIP_DEMO:-0}" != "1" ]; then
  .venv/bin/opsmedic demo
fi
