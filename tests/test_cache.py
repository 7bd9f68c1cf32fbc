"""Frozen lower layers computed once (train.py's default where they apply): the same numbers as the whole model."""

import json

import pytest
import torch
from accelerate import Accelerator
from conftest import make_posts, run_cli
from transformers import DataCollatorWithPadding

import data
import model as M
import train

LABELS = ["not depressive", "depressive"]


@pytest.fixture(scope="module")
def posts(tiny_bert):
    tokenizer = M.load_tokenizer(tiny_bert)
    df = make_posts(6)
    df["text"] = [t + " and more" * (i % 5) for i, t in enumerate(df["text"])]  # lengths differ: padding matters
    return data.tokenize(data.Dataset.from_pandas(df), tokenizer, max_length=32), tokenizer


@pytest.mark.parametrize("config", ["pfeiffer", "houlsby", "lora", "ia3", "par_bn"])
def test_cached_step_equals_the_uncached_step(config, tiny_bert, posts):
    """Dropout off (eval mode), same batch, same weights: logits and loss within 1e-5, and so are the gradients
    of every trained weight."""
    ds, tokenizer = posts
    model = M.build_model(tiny_bert, "adapter", LABELS, config, leave_out=[0], attention_dropout=0.0).eval()
    k, unsafe = M.frozen_lower_layers(model)
    assert (k, unsafe) == (1, None)
    batch = list(range(len(ds)))

    def step(inputs):
        model.zero_grad(set_to_none=True)
        out = model(**inputs)
        out.loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        return out.logits.detach(), out.loss.detach(), grads

    rows = [{key: ds[i][key] for key in ("input_ids", "attention_mask", "token_type_ids", "label")} for i in batch]
    logits, loss, grads = step(DataCollatorWithPadding(tokenizer)(rows))

    states = train.cache_lower_layers(model, ds, tokenizer, k, batch_size=4, accelerator=Accelerator(cpu=True))
    assert [len(s) for s in states] == data.ds_lengths(ds)  # real tokens only
    restore = M.skip_lower_layers(model, k)
    cached = step(data.pad_states([{"states": states[i], "labels": ds[i]["label"]} for i in batch]))
    restore()

    assert torch.allclose(cached[0], logits, atol=1e-5) and abs(float(cached[1] - loss)) < 1e-5
    assert grads.keys() == cached[2].keys() and len(grads) > 0
    for name, grad in grads.items():
        assert torch.allclose(cached[2][name], grad, atol=1e-5), name
    assert torch.allclose(model(**DataCollatorWithPadding(tokenizer)(rows)).logits, logits, atol=1e-6)  # restored


def test_layers_that_cannot_be_cached_are_named(tiny_bert):
    assert M.frozen_lower_layers(M.build_model(tiny_bert, "adapter", LABELS, "pfeiffer")) == (0, None)
    k, unsafe = M.frozen_lower_layers(M.build_model(tiny_bert, "adapter", LABELS, "prefix_tuning", leave_out=[0]))
    assert k == 0 and "prefix_tuning" in unsafe
    k, unsafe = M.frozen_lower_layers(M.build_model(tiny_bert, "adapter", LABELS, "prompt_tuning"))
    assert k == 0 and "outside the encoder layers" in unsafe


def test_train_caches_by_default_where_it_applies_and_not_when_told(tiny_bert, posts_csv, tmp_path):
    common = [
        "--model",
        tiny_bert,
        "--data",
        posts_csv,
        "--output-dir",
        tmp_path,
        "--epochs",
        "2",
        "--batch-size",
        "8",
        "--max-length",
        "32",
        "--leave-out",
        "0",
    ]
    cached = run_cli("train.py", *common)
    assert "cached layers 0-0 for 80 posts" in cached.stdout
    rows = [json.loads(line) for line in (tmp_path / "depression-pfeiffer" / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["cache_seconds"] > 0 and rows[1]["cache_seconds"] == 0  # counted in the first epoch
    assert rows[0]["train_seconds"] >= rows[0]["cache_seconds"]
    predicted = run_cli("predict.py", "--adapter", tmp_path / "depression-pfeiffer", "--json", "some text")
    assert json.loads(predicted.stdout)["label"] in LABELS  # the saved adapter loads into the whole model
    plain = run_cli("train.py", *common, "--name", "plain", "--no-cache-frozen")
    assert "cached layers" not in plain.stdout
    assert json.loads((tmp_path / "plain" / "training.json").read_text())["best"]["cache_seconds"] == 0
