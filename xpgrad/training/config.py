"""What defines a run: the recipes, and the Config saved in every checkpoint."""

from __future__ import annotations

import dataclasses
import math

from ..errors import XpgradError
from ..nn.init import INITS
from ..optim import OPTIMIZERS
from .heads import HEADS
from .modelspec import check_spec

#: What each recipe sets (``--recipe``); command-line options override single fields.
RECIPES = {
    # A modern recipe: He init, standardized inputs, Adam with a cosine decay.
    # On Fashion-MNIST (seeds 0 and 1) 10 epochs gave 88.8-88.9 % test
    # accuracy and 15 epochs 89.1 %; 15 keeps a margin over the 88.5 % goal.
    "default": dict(
        epochs=15, batch_size=128, optimizer="adam", lr=2e-3, dtype="float32", init="he",
        input_bias=False, head="cross_entropy", normalize="standardize", schedule="cosine",
    ),
    # The built-in cnn (xpgrad.models.cnn: two 5x5 convolutions, 80k parameters) with the default
    # recipe's optimizer and schedule. On Fashion-MNIST (seed 0) 15 epochs gave 91.2 % and 25 gave
    # 90.9 % (it overfits: the test loss rises from epoch 12), and dropout 0.5 instead of 0.25 gave
    # 91.2 % and, for seed 1, 90.8 %; so 15 epochs, a few minutes on a 2-core CPU.
    "cnn": dict(
        model="cnn", hidden=(128,), epochs=15, batch_size=128, optimizer="adam", lr=2e-3, dtype="float32",
        init="he", input_bias=False, head="cross_entropy", normalize="standardize", schedule="cosine",
    ),
    # The notebook, exactly: full batch, W ~ N(0, 1), lr 1e-5, summed loss,
    # float64, 50 epochs, unfused Softmax -> Log, bias as a column of ones.
    "notebook": dict(
        epochs=50, batch_size=0, optimizer="sgd", lr=1e-5, dtype="float64", init="normal",
        input_bias=True, head="notebook", normalize="scale", schedule="constant",
    ),
}
#: The dtypes a run may train in (``--dtype``).
DTYPES = ("float32", "float64")
NORMALIZATIONS = ("scale", "standardize")
SCHEDULES = ("constant", "cosine")


# ---------------------------------------------------------------------------
# The rule for each field, shared by the command line (xpgrad.cli parses the
# text, then applies the rule) and by checkpoints (Config.from_dict): a value
# that the command line refuses is refused in a checkpoint too. Each rule
# returns the value (normalized) or raises ValueError with the reason.


def whole_number(minimum: int):
    """The rule for a whole number of at least ``minimum`` (bools are not numbers here)."""
    def check(value):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"expected a whole number, got {value!r}")
        if value < minimum:
            words = "must not be negative" if minimum == 0 else f"must be at least {minimum}"
            raise ValueError(f"{words}, got {value}")
        return value
    return check


def positive_number(value) -> float:
    """The rule for a finite number above zero (the learning rate)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"expected a number, got {value!r}")
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"must be a positive number, got {value}")
    return float(value)


def widths(value) -> tuple:
    """The rule for hidden layer widths: one or more whole numbers of at least 1."""
    ok = isinstance(value, (list, tuple)) and value and all(
        isinstance(w, int) and not isinstance(w, bool) and w >= 1 for w in value)
    if not ok:
        raise ValueError(f"must be one or more positive widths, like 100 or 1024,1024; got {value!r}")
    return tuple(value)


def one_of(choices):
    """The rule for one of ``choices`` (looked up when checked, so registries may grow)."""
    def check(value):
        options = tuple(choices() if callable(choices) else choices)
        if not isinstance(value, str) or value not in options:
            raise ValueError(f"must be one of {', '.join(options)}; got {value!r}")
        return value
    return check


def _flag(value) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {value!r}")
    return value


def _fraction(value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise ValueError(f"must be a number in [0, 1), got {value!r}")
    return float(value)


def _datasets():
    from ..data import CUSTOM, DATASETS  # noqa: PLC0415 - the registry may gain entries (tests add some)

    return (*DATASETS, CUSTOM)


RULES = {
    "model": check_spec, "dataset": one_of(_datasets), "recipe": one_of(RECIPES), "epochs": whole_number(1),
    "batch_size": whole_number(0), "optimizer": one_of(OPTIMIZERS), "lr": positive_number,
    "dtype": one_of(DTYPES), "seed": whole_number(0), "hidden": widths, "init": one_of(INITS),
    "input_bias": _flag, "head": one_of(HEADS), "normalize": one_of(NORMALIZATIONS),
    "schedule": one_of(SCHEDULES), "momentum": _fraction, "threads": whole_number(0),
    "eval_batch_size": whole_number(0),
}


@dataclasses.dataclass
class Config:
    """Everything that defines a run (saved in every checkpoint).

    ``hidden``, ``init`` and ``input_bias`` shape the built-in ``mlp``; a
    model of your own (``model`` = ``path/to/file.py:NAME``) builds its layers.

    The command line's options: ``model``, ``dataset``, ``recipe``, ``epochs``,
    ``batch_size`` (0: the whole training set in one batch), ``optimizer``,
    ``lr``, ``dtype``, ``seed``, ``threads`` (the BLAS threads the run used;
    0: not known) and ``eval_batch_size`` (test rows per evaluation chunk; 0:
    sized by memory). What only a recipe sets: ``head`` (``cross_entropy``, fused,
    or ``notebook``, Softmax then Log), ``normalize`` (``standardize`` or
    ``scale`` to [0, 1]), ``schedule`` (``cosine`` or ``constant``) and
    ``momentum`` (for ``--optimizer momentum``).
    """

    model: str = "mlp"
    dataset: str = "mnist"
    recipe: str = "default"
    epochs: int = 15
    batch_size: int = 128  # 0 means the full training set in one batch
    optimizer: str = "adam"
    lr: float = 2e-3
    dtype: str = "float32"
    seed: int = 0
    hidden: tuple = (100,)
    init: str = "he"
    input_bias: bool = False
    head: str = "cross_entropy"
    normalize: str = "standardize"
    schedule: str = "cosine"
    momentum: float = 0.9
    threads: int = 0  # the BLAS threads the run used (0: not known); --threads sets them, a resumed run may change them
    eval_batch_size: int = 0  # test rows per evaluation chunk (0: sized by memory); a resumed run may change it

    @classmethod
    def from_recipe(cls, recipe: str = "default", **overrides) -> "Config":
        """The recipe's config with the given fields replaced (None: keep the recipe's); validated."""
        if recipe not in RECIPES:
            raise XpgradError(f"unknown recipe {recipe!r}; choose one of {', '.join(RECIPES)}")
        fields = {**RECIPES[recipe], **{k: v for k, v in overrides.items() if v is not None}}
        config = cls(recipe=recipe, **fields)
        config.validate()
        return config

    @classmethod
    def from_dict(cls, d) -> "Config":
        """A config saved with :meth:`to_dict` (in a checkpoint), checked by the command line's rules.

        Unknown keys are ignored, missing ones take their defaults; a value of
        the wrong type or out of range raises XpgradError naming the field.
        """
        if not isinstance(d, dict):
            raise XpgradError(f"the config is {type(d).__name__}, not a dict of fields")
        known = {f.name for f in dataclasses.fields(cls)}
        config = cls(**{k: v for k, v in d.items() if k in known})
        for name, check in RULES.items():
            try:
                setattr(config, name, check(getattr(config, name)))
            except ValueError as exc:
                raise XpgradError(f"config field {name}: {exc}") from None
        return config

    def to_dict(self) -> dict:
        """The fields as a dict of plain values, as a checkpoint stores them (``from_dict`` reads it back)."""
        d = dataclasses.asdict(self)
        d["hidden"] = list(self.hidden)
        return d

    def summary(self) -> str:
        """The fields a recipe sets, in a few words: ``mlp, adam at lr 0.002, 15 epochs, batches of 128, ...``."""
        batch = "full batch" if self.batch_size == 0 else f"batches of {self.batch_size}"
        return (f"{self.model}, {self.optimizer} at lr {self.lr:g}, {self.epochs} epochs, {batch}, {self.dtype}, "
                f"{self.init} init, {self.normalize}d inputs")

    def validate(self) -> None:
        """Check every field by :data:`RULES`; raise XpgradError naming the option (``--batch-size ...``)."""
        for name, check in RULES.items():
            try:
                setattr(self, name, check(getattr(self, name)))
            except ValueError as exc:
                raise XpgradError(f"--{name.replace('_', '-')} {exc}") from None
