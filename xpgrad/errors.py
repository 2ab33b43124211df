"""Errors that mean "the user asked for something that cannot work".

The CLI prints these as one line on stderr and exits non-zero without a
traceback; anything else is a bug and keeps its traceback.
"""


class XpgradError(Exception):
    """A user-facing error: the message says what is wrong and how to fix it."""


class DeviceError(XpgradError):
    """The requested device cannot be used (no CuPy, no GPU, bad name, mixed devices)."""


class DataError(XpgradError):
    """A dataset file is missing, corrupt, of the wrong split, or fails its checksum."""


class CheckpointError(XpgradError):
    """A checkpoint is missing, corrupt, or does not match the run it is loaded into."""


class DivergenceError(XpgradError):
    """Training produced NaN or inf."""
