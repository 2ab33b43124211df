"""The Trainer: any ``nn.Module``, its optimizer and its data on one device, trained epoch by epoch.

A training step is Chainer's ``update_core``: the next batch, the model's
forward pass and the loss, ``loss.backward()``, ``optimizer.step()``. It is
written once and kept fast on both backends:

* the dataset moves to the device once, already normalized to the run's dtype;
* the model's parameters and gradients live in one flat buffer each
  (:func:`xpgrad.nn.flatten_parameters`), so the update is one pass (one
  kernel on a GPU) for the whole model;
* each epoch a permutation is drawn on the host (so CPU and GPU runs, and
  resumed runs, see the same batches) and batches are gathered on the device
  by a counter there (:mod:`.batches`); the learning rate, its schedule and
  the step count live in the optimizer's device memory; loss and accuracy are
  summed on the device and read back once per logging interval: so a step
  never waits for the host;
* with ``graph="on"`` (or ``"auto"`` on a GPU) that same step is recorded once
  as a CUDA graph and replayed (:func:`xpgrad.graph_step`); on the CPU there
  is nothing to record and the step runs as it is;
* with ``parallel`` (:class:`xpgrad.distributed.parallel.DataParallel`) the
  process is one rank of a data-parallel run: it takes its part of every batch
  and of the test set, its gradients are summed with the other ranks' before
  each update, its Dropout and BatchNorm2d layers see the global batch (the
  step runs in its :class:`~xpgrad.modeops.BatchSlice`), and the sums it
  reports are everyone's. Without it every hook
  is the identity (:class:`~xpgrad.distributed.parallel.Solo`).
"""

from __future__ import annotations

import math
import time

import numpy

from .. import backend, faults, nn
from ..backend.memory import peak_allocation
from ..checkpoint import MODEL_PREFIX, OPTIM_PREFIX, save_checkpoint
from ..distributed.parallel import Solo
from ..errors import CheckpointError, DivergenceError, ModelError, XpgradError
from ..graphstep import GraphStep
from ..optim import ConstantSchedule, CosineSchedule, make_optimizer
from ..tensor import Tensor, no_grad
from .batches import Batches
from .blame import BACKWARD, FORWARD, LOSS, UPDATE, Blame, StepFailure
from .config import Config
from .heads import make_head
from .inputs import Inputs, normalization
from .legacy import read_legacy
from .modelspec import ModelSpec

#: ``graph=`` values: "auto" records CUDA graphs on a GPU and runs the step as it is on the CPU.
GRAPH_MODES = ("off", "on", "auto")
#: Evaluation takes test rows in chunks that allocate at most about this many bytes (a CNN's im2col
#: buffer for 10,000 rows would be about 1 GB), and at most EVAL_ROWS rows (the MLP's whole test set).
EVAL_MEMORY, EVAL_ROWS, EVAL_PROBE_ROWS = 128 << 20, 10000, 64


def eval_rows(model, inputs, x_test, device, blame=None) -> int:
    """How many test rows one evaluation chunk takes: the model's forward pass (eval mode, no gradients) on
    :data:`EVAL_PROBE_ROWS` rows is measured, and the rows scaled to :data:`EVAL_MEMORY`. ``blame`` (a
    :class:`~.blame.Blame`) reports the model's failures."""
    probe = x_test[:EVAL_PROBE_ROWS]
    mode = model.training

    def forward():
        x = Tensor(inputs.normalize(probe))
        try:
            return model(x)
        except (Exception, SystemExit) as exc:
            if blame is not None:
                blame.evaluation(exc, None, x.shape, f"on {len(probe)} test rows, measuring the memory it needs")
            raise

    model.eval()
    try:
        with device, no_grad():
            used = peak_allocation(forward, device)
    finally:
        model.train(mode)
    per_row = max(1, -(-used // max(1, len(probe))))
    return int(max(1, min(EVAL_ROWS, EVAL_MEMORY // per_row)))


class Trainer:
    """A model (``config.model``), its optimizer and data on one device, trained epoch by epoch.

    ``graph``: "off" runs each step as it is; "on" records it as a CUDA graph
    on a GPU (an op that cannot be recorded is an error naming it); "auto" is
    "on" on a GPU, falling back to "off" with a warning if recording fails.

    What it holds: ``model`` (an :class:`xpgrad.nn.Module`, built from ``spec``,
    the :class:`ModelSpec` of ``config.model``, whose file's SHA-256 is
    ``model_sha256``), ``parameters`` (its :class:`~xpgrad.nn.FlatParameters`),
    ``optimizer``, ``head`` (the loss head) and ``blame`` (a :class:`~.blame.Blame`:
    a failure that is the model's becomes one line saying where and what it
    did); on ``device`` (whose array module is ``xp``) in ``dtype``: ``x_train``
    and ``x_test``, the images as
    (N, 1, H, W) uint8, normalized by ``inputs`` as batches are gathered
    (``batches``), ``t_train`` and ``t_test``, the labels as int32, and
    ``input_shape``, an image's (1, H, W). ``rng`` draws each epoch's batch
    order; ``epoch`` counts the epochs trained. ``parallel`` holds the
    data-parallel hooks: the ``parallel=`` argument, a
    :class:`~xpgrad.distributed.parallel.DataParallel` when the process is one
    rank of an ``xpgrad train --distributed`` job (its part of each batch and
    of the test set, gradients summed over the ranks, global sums), else
    :class:`~xpgrad.distributed.parallel.Solo`, whose every hook is the
    identity.
    """

    def __init__(self, config: Config, dataset, device="cpu", progress=True, log_every=50, graph="off",
                 parallel=None):
        if graph not in GRAPH_MODES:
            raise XpgradError(f"unknown graph mode {graph!r}; choose one of {', '.join(GRAPH_MODES)}")
        self.config, self.dataset, self.graph = config, dataset, graph
        self.parallel = Solo() if parallel is None else parallel
        self.device = backend.get_device(device)
        self.xp = self.device.xp
        self.progress, self.log_every = progress, log_every
        self.dtype = numpy.dtype(config.dtype)
        self.shift, self.scale = normalization(config, dataset.x_train)
        self.inputs = Inputs(self.shift, self.scale, self.dtype)
        with self.device:  # the images stay uint8 there; batches are normalized as they are gathered
            self.x_train = self.inputs.to_device(dataset.x_train, self.device)
            start, stop = self.parallel.part(len(dataset.y_test))  # this rank's part of the test set
            self.x_test = self.inputs.to_device(dataset.x_test[start:stop], self.device)
            self.t_train = backend.to_device(dataset.y_train.astype(numpy.int32), self.device)
            self.t_test = backend.to_device(dataset.y_test[start:stop].astype(numpy.int32), self.device)
        self.input_shape = tuple(self.x_train.shape[1:])
        self.spec = ModelSpec(config.model)
        self.model_sha256 = self.spec.sha256()
        self.model = self._build_model()
        self.parallel.share(self.model)
        self.parameters = self._flat_parameters()
        self.blame = Blame(self.spec, self.parameters, dataset.num_classes)
        kwargs = {"momentum": config.momentum} if config.optimizer == "momentum" else {}
        try:
            self.optimizer = self.parallel.optimizer(make_optimizer(config.optimizer, self.parameters, config.lr,
                                                                    schedule=self._schedule(), **kwargs))
        except ValueError as exc:
            raise XpgradError(str(exc)) from None
        self.head = make_head(config.head, dataset.num_classes)
        self.parallel.check(self.n_train, self.batch_size)
        x, t = self.x_train, self.t_train
        if self.batch_size >= self.n_train:  # one batch of every row, in order: this rank's part of them
            start, stop = self.parallel.part(self.n_train)
            x, t = x[start:stop], t[start:stop]
        self.batches = Batches(x, t, self.batch_size, self.device, self.inputs)
        # The batch order comes from its own generator (seeded apart from the
        # weights' initialization), and its state goes into checkpoints.
        self.rng = numpy.random.default_rng([config.seed, 1])
        self.epoch = 0
        self._steps = None
        # Whether steps are graph steps: "auto" records on a GPU only (on the CPU there is nothing to record).
        self._graph_steps = graph == "on" or (graph == "auto" and self.device.is_gpu)

    def _build_model(self) -> nn.Module:
        config = self.config
        options = {"hidden": config.hidden, "init": config.init, "input_bias": config.input_bias}
        model = self.spec.build(self.input_shape, self.dataset.num_classes, seed=config.seed, dtype=self.dtype,
                                options=options)
        model.to(device=self.device, dtype=self.dtype)
        with self.device:
            self.spec.check_output(model, self.inputs.normalize(self.x_train[:2]), self.dataset.num_classes)
        return model

    def _flat_parameters(self):
        try:
            return nn.flatten_parameters(self.model)
        except ValueError as exc:
            if self.spec.kind == "builtin":
                raise
            raise ModelError(f"{self.spec.named()}: its parameters cannot be trained as one buffer: {exc}") from None

    # -- sizes and schedule --------------------------------------------------

    @property
    def n_train(self) -> int:
        """The number of training images."""
        return self.x_train.shape[0]

    @property
    def batch_size(self) -> int:
        """Images per step: ``config.batch_size``, or all of them for 0 (or more than there are)."""
        b = self.config.batch_size
        return self.n_train if b == 0 or b >= self.n_train else b

    @property
    def steps_per_epoch(self) -> int:
        """Steps per epoch, the last batch a partial one when the batch size does not divide the images."""
        return -(-self.n_train // self.batch_size)

    def _schedule(self):
        if self.config.schedule == "constant":
            return ConstantSchedule()
        return CosineSchedule(self.config.epochs * self.steps_per_epoch)

    # -- the training step ---------------------------------------------------

    def _training_steps(self) -> list:
        """The step for a full batch, and one for a partial last batch if there is one, each recorded as a
        CUDA graph on a GPU when ``graph`` asks for it."""
        if self._steps is None:
            n, b = self.n_train, self.batch_size
            rows = [b] + ([n % b] if n % b and b < n else [])
            parts = [self.parallel.part(r) for r in rows]  # this rank's rows of each global batch
            self._steps = [self._graph_step(self._step_function(self.batches.batch(stop - start), r))
                           for r, (start, stop) in zip(rows, parts)]
        return self._steps

    def _step_function(self, batch, rows=None):
        """The step for ``batch``, this rank's part of global batches of ``rows`` rows (None: all of them)."""
        model, head, optimizer, stats, blame = self.model, self.head, self.optimizer, self.batches.stats, self.blame
        mine = batch.t.shape[0]
        rows = mine if rows is None else rows
        weight = self.parallel.loss_weight(mine, rows, head, self.device, self.dtype)
        part_of_batch = self.parallel.batch_slice(rows)  # what Dropout and BatchNorm2d see of the global batch
        x = Tensor(batch.x)

        def step():
            with part_of_batch:
                batch.load()
                phase, logits, loss = FORWARD, None, None
                try:  # costs nothing until it catches; the phase says where the model failed, if it does
                    logits = model(x)
                    phase = LOSS
                    loss = head(logits, batch.t, stats)
                    phase = BACKWARD
                    optimizer.zero_grad()
                    loss.backward(weight)
                    phase = UPDATE
                    optimizer.step()
                except (Exception, SystemExit) as exc:
                    blame.step(exc, phase, logits, loss, x.shape)  # raises StepFailure if the model is at fault
                    raise

        return step

    def _graph_step(self, step):
        if not self._graph_steps:
            return step
        return GraphStep(step, self.device, fallback=self.graph == "auto")

    @property
    def graph_enabled(self) -> bool:
        """Whether epochs replay recorded CUDA graphs (False on the CPU, before the first step, and after a
        fallback)."""
        return bool(self.captured_graphs())

    def captured_graphs(self) -> list:
        """The ``cupy.cuda.Graph`` objects epochs replay: the full batch's step first, then a partial last
        batch's."""
        return [s.graph for s in self._steps or () if getattr(s, "graph", None) is not None]

    # -- one epoch -----------------------------------------------------------

    def train_epoch(self, bar=None) -> dict:
        """Train one epoch; returns the epoch's mean training loss and accuracy, and its seconds."""
        start = time.perf_counter()
        order = self.rng.permutation(self.n_train).astype(numpy.int64) if self.batches.shuffled else None
        if order is not None:
            order = self.parallel.order(order, self.batch_size)
        with self.device:
            steps = self._training_steps()
            self.model.train()
            self.batches.begin_epoch(order)
            stats = self._run_steps(steps, bar)
            self.parallel.consolidate(self.optimizer)
            if self.batches.shuffled and self.batches.counted() != self.steps_per_epoch:
                raise RuntimeError(f"the batch counter reads {self.batches.counted()} after "
                                   f"{self.steps_per_epoch} steps")
            self.device.synchronize()
        self.epoch += 1
        return {**stats, "seconds": time.perf_counter() - start}

    def _run_steps(self, steps, bar) -> dict:
        """Run the epoch's steps, with the loss and correct-prediction sums on the device."""
        count, b, n = self.steps_per_epoch, self.batch_size, self.n_train
        loss_sum, correct = self.batches.stats
        full = count - (len(steps) - 1)
        pending = 0
        for k in range(count):
            try:
                steps[0 if k < full else 1]()
            except StepFailure as failure:
                raise failure.at(self.epoch + 1, k + 1) from None
            faults.reached("step:done")
            pending += 1
            if pending == self.log_every or k == count - 1:
                # The only host syncs in the epoch: once per logging interval.
                seen = min((k + 1) * b, n)
                total_loss, total_correct = self.parallel.sums(loss_sum, correct)
                mean_loss = total_loss / seen
                self.check_finite(mean_loss, k)
                if bar is not None:
                    bar.update(pending)
                    bar.set_postfix(loss=f"{mean_loss:.4f}", acc=f"{total_correct / seen:.4f}", refresh=False)
                pending = 0
        return {"train_loss": total_loss / n, "train_accuracy": total_correct / n}

    def check_finite(self, loss: float, step: int) -> None:
        """Raise :class:`DivergenceError` if ``loss`` (of 0-based ``step`` in this epoch) is NaN or inf."""
        if not math.isfinite(loss):
            # What is kept on disk is for the caller to say (xpgrad.training.run looks).
            raise DivergenceError(
                f"training diverged: the loss became {loss} in epoch {self.epoch + 1}, step {step + 1}; "
                f"lower --lr (now {self.config.lr:g}) or use another --recipe"
            )

    @property
    def eval_batch_size(self) -> int:
        """Test rows evaluated at a time: ``config.eval_batch_size`` (``--eval-batch-size``) when set, else as
        many as fit in :data:`EVAL_MEMORY` by a measured probe (:func:`eval_rows`), at most :data:`EVAL_ROWS`,
        then kept in the config, so the checkpoint records it and a resumed run sums its test loss alike."""
        if not self.config.eval_batch_size:
            self.config.eval_batch_size = eval_rows(self.model, self.inputs, self.x_test, self.device, self.blame)
        return self.config.eval_batch_size

    def evaluate(self, chunk=None) -> dict:
        """Mean loss and accuracy on the test set, in eval mode, ``chunk`` rows at a time (None:
        :attr:`eval_batch_size`)."""
        chunk = chunk or self.eval_batch_size
        xp, model = self.xp, self.model
        with self.device, no_grad():
            stats = (xp.zeros((), dtype=self.dtype), xp.zeros((), dtype=xp.int64))
            n = self.x_test.shape[0]
            model.eval()
            try:
                for start in range(0, n, chunk):
                    x = Tensor(self.inputs.normalize(self.x_test[start:start + chunk]))
                    t = self.t_test[start:start + chunk]
                    logits = None
                    try:
                        logits = model(x)
                        self.head(logits, t, stats)
                    except (Exception, SystemExit) as exc:
                        rows = f"test rows {start + 1}-{start + x.shape[0]} of {n}"
                        self.blame.evaluation(exc, logits, x.shape, rows)
                        raise
            finally:
                model.train()
            loss, correct = self.parallel.sums(*stats)
            n = len(self.dataset.y_test)  # every rank's part
            return {"test_loss": loss / n, "test_accuracy": correct / n}

    # -- checkpoints ---------------------------------------------------------

    def save(self, path, metrics=()) -> None:
        """Write the run's state to ``path`` atomically, with ``metrics`` (one row per completed epoch)."""
        save_checkpoint(
            path,
            state={k: backend.to_numpy(v) for k, v in self.model.state_dict().items()},
            optimizer_state=self.optimizer.state_dict(),
            rng_state=self.rng.bit_generator.state,
            epoch=self.epoch,
            config={**self.config.to_dict(), "model": str(self.spec), "normalization": [self.shift, self.scale]},
            model_sha256=self.model_sha256,
            dataset_checksum=self.dataset.checksum,
            metrics=metrics,
        )

    def restore(self, checkpoint) -> None:
        """Continue from an open :class:`xpgrad.checkpoint.Checkpoint`: the model's state, the optimizer's,
        the RNG's and the epoch."""
        path = checkpoint.path
        if checkpoint.dataset_checksum != self.dataset.checksum:
            raise CheckpointError(
                f"checkpoint {path} was trained on different {self.config.dataset} data "
                f"(checksum {checkpoint.dataset_checksum[:12]}…, these files {self.dataset.checksum[:12]}…); "
                "use the same data files or start a new run"
            )
        if checkpoint.format >= 3:
            state = checkpoint.read(MODEL_PREFIX, {k: (v.shape, v.dtype) for k, v in self.model.state_dict().items()})
            expected = {k: (v.shape, None if v.ndim == 0 else v.dtype) for k, v in self.optimizer.state_dict().items()}
            optimizer_state = checkpoint.read(OPTIM_PREFIX, expected, "this optimizer")
        else:
            state, optimizer_state = read_legacy(checkpoint, self.model, self.optimizer, self.config.input_bias)
        try:
            self.model.load_state_dict(state)
            self.optimizer.load_state_dict(optimizer_state)
            self.rng.bit_generator.state = checkpoint.rng_state
        except (ValueError, KeyError, TypeError) as exc:
            raise CheckpointError(f"checkpoint {path} does not match this model: {exc}") from None
        self.epoch = checkpoint.epoch
