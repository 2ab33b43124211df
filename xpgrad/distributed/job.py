"""``xpgrad train --distributed``: one rank's life in the job, from joining it to its exit status.

What differs from a single process, and why:

* only rank 0 opens ``--out`` (its lock and rules) and writes there; the
  others get a :class:`Bystander` folder that writes nothing, and an stdout
  that goes nowhere, so the job prints what one process would;
* the ranks on one machine load the data in turn (local rank 0 first), so a
  download happens once and no rank removes another's half-written file;
* the run-defining options must agree on every rank (mpiexec's MPMD form
  could give them different ones);
* every stop has one voice. A rank that stops (an error, a signal of its own)
  sends the others a note; rank 0 speaks for it in one line naming the rank
  and the cause, and the others stop without a word. If rank 0 does not answer
  within 2 s the rank says it itself. Rank 0 alone reports a signal every rank
  received (the launcher passes Ctrl-C and SIGTERM to all; the other ranks
  linger 0.1 s before they leave, so that rank 0 does not take them for gone),
  and names a rank on its machine that vanished without a note (SIGKILL, the
  out-of-memory killer, a crash);
* a rank that stops leaves at once (``os._exit``, after flushing), without
  ``MPI_Finalize``, which would wait for ranks that are gone: the launcher then
  stops the rest of the job.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
import warnings

from .. import interrupts
from ..errors import XpgradError, one_line
from .mpi import PeerFailed
from .parallel import DataParallel

#: How long a rank that stops waits for rank 0 to speak for it before it speaks itself.
ANSWER_WITHIN = 2.0
#: How long a rank other than 0 lingers after a signal, so that rank 0 does not take it for vanished.
LINGER = 0.1


class Bystander:
    """The run folder as a rank other than 0 sees it: the same paths, nothing written, no lock."""

    writes = False

    def __init__(self, path):
        self.path = os.fspath(path)
        self.checkpoint, self.metrics, self.curves = (os.path.join(self.path, name) for name in
                                                      ("checkpoint.npz", "metrics.jsonl", "curves.png"))

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        return False

    def clear_for_new_run(self) -> None:
        pass

    def write_metrics(self, rows) -> None:
        pass

    def kept(self, hint: bool = False) -> str:
        return "rank 0 keeps the run folder"


class Job:
    """This rank of a data-parallel job: its communicator (MPI's until :meth:`start` picks the device's),
    its device, and the Trainer's hooks."""

    def __init__(self, mpi):
        self.comm, self.device, self.parallel, self.folder = mpi, None, None, None
        self.rank, self.size = mpi.rank, mpi.size

    def start(self, device_name: str) -> "Job":
        """Take this rank's device, and the communicator for its arrays (NCCL for a GPU)."""
        from .launch import communicator  # noqa: PLC0415

        self.comm, self.device = communicator(self.comm, device_name)
        self.parallel = DataParallel(self.comm)
        return self

    def words(self) -> str:
        """How the job runs, for the command's messages."""
        return f"{self.size} ranks"

    def open_folder(self, config):
        """A ``RunFolder.open`` for this rank: the real one on rank 0, a :class:`Bystander` elsewhere, once
        every rank has agreed on ``config``."""
        from ..training import RunFolder  # noqa: PLC0415

        configs = self.comm.allgather_object(config.to_dict())
        differ = sorted(k for c in configs for k in c if c[k] != configs[0].get(k))
        if differ:
            raise XpgradError(f"the ranks were started with different options ({', '.join(differ)}); "
                              "give every rank the same ones")

        @contextlib.contextmanager
        def opener(out, **options):
            folder = RunFolder.open(out, **options) if self.rank == 0 else Bystander(out)
            self.folder = folder
            with folder:
                self.comm.barrier("opening --out", timeout=_SETUP_TIMEOUT)
                yield folder

        return opener

    def staged(self, load):
        """``load()`` on this machine's local rank 0 first, then on its other ranks."""
        first = self.comm.local_rank == 0
        result = load() if first else None
        self.comm.barrier("loading the data", timeout=_SETUP_TIMEOUT)
        return result if first else load()


_SETUP_TIMEOUT = 3600.0  # a rank may be downloading the data meanwhile


def run_rank(args, train) -> int:
    """Run ``train(args, job=...)`` as this process's rank of the job; returns 0, or leaves with the exit status."""
    from .launch import join  # noqa: PLC0415

    job = Job(join())
    if job.rank != 0:  # one voice: rank 0's output and warnings are the job's
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - for the life of the process
        warnings.simplefilter("ignore")
    code = _stop_code(job, lambda: train(args, job=job.start(args.device)))
    if code:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        interrupts.settle()
        os._exit(code)
    return 0


def _stop_code(job, train) -> int:
    """``train()``'s status; a stop is reported as the module docstring says."""
    try:
        return train()
    except PeerFailed as exc:
        interrupts.settle()  # from here on this rank only leaves: a late signal must not add a line
        return _speak_for(job, exc.notes)
    except KeyboardInterrupt as exc:
        interrupts.settle()
        code = getattr(exc, "exit_code", 130)
        name = str(exc) if isinstance(exc, interrupts.Interrupted) else "SIGINT"
        if job.rank != 0:
            time.sleep(LINGER)
            job.comm.send_note(f"interrupted by {name}")
            return code
        return _rank0_interrupted(job, name, getattr(exc, "detail", None), code)
    except XpgradError as exc:
        interrupts.settle()
        return _stop(job, str(exc))
    except MemoryError as exc:
        interrupts.settle()
        return _stop(job, f"out of memory ({one_line(exc, 200)})")
    except Exception as exc:  # noqa: BLE001 - a rank's bug must still stop the job in one line
        interrupts.settle()
        if os.environ.get("XPGRAD_DEBUG") == "1":
            import traceback  # noqa: PLC0415

            traceback.print_exc()
        return _stop(job, one_line(exc, 300))


def _stop(job, message: str) -> int:
    """This rank stops on its own: rank 0 says why; another rank asks rank 0 to, or says it itself."""
    if job.rank == 0:
        notes = job.comm.take_notes()
        job.comm.send_ack([r for r, _, _ in notes])
        _say(f"xpgrad: error: {message}" if job.size == 1 else f"xpgrad: error: rank 0 of {job.size}: {message}")
        job.comm.send_note(message, printed=True)
        return 1
    job.comm.send_note(message)
    if not job.comm.answered(ANSWER_WITHIN):
        _say(f"xpgrad: error: rank {job.rank} of {job.size} ({_where(job, job.rank)}): {message}")
        job.comm.send_note(message, printed=True, to=[0])
    return 1


def _speak_for(job, notes) -> int:
    """Another rank stopped and sent ``notes``: rank 0 says so once; the others stop without a word."""
    if job.rank != 0:
        return 1
    notes = notes + job.comm.take_notes()
    job.comm.send_ack(sorted({r for r, _, _ in notes}))
    unsaid = [(r, m) for r, m, printed in notes if not printed and not any(p and s == r for s, _, p in notes)]
    if unsaid:
        rank, message = unsaid[0]
        _say(f"xpgrad: error: rank {rank} of {job.size} ({_where(job, rank)}) stopped: {message}; {_kept(job)}")
    return 1


def _rank0_interrupted(job, name: str, detail, code: int) -> int:
    notes = job.comm.take_notes()
    if any(not _signal_note(m) for _, m, _ in notes):  # another rank failed first: say that instead
        return _speak_for(job, [n for n in notes if not _signal_note(n[1])])
    job.comm.send_ack(sorted({r for r, _, _ in notes}))
    gone = job.comm.gone()
    if gone:
        rank = gone[0]
        _say(f"xpgrad: error: rank {rank} of {job.size} ({_where(job, rank)}) ended without a word: killed (SIGKILL, "
             f"the out-of-memory killer) or crashed; the launcher stopped the other ranks; {_kept(job)}")
        return 1
    _say(f"xpgrad: interrupted by {name}" + (f"; {detail}" if detail else ""))
    return code


def _signal_note(message: str) -> bool:
    """Whether a note only says its rank was interrupted by a signal (as every rank is, by the launcher)."""
    return message.startswith("interrupted by SIG")


def _kept(job) -> str:
    return job.folder.kept(hint=True) if job.folder is not None else "nothing was written"


def _where(job, rank: int) -> str:
    host, pid = job.comm.peers[rank]
    return f"pid {pid} on {host}"


def _say(line: str) -> None:
    with contextlib.suppress(Exception):
        print(line, file=sys.stderr, flush=True)
