import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from conftest import ROOT, approx_floats, assert_clean_failure, make_posts, run_cli, run_main, run_train
from safetensors.torch import load_file

QUICK = ["--epochs", "2", "--batch-size", "8", "--max-length", "32"]


def train(tiny_bert, data, out, *extra, check=True):
    return run_train(tiny_bert, data, out, *QUICK, *extra, check=check)


@pytest.fixture(scope="module")
def runs(tiny_bert, posts_csv, tmp_path_factory):
    """One short run of each mode (and of Houlsby) on the tiny BERT, as a user starts them."""
    out = tmp_path_factory.mktemp("runs")
    procs = {mode: train(tiny_bert, posts_csv, out, "--mode", mode) for mode in ["adapter", "full"]}
    houlsby = ["--model", tiny_bert, "--data", posts_csv, "--output-dir", out, *QUICK, "--adapter-config", "houlsby"]
    procs["houlsby"] = run_main("train.py", *houlsby)  # in this process: the two above are the new-process runs
    return out, procs


@pytest.mark.slow
def test_adapter_run_writes_adapter_head_metrics_and_training_info(runs, tiny_bert):
    out, procs = runs
    folder = out / "depression-pfeiffer"
    names = {p.name for p in folder.iterdir()}
    assert {
        "adapter_config.json",
        "adapter.safetensors",
        "head_config.json",
        "model_head.safetensors",
        "metrics.jsonl",
        "training.json",
    } <= names
    assert not (out / "depression-pfeiffer.incomplete").exists()
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    for key in [
        "train_loss",
        "val_loss",
        "accuracy",
        "precision",
        "recall",
        "f1",
        "wall_seconds",
        "examples_per_second",
    ]:
        assert all(key in r for r in rows)
    info = json.loads((folder / "training.json").read_text())
    assert info["mode"] == "adapter" and info["base_model"] == tiny_bert and info["adapter_config"] == "pfeiffer"
    assert info["label_names"] == ["not depressive", "depressive"] and info["max_length"] == 32
    assert info["attention_dropout"] == 0.0  # the default (training.ATTENTION_DROPOUT)
    assert info["train_size"] + info["val_size"] == 80 and info["seed"] == 42
    assert info["best"]["accuracy"] == max(r["accuracy"] for r in rows)
    assert {"torch", "transformers", "adapters"} <= set(info["versions"])
    assert len(info["data_fingerprint"]) == 64


@pytest.mark.slow
def test_train_prints_parameters_progress_and_epoch_metrics(runs):
    proc = runs[1]["adapter"]
    assert "trainable (" in proc.stdout and "parameters:" in proc.stdout
    assert "epoch 1/2" in proc.stderr  # the tqdm bar
    epoch_lines = [line for line in proc.stdout.splitlines() if line.startswith("epoch ")]
    assert len(epoch_lines) == 2 and all("accuracy" in line and "F1" in line for line in epoch_lines)
    assert "saved to" in proc.stdout and "duplicate texts" in proc.stdout


@pytest.mark.slow
def test_full_run_saves_model_and_tokenizer(runs):
    out, procs = runs
    folder = out / "depression-full"
    assert {"config.json", "model.safetensors", "tokenizer.json", "training.json", "metrics.jsonl"} <= {
        p.name for p in folder.iterdir()
    }
    assert "(100.00%)" in procs["full"].stdout
    assert json.loads((folder / "config.json").read_text())["attention_probs_dropout_prob"] == 0.0


@pytest.mark.slow
def test_every_mode_sees_the_same_split(runs):
    out, _ = runs
    infos = [
        json.loads((out / name / "training.json").read_text())
        for name in ["depression-pfeiffer", "depression-houlsby", "depression-full"]
    ]
    assert len({(i["val_fingerprint"], i["data_fingerprint"], i["train_size"]) for i in infos}) == 1


TEXT = "i feel hopeless and empty every single day"


@pytest.mark.slow
def test_every_saved_folder_has_a_model_card_the_hub_reads(runs, tiny_bert):
    from huggingface_hub import ModelCard

    from textclassifier import model_card

    out, _ = runs
    for name, library in [
        ("depression-pfeiffer", "adapter-transformers"),
        ("depression-houlsby", "adapter-transformers"),
        ("depression-full", "transformers"),
    ]:
        card = ModelCard.load(out / name / "README.md")
        info = json.loads((out / name / "training.json").read_text())
        assert card.data.library_name == library and card.data.pipeline_tag == "text-classification"
        assert card.data.model_name == name and card.text.startswith(f"\n# {name}\n")
        assert card.data.license == "unknown" and "its licence is not recorded" in card.text  # the trainer's own data
        assert card.data.base_model is None and f"base model `{tiny_bert}`" in card.text  # a local folder: no Hub id
        accuracy = {r.metric_type: r.metric_value for r in card.data.eval_results}["accuracy"]
        assert accuracy == round(info["best"]["accuracy"], 4)
        assert model_card.RESPONSIBLE_USE in card.text and "## How to use it" in card.text
        assert not model_card.edited_by_hand(out / name / "README.md")
        # the card's own code, run as written (the folder's path for path/to/NAME), answers as predict.py does
        code = card.text.split("```python\n")[1].split("```")[0].replace(f"path/to/{name}", str(out / name))
        code = code.replace('"some text"', repr(TEXT))
        names = {}
        exec(code, names)
        expected = run_main("predict.py", "--adapter", out / name, "--json", "--precision", "fp32", TEXT).stdout
        expected = json.loads(expected)
        if library == "transformers":
            assert names["classify"](TEXT)[0]["label"] == expected["label"]
        else:
            probs = names["logits"].softmax(-1)[0].tolist()
            assert probs == pytest.approx(list(expected["probabilities"].values()), abs=1e-5)


@pytest.mark.slow
def test_houlsby_trains_more_weights_than_pfeiffer(runs):
    out, _ = runs
    pfeiffer, houlsby = (
        json.loads((out / n / "training.json").read_text())["parameters"]["trainable"]
        for n in ["depression-pfeiffer", "depression-houlsby"]
    )
    assert houlsby > pfeiffer


@pytest.mark.slow
def test_trained_adapter_is_not_overwritten_without_asking(runs, tiny_bert, posts_csv, tmp_path):
    out = tmp_path  # a copy of the shared run: the other tests read the original, in any order
    folder = out / "depression-pfeiffer"
    shutil.copytree(runs[0] / "depression-pfeiffer", folder)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    args = ["--model", tiny_bert, "--data", posts_csv, "--output-dir", out, *QUICK]
    proc = run_main("train.py", *args, check=False)
    assert_clean_failure(proc, "already holds a trained model", "--overwrite")
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    split = json.loads((folder / "training.json").read_text())["val_fingerprint"]
    run_main("train.py", *args, "--overwrite", "--epochs", "1", "--seed", "7")
    info = json.loads((folder / "training.json").read_text())
    assert info["seed"] == 7 and info["split_seed"] == 42 and info["val_fingerprint"] == split  # --seed keeps the split


def write(tmp_path, df, name="posts.csv"):
    df.to_csv(tmp_path / name, index=False)
    return str(tmp_path / name)


@pytest.mark.parametrize(
    "problem",
    [
        "missing file",
        "unreadable file",
        "no text column",
        "one label",
        "too few rows",
        "unknown adapter config",
        "unknown mode",
        "bad epochs",
        "bad attention dropout",
    ],
)
def test_bad_input_gets_one_line_and_exit_2(problem, tmp_path, tiny_bert, posts_csv):
    posts = make_posts()
    data, extra, words = posts_csv, [], []
    if problem == "missing file":
        data, words = str(tmp_path / "nope.csv"), ["not found"]
    elif problem == "unreadable file":
        (tmp_path / "bad.parquet").write_text("plain text")
        data, words = str(tmp_path / "bad.parquet"), ["cannot read"]
    elif problem == "no text column":
        data, words = write(tmp_path, posts.rename(columns={"text": "body"})), ["no text column", "--text-column"]
    elif problem == "one label":
        data, words = write(tmp_path, posts.assign(label=1)), ["at least two classes, found 1"]
    elif problem == "too few rows":
        data, words = write(tmp_path, make_posts(2)), ["too few"]
    elif problem == "unknown adapter config":
        extra, words = ["--adapter-config", "bottleneck"], ["unknown adapter config"]
    elif problem == "unknown mode":
        extra, words = ["--mode", "partial"], ["invalid choice"]
    elif problem == "bad epochs":
        extra, words = ["--epochs", "0"], ["--epochs"]
    elif problem == "bad attention dropout":
        extra, words = ["--attention-dropout", "1.5"], ["--attention-dropout"]
    proc = run_main(
        "train.py", "--model", tiny_bert, "--data", data, "--output-dir", tmp_path / "out", *QUICK, *extra, check=False
    )
    assert_clean_failure(proc, *words)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*.safetensors"))


def test_offline_hub_data_set_fails_with_a_hint(tmp_path, tiny_bert):
    proc = run_main(
        "train.py", "--model", tiny_bert, "--data", "someone/not-cached-here", "--output-dir", tmp_path, check=False
    )
    assert_clean_failure(proc, "--data", "DEPRESSION_DATA")


@pytest.mark.parametrize("script", ["train", "predict", "assess", "serve"])
def test_help_tells_the_truth_about_every_flag(script):
    """Every flag has an explanation, and every default the help states is the default the parser uses."""
    module = __import__(script)
    parser = module.build_parser()
    defaults = vars(parser.parse_args(["--adapter", "a", "--data", "b"] if script == "assess" else []))
    for action in parser._actions:
        if action.dest == "help":
            continue
        assert action.help and len(action.help) > 15, action.option_strings
        stated = re.search(r"\(default: ([^;)]+)", action.help)
        if stated and action.default not in (None, False):
            default = defaults[action.dest]
            shown = " ".join(map(str, default)) if isinstance(default, list) else str(default)  # nargs="+"
            shown = f"{default:g}" if isinstance(default, float) else shown  # 5.0 may read 5
            assert shown in stated.group(1), (action.option_strings, stated.group(1))
    proc = run_main(f"{script}.py", "--help")
    assert proc.returncode == 0 and proc.stderr == ""
    assert all(opt in proc.stdout for a in parser._actions for opt in a.option_strings)


BEFORE = Path(__file__).parent / "fixtures" / "saved-before-43"  # written by main fbb8d65: its make.py


@pytest.fixture
def saved_before(tiny_bert, tmp_path):
    """A copy of the committed folders saved by the code before issue 43 (a finished adapter folder and the same
    command's run interrupted after epoch 1), beside the tiny BERT and the posts they were trained on."""
    for name in ("adapters", "interrupted", "posts.csv", "expected.json"):
        copy = shutil.copytree if (BEFORE / name).is_dir() else shutil.copy
        copy(BEFORE / name, tmp_path / name)
    (tmp_path / "tiny-bert").symlink_to(tiny_bert)
    return tmp_path


@pytest.mark.slow
def test_a_folder_saved_before_loads_predicts_and_resumes_the_same(saved_before, monkeypatch):
    """Flags, training.json and checkpoints stay compatible: the old finished folder predicts what it predicted,
    and the old interrupted run resumes with the same command to the finished run's weights and metrics."""
    monkeypatch.chdir(saved_before)  # the folders name their base model and data by relative paths
    expected = json.loads((saved_before / "expected.json").read_text())
    texts = expected["texts"]
    predicted = run_main(
        "predict.py", "--adapter", "adapters/depression-pfeiffer", "--backend", "torch", "--precision", "fp32",
        "--json", *texts,
    )  # fmt: skip
    for line, probabilities in zip(predicted.stdout.splitlines(), expected["probabilities"], strict=True):
        got = json.loads(line)["probabilities"]
        assert got.keys() == probabilities.keys()
        assert all(abs(got[k] - probabilities[k]) < 1e-5 for k in got), (got, probabilities)

    resumed = run_cli(
        ROOT / "train.py", *expected["flags"], "--output-dir", "interrupted", "--resume", cwd=saved_before
    )
    assert "resumed after epoch 1 of 2" in resumed.stdout
    finished, again = (
        saved_before / "adapters" / "depression-pfeiffer",
        saved_before / "interrupted" / "depression-pfeiffer",
    )
    for name in ("adapter.safetensors", "model_head.safetensors"):
        a, b = load_file(finished / name), load_file(again / name)
        assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)
    rows_a, rows_b = (
        [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
        for folder in (finished, again)
    )
    assert [r["epoch"] for r in rows_b] == [1, 2]
    for ra, rb in zip(rows_a, rows_b):
        assert all(abs(ra[k] - rb[k]) <= 1e-4 for k in ("train_loss", "val_loss", "accuracy", "macro_f1")), (ra, rb)
    old, new = (json.loads((folder / "training.json").read_text()) for folder in (finished, again))
    settings = set(old) - {"device", "versions", "best", "parameters"}  # what differs by machine or by run
    # the length expert's fitted coefficients differ in the last bits between kinds of CPU: equal within 1e-6
    expected = approx_floats({k: old[k] for k in settings} | {"epochs_run": 2}, rel=1e-6)
    assert {k: new.get(k) for k in settings} == expected
