"""The package's shape: imports point down (command -> flows -> loop -> run -> objectives/scene/prior/export
-> core), no import cycles, no function over 100 lines, every script indexed. Read from the source with ast, so a function-local
import counts as much as a top-level one."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parent.parent / "dreamfield"

# Layers, top to bottom: a module may import its own layer's modules and any layer below, never above.
LAYERS = [
    {"dreamfield.cli", "dreamfield.__main__"},
    {"dreamfield.batch"},
    {"dreamfield.generate", "dreamfield.edit", "dreamfield.sample"},
    {"dreamfield.optimize"},
    {"dreamfield.run"},
]
FLOWS_AND_UP = set().union(*LAYERS)
LOWER = ("dreamfield.scene", "dreamfield.diffusion", "dreamfield.distill", "dreamfield.prior", "dreamfield.export",
         "dreamfield.toy")


def module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports_of(path: Path) -> set[str]:
    """Every dreamfield module that ``path`` imports, anywhere in it."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("dreamfield")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("dreamfield"):
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
    return found


def graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in PKG.rglob("*.py")}
    return {m: {i for i in imports_of(p) if i in modules and i != m} for m, p in modules.items()}


def layer_of(module: str) -> int | None:
    for k, layer in enumerate(LAYERS):
        if module in layer:
            return k
    return None


def test_imports_point_down():
    bad = []
    for mod, deps in graph().items():
        for dep in deps:
            lm, ld = layer_of(mod), layer_of(dep)
            if ld is not None and (lm is None or ld < lm):  # a lower module importing a flow, or a flow a command
                bad.append(f"{mod} -> {dep}")
            if mod.startswith(LOWER) and dep in FLOWS_AND_UP:
                bad.append(f"{mod} -> {dep}")
    assert not bad, bad


def test_no_import_cycles():
    g = graph()
    state: dict[str, int] = {}
    cycles = []

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        for d in sorted(g[m]):
            if d.startswith(m + "."):  # a package importing its own submodules is not a cycle
                continue
            if state.get(d) == 1 and not m.startswith(d + "."):
                cycles.append(stack[stack.index(d):] + [d] if d in stack else [m, d])
            elif d not in state:
                visit(d, stack + [d])
        state[m] = 2

    for m in sorted(g):
        if m not in state:
            visit(m, [m])
    assert not cycles, cycles


def test_no_function_over_100_lines():
    long = []
    for path in PKG.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > 100:
                    long.append(f"{module_name(path)}.{node.name}: {n} lines")
    assert not long, long


def test_the_checker_sees_an_upward_import(tmp_path):
    # the rule above must be able to fail: a scene module importing the loop is caught
    fake = tmp_path / "m.py"
    fake.write_text("def f():\n    from dreamfield.optimize import optimize\n")
    assert "dreamfield.optimize" in imports_of(fake)


def test_every_script_is_listed_in_the_scripts_readme():
    scripts = Path(__file__).resolve().parents[1] / "scripts"
    index = (scripts / "README.md").read_text()
    missing = [p.name for p in sorted(scripts.iterdir()) if p.is_file() and p.name != "README.md"
               and f"`{p.name}`" not in index]
    assert not missing, f"scripts/README.md does not list {missing}"
