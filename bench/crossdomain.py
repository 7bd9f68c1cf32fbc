"""
Beyond the training data: every setup (full fine-tuning and the adapters), trained with several seeds on the
depression data set, classifies real Reddit and forum posts (Pirina & Coltekin 2018, 7 groups, none trained on).

    python -m bench.crossdomain --quick                       # tiny runs that exercise everything (CI)
    python -m bench.crossdomain --runs runs                   # 5 setups x 3 seeds; trains what runs/ lacks

Each run is train.py in its own process with bench/compare.py's settings (split seed 42, 2 epochs by default),
kept in --runs, so a second call only evaluates. Per setup, mean (sd) over seeds: in-domain validation accuracy,
the share of every Reddit group flagged depressive, the AUC of depressed (ds, dsf, do) against not depressed
(bc, ff, ndf, nd) posts and of the pairs ds:bc, ds:ff, ds:nd, do:nd. Against full fine-tuning, paired on the
same posts and seeds: the AUC difference (seeds averaged) with a bootstrap 95% interval and p-value (posts
resampled within each group). The Reddit texts are classified normalised like the training data (lower case,
a-z and 0-9 only); the raw texts are scored too (first seed), to show what that choice changes. Writes
bench/results/crossdomain-<machine>[-quick].{json,md,png}.
"""

import argparse
import json
import statistics
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from tqdm.auto import tqdm
from transformers.utils import logging as hf_logging

import data
import inference
import metrics
import posts
import saved
from bench.harness import (
    COMPARED_SETUPS,
    REDDIT_GROUPS,
    REDDIT_PAIRS,
    add_common_flags,
    command_line,
    device_name,
    reddit_data,
    reddit_posts,
    results_stem,
    train_setup,
    write_results,
)
from report import markdown_table

SETUPS = COMPARED_SETUPS
BASELINE = "full"
TESTED = ["all", "do:nd", "ds:nd"]  # the AUCs compared with full fine-tuning, post by post


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[1], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="200 training posts, 1 epoch, seeds 1 2, full and pfeiffer, 100 bootstrap resamples",
    )
    add_common_flags(p, data_help="training data set, as for train.py")
    p.add_argument(
        "--reddit",
        default=reddit_data(),
        help=f"the Reddit posts with a group column 'label' (default: {reddit_data()}; $REDDIT_DATA)",
    )
    p.add_argument("--runs", default=None, help="folder that keeps the trained runs (default: a temporary one)")
    p.add_argument(
        "--setups",
        nargs="+",
        choices=SETUPS,
        default=None,
        help="setups (default: all five, quick full and pfeiffer; full always runs)",
    )
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="training seeds (default: 42 43 44)")
    p.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="epochs per run (default: 2, as bench/compare.py's full-data results; quick 1)",
    )
    p.add_argument(
        "--raw-seeds",
        type=int,
        nargs="*",
        default=None,
        help="seeds whose runs also classify the raw texts (default: the first seed)",
    )
    p.add_argument("--bootstrap", type=int, default=None, help="resamples (default: 1000, quick 100)")
    args = p.parse_args(argv)
    args.seeds = args.seeds or ([1, 2] if args.quick else [42, 43, 44])
    args.raw_seeds = args.seeds[:1] if args.raw_seeds is None else args.raw_seeds
    args.epochs = args.epochs or (1 if args.quick else 2)
    args.bootstrap = args.bootstrap if args.bootstrap is not None else (100 if args.quick else metrics.BOOTSTRAP)
    args.train_posts = 200 if args.quick else None
    args.setups = [BASELINE] + [s for s in args.setups or (["pfeiffer"] if args.quick else SETUPS) if s != BASELINE]
    return args


def score_run(run, texts, labels, groups, resamples, raw_too):
    """One saved run: its in-domain accuracy (training.json) and its Reddit results on normalised texts, and on the
    raw texts too if raw_too."""
    info = saved.read_training_info(run)
    loaded = inference.load(run)
    normalised = inference.classify(loaded, [posts.normalize_text(t) for t in texts]).numpy()
    raw = inference.classify(loaded, texts).numpy() if raw_too else None
    result = {
        "in_domain_accuracy": info["best"]["accuracy"],
        "in_domain_f1": info["best"]["f1"],
        "trainable": info["parameters"]["trainable"],
    }
    for name, probs in (("normalised", normalised), ("raw", raw)):
        if probs is None:
            continue
        r = metrics.probability_metrics(
            probs, labels, groups, pairs=REDDIT_PAIRS, resamples=resamples if name == "normalised" else 0
        )
        result[name] = {
            key: r[key]
            for key in (
                "accuracy",
                "auc",
                "auc_ci",
                "ece",
                "brier",
                "confusion_matrix",
                "groups",
                "groups_detail",
                "group_auc",
            )
            if key in r
        }
    result["p_depressive"] = [round(float(p), 5) for p in normalised[:, 1]]
    return result


def auc_of(p, labels, groups, which):
    if which == "all":
        return metrics.pair_auc(p[labels == 1], p[labels == 0])
    pos, neg = which.split(":")
    return metrics.pair_auc(p[groups == pos], p[groups == neg])


def paired_auc(base_runs, runs, labels, groups, which, resamples, seed=0):
    """AUC difference (this setup - full fine-tuning, seeds paired and averaged) with a bootstrap 95% interval and a
    two-sided bootstrap p-value; the posts are resampled within each group, the same draw for every model."""
    pairs = [(np.array(b["p_depressive"]), np.array(r["p_depressive"])) for b, r in zip(base_runs, runs)]

    def diff(index):
        return statistics.mean(
            auc_of(r[index], labels[index], groups[index], which)
            - auc_of(b[index], labels[index], groups[index], which)
            for b, r in pairs
        )

    rng = np.random.default_rng(seed)
    members = [np.flatnonzero(groups == g) for g in sorted(set(groups))]
    draws = np.array([diff(np.concatenate([rng.choice(m, len(m)) for m in members])) for _ in range(resamples)])
    point = diff(np.arange(len(labels)))
    p = min(1.0, 2 * min((draws <= 0).mean(), (draws >= 0).mean())) if resamples else None
    return {"diff": point, "diff_ci95": metrics.interval(list(draws)) if resamples else None, "p": p}


def mean_sd(values):
    """Mean, standard deviation and the values; None for no values (e.g. no run scored the raw texts)."""
    if not values:
        return None
    return {
        "mean": statistics.mean(values),
        "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
        "values": values,
    }


def summarise(result, labels, groups):
    by_setup = {}
    for r in result["runs"]:
        by_setup.setdefault(r["setup"], []).append(r)
    setups = {}
    for name, runs in by_setup.items():
        n = [r["normalised"] for r in runs]
        setups[name] = {
            "seeds": [r["seed"] for r in runs],
            "trainable": runs[0]["trainable"],
            "in_domain_accuracy": mean_sd([r["in_domain_accuracy"] for r in runs]),
            "reddit_accuracy": mean_sd([x["accuracy"] for x in n]),
            "auc_all": mean_sd([x["auc"] for x in n]),
            "auc_all_raw": mean_sd([r["raw"]["auc"] for r in runs if "raw" in r]),
            "flagged": {g: mean_sd([x["groups"][g] for x in n]) for g in REDDIT_GROUPS},
            "flagged_raw": {g: mean_sd([r["raw"]["groups"][g] for r in runs if "raw" in r]) for g in REDDIT_GROUPS},
            "pair_auc": {pair: mean_sd([x["group_auc"][pair]["auc"] for x in n]) for pair in REDDIT_PAIRS},
        }
    base = {r["seed"]: r for r in by_setup.get(BASELINE, [])}
    paired = {}
    for name, runs in by_setup.items():
        runs = [r for r in runs if r["seed"] in base]
        if name == BASELINE or not runs:
            continue
        base_runs = [base[r["seed"]] for r in runs]
        paired[name] = {
            which: paired_auc(base_runs, runs, labels, groups, which, result["bootstrap"]) for which in TESTED
        }
    result.update(setups=setups, paired=paired)


def pct(x):
    return f"{100 * x:.1f}"


def ms(s):
    return "-" if s is None else f"{pct(s['mean'])} ({pct(s['sd'])})"


def report(result):
    lines = [
        f"# Beyond the training data: Reddit posts by group ({result['device']})",
        "",
        f"Command: `{result['command']}`; runs trained with {result['epochs']} epochs, split seed 42, seeds "
        f"{', '.join(map(str, result['seeds']))}; {result['reddit_posts']} Reddit posts ({result['reddit']}), "
        "normalised like the training data. Mean (sd) over seeds, in %.",
        "",
        "Share flagged depressive per group (ds, dsf, do: depressed; bc, ff, ndf, nd: not):",
        "",
        "| setup | in-domain accuracy | " + " | ".join(REDDIT_GROUPS) + " | Reddit accuracy |",
        "| --- | ---: |" + " ---: |" * (len(REDDIT_GROUPS) + 1),
    ]
    for name, s in result["setups"].items():
        lines.append(
            f"| {name} | {ms(s['in_domain_accuracy'])} | "
            + " | ".join(ms(s["flagged"][g]) for g in REDDIT_GROUPS)
            + f" | {ms(s['reddit_accuracy'])} |"
        )
    lines += [
        "",
        "AUC (50 = chance): depressed against not depressed groups, and pairs of groups:",
        "",
        "| setup | all | " + " | ".join(REDDIT_PAIRS) + " | all, raw texts (first seed) |",
        "| --- | ---: |" + " ---: |" * (len(REDDIT_PAIRS) + 1),
    ]
    for name, s in result["setups"].items():
        lines.append(
            f"| {name} | {ms(s['auc_all'])} | "
            + " | ".join(ms(s["pair_auc"][p]) for p in REDDIT_PAIRS)
            + f" | {ms(s['auc_all_raw'])} |"
        )
    lines += [
        "",
        f"Against full fine-tuning, paired on the same posts and seeds: AUC difference in points [95% "
        f"bootstrap interval], p ({result['bootstrap']} resamples within groups):",
        "",
        "| setup | " + " | ".join(TESTED) + " |",
        "| --- |" + " ---: |" * len(TESTED),
    ]
    for name, q in result["paired"].items():
        lines.append(
            f"| {name} | "
            + " | ".join(
                f"{100 * q[w]['diff']:+.1f}"
                + (
                    f" [{100 * q[w]['diff_ci95'][0]:+.1f}, {100 * q[w]['diff_ci95'][1]:+.1f}], p {q[w]['p']:.3f}"
                    if q[w]["p"] is not None
                    else ""
                )
                for w in TESTED
            )
            + " |"
        )
    rows = [[name, *(ms(s["flagged_raw"][g]) for g in REDDIT_GROUPS)] for name, s in result["setups"].items()]
    lines += ["", "Raw texts (case and punctuation kept) instead of normalised, share flagged (first seed):", "",
              markdown_table(["setup", *REDDIT_GROUPS], rows)]  # fmt: skip
    return "\n".join(lines) + "\n"


def chart(result):
    names = list(result["setups"])
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5), gridspec_kw={"width_ratios": [3, 2]})
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        s = result["setups"][name]
        x = np.arange(len(REDDIT_GROUPS)) + i * width
        left.bar(
            x,
            [100 * s["flagged"][g]["mean"] for g in REDDIT_GROUPS],
            width,
            yerr=[100 * s["flagged"][g]["sd"] for g in REDDIT_GROUPS],
            label=name,
            capsize=2,
        )
        keys = ["all", *REDDIT_PAIRS]
        right.bar(
            np.arange(len(keys)) + i * width,
            [100 * s["auc_all"]["mean"]] + [100 * s["pair_auc"][p]["mean"] for p in REDDIT_PAIRS],
            width,
            label=name,
        )
    left.set_xticks(np.arange(len(REDDIT_GROUPS)) + 0.4 - width / 2, REDDIT_GROUPS)
    left.set(ylabel="flagged depressive (%)", title="Reddit groups (first three depressed)", ylim=(0, 100))
    right.axhline(50, color="grey", lw=0.8, ls="--")
    right.set_xticks(np.arange(5) + 0.4 - width / 2, ["all", *REDDIT_PAIRS])
    right.set(ylabel="AUC (%)", title="depressed vs not (50 = chance)", ylim=(40, 100))
    left.legend(fontsize=7)
    fig.suptitle(f"mean over seeds {', '.join(map(str, result['seeds']))}; {result['device']}", fontsize=9)
    return fig


def main(argv=None):
    args = parse_args(argv)
    hf_logging.set_verbosity_error()
    texts, labels, groups = reddit_posts(args.reddit)
    result = {
        "device": device_name(),
        "command": command_line("crossdomain.py", argv),
        "reddit": args.reddit,
        "reddit_posts": len(texts),
        "epochs": args.epochs,
        "seeds": args.seeds,
        "bootstrap": args.bootstrap,
        "runs": [],
    }
    stem = results_stem(args, "crossdomain")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.runs or tmp)
        plan = [(name, seed) for seed in args.seeds for name in args.setups]
        for name, seed in tqdm(plan, desc="runs", unit=" run"):
            run, command = train_setup(
                name, seed, folder, args.model, args.data, args.epochs, train_posts=args.train_posts
            )
            # each run's scores are kept beside it: a stopped or repeated call scores only what is new
            cache = folder / f"{run.name}.crossdomain.json"
            key = {
                "reddit": data.fingerprint(pd.DataFrame({"text": texts, "label": labels})),
                "bootstrap": args.bootstrap,
            }
            scores = json.loads(cache.read_text()) if cache.is_file() else {}
            if scores.get("key") != key or ("raw" not in scores and seed in args.raw_seeds):
                scores = {"key": key, **score_run(run, texts, labels, groups, args.bootstrap, seed in args.raw_seeds)}
                cache.write_text(json.dumps(scores))
            scores = {k: v for k, v in scores.items() if k != "key" and (k != "raw" or seed in args.raw_seeds)}
            result["runs"].append({"setup": name, "seed": seed, "folder": str(run), "train_command": command, **scores})
    summarise(result, labels, groups)
    write_results(stem, result, report(result), chart)


if __name__ == "__main__":
    main()
