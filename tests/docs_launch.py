"""``python tests/docs_launch.py ARGS``: the ``xpgrad`` command on a slice of each dataset, for the docs' examples.

The documentation's examples (tests/test_docs_examples.py, tests/test_docs_notebook.py) run as a reader
would type them, and train; to keep that to seconds, every dataset is cut to its first ``TRAIN`` training
and ``TEST`` test images (``XPGRAD_DOCS_TRAIN``, ``XPGRAD_DOCS_TEST``), after it was found and verified
as usual. :func:`slice_datasets` does the same inside a Python process (a notebook's kernel, a page's
namespace). Nothing else differs from the ``xpgrad`` console script.
"""

from __future__ import annotations

import os
import sys
from dataclasses import replace

TRAIN = int(os.environ.get("XPGRAD_DOCS_TRAIN", "2000"))
TEST = int(os.environ.get("XPGRAD_DOCS_TEST", "500"))


def slice_datasets(train: int = TRAIN, test: int = TEST):
    """Replace ``xpgrad.data.load_dataset`` by one that returns the first ``train`` and ``test`` images; returns
    the original, to put back."""
    import xpgrad.data  # noqa: PLC0415 - after the environment is set

    real = xpgrad.data.load_dataset

    def load_a_slice(name, data_dir=None, progress=True):
        d = real(name, data_dir, progress)
        return replace(d, x_train=d.x_train[:train], y_train=d.y_train[:train], x_test=d.x_test[:test],
                       y_test=d.y_test[:test])

    load_a_slice.__doc__ = real.__doc__
    xpgrad.data.load_dataset = load_a_slice
    return real


if __name__ == "__main__":
    slice_datasets()
    from xpgrad import cli

    sys.exit(cli.main())
