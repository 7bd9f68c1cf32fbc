"""bf16 where the CPU computes it natively: --mixed-precision auto and the torch prediction path follow the CPU's
flags (mocked here: this test runs the same on every machine), explicit choices are kept, and prediction can be held
in fp32. (Training, resuming and saving in bf16: tests/test_reliability.py; the frozen-layer cache in bf16:
tests/test_cache.py.)"""

import json

import pytest
import torch
from conftest import run_cli, run_main, run_train

from textclassifier import hardware, inference, training

CPUS = {
    "AVX2 only (AMD EPYC Zen 3)": (["fpu", "sse2", "avx2", "fma"], "no"),
    "AVX-512 without bf16 (Intel Ice Lake)": (["avx2", "avx512f", "avx512bw"], "no"),
    "AVX-512 BF16 (AMD Zen 4 and 5)": (["avx2", "avx512f", "avx512_bf16"], "bf16"),
    "AMX (Intel Sapphire Rapids)": (["avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"], "bf16"),
    "no /proc/cpuinfo": ([], "no"),
}


@pytest.mark.parametrize("cpu", list(CPUS))
def test_auto_follows_the_cpus_capabilities(cpu, monkeypatch):
    flags, expected = CPUS[cpu]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    monkeypatch.setattr(hardware, "cpu_info", lambda: {"flags": flags})
    assert hardware.cpu_has_bf16() == (expected == "bf16")
    assert training.mixed_precision("auto") == expected
    assert inference.autocast_dtype("cpu", "auto") == (torch.bfloat16 if expected == "bf16" else None)
    for choice in ("no", "bf16", "fp16"):  # explicit choices are the user's, whatever the CPU
        assert training.mixed_precision(choice) == choice
    assert inference.autocast_dtype("cpu", "fp32") is None and inference.autocast_dtype("cpu", "bf16") == torch.bfloat16


@pytest.mark.slow
def test_prediction_in_bf16_and_held_in_fp32(tiny_bert, posts_csv, tmp_path):
    flags = ["--epochs", "2", "--lr", "1e-2", "--mixed-precision", "bf16"]
    run_train(tiny_bert, posts_csv, tmp_path, *flags, run=run_main)
    folder = tmp_path / "depression-pfeiffer"
    info = json.loads((folder / "training.json").read_text())
    assert info["mixed_precision"] == "bf16"
    texts = ["i feel hopeless and empty every day", "our team won the cup today", "short"]
    rows = {}
    for precision in ("fp32", "bf16"):  # bf16 in a new process, as a user runs it; fp32 in this one
        run = run_cli if precision == "bf16" else run_main
        proc = run("predict.py", "--adapter", folder, "--backend", "torch", "--precision", precision, "--json", *texts)
        rows[precision] = torch.tensor(
            [list(json.loads(line)["probabilities"].values()) for line in proc.stdout.splitlines()]
        )
    expected = inference.predict_proba(*load_fp32(folder), texts, info["max_length"], precision="fp32")
    assert torch.allclose(rows["fp32"], expected, atol=1e-6)  # fp32 held: exactly the full-precision model
    assert torch.allclose(rows["bf16"], rows["fp32"], atol=2e-2)  # bf16: within its resolution


def load_fp32(folder):
    loaded = inference.load(folder, precision="fp32")
    return loaded.model, loaded.tokenizer
