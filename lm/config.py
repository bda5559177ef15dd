"""Model and training configurations, with Zaremba et al. (2014)'s presets.

A layer spec is a dict ``{"type": "dense" | "low_rank" | "tt" | ..., **options}``;
``lm.model`` turns it into a module.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace


def dense() -> dict:
    return {"type": "dense"}


@dataclass
class ModelConfig:
    """The language model: embedding -> LSTM -> decoder."""

    vocab_size: int = 10_000
    hidden_size: int = 200
    num_layers: int = 2
    dropout: float = 0.0
    tie_weights: bool = False
    embedding_size: int | None = None  # the embedding's output (the first LSTM layer's input); None: hidden_size
    embedding: dict = field(default_factory=dense)
    lstm: dict = field(default_factory=dense)
    decoder: dict = field(default_factory=dense)

    @property
    def embedding_dim(self) -> int:
        return self.embedding_size or self.hidden_size


@dataclass
class TrainConfig:
    """Zaremba's recipe: SGD at ``lr``, decayed by ``lr_decay`` every epoch after ``decay_start``."""

    model: ModelConfig = field(default_factory=ModelConfig)
    init_scale: float = 0.1
    batch_size: int = 20
    bptt: int = 20
    epochs: int = 13
    lr: float = 1.0
    lr_decay: float = 0.5
    decay_start: int = 4  # lr = lr * lr_decay ** max(epoch + 1 - decay_start, 0), epoch counted from 0
    clip: float = 5.0
    seed: int = 1234
    max_train_tokens: int | None = None  # train on a prefix of the corpus (tests, smoke runs)

    def lr_at(self, epoch: int) -> float:
        return self.lr * self.lr_decay ** max(epoch + 1 - self.decay_start, 0)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        d = dict(d)
        model = ModelConfig(**d.pop("model"))
        return cls(model=model, **d)


PRESETS: dict[str, TrainConfig] = {
    "tiny": TrainConfig(
        ModelConfig(hidden_size=64, num_layers=1), init_scale=0.1, epochs=2, lr=1.0, decay_start=2,
        max_train_tokens=200_000,
    ),
    "small": TrainConfig(ModelConfig(hidden_size=200, num_layers=2, dropout=0.0), init_scale=0.1, bptt=20, epochs=13,
                         lr_decay=0.5, decay_start=4, clip=5.0),
    "medium": TrainConfig(ModelConfig(hidden_size=650, num_layers=2, dropout=0.5), init_scale=0.05, bptt=35, epochs=39,
                          lr_decay=0.8, decay_start=6, clip=5.0),
    "large": TrainConfig(ModelConfig(hidden_size=1500, num_layers=2, dropout=0.65), init_scale=0.04, bptt=35, epochs=55,
                         lr_decay=1 / 1.15, decay_start=14, clip=10.0),
}


def preset(name: str, **overrides) -> TrainConfig:
    """A preset with ``overrides`` applied; keys of ``ModelConfig`` go to the model."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    cfg = PRESETS[name]
    model_keys = {f.name for f in fields(ModelConfig)}
    train_keys = {f.name for f in fields(TrainConfig)} - {"model"}
    unknown = set(overrides) - model_keys - train_keys
    if unknown:
        raise ValueError(f"unknown option(s) {sorted(unknown)}")
    model = replace(cfg.model, **{k: v for k, v in overrides.items() if k in model_keys})
    return replace(cfg, model=model, **{k: v for k, v in overrides.items() if k in train_keys})
