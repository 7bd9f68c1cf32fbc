"""Tasks beyond depression (issue 63): each named task loads with its label names from the file its environment
variable names (one clear line where it is unset), train.py names its folder by the task and keeps research-only data
off the Hub, two tasks' adapters answer on one base each with its own labels, assess.py takes a task by name; the
forgetting study's adapter side leaves A's predictions bit-identical, and its quick mode runs."""

import json

import pytest
from conftest import REAL_DATA, assert_clean_failure, run_cli, run_main, run_train
from huggingface_hub import ModelCard

import data
import model as M
from bench import forgetting
from errors import DataError
from textclassifier import settings

FILES = {
    "DEPRESSION_DATA": "depression-reddit-cleaned.csv", "CLOTHING_REVIEWS_DATA": "clothing-reviews.csv",
    "SMS_SPAM_DATA": "sms-spam.csv", "MOVIE_SNIPPETS_DATA": "movie-snippets.csv",
}  # fmt: skip
SUBREDDITS = sorted(data.DEPRESSED_SUBREDDITS + data.SUPPORT_SUBREDDITS + data.CONTROL_SUBREDDITS)
# name -> label names, posts kept after cleaning (../shared/data/README.md; docs/tasks.md)
TASKS = {
    "original": (["not depressive", "depressive"], 7650),
    "reviews": (["not recommended", "recommended"], 18107),
    "rating": (["1", "2", "3", "4", "5"], 18107),
    "department": (["Bottoms", "Dresses", "Intimate", "Jackets", "Tops", "Trend"], 18097),
    "spam": (["ham", "spam"], 3627),
    "movies": (["fresh", "rotten"], 10202),
    "subreddits": (SUBREDDITS, 2859),
}


@pytest.fixture
def task_files(monkeypatch):
    """Every task's variable naming its local copy, as CI sets them (.ci/run)."""
    for variable, name in FILES.items():
        monkeypatch.setenv(variable, str(REAL_DATA.parent / name))


@pytest.mark.parametrize("name", TASKS)
def test_each_named_task_loads_with_its_label_names(name, task_files):
    args = settings.parse(["--data", name])
    train_ds, val_ds, label_names, info = data.load_splits(
        data.sources(args.data), label_column=args.label_column, label_map=data.parse_label_map(args.label_map)
    )
    names, kept = TASKS[name]
    assert sorted(label_names, key=str.lower) == sorted(names, key=str.lower) and len(label_names) == len(names)
    assert info["cleaning"]["kept"] == kept == len(train_ds) + len(val_ds)
    assert set(val_ds["label"]) == set(range(len(names)))  # every class validated on


def test_a_task_without_its_file_says_which_variable_to_set(monkeypatch, tmp_path):
    monkeypatch.delenv("SMS_SPAM_DATA", raising=False)
    with pytest.raises(DataError, match="set SMS_SPAM_DATA to the data set's file"):
        data.sources("spam")
    proc = run_main("train.py", "--data", "spam", "--output-dir", tmp_path, check=False)
    assert_clean_failure(proc, "SMS_SPAM_DATA")


def test_research_only_data_is_not_pushed(task_files, tmp_path):
    proc = run_main("train.py", "--data", "movies", "--push-to-hub", "someone/movies", "--output-dir", tmp_path,
                    check=False)  # fmt: skip
    assert_clean_failure(proc, "research use only")


def test_two_tasks_on_one_base_answer_each_with_its_own_labels(tiny_bert, tmp_path, task_files):
    """train.py names each folder by its task; predict.py --adapter A B answers both with their labels; assess.py
    --data spam reads the task's file and label column."""
    flags = ["--max-train-samples", "48", "--max-eval-samples", "24", "--epochs", "1", "--max-length", "32"]
    for task in ("original", "spam"):
        run_train(tiny_bert, task, tmp_path, *flags, run=run_main)
    assert (tmp_path / "depression-original-pfeiffer").is_dir() and (tmp_path / "spam-pfeiffer").is_dir()
    card = ModelCard.load(tmp_path / "spam-pfeiffer" / "README.md")  # the task's source, licence and tags
    assert card.data.license == "other" and "depression" not in card.data.tags
    assert "SMS Spam Collection" in card.text and "Almeida" in card.text
    proc = run_main("predict.py", "--adapter", tmp_path / "depression-original-pfeiffer", tmp_path / "spam-pfeiffer",
                    "--json", "win a free prize now")  # fmt: skip
    [row] = [json.loads(line) for line in proc.stdout.splitlines()]
    assert set(row["results"]["depression-original-pfeiffer"]["probabilities"]) == {"not depressive", "depressive"}
    assert set(row["results"]["spam-pfeiffer"]["probabilities"]) == {"ham", "spam"}
    out = tmp_path / "spam.json"
    run_main("assess.py", "--adapter", tmp_path / "spam-pfeiffer", "--data", "spam", "--bootstrap", "0",
             "--output", out)  # fmt: skip
    [result] = json.loads(out.read_text()).values()
    assert result["n"] == TASKS["spam"][1]


def test_a_second_task_trains_only_its_own_adapter_and_head(tiny_bert):
    model = M.build_model(tiny_bert, "adapter", ["no", "yes"], "pfeiffer")
    forgetting.add_task(model, "b", "pfeiffer", ["x", "y", "z"], seed=0)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".b." in n or n.startswith("heads.b.") for n in trainable), trainable


@pytest.mark.slow
def test_the_forgetting_study_quick_mode_leaves_adapters_bit_identical(tiny_bert, tmp_path, task_files):
    run_cli("-m", "bench.forgetting", "--quick", "--model", tiny_bert, "--out", tmp_path)
    [result_file] = tmp_path.glob("forgetting-*-quick.json")
    result = json.loads(result_file.read_text())
    assert {(r["method"], r["pair"]) for r in result["runs"]} == {(m, "original,reviews") for m in forgetting.METHODS}
    for r in result["runs"]:
        assert len(r["a_accuracy"]) == result["epochs"] + 1  # before B, after each of B's epochs
        if r["method"] != "full":  # the claim, exactly: no post's probabilities moved
            assert r["max_probability_change"] == 0.0 and r["changed_predictions"] == 0 and r["a_posts"] == 32
    assert "| original then reviews | pfeiffer |" in result_file.with_suffix(".md").read_text()
    assert result_file.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"
