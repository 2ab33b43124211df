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


def state(trainer) -> dict:
    """The trainer's model state as host arrays, by name."""
    return {k: backend.to_numpy(v) for k, v in trainer.model.state_dict().items()}


def restore(trainer, path):
    """``trainer`` continued from the checkpoint at ``path``; returns the checkpoint's metrics."""
    with load_checkpoint(path, check_config=Config.from_dict) as checkpoint:
        trainer.restore(checkpoint)
        return checkpoint.metrics


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
    resumed = Trainer(config, data, progress=False)
    history = restore(resumed, tmp_path / "split" / "checkpoint.npz")
    assert resumed.epoch == 2 and resumed.optimizer.step_count == 2 * resumed.steps_per_epoch
    run(resumed, str(tmp_path / "split"), history=history, log=lambda *_: None)

    want = state(straight)
    for name, value in state(resumed).items():
        assert np.array_equal(value, want[name]), name
    assert resumed.optimizer.state_dict().keys() == straight.optimizer.state_dict().keys()
    for key, value in straight.optimizer.state_dict().items():
        assert np.array_equal(resumed.optimizer.state_dict()[key], value), key
    assert [r["epoch"] for r in read_metrics(tmp_path / "split" / "metrics.jsonl")] == [1, 2, 3]


def test_checkpoint_holds_everything_and_loads_without_pickle(tmp_path):
    trainer = Trainer(small_config(epochs=1, optimizer="adam"), synthetic_dataset(), progress=False)
    run(trainer, str(tmp_path), log=lambda *_: None)
    with np.load(tmp_path / "checkpoint.npz", allow_pickle=False) as data:
        keys = set(data.files)
    # The model's state_dict and the optimizer's, by PyTorch's parameter names.
    params = ("1.weight", "1.bias", "3.weight", "3.bias")
    assert keys == {*(f"model/{p}" for p in params), "optim/step_count", "optim/lr",
                    *(f"optim/{s}/{p}" for s in ("m", "v") for p in params), "format", "model_sha256",
                    "rng_state", "epoch", "config", "dataset_checksum", "metrics"}
    with load_checkpoint(tmp_path / "checkpoint.npz") as ckpt:
        assert ckpt.format == 3 and ckpt.config["optimizer"] == "adam" and ckpt.config["model"] == "mlp"
        assert ckpt.dataset_checksum == "synthetic-0" and ckpt.model_sha256 == ""


def test_the_checkpoint_holds_the_metrics_history_and_metrics_jsonl_is_written_from_it(tmp_path):
    trainer = Trainer(small_config(epochs=2), synthetic_dataset(), progress=False)
    run(trainer, str(tmp_path), log=lambda *_: None)
    with load_checkpoint(tmp_path / "checkpoint.npz") as checkpoint:
        assert checkpoint.format == 3 and [r["epoch"] for r in checkpoint.metrics] == [1, 2]
        assert read_metrics(tmp_path / "metrics.jsonl") == checkpoint.metrics


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
        restore(other, tmp_path / "checkpoint.npz")


def test_restore_rejects_another_architecture(tmp_path):
    trainer = Trainer(small_config(epochs=1), synthetic_dataset(), progress=False)
    run(trainer, str(tmp_path), log=lambda *_: None)
    wider = Trainer(small_config(epochs=1, hidden=(64,)), synthetic_dataset(), progress=False)
    with pytest.raises(CheckpointError, match=r"does not match this model: 1.weight is \(784, 32\) float32, this "
                                              r"model needs \(784, 64\) float32"):
        restore(wider, tmp_path / "checkpoint.npz")
    deeper = Trainer(small_config(epochs=1, hidden=(32, 8)), synthetic_dataset(), progress=False)
    with pytest.raises(CheckpointError, match="this model has 5.weight, 5.bias that the checkpoint lacks"):
        restore(deeper, tmp_path / "checkpoint.npz")


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_corrupt_checkpoint_is_a_clear_error(tmp_path, damage):
    trainer = Trainer(small_config(epochs=1), synthetic_dataset(), progress=False)
    run(trainer, str(tmp_path), log=lambda *_: None)
    path = tmp_path / "checkpoint.npz"
    blob = path.read_bytes()
    path.write_bytes({"truncate": blob[: len(blob) // 2], "garbage": b"not a zip" * 100, "empty": b""}[damage])
    with pytest.raises(CheckpointError, match="corrupt or not an xpgrad checkpoint"):
        load_checkpoint(path).close()


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
    assert {k: v.shape for k, v in state(trainer).items()} == {
        "1.weight": (784, 16), "1.bias": (16,), "3.weight": (16, 8), "3.bias": (8,), "5.weight": (8, 10),
        "5.bias": (10,)}
    assert trainer.optimizer.flat is trainer.parameters and trainer.parameters.data.size == 12786
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
    params = state(trainer)
    assert {k: v.shape for k, v in params.items()} == {"1.weight": (784, 100), "1.bias": (100,), "3.weight": (100, 10)}
    W1 = np.concatenate([params["1.weight"], params["1.bias"][None]])  # the notebook's (785, 100) W1
    assert W1.dtype == np.float64 and abs(float(W1.std()) - 1.0) < 0.02  # W ~ N(0, 1)


def test_notebook_recipe_matches_the_notebooks_code():
    """One full-batch step of --recipe notebook equals the notebook's own train_one_step."""
    from xpgrad import notebook

    data = synthetic_dataset(n_train=300, n_test=50)
    trainer = Trainer(Config.from_recipe("notebook", epochs=1), data, progress=False)
    ref = notebook.Model()
    params = state(trainer)
    ref.W1 = np.concatenate([params["1.weight"], params["1.bias"][None]])
    ref.W2 = params["3.weight"].copy()
    x = data.x_train.astype(np.float64) / 255.0
    y = np.eye(10)[data.y_train]
    ref_loss, ref_acc = notebook.train_one_step(ref, x, y)
    stats = trainer.train_epoch()
    np.testing.assert_allclose(stats["train_loss"], ref_loss, rtol=1e-9)
    assert stats["train_accuracy"] == ref_acc
    params = state(trainer)
    np.testing.assert_allclose(np.concatenate([params["1.weight"], params["1.bias"][None]]), ref.W1, rtol=1e-9,
                               atol=1e-12)
    np.testing.assert_allclose(params["3.weight"], ref.W2, rtol=1e-9, atol=1e-12)


@pytest.mark.gpu
def test_one_epoch_matches_between_cpu_and_gpu(gpu_xp):
    data = synthetic_dataset()
    config = small_config(epochs=1, dtype="float64")
    cpu = Trainer(config, data, device="cpu", progress=False)
    gpu = Trainer(config, data, device="cuda", progress=False)
    a, b = cpu.train_epoch(), gpu.train_epoch()
    np.testing.assert_allclose(b["train_loss"], a["train_loss"], rtol=1e-9)
    on_gpu = state(gpu)
    for name, value in state(cpu).items():
        np.testing.assert_allclose(on_gpu[name], value, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("input_bias", [False, True])
def test_a_trainer_step_fills_the_flat_gradient_buffer_correctly(input_bias):
    """Every gradient of the training step, in its view of the flat buffer, against central differences."""
    from xpgrad import Tensor, functional
    from xpgrad.gradcheck import gradcheck

    config = small_config(epochs=1, hidden=(5, 4), dtype="float64", input_bias=input_bias, batch_size=7)
    trainer = Trainer(config, synthetic_dataset(n_train=7, n_test=7), progress=False)
    x, t = trainer.inputs.normalize(trainer.x_train), trainer.t_train
    loss = functional.cross_entropy(trainer.model(Tensor(x)), t)
    loss.backward()
    names, tensors = trainer.parameters.names, trainer.parameters.tensors
    assert all(np.shares_memory(p.grad, trainer.parameters.grad) for p in tensors)

    def loss_of(*values):
        for p, value in zip(tensors, values):
            p.data[...] = value
        return functional.cross_entropy(trainer.model(Tensor(x)), t).data

    report = gradcheck(loss_of, [p.data.copy() for p in tensors], [p.grad.copy() for p in tensors])
    assert report.ok, (names, report)


def test_the_images_stay_uint8_and_batches_are_normalized_as_before():
    """The device holds uint8 images; a batch is what normalizing the whole set in the run's dtype gave."""
    data = synthetic_dataset(n_train=200, n_test=20)
    trainer = Trainer(small_config(epochs=1, batch_size=64), data, progress=False)
    assert trainer.x_train.dtype == np.uint8 and trainer.x_train.shape == (200, 1, 28, 28)
    whole = data.x_train.astype(np.float32)  # the old way: the whole set, once
    whole *= np.float32(1.0 / (255.0 * trainer.scale))
    whole -= np.float32(trainer.shift / trainer.scale)
    batch = trainer.batches.batch(64)
    order = trainer.rng.permutation(200).astype(np.int64)
    trainer.batches.begin_epoch(order)
    batch.load()
    assert batch.x.dtype == np.float32 and np.array_equal(batch.x[:, 0], whole[order[:64]])


def test_standardization_matches_the_float_computation():
    from xpgrad.training import normalization

    x = synthetic_dataset().x_train
    shift, scale = normalization(small_config(), x)
    as_float = x.astype(np.float64) / 255.0
    np.testing.assert_allclose([shift, scale], [as_float.mean(), as_float.std()], rtol=1e-12)
