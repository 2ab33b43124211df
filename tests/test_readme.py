"""The README's "Autodiff" example runs as written (on part of Fashion-MNIST, so the test stays fast)."""

import re
from dataclasses import replace
from pathlib import Path

import pytest

import xpgrad.data

README = Path(__file__).resolve().parent.parent / "README.md"
FASHION = Path("/usr/share/datasets/fashion-mnist")
TRAIN, TEST = 12_800, 2_000  # 100 steps of 128, and a fifth of the test set


def autodiff_example() -> str:
    """The first python code block of the README's "## Autodiff" section."""
    text = README.read_text()
    section = text.split("\n## Autodiff\n", 1)[1].split("\n## ", 1)[0]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "README's Autodiff section has no python block"
    return match.group(1)


def test_the_example_trains_and_reports(monkeypatch, capsys, tmp_path):
    if not (FASHION / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip("needs Debian's Fashion-MNIST: apt-get install -y dataset-fashion-mnist")
    monkeypatch.setenv(xpgrad.data.CACHE_ENV, str(tmp_path / "cache"))  # no user cache, no download
    monkeypatch.setenv(xpgrad.data.OFFLINE_ENV, "1")
    real = xpgrad.data.load_dataset

    def part_of(name, *args, **kwargs):
        d = real(name, *args, progress=False)
        return replace(d, x_train=d.x_train[:TRAIN], y_train=d.y_train[:TRAIN],
                       x_test=d.x_test[:TEST], y_test=d.y_test[:TEST])

    monkeypatch.setattr(xpgrad.data, "load_dataset", part_of)
    exec(compile(autodiff_example(), str(README), "exec"), {"__name__": "readme_example"})
    out = capsys.readouterr().out
    match = re.fullmatch(r"last batch loss (\d+\.\d+), test accuracy (\d\.\d+)\n", out)
    assert match, out
    loss, accuracy = map(float, match.groups())
    assert loss < 1.0 and accuracy > 0.7  # chance is 0.1 and ln(10) = 2.3: it learned
