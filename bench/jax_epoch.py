"""The epoch as a JAX user would write it: a ``jax.jit`` step in a Python loop, or the whole epoch as one ``lax.scan``.

Both train the MLP of a :class:`bench.turns.Setup` (its data copied to the
JAX device once and flattened to (N, 784), its initial weights by name, batch
order and learning-rate table)
with Adam written out as xpgrad computes it, the bias corrections to full
float32 precision (see :func:`update`), so that after an epoch the
parameters agree with xpgrad's to about 1e-6. The
training state (parameters, Adam's moments, the step counter, the batch
counter, the loss and accuracy sums) is one pytree that each call donates
and gets back, so nothing is copied between steps:

* ``jit``: one compiled step per batch; the batch's indices are read on the
  device from the epoch's permutation by the batch counter;
* ``scan``: one compiled call per epoch, ``lax.scan`` over the permutation's
  rows, the form JAX users hold up as overhead-free.

The partial last batch runs a second compiled step (its own shape). Matrix
products run at full float32 precision (``jax_default_matmul_precision =
highest``), as xpgrad's and PyTorch's do; JAX's default on a GPU would allow
TF32. ``XLA_PYTHON_CLIENT_PREALLOCATE`` is set to false before JAX starts so
that it shares the GPU with CuPy and PyTorch instead of taking 75% of it.
"""

from __future__ import annotations

import math
import os
import warnings

import numpy

from bench.turns import Setup, Unavailable

MODES = ("jit", "scan")
BETA1, BETA2, EPS = 0.9, 0.999, 1e-8  # xpgrad's and PyTorch's Adam defaults


def import_jax(on_gpu: bool):
    """JAX on the wanted platform, or :class:`Unavailable` with the reason."""
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    try:
        import jax
    except ImportError as exc:
        raise Unavailable(f"JAX is not installed ({exc})") from None
    jax.config.update("jax_default_matmul_precision", "highest")
    if on_gpu and jax.default_backend() != "gpu":
        raise Unavailable(f"JAX has no GPU backend here (default backend: {jax.default_backend()})")
    return jax


def _forward(params, x):
    import jax.numpy as jnp

    h = x
    for i, (W, b) in enumerate(params, start=1):
        h = h @ W + b
        if i < len(params):
            h = jnp.maximum(h, 0)
    return h


def _loss(params, x, t):
    import jax
    import jax.numpy as jnp

    logits = _forward(params, x)
    logp = jax.nn.log_softmax(logits, axis=1)
    return -jnp.mean(jnp.take_along_axis(logp, t[:, None], axis=1)), logits


def update(state, X, T, idx, lr_table):
    """One training step on the rows ``idx``: the new state (Adam as xpgrad computes it)."""
    import jax
    import jax.numpy as jnp

    x, t = X[idx], T[idx]
    (loss, logits), grads = jax.value_and_grad(_loss, has_aux=True)(state["params"], x, t)
    lr = lr_table[jnp.minimum(state["step"], lr_table.shape[0] - 1)]
    step = state["step"] + 1
    # 1 - beta**t as -expm1(t log beta): in float32, 1 - 0.999**t loses up to five digits at small t,
    # and that alone moves the parameters after one epoch by 30% (relative) from xpgrad's, which
    # computes the bias corrections in float64.
    t = step.astype(x.dtype)
    c1 = lr / -jnp.expm1(t * math.log(BETA1))
    c2 = 1 / -jnp.expm1(t * math.log(BETA2))
    m = jax.tree.map(lambda m, g: BETA1 * m + (1 - BETA1) * g, state["m"], grads)
    v = jax.tree.map(lambda v, g: BETA2 * v + (1 - BETA2) * g * g, state["v"], grads)
    params = jax.tree.map(lambda p, m, v: p - c1 * m / (jnp.sqrt(v * c2) + EPS), state["params"], m, v)
    hits = jnp.sum(jnp.argmax(logits, axis=1) == t)
    return {"params": params, "m": m, "v": v, "step": step, "k": state["k"],
            "loss_sum": state["loss_sum"] + loss * idx.shape[0], "correct": state["correct"] + hits}


def _jit_step(state, X, T, perm2d, lr_table):
    import jax

    idx = jax.lax.dynamic_index_in_dim(perm2d, state["k"], keepdims=False)
    state = update(state, X, T, idx, lr_table)
    return {**state, "k": state["k"] + 1}


def _scan_epoch(state, X, T, perm2d, lr_table):
    import jax

    return jax.lax.scan(lambda s, idx: (update(s, X, T, idx, lr_table), None), state, perm2d)[0]


class JaxEpochs:
    """``jit`` or ``scan`` (see the module docstring); the interface of :mod:`bench.turns`."""

    def __init__(self, setup: Setup, mode: str, name: str | None = None):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if setup.optimizer != "adam":
            raise Unavailable(f"the JAX step implements Adam only, not {setup.optimizer}")
        from xpgrad import backend

        jax = self.jax = import_jax(setup.on_gpu)
        self.device = jax.devices("gpu" if setup.on_gpu else "cpu")[0]
        self.setup, self.mode, self.name = setup, mode, name or f"jax_{mode}"
        self.bounded = True
        self.steps_per_epoch = setup.steps_per_epoch
        self.full = setup.n // setup.batch
        put = lambda a: jax.device_put(a, self.device)  # noqa: E731
        x = backend.to_numpy(setup.x)
        self.X = put(x.reshape(x.shape[0], -1))  # the model's Flatten, once
        self.T = put(backend.to_numpy(setup.t).astype(numpy.int32))
        self.lr_table = put(setup.lr_table.astype(self.X.dtype))
        self.names = setup.linears()
        if setup.layers != ("Flatten", *("Linear", "ReLU") * (len(self.names) - 1), "Linear") or any(
                b is None for _, b in self.names):
            raise Unavailable(f"the JAX step implements Flatten then Linear (with bias) and ReLU in turn, "
                              f"not {', '.join(setup.layers)}")
        params = [(setup.params[w], setup.params[b]) for w, b in self.names]
        zeros = [(numpy.zeros_like(W), numpy.zeros_like(b)) for W, b in params]
        self.initial = {"params": params, "m": zeros, "v": zeros, "step": numpy.int32(0), "k": numpy.int32(0),
                        "loss_sum": numpy.zeros((), self.X.dtype), "correct": numpy.int32(0)}
        self.state = put(self.initial)
        self.step_fn = jax.jit(_jit_step, donate_argnums=0)
        self.tail_fn = jax.jit(update, donate_argnums=0)
        self.epoch_fn = jax.jit(_scan_epoch, donate_argnums=0)
        self.rng = setup.batch_order()
        # CPU buffers cannot always be donated; JAX says so once per function. Harmless.
        warnings.filterwarnings("ignore", message="Some donated buffers were not usable")

    def _call(self, fn, *args):
        return fn(*args, self.lr_table)

    def _epoch_arrays(self, perm):
        b = self.setup.batch
        perm2d = self.jax.device_put(perm[:self.full * b].reshape(self.full, b).astype(numpy.int32), self.device)
        tail = perm[self.full * b:].astype(numpy.int32)
        return perm2d, (self.jax.device_put(tail, self.device) if tail.size else None)

    def _fresh_counters(self, state):
        put = lambda a: self.jax.device_put(a, self.device)  # noqa: E731
        return {**state, "k": put(numpy.int32(0)), "loss_sum": put(numpy.zeros((), self.X.dtype)),
                "correct": put(numpy.int32(0))}

    def epoch(self) -> dict:
        perm2d, tail = self._epoch_arrays(self.rng.permutation(self.setup.n))
        state = self._fresh_counters(self.state)
        if self.mode == "scan":
            state = self._call(self.epoch_fn, state, self.X, self.T, perm2d)
        else:
            for s in range(self.full):
                state = self._call(self.step_fn, state, self.X, self.T, perm2d)
                if (s + 1) % self.setup.log_every == 0:
                    float(state["loss_sum"])  # the trainer reads its loss back as often
        if tail is not None:
            state = self._call(self.tail_fn, state, self.X, self.T, tail)
        self.state = state
        n = self.setup.n
        return {"train_loss": float(state["loss_sum"]) / n, "train_accuracy": int(state["correct"]) / n}

    def warmup(self) -> None:
        """Compile every function this mode calls, on copies of the state (donation eats its input)."""
        perm2d, tail = self._epoch_arrays(numpy.arange(self.setup.n))
        copy = lambda: self.jax.tree.map(lambda a: a.copy(), self.state)  # noqa: E731
        main = self.epoch_fn if self.mode == "scan" else self.step_fn
        out = [self._call(main, copy(), self.X, self.T, perm2d)]
        if tail is not None:
            out.append(self._call(self.tail_fn, copy(), self.X, self.T, tail))
        self.jax.block_until_ready(out)

    def sync(self) -> None:
        self.jax.block_until_ready(self.state)

    def params(self) -> dict:
        out = {}
        for (w_name, b_name), (W, b) in zip(self.names, self.state["params"]):
            out[w_name], out[b_name] = numpy.array(W), numpy.array(b)  # copies: donation reuses buffers
        return out

    def info(self) -> dict:
        return {"mode": self.mode, "jax": self.jax.__version__, "device": str(self.device),
                "matmul_precision": "highest"}
