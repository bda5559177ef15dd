"""Knowledge distillation: the soft-target loss and fine-tuning from a teacher."""

import os

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lm.config import preset
from lm.data import Corpus, batchify, bptt_windows
from lm.distill import Distillation, soft_target_loss, teacher_features
from lm.train import TrainingDiverged, build_model, train

DEVICE = os.environ.get("TTLAYERS_TEST_DEVICE", "cuda")  # as tests/project/test_cuda.py


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 5), st.integers(2, 9), st.floats(0.5, 4.0), st.integers(0, 2**31 - 1))
def test_soft_target_loss_is_the_scaled_kl_divergence(tokens, vocab, temperature, seed):
    g = torch.Generator().manual_seed(seed)
    student, teacher = torch.randn(tokens, 2, vocab, generator=g, dtype=torch.float64).unbind(1)
    p = torch.softmax(teacher / temperature, -1)
    expected = temperature**2 * (p * (p.log() - torch.log_softmax(student / temperature, -1))).sum(-1).mean()
    torch.testing.assert_close(soft_target_loss(student, teacher, temperature), expected)
    shift = torch.randn(tokens, 1, generator=g, dtype=torch.float64)  # a constant per token changes no softmax
    assert soft_target_loss(teacher + shift, teacher, temperature).abs() < 1e-12


def reference_soft_target_loss(student, teacher, temperature):
    """The loss written as whole-tensor torch operations, its gradient by autograd."""
    vocab = student.shape[-1]
    log_p = torch.log_softmax(student.reshape(-1, vocab) / temperature, -1)
    log_q = torch.log_softmax(teacher.reshape(-1, vocab) / temperature, -1)
    return temperature**2 * torch.nn.functional.kl_div(log_p, log_q, reduction="batchmean", log_target=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (5, 1), (3, 4, 11), (13, 257)])
@pytest.mark.parametrize("scale", [1e-6, 1.0, 1e3])
@pytest.mark.parametrize("block", [1, 300, 1 << 16])  # logits per block of rows: one row, several with a ragged end, all
def test_soft_target_loss_and_its_gradient_match_autograd_through_whole_tensor_operations(dtype, shape, scale, block,
                                                                                           monkeypatch):
    monkeypatch.setattr("lm.distill._SoftTargetLoss.CACHE_ELEMENTS", block)
    g = torch.Generator().manual_seed(hash((shape, scale)) % 2**31)
    student = (scale * torch.randn(shape, generator=g, dtype=torch.float64)).to(dtype).requires_grad_()
    teacher = (scale * torch.randn(shape, generator=g, dtype=torch.float64)).to(dtype)
    expected_student = student.detach().clone().requires_grad_()
    weight = 3.5  # the loss scaled, as sgd_step scales it by the window's steps
    (weight * soft_target_loss(student, teacher, 2.0)).backward()
    expected = reference_soft_target_loss(expected_student, teacher, 2.0)
    (weight * expected).backward()
    tol = {"rtol": 1e-4, "atol": 1e-5 * max(scale, 1.0)} if dtype == torch.float32 else {}
    torch.testing.assert_close(soft_target_loss(student, teacher, 2.0), expected.detach(), **tol)
    torch.testing.assert_close(student.grad, expected_student.grad, **tol)


def test_the_soft_target_gradient_passes_gradcheck(monkeypatch):
    monkeypatch.setattr("lm.distill._SoftTargetLoss.CACHE_ELEMENTS", 20)
    student = torch.randn(7, 6, dtype=torch.float64, requires_grad=True)
    teacher = torch.randn(7, 6, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda s: soft_target_loss(s, teacher, 1.7), (student,))


@pytest.mark.cuda
@pytest.mark.skipif(DEVICE.startswith("cuda") and not torch.cuda.is_available(), reason="needs CUDA")
def test_the_soft_target_loss_on_the_test_device_is_the_cpus():
    g = torch.Generator().manual_seed(0)
    student = torch.randn(37, 500, generator=g, dtype=torch.float64, requires_grad=True)
    teacher = torch.randn(37, 500, generator=g, dtype=torch.float64)
    on_device = student.detach().to(DEVICE).requires_grad_()
    loss, device_loss = soft_target_loss(student, teacher, 2.0), soft_target_loss(on_device, teacher.to(DEVICE), 2.0)
    (loss * 3).backward()
    (device_loss * 3).backward()
    assert device_loss.device.type == torch.device(DEVICE).type and on_device.grad.device == device_loss.device
    torch.testing.assert_close(device_loss.cpu(), loss.detach())
    torch.testing.assert_close(on_device.grad.cpu(), student.grad)


def test_no_gradient_reaches_the_teacher_and_alpha_zero_is_cross_entropy():
    student, teacher = torch.randn(6, 5, requires_grad=True), torch.randn(6, 5, requires_grad=True)
    ce = torch.nn.functional.cross_entropy(student, torch.arange(6) % 5)
    Distillation(torch.nn.Identity(), alpha=0.3).loss(ce, student, teacher).backward()
    assert student.grad is not None and teacher.grad is None
    torch.testing.assert_close(Distillation(torch.nn.Identity(), alpha=0.0).loss(ce, student, teacher), ce)


@pytest.mark.parametrize("kwargs", [{"alpha": -0.1}, {"alpha": 1.5}, {"temperature": 0.0},
                                    {"temperature": float("nan")}])
def test_bad_settings_are_refused(kwargs):
    with pytest.raises(ValueError):
        Distillation(torch.nn.Identity(), **kwargs)


def test_mismatched_logits_are_refused():
    with pytest.raises(ValueError, match="differ"):
        soft_target_loss(torch.zeros(3, 5), torch.zeros(3, 6), 2.0)


def test_distillation_pulls_the_student_towards_the_teacher_and_cross_entropy_does_not(tmp_path, corpus, short_corpus):
    cfg = preset("tiny", epochs=1, lr=0.5)  # trained on short_corpus's 4,000 tokens
    teacher = build_model(preset("tiny", seed=7), short_corpus.vocab)
    counts = torch.bincount(corpus.train, minlength=len(corpus.vocab)).float() + 1
    with torch.no_grad():  # a teacher that the data alone would not teach: rare words most likely
        teacher.decoder.bias.copy_(-counts.log())
    window = short_corpus.valid[:400].view(20, 20)

    def gap_after(alpha: float) -> float:
        student = build_model(cfg, short_corpus.vocab)
        train(cfg, tmp_path / str(alpha), model=student, progress=False,
              distill=Distillation(teacher, alpha=alpha, temperature=1.0))
        with torch.no_grad():
            return soft_target_loss(student(window)[0], teacher(window)[0], 1.0).item()

    untrained = build_model(cfg, short_corpus.vocab)
    with torch.no_grad():
        before = soft_target_loss(untrained(window)[0], teacher(window)[0], 1.0).item()
    assert gap_after(1.0) < before < gap_after(0.0)
    assert teacher.training  # training ran a copy of it in eval mode and left the caller's model alone


def test_a_teacher_with_non_finite_logits_stops_training(tmp_path, corpus):
    cfg = preset("tiny", max_train_tokens=2000, epochs=1)
    teacher = build_model(cfg, corpus.vocab)
    with torch.no_grad():
        teacher.decoder.bias[0] = float("nan")
    with pytest.raises(TrainingDiverged, match=r"non-finite loss \(nan\) at epoch 1, step 1,"):  # before any NaN step
        train(cfg, tmp_path, model=build_model(cfg, corpus.vocab), progress=False, distill=Distillation(teacher))


def test_the_stored_teacher_outputs_give_the_teachers_logits_window_by_window(corpus):
    teacher = build_model(preset("tiny_awd", hidden_size=16), corpus.vocab).eval()
    data = batchify(corpus.train[:3000], 4)
    stored = teacher_features(teacher, data, 7)
    state = None
    windows = list(bptt_windows(data, 7))
    assert len(stored) == len(windows) and stored[-1].shape[0] == windows[-1][0].shape[0]  # the short last window
    with torch.no_grad():
        for (inputs, _), out in zip(windows, stored):
            logits, state = teacher(inputs, state)  # the whole teacher, its state carried as in training
            torch.testing.assert_close(teacher.decoder(out), logits, rtol=0, atol=0)
    with pytest.raises(ValueError, match="eval mode"):
        teacher_features(teacher.train(), data, 7)


def test_the_teacher_outputs_kept_on_disk_are_read_back_bit_for_bit_and_keyed_by_what_they_depend_on(
        tmp_path, corpus, monkeypatch):
    import subprocess
    import sys

    from lm.distill import _key

    teacher = build_model(preset("tiny_awd", hidden_size=16), corpus.vocab).eval()
    data = batchify(corpus.train[:3000], 4)
    fresh = teacher_features(teacher, data, 7)
    name = f"teacher_outputs_{_key(teacher, data, 7)}.safetensors"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    orphan = tmp_path / f"{name}.{dead.stdout.strip()}.tmp"  # a write killed half-way
    orphan.write_bytes(b"partial")
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    writing = tmp_path / f"{name}.{live.pid}.tmp"  # another process writing the same outputs now
    writing.write_bytes(b"partial")
    try:
        kept = teacher_features(teacher, data, 7, cache=tmp_path)
    finally:
        live.kill()
        live.wait()
    assert not orphan.exists() and writing.exists()
    writing.unlink()
    files = sorted(tmp_path.iterdir())
    assert len(files) == 1 and files[0].suffix == ".safetensors"  # written whole: no temporary file of its own left
    calls = []
    monkeypatch.setattr(teacher, "features", lambda *a: calls.append(a))  # a second run must not run the teacher
    read = teacher_features(teacher, data, 7, cache=tmp_path)
    assert calls == [] and len(read) == len(fresh) == len(kept)
    for a, b, c in zip(fresh, kept, read):
        assert torch.equal(a, b) and torch.equal(a, c)  # the short last window too
    monkeypatch.undo()
    # another window length, another stream, another teacher's weights: each its own outputs
    teacher_features(teacher, data, 5, cache=tmp_path)
    teacher_features(teacher, data[:-1], 7, cache=tmp_path)
    with torch.no_grad():
        teacher.decoder.bias[0] += 1.0  # a weight the LSTM's outputs do not read still makes another teacher
    teacher_features(teacher, data, 7, cache=tmp_path)
    assert len(list(tmp_path.iterdir())) == 4


def test_a_distillation_with_its_teacher_outputs_on_disk_trains_exactly_as_one_without(tmp_path, corpus, monkeypatch):
    short = Corpus(corpus.vocab, corpus.train[:2000], corpus.valid[:500], corpus.test[:500])  # cheap evaluations
    monkeypatch.setattr(Corpus, "load", classmethod(lambda cls, data_dir=None: short))
    cfg = preset("tiny_awd", hidden_size=16, epochs=1)
    teacher = build_model(cfg, corpus.vocab)
    results = {}
    for run in ("plain", "first", "second"):  # the second reads what the first wrote
        torch.manual_seed(0)
        student = build_model(cfg, corpus.vocab)
        kd = Distillation(teacher, cache=None if run == "plain" else tmp_path / "teacher_outputs")
        train(cfg, tmp_path / run, model=student, progress=False, distill=kd)
        results[run] = student.state_dict()
    assert len(list((tmp_path / "teacher_outputs").iterdir())) == 1
    for run in ("first", "second"):
        assert all(torch.equal(results["plain"][k], v) for k, v in results[run].items())
