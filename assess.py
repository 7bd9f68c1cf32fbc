"""
Evaluate saved models (adapters or fully fine-tuned) on any labelled file, without training.

    python assess.py --adapter adapters/depression-pfeiffer --data ../shared/data/depression-reddit-cleaned.csv
    python assess.py --adapter adapters/depression-pfeiffer models/depression-full \\
        --data ../shared/data/pirina-2018-train.csv --group-column label \\
        --label-map 1=ds,dsf,do 0=bc,ff,ndf,nd --group-auc ds:bc ds:ff ds:nd do:nd --output pirina.json

Per folder: accuracy, precision/recall/F1 of the positive class, ROC AUC, Brier score, expected calibration error
(10 equal-width confidence bins), the confusion matrix, with bootstrap 95% intervals (posts resampled); with
--group-column, the share of each group flagged positive, and with --group-auc the AUC between two groups. Prints a
Markdown table; --output writes the JSON (keyed by folder) and the same table beside it (.md).

This is a research and teaching tool, not a diagnostic instrument.
"""

import json
import shlex
import sys
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm
from transformers.utils import logging as hf_logging

import data
import posts
from errors import DataError, ModelError, fail
from textclassifier import cli, inference, metrics, report, saved
from textclassifier.report import markdown_table, pct

CHUNK = 256  # posts classified between two updates of the progress bar


def build_parser():
    p = cli.command_parser("assess.py", __doc__)
    p.add_argument(
        "--adapter",
        nargs="+",
        required=True,
        metavar="FOLDER",
        help="folders written by train.py (adapters with their heads, or full models), or Hugging Face Hub ids of "
        "them (org/name[@revision]; a local folder of that name wins)",
    )
    p.add_argument(
        "--data",
        required=True,
        help="a labelled .csv/.tsv/.json/.jsonl/.parquet file, a Hub data set id, or a task train.py names in one "
        "word (original, reviews, spam, ...: its whole file, its label column; docs/tasks.md)",
    )
    p.add_argument(
        "--text-column", default=None, help=f"text column (default: the first of {', '.join(posts.TEXT_COLUMNS)})"
    )
    p.add_argument(
        "--label-column", default=None, help=f"label column (default: the first of {', '.join(data.LABEL_COLUMNS)})"
    )
    p.add_argument(
        "--group-column",
        default=None,
        help="a column of groups (it may be the label column itself): the share of each group flagged "
        "positive is reported",
    )
    p.add_argument(
        "--label-map",
        nargs="+",
        default=None,
        metavar="TARGET=VALUES",
        help="turn label values into the model's labels, e.g. 1=ds,dsf,do 0=bc,ff,ndf,nd (drop=VALUES leaves "
        "rows out); labels must end up as a class index (0, 1) or a class name of the model",
    )
    p.add_argument(
        "--group-auc",
        nargs="+",
        default=[],
        metavar="POS:NEG",
        help="ROC AUC of the positive-class probability between two groups of --group-column, e.g. ds:nd",
    )
    p.add_argument(
        "--normalize-text",
        action="store_true",
        help="lower-case the texts and replace everything but a-z and 0-9 by spaces before classifying, as the "
        "depression data set was cleaned (models trained with --normalize-text do it anyway)",
    )
    p.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="flag a post positive when its positive-class probability is at least this (two classes "
        "only; default: the most probable class, i.e. 0.5)",
    )
    p.add_argument(
        "--bootstrap",
        type=int,
        default=metrics.BOOTSTRAP,
        help=f"resamples for the 95%% intervals (default: {metrics.BOOTSTRAP}; 0: none)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap (default: 0)")
    p.add_argument("--batch-size", type=int, default=64, help="posts per batch (default: 64)")
    inference.add_backend_flag(p, default="torch")
    inference.add_precision_flag(p)
    p.add_argument(
        "--output",
        default=None,
        metavar="FILE.json",
        help="write the results as JSON (keyed by folder) and the table as FILE.md; never written over",
    )
    return p


def parse_args(argv=None):
    args = build_parser().parse_args(argv)
    if args.bootstrap < 0 or args.batch_size < 1:
        fail("--bootstrap must be at least 0 and --batch-size at least 1")
    if args.threshold is not None and not 0 < args.threshold < 1:
        fail("--threshold must be between 0 and 1, e.g. 0.5")
    if args.group_auc and not args.group_column:
        fail("--group-auc needs --group-column")
    if any(pair.count(":") != 1 or "" in pair.split(":") for pair in args.group_auc):
        fail("--group-auc takes pairs of groups written POS:NEG, e.g. ds:nd")
    if args.output:
        out = Path(args.output)
        if out.suffix.lower() != ".json":
            fail(f"--output {out}: name a .json file (the table goes beside it as .md)")
        for path in (out, out.with_suffix(".md")):
            if path.exists():
                fail(f"--output: {path} exists; remove it or name another file (results are never written over)")
        if not out.parent.is_dir():
            fail(f"--output {out}: folder {out.parent} does not exist")
    try:
        named_data(args)
        args.label_mapping = data.parse_label_map(args.label_map)
    except DataError as e:
        fail(str(e))
    return args


def named_data(args):
    """--data naming a data set of one file (data.DATA_SETS: a task) -> that file, with the set's label column and
    label map unless given."""
    named = data.named_set(args.data)
    if named is None:
        return
    if len(named["sources"]) > 1:
        raise DataError(f"--data {args.data} joins several sources; name one file, or a task of one (docs/tasks.md)")
    [args.data] = data.sources(args.data)
    args.label_column = args.label_column or named["label_column"]
    args.label_map = args.label_map if args.label_map is not None else named["label_map"]


def classify_with_bar(loaded, texts, batch_size, bar):
    chunks = []
    for start in range(0, len(texts), CHUNK):
        chunks.append(np.asarray(inference.classify(loaded, texts[start : start + CHUNK], batch_size)))
        bar.update(len(texts[start : start + CHUNK]))
    return np.concatenate(chunks)


def ci(pair):
    return "" if not pair else f" [{100 * pair[0]:.1f}, {100 * pair[1]:.1f}]"


def markdown(results, command):
    first = next(iter(results.values()))
    lines = [
        f"Command: `{command}`",
        "",
        "Precision, recall and F1: the positive class's with two classes, else macro averages. Confusion matrix: "
        "rows are the true classes, columns the predicted ones (two classes: [[TN, FP], [FN, TP]]).",
        "",
        markdown_table(
            ["model", "posts", "accuracy %", "precision %", "recall %", "F1 %", "macro-F1 %", "AUC %", "Brier", "ECE",
             "confusion"],
            [[folder, r["n"], pct(r["accuracy"]) + ci(r.get("accuracy_ci")), pct(r["precision"]), pct(r["recall"]),
              pct(r["f1"]) + ci(r.get("f1_ci")), pct(r["macro_f1"]), pct(r["auc"]) + ci(r.get("auc_ci")),
              f"{r['brier']:.3f}", f"{r['ece']:.3f}", r["confusion_matrix"]] for folder, r in results.items()],
        ),
    ]  # fmt: skip
    groups = list(first.get("groups", {}))
    if groups and isinstance(first["groups"][groups[0]], dict):  # more than two classes

        def top(shares):  # the class predicted most often, with its share
            name, share = max(shares.items(), key=lambda kv: kv[1])
            return f"{name} ({pct(share)})"

        rows = [[folder, *(top(r["groups"][g]) for g in groups)] for folder, r in results.items()]
        lines += [
            "",
            "Per group, the class predicted most often (its share, %):",
            "",
            markdown_table(["model", *groups], rows),
        ]
    elif groups:
        header = ["model", *(f"{g} (n={first['groups_detail'][g]['n']})" for g in groups)]
        rows = [[folder, *(pct(r["groups"][g]) + ci(r["groups_detail"][g]["flagged_ci"]) for g in groups)]
                for folder, r in results.items()]  # fmt: skip
        lines += ["", "Share flagged positive per group, % [95% CI]:", "", markdown_table(header, rows)]
    if first.get("group_auc"):
        pairs = list(first["group_auc"])
        rows = [[folder, *(pct(r["group_auc"][p]["auc"]) + ci(r["group_auc"][p]["auc_ci"]) for p in pairs)]
                for folder, r in results.items()]  # fmt: skip
        lines += ["", "AUC between groups, % [95% CI] (50 = chance):", "", markdown_table(["model", *pairs], rows)]
    return "\n".join(lines) + "\n"


def main(argv=None):
    args = parse_args(argv)
    hf_logging.set_verbosity_error()
    command = shlex.join(["python", "assess.py", *(sys.argv[1:] if argv is None else argv)])
    try:
        labelled, left_out = data.read_labelled(
            args.data, args.text_column, args.label_column, args.group_column, args.label_mapping
        )
        found = inference.find_adapters(args.adapter, args.backend, several="apart")  # Hub ids -> cache folders
        paths = dict(zip(args.adapter, found.folders))
        infos = {name: saved.read_training_info(path) for name, path in paths.items()}  # every folder checked first
        for note in filter(None, found.notes + [inference.plain_note(f, info) for f, info in infos.items()]):
            print(note, file=sys.stderr)
        labels = {f: data.class_indices(labelled["label"], info["label_names"], f) for f, info in infos.items()}
        groups = labelled["group"].to_numpy() if args.group_column else None
        for pair in args.group_auc:
            missing = [g for g in pair.split(":") if g not in set(groups)]
            if missing:
                raise DataError(
                    f"--group-auc {pair}: no group {missing[0]!r} in column {args.group_column} "
                    f"(groups: {', '.join(sorted(set(groups)))})"
                )
        if (args.threshold is not None or args.group_auc) and any(len(i["label_names"]) != 2 for i in infos.values()):
            raise DataError("--threshold and --group-auc need models with two classes")
    except (DataError, ModelError) as e:
        fail(str(e))
    texts = labelled["text"].tolist()
    if args.normalize_text:
        texts = [posts.normalize_text(t) for t in texts]
    print(
        f"{len(texts)} posts from {args.data}"
        + (f" ({left_out} left out: no text or label, or dropped by --label-map)" if left_out else ""),
        file=sys.stderr,
    )
    results = {}
    bar = tqdm(total=len(texts) * len(args.adapter), unit=" posts", desc="classifying", file=sys.stderr)
    for folder in args.adapter:
        try:
            loaded = inference.load(paths[folder], backend=args.backend, precision=args.precision)
        except ModelError as e:
            bar.close()
            fail(str(e))
        probs = classify_with_bar(loaded, texts, args.batch_size, bar)
        results[folder] = {
            **metrics.probability_metrics(
                probs,
                labels[folder],
                groups,
                args.threshold,
                args.group_auc,
                args.bootstrap,
                args.seed,
                loaded.label_names,
            ),
            "data": args.data,
            "label_map": args.label_map,
            "normalize_text": args.normalize_text or bool(loaded.info.get("normalize_text")),
        }
    bar.close()
    table = markdown(results, command)
    print(table)
    if args.output:
        out = Path(args.output)
        with open(out, "x") as handle:
            handle.write(json.dumps(results, indent=2) + "\n")
        with open(out.with_suffix(".md"), "x") as handle:
            handle.write(table)
        report.save_figure(report.confusion_figure(results), out.with_suffix(".png"))
        print(f"wrote {out}, {out.with_suffix('.md')} and {out.with_suffix('.png')}", file=sys.stderr)


if __name__ == "__main__":
    main()
