"""Where the cnn's CPU epoch spends its time, part by part, and its matrix products against their floor.

:func:`breakdown` trains one more epoch of a trainer with a timer around
each part of the step that the convolutions and pools add (im2col's copy,
each matrix product by shape, col2im, the max-pool's passes); what is left
is the rest of the step (ReLU, the bias additions, Linear layers, loss,
Adam, the tape). The products' floor is their FLOPs at the float32 rate
NumPy's BLAS reaches on a large square product, in the same process.
:func:`input_gradient_two_ways` times the second convolution's input
gradient as xpgrad computes it and as the issue proposed.
"""

from __future__ import annotations

import collections
import time

import numpy

from bench import common
from xpgrad import convops, ops


def sgemm_rate(size: int = 2048, repeats: int = 5) -> float:
    """FLOP/s of NumPy's float32 product of two (size, size) matrices: the best of ``repeats``."""
    rng = numpy.random.default_rng(0)
    a, b = (rng.standard_normal((size, size), dtype=numpy.float32) for _ in range(2))
    a @ b
    best = min(_seconds(lambda: a @ b) for _ in range(repeats))
    return 2 * size**3 / best


def _seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


class _Timers:
    """Seconds and calls per part; GEMMs also count their FLOPs."""

    def __init__(self):
        self.seconds, self.calls, self.flops = (collections.defaultdict(float) for _ in range(3))

    def wrap(self, owner, attr: str, label):
        original = getattr(owner, attr)

        def timed(*args, **kwargs):
            start = time.perf_counter()
            result = original(*args, **kwargs)
            name = label(*args) if callable(label) else label
            self.seconds[name] += time.perf_counter() - start
            self.calls[name] += 1
            if name.startswith(("conv GEMM", "Linear GEMM")):
                a, b = args[1], args[2]
                self.flops[name] += 2 * a.shape[0] * a.shape[1] * b.shape[1]
            return result

        return original, timed


def _gemm_label(kind):
    return lambda xp, a, b, out=None: f"{kind} GEMM {a.shape[0]}x{a.shape[1]} @ {b.shape[0]}x{b.shape[1]}"


def breakdown(trainer) -> dict:
    """One more epoch of ``trainer`` (CPU) with the parts timed; prints the table and returns the figures."""
    timers = _Timers()
    patches = [(convops, "im2col", "im2col (copy)"), (convops, "col2im", "col2im (strided adds)"),
               (convops, "matmul", _gemm_label("conv")), (ops, "matmul", _gemm_label("Linear")),
               (convops.MaxPool2d, "forward", "max-pool forward"), (convops.MaxPool2d, "backward", "max-pool backward")]
    originals = []
    for owner, attr, label in patches:
        original, timed = timers.wrap(owner, attr, label)
        originals.append((owner, attr, original))
        setattr(owner, attr, timed)
    try:
        epoch = trainer.train_epoch()["seconds"]
    finally:
        for owner, attr, original in originals:
            setattr(owner, attr, original)
    rate = sgemm_rate()
    return _report(timers, epoch, rate)


def _report(timers: _Timers, epoch: float, rate: float) -> dict:
    rows, parts, small = [], {}, []
    for name in sorted(timers.seconds, key=timers.seconds.get, reverse=True):
        seconds, flops = timers.seconds[name], timers.flops.get(name, 0)
        floor = flops / rate if flops else None
        parts[name] = {"seconds": seconds, "calls": timers.calls[name], "flops": flops, "floor_seconds": floor}
        if seconds < 0.005 * epoch:  # the last, partial batch's products and the like: one row for all
            small.append(seconds)
            continue
        rows.append([name, f"{seconds:.2f}", f"{100 * seconds / epoch:.0f}%",
                     f"{flops / seconds / 1e9:.0f} GFLOP/s, {seconds / floor:.1f}x its floor" if flops else ""])
    if small:
        rows.append([f"{len(small)} smaller parts (the partial last batch's products, ...)", f"{sum(small):.2f}",
                     f"{100 * sum(small) / epoch:.0f}%", ""])
    rest = epoch - sum(timers.seconds.values())
    rows.append(["the rest (ReLU, bias adds, loss, Adam, the tape, batches)", f"{rest:.2f}",
                 f"{100 * rest / epoch:.0f}%", ""])
    gemm = sum(p["seconds"] for p in parts.values() if p["flops"])
    floor = sum(p["floor_seconds"] for p in parts.values() if p["flops"])
    print(f"\nwhere xpgrad's epoch goes ({epoch:.2f} s, timed part by part; sgemm floor rate {rate / 1e9:.0f} GFLOP/s "
          f"on a 2048x2048 product):\n")
    print(common.markdown_table(["part", "seconds", "share", "rate"], rows))
    print(f"\nmatrix products: {gemm:.2f} s of the epoch, against a floor of {floor:.2f} s at the large-product rate; "
          f"everything else: {epoch - gemm:.2f} s")
    return {"epoch_seconds": epoch, "sgemm_floor_flops": rate, "parts": parts, "rest_seconds": rest,
            "gemm_seconds": gemm, "gemm_floor_seconds": floor}


def input_gradient_two_ways(trainer, repeats: int = 9) -> dict:
    """The second convolution's input gradient at the trainer's batch: one product then col2im (xpgrad), against
    a convolution of the output gradient, padded by kernel - 1, with the flipped kernel (one product, no col2im)."""
    conv = [m for m in trainer.model if type(m).__name__ == "Conv2d"][-1]
    rng = numpy.random.default_rng(0)
    C, O, (kh, kw) = conv.in_channels, conv.out_channels, conv.kernel_size
    n, side = trainer.batch_size, 12  # the cnn's second convolution sees 12x12 maps
    x = rng.standard_normal((n, C, side, side), dtype=numpy.float32)
    W = conv.weight.data
    op = convops.Conv2d(needs_input_grad=True)
    y = op.forward(x, W)
    gy = rng.standard_normal(y.shape, dtype=numpy.float32)
    flipped = numpy.ascontiguousarray(W[:, :, ::-1, ::-1].transpose(1, 0, 2, 3))

    def as_gemm():
        return convops.Conv2d(padding=(kh - 1, kw - 1), needs_input_grad=False).forward(gy, flipped)

    def col2im_way():
        return op.backward(gy)[0]

    numpy.testing.assert_allclose(as_gemm(), col2im_way(), rtol=1e-4, atol=1e-4)
    times = {name: common.summarize([_seconds(fn) for _ in range(repeats)]) for name, fn in
             (("one product, then col2im", col2im_way), ("a second convolution (one product, no col2im)", as_gemm))}
    print(f"\nthe input gradient of the second convolution (batch {n}, {C}->{O}, {side}x{side}):\n")
    print(common.markdown_table(["how", "median (min–max)"], [[k, common.fmt_spread(v)] for k, v in times.items()]))
    return times
