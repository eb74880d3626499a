#!/usr/bin/env bash
# Install everything and run the whole test suite: lint, then pytest on the embedded
# default (SQLite + SQL broker), then the database/queue tests on PostgreSQL + Redis.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh dev
scripts/services.sh
export HF_HUB_OFFLINE=1 PYTHONDONTWRITEBYTECODE=1
mkdir -p test-output
echo "==> ruff"
.venv/bin/ruff check backend contracts workers tests benchmarks migrations
echo "==> mypy (web process, workers, contracts)"
.venv/bin/mypy
echo "==> pytest: SQLite + embedded broker"
.venv/bin/python -m pytest -q "$@"
echo "==> pytest: PostgreSQL + Redis + Celery"
MICROSCOPE_TEST_DATABASE_URL="${MICROSCOPE_TEST_DATABASE_URL:-postgresql+psycopg://postgres@127.0.0.1:5432/postgres}" \
MICROSCOPE_TEST_BROKER_URL="${MICROSCOPE_TEST_BROKER_URL:-redis://127.0.0.1:6379/15}" \
  .venv/bin/python -m pytest -q -m "(db or celery) and not once" "$@"
