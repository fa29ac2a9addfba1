#!/usr/bin/env bash
# Runs bench/generation.py on a GPU machine that has CUDA PyTorch but no vLLM and no package
# registry, from the parts bundle.py wrote. From the repository root there:
#   bash bench/offline_gpu/run.sh stage .gpu1/part1    # one call per part: keep each outside the checkout
#   bash bench/offline_gpu/run.sh stage .gpu1/alpaca_ifd_5pct.json   # the prompts' source, staged the same way
#   bash bench/offline_gpu/run.sh bench --shape llama-3.2-1b --prompts 2000 --max-tokens 256
# `bench` unpacks the staged parts once, makes the checkout importable as `curate` without
# installing it, and passes its arguments to bench/generation.py, whose bare-vLLM log goes to
# $OUT/vllm.log (or /tmp/vllm.log). The prompts come from the staged alpaca_ifd_5pct.json unless
# CURATE_SHARED_DATA names another folder holding it.
set -u
PARTS=/tmp/curate-parts SITE=/tmp/gpusite SHIM=/tmp/curate-shim
case "${1:-}" in
stage)
    mkdir -p $PARTS && cp "$2" $PARTS/ && ls -l $PARTS ;;
bench)
    shift
    t0=$(date +%s)
    if [ ! -d $SITE ]; then
        ls $PARTS/part* | sort -V | xargs cat | python3 -c "import sys, tarfile; tarfile.open(fileobj=sys.stdin.buffer, mode='r|xz').extractall('/tmp')" || exit 3
        # transformers on the image may refuse the carried mistral_common; vLLM only imports the name
        sed -i 's/^from transformers import MistralCommonBackend$/try:\n    from transformers import MistralCommonBackend\nexcept ImportError:\n    MistralCommonBackend = type("MistralCommonBackend", (), {})/' \
            $SITE/vllm/v1/structured_output/backend_guidance.py
    fi
    rm -rf $SHIM && mkdir -p $SHIM && cp -r curate $SHIM/
    for d in pipeline stages selectors generators storage; do ln -s "$PWD/$d" $SHIM/curate/$d; done
    echo "unpacked in $(( $(date +%s) - t0 )) s"
    # FlashInfer is not carried: vLLM's sampler would import it unless told not to.
    export CURATE_SHARED_DATA=${CURATE_SHARED_DATA:-$PARTS}
    export PYTHONPATH=$SHIM:$SITE HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false VLLM_USE_FLASHINFER_SAMPLER=0
    python3 -c "import torch, vllm, ray, duckdb, curate.pipeline.runner; print('torch', torch.__version__, 'vllm', vllm.__version__, 'ray', ray.__version__, torch.cuda.get_device_name())" || exit 4
    python3 bench/generation.py --log "${OUT:-/tmp}/vllm.log" "$@" ;;
*)
    sed -n 2,10p "$0"; exit 2 ;;
esac
