"""The small mechanisms the reliability rules stand on: atomic writes under signals, stale temp files,
regular files only, signals held while a temp file is created, and guarded output streams."""

from __future__ import annotations

import fcntl
import os
import signal

import pytest

from xpgrad import console, interrupts
from xpgrad.files import (
    NotRegularFileError,
    atomic_write,
    open_regular,
    remove_stale_temps,
)


@pytest.fixture
def handlers():
    """xpgrad's signal handlers for the test, Python's own back afterwards."""
    saved = {s: signal.getsignal(s) for s in interrupts.SIGNALS}
    interrupts.install()
    yield
    for s, handler in saved.items():
        signal.signal(s, handler)


def test_a_signal_inside_atomic_write_removes_the_temp_file_and_keeps_the_old(tmp_path, handlers):
    target = tmp_path / "f.txt"
    target.write_text("old")
    with pytest.raises(interrupts.Interrupted) as info:
        with atomic_write(target, "w") as f:
            f.write("new")
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(1000):  # the handler runs at the next bytecode boundary
                pass
    assert info.value.exit_code == 143 and isinstance(info.value, KeyboardInterrupt)
    assert os.listdir(tmp_path) == ["f.txt"] and target.read_text() == "old"


def test_shielded_holds_a_signal_until_the_block_ends(handlers):
    reached = []
    with pytest.raises(interrupts.Interrupted):
        with interrupts.shielded():
            os.kill(os.getpid(), signal.SIGINT)
            for _ in range(1000):
                pass
            reached.append("end of block")
    assert reached == ["end of block"]


def test_a_second_signal_while_unwinding_is_ignored(handlers):
    with pytest.raises(interrupts.Interrupted) as info:
        try:
            os.kill(os.getpid(), signal.SIGINT)
            for _ in range(1000):
                pass
        finally:
            os.kill(os.getpid(), signal.SIGTERM)  # cleanup goes on undisturbed
            for _ in range(1000):
                pass
    assert info.value.signum == signal.SIGINT


def test_stale_temp_files_are_removed_only_when_no_writer_holds_them(tmp_path):
    stale = tmp_path / ".checkpoint.npz.abcd1234.tmp"
    stale.write_bytes(b"left by a killed process")
    live = tmp_path / ".checkpoint.npz.wxyz9876.tmp"
    live.write_bytes(b"being written")
    other = tmp_path / ".metrics.jsonl.abcd1234.tmp"
    other.write_bytes(b"another file's")
    with open(live, "rb") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        assert remove_stale_temps(tmp_path, "checkpoint.npz") == [stale.name]
    assert sorted(os.listdir(tmp_path)) == sorted([live.name, other.name])


@pytest.mark.parametrize("kind", ["fifo", "folder", "device"])
def test_open_regular_refuses_what_is_not_a_file_without_blocking(tmp_path, kind):
    path = tmp_path / "x"
    if kind == "fifo":
        os.mkfifo(path)  # opening it for reading the usual way would wait for a writer forever
    elif kind == "folder":
        path.mkdir()
    else:
        path = "/dev/null"
    with pytest.raises(NotRegularFileError, match="not a regular file"):
        open_regular(path)


def test_a_guarded_stream_drops_writes_once_its_reader_is_gone(tmp_path):
    read, write = os.pipe()
    stream = os.fdopen(write, "w")
    guarded = console.GuardedStream(stream, write)
    os.close(read)
    guarded.write("lost\n")  # EPIPE: from now on the descriptor points at /dev/null
    assert guarded.lost and guarded.write("more\n") == 5
    guarded.stop = True
    with pytest.raises(console.StdoutClosed):
        guarded.write("info's next line\n")
    stream.close()
