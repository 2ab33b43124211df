"""Downloads through pooch from loopback mirrors (127.0.0.1) serving real files, mirror by mirror."""

from __future__ import annotations

import numpy as np
import pytest

from xpgrad import data
from xpgrad.errors import DataError

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
    assert "100%" in capsys.readouterr().err
