"""``--model SPEC``: which model a run trains, and how it is built and checked.

SPEC is a built-in model's name (:data:`xpgrad.models.BUILTIN`: ``mlp``), or
your own, as uvicorn and gunicorn name an application:

* ``path/to/file.py:NAME``: the file is run as a module (its folder first on
  ``sys.path``, so it may import its neighbours); the run records the file's
  absolute path and SHA-256, and a resumed run refuses a file that changed;
* ``package.module:NAME``: imported as usual (the current folder on ``sys.path``).

``NAME`` is called as ``NAME(input_shape=(1, 28, 28), num_classes=10)`` with
the dataset's real values, inside :func:`xpgrad.nn.init.defaults` (the run's
seed and dtype), and must return an :class:`xpgrad.nn.Module` with parameters
that maps a ``(N, *input_shape)`` Tensor to ``(N, num_classes)`` logits. Any
way it fails is one line naming the file, what happened and what was
expected; ``XPGRAD_DEBUG=1`` shows the traceback instead. So is a failure in
training or evaluation that is the model's (:mod:`.blame` says which are).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import os
import re
import sys

from .. import nn
from ..errors import ModelError
from ..files import open_regular
from ..models import BUILTIN
from ..tensor import Tensor, no_grad
from .blame import logits_problem, reporting

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_MODULE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
_HINT = "use a built-in model (" + ", ".join(BUILTIN) + "), path/to/file.py:NAME or package.module:NAME"


def check_spec(text) -> str:
    """The rule for ``--model`` (and a checkpoint's ``model``): the spec's syntax; ValueError if malformed."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"expected a model name or PATH:NAME, got {text!r}")
    if ":" not in text:
        if text not in BUILTIN:
            raise ValueError(f"unknown model {text!r}; {_HINT}")
        return text
    where, _, name = text.rpartition(":")
    if not _IDENTIFIER.match(name) or not where:
        raise ValueError(f"{text!r} does not end in :NAME, a Python name; {_HINT}")
    if not _is_file(where) and not _MODULE.match(where):
        raise ValueError(f"{where!r} is neither a .py file nor a dotted module name; {_HINT}")
    return text


def _is_file(where: str) -> bool:
    return where.endswith(".py") or "/" in where or os.sep in where


class ModelSpec:
    """A parsed ``--model`` value: ``kind`` is ``builtin``, ``file`` or ``module``.

    ``text`` is the value (a file's path made absolute), ``where`` the file or module and ``name`` the
    callable in it; ``path`` the file's absolute path (None unless ``kind`` is ``file``).
    """

    def __init__(self, text: str):
        self.text = check_spec(text)
        self.where, _, self.name = self.text.rpartition(":") if ":" in self.text else ("", "", self.text)
        self.kind = "builtin" if not self.where else "file" if _is_file(self.where) else "module"
        self.path = os.path.abspath(os.path.expanduser(self.where)) if self.kind == "file" else None
        if self.path is not None:
            self.text = f"{self.path}:{self.name}"

    def __str__(self) -> str:
        return self.text

    def sha256(self) -> str | None:
        """The file's SHA-256 (files only; None otherwise); ModelError if it cannot be read."""
        if self.path is None:
            return None
        try:
            with open_regular(self.path) as f:
                return hashlib.sha256(f.read()).hexdigest()
        except FileNotFoundError:
            raise ModelError(f"model file {self.path} does not exist; pass --model path/to/file.py:NAME") from None
        except OSError as exc:
            raise ModelError(f"model file {self.path} cannot be read ({exc.strerror or exc})") from None

    def factory(self):
        """The function that builds the model."""
        if self.kind == "builtin":
            return BUILTIN[self.name]
        module = self._load_file() if self.kind == "file" else self._import()
        fn = getattr(module, self.name, None)
        if fn is None:
            raise ModelError(f"{self.named()} defines no {self.name}; expected a function or class {self.name}"
                             f"(input_shape, num_classes) that returns an xpgrad.nn.Module")
        if not callable(fn):
            raise ModelError(f"{self.named()}: {self.name} is a {type(fn).__name__}, not a function or class")
        return fn

    def named(self) -> str:
        """How messages name the model: ``model file PATH``, ``model module NAME``, or ``model`` (built-in)."""
        return {"file": f"model file {self.path}", "module": f"model module {self.where}"}.get(self.kind, "model")

    def source_folders(self) -> list[str]:
        """The folders of the model's code (a file's folder, a module's top-level package; none for a built-in
        model), whose frames in a traceback make a failure the model's (:mod:`.blame`)."""
        if self.kind == "file":
            return [os.path.realpath(os.path.dirname(self.path))]
        top = sys.modules.get(self.where.split(".")[0]) if self.kind == "module" else None
        if top is None:
            return []
        folders = list(getattr(top, "__path__", None) or [os.path.dirname(getattr(top, "__file__", None) or "")])
        return [os.path.realpath(f) for f in folders if f]

    def _load_file(self):
        self.sha256()  # a missing or unreadable file is one line
        name = "xpgrad_model_" + hashlib.sha256(self.path.encode()).hexdigest()[:16]
        spec = importlib.util.spec_from_file_location(name, self.path)
        module = importlib.util.module_from_spec(spec)
        with reporting(self.named(), " when run", "a file that defines the model"), \
                _on_path(os.path.dirname(self.path)):
            spec.loader.exec_module(module)
        return module

    def _import(self):
        with reporting(f"importing {self.named()}", "", "an importable module"), _on_path(os.getcwd()):
            return importlib.import_module(self.where)

    def build(self, input_shape, num_classes: int, *, seed: int, dtype, options=None) -> nn.Module:
        """The model, built in ``nn.init.defaults(seed, dtype)``; ``options`` go to built-in models only."""
        fn = self.factory()
        call = f"{self.name}(input_shape={tuple(input_shape)}, num_classes={num_classes})"
        kwargs = dict(options or {}) if self.kind == "builtin" else {}
        with reporting(f"{self.named()}: {call}", "", "an xpgrad.nn.Module"), \
                nn.init.defaults(seed=seed, dtype=dtype):
            model = fn(input_shape=tuple(input_shape), num_classes=num_classes, **kwargs)
        if not isinstance(model, nn.Module):
            raise ModelError(f"{self.named()}: {call} returned {type(model).__name__}, not an xpgrad.nn.Module")
        if not any(True for _ in model.parameters()):
            raise ModelError(f"{self.named()}: {call} returned a Module with no parameters, so there is nothing "
                             "to train; give it layers such as nn.Linear")
        return model

    def check_output(self, model, sample, num_classes: int) -> None:
        """Run ``model`` on ``sample`` (a few rows of data, in eval mode, without gradients) and check that
        it gives (rows, num_classes) floating-point logits."""
        call = f"the model's forward on a ({', '.join(map(str, sample.shape))}) batch"
        mode = model.training
        model.eval()
        try:
            with reporting(f"{self.named()}: {call}", "", f"(N, {num_classes}) logits"), no_grad():
                out = model(Tensor(sample))
        finally:
            model.train(mode)
        problem = logits_problem(out, (sample.shape[0], num_classes))
        if problem:
            raise ModelError(f"{self.named()}: {call} {problem}")


@contextlib.contextmanager
def _on_path(folder: str):
    """``folder`` first on ``sys.path`` in the block."""
    sys.path.insert(0, folder)
    try:
        yield
    finally:
        with contextlib.suppress(ValueError):
            sys.path.remove(folder)


def resumed_spec(recorded: str, sha256: str, given: str | None, checkpoint_path: str) -> str:
    """The ``--model`` a resumed run (or ``eval``) uses: the checkpoint's ``recorded`` spec, or ``given``, the
    same model's file moved elsewhere. A file must still hold what it held (``sha256``), or ModelError says
    what differs."""
    old = ModelSpec(recorded)
    new = ModelSpec(given) if given is not None else old
    if new.kind != old.kind or new.name != old.name or (new.kind != "file" and new.text != old.text):
        raise ModelError(f"--model {given} is not the model checkpoint {checkpoint_path} was trained with "
                         f"({old.text}); drop --model to resume, or start a new run")
    if new.kind != "file":
        return new.text
    if not os.path.exists(new.path):
        raise ModelError(f"model file {new.path}, which checkpoint {checkpoint_path} was trained with, does not "
                         "exist; put it back, or pass --model with the path it has now")
    now = new.sha256()
    if sha256 and now != sha256:
        raise ModelError(f"model file {new.path} has changed since checkpoint {checkpoint_path} was written "
                         f"(sha256 {now[:12]}…, then {sha256[:12]}…); restore the file as it was, or start a new run")
    return new.text
