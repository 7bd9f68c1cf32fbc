"""
bf16 against fp32 where the CPU computes bf16 natively: time per epoch, accuracy over seeds, and prediction.

    python -m bench.precision --runs runs/default-model         # speed, then accuracy against the fp32 runs there
    python -m bench.precision --quick --model DIR --data FILE   # tiny runs that exercise it (CI)

Speed: one epoch of `train.py --data original` per run, in a fresh process, `--mixed-precision no` against `bf16`
(what `auto` picks on such a CPU), for full fine-tuning, Pfeiffer and Pfeiffer in the upper half (its frozen lower
half cached: in bf16 the cache holds bf16 states), pairs alternating which runs first; seconds are train.py's own
`train_seconds` (the epoch's steps, the caching pass included). Accuracy: bf16 runs with train.py's defaults and
seeds, paired with the fp32 runs of the same setup and seed in --runs (`<variant>-<mode>-<seed>`, as
bench/default_model.py names them), on the same 1,224 validation posts. Prediction: the fp32 run's folder classifies
the validation posts on torch in fp32 and in bf16 (best of 3 passes each, alternating), and the labels that differ
are counted. The Trainer comparison is bench/peers.py with --precision and --peer-precision. Writes
bench/results/<name>-<machine>[-quick].{json,md,png}.
"""

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import data
import hardware
import inference
from bench import harness as H
from report import markdown_table

SETUPS = {"full": "full", "pfeiffer": "pfeiffer", "pfeiffer-upper-half": "pfeiffer-upper-half"}
ACCURACY_MODES = {"full": ["--mode", "full"], "pfeiffer": ["--mode", "adapter"]}


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    H.add_common_flags(p)
    p.add_argument("--setups", nargs="+", default=list(SETUPS), choices=list(SETUPS), help="what to time")
    p.add_argument("--pairs", type=int, default=2, help="alternated fp32/bf16 pairs per setup (default: 2)")
    p.add_argument("--runs", default=None, help="folder of fp32 runs to pair with bf16 runs (no folder: no accuracy)")
    p.add_argument("--seeds", nargs="+", type=int, default=[42, 43, 44], help="training seeds of the accuracy runs")
    H.add_run_flags(p, "precision", "64 training posts, 1 pair, no accuracy runs")
    args = p.parse_args(argv)
    if args.quick:
        args.pairs, args.runs = 1, None
    return args


def epoch_seconds(args, setup, precision, folder):
    """One epoch of train.py in a fresh process; its metrics.jsonl row."""
    flags = H.setup_flags(setup, args.model) + ["--model", args.model, "--data", args.data, "--epochs", "1"]
    flags += ["--mixed-precision", precision, "--output-dir", str(folder), "--name", f"{setup}-{precision}"]
    flags += ["--max-train-samples", "64", "--max-eval-samples", "32"] if args.quick else []
    run, _ = H.run_train(flags, Path(folder) / f"{setup}-{precision}")
    row = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    info = json.loads((run / "training.json").read_text())
    return {"seconds": row["train_seconds"], "accuracy": row["accuracy"], "mixed_precision": info["mixed_precision"],
            "attention": info.get("attention"), "cache_seconds": row["cache_seconds"]}  # fmt: skip


def speed(args):
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for setup in args.setups:
            rows[setup] = []
            for k in range(args.pairs):
                order = ("no", "bf16") if k % 2 == 0 else ("bf16", "no")
                pair = {p: epoch_seconds(args, setup, p, Path(tmp) / f"{setup}-{k}") for p in order}
                rows[setup].append(pair)
                print(f"{setup} pair {k + 1}: fp32 {pair['no']['seconds']:.1f} s, bf16 {pair['bf16']['seconds']:.1f} s",
                      file=sys.stderr, flush=True)  # fmt: skip
    return rows


def accuracy(args):
    """bf16 runs of train.py's defaults (3 epochs), paired by seed with the fp32 runs in --runs."""
    out = {}
    for mode, flags in ACCURACY_MODES.items():
        pairs = []
        for seed in args.seeds:
            fp32 = Path(args.runs) / f"original-{mode}-{seed}"
            if not (fp32 / "training.json").is_file():
                continue
            run, command = H.run_train(
                [*flags, "--data", "original", "--model", args.model, "--seed", str(seed), "--mixed-precision", "bf16",
                 "--output-dir", str(Path(args.runs).resolve()), "--name", f"original-{mode}-bf16-{seed}"],
                Path(args.runs).resolve() / f"original-{mode}-bf16-{seed}",
            )  # fmt: skip
            a, b = (json.loads((r / "training.json").read_text()) for r in (fp32, run))
            pairs.append({"seed": seed, "fp32": a["best"]["accuracy"], "bf16": b["best"]["accuracy"],
                          "fp32_seconds": epoch_mean(fp32), "bf16_seconds": epoch_mean(run),
                          "command": command})  # fmt: skip
        if pairs:
            diffs = [100 * (p["bf16"] - p["fp32"]) for p in pairs]
            out[mode] = {"pairs": pairs, "mean_difference_points": statistics.fmean(diffs),
                         "sd_difference_points": statistics.stdev(diffs) if len(diffs) > 1 else None}  # fmt: skip
    return out


def epoch_mean(run):
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return statistics.fmean(r["train_seconds"] for r in rows)


def prediction(args):
    """fp32 against bf16 on torch: posts/s on the validation posts and the labels that differ."""
    _, val_ds, _, _ = data.load_splits(args.data)
    texts = list(val_ds["text"])[: 64 if args.quick else None]
    out = {}
    for mode in ACCURACY_MODES:
        folder = Path(args.runs or "") / f"original-{mode}-42"
        if not args.runs or not (folder / "training.json").is_file():
            continue
        loaded = {p: inference.load(folder, precision=p) for p in ("fp32", "bf16")}
        probs, best = {}, {"fp32": float("inf"), "bf16": float("inf")}
        for _ in range(3):
            for p in ("fp32", "bf16"):
                start = time.perf_counter()
                probs[p] = np.asarray(inference.classify(loaded[p], texts))
                best[p] = min(best[p], time.perf_counter() - start)
        changed = int((probs["fp32"].argmax(1) != probs["bf16"].argmax(1)).sum())
        largest = float(np.abs(probs["fp32"] - probs["bf16"]).max())
        out[mode] = {"posts": len(texts), **{f"{p}_posts_per_second": len(texts) / best[p] for p in best},
                     "labels_changed": changed, "max_probability_difference": largest}  # fmt: skip
    return out


def markdown(result):
    lines = [
        f"Command: `{result['command']}`",
        "",
        f"Device: {result['device']}; native bf16: {result['native_bf16']}.",
        "",
    ]
    rows = []
    for setup, pairs in result["speed"].items():
        for k, pair in enumerate(pairs, 1):
            fp32, bf16 = pair["no"]["seconds"], pair["bf16"]["seconds"]
            rows.append([setup, k, f"{fp32:.1f}", f"{bf16:.1f}", f"{fp32 / bf16:.2f}x", pair["bf16"]["attention"]])
    lines += ["One epoch, train.py's `train_seconds`:", ""]
    lines += [markdown_table(["setup", "pair", "fp32 s", "bf16 s", "fp32 / bf16", "bf16 attention"], rows), ""]
    if result["accuracy"]:
        rows = []
        for mode, r in result["accuracy"].items():
            for p in r["pairs"]:
                rows.append([mode, p["seed"], f"{100 * p['fp32']:.2f}", f"{100 * p['bf16']:.2f}",
                             f"{100 * (p['bf16'] - p['fp32']):+.2f}", f"{p['fp32_seconds']:.0f}",
                             f"{p['bf16_seconds']:.0f}"])  # fmt: skip
            sd = r["sd_difference_points"]
            rows.append(
                [
                    mode,
                    "mean",
                    "",
                    "",
                    f"{r['mean_difference_points']:+.2f}" + (f" ± {sd:.2f}" if sd is not None else ""),
                    "",
                    "",
                ]
            )
        lines += [
            "Accuracy (best epoch, 1,224 validation posts), paired by seed; seconds per epoch of those runs, "
            "which shared the machine with other runs (one thread each): not a speed measurement.",
            "",
        ]
        lines += [markdown_table(["mode", "seed", "fp32 %", "bf16 %", "bf16 - fp32, points", "fp32 s/epoch",
                                  "bf16 s/epoch"], rows), ""]  # fmt: skip
    if result["prediction"]:
        rows = [[mode, r["posts"], f"{r['fp32_posts_per_second']:.1f}", f"{r['bf16_posts_per_second']:.1f}",
                 f"{r['bf16_posts_per_second'] / r['fp32_posts_per_second']:.2f}x", r["labels_changed"],
                 f"{r['max_probability_difference']:.4f}"] for mode, r in result["prediction"].items()]  # fmt: skip
        lines += ["Torch prediction on the validation posts (best of 3 passes):", ""]
        lines += [markdown_table(["model", "posts", "fp32 posts/s", "bf16 posts/s", "bf16 / fp32", "labels changed",
                                  "largest probability difference"], rows), ""]  # fmt: skip
    return "\n".join(lines)


def draw(result):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.6))
    setups = list(result["speed"])
    fp32 = [statistics.median(p["no"]["seconds"] for p in result["speed"][s]) for s in setups]
    bf16 = [statistics.median(p["bf16"]["seconds"] for p in result["speed"][s]) for s in setups]
    ax.bar([i - 0.2 for i in range(len(setups))], fp32, 0.4, label="fp32")
    ax.bar([i + 0.2 for i in range(len(setups))], bf16, 0.4, label="bf16 (auto)")
    ax.set_xticks(range(len(setups)), setups)
    ax.set(ylabel="seconds per epoch (median of pairs)", title=result["device"])
    ax.title.set_fontsize(8)
    ax.legend()
    return fig


def main(argv=None):
    args = parse_args(argv)
    result = {
        "command": H.command_line(__file__, argv),
        "device": H.device_name(),
        "native_bf16": hardware.cpu_has_bf16(),
        "speed": speed(args),
        "accuracy": accuracy(args) if args.runs else {},
    }
    result["prediction"] = prediction(args)
    stem = H.results_stem(args)
    H.write_results(stem, result, markdown(result), draw)


if __name__ == "__main__":
    main()
