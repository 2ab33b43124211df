"""Untrusted files through the real command: read with bounds, never hanging, every malformed one a single line.

Checkpoints (``eval --checkpoint`` and ``train --resume``) and data files: a
FIFO or a device instead of a file, a .gz that inflates to 1 GiB, a checkpoint
with a 2 GiB member nobody asked for, a member whose header lies, compressed
members, configs of the wrong shape, types or range (refused by the same rules
as the command line), parameters the model does not have, and NaN weights.
(Checkpoints of earlier formats: tests/test_checkpoint_formats.py.)
"""

from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import struct
import zipfile
import zlib

import numpy as np
import pytest

from .cli_helpers import (
    SHORT_RUN,
    assert_user_error,
    finished_run,
    xpgrad,
    xpgrad_peak_memory,
)

pytestmark = pytest.mark.slow  # a subprocess per case, about a second each; CI runs them

RUN = SHORT_RUN
# What a tiny run costs (Python, NumPy, CuPy's import); far below the 1 GiB a bomb would take.
MEMORY_BOUND_MIB = 400


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The data, and a finished run of it."""
    return finished_run(tmp_path_factory.mktemp("hostile"))


def arrays_of(path) -> dict:
    with np.load(path, allow_pickle=False) as ckpt:
        return {k: ckpt[k] for k in ckpt.files}


class both_commands:
    """``eval --checkpoint PATH`` and ``train --resume PATH`` (each run only when asked for)."""

    def __init__(self, path, data, tmp_path):
        self.args = [("eval", "--checkpoint", path, "--device", "cpu", "--data-dir", data),
                     ("train", "--resume", path, "--data-dir", data, "--out", tmp_path / "out", "--quiet")]
        self.tmp_path = tmp_path

    def __getitem__(self, i):
        return xpgrad(*self.args[i], tmp_path=self.tmp_path)


def zero_deflate(size: int, prefix: bytes = b"") -> tuple[bytes, int]:
    """A raw deflate stream of ``prefix`` then ``size`` zero bytes (a multiple of 16 MiB), and its CRC-32.

    Made in a moment: after a full flush a compressor starts over, so one
    16 MiB block's compressed bytes can simply be repeated.
    """
    chunk = bytes(16 << 20)
    head, body = zlib.compressobj(9, zlib.DEFLATED, -15), zlib.compressobj(9, zlib.DEFLATED, -15)
    start = head.compress(prefix) + head.flush(zlib.Z_FULL_FLUSH) if prefix else b""
    block = body.compress(chunk) + body.flush(zlib.Z_FULL_FLUSH)
    crc = zlib.crc32(prefix)
    for _ in range(size // len(chunk)):
        crc = zlib.crc32(chunk, crc)
    return start + block * (size // len(chunk)) + b"\x03\x00", crc  # 03 00: an empty final block


def gzip_bomb(header: bytes, size: int) -> bytes:
    """A valid gzip file of ``header`` followed by ``size`` zero bytes (about 1 MB per GiB)."""
    deflated, crc = zero_deflate(size, header)
    return b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff" + deflated + struct.pack("<II", crc, (len(header) + size) & 0xFFFFFFFF)


# ---------------------------------------------------------------------------
# Not a regular file


@pytest.mark.parametrize("kind", ["fifo", "device", "folder"])
def test_a_checkpoint_that_is_not_a_file_is_refused_at_once(tiny, tmp_path, kind):
    data, _ = tiny
    path = tmp_path / "checkpoint.npz"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "device":
        path.symlink_to("/dev/zero")
    else:
        path.mkdir()
    words = {"fifo": "is a FIFO (named pipe)", "device": "is a character device", "folder": "is a folder"}[kind]
    for proc in both_commands(path, data, tmp_path):
        assert_user_error(proc, f"checkpoint {path} {words}, not a regular file")


@pytest.mark.parametrize("kind", ["fifo", "device"])
@pytest.mark.parametrize("dataset", ["idx", "mnist"])
def test_a_data_file_that_is_not_a_file_is_refused_at_once(tiny, tmp_path, kind, dataset):
    data, _ = tiny
    mine = tmp_path / "mine"
    if dataset == "idx":
        shutil.copytree(data, mine)
        target = mine / "t10k-labels-idx1-ubyte.gz"
        target.unlink()
    else:  # the first file MNIST reads
        mine.mkdir()
        target = mine / "train-images-idx3-ubyte.gz"
    if kind == "fifo":
        os.mkfifo(target)
    else:
        target.symlink_to("/dev/zero")
    words = "is a FIFO (named pipe), not a regular file" if kind == "fifo" else "is a character device, not a regular"
    proc = xpgrad("train", *RUN[2:], "--dataset", dataset, "--data-dir", mine, "--out", tmp_path / "out",
                  tmp_path=tmp_path)
    assert_user_error(proc, f"{target}: cannot read it ({words}")


# ---------------------------------------------------------------------------
# Bounded reads


@pytest.mark.parametrize("dataset", ["mnist", "idx"])
def test_a_gzip_that_inflates_to_a_gibibyte_is_stopped_at_the_first_byte_past_its_size(tiny, tmp_path, dataset):
    """About 1 MB of gzip: a valid IDX header, then 1 GiB of zeros. MNIST's size comes from the
    registry (and the header agrees), your own data's from the header alone."""
    data, _ = tiny
    mine = tmp_path / "mine"
    if dataset == "mnist":  # the first file MNIST reads: 60000 images of 28x28 announced, 1 GiB behind them
        mine.mkdir()
        target = mine / "train-images-idx3-ubyte.gz"
        header = b"".join(n.to_bytes(4, "big") for n in (0x0803, 60000, 28, 28))
    else:  # 64 test labels announced
        shutil.copytree(data, mine)
        target = mine / "t10k-labels-idx1-ubyte.gz"
        header = b"".join(n.to_bytes(4, "big") for n in (0x0801, 64))
    target.write_bytes(gzip_bomb(header, 1 << 30))
    assert target.stat().st_size < (2 << 20)
    proc, peak = xpgrad_peak_memory("train", *RUN[2:], "--dataset", dataset, "--data-dir", mine,
                                    "--out", tmp_path / "out", tmp_path=tmp_path)
    assert_user_error(proc, f"{target}: trailing bytes: more than the")
    assert peak < MEMORY_BOUND_MIB, f"peak memory {peak} MiB"


def test_a_checkpoint_member_nobody_asked_for_is_never_read(tiny, tmp_path):
    """2 GiB of zeros, deflated to 2 MB, beside a good checkpoint: ignored, at no cost."""
    data, reference = tiny
    path = tmp_path / "checkpoint.npz"
    shutil.copy(reference / "checkpoint.npz", path)
    raw, crc = zero_deflate(2 << 30)
    with zipfile.ZipFile(path, "a") as zf:
        info = zipfile.ZipInfo("unused.npy", date_time=(2026, 1, 1, 0, 0, 0))
        info.compress_type = zipfile.ZIP_DEFLATED
        info.file_size, info.compress_size, info.CRC = 2 << 30, len(raw), crc
        zf.fp.seek(zf.start_dir)
        info.header_offset = zf.start_dir
        zf.fp.write(info.FileHeader(zip64=True))
        zf.fp.write(raw)
        zf.start_dir = zf.fp.tell()
        zf.filelist.append(info)
        zf.NameToInfo[info.filename] = info
        zf._didModify = True
    with zipfile.ZipFile(path) as zf:  # a valid zip whose member really inflates to 2 GiB
        assert zf.getinfo("unused.npy").file_size == 2 << 30 and zf.open("unused.npy").read(4) == bytes(4)
    proc, peak = xpgrad_peak_memory("eval", "--checkpoint", path, "--device", "cpu", "--data-dir", data,
                                    tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert peak < MEMORY_BOUND_MIB, f"peak memory {peak} MiB"


def npy_claiming(shape, dtype="<f4", payload=b"\0" * 64) -> bytes:
    f = io.BytesIO()
    np.lib.format.write_array_header_1_0(f, {"descr": dtype, "fortran_order": False, "shape": shape})
    return f.getvalue() + payload


def rewrite(src, dst, replace=None, drop=(), compress=False):
    """A copy of checkpoint ``src`` with members replaced (name -> .npy bytes) or dropped."""
    replace = replace or {}
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED) as zout:
        for name in zin.namelist():
            if name[:-4] in drop:
                continue
            zout.writestr(name, replace.get(name[:-4], zin.read(name)))
        for key, blob in replace.items():
            if f"{key}.npy" not in zin.namelist():
                zout.writestr(f"{key}.npy", blob)


def npy(value) -> bytes:
    f = io.BytesIO()
    np.save(f, np.asarray(value), allow_pickle=False)
    return f.getvalue()


def with_config(reference, **changes) -> dict:
    config = json.loads(str(arrays_of(reference / "checkpoint.npz")["config"]))
    config.update(changes)
    return {"config": npy(json.dumps(config))}


CASES = {
    # name: (how the good checkpoint is changed, words the one line must hold)
    "a plain .npy": (lambda ref, dst: dst.write_bytes(npy(np.zeros(3))), "corrupt or not an xpgrad checkpoint"),
    "a pickle": (lambda ref, dst: dst.write_bytes(b"\x80\x04\x95" + b"x" * 40), "corrupt or not an xpgrad checkpoint"),
    "config is a list": (lambda ref, dst: rewrite(ref, dst, {"config": npy("[1, 2]")}), "config is list, not a dict"),
    "config is a number": (lambda ref, dst: rewrite(ref, dst, {"config": npy("7")}), "config is int, not a dict"),
    "config not JSON": (lambda ref, dst: rewrite(ref, dst, {"config": npy("{oops")}), "JSONDecodeError"),
    "config nested deep": (lambda ref, dst: rewrite(ref, dst, {"config": npy("[" * 100000)}), "corrupt"),
    "member header lies": (lambda ref, dst: rewrite(ref, dst, {"model/1.weight": npy_claiming((10 ** 9, 8))}),
                           "but its header (1000000000, 8) float32 says otherwise"),
    "members compressed": (lambda ref, dst: rewrite(ref, dst, compress=True), "is compressed"),
    "a parameter missing": (lambda ref, dst: rewrite(ref, dst, drop=("model/3.bias",)),
                            "does not match this model: this model has 3.bias that the checkpoint lacks"),
    "a parameter too many": (lambda ref, dst: rewrite(ref, dst, {"model/5.weight": npy(np.zeros((4, 4), "f4"))}),
                             "the checkpoint has 5.weight that this model lacks"),
    "a weight of another shape": (lambda ref, dst: rewrite(ref, dst, {"model/1.weight": npy(np.zeros((64, 9), "f4"))}),
                                  "1.weight is (64, 9) float32, this model needs (64, 8) float32"),
    "weights of another dtype": (lambda ref, dst: rewrite(ref, dst, {"model/3.weight": npy(np.zeros((8, 4)))}),
                                 "3.weight is (8, 4) float64, this model needs (8, 4) float32"),
    "NaN weights": (lambda ref, dst: rewrite(ref, dst, {"model/3.weight": npy(np.full((8, 4), np.nan, "f4"))}),
                    "holds NaN or infinite values in model/3.weight"),
    "inf in the optimizer": (lambda ref, dst: rewrite(ref, dst, {"optim/v/1.bias": npy(np.full(
        arrays_of(ref)["optim/v/1.bias"].shape, np.inf, "f4"))}), "holds NaN or infinite values in optim/v/1.bias"),
    "optimizer state of another model": (lambda ref, dst: rewrite(ref, dst, drop=("optim/m/3.bias",)),
                                         "does not match this optimizer: this optimizer has m/3.bias"),
    "a model file's checksum without its file": (lambda ref, dst: rewrite(ref, dst, with_config(
        ref.parent, model="/nonexistent/net.py:Net")), "model file /nonexistent/net.py, which checkpoint"),
    "object array": (lambda ref, dst: rewrite(ref, dst, {"epoch": npy_claiming((), "|O", b"")}), "corrupt"),
    "epoch not a number": (lambda ref, dst: rewrite(ref, dst, {"epoch": npy("two")}), "epoch is not a whole number"),
    "rng state garbage": (lambda ref, dst: rewrite(ref, dst, {"rng_state": npy('{"bit_generator": "MT19937"}')}),
                          "rng_state is not the state of NumPy's PCG64"),
    "metrics past the epoch": (lambda ref, dst: rewrite(ref, dst, {"metrics": npy(json.dumps([dict(
        json.loads(str(arrays_of(ref)["metrics"]))[0], epoch=5)]))}), "a row for epoch 5 out of order, or past its epoch 2"),
    "metrics not rows": (lambda ref, dst: rewrite(ref, dst, {"metrics": npy('[{"epoch": 1}]')}), "is malformed"),
    "a newer format": (lambda ref, dst: rewrite(ref, dst, {"format": npy(4)}), "has format 4"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_malformed_checkpoint_is_one_line(tiny, tmp_path, case):
    data, reference = tiny
    path = tmp_path / "checkpoint.npz"
    change, words = CASES[case]
    change(reference / "checkpoint.npz", path)
    for proc in both_commands(path, data, tmp_path):
        assert_user_error(proc, f"checkpoint {path}", words)
    assert not (tmp_path / "out").exists()


# The command line refuses each of these; a checkpoint holding one is refused by the same rule.
BAD_FIELDS = [("epochs", 0), ("epochs", 2.5), ("batch_size", -5), ("lr", -0.1), ("lr", "fast"), ("lr", float("nan")),
              ("dtype", "float16"), ("hidden", [0]), ("hidden", "100"), ("hidden", []), ("seed", -1),
              ("optimizer", "rmsprop"), ("dataset", "cifar10"), ("recipe", "mine"), ("input_bias", "yes"),
              ("momentum", 1.5), ("epochs", True)]


@pytest.mark.parametrize("field, value", BAD_FIELDS, ids=[f"{f}={v!r}" for f, v in BAD_FIELDS])
def test_a_checkpoint_config_is_checked_by_the_command_lines_rules(tiny, tmp_path, field, value):
    data, reference = tiny
    path = tmp_path / "checkpoint.npz"
    rewrite(reference / "checkpoint.npz", path, with_config(reference, **{field: value}))
    # eval for half the cases, train --resume for the other half: both read checkpoints the same way.
    proc = both_commands(path, data, tmp_path)[BAD_FIELDS.index((field, value)) % 2]
    assert_user_error(proc, f"checkpoint {path} is not a valid xpgrad checkpoint: config field {field}: ")


@pytest.mark.parametrize("flag, text, words", [
    ("--epochs", "0", "must be at least 1"), ("--batch-size", "-5", "must be at least 1"),
    ("--lr", "nan", "must be a positive number"), ("--seed", "-1", "must not be negative"),
    ("--hidden", "0", "must be at least 1"),
])
def test_the_same_rules_on_the_command_line(tmp_path, flag, text, words):
    assert_user_error(xpgrad("train", flag, text, tmp_path=tmp_path), f"argument {flag}: {words}", code=2)


def test_a_gzip_checkpoint_or_other_bytes_named_npz(tiny, tmp_path):
    data, reference = tiny
    path = tmp_path / "checkpoint.npz"
    path.write_bytes(gzip.compress((reference / "checkpoint.npz").read_bytes()))
    for proc in both_commands(path, data, tmp_path):
        assert_user_error(proc, "corrupt or not an xpgrad checkpoint")
