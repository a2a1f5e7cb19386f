"""Any process: the dask-config defaults of foundation_dask (the ``foundation`` key) and
the one helper that reads them."""

from __future__ import annotations

import os
from typing import Any

import dask.config
import yaml

fn = os.path.join(os.path.dirname(__file__), "foundation.yaml")
schema_fn = os.path.join(os.path.dirname(__file__), "foundation-schema.yaml")

with open(fn) as f:
    defaults: dict[str, Any] = yaml.safe_load(f)

dask.config.update_defaults(defaults)


_MISSING = object()


def get(key: str, default: Any = _MISSING) -> Any:
    """Read ``foundation.<key>`` from dask config.

    Falls back to the packaged default when the key is absent (for example after a
    test harness replaced the whole dask config).
    """
    if default is _MISSING:
        default = _packaged_default(key)
    return dask.config.get(f"foundation.{key}", default=default)


def _packaged_default(key: str) -> Any:
    node: Any = defaults["foundation"]
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def get_seconds(key: str) -> float:
    """Read a timedelta config value as seconds."""
    from dask.utils import parse_timedelta

    return float(parse_timedelta(get(key), default="s"))


def get_bytes(key: str) -> int:
    """Read a byte-size config value as an integer."""
    from dask.utils import parse_bytes

    value = get(key)
    return int(value) if isinstance(value, int) else int(parse_bytes(value))
