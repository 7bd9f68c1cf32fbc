"""
Measure the write-up's claims side by side, on one machine, in one run, on the same data and split:

1. training throughput (posts/s, real tokens/s) of full fine-tuning, Pfeiffer, Houlsby and Pfeiffer in the upper
   half of the layers (with its frozen lower half computed every step, and computed once as train.py does), each
   in this project's pipeline and in the write-up's (every post padded to 512, batch 2); against
   transformers.Trainer / adapters.AdapterTrainer on identical work: bench/peers.py;
2. peak memory of each training run (resident memory on CPU, peak allocated GPU memory on CUDA);
3. size on disk of a saved Pfeiffer adapter with its head against the saved full model;
4. inference throughput on the same posts: predict.py's path for the full model, a Pfeiffer adapter and a LoRA
   adapter (merged into the base weights and not), against transformers.pipeline at batch size 1 and 64;
5. accuracy of the full-data training runs (their metrics.jsonl) beside a TF-IDF + logistic regression baseline.

    python -m bench.writeup_claims --quick   # a few minutes on a CPU
    python -m bench.writeup_claims           # the full run; writes bench/results/writeup-claims-<machine>.{json,md,png}

Each training measurement runs in a fresh process, so that its peak memory is its own.
"""

import argparse
import json
import tempfile
import time
from itertools import islice
from pathlib import Path

import torch
from transformers import pipeline
from transformers.utils import logging as hf_logging

import bench.harness as H
import model as M
from textclassifier import inference, saved, training

PIPELINES = {
    "full": ["ours", "write-up"],
    "pfeiffer": ["ours", "write-up"],
    "houlsby": ["ours", "write-up"],
    "pfeiffer-upper-half": ["ours", "write-up"],
    "pfeiffer-upper-half-cached": ["ours"],
}
RUNS = {
    "pfeiffer": "adapters/depression-pfeiffer",
    "houlsby": "adapters/depression-houlsby",
    "pfeiffer-upper-half": "adapters/depression-pfeiffer-upper",
    "full": "models/depression-full",
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    H.add_run_flags(p, "writeup-claims", "few steps and posts: a short run on a CPU")
    H.add_common_flags(p)
    p.add_argument(
        "--steps", type=int, default=None, help="timed training steps per measurement (default: 20, quick 4)"
    )
    p.add_argument("--warmup-steps", type=int, default=None, help="untimed steps first (default: 3, quick 1)")
    p.add_argument("--predict-posts", type=int, default=None, help="posts for inference (default: 1000, quick 200)")
    p.add_argument("--measure", nargs=2, metavar=("SETUP", "PIPELINE"), help=argparse.SUPPRESS)  # worker mode
    args = p.parse_args(argv)
    args.steps = args.steps or (4 if args.quick else 20)
    args.warmup_steps = args.warmup_steps if args.warmup_steps is not None else (1 if args.quick else 3)
    args.predict_posts = args.predict_posts or (200 if args.quick else 1000)
    return args


def measure_training(args, setup, pipeline_name):
    """One training measurement (run in its own process): warm-up, then timed steps; returns its figures."""
    model, optimizer, accelerator, batches = H.prepare_training(
        args.model, args.data, setup, pipeline_name, posts_needed=(args.steps + args.warmup_steps) * training.BATCH_SIZE
    )
    device = accelerator.device
    base_memory = H.peak_memory_mb(device)
    H.timed_steps(model, optimizer, accelerator, islice(batches, args.warmup_steps))
    seconds, examples, tokens = H.timed_steps(model, optimizer, accelerator, islice(batches, args.steps))
    params = M.count_parameters(model)
    return {
        "setup": setup,
        "pipeline": pipeline_name,
        "steps": args.steps,
        "seconds": seconds,
        "examples_per_second": examples / seconds,
        "tokens_per_second": tokens / seconds,
        "peak_memory_mb": H.peak_memory_mb(device),
        "memory_before_training_mb": base_memory,
        "trainable_percent": params["trainable_percent"],
        "mixed_precision": accelerator.mixed_precision,
    }


def run_measurement(args, setup, pipeline_name):
    """measure_training in a fresh Python process (its own peak memory)."""
    return H.worker(
        [
            "-m",
            "bench.writeup_claims",
            "--measure",
            setup,
            pipeline_name,
            "--model",
            args.model,
            "--data",
            args.data,
            "--steps",
            args.steps,
            "--warmup-steps",
            args.warmup_steps,
        ]
    )


def folder_mb(folder, pattern="*"):
    return sum(f.stat().st_size for f in Path(folder).glob(pattern) if f.is_file()) / 2**20


def measure_sizes(args, label_names):
    """Saved Pfeiffer adapter + head against the saved full model (weights are the same size trained or not)."""
    tokenizer = M.load_tokenizer(args.model)
    with tempfile.TemporaryDirectory() as tmp:
        adapter = M.build_model(args.model, "adapter", label_names, "pfeiffer")
        saved.save_trained(adapter, tokenizer, Path(tmp) / "adapter", "adapter")
        full = M.build_model(args.model, "full", label_names)
        saved.save_trained(full, tokenizer, Path(tmp) / "full", "full")
        adapter_mb, full_mb = folder_mb(Path(tmp) / "adapter"), folder_mb(Path(tmp) / "full")
    return {"adapter_with_head_mb": adapter_mb, "full_model_mb": full_mb, "ratio": adapter_mb / full_mb}


def measure_inference(args, val_ds, label_names):
    """Posts/s over the same posts: predict.py's path (predict.predict_proba) for the full model, a Pfeiffer
    adapter, and a LoRA adapter kept apart and merged into the base weights (as predict.py does by default);
    transformers.pipeline on the full model at batch size 1 and 64. Untrained weights: speed does not depend on
    their values. Each after a warm-up batch."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    texts = list(val_ds["text"])[: args.predict_posts]  # real posts the models did not train on
    tokenizer = M.load_tokenizer(args.model)
    results = {"posts": len(texts), "posts_per_second": {}}

    def time_it(name, classify):
        classify(texts[:64])
        start = time.perf_counter()
        out = classify(texts)
        results["posts_per_second"][name] = len(texts) / (time.perf_counter() - start)
        return out

    ours = lambda model: lambda t: inference.predict_proba(model, tokenizer, t, training.MAX_LENGTH)  # noqa: E731
    full = M.build_model(args.model, "full", label_names).to(device).eval()
    probs = time_it("predict.py full", ours(full))
    for name, config, merge in [
        ("predict.py pfeiffer", "pfeiffer", False),
        ("predict.py lora", "lora", False),
        ("predict.py lora merged", "lora", True),
    ]:
        model = M.build_model(args.model, "adapter", label_names, config)
        if merge:
            saved.merge_adapter(model, {"mode": "adapter", "adapter_config": config})
        time_it(name, ours(model.to(device).eval()))
    classify = pipeline("text-classification", model=full, tokenizer=tokenizer, device=device, top_k=None)
    for batch_size in (1, 64):
        theirs = time_it(
            f"pipeline full, batch {batch_size}",
            lambda t: classify(t, truncation=True, max_length=training.MAX_LENGTH, batch_size=batch_size),
        )
    p1 = torch.tensor([next(s["score"] for s in row if s["label"] == label_names[1]) for row in theirs])
    results["max_probability_difference"] = float((p1 - probs[:, 1]).abs().max())
    pps = results["posts_per_second"]
    results["ours_vs_pipeline_batch_1"] = pps["predict.py full"] / pps["pipeline full, batch 1"]
    results["ours_vs_pipeline_batch_64"] = pps["predict.py full"] / pps["pipeline full, batch 64"]
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
        info_file = H.ROOT / folder / saved.TRAINING_INFO
        if not info_file.is_file():
            continue
        info = json.loads(info_file.read_text())
        if (info.get("data_fingerprint"), info.get("split_seed", info.get("seed")), info.get("val_size")) != split_key:
            continue  # another data set, split or a subset: not comparable
        rows = [json.loads(line) for line in (H.ROOT / folder / "metrics.jsonl").read_text().splitlines()]
        runs[setup] = {
            "accuracy": info["best"]["accuracy"],
            "f1": info["best"]["f1"],
            "device": info["device"],
            "seconds_per_epoch": sum(r["train_seconds"] for r in rows) / len(rows),
            "folder": folder,
        }
    return runs


def ratios(runs):
    """Pairwise ratios, each inside this run."""
    by = {(t["setup"], t["pipeline"]): t for t in runs}
    eps = lambda s, p="ours": by[(s, p)]["examples_per_second"]  # noqa: E731
    out = {f"ours_vs_writeup_{s}": eps(s) / eps(s, "write-up") for s in H.SETUPS if (s, "write-up") in by}
    for s in [s for s in H.SETUPS if s != "full"]:
        out[f"{s}_vs_full_speed"] = eps(s) / eps("full")
        out[f"{s}_vs_full_peak_memory"] = by[(s, "ours")]["peak_memory_mb"] / by[("full", "ours")]["peak_memory_mb"]
        added = lambda s: by[(s, "ours")]["peak_memory_mb"] - by[(s, "ours")]["memory_before_training_mb"]  # noqa: E731
        out[f"{s}_vs_full_memory_added_by_training"] = added(s) / added("full")  # beyond runtime, model and data
    out["pfeiffer-upper-half-cached_vs_uncached_speed"] = eps("pfeiffer-upper-half-cached") / eps("pfeiffer-upper-half")
    return out


def markdown(result):
    lines = [
        f"Device: **{result['device']}** — `{result['command']}` — {result['date']}",
        "",
        "| setup | pipeline | posts/s | tokens/s | peak memory (MB) | before training (MB) | trainable % |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for t in result["training"]:
        tokens = f"{t['tokens_per_second']:.0f}" if t["tokens_per_second"] else "-"
        lines.append(
            f"| {t['setup']} | {t['pipeline']} | {t['examples_per_second']:.1f} | {tokens} "
            f"| {t['peak_memory_mb']:.0f} | {t['memory_before_training_mb']:.0f} | {t['trainable_percent']:.2f} |"
        )
    lines += ["", "| ratio (same run) | value |", "| --- | ---: |"]
    lines += [f"| {k} | {v:.2f} |" for k, v in result["ratios"].items()]
    s, i = result["sizes"], result["inference"]
    lines += [
        "",
        f"Size on disk: Pfeiffer adapter + head {s['adapter_with_head_mb']:.2f} MB, full model "
        f"{s['full_model_mb']:.1f} MB ({100 * s['ratio']:.2f}%).",
        "",
        f"Inference over the same {i['posts']} posts (predict.py over transformers.pipeline at batch 1: "
        f"{i['ours_vs_pipeline_batch_1']:.2f}x, at batch 64: {i['ours_vs_pipeline_batch_64']:.2f}x):",
        "",
        "| path | posts/s |",
        "| --- | ---: |",
    ]
    lines += [f"| {name} | {pps:.1f} |" for name, pps in i["posts_per_second"].items()]
    lines += [
        "",
        "| model | validation accuracy | F1 | seconds per epoch |",
        "| --- | ---: | ---: | ---: |",
        f"| TF-IDF + logistic regression | {100 * result['tfidf']['accuracy']:.2f}% | "
        f"{100 * result['tfidf']['f1']:.2f}% | |",
    ]
    for setup, r in result["accuracy"].items():
        lines.append(
            f"| {setup} ({r['folder']}, {r['device']}) | {100 * r['accuracy']:.2f}% | {100 * r['f1']:.2f}% "
            f"| {r['seconds_per_epoch']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def chart(result):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    setups = list(H.SETUPS)
    by = {(t["setup"], t["pipeline"]): t for t in result["training"]}
    x = range(len(setups))
    for offset, pipe, label in [
        (-0.2, "ours", "this pipeline"),
        (0.2, "write-up", "write-up pipeline (pad 512, batch 2)"),
    ]:
        axes[0].bar(
            [i + offset for i in x],
            [by[(s, pipe)]["examples_per_second"] if (s, pipe) in by else 0 for s in setups],
            0.4,
            label=label,
        )
    axes[0].set(title="training throughput", ylabel="posts / s", xticks=list(x), xticklabels=setups)
    axes[0].legend(fontsize=8)
    before = [by[(s, "ours")]["memory_before_training_mb"] for s in setups]
    axes[1].bar(setups, before, color="tab:gray", label="before training: runtime, model, data")
    axes[1].bar(
        setups,
        [by[(s, "ours")]["peak_memory_mb"] - b for s, b in zip(setups, before)],
        bottom=before,
        color="tab:purple",
        label="added by training: activations, gradients, optimizer",
    )
    axes[1].set(title="peak memory while training (this pipeline)", ylabel="MB")
    axes[1].legend(fontsize=8)
    pps = result["inference"]["posts_per_second"]
    axes[2].barh(list(pps), list(pps.values()), color="tab:green")
    axes[2].set(title=f"inference, {result['inference']['posts']} posts", xlabel="posts / s")
    for ax in axes[:2]:
        ax.tick_params(axis="x", labelrotation=20, labelsize=8)
    axes[2].tick_params(axis="y", labelsize=8)
    fig.suptitle(f"{result['device']}", fontsize=10)
    return fig


def main(argv=None):
    args = parse_args(argv)
    hf_logging.set_verbosity_error()
    if args.measure:
        print(json.dumps(measure_training(args, *args.measure)))
        return
    train_ds, val_ds, label_names, info = H.load_data(args.data)
    runs = []
    for setup, pipes in PIPELINES.items():
        for pipe in pipes:
            t = run_measurement(args, setup, pipe)
            print(
                f"{setup:<27} {pipe:<9} {t['examples_per_second']:7.1f} posts/s peak {t['peak_memory_mb']:6.0f} MB",
                flush=True,
            )
            runs.append(t)
    result = {
        "device": H.device_name(),
        "command": H.command_line("writeup_claims.py", argv),
        "date": time.strftime("%Y-%m-%d"),
        "model": args.model,
        "quick": args.quick,
        "data_fingerprint": info["data_fingerprint"],
        "val_fingerprint": info["val_fingerprint"],
        "training": runs,
        "ratios": ratios(runs),
        "sizes": measure_sizes(args, label_names),
        "inference": measure_inference(args, val_ds, label_names),
        "tfidf": tfidf_baseline(train_ds, val_ds),
        "accuracy": read_training_runs((info["data_fingerprint"], H.SEED, len(val_ds))),
        "versions": training.library_versions(),
    }
    H.write_results(H.results_stem(args), result, markdown(result), chart)


if __name__ == "__main__":
    main()
