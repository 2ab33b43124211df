"""The parts of data parallelism that need no MPI: a rank's rows, its gradient's weight, the launchers'
variables, and the NCCL communicator's id broadcast and buffer handling with a stand-in NCCL.

The real NCCL case needs GPUs (marked ``gpu``, skipped with the reason here).
"""

from __future__ import annotations

import numpy as np
import pytest

from xpgrad import backend
from xpgrad.distributed import DataParallel, Solo, part
from xpgrad.distributed import launch
from xpgrad.distributed.job import Bystander
from xpgrad.distributed.mpi import Unanswered
from xpgrad.distributed.nccl import NcclCommunicator
from xpgrad.errors import XpgradError
from xpgrad.training.heads import make_head


class Ranks:
    """What DataParallel needs of a communicator: a rank and a size."""

    def __init__(self, rank, size):
        self.rank, self.size = rank, size


@pytest.mark.parametrize("n,size", [(40, 3), (16, 3), (7, 7), (256, 2), (10000, 6)])
def test_parts_cover_the_rows_once_and_differ_by_at_most_one(n, size):
    parts = [part(n, size, r) for r in range(size)]
    assert parts[0][0] == 0 and parts[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(parts, parts[1:]))
    sizes = [stop - start for start, stop in parts]
    assert max(sizes) - min(sizes) <= 1


@pytest.mark.parametrize("n,batch,size", [(256, 40, 3), (256, 32, 2), (100, 100, 4), (61, 20, 3)])
def test_each_batch_starts_with_the_ranks_part_of_it(n, batch, size):
    """What the gather reads of each batch (its first rows) is, over the ranks, that batch exactly, in order."""
    order = np.random.default_rng(0).permutation(n)
    for start in range(0, n, batch):
        rows = order[start:start + batch]
        taken = []
        for rank in range(size):
            mine = DataParallel(Ranks(rank, size)).order(order, batch)
            assert sorted(mine) == list(range(n))  # still a permutation, of the same length
            first, stop = part(len(rows), size, rank)
            taken.extend(mine[start:start + stop - first])
        assert taken == list(rows)


def test_loss_weights_add_up_to_one_for_a_mean_and_are_absent_for_a_sum():
    head = make_head("cross_entropy", 10)
    weights = []
    for rank in range(3):
        start, stop = part(40, 3, rank)
        w = DataParallel(Ranks(rank, 3)).loss_weight(stop - start, 40, head, backend.CPU, np.float64)
        weights.append(float(w))
    assert sum(weights) == pytest.approx(1.0, rel=1e-15)
    notebook = make_head("notebook", 10)
    assert DataParallel(Ranks(1, 3)).loss_weight(13, 40, notebook, backend.CPU, np.float64) is None
    assert Solo().loss_weight(40, 40, head, backend.CPU, np.float64) is None
    assert Solo().order(order := np.arange(5), 2) is order


def test_a_batch_that_leaves_a_rank_no_rows_is_refused():
    DataParallel(Ranks(0, 4)).check(256, 40)
    with pytest.raises(XpgradError, match="last batch of each epoch .* 2 rows"):
        DataParallel(Ranks(0, 4)).check(242, 40)
    with pytest.raises(XpgradError, match="fewer rows than the 4 ranks"):
        DataParallel(Ranks(0, 4)).check(256, 3)


def test_the_launchers_are_found_by_their_variables(monkeypatch):
    for size, rank in launch.LAUNCHERS.values():
        monkeypatch.delenv(size, raising=False)
        monkeypatch.delenv(rank, raising=False)
    assert launch.launcher() is None and launch.rank_from_env() is None
    monkeypatch.setenv("SLURM_PROCID", "3")  # not alone: a rank of a step of tasks has their count too
    assert launch.launcher() is None
    monkeypatch.setenv("SLURM_STEP_NUM_TASKS", "4")
    assert launch.launcher() == "Slurm's srun" and launch.rank_from_env() == 3
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "2")
    monkeypatch.setenv("OMPI_COMM_WORLD_RANK", "1")
    assert launch.launcher() == "Open MPI's mpiexec" and launch.rank_from_env() == 1


def test_a_bystander_writes_nothing(tmp_path):
    folder = Bystander(tmp_path / "run")
    with folder:
        folder.clear_for_new_run()
        folder.write_metrics([{"epoch": 1}])
    assert not folder.writes and not (tmp_path / "run").exists()
    assert folder.checkpoint.endswith("checkpoint.npz")


# ---------------------------------------------------------------------------
# NCCL, with stand-ins for CuPy's NCCL module, GPU arrays and MPI


class FakeNccl:
    """The parts of ``cupy.cuda.nccl`` the communicator calls, recording them."""

    NCCL_FLOAT16, NCCL_FLOAT32, NCCL_FLOAT64, NCCL_SUM = 6, 7, 8, 0

    def __init__(self):
        self.calls = []
        nccl = self

        class NcclCommunicator:
            def __init__(self, size, uid, rank):
                nccl.calls.append(("init", size, uid, rank))

            def allReduce(self, send, recv, count, kind, op, stream):  # noqa: N802 - CuPy's name
                nccl.calls.append(("allReduce", send, recv, count, kind, op, stream))

            def bcast(self, buffer, count, kind, root, stream):
                nccl.calls.append(("bcast", buffer, count, kind, root, stream))

            def abort(self):
                nccl.calls.append(("abort",))

        self.NcclCommunicator = NcclCommunicator

    def get_unique_id(self):
        self.calls.append(("get_unique_id",))
        return tuple(range(128))


class FakeMPI:
    """Rank ``rank`` of ``size``, whose object broadcast returns what rank 0 offered (``shared``)."""

    def __init__(self, rank, size, shared, done_after=None):
        self.rank, self.size, self.local_rank, self.shared = rank, size, rank, shared
        self.host, self.peers = "here", [("here", 100 + r) for r in range(size)]
        self.done_after = done_after

    def broadcast_object(self, obj, root=0):
        if self.rank == root:
            self.shared.append(obj)
        return self.shared[0]

    def poll(self, done, what, timeout=None):
        if not done():
            raise Unanswered(f"waited for the other ranks in {what}")


class FakeDeviceArray:
    """A contiguous or strided GPU array, as far as the communicator looks."""

    class _Pointer:
        ptr = 0xDEAD000

    def __init__(self, size, dtype, contiguous=True):
        self.size, self.dtype, self.data = size, np.dtype(dtype), self._Pointer()
        self.flags = type("Flags", (), {"c_contiguous": contiguous})()


def _communicators(size=2, event_done=True):
    shared, fakes, comms = [], [], []
    for rank in range(size):
        nccl = FakeNccl()
        event = type("Event", (), {"done": event_done})
        comms.append(NcclCommunicator(FakeMPI(rank, size, shared), backend.CPU, nccl=nccl, stream=lambda: 0x5,
                                      event=lambda event=event: event))
        fakes.append(nccl)
    return comms, fakes


def test_rank_0_makes_the_nccl_id_and_every_rank_joins_with_it():
    comms, fakes = _communicators(3)
    assert fakes[0].calls[0] == ("get_unique_id",)
    assert all(("get_unique_id",) not in f.calls for f in fakes[1:])
    inits = [next(c for c in f.calls if c[0] == "init") for f in fakes]
    assert inits == [("init", 3, tuple(range(128)), rank) for rank in range(3)]


def test_device_buffers_go_to_nccl_in_place_on_the_current_stream():
    (comm, _), (nccl, _) = _communicators()
    comm.allreduce(FakeDeviceArray(1000, np.float32), "the gradient allreduce")
    comm.broadcast(FakeDeviceArray(10, np.float64), "the parameters")
    assert nccl.calls[-2] == ("allReduce", 0xDEAD000, 0xDEAD000, 1000, FakeNccl.NCCL_FLOAT32, FakeNccl.NCCL_SUM, 0x5)
    assert nccl.calls[-1] == ("bcast", 0xDEAD000, 10, FakeNccl.NCCL_FLOAT64, 0, 0x5)


def test_host_strided_and_integer_buffers_are_refused():
    (comm, _), _ = _communicators()
    with pytest.raises(TypeError, match="GPU arrays"):
        comm.allreduce(np.zeros(4, np.float32), "x")  # never copied through the host
    with pytest.raises(ValueError, match="contiguous"):
        comm.allreduce(FakeDeviceArray(4, np.float32, contiguous=False), "x")
    with pytest.raises(TypeError, match="float16, float32 or float64"):
        comm.allreduce(FakeDeviceArray(4, np.int64), "x")


def test_a_wait_that_times_out_aborts_the_nccl_communicator():
    (comm, _), (nccl, _) = _communicators(event_done=False)
    with pytest.raises(Unanswered):
        comm.settle("the loss sums")
    assert nccl.calls[-1] == ("abort",)


@pytest.mark.gpu
def test_nccl_on_a_gpu_sums_in_place(gpu_xp):
    """One rank on a real GPU with CuPy's NCCL: an allreduce over one rank leaves the buffer as it is."""
    from xpgrad.backend import nccl as backend_nccl

    try:
        module = backend_nccl.module()
    except XpgradError as exc:
        pytest.skip(str(exc))
    comm = NcclCommunicator(FakeMPI(0, 1, []), backend.get_device("cuda"), nccl=module)
    x = gpu_xp.arange(1000, dtype=gpu_xp.float32)
    comm.allreduce(x, "test")
    comm.broadcast(x, "test")
    gpu_xp.cuda.get_current_stream().synchronize()
    assert float(x.sum()) == sum(range(1000))
