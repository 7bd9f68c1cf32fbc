"""The default model's remedies as train.py flags (docs/default-model.md): short copies of long posts, copies with the
topic words removed, the other senses of "depression" as label 0, temperature calibration; and the behaviour suite's
tune/test parts."""

import hashlib
import json
import re

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import REAL_DATA, assert_clean_failure, make_posts, run_main, run_train

import data
import posts
import train
from bench import behaviour
from textclassifier import inference, training

LONG = " ".join(f"w{i}" for i in range(100))


def posts_with_topic_words(tmp_path):
    """make_posts() with a few posts of each label that say depress* or suicid*, and one long post per label."""
    table = make_posts()
    extra = [
        ("my depression is back and i feel awful", 1),
        ("suicidal thoughts again tonight honestly", 1),
        ("antidepressants are not working for me", 1),
        ("the great depression lesson was boring", 0),
        ("the storm was only a tropical depression", 0),
        ("Depressed the clutch and the car stalled", 0),
        (f"sad {LONG}", 1),
        (f"glad {LONG}", 0),
    ]
    table = pd.concat([table, pd.DataFrame(extra, columns=["text", "label"])], ignore_index=True)
    path = tmp_path / "topic.csv"
    table.to_csv(path, index=False)
    return str(path)


def test_short_copies_cut_long_posts_of_every_label_to_a_few_words():
    ds = data.Dataset.from_dict({"text": ["short post here", f"a {LONG}", f"b {LONG}"], "label": [0, 1, 0]})
    copies = data.short_copies(ds, seed=0)
    assert copies["label"] == [1, 0] and copies.features == ds.features
    for copy, post in zip(copies["text"], ds["text"][1:]):
        words = copy.split()
        assert 8 <= len(words) <= 32 and words == post.split()[: len(words)]


def test_masked_copies_hold_no_topic_word_and_keep_the_labels():
    texts = ["my depression is back", "suicidal again", "the Great Depression", "Depressed the pedal", "hello there"]
    ds = data.Dataset.from_dict({"text": texts + ["depression"], "label": [1, 1, 0, 0, 0, 1]})
    copies = data.masked_copies(ds)
    assert copies["text"] == ["my is back", "again", "the Great", "the pedal"]
    assert copies["label"] == [1, 1, 0, 0]  # both labels; a post of topic words only gets no copy
    assert not any(re.search("depress|suicid", t, re.IGNORECASE) for t in copies["text"])


def test_the_other_senses_file_loads_with_its_checksum_labels_0_and_attribution():
    table = data.load_table(data.OTHER_SENSES)
    digest = hashlib.sha256(data.OTHER_SENSES.read_bytes()).hexdigest()
    assert digest == data.SHIPPED_SHA256[data.OTHER_SENSES.resolve()]
    assert list(table.columns) == ["text", "label", "sense", "source"] and len(table) >= 100
    assert set(table["label"]) == {0}
    assert table["text"].str.contains("depress", case=False).mean() > 0.8
    assert set(table["source"].str.replace(r" (noun|verb|adj|adv).*", "", regex=True)) == {
        "WordNet 3.0",
        "written for this project",
    }
    readme = " ".join((data.OTHER_SENSES.parent / "README.md").read_text().replace(">", " ").split())
    assert "WordNet 3.0 Copyright 2006 by Princeton University" in readme and "other-senses.csv" in readme
    assert data.sources("original", other_senses=True)[-1] == str(data.OTHER_SENSES)


def test_the_other_senses_and_the_behaviour_cases_are_kept_apart():
    other = set(data.load_table(data.OTHER_SENSES)["text"].map(posts.normalize_text))
    for part in behaviour.PARTS:
        assert not {posts.normalize_text(t) for t in behaviour.texts_of(behaviour.load_cases(part=part))} & other


@pytest.mark.slow
def test_each_remedy_changes_what_is_trained_on(tiny_bert, tmp_path):
    topic = posts_with_topic_words(tmp_path)
    common = ["--epochs", "1", "--batch-size", "8", "--max-length", "32", "--split-seed", "1"]
    plain = run_train(tiny_bert, topic, tmp_path, *common, "--name", "plain", run=run_main)
    base = json.loads((tmp_path / "plain" / "training.json").read_text())
    assert "copies" not in base and "other_senses_attribution" not in base and "short copies" not in plain.stdout

    proc = run_train(tiny_bert, topic, tmp_path, *common, "--name", "copies", "--short-copies", "--masked-copies",
                     run=run_main)  # fmt: skip
    info = json.loads((tmp_path / "copies" / "training.json").read_text())
    train_texts = data.load_splits(topic, seed=1)[0]
    masked = len(data.masked_copies(train_texts))
    shorts = len(data.short_copies(train_texts, 42))
    assert info["copies"] == {"short_copies": shorts, "masked_copies": masked} and masked >= 3 and shorts >= 1
    assert info["train_size"] == base["train_size"] + shorts + masked
    assert info["val_size"] == base["val_size"] and info["short_copies"] and info["masked_copies"]
    assert f"masked copies: {masked} of {base['train_size']} training posts" in proc.stdout

    proc = run_train(tiny_bert, topic, tmp_path, *common, "--name", "senses", "--other-senses", run=run_main)
    info = json.loads((tmp_path / "senses" / "training.json").read_text())
    n = len(data.load_table(data.OTHER_SENSES))
    assert info["sources"]["other-senses"]["per_label"] == {"not depressive": n}
    assert info["sources"]["other-senses"]["train"] + info["sources"]["other-senses"]["val"] == n
    assert info["train_size"] == base["train_size"] + info["sources"]["other-senses"]["train"]
    assert info["data"][-1] == str(data.OTHER_SENSES) and "WordNet" in info["other_senses_attribution"]
    assert info["best"]["by_source"]["topic"]["n"] == base["val_size"]  # the posts' own validation is unchanged


def test_the_named_data_set_chooses_the_remedies_unless_a_flag_says_otherwise(tmp_path):
    remedies = ("length_expert", "short_copies", "masked_copies", "other_senses")
    chosen = {key: getattr(train.parse_args([]), key) for key in remedies}
    assert chosen == {key: data.DATA_SETS["default"]["remedies"].get(key, None if key == "length_expert" else False)
                      for key in remedies}  # fmt: skip
    for flags in (["--data", "original"], ["--data", str(tmp_path / "posts.csv")]):
        assert [getattr(train.parse_args(flags), key) for key in remedies] == [None, False, False, False]
    args = train.parse_args(["--length-expert", "0", "--short-copies", "false", "--other-senses", "no"])
    assert (args.length_expert, args.short_copies, args.other_senses) == (None, False, False)
    args = train.parse_args(["--data", "original", "--length-expert", "--short-copies", "--masked-copies", "yes"])
    assert (args.length_expert, args.short_copies, args.masked_copies, args.other_senses) == (1.0, True, True, False)
    with pytest.raises(SystemExit):
        train.parse_args(["--short-copies", "maybe"])


def test_other_senses_need_data_labelled_0_and_1(tiny_bert, groups_csv, tmp_path):
    proc = run_train(tiny_bert, groups_csv, tmp_path, "--other-senses", "--epochs", "1", run=run_main, check=False)
    assert_clean_failure(proc, "--other-senses", "labelled 0 and 1")
    assert not any(tmp_path.rglob("*.safetensors"))


def test_fit_temperature_finds_the_temperature_of_overconfident_logits():
    torch.manual_seed(0)
    calibrated = torch.randn(20000, 2) * 1.5
    labels = torch.multinomial(calibrated.softmax(-1), 1).squeeze(1)
    assert training.fit_temperature(calibrated * 3, labels) == pytest.approx(3, rel=0.05)
    assert training.fit_temperature(calibrated, labels) == pytest.approx(1, rel=0.05)


@pytest.mark.slow
def test_a_calibrated_folder_predicts_with_its_temperature_on_torch_onnx_and_shared(tiny_bert, posts_csv, tmp_path):
    common = ["--epochs", "2", "--batch-size", "8", "--max-length", "32"]
    run_train(tiny_bert, posts_csv, tmp_path, *common, "--name", "plain", run=run_main)
    proc = run_train(tiny_bert, posts_csv, tmp_path, *common, "--name", "calibrated", "--calibrate", run=run_main)
    info = json.loads((tmp_path / "calibrated" / "training.json").read_text())
    calibration = info["calibration"]
    assert info["calibrate"] and f"temperature {calibration['temperature']:.3f}" in proc.stdout
    assert calibration["val_posts"] == info["val_size"] and calibration["temperature"] != 1
    assert calibration["val_loss_after"] <= calibration["val_loss_before"] + 1e-6  # T = 1 was a candidate
    assert json.loads((tmp_path / "plain" / "training.json").read_text())["calibration"] is None

    texts = make_posts(5)["text"].tolist()
    plain, calibrated = (inference.load(tmp_path / name, precision="fp32") for name in ("plain", "calibrated"))
    assert inference.temperature(calibrated.info) == calibration["temperature"]  # saved and loaded
    p, q = (
        inference.as_numpy(inference.classify(plain, texts)),
        inference.as_numpy(inference.classify(calibrated, texts)),
    )
    assert np.abs(p - q).max() > 1e-3  # the same weights (same seed), other probabilities
    logit = np.log(p[:, 1] / p[:, 0])  # the plain model's logit difference, divided by T
    assert np.allclose(q[:, 1], 1 / (1 + np.exp(-logit / calibration["temperature"])), atol=1e-5)

    shared = inference.load_shared([tmp_path / "plain", tmp_path / "calibrated"], precision="fp32")
    by_task = inference.classify_shared(shared, texts)
    assert np.allclose(inference.as_numpy(by_task["calibrated"]), q, atol=1e-5)
    assert np.allclose(inference.as_numpy(by_task["plain"]), p, atol=1e-5)

    run_main("export.py", "--adapter", tmp_path / "calibrated")
    assert json.loads((tmp_path / "calibrated" / "onnx.json").read_text())["temperature"] == calibration["temperature"]
    onnx = inference.as_numpy(inference.classify(inference.load(tmp_path / "calibrated", backend="onnx"), texts))
    assert np.allclose(onnx, q, atol=1e-5)
    out = tmp_path / "predicted.jsonl"
    run_main("predict.py", "--adapter", tmp_path / "calibrated", "--backend", "onnx", "--output", out, texts[0])
    assert json.loads(out.read_text())["probabilities"]["depressive"] == pytest.approx(q[0, 1], abs=1e-5)


def test_the_behaviour_suite_has_320_cases_in_two_fixed_parts():
    cases = json.loads(behaviour.CASES.read_text())
    tune, test = (behaviour.load_cases(part=part) for part in behaviour.PARTS)
    sizes = {part: sum(len(c) for c in tests.values()) for part, tests in zip(behaviour.PARTS, (tune, test))}
    assert sizes["tune"] + sizes["test"] >= 320 and 1.8 <= sizes["tune"] / sizes["test"] <= 2.4
    assert set(tune) == set(test) == set(behaviour.TESTS) and all(tune[t] and test[t] for t in behaviour.TESTS)
    assert not set(behaviour.texts_of(tune)) & set(behaviour.texts_of(test))
    assert "tune" in cases["split"] and "test" in cases["split"]
    assert not any(re.search("depress|suicid", c["text"], re.IGNORECASE) for c in tune["f"] + test["f"])


@pytest.mark.skipif(not REAL_DATA.exists(), reason="needs the depression data set")
def test_the_topic_words_nearly_decide_the_label_of_the_depression_data_set():
    """The figure data.TOPIC_WORDS's comment gives: 46% of label-1 posts, 0.5% of label-0 posts."""
    table = data.load_table(str(REAL_DATA))
    says = table["text"].astype(str).str.contains(data.TOPIC_WORDS)
    assert round(says[table["label"] == 1].mean(), 2) == 0.46 and round(says[table["label"] == 0].mean(), 3) == 0.005
