"""The recipes give the numbers they gave before the one engine, bit for bit on the CPU, from the same seed.

tests/data/recipes-before-one-engine.json holds what main computed at
71f8a94, when the Trainer ran a hand-written MLP (tests/data/record_recipes.py
wrote it): four runs of the real command on Fashion-MNIST, their metrics and
the SHA-256 of every parameter and optimizer state array. Today's engine runs
the same commands, and its checkpoint, put back in the old names and flat
layout, must hash the same. Both ran with one BLAS thread, OpenBLAS's Haswell
kernel and NumPy without AVX-512 (the file's ``env``), so any AVX2 machine
computes the same bits.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from .cli_helpers import metrics, xpgrad
from .test_checkpoint_formats import as_old_layout
from .test_cli import FASHION, needs_fashion

pytestmark = [pytest.mark.slow, needs_fashion]

RECORDED = json.loads((Path(__file__).resolve().parent / "data" / "recipes-before-one-engine.json").read_text())


def digest(a) -> str:
    a = np.ascontiguousarray(a)
    return f"{a.dtype.str}{list(a.shape)}:" + hashlib.sha256(a.tobytes()).hexdigest()


@pytest.mark.parametrize("name", list(RECORDED["cases"]))
def test_the_recipe_computes_what_it_did(tmp_path, name):
    case = RECORDED["cases"][name]
    out = tmp_path / "out"
    proc = xpgrad("train", "--dataset", "fashion-mnist", "--data-dir", FASHION, "--device", "cpu", "--quiet",
                  "--out", out, *case["args"], tmp_path=tmp_path, env=RECORDED["env"])
    assert proc.returncode == 0, proc.stderr
    assert metrics(out) == case["metrics"]
    old = as_old_layout(out / "checkpoint.npz", input_bias="notebook" in name)
    assert {k[len("param/"):]: digest(v) for k, v in old.items() if k.startswith("param/")} == case["params"]
    assert {k[len("optim/"):]: digest(v) for k, v in old.items() if k.startswith("optim/")} == case["optimizer"]
