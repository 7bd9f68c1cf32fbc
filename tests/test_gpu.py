"""On a CUDA GPU: one epoch of adapter training with the frozen-layer cache, one of full fine-tuning, a resume,
prediction on torch and a Parallel pass of three adapters, each checked against the same work on the CPU within
bf16's tolerance (auto trains and predicts in bf16 on Ampere and later, fp16 on older GPUs). Collected everywhere,
skipped where torch sees no CUDA GPU (CI); where one is: python -m pytest tests/test_gpu.py."""

import json
import signal

import pytest
import torch
from conftest import run_cli, run_train
from test_reliability import SLOW, posts_400, start_training, wait_for  # noqa: F401 (a fixture)
from transformers import DataCollatorWithPadding

import data
import model as M
from textclassifier import inference, training

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (python -m pytest tests/test_gpu.py)"),
]
CPU = {"CUDA_VISIBLE_DEVICES": ""}  # the same command with the GPU hidden
TOLERANCE = 3e-2  # bf16 keeps 8 bits of mantissa: about 2 decimal digits
TEXTS = ["i feel so alone and tired of everything", "what a great game last night", "cannot sleep again", "hello"]


def probabilities(folder, env=None):
    """predict.py --json on the torch backend: the probability of the last label per text."""
    proc = run_cli("predict.py", "--adapter", folder, "--backend", "torch", "--json", *TEXTS, env=env)
    return [json.loads(line)["probabilities"] for line in proc.stdout.splitlines()]


def close(a, b):
    return all(abs(x - y) <= TOLERANCE for pa, pb in zip(a, b) for x, y in zip(pa.values(), pb.values()))


@pytest.mark.parametrize("flags", [["--leave-out", "0"], ["--mode", "full"]], ids=["adapter-cached", "full"])
def test_one_epoch_on_the_gpu_predicts_as_on_the_cpu(flags, tiny_bert, posts_csv, tmp_path):
    """One epoch on the GPU (the adapter with its frozen lower layer cached there); the saved folder predicts on the
    GPU what it predicts on the CPU in fp32, and it trains to a validation loss near the CPU's run."""
    common = ["--epochs", "1", "--batch-size", "8", "--max-length", "32", "--attention-dropout", "0", *flags]
    gpu = run_train(tiny_bert, posts_csv, tmp_path / "gpu", *common)
    assert "device: cuda" in gpu.stdout and ("cached layers 0-0" in gpu.stdout) == ("--leave-out" in flags)
    [folder] = (tmp_path / "gpu").iterdir()
    info = json.loads((folder / "training.json").read_text())
    assert info["device"].startswith("cuda") and info["tf32"] == (torch.cuda.get_device_capability()[0] >= 8)
    assert info["mixed_precision"] == training.mixed_precision("auto")
    assert close(probabilities(folder), probabilities(folder, env=CPU))
    cpu = run_train(tiny_bert, posts_csv, tmp_path / "cpu", *common, "--mixed-precision", "no", env=CPU)
    assert "device: cpu" in cpu.stdout
    [cpu_folder] = (tmp_path / "cpu").iterdir()
    loss = lambda f: json.loads((f / "metrics.jsonl").read_text().splitlines()[0])["val_loss"]  # noqa: E731
    assert abs(loss(folder) - loss(cpu_folder)) < 0.1  # dropout draws differ between the devices


def test_the_same_step_on_the_gpu_as_on_the_cpu(tiny_bert):
    """training.train_step from the same weights on the same batch (dropout off): loss and updated weights agree
    within bf16's tolerance; the frozen-layer cache computed on the GPU holds the CPU's states."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    tokenizer = M.load_tokenizer(tiny_bert)
    ds = data.tokenize(data.Dataset.from_dict({"text": TEXTS, "label": [1, 0, 1, 0]}), tokenizer, 32)
    batch = DataCollatorWithPadding(tokenizer)([{k: ds[i][k] for k in ds.column_names} for i in range(4)])
    results = {}
    for device in ("cpu", "cuda"):
        AcceleratorState._reset_state(reset_partial_state=True)
        accelerator = Accelerator(cpu=device == "cpu", mixed_precision="no" if device == "cpu" else "bf16")
        model = M.build_model(tiny_bert, "adapter", ["a", "b"], "pfeiffer", leave_out=[0], seed=0)
        states = training.cache_lower_layers(model.to(accelerator.device), ds, tokenizer, 1, 4, accelerator)
        optimizer = training.build_optimizer(model, 1e-3)
        model, optimizer = accelerator.prepare(model, optimizer)
        model.eval()  # no dropout: the same computation on both devices
        loss = training.train_step(model, training.to_device(dict(batch), accelerator.device), optimizer, None,
                                   accelerator)  # fmt: skip
        weights = {n: p.detach().float().cpu() for n, p in model.named_parameters() if p.requires_grad}
        results[device] = float(loss), weights, [s.float().cpu() for s in states]
    (cpu_loss, cpu_weights, cpu_states), (gpu_loss, gpu_weights, gpu_states) = results["cpu"], results["cuda"]
    assert abs(cpu_loss - gpu_loss) < TOLERANCE
    assert all(torch.allclose(cpu_weights[n], gpu_weights[n], atol=TOLERANCE) for n in cpu_weights)
    assert all(torch.allclose(a, b, atol=TOLERANCE, rtol=TOLERANCE) for a, b in zip(cpu_states, gpu_states))


def test_a_killed_gpu_run_resumes_to_the_same_result(tiny_bert, posts_400, tmp_path):  # noqa: F811
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    run_train(tiny_bert, posts_400, whole, *SLOW)
    proc = start_training(tiny_bert, posts_400, killed)
    staging = killed / "depression-pfeiffer.incomplete"
    wait_for(staging / "checkpoint" / "state.json", proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    resumed = run_train(tiny_bert, posts_400, killed, *SLOW, "--resume")
    assert "resumed after epoch" in resumed.stdout and "device: cuda" in resumed.stdout
    rows = [
        [json.loads(line) for line in (folder / "depression-pfeiffer" / "metrics.jsonl").read_text().splitlines()]
        for folder in (whole, killed)
    ]
    for a, b in zip(*rows):  # the GPU's kernels may sum in another order from run to run
        assert abs(a["train_loss"] - b["train_loss"]) < 1e-3 and abs(a["val_loss"] - b["val_loss"]) < 1e-3


def test_a_parallel_pass_of_three_adapters_on_the_gpu_gives_each_adapters_cpu_answer(tiny_bert, tmp_path):
    from bench.shared import adapter_folders

    folders = adapter_folders(tmp_path, tiny_bert, "every layer", 3)
    shared = inference.load_shared(folders)
    assert next(shared.model.parameters()).device.type == "cuda" and len(shared.passes) == 1
    together = inference.classify_shared(shared, TEXTS)
    for name, folder in zip(together, folders):
        alone = inference.classify(inference.load(folder, precision="fp32", device="cpu"), TEXTS)
        assert torch.allclose(together[name], alone, atol=TOLERANCE), name
