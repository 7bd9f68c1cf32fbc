"""
Load folders written by train.py and classify texts. Two backends: PyTorch (the trained weights themselves) and ONNX
Runtime (model.onnx or model.int8.onnx, written into the folder by export.py, checked against torch there). torch
and transformers are imported only on the torch path, so that a one-post prediction on the ONNX path starts in about
a second. Several adapter folders share one loaded base model (torch), each with its own head and settings.

- load(folder, backend=...): a Loaded (model, tokenizer, training.json) on torch, or on an export ("auto": the
  fastest verified one, else torch); classify(loaded, texts): n_texts x n_labels probabilities.
- load_shared(folders): one base model with several adapters (a SharedBase); classify_shared: {task: probabilities}.
- find_adapters(words, backend): a command's --adapter words (folders and Hub ids) as local folders, with where they
  came from and the backend; Adapters(folders, backend): them loaded by task name, whichever way they share a model,
  with what a user should be told (notes); result_rows and shared_rows: the answers as rows.
- write_export_info and read_export_info: onnx.json, checked against EXPORT_INFO_SCHEMA.
"""

import hashlib
import json
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from errors import ModelError, check_record
from posts import normalize_text, sorted_batches
from textclassifier import sharing

BACKENDS = ("torch", "onnx", "onnx-int8")
PRECISIONS = ("auto", "fp32", "bf16")  # of the torch backend (ONNX exports compute as exported: fp32 or int8)
ONNX_FILES = {"onnx": "model.onnx", "onnx-int8": "model.int8.onnx"}  # what export.py writes, by backend
EXPORT_INFO = "onnx.json"  # what the export was made from and how it was verified
# The keys of onnx.json that choosing and loading an export need, with their types; export.py records many more (the
# opset, each check's figures, the CPU they ran on, library versions): those are recorded, not required.
EXPORT_INFO_SCHEMA = {"backends": dict, "trained_fingerprint": str, "pad_token_id": int}
EXPORT_AGAIN = "export again with python export.py --overwrite"
ONNX_TOKENIZER = "onnx-tokenizer.json"  # the base model's tokenizer for the `tokenizers` package
EXPORT_FILES = (*ONNX_FILES.values(), EXPORT_INFO, ONNX_TOKENIZER)


def add_backend_flag(parser, default):
    """--backend: auto, torch, onnx or onnx-int8."""
    parser.add_argument(
        "--backend",
        default=default,
        choices=["auto", *BACKENDS],
        help="what computes the model: torch; onnx or onnx-int8 (ONNX Runtime, without importing torch: written "
        "and checked by python export.py); auto: the fastest verified export in the folder, else torch "
        f"(default: {default})",
    )


@dataclass
class Loaded:
    """One folder written by train.py, loaded: the model (torch, or an OnnxModel), its tokenizer and training.json."""

    model: object
    tokenizer: object
    info: dict
    precision: str = "auto"  # torch: PRECISIONS

    @property
    def label_names(self):
        return self.info["label_names"]


@dataclass
class Task:
    """One adapter with its head in a SharedBase: its name in the model, its folder and its training.json."""

    name: str
    folder: str
    info: dict

    @property
    def label_names(self):
        return self.info["label_names"]


@dataclass
class SharedBase:
    """Several adapters with their heads in one base model (load_shared). passes: the task names classified
    together, one forward pass each (a Parallel pass where it holds more than one task)."""

    model: object
    tokenizer: object
    tasks: dict  # name -> Task, in the order the folders were given
    passes: list
    precision: str = "auto"  # PRECISIONS


def add_precision_flag(parser):
    """--precision of the torch backend: auto, fp32 or bf16."""
    parser.add_argument(
        "--precision",
        default="auto",
        choices=PRECISIONS,
        help="torch backend: auto (default): bf16 on CUDA GPUs of compute capability 8.0 and up (fp16 on older "
        "ones: T4, V100) and on CPUs with native bf16 (AVX512-BF16 or AMX), else fp32; fp32: full precision "
        "everywhere; bf16: bf16 even where it is emulated (slow)",
    )


def autocast_dtype(device_type, precision="auto"):
    """The dtype torch.autocast computes in for `precision` on a device, or None for full precision."""
    import torch

    from textclassifier import hardware

    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(hardware.auto_precision(device_type))


def load(folder, model_name=None, merge=True, backend="torch", threads=None, precision="auto", device=None):
    """A Loaded (model, tokenizer, training info) from a folder written by train.py. backend: "torch"; "onnx" or
    "onnx-int8" (an export.py export, refused when missing, unverified or stale); "auto": the fastest of those that
    the folder holds verified and fresh (int8, fp32), else torch. On torch, LoRA-kind adapters
    (saved.MERGEABLE_CONFIGS) are folded into the base weights unless merge=False. threads: ONNX Runtime's threads
    (default: one per core). precision: the torch backend's (PRECISIONS). device: where the torch model goes
    (default: accelerate's choice, a GPU where there is one)."""
    if backend == "auto":
        backend = fastest_backend(folder)
    if backend in ONNX_FILES:
        return load_onnx(folder, backend, model_name, threads)
    if backend != "torch":
        raise ModelError(f"unknown backend '{backend}'; choose one of: auto, {', '.join(BACKENDS)}")
    from accelerate import PartialState  # torch and transformers: the slow imports, only here

    from textclassifier import saved

    model, tokenizer, info = saved.load_trained(folder, model_name)
    if merge:
        saved.merge_adapter(model, info)
    return Loaded(model.to(device or PartialState().device), tokenizer, info, precision)


def load_shared(folders, model_name=None, precision="auto"):
    """A SharedBase: one base model with the adapter and head of every folder (torch). Refused with one line
    (ModelError): full-model folders, LoRA-kind adapters (predicted merged into the base weights, which other
    adapters share), folders trained on different base models. Adapters of the bottleneck family with the same
    text settings (normalisation, max length) and layers (--leave-out) are classified in one Parallel pass: the
    batch is replicated at the first layer that holds them, so the layers below are computed once for all
    (pass_groups); the others in one pass each over the same base."""
    from accelerate import PartialState

    from textclassifier import saved

    names = task_names(folders)
    model, tokenizer, infos = saved.load_on_one_base(folders, names, model_name)
    tasks = {name: Task(name, str(folder), info) for name, folder, info in zip(names, folders, infos)}
    return SharedBase(model.to(PartialState().device), tokenizer, tasks, pass_groups(tasks.values()), precision)


def task_names(folders):
    """Each folder's name (a Hub repository's name for its folder in the cache) as its task's name (dots, which
    module names cannot hold, as underscores); a name that two folders share is refused."""
    names = [sharing.folder_name(f).replace(".", "_") for f in folders]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ModelError(
            f"two adapter folders are both named {twice[0]}; each task is called by its folder's name, so give "
            f"them different names"
        )
    return names


@dataclass
class Found:
    """A command's --adapter words, found: local folders (a Hub id's snapshot in the Hugging Face cache), where the
    Hub ones came from (notes to print once the models loaded) and the backend that computes them."""

    folders: list
    backend: str
    notes: list


def find_adapters(words, backend="auto", several="together"):
    """The --adapter words of a command (folders and Hub ids) -> Found. several="together": several adapters share
    one base model, on torch (a backend other than auto or torch is refused: ModelError, one line); one folder gets
    the backend asked for, auto resolved (fastest_backend). several="apart": each folder is loaded alone with the
    backend asked for (auto resolved per folder by load)."""
    if several == "together" and len(words) > 1 and backend not in ("auto", "torch"):
        raise ModelError(
            f"--backend {backend} runs one exported model per folder (base and adapter in one graph); several "
            f"adapters share a base model on torch: drop --backend, or name one --adapter"
        )
    folders, notes = sharing.adapter_folders(words)
    if several == "together":
        backend = "torch" if len(folders) > 1 else fastest_backend(folders[0]) if backend == "auto" else backend
    return Found(folders, backend, notes)


class Adapters:
    """Trained folders loaded for classifying, by task name (task_names): one base model with every adapter (a
    SharedBase: torch, several folders) or each folder alone (a Loaded: a full model, a merged LoRA adapter, an ONNX
    export). ModelError says what is wrong with a folder."""

    def __init__(self, folders, backend="torch", threads=None, precision="auto", model_name=None, merge=True):
        self.backend = backend
        if backend == "torch" and len(folders) > 1:
            self.shared, self.loaded = load_shared(folders, model_name, precision), {}
            self.tasks = self.shared.tasks
        else:
            names, self.shared = task_names(folders), None
            self.loaded = {n: load(f, model_name, merge, backend, threads, precision) for n, f in zip(names, folders)}
            self.tasks = {n: Task(n, str(f), self.loaded[n].info) for n, f in zip(names, folders)}
        self.names = list(self.tasks)
        self.device = models_device(self.shared or next(iter(self.loaded.values())))

    @property
    def infos(self):
        return {name: task.info for name, task in self.tasks.items()}

    @property
    def label_names(self):
        return {name: task.label_names for name, task in self.tasks.items()}

    def classify(self, texts, names=None, batch_size=64):
        """{task name: class probabilities (numpy, n_texts x its labels)} for the tasks named (default: every one)."""
        import numpy as np

        names = self.names if names is None else names
        out = {}
        if self.shared is not None:
            by_task = classify_shared(self.shared, texts, batch_size, only=names)
            out = {name: probs.numpy() for name, probs in by_task.items()}
        for name in names:
            if name in self.loaded:
                out[name] = np.asarray(classify(self.loaded[name], texts, batch_size))
        return out

    def notes(self):
        """What a user should be told of the loaded folders: one line per folder saved by plain adapters, an export
        asked for by name on the CPU beside a GPU, an int8 export checked on another kind of CPU."""
        lines = [plain_note(task.folder, task.info) for task in self.tasks.values()]
        for name, loaded in self.loaded.items():
            lines += [cpu_beside_gpu_note(loaded), other_cpu_note(self.tasks[name].folder, loaded)]
        return [line for line in lines if line]


def models_device(loaded):
    """Where a Loaded or SharedBase computes: "cuda", "cpu", ... (an ONNX session's device, or the torch weights')."""
    model = loaded.model
    return model.device if isinstance(model, OnnxModel) else next(model.parameters()).device.type


# Adapter configs whose layers take a Parallel block (adapters' bottleneck family; tests/test_shared.py checks that
# one pass gives each adapter's probabilities alone), by where their modules sit: adapters 1.3's Parallel block fails
# where one child has a module in a place (a layer, or after attention) and another has none, so only adapters of
# the same placement and the same layers share a pass. Other kinds run one pass each over the shared base.
PARALLEL_CONFIGS = {
    "pfeiffer": "seq_bn", "seq_bn": "seq_bn", "houlsby": "double_seq_bn", "double_seq_bn": "double_seq_bn",
    "par_bn": "par_bn", "scaled_par_bn": "par_bn",
}  # fmt: skip


def pass_groups(tasks):
    """Task names in passes: tasks of PARALLEL_CONFIGS with the same text settings and their modules in the same
    places together, each other task alone."""
    groups = {}
    for task in tasks:
        config = (task.info.get("adapter_config") or "").lower()
        where = (PARALLEL_CONFIGS.get(config), tuple(sorted(task.info.get("leave_out") or [])))  # the same modules
        key = (bool(task.info.get("normalize_text")), task.info["max_length"], where)
        groups.setdefault(key if config in PARALLEL_CONFIGS else task.name, []).append(task.name)
    return list(groups.values())


def classify_shared(shared, texts, batch_size=64, only=None):
    """{task name: class probabilities (n_texts x its labels, a tensor)} for every task of a SharedBase (or the
    tasks named in `only`), each pass's texts prepared as its tasks were trained (normalised, truncated at their
    max length)."""
    wanted = list(shared.tasks) if only is None else [name for name in shared.tasks if name in only]
    out = {}
    for names in [[n for n in p if n in wanted] for p in shared.passes]:
        if not names:
            continue
        info = shared.tasks[names[0]].info
        prepared = [normalize_text(t) for t in texts] if info.get("normalize_text") else list(texts)
        activate(shared, names)
        rows = max(1, batch_size // len(names))  # a Parallel pass replicates the batch: as many rows as one model's
        temperatures = [temperature(shared.tasks[name].info) for name in names]
        probs = predict_proba(
            shared.model, shared.tokenizer, prepared, info["max_length"], rows, len(names), shared.precision,
            temperature=temperatures if len(names) > 1 else temperatures[0],
        )  # fmt: skip
        out.update(zip(names, probs if len(names) > 1 else [probs]))
    return {name: out[name] for name in wanted}


def activate(shared, names):
    """Make a pass's tasks the active ones in a SharedBase: several in a Parallel block, or one adapter, or one
    AdapterFusion (saved.activate_fusion)."""
    from adapters import Parallel

    from textclassifier import saved

    if saved.is_fusion(shared.tasks[names[0]].info):
        saved.activate_fusion(shared.model, shared.tasks[names[0]].info, names[0])
    else:
        shared.model.active_adapters = Parallel(*names) if len(names) > 1 else names[0]


def classify(loaded, texts, batch_size=64, by_length=True):
    """Class probabilities for `texts` from what load() returned, the texts prepared as in training (normalised
    when the model was trained on normalised texts, truncated at its max length). by_length=False: batches in the
    texts' order (mixed lengths), as batch_movement checks."""
    if loaded.info.get("normalize_text"):
        texts = [normalize_text(t) for t in texts]
    t = temperature(loaded.info)
    if isinstance(loaded.model, OnnxModel):
        return loaded.model.predict_proba(texts, batch_size, by_length, t)
    return predict_proba(
        loaded.model, loaded.tokenizer, texts, loaded.info["max_length"], batch_size, 1, loaded.precision, by_length, t
    )


def temperature(info):
    """The temperature that train.py --calibrate fitted on the validation posts (training.json's calibration), by
    which the logits are divided before the softmax; 1 (the logits as they are) for a folder not calibrated."""
    return (info.get("calibration") or {}).get("temperature", 1.0)


# How far a post's class probabilities may move between classified alone and in a batch of other posts, by what
# computes them (an export's models are held to it before they are kept): fp32 on torch and
# ONNX, and int8 (one post per call: OnnxModel), within rounding; torch bf16 within what was measured on the default
# adapter, doubled (docs/usage.md, bench/results/int8-cpu-2cores.md).
BATCH_TOLERANCE = {"fp32": 1e-6, "int8": 1e-6, "bf16": 0.01}

# How batch_movement batches the posts besides one at a time: (posts per batch, seed of the shuffle), so that each
# post shares its batch with others of other lengths, padded to the longest.
MIXED_BATCHINGS = ((5, 1), (16, 2), (64, 3))


def batch_movement(loaded, texts):
    """The largest difference between a post's class probabilities classified alone and classified in each of
    MIXED_BATCHINGS (shuffled, batches of mixed lengths): 0 where a post's answer is its own, whatever shares its
    batch (the check of an export, and of every backend and precision)."""
    import numpy as np

    texts = list(texts)
    alone = np.concatenate([as_numpy(classify(loaded, [text], 1)) for text in texts])
    largest = 0.0
    for batch_size, seed in MIXED_BATCHINGS:
        order = np.random.default_rng(seed).permutation(len(texts))
        probs = as_numpy(classify(loaded, [texts[i] for i in order], batch_size, by_length=False))
        largest = max(largest, float(np.abs(probs - alone[order]).max(initial=0.0)))
    return largest


def as_numpy(probs):
    """Probabilities from either backend (a torch tensor or a numpy array) as a float64 numpy array."""
    import numpy as np

    return np.asarray(probs if isinstance(probs, np.ndarray) else probs.float().numpy(), dtype=np.float64)


def predict_proba(
    model, tokenizer, texts, max_length, batch_size=64, heads=1, precision="auto", by_length=True, temperature=1.0
):
    """Class probabilities (n_texts x n_labels, in the order of `texts`): tokenised once, batched by length
    so that little padding is computed (by_length=False: in the texts' order), under autocast where `precision`
    says so (autocast_dtype), no autograd, the softmax of the logits divided by `temperature`. heads > 1: the model's
    active adapters are a Parallel block of that many, and a list of one such tensor per head comes back
    (temperature: one per head)."""
    import torch
    from transformers import DataCollatorWithPadding

    device = next(model.parameters()).device
    encoded = tokenizer(texts, truncation=True, max_length=max_length)
    rows = [{k: v[i] for k, v in encoded.items()} for i in range(len(texts))]
    pad = DataCollatorWithPadding(tokenizer)  # the same dynamic padding as in training
    dtype = autocast_dtype(device.type, precision)
    order, chunks = [], [[] for _ in range(heads)]
    temperatures = temperature if heads > 1 else [temperature]
    model.eval()
    # full precision on a CPU: oneDNN's kernels round a one-post batch differently (1.3e-6 on the default adapter);
    # without them a post's answer is the same in any batch within 1e-6, at the same speed (docs/usage.md)
    with (
        torch.inference_mode(),
        torch.autocast(device.type, dtype=dtype, enabled=dtype is not None),
        onednn(dtype is not None or device.type != "cpu"),
    ):
        for batch in sorted_batches([len(r["input_ids"]) for r in rows], batch_size, by_length):
            inputs = pad([rows[i] for i in batch]).to(device, non_blocking=True)
            output = model(**inputs)
            outputs = output.head_outputs if heads > 1 else [output]
            for head, out, t in zip(chunks, outputs, temperatures):
                head.append((out.logits.float() / t).softmax(-1))  # stays on the device: no wait per batch
            order += batch
    if not order:  # no texts: no rows
        return torch.zeros(0, 0) if heads == 1 else [torch.zeros(0, 0)] * heads
    back = torch.argsort(torch.tensor(order))
    probs = [torch.cat(head).cpu()[back] for head in chunks]  # one copy back per head
    return probs[0] if heads == 1 else probs


@contextmanager
def onednn(enabled):
    """torch's oneDNN kernels on (or off) inside the block, restored after it (torch.backends.mkldnn.flags would
    also set oneDNN's TF32 and warn about Intel GPUs)."""
    import torch

    before = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = enabled
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = before


def trained_fingerprint(folder):
    """SHA-256 of what train.py wrote into the folder (training.json, configs, weights, tokenizer files), not of
    the export's own files: an export records it, and a folder trained again no longer matches. An AdapterFusion's
    subfolders count, under their paths in the folder."""
    digest = hashlib.sha256()
    for path in sorted(Path(folder).rglob("*")):
        if path.is_file() and path.suffix in (".json", ".safetensors", ".txt") and path.name not in EXPORT_FILES:
            digest.update(path.relative_to(folder).as_posix().encode() + b"\0")
            with open(path, "rb") as f:
                while block := f.read(1 << 20):
                    digest.update(block)
    return digest.hexdigest()


def write_export_info(folder, export):
    """onnx.json into `folder`, after checking that it holds what choosing and loading the export will need."""
    path = Path(folder) / EXPORT_INFO
    check_export_info(export, path)
    path.write_text(json.dumps(export, indent=2) + "\n")


def read_export_info(folder):
    """onnx.json of a folder, checked (check_export_info); None where the folder holds no export."""
    path = Path(folder) / EXPORT_INFO
    if not path.is_file():
        return None
    try:
        export = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError):
        raise ModelError(f"{path} is damaged (not valid JSON); {EXPORT_AGAIN}") from None
    check_export_info(export, path)
    return export


def check_export_info(export, path):
    """The keys of EXPORT_INFO_SCHEMA with their types, and each backend's checks as a JSON object."""
    check_record(export, EXPORT_INFO_SCHEMA, path, EXPORT_AGAIN)
    if not all(isinstance(checks, dict) for checks in export["backends"].values()):
        raise ModelError(f"{path} is damaged (each backend's checks should be a JSON object); {EXPORT_AGAIN}")


def plain_note(folder, info):
    """One line for a folder saved by plain adapters (None for a folder of train.py): what does not apply."""
    if info.get("saved_by") != "adapters":
        return None
    return (
        f"note: {folder} was saved by the adapters library, not train.py: labels from its head "
        f"({', '.join(info['label_names'])}), base model {info['base_model']}, texts as they are, cut at "
        f"{info['max_length']} tokens; the project's own checks (data fingerprint, text normalisation, "
        f"calibration) do not apply"
    )


def fastest_backend(folder):
    """What --backend auto runs. Where torch sees a CUDA GPU: torch, on the GPU (an export runs there only when
    asked for by name, on onnxruntime-gpu's CUDA provider where it is installed: onnx_providers). Elsewhere the
    fastest verified export (fastest_export), else torch."""
    from textclassifier import hardware

    if hardware.cuda_visible():
        return "torch"
    return fastest_export(folder) or "torch"


def fastest_export(folder):
    """The fastest backend the folder holds an export of that passed its checks (int8, then fp32), or None. A stale
    export is refused, not skipped (load_onnx says why)."""
    export = read_export_info(folder)
    for backend in ("onnx-int8", "onnx"):
        if (
            export
            and export["backends"].get(backend, {}).get("verified")
            and (Path(folder) / ONNX_FILES[backend]).is_file()
        ):
            return backend
    return None


def load_onnx(folder, backend, model_name=None, threads=None):
    """A Loaded (OnnxModel, its tokenizer, training info) from an export.py export; ModelError when there is none, it
    did not pass its checks, or the folder was trained again after it."""
    folder = Path(folder)
    again = f"run python export.py --adapter {folder}, or pass --backend torch"
    if not (folder / "training.json").is_file():
        raise ModelError(
            f"{folder} is not a folder written by train.py (no training.json), and export.py exports only those; "
            f"pass --backend torch"
        )
    export = read_export_info(folder)
    if export is None:
        raise ModelError(f"{folder} holds no ONNX export; {again}")
    checks = export["backends"].get(backend, {})
    if not checks.get("verified") or not (folder / ONNX_FILES[backend]).is_file():
        reason = f" ({checks['failed']})" if checks.get("failed") else ""
        raise ModelError(f"{folder} holds no verified {ONNX_FILES[backend]}{reason}; {again}")
    if export["trained_fingerprint"] != trained_fingerprint(folder):
        raise ModelError(f"the ONNX export in {folder} is stale: the folder was trained again after it; {again}")
    info = json.loads((folder / "training.json").read_text())
    if model_name and model_name != info["base_model"]:
        raise ModelError(f"the adapter in {folder} was trained on {info['base_model']}, not {model_name}; drop --model")
    model = open_onnx(folder, backend, export["pad_token_id"], info["max_length"], threads)
    return Loaded(model, model.tokenizer, info)


def open_onnx(folder, backend, pad_token_id, max_length, threads=None):
    """An OnnxModel for the folder's export file of `backend`, unchecked (load_onnx checks the export first; a new
    export is opened through it to be checked)."""
    import onnxruntime
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(Path(folder) / ONNX_TOKENIZER))
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length)
    path, providers = str(Path(folder) / ONNX_FILES[backend]), onnx_providers(backend)
    session = onnxruntime.InferenceSession(path, session_options(threads), providers=providers)
    posts_at_once, pool_session = 1, None
    if backend == "onnx-int8":  # one post per call: several posts at a time, each call on one thread
        posts_at_once = threads or os.cpu_count() or 1
        if posts_at_once > 1:
            pool_session = onnxruntime.InferenceSession(path, session_options(1), providers=providers)
    return OnnxModel(session, tokenizer, pad_token_id, backend, posts_at_once, pool_session)


def session_options(threads):
    """ONNX Runtime's session options with `threads` threads per call (0 or None: one per core, its default)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads or 0
    return options


def onnx_providers(backend, available=None):
    """ONNX Runtime's execution providers for an export, best first: CUDA for the fp32 export where the installed
    onnxruntime offers it (onnxruntime-gpu; ONNX Runtime falls back to the CPU where it cannot start), then the
    CPU. int8 stays on the CPU: its dynamic quantisation is made for CPU integer instructions. available:
    onnxruntime.get_available_providers() unless given."""
    if available is None:
        import onnxruntime

        available = onnxruntime.get_available_providers()
    cuda = backend == "onnx" and "CUDAExecutionProvider" in available
    return ["CUDAExecutionProvider", "CPUExecutionProvider"] if cuda else ["CPUExecutionProvider"]


def cpu_beside_gpu_note(loaded, instead="; --backend torch (or auto) computes on the GPU"):
    """One line where an ONNX session computes on the CPU while torch sees a CUDA GPU (a backend asked for by
    name: --backend auto takes torch there), ending with `instead`; else None."""
    from textclassifier import hardware

    model = loaded.model
    if not isinstance(model, OnnxModel) or model.device != "cpu" or not hardware.cuda_visible():
        return None
    how = "int8 is a CPU format" if model.backend == "onnx-int8" else "pip install onnxruntime-gpu to run it there"
    return f"note: {model.backend} computes on the CPU beside a CUDA GPU ({how}){instead}"


def other_cpu_note(folder, loaded):
    """One line where an int8 export runs on another kind of CPU than export.py checked it on (onnx.json's
    checked_on; hardware.int8_kind): int8's answers differ between kinds, and export.py checks them here; else None
    (fp32 exports, and exports made before the kind was recorded)."""
    from textclassifier import hardware

    model = loaded.model
    if not isinstance(model, OnnxModel) or model.backend != "onnx-int8":
        return None
    checked = (read_export_info(folder) or {}).get("checked_on", {}).get("int8_kind")
    if checked is None or checked == hardware.int8_kind():
        return None
    return (
        f"note: {ONNX_FILES['onnx-int8']} was checked on a CPU with {hardware.kind_name(checked)}, and int8 computes "
        f"differently on this one ({hardware.kind_name(hardware.int8_kind())}): python export.py --adapter {folder} "
        f"--overwrite checks it here"
    )


class OnnxModel:
    """An exported model in an ONNX Runtime session with the `tokenizers` tokenizer: texts -> probabilities. The int8
    export quantises its activations with scales computed per call, over the whole padded batch, so a post's answer
    would depend on the posts beside it: it gets one post per call. One post alone runs on `session` (all its
    threads); several run `posts_at_once` at a time on `pool_session` (one thread per call; ONNX Runtime runs
    concurrent calls on one session), which is faster than batches on a CPU (bench/results/int8-cpu-2cores.md)."""

    def __init__(self, session, tokenizer, pad_token_id, backend, posts_at_once=1, pool_session=None):
        self.session, self.tokenizer, self.pad_token_id, self.backend = session, tokenizer, pad_token_id, backend
        self.device = "cuda" if session.get_providers()[0] == "CUDAExecutionProvider" else "cpu"  # where it computes
        self.one_post_per_call = backend == "onnx-int8"
        self.posts_at_once, self.pool_session = posts_at_once, pool_session or session
        self.pool = None  # the threads of posts_at_once, started at the first call that needs them

    def predict_proba(self, texts, batch_size=64, by_length=True, temperature=1.0):
        """Class probabilities (numpy, n_texts x n_labels, in the order of `texts`), batched by length as on torch
        (by_length=False: in the texts' order), the softmax of the logits divided by `temperature`; int8: one post
        per call, whatever batch_size says."""
        import numpy as np

        ids = [encoding.ids for encoding in self.tokenizer.encode_batch(list(texts))]
        probs = np.zeros((len(ids), self.session.get_outputs()[0].shape[1]), dtype=np.float32)
        if self.one_post_per_call:
            batches = [[i] for i in range(len(ids))]
        else:
            batches = sorted_batches([len(i) for i in ids], batch_size, by_length)
        for batch, logits in zip(batches, self.map([[ids[i] for i in batch] for batch in batches])):
            logits = logits / temperature
            exp = np.exp(logits - logits.max(-1, keepdims=True))
            probs[batch] = exp / exp.sum(-1, keepdims=True)
        return probs

    def logits(self, rows, session):
        """The model's logits (float64) for token id lists, padded to the longest."""
        import numpy as np

        width = max(len(row) for row in rows)
        input_ids = np.full((len(rows), width), self.pad_token_id, dtype=np.int64)
        mask = np.zeros((len(rows), width), dtype=np.int64)
        for i, row in enumerate(rows):
            input_ids[i, : len(row)], mask[i, : len(row)] = row, 1
        return session.run(None, {"input_ids": input_ids, "attention_mask": mask})[0].astype(np.float64)

    def map(self, batches):
        """The logits of each batch: on the pool's threads where several posts run at once, else in this thread."""
        if self.posts_at_once <= 1 or len(batches) <= 1:
            return (self.logits(rows, self.session) for rows in batches)
        if self.pool is None:
            from concurrent.futures import ThreadPoolExecutor

            self.pool = ThreadPoolExecutor(self.posts_at_once, thread_name_prefix="onnx-int8")
        return self.pool.map(lambda rows: self.logits(rows, self.pool_session), batches)


def result_rows(texts, probs, names):
    """One dict per post: text, label, score (its probability) and every label's probability."""
    for text, p in zip(texts, probs.tolist()):
        best = max(range(len(p)), key=p.__getitem__)
        yield {"text": text, "label": names[best], "score": p[best], "probabilities": dict(zip(names, p))}


def shared_rows(texts, by_task, label_names):
    """One dict per post with every task's answer: {"text", "results": {task: {label, score, probabilities}}}."""
    answers = {task: list(result_rows(texts, probs, label_names[task])) for task, probs in by_task.items()}
    for i, text in enumerate(texts):
        yield {"text": text, "results": {task: drop_text(rows[i]) for task, rows in answers.items()}}


def drop_text(row):
    return {key: value for key, value in row.items() if key != "text"}
