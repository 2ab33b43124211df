"""Data-parallel training across processes and machines: ``mpiexec -n K xpgrad train --distributed``.

The design is ChainerMN's: a communicator over mpi4py (:mod:`.mpi`) for the
CPU, one over NCCL with its id sent through MPI (:mod:`.nccl`) for GPUs, and
an optimizer that sums the ranks' gradients before the update
(:class:`.parallel.DistributedOptimizer`). Every rank takes its part of every
global batch (:mod:`.parallel`); rank 0 alone writes the run folder, and a
rank that stops stops the job in one line (:mod:`.job`). :mod:`.launch` knows
the launchers. Nothing here loads MPI until a rank joins a job.

==============  ===========================================================
module          what it holds
==============  ===========================================================
``parallel``    the Trainer's hooks: a rank's rows, its gradient's weight, global sums
``mpi``         :class:`MPICommunicator`: polled collectives, fault notes, the timeout
``nccl``        :class:`NcclCommunicator`: GPU arrays over NCCL, the rest over MPI
``launch``      which launcher started the process; joining the job; the rank's GPU
``job``         one rank's ``xpgrad train --distributed``, its folder and its exit
==============  ===========================================================
"""

from .parallel import DataParallel, DistributedOptimizer, Solo, part

__all__ = ["DataParallel", "DistributedOptimizer", "Solo", "part"]
