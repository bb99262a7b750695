"""Errors a user can act on.

Every error names the thing that is wrong (a config field, a file, a checkpoint key) and what is allowed,
in one line, so the command line can print it without a traceback.
"""


class QKNormError(Exception):
    """Base class of the errors qknorm raises on purpose."""


class ConfigError(QKNormError, ValueError):
    """An impossible or inconsistent model/training setting; the message names the field and the allowed values."""


class CheckpointError(QKNormError, ValueError):
    """A checkpoint that cannot be read or does not match; the message names the file or key and what is wrong."""


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint file that asks to run code (a pickled class outside the allow-list) or leads outside the
    directory being loaded; never a reason to fall back to an older checkpoint: the load is refused whole."""


class DataError(QKNormError, ValueError):
    """Training data that cannot be used; the message names the path and what is wrong."""
