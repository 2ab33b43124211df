"""Data parallelism as the Trainer sees it: which rows of each batch a rank takes, what its gradient weighs,
and the sums every rank agrees on.

Every rank holds the whole training set and draws the same epoch order from
the run's seed. Global batch ``k`` is rows ``k*B .. k*B+B`` of that order, as
in a single process; rank ``r`` of ``K`` takes its contiguous part of them,
``[B*r//K, B*(r+1)//K)``. The batch gather reads a batch's first rows, so
:meth:`DataParallel.order` hands it an order whose batches start with this
rank's part: the gather kernel and the device-resident counter stay as they
are.

The loss a head returns is a mean over the rank's rows, so its gradient is
scaled by ``rows / B`` (the backward pass starts from that weight instead of
1): the allreduced sum of the ranks' gradients is then the gradient of the
mean over the global batch, the single process's to floating-point round-off.
A head that sums over the batch (the notebook's) needs no weight. The update
then runs on every rank from the same summed gradient, so the parameters stay
the same everywhere, and a checkpoint does not depend on the number of ranks.

The ops that see the whole batch see the global one: the step runs in this
rank's :class:`xpgrad.modeops.BatchSlice` (:meth:`DataParallel.batch_slice`),
so a Dropout draws for each row the mask one process draws for it, and a
BatchNorm2d in training normalizes by the global batch's statistics, summed
over the ranks in its forward and backward passes (as PyTorch's
SyncBatchNorm). Its running estimates are then the same on every rank, and
the same as one process's.

:class:`Solo` is one process: every hook is the identity, so a run without
``--distributed`` computes exactly what it did before.
"""

from __future__ import annotations

import numpy

from .. import backend, modeops
from ..backend import get_ops


def part(n: int, size: int, rank: int) -> tuple[int, int]:
    """Rank ``rank``'s contiguous part ``[start, stop)`` of ``n`` rows split over ``size`` ranks (sizes differ
    by at most one)."""
    return n * rank // size, n * (rank + 1) // size


class Solo:
    """One process: the Trainer's hooks as the identity."""

    rank, size = 0, 1

    def part(self, n: int) -> tuple[int, int]:
        """This rank's rows ``[start, stop)`` of ``n``."""
        return part(n, self.size, self.rank)

    def order(self, order, batch_size: int):
        """The epoch's order, arranged so that each batch starts with this rank's part of it."""
        return order

    def loss_weight(self, rows: int, total: int, head, device, dtype):
        """What the backward pass of a loss over ``rows`` of a global batch of ``total`` starts from (None: 1),
        a 0-d array of ``dtype`` on ``device``."""
        return None

    def optimizer(self, optimizer):
        """``optimizer``, made to sum the ranks' gradients before each update."""
        return optimizer

    def batch_slice(self, rows: int) -> modeops.BatchSlice:
        """The :class:`~xpgrad.modeops.BatchSlice` a step on this rank's part of a global batch of ``rows``
        runs in (for one thread)."""
        return modeops.BatchSlice()

    def share(self, model) -> None:
        """Give every rank rank 0's buffers of ``model`` (dropout states, running statistics)."""

    def sums(self, loss_sum, correct) -> tuple[float, int]:
        """The loss and correct-prediction sums (0-d device arrays) over every rank, on the host."""
        return float(loss_sum), int(correct)

    def check(self, n_train: int, batch_size: int) -> None:
        """Raise if a batch would leave a rank without rows."""

    def consolidate(self, optimizer) -> None:
        """After an epoch, on every rank: make ``optimizer``'s whole state whole for the checkpoint."""


class DataParallel(Solo):
    """The hooks for rank ``comm.rank`` of ``comm.size``, over a communicator (:mod:`.mpi` or :mod:`.nccl`)."""

    def __init__(self, comm):
        self.comm, self.rank, self.size = comm, comm.rank, comm.size

    def order(self, order, batch_size: int):
        out = numpy.array(order, copy=True)
        n = len(order)
        full = n - n % batch_size
        if full:
            start = self.part(batch_size)[0]
            out[:full] = numpy.roll(order[:full].reshape(-1, batch_size), -start, axis=1).reshape(-1)
        if full < n:
            out[full:] = numpy.roll(order[full:], -self.part(n - full)[0])
        return out

    def loss_weight(self, rows: int, total: int, head, device, dtype):
        if getattr(head, "reduction", "mean") == "sum":
            return None
        with device:  # on the device once, so that a recorded step reads it from there
            return device.xp.asarray(rows / total, dtype=dtype)

    def optimizer(self, optimizer):
        return DistributedOptimizer(optimizer, self.comm)

    def batch_slice(self, rows: int) -> modeops.BatchSlice:
        start, stop = self.part(rows)
        return modeops.BatchSlice(start, stop, rows, self._allreduce)

    def _allreduce(self, array) -> None:
        self.comm.allreduce(array, "the batch norm statistics")

    def share(self, model) -> None:
        # Set-up, on the host (their dtypes include integers, which NCCL does not sum): a model file may draw
        # a dropout's key without the run's seed, as it may its weights, which DistributedOptimizer shares.
        buffers = dict(model.named_buffers())
        state = self.comm.broadcast_object({name: backend.to_numpy(b) for name, b in buffers.items()})
        for name, value in state.items():
            backend.copy_into(buffers[name], value)

    def consolidate(self, optimizer) -> None:
        optimizer.consolidate()

    def sums(self, loss_sum, correct) -> tuple[float, int]:
        self.comm.settle("the loss sums")
        total = self.comm.sum(numpy.array([float(loss_sum), int(correct)], dtype=numpy.float64))
        return float(total[0]), int(round(total[1]))

    def check(self, n_train: int, batch_size: int) -> None:
        from ..errors import XpgradError  # noqa: PLC0415

        b = min(batch_size, n_train)
        rows = [b] + ([n_train % b] if n_train % b else [])
        if min(rows) < self.size:
            which = "batch" if rows[-1] == b else f"last batch of each epoch ({n_train} % {b} = {rows[-1]} rows)"
            raise XpgradError(f"the {which} has fewer rows than the {self.size} ranks, so some rank would have none; "
                              f"choose a --batch-size that leaves each rank rows, or start fewer ranks")


class DistributedOptimizer:
    """``optimizer``, whose ``step()`` first sums every rank's gradient, as ChainerMN's multi-node optimizer
    does; everything else is ``optimizer``'s own.

    Over MPI the update is sharded, as ZeRO stage 1 does: the gradients are
    reduce-scattered, each rank updates its own part of the flat parameter
    buffer (and of the optimizer's state), and the parameters are allgathered:
    the traffic of one allreduce, and 1/K of the update each. On the CPU the
    update of a wide model is a fifth of its step, which every rank would
    otherwise do whole. Over NCCL the update is one kernel, and the gradients
    are allreduced (NCCL's reduce-scatter wants equal parts, the flat buffer
    has the model's size).

    Made, it copies rank 0's parameters to every rank, so that all start alike
    even from a model file that draws its weights without the run's seed.
    """

    def __init__(self, optimizer, comm):
        if optimizer.flat is None:
            raise ValueError("data parallelism needs the parameters in one flat buffer (nn.flatten_parameters)")
        self.optimizer, self.comm = optimizer, comm
        self.sharded = hasattr(comm, "reduce_scatter")
        self.part = part(optimizer.flat.data.size, comm.size, comm.rank)
        comm.broadcast(optimizer.flat.data, "the parameters")

    def step(self) -> None:
        flat = self.optimizer.flat
        for name, t, slot in zip(flat.names, flat.tensors, flat.grad_views):
            if t.grad is None:
                raise ValueError(f"parameter {name} has no gradient; call loss.backward() before step()")
            if t.grad is not slot:  # set by hand: the collectives read the slot
                backend.copy_into(slot, t.grad)
                t.grad = slot
        if not self.sharded:
            self.comm.allreduce(flat.grad, "the gradient allreduce")
            self.optimizer.step()
            return
        flat.check()
        self.comm.reduce_scatter(flat.grad, "the gradient reduce-scatter")
        self._update_part()
        self.comm.allgather(flat.data, "the parameter allgather")

    def _update_part(self) -> None:
        """The optimizer's own update, on this rank's part of the flat buffers (its update function works on
        any flat slice: it is elementwise), advancing its step count as a whole update does."""
        opt, (start, stop) = self.optimizer, self.part
        flat, cut = opt.flat, slice(start, stop)
        state = [opt._flat_state[s][cut] for s in opt.state_names]
        work = None if opt._flat_scratch is None else opt._flat_scratch[cut]
        opt._update(get_ops(opt.xp), flat.data[cut], flat.grad[cut], *state, advance=True, work=work)

    def consolidate(self) -> None:
        """Give every rank the whole optimizer state (each updates its own part): before a checkpoint. Every
        rank must call it."""
        if self.sharded:
            for name in self.optimizer.state_names:
                self.comm.allgather(self.optimizer._flat_state[name], "the optimizer state")

    def zero_grad(self) -> None:
        self.optimizer.zero_grad()

    @property
    def lr(self) -> float:
        return self.optimizer.lr

    @lr.setter
    def lr(self, value: float) -> None:
        self.optimizer.lr = value

    def __getattr__(self, name):
        return getattr(self.optimizer, name)
