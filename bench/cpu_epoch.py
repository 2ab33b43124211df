"""One CPU training epoch: xpgrad (NumPy) against PyTorch eager, and both against the GEMM floor.

The work is the default recipe's shape with plain SGD: a 784-100-10 MLP
(Linear+ReLU+Linear with biases), float32, batches of 128 over 60 000 samples.
An epoch is everything ``Trainer.train_epoch`` does: draw a permutation,
gather each batch, forward (Flatten, Linear+ReLU, Linear, through the tape),
the loss, ``loss.backward()``, one fused update of the flat parameter buffer,
and keep the running loss and accuracy; no evaluation. PyTorch runs the same
loop on the same normalized data, with the same model (layer for layer, the
initial weights copied from the trainer's ``state_dict`` by name) and the
same batch order.

The GEMM floor is the time the epoch's matrix products alone would take at
the sgemm rate NumPy reaches at exactly those shapes, measured in the same run.
Per sample the products cost (layer 1's input gradient is never computed)::

    forward    2*784*100 + 2*100*10
    gW1, gW2   2*784*100 + 2*100*10
    gx2        2*10*100
    total      2*(2*784*100 + 3*100*10) = 319 600 FLOP -> 19.18 GFLOP per 60 000 samples

Run from the repository root::

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python -m bench.cpu_epoch
"""

from __future__ import annotations

import os
import time

import numpy

from bench import common
from xpgrad.data import Dataset, load_dataset
from xpgrad.errors import DataError
from xpgrad.training import Config, Trainer

SIZES = (784, 100, 10)
BATCH = 128
N_TRAIN = 60000
LR = 0.01
TARGET_VS_TORCH = 0.5  # xpgrad epoch <= 0.5x PyTorch eager
TARGET_VS_FLOOR = 1.5  # xpgrad epoch <= 1.5x the GEMM floor


def flops_per_sample(sizes=SIZES) -> int:
    """Matrix-product FLOPs per sample for one training step: forward, every gW, gx except layer 1's."""
    pairs = list(zip(sizes[:-1], sizes[1:]))
    forward = sum(2 * a * b for a, b in pairs)
    grad_w = forward
    grad_x = sum(2 * a * b for a, b in pairs[1:])
    return forward + grad_w + grad_x


def get_dataset(kind: str, data_dir: str | None = None):
    """Fashion-MNIST when it is on disk (``auto``/``fashion-mnist``), else random data of MNIST shape."""
    if kind in ("auto", "fashion-mnist"):
        try:
            return load_dataset("fashion-mnist", data_dir=data_dir, progress=False)
        except DataError as exc:
            if kind == "fashion-mnist":
                raise
            print(f"(fashion-mnist not available: {exc}; using random data of MNIST shape)")
    rng = numpy.random.default_rng(0)
    return Dataset(
        "random",
        rng.integers(0, 256, size=(N_TRAIN, 28, 28), dtype=numpy.uint8),
        rng.integers(0, 10, size=N_TRAIN, dtype=numpy.uint8),
        rng.integers(0, 256, size=(10000, 28, 28), dtype=numpy.uint8),
        rng.integers(0, 10, size=10000, dtype=numpy.uint8),
        "random",
    )


def make_trainer(dataset, hidden=SIZES[1:-1]) -> Trainer:
    config = Config.from_recipe("default", optimizer="sgd", lr=LR, schedule="constant", epochs=1000,
                                hidden=tuple(hidden))
    return Trainer(config, dataset, device="cpu", progress=False)


class TorchEpoch:
    """PyTorch eager doing what ``Trainer.train_epoch`` does, from the trainer's data and weights.

    Works on the trainer's device: NumPy arrays give CPU tensors, CuPy arrays
    CUDA tensors (shared through DLPack, not copied).
    """

    def __init__(self, trainer: Trainer, threads: int | None = None):
        import torch

        from bench.torch_variants import torch_model
        from bench.turns import host_state

        self.torch = torch
        if threads:
            torch.set_num_threads(threads)
        torch.manual_seed(0)
        self.x = torch.from_dlpack(trainer.inputs.normalize(trainer.x_train))
        self.t = torch.from_dlpack(trainer.t_train).long()
        self.device = self.x.device
        self.log_every = trainer.log_every
        # The trainer's model layer for layer (Flatten, Linear, ReLU, Linear), its initial weights by name.
        self.model = torch_model(torch, [type(m).__name__ for m in trainer.model], host_state(trainer.model),
                                 self.device)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=trainer.config.lr)
        self.batch = trainer.batch_size
        # The same batch order as the trainer: its generator, seeded the same way.
        self.rng = numpy.random.default_rng([trainer.config.seed, 1])
        self.loss_sum = torch.zeros((), dtype=self.x.dtype, device=self.device)
        self.correct = torch.zeros((), dtype=torch.int64, device=self.device)

    def step(self, idx):
        """One training step on the rows ``idx`` (a tensor on the device), accumulating loss and hits."""
        torch = self.torch
        x, t = self.x.index_select(0, idx), self.t.index_select(0, idx)
        logits = self.model(x)
        loss = torch.nn.functional.cross_entropy(logits, t)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        with torch.no_grad():
            self.loss_sum += loss * t.shape[0]
            self.correct += (logits.argmax(dim=1) == t).sum()

    def __call__(self) -> dict:
        n, b = self.x.shape[0], self.batch
        start = time.perf_counter()
        perm = self.torch.from_numpy(self.rng.permutation(n).astype(numpy.int64)).to(self.device)
        self.loss_sum.zero_()
        self.correct.zero_()
        steps = -(-n // b)
        for step in range(steps):
            self.step(perm[step * b:(step + 1) * b])
            if (step + 1) % self.log_every == 0 or step == steps - 1:
                float(self.loss_sum)  # the trainer reads its loss back as often
        seconds = time.perf_counter() - start
        return {"train_loss": float(self.loss_sum) / n, "train_accuracy": int(self.correct) / n, "seconds": seconds}


def gemm_cases(batch=BATCH, sizes=SIZES, dtype=numpy.float32):
    """The step's matrix products as (name, a, b): operands laid out as xpgrad has them. Per layer of
    ``sizes`` (in, out): forward ``x @ W``, the weight gradient ``x.T @ g``, and (but for the first layer,
    whose input is data) the input gradient ``g @ W.T``."""
    rng = numpy.random.default_rng(1)
    cases = []
    for i, (d_in, d_out) in enumerate(zip(sizes[:-1], sizes[1:]), start=1):
        x = rng.standard_normal((batch, d_in), dtype=dtype)
        W = rng.standard_normal((d_in, d_out), dtype=dtype)
        g = rng.standard_normal((batch, d_out), dtype=dtype)
        cases.append((f"fwd L{i}: x @ W{i} ({batch}x{d_in} @ {d_in}x{d_out})", x, W))
        cases.append((f"gW{i}: x.T @ g{i} ({d_in}x{batch} @ {batch}x{d_out})", x.T, g))
        if i > 1:
            cases.append((f"gx{i}: g{i} @ W{i}.T ({batch}x{d_out} @ {d_out}x{d_in})", g, W.T))
    return cases


def layouts(a, b):
    """Ways to compute the same product ``a @ b``: as given, from contiguous copies, or as ``(b.T @ a.T).T``."""
    c = numpy.empty((a.shape[0], b.shape[1]), dtype=a.dtype)
    cT = numpy.empty((b.shape[1], a.shape[0]), dtype=a.dtype)
    ac, bc = numpy.ascontiguousarray(a), numpy.ascontiguousarray(b)
    return {
        "as laid out": lambda: numpy.matmul(a, b, out=c),
        "contiguous": lambda: numpy.matmul(ac, bc, out=c),
        "transposed": lambda: numpy.matmul(b.T, a.T, out=cT),
    }


class GemmFloor:
    """Per-call sgemm times for the step's products, in each layout; one :meth:`measure` per repeat."""

    def __init__(self, sizes=SIZES):
        self.cases = [(name, a, b, layouts(a, b)) for name, a, b in gemm_cases(sizes=sizes)]
        self.number = {(name, k): common.calls_for(f, 0.03) for name, _, _, fs in self.cases for k, f in fs.items()}
        self.times = {key: [] for key in self.number}

    def measure(self) -> dict:
        """Time every product once (a batch of calls each); return this round's floors in seconds."""
        for name, _, _, fs in self.cases:
            for k, f in fs.items():
                self.times[name, k].append(common.time_calls(f, 1, warmup=1, number=self.number[name, k])["median"])
        per_step_laid = sum(self.times[name, "as laid out"][-1] for name, *_ in self.cases)
        per_step_best = sum(min(self.times[name, k][-1] for k in fs) for name, _, _, fs in self.cases)
        steps = N_TRAIN / BATCH  # FLOPs scale with samples, so the partial last batch counts pro rata
        return {"as_laid_out": per_step_laid * steps, "best_layout": per_step_best * steps}

    def table_rows(self) -> list[dict]:
        rows = []
        for name, a, b, fs in self.cases:
            flops = 2 * a.shape[0] * a.shape[1] * b.shape[1]
            by_layout = {k: common.summarize(self.times[name, k]) for k in fs}
            best = min(by_layout, key=lambda k: by_layout[k]["median"])
            rows.append({"gemm": name, "flops": flops, "layouts": by_layout, "best_layout": best,
                         "gflops_as_laid_out": flops / by_layout["as laid out"]["median"] / 1e9,
                         "gflops_best": flops / by_layout[best]["median"] / 1e9})
        return rows


def main(argv=None) -> int:
    p = common.parser(__doc__.splitlines()[0], repeats=7)
    p.add_argument("--data", choices=("auto", "fashion-mnist", "random"), default="auto")
    p.add_argument("--no-torch", action="store_true", help="time xpgrad and the GEMM floor only")
    p.add_argument("--threads", type=int, default=os.cpu_count(),
                   help="threads for NumPy's BLAS (via threadpoolctl) and for PyTorch (default: all cores)")
    p.add_argument("--hidden", type=lambda s: tuple(int(w) for w in s.split(",")), default=SIZES[1:-1],
                   help="hidden widths, e.g. 512,256 for a 784-512-256-10 model (default: 100)")
    args = p.parse_args(argv)
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=args.threads, user_api="blas"):
        return run(args)


def run(args) -> int:
    common.warn_openblas_pins()
    facts = common.machine_facts()
    print(f"machine: {common.machine_line(facts)}")

    dataset = get_dataset(args.data)
    trainer = make_trainer(dataset, args.hidden)
    sizes = (SIZES[0], *args.hidden, SIZES[-1])
    assert trainer.n_train == N_TRAIN and trainer.batch_size == BATCH
    run_torch = None if args.no_torch else TorchEpoch(trainer, args.threads)
    gemm = GemmFloor(sizes)
    first, xp_runs, torch_runs, floors = measure(trainer, run_torch, gemm, args.repeats)
    gemms = gemm.table_rows()
    assert sum(g["flops"] for g in gemms) == flops_per_sample(sizes) * BATCH

    print(f"\ndata: {dataset.name}, {N_TRAIN} samples, model {'-'.join(map(str, sizes))}, batch {BATCH}, float32, "
          f"SGD lr {LR}, "
          f"{trainer.steps_per_epoch} steps, {args.threads} BLAS/PyTorch threads; {args.repeats} timed epochs after 1 warm-up; "
          f"xpgrad, PyTorch and the GEMMs take turns\n")
    result = report(gemms, first, xp_runs, torch_runs, floors, sizes)
    targets = report_targets(result)
    paths = common.write_results("cpu_epoch", {
        "machine": facts,
        "setup": {"data": dataset.name, "samples": N_TRAIN, "batch": BATCH, "sizes": sizes, "dtype": "float32",
                  "optimizer": "sgd", "lr": LR, "repeats": args.repeats, "threads": args.threads},
        "flops": {"per_sample": flops_per_sample(sizes), "epoch": flops_per_sample(sizes) * N_TRAIN,
                  "formula": "N * (forward + gW for every layer + gx for every layer but the first)"},
        "gemms": gemms, "first_epoch": first, "results": result, "targets": targets,
    }, args.json)
    print(f"\nwrote {', '.join(paths)}")
    return 0


def measure(trainer, run_torch, gemm, repeats):
    """A warm-up epoch each; then every repeat runs xpgrad, PyTorch and one round of the
    GEMMs back to back, so ratios pair up under the same load."""
    first = {"xpgrad": trainer.train_epoch(), "torch": run_torch() if run_torch else None}
    xp_runs, torch_runs, floors = [], [], []
    for _ in range(repeats):
        xp_runs.append(trainer.train_epoch())
        if run_torch:
            torch_runs.append(run_torch())
        floors.append(gemm.measure())
    return first, xp_runs, torch_runs, floors


def report(gemms, first, xp_runs, torch_runs, floors, sizes=SIZES) -> dict:
    """Print the GEMM and epoch tables; return the summaries."""
    epoch_flops = flops_per_sample(sizes) * N_TRAIN
    xp_s = common.summarize([r["seconds"] for r in xp_runs])
    floor_s = common.summarize([f["best_layout"] for f in floors])
    floor_laid_s = common.summarize([f["as_laid_out"] for f in floors])
    vs_floor = [r["seconds"] / f["best_layout"] for r, f in zip(xp_runs, floors)]
    print(common.markdown_table(
        ["GEMM (float32, NumPy)", "as xpgrad lays it out: per call (min–max)", "GFLOP/s", "best layout", "GFLOP/s"],
        [[g["gemm"], common.fmt_spread(g["layouts"]["as laid out"]), f"{g['gflops_as_laid_out']:.1f}",
          g["best_layout"], f"{g['gflops_best']:.1f}"] for g in gemms]))
    print(f"\nepoch FLOPs = 60 000 x {flops_per_sample(sizes)} = {epoch_flops / 1e9:.2f} GFLOP; "
          f"GEMM floor (best layout) {common.fmt_spread(floor_s)} = {epoch_flops / floor_s['median'] / 1e9:.1f} GFLOP/s; "
          f"as laid out {common.fmt_spread(floor_laid_s)}\n")
    floor = floor_s["median"]
    rows = [["xpgrad (numpy)", common.fmt_spread(xp_s), "",
             f"{xp_s['median'] / floor:.2f}x (paired {min(vs_floor):.2f}–{max(vs_floor):.2f})",
             f"{xp_runs[-1]['train_loss']:.4f}"]]
    result = {"xpgrad": xp_s, "gemm_floor": floor_s, "gemm_floor_as_laid_out": floor_laid_s,
              "xpgrad_vs_floor": xp_s["median"] / floor, "xpgrad_vs_floor_paired": vs_floor}
    if torch_runs:
        torch_s = common.summarize([r["seconds"] for r in torch_runs])
        paired = [a["seconds"] / b["seconds"] for a, b in zip(xp_runs, torch_runs)]
        ratio = xp_s["median"] / torch_s["median"]
        rows[0][2] = f"{ratio:.2f}x (paired {min(paired):.2f}–{max(paired):.2f})"
        rows.append(["PyTorch eager", common.fmt_spread(torch_s), "1", f"{torch_s['median'] / floor:.2f}x",
                     f"{torch_runs[-1]['train_loss']:.4f}"])
        result.update(torch=torch_s, xpgrad_vs_torch=ratio, xpgrad_vs_torch_paired=paired,
                      torch_vs_floor=torch_s["median"] / floor)
    print(common.markdown_table(
        ["implementation", "epoch, median (min–max)", "x PyTorch", "x GEMM floor", "last train loss"], rows))
    print(f"\nfirst-epoch train loss (same weights, same batch order): xpgrad {first['xpgrad']['train_loss']:.5f}"
          + (f", PyTorch {first['torch']['train_loss']:.5f}" if first["torch"] else ""))
    return result


def report_targets(result) -> dict:
    """Print and return each target's verdict."""
    targets = {"xpgrad_vs_floor": {"target": TARGET_VS_FLOOR, "value": result["xpgrad_vs_floor"],
                                   "met": result["xpgrad_vs_floor"] <= TARGET_VS_FLOOR}}
    print(f"target: epoch <= {TARGET_VS_FLOOR}x GEMM floor: {result['xpgrad_vs_floor']:.2f}x "
          f"-> {common.verdict(targets['xpgrad_vs_floor']['met'])}")
    if "xpgrad_vs_torch" in result:
        ratio = result["xpgrad_vs_torch"]
        targets["xpgrad_vs_torch"] = {"target": TARGET_VS_TORCH, "value": ratio, "met": ratio <= TARGET_VS_TORCH}
        print(f"target: epoch <= {TARGET_VS_TORCH}x PyTorch eager: {ratio:.2f}x "
              f"-> {common.verdict(targets['xpgrad_vs_torch']['met'])}")
    return targets


if __name__ == "__main__":
    raise SystemExit(main())
