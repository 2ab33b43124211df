"""When a model fails in a run: whose fault it is, and the one line that says so.

A model of your own (a file or module, see :mod:`.modelspec`) runs inside
xpgrad when it is imported and built, in every training step's forward and
backward pass, and in evaluation. A failure that is the model's becomes one
:class:`~xpgrad.errors.ModelError` line naming the model, where it failed
(``the forward pass in training (epoch 2, step 5)``), what it did (``raised
ValueError: ...``, ``called sys.exit(3)``) and what was expected or how to fix
it; ``XPGRAD_DEBUG=1`` keeps the traceback instead.

Whose fault it is:

* importing, building and the forward pass run the model's code, and its
  layers are its choice: whatever they raise, and a ``sys.exit`` anywhere in
  the model's code, is the model's (a model's SystemExit is not the command's);
* logits the loss head refuses are the model's when they are not
  ``(rows, num_classes)`` floating-point logits;
* the backward pass and the update run xpgrad's machinery. A failure there is
  the model's when its traceback passes through the model's code (a Function
  of its own), when it is one of backprop's checks of what a Function returned
  or of an input modified in place, or when the model's structure explains it:
  logits that do not depend on the parameters, a parameter that gets no
  gradient, a parameter whose data was replaced.

Anything else is xpgrad's own bug and keeps its traceback, even in the
forward pass: a Python error (AttributeError, IndexError, ...) raised inside
xpgrad's code rather than by one of its checks (a ``raise`` there); so does an error of the
environment (its type from CuPy or mpi4py: CUDA, cuBLAS, NCCL, MPI), every
failure of a built-in model (``mlp``, ``cnn``), which is xpgrad's code, and a
failure while a step is being recorded as a CUDA graph (the recording says
why it failed, and ``--graph auto`` trains on without it).
KeyboardInterrupt (Ctrl-C and the signals xpgrad turns into it) and
MemoryError (the run says what to shrink) are never caught here, nor, in a
step or evaluation, xpgrad's own errors (a step that a CUDA graph cannot
record says so itself).
"""

from __future__ import annotations

import contextlib
import linecache
import os
import sys
import sysconfig

from .. import backprop
from ..backend import graph as _graph
from ..errors import ModelError, XpgradError, one_line
from ..tensor import Tensor

_HINT = " (XPGRAD_DEBUG=1 shows the traceback)"
# Errors of the machine, not of a model: CUDA, cuBLAS and NCCL (CuPy), MPI (mpi4py).
_ENVIRONMENT = frozenset({"cupy", "cupy_backends", "cupyx", "mpi4py"})
# What Python raises for a bug, rather than what a check raises: in xpgrad's own code, xpgrad's bug.
_BUGS = (AttributeError, NameError, KeyError, IndexError, ZeroDivisionError, AssertionError, RecursionError)
#: Where a training step is when it fails: the phases of :meth:`xpgrad.training.Trainer`'s step.
FORWARD, LOSS, BACKWARD, UPDATE = "forward", "loss", "backward", "update"


def debugging() -> bool:
    """Whether ``XPGRAD_DEBUG`` asks for tracebacks."""
    return os.environ.get("XPGRAD_DEBUG", "").strip() not in ("", "0")


def did(exc: BaseException) -> str:
    """What the model's code did: ``raised TypeName: message``, or ``called sys.exit(3)``."""
    if isinstance(exc, SystemExit):
        return f"called sys.exit({'' if exc.code is None else repr(exc.code)})"
    return f"raised {one_line(exc, 300)}"


def fail(exc: BaseException, message: str):
    """Raise ``ModelError(message)`` for the model's ``exc``; with XPGRAD_DEBUG=1 re-raise ``exc`` itself (a SystemExit
    as a RuntimeError caused by it, so that the traceback is shown rather than the process quietly exiting)."""
    if not debugging():
        raise ModelError(message) from None
    if isinstance(exc, SystemExit):
        raise RuntimeError(message) from exc
    raise exc


@contextlib.contextmanager
def reporting(before: str, after: str, expected: str):
    """An exception (or SystemExit) from the model's code in the block is one ModelError line: ``before``,
    what the code did, ``after``, then what was ``expected``."""
    try:
        yield
    except (ModelError, MemoryError):
        raise
    except (Exception, SystemExit) as exc:
        fail(exc, f"{before} {did(exc)}{after}; expected {expected}{_HINT}")


def logits_problem(out, want: tuple) -> str | None:
    """What is wrong with ``out`` as logits of shape ``want``, as ``gave ...; expected ...``; None if nothing."""
    if isinstance(out, Tensor) and tuple(out.shape) == want and out.dtype.kind == "f":
        return None
    got = f"a {out.dtype} Tensor of shape {tuple(out.shape)}" if isinstance(out, Tensor) else type(out).__name__
    return f"gave {got}; expected floating-point logits of shape {want} (one row per image, one column per class)"


class StepFailure(ModelError):
    """The model failed in a training step; :meth:`at` is the same line with the epoch and step in it."""

    def __init__(self, words):
        self.words = words  # where -> the message
        super().__init__(words("a training step"))

    def at(self, epoch: int, step: int) -> ModelError:
        """The message for the failure in ``step`` (1-based) of ``epoch``."""
        return ModelError(self.words(f"epoch {epoch}, step {step}"))


class Blame:
    """Decides whose fault a failure of ``spec``'s model is (see the module docstring) and says so.

    ``parameters``: the model's :class:`~xpgrad.nn.FlatParameters`; ``num_classes``: the logits' columns.
    """

    def __init__(self, spec, parameters, num_classes: int):
        self.spec, self.parameters, self.num_classes = spec, parameters, num_classes
        self.where = spec.named()
        self._folders = spec.source_folders()
        self._library = _library_folders()
        self._xpgrad = self._library[:1]  # xpgrad's own folder
        self._files = {}  # file name -> whether it is the model's code

    def step(self, exc: BaseException, phase: str, logits, loss, shape) -> None:
        """Raise a :class:`StepFailure` if ``exc``, raised in ``phase`` of a training step on a batch of
        ``shape``, is the model's fault; return (for the caller to re-raise ``exc``) if it is not."""
        if self._not_the_models(exc) or _graph.recording:
            return
        batch = f"a ({', '.join(map(str, shape))}) batch"
        if phase == FORWARD or isinstance(exc, SystemExit) or (phase == BACKWARD and self._raised_by_model(exc)):
            what = {FORWARD: "the forward pass", LOSS: "the forward pass", BACKWARD: "the backward pass"}.get(
                phase, "the update")
            expected = (f"(N, {self.num_classes}) logits" if phase in (FORWARD, LOSS) else
                        "the model's own Functions to return one gradient per input" if phase == BACKWARD else
                        "the model's code to leave the update to the optimizer")
            self._fail(exc, lambda at: f"{self.where}: {what} in training ({at}, {batch}) {did(exc)}; "
                                       f"expected {expected}{_HINT}")
        if phase == LOSS:
            problem = logits_problem(logits, (shape[0], self.num_classes))
            if problem:
                self._fail(exc, lambda at: f"{self.where}: the forward pass in training ({at}) on {batch} {problem}")
            return
        replaced = [name for name, t, view in zip(self.parameters.names, self.parameters.tensors,
                                                  self.parameters.views) if t.data is not view]
        if replaced:
            it = _it(replaced)
            self._fail(exc, lambda at: f"{self.where}: the model replaced the data of {_named(replaced)} in "
                                       f"training ({at}) (p.data = ...), so the optimizer's update no longer "
                                       f"reaches {it}; update parameters in place (with no_grad(): "
                                       "p -= ..., or p.data[...] = new) or not at all")
        if phase == BACKWARD and loss is not None and not loss.requires_grad:
            self._fail(exc, lambda at: f"{self.where}: the model's logits in training ({at}) do not depend on its "
                                       "parameters (made from .data, as a new Tensor, or under no_grad()), so no "
                                       "gradient reaches them; compute the logits from the input with Tensor "
                                       "operations and the model's layers")
        unused = [name for name, t in self.parameters if t.grad is None] if phase == UPDATE else []
        if unused:
            it = _it(unused)
            self._fail(exc, lambda at: f"{self.where}: {_named(unused)} {'gets' if it == 'it' else 'get'} no "
                                       f"gradient in training ({at}): the model's forward does not use {it} (or "
                                       f"only through .data); use {it} in forward, or remove {it} from the model")

    def evaluation(self, exc: BaseException, logits, shape, words: str) -> None:
        """Raise a ModelError if ``exc``, raised evaluating a batch of ``shape`` (``words`` say which), is the
        model's fault: its forward pass raised (``logits`` None), or the logits it gave are wrong."""
        if self._not_the_models(exc):
            return
        if logits is None or isinstance(exc, SystemExit):
            fail(exc, f"{self.where}: the forward pass in evaluation ({words}) {did(exc)}; expected "
                      f"(N, {self.num_classes}) logits{_HINT}")
        problem = logits_problem(logits, (shape[0], self.num_classes))
        if problem:
            fail(exc, f"{self.where}: the forward pass in evaluation ({words}) {problem}")

    def _not_the_models(self, exc: BaseException) -> bool:
        """Whether ``exc`` is never the model's fault, wherever it was raised: a built-in model, xpgrad's own
        errors, memory, the environment's errors, and a Python error raised inside xpgrad (a bug there)."""
        if self.spec.kind == "builtin" or isinstance(exc, (XpgradError, MemoryError)):
            return True
        if type(exc).__module__.partition(".")[0] in _ENVIRONMENT:
            return True
        if not isinstance(exc, _BUGS):
            return False
        tb = exc.__traceback__
        while tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
        if tb is None or not _under(os.path.realpath(tb.tb_frame.f_code.co_filename), self._xpgrad):
            return False
        # A `raise` in xpgrad is one of its checks (ModuleList's index, say): about the model's use of it.
        return not linecache.getline(tb.tb_frame.f_code.co_filename, tb.tb_lineno).lstrip().startswith("raise")

    def _fail(self, exc, words) -> None:
        if debugging():
            fail(exc, words("a training step"))
        raise StepFailure(words) from None

    def _raised_by_model(self, exc: BaseException) -> bool:
        """Whether ``exc``'s traceback passes through the model's code, or is one of backprop's checks of what
        the model's graph did (a Function's gradients, an input modified in place)."""
        tb, last = exc.__traceback__, None
        while tb is not None:
            last = tb.tb_frame.f_code.co_filename
            if self._is_model_code(last):
                return True
            tb = tb.tb_next
        return isinstance(exc, RuntimeError) and last is not None and \
            os.path.realpath(last) == os.path.realpath(backprop.__file__)

    def _is_model_code(self, filename: str) -> bool:
        if filename not in self._files:
            path = os.path.realpath(filename)
            self._files[filename] = _under(path, self._folders) and not _under(path, self._library)
        return self._files[filename]


def _named(names) -> str:
    """``parameter a.weight``, or ``parameters a.weight, b.weight, b.bias and 2 more``."""
    listed = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    return f"parameter{'s' if len(names) > 1 else ''} {listed}"


def _it(names) -> str:
    return "it" if len(names) == 1 else "them"


def _under(path: str, folders) -> bool:
    return any(path == folder or path.startswith(folder.rstrip(os.sep) + os.sep) for folder in folders)


def _library_folders() -> list[str]:
    """Folders of code that is never a model's: xpgrad's, the standard library's, installed packages'."""
    import xpgrad  # noqa: PLC0415

    paths = sysconfig.get_paths()
    folders = [os.path.dirname(xpgrad.__file__), *(paths.get(k) for k in ("stdlib", "platstdlib", "purelib",
                                                                         "platlib"))]
    folders += [p for p in sys.path if "site-packages" in p or "dist-packages" in p]
    return [os.path.realpath(f) for f in folders if f]
