"""Kill safety: a real training process killed with SIGKILL at random moments, and in the middle
of writing a checkpoint, resumes from its last saved epoch (losing at most the epoch it was in)
and ends exactly where an uninterrupted run ends."""

import json
import os
import random
import signal
import subprocess
import sys
import threading

import pytest
import torch

import lm
from lm.checkpoint import MODEL_FILE, TRAIN_STATE_FILE, load_train_state

ARGS = ["train", "--preset", "tiny", "--max-train-tokens", "400", "--epochs", "4", "--quiet", "--device", "cpu"]

# runs lm with every model-file write reported on stdout; the KILL_AT_WRITE-th write stops half-way
# (half the bytes in the temporary file, fsynced) and waits there to be killed
WRAPPER = """
import os, sys, time
from pathlib import Path
from lm import modelfile
from lm.__main__ import main
real, calls, stop = modelfile.write_atomic, [0], int(os.environ.get("KILL_AT_WRITE", "0"))
def write_atomic(path, data):
    calls[0] += 1
    if calls[0] == stop:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path.with_name(f".{path.name}.tmp"), "wb") as f:
            f.write(data[: len(data) // 2]); f.flush(); os.fsync(f.fileno())
        print("WRITING", path.name, flush=True)
        time.sleep(600)
    size = real(path, data)
    print("WROTE", Path(path).name, flush=True)
    return size
modelfile.write_atomic = write_atomic
main(sys.argv[1:])
"""


def saved_epoch(out) -> int:
    path = out / TRAIN_STATE_FILE
    return load_train_state(path)["epoch"] if path.exists() else -1


def run_until_killed(out, kill_after: float | None, kill_at_write: int = 0) -> tuple[int, list[str]]:
    """Start (or resume) the run, kill it after ``kill_after`` seconds or inside write ``kill_at_write``;
    returns its exit code and its stdout lines."""
    args = [*ARGS, "--out", str(out)] + (["--resume"] if (out / TRAIN_STATE_FILE).exists() else [])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "KILL_AT_WRITE": str(kill_at_write)}
    proc = subprocess.Popen([sys.executable, "-c", WRAPPER, *args], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True, env=env)
    lines, writing = [], threading.Event()

    def read():
        for line in proc.stdout:
            lines.append(line.strip())
            if line.startswith("WRITING"):
                writing.set()

    reader = threading.Thread(target=read)
    reader.start()
    if kill_at_write:
        while not writing.wait(0.5):
            assert proc.poll() is None, "the run ended before the write it was to be killed in"
        proc.send_signal(signal.SIGKILL)
    else:
        try:
            proc.wait(kill_after)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
    code = proc.wait()
    reader.join()
    return code, lines


@pytest.mark.slow
def test_sigkill_at_random_points_loses_at_most_one_epoch(tmp_path, corpus):
    ref = tmp_path / "ref"
    code, _ = run_until_killed(ref, None)
    assert code == 0
    out, rng = tmp_path / "killed", random.Random(int(os.environ.get("KILL_SEED", "0")))
    # killed inside a checkpoint write (the 1st and 4th writes of a run: a model file, then a training
    # state), then at random moments; then left to finish
    plan = [(None, 1), (None, 4), (rng.uniform(2, 20), 0), (rng.uniform(2, 20), 0), (rng.uniform(2, 20), 0)]
    for kill_after, kill_at_write in plan + [(None, 0)]:
        before = saved_epoch(out)
        code, lines = run_until_killed(out, kill_after, kill_at_write)
        if code == 0:
            break
        assert code == -signal.SIGKILL
        # every save the run finished survived the kill, nothing half-written is read: at most the epoch
        # in progress is lost
        finished = sum(line == f"WROTE {TRAIN_STATE_FILE}" for line in lines)
        assert saved_epoch(out) == before + finished
        if (out / MODEL_FILE).exists():
            lm.load(out / MODEL_FILE)
    assert code == 0
    a = json.loads((ref / "results.json").read_text())
    b = json.loads((out / "results.json").read_text())
    assert [h["valid_ppl"] for h in b["history"]] == [h["valid_ppl"] for h in a["history"]]
    assert b["test_ppl"] == a["test_ppl"]
    ours, theirs = lm.load(out).state_dict(), lm.load(ref).state_dict()
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)
