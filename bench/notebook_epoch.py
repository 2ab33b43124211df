"""The notebook recipe's full-batch epoch: the notebook's own code against xpgrad's ``--recipe notebook``.

Both train the notebook's model (784 inputs plus a bias column, 100 hidden,
10 classes, W ~ N(0, 1), float64) on all 60 000 samples in one batch with
lr 1e-5 and the summed loss's gradient. The notebook's step
(``xpgrad.notebook.Model`` + ``train_one_step``) appends the ones column every
step, builds the (N, 10, 10) softmax Jacobian and computes layer 1's unused
input gradient; xpgrad's ``Trainer.train_epoch`` (the built-in ``mlp`` with
``input_bias``: ``x @ W + b``, the bias drawn as the last row of the
notebook's W1, through the tape) does the same math without those. Both start
from the same weights, so their losses must agree.

Run from the repository root::

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python -m bench.notebook_epoch
"""

from __future__ import annotations

import time

import numpy

from bench import common
from bench.cpu_epoch import get_dataset
from xpgrad import notebook
from xpgrad.training import Config, Trainer

TARGET_SPEEDUP = 3.0  # xpgrad >= 3x faster than the notebook


def gemm_floor(x, W1, W2) -> float:
    """Seconds for the matrix products a full-batch xpgrad step needs (no layer-1 input gradient)."""
    h, g1, g2 = x @ W1, numpy.ones((x.shape[0], W1.shape[1])), numpy.ones((x.shape[0], W2.shape[1]))
    start = time.perf_counter()
    x @ W1
    h @ W2
    x.T @ g1
    h.T @ g2
    g2 @ W2.T
    return time.perf_counter() - start


def weights(trainer):
    """The trainer's (784, 100) and (100, 10) weights, and its first layer's weight with the bias as its last row,
    the notebook's (785, 100) ``W1`` (the built-in mlp with ``input_bias``: no bias after the first layer)."""
    state = trainer.model.state_dict()
    W1, b1, W2 = state["1.weight"], state["1.bias"], state["3.weight"]
    return W1, W2, numpy.vstack([W1, b1[None, :]])


def main(argv=None) -> int:
    p = common.parser(__doc__.splitlines()[0], repeats=5)
    p.add_argument("--data", choices=("auto", "fashion-mnist", "random"), default="auto")
    args = p.parse_args(argv)
    common.warn_openblas_pins()
    facts = common.machine_facts()
    print(f"machine: {common.machine_line(facts)}")

    dataset = get_dataset(args.data)
    config = Config.from_recipe("notebook", epochs=1000)
    trainer = Trainer(config, dataset, device="cpu", progress=False)
    assert trainer.batch_size == trainer.n_train and trainer.dtype == numpy.float64

    # The notebook's inputs are x / 255 in float64 and one-hot labels: the
    # trainer's "scale" normalization, so both see the same arrays.
    x = trainer.inputs.normalize(trainer.x_train).reshape(trainer.n_train, -1)
    onehot = numpy.zeros((x.shape[0], dataset.num_classes))
    onehot[numpy.arange(x.shape[0]), trainer.t_train] = 1
    model = notebook.Model(rng=numpy.random.default_rng(config.seed))
    W1, W2, W1_aug = weights(trainer)
    assert numpy.array_equal(model.W1, W1_aug) and numpy.array_equal(model.W2, W2), "the two models must start equal"

    def notebook_epoch():
        start = time.perf_counter()
        loss, accuracy = notebook.train_one_step(model, x, onehot, lr=config.lr)
        return {"train_loss": float(loss), "train_accuracy": float(accuracy),
                "seconds": time.perf_counter() - start}

    # Warm-up one each, then alternate; both keep training, step for step.
    with numpy.errstate(over="ignore", invalid="ignore", divide="ignore"):
        first = {"xpgrad": trainer.train_epoch(), "notebook": notebook_epoch()}
        xp_runs, nb_runs, floors = [], [], []
        for _ in range(args.repeats):
            xp_runs.append(trainer.train_epoch())
            nb_runs.append(notebook_epoch())
            floors.append(gemm_floor(x, W1, W2))
    results = report(dataset, x, config, args, first, xp_runs, nb_runs, floors)
    met = results["speedup"] >= TARGET_SPEEDUP
    print(f"target: xpgrad >= {TARGET_SPEEDUP:g}x faster than the notebook: {results['speedup']:.2f}x "
          f"-> {common.verdict(met)}")

    paths = common.write_results("notebook_epoch", {
        "machine": facts,
        "setup": {"data": dataset.name, "samples": int(x.shape[0]), "dtype": "float64", "lr": config.lr,
                  "repeats": args.repeats},
        "first_epoch": first,
        "results": results,
        "targets": {"speedup": {"target": TARGET_SPEEDUP, "value": results["speedup"], "met": met}},
    }, args.json)
    print(f"\nwrote {', '.join(paths)}")
    return 0


def report(dataset, x, config, args, first, xp_runs, nb_runs, floors) -> dict:
    """Print the table and the GEMM floor; return the summaries."""
    floor_s = common.summarize(floors)
    xp_s = common.summarize([r["seconds"] for r in xp_runs])
    nb_s = common.summarize([r["seconds"] for r in nb_runs])
    paired = [b["seconds"] / a["seconds"] for a, b in zip(xp_runs, nb_runs)]
    speedup = nb_s["median"] / xp_s["median"]
    loss_gap = max(abs(a["train_loss"] - b["train_loss"]) / max(abs(b["train_loss"]), 1e-300)
                   for a, b in zip([first["xpgrad"], *xp_runs], [first["notebook"], *nb_runs]))

    print(f"\ndata: {dataset.name}, full batch of {x.shape[0]}, float64, SGD lr {config.lr:g}; "
          f"{args.repeats} timed epochs after 1 warm-up, alternating\n")
    print(common.markdown_table(
        ["implementation", "epoch, median (min–max)", "speed-up over the notebook", "last train loss"],
        [["notebook (Jacobian softmax)", common.fmt_spread(nb_s), "1", f"{nb_runs[-1]['train_loss']:.4f}"],
         ["xpgrad --recipe notebook", common.fmt_spread(xp_s),
          f"{speedup:.2f}x (paired {min(paired):.2f}–{max(paired):.2f})", f"{xp_runs[-1]['train_loss']:.4f}"]]))
    ceiling = nb_s["median"] / floor_s["median"]
    print(f"\nxpgrad's float64 GEMM floor (x@W1, h@W2, x.T@g1, h.T@g2, g2@W2.T at N = {x.shape[0]}): "
          f"{common.fmt_spread(floor_s)}; xpgrad epoch = {xp_s['median'] / floor_s['median']:.2f}x that floor; "
          f"the largest speed-up the floor allows is {ceiling:.2f}x")
    print(f"largest relative loss difference between the two, epoch by epoch: {loss_gap:.1e}")
    return {"notebook": nb_s, "xpgrad": xp_s, "speedup": speedup, "speedup_paired": paired,
            "max_relative_loss_difference": loss_gap, "xpgrad_gemm_floor": floor_s,
            "speedup_ceiling_from_floor": ceiling}


if __name__ == "__main__":
    raise SystemExit(main())
