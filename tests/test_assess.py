"""assess.py: metrics against scikit-learn and hand-computed cases, groups, label maps, bad input; train.py with
several files, a label map and normalised texts."""

import json

import numpy as np
import pandas as pd
import pytest
from conftest import REDDIT_GROUPS as GROUPS
from conftest import assert_clean_failure, run_cli, run_main
from sklearn.metrics import accuracy_score, brier_score_loss, f1_score, roc_auc_score

import data
import posts
from errors import DataError
from textclassifier import inference, metrics

# labels and P(class 1) of six posts, worked out by hand below
LABELS = np.array([1, 1, 0, 0, 1, 0])
P1 = np.array([0.9, 0.4, 0.2, 0.6, 0.8, 0.1])


def test_metrics_on_a_case_worked_out_by_hand():
    r = metrics.probability_metrics(np.c_[1 - P1, P1], LABELS, resamples=0)
    assert r["accuracy"] == pytest.approx(4 / 6) and r["precision"] == pytest.approx(2 / 3)
    assert r["recall"] == pytest.approx(2 / 3) and r["f1"] == pytest.approx(2 / 3)
    assert r["auc"] == pytest.approx(8 / 9)  # 8 of the 9 (positive, negative) pairs are ordered right
    assert r["brier"] == pytest.approx(0.82 / 6)
    # confidences 0.9 0.6 0.8 0.6 0.8 0.9; the two at 0.6 are wrong: (2 x 0.6 + 2 x 0.2 + 2 x 0.1) / 6
    assert r["ece"] == pytest.approx(0.3)
    assert r["confusion_matrix"] == [[2, 1], [1, 2]]


def test_metrics_equal_scikit_learn_on_random_cases():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 500)
    p1 = np.clip(labels * 0.3 + rng.random(500) * 0.7, 0, 1)
    r = metrics.probability_metrics(np.c_[1 - p1, p1], labels, resamples=200, threshold=0.4)
    pred = (p1 >= 0.4).astype(int)
    assert r["accuracy"] == pytest.approx(accuracy_score(labels, pred))
    assert r["f1"] == pytest.approx(f1_score(labels, pred))
    assert r["auc"] == pytest.approx(roc_auc_score(labels, p1))
    assert r["brier"] == pytest.approx(brier_score_loss(labels, p1))
    for key in ("accuracy", "f1", "auc"):
        low, high = r[f"{key}_ci"]
        assert low <= r[key] <= high and high - low < 0.2


def test_group_shares_and_group_auc():
    groups = np.array(["a", "a", "b", "b", "a", "b"])
    shares, detail, aucs = metrics.group_results(np.c_[1 - P1, P1], groups, None, ["a:b"], 50, 0)
    assert shares == {"a": pytest.approx(2 / 3), "b": pytest.approx(1 / 3)}
    assert detail["a"]["n"] == 3 and detail["a"]["flagged_ci"][0] <= 2 / 3 <= detail["a"]["flagged_ci"][1]
    assert aucs["a:b"]["auc"] == pytest.approx(roc_auc_score([1, 1, 1, 0, 0, 0], [0.9, 0.4, 0.8, 0.2, 0.6, 0.1]))


def test_label_maps_and_normalising():
    mapping = data.parse_label_map(["1=ds,dsf", "0=bc", "drop=nd"])
    assert mapping == {"ds": "1", "dsf": "1", "bc": "0", "nd": None}
    labels, drop = data.map_labels(pd.Series(["ds", "bc", "nd", 1, 0.0]), mapping)
    assert (
        labels.tolist()[:2] == ["1", "0"]
        and labels.tolist()[3:] == ["1", "0"]
        and drop.tolist() == [False, False, True, False, False]
    )
    with pytest.raises(DataError, match="'ff' is not in --label-map"):
        data.map_labels(pd.Series(["ds", "ff"]), mapping)
    for bad in (["1"], ["=ds"], ["1=ds", "0=ds"]):
        with pytest.raises(DataError):
            data.parse_label_map(bad)
    assert posts.normalize_text("I'm SO tired...  of it, 2day!") == "i m so tired of it 2day"


def test_holdout_parts_take_every_row_once_in_each_groups_proportions():
    df = pd.DataFrame({"text": [f"post {i}" for i in range(70)], "label": [GROUPS[i % 7] for i in range(70)]})
    parts = data.holdout_parts(df, "label", {"train": 0.4, "threshold": 0.2, "test": 0.4}, seed=0)
    assert sorted(pd.concat(parts.values())["text"]) == sorted(df["text"])
    for name, size in (("train", 4), ("threshold", 2), ("test", 4)):
        assert parts[name]["label"].value_counts().to_dict() == {g: size for g in GROUPS}
    again = data.holdout_parts(df, "label", {"train": 0.4, "threshold": 0.2, "test": 0.4}, seed=0)
    assert again["test"].equals(parts["test"])


@pytest.fixture(scope="module")
def mixed_run(tiny_bert, posts_csv, groups_csv, tmp_path_factory):
    """train.py on two files: the posts (0/1) and four of the groups mapped to 1/0, the rest dropped, normalised."""
    out = tmp_path_factory.mktemp("mixed")
    proc = run_cli(
        "train.py",
        "--model",
        tiny_bert,
        "--data",
        posts_csv,
        groups_csv,
        "--label-map",
        "1=ds,dsf",
        "0=bc,ff",
        "drop=do,ndf,nd",
        "--normalize-text",
        "--epochs",
        "1",
        "--max-length",
        "32",
        "--output-dir",
        out,
        "--name",
        "mixed",
    )
    return out / "mixed", proc


@pytest.mark.slow
def test_training_on_several_files_with_a_label_map(mixed_run, posts_csv, groups_csv):
    folder, proc = mixed_run
    info = json.loads((folder / "training.json").read_text())
    assert info["data"] == [posts_csv, str(groups_csv)]
    assert info["label_map"] == ["1=ds,dsf", "0=bc,ff", "drop=do,ndf,nd"] and info["normalize_text"] is True
    assert info["cleaning"]["label_map_dropped"] == 30 and info["train_size"] + info["val_size"] == 80 + 40
    assert info["label_names"] == ["not depressive", "depressive"]
    assert "30 by --label-map" in proc.stdout


@pytest.mark.slow
def test_a_model_trained_on_normalised_texts_normalises_what_it_classifies(mixed_run):
    loaded = inference.load(mixed_run[0])
    raw, clean = (
        inference.classify(loaded, ["I FEEL HOPELESS -- and EMPTY!!!"]),
        inference.classify(loaded, ["i feel hopeless and empty"]),
    )
    assert np.allclose(raw.numpy(), clean.numpy())


@pytest.mark.slow
def test_assess_cli_reports_groups_and_writes_json_and_markdown(mixed_run, groups_csv, tmp_path):
    folder = mixed_run[0]
    out = tmp_path / "eval.json"
    proc = run_cli(
        "assess.py",
        "--adapter",
        folder,
        "--data",
        groups_csv,
        "--group-column",
        "label",
        "--label-map",
        "1=ds,dsf,do",
        "0=bc,ff,ndf,nd",
        "--group-auc",
        "ds:nd",
        "do:nd",
        "--output",
        out,
        "--bootstrap",
        "50",
    )
    result = json.loads(out.read_text())[str(folder)]
    for key in ("accuracy", "auc", "ece", "brier", "confusion_matrix", "groups", "accuracy_ci", "group_auc"):
        assert key in result
    posts = pd.read_csv(groups_csv)
    p1 = inference.classify(inference.load(folder), posts["text"].tolist())[:, 1].numpy()
    for g in GROUPS:  # the share flagged = what the model predicts for that group's posts
        assert result["groups"][g] == pytest.approx((p1[posts["label"] == g] >= 0.5).mean())
    labels = posts["label"].isin(GROUPS[:3]).astype(int)
    assert result["auc"] == pytest.approx(roc_auc_score(labels, p1), abs=1e-6)
    assert sum(map(sum, result["confusion_matrix"])) == 70
    table = out.with_suffix(".md").read_text()
    assert "| ds:nd | do:nd |" in table and str(folder) in table and table in proc.stdout


@pytest.mark.slow
def test_assess_normalises_the_texts_when_asked(mixed_run, groups_csv, tmp_path):
    """--normalize-text runs (it used to crash: the table of posts hid the posts module) and, for a model that
    normalises what it classifies itself, changes nothing."""
    folder = mixed_run[0]
    args = [
        "--adapter",
        folder,
        "--data",
        groups_csv,
        "--label-map",
        "1=ds,dsf,do",
        "0=bc,ff,ndf,nd",
        "--bootstrap",
        "0",
    ]
    results = {}
    for flags in ([], ["--normalize-text"]):
        out = tmp_path / f"{len(flags)}.json"
        run_main("assess.py", *args, *flags, "--output", out)
        results[bool(flags)] = json.loads(out.read_text())[str(folder)]
    assert results[True]["n"] == 70
    assert results[True]["accuracy"] == results[False]["accuracy"] and results[True]["auc"] == results[False]["auc"]


@pytest.mark.slow
@pytest.mark.parametrize(
    "problem",
    [
        "unknown column",
        "unmapped labels",
        "unreadable file",
        "missing folder",
        "not a class",
        "output exists",
        "bad map",
        "unknown group",
    ],
)
def test_bad_input_gets_one_line_and_exit_2(problem, mixed_run, groups_csv, tmp_path):
    folder = mixed_run[0]
    args = ["--adapter", folder, "--data", groups_csv, "--label-map", "1=ds,dsf,do", "0=bc,ff,ndf,nd"]
    if problem == "unknown column":
        args, words = args + ["--group-column", "subreddit"], ["subreddit"]
    elif problem == "unmapped labels":
        args, words = args[:4] + ["--label-map", "1=ds,dsf,do", "0=bc,ff,ndf"], ["'nd'", "--label-map"]
    elif problem == "unreadable file":
        bad = tmp_path / "bad.parquet"
        bad.write_text("not parquet")
        args, words = ["--adapter", folder, "--data", bad], ["cannot read"]
    elif problem == "missing folder":
        args, words = args + ["--adapter", tmp_path / "nothing"], ["no trained adapter"]
    elif problem == "not a class":
        args, words = args[:4], ["'bc' is not a class", "--label-map"]
    elif problem == "output exists":
        (tmp_path / "r.json").write_text("{}")
        args, words = args + ["--output", tmp_path / "r.json"], ["exists"]
    elif problem == "bad map":
        args, words = args[:4] + ["--label-map", "1ds"], ["TARGET=VALUE"]
    else:
        args, words = args + ["--group-column", "label", "--group-auc", "ds:xx"], ["'xx'"]
    proc = run_main("assess.py", *args, check=False)
    assert_clean_failure(proc, *words)
    if problem == "output exists":
        assert (tmp_path / "r.json").read_text() == "{}"  # not written over
