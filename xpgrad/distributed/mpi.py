"""MPI between the ranks (mpi4py): the collectives of data parallelism, which never block a signal nor wait
forever.

Each collective starts non-blocking and is then polled from Python, so that:

* a signal (Ctrl-C or SIGTERM, which the launcher passes to every rank) is
  handled as soon as it arrives, even while a rank waits for the others: the
  rank stops as a single process does, instead of being killed stuck in MPI;
* a rank that fails sends the others a note before it exits; they notice it
  while they wait, and stop without a word of their own, since the failed rank
  said what happened in one line;
* a wait longer than ``timeout`` seconds (``XPGRAD_DISTRIBUTED_TIMEOUT``,
  default 30) ends the rank with one line: a launcher that does not stop the
  other ranks when one dies cannot leave them hanging.

Blocking (and so not interruptible) MPI calls are used only to set up, before
any training, and for the fault note itself.
"""

from __future__ import annotations

import json
import os
import socket
import time

import numpy

from ..errors import XpgradError
from .parallel import part

#: How long a rank waits for the others in one collective, unless XPGRAD_DISTRIBUTED_TIMEOUT says otherwise.
DEFAULT_TIMEOUT = 30.0
TIMEOUT_ENV = "XPGRAD_DISTRIBUTED_TIMEOUT"
_NOTE_TAG, _ACK_TAG, _RING_TAG = 77, 78, 79
_RING_SIZE = 1 << 14  # entries; below it MPI's own allreduce is quicker than the ring's many steps


class PeerFailed(XpgradError):
    """Another rank failed and said so in its own line: this rank stops quietly."""

    def __init__(self, rank: int, message: str):
        super().__init__(f"rank {rank} failed: {message}")
        self.rank, self.message = rank, message
        self.notes = [(rank, message, False)]


class Unanswered(XpgradError):
    """The other ranks did not join a collective within the timeout."""


def timeout_from_env() -> float:
    """``XPGRAD_DISTRIBUTED_TIMEOUT`` in seconds (> 0), or the default."""
    text = os.environ.get(TIMEOUT_ENV, "").strip()
    if not text:
        return DEFAULT_TIMEOUT
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise XpgradError(f"{TIMEOUT_ENV}={text!r}: expected a number of seconds above 0")
    return value


class MPICommunicator:
    """Rank ``rank`` of ``size`` over mpi4py's ``world`` communicator (its own duplicates of it).

    ``local_rank``/``local_size``: the rank among the ranks on this machine
    (which GPU it takes); ``peers``: every rank's ``(host, pid)``.
    """

    def __init__(self, MPI, world=None, timeout: float | None = None):
        self.MPI = MPI
        world = MPI.COMM_WORLD if world is None else world
        self.comm, self.notes = world.Dup(), world.Dup()  # collectives, and fault notes, apart from the user's
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        node = self.comm.Split_type(MPI.COMM_TYPE_SHARED)
        self.local_rank, self.local_size = node.Get_rank(), node.Get_size()
        node.Free()
        self.host = socket.gethostname()
        self.peers = self.comm.allgather((self.host, os.getpid()))
        self.timeout = timeout_from_env() if timeout is None else timeout
        self._scratches = {}

    # -- collectives, polled -------------------------------------------------

    def allreduce(self, array, what: str) -> None:
        """Sum host ``array`` over every rank, in place: a reduce-scatter then an allgather, around the ring,
        for a large array (as fast here as MPI's blocking Allreduce, where its non-blocking one took 2.4x as
        long); MPI's own for a small one."""
        if array.size < _RING_SIZE or self.size == 1:
            self.wait(self.comm.Iallreduce(self.MPI.IN_PLACE, array, op=self.MPI.SUM), what)
            return
        self.reduce_scatter(array, what)
        self.allgather(array, what)

    def parts(self, n: int) -> list[tuple[int, int]]:
        """Every rank's part ``[start, stop)`` of ``n`` entries: rank r owns part r."""
        return [part(n, self.size, r) for r in range(self.size)]

    def reduce_scatter(self, array, what: str) -> None:
        """Sum host 1-D ``array`` over every rank into this rank's part of it (``parts``); the rest of it is
        left partly summed. Around the ring: ``size - 1`` steps, each sending one part to the next rank and
        adding the previous rank's."""
        parts, r, k = self.parts(array.size), self.rank, self.size
        scratch = self._scratch(array.dtype, max(b - a for a, b in parts))
        for step in range(k - 1):
            send, recv = parts[(r - step - 1) % k], parts[(r - step - 2) % k]
            got = scratch[:recv[1] - recv[0]]
            self._exchange(array[send[0]:send[1]], got, what)
            array[recv[0]:recv[1]] += got

    def allgather(self, array, what: str) -> None:
        """Give every rank every rank's part of host 1-D ``array`` (each rank's own part is the one it holds)."""
        parts, r, k = self.parts(array.size), self.rank, self.size
        for step in range(k - 1):
            send, recv = parts[(r - step) % k], parts[(r - step - 1) % k]
            self._exchange(array[send[0]:send[1]], array[recv[0]:recv[1]], what)

    def _exchange(self, send, recv, what: str) -> None:
        """Send ``send`` to the next rank and receive ``recv`` from the previous one, polled."""
        requests = [self.comm.Isend(send, dest=(self.rank + 1) % self.size, tag=_RING_TAG),
                    self.comm.Irecv(recv, source=(self.rank - 1) % self.size, tag=_RING_TAG)]
        self.poll(lambda: self.MPI.Request.Testall(requests), what)

    def _scratch(self, dtype, size: int):
        key = numpy.dtype(dtype)
        if key not in self._scratches or self._scratches[key].size < size:
            self._scratches[key] = numpy.empty(size, dtype=key)
        return self._scratches[key]

    def broadcast(self, array, what: str, root: int = 0) -> None:
        """Copy rank ``root``'s host ``array`` into every rank's, in place."""
        self.wait(self.comm.Ibcast(array, root=root), what)

    def sum(self, values):
        """The sum over every rank of the small host array ``values`` (a new array)."""
        total = numpy.array(values, copy=True)
        self.allreduce(total, "a sum of the metrics")
        return total

    def barrier(self, what: str, timeout: float | None = None) -> None:
        """Wait until every rank is here (``timeout`` None: the communicator's)."""
        self.wait(self.comm.Ibarrier(), what, timeout)

    def settle(self, what: str) -> None:
        """Wait for this rank's device work (none for host arrays)."""

    def wait(self, request, what: str, timeout: float | None = None) -> None:
        """Poll ``request`` until it completes; see the module docstring for what may end the wait."""
        self.poll(request.Test, what, timeout)

    def poll(self, done, what: str, timeout: float | None = None) -> None:
        """Call ``done()`` until it is true, letting signals in, watching for notes and the time."""
        if done():
            return
        limit = self.timeout if timeout is None else timeout
        start = time.monotonic()
        spins = 0
        while not done():
            spins += 1
            if spins % 64:
                continue
            os.sched_yield()  # a waiting rank leaves the core to a rank that works, when they share one
            self.check_notes()
            if time.monotonic() - start > limit:
                raise Unanswered(f"waited {limit:g} s for the other ranks in {what}: "
                                 f"one of them died or hangs, and the launcher did not stop the job (with srun, pass "
                                 f"--kill-on-bad-exit=1; {TIMEOUT_ENV} sets the wait)")

    # -- set-up (blocking) ---------------------------------------------------

    def broadcast_object(self, obj, root: int = 0):
        """Rank ``root``'s picklable ``obj``, on every rank."""
        return self.comm.bcast(obj, root=root)

    def allgather_object(self, obj) -> list:
        """Every rank's ``obj``, in rank order."""
        return self.comm.allgather(obj)

    # -- faults --------------------------------------------------------------

    def send_note(self, message: str, printed: bool = False, to=None, within: float = 1.0) -> None:
        """Tell the other ranks (or ranks ``to``) that this one stops, and why; ``printed``: this rank has said
        so itself. Gives up after ``within`` seconds (a rank may be gone)."""
        text = json.dumps({"message": message[:4000], "printed": printed})
        data = numpy.frombuffer(text.encode("utf-8"), dtype=numpy.uint8)
        ranks = [r for r in range(self.size) if r != self.rank] if to is None else to
        self._send(data, ranks, _NOTE_TAG, within)

    def send_ack(self, ranks) -> None:
        """Tell the ranks whose notes this rank (rank 0) took that it speaks for them."""
        self._send(numpy.zeros(1, dtype=numpy.uint8), ranks, _ACK_TAG, 0.5)

    def _send(self, data, ranks, tag: int, within: float) -> None:
        requests = [self.notes.Isend(data, dest=r, tag=tag) for r in ranks]
        deadline = time.monotonic() + within
        while requests and not self.MPI.Request.Testall(requests) and time.monotonic() < deadline:
            time.sleep(0.001)

    def take_notes(self) -> list[tuple[int, str, bool]]:
        """The fault notes that have arrived, ``(rank, message, printed)``, in order; none waits."""
        notes, status = [], self.MPI.Status()
        while self.notes.Iprobe(source=self.MPI.ANY_SOURCE, tag=_NOTE_TAG, status=status):
            data = numpy.empty(status.Get_count(self.MPI.BYTE), dtype=numpy.uint8)
            source = status.Get_source()
            self.notes.Recv(data, source=source, tag=_NOTE_TAG)
            note = json.loads(data.tobytes().decode("utf-8", "replace"))
            notes.append((source, str(note.get("message", "")), bool(note.get("printed"))))
        return notes

    def check_notes(self) -> None:
        """Raise :class:`PeerFailed` if another rank sent a fault note (its notes travel with it)."""
        notes = self.take_notes()
        if notes:
            exc = PeerFailed(notes[0][0], notes[0][1])
            exc.notes = notes
            raise exc

    def answered(self, within: float) -> bool:
        """Whether rank 0 answers this rank's note (or sent one of its own) within ``within`` seconds."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if self.notes.Iprobe(source=0, tag=_ACK_TAG) or self.notes.Iprobe(source=0, tag=_NOTE_TAG):
                return True
            time.sleep(0.002)
        return False

    def gone(self) -> list[int]:
        """The ranks on this machine whose process no longer runs (killed, or crashed)."""
        return [r for r, (host, pid) in enumerate(self.peers)
                if host == self.host and r != self.rank and not _running(pid)]


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rpartition(b")")[2].split()[0]
    except (OSError, IndexError):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except OSError:
            return True
        return True
    return state not in (b"Z", b"X")
