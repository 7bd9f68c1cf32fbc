"""Several adapters on one base model (inference.load_shared, predict.py --adapter A B C): one Parallel pass gives
each adapter's probabilities alone, refused combinations get one line, the output formats, older folders load."""

import csv
import json
import shutil

import pytest
import torch
from conftest import assert_clean_failure, run_cli, run_main

import train
from errors import ModelError
from textclassifier import inference

TEXTS = ["I feel hopeless and empty every day", "our team won the cup today!", "short", "a b c d e f g h i j"] * 3
# one worker trains the adapters (session-scoped), once
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("shared")]


@pytest.fixture(scope="session")
def folders(tiny_bert, posts_csv, tmp_path_factory):
    """Adapters (and a full model, a LoRA adapter, an adapter on another base) trained briefly on the tiny BERT."""
    out = tmp_path_factory.mktemp("shared")
    other_base = tmp_path_factory.mktemp("other-base")
    shutil.copytree(tiny_bert, other_base, dirs_exist_ok=True)
    runs = {
        "a": ["--seed", "1"],
        "a2": ["--seed", "7"],
        "b": ["--seed", "2", "--normalize-text"],
        "c": ["--adapter-config", "houlsby", "--seed", "3"],
        "d": ["--leave-out", "0", "--seed", "4"],
        "e": ["--leave-out", "0", "--seed", "5"],
        "full": ["--mode", "full"],
        "lora": ["--adapter-config", "lora"],
        "other": ["--model", str(other_base)],
        "normalised": ["--seed", "6", "--normalize-text"],
    }
    for name, flags in runs.items():
        model = [] if "--model" in flags else ["--model", tiny_bert]
        args = [*model, "--data", posts_csv, "--output-dir", str(out), "--name", name, "--epochs", "1", *flags]
        train.run(train.parse_args([*args, "--batch-size", "8", "--max-length", "32", "--lr", "1e-2"]))
    return out


def alone(folder):
    return inference.classify(inference.load(folder), TEXTS)


def test_one_pass_gives_each_adapters_probabilities_alone(folders):
    names = ["a", "c", "b", "normalised", "d", "e", "a2"]
    shared = inference.load_shared([folders / n for n in names])
    # Pfeiffer in every layer on raw texts (a, a2); Houlsby (c); Pfeiffer on normalised texts (b, normalised);
    # Pfeiffer without an adapter in layer 0 (d, e)
    assert shared.passes == [["a", "a2"], ["c"], ["b", "normalised"], ["d", "e"]]
    by_task = inference.classify_shared(shared, TEXTS)
    assert list(by_task) == names
    for name in names:
        assert by_task[name].shape == (len(TEXTS), 2)
        assert torch.allclose(by_task[name], alone(folders / name), atol=1e-5), name
    assert not torch.allclose(by_task["a"], by_task["a2"], atol=1e-3)  # different adapters: different answers
    # one base model: the weights outside the adapters and heads are there once, whatever the number of adapters
    assert base_weights(shared.model) == base_weights(inference.load(folders / "a").model)


def base_weights(model):
    return sum(p.numel() for n, p in model.named_parameters() if ".adapters." not in n and not n.startswith("heads."))


@pytest.mark.parametrize(
    "names, words",
    [
        (["a", "full"], ["fully fine-tuned", "alone"]),
        (["a", "lora"], ["lora adapter", "merged into the base weights"]),
        (["a", "other"], ["trained on", "same one"]),
        (["a", "a"], ["both named a"]),
    ],
)
def test_combinations_that_cannot_share_a_base_are_refused_with_one_line(folders, names, words):
    with pytest.raises(ModelError) as error:
        inference.load_shared([folders / n for n in names])
    for word in words:
        assert word in str(error.value)
    proc = run_main("predict.py", "--adapter", *[folders / n for n in names], "some post", check=False)
    assert_clean_failure(proc, *words)


def test_several_adapters_need_the_torch_backend(folders):
    proc = run_main("predict.py", "--adapter", folders / "a", folders / "c", "--backend", "onnx", "x", check=False)
    assert_clean_failure(proc, "--backend onnx", "share a base model on torch")


def test_predict_prints_every_tasks_answer_per_post(folders, tmp_path):
    a, c = folders / "a", folders / "c"
    expected = {"a": alone(a), "c": alone(c)}
    proc = run_cli("predict.py", "--adapter", a, c, *TEXTS[:2])  # the posts follow the folders
    lines = proc.stdout.splitlines()
    assert len(lines) == 2 and lines[0].startswith("a: ") and " | c: " in lines[0] and lines[0].endswith(TEXTS[0])
    rows = [
        json.loads(line) for line in run_main("predict.py", "--adapter", a, c, "--json", *TEXTS).stdout.splitlines()
    ]
    assert [r["text"] for r in rows] == TEXTS
    for i, row in enumerate(rows):
        assert list(row["results"]) == ["a", "c"]
        for task, answer in row["results"].items():
            p = list(answer["probabilities"].values())
            assert abs(p[1] - float(expected[task][i, 1])) < 1e-5 and answer["score"] == max(p)
            assert answer["label"] == ["not depressive", "depressive"][p.index(max(p))]
    posts = tmp_path / "posts.txt"
    posts.write_text("\n".join(TEXTS) + "\n")
    run_main("predict.py", "--adapter", a, c, "--file", posts, "--output", tmp_path / "out.csv", "--chunk-size", "5")
    with open(tmp_path / "out.csv") as handle:
        table = list(csv.reader(handle))
    assert table[0] == [
        "text", "a_label", "a_score", "a_p_not depressive", "a_p_depressive",
        "c_label", "c_score", "c_p_not depressive", "c_p_depressive",
    ]  # fmt: skip
    assert [r[0] for r in table[1:]] == TEXTS  # every post once, in order, across chunks of 5
    assert all(abs(float(r[4]) - float(expected["a"][i, 1])) < 1e-5 for i, r in enumerate(table[1:]))
    run_main("predict.py", "--adapter", a, c, "--file", posts, "--output", tmp_path / "out.jsonl")
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert len(rows) == len(TEXTS) and all(list(r["results"]) == ["a", "c"] for r in rows)


def test_a_folder_saved_before_this_change_still_loads(folders, tmp_path):
    """training.json as train.py wrote it before the shared base (no data_set, length_expert,
    by_source): the folder loads alone and beside another, with the same probabilities."""
    old = tmp_path / "old"
    shutil.copytree(folders / "a", old)
    info = json.loads((old / "training.json").read_text())
    for key in ("data_set", "length_expert", "attention"):
        info.pop(key)
    info["best"].pop("by_source", None)
    (old / "training.json").write_text(json.dumps(info))
    expected = alone(folders / "a")
    assert torch.allclose(alone(old), expected, atol=1e-6)
    by_task = inference.classify_shared(inference.load_shared([old, folders / "c"]), TEXTS)
    assert torch.allclose(by_task["old"], expected, atol=1e-5)


def test_shared_benchmark_measures_both_ways_on_the_same_posts(tiny_bert, tmp_path):
    run_cli("-m", "bench.shared", "--quick", "--model", tiny_bert, "--counts", "2", "--work", tmp_path / "work",
            "--out", tmp_path)  # fmt: skip
    [result_file] = tmp_path.glob("shared-*-quick.json")
    result = json.loads(result_file.read_text())
    assert result["posts"] == 64
    runs = {(r["placement"], r["tasks"], r["way"]) for r in result["runs"]}
    assert runs == {(p, 2, w) for p in ("every layer", "upper half") for w in ("shared", "separate")} | {
        ("full", 2, "full")
    }
    for r in result["runs"]:
        assert r["posts_per_second"] > 0 and r["resident_mb"] > 0 and r["peak_mb"] >= r["resident_mb"] * 0.5
        assert r["passes"] == (1 if r["way"] == "shared" else r["tasks"])  # one Parallel pass for all tasks
        assert r["resident_after_load_mb"] > r["resident_before_load_mb"] > 0
    assert [(r["placement"], r["tasks"]) for r in result["summary"]] == [("every layer", 2), ("upper half", 2)]
    # storage: two full models against one base with two adapters, on disk as the folders hold them
    [storage] = result["storage"]
    work = tmp_path / "work"
    full_bytes = sum(f.stat().st_size for d in work.glob("tiny-bert0-full-*") for f in d.iterdir())
    assert storage["tasks"] == 2 and storage["disk_mb"]["full"] == pytest.approx(full_bytes / 1e6)
    assert storage["disk_mb"]["shared"] < storage["disk_mb"]["full"]
    assert storage["disk_vs_one_model"]["full"] == pytest.approx(2.0)
    table = result_file.with_suffix(".md").read_text()
    assert "| tiny-bert0 | upper half | 2 |" in table and "Storage as the original write-up counts it" in table
    assert result_file.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"
