#!/usr/bin/env bash
# Sets up (idempotent) and runs the whole test suite, slow end-to-end tests included. The quick loop while
# working: .venv/bin/python -m pytest -m "not slow" (on every core, see pyproject.toml).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# serially (-n 0): the end-to-end tests time kills and stub delays, and gain little from 2 cores shared
exec .venv/bin/python -m pytest -q -n 0 "$@"
