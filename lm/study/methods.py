"""The compression study's methods, as data: one TOML file per preset, read into typed methods.

``lm/study/configs/<preset>.toml`` holds the preset's fine-tuning recipe (``[finetune]``, read by
``load_finetune``) and one ``[[methods]]`` table per method::

    [[methods]]
    name = "lr_all_ft"
    family = "LR-LSTM+GroupReduce"
    description = "LR-LSTM r=40 with GroupReduce embedding and softmax, fine-tuned"
    train = "finetune"
    compress.embedding = { type = "groupreduce", groups = 6, ratio = 8, alpha = 0.5 }
    compress.lstm = { type = "lr_lstm", rank = 40 }

``load_methods(preset)`` reads and validates it: an unknown key, a value of the wrong
type or a missing field raises a ``ValueError`` naming the file, the method and the
field. A layer spec names its rank ``rank``; ``lm.compression.surgery`` resolves it
into the model config's per-bond ``ranks``.
"""

from __future__ import annotations

import math
import sys
import types
import typing
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path

from ..compression.export import QUANT
from ..regularize import Regularization

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - the same parser, before it joined the standard library
    import tomli as tomllib

CONFIG_DIR = Path(__file__).with_name("configs")
TRAIN = ("none", "finetune", "scratch")
TEACHERS = (None, "dense")


@dataclass(frozen=True)
class RankSpec:
    """A layer kind set by one ``rank``; each subclass fixes its ``type``."""

    type: str = field(init=False)
    rank: int


@dataclass(frozen=True)
class LowRankSpec(RankSpec):
    """A truncated-SVD embedding (``BlockLowRankEmbedding`` with one block) or decoder (``LowRankLinear``)."""

    type: str = field(default="low_rank", init=False)


@dataclass(frozen=True)
class TTSpec(RankSpec):
    """A ``TTEmbedding`` or TT decoder (``TTLinear``) by TT-SVD, every inner TT rank at most ``rank``."""

    type: str = field(default="tt", init=False)


@dataclass(frozen=True)
class GroupReduceSpec:
    """GroupReduce: ``groups`` frequency blocks, ``ratio`` times fewer parameters, word weights ``count ** alpha``."""

    type: str = field(default="groupreduce", init=False)
    groups: int
    ratio: float
    alpha: float


@dataclass(frozen=True)
class LRLSTMSpec(RankSpec):
    """The LR-LSTM: every layer's maps share one rank-``rank`` projection of the hidden state."""

    type: str = field(default="lr_lstm", init=False)


@dataclass(frozen=True)
class TTLSTMSpec(RankSpec):
    """The TT-LSTM: every input and recurrent map a ``TTLinear`` by TT-SVD, inner TT ranks at most ``rank``."""

    type: str = field(default="tt_lstm", init=False)


LayerSpec = LowRankSpec | TTSpec | GroupReduceSpec | LRLSTMSpec | TTLSTMSpec
# the layer specs each part of the model takes, by their ``type``
PARTS: dict[str, dict[str, type]] = {
    "embedding": {"low_rank": LowRankSpec, "groupreduce": GroupReduceSpec, "tt": TTSpec},
    "lstm": {"lr_lstm": LRLSTMSpec, "tt_lstm": TTLSTMSpec},
    "decoder": {"low_rank": LowRankSpec, "groupreduce": GroupReduceSpec, "tt": TTSpec},
}


@dataclass(frozen=True)
class Prune:
    """Magnitude pruning of ``amount`` of ``layers``' weights, at once or ``gradual``ly while fine-tuning."""

    amount: float
    layers: list[str]
    gradual: bool | None = None


@dataclass(frozen=True)
class Distill:
    """``lm.distill.Distillation``'s loss mix, and its teacher: ``None``, the model the method starts
    from (the dense one, or the base: born-again); ``"dense"``, the study's dense model (the preset's
    trained checkpoint, ``--checkpoint``) even for a method built on a base."""

    alpha: float
    temperature: float
    teacher: str | None = None

    def __post_init__(self) -> None:
        if self.teacher not in TEACHERS:
            raise ValueError(f"teacher must be one of {list(TEACHERS)}, got {self.teacher!r}")


@dataclass(frozen=True)
class Shape:
    """``ModelConfig`` fields of a from-scratch model, set after ``compress`` has set its layer specs; of
    a compressed one, ``compress_model``'s arguments of the same names."""

    embedding_size: int | None = None
    tie_weights: bool | None = None


@dataclass(frozen=True)
class Finetune:
    """A fine-tuning run: SGD from ``lr``, halved every epoch, for ``epochs``, with ``dropout`` on the
    non-recurrent connections (the model's own dropout is restored afterwards), and ``regularization``:
    the preset's regularisers (``lm.regularize``) at these strengths instead of the preset's own (None:
    the preset's); ``min_gain``: ``epochs`` is then the most, the run ending after an epoch that lowered the
    validation perplexity by less than that fraction (``TrainConfig.min_gain``; None: every epoch). A study
    file gives every field but these two, so that none is switched off by omission."""

    epochs: int
    lr: float
    dropout: float
    regularization: Regularization | None = None
    min_gain: float | None = None

    def __post_init__(self) -> None:
        if isinstance(self.epochs, bool) or not isinstance(self.epochs, int) or self.epochs < 1:
            raise ValueError(f"epochs must be an int >= 1, got {self.epochs!r}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be a finite number > 0, got {self.lr!r}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be a probability in [0, 1), got {self.dropout!r}")
        if self.min_gain is not None and not 0 <= self.min_gain < 1:
            raise ValueError(f"min_gain must be None or a number in [0, 1), got {self.min_gain!r}")

    def to_dict(self) -> dict:
        """The recipe as the study's results record it (part of their cache keys): without ``regularization``
        and ``min_gain`` when None, so that the recipes written before those fields existed keep their keys."""
        out = asdict(self)
        for name in ("regularization", "min_gain"):
            if out[name] is None:
                del out[name]
        return out


@dataclass(frozen=True)
class Method:
    """One row of the study.

    ``compress``: a layer spec per part (``embedding``/``lstm``/``decoder``) for
    ``compress_model``; ``prune``: magnitude pruning; ``train``: ``"none"``, ``"finetune"``
    (from the compressed trained model) or ``"scratch"`` (the compressed architecture trained
    with the preset's recipe); ``quant``: the artifact's 8-bit scheme; ``base``: start from
    another method's finished model instead of the dense one (to export it, or fine-tune it);
    ``shape``: of a from-scratch model, or of a compressed one (``compress_model``'s
    ``embedding_size`` and ``tie_weights``: the table narrowed, the tie kept); ``distill``: fine-tune with a teacher's soft targets, the
    model it starts from (the dense one, or the base) or ``distill.teacher``; ``lr``: the starting learning rate of its
    training instead of the preset's (scratch) or the fine-tuning recipe's, decayed on the
    same schedule; ``epochs``: the length of its training instead of the preset's (scratch) or
    the fine-tuning recipe's (the same schedule, cut or extended); ``qat_bits``: fine-tune in quantization-aware training
    at that many bits per weight (``lm.compression.qat``: every weight on its per-row grid,
    straight-through gradients) and export the packed codes (``quant`` must then be
    ``f"q{qat_bits}"``); ``qat_every``: the optimizer steps between two searches of the QAT row
    ranges (default ``lm.compression.qat.RANGE_EVERY``); ``note``: why, where a choice needs a reason (not part of the recipe).
    """

    name: str
    family: str
    description: str
    compress: dict[str, LayerSpec] = field(default_factory=dict)
    prune: Prune | None = None
    train: str = "none"
    quant: str | None = None
    base: str | None = None
    shape: Shape | None = None
    distill: Distill | None = None
    lr: float | None = None
    epochs: int | None = None
    qat_bits: int | None = None
    qat_every: int | None = None
    note: str = ""

    def __post_init__(self) -> None:
        """Refuse recipes whose parts the study would silently ignore."""
        if self.train not in TRAIN:
            raise ValueError(f"{self.name}: train must be 'none', 'finetune' or 'scratch', got {self.train!r}")
        if self.quant not in QUANT:
            raise ValueError(f"{self.name}: quant must be one of {QUANT}, got {self.quant!r}")
        if self.base and (self.compress or self.prune or self.train == "scratch" or self.shape):
            raise ValueError(f"{self.name}: a method built on base {self.base!r} exports it (quant) or fine-tunes "
                             "it (train='finetune', distill); it cannot compress, prune, reshape or train from scratch")
        if self.distill and self.train != "finetune":
            raise ValueError(f"{self.name}: distillation needs train='finetune', got {self.train!r}")
        if self.shape and self.train != "scratch" and not self.compress:
            raise ValueError(f"{self.name}: shape applies to from-scratch or compressed models, got train={self.train!r} "
                             "and nothing to compress")
        if self.lr is not None and (self.train == "none" or not self.lr > 0):
            raise ValueError(f"{self.name}: lr sets the rate of a training run and must be > 0, "
                             f"got lr={self.lr} with train={self.train!r}")
        if self.epochs is not None and (self.train == "none" or self.epochs < 1):
            raise ValueError(f"{self.name}: epochs sets the length of a training run and must be >= 1, "
                             f"got epochs={self.epochs} with train={self.train!r}")
        if self.qat_bits is not None and (self.train != "finetune" or self.prune or self.quant != f"q{self.qat_bits}"):
            raise ValueError(f"{self.name}: qat_bits fine-tunes in quantization-aware training and exports its codes: "
                             f"it needs train='finetune', no pruning and quant='q{self.qat_bits}', got "
                             f"train={self.train!r}, prune={self.prune!r}, quant={self.quant!r}")

        if self.qat_every is not None and (self.qat_bits is None or self.qat_every < 1):
            raise ValueError(f"{self.name}: qat_every sets how often QAT searches its row ranges and must be >= 1, "
                             f"with qat_bits set; got qat_every={self.qat_every}, qat_bits={self.qat_bits}")

    def layer_specs(self) -> dict[str, dict]:
        """``compress`` as ``compress_model``'s keyword arguments."""
        return {part: _plain(spec) for part, spec in self.compress.items()}

    def compress_kwargs(self) -> dict:
        """``compress_model``'s keyword arguments for a compressed (not from-scratch) model: the layer
        specs, and ``shape``'s fields."""
        return {**self.layer_specs(), **(self.shape_fields() if self.train != "scratch" else {})}

    def shape_fields(self) -> dict:
        """``shape`` as ``ModelConfig`` fields."""
        return _plain(self.shape) if self.shape else {}

    def to_dict(self) -> dict:
        """Every field but ``note`` (and ``qat_bits``, ``qat_every`` when unset), as plain data (``ship``'s
        manifest records it)."""
        qat = {k: getattr(self, k) for k in ("qat_bits", "qat_every") if getattr(self, k) is not None}
        return {"name": self.name, "family": self.family, "description": self.description,
                "compress": self.layer_specs(), "prune": _plain(self.prune) if self.prune else None,
                "train": self.train, "quant": self.quant, "base": self.base, "shape": self.shape_fields(),
                "distill": _plain(self.distill) if self.distill else None, "lr": self.lr, "epochs": self.epochs,
                **qat}

    def recipe(self) -> dict:
        """The method's part of a study run's cache key: ``to_dict`` without the fields left unset
        (``shape``, ``distill``, ``lr``, ``epochs``, ``qat_bits`` came later; runs cached before stay valid)."""
        d = self.to_dict()
        for key in ("shape", "distill", "lr", "epochs"):
            if not d[key]:
                del d[key]
        return d


def _plain(spec: object) -> dict:
    """A spec's fields as a dict, in declaration order, leaving out optional ones that are unset."""
    return {f.name: getattr(spec, f.name) for f in fields(spec) if getattr(spec, f.name) is not None}


# -- reading and validating ------------------------------------------------------------------------
def presets() -> list[str]:
    """The presets with a study file."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.toml"))


def load_methods(preset: str) -> list[Method]:
    """The study's methods on ``preset``, from ``lm/study/configs/<preset>.toml``."""
    return read_methods(_config(preset))


def _config(preset: str) -> Path:
    path = CONFIG_DIR / f"{preset}.toml"
    if not path.is_file():
        raise ValueError(f"no study methods for preset {preset!r}; presets with methods: {presets()}")
    return path


def load_finetune(preset: str) -> Finetune:
    """The study's fine-tuning recipe on ``preset``, from ``lm/study/configs/<preset>.toml``."""
    return read_finetune(_config(preset))


def read_finetune(path: str | Path) -> Finetune:
    """The ``[finetune]`` table of a study file, validated."""
    table = _read(path).get("finetune")
    where = f"{path}: [finetune]"
    if table is None:
        raise ValueError(f"{where}: missing")
    _typed(table, dict, where)
    kwargs = _fields(Finetune, table, where, nested={"regularization"})
    if "regularization" in table:
        given, place = table["regularization"], f"{where}: field 'regularization'"
        _typed(given, dict, place)
        missing = [f.name for f in fields(Regularization) if f.name not in given]
        if missing:
            raise ValueError(f"{place}: missing field {missing[0]!r} (give every regulariser's strength)")
        try:
            kwargs["regularization"] = Regularization(**_fields(Regularization, given, place))
        except ValueError as e:
            raise ValueError(f"{place}: {e}") from None
    try:
        return Finetune(**kwargs)
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None


def _read(path: str | Path) -> dict:
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"{path}: not valid TOML: {e}") from None
    _keys(data, {"finetune", "methods"}, f"{path}")
    return data


def read_methods(path: str | Path) -> list[Method]:
    """The methods of a TOML file of ``[[methods]]`` tables, validated; ``ValueError`` names the file,
    the method and the field of the first problem."""
    tables = _read(path).get("methods")
    if not isinstance(tables, list) or not tables:
        raise ValueError(f"{path}: expected one or more [[methods]] tables")
    methods: list[Method] = []
    for i, table in enumerate(tables):
        where = f"{path}: method {table.get('name', f'#{i + 1}')!r}"
        method = _method(table, where)
        if method.name in {m.name for m in methods}:
            raise ValueError(f"{where}: a second method of that name")
        if method.base and method.base not in {m.name for m in methods}:
            raise ValueError(f"{where}: field 'base': {method.base!r} is no method defined above it")
        methods.append(method)
    return methods


def _method(table: dict, where: str) -> Method:
    kwargs = _fields(Method, table, where, nested={"compress", "prune", "shape", "distill"})
    if "compress" in table:
        compress = table["compress"]
        _typed(compress, dict, f"{where}: field 'compress'")
        _keys(compress, set(PARTS), f"{where}: field 'compress'")
        kwargs["compress"] = {part: _spec(part, spec, f"{where}: field 'compress.{part}'")
                              for part, spec in compress.items()}
    for name, cls in (("prune", Prune), ("shape", Shape), ("distill", Distill)):
        if name in table:
            _typed(table[name], dict, f"{where}: field {name!r}")
            values = _fields(cls, table[name], f"{where}: field {name!r}")
            try:
                kwargs[name] = cls(**values)
            except ValueError as e:  # a value the type allows but the class refuses
                raise ValueError(f"{where}: field {name!r}: {e}") from None
    try:
        return Method(**kwargs)
    except ValueError as e:  # its message starts with the method's name, which ``where`` has said
        raise ValueError(f"{where}: {str(e).removeprefix(kwargs['name'] + ': ')}") from None


def _spec(part: str, table: object, where: str) -> LayerSpec:
    _typed(table, dict, where)
    kinds = PARTS[part]
    kind = table.get("type")
    if kind not in kinds:
        raise ValueError(f"{where}: field 'type' must be one of {sorted(kinds)}, got {kind!r}")
    cls = kinds[kind]
    return cls(**_fields(cls, {k: v for k, v in table.items() if k != "type"}, where))


def _fields(cls: type, table: dict, where: str, nested: set[str] = frozenset()) -> dict:
    """``table``'s values for ``cls``'s init fields, checked against their annotations (``nested``: left to the caller)."""
    hints = typing.get_type_hints(cls)
    init = [f for f in fields(cls) if f.init]
    _keys(table, {f.name for f in init}, where)
    missing = [f.name for f in init if f.name not in table and f.default is MISSING and f.default_factory is MISSING]
    if missing:
        raise ValueError(f"{where}: missing field {missing[0]!r}")
    out = {}
    for f in init:
        if f.name in table and f.name not in nested:
            _typed(table[f.name], hints[f.name], f"{where}: field {f.name!r}")
            out[f.name] = table[f.name]
    return out


def _keys(table: dict, allowed: set[str], where: str) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise ValueError(f"{where}: unknown key {unknown[0]!r}; allowed: {sorted(allowed)}")


def _typed(value: object, hint: object, where: str) -> None:
    """Raise unless ``value`` (as TOML gives it) fits ``hint``: an int is a float, a bool is no int."""
    if not _fits(value, hint):
        name = getattr(hint, "__name__", None) or str(hint).replace("typing.", "")
        raise ValueError(f"{where}: expected {name}, got {type(value).__name__} {value!r}")


def _fits(value: object, hint: object) -> bool:
    args = typing.get_args(hint)
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, a) for a in args)
    if hint is type(None):
        return value is None
    if origin is list:
        return isinstance(value, list) and all(_fits(v, args[0]) for v in value)
    if origin is dict or hint is dict:
        return isinstance(value, dict)
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, hint)  # type: ignore[arg-type]
