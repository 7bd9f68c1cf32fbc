"""
Speed against accuracy by the number of layers that hold adapters, with the frozen lower layers computed once
(train.py's default) or every epoch (--no-cache-frozen), beside full fine-tuning: whole train.py runs.

    python -m bench.layers --quick                     # a few minutes on a CPU
    python -m bench.layers                             # full data, 3 epochs: about an hour on 2 CPU cores
    python -m bench.layers --train-posts 1500 --seeds 42 43 44 --runs full upper-3 upper-3-uncached

Each run is `python train.py ...` in its own process, one after another (the machine to itself); the figures are
train.py's own (metrics.jsonl, training.json): training seconds per epoch (the caching pass counts in the first),
summed seconds, best validation accuracy, and the peak resident memory of the run (ru_maxrss of a wrapper whose
only child it is). Writes bench/results/layers-<machine>[-<posts>].{json,md,png}.
"""

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import matplotlib.pyplot as plt

from bench.harness import PEAK_WRAPPER, ROOT, add_common_flags, command_line, device_name, machine_slug, write_results

# name -> (layers that hold adapters of 6, train.py flags)
RUNS = {
    "full": (None, ["--mode", "full"]),
    "pfeiffer": (6, ["--mode", "adapter"]),
    "upper-3": (3, ["--mode", "adapter", "--leave-out", "0", "1", "2"]),
    "upper-3-uncached": (3, ["--mode", "adapter", "--leave-out", "0", "1", "2", "--no-cache-frozen"]),
    "upper-2": (2, ["--mode", "adapter", "--leave-out", "0", "1", "2", "3"]),
    "upper-1": (1, ["--mode", "adapter", "--leave-out", "0", "1", "2", "3", "4"]),
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
    p.add_argument("--quick", action="store_true", help="200 posts, 1 epoch: a short run")
    add_common_flags(p)
    p.add_argument("--runs", nargs="+", choices=list(RUNS), default=list(RUNS), help="which runs (default: all)")
    p.add_argument("--seeds", type=int, nargs="+", default=[42], help="a run per seed (default: 42)")
    p.add_argument("--train-posts", type=int, default=None, help="first N training posts (default: all; quick 200)")
    p.add_argument("--epochs", type=int, default=None, help="epochs per run (default: 3, quick 1)")
    args = p.parse_args(argv)
    args.train_posts = args.train_posts or (200 if args.quick else None)
    args.epochs = args.epochs or (1 if args.quick else 3)
    return args


def train_run(args, name, seed, folder):
    flags = RUNS[name][1] + [
        "--model",
        args.model,
        "--data",
        args.data,
        "--epochs",
        str(args.epochs),
        "--seed",
        str(seed),
        "--output-dir",
        str(folder),
        "--name",
        f"{name}-{seed}",
    ]
    if args.train_posts:
        flags += ["--max-train-samples", str(args.train_posts)]
    if args.quick:
        flags += ["--max-eval-samples", "100"]
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", PEAK_WRAPPER, sys.executable, "train.py", *flags],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{name} (seed {seed}) failed:\n{proc.stderr[-3000:]}")
    run = folder / f"{name}-{seed}"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    info = json.loads((run / "training.json").read_text())
    return {
        "run": name,
        "seed": seed,
        "adapter_layers": RUNS[name][0],
        "wall_seconds": time.perf_counter() - start,
        "train_seconds": [r["train_seconds"] for r in rows],
        "cache_seconds": rows[0].get("cache_seconds", 0),
        "accuracy": [r["accuracy"] for r in rows],
        "best_accuracy": info["best"]["accuracy"],
        "best_f1": info["best"]["f1"],
        "peak_mb": int(proc.stdout.split()[-1]) / 1024,
        "trainable": info["parameters"]["trainable"],
        "command": "python train.py " + " ".join(flags),
    }


def summary(runs):
    """Per run name: means over seeds, and the seed spread of the best accuracy."""
    out = {}
    for name in dict.fromkeys(r["run"] for r in runs):
        mine = [r for r in runs if r["run"] == name]
        best = [r["best_accuracy"] for r in mine]
        later = [s for r in mine for s in r["train_seconds"][1:]]
        out[name] = {
            "seeds": [r["seed"] for r in mine],
            "adapter_layers": mine[0]["adapter_layers"],
            "summed_seconds": statistics.mean(sum(r["train_seconds"]) for r in mine),
            "first_epoch_seconds": statistics.mean(r["train_seconds"][0] for r in mine),
            "later_epoch_seconds": statistics.mean(later) if later else None,
            "best_accuracy": statistics.mean(best),
            "best_accuracy_sd": statistics.stdev(best) if len(best) > 1 else 0.0,
            "peak_mb": statistics.mean(r["peak_mb"] for r in mine),
            "trainable": mine[0]["trainable"],
        }
    return out


def report(result):
    s = result["summary"]
    full = s.get("full")
    lines = [
        f"# Layers with adapters: speed and accuracy ({result['device']})",
        "",
        f"Command: `{result['command']}`; training posts: {result['train_posts'] or 'all'}, epochs: {result['epochs']}",
        "",
        "| run | adapter layers | seeds | summed train s | first epoch s | later epochs s | x full (summed) "
        "| x full (later epochs) | best accuracy (sd) | peak MB | trainable |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, r in s.items():
        later = f"{r['later_epoch_seconds']:.1f}" if r["later_epoch_seconds"] else "-"
        vs_sum = f"{full['summed_seconds'] / r['summed_seconds']:.2f}x" if full else "-"
        vs_later = (
            f"{full['later_epoch_seconds'] / r['later_epoch_seconds']:.2f}x"
            if full and full["later_epoch_seconds"] and r["later_epoch_seconds"]
            else "-"
        )
        lines.append(
            f"| {name} | {r['adapter_layers'] or 'all (full)'} | {', '.join(map(str, r['seeds']))} | "
            f"{r['summed_seconds']:.1f} | {r['first_epoch_seconds']:.1f} | {later} | {vs_sum} | {vs_later} | "
            f"{100 * r['best_accuracy']:.2f}% ({100 * r['best_accuracy_sd']:.2f}) | {r['peak_mb']:.0f} | "
            f"{r['trainable']:,} |"
        )
    return "\n".join(lines) + "\n"


def chart(result):
    s = result["summary"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, r in s.items():
        ax.errorbar(r["summed_seconds"], 100 * r["best_accuracy"], yerr=100 * r["best_accuracy_sd"], fmt="o", capsize=3)
        ax.annotate(
            name, (r["summed_seconds"], 100 * r["best_accuracy"]), textcoords="offset points", xytext=(5, 5), fontsize=8
        )
    cached = [r for n, r in s.items() if n.startswith("upper") and "uncached" not in n or n == "pfeiffer"]
    cached.sort(key=lambda r: r["adapter_layers"])
    if len(cached) > 1:
        ax.plot(
            [r["summed_seconds"] for r in cached],
            [100 * r["best_accuracy"] for r in cached],
            "--",
            color="gray",
            label="adapters in the top " + ", ".join(str(r["adapter_layers"]) for r in cached) + " layers",
        )
        ax.legend(fontsize=8)
    ax.set(
        xlabel=f"training seconds, {result['epochs']} epochs summed",
        ylabel="best validation accuracy (%)",
        title=result["device"],
    )
    return fig


def main(argv=None):
    args = parse_args(argv)
    result = {
        "device": device_name(),
        "command": command_line("layers.py", argv),
        "train_posts": args.train_posts,
        "epochs": args.epochs,
        "runs": [],
    }
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            for name in args.runs:
                r = train_run(args, name, seed, Path(tmp))
                print(
                    f"{name:<18} seed {seed}: {sum(r['train_seconds']):7.1f} s "
                    f"({', '.join(f'{t:.1f}' for t in r['train_seconds'])}), best {r['best_accuracy']:.4f}, "
                    f"peak {r['peak_mb']:.0f} MB",
                    flush=True,
                )
                result["runs"].append(r)
    result["summary"] = summary(result["runs"])
    suffix = "-quick" if args.quick else (f"-{args.train_posts}" if args.train_posts else "")
    write_results(Path(args.out) / f"layers-{machine_slug()}{suffix}", result, report(result), chart)


if __name__ == "__main__":
    main()
