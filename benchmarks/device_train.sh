#!/usr/bin/env bash
# A preset's training on the device machine's GPU, continued from this machine's run directory and
# handed back to it: the medium_awd teacher takes about 15 hours on two CPU cores.
#
# That machine's image lacks tensorly and adjustText, cannot download, and does not see ../shared;
# so, here, before each call, into folders git ignores (.carry must stay under 64 MiB with the tree):
#   pip download tensorly adjustText --no-deps -d .whl
#   mkdir -p .carry && cp "$PTB_DIR"/ptb.*.txt .carry/
#   cp runs/medium_awd/train_state.safetensors .carry/   # the run so far, if any (about 53 MB before averaging starts)
#   device run:  bash benchmarks/device_train.sh medium_awd 500      carry: [".whl", ".carry"]
# The second argument is the training's limit in seconds (leave a minute of the call for the transfers).
# Back under $OUT come the log, and results.json and model.safetensors when the run finished, else
# its last training state when it fits; a file over 15 MiB comes in pieces, joined here with
#   cat NAME.part-* > runs/medium_awd/NAME
# A returned training state continues here with `lm train ... --resume`, or in the next call.
set -euo pipefail
preset=${1:?usage: device_train.sh PRESET [SECONDS]}
limit=${2:-500}
OUT=${OUT:-$(mktemp -d)}
run=/tmp/device_train/$preset
mkdir -p "$run"
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
resume=""
if [ -f .carry/train_state.safetensors ]; then
  cp .carry/train_state.safetensors "$run/" && resume="--resume"
fi
# saved every minute within an epoch, so that a run cut at the limit loses at most that
status=0
timeout --signal=INT --kill-after=30 "$limit" python3 -m lm train --preset "$preset" --device "${DEVICE:-cuda}" \
  --data-dir .carry --out "$run" --save-every 1 --quiet $resume > "$OUT/train.log" 2>&1 || status=$?
echo "lm train exit status $status" >> "$OUT/train.log"
give() {  # a file back under $OUT, in 15 MiB pieces when larger
  if [ "$(stat -c %s "$1")" -gt $((15 * 1024 * 1024)) ]; then
    split -b 15M -d "$1" "$OUT/$(basename "$1").part-"
  else
    cp "$1" "$OUT/"
  fi
}
if [ -f "$run/results.json" ]; then
  give "$run/results.json"
  give "$run/model.safetensors"
elif [ ! -f "$run/train_state.safetensors" ]; then
  echo "no training state was saved" >> "$OUT/train.log"
elif [ "$(stat -c %s "$run/train_state.safetensors")" -le $((60 * 1024 * 1024)) ]; then
  give "$run/train_state.safetensors"
else
  echo "the training state is too large to return (averaging holds a second copy of the weights)" >> "$OUT/train.log"
fi
ls -l "$OUT"
