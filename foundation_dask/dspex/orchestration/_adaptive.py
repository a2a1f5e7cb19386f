"""Client: adaptive optimization, the Elixir ``DSPEx.AdaptiveOptimizer``.

``AdaptiveOptimizer.adaptive_optimization`` runs a distributed optimization while a
monitor compares the evaluation rate with a target and scales the Dask cluster up (when
capacity is available) or down (retiring the least efficient workers), logging every
decision.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from foundation_dask.dspex.orchestration._optimizer import (
    DistributedOptimizer,
    OptimizationResult,
)
from foundation_dask.dspex.orchestration._scaling import _AdaptiveMonitor

if TYPE_CHECKING:
    import distributed

    from foundation_dask.core.health import ClusterHealth

__all__ = ["AdaptiveOptimizer"]


class AdaptiveOptimizer:
    """Distributed optimization that scales the cluster to a target evaluation rate.

    A namespace class, as the seed's ``DSPEx.AdaptiveOptimizer`` module: its functions
    are static methods (``dspex.AdaptiveOptimizer.adaptive_optimization(...)``) and it
    has no instances.
    """

    @staticmethod
    def adaptive_optimization(program: Any, trainset: Sequence[Any], metric: Callable, *,
                              target_eval_rate: float = 10.0,
                              scaling_check_interval: float = 30.0, min_workers: int = 1,
                              max_cluster_workers: int | None = None, scale_step: int = 1,
                              available_capacity: Callable[[ClusterHealth], float] | None = None,
                              client: distributed.Client | None = None,
                              **opts: Any) -> OptimizationResult:
        """Like :meth:`DistributedOptimizer.optimize_program_distributed`, plus scaling.

        Every ``scaling_check_interval`` seconds: below ``target_eval_rate`` with
        capacity available, add ``scale_step`` workers; above 1.5x the target, retire
        the least busy worker gracefully. Every decision (with its numbers) is in
        ``result.scaling_log`` and on the ``events`` channel.

        ``available_capacity(health) -> cores`` says how much room there is to grow; by
        default the hosts' cores minus their load average
        (:meth:`~foundation_dask.core.health.ClusterHealth.available_capacity`).
        ``client`` is the Dask client to run on (by default the current one: the
        default client, else the one :func:`foundation_dask.connect` opens); ``opts``
        are the arguments of ``optimize_program_distributed``.
        """
        if target_eval_rate <= 0:
            raise ValueError(f"target_eval_rate must be > 0, not {target_eval_rate}")
        if scaling_check_interval <= 0:
            raise ValueError(f"scaling_check_interval must be > 0, not {scaling_check_interval}")

        def monitor(opt_id: str, coordinator: Any, client: distributed.Client,
                    log: list[dict[str, Any]],
                    worker_rates: Callable[[], dict[str, float]]) -> _AdaptiveMonitor:
            return _AdaptiveMonitor(opt_id, coordinator, client, log, worker_rates,
                                    target_eval_rate, scaling_check_interval, min_workers,
                                    max_cluster_workers, scale_step, available_capacity)

        return DistributedOptimizer.optimize_program_distributed(
            program, trainset, metric, adaptive_workers=True, client=client,
            _monitor=monitor, **opts
        )
