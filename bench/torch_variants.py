"""The epoch as a PyTorch user would write it: eager, captured in ``torch.cuda.graph``, or ``torch.compile``d.

All three train an ``nn.Sequential`` of ``nn.Flatten``, ``nn.Linear`` and
``nn.ReLU`` laid out as the xpgrad model (:func:`torch_model`) with
``F.cross_entropy`` from a :class:`bench.turns.Setup` (the xpgrad trainer's
data on its device, shared through DLPack, its initial weights by name, batch
order and learning-rate schedule), gathering each batch on the device:

* ``eager``: ``torch.optim.Adam`` (or SGD), the learning rate set per step
  in ``param_groups`` as an LR scheduler does;
* ``graph``: the whole step captured once with ``torch.cuda.graph`` and
  replayed, with everything that changes per step in device memory, as
  xpgrad's graph step keeps it: the epoch's permutation (copied once per
  epoch into a fixed buffer), a batch counter, a step counter that reads the
  learning rate from a device table, capturable Adam, and the loss and
  accuracy sums. The partial last batch runs the same step eagerly;
* ``compile``: the step (forward, loss, backward, ``opt.step()``) under
  ``torch.compile(mode="reduce-overhead")``, capturable Adam with a tensor
  learning rate filled per step, the batch gathered eagerly (as a data
  loader hands batches over); the partial last batch runs uncompiled.

On the CPU ``graph`` runs its device-resident step without capture and
``compile`` uses Inductor's CPU backend (no CUDA graphs): the code paths run,
the timings mean nothing for a GPU.
"""

from __future__ import annotations

import numpy

from bench.turns import Setup, Unavailable

MODES = ("eager", "graph", "compile")
WARMUP_STEPS = 3  # compile / record / replay for reduce-overhead; enough to initialize Adam's state


def torch_model(torch, layers, params: dict, device):
    """The xpgrad model as a ``torch.nn.Sequential``: the same ``layers`` (kinds, in order) at the same
    positions, so the two ``state_dict``s share their names, with ``params`` (xpgrad's state by name,
    host arrays) copied in; weights transposed, as PyTorch stores them (out, in)."""
    nn = torch.nn
    modules = []
    for i, kind in enumerate(layers):
        if kind == "Linear":
            W, b = params[f"{i}.weight"], params.get(f"{i}.bias")
            linear = nn.Linear(W.shape[0], W.shape[1], bias=b is not None, dtype=torch.from_numpy(W).dtype)
            with torch.no_grad():
                linear.weight.copy_(torch.from_numpy(W.T.copy()))
                if b is not None:
                    linear.bias.copy_(torch.from_numpy(b))
            modules.append(linear)
        else:
            modules.append({"Flatten": nn.Flatten, "ReLU": nn.ReLU}[kind]())
    return nn.Sequential(*modules).to(device)


def xpgrad_layout(model) -> dict:
    """A :func:`torch_model`'s parameters as host arrays by name, in xpgrad's layout (weights (in, out))."""
    return {name: (p.detach().cpu().numpy().T if name.endswith("weight") else p.detach().cpu().numpy()).copy()
            for name, p in model.named_parameters()}


class TorchEpochs:
    """One of :data:`MODES`; the interface of :mod:`bench.turns`."""

    def __init__(self, setup: Setup, mode: str, name: str | None = None):
        import torch

        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if setup.on_gpu and not torch.cuda.is_available():
            raise Unavailable("PyTorch has no CUDA here")
        if mode != "eager" and setup.optimizer != "adam":
            raise Unavailable(f"the device-resident PyTorch step implements Adam only, not {setup.optimizer}")
        self.torch, self.setup, self.mode = torch, setup, mode
        self.name = name or f"torch_{mode}"
        self.bounded = mode == "compile"
        self.cuda = setup.on_gpu
        self.steps_per_epoch = setup.steps_per_epoch
        self.full = setup.n // setup.batch  # full batches; the rest is the partial last batch
        self.x = torch.from_dlpack(setup.x)
        self.t = torch.from_dlpack(setup.t).long()
        self.device = self.x.device
        self.model = self._model()
        self.initial = [p.detach().clone() for p in self.model.parameters()]
        self.opt = self._optimizer()
        self.rng = setup.batch_order()
        self.step_count = 0  # host count, for the eager learning rate
        zeros = lambda dtype: torch.zeros((), dtype=dtype, device=self.device)  # noqa: E731
        self.loss_sum, self.correct = zeros(self.x.dtype), zeros(torch.int64)
        self.graph = self.compiled = None
        if mode == "graph":
            self.perm2d = torch.zeros((max(self.full, 1), setup.batch), dtype=torch.int64, device=self.device)
            self.k = torch.zeros(1, dtype=torch.int64, device=self.device)  # batch within the epoch
            self.gstep = torch.zeros(1, dtype=torch.int64, device=self.device)  # optimizer steps so far
            self.lr_table = torch.tensor(setup.lr_table, dtype=self.x.dtype, device=self.device)
        if mode == "compile":
            # One compiled step per object: forget earlier ones (another shape of bench.scaling), and
            # keep shapes static (the partial last batch runs uncompiled) rather than recompiling as dynamic.
            torch._dynamo.reset()
            self.compiled = torch.compile(self._forward_backward_update, mode="reduce-overhead", dynamic=False)

    # -- construction ----------------------------------------------------------

    def _model(self):
        return torch_model(self.torch, self.setup.layers, self.setup.params, self.device)

    def _optimizer(self):
        torch, params = self.torch, self.model.parameters()
        if self.mode == "eager":
            cls = torch.optim.Adam if self.setup.optimizer == "adam" else torch.optim.SGD
            return cls(params, lr=self.setup.lr_at(0))
        self.lr_t = torch.tensor(self.setup.lr_at(0), dtype=self.x.dtype, device=self.device)
        # A tensor learning rate needs capturable=True with foreach; capturable is CUDA-only.
        return torch.optim.Adam(params, lr=self.lr_t, capturable=self.cuda, foreach=self.cuda)

    # -- the step ----------------------------------------------------------------

    def _forward_backward_update(self, x, t):
        """Forward, loss, backward and update on one batch; the batch's mean loss and hits."""
        logits = self.model(x)
        loss = self.torch.nn.functional.cross_entropy(logits, t)
        correct = (logits.argmax(dim=1) == t).sum()
        loss.backward()
        self.opt.step()
        return loss.detach(), correct

    def _accumulate(self, loss, correct, rows: int) -> None:
        self.loss_sum += loss * rows
        self.correct += correct

    def _resident_step(self, idx) -> None:
        """The graph mode's step: learning rate and counters on the device, nothing from the host."""
        self.lr_t.copy_(self.lr_table.index_select(0, self.gstep.clamp(max=len(self.lr_table) - 1)).view(()))
        self.gstep += 1
        x, t = self.x.index_select(0, idx), self.t.index_select(0, idx)
        self._accumulate(*self._forward_backward_update(x, t), idx.shape[0])

    def _graph_full_step(self) -> None:
        idx = self.perm2d.index_select(0, self.k).view(-1)
        self.k += 1
        self._resident_step(idx)

    def _host_step(self, idx, fn) -> None:
        """The eager and compile modes' step: the learning rate from the host, gradients reset first."""
        lr = self.setup.lr_at(self.step_count)
        if self.mode == "eager":
            for group in self.opt.param_groups:
                group["lr"] = lr
        else:
            self.lr_t.fill_(lr)
        self.opt.zero_grad(set_to_none=True)
        x, t = self.x.index_select(0, idx), self.t.index_select(0, idx)
        self._accumulate(*fn(x, t), idx.shape[0])

    def _step(self, s: int, perm) -> None:
        """Step ``s`` of the epoch; ``perm`` is the epoch's permutation on the device."""
        b = self.setup.batch
        full_batch = s < self.full
        if self.mode == "graph":
            if full_batch and self.graph is not None:
                self.graph.replay()
            elif full_batch:  # no capture (CPU): the same step, gradients zeroed as a replay overwrites them
                self.opt.zero_grad(set_to_none=False)
                self._graph_full_step()
            else:  # zero (not free) the gradients the graph owns, then the same step eagerly
                self.opt.zero_grad(set_to_none=False)
                self._resident_step(perm[s * b:])
        else:
            fn = self.compiled if full_batch and self.compiled is not None else self._forward_backward_update
            self._host_step(perm[s * b:(s + 1) * b], fn)
        self.step_count += 1

    # -- the interface of bench.turns ---------------------------------------

    def epoch(self) -> dict:
        torch, setup = self.torch, self.setup
        n, b = setup.n, setup.batch
        perm = torch.from_numpy(self.rng.permutation(n).astype(numpy.int64)).to(self.device)
        if self.mode == "graph":
            self.perm2d.copy_(perm[:self.full * b].view(self.full, b))
            self.k.zero_()
        self.loss_sum.zero_()
        self.correct.zero_()
        for s in range(self.steps_per_epoch):
            self._step(s, perm)
            if (s + 1) % setup.log_every == 0 or s == self.steps_per_epoch - 1:
                float(self.loss_sum)  # the trainer reads its loss back as often
        return {"train_loss": float(self.loss_sum) / n, "train_accuracy": int(self.correct) / n}

    def warmup(self) -> None:
        """Compile (``compile``) or capture (``graph``) on CUDA, then reset model and optimizer."""
        if self.mode == "eager" or (self.mode == "graph" and not self.cuda):
            return
        torch = self.torch
        idx = torch.arange(self.setup.batch, device=self.device)
        if self.mode == "compile":
            for _ in range(WARMUP_STEPS):
                self._host_step(idx, self.compiled)
        else:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(WARMUP_STEPS):
                    self.opt.zero_grad(set_to_none=True)
                    self.k.zero_()
                    self._graph_full_step()
            torch.cuda.current_stream().wait_stream(side)
            self.opt.zero_grad(set_to_none=True)  # backward then allocates .grad in the graph's pool
            graph = torch.cuda.CUDAGraph()
            # thread_local: JAX's and CuPy's runtimes live in this process too; only this thread is capturing.
            with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                self._graph_full_step()
            self.graph = graph
        self.sync()
        self.reset()

    def reset(self) -> None:
        """Back to the initial weights and a fresh optimizer, in place (captured addresses stay valid)."""
        torch = self.torch
        with torch.no_grad():
            for p, p0 in zip(self.model.parameters(), self.initial):
                p.copy_(p0)
            for state in self.opt.state.values():
                for value in state.values():
                    if torch.is_tensor(value):
                        value.zero_()
            for counter in (getattr(self, "k", None), getattr(self, "gstep", None), self.loss_sum, self.correct):
                if counter is not None:
                    counter.zero_()
        self.step_count = 0

    def sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize()

    def params(self) -> dict:
        return xpgrad_layout(self.model)

    def info(self) -> dict:
        facts = {"mode": self.mode, "captured": self.graph is not None, "torch": self.torch.__version__}
        if self.mode == "compile":
            from torch._dynamo.utils import counters

            facts["compile_counters"] = {k: dict(counters[k]) for k in ("stats", "inductor") if k in counters}
            facts["cudagraph_skips"] = counters["inductor"].get("cudagraph_skips", 0)
        return facts

    def fixed_step(self):
        """One eager step on a fixed batch, as a function (for step timings and kernel counts)."""
        idx = self.torch.arange(self.setup.batch, device=self.device)
        return lambda: self._host_step(idx, self._forward_backward_update)
