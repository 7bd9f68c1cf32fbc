"""Any number of classes: train -> save -> reload -> predict for both modes, per-class metrics against scikit-learn,
class weights, refusals."""

import json

import numpy as np
import pandas as pd
import pytest
from conftest import assert_clean_failure, run_cli, run_main
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score
from sklearn.utils.class_weight import compute_class_weight

import data
from textclassifier import inference, metrics

WORDS = {
    "anxious": ["worried sick", "panic attack", "so nervous"],
    "glad": ["really happy", "great news", "sunny"],
    "sad": ["hopeless", "empty inside", "crying again"],
}


def three_classes(sizes=None):
    sizes = sizes or {"anxious": 40, "glad": 20, "sad": 40}
    return pd.DataFrame(
        [(f"i feel {WORDS[c][i % 3]} today number {i}", c) for c in WORDS for i in range(sizes[c])],
        columns=["text", "label"],
    )


@pytest.fixture(scope="module")
def three_csv(tmp_path_factory):
    path = tmp_path_factory.mktemp("three") / "three.csv"
    three_classes().to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def runs(tiny_bert, three_csv, tmp_path_factory):
    out = tmp_path_factory.mktemp("k-runs")
    for mode in ("adapter", "full"):  # in this process (train.py in new processes: tests/test_train.py)
        run_main(
            "train.py",
            "--model",
            tiny_bert,
            "--data",
            three_csv,
            "--mode",
            mode,
            "--epochs",
            "3",
            "--lr",
            "5e-3",
            "--max-length",
            "16",
            "--batch-size",
            "8",
            "--output-dir",
            out,
            "--name",
            mode,
            "--class-weights",
            "balanced",
            "--metric",
            "macro_f1",
        )
    return out


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["adapter", "full"])
def test_three_classes_train_save_reload_and_predict(runs, three_csv, mode):
    folder = runs / mode
    info = json.loads((folder / "training.json").read_text())
    assert info["label_names"] == ["anxious", "glad", "sad"] and info["metric"] == "macro_f1"
    _, val, _, _ = data.load_splits(str(three_csv), seed=info["split_seed"])
    assert sorted(set(val["label"])) == [0, 1, 2]  # the stratified split keeps every class on both sides
    probs = inference.classify(inference.load(folder), list(val["text"]))
    assert probs.shape == (len(val), 3)
    pred, truth = probs.argmax(-1).numpy(), np.array(val["label"])
    best = info["best"]  # what the run measured on the same posts, recomputed here with scikit-learn
    assert best["accuracy"] == pytest.approx(accuracy_score(truth, pred))
    assert best["macro_f1"] == pytest.approx(f1_score(truth, pred, average="macro"))
    assert best["confusion_matrix"] == confusion_matrix(truth, pred, labels=[0, 1, 2]).tolist()
    assert set(best["per_class"]) == {"anxious", "glad", "sad"}
    assert sum(c["support"] for c in best["per_class"].values()) == len(val)
    proc = run_main("predict.py", "--adapter", folder, "--json", "i feel panic attack today")
    row = json.loads(proc.stdout)
    assert set(row["probabilities"]) == {"anxious", "glad", "sad"} and row["label"] in row["probabilities"]


@pytest.mark.slow
def test_balanced_class_weights_are_scikit_learns(runs, three_csv):
    info = json.loads((runs / "adapter" / "training.json").read_text())
    train_ds, _, _, _ = data.load_splits(str(three_csv), seed=info["split_seed"])
    expected = compute_class_weight("balanced", classes=np.arange(3), y=np.array(train_ds["label"]))
    assert info["class_weights"] == pytest.approx(expected.tolist())
    assert info["class_weights"][1] > info["class_weights"][0]  # the small class weighs more


def test_metrics_on_a_known_case():
    m = metrics.label_metrics([0, 1, 2, 2, 1, 0], [0, 1, 2, 1, 1, 2], ["a", "b", "c"])
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["confusion_matrix"] == [[1, 0, 0], [0, 2, 1], [1, 0, 1]]
    assert m["per_class"]["b"] == {
        "precision": 1.0,
        "recall": pytest.approx(2 / 3),
        "f1": pytest.approx(0.8),
        "support": 3,
    }
    assert m["macro_f1"] == pytest.approx((2 / 3 + 0.8 + 0.5) / 3) and m["f1"] == m["macro_f1"]
    binary = metrics.label_metrics([1, 1, 0, 0], [1, 0, 0, 1], ["not depressive", "depressive"])
    assert binary["precision"] == 0.5 and binary["recall"] == 0.5 and binary["confusion_matrix"] == [[1, 1], [1, 1]]


@pytest.mark.slow
def test_evaluate_reports_a_three_class_confusion_matrix(runs, three_csv, tmp_path):
    out = tmp_path / "eval.json"
    run_cli(
        "assess.py",
        "--adapter",
        runs / "adapter",
        "--data",
        three_csv,
        "--group-column",
        "label",
        "--output",
        out,
        "--bootstrap",
        "20",
    )
    result = json.loads(out.read_text())[str(runs / "adapter")]
    assert np.array(result["confusion_matrix"]).shape == (3, 3) and result["n"] == 100
    assert set(result["groups"]["sad"]) == {"anxious", "glad", "sad"}
    assert out.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("problem", ["one class", "a class of one post"])
def test_a_class_that_cannot_be_trained_is_refused_with_one_line(problem, tiny_bert, tmp_path):
    df = (
        three_classes({"anxious": 10, "glad": 1, "sad": 10})
        if problem != "one class"
        else three_classes({"anxious": 10, "glad": 0, "sad": 0})
    )
    df.to_csv(tmp_path / "d.csv", index=False)
    proc = run_main(
        "train.py", "--model", tiny_bert, "--data", tmp_path / "d.csv", "--output-dir", tmp_path / "out", check=False
    )
    assert_clean_failure(proc, "found 1: anxious" if problem == "one class" else "class 'glad' has 1 post")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*.safetensors"))
