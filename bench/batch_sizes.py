"""What batching can buy a server: posts/s of the model alone, per backend, when posts come in unsorted groups of N
(as a server's micro-batches do: one-post requests in arrival order), on the same posts for every N. If a backend
classifies as many posts per second one at a time as 64 at a time, micro-batching cannot multiply its throughput.

    python -m bench.batch_sizes --adapter adapters/depression-pfeiffer     # a folder exported by export.py
"""

import argparse
import os
import sys
import time

import bench.harness as H
import data
import inference


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--adapter", required=True, help="a folder written by train.py and exported by export.py")
    H.add_common_flags(p, model=False, data_help="posts to classify: the depression data set's validation split")
    p.add_argument("--backends", nargs="+", default=["torch", "onnx-int8"], help="inference backends to measure")
    p.add_argument("--sizes", nargs="+", type=int, default=[1, 4, 8, 16, 32, 64], help="group sizes (posts per call)")
    p.add_argument("--posts", type=int, default=512, help="posts per measurement (default: 512)")
    p.add_argument("--rounds", type=int, default=2, help="alternated rounds over the sizes; the best is kept")
    H.add_run_flags(p, "batch-sizes", "a few posts, one round (CI)")
    args = p.parse_args(argv)
    if args.quick:
        args.posts, args.rounds, args.sizes = 16, 1, [1, 8]
    return args


def rate(loaded, posts, size):
    """posts/s classifying `posts` in consecutive groups of `size`, one call per group."""
    start = time.perf_counter()
    for i in range(0, len(posts), size):
        inference.classify(loaded, posts[i : i + size], batch_size=size)
    return len(posts) / (time.perf_counter() - start)


def markdown(result):
    sizes = result["sizes"]
    lines = [
        f"Command: `{result['command']}`",
        "",
        f"Device: {result['device']}. {result['posts']} validation posts in arrival order, one call per group of N; "
        f"best of {result['rounds']} alternated rounds.",
        "",
        "| backend | " + " | ".join(f"N = {n}, posts/s" for n in sizes) + " | N = max / N = 1 |",
        "| --- | " + " | ".join("---:" for _ in sizes) + " | ---: |",
    ]
    for backend, rates in result["rates"].items():
        cells = [f"{rates[str(n)]:.1f}" for n in sizes] + [f"{rates[str(sizes[-1])] / rates[str(sizes[0])]:.2f}x"]
        lines.append(f"| {backend} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def draw(result):
    return plot_rates(result["rates"], result["sizes"], "the model alone, by batch size")


def plot_rates(rates, sizes, title):
    """posts/s against posts per call (log scale), a line per name of `rates` ({name: {str(size): posts/s}})."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, by_size in rates.items():
        ax.plot(sizes, [by_size[str(n)] for n in sizes], "o-", label=name)
    ax.set(xscale="log", xlabel="posts per call (unsorted)", ylabel="posts/s", title=title)
    ax.set_ylim(bottom=0)
    ax.legend()
    return fig


def main(argv=None):
    args = parse_args(argv)
    _, val_ds, _, _ = data.load_splits(args.data)
    posts = [t for t in val_ds["text"] if t.strip()][: args.posts]
    rates = {}
    for backend in args.backends:
        loaded = inference.load(args.adapter, backend=backend)
        rate(loaded, posts[:16], 8)  # warm-up
        best = {}
        for _ in range(args.rounds):
            for size in args.sizes:
                best[str(size)] = max(best.get(str(size), 0), rate(loaded, posts, size))
        rates[backend] = best
        print(backend, {k: round(v, 1) for k, v in best.items()}, file=sys.stderr, flush=True)
    result = {
        "command": H.command_line(__file__, argv),
        "device": H.device_name(),
        "posts": len(posts),
        "rounds": args.rounds,
        "sizes": args.sizes,
        "rates": rates,
    }
    stem = H.results_stem(args)
    H.write_results(stem, result, markdown(result), draw)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
