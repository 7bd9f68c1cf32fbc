"""The decisions made where a CUDA GPU is present, on a CPU-only machine: the GPU is faked where each decision asks
about it (torch.cuda's device properties, ONNX Runtime's providers, the Ray cluster's resources, the device a
checkpoint's tensors were saved on), and the project's own code runs. Fast tier: no subprocess, no training."""

import random
import signal
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import export_folder, fake_gpu

from textclassifier import hardware, inference, server, training

# --- auto precision: bf16 only where the GPU computes it natively


@pytest.mark.parametrize(
    "capability, name, train, predict",
    [
        ((7, 0), "Tesla V100", "fp16", torch.float16),
        ((7, 5), "Tesla T4", "fp16", torch.float16),
        ((8, 0), "A100", "bf16", torch.bfloat16),
        ((8, 9), "L4", "bf16", torch.bfloat16),
        ((9, 0), "H100", "bf16", torch.bfloat16),
    ],
    ids=["v100", "t4", "a100", "l4", "h100"],
)
def test_auto_precision_on_a_gpu_follows_its_compute_capability(capability, name, train, predict, monkeypatch):
    fake_gpu(monkeypatch, capability, name)
    assert torch.cuda.is_bf16_supported()  # as torch answers on a T4: emulated bf16 counts by default
    assert training.mixed_precision("auto") == train  # train.py --mixed-precision auto
    assert inference.autocast_dtype("cuda", "auto") == predict  # predict.py, assess.py, serve.py --precision auto
    assert hardware.auto_precision("cuda") == train
    assert training.mixed_precision("bf16") == "bf16" and inference.autocast_dtype("cuda", "bf16") == torch.bfloat16


# --- backend auto: torch on a visible GPU, never a CPU ONNX session unless asked for by name


def test_auto_backend_is_torch_where_a_cuda_gpu_is_visible(tmp_path, monkeypatch):
    verified = {"onnx": {"verified": True}, "onnx-int8": {"verified": True}}
    folder = export_folder(tmp_path / "exported", verified, inference.ONNX_FILES.values())
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert inference.fastest_backend(folder) == "onnx-int8"  # a CPU machine: the fastest verified export
    fake_gpu(monkeypatch, (7, 5), "Tesla T4")
    assert inference.fastest_backend(folder) == "torch"


def test_without_a_gpu_driver_cuda_visible_answers_without_importing_torch(tmp_path, monkeypatch):
    monkeypatch.setattr(hardware, "GPU_DRIVER_PATHS", (str(tmp_path / "nvidia0"),))
    monkeypatch.delitem(sys.modules, "torch")  # as on predict.py's ONNX path, which never imports torch
    assert not hardware.cuda_visible() and "torch" not in sys.modules
    monkeypatch.setitem(sys.modules, "torch", None)  # torch cannot be imported (tests/test_export.py runs predict so)
    assert not hardware.cuda_visible()
    (tmp_path / "nvidia0").touch()  # a driver, but no torch to ask
    assert not hardware.cuda_visible()


@pytest.mark.parametrize(
    "backend, available, expected",
    [
        ("onnx", ["CUDAExecutionProvider", "CPUExecutionProvider"], ["CUDAExecutionProvider", "CPUExecutionProvider"]),
        ("onnx", ["CPUExecutionProvider"], ["CPUExecutionProvider"]),
        ("onnx-int8", ["CUDAExecutionProvider", "CPUExecutionProvider"], ["CPUExecutionProvider"]),
    ],
    ids=["onnxruntime-gpu", "onnxruntime", "int8"],
)
def test_an_onnx_session_asks_for_cuda_only_where_onnxruntime_has_it(backend, available, expected):
    assert inference.onnx_providers(backend, available) == expected


def onnx_loaded(provider, backend="onnx"):
    session = SimpleNamespace(get_providers=lambda: [provider, "CPUExecutionProvider"])
    return inference.Loaded(inference.OnnxModel(session, None, 0, backend), None, {})


def test_an_onnx_session_on_the_cpu_beside_a_gpu_is_said(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert inference.cpu_beside_gpu_note(onnx_loaded("CPUExecutionProvider")) is None  # no GPU: nothing to say
    fake_gpu(monkeypatch, (8, 0), "A100")
    note = inference.cpu_beside_gpu_note(onnx_loaded("CPUExecutionProvider"))
    assert note.startswith("note: onnx computes on the CPU beside a CUDA GPU") and "onnxruntime-gpu" in note
    assert note.endswith("--backend torch (or auto) computes on the GPU")
    assert "int8 is a CPU format" in inference.cpu_beside_gpu_note(onnx_loaded("CPUExecutionProvider", "onnx-int8"))
    assert onnx_loaded("CUDAExecutionProvider").model.device == "cuda"
    assert inference.cpu_beside_gpu_note(onnx_loaded("CUDAExecutionProvider")) is None


# --- Ray Serve replicas ask for the cluster's GPUs on torch


@pytest.mark.parametrize(
    "backend, cluster, replicas, gpus, said",
    [
        ("torch", {"CPU": 16.0, "GPU": 2.0}, 2, 1, "2 replica(s), 1 GPU each"),
        ("torch", {"CPU": 16.0, "GPU": 1.0}, 2, 0.5, "2 replica(s), 0.5 GPU each"),
        ("torch", {"CPU": 16.0, "GPU": 1.0}, 3, 0.33, "3 replica(s), 0.33 GPU each"),
        ("torch", {"CPU": 2.0}, 2, 0, "torch on their CPUs (the cluster has no GPU)"),
        ("onnx-int8", {"CPU": 16.0, "GPU": 1.0}, 1, 0, "onnx-int8 on their CPUs"),
    ],
    ids=["a-gpu-each", "half-a-gpu", "a-third", "no-gpus", "onnx"],
)
def test_ray_serve_replicas_ask_for_gpus_where_the_cluster_has_them(backend, cluster, replicas, gpus, said,
                                                                     monkeypatch, capsys):  # fmt: skip
    ray = pytest.importorskip("ray")
    from ray import serve

    made = {}
    real_deployment = serve.deployment

    def deployment(*args, **kwargs):  # the real Deployment, its options kept
        made.update(kwargs)
        return real_deployment(*args, **kwargs)

    monkeypatch.setattr(ray, "init", lambda **kwargs: None)
    monkeypatch.setattr(ray, "cluster_resources", lambda: cluster)
    monkeypatch.setattr(ray, "shutdown", lambda: None)
    for name, fake in {"start": lambda **kw: None, "run": lambda *a, **kw: None, "shutdown": lambda: None}.items():
        monkeypatch.setattr(serve, name, fake)
    monkeypatch.setattr(serve, "deployment", deployment)
    monkeypatch.setattr(signal, "signal", lambda sig, handler: handler())  # "interrupted" at once: no waiting
    server.deploy_on_ray(["adapters/x"], backend, None, server.Limits(), replicas, "127.0.0.1", 8000)
    assert made["num_replicas"] == replicas and made["ray_actor_options"]["num_gpus"] == gpus
    assert said in capsys.readouterr().out


# --- resume on another device than the one that wrote the checkpoint


def fake_accelerator(device="cpu"):
    return SimpleNamespace(
        device=torch.device(device), process_index=0, num_processes=1, is_main_process=True,
        wait_for_everyone=lambda: None, unwrap_model=lambda m: m,
    )  # fmt: skip


def model_optimizer_scheduler():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.LayerNorm(3))
    optimizer = training.build_optimizer(model, lr=1e-2)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 - step / 10)
    return model, optimizer, scheduler


def test_a_checkpoint_saved_on_a_gpu_resumes_on_this_cpu(tmp_path, monkeypatch):
    model, optimizer, scheduler = model_optimizer_scheduler()
    model(torch.randn(5, 4)).sum().backward()
    optimizer.step(), scheduler.step()
    state = {"epoch": 1, "history": [{"epoch": 1, "accuracy": 0.5}]}
    best = {name: p.detach().clone() for name, p in model.named_parameters()}
    random.seed(7), np.random.seed(7), torch.manual_seed(7)
    with monkeypatch.context() as m:  # every tensor stored as rank 1 of a GPU machine stores it
        m.setattr(torch.serialization, "location_tag", lambda storage: "cuda:1")
        training.save_checkpoint(tmp_path, fake_accelerator(), model, optimizer, scheduler, best, state)
    with pytest.raises(RuntimeError, match="CUDA"):  # what a torch.load without map_location meets here
        torch.load(tmp_path / "checkpoint" / "optimizer.pt", weights_only=True)
    expected = (random.random(), np.random.rand(), torch.rand(1))
    random.seed(0), np.random.seed(0), torch.manual_seed(0)

    fresh, fresh_optimizer, fresh_scheduler = model_optimizer_scheduler()
    resumed, _ = training.load_checkpoint(tmp_path, fake_accelerator(), fresh, fresh_optimizer, fresh_scheduler)
    assert resumed["epoch"] == 1 and fresh_scheduler.last_epoch == scheduler.last_epoch
    saved_state, restored = optimizer.state_dict()["state"], fresh_optimizer.state_dict()["state"]
    for key in saved_state:
        assert restored[key]["exp_avg"].device.type == "cpu"
        torch.testing.assert_close(restored[key]["exp_avg"], saved_state[key]["exp_avg"])
    assert (random.random(), np.random.rand(), torch.rand(1)) == expected  # the random states come back too


def test_each_rank_saves_and_restores_only_its_own_gpus_random_state(monkeypatch):
    fake_gpu(monkeypatch, (8, 0), "A100")
    asked, restored = [], []
    state = torch.ones(8, dtype=torch.uint8)
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device: asked.append(device) or state)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device: restored.append((state, device)))
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: pytest.fail("every GPU's state saved by one rank"))
    states = training.rng_states(torch.device("cuda", 1))
    assert asked == [torch.device("cuda", 1)] and states["cuda"].tolist() == [1] * 8
    training.set_rng_states(states, torch.device("cuda", 1))
    assert len(restored) == 1 and restored[0][1] == torch.device("cuda", 1)
    restored.clear()
    training.set_rng_states(states, torch.device("cpu"))  # resumed on a CPU: the GPU's state has no place here
    assert restored == []


# --- TF32 for the fp32 matrix products: Ampere and later only


@pytest.mark.parametrize("capability, applies", [((7, 0), False), ((7, 5), False), ((8, 0), True), ((9, 0), True)])
def test_tf32_applies_on_ampere_and_later_gpus_only(capability, applies, monkeypatch):
    assert not hardware.tf32_applies("cpu") and not hardware.tf32_applies("mps")
    fake_gpu(monkeypatch, capability)
    assert hardware.tf32_applies("cuda") == applies


def test_train_py_uses_tf32_unless_told_not_to():
    import train
    from textclassifier import settings

    assert train.parse_args([]).tf32 and not train.parse_args(["--no-tf32"]).tf32
    assert "tf32" in settings.resume_keys()  # a run resumes with the matmul precision it started with


# --- the schedule advances only with the optimizer (fp16's gradient scaler skips steps that overflowed)


def test_the_schedule_waits_for_a_step_that_fp16s_scaler_skipped(tiny_bert, monkeypatch):
    from accelerate import Accelerator
    from transformers import get_linear_schedule_with_warmup

    import model as M

    model = M.build_model(tiny_bert, "full", ["a", "b"])
    accelerator = Accelerator(cpu=True, mixed_precision="no")
    optimizer = training.build_optimizer(model, 1e-3)
    scheduler = get_linear_schedule_with_warmup(optimizer, 2, 10)
    model, optimizer = accelerator.prepare(model, optimizer)
    batch = {"input_ids": torch.tensor([[101, 2000, 102]]), "attention_mask": torch.ones(1, 3, dtype=torch.long)}
    training.train_step(model, {**batch, "labels": torch.tensor([1])}, optimizer, scheduler, accelerator)
    assert scheduler.last_epoch == 1
    monkeypatch.setattr(type(accelerator), "optimizer_step_was_skipped", property(lambda self: True))
    training.train_step(model, {**batch, "labels": torch.tensor([1])}, optimizer, scheduler, accelerator)
    assert scheduler.last_epoch == 1  # the skipped step left the learning rate where it was
