"""The project's top-level names: none may shadow a package that its requirements install or that its ecosystem
commonly imports, for anything run from the project's root (a script, a notebook, `python -c`)."""

import sys
from importlib.metadata import packages_distributions

import pytest
from conftest import ROOT, run_cli

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


IMPORT_CHECK = """
import logging, os
import datasets
import data, model, train, export
from textclassifier import training, inference, saved
os.environ["DEPRESSION_DATA"] = "/set/after/import.csv"
print(datasets.is_progress_bar_enabled(), logging.getLogger("adapters.model_mixin").filters,
      logging.getLevelName(logging.getLogger().level),
      data.default_data(), data.sources("original"),
      [name for name in dir(data) if getattr(data, name) == "/set/at/import.csv"])
"""


@pytest.mark.slow
def test_importing_the_modules_changes_nothing_and_reads_no_environment():
    """`import data, model, training, inference` (and train, export) leaves the datasets progress bars on, installs
    no log filter, leaves the root logger's level, and keeps no copy of $DEPRESSION_DATA: the data set is looked up
    when a command asks for it."""
    proc = run_cli("-c", IMPORT_CHECK, env={"DEPRESSION_DATA": "/set/at/import.csv"})
    assert proc.stdout.split("\n")[0] == ("True [] WARNING /set/after/import.csv ['/set/after/import.csv'] []"), (
        proc.stdout
    )


def project_lines(folder=""):
    """Lines of the project's Python files under `folder` (tests, hidden folders and virtual environments aside)."""
    parts = [f.relative_to(ROOT).parts for f in (ROOT / folder).rglob("*.py")]
    files = [ROOT.joinpath(*p) for p in parts if not {"tests", "site-packages"} & set(p) and p[0][0] != "."]
    return sum(len(f.read_text().splitlines()) for f in files)


def test_the_readme_starts_with_the_quick_start_and_bench_stays_small():
    """Issue 48: a README of at most 120 lines with `python train.py` in its first 40 and one chart; bench/ at most
    35% of the project's Python lines."""
    readme = (ROOT / "README.md").read_text().splitlines()
    assert len(readme) <= 120
    assert any(line.startswith("python train.py") for line in readme[:40])
    [chart] = [line for line in readme if line.startswith("![")]
    assert (ROOT / chart.split("](")[1].rstrip(")")).is_file()
    assert project_lines("bench") <= 0.35 * project_lines()
