"""Any process: capacity plans, where the evaluation workers of an optimization go.

:func:`calculate_optimal_distribution` turns a
:class:`~foundation_dask.core.health.ClusterHealth` into a :class:`CapacityPlan`: the
Dask workers that can take work (running, reachable: healthy or degraded), their
available capacity (the cores of their host minus its load average, shared between the
host's workers) and the evaluation slots given to each.
Pure computation on plain data.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from foundation_dask.core.health import ClusterHealth

__all__ = ["CapacityPlan", "calculate_optimal_distribution"]


@dataclass
class CapacityPlan:
    """Where the evaluation workers of an optimization go.

    ``worker_distribution`` has one entry per Dask worker that can take work: its available
    capacity (cores of its host minus the host's load average, shared between the
    host's workers and capped at the worker's threads) and the evaluation workers
    (concurrent evaluation slots) given to it.
    """

    total_capacity: float
    total_workers: int
    worker_distribution: list[dict[str, Any]]
    utilization_percent: float
    estimated_completion_time_s: float | None = None

    @property
    def workers(self) -> list[str]:
        """Addresses of the Dask workers that get at least one evaluation worker."""
        return [d["node"] for d in self.worker_distribution if d["workers"] > 0]

    def to_dict(self) -> dict[str, Any]:
        """The plan as plain data (what the coordinator keeps)."""
        return asdict(self)


def calculate_optimal_distribution(health: ClusterHealth, max_workers: int | str = "auto",
                                   min_workers_per_node: int = 1,
                                   n_evaluations: int | None = None,
                                   eval_rate: float = 2.0) -> CapacityPlan:
    """A capacity plan from a :class:`~foundation_dask.core.health.ClusterHealth`.

    Parameters
    ----------
    health
        The cluster's health (``HealthMonitor.get_cluster_health()``).
    max_workers
        ``"auto"`` uses 80% of the available capacity; an integer caps it.
    min_workers_per_node
        Evaluation workers every node that can take work gets regardless of its load:
        every reachable node whose Dask status is ``running``, degraded ones too (a
        node busy with work just finished reads as degraded, CPU over the threshold,
        for a moment; its host's load average already lowers its capacity). Paused,
        closing and unreachable nodes get none.
    n_evaluations, eval_rate
        For the completion estimate: evaluations to run, per worker per second.
    """
    if max_workers != "auto" and (not isinstance(max_workers, int) or max_workers < 1):
        raise ValueError(f"max_workers must be 'auto' or a positive integer, not {max_workers!r}")
    if min_workers_per_node < 0:
        raise ValueError(f"min_workers_per_node must be >= 0, not {min_workers_per_node}")
    nodes = [n for n in health.cluster.node_health
             if n.status in ("healthy", "degraded")
             and getattr(n, "worker_status", "running") in ("running", None)]
    by_host: dict[str, list[Any]] = {}
    for n in nodes:
        by_host.setdefault(getattr(n, "host", None) or n.node, []).append(n)
    distribution = []
    for members in by_host.values():
        threads = [int(m.nthreads or 1) for m in members]
        host_cores = float(members[0].cores or sum(threads))
        load = float(members[0].load_avg or 0.0)
        available = max(0.0, host_cores - load)
        total_threads = sum(threads) or 1
        for m, t in zip(members, threads, strict=True):
            capacity = min(float(t), available * t / total_threads)
            distribution.append({"node": m.node, "capacity": round(capacity, 3),
                                 "threads": t, "workers": 0})
    total_capacity = sum(d["capacity"] for d in distribution)
    if max_workers == "auto":
        optimal = round(total_capacity * 0.8)
    else:
        optimal = min(int(max_workers), max(1, round(total_capacity)))
    for d in distribution:
        d["workers"] = min(min_workers_per_node, d["threads"])
    remaining = optimal - sum(d["workers"] for d in distribution)
    if remaining > 0 and total_capacity > 0:
        # largest remainder: proportional to capacity, capped at each worker's threads
        shares = [(remaining * d["capacity"] / total_capacity, i)
                  for i, d in enumerate(distribution)]
        for share, i in shares:
            d = distribution[i]
            d["workers"] = min(d["threads"], d["workers"] + math.floor(share))
        left = optimal - sum(d["workers"] for d in distribution)
        for _, i in sorted(shares, key=lambda s: -(s[0] - math.floor(s[0]))):
            if left <= 0:
                break
            if distribution[i]["workers"] < distribution[i]["threads"]:
                distribution[i]["workers"] += 1
                left -= 1
    total = sum(d["workers"] for d in distribution)
    estimate = (n_evaluations / (max(1, total) * eval_rate)) if n_evaluations else None
    return CapacityPlan(
        total_capacity=round(total_capacity, 3), total_workers=total,
        worker_distribution=distribution,
        utilization_percent=round(100.0 * total / total_capacity, 1) if total_capacity else 0.0,
        estimated_completion_time_s=estimate,
    )
