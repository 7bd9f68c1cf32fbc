"""
Do adapters lose accuracy against full fine-tuning? Every setup trained with several seeds on the same split, and
compared with full fine-tuning post by post on the same validation posts.

    python -m bench.compare --quick                    # a few minutes on a CPU (what CI runs)
    python -m bench.compare                            # full data, 3 seeds, 6 setups: hours on 2 CPU cores
    python -m bench.compare --epochs 2 --resume        # go on after a stop; finished runs are kept

Each run is `python train.py ...` in its own process (the machine to itself, one run after another); the saved
result is then loaded with predict.py's own functions and classifies the validation posts, which gives every
post's correctness. Per setup: mean and standard deviation over seeds of the best accuracy and F1, seconds per
epoch, trainable weights. Against full fine-tuning, on the same posts: McNemar's exact test (per seed pair, and on
the posts each setup gets right in most seeds) and a bootstrap 95% interval of the accuracy difference
(posts resampled, seeds averaged). The spread across split seeds (full and Pfeiffer, training seed fixed) stands
beside it. Writes bench/results/compare-<machine>[-quick].{json,md,png} after every run.
"""

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from transformers.utils import logging as hf_logging

import data
from bench.harness import TRAIN_SETUPS as SETUPS
from bench.harness import (
    add_common_flags,
    add_run_flags,
    command_line,
    device_name,
    results_stem,
    train_setup,
    write_results,
)
from textclassifier import inference
from textclassifier.report import save_figure

BASELINE = "full"
SPLIT_SETUPS = ["full", "pfeiffer"]  # also trained on other splits, to set split variance beside method variance
BOOTSTRAP = 10_000


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[1], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_run_flags(p, "compare", "200 training and 100 validation posts, 1 epoch, seeds 1 2, split seed 3")
    add_common_flags(p)
    p.add_argument(
        "--setups",
        nargs="+",
        choices=list(SETUPS),
        default=list(SETUPS),
        help="what to train (default: all; full is the baseline of the paired tests and always runs)",
    )
    p.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=None,
        help="training seeds (weights, dropout, batch order), on split seed 42 (default: 42 43 44)",
    )
    p.add_argument(
        "--split-seeds",
        type=int,
        nargs="*",
        default=None,
        help="other split seeds for full and pfeiffer, trained with the first seed (default: 43 44)",
    )
    p.add_argument("--epochs", type=int, default=None, help="epochs per run (default: 3 as train.py, quick 1)")
    p.add_argument("--train-posts", type=int, default=None, help="first N training posts (default: all; quick 200)")
    p.add_argument(
        "--resume",
        action="store_true",
        help="keep the runs already in the results file (same settings) and train only the missing ones",
    )
    p.add_argument("--redraw", action="store_true", help="draw the chart again from the results file; train nothing")
    args = p.parse_args(argv)
    args.seeds = args.seeds or ([1, 2] if args.quick else [42, 43, 44])
    args.split_seeds = args.split_seeds if args.split_seeds is not None else ([3] if args.quick else [43, 44])
    args.epochs = args.epochs or (1 if args.quick else 3)
    args.train_posts = args.train_posts or (200 if args.quick else None)
    args.eval_posts = 100 if args.quick else None
    args.setups = [BASELINE] + [s for s in args.setups if s != BASELINE]
    return args


def planned_runs(args):
    """(setup, seed, split seed) in the order they run: every setup for one seed before the next seed, so that a
    stopped comparison has whole seeds; the other splits last."""
    runs = [(name, seed, data_split) for seed in args.seeds for name in args.setups for data_split in [42]]
    runs += [(name, args.seeds[0], s) for s in args.split_seeds for name in SPLIT_SETUPS if name in args.setups]
    return runs


def validation_posts(args, split_seed):
    _, val, _, info = data.load_splits(args.data, seed=split_seed)
    if args.eval_posts:
        val = val.select(range(min(args.eval_posts, len(val))))
    return list(val["text"]), list(val["label"]), info["val_fingerprint"]


def train_and_score(args, name, seed, split_seed, folder):
    """Train one setup in its own process, then classify the validation posts with what it saved."""
    run, command = train_setup(
        name, seed, folder, args.model, args.data, args.epochs, split_seed, args.train_posts, args.eval_posts
    )
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    info = json.loads((run / "training.json").read_text())
    texts, labels, fingerprint = validation_posts(args, split_seed)
    if fingerprint != info["val_fingerprint"]:
        raise RuntimeError(f"{name}: train.py validated on other posts than the comparison's")
    loaded = inference.load(run)
    probs = inference.predict_proba(loaded.model, loaded.tokenizer, texts, loaded.info["max_length"])
    predicted = probs.argmax(-1).tolist()
    correct = "".join("1" if p == y else "0" for p, y in zip(predicted, labels))
    return {
        "setup": name,
        "seed": seed,
        "split_seed": split_seed,
        "best_accuracy": info["best"]["accuracy"],
        "best_f1": info["best"]["f1"],
        "best_epoch": info["best_epoch"],
        "predicted_accuracy": correct.count("1") / len(correct),
        "correct": correct,
        "seconds_per_epoch": statistics.mean(r["train_seconds"] for r in rows),
        "train_seconds": [r["train_seconds"] for r in rows],
        "trainable": info["parameters"]["trainable"],
        "command": command,
    }


def mcnemar_exact(baseline, other):
    """Two-sided exact McNemar test on per-post correctness (strings of 0/1): the posts only one of the two gets
    right are a fair coin's tosses if both are equally accurate. Returns (p, only baseline right, only other right)."""
    b = sum(x == "1" and y == "0" for x, y in zip(baseline, other))
    c = sum(x == "0" and y == "1" for x, y in zip(baseline, other))
    n = b + c
    if n == 0:
        return 1.0, b, c
    tail = sum(math.comb(n, k) for k in range(min(b, c) + 1)) / 2**n
    return min(1.0, 2 * tail), b, c


def correct_matrix(runs):
    return np.array([[ch == "1" for ch in r["correct"]] for r in runs], dtype=float)


def majority(runs):
    """Per post: right in more than half of the seeds."""
    return "".join("1" if share > 0.5 else "0" for share in correct_matrix(runs).mean(0))


def bootstrap_diff(baseline_runs, other_runs, resamples=BOOTSTRAP, seed=0):
    """Mean accuracy difference (other - baseline, seeds averaged per post) and its 95% bootstrap interval,
    resampling the validation posts."""
    diff = correct_matrix(other_runs).mean(0) - correct_matrix(baseline_runs).mean(0)
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, len(diff), size=(resamples, len(diff)))].mean(1)
    return float(diff.mean()), [float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))]


def sd(values):
    return statistics.stdev(values) if len(values) > 1 else 0.0


def summarise(result):
    main_runs = [r for r in result["runs"] if r["split_seed"] == 42]
    setups, paired, splits = {}, {}, {}
    for name in dict.fromkeys(r["setup"] for r in main_runs):
        mine = [r for r in main_runs if r["setup"] == name]
        setups[name] = {
            "seeds": [r["seed"] for r in mine],
            "accuracy": [r["best_accuracy"] for r in mine],
            "f1": [r["best_f1"] for r in mine],
            "seconds_per_epoch": [r["seconds_per_epoch"] for r in mine],
            "trainable": mine[0]["trainable"],
            "best_epoch": [r["best_epoch"] for r in mine],
        }
        s = setups[name]
        s.update(
            {
                "accuracy_mean": statistics.mean(s["accuracy"]),
                "accuracy_sd": sd(s["accuracy"]),
                "f1_mean": statistics.mean(s["f1"]),
                "f1_sd": sd(s["f1"]),
                "seconds_per_epoch_mean": statistics.mean(s["seconds_per_epoch"]),
            }
        )
    base = [r for r in main_runs if r["setup"] == BASELINE]
    for name in setups:
        mine = [r for r in main_runs if r["setup"] == name]
        by_seed = {r["seed"]: r for r in base}
        pairs = [(by_seed[r["seed"]], r) for r in mine if r["seed"] in by_seed]
        if name == BASELINE or not pairs:
            continue
        # one test for the setup: on the posts each gets right in most seeds (an odd number of seeds has no ties),
        # else on the first seed's pair
        tested = pairs if len(pairs) % 2 else pairs[:1]
        p, b, c = mcnemar_exact(majority([x for x, _ in tested]), majority([y for _, y in tested]))
        diff, ci = bootstrap_diff([x for x, _ in pairs], [y for _, y in pairs])
        paired[name] = {
            "seeds": [y["seed"] for _, y in pairs],
            "mcnemar_p": p,
            "mcnemar_on": f"right in most of seeds {', '.join(str(y['seed']) for _, y in tested)}",
            "only_full_right": b,
            "only_this_right": c,
            "mcnemar_p_per_seed": [mcnemar_exact(x["correct"], y["correct"])[0] for x, y in pairs],
            "diff_mean": diff,
            "diff_ci95": ci,
            "verdict": "differs" if p < 0.05 and not ci[0] <= 0 <= ci[1] else "indistinguishable at this sample size",
        }
    for name in SPLIT_SETUPS:
        first_seed = result["seeds"][0]
        mine = [r for r in result["runs"] if r["setup"] == name and r["seed"] == first_seed]
        if len(mine) > 1:
            acc = [r["best_accuracy"] for r in mine]
            splits[name] = {
                "seed": first_seed,
                "split_seeds": [r["split_seed"] for r in mine],
                "accuracy": acc,
                "accuracy_mean": statistics.mean(acc),
                "accuracy_sd": sd(acc),
            }
    result.update(setups=setups, paired=paired, split_spread=splits)


def pct(x):
    return f"{100 * x:.2f}"


def report(result):
    done = "" if result["complete"] else " (INCOMPLETE: runs still missing)"
    lines = [
        f"# Adapters against full fine-tuning, across seeds ({result['device']}){done}",
        "",
        "Commands: "
        + ", then ".join(f"`{c}`" for c in result["commands"])
        + f"; training posts: {result['train_posts'] or 'all'}, validation posts: "
        f"{result['val_posts']}, epochs: {result['epochs']}, split seed 42",
        "",
        "| setup | seeds | best accuracy % mean (sd) | F1 % mean (sd) | s / epoch | trainable | "
        "vs full, points [95% CI] | McNemar p | McNemar p per seed | verdict |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |",
    ]
    for name, s in result["setups"].items():
        q = result["paired"].get(name)
        versus = (
            f"{100 * q['diff_mean']:+.2f} [{100 * q['diff_ci95'][0]:+.2f}, {100 * q['diff_ci95'][1]:+.2f}] | "
            f"{q['mcnemar_p']:.3f} | {', '.join(f'{p:.3f}' for p in q['mcnemar_p_per_seed'])} | {q['verdict']}"
            if q
            else "- | - | - | baseline"
        )
        lines.append(
            f"| {name} | {', '.join(map(str, s['seeds']))} | {pct(s['accuracy_mean'])} ({pct(s['accuracy_sd'])})"
            f" | {pct(s['f1_mean'])} ({pct(s['f1_sd'])}) | {s['seconds_per_epoch_mean']:.1f} | "
            f"{s['trainable']:,} | {versus} |"
        )
    if result["split_spread"]:
        lines += [
            "",
            "Spread across split seeds (training seed fixed):",
            "",
            "| setup | training seed | split seeds | best accuracy % | mean (sd) |",
            "| --- | --- | --- | --- | ---: |",
        ]
        for name, s in result["split_spread"].items():
            lines.append(
                f"| {name} | {s['seed']} | {', '.join(map(str, s['split_seeds']))} | "
                f"{', '.join(pct(a) for a in s['accuracy'])} | {pct(s['accuracy_mean'])} "
                f"({pct(s['accuracy_sd'])}) |"
            )
    return "\n".join(lines) + "\n"


def chart(result):
    """Accuracy (mean ± sd over training seeds, each seed a dot; split seeds beside) and seconds per epoch (median,
    each seed a dot), by setup."""
    names = list(result["setups"])
    fig, (acc, speed) = plt.subplots(1, 2, figsize=(11, 4.2))
    for i, name in enumerate(names):
        s = result["setups"][name]
        first = i == 0
        acc.errorbar(i, 100 * s["accuracy_mean"], yerr=100 * s["accuracy_sd"], fmt="o", capsize=4, color="C0",
                     label="training seeds, split 42" if first else None)  # fmt: skip
        acc.scatter([i] * len(s["accuracy"]), [100 * a for a in s["accuracy"]], s=10, color="C0", alpha=0.4)
        if name in result["split_spread"]:
            sp = result["split_spread"][name]
            acc.errorbar(i + 0.2, 100 * sp["accuracy_mean"], yerr=100 * sp["accuracy_sd"], fmt="s", capsize=4,
                         color="C1", label="split seeds" if first else None)  # fmt: skip
        median = statistics.median(s["seconds_per_epoch"])  # one slow seed moves the mean far
        speed.bar(i, median, color="C2" if name == "full" else "C0", alpha=0.8)
        speed.scatter([i] * len(s["seconds_per_epoch"]), s["seconds_per_epoch"], s=10, color="k", alpha=0.6)
        speed.annotate(f"{s['trainable'] / 1e6:.2g} M trained", (i, median), ha="center",
                       va="bottom", fontsize=7, xytext=(0, 2), textcoords="offset points")  # fmt: skip
    acc.set_xticks(range(len(names)), names, rotation=15)
    acc.set(ylabel="best validation accuracy (%)", title="accuracy: mean ± sd over seeds")
    acc.legend(fontsize=8)
    speed.set_xticks(range(len(names)), names, rotation=15)
    speed.set(ylabel="seconds per epoch (median; dots: seeds)", title="training time per epoch")
    fig.suptitle(f"Adapters against full fine-tuning: {result['epochs']} epochs, {result['val_posts']} validation "
                 f"posts; {result['device']}", fontsize=10)  # fmt: skip
    fig.tight_layout()
    return fig


def main(argv=None):
    args = parse_args(argv)
    hf_logging.set_verbosity_error()
    stem = results_stem(args)
    if args.redraw:  # the chart again from the results file, nothing trained
        if not stem.with_suffix(".json").is_file():
            sys.exit(f"--redraw: no results file {stem}.json (--out and --name say where it is)")
        save_figure(chart(json.loads(stem.with_suffix(".json").read_text())), stem.with_suffix(".png"))
        return print(f"drew {stem}.png from {stem}.json")
    settings = {
        "model": args.model,
        "data": args.data,
        "epochs": args.epochs,
        "train_posts": args.train_posts,
        "val_posts": args.eval_posts or len(validation_posts(args, 42)[0]),
    }
    command = command_line("compare.py", argv)
    runs, commands = [], []
    if args.resume and stem.with_suffix(".json").exists():
        old = json.loads(stem.with_suffix(".json").read_text())
        if all(old.get(k) == v for k, v in settings.items()):
            runs, commands = old["runs"], old["commands"]
            print(f"resuming: {len(runs)} runs kept from {stem}.json")
        else:
            print(f"not resuming: {stem}.json was made with other settings; starting afresh")
    result = {
        "device": device_name(),
        "commands": commands + [command],
        **settings,
        "seeds": args.seeds,
        "split_seeds": args.split_seeds,
        "runs": runs,
    }
    todo = [r for r in planned_runs(args) if not any((x["setup"], x["seed"], x["split_seed"]) == r for x in runs)]
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, seed, split_seed) in enumerate(todo, 1):
            start = time.perf_counter()
            r = train_and_score(args, name, seed, split_seed, Path(tmp))
            runs.append(r)
            print(
                f"[{i}/{len(todo)}] {name:<20} seed {seed} split {split_seed}: best {pct(r['best_accuracy'])}% "
                f"(re-predicted {pct(r['predicted_accuracy'])}%), {r['seconds_per_epoch']:.1f} s/epoch, "
                f"{time.perf_counter() - start:.0f} s in all",
                flush=True,
            )
            result["complete"] = i == len(todo)
            summarise(result)
            write_results(stem, result, report(result), chart)
    if not todo:
        print("nothing to run: every planned run is in the results file")


if __name__ == "__main__":
    main()
