"""``xpgrad train`` on a machine without network: one line in words, the ways forward, and no run folder.

The real command runs in a subprocess in which no host name resolves (``socket.getaddrinfo`` fails as
it does offline: ``[Errno -2] Name or service not known``), so the registry's real mirrors are tried
and nothing can reach the internet; the other cases use loopback addresses only.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from dataclasses import replace

import pytest

from xpgrad import data
from xpgrad.errors import DataError

from .cli_helpers import child_env, one_line
from .helpers import files

# `python -c OFFLINE ARGS...`: xpgrad's command line on a machine where no name resolves.
OFFLINE = """
import runpy, socket, sys

def no_network(host, *args, **kwargs):
    raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

socket.getaddrinfo = no_network
sys.argv = ["xpgrad", *sys.argv[1:]]
runpy.run_module("xpgrad.cli", run_name="__main__")
"""


def offline_xpgrad(*args, tmp_path, env=None) -> subprocess.CompletedProcess:
    """``xpgrad ARGS`` run in ``tmp_path`` (so its default ``runs/`` lands there), downloads allowed, no network."""
    return subprocess.run([sys.executable, "-c", OFFLINE, *map(str, args)], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120, env=child_env(tmp_path, {"XPGRAD_OFFLINE": "", **(env or {})}))


def test_make_train_without_network_says_so_in_words_and_names_the_ways_forward(tmp_path):
    """`make train` runs `xpgrad train`: MNIST, which is not on this machine, from the registry's mirrors."""
    proc = offline_xpgrad("train", tmp_path=tmp_path)
    assert proc.returncode == 1, proc.stderr
    assert proc.stdout == ""
    line = one_line(proc.stderr)
    hosts = " or ".join(dict.fromkeys(m.split("/")[2] for m in data.DATASETS["mnist"].mirrors))
    assert line.startswith(f"xpgrad: error: no network: could not resolve {hosts} to download mnist "
                           "train-images-idx3-ubyte.gz; to train without this download: --dataset fashion-mnist ")
    assert "--data-dir DIR (a folder holding the four mnist files)" in line
    assert line.endswith("or XPGRAD_MIRROR=URL (a mirror you can reach)")
    assert "Error(" not in line and "Errno" not in line and len(line) < 450  # words, not an exception's repr
    # The run never started training: no run folder, and no temporary file in the cache.
    assert not (tmp_path / "runs").exists()  # nor the runs/ folder made for it
    assert files(tmp_path / "cache" / "mnist") == set()


def test_without_network_the_fashion_mnist_hint_says_whether_debians_copy_is_here(tmp_path):
    system = tmp_path / "system"
    (system / "fashion-mnist").mkdir(parents=True)
    absent = one_line(offline_xpgrad("train", tmp_path=tmp_path, env={"XPGRAD_SYSTEM_DATA_DIR": str(system)}).stderr)
    assert "--dataset fashion-mnist (after apt-get install dataset-fashion-mnist)" in absent
    for f in data.DATASETS["fashion-mnist"].files:
        (system / "fashion-mnist" / f.fname).write_bytes(b"")  # only their presence is looked at here
    present = one_line(offline_xpgrad("train", tmp_path=tmp_path, env={"XPGRAD_SYSTEM_DATA_DIR": str(system)}).stderr)
    assert f"--dataset fashion-mnist (Debian's dataset-fashion-mnist is installed here, in {system / 'fashion-mnist'})" \
        in present


def test_fashion_mnist_itself_without_network_points_at_debians_package(tmp_path):
    proc = offline_xpgrad("train", "--dataset", "fashion-mnist", "--out", tmp_path / "out", tmp_path=tmp_path)
    line = one_line(proc.stderr)
    assert line.startswith("xpgrad: error: no network: could not resolve ")
    assert "apt-get install dataset-fashion-mnist (Debian's copy, found without a download)" in line
    assert "--dataset fashion-mnist" not in line
    assert not (tmp_path / "out").exists()


def test_with_data_dir_the_hint_names_that_folder(tmp_path):
    folder = tmp_path / "mine"
    proc = offline_xpgrad("train", "--dataset", "kmnist", "--data-dir", folder, tmp_path=tmp_path)
    line = one_line(proc.stderr)
    assert f"the four kmnist files put in {folder}, or XPGRAD_MIRROR=URL" in line
    assert files(folder) == set()
    assert not (tmp_path / "runs" / "kmnist-default").exists()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.usefixtures("isolated")
def test_each_mirror_that_fails_is_named_with_its_reason_in_words(serve, tmp_path, monkeypatch):
    """A refused connection and a 404 (loopback only): not "no network", and each mirror's reason in words."""
    _, empty = serve(tmp_path)  # serves a folder without the files: 404
    refused = f"http://127.0.0.1:{_closed_port()}/"
    monkeypatch.setenv(data.MIRROR_ENV, refused)
    monkeypatch.setitem(data.DATASETS, "mnist", replace(data.DATASETS["mnist"], mirrors=(empty,)))
    with pytest.raises(DataError) as info:
        data.load_dataset("mnist", progress=False)
    message = str(info.value)
    assert message.startswith("could not download mnist train-images-idx3-ubyte.gz into ")
    assert f"{refused}train-images-idx3-ubyte.gz (127.0.0.1 refused the connection)" in message
    assert f"{empty}train-images-idx3-ubyte.gz (127.0.0.1 answered HTTP 404)" in message
    assert "no network" not in message and "\n" not in message

