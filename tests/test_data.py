import random

import pandas as pd
import pytest
import torch
from conftest import REAL_DATA, make_posts
from transformers.trainer_pt_utils import get_length_grouped_indices

import data
import model as M
import posts
from errors import DataError


@pytest.fixture(scope="module")
def tokenizer():
    return M.load_tokenizer(M.OFFLINE_MINILM)


def test_columns_found_by_their_kaggle_names():
    df = pd.DataFrame({"clean_text": ["a", "b"], "is_depression": [1, 0], "other": [5, 6]})
    assert posts.find_column(df, None, posts.TEXT_COLUMNS, "text") == "clean_text"
    assert posts.find_column(df, None, data.LABEL_COLUMNS, "label") == "is_depression"
    assert posts.find_column(df, "other", data.LABEL_COLUMNS, "label") == "other"
    with pytest.raises(DataError, match="--text-column"):
        posts.find_column(df.drop(columns="clean_text"), None, posts.TEXT_COLUMNS, "text")
    with pytest.raises(DataError, match="no label column 'nope'"):
        posts.find_column(df, "nope", data.LABEL_COLUMNS, "label")


def test_clean_drops_empty_duplicate_and_conflicting_texts():
    df = pd.DataFrame(
        {
            "text": ["same post", "same post", "both labels", "both labels", "", None, "  ", "fine", " same post "],
            "label": [1, 1, 1, 0, 0, 1, 1, 0, 1],
        }
    )
    out, names, report = data.clean(df)
    assert sorted(out["text"]) == ["fine", "same post"]
    assert report == {
        "rows": 9,
        "empty_dropped": 3,
        "conflicting_dropped": 2,
        "duplicates_dropped": 2,
        "kept": 2,
        "per_label": {"not depressive": 1, "depressive": 1},
    }
    assert names == data.LABEL_NAMES
    assert "2 duplicate texts" in data.format_report(report)


def test_two_other_label_values_are_mapped_and_named():
    df = pd.DataFrame({"text": ["a", "b", "c"], "label": ["yes", "no", "yes"]})
    out, names, _ = data.clean(df)
    assert names == ["no", "yes"]
    assert out.set_index("text")["label"].to_dict() == {"a": 1, "b": 0, "c": 1}


def test_any_number_of_classes_keeps_integer_order_or_sorts_names():
    out, names, _ = data.clean(pd.DataFrame({"text": ["a", "b", "c", "d"], "label": [2, 0, 1, 2]}))
    assert names == ["0", "1", "2"] and out["label"].tolist() == [2, 0, 1, 2]  # 0..K-1 keep their order
    out, names, _ = data.clean(pd.DataFrame({"text": ["a", "b", "c", "d"], "label": ["sad", "angry", "glad", "sad"]}))
    assert names == ["angry", "glad", "sad"] and out["label"].tolist() == [2, 0, 1, 2]
    out, names, _ = data.clean(pd.DataFrame({"text": ["a", "b", "c"], "label": [10, 9, 10]}))
    assert names == ["9", "10"] and out["label"].tolist() == [
        1,
        0,
        1,
    ]  # numbers sorted by value, never depression names
    fifty = pd.DataFrame(
        {"text": [f"post {i}" for i in range(100)], "label": [f"topic {i % 50:02d}" for i in range(100)]}
    )
    assert len(data.clean(fifty)[1]) == 50


def test_a_single_class_or_a_class_too_small_to_split_is_refused(tmp_path):
    with pytest.raises(DataError, match="at least two classes, found 1"):
        data.clean(pd.DataFrame({"text": ["a", "b"], "label": [1, 1]}))
    path = tmp_path / "rare.csv"
    pd.DataFrame({"text": [f"post {i}" for i in range(21)], "label": ["a"] * 10 + ["b"] * 10 + ["c"]}).to_csv(path)
    with pytest.raises(DataError, match="class 'c' has 1 post"):
        data.load_splits(str(path))


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".json", ".jsonl", ".parquet"])
def test_local_files_of_each_format_load(tmp_path, suffix):
    df = make_posts(3)
    path = tmp_path / f"posts{suffix}"
    {
        ".csv": lambda: df.to_csv(path, index=False),
        ".tsv": lambda: df.to_csv(path, sep="\t", index=False),
        ".json": lambda: df.to_json(path, orient="records"),
        ".jsonl": lambda: df.to_json(path, orient="records", lines=True),
        ".parquet": lambda: df.to_parquet(path),
    }[suffix]()
    pd.testing.assert_frame_equal(data.load_table(str(path)), df)


def test_missing_or_unreadable_files_are_data_errors(tmp_path):
    with pytest.raises(DataError, match="not found"):
        data.load_table(str(tmp_path / "missing.csv"))
    bad = tmp_path / "bad.parquet"
    bad.write_text("not parquet")
    with pytest.raises(DataError, match="cannot read"):
        data.load_table(str(bad))


def test_split_is_stratified_seeded_and_disjoint():
    df, _, _ = data.clean(make_posts(50))
    train, val = data.split(df, 0.2, seed=1)
    assert len(val) == 20 and len(train) == 80
    assert sum(val["label"]) == 10  # stratified: half of each class
    assert not set(train["text"]) & set(val["text"])
    again_train, again_val = data.split(df, 0.2, seed=1)
    assert again_val["text"] == val["text"] and again_train["text"] == train["text"]
    assert data.split(df, 0.2, seed=2)[1]["text"] != val["text"]


def test_too_few_rows_to_split_is_a_data_error():
    df, _, _ = data.clean(make_posts(2))
    with pytest.raises(DataError, match="too few"):
        data.split(df, 0.16)


@pytest.mark.skipif(not REAL_DATA.exists(), reason="needs ../shared/data")
def test_real_data_is_cleaned_and_split_without_leaks():
    train, val, names, info = data.load_splits(str(REAL_DATA))
    assert info["cleaning"]["duplicates_dropped"] == 81 and info["cleaning"]["kept"] == 7650
    assert names == ["not depressive", "depressive"]
    assert len(val) == round(7650 * 0.16) and len(train) + len(val) == 7650
    assert not set(train["text"]) & set(val["text"])
    assert data.load_splits(str(REAL_DATA))[3]["val_fingerprint"] == info["val_fingerprint"]


def test_batches_are_padded_to_their_own_longest_text(tokenizer):
    texts = ["short", "a somewhat longer post with more words in it", "mid length post here"] * 4
    ds = data.Dataset.from_dict({"text": texts, "label": [0, 1, 0] * 4})
    tokens = data.tokenize(ds, tokenizer, max_length=8)
    assert max(len(ids) for ids in tokens["input_ids"]) == 8  # truncated
    for batch in data.eval_loader(tokens, tokenizer, batch_size=4):
        lengths = batch["attention_mask"].sum(1)
        assert batch["input_ids"].shape[1] == int(lengths.max())
        assert lengths.tolist() == sorted(lengths.tolist())  # evaluation: sorted by length


def test_length_grouping_cuts_padding_and_reshuffles_every_epoch(tokenizer):
    df = make_posts(200)
    df["text"] = [t + " word" * (i * 7 % 60) for i, t in enumerate(df["text"])]  # lengths from 5 to 70 tokens
    ds = data.tokenize(data.Dataset.from_pandas(df), tokenizer, max_length=128)

    def padding_share(loader):
        real = padded = 0
        for batch in loader:
            real += int(batch["attention_mask"].sum())
            padded += batch["input_ids"].numel()
        return 1 - real / padded

    grouped = data.train_loader(ds, tokenizer, batch_size=16, seed=0)
    plain = data.train_loader(ds, tokenizer, batch_size=16, seed=0, group_by_length=False)
    assert padding_share(grouped) < 0.5 * padding_share(plain)
    epoch1, epoch2 = list(grouped.batch_sampler), list(grouped.batch_sampler)
    assert sorted(i for b in epoch1 for i in b) == list(range(len(ds)))  # every post once
    assert epoch1 != epoch2
    first_lengths = [max(len(ds[i]["input_ids"]) for i in b) for b in epoch1]
    assert first_lengths != sorted(first_lengths, reverse=True)  # batches shuffled, not longest first
    assert isinstance(next(iter(grouped))["labels"], torch.Tensor)


def test_padding_share_on_fixed_lengths():
    """Lengths as in the data set at max length 64 (tweets of 5-30 tokens, Reddit posts 30-64, a third cut at 64),
    1,254 posts as in bench/peers.py: at most 5% of the computed tokens are padding, where transformers'
    grouping (cut as our old sampler cut it) wasted over 10%, and a plain shuffle far more."""
    rng = random.Random(0)
    lengths = [rng.randint(5, 30) for _ in range(627)] + [min(64, rng.randint(30, 100)) for _ in range(627)]

    def share(batches):
        real = sum(lengths[i] for b in batches for i in b)
        return 1 - real / sum(len(b) * max(lengths[i] for i in b) for b in batches)

    sampler = data.training_batches(lengths, 32, seed=42)
    for epoch in range(3):
        sampler.set_epoch(epoch)
        assert share(list(sampler)) <= 0.05
    transformers_order = get_length_grouped_indices(lengths, 32, generator=torch.Generator().manual_seed(42))
    assert share([transformers_order[i : i + 32] for i in range(0, len(lengths), 32)]) > 0.05
    assert share(list(data.training_batches(lengths, 32, seed=42, group_by_length=False))) > 0.3


@pytest.mark.parametrize("processes", [1, 2, 3])
def test_processes_share_every_epoch_exactly_once_in_equal_steps(tokenizer, processes):
    """What each process of a multi-process run trains on (train.py builds one loader per process like this):
    over 2 epochs, every post exactly once per epoch, equal step counts, batches at most --batch-size."""
    df = make_posts(101)  # 202 posts: no batch size or process count below divides it evenly
    df["text"] = [t + " word" * (i * 7 % 40) for i, t in enumerate(df["text"])]
    ds = data.tokenize(data.Dataset.from_pandas(df), tokenizer, max_length=64)
    loaders = [
        data.train_loader(ds, tokenizer, batch_size=16, seed=3, num_shards=processes, shard=rank)
        for rank in range(processes)
    ]
    for epoch in range(2):
        seen, steps = [], []
        for loader in loaders:
            loader.batch_sampler.set_epoch(epoch)
            batches = list(loader.batch_sampler)
            assert all(0 < len(b) <= 16 for b in batches)
            steps.append(len(batches))
            seen += [i for b in batches for i in b]
        assert sorted(seen) == list(range(len(ds)))  # nothing dropped, nothing repeated
        assert len(set(steps)) == 1 and steps[0] == len(loaders[0])  # DDP needs the same number of steps
    resumed = data.train_loader(ds, tokenizer, batch_size=16, seed=3, num_shards=processes)  # a new process
    for loader in (resumed, loaders[0]):
        loader.batch_sampler.set_epoch(1)
    assert list(resumed.batch_sampler) == list(loaders[0].batch_sampler)  # set_epoch alone decides the order


def test_too_few_posts_for_the_processes_is_refused(tokenizer):
    ds = data.tokenize(data.Dataset.from_pandas(make_posts(1)), tokenizer, max_length=16)
    with pytest.raises(DataError, match="cannot give each of 3 processes a batch"):
        data.train_loader(ds, tokenizer, batch_size=8, seed=0, num_shards=3)
