"""Scheduler: the registry and the service mesh, kept in the scheduler's memory.

:class:`RegistryExtension` holds every entry and service of the cluster, so every
client, task and actor sees the same ones. Every record has an *owner*: the client
that registered it (its ``client.id``), the worker whose task or actor registered it
(its address), or :data:`CLUSTER_OWNER` for records meant to outlive their clients.
When a client or worker owner goes away (a client closes, a worker dies, even by
SIGKILL) its records disappear with it. Replacing or removing a record of another
owner needs ``force=True``, and a forced take-over makes the caller the owner.

A record has a *host* too: the worker that owns it, or, for the handle of a supervised
process, the worker the process runs on now. While the host is unreachable (not heard
from for ``foundation.health.unreachable-after``: a network partition, before Dask's
TCP timeout removes it) lookups, ``select`` and ``discover_services`` do not return the
record; it is back once the host is heard from again (or follows its process to
another host).

The scheduler decides who the caller is, never the request: a client or worker first
asks for an identity token (``foundation_registry_identify``), which the scheduler
sends only on the batched stream it opened for that client or worker; requests then
carry the token, and the scheduler maps it back to its owner.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

import distributed

from foundation_dask.core.health import health_thresholds
from foundation_dask.core.plugin import FoundationSchedulerPlugin, SchedulerExtension
from foundation_dask.core.registry._core import (
    CLUSTER_OWNER,
    IDENTITY_OP,
    check_capabilities,
    check_metadata,
    error_reply,
    metadata_matches,
)
from foundation_dask.errors import AlreadyRegisteredError, NotOwnerError, NotRegisteredError

logger = logging.getLogger(__name__)

#: Topic of the scheduler events logged when an owner's entries are dropped.
EVENT_TOPIC = "foundation.registry"

#: The two tables of the extension.
KINDS = ("entry", "service")


def check_kind(kind: object) -> str:
    """``kind`` if it is one of :data:`KINDS`; else a ``ValueError`` naming them."""
    if not isinstance(kind, str) or kind not in KINDS:
        raise ValueError(f"kind must be one of {list(KINDS)}, got {kind!r}")
    return kind

#: The reply to a request whose identity token the scheduler does not know (a new
#: scheduler at the same address, a token of a departed owner): ask for one, try again.
UNKNOWN_IDENTITY = {
    "error": {"type": "ValueError",
              "message": "the request's identity token is not known to this scheduler"},
    "identify": True,
}


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

    def __init__(self, scheduler: distributed.Scheduler,
                 plugin: FoundationSchedulerPlugin) -> None:
        super().__init__(scheduler, plugin)
        self.records: dict[str, dict[str, dict[str, Any]]] = {"entry": {}, "service": {}}
        self.owned: defaultdict[str, set[tuple[str, str]]] = defaultdict(set)
        #: Identity tokens: token -> owner (client id or worker address), and back.
        self.identities: dict[str, str] = {}
        self.tokens: dict[str, str] = {}

    def handlers(self) -> dict[str, Any]:
        return {
            "foundation_registry_identify": self._handle_identify,
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
        force: bool = False,
        cluster: bool = False,
        process: str | None = None,
    ) -> dict[str, Any]:
        """Store a record for the caller ``owner`` and return it.

        ``owner`` is the caller (a connected client id or worker address); with
        ``cluster=True`` the record is owned by :data:`CLUSTER_OWNER` instead.
        Replacing a record (``replace=True``) of another owner needs ``force=True``.

        Raises :class:`AlreadyRegisteredError` (its ``key``: ``key_id``, the key's
        text form, as the scheduler never unpickles keys; its ``owner``: the current
        owner), ``TypeError`` (bad metadata or capabilities) or ``ValueError`` (owner
        not connected, unknown ``kind``).
        """
        table = self.records[check_kind(kind)]
        metadata = check_metadata(metadata)
        caps = check_capabilities(list(capabilities) if capabilities is not None else None)
        if not isinstance(key, bytes) or not isinstance(value, bytes):
            raise TypeError("key and value must arrive pickled (bytes)")
        if not self.is_live_owner(owner):
            raise ValueError(
                f"owner {owner!r} is neither a connected client nor a worker of this cluster"
            )
        what = "service" if kind == "service" else "key"
        current = table.get(key_id)
        if current is not None and not replace:
            raise AlreadyRegisteredError(
                f"{what} {key_id} is already registered (owner {current['owner']}); "
                "pass replace=True to replace it",
                key=key_id, owner=current["owner"],
            )
        if current is not None and current["owner"] != owner and not force:
            raise NotOwnerError(
                f"{what} {key_id} is owned by {current['owner']}, not by the caller "
                f"({owner}); pass force=True (with replace=True) to take it over",
                key=key_id, owner=current["owner"],
            )
        if current is not None:
            self._disown(kind, current)
        record_owner = CLUSTER_OWNER if cluster else owner
        record = {
            "key_id": key_id,
            "key": key,
            "value": value,
            "metadata": metadata,
            "owner": record_owner,
            "registered_at": time.time(),
        }
        if kind == "service":
            record["capabilities"] = caps
        if isinstance(process, str):
            record["process"] = process
        table[key_id] = record
        self.owned[record_owner].add((kind, key_id))
        return record

    def lookup(self, kind: str, key_id: str) -> dict[str, Any] | None:
        """The record under ``key_id``, or ``None``."""
        return self.records[check_kind(kind)].get(key_id)

    def unregister(self, kind: str, key_id: str, owner: str | None = None,
                   force: bool = False) -> dict[str, Any]:
        """Remove and return a record.

        ``owner`` is the caller; a record of another owner is only removed with
        ``force=True`` (``owner=None``: code of the scheduler process, no check).
        Raises :class:`NotRegisteredError` (its ``key``: ``key_id``) or
        :class:`NotOwnerError` (owned by another, its ``owner``).
        """
        table = self.records[check_kind(kind)]
        what = "service" if kind == "service" else "key"
        record = table.get(key_id)
        if record is None:
            raise NotRegisteredError(f"{what} {key_id} is not registered", key=key_id)
        if owner is not None and record["owner"] != owner and not force:
            raise NotOwnerError(
                f"{what} {key_id} is registered by {record['owner']}, not by the caller "
                f"({owner}); pass force=True to remove it",
                key=key_id, owner=record["owner"],
            )
        del table[key_id]
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
        table = self.records[check_kind(kind)]
        if key_id is None:
            candidates = list(table.values())
        else:
            record = table.get(key_id)
            candidates = [] if record is None else [record]
        limit = self._unreachable_after()
        return [
            r
            for r in candidates
            if metadata_matches(r["metadata"], wanted)
            and caps.issubset(r.get("capabilities", ()))
            and (owner is None or r["owner"] == owner)
            and self.reachable(r, limit)
        ]

    def host_of(self, record: Mapping[str, Any]) -> str | None:
        """The worker a record lives on: its process's current worker, else its owner if
        that is a worker; ``None`` for records of clients and of the cluster."""
        process = record.get("process")
        if process is not None:
            supervisor = self.plugin.extensions.get("processes")
            rec = getattr(supervisor, "records", {}).get(process)
            worker = getattr(rec, "worker", None)
            if worker is not None:
                return str(worker)
        owner = record["owner"]
        return owner if owner in self.scheduler.workers else None

    def reachable(self, record: Mapping[str, Any], limit: float | None = None) -> bool:
        """Whether the record's host (:meth:`host_of`) was heard from within ``limit``
        seconds (default ``foundation.health.unreachable-after``); records without a
        host are."""
        host = self.host_of(record)
        if host is None:
            return True
        ws = self.scheduler.workers.get(host)
        if ws is None:
            return False
        return time.time() - ws.last_seen <= (self._unreachable_after() if limit is None
                                              else limit)

    def _unreachable_after(self) -> float:
        try:
            return float(health_thresholds()["unreachable_after"])
        except ValueError:
            return 10.0

    def count_owned_by(self, owner: str) -> int:
        """Number of entries and services owned by ``owner``."""
        return len(self.owned.get(owner, ()))

    def _disown(self, kind: str, record: Mapping[str, Any]) -> None:
        owned = self.owned.get(record["owner"])
        if owned is not None:
            owned.discard((kind, record["key_id"]))
            if not owned:
                del self.owned[record["owner"]]

    # -- identities

    def identify(self, client: str | None = None, worker: str | None = None) -> None:
        """Send the identity token of ``client`` (a client id) or ``worker`` (an address)
        on the batched stream the scheduler holds for it, and only there.

        Raises ``ValueError`` when neither or both are given, or when it is not connected.
        """
        if (client is None) == (worker is None):
            raise ValueError("identify needs exactly one of client= and worker=")
        owner = str(client if client is not None else worker)
        if worker is not None:
            comm = self.scheduler.stream_comms.get(owner)
        else:
            comm = self.scheduler.client_comms.get(owner)
        if comm is None:
            raise ValueError(
                f"{owner!r} is neither a connected client nor a worker of this cluster"
            )
        token = self.tokens.get(owner)
        if token is None:
            token = secrets.token_urlsafe(24)
            self.tokens[owner] = token
            self.identities[token] = owner
        comm.send({"op": IDENTITY_OP, "token": token})

    def owner_of(self, token: object) -> str | None:
        """The connected client or worker whose identity token is ``token``, or ``None``."""
        owner = self.identities.get(token) if isinstance(token, str) else None
        return owner if owner is not None and self.is_live_owner(owner) else None

    def drop_owner(self, owner: str) -> list[tuple[str, str]]:
        """Remove everything ``owner`` registered, and its identity token; returns the
        ``(kind, key_id)`` removed."""
        token = self.tokens.pop(owner, None)
        if token is not None:
            self.identities.pop(token, None)
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

    def _handle_identify(self, client: str | None = None,
                         worker: str | None = None) -> dict[str, Any]:
        try:
            self.identify(client=client, worker=worker)
        except ValueError as exc:
            return error_reply(exc)
        return {"error": None}

    def _handle_register(
        self,
        kind: str,
        key_id: str,
        key: bytes,
        value: bytes,
        token: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        capabilities: Iterable[str] | None = None,
        replace: bool = False,
        force: bool = False,
        cluster: bool = False,
        owner: object = None,
        process: str | None = None,
    ) -> dict[str, Any]:
        if owner is not None:
            return error_reply(ValueError(
                f"a request cannot name its owner ({owner!r}): the scheduler decides who "
                "the caller is from its identity token"
            ))
        owner = self.owner_of(token)
        if owner is None:
            return dict(UNKNOWN_IDENTITY)
        try:
            record = self.register(kind, key_id, key, value, owner, metadata, capabilities,
                                   bool(replace), bool(force), bool(cluster), process)
        except (AlreadyRegisteredError, NotOwnerError, TypeError, ValueError) as exc:
            return error_reply(exc)
        return {"error": None, "owner": record["owner"], "registered_at": record["registered_at"]}

    def _handle_lookup(self, kind: str, key_id: str) -> dict[str, Any]:
        try:
            record = self.lookup(kind, key_id)
        except ValueError as exc:
            return error_reply(exc)
        return {"error": None,
                "record": record if record is not None and self.reachable(record) else None}

    def _handle_unregister(self, kind: str, key_id: str, token: str | None = None,
                           force: bool = False) -> dict[str, Any]:
        owner = self.owner_of(token)
        if owner is None:
            return dict(UNKNOWN_IDENTITY)
        try:
            self.unregister(kind, key_id, owner, bool(force))
        except (NotRegisteredError, NotOwnerError, ValueError) as exc:
            return error_reply(exc)
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
        except (TypeError, ValueError) as exc:
            return error_reply(exc)
        return {"error": None, "records": records}
