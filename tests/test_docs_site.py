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
    missing = sorted(p for p in pages if f" {p}\n" not in nav and f"- {p}\n" not in nav)
    assert not missing, f"pages missing from mkdocs.yml's nav: {missing}"


@pytest.mark.parametrize("command", ["train", "eval", "info"])
def test_every_option_of_the_command_is_described_in_words(command):
    """The options table is generated from the parser; the words around it are not, so each option needs them."""
    text = "".join((DOCS / page).read_text() for page in ("training.md", "gpus-and-docker.md", "distributed.md"))
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


def _results(pattern):
    return [(p.name, json.loads(p.read_text())) for p in sorted((ROOT / "bench" / "results").glob(pattern))]


def _median(values):
    values = sorted(values)
    half = len(values) // 2
    return values[half] if len(values) % 2 else (values[half - 1] + values[half]) / 2


def _rows(table):
    return table.splitlines()[2:]


def test_the_cpu_tables_read_threads_and_models_from_the_json():
    """1 against all threads (the latest run of 784-100-10 at each count), and the MLPs of other shapes."""
    performance = _hook("performance")
    runs = _results("cpu_epoch-*.json")
    assert len(_rows(performance.cpu_epoch_table())) == len(runs)
    latest = {}
    for _, d in sorted(runs, key=lambda r: r[1]["machine"]["date"]):
        if d["setup"]["sizes"] == [784, 100, 10]:
            latest[d["setup"]["threads"]] = d
    threads = _rows(performance.cpu_threads_table())
    assert len(threads) == len(latest) >= 2
    for row, (count, d) in zip(threads, sorted(latest.items())):
        assert row.startswith(f"| {count} | {d['results']['xpgrad']['median'] * 1e3:.0f} ms"), row
        assert f"{sorted(d['results']['xpgrad_vs_torch_paired'])[len(d['results']['xpgrad_vs_torch_paired']) // 2]:.2f}×" in row
    others = [d for _, d in runs if d["setup"]["sizes"] != [784, 100, 10]]
    models = _rows(performance.cpu_models_table())
    assert len(models) == len(others) >= 1
    for row, d in zip(models, others):
        assert row.startswith("| " + "-".join(map(str, d["setup"]["sizes"])) + " |")
        assert f"{d['results']['torch']['median'] * 1e3:.0f} ms" in row


def test_the_breakdown_tables_read_every_part_from_the_json():
    performance = _hook("performance")
    runs = sorted(_results("breakdown-*.json"), key=lambda r: r[1]["machine"]["date"])
    assert {d["setup"]["label"] for _, d in runs} >= {"before", "after"}
    table = _rows(performance.breakdown_table())
    assert len(table) == len(runs)
    for row, (_, d) in zip(table, runs):
        assert row.startswith(f"| {d['setup']['label']} (")
        assert f"| {d['results']['epoch']['median'] * 1e3:.0f} ms" in row and f"{d['results']['floor']['median'] * 1e3:.0f} ms" in row
        ratios = sorted(d["results"]["ratio"]["all"])
        assert f"{ratios[len(ratios) // 2]:.2f}× ({ratios[0]:.2f}–{ratios[-1]:.2f})" in row
    parts = performance.breakdown_parts_table()
    assert parts.splitlines()[0] == "| per step, µs | " + " | ".join(d["setup"]["label"] for _, d in runs) + " |"
    for part in runs[0][1]["results"]["per_step_us"]:
        cells = " | ".join(f"{d['results']['per_step_us'][part]:.0f}" for _, d in runs)
        assert f"| {part} | {cells} |" in parts, part


def test_the_cnn_tables_read_the_json():
    performance = _hook("performance")
    runs = _results("cnn_epoch-*.json")
    assert runs
    table = performance.cnn_epoch_table()
    assert len(_rows(table)) == len(runs)
    for _, d in runs:
        e = d["results"]["epochs"]
        assert f"| {e['xpgrad']['median']:.2f} s ({e['xpgrad']['min']:.2f}–{e['xpgrad']['max']:.2f}) |" in table
        assert f"| {e['torch']['median']:.2f} s" in table and f"{d['setup']['parameters']:,} parameters" in table
    b = runs[-1][1]["breakdown"]
    parts = performance.cnn_parts_table()
    assert f"**{b['epoch_seconds']:.2f}**" in parts and f"| {b['rest_seconds']:.2f} |" in parts
    biggest = max(b["parts"].items(), key=lambda kv: kv[1]["seconds"])
    assert f"| {biggest[0]} ({biggest[1]['calls']:.0f} calls) | {biggest[1]['seconds']:.2f} |" in parts
    shown = re.findall(r"^\| .+? \| (\d+\.\d\d) \|", parts, re.M)
    assert abs(sum(map(float, shown)) - b["epoch_seconds"]) < 0.05  # the rows add up to the epoch (bold)
    gradient = performance.cnn_input_gradient_table()
    for way in runs[-1][1]["input_gradient"]:
        assert f"| {way} |" in gradient


def test_the_memory_table_shows_every_rss_result():
    performance = _hook("performance")
    table = performance.rss_table()
    rss = _results("rss-*.json")
    with_cnn = [d for _, d in _results("cnn_epoch-*.json") if d.get("peak_rss_mb")]
    assert len(_rows(table)) == len(rss) + len(with_cnn)
    for _, d in rss:
        peak = d["results"]["training_peak_mb"]
        target = d["targets"]["peak_rss_mb"]
        assert (f"| {peak['median']:.0f} ({peak['min']:.0f}–{peak['max']:.0f}) |" in table
                and f"≤ {target['target']:.0f} MB: {'met' if target['met'] else 'missed'}" in table)
    for d in with_cnn:
        assert f"| {d['peak_rss_mb']['median']:.0f} (" in table


def test_the_distributed_table_computes_the_speedup_from_the_epochs():
    """The speedup is the ratio of the median epochs, its spread the epochs paired by rank of time
    (as bench.distributed prints it); the allreduce's bandwidth is the buffer over its median time."""
    performance = _hook("performance")
    table = performance.distributed_table()
    runs = _results("distributed-*.json")
    assert len(_rows(table)) == sum(len(d["results"]) for _, d in runs)
    for _, d in runs:
        ranks = str(d["ranks"])
        for spec, by_ranks in d["results"].items():
            one = [s for r in by_ranks["1"] for s in r["epoch_seconds"]]
            many = [s for r in by_ranks[ranks] for s in r["epoch_seconds"]]
            paired = [a / b for a, b in zip(sorted(one), sorted(many))]
            speedup = f"{_median(one) / _median(many):.2f}× ({min(paired):.2f}–{max(paired):.2f})"
            hidden, batch = spec.split(":")
            model = "784-" + "-".join(hidden.split("x")) + f"-10, {batch}"
            allreduce = _median([s for r in by_ranks[ranks] for s in r["allreduce_seconds"]])
            gbs = by_ranks[ranks][0]["buffer_bytes"] / allreduce / 1e9
            assert any(f"| {model} |" in row and f"| {speedup} |" in row and f"{allreduce * 1e6:.0f} µs ({gbs:.1f} GB/s)" in row
                       for row in _rows(table)), (spec, speedup)
    # the README of the data-parallel work quoted these; the JSON still says them
    assert "| 784-1024-1024-10, 256 | 1.86 M | 5.06 s (5.05–5.07) | 3.27 s (3.23–3.31) | 1.55× (1.53–1.56) |" in table


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
    assert set(pictures) == {f"img/bench-{name}.png" for name in ("cpu-epoch", "gpu-epoch", "scaling", "breakdown",
                                                                  "distributed")}
    assert all(png.startswith(b"\x89PNG") for png in pictures.values())


def test_every_table_the_pages_ask_for_exists():
    """A ``<!-- bench: NAME -->`` with no table NAME would fail the build; a table no page shows is lost."""
    performance = _hook("performance")
    asked = {m for page in DOCS.glob("*.md") for m in re.findall(r"<!-- bench: ([\w-]+) -->", page.read_text())}
    assert asked == set(performance.TABLES)


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


def test_the_readmes_links_point_at_files_and_headings_that_exist():
    """README.md is no page of the site, so mkdocs checks none of its links: each must name a file of the
    repository (a page of docs/ as GitHub shows it), and an anchor a heading of that page."""
    readme = (ROOT / "README.md").read_text()
    links = re.findall(r"\]\(([^)\s]+)\)", readme)
    assert any(link.startswith("docs/") for link in links), "the README links into the site"
    for link in links:
        if link.startswith(("http://", "https://")):
            continue
        path, _, anchor = link.partition("#")
        assert (ROOT / path).exists(), f"README.md links to {path}, which does not exist"
        if anchor:
            headings = re.findall(r"^#+ (.+)$", (ROOT / path).read_text(), re.M)
            slugs = {re.sub(r"[^\w\- ]", "", h).strip().lower().replace(" ", "-") for h in headings}
            assert anchor in slugs, f"README.md links to {link}: no such heading"
