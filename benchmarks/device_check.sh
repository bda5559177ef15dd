#!/usr/bin/env bash
# The GPU check, for the device machine a session is sometimes lent: the CUDA tests
# (pytest -m cuda) and the layer benchmark on the GPU, in well under 8 minutes.
#
# The wheels it needs and PTB (for the study's CUDA test) are carried (benchmarks/device_env.sh says how):
#   device run:  bash benchmarks/device_check.sh      carry: [".whl", ".carry"]
# Results come back under $OUT; commit benchmarks/results/bench_layers_cuda.json from there.
set -uo pipefail
OUT=${OUT:-$(mktemp -d)}
source benchmarks/device_env.sh || exit
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$OUT/gpu.txt"
timeout 240 python3 -m pytest -q -p no:cacheprovider -m cuda tests/ 2>&1 | tee "$OUT/cuda_tests.log"  # the benchmark runs whatever the tests say
timeout 240 python3 -m benchmarks.bench_layers --device cuda --rounds 3 --min-time 0.02 2>&1 | tail -5
cp benchmarks/results/bench_layers_cuda.json "$OUT/"
