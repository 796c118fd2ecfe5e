"""Layering, read from the import statements themselves (ast, function-level imports included): configs import
no model code, the data layer no model / training / objective code, training not the user API; and no import
cycle among vlm_jax modules counting module-level imports (what runs when a module is first imported)."""
from __future__ import annotations

import ast
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "vlm_jax"


def module_name(path: Path, root: Path = ROOT) -> str:
    """vlm_jax/data/tuxpaint/__init__.py → vlm_jax.data.tuxpaint; experiments/x.py → experiments.x."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(name: str, root: Path) -> bool:
    """Whether `name` is a module or package under `root`."""
    base = root.joinpath(*name.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def _in_function(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    """Whether `node` runs only when called (inside a def or lambda) or only for type checkers."""
    while node in parents:
        node = parents[node]
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            return True
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return True
    return False


def imports(path: Path, module_level_only: bool = False, root: Path = ROOT) -> set[str]:
    """Dotted names a file imports; `from pkg import sub` names pkg.sub when sub is a vlm_jax module."""
    tree = ast.parse(path.read_text(), str(path))
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(tree):
        if not isinstance(node, (ast.Import, ast.ImportFrom)):
            continue
        if module_level_only and _in_function(node, parents):
            continue
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
            continue
        base = node.module or ""
        if node.level:  # relative: resolved against this file's package
            anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
            base = ".".join(anchor + ([base] if base else []))
        for alias in node.names:
            full = f"{base}.{alias.name}"
            out.add(full if _is_module(full, root) else base)
    return out


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*.py") if "_build" not in p.parts)


def violations(folder: Path, forbidden: tuple[str, ...]) -> list[str]:
    """'file: module' for every import under `folder` of a module under one of the `forbidden` prefixes."""
    return [f"{p.relative_to(ROOT)}: {name}" for p in _files(folder) for name in sorted(imports(p))
            if any(name == f or name.startswith(f + ".") for f in forbidden)]


def test_parser_sees_function_level_relative_and_from_imports(tmp_path):
    """The checker itself: a synthetic package with each import form, against the names written out by hand."""
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    for f in ("__init__.py", "a.py", "sub/__init__.py", "sub/b.py"):
        (pkg / f).write_text("")
    (pkg / "sub" / "c.py").write_text(
        "import os\nfrom . import b\nfrom .b import thing\nfrom .. import a\nfrom typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    import pkg.hidden\n"
        "def f():\n    from pkg.sub import b as late\n    import json\n")
    c = pkg / "sub" / "c.py"
    assert imports(c, root=tmp_path) == {"os", "pkg.sub.b", "pkg.a", "typing", "pkg.hidden", "json"}
    assert imports(c, module_level_only=True, root=tmp_path) == {"os", "pkg.sub.b", "pkg.a", "typing"}


def test_configs_import_no_model_code():
    assert violations(ROOT / "experiments", ("vlm_jax.models",)) == []


def test_data_imports_no_models_training_or_objectives():
    assert violations(PACKAGE / "data", ("vlm_jax.models", "vlm_jax.train", "vlm_jax.objectives")) == []


def test_training_imports_no_user_api_or_models():
    assert violations(PACKAGE / "train", ("vlm_jax.api", "vlm_jax.models")) == []


def test_no_import_cycle_at_module_level():
    graph = {module_name(p): {m for m in imports(p, module_level_only=True) if m.startswith("vlm_jax")}
             for p in _files(PACKAGE)}
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    cycles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert cycles == [], "\n".join(" → ".join(c) for c in cycles)


_STANDALONE = r"""
import importlib, os, sys, traceback
third_party, modules = sys.argv[1].split(","), sys.argv[2].split(",")
for name in third_party:  # shared by every child: only the vlm_jax modules are imported afresh in each
    try:
        importlib.import_module(name)
    except Exception:
        pass
failed = []
for name in modules:
    pid = os.fork()
    if pid == 0:
        try:
            importlib.import_module(name)
            os._exit(0)
        except BaseException:
            traceback.print_exc()
            os._exit(1)
    if os.waitpid(pid, 0)[1]:
        failed.append(name)
print("FAILED:" + ",".join(failed))
"""


def test_every_data_module_imports_on_its_own():
    """Each vlm_jax.data module imported first thing in a fresh (forked) interpreter."""
    import subprocess
    import sys

    modules = [module_name(p) for p in _files(PACKAGE / "data")]
    third_party = sorted({m for p in _files(PACKAGE) for m in imports(p, module_level_only=True)
                          if not m.startswith(("vlm_jax", "__future__"))})
    out = subprocess.run([sys.executable, "-c", _STANDALONE, ",".join(third_party), ",".join(modules)],
                         capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert "FAILED:\n" in out.stdout, out.stdout[-3000:] + out.stderr[-3000:]
