"""Downloads through pooch's downloader from loopback mirrors (127.0.0.1), mirror by mirror, in process and
through the real command."""

from __future__ import annotations

import functools
import http.server
import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from xpgrad import data
from xpgrad.errors import DataError

from .cli_helpers import assert_user_error, child_env, command, one_line, xpgrad
from .helpers import NAMES, T10K_IMAGES, files, fill, with_mirrors

pytestmark = pytest.mark.usefixtures("isolated")  # no real cache, system folder or network


@pytest.mark.parametrize("mode", ["corrupt", "truncated", "dropped", "missing", "stalled"])
def test_a_bad_mirror_falls_through_to_the_next(mode, isolated, serve, good_mirror, bad_files, tmp_path, monkeypatch):
    monkeypatch.setattr(data.sources, "DOWNLOAD_TIMEOUT", (2.0, 0.5))
    directory, server_mode = {
        "corrupt": (bad_files, "files"),
        "truncated": (bad_files, "files"),
        "dropped": (fill(tmp_path / "full"), "drop"),
        "missing": (tmp_path, "files"),  # 404
        "stalled": (tmp_path, "stall"),
    }[mode]
    bad_server, bad_url = serve(directory, server_mode)
    good_server, good_url = good_mirror
    monkeypatch.setenv(data.MIRROR_ENV, bad_url)
    with_mirrors(monkeypatch, "mnist-t10k", good_url)
    ds = data.load_dataset("mnist-t10k", progress=False)
    assert np.array_equal(ds.x_train, data.read_idx(T10K_IMAGES))
    assert len(bad_server.requests) == 4 and len(good_server.requests) == 4
    assert files(isolated / "cache/mnist-t10k") == set(NAMES)  # no temporary left beside them


def test_all_mirrors_bad_is_one_error_and_leaves_no_file(isolated, serve, bad_files, tmp_path, monkeypatch):
    first, first_url = serve(bad_files)
    second, second_url = serve(fill(tmp_path / "full"), "drop")
    with_mirrors(monkeypatch, "mnist-t10k", first_url, second_url)
    folder = isolated / "mine"
    with pytest.raises(DataError) as info:
        data.load_dataset("mnist-t10k", data_dir=str(folder), progress=False)
    message = str(info.value)
    assert "could not download mnist-t10k train-images-idx3-ubyte.gz" in message and "\n" not in message
    assert f"{first_url}train-images-idx3-ubyte.gz" in message and f"{second_url}train-images-idx3-ubyte.gz" in message
    assert "XPGRAD_MIRROR" in message
    assert first.requests == second.requests == ["/train-images-idx3-ubyte.gz"]
    assert files(folder) == set()


def test_download_checks_an_md5_gz_hash(isolated, good_mirror, bad_files, serve, monkeypatch):
    bad_server, bad_url = serve(bad_files)
    _, good_url = good_mirror
    with_mirrors(monkeypatch, "mnist-t10k", bad_url, good_url, md5=True)
    data.load_dataset("mnist-t10k", progress=False)
    assert len(bad_server.requests) == 4
    assert (isolated / "cache/mnist-t10k" / NAMES[0]).read_bytes() == T10K_IMAGES.read_bytes()


def test_download_without_pooch_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "pooch", None)
    with pytest.raises(DataError, match=r"pip install pooch \(or xpgrad\[train\]\)"):
        data.load_dataset("mnist-t10k", progress=False)


def test_progress_bar_download(isolated, good_mirror, monkeypatch, capsys):
    pytest.importorskip("tqdm")
    _, url = good_mirror
    monkeypatch.setenv(data.MIRROR_ENV, url)
    data.load_dataset("mnist-t10k", progress=True)
    err = capsys.readouterr().err
    # One bar per file, sized from Content-Length, erased when the file is done (leave=False).
    assert all(f"downloading {name}" in err for name in NAMES)
    assert "0.00/1.65M" in err and err.endswith("\r")


# ---------------------------------------------------------------------------
# Through the real command (a subprocess): the mirrors rule, bounds, --quiet, and signals mid-download.
# tests/launch.py gives a dataset only the mirrors a test names, so nothing reaches the internet.

FASHION = Path("/usr/share/datasets/fashion-mnist")
needs_fashion = pytest.mark.skipif(not (FASHION / "t10k-labels-idx1-ubyte.gz").exists(),
                                   reason="needs Debian's Fashion-MNIST: apt-get install dataset-fashion-mnist")
TINY = ("--hidden", "8", "--epochs", "1", "--device", "cpu")


class _Mirror(http.server.SimpleHTTPRequestHandler):
    """Serves a folder (``files``), zeros for ever (``endless``), or a file's first 256 KiB and then nothing (``drip``)."""

    def log_message(self, *args):
        pass

    def do_GET(self):
        server = self.server
        server.requests.append(self.path)
        if server.mode == "files":
            return super().do_GET()
        self.send_response(200)
        if server.mode == "drip":
            body = (Path(self.directory) / self.path.lstrip("/")).read_bytes()
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: 256 << 10])
            self.wfile.flush()
            server.release.wait(60)
            return
        self.end_headers()  # endless: no length, the body ends when the connection does
        chunk = bytes(1 << 20)
        try:
            while not server.release.is_set():
                self.wfile.write(chunk)
                server.sent += len(chunk)
        except OSError:
            pass


@pytest.fixture
def mirror():
    """``mirror(folder, mode)`` -> (server, URL): a loopback mirror in one of _Mirror's modes."""
    running = []

    def start_server(folder, mode="files"):
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Mirror, directory=str(folder)))
        server.daemon_threads, server.block_on_close = True, False
        server.mode, server.requests, server.sent, server.release = mode, [], 0, threading.Event()
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        running.append(server)
        return server, f"http://127.0.0.1:{server.server_port}/"

    yield start_server
    for server in running:
        server.release.set()
        server.shutdown()
        server.server_close()


def _only(url, *names) -> dict:
    """The environment for a download from ``url`` alone (XPGRAD_MIRROR, and no registry mirror)."""
    return {"XPGRAD_OFFLINE": "", "XPGRAD_MIRROR": url, "XPGRAD_TEST_MIRRORS": json.dumps({n: [] for n in names})}


@needs_fashion
def test_a_mirror_of_debians_recompressed_files_is_accepted_and_quiet_means_quiet(tmp_path, mirror):
    """Debian recompresses Fashion-MNIST: its .gz bytes fail upstream's md5, its payload passes its sha256."""
    server, url = mirror(FASHION)
    out = tmp_path / "out"
    proc = xpgrad("train", "--dataset", "fashion-mnist", *TINY, "--quiet", "--out", out, tmp_path=tmp_path,
                  launcher=True, env=_only(url, "fashion-mnist"))
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""  # --quiet: no progress bar, no "Downloading data from ..." line
    cache = tmp_path / "cache" / "fashion-mnist"
    names = [f.fname for f in data.DATASETS["fashion-mnist"].files]
    assert sorted(server.requests) == sorted("/" + n for n in names)
    assert all((cache / n).read_bytes() == (FASHION / n).read_bytes() for n in names)
    assert files(cache) == set(names)


@needs_fashion
def test_download_progress_shows_without_quiet(tmp_path, mirror):
    _, url = mirror(FASHION)
    proc = xpgrad("train", "--dataset", "fashion-mnist", *TINY, "--out", tmp_path / "out", tmp_path=tmp_path,
                  launcher=True, env=_only(url, "fashion-mnist"))
    assert proc.returncode == 0, proc.stderr
    assert "downloading train-images-idx3-ubyte.gz" in proc.stderr and "Traceback" not in proc.stderr


def test_an_endless_mirror_is_cut_off_past_the_largest_possible_size(tmp_path, mirror):
    server, url = mirror(tmp_path, "endless")
    limit = data.DATASETS["kmnist"].train_images.max_download
    proc = xpgrad("train", "--dataset", "kmnist", *TINY, "--quiet", "--out", tmp_path / "out", tmp_path=tmp_path,
                  launcher=True, env=_only(url, "kmnist"))
    assert_user_error(proc, f"{url}train-images-idx3-ubyte.gz (sent more than {limit} bytes")
    server.release.set()
    assert server.sent < limit + (64 << 20)  # what the socket buffers held, no more
    assert files(tmp_path / "cache") == set()


@needs_fashion
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL])
def test_a_download_stopped_midway_leaves_no_temp_file(tmp_path, mirror, signum):
    """SIGINT and SIGTERM remove the temp file at once; after SIGKILL the next download does."""
    dripping, url = mirror(FASHION, "drip")
    cache = tmp_path / "cache" / "fashion-mnist"
    proc = subprocess.Popen(command("train", "--dataset", "fashion-mnist", *TINY, "--quiet", "--out", tmp_path / "out",
                                    launcher=True), env=child_env(tmp_path, _only(url, "fashion-mnist")),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not any(name.endswith(".tmp") and (cache / name).stat().st_size >= (256 << 10)
                  for name in (os.listdir(cache) if cache.exists() else [])):
        assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()
        time.sleep(0.02)
    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=60)
    dripping.release.set()
    if signum == signal.SIGKILL:
        assert len(files(cache)) == 1  # the temp file: nothing could remove it
        _, good = mirror(FASHION)
        again = xpgrad("train", "--dataset", "fashion-mnist", *TINY, "--quiet", "--out", tmp_path / "out2",
                       tmp_path=tmp_path, launcher=True, env=_only(good, "fashion-mnist"))
        assert again.returncode == 0, again.stderr
        assert files(cache) == {f.fname for f in data.DATASETS["fashion-mnist"].files}
        return
    assert proc.returncode == 128 + signum, stderr
    line = one_line(stderr)
    assert line.startswith(f"xpgrad: interrupted by {signal.Signals(signum).name}; no checkpoint is kept in ")
    assert files(cache) == set()
