#!/usr/bin/env bash
# Set up curate on a fresh machine: a virtual environment in .venv with the package and its
# test tools, then the demo pipeline on the bundled seeds.
#   EXTRAS=dev,models ./install.sh   to add the model-backed stages (torch, sentence-transformers)
#   SKIP_DEMO=1 ./install.sh         to install only
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
EXTRAS=${EXTRAS:-dev}

"$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e ".[${EXTRAS}]"

if [ -z "${SKIP_DEMO:-}" ]; then
    export HF_HUB_OFFLINE=1
    .venv/bin/curate run jobs/configs/demo.yaml --progress lines
    .venv/bin/curate sql "SELECT origin, count(*) AS n FROM curated GROUP BY 1" --db curated.duckdb
fi
