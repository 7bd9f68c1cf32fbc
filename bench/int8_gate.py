"""
What int8 costs against fp32 on ONNX Runtime, on export.py's check posts, and how much faster it is, for exported
folders and for each way of quantising (the remedies for CPUs without VNNI): the figures behind export.py's int8
gate, per kind of CPU (docs/speed.md).

    python export.py --adapter adapters/depression-pfeiffer
    python -m bench.int8_gate --adapter adapters/depression-pfeiffer --posts 2000

int8 on a CPU of another kind, under an emulator (answers, not speed; /proc/cpuinfo still shows the host's flags, so
name the emulated kind); fp32 is computed natively (its answers agree across kinds within 1e-4, and emulated fp32
is about 30x slower than int8):

    python -m bench.int8_gate --adapter adapters/depression-pfeiffer \\
        --emulator "qemu-x86_64 -cpu Haswell" --emulated avx2 --name int8-gate-avx2-emulated

For each folder and variant an int8 model is made from the folder's model.onnx in a scratch folder; fp32 and int8
classify the same posts as predict.py does (fp32 in sorted batches of 64, int8 one post per call on every core):
label changes (all, those beyond exporting.INT8_MARGIN from the boundary, and the clearest fp32 answer that changed),
mean and largest |dp|, the share of labels kept, and posts/s of each (median of --rounds, the two alternated).
Writes bench/results/<name>-<machine>.*.
"""

import argparse
import json
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench import harness as H
from textclassifier import exporting, hardware, inference

FFN_OUTPUT = r"layer\.\d+/output/dense/"  # each layer's second feed-forward product (after GELU), not attention's
# name -> exporting.export_int8's options: export.py's choice first, then the usual remedies on CPUs without VNNI
VARIANTS = {
    "export.py": {},  # QInt8 weights per channel with reduced range, the adapters' own products in fp32
    "full range": {"reduce_range": False},
    "per tensor": {"per_channel": False},
    "QUInt8 weights": {"weight_type": "QUInt8"},
    "head in fp32": {"fp32_parts": (*exporting.FP32_MATMULS, "Gemm")},  # the linear layers outside the encoder
    "first layer in fp32": {
        "fp32_parts": (*exporting.FP32_MATMULS, r"layer\.0/")
    },  # the most sensitive (docs/speed.md)
    "FFN output in fp32": {"fp32_parts": (*exporting.FP32_MATMULS, FFN_OUTPUT)},
    "FFN output, head in fp32": {"fp32_parts": (*exporting.FP32_MATMULS, FFN_OUTPUT, "Gemm")},
    "full range, FFN output in fp32": {"reduce_range": False, "fp32_parts": (*exporting.FP32_MATMULS, FFN_OUTPUT)},
}


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    p.add_argument("--adapter", nargs="+", metavar="FOLDER", help="folders exported by export.py (required)")
    p.add_argument("--posts", type=int, default=2000, help="check posts, drawn as export.py draws them (default: 2000)")
    p.add_argument("--data", default=None, help="posts to check on (default: each folder's training data)")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS), help="ways of quantising")
    p.add_argument("--rounds", type=int, default=3, help="timed rounds of fp32 and int8, alternated (default: 3)")
    p.add_argument("--no-speed", dest="speed", action="store_false", help="answers only, no timed rounds")
    p.add_argument("--emulator", default=None, help='int8 runs under this command, e.g. "qemu-x86_64 -cpu Haswell"')
    p.add_argument(
        "--emulated",
        nargs="+",
        default=None,
        metavar="FLAG",
        help="the int8 flags (hardware.INT8_FLAGS) the emulator presents, e.g. avx2 (needed with --emulator)",
    )
    p.add_argument(
        "--answers-of",
        nargs=3,
        metavar=("FOLDER", "POSTS", "OUT"),
        help="the worker run under --emulator: int8's probabilities for a JSON list of posts, saved as .npy",
    )
    H.add_common_flags(p, model=False, data_set=False)
    H.add_run_flags(p, "int8-gate")
    return p


def make_int8(folder, scratch, options):
    """A copy of the folder's fp32 export in `scratch` with an int8 model made by exporting.export_int8(options)."""
    scratch.mkdir(parents=True, exist_ok=True)
    for name in (inference.ONNX_FILES["onnx"], inference.ONNX_TOKENIZER, "training.json", inference.EXPORT_INFO):
        shutil.copy(folder / name, scratch / name)
    options = dict(options)
    if isinstance(options.get("weight_type"), str):
        from onnxruntime.quantization import QuantType

        options["weight_type"] = QuantType[options["weight_type"]]
    exporting.export_int8(
        scratch / inference.ONNX_FILES["onnx"], scratch / inference.ONNX_FILES["onnx-int8"], **options
    )
    return scratch


def open_model(folder, backend):
    """An export's model, unchecked (a scratch folder's variant), as export.py opens it to check."""
    info, record = json.loads((folder / "training.json").read_text()), inference.read_export_info(folder)
    model = inference.open_onnx(folder, backend, record["pad_token_id"], info["max_length"])
    return inference.Loaded(model, model.tokenizer, info)


def int8_answers(folder, texts, emulator):
    """int8's probabilities for `texts`: here, or in a worker under `emulator` (the command as a list)."""
    if not emulator:
        return inference.classify(open_model(folder, "onnx-int8"), texts)
    posts, out = folder / "posts.json", folder / "int8.npy"
    posts.write_text(json.dumps(texts))
    command = [*emulator, sys.executable, "-m", "bench.int8_gate", "--answers-of", str(folder), str(posts), str(out)]
    subprocess.run(command, cwd=H.ROOT, check=True, stderr=subprocess.DEVNULL)  # qemu warns of each CPU feature
    return np.load(out)


def posts_per_second(loaded, texts):
    start = time.perf_counter()
    inference.classify(loaded, texts, 64)  # predict.py's batches (int8: one post per call)
    return len(texts) / (time.perf_counter() - start)


def measure(folder, variant, texts, args):
    """One folder and variant: the gate's figures (exporting.label_checks), the verdict, posts/s of fp32 and int8."""
    emulator = shlex.split(args.emulator) if args.emulator else None
    with tempfile.TemporaryDirectory() as scratch:
        copy = make_int8(folder, Path(scratch), VARIANTS[variant])
        fp32 = open_model(copy, "onnx")
        reference = inference.classify(fp32, texts)
        checks = exporting.label_checks(int8_answers(copy, texts, emulator), reference)
        speed = {"onnx": [], "onnx-int8": []}
        models = (("onnx", fp32), ("onnx-int8", open_model(copy, "onnx-int8"))) if args.speed else ()
        for _ in range(args.rounds if args.speed else 0):
            for backend, loaded in models:  # opened once, timed in alternation
                speed[backend].append(posts_per_second(loaded, texts))
        megabytes = (copy / inference.ONNX_FILES["onnx-int8"]).stat().st_size / 2**20
    failed = exporting.int8_failure({**checks, "batch_movement": 0.0})  # batch movement: export.py's own check
    row = {"folder": str(folder), "variant": variant, **checks, "kept": failed is None, "failed": failed}
    row["megabytes"] = megabytes
    if args.speed:
        row["posts_per_second"] = {b: statistics.median(v) for b, v in speed.items()}
        row["speedup"] = row["posts_per_second"]["onnx-int8"] / row["posts_per_second"]["onnx"]
    print(json.dumps(row))
    return row


def markdown(result):
    lines = [
        f"# int8 against fp32 on ONNX Runtime: {result['cpu_kind']}",
        "",
        f"`{result['command']}`",
        "",
        f"{result['device']}; int8 flags {' '.join(result['int8_kind'])}"
        + (" (emulated: answers only, no speed)" if result["emulated"] else "")
        + f". {result['posts']} check posts a folder; the gate: no label change where fp32 is further than "
        f"{result['rows'][0]['margin']:g} from the boundary, mean |dp| <= {exporting.INT8_MEAN_DIFFERENCE:g}.",
        "",
        "| folder | variant | same label | changed | beyond margin | clearest changed | mean abs dp | largest abs dp "
        "| kept | fp32 posts/s | int8 posts/s | speed-up | MB |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in result["rows"]:
        speed = r.get("posts_per_second")
        pps = [f"{speed['onnx']:.0f}", f"{speed['onnx-int8']:.0f}", f"{r['speedup']:.2f}x"] if speed else ["-"] * 3
        clearest = f"{r['largest_changed_margin']:.3f}" if "largest_changed_margin" in r else "-"  # since acf5fc2
        lines.append(
            f"| {Path(r['folder']).name} | {r['variant']} | {r['label_agreement']:.2%} | {r['label_changes']} "
            f"| {r['label_changes_beyond_margin']} | {clearest} "
            f"| {r['mean_difference']:.4f} "
            f"| {r['max_difference']:.3f} "
            f"| {'yes' if r['kept'] else 'no'} | {' | '.join(pps)} | {r['megabytes']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def draw(result):
    """Mean |dp| per folder and variant (bars), with the gate's line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    fig, ax = plt.subplots(figsize=(max(6, len(rows) * 0.9), 4))
    labels = [f"{Path(r['folder']).name}\n{r['variant']}" for r in rows]
    ax.bar(range(len(rows)), [r["mean_difference"] for r in rows], color=["C0" if r["kept"] else "C3" for r in rows])
    ax.axhline(exporting.INT8_MEAN_DIFFERENCE, color="k", linestyle="--", label="gate: mean |dp|")
    ax.set_xticks(range(len(rows)), labels, fontsize=7, rotation=30, ha="right")
    ax.set_ylabel("mean |dp| int8 vs fp32")
    ax.set_title(f"int8 on {result['cpu_kind']} ({result['posts']} posts; red: refused)")
    ax.legend()
    fig.tight_layout()
    return fig


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.answers_of:  # the worker, under the emulator
        folder, posts, out = args.answers_of
        texts = json.loads(Path(posts).read_text())
        return np.save(out, inference.classify(open_model(Path(folder), "onnx-int8"), texts))
    if not args.adapter or bool(args.emulator) != bool(args.emulated):
        parser.error("--adapter is required; --emulator and --emulated go together")
    args.speed = args.speed and not args.emulator  # an emulator's speed says nothing of the CPU's
    exporting.quiet_known_notices()
    kind = hardware.int8_kind(args.emulated) if args.emulated else hardware.int8_kind()
    rows, posts = [], 0
    for folder in map(Path, args.adapter):
        info = json.loads((folder / "training.json").read_text())
        texts = exporting.check_posts(info, args.data, None, args.posts)
        posts = len(texts)
        rows += [measure(folder, variant, texts, args) for variant in args.variants]
    result = {
        "command": H.command_line(__file__, argv),
        "device": H.device_name(),
        "int8_kind": kind,
        "cpu_kind": hardware.kind_name(kind),
        "emulated": bool(args.emulated),
        "posts": posts,
        "rows": rows,
    }
    H.write_results(H.results_stem(args), result, markdown(result), draw)


if __name__ == "__main__":
    main()
