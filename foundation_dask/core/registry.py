"""Process registry and service mesh, kept in the scheduler's memory.

:class:`ProcessRegistry` maps keys to values (a name service in the style of
``Horde.Registry``); :class:`ServiceMesh` keeps named services with a handle,
capabilities and metadata and finds them by those. Both live in the scheduler
extension :class:`RegistryExtension`, so every client, task and actor of the
cluster sees the same entries.

Every entry has an *owner*: the client that registered it (its ``client.id``)
or, when registered from a task or actor, the worker that ran it (its address).
When the owner goes away (a client closes, a worker dies, even by SIGKILL) its
entries disappear with it.

Keys and service names may be any hashable object built from ``str``, ``int``,
``float``, ``bool``, ``bytes``, ``None``, tuples, frozensets, enums and named
tuples; they are compared by type and value, so ``("a", 1)`` registered from a
client is found by a lookup of ``("a", 1)`` from a worker (but ``1`` and
``True`` are different keys). Other hashable objects are compared by their
pickled bytes. Keys and values travel pickled; the scheduler stores the bytes
and never unpickles them. Metadata and capabilities are compared on the
scheduler, so they are restricted to simple values (see :func:`check_metadata`).

>>> import foundation_dask as fd
>>> fd.ProcessRegistry.register(("cache", 1), {"size": 10}, metadata={"kind": "cache"})
... # doctest: +SKIP
>>> fd.ProcessRegistry.lookup(("cache", 1)).value                     # doctest: +SKIP
{'size': 10}
>>> fd.ServiceMesh.register_service("embedder", handle, capabilities=["embed"])
... # doctest: +SKIP
>>> fd.ServiceMesh.discover_services(capabilities=["embed"])          # doctest: +SKIP
[Service(name='embedder', ...)]
"""

from __future__ import annotations

import enum
import hashlib
import logging
import reprlib
import time
from collections import defaultdict
from collections.abc import Awaitable, Hashable, Iterable, Mapping
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import TYPE_CHECKING, Any

import distributed
from distributed.protocol import pickle

from foundation_dask.core._client import current_client
from foundation_dask.core.plugin import SchedulerExtension

if TYPE_CHECKING:
    import pandas as pd

logger = logging.getLogger(__name__)

#: Topic of the scheduler events logged when an owner's entries are dropped.
EVENT_TOPIC = "foundation.registry"

_SIMPLE_TYPES = (str, int, float, bool, type(None))
_EXACT_SCALARS = (str, int, float, bool, bytes, type(None))


class AlreadyRegisteredError(ValueError):
    """A key or service name is registered already (pass ``replace=True`` to take it over)."""


class NotRegisteredError(KeyError):
    """No entry or service under that key or name."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


# --------------------------------------------------------------------------- helpers


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
    if kind is tuple:
        inner = ", ".join(canonical_key(k) for k in key)
        return f"({inner},)" if len(key) == 1 else f"({inner})"
    if kind is frozenset:
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


def _metadata_matches(metadata: Mapping[str, Any], wanted: Mapping[str, Any]) -> bool:
    missing = object()
    return all(_same(metadata.get(k, missing), v) for k, v in wanted.items())


def caller_owner(client: distributed.Client) -> str:
    """Who owns what the caller registers: its worker's address in a task, else ``client.id``."""
    try:
        return distributed.get_worker().address
    except ValueError:
        return client.id


def _format_time(ts: float) -> str:
    return datetime.fromtimestamp(ts).isoformat(sep=" ", timespec="seconds")


_short = reprlib.Repr()
_short.maxstring = 60
_short.maxother = 60


# --------------------------------------------------------------------------- results


@dataclass
class RegistryEntry:
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

    def __repr__(self) -> str:
        return (
            f"RegistryEntry(key={self.key!r}, value={_short.repr(self.value)}, "
            f"metadata={self.metadata!r}, owner={self.owner!r}, "
            f"registered_at={_format_time(self.registered_at)!r})"
        )

    def to_dict(self) -> dict[str, Any]:
        """The fields as a ``dict``."""
        return _fields_dict(self)


def _fields_dict(obj: Any) -> dict[str, Any]:
    """A dataclass's fields; its own ``metadata`` / ``capabilities`` containers copied,
    the registered value or handle as it is."""
    out = {}
    for f in fields(obj):
        value = getattr(obj, f.name)
        out[f.name] = type(value)(value) if f.name in ("metadata", "capabilities") else value
    return out


@dataclass
class Service:
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

    def __repr__(self) -> str:
        return (
            f"Service(name={self.name!r}, handle={_short.repr(self.handle)}, "
            f"capabilities={self.capabilities!r}, metadata={self.metadata!r}, "
            f"owner={self.owner!r}, registered_at={_format_time(self.registered_at)!r})"
        )

    def to_dict(self) -> dict[str, Any]:
        """The fields as a ``dict``."""
        return _fields_dict(self)


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


def _entry(record: Mapping[str, Any]) -> RegistryEntry:
    return RegistryEntry(
        key=pickle.loads(record["key"]),
        value=pickle.loads(record["value"]),
        metadata=dict(record["metadata"]),
        owner=record["owner"],
        registered_at=record["registered_at"],
    )


def _service(record: Mapping[str, Any]) -> Service:
    return Service(
        name=pickle.loads(record["key"]),
        handle=pickle.loads(record["value"]),
        capabilities=list(record["capabilities"]),
        metadata=dict(record["metadata"]),
        owner=record["owner"],
        registered_at=record["registered_at"],
    )


_ERRORS: dict[str, type[Exception]] = {
    "AlreadyRegisteredError": AlreadyRegisteredError,
    "NotRegisteredError": NotRegisteredError,
    "TypeError": TypeError,
    "ValueError": ValueError,
}


def _raise_if_error(reply: Mapping[str, Any]) -> None:
    error = reply.get("error")
    if error:
        raise _ERRORS.get(error["type"], RuntimeError)(error["message"])


# --------------------------------------------------------------------------- scheduler side


class RegistryExtension(SchedulerExtension):
    """Scheduler side of the registry and the service mesh.

    Entries and services are ``dict`` records holding the key's text form
    (``key_id``), the pickled key and value (``bytes``, never unpickled here),
    ``metadata``, ``owner`` and ``registered_at``; services also hold
    ``capabilities``. Other scheduler extensions may call :meth:`register`,
    :meth:`lookup`, :meth:`unregister` and :meth:`select` directly with
    ``kind="entry"`` or ``kind="service"``.

    Expected failures (conflicts, missing keys, bad input) are returned as
    ``{"error": {"type": ..., "message": ...}}`` so that the client raises them
    without the scheduler logging a traceback.
    """

    name = "registry"

    def __init__(self, scheduler: distributed.Scheduler, plugin: Any):
        super().__init__(scheduler, plugin)
        self.records: dict[str, dict[str, dict[str, Any]]] = {"entry": {}, "service": {}}
        self.owned: defaultdict[str, set[tuple[str, str]]] = defaultdict(set)

    def handlers(self) -> dict[str, Any]:
        return {
            "foundation_registry_register": self._handle_register,
            "foundation_registry_lookup": self._handle_lookup,
            "foundation_registry_unregister": self._handle_unregister,
            "foundation_registry_select": self._handle_select,
        }

    # -- Python API for the scheduler process

    @property
    def entries(self) -> dict[str, dict[str, Any]]:
        """Registry entries by ``key_id``."""
        return self.records["entry"]

    @property
    def services(self) -> dict[str, dict[str, Any]]:
        """Services by ``key_id`` of their name."""
        return self.records["service"]

    def is_live_owner(self, owner: str) -> bool:
        """Whether ``owner`` is a connected client id or worker address."""
        return owner in self.scheduler.workers or owner in self.scheduler.clients

    def register(
        self,
        kind: str,
        key_id: str,
        key: bytes,
        value: bytes,
        owner: str,
        metadata: Mapping[str, Any] | None = None,
        capabilities: Iterable[str] | None = None,
        replace: bool = False,
    ) -> dict[str, Any]:
        """Store a record and return it.

        Raises :class:`AlreadyRegisteredError`, ``TypeError`` (bad metadata or
        capabilities) or ``ValueError`` (owner not connected).
        """
        table = self.records[kind]
        metadata = check_metadata(metadata)
        caps = check_capabilities(list(capabilities) if capabilities is not None else None)
        if not isinstance(key, bytes) or not isinstance(value, bytes):
            raise TypeError("key and value must arrive pickled (bytes)")
        if not self.is_live_owner(owner):
            raise ValueError(
                f"owner {owner!r} is neither a connected client nor a worker of this cluster"
            )
        current = table.get(key_id)
        if current is not None and not replace:
            what = "service" if kind == "service" else "key"
            raise AlreadyRegisteredError(
                f"{what} {key_id} is already registered (owner {current['owner']}); "
                "pass replace=True to replace it"
            )
        if current is not None:
            self._disown(kind, current)
        record = {
            "key_id": key_id,
            "key": key,
            "value": value,
            "metadata": metadata,
            "owner": owner,
            "registered_at": time.time(),
        }
        if kind == "service":
            record["capabilities"] = caps
        table[key_id] = record
        self.owned[owner].add((kind, key_id))
        return record

    def lookup(self, kind: str, key_id: str) -> dict[str, Any] | None:
        """The record under ``key_id``, or ``None``."""
        return self.records[kind].get(key_id)

    def unregister(self, kind: str, key_id: str) -> dict[str, Any]:
        """Remove and return a record; raises :class:`NotRegisteredError`."""
        record = self.records[kind].pop(key_id, None)
        if record is None:
            what = "service" if kind == "service" else "key"
            raise NotRegisteredError(f"{what} {key_id} is not registered")
        self._disown(kind, record)
        return record

    def select(
        self,
        kind: str,
        metadata: Mapping[str, Any] | None = None,
        capabilities: Iterable[str] | None = None,
        key_id: str | None = None,
        owner: str | None = None,
    ) -> list[dict[str, Any]]:
        """Records (in registration order) matching every given filter."""
        wanted = check_metadata(metadata)
        caps = set(check_capabilities(list(capabilities) if capabilities is not None else None))
        table = self.records[kind]
        if key_id is None:
            candidates = list(table.values())
        else:
            record = table.get(key_id)
            candidates = [] if record is None else [record]
        return [
            r
            for r in candidates
            if _metadata_matches(r["metadata"], wanted)
            and caps.issubset(r.get("capabilities", ()))
            and (owner is None or r["owner"] == owner)
        ]

    def count_owned_by(self, owner: str) -> int:
        """Number of entries and services owned by ``owner``."""
        return len(self.owned.get(owner, ()))

    def _disown(self, kind: str, record: Mapping[str, Any]) -> None:
        owned = self.owned.get(record["owner"])
        if owned is not None:
            owned.discard((kind, record["key_id"]))
            if not owned:
                del self.owned[record["owner"]]

    def drop_owner(self, owner: str) -> list[tuple[str, str]]:
        """Remove everything ``owner`` registered; returns the ``(kind, key_id)`` removed."""
        dropped = sorted(self.owned.pop(owner, ()))
        for kind, key_id in dropped:
            record = self.records[kind].get(key_id)
            if record is not None and record["owner"] == owner:
                del self.records[kind][key_id]
        if dropped:
            logger.info("Dropped %d registry entries of %s", len(dropped), owner)
            self.scheduler.log_event(
                EVENT_TOPIC,
                {"action": "owner-removed", "owner": owner,
                 "removed": [list(item) for item in dropped]},
            )
        return dropped

    # -- lifecycle hooks

    def remove_worker(self, worker: str, **kwargs: Any) -> None:
        self.drop_owner(worker)

    def remove_client(self, client: str) -> None:
        self.drop_owner(client)

    # -- RPC handlers

    @staticmethod
    def _error(exc: Exception) -> dict[str, Any]:
        return {"error": {"type": type(exc).__name__, "message": str(exc)}}

    def _handle_register(
        self,
        kind: str,
        key_id: str,
        key: bytes,
        value: bytes,
        owner: str,
        metadata: Mapping[str, Any] | None = None,
        capabilities: Iterable[str] | None = None,
        replace: bool = False,
    ) -> dict[str, Any]:
        try:
            record = self.register(
                kind, key_id, key, value, owner, metadata, capabilities, replace
            )
        except (AlreadyRegisteredError, TypeError, ValueError, KeyError) as exc:
            return self._error(exc)
        return {"error": None, "owner": record["owner"], "registered_at": record["registered_at"]}

    def _handle_lookup(self, kind: str, key_id: str) -> dict[str, Any]:
        return {"error": None, "record": self.lookup(kind, key_id)}

    def _handle_unregister(self, kind: str, key_id: str) -> dict[str, Any]:
        try:
            self.unregister(kind, key_id)
        except NotRegisteredError as exc:
            return self._error(exc)
        return {"error": None}

    def _handle_select(
        self,
        kind: str,
        metadata: Mapping[str, Any] | None = None,
        capabilities: Iterable[str] | None = None,
        key_id: str | None = None,
        owner: str | None = None,
    ) -> dict[str, Any]:
        try:
            records = self.select(kind, metadata, capabilities, key_id, owner)
        except TypeError as exc:
            return self._error(exc)
        return {"error": None, "records": records}


# --------------------------------------------------------------------------- client side


async def _rpc(client: distributed.Client, op: str, **kwargs: Any) -> dict[str, Any]:
    reply = await getattr(client.scheduler, op)(**kwargs)
    _raise_if_error(reply)
    return reply


def _run(client: distributed.Client | None, coro_fn: Any, *args: Any) -> Any:
    client = client or current_client()
    return client.sync(coro_fn, client, *args)


def _register_message(
    kind: str,
    key: Hashable,
    value: Any,
    metadata: Mapping[str, Any] | None,
    capabilities: Iterable[str] | None,
    replace: bool,
    owner: str,
) -> dict[str, Any]:
    msg = {
        "kind": kind,
        "key_id": canonical_key(key),
        "key": pickle.dumps(key),
        "value": pickle.dumps(value),
        "metadata": check_metadata(metadata),
        "owner": owner,
        "replace": bool(replace),
    }
    if kind == "service":
        msg["capabilities"] = check_capabilities(capabilities)
    return msg


class ProcessRegistry:
    """Cluster-wide name registry (the ``Horde.Registry`` of Foundation).

    All methods block on a synchronous client and return an awaitable on an
    asynchronous one. They work from a notebook and from tasks and actors on
    workers. Pass ``client=`` to act through a specific client.
    """

    @staticmethod
    def register(
        key: Hashable,
        value: Any,
        metadata: Mapping[str, Any] | None = None,
        *,
        replace: bool = False,
        owner: str | None = None,
        client: distributed.Client | None = None,
    ) -> RegistryEntry | Awaitable[RegistryEntry]:
        """Register ``value`` under ``key``.

        Parameters
        ----------
        key
            Any hashable; see :func:`canonical_key` for how keys are compared.
        value
            Any picklable object.
        metadata
            Simple values (``str``, ``int``, ``float``, ``bool``, ``None``) by ``str``
            key, matched by :meth:`select`.
        replace
            Take over ``key`` if it is registered already (the owner changes to the caller).
        owner
            A connected client id or worker address owning the entry; by default the
            worker running the calling task or actor, else the client.
        client
            Client to act through; default :func:`distributed.get_client`.

        Returns
        -------
        RegistryEntry
            The new entry.

        Raises
        ------
        AlreadyRegisteredError
            (a ``ValueError``) ``key`` is registered and ``replace`` is false; the
            message names the current owner.
        TypeError
            ``key`` is not hashable or ``metadata`` is not a dict of simple values.
        """
        client = client or current_client()
        owner = owner or caller_owner(client)
        msg = _register_message("entry", key, value, metadata, None, replace, owner)

        async def run(client: distributed.Client) -> RegistryEntry:
            reply = await _rpc(client, "foundation_registry_register", **msg)
            return RegistryEntry(key, value, msg["metadata"], reply["owner"],
                                 reply["registered_at"])

        return _run(client, run)

    @staticmethod
    def lookup(
        key: Hashable, *, client: distributed.Client | None = None
    ) -> RegistryEntry | None | Awaitable[RegistryEntry | None]:
        """The entry registered under ``key``, or ``None``."""
        key_id = canonical_key(key)

        async def run(client: distributed.Client) -> RegistryEntry | None:
            reply = await _rpc(client, "foundation_registry_lookup", kind="entry", key_id=key_id)
            record = reply["record"]
            return None if record is None else _entry(record)

        return _run(client, run)

    @staticmethod
    def unregister(key: Hashable, *, client: distributed.Client | None = None) -> Any:
        """Remove the entry under ``key``.

        Raises
        ------
        NotRegisteredError
            (a ``KeyError``) nothing is registered under ``key``.
        """
        key_id = canonical_key(key)

        async def run(client: distributed.Client) -> None:
            await _rpc(client, "foundation_registry_unregister", kind="entry", key_id=key_id)

        return _run(client, run)

    @staticmethod
    def select(
        metadata: Mapping[str, Any] | None = None,
        *,
        owner: str | None = None,
        client: distributed.Client | None = None,
    ) -> list[RegistryEntry] | Awaitable[list[RegistryEntry]]:
        """Entries whose metadata equal ``metadata`` on each of its keys.

        Parameters
        ----------
        metadata
            Required metadata values; ``None`` or ``{}`` selects every entry.
            ``True`` does not match ``1``.
        owner
            Only entries of this client id or worker address.
        client
            Client to act through.

        Returns
        -------
        list of RegistryEntry
            In registration order.
        """
        wanted = check_metadata(metadata)

        async def run(client: distributed.Client) -> list[RegistryEntry]:
            reply = await _rpc(client, "foundation_registry_select", kind="entry",
                               metadata=wanted, owner=owner)
            return [_entry(r) for r in reply["records"]]

        return _run(client, run)


class ServiceMesh:
    """Service registration and discovery (``Foundation.ServiceMesh``).

    A service is a name, a handle to reach it, capabilities and metadata. Like
    registry entries, services belong to the registering client or worker and
    vanish with it. All methods block on a synchronous client and return an
    awaitable on an asynchronous one.
    """

    @staticmethod
    def register_service(
        name: Hashable,
        handle: Any,
        capabilities: Iterable[str] | None = None,
        metadata: Mapping[str, Any] | None = None,
        *,
        replace: bool = False,
        owner: str | None = None,
        client: distributed.Client | None = None,
    ) -> Service | Awaitable[Service]:
        """Register a service.

        Parameters
        ----------
        name
            Service name (usually a ``str``; any key accepted by the registry).
        handle
            Any picklable object used to reach the service, such as a singleton
            handle or a :class:`distributed.Actor`; it round-trips unchanged.
        capabilities
            A list of ``str``.
        metadata
            Simple values by ``str`` key.
        replace
            Take over ``name`` if it is registered already.
        owner
            Client id or worker address owning the service; default the caller.
        client
            Client to act through.

        Returns
        -------
        Service

        Raises
        ------
        AlreadyRegisteredError
            ``name`` is registered and ``replace`` is false.
        TypeError
            Bad ``capabilities`` or ``metadata``; nothing is registered.
        """
        client = client or current_client()
        owner = owner or caller_owner(client)
        msg = _register_message("service", name, handle, metadata, capabilities, replace, owner)

        async def run(client: distributed.Client) -> Service:
            reply = await _rpc(client, "foundation_registry_register", **msg)
            return Service(name, handle, list(msg["capabilities"]), msg["metadata"],
                           reply["owner"], reply["registered_at"])

        return _run(client, run)

    @staticmethod
    def discover_services(
        capabilities: Iterable[str] | None = None,
        metadata: Mapping[str, Any] | None = None,
        name: Hashable | None = None,
        *,
        client: distributed.Client | None = None,
    ) -> list[Service] | Awaitable[list[Service]]:
        """Services matching every given filter.

        Parameters
        ----------
        capabilities
            Each of these must be among the service's capabilities.
        metadata
            The service's metadata must equal these on each given key.
        name
            Exact service name.
        client
            Client to act through.

        Returns
        -------
        list of Service
            In registration order.
        """
        caps = check_capabilities(capabilities)
        wanted = check_metadata(metadata)
        key_id = None if name is None else canonical_key(name)

        async def run(client: distributed.Client) -> list[Service]:
            reply = await _rpc(client, "foundation_registry_select", kind="service",
                               metadata=wanted, capabilities=caps, key_id=key_id)
            return [_service(r) for r in reply["records"]]

        return _run(client, run)

    @staticmethod
    def deregister_service(name: Hashable, *, client: distributed.Client | None = None) -> Any:
        """Remove the service ``name``.

        Raises
        ------
        NotRegisteredError
            (a ``KeyError``) no service has that name.
        """
        key_id = canonical_key(name)

        async def run(client: distributed.Client) -> None:
            await _rpc(client, "foundation_registry_unregister", kind="service", key_id=key_id)

        return _run(client, run)

    @staticmethod
    def services_frame(
        capabilities: Iterable[str] | None = None,
        metadata: Mapping[str, Any] | None = None,
        name: Hashable | None = None,
        *,
        client: distributed.Client | None = None,
    ) -> pd.DataFrame | Awaitable[pd.DataFrame]:
        """:meth:`discover_services` as a :class:`pandas.DataFrame`.

        See :func:`services_to_frame` for the columns.
        """
        caps = check_capabilities(capabilities)
        wanted = check_metadata(metadata)
        key_id = None if name is None else canonical_key(name)

        async def run(client: distributed.Client) -> pd.DataFrame:
            reply = await _rpc(client, "foundation_registry_select", kind="service",
                               metadata=wanted, capabilities=caps, key_id=key_id)
            return services_to_frame(_service(r) for r in reply["records"])

        return _run(client, run)

    to_frame = staticmethod(services_to_frame)
