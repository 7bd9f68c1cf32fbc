"""
Profile one training setup of the benchmark: where a step's time goes, and where the process's memory goes.

    python -m bench.profile_step --setup pfeiffer          # -> bench/results/profile-<machine>-pfeiffer.txt
    python -m bench.profile_step --setup full --steps 10

It runs the very step train.py runs (training.train_step) on the benchmark's batches (bench/writeup_claims.py), under
torch.profiler, and writes:
- seconds per step in forward, backward and optimizer (the record_function ranges of train_step);
- the operators that take the most time (self CPU or CUDA time);
- resident memory (allocated GPU memory on CUDA) after each stage: imports, data and model, the first step,
  and the peak after all steps; and the operators whose outputs hold the most memory.
"""

import argparse
from pathlib import Path

from transformers.utils import logging as hf_logging

import bench.harness as H

STAGES = {}


def note_memory(stage, device):
    STAGES[stage] = (H.current_memory_mb(device), H.peak_memory_mb(device))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--setup", choices=list(H.SETUPS), default="pfeiffer", help="what to profile (default: pfeiffer)")
    p.add_argument(
        "--pipeline", choices=["ours", "write-up"], default="ours", help="whose input pipeline (default: ours)"
    )
    H.add_common_flags(p)
    p.add_argument("--steps", type=int, default=8, help="profiled steps (default: 8)")
    p.add_argument("--warmup-steps", type=int, default=2, help="unprofiled steps first (default: 2)")
    p.add_argument("--rows", type=int, default=20, help="operators listed (default: 20)")
    return p.parse_args(argv)


def main(argv=None):
    import torch
    from torch.profiler import ProfilerActivity, profile

    args = parse_args(argv)
    hf_logging.set_verbosity_error()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    note_memory("imports (torch, transformers, adapters, datasets)", device)
    model, optimizer, accelerator, batches = H.prepare_training(
        args.model, args.data, args.setup, args.pipeline, posts_needed=(args.warmup_steps + args.steps) * 32
    )
    note_memory("data tokenised, model built", device)
    batches = [next(batches) for _ in range(args.warmup_steps + args.steps)]
    warmup, profiled = batches[: args.warmup_steps], batches[args.warmup_steps :]
    H.timed_steps(model, optimizer, accelerator, warmup[:1])
    if warmup:
        note_memory("after the first step (gradients, optimizer state)", device)
    H.timed_steps(model, optimizer, accelerator, warmup[1:])
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities, profile_memory=True, record_shapes=False) as prof:
        seconds, examples, tokens = H.timed_steps(model, optimizer, accelerator, profiled)
    note_memory(f"after {args.warmup_steps + args.steps} steps", device)

    events = prof.key_averages()
    time_key = "cuda_time_total" if device.type == "cuda" else "cpu_time_total"
    ranges = {
        e.key: getattr(e, time_key) / 1e6 / args.steps for e in events if e.key in ("forward", "backward", "optimizer")
    }
    lines = [
        f"# profile: {args.setup}, {args.pipeline} pipeline, {H.device_name()}",
        f"# {H.command_line('profile_step.py', argv)}",
        "",
        f"{args.steps} steps, {examples} posts, {tokens} real tokens, {seconds:.2f} s under the profiler "
        f"({examples / seconds:.1f} posts/s; the profiler itself costs a little)",
        "",
        "seconds per step (training.train_step ranges):",
    ]
    lines += [
        f"  {k:<10} {ranges.get(k, 0):7.3f} s  ({100 * ranges.get(k, 0) / max(sum(ranges.values()), 1e-9):4.1f}%)"
        for k in ("forward", "backward", "optimizer")
    ]
    lines += ["", "memory (MB)                                          current     peak"]
    lines += [f"  {stage:<50} {now:7.0f}  {peak:7.0f}" for stage, (now, peak) in STAGES.items()]
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    lines += ["", f"operators by {sort}:", events.table(sort_by=sort, row_limit=args.rows, max_name_column_width=60)]
    memory_sort = "self_cuda_memory_usage" if device.type == "cuda" else "self_cpu_memory_usage"
    lines += [
        f"operators by {memory_sort} (memory each allocates, summed over the profiled steps):",
        events.table(sort_by=memory_sort, row_limit=args.rows, max_name_column_width=60),
    ]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"profile-{H.machine_slug()}-{args.setup}{'-writeup' if args.pipeline != 'ours' else ''}.txt"
    path.write_text("\n".join(lines) + "\n")
    print("\n".join(lines[:20]))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
