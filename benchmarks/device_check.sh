#!/usr/bin/env bash
# The GPU check, for the device machine a session is sometimes lent: the CUDA tests
# (pytest -m cuda) and the layer benchmark on the GPU, in well under 8 minutes.
#
# That machine's image has CUDA PyTorch but not tensorly or tensorly-torch, and cannot download;
# fetch their wheels here once, into a folder git ignores, and carry it:
#   pip download tensorly tensorly-torch --no-deps -d .whl
#   device run:  bash benchmarks/device_check.sh      carry: [".whl"]
# Results come back under $OUT; commit benchmarks/results/bench_layers_cuda.json from there.
set -uo pipefail
OUT=${OUT:-$(mktemp -d)}
# into a folder of its own, put first on the path: a plain install there skipped the wheels when another
# script had put its own copy of them on PYTHONPATH, which this script then replaced (session 24's
# check ended at "No module named 'tensorly'")
python3 -m pip install --quiet --no-deps --no-index --no-compile --upgrade --target /tmp/site_check .whl/*.whl || exit
export PYTHONPATH=/tmp/site_check:$PWD PYTHONUNBUFFERED=1
if [ -f .carry/ptb.train.txt ]; then export PTB_DIR=$PWD/.carry; fi  # the study's CUDA test reads PTB (device_study.sh)
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$OUT/gpu.txt"
timeout 240 python3 -m pytest -q -p no:cacheprovider -m cuda tests/ 2>&1 | tee "$OUT/cuda_tests.log"  # the benchmark runs whatever the tests say
timeout 240 python3 -m benchmarks.bench_layers --device cuda --rounds 3 --min-time 0.02 2>&1 | tail -5
cp benchmarks/results/bench_layers_cuda.json "$OUT/"
