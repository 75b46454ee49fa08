#!/usr/bin/env bash
# On a machine with CUDA: the GPU tests, then the benchmark at whole-body size, numbers into one file.
#   bash bench/gpu_check.sh [OUT_FILE]        (about 5-8 minutes on one H100)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
out="${1:-gpu_check.txt}"
python -c "import torch; assert torch.cuda.is_available(), 'no CUDA'; print(torch.cuda.get_device_name(0))" | tee "$out"
python -m pytest -q tests/test_gpu.py 2>&1 | tail -n 5 | tee -a "$out"
# autoPET-like whole-body study: PET 200x200x326 at 4.07 x 4.07 x 3 mm (the CT on the same grid)
python bench/benchmark.py --shape 200 200 326 --spacing 4.07 4.07 3.0 --folds 5 --device cuda --also-fp32 \
  --flops --json "${out%.txt}.json" 2>&1 | grep -v INFO | tee -a "$out"
python bench/benchmark.py --shape 200 200 326 --spacing 4.07 4.07 3.0 --folds 5 --device cuda --tta \
  --skip-baseline 2>&1 | grep -v INFO | tee -a "$out" || true
echo "wrote $out"
