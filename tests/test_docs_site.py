"""The documentation site (mkdocs.yml, docs/) says everything, and its generated parts read the real data.

``mkdocs build --strict`` (CI, ``make docs``) fails on a broken link or a warning; these checks are
what a build cannot see: a page left out of the navigation, an option of the command that no page
describes, and the Performance page's tables and plots against the JSON they are made from.
"""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest

from xpgrad.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


def _hook(name):
    spec = importlib.util.spec_from_file_location(f"docs_hook_{name}", DOCS / "hooks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _subcommands():
    return next(a for a in build_parser()._actions if hasattr(a, "choices") and isinstance(a.choices, dict)).choices


def test_every_page_is_in_the_navigation():
    nav = (ROOT / "mkdocs.yml").read_text()
    pages = {p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*") if p.suffix in (".md", ".ipynb")}
    pages -= {"README.short.md"}  # the README to be: not a page (exclude_docs)
    missing = sorted(p for p in pages if f" {p}\n" not in nav and f"- {p}\n" not in nav)
    assert not missing, f"pages missing from mkdocs.yml's nav: {missing}"


@pytest.mark.parametrize("command", ["train", "eval", "info"])
def test_every_option_of_the_command_is_described_in_words(command):
    """The options table is generated from the parser; the words around it are not, so each option needs them."""
    text = (DOCS / "training.md").read_text() + (DOCS / "gpus-and-docker.md").read_text()
    options = [o for a in _subcommands()[command]._actions for o in a.option_strings if o.startswith("--")]
    missing = [o for o in options if o != "--help" and f"`{o}" not in text]
    assert not missing, f"xpgrad {command} options no page describes: {missing}"


def test_the_options_table_is_read_from_the_parser():
    table = _hook("generated").options_table("train")
    for action in _subcommands()["train"]._actions:
        if action.option_strings != ["-h", "--help"]:
            assert f"| `{', '.join(action.option_strings)}` |" in table
    assert "&lt;dataset&gt;" in table  # help text is escaped, so <dataset> is shown, not taken for HTML


def test_the_reference_of_xpgrad_lists_its_all():
    text = _hook("generated").names_markdown()
    assert "::: xpgrad.tensor.Tensor\n" in text and "::: xpgrad.graphstep.graph_step\n" in text
    assert "[its page](nn.md)" in text


def test_the_performance_tables_show_every_result_file():
    performance = _hook("performance")
    results = ROOT / "bench" / "results"
    cpu = performance.cpu_epoch_table()
    assert cpu.count("\n") - 1 == len(list(results.glob("cpu_epoch-*.json")))
    one_engine = json.loads((results / "cpu_epoch-1thread-vm-2026-12-05-one-engine-after-1.json").read_text())
    assert f"{one_engine['results']['xpgrad']['median'] * 1e3:.0f} ms" in cpu
    gpu = performance.gpu_epoch_table()
    assert "NVIDIA H200" in gpu and "| fused |" in gpu
    assert "| 0.92× (0.75–1.08) |" in performance.tensor_epoch_table()  # SGD: the loop against the Trainer


def test_a_new_result_shows_without_an_edit(tmp_path, monkeypatch):
    """A scaling run at a width not measured before: its row fills in, the rest still says "not measured"."""
    performance = _hook("performance")
    stats = {"median": 1.5, "min": 1.25, "max": 2.0, "n": 3, "all": [1.5, 1.25, 2.0]}
    (tmp_path / "scaling-cpu-test-2027-01-01.json").write_text(json.dumps({
        "machine": {"date": "2027-01-01T00:00:00"}, "setup": {"device": "cpu"},
        "shapes": {"batch 1024, hidden 1024": {"epochs": {"xpgrad_eager": stats}}}}))
    monkeypatch.setattr(performance, "RESULTS", str(tmp_path))
    table = performance.scaling_table()
    assert re.search(r"\| 1024 \| 1024 \| 1500 ms \(1250–2000\) \|", table)
    assert "| 128 | 100 | not measured |" in table
    pictures = performance.plots()
    assert set(pictures) == {"img/bench-cpu-epoch.png", "img/bench-gpu-epoch.png", "img/bench-scaling.png"}
    assert all(png.startswith(b"\x89PNG") for png in pictures.values())


def test_the_notebooks_links_point_at_pages_of_the_site():
    """mkdocs checks the links of Markdown pages but not those inside a notebook, which it shows as they are:
    there a link must be the page's address on the site (``../training/``), never ``training.md``."""
    nbformat = pytest.importorskip("nbformat", reason="needs nbformat (the test extra)")
    nb = nbformat.read(DOCS / "notebook-to-xpgrad.ipynb", as_version=4)
    links = [m for c in nb.cells if c.cell_type == "markdown" for m in re.findall(r"\]\(([^)\s]+)\)", c.source)]
    assert links, "the notebook links to the pages that follow it"
    for link in links:
        if link.startswith(("http://", "https://", "#")):
            continue
        page = re.fullmatch(r"\.\./([\w-]+)/(#[\w-]+)?", link)
        assert page and (DOCS / f"{page.group(1)}.md").is_file(), f"{link}: not the address of a page of the site"
