"""export.py and the ONNX backends of predict.py: each backend's probabilities against torch's, the fast path
without torch, refusal of stale and unexportable folders, bad input through every backend."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from conftest import (
    FakeHub,
    assert_clean_failure,
    fill_hub_cache,
    folder_files,
    int8_copy,
    make_posts,
    run_cli,
    run_main,
)

import train
from textclassifier import exporting, hardware, inference

TEXTS = ["i feel hopeless and empty every single day", "our team won the cup today", "short", "made pancakes"]
# one worker builds the exported folders (session-scoped), once
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("export")]
SETUPS = {
    "pfeiffer": ["--mode", "adapter"],
    "full": ["--mode", "full", "--lr", "1e-3"],
    "lora": ["--mode", "adapter", "--adapter-config", "lora"],
}


@pytest.fixture(scope="session")
def exported(tiny_bert, posts_csv, tmp_path_factory):
    """A Pfeiffer adapter, a full model and a LoRA adapter on the tiny BERT (trained in this process), each exported
    by export.py (the first in a new process, as a user runs it; the others in this one); {setup: (folder, export.py's
    output)}."""
    out = tmp_path_factory.mktemp("exported")
    folders = {}
    for name, flags in SETUPS.items():
        args = [*flags, "--model", tiny_bert, "--data", posts_csv, "--output-dir", str(out), "--name", name]
        train.run(train.parse_args([*args, "--epochs", "3", "--batch-size", "8", "--max-length", "32"]))
        export = run_cli if name == "pfeiffer" else run_main
        proc = export("export.py", "--adapter", out / name, "--data", posts_csv)
        folders[name] = (out / name, proc.stdout)
    return folders


def probabilities(folder, backend, texts=TEXTS):
    proc = run_main("predict.py", "--adapter", folder, "--backend", backend, "--precision", "fp32", "--json", *texts)
    return np.array([list(json.loads(line)["probabilities"].values()) for line in proc.stdout.splitlines()])


@pytest.mark.parametrize("setup", list(SETUPS))
def test_each_backend_gives_torchs_probabilities(exported, setup):
    folder, output = exported[setup]
    export = json.loads((folder / "onnx.json").read_text())
    assert {p.name for p in folder.iterdir()} >= {"model.onnx", "onnx.json", "onnx-tokenizer.json"}
    assert export["backends"]["onnx"]["verified"] and export["backends"]["onnx"]["max_difference"] <= 1e-4
    assert all(checks["batch_movement"] <= 1e-6 for checks in export["backends"].values())  # the new check, recorded
    assert "model.onnx: kept" in output
    card = (folder / "README.md").read_text()  # the model card, updated by export.py
    assert "## ONNX export" in card and "- onnx: verified" in card and "## Responsible use" in card
    torch_probs = probabilities(folder, "torch")
    assert np.abs(probabilities(folder, "onnx") - torch_probs).max() <= 1e-4
    assert export["checked_on"]["int8_kind"] == hardware.int8_kind()  # the kind of CPU the checks ran on
    assert f"checked against PyTorch by `export.py` on a CPU with {hardware.kind_name(hardware.int8_kind())}" in card
    int8 = export["backends"]["onnx-int8"]
    assert int8["posts"] == export["check_posts"] and 0 <= int8["label_changes"] <= int8["posts"]
    passed = int8["label_changes_beyond_margin"] == 0 and int8["mean_difference"] <= exporting.INT8_MEAN_DIFFERENCE
    assert int8["verified"] == passed and (int8["verified"] or "failed" in int8)
    if int8["verified"]:
        assert (probabilities(folder, "onnx-int8").argmax(1) == torch_probs.argmax(1)).mean() >= 0.75
        assert inference.fastest_export(folder) == "onnx-int8"
    else:  # not kept: not on disk, and auto falls back to fp32
        assert not (folder / "model.int8.onnx").exists() and inference.fastest_export(folder) == "onnx"


# posts of many lengths (1 to about 60 tokens), so that a batch pads most of its posts
MIXED = [" ".join(["so tired of everything"] * n) + f" day {n}" for n in (1, 9, 2, 14, 4, 1, 7, 12, 3, 5)] + TEXTS


EVERY_BACKEND = [("torch", "fp32"), ("torch", "bf16"), ("onnx", "fp32"), ("onnx-int8", "int8")]


@pytest.mark.parametrize("backend, precision", EVERY_BACKEND)
def test_a_posts_answer_is_its_own_in_any_batch(exported, backend, precision, tmp_path):
    """Every backend and precision classifies the same posts alone and in shuffled batches of mixed lengths
    (inference.batch_movement): the same probabilities within inference.BATCH_TOLERANCE, so a label can differ only
    where the probability is within that tolerance of the boundary. int8 is made here from the export's fp32 model
    (conftest.int8_copy: export.py keeps it only where its labels agree with fp32's, which a random tiny model may
    miss)."""
    folder = int8_copy(exported["pfeiffer"][0], tmp_path / "copy")
    loaded = inference.load(folder, backend=backend, precision=precision if backend == "torch" else "auto")
    tolerance = inference.BATCH_TOLERANCE[precision]
    assert inference.batch_movement(loaded, MIXED) <= tolerance
    alone = np.concatenate([inference.as_numpy(inference.classify(loaded, [text])) for text in MIXED])
    batched = inference.as_numpy(inference.classify(loaded, MIXED, batch_size=4, by_length=False))
    moved = batched.argmax(1) != alone.argmax(1)
    assert np.all(np.abs(alone[moved, 1] - 0.5) <= tolerance)


@pytest.mark.parametrize("backend", ["onnx-int8", "torch"])
def test_predict_py_answers_a_post_the_same_in_any_batch_size(exported, backend, tmp_path):
    """predict.py --file with batches of 1, 4 and 64 (length-sorted, mixed lengths in each): the same labels and
    probabilities within the backend's tolerance (fp32 and int8: 1e-6)."""
    folder = int8_copy(exported["pfeiffer"][0], tmp_path / "copy")
    pd.DataFrame({"text": MIXED}).to_csv(tmp_path / "mixed.csv", index=False)
    args = ["predict.py", "--adapter", folder, "--backend", backend, "--precision", "fp32", "--json", "--file"]
    rows = {}
    for size in (1, 4, 64):
        proc = run_main(*args, tmp_path / "mixed.csv", "--batch-size", size)
        rows[size] = [json.loads(line) for line in proc.stdout.splitlines()]
    probs = {size: np.array([list(r["probabilities"].values()) for r in rows[size]]) for size in rows}
    assert [r["text"] for r in rows[64]] == MIXED and [r["label"] for r in rows[1]] == [r["label"] for r in rows[64]]
    assert max(np.abs(probs[size] - probs[1]).max() for size in (4, 64)) <= 1e-6


def test_predict_py_says_when_int8_runs_on_another_kind_of_cpu_than_its_check(exported, tmp_path):
    """onnx.json records the kind of CPU export.py checked on; predict.py on int8 elsewhere says so in one line, with
    the command that checks it here, and still answers; on the same kind, or on fp32, it says nothing."""
    folder = int8_copy(exported["pfeiffer"][0], tmp_path / "copy")
    record = json.loads((folder / "onnx.json").read_text())
    other = ["avx2"] if hardware.int8_kind() != ["avx2"] else ["avx2", "avx512bw", "avx512_vnni"]
    (folder / "onnx.json").write_text(json.dumps(record | {"checked_on": {"cpu": "elsewhere", "int8_kind": other}}))
    proc = run_cli("predict.py", "--adapter", folder, "--backend", "onnx-int8", TEXTS[0])
    assert proc.stderr.count("note:") == 1 and proc.stderr.count("\n") == 1, proc.stderr
    assert f"checked on a CPU with {hardware.kind_name(other)}" in proc.stderr
    assert f"python export.py --adapter {folder} --overwrite checks it here" in proc.stderr and proc.stdout
    assert "note:" not in run_main("predict.py", "--adapter", folder, "--backend", "onnx", TEXTS[0]).stderr
    (folder / "onnx.json").write_text(json.dumps(record | {"checked_on": {"int8_kind": hardware.int8_kind()}}))
    assert "note:" not in run_main("predict.py", "--adapter", folder, "--backend", "onnx-int8", TEXTS[0]).stderr


def test_export_keeps_no_int8_model_whose_answers_move_with_the_batch(exported, tmp_path, monkeypatch):
    """The int8 model run as before (several posts per call: its scales then cover the whole padded batch) fails
    export.py's new check: one line says so, and the file is not kept."""
    folder = tmp_path / "copy"
    shutil.copytree(exported["pfeiffer"][0], folder)
    opened = inference.open_onnx

    def batched(*args, **kwargs):
        model = opened(*args, **kwargs)
        model.one_post_per_call = False
        return model

    monkeypatch.setattr(inference, "open_onnx", batched)
    proc = run_main("export.py", "--adapter", folder, "--overwrite", "--check-posts", "60")
    line = next(line for line in proc.stdout.splitlines() if line.startswith("model.int8.onnx"))
    assert "NOT kept, a post's probabilities move by up to" in line and "with the posts that share its batch" in line
    assert not (folder / "model.int8.onnx").exists() and inference.fastest_export(folder) == "onnx"
    assert "move" in json.loads((folder / "onnx.json").read_text())["backends"]["onnx-int8"]["failed"]


def test_the_onnx_path_runs_without_torch_or_transformers(exported, posts_csv, tmp_path):
    """predict.py on the ONNX path with torch and transformers made unimportable: the same results as torch's,
    for arguments and for a file written as .jsonl."""
    folder = exported["pfeiffer"][0]
    blocked = (
        "import runpy, sys; sys.modules['torch'] = sys.modules['transformers'] = None; "
        "sys.argv = ['predict.py', *sys.argv[1:]]; runpy.run_path('predict.py', run_name='__main__')"
    )
    proc = run_cli("-c", blocked, "--adapter", folder, "--backend", "onnx", "--json", *TEXTS)
    onnx_probs = [list(json.loads(line)["probabilities"].values()) for line in proc.stdout.splitlines()]
    assert np.abs(np.array(onnx_probs) - probabilities(folder, "torch")).max() <= 1e-4
    out = tmp_path / "results.jsonl"
    run_cli("-c", blocked, "--adapter", folder, "--file", posts_csv, "--output", out)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["text"] for r in rows] == pd.read_csv(posts_csv)["text"].tolist()
    torch_rows = run_cli(
        "predict.py", "--adapter", folder, "--backend", "torch", "--precision", "fp32", "--json", "--file", posts_csv
    )
    torch_labels = [json.loads(line)["label"] for line in torch_rows.stdout.splitlines()]
    assert [r["label"] for r in rows] == torch_labels


def test_a_folder_trained_again_after_its_export_is_refused(exported, tmp_path):
    folder = tmp_path / "copy"
    shutil.copytree(exported["pfeiffer"][0], folder)
    info = json.loads((folder / "training.json").read_text())
    (folder / "training.json").write_text(json.dumps({**info, "seed": info["seed"] + 1}))  # as a new run writes
    for backend in ("onnx", "onnx-int8", "auto"):
        proc = run_main("predict.py", "--adapter", folder, "--backend", backend, "hello", check=False)
        assert_clean_failure(proc, "stale", "export.py")
    assert run_main("predict.py", "--adapter", folder, "--backend", "torch", "hello").stdout  # torch still works
    proc = run_main("export.py", "--adapter", folder, "--overwrite", "--check-posts", "4", "--no-int8")
    assert "model.onnx: kept" in proc.stdout and not (folder / "model.int8.onnx").exists()
    assert inference.fastest_export(folder) == "onnx"


def test_unexportable_and_missing_exports_get_one_line(exported, tiny_bert, posts_csv, tmp_path):
    args = ["--model", tiny_bert, "--data", posts_csv, "--output-dir", str(tmp_path), "--epochs", "1"]
    train.run(train.parse_args([*args, "--mode", "adapter", "--adapter-config", "prefix_tuning", "--name", "prefix"]))
    proc = run_main("export.py", "--adapter", tmp_path / "prefix", check=False)
    assert_clean_failure(proc, "cannot export a 'prefix_tuning' adapter", "pfeiffer", "lora")
    assert not any(p.suffix == ".onnx" for p in (tmp_path / "prefix").iterdir())
    assert_clean_failure(run_main("export.py", "--adapter", exported["full"][0], check=False), "--overwrite")
    assert_clean_failure(run_main("export.py", "--adapter", tmp_path / "none", check=False), "no trained adapter")
    for backend in ("onnx", "onnx-int8"):  # a folder never exported
        proc = run_main("predict.py", "--adapter", tmp_path / "prefix", "--backend", backend, "hi", check=False)
        assert_clean_failure(proc, "no ONNX export", "python export.py")


def test_export_pushes_the_folder_with_its_export(exported, tmp_path, monkeypatch):
    """--push-to-hub: a current export is pushed as it is; a folder without one is exported, then pushed; a push the
    Hub refuses is one line, and the folder keeps its export."""
    import huggingface_hub

    hub = FakeHub()
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    monkeypatch.setattr(huggingface_hub, "HfApi", lambda *args, **kwargs: hub)
    current, bare = tmp_path / "current", tmp_path / "bare"
    shutil.copytree(exported["pfeiffer"][0], current)
    shutil.copytree(exported["pfeiffer"][0], bare, ignore=shutil.ignore_patterns(*inference.EXPORT_FILES))
    proc = run_main("export.py", "--adapter", current, "--push-to-hub", "me/current")
    assert "pushing it as it is" in proc.stdout and "python predict.py --adapter me/current" in proc.stdout
    proc = run_main("export.py", "--adapter", bare, "--check-posts", "4", "--no-int8", "--push-to-hub", "me/bare")
    assert "model.onnx: kept" in proc.stdout and "pushed" in proc.stdout
    for upload, folder in zip(hub.uploads, (current, bare)):
        assert upload["files"] == folder_files(folder)  # the folder as it is after the push, all of it
        assert {"model.onnx", "onnx.json", "onnx-tokenizer.json", "README.md"} <= set(upload["files"])
    assert [r["private"] for r in hub.repos] == [False, False]
    pulled = fill_hub_cache(tmp_path / "cache", "me/current", hub.uploads[0]["files"])  # as the Hub would serve it
    assert inference.fastest_export(pulled) == inference.fastest_export(current) is not None  # still current there
    hub.error = huggingface_hub.errors.HfHubHTTPError("403 Forbidden: you don't have the rights to create a model")
    proc = run_main("export.py", "--adapter", current, "--push-to-hub", "someone-else/x", check=False)
    assert_clean_failure(proc, "could not push", "403 Forbidden", "the folder is kept")
    assert inference.fastest_export(current) is not None


@pytest.mark.parametrize("backend", ["torch", "onnx", "auto"])
def test_bad_input_gets_one_line_through_every_backend(exported, backend, tmp_path):
    folder = exported["pfeiffer"][0]
    (tmp_path / "empty.csv").write_text("text\n")
    (tmp_path / "other.csv").write_text("body\nhello\n")
    for args, words in [
        ([""], ["text 1 is empty"]),
        (["--file", tmp_path / "missing.txt"], ["not found"]),
        (["--file", tmp_path / "empty.csv"], ["no text to predict"]),
        (["--file", tmp_path / "other.csv"], ["no text column"]),
        ([], ["no text to predict"]),
    ]:
        proc = run_main("predict.py", "--adapter", folder, "--backend", backend, *args, check=False)
        assert_clean_failure(proc, *words)
    proc = run_main("predict.py", "--adapter", tmp_path / "nowhere", "--backend", backend, "hi", check=False)
    assert_clean_failure(proc)


def test_export_checks_on_the_folders_own_training_data_by_default(exported, tmp_path):
    """No --data: the posts come from the file training.json names; a file that is gone gets one line."""
    folder = tmp_path / "copy"
    shutil.copytree(exported["lora"][0], folder)
    data_file = tmp_path / "posts.csv"
    make_posts(20).to_csv(data_file, index=False)
    info = json.loads((folder / "training.json").read_text())
    (folder / "training.json").write_text(json.dumps({**info, "data": str(data_file)}))
    proc = run_main("export.py", "--adapter", folder, "--overwrite", "--no-int8")
    assert "on 40 posts" in proc.stdout
    data_file.unlink()
    proc = run_main("export.py", "--adapter", folder, "--overwrite", check=False)
    assert_clean_failure(proc, "not found")
    assert (folder / "model.onnx").exists()  # the refused export left the earlier one in place


def test_a_corpus_on_ray_gives_predict_pys_results_and_resumes(exported, tmp_path):
    """classify_corpus.py on a local Ray cluster, 2 actors: .jsonl and .parquet shards (one with a blank post, one
    with nothing to classify) give predict.py's own results for the same posts (fp32: same labels, probabilities
    within 1e-5); a run stopped after some shards redoes only the others."""
    folder = exported["pfeiffer"][0]
    corpus, results = tmp_path / "corpus", tmp_path / "results"
    corpus.mkdir()
    posts = make_posts(30)
    posts.iloc[:20].to_json(corpus / "a.jsonl", orient="records", lines=True)
    pd.concat([posts.iloc[20:40], pd.DataFrame({"text": ["  "], "label": [0]})]).to_json(
        corpus / "b.jsonl", orient="records", lines=True
    )
    posts.iloc[40:].to_parquet(corpus / "c.parquet")
    (corpus / "d.jsonl").write_text('{"text": " "}\n{"text": null}\n')  # nothing to classify
    args = ["classify_corpus.py", "--adapter", folder, "--input", corpus, "--output", results, "--backend", "onnx"]
    proc = run_cli(*args, "--actors", "2")
    assert "4 shards, 0 already classified" in proc.stdout
    assert (results / "d.jsonl").read_text() == ""
    for shard in ("a.jsonl", "b.jsonl", "c.parquet"):
        ray_rows = [json.loads(line) for line in (results / f"{shard.split('.')[0]}.jsonl").read_text().splitlines()]
        proc = run_main("predict.py", "--adapter", folder, "--backend", "onnx", "--json", "--file", corpus / shard)
        own_rows = [json.loads(line) for line in proc.stdout.splitlines()]
        assert len(ray_rows) == len(own_rows) == 20
        assert [r["text"] for r in ray_rows] == [r["text"] for r in own_rows]
        assert [r["label"] for r in ray_rows] == [r["label"] for r in own_rows]
        assert max(abs(a["score"] - b["score"]) for a, b in zip(ray_rows, own_rows)) <= 1e-5
    kept = (results / "a.jsonl").read_text()
    (results / "b.jsonl").unlink()
    proc = run_cli(*args)
    assert "4 shards, 3 already classified" in proc.stdout and "b.jsonl ->" in proc.stdout
    assert "a.jsonl ->" not in proc.stdout and (results / "a.jsonl").read_text() == kept
    assert len((results / "b.jsonl").read_text().splitlines()) == 20
    assert_clean_failure(run_main(*args[:4], tmp_path / "none", *args[5:], check=False), "is not a folder")
    unexported = tmp_path / "plain"
    shutil.copytree(folder, unexported, ignore=shutil.ignore_patterns("*onnx*"))
    proc = run_main(
        "classify_corpus.py", "--adapter", unexported, "--input", corpus, "--output", tmp_path / "r2", check=False
    )
    assert_clean_failure(proc, "no verified ONNX export", "export.py")


def test_int8_gate_benchmark_measures_each_variant_here_and_under_an_emulator(exported, tmp_path):
    """bench/int8_gate.py on an exported folder: export.py's int8 and one remedy, timed; then the worker path that an
    emulator runs (`env` stands in for qemu: the same answers), which records the kind it is told and no speed."""
    folder = exported["pfeiffer"][0]
    args = ["-m", "bench.int8_gate", "--adapter", folder, "--posts", "30", "--out", tmp_path]
    run_cli(*args, "--rounds", "1", "--variants", "export.py", "head in fp32", "--name", "here")
    [result_file] = tmp_path.glob("here-*.json")
    result = json.loads(result_file.read_text())
    assert result["int8_kind"] == hardware.int8_kind() and not result["emulated"] and result["posts"] == 30
    here, head = result["rows"]
    assert (here["variant"], head["variant"]) == ("export.py", "head in fp32") and here["posts"] == 30
    assert here["speedup"] > 0 and head["megabytes"] > here["megabytes"]  # the head's weights stay fp32
    assert here["kept"] == (here["label_changes_beyond_margin"] == 0 and here["mean_difference"] <= 0.01)
    assert result_file.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"
    run_cli(*args, "--variants", "export.py", "--emulator", "env", "--emulated", "avx2", "--name", "emulated")
    emulated = json.loads(next(tmp_path.glob("emulated-*.json")).read_text())
    assert (
        emulated["emulated"] and emulated["cpu_kind"] == "AVX2 only" and "posts_per_second" not in emulated["rows"][0]
    )
    same = ("label_changes", "mean_difference", "max_difference")
    assert all(emulated["rows"][0][k] == pytest.approx(here[k], abs=1e-6) for k in same)  # one machine, two paths
    refused = run_cli(*args, "--emulator", "env", check=False)
    assert refused.returncode == 2 and "--emulator and --emulated go together" in refused.stderr


def test_evaluate_gives_the_same_metrics_on_the_onnx_backend(exported, posts_csv, tmp_path):
    folder = exported["pfeiffer"][0]
    metrics = {}
    for backend in ("torch", "onnx"):
        out = tmp_path / f"{backend}.json"
        run_main("assess.py", "--adapter", folder, "--data", posts_csv, "--backend", backend, "--precision", "fp32",
                "--output", out)  # fmt: skip
        metrics[backend] = json.loads(out.read_text())[str(folder)]
    for key in ("accuracy", "macro_f1", "confusion_matrix"):
        assert metrics["onnx"][key] == metrics["torch"][key]
    assert abs(metrics["onnx"]["auc"] - metrics["torch"]["auc"]) < 1e-6
