"""``--out`` through the real command: a run is never lost, two runs never share a folder, and a
failed write, a closed stdout or stderr, or a lack of memory ends cleanly with a true message.

Everything runs on a tiny dataset of your own (``--dataset idx``) so that each
case costs about a second.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from .cli_helpers import (
    SHORT_RUN,
    TINY_RUN,
    assert_same_run,
    assert_user_error,
    child_env,
    command,
    finished_run,
    metrics,
    one_line,
    start,
    temp_files,
    write_idx_folder,
    xpgrad,
)

pytestmark = pytest.mark.slow  # a subprocess per case, about a second each; CI runs them

RUN = SHORT_RUN


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The data, and a finished 2-epoch run of it (copy it before changing it)."""
    return finished_run(tmp_path_factory.mktemp("run-folder"))


def snapshot(folder) -> dict:
    return {p.name: p.read_bytes() for p in Path(folder).iterdir() if p.is_file()}


def wait_stopped(proc, timeout=120.0) -> None:
    """Wait until ``proc`` stopped itself (XPGRAD_FAULT=...=stop)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        with open(f"/proc/{proc.pid}/stat") as f:
            if f.read().rsplit(")", 1)[1].split()[0] == "T":
                return
        time.sleep(0.02)
    raise AssertionError("the process never reached its stop point")


# ---------------------------------------------------------------------------
# 1. A previous run is never lost


@pytest.mark.parametrize("args", [
    ("train", "--resume", ""), ("train", "--resume", "   "), ("train", "--out", ""),
    ("train", "--data-dir", ""), ("eval", "--checkpoint", ""), ("eval", "--checkpoint", "x", "--data-dir", " "),
])
def test_an_empty_or_blank_path_is_an_error(tmp_path, args):
    assert_user_error(xpgrad(*args, tmp_path=tmp_path, cwd=tmp_path), "expected a path", code=2)
    assert list(tmp_path.iterdir()) == []  # no runs/ folder, nothing written


def test_a_new_run_never_replaces_a_folder_that_holds_one(tiny, tmp_path):
    data, reference = tiny
    out = tmp_path / "out"
    shutil.copytree(reference, out)
    before = snapshot(out)
    line = assert_user_error(xpgrad("train", *RUN, "--data-dir", data, "--out", out, tmp_path=tmp_path))
    assert f"--out {out} already holds a run whose checkpoint is at epoch 2" in line
    assert f"--resume {out / 'checkpoint.npz'}" in line and "--overwrite" in line
    assert snapshot(out) == before


def test_metrics_without_a_checkpoint_are_not_replaced_either(tiny, tmp_path):
    data, reference = tiny
    out = tmp_path / "out"
    out.mkdir()
    shutil.copy(reference / "metrics.jsonl", out)
    line = assert_user_error(xpgrad("train", *RUN, "--data-dir", data, "--out", out, tmp_path=tmp_path))
    assert "holds the metrics.jsonl of an earlier run" in line and "--overwrite" in line
    assert metrics(out) == metrics(reference)


def test_overwrite_replaces_the_run_only_once_training_starts(tiny, tmp_path):
    data, reference = tiny
    out = tmp_path / "out"
    shutil.copytree(reference, out)
    before = snapshot(out)
    # Bad input stops the new run before it trains: the old run is untouched.
    bad = xpgrad("train", *RUN, "--data-dir", tmp_path / "nowhere", "--out", out, "--overwrite", tmp_path=tmp_path)
    assert_user_error(bad, "nowhere")
    assert snapshot(out) == before
    proc = xpgrad("train", *RUN, "--seed", "3", "--data-dir", data, "--out", out, "--overwrite", tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert len(metrics(out)) == 2 and metrics(out) != metrics(reference)  # another seed: another run
    assert temp_files(out) == []


def test_a_second_process_refuses_at_once_and_names_the_first(tiny, tmp_path):
    data, reference = tiny
    out = tmp_path / "out"
    first = start("train", *RUN, "--data-dir", data, "--out", out, tmp_path=tmp_path,
                  env={"XPGRAD_FAULT": "epoch:trained#1=stop"})
    try:
        wait_stopped(first)
        began = time.monotonic()
        second = xpgrad("train", *RUN, "--data-dir", data, "--out", out, "--overwrite", tmp_path=tmp_path)
        line = assert_user_error(second, f"--out {out} is in use by another xpgrad process (pid {first.pid})")
        assert time.monotonic() - began < 30 and "--out" in line
    finally:
        first.send_signal(signal.SIGCONT)
    _, stderr = first.communicate(timeout=120)
    assert first.returncode == 0, stderr
    assert_same_run(out, reference)  # one run's metrics, not two interleaved
    assert not (out / ".xpgrad.lock").exists()


# ---------------------------------------------------------------------------
# 2. A damaged metrics.jsonl


DAMAGE = {
    "truncated line": lambda text: text[: len(text) - 40],
    "empty object": lambda text: "{}\n" + text,
    "not UTF-8": lambda text: text[:30] + "\udcff" + text[30:],
    "rows of another run": lambda text: text.replace('"epoch": 1', '"epoch": 7'),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_metrics_file_is_rebuilt_from_the_checkpoint(tiny, tmp_path, damage):
    data, reference = tiny
    out = tmp_path / "out"
    killed = xpgrad("train", *RUN, "--data-dir", data, "--out", out, tmp_path=tmp_path,
                    env={"XPGRAD_FAULT": "epoch:trained#2=kill"})  # leaves epoch 1's checkpoint and metrics
    assert killed.returncode == -signal.SIGKILL
    path = out / "metrics.jsonl"
    path.write_bytes(DAMAGE[damage](path.read_text()).encode("utf-8", "surrogateescape"))
    # A new run into it is refused in one line (no traceback), and resuming rebuilds the file.
    assert_user_error(xpgrad("train", *RUN, "--data-dir", data, "--out", out, tmp_path=tmp_path), "already holds a run")
    proc = xpgrad("train", *RUN, "--data-dir", data, "--resume", out / "checkpoint.npz", tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert_same_run(out, reference)


@pytest.mark.parametrize("name", ["metrics.jsonl", "checkpoint.npz", "curves.png"])
def test_an_output_that_is_a_folder_or_fifo_stops_the_run_before_it_trains(tiny, tmp_path, name):
    data, _ = tiny
    out = tmp_path / "out"
    out.mkdir()
    (out / name).mkdir()
    line = assert_user_error(xpgrad("train", *RUN, "--data-dir", data, "--out", out, tmp_path=tmp_path))
    assert f"{out / name} is a folder, not a file" in line
    (out / name).rmdir()
    os.mkfifo(out / name)
    line = assert_user_error(xpgrad("train", *RUN, "--data-dir", data, "--out", out, tmp_path=tmp_path))
    assert "is a FIFO (named pipe), not a file" in line
    assert sorted(p.name for p in out.iterdir()) == [name]


# ---------------------------------------------------------------------------
# 3. Failed writes in the middle of a run


@pytest.mark.parametrize("fault, target, reason, kept", [
    ("checkpoint.npz:written#2=ENOSPC", "checkpoint.npz", "No space left on device", 1),
    ("checkpoint.npz:synced#1=EIO", "checkpoint.npz", "Input/output error", None),
    ("metrics.jsonl:written#2=ENOSPC", "metrics.jsonl", "No space left on device", 2),
    ("curves.png:written=ENOSPC", "curves.png", "No space left on device", 2),
])
def test_a_failed_write_is_one_line_naming_the_path_and_what_is_kept(tiny, tmp_path, fault, target, reason, kept):
    data, reference = tiny
    out = tmp_path / "out"
    proc = xpgrad("train", *RUN, "--data-dir", data, "--out", out, tmp_path=tmp_path, env={"XPGRAD_FAULT": fault})
    line = assert_user_error(proc, f"cannot write {out / target} ({reason}")
    assert (f"the checkpoint of epoch {kept} is kept in {out}" if kept else f"no checkpoint is kept in {out}") in line
    assert temp_files(out) == []
    if kept:  # nothing was lost: resuming ends where an uninterrupted run does
        resumed = xpgrad("train", *RUN, "--data-dir", data, "--resume", out / "checkpoint.npz", tmp_path=tmp_path)
        assert resumed.returncode == (0 if kept < 2 else 1), resumed.stderr
        assert_same_run(out, reference)


def test_a_full_disk_for_real(tiny, tmp_path):
    """--out on a tmpfs too small for a second checkpoint beside the first (a mount namespace of its own)."""
    data, reference = tiny
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare (util-linux) to mount a small tmpfs")
    size = (reference / "checkpoint.npz").stat().st_size
    out = tmp_path / "small"
    out.mkdir()
    limit = (size * 3 // 2 // 4096 + 1) * 4096  # one checkpoint and its metrics fit, two checkpoints do not
    script = f"mount -t tmpfs -o size={limit} xpgrad-test {out} && exec \"$@\""
    proc = subprocess.run(["unshare", "--mount", "sh", "-c", script, "sh",
                           *command("train", *RUN, "--data-dir", data, "--out", out / "run")],
                          capture_output=True, text=True, env=child_env(tmp_path), timeout=300)
    if "mount" in proc.stderr and "xpgrad" not in proc.stderr:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
    line = assert_user_error(proc, f"cannot write {out / 'run'}/", "(No space left on device")
    assert f"the checkpoint of epoch 1 is kept in {out / 'run'}" in line and temp_files(out) == []


def test_a_file_size_limit_for_real(tiny, tmp_path):
    """RLIMIT_FSIZE below a checkpoint's size: the kernel refuses the write (EFBIG)."""
    import resource

    data, reference = tiny
    out = tmp_path / "out"
    cap = (reference / "checkpoint.npz").stat().st_size // 2
    proc = xpgrad("train", *RUN, "--data-dir", data, "--out", out, tmp_path=tmp_path,
                  preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (cap, cap)))
    line = assert_user_error(proc, f"cannot write {out / 'checkpoint.npz'} (File too large")
    assert f"no checkpoint is kept in {out}" in line and temp_files(out) == []


@pytest.mark.parametrize("change", ["checkpoint becomes a folder", "--out removed"])
def test_the_world_changing_mid_run_is_one_line(tiny, tmp_path, change):
    data, _ = tiny
    out = tmp_path / "out"
    proc = start("train", *RUN, "--data-dir", data, "--out", out, tmp_path=tmp_path,
                 env={"XPGRAD_FAULT": "epoch:trained#2=stop"})
    try:
        wait_stopped(proc)
        if change == "--out removed":
            shutil.rmtree(out)
        else:
            (out / "checkpoint.npz").unlink()
            (out / "checkpoint.npz").mkdir()
    finally:
        proc.send_signal(signal.SIGCONT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 1
    line = one_line(stderr)
    assert line.startswith(f"xpgrad: error: cannot write {out / 'checkpoint.npz'} (")
    assert f"no checkpoint is kept in {out}" in line
    if change == "--out removed":
        assert f"--out {out} no longer exists" in line
    else:
        assert "Is a directory" in line and temp_files(out) == []


# ---------------------------------------------------------------------------
# 3. Closed stdout and stderr


def test_a_closed_stdout_never_stops_training(tiny, tmp_path):
    data, reference = tiny
    out = tmp_path / "out"
    proc = start("train", *RUN[:-1], "--data-dir", data, "--out", out, tmp_path=tmp_path,
                 env={"PYTHONUNBUFFERED": "1"})
    proc.stdout.readline()
    proc.stdout.close()  # as `| head -1` does
    stderr = proc.stderr.read()
    assert proc.wait(timeout=120) == 0, stderr
    assert "Traceback" not in stderr and "Exception ignored" not in stderr
    assert_same_run(out, reference)


@pytest.mark.parametrize("cmd", ["info", "gradcheck"])
def test_info_and_gradcheck_stop_quietly_when_stdout_closes(tmp_path, cmd):
    proc = start(cmd, tmp_path=tmp_path, env={"PYTHONUNBUFFERED": "1"})
    proc.stdout.readline()
    proc.stdout.close()
    stderr = proc.stderr.read()
    assert proc.wait(timeout=120) == 141, stderr
    assert stderr == ""


def test_a_closed_stderr_loses_the_message_not_the_exit_status(tiny, tmp_path):
    data, reference = tiny
    bad = xpgrad("train", *RUN, "--device", "tpu", tmp_path=tmp_path, preexec_fn=lambda: os.close(2),
                 capture_output=False, stdout=subprocess.PIPE)
    assert bad.returncode == 1 and "error" not in bad.stdout
    out = tmp_path / "out"
    good = xpgrad("train", *RUN[:-1], "--data-dir", data, "--out", out, tmp_path=tmp_path,
                  preexec_fn=lambda: os.close(2), capture_output=False, stdout=subprocess.PIPE)
    assert good.returncode == 0
    assert_same_run(out, reference)


def test_a_stderr_whose_reader_left_does_not_stop_training(tiny, tmp_path):
    data, reference = tiny
    out = tmp_path / "out"
    proc = start("train", *RUN[:-1], "--data-dir", data, "--out", out, tmp_path=tmp_path,
                 stdout=subprocess.DEVNULL)
    proc.stderr.close()  # the progress bars now write into a broken pipe
    assert proc.wait(timeout=120) == 0
    assert_same_run(out, reference)


# ---------------------------------------------------------------------------
# Messages that are true


def test_divergence_before_any_checkpoint_says_none_is_kept(tiny, tmp_path):
    data, _ = tiny
    out = tmp_path / "out"
    proc = xpgrad("train", *RUN, "--optimizer", "sgd", "--lr", "1e30", "--data-dir", data, "--out", out,
                  tmp_path=tmp_path)
    line = assert_user_error(proc, "diverged", "--lr")
    assert f"no checkpoint is kept in {out}" in line and "is kept in" not in line.replace("no checkpoint is kept in", "")


def test_out_of_memory_for_the_model_blames_hidden_not_the_batch(tiny, tmp_path):
    data, _ = tiny
    line = assert_user_error(xpgrad("train", *TINY_RUN[:2], "--hidden", "200000000000", "--data-dir", data,
                                    "--out", tmp_path / "out", tmp_path=tmp_path))
    assert "out of memory setting up the run" in line and "--hidden" in line and "--batch-size" not in line


def test_out_of_memory_for_the_batch_blames_the_batch(tmp_path):
    """A full batch of 4096 rows through 32768 hidden units (0.5 GiB an array) with 150 MiB to spare."""
    data = write_idx_folder(tmp_path / "data", n_train=4096, n_test=64)
    proc = xpgrad("train", "--dataset", "idx", "--data-dir", data, "--hidden", "32768", "--batch-size", "full",
                  "--epochs", "1", "--device", "cpu", "--quiet", "--out", tmp_path / "out", tmp_path=tmp_path,
                  launcher=True, env={"XPGRAD_TEST_ADDRESS_SPACE": str(150 << 20)})
    line = assert_user_error(proc, "out of memory in epoch 1: a batch of 4096 rows")
    assert "use a smaller --batch-size" in line and f"no checkpoint is kept in {tmp_path / 'out'}" in line


def test_an_out_or_lock_that_is_not_what_it_should_be_is_one_line(tiny, tmp_path):
    data, _ = tiny
    assert_user_error(xpgrad("train", *RUN, "--data-dir", data, "--out", "/dev/null", tmp_path=tmp_path),
                      "--out /dev/null is a character device, not a folder")
    out = tmp_path / "out"
    (out / ".xpgrad.lock").mkdir(parents=True)
    assert_user_error(xpgrad("train", *RUN, "--data-dir", data, "--out", out, tmp_path=tmp_path),
                      f"cannot lock --out {out} (.xpgrad.lock: ")


def test_a_run_folder_closed_unused_takes_the_parents_it_made_with_it(tmp_path):
    """`--out runs/a/b` for a run that never writes: runs/, a/ and b/ all go; a parent holding anything stays."""
    from xpgrad.training.runfolder import RunFolder
    RunFolder.open(tmp_path / "runs" / "a" / "b", fresh=True).close()
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "runs").mkdir()
    folder = RunFolder.open(tmp_path / "runs" / "a" / "b", fresh=True)
    (tmp_path / "runs" / "a" / "keep").write_text("another run's")
    folder.close()
    assert sorted(p.name for p in (tmp_path / "runs").rglob("*")) == ["a", "keep"]
    RunFolder.open(tmp_path / "new" / ".." / "other" / "b", fresh=True).close()  # `new` made, and removed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs"]
