"""One error tree for everything a user can fix (bad input, bad options, bad weights), and the runner of
the data commands.

`run_all.py` and the data commands print a `HarnessError` as one line (its message names the
file or argument and the fix) and exit with its `exit_code`; any other exception is a bug and
keeps its traceback.
"""
from __future__ import annotations

import argparse
import logging
import sys


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


class _CommandLog(logging.Handler):
    """A data command's console: the library's info to stdout, warnings and errors to stderr, message text only."""

    def emit(self, record: logging.LogRecord) -> None:
        stream = sys.stderr if record.levelno >= logging.WARNING else sys.stdout
        stream.write(self.format(record) + "\n")
        stream.flush()


def run_command(body) -> int:
    """Run a command's body (import, extraction, a tool): a HarnessError is printed and becomes its exit
    code; an interrupt says how to resume (every data command resumes when run again). What the library
    logs (`datasets.*` loggers, info and up) is shown on the console while the body runs."""
    handler = _CommandLog()
    # `datasets.*`, and the command's own module, which `python -m` runs as `__main__`
    loggers = [logging.getLogger("datasets"), logging.getLogger("__main__")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.addHandler(handler)
        if logger.getEffectiveLevel() > logging.INFO:
            logger.setLevel(logging.INFO)
    try:
        body()
    except HarnessError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted; re-run the same command to resume", file=sys.stderr)
        return 130
    finally:
        for logger, level in zip(loggers, levels):
            logger.removeHandler(handler)
            logger.setLevel(level)
    return 0


def positive_int(text: str) -> int:
    """argparse type of the commands' counts and rates (--batch, --audio-rate, --batch-rows, ...)."""
    if not text.isdigit() or int(text) <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return int(text)
