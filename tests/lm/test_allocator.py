"""lm.allocator: freed (tokens, vocab) buffers reused from step to step, not faulted in again."""

import platform
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
steps, warmup = 8, 16
for i, window in enumerate(torch.randint(0, 10_000, (warmup + steps, 36, 20))):
    if i == warmup:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    logits, _ = model(window[:-1])
    torch.nn.functional.cross_entropy(logits.view(-1, 10_000), window[1:].reshape(-1)).backward()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / steps)
"""


def faults_per_step(setting: str) -> float:
    out = subprocess.run([sys.executable, "-c", STEPS, setting], check=True, stdout=subprocess.PIPE, text=True)
    return float(out.stdout)


@pytest.mark.skipif(not GLIBC, reason="glibc's allocator")
def test_retained_memory_spares_the_page_faults_of_every_step():
    default, retained = faults_per_step("default"), faults_per_step("retained")
    # by default a step faults its large buffers in again (each 4 KiB page of them: 7,000 per buffer); retained,
    # a step faults none once the heap has settled: after 8 warm-up steps, 4 steps still faulted up to 1,700 pages
    # each on a loaded machine (the heap still settling), after 16 none (the test failed once so, beside training)
    assert default > 5_000
    assert retained < default / 4


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
