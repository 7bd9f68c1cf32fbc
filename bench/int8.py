"""The int8 backend before and after issue 42, on one exported folder: dynamic int8 as it ran before (several posts
per call, so its per-call activation scales covered the whole padded batch), as it runs now (one post per call,
posts spread over the cores: inference.OnnxModel), and static int8 (QDQ, scales calibrated once on training posts:
the alternative that was tried). For each: agreement with fp32, the README's example, how far a post's answer moves
with the posts that share its batch (every backend and precision), posts/s by posts per call, and export.py's time
and peak memory.

    python export.py --adapter adapters/depression-pfeiffer
    python -m bench.int8 --adapter adapters/depression-pfeiffer
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

import numpy as np

import bench.harness as H
import export
import inference
import posts
from bench.batch_sizes import plot_rates, rate

EXAMPLE = "i can't get out of bed anymore and nothing feels worth it"  # the README's
KINDS = ("fp32", "dynamic int8", "static int8")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--adapter", required=True, help="a folder written by train.py and exported by export.py")
    p.add_argument("--posts", type=int, default=500, help="posts to compare on, as export.py checks (default: 500)")
    p.add_argument("--sizes", nargs="+", type=int, default=[1, 8, 64], help="posts per call (default: 1 8 64)")
    p.add_argument(
        "--static",
        nargs="*",
        default=["minmax", "percentile", "entropy"],
        choices=["minmax", "percentile", "entropy"],
        help="static int8 calibration methods to compare (default: all three; none: --static)",
    )
    p.add_argument("--calibration-posts", type=int, default=200, help="posts that calibrate static int8 (default: 200)")
    p.add_argument("--rounds", type=int, default=3, help="alternated rounds of the speed runs; the median is kept")
    H.add_common_flags(p, model=False, data_set=False)
    H.add_run_flags(p, "int8", "a few posts, one round, no export run (CI)")
    args = p.parse_args(argv)
    if args.quick:
        args.posts, args.rounds, args.sizes, args.calibration_posts, args.static = 24, 1, [1, 8], 8, ["minmax"]
    return args


class OnePostAtATime:
    """quantize_static's calibration reader: one post per run, no padding. With CalibStridedMinMax=1 ONNX Runtime
    collects one post at a time, which bounds memory and lets the histogram methods take posts of any length."""

    def __init__(self, ids):
        self.ids, self.posts = ids, iter(ids)

    def __len__(self):
        return len(self.ids)

    def set_range(self, start_index, end_index):
        self.posts = iter(self.ids[start_index:end_index])

    def get_next(self):
        ids = next(self.posts, None)
        if ids is None:
            return None
        return {"input_ids": np.array([ids], dtype=np.int64), "attention_mask": np.ones((1, len(ids)), np.int64)}


def static_int8(folder, path, calibration_ids, method):
    """Static int8 (QDQ) of the MatMuls but the adapters' own, weights per channel, uint8 activations, calibrated on
    `calibration_ids` by MinMax, asymmetric Percentile (99.99) or Entropy."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    calibration = {
        "minmax": (CalibrationMethod.MinMax, {}),
        "percentile": (CalibrationMethod.Percentile, {"CalibPercentile": 99.99, "CalibTensorRangeSymmetric": False}),
        "entropy": (CalibrationMethod.Entropy, {}),
    }[method]
    quantize_static(
        str(folder / "model.onnx"),
        str(path),
        OnePostAtATime(calibration_ids),
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=["MatMul"],
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        nodes_to_exclude=export.fp32_matmuls(folder / "model.onnx"),
        calibrate_method=calibration[0],
        extra_options={"CalibStridedMinMax": 1, **calibration[1]},
    )


def cpu_session(path):
    """An ONNX Runtime session on the CPU with its default threads (one per core), as export.py's models ran before."""
    import onnxruntime

    return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def open_kinds(folder, scratch, info, export_info, calibration_texts, methods):
    """{kind: Loaded}: fp32, int8 batched as before, int8 one post per call (the folder's own export, as predict.py
    opens it), and static int8 by each calibration method (made in `scratch`)."""
    pad, length = export_info["pad_token_id"], info["max_length"]
    now = inference.open_onnx(folder, "onnx-int8", pad, length)
    models = {
        "fp32": inference.open_onnx(folder, "onnx", pad, length),
        "int8 batched (before)": inference.OnnxModel(cpu_session(folder / "model.int8.onnx"), now.tokenizer, pad, ""),
        "int8 one post per call (now)": now,
    }
    if info.get("normalize_text"):
        calibration_texts = [posts.normalize_text(t) for t in calibration_texts]
    ids = [encoding.ids for encoding in now.tokenizer.encode_batch(calibration_texts)]
    for method in methods:
        static_int8(folder, scratch / f"{method}.onnx", ids, method)
        models[f"static int8 ({method})"] = inference.OnnxModel(
            cpu_session(scratch / f"{method}.onnx"), now.tokenizer, pad, ""
        )
    return {kind: inference.Loaded(model, model.tokenizer, info) for kind, model in models.items()}


def movement_on_torch(folder, texts):
    """inference.batch_movement of the torch backend in fp32 and in bf16."""
    return {
        f"torch {precision}": inference.batch_movement(inference.load(folder, precision=precision, device="cpu"), texts)
        for precision in ("fp32", "bf16")
    }


def agreement(loaded, texts, reference):
    probs = inference.classify(loaded, texts + [EXAMPLE])
    difference = np.abs(probs[:-1, 1] - reference[:-1, 1])
    return {
        "label_agreement": float((probs[:-1].argmax(1) == reference[:-1].argmax(1)).mean()),
        "mean_difference": float(difference.mean()),
        "max_difference": float(difference.max()),
        "example": float(probs[-1, 1]),
        "batch_movement": inference.batch_movement(loaded, texts),
    }


def speeds(loaded_by_kind, texts, sizes, rounds):
    """{kind: {size: median posts/s}}: unsorted groups of N (a server's micro-batches, bench.batch_sizes.rate) and
    predict.py's sorted batches of 64 ("sorted 64"), the kinds alternated in every round."""
    runs = {kind: {} for kind in loaded_by_kind}
    for loaded in loaded_by_kind.values():
        rate(loaded, texts[:16], 8)  # warm-up
    for _ in range(rounds):
        for kind, loaded in loaded_by_kind.items():
            for size in sizes:
                runs[kind].setdefault(str(size), []).append(rate(loaded, texts, size))
            start = time.perf_counter()
            inference.classify(loaded, texts, 64)
            runs[kind].setdefault("sorted 64", []).append(len(texts) / (time.perf_counter() - start))
    return {kind: {size: float(np.median(r)) for size, r in by_size.items()} for kind, by_size in runs.items()}


# export.py's main() in a new process that then prints its own peak resident memory: VmHWM starts afresh at exec,
# while ru_maxrss (of the child, or of the children) keeps the parent's size at the fork
EXPORT_THEN_PEAK = "import sys, export; export.main(sys.argv[1:]); print(open('/proc/self/status').read())"


def export_run(folder, scratch):
    """export.py on a copy of the folder, in a new process: seconds and peak resident memory (MB, its VmHWM)."""
    copy = scratch / "export-run"
    shutil.copytree(folder, copy)
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", EXPORT_THEN_PEAK, "--adapter", copy, "--overwrite"],
        check=True, cwd=H.ROOT, capture_output=True, text=True,
    )  # fmt: skip
    seconds = time.perf_counter() - start
    peak = next(int(line.split()[1]) / 1024 for line in proc.stdout.splitlines() if line.startswith("VmHWM:"))
    checks = json.loads((copy / inference.EXPORT_INFO).read_text())
    return {"seconds": seconds, "peak_mb": peak, "onnx.json": checks}


def markdown(result):
    lines = [
        f"Command: `{result['command']}`",
        "",
        f"Device: {result['device']}. {result['posts']} posts drawn from the folder's training data and the README's "
        f"example (fp32: {result['example_fp32']:.3f}); static int8 calibrated on {result['calibration_posts']} "
        "others. Moves with its batch: the largest change of a post's probabilities between classified alone and in "
        "shuffled batches of 5, 16 and 64 posts of mixed lengths (inference.batch_movement).",
        "",
        "| model | same label as ONNX fp32 | mean abs diff | max abs diff | README example | moves with its batch by |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for kind, a in result["agreement"].items():
        lines.append(
            f"| {kind} | {a['label_agreement']:.1%} | {a['mean_difference']:.4f} | {a['max_difference']:.3f} | "
            f"{a['example']:.3f} | {a['batch_movement']:.1e} |"
        )
    for kind, moved in result["movement_on_torch"].items():
        lines.append(f"| {kind} | | | | | {moved:.1e} |")
    sizes = list(next(iter(result["speed"].values())))
    lines += [
        "",
        f"Posts/s, median of {result['rounds']} alternated rounds ({result['speed_posts']} posts; N: unsorted groups "
        "of N, one call each, as the server's micro-batches; sorted 64: predict.py's batches):",
        "",
        "| model | " + " | ".join(f"N = {s}" if s.isdigit() else s for s in sizes) + " |",
        "| --- | " + " | ".join("---:" for _ in sizes) + " |",
    ]
    for kind, by_size in result["speed"].items():
        lines.append(f"| {kind} | " + " | ".join(f"{by_size[s]:.1f}" for s in sizes) + " |")
    now, before = result["speed"]["int8 one post per call (now)"], result["speed"]["int8 batched (before)"]
    lines += ["", "int8 now / before: " + ", ".join(f"{s}: {now[s] / before[s]:.2f}x" for s in sizes)]
    if result.get("export"):
        e = result["export"]
        lines += ["", f"export.py (fp32 and int8, with its checks): {e['seconds']:.0f} s, peak {e['peak_mb']:.0f} MB"]
    return "\n".join(lines) + "\n"


def draw(result):
    sizes = [int(s) for s in next(iter(result["speed"].values())) if s.isdigit()]
    return plot_rates(result["speed"], sizes, "ONNX models by posts per call")


def main(argv=None):
    args = parse_args(argv)
    export.quiet_known_notices()  # the quantizer's notices, as export.py hides them
    folder = Path(args.adapter)
    info = json.loads((folder / "training.json").read_text())
    export_info = inference.read_export_info(folder)
    drawn = export.check_posts(info, None, None, args.posts + args.calibration_posts)
    texts, calibration_texts = drawn[: args.posts], drawn[args.posts :]
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        loaded = open_kinds(folder, scratch, info, export_info, calibration_texts, args.static)
        reference = inference.classify(loaded["fp32"], texts + [EXAMPLE])
        result = {
            "command": H.command_line(__file__, argv),
            "device": H.device_name(),
            "posts": len(texts),
            "calibration_posts": len(calibration_texts),
            "agreement": {kind: agreement(model, texts, reference) for kind, model in loaded.items()},
            "movement_on_torch": movement_on_torch(folder, texts),
            "example_fp32": float(reference[-1, 1]),
            "rounds": args.rounds,
            "speed_posts": min(len(texts), 256),
            "speed": speeds(loaded, texts[:256], args.sizes, args.rounds),
            "export": None if args.quick else export_run(folder, scratch),
        }
    H.write_results(H.results_stem(args), result, markdown(result), draw)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
