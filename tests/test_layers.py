"""The package's layers (``seq2seq_jax/__init__.py``): every import of a ``seq2seq_jax`` module, at module level
or inside a function, points to the same layer or one below; the core imports no framework and nothing outside
the core install; ``torch_ref`` stands on the core alone."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("core", "model", "decoding", "training", "serving")  # bottom to top; api and cli above them all
TOP = len(LAYERS)
FRAMEWORKS = {"jax", "jaxlib", "flax", "optax", "orbax", "torch"}
CORE_INSTALL = {"numpy", "sentencepiece", "safetensors", "ml_dtypes"}  # pyproject's core dependencies


def layer_of(module: str) -> int:
    """The layer of an imported ``seq2seq_jax`` module's dotted name; the top-level package imports nothing at
    import time (its ``load`` imports the API when called), so importing it counts as the core."""
    parts = module.split(".")
    if parts == ["seq2seq_jax"]:
        return 0
    return LAYERS.index(parts[1]) if parts[1] in LAYERS else TOP


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, text: str | None = None) -> list[tuple[int, str]]:
    """Every imported module of ``path`` (or of ``text`` read as ``path``) as (line, absolute dotted name), lazy
    imports included."""
    found = []
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text() if text is None else text, str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found.append((node.lineno, base))
            if base == "seq2seq_jax":  # from seq2seq_jax import core / training ...: the imported sub-packages
                found += [(node.lineno, f"seq2seq_jax.{alias.name}") for alias in node.names
                          if alias.name in LAYERS]
    return found


def sources(folder: str) -> list[Path]:
    return sorted((ROOT / folder).rglob("*.py"))


def test_the_layers_are_the_packages_there_are():
    packages = {p.name for p in (ROOT / "seq2seq_jax").iterdir() if (p / "__init__.py").is_file()}
    assert packages == set(LAYERS)
    assert sorted(p.name for p in (ROOT / "seq2seq_jax").glob("*.py")) == [
        "__init__.py", "__main__.py", "api.py", "cli.py", "cli_parser.py", "compilation_cache.py"]


@pytest.mark.parametrize("path", sources("seq2seq_jax"), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_import_runs_up_a_layer(path):
    own = TOP if module_name(path) == "seq2seq_jax" else layer_of(module_name(path))
    upward = [f"line {line}: {name}" for line, name in imports(path)
              if name.split(".")[0] == "seq2seq_jax" and layer_of(name) > own]
    assert not upward, f"{path.relative_to(ROOT)} (layer {own}) imports from higher layers: {upward}"


@pytest.mark.parametrize("path", sources("seq2seq_jax/core"), ids=lambda p: str(p.relative_to(ROOT)))
def test_the_core_imports_no_framework_and_nothing_outside_its_install(path):
    allowed = CORE_INSTALL | set(sys.stdlib_module_names) | {"seq2seq_jax"}
    outside = [f"line {line}: {name}" for line, name in imports(path) if name.split(".")[0] not in allowed]
    assert not outside, f"{path.relative_to(ROOT)} imports outside the core install: {outside}"
    assert not [name for _, name in imports(path) if name.split(".")[0] in FRAMEWORKS]


@pytest.mark.parametrize("path", sources("torch_ref"), ids=lambda p: str(p.relative_to(ROOT)))
def test_torch_ref_stands_on_the_core_alone(path):
    above = [f"line {line}: {name}" for line, name in imports(path)
             if name.split(".")[0] == "seq2seq_jax" and layer_of(name) > 0]
    assert not above, f"{path.relative_to(ROOT)} imports JAX-side modules: {above}"
    assert not [name for _, name in imports(path) if name.split(".")[0] in FRAMEWORKS - {"torch"}]


def test_an_upward_import_is_caught():
    """The walk sees lazy and relative imports (the checks above cannot pass by seeing nothing)."""
    probe = ROOT / "seq2seq_jax" / "core" / "probe.py"
    found = imports(probe, "def f():\n    from ..training import trainer\n    import jax\n")
    assert (2, "seq2seq_jax.training") in found and (3, "jax") in found
    assert layer_of("seq2seq_jax.training") > layer_of(module_name(probe))
