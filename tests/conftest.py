"""Shared fixtures: one ``xp`` parameter over the backends.

The cupy case carries the ``gpu`` mark and is skipped *with the reason* from
:func:`xpgrad.backend.gpu_status` when no GPU is usable, so a CPU-only run shows
exactly why it did not run, and never counts it as passed.
"""

import functools
import http.server
import os
import threading
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from xpgrad import backend, data

from .helpers import NAMES, T10K_IMAGES, T10K_LABELS, fill, set_byte, tiny_spec


def pytest_configure(config):
    """``XPGRAD_REQUIRE_GPU=1`` (set by bench/gpu_check.sh) turns "no GPU" from a skip into an error.

    On the lent GPU machine a run where every GPU case skipped would otherwise read as a pass.
    """
    if os.environ.get("XPGRAD_REQUIRE_GPU") == "1":
        ok, reason = backend.gpu_status()
        if not ok:
            raise pytest.UsageError(f"XPGRAD_REQUIRE_GPU=1 but there is no usable GPU: {reason}")


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """Tests that take ``gpu_xp`` are GPU tests: mark them, so ``-m gpu`` selects them."""
    for item in items:
        if "gpu_xp" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.gpu)


def _cupy_param():
    ok, reason = backend.gpu_status()
    marks = [pytest.mark.gpu]
    if not ok:
        marks.append(pytest.mark.skip(reason=f"no usable GPU: {reason.split(';')[0]}"))
    return pytest.param("cupy", marks=marks, id="cupy")


@pytest.fixture(params=[pytest.param("numpy", id="numpy"), _cupy_param()])
def xp(request):
    """NumPy, or CuPy on a usable GPU."""
    if request.param == "numpy":
        return np
    return backend.cupy


@pytest.fixture
def gpu_xp():
    """CuPy, for tests that only make sense on a GPU (e.g. fused vs generic)."""
    ok, reason = backend.gpu_status()
    if not ok:
        pytest.skip(f"no usable GPU: {reason.split(';')[0]}")
    return backend.cupy


@pytest.fixture
def rng():
    """A seeded NumPy generator: inputs are made once on the host, then moved."""
    return np.random.default_rng(20261127)


# ---------------------------------------------------------------------------
# Datasets and mirrors (tests/test_data.py, tests/test_downloads.py)


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """Never touch the real cache, system folder or network; register mnist-t10k."""
    monkeypatch.setenv(data.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setenv(data.SYSTEM_ENV, str(tmp_path / "system"))
    monkeypatch.delenv(data.MIRROR_ENV, raising=False)
    for name, spec in list(data.DATASETS.items()):
        monkeypatch.setitem(data.DATASETS, name, replace(spec, mirrors=()))
    monkeypatch.setitem(data.DATASETS, "mnist-t10k", tiny_spec())
    return tmp_path


class _Handler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        self.server.requests.append(self.path)
        if self.server.mode == "stall":
            self.server.release.wait(10)
            return
        if self.server.mode == "drop":  # announce the whole file, send half, hang up
            body = (Path(self.directory) / self.path.lstrip("/")).read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2])
            self.close_connection = True
            return
        super().do_GET()


@pytest.fixture
def serve():
    """Start loopback servers: ``serve(directory, mode)`` -> (server, base URL)."""
    running = []

    def start(directory: Path, mode: str = "files"):
        handler = functools.partial(_Handler, directory=str(directory))
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        server.block_on_close = False
        server.mode, server.requests, server.release = mode, [], threading.Event()
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        thread.start()
        running.append((server, thread))
        return server, f"http://127.0.0.1:{server.server_port}/"

    yield start
    for server, thread in running:
        server.release.set()
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture
def good_mirror(serve, tmp_path_factory):
    """A loopback server with the four mnist-t10k files."""
    return serve(fill(tmp_path_factory.mktemp("good_mirror")))


@pytest.fixture
def bad_files(tmp_path_factory):
    """Files that are not what the registry says: altered, or cut short (valid gzip up to the cut)."""
    folder = tmp_path_factory.mktemp("bad_files")
    for name in NAMES:
        raw = (T10K_IMAGES if "images" in name else T10K_LABELS).read_bytes()
        (folder / name).write_bytes(raw[: len(raw) // 2] if "images" in name else set_byte(raw, 100, raw[100] ^ 1))
    return folder
