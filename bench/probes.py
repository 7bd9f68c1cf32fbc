"""
How much of the in-domain accuracy do shortcuts explain? Baselines that can only see a post's length or its words,
each model's flagged rate by post length on Reddit, and accuracy with the give-away words masked.

    python -m bench.probes --quick                # tiny run that exercises everything (CI)
    python -m bench.probes --runs runs            # the seed-42 runs of bench/crossdomain.py (trained if missing)

1. Baselines on train.py's split (split seed 42): logistic regression on the log word count alone, and TF-IDF
   (words and word pairs) + logistic regression; validation accuracy and AUC, and on the Reddit groups the share
   flagged depressive and the AUCs of bench/crossdomain.py.
2. Flagged rate by post length (words) on the Reddit posts: false alarms on the not-depressed groups, recall on the
   depressed ones, for every model and baseline.
3. Validation accuracy with `depress*` and `suicid*` deleted from the posts (all posts, and those that contain one).
Writes bench/results/probes-<machine>[-quick].{json,md,png}.
"""

import argparse
import re
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer
from transformers.utils import logging as hf_logging

import data
import inference
import metrics
import posts
from bench.harness import (
    COMPARED_SETUPS,
    REDDIT_GROUPS,
    REDDIT_PAIRS,
    SEED,
    add_common_flags,
    command_line,
    device_name,
    reddit_data,
    reddit_posts,
    results_stem,
    train_setup,
    write_results,
)

SETUPS = COMPARED_SETUPS
GIVEAWAY = re.compile(r"\b(depress|suicid)\w*")
LENGTH_BINS = [0, 25, 50, 100, 200, 10**9]  # words: (0, 25], (25, 50], ...
POSITIVE, NEGATIVE = REDDIT_GROUPS[:3], REDDIT_GROUPS[3:]


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="200 training posts, 1 epoch, seed 1, pfeiffer only")
    add_common_flags(p, data_help="training data set, as for train.py")
    p.add_argument("--reddit", default=reddit_data(), help=f"the Reddit posts (default: {reddit_data()})")
    p.add_argument("--runs", default=None, help="folder of bench/crossdomain.py's runs (default: a temporary one)")
    p.add_argument(
        "--setups", nargs="+", choices=SETUPS, default=None, help="models (default: all five; quick pfeiffer)"
    )
    p.add_argument("--seed", type=int, default=None, help="training seed of the runs (default: 42, quick 1)")
    p.add_argument("--epochs", type=int, default=None, help="epochs of the runs (default: 2, quick 1)")
    args = p.parse_args(argv)
    args.setups = args.setups or (["pfeiffer"] if args.quick else SETUPS)
    args.seed = args.seed if args.seed is not None else (1 if args.quick else 42)
    args.epochs = args.epochs or (1 if args.quick else 2)
    args.train_posts = 200 if args.quick else None
    return args


def log_word_count(texts):
    return np.log1p([[len(t.split())] for t in texts])


def baselines():
    """name -> an unfitted scikit-learn classifier of texts."""
    return {
        "length only": make_pipeline(FunctionTransformer(log_word_count), LogisticRegression()),
        "TF-IDF": make_pipeline(
            TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True), LogisticRegression(max_iter=1000, C=10)
        ),
    }


def mask(texts):
    return [" ".join(GIVEAWAY.sub(" ", t).split()) for t in texts]


def by_length(p_depressive, texts, groups, threshold=0.5):
    """Per word-count bin: posts, share of not-depressed posts flagged (false alarms), share of depressed posts
    flagged (recall)."""
    words = np.array([len(t.split()) for t in texts])
    flagged = p_depressive >= threshold
    rows = []
    for lo, hi in zip(LENGTH_BINS, LENGTH_BINS[1:]):
        inside = (words > lo) & (words <= hi)
        neg, pos = inside & np.isin(groups, NEGATIVE), inside & np.isin(groups, POSITIVE)
        rows.append(
            {
                "words": f"{lo + 1}-{hi}" if hi < 10**9 else f">{lo}",
                "n_not": int(neg.sum()),
                "n_depressed": int(pos.sum()),
                "false_alarms": float(flagged[neg].mean()) if neg.any() else None,
                "recall": float(flagged[pos].mean()) if pos.any() else None,
            }
        )
    return rows


def probe(name, classify, val_texts, val_labels, texts, labels, groups):
    """Every probe of one classifier (texts -> P(depressive)): in-domain, masked, Reddit, by length."""
    has = np.array([bool(GIVEAWAY.search(t)) for t in val_texts])
    p_val, p_masked = classify(val_texts), classify(mask(val_texts))
    p_reddit = classify([posts.normalize_text(t) for t in texts])
    reddit = metrics.probability_metrics(np.c_[1 - p_reddit, p_reddit], labels, groups, pairs=REDDIT_PAIRS, resamples=0)
    correct, correct_masked = (p_val >= 0.5) == val_labels, (p_masked >= 0.5) == val_labels
    return {
        "name": name,
        "val_accuracy": float(correct.mean()),
        "val_auc": metrics.pair_auc(p_val[val_labels == 1], p_val[val_labels == 0]),
        "masked_accuracy": float(correct_masked.mean()),
        "giveaway_posts": int(has.sum()),
        "giveaway_accuracy": float(correct[has].mean()) if has.any() else None,
        "giveaway_masked_accuracy": float(correct_masked[has].mean()) if has.any() else None,
        "reddit_auc": reddit["auc"],
        "reddit_groups": reddit["groups"],
        "reddit_pair_auc": {k: v["auc"] for k, v in reddit["group_auc"].items()},
        "by_length": by_length(p_reddit, texts, groups),
    }


def pct(x):
    return "-" if x is None else f"{100 * x:.1f}"


def report(result):
    rows = result["probes"]
    lines = [
        f"# Shortcut probes ({result['device']})",
        "",
        f"Command: `{result['command']}`; split seed {SEED}; "
        f"{result['val_posts']} validation posts, {result['reddit_posts']} Reddit posts (normalised).",
        "",
        "In domain (validation split):",
        "",
        "| classifier | accuracy | AUC | accuracy, depress*/suicid* deleted | posts with depress*/suicid* | "
        "their accuracy | deleted |",
        "| --- |" + " ---: |" * 6,
    ]
    for r in rows:
        lines.append(
            f"| {r['name']} | {pct(r['val_accuracy'])} | {pct(r['val_auc'])} | {pct(r['masked_accuracy'])} | "
            f"{r['giveaway_posts']} | {pct(r['giveaway_accuracy'])} | {pct(r['giveaway_masked_accuracy'])} |"
        )
    lines += [
        "",
        "Reddit: AUC of depressed against not-depressed groups, share of each group flagged, pair AUCs (%):",
        "",
        "| classifier | AUC | " + " | ".join(REDDIT_GROUPS) + " | " + " | ".join(REDDIT_PAIRS) + " |",
        "| --- |" + " ---: |" * (1 + len(REDDIT_GROUPS) + len(REDDIT_PAIRS)),
    ]
    for r in rows:
        lines.append(
            f"| {r['name']} | {pct(r['reddit_auc'])} | "
            + " | ".join(pct(r["reddit_groups"][g]) for g in REDDIT_GROUPS)
            + " | "
            + " | ".join(pct(r["reddit_pair_auc"][p]) for p in REDDIT_PAIRS)
            + " |"
        )
    bins = [b["words"] for b in rows[0]["by_length"]]
    for key, title in (
        ("false_alarms", "not-depressed posts flagged (false alarms)"),
        ("recall", "depressed posts flagged (recall)"),
    ):
        count = "n_not" if key == "false_alarms" else "n_depressed"
        lines += [
            "",
            f"Reddit, {title}, by length in words, %:",
            "",
            "| classifier | " + " | ".join(f"{b} (n={c[count]})" for b, c in zip(bins, rows[0]["by_length"])) + " |",
            "| --- |" + " ---: |" * len(bins),
        ]
        for r in rows:
            lines.append(f"| {r['name']} | " + " | ".join(pct(b[key]) for b in r["by_length"]) + " |")
    return "\n".join(lines) + "\n"


def chart(result):
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    bins = [b["words"] for b in result["probes"][0]["by_length"]]
    for r in result["probes"]:
        style = "--" if r["name"] in ("length only", "TF-IDF") else "-"
        left.plot(
            bins,
            [None if b["false_alarms"] is None else 100 * b["false_alarms"] for b in r["by_length"]],
            style,
            marker="o",
            label=r["name"],
        )
        right.plot(
            bins,
            [None if b["recall"] is None else 100 * b["recall"] for b in r["by_length"]],
            style,
            marker="o",
            label=r["name"],
        )
    left.set(
        xlabel="post length (words)",
        ylabel="% flagged depressive",
        ylim=(0, 100),
        title="Reddit posts by people not depressed (false alarms)",
    )
    right.set(xlabel="post length (words)", ylim=(0, 100), title="Reddit posts by depressed people (recall)")
    left.legend(fontsize=7)
    fig.suptitle(result["device"], fontsize=9)
    return fig


def main(argv=None):
    args = parse_args(argv)
    hf_logging.set_verbosity_error()
    train_ds, val_ds, _, _ = data.load_splits(args.data, seed=SEED)
    train_texts, train_labels = list(train_ds["text"]), np.array(train_ds["label"])
    if args.train_posts:
        train_texts, train_labels = train_texts[: args.train_posts], train_labels[: args.train_posts]
    val_texts, val_labels = list(val_ds["text"]), np.array(val_ds["label"])
    texts, labels, groups = reddit_posts(args.reddit)
    result = {
        "device": device_name(),
        "command": command_line("probes.py", argv),
        "val_posts": len(val_texts),
        "reddit_posts": len(texts),
        "probes": [],
    }
    for name, classifier in baselines().items():
        classifier.fit(train_texts, train_labels)
        result["probes"].append(
            probe(name, lambda t, c=classifier: c.predict_proba(t)[:, 1], val_texts, val_labels, texts, labels, groups)
        )
        print(f"{name}: validation accuracy {pct(result['probes'][-1]['val_accuracy'])}%", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for setup in args.setups:
            run, _ = train_setup(
                setup,
                args.seed,
                Path(args.runs or tmp),
                args.model,
                args.data,
                args.epochs,
                train_posts=args.train_posts,
            )
            loaded = inference.load(run)
            result["probes"].append(
                probe(
                    f"{setup} (seed {args.seed})",
                    lambda t: inference.classify(loaded, t)[:, 1].numpy(),
                    val_texts,
                    val_labels,
                    texts,
                    labels,
                    groups,
                )
            )
            print(f"{setup}: validation accuracy {pct(result['probes'][-1]['val_accuracy'])}%", flush=True)
    stem = results_stem(args, "probes")
    write_results(stem, result, report(result), chart)


if __name__ == "__main__":
    main()
