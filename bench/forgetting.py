"""
Catastrophic forgetting, measured as the original write-up claims it: task A is trained, then task B on the same
model, and A is asked again.

- full fine-tuning: A's model (encoder and head) trained on A; then the same encoder trained further on B with B's own
  new head. A's validation accuracy, with A's own head, before B and after each epoch of B.
- adapters (Pfeiffer; LoRA, not merged): one frozen base, A's adapter and head trained; then B's added to the same
  model and trained. A's class probabilities on its validation posts before and after B, post by post (the claim:
  exactly no change), and A's accuracy after each epoch of B.

    python -m bench.forgetting                      # MiniLM, 3 seeds, depression then reviews and the other way
    python -m bench.forgetting --pairs original,reviews original,spam --seeds 42
    python -m bench.forgetting --quick --model DIR  # tiny runs that exercise it (CI)

Each side trains the same posts (each task's first --train-posts training posts, train.py's split) for the same
epochs and steps, batch size and max length, with train.py's loop and its settings for the mode (learning rate
1e-3 for adapters, 5e-5 for full fine-tuning); A is validated on its first --val-posts validation posts. Writes
bench/results/forgetting-<machine>[-quick].{json,md,png}.
"""

import argparse
import statistics
import sys
import time

import datasets
import torch
from scipy import stats
from transformers import get_linear_schedule_with_warmup, set_seed

import data
import model as M
from bench import harness as H
from textclassifier import settings, training
from textclassifier.report import markdown_table

METHODS = ["full", "pfeiffer", "lora"]
TASK_B = "task_b"  # the name of B's adapter and head on A's model (A's keep model.ADAPTER_NAME)


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    H.add_common_flags(p, data_set=False)
    p.add_argument("--pairs", nargs="+", default=None, metavar="A,B", help="tasks (train.py --data names or "
                   "files), A then B (default: original,reviews reviews,original; quick: the first)")  # fmt: skip
    p.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS, help="the sides compared")
    p.add_argument("--seeds", nargs="+", type=int, default=None, help="training seeds (default: 42 43 44; quick 42)")
    p.add_argument("--epochs", type=int, default=None, help="epochs on each task (default: 2; quick 1)")
    p.add_argument("--train-posts", type=int, default=None, help="training posts per task (default: 2000; quick 48)")
    p.add_argument("--val-posts", type=int, default=None, help="A's validation posts (default: 1000; quick 32)")
    p.add_argument("--max-length", type=int, default=None, help="tokens per post (default: 128; quick 32)")
    H.add_run_flags(p, "forgetting", "1 seed, 1 pair, 1 epoch, 48 posts per task")
    args = p.parse_args(argv)
    quick = {"pairs": ["original,reviews"], "seeds": [42], "epochs": 1, "train_posts": 48, "val_posts": 32,
             "max_length": 32}  # fmt: skip
    full = {"pairs": ["original,reviews", "reviews,original"], "seeds": [42, 43, 44], "epochs": 2,
            "train_posts": 2000, "val_posts": 1000, "max_length": 128}  # fmt: skip
    for key, value in (quick if args.quick else full).items():
        setattr(args, key, value if getattr(args, key) is None else getattr(args, key))
    args.pairs = [tuple(pair.split(",")) for pair in args.pairs]
    if any(len(pair) != 2 for pair in args.pairs):
        p.error("--pairs takes two tasks each, A,B")
    return args


def task_settings(args, task, mode, seed):
    """train.py's settings for one task and mode, capped as the study says."""
    return settings.parse([
        "--data", task, "--mode", mode, "--model", args.model, "--epochs", str(args.epochs), "--seed", str(seed),
        "--max-train-samples", str(args.train_posts), "--max-eval-samples", str(args.val_posts),
        "--max-length", str(args.max_length),
    ])  # fmt: skip


def load_task(args, task, mode, seed, tokenizer):
    """One task as train.py reads it (its split, capped): its settings, loaders and label names."""
    run = task_settings(args, task, mode, seed)
    train_ds, val_ds, label_names, _, _, _ = training.load_data(run, tokenizer, log=lambda *_: None)
    train_dl = data.train_loader(train_ds, tokenizer, run.batch_size, seed)
    val_dl = data.eval_loader(val_ds, tokenizer, run.batch_size * 2)
    chance = max(val_ds["label"].count(c) for c in set(val_ds["label"])) / len(val_ds)
    return argparse.Namespace(run=run, train_dl=train_dl, val_dl=val_dl, labels=label_names, chance=chance)


def train(model, task, accelerator, after_epoch=lambda epoch: None):
    """train.py's loop (training.train_epoch) over the task's posts: AdamW over the trainable weights, linear warm-up
    and decay; after_epoch(epoch) after each epoch."""
    run = task.run
    optimizer = training.build_optimizer(model, run.lr, run.weight_decay)
    steps = run.epochs * len(task.train_dl)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(run.warmup_ratio * steps), steps)
    model, optimizer = accelerator.prepare(model, optimizer)
    for epoch in range(1, run.epochs + 1):
        training.train_epoch(model, task.train_dl, optimizer, scheduler, accelerator, epoch, run.epochs)
        after_epoch(epoch)


def probabilities(model, task, accelerator):
    """The class probabilities of the task's validation posts (validation order) and its labels."""
    logits, labels = training.validation_logits(model, task.val_dl, accelerator)
    return logits.softmax(-1), labels


def share_correct(probs, labels):
    return float((probs.argmax(-1) == labels).float().mean())


def accuracy(model, task, accelerator):
    return share_correct(*probabilities(model, task, accelerator))


def full_side(args, pair, seed, accelerator, tokenizer, attention):
    """A fully fine-tuned on A, then its encoder on B with B's head: A's accuracy (A's head) through B's epochs."""
    a, b = (load_task(args, task, "full", seed, tokenizer) for task in pair)
    model_a = M.build_model(args.model, "full", a.labels, seed=seed, attention_dropout=0.0, attention=attention)
    train(model_a, a, accelerator)
    curve = [accuracy(model_a, a, accelerator)]
    model_b = M.build_model(args.model, "full", b.labels, seed=seed, attention_dropout=0.0, attention=attention)
    setattr(model_b, model_b.base_model_prefix, model_a.base_model)  # one encoder: A's, trained on; two heads
    train(model_b, b, accelerator, lambda epoch: curve.append(accuracy(model_a, a, accelerator)))
    return {"a_accuracy": curve, "b_accuracy": accuracy(model_b, b, accelerator), "a_chance": a.chance}


def adapter_side(args, pair, seed, method, accelerator, tokenizer, attention):
    """A's adapter and head on a frozen base, then B's added to the same model and trained: A's accuracy through
    B's epochs and the largest change of A's probabilities over A's validation posts."""
    a, b = (load_task(args, task, "adapter", seed, tokenizer) for task in pair)
    model = M.build_model(
        args.model, "adapter", a.labels, method, seed=seed, attention_dropout=0.0, attention=attention
    )
    train(model, a, accelerator)
    asked = [probabilities(model, a, accelerator)]  # A's probabilities and labels: before B, after each B epoch
    add_task(model, TASK_B, method, b.labels, seed)

    def ask_a(epoch):
        model.set_active_adapters(M.ADAPTER_NAME)  # A's adapter and head
        asked.append(probabilities(model, a, accelerator))
        model.set_active_adapters(TASK_B)

    train(model, b, accelerator, ask_a)
    b_accuracy = accuracy(model, b, accelerator)
    curve = [share_correct(probs, labels) for probs, labels in asked]
    (before, _), (after, _) = asked[0], asked[-1]
    return {
        "a_accuracy": curve, "b_accuracy": b_accuracy, "a_chance": a.chance,
        "max_probability_change": float((after - before).abs().max()),
        "changed_predictions": int((after.argmax(-1) != before.argmax(-1)).sum()), "a_posts": len(before),
    }  # fmt: skip


def add_task(model, name, method, label_names, seed):
    """Another task's adapter and head on an adapter model: only they are trained from now on (the base and the
    other tasks' adapters and heads frozen)."""
    torch.manual_seed(seed)
    with M.no_inactive_adapter_notice():
        model.add_adapter(name, config=M.adapter_config(method))
        model.add_classification_head(name, num_labels=len(label_names), id2label=dict(enumerate(label_names)))
        model.train_adapter(name)
    for head, module in model.heads.items():
        module.requires_grad_(head == name)


def interval(values):
    """Mean and the half-width of its 95% t-interval over seeds (0 for one seed)."""
    mean = statistics.mean(values)
    if len(values) < 2:
        return mean, 0.0
    return mean, stats.t.ppf(0.975, len(values) - 1) * statistics.stdev(values) / len(values) ** 0.5


def summarise(runs):
    """Per pair and method: A's accuracy before B, after each of B's epochs, and the drop, each with its interval;
    for adapters the largest change of A's probabilities and the predictions changed, over every seed."""
    out = []
    for pair, method in dict.fromkeys((r["pair"], r["method"]) for r in runs):
        mine = [r for r in runs if (r["pair"], r["method"]) == (pair, method)]
        curves = [r["a_accuracy"] for r in mine]
        row = {
            "pair": pair, "method": method, "seeds": len(mine), "a_chance": mine[0]["a_chance"],
            "a_accuracy": [interval([c[i] for c in curves]) for i in range(len(curves[0]))],
            "drop": interval([c[0] - c[-1] for c in curves]), "b_accuracy": interval([r["b_accuracy"] for r in mine]),
        }  # fmt: skip
        if method != "full":
            row["max_probability_change"] = max(r["max_probability_change"] for r in mine)
            row["changed_predictions"] = sum(r["changed_predictions"] for r in mine)
            row["a_posts"] = sum(r["a_posts"] for r in mine)
        out.append(row)
    return out


def pct(value):
    mean, half = value
    return f"{mean:.1%} ± {half:.1%}"


def markdown(result):
    header = ["A then B", "method", "A before B", *[f"A after B's epoch {i}" for i in range(1, result["epochs"] + 1)],
              "A's drop", "B", "A's largest probability change", "A's predictions changed"]  # fmt: skip
    rows = [
        [r["pair"].replace(",", " then "), r["method"], *map(pct, r["a_accuracy"]), pct(r["drop"]),
         pct(r["b_accuracy"]), f"{r['max_probability_change']:.3g}" if "a_posts" in r else "",
         f"{r['changed_predictions']} of {r['a_posts']}" if "a_posts" in r else ""]
        for r in result["summary"]
    ]  # fmt: skip
    return "\n".join([
        f"Command: `{result['command']}`",
        "",
        f"Device: {result['device']}. Base {result['model']}; per task its first {result['train_posts']} training "
        f"posts (train.py's split), {result['epochs']} epochs each, max length {result['max_length']}; A validated on "
        f"its first {result['val_posts']} validation posts. Mean ± the 95% t-interval over seeds "
        f"{', '.join(map(str, result['seeds']))}. Full fine-tuning: A's encoder trained further on B (B's own head), "
        "A asked with A's head. Adapters: B's adapter and head added to A's model and trained, base and A frozen; "
        f"the change of A's probabilities is the largest over every post and seed. Wall time "
        f"{result['wall_seconds'] / 60:.0f} min, peak resident memory {result['peak_mb']:.0f} MB.",
        "",
        markdown_table(header, rows),
    ]) + "\n"  # fmt: skip


def draw(result):
    import matplotlib.pyplot as plt

    pairs = list(dict.fromkeys(r["pair"] for r in result["summary"]))
    fig, axes = plt.subplots(1, len(pairs), figsize=(5.5 * len(pairs), 4), squeeze=False)
    for ax, pair in zip(axes[0], pairs):
        a, b = pair.split(",")
        rows = [r for r in result["summary"] if r["pair"] == pair]
        for r in rows:
            x, mean = range(len(r["a_accuracy"])), [m for m, _ in r["a_accuracy"]]
            ax.errorbar(x, mean, yerr=[h for _, h in r["a_accuracy"]], marker="o", capsize=3, label=r["method"])
        ax.axhline(rows[0]["a_chance"], color="grey", lw=0.7, ls="--", label=f"{a}: majority class")
        ax.set(xlabel=f"epochs trained on {b}", ylabel=f"accuracy on {a}", title=f"{a}, then {b}")
        ax.set_xticks(range(result["epochs"] + 1))
        ax.legend(fontsize=7)
    return fig


def main(argv=None):
    args = parse_args(argv)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # the expected "newly initialized head" notices
    datasets.disable_progress_bars()  # steps of a second; the epochs show theirs
    accelerator = training.make_accelerator(task_settings(args, args.pairs[0][0], "adapter", args.seeds[0]))
    attention, tokenizer = training.attention_for(accelerator), M.load_tokenizer(args.model)
    start, runs = time.perf_counter(), []
    for seed in args.seeds:
        for pair in args.pairs:
            for method in args.methods:
                set_seed(seed)
                if method == "full":
                    r = full_side(args, pair, seed, accelerator, tokenizer, attention)
                else:
                    r = adapter_side(args, pair, seed, method, accelerator, tokenizer, attention)
                accelerator.free_memory()  # accelerate keeps every model and optimizer it prepared: not these
                runs.append({"pair": ",".join(pair), "method": method, "seed": seed, **r})
                print(f"seed {seed}, {' then '.join(pair)}, {method}: A {r['a_accuracy']}, B {r['b_accuracy']:.3f}"
                      f"{', largest change %.3g' % r['max_probability_change'] if method != 'full' else ''}",
                      file=sys.stderr, flush=True)  # fmt: skip
    result = {
        "command": H.command_line(__file__, argv), "device": H.device_name(), "model": args.model,
        "seeds": args.seeds, "epochs": args.epochs, "train_posts": args.train_posts, "val_posts": args.val_posts,
        "max_length": args.max_length, "mixed_precision": accelerator.mixed_precision,
        "wall_seconds": time.perf_counter() - start, "peak_mb": H.peak_memory_mb(torch.device("cpu")),
        "runs": runs, "summary": summarise(runs),
    }  # fmt: skip
    H.write_results(H.results_stem(args), result, markdown(result), draw)


if __name__ == "__main__":
    main()
