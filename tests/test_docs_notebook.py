"""The tutorial notebook (docs/notebook-to-xpgrad.ipynb) runs, every cell, on a slice of the data.

Its cells run in a Jupyter kernel (nbclient), in order, in a fresh folder, with downloads off, each
dataset cut to a slice (tests/docs_launch.py) and ``xpgrad`` on PATH doing the same, so the
notebook's own checks (its ``assert`` lines) and its ``xpgrad train --model`` run as a reader's
would. A cell tagged ``gpu`` runs where a GPU is usable; elsewhere it is reported as skipped, with
the reason. The outputs the site shows are the stored ones, made by ``make notebook`` on the whole
dataset: they must come from one run, top to bottom.
"""

from __future__ import annotations

import importlib.util
import os
import stat
import sys
from pathlib import Path

import pytest

from xpgrad import backend

from .cli_helpers import BASE_ENV

nbformat = pytest.importorskip("nbformat", reason="needs nbformat, nbclient and ipykernel (the test extra)")
pytest.importorskip("nbclient", reason="needs nbclient (the test extra)")
pytest.importorskip("ipykernel", reason="needs ipykernel (the test extra)")

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "docs" / "notebook-to-xpgrad.ipynb"
FASHION = Path("/usr/share/datasets/fashion-mnist")
SETUP = f"import sys; sys.path.insert(0, {str(ROOT)!r}); from tests.docs_launch import slice_datasets; slice_datasets()"


def _runner():
    spec = importlib.util.spec_from_file_location("run_notebook", ROOT / "docs" / "hooks" / "run_notebook.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _gpu_cells():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    return [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and "gpu" in c.metadata.get("tags", [])]


@pytest.mark.slow
def test_every_cell_runs_on_a_slice_of_the_data(tmp_path, monkeypatch):
    if not (FASHION / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip("the notebook trains on Debian's Fashion-MNIST: apt-get install dataset-fashion-mnist")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "xpgrad").write_text(f'#!/bin/sh\nexec "{sys.executable}" "{ROOT / "tests" / "docs_launch.py"}" "$@"\n')
    (bin_dir / "xpgrad").chmod(stat.S_IRWXU)
    for key, value in {**BASE_ENV, "XPGRAD_CACHE_DIR": str(tmp_path / "cache"), "MPLBACKEND": "Agg",
                       "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
                       "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}.items():
        monkeypatch.setenv(key, value)  # the kernel, and the commands it runs, inherit these
    work = tmp_path / "work"
    work.mkdir()
    nb = _runner().execute(nbformat.read(NOTEBOOK, as_version=4), work, backend.gpu_status()[0], setup=SETUP)
    outputs = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "done: test accuracy" in outputs and "test loss" in outputs  # xpgrad train and eval ran
    assert (work / "runs" / "fashion-mnist-NotebookMLP" / "checkpoint.npz").is_file()


@pytest.mark.parametrize("index", _gpu_cells())
def test_a_gpu_cell_runs_only_with_a_gpu(index):
    usable, why = backend.gpu_status()
    if not usable:
        pytest.skip(f"{NOTEBOOK.name} cell {index}: needs a GPU; {why.split(';')[0]}")
    # With a GPU, test_every_cell_runs_on_a_slice_of_the_data ran it.


def test_the_stored_outputs_come_from_one_run_top_to_bottom():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    ran = [c.execution_count for c in code if c.execution_count is not None]
    assert ran == list(range(1, len(ran) + 1)), "run `make notebook` to store the outputs of a whole run"
    assert all(c.execution_count is not None for c in code if "gpu" not in c.metadata.get("tags", [])), \
        "a cell that runs without a GPU has no stored output: run `make notebook`"
    assert not any(o.output_type == "error" for c in code for o in c.outputs)
