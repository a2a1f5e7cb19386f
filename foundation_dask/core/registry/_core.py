"""Any process: the registry's keys, records and results, the same in every process.

Keys and service names may be any hashable object built from ``str``, ``int``,
``float``, ``bool``, ``bytes``, ``None``, tuples, frozensets, enums and named
tuples; they are compared by type and value (:func:`canonical_key`), so ``("a", 1)``
registered from a client is found by a lookup of ``("a", 1)`` from a worker (but
``1`` and ``True`` are different keys). Other hashable objects are compared by their
pickled bytes. Keys and values travel pickled; the scheduler stores the bytes and
never unpickles them. Metadata and capabilities are compared on the scheduler, so
they are restricted to simple values (:func:`check_metadata`,
:func:`check_capabilities`).

Expected failures on the scheduler (conflicts, missing keys, bad input) travel back
as ``{"error": {"type": ..., "message": ...}}`` (:func:`error_reply`) and are raised
again in the caller's process (:func:`raise_if_error`).
"""

from __future__ import annotations

import enum
import hashlib
import reprlib
import warnings
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import TYPE_CHECKING, Any

from distributed.protocol import pickle

from foundation_dask.errors import AlreadyRegisteredError, NotOwnerError, NotRegisteredError

if TYPE_CHECKING:
    import pandas as pd

_EXACT_SCALARS = (str, int, float, bool, bytes, type(None))

#: Owner of the records meant to outlive every client (``owner="cluster"``).
CLUSTER_OWNER = "cluster"

#: ``op`` of the message that brings a client or a worker its identity token, on its
#: own batched stream only.
IDENTITY_OP = "foundation_registry_identity"


# --------------------------------------------------------------------------- keys and values


def canonical_key(key: Hashable) -> str:
    """A text form of ``key`` that is the same in every process.

    Parameters
    ----------
    key
        Any hashable object. Tuples, frozensets, named tuples and enums of simple
        scalars get a readable form (``"('a', 1)"``); other hashable objects are
        identified by a digest of their pickled bytes.

    Returns
    -------
    str
        Equal for keys of equal type and value, whichever process computes it.

    Raises
    ------
    TypeError
        ``key`` (or a part of it) is not hashable.
    """
    kind = type(key)
    if kind in _EXACT_SCALARS:
        return repr(key)
    if kind is tuple and isinstance(key, tuple):
        inner = ", ".join(canonical_key(k) for k in key)
        return f"({inner},)" if len(key) == 1 else f"({inner})"
    if kind is frozenset and isinstance(key, frozenset):
        return "frozenset({" + ", ".join(sorted(canonical_key(k) for k in key)) + "})"
    try:
        hash(key)
    except TypeError:
        raise TypeError(
            f"registry keys and service names must be hashable; got {kind.__name__} {key!r}"
        ) from None
    qualname = f"{kind.__module__}.{kind.__qualname__}"
    if isinstance(key, enum.Enum):
        return f"{qualname}.{key.name}"
    if isinstance(key, tuple):  # named tuples and other tuple subclasses
        return qualname + canonical_key(tuple(key))
    digest = hashlib.sha256(pickle.dumps(key)).hexdigest()[:32]
    return f"<{qualname} {digest}>"


def _simple(value: Any, where: str) -> str | int | float | bool | None:
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, str):
        return str(value)
    raise TypeError(
        f"{where} must be a str, int, float, bool or None; got {type(value).__name__} {value!r}"
    )


def check_metadata(metadata: Mapping[str, Any] | None, what: str = "metadata") -> dict[str, Any]:
    """Validate ``metadata`` and return it as a plain ``dict``.

    Parameters
    ----------
    metadata
        ``None`` or a mapping from ``str`` to ``str``, ``int``, ``float``, ``bool`` or
        ``None``. These are compared on the scheduler, which does not unpickle
        user objects.
    what
        Name used in error messages.

    Raises
    ------
    TypeError
        ``metadata`` is not a mapping, a key is not a ``str`` or a value is not simple.
    """
    if metadata is None:
        return {}
    if not isinstance(metadata, Mapping):
        raise TypeError(f"{what} must be a dict, got {type(metadata).__name__} {metadata!r}")
    out: dict[str, Any] = {}
    for k, v in metadata.items():
        if not isinstance(k, str):
            raise TypeError(f"{what} keys must be str, got {type(k).__name__} {k!r}")
        out[str(k)] = _simple(v, f"{what}[{k!r}]")
    return out


def check_capabilities(capabilities: Iterable[str] | None) -> list[str]:
    """Validate ``capabilities`` and return them as a list without duplicates.

    Parameters
    ----------
    capabilities
        ``None`` or a list, tuple or set of ``str``. A single string is rejected
        (``["embed"]``, not ``"embed"``).

    Raises
    ------
    TypeError
        ``capabilities`` is not a list, tuple or set of strings.
    """
    if capabilities is None:
        return []
    if not isinstance(capabilities, (list, tuple, set, frozenset)):
        raise TypeError(
            "capabilities must be a list of str (e.g. ['embed']), "
            f"got {type(capabilities).__name__} {capabilities!r}"
        )
    items = sorted(capabilities) if isinstance(capabilities, (set, frozenset)) else capabilities
    out: list[str] = []
    for cap in items:
        if not isinstance(cap, str):
            raise TypeError(f"capabilities must be str, got {type(cap).__name__} {cap!r}")
        if cap not in out:
            out.append(str(cap))
    return out


def _same(a: Any, b: Any) -> bool:
    """Equality that tells ``True`` from ``1``."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    return a == b


def metadata_matches(metadata: Mapping[str, Any], wanted: Mapping[str, Any]) -> bool:
    """Whether ``metadata`` equals ``wanted`` on each key of ``wanted`` (``True`` is not ``1``)."""
    missing = object()
    return all(_same(metadata.get(k, missing), v) for k, v in wanted.items())


def _format_time(ts: float) -> str:
    return datetime.fromtimestamp(ts).isoformat(sep=" ", timespec="seconds")


_short = reprlib.Repr()
_short.maxstring = 60
_short.maxother = 60


# --------------------------------------------------------------------------- results


class _Record:
    """The ``repr`` and ``to_dict`` of the registry's results (dataclasses): the registered
    value or handle shortened, the registration time as a clock time."""

    def __repr__(self) -> str:
        shown = []
        for f in fields(self):  # type: ignore[arg-type]  # subclasses are dataclasses
            value = getattr(self, f.name)
            if f.name in ("value", "handle"):
                shown.append(f"{f.name}={_short.repr(value)}")
            elif f.name == "registered_at":
                shown.append(f"{f.name}={_format_time(value)!r}")
            else:
                shown.append(f"{f.name}={value!r}")
        return f"{type(self).__name__}({', '.join(shown)})"

    def to_dict(self) -> dict[str, Any]:
        """The fields as a ``dict``: ``metadata`` / ``capabilities`` copied, the value or
        handle as it is."""
        out = {}
        for f in fields(self):  # type: ignore[arg-type]  # subclasses are dataclasses
            value = getattr(self, f.name)
            out[f.name] = type(value)(value) if f.name in ("metadata", "capabilities") else value
        return out


@dataclass(repr=False)
class RegistryEntry(_Record):
    """An entry of the :class:`ProcessRegistry`.

    Attributes
    ----------
    key
        The key, as registered.
    value
        The registered value (unpickled in the reading process).
    metadata
        Simple values describing the entry.
    owner
        ``client.id`` of the registering client, or address of the registering worker.
    registered_at
        Wall-clock time of the registration on the scheduler (seconds since the epoch).
    """

    key: Hashable
    value: Any
    metadata: dict[str, Any] = field(default_factory=dict)
    owner: str = ""
    registered_at: float = 0.0



@dataclass(repr=False)
class Service(_Record):
    """A service of the :class:`ServiceMesh`.

    Attributes
    ----------
    name
        The service name.
    handle
        Whatever was registered to reach the service (a singleton handle, a
        :class:`distributed.Actor`, an address...), unpickled in the reading process.
    capabilities
        What the service can do.
    metadata
        Simple values describing the service.
    owner
        ``client.id`` of the registering client, or address of the registering worker.
    registered_at
        Wall-clock time of the registration on the scheduler (seconds since the epoch).
    """

    name: Hashable
    handle: Any
    capabilities: list[str] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)
    owner: str = ""
    registered_at: float = 0.0



def services_to_frame(services: Iterable[Service]) -> pd.DataFrame:
    """A :class:`pandas.DataFrame` with one row per service.

    Columns: ``name``, ``capabilities``, ``metadata``, ``owner``, ``registered_at``
    (a timestamp) and ``handle``.
    """
    import pandas as pd

    columns = ["name", "capabilities", "metadata", "owner", "registered_at", "handle"]
    rows = [s.to_dict() for s in services]
    frame = pd.DataFrame(rows, columns=columns)
    frame["registered_at"] = pd.to_datetime(frame["registered_at"], unit="s")
    return frame


class UnreadableValue:
    """Stands for a registered value (or handle) that cannot be unpickled here.

    :meth:`ProcessRegistry.select <foundation_dask.ProcessRegistry.select>`,
    :meth:`ServiceMesh.discover_services <foundation_dask.ServiceMesh.discover_services>`
    and the other reads return it in place of such a value, so that the other entries
    still come back; they also warn, naming the entry.

    Attributes
    ----------
    key
        The entry's key (or its text form, if the key cannot be unpickled either).
    error
        What unpickling raised, as ``"TypeName: message"``.
    """

    def __init__(self, key: Any, error: str) -> None:
        self.key = key
        self.error = error

    def __repr__(self) -> str:
        return f"UnreadableValue(key={self.key!r}, error={self.error!r})"

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, UnreadableValue)
                and (self.key, self.error) == (other.key, other.error))

    def __hash__(self) -> int:
        return hash((UnreadableValue, self.error))


def dumps_value(key: Hashable, value: Any, what: str = "value") -> bytes:
    """``value`` pickled for the scheduler; a ``TypeError`` naming ``key`` if it cannot be.

    Parameters
    ----------
    key
        The entry's key or service name (named in the error).
    value
        The value or handle.
    what
        ``"value"`` or ``"handle"``, for the message.
    """
    try:
        return pickle.dumps(value)
    except Exception as exc:
        raise TypeError(
            f"the {what} registered under {key!r} cannot be pickled ({type(exc).__name__}: "
            f"{exc}); register a picklable object (nothing was registered)"
        ) from exc


def _unpickled(record: Mapping[str, Any], what: str) -> tuple[Any, Any]:
    """The key and value of ``record``: a key that cannot be unpickled is its text form,
    a value that cannot be is an :class:`UnreadableValue`; either warns, naming it."""
    problems: list[str] = []
    try:
        key = pickle.loads(record["key"])
    except Exception as exc:
        key = record["key_id"]
        problems.append(f"key: {type(exc).__name__}: {exc}")
    try:
        value = pickle.loads(record["value"])
    except Exception as exc:
        value = UnreadableValue(key, f"{type(exc).__name__}: {exc}")
        problems.append(f"{what}: {value.error}")
    if problems:
        warnings.warn(
            f"the {what} registered under {record['key_id']} (owner {record['owner']}) "
            f"cannot be unpickled in this process ({'; '.join(problems)}); the other "
            "entries are returned as usual",
            RuntimeWarning,
            stacklevel=2,
        )
    return key, value


def entry_of(record: Mapping[str, Any]) -> RegistryEntry:
    """The :class:`RegistryEntry` of a scheduler record (key and value unpickled here;
    one that cannot be is an :class:`UnreadableValue`, with a ``RuntimeWarning``)."""
    key, value = _unpickled(record, "value")
    return RegistryEntry(
        key=key,
        value=value,
        metadata=dict(record["metadata"]),
        owner=record["owner"],
        registered_at=record["registered_at"],
    )


def service_of(record: Mapping[str, Any]) -> Service:
    """The :class:`Service` of a scheduler record (name and handle unpickled here; one
    that cannot be is an :class:`UnreadableValue`, with a ``RuntimeWarning``)."""
    name, handle = _unpickled(record, "service handle")
    return Service(
        name=name,
        handle=handle,
        capabilities=list(record["capabilities"]),
        metadata=dict(record["metadata"]),
        owner=record["owner"],
        registered_at=record["registered_at"],
    )


# --------------------------------------------------------------------------- errors on the wire

#: Errors raised again with the caller's key as their ``key`` attribute.
_KEYED_ERRORS: dict[str, type[AlreadyRegisteredError | NotOwnerError | NotRegisteredError]] = {
    "AlreadyRegisteredError": AlreadyRegisteredError,
    "NotOwnerError": NotOwnerError,
    "NotRegisteredError": NotRegisteredError,
}
_PLAIN_ERRORS: dict[str, type[Exception]] = {"TypeError": TypeError, "ValueError": ValueError}


def error_reply(exc: Exception) -> dict[str, Any]:
    """The reply of a handler that failed in an expected way (``exc``), for
    :func:`raise_if_error` in the caller's process."""
    error: dict[str, Any] = {"type": type(exc).__name__, "message": str(exc)}
    owner = getattr(exc, "owner", None)
    if owner is not None:
        error["owner"] = owner
    return {"error": error}


def raise_if_error(reply: Mapping[str, Any], key: Hashable | None = None) -> None:
    """Raise the error a handler's ``reply`` carries, if any.

    Parameters
    ----------
    reply
        The handler's reply.
    key
        The key or service name of the call, set as the ``key`` of an
        :class:`AlreadyRegisteredError` or :class:`NotRegisteredError`.

    Raises
    ------
    AlreadyRegisteredError, NotOwnerError, NotRegisteredError, TypeError, ValueError
        The error of the reply; another type of error is raised as a ``RuntimeError``.
        A registry error of a record of another owner has that ``owner`` as attribute.
    """
    error = reply.get("error")
    if not error:
        return
    kind, message = error["type"], error["message"]
    keyed = _KEYED_ERRORS.get(kind)
    if keyed is not None:
        if "owner" in error:
            raise keyed(message, key=key, owner=error["owner"])
        raise keyed(message, key=key)
    raise _PLAIN_ERRORS.get(kind, RuntimeError)(message)
