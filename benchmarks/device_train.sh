#!/usr/bin/env bash
# A preset's training on the device machine's GPU, continued from this machine's run directory and
# handed back to it: the medium_awd teacher takes about 15 hours on two CPU cores.
#
# The wheels it needs and PTB are carried (benchmarks/device_env.sh says how to fetch them here, once), with
#   cp runs/medium_awd/train_state.safetensors .carry/   # the run so far, if any (about 53 MB before averaging starts)
#   device run:  bash benchmarks/device_train.sh medium_awd 500      carry: [".whl", ".carry"]
# The second argument is the training's limit in seconds (leave a minute of the call for the transfers).
# Back under $OUT (benchmarks/device_pack.py) come the log, and results.json and model.safetensors when
# the run finished, else its last training state (106 MB once averaging holds a second copy of the
# weights: over two calls; a call of 0 seconds only hands back). Here, with the calls' folders, oldest first:
#   python -m benchmarks.device_pack join runs/ CALL1 CALL2 ...
# A returned training state continues here with `lm train ... --resume`, or in the next call.
set -euo pipefail
preset=${1:?usage: device_train.sh PRESET [SECONDS]}
limit=${2:-500}
OUT=${OUT:-$(mktemp -d)}
run=/tmp/device_train/$preset
mkdir -p "$run"
source benchmarks/device_env.sh || exit
: "${PTB_DIR:?carry PTB: see benchmarks/device_env.sh}"
if [ -f .carry/train_state.safetensors ] && [ ! -f "$run/train_state.safetensors" ]; then
  cp .carry/train_state.safetensors "$run/"  # the run so far; a warm machine's own is newer
fi
resume=$([ -f "$run/train_state.safetensors" ] && echo --resume || true)
# saved every minute within an epoch, so that a run cut at the limit loses at most that
status=0
if [ "$limit" -gt 0 ]; then
  timeout --signal=INT --kill-after=30 "$limit" python3 -m lm train --preset "$preset" --device "${DEVICE:-cuda}" \
    --data-dir "$PTB_DIR" --out "$run" --save-every 1 --quiet $resume >> "$run/train.log" 2>&1 || status=$?
  echo "lm train exit status $status" >> "$run/train.log"
fi
state=$([ -f "$run/results.json" ] && echo model || echo train_state)
python3 -m benchmarks.device_pack pack "$OUT" /tmp/device_train \
  --small "$preset/train.log" "$preset/results.json" --large "$preset/$state.safetensors"
ls -l "$OUT"
