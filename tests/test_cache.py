"""Frozen lower layers computed once (train.py's default where they apply): the same numbers as the whole model."""

import contextlib
import json

import pytest
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from conftest import make_posts, run_main
from transformers import DataCollatorWithPadding

import data
import model as M
from textclassifier import training

LABELS = ["not depressive", "depressive"]


@pytest.fixture(scope="module")
def posts(tiny_bert):
    tokenizer = M.load_tokenizer(tiny_bert)
    df = make_posts(6)
    df["text"] = [t + " and more" * (i % 5) for i, t in enumerate(df["text"])]  # lengths differ: padding matters
    return data.tokenize(data.Dataset.from_pandas(df), tokenizer, max_length=32), tokenizer


# Tolerances of the cached step against the uncached one: fp32 exactly as computed, bf16 within bf16's resolution
# (8 bits of mantissa: the cached states are rounded to bf16, the uncached layer output stays fp32 after LayerNorm).
TOLERANCE = {"no": 1e-5, "bf16": 3e-2}


@pytest.mark.parametrize("precision", ["no", "bf16"])
@pytest.mark.parametrize("config", ["pfeiffer", "houlsby", "lora", "ia3", "par_bn"])
def test_cached_step_equals_the_uncached_step(config, precision, tiny_bert, posts):
    """Dropout off (eval mode), same batch, same weights: logits and loss within the precision's tolerance, and so
    are the gradients of every trained weight; under bf16 the cache holds bf16 states (half fp32's memory)."""
    ds, tokenizer = posts
    model = M.build_model(tiny_bert, "adapter", LABELS, config, leave_out=[0], attention_dropout=0.0).eval()
    k, unsafe = M.frozen_lower_layers(model)
    assert (k, unsafe) == (1, None)
    batch = list(range(len(ds)))
    AcceleratorState._reset_state(reset_partial_state=True)  # accelerate keeps one state per process; start anew
    accelerator, tolerance = Accelerator(cpu=True, mixed_precision=precision), TOLERANCE[precision]

    def step(inputs, autocast=True):
        model.zero_grad(set_to_none=True)
        with accelerator.autocast() if autocast else contextlib.nullcontext():
            out = model(**inputs)
        out.loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        return out.logits.detach().float(), out.loss.detach().float(), grads

    rows = [{key: ds[i][key] for key in ("input_ids", "attention_mask", "token_type_ids", "label")} for i in batch]
    logits, loss, grads = step(DataCollatorWithPadding(tokenizer)(rows))

    states = training.cache_lower_layers(model, ds, tokenizer, k, batch_size=4, accelerator=accelerator)
    assert [len(s) for s in states] == data.ds_lengths(ds)  # real tokens only
    assert {s.dtype for s in states} == {torch.bfloat16 if precision == "bf16" else torch.float32}
    restore = M.skip_lower_layers(model, k)
    cached = step(data.pad_states([{"states": states[i], "labels": ds[i]["label"]} for i in batch]))
    restore()

    assert torch.allclose(cached[0], logits, atol=tolerance) and abs(float(cached[1] - loss)) < tolerance
    assert grads.keys() == cached[2].keys() and len(grads) > 0
    if precision == "no":
        for name, grad in grads.items():
            assert torch.allclose(cached[2][name], grad, atol=tolerance), name
    else:  # bf16: the cached step strays from the fp32 step about as far as the uncached bf16 step does: it rounds
        # twice (the cached states, then the compute), so at most 3x as far (the gradients of this random tiny model
        # are small sums that bf16 rounding moves a lot, cached or not)
        fp32 = step(DataCollatorWithPadding(tokenizer)(rows), autocast=False)[2]
        flat = lambda g: torch.cat([g[n].flatten() for n in sorted(fp32)])  # noqa: E731
        error_uncached, error_cached = ((flat(g) - flat(fp32)).norm() for g in (grads, cached[2]))
        assert error_cached <= 3 * error_uncached + 1e-3 * flat(fp32).norm(), (error_cached, error_uncached)
    assert torch.allclose(
        model(**DataCollatorWithPadding(tokenizer)(rows)).logits, logits, atol=1e-6 if precision == "no" else tolerance
    )  # restored


def test_each_process_caches_its_own_posts_only(tiny_bert, posts):
    """With several processes (fixed shards), process 1 of 2 computes the states of the posts it trains on and no
    others, the same states as a cache of every post; its loader serves exactly those posts."""
    ds, tokenizer = posts
    model = M.build_model(tiny_bert, "adapter", LABELS, "pfeiffer", leave_out=[0], attention_dropout=0.0)
    AcceleratorState._reset_state(reset_partial_state=True)
    accelerator = Accelerator(cpu=True, mixed_precision="no")
    every = training.cache_lower_layers(model, ds, tokenizer, 1, 4, accelerator)
    sampler = data.training_batches(data.ds_lengths(ds), 4, seed=0, num_shards=2, shard=1, fixed_shards=True)
    mine = training.cache_lower_layers(model, ds, tokenizer, 1, 4, accelerator, sampler.posts)
    assert 0 < len(sampler.posts) < len(ds)
    assert [i for i, s in enumerate(mine) if s is not None] == sampler.posts
    assert all(torch.allclose(mine[i], every[i], atol=1e-6) for i in sampler.posts)
    loader = data.states_loader(mine, ds["label"], sampler)
    labels = [label for batch in loader for label in batch["labels"].tolist()]
    assert sorted(labels) == sorted(ds["label"][i] for i in sampler.posts)


def test_layers_that_cannot_be_cached_are_named(tiny_bert):
    assert M.frozen_lower_layers(M.build_model(tiny_bert, "adapter", LABELS, "pfeiffer")) == (0, None)
    k, unsafe = M.frozen_lower_layers(M.build_model(tiny_bert, "adapter", LABELS, "prefix_tuning", leave_out=[0]))
    assert k == 0 and "prefix_tuning" in unsafe
    k, unsafe = M.frozen_lower_layers(M.build_model(tiny_bert, "adapter", LABELS, "prompt_tuning"))
    assert k == 0 and "outside the encoder layers" in unsafe


@pytest.mark.slow
def test_train_caches_by_default_where_it_applies_and_not_when_told(tiny_bert, posts_csv, tmp_path):
    common = ["--model", tiny_bert, "--data", posts_csv, "--output-dir", tmp_path, "--epochs", "2", "--batch-size", "8"]
    common += ["--max-length", "32", "--leave-out", "0"]
    cached = run_main("train.py", *common)
    assert "cached layers 0-0 for 80 posts" in cached.stdout
    rows = [json.loads(line) for line in (tmp_path / "depression-pfeiffer" / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["cache_seconds"] > 0 and rows[1]["cache_seconds"] == 0  # counted in the first epoch
    assert rows[0]["train_seconds"] >= rows[0]["cache_seconds"]
    predicted = run_main("predict.py", "--adapter", tmp_path / "depression-pfeiffer", "--json", "some text")
    assert json.loads(predicted.stdout)["label"] in LABELS  # the saved adapter loads into the whole model
    plain = run_main("train.py", *common, "--name", "plain", "--no-cache-frozen")
    assert "cached layers" not in plain.stdout
    assert json.loads((tmp_path / "plain" / "training.json").read_text())["best"]["cache_seconds"] == 0
