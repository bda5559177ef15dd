"""lm.allocator: freed (tokens, vocab) buffers reused from step to step, not faulted in again."""

import platform
import statistics
import subprocess
import sys

import pytest

import lm.__main__ as cli
from lm import allocator

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"

# forward and backward steps of a small model over a 10,000-word vocabulary (a 35 x 20 window's logits and their
# gradient are 28 MB each), in a fresh process, glibc's defaults or retained: minor page faults per step once the
# heap has grown to a step's needs
STEPS = """
import resource, sys
import torch
from lm.allocator import retain_freed_memory
from lm.config import ModelConfig
from lm.model import LanguageModel

if sys.argv[1] == "retained":
    assert retain_freed_memory()
torch.set_num_threads(1)
torch.manual_seed(0)
model = LanguageModel(ModelConfig(hidden_size=16), None)
for window in torch.randint(0, 10_000, (24, 36, 20)):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    logits, _ = model(window[:-1])
    torch.nn.functional.cross_entropy(logits.view(-1, 10_000), window[1:].reshape(-1)).backward()
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


WARMUP = 8  # of STEPS' 24 steps, those that grow the heap: the median is of the 16 after them


def faults_per_step(setting: str) -> float:
    """The median of the minor page faults of each step after the first ``WARMUP``."""
    out = subprocess.run([sys.executable, "-c", STEPS, setting], check=True, stdout=subprocess.PIPE, text=True)
    return statistics.median(int(line) for line in out.stdout.split()[WARMUP:])


@pytest.mark.skipif(not GLIBC, reason="glibc's allocator")
def test_retained_memory_spares_the_page_faults_of_every_step():
    default, retained = faults_per_step("default"), faults_per_step("retained")
    # by default most steps fault their large buffers in again (each 4 KiB page of them: 7,000 per buffer), some
    # none, as glibc's thresholds move; retained, most steps fault none, and now and then one faults a buffer in
    # (the heap still settling): the medians over 16 steps, not their means, tell the two apart on a busy machine
    assert default > 5_000
    assert retained < 1_000


@pytest.mark.skipif(not GLIBC, reason="glibc's allocator")
def test_retain_sets_glibcs_thresholds_and_says_so():
    assert allocator.retain_freed_memory() is True
    assert allocator.retain_freed_memory() is True  # again: the same settings


def test_another_c_library_is_left_as_it_was(monkeypatch):
    monkeypatch.setattr(platform, "libc_ver", lambda: ("", ""))
    monkeypatch.setattr(allocator.ctypes, "CDLL", lambda *a: pytest.fail("the C library was called"))
    assert allocator.retain_freed_memory() is False


def test_every_lm_command_runs_with_freed_memory_retained(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(cli, "retain_freed_memory", lambda: calls.append("retained") or True)
    with pytest.raises(SystemExit, match="no training state"):  # the command ran, and failed on its input
        cli.main(["curve", str(tmp_path)])
    assert calls == ["retained"]
