"""
Adapters against full fine-tuning on several tasks: every setup trained with several seeds on each task's split and
compared post by post on the same validation posts, then one summary across the tasks.

    python -m bench.compare --quick     # two tiny tasks, a few minutes on a CPU (what CI runs)
    python -m bench.compare             # 5 tasks x 4 setups x 3 seeds, capped: about 75 min on 2 CPU cores
    python -m bench.compare --resume    # go on after a stop; finished runs are kept
    python -m bench.compare --data original --train-posts 0 --val-posts 0 --epochs 2 --split-seeds 43 44 \\
        --setups full pfeiffer houlsby pfeiffer-upper-half lora --name compare   # the write-up's own setting
    python -m bench.compare --data movies reviews --train-posts 500 --baseline pfeiffer \\
        --setups pfeiffer fusion fusion-own --name fusion          # AdapterFusion on little data (docs/fusion.md)

Each run is `python train.py ...` in its own process (the machine to itself, one run after another); the saved
result is then loaded with predict.py's own functions and classifies the task's validation posts. Per task and
setup: mean and standard deviation over seeds of accuracy and macro F1 (of those predictions), seconds per epoch,
trainable weights, size on disk. Per task, each adapter against full fine-tuning and Pfeiffer against Houlsby, on
the same posts: McNemar's exact test (on the posts each setup gets right in most seeds) and paired bootstrap 95%
intervals of the differences in accuracy and macro F1 (posts resampled, seeds averaged). Across the tasks: each
setup's mean rank, and on how many tasks each adapter is at most one point below full fine-tuning. Writes
bench/results/compare-tasks-<machine>[-quick].{json,md,png} after every run.

AdapterFusion (setups fusion, fusion-own; --baseline pfeiffer: the target's own adapter): a Pfeiffer adapter is
first trained on each task of --fusion-sources (the first --source-posts training posts, seed 42); on each task,
"fusion" fuses the other tasks' adapters, "fusion-own" those and the task's own Pfeiffer adapter of the same seed
(the paper's two stages). The attention each Fusion gives each adapter, averaged over the validation posts, is
recorded and drawn.
"""

import argparse
import json
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from scipy.stats import rankdata
from transformers.utils import logging as hf_logging

import data
from bench import harness
from bench.shared import megabytes_on_disk
from textclassifier import fusion, inference, metrics, settings, training
from textclassifier.report import save_figure

BASELINE = "full"
TASKS = ["original", "reviews", "spam", "movies", "subreddits"]  # docs/tasks.md; original: the write-up's data
QUICK_TASKS = ["spam", "subreddits"]
SETUPS = ["full", "pfeiffer", "houlsby", "lora"]
SPLIT_SETUPS = ["full", "pfeiffer"]  # with --split-seeds, also trained on other splits (split variance beside)
METRICS = {"accuracy": "accuracy", "macro_f1": "macro F1"}
# the caps of the full run (per task: the first N training and validation posts), chosen so that 5 tasks x 4 setups
# x 3 seeds fit about 75 minutes on 2 cores (docs/results.md); --quick: a smoke test
FULL = {"seeds": [42, 43, 44], "epochs": 3, "train_posts": 1500, "val_posts": 500}
QUICK = {"seeds": [1, 2], "epochs": 1, "train_posts": 200, "val_posts": 100}
FUSION_SETUPS = ("fusion", "fusion-own")
SOURCE_POSTS = 2000  # training posts of each fused adapter's task


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[1], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    harness.add_run_flags(p, "compare-tasks", f"{', '.join(QUICK_TASKS)}; {QUICK}")
    harness.add_common_flags(p, data_set=False)
    # fmt: off
    p.add_argument("--data", nargs="+", default=None,
                   help=f"tasks, named (docs/tasks.md) or files, as for train.py (default: {' '.join(TASKS)})")
    p.add_argument("--setups", nargs="+", choices=list(harness.TRAIN_SETUPS), default=SETUPS,
                   help=f"what to train (default: {' '.join(SETUPS)}; full, the baseline, always runs)")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help=f"training seeds (default: {FULL['seeds']})")
    p.add_argument("--split-seeds", type=int, nargs="*", default=[],
                   help="other split seeds for full and pfeiffer, trained with the first seed (default: none)")
    p.add_argument("--epochs", type=int, default=None, help=f"epochs per run (default: {FULL['epochs']})")
    p.add_argument("--train-posts", type=int, default=None,
                   help=f"first N training posts per task, 0: all (default: {FULL['train_posts']})")
    p.add_argument("--val-posts", type=int, default=None,
                   help=f"first N validation posts per task, 0: all (default: {FULL['val_posts']})")
    p.add_argument("--max-length", type=int, default=training.MAX_LENGTH, help="tokens per post, as train.py's")
    p.add_argument("--baseline", default=BASELINE, choices=list(harness.TRAIN_SETUPS),
                   help="the setup every other is paired with (always runs; pfeiffer for the fusion setups)")
    p.add_argument("--fusion-sources", nargs="+", default=TASKS,
                   help=f"tasks whose Pfeiffer adapters the fusion setups fuse (default: {' '.join(TASKS)})")
    p.add_argument("--source-posts", type=int, default=SOURCE_POSTS,
                   help="first N training posts of each source task, 0: all")
    p.add_argument("--resume", action="store_true",
                   help="keep the runs already in the results file (same settings) and train only the missing ones")
    p.add_argument("--redraw", action="store_true", help="draw the chart again from the results file; train nothing")
    # fmt: on
    args = p.parse_args(argv)
    for key, value in (QUICK if args.quick else FULL).items():
        setattr(args, key, value if getattr(args, key) is None else getattr(args, key))
    args.data = args.data or (QUICK_TASKS if args.quick else TASKS)
    args.setups = [args.baseline] + [s for s in dict.fromkeys(args.setups) if s != args.baseline]
    if "fusion-own" in args.setups and "pfeiffer" not in args.setups:
        p.error("fusion-own fuses each task's own Pfeiffer adapter: add pfeiffer to --setups")
    return args


def planned_runs(args):
    """(task, setup, seed, split seed) in the order they run: every task and setup for one seed before the next
    seed, so that a stopped comparison has whole seeds; the other splits last."""
    runs = [(task, name, seed, 42) for seed in args.seeds for task in args.data for name in args.setups]
    split_setups = [name for name in SPLIT_SETUPS if name in args.setups]
    return runs + [(t, name, args.seeds[0], s) for s in args.split_seeds for t in args.data for name in split_setups]


VALIDATION = {}  # (task, split seed) -> (texts, labels, label names, fingerprint), read once per process


def validation_posts(flags, task, split_seed):
    """The validation posts train.py validated on, read as train.py reads them (training.read_splits)."""
    if (task, split_seed) not in VALIDATION:
        _, val, label_names, info = training.read_splits(settings.parse(flags), log=lambda *_: None)
        VALIDATION[task, split_seed] = list(val["text"]), list(val["label"]), label_names, info["val_fingerprint"]
    return VALIDATION[task, split_seed]


def train_source(args, task, folder):
    """A fused adapter: Pfeiffer on `task`'s first --source-posts training posts (seed 42), into folder/<task>."""
    flags = [*harness.setup_flags("pfeiffer", args.model), "--model", args.model, "--data", task, "--epochs",
             str(args.epochs), "--max-length", str(args.max_length), "--output-dir", str(folder), "--name",
             task_name(task)]  # fmt: skip
    flags += ["--max-train-samples", str(args.source_posts)] if args.source_posts else []
    flags += ["--max-eval-samples", str(args.val_posts)] if args.val_posts else []
    return harness.run_train(flags, Path(folder) / task_name(task))[0]


def fusion_flags(args, task, name, seed, split_seed, folder):
    """--fusion and its adapters for a fusion setup: the other tasks' (train_source), and for fusion-own the task's
    own Pfeiffer run of this seed (trained again if it is not at hand)."""
    sources = [str(train_source(args, t, Path(folder).parent / "sources")) for t in args.fusion_sources
               if task_name(t) != task_name(task)]  # fmt: skip
    if name == "fusion-own":
        sources.append(str(harness.train_setup("pfeiffer", seed, folder, args.model, task, args.epochs, split_seed,
                           args.train_posts, args.val_posts, ["--max-length", str(args.max_length)])[0]))  # fmt: skip
    return ["--fusion", *sources]


def train_and_score(args, task, name, seed, split_seed, folder):
    """Train one setup on one task in its own process, then classify the validation posts with what it saved."""
    extra = fusion_flags(args, task, name, seed, split_seed, folder) if name in FUSION_SETUPS else []
    run, command = harness.train_setup(name, seed, folder, args.model, task, args.epochs, split_seed, args.train_posts,
                               args.val_posts, ["--max-length", str(args.max_length), *extra])  # fmt: skip
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    info = json.loads((run / "training.json").read_text())
    flags = shlex.split(command)[2:]  # train.py's, less where it saves (not settings)
    flags = [f for i, f in enumerate(flags) if {f, flags[i - 1]}.isdisjoint({"--output-dir", "--name"})]
    texts, labels, label_names, fingerprint = validation_posts(flags, task, split_seed)
    if fingerprint != info["val_fingerprint"]:
        raise RuntimeError(f"{task} {name}: train.py validated on other posts than the comparison's")
    loaded = inference.load(run)
    predicted = inference.predict_proba(loaded.model, loaded.tokenizer, texts, args.max_length).argmax(-1).tolist()
    scores = metrics.label_metrics(predicted, labels, label_names)
    return {
        "task": task_name(task), "setup": name, "seed": seed, "split_seed": split_seed,
        "accuracy": scores["accuracy"], "macro_f1": scores["macro_f1"], "best_accuracy": info["best"]["accuracy"],
        "best_epoch": info["best_epoch"], "classes": len(label_names),
        "labels": " ".join(map(str, labels)), "predicted": " ".join(map(str, predicted)),
        "seconds_per_epoch": statistics.mean(r["train_seconds"] for r in rows),
        "trainable": info["parameters"]["trainable"], "megabytes": megabytes_on_disk([run]), "command": command,
        **({"attention": {"own" if a == f"pfeiffer-{seed}-{split_seed}" else a: w for a, w in
                          fusion.attention_by_adapter(loaded.model, loaded.tokenizer, texts, args.max_length).items()}}
           if name in FUSION_SETUPS else {}),  # the task's own adapter (fusion-own) named "own"
    }  # fmt: skip


def task_name(task):
    """A named task's name, a file's name without its suffix."""
    return task if data.named_set(task) else Path(task).stem


def posts(run, key):
    return np.array(run[key].split(), dtype=int)


def sd(values):
    return statistics.stdev(values) if len(values) > 1 else 0.0


def setup_stats(mine):
    """One setup on one task: every seed's figures, their mean and standard deviation."""
    s = {"seeds": [r["seed"] for r in mine], "trainable": mine[0]["trainable"], "megabytes": mine[0]["megabytes"]}
    for key in [*METRICS, "seconds_per_epoch"]:
        s[key] = [r[key] for r in mine]
        s[f"{key}_mean"], s[f"{key}_sd"] = statistics.mean(s[key]), sd(s[key])
    return s


def paired_test(first, second):
    """`second` against `first` (runs of one task, seeds paired): McNemar on the posts each gets right in most seeds
    (an odd number of seeds has no ties; else the first seed's pair), bootstrap intervals of the differences."""
    pairs = [(a, b) for a in first for b in second if a["seed"] == b["seed"]]
    tested = pairs if len(pairs) % 2 else pairs[:1]
    labels = posts(pairs[0][0], "labels")
    right = [np.mean([posts(r, "predicted") == labels for r in side], 0) > 0.5 for side in zip(*tested)]
    p, b, c = metrics.mcnemar(*right)
    diffs = metrics.paired_bootstrap(labels, *([posts(r, "predicted") for r in side] for side in zip(*pairs)),
                                     num_classes=pairs[0][0]["classes"])  # fmt: skip
    excludes_0 = [key for key, (_, (lo, hi)) in diffs.items() if not lo <= 0 <= hi]
    differs = [key for key in excludes_0 if key != "accuracy" or p < 0.05]
    return {
        "seeds": [y["seed"] for _, y in pairs], "mcnemar_p": p,
        "right_only": {second[0]["setup"]: c, first[0]["setup"]: b},
        **{f"{key}_diff": d for key, (d, _) in diffs.items()}, **{f"{key}_ci95": ci for key, (_, ci) in diffs.items()},
        "verdict": f"differs ({', '.join(METRICS[k] for k in differs)})" if differs else "indistinguishable",
    }  # fmt: skip


def comparisons(setups, baseline=BASELINE):
    """(first, second): each setup against the baseline, Pfeiffer against Houlsby, Fusion without the task's own
    adapter against Fusion with it."""
    pairs = [(baseline, name) for name in setups if name != baseline]
    pairs += [("houlsby", "pfeiffer")] if {"houlsby", "pfeiffer"} <= set(setups) - {baseline} else []
    return pairs + ([FUSION_SETUPS] if set(FUSION_SETUPS) <= set(setups) else [])


def summarise_task(runs, first_seed, baseline=BASELINE):
    main = [r for r in runs if r["split_seed"] == 42]
    by_setup = {name: [r for r in main if r["setup"] == name] for name in dict.fromkeys(r["setup"] for r in main)}
    splits = {}
    for name in SPLIT_SETUPS:
        mine = [r for r in runs if r["setup"] == name and r["seed"] == first_seed]
        if len(mine) > 1:
            splits[name] = {"split_seeds": [r["split_seed"] for r in mine], **setup_stats(mine)}
    return {
        "classes": main[0]["classes"], "val_posts": len(main[0]["labels"].split()),
        "chance": float(np.bincount(posts(main[0], "labels")).max() / len(main[0]["labels"].split())),
        "setups": {name: setup_stats(mine) for name, mine in by_setup.items()},
        "paired": {f"{b} vs {a}": paired_test(by_setup[a], by_setup[b]) for a, b in comparisons(by_setup, baseline)
                   if a in by_setup and b in by_setup},
        "split_spread": splits,
        "attention": {name: {adapter: statistics.mean(r["attention"][adapter] for r in mine) for adapter in
                             mine[0]["attention"]} for name, mine in by_setup.items() if "attention" in mine[0]},
    }  # fmt: skip


def across_tasks(tasks, metric="macro_f1", baseline=BASELINE):
    """Each setup's rank per task by the metric's mean (1: best; ties share their mean rank), its mean rank over the
    tasks that ran it, and on how many tasks it is at most one point below the baseline (full fine-tuning)."""
    ranks = {}
    for task, t in tasks.items():
        names = list(t["setups"])
        ranked = rankdata([-t["setups"][n][f"{metric}_mean"] for n in names])
        ranks[task] = dict(zip(names, map(float, ranked)))
    names = list(dict.fromkeys(n for r in ranks.values() for n in r))
    out = {"metric": metric, "ranks": ranks, "setups": {}}
    for name in names:
        mine = [task for task in tasks if name in ranks[task]]
        near = [task for task in mine if baseline in tasks[task]["setups"] and round(
            100 * (tasks[task]["setups"][baseline][f"{metric}_mean"] - tasks[task]["setups"][name][f"{metric}_mean"]),
            9) <= 1]  # fmt: skip
        out["setups"][name] = {"mean_rank": statistics.mean(ranks[t][name] for t in mine), "tasks": len(mine),
                               "within_one_point_of_full": near}  # fmt: skip
    return out


def summarise(result):
    tasks, baseline = dict.fromkeys(r["task"] for r in result["runs"]), result.get("baseline", BASELINE)
    result["tasks"] = {t: summarise_task([r for r in result["runs"] if r["task"] == t], result["seeds"][0], baseline)
                       for t in tasks}  # fmt: skip
    result["summary"] = {key: across_tasks(result["tasks"], key, baseline) for key in METRICS}


def pct(x, sign=""):
    return f"{100 * x:{sign}.1f}"


def report(result):
    done = "" if result["complete"] else " (INCOMPLETE: runs still missing)"
    caps = f"the first {result['train_posts'] or 'all'} training posts and {result['val_posts'] or 'all'} validation"
    base = result.get("baseline", BASELINE)
    against = "full fine-tuning" if base == BASELINE else f"{base}"
    lines = [
        f"# {', '.join(n for n in result['summary']['macro_f1']['setups'] if n != base)} against "
        f"{against} on {len(result['tasks'])} tasks ({result['device']}){done}", "",
        "Commands: " + ", then ".join(f"`{c}`" for c in result["commands"]) + f". Per task {caps} posts of "
        f"train.py's split (seed 42), {result['epochs']} epochs, max length {result['max_length']}, base "
        f"{result['model']}, training seeds {', '.join(map(str, result['seeds']))}; accuracy and macro F1 of the "
        "saved (best) epoch, re-predicted; mean (sd) over seeds. Wall time and peak memory: docs/results.md.", "",
        "| task | classes | chance | setup | accuracy % | macro F1 % | s / epoch | trainable | saved MB |",
        "| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: |",
    ]  # fmt: skip
    for task, t in result["tasks"].items():
        for name, s in t["setups"].items():
            lines.append(
                f"| {task} | {t['classes']} | {pct(t['chance'])} | {name} | {pct(s['accuracy_mean'])} "
                f"({pct(s['accuracy_sd'])}) | {pct(s['macro_f1_mean'])} ({pct(s['macro_f1_sd'])}) | "
                f"{s['seconds_per_epoch_mean']:.1f} | {s['trainable']:,} | {s['megabytes']:.2f} |"
            )
    lines += ["", "Paired on the same validation posts (the first named less the second, points, 95% bootstrap "
              "interval; McNemar "
              "on the posts each gets right in most seeds; a difference counts where its interval excludes 0, "
              "for accuracy also McNemar p < 0.05):", "",
              "| task | comparison | accuracy | macro F1 | McNemar p (posts only the first / the second gets right) "
              "| verdict |",
              "| --- | --- | ---: | ---: | ---: | --- |"]  # fmt: skip
    for task, t in result["tasks"].items():
        for pair, q in t["paired"].items():
            cells = [f"{pct(q[f'{k}_diff'], '+')} [{pct(q[f'{k}_ci95'][0], '+')}, {pct(q[f'{k}_ci95'][1], '+')}]"
                     for k in METRICS]  # fmt: skip
            only = " / ".join(str(q["right_only"][name]) for name in pair.split(" vs "))
            lines.append(f"| {task} | {pair} | {' | '.join(cells)} | {q['mcnemar_p']:.3f} ({only}) | {q['verdict']} |")
    lines += ["", f"Across the tasks (rank 1: best mean on a task; within one point: at most one point below "
              f"{against}):", "", f"| setup | mean rank, macro F1 | mean rank, accuracy | within one point of {base}, "
              "macro F1 | within one point, accuracy |", "| --- | ---: | ---: | --- | --- |"]  # fmt: skip
    f1, acc = result["summary"]["macro_f1"]["setups"], result["summary"]["accuracy"]["setups"]
    for name, s in f1.items():
        near = [f"{len(x['within_one_point_of_full'])} of {x['tasks']} ({', '.join(x['within_one_point_of_full'])})"
                for x in (s, acc[name])]  # fmt: skip
        lines.append(f"| {name} | {s['mean_rank']:.1f} | {acc[name]['mean_rank']:.1f} | {' | '.join(near)} |")
    for task, t in result["tasks"].items():
        for name, s in t["split_spread"].items():
            lines.append(f"\n{task}, {name}, split seeds {s['split_seeds']} (training seed {s['seeds'][0]}): "
                         f"accuracy {pct(s['accuracy_mean'])} ({pct(s['accuracy_sd'])})")  # fmt: skip
    for task, t in result["tasks"].items():
        for name, weights in t.get("attention", {}).items():
            ranked = ", ".join(f"{a} {w:.2f}" for a, w in sorted(weights.items(), key=lambda x: -x[1]))
            lines.append(f"\n{task}, {name}: mean attention over the validation posts' tokens, layers, seeds: {ranked}")
    return "\n".join(lines) + "\n"


def chart(result, metric="macro_f1"):
    """Left: the metric per task and setup (mean ± sd over seeds, each seed a dot). Right: trainable weights against
    the metric's difference to full fine-tuning (each task a dot, the mean over tasks a large mark)."""
    tasks, names = list(result["tasks"]), list(result["summary"][metric]["setups"])
    base, fused = result.get("baseline", BASELINE), [(t, n, w) for t in tasks for n, w in
                                                     result["tasks"][t].get("attention", {}).items()]  # fmt: skip
    fig, (left, right, *weighs) = plt.subplots(
        1,
        3 if fused else 2,
        figsize=(17 if fused else 12, 4.4),
        gridspec_kw={"width_ratios": [1.6, 1, 1.2][: 3 if fused else 2]},
    )
    width = 0.8 / len(names)
    for j, name in enumerate(names):
        where = [i for i, t in enumerate(tasks) if name in result["tasks"][t]["setups"]]
        x = [i + (j - (len(names) - 1) / 2) * width for i in where]
        mine = [result["tasks"][tasks[i]]["setups"][name] for i in where]
        left.errorbar(x, [100 * s[f"{metric}_mean"] for s in mine], yerr=[100 * s[f"{metric}_sd"] for s in mine],
                      fmt="o", capsize=3, color=f"C{j}", label=name)  # fmt: skip
        for xi, s in zip(x, mine):
            left.scatter([xi] * len(s[metric]), [100 * v for v in s[metric]], s=8, color=f"C{j}", alpha=0.35)
        gaps = [100 * (result["tasks"][t]["setups"][name][f"{metric}_mean"] -
                       result["tasks"][t]["setups"][base][f"{metric}_mean"])
                for t in tasks if {name, base} <= set(result["tasks"][t]["setups"])]  # fmt: skip
        weights = mine[0]["trainable"]
        right.scatter([weights] * len(gaps), gaps, s=12, color=f"C{j}", alpha=0.5)
        right.scatter([weights], [statistics.mean(gaps)], s=90, marker="D", color=f"C{j}", label=name)
    left.set_xticks(range(len(tasks)), tasks)
    left.set(ylabel=f"validation {METRICS[metric]} (%)", title=f"{METRICS[metric]} per task: mean ± sd over seeds")
    left.legend(fontsize=8)
    right.axhline(0, color="grey", lw=0.8)
    right.set(xscale="log", xlabel="trainable weights", ylabel=f"{METRICS[metric]} less {base}'s (points)",
              title=f"trainable weights, against {base} (dots: tasks)")  # fmt: skip
    for weigh in weighs:  # which adapters each Fusion weighs most: stacked bars of its mean attention
        adapters = list(dict.fromkeys(a for _, _, w in fused for a in w))
        left_edge = np.zeros(len(fused))
        for k, adapter in enumerate(adapters):
            share = np.array([w.get(adapter, 0.0) for _, _, w in fused])
            weigh.barh(range(len(fused)), share, left=left_edge, color=f"C{k % 10}", label=adapter)
            left_edge += share
        weigh.set_yticks(range(len(fused)), [f"{t}: {n}" for t, n, _ in fused], fontsize=8)
        weigh.set(xlabel="mean Fusion attention (validation tokens, layers, seeds)", xlim=(0, 1),
                  title="which adapters each Fusion weighs")  # fmt: skip
        weigh.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.suptitle(f"{len(tasks)} tasks, {len(result['seeds'])} seeds, {result['epochs']} epochs, up to "
                 f"{result['train_posts'] or 'all'} training posts a task; {result['device']}", size=10)  # fmt: skip
    fig.tight_layout()
    return fig


def main(argv=None):
    args = parse_args(argv)
    hf_logging.set_verbosity_error()
    stem = harness.results_stem(args)
    if args.redraw:  # the chart again from the results file, nothing trained
        if not stem.with_suffix(".json").is_file():
            sys.exit(f"--redraw: no results file {stem}.json (--out and --name say where it is)")
        save_figure(chart(json.loads(stem.with_suffix(".json").read_text())), stem.with_suffix(".png"))
        return print(f"drew {stem}.png from {stem}.json")
    for task in args.data:  # a task that cannot be read stops here, in one line, before any training
        data.sources(task)
    keys = ["model", "epochs", "train_posts", "val_posts", "max_length", "baseline", "fusion_sources", "source_posts"]
    settings_now = {key: getattr(args, key) for key in keys}
    runs, commands = [], []
    if args.resume and stem.with_suffix(".json").exists():
        old = json.loads(stem.with_suffix(".json").read_text())
        before = {"baseline": BASELINE, "fusion_sources": TASKS, "source_posts": SOURCE_POSTS}  # files without them
        if all(old.get(k, before.get(k)) == v for k, v in settings_now.items()):
            runs, commands = old["runs"], old["commands"]
            print(f"resuming: {len(runs)} runs kept from {stem}.json")
        else:
            print(f"not resuming: {stem}.json was made with other settings; starting afresh")
    command = harness.command_line("compare.py", argv)
    result = {"device": harness.device_name(), "commands": commands + [command], **settings_now,
              "tasks_asked": args.data, "seeds": args.seeds, "split_seeds": args.split_seeds, "runs": runs}  # fmt: skip
    done = {(r["task"], r["setup"], r["seed"], r["split_seed"]) for r in runs}
    todo = [r for r in planned_runs(args) if (task_name(r[0]), *r[1:]) not in done]
    with tempfile.TemporaryDirectory() as tmp:
        for i, (task, name, seed, split_seed) in enumerate(todo, 1):
            start = time.perf_counter()
            r = train_and_score(args, task, name, seed, split_seed, Path(tmp) / str(args.data.index(task)))
            runs.append(r)
            print(f"[{i}/{len(todo)}] {r['task']} {name} seed {seed} split {split_seed}: accuracy "
                  f"{pct(r['accuracy'])}% (train.py's best {pct(r['best_accuracy'])}%), macro F1 "
                  f"{pct(r['macro_f1'])}%, {r['seconds_per_epoch']:.1f} s/epoch, "
                  f"{time.perf_counter() - start:.0f} s in all", flush=True)  # fmt: skip
            result["complete"] = i == len(todo)
            summarise(result)
            harness.write_results(stem, result, report(result), chart)
    if not todo:
        print("nothing to run: every planned run is in the results file")


if __name__ == "__main__":
    main()
