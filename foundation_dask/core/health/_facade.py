"""Client and worker: :class:`HealthMonitor`, the cluster's health in one call.

:meth:`HealthMonitor.get_cluster_health` makes one round trip to the scheduler's
``foundation_health`` handler and returns a
:class:`~foundation_dask.core.health.ClusterHealth`.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any

import distributed

from foundation_dask.core._client import check_connected, current_client
from foundation_dask.core.cluster import ensure_plugins
from foundation_dask.core.health._results import ClusterHealth
from foundation_dask.core.health._scheduler_plugin import check_thresholds


async def _get_health(client: distributed.Client, kwargs: dict[str, Any]) -> ClusterHealth:
    await ensure_plugins(client)
    reply = await client.scheduler.foundation_health(**kwargs)
    if "error" in reply:
        raise ValueError(f"the scheduler's health report failed: {reply['error']}")
    return ClusterHealth.from_dict(reply)


class HealthMonitor:
    """Cluster health (``Foundation.HealthMonitor``).

    A namespace class, as Foundation's ``HealthMonitor`` module: its functions are
    static methods (``fd.HealthMonitor.get_cluster_health()``) and it has no instances.
    """

    @staticmethod
    def get_cluster_health(
        *,
        degraded_cpu: float | None = None,
        degraded_memory: float | None = None,
        degraded_event_loop_lag: float | str | None = None,
        unreachable_after: float | str | None = None,
        client: distributed.Client | None = None,
    ) -> ClusterHealth | Awaitable[ClusterHealth]:
        """Health of every node and cluster rates, in one round trip to the scheduler.

        Parameters
        ----------
        degraded_cpu, degraded_memory
            Percent thresholds; default the scheduler's ``foundation.health`` config.
        degraded_event_loop_lag, unreachable_after
            Durations (seconds or ``"1s"``); default the scheduler's config.
        client
            Client to act through; by default the default client (the worker's inside
            a task), else the one :func:`foundation_dask.connect` opens.

        Returns
        -------
        ClusterHealth
            Blocks on a synchronous client; an awaitable on an asynchronous one.

        Raises
        ------
        ValueError
            A threshold (argument, or the scheduler's ``foundation.health`` setting) is
            not a number or duration; the message names it.
        """
        kwargs = check_thresholds(
            degraded_cpu=degraded_cpu,
            degraded_memory=degraded_memory,
            degraded_event_loop_lag=degraded_event_loop_lag,
            unreachable_after=unreachable_after,
        )
        client = client or current_client()
        check_connected(client)
        return client.sync(_get_health, client, kwargs)
