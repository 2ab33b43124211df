"""The training loop, checkpoints and bit-exact resume, on small synthetic data."""

import math
import os

import numpy as np
import pytest

from xpgrad import backend
from xpgrad.checkpoint import load_checkpoint
from xpgrad.data import Dataset
from xpgrad.errors import CheckpointError, DivergenceError, XpgradError
from xpgrad.files import atomic_write
from xpgrad.model import MLP
from xpgrad.training import Config, Trainer, read_metrics, run


def synthetic_dataset(n_train=1200, n_test=300, seed=0, checksum="synthetic-0"):
    """10 learnable classes: each class lights up its own band of rows, plus noise."""
    rng = np.random.default_rng(seed)

    def split(n):
        y = rng.integers(0, 10, size=n).astype(np.uint8)
        x = rng.integers(0, 60, size=(n, 28, 28)).astype(np.uint8)
        for c in range(10):
            x[y == c, 2 * c:2 * c + 3, :] += 150
        return x, y

    x_train, y_train = split(n_train)
    x_test, y_test = split(n_test)
    return Dataset("synthetic", x_train, y_train, x_test, y_test, checksum)


def small_config(**overrides):
    fields = dict(epochs=3, batch_size=64, hidden=(32,), seed=7)
    fields.update(overrides)
    return Config.from_recipe("default", **fields)


def test_training_learns(xp, tmp_path):
    device = "cpu" if xp is np else "cuda"
    trainer = Trainer(small_config(), synthetic_dataset(), device=device, progress=False)
    before = trainer.evaluate()
    result = run(trainer, str(tmp_path), log=lambda *_: None)
    assert before["test_accuracy"] < 0.5
    assert result["test_accuracy"] > 0.95
    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert set(rows[0]) == {"epoch", "train_loss", "train_accuracy", "test_loss", "test_accuracy", "seconds"}
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    assert (tmp_path / "checkpoint.npz").exists()
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("optimizer", ["sgd", "momentum", "adam"])
def test_resume_is_bit_exact_on_cpu(tmp_path, optimizer):
    data = synthetic_dataset()
    config = small_config(optimizer=optimizer, lr=0.05 if optimizer != "adam" else 2e-3)

    straight = Trainer(config, data, progress=False)
    run(straight, str(tmp_path / "straight"), log=lambda *_: None)

    # The same run, killed after its second epoch's checkpoint was written.
    first = Trainer(config, data, progress=False)

    def interrupt_after_epoch_2(line):
        if first.epoch == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(first, str(tmp_path / "split"), log=interrupt_after_epoch_2)
    checkpoint = load_checkpoint(tmp_path / "split" / "checkpoint.npz")
    assert checkpoint["epoch"] == 2

    resumed = Trainer(config, data, progress=False)
    resumed.restore(checkpoint, "checkpoint.npz")
    run(resumed, str(tmp_path / "split"), history=checkpoint["metrics"], log=lambda *_: None)

    for name, value in straight.model.params.items():
        assert np.array_equal(resumed.model.params[name], value), name
    assert [r["epoch"] for r in read_metrics(tmp_path / "split" / "metrics.jsonl")] == [1, 2, 3]


def test_checkpoint_holds_everything_and_loads_without_pickle(tmp_path):
    trainer = Trainer(small_config(epochs=1, optimizer="adam"), synthetic_dataset(), progress=False)
    run(trainer, str(tmp_path), log=lambda *_: None)
    with np.load(tmp_path / "checkpoint.npz", allow_pickle=False) as data:
        keys = set(data.files)
    # The optimizer updates the model's flat parameter buffer as one array, "all".
    assert {"param/W1", "param/b1", "param/W2", "param/b2", "optim/step_count", "optim/m/all",
            "optim/v/all", "rng_state", "epoch", "config", "dataset_checksum"} <= keys
    ckpt = load_checkpoint(tmp_path / "checkpoint.npz")
    assert ckpt["config"]["optimizer"] == "adam"
    assert ckpt["dataset_checksum"] == "synthetic-0"


def test_the_checkpoint_holds_the_metrics_history_and_metrics_jsonl_is_written_from_it(tmp_path):
    trainer = Trainer(small_config(epochs=2), synthetic_dataset(), progress=False)
    run(trainer, str(tmp_path), log=lambda *_: None)
    checkpoint = load_checkpoint(tmp_path / "checkpoint.npz")
    assert checkpoint["format"] == 2 and [r["epoch"] for r in checkpoint["metrics"]] == [1, 2]
    assert read_metrics(tmp_path / "metrics.jsonl") == checkpoint["metrics"]


def test_a_fresh_run_refuses_a_folder_holding_a_run_unless_overwrite(tmp_path):
    run(Trainer(small_config(epochs=1), synthetic_dataset(), progress=False), str(tmp_path), log=lambda *_: None)
    before = (tmp_path / "checkpoint.npz").read_bytes()
    with pytest.raises(XpgradError, match="already holds a run whose checkpoint is at epoch 1"):
        run(Trainer(small_config(epochs=1), synthetic_dataset(), progress=False), str(tmp_path), log=lambda *_: None)
    assert (tmp_path / "checkpoint.npz").read_bytes() == before
    run(Trainer(small_config(epochs=1, seed=8), synthetic_dataset(), progress=False), str(tmp_path),
        overwrite=True, log=lambda *_: None)
    assert (tmp_path / "checkpoint.npz").read_bytes() != before
    assert sorted(os.listdir(tmp_path)) == ["checkpoint.npz", "curves.png", "metrics.jsonl"]


def test_restore_rejects_other_data(tmp_path):
    trainer = Trainer(small_config(epochs=1), synthetic_dataset(), progress=False)
    run(trainer, str(tmp_path), log=lambda *_: None)
    other = Trainer(small_config(epochs=1), synthetic_dataset(checksum="synthetic-1"), progress=False)
    with pytest.raises(CheckpointError, match="different"):
        other.restore(load_checkpoint(tmp_path / "checkpoint.npz"), "checkpoint.npz")


def test_restore_rejects_another_architecture(tmp_path):
    trainer = Trainer(small_config(epochs=1), synthetic_dataset(), progress=False)
    run(trainer, str(tmp_path), log=lambda *_: None)
    wider = Trainer(small_config(epochs=1, hidden=(64,)), synthetic_dataset(), progress=False)
    with pytest.raises(CheckpointError, match="does not match this model"):
        wider.restore(load_checkpoint(tmp_path / "checkpoint.npz"), "checkpoint.npz")


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_corrupt_checkpoint_is_a_clear_error(tmp_path, damage):
    trainer = Trainer(small_config(epochs=1), synthetic_dataset(), progress=False)
    run(trainer, str(tmp_path), log=lambda *_: None)
    path = tmp_path / "checkpoint.npz"
    blob = path.read_bytes()
    path.write_bytes({"truncate": blob[: len(blob) // 2], "garbage": b"not a zip" * 100, "empty": b""}[damage])
    with pytest.raises(CheckpointError, match="corrupt or not an xpgrad checkpoint"):
        load_checkpoint(path)


def test_failed_save_leaves_the_old_checkpoint_whole(tmp_path, monkeypatch):
    trainer = Trainer(small_config(epochs=1), synthetic_dataset(), progress=False)
    run(trainer, str(tmp_path), log=lambda *_: None)
    path = tmp_path / "checkpoint.npz"
    good = path.read_bytes()

    def explode(f, **arrays):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", explode)
    with pytest.raises(OSError, match="disk full"):
        trainer.save(path)
    assert path.read_bytes() == good
    assert sorted(os.listdir(tmp_path)) == ["checkpoint.npz", "curves.png", "metrics.jsonl"]


def test_atomic_write_replaces_only_on_success(tmp_path):
    target = tmp_path / "f.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_write(target, "w") as f:
            f.write("new")
            raise RuntimeError("boom")
    assert target.read_text() == "old"
    with atomic_write(target, "w") as f:
        f.write("new")
    assert target.read_text() == "new"
    assert os.listdir(tmp_path) == ["f.txt"]
    # Readable like any other file the user writes (mkstemp alone would make it 0600).
    mask = os.umask(0)
    os.umask(mask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~mask


def test_divergence_stops_before_writing_a_bad_checkpoint(tmp_path):
    config = small_config(epochs=2, optimizer="sgd", lr=1e30)
    config.schedule = "constant"
    trainer = Trainer(config, synthetic_dataset(), progress=False)
    with np.errstate(all="ignore"), pytest.raises(DivergenceError, match="diverged"):
        run(trainer, str(tmp_path), log=lambda *_: None)
    assert not (tmp_path / "checkpoint.npz").exists()


def test_hidden_widths_shape_the_model():
    trainer = Trainer(small_config(epochs=1, hidden=(16, 8)), synthetic_dataset(n_train=100, n_test=20), progress=False)
    assert [trainer.model.params[f"W{i}"].shape for i in (1, 2, 3)] == [(784, 16), (16, 8), (8, 10)]
    stats = trainer.train_epoch()
    assert math.isfinite(stats["train_loss"])


@pytest.mark.parametrize("hidden", [(), (0,), (10, -1)])
def test_bad_hidden_widths_are_refused(hidden):
    with pytest.raises(XpgradError, match="--hidden must be one or more positive widths"):
        small_config(hidden=hidden)


def test_notebook_recipe_is_the_notebooks_model():
    data = synthetic_dataset(n_train=200, n_test=50)
    trainer = Trainer(Config.from_recipe("notebook", epochs=1), data, progress=False)
    assert trainer.batch_size == 200 and trainer.steps_per_epoch == 1
    assert trainer.model.params["W1"].shape == (785, 100)
    assert set(trainer.model.params) == {"W1", "W2"}
    assert trainer.model.params["W1"].dtype == np.float64
    assert abs(float(trainer.model.params["W1"].std()) - 1.0) < 0.02  # W ~ N(0, 1)


def test_notebook_recipe_matches_the_notebooks_code():
    """One full-batch step of --recipe notebook equals the notebook's own train_one_step."""
    from xpgrad import notebook

    data = synthetic_dataset(n_train=300, n_test=50)
    trainer = Trainer(Config.from_recipe("notebook", epochs=1), data, progress=False)
    ref = notebook.Model()
    ref.W1 = backend.to_numpy(trainer.model.params["W1"]).copy()
    ref.W2 = backend.to_numpy(trainer.model.params["W2"]).copy()
    x = data.x_train.astype(np.float64) / 255.0
    y = np.eye(10)[data.y_train]
    ref_loss, ref_acc = notebook.train_one_step(ref, x, y)
    stats = trainer.train_epoch()
    np.testing.assert_allclose(stats["train_loss"], ref_loss, rtol=1e-9)
    assert stats["train_accuracy"] == ref_acc
    np.testing.assert_allclose(trainer.model.params["W1"], ref.W1, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(trainer.model.params["W2"], ref.W2, rtol=1e-9, atol=1e-12)


@pytest.mark.gpu
def test_one_epoch_matches_between_cpu_and_gpu(gpu_xp):
    data = synthetic_dataset()
    config = small_config(epochs=1, dtype="float64")
    cpu = Trainer(config, data, device="cpu", progress=False)
    gpu = Trainer(config, data, device="cuda", progress=False)
    a, b = cpu.train_epoch(), gpu.train_epoch()
    np.testing.assert_allclose(b["train_loss"], a["train_loss"], rtol=1e-9)
    for name, value in cpu.model.params.items():
        np.testing.assert_allclose(backend.to_numpy(gpu.model.params[name]), value, rtol=1e-8, atol=1e-10)


def test_model_parameters_by_name_round_trip():
    a = MLP((12, 5, 3), seed=1)
    b = MLP((12, 5, 3), seed=2)
    b.load_state_dict(a.state_dict())
    for k in a.params:
        assert np.array_equal(a.params[k], b.params[k])
    with pytest.raises(ValueError, match="shape"):
        MLP((12, 6, 3)).load_state_dict(a.state_dict())


@pytest.mark.parametrize("input_bias", [False, True])
def test_mlp_backward_fills_its_flat_gradient_buffer_correctly(rng, input_bias):
    """Every named gradient, written through views of grad_buffer, against central differences."""
    from xpgrad.gradcheck import gradcheck
    from xpgrad.ops import SoftmaxCrossEntropy

    model = MLP((6, 5, 4, 3), input_bias=input_bias, dtype="float64", seed=2)
    x, t = rng.normal(size=(7, 6)), rng.integers(0, 3, size=7)
    sce = SoftmaxCrossEntropy()
    sce.forward(model.forward(x), t)
    grads = model.backward(sce.backward())
    names = list(model.params)
    for name in names:
        assert np.shares_memory(grads[name], model.grad_buffer)
        assert np.shares_memory(model.params[name], model.param_buffer)

    def loss_of(*params):
        for name, value in zip(names, params):
            model.params[name][...] = value
        return SoftmaxCrossEntropy().forward(model.forward(x), t)

    values = [model.params[n].copy() for n in names]
    report = gradcheck(loss_of, values, [grads[n].copy() for n in names])
    assert report.ok, report


def test_mlp_scratch_space_never_leaks_into_results(rng):
    """Hidden activations and gradients reuse scratch arrays across calls; the logits a
    caller holds must not change, and a step after a bigger or smaller batch must give
    the same gradients as a fresh model."""
    from xpgrad.ops import SoftmaxCrossEntropy

    def grads_of(model, x, t):
        sce = SoftmaxCrossEntropy()
        sce.forward(model.forward(x), t)
        return {k: v.copy() for k, v in model.backward(sce.backward()).items()}

    model = MLP((6, 5, 4, 3), dtype="float64", seed=2)
    x1, x2 = rng.normal(size=(7, 6)), rng.normal(size=(9, 6))
    t1 = rng.integers(0, 3, size=7)
    logits1 = model.forward(x1)
    kept = logits1.copy()
    model.forward(x2)
    np.testing.assert_array_equal(logits1, kept)
    assert not any(np.shares_memory(logits1, w) for w in model._workspace.values())
    grads_of(model, x2, rng.integers(0, 3, size=9))  # the scratch space now holds 9 rows
    fresh = grads_of(MLP((6, 5, 4, 3), dtype="float64", seed=2), x1, t1)
    for name, g in grads_of(model, x1, t1).items():
        np.testing.assert_array_equal(g, fresh[name])


def test_model_save_and_load(tmp_path, rng):
    a = MLP((12, 5, 3), input_bias=True, dtype="float64", seed=3)
    a.save(tmp_path / "model.npz")
    b = MLP.load(tmp_path / "model.npz")
    assert b.sizes == (12, 5, 3) and b.input_bias and b.dtype == np.float64
    x = rng.normal(size=(4, 12))
    assert np.array_equal(a.forward(x), b.forward(x))


def test_standardization_matches_the_float_computation():
    from xpgrad.training import normalization

    x = synthetic_dataset().x_train
    shift, scale = normalization(small_config(), x)
    as_float = x.astype(np.float64) / 255.0
    np.testing.assert_allclose([shift, scale], [as_float.mean(), as_float.std()], rtol=1e-12)
