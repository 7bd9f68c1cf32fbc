"""
What every command's parser shares: the description from the command's docstring, the note that this is a teaching
tool, and a mistake in the flags told in one line (errors.fail) instead of argparse's usage dump.

    >>> p = command_parser("predict.py", "Classify posts.")      # doc: the command's __doc__
    >>> p.description, p.epilog
    ('Classify posts.', 'This is a research and teaching tool, not a diagnostic instrument.')

make: another parser class, e.g. transformers' HfArgumentParser (its dataclasses go in **options).
"""

import argparse

from errors import fail

NOT_A_DIAGNOSIS = "This is a research and teaching tool, not a diagnostic instrument."


def command_parser(script, doc, make=argparse.ArgumentParser, description=None, **options):
    """The parser of the command `script`: make(description=..., epilog=..., **options), the description the first
    paragraph of `doc` unless given, the epilog NOT_A_DIAGNOSIS unless given; its errors exit with one line that
    says where the help is."""
    options.setdefault("epilog", NOT_A_DIAGNOSIS)
    p = make(description=description or doc.split("\n\n")[0].strip(), **options)
    p.error = lambda message: fail(f"{message} (see python {script} --help)")
    return p
