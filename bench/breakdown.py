"""Where a CPU training step's time goes, against its floor: the step's matrix products alone.

The work is ``bench.cpu_epoch``'s: the default recipe's 784-100-10 MLP with
plain SGD, float32, batches of 128 over Fashion-MNIST's 60 000 images
(``--hidden`` and ``--optimizer`` change it), one BLAS thread unless
``--threads`` says otherwise.

* **The floor** is the step's five matrix products and nothing else: for every
  batch of an epoch, in the epoch's order, ``x @ W1``, ``h @ W2``, ``g2 @ W2.T``,
  ``h.T @ g2`` and ``x.T @ g1`` on the epoch's own gathered batches, back to
  back (the products a step cannot do without, in the cache state an epoch
  leaves them).
* **The epoch** is ``Trainer.train_epoch``, timed whole; in turns with the
  floor, so that each ratio pairs up under the same load.
* **The breakdown** times one more epoch with each part of the step wrapped
  in a timer: the batch gather (with its normalization), the products, the
  loss head (the fused cross-entropy with its sums, through the tape), the
  optimizer's update, bias + ReLU forward and backward, and the rest: the
  tape's bookkeeping, Python, and the last layer's bias add and bias
  gradient. The timers add ~0.2 µs a call.

Run from the repository root (``--tree`` runs another checkout's xpgrad,
e.g. a ``git worktree`` of an earlier commit, for a before/after table)::

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python -m bench.breakdown --threads 1
"""

from __future__ import annotations

import contextlib
import time

import numpy

from bench import common
from bench.cpu_epoch import get_dataset

PARTS = ("gather", "products", "loss head", "update", "bias + ReLU", "the rest")


def make_trainer(dataset, hidden, optimizer):
    from xpgrad.training import Config, Trainer

    lr = {"sgd": 0.01, "momentum": 0.01, "adam": 2e-3}[optimizer]
    config = Config.from_recipe("default", optimizer=optimizer, lr=lr, schedule="constant", epochs=1000,
                                hidden=hidden)
    return Trainer(config, dataset, device="cpu", progress=False)


def products_alone(trainer, batches) -> float:
    """Seconds for the step's matrix products over the epoch's batches, in order, and nothing else: each
    layer's ``x @ W`` forward, then backward its ``x.T @ g`` and (but for the first layer) ``g @ W.T``."""
    W = [p.data for name, p in trainer.model.named_parameters() if name.endswith("weight")]
    start = time.perf_counter()
    for x in batches:
        inputs = [x]
        for w in W:
            inputs.append(numpy.matmul(inputs[-1], w))
        g = inputs[-1]  # a stand-in for the logits' gradient: the same shape
        for i in reversed(range(len(W))):
            numpy.matmul(inputs[i].T, g)
            if i:
                g = numpy.matmul(g, W[i].T)
    return time.perf_counter() - start


def epoch_batches(trainer) -> list:
    """The epoch's normalized batches, gathered once (the floor's inputs)."""
    order = numpy.random.default_rng(3).permutation(trainer.n_train)
    b = trainer.batch_size
    x = trainer.x_train.reshape(trainer.n_train, -1)
    if hasattr(trainer, "inputs"):  # uint8 images, normalized as batches are gathered (since issue 21)
        x = trainer.inputs.normalize(x)
    return [numpy.ascontiguousarray(x[order[k:k + b]]) for k in range(0, trainer.n_train, b)]


@contextlib.contextmanager
def timed_parts(trainer, totals):
    """Wrap the step's parts in timers adding into ``totals`` (seconds by part)."""
    from xpgrad import generic, ops
    from xpgrad.training import batches as batches_module

    patches = [
        (batches_module.Batch, "load", "gather"), (ops, "matmul", "products"),
        (trainer.optimizer, "step", "update"), (generic, "bias_relu_forward", "bias + ReLU"),
        (generic, "bias_relu_backward", "bias + ReLU"),
    ]
    saved = []
    for owner, name, part in patches:
        original = getattr(owner, name, None)
        if original is None:
            continue
        saved.append((owner, name, original))
        setattr(owner, name, _timer(original, part, totals))
    head = trainer.head
    trainer.head = _timer(head, "loss head", totals)
    try:
        yield
    finally:
        trainer.head = head
        for owner, name, original in saved:
            setattr(owner, name, original)


def _timer(fn, part, totals):
    clock = time.perf_counter

    def timed(*args, **kwargs):
        start = clock()
        try:
            return fn(*args, **kwargs)
        finally:
            totals[part] += clock() - start
    return timed


def breakdown(trainer) -> dict:
    """Per-step microseconds of each part, from one instrumented epoch (after a plain one)."""
    totals = dict.fromkeys(PARTS, 0.0)
    trainer._steps = None  # rebuilt inside the timers, so the step calls the wrapped functions
    with timed_parts(trainer, totals):
        seconds = trainer.train_epoch()["seconds"]
    trainer._steps = None
    totals["the rest"] = seconds - sum(totals[p] for p in PARTS if p != "the rest")
    steps = trainer.steps_per_epoch
    return {"epoch_seconds": seconds, **{p: totals[p] / steps * 1e6 for p in PARTS}}


def main(argv=None) -> int:
    p = common.parser(__doc__.splitlines()[0], repeats=7)
    p.add_argument("--threads", type=int, default=1, help="BLAS threads (threadpoolctl); default 1")
    p.add_argument("--hidden", type=lambda s: tuple(int(w) for w in s.split(",")), default=(100,))
    p.add_argument("--optimizer", choices=("sgd", "momentum", "adam"), default="sgd")
    p.add_argument("--data", choices=("auto", "fashion-mnist", "random"), default="auto")
    p.add_argument("--label", default="", help="a name for this tree in the output (e.g. before, after)")
    args = p.parse_args(argv)
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=args.threads, user_api="blas"):
        return run(args)


def run(args) -> int:
    import xpgrad

    common.warn_openblas_pins()
    facts = common.machine_facts()
    print(f"machine: {common.machine_line(facts)}\nxpgrad: {xpgrad.__file__}")
    trainer = make_trainer(get_dataset(args.data), args.hidden, args.optimizer)
    batches = epoch_batches(trainer)
    trainer.train_epoch()
    products_alone(trainer, batches)  # warm-up
    epochs, floors = [], []
    for _ in range(args.repeats):
        floors.append(products_alone(trainer, batches))
        epochs.append(trainer.train_epoch()["seconds"])
    parts = [breakdown(trainer) for _ in range(3)]
    per_part = {p: float(numpy.median([b[p] for b in parts])) for p in PARTS}
    ratios = [e / f for e, f in zip(epochs, floors)]
    steps = trainer.steps_per_epoch
    result = {"epoch": common.summarize(epochs), "floor": common.summarize(floors), "ratio": common.summarize(ratios),
              "per_step_us": per_part, "steps": steps}
    report(result, args)
    common.write_results(f"breakdown{'-' + args.label if args.label else ''}", {
        "machine": facts, "setup": {"hidden": args.hidden, "optimizer": args.optimizer, "threads": args.threads,
                                    "batch": trainer.batch_size, "repeats": args.repeats, "label": args.label},
        "results": result}, args.json)
    return 0


def report(result, args) -> None:
    epoch, floor, ratio = result["epoch"], result["floor"], result["ratio"]
    steps, part = result["steps"], result["per_step_us"]
    print(f"\n{args.label or 'this tree'}: 784-{'-'.join(map(str, args.hidden))}-10, {args.optimizer}, "
          f"{args.threads} thread(s), {steps} steps\n")
    print(common.markdown_table(["", "per epoch, median (min–max)", "per step"], [
        ["epoch (Trainer.train_epoch)", common.fmt_spread(epoch), f"{epoch['median'] / steps * 1e6:.0f} µs"],
        ["floor: the products alone", common.fmt_spread(floor), f"{floor['median'] / steps * 1e6:.0f} µs"],
        ["epoch / floor (paired)", f"{ratio['median']:.2f}x ({ratio['min']:.2f}–{ratio['max']:.2f})", ""]]))
    print()
    outside = epoch["median"] / steps * 1e6 - floor["median"] / steps * 1e6
    print(common.markdown_table(["part of a step (instrumented epoch)", "µs per step"],
                                [[p, f"{part[p]:.1f}"] for p in PARTS]))
    print(f"\noutside the products (epoch - floor): {outside:.0f} µs per step; target: epoch <= 1.2x floor "
          f"-> {common.verdict(ratio['median'] <= 1.2)}")


if __name__ == "__main__":
    raise SystemExit(main())
