"""
Measure the write-up's claims side by side, on one machine, in one run, on the same data and split:

1. training throughput (posts/s, real tokens/s) of full fine-tuning, Pfeiffer, Houlsby and Pfeiffer in the upper
   half of the layers, each in this project's pipeline and in the write-up's (every post padded to 512, batch 2);
2. peak memory of each training run (resident memory on CPU, peak allocated GPU memory on CUDA);
3. size on disk of a saved Pfeiffer adapter with its head against the saved full model;
4. inference throughput: predict.py's batched path against transformers.pipeline on the same weights;
5. accuracy of the full-data training runs (their metrics.jsonl) beside a TF-IDF + logistic regression baseline.

    python bench/run.py --quick   # a few minutes on a CPU
    python bench/run.py           # the full run; writes bench/results/<machine>.{json,md,png}

Each training measurement runs in a fresh process, so that its peak memory is its own.
"""

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from itertools import islice
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import torch  # noqa: E402
from accelerate import Accelerator  # noqa: E402
from transformers import AutoConfig, pipeline  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

import data  # noqa: E402
import model as M  # noqa: E402
import predict  # noqa: E402
import train  # noqa: E402
from writeup_pipeline import writeup_loader  # noqa: E402

SEED = 42
# name -> (mode, adapter config, leave_out given the number of layers)
SETUPS = {
    "full": ("full", None, None),
    "pfeiffer": ("adapter", "pfeiffer", None),
    "houlsby": ("adapter", "houlsby", None),
    "pfeiffer-upper-half": ("adapter", "pfeiffer", lambda layers: list(range(layers // 2))),
}
RUNS = {"pfeiffer": "adapters/depression-pfeiffer", "houlsby": "adapters/depression-houlsby",
        "pfeiffer-upper-half": "adapters/depression-pfeiffer-upper", "full": "models/depression-full"}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="few steps and posts: a short run on a CPU")
    p.add_argument("--model", default=M.DEFAULT_MODEL, help="base model (default: the offline MiniLM)")
    p.add_argument("--data", default=data.DEFAULT_DATA, help="data set, as for train.py")
    p.add_argument("--steps", type=int, default=None, help="timed training steps per measurement (default: 20, quick 4)")
    p.add_argument("--warmup-steps", type=int, default=None, help="untimed steps first (default: 3, quick 1)")
    p.add_argument("--predict-posts", type=int, default=None, help="posts for inference (default: 1000, quick 200)")
    p.add_argument("--out", default=str(ROOT / "bench" / "results"), help="folder for the JSON, table and chart")
    p.add_argument("--name", default=None, help="file name stem (default: the machine's name)")
    p.add_argument("--measure", nargs=2, metavar=("SETUP", "PIPELINE"), help=argparse.SUPPRESS)  # worker mode
    args = p.parse_args(argv)
    args.steps = args.steps or (4 if args.quick else 20)
    args.warmup_steps = args.warmup_steps if args.warmup_steps is not None else (1 if args.quick else 3)
    args.predict_posts = args.predict_posts or (200 if args.quick else 1000)
    return args


def device_name():
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    cpuinfo = Path("/proc/cpuinfo")
    models = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
              if line.startswith("model name")] if cpuinfo.exists() else []
    return f"CPU {models[0] if models else platform.machine()}, {torch.get_num_threads()} threads"


def machine_slug():
    name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"cpu-{os.cpu_count()}cores"
    return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-")


def write_results(stem, result, markdown_text, draw):
    """<stem>.json, <stem>.md and <stem>.png (drawn by draw(result, path)) for one benchmark's result."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    Path(f"{stem}.md").write_text(markdown_text)
    draw(result, Path(f"{stem}.png"))
    print(markdown_text)
    print(f"wrote {stem}.json, .md and .png")


def load_data(args):
    return data.load_splits(args.data, seed=SEED)  # train.py's default split


def proc_status_mb(field):
    """A memory field of /proc/self/status (VmHWM: peak resident, VmRSS: resident now) in MB; None off Linux."""
    status = Path("/proc/self/status")
    if not status.exists():
        return None
    line = next(line for line in status.read_text().splitlines() if line.startswith(f"{field}:"))
    return int(line.split()[1]) / 1024  # kB


def peak_memory_mb(device):
    """Peak allocated GPU memory on CUDA; else this process's peak resident memory (VmHWM: unlike ru_maxrss,
    it does not carry over the parent's peak into a freshly started process)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    peak = proc_status_mb("VmHWM")
    return peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # macOS: bytes


def current_memory_mb(device):
    """Allocated GPU memory on CUDA; else this process's resident memory now (VmRSS)."""
    if device.type == "cuda":
        return torch.cuda.memory_allocated() / 2**20
    now = proc_status_mb("VmRSS")
    return now if now is not None else float("nan")


def prepare_training(args, setup, pipeline_name, attention_dropout="default", fused=None, mixed_precision="auto"):
    """Model, optimizer, accelerator and an endless batch stream for one setup in one pipeline.
    The write-up trained the checkpoint as it is (attention dropout 0.1) with a plain AdamW; this pipeline uses
    train.py's defaults. bench/levers.py overrides them one at a time."""
    mode, config, leave_out = SETUPS[setup]
    train_ds, _, label_names, _ = load_data(args)
    tokenizer = M.load_tokenizer(args.model)
    layers = AutoConfig.from_pretrained(M.resolve_model_path(args.model)).num_hidden_layers
    ours = pipeline_name == "ours"
    if attention_dropout == "default":
        attention_dropout = train.ATTENTION_DROPOUT if ours else None
    fused = ours if fused is None else fused
    model = M.build_model(args.model, mode, label_names, config or "pfeiffer",
                          leave_out=leave_out(layers) if leave_out else None, attention_dropout=attention_dropout)
    model.train()
    if ours:
        loader = data.train_loader(data.tokenize(train_ds, tokenizer, train.MAX_LENGTH), tokenizer, train.BATCH_SIZE, SEED)
    else:
        n = (args.steps + args.warmup_steps) * 2 * 4  # enough posts for the steps, without tokenising them all
        loader = writeup_loader(list(train_ds["text"])[:n], list(train_ds["label"])[:n], tokenizer)
    accelerator = Accelerator(mixed_precision=train.mixed_precision(mixed_precision))
    model, optimizer = accelerator.prepare(model, train.build_optimizer(model, lr=1e-4, fused=fused))
    return model, optimizer, accelerator, forever(loader)


def timed_steps(model, optimizer, accelerator, batches):
    """train.train_step (the very step train.py runs) over `batches`; returns (seconds, posts, real tokens)."""
    device = accelerator.device
    if device.type == "cuda":
        torch.cuda.synchronize()
    start, posts, tokens = time.perf_counter(), 0, 0
    for batch in batches:
        batch = {k: v.to(device) for k, v in batch.items()}
        train.train_step(model, batch, optimizer, None, accelerator)
        posts += len(batch["labels"])
        tokens += int(batch["attention_mask"].sum())
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, posts, tokens


def measure_training(args, setup, pipeline_name):
    """One training measurement (run in its own process): warm-up, then timed steps; returns its figures."""
    model, optimizer, accelerator, batches = prepare_training(args, setup, pipeline_name)
    device = accelerator.device
    base_memory = peak_memory_mb(device)
    timed_steps(model, optimizer, accelerator, islice(batches, args.warmup_steps))
    seconds, examples, tokens = timed_steps(model, optimizer, accelerator, islice(batches, args.steps))
    params = M.count_parameters(model)
    return {"setup": setup, "pipeline": pipeline_name, "steps": args.steps, "seconds": seconds,
            "examples_per_second": examples / seconds, "tokens_per_second": tokens / seconds,
            "peak_memory_mb": peak_memory_mb(device), "memory_before_training_mb": base_memory,
            "trainable_percent": params["trainable_percent"], "mixed_precision": accelerator.mixed_precision}


def forever(loader):
    """Batches without end: small data sets run out of batches before the timed steps are done."""
    while True:
        yield from loader


def run_measurement(args, setup, pipeline_name):
    """measure_training in a fresh Python process (its own peak memory)."""
    cmd = [sys.executable, __file__, "--measure", setup, pipeline_name, "--model", args.model, "--data", args.data,
           "--steps", str(args.steps), "--warmup-steps", str(args.warmup_steps)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"measurement {setup}/{pipeline_name} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def folder_mb(folder, pattern="*"):
    return sum(f.stat().st_size for f in Path(folder).glob(pattern) if f.is_file()) / 2**20


def measure_sizes(args, label_names):
    """Saved Pfeiffer adapter + head against the saved full model (weights are the same size trained or not)."""
    tokenizer = M.load_tokenizer(args.model)
    with tempfile.TemporaryDirectory() as tmp:
        adapter = M.build_model(args.model, "adapter", label_names, "pfeiffer")
        M.save_trained(adapter, tokenizer, Path(tmp) / "adapter", "adapter")
        full = M.build_model(args.model, "full", label_names)
        M.save_trained(full, tokenizer, Path(tmp) / "full", "full")
        adapter_mb, full_mb = folder_mb(Path(tmp) / "adapter"), folder_mb(Path(tmp) / "full")
    return {"adapter_with_head_mb": adapter_mb, "full_model_mb": full_mb, "ratio": adapter_mb / full_mb}


def measure_inference(args, val_ds, label_names):
    """predict.py's path against transformers.pipeline, both on the same (untrained) full-mode weights."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    texts = list(val_ds["text"])[:args.predict_posts]  # real posts the models did not train on
    model = M.build_model(args.model, "full", label_names).to(device).eval()
    tokenizer = M.load_tokenizer(args.model)
    results = {"posts": len(texts)}

    start = time.perf_counter()
    ours = predict.predict_proba(model, tokenizer, texts, train.MAX_LENGTH)
    results["predict_py_posts_per_second"] = len(texts) / (time.perf_counter() - start)

    classify = pipeline("text-classification", model=model, tokenizer=tokenizer, device=device, top_k=None)
    start = time.perf_counter()
    theirs = classify(texts, truncation=True, max_length=train.MAX_LENGTH)
    results["pipeline_posts_per_second"] = len(texts) / (time.perf_counter() - start)
    results["speedup"] = results["predict_py_posts_per_second"] / results["pipeline_posts_per_second"]
    p1 = torch.tensor([next(s["score"] for s in row if s["label"] == label_names[1]) for row in theirs])
    results["max_probability_difference"] = float((p1 - ours[:, 1]).abs().max())
    return results


def tfidf_baseline(train_ds, val_ds):
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, f1_score

    vectorizer = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True)
    x_train, x_val = vectorizer.fit_transform(list(train_ds["text"])), vectorizer.transform(list(val_ds["text"]))
    classifier = LogisticRegression(C=10, max_iter=2000).fit(x_train, list(train_ds["label"]))
    pred = classifier.predict(x_val)
    labels = list(val_ds["label"])
    return {"accuracy": accuracy_score(labels, pred), "f1": f1_score(labels, pred)}


def read_training_runs(split_key):
    """Best epoch of each full-data run that train.py left on the same split, and its seconds per epoch.

    The split is a function of the cleaned data, the seed and the validation share, so runs that agree on
    those were validated on the same posts."""
    runs = {}
    for setup, folder in RUNS.items():
        info_file = ROOT / folder / M.TRAINING_INFO
        if not info_file.is_file():
            continue
        info = json.loads(info_file.read_text())
        if (info.get("data_fingerprint"), info.get("seed"), info.get("val_size")) != split_key:
            continue  # another data set, split or a subset: not comparable
        rows = [json.loads(line) for line in (ROOT / folder / "metrics.jsonl").read_text().splitlines()]
        runs[setup] = {"accuracy": info["best"]["accuracy"], "f1": info["best"]["f1"], "device": info["device"],
                       "seconds_per_epoch": sum(r["train_seconds"] for r in rows) / len(rows), "folder": folder}
    return runs


def ratios(training):
    """Pairwise ratios, each inside this run."""
    by = {(t["setup"], t["pipeline"]): t for t in training}
    eps = lambda s, p="ours": by[(s, p)]["examples_per_second"]  # noqa: E731
    out = {f"ours_vs_writeup_{s}": eps(s) / eps(s, "write-up") for s in SETUPS}
    for s in ["pfeiffer", "houlsby", "pfeiffer-upper-half"]:
        out[f"{s}_vs_full_speed"] = eps(s) / eps("full")
        out[f"{s}_vs_full_peak_memory"] = by[(s, "ours")]["peak_memory_mb"] / by[("full", "ours")]["peak_memory_mb"]
        added = lambda s: by[(s, "ours")]["peak_memory_mb"] - by[(s, "ours")]["memory_before_training_mb"]  # noqa: E731
        out[f"{s}_vs_full_memory_added_by_training"] = added(s) / added("full")  # beyond runtime, model and data
    return out


def markdown(result):
    lines = [f"Device: **{result['device']}** — `{result['command']}` — {result['date']}", "",
             "| setup | pipeline | posts/s | tokens/s | peak memory (MB) | before training (MB) | trainable % |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for t in result["training"]:
        lines.append(f"| {t['setup']} | {t['pipeline']} | {t['examples_per_second']:.1f} | {t['tokens_per_second']:.0f} "
                     f"| {t['peak_memory_mb']:.0f} | {t['memory_before_training_mb']:.0f} | {t['trainable_percent']:.2f} |")
    lines += ["", "| ratio (same run) | value |", "| --- | ---: |"]
    lines += [f"| {k} | {v:.2f} |" for k, v in result["ratios"].items()]
    s, i = result["sizes"], result["inference"]
    lines += ["", f"Size on disk: Pfeiffer adapter + head {s['adapter_with_head_mb']:.2f} MB, full model "
              f"{s['full_model_mb']:.1f} MB ({100 * s['ratio']:.2f}%).",
              f"Inference over {i['posts']} posts: predict.py {i['predict_py_posts_per_second']:.1f} posts/s, "
              f"transformers.pipeline {i['pipeline_posts_per_second']:.1f} posts/s ({i['speedup']:.2f}x).", "",
              "| model | validation accuracy | F1 | seconds per epoch |", "| --- | ---: | ---: | ---: |",
              f"| TF-IDF + logistic regression | {100 * result['tfidf']['accuracy']:.2f}% | "
              f"{100 * result['tfidf']['f1']:.2f}% | |"]
    for setup, r in result["accuracy"].items():
        lines.append(f"| {setup} ({r['folder']}, {r['device']}) | {100 * r['accuracy']:.2f}% | {100 * r['f1']:.2f}% "
                     f"| {r['seconds_per_epoch']:.0f} |")
    return "\n".join(lines) + "\n"


def chart(result, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    setups = list(SETUPS)
    by = {(t["setup"], t["pipeline"]): t for t in result["training"]}
    x = range(len(setups))
    for offset, pipe in [(-0.2, "ours"), (0.2, "write-up")]:
        axes[0].bar([i + offset for i in x], [by[(s, pipe)]["examples_per_second"] for s in setups], 0.4,
                    label="this pipeline" if pipe == "ours" else "write-up pipeline (pad 512, batch 2)")
    axes[0].set(title="training throughput", ylabel="posts / s", xticks=list(x), xticklabels=setups)
    axes[0].legend(fontsize=8)
    before = [by[(s, "ours")]["memory_before_training_mb"] for s in setups]
    axes[1].bar(setups, before, color="tab:gray", label="before training: runtime, model, data")
    axes[1].bar(setups, [by[(s, "ours")]["peak_memory_mb"] - b for s, b in zip(setups, before)], bottom=before,
                color="tab:purple", label="added by training: activations, gradients, optimizer")
    axes[1].set(title="peak memory while training (this pipeline)", ylabel="MB")
    axes[1].legend(fontsize=8)
    names = ["TF-IDF"] + list(result["accuracy"])
    accs = [result["tfidf"]["accuracy"]] + [r["accuracy"] for r in result["accuracy"].values()]
    axes[2].bar(names, [100 * a for a in accs], color="tab:green")
    axes[2].set(title="validation accuracy (full-data runs)", ylabel="%", ylim=(min(90, 100 * min(accs) - 1), 100))
    for ax in axes:
        ax.tick_params(axis="x", labelrotation=20, labelsize=8)
    fig.suptitle(f"{result['device']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    args = parse_args(argv)
    hf_logging.set_verbosity_error()
    if args.measure:
        print(json.dumps(measure_training(args, *args.measure)))
        return
    train_ds, val_ds, label_names, info = load_data(args)
    training = []
    for setup in SETUPS:
        for pipe in ["ours", "write-up"]:
            t = run_measurement(args, setup, pipe)
            print(f"{setup:<20} {pipe:<9} {t['examples_per_second']:7.1f} posts/s {t['tokens_per_second']:8.0f} tokens/s "
                  f"peak {t['peak_memory_mb']:6.0f} MB", flush=True)
            training.append(t)
    result = {"device": device_name(), "command": "python bench/run.py" + (" --quick" if args.quick else ""),
              "date": time.strftime("%Y-%m-%d"), "model": args.model, "quick": args.quick,
              "data_fingerprint": info["data_fingerprint"], "val_fingerprint": info["val_fingerprint"],
              "training": training, "ratios": ratios(training), "sizes": measure_sizes(args, label_names),
              "inference": measure_inference(args, val_ds, label_names), "tfidf": tfidf_baseline(train_ds, val_ds),
              "accuracy": read_training_runs((info["data_fingerprint"], SEED, info["val_size"])), "versions": train.library_versions()}
    stem = args.name or machine_slug() + ("-quick" if args.quick else "")
    write_results(Path(args.out) / stem, result, markdown(result), chart)


if __name__ == "__main__":
    main()
