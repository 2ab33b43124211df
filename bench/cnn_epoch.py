"""The cnn's training epoch: xpgrad against PyTorch eager (same layers, weights, batch order and threads), and
where xpgrad's time goes.

Both train the built-in ``cnn`` (``xpgrad.models.cnn``: conv 5x5 -> pool 2
-> ReLU twice, Linear 512->128 -> ReLU -> Dropout(0.25) -> Linear) with the
``cnn`` recipe's Adam (lr 2e-3, held constant so every epoch is alike) on
Fashion-MNIST, batches of 128, float32:

* ``xpgrad``: ``Trainer.train_epoch`` (the CLI's epoch);
* ``torch``: the same ``nn.Sequential`` in PyTorch eager (oneDNN's
  convolutions on the CPU, cuDNN's on a GPU), its weights copied from the
  trainer's ``state_dict`` by name (Conv2d as it is: xpgrad keeps PyTorch's
  (out, in, kh, kw); Linear transposed), the same batch order, the loss and
  accuracy summed on the device and read back as often as the trainer does.

They take turns, so each repeat gives a paired ratio; the table shows the
median and the spread (min-max) of the epochs and of the paired ratios. The
dropout masks differ (each library draws its own), so the losses agree only
roughly. Then, on the CPU:

* **where the time goes**: one more xpgrad epoch with a timer around each
  part (im2col's copy, each matrix product, col2im, the max-pool's passes,
  ...), and the matrix products against their float32 floor: the epoch's
  GEMM FLOPs at the sgemm rate NumPy reaches on a large square product;
* **the input gradient two ways**: col2im after one product (what xpgrad
  does) against a second convolution of the padded output gradient with the
  flipped kernel (one product, no col2im);
* **peak RSS** (``--rss``) of ``xpgrad train --model cnn --recipe cnn
  --epochs 1 --device cpu --quiet`` on Fashion-MNIST, read as bench.rss does.

On a GPU (``--device cuda``, bench/gpu_check.sh) xpgrad runs eagerly and as
a recorded CUDA graph, PyTorch eagerly with cuDNN (``cudnn.benchmark`` off
and on), and ``--channels 32,64`` gives the wider model.

Run from the repository root::

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python -m bench.cnn_epoch --threads 1 --rss
    PYTHONPATH=. python -m bench.cnn_epoch --device cuda --require-gpu --repeats 3   # on a GPU machine
    PYTHONPATH=. python -m bench.cnn_epoch --device cuda --require-gpu --channels 32,64
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import sys
import tempfile

import numpy

from bench import common
from bench.cnn_parts import breakdown, input_gradient_two_ways
from bench.cpu_epoch import get_dataset
from bench.turns import host_state
from xpgrad.training import Config, Trainer

TARGET_VS_TORCH = 1.5  # the target for the CPU epoch at one thread
PEAK_RSS_TARGET_MB = 600.0


#: ``--channels`` -> the model spec: the built-in cnn, or the wider one below, as a module of one's own.
MODELS = {(16, 32): "cnn", (32, 64): "bench.cnn_epoch:wide_cnn"}


def wide_cnn(input_shape, num_classes):
    """The cnn with convolutions of 32 and 64 channels (``--channels 32,64``), for the GPU comparison."""
    from xpgrad.models import cnn

    return cnn(input_shape, num_classes, channels=(32, 64))


def make_trainer(dataset, device: str, channels, graph: str = "off") -> Trainer:
    config = Config.from_recipe("cnn", schedule="constant", epochs=1000, dataset=common.config_dataset(dataset.name),
                                model=MODELS[tuple(channels)])
    return Trainer(config, dataset, device=device, progress=False, graph=graph)


class TorchCnnEpoch:
    """PyTorch eager training the trainer's model layer for layer, from its weights and batch order."""

    def __init__(self, trainer: Trainer, threads: int | None, cudnn_benchmark: bool = False):
        import torch

        self.torch = torch
        if threads:
            torch.set_num_threads(threads)
        torch.backends.cudnn.benchmark = cudnn_benchmark
        torch.manual_seed(0)
        self.x = torch.from_dlpack(trainer.inputs.normalize(trainer.x_train))
        self.t = torch.from_dlpack(trainer.t_train).long()
        self.device = self.x.device
        self.model = torch_cnn(torch, trainer.model, host_state(trainer.model)).to(self.device)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=trainer.config.lr)
        self.batch, self.log_every = trainer.batch_size, trainer.log_every
        self.rng = numpy.random.default_rng([trainer.config.seed, 1])
        self.loss_sum = torch.zeros((), dtype=self.x.dtype, device=self.device)
        self.correct = torch.zeros((), dtype=torch.int64, device=self.device)

    def step(self, idx):
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
        import time

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


def torch_cnn(torch, model, params: dict):
    """xpgrad's Sequential as a ``torch.nn.Sequential`` with the same layers at the same positions (so the two
    ``state_dict``s share their names) and ``params`` copied in: Conv2d as it is, Linear transposed."""
    nn, layers = torch.nn, []
    for i, m in enumerate(model):
        kind = type(m).__name__
        if kind == "Conv2d":
            layer = nn.Conv2d(m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding,
                              bias=m.bias is not None)
        elif kind == "Linear":
            layer = nn.Linear(m.in_features, m.out_features, bias=m.bias is not None)
        else:
            layer = {"MaxPool2d": lambda: nn.MaxPool2d(m.kernel_size, m.stride, m.padding), "ReLU": nn.ReLU,
                     "Flatten": nn.Flatten, "Dropout": lambda: nn.Dropout(m.p)}[kind]()
        for name, p in layer.named_parameters():
            value = params[f"{i}.{name}"]
            with torch.no_grad():
                p.copy_(torch.from_numpy(value.T.copy() if kind == "Linear" and name == "weight" else value))
        layers.append(layer)
    return nn.Sequential(*layers)


def run_in_turns(runs: dict, repeats: int) -> tuple[dict, dict]:
    """One warm-up epoch each, then ``repeats`` rounds of one epoch each, in turns."""
    first = {name: fn() for name, fn in runs.items()}
    times = {name: [] for name in runs}
    for _ in range(repeats):
        for name, fn in runs.items():
            times[name].append(fn())
    return first, times


def report(first: dict, times: dict, reference: str = "xpgrad") -> dict:
    """The epochs' table, with each one's paired ratio to ``reference``; returns the summaries."""
    summary = {name: common.summarize([r["seconds"] for r in rs]) for name, rs in times.items()}
    paired = {name: [a["seconds"] / b["seconds"] for a, b in zip(times[reference], rs)]
              for name, rs in times.items() if name != reference}
    rows = []
    for name, s in summary.items():
        pairs = paired.get(name)
        ratio = "" if pairs is None else (f"{statistics.median(pairs):.2f}x ({min(pairs):.2f}–{max(pairs):.2f})")
        rows.append([name, common.fmt_spread(s), ratio, f"{first[name]['train_loss']:.4f}",
                     f"{times[name][-1]['train_accuracy']:.4f}"])
    print(common.markdown_table(["epoch", "seconds, median (min–max)", f"{reference} / this, paired median (min–max)",
                                 "first epoch's train loss", "last epoch's train accuracy"], rows))
    return {"epochs": summary, "paired_ratio_to_reference": paired, "first_epoch": first}


def main(argv=None) -> int:
    p = common.gpu_parser(__doc__.splitlines()[0], repeats=5)
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--threads", type=int, default=1, help="BLAS and PyTorch threads on the CPU (default 1)")
    p.add_argument("--channels", default="16,32", help="the two convolutions' widths (default 16,32; wide: 32,64)")
    p.add_argument("--data", choices=("auto", "fashion-mnist", "random"), default="auto")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--limit", type=int, default=None, help="train on the first N samples only (a smoke run)")
    p.add_argument("--no-torch", action="store_true")
    p.add_argument("--rss", action="store_true", help="also the peak RSS of a 1-epoch `xpgrad train --model cnn`")
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
    on_gpu = args.device != "cpu"
    facts = common.machine_facts(gpu=on_gpu)
    print(f"machine: {common.machine_line(facts)}")
    dataset = get_dataset(args.data, args.data_dir)
    if args.limit:
        dataset = dataclasses.replace(dataset, x_train=dataset.x_train[:args.limit],
                                      y_train=dataset.y_train[:args.limit])
    channels = tuple(int(c) for c in args.channels.split(","))
    if channels not in MODELS:
        print(f"--channels takes {' or '.join(','.join(map(str, c)) for c in MODELS)}, got {args.channels}")
        return 2
    trainer = make_trainer(dataset, args.device, channels)
    runs = {"xpgrad": trainer.train_epoch}
    if on_gpu:
        runs["xpgrad_graph"] = make_trainer(dataset, args.device, channels, graph="on").train_epoch
    if not args.no_torch:
        runs["torch"] = TorchCnnEpoch(trainer, None if on_gpu else args.threads)
        if on_gpu:
            runs["torch_cudnn_benchmark"] = TorchCnnEpoch(trainer, None, cudnn_benchmark=True)
    first, times = run_in_turns(runs, args.repeats)
    params = sum(p.size for p in trainer.model.parameters())
    print(f"\ndata: {dataset.name}, {trainer.n_train} samples, batch {trainer.batch_size}, float32, cnn {channels} "
          f"({params:,} parameters), Adam lr {trainer.config.lr} constant, {trainer.steps_per_epoch} steps, device "
          f"{args.device}, {args.threads} thread(s); {args.repeats} timed epochs after 1 warm-up each, in turns\n")
    result = {"results": report(first, times), "targets": {}}
    if "torch" in times and not on_gpu:
        ratio = result["results"]["epochs"]["xpgrad"]["median"] / result["results"]["epochs"]["torch"]["median"]
        met = ratio <= TARGET_VS_TORCH
        result["targets"]["xpgrad_vs_torch_eager"] = {"target": TARGET_VS_TORCH, "value": ratio, "met": met}
        print(f"\ntarget: xpgrad's CPU epoch <= {TARGET_VS_TORCH}x PyTorch eager's: {ratio:.2f}x -> "
              f"{common.verdict(met)}")
    if not on_gpu:
        result["breakdown"] = breakdown(trainer)
        result["input_gradient"] = input_gradient_two_ways(trainer)
    if args.rss:
        result["peak_rss_mb"] = peak_rss(args.data_dir)
    paths = common.write_results("cnn_epoch", {
        "machine": facts, "setup": {"data": dataset.name, "samples": trainer.n_train, "batch": trainer.batch_size,
                                    "channels": channels, "parameters": params, "device": args.device,
                                    "threads": args.threads, "repeats": args.repeats},
        **result}, args.json, where=None if not on_gpu else f"{args.device}-{common.gpu_facts()['name']}")
    print(f"\nwrote {', '.join(paths)}")
    return 0


def peak_rss(data_dir) -> dict:
    """Peak RSS (MB) of a 1-epoch ``xpgrad train --model cnn --recipe cnn`` on Fashion-MNIST, 3 runs."""
    from bench.rss import MB, peak_rss as measure
    from xpgrad.data import SYSTEM_DATA_DIR

    data_dir = data_dir or os.path.join(SYSTEM_DATA_DIR, "fashion-mnist")
    runs = []
    for _ in range(3):
        with tempfile.TemporaryDirectory(prefix="xpgrad-rss-") as out:
            r = measure([sys.executable, "-m", "xpgrad.cli", "train", "--model", "cnn", "--recipe", "cnn",
                         "--dataset", "fashion-mnist", "--epochs", "1", "--device", "cpu", "--quiet",
                         "--data-dir", data_dir, "--out", out])
            if r["returncode"] != 0:
                raise RuntimeError(f"the 1-epoch cnn run failed (exit {r['returncode']})")
            runs.append(r["peak_rss_bytes"] / MB)
    s = common.summarize(runs)
    met = s["median"] <= PEAK_RSS_TARGET_MB
    print(f"\npeak RSS of a 1-epoch `xpgrad train --model cnn --recipe cnn` (CPU): {s['median']:.0f} MB "
          f"(min {s['min']:.0f}, max {s['max']:.0f}, {len(runs)} runs); <= {PEAK_RSS_TARGET_MB:.0f} MB -> "
          f"{common.verdict(met)}")
    return {**s, "target": PEAK_RSS_TARGET_MB, "met": met}


if __name__ == "__main__":
    raise SystemExit(main())
