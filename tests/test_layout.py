"""The project's top-level names: none may shadow a package that its requirements install or that its ecosystem
commonly imports, for anything run from the project's root (a script, a notebook, `python -c`)."""

import sys
from importlib.metadata import packages_distributions
from pathlib import Path

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


# --- One house (issue 62): the commands at the root, the library in textclassifier/, no import circle

COMMANDS = {"train", "predict", "assess", "export", "serve", "classify_corpus"}
BELOW_THE_PACKAGE = {"data", "model", "posts", "errors"}  # root modules that the package stands on


def project_imports(path):
    """{project module imported anywhere in the file (at the top or inside a function): the names used from it}."""
    import ast

    tree = ast.parse(path.read_text())
    found, aliases = {}, {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.setdefault(alias.name, set())
                aliases[alias.asname or alias.name] = alias.name
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for alias in node.names:
                whole = f"{node.module}.{alias.name}"
                is_module = (ROOT / Path(*whole.split("."))).with_suffix(".py").is_file()
                found.setdefault(whole if is_module else node.module, set()).update(
                    set() if is_module else {alias.name}
                )
                if is_module:
                    aliases[alias.asname or alias.name] = whole
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases:
            found[aliases[node.value.id]].add(node.attr)
    known = {module_name(p) for p in project_files()}
    return {name: used for name, used in found.items() if name in known}


def module_name(path):
    return ".".join(path.relative_to(ROOT).with_suffix("").parts)


def project_files():
    folders = [ROOT, ROOT / "textclassifier", ROOT / "bench"]
    return [p for folder in folders for p in folder.glob("*.py") if p.name != "__init__.py"]


def test_the_root_holds_the_commands_and_the_library_is_one_package_without_circles():
    root = sorted(p.stem for p in ROOT.glob("*.py"))
    assert len(root) <= 10 and COMMANDS | BELOW_THE_PACKAGE == set(root), root
    assert (ROOT / "textclassifier" / "__init__.py").read_text() == ""  # importing it loads nothing (the ONNX path)
    graph = {module_name(p): project_imports(p) for p in project_files()}
    for name, imports in graph.items():
        if name.startswith("textclassifier."):
            assert not set(imports) & (COMMANDS | {n for n in graph if n.startswith("bench.")}), (name, imports)
        if name in BELOW_THE_PACKAGE:  # nothing the package stands on imports it back: no import runs upward
            assert not any(i.startswith("textclassifier") or i in COMMANDS for i in imports), (name, imports)
        if name.startswith("bench."):  # a benchmark runs a command as a user does, through main(argv)
            assert all(used <= {"main"} for i, used in imports.items() if i in COMMANDS), (name, imports)

    def circle_from(start, path):
        for nxt in graph.get(path[-1], {}):
            if nxt == start:
                return [*path, nxt]
            if nxt not in path and (found := circle_from(start, [*path, nxt])):
                return found
        return None

    circles = [c for name in graph if (c := circle_from(name, [name]))]
    assert not circles, circles[0]
