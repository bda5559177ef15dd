"""Keep the memory a training step frees for the next step, instead of handing it back to the kernel.

A step over PTB allocates and frees several buffers of (tokens, vocab) floats: the logits, their softmax,
the gradients, and with distillation the teacher's logits (28 MB each for a 35 x 20 window over 10,000
words). glibc's malloc serves an allocation above its mmap threshold with fresh pages and unmaps them when
it is freed, and returns the top of its heap to the kernel beyond its trim threshold, so that the next step
faults the same pages in again and the kernel zeroes each one: a page fault for every 4 KiB, time that does
no arithmetic. ``retain_freed_memory`` raises both thresholds (``mallopt``), so that freed buffers stay in the
process's heap and are reused. The numbers computed are the same; ``python -m lm.benchmarks.allocator``
measures the faults and the time of a step either way (docs/lm.md).

The ``lm`` command applies it before any command runs, as do the benchmarks that time training. It is
process-wide and lasts until the process exits, which then keeps up to the trim threshold (1 GiB) of freed
memory in its heap instead of returning it.
"""

from __future__ import annotations

import ctypes
import platform

M_TRIM_THRESHOLD = -1  # mallopt's parameters (malloc.h)
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLDS = (256 << 20, 32 << 20)  # the first one glibc accepts: 32 MiB is the most older versions allow
TRIM_THRESHOLD = 1 << 30


def retain_freed_memory() -> bool:
    """Raise glibc's mmap threshold (to 256 MiB, or 32 MiB where glibc allows no more) and its trim
    threshold (to 1 GiB), so that freed buffers of a training step are reused by the next step.

    Returns
    -------
    bool
        Whether both were set: False where the C library is not glibc (macOS, Windows, musl), which
        leaves the allocator as it was.
    """
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(None)  # the process's own symbols: glibc's mallopt
    mmap = any(libc.mallopt(M_MMAP_THRESHOLD, size) for size in MMAP_THRESHOLDS)
    return bool(mmap and libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
