"""
Classify posts with an adapter (or a fully fine-tuned model) saved by train.py.

    python predict.py "i can't get out of bed anymore and nothing feels worth it"
    python predict.py --file posts.txt            # one post per line; or a .csv/.jsonl with a text column
    cat posts.txt | python predict.py -           # standard input, one post per line
    python predict.py --json "some text"          # one JSON object per line
    python predict.py --adapter adapters/depression-houlsby "some text"
    python predict.py --adapter adapters/a adapters/b adapters/c "some text"  # every adapter, one loaded base model
    python predict.py --adapter your-name/depression-pfeiffer "some text"     # a Hub id (org/name[@revision])
    python predict.py --file posts.csv --output results.jsonl  # streams: any number of posts, kept as they come
    python predict.py --backend torch "some text"  # PyTorch even where export.py left a faster ONNX model

This is a research and teaching tool, not a diagnostic instrument.
"""

import csv
import itertools
import json
import os
import sys
from pathlib import Path

import posts
from errors import DataError, ModelError, fail
from textclassifier import cli, inference, sharing

DEFAULT_ADAPTER = "adapters/depression-pfeiffer"  # where `python train.py --mode adapter` saves
TEXT_SUFFIXES = (".txt", "")  # read as one post per line; other suffixes go through posts.load_table
CHUNK = 4096  # posts read, classified and written at a time: memory stays flat whatever the input's size
OUTPUT_SUFFIXES = (".jsonl", ".csv")


def build_parser():
    p = cli.command_parser("predict.py", __doc__)
    p.add_argument("texts", nargs="*", metavar="TEXT", help="posts to classify; '-' reads one post per line from stdin")
    p.add_argument(
        "--file",
        help="a text file with one post per line, or a .csv/.tsv/.json/.jsonl/.parquet file with a text column",
    )
    p.add_argument("--text-column", default=None, help="text column of --file (default: text or clean_text)")
    p.add_argument(
        "--adapter",
        nargs="+",
        default=[DEFAULT_ADAPTER],
        metavar="FOLDER",
        help="folder written by train.py: an adapter with its head, or a full model; or a Hugging Face Hub id "
        "(org/name[@revision]) of one, downloaded into the Hub cache (a local folder of that name wins); several "
        "adapters trained on the same base model share one loaded base (torch), and every post gets every "
        f"adapter's answer; posts may follow the folders (default: {DEFAULT_ADAPTER})",
    )
    p.add_argument(
        "--model",
        default=None,
        help="base model to load the adapter into (default: the one it was trained on, from training.json)",
    )
    p.add_argument(
        "--json", action="store_true", help="print one JSON object per post: text, label, score, probabilities"
    )
    p.add_argument(
        "--output",
        default=None,
        metavar="FILE",
        help="write the results to FILE (.jsonl: one JSON object per post; .csv: text, label, score and one "
        "column per label) as they come, instead of printing them: a stopped run keeps what it finished",
    )
    p.add_argument(
        "--no-merge",
        dest="merge",
        action="store_false",
        help="torch backend: keep a LoRA-kind adapter apart from the base weights; by default it is merged into "
        "them before predicting (the same probabilities within 1e-4, and as fast as the base model alone)",
    )
    inference.add_backend_flag(p, default="auto")
    inference.add_precision_flag(p)
    p.add_argument("--batch-size", type=int, default=64, help="posts per batch (default: 64)")
    p.add_argument(
        "--chunk-size",
        type=int,
        default=CHUNK,
        help=f"posts read and classified at a time; the results of each chunk are written before the next "
        f"is read (default: {CHUNK})",
    )
    return p


def parse_args(argv=None):
    args = build_parser().parse_args(argv)
    split_adapters_from_posts(args)
    if args.batch_size < 1 or args.chunk_size < 1:
        fail("--batch-size and --chunk-size must be at least 1")
    if args.output:
        output = Path(args.output)
        if output.suffix.lower() not in OUTPUT_SUFFIXES:
            fail(f"--output {output}: name a .jsonl or .csv file")
        if output.exists():
            fail(f"--output {output} exists; remove it or name another file (results are never written over)")
        if not output.parent.is_dir():
            fail(f"--output {output}: folder {output.parent} does not exist")
    return args


def split_adapters_from_posts(args):
    """`--adapter A B "some text"`: argparse gives --adapter every word; the first is a folder, the next ones are
    folders while they are existing folders or Hub ids (org/name), and the words after them are posts (a post of
    one word with a slash goes before --adapter, or after --)."""
    folders = args.adapter[:1]
    for i, item in enumerate(args.adapter[1:], 1):
        if not Path(item).is_dir() and not sharing.is_hub_id(item):
            args.texts = args.adapter[i:] + args.texts
            break
        folders.append(item)
    args.adapter = folders


def read_texts(args):
    """Posts from the arguments, '-' (stdin) and --file, in that order, one at a time (nothing is read ahead);
    blank lines of files and stdin are skipped."""
    for i, text in enumerate(args.texts, 1):
        if text != "-" and not text.strip():
            raise DataError(f"text {i} is empty; pass the post to classify in quotes")
    if not args.texts and not args.file:
        raise DataError(
            'no text to predict; pass it as an argument (python predict.py "some text"), '
            "with --file, or on stdin with -"
        )
    file_posts = read_file(args.file, args.text_column) if args.file else iter(())  # checks the file before reading
    for text in args.texts:
        if text == "-":
            yield from (line.strip() for line in sys.stdin if line.strip())
        else:
            yield text.strip()
    yield from file_posts


def read_file(path, text_column=None):
    """An iterator over a file's posts, read a chunk at a time: text files by line, .csv/.tsv/.jsonl through
    pandas' chunked readers, .parquet by row group; a .json array is read whole. Problems with the file
    (missing, unreadable, no text column) raise DataError before the first post is returned."""
    path = Path(path)
    suffix = path.suffix.lower()
    if not path.is_file():
        raise DataError(f"file {path} not found")
    if suffix in TEXT_SUFFIXES:
        return (line.strip() for line in open(path, errors="replace") if line.strip())
    if suffix not in posts.LOCAL_READERS:
        raise DataError(f"cannot read {path}: use a .txt file or a {'/'.join(posts.LOCAL_READERS)} file")
    import pandas as pd  # here, not at the top: a prediction of a few posts starts faster without it

    try:
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            table = pq.ParquetFile(path)
            column = posts.find_column(
                pd.DataFrame(columns=table.schema_arrow.names), text_column, posts.TEXT_COLUMNS, "text"
            )
            frames = (batch.to_pandas() for batch in table.iter_batches(CHUNK, columns=[column]))
        elif suffix in (".csv", ".tsv", ".jsonl"):
            read = pd.read_json if suffix == ".jsonl" else pd.read_csv
            options = {"lines": True} if suffix == ".jsonl" else {"sep": "\t" if suffix == ".tsv" else ","}
            frames = read(path, chunksize=CHUNK, **options)
        else:
            frames = iter([posts.load_table(str(path))])
        first = next(frames, pd.DataFrame(columns=[text_column or posts.TEXT_COLUMNS[0]]))
    except DataError:
        raise
    except Exception as e:  # pandas and pyarrow raise many kinds; all mean "unreadable"
        raise unreadable(path, e) from None
    column = posts.find_column(first, text_column, posts.TEXT_COLUMNS, "text")
    return (
        text
        for frame in itertools.chain([first], unreadable_as_data_error(frames, path))
        for text in column_texts(frame, column)
    )


def unreadable_as_data_error(frames, path):
    """The frames of a chunked reader; a part of the file that cannot be parsed -> DataError naming the file."""
    try:
        yield from frames
    except Exception as e:
        raise unreadable(path, e) from None


def unreadable(path, error):
    return DataError(
        f"cannot read {path} ({type(error).__name__}: {str(error).splitlines()[0]}); check the file's format"
    )


def column_texts(frame, column):
    texts = frame[column].dropna().astype(str).str.strip()
    return texts[texts != ""].tolist()


def chunks(posts, size):
    """Lists of up to `size` posts from an iterator."""
    posts = iter(posts)
    while chunk := list(itertools.islice(posts, size)):
        yield chunk


def open_writer(path, tasks):
    """A function that writes result rows to a .jsonl or .csv file and flushes them to disk, and the file. tasks:
    {task name: label names}; one task gives today's columns (text, label, score, p_<label>), several give each
    task's <task>_label, <task>_score and <task>_p_<label> columns."""
    handle = open(path, "x", newline="")  # "x": never write over a file (checked earlier, and again here)
    if path.suffix.lower() == ".jsonl":

        def write(rows):
            handle.writelines(json.dumps(row) + "\n" for row in rows)
            handle.flush()
    else:
        table = csv.writer(handle)
        single = len(tasks) == 1
        if single:
            table.writerow(["text", "label", "score", *task_p(next(iter(tasks.values())))])
        else:
            table.writerow(["text", *(f"{t}_{c}" for t, n in tasks.items() for c in ["label", "score", *task_p(n)])])

        def write(rows):
            table.writerows(
                [r["text"], *answer_cells(r)]
                if single
                else [r["text"], *(cell for answer in r["results"].values() for cell in answer_cells(answer))]
                for r in rows
            )
            handle.flush()

    return write, handle


def task_p(label_names):
    return [f"p_{name}" for name in label_names]


def answer_cells(answer):
    return [answer["label"], answer["score"], *answer["probabilities"].values()]


def short(text, width=70):
    return text if len(text) <= width else text[: width - 3] + "..."


def print_rows(rows, as_json):
    for row in rows:
        if as_json:
            print(json.dumps(row))
        elif "results" in row:  # several adapters: each one's answer, then the post
            answers = " | ".join(f"{task}: {a['label']} {a['score']:.3f}" for task, a in row["results"].items())
            print(f"{answers} | {short(row['text'], 50)}")
        else:
            print(f"{row['label']:<15} {row['score']:.3f}  {short(row['text'])}")
    sys.stdout.flush()


def load_model(args):
    """The --adapter folders and Hub ids, loaded as inference.Adapters (several adapters: one base model, torch), with
    the notes a user should read on stderr; on torch the expected "newly initialized head" notices are silenced."""
    found = inference.find_adapters(args.adapter, args.backend)
    if found.backend == "torch":
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
    adapters = inference.Adapters(found.folders, found.backend, None, args.precision, args.model, args.merge)
    for note in found.notes + adapters.notes():
        print(note, file=sys.stderr)
    return adapters


def classify_rows(adapters, chunk, batch_size, several):
    """Result rows for a chunk of posts: label, score and probabilities (inference.result_rows), or with several
    adapters every task's answer under "results" (inference.shared_rows)."""
    by_task = adapters.classify(chunk, batch_size=batch_size)
    if several:
        return inference.shared_rows(chunk, by_task, adapters.label_names)
    [(name, probs)] = by_task.items()
    return inference.result_rows(chunk, probs, adapters.label_names[name])


def progress_bar(enabled):
    """A tqdm bar on stderr when classifying a file or writing one; tqdm is not imported otherwise."""
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(unit=" posts", desc="classifying", file=sys.stderr)


def main(argv=None):
    args = parse_args(argv)
    try:
        posts = read_texts(args)
        first = list(itertools.islice(posts, args.chunk_size))  # bad input fails here, before the model loads
        if not first:
            raise DataError("no text to predict: the input holds no posts (blank lines are skipped)")
        loaded = load_model(args)
    except (DataError, ModelError) as e:
        fail(str(e))
    several = len(args.adapter) > 1
    tasks = loaded.label_names if several else {"": next(iter(loaded.label_names.values()))}
    write, handle = open_writer(Path(args.output), tasks) if args.output else (None, None)
    bar = progress_bar(args.file or args.output)
    try:
        for chunk in itertools.chain([first], chunks(posts, args.chunk_size)):
            rows = classify_rows(loaded, chunk, args.batch_size, several)
            write(rows) if write else print_rows(rows, args.json)
            if bar is not None:
                bar.update(len(chunk))
    except DataError as e:  # a file that turns out unreadable further in
        fail(str(e))
    except BrokenPipeError:  # `predict.py ... | head`: the reader left; stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    finally:
        if bar is not None:
            bar.close()
        if handle:
            handle.close()


if __name__ == "__main__":
    main()
