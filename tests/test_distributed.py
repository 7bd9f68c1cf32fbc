"""Several processes: torchrun and accelerate launch run train.py as one gloo group on this CPU-only machine.
(data.LengthGroupedBatches' sharing of each epoch is proven in test_data.py.)"""

import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import ONE_QUICK_EPOCH, ROOT, free_port, make_posts, run_cli, run_train

import data

# Each launch takes a free port (torchrun --standalone, accelerate launch --main_process_port), so these tests can run
# in any order and beside each other; the xdist group runs them one at a time only to keep 2 cores from running 4
# training processes at once.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("processes")]

# Full fine-tuning of the tiny BERT learns the synthetic posts within 4 epochs, so accuracies can be compared.
FULL = ["--mode", "full", "--lr", "3e-3", "--epochs", "4", "--max-length", "32"]


def launch(launcher, processes, *args):
    """train.py under a launcher, as a user types it, without extra environment variables."""
    command = {
        "torchrun": ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)],
        "accelerate": [
            "-m",
            "accelerate.commands.launch",
            "--multi_gpu",
            "--num_processes",
            str(processes),
            "--main_process_port",
            str(free_port()),
        ],  # fmt: skip
    }
    env = {k: v for k, v in os.environ.items() if not k.startswith("ACCELERATE_")}
    return subprocess.run(
        [sys.executable, *command[launcher], "train.py", *map(str, args)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )


@pytest.fixture(scope="session")
def posts_400(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "posts400.csv"
    make_posts(200).to_csv(path, index=False)
    return str(path)


@pytest.fixture(scope="session")
def two_process_adapter(tiny_bert, posts_400, tmp_path_factory):
    out = tmp_path_factory.mktemp("torchrun")
    proc = launch(
        "torchrun",
        2,
        "--model",
        tiny_bert,
        "--data",
        posts_400,
        "--output-dir",
        out,
        "--epochs",
        "2",
        "--batch-size",
        "16",
        "--max-length",
        "32",
        "--lr",
        "1e-2",
        "--leave-out",
        "0",
        "--mixed-precision",
        "no",  # full precision on every CPU: predict.py is held to its validation loss within 1e-5
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    # layer 0 holds no adapter: computed once, each process for its own posts (half of 336 training posts, one of
    # the two validation batches of 32), printed by the main process alone
    assert proc.stdout.count("cached layers 0-0 for 200 posts (this process's share)") == 1
    return out, proc


def test_torchrun_trains_as_one_group_and_writes_one_folder(two_process_adapter, posts_400):
    out, proc = two_process_adapter
    assert "2 process(es)" in proc.stdout and "global batch 32 = 2 x 16" in proc.stdout
    assert sorted(p.name for p in out.iterdir()) == ["depression-pfeiffer", "depression-pfeiffer.lock"]  # no .old
    folder = out / "depression-pfeiffer"
    info = json.loads((folder / "training.json").read_text())
    assert info["num_processes"] == 2 and info["global_batch_size"] == 32 and info["batch_size"] == 16
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    for row in rows:
        assert row["val_examples"] == info["val_size"] == 64  # every validation post, once, over both processes
        assert row["train_examples"] == info["train_size"] == 336  # every training post, once, over both processes


def test_two_process_adapter_predicts_the_same_in_one_process(two_process_adapter, posts_400):
    """predict.py (one process, the whole model from token ids) on the validation split reproduces what the
    2-process run measured from its cached layer-0 states: the accuracy, and the mean cross-entropy within 1e-5."""
    folder = two_process_adapter[0] / "depression-pfeiffer"
    info = json.loads((folder / "training.json").read_text())
    _, val, _, _ = data.load_splits(posts_400, seed=info["split_seed"])
    texts, labels = val["text"], torch.tensor(val["label"])
    stdin = "\n".join(texts) + "\n"
    proc = run_cli("predict.py", "--adapter", folder, "--json", "--precision", "fp32", "-", stdin=stdin)
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["text"] for r in rows] == texts
    predicted = torch.tensor([info["label_names"].index(r["label"]) for r in rows])
    assert abs(float((predicted == labels).float().mean()) - info["best"]["accuracy"]) < 1e-6
    probabilities = torch.tensor([[r["probabilities"][name] for name in info["label_names"]] for r in rows])
    cross_entropy = float(-probabilities[torch.arange(len(rows)), labels].log().mean())
    assert abs(cross_entropy - info["best"]["val_loss"]) < 1e-5, (cross_entropy, info["best"]["val_loss"])


def test_one_and_two_processes_with_the_same_global_batch_agree(tiny_bert, posts_400, tmp_path):
    """1 x 32 and 2 x 16: the same posts per step and the same learning rate, so the same best accuracy within
    0.05. (Not the same losses: the batches differ, since each process takes its share of the length-grouped
    order, and the random tiny BERT's loss curves are too steep for a tight tolerance.)"""
    run_train(tiny_bert, posts_400, tmp_path / "one", *FULL, "--batch-size", "32")
    proc = launch(
        "torchrun",
        2,
        "--model",
        tiny_bert,
        "--data",
        posts_400,
        "--output-dir",
        tmp_path / "two",
        *FULL,
        "--batch-size",
        "16",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    one, two = (
        json.loads((tmp_path / n / "depression-full" / "training.json").read_text())["best"] for n in ["one", "two"]
    )
    assert one["accuracy"] > 0.9 and two["accuracy"] > 0.9  # both learned: the comparison means something
    assert abs(one["accuracy"] - two["accuracy"]) <= 0.05


def test_accelerate_launch_forms_a_gloo_group_on_cpu(tiny_bert, posts_csv, tmp_path):
    proc = launch(
        "accelerate", 2, "--model", tiny_bert, "--data", posts_csv, "--output-dir", tmp_path, *ONE_QUICK_EPOCH
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 process(es)" in proc.stdout
    info = json.loads((tmp_path / "depression-pfeiffer" / "training.json").read_text())
    assert info["num_processes"] == 2 and info["best"]["val_examples"] == info["val_size"]


def test_too_little_data_for_the_processes_stops_every_rank_with_one_line(tiny_bert, posts_csv, tmp_path):
    flags = ["--model", tiny_bert, "--data", posts_csv, "--output-dir", tmp_path, "--max-train-samples", "1"]
    proc = launch("torchrun", 2, *flags, "--epochs", "1")
    assert proc.returncode != 0
    # the main process alone says it, in one line of its own (the other rank's line could interleave with it)
    assert proc.stderr.count("cannot give each of 2 processes") == 1, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if "cannot give each of 2 processes" in line]
    assert errors[0].startswith("error: 1 training post cannot give each of 2 processes a batch"), errors
    assert "exitcode: 2" in proc.stderr, proc.stderr[-3000:]  # torchrun then stops the other rank
    assert 'train.py", line' not in proc.stderr  # torchrun prints its own traceback, but none comes from train.py
    assert not any(tmp_path.rglob("*.safetensors"))
