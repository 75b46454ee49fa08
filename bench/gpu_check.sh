#!/usr/bin/env bash
# On a machine with CUDA: the GPU tests, then the benchmark at whole-body size, numbers into one file.
#   bash bench/gpu_check.sh [OUT_FILE]        (about 8-10 minutes on one H100)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
out="${1:-gpu_check.txt}"
python -c "import torch; assert torch.cuda.is_available(), 'no CUDA'; print(torch.cuda.get_device_name(0))" | tee "$out"
python -m pytest -q tests/test_gpu.py 2>&1 | tail -n 5 | tee -a "$out"
# autoPET-like whole-body study: PET 200x200x326 at 4.07 x 4.07 x 3 mm (the CT on the same grid)
python bench/benchmark.py --shape 200 200 326 --spacing 4.07 4.07 3.0 --folds 5 --device cuda --also-fp32 \
  --also-sitk --flops --json "${out%.txt}.json" 2>&1 | grep -v INFO | tee -a "$out"
# non-network seconds per stage, SimpleITK vs torch on CUDA, and the time to the first window of a fresh process
python bench/bench_io.py --device cuda --startup --json "${out%.txt}_io.json" 2>&1 | tee -a "$out"
python bench/bench_io.py --device cuda --ct-grid own --repeat 2 2>&1 | tee -a "$out"
python bench/benchmark.py --shape 200 200 326 --spacing 4.07 4.07 3.0 --folds 5 --device cuda --tta \
  --skip-baseline 2>&1 | grep -v INFO | tee -a "$out" || true
# training: a few steps with CUDA autocast (bf16 on Ampere+, fp16 + GradScaler before), then
# the same under torchrun (NCCL with two or more GPUs; one GPU: a single rank, no process group)
tmp="$(mktemp -d)"
python -m petseg -q phantom -o "$tmp/data" -n 6 --seed 3 --shape 64 56 128 --spacing 6 6 5.5
train=(train -d "$tmp/data" --fold 0 --epochs 2 --val-every 2 --batch-size 2 --patch-size 48 48 48
       --target-spacing 4 4 4 --roi-size 96 96 96 --channels 16 32 64 128 --num-res-units 1 --device cuda)
{ time python -m petseg "${train[@]}" -o "$tmp/run1"; } 2>&1 | grep -E "epoch|precision|real|error" | tee -a "$out"
# click-aware training with error-driven clicks (the network predicts inside the step, under autocast)
{ time python -m petseg "${train[@]}" -o "$tmp/run3" --init-from weights --clicks --error-clicks 1; } 2>&1 \
  | grep -E "epoch|real|error" | tee -a "$out"
gpus="$(python -c 'import torch; print(min(2, torch.cuda.device_count()))')"
{ time torchrun --standalone --nproc-per-node "$gpus" -m petseg "${train[@]}" -o "$tmp/run2"; } 2>&1 \
  | grep -E "epoch|nccl|NCCL|real|error" | tee -a "$out"
# can the loader keep the GPU fed? the paper network's step on the GPU against 0/4/8/12 loader workers
python bench/train_throughput.py --device cuda --workers 0 4 8 12 --batches 8 --step-batches 10 2>&1 | tee -a "$out"
# cohort throughput on the GPU: sequential vs pipelined, demo weights, both resampling backends
for backend in torch sitk; do
  python bench/cohort.py --n 4 --device cuda --demo-workers 0 2 --workers 0 2 --resample-backend "$backend" 2>&1 \
    | tee -a "$out"
done
# the torch resampler alone against SimpleITK, whole-body PET to 2 mm
python bench/bench_resample.py 2>&1 | tee -a "$out"
rm -rf "$tmp"
echo "wrote $out"
