"""
This project's training loop against the trainers users know, on identical work: transformers.Trainer for full
fine-tuning, adapters.AdapterTrainer for Pfeiffer adapters.

Both sides train the same posts (a random sample of the data set, train.py's split), whole epochs, the same model
from model.build_model (same seed), max length, batch size, AdamW (fused) at train.py's rate with weight decay 0.01
on the same parameter groups (none on biases and LayerNorm weights), the same linear schedule and warm-up steps,
clipping at 1.0, full precision, the same threads. What differs is each side's own loop and its own length-grouped
batch order: both count the real and the padded tokens they computed. Each run is a fresh process, and the sides
take turns (pair 1: ours first, pair 2: the peer first, ...).

    python -m bench.peers                 # 1,500 posts, 1 epoch, 2 pairs each for full and Pfeiffer
    python -m bench.peers --quick         # 300 posts: checks that it runs
"""

import argparse
import itertools
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

import matplotlib.pyplot as plt

import bench.harness as H
import data
import model as M
import train
from textclassifier import training

PEERS = {"full": "transformers.Trainer", "pfeiffer": "adapters.AdapterTrainer"}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--posts", type=int, default=1500, help="posts sampled from the data set (default: 1500)")
    p.add_argument("--epochs", type=int, default=1, help="whole epochs each side trains (default: 1)")
    p.add_argument("--pairs", type=int, default=2, help="alternated pairs of runs per setup (default: 2)")
    p.add_argument("--setups", nargs="+", default=list(PEERS), choices=list(PEERS), help="what to compare")
    p.add_argument(
        "--seed",
        type=int,
        default=H.SEED,
        help=f"both sides' seed of the new weights, dropout and batch order; the split stays train.py's "
        f"(default: {H.SEED})",
    )
    p.add_argument(
        "--peer-order",
        default="trainer",
        choices=["trainer", "shuffled"],
        help="the peer's batches: its own length-grouped order (trainer), or the same batches in shuffled order, "
        "to test what the order does to accuracy (default: trainer)",
    )
    p.add_argument(
        "--precision",
        default="no",
        choices=["no", "bf16", "auto"],
        help="train.py's --mixed-precision (default: no, full precision on both sides, identical work)",
    )
    p.add_argument(
        "--peer-precision",
        default="fp32",
        choices=["fp32", "bf16"],
        help="the peer's precision: fp32 (its default) or bf16 (TrainingArguments(bf16=True)) (default: fp32)",
    )
    H.add_run_flags(p, "peers", "300 posts, 1 pair: a check that it runs")
    H.add_common_flags(p)
    p.add_argument("--worker", nargs=3, metavar=("SIDE", "SETUP", "POSTS_FILE"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.posts, args.pairs = 300, 1
    return args


def sample_posts(source, posts, path):
    """`posts` rows of the data set drawn at random (seed 0), written to a CSV file both sides read."""
    table = data.load_table(source)
    table.sample(n=min(posts, len(table)), random_state=0).to_csv(path, index=False)
    return path


def padded_share(batches, lengths):
    """The share of the computed tokens that is padding, for batches of indices padded to their longest post."""
    computed = sum(len(batch) * max(lengths[i] for i in batch) for batch in batches)
    return 1 - sum(lengths[i] for batch in batches for i in batch) / computed


def whole_split_orders(args):
    """Each side's batch order on the data set's whole training split, from the samplers alone (no training), over
    `epochs` epochs: the padding share (also of batches of our sizes cut from one fully sorted order, the least
    possible), and the share of class 1 in the last tenth of each epoch's batches. The Trainer's mega-batches hold
    50 batches (or a quarter of a small data set), each sorted longest first, and are not shuffled: where length
    goes with the class, as here, an epoch ends on batches of the short posts' class."""
    import torch
    from transformers.trainer_pt_utils import LengthGroupedSampler

    train_ds, _, _, _ = H.load_data(args.data)
    lengths = data.ds_lengths(data.tokenize(train_ds, M.load_tokenizer(args.model), training.MAX_LENGTH))
    labels = train_ds["label"]
    size, orders = training.BATCH_SIZE, {"ours": [], "peer": []}
    sampler = data.training_batches(lengths, size, args.seed)
    for epoch in range(args.epochs):
        sampler.set_epoch(epoch)
        generator = torch.Generator().manual_seed(args.seed + epoch)
        order = list(LengthGroupedSampler(size, lengths=lengths, generator=generator))
        orders["ours"].append(list(sampler))
        orders["peer"].append([order[i : i + size] for i in range(0, len(order), size)])
    by_length = sorted(range(len(lengths)), key=lengths.__getitem__)
    ends = itertools.accumulate(len(batch) for batch in orders["ours"][0])  # our batch sizes
    fully_sorted = [by_length[start:end] for start, end in itertools.pairwise([0, *ends])]

    def last_tenth_share(epochs):
        tails = [i for batches in epochs for batch in batches[-max(1, len(batches) // 10) :] for i in batch]
        return sum(labels[i] == 1 for i in tails) / len(tails)

    return {
        "train_posts": len(lengths),
        "class_1_share": sum(label == 1 for label in labels) / len(labels),
        "padding": {
            **{side: padded_share(sum(epochs, []), lengths) for side, epochs in orders.items()},
            "fully_sorted": padded_share(fully_sorted, lengths),
        },
        "class_1_share_last_tenth": {side: last_tenth_share(epochs) for side, epochs in orders.items()},
    }


def run_ours(args, setup, posts_file, folder):
    """train.py itself, in this process: its epochs' train_seconds, steps and real / computed tokens
    (metrics.jsonl)."""
    flags = H.setup_flags(setup, args.model)
    flags += ["--model", args.model, "--data", posts_file, "--epochs", args.epochs, "--seed", args.seed]
    flags += ["--mixed-precision", args.precision]
    train.main([*map(str, flags), "--output-dir", str(folder), "--name", "ours"])
    history = [json.loads(line) for line in (folder / "ours" / "metrics.jsonl").read_text().splitlines()]
    return {
        "seconds": sum(row["train_seconds"] for row in history),
        "steps": sum(row["train_steps"] for row in history),
        "real_tokens": sum(row["train_tokens"] for row in history),
        "computed_tokens": sum(row["train_computed_tokens"] for row in history),
        "accuracy": history[-1]["accuracy"],
    }


class ShuffledBatches:
    """A sampler's order, cut into batches of `batch_size` and the full batches shuffled (torch's seeded global
    generator, as the Trainer's own sampler draws), a last short batch kept last so that the data loader cuts the
    same batches again: the same batches, in another order."""

    def __init__(self, sampler, batch_size):
        self.sampler, self.batch_size = sampler, batch_size

    def __len__(self):
        return len(self.sampler)

    def __iter__(self):
        import torch

        order = list(self.sampler)
        full = len(order) // self.batch_size
        batches = [order[k * self.batch_size : (k + 1) * self.batch_size] for k in range(full)]
        return iter([i for k in torch.randperm(full).tolist() for i in batches[k]] + order[full * self.batch_size :])


def run_peer(args, setup, posts_file, folder):
    """Trainer (full) or AdapterTrainer (adapter) on the same posts and settings; epochs timed by a callback, tokens
    counted in the collator."""
    import torch
    from adapters import AdapterTrainer
    from transformers import DataCollatorWithPadding, Trainer, TrainerCallback, TrainingArguments

    mode = "full" if setup == "full" else "adapter"
    train_ds, val_ds, label_names, _ = H.load_data(posts_file)
    tokenizer = M.load_tokenizer(args.model)
    train_ds, val_ds = (data.tokenize(ds, tokenizer, training.MAX_LENGTH) for ds in (train_ds, val_ds))
    model = H.build_setup_model(args.model, setup, label_names, training.ATTENTION_DROPOUT, args.seed)
    steps = args.epochs * math.ceil(len(train_ds) / training.BATCH_SIZE)
    collate, counts = DataCollatorWithPadding(tokenizer), {"steps": 0, "real": 0, "computed": 0}
    clock = {"seconds": 0.0}

    def counting_collate(rows):
        batch = collate(rows)
        if model.training:
            counts["steps"] += 1
            counts["real"] += int(batch["attention_mask"].sum())
            counts["computed"] += batch["input_ids"].numel()
        return batch

    class EpochClock(TrainerCallback):
        def on_epoch_begin(self, targs, state, control, **kwargs):
            clock["start"] = time.perf_counter()

        def on_epoch_end(self, targs, state, control, **kwargs):
            clock["seconds"] += time.perf_counter() - clock["start"]

    targs = TrainingArguments(
        str(folder),
        per_device_train_batch_size=training.BATCH_SIZE,
        per_device_eval_batch_size=training.BATCH_SIZE * 2,
        num_train_epochs=args.epochs,
        learning_rate=training.LR[mode],
        weight_decay=training.WEIGHT_DECAY,
        warmup_steps=int(training.WARMUP_RATIO * steps),  # as train.py computes it
        lr_scheduler_type="linear",
        max_grad_norm=training.MAX_GRAD_NORM,
        optim="adamw_torch_fused",
        group_by_length=True,
        seed=args.seed,
        eval_strategy="no",
        logging_strategy="no",
        save_strategy="no",
        report_to=[],
        disable_tqdm=True,
        remove_unused_columns=False,
        dataloader_num_workers=0,
        bf16=args.peer_precision == "bf16",
        use_cpu=not torch.cuda.is_available(),  # the Trainer refuses bf16 on a machine without a GPU unless told
    )
    peer = Trainer if mode == "full" else AdapterTrainer
    if args.peer_order == "shuffled":

        class peer(peer):  # noqa: N801 (the same trainer, its batches shuffled)
            def _get_train_sampler(self, *a, **kw):
                return ShuffledBatches(super()._get_train_sampler(*a, **kw), self.args.train_batch_size)

    trainer = peer(
        model=model, args=targs, train_dataset=train_ds, data_collator=counting_collate, callbacks=[EpochClock()]
    )
    trainer.train()
    predictions = trainer.predict(val_ds)
    accuracy = float((predictions.predictions.argmax(-1) == predictions.label_ids).mean())
    return {
        "seconds": clock["seconds"],
        "steps": counts["steps"],
        "real_tokens": counts["real"],
        "computed_tokens": counts["computed"],
        "accuracy": accuracy,
    }


def measure(args, side, setup, posts_file):
    """One side's run in a fresh process (bench.harness.worker)."""
    cmd = ["-m", "bench.peers", "--worker", side, setup, posts_file, "--model", args.model, "--epochs", args.epochs]
    cmd += ["--seed", args.seed, "--peer-order", args.peer_order]
    cmd += ["--precision", args.precision, "--peer-precision", args.peer_precision]
    result = H.worker(cmd)
    print(f"  {setup:9s} {side:5s} {result['seconds']:7.1f} s  {result['steps']} steps  "
          f"{result['computed_tokens']:,} computed / {result['real_tokens']:,} real tokens", flush=True)  # fmt: skip
    return result


def summarize(runs):
    """Per setup: each pair's ratio (peer seconds / ours), their median, and both sides' padding shares."""
    summary = {}
    for setup, pairs in runs.items():
        ratios = [pair["peer"]["seconds"] / pair["ours"]["seconds"] for pair in pairs]
        summary[setup] = {
            "peer": PEERS[setup],
            "ratios": ratios,
            "median_ratio": statistics.median(ratios),
            **{
                f"{side}_padding_share": 1 - pairs[0][side]["real_tokens"] / pairs[0][side]["computed_tokens"]
                for side in ("ours", "peer")
            },
        }
    return summary


def markdown(result):
    lines = [
        f"# This project's loop against the Trainer, identical work ({result['device']})",
        "",
        f"`{result['command']}`: {result['posts']} posts sampled at random, train.py's split "
        f"({result['train_posts']} training posts), {result['epochs']} epoch(s) per run, batch "
        f"{training.BATCH_SIZE}, max length {training.MAX_LENGTH}, fused AdamW, weight decay {training.WEIGHT_DECAY} "
        f"(not on biases/LayerNorm), linear schedule with the same warm-up, clipping {training.MAX_GRAD_NORM}; "
        f"precision: ours --mixed-precision {result['precision']['ours']}, the peer's {result['precision']['peer']}. "
        "Seconds: the epochs' training loops (no evaluation). Ratio: the peer's seconds / ours (above 1: ours "
        "faster). Pairs alternate which side runs first.",
        "",
        "| setup | peer | pair | ours s | peer s | ratio | ours computed / real tokens | peer computed / real "
        "tokens | ours accuracy | peer accuracy |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for setup, pairs in result["runs"].items():
        for k, pair in enumerate(pairs, 1):
            o, p = pair["ours"], pair["peer"]
            lines.append(
                f"| {setup} | {PEERS[setup]} | {k} | {o['seconds']:.1f} | {p['seconds']:.1f} | "
                f"{p['seconds'] / o['seconds']:.3f} | {o['computed_tokens']:,} / {o['real_tokens']:,} | "
                f"{p['computed_tokens']:,} / {p['real_tokens']:,} | {o['accuracy']:.2%} | {p['accuracy']:.2%} |"
            )
    lines += ["", "| setup | median ratio | padding share, ours | padding share, peer |", "|---|---|---|---|"]
    for setup, s in result["summary"].items():
        lines.append(
            f"| {setup} | {s['median_ratio']:.3f}x | {s['ours_padding_share']:.1%} | {s['peer_padding_share']:.1%} |"
        )
    whole = result["whole_split"]
    pad, tail = whole["padding"], whole["class_1_share_last_tenth"]
    lines += [
        "",
        f"On the data set's whole training split ({whole['train_posts']:,} posts, {result['epochs']} epoch(s), the "
        f"batch orders alone, no training) the padding share is {pad['ours']:.1%} for ours, {pad['peer']:.1%} for "
        f"the Trainer's (its mega-batches: 50 batches, or a quarter of a small data set) and {pad['fully_sorted']:.1%} "
        f"for batches of our sizes cut from one fully sorted order (the least possible). Class 1 makes up "
        f"{whole['class_1_share']:.1%} of the posts and {tail['ours']:.1%} (ours) against {tail['peer']:.1%} "
        "(Trainer) of the last tenth of an epoch's batches.",
    ]
    return "\n".join(lines) + "\n"


def chart(result):
    """Seconds per pair, ours beside the peer's, one group per setup."""
    fig, ax = plt.subplots(figsize=(7, 3.8))
    labels, ours, peer = [], [], []
    for setup, pairs in result["runs"].items():
        for k, pair in enumerate(pairs, 1):
            labels.append(f"{setup} {k}")
            ours.append(pair["ours"]["seconds"])
            peer.append(pair["peer"]["seconds"])
    x = range(len(labels))
    ax.bar([i - 0.2 for i in x], ours, 0.4, label="this project")
    ax.bar([i + 0.2 for i in x], peer, 0.4, label="Trainer / AdapterTrainer")
    ax.set_xticks(list(x), labels)
    ax.set_ylabel("seconds of training (whole epochs)")
    ax.set_title(f"Identical work, {result['device']}", fontsize=9)
    ax.legend()
    return fig


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        side, setup, posts_file = args.worker
        with tempfile.TemporaryDirectory() as tmp:
            run_side = run_ours if side == "ours" else run_peer
            result = run_side(args, setup, posts_file, Path(tmp))
        print(json.dumps(result))
        return
    with tempfile.TemporaryDirectory() as tmp:
        posts_file = sample_posts(args.data, args.posts, str(Path(tmp) / "posts.csv"))
        train_posts = len(H.load_data(posts_file)[0])
        runs = {}
        for setup in args.setups:
            runs[setup] = []
            for k in range(args.pairs):
                sides = ("ours", "peer") if k % 2 == 0 else ("peer", "ours")
                runs[setup].append({side: measure(args, side, setup, posts_file) for side in sides})
    result = {
        "command": H.command_line(__file__, argv),
        "device": H.device_name(),
        "posts": args.posts,
        "train_posts": train_posts,
        "epochs": args.epochs,
        "seed": args.seed,
        "peer_order": args.peer_order,
        "precision": {"ours": args.precision, "peer": args.peer_precision},
        "runs": runs,
        "summary": summarize(runs),
        "whole_split": whole_split_orders(args),
    }
    H.write_results(H.results_stem(args), result, markdown(result), chart)


if __name__ == "__main__":
    sys.exit(main())
