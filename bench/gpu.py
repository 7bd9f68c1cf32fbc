"""
One command that measures the GPU path, in a few minutes on one CUDA GPU; exits 2 with one line where torch sees none.

    python -m bench.gpu                                  # writes bench/results/gpu-<card>.{json,md,png}
    python -m bench.gpu --quick                          # a few hundred posts: a first look in about a minute
    python -m bench.gpu --dry-run --quick --model DIR    # every measurement on a machine without a GPU (the tests)

What it measures, all in this one process on the first GPU:
- one epoch of train.py's own loop (training.set_up, training.train_epoch, training.validate) for full fine-tuning,
  Pfeiffer, Houlsby and Pfeiffer in the upper half with its frozen lower half cached, in bf16 (where the GPU has it
  natively), fp16 and fp32: seconds, posts/s, real tokens/s, peak GPU memory (torch.cuda.max_memory_allocated),
  mean GPU utilisation (NVML, sampled every 0.1 s through torch.cuda.utilization) and validation accuracy;
- the write-up's own setting (every post padded to 512, batch 2, fp32, attention dropout 0.1, plain AdamW) against
  this pipeline's, per epoch from timed steps of training.train_step, for Pfeiffer and full fine-tuning on the
  MiniLM and on a BERT-base-sized model (12 layers, hidden 768, random weights: speed does not depend on them);
  a full fine-tuning epoch of that model with its GPU utilisation;
- prediction posts/s by batch size and precision (inference.predict_proba), and three adapters in one Parallel pass
  (inference.load_shared) against three separate models;
- what auto chose: training's and prediction's precision, the backend, the attention implementation, TF32.
The goals of issue 41 are checked at the end of the table. --dry-run computes on whatever device there is (a CPU:
no fp16, no GPU memory or utilisation), only to prove the script runs; its figures are not a GPU's.
"""

import argparse
import itertools
import shutil
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import torch
from accelerate.state import AcceleratorState

import model as M
from bench import harness as H
from bench.shared import adapter_folders, bert_base_folder
from textclassifier import hardware, inference, settings, training
from textclassifier.report import markdown_table

SETUPS = ["full", "pfeiffer", "houlsby", "pfeiffer-upper-half"]  # harness.TRAIN_SETUPS; the upper half is cached
WRITEUP_SETUPS = ["pfeiffer", "full"]
PREDICT_SIZES = [8, 32, 64, 128, 256, 512]
GOALS = {"writeup": 5.0, "utilisation": 70.0, "bf16_points": 0.3}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    H.add_common_flags(p)
    p.add_argument("--work", default="/tmp/bench-gpu", help="where runs, adapters and the BERT-base-sized model go")
    p.add_argument("--train-posts", type=int, default=None, help="training posts per epoch (default: all; quick 256)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per write-up comparison (default: 60; quick 4)")
    p.add_argument(
        "--setups", nargs="+", default=SETUPS, choices=SETUPS, help="setups to train an epoch of (default: all)"
    )
    p.add_argument("--no-bert-base", dest="bert_base", action="store_false", help="leave out the BERT-base-sized model")
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="run on whatever device there is, a CPU included: proves the script runs; its figures are not a GPU's",
    )
    H.add_run_flags(p, "gpu", "256 training posts, 4 timed steps, 2 batch sizes: about a minute on a GPU")
    args = p.parse_args(argv)
    args.train_posts = args.train_posts or (256 if args.quick else None)
    args.steps = args.steps or (4 if args.quick else 60)
    args.sizes = [8, 64] if args.quick else PREDICT_SIZES
    return args


def device():
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def precisions():
    """train.py's --mixed-precision values to time: bf16 where native, fp16 (CUDA only), fp32 ("no")."""
    kind = device().type
    native_bf16 = hardware.auto_precision(kind) == "bf16"
    return ["bf16"] * native_bf16 + ["fp16"] * (kind == "cuda") + ["no"]


class Utilisation:
    """Mean GPU utilisation while the block runs: NVML's share of time a kernel was running, read every 0.1 s in
    a thread through torch.cuda.utilization (nvidia-ml-py). mean is None off CUDA or where NVML cannot answer."""

    def __init__(self):
        self.samples, self.stop = [], threading.Event()
        self.thread = threading.Thread(target=self.sample, daemon=True)

    def sample(self):
        while not self.stop.wait(0.1):
            self.samples.append(torch.cuda.utilization())

    def __enter__(self):
        if not torch.cuda.is_available():
            return self
        try:
            torch.cuda.utilization()
        except Exception as e:  # no NVML (nvidia-ml-py missing) or a driver that does not answer
            print(f"GPU utilisation not measured: {e}")
            return self
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        if self.thread.is_alive():
            self.thread.join()

    @property
    def mean(self):
        return sum(self.samples) / len(self.samples) if self.samples else None


def fresh_state():
    """accelerate keeps one state per process; each measurement starts anew, as a new process would."""
    AcceleratorState._reset_state(reset_partial_state=True)


def one_epoch(args, setup, precision, model_name, name, posts=None):
    """One epoch of train.py's loop for a harness.TRAIN_SETUPS entry: the set-up as train.py makes it (data, model,
    cache, optimizer, schedule), then the timed epoch (the caching pass timed apart), then validation."""
    fresh_state()
    flags = [*H.setup_flags(setup, model_name), "--model", model_name, "--data", args.data, "--epochs", "1"]
    flags += ["--mixed-precision", precision]
    posts = posts or args.train_posts
    flags += ["--max-train-samples", str(posts)] if posts else []
    targs = settings.parse(flags)  # train.py's settings for these flags
    accelerator = training.make_accelerator(targs, cpu=not torch.cuda.is_available())
    staging = Path(args.work) / "runs" / name
    shutil.rmtree(staging, ignore_errors=True)
    run, record = training.set_up(targs, accelerator, staging)
    sync()
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    with run.layers_skipped:  # the cached lower layers skipped until the epoch is done, where train.py caches them
        with Utilisation() as utilisation:
            start = time.perf_counter()
            loss, seen = training.train_epoch(run.model, run.train_dl, run.optimizer, run.scheduler, accelerator, 1, 1)
            sync()
            seconds = time.perf_counter() - start
        val = training.validate(run.model, run.val_dl, accelerator, run.label_names)
    shutil.rmtree(run.staging, ignore_errors=True)
    row = {
        "setup": setup, "model": model_name, "precision": accelerator.mixed_precision, "tf32": record["tf32"],
        "attention": record["attention"], "epoch_seconds": seconds, "cache_seconds": run.cache_seconds,
        "posts": seen["posts"], "posts_per_second": seen["posts"] / seconds,
        "tokens_per_second": seen["real_tokens"] / seconds, "train_loss": loss, "accuracy": val["accuracy"],
        "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None,
        "gpu_utilisation": utilisation.mean,
    }  # fmt: skip
    print(f"{setup} {row['precision']}: {seconds:.1f} s (+{run.cache_seconds:.1f} s cache), "
          f"{row['posts_per_second']:.0f} posts/s, accuracy {val['accuracy']:.4f}")  # fmt: skip
    return row


def writeup_against_ours(args, setup, model_name, train_posts):
    """Per-epoch seconds of the write-up's setting and of this pipeline's (auto precision, TF32 where it applies),
    from args.steps timed steps each after 3 warm-up steps, scaled to one epoch's train_posts."""
    result = {"setup": setup, "model": model_name}
    for pipeline in ("write-up", "ours"):
        fresh_state()
        precision = "no" if pipeline == "write-up" else "auto"  # the write-up trained in fp32
        model, optimizer, accelerator, batches = H.prepare_training(
            model_name, args.data, setup, pipeline, posts_needed=(args.steps + 3) * training.BATCH_SIZE,
            mixed_precision=precision if torch.cuda.is_available() else "no",
        )  # fmt: skip
        hardware.set_tf32(pipeline == "ours" and hardware.tf32_applies(accelerator.device.type))
        H.timed_steps(model, optimizer, accelerator, itertools.islice(batches, 3))
        seconds, posts, tokens = H.timed_steps(model, optimizer, accelerator, itertools.islice(batches, args.steps))
        result[pipeline] = {"posts_per_second": posts / seconds, "precision": accelerator.mixed_precision}
        del model, optimizer
        torch.cuda.empty_cache() if torch.cuda.is_available() else None
    hardware.set_tf32(False)
    for pipeline in ("write-up", "ours"):
        result[pipeline]["epoch_seconds"] = train_posts / result[pipeline]["posts_per_second"]
    result["speed-up"] = result["write-up"]["epoch_seconds"] / result["ours"]["epoch_seconds"]
    print(f"{setup} on {Path(model_name).name}: write-up {result['write-up']['epoch_seconds']:.0f} s/epoch, "
          f"ours {result['ours']['epoch_seconds']:.0f} s/epoch ({result['speed-up']:.1f}x)")  # fmt: skip
    return result


def prediction(args, texts, label_names):
    """posts/s of inference.predict_proba on the first GPU by batch size and --precision (a Pfeiffer adapter)."""
    model = M.build_model(args.model, "adapter", label_names, "pfeiffer").to(device())
    tokenizer = M.load_tokenizer(args.model)
    rows = []
    for precision in inference.PRECISIONS:
        for size in args.sizes:
            inference.predict_proba(model, tokenizer, texts[:size], training.MAX_LENGTH, size, precision=precision)
            start = time.perf_counter()  # predict_proba copies its result back: it has waited for the GPU
            inference.predict_proba(model, tokenizer, texts, training.MAX_LENGTH, size, precision=precision)
            dtype = inference.autocast_dtype(device().type, precision)
            rows.append({
                "precision": precision, "computes_in": str(dtype or torch.float32).replace("torch.", ""),
                "batch_size": size, "posts_per_second": len(texts) / (time.perf_counter() - start),
            })  # fmt: skip
    return rows


def parallel_against_separate(args, texts):
    """Three adapters classifying the same posts: one Parallel pass over a shared base against three models."""
    folders = adapter_folders(Path(args.work) / "adapters", args.model, "every layer", 3)
    result = {}
    for way in ("parallel", "separate"):
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        if way == "parallel":
            shared = inference.load_shared(folders)
            run = lambda posts: inference.classify_shared(shared, posts)  # noqa: E731
        else:
            models = [inference.load(folder) for folder in folders]
            run = lambda posts: [inference.classify(m, posts) for m in models]  # noqa: E731
        run(texts[:16])
        start = time.perf_counter()
        run(texts)
        seconds = time.perf_counter() - start
        result[way] = {
            "posts_per_second": len(texts) / seconds,
            "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None,
        }
        shared = models = None
    return result


def auto_choices():
    """What --mixed-precision, --precision, --backend and the attention choice come to on this device."""
    kind = device().type
    trains_in = hardware.auto_precision(kind)
    return {
        "device": H.device_name(),
        "compute_capability": ".".join(map(str, torch.cuda.get_device_capability())) if kind == "cuda" else None,
        "train.py --mixed-precision auto": trains_in,
        "predict.py --precision auto": str(inference.autocast_dtype(kind, "auto") or "fp32").replace("torch.", ""),
        "predict.py --backend auto": "torch" if hardware.cuda_visible() else "the fastest verified export, else torch",
        "attention": training.attention_for(SimpleNamespace(mixed_precision=trains_in, device=device())) or "sdpa",
        "tf32 for fp32 matmuls": hardware.tf32_applies(kind),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
    }


def goals(result):
    """Issue 41's goals: {goal: (the figure that decides it, met)}, for those this run measured."""
    epochs = {(r["setup"], r["precision"], r["model"]): r for r in result["epochs"]}
    small, auto = result["model"], result["auto"]["train.py --mixed-precision auto"]
    out = {}
    for w in (w for w in result["writeup"] if w["setup"] == "pfeiffer"):
        name = f"Pfeiffer per epoch >= 5x the write-up's setting ({Path(w['model']).name})"
        out[name] = (w["speed-up"], w["speed-up"] >= GOALS["writeup"])
    cached, full = epochs.get(("pfeiffer-upper-half", auto, small)), epochs.get(("full", auto, small))
    if cached and full:  # the caching pass counted in the epoch, as train.py counts it in the first
        ratio = full["epoch_seconds"] / (cached["epoch_seconds"] + cached["cache_seconds"])
        out["upper-half adapter with the cache >= 2x full fine-tuning per epoch"] = (ratio, ratio >= 2.0)
    for r in (r for r in result["epochs"] if r["model"] != small and r["gpu_utilisation"] is not None):
        name = "GPU utilisation >= 70% in a full fine-tuning epoch of the BERT-base-sized model"
        out[name] = (r["gpu_utilisation"], r["gpu_utilisation"] >= GOALS["utilisation"])
    bf16, fp32 = epochs.get(("pfeiffer", "bf16", small)), epochs.get(("pfeiffer", "no", small))
    if bf16 and fp32:
        gap = 100 * abs(bf16["accuracy"] - fp32["accuracy"])
        out["bf16 within 0.3 points of fp32 accuracy (Pfeiffer, one epoch)"] = (gap, gap <= GOALS["bf16_points"])
    return out


def epoch_cells(r):
    return [
        Path(r["model"]).name, r["setup"], r["precision"] + (" + TF32" if r["tf32"] else ""),
        fmt(r["epoch_seconds"], 1), fmt(r["cache_seconds"], 1), fmt(r["posts_per_second"]),
        fmt(r["tokens_per_second"]), fmt(r["peak_gpu_mb"]), fmt(r["gpu_utilisation"]), f"{r['accuracy']:.4f}",
    ]  # fmt: skip


def fmt(x, digits=0):
    return "-" if x is None else f"{x:,.{digits}f}"


def markdown(result):
    lines = [f"Command: `{result['command']}`", "", f"Device: {result['auto']['device']}."]
    if result["dry_run"]:
        lines += ["", "**Dry run: not on a GPU. These figures only show that the script runs.**"]
    lines += ["", "What auto chose:", ""]
    lines += [markdown_table(["setting", "choice"], list(result["auto"].items()), ["left", "left"]), ""]
    lines += [f"One epoch of train.py's loop ({result['epochs'][0]['posts']:,} training posts):", ""]
    lines.append(markdown_table(
        ["model", "setup", "precision", "epoch s", "cache s", "posts/s", "tokens/s", "peak GPU MB", "GPU util %",
         "accuracy"],
        [epoch_cells(r) for r in result["epochs"]],
    ))  # fmt: skip
    lines += ["", "The write-up's setting (pad 512, batch 2, fp32) against this pipeline's, per epoch:", ""]
    lines.append(markdown_table(
        ["model", "setup", "write-up s/epoch", "ours s/epoch", "ours in", "speed-up"],
        [[Path(w["model"]).name, w["setup"], fmt(w["write-up"]["epoch_seconds"]), fmt(w["ours"]["epoch_seconds"]),
          w["ours"]["precision"], f"{w['speed-up']:.1f}x"] for w in result["writeup"]],
    ))  # fmt: skip
    sizes = sorted({r["batch_size"] for r in result["prediction"]})
    lines += ["", "Prediction, posts/s by batch size (inference.predict_proba, a Pfeiffer adapter):", ""]
    by = {(r["precision"], r["batch_size"]): r for r in result["prediction"]}
    lines.append(markdown_table(
        ["--precision", "computes in", *map(str, sizes)],
        [[p, by[(p, sizes[0])]["computes_in"], *(fmt(by[(p, s)]["posts_per_second"]) for s in sizes)]
         for p in inference.PRECISIONS],
    ))  # fmt: skip
    par = result["parallel"]
    lines += ["", "Three adapters on the same posts (posts/s with every task answered):", ""]
    lines.append(markdown_table(
        ["way", "posts/s", "peak GPU MB"],
        [[way, fmt(r["posts_per_second"]), fmt(r["peak_gpu_mb"])] for way, r in par.items()],
    ))  # fmt: skip
    lines += ["", "Goals:", ""]
    lines.append(markdown_table(
        ["goal", "measured", "met"],
        [[goal, fmt(value, 2), "yes" if met else "no"] for goal, (value, met) in result["goals"].items()],
        ["left", "right", "left"],
    ))  # fmt: skip
    lines += ["", f"Total: {result['seconds']:.0f} s."]
    return "\n".join(lines) + "\n"


def draw(result):
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    labels = [f"{Path(r['model']).name[:12]}\n{r['setup']}\n{r['precision']}" for r in result["epochs"]]
    left.bar(range(len(labels)), [r["epoch_seconds"] + r["cache_seconds"] for r in result["epochs"]])
    left.set_xticks(range(len(labels)), labels, fontsize=6, rotation=90)
    left.set_ylabel("seconds per epoch (cache included)")
    left.set_title("one epoch of train.py's loop")
    names = [f"{Path(w['model']).name[:12]}\n{w['setup']}" for w in result["writeup"]]
    x = range(len(names))
    right.bar([i - 0.2 for i in x], [w["write-up"]["epoch_seconds"] for w in result["writeup"]], 0.4, label="write-up")
    right.bar([i + 0.2 for i in x], [w["ours"]["epoch_seconds"] for w in result["writeup"]], 0.4, label="ours")
    right.set_xticks(list(x), names, fontsize=7)
    right.set_ylabel("seconds per epoch")
    right.set_yscale("log")
    right.set_title("the write-up's setting against this pipeline's")
    right.legend()
    fig.suptitle(result["auto"]["device"] + (" (dry run: not a GPU)" if result["dry_run"] else ""), fontsize=9)
    return fig


def main(argv=None):
    args = parse_args(argv)
    if not torch.cuda.is_available() and not args.dry_run:
        print("bench.gpu: torch sees no CUDA GPU here; run it where one is (or --dry-run to check the script)",
              file=sys.stderr)  # fmt: skip
        sys.exit(2)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    start = time.perf_counter()
    result = {"command": H.command_line(__file__, argv), "model": args.model, "dry_run": not torch.cuda.is_available()}
    result["auto"] = auto_choices()
    print("auto: " + ", ".join(f"{key} {value}" for key, value in result["auto"].items()))
    models = [args.model] + ([bert_base_folder(args.work, args.model)] if args.bert_base else [])
    if torch.cuda.is_available():  # CUDA's start-up (context, kernels, cuBLAS), not timed
        one_epoch(args, "pfeiffer", precisions()[0], args.model, "warm-up", posts=64)
    result["epochs"] = [
        one_epoch(args, setup, precision, args.model, f"{setup}-{precision}")
        for setup in args.setups
        for precision in precisions()
    ]
    if args.bert_base:
        result["epochs"].append(one_epoch(args, "full", "auto", models[1], "bert-base-full"))
    train_ds, val_ds, label_names, _ = H.load_data(args.data)
    train_posts = min(args.train_posts or len(train_ds), len(train_ds))  # one epoch's training posts
    result["writeup"] = [writeup_against_ours(args, setup, m, train_posts) for m in models for setup in WRITEUP_SETUPS]
    texts = list(val_ds["text"])[: 128 if args.quick else None]
    result["prediction"] = prediction(args, texts, label_names)
    result["parallel"] = parallel_against_separate(args, texts)
    result["seconds"] = time.perf_counter() - start
    result["goals"] = goals(result)
    H.write_results(H.results_stem(args), result, markdown(result), draw)


if __name__ == "__main__":
    main()
