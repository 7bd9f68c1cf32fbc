"""The default training data: the shipped Reddit Mental Health sample (its checksum, a local copy, damaged or missing
files), the label map, several sources split each on its own with per-source validation, --data original, the two
remedies against the length shortcut, and the behaviour and default-model commands on the tiny model."""

import hashlib
import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from accelerate import Accelerator
from conftest import REAL_DATA, assert_clean_failure, make_posts, run_cli, run_main, run_train
from huggingface_hub import ModelCard

import data
import model as M
import posts
from bench import behaviour
from errors import DataError
from textclassifier import training

SHARED_SAMPLE = REAL_DATA.parent / "reddit-mental-health-2019.csv"
MAPPED = data.parse_label_map(data.DEFAULT_LABEL_MAP)


def test_the_shipped_sample_loads_with_its_checksum_and_equals_the_shared_copy():
    table = data.load_table(data.REDDIT_MH)
    assert list(table.columns) == ["subreddit", "text"] and len(table) == 2859
    assert hashlib.sha256(data.REDDIT_MH.read_bytes()).hexdigest() == data.SHIPPED_SHA256[data.REDDIT_MH]
    assert table["subreddit"].value_counts().to_dict() == {
        s: 129 if s == "ForeverAlone" else 130
        for s in data.DEPRESSED_SUBREDDITS + data.SUPPORT_SUBREDDITS + data.CONTROL_SUBREDDITS
    }
    if SHARED_SAMPLE.exists():  # a local copy of the same posts loads as the same table
        pd.testing.assert_frame_equal(data.load_table(str(SHARED_SAMPLE)), table)


def test_a_changed_shipped_file_is_refused(tmp_path, monkeypatch):
    copy = tmp_path / data.REDDIT_MH.name
    shutil.copy(data.REDDIT_MH, copy)
    monkeypatch.setitem(data.SHIPPED_SHA256, copy.resolve(), data.SHIPPED_SHA256[data.REDDIT_MH])
    assert len(data.load_table(copy)) == 2859  # unchanged: loads
    copy.write_bytes(copy.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(DataError, match="not the file shipped with the project.*git checkout"):
        data.load_table(copy)


def test_the_label_map_names_every_subreddit_once():
    every = data.DEPRESSED_SUBREDDITS + data.SUPPORT_SUBREDDITS + data.CONTROL_SUBREDDITS
    assert sorted(MAPPED) == sorted(every) and len(every) == 22
    assert {MAPPED[s] for s in data.DEPRESSED_SUBREDDITS} == {"1"}
    assert {MAPPED[s] for s in data.CONTROL_SUBREDDITS} == {"0"}
    assert {MAPPED[s] for s in data.SUPPORT_SUBREDDITS} == {None}
    df, names, report = data.clean(data.load_table(data.REDDIT_MH), label_map=MAPPED, normalize=True)
    assert report["label_map_dropped"] == 130 * 12 + 129 and names == ["not depressive", "depressive"]
    assert report["per_label"] == {"not depressive": 7 * 130, "depressive": 2 * 130}
    assert df["text"].str.fullmatch(r"[a-z0-9 ]+").all()  # normalised as the depression data set was


def two_sources(tmp_path):
    """Two files with 0/1 labels, the second's posts distinct from the first's."""
    first, second = tmp_path / "first.csv", tmp_path / "second.csv"
    make_posts(50).to_csv(first, index=False)
    other = make_posts(30)
    other["text"] = "other source " + other["text"]
    other.to_csv(second, index=False)
    return str(first), str(second)


def test_several_sources_are_split_each_on_its_own(tmp_path):
    first, second = two_sources(tmp_path)
    alone_train, alone_val, _, _ = data.load_splits(first)
    train_ds, val_ds, _, info = data.load_splits([first, second])
    assert info["sources"]["first"] == {"train": 84, "val": 16, "per_label": {"not depressive": 50, "depressive": 50}}
    assert info["sources"]["second"]["train"] + info["sources"]["second"]["val"] == 60
    assert [t for t, s in zip(val_ds["text"], val_ds["source"]) if s == "first"] == alone_val["text"]
    assert [t for t, s in zip(train_ds["text"], train_ds["source"]) if s == "first"] == alone_train["text"]
    assert not set(train_ds["text"]) & set(val_ds["text"])
    for name in ("first", "second"):  # stratified within each source: half of each validation part is class 1
        labels = [y for y, s in zip(val_ds["label"], val_ds["source"]) if s == name]
        assert sum(labels) * 2 == len(labels)


@pytest.mark.slow
def test_training_on_the_default_data_reports_validation_per_source(tiny_bert, tmp_path):
    args = ["--model", tiny_bert, "--output-dir", tmp_path, "--epochs", "1", "--max-length", "16"]
    proc = run_main("train.py", *args, "--max-train-samples", "64", "--batch-size", "16")  # DEPRESSION_DATA as set
    assert "split by source: depression-reddit-cleaned 6426 train / 1224 validation" in proc.stdout
    info = json.loads((tmp_path / "depression-pfeiffer" / "training.json").read_text())
    assert info["data_set"] == "default" and info["normalize_text"] and info["label_map"] == data.DEFAULT_LABEL_MAP
    by_source = info["best"]["by_source"]
    assert list(by_source) == ["depression-reddit-cleaned", "reddit-mental-health-2019", "other-senses"]
    assert by_source["depression-reddit-cleaned"]["n"] == 1224 and by_source["reddit-mental-health-2019"]["n"] == 188
    assert sum(r["n"] for r in by_source.values()) == info["val_size"] == info["best"]["val_examples"]
    assert set(by_source["reddit-mental-health-2019"]) == {"n", "accuracy", "class_0_flagged", "class_1_flagged", "auc"}
    # the default's remedies (data.DATA_SETS), on without a flag: the length expert, short copies, other senses
    assert info["length_expert"]["weight"] == 1.0 and info["short_copies"] and info["other_senses"]
    assert not info["masked_copies"] and list(info["copies"]) == ["short_copies"] and info["copies"]["short_copies"]
    assert f"short copies: {info['copies']['short_copies']} of 64 training posts" in proc.stdout
    proc = run_main("train.py", *args, "--data", "original", "--max-train-samples", "64", "--batch-size", "16")
    info = json.loads((tmp_path / "depression-original-pfeiffer" / "training.json").read_text())
    assert info["data_set"] == "original" and not info["normalize_text"] and info["label_map"] is None
    assert "by_source" not in info["best"] and info["val_size"] == 1224
    assert info["length_expert"] is None and not info["short_copies"] and not info["other_senses"]
    assert "copies" not in info and "short copies" not in proc.stdout


def test_a_missing_or_bad_data_file_gets_one_line_and_exit_2(tiny_bert, tmp_path):
    common = ["--model", tiny_bert, "--output-dir", tmp_path, "--epochs", "1"]
    proc = run_main("train.py", *common, "--data", tmp_path / "missing.parquet", check=False)
    assert_clean_failure(proc, "not found")
    bad = tmp_path / "bad.parquet"
    bad.write_text("not parquet")
    proc = run_main("train.py", *common, "--data", make_csv(tmp_path), bad, check=False)
    assert_clean_failure(proc, "cannot read", "bad.parquet")
    assert not any(tmp_path.rglob("*.safetensors"))


@pytest.mark.slow
def test_a_depression_data_variable_naming_a_missing_file_gets_one_line(tiny_bert, tmp_path):
    """DEPRESSION_DATA is read when the command runs: a new process, as a user sets it."""
    common = ["--model", tiny_bert, "--output-dir", tmp_path, "--epochs", "1"]
    proc = run_cli("train.py", *common, env={"DEPRESSION_DATA": str(tmp_path / "gone.csv")}, check=False)
    assert_clean_failure(proc, "gone.csv", "not found")
    assert not any(tmp_path.rglob("*.safetensors"))


def make_csv(tmp_path):
    path = tmp_path / "posts.csv"
    make_posts().to_csv(path, index=False)
    return path


def test_the_length_expert_is_a_product_of_experts_in_the_training_loss(tiny_bert):
    tokenizer = M.load_tokenizer(tiny_bert)
    texts = ["a b c", "a b c d e f g h i j k l", "x y", "p q r s t u v w x y z a b c d"] * 4
    ds = data.tokenize(data.Dataset.from_dict({"text": texts, "label": [0, 1, 0, 1] * 4}), tokenizer, 32)
    ds, figures = data.add_length_prior(ds, 2)
    assert figures["train_accuracy"] == 1.0  # length alone separates these posts
    prior = torch.tensor(ds[data.PRIOR_COLUMN])
    assert torch.allclose(prior.exp().sum(1), torch.ones(len(ds)))
    assert (prior[1::2, 1] > prior[1::2, 0]).all()  # the long posts: class 1 more likely

    model = M.build_model(tiny_bert, "adapter", data.LABEL_NAMES)
    batch = next(iter(data.train_loader(ds, tokenizer, 16, seed=0)))
    assert batch[data.PRIOR_COLUMN].shape == (16, 2)
    features = {k: v for k, v in batch.items() if k not in ("labels", data.PRIOR_COLUMN)}
    model.eval()  # no dropout: the same logits twice
    expected = torch.nn.functional.cross_entropy(model(**features).logits + batch[data.PRIOR_COLUMN], batch["labels"])
    accelerator = Accelerator(cpu=True)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    inputs, prior = data.split_prior(batch)
    loss = training.train_step(model, inputs, optimizer, None, accelerator, prior=prior)
    assert abs(float(loss) - float(expected.detach())) < 1e-5


@pytest.mark.slow
def test_behaviour_command_counts_every_case(tiny_bert, posts_csv, tmp_path):
    run_train(tiny_bert, posts_csv, tmp_path, "--epochs", "1", run=run_main)
    folder = tmp_path / "depression-pfeiffer"
    run_cli("-m", "bench.behaviour", "--adapter", folder, "--out", tmp_path, "--name", "tiny")
    [result_file] = tmp_path.glob("tiny-*.json")
    result = json.loads(result_file.read_text())
    cases = json.loads(behaviour.CASES.read_text())
    d = cases["d_invariance"]
    for part in behaviour.PARTS:
        expected = {test: len(cases[name][part]) for test, (name, _) in behaviour.TESTS.items() if test != "d"}
        expected["d"] = len(d["bases"][part]) * len(d["perturbations"])
        expected = {test: expected[test] for test in behaviour.TESTS}
        assert result["cases"][part] == expected
        model = result["models"][part][str(folder)]
        for test, n in expected.items():
            assert model[test]["cases"] == n and model[test]["passed"] + len(model[test]["failures"]) == n
            assert model[test]["pass_rate"] == model[test]["passed"] / n
        for test in "abcf":  # a flagged share is the pass rate (a, f) or its complement (b, c)
            flagged = model[test]["flagged"]
            assert np.isclose(flagged, model[test]["pass_rate"] if test in "af" else 1 - model[test]["pass_rate"])
        assert sum(model["d"]["flips_by_perturbation"].values()) == expected["d"] - model["d"]["passed"]
        assert f"Part `{part}`" in result_file.with_suffix(".md").read_text()
    assert sum(sum(result["cases"][part].values()) for part in behaviour.PARTS) >= 320
    assert "| " + str(folder) + " |" in result_file.with_suffix(".md").read_text()
    assert result_file.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"
    recorded = ModelCard.load(folder / "README.md").data.behaviour_suite  # the folder's card keeps the pass rates
    for part in behaviour.PARTS:
        rates = {t: round(result["models"][part][str(folder)][t]["pass_rate"], 4) for t in behaviour.TESTS}
        assert recorded[part] == rates


def test_every_behaviour_case_is_written_here_not_copied_from_the_training_data():
    texts = {
        posts.normalize_text(t) for part in behaviour.PARTS for t in behaviour.texts_of(behaviour.load_cases(part=part))
    }
    trained = set(data.load_table(data.REDDIT_MH)["text"].map(posts.normalize_text))
    if REAL_DATA.exists():
        trained |= set(data.load_table(str(REAL_DATA))["text"].astype(str).map(posts.normalize_text))
    assert len(texts) >= 250 and not texts & trained
