"""Fixtures of the deployment tests: tiny language models with every map type of the study (``tiny``), their
float32 ONNX exports (``exported``, exported once), and the logits of a runtime stepped through ids (``steps``)."""

from dataclasses import replace

import numpy as np
import pytest
import torch

from lm.compression.surgery import compress_model
from lm.config import ModelConfig
from lm.model import LanguageModel

VOCAB = ["<unk>", "<eos>", "the"] + [f"w{i}" for i in range(57)]
GR = {"type": "groupreduce", "groups": 3, "ratio": 2, "alpha": 0.5}
# every map type of the study in three models: dense (softmax tied to the embedding); TT embedding,
# TT-LSTM, low-rank softmax; GroupReduce embedding and softmax around an LR-LSTM; and a TT softmax
# (cheap without export), and lr_tied_ft's shape (LR-LSTM, softmax tied to the embedding)
SPECS = {
    "dense": {},
    "tt": {"embedding": {"type": "tt", "rank": 3}, "lstm": {"type": "tt_lstm", "rank": 3},
           "decoder": {"type": "low_rank", "rank": 4}},
    "lr": {"embedding": GR, "lstm": {"type": "lr_lstm", "rank": 4}, "decoder": GR},
    "tt_softmax": {"decoder": {"type": "tt", "rank": 3}},
    "lr_tied": {"lstm": {"type": "lr_lstm", "rank": 4}},  # and embedding_size 4, tie_weights (lr_tied_scratch's shape)
}
EXPORTED = ("dense", "tt", "lr")


def _tiny(kind: str) -> LanguageModel:
    """A 60-word, 2 x 12 model of ``kind`` (a key of ``SPECS``), initialised with seed 0, eval mode."""
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=60, hidden_size=12, num_layers=2, tie_weights=kind == "dense")
    if kind == "lr_tied":  # the LR-LSTM's projection as wide as the embedding, which the softmax shares
        config = compress_model(LanguageModel(replace(config, embedding_size=4)), **SPECS[kind]).config
        model = LanguageModel(replace(config, tie_weights=True), VOCAB)
        model.init_uniform(0.3)
        return model.eval()
    model = LanguageModel(config, VOCAB)
    model.init_uniform(0.3)
    counts = torch.arange(60, 0, -1).float()
    return compress_model(model.eval(), **SPECS[kind], counts=counts).eval()


def _steps(run, ids: np.ndarray, batch: int) -> list[np.ndarray]:
    """Logits of every step of ``ids`` (steps, batch) in a runtime, the state carried."""
    state, out = run.initial_state(batch), []
    for t in ids:
        logits, state = run.step(t, state)
        out.append(logits)
    return out


@pytest.fixture(scope="session")
def exported(tmp_path_factory) -> dict:
    """kind -> (model, its float32 ONNX export): exported once (an export takes seconds)."""
    pytest.importorskip("onnxruntime")
    from lm.deploy.onnx_export import export_onnx

    out = tmp_path_factory.mktemp("onnx")
    return {kind: (_tiny(kind), export_onnx(_tiny(kind), out / f"{kind}.onnx")) for kind in EXPORTED}


@pytest.fixture
def tiny():
    """``tiny(kind)``: a fresh 60-word, 2 x 12 model, kind one of dense, tt, lr, tt_softmax, lr_tied (seed 0, eval mode)."""
    return _tiny


@pytest.fixture
def steps():
    """``steps(runtime, ids (steps, batch), batch)``: the logits of every step, the state carried."""
    return _steps
