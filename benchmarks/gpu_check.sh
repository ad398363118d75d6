#!/usr/bin/env bash
# The GPU check, for whenever one GPU node is at hand (<= 10 min): the engine suite (2 processes on gloo, as in CI:
# the tests pin use_cpu, so the same tests), then the bf16 step-time ratio to plain Trainer for ViT-Base/16 on the
# GPU. Prints the GPU's name first; record it with the numbers in BENCHMARKS.md.
#   pip install -c constraints.txt -e ".[dev]" && bash benchmarks/gpu_check.sh
# DeepSpeed tests skip without DeepSpeed (pip install --no-build-isolation -c constraints.txt deepspeed).
set -euo pipefail
cd "$(dirname "$0")/.."
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python -c "import torch, transformers, accelerate; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'transformers', transformers.__version__, 'accelerate', accelerate.__version__)"
start=$(date +%s)
CUDA_VISIBLE_DEVICES="" HF_HUB_OFFLINE=1 timeout 420 python -m pytest tests/test_engines.py -q -p no:cacheprovider
echo "engine suite: $(( $(date +%s) - start )) s"
HF_HUB_OFFLINE=1 timeout 300 python benchmarks/step_time.py --model vit-base --bf16 --device cuda --steps 12 \
  --rounds 2
echo "total: $(( $(date +%s) - start )) s"
