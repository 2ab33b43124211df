"""Train xpgrad's default recipe with plain PyTorch: what ``bench/e2e.py`` times next to ``xpgrad train``.

The recipe: 784-100-10 MLP (Linear, ReLU, Linear), He-initialized weights and
zero biases, inputs standardized with the training set's mean and standard
deviation, cross-entropy, Adam with lr 2e-3 decayed by a cosine over all steps
of 15 epochs, batch 128, float32, the test set evaluated after every epoch.
Where it costs nothing it matches xpgrad exactly: the initial weights are the
same draws (``xpgrad.nn.init.init_weight`` with the same seed, layer by layer,
as the built-in ``xpgrad.models.mlp`` draws them) and the batch
order comes from the same generator (``default_rng([seed, 1])``), so the two
runs see the same batches. The files are read with ``xpgrad.data``, verified
the same way. Prints a line per epoch and a last line with the test accuracy,
the training seconds and the wall seconds since the script started::

    PYTHONPATH=. python -m bench.torch_train --dataset fashion-mnist --device cuda [--data-dir DIR] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time

START = time.perf_counter()

import numpy  # noqa: E402

LR, EPOCHS, BATCH, HIDDEN = 2e-3, 15, 128, 100


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="fashion-mnist", choices=("mnist", "fashion-mnist"))
    p.add_argument("--data-dir", default=None, help="use only this folder for the dataset files")
    p.add_argument("--device", default="cuda", help="a torch device: cuda, cuda:N or cpu (default cuda)")
    p.add_argument("--epochs", type=int, default=EPOCHS)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="also write the results as JSON here")
    return p.parse_args(argv)


def standardized(torch, images, device, mean=None, std=None):
    """uint8 (N, 28, 28) images -> float32 (N, 784) on ``device``, standardized (with the training set's stats)."""
    x = torch.from_numpy(images.reshape(len(images), -1)).to(device).float().div_(255)
    if mean is None:
        mean, std = x.mean(), x.std(correction=0)
    return (x - mean) / std, mean, std


def make_model(torch, seed, device):
    """The MLP with xpgrad's initial weights for ``seed`` (He: N(0, 2/fan_in); zero biases).

    xpgrad keeps weights as (in, out), PyTorch as (out, in): hence the transpose."""
    from xpgrad.nn.init import init_weight

    rng = numpy.random.default_rng(seed)
    layers = [torch.nn.Linear(784, HIDDEN), torch.nn.ReLU(), torch.nn.Linear(HIDDEN, 10)]
    with torch.no_grad():
        for layer in (layers[0], layers[2]):
            w = init_weight(rng, layer.in_features, layer.out_features, "he")
            layer.weight.copy_(torch.from_numpy(w.T.astype(numpy.float32)))
            layer.bias.zero_()
    return torch.nn.Sequential(*layers).to(device)


def train_epoch(torch, model, opt, x, t, perm, lr_at, first_step):
    """One epoch over ``perm``; (mean loss, accuracy). Reads the loss back once, at the end."""
    F = torch.nn.functional
    n = x.shape[0]
    loss_sum = torch.zeros((), device=x.device)
    correct = torch.zeros((), dtype=torch.int64, device=x.device)
    for i, start in enumerate(range(0, n, BATCH)):
        idx = perm[start:start + BATCH]
        xb, tb = x.index_select(0, idx), t.index_select(0, idx)
        for group in opt.param_groups:
            group["lr"] = lr_at(first_step + i)
        logits = model(xb)
        loss = F.cross_entropy(logits, tb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            loss_sum += loss * tb.shape[0]
            correct += (logits.argmax(dim=1) == tb).sum()
    return float(loss_sum) / n, int(correct) / n


def evaluate(torch, model, x, t):
    with torch.no_grad():
        logits = model(x)
        loss = torch.nn.functional.cross_entropy(logits, t)
        return float(loss), int((logits.argmax(dim=1) == t).sum()) / x.shape[0]


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    from xpgrad.data import load_dataset

    device = torch.device(args.device)
    data = load_dataset(args.dataset, data_dir=args.data_dir, progress=False)
    x, mean, std = standardized(torch, data.x_train, device)
    x_test, _, _ = standardized(torch, data.x_test, device, mean, std)
    t = torch.from_numpy(data.y_train.astype(numpy.int64)).to(device)
    t_test = torch.from_numpy(data.y_test.astype(numpy.int64)).to(device)
    model = make_model(torch, args.seed, device)
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    steps = -(-x.shape[0] // BATCH)
    total = args.epochs * steps
    lr_at = lambda s: LR * 0.5 * (1 + math.cos(math.pi * min(s, total) / total))  # noqa: E731
    rng = numpy.random.default_rng([args.seed, 1])
    history, train_start = [], time.perf_counter()
    for epoch in range(args.epochs):
        began = time.perf_counter()
        perm = torch.from_numpy(rng.permutation(x.shape[0]).astype(numpy.int64)).to(device)
        loss, acc = train_epoch(torch, model, opt, x, t, perm, lr_at, epoch * steps)
        test_loss, test_acc = evaluate(torch, model, x_test, t_test)
        seconds = time.perf_counter() - began
        history.append({"epoch": epoch + 1, "train_loss": loss, "train_accuracy": acc, "test_loss": test_loss,
                        "test_accuracy": test_acc, "seconds": seconds})
        print(f"epoch {epoch + 1}/{args.epochs}: train loss {loss:.4f} acc {acc:.4f} | "
              f"test loss {test_loss:.4f} acc {test_acc:.4f} | {seconds:.2f} s")
    train_seconds, wall = time.perf_counter() - train_start, time.perf_counter() - START
    print(f"done: test accuracy {100 * history[-1]['test_accuracy']:.2f}% after {args.epochs} epochs, "
          f"{train_seconds:.2f} s training, {wall:.2f} s since the script started, on {device}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"test_accuracy": history[-1]["test_accuracy"], "train_seconds": train_seconds,
                       "wall_seconds": wall, "device": str(device), "torch": torch.__version__,
                       "epochs": history}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
