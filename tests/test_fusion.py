"""AdapterFusion (train.py --fusion) on the tiny BERT: trained over two trained adapters, saved, reloaded (by this
project and by plain adapters), predicting as before saving, served beside another folder, exported to ONNX, pushed
and pulled, resumed after an interruption, and every refusal in one line with nothing written."""

import json

import numpy as np
import pytest
import torch
from conftest import (
    ONE_QUICK_EPOCH,
    FakeHub,
    assert_clean_failure,
    fill_hub_cache,
    make_posts,
    run_main,
    run_train,
    save_plain_adapter,
    save_tiny_bert,
)

import train
from textclassifier import fusion, inference, saved, server, sharing, training

TEXTS = ["i feel hopeless and empty every day", "our team won the cup today", "made pancakes for everyone"]
QUICK = [*ONE_QUICK_EPOCH, "--mixed-precision", "no"]  # full precision: the comparisons below are exact


@pytest.fixture(scope="module")
def sources(tiny_bert, posts_csv, tmp_path_factory):
    """Two Pfeiffer adapters trained by train.py (other seeds), and a three-class target task."""
    out = tmp_path_factory.mktemp("sources")
    for name, seed in (("first", "1"), ("second", "2")):
        run_train(tiny_bert, posts_csv, out, *QUICK, "--name", name, "--seed", seed, "--lr", "1e-2", run=run_main)
    target = out / "three.csv"
    posts = make_posts(45)
    posts["label"] = [["low", "mid", "high"][i % 3] for i in range(len(posts))]
    posts.to_csv(target, index=False)
    return out, str(target)


@pytest.fixture(scope="module")
def fused(sources, tmp_path_factory):
    """A Fusion of the two adapters for the target task, trained in this process: (folder, model as trained)."""
    out, target = sources
    folder = tmp_path_factory.mktemp("fused")
    args = train.parse_args(["--data", target, "--fusion", str(out / "first"), str(out / "second"), "--output-dir",
                             str(folder), *QUICK, "--epochs", "2", "--lr", "1e-2"])  # fmt: skip
    model, _ = train.run(args)
    return folder / "depression-fusion", model


def probabilities(model, tokenizer):
    return inference.predict_proba(model, tokenizer, TEXTS, 32, precision="fp32").numpy()


def test_fusion_saves_one_folder_that_reloads_and_predicts_as_before_saving(fused, sources, tiny_bert):
    folder, trained = fused
    info = json.loads((folder / "training.json").read_text())
    assert info["adapter_config"] == "fusion" and info["fusion"]["adapters"] == ["first", "second"]
    assert [s["from"] for s in info["fusion"]["sources"]] == [str(sources[0] / n) for n in ("first", "second")]
    assert info["label_names"] == ["high", "low", "mid"] and info["base_model"] == tiny_bert  # the adapters' base
    for name in saved.folder_files(info):  # the adapters copied in: the folder stands alone
        assert (folder / name).is_file(), name
    trainable = {n for n, p in trained.named_parameters() if p.requires_grad}
    assert trainable and all("adapter_fusion_layer" in n or n.startswith("heads.") for n in trainable)
    assert info["parameters"]["trainable"] == sum(p.numel() for p in trained.parameters() if p.requires_grad)

    loaded = inference.load(folder, precision="fp32")
    before = probabilities(trained, loaded.tokenizer)
    assert np.abs(probabilities(loaded.model, loaded.tokenizer) - before).max() <= 1e-6
    # the adapters library alone reads the folder as its own adapter setup
    from adapters import AutoAdapterModel

    plain = AutoAdapterModel.from_pretrained(tiny_bert)
    plain.load_adapter_setup(str(folder), set_active=True, use_safetensors=True)
    assert np.abs(probabilities(plain.eval(), loaded.tokenizer) - before).max() <= 1e-6
    # the Fusion's attention over the two adapters: a share per adapter, summing to one
    weights = fusion.attention_by_adapter(loaded.model, loaded.tokenizer, TEXTS, 32)
    assert list(weights) == ["first", "second"] and sum(weights.values()) == pytest.approx(1, abs=1e-5)
    proc = run_main("predict.py", "--adapter", folder, "--json", "--precision", "fp32", *TEXTS)
    got = [list(json.loads(line)["probabilities"].values()) for line in proc.stdout.splitlines()]
    assert np.abs(np.array(got) - before).max() <= 1e-6
    card = (folder / "README.md").read_text()
    assert "AdapterFusion" in card and "load_adapter_setup" in card


def test_fusion_is_served_beside_its_own_adapters_each_answering_as_alone(fused, sources):
    from fastapi.testclient import TestClient

    folder, _ = fused
    first = sources[0] / "first"  # also fused inside the Fusion: both live in one base model under their names
    models = server.Models([str(folder), str(first)], precision="fp32")
    with TestClient(server.create_app(models, server.Limits(max_texts=4, max_chars=100))) as client:
        listed = {a["name"]: a for a in client.get("/adapters").json()["adapters"]}
        assert listed["depression-fusion"]["labels"] == ["high", "low", "mid"]
        answer = client.post("/classify", json={"texts": TEXTS}).json()["results"]
    for name, where in (("depression-fusion", folder), ("first", first)):
        alone = inference.load(where, precision="fp32")
        got = np.array([list(r["adapters"][name]["probabilities"].values()) for r in answer])
        assert np.abs(got - probabilities(alone.model, alone.tokenizer)).max() <= 1e-6
    assessed = run_main("assess.py", "--adapter", folder, "--data", sources[1], "--bootstrap", "0")
    assert "accuracy" in assessed.stdout


def test_fusion_exports_to_onnx_checked_as_any_export(fused, sources, tmp_path):
    import shutil

    folder = tmp_path / "fusion"
    shutil.copytree(fused[0], folder)
    proc = run_main("export.py", "--adapter", folder, "--data", sources[1], "--no-int8")
    assert "model.onnx: kept" in proc.stdout
    onnx = inference.load(folder, backend="onnx")
    torch_ = inference.load(folder, precision="fp32")
    assert np.abs(np.asarray(inference.classify(onnx, TEXTS)) - inference.classify(torch_, TEXTS).numpy()).max() < 1e-4
    (folder / "second" / "adapter.safetensors").write_bytes(b"")  # a fused adapter changed: the export is stale
    assert inference.trained_fingerprint(folder) != inference.read_export_info(folder)["trained_fingerprint"]


def test_fusion_is_pushed_with_its_subfolders_and_used_by_its_hub_id(fused, tmp_path, monkeypatch):
    import huggingface_hub

    folder, trained = fused
    hub = FakeHub()
    sharing.push_folder(folder, "me/fusion", api=hub)
    [upload] = hub.uploads
    assert set(upload["files"]) == {"README.md", "metrics.jsonl", "training.json", *saved.folder_files(
        json.loads((folder / "training.json").read_text()))}  # fmt: skip
    cache = tmp_path / "hub-cache"
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    fill_hub_cache(cache, "me/fusion", upload["files"])
    proc = run_main("predict.py", "--adapter", "me/fusion", "--json", "--precision", "fp32", *TEXTS)
    got = [list(json.loads(line)["probabilities"].values()) for line in proc.stdout.splitlines()]
    local = inference.load(folder, precision="fp32")
    assert np.abs(np.array(got) - probabilities(local.model, local.tokenizer)).max() <= 1e-6


def test_an_interrupted_fusion_run_resumes_to_the_same_result(sources, tmp_path, monkeypatch):
    out, target = sources
    flags = ["--data", target, "--fusion", out / "first", out / "second", *QUICK, "--epochs", "2", "--lr", "1e-2"]
    run_main("train.py", *flags, "--output-dir", tmp_path / "whole")
    save_checkpoint = training.save_checkpoint

    def killed_after_the_first_epoch(*args, **kwargs):
        save_checkpoint(*args, **kwargs)
        raise KeyboardInterrupt  # as a kill right after the first checkpoint

    monkeypatch.setattr(training, "save_checkpoint", killed_after_the_first_epoch)
    with pytest.raises(KeyboardInterrupt):
        run_main("train.py", *flags, "--output-dir", tmp_path / "killed")
    monkeypatch.setattr(training, "save_checkpoint", save_checkpoint)
    assert not (tmp_path / "killed" / "depression-fusion").exists()
    resumed = run_main("train.py", *flags, "--output-dir", tmp_path / "killed", "--resume")
    assert "resumed after epoch 1 of 2" in resumed.stdout
    rows = [[json.loads(r) for r in (tmp_path / w / "depression-fusion" / "metrics.jsonl").read_text().splitlines()]
            for w in ("whole", "killed")]  # fmt: skip
    assert [r["epoch"] for r in rows[1]] == [1, 2]
    for a, b in zip(*rows):
        assert abs(a["train_loss"] - b["train_loss"]) <= 1e-4 and abs(a["val_loss"] - b["val_loss"]) <= 1e-4


def test_what_fusion_cannot_combine_is_refused_in_one_line_with_nothing_written(sources, tiny_bert, tmp_path):
    out, target = sources
    first, second = str(out / "first"), str(out / "second")
    made = tmp_path / "made"
    run_train(tiny_bert, target, made, *QUICK, "--mode", "full", "--name", "full", run=run_main)
    for name, config in (("houlsby", "double_seq_bn"), ("lora", "lora"), ("inverted", "seq_bn_inv"),
                         ("upper", "seq_bn[leave_out=[0]]")):  # fmt: skip
        plain_adapter(tiny_bert, made / name, config)
    other_base = save_tiny_bert(tmp_path / "other-bert")
    save_plain_adapter(other_base, made / "elsewhere")
    cases = [
        ([first], ["at least two", "1 given"]),
        ([first, str(made / "full")], ["fully fine-tuned model, not an adapter"]),
        ([first, str(made / "lora")], ["lora", "bottleneck adapters only"]),
        ([first, str(made / "houlsby")], ["differ in where their modules sit", "after attention"]),
        ([first, str(made / "upper")], ["differ in where their modules sit", "layers left out"]),
        ([first, str(made / "inverted")], ["invertible adapters", "does not fuse"]),
        ([first, str(made / "elsewhere")], ["was trained on", "share one base model"]),
        ([first, first], ["same name"]),
        ([first, str(tmp_path / "nothing")], ["nothing"]),
    ]
    for words, expected in cases:
        proc = run_main("train.py", "--data", target, "--fusion", *words, "--output-dir", tmp_path / "out", *QUICK,
                        check=False)  # fmt: skip
        assert_clean_failure(proc, *expected)
    proc = run_main("train.py", "--data", target, "--fusion", first, second, "--mode", "full", check=False)
    assert_clean_failure(proc, "drop --mode full")
    proc = run_main("train.py", "--data", target, "--model", tiny_bert, "--fusion", first, str(made / "lora"),
                    "--output-dir", tmp_path / "out", check=False)  # fmt: skip
    assert_clean_failure(proc, "bottleneck adapters only")  # with --model too, before the folder is claimed
    assert not (tmp_path / "out").exists()  # nothing trained, nothing written


def plain_adapter(base, folder, config):
    """An adapter of `config` with a two-class head, saved by the adapters library alone."""
    from adapters import AutoAdapterModel

    model = AutoAdapterModel.from_pretrained(base)
    model.add_adapter("x", config=config)
    model.add_classification_head("x", num_labels=2)
    torch.manual_seed(0)
    model.save_adapter(str(folder), "x", with_head=True, use_safetensors=True)


def test_a_fusion_holding_an_adapter_of_research_only_data_is_not_pushed(sources, tmp_path, monkeypatch):
    import shutil

    out, target = sources
    movies = tmp_path / "movies"
    shutil.copytree(out / "first", movies)
    info = json.loads((movies / "training.json").read_text())
    (movies / "training.json").write_text(json.dumps({**info, "data_set": "movies"}))
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    proc = run_main("train.py", "--data", target, "--fusion", out / "first", movies, "--push-to-hub", "me/x",
                    "--output-dir", tmp_path / "out", check=False)  # fmt: skip
    assert_clean_failure(proc, "research use only", "drop --push-to-hub")
    assert not (tmp_path / "out").exists()
