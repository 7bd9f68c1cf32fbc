"""
What the benchmarks share, taking plain values: the setups, a training step's batches in each pipeline, the timed
step, memory readings, the device's name, the fresh-process worker and the way results are written.

    model, optimizer, accelerator, batches = prepare_training(model_name, data_source, "pfeiffer", "ours")
    seconds, posts, tokens = timed_steps(model, optimizer, accelerator, itertools.islice(batches, 20))
"""

import json
import os
import platform
import resource
import shlex
import subprocess
import sys
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from transformers import AutoConfig

import data
import model as M
from bench.writeup_pipeline import writeup_loader
from textclassifier import hardware, report, saved, training

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"  # where every benchmark writes <name>-<machine>.{json,md,png}

SEED = 42
# name -> (mode, adapter config, adapters only in the upper half of the layers, lower half computed once)
SETUPS = {
    "full": ("full", None, False, False),
    "pfeiffer": ("adapter", "pfeiffer", False, False),
    "houlsby": ("adapter", "houlsby", False, False),
    "pfeiffer-upper-half": ("adapter", "pfeiffer", True, False),
    "pfeiffer-upper-half-cached": ("adapter", "pfeiffer", True, True),
}
# name -> train.py flags, for the scripts that train whole runs (compare.py, gpu.py); "{upper}" becomes the
# lower half of the layers, left without adapters
TRAIN_SETUPS = {
    "full": ["--mode", "full"],
    "pfeiffer": ["--mode", "adapter", "--adapter-config", "pfeiffer"],
    "houlsby": ["--mode", "adapter", "--adapter-config", "houlsby"],
    "pfeiffer-upper-half": ["--mode", "adapter", "--adapter-config", "pfeiffer", "--leave-out", "{upper}"],
    "lora": ["--mode", "adapter", "--adapter-config", "lora"],
    "ia3": ["--mode", "adapter", "--adapter-config", "ia3"],
    "fusion": ["--mode", "adapter"],  # bench/compare.py adds --fusion and the adapters it fuses
    "fusion-own": ["--mode", "adapter"],
}


# Reddit and forum posts of Pirina & Coltekin (2018) in 7 groups (../shared/data/README.md), evaluation only: the
# depressed groups (ds, dsf, do) against the others
REDDIT_MAP = ["1=ds,dsf,do", "0=bc,ff,ndf,nd"]
CACHED_POSTS = 1024  # a cached setup's batches come from the first N training posts (their states, computed once)


def lower_half(model_name):
    """The lower half of the model's layers: what the upper-half setups leave without adapters."""
    return list(range(AutoConfig.from_pretrained(M.resolve_model_path(model_name)).num_hidden_layers // 2))


def setup_flags(name, model_name):
    """train.py's flags for a TRAIN_SETUPS entry on `model_name` ("{upper}" becomes its lower half's layers)."""
    flags = []
    for flag in TRAIN_SETUPS[name]:
        flags += [str(i) for i in lower_half(model_name)] if flag == "{upper}" else [flag]
    return flags


def train_setup(
    name, seed, folder, model_name, data_source, epochs, split_seed=SEED, train_posts=None, eval_posts=None, extra=()
):
    """Train a TRAIN_SETUPS entry with train.py in its own process into folder/<name>-<seed>-<split seed>, with the
    extra flags last; returns (that folder, the command). A folder that already holds a finished run with this name
    is kept, not retrained."""
    flags = setup_flags(name, model_name)
    flags += [
        "--model",
        model_name,
        "--data",
        data_source,
        "--epochs",
        str(epochs),
        "--seed",
        str(seed),
        "--split-seed",
        str(split_seed),
        "--output-dir",
        str(folder),
        "--name",
        f"{name}-{seed}-{split_seed}",
    ]
    flags += ["--max-train-samples", str(train_posts)] if train_posts else []
    flags += ["--max-eval-samples", str(eval_posts)] if eval_posts else []
    flags += list(extra)
    return run_train(flags, Path(folder) / f"{name}-{seed}-{split_seed}")


def run_train(flags, run):
    """`python train.py <flags>` in its own process, which writes `run`; a run folder that already holds a finished
    run is kept, not retrained. Returns (run, the command)."""
    if not (run / saved.TRAINING_INFO).is_file():
        proc = subprocess.run([sys.executable, "train.py", *flags], cwd=ROOT, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"train.py {' '.join(flags)} failed:\n{proc.stderr[-3000:]}")
    return run, "python train.py " + " ".join(flags)


def reddit_posts(path):
    """The Reddit posts: raw texts, labels (1 depressed groups, 0 the others) and groups, as numpy arrays."""
    posts, _ = data.read_labelled(
        path, label_column="label", group_column="label", label_mapping=data.parse_label_map(REDDIT_MAP)
    )
    return posts["text"].tolist(), posts["label"].astype(int).to_numpy(), posts["group"].to_numpy()


def device_name():
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    cpu = hardware.cpu_info()
    marks = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in cpu["flags"]]
    return f"CPU {cpu.get('model name') or platform.machine()}, {torch.get_num_threads()} threads" + (
        f" ({' '.join(marks)})" if marks else ""
    )


def machine_slug():
    name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"cpu-{os.cpu_count()}cores"
    return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-")


def command_line(script, argv=None):
    """The command as it was run: `python -m bench.<script> <its arguments>`."""
    return shlex.join(["python", "-m", f"bench.{Path(script).stem}", *(sys.argv[1:] if argv is None else argv)])


def write_results(stem, result, markdown_text, draw):
    """<stem>.json, <stem>.md and <stem>.png (the figure draw(result) returns) for one benchmark's result."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    Path(f"{stem}.md").write_text(markdown_text)
    report.save_figure(draw(result), Path(f"{stem}.png"))
    print(markdown_text)
    print(f"wrote {stem}.json, .md and .png")


def worker(cmd):
    """Run a measurement in a fresh Python process (its own peak memory); it prints its result as the last line
    of its output, in JSON."""
    proc = subprocess.run([sys.executable, *map(str, cmd)], cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def load_data(data_source):
    return data.load_splits(data_source, seed=SEED)  # train.py's default split


def proc_status_mb(field):
    """A memory field of /proc/self/status (VmHWM: peak resident, VmRSS: resident now) in MB; None off Linux."""
    status = Path("/proc/self/status")
    if not status.exists():
        return None
    line = next(line for line in status.read_text().splitlines() if line.startswith(f"{field}:"))
    return int(line.split()[1]) / 1024  # kB


def peak_memory_mb(device):
    """Peak allocated GPU memory on CUDA; else this process's peak resident memory (VmHWM: unlike ru_maxrss,
    it does not carry over the parent's peak into a freshly started process)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    peak = proc_status_mb("VmHWM")
    return peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # macOS: bytes


def current_memory_mb(device):
    """Allocated GPU memory on CUDA; else this process's resident memory now (VmRSS)."""
    if device.type == "cuda":
        return torch.cuda.memory_allocated() / 2**20
    now = proc_status_mb("VmRSS")
    return now if now is not None else float("nan")


def build_setup_model(model_name, setup, label_names, attention_dropout, seed=SEED):
    mode, config, upper_half, _ = SETUPS[setup]
    return M.build_model(
        model_name,
        mode,
        label_names,
        config or "pfeiffer",
        leave_out=lower_half(model_name) if upper_half else None,
        seed=seed,
        attention_dropout=attention_dropout,
    )


def prepare_training(model_name, data_source, setup, pipeline="ours", posts_needed=256, mixed_precision="auto"):
    """Model, optimizer, accelerator and an endless batch stream for one setup in one pipeline.
    "ours": train.py's batches and defaults; a cached setup's batches hold the lower half's output for its posts
    (training.cache_lower_layers), the model's lower half switched to pass-through, as train.py trains it.
    "write-up": every post padded to 512, batch 2, the checkpoint as it is (attention dropout 0.1), plain AdamW."""
    train_ds, _, label_names, _ = load_data(data_source)
    tokenizer = M.load_tokenizer(model_name)
    ours = pipeline == "ours"
    model = build_setup_model(model_name, setup, label_names, training.ATTENTION_DROPOUT if ours else None)
    accelerator = Accelerator(mixed_precision=training.mixed_precision(mixed_precision))
    if SETUPS[setup][3]:
        if not ours:
            raise ValueError(f"{setup} runs in this project's pipeline only")
        posts = train_ds.select(range(min(max(posts_needed, CACHED_POSTS), len(train_ds))))
        posts = data.tokenize(posts, tokenizer, training.MAX_LENGTH)
        k, _ = M.frozen_lower_layers(model)
        states = training.cache_lower_layers(
            model.to(accelerator.device), posts, tokenizer, k, 2 * training.BATCH_SIZE, accelerator
        )
        M.skip_lower_layers(model, k)
        batches = data.training_batches(data.ds_lengths(posts), training.BATCH_SIZE, SEED)
        loader = data.states_loader(states, posts["label"], batches)
    elif ours:
        loader = data.train_loader(
            data.tokenize(train_ds, tokenizer, training.MAX_LENGTH), tokenizer, training.BATCH_SIZE, SEED
        )
    else:
        n = posts_needed * 2  # enough posts for the steps, without tokenising them all
        loader = writeup_loader(list(train_ds["text"])[:n], list(train_ds["label"])[:n], tokenizer)
    model.train()
    model, optimizer = accelerator.prepare(model, training.build_optimizer(model, lr=1e-4, fused=ours))
    return model, optimizer, accelerator, forever(loader)


def forever(loader):
    """Batches without end: small data sets run out of batches before the timed steps are done."""
    while True:
        yield from loader


def timed_steps(model, optimizer, accelerator, batches):
    """training.train_step (the very step train.py runs) over `batches`; returns (seconds, posts, real tokens)."""
    device = accelerator.device
    if device.type == "cuda":
        torch.cuda.synchronize()
    start, posts, tokens = time.perf_counter(), 0, 0
    for batch in batches:
        posts += len(batch["labels"])
        tokens += int(batch["attention_mask"].sum())  # before the copy: no wait for the GPU
        batch = training.to_device(batch, device)
        training.train_step(model, batch, optimizer, None, accelerator)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, posts, tokens


def add_run_flags(parser, name, quick_help=None):
    """--quick (a short run, for the tests; where quick_help says what it does) and --name (the results file name,
    default `name`): every benchmark writes results_stem(args)."""
    if quick_help:
        parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument("--name", default=name, help=f"results file name (default: {name})")


def results_stem(args):
    """<out>/<name>-<machine>[-quick]: where every benchmark writes its .json, .md and .png."""
    quick = "-quick" if getattr(args, "quick", False) else ""
    return Path(args.out) / f"{args.name}-{machine_slug()}{quick}"


def add_common_flags(parser, model=True, data_set=True, out=True, data_help="data set, as for train.py"):
    """The flags most benchmarks share: --model (the base model), --data (the depression data set, train.py's
    split) and --out (the results folder)."""
    if model:
        parser.add_argument("--model", default=M.DEFAULT_MODEL, help="base model (default: the offline MiniLM)")
    if data_set:
        parser.add_argument("--data", default=data.default_data(), help=data_help)
    if out:
        parser.add_argument("--out", default=str(RESULTS), help="folder for the JSON, table and chart")
