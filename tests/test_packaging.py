"""Packaging: environment.yml agrees with pyproject.toml; the wheel carries its data files."""

from __future__ import annotations

import importlib.resources
import importlib.util
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parent.parent
DATA_FILES = ["foundation.yaml", "foundation-schema.yaml"]

#: conda-forge package names whose PyPI name differs.
CONDA_TO_PYPI = {
    "dask-core": "dask",
    "msgpack-python": "msgpack",
}
#: conda packages that are not Python dependencies of the project.
CONDA_ONLY = {"python", "pip"}

_CONDA_SPEC = re.compile(
    r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)\s*(?P<extras>\[[^\]]*\])?\s*(?P<spec>.*)$"
)


def lower_bound(spec: SpecifierSet) -> Version | None:
    """The least version ``spec`` allows through ``>=``, ``>``, ``==`` or ``~=``."""
    bounds = [Version(s.version) for s in spec if s.operator in (">=", ">", "==", "~=")]
    return max(bounds) if bounds else None


def parse_conda(entry: str) -> tuple[str, SpecifierSet]:
    match = _CONDA_SPEC.match(entry.strip())
    assert match, f"cannot read conda dependency {entry!r}"
    name = match["name"].lower()
    spec = match["spec"].replace(" ", "")
    return CONDA_TO_PYPI.get(name, name), SpecifierSet(spec)


def pyproject() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def pyproject_requirements(project: dict[str, Any]) -> dict[str, SpecifierSet]:
    """``[project].dependencies`` and the ``test`` and ``llm`` extras, by normalised name."""
    own = canonicalize_name(project["name"])
    reqs = {}
    extras = project["optional-dependencies"]
    for line in [*project["dependencies"], *extras["test"], *extras["llm"]]:
        req = Requirement(line)
        name = canonicalize_name(req.name)
        if name != own:
            reqs[name] = req.specifier
    return reqs


def environment_requirements(env: dict[str, Any]) -> tuple[dict[str, SpecifierSet], list[str]]:
    """Conda and pip dependencies of ``environment.yml`` by normalised PyPI name, and the
    pip lines that are options (``-e .``) rather than requirements."""
    reqs: dict[str, SpecifierSet] = {}
    options: list[str] = []
    for entry in env["dependencies"]:
        if isinstance(entry, dict):
            for line in entry.get("pip", []):
                if line.strip().startswith("-"):
                    options.append(line.strip())
                else:
                    req = Requirement(line)
                    reqs[canonicalize_name(req.name)] = req.specifier
        else:
            name, spec = parse_conda(entry)
            reqs[canonicalize_name(name)] = spec
    return reqs, options


def disagreements(
    project: dict[str, SpecifierSet], env: dict[str, SpecifierSet]
) -> list[str]:
    """How ``env`` (environment.yml) falls out of step with ``project`` (pyproject.toml)."""
    problems = [f"{n}: in pyproject.toml, missing from environment.yml"
                for n in sorted(set(project) - set(env))]
    problems += [f"{n}: in environment.yml, missing from pyproject.toml"
                 for n in sorted(set(env) - set(project))]
    for name in sorted(set(project) & set(env)):
        want, have = project[name], env[name]
        want_min, have_min = lower_bound(want), lower_bound(have)
        if want_min is None:
            continue
        if have_min is None:
            problems.append(f"{name}: pyproject.toml requires {want}, environment.yml no bound")
        elif have_min < want_min or not want.contains(have_min, prereleases=True):
            problems.append(
                f"{name}: environment.yml allows {have} but pyproject.toml requires {want}"
            )
    return problems


def test_environment_yml_matches_pyproject():
    project = pyproject()["project"]
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    env_reqs, pip_options = environment_requirements(env)

    python = [d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python ")]
    assert python, "environment.yml does not pin python"
    python_min = lower_bound(parse_conda(python[0])[1])
    requires_python = SpecifierSet(project["requires-python"])
    assert python_min is not None and python_min >= lower_bound(requires_python)
    assert requires_python.contains(python_min)

    for name in CONDA_ONLY:
        env_reqs.pop(name, None)
    assert disagreements(pyproject_requirements(project), env_reqs) == []
    assert "-e ." in pip_options, "environment.yml should install the project itself"


def test_disagreements_are_reported():
    project = {"dask": SpecifierSet(">=2025.4.0"), "pytest": SpecifierSet(">=8")}
    assert disagreements(project, dict(project)) == []
    assert disagreements(project, {**project, "pytest": SpecifierSet(">=8.1")}) == []
    assert disagreements(project, {"dask": SpecifierSet(">=2024.1.0"), "pytest": project["pytest"]})
    assert disagreements(project, {"dask": SpecifierSet(""), "pytest": project["pytest"]})
    assert disagreements(project, {"dask": project["dask"]}) == [
        "pytest: in pyproject.toml, missing from environment.yml"
    ]
    assert disagreements(project, {**project, "numpy": SpecifierSet()}) == [
        "numpy: in environment.yml, missing from pyproject.toml"
    ]


def test_names_are_normalised():
    assert parse_conda("dask-core >=2025.4.0") == ("dask", SpecifierSet(">=2025.4.0"))
    assert parse_conda("msgpack-python>=1.0")[0] == "msgpack"
    assert parse_conda("dask[distributed] >= 2025.4")[0] == "dask"
    assert canonicalize_name(Requirement("Foo_Bar[x]>=1").name) == canonicalize_name("foo-bar")


def test_data_files_are_package_resources():
    package = importlib.resources.files("foundation_dask")
    for name in DATA_FILES:
        data = yaml.safe_load(package.joinpath(name).read_text())
        assert isinstance(data, dict) and data


@pytest.mark.timeout(120)
def test_wheel_contains_data_files(tmp_path):
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(tmp_path)]
    if importlib.util.find_spec("hatchling") is not None:
        cmd.append("--no-build-isolation")  # build offline with the installed backend
    proc = subprocess.run(
        [*cmd, str(ROOT)], capture_output=True, text=True, timeout=100,
        env={"PIP_DISABLE_PIP_VERSION_CHECK": "1", **os.environ},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (wheel,) = tmp_path.glob("foundation_dask-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        assert "foundation_dask/__init__.py" in names
        for name in DATA_FILES:
            assert f"foundation_dask/{name}" in names
            assert yaml.safe_load(zf.read(f"foundation_dask/{name}"))
        assert not any(n.startswith("tests/") for n in names)
