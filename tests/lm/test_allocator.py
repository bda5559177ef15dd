"""lm.allocator: freed (tokens, vocab) buffers reused from step to step, not faulted in again."""

import json
import platform
import subprocess
import sys

import pytest

import lm.__main__ as cli
from lm import allocator

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"

# training steps of a small model over a 10,000-word vocabulary (a window's logits and their gradients are
# 8.5 MB each), in a fresh process: minor page faults per step after two steps of warm-up
STEPS = """
import json, resource, sys
import torch
from lm.allocator import retain_freed_memory
from lm.benchmarks.train_speed import train_steps
from lm.config import ModelConfig, preset
from lm.model import LanguageModel
if sys.argv[1] == "retained":
    assert retain_freed_memory()
torch.set_num_threads(1)
torch.manual_seed(0)
cfg = preset("tiny")
model = LanguageModel(ModelConfig(hidden_size=16), None)
data = torch.randint(0, 10_000, (6 * cfg.bptt + 1, 20))
train_steps(model, cfg, data[: 2 * cfg.bptt + 1])
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
steps = len(train_steps(model, cfg, data[2 * cfg.bptt :]))
print(json.dumps((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / steps))
"""


def faults_per_step(setting: str) -> float:
    out = subprocess.run([sys.executable, "-c", STEPS, setting], check=True, stdout=subprocess.PIPE, text=True)
    return json.loads(out.stdout)


@pytest.mark.skipif(not GLIBC, reason="glibc's allocator")
def test_retained_memory_spares_the_page_faults_of_every_step():
    default, retained = faults_per_step("default"), faults_per_step("retained")
    # by default a step faults its large buffers in again (each 4 KiB page of them: about 2,000 per buffer)
    assert default > 2_000
    assert retained < default / 10


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
