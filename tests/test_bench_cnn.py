"""bench.cnn_epoch's code, checked on the CPU on a slice of data: PyTorch's mirror of the cnn, the run in turns
with its breakdown, and the cnn's figures in summary.json (no timing is asserted here)."""

import json

import numpy as np
import pytest

from bench import cnn_epoch, summary
from xpgrad import Tensor, no_grad

from .test_bench import fake_results
from .test_train import synthetic_dataset

torch = pytest.importorskip("torch", reason="the benchmark compares with PyTorch (pip install torch==2.13.0)")


@pytest.mark.parametrize("channels", [(16, 32), (32, 64)])
def test_pytorch_mirrors_the_cnn_by_name(channels):
    trainer = cnn_epoch.make_trainer(synthetic_dataset(n_train=64, n_test=16), "cpu", channels)
    mirror = cnn_epoch.TorchCnnEpoch(trainer, threads=1)
    assert set(mirror.model.state_dict()) == {k for k in trainer.model.state_dict() if not k.endswith("_state")}
    x = trainer.inputs.normalize(trainer.x_train[:8])
    trainer.model.eval(), mirror.model.eval()
    with no_grad():
        ours = trainer.model(Tensor(x)).data
    np.testing.assert_allclose(ours, mirror.model(torch.from_numpy(x)).detach().numpy(), rtol=1e-4, atol=1e-5)


def test_the_cnn_bench_runs_on_a_slice(tmp_path, capsys):
    out = tmp_path / "cnn.json"
    assert cnn_epoch.main(["--limit", "256", "--repeats", "1", "--data", "random", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert set(result["results"]["epochs"]) == {"xpgrad", "torch"}
    assert "xpgrad_vs_torch_eager" in result["targets"]
    parts = result["breakdown"]["parts"]
    assert {"im2col (copy)", "col2im (strided adds)", "max-pool forward"} <= set(parts)
    assert any(name.startswith("conv GEMM") and p["flops"] > 0 for name, p in parts.items())
    assert "where xpgrad's epoch goes" in capsys.readouterr().out


def test_the_cnn_figures_reach_the_summary():
    results = fake_results()
    epochs = {"xpgrad": 2.0, "xpgrad_graph": 0.5, "torch": 1.0, "torch_cudnn_benchmark": 0.9}
    results["cnn_epoch"] = {"results": {"epochs": {k: {"median": v} for k, v in epochs.items()}}}
    s = summary.build_summary(results, date="d", commit="c")
    assert summary.validate(s) == []
    assert s["cnn_epoch_ms"] == {"xpgrad_eager": 2000.0, "xpgrad_graph": 500.0, "torch_eager": 1000.0,
                                 "torch_cudnn_benchmark": 900.0}
    assert set(s["cnn_wide_epoch_ms"].values()) == {None}
    assert any(n.startswith("cnn_wide_epoch_ms: the cnn_wide step did not run") for n in s["notes"])
