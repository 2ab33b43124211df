"""The Trainer: a model, its optimizer and its data on one device, trained epoch by epoch.

The loop is written once against ``xp`` and kept fast on both backends:

* the dataset moves to the device once, already normalized to the run's dtype;
* each epoch a permutation is drawn on the host (so CPU and GPU runs, and
  resumed runs, see the same batches) and batches are gathered on the device;
* loss and accuracy are summed on the device and read back only once per
  logging interval, so there is no host sync per step;
* with ``graph="on"`` (or ``"auto"`` on a GPU) the steps are the
  device-resident step of :mod:`.graphstep`, which a GPU records once as a
  CUDA graph and replays; on the CPU that step computes exactly what the
  eager one does.
"""

from __future__ import annotations

import math
import time
import warnings

import numpy

from .. import backend
from ..checkpoint import save_checkpoint
from ..errors import CheckpointError, DivergenceError, XpgradError
from ..model import MLP
from ..optim import make_optimizer
from . import graphstep
from .config import Config
from .heads import make_head
from .inputs import normalization, to_device_inputs


#: ``graph=`` values: "auto" records CUDA graphs on a GPU and trains eagerly on the CPU.
GRAPH_MODES = ("off", "on", "auto")


class Trainer:
    """A model, its optimizer and data on one device, trained epoch by epoch.

    ``graph``: "off" runs the eager step; "on" the device-resident step
    (:mod:`.graphstep`), recorded as a CUDA graph on a GPU and run as it is
    on the CPU; "auto" is "on" on a GPU and "off" on the CPU.
    """

    def __init__(self, config: Config, dataset, device="cpu", progress=True, log_every=50, graph="off"):
        if graph not in GRAPH_MODES:
            raise XpgradError(f"unknown graph mode {graph!r}; choose one of {', '.join(GRAPH_MODES)}")
        self.config = config
        self.dataset = dataset
        self.device = backend.get_device(device)
        self.xp = self.device.xp
        self.progress = progress
        self.log_every = log_every
        self.dtype = numpy.dtype(config.dtype)
        self.shift, self.scale = normalization(config, dataset.x_train)
        with self.device:
            self.x_train = to_device_inputs(dataset.x_train, self.shift, self.scale, self.dtype, self.device)
            self.x_test = to_device_inputs(dataset.x_test, self.shift, self.scale, self.dtype, self.device)
            self.t_train = backend.to_device(dataset.y_train.astype(numpy.int32), self.device)
            self.t_test = backend.to_device(dataset.y_test.astype(numpy.int32), self.device)
        sizes = (self.x_train.shape[1], *config.hidden, dataset.num_classes)
        self.model = MLP(sizes, init=config.init, input_bias=config.input_bias, dtype=self.dtype,
                         device=self.device, seed=config.seed)
        kwargs = {"momentum": config.momentum} if config.optimizer == "momentum" else {}
        try:
            # The optimizer sees the model's flat buffers as one parameter, so each
            # step is one update (one fused kernel on the GPU) for the whole model.
            self.optimizer = make_optimizer(config.optimizer, {"all": self.model.param_buffer}, config.lr, **kwargs)
            self._flat_grads = {"all": self.model.grad_buffer}
        except ValueError as exc:
            raise XpgradError(str(exc)) from None
        self.head = make_head(config.head, dataset.num_classes)
        # The batch order comes from its own generator (seeded apart from the
        # weights' initialization), and its state goes into checkpoints.
        self.rng = numpy.random.default_rng([config.seed, 1])
        self.epoch = 0
        self.graph = graph
        self._runner = None
        self._graph_failure = None  # why the resident step is not used, once that is known
        resident = graph == "on" or (graph == "auto" and self.device.is_gpu)
        if resident and graphstep.unsupported(config):
            self._stop_graphs(graphstep.unsupported(config))

    # -- sizes and schedule --------------------------------------------------

    @property
    def n_train(self) -> int:
        return self.x_train.shape[0]

    @property
    def batch_size(self) -> int:
        b = self.config.batch_size
        return self.n_train if b == 0 or b >= self.n_train else b

    @property
    def steps_per_epoch(self) -> int:
        return -(-self.n_train // self.batch_size)

    def lr_at(self, step: int) -> float:
        """The learning rate for optimizer step ``step`` (0-based)."""
        if self.config.schedule == "constant":
            return self.config.lr
        total = self.config.epochs * self.steps_per_epoch
        return self.config.lr * 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))

    # -- the device-resident step and its graphs ------------------------------

    @property
    def graph_enabled(self) -> bool:
        """Whether epochs replay a captured CUDA graph (False on the CPU, and after a fallback to eager)."""
        return self.device.is_gpu and self._resident() and (self._runner is None or self._runner.failed is None)

    def captured_graphs(self) -> list:
        """The ``cupy.cuda.Graph`` objects epochs replay: the full-batch step first, then a partial
        last batch's; empty before the first epoch, on the CPU, and without graphs."""
        if self._runner is None:
            return []
        return [g for g in self._runner.graphs if g is not None]

    def _resident(self) -> bool:
        """Whether steps are the device-resident step."""
        wanted = self.graph == "on" or (self.graph == "auto" and self.device.is_gpu)
        return wanted and self._graph_failure is None

    def _stop_graphs(self, reason: str) -> None:
        self._graph_failure, self._runner = reason, None
        warnings.warn(f"{reason}; training without CUDA graphs", RuntimeWarning, stacklevel=3)

    def _schedule(self):
        """Per step of the coming epoch, the optimizer's schedule row, as the eager step computes it."""
        first, opt = self.optimizer.step_count, self.optimizer
        rows = [opt.schedule_row(self.lr_at(first + k), first + k + 1) for k in range(self.steps_per_epoch)]
        return numpy.array(rows, dtype=numpy.float64)

    # -- one epoch -----------------------------------------------------------

    def train_epoch(self, bar=None) -> dict:
        """Train one epoch; returns the epoch's mean training loss and accuracy, and its seconds."""
        n = self.n_train
        start = time.perf_counter()
        order = None if self.batch_size == n else self.rng.permutation(n).astype(numpy.int64)
        with self.device:
            stats = self._resident_epoch(order, bar) if self._resident() else None
            if stats is None:
                stats = self._eager_epoch(order, bar)
            self.device.synchronize()
        self.epoch += 1
        return {**stats, "seconds": time.perf_counter() - start}

    def _eager_epoch(self, order, bar) -> dict:
        xp, b = self.xp, self.batch_size
        perm = None if order is None else backend.to_device(order, self.device)
        loss_sum = xp.zeros((), dtype=self.dtype)
        correct = xp.zeros((), dtype=xp.int64)

        def run_step(k):
            if perm is None:
                x, t = self.x_train, self.t_train
            else:
                idx = perm[k * b:(k + 1) * b]
                x, t = self.x_train[idx], self.t_train[idx]
            loss, n_correct = self.step(x, t)
            xp.add(loss_sum, loss * t.shape[0], out=loss_sum)
            xp.add(correct, n_correct, out=correct)

        return self._run_steps(run_step, loss_sum, correct, bar)

    def _resident_epoch(self, order, bar) -> dict | None:
        """The epoch through the device-resident step; None if its first step on a GPU failed (then
        nothing was updated, and the caller trains the epoch eagerly)."""
        if self._runner is None:
            self._runner = graphstep.GraphRunner(self, capture=self.device.is_gpu)
        schedule = self._schedule()
        self.device.synchronize()  # the graphs' stream does not wait for the default stream
        try:
            with self._runner.epoch(order, schedule) as arrays:
                stats = self._run_steps(self._runner.run, arrays.loss_sum, arrays.correct, bar)
        except graphstep.GraphStepFailed as exc:
            self._stop_graphs(f"the graph step failed ({exc})")
            return None
        opt = self.optimizer
        opt.step_count += len(schedule)
        opt.lr = float(schedule[-1, 0])
        return stats

    def _run_steps(self, run_step, loss_sum, correct, bar) -> dict:
        """Run the epoch's steps, ``run_step(k)``, with the loss and correct-prediction sums on the device."""
        steps, b, n = self.steps_per_epoch, self.batch_size, self.n_train
        pending = 0
        for k in range(steps):
            run_step(k)
            pending += 1
            if pending == self.log_every or k == steps - 1:
                # The only host syncs in the epoch: once per logging interval.
                seen = min((k + 1) * b, n)
                mean_loss = float(loss_sum) / seen
                self.check_finite(mean_loss, k)
                if bar is not None:
                    bar.update(pending)
                    bar.set_postfix(loss=f"{mean_loss:.4f}", acc=f"{int(correct) / seen:.4f}", refresh=False)
                pending = 0
        return {"train_loss": float(loss_sum) / n, "train_accuracy": int(correct) / n}

    def step(self, x, t):
        """One optimizer step on the batch ``(x, t)``; returns the batch's mean loss and
        its number of correct predictions, both as 0-d arrays on the device (no host sync)."""
        model, head, opt = self.model, self.head, self.optimizer
        logits = model.forward(x)
        loss = head.forward(logits, t)
        model.backward(head.backward())
        opt.lr = self.lr_at(opt.step_count)
        opt.step(self._flat_grads)
        return loss, (logits.argmax(axis=1) == t).sum()

    def check_finite(self, loss: float, step: int) -> None:
        """Raise :class:`DivergenceError` if ``loss`` (of 0-based ``step`` in this epoch) is NaN or inf."""
        if not math.isfinite(loss):
            # What is kept on disk is for the caller to say (xpgrad.training.run looks).
            raise DivergenceError(
                f"training diverged: the loss became {loss} in epoch {self.epoch + 1}, step {step + 1}; "
                f"lower --lr (now {self.config.lr:g}) or use another --recipe"
            )

    def evaluate(self, chunk=10000) -> dict:
        """Mean loss and accuracy on the test set."""
        xp = self.xp
        with self.device:
            loss_sum = xp.zeros((), dtype=self.dtype)
            correct = xp.zeros((), dtype=xp.int64)
            n = self.x_test.shape[0]
            for start in range(0, n, chunk):
                x, t = self.x_test[start:start + chunk], self.t_test[start:start + chunk]
                logits = self.model.forward(x)
                loss_sum += self.head.forward(logits, t) * t.shape[0]
                correct += (logits.argmax(axis=1) == t).sum()
            return {"test_loss": float(loss_sum) / n, "test_accuracy": int(correct) / n}

    # -- checkpoints ---------------------------------------------------------

    def save(self, path, metrics=()) -> None:
        """Write the run's state to ``path`` atomically, with ``metrics`` (one row per completed epoch)."""
        save_checkpoint(
            path,
            params=self.model.state_dict(),
            optimizer_state=self.optimizer.state_dict(),
            rng_state=self.rng.bit_generator.state,
            epoch=self.epoch,
            config={**self.config.to_dict(), "normalization": [self.shift, self.scale]},
            dataset_checksum=self.dataset.checksum,
            metrics=metrics,
        )

    def restore(self, checkpoint: dict, path: str) -> None:
        """Load parameters, optimizer state, RNG state and epoch from a loaded checkpoint."""
        if checkpoint["dataset_checksum"] != self.dataset.checksum:
            raise CheckpointError(
                f"checkpoint {path} was trained on different {self.config.dataset} data "
                f"(checksum {checkpoint['dataset_checksum'][:12]}…, these files {self.dataset.checksum[:12]}…); "
                "use the same data files or start a new run"
            )
        try:
            self.model.load_state_dict(checkpoint["params"])
            self.optimizer.load_state_dict(checkpoint["optimizer"])
            self.rng.bit_generator.state = checkpoint["rng_state"]
        except (ValueError, KeyError, TypeError) as exc:
            raise CheckpointError(f"checkpoint {path} does not match this model: {exc}") from None
        self.epoch = checkpoint["epoch"]
