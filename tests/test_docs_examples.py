"""Every code example of the documentation site runs, as a reader would run it.

The pages (docs/*.md, and README.md) are read with markdown-it-py, the CommonMark parser that
pytest-markdown-docs uses; each page's ``python`` and ``sh`` fences then run in
the order they appear, in a fresh folder holding a copy of examples/ (as a clone has it):

* ``python`` fences share one namespace per page, as in a session where a reader types them in turn;
* ``sh`` fences run in ``bash -e -u -o pipefail``, with ``xpgrad`` and ``python`` on PATH;
* downloads are off, and every dataset is cut to a slice (tests/docs_launch.py), so an example that
  trains takes seconds: in process, and for the ``xpgrad`` command through a stand-in on PATH;
* a fence whose first line is ``# not run by the tests: REASON`` (a GPU, Docker, a download, a
  command that installs) does not run, and is reported as skipped with that reason;
* a fence whose first line is ``# needs an MPI: ...`` runs with ``mpiexec`` on PATH where an MPI and
  mpi4py are found (tests/mpi_helpers.py), and is skipped with the reason where they are not (a
  failure under ``XPGRAD_REQUIRE_MPI=1``, as CI sets);
* ``text`` fences are output and file contents, not examples. Any other language is an error here,
  and so is an indented code block: inside an admonition a fence is indented, and would be missed.

A fence holding only ``--8<-- "path"`` (pymdownx.snippets) shows that file of the repository on the
site; it runs as that file's contents.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from .cli_helpers import BASE_ENV
from .docs_launch import slice_datasets
from .mpi_helpers import launcher, require_mpi

markdown_it = pytest.importorskip("markdown_it", reason="needs markdown-it-py (the test extra)")

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.glob("*.md")) + [ROOT / "README.md"]
LANGUAGES = {"python": "python", "sh": "sh", "text": None}
SKIP = re.compile(r"\A# not run by the tests: (.+)")
NEEDS_MPI = re.compile(r"\A# needs an MPI: ")
SNIPPET = re.compile(r'\A--8<-- "([^"]+)"\s*\Z')
FASHION = Path("/usr/share/datasets/fashion-mnist")


def fences(page: Path) -> list[tuple[str, str, int]]:
    """(language, code, line) of each fence of ``page``, in order; indented code blocks are refused."""
    found = []
    for token in markdown_it.MarkdownIt("commonmark").parse(page.read_text()):
        line = token.map[0] + 1 if token.map else 0
        if token.type == "code_block":
            raise AssertionError(f"{page.name}:{line}: an indented code block (a fence inside an admonition?): "
                                 "write examples as fences at the top level, so they run here")
        if token.type == "fence":
            language = token.info.split()[0] if token.info.strip() else ""
            assert language in LANGUAGES, f"{page.name}:{line}: fence language {language!r} is not one of {LANGUAGES}"
            code = token.content
            snippet = SNIPPET.match(code)
            if snippet:
                code = (ROOT / snippet.group(1)).read_text()
            found.append((language, code, line))
    return found


def examples(page: Path) -> list[tuple[str, str, int, str | None]]:
    """(language, code, line, why it does not run or None) of each example of ``page``; an example that needs
    an MPI runs where one is found (:func:`mpi_missing` is then None)."""
    out = []
    for language, code, line in fences(page):
        if LANGUAGES[language] is not None:
            skip = SKIP.match(code)
            out.append((language, code, line, skip.group(1) if skip else mpi_missing() if NEEDS_MPI.match(code) else None))
    return out


def mpi_missing() -> str | None:
    """Why an example that needs an MPI cannot run here, or None; under ``XPGRAD_REQUIRE_MPI=1`` it must run."""
    reason = launcher()[1]
    if reason is not None and os.environ.get("XPGRAD_REQUIRE_MPI", "").strip().lower() in ("1", "true", "yes", "on"):
        return None  # not skipped: the page's test fails on it, through require_mpi()
    return reason


def _name(page: Path) -> str:
    return str(page.relative_to(ROOT))


@pytest.fixture
def reader(tmp_path, monkeypatch):
    """A reader's folder, environment and PATH: examples/ copied in, downloads off, datasets sliced."""
    work = tmp_path / "work"
    shutil.copytree(ROOT / "examples", work / "examples")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    commands = {"xpgrad": f'"{sys.executable}" "{ROOT / "tests" / "docs_launch.py"}"', "python": f'"{sys.executable}"'}
    mpiexec = launcher()[0]
    if mpiexec:  # with --oversubscribe for Open MPI, which counts cores as slots
        commands["mpiexec"] = " ".join(f'"{part}"' for part in mpiexec)
    for name, target in commands.items():
        (bin_dir / name).write_text(f'#!/bin/sh\nexec {target} "$@"\n')
        (bin_dir / name).chmod(stat.S_IRWXU)
    env = {**BASE_ENV, "XPGRAD_CACHE_DIR": str(tmp_path / "cache"), "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])), "MPLBACKEND": "Agg",
           "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}  # Open MPI refuses root without them
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(work)
    import xpgrad.data  # noqa: PLC0415

    monkeypatch.setattr(xpgrad.data, "load_dataset", xpgrad.data.load_dataset)  # put back afterwards
    slice_datasets()
    return work


@pytest.mark.slow
@pytest.mark.parametrize("page", [p for p in PAGES if any(e[3] is None for e in examples(p))], ids=_name)
def test_the_examples_of_a_page_run_in_order(page, reader, capsys):
    if not (FASHION / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip("the examples train on Debian's Fashion-MNIST: apt-get install dataset-fashion-mnist")
    namespace = {"__name__": "__main__"}
    for language, code, line, skip in examples(page):
        if skip is not None:
            continue
        where = f"{_name(page)}:{line}"
        if NEEDS_MPI.match(code):
            require_mpi()  # here only under XPGRAD_REQUIRE_MPI=1 without an MPI: fails, naming what is missing
        if language == "python":
            exec(compile(code, where, "exec"), namespace)  # a failure shows its line in the page
        else:
            proc = subprocess.run(["bash", "-e", "-u", "-o", "pipefail", "-c", code], capture_output=True, text=True,
                                  timeout=600)
            assert proc.returncode == 0, f"{where} exited {proc.returncode}:\n{code}\n{proc.stdout}\n{proc.stderr}"


@pytest.mark.parametrize("page, line, reason", [
    pytest.param(page, line, reason, id=f"{_name(page)}:{line}")
    for page in PAGES for _, _, line, reason in examples(page) if reason is not None])
def test_an_example_not_run_here_is_reported(page, line, reason):
    pytest.skip(f"{_name(page)}:{line}: {reason}")


def test_every_page_is_read_and_has_examples_in_known_languages():
    assert {p.name for p in PAGES} >= {"getting-started.md", "training.md", "autodiff.md", "gpus-and-docker.md",
                                        "distributed.md", "README.md"}
    for page in PAGES:
        examples(page)  # raises on an indented code block or an unknown language
