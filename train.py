"""
Train the depression classifier (or another task's: --data) by full fine-tuning or with a bottleneck adapter, and
save the best epoch.

    python train.py --mode adapter                          # Pfeiffer adapter -> adapters/depression-pfeiffer/
    python train.py --mode adapter --adapter-config houlsby # -> adapters/depression-houlsby/
    python train.py --mode full                             # every weight -> models/depression-full/
    python train.py --mode adapter --data reviews           # another task -> adapters/reviews-pfeiffer/
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
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import datasets
from accelerate.utils import broadcast_object_list
from transformers import HfArgumentParser
from transformers.utils import logging as hf_logging

import data
import model as M
from errors import DataError, ModelError, fail
from textclassifier import cli, fusion, model_card, saved, settings, sharing, training

OUTPUT_DIR = {"adapter": "adapters", "full": "models"}


@dataclass
class OutputArguments:
    """Where the result goes and how to treat what is there: not settings (a resumed run may change them)."""

    _argument_group_name = "output: where the result goes, an interrupted run"
    name: str | None = settings.setting(help="folder name (None: <task>-<adapter config> or <task>-full, the task "
                                        "depression unless --data names another)")  # fmt: skip
    output_dir: str | None = settings.setting(help="where the folder goes (None: adapters/, or models/ for full)")
    overwrite: bool = settings.setting(False, "replace a trained model there, or an interrupted run's checkpoint")
    resume: bool = settings.setting(False, "continue an interrupted run (same settings) after its last finished epoch")
    push_to_hub: str | None = settings.setting(help="after saving, upload the folder to this Hugging Face Hub model "
                                      "repository, e.g. your-name/depression-pfeiffer (a token: hf auth login)",
                                      metavar="REPO_ID")  # fmt: skip
    private: bool = settings.setting(False, "--push-to-hub: create the repository private")


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    pass


def build_parser():
    p = cli.command_parser(
        "train.py",
        __doc__,
        make=HfArgumentParser,
        dataclass_types=[*settings.SETTINGS, OutputArguments],
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
    """The command line as a namespace of every setting (settings.complete: checked and completed) and of
    OutputArguments, the folder name filled in where not given, a push checked before any work."""
    args = build_parser().parse_args(argv)
    try:
        settings.complete(args)
        named = data.named_set(args.data)
        if args.push_to_hub and named and not named["shareable"]:
            raise DataError(f"--data {args.data} is for research use only (docs/tasks.md): a model trained on it is "
                            f"not shared; drop --push-to-hub")  # fmt: skip
        fused = fusion.check_sources(args.fusion, args.model) if args.push_to_hub and args.fusion else []
        for word, (_, _, info, _) in zip(args.fusion or [], fused):
            if not (data.named_set(info.get("data_set")) or {"shareable": True})["shareable"]:
                raise DataError(f"--fusion {word} was trained on {info['data_set']}, for research use only "
                                f"(docs/tasks.md): a Fusion holding it is not shared; drop --push-to-hub")  # fmt: skip
        sharing.check_push(args.push_to_hub, args.private)  # before training: no run wasted on a push that cannot be
    except (DataError, ModelError) as e:
        fail(str(e))
    kind = args.adapter_config if args.mode == "adapter" else "full"
    args.name = args.name or f"{data.folder_name(args.data)}-{kind}"
    return args


def output_folder(args):
    return Path(args.output_dir or OUTPUT_DIR[args.mode]) / args.name


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
            config = settings.resume_config(args, num_processes)
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
    if args.mode == "adapter" and not args.fusion:
        M.check_adapter_request(
            args.model, args.adapter_config, args.reduction_factor, args.leave_out
        )  # before any work
    accelerator = training.make_accelerator(args)
    lock = training.on_main_process(accelerator, saved.lock_folder, output_folder(args))
    try:
        return train_and_save(args, accelerator)
    finally:
        if lock is not None:
            saved.release_lock(lock)


def train_and_save(args, accelerator):
    """Claim the output folder (a checkpoint to resume?), set up (data, model, optimizer), fit (the epochs, over the
    cached lower layers where they are), put the best epoch's weights back (every process), calibrate where asked,
    save (on the main process); returns the model (the best epoch's) and the per-epoch metrics."""
    processes = accelerator.num_processes
    resume = training.on_main_process(accelerator, claim_output, args, processes)
    resume = broadcast_object_list([resume])[0] if processes > 1 else resume
    staging, config = saved.staging_folder(output_folder(args)), settings.resume_config(args, processes)
    run, record = training.set_up(args, accelerator, staging, resume, config)
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
        save(args, accelerator, run, record, best, history, calibration)
    accelerator.wait_for_everyone()
    # a plain model, without accelerate's autocast wrapper: it predicts in the caller's precision, as the saved one
    return accelerator.unwrap_model(run.model, keep_fp32_wrapper=False), history


def save(args, accelerator, run, record, best, history, calibration=None):
    """On the main process: the model (the best epoch's weights), metrics.jsonl and training.json into a staging
    folder, swapped in whole for the output folder."""
    final, output = accelerator.unwrap_model(run.model), output_folder(args)
    result = run.staging / "result"
    shutil.rmtree(result, ignore_errors=True)
    if args.fusion:
        saved.save_fusion(final, result)
    else:
        saved.save_trained(final, M.load_tokenizer(args.model), result, args.mode)
    training.write_metrics(result / "metrics.jsonl", history)
    saved.write_training_info(result, training_info(args, accelerator, run, record, best, history, calibration))
    # README.md: the Hub's metadata, what a person reads first; it names the Hub id where the folder is pushed
    model_card.write_card(result, name=output.name, repo_id=args.push_to_hub)
    saved.swap_in(result, output)
    shutil.rmtree(run.staging)
    size = sum(f.stat().st_size for f in output.rglob("*") if f.is_file()) / 1e6
    accelerator.print(f"best epoch {best['epoch']} (by {args.metric}): {training.format_scores(best, run.label_names)}")
    accelerator.print(
        f'saved to {output}/ ({size:.1f} MB); predict with: python predict.py --adapter {output} "some text"'
    )


def training_info(args, accelerator, run, record, best, history, calibration=None):
    """What training.json records: every setting (the run's config), then what the run made of them and measured
    (training.set_up's record), under the same key where it resolved a setting (data: the files read, class_weights:
    the weights, length_expert: its model, mixed_precision and tf32: what was used): saved.TRAINING_INFO_SCHEMA's keys
    (what loading needs), the data's fingerprints and sizes, the parameter counts, the best epoch and the library
    versions."""
    processes = accelerator.num_processes
    return {
        **run.config,  # every setting (settings.resume_config)
        "base_model": args.model, "adapter_name": fusion_info(record)["name"] if args.fusion else M.ADAPTER_NAME,
        "adapter_config": args.adapter_config if args.mode == "adapter" else None, "label_names": run.label_names,
        "class_weights": run.weights,
        "data_set": args.data if isinstance(args.data, str) and args.data in data.DATA_SETS else None,
        "length_expert": record["length_expert"], "epochs_run": len(history), "num_processes": processes,
        "global_batch_size": args.batch_size * processes, "mixed_precision": accelerator.mixed_precision,
        "attention": record["attention"], "tf32": record["tf32"],
        "device": str(accelerator.device), **record["data_info"], "train_size": record["train_size"],
        "val_size": record["val_size"], "parameters": record["parameters"], "best_epoch": best["epoch"],
        "best": best, "calibration": calibration, "versions": training.library_versions(),
        **({"fusion": fusion_info(record)} if args.fusion else {}),
    }  # fmt: skip


def fusion_info(record):
    """training.json's "fusion": the fused adapters' names in the folder, the Fusion's name (its subfolder) and what
    each came from (fusion.describe, as set_up loaded them)."""
    names = [source["name"] for source in record["fused"]]
    return {"adapters": names, "name": ",".join(names), "config": fusion.FUSION_CONFIG, "sources": record["fused"]}


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
