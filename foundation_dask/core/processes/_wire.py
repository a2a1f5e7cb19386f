"""Any process: the layout of a checkpoint, and checkpoints decoded as plain data.

A checkpoint is the pickled ``checkpoint()`` state of an instance and the pickled list
of its remembered call results (``(call id, pickled result)``), joined by
:func:`join_checkpoint` so that each part can be read alone. :func:`plain_loads` decodes
the state for readers inside the scheduler (dashboard pages) with an unpickler that
builds nothing but builtin containers and scalars: no class of the state is imported,
no ``__reduce__`` of it runs.
"""

from __future__ import annotations

import builtins
import io
import pickle
import struct
from typing import Any

#: The globals a plain checkpoint may name (builtin values pickle names for REDUCE).
_PLAIN = frozenset({"complex", "set", "frozenset", "bytearray", "slice", "range"})


class _Refused:
    """Stands for every global a plain decoding refuses, and for what pickle would
    build with it: calling, filling or setting its state does nothing. Each one is
    replaced by ``None`` once the checkpoint is read."""

    def __new__(cls, *args: Any, **kwargs: Any) -> _Refused:
        return object.__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __call__(self, *args: Any, **kwargs: Any) -> _Refused:
        return _Refused()

    def __setstate__(self, state: Any) -> None:
        pass

    def __setitem__(self, key: Any, value: Any) -> None:
        pass

    def append(self, item: Any) -> None:
        pass

    def extend(self, items: Any) -> None:
        pass

    def add(self, item: Any) -> None:
        pass


class _PlainUnpickler(pickle.Unpickler):
    def __init__(self, data: bytes):
        super().__init__(io.BytesIO(data))

    def find_class(self, module: str, name: str) -> Any:
        if module == "builtins" and name in _PLAIN:
            return getattr(builtins, name)
        return _Refused


def _cleaned(value: Any, depth: int = 0) -> Any:
    """``value`` with every :class:`_Refused` (class or instance) replaced by ``None``."""
    if value is _Refused or isinstance(value, _Refused) or depth > 200:
        return None
    if isinstance(value, dict):
        return {_cleaned(k, depth + 1): _cleaned(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list):
        return [_cleaned(v, depth + 1) for v in value]
    if isinstance(value, tuple):
        return tuple(_cleaned(v, depth + 1) for v in value)
    if isinstance(value, (set, frozenset)):
        return type(value)(_cleaned(v, depth + 1) for v in value)
    return value


def _plain(data: bytes) -> Any:
    try:
        return _cleaned(_PlainUnpickler(data).load())
    except Exception:
        return None


def split_checkpoint(blob: bytes) -> tuple[bytes, bytes]:
    """The two parts of a checkpoint: the pickled ``checkpoint()`` state and the
    pickled list of remembered call results."""
    (n,) = struct.unpack_from("!Q", blob)
    return blob[8:8 + n], blob[8 + n:]


def join_checkpoint(state: bytes, applied: bytes) -> bytes:
    """The checkpoint made of its two parts (inverse of :func:`split_checkpoint`)."""
    return struct.pack("!Q", len(state)) + state + applied


def plain_loads(checkpoint: bytes | None) -> Any:
    """The ``checkpoint()`` state of a checkpoint as plain data, or ``None``.

    Only builtin values are built (dicts, lists, tuples, sets, strings, numbers,
    bytes...). Anything else the state holds (a user object, a ``datetime``, an object
    whose ``__reduce__`` would run code) comes back as ``None``, and nothing of it is
    imported or called. For readers inside the scheduler (dashboard pages).

    Parameters
    ----------
    checkpoint
        A checkpoint the supervisor holds (``_Record.checkpoint``).
    """
    if checkpoint is None:
        return None
    try:
        state, _ = split_checkpoint(checkpoint)
    except struct.error:
        return None
    return _plain(state)


def plain_start_args(spec: bytes) -> tuple[list[Any], dict[str, Any]] | None:
    """The constructor arguments of a process spec as plain data (as
    :func:`plain_loads`: what is not plain is ``None``), or ``None``; the class the
    spec names is not imported."""
    value = _plain(spec)
    if (not isinstance(value, tuple) or len(value) != 3
            or not isinstance(value[1], tuple) or not isinstance(value[2], dict)):
        return None
    return list(value[1]), dict(value[2])
