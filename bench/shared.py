"""
Several adapters on one base model against one model per task: resident memory and posts per second, for 1, 3 and 6
Pfeiffer adapters on MiniLM and on a BERT-base-sized model (12 layers, hidden 768; random weights: speed, memory and
sizes do not depend on them), with adapters in every layer and in the upper half only (their lower half computed
once in a Parallel pass); and storage as the original write-up counts it: bytes on disk and memory of 1, 2, 3 ...
fully fine-tuned models against one base with as many adapters (their heads included).

    python -m bench.shared                       # MiniLM and BERT-base-sized, 1/3/6 tasks, 2 alternated rounds
    python -m bench.shared --counts 1 2 3 --name storage   # the write-up's storage claim (880 MB / 450 MB)
    python -m bench.shared --quick --model DIR   # tiny runs that exercise it (CI)

Each measurement runs in a fresh process: it loads the adapters (inference.load_shared, or inference.load once per
task as a loop over folders would; the full models: inference.load each, as predict.py loads one), classifies the same
posts for every task (the depression data set's validation posts, train.py's max length), and reports its resident
memory before loading (the libraries imported), after loading and after classifying, the peak, and posts per second
with every task answered. The adapters and heads are freshly initialised (never trained), saved as train.py saves
them. Writes bench/results/<name>-<machine>[-quick].{json,md,png}.
"""

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

import data
import model as M
from bench import harness as H
from textclassifier import inference, saved, training
from textclassifier.report import markdown_table

BERT_BASE = {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072}
PLACEMENTS = ["every layer", "upper half"]
# What loading a base model reads: its weights, config and tokenizer
BASE_FILES = ("model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt",
              "special_tokens_map.json")  # fmt: skip


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    H.add_common_flags(p, data_help="posts to classify: the depression data set's split")
    p.add_argument("--no-bert-base", dest="bert_base", action="store_false", help="leave out the BERT-base-sized model")
    p.add_argument("--counts", nargs="+", type=int, default=None, help="numbers of tasks (default: 1 3 6; quick 1 3)")
    p.add_argument("--posts", type=int, default=None, help="posts classified per measurement (default: 512; quick 64)")
    p.add_argument(
        "--rounds", type=int, default=None, help="rounds, alternating which way runs first (default: 2; quick 1)"
    )
    p.add_argument("--work", default="/tmp/bench-shared", help="where the models and adapters are written")
    H.add_run_flags(p, "shared", "1 round, 1 and 3 tasks, 64 posts, no BERT-base")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # one measurement, in a fresh process
    args = p.parse_args(argv)
    args.counts = args.counts or ([1, 3] if args.quick else [1, 3, 6])  # a flag given wins over --quick's value
    args.posts = args.posts or (64 if args.quick else 512)
    args.rounds = args.rounds or (1 if args.quick else 2)
    args.bert_base = args.bert_base and not args.quick
    return args


def bert_base_folder(work, small_model):
    """A BERT-base-sized encoder with random weights and the small model's tokenizer (same vocabulary)."""
    from transformers import AutoConfig, BertModel

    folder = Path(work) / "bert-base-random"
    if not (folder / "model.safetensors").is_file():
        config = AutoConfig.from_pretrained(M.resolve_model_path(small_model))
        for key, value in BERT_BASE.items():
            setattr(config, key, value)
        torch.manual_seed(0)
        BertModel(config).save_pretrained(folder)
        M.load_tokenizer(small_model).save_pretrained(folder)
    return str(folder)


def adapter_folders(work, base, placement, count, mode="adapter"):
    """`count` Pfeiffer adapters with heads (or fully fine-tuned models: mode "full"; seeds 0..count-1) on `base`,
    saved as train.py saves them."""
    folders = []
    layers = H.lower_half(base) if placement == "upper half" else None
    for i in range(count):
        folder = Path(work) / f"{Path(base).name}-{'full' if mode == 'full' else placement.replace(' ', '-')}-{i}"
        if not (folder / saved.TRAINING_INFO).is_file():
            model = M.build_model(base, mode, data.LABEL_NAMES, "pfeiffer", leave_out=layers, seed=i)
            folder.mkdir(parents=True, exist_ok=True)
            saved.save_trained(model, M.load_tokenizer(base), folder, mode)
            saved.write_training_info(folder, {
                "mode": mode, "base_model": base, "adapter_config": "pfeiffer" if mode == "adapter" else None,
                "leave_out": layers,
                "max_length": training.MAX_LENGTH, "label_names": list(data.LABEL_NAMES), "normalize_text": False,
            })  # fmt: skip
        folders.append(str(folder))
    return folders


def megabytes_on_disk(folders, base=None):
    """What the folders hold on disk, with what loading the base model reads (BASE_FILES) where it is given, in MB."""
    files = [f for folder in folders for f in Path(folder).rglob("*") if f.is_file()]  # an AdapterFusion's too
    if base is not None:
        files += [Path(M.resolve_model_path(base)) / name for name in BASE_FILES]
    return sum(f.stat().st_size for f in files if f.is_file()) / 1e6


def measure(spec):
    """In a fresh process: load the tasks one way, classify the posts for every task; memory and speed."""
    import adapters  # noqa: F401  # the libraries a load imports, before the memory without models is read
    from transformers import BertModel  # noqa: F401
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    texts = spec["texts"]
    before_mb = H.current_memory_mb(torch.device("cpu"))
    start = time.perf_counter()
    if spec["way"] == "shared":  # else "separate" or "full": each folder loaded alone
        shared = inference.load_shared(spec["folders"])
        run = lambda posts: inference.classify_shared(shared, posts)  # noqa: E731
        passes, weights = len(shared.passes), list(shared.model.parameters())
    else:
        models = [inference.load(folder) for folder in spec["folders"]]
        run = lambda posts: [inference.classify(m, posts) for m in models]  # noqa: E731
        passes, weights = len(models), [p for m in models for p in m.model.parameters()]
    load_seconds = time.perf_counter() - start
    sum(float(p.detach().sum()) for p in weights)  # every weight read once: resident, as safetensors maps them lazily
    loaded_mb = H.current_memory_mb(torch.device("cpu"))
    run(texts[:16])  # warm-up
    start = time.perf_counter()
    run(texts)
    seconds = time.perf_counter() - start
    return {
        "load_seconds": load_seconds,
        "resident_before_load_mb": before_mb,
        "resident_after_load_mb": loaded_mb,
        "resident_mb": H.current_memory_mb(torch.device("cpu")),
        "peak_mb": H.peak_memory_mb(torch.device("cpu")),
        "seconds": seconds,
        "posts_per_second": len(texts) / seconds,
        "passes": passes,
    }


def measure_in_process(way, folders, texts):
    spec = json.dumps({"way": way, "folders": folders, "texts": texts})
    spec_file = Path(folders[0]).parent / "spec.json"
    spec_file.write_text(spec)
    return H.worker(["-m", "bench.shared", "--worker", str(spec_file)])


def median(values):
    return statistics.median(values)


def summarise(rows):
    """Per (base, placement, tasks): the medians of the rounds, and shared against separate."""
    out, rows = [], [r for r in rows if r["way"] != "full"]
    keys = dict.fromkeys((r["base"], r["placement"], r["tasks"]) for r in rows)
    for base, placement, tasks in keys:
        mine = [r for r in rows if (r["base"], r["placement"], r["tasks"]) == (base, placement, tasks)]
        ways = {
            way: {
                key: median([r[key] for r in mine if r["way"] == way])
                for key in ("resident_after_load_mb", "resident_mb", "peak_mb", "posts_per_second", "passes")
            }
            for way in ("shared", "separate")
        }
        out.append({
            "base": base, "placement": placement, "tasks": tasks, **ways,
            "speed_ratio": ways["shared"]["posts_per_second"] / ways["separate"]["posts_per_second"],
            "memory_ratio": ways["shared"]["resident_mb"] / ways["separate"]["resident_mb"],
        })  # fmt: skip
    for key, name in (("resident_after_load_mb", "loaded"), ("resident_mb", "working")):
        one = {(r["base"], r["placement"]): r["separate"][key] for r in out if r["tasks"] == 1}
        for r in out:
            base = one.get((r["base"], r["placement"]), float("nan"))
            r[f"{name}_vs_one_model_mb"] = r["shared"][key] - base
            r[f"{name}_vs_one_model"] = r["shared"][key] / base
    return out


def storage(rows, disk):
    """Per base and number of tasks: MB on disk and in memory (resident after loading less before: the models) of
    that many fully fine-tuned models and of one base with as many adapters in every layer (the shared way), each
    against one fully fine-tuned model."""
    out = []
    for base, tasks in dict.fromkeys((r["base"], r["tasks"]) for r in rows if r["way"] == "full"):
        memory = {
            way: median([r["resident_after_load_mb"] - r["resident_before_load_mb"] for r in rows
                         if (r["base"], r["tasks"], r["way"]) == (base, tasks, way)
                         and r["placement"] in ("every layer", "full")])
            for way in ("full", "shared")
        }  # fmt: skip
        out.append({"base": base, "tasks": tasks, "disk_mb": {way: disk[base, way, tasks] for way in memory},
                    "memory_mb": memory})  # fmt: skip
    for r in out:  # one full model: measured alone where 1 is among the counts, else the smallest count's share
        one = min((o for o in out if o["base"] == r["base"]), key=lambda o: o["tasks"])
        for key in ("disk_mb", "memory_mb"):
            single = one[key]["full"] / one["tasks"]
            r[key.replace("_mb", "_vs_one_model")] = {way: v / single for way, v in r[key].items()}
    return out


def storage_markdown(result):
    rows = [
        [r["base"], r["tasks"], f"{r['disk_mb']['full']:.0f}", f"{r['disk_mb']['shared']:.0f}",
         f"{r['disk_vs_one_model']['shared']:.2f}x", f"{r['memory_mb']['full']:.0f}", f"{r['memory_mb']['shared']:.0f}",
         f"{r['memory_vs_one_model']['shared']:.2f}x"]
        for r in result.get("storage", [])
    ]  # fmt: skip
    if not rows:
        return ""
    header = ["base", "tasks", "disk: full models MB", "disk: base + adapters MB", "base + adapters / one model",
              "memory: full models MB", "memory: base + adapters MB", "base + adapters / one model"]  # fmt: skip
    return "\n".join([
        "",
        "Storage as the original write-up counts it (one BERT-base 440 MB, two fine-tuned copies 880 MB, one base with "
        "two adapters 450 MB): MB on disk (a full model's folder; the base model's weights, config and tokenizer "
        "plus each adapter's folder, its head included) and in memory (resident after loading less resident before, "
        "with the libraries imported: the models alone), the full models loaded each as predict.py loads one, the "
        "adapters on one base as predict.py --adapter A B loads them.",
        "",
        markdown_table(header, rows),
    ]) + "\n"  # fmt: skip


def markdown(result):
    rows = [
        [r["base"], r["placement"], r["tasks"], f"{r['shared']['resident_after_load_mb']:.0f}",
         f"{r['separate']['resident_after_load_mb']:.0f}", f"{r['loaded_vs_one_model_mb']:+.0f}",
         f"{r['loaded_vs_one_model']:.2f}x", f"{r['shared']['resident_mb']:.0f}", f"{r['separate']['resident_mb']:.0f}",
         f"{r['shared']['posts_per_second']:.1f}", f"{r['separate']['posts_per_second']:.1f}",
         f"{r['speed_ratio']:.2f}x", f"{r['shared']['passes']:.0f}"]
        for r in result["summary"]
    ]  # fmt: skip
    header = ["base", "adapters in", "tasks", "loaded: shared MB", "loaded: separate MB", "shared - one model, MB",
              "shared / one model", "working: shared MB", "working: separate MB", "shared: posts/s",
              "separate: posts/s", "shared / separate, speed", "passes"]  # fmt: skip
    return "\n".join([
        f"Command: `{result['command']}`",
        "",
        f"Device: {result['device']}. {result['posts']} posts per measurement, every task answering each; medians "
        f"of {result['rounds']} rounds, the two ways alternating which runs first, a fresh process each. Loaded: "
        "resident memory (VmRSS) with every weight read once, before classifying (the models); working: after "
        "classifying (the models and the buffers of the passes). 'one model': the same base with one adapter, "
        "loaded alone.",
        "",
        markdown_table(header, rows),
    ]) + "\n" + storage_markdown(result)  # fmt: skip


def draw(result):
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for base, placement in dict.fromkeys((r["base"], r["placement"]) for r in result["summary"]):
        rows = [r for r in result["summary"] if (r["base"], r["placement"]) == (base, placement)]
        tasks = [r["tasks"] for r in rows]
        label = f"{base}, {placement}"
        axes[0].plot(tasks, [r["shared"]["resident_after_load_mb"] for r in rows], "o-", label=f"{label}: shared")
        axes[0].plot(tasks, [r["separate"]["resident_after_load_mb"] for r in rows], "x--", label=f"{label}: separate")
        axes[1].plot(tasks, [r["speed_ratio"] for r in rows], "o-", label=label)
    axes[0].set(xlabel="tasks", ylabel="resident MB, models loaded", title="memory")
    axes[1].set(xlabel="tasks", ylabel="shared / separate posts/s", title="speed")
    axes[1].axhline(1.0, color="grey", lw=0.5)
    for ax in axes:
        ax.legend(fontsize=6)
    return fig


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        print(json.dumps(measure(json.loads(Path(args.worker).read_text()))))
        return
    _, val_ds, _, _ = data.load_splits(args.data)
    texts = list(val_ds["text"])[: args.posts]
    bases = {Path(M.resolve_model_path(args.model)).name if args.model != M.OFFLINE_MINILM else "MiniLM": args.model}
    if args.bert_base:
        bases["BERT-base-sized"] = bert_base_folder(args.work, args.model)
    rows, disk = [], {}
    for base_name, base in bases.items():
        for placement in [*PLACEMENTS, "full"]:
            for tasks in args.counts:
                mode = "full" if placement == "full" else "adapter"
                folders = adapter_folders(args.work, base, placement, tasks, mode)
                if placement != "upper half":
                    way = "full" if mode == "full" else "shared"
                    disk[base_name, way, tasks] = megabytes_on_disk(folders, None if mode == "full" else base)
                for round_ in range(args.rounds):
                    ways = ["full"] if mode == "full" else ["shared", "separate"][:: 1 if round_ % 2 == 0 else -1]
                    for way in ways:
                        r = measure_in_process(way, folders, texts)
                        rows.append({"base": base_name, "placement": placement, "tasks": tasks, "way": way,
                                     "round": round_, **r})  # fmt: skip
                        print(f"{base_name}, {placement}, {tasks} tasks, {way}: {r['posts_per_second']:.1f} posts/s, "
                              f"{r['resident_mb']:.0f} MB", file=sys.stderr, flush=True)  # fmt: skip
    result = {
        "command": H.command_line(__file__, argv),
        "device": H.device_name(),
        "posts": len(texts),
        "rounds": args.rounds,
        "runs": rows,
        "summary": summarise(rows),
        "storage": storage(rows, disk),
    }
    stem = H.results_stem(args)
    H.write_results(stem, result, markdown(result), draw)


if __name__ == "__main__":
    main()
