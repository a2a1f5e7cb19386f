"""Client and worker: how the client-side facades reach the cluster.

Every facade call goes through :func:`scheduler_call` (or calls
``current_client().sync`` itself), which works from a notebook (blocking), from an
asynchronous client (returns an awaitable, as Dask does) and from code running
inside tasks on workers (through the worker's client). :func:`send_here` and
:func:`call_here` reach the scheduler of *this* process's connection without making
one (the worker's own comms inside a task, else the default client), for parts that
work with or without a cluster (secrets, the cluster-wide LM cache).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import distributed
from distributed.utils import sync

logger = logging.getLogger(__name__)


def current_client() -> distributed.Client:
    """The Dask client the facades act through.

    Returns
    -------
    distributed.Client
        The default client (``distributed.get_client()``) when there is one, the
        worker's client inside a task; otherwise, in a process that has had no client
        (or called ``foundation_dask.close()``), the client of
        :func:`foundation_dask.connect`, which connects to the configured scheduler
        (``foundation.scheduler-address``, ``DASK_SCHEDULER_ADDRESS``) or starts the
        embedded cluster. A synchronous client's cluster gets the Foundation plugins
        installed, as ``foundation_dask.connect()`` does, the first time.

    Raises
    ------
    ClusterConnectionError
        The default client, or the last client this process used, lost its
        connection to the scheduler (its ``address``): no embedded cluster is started
        in its place.
    """
    from foundation_dask.core.cluster import connect, lost_connection, use_client

    try:
        client: distributed.Client | None = distributed.get_client()
    except ValueError:
        client = None
    lost = lost_connection(client)
    if lost is not None:
        raise lost
    if client is None:
        logger.info("No Dask client yet: starting one with foundation_dask.connect()")
        return connect()
    return use_client(client)


def check_connected(client: distributed.Client) -> None:
    """Raise :class:`~foundation_dask.errors.ClusterConnectionError` (naming the address)
    when ``client`` has lost its connection to the scheduler."""
    from foundation_dask.core.cluster import lost_connection

    lost = lost_connection(client)
    if lost is not None:
        raise lost


def worker_infos(client: distributed.Client) -> dict[str, dict[str, Any]]:
    """The scheduler's records of its workers (address -> info), fetched now.

    ``Client.scheduler_info()`` returns the client's cached identity of the scheduler,
    which its periodic refresh may replace, between the fetch and the return, by one
    without per-worker entries: a cluster would then seem to have no workers. For a
    synchronous client (the facades use this from notebooks and threads).
    """
    return client.sync(client.scheduler.identity, n_workers=-1)["workers"]


async def _call(client: distributed.Client, op: str, kwargs: dict[str, Any]) -> Any:
    return await getattr(client.scheduler, op)(**kwargs)


def scheduler_call(op: str, client: distributed.Client | None = None, **kwargs: Any) -> Any:
    """Call the scheduler RPC handler ``op``.

    Parameters
    ----------
    op
        Name of the handler (``"foundation_registry_lookup"``...).
    client
        Client to act through; by default :func:`current_client` (the default client,
        else the one :func:`foundation_dask.connect` opens).
    **kwargs
        Arguments of the handler.

    Returns
    -------
    Any
        The handler's reply on a synchronous client; an awaitable of it on an
        asynchronous one.
    """
    client = client or current_client()
    return client.sync(_call, client, op, kwargs)


def _here() -> tuple[distributed.Worker | None, distributed.Client | None]:
    """The worker this code runs in (inside a task or actor), else the default client
    if it is running and has the Foundation plugins; ``(None, None)`` otherwise."""
    try:
        return distributed.get_worker(), None
    except ValueError:
        pass
    from foundation_dask.core.cluster import plugins_installed

    client = distributed.client._get_global_client()
    if client is None or client.status != "running" or not plugins_installed(client):
        return None, None
    return None, client


def send_here(msg: dict[str, Any], unless: set[str] | frozenset[str] = frozenset()
              ) -> str | None:
    """Put ``msg`` on this process's batched stream to the scheduler (ordered before
    what this thread sends after it), unless that scheduler's address is in ``unless``;
    returns the address, or ``None`` when this process has no connection to a
    Foundation cluster (nothing is sent)."""
    worker, client = _here()
    if worker is not None:
        if worker.batched_stream is None:
            return None
        address = str(worker.scheduler.address)
        if address not in unless:
            worker.loop.add_callback(worker.batched_send, msg)
        return address
    if client is not None:
        address = str(client.scheduler.address)
        if address not in unless:
            client._send_to_scheduler(msg)
        return address
    return None


def _on_loop(loop: Any) -> bool:
    try:
        return asyncio.get_running_loop() is loop.asyncio_loop
    except RuntimeError:
        return False


def call_here(op: str, timeout: float = 10.0, **kwargs: Any) -> tuple[bool, Any]:
    """Call the scheduler handler ``op`` from a thread of this process, through the
    connection :func:`send_here` uses; ``(False, None)`` when there is none (or the
    caller is on that connection's event loop, which must not block), else
    ``(True, reply)``. Errors of the call are raised."""
    worker, client = _here()
    if worker is not None:
        if _on_loop(worker.loop):
            return False, None
        return True, sync(worker.loop, getattr(worker.scheduler, op), callback_timeout=timeout,
                          **kwargs)
    if client is not None and not client.asynchronous and not _on_loop(client.loop):
        return True, client.sync(getattr(client.scheduler, op), callback_timeout=timeout,
                                 **kwargs)
    return False, None
