"""
Try the speed levers one at a time on the same batches, and keep what measures better.

    python -m bench.levers --setup pfeiffer     # -> bench/results/levers-<machine>-pfeiffer.md
    python -m bench.levers --setup full --variants before default
    python -m bench.levers --variants bf16      # bf16 autocast: slow on CPUs without native bf16

Each variant runs in a fresh process (its own peak memory) and times training.train_step over the same batches of
this project's pipeline (bench/writeup_claims.py), after untimed warm-up steps:

  before      the checkpoint's attention dropout (0.1) and a plain AdamW: this project before the levers
  no-attn-dropout  attention dropout 0: scaled-dot-product attention runs a fused kernel, no random mask
  default     attention dropout 0 and fused AdamW: what train.py does now
  no-dropout  default, and every other dropout off too
  compile     default under torch.compile
  one-thread  default with torch.set_num_threads(1)
  bf16        default under bf16 autocast (opt-in)

It ends with tokens/s by batch shape in the default setting: the case for (or against) batching by token budget.
"""

import argparse
import json
import time
from pathlib import Path

from transformers.utils import logging as hf_logging

import bench.harness as H

VARIANTS = ["before", "no-attn-dropout", "default", "no-dropout", "compile", "one-thread"]
SHAPES = [(32, 16), (64, 16), (32, 32), (32, 64), (16, 128), (32, 128)]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--setup", choices=list(H.SETUPS), default="pfeiffer", help="what to train (default: pfeiffer)")
    p.add_argument(
        "--variants",
        nargs="+",
        default=VARIANTS,
        choices=VARIANTS + ["bf16"],
        help=f"what to try (default: {' '.join(VARIANTS)})",
    )
    H.add_common_flags(p)
    p.add_argument("--steps", type=int, default=12, help="timed steps per variant (default: 12)")
    p.add_argument(
        "--warmup-steps",
        type=int,
        default=2,
        help="untimed steps first (default: 2; give compile more, it compiles again for new shapes)",
    )
    p.add_argument("--no-shapes", dest="shapes", action="store_false", help="skip the tokens/s by batch shape table")
    p.add_argument("--variant", help=argparse.SUPPRESS)  # worker mode
    p.add_argument("--shape-worker", action="store_true", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def measure_variant(args, variant):
    import torch

    overrides = {
        "before": {"attention_dropout": None, "fused": False},
        "no-attn-dropout": {"fused": False},
        "bf16": {"mixed_precision": "bf16"},
    }.get(variant, {})
    if variant == "one-thread":
        torch.set_num_threads(1)
    model, optimizer, accelerator, batches = H.prepare_training(
        args.model, args.data, args.setup, "ours", posts_needed=(args.warmup_steps + args.steps) * 32, **overrides
    )
    if variant == "no-dropout":
        for module in model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
            if hasattr(module, "dropout_prob"):  # scaled-dot-product attention reads this one
                module.dropout_prob = 0.0
    if variant == "compile":
        model = torch.compile(model)
    batches = [next(batches) for _ in range(args.warmup_steps + args.steps)]  # the same batches for every variant
    H.timed_steps(model, optimizer, accelerator, batches[: args.warmup_steps])
    seconds, posts, tokens = H.timed_steps(model, optimizer, accelerator, batches[args.warmup_steps :])
    return {
        "variant": variant,
        "posts_per_second": posts / seconds,
        "tokens_per_second": tokens / seconds,
        "seconds_per_step": seconds / args.steps,
        "peak_memory_mb": H.peak_memory_mb(accelerator.device),
    }


def measure_shapes(args):
    """Tokens/s of the default step on full (unpadded) batches of a given shape."""
    import torch

    model, optimizer, accelerator, batches = H.prepare_training(args.model, args.data, args.setup, "ours")
    vocab = model.config.vocab_size
    rows = []
    for size, length in SHAPES:
        batch = {
            "input_ids": torch.randint(1000, vocab, (size, length)),
            "attention_mask": torch.ones(size, length, dtype=torch.long),
            "labels": torch.randint(0, 2, (size,)),
        }
        H.timed_steps(model, optimizer, accelerator, [batch])  # warm-up
        seconds = H.timed_steps(model, optimizer, accelerator, [batch] * 3)[0] / 3
        rows.append(
            {"shape": f"{size} x {length}", "seconds_per_step": seconds, "tokens_per_second": size * length / seconds}
        )
    return rows


def worker(args, extra):
    return H.worker(
        [
            "-m",
            "bench.levers",
            "--setup",
            args.setup,
            "--model",
            args.model,
            "--data",
            args.data,
            "--steps",
            args.steps,
            "--warmup-steps",
            args.warmup_steps,
            *extra,
        ]
    )


def main(argv=None):
    args = parse_args(argv)
    hf_logging.set_verbosity_error()
    if args.variant:
        print(json.dumps(measure_variant(args, args.variant)))
        return
    if args.shape_worker:
        print(json.dumps(measure_shapes(args)))
        return
    results = {variant: worker(args, ["--variant", variant]) for variant in args.variants}
    base_name = "before" if "before" in results else args.variants[0]
    base = results[base_name]["posts_per_second"]
    lines = [
        f"# levers: {args.setup}, {H.device_name()}",
        f"`{H.command_line('levers.py', argv)}` — {time.strftime('%Y-%m-%d')}; the same {args.steps} batches "
        f"for every variant",
        "",
        f"| variant | posts/s | tokens/s | s/step | peak memory (MB) | vs {base_name} |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for variant, r in results.items():
        lines.append(
            f"| {variant} | {r['posts_per_second']:.1f} | {r['tokens_per_second']:.0f} | "
            f"{r['seconds_per_step']:.3f} | {r['peak_memory_mb']:.0f} | {r['posts_per_second'] / base:.2f}x |"
        )
    if args.shapes:
        lines += [
            "",
            "Tokens/s by batch shape (default setting, every token real):",
            "",
            "| batch | s/step | tokens/s |",
            "| --- | ---: | ---: |",
        ]
        lines += [
            f"| {r['shape']} | {r['seconds_per_step']:.3f} | {r['tokens_per_second']:.0f} |"
            for r in worker(args, ["--shape-worker"])
        ]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"levers-{H.machine_slug()}-{args.setup}.md"
    path.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
