"""Model and training configurations, with Zaremba et al. (2014)'s presets.

A layer spec is a dict ``{"type": "dense" | "low_rank" | "tt" | ..., **options}``;
``lm.model`` turns it into a module.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace

from .regularize import Regularization, check_settings


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
    """Zaremba's recipe: SGD at ``lr``, decayed by ``lr_decay`` every epoch after ``decay_start``.

    The fields from ``dropout_input`` on add Merity et al. (2018)'s regularisation
    (``lm.regularize``) and averaged SGD; all are off by default, and a field at its default
    is left out of ``to_dict``, so that the configs (and the cached runs keyed on them) of
    the recipes that do not use them stay as they were.
    """

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
    dropout_input: float = 0.0  # locked (variational) dropout on the embedding output
    dropout_hidden: float = 0.0  # locked dropout between LSTM layers
    dropout_output: float = 0.0  # locked dropout on the last LSTM output, before the decoder
    dropout_embedding: float = 0.0  # whole words dropped from the embedding matrix
    weight_drop: float = 0.0  # DropConnect on every recurrent weight W_hh, one mask per bptt window
    ar: float = 0.0  # activation regularisation: ar * mean(dropped last-layer output ** 2)
    tar: float = 0.0  # temporal activation regularisation: tar * mean((h_t - h_{t-1}) ** 2)
    weight_decay: float = 0.0  # L2 penalty in SGD
    # averaged SGD: averaging starts at epoch asgd_start (counted from 1), or after the first epoch whose validation
    # is worse than the best of those more than asgd_nonmono epochs before it (NT-ASGD), whichever comes first
    asgd_start: int | None = None
    asgd_nonmono: int | None = None
    # stop after an epoch that lowered the validation perplexity by less than this fraction of the epoch's
    # before (the curve no longer moves), before `epochs`; None: train every epoch
    min_gain: float | None = None

    def __post_init__(self) -> None:
        check_settings(self, ("dropout_input", "dropout_hidden", "dropout_output", "dropout_embedding", "weight_drop"),
                       ("ar", "tar", "weight_decay"))
        for name in ("asgd_start", "asgd_nonmono"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be None or an int >= 1, got {value!r}")
        if self.min_gain is not None and (isinstance(self.min_gain, bool) or not isinstance(self.min_gain, (int, float))
                                          or not 0 <= self.min_gain < 1):
            raise ValueError(f"min_gain must be None or a number in [0, 1), got {self.min_gain!r}")

    def regularization(self) -> Regularization | None:
        """The training-time regularisers, or None when all are off (the model's plain forward)."""
        r = Regularization(input=self.dropout_input, hidden=self.dropout_hidden, output=self.dropout_output,
                           embedding=self.dropout_embedding, weight=self.weight_drop, ar=self.ar, tar=self.tar)
        return None if r == Regularization() else r

    def lr_at(self, epoch: int) -> float:
        return self.lr * self.lr_decay ** max(epoch + 1 - self.decay_start, 0)

    def to_dict(self) -> dict:
        """The config as plain data, without the optional fields (``OPTIONAL``) at their defaults."""
        d = asdict(self)
        for f in fields(self):
            if f.name in OPTIONAL and d[f.name] == f.default:
                del d[f.name]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        d = dict(d)
        model = ModelConfig(**d.pop("model"))
        return cls(model=model, **d)


# TrainConfig fields added after runs were cached: to_dict leaves them out at their defaults
OPTIONAL = frozenset({"dropout_input", "dropout_hidden", "dropout_output", "dropout_embedding", "weight_drop", "ar",
                      "tar", "weight_decay", "asgd_start", "asgd_nonmono", "min_gain"})

PRESETS: dict[str, TrainConfig] = {
    "tiny": TrainConfig(
        ModelConfig(hidden_size=64, num_layers=1), init_scale=0.1, epochs=2, lr=1.0, decay_start=2,
        max_train_tokens=200_000,
    ),
    "small": TrainConfig(ModelConfig(hidden_size=200, num_layers=2, dropout=0.0), init_scale=0.1, bptt=20, epochs=13,
                         lr_decay=0.5, decay_start=4, clip=5.0),
    "medium": TrainConfig(ModelConfig(hidden_size=650, num_layers=2, dropout=0.5), init_scale=0.05, bptt=35, epochs=39,
                          lr_decay=0.8, decay_start=6, clip=5.0),
    # Zaremba's medium size, tied, with AWD-LSTM's regularisation (Merity et al. 2018's PTB settings) and NT-ASGD,
    # at AWD-LSTM's constant learning rate; averaging from epoch asgd_start at the latest (docs/lm.md)
    # weight_decay: AWD-LSTM's 1.2e-6 at its lr 30 on the per-token mean loss is a decay of 3.6e-5
    # of the weights per step; here the loss is summed over the window at lr 1, so the same decay
    # needs weight_decay 3.6e-5
    "medium_awd": TrainConfig(
        ModelConfig(hidden_size=650, num_layers=2, tie_weights=True), init_scale=0.05, bptt=35, epochs=60,
        lr=1.0, lr_decay=1.0, decay_start=1, clip=5.0, dropout_input=0.4, dropout_hidden=0.25, dropout_output=0.4,
        dropout_embedding=0.1, weight_drop=0.5, ar=2.0, tar=1.0, weight_decay=3.6e-5, asgd_nonmono=5, asgd_start=45,
    ),
    # the same recipe on the tiny model, for tests and smoke runs (averages from its second epoch)
    "tiny_awd": TrainConfig(
        ModelConfig(hidden_size=64, num_layers=2, tie_weights=True), init_scale=0.1, epochs=2, lr=1.0, lr_decay=1.0,
        decay_start=1, max_train_tokens=200_000, dropout_input=0.4, dropout_hidden=0.25, dropout_output=0.4,
        dropout_embedding=0.1, weight_drop=0.5, ar=2.0, tar=1.0, weight_decay=3.6e-5, asgd_nonmono=5, asgd_start=2,
    ),
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
