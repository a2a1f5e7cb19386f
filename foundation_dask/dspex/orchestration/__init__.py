"""Client, worker and scheduler: distributed and adaptive optimization on Foundation.

The Elixir ``DSPEx.DistributedOptimizer`` and ``DSPEx.AdaptiveOptimizer`` on the
cluster's supervised processes, service mesh, channels and health. Modules, by the
process they run in: ``_plan`` (any process: capacity plans), ``_names`` (any process:
the coordinators' names and state summary), ``_coordinator`` (worker: the supervised
:class:`OptimizationCoordinator`), ``_optimizer`` (client: :class:`DistributedOptimizer`,
:class:`OptimizationResult`), ``_scaling`` and ``_adaptive`` (client:
:func:`scale_cluster`, :class:`AdaptiveOptimizer`), ``_listing`` (client:
:func:`list_optimizations`, :func:`optimization_history`) and ``_scheduler``
(scheduler: :func:`scheduler_optimizations`, for the dashboard).
"""

from foundation_dask.dspex.orchestration._adaptive import AdaptiveOptimizer
from foundation_dask.dspex.orchestration._coordinator import OptimizationCoordinator
from foundation_dask.dspex.orchestration._listing import list_optimizations, optimization_history
from foundation_dask.dspex.orchestration._names import (
    CAPABILITIES,
    OPTIMIZATION_COLUMNS,
    coordinator_name,
)
from foundation_dask.dspex.orchestration._optimizer import (
    DistributedOptimizer,
    OptimizationResult,
)
from foundation_dask.dspex.orchestration._plan import (
    CapacityPlan,
    calculate_optimal_distribution,
)
from foundation_dask.dspex.orchestration._scaling import scale_cluster
from foundation_dask.dspex.orchestration._scheduler import scheduler_optimizations

__all__ = [
    "CAPABILITIES",
    "OPTIMIZATION_COLUMNS",
    "AdaptiveOptimizer",
    "CapacityPlan",
    "DistributedOptimizer",
    "OptimizationCoordinator",
    "OptimizationResult",
    "calculate_optimal_distribution",
    "coordinator_name",
    "list_optimizations",
    "optimization_history",
    "scale_cluster",
    "scheduler_optimizations",
]
