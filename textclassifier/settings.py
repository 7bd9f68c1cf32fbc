"""
The settings of a training run: one dataclass field per flag of train.py (name, type, default, one line of help),
read by HfArgumentParser as in the adapters library's example scripts, then checked and completed (complete). Every
one of them goes into the checkpoint (--resume must repeat it) and into training.json; the longer explanations are in
docs/usage.md ("Every flag of train.py").

    >>> args = parse(["--mode", "adapter", "--epochs", "1"])    # DataError (one line) where a value is wrong
    >>> args.adapter_config, args.lr, args.epochs
    ('pfeiffer', 0.001, 1)
    >>> resume_config(args, num_processes=1)["lr"]            # what a checkpoint must agree on
    0.001
"""

from dataclasses import dataclass, field, fields
from typing import Literal

from transformers import HfArgumentParser

import data
import model as M
import posts
from errors import DataError
from textclassifier import fusion, training


def setting(default=None, help="", **argparse_options):
    """A dataclass field that HfArgumentParser turns into a flag: its default, one line of help, argparse extras."""
    return field(default=default, metadata={"help": help, **argparse_options})


def remedy(help):
    """A remedy's switch: --X (on), --X false (off), or unset: the named data set's choice (data.DATA_SETS)."""
    return setting(None, f"{help} (false: off; unset: as the named data set says)", nargs="?", const=True)


LABEL_COLUMNS, VAL_SIZE = data.LABEL_COLUMNS, data.VAL_SIZE  # inside DataSettings, `data` is the field


@dataclass
class DataSettings:
    _argument_group_name = "data: what is trained and validated on"
    data: str = setting(
        "default", "default: the depression data set + the Reddit posts in corpora/; original: the depression data "
        "set alone; another task: reviews, rating, department, spam, movies, subreddits (docs/tasks.md); or a Hub "
        "id or .csv/.tsv/.json/.jsonl/.parquet files (docs/usage.md)", nargs="+", metavar="DATA",
    )  # fmt: skip
    label_map: list[str] | None = setting(
        help="label values -> labels, e.g. 1=ds,dsf 0=bc drop=nd (drop: leave out)", metavar="TARGET=VALUES"
    )
    normalize_text: bool = setting(False, "lower-case and keep a-z 0-9 only, as the depression data set was cleaned")
    length_expert: float | None = setting(
        help="train with a length-only model in a product of experts, its log-probabilities times WEIGHT "
        "(alone: 1; 0: off; unset: as the named data set says)", nargs="?", const=1.0, metavar="WEIGHT",
    )  # fmt: skip
    short_copies: bool | None = remedy("also train on each training post over 32 words cut to its first 8-32 words")
    masked_copies: bool | None = remedy("also train on each training post that says depress* or suicid*, those "
                                        "words removed (both labels)")  # fmt: skip
    other_senses: bool | None = remedy("also train and validate on corpora/other-senses.csv: 'depression' in other "
                                       "senses, and posts of people not depressed, all labelled 0")  # fmt: skip
    text_column: str | None = setting(help=f"text column (None: the first of {', '.join(posts.TEXT_COLUMNS)})")
    label_column: str | None = setting(help=f"label column (None: the first of {', '.join(LABEL_COLUMNS)})")
    val_size: float = setting(VAL_SIZE, "share of the data held out for validation (the write-up's)")
    max_train_samples: int | None = setting(help="train on the first N training posts only (quick runs)")
    max_eval_samples: int | None = setting(help="validate on the first N validation posts only")
    split_seed: int = setting(42, "seed of the train/validation split: keep it to compare runs on the same posts")
    class_weights: Literal["none", "balanced"] = setting("none", "balanced: weight each class's loss as scikit-learn")


@dataclass
class ModelSettings:
    _argument_group_name = "model: the base model and what is trained of it"
    mode: Literal["adapter", "full"] = setting("adapter", "adapter: a bottleneck adapter + head, base frozen; full")
    adapter_config: str = setting(
        "pfeiffer", f"pfeiffer (seq_bn), houlsby (double_seq_bn) or: "
        f"{', '.join(n for n in M.ADAPTER_CONFIGS if n not in ('pfeiffer', 'houlsby'))}",
    )  # fmt: skip
    reduction_factor: int | None = setting(help="hidden size / bottleneck size (None: the library's, 16)")
    leave_out: list[int] | None = setting(help="layers without an adapter, e.g. 0 1 2", metavar="LAYER")
    fusion: list[str] | None = setting(help="train an AdapterFusion over these trained adapters (folders or Hub "
                                       "ids, at least two; frozen) and a new head for --data (docs/fusion.md)",
                                       nargs="+", metavar="ADAPTER")  # fmt: skip
    model: str | None = setting(help=f"base model: a Hub id or a folder (None: {M.DEFAULT_MODEL}, with --fusion the "
                                "fused adapters'; bert-base-uncased: the write-up's)")  # fmt: skip
    attention_dropout: float = setting(training.ATTENTION_DROPOUT, "dropout on the attention probabilities")


@dataclass
class LoopSettings:
    _argument_group_name = "training: the loop and its settings"
    epochs: int = setting(training.EPOCHS, "passes over the training data")
    lr: float | None = setting(help=f"peak learning rate (None: {training.LR['adapter']:g} adapter, "
                               f"{training.LR['full']:g} full)")  # fmt: skip
    warmup_ratio: float = setting(training.WARMUP_RATIO, "share of the steps for linear warm-up")
    weight_decay: float = setting(training.WEIGHT_DECAY, "AdamW weight decay (not on biases and LayerNorm weights)")
    batch_size: int = setting(training.BATCH_SIZE, "posts per batch, on each process")
    max_length: int = setting(training.MAX_LENGTH, "tokens per post; longer posts are truncated")
    group_by_length: bool = setting(True, "batches of posts of similar length (--no-group-by-length: shuffled)")
    cache_frozen: bool = setting(True, "compute frozen lower layers once (--no-cache-frozen: every epoch)")
    mixed_precision: Literal["auto", "no", "fp16", "bf16"] = setting("auto", "auto: bf16 or fp16 where native")
    tf32: bool = setting(True, "TF32 matmuls on CUDA GPUs of compute capability 8.0+ (--no-tf32: full fp32)")
    seed: int = setting(42, "seed of the new weights, dropout and the batch order")
    patience: int | None = setting(help="stop after N epochs without a better --metric (None: run every epoch)")
    metric: Literal["accuracy", "macro_f1"] = setting("accuracy", "what chooses the best epoch")
    calibrate: bool = setting(False, "fit a temperature on the validation posts: probabilities that mean what they "
                              "say (predict.py, assess.py, serve.py and the ONNX export apply it)")  # fmt: skip


SETTINGS = (DataSettings, ModelSettings, LoopSettings)


def parse(argv):
    """The settings (and nothing else) from a list of train.py's flags, completed (complete)."""
    return complete(HfArgumentParser(SETTINGS).parse_args(argv))


def complete(args):
    """The settings parsed from a command line, checked (DataError, one line), with the named data set's label map,
    normalisation and remedies and the mode's learning rate filled in where not given; returns args."""
    if args.epochs < 1 or args.batch_size < 1 or args.max_length < 8:
        raise DataError("--epochs and --batch-size must be at least 1, --max-length at least 8")
    if not 0 <= args.attention_dropout < 1:
        raise DataError("--attention-dropout must be at least 0 and below 1, e.g. 0.1")
    if not 0 < args.val_size < 1:
        raise DataError("--val-size must be between 0 and 1, e.g. 0.16")
    if args.patience is not None and args.patience < 1:
        raise DataError("--patience must be at least 1 (epochs without a better validation accuracy)")
    if isinstance(args.data, list) and len(args.data) == 1:
        args.data = args.data[0]  # one source stays a plain string, as before (training.json, --resume)
    named = data.named_set(args.data)
    if named is not None:  # the named data set's label column and map, normalisation and remedies, unless given
        args.label_column = args.label_column or named["label_column"]
        args.label_map = named["label_map"] if args.label_map is None else args.label_map
        args.normalize_text = args.normalize_text or named["normalize_text"]
        for key, value in named["remedies"].items():
            setattr(args, key, value if getattr(args, key) is None else getattr(args, key))
    args.short_copies, args.masked_copies, args.other_senses = (
        bool(getattr(args, key)) for key in ("short_copies", "masked_copies", "other_senses")
    )
    args.length_expert = args.length_expert or None  # 0: off
    data.parse_label_map(args.label_map)
    if args.fusion:  # the adapters checked before any work; the base model and config theirs
        if args.mode != "adapter":
            raise DataError("--fusion trains an AdapterFusion over trained adapters, the base frozen: drop --mode full")
        sources = fusion.check_sources(args.fusion, args.model)  # without --model: the first one's base
        args.model = args.model or sources[0][2]["base_model"]
        args.adapter_config = "fusion"
    args.model = args.model or M.DEFAULT_MODEL
    args.lr = args.lr or training.LR["fusion" if args.fusion else args.mode]
    return args


def resume_keys():
    """Every setting: the fields of SETTINGS."""
    return [f.name for settings in SETTINGS for f in fields(settings)]


def resume_config(args, num_processes):
    """The settings a checkpoint must agree on with the command that resumes it, and the number of processes."""
    return {**{key: getattr(args, key) for key in resume_keys()}, "num_processes": num_processes}
