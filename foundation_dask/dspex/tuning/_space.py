"""Client: the search space of ``dspex.tune`` (settings of foundation.yaml and their
candidate values, checked against foundation-schema.yaml) and the YAML file it writes."""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from foundation_dask import config
from foundation_dask.errors import TuneError

__all__ = ["check_space", "default_space", "nested", "write_config"]

#: Top-level keys that choose the cluster or its plugins rather than tune them.
_REFUSED = ("scheduler-address", "extensions")

_TYPES: dict[str, tuple[type, ...]] = {
    "integer": (int,), "number": (int, float), "string": (str,), "boolean": (bool,),
    "null": (type(None),), "array": (list,), "object": (dict,),
}


def default_space() -> dict[str, list[Any]]:
    """The settings ``tune`` searches by default: workers (1, half and all the cores),
    threads per worker (1, 2, 4) and Evaluate's chunk size (``"auto"``, 1, 4, 16)."""
    cores = os.cpu_count() or 1
    return {
        "cluster.n-workers": sorted({1, max(1, cores // 2), cores}),
        "cluster.threads-per-worker": [1, 2, 4],
        "dspex.evaluate-chunk-size": ["auto", 1, 4, 16],
    }


@functools.lru_cache(maxsize=1)
def _schema() -> dict[str, Any]:
    import yaml

    with open(config.schema_fn) as f:
        return dict(yaml.safe_load(f)["properties"]["foundation"])


def _schema_entry(key: str) -> dict[str, Any] | None:
    node: Any = _schema()
    for part in key.split("."):
        node = (node.get("properties") or {}).get(part)
        if node is None:
            return None
    return dict(node)


def _check_value(key: str, value: Any, entry: Mapping[str, Any]) -> None:
    types = entry.get("type")
    names = [types] if isinstance(types, str) else list(types or [])
    ok = not names or any(
        isinstance(value, _TYPES.get(t, (object,)))
        and not (t in ("integer", "number") and isinstance(value, bool)) for t in names)
    if not ok or ("enum" in entry and value not in entry["enum"]):
        allowed = entry["enum"] if "enum" in entry else " or ".join(names)
        raise TuneError(f"tune: {value!r} is not a value of foundation.{key} "
                        f"(expected {allowed})", key=key)
    if key in ("cluster.n-workers", "cluster.threads-per-worker") and value < 1:
        raise TuneError(f"tune: foundation.{key} must be >= 1, not {value!r}", key=key)
    if key == "dspex.evaluate-chunk-size" and value != "auto" and not (
            isinstance(value, int) and value >= 1):
        raise TuneError(f"tune: foundation.{key} is 'auto' or a positive integer, not "
                        f"{value!r}", key=key)


def _canonical(key: Any) -> str:
    if not isinstance(key, str):
        raise TuneError(f"tune: a setting is named by its dask-config key (a string), not "
                        f"{key!r}", key=key)
    name = key.removeprefix("foundation.").replace("_", "-")
    if name.split(".")[0] in _REFUSED:
        raise TuneError(f"tune: foundation.{name} chooses the cluster or its plugins; it "
                        "is not a setting to tune", key=key)
    entry = _schema_entry(name)
    if entry is None or "properties" in entry:
        what = "a section, not a setting" if entry is not None else "not a setting"
        raise TuneError(f"tune: foundation.{name} is {what} of foundation.yaml; name "
                        "settings such as 'cluster.n-workers' or "
                        "'dspex.evaluate-chunk-size'", key=key)
    return name


def check_space(space: Any, *, own_cluster: bool = True) -> dict[str, list[Any]]:
    """``space`` with canonical keys (``cluster.n-workers``), checked against the schema.

    Parameters
    ----------
    space
        Setting (a key of foundation.yaml, with or without ``foundation.``, ``-`` or
        ``_``) -> list of candidate values.
    own_cluster
        Whether ``tune`` starts clusters of its own (else ``cluster.*`` keys are refused).

    Raises
    ------
    TuneError
        A key that is not a setting, a list of values that is empty or repeats one, a
        value of the wrong type, or a ``cluster.*`` key when tuning a given cluster.
    """
    if not isinstance(space, Mapping) or not space:
        raise TuneError(f"tune: the space is a non-empty dict of setting -> candidate "
                        f"values, not {space!r}")
    out: dict[str, list[Any]] = {}
    for key, values in space.items():
        name = _canonical(key)
        if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
            raise TuneError(f"tune: the candidate values of {key!r} must be a non-empty "
                            f"list, not {values!r}", key=name)
        if name in out:
            raise TuneError(f"tune: {key!r} is named twice in the space", key=name)
        if len({repr(v) for v in values}) != len(values):
            raise TuneError(f"tune: the values of {key!r} repeat one: {list(values)!r}",
                            key=name)
        entry = _schema_entry(name) or {}
        for value in values:
            _check_value(name, value, entry)
        if name.startswith("cluster.") and not own_cluster:
            raise TuneError(f"tune: {key!r} needs clusters of its own, which tuning a given "
                            "client's cluster cannot make; drop it or the client", key=name)
        out[name] = list(values)
    return out


def nested(settings: Mapping[str, Any]) -> dict[str, Any]:
    """``{"foundation": {...}}``, nested as foundation.yaml."""
    root: dict[str, Any] = {}
    for key, value in settings.items():
        node = root
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return {"foundation": root}


def write_config(settings: Mapping[str, Any], path: str | os.PathLike[str],
                 comment: str = "") -> str:
    """Write ``settings`` (keys under ``foundation.``) as a dask-config YAML file, with
    ``comment`` as ``#`` lines at its top; returns the path written."""
    import yaml

    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    head = "".join(f"# {line}\n" for line in comment.splitlines())
    target.write_text(head + yaml.safe_dump(nested(settings), sort_keys=False))
    return str(target)
