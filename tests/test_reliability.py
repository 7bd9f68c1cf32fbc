"""Nothing lost, nothing corrupted: resume after a kill, one writer per folder, whole swaps, damaged folders refused.
Real subprocesses of train.py and predict.py on the tiny BERT, real files on disk."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import ONE_QUICK_EPOCH, ROOT, assert_clean_failure, make_posts, run_cli, run_main, run_train
from safetensors.torch import load_file, save_file

import train
from textclassifier import saved, settings

# Long enough (50 steps an epoch on the tiny BERT, about half a second) for a test to act between two epochs
# (wait_for looks every 20 ms).
SLOW = ["--epochs", "4", "--batch-size", "8", "--max-length", "32", "--lr", "3e-3"]


@pytest.fixture(scope="module")
def posts_400(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "posts400.csv"
    make_posts(200).to_csv(path, index=False)
    return str(path)


def start_training(tiny_bert, data, out, *extra):
    """train.py in the background, as a user starts it in another terminal."""
    return subprocess.Popen(
        [sys.executable, "train.py", "--model", tiny_bert, "--data", data, "--output-dir", str(out), *SLOW, *extra],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def wait_for(path, proc, timeout=300):
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)


def metrics(folder):
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["no", "bf16"])
def test_killed_run_resumes_to_the_same_result(precision, tiny_bert, posts_400, tmp_path):
    """In full precision and in bf16 (mixed precision: weights and optimizer in fp32, compute in bf16)."""
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    slow = [*SLOW, "--mixed-precision", precision]
    run_train(tiny_bert, posts_400, whole, *slow, run=run_main)  # in this process

    proc = start_training(tiny_bert, posts_400, killed, "--mixed-precision", precision)
    staging = killed / "depression-pfeiffer.incomplete"
    wait_for(staging / "checkpoint" / "state.json", proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = json.loads((staging / "checkpoint" / "state.json").read_text())["epoch"]
    assert 1 <= done < 4  # killed with work left to resume
    assert (killed / "depression-pfeiffer.lock").exists()  # the dead run's lock file: taken over below
    assert not (killed / "depression-pfeiffer").exists()

    again = run_train(tiny_bert, posts_400, killed, *slow, run=run_main, check=False)
    assert_clean_failure(again, "interrupted run", "--resume")  # without --resume nothing is thrown away
    resumed = run_train(tiny_bert, posts_400, killed, *slow, "--resume")
    assert f"resumed after epoch {done} of 4" in resumed.stdout

    a, b = metrics(whole / "depression-pfeiffer"), metrics(killed / "depression-pfeiffer")
    assert [r["epoch"] for r in b] == [1, 2, 3, 4]
    for ra, rb in zip(a, b):
        for key in ["train_loss", "val_loss", "accuracy", "f1", "train_examples", "val_examples"]:
            assert abs(ra[key] - rb[key]) <= 1e-4, (key, ra, rb)
    for name in ["adapter.safetensors", "model_head.safetensors"]:
        wa, wb = load_file(whole / "depression-pfeiffer" / name), load_file(killed / "depression-pfeiffer" / name)
        assert wa.keys() == wb.keys() and all(torch.allclose(wa[k], wb[k], atol=1e-6) for k in wa)
        assert all(w.dtype == torch.float32 for w in wb.values())  # saved in fp32 whatever the compute precision
    info = json.loads((killed / "depression-pfeiffer" / "training.json").read_text())
    assert info["mixed_precision"] == precision
    assert sorted(p.name for p in killed.iterdir()) == [
        "depression-pfeiffer",
        "depression-pfeiffer.lock",
    ]  # no .incomplete


@pytest.mark.slow
def test_resume_with_other_arguments_or_nothing_to_resume(tiny_bert, posts_csv, tmp_path):
    args = ["--model", tiny_bert, "--data", posts_csv, "--output-dir", str(tmp_path)]
    proc = run_main("train.py", *args, "--epochs", "1", "--max-length", "32", "--resume")
    assert "nothing to resume" in proc.stdout and "starting afresh" in proc.stdout
    assert (tmp_path / "depression-pfeiffer" / "training.json").is_file()

    staging = tmp_path / "depression-houlsby.incomplete" / "checkpoint"
    staging.mkdir(parents=True)
    args += ["--adapter-config", "houlsby"]
    config = {**settings.resume_config(train.parse_args(args), 1), "lr": 0.5}  # a checkpoint made with --lr 0.5
    (staging / "state.json").write_text(json.dumps({"epoch": 1, "config": config}))
    proc = run_main("train.py", *args, "--resume", check=False)
    assert_clean_failure(proc, "--resume", "lr = 0.5, not 0.001")


def test_every_flag_is_a_resume_setting_but_where_the_result_goes():
    """A flag added to the parser joins the settings a checkpoint must agree on, without a list to update."""
    dests = {a.dest for a in train.build_parser()._actions} - {"help"}
    output = {"name", "output_dir", "overwrite", "resume", "push_to_hub", "private"}
    assert set(settings.resume_keys()) == dests - output
    assert {"label_map", "normalize_text", "class_weights", "metric", "lr", "seed"} <= set(settings.resume_keys())


@pytest.mark.slow
def test_second_run_into_the_same_folder_is_refused_and_the_first_finishes(tiny_bert, posts_400, tmp_path):
    first = start_training(tiny_bert, posts_400, tmp_path)
    wait_for(tmp_path / "depression-pfeiffer.incomplete" / "checkpoint" / "state.json", first)
    first.send_signal(signal.SIGSTOP)  # paused, still holding its lock: on a busy machine it could else finish
    try:  # before the second run has even started, and the race would test nothing
        second = run_train(tiny_bert, posts_400, tmp_path, *SLOW, "--seed", "7", run=run_main, check=False)
        assert_clean_failure(second, f"another training run (pid {first.pid}) is writing")
    finally:
        first.send_signal(signal.SIGCONT)
    out, err = first.communicate(timeout=600)
    assert first.returncode == 0, err
    folder = tmp_path / "depression-pfeiffer"
    assert [r["epoch"] for r in metrics(folder)] == [1, 2, 3, 4]
    assert json.loads((folder / "training.json").read_text())["seed"] == 42
    saved.load_trained(folder)


@pytest.mark.slow
def test_patience_stops_when_accuracy_stops_improving(tiny_bert, posts_csv, tmp_path):
    args = ["--model", tiny_bert, "--data", posts_csv, "--output-dir", tmp_path]
    proc = run_main("train.py", *args, "--epochs", "6", "--batch-size", "8", "--max-length", "32", "--patience", "1")
    folder = tmp_path / "depression-pfeiffer"
    rows, info = metrics(folder), json.loads((folder / "training.json").read_text())
    accuracies = [r["accuracy"] for r in rows]
    assert len(rows) < 6 and "(--patience)" in proc.stdout
    assert rows[-1]["accuracy"] <= max(accuracies[:-1])  # it stopped after an epoch without improvement
    assert all(b > a for a, b in zip(accuracies, accuracies[1:-1]))  # ...and only then
    assert info["epochs_run"] == len(rows) and info["best"]["accuracy"] == max(accuracies)


# --- the swap of a finished result: a failure at each step leaves the old or the new result whole


def result_folder(path, marker):
    path.mkdir(parents=True)
    (path / "training.json").write_text(json.dumps({"marker": marker}))
    (path / "adapter.safetensors").write_bytes(marker.encode() * 100)
    return {p.name: p.read_bytes() for p in path.iterdir()}


@pytest.mark.parametrize("failing_step", [0, 1, 2])
def test_swap_failure_at_each_step_leaves_a_whole_result(failing_step, tmp_path, monkeypatch):
    target, new = tmp_path / "depression-pfeiffer", tmp_path / "staging" / "result"
    old_files, new_files = result_folder(target, "old"), result_folder(new, "new")
    calls = []
    real_rename, real_rmtree = os.rename, shutil.rmtree

    def step(real):
        def wrapped(*args, **kwargs):
            calls.append(args[0])
            if len(calls) - 1 == failing_step:
                raise OSError("injected failure (a kill at this moment)")
            return real(*args, **kwargs)

        return wrapped

    monkeypatch.setattr(saved.os, "rename", step(real_rename))
    monkeypatch.setattr(saved.shutil, "rmtree", step(real_rmtree))
    with pytest.raises(OSError, match="injected"):
        saved.swap_in(new, target)
    monkeypatch.undo()

    def contents(path):
        return {p.name: p.read_bytes() for p in path.iterdir()} if path.is_dir() else None

    assert (
        old_files in (contents(target), contents(tmp_path / "depression-pfeiffer.old")) or contents(target) == new_files
    )
    saved.recover_swap(target)  # what the next run does under its lock
    assert contents(target) in (old_files, new_files)
    assert not (tmp_path / "depression-pfeiffer.old").exists()
    if contents(target) == old_files:
        assert contents(new) == new_files  # the new result waits in the staging folder for --resume


def test_swap_replaces_the_old_result(tmp_path):
    target, new = tmp_path / "r", tmp_path / "n"
    result_folder(target, "old")
    new_files = result_folder(new, "new")
    saved.swap_in(new, target)
    assert {p.name: p.read_bytes() for p in target.iterdir()} == new_files and not new.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r"]


# --- damaged folders: predict.py refuses each with one line and exit 2


@pytest.fixture(scope="module")
def saved_folders(tiny_bert, posts_csv, tmp_path_factory):
    out = tmp_path_factory.mktemp("saved")
    for mode in ["adapter", "full"]:  # in this process: the runs that train.py saves in new processes are tested above
        run_main(
            "train.py", "--mode", mode, "--model", tiny_bert, "--data", posts_csv, "--output-dir", out, *ONE_QUICK_EPOCH
        )
    return out


def damage(folder, problem):
    """Apply one kind of damage a user might meet; returns the words the error line must hold."""
    if problem == "truncated adapter.safetensors":
        data = (folder / "adapter.safetensors").read_bytes()
        (folder / "adapter.safetensors").write_bytes(data[: len(data) // 2])
        return ["adapter.safetensors is damaged"]
    if problem in ("garbage adapter_config.json", "garbage head_config.json", "garbage config.json"):
        (folder / problem.split()[1]).write_text("{this is not json")
        return [problem.split()[1], "damaged"]
    if problem == "model_head.safetensors missing":
        (folder / "model_head.safetensors").unlink()
        return ["incomplete", "model_head.safetensors"]
    if problem == "unknown base model":
        info = json.loads((folder / "training.json").read_text())
        (folder / "training.json").write_text(json.dumps({**info, "base_model": str(folder / "no-such-model")}))
        return ["cannot load the base model"]
    if problem == "training.json of an older run without max_length":
        info = json.loads((folder / "training.json").read_text())
        del info["max_length"]
        (folder / "training.json").write_text(json.dumps(info))
        return ["has no 'max_length'"]
    if problem == "empty label_names":
        info = json.loads((folder / "training.json").read_text())
        (folder / "training.json").write_text(json.dumps({**info, "label_names": []}))
        return ["training.json is damaged", "label_names"]
    if problem == "pickle weights instead of safetensors":
        (folder / "adapter.safetensors").unlink()
        (folder / "model_head.safetensors").unlink()
        torch.save({"unrelated.weight": torch.zeros(3)}, folder / "pytorch_adapter.bin")
        torch.save({"unrelated.bias": torch.zeros(3)}, folder / "pytorch_model_head.bin")
        return ["only pickle weights", "never loaded"]
    if problem == "unrelated tensors in adapter.safetensors":
        save_file({"unrelated.weight": torch.zeros(3)}, folder / "adapter.safetensors")
        return ["do not match"]
    if problem == "truncated model.safetensors":
        data = (folder / "model.safetensors").read_bytes()
        (folder / "model.safetensors").write_bytes(data[: len(data) - 1000])
        return ["model.safetensors is damaged"]
    if problem == "tokenizer files missing":
        for name in ["tokenizer.json", "vocab.txt", "tokenizer_config.json"]:
            (folder / name).unlink(missing_ok=True)
        return ["incomplete", "tokenizer"]
    if problem == "only pytorch_model.bin":
        state = load_file(folder / "model.safetensors")
        (folder / "model.safetensors").unlink()
        torch.save(state, folder / "pytorch_model.bin")
        return ["only pickle weights"]
    raise AssertionError(problem)


@pytest.mark.slow
@pytest.mark.parametrize(
    "mode, problem",
    [
        ("adapter", "truncated adapter.safetensors"),
        ("adapter", "garbage adapter_config.json"),
        ("adapter", "garbage head_config.json"),
        ("adapter", "model_head.safetensors missing"),
        ("adapter", "unknown base model"),
        ("adapter", "empty label_names"),
        ("adapter", "training.json of an older run without max_length"),
        ("adapter", "pickle weights instead of safetensors"),
        ("adapter", "unrelated tensors in adapter.safetensors"),
        ("full", "truncated model.safetensors"),
        ("full", "garbage config.json"),
        ("full", "tokenizer files missing"),
        ("full", "only pytorch_model.bin"),
    ],
)
def test_damaged_folder_is_refused_with_one_line(mode, problem, saved_folders, tmp_path):
    folder = tmp_path / "copy"
    shutil.copytree(saved_folders / ("depression-pfeiffer" if mode == "adapter" else "depression-full"), folder)
    words = damage(folder, problem)
    proc = run_main("predict.py", "--adapter", folder, "some text", check=False)
    assert_clean_failure(proc, *words)
    assert proc.stdout == ""


@pytest.mark.slow
def test_undamaged_folders_still_load(saved_folders):
    for name, run in [("depression-pfeiffer", run_cli), ("depression-full", run_main)]:  # a new process, this one
        rows = run("predict.py", "--adapter", saved_folders / name, "--json", "some text").stdout.splitlines()
        assert len(rows) == 1 and json.loads(rows[0])["label"] in ("depressive", "not depressive")
