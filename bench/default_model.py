"""
The default training data, measured: which label map for the shipped Reddit Mental Health posts, whether a remedy
against the length shortcut helps, and the default model against the models trained on the depression data set
alone, on posts none of them trained on.

    python -m bench.default_model --runs runs/default-model                  # the default and the seed-only model
    python -m bench.default_model --runs runs/default-model --variants default-44 support-as-0 support-as-1 \\
        length-expert --modes pfeiffer --seeds 42 --name default-model-screening
    python -m bench.default_model --runs runs/screening-44 --variants default-44 length-expert short-copies \\
        masked-copies other-senses calibrate --modes pfeiffer --seeds 42 --name default-model-screening-44
    python -m bench.default_model --runs runs/screening-44 --variants default-44 default --modes pfeiffer \\
        --export --test-part --added-errors default-44 default --name default-model-45     # the choice of issue 45
    python -m bench.default_model --quick                                    # tiny runs that exercise it (CI)

Each variant is a train.py command (kept in the results); a run folder that already holds a finished run is kept.
Per run: the best epoch's validation accuracy per source (the depression data set's 1,224 posts; the shipped
sample's validation posts: recall of r/depression + r/SuicideWatch, the share of control posts flagged, AUC); the
share flagged of each support-group subreddit of the shipped sample, where the variant leaves them out of training;
on the Pirina posts (never trained on): the share flagged per group, the AUC of depressed against not-depressed
posts and do:nd; the behaviour tests (bench/behaviour.py), on the suite's tune part only (its test part is scored
once, on the model chosen: --test-part); P(depressive) of the README's example post (torch fp32 and bf16; int8 with
--export); and the expected calibration error of the validation posts (after the temperature where the run was
calibrated). --added-errors OLD NEW: the depression data set's validation posts NEW gets wrong and OLD got right. Writes
bench/results/<name>-<machine>[-quick].{json,md,png}.
"""

import argparse
import dataclasses
import json
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np

import data
import inference
import metrics
from bench import behaviour
from bench import harness as H

README_EXAMPLE = "i can't get out of bed anymore and nothing feels worth it"
DEPRESSED, SUPPORT, CONTROL = (",".join(g) for g in (data.DEPRESSED_SUBREDDITS, data.SUPPORT_SUBREDDITS,
                                                       data.CONTROL_SUBREDDITS))  # fmt: skip


def recipe(length_expert="0", short_copies="false", masked_copies="false", other_senses="false"):
    """train.py's flags for the default data with every remedy named, on or off, whatever the default is."""
    return ["--data", "default", "--length-expert", length_expert, "--short-copies", short_copies,
            "--masked-copies", masked_copies, "--other-senses", other_senses]  # fmt: skip


NO_REMEDY = recipe()
# name -> (train.py flags, what it is)
VARIANTS = {
    "original": (["--data", "original"], "depression data set alone"),
    "default": (
        ["--data", "default"],
        "the default: the default data with its remedies (data.DATA_SETS): length expert, short copies, other senses",
    ),
    "default-44": (NO_REMEDY, "the default until issue 45: the default data without a remedy"),
    "support-as-0": (
        [*NO_REMEDY, "--label-map", f"1={DEPRESSED}", f"0={CONTROL},{SUPPORT}"],
        "as default-44, support groups 0",
    ),
    "support-as-1": (
        [*NO_REMEDY, "--label-map", f"1={DEPRESSED},{SUPPORT}", f"0={CONTROL}"],
        "as default-44, support groups 1",
    ),
    "length-expert": (recipe(length_expert="1"), "default-44 + product of experts with length"),
    "length-expert-0.5": (
        recipe(length_expert="0.5"),
        "default-44 + product of experts with length, tempered (weight 0.5)",
    ),
    "short-copies": (recipe(short_copies="true"), "default-44 + short copies of posts over 32 words"),
    "masked-copies": (
        recipe(masked_copies="true"),
        "default-44 + copies of posts that say depress*/suicid* without those words",
    ),
    "other-senses": (recipe(other_senses="true"), "default-44 + other senses of 'depression' as 0"),
    "calibrate": ([*NO_REMEDY, "--calibrate"], "default-44 + temperature calibration on the validation posts"),
    "short-copies+other-senses": (
        recipe(short_copies="true", other_senses="true"),
        "default-44 + short copies + other senses",
    ),
    "length-expert+other-senses": (
        recipe(length_expert="1", other_senses="true"),
        "default-44 + length expert + other senses",
    ),
    "length-expert+short-copies+other-senses": (
        recipe(length_expert="1", short_copies="true", other_senses="true"),
        "default-44 + length expert + short copies + other senses",
    ),
    "length-expert+short-copies+other-senses+masked-copies": (
        recipe(length_expert="1", short_copies="true", other_senses="true", masked_copies="true"),
        "default-44 + length expert + short copies + other senses + masked copies",
    ),
    "length-expert-0.5+short-copies+other-senses": (
        recipe(length_expert="0.5", short_copies="true", other_senses="true"),
        "default-44 + length expert (weight 0.5) + short copies + other senses",
    ),
    "max-length-128": ([*NO_REMEDY, "--max-length", "128"], "default-44 at max length 128"),
    "5-epochs": ([*NO_REMEDY, "--epochs", "5"], "default-44, 5 epochs instead of 3"),
}
MODES = {"pfeiffer": ["--mode", "adapter"], "full": ["--mode", "full"]}
PIRINA_PAIRS = ["do:nd"]
SOURCES = {"original": "depression-reddit-cleaned", "reddit": "reddit-mental-health-2019"}


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--runs", default="runs/default-model", help="folder of the training runs (kept between calls)")
    p.add_argument(
        "--variants", nargs="+", default=["default", "original"], choices=list(VARIANTS), help="what to train"
    )
    p.add_argument("--modes", nargs="+", default=["pfeiffer", "full"], choices=list(MODES), help="adapter or full")
    p.add_argument("--seeds", nargs="+", type=int, default=[42, 43, 44], help="training seeds (split seed 42)")
    H.add_common_flags(p, data_set=False)
    p.add_argument("--pirina", default=H.reddit_data(), help="the Pirina posts (evaluation only)")
    p.add_argument(
        "--mixed-precision",
        default="no",
        help="train.py's --mixed-precision for every run (default: no, full precision, as every run measured here)",
    )
    p.add_argument(
        "--test-part",
        action="store_true",
        help="also score the behaviour suite's test part (once, for the model chosen; the tune part always)",
    )
    p.add_argument(
        "--added-errors",
        nargs=2,
        metavar=("OLD", "NEW"),
        choices=list(VARIANTS),
        help="the depression data set's validation posts that variant NEW (first seed) gets wrong and OLD got "
        "right: how many, by label, and 20 drawn at random",
    )
    p.add_argument(
        "--export",
        action="store_true",
        help="also export each run to ONNX (export.py, kept in the run folder) and score the README's example on int8",
    )
    H.add_run_flags(p, "default-model", "1 epoch on 200 training posts, seed 1: exercises the code")
    args = p.parse_args(argv)
    if args.quick:
        args.seeds = [1]
    args.runs = str(Path(args.runs).resolve())  # train.py runs from the project's root
    return args


def train_flags(args, variant, mode, seed):
    flags = [*MODES[mode], *VARIANTS[variant][0], "--model", args.model, "--seed", str(seed)]
    flags += ["--mixed-precision", args.mixed_precision]
    flags += ["--output-dir", args.runs, "--name", f"{variant}-{mode}-{seed}"]
    if args.quick:
        flags += ["--epochs", "1", "--max-train-samples", "200", "--max-length", "32", "--batch-size", "16"]
    return flags


def support_posts():
    """The shipped sample's support-group posts (left out of training by the default): texts and subreddits."""
    table = data.load_table(data.REDDIT_MH)
    table = table[table["subreddit"].isin(data.SUPPORT_SUBREDDITS)]
    return table["text"].tolist(), table["subreddit"].to_numpy()


def readme_examples(loaded, folder, export):
    """P(depressive) of the README's example on torch in fp32 and in bf16 (the folder's model as inference.load
    loaded it, at each precision) and, where export, on the int8 ONNX export (export.py runs where the folder holds
    none)."""
    out = {}
    for precision in ("fp32", "bf16"):
        at = dataclasses.replace(loaded, precision=precision)
        out[f"torch {precision}"] = float(np.asarray(inference.classify(at, [README_EXAMPLE]))[0, 1])
    if export:
        if inference.read_export_info(folder) is None:
            subprocess.run([sys.executable, "export.py", "--adapter", str(folder)], cwd=H.ROOT, check=True)
        loaded = inference.load(folder, backend="onnx-int8")
        out["onnx int8"] = float(np.asarray(inference.classify(loaded, [README_EXAMPLE]))[0, 1])
    return out


def seed_val_posts():
    """The depression data set's validation posts, cleaned as the default trains on them (its split is the one it
    gets alone, data.split): texts and labels."""
    _, val_ds, _, _ = data.load_splits(data.default_data(), normalize=True, log=lambda *_: None)
    return val_ds["text"], np.asarray(val_ds["label"])


def added_errors(old, new, posts, n=20, seed=0):
    """The posts `new` (a run folder) gets wrong and `old` got right, and the reverse: counts by label, and n of
    the added errors drawn at random (seed), with both models' P(depressive) in fp32."""
    texts, labels = posts
    probs = {name: np.asarray(inference.classify(inference.load(folder, precision="fp32"), texts))[:, 1]
             for name, folder in (("old", old), ("new", new))}  # fmt: skip
    wrong = {name: (p >= 0.5).astype(int) != labels for name, p in probs.items()}
    added, fixed = np.flatnonzero(wrong["new"] & ~wrong["old"]), np.flatnonzero(wrong["old"] & ~wrong["new"])
    drawn = sorted(np.random.default_rng(seed).choice(added, size=min(n, len(added)), replace=False).tolist())
    by_label = lambda rows: {str(y): int((labels[rows] == y).sum()) for y in (0, 1)}  # noqa: E731
    return {
        "old": str(old), "new": str(new), "posts": len(texts), "seed": seed,
        "added": len(added), "added_by_label": by_label(added), "fixed": len(fixed), "fixed_by_label": by_label(fixed),
        "drawn": [{"text": texts[i], "label": int(labels[i]), "p_old": float(probs["old"][i]),
                   "p_new": float(probs["new"][i])} for i in drawn],
    }  # fmt: skip


def evaluate_run(folder, pirina, support, tests, export=False):
    """Every figure of one run (cached beside the run folder as <folder>.default-model.json, outside it so that an
    export of the folder stays fresh; what a cache lacks, the README example per precision and the behaviour suite's
    test part where `tests` holds it, is added to it). tests: the behaviour suite's parts, {"tune": cases} and maybe
    "test"."""
    cache = Path(folder).parent / f"{Path(folder).name}.default-model.json"
    if (Path(folder) / "default-model.json").is_file():  # where caches were kept until issue 45
        (Path(folder) / "default-model.json").replace(cache)
    if cache.is_file():
        result = json.loads(cache.read_text())
        examples = "onnx int8" not in result.get("readme_examples", {}) and (export or "readme_examples" not in result)
        test_part = "test" in tests and "behaviour_test" not in result
        loaded = inference.load(folder) if examples or test_part else None
        if examples:
            result["readme_examples"] = readme_examples(loaded, folder, export)
        if test_part:
            result["behaviour_test"] = behaviour.summary_row(behaviour.run_model(loaded, tests["test"]))
        cache.write_text(json.dumps(result, indent=2) + "\n")
        return result
    info = json.loads((Path(folder) / "training.json").read_text())
    loaded = inference.load(folder)
    texts, labels, groups = pirina
    probs = np.asarray(inference.classify(loaded, texts))
    scored = metrics.probability_metrics(probs, labels, groups, None, PIRINA_PAIRS, resamples=0)
    result = {
        "train_seconds": sum(
            json.loads(line)["train_seconds"] for line in (Path(folder) / "metrics.jsonl").read_text().splitlines()
        ),
        "best_epoch": info["best_epoch"],
        "val_accuracy": info["best"]["accuracy"],
        "by_source": info["best"].get("by_source"),
        "pirina": {"auc": scored["auc"], "groups": scored["groups"], "do:nd": scored["group_auc"]["do:nd"]["auc"]},
        "behaviour": behaviour.summary_row(behaviour.run_model(loaded, tests["tune"])),
        "behaviour_part": "tune",
        "val_ece": (info.get("calibration") or {}).get("ece_after", info["best"].get("ece")),
        "readme_example": float(np.asarray(inference.classify(loaded, [README_EXAMPLE]))[0, 1]),
        "readme_examples": readme_examples(loaded, folder, export),
    }
    if "test" in tests:
        result["behaviour_test"] = behaviour.summary_row(behaviour.run_model(loaded, tests["test"]))
    trained_on = {k for k, v in data.parse_label_map(info.get("label_map") or []).items() if v is not None}
    if not trained_on & set(data.SUPPORT_SUBREDDITS):  # the support groups were never trained on
        flagged = np.asarray(inference.classify(loaded, support[0]))[:, 1] >= 0.5
        result["support_flagged"] = {g: float(flagged[support[1] == g].mean()) for g in data.SUPPORT_SUBREDDITS}
        result["support_flagged_all"] = float(flagged.mean())
    cache.write_text(json.dumps(result, indent=2) + "\n")
    return result


def figures(r):
    """The table's figures of one run, as fractions (None where not measured)."""
    original = (r["by_source"] or {}).get(SOURCES["original"], {})
    reddit = (r["by_source"] or {}).get(SOURCES["reddit"], {})
    groups = r["pirina"]["groups"]
    return {
        "seed val accuracy": original.get("accuracy", r["val_accuracy"] if not r["by_source"] else None),
        "RMHD dep+sw flagged": reddit.get("class_1_flagged"),
        "RMHD controls flagged": reddit.get("class_0_flagged"),
        "RMHD AUC": reddit.get("auc"),
        "support groups flagged": r.get("support_flagged_all"),
        "Pirina AUC": r["pirina"]["auc"],
        "Pirina ds flagged": groups["ds"],
        "Pirina nd flagged": groups["nd"],
        "Pirina bc flagged": groups["bc"],
        "Pirina do:nd": r["pirina"]["do:nd"],
        "a flagged": r["behaviour"]["a_flagged"],
        "b flagged": r["behaviour"]["b_flagged"],
        "c flagged": r["behaviour"]["c_flagged"],
        "d flips": r["behaviour"]["d_flips"],
        "e raised": r["behaviour"]["e_raised"],
        "f flagged": r["behaviour"].get("f_flagged"),
        "val ECE": r.get("val_ece"),
        "README example p": r["readme_example"],
        **{f"README p, {k}": v for k, v in r.get("readme_examples", {}).items()},
        **{f"{k.replace('_', ' ')} (test part)": v for k, v in r.get("behaviour_test", {}).items()},
    }


def mean_sd(values):
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def summarise(runs):
    """Per (variant, mode): mean and sd over the seeds of every figure."""
    out = {}
    for key in dict.fromkeys((r["variant"], r["mode"]) for r in runs):
        mine = [figures(r["result"]) for r in runs if (r["variant"], r["mode"]) == key]
        names = list(dict.fromkeys(name for m in mine for name in m))
        row = {name: mean_sd([m.get(name) for m in mine]) for name in names}
        readme = [m[n] for m in mine for n in m if n.startswith("README p, ")]
        out[" / ".join(key)] = {
            "seeds": len(mine),
            **row,
            "README p >= 0.8": (sum(p >= 0.8 for p in readme) / len(readme) if readme else None, None),
        }
    return out


def cell(pair, scale=100, digits=1):
    mean, sd = pair
    if mean is None:
        return "-"
    return f"{scale * mean:.{digits}f}" + (f" ± {scale * sd:.{digits}f}" if sd is not None else "")


def markdown(result):
    summary = result["summary"]
    columns = [c for c in dict.fromkeys(c for row in summary.values() for c in row) if c != "seeds"]
    lines = [
        f"Command: `{result['command']}`",
        "",
        f"Device: {result['device']}. Mean ± sd over the training seeds, %, except the README example's probability. "
        "Seed val: the depression data set's validation posts (the same 1,224 for every variant); RMHD: the "
        "shipped sample's validation posts (r/depression + r/SuicideWatch flagged, control posts flagged, AUC); "
        "support groups: the 13 support-group subreddits of the shipped sample where never trained on; Pirina: "
        "never trained on; a-f: bench/behaviour.py, the suite's tune part; val ECE: expected calibration error of "
        "the validation posts, x 100 (after the temperature where calibrated); README example p: P(depressive) of "
        "the README's example at predict.py's default precision on this machine; README p, torch fp32 / torch bf16 "
        "/ onnx int8: on each; README p >= 0.8: the share of runs and precisions where it is at least 0.8.",
        "",
        "| variant / mode | seeds | " + " | ".join(columns) + " |",
        "| --- | ---: |" + " ---: |" * len(columns),
    ]
    for name, row in summary.items():
        cells = [
            cell(row.get(c, (None, None)), 1, 3)
            if c.startswith("README") and "0.8" not in c
            else cell(row.get(c, (None, None)))
            for c in columns
        ]
        lines.append(f"| {name} | {row['seeds']} | " + " | ".join(cells) + " |")
    lines += ["", "Variants:", ""]
    for variant in dict.fromkeys(r["variant"] for r in result["runs"]):
        lines.append(f"- `{variant}`: {VARIANTS[variant][1]}")
    lines += ["", "Commands:", ""] + [f"- `{r['command']}`" for r in result["runs"]]
    if "added_errors" in result:
        lines += ["", *added_errors_markdown(result["added_errors"])]
    return "\n".join(lines) + "\n"


def added_errors_markdown(errors):
    def shown(text, limit=300):
        return (text if len(text) <= limit else text[:limit] + " [...]").replace("|", "/")

    lines = [
        f"Added errors: of the depression data set's {errors['posts']} validation posts, "
        f"{Path(errors['new']).name} gets {errors['added']} wrong that {Path(errors['old']).name} got right "
        f"(label 0: {errors['added_by_label']['0']}, label 1: {errors['added_by_label']['1']}) and {errors['fixed']} "
        f"right that it got wrong (label 0: {errors['fixed_by_label']['0']}, label 1: {errors['fixed_by_label']['1']}"
        f"). {len(errors['drawn'])} of the added errors, drawn at random (seed {errors['seed']}); P(depressive) in "
        "fp32; texts as trained on (normalised), cut at 300 characters:",
        "",
        "| # | label | P old | P new | text |",
        "| ---: | ---: | ---: | ---: | --- |",
    ]
    for i, row in enumerate(errors["drawn"], 1):
        lines.append(f"| {i} | {row['label']} | {row['p_old']:.3f} | {row['p_new']:.3f} | {shown(row['text'])} |")
    return lines


def draw(result):
    import matplotlib.pyplot as plt

    shown = ["seed val accuracy", "RMHD dep+sw flagged", "RMHD controls flagged", "Pirina nd flagged",
             "Pirina bc flagged", "Pirina AUC", "a flagged", "b flagged", "c flagged", "d flips",
             "f flagged"]  # fmt: skip
    summary = result["summary"]
    fig, ax = plt.subplots(figsize=(13, 4.2))
    width = 0.8 / len(summary)
    for i, (name, row) in enumerate(summary.items()):
        ax.bar([j + i * width for j in range(len(shown))], [100 * (row[c][0] or 0) for c in shown], width, label=name)
    ax.set_xticks([j + width * (len(summary) - 1) / 2 for j in range(len(shown))], shown, rotation=30, ha="right")
    ax.set(ylabel="%", ylim=(0, 100), title="default training data: posts never trained on")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return fig


def main(argv=None):
    args = parse_args(argv)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    pirina = H.reddit_posts(args.pirina)
    support = support_posts()
    parts = ["tune", "test"] if args.test_part else ["tune"]  # the test part is for the model chosen, once
    tests = {part: behaviour.load_cases(part=part) for part in parts}
    runs = []
    for variant in args.variants:
        for mode in args.modes:
            for seed in args.seeds:
                flags = train_flags(args, variant, mode, seed)
                folder, command = H.run_train(flags, Path(args.runs) / f"{variant}-{mode}-{seed}")
                print(f"{variant} / {mode} / seed {seed}: evaluating {folder}", flush=True)
                result = evaluate_run(folder, pirina, support, tests, args.export)
                runs.append({"variant": variant, "mode": mode, "seed": seed, "command": command, "result": result})
    result = {
        "command": H.command_line(__file__, argv),
        "device": H.device_name(),
        "runs": runs,
        "summary": summarise(runs),
    }
    if args.added_errors:
        old, new = (Path(args.runs) / f"{v}-{args.modes[0]}-{args.seeds[0]}" for v in args.added_errors)
        result["added_errors"] = added_errors(old, new, seed_val_posts())
    stem = H.results_stem(args)
    H.write_results(stem, result, markdown(result), draw)


if __name__ == "__main__":
    main()
