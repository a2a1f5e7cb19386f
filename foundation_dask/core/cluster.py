"""Client: ``connect()``, the zero-config way onto a Dask cluster.

With no address, ``connect()`` uses dask config ``foundation.scheduler-address``,
then the ``DASK_SCHEDULER_ADDRESS`` environment variable, and otherwise starts an
embedded :class:`distributed.LocalCluster` with worker processes, whose scheduler
preloads the modules of ``foundation.cluster.scheduler-preload`` (the Foundation
pages of the Dask dashboard). Either way it installs the Foundation scheduler and
worker plugins once. ``connect(cluster)`` takes any :class:`distributed.deploy.Cluster`
(``LocalCluster``, ``SpecCluster``, dask-jobqueue, dask-kubernetes, dask-gateway
clusters): its own ``scale`` / ``adapt`` then serve the adaptive optimizer and the
dashboard's scale buttons, which with an address alone cannot add workers.
``foundation_dask.cluster`` is the same module's public path.

The embedded cluster's dashboard listens on ``127.0.0.1`` only
(``foundation.cluster.dashboard-address``); it has no authentication, so binding it to
another interface is an explicit setting. A process that has had a client never falls
back to the embedded cluster on its own: once that client's connection is lost, the
facades raise :class:`~foundation_dask.errors.ClusterConnectionError` until
:func:`connect` (or :func:`close`) is called.
"""

from __future__ import annotations

import logging
import os
import weakref
from collections.abc import Mapping
from typing import Any

import dask.config
import distributed
from distributed import Client, LocalCluster
from distributed.comm.addressing import normalize_address, resolve_address
from distributed.security import Security

from foundation_dask import config
from foundation_dask.core.plugin import (
    PLUGIN_NAME,
    FoundationSchedulerPlugin,
    FoundationWorkerPlugin,
)
from foundation_dask.errors import ClusterConnectionError, FoundationNotInstalledError

__all__ = [
    "ClusterConnectionError",
    "FoundationNotInstalledError",
    "close",
    "connect",
    "get_cluster",
    "install_plugins",
]

logger = logging.getLogger(__name__)

_default_client: Client | None = None
_embedded_cluster: LocalCluster | None = None
#: The cluster object given to :func:`connect` (the caller's: never closed here).
_given_cluster: distributed.deploy.Cluster | None = None
#: Scheduler address of the last client this process used (``None``: none yet, or
#: :func:`close` was called since).
_last_address: str | None = None
#: Clients whose cluster has the Foundation plugins (installed or checked).
_installed: weakref.WeakSet[Client] = weakref.WeakSet()


def _configured_address() -> str | None:
    return config.get("scheduler-address") or os.environ.get("DASK_SCHEDULER_ADDRESS") or None


def _same_address(a: str, b: str) -> bool:
    """Whether two scheduler addresses name the same endpoint (``localhost`` = ``127.0.0.1``)."""
    if a == b:
        return True
    try:
        return resolve_address(normalize_address(a)) == resolve_address(normalize_address(b))
    except (ValueError, OSError):
        return False


def _scheduler_kwargs(given: Mapping[str, Any] | None) -> dict[str, Any]:
    """``scheduler_kwargs`` of the embedded cluster: ``given`` with the modules of
    ``foundation.cluster.scheduler-preload`` added to its ``preload``.

    A scheduler given a ``preload`` ignores ``distributed.scheduler.preload``, so the
    configured ones come first when ``given`` has none; their ``preload_argv`` (one
    list per module) gets an empty list for each added module.
    """
    kwargs = dict(given or {})
    ours = [str(m) for m in config.get("cluster.scheduler-preload") or []]
    preload = kwargs.get("preload") or dask.config.get("distributed.scheduler.preload") or []
    preload = [preload] if isinstance(preload, str) else list(preload)
    added = [m for m in ours if m not in preload]
    if not added:
        return kwargs
    argv = kwargs.get("preload_argv") or dask.config.get("distributed.scheduler.preload-argv")
    if argv and not isinstance(argv[0], str):  # one argument list per module
        kwargs["preload_argv"] = [*argv, *([] for _ in added)]
    kwargs["preload"] = [*preload, *added]
    return kwargs


def _embedded_cluster_kwargs(overrides: dict[str, Any]) -> dict[str, Any]:
    kwargs = {
        "n_workers": config.get("cluster.n-workers"),
        "threads_per_worker": config.get("cluster.threads-per-worker"),
        "processes": config.get("cluster.processes"),
        "dashboard_address": config.get("cluster.dashboard-address"),
        "memory_limit": config.get("cluster.memory-limit"),
    }
    kwargs.update(overrides)
    kwargs["scheduler_kwargs"] = _scheduler_kwargs(kwargs.get("scheduler_kwargs"))
    return kwargs


async def _install(client: Client) -> dict[str, Any]:
    installed = await client.scheduler.get_metadata(
        keys=[PLUGIN_NAME, "scheduler_plugin"], default=False
    )
    info = await client.scheduler.foundation_ping() if installed else None
    try:
        if info is None:
            await client.register_plugin(FoundationSchedulerPlugin(), name=PLUGIN_NAME)
            info = await client.scheduler.foundation_ping()
        if not info["worker_plugin"]:
            await client.register_plugin(FoundationWorkerPlugin(), name=PLUGIN_NAME)
            info = await client.scheduler.foundation_ping()
    except ModuleNotFoundError as exc:
        address = client.scheduler.address
        raise FoundationNotInstalledError(
            f"The cluster at {address} cannot import foundation_dask ({exc}). "
            "Install foundation-dask in the environment of the scheduler and of every worker.",
            address=address,
        ) from exc
    _installed.add(client)
    return info


async def ensure_plugins(client: Client) -> None:
    """Install the Foundation plugins on ``client``'s cluster (as :func:`connect` does)
    unless this process installed or found them there already through ``client``."""
    if client not in _installed:
        logger.info("Installing the Foundation plugins on the cluster at %s",
                    client.scheduler.address)
        await _install(client)


def plugins_installed(client: Client) -> bool:
    """Whether this process installed or found the Foundation plugins through ``client``."""
    return client in _installed


def use_client(client: Client) -> Client:
    """``client``, noted as this process's (see :func:`lost_connection`), its cluster
    given the Foundation plugins if it is synchronous and has not got them yet."""
    note_client(client)
    if client not in _installed and not client.asynchronous:
        install_plugins(client)
    return client


def note_client(client: Client) -> None:
    """Remember that this process used ``client`` (see :func:`lost_connection`)."""
    global _last_address
    _last_address = client.scheduler.address


def lost_connection(client: Client | None = None) -> ClusterConnectionError | None:
    """The error to raise when ``client`` (by default the last client this process used)
    has lost its connection; ``None`` when it is connected, or when this process never
    had a client (or called :func:`close` since)."""
    if client is not None and client.status in ("running", "newly-created"):
        return None
    address = client.scheduler.address if client is not None else _last_address
    if address is None:
        return None
    state = client.status if client is not None else "closed"
    return ClusterConnectionError(
        f"The connection to the Dask scheduler at {address} was lost (client {state}). "
        "Connect again with foundation_dask.connect(address), or call "
        "foundation_dask.close() then foundation_dask.connect() for an embedded cluster.",
        address=address,
    )


def install_plugins(client: Client) -> Any:
    """Install the Foundation scheduler and worker plugins on ``client``'s cluster.

    Idempotent: plugins already present are kept with their state.

    Parameters
    ----------
    client
        A client of the cluster.

    Returns
    -------
    dict
        The scheduler plugin's ``foundation_ping`` reply (``extensions``,
        ``worker_plugin``); an awaitable of it on an asynchronous client.

    Raises
    ------
    FoundationNotInstalledError
        The scheduler or a worker cannot import foundation_dask (``address``: the
        scheduler's).
    """
    return client.sync(_install, client)


def connect(
    address: str | distributed.deploy.Cluster | None = None,
    *,
    security: Security | bool | None = None,
    **cluster_kwargs: Any,
) -> Client:
    """Connect to a Dask cluster, starting an embedded one if none is configured.

    Parameters
    ----------
    address
        Scheduler address such as ``"tcp://10.0.0.5:8786"``, or a cluster object (any
        :class:`distributed.deploy.Cluster`: ``LocalCluster``, ``SpecCluster``,
        dask-jobqueue's, dask-kubernetes', dask-gateway's), which then scales the
        cluster for the adaptive optimizer and the scale buttons and stays the
        caller's (:func:`close` does not close it). When omitted, dask config
        ``foundation.scheduler-address``, then ``DASK_SCHEDULER_ADDRESS``, then an
        embedded ``LocalCluster`` (options under ``foundation.cluster``).
    security
        A :class:`distributed.security.Security` (TLS, mutual authentication), passed
        through to the client (and to the embedded cluster).
    **cluster_kwargs
        Extra keyword arguments of :class:`distributed.LocalCluster` for the embedded
        cluster (``n_workers=4``...). Not accepted together with an address. The
        modules of ``foundation.cluster.scheduler-preload`` are added to the
        ``preload`` of ``scheduler_kwargs``.

    Returns
    -------
    distributed.Client
        The default client; calling ``connect()`` again returns the same one.
        Connecting to another address closes the previous client (and the embedded
        cluster, if ``connect()`` started one).

    Examples
    --------
    >>> import foundation_dask as fd
    >>> client = fd.connect()                      # doctest: +SKIP
    >>> client = fd.connect("tcp://scheduler:8786")  # doctest: +SKIP
    >>> client = fd.connect(SLURMCluster(cores=8))   # doctest: +SKIP
    """
    global _default_client, _embedded_cluster, _given_cluster

    if isinstance(address, distributed.deploy.Cluster):
        return _connect_cluster(address, security, cluster_kwargs)
    if address is not None and not isinstance(address, str):
        raise TypeError(f"connect() takes a scheduler address (a string) or a "
                        f"distributed.deploy.Cluster, not {type(address).__name__}")

    explicit = address is not None
    address = address or _configured_address()
    if address is not None and cluster_kwargs:
        source = "" if explicit else " (from foundation.scheduler-address/DASK_SCHEDULER_ADDRESS)"
        raise TypeError(
            f"connect() got cluster options {sorted(cluster_kwargs)} together with the "
            f"scheduler address {address!r}{source}; they only apply to the embedded cluster. "
            "Drop them, or drop the address."
        )
    client = _default_client
    if client is not None and client.status == "running":
        if cluster_kwargs:
            raise RuntimeError(
                f"connect() is already connected to {client.scheduler.address}; call "
                "foundation_dask.close() before starting an embedded cluster with other options."
            )
        if address is None or _same_address(client.scheduler.address, address):
            install_plugins(client)
            note_client(client)
            return client
    # Another cluster is asked for, or the previous client is no longer running:
    # release what the previous connect() opened before opening anything new.
    close()

    if address is not None:
        client = Client(address, security=security, set_as_default=True)
    else:
        kwargs = _embedded_cluster_kwargs(cluster_kwargs)
        if security is not None:
            kwargs["security"] = security
        _embedded_cluster = LocalCluster(**kwargs)
        # The client takes the cluster's own Security: with ``security=True`` the cluster
        # made temporary credentials that a second ``Security.temporary()`` would not match.
        client = Client(_embedded_cluster, set_as_default=True)
    _default_client = client
    note_client(client)
    install_plugins(client)
    logger.info("Connected to %s (dashboard %s)", client.scheduler.address, client.dashboard_link)
    return client


def _connect_cluster(cluster: distributed.deploy.Cluster, security: Security | bool | None,
                     cluster_kwargs: dict[str, Any]) -> Client:
    global _default_client, _given_cluster
    if cluster_kwargs:
        raise TypeError(f"connect() got cluster options {sorted(cluster_kwargs)} together with "
                        f"the cluster object {cluster!r}; configure that cluster instead.")
    client = _default_client
    if (client is not None and client.status == "running" and _given_cluster is cluster):
        install_plugins(client)
        note_client(client)
        return client
    close()
    if security is not None and not isinstance(security, bool):
        client = Client(cluster, security=security, set_as_default=True)
    else:
        client = Client(cluster, set_as_default=True)
    _default_client, _given_cluster = client, cluster
    note_client(client)
    install_plugins(client)
    logger.info("Connected to %s (%s)", client.scheduler.address, type(cluster).__name__)
    return client


def close() -> None:
    """Close the default client and, if ``connect()`` started one, the embedded cluster
    (a cluster object given to ``connect()`` stays open: it is the caller's).

    Afterwards a facade call with no client connects anew, as in a new process.
    """
    global _default_client, _embedded_cluster, _last_address, _given_cluster
    _last_address = None
    _given_cluster = None
    if _default_client is not None:
        _default_client.close()
        _default_client = None
    if _embedded_cluster is not None:
        _embedded_cluster.close()
        _embedded_cluster = None


def get_cluster() -> distributed.deploy.Cluster | None:
    """The cluster object :func:`connect` started (the embedded cluster) or was given,
    if any; ``None`` when it connected by address only."""
    return _embedded_cluster or _given_cluster
