"""The package's shape (docs/architecture.md): imports point down the layers, no cycles, no hidden
function-local imports of our own modules, thin entry points, no dependency declared for nothing."""

from __future__ import annotations

import ast
import configparser
import os
import re
import shutil
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(REPO, "vpgtrans_jax")
ENTRY_POINTS = ("scripts", "convert")
MAX_SCRIPT_LINES = 90  # "about 80": flag definitions plus one library call


def _python_files(root: str) -> list[str]:
    return sorted(
        os.path.join(d, f) for d, _, files in os.walk(root) for f in files if f.endswith(".py")
    )


def test_import_contract_holds():
    """``lint-imports`` with the contract in setup.cfg: layers point down, no cycles."""
    exe = shutil.which("lint-imports") or os.path.join(
        os.path.dirname(sys.executable), "lint-imports"
    )
    done = subprocess.run([exe], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "2 kept, 0 broken" in done.stdout


def test_contract_names_every_package():
    """Every subpackage / top-level module sits on a layer of the contract (none escapes it)."""
    cfg = configparser.ConfigParser()
    cfg.read(os.path.join(REPO, "setup.cfg"))
    layers = cfg["importlinter:contract:layers"]["layers"]
    named = set(re.findall(r"vpgtrans_jax\.(\w+)", layers))
    present = {
        name[:-3] if name.endswith(".py") else name
        for name in os.listdir(PACKAGE)
        if not name.startswith(("_", ".")) and (name.endswith(".py") or os.path.isdir(
            os.path.join(PACKAGE, name)) and name != "__pycache__")
    }  # fmt: skip
    assert present == named, f"not on a layer: {sorted(present - named)}"


def test_no_function_local_imports_of_our_modules():
    offenders = []
    for path in _python_files(PACKAGE):
        tree = ast.parse(open(path).read(), path)
        for fn in ast.walk(tree):
            if not isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for node in ast.walk(fn):
                if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
                    "vpgtrans_jax"
                ):
                    offenders.append(f"{os.path.relpath(path, REPO)}:{node.lineno}")
                if isinstance(node, ast.Import) and any(
                    a.name.startswith("vpgtrans_jax") for a in node.names
                ):
                    offenders.append(f"{os.path.relpath(path, REPO)}:{node.lineno}")
    assert not offenders, offenders


def test_lazy_heavy_imports_say_why():
    """torch / TensorFlow / gradio stay lazy inside functions, each with a one-line reason."""
    heavy = ("torch", "tensorflow", "tensorflow_datasets", "gradio", "fastapi", "uvicorn")
    missing = []
    for path in _python_files(PACKAGE):
        lines = open(path).read().split("\n")
        for fn in ast.walk(ast.parse("\n".join(lines), path)):
            if not isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for node in ast.walk(fn):
                names = (
                    [node.module or ""]
                    if isinstance(node, ast.ImportFrom)
                    else [a.name for a in node.names]
                    if isinstance(node, ast.Import)
                    else []
                )
                if any(n.split(".")[0] in heavy for n in names):
                    if "# lazy:" not in lines[node.lineno - 1]:
                        missing.append(f"{os.path.relpath(path, REPO)}:{node.lineno}")
    assert not missing, missing


@pytest.mark.parametrize("folder", ENTRY_POINTS)
def test_entry_points_are_thin(folder):
    too_long = {}
    for path in _python_files(os.path.join(REPO, folder)):
        n = len(open(path).read().splitlines())
        if n > MAX_SCRIPT_LINES:
            too_long[os.path.relpath(path, REPO)] = n
    assert not too_long, too_long


def test_every_declared_dependency_is_imported():
    cfg = configparser.ConfigParser()
    cfg.read(os.path.join(REPO, "setup.cfg"))
    declared = [
        re.split(r"[<>=!~\[; ]", line.strip())[0]
        for line in cfg["options"]["install_requires"].strip().splitlines()
        if line.strip()
    ]
    # Distribution name → the module it provides, where they differ.
    module = {"absl-py": "absl", "pillow": "PIL", "orbax-checkpoint": "orbax", "ml_collections":
              "ml_collections", "ml_dtypes": "ml_dtypes"}  # fmt: skip
    # Needed at run time without an import of ours: transformers reads LLaMA / Vicuna
    # SentencePiece tokenizers (tokenizer.model) with it.
    runtime_only = {"sentencepiece"}
    sources = "\n".join(open(p).read() for p in _python_files(PACKAGE))
    unused = [
        d
        for d in declared
        if d not in runtime_only
        and not re.search(rf"^\s*(import|from) {re.escape(module.get(d, d))}\b", sources, re.M)
    ]
    assert not unused, f"declared in setup.cfg but never imported: {unused}"
