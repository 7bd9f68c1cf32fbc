"""
Evaluate saved models (adapters or fully fine-tuned) on any labelled file, without training.

    python evaluate.py --adapter adapters/depression-pfeiffer --data ../shared/data/depression-reddit-cleaned.csv
    python evaluate.py --adapter adapters/depression-pfeiffer models/depression-full \\
        --data ../shared/data/pirina-2018-train.csv --group-column label \\
        --label-map 1=ds,dsf,do 0=bc,ff,ndf,nd --group-auc ds:bc ds:ff ds:nd do:nd --output pirina.json

Per folder: accuracy, precision/recall/F1 of the positive class, ROC AUC, Brier score, expected calibration error
(10 equal-width confidence bins), the confusion matrix, with bootstrap 95% intervals (posts resampled); with
--group-column, the share of each group flagged positive, and with --group-auc the AUC between two groups. Prints a
Markdown table; --output writes the JSON (keyed by folder) and the same table beside it (.md).

This is a research and teaching tool, not a diagnostic instrument.
"""

import argparse
import json
import shlex
import sys
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from sklearn.metrics import brier_score_loss, roc_auc_score
from tqdm.auto import tqdm
from transformers.utils import logging as hf_logging

import data
import inference
import metrics
import model as M
import saved
from errors import fail

BOOTSTRAP = 1000  # resamples for the 95% intervals
CHUNK = 256  # posts classified between two updates of the progress bar
ECE_BINS = 10


def build_parser():
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0].strip(),
        epilog="This is a research and teaching tool, not a diagnostic instrument.",
    )
    p.add_argument(
        "--adapter",
        nargs="+",
        required=True,
        metavar="FOLDER",
        help="folders written by train.py (adapters with their heads, or full models)",
    )
    p.add_argument(
        "--data", required=True, help="a labelled .csv/.tsv/.json/.jsonl/.parquet file (or a Hub data set id)"
    )
    p.add_argument(
        "--text-column", default=None, help=f"text column (default: the first of {', '.join(data.TEXT_COLUMNS)})"
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
        default=BOOTSTRAP,
        help=f"resamples for the 95%% intervals (default: {BOOTSTRAP}; 0: none)",
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
    p.error = lambda message: fail(f"{message} (see python evaluate.py --help)")
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
        args.label_mapping = data.parse_label_map(args.label_map)
    except data.DataError as e:
        fail(str(e))
    return args


def read_labelled(source, text_column=None, label_column=None, group_column=None, label_mapping=None):
    """A labelled file -> DataFrame with text, label (as text, mapped) and group (if asked for); rows without a
    text or a label, and rows the map drops, are left out. Returns (frame, rows left out)."""
    df = data.load_table(source)
    text_col = data.find_column(df, text_column, data.TEXT_COLUMNS, "text")
    label_col = data.find_column(df, label_column, data.LABEL_COLUMNS, "label")
    out = pd.DataFrame({"text": df[text_col], "label": df[label_col]})
    if group_column:
        out["group"] = df[data.find_column(df, group_column, [], "group")].map(data.label_text)
    if label_mapping:
        out["label"], dropped = data.map_labels(out["label"], label_mapping)
    else:
        out["label"] = out["label"].map(lambda v: None if pd.isna(v) else data.label_text(v))
        dropped = pd.Series(False, index=out.index)
    out["text"] = out["text"].astype("string").str.strip()
    keep = ~dropped & out["label"].notna() & out["text"].notna() & (out["text"] != "")
    out = out[keep].reset_index(drop=True)
    out["text"] = out["text"].astype(str)
    if out.empty:
        raise data.DataError(f"{source} holds no labelled posts to evaluate")
    return out, int((~keep).sum())


def class_indices(labels, label_names, folder):
    """Text labels -> the model's class indices: "0".."K-1" or a class name. Anything else -> DataError."""
    by_name = {name: i for i, name in enumerate(label_names)} | {str(i): i for i in range(len(label_names))}
    unknown = sorted(set(labels) - set(by_name))
    if unknown:
        raise data.DataError(
            f"label {unknown[0]!r} is not a class of {folder} (classes: 0..{len(label_names) - 1} or "
            f"{', '.join(label_names)}); map the labels with --label-map, e.g. 1={unknown[0]}"
        )
    return np.array([by_name[label] for label in labels])


def predictions(probs, threshold=None):
    """Predicted classes: the most probable one, or (two classes) positive at P(class 1) >= threshold."""
    if threshold is None:
        return probs.argmax(1)
    return (probs[:, 1] >= threshold).astype(int)


def expected_calibration_error(probs, labels, bins=ECE_BINS):
    """Weighted mean gap between confidence (the predicted class's probability) and accuracy over equal-width bins."""
    confidence, correct = probs.max(1), probs.argmax(1) == labels
    which = np.minimum((confidence * bins).astype(int), bins - 1)
    return float(
        sum(
            abs(correct[which == b].mean() - confidence[which == b].mean()) * (which == b).mean()
            for b in range(bins)
            if (which == b).any()
        )
    )


def scores(probs, labels, threshold=None, label_names=None):
    """The point metrics of one model on one set of posts: metrics.label_metrics (the same as train.py's) and the
    ones that need probabilities: AUC, Brier score, expected calibration error."""
    pred = predictions(probs, threshold)
    k = probs.shape[1]
    auc = None
    if len(set(labels.tolist())) > 1:
        auc = float(
            roc_auc_score(labels, probs[:, 1])
            if k == 2
            else roc_auc_score(labels, probs, multi_class="ovr", labels=list(range(k)))
        )
    return {
        "n": int(len(labels)),
        **metrics.label_metrics(pred, labels, label_names or [str(i) for i in range(k)]),
        "auc": auc,
        "brier": float(
            brier_score_loss(labels, probs[:, 1]) if k == 2 else ((probs - np.eye(k)[labels]) ** 2).sum(1).mean()
        ),
        "ece": expected_calibration_error(probs, labels),
    }


def interval(values):
    values = [v for v in values if v is not None]
    return [float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))] if values else None


def bootstrap(probs, labels, threshold, resamples, seed):
    """95% percentile intervals of accuracy, F1 and AUC, the posts resampled with replacement."""
    rng = np.random.default_rng(seed)
    draws = [scores(probs[i], labels[i], threshold) for i in rng.integers(0, len(labels), (resamples, len(labels)))]
    return {f"{key}_ci": interval([d[key] for d in draws]) for key in ("accuracy", "f1", "auc")}


def group_results(probs, groups, threshold, pairs, resamples, seed, label_names=None):
    """Two classes: the share flagged positive per group (with an interval, each group's posts resampled) and the AUC
    of the positive probability between the groups of each POS:NEG pair (each group resampled on its own). More
    classes: per group, the share predicted as each class."""
    if probs.shape[1] > 2:
        pred = predictions(probs)
        names = label_names or [str(i) for i in range(probs.shape[1])]
        shares = {
            g: {name: float((pred[groups == g] == i).mean()) for i, name in enumerate(names)}
            for g in sorted(set(groups))
        }
        return shares, {g: {"n": int((groups == g).sum())} for g in shares}, {}
    flagged = predictions(probs, threshold) == 1
    positive = probs[:, 1]
    rng = np.random.default_rng(seed)
    shares, detail = {}, {}
    for group in sorted(set(groups)):
        mine = flagged[groups == group]
        shares[group] = float(mine.mean())
        draws = mine[rng.integers(0, len(mine), (resamples, len(mine)))].mean(1) if resamples else []
        detail[group] = {"n": int(len(mine)), "flagged": shares[group], "flagged_ci": interval(list(draws))}
    aucs = {}
    for pair in pairs:
        pos, neg = pair.split(":")
        a, b = positive[groups == pos], positive[groups == neg]
        auc = pair_auc(a, b)
        draws = [
            pair_auc(a[rng.integers(0, len(a), len(a))], b[rng.integers(0, len(b), len(b))]) for _ in range(resamples)
        ]
        aucs[pair] = {"auc": auc, "auc_ci": interval(draws), "n_pos": int(len(a)), "n_neg": int(len(b))}
    return shares, detail, aucs


def pair_auc(pos_scores, neg_scores):
    """ROC AUC of telling posts of one group (positives) from another's by a score."""
    y = np.r_[np.ones(len(pos_scores)), np.zeros(len(neg_scores))]
    return float(roc_auc_score(y, np.r_[pos_scores, neg_scores]))


def evaluate(probs, labels, groups=None, threshold=None, pairs=(), resamples=BOOTSTRAP, seed=0, label_names=None):
    """Every metric of one model's probabilities on one set of posts (numpy arrays), as written to the JSON."""
    result = {**scores(probs, labels, threshold, label_names), "threshold": threshold}
    if label_names:
        result["label_names"] = list(label_names)
    if resamples:
        result.update(bootstrap(probs, labels, threshold, resamples, seed))
    if groups is not None:
        result["groups"], result["groups_detail"], result["group_auc"] = group_results(
            probs, groups, threshold, pairs, resamples, seed, label_names
        )
    return result


def classify_with_bar(loaded, texts, batch_size, bar):
    chunks = []
    for start in range(0, len(texts), CHUNK):
        chunks.append(np.asarray(inference.classify(loaded, texts[start : start + CHUNK], batch_size)))
        bar.update(len(texts[start : start + CHUNK]))
    return np.concatenate(chunks)


def pct(x):
    return "-" if x is None else f"{100 * x:.1f}"


def ci(pair):
    return "" if not pair else f" [{100 * pair[0]:.1f}, {100 * pair[1]:.1f}]"


def markdown(results, command):
    lines = [
        f"Command: `{command}`",
        "",
        "Precision, recall and F1: the positive class's with two classes, else macro averages. Confusion matrix: "
        "rows are the true classes, columns the predicted ones (two classes: [[TN, FP], [FN, TP]]).",
        "",
        "| model | posts | accuracy % | precision % | recall % | F1 % | macro-F1 % | AUC % | Brier | ECE | confusion |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for folder, r in results.items():
        lines.append(
            f"| {folder} | {r['n']} | {pct(r['accuracy'])}{ci(r.get('accuracy_ci'))} | {pct(r['precision'])} | "
            f"{pct(r['recall'])} | {pct(r['f1'])}{ci(r.get('f1_ci'))} | {pct(r['macro_f1'])} | "
            f"{pct(r['auc'])}{ci(r.get('auc_ci'))} | {r['brier']:.3f} | {r['ece']:.3f} | {r['confusion_matrix']} |"
        )
    first = next(iter(results.values()))
    if "groups" in first and isinstance(next(iter(first["groups"].values())), dict):  # more than two classes
        lines += [
            "",
            "Per group, the class predicted most often (its share, %):",
            "",
            "| model | " + " | ".join(first["groups"]) + " |",
            "| --- |" + " ---: |" * len(first["groups"]),
        ]
        for folder, r in results.items():
            top = {g: max(shares.items(), key=lambda kv: kv[1]) for g, shares in r["groups"].items()}
            lines.append(f"| {folder} | " + " | ".join(f"{name} ({pct(share)})" for name, share in top.values()) + " |")
    elif "groups" in first:
        names = list(first["groups"])
        lines += [
            "",
            "Share flagged positive per group, % [95% CI]:",
            "",
            "| model | " + " | ".join(f"{g} (n={first['groups_detail'][g]['n']})" for g in names) + " |",
            "| --- |" + " ---: |" * len(names),
        ]
        for folder, r in results.items():
            lines.append(
                f"| {folder} | "
                + " | ".join(f"{pct(r['groups'][g])}{ci(r['groups_detail'][g]['flagged_ci'])}" for g in names)
                + " |"
            )
    if first.get("group_auc"):
        pairs = list(first["group_auc"])
        lines += [
            "",
            "AUC between groups, % [95% CI] (50 = chance):",
            "",
            "| model | " + " | ".join(pairs) + " |",
            "| --- |" + " ---: |" * len(pairs),
        ]
        for folder, r in results.items():
            lines.append(
                f"| {folder} | "
                + " | ".join(f"{pct(r['group_auc'][p]['auc'])}{ci(r['group_auc'][p]['auc_ci'])}" for p in pairs)
                + " |"
            )
    return "\n".join(lines) + "\n"


def save_figure(fig, path):
    """A matplotlib figure to a PNG file, laid out, then closed (the charts of evaluate.py and bench/)."""
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def confusion_figure(results):
    """One confusion matrix per folder, each row (true class) as shares, with the counts written in."""
    fig, axes = plt.subplots(1, len(results), figsize=(4.5 * len(results), 4.2), squeeze=False)
    for ax, (folder, r) in zip(axes[0], results.items()):
        counts = np.array(r["confusion_matrix"])
        shares = counts / np.maximum(counts.sum(1, keepdims=True), 1)
        names = r.get("label_names") or [str(i) for i in range(len(counts))]
        ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
        for (i, j), n in np.ndenumerate(counts):
            ax.text(
                j, i, str(n), ha="center", va="center", color="white" if shares[i, j] > 0.5 else "black", fontsize=8
            )
        ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(len(names)), names, fontsize=8)
        ax.set(xlabel="predicted", ylabel="true", title=f"{Path(folder).name}: accuracy {pct(r['accuracy'])}%")
    return fig


def main(argv=None):
    args = parse_args(argv)
    hf_logging.set_verbosity_error()
    command = shlex.join(["python", "evaluate.py", *(sys.argv[1:] if argv is None else argv)])
    try:
        posts, left_out = read_labelled(
            args.data, args.text_column, args.label_column, args.group_column, args.label_mapping
        )
        infos = {folder: saved.read_training_info(folder) for folder in args.adapter}  # every folder checked first
        labels = {folder: class_indices(posts["label"], info["label_names"], folder) for folder, info in infos.items()}
        groups = posts["group"].to_numpy() if args.group_column else None
        for pair in args.group_auc:
            missing = [g for g in pair.split(":") if g not in set(groups)]
            if missing:
                raise data.DataError(
                    f"--group-auc {pair}: no group {missing[0]!r} in column {args.group_column} "
                    f"(groups: {', '.join(sorted(set(groups)))})"
                )
        if (args.threshold is not None or args.group_auc) and any(len(i["label_names"]) != 2 for i in infos.values()):
            raise data.DataError("--threshold and --group-auc need models with two classes")
    except (data.DataError, M.ModelError) as e:
        fail(str(e))
    texts = posts["text"].tolist()
    if args.normalize_text:
        texts = [data.normalize_text(t) for t in texts]
    print(
        f"{len(texts)} posts from {args.data}"
        + (f" ({left_out} left out: no text or label, or dropped by --label-map)" if left_out else ""),
        file=sys.stderr,
    )
    results = {}
    bar = tqdm(total=len(texts) * len(args.adapter), unit=" posts", desc="classifying", file=sys.stderr)
    for folder in args.adapter:
        try:
            loaded = inference.load(folder, backend=args.backend, precision=args.precision)
        except M.ModelError as e:
            bar.close()
            fail(str(e))
        probs = classify_with_bar(loaded, texts, args.batch_size, bar)
        results[folder] = {
            **evaluate(
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
        save_figure(confusion_figure(results), out.with_suffix(".png"))
        print(f"wrote {out}, {out.with_suffix('.md')} and {out.with_suffix('.png')}", file=sys.stderr)


if __name__ == "__main__":
    main()
