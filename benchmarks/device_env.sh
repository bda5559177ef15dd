# Sourced by the device scripts (device_check.sh, device_study.sh, device_train.sh), from the checkout's root.
# The device machine's image has CUDA PyTorch but not tensorly, tensorly-torch or adjustText, cannot
# download, and does not see ../shared; so, here, once, into folders git ignores, carried with each call
# (carry: [".whl", ".carry"], 64 MiB in all: the wheels 7.5 MB, PTB 1.4 MB packed, a teacher 53 MB):
#   pip download tensorly tensorly-torch adjustText --no-deps --only-binary=:all: -d .whl
#   mkdir -p .carry && tar cJf .carry/ptb.tar.xz -C "$PTB_DIR" ptb.train.txt ptb.valid.txt ptb.test.txt
# There, the wheels go into /tmp/site once per machine (a later call, or a script another one started,
# finds them installed and leaves them alone: reinstalling under a running process could break its
# imports), put first on the path with this checkout; PTB_DIR is the carried PTB, unpacked once into
# /tmp/ptb (or .carry itself, holding the three text files).
if compgen -G ".whl/*.whl" > /dev/null && ! ls .whl | cmp -s - /tmp/site/.wheels; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && ls .whl > /tmp/site/.wheels || return 1
fi
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
if [ -f .carry/ptb.tar.xz ]; then
  if [ ! -d /tmp/ptb ]; then
    rm -rf /tmp/ptb.unpacking && mkdir /tmp/ptb.unpacking && tar xJf .carry/ptb.tar.xz -C /tmp/ptb.unpacking \
      && mv /tmp/ptb.unpacking /tmp/ptb || return 1
  fi
  export PTB_DIR=/tmp/ptb
elif [ -f .carry/ptb.train.txt ]; then
  export PTB_DIR=$PWD/.carry
fi
