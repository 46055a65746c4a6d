#!/usr/bin/env bash
# Issue 22's GPU checks, in one go on a lent CUDA machine (the device tool's `run`; ~6 min on an H200).
# Prepare here first (network to the registry): `make gpu-wheels` (the wheels the GPU image lacks and
# SmolLM2's config + tokenizer, in .whl/ and .gpu/), then run with carry [".whl", ".gpu"]:
#     bash bench/gpu_check.sh
# It installs the wheels into /tmp/site, runs the GPU tests (bf16/fp16 autocast and Liger train as fp32
# does; QLoRA 4-bit/8-bit trains and its adapter reloads; the rollout engine; the vLLM engine's fake-module
# tests), then bench/gpu_sft.py (tokens/s and peak GPU memory of fp32, bf16 autocast, + Liger, bf16
# weights, QLoRA, on SmolLM2-135M's architecture and tiny DeepSeek-V3). Results go to $OUT (gpu_check.log,
# gpu_sft.json) when the device tool sets it. Not covered: LLaMA-Factory on the GPU (its environment needs
# transformers 4.57 beside ours).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
PY=${PY:-python3}
{
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || echo "no nvidia-smi"
    if [ -d .whl ] && [ -z "${SKIP_WHEELS:-}" ]; then
        $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
            || { echo "wheel install failed"; exit 3; }
        export PYTHONPATH=/tmp/site:$PWD/src
    else
        export PYTHONPATH=$PWD/src
    fi
    $PY -c "import torch, transformers, peft, trl; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), \
'transformers', transformers.__version__, 'peft', peft.__version__, 'trl', trl.__version__)"
    timeout 200 $PY -m pytest -q -p no:cacheprovider tests/test_gpu_switches.py tests/test_rollout.py \
        tests/test_serve_vllm.py 2>&1 | tail -25
    timeout 300 $PY bench/gpu_sft.py --steps 30 --out "$OUT/gpu_sft.json" 2>&1 \
        | grep -v -i -E "warn|loading weights" | tail -20
} 2>&1 | tee "$OUT/gpu_check.log"
