"""Client: scaling the cluster for an optimization, and the adaptive monitor.

:func:`scale_cluster` adds workers through the cluster manager or retires workers
gracefully, and returns the decision with its numbers. :class:`_AdaptiveMonitor` is the
thread of :meth:`~foundation_dask.dspex.AdaptiveOptimizer.adaptive_optimization` that
compares the evaluation rate with a target and scales: every decision is logged and
broadcast on the ``events`` channel.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, cast

from foundation_dask.core._client import worker_infos
from foundation_dask.core.channels import Channels
from foundation_dask.core.cluster import get_cluster
from foundation_dask.core.health import ClusterHealth, HealthMonitor

if TYPE_CHECKING:
    import distributed

__all__ = ["scale_cluster"]

logger = logging.getLogger(__name__)


def _cluster_of(client: distributed.Client) -> Any:
    """The cluster manager: the embedded cluster of ``connect()``, else the client's."""
    return get_cluster() or getattr(client, "cluster", None)


def scale_cluster(client: distributed.Client, direction: str, n: int, *, reason: str,
                  retire: Sequence[str] | None = None, numbers: dict[str, Any] | None = None
                  ) -> dict[str, Any]:
    """Scale the cluster up or down by ``n`` workers; returns the logged decision.

    Parameters
    ----------
    client
        The Dask client of the cluster.
    direction
        ``"up"`` (ask the cluster manager for ``n`` more workers) or ``"down"``
        (retire the workers ``retire`` gracefully).
    reason, numbers
        Why, and the numbers behind the decision (kept in the returned entry).

    Returns
    -------
    dict
        The decision: time, action, reason, workers before, outcome and ``numbers``.
    """
    before = len(worker_infos(client))
    entry = {"time": time.time(), "action": f"scale_{direction}", "n": n, "reason": reason,
             "workers_before": before, **(numbers or {})}
    cluster = _cluster_of(client)
    if direction == "up":
        if cluster is None:
            entry["outcome"] = (
                f"cannot add workers: only the scheduler address "
                f"({client.scheduler.address}) is known, not the cluster that started it; "
                "connect with its Cluster object (foundation_dask.connect(cluster)) to scale")
        else:
            cluster.scale(before + n)
            entry["outcome"] = f"requested {before + n} workers"
    elif direction == "down":
        workers = list(retire or [])
        if not workers:
            entry["outcome"] = "nothing to retire"
        else:
            client.retire_workers(workers=workers, close_workers=True)
            if cluster is not None and hasattr(cluster, "worker_spec"):
                names = {w["name"]: a for a, w in
                         worker_infos(client).items()}
                keep = set(names)
                for name in list(cluster.worker_spec):
                    if str(name) not in {str(k) for k in keep}:
                        cluster.worker_spec.pop(name, None)
            entry["retired"] = workers
            entry["outcome"] = f"retired {workers}"
    else:
        entry["outcome"] = f"unknown direction {direction!r}"
    logger.info("Scaling decision: %s", entry)
    return entry


class _AdaptiveMonitor:
    """A thread that checks the evaluation rate every ``interval`` seconds and scales."""

    def __init__(self, opt_id: str, coordinator: Any, client: distributed.Client,
                 log: list[dict[str, Any]], worker_rates: Callable[[], dict[str, float]],
                 target: float, interval: float, min_workers: int, max_workers: int | None,
                 step: int, capacity: Callable[[ClusterHealth], float] | None = None):
        self.opt_id, self.coordinator, self.client = opt_id, coordinator, client
        self.worker_rates = worker_rates
        self.capacity = capacity or (lambda health: health.available_capacity())
        self.log, self.target, self.interval = log, target, interval
        self.min_workers, self.max_workers, self.step = min_workers, max_workers, step
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="adaptive-monitor", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop checking (waits for a check under way)."""
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.check()
            except Exception:  # the monitor must not kill the optimization
                logger.exception("adaptive scaling check failed")

    def check(self) -> dict[str, Any] | None:
        """Compare the evaluation rate with the target, scale if needed; the decision."""
        metrics = self.coordinator.get_performance_metrics().result()
        rate = metrics["evaluations_per_second"]
        health = cast("ClusterHealth", HealthMonitor.get_cluster_health(client=self.client))
        capacity = float(self.capacity(health))
        workers = [n.node for n in health.cluster.node_health if n.status == "healthy"]
        numbers = {"rate": round(rate, 3), "target": self.target,
                   "worker_rates": {w: round(r, 2) for w, r in self.worker_rates().items()},
                   "available_capacity": round(capacity, 2), "workers": len(workers)}
        if rate < self.target and capacity > 0 and (
                self.max_workers is None or len(workers) < self.max_workers):
            entry = scale_cluster(self.client, "up", self.step, reason="below target rate",
                                  numbers=numbers)
        elif rate > 1.5 * self.target and len(workers) > self.min_workers:
            worst = self._least_efficient(workers)
            entry = scale_cluster(self.client, "down", 1, reason="well above target rate",
                                  retire=worst, numbers=numbers)
        else:
            entry = {"time": time.time(), "action": "no_scaling", "reason": "within band",
                     **numbers}
        self.log.append(entry)
        Channels.broadcast("events", ("scaling_decision", self.opt_id, entry),
                           client=self.client)
        return entry

    def _least_efficient(self, workers: list[str]) -> list[str]:
        """The worker with the fewest evaluations per second of busy time."""
        rates = self.worker_rates()
        return [min(workers, key=lambda w: (rates.get(w, 0.0), w))]
