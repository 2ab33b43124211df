"""Errors that mean "the user asked for something that cannot work".

The CLI prints these as one line on stderr and exits non-zero without a
traceback; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class XpgradError(Exception):
    """A user-facing error: the message says what is wrong and how to fix it."""


class DeviceError(XpgradError):
    """The requested device cannot be used (no CuPy, no GPU, bad name, mixed devices)."""


class DataError(XpgradError):
    """A dataset file is missing, corrupt, of the wrong split, or fails its checksum."""


class CheckpointError(XpgradError):
    """A checkpoint is missing, corrupt, or does not match the run it is loaded into."""


class GraphCaptureError(XpgradError):
    """A training step cannot be recorded as a CUDA graph (it syncs with the host, or calls what cannot be recorded)."""


class DivergenceError(XpgradError):
    """Training produced NaN or inf."""


class ModelError(XpgradError):
    """A model (``--model``) that cannot be loaded, built, trained or evaluated: the message names its file or
    module, what it did, and what was expected (see :mod:`xpgrad.training.blame`)."""


def one_line(exc: BaseException, limit: int | None = None) -> str:
    """``"TypeName: message"`` on one line (whitespace collapsed), cut to ``limit`` characters."""
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    if "Caused by " in text:  # requests wraps the real reason in a long connection-pool preamble
        text = text.split("Caused by ", 1)[1].rstrip(")")
    if limit is not None and len(text) > limit:
        text = text[: limit - 3] + "..."
    return text
