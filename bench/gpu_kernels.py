"""GPU kernels: xpgrad's fused kernels against its generic ``xp`` code and PyTorch CUDA.

For each kernel (ReLU backward, log-softmax forward/backward, softmax
cross-entropy forward/backward, bias + ReLU forward and backward, and the SGD /
momentum / Adam updates, which read their learning rate from a schedule at a
step counter on the device and advance the counter) at >= 1e6 rows of C = 10,
and for every kernel at training shapes (also the training step's batch
gather and cross-entropy step), this times three implementations on the same
device arrays with CUDA events (warm-up and compilation excluded):

* fused: xpgrad's ops and update functions with the fused CuPy kernels (default);
* generic: the same with ``XPGRAD_FUSED=0`` (the ``xp`` formulas; the generic
  updates and gather read their counters on the host);
* torch: the ATen kernels PyTorch's autograd runs for the same step, and
  ``torch.optim`` with ``fused=True`` (n/a for the cross-entropy step).

Achieved bandwidth counts the bytes a kernel must move (each input read once,
each output written once; table below) and is shown as a share of a
device-to-device copy of an array of the same size, measured in the same run.

    relu bwd   read x, gy; write gx            3 N C s
    lsm fwd    read x; write y                 2 N C s
    lsm bwd    read y, gy; write gx            3 N C s
    xent fwd   read x, labels; write lse       N C s + N (4 + s)
    xent bwd   read x, labels, lse; write gx   2 N C s + N (4 + s)
    bias relu  read h; write h                 2 N C s
    bias relu bwd  read y, gy; write gx, gb    3 N C s + C s
    gather     read and write N rows of C; order, labels   2 N C s + 16 N
    xent step  read z, labels; write gz        2 N C s + 4 N
    sgd        read p, g; write p              3 P s
    momentum   read p, g, v; write p, v        5 P s
    adam       read p, g, m, v; write p, m, v  7 P s

Targets at >= 1e6 rows: the row kernels (log-softmax and cross-entropy,
forward and backward) >= 70% of copy bandwidth (issue 10), the other fused
kernels >= 60%.

Exits 0 with a "no GPU: reason" line where CuPy sees no usable GPU (2 with
``--require-gpu``). Run from
the repository root::

    PYTHONPATH=. python -m bench.gpu_kernels
"""

from __future__ import annotations

import sys

import numpy

from bench import common

C = 10
LARGE_ROWS = (2**20, 2**22)  # 1.05 M and 4.2 M rows
TRAIN_ROWS, TRAIN_HIDDEN, TRAIN_PARAM, TRAIN_SET, PIXELS = 128, 100, 784 * 100, 60000, 784
ROW_KERNELS = ("lsm fwd", "lsm bwd", "xent fwd", "xent bwd")
OPTIMIZERS = ("sgd", "momentum", "adam")
# At >= 1e6 rows, as shares of copy bandwidth: the row kernels (issue 10), and the other fused kernels.
ROW_TARGET, TARGET_SHARE = 0.7, 0.6
# Measured at >= 1e6 rows and at training shapes.
KERNELS = ("relu bwd", *ROW_KERNELS, "bias relu", "bias relu bwd", *OPTIMIZERS)
STEP_KERNELS = ("gather", "xent step")  # the training step's, at batch sizes only
IMPLS = ("fused", "generic", "torch")


def min_bytes(kernel: str, n: int, c: int, s: int) -> int:
    """Bytes a kernel must read and write (``n`` rows of ``c``, or ``n * c`` parameters; ``s`` bytes each)."""
    per_row = {"relu bwd": 3 * c * s, "lsm fwd": 2 * c * s, "lsm bwd": 3 * c * s,
               "xent fwd": c * s + 4 + s, "xent bwd": 2 * c * s + 4 + s, "bias relu": 2 * c * s,
               "bias relu bwd": 3 * c * s, "gather": 2 * c * s + 16, "xent step": 2 * c * s + 4,
               "sgd": 3 * c * s, "momentum": 5 * c * s, "adam": 7 * c * s}
    return n * per_row[kernel] + (c * s if kernel == "bias relu bwd" else 0)


def target_for(kernel: str) -> float:
    """The copy-bandwidth share ``kernel`` should reach at >= 1e6 rows."""
    return ROW_TARGET if kernel in ROW_KERNELS else TARGET_SHARE


class Case:
    """One kernel at one shape: a call per implementation on shared data, and their outputs to compare."""

    def __init__(self, kernel: str, n: int, c: int, dtype, torch):
        from xpgrad import backend, ops

        cp = backend.cupy
        self.kernel, self.n, self.c, self.torch = kernel, n, c, torch
        rng = cp.random.default_rng(n)
        self.x = (rng.standard_normal((n, c), dtype=numpy.float64) * 3).astype(dtype)
        self.gy = rng.standard_normal((n, c), dtype=numpy.float64).astype(dtype)
        self.t = rng.integers(0, c, size=n, dtype=numpy.int32)
        self.calls = {}
        self.outputs = {}
        if kernel in OPTIMIZERS:
            self._optimizer(kernel, cp, backend)
            return
        if kernel in ("bias relu", "bias relu bwd", *STEP_KERNELS):
            self._step_kernel(kernel, cp, backend, rng)
            return
        op = {"relu bwd": ops.Relu, "lsm fwd": ops.LogSoftmax, "lsm bwd": ops.LogSoftmax,
              "xent fwd": ops.SoftmaxCrossEntropy, "xent bwd": ops.SoftmaxCrossEntropy}[kernel]()
        if kernel == "relu bwd":
            op.forward(self.x)
            call = lambda: op.backward(self.gy)  # noqa: E731
        elif kernel == "lsm fwd":
            call = lambda: op.forward(self.x)  # noqa: E731
        elif kernel == "lsm bwd":
            op.forward(self.x)
            call = lambda: op.backward(self.gy)  # noqa: E731
        elif kernel == "xent fwd":
            call = lambda: op.forward(self.x, self.t)  # noqa: E731
        else:
            op.forward(self.x, self.t)
            call = op.backward
        self.calls["fused"] = self.calls["generic"] = call
        if torch is not None:
            self.calls["torch"] = self._torch_rows(kernel, torch)

    def _torch_rows(self, kernel, torch):
        F, aten = torch.nn.functional, torch.ops.aten
        x, gy = torch.from_dlpack(self.x), torch.from_dlpack(self.gy)
        t = torch.from_dlpack(self.t).long()
        if kernel == "relu bwd":
            return lambda: aten.threshold_backward(gy, x, 0)
        y = torch.log_softmax(x, 1)
        if kernel == "lsm fwd":
            return lambda: torch.log_softmax(x, 1)
        if kernel == "lsm bwd":
            return lambda: aten._log_softmax_backward_data(gy, y, 1, x.dtype)
        if kernel == "xent fwd":
            return lambda: F.cross_entropy(x, t)
        _, total_weight = aten.nll_loss_forward(y, t, None, 1, -100)
        one = torch.ones((), dtype=x.dtype, device=x.device)

        def xent_bwd():  # what autograd runs for cross_entropy's backward
            g = aten.nll_loss_backward(one, y, t, None, 1, -100, total_weight)
            return aten._log_softmax_backward_data(g, y, 1, x.dtype)
        return xent_bwd

    def _optimizer(self, kernel, cp, backend):
        """The update of ``kernel`` on flat arrays at lr 1e-3 (a schedule of one factor), from zero state."""
        p0, g = self.x.reshape(-1), self.gy.reshape(-1)
        lr, momentum = 1e-3, 0.9
        schedule = cp.asarray([lr, 1.0])
        for impl in ("fused", "generic"):
            p, work = p0.copy(), cp.empty_like(p0)
            state = [cp.zeros_like(p0) for _ in range({"sgd": 0, "momentum": 1, "adam": 2}[kernel])]
            step = cp.zeros((), dtype=numpy.int64)  # advanced by every call; the lr stays 1e-3

            def call(p=p, state=state, step=step, work=work):
                ops = backend.get_ops(cp)  # at call time, under the fused switch of the implementation
                if kernel == "sgd":
                    ops.sgd_update(p, g, schedule, step, work=work)
                elif kernel == "momentum":
                    ops.momentum_update(p, g, *state, schedule, step, momentum, work=work)
                else:
                    ops.adam_update(p, g, *state, schedule, step, 0.9, 0.999, 1e-8, work=work)
            self.calls[impl], self.outputs[impl] = call, p
        if self.torch is not None:
            torch = self.torch
            p = torch.from_dlpack(p0.copy())
            p.grad = torch.from_dlpack(g)
            kwargs = {"momentum": momentum} if kernel == "momentum" else {}
            opt = (torch.optim.Adam if kernel == "adam" else torch.optim.SGD)([p], lr=lr, fused=True, **kwargs)
            self.calls["torch"] = opt.step
            self.outputs["torch"] = p

    def _step_kernel(self, kernel, cp, backend, rng):
        """bias relu (forward and backward), gather and xent step: each implementation on its own arrays."""
        n, c = self.n, self.c
        if kernel == "bias relu bwd":
            self._bias_relu_backward(cp, backend)
            return
        b = rng.standard_normal(c, dtype=numpy.float64).astype(self.x.dtype)
        if kernel == "gather":
            table = rng.standard_normal((TRAIN_SET, c), dtype=numpy.float32).astype(self.x.dtype)
            labels = rng.integers(0, 10, size=TRAIN_SET, dtype=numpy.int32)
            order = cp.asarray(numpy.random.default_rng(n).permutation(TRAIN_SET).astype(numpy.int64))
        for impl in ("fused", "generic"):
            if kernel == "bias relu":
                h = self.x.copy()
                call = (lambda h=h: backend.get_ops(cp).bias_relu_forward(h, b))
                out = h
            elif kernel == "gather":
                out, out_t = cp.empty((n, c), dtype=self.x.dtype), cp.empty(n, dtype=numpy.int32)
                step = cp.zeros((), dtype=numpy.int64)
                # Every call advances the batch counter; a batch size of 0 keeps every call on the first
                # n entries of the order (the same work at any step) however often it is timed.
                call = (lambda out=out, out_t=out_t, step=step: backend.get_ops(cp).gather_batch(
                    table, labels, order, step, 0, out, out_t))
            else:
                z, out = self.x.copy(), cp.empty_like(self.x)
                sums = (cp.zeros((), self.x.dtype), cp.zeros((), self.x.dtype), cp.zeros((), numpy.int64))
                with common.xpgrad_fused(impl == "fused"):
                    work = backend.get_ops(cp).softmax_cross_entropy_step_work(z)
                call = (lambda z=z, out=out, sums=sums, work=work: backend.get_ops(cp).softmax_cross_entropy_step(
                    z, self.t, out, *sums, work=work))
            self.calls[impl], self.outputs[impl] = call, out
        if self.torch is None or kernel == "xent step":
            return
        torch = self.torch
        if kernel == "bias relu":
            ht, bt = torch.from_dlpack(self.x.copy()), torch.from_dlpack(b)
            self.calls["torch"], self.outputs["torch"] = (lambda: torch.relu_(ht.add_(bt))), ht
        else:
            xt, tt = torch.from_dlpack(table), torch.from_dlpack(labels)
            idx = torch.from_dlpack(order[:n])
            out = torch.empty((n, c), dtype=xt.dtype, device=xt.device)
            self.calls["torch"] = lambda: (torch.index_select(xt, 0, idx, out=out), tt.index_select(0, idx))
            self.outputs["torch"] = out

    def _bias_relu_backward(self, cp, backend):
        """gx = gy * (y > 0) and its column sums gb from y = relu(x); the outputs compared are the sums."""
        y = cp.maximum(self.x, 0)
        for impl in ("fused", "generic"):
            gx, gb = cp.empty_like(self.gy), cp.empty(self.c, dtype=self.gy.dtype)
            self.calls[impl] = lambda gx=gx, gb=gb: backend.get_ops(cp).bias_relu_backward(y, self.gy, gx, gb)
            self.outputs[impl] = gb
        if self.torch is not None:
            torch = self.torch
            yt, gyt = torch.from_dlpack(y), torch.from_dlpack(self.gy)
            gbt = torch.empty(self.c, dtype=yt.dtype, device=yt.device)
            # What autograd runs for relu(h + b): ReLU's backward, then the bias's sum over rows.
            self.calls["torch"] = lambda: torch.sum(torch.ops.aten.threshold_backward(gyt, yt, 0), 0, out=gbt)
            self.outputs["torch"] = gbt

    def check(self) -> dict:
        """Largest difference of generic and torch from fused after one call each (from equal states)."""
        from xpgrad import backend

        results = {}
        for impl in self.calls:
            with common.xpgrad_fused(impl != "generic"):
                out = self.calls[impl]()
            if impl in self.outputs:
                out = self.outputs[impl]
            elif isinstance(out, tuple):
                out = out[0]
            host = out.cpu().numpy() if hasattr(out, "cpu") else backend.to_numpy(out)
            results[impl] = host.astype(numpy.float64)
        ref = results["fused"]
        return {impl: float(numpy.abs(a - ref).max()) for impl, a in results.items() if impl != "fused"}


def copy_bandwidth(nbytes: int, repeats: int) -> dict:
    """Device-to-device copy of ``nbytes``: CuPy's ``copyto`` and a raw memcpy; bytes/s counts read + write."""
    from xpgrad import backend

    cp = backend.cupy
    src = cp.ones(nbytes // 4, dtype=cp.float32)
    dst = cp.empty_like(src)
    copyto = common.cuda_time(lambda: cp.copyto(dst, src), repeats)
    memcpy = common.cuda_time(lambda: dst.data.copy_from_device_async(src.data, src.nbytes), repeats)
    best = min(copyto["median"], memcpy["median"])
    return {"bytes": nbytes, "copyto": copyto, "memcpy": memcpy, "bandwidth": 2 * src.nbytes / best}


def shapes():
    """(label, kernel, rows, cols): every kernel at each large size and at its training shape(s)."""
    out = []
    for rows in LARGE_ROWS:
        out += [(f"{rows:,} x {C}", k, rows, C) for k in KERNELS]
    for k in (*KERNELS, *STEP_KERNELS):
        if k in ("relu bwd", "bias relu"):
            out.append((f"{TRAIN_ROWS} x {TRAIN_HIDDEN}", k, TRAIN_ROWS, TRAIN_HIDDEN))
        elif k == "bias relu bwd":  # a batch, a batch of a wide layer, and the whole training set at once
            out += [(f"{rows} x {cols}", k, rows, cols) for rows, cols in
                    ((TRAIN_ROWS, TRAIN_HIDDEN), (TRAIN_ROWS, 1024), (TRAIN_SET, TRAIN_HIDDEN))]
        elif k in OPTIMIZERS:
            out.append(("W1 784 x 100", k, 784, 100))
        elif k == "gather":
            out += [(f"{rows} of {TRAIN_SET:,} x {PIXELS}", k, rows, PIXELS) for rows in (TRAIN_ROWS, 8192)]
        elif k == "xent step":
            out += [(f"{rows} x {C}", k, rows, C) for rows in (TRAIN_ROWS, 8192)]
        else:
            out.append((f"{TRAIN_ROWS} x {C}", k, TRAIN_ROWS, C))
    return out


def verdicts(targets: dict) -> list[str]:
    """One line per target: the row kernels' (>= 70%) and the other fused kernels' (>= 60%)."""
    lines = []
    for words, share, row in (("row kernels (log-softmax, cross-entropy)", ROW_TARGET, True),
                              ("other fused kernels", TARGET_SHARE, False)):
        mine = {k: t for k, t in targets.items() if (t["kernel"] in ROW_KERNELS) == row}
        missed = [k for k, t in mine.items() if not t["met"]]
        lines.append(f"target: {words} >= {share:.0%} of copy bandwidth at >= 1e6 rows: "
                     f"{len(mine) - len(missed)}/{len(mine)} met" + (f"; missed: {', '.join(missed)}" if missed else ""))
    return lines


def main(argv=None) -> int:
    p = common.gpu_parser(__doc__.splitlines()[0], repeats=15)
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    args = p.parse_args(argv)
    code = common.exit_code_without_gpu(args)
    if code is not None:
        return code
    try:
        import torch

        if not torch.cuda.is_available():
            print("(PyTorch sees no CUDA device: torch columns left out)")
            torch = None
    except ImportError:
        print("(PyTorch is not installed: torch columns left out)")
        torch = None
    facts = common.machine_facts(gpu=True)
    print(f"machine: {common.machine_line(facts)}\n")
    dtype = numpy.dtype(args.dtype)

    copies, results, rows, targets = {}, [], [], {}
    for label, kernel, n, c in shapes():
        nbytes = n * c * dtype.itemsize
        if nbytes not in copies:
            copies[nbytes] = copy_bandwidth(nbytes, args.repeats)
        case = Case(kernel, n, c, dtype, torch)
        errors = case.check()
        timed = {}
        for impl, call in case.calls.items():
            with common.xpgrad_fused(impl != "generic"):
                timed[impl] = common.cuda_time(call, args.repeats, lib="torch" if impl == "torch" else "cupy")
        moved = min_bytes(kernel, n, c, dtype.itemsize)
        share = {impl: moved / s["median"] / copies[nbytes]["bandwidth"] for impl, s in timed.items()}
        large = n >= 10**6
        results.append({"kernel": kernel, "shape": label, "rows": n, "cols": c, "dtype": dtype.name,
                        "bytes": moved, "times": timed, "copy_share": share,
                        "bandwidth": {impl: moved / s["median"] for impl, s in timed.items()},
                        "max_abs_difference_from_fused": errors})
        if large:
            targets[f"{kernel} {label}"] = {"kernel": kernel, "target": target_for(kernel), "value": share["fused"],
                                            "met": share["fused"] >= target_for(kernel)}
        vs_torch = f"{timed['fused']['median'] / timed['torch']['median']:.2f}x" if "torch" in timed else "n/a"
        rows.append([kernel, label] + [common.fmt_spread(timed[i]) if i in timed else "n/a" for i in IMPLS]
                    + [vs_torch,
                       f"{moved / timed['fused']['median'] / 1e9:.0f} GB/s, {share['fused']:.0%}" if large else "",
                       f"{share['torch']:.0%}" if large and "torch" in share else "",
                       ", ".join(f"{k} {v:.1e}" for k, v in errors.items())])
        del case

    print(common.markdown_table(["copy (device to device)", "bytes", "copyto", "memcpy", "bandwidth (read+write)"],
                                [[f"{b / 2**20:.2f} MiB", b, common.fmt_spread(c["copyto"]), common.fmt_spread(c["memcpy"]),
                                  f"{c['bandwidth'] / 1e9:.0f} GB/s"] for b, c in copies.items()]))
    print()
    print(common.markdown_table(
        ["kernel", "shape", "fused", "generic (XPGRAD_FUSED=0)", "PyTorch", "fused / PyTorch",
         "fused bandwidth, % of copy", "PyTorch % of copy", "max |diff| from fused"], rows))
    print()
    for line in verdicts(targets):
        print(line)
    row_shares = [r["copy_share"]["fused"] for r in results if r["kernel"] in ROW_KERNELS and r["rows"] >= 10**6]
    paths = common.write_results("gpu_kernels", {
        "machine": facts, "setup": {"dtype": dtype.name, "repeats": args.repeats, "classes": C},
        "copies": list(copies.values()), "results": results, "targets": targets,
        "row_kernels_copy_share_min": min(row_shares) if row_shares else None,
    }, args.json, where=facts["gpu"]["name"])
    print(f"\nwrote {', '.join(paths)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
