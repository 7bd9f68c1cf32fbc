"""The two errors every script turns into one line on stderr and exit code 2, without a traceback, and the function
that does it. Nothing heavy is imported, so that the ONNX path can raise and catch them without loading torch."""

import os
import sys


class DataError(ValueError):
    """Bad input data; the message says what is wrong and how to fix it (the CLIs print it as one line)."""


class ModelError(ValueError):
    """A bad model or adapter request, or a saved folder that cannot be used; the message says what is wrong and
    how to fix it."""


def first_line(error):
    return (str(error).strip().splitlines() or [""])[0][:200]


def fail(message):
    """One line on stderr ("error: ..."), exit code 2: how every command line reports bad input. In a multi-process
    train.py run every process stops, but only the first (RANK 0) says why: the others hit the same error, and their
    lines would interleave with its line on the shared stderr."""
    if int(os.environ.get("RANK", "0")) == 0:
        sys.stderr.write(f"error: {message}\n")  # one write: one line, whatever else writes to stderr
        sys.stderr.flush()
    sys.exit(2)
