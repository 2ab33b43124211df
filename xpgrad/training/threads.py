"""``--threads``: how many threads the CPU's matrix products (the BLAS) use, as ``torch.set_num_threads``.

By default the BLAS decides, as NumPy and PyTorch do: ``OMP_NUM_THREADS`` or
``OPENBLAS_NUM_THREADS`` when set, else every core. ``--threads N`` sets it
for the run through threadpoolctl (the ``train`` extra). The run records the
number in effect in its config.
"""

from __future__ import annotations

from ..errors import XpgradError

_limits = None  # the threadpoolctl limit in force, kept so that it stays in force


def blas_threads() -> int:
    """The number of threads the BLAS uses now (0 when threadpoolctl is not installed to ask it)."""
    try:
        from threadpoolctl import threadpool_info  # noqa: PLC0415 - optional extra
    except ImportError:
        return 0
    counts = [p.get("num_threads", 0) for p in threadpool_info() if p.get("user_api") == "blas"]
    return max(counts, default=0)


def use_blas_threads(count: int | None) -> int:
    """Make the BLAS use ``count`` threads (None: leave its own choice); returns the number in effect."""
    global _limits
    if count:
        try:
            from threadpoolctl import threadpool_limits  # noqa: PLC0415 - optional extra
        except ImportError:
            raise XpgradError("--threads needs threadpoolctl: pip install 'xpgrad[train]'") from None
        _limits = threadpool_limits(limits=count, user_api="blas")
    return blas_threads()
