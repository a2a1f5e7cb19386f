"""Scheduler: the registry and the service mesh, kept in the scheduler's memory.

:class:`RegistryExtension` holds every entry and service of the cluster, so every
client, task and actor sees the same ones. Every record has an *owner*: the client
that registered it (its ``client.id``) or, when registered from a task or actor, the
worker that ran it (its address). When the owner goes away (a client closes, a worker
dies, even by SIGKILL) its records disappear with it.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

import distributed

from foundation_dask.core.plugin import FoundationSchedulerPlugin, SchedulerExtension
from foundation_dask.core.registry._core import (
    check_capabilities,
    check_metadata,
    error_reply,
    metadata_matches,
)
from foundation_dask.errors import AlreadyRegisteredError, NotRegisteredError

logger = logging.getLogger(__name__)

#: Topic of the scheduler events logged when an owner's entries are dropped.
EVENT_TOPIC = "foundation.registry"


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

        Raises :class:`AlreadyRegisteredError` (its ``key``: ``key_id``, the key's
        text form, as the scheduler never unpickles keys), ``TypeError`` (bad metadata
        or capabilities) or ``ValueError`` (owner not connected).
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
                "pass replace=True to replace it",
                key=key_id,
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
        """Remove and return a record; raises :class:`NotRegisteredError` (its ``key``:
        ``key_id``)."""
        record = self.records[kind].pop(key_id, None)
        if record is None:
            what = "service" if kind == "service" else "key"
            raise NotRegisteredError(f"{what} {key_id} is not registered", key=key_id)
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
            if metadata_matches(r["metadata"], wanted)
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
            return error_reply(exc)
        return {"error": None, "owner": record["owner"], "registered_at": record["registered_at"]}

    def _handle_lookup(self, kind: str, key_id: str) -> dict[str, Any]:
        return {"error": None, "record": self.lookup(kind, key_id)}

    def _handle_unregister(self, kind: str, key_id: str) -> dict[str, Any]:
        try:
            self.unregister(kind, key_id)
        except NotRegisteredError as exc:
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
        except TypeError as exc:
            return error_reply(exc)
        return {"error": None, "records": records}


