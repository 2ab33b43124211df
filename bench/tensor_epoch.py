"""One training epoch in a loop of one's own (Tensors, ``nn``, ``optim``) against the Trainer's epoch and PyTorch eager.

Since the one-engine change the Trainer trains through the tape too, so this
no longer compares two engines. It asks what a user gets who writes the loop
by hand with the public API, against the Trainer's extras (batches gathered
on the device into fixed buffers, the loss and accuracy sums added by the
fused loss, the same step recordable as a CUDA graph). All three train the
default recipe's shape (784-100-10, Flatten, Linear+ReLU, Linear with
biases, float32, batches of 128 over 60 000 samples) with the same optimizer
and a constant learning rate, from the same initial weights, in the same
batch order, and keep the same running loss and accuracy on the device (read
back every 50 steps):

* ``trainer``: ``Trainer.train_epoch`` (``graph="off"``);
* ``loop``: the user's loop: ``nn.Sequential(nn.Flatten(), nn.Linear(784, 100),
  nn.ReLU(), nn.Linear(100, 10))`` loaded from the trainer's ``state_dict``,
  ``nn.flatten_parameters`` (so the optimizer makes one fused update), each
  batch gathered with ``x[idx]``, ``functional.cross_entropy``,
  ``loss.backward()``, ``opt.step()``;
* ``torch``: the same loop in PyTorch eager (``bench.cpu_epoch.TorchEpoch``).

They take turns, so each repeat gives a paired ratio. The loop and the
trainer run the same arithmetic, so their losses must agree exactly; the
script checks that. ``--profile`` adds a cProfile of one loop epoch.

Run from the repository root::

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python -m bench.tensor_epoch --threads 1
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python -m bench.tensor_epoch --threads 1 --optimizer adam
    PYTHONPATH=. python -m bench.tensor_epoch --device cuda --require-gpu   # on a GPU machine (bench/gpu_check.sh)
"""

from __future__ import annotations

import cProfile
import io
import math
import os
import pstats
import statistics
import time

import numpy

from bench import common
from bench.cpu_epoch import TorchEpoch, get_dataset
from xpgrad import Tensor, backend, functional, nn, optim
from xpgrad.training import Config, Trainer

LR = {"sgd": 0.01, "adam": 2e-3}
TARGET_VS_TRAINER = 1.1  # the user's loop within 10% of the Trainer's epoch
TARGET_VS_TORCH = 1.0  # the user's loop faster than PyTorch eager


def make_trainer(dataset, optimizer: str, device: str) -> Trainer:
    config = Config.from_recipe("default", optimizer=optimizer, lr=LR[optimizer], schedule="constant", epochs=1000)
    return Trainer(config, dataset, device=device, progress=False)


class LoopEpoch:
    """A training epoch as a user writes it with Tensors, ``nn``, ``functional`` and ``optim``, from the
    trainer's data, initial weights (its ``state_dict``) and batch order."""

    def __init__(self, trainer: Trainer):
        self.x, self.t = trainer.inputs.normalize(trainer.x_train), trainer.t_train
        self.device, self.xp = trainer.device, trainer.xp
        self.batch, self.log_every = trainer.batch_size, trainer.log_every
        d_in, hidden, d_out = math.prod(trainer.input_shape), trainer.config.hidden[0], trainer.dataset.num_classes
        self.model = nn.Sequential(nn.Flatten(), nn.Linear(d_in, hidden), nn.ReLU(), nn.Linear(hidden, d_out))
        self.model.to(self.device)
        self.model.load_state_dict(trainer.model.state_dict())
        nn.flatten_parameters(self.model)
        cls = {"sgd": optim.SGD, "adam": optim.Adam}[trainer.config.optimizer]
        self.opt = cls(self.model.named_parameters(), lr=trainer.config.lr)
        assert self.opt.flat is not None, "the optimizer should make one update over the flat buffer"
        self.rng = numpy.random.default_rng([trainer.config.seed, 1])
        self.steps = trainer.steps_per_epoch

    def step(self, x, t):
        """One optimizer step; the batch's loss and correct count as device arrays."""
        logits = self.model(Tensor(x))
        loss = functional.cross_entropy(logits, t)
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        return loss.data, (logits.data.argmax(axis=1) == t).sum()

    def __call__(self) -> dict:
        xp, n, b = self.xp, self.x.shape[0], self.batch
        start = time.perf_counter()
        with self.device:
            perm = backend.to_device(self.rng.permutation(n).astype(numpy.int64), self.device)
            loss_sum, correct = xp.zeros((), dtype=self.x.dtype), xp.zeros((), dtype=xp.int64)
            steps = -(-n // b)
            for step in range(steps):
                idx = perm[step * b:(step + 1) * b]
                t = self.t[idx]
                loss, hits = self.step(self.x[idx], t)
                loss_sum += loss * t.shape[0]
                correct += hits
                if (step + 1) % self.log_every == 0 or step == steps - 1:
                    float(loss_sum)  # the trainer reads its loss back as often
            self.device.synchronize()
        seconds = time.perf_counter() - start
        return {"train_loss": float(loss_sum) / n, "train_accuracy": int(correct) / n, "seconds": seconds}


def torch_epoch(trainer: Trainer, threads: int | None) -> TorchEpoch:
    """PyTorch eager with the trainer's optimizer (TorchEpoch itself uses SGD)."""
    run = TorchEpoch(trainer, threads)
    if trainer.config.optimizer == "adam":
        run.opt = run.torch.optim.Adam(run.model.parameters(), lr=trainer.config.lr)
    return run


#: The tape's own modules: their functions' own time is the bookkeeping the tape adds.
TAPE_FILES = ("xpgrad/tensor.py", "xpgrad/backprop.py", "xpgrad/functions/", "xpgrad/nn/", "xpgrad/functional.py")


def profile_epoch(loop: LoopEpoch, lines: int = 25) -> dict:
    """cProfile of one loop epoch: the top functions by own time, and the own time of the tape's modules."""
    profiler = cProfile.Profile()
    profiler.enable()
    loop()
    profiler.disable()
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("tottime").print_stats(lines)
    total = sum(row[2] for row in stats.stats.values())
    own = sum(row[2] for (path, _, _), row in stats.stats.items() if any(f in path for f in TAPE_FILES))
    return {"table": out.getvalue(), "tape_own_seconds": own, "profiled_seconds": total}


def main(argv=None) -> int:
    p = common.gpu_parser(__doc__.splitlines()[0], repeats=7)  # --require-gpu: for --device cuda
    p.add_argument("--data", choices=("auto", "fashion-mnist", "random"), default="auto")
    p.add_argument("--data-dir", default=None, help="where the Fashion-MNIST files are (default: the usual places)")
    p.add_argument("--optimizer", choices=sorted(LR), default="sgd")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--no-torch", action="store_true", help="time the trainer and the loop only")
    p.add_argument("--profile", action="store_true", help="also print a cProfile of one loop epoch")
    p.add_argument("--threads", type=int, default=os.cpu_count(),
                   help="threads for NumPy's BLAS (via threadpoolctl) and for PyTorch (default: all cores)")
    args = p.parse_args(argv)
    if args.device != "cpu":
        code = common.exit_code_without_gpu(args)
        if code is not None:
            return code
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=args.threads, user_api="blas"):
        return run(args)


def run(args) -> int:
    common.warn_openblas_pins()
    facts = common.machine_facts(gpu=args.device != "cpu")
    print(f"machine: {common.machine_line(facts)}")
    dataset = get_dataset(args.data, args.data_dir)
    trainer = make_trainer(dataset, args.optimizer, args.device)
    runs = {"trainer": trainer.train_epoch, "loop": LoopEpoch(trainer)}
    if not args.no_torch:
        runs["torch"] = torch_epoch(trainer, args.threads)
    first = {name: fn() for name, fn in runs.items()}  # warm-up, and the same first epoch for each
    times = {name: [] for name in runs}
    for _ in range(args.repeats):
        for name, fn in runs.items():
            times[name].append(fn())
    print(f"\ndata: {dataset.name}, {trainer.n_train} samples, batch {trainer.batch_size}, float32, "
          f"{args.optimizer} lr {LR[args.optimizer]}, {trainer.steps_per_epoch} steps, device {args.device}, "
          f"{args.threads} BLAS/PyTorch threads; {args.repeats} timed epochs after 1 warm-up each, in turns\n")
    result = report(first, times)
    if args.profile:
        result["profile"] = prof = profile_epoch(runs["loop"])
        print("\ncProfile of one loop epoch (top functions by own time):\n")
        print(prof["table"])
        print(f"own time in the tape's modules ({', '.join(TAPE_FILES)}): {prof['tape_own_seconds'] * 1e3:.1f} ms "
              f"of {prof['profiled_seconds'] * 1e3:.0f} ms profiled, "
              f"{prof['tape_own_seconds'] / runs['loop'].steps * 1e6:.0f} µs per step")
    paths = common.write_results("tensor_epoch", {
        "machine": facts,
        "setup": {"data": dataset.name, "samples": trainer.n_train, "batch": trainer.batch_size, "sizes": (784, trainer.config.hidden[0], 10),
                  "dtype": "float32", "optimizer": args.optimizer, "lr": LR[args.optimizer], "device": args.device,
                  "repeats": args.repeats, "threads": args.threads},
        "first_epoch": first, "results": result,
    }, args.json, where=None if args.device == "cpu" else f"{args.device}-{common.gpu_facts()['name']}")
    print(f"\nwrote {', '.join(paths)}")
    return 0


def report(first: dict, times: dict) -> dict:
    """Print the epoch table, the loss check and the targets; return the summaries."""
    summary = {name: common.summarize([r["seconds"] for r in rs]) for name, rs in times.items()}
    paired = {ref: [a["seconds"] / b["seconds"] for a, b in zip(times["loop"], times[ref])]
              for ref in times if ref != "loop"}
    rows = []
    for name, s in summary.items():
        cells = [name, common.fmt_spread(s)]
        for ref in ("trainer", "torch"):
            if ref not in summary:
                continue
            ratio = s["median"] / summary[ref]["median"]
            pairs = paired.get(ref) if name == "loop" else None
            cells.append(f"{ratio:.2f}x" + (f" (paired: median {statistics.median(pairs):.2f}, "
                                            f"{min(pairs):.2f}–{max(pairs):.2f})" if pairs else ""))
        cells.append(f"{times[name][-1]['train_loss']:.4f}")
        rows.append(cells)
    headers = ["epoch", "median (min–max)", "x trainer", *(["x PyTorch"] if "torch" in summary else []), "last train loss"]
    print(common.markdown_table(headers, rows))
    losses = {name: r["train_loss"] for name, r in first.items()}
    same = losses["loop"] == losses["trainer"]
    print("\nfirst-epoch train loss: " + ", ".join(f"{k} {v:.6f}" for k, v in losses.items())
          + f"; loop == trainer exactly: {same}")
    result = {"epochs": summary, "paired": paired, "first_epoch_losses": losses, "loop_equals_trainer": same,
              "targets": {}}
    for ref, target in (("trainer", TARGET_VS_TRAINER), ("torch", TARGET_VS_TORCH)):
        if ref not in summary:
            continue
        ratio = summary["loop"]["median"] / summary[ref]["median"]
        met = ratio <= target if ref == "trainer" else ratio < target
        result["targets"][f"loop_vs_{ref}"] = {"target": target, "value": ratio, "met": met}
        words = f"<= {target}x the trainer's" if ref == "trainer" else "faster than PyTorch eager"
        print(f"target: loop epoch {words}: {ratio:.2f}x -> {common.verdict(met)}")
    return result


if __name__ == "__main__":
    raise SystemExit(main())
