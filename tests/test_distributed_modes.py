"""Dropout and BatchNorm2d under data parallelism: each rank's part of a global batch computes what one process
computes for those rows of it (the masks, the batch statistics, their gradients).

The ops' parts need no MPI: a :class:`xpgrad.modeops.BatchSlice` per rank, the
ranks as threads summing through a barrier. The end-to-end cases start real MPI
jobs (see ``tests/mpi_helpers.py``) on tiny data in float64, and compare every
rank's parameters and buffers with one process's, to round-off.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading

import numpy as np
import pytest

from xpgrad import modeops

from .cli_helpers import metrics, write_idx_folder, xpgrad
from .mpi_helpers import mpi_env, mpi_xpgrad, require_mpi
from .test_distributed import assert_close_run

ROUND_OFF = 1e-12  # relative to each array's largest entry

DROPOUT_NET = """
from xpgrad import nn


class Net(nn.Module):
    def __init__(self, input_shape, num_classes):
        self.flatten, self.fc = nn.Flatten(), nn.Linear(input_shape[1] * input_shape[2], 16)
        self.drop, self.out = nn.Dropout(0.25), nn.Linear(16, num_classes)

    def forward(self, x):
        return self.out(self.drop(self.fc(self.flatten(x))))
"""

# No bias before the batch norm (it would cancel it): its gradient would be round-off, which Adam scales up.
BATCHNORM_NET = """
from xpgrad import functional as F
from xpgrad import nn


class Net(nn.Module):
    def __init__(self, input_shape, num_classes):
        _, h, w = input_shape
        self.conv, self.bn = nn.Conv2d(1, 4, 3, bias=False), nn.BatchNorm2d(4)
        self.pool, self.flatten = nn.MaxPool2d(2), nn.Flatten()
        self.fc, self.drop = nn.Linear(4 * ((h - 2) // 2) * ((w - 2) // 2), 16), nn.Dropout(0.25)
        self.out = nn.Linear(16, num_classes)

    def forward(self, x):
        x = self.pool(F.relu(self.bn(self.conv(x))))
        return self.out(self.drop(F.relu(self.fc(self.flatten(x)))))
"""


def _parts(n, size):
    return [(n * r // size, n * (r + 1) // size) for r in range(size)]


# -- the ops, in one process ---------------------------------------------------


def test_random_bits_from_an_offset_are_the_rest_of_the_stream(xp):
    state = xp.asarray(modeops.new_state(3))
    state[1] = 5
    whole = modeops.random_bits(state.copy(), 100)
    tail = state.copy()
    assert bool((modeops.random_bits(tail, 60, 40) == whole[40:]).all()) and int(tail[1]) == 6


@pytest.mark.parametrize("shape,size", [((7, 6), 3), ((40, 2, 3, 3), 2), ((16, 5), 3), ((3, 4), 3)])
def test_a_ranks_rows_draw_the_masks_one_process_draws_for_them(xp, shape, size):
    """Uneven parts too; every rank's counter advances as one process's does."""
    x = xp.ones(shape)
    state = xp.asarray(modeops.new_state(11))
    whole_state = state.copy()
    whole = modeops.Dropout(0.4).forward(x, whole_state)
    for start, stop in _parts(shape[0], size):
        mine = state.copy()
        with modeops.BatchSlice(start, stop, shape[0]):
            got = modeops.Dropout(0.4).forward(x[start:stop], mine)
        assert bool((got == whole[start:stop]).all()) and bool((mine == whole_state).all())


def test_outside_a_slice_dropout_draws_as_before():
    """The same bits with no slice, with one process's slice, and after leaving a rank's."""
    x = np.ones((8, 5))
    before = modeops.Dropout(0.5).forward(x, modeops.new_state(1))
    with modeops.BatchSlice():
        assert np.array_equal(modeops.Dropout(0.5).forward(x, modeops.new_state(1)), before)
    with modeops.BatchSlice(4, 8, 8):
        pass
    assert modeops.current_slice() is modeops.WHOLE
    assert np.array_equal(modeops.Dropout(0.5).forward(x, modeops.new_state(1)), before)


def test_dropout_in_a_slice_refuses_an_input_without_the_batch_first():
    with modeops.BatchSlice(2, 4, 6), pytest.raises(ValueError, match=r"takes the batch's rows first, \(N, ...\) "
                                                                          r"or \(N \* k, ...\).* shape \(5, 2\)"):
        modeops.Dropout(0.5).forward(np.ones((5, 2)), modeops.new_state(0))


def test_a_reshaped_batch_draws_and_counts_as_in_one_process(rng):
    """(N * k, ...): each row's k rows together (a sequence model's (N, T, F) flattened to (N * T, F), say)."""
    x = rng.normal(size=(6 * 3, 4))
    whole = modeops.Dropout(0.5).forward(x, modeops.new_state(7))
    with modeops.BatchSlice(2, 5, 6):
        part = modeops.Dropout(0.5).forward(x[2 * 3:5 * 3], modeops.new_state(7))
    assert np.array_equal(part, whole[2 * 3:5 * 3])
    images = rng.normal(size=(6 * 2, 3, 2, 2))
    # 6 rows of 2 images each, this process 3 of them: 6 * 2 * 2 * 2 values a channel in the whole batch
    with modeops.BatchSlice(0, 3, 6, allreduce=lambda array: None):
        assert modeops._global_count(images[:6], modeops.current_slice()) == 6 * 2 * 2 * 2


def test_threads_may_enter_one_slice_at_once():
    """Each thread's tokens are its own: two threads in and out of the same slice, interleaved, each see it
    inside and WHOLE after."""
    import threading
    shared, seen = modeops.BatchSlice(0, 2, 4), []
    inside, leave = threading.Barrier(2), threading.Barrier(2)

    def rank():
        with shared:
            inside.wait()
            seen.append(modeops.current_slice() is shared)
            leave.wait()
        seen.append(modeops.current_slice() is modeops.WHOLE)

    threads = [threading.Thread(target=rank) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert seen == [True, True, True, True]


class ThreadRanks:
    """``size`` ranks as threads: each rank's ``allreduce`` sums a host or device array over them."""

    def __init__(self, size):
        self.size, self.barrier, self.slots = size, threading.Barrier(size, timeout=30), [None] * size

    def allreduce(self, rank):
        def allreduce(array):
            self.slots[rank] = array.copy()
            self.barrier.wait()
            total = self.slots[0].copy()
            for other in self.slots[1:]:
                total += other
            self.barrier.wait()
            array[...] = total
        return allreduce

    def run(self, work):
        """``work(rank)`` on every rank; its results in rank order."""
        results, errors = [None] * self.size, []

        def target(rank):
            try:
                results[rank] = work(rank)
            except BaseException as exc:  # noqa: BLE001 - reraised below
                errors.append(exc)
                self.barrier.abort()

        threads = [threading.Thread(target=target, args=(r,)) for r in range(self.size)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
        return results


def _batch_norm_step(xp, x, gy, weight, bias):
    """y, gx, gweight, gbias and the running buffers after one training step of a batch norm."""
    buffers = (xp.zeros(x.shape[1]), xp.ones(x.shape[1]), xp.zeros((), dtype=xp.int64))
    op = modeops.BatchNorm2d(True)
    y = op.forward(x, weight, bias, *buffers)
    return (y, *op.backward(gy), *buffers)


@pytest.mark.parametrize("size", [2, 3])
def test_synchronized_batch_norm_is_the_global_batchs(xp, rng, size):
    """Uneven parts (7 rows over 3 ranks): the ranks' outputs, input gradients and running buffers are one
    process's, and their weight and bias gradients add up to its own."""
    x = xp.asarray(rng.standard_normal((7, 3, 4, 5)) * 3 + 2)
    gy, weight, bias = (xp.asarray(a) for a in (rng.standard_normal(x.shape), rng.standard_normal(3),
                                                rng.standard_normal(3)))
    y, gx, gweight, gbias, mean, var, tracked = _batch_norm_step(xp, x, gy, weight, bias)
    ranks = ThreadRanks(size)
    parts = _parts(7, size)

    def work(rank):
        start, stop = parts[rank]
        with modeops.BatchSlice(start, stop, 7, ranks.allreduce(rank)):
            return _batch_norm_step(xp, x[start:stop], gy[start:stop], weight, bias)

    got = ranks.run(work)
    for i, want in ((0, y), (1, gx)):
        assert float(abs(xp.concatenate([g[i] for g in got]) - want).max()) <= ROUND_OFF * float(abs(want).max())
    for i, want in ((2, gweight), (3, gbias)):
        assert float(abs(sum(g[i] for g in got) - want).max()) <= ROUND_OFF * float(abs(want).max())
    for g in got:
        assert float(abs(g[4] - mean).max()) <= ROUND_OFF * float(abs(mean).max())
        assert float(abs(g[5] - var).max()) <= ROUND_OFF * float(abs(var).max()) and int(g[6]) == int(tracked)


def test_batch_norm_in_evaluation_sums_nothing():
    def refuse(array):
        raise AssertionError("evaluation must not sum over the ranks")

    x = np.random.default_rng(0).standard_normal((4, 2, 3, 3))
    op = modeops.BatchNorm2d(False)
    with modeops.BatchSlice(0, 4, 8, refuse):
        y = op.forward(x, None, None, np.zeros(2), np.ones(2))
        op.backward(np.ones_like(y))


# -- real MPI jobs ---------------------------------------------------------------

_TRAIN = """
import json, sys
import numpy as np
from mpi4py import MPI
from xpgrad import backend
from xpgrad.data import Dataset
from xpgrad.distributed import DataParallel
from xpgrad.distributed.mpi import MPICommunicator
from xpgrad.training import Config, Trainer
from tests.cli_helpers import learnable

comm = MPICommunicator(MPI)
(x_train, y_train), (x_test, y_test) = learnable(256, (16, 16)), learnable(64, (16, 16), seed=1)
dataset = Dataset("idx", x_train, y_train, x_test, y_test, "tiny", num_classes=4)


def run(model, recipe, parallel=None):
    config = Config.from_recipe(recipe, model=model, hidden=(8,), dtype="float64", epochs=2, batch_size=40)
    trainer = Trainer(config, dataset, device="cpu", progress=False, parallel=parallel)
    for _ in range(config.epochs):
        trainer.train_epoch()
    return trainer


def worst(a, b):
    return float(np.max(np.abs(a - b.astype(a.dtype)))) / max(float(np.max(np.abs(a))), 1e-300) if a.size else 0.0


report = {}
for model, recipe in [(m, "cnn" if m == "cnn" else "default") for m in sys.argv[1:]]:
    trainer = run(model, recipe, DataParallel(comm))
    test_loss = trainer.evaluate()["test_loss"]
    states = comm.allgather_object({k: backend.to_numpy(v) for k, v in trainer.model.state_dict().items()})
    if comm.rank == 0:
        one = run(model, recipe)
        want = {k: np.array(backend.to_numpy(v)) for k, v in one.model.state_dict().items()}  # copies
        one.model.load_state_dict(states[0])  # what xpgrad eval of rank 0's checkpoint computes
        report[model] = {"one process": max(worst(want[k], s[k]) for s in states for k in want),
                         "across ranks": max(worst(states[0][k], s[k]) for s in states for k in want),
                         "buffers": sorted(dict(one.model.named_buffers())),
                         "eval": abs(one.evaluate()["test_loss"] - test_loss) / test_loss}
if comm.rank == 0:
    print(json.dumps(report))
"""


@pytest.mark.parametrize("ranks", [2, 3])
def test_every_rank_trains_what_one_process_does(tmp_path, ranks):
    """A Dropout model, a BatchNorm2d (and Dropout) model and the built-in cnn, over ranks that hold 20/20 or
    13/13/14 rows of each 40-row batch and 8/8 or 5/5/6 of the last 16: every rank's parameters and buffers
    (running statistics, dropout states) are one process's, and its test loss is one process's evaluation
    of rank 0's state."""
    (tmp_path / "dropout_net.py").write_text(DROPOUT_NET)
    (tmp_path / "bn_net.py").write_text(BATCHNORM_NET)
    models = [str(tmp_path / "dropout_net.py:Net"), str(tmp_path / "bn_net.py:Net"), "cnn"]
    proc = subprocess.run([*require_mpi(), "-n", str(ranks), sys.executable, "-c", _TRAIN, *models],
                          capture_output=True, text=True, env=mpi_env(tmp_path), timeout=300)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert sorted(report) == sorted(models)
    assert "bn.running_var" in report[models[1]]["buffers"] and "drop.generator_state" in report[models[0]]["buffers"]
    for model, figures in report.items():
        assert figures["one process"] <= ROUND_OFF and figures["across ranks"] <= ROUND_OFF, (model, figures)
        assert figures["eval"] <= ROUND_OFF, (model, figures)


def test_the_command_with_batch_norm_matches_one_process_and_its_eval(tmp_path):
    """``xpgrad train --distributed`` of a BatchNorm2d model: the checkpoint (its running statistics too) and
    metrics are one process's, and ``xpgrad eval`` of it reports metrics.jsonl's test loss."""
    require_mpi()
    data = write_idx_folder(tmp_path / "data", shape=(16, 16))
    (tmp_path / "bn_net.py").write_text(BATCHNORM_NET)
    run = ("train", "--dataset", "idx", "--data-dir", data, "--model", f"{tmp_path / 'bn_net.py'}:Net", "--dtype",
           "float64", "--epochs", "2", "--batch-size", "40", "--device", "cpu", "--quiet")
    proc = xpgrad(*run, "--out", tmp_path / "one", tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr
    proc = mpi_xpgrad(2, *run, "--out", tmp_path / "two", "--distributed", tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert_close_run(tmp_path / "two", tmp_path / "one")
    proc = xpgrad("eval", "--checkpoint", tmp_path / "two" / "checkpoint.npz", "--data-dir", data, tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr
    said = [line for line in proc.stdout.splitlines() if line.startswith("test loss")]
    assert said and said[0].startswith(f"test loss {metrics(tmp_path / 'two')[-1]['test_loss']:.4f},"), proc.stdout


def test_the_buffers_start_as_rank_0s(tmp_path):
    """A model file may draw a dropout's key without the run's seed: the ranks start from rank 0's."""
    unseeded = DROPOUT_NET.replace("nn.Dropout(0.25)", "nn.Dropout(0.25, rng=numpy.random.default_rng())")
    (tmp_path / "unseeded.py").write_text("import numpy\n" + unseeded)
    script = _TRAIN.split("report = {}")[0] + """
trainer = Trainer(Config.from_recipe("default", model=sys.argv[1], dtype="float64", epochs=1, batch_size=40), dataset,
                  device="cpu", progress=False, parallel=DataParallel(comm))
keys = comm.allgather_object(int(trainer.model.drop.generator_state[0]))
assert len(set(keys)) == 1, keys
print("ok")
"""
    proc = subprocess.run([*require_mpi(), "-n", "2", sys.executable, "-c", script,
                           str(tmp_path / "unseeded.py:Net")], capture_output=True, text=True,
                          env=mpi_env(tmp_path), timeout=120)
    assert proc.returncode == 0 and proc.stdout.split() == ["ok", "ok"], proc.stderr
