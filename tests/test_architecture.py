"""The house plan (docs/ARCHITECTURE.md) held against the code: which package may import which, no import cycle,
no import of a top-level script from the package, benchmarks importing the package only, the scripts short."""
import ast
import os

import pytest

from tests.helpers import ROOT

PACKAGE = os.path.join(ROOT, "util_mindspore")
# what each part of util_mindspore may import of the others (docs/ARCHITECTURE.md, util_mindspore/__init__.py)
ALLOWED = {
    "errors": set(),
    "registry": {"errors"},
    "files": {"errors"},
    "process": {"errors", "files"},
    "checkpoints": {"errors", "registry", "files"},
    "data": {"errors", "files", "process"},
    "evaluation": {"errors", "files"},
    "models": {"errors", "registry", "files", "checkpoints"},
    "training": {"errors", "registry", "files", "process", "checkpoints", "data", "evaluation", "models"},
    "inference": {"errors", "registry", "files", "process", "checkpoints", "data", "evaluation", "models"},
    "cli": {"errors", "registry", "files", "process"},
    "reference": {"errors", "registry", "models"},  # DINOv3's parameter shapes come from our cells
}
SCRIPT_LINES = 300  # the upstream-named scripts read as tables of contents


def package_modules():
    for folder, _, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                yield os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".").removesuffix(".__init__"), path


def imports_of(path):
    """Every module an import statement of the file names (`from a import b` gives a and a.b), at any depth."""
    with open(path, encoding="utf-8") as fh:
        tree = ast.parse(fh.read())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def part(module):
    """The part of util_mindspore a module belongs to (`util_mindspore.models.vit` -> models), or None."""
    pieces = module.split(".")
    return pieces[1] if pieces[0] == "util_mindspore" and len(pieces) > 1 else None


MODULES = dict(package_modules())
SCRIPTS = sorted(f[:-3] for f in os.listdir(ROOT) if f.endswith(".py") and f != "setup.py")


def test_every_package_imports_only_what_the_plan_allows():
    assert set(ALLOWED) == {part(m) for m in MODULES if part(m)}, "a part of the package the plan does not name"
    wrong = []
    for module, path in MODULES.items():
        own = part(module)
        if own is None:
            continue
        for name in imports_of(path):
            other = part(name)
            if other and other != own and other in ALLOWED and other not in ALLOWED[own]:
                wrong.append(f"{module} imports {name}")
            if name.split(".")[0] in SCRIPTS or name.split(".")[0] == "tests":
                wrong.append(f"{module} imports {name} (upward: a script or the tests)")
    assert not wrong, "\n".join(wrong)


def test_no_module_of_the_package_takes_part_in_an_import_cycle():
    graph = {m: {n for n in imports_of(p) if n in MODULES and n != m} for m, p in MODULES.items()}
    state, cycles = {}, []

    def visit(node, stack):
        state[node] = "open"
        stack.append(node)
        for nxt in graph[node]:
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack)
        stack.pop()
        state[node] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [])
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles)


def test_benchmarks_import_the_package_only():
    folder = os.path.join(ROOT, "benchmarks")
    local = {f[:-3] for f in os.listdir(folder) if f.endswith(".py")}
    wrong = [f"benchmarks/{f} imports {name}" for f in sorted(os.listdir(folder)) if f.endswith(".py")
             for name in imports_of(os.path.join(folder, f))
             if name.split(".")[0] in set(SCRIPTS) | {"tests"} and name.split(".")[0] not in local]
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("script", SCRIPTS)
def test_each_upstream_named_script_is_a_table_of_contents(script):
    with open(os.path.join(ROOT, f"{script}.py"), encoding="utf-8") as fh:
        lines = sum(1 for _ in fh)
    assert lines <= SCRIPT_LINES, f"{script}.py has {lines} lines: move its steps into the package"


def test_every_package_says_what_lives_there_and_what_it_may_import():
    for name in ALLOWED:
        path = os.path.join(PACKAGE, name, "__init__.py")
        if not os.path.exists(path):
            continue  # a module at the package's root (errors.py, registry.py)
        with open(path, encoding="utf-8") as fh:
            doc = ast.get_docstring(ast.parse(fh.read())) or ""
        assert len(doc.split()) >= 25 and "import" in doc.lower(), \
            f"util_mindspore/{name}/__init__.py: say what lives there and what it may import"
