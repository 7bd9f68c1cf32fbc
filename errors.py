"""The two errors every script turns into one line on stderr and exit code 2, without a traceback, and the function
that does it; and the check of a saved JSON record against its schema. Nothing heavy is imported, so that the ONNX
path can raise and catch them without loading torch."""

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


def check_record(record, schema, path, remedy):
    """A JSON record read from `path` (training.json, onnx.json) holds the keys of `schema` ({key: type}) with those
    types (a bool is no int); ModelError, one line ending with `remedy` (what to do about it), where it does not."""
    if not isinstance(record, dict):
        raise ModelError(f"{path} is damaged (not a JSON object); {remedy}")
    for key, kind in schema.items():
        if key not in record:
            raise ModelError(f"{path} has no '{key}' (written by an older or damaged run); {remedy}")
        if not isinstance(record[key], kind) or isinstance(record[key], bool):
            raise ModelError(f"{path} is damaged ('{key}' should be a {kind.__name__}); {remedy}")
