"""What every command line of the harness shares (run_all.py, the data commands, the tools): one console log
handler, the way a command's body is run, and argument types.

Library code logs through module loggers and never prints; a command installs `ConsoleHandler` once, so the
library's info lines go to stdout and its warnings and errors to stderr, as message text only.
"""

from __future__ import annotations

import argparse
import logging
import sys

from datasets.errors import HarnessError


class ConsoleHandler(logging.Handler):
    """The one log handler of a command line: info to stdout, warnings and errors to stderr, message text only
    (the streams are looked up per record, so a redirected sys.stdout is honoured)."""

    def emit(self, record: logging.LogRecord) -> None:
        stream = sys.stderr if record.levelno >= logging.WARNING else sys.stdout
        stream.write(self.format(record) + "\n")
        stream.flush()


def setup_console(verbose: bool = False) -> None:
    """Route every logger to one ConsoleHandler (info and up; debug too with `verbose`)."""
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, ConsoleHandler)]:
        root.removeHandler(handler)
    root.addHandler(ConsoleHandler())
    root.setLevel(logging.DEBUG if verbose else logging.INFO)


def run_command(body) -> int:
    """Run a command's body (import, extraction, a tool) with the console set up: a HarnessError is printed and
    becomes its exit code; an interrupt says how to resume (every data command resumes when run again)."""
    setup_console()
    try:
        body()
    except HarnessError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted; re-run the same command to resume", file=sys.stderr)
        return 130
    return 0


def positive_int(text: str) -> int:
    """argparse type of the commands' counts and rates (--batch, --audio-rate, --batch-rows, ...)."""
    if not text.isdigit() or int(text) <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return int(text)
