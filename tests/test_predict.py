import json
import os
import shutil
import subprocess
import sys
import time

import pandas as pd
import pytest
import torch
from conftest import ONE_QUICK_EPOCH, ROOT, assert_clean_failure, run_cli, run_main, run_train

import model as M
import train
from textclassifier import inference

FP32 = ("--precision", "fp32")
TEXTS = [
    "i feel hopeless and empty every single day",
    "our team won the cup today",
    "short",
    "made pancakes for the whole family and it was a lovely morning together",
]


@pytest.fixture(scope="module")
def trained(posts_csv, tmp_path_factory):
    """An adapter on the real MiniLM trained in this process, kept in memory, and the folder it was saved to."""
    out = tmp_path_factory.mktemp("adapters")
    args = train.parse_args(
        ["--data", posts_csv, "--output-dir", str(out), "--epochs", "1", "--batch-size", "16", "--max-length", "32"]
    )
    model, _ = train.run(args)
    tokenizer = M.load_tokenizer(M.OFFLINE_MINILM)
    return model, tokenizer, out / "depression-pfeiffer"


def predict_json(folder, *args, stdin="", new_process=False):
    """predict.py --json in full precision (in this process unless new_process): these tests compare answers within
    1e-5, which bf16 (the default on CPUs with native bf16) does not keep across batchings; bf16 prediction is tested
    in test_precision.py."""
    run = run_cli if new_process else run_main
    proc = run("predict.py", "--adapter", folder, "--json", *FP32, *args, stdin=stdin)
    return [json.loads(line) for line in proc.stdout.splitlines()]


@pytest.mark.slow
def test_saved_adapter_predicts_like_the_model_in_memory(trained):
    model, tokenizer, folder = trained
    expected = inference.predict_proba(model, tokenizer, TEXTS, max_length=32, precision="fp32")
    rows = predict_json(folder, *TEXTS, new_process=True)  # a fresh base model + load_adapter
    got = torch.tensor([[r["probabilities"]["not depressive"], r["probabilities"]["depressive"]] for r in rows])
    assert [r["text"] for r in rows] == TEXTS
    assert torch.allclose(got, expected, atol=1e-5), (got, expected)
    assert (expected[:, 1] - expected[0, 1]).abs().max() > 1e-3  # the texts really get different answers


@pytest.mark.slow
def test_predict_proba_keeps_input_order_whatever_the_batching(trained):
    model, tokenizer, _ = trained
    one_by_one = torch.cat([inference.predict_proba(model, tokenizer, [t], 32, precision="fp32") for t in TEXTS])
    in_threes = inference.predict_proba(model, tokenizer, TEXTS, 32, batch_size=3, precision="fp32")
    assert torch.allclose(in_threes, one_by_one, atol=1e-5)


@pytest.mark.slow
def test_json_fields_follow_the_pipeline_names(trained):
    row = predict_json(trained[2], TEXTS[0])[0]
    assert set(row) == {"text", "label", "score", "probabilities"}
    assert row["label"] in ("depressive", "not depressive")
    assert row["score"] == max(row["probabilities"].values())
    assert abs(sum(row["probabilities"].values()) - 1) < 1e-5


@pytest.mark.slow
def test_plain_output_has_label_and_probability_per_text(trained):
    proc = run_cli("predict.py", "--adapter", trained[2], *TEXTS[:2])
    lines = proc.stdout.splitlines()
    assert len(lines) == 2
    for line, text in zip(lines, TEXTS[:2]):
        label = "not depressive" if line.startswith("not depressive") else "depressive"
        assert line.startswith(label) and text[:20] in line
        assert 0.5 <= float(line[len(label) :].split()[0]) <= 1
    assert proc.stderr.count("overwrit") == 0 and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_text_file_csv_file_and_stdin(trained, tmp_path):
    folder = trained[2]
    (tmp_path / "posts.txt").write_text(f"{TEXTS[0]}\n\n{TEXTS[1]}\n")
    (tmp_path / "posts.csv").write_text(f"clean_text,other\n{TEXTS[2]},1\n{TEXTS[3]},2\n")
    assert [r["text"] for r in predict_json(folder, "--file", tmp_path / "posts.txt")] == TEXTS[:2]
    assert [r["text"] for r in predict_json(folder, "--file", tmp_path / "posts.csv")] == TEXTS[2:]
    assert [r["text"] for r in predict_json(folder, "-", stdin="\n".join(TEXTS) + "\n")] == TEXTS


@pytest.mark.slow
def test_output_file_holds_every_result_in_input_order(trained, tmp_path):
    folder = trained[2]
    posts = [f"{TEXTS[i % 4]} {i}" for i in range(11)]
    (tmp_path / "posts.txt").write_text("\n".join(posts) + "\n")
    printed = predict_json(folder, "--file", tmp_path / "posts.txt")
    proc = run_main(
        "predict.py", "--adapter", folder, "--file", tmp_path / "posts.txt", "--chunk-size", "3",
        "--output", tmp_path / "out.jsonl", *FP32,
    )  # fmt: skip
    assert proc.stdout == "" and "classifying" in proc.stderr  # results go to the file, the bar to stderr
    written = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [r["text"] for r in written] == posts
    assert all(abs(a["score"] - b["score"]) < 1e-5 and a["label"] == b["label"] for a, b in zip(written, printed))
    posts_file, csv_file = tmp_path / "posts.txt", tmp_path / "out.csv"
    run_main("predict.py", "--adapter", folder, "--file", posts_file, "--output", csv_file, *FP32)
    table = pd.read_csv(tmp_path / "out.csv")
    assert list(table.columns) == ["text", "label", "score", "p_not depressive", "p_depressive"]
    assert table["text"].tolist() == posts and (table["score"] - [r["score"] for r in printed]).abs().max() < 1e-5


@pytest.mark.slow
def test_results_stream_out_chunk_by_chunk_and_a_killed_run_keeps_them(trained, tmp_path):
    """With --chunk-size 2, the first two posts' results arrive while stdin is still open; killed then,
    the --output file keeps them, whole."""
    for output in [None, tmp_path / "out.jsonl"]:
        args = ["--output", str(output)] if output else ["--json"]
        proc = subprocess.Popen(
            [sys.executable, "predict.py", "--adapter", str(trained[2]), "--chunk-size", "2", *args, "-"],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        proc.stdin.write(f"{TEXTS[0]}\n{TEXTS[1]}\n")
        proc.stdin.flush()
        if output is None:
            lines = [proc.stdout.readline(), proc.stdout.readline()]  # blocks until they are printed
        else:
            deadline = time.monotonic() + 300
            while not (output.exists() and output.read_text().count("\n") == 2):
                assert time.monotonic() < deadline and proc.poll() is None
                time.sleep(0.05)
            lines = output.read_text().splitlines()
        assert proc.poll() is None  # still waiting for more input
        proc.kill()
        proc.wait()
        assert [json.loads(line)["text"] for line in lines] == TEXTS[:2]


@pytest.mark.slow
def test_full_model_folder_predicts_too(tiny_bert, posts_csv, tmp_path):
    run_train(tiny_bert, posts_csv, tmp_path, "--mode", "full", *ONE_QUICK_EPOCH, run=run_main)
    rows = predict_json(tmp_path / "depression-full", *TEXTS)
    assert len(rows) == 4 and all(abs(sum(r["probabilities"].values()) - 1) < 1e-5 for r in rows)


def test_without_a_trained_adapter_it_says_how_to_train_one(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default adapters/... is missing here
    proc = run_main("predict.py", "some text", check=False)
    assert_clean_failure(proc, "python train.py --mode adapter")


@pytest.mark.slow
@pytest.mark.parametrize(
    "problem",
    [
        "missing folder",
        "incomplete folder",
        "not an adapter",
        "other base model",
        "empty text",
        "no text",
        "damaged training.json",
        "output exists",
        "output suffix",
        "file without posts",
    ],
)
def test_bad_input_gets_one_line_and_exit_2(problem, trained, tmp_path):
    folder = tmp_path / "adapter"
    shutil.copytree(trained[2], folder)
    args, words = ["some text"], []
    if problem == "missing folder":
        folder, words = tmp_path / "typo", ["no trained adapter"]
    elif problem == "incomplete folder":
        (folder / "adapter.safetensors").unlink()
        (folder / "model_head.safetensors").unlink()
        words = ["incomplete"]
    elif problem == "not an adapter":
        folder = tmp_path / "random"
        folder.mkdir()
        (folder / "notes.txt").write_text("hello")
        words = ["not a folder written by train.py"]
    elif problem == "other base model":
        args, words = ["--model", "bert-base-uncased", "some text"], ["was trained on", "not bert-base-uncased"]
    elif problem == "empty text":
        args, words = ["fine", "  "], ["text 2 is empty"]
    elif problem == "no text":
        args, words = [], ["no text to predict"]
    elif problem == "damaged training.json":
        (folder / "training.json").write_text("{not json")
        words = ["damaged"]
    elif problem == "output exists":
        (tmp_path / "done.jsonl").write_text("kept\n")
        args, words = ["--output", tmp_path / "done.jsonl", "some text"], ["exists", "never written over"]
    elif problem == "output suffix":
        args, words = ["--output", tmp_path / "out.xlsx", "some text"], [".jsonl or .csv"]
    elif problem == "file without posts":
        (tmp_path / "blank.txt").write_text("\n  \n")
        args, words = ["--file", tmp_path / "blank.txt"], ["holds no posts"]
    before = {p.name: p.read_bytes() for p in trained[2].iterdir()}
    proc = run_main("predict.py", "--adapter", folder, *args, check=False)
    assert_clean_failure(proc, *words)
    assert {p.name: p.read_bytes() for p in trained[2].iterdir()} == before
    if problem == "output exists":
        assert (tmp_path / "done.jsonl").read_text() == "kept\n"


def test_help_mentions_responsible_use():
    assert "not a diagnostic instrument" in run_main("predict.py", "--help").stdout
