"""
Train the depression classifier by full fine-tuning or with a bottleneck adapter, and save the best epoch.

    python train.py --mode adapter                          # Pfeiffer adapter -> adapters/depression-pfeiffer/
    python train.py --mode adapter --adapter-config houlsby # -> adapters/depression-houlsby/
    python train.py --mode full                             # every weight -> models/depression-full/
    python train.py --mode adapter --resume                 # continue a killed run after its last epoch
    torchrun --nproc_per_node 2 train.py --mode adapter     # several processes or GPUs (accelerate launch too)

The loop is written out: AdamW over the trainable weights only, linear warm-up and decay, gradient clipping,
validation after every epoch. `accelerate` places everything on CUDA, Apple MPS or the CPU, runs mixed
precision where the hardware has it, and joins the processes that torchrun or accelerate launch start (NCCL on
GPUs, gloo on CPUs). Next to the weights go metrics.jsonl (one line per epoch) and training.json (everything
predict.py needs to rebuild the model, and what the run measured).

A run holds <name>.lock while it works and writes into <name>.incomplete/, where it keeps a checkpoint of the last
finished epoch (--resume continues from it); the result replaces <name>/ only when it is whole.
"""

import argparse
import json
import os
import platform
import random
import shutil
import time
from importlib.metadata import version
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list, set_seed
from safetensors.torch import load_file, save_file
from sklearn.utils.class_weight import compute_class_weight
from torch.profiler import record_function
from tqdm.auto import tqdm
from transformers import DataCollatorWithPadding, get_linear_schedule_with_warmup
from transformers.trainer_pt_utils import get_parameter_names
from transformers.utils import logging as hf_logging

import data
import hardware
import metrics
import model as M
import posts
import saved
from errors import DataError, ModelError, fail

# Defaults, measured on the real data (7,650 posts after cleaning, 6,426 for training) with the offline
# MiniLM on a 2-core CPU; docs/usage.md ("Choosing the defaults") has the runs behind them.
EPOCHS = 3
LR = {"adapter": 1e-3, "full": 5e-5}  # adapters need a far higher rate than full fine-tuning
BATCH_SIZE = 32
MAX_LENGTH = 64
ATTENTION_DROPOUT = 0.0  # not the checkpoint's 0.1
WARMUP_RATIO = 0.1  # the HF example scripts' usual warm-up, weight decay and clipping
WEIGHT_DECAY = 0.01
MAX_GRAD_NORM = 1.0
OUTPUT_DIR = {"adapter": "adapters", "full": "models"}


def build_parser():
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Offline: set DEPRESSION_DATA=../shared/data/depression-reddit-cleaned.csv "
        "(or pass --data); the default model needs no network.",
    )
    p.add_argument(
        "--mode",
        choices=["adapter", "full"],
        default="adapter",
        help="adapter: train a bottleneck adapter and a head, base weights frozen; "
        "full: train every weight (default: adapter)",
    )
    p.add_argument(
        "--adapter-config",
        default="pfeiffer",
        help="pfeiffer (= seq_bn: one adapter per layer, after the feed-forward block), houlsby "
        "(= double_seq_bn: two per layer) or another config of the adapters library: "
        f"{', '.join(n for n in M.ADAPTER_CONFIGS if n not in ('pfeiffer', 'houlsby'))} "
        f"(refused: {', '.join(M.REFUSED_CONFIGS)}; see README) (default: pfeiffer)",
    )
    p.add_argument(
        "--reduction-factor",
        type=int,
        default=None,
        help="hidden size / bottleneck size of each adapter (library default: 16 for pfeiffer, houlsby)",
    )
    p.add_argument(
        "--leave-out",
        type=int,
        nargs="+",
        default=None,
        metavar="LAYER",
        help="layers to leave without an adapter, e.g. --leave-out 0 1 2 for the upper half of 6 layers",
    )
    p.add_argument(
        "--model",
        default=M.DEFAULT_MODEL,
        help=f"base model: a Hub id or a local folder; '{M.OFFLINE_MINILM}' (default) is "
        f"all-MiniLM-L6-v2 from that PyPI package, offline; bert-base-uncased reproduces the write-up",
    )
    p.add_argument(
        "--data",
        nargs="+",
        default="default",
        metavar="DATA",
        help="default: the depression data set plus the Reddit Mental Health posts shipped in corpora/ "
        "(r/depression and r/SuicideWatch 1, 7 control subreddits 0, other support groups left out; texts "
        "normalised); original: the depression data set alone, as the original write-up and the in-domain "
        f"comparison (the depression data set: {data.DEFAULT_DATA}, from $DEPRESSION_DATA where set, else "
        f"{data.HUB_DATASET}); or a Hub data set id or local .csv/.tsv/.json/.jsonl/.parquet files: several "
        "are read as one table, each split on its own (default: default)",
    )
    p.add_argument(
        "--label-map",
        nargs="+",
        default=None,
        metavar="TARGET=VALUES",
        help="turn label values into the labels to train on, e.g. --label-map 1=ds,dsf 0=bc,ff,ndf drop=do,nd "
        "(drop: leave those rows out); values already equal to a target stay; any other value is "
        "refused",
    )
    p.add_argument(
        "--normalize-text",
        action="store_true",
        help="lower-case every text and replace everything but a-z and 0-9 by spaces, as the depression data set "
        "was cleaned (for raw texts such as Reddit posts); recorded, and predict.py and assess.py "
        "then do the same to what they classify",
    )
    p.add_argument(
        "--length-expert",
        type=float,
        nargs="?",
        const=1.0,
        default=None,
        metavar="WEIGHT",
        help="train in a product of experts with a length-only model (logistic regression on the log token "
        "count), so that the classifier learns what length does not explain; it is used alone afterwards "
        "(Clark et al. 2019). WEIGHT (default 1) tempers the length model: its log-probabilities are scaled by "
        "it (default: off; docs/default-model.md has the measurement)",
    )
    p.add_argument(
        "--short-copies",
        action="store_true",
        help="also train on every training post longer than 32 words cut to its first 8-32 words (a number "
        "drawn per post), so that short posts of every class are seen (default: off; docs/default-model.md "
        "has the measurement)",
    )
    p.add_argument(
        "--text-column", default=None, help=f"text column (default: the first of {', '.join(posts.TEXT_COLUMNS)})"
    )
    p.add_argument(
        "--label-column", default=None, help=f"label column (default: the first of {', '.join(data.LABEL_COLUMNS)})"
    )
    p.add_argument(
        "--val-size",
        type=float,
        default=data.VAL_SIZE,
        help=f"share of the data held out for validation (default: {data.VAL_SIZE}, as in the write-up)",
    )
    p.add_argument(
        "--max-train-samples",
        type=int,
        default=None,
        help="train on the first N training posts only (quick runs); the split itself does not change",
    )
    p.add_argument("--max-eval-samples", type=int, default=None, help="validate on the first N validation posts only")
    p.add_argument("--epochs", type=int, default=EPOCHS, help=f"passes over the training data (default: {EPOCHS})")
    p.add_argument(
        "--lr",
        type=float,
        default=None,
        help=f"peak learning rate (default: {LR['adapter']} for adapter, {LR['full']} for full)",
    )
    p.add_argument(
        "--warmup-ratio",
        type=float,
        default=WARMUP_RATIO,
        help=f"share of steps for linear warm-up (default: {WARMUP_RATIO})",
    )
    p.add_argument(
        "--weight-decay",
        type=float,
        default=WEIGHT_DECAY,
        help=f"AdamW weight decay, not applied to biases and LayerNorm weights (default: {WEIGHT_DECAY})",
    )
    p.add_argument("--batch-size", type=int, default=BATCH_SIZE, help=f"posts per batch (default: {BATCH_SIZE})")
    p.add_argument(
        "--max-length",
        type=int,
        default=MAX_LENGTH,
        help=f"tokens per post; longer posts are truncated (default: {MAX_LENGTH})",
    )
    p.add_argument(
        "--attention-dropout",
        type=float,
        default=ATTENTION_DROPOUT,
        help=f"dropout on the attention probabilities (default: {ATTENTION_DROPOUT}; the checkpoint has "
        "0.1, which on a CPU at max length 128 made an adapter step 1.25x slower and its peak memory "
        "1.24x larger; at 64, about 10%% more memory)",
    )
    p.add_argument(
        "--no-group-by-length",
        dest="group_by_length",
        action="store_false",
        help="plain shuffled batches instead of batches of similar length (more padding)",
    )
    p.add_argument(
        "--no-cache-frozen",
        dest="cache_frozen",
        action="store_false",
        help="compute every layer every epoch; by default, when the lowest layers hold no trained weight "
        "(e.g. --leave-out 0 1 2), their output is computed once per post before the first epoch "
        "(those layers without dropout) and reused by every epoch and by validation",
    )
    p.add_argument(
        "--mixed-precision",
        choices=["auto", "no", "fp16", "bf16"],
        default="auto",
        help="auto (default): bf16 on GPUs that have it, else fp16 on CUDA; on a CPU bf16 where it has native "
        "bf16 (AVX512-BF16 or AMX: docs/speed.md has the measurements), else none; no: full precision "
        "everywhere. Weights are kept and saved in fp32 either way",
    )
    p.add_argument(
        "--seed", type=int, default=42, help="seed of the new weights, dropout and the batch order (default: 42)"
    )
    p.add_argument(
        "--split-seed",
        type=int,
        default=42,
        help="seed of the train/validation split (default: 42); keep it fixed to compare methods or "
        "training seeds on the same validation posts",
    )
    p.add_argument(
        "--name",
        default=None,
        help="folder name of the result (default: depression-<adapter config> or depression-full)",
    )
    p.add_argument("--output-dir", default=None, help="where the folder goes (default: adapters/ or models/ for full)")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a trained model already in the output folder, or discard an interrupted run's checkpoint",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted run (same arguments) after its last finished epoch; "
        "with nothing to resume it starts afresh",
    )
    p.add_argument(
        "--patience",
        type=int,
        default=None,
        metavar="N",
        help="stop after N epochs without a better validation --metric (default: off, run every epoch); "
        "the best epoch is saved either way",
    )
    p.add_argument(
        "--metric",
        choices=["accuracy", "macro_f1"],
        default="accuracy",
        help="what chooses the best epoch (and --patience watches): accuracy (default) or macro_f1, the mean "
        "F1 over the classes, which counts a small class as much as a large one",
    )
    p.add_argument(
        "--class-weights",
        choices=["none", "balanced"],
        default="none",
        help="none (default): plain cross-entropy; balanced: each class's loss weighted by n_posts / "
        "(n_classes x its posts), as scikit-learn's 'balanced', for imbalanced data",
    )
    p.error = lambda message: fail(f"{message} (see python train.py --help)")  # one line, no usage dump
    return p


def parse_args(argv=None):
    args = build_parser().parse_args(argv)
    if args.epochs < 1 or args.batch_size < 1 or args.max_length < 8:
        fail("--epochs and --batch-size must be at least 1, --max-length at least 8")
    if not 0 <= args.attention_dropout < 1:
        fail("--attention-dropout must be at least 0 and below 1, e.g. 0.1")
    if not 0 < args.val_size < 1:
        fail("--val-size must be between 0 and 1, e.g. 0.16")
    if args.patience is not None and args.patience < 1:
        fail("--patience must be at least 1 (epochs without a better validation accuracy)")
    if isinstance(args.data, list) and len(args.data) == 1:
        args.data = args.data[0]  # one source stays a plain string, as before (training.json, --resume)
    named = data.DATA_SETS.get(args.data) if isinstance(args.data, str) else None
    args.sources = named["sources"] if named else args.data
    if named:  # the named data set's label map and normalisation, unless given
        args.label_map = named["label_map"] if args.label_map is None else args.label_map
        args.normalize_text = args.normalize_text or named["normalize_text"]
    try:
        args.label_mapping = data.parse_label_map(args.label_map)
    except DataError as e:
        fail(str(e))
    args.lr = args.lr or LR[args.mode]
    kind = args.adapter_config if args.mode == "adapter" else "full"
    args.name = args.name or (f"depression-original-{kind}" if args.data == "original" else f"depression-{kind}")
    args.output = Path(args.output_dir or OUTPUT_DIR[args.mode]) / args.name
    return args


def mixed_precision(choice):
    """--mixed-precision auto: bf16 on GPUs that have it, else fp16 on CUDA; on a CPU bf16 where it computes bf16
    natively (hardware.cpu_has_bf16: AVX512-BF16 or AMX), else full precision (emulated bf16 is far slower)."""
    if choice != "auto":
        return choice
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if torch.backends.mps.is_available():
        return "no"
    return "bf16" if hardware.cpu_has_bf16() else "no"


def evaluate(model, loader, accelerator, label_names, sources=None):
    """Metrics over the whole validation set: each process classifies its share of the batches, and
    gather_for_metrics brings every post's result to every process exactly once. sources (the data source of
    each validation post, when there are several) adds the metrics per source."""
    model = accelerator.unwrap_model(model)  # no DDP for inference: the processes' shares differ in size
    model.eval()
    rows = []
    with torch.inference_mode(), accelerator.autocast():  # validation in the training's precision
        for indices, batch in zip(loader.batch_sampler, loader):  # the posts of each batch, by validation index
            batch = batch.to(accelerator.device)
            logits = model(**batch).logits.float()
            loss = torch.nn.functional.cross_entropy(logits, batch["labels"], reduction="none")
            positive = logits.softmax(-1)[:, -1].tolist()
            rows += zip(indices, logits.argmax(-1).tolist(), batch["labels"].tolist(), loss.tolist(), positive)
    rows = accelerator.gather_for_metrics(rows, use_gather_object=True)
    indices, preds, labels, losses, positive = zip(*rows)
    result = {
        "val_loss": float(np.mean(losses)),
        **metrics.label_metrics(list(preds), list(labels), label_names),
        "val_examples": len(rows),
    }
    if sources is not None:
        result["by_source"] = metrics.source_metrics(
            preds, labels, positive if len(label_names) == 2 else None, [sources[i] for i in indices], label_names
        )
    return result


def class_weights(choice, labels, num_classes):
    """None for plain cross-entropy; 'balanced': n / (num_classes x count) per class (scikit-learn's), as a list."""
    if choice == "none":
        return None
    return compute_class_weight("balanced", classes=np.arange(num_classes), y=np.asarray(labels)).tolist()


NO_DECAY = ["bias", "layernorm", "rmsnorm", r"(?:^|\.)norm(?:$|\.)", r"_norm(?:$|\.)"]  # Trainer's name patterns


def parameter_groups(model, weight_decay):
    """The trainable weights in two AdamW groups, as transformers.Trainer and the example scripts make them: biases
    and LayerNorm weights without weight decay, all others with it. Frozen weights are left out (no gradient, no
    optimizer state)."""
    decayed = set(get_parameter_names(model, [torch.nn.LayerNorm], NO_DECAY))
    trainable = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    return [
        {"params": [p for name, p in trainable if name in decayed], "weight_decay": weight_decay},
        {"params": [p for name, p in trainable if name not in decayed], "weight_decay": 0.0},
    ]


def build_optimizer(model, lr, weight_decay=WEIGHT_DECAY, fused=True):
    """AdamW over parameter_groups; fused: one kernel for the whole update (CPU, CUDA, MPS), much faster than the
    per-tensor loop on a CPU (docs/speed.md)."""
    return torch.optim.AdamW(parameter_groups(model, weight_decay), lr=lr, fused=fused)


def train_step(model, batch, optimizer, scheduler, accelerator, max_grad_norm=MAX_GRAD_NORM, class_weights=None):
    """One optimisation step (forward, backward, clipping, AdamW, schedule); returns the loss, cross-entropy weighted
    per class when class_weights (a tensor, one weight per class) is given, and of the product with the length-only
    model when the batch holds its log-probabilities (--length-expert). bench/run.py and bench/profile_step.py time
    this very function."""
    with record_function("forward"):
        prior = batch.pop(data.PRIOR_COLUMN, None)  # --length-expert: the length-only model's log-probabilities
        if class_weights is None and prior is None:
            loss = model(**batch).loss
        else:
            logits = model(**{key: value for key, value in batch.items() if key != "labels"}).logits.float()
            logits = logits if prior is None else logits + prior  # the product of experts, in log space
            loss = torch.nn.functional.cross_entropy(logits, batch["labels"], weight=class_weights)
    with record_function("backward"):
        accelerator.backward(loss)
    with record_function("optimizer"):
        accelerator.clip_grad_norm_(model.parameters(), max_grad_norm)
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        optimizer.zero_grad(set_to_none=True)
    return loss.detach()


def train_epoch(model, loader, optimizer, scheduler, accelerator, epoch, epochs, class_weights=None):
    """One pass over this process's share of the data; returns the mean training loss and, summed over all
    processes, {posts, real tokens, computed tokens (padding included)}. The sums stay on the device until the end
    of the epoch (no wait for the GPU after each step); the bar shows the loss every 20 steps."""
    model.train()  # train_adapter() leaves the heads in eval mode
    loader.batch_sampler.set_epoch(epoch - 1)  # the epoch's order, also after --resume
    device = accelerator.device
    loss_sum, real = torch.zeros((), device=device), torch.zeros((), dtype=torch.long, device=device)
    posts = computed = 0  # from the shapes: no wait for the device
    bar = tqdm(loader, desc=f"epoch {epoch}/{epochs}", disable=not accelerator.is_local_main_process, leave=True)
    for step, batch in enumerate(bar, 1):
        batch = batch.to(device)
        loss_sum += train_step(model, batch, optimizer, scheduler, accelerator, class_weights=class_weights)
        mask = batch["attention_mask"]
        posts, computed, real = posts + len(mask), computed + mask.numel(), real + mask.sum()
        if step % 20 == 0:
            bar.set_postfix(loss=f"{loss_sum.item() / step:.4f}")
    mean_loss = accelerator.reduce(loss_sum / max(len(loader), 1), "mean")
    counts = accelerator.reduce(torch.stack([real.new_tensor(posts), real, real.new_tensor(computed)]), "sum")
    return float(mean_loss), dict(zip(("posts", "real_tokens", "computed_tokens"), counts.tolist()))


def trainable_state(model):
    """A CPU copy of the trained weights (adapter + head, or everything in full mode): the best epoch's."""
    return {n: p.detach().to("cpu", copy=True) for n, p in model.named_parameters() if p.requires_grad}


def library_versions():
    names = ["torch", "transformers", "adapters", "accelerate", "datasets"]
    return {"python": platform.python_version(), **{n: version(n) for n in names}}


# Flags that say where the result goes or how to treat a folder already there; every other flag is a setting that
# a checkpoint must agree on with the command that resumes it.
NOT_SETTINGS = {"help", "name", "output_dir", "overwrite", "resume"}


def resume_keys():
    return [action.dest for action in build_parser()._actions if action.dest not in NOT_SETTINGS]


def resume_config(args, num_processes):
    return {**{key: getattr(args, key) for key in resume_keys()}, "num_processes": num_processes}


def claim_output(args, num_processes):
    """Under the lock: check the result folder and any interrupted run in <name>.incomplete/; returns whether
    to resume. Without --resume an interrupted run's checkpoint is kept unless --overwrite says to discard it."""
    saved.recover_swap(args.output)
    saved.check_output_folder(args.output, args.overwrite)
    staging = saved.staging_folder(args.output)
    checkpoint = staging / "checkpoint"
    saved.recover_swap(checkpoint)
    state_file = checkpoint / "state.json"
    if state_file.is_file():
        state = json.loads(state_file.read_text())
        if args.resume:
            config = resume_config(args, num_processes)
            for key, value in state["config"].items():
                if config.get(key) != value:
                    raise ModelError(
                        f"--resume: the checkpoint in {staging} was made with {key} = {value!r}, "
                        f"not {config.get(key)!r}; pass the same arguments to resume, "
                        f"or --overwrite instead of --resume to start over"
                    )
            return True
        if not args.overwrite:
            raise ModelError(
                f"{staging} holds an interrupted run (epoch {state['epoch']} of {args.epochs} done); "
                f"pass --resume to continue it, or --overwrite to start over"
            )
    elif args.resume:
        print(f"--resume: nothing to resume in {staging}; starting afresh")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    return False


def on_main_process(accelerator, work, *args):
    """work(*args) on the main process; its ModelError (one line) is raised on every process, so that all of
    them stop alike instead of the others waiting for ever. Returns work's result on the main process."""
    result, message = None, None
    if accelerator.is_main_process:
        try:
            result = work(*args)
        except ModelError as e:
            message = str(e)
    if accelerator.num_processes > 1:
        message = broadcast_object_list([message])[0]
    if message:
        raise ModelError(message)
    return result


def save_checkpoint(staging, accelerator, model, optimizer, scheduler, best_state, state):
    """The state after a finished epoch, for --resume: trainable weights and the best epoch's (safetensors),
    optimizer, scheduler, each process's RNG states, and state.json (epoch, metrics, best). Written beside the
    last checkpoint and swapped in whole."""
    new = staging / "checkpoint.new"
    if accelerator.is_main_process:
        shutil.rmtree(new, ignore_errors=True)
        new.mkdir()
    accelerator.wait_for_everyone()
    torch.save(rng_states(), new / f"rng-{accelerator.process_index}.pt")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        save_file(trainable_state(accelerator.unwrap_model(model)), new / "trainable.safetensors")
        save_file(best_state, new / "best.safetensors")
        torch.save(optimizer.state_dict(), new / "optimizer.pt")
        torch.save(scheduler.state_dict(), new / "scheduler.pt")
        (new / "state.json").write_text(json.dumps(state, indent=2) + "\n")
        saved.swap_in(new, staging / "checkpoint")
        write_metrics(staging / "metrics.jsonl", state["history"])
    accelerator.wait_for_everyone()


def load_checkpoint(staging, accelerator, model, optimizer, scheduler):
    """Restore what save_checkpoint() wrote; returns (state, best_state). The RNG states come last."""
    folder = staging / "checkpoint"
    state = json.loads((folder / "state.json").read_text())
    load_trainable(accelerator.unwrap_model(model), load_file(folder / "trainable.safetensors"), folder)
    optimizer.load_state_dict(torch.load(folder / "optimizer.pt", weights_only=True))
    scheduler.load_state_dict(torch.load(folder / "scheduler.pt", weights_only=True))
    set_rng_states(torch.load(folder / f"rng-{accelerator.process_index}.pt", weights_only=True))
    return state, load_file(folder / "best.safetensors")


def load_trainable(model, weights, source):
    """Put saved trainable weights into `model`, checking that every trainable weight was among them."""
    missing, unexpected = model.load_state_dict(weights, strict=False)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    if unexpected or trainable - set(weights):
        raise ModelError(
            f"{source} does not hold this model's trainable weights "
            f"(e.g. {(unexpected or sorted(trainable - set(weights)))[0]}); start over with --overwrite"
        )


def rng_states():
    """Python's, numpy's and torch's random states, in types torch.load(weights_only=True) reads back."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    states = {
        "python": random.getstate(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states):
    random.setstate((states["python"][0], tuple(states["python"][1]), states["python"][2]))
    kind, keys, pos, has_gauss, gauss = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(states["torch"])
    if "cuda" in states:
        torch.cuda.set_rng_state_all(states["cuda"])


def cache_lower_layers(model, ds, tokenizer, k, batch_size, accelerator):
    """The output of the embeddings and the lowest k layers for every post of ds, computed once (no autograd,
    those layers in eval mode: no dropout), real tokens only: a list of [tokens, hidden] tensors in ds order, in the
    training's precision (bf16 under bf16 or fp16 mixed precision: half the memory of fp32), kept on the training
    device."""
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(accelerator.mixed_precision, torch.float32)
    pad, states = DataCollatorWithPadding(tokenizer), [None] * len(ds)
    training = model.training
    model.eval()
    with torch.no_grad(), M.lower_layers_only(model, k) as lower, accelerator.autocast():
        for batch in posts.sorted_batches(data.ds_lengths(ds), batch_size):
            inputs = pad(
                [
                    {
                        key: ds[i][key]
                        for key in ("input_ids", "attention_mask", "token_type_ids")
                        if key in ds.column_names
                    }
                    for i in batch
                ]
            ).to(accelerator.device)
            hidden = lower(**inputs).last_hidden_state.to(dtype)
            for row, i in enumerate(batch):
                states[i] = hidden[row, : int(inputs["attention_mask"][row].sum())].clone()
    model.train(training)
    return states


def cache_frozen_layers(args, model, tokenizer, train_ds, val_ds, accelerator, shard):
    """Where the lowest layers are frozen: (k, train loader, validation loader, seconds) over their cached output,
    the model's lowest k layers switched to pass-through; else (0, None, None, 0.0), saying why if it is unsafe."""
    if args.mode != "adapter" or not args.cache_frozen:
        return 0, None, None, 0.0
    k, unsafe = M.frozen_lower_layers(model)
    if unsafe:
        accelerator.print(f"frozen layers not cached: {unsafe}; every layer runs every epoch")
    if not k:
        return 0, None, None, 0.0
    start = time.perf_counter()
    model.to(accelerator.device)
    train_states, val_states = (
        cache_lower_layers(model, ds, tokenizer, k, args.batch_size * 2, accelerator) for ds in (train_ds, val_ds)
    )
    seconds = time.perf_counter() - start
    size = sum(s.numel() * s.element_size() for s in train_states + val_states) / 1e6
    accelerator.print(
        f"cached layers 0-{k - 1} for {len(train_states) + len(val_states):,} posts: {size:,.0f} MB in {seconds:.1f} s"
    )
    priors = train_ds[data.PRIOR_COLUMN] if data.PRIOR_COLUMN in train_ds.column_names else None
    train_dl = data.states_loader(
        train_states, train_ds["label"], args.batch_size, args.seed, args.group_by_length, **shard, priors=priors
    )
    val_dl = data.states_loader(val_states, val_ds["label"], args.batch_size * 2, train=False, **shard)
    return k, train_dl, val_dl, seconds


def write_metrics(path, history):
    path.write_text("".join(json.dumps(row) + "\n" for row in history))


def use_cpu_processes():
    """True when torchrun/accelerate launch started several processes on a machine without CUDA: accelerate
    then joins them with gloo only if told to use the CPU (else each process would train alone)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()


def run(args):
    if args.mode == "adapter":
        M.check_adapter_request(
            args.model, args.adapter_config, args.reduction_factor, args.leave_out
        )  # before any work
    accelerator = Accelerator(mixed_precision=mixed_precision(args.mixed_precision), cpu=use_cpu_processes())
    lock = on_main_process(accelerator, saved.lock_folder, args.output)
    try:
        return train_and_save(args, accelerator)
    finally:
        if lock is not None:
            saved.release_lock(lock)


def train_and_save(args, accelerator):
    """Set up (data, model, optimizer, a checkpoint to resume), fit (the epochs), save (the best epoch, on the main
    process); returns the model and the per-epoch metrics."""
    run = set_up(args, accelerator)
    best, best_state, history = fit(args, accelerator, run)
    if run.cached:
        run.restore_layers()  # the whole model again, for saving and for callers that predict from token ids
    if accelerator.is_main_process:
        save(args, accelerator, run, best, best_state, history)
    accelerator.wait_for_everyone()
    return accelerator.unwrap_model(run.model), history


def set_up(args, accelerator):
    """Everything the epochs need, as one namespace: the claimed output folder, the data and its loaders (over cached
    lower layers where they are frozen), the model, optimizer and schedule, prepared by accelerate."""
    log, processes = accelerator.print, accelerator.num_processes
    run = SimpleNamespace(processes=processes)
    resume = on_main_process(accelerator, claim_output, args, processes)
    run.resume = broadcast_object_list([resume])[0] if processes > 1 else resume
    run.staging = saved.staging_folder(args.output)
    set_seed(args.seed)

    train_ds, val_ds, run.label_names, run.data_info = data.load_splits(
        args.sources, args.text_column, args.label_column, args.val_size, args.split_seed, args.label_mapping,
        args.normalize_text,
    )  # fmt: skip
    if args.max_train_samples:
        train_ds = train_ds.select(range(min(args.max_train_samples, len(train_ds))))
    if args.max_eval_samples:
        val_ds = val_ds.select(range(min(args.max_eval_samples, len(val_ds))))
    run.val_sources = val_ds["source"] if "source" in val_ds.column_names else None
    if args.short_copies:
        train_ds, added = data.add_short_copies(train_ds, args.seed)
        low, high = data.SHORT_COPY_WORDS
        log(f"short copies: {added} training posts also seen cut to their first {low}-{high} words")
    run.tokenizer = M.load_tokenizer(args.model)
    train_ds, val_ds = (data.tokenize(ds, run.tokenizer, args.max_length) for ds in (train_ds, val_ds))
    if args.length_expert is not None:
        train_ds, run.length_expert = data.add_length_prior(train_ds, len(run.label_names), args.length_expert)
        log(f"length expert (weight {args.length_expert:g}): a length-only model gets "
            f"{run.length_expert['train_accuracy']:.1%} of the training posts")  # fmt: skip
    run.train_size, run.val_size = len(train_ds), len(val_ds)
    shard = {"num_shards": processes, "shard": accelerator.process_index}
    run.train_dl = data.train_loader(train_ds, run.tokenizer, args.batch_size, args.seed, args.group_by_length, **shard)
    run.val_dl = data.eval_loader(val_ds, run.tokenizer, args.batch_size * 2, **shard)
    log(
        f"split: {len(train_ds)} train / {len(val_ds)} validation posts (split seed {args.split_seed}), "
        f"max length {args.max_length}"
    )
    run.weights = class_weights(args.class_weights, train_ds["label"], len(run.label_names))
    if run.weights is not None:
        log("class weights: " + ", ".join(f"{n} {w:.3f}" for n, w in zip(run.label_names, run.weights)))

    model = M.build_model(
        args.model, args.mode, run.label_names, args.adapter_config, args.reduction_factor, args.leave_out, args.seed,
        args.attention_dropout,
    )  # fmt: skip
    run.params = M.count_parameters(model)
    log(
        f"model: {args.model}, mode {args.mode}"
        + (f", adapter {args.adapter_config}" if args.mode == "adapter" else "")
    )
    log(M.format_parameters(run.params))
    run.cached, cached_train_dl, cached_val_dl, run.cache_seconds = cache_frozen_layers(
        args, model, run.tokenizer, train_ds, val_ds, accelerator, shard
    )
    if run.cached:
        run.train_dl, run.val_dl = cached_train_dl, cached_val_dl
        run.restore_layers = M.skip_lower_layers(model, run.cached)
    optimizer = build_optimizer(model, args.lr, args.weight_decay)
    steps = args.epochs * len(run.train_dl)  # this process's steps: the batches are already shared out
    run.scheduler = get_linear_schedule_with_warmup(optimizer, int(args.warmup_ratio * steps), steps)
    run.model, run.optimizer = accelerator.prepare(model, optimizer)
    log(
        f"device: {accelerator.device}, {processes} process(es), mixed precision: {accelerator.mixed_precision}, "
        f"global batch {args.batch_size * processes} = {processes} x {args.batch_size}, learning rate {args.lr:g}"
    )
    if processes == 1 and accelerator.device.type == "cpu" and torch.get_num_threads() < (os.cpu_count() or 1):
        log(
            f"note: {torch.get_num_threads()} of {os.cpu_count()} CPU threads (OMP_NUM_THREADS, which accelerate "
            f"launch sets to 1); run python train.py for one process, or torchrun --nproc_per_node N "
            f"(or accelerate launch --multi_gpu --num_processes N) for several"
        )
    return run


def fit(args, accelerator, run):
    """The epochs (after the resumed checkpoint's, if any), validating after each and keeping the best by --metric;
    a checkpoint after every epoch. Returns (best epoch's metrics, its trainable weights, every epoch's metrics)."""
    log = accelerator.print
    best, best_state, history, since_best = None, None, [], 0
    if run.resume:
        state, best_state = load_checkpoint(run.staging, accelerator, run.model, run.optimizer, run.scheduler)
        if state["data_fingerprint"] != run.data_info["data_fingerprint"]:
            raise ModelError(
                f"--resume: the data differs from the checkpoint's in {run.staging}; "
                f"pass the same --data, or --overwrite instead of --resume to start over"
            )
        best, history, since_best = state["best"], state["history"], state["since_best"]
        log(f"resumed after epoch {state['epoch']} of {args.epochs} from {run.staging}/checkpoint")
    weights = None if run.weights is None else torch.tensor(run.weights, device=accelerator.device)
    cache_seconds = run.cache_seconds
    for epoch in range(len(history) + 1, args.epochs + 1):
        if args.patience and since_best >= args.patience:
            log(
                f"no better validation {args.metric} for {since_best} epochs: "
                f"stopping before epoch {epoch} (--patience)"
            )
            break
        start = time.perf_counter()
        train_loss, seen = train_epoch(
            run.model, run.train_dl, run.optimizer, run.scheduler, accelerator, epoch, args.epochs, weights
        )
        train_seconds = time.perf_counter() - start + cache_seconds  # the caching pass counts in the first epoch
        val = evaluate(run.model, run.val_dl, accelerator, run.label_names, run.val_sources)
        row = {
            "epoch": epoch, "train_loss": train_loss, **val, "train_examples": seen["posts"],
            "train_steps": len(run.train_dl),
            "train_tokens": seen["real_tokens"], "train_computed_tokens": seen["computed_tokens"],
            "train_seconds": train_seconds, "examples_per_second": seen["posts"] / train_seconds,
            "tokens_per_second": seen["real_tokens"] / train_seconds,
            "wall_seconds": time.perf_counter() - start + cache_seconds, "cache_seconds": cache_seconds,
        }  # fmt: skip
        if "by_source" in val:  # after the timings in metrics.jsonl, as every earlier column stays where it was
            row["by_source"] = row.pop("by_source")
        cache_seconds = 0.0
        history.append(row)
        log(f"epoch {epoch}: train loss {train_loss:.4f}, {format_scores(val, run.label_names)} "
            f"({train_seconds:.0f} s, {row['examples_per_second']:.1f} posts/s)")  # fmt: skip
        if best is None or val[args.metric] > best[args.metric]:
            best, best_state, since_best = row, trainable_state(accelerator.unwrap_model(run.model)), 0
        else:
            since_best += 1
        state = {
            "epoch": epoch, "config": resume_config(args, run.processes),
            "data_fingerprint": run.data_info["data_fingerprint"], "best": best, "since_best": since_best,
            "history": history,
        }  # fmt: skip
        save_checkpoint(run.staging, accelerator, run.model, run.optimizer, run.scheduler, best_state, state)
    return best, best_state, history


def format_scores(row, label_names):
    scores = (
        f"precision {row['precision']:.4f}, recall {row['recall']:.4f}, F1 {row['f1']:.4f}"
        if len(label_names) == 2
        else f"macro-F1 {row['macro_f1']:.4f}"
    )
    loss = f"val loss {row['val_loss']:.4f}, " if "val_loss" in row else ""
    by_source = "; accuracy by source: " + ", ".join(
        f"{name} {r['accuracy']:.4f} ({r['n']})" for name, r in row.get("by_source", {}).items()
    )
    return f"{loss}accuracy {row['accuracy']:.4f}, {scores}" + (by_source if "by_source" in row else "")


def save(args, accelerator, run, best, best_state, history):
    """On the main process: the best epoch's weights, metrics.jsonl and training.json into a staging folder, swapped
    in whole for the output folder."""
    final = accelerator.unwrap_model(run.model)
    load_trainable(final, best_state, f"{run.staging}/checkpoint/best.safetensors")
    result = run.staging / "result"
    shutil.rmtree(result, ignore_errors=True)
    saved.save_trained(final, run.tokenizer, result, args.mode)
    write_metrics(result / "metrics.jsonl", history)
    saved.write_training_info(result, training_info(args, accelerator, run, best, history))
    saved.swap_in(result, args.output)
    shutil.rmtree(run.staging)
    size = sum(f.stat().st_size for f in args.output.iterdir()) / 1e6
    accelerator.print(f"best epoch {best['epoch']} (by {args.metric}): {format_scores(best, run.label_names)}")
    accelerator.print(
        f'saved to {args.output}/ ({size:.1f} MB); predict with: python predict.py --adapter {args.output} "some text"'
    )


def training_info(args, accelerator, run, best, history):
    """What training.json records: saved.TRAINING_INFO_SCHEMA's keys (what loading needs), the settings, the data's
    fingerprints and sizes, the parameter counts, the best epoch and the library versions."""
    return {
        "mode": args.mode, "base_model": args.model, "adapter_name": M.ADAPTER_NAME,
        "adapter_config": args.adapter_config if args.mode == "adapter" else None,
        "reduction_factor": args.reduction_factor, "leave_out": args.leave_out, "label_names": run.label_names,
        "max_length": args.max_length, "label_map": args.label_map, "normalize_text": args.normalize_text,
        "metric": args.metric, "class_weights": run.weights, "attention_dropout": args.attention_dropout,
        "data_set": args.data if isinstance(args.data, str) and args.data in data.DATA_SETS else None,
        "length_expert": getattr(run, "length_expert", None), "short_copies": args.short_copies,
        "seed": args.seed, "split_seed": args.split_seed, "epochs": args.epochs, "epochs_run": len(history),
        "patience": args.patience, "lr": args.lr, "batch_size": args.batch_size, "num_processes": run.processes,
        "global_batch_size": args.batch_size * run.processes, "mixed_precision": accelerator.mixed_precision,
        "device": str(accelerator.device), **run.data_info, "train_size": run.train_size, "val_size": run.val_size,
        "parameters": run.params, "best_epoch": best["epoch"], "best": best, "versions": library_versions(),
    }  # fmt: skip


def main(argv=None):
    args = parse_args(argv)
    hf_logging.set_verbosity_error()  # the expected "newly initialized head" notices would drown the summary
    try:
        run(args)
    except (DataError, ModelError) as e:
        fail(str(e))


if __name__ == "__main__":
    main()
