"""Any process: the names of supervised processes and what a start sends about a class.

A process name is a string, a number, ``None`` or a tuple of those (nested tuples
included), e.g. ``("trace_coordinator", trace_id)``. :func:`name_key` turns it into
the canonical string under which the supervisor keeps it (JSON, with tuples marked so
that they stay distinct from lists); :func:`name_from_key` turns a key back into the
name.
"""

from __future__ import annotations

import json
from collections.abc import Hashable
from inspect import iscoroutinefunction
from typing import Any

#: The op of the message the supervisor sends on each watching client's stream when a
#: process moved (``name_key``, ``incarnation``).
MOVED_OP = "foundation-process-moved"

#: The op of the message the supervisor sends on each watching client's stream when a
#: process was stopped, or a replica lost with its worker (``name_key``, its last
#: ``incarnation``, ``state``: ``"stopped"`` or ``"lost"``): the client forgets the name.
STOPPED_OP = "foundation-process-stopped"

_TUPLE = "__tuple__"


def _norm(name: Any) -> Any:
    if isinstance(name, (str, int, float, bool)) or name is None:
        return name
    if isinstance(name, tuple):
        return [_TUPLE, *(_norm(n) for n in name)]
    raise TypeError(
        f"A process name must be a str, a number or a tuple of those, not "
        f"{type(name).__name__} ({name!r}); e.g. name=('trace_coordinator', trace_id)."
    )


def _denorm(norm: Any) -> Any:
    """Inverse of :func:`_norm`."""
    if isinstance(norm, list) and norm and norm[0] == _TUPLE:
        return tuple(_denorm(n) for n in norm[1:])
    return norm


def name_key(name: Hashable) -> str:
    """Canonical string key of a process name (tuples stay distinct from lists).

    Parameters
    ----------
    name
        A string, a number, ``None`` or a tuple of those.

    Returns
    -------
    str
        The key, e.g. ``'["__tuple__","trace_coordinator","t1"]'`` for
        ``("trace_coordinator", "t1")``.

    Raises
    ------
    TypeError
        For any other type of name.
    """
    return json.dumps(_norm(name), separators=(",", ":"))


def name_from_key(key: str) -> Hashable:
    """The process name whose :func:`name_key` is ``key``.

    Parameters
    ----------
    key
        A key made by :func:`name_key`.

    Returns
    -------
    Hashable
        The name; tuples come back as tuples.
    """
    name: Hashable = _denorm(json.loads(key))
    return name


def class_interface(cls: type) -> tuple[str, frozenset[str], frozenset[str]]:
    """What handles need to know of ``cls``: its qualified name, its public methods
    (``__call__`` included) and which of them are coroutine functions."""
    methods = set()
    coroutines = set()
    for attr in dir(cls):
        if attr.startswith("__") and attr != "__call__":
            continue
        value = getattr(cls, attr, None)
        if callable(value) and not isinstance(value, type):
            methods.add(attr)
            if iscoroutinefunction(value):
                coroutines.add(attr)
    return f"{cls.__module__}.{cls.__qualname__}", frozenset(methods), frozenset(coroutines)
