"""Run the tutorial notebook top to bottom and store its outputs in it (``make notebook``); not a hook.

The site shows the notebook's stored outputs (the build does not execute it); this makes them, on the
whole dataset, in a scratch folder (the notebook writes ``notebook_model.py`` and ``runs/``). A cell
tagged ``gpu`` runs only where a GPU is usable, and is left without output elsewhere. The tests run
the notebook too, on a slice of the data (tests/test_docs_notebook.py), and check that the stored
outputs come from one run, top to bottom.

    python docs/hooks/run_notebook.py [NOTEBOOK]
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

import nbformat
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebook-to-xpgrad.ipynb"


def runs_here(cell, gpu_usable: bool) -> bool:
    """Whether ``cell`` runs on this machine: every code cell, except one tagged ``gpu`` without a GPU."""
    return cell.cell_type == "code" and (gpu_usable or "gpu" not in cell.metadata.get("tags", []))


def execute(nb, folder: Path, gpu_usable: bool, setup: str | None = None, timeout: int = 900):
    """Run ``nb``'s cells that run here, in order, in ``folder``; ``setup`` runs first, and is not stored."""
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(folder)}})
    count = 0
    with client.setup_kernel():
        if setup:
            client.execute_cell(nbformat.v4.new_code_cell(setup), 0)
        for index, cell in enumerate(nb.cells):
            if cell.cell_type != "code":
                continue
            if not runs_here(cell, gpu_usable):
                cell.outputs, cell.execution_count = [], None
                continue
            client.execute_cell(cell, index)
            count += 1
            cell.execution_count = count  # counted from 1, the setup cell aside
    return nb


def main(path=NOTEBOOK) -> None:
    from xpgrad import backend

    nb = nbformat.read(path, as_version=4)
    os.environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]  # `!xpgrad` in cells
    # A folder of a fixed name, so that the paths the outputs show read the same from run to run.
    folder = Path(tempfile.gettempdir()) / "xpgrad-tutorial"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    execute(nb, folder, backend.gpu_status()[0])
    shutil.rmtree(folder)
    nbformat.write(nb, path)


if __name__ == "__main__":
    main(*sys.argv[1:])
