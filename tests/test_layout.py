"""The project's top-level names: none may shadow a package that its requirements install or that its ecosystem
commonly imports, for anything run from the project's root (a script, a notebook, `python -c`)."""

import sys
from importlib.metadata import packages_distributions

from conftest import ROOT

# Packages this ecosystem imports by these names, installed here or not (a user's notebook may import any of them).
ECOSYSTEM = {
    "accelerate", "adapters", "datasets", "diffusers", "evaluate", "fastapi", "gradio", "httpx", "huggingface_hub",
    "matplotlib", "mlflow", "nbclient", "nbformat", "numpy", "onnx", "onnxruntime", "optimum", "pandas", "peft",
    "playwright", "pydantic", "pytest", "ray", "requests", "safetensors", "scipy", "selenium", "sentence_transformers",
    "sklearn", "starlette", "tokenizers", "torch", "tqdm", "transformers", "trl", "uvicorn", "wandb",
}  # fmt: skip


def top_level_names():
    """(modules and regular packages, folders without __init__.py) at the project's root."""
    modules = {p.stem for p in ROOT.glob("*.py")} | {p.parent.name for p in ROOT.glob("*/__init__.py")}
    folders = {p.name for p in ROOT.iterdir() if p.is_dir() and not (p / "__init__.py").exists()}
    return modules, folders - {".git", ".ci", ".ruff_cache", "__pycache__"}


def test_no_top_level_module_shadows_a_package():
    taken = ECOSYSTEM | set(packages_distributions()) | set(sys.stdlib_module_names)
    modules, _ = top_level_names()
    assert {"train", "predict", "assess", "serve"} <= modules  # the scripts are where the check looks
    assert not modules & taken, f"rename {sorted(modules & taken)}: it shadows an installed or common package"


def test_folders_named_like_packages_stay_namespace_folders():
    """adapters/ holds trained adapters; with an __init__.py it would shadow the adapters library. Without one,
    Python takes the installed package before a folder of the same name."""
    _, folders = top_level_names()
    assert "adapters" in folders and not (ROOT / "adapters" / "__init__.py").exists()
