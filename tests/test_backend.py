"""The array-module abstraction: devices by name, xp by inputs, and why a GPU is unusable."""

import types

import numpy as np
import pytest

from xpgrad import backend
from xpgrad.errors import DeviceError


def test_cpu_device_by_name():
    for name in ("cpu", " CPU ", backend.CPU):
        device = backend.get_device(name)
        assert device == backend.CPU and device.xp is np and not device.is_gpu
        assert str(device) == "cpu"


@pytest.mark.parametrize("name", ["tpu", "cuda:x", "cuda:-1", "cpu:0", "", "gpu"])
def test_unknown_device_names(name):
    with pytest.raises(DeviceError, match="unknown device"):
        backend.get_device(name)


def test_auto_follows_the_gpu_status():
    expected = "cuda:0" if backend.gpu_available() else "cpu"
    assert str(backend.get_device("auto")) == expected


def test_cuda_without_a_usable_gpu_says_why():
    ok, reason = backend.gpu_status()
    if ok:
        pytest.skip("a GPU is usable here")
    with pytest.raises(DeviceError) as info:
        backend.get_device("cuda:1")
    message = str(info.value)
    assert "\n" not in message
    assert reason in message


def test_gpu_status_tells_missing_cupy_from_missing_driver(monkeypatch):
    monkeypatch.setattr(backend, "cupy", None)
    monkeypatch.setattr(backend, "_CUPY_IMPORT_ERROR", ImportError("No module named 'cupy'"))
    ok, reason = backend.gpu_status.__wrapped__()
    assert not ok and "CuPy is not installed" in reason and "pip install" in reason

    def no_driver():
        raise RuntimeError("cudaErrorInsufficientDriver: CUDA driver version is insufficient")

    fake = types.SimpleNamespace(__version__="14.2.0",
                                 cuda=types.SimpleNamespace(runtime=types.SimpleNamespace(getDeviceCount=no_driver)))
    monkeypatch.setattr(backend, "cupy", fake)
    ok, reason = backend.gpu_status.__wrapped__()
    assert not ok
    assert "CuPy 14.2.0 is installed but CUDA is not usable" in reason
    assert "cudaErrorInsufficientDriver" in reason and "nvidia-smi" in reason

    fake.cuda.runtime.getDeviceCount = lambda: 0
    ok, reason = backend.gpu_status.__wrapped__()
    assert not ok and "no CUDA GPU is visible" in reason


def test_get_array_module_on_host_inputs():
    assert backend.get_array_module(np.zeros(2), 3.0, None, np.float32(1)) is np
    assert backend.get_array_module() is np


def test_to_numpy_and_to_device_on_the_cpu():
    a = np.arange(6.0).reshape(2, 3)
    assert backend.to_device(a, "cpu") is a
    assert backend.to_numpy(a) is a
    assert backend.device_of(a) == backend.CPU


@pytest.mark.gpu
def test_mixed_devices_are_an_error_naming_both(gpu_xp):
    with pytest.raises(DeviceError, match=r"cpu and cuda:0|cuda:0 and cpu"):
        backend.get_array_module(np.zeros(2), gpu_xp.zeros(2))


@pytest.mark.gpu
def test_round_trip_through_the_gpu(gpu_xp):
    a = np.arange(6.0).reshape(2, 3)
    d = backend.to_device(a, "cuda")
    assert backend.get_array_module(d) is gpu_xp
    assert backend.device_of(d) == backend.get_device("cuda:0")
    np.testing.assert_array_equal(backend.to_numpy(d), a)


def test_require_gpu_turns_the_gpu_skips_into_an_error():
    """bench/gpu_check.sh sets XPGRAD_REQUIRE_GPU=1 so that a GPU run that skipped everything cannot read as a pass."""
    import os
    import subprocess
    import sys

    ok, _ = backend.gpu_status()
    if ok:
        pytest.skip("a GPU is usable here, so the error path cannot be reached")
    env = dict(os.environ, XPGRAD_REQUIRE_GPU="1")
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider",
                           "tests/test_backend.py"], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode != 0
    assert "XPGRAD_REQUIRE_GPU=1 but there is no usable GPU" in proc.stdout + proc.stderr


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cublas_gemm_matches_matmul_in_every_layout(gpu_xp, rng, dtype):
    cp = gpu_xp
    a = cp.asarray(rng.normal(size=(7, 5)).astype(dtype))
    b = cp.asarray(rng.normal(size=(5, 3)).astype(dtype))
    cases = {
        "a @ b": (a, b),
        "transposed view @ .": (cp.ascontiguousarray(a.T).T, b),  # as x.T in a weight gradient
        ". @ transposed view": (a, cp.ascontiguousarray(b.T).T),  # as W.T in an input gradient
        "F-ordered @ F-ordered": (cp.asfortranarray(a), cp.asfortranarray(b)),
        "strided": (a[:, ::1], cp.asarray(rng.normal(size=(5, 6)).astype(dtype))[:, ::2]),
        "vector": (a, b[:, 0]),
    }
    for name, (x, y) in cases.items():
        want = backend.to_numpy(x) @ backend.to_numpy(y)
        got = backend.cublas_gemm(x, y)
        tol = 1e-5 if dtype == np.float32 else 1e-12
        np.testing.assert_allclose(backend.to_numpy(got), want, rtol=tol, atol=tol, err_msg=name)
    out = cp.full((7, 3), cp.nan, dtype=dtype)
    assert backend.cublas_gemm(a, b, out) is out
    np.testing.assert_allclose(backend.to_numpy(out), backend.to_numpy(a) @ backend.to_numpy(b), rtol=1e-5)


def test_capture_graph_records_matmul_and_replays_it_on_current_data(gpu_xp, rng):
    cp = gpu_xp
    a = cp.asarray(rng.normal(size=(64, 32)).astype(np.float32))
    w = cp.asarray(rng.normal(size=(32, 16)).astype(np.float32))
    h = cp.empty((64, 16), dtype=np.float32)

    def step():
        backend.matmul(cp, a, w, out=h)
        cp.maximum(h, 0, out=h)

    stream = cp.cuda.Stream(non_blocking=True)  # does not wait for the default stream: sync by hand
    with stream:
        step()  # warm-up: compile, fill the memory pool
    cp.cuda.Device().synchronize()
    h.fill(cp.nan)
    cp.cuda.Device().synchronize()
    graph = backend.capture_graph(step, stream)
    cp.cuda.Device().synchronize()
    assert bool(cp.isnan(h).all())  # recording runs nothing
    for _ in range(2):
        a += 1.0  # replays read the arrays as they are now
        cp.cuda.Device().synchronize()
        graph.launch(stream)
        stream.synchronize()
        want = np.maximum(backend.to_numpy(a) @ backend.to_numpy(w), 0)
        np.testing.assert_allclose(backend.to_numpy(h), want, rtol=1e-4, atol=1e-4)
    assert backend.graph._capture_handle is None


def test_capture_graph_reports_the_error_of_the_recorded_function(gpu_xp):
    cp = gpu_xp
    stream = cp.cuda.Stream(non_blocking=True)

    def broken():
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        backend.capture_graph(broken, stream)
    assert backend.graph._capture_handle is None
    with stream:  # the stream is usable afterwards
        assert float(cp.ones(3).sum()) == 3.0


def test_get_array_module_picks_the_device_and_refuses_mixtures(monkeypatch):
    """The same logic as on a GPU, with a stand-in for cupy.ndarray (no device needed)."""

    class FakeDeviceArray:
        device = types.SimpleNamespace(id=1)

    fake = types.SimpleNamespace(ndarray=FakeDeviceArray)
    monkeypatch.setattr(backend, "cupy", fake)
    d, h = FakeDeviceArray(), np.zeros(2)
    assert backend.get_array_module(d) is fake
    assert backend.get_array_module(d, 2.0, None, d) is fake
    assert backend.get_array_module(h, 3) is np
    assert backend.get_array_module(1.0, None) is np
    with pytest.raises(DeviceError, match=r"different devices \(cuda:1 and cpu\)"):
        backend.get_array_module(d, h)
    with pytest.raises(DeviceError, match=r"different devices \(cpu and cuda:1\)"):
        backend.get_array_module(h, np.float32(1), d)
