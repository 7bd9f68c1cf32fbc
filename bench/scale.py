"""
More processes and more data, measured: training with one process against several at the same global batch, and
predict.py's peak memory and speed as its input grows.

    python -m bench.scale --quick   # a couple of minutes on a CPU
    python -m bench.scale           # writes bench/results/scale-<machine>.{json,md,png}

Training: `python train.py` (one process, all of torch's threads) against `torchrun --nproc_per_node N train.py`
(torchrun gives each process one thread), with --batch-size chosen so that the global batch is the same, on the
first --train-posts posts of the default split; posts/s is train.py's own figure (all processes together).
Prediction: an adapter on a tiny random BERT (hidden 32, 2 layers, the real tokenizer), so that the figure is
predict.py's own memory and not the model's, over text files of real posts repeated to each size, with
--output; peak resident memory of the predict.py process (ru_maxrss of a wrapper whose only child it is).
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import matplotlib.pyplot as plt
import torch
from transformers import BertConfig, BertModel

import data
import model as M
from bench.harness import PEAK_WRAPPER, ROOT, add_common_flags, command_line, device_name, results_stem, write_results


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
    p.add_argument("--quick", action="store_true", help="small sizes: a short run on a CPU")
    add_common_flags(p)
    p.add_argument("--processes", type=int, default=2, help="processes to compare with one (default: 2)")
    p.add_argument("--global-batch", type=int, default=32, help="posts per step over all processes (default: 32)")
    p.add_argument("--train-posts", type=int, default=None, help="training posts (default: 1500, quick 128)")
    p.add_argument("--epochs", type=int, default=None, help="epochs of each training run (default: 2, quick 1)")
    p.add_argument(
        "--predict-posts",
        type=int,
        nargs="+",
        default=None,
        help="input sizes for predict.py (default: 30000 300000, quick 2000 20000)",
    )
    args = p.parse_args(argv)
    args.train_posts = args.train_posts or (128 if args.quick else 1500)
    args.epochs = args.epochs or (1 if args.quick else 2)
    args.predict_posts = args.predict_posts or ([2000, 20000] if args.quick else [30000, 300000])
    return args


def train_processes(args, processes, folder):
    """One training run with `processes` processes at the global batch; returns its figures from metrics.jsonl."""
    launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]  # a free port
    launcher = launcher if processes > 1 else []
    command = [
        sys.executable,
        *launcher,
        "train.py",
        "--model",
        args.model,
        "--data",
        args.data,
        "--max-train-samples",
        str(args.train_posts),
        "--max-eval-samples",
        "200",
        "--epochs",
        str(args.epochs),
        "--batch-size",
        str(args.global_batch // processes),
        "--output-dir",
        str(folder),
        "--name",
        f"processes-{processes}",
    ]
    start = time.perf_counter()
    subprocess.run(command, cwd=ROOT, check=True, capture_output=True, text=True)
    wall = time.perf_counter() - start
    run = folder / f"processes-{processes}"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    info = json.loads((run / "training.json").read_text())
    return {
        "processes": processes,
        "batch_size": args.global_batch // processes,
        "global_batch_size": info["global_batch_size"],
        "posts_per_second": [r["examples_per_second"] for r in rows],
        "train_seconds": [r["train_seconds"] for r in rows],
        "wall_seconds": wall,
        "accuracy": info["best"]["accuracy"],
        "command": " ".join(command[1:]),
    }


def tiny_adapter(folder, data_file):
    """A Pfeiffer adapter on a tiny random BERT, trained one epoch by train.py (the real saving path)."""
    tokenizer = M.load_tokenizer(M.OFFLINE_MINILM)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,
    )
    torch.manual_seed(0)
    BertModel(config).save_pretrained(folder / "tiny-bert")
    tokenizer.save_pretrained(folder / "tiny-bert")
    subprocess.run(
        [
            sys.executable,
            "train.py",
            "--model",
            str(folder / "tiny-bert"),
            "--data",
            data_file,
            "--max-train-samples",
            "200",
            "--epochs",
            "1",
            "--output-dir",
            str(folder),
            "--name",
            "tiny",
        ],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    return folder / "tiny"


def predict_memory(adapter, texts, posts, folder):
    """predict.py --file over `posts` posts (real texts repeated): peak resident MB and posts/s."""
    path = folder / f"posts-{posts}.txt"
    with open(path, "w") as f:
        f.writelines(f"{texts[i % len(texts)]} {i}\n" for i in range(posts))
    output = folder / f"predictions-{posts}.jsonl"
    start = time.perf_counter()
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            PEAK_WRAPPER,
            sys.executable,
            "predict.py",
            "--adapter",
            str(adapter),
            "--file",
            str(path),
            "--output",
            str(output),
        ],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - start
    written = sum(1 for _ in open(output))
    return {
        "posts": posts,
        "written": written,
        "peak_mb": int(proc.stdout.split()[-1]) / 1024,
        "seconds": seconds,
        "posts_per_second": posts / seconds,
        "input_mb": path.stat().st_size / 1e6,
    }


def report(results):
    lines = [
        f"# Scale: processes and input size ({results['device']})",
        "",
        f"Command: `{results['command']}`",
        "",
        "| training | batch per process | global batch | posts/s by epoch | train s by epoch | wall s | accuracy |",
        "| --- | ---: | ---: | --- | --- | ---: | ---: |",
    ]
    for r in results["training"]:
        lines.append(
            f"| {r['processes']} process(es) | {r['batch_size']} | {r['global_batch_size']} | "
            f"{', '.join(f'{v:.1f}' for v in r['posts_per_second'])} | "
            f"{', '.join(f'{v:.1f}' for v in r['train_seconds'])} | {r['wall_seconds']:.0f} | "
            f"{r['accuracy']:.4f} |"
        )
    one, many = results["training"]
    lines += [
        "",
        f"{many['processes']} processes / 1 process, posts/s of the last epoch: "
        f"{many['posts_per_second'][-1] / one['posts_per_second'][-1]:.2f}x",
        "",
        "| predict.py --file --output | input MB | peak resident MB | posts/s |",
        "| ---: | ---: | ---: | ---: |",
    ]
    for r in results["predict"]:
        lines.append(
            f"| {r['posts']:,} posts | {r['input_mb']:.1f} | {r['peak_mb']:.0f} | {r['posts_per_second']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def chart(results):
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    names = [f"{r['processes']} process(es)\n{r['processes']} x {r['batch_size']}" for r in results["training"]]
    left.bar(names, [r["posts_per_second"][-1] for r in results["training"]], color=["tab:blue", "tab:orange"])
    left.set_ylabel("training posts/s (last epoch)")
    left.set_title("same global batch")
    posts, peaks = [r["posts"] for r in results["predict"]], [r["peak_mb"] for r in results["predict"]]
    right.plot(posts, peaks, "o-")
    for x, y in zip(posts, peaks):
        right.annotate(f"{y:.0f} MB", (x, y), textcoords="offset points", xytext=(0, 8), ha="center", fontsize=8)
    right.set_xscale("log")
    right.set_ylim(0, 1.3 * max(peaks))
    right.set_xlabel("posts given to predict.py --file")
    right.set_ylabel("peak resident MB")
    right.set_title("streaming prediction")
    fig.suptitle(results["device"], fontsize=9)
    return fig


def main(argv=None):
    args = parse_args(argv)
    df, _, _ = data.clean(data.load_table(args.data))
    texts = df["text"].str.replace("\n", " ").str.slice(0, 300).tolist()
    results = {"device": device_name(), "command": command_line("scale.py", argv), "training": [], "predict": []}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for processes in (1, args.processes):
            print(f"training with {processes} process(es)...", flush=True)
            results["training"].append(train_processes(args, processes, tmp))
        small = tmp / "small.csv"
        df.sample(min(400, len(df)), random_state=0).to_csv(small, index=False)
        adapter = tiny_adapter(tmp, str(small))
        for posts in args.predict_posts:
            print(f"predict.py on {posts:,} posts...", flush=True)
            results["predict"].append(predict_memory(adapter, texts, posts, tmp))
    write_results(results_stem(args, "scale"), results, report(results), chart)


if __name__ == "__main__":
    main()
