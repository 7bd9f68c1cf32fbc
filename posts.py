"""
Posts in files, without torch or transformers (so that the ONNX path stays fast): read a table
(.csv/.tsv/.json/.jsonl/.parquet, or a Hub data set: load_table), find its text column, normalise texts as the
depression data set was cleaned, and cut length-sorted batches. pandas and datasets are imported only when needed.

    >>> import pandas as pd
    >>> find_column(pd.DataFrame(columns=["id", "clean_text"]), None, TEXT_COLUMNS, "text")
    'clean_text'
    >>> normalize_text("I'm brand-new here!")
    'i m brand new here'
    >>> sorted_batches([5, 1, 9, 2], batch_size=2)    # post indices, by length
    [[1, 3], [0, 2]]
"""

import re
from pathlib import Path

from errors import DataError

TEXT_COLUMNS = ("text", "clean_text")


def read_json_table(path):
    import pandas as pd

    return pd.read_json(path, lines=Path(path).read_text()[:1] != "[")


def pandas_reader(name, **options):
    """pandas.<name>(path, **options), with pandas imported on the first call."""

    def read(path):
        import pandas as pd

        return getattr(pd, name)(path, **options)

    return read


LOCAL_READERS = {
    ".csv": pandas_reader("read_csv"),
    ".tsv": pandas_reader("read_csv", sep="\t"),
    ".json": read_json_table,
    ".jsonl": pandas_reader("read_json", lines=True),
    ".parquet": pandas_reader("read_parquet"),
}


def load_table(source):
    """A local file (by its suffix) or a Hugging Face Hub data set id -> pandas DataFrame."""
    path = Path(source)
    suffix = path.suffix.lower()
    if suffix in LOCAL_READERS or path.exists():
        if not path.is_file():
            raise DataError(
                f"data file {source} not found; pass --data with the path of a "
                f".csv/.tsv/.json/.jsonl/.parquet file or a Hub data set id"
            )
        if suffix not in LOCAL_READERS:
            raise DataError(f"cannot read {source}: use a {'/'.join(LOCAL_READERS)} file")
        try:
            return LOCAL_READERS[suffix](path)
        except Exception as e:  # pandas raises many kinds; all mean "unreadable"
            raise DataError(
                f"cannot read {source} as {suffix[1:]} ({type(e).__name__}: {str(e).splitlines()[0]}); "
                f"check the file's format"
            ) from None
    try:
        from datasets import load_dataset

        return load_dataset(source, split="train").to_pandas()
    except Exception as e:
        raise DataError(
            f"cannot load data set '{source}' from the Hugging Face Hub ({type(e).__name__}); "
            f"offline, pass --data with a local file or set DEPRESSION_DATA to one"
        ) from None


def normalize_text(text):
    """Lower-case, every character but a-z and 0-9 replaced by a space, spaces collapsed: how the depression data set's
    texts were cleaned ("I'm brand-new here!" -> "i m brand new here")."""
    return " ".join(re.sub(r"[^a-z0-9]+", " ", text.lower()).split())


def find_column(df, given, candidates, kind):
    """The column named `given`, else the first of `candidates` present."""
    if given:
        if given not in df.columns:
            raise DataError(f"no {kind} column '{given}' in the data (columns: {', '.join(map(str, df.columns))})")
        return given
    for name in candidates:
        if name in df.columns:
            return name
    raise DataError(
        f"no {kind} column found (looked for {', '.join(candidates)}; columns: "
        f"{', '.join(map(str, df.columns))}); name it with --{kind}-column"
    )


def sorted_batches(lengths, batch_size, by_length=True):
    """Indices sorted by length, cut into batches: the least padding, for evaluation and prediction. by_length=False:
    in the given order (batches of mixed lengths, as a check that a post's answer does not depend on its batch)."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i]) if by_length else list(range(len(lengths)))
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
