"""The array-module abstraction: devices by name, xp by inputs, and why a GPU is unusable."""

import ctypes
import types

import numpy as np
import pytest

from xpgrad import backend
from xpgrad.backend import graph as _graph  # noqa: F401 - loaded, so that backend.graph is there
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


# ---------------------------------------------------------------------------
# The cuBLAS calls of xpgrad.backend.graph, against a cuBLAS stand-in on the CPU

#: The parameters of the cuBLAS functions graph.py calls, as cuBLAS's documentation declares them.
CUBLAS_API = {
    "cublasSetStream_v2": "cublasHandle_t handle, cudaStream_t streamId",
    "cublasSetWorkspace_v2": "cublasHandle_t handle, void *workspace, size_t workspaceSizeInBytes",
    "cublasSetPointerMode_v2": "cublasHandle_t handle, cublasPointerMode_t mode",
    "cublasGetPointerMode_v2": "cublasHandle_t handle, cublasPointerMode_t *mode",
    "cublasGemmEx": "cublasHandle_t handle, cublasOperation_t transa, cublasOperation_t transb, int m, int n, int k, "
                    "const void *alpha, const void *A, cudaDataType Atype, int lda, const void *B, "
                    "cudaDataType Btype, int ldb, const void *beta, void *C, cudaDataType Ctype, int ldc, "
                    "cublasComputeType_t computeType, cublasGemmAlgo_t algo",
}
_ENUMS = ("cublasOperation_t", "cublasPointerMode_t", "cudaDataType", "cublasComputeType_t", "cublasGemmAlgo_t")


def _c_type(declaration: str):
    """The ctypes type of one C parameter declaration (pointers and handles as void pointers, enums as int)."""
    kind = " ".join(declaration.replace("*", " * ").split()[:-1]).replace("const ", "")
    if kind.endswith("*"):
        return ctypes.POINTER(ctypes.c_int) if kind.split()[0] in _ENUMS + ("int",) else ctypes.c_void_p
    return {"cublasHandle_t": ctypes.c_void_p, "cudaStream_t": ctypes.c_void_p, "size_t": ctypes.c_size_t,
            "int": ctypes.c_int, **dict.fromkeys(_ENUMS, ctypes.c_int)}[kind]


def _documented(name):
    return tuple(_c_type(p) for p in CUBLAS_API[name].split(", "))


def _column_major(ptr, dtype, ld, rows, cols):
    """The (rows, cols) column-major matrix at device address ``ptr`` (host memory here), leading dimension ld."""
    flat = np.ctypeslib.as_array(ctypes.cast(ptr, ctypes.POINTER(np.ctypeslib.as_ctypes_type(dtype))),
                                 shape=(ld * cols,))
    return flat.reshape(cols, ld).T[:rows]


class FakeCublas:
    """cuBLAS's functions as ctypes function pointers with the documented prototypes, so that every call goes
    through ctypes' argument conversion; each call is logged, and cublasGemmEx computes its product with NumPy."""

    def __init__(self):
        self.calls = []
        for name in CUBLAS_API:
            body = getattr(self, "_" + name, lambda *args: 0)
            function = ctypes.CFUNCTYPE(ctypes.c_int, *_documented(name))(self._logged(name, body))
            setattr(self, name, function)

    def _logged(self, name, body):
        def call(*args):
            self.calls.append((name, args))
            return body(*args)
        return call

    def _cublasGemmEx(self, handle, transa, transb, m, n, k, alpha, A, Atype, lda, B, Btype, ldb, beta, C, Ctype,
                      ldc, compute_type, algo):
        dtype = {0: np.float32, 1: np.float64}[Atype]
        op_a = _column_major(A, dtype, lda, *((k, m) if transa else (m, k)))
        op_b = _column_major(B, dtype, ldb, *((n, k) if transb else (k, n)))
        c = _column_major(C, dtype, ldc, m, n)
        scalar = lambda p: _column_major(p, dtype, 1, 1, 1)[0, 0]  # noqa: E731
        c[...] = scalar(alpha) * ((op_a.T if transa else op_a) @ (op_b.T if transb else op_b)) + scalar(beta) * c
        return 0


class FakeDeviceArray:
    """A NumPy array dressed as a CuPy one: the attributes cublas_gemm reads, with ``data.ptr`` its address."""

    def __init__(self, a):
        self.a = a
        self.shape, self.ndim, self.dtype, self.flags = a.shape, a.ndim, a.dtype, a.flags
        self.data = types.SimpleNamespace(ptr=a.ctypes.data)

    def __getitem__(self, index):
        return FakeDeviceArray(self.a[index])


@pytest.fixture
def fake_cublas(monkeypatch):
    """graph.py's cuBLAS calls on the CPU: a FakeCublas for the library, CuPy's few calls faked, device 0 a
    Hopper GPU (compute capability 9.0) unless a test says otherwise."""
    lib, allocations = FakeCublas(), []
    device = types.SimpleNamespace(id=0, compute_capability="90")

    def empty(shape, dtype):
        allocations.append((shape, np.dtype(dtype)))
        return FakeDeviceArray(np.zeros(shape, dtype))

    cuda = types.SimpleNamespace(device=types.SimpleNamespace(get_cublas_handle=lambda: 0x4A4D),
                                 get_current_stream=lambda: types.SimpleNamespace(ptr=0x57),
                                 Device=lambda index=None: device)
    fake = types.SimpleNamespace(empty=empty, cuda=cuda,
                                 ascontiguousarray=lambda x: FakeDeviceArray(np.ascontiguousarray(x.a)))
    monkeypatch.setattr(backend.graph, "cupy", fake)
    monkeypatch.setattr(backend.graph, "_libcublas", lambda: backend.graph.declare(lib))
    monkeypatch.setattr(backend.graph, "_workspaces", {})
    monkeypatch.delenv(backend.graph.WORKSPACE_ENV, raising=False)
    monkeypatch.delenv(backend.graph.ALGO_ENV, raising=False)
    backend.graph._compute_capability.cache_clear()
    yield types.SimpleNamespace(lib=lib, allocations=allocations, device=device)
    backend.graph._compute_capability.cache_clear()


def test_the_ctypes_signatures_are_the_documented_ones():
    assert set(backend.graph.CUBLAS_SIGNATURES) == set(CUBLAS_API)
    for name, argtypes in backend.graph.CUBLAS_SIGNATURES.items():
        assert tuple(argtypes) == _documented(name), name


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cublas_gemm_computes_every_layout_through_the_documented_calls(fake_cublas, rng, dtype):
    """The same layouts as the GPU test above, through ctypes into the stand-in: the transposes, leading
    dimensions and argument types that cublas_gemm passes give NumPy's product."""
    a, b = rng.normal(size=(7, 5)).astype(dtype), rng.normal(size=(5, 3)).astype(dtype)
    cases = {"a @ b": (a, b), "transposed view @ .": (np.ascontiguousarray(a.T).T, b),
             ". @ transposed view": (a, np.ascontiguousarray(b.T).T),
             "F-ordered @ F-ordered": (np.asfortranarray(a), np.asfortranarray(b)),
             "strided": (a, rng.normal(size=(5, 6)).astype(dtype)[:, ::2]), "vector": (a, b[:, 0])}
    for name, (x, y) in cases.items():
        got = backend.graph.cublas_gemm(FakeDeviceArray(x), FakeDeviceArray(y))
        np.testing.assert_allclose(got.a, x @ y, rtol=1e-6 if dtype == np.float32 else 1e-13, err_msg=name)


def test_every_gemm_sets_the_persistent_workspace_after_the_stream(fake_cublas, rng, monkeypatch):
    graph, lib = backend.graph, fake_cublas.lib
    a, b = (FakeDeviceArray(rng.normal(size=s).astype(np.float32)) for s in ((4, 3), (3, 2)))
    for _ in range(3):
        graph.cublas_gemm(a, b)
    names = [name for name, _ in lib.calls]
    assert names == ["cublasSetStream_v2", "cublasSetWorkspace_v2", "cublasSetPointerMode_v2", "cublasGemmEx"] * 3
    assert len(graph._workspaces) == 1 and fake_cublas.allocations.count((32 * 2**20, np.dtype(np.uint8))) == 1
    workspace = graph._workspaces[0, 32 * 2**20]
    for name, args in lib.calls:
        assert args[0] == 0x4A4D  # CuPy's handle
        if name == "cublasSetStream_v2":
            assert args[1] == 0x57
        if name == "cublasSetWorkspace_v2":
            assert args[1:] == (workspace.data.ptr, 32 * 2**20)
        if name == "cublasGemmEx":
            assert args[-1] == 99  # CuPy's algorithm hint from compute capability 8.0 on

    lib.calls.clear()
    monkeypatch.setenv(graph.WORKSPACE_ENV, "0")
    monkeypatch.setenv(graph.ALGO_ENV, "-1")
    graph.cublas_gemm(a, b)
    (_, (_, address, size)), gemm = lib.calls[1], lib.calls[3]
    assert size == 0 and address == graph._workspaces[0, 0].data.ptr != 0 and gemm[1][-1] == -1


def test_the_workspace_follows_the_architecture_and_refuses_nonsense(fake_cublas, monkeypatch):
    graph = backend.graph
    assert graph.workspace_bytes(90) == 32 * 2**20 and graph.workspace_bytes(80) == 4 * 2**20
    assert graph.gemm_algorithm(90) == 99 and graph.gemm_algorithm(75) == -1
    monkeypatch.setenv(graph.WORKSPACE_ENV, "16384")
    assert graph.workspace_bytes(90) == 16384
    for bad, complaint in (("lots", "is not an integer"), ("-5", "is negative")):
        monkeypatch.setenv(graph.WORKSPACE_ENV, bad)
        with pytest.raises(ValueError, match=complaint):
            graph.workspace_bytes(90)
