"""A run stopped at any instant loses nothing, and a signal ends it with one line and the shell's exit code.

Each case stops the real command (a subprocess) at one instant, checks what is
left, then finishes the run (``--resume`` when a checkpoint was kept, the same
command again when not) and checks that it ends bit for bit where an
uninterrupted run ends: the same metrics, parameters and optimizer state.

* At every write: ``XPGRAD_FAULT`` (xpgrad/faults.py) stops the process at each
  named point of each epoch: before the epoch's checkpoint is written, inside
  its atomic write (temp file opened, written, synced, renamed), between the
  checkpoint and the metrics, inside the metrics' write, and while the curves
  are drawn. SIGKILL at all of them (nothing can clean up), SIGINT, SIGTERM
  and SIGHUP at a spread of them.
* At stepped delays: real signals from outside, from start-up to the end.
"""

from __future__ import annotations

import re
import signal
import time

import pytest

from xpgrad.checkpoint import load_checkpoint, peek_epoch

from .cli_helpers import (
    SHORT_RUN,
    assert_same_run,
    finished_run,
    metrics,
    one_line,
    start,
    temp_files,
    xpgrad,
)

pytestmark = pytest.mark.slow

# 2 epochs: a first one, with nothing before it, and a last one, after which the curves are drawn.
RUN = SHORT_RUN
STAGES = ("opened", "written", "synced", "replaced")
POINTS = [
    *(p for epoch in (1, 2) for p in (
        f"epoch:trained#{epoch}",
        *(f"checkpoint.npz:{stage}#{epoch}" for stage in STAGES),
        f"epoch:saved#{epoch}",
        *(f"metrics.jsonl:{stage}#{epoch}" for stage in STAGES),
    )),
    "curves.png:opened", "curves.png:synced", "curves.png:replaced",
]
EXIT = {"int": 130, "term": 143, "hup": 129}
NAMES = {"int": "SIGINT", "term": "SIGTERM", "hup": "SIGHUP"}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The data, and the same run done without interruption."""
    return finished_run(tmp_path_factory.mktemp("tiny-run"))


def finish(out, data, tmp_path):
    """Finish a stopped run as a user would; it must end where the uninterrupted run did."""
    checkpoint = out / "checkpoint.npz"
    if checkpoint.exists():
        proc = xpgrad("train", *RUN, "--data-dir", data, "--resume", checkpoint, tmp_path=tmp_path)
        if peek_epoch(checkpoint) == 2 and proc.returncode != 0:  # stopped after its last checkpoint
            assert "nothing to train" in one_line(proc.stderr)
    else:
        proc = xpgrad("train", *RUN, "--data-dir", data, "--out", out, tmp_path=tmp_path)
        assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert temp_files(out) == [] and not (out / ".xpgrad.lock").exists()
    assert (out / "curves.png").exists()
    return proc


def check_kept(line: str, out) -> None:
    """The interruption's message says what is really on disk."""
    checkpoint = out / "checkpoint.npz"
    if checkpoint.exists():
        assert f"the checkpoint of epoch {peek_epoch(checkpoint)} is kept in {out}" in line, line
        assert f"--resume {checkpoint}" in line
    else:
        assert f"no checkpoint is kept in {out}" in line, line


@pytest.mark.parametrize("point", POINTS)
def test_sigkill_at_every_write_loses_nothing(tiny, tmp_path, point):
    data, reference = tiny
    out = tmp_path / "out"
    proc = xpgrad("train", *RUN, "--data-dir", data, "--out", out, tmp_path=tmp_path,
                  env={"XPGRAD_FAULT": f"{point}=kill"})
    assert proc.returncode == -signal.SIGKILL, f"never reached {point}: {proc.stderr}"
    finish(out, data, tmp_path)
    assert_same_run(out, reference)


# Each signal at a third of the points, so that together they cover every kind of instant.
SIGNAL_CASES = [(POINTS[i], action) for i, action in
                ((i, ("int", "term", "hup")[i % 3]) for i in range(len(POINTS)))]


@pytest.mark.parametrize("point, action", SIGNAL_CASES)
def test_a_signal_at_a_write_ends_cleanly_and_keeps_a_consistent_folder(tiny, tmp_path, point, action):
    """One line, the shell's exit code, no temp file, and a folder whose checkpoint holds the
    uninterrupted run's history so far (resuming from such folders is what the SIGKILL cases check)."""
    data, reference = tiny
    out = tmp_path / "out"
    proc = xpgrad("train", *RUN, "--data-dir", data, "--out", out, tmp_path=tmp_path,
                  env={"XPGRAD_FAULT": f"{point}={action}"})
    line = one_line(proc.stderr)
    assert proc.returncode == EXIT[action], proc.stderr
    assert line.startswith(f"xpgrad: interrupted by {NAMES[action]}; "), line
    assert temp_files(out) == [] and not (out / ".xpgrad.lock").exists()
    check_kept(line, out)
    if (out / "checkpoint.npz").exists():
        with load_checkpoint(out / "checkpoint.npz") as checkpoint:
            kept = checkpoint.metrics
        assert [{k: v for k, v in row.items() if k != "seconds"} for row in kept] == metrics(reference)[:len(kept)]
        assert metrics(out) in (metrics(reference)[:len(kept)], metrics(reference)[:len(kept) - 1])


LONGER = ("--dataset", "idx", "--hidden", "8", "--epochs", "6", "--batch-size", "8", "--device", "cpu", "--quiet")


@pytest.fixture(scope="module")
def longer(tiny, tmp_path_factory):
    data, _ = tiny
    base = tmp_path_factory.mktemp("longer-run")
    reference = base / "reference"
    proc = xpgrad("train", *LONGER, "--data-dir", data, "--out", reference, tmp_path=base)
    assert proc.returncode == 0, proc.stderr
    return data, reference


DELAYS = [0.15 + 0.14 * i for i in range(10)]  # start-up to past the end of a ~1 s run


@pytest.mark.parametrize("delay", DELAYS, ids=lambda d: f"{d:.2f}s")
def test_signals_at_stepped_delays(longer, tmp_path, delay):
    """From start-up (imports, data) through training and writing to the end: any instant is clean."""
    data, reference = longer
    out = tmp_path / "out"
    action = ("int", "term", "hup")[DELAYS.index(delay) % 3]
    proc = start("train", *LONGER, "--data-dir", data, "--out", out, tmp_path=tmp_path)
    time.sleep(delay)
    proc.send_signal({"int": signal.SIGINT, "term": signal.SIGTERM, "hup": signal.SIGHUP}[action])
    _, stderr = proc.communicate(timeout=120)
    if proc.returncode == 0:  # done before the signal came, or it came once the work was done
        assert stderr == "", stderr
    else:
        assert proc.returncode == EXIT[action], stderr
        line = one_line(stderr)
        assert re.match(rf"^xpgrad: interrupted by {NAMES[action]}(; |$)", line), line
        assert temp_files(out) == [] and not (out / ".xpgrad.lock").exists()
        if "kept" in line:
            check_kept(line, out)
        if (out / "checkpoint.npz").exists():
            finished = xpgrad("train", *LONGER, "--data-dir", data, "--resume", out / "checkpoint.npz",
                              tmp_path=tmp_path)
        else:
            finished = xpgrad("train", *LONGER, "--data-dir", data, "--out", out, tmp_path=tmp_path)
        assert "Traceback" not in finished.stderr
        if finished.returncode != 0:  # stopped after the last checkpoint: nothing left to train
            assert "nothing to train" in one_line(finished.stderr)
    assert temp_files(out) == []
    assert_same_run(out, reference)
