"""
A training run on accelerate, built from its settings: the defaults it was measured with, the set-up (the
accelerator, the data, the model, the loaders over the frozen lower layers computed once), one optimisation step and
one epoch, validation, and the epochs with their checkpoints and random states (so that --resume continues exactly).

- make_accelerator(args): accelerate's Accelerator for the settings (textclassifier.settings).
- set_up(args, accelerator, staging): (Run, record): what the epochs need, and what training.json records of it.
- fit(run, accelerator, epochs): the epochs, with a checkpoint after each -> (best epoch, its weights, history).
- train_step: one step (forward, backward, clip, AdamW); train_epoch, validate, calibrate.
"""

import contextlib
import json
import os
import platform
import random
import shutil
import time
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import NamedTuple

import datasets
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

import data
import model as M
import posts
from errors import DataError, ModelError
from textclassifier import fusion, hardware, metrics, saved

# Defaults, measured on the real data (7,650 posts after cleaning, 6,426 for training) with the offline
# MiniLM on a 2-core CPU; docs/usage.md ("Choosing the defaults") has the runs behind them.
EPOCHS = 3
FUSION_LR = 2e-3  # train.py --fusion: the Fusion layers and the head (docs/fusion.md, "Choosing the learning rate")
LR = {"adapter": 1e-3, "full": 5e-5, "fusion": FUSION_LR}  # adapters need a far higher rate than full fine-tuning
BATCH_SIZE = 32
MAX_LENGTH = 64
ATTENTION_DROPOUT = 0.0  # not the checkpoint's 0.1
WARMUP_RATIO = 0.1  # the HF example scripts' usual warm-up, weight decay and clipping
WEIGHT_DECAY = 0.01
MAX_GRAD_NORM = 1.0


def mixed_precision(choice, cpu=False):
    """--mixed-precision auto: hardware.auto_precision on the device accelerate trains on (the CPU where cpu is set,
    else a CUDA GPU, else Apple's MPS, else the CPU): bf16 where it is native (compute capability 8.0+; a CPU with
    AVX512-BF16 or AMX), fp16 with a gradient scaler on older CUDA GPUs, else full precision (emulated bf16 is far
    slower)."""
    if choice != "auto":
        return choice
    if cpu:
        return hardware.auto_precision("cpu")
    device = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    return hardware.auto_precision(device)


def attention_for(accelerator):
    """The attention implementation to train with: "eager" under bf16 on a CPU, where PyTorch's fused
    (flash) attention computes its backward pass about 8x slower than in fp32 and an eager matmul-softmax-matmul
    runs fast in bf16 (docs/speed.md, "bf16 on the CPU"); else None, the library's default (sdpa)."""
    return "eager" if accelerator.mixed_precision == "bf16" and accelerator.device.type == "cpu" else None


def validate(model, loader, accelerator, label_names, sources=None):
    """Metrics over the whole validation set (validation_logits). sources (the data source of each validation post,
    when there are several) adds the metrics per source."""
    logits, labels = validation_logits(model, loader, accelerator)
    losses = torch.nn.functional.cross_entropy(logits, labels, reduction="none").tolist()
    preds, labels, probs = logits.argmax(-1).tolist(), labels.tolist(), logits.softmax(-1)
    result = {
        "val_loss": float(np.mean(losses)),
        **metrics.label_metrics(preds, labels, label_names),
        "val_examples": len(labels),
    }
    if len(label_names) == 2:
        result["ece"] = metrics.expected_calibration_error(probs.numpy(), np.asarray(labels))
    if sources is not None:
        positive = probs[:, -1].tolist() if len(label_names) == 2 else None
        result["by_source"] = metrics.source_metrics(preds, labels, positive, list(sources), label_names)
    return result


def validation_logits(model, loader, accelerator):
    """Every validation post's logits (n x classes, float32) and label, in validation order: each process classifies
    its share of the batches in the training's precision, keeps the results on its device and copies them once,
    and gather_for_metrics brings every post's result to every process exactly once."""
    model = accelerator.unwrap_model(model)  # no DDP for inference: the processes' shares differ in size
    model.eval()
    logits, labels = [], []
    with torch.inference_mode(), accelerator.autocast():
        for batch in loader:
            batch = batch.to(accelerator.device, non_blocking=True)
            logits.append(model(**batch).logits.float())
            labels.append(batch["labels"])
    indices = [i for batch in loader.batch_sampler for i in batch]  # the posts of each batch, by validation index
    mine = zip(indices, torch.cat(logits).cpu().tolist(), torch.cat(labels).cpu().tolist()) if logits else []
    rows = sorted(accelerator.gather_for_metrics(list(mine), use_gather_object=True))
    return torch.tensor([row[1] for row in rows]), torch.tensor([row[2] for row in rows])


def fit_temperature(logits, labels):
    """Temperature scaling (Guo et al. 2017): the T > 0 that minimises the cross-entropy of softmax(logits / T)
    against the labels (L-BFGS on log T). One number: the predicted class never changes, only how sure it is."""
    log_t = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.1, max_iter=200, line_search_fn="strong_wolfe")

    def loss():
        optimizer.zero_grad()
        value = torch.nn.functional.cross_entropy(logits / log_t.exp(), labels)
        value.backward()
        return value

    optimizer.step(loss)
    return float(log_t.detach().exp())


def calibrate(run, accelerator):
    """train.py --calibrate, the best epoch's weights in the model: its temperature on the validation posts
    (fit_temperature), with the expected calibration error and the validation loss before and after it."""
    logits, labels = validation_logits(run.model, run.val_dl, accelerator)
    t = fit_temperature(logits, labels)
    before, after = logits.softmax(-1), (logits / t).softmax(-1)
    return {
        "temperature": t,
        "val_posts": len(labels),
        "ece_before": metrics.expected_calibration_error(before.numpy(), labels.numpy()),
        "ece_after": metrics.expected_calibration_error(after.numpy(), labels.numpy()),
        "val_loss_before": float(torch.nn.functional.cross_entropy(logits, labels)),
        "val_loss_after": float(torch.nn.functional.cross_entropy(logits / t, labels)),
    }


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


def train_step(
    model, batch, optimizer, scheduler, accelerator, max_grad_norm=MAX_GRAD_NORM, class_weights=None, prior=None,
    regularization=None,
):  # fmt: skip
    """One optimisation step (forward, backward, clipping, AdamW, schedule: advanced only when the optimizer
    stepped, not on a step that fp16's gradient scaler skipped for overflow); returns the loss, cross-entropy weighted
    per class when class_weights (a tensor, one weight per class) is given, and of the product with the length-only
    model when its log-probabilities for the batch's posts are given (prior: --length-expert). regularization: a
    function giving a term that the backward pass adds to the loss (AdapterFusion's, fusion.regularization)."""
    with record_function("forward"):
        if class_weights is None and prior is None:
            loss = model(**batch).loss
        else:
            logits = model(**{key: value for key, value in batch.items() if key != "labels"}).logits.float()
            logits = logits if prior is None else logits + prior  # the product of experts, in log space
            loss = torch.nn.functional.cross_entropy(logits, batch["labels"], weight=class_weights)
    with record_function("backward"):
        accelerator.backward(loss if regularization is None else loss + regularization())
    with record_function("optimizer"):
        accelerator.clip_grad_norm_(model.parameters(), max_grad_norm)
        optimizer.step()
        if scheduler is not None and not accelerator.optimizer_step_was_skipped:  # fp16's scaler skips overflows
            scheduler.step()
        optimizer.zero_grad(set_to_none=True)
    return loss.detach()


def train_epoch(model, loader, optimizer, scheduler, accelerator, epoch, epochs, class_weights=None, fused=False):
    """One pass over this process's share of the data; returns the mean training loss and, summed over all
    processes, {posts, real tokens, computed tokens (padding included)}. The sums stay on the device until the end
    of the epoch (no wait for the GPU after each step); the bar shows the loss every 20 steps. fused: an
    AdapterFusion's regularisation term joins the loss (fusion.regularization)."""
    unwrapped = accelerator.unwrap_model(model)
    regularization = (lambda: fusion.regularization(unwrapped)) if fused else None
    model.train()  # train_adapter() leaves the heads in eval mode
    loader.batch_sampler.set_epoch(epoch - 1)  # the epoch's order, also after --resume
    device = accelerator.device
    loss_sum, real = torch.zeros((), device=device), torch.zeros((), dtype=torch.long, device=device)
    posts = computed = 0  # from the shapes: no wait for the device
    bar = tqdm(loader, desc=f"epoch {epoch}/{epochs}", disable=not accelerator.is_local_main_process, leave=True)
    for step, batch in enumerate(bar, 1):
        batch = batch.to(device, non_blocking=True)  # from pinned memory on a GPU: the copy overlaps the work
        inputs, prior = data.split_prior(batch)
        loss_sum += train_step(model, inputs, optimizer, scheduler, accelerator, class_weights=class_weights,
                               prior=prior, regularization=regularization)  # fmt: skip
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
    # Not accelerate's save_state/load_state: they save the whole model (an adapter's frozen base too, ~90 MB per
    # checkpoint for MiniLM instead of 1 MB), and the checkpoints written before must still resume.
    new = staging / "checkpoint.new"
    if accelerator.is_main_process:
        shutil.rmtree(new, ignore_errors=True)
        new.mkdir()
    accelerator.wait_for_everyone()
    torch.save(rng_states(accelerator.device), new / f"rng-{accelerator.process_index}.pt")
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
    """Restore what save_checkpoint() wrote; returns (state, best_state). Every tensor is mapped to this process's
    device, whichever device wrote it (a checkpoint from a GPU machine resumes on a CPU, rank 1's on cuda:1). The
    RNG states come last."""
    folder, device = staging / "checkpoint", accelerator.device
    state = json.loads((folder / "state.json").read_text())
    load_trainable(accelerator.unwrap_model(model), load_file(folder / "trainable.safetensors"), folder)
    optimizer.load_state_dict(torch.load(folder / "optimizer.pt", map_location=device, weights_only=True))
    scheduler.load_state_dict(torch.load(folder / "scheduler.pt", map_location=device, weights_only=True))
    rng = torch.load(folder / f"rng-{accelerator.process_index}.pt", map_location="cpu", weights_only=True)
    set_rng_states(rng, device)  # generator states are CPU byte tensors, on every device
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


def rng_states(device):
    """Python's, numpy's and torch's random states, and the GPU's where the process trains on one (its own device's
    only: each process saves its own file), in types torch.load(weights_only=True) reads back."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    states = {
        "python": random.getstate(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
        "torch": torch.get_rng_state(),
    }
    if device.type == "cuda":
        states["cuda"] = torch.cuda.get_rng_state(device)
    return states


def set_rng_states(states, device):
    """Restore rng_states(); the GPU's state only where this process trains on a GPU (a checkpoint from a GPU
    machine resumes on a CPU with the same Python, numpy and torch states)."""
    random.setstate((states["python"][0], tuple(states["python"][1]), states["python"][2]))
    kind, keys, pos, has_gauss, gauss = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(states["torch"])
    if "cuda" in states and device.type == "cuda":
        torch.cuda.set_rng_state(states["cuda"], device)


def cache_lower_layers(model, ds, tokenizer, k, batch_size, accelerator, post_indices=None):
    """The output of the embeddings and the lowest k layers for the posts of ds (post_indices: which, default
    every one), computed once (no autograd, those layers in eval mode: no dropout), real tokens only: a list in ds
    order of [tokens, hidden] tensors (None for a post not asked for), in the training's precision (bf16 under bf16
    or fp16 mixed precision: half the memory of fp32), kept on the training device. The lengths come from the
    token ids, so nothing waits for the GPU until the end."""
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(accelerator.mixed_precision, torch.float32)
    device, lengths = accelerator.device, data.ds_lengths(ds)
    wanted = list(range(len(ds))) if post_indices is None else sorted(post_indices)
    keys = [key for key in ("input_ids", "attention_mask", "token_type_ids") if key in ds.column_names]
    pad, states, columns = DataCollatorWithPadding(tokenizer), [None] * len(ds), ds.select_columns(keys)
    was_training = model.training
    model.eval()
    with torch.no_grad(), M.lower_layers_only(model, k) as lower, accelerator.autocast():
        for batch in sorted_batches_of(wanted, lengths, batch_size):
            chunk = columns[batch]
            inputs = to_device(pad([{key: chunk[key][row] for key in keys} for row in range(len(batch))]), device)
            hidden = lower(**inputs).last_hidden_state.to(dtype)
            for row, i in enumerate(batch):
                states[i] = hidden[row, : lengths[i]].clone()
    model.train(was_training)
    return states


def sorted_batches_of(indices, lengths, batch_size):
    """posts.sorted_batches over the posts `indices` (by their lengths), as batches of those indices."""
    return [[indices[j] for j in batch] for batch in posts.sorted_batches([lengths[i] for i in indices], batch_size)]


def to_device(batch, device):
    """A batch of CPU tensors on `device`; on a CUDA GPU through page-locked memory, without waiting for the copy."""
    if device.type == "cuda":  # cached states are on the GPU already
        batch = {key: value.pin_memory() if value.device.type == "cpu" else value for key, value in batch.items()}
    return {key: value.to(device, non_blocking=True) for key, value in batch.items()}


class Cache(NamedTuple):
    """What cache_frozen_layers gives: the loaders over the cached states (None where nothing is cached), the
    model change they need (a context manager: the lowest `layers` layers skipped while inside), the seconds."""

    layers: int = 0
    train_dl: object = None
    val_dl: object = None
    layers_skipped: contextlib.AbstractContextManager = contextlib.nullcontext()
    seconds: float = 0.0


def cache_frozen_layers(
    model, tokenizer, train_ds, val_ds, accelerator, shard, batch_size, seed, group_by_length, enabled=True
):
    """Where the lowest layers of an adapter model are frozen (and `enabled`): their output computed once, as a
    Cache (train.py's batches: batch_size, seed, group_by_length); else an empty Cache, saying why if it is unsafe.
    With several processes each caches and trains on its own posts only (LengthGroupedBatches' fixed_shards) and
    validates its own batches."""
    k, unsafe = M.frozen_lower_layers(model) if enabled else (0, None)
    if unsafe:
        accelerator.print(f"frozen layers not cached: {unsafe}; every layer runs every epoch")
    if not k:
        return Cache()
    start = time.perf_counter()
    model.to(accelerator.device)
    train_batches = data.training_batches(
        data.ds_lengths(train_ds), batch_size, seed, group_by_length, **shard, fixed_shards=True
    )
    val_batches = data.eval_batches(data.ds_lengths(val_ds), batch_size * 2, **shard)
    train_states = cache_lower_layers(model, train_ds, tokenizer, k, batch_size * 2, accelerator, train_batches.posts)
    val_posts = [i for batch in val_batches for i in batch]
    val_states = cache_lower_layers(model, val_ds, tokenizer, k, batch_size * 2, accelerator, val_posts)
    if accelerator.device.type == "cuda":
        torch.cuda.synchronize()  # the time of the work, not of its launch
    seconds = time.perf_counter() - start
    cached = [s for s in train_states + val_states if s is not None]
    size = sum(s.numel() * s.element_size() for s in cached) / 1e6
    share = " (this process's share)" if shard["num_shards"] > 1 else ""
    accelerator.print(f"cached layers 0-{k - 1} for {len(cached):,} posts{share}: {size:,.0f} MB in {seconds:.1f} s")
    priors = train_ds[data.PRIOR_COLUMN] if data.PRIOR_COLUMN in train_ds.column_names else None
    train_dl = data.states_loader(train_states, train_ds["label"], train_batches, priors=priors)
    val_dl = data.states_loader(val_states, val_ds["label"], val_batches)
    return Cache(k, train_dl, val_dl, M.lower_layers_skipped(model, k), seconds)


def write_metrics(path, history):
    path.write_text("".join(json.dumps(row) + "\n" for row in history))


def use_cpu_processes():
    """True when torchrun/accelerate launch started several processes on a machine without CUDA: accelerate
    then joins them with gloo only if told to use the CPU (else each process would train alone)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()


def fit(run, accelerator, epochs, metric="accuracy", patience=None):
    """The epochs (after the resumed checkpoint's, if any), validating after each and keeping the best by `metric`;
    a checkpoint after every epoch; stopping after `patience` epochs without a better one. Returns (best epoch's
    metrics, its trainable weights, every epoch's metrics)."""
    log = accelerator.print
    best, best_state, history, since_best = None, None, [], 0
    if run.resume:
        state, best_state = load_checkpoint(run.staging, accelerator, run.model, run.optimizer, run.scheduler)
        if state["data_fingerprint"] != run.data_fingerprint:
            raise ModelError(
                f"--resume: the data differs from the checkpoint's in {run.staging}; "
                f"pass the same --data, or --overwrite instead of --resume to start over"
            )
        best, history, since_best = state["best"], state["history"], state["since_best"]
        log(f"resumed after epoch {state['epoch']} of {epochs} from {run.staging}/checkpoint")
    weights = None if run.weights is None else torch.tensor(run.weights, device=accelerator.device)
    cache_seconds = run.cache_seconds
    for epoch in range(len(history) + 1, epochs + 1):
        if patience and since_best >= patience:
            log(f"no better validation {metric} for {since_best} epochs: stopping before epoch {epoch} (--patience)")
            break
        start = time.perf_counter()
        train_loss, seen = train_epoch(
            run.model, run.train_dl, run.optimizer, run.scheduler, accelerator, epoch, epochs, weights, run.fused
        )
        train_seconds = time.perf_counter() - start + cache_seconds  # the caching pass counts in the first epoch
        val = validate(run.model, run.val_dl, accelerator, run.label_names, run.val_sources)
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
        if best is None or val[metric] > best[metric]:
            best, best_state, since_best = row, trainable_state(accelerator.unwrap_model(run.model)), 0
        else:
            since_best += 1
        state = {
            "epoch": epoch, "config": run.config,
            "data_fingerprint": run.data_fingerprint, "best": best, "since_best": since_best,
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


@dataclass(frozen=True)
class Run:
    """One training run, as set_up builds it for fit(): where it writes, the data's loaders, the model, optimizer and
    schedule (prepared by accelerate), the cached layers and the class weights."""

    resume: bool
    staging: Path
    config: dict  # the settings a checkpoint must agree on with the command that resumes it
    label_names: list
    data_fingerprint: str  # a resumed checkpoint must have been trained on the same data
    val_sources: list | None
    train_dl: object
    val_dl: object
    model: object
    optimizer: object
    scheduler: object
    weights: list | None  # --class-weights
    layers_skipped: contextlib.ExitStack  # the cached lower layers skipped since set_up, put back when it is left
    cache_seconds: float
    fused: bool = False  # an AdapterFusion (train.py --fusion): its regularisation term joins the loss


def make_accelerator(args, cpu=False):
    """The Accelerator for the settings' --mixed-precision (on the CPU where cpu is set, or where several processes
    run without CUDA), with TF32 allowed for fp32 matrix products where --tf32 applies (tf32_used)."""
    cpu = cpu or use_cpu_processes()
    accelerator = Accelerator(mixed_precision=mixed_precision(args.mixed_precision, cpu), cpu=cpu)
    hardware.set_tf32(tf32_used(args, accelerator))
    return accelerator


def tf32_used(args, accelerator):
    return args.tf32 and hardware.tf32_applies(accelerator.device.type)


def set_up(args, accelerator, staging, resume=False, config=None):
    """A training run from its settings (textclassifier.settings): (Run, record). The Run holds what the epochs
    need: the data's loaders (over cached lower layers where they are frozen), the model, optimizer and schedule
    prepared by accelerate, and where checkpoints go (staging; resume: continue from the one there; config: what a
    checkpoint must agree on). The record holds what the run made of its settings for training.json: the data read
    and its sizes, the parameter counts, the length expert, the attention and TF32 used."""
    log, processes = accelerator.print, accelerator.num_processes
    set_seed(args.seed)

    tokenizer = M.load_tokenizer(args.model)
    train_ds, val_ds, label_names, data_info, val_sources, length_expert = load_data(args, tokenizer, log)
    weights = class_weights(args.class_weights, train_ds["label"], len(label_names))
    if weights is not None:
        log("class weights: " + ", ".join(f"{n} {w:.3f}" for n, w in zip(label_names, weights)))

    attention, fused = attention_for(accelerator), None
    if args.fusion:
        sources = fusion.check_sources(args.fusion, args.model)
        model, _ = fusion.build_model(sources, label_names, args.model, args.seed, args.attention_dropout,
                                          attention)  # fmt: skip
        fused = fusion.describe(args.fusion, sources)
    else:
        model = M.build_model(args.model, args.mode, label_names, adapter_config_name=args.adapter_config,
                              reduction_factor=args.reduction_factor, leave_out=args.leave_out, seed=args.seed,
                              attention_dropout=args.attention_dropout, attention=attention)  # fmt: skip
    params = M.count_parameters(model)
    kind = f"AdapterFusion over {', '.join(s['name'] for s in fused)}" if fused else f"adapter {args.adapter_config}"
    log(f"model: {args.model}, mode {args.mode}" + (f", {kind}" if args.mode == "adapter" else ""))
    log(M.format_parameters(params))
    shard = {"num_shards": processes, "shard": accelerator.process_index}
    cache = cache_frozen_layers(
        model,
        tokenizer,
        train_ds,
        val_ds,
        accelerator,
        shard,
        batch_size=args.batch_size,
        seed=args.seed,
        group_by_length=args.group_by_length,
        enabled=args.mode == "adapter" and args.cache_frozen,
    )
    pinned = accelerator.device.type == "cuda"  # page-locked batches: the copy to the GPU overlaps its work
    train_dl = cache.train_dl or data.train_loader(
        train_ds, tokenizer, args.batch_size, args.seed, args.group_by_length, **shard, pin_memory=pinned
    )
    val_dl = cache.val_dl or data.eval_loader(val_ds, tokenizer, args.batch_size * 2, **shard, pin_memory=pinned)
    optimizer = build_optimizer(model, args.lr, args.weight_decay)
    steps = args.epochs * len(train_dl)  # this process's steps: the batches are already shared out
    scheduler = get_linear_schedule_with_warmup(optimizer, int(args.warmup_ratio * steps), steps)
    tf32 = tf32_used(args, accelerator)
    log(
        f"device: {accelerator.device}, {processes} process(es), mixed precision: {accelerator.mixed_precision}"
        + (f" (attention: {attention})" if attention else "")
        + (", TF32 matmuls (--no-tf32: full fp32)" if tf32 else "")
        + ", "
        f"global batch {args.batch_size * processes} = {processes} x {args.batch_size}, learning rate {args.lr:g}"
    )
    if processes == 1 and accelerator.device.type == "cpu" and torch.get_num_threads() < (os.cpu_count() or 1):
        log(
            f"note: {torch.get_num_threads()} of {os.cpu_count()} CPU threads (OMP_NUM_THREADS, which accelerate "
            f"launch sets to 1); run python train.py for one process, or torchrun --nproc_per_node N "
            f"(or accelerate launch --multi_gpu --num_processes N) for several"
        )
    layers_skipped = contextlib.ExitStack()  # the lowest layers skipped from now until it is left (train_and_save)
    layers_skipped.enter_context(cache.layers_skipped)  # before accelerate wraps the model: DDP keeps what it saw
    model, optimizer = accelerator.prepare(model, optimizer)
    run = Run(
        resume=resume, staging=Path(staging), config=config or {}, label_names=label_names,
        data_fingerprint=data_info["data_fingerprint"], val_sources=val_sources, train_dl=train_dl, val_dl=val_dl,
        model=model, optimizer=optimizer, scheduler=scheduler, weights=weights, layers_skipped=layers_skipped,
        cache_seconds=cache.seconds, fused=bool(fused),
    )  # fmt: skip
    record = {"fused": fused,
        "data_info": data_info, "train_size": len(train_ds), "val_size": len(val_ds), "parameters": params,
        "length_expert": length_expert, "attention": attention or "sdpa", "tf32": tf32,
    }  # fmt: skip
    return run, record


def read_splits(args, log):
    """--data (and --other-senses) read, cleaned, split and cut to --max-train-samples / --max-eval-samples, as
    train.py trains and validates on them: (train, validation, label names, data info), the texts as they are."""
    train_ds, val_ds, label_names, data_info = data.load_splits(
        data.sources(args.data, args.other_senses),
        text_column=args.text_column,
        label_column=args.label_column,
        val_size=args.val_size,
        seed=args.split_seed,
        label_map=data.parse_label_map(args.label_map),
        normalize=args.normalize_text,
        log=log,
    )
    if args.max_train_samples:
        train_ds = train_ds.select(range(min(args.max_train_samples, len(train_ds))))
    if args.max_eval_samples:
        val_ds = val_ds.select(range(min(args.max_eval_samples, len(val_ds))))
    return train_ds, val_ds, label_names, data_info


def load_data(args, tokenizer, log):
    """read_splits, then the training posts' short and masked copies added where asked, tokenised, the length-only
    model's prior added where --length-expert asks: (train, validation, label names, data info, each validation
    post's source or None, the length expert's figures or None)."""
    train_ds, val_ds, label_names, data_info = read_splits(args, log)
    if args.other_senses and label_names != data.LABEL_NAMES:
        raise DataError(
            f"--other-senses adds posts labelled 0 (not depressive): it needs data labelled 0 and 1, not "
            f"{', '.join(map(str, label_names))} (map them with --label-map, e.g. 1=ds 0=nd)"
        )
    val_sources = val_ds["source"] if "source" in val_ds.column_names else None
    copies = {}
    if args.short_copies:
        copies["short_copies"] = data.short_copies(train_ds, args.seed)
        low, high = data.SHORT_COPY_WORDS
        log(f"short copies: {len(copies['short_copies'])} of {len(train_ds)} training posts also seen cut to their "
            f"first {low}-{high} words")  # fmt: skip
    if args.masked_copies:
        copies["masked_copies"] = data.masked_copies(train_ds)
        log(f"masked copies: {len(copies['masked_copies'])} of {len(train_ds)} training posts also seen without "
            f"the words depress* and suicid*")  # fmt: skip
    if copies:
        data_info["copies"] = {name: len(ds) for name, ds in copies.items()}
        train_ds = datasets.concatenate_datasets([train_ds, *copies.values()])
    if args.other_senses:
        data_info["other_senses_attribution"] = data.OTHER_SENSES_ATTRIBUTION
    train_ds, val_ds = (data.tokenize(ds, tokenizer, args.max_length) for ds in (train_ds, val_ds))
    length_expert = None
    if args.length_expert is not None:
        train_ds, length_expert = data.add_length_prior(train_ds, len(label_names), args.length_expert)
        log(f"length expert (weight {args.length_expert:g}): a length-only model gets "
            f"{length_expert['train_accuracy']:.1%} of the training posts")  # fmt: skip
    log(
        f"split: {len(train_ds)} train / {len(val_ds)} validation posts (split seed {args.split_seed}), "
        f"max length {args.max_length}"
    )
    return train_ds, val_ds, label_names, data_info, val_sources, length_expert
