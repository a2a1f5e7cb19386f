"""The package's layout rules, checked on its source: layers point down, no import
circle (lazy imports inside functions included), one process role per module, one
error family."""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
import re
from pathlib import Path

import pytest

import foundation_dask as fd

PACKAGE = Path(fd.__file__).parent

#: What each layer may not import (module prefixes), lazily or not.
FORBIDDEN = {
    "foundation_dask.core": ("foundation_dask.scope", "foundation_dask.dspex",
                             "foundation_dask.views", "foundation_dask.widgets",
                             "foundation_dask.dashboard", "foundation_dask.demo",
                             "foundation_dask.cli"),
    "foundation_dask.scope": ("foundation_dask.dspex", "foundation_dask.views",
                              "foundation_dask.widgets", "foundation_dask.dashboard",
                              "foundation_dask.demo", "foundation_dask.cli", "bokeh",
                              "ipywidgets", "anywidget", "jupyter_bokeh"),
    "foundation_dask.dspex": ("foundation_dask.views", "foundation_dask.widgets",
                              "foundation_dask.dashboard", "foundation_dask.demo",
                              "foundation_dask.cli", "bokeh", "ipywidgets", "anywidget",
                              "jupyter_bokeh"),
}
#: The lowest layer: below core and scope, imports no subsystem.
BASE = ("foundation_dask.errors", "foundation_dask.config", "foundation_dask._compat",
        "foundation_dask._html", "foundation_dask._lazy", "foundation_dask.tracecontext")

#: Modules allowed to be longer than MAX_LINES, with the reason.
LONG_MODULES: dict[str, str] = {}
MAX_LINES = 650

ROLE = re.compile(r"^(Any process|(Scheduler|Worker|Client)( and (scheduler|worker|client))*)"
                  r"( side)?:")


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


MODULES = _modules()


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(module: str, path: Path) -> set[str]:
    """Modules ``module`` imports, at any depth of its code, but for type checking."""
    tree = ast.parse(path.read_text())
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for sub in child.orelse:
                    visit(sub)
                continue
            if isinstance(child, ast.Import):
                out.update(a.name for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = package.split(".")
                    anchor = anchor[: len(anchor) - child.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                for a in child.names:
                    sub = f"{base}.{a.name}"
                    out.add(sub if sub in MODULES else base)
            visit(child)

    visit(tree)
    return out


GRAPH = {m: {i for i in _imports(m, p)} for m, p in MODULES.items()}


def test_layers_point_down():
    wrong = []
    for module, imported in GRAPH.items():
        for layer, forbidden in FORBIDDEN.items():
            if module == layer or module.startswith(layer + "."):
                wrong += [f"{module} imports {i}" for i in sorted(imported)
                          if i.startswith(forbidden)]
        if module in BASE:
            wrong += [f"{module} (base layer) imports {i}" for i in sorted(imported)
                      if i.startswith("foundation_dask") and i not in BASE]
    assert not wrong, "\n".join(wrong)


def test_core_names_no_upper_layer():
    """The check of the layout rule as text: core does not even name scope, dspex or the UI."""
    pattern = re.compile(r"foundation_dask\.(scope|dspex|views|widgets|dashboard)")
    hits = [f"{p.relative_to(PACKAGE)}:{n}: {line.strip()}"
            for p in sorted((PACKAGE / "core").rglob("*.py"))
            for n, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert not hits, "\n".join(hits)


def test_no_import_circle():
    internal = {m: {i for i in deps if i in MODULES and i != m} for m, deps in GRAPH.items()}
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def walk(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for n in sorted(internal[m]):
            if state.get(n) == 1:
                cycles.append([*stack[stack.index(n):], n])
            elif n not in state:
                walk(n)
        stack.pop()
        state[m] = 2

    for m in sorted(internal):
        if m not in state:
            walk(m)
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles[:20])


def test_modules_say_where_they_run_and_stay_short():
    wrong = []
    for module, path in MODULES.items():
        text = path.read_text()
        doc = ast.get_docstring(ast.parse(text)) or ""
        if path.name != "__init__.py" and not ROLE.match(doc):
            wrong.append(f"{module}: the docstring does not open with the process it runs "
                         f"in ('Scheduler:', 'Worker:', 'Client:', 'Any process:'...): "
                         f"{doc[:60]!r}")
        lines = text.count("\n")
        if lines > MAX_LINES and module not in LONG_MODULES:
            wrong.append(f"{module}: {lines} lines (split it, or give the reason in "
                         "LONG_MODULES)")
    assert not wrong, "\n".join(wrong)


def _all_modules() -> list[str]:
    names = [fd.__name__]
    for info in pkgutil.walk_packages(fd.__path__, fd.__name__ + "."):
        if info.name.split(".")[-1] in ("__main__",):
            continue
        names.append(info.name)
    return names


def test_every_error_is_a_foundation_error():
    wrong = []
    for name in _all_modules():
        try:
            module = importlib.import_module(name)
        except ImportError as exc:  # an optional dependency (dspy, llama_cpp...) missing
            pytest.skip(f"{name}: {exc}")
        for _, obj in inspect.getmembers(module, inspect.isclass):
            if (issubclass(obj, BaseException) and obj.__module__.startswith("foundation_dask")
                    and not issubclass(obj, fd.FoundationError)):
                wrong.append(f"{obj.__module__}.{obj.__qualname__}")
    assert not wrong, f"not FoundationError subclasses: {sorted(set(wrong))}"


def test_errors_are_exported_and_listed_in_the_readme():
    readme = (PACKAGE.parent / "README.md").read_text()
    for name in fd.errors.__all__:
        assert getattr(fd, name) is getattr(fd.errors, name)
        assert f"`{name}`" in readme, f"{name} is not listed in the README"


def test_errors_keep_their_attributes_across_processes():
    import pickle

    exc = fd.ProcessNotFoundError("No process named 'x'", name="x", worker="tcp://w:1")
    back = pickle.loads(pickle.dumps(exc))
    assert (type(back), str(back), back.name, back.worker) == (
        fd.ProcessNotFoundError, "No process named 'x'", "x", "tcp://w:1")
    assert isinstance(back, KeyError) and isinstance(back, fd.FoundationError)
    lm = pickle.loads(pickle.dumps(fd.LMTimeoutError("slow", status=504, message="m")))
    assert (lm.status, lm.message, isinstance(lm, TimeoutError)) == (504, "m", True)
    export = pickle.loads(pickle.dumps(fd.ExportError("no", "/x", 13)))
    assert (str(export), export.filename, export.errno) == ("no", "/x", 13)
