#!/usr/bin/env bash
# The medium_awd study's trainings on the device machine's GPU, within one call's limit: the teacher
# (`lm train --preset medium_awd`), then every student of lm/study/configs/medium_awd.toml, the five
# distillations side by side and each one's quantization-aware trainings side by side after it
# (`lm study --no-report --device cuda`); beside them, once per machine, the GPU check (device_check.sh).
# Everything runs in runs/ of the checkout there, which stays between calls on a warm machine: a second
# call continues where the first stopped (every training saves its state each minute).
# Measured there (session 24, H200): the teacher at 67,000-95,000 tok/s, about 14 s an epoch with its
# validation, some 65 times two CPU threads; its 60 epochs take about 14 minutes, near a session's whole
# device time, so the students need more device time than a session has, or a faster training step.
#
# The wheels it needs and PTB are carried (benchmarks/device_env.sh says how to fetch them here, once):
#   device run:  bash benchmarks/device_study.sh 480      carry: [".whl", ".carry"]
# The argument is this call's training time in seconds (leave a minute for the packing and the transfers).
# Back under $OUT (benchmarks/device_pack.py): small.tar.gz (every results and result JSON, the logs, the GPU
# check, the packed low-bit artifacts) and, as room allows, the teacher (its checkpoint once it finished,
# else its training state, which continues here with `lm train --resume`) and then the students' float32
# artifacts, in 15 MiB pieces; what did not fit comes with the next call (a call of 0 seconds only hands
# back). Here, with the folders of this session's calls, oldest first:
#   python -m benchmarks.device_pack join runs/ CALL1 CALL2 ...
#   python -m lm train --preset medium_awd --out runs/medium_awd --resume     # if the teacher did not finish
# then the study's report, on this machine's CPU:  python -m lm study --preset medium_awd --checkpoint ...
set -uo pipefail
limit=${1:-480}
OUT=${OUT:-$(mktemp -d)}
end=$(($(date +%s) + limit))
left() { echo $((end - $(date +%s))); }
source benchmarks/device_env.sh || exit
: "${PTB_DIR:?carry PTB: see benchmarks/device_env.sh}"
export OMP_NUM_THREADS=1
device=${DEVICE:-cuda}
preset=${PRESET:-medium_awd}  # tiny_awd: the same methods, for a check of this script on the CPU
mkdir -p runs/logs
teacher=runs/$preset
study_dir=runs/study_$preset

# a teacher trained before (here on the CPU, or in an earlier session) comes carried, its checkpoint and results
# (`mkdir -p .carry/teacher && cp runs/medium_awd/{model.safetensors,results.json} .carry/teacher/`: 53 MB, with
# PTB and the wheels under the tool's 64 MiB), and the call goes straight to the students
carried=$([ -f .carry/teacher/results.json ] && echo yes || true)
if [ -n "$carried" ] && [ ! -f $teacher/results.json ]; then
  mkdir -p $teacher && cp .carry/teacher/model.safetensors .carry/teacher/results.json $teacher/
fi

# once per machine, before the teacher starts: its step eager and through torch.compile side by side (about two
# minutes, most of it compiling); the teacher trains compiled if that is at least 1.3 times faster
ab=runs/check/bench_train_$device.json
if [ "$device" = cuda ] && [ ! -f $ab ] && [ ! -f $teacher/train_state.safetensors ] && [ ! -f $teacher/results.json ] \
    && [ "$(left)" -gt 400 ]; then
  mkdir -p runs/check
  timeout 240 python3 -m lm.benchmarks.train_speed --presets "$preset" --device "$device" --compile \
    --steps 100 --out $ab > runs/logs/train_speed.log 2>&1
fi
compile=$(python3 -c "import json, sys; rows = json.load(open(sys.argv[1]))['rows']
print('--compile' if min(r['speed_vs_eager'] for r in rows if r['compiled']) >= 1.3 else '')" $ab 2>/dev/null)

if [ "$device" = cuda ] && [ ! -f runs/check/bench_layers_cuda.json ] && [ "$(left)" -gt 480 ]; then
  (mkdir -p runs/check && OUT=runs/check timeout "$(left)" bash benchmarks/device_check.sh \
    > runs/logs/device_check.log 2>&1) &
fi

if [ ! -f $teacher/results.json ] && [ "$(left)" -gt 30 ]; then
  resume=$([ -f $teacher/train_state.safetensors ] && echo --resume)
  timeout --signal=INT --kill-after=20 "$(left)" python3 -m lm train --preset "$preset" --device "$device" \
    --data-dir "$PTB_DIR" --out $teacher --save-every 1 --quiet $resume $compile >> runs/logs/teacher.log 2>&1
  echo "lm train exit status $? at $(date -u +%T)" >> runs/logs/teacher.log
fi

study() {  # the methods named, each after its base, in one process
  [ "$(left)" -gt 30 ] || return 1
  timeout --signal=INT --kill-after=20 "$(left)" python3 -m lm study --preset "$preset" --device "$device" \
    --checkpoint $teacher/model.safetensors --run-dir $study_dir --data-dir "$PTB_DIR" --save-every 1 --quiet \
    --no-onnx --no-report --methods "$@" >> "runs/logs/study_$1.log" 2>&1
  local status=$?
  echo "lm study $* exit status $status at $(date -u +%T)" >> "runs/logs/study_$1.log"
  return $status
}
family() {  # a distillation, then its quantization-aware trainings side by side
  local base=$1; shift
  study "$base" || return
  for method in "$@"; do study "$method" & done
  wait
}
if [ -f $teacher/results.json ] && study dense; then
  family lr_tied_kd lr_tied_kd_q4 lr_tied_kd_qat4 lr_tied_kd_qat3 lr_tied_kd_qat2 &
  family lr_tied_small_kd lr_tied_small_kd_qat2 &
  family tt_kd tt_kd_qat2 tt_kd_qat4 tt_kd_qat3 &
  family gr_kd gr_kd_qat4 gr_kd_qat3 gr_kd_qat2 &
fi
wait

nvidia-smi --query-gpu=name,memory.used --format=csv >> runs/logs/gpu_end.txt 2>&1
large=("study_$preset/*_kd/artifact.safetensors")  # and the teacher first, unless it came carried
if [ -z "$carried" ]; then
  large=("$preset/$([ -f $teacher/results.json ] && echo model || echo train_state).safetensors" "${large[@]}")
fi
python3 -m benchmarks.device_pack pack "$OUT" runs \
  --small '**/results.json' '**/result.json' 'logs/*' 'check/*' "study_$preset/*_qat*/artifact.safetensors" \
  --large "${large[@]}"
ls -l "$OUT"
