#!/usr/bin/env bash
# The test command: lint (ruff), types (mypy, strict), layer contracts (import-linter), then pytest.
# Integration tests start real servers when they are installed (see .ci/run) and skip with a reason otherwise.
set -uo pipefail
cd "$(dirname "$0")/.."
export DO_NOT_TRACK=true MLFLOW_ENABLE_TELEMETRY=false HF_HUB_OFFLINE=1
V=.venv/bin
status=0
echo "== ruff"; $V/ruff check . || status=1
echo "== mypy"; $V/mypy -p core -p infra -p agents -p tools -p policies -p knowledge -p sandbox -p opsmedic || status=1
echo "== import-linter"; $V/lint-imports --no-cache || status=1
echo "== pytest"
$V/python -m pytest -q -p no:cacheprovider "$@"
rc=$?
# pytest exits 5 when it collected no test: that is not a pass, say so plainly.
if [ $rc -eq 5 ]; then echo "pytest collected no tests"; rc=1; fi
[ $rc -ne 0 ] && status=$rc
exit $status
