#!/usr/bin/env bash
# The main job on the embedded default: install, assemble real photos, register the
# pretrained default model, start a worker, queue the precompute jobs and serve.
# Extra arguments go to `microscope up` (e.g. --no-serve, --port 8080).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh runtime
exec .venv/bin/microscope up "$@"
