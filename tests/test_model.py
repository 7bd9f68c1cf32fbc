import pytest
import torch

import model as M
from errors import ModelError
from textclassifier import training

LABELS = ["not depressive", "depressive"]


def adapter_modules(model):
    """Bottleneck modules of our adapter, one per insertion point."""
    return [name for name, _ in model.named_modules() if name.endswith(f"adapters.{M.ADAPTER_NAME}")]


@pytest.fixture(scope="module")
def pfeiffer():
    return M.build_model(M.OFFLINE_MINILM, "adapter", LABELS, "pfeiffer")


def test_adapter_mode_freezes_the_backbone(pfeiffer):
    counts = M.count_parameters(pfeiffer)
    assert counts["total"] > 22_000_000  # all-MiniLM-L6-v2 plus adapter and head
    assert 0 < counts["trainable_percent"] < 5
    trainable = [n for n, p in pfeiffer.named_parameters() if p.requires_grad]
    assert trainable and all(f"adapters.{M.ADAPTER_NAME}" in n or n.startswith("heads.") for n in trainable)
    assert all(
        not p.requires_grad for n, p in pfeiffer.named_parameters() if "embeddings" in n or "attention.self" in n
    )
    assert list(pfeiffer.heads) == [M.ADAPTER_NAME]
    assert pfeiffer.config.id2label == {0: "not depressive", 1: "depressive"}


def test_houlsby_has_twice_the_adapter_modules_of_pfeiffer(pfeiffer):
    houlsby = M.build_model(M.OFFLINE_MINILM, "adapter", LABELS, "houlsby")
    assert len(adapter_modules(pfeiffer)) == 6  # one per layer, after the feed-forward block
    assert len(adapter_modules(houlsby)) == 12  # two per layer
    assert all("attention" in n for n in adapter_modules(houlsby) if n not in adapter_modules(pfeiffer))
    assert M.count_parameters(houlsby)["trainable"] > M.count_parameters(pfeiffer)["trainable"]
    assert M.count_parameters(houlsby)["trainable_percent"] < 5


def test_full_mode_trains_every_weight():
    full = M.build_model(M.OFFLINE_MINILM, "full", LABELS)
    assert M.count_parameters(full)["trainable_percent"] == 100
    assert full.config.id2label[1] == "depressive"


def test_library_names_and_overrides(tiny_bert):
    assert type(M.adapter_config("houlsby")) is type(M.adapter_config("double_seq_bn"))
    assert M.adapter_config("pfeiffer", reduction_factor=4).reduction_factor == 4
    upper = M.build_model(tiny_bert, "adapter", LABELS, "seq_bn", leave_out=[0])
    assert [n for n in adapter_modules(upper) if ".layer.0." in n] == []
    assert len(adapter_modules(upper)) == 1
    lora = M.build_model(tiny_bert, "adapter", LABELS, "lora")
    assert 0 < M.count_parameters(lora)["trainable_percent"] < 100


def test_unknown_config_and_impossible_overrides_are_refused():
    with pytest.raises(ModelError, match="unknown adapter config 'bottleneck'; choose one of"):
        M.adapter_config("bottleneck")
    with pytest.raises(ModelError, match="has no reduction-factor"):
        M.adapter_config("lora", reduction_factor=8)
    with pytest.raises(ModelError, match="unknown mode"):
        M.build_model(M.OFFLINE_MINILM, "partial", LABELS)


def test_seeded_adapters_start_identical(tiny_bert):
    a, b = (M.build_model(tiny_bert, "adapter", LABELS, seed=3) for _ in range(2))
    sa, sb = a.state_dict(), b.state_dict()
    assert all((sa[k] == sb[k]).all() for k in sa)


def test_attention_dropout_override_reaches_every_attention_layer(tiny_bert):
    kept = M.build_model(tiny_bert, "adapter", LABELS)  # None: the checkpoint's 0.1
    off = M.build_model(tiny_bert, "full", LABELS, attention_dropout=0.0)
    assert kept.config.attention_probs_dropout_prob == 0.1 and off.config.attention_probs_dropout_prob == 0.0
    assert {m.dropout_prob for m in kept.modules() if hasattr(m, "dropout_prob")} == {0.1}
    assert {m.dropout_prob for m in off.modules() if hasattr(m, "dropout_prob")} == {0.0}
    assert any(m.p == 0.1 for m in off.modules() if isinstance(m, torch.nn.Dropout))  # hidden dropout untouched


@pytest.mark.parametrize("mode, config", [("full", None), ("adapter", "pfeiffer"), ("adapter", "lora")])
def test_weight_decay_spares_biases_and_layernorm_weights(tiny_bert, mode, config):
    """training.build_optimizer: AdamW groups as transformers.Trainer makes them; frozen weights in neither group."""
    model = M.build_model(tiny_bert, mode, LABELS, config or "pfeiffer")
    optimizer = training.build_optimizer(model, lr=1e-3, weight_decay=0.01)
    names = {id(p): name for name, p in model.named_parameters()}
    decayed, undecayed = ({names[id(p)] for p in group["params"]} for group in optimizer.param_groups)
    assert [group["weight_decay"] for group in optimizer.param_groups] == [0.01, 0.0]
    assert decayed | undecayed == {name for name, p in model.named_parameters() if p.requires_grad}
    assert not decayed & undecayed
    assert undecayed == {n for n in decayed | undecayed if n.endswith(".bias") or "LayerNorm" in n}
    assert undecayed and all(n.endswith("weight") or "lora_" in n for n in decayed)
    if mode == "full":
        assert "bert.embeddings.LayerNorm.weight" in undecayed and "classifier.weight" in decayed
