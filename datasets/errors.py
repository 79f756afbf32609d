"""One error tree for everything a user can fix (bad input, bad options, bad weights).

`run_all.py` and the data commands print a `HarnessError` as one line (its message names the
file or argument and the fix) and exit with its `exit_code`; any other exception is a bug and
keeps its traceback.
"""

from __future__ import annotations


class HarnessError(RuntimeError):
    """A problem the user can fix. The message names the file (or argument) and the fix."""

    exit_code = 1  # what a command exits with when it stops on this error


class DatasetError(HarnessError):
    """Bad or missing input data: a file, a folder layout, a feature shape, a protocol."""


class ConfigError(HarnessError):
    """A bad option or config value: unknown dataset, method, modality, suite, --set key, device."""

    exit_code = 2


class WeightsError(HarnessError):
    """A checkpoint that cannot be used: unreadable, unsafe to unpickle, or with missing/unexpected keys."""
