"""
Inference backends side by side, on the same posts in one run: PyTorch eager, ONNX Runtime fp32 and ONNX Runtime
int8 (export.py's), for a fully fine-tuned model, a Pfeiffer adapter and a LoRA adapter (merged), each measured in
a fresh process: posts/s and peak memory over the validation posts, accuracy on them, the share of the fp32 limit
of this CPU, and the cold start of a one-post `python predict.py`. Then classify_corpus.py on Ray with 1 and 2
actors.

    python -m bench.backends --runs /work/runs     # runs full-42-42, pfeiffer-42-42, lora-42-42 (harness.train_setup)
    python -m bench.backends --quick --runs R      # 64 posts, torch and ONNX fp32 only, no Ray: a check that it runs

The folders are copied to a temporary folder and exported there (export.py's checks on 512 training posts); the
originals are not touched. A backend that export.py did not keep is left out of the table, with the reason printed.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from textclassifier import hardware, inference

ROOT = Path(__file__).resolve().parent.parent  # not bench.harness.ROOT: the measuring workers must not import torch

SETUPS = {"full": "full-42-42", "pfeiffer": "pfeiffer-42-42", "lora merged": "lora-42-42"}
BACKENDS = ("torch", "torch-bf16", "onnx", "onnx-int8")  # torch: fp32; torch-bf16: under bf16 autocast
QUICK_BACKENDS = ("torch", "onnx")  # --quick: one torch and one ONNX path, no int8 quantisation
ONE_POST = "i can't get out of bed anymore and nothing feels worth it"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", required=True, help="folder holding the trained runs named in SETUPS")
    p.add_argument("--data", default=None, help="data set whose validation posts are classified (default: train.py's)")
    p.add_argument("--repeats", type=int, default=2, help="timed passes over the posts; the best counts (default 2)")
    p.add_argument("--ray-posts", type=int, default=20000, help="posts in the Ray corpus (default: 20000)")
    # bench.harness's add_run_flags and --out, written out: parsing must not import torch (the workers parse too)
    p.add_argument(
        "--quick", action="store_true", help="64 posts, 1 pass, torch and ONNX fp32 only, no Ray: a check that it runs"
    )
    p.add_argument("--name", default="backends", help="results file name (default: backends)")
    p.add_argument("--out", default=str(ROOT / "bench" / "results"), help="folder for the JSON, table and chart")
    p.add_argument("--worker", nargs=3, metavar=("FOLDER", "BACKEND", "POSTS"), help=argparse.SUPPRESS)
    return p.parse_args(argv)


def measure(folder, backend, posts_file, repeats):
    """In this (fresh) process, which imports torch only for the torch backend (bench.harness and pandas are not
    imported here, so that the peak memory is the backend's): load, one untimed pass over 64 posts, then the best of
    `repeats` timed passes."""
    import numpy as np

    rows = [json.loads(line) for line in Path(posts_file).read_text().splitlines()]
    texts, labels = [r["text"] for r in rows], np.array([r["label"] for r in rows])
    start = time.perf_counter()
    torch_precision = {"torch": "fp32", "torch-bf16": "bf16"}
    loaded = inference.load(folder, backend="torch" if backend in torch_precision else backend,
                            precision=torch_precision.get(backend, "auto"))  # fmt: skip
    load_seconds = time.perf_counter() - start
    inference.classify(loaded, texts[:64])
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        probs = inference.classify(loaded, texts)
        seconds.append(time.perf_counter() - start)
    probs = probs.numpy() if hasattr(probs, "numpy") else probs
    return {
        "posts_per_second": len(texts) / min(seconds),
        "load_seconds": load_seconds,
        "accuracy": float((probs.argmax(1) == labels).mean()),
        "peak_memory_mb": peak_memory_mb(),
        "probabilities": probs[:, 1].tolist(),
    }


def peak_memory_mb():
    """This process's peak resident memory (VmHWM, Linux), as bench.harness.proc_status_mb reads it."""
    status = Path("/proc/self/status").read_text().splitlines()
    return int(next(line for line in status if line.startswith("VmHWM:")).split()[1]) / 1024


def cold_start(folder, backend):
    """Wall seconds of a one-post `python predict.py` (a new interpreter, imports and model load included)."""
    start = time.perf_counter()
    flags = {"torch": ["--backend", "torch", "--precision", "fp32"], "torch-bf16": ["--backend", "torch", "--precision",
             "bf16"]}.get(backend, ["--backend", backend])  # fmt: skip
    cmd = [sys.executable, "predict.py", "--adapter", str(folder), *flags, ONE_POST]
    subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True)
    return time.perf_counter() - start


def fp32_limit(folder, posts_file):
    """Posts/s that this CPU's fp32 peak allows for the model's linear layers at the posts' real lengths: FLOPs per
    post = 2 x (weights in the encoder's linear layers) x tokens (attention scores and the rest left out). The peak
    is nominal: cores x the clock /proc/cpuinfo reports (a virtual machine may report its base clock, not the boost)
    x FLOP per cycle, assuming two fused multiply-add units of the widest vector the CPU flags list (AVX-512: 2 x 16
    x 2 = 64; AVX2: 32; AMD Zen 4 runs AVX-512 at half width, so 32 there). For comparison: a 2048 x 2048 fp32
    matrix product in torch on every core, the best of 5."""
    import pandas as pd
    import torch

    import model as M

    info = json.loads((Path(folder) / "training.json").read_text())
    base = M.load_base_model(info["base_model"])
    linear = sum(
        m.weight.numel() for name, m in base.named_modules() if "encoder" in name and hasattr(m, "in_features")
    )
    tokenizer = M.load_tokenizer(info["base_model"])
    texts = pd.read_json(posts_file, lines=True)["text"].tolist()
    tokens = sum(len(ids) for ids in tokenizer(texts, truncation=True, max_length=info["max_length"])["input_ids"])
    cpu = hardware.cpu_info()
    mhz = cpu["cpu MHz"]
    zen4 = cpu.get("vendor_id") == "AuthenticAMD" and cpu.get("cpu family") == "25"
    flop_per_cycle = 64 if "avx512f" in cpu["flags"] and not zen4 else 32
    cores = os.cpu_count() or 1
    ghz = (sum(mhz) / len(mhz) / 1000) if mhz else None
    peak = cores * ghz * flop_per_cycle * 1e9 if ghz else None
    flops_per_post = 2 * linear * tokens / len(texts)
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    measured = 2 * 2048**3 / best
    return {
        "linear_weights": linear,
        "mean_tokens": tokens / len(texts),
        "gflop_per_post": flops_per_post / 1e9,
        "cores": cores,
        "ghz": ghz,
        "flop_per_cycle": flop_per_cycle,
        "peak_gflops": peak / 1e9 if peak else None,
        "posts_per_second_limit": peak / flops_per_post if peak else None,
        "torch_matmul_gflops": measured / 1e9,
    }


def ray_throughput(folder, posts, actors, tmp, run):
    """classify_corpus.py over `posts` in 4 .jsonl shards with `actors` actors: posts/s over the whole command."""
    corpus, results = Path(tmp) / "corpus", Path(tmp) / f"results-{run}"
    if not corpus.exists():
        corpus.mkdir()
        for i, part in enumerate(range(0, len(posts), -(-len(posts) // 4))):
            posts.iloc[part : part + -(-len(posts) // 4)][["text"]].to_json(
                corpus / f"part-{i}.jsonl", orient="records", lines=True
            )
    cmd = [sys.executable, "classify_corpus.py", "--adapter", str(folder), "--input", str(corpus)]
    start = time.perf_counter()
    subprocess.run([*cmd, "--output", str(results), "--actors", str(actors)], cwd=ROOT, check=True, capture_output=True)
    return {"actors": actors, "posts": len(posts), "seconds": time.perf_counter() - start}


def markdown(result):
    limit = result["fp32_limit"]
    lines = [
        f"# Inference backends ({result['device']})",
        "",
        f"`{result['command']}`: {result['posts']} validation posts, each backend in a fresh process, best of "
        f"{result['repeats']} passes, batch 64 sorted by length. Cold start: wall seconds of a one-post "
        f"`python predict.py --backend B` (new interpreter). Peak memory: the process's peak resident memory. "
        "torch: PyTorch in fp32; torch-bf16: under bf16 autocast (measured only on CPUs with native bf16).",
        "",
        "| model | backend | posts/s | x torch | accuracy | posts differing from torch | peak MB | cold start s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for setup, rows in result["setups"].items():
        for backend, r in rows.items():
            lines.append(
                f"| {setup} | {backend} | {r['posts_per_second']:.1f} | {r['speedup']:.2f} | {r['accuracy']:.2%} | "
                f"{r['label_changes']} | {r['peak_memory_mb']:.0f} | {r['cold_start_seconds']:.2f} |"
            )
    if limit["peak_gflops"]:
        lines += [
            "",
            f"fp32 limit: {limit['linear_weights'] / 1e6:.2f} M weights in the encoder's linear layers x 2 x "
            f"{limit['mean_tokens']:.1f} tokens per post = {limit['gflop_per_post']:.2f} GFLOP per post; nominal "
            f"peak {limit['cores']} cores x {limit['ghz']:.2f} GHz x {limit['flop_per_cycle']} FLOP/cycle = "
            f"{limit['peak_gflops']:.0f} GFLOP/s, so at most {limit['posts_per_second_limit']:.0f} posts/s in fp32 "
            f"(a 2048 x 2048 fp32 matrix product in torch reached {limit['torch_matmul_gflops']:.0f} GFLOP/s). "
            "Share of that limit: "
            + ", ".join(
                f"{setup} {backend} {r['posts_per_second'] / limit['posts_per_second_limit']:.0%}"
                for setup, rows in result["setups"].items()
                for backend, r in rows.items()
            )
            + " (int8 is not bound by it).",
        ]
    if result.get("ray"):
        lines += ["", "| Ray actors | posts | seconds (whole command) | posts/s |", "|---|---|---|---|"]
        lines += [
            f"| {r['actors']} | {r['posts']} | {r['seconds']:.1f} | {r['posts'] / r['seconds']:.1f} |"
            for r in result["ray"]
        ]
    return "\n".join(lines) + "\n"


def chart(result):
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    setups = list(result["setups"])
    width = 0.8 / len(BACKENDS)
    for k, backend in enumerate(BACKENDS):
        x = [i + (k - (len(BACKENDS) - 1) / 2) * width for i in range(len(setups))]
        rows = [result["setups"][s].get(backend, {}) for s in setups]  # a backend export.py did not keep: no bar
        axes[0].bar(x, [r.get("posts_per_second", 0) for r in rows], width, label=backend)
        axes[1].bar(x, [r.get("cold_start_seconds", 0) for r in rows], width, label=backend)
    for ax, title in zip(axes, ["posts / s (validation posts)", "one-post predict.py, wall seconds"]):
        ax.set_xticks(range(len(setups)), setups)
        ax.set_title(title, fontsize=10)
    axes[0].legend()
    fig.suptitle(result["device"], fontsize=9)
    return fig


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        folder, backend, posts_file = args.worker
        print(json.dumps(measure(folder, backend, posts_file, args.repeats)))
        return
    import bench.harness as H  # torch and transformers: here, not in the measuring workers
    import data

    _, val_ds, _, _ = H.load_data(args.data or data.default_data())
    posts = val_ds.to_pandas()[["text", "label"]]
    if args.quick:
        posts, args.repeats = posts.iloc[:64], 1
    result = {"command": H.command_line(__file__, argv), "device": H.device_name(), "posts": len(posts)}
    result["repeats"], result["setups"] = args.repeats, {}
    with tempfile.TemporaryDirectory() as tmp:
        posts_file = Path(tmp) / "posts.jsonl"
        posts.to_json(posts_file, orient="records", lines=True)
        for setup, run in SETUPS.items():
            folder = Path(tmp) / run
            shutil.copytree(Path(args.runs) / run, folder, ignore=shutil.ignore_patterns("*onnx*"))
            quick = ["--no-int8"] if args.quick else []
            subprocess.run([sys.executable, "export.py", "--adapter", str(folder), *quick], cwd=ROOT, check=True)
            rows, checks = {}, inference.read_export_info(folder)["backends"]
            for backend in QUICK_BACKENDS if args.quick else BACKENDS:
                if backend == "torch-bf16" and not hardware.cpu_has_bf16():
                    continue  # emulated bf16: slower than fp32, not worth measuring (docs/speed.md)
                if not backend.startswith("torch") and not checks[backend]["verified"]:
                    print(f"{setup:12s} {backend:10s} not kept by export.py: {checks[backend]['failed']}")
                    continue
                r = H.worker(["-m", "bench.backends", "--runs", args.runs, "--repeats", args.repeats,
                              "--worker", folder, backend, posts_file])  # fmt: skip
                r["cold_start_seconds"] = cold_start(folder, backend)
                rows[backend] = r
                speed = f"{r['posts_per_second']:7.1f} posts/s, accuracy {r['accuracy']:.2%}"
                print(f"{setup:12s} {backend:10s} {speed}, peak {r['peak_memory_mb']:.0f} MB, "
                      f"cold start {r['cold_start_seconds']:.2f} s", flush=True)  # fmt: skip
            torch_labels = [p >= 0.5 for p in rows["torch"]["probabilities"]]
            for r in rows.values():
                r["speedup"] = r["posts_per_second"] / rows["torch"]["posts_per_second"]
                r["label_changes"] = sum((p >= 0.5) != t for p, t in zip(r.pop("probabilities"), torch_labels))
            result["setups"][setup] = rows
        result["fp32_limit"] = fp32_limit(Path(args.runs) / SETUPS["pfeiffer"], posts_file)
        if not args.quick:
            corpus = posts.sample(n=args.ray_posts, replace=True, random_state=0)  # the validation posts, repeated
            folder = Path(tmp) / SETUPS["pfeiffer"]
            result["ray"] = [ray_throughput(folder, corpus, a, tmp, run) for run, a in enumerate((1, 2, 1, 2))]
    H.write_results(H.results_stem(args), result, markdown(result), chart)


if __name__ == "__main__":
    sys.exit(main())
