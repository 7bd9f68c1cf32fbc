"""
The folder train.py writes: its format (what it holds, training.json's schema), how it is loaded back with every
file checked, and how it is written safely (one writer at a time, a staging folder, a whole swap at the end).

- save_trained: the adapter with its head, or the whole model; write_training_info: training.json, checked against
  TRAINING_INFO_SCHEMA first.
- load_trained: (model, tokenizer, info), safetensors only, every trained weight checked to come from the folder;
  load_on_one_base: several adapter folders on one base model.
- An AdapterFusion folder (train.py --fusion) is the adapters library's save_adapter_setup layout, which plain
  `model.load_adapter_setup(folder)` loads too: adapter_setup.json, a subfolder per fused adapter, and one named after
  the Fusion (its weights and the head); save_fusion writes it, load_fusion loads it under any name.
- lock_folder, swap_in, release_lock: one writer per folder, and a new folder swapped in whole.
"""

import contextlib
import json
import logging
import os
import shutil
from pathlib import Path

import torch
from filelock import FileLock, Timeout
from safetensors import safe_open
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

from errors import ModelError, check_record, first_line
from model import (
    ADAPTER_NAME,
    contiguous_fusion_inputs,
    load_base_model,
    load_tokenizer,
    no_inactive_adapter_notice,
    resolve_model_path,
)

TRAINING_INFO = "training.json"
TRAIN_AGAIN = "train again with python train.py"  # what to do about a damaged folder of train.py (how_to_mend)
# The keys of training.json that loading a folder needs, with their types. train.py writes many more (the settings,
# the data's fingerprints, the best epoch's metrics, library versions); those are recorded, not required.
TRAINING_INFO_SCHEMA = {"mode": str, "base_model": str, "max_length": int, "label_names": list}


def write_training_info(folder, info):
    """training.json into `folder`, after checking that it holds what loading the folder will need."""
    check_training_info(info, Path(folder) / TRAINING_INFO)
    (Path(folder) / TRAINING_INFO).write_text(json.dumps(info, indent=2) + "\n")


def check_training_info(info, path):
    """The required keys of TRAINING_INFO_SCHEMA with their types, a known mode and at least two label names."""
    check_record(info, TRAINING_INFO_SCHEMA, path, TRAIN_AGAIN)
    labels = info["label_names"]
    if info["mode"] not in ("adapter", "full") or len(labels) < 2 or not all(isinstance(n, str) for n in labels):
        raise ModelError(
            f"{path} is damaged (it needs mode adapter or full and at least two label_names); {TRAIN_AGAIN}"
        )


def save_trained(model, tokenizer, folder, mode):
    """Adapter mode: the adapter with its head, in safetensors (a few MB). Full mode: the whole model + tokenizer."""
    if mode == "adapter":
        with one_name_per_tensor(model):
            model.save_adapter(str(folder), ADAPTER_NAME, with_head=True, use_safetensors=True)
    else:
        model.save_pretrained(folder, safe_serialization=True)
        tokenizer.save_pretrained(folder)


@contextlib.contextmanager
def one_name_per_tensor(model):
    """While saving: the model's state dict names each tensor once. Prefix tuning's pool is one module that every
    layer references, and safetensors refuses a tensor stored under several names; the first name (the one
    named_parameters() gives) is saved, and loading it fills the shared module, so every layer sees it."""
    whole = model.state_dict

    def first_names(*args, **kwargs):
        seen, state = set(), {}
        for key, tensor in whole(*args, **kwargs).items():
            where = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape))
            if where not in seen or tensor.numel() == 0:
                seen.add(where)
                state[key] = tensor
        return state

    model.state_dict = first_names
    try:
        yield
    finally:
        del model.state_dict  # the class's own again


def read_training_info(folder, model_name=None):
    """training.json of a folder written by train.py, checked for everything loading it needs: its fields, the
    JSON files beside it, and safetensors weights that are whole. A folder saved by plain adapters (no
    training.json): the same, from its own configs (plain_adapter_info; `model_name`: the base model, else the one
    its adapter config names). Anything damaged -> ModelError saying what."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ModelError(f"no trained adapter at {folder}; train one with: python train.py --mode adapter")
    info_file = folder / TRAINING_INFO
    if not info_file.is_file() and not (folder / "adapter_config.json").is_file():
        raise ModelError(
            f"{folder} is not a folder written by train.py (no {TRAINING_INFO}) nor an adapter saved by the adapters "
            f"library (no adapter_config.json); pass --adapter with the folder train.py printed"
        )
    refuse_pickled(folder, plain=not info_file.is_file())
    if info_file.is_file():
        info = read_json(info_file)
        check_training_info(info, info_file)
    else:
        info = plain_adapter_info(folder, model_name)
    required = folder_files(info)
    missing = [name for name in required if not (folder / name).is_file()]
    if info["mode"] == "full" and not any((folder / name).is_file() for name in ("tokenizer.json", "vocab.txt")):
        missing.append("tokenizer.json or vocab.txt")
    if missing:
        raise ModelError(f"{folder} is incomplete (missing {', '.join(missing)}); {how_to_mend(info)}")
    for name in required:
        if name.endswith(".json"):
            read_json(folder / name, how_to_mend(info))
        else:
            safetensors_keys(folder / name, how_to_mend(info))
    return info


def how_to_mend(info):
    """What to do about a damaged folder: train it again, or (plain adapters) save it again."""
    if info.get("saved_by") == "adapters":
        return SAVE_AGAIN
    return TRAIN_AGAIN


RESAVE = "model.save_adapter(folder, name, with_head=True, use_safetensors=True)"
SAVE_AGAIN = f"save it again with {RESAVE}"  # what to do about a damaged folder saved by plain adapters


def refuse_pickled(folder, plain=False):
    """ModelError for a folder whose weights are pickle files only (*.bin: what save_adapter and save_pretrained
    write without safetensors): loading them can run code, so they never are."""
    if any(folder.glob("*.bin")) and not any(folder.glob("*.safetensors")):
        names = ", ".join(sorted(p.name for p in folder.glob("*.bin")))
        how = f"save it again as safetensors: {RESAVE}" if plain else "train again, or convert them to safetensors"
        raise ModelError(
            f"{folder} holds only pickle weights ({names}), which are never loaded here because loading them can "
            f"run code; {how}"
        )


def plain_adapter_info(folder, model_name=None):
    """What loading needs, for a folder the adapters library saved (save_adapter(..., with_head=True)) with no
    training.json: the labels from its classification head's label2id, the base model from `model_name` or its
    adapter config, the longest input the base model takes (at most 512 tokens), texts as they are."""
    adapter = read_json(folder / "adapter_config.json", SAVE_AGAIN)
    head_file = folder / "head_config.json"
    if not head_file.is_file():
        raise ModelError(f"{folder} holds an adapter without its head (no head_config.json); save it with {RESAVE}")
    head = read_json(head_file, SAVE_AGAIN)
    config = head.get("config") if isinstance(head, dict) else None
    if not isinstance(config, dict) or config.get("head_type") != "classification":
        kind = config.get("head_type") if isinstance(config, dict) else f"a fixed head of {head.get('model_class')}"
        raise ModelError(
            f"{folder} holds a head that is not a classification head of an AdapterModel ({kind}); save one added "
            f"with add_classification_head to an AutoAdapterModel"
        )
    label2id = config.get("label2id") or {f"LABEL_{i}": i for i in range(int(config.get("num_labels") or 0))}
    labels = [name for name, _ in sorted(label2id.items(), key=lambda item: item[1])]
    if sorted(label2id.values()) != list(range(len(labels))) or len(labels) < 2:
        raise ModelError(f"{head_file} names no classes 0..n-1 in label2id (at least two); {RESAVE}")
    base = model_name or adapter.get("model_name")
    if not isinstance(base, str) or not base:
        raise ModelError(f"{folder}/adapter_config.json names no base model; pass --model with the base model")
    return {
        "mode": "adapter", "base_model": base, "max_length": longest_input(base), "label_names": labels,
        "adapter_name": adapter.get("name"), "adapter_config": None, "normalize_text": False, "saved_by": "adapters",
    }  # fmt: skip


def longest_input(base):
    """The most tokens the base model takes, at most 512 (the BERT family's): a plain adapter's max length."""
    try:
        config = AutoConfig.from_pretrained(resolve_model_path(base))
    except Exception as e:  # a missing folder, an unknown Hub id, offline
        raise ModelError(
            f"cannot load the base model '{base}' ({type(e).__name__}: {first_line(e)}); pass --model"
        ) from None
    return min(512, getattr(config, "max_position_embeddings", None) or 512)


# What a folder written by train.py holds, by mode; weights in safetensors only (pickle files are never loaded).
FOLDER_FILES = {
    "adapter": ["adapter_config.json", "head_config.json", "adapter.safetensors", "model_head.safetensors"],
    "full": ["config.json", "tokenizer_config.json", "model.safetensors"],
}


def folder_files(info):
    """The files a folder of this training.json must hold: FOLDER_FILES by mode, or an AdapterFusion's
    (FUSION_FILES: the setup, each fused adapter's subfolder, the Fusion's with its head)."""
    if not is_fusion(info):
        return FOLDER_FILES[info["mode"]]
    fused = info["fusion"]
    return [
        "adapter_setup.json",
        *[f"{name}/{file}" for name in fused["adapters"] for file in FOLDER_FILES["adapter"][::2]],
        *[f"{fused['name']}/{file}" for file in FUSION_FILES],
    ]


FUSION_FILES = ["adapter_fusion_config.json", "head_config.json", "model_adapter_fusion.safetensors",
                "model_head.safetensors"]  # fmt: skip


def is_fusion(info):
    """A folder written by train.py --fusion (training.json's "fusion": the fused adapters' names, the Fusion's)."""
    return info.get("adapter_config") == "fusion"


def read_json(path, again=TRAIN_AGAIN):
    try:
        return json.loads(Path(path).read_text())
    except (ValueError, UnicodeDecodeError):
        raise ModelError(f"{path} is damaged (not valid JSON); {again}") from None


def safetensors_keys(path, again=TRAIN_AGAIN):
    """The tensor names in a safetensors file; a truncated or garbled file -> ModelError."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return set(f.keys())
    except Exception as e:  # SafetensorError, OSError: the file is not a whole safetensors file
        raise ModelError(f"{path} is damaged ({str(e).splitlines()[0]}); {again}") from None


def load_trained(folder, model_name=None):
    """A model saved by train.py -> (model in eval mode, tokenizer, training info).

    Adapter folders are loaded into a fresh base model (training.json names it); `model_name`, when given,
    must be that base model. Safetensors only, no remote code; every trained weight is checked to come from
    the folder's files.
    """
    info = read_training_info(folder, model_name)
    folder = Path(folder)
    if info["mode"] == "full":
        try:
            model, loading = AutoModelForSequenceClassification.from_pretrained(
                folder, use_safetensors=True, output_loading_info=True
            )
            tokenizer = AutoTokenizer.from_pretrained(folder, use_fast=True)
        except Exception as e:  # transformers raises OSError, ValueError, KeyError... for damaged folders
            raise ModelError(
                f"cannot load the model in {folder} ({type(e).__name__}: {first_line(e)}); {TRAIN_AGAIN}"
            ) from None
        if loading["missing_keys"] or loading["mismatched_keys"]:
            raise ModelError(
                f"{folder}/model.safetensors lacks weights the model needs "
                f"({', '.join(map(str, (loading['missing_keys'] + loading['mismatched_keys'])[:3]))}); "
                f"{TRAIN_AGAIN}"
            )
        return model.eval(), tokenizer, info
    base = info["base_model"]
    if model_name and not same_base_model(model_name, base):
        raise ModelError(
            f"the adapter in {folder} was trained on {base}, not {model_name}; drop --model or pass --model {base}"
        )
    model = load_base_model(base)
    if is_fusion(info):
        load_fusion(model, folder, info)
    else:
        load_adapter(model, folder, again=how_to_mend(info))
    return model.eval(), load_tokenizer(base), info


def load_on_one_base(folders, names, model_name=None):
    """Several adapter folders into one base model, each adapter and its head under its name in `names` -> (model in
    eval mode, tokenizer, training infos).
    Every folder is checked before the base model loads; refused (ModelError): a full model, a LoRA-kind adapter
    (MERGEABLE_CONFIGS: predicted merged into the base weights, which the others share), a base model other than
    the first folder's (or than `model_name`)."""
    folders = [Path(f) for f in folders]
    infos = [read_training_info(folder, model_name) for folder in folders]
    for folder, info in zip(folders, infos):
        if info["mode"] != "adapter":
            raise ModelError(
                f"{folder} holds a fully fine-tuned model, which cannot share a base model with adapters; "
                f"classify with it alone (--adapter {folder})"
            )
        if info.get("adapter_config") in MERGEABLE_CONFIGS:
            raise ModelError(
                f"{folder} holds a {info['adapter_config']} adapter, which is merged into the base weights for "
                f"prediction, so other adapters cannot share that base; classify with it alone (--adapter {folder})"
            )
    base = model_name or infos[0]["base_model"]
    for folder, info in zip(folders, infos):
        if not same_base_model(info["base_model"], base):
            raise ModelError(
                f"the adapter in {folder} was trained on {info['base_model']}, not {base}: adapters share a base "
                f"model only when they were trained on the same one"
            )
    model = load_base_model(base)
    for folder, name, info in zip(folders, names, infos):
        if is_fusion(info):
            load_fusion(model, folder, info, load_as=name)
        else:
            load_adapter(model, folder, load_as=name, again=how_to_mend(info))
    return model.eval(), load_tokenizer(base), infos


# Configs whose trained weights are low-rank updates or scalings of existing weight matrices: merge_adapter() folds
# them into those matrices, and the model then computes as fast as the bare base model (tests/test_methods.py:
# same probabilities within 1e-4). mtl_lora and unipelt (gated) cannot be merged by the library.
MERGEABLE_CONFIGS = ("lora", "ia3", "vera", "dora", "dvora")


def merge_adapter(model, info):
    """Fold an adapter of a MERGEABLE_CONFIGS kind into the base weights (for inference only: the merged model
    can no longer take another adapter); returns whether it did."""
    if info["mode"] != "adapter" or info.get("adapter_config") not in MERGEABLE_CONFIGS:
        return False
    model.merge_adapter(info.get("adapter_name", ADAPTER_NAME))
    return True


def load_adapter(model, folder, load_as=None, again=TRAIN_AGAIN, with_head=True):
    """Add a saved adapter with its head (with_head) to `model` and make it the active one; returns its name.
    Every weight of that adapter and head must come from the folder's safetensors files, with the values stored
    there: a file with other names would otherwise leave freshly initialised weights in place, silently. again: what
    a refusal tells to do about it."""
    folder = Path(folder)
    if not folder.is_dir():  # the library would look a missing path up on the Hub
        raise ModelError(f"no adapter folder at {folder}")
    files = FOLDER_FILES["adapter"] if with_head else FOLDER_FILES["adapter"][::2]
    for name in files:
        if not (folder / name).is_file():
            raise ModelError(f"{folder} is incomplete (missing {name}); {again}")
        if name.endswith(".json"):
            read_json(folder / name, again)
    try:
        with no_inactive_adapter_notice():
            name = model.load_adapter(
                str(folder), load_as=load_as, set_active=True, use_safetensors=True, with_head=with_head
            )
    except Exception as e:
        raise ModelError(
            f"cannot load the adapter in {folder} ({type(e).__name__}: {first_line(e)}); {again}"
        ) from None
    check_loaded_weights(model, name, folder, again, [f for f in files if f.endswith(".safetensors")])
    return name


def save_fusion(model, folder):
    """The model's active AdapterFusion into `folder` as the library's adapter setup (save_adapter_setup): its
    adapters, the Fusion and its head (named as the Fusion), in safetensors."""
    fuse = model.active_adapters
    model.save_adapter_setup(str(folder), fuse, head_setup=fuse.name, use_safetensors=True)


def fused_names(info, load_as=None):
    """(the fused adapters' names, the Fusion's name) of a fusion folder loaded as `load_as`: their saved names, or
    each prefixed with load_as (so that several folders' adapters of the same name live in one model)."""
    names = [name if load_as is None else f"{load_as}--{name}" for name in info["fusion"]["adapters"]]
    return names, ",".join(names)


def load_fusion(model, folder, info, load_as=None):
    """An AdapterFusion folder (save_fusion) into `model`, active, its adapters named by fused_names; every weight
    checked to come from the folder's files (load_adapter, check_loaded_weights). The library's own
    load_adapter_setup cannot load it under another name."""
    from adapters import Fuse

    folder, again = Path(folder), how_to_mend(info)
    names, fusion = fused_names(info, load_as)
    for saved_name, name in zip(info["fusion"]["adapters"], names):
        load_adapter(model, folder / saved_name, load_as=name, again=again, with_head=False)
    where = folder / info["fusion"]["name"]
    config = read_json(where / "adapter_fusion_config.json", again)
    try:
        with no_inactive_adapter_notice():
            model.add_adapter_fusion(Fuse(*names), config=config["config"])
            library_logger = logging.getLogger("adapters.loading")
            library_logger.disabled, was = True, library_logger.disabled  # "Overwriting existing adapter fusion"
            try:
                model.load_adapter_fusion(str(where), load_as=fusion, with_head=False, use_safetensors=True)
            finally:
                library_logger.disabled = was
            model.load_head(str(where), load_as=fusion, use_safetensors=True)
    except Exception as e:
        raise ModelError(
            f"cannot load the AdapterFusion in {where} ({type(e).__name__}: {first_line(e)}); {again}"
        ) from None
    check_loaded_weights(model, fusion, where, again, FUSION_FILES[2:])
    contiguous_fusion_inputs(model)
    activate_fusion(model, info, load_as)
    return fusion


def activate_fusion(model, info, load_as=None):
    """Make a loaded AdapterFusion (load_fusion) and its head the active ones."""
    from adapters import Fuse

    names, fusion = fused_names(info, load_as)
    model.set_active_adapters(Fuse(*names))
    model.active_head = fusion


def check_loaded_weights(
    model, name, folder, again=TRAIN_AGAIN, files=("adapter.safetensors", "model_head.safetensors")
):
    """The parameters of adapter (or Fusion) `name` and of its head in `model` are exactly the tensors stored in
    `folder`'s files."""
    stored = {}
    for file in files:
        stored.update(load_file(str(folder / file)))
    config = folder / ("adapter_config.json" if "adapter.safetensors" in files else "adapter_fusion_config.json")
    saved_name = read_json(config, again).get("name", name)
    stored = {key.replace(f".{saved_name}.", f".{name}."): value for key, value in stored.items()}
    params = {n: p for n, p in model.named_parameters() if f".{name}." in f".{n}"}
    buffers = {n: b for n, b in model.named_buffers() if f".{name}." in f".{n}"}  # e.g. loreft's orthogonal base
    fresh = sorted(set(params) - set(stored))
    unused = sorted(set(stored) - set(params) - set(buffers))
    if fresh or unused:
        raise ModelError(
            f"the weights in {folder} do not match its adapter config ({len(fresh)} of the adapter's "
            f"weights missing from the files, {len(unused)} stored weights with no place in the model, "
            f"e.g. {(fresh or unused)[0]}); {again}"
        )
    changed = [
        n
        for n, p in {**params, **buffers}.items()
        if n in stored and not torch.equal(p.detach().cpu(), stored[n].to(p.dtype))
    ]
    if changed:
        raise ModelError(f"weight {changed[0]} was not loaded from {folder}; {again}")


def same_base_model(a, b):
    """Two model names that name the same weights (equal, or resolving to the same folder)."""
    return a == b or resolve_model_path(a) == resolve_model_path(b)


# --- Writing safely: one writer per folder, a staging folder, a whole swap


def staging_folder(output):
    return output.with_name(output.name + ".incomplete")


def check_output_folder(folder, overwrite):
    """Refuse to replace a trained model unless asked to; the old one stays until the new one is saved."""
    if folder.exists() and not folder.is_dir():
        raise ModelError(f"{folder} exists and is not a folder; pick another --name or --output-dir")
    if folder.is_dir() and any(folder.iterdir()) and not overwrite:
        raise ModelError(
            f"{folder} already holds a trained model; pass --overwrite to replace it or --name to keep both"
        )


def lock_folder(folder):
    """An exclusive lock on <folder>.lock (filelock: flock on Unix), held by this process until release_lock(), with
    its pid written in the file; the kernel drops it when the process dies, so a lock left by a killed run is simply
    taken over. The file stays after the run, unlocked (removing it could let two runs lock two different files)."""
    path = folder.with_name(folder.name + ".lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(path, timeout=0, on_acquired=write_pid)
    try:
        lock.acquire()
    except Timeout:
        pid = path.read_text().strip() or "?"
        raise ModelError(
            f"another training run (pid {pid}) is writing {folder}; wait for it to end, or pick another --name"
        ) from None
    return lock


def write_pid(fd):
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)


def release_lock(lock):
    lock.release()


def swap_in(new, target):
    """Replace folder `target` by folder `new` so that a kill at any moment leaves one of them whole:
    the old one is renamed aside, the new one renamed in, and only then is the old one deleted."""
    recover_swap(target)
    old = target.with_name(target.name + ".old")
    if target.exists():
        os.rename(target, old)
    os.rename(new, target)
    shutil.rmtree(old, ignore_errors=True)


def recover_swap(target):
    """After a swap_in() that was killed: put the old folder back if the new one never arrived, else drop it."""
    old = target.with_name(target.name + ".old")
    if old.exists():
        if target.exists():
            shutil.rmtree(old)
        else:
            os.rename(old, target)
