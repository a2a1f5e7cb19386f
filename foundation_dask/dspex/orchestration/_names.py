"""Any process: the supervised names of optimizations and the summary of their state.

An optimization's coordinator is the supervised singleton named
``("optimization_coordinator", optimization_id)``; :func:`summary_row` reads one row of
:func:`~foundation_dask.dspex.orchestration.list_optimizations` from a coordinator's
state, on the client as well as from its checkpoint on the scheduler.
"""

from __future__ import annotations

from typing import Any

__all__ = ["CAPABILITIES", "COORDINATOR", "OPTIMIZATION_COLUMNS", "coordinator_name",
           "summary_row"]

#: First element of the supervised name of every optimization's coordinator.
COORDINATOR = "optimization_coordinator"

#: Capabilities of the evaluation workers an optimization registers in the service mesh.
CAPABILITIES = ["dspy_evaluation", "ai_optimization"]

#: Columns of :func:`~foundation_dask.dspex.orchestration.list_optimizations`.
OPTIMIZATION_COLUMNS = [
    "optimization_id", "status", "completion_percent", "current_best_score",
    "evaluations_completed", "total_evaluations", "rate", "estimated_completion_time",
    "workers", "started_at", "finished_at",
]


def coordinator_name(optimization_id: str) -> tuple[str, str]:
    """The supervised name of the coordinator of ``optimization_id``."""
    return (COORDINATOR, optimization_id)


def summary_row(state: dict[str, Any]) -> dict[str, Any]:
    """One row of :data:`OPTIMIZATION_COLUMNS` from a coordinator's state (or its info)."""
    row = {k: state.get(k) for k in OPTIMIZATION_COLUMNS}
    row["workers"] = (state.get("plan") or {}).get("total_workers")
    return row
