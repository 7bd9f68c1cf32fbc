"""
One real multi-class run: the 7 groups of the Reddit posts (Pirina & Coltekin 2018) as 7 classes.

    python -m bench.multiclass --quick             # a tiny run that exercises everything (CI)
    python -m bench.multiclass                     # Pfeiffer adapter, 5 epochs: minutes on 2 CPU cores

Every group is split once (seed 0): 80% is given to train.py (which holds 16% of it out to choose the best epoch by
macro-F1), 20% is the test set, classified by assess.py's functions: accuracy, macro-F1, per-class F1 and the
confusion matrix, drawn as a PNG. Writes bench/results/multiclass-<machine>[-quick].{json,md,png}.
"""

import argparse
import tempfile
from pathlib import Path

import numpy as np
from sklearn.metrics import precision_recall_fscore_support
from transformers.utils import logging as hf_logging

import data
import inference
import metrics
import report
from bench.harness import (
    add_common_flags,
    command_line,
    device_name,
    reddit_data,
    results_stem,
    run_train,
    write_results,
)
from report import markdown_table


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="1 epoch")
    add_common_flags(p, data_set=False)
    p.add_argument("--reddit", default=reddit_data(), help=f"the Reddit posts (default: {reddit_data()})")
    p.add_argument("--mode", choices=["adapter", "full"], default="adapter", help="train.py --mode (default: adapter)")
    p.add_argument("--epochs", type=int, default=None, help="epochs (default: 5, quick 1)")
    args = p.parse_args(argv)
    args.epochs = args.epochs or (1 if args.quick else 5)
    return args


def main(argv=None):
    args = parse_args(argv)
    hf_logging.set_verbosity_error()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        parts = data.holdout_parts(data.load_table(args.reddit), "label", {"train": 0.8, "test": 0.2}, seed=0)
        for name, frame in parts.items():
            frame.to_csv(tmp / f"{name}.csv", index=False)
        flags = [
            "--data",
            str(tmp / "train.csv"),
            "--normalize-text",
            "--mode",
            args.mode,
            "--metric",
            "macro_f1",
            "--model",
            args.model,
            "--epochs",
            str(args.epochs),
            "--output-dir",
            str(tmp),
            "--name",
            "groups",
        ]
        run, train_command = run_train(flags, tmp / "groups")
        loaded = inference.load(run)
        names = loaded.label_names
        test = parts["test"]
        probs = inference.classify(loaded, test["text"].astype(str).tolist()).numpy()
        labels = data.class_indices(test["label"].map(data.label_text), names, "the model")
        result = metrics.probability_metrics(
            probs, labels, resamples=0 if args.quick else metrics.BOOTSTRAP, label_names=names
        )
        result.update(
            device=device_name(),
            command=command_line("multiclass.py", argv),
            train_command=train_command,
            train_posts=len(parts["train"]),
            test_posts=len(test),
            validation_best=loaded.info["best"],
            per_class_f1=dict(
                zip(
                    names,
                    precision_recall_fscore_support(
                        labels, probs.argmax(1), labels=list(range(len(names))), zero_division=0
                    )[2].tolist(),
                )
            ),
        )
    lines = [
        f"# Seven Reddit groups as seven classes ({result['device']})",
        "",
        f"Command: `{result['command']}`; train.py: `{result['train_command']}` (the temporary folder differs "
        f"per run); {result['train_posts']} posts for train.py, {result['test_posts']} test posts never trained on.",
        "",
        f"Test accuracy {100 * result['accuracy']:.1f}%"
        + (
            f" [{100 * result['accuracy_ci'][0]:.1f}, {100 * result['accuracy_ci'][1]:.1f}]"
            if "accuracy_ci" in result
            else ""
        )
        + f", macro-F1 {100 * result['macro_f1']:.1f}% (chance: {100 / len(names):.1f}%).",
        "",
        markdown_table(["class", "F1 %"], [[n, f"{100 * f:.1f}"] for n, f in result["per_class_f1"].items()]),
        "",
        "Confusion matrix (rows: true group, columns: predicted):",
        "",
        markdown_table(["", *names], [[n, *row] for n, row in zip(names, result["confusion_matrix"])]),
    ]
    write_results(
        results_stem(args, "multiclass"),
        result,
        "\n".join(lines) + "\n",
        lambda r: report.confusion_figure({"7 groups, test posts": r}),
    )
    print(f"test accuracy {np.round(100 * result['accuracy'], 1)}%, macro-F1 {np.round(100 * result['macro_f1'], 1)}%")


if __name__ == "__main__":
    main()
