"""The house rules (docs/explanation/architecture.md), read from the source: they hold for every module, not only today's."""
import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "edgeae"
MODULES = sorted(PACKAGE.rglob("*.py"))
MAX_LINES = 500
MAX_PARAMETERS = 8
# Imported late, in one declared way per module, because a device install does not have them.
OPTIONAL_HEAVY = {"tensorflow", "keras", "tf2onnx", "onnx", "dask", "distributed", "matplotlib", "pandas", "pyarrow",
                  "onnxruntime", "jax"}


def name_of(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), str(path))


def project_imports(node: ast.AST) -> list[str]:
    """The edgeae modules one import statement names."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names if alias.name.split(".")[0] == "edgeae"]
    if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "edgeae":
        known = {name_of(p) for p in MODULES}
        return [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in known else node.module for a in node.names]
    return []


def is_click_command(function: ast.FunctionDef) -> bool:
    return any("command" in ast.unparse(d) for d in function.decorator_list)


def test_no_module_is_over_500_lines():
    long = {name_of(p): n for p in MODULES if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert long == {}


def test_no_function_but_a_cli_command_takes_more_than_8_parameters():
    found = []
    for path in MODULES:
        for node in ast.walk(tree(path)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                a = node.args
                names = [*a.posonlyargs, *a.args, *a.kwonlyargs, *filter(None, (a.vararg, a.kwarg))]
                count = len([n for n in names if n.arg not in ("self", "cls")])
                if count > MAX_PARAMETERS and not is_click_command(node):
                    found.append(f"{name_of(path)}.{node.name} ({count})")
    assert found == []


def test_project_modules_are_imported_at_the_top_of_the_file():
    late = []
    for path in MODULES:
        for node in ast.walk(tree(path)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for inner in ast.walk(node):
                    late += [f"{name_of(path)}.{node.name} -> {m}" for m in project_imports(inner)]
    assert late == []


def test_the_modules_import_each_other_without_a_cycle():
    graph = {name_of(p): set() for p in MODULES}
    for path in MODULES:
        for node in tree(path).body:
            graph[name_of(path)].update(m for m in project_imports(node) if m in graph and m != name_of(path))
    state: dict[str, int] = {}

    def visit(module: str, trail: list[str]) -> None:
        state[module] = 1
        for other in sorted(graph[module]):
            if state.get(other) == 1:
                pytest.fail("import cycle: " + " -> ".join([*trail[trail.index(other):], other]))
            if other not in state:
                visit(other, [*trail, other])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])


def test_only_the_contract_reads_the_manifests_raw_json():
    """Everyone else reads contract/manifest.py's records: `manifest["window"]` or `manifest.get(...)` outside
    edgeae/contract/ would be a second reading of the schema."""
    raw = []
    for path in MODULES:
        if path.parent.name == "contract":
            continue
        for node in ast.walk(tree(path)):
            target = node.value if isinstance(node, ast.Subscript) else (
                node.func.value if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr == "get" else None)
            if target is not None and "manifest" in ast.unparse(target).split(".")[-1]:
                raw.append(f"{name_of(path)}:{node.lineno} {ast.unparse(node)[:60]}")
    assert raw == []


def test_no_two_classes_share_a_name():
    """One class per error, per job and per record: two `UnsupportedModelError`s or two `Job`s would let a caller
    catch or build the wrong one."""
    where: dict[str, list[str]] = {}
    for path in MODULES:
        for node in ast.walk(tree(path)):
            if isinstance(node, ast.ClassDef):
                where.setdefault(node.name, []).append(name_of(path))
    assert {name: modules for name, modules in where.items() if len(modules) > 1} == {}
