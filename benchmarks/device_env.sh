# Sourced by the device scripts (device_check.sh, device_study.sh, device_train.sh), from the checkout's root.
# The device machine's image has CUDA PyTorch but not tensorly, tensorly-torch or adjustText, cannot
# download, and does not see ../shared; so, here, once, into folders git ignores, carried with each call:
#   pip download tensorly tensorly-torch adjustText --no-deps --only-binary=:all: -d .whl
#   mkdir -p .carry && cp "$PTB_DIR"/ptb.*.txt .carry/
# There, the wheels go into /tmp/site once per machine (a later call, or a script another one started,
# finds them installed and leaves them alone: reinstalling under a running process could break its
# imports), put first on the path with this checkout; PTB is read from .carry/ when carried.
if compgen -G ".whl/*.whl" > /dev/null && ! ls .whl | cmp -s - /tmp/site/.wheels; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && ls .whl > /tmp/site/.wheels || return 1
fi
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
if [ -f .carry/ptb.train.txt ]; then export PTB_DIR=$PWD/.carry; fi
