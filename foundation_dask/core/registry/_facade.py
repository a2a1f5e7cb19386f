"""Client and worker: :class:`ProcessRegistry` and :class:`ServiceMesh`.

The facades of the registry and the service mesh: each call makes one round trip to
the scheduler's :class:`~foundation_dask.core.registry.RegistryExtension`. They work
from a notebook (blocking), from an asynchronous client (returning an awaitable) and
from tasks and actors on workers (through the worker's client).
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Awaitable, Callable, Hashable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import dask.config
import distributed
from dask.utils import parse_timedelta
from distributed.comm.core import CommClosedError
from distributed.protocol import pickle

from foundation_dask._compat import add_client_stream_handler
from foundation_dask.core._client import check_connected, current_client
from foundation_dask.core.cluster import ensure_plugins
from foundation_dask.core.plugin import extension
from foundation_dask.core.registry._core import (
    CLUSTER_OWNER,
    IDENTITY_OP,
    RegistryEntry,
    Service,
    canonical_key,
    check_capabilities,
    check_metadata,
    dumps_value,
    entry_of,
    raise_if_error,
    service_of,
    services_to_frame,
)
from foundation_dask.errors import (
    ClusterConnectionError,
    FoundationError,
    FoundationNotInstalledError,
)

if TYPE_CHECKING:
    import pandas as pd


def caller_owner(client: distributed.Client) -> str:
    """Who owns what the caller registers: its worker's address in a task, else ``client.id``.

    The scheduler decides this itself (from the stream on which it sent the caller its
    identity token); this is what it will decide, for display.
    """
    worker = calling_worker()
    return worker.address if worker is not None else client.id


def calling_worker() -> distributed.Worker | None:
    """The worker running the calling task or actor, if any (from the calling thread)."""
    try:
        return distributed.get_worker()
    except ValueError:
        return None


#: Identity tokens of this process's clients, and the requests for them under way.
_tokens: weakref.WeakKeyDictionary[distributed.Client, str] = weakref.WeakKeyDictionary()
_pending: weakref.WeakKeyDictionary[distributed.Client, asyncio.Future[str]] = (
    weakref.WeakKeyDictionary()
)


async def _client_identity(client: distributed.Client) -> str:
    """``client``'s identity token: the scheduler sends it on the client's own stream
    (a message :data:`IDENTITY_OP` on the client's batched stream), once per client."""
    token = _tokens.get(client)
    if token is not None:
        return token
    pending = _pending.get(client)
    if pending is None:
        pending = _pending[client] = asyncio.get_running_loop().create_future()
        future = pending

        def receive(token: str) -> None:
            if not future.done():
                future.set_result(token)

        add_client_stream_handler(client, IDENTITY_OP, receive)
        try:
            reply = await client.scheduler.foundation_registry_identify(client=client.id)
            raise_if_error(reply)
            timeout = parse_timedelta(dask.config.get("distributed.comm.timeouts.connect"), "s")
            token = await asyncio.wait_for(asyncio.shield(future), timeout)
        except BaseException:
            _pending.pop(client, None)
            if not future.done():
                future.cancel()
            raise
        _tokens[client] = token
        _pending.pop(client, None)
        return token
    return await asyncio.shield(pending)


async def _identity(client: distributed.Client, worker: distributed.Worker | None) -> str:
    if worker is None:
        return await _client_identity(client)
    ext = extension(worker, "registry")
    if ext is None:
        raise FoundationNotInstalledError(
            f"The worker {worker.address} has no Foundation registry; install the plugins "
            "with foundation_dask.connect() (or foundation_dask.install_plugins(client)).",
            address=client.scheduler.address,
        )
    token: str = await ext.identity(client)
    return token


def _forget_identity(client: distributed.Client, worker: distributed.Worker | None) -> None:
    if worker is None:
        _tokens.pop(client, None)
    else:
        ext = extension(worker, "registry")
        if ext is not None:
            ext.forget()


async def _send(client: distributed.Client, op: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The reply of the registry handler ``op``; a lost scheduler is a
    :class:`~foundation_dask.errors.ClusterConnectionError` naming its address."""
    try:
        reply: dict[str, Any] = await getattr(client.scheduler, op)(**kwargs)
    except FoundationError:  # an answer of the handler (NotOwnerError is an OSError too)
        raise
    except (OSError, CommClosedError) as exc:  # Dask's connect timeouts are plain OSErrors
        raise ClusterConnectionError(
            f"The Dask scheduler at {client.scheduler.address} cannot be reached ({exc}).",
            address=client.scheduler.address,
        ) from exc
    return reply


async def _rpc(client: distributed.Client, op: str, *, error_key: Hashable | None = None,
               **kwargs: Any) -> dict[str, Any]:
    """Call the registry handler ``op``; raise its error (with ``error_key`` as the
    error's ``key``)."""
    reply = await _send(client, op, kwargs)
    raise_if_error(reply, error_key)
    return reply


async def owned_request(client: distributed.Client, worker: distributed.Worker | None,
                        op: str, **kwargs: Any) -> dict[str, Any]:
    """The reply of the scheduler handler ``op`` to a request made in the caller's name.

    The request carries the caller's identity token (the one of ``worker``, from a task
    or actor on it, else of ``client``), asked for again once if the scheduler no
    longer knows it (its reply has ``identify``). Errors in the reply are not raised.

    Parameters
    ----------
    client
        The client to send through.
    worker
        The worker running the calling task (:func:`calling_worker`), or ``None``.
    op
        The scheduler handler; it takes ``token=`` and answers ``{"identify": True,
        ...}`` when it does not know the token.
    **kwargs
        The handler's other arguments.

    Returns
    -------
    dict
        The handler's reply.
    """
    for attempt in range(2):
        token = await _identity(client, worker)
        reply = await _send(client, op, {**kwargs, "token": token})
        if reply.get("identify") and attempt == 0:
            _forget_identity(client, worker)
            continue
        break
    return reply


async def _owned_rpc(client: distributed.Client, worker: distributed.Worker | None, op: str,
                     *, error_key: Hashable, **kwargs: Any) -> dict[str, Any]:
    """:func:`_rpc` for a request made in the caller's name (:func:`owned_request`)."""
    reply = await owned_request(client, worker, op, **kwargs)
    raise_if_error(reply, error_key)
    return reply


def _run(client: distributed.Client | None,
         coro_fn: Callable[[distributed.Client], Awaitable[Any]]) -> Any:
    """Run ``coro_fn(client)`` through ``client`` (by default the current client):
    its result on a synchronous client, an awaitable on an asynchronous one. The
    cluster gets the Foundation plugins first, as :func:`foundation_dask.connect` does."""
    client = client or current_client()
    check_connected(client)

    async def run(client: distributed.Client) -> Any:
        await ensure_plugins(client)
        return await coro_fn(client)

    return client.sync(run, client)


def _register_message(
    kind: str,
    key: Hashable,
    value: Any,
    metadata: Mapping[str, Any] | None,
    capabilities: Iterable[str] | None,
    replace: bool,
    force: bool,
    owner: str | None,
) -> dict[str, Any]:
    if owner is not None and owner != CLUSTER_OWNER:
        raise ValueError(
            f"owner must be None (the caller owns the entry) or {CLUSTER_OWNER!r} (an entry "
            f"that outlives its client), got {owner!r}; the scheduler, not the caller, "
            "decides who the caller is"
        )
    msg: dict[str, Any] = {
        "kind": kind,
        "key_id": canonical_key(key),
        "key": pickle.dumps(key),
        "value": dumps_value(key, value, "handle" if kind == "service" else "value"),
        "metadata": check_metadata(metadata),
        "replace": bool(replace),
        "force": bool(force),
        "cluster": owner == CLUSTER_OWNER,
    }
    if kind == "service":
        msg["capabilities"] = check_capabilities(capabilities)
    process = getattr(value, "__foundation_process__", None)
    if isinstance(process, str):
        msg["process"] = process  # a supervised process: its host is where it runs now
    return msg


class ProcessRegistry:
    """Cluster-wide name registry (the ``Horde.Registry`` of Foundation).

    A namespace class, as Foundation's ``ProcessRegistry`` module: its functions are
    static methods (``fd.ProcessRegistry.register(...)``) and it has no instances.

    All methods block on a synchronous client and return an awaitable on an
    asynchronous one. They work from a notebook and from tasks and actors on
    workers. Every method takes ``client=``, the client to act through; by default
    the default client (the worker's inside a task), else the one
    :func:`foundation_dask.connect` opens.
    """

    @staticmethod
    def register(
        key: Hashable,
        value: Any,
        metadata: Mapping[str, Any] | None = None,
        *,
        replace: bool = False,
        force: bool = False,
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
            Replace the entry if ``key`` is registered already by the caller.
        force
            With ``replace``: take over an entry of another owner (a client, a worker or
            the cluster); the entry becomes the caller's, and goes when the caller goes.
        owner
            ``None``: the caller owns the entry (the worker running the calling task or
            actor, else the client), and it goes when the caller goes. ``"cluster"``:
            the entry outlives every client (removed with ``force=True`` only). The
            scheduler decides who the caller is.
        client
            Client to act through; by default the default client (the worker's inside
            a task), else the one :func:`foundation_dask.connect` opens.

        Returns
        -------
        RegistryEntry
            The new entry.

        Raises
        ------
        AlreadyRegisteredError
            (a ``ValueError``) ``key`` is registered and ``replace`` is false; the
            message names the current owner (its ``owner`` attribute), its ``key``
            attribute is ``key``.
        NotOwnerError
            (a ``PermissionError``) with ``replace``: ``key`` is another owner's and
            ``force`` is false (its ``owner`` and ``key`` attributes).
        TypeError
            ``key`` is not hashable, ``value`` cannot be pickled (the message names
            ``key``) or ``metadata`` is not a dict of simple values.
        ValueError
            ``owner`` is neither ``None`` nor ``"cluster"``.
        """
        msg = _register_message("entry", key, value, metadata, None, replace, force, owner)
        worker = calling_worker()

        async def run(client: distributed.Client) -> RegistryEntry:
            reply = await _owned_rpc(client, worker, "foundation_registry_register",
                                     error_key=key, **msg)
            return RegistryEntry(key, value, msg["metadata"], reply["owner"],
                                 reply["registered_at"])

        return _run(client, run)

    @staticmethod
    def lookup(
        key: Hashable, *, client: distributed.Client | None = None
    ) -> RegistryEntry | None | Awaitable[RegistryEntry | None]:
        """The entry registered under ``key``, or ``None``.

        Parameters
        ----------
        key
            The key, compared as :func:`canonical_key` says.
        client
            Client to act through; by default the default client (the worker's inside
            a task), else the one :func:`foundation_dask.connect` opens.

        Returns
        -------
        RegistryEntry or None
        """
        key_id = canonical_key(key)

        async def run(client: distributed.Client) -> RegistryEntry | None:
            reply = await _rpc(client, "foundation_registry_lookup", kind="entry", key_id=key_id)
            record = reply["record"]
            return None if record is None else entry_of(record)

        return _run(client, run)

    @staticmethod
    def unregister(key: Hashable, *, force: bool = False,
                   client: distributed.Client | None = None) -> Any:
        """Remove the entry under ``key``.

        Parameters
        ----------
        key
            The key of the entry.
        force
            Remove it even if another client, worker or the cluster owns it.
        client
            Client to act through; by default the default client (the worker's inside
            a task), else the one :func:`foundation_dask.connect` opens.

        Raises
        ------
        NotRegisteredError
            (a ``KeyError``) nothing is registered under ``key`` (its ``key``
            attribute).
        NotOwnerError
            (a ``PermissionError``) another owner's entry and ``force`` is false; the
            message names the owner (its ``owner`` attribute).
        """
        key_id = canonical_key(key)
        worker = calling_worker()

        async def run(client: distributed.Client) -> None:
            await _owned_rpc(client, worker, "foundation_registry_unregister", error_key=key,
                             kind="entry", key_id=key_id, force=bool(force))

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
            Client to act through; by default the default client (the worker's inside
            a task), else the one :func:`foundation_dask.connect` opens.

        Returns
        -------
        list of RegistryEntry
            In registration order.
        """
        wanted = check_metadata(metadata)

        async def run(client: distributed.Client) -> list[RegistryEntry]:
            reply = await _rpc(client, "foundation_registry_select", kind="entry",
                               metadata=wanted, owner=owner)
            return [entry_of(r) for r in reply["records"]]

        return _run(client, run)


class ServiceMesh:
    """Service registration and discovery (``Foundation.ServiceMesh``).

    A namespace class, as Foundation's ``ServiceMesh`` module: its functions are
    static methods (``fd.ServiceMesh.register_service(...)``) and it has no instances.

    A service is a name, a handle to reach it, capabilities and metadata. Like
    registry entries, services belong to the registering client or worker and
    vanish with it. All methods block on a synchronous client and return an
    awaitable on an asynchronous one; those that reach the cluster take ``client=``
    (by default the default client, else the one :func:`foundation_dask.connect`
    opens). :meth:`to_frame` only converts services already fetched.
    """

    @staticmethod
    def register_service(
        name: Hashable,
        handle: Any,
        capabilities: Iterable[str] | None = None,
        metadata: Mapping[str, Any] | None = None,
        *,
        replace: bool = False,
        force: bool = False,
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
            Replace the service if ``name`` is registered already by the caller.
        force
            With ``replace``: take over another owner's service; it becomes the
            caller's, and goes when the caller goes.
        owner
            ``None`` (the caller) or ``"cluster"`` (outlives every client), as for
            :meth:`ProcessRegistry.register`.
        client
            Client to act through; by default the default client (the worker's inside
            a task), else the one :func:`foundation_dask.connect` opens.

        Returns
        -------
        Service

        Raises
        ------
        AlreadyRegisteredError
            ``name`` is registered and ``replace`` is false (its ``key`` and ``owner``
            attributes).
        NotOwnerError
            With ``replace``: ``name`` is another owner's and ``force`` is false (its
            ``key`` and ``owner`` attributes).
        TypeError
            Bad ``capabilities`` or ``metadata``, or a ``handle`` that cannot be pickled
            (named); nothing is registered.
        """
        msg = _register_message("service", name, handle, metadata, capabilities, replace,
                                force, owner)
        worker = calling_worker()

        async def run(client: distributed.Client) -> Service:
            reply = await _owned_rpc(client, worker, "foundation_registry_register",
                                     error_key=name, **msg)
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
            Client to act through; by default the default client (the worker's inside
            a task), else the one :func:`foundation_dask.connect` opens.

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
            return [service_of(r) for r in reply["records"]]

        return _run(client, run)

    @staticmethod
    def deregister_service(name: Hashable, *, force: bool = False,
                           client: distributed.Client | None = None) -> Any:
        """Remove the service ``name``.

        Parameters
        ----------
        name
            The service name.
        force
            Remove it even if another client, worker or the cluster owns it.
        client
            Client to act through; by default the default client (the worker's inside
            a task), else the one :func:`foundation_dask.connect` opens.

        Raises
        ------
        NotRegisteredError
            (a ``KeyError``) no service has that name (its ``key`` attribute).
        NotOwnerError
            (a ``PermissionError``) another owner's service and ``force`` is false (its
            ``owner`` attribute).
        """
        key_id = canonical_key(name)
        worker = calling_worker()

        async def run(client: distributed.Client) -> None:
            await _owned_rpc(client, worker, "foundation_registry_unregister", error_key=name,
                             kind="service", key_id=key_id, force=bool(force))

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

        Parameters
        ----------
        capabilities, metadata, name
            The filters of :meth:`discover_services`.
        client
            Client to act through; by default the default client (the worker's inside
            a task), else the one :func:`foundation_dask.connect` opens.

        Returns
        -------
        pandas.DataFrame
            One row per service; see :func:`services_to_frame` for the columns.
        """
        caps = check_capabilities(capabilities)
        wanted = check_metadata(metadata)
        key_id = None if name is None else canonical_key(name)

        async def run(client: distributed.Client) -> pd.DataFrame:
            reply = await _rpc(client, "foundation_registry_select", kind="service",
                               metadata=wanted, capabilities=caps, key_id=key_id)
            return services_to_frame(service_of(r) for r in reply["records"])

        return _run(client, run)

    to_frame = staticmethod(services_to_frame)
