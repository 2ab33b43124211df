"""Training epochs of several implementations behind one interface, run in turns.

An implementation (xpgrad, PyTorch, JAX; eager, captured or compiled) has:

* ``name``, ``steps_per_epoch``;
* ``warmup()``: compile or capture ahead of the first epoch (may do nothing);
  it must leave the model, optimizer state and step counters as they were;
* ``epoch()``: train one epoch, returning ``train_loss`` and ``train_accuracy``;
* ``sync()``: wait for the device's queued work;
* ``params()``: the parameters as NumPy arrays by the names of the xpgrad
  model's ``state_dict`` and in its layout (``1.weight`` of shape
  (784, hidden), ``1.bias``, ``3.weight``, ...; PyTorch's dotted names,
  xpgrad's (in, out) weights);
* optionally ``after_first_epoch()``, which raises :class:`Unavailable` when
  the implementation turns out not to be what it claims (a graph that fell
  back to eager), and ``info()``, a dict of facts for the JSON.

Every implementation starts from the same initial weights (those of the
xpgrad trainer it is built from) and draws its batch order from its own
generator seeded as the trainer's, so epoch k sees the same batches everywhere.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import inspect
import signal
import sys
import time

import numpy

from bench import common
from xpgrad import backend
from xpgrad.training import Trainer

REFERENCE = "xpgrad_eager"
WARMUP_RESERVE = 20.0  # seconds kept for the timed epochs (and what follows) when a compile starts


class Unavailable(Exception):
    """An implementation that cannot run here; the message says why."""


@dataclasses.dataclass
class Setup:
    """What every implementation copies from one xpgrad trainer: data, model, weights, batches, schedule.

    ``x`` (N, 1, 28, 28) and ``t`` (N,) int32 are the trainer's normalized
    device arrays (NumPy or CuPy); ``layers`` the kinds of the model's layers
    in order (``("Flatten", "Linear", "ReLU", "Linear")``); ``params`` the
    initial weights as host arrays, by ``state_dict`` name (``1.weight`` is
    layer 1's (in, out) weight); ``lr_table[s]`` the learning rate of
    optimizer step ``s`` (0-based, the last entry repeats past the end of
    the schedule).
    """

    x: object
    t: object
    layers: tuple
    params: dict
    batch: int
    seed: int
    optimizer: str
    lr_table: numpy.ndarray
    log_every: int
    on_gpu: bool

    @property
    def n(self) -> int:
        return int(self.x.shape[0])

    @property
    def steps_per_epoch(self) -> int:
        return -(-self.n // self.batch)

    def batch_order(self) -> numpy.random.Generator:
        """A generator that yields the trainer's permutations, epoch by epoch."""
        return numpy.random.default_rng([self.seed, 1])

    def lr_at(self, step: int) -> float:
        return float(self.lr_table[min(step, len(self.lr_table) - 1)])

    def linears(self) -> list[tuple[str, str | None]]:
        """``(weight name, bias name or None)`` of each Linear layer, in order."""
        return [(f"{i}.weight", f"{i}.bias" if f"{i}.bias" in self.params else None)
                for i, kind in enumerate(self.layers) if kind == "Linear"]


#: The layer kinds every implementation can mirror.
LAYER_KINDS = ("Flatten", "Linear", "ReLU")


def host_state(model) -> dict:
    """An xpgrad model's ``state_dict`` as host copies (NumPy), by name."""
    return {k: backend.to_numpy(v).copy() for k, v in model.state_dict().items()}


def setup_from(trainer) -> Setup:
    """The :class:`Setup` of an xpgrad trainer that has not trained yet (its model a Sequential of
    :data:`LAYER_KINDS`, as the built-in ``mlp`` is)."""
    layers = tuple(type(m).__name__ for m in trainer.model)
    if set(layers) - set(LAYER_KINDS):
        raise ValueError(f"the benchmarks mirror Sequentials of {', '.join(LAYER_KINDS)} only, got {layers}")
    opt = trainer.optimizer
    return Setup(
        x=trainer.inputs.normalize(trainer.x_train), t=trainer.t_train, layers=layers, params=host_state(trainer.model),
        batch=trainer.batch_size, seed=trainer.config.seed, optimizer=trainer.config.optimizer,
        lr_table=numpy.array([opt.lr_at(s) for s in range(opt.schedule.steps + 1)]),
        log_every=trainer.log_every, on_gpu=trainer.device.is_gpu)


def accepts_graph(trainer_class) -> bool:
    """Whether this tree's Trainer takes ``graph=`` (issue 10's CUDA-graph step)."""
    return "graph" in inspect.signature(trainer_class).parameters


class XpgradEpochs:
    """``Trainer.train_epoch``, eager (``graph="off"``) or replayed as CUDA graphs (``graph="on"``)."""

    def __init__(self, name, config, dataset, device, graph=None, trainer_class=Trainer):
        kwargs = {}
        if graph is not None:
            if not accepts_graph(trainer_class):
                if graph != "off":
                    raise Unavailable("this tree's Trainer has no graph= option (issue 10, item 1, not merged)")
            else:
                kwargs["graph"] = graph
        self.name, self.graph = name, graph
        self.trainer = trainer_class(config, dataset, device=device, progress=False, **kwargs)
        self.steps_per_epoch = self.trainer.steps_per_epoch

    def warmup(self) -> None:
        """Nothing ahead of time: the first epoch compiles kernels and, with graphs, captures them."""

    def epoch(self) -> dict:
        return self.trainer.train_epoch()

    def after_first_epoch(self) -> None:
        if self.graph == "on" and not getattr(self.trainer, "graph_enabled", False):
            where = "" if self.trainer.device.is_gpu else "; on the CPU there is no CUDA graph to record"
            raise Unavailable(f"the Trainer fell back to eager (graph_enabled is False after the first epoch{where})")

    def sync(self) -> None:
        self.trainer.device.synchronize()

    def params(self) -> dict:
        return host_state(self.trainer.model)

    def info(self) -> dict:
        return {"graph": self.graph, "graph_enabled": getattr(self.trainer, "graph_enabled", None)}


# ---------------------------------------------------------------------------
# Running in turns


def timed_epoch(impl) -> dict:
    """One epoch of ``impl`` with its wall time, from an idle device to an idle device."""
    impl.sync()
    start = time.perf_counter()
    stats = impl.epoch()
    impl.sync()
    return {**stats, "seconds": time.perf_counter() - start}


def _fail(record: dict, what: str, exc: BaseException) -> None:
    record["status"] = "unavailable" if isinstance(exc, Unavailable) else "failed"
    record["note"] = f"{what}: {exc}" if isinstance(exc, Unavailable) else f"{what}: {common.one_line(exc)}"


def warm_up(impls: dict, records: dict, deadline, compile_limit=None, reserve=WARMUP_RESERVE) -> None:
    """Each implementation's warm-up; those that compile (``bounded = True``) get at most
    ``compile_limit`` seconds, and never the last ``reserve`` seconds before ``deadline``."""
    for name, impl in impls.items():
        limit = None
        if getattr(impl, "bounded", False):
            if deadline.left() - reserve < 1:
                records[name].update(status="skipped", note="warm-up: no time left in the budget to compile")
                continue
            limit = min(compile_limit or float("inf"), deadline.left() - reserve)
            limit = None if limit == float("inf") else limit
        start = time.perf_counter()
        try:
            with time_limit(limit, f"{name} warm-up"):
                impl.warmup()
            impl.sync()
        except Exception as exc:  # report it and go on with the others
            _fail(records[name], "warm-up", exc)
        records[name]["warmup_seconds"] = time.perf_counter() - start


def run_in_turns(impls: dict, repeats: int, deadline=None, compile_limit=None, reserve=WARMUP_RESERVE) -> dict:
    """Warm up, then one epoch each, then ``repeats`` rounds of one epoch each, in turns.

    Returns per name: ``status`` ("ok", "failed", "unavailable", "skipped"),
    ``note``, ``warmup_seconds``, ``first`` (the first epoch's stats),
    ``params_after_first`` (host arrays), ``epochs`` (the timed epochs' stats)
    and ``rounds_note`` when the budget cut the rounds short.
    """
    deadline = deadline or Deadline(None)
    records = {name: {"status": "ok", "note": None, "warmup_seconds": None, "epochs": []} for name in impls}
    warm_up(impls, records, deadline, compile_limit, reserve)
    live = lambda: [n for n in impls if records[n]["status"] == "ok"]  # noqa: E731
    for name in live():
        try:
            records[name]["first"] = timed_epoch(impls[name])
            getattr(impls[name], "after_first_epoch", lambda: None)()
            records[name]["params_after_first"] = impls[name].params()
        except Exception as exc:
            _fail(records[name], "first epoch", exc)
    for done in range(repeats):
        names = live()
        last_round = sum(records[n]["epochs"][-1]["seconds"] if records[n]["epochs"] else records[n]["first"]["seconds"]
                         for n in names)
        if not deadline.allows(1.5 * last_round + 2):
            for n in names:
                records[n]["rounds_note"] = f"{done} of {repeats} timed epochs: the time budget ran out"
            break
        for name in names:
            try:
                records[name]["epochs"].append(timed_epoch(impls[name]))
            except Exception as exc:
                _fail(records[name], f"epoch {done + 2}", exc)
    return records


def parity(records: dict, reference: str = REFERENCE) -> dict:
    """Per implementation, the max relative parameter difference from ``reference`` after the first epoch."""
    ref = records.get(reference, {}).get("params_after_first")
    if ref is None:
        return {}
    return {name: max_relative_difference(r["params_after_first"], ref)
            for name, r in records.items() if r.get("params_after_first") is not None}


def epoch_summaries(records: dict) -> dict:
    """Per implementation with timed epochs: :func:`common.summarize` of their seconds."""
    return {name: common.summarize([e["seconds"] for e in r["epochs"]])
            for name, r in records.items() if r["status"] == "ok" and r["epochs"]}


def paired_ratios(records: dict, name: str, reference: str) -> list[float]:
    """Epoch-by-epoch ratios ``name / reference`` over the rounds both ran (the paired spread)."""
    a, b = records.get(name, {}).get("epochs", []), records.get(reference, {}).get("epochs", [])
    return [x["seconds"] / y["seconds"] for x, y in zip(a, b)]


# ---------------------------------------------------------------------------
# Time budgets, comparing trained parameters, freeing the GPU between cases


class Deadline:
    """A point in wall-clock time a benchmark must finish by (``seconds`` from now; None: no limit)."""

    def __init__(self, seconds: float | None):
        self.end = None if seconds is None else time.monotonic() + seconds

    def left(self) -> float:
        """Seconds left (infinite without a limit)."""
        return float("inf") if self.end is None else self.end - time.monotonic()

    def allows(self, seconds: float) -> bool:
        """Whether ``seconds`` of work still fit."""
        return self.left() >= seconds


@contextlib.contextmanager
def time_limit(seconds: float | None, what: str):
    """Raise ``TimeoutError`` in the main thread if the block runs longer than ``seconds``.

    For warm-ups that cannot be bounded otherwise (torch.compile): the
    compile is abandoned where it stands, and the caller leaves that
    implementation out. A compiler may catch the exception and carry on
    with part of the work left uncompiled, so it is raised again every
    second, and once more when the block ends if it fired at all: a warm-up
    that ran out of time never counts as done. ``None`` means no limit.
    """
    if not seconds or seconds <= 0:
        yield
        return
    message = f"{what} took longer than {seconds:.0f} s"
    fired = []

    def expire(signum, frame):
        fired.append(True)
        raise TimeoutError(message)

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds, 1.0)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    if fired:
        raise TimeoutError(message + " (and the exception was caught inside)")


def max_relative_difference(params: dict, reference: dict) -> float:
    """Largest ``max|p - r| / max|r|`` over the arrays of two name -> NumPy array dicts.

    Each array is measured against its own scale, so a bias vector near zero
    does not turn rounding noise into a large ratio.
    """
    worst = 0.0
    for name, r in reference.items():
        p = numpy.asarray(params[name], dtype=numpy.float64)
        r = numpy.asarray(r, dtype=numpy.float64)
        if p.shape != r.shape:
            raise ValueError(f"{name}: shape {p.shape} against {r.shape}")
        scale = float(numpy.abs(r).max()) if r.size else 0.0
        diff = float(numpy.abs(p - r).max()) if r.size else 0.0
        worst = max(worst, diff / scale if scale > 0 else diff)
    return worst


def free_device_memory() -> None:
    """Give cached GPU memory back (CuPy's pool, PyTorch's cache) between benchmark cases."""
    gc.collect()
    if backend.gpu_available():
        backend.cupy.get_default_memory_pool().free_all_blocks()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()
