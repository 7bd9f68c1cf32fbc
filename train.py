"""
Train the depression classifier by full fine-tuning or with a bottleneck adapter, and save the best epoch.

    python train.py --mode adapter                          # Pfeiffer adapter -> adapters/depression-pfeiffer/
    python train.py --mode adapter --adapter-config houlsby # -> adapters/depression-houlsby/
    python train.py --mode full                             # every weight -> models/depression-full/
    python train.py --mode adapter --resume                 # continue a killed run after its last epoch
    python train.py --mode adapter --push-to-hub your-name/depression-pfeiffer  # then upload the folder
    torchrun --nproc_per_node 2 train.py --mode adapter     # several processes or GPUs (accelerate launch too)

The loop is written out: AdamW over the trainable weights only, linear warm-up and decay, gradient clipping,
validation after every epoch. `accelerate` places everything on CUDA, Apple MPS or the CPU, runs mixed
precision where the hardware has it, and joins the processes that torchrun or accelerate launch start (NCCL on
GPUs, gloo on CPUs). Next to the weights go metrics.jsonl (one line per epoch) and training.json (everything
predict.py needs to rebuild the model, and what the run measured).

A run holds <name>.lock (filelock) while it works and writes into <name>.incomplete/, where it keeps a checkpoint
of the last finished epoch (--resume continues from it); the result replaces <name>/ only when it is whole.
"""

import argparse
import contextlib
import json
import os
import shutil
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Literal

import datasets
import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list, set_seed
from transformers import HfArgumentParser, get_linear_schedule_with_warmup
from transformers.utils import logging as hf_logging

import data
import model as M
import posts
from errors import DataError, ModelError, fail
from textclassifier import cli, hardware, model_card, saved, sharing, training

OUTPUT_DIR = {"adapter": "adapters", "full": "models"}


def setting(default=None, help="", **argparse_options):
    """A dataclass field that HfArgumentParser turns into a flag: its default, one line of help, argparse extras."""
    return field(default=default, metadata={"help": help, **argparse_options})


def remedy(help):
    """A remedy's switch: --X (on), --X false (off), or unset: the named data set's choice (data.DATA_SETS)."""
    return setting(None, f"{help} (false: off; unset: as the named data set says)", nargs="?", const=True)


# The settings: one field per flag (name, type, default, one line of help), read by HfArgumentParser as in the
# adapters library's example scripts. Every one of them goes into the checkpoint (--resume must repeat it) and into
# training.json; the longer explanations are in docs/usage.md ("Every flag of train.py").
LABEL_COLUMNS, VAL_SIZE = data.LABEL_COLUMNS, data.VAL_SIZE  # inside DataSettings, `data` is the field


@dataclass
class DataSettings:
    _argument_group_name = "data: what is trained and validated on"
    data: str = setting(
        "default", "default: the depression data set + the Reddit posts in corpora/; original: the depression data "
        "set alone; or a Hub id or .csv/.tsv/.json/.jsonl/.parquet files (docs/usage.md)", nargs="+", metavar="DATA",
    )  # fmt: skip
    label_map: list[str] | None = setting(
        help="label values -> labels, e.g. 1=ds,dsf 0=bc drop=nd (drop: leave out)", metavar="TARGET=VALUES"
    )
    normalize_text: bool = setting(False, "lower-case and keep a-z 0-9 only, as the depression data set was cleaned")
    length_expert: float | None = setting(
        help="train with a length-only model in a product of experts, its log-probabilities times WEIGHT "
        "(alone: 1; 0: off; unset: as the named data set says)", nargs="?", const=1.0, metavar="WEIGHT",
    )  # fmt: skip
    short_copies: bool | None = remedy("also train on each training post over 32 words cut to its first 8-32 words")
    masked_copies: bool | None = remedy("also train on each training post that says depress* or suicid*, those "
                                        "words removed (both labels)")  # fmt: skip
    other_senses: bool | None = remedy("also train and validate on corpora/other-senses.csv: 'depression' in other "
                                       "senses, and posts of people not depressed, all labelled 0")  # fmt: skip
    text_column: str | None = setting(help=f"text column (None: the first of {', '.join(posts.TEXT_COLUMNS)})")
    label_column: str | None = setting(help=f"label column (None: the first of {', '.join(LABEL_COLUMNS)})")
    val_size: float = setting(VAL_SIZE, "share of the data held out for validation (the write-up's)")
    max_train_samples: int | None = setting(help="train on the first N training posts only (quick runs)")
    max_eval_samples: int | None = setting(help="validate on the first N validation posts only")
    split_seed: int = setting(42, "seed of the train/validation split: keep it to compare runs on the same posts")
    class_weights: Literal["none", "balanced"] = setting("none", "balanced: weight each class's loss as scikit-learn")


@dataclass
class ModelSettings:
    _argument_group_name = "model: the base model and what is trained of it"
    mode: Literal["adapter", "full"] = setting("adapter", "adapter: a bottleneck adapter + head, base frozen; full")
    adapter_config: str = setting(
        "pfeiffer", f"pfeiffer (seq_bn), houlsby (double_seq_bn) or: "
        f"{', '.join(n for n in M.ADAPTER_CONFIGS if n not in ('pfeiffer', 'houlsby'))}",
    )  # fmt: skip
    reduction_factor: int | None = setting(help="hidden size / bottleneck size (None: the library's, 16)")
    leave_out: list[int] | None = setting(help="layers without an adapter, e.g. 0 1 2", metavar="LAYER")
    model: str = setting(M.DEFAULT_MODEL, "base model: a Hub id or a folder (bert-base-uncased: the write-up's)")
    attention_dropout: float = setting(training.ATTENTION_DROPOUT, "dropout on the attention probabilities")


@dataclass
class LoopSettings:
    _argument_group_name = "training: the loop and its settings"
    epochs: int = setting(training.EPOCHS, "passes over the training data")
    lr: float | None = setting(help=f"peak learning rate (None: {training.LR['adapter']:g} adapter, "
                               f"{training.LR['full']:g} full)")  # fmt: skip
    warmup_ratio: float = setting(training.WARMUP_RATIO, "share of the steps for linear warm-up")
    weight_decay: float = setting(training.WEIGHT_DECAY, "AdamW weight decay (not on biases and LayerNorm weights)")
    batch_size: int = setting(training.BATCH_SIZE, "posts per batch, on each process")
    max_length: int = setting(training.MAX_LENGTH, "tokens per post; longer posts are truncated")
    group_by_length: bool = setting(True, "batches of posts of similar length (--no-group-by-length: shuffled)")
    cache_frozen: bool = setting(True, "compute frozen lower layers once (--no-cache-frozen: every epoch)")
    mixed_precision: Literal["auto", "no", "fp16", "bf16"] = setting("auto", "auto: bf16 or fp16 where native")
    tf32: bool = setting(True, "TF32 matmuls on CUDA GPUs of compute capability 8.0+ (--no-tf32: full fp32)")
    seed: int = setting(42, "seed of the new weights, dropout and the batch order")
    patience: int | None = setting(help="stop after N epochs without a better --metric (None: run every epoch)")
    metric: Literal["accuracy", "macro_f1"] = setting("accuracy", "what chooses the best epoch")
    calibrate: bool = setting(False, "fit a temperature on the validation posts: probabilities that mean what they "
                              "say (predict.py, assess.py, serve.py and the ONNX export apply it)")  # fmt: skip


@dataclass
class OutputArguments:
    """Where the result goes and how to treat what is there: not settings (a resumed run may change them)."""

    _argument_group_name = "output: where the result goes, an interrupted run"
    name: str | None = setting(help="folder name (None: depression-<adapter config> or depression-full)")
    output_dir: str | None = setting(help="where the folder goes (None: adapters/, or models/ for full)")
    overwrite: bool = setting(False, "replace a trained model there, or an interrupted run's checkpoint")
    resume: bool = setting(False, "continue an interrupted run (same settings) after its last finished epoch")
    push_to_hub: str | None = setting(help="after saving, upload the folder to this Hugging Face Hub model "
                                      "repository, e.g. your-name/depression-pfeiffer (a token: hf auth login)",
                                      metavar="REPO_ID")  # fmt: skip
    private: bool = setting(False, "--push-to-hub: create the repository private")


SETTINGS = (DataSettings, ModelSettings, LoopSettings)


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    pass


def build_parser():
    p = cli.command_parser(
        "train.py",
        __doc__,
        make=HfArgumentParser,
        dataclass_types=[*SETTINGS, OutputArguments],
        description=__doc__.split("\n\n")[1],
        formatter_class=HelpFormatter,
        epilog="Offline: set DEPRESSION_DATA=../shared/data/depression-reddit-cleaned.csv (or pass --data); "
        "the default model needs no network. docs/usage.md explains every flag.",
    )
    for action in p._actions:  # HfArgumentParser's --no-X of a setting that is on by default: it states no default
        if action.option_strings[0].startswith("--no_"):
            action.default, action.help = argparse.SUPPRESS, f"off: {action.help}"
    return p


def parse_args(argv=None):
    """The command line as a namespace of every field above, checked, with the named data set's label map and
    normalisation, the mode's learning rate and the folder name filled in where not given."""
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
    if named is not None:  # the named data set's label map, normalisation and remedies, unless given
        args.label_map = named["label_map"] if args.label_map is None else args.label_map
        args.normalize_text = args.normalize_text or named["normalize_text"]
        for key, value in named["remedies"].items():
            setattr(args, key, value if getattr(args, key) is None else getattr(args, key))
    args.short_copies, args.masked_copies, args.other_senses = (
        bool(getattr(args, key)) for key in ("short_copies", "masked_copies", "other_senses")
    )
    args.length_expert = args.length_expert or None  # 0: off
    try:
        data.parse_label_map(args.label_map)
    except DataError as e:
        fail(str(e))
    args.lr = args.lr or training.LR[args.mode]
    kind = args.adapter_config if args.mode == "adapter" else "full"
    args.name = args.name or (f"depression-original-{kind}" if args.data == "original" else f"depression-{kind}")
    try:
        sharing.check_push(args.push_to_hub, args.private)  # before training: no run wasted on a push that cannot be
    except ModelError as e:
        fail(str(e))
    return args


def output_folder(args):
    return Path(args.output_dir or OUTPUT_DIR[args.mode]) / args.name


def resume_keys():
    """Every setting: the fields of SETTINGS (OutputArguments' are not settings)."""
    return [f.name for settings in SETTINGS for f in fields(settings)]


def resume_config(args, num_processes):
    return {**{key: getattr(args, key) for key in resume_keys()}, "num_processes": num_processes}


def claim_output(args, num_processes):
    """Under the lock: check the result folder and any interrupted run in <name>.incomplete/; returns whether
    to resume. Without --resume an interrupted run's checkpoint is kept unless --overwrite says to discard it."""
    output = output_folder(args)
    saved.recover_swap(output)
    saved.check_output_folder(output, args.overwrite)
    staging = saved.staging_folder(output)
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
    lock = training.on_main_process(accelerator, saved.lock_folder, output_folder(args))
    try:
        return train_and_save(args, accelerator)
    finally:
        if lock is not None:
            saved.release_lock(lock)


def make_accelerator(args, cpu=False):
    """The Accelerator for --mixed-precision (on the CPU where cpu is set, or where several processes run without
    CUDA), with TF32 allowed for fp32 matrix products where --tf32 applies (tf32_used)."""
    cpu = cpu or training.use_cpu_processes()
    accelerator = Accelerator(mixed_precision=training.mixed_precision(args.mixed_precision, cpu), cpu=cpu)
    hardware.set_tf32(tf32_used(args, accelerator))
    return accelerator


def tf32_used(args, accelerator):
    return args.tf32 and hardware.tf32_applies(accelerator.device.type)


def train_and_save(args, accelerator):
    """Set up (data, model, optimizer, a checkpoint to resume), fit (the epochs, over the cached lower layers where
    they are), put the best epoch's weights back (every process), calibrate where asked, save (on the main process);
    returns the model (the best epoch's) and the per-epoch metrics."""
    run = set_up(args, accelerator)
    with run.layers_skipped:  # the whole model again after it, for saving and for callers that predict from token ids
        best, best_state, history = training.fit(run, accelerator, args.epochs, args.metric, args.patience)
        best_file = f"{run.staging}/checkpoint/best.safetensors"
        training.load_trainable(accelerator.unwrap_model(run.model), best_state, best_file)  # the epoch to save
        calibration = training.calibrate(run, accelerator) if args.calibrate else None
    if calibration:
        accelerator.print(
            f"calibrated on {calibration['val_posts']} validation posts: temperature {calibration['temperature']:.3f}, "
            f"expected calibration error {calibration['ece_before']:.4f} -> {calibration['ece_after']:.4f}"
        )
    if accelerator.is_main_process:
        save(args, accelerator, run, best, history, calibration)
    accelerator.wait_for_everyone()
    # a plain model, without accelerate's autocast wrapper: it predicts in the caller's precision, as the saved one
    return accelerator.unwrap_model(run.model, keep_fp32_wrapper=False), history


def set_up(args, accelerator):
    """Everything the epochs need, as a whole training.Run: the claimed output folder, the data and its loaders (over
    cached lower layers where they are frozen), the model, optimizer and schedule, prepared by accelerate."""
    log, processes = accelerator.print, accelerator.num_processes
    resume = training.on_main_process(accelerator, claim_output, args, processes)
    resume = broadcast_object_list([resume])[0] if processes > 1 else resume
    set_seed(args.seed)

    tokenizer = M.load_tokenizer(args.model)
    train_ds, val_ds, label_names, data_info, val_sources, length_expert = load_data(args, tokenizer, log)
    weights = training.class_weights(args.class_weights, train_ds["label"], len(label_names))
    if weights is not None:
        log("class weights: " + ", ".join(f"{n} {w:.3f}" for n, w in zip(label_names, weights)))

    attention = training.attention_for(accelerator)
    model = M.build_model(
        args.model,
        args.mode,
        label_names,
        adapter_config_name=args.adapter_config,
        reduction_factor=args.reduction_factor,
        leave_out=args.leave_out,
        seed=args.seed,
        attention_dropout=args.attention_dropout,
        attention=attention,
    )
    params = M.count_parameters(model)
    log(
        f"model: {args.model}, mode {args.mode}"
        + (f", adapter {args.adapter_config}" if args.mode == "adapter" else "")
    )
    log(M.format_parameters(params))
    shard = {"num_shards": processes, "shard": accelerator.process_index}
    cache = training.cache_frozen_layers(
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
    optimizer = training.build_optimizer(model, args.lr, args.weight_decay)
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
    return training.Run(
        processes=processes, resume=resume, staging=saved.staging_folder(output_folder(args)),
        config=resume_config(args, processes), label_names=label_names, data_info=data_info, tokenizer=tokenizer,
        train_size=len(train_ds), val_size=len(val_ds), val_sources=val_sources, train_dl=train_dl, val_dl=val_dl,
        model=model, optimizer=optimizer, scheduler=scheduler, weights=weights, params=params,
        cached=cache.layers, layers_skipped=layers_skipped, cache_seconds=cache.seconds,
        length_expert=length_expert, attention=attention, tf32=tf32,
    )  # fmt: skip


def load_data(args, tokenizer, log):
    """--data (and --other-senses) read, cleaned, split, cut to --max-train-samples / --max-eval-samples, the
    training posts' short and masked copies added where asked, tokenised, the length-only model's prior added where
    --length-expert asks: (train, validation, label names, data info, each validation post's source or None, the
    length expert's figures or None)."""
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


def save(args, accelerator, run, best, history, calibration=None):
    """On the main process: the model (the best epoch's weights), metrics.jsonl and training.json into a staging
    folder, swapped in whole for the output folder."""
    final, output = accelerator.unwrap_model(run.model), output_folder(args)
    result = run.staging / "result"
    shutil.rmtree(result, ignore_errors=True)
    saved.save_trained(final, run.tokenizer, result, args.mode)
    training.write_metrics(result / "metrics.jsonl", history)
    saved.write_training_info(result, training_info(args, accelerator, run, best, history, calibration))
    # README.md: the Hub's metadata, what a person reads first; it names the Hub id where the folder is pushed
    model_card.write_card(result, name=output.name, repo_id=args.push_to_hub)
    saved.swap_in(result, output)
    shutil.rmtree(run.staging)
    size = sum(f.stat().st_size for f in output.iterdir()) / 1e6
    accelerator.print(f"best epoch {best['epoch']} (by {args.metric}): {training.format_scores(best, run.label_names)}")
    accelerator.print(
        f'saved to {output}/ ({size:.1f} MB); predict with: python predict.py --adapter {output} "some text"'
    )


def training_info(args, accelerator, run, best, history, calibration=None):
    """What training.json records: every setting (the run's resume_config), then what the run made of them and
    measured, under the same key where it resolved a setting (data: the files read, class_weights: the weights,
    length_expert: its model, mixed_precision and tf32: what was used): saved.TRAINING_INFO_SCHEMA's keys (what
    loading needs), the data's fingerprints and sizes, the parameter counts, the best epoch and the library
    versions."""
    return {
        **run.config,  # every setting (resume_config)
        "base_model": args.model, "adapter_name": M.ADAPTER_NAME,
        "adapter_config": args.adapter_config if args.mode == "adapter" else None, "label_names": run.label_names,
        "class_weights": run.weights,
        "data_set": args.data if isinstance(args.data, str) and args.data in data.DATA_SETS else None,
        "length_expert": run.length_expert, "epochs_run": len(history), "num_processes": run.processes,
        "global_batch_size": args.batch_size * run.processes, "mixed_precision": accelerator.mixed_precision,
        "attention": run.attention or "sdpa", "tf32": run.tf32,
        "device": str(accelerator.device), **run.data_info, "train_size": run.train_size, "val_size": run.val_size,
        "parameters": run.params, "best_epoch": best["epoch"], "best": best, "calibration": calibration,
        "versions": training.library_versions(),
    }  # fmt: skip


def main(argv=None):
    args = parse_args(argv)
    hf_logging.set_verbosity_error()  # the expected "newly initialized head" notices would drown the summary
    datasets.disable_progress_bars()  # in-memory steps of about a second: their bars would only be noise
    try:
        run(args)
        if args.push_to_hub and int(os.environ.get("RANK", "0")) == 0:  # the main process: it saved the folder
            url = sharing.push_folder(output_folder(args), args.push_to_hub, args.private)
            print(sharing.pushed_line(output_folder(args), args.push_to_hub, url))
    except (DataError, ModelError) as e:
        fail(str(e))


if __name__ == "__main__":
    main()
