"""Scheduler: the optimizations as the scheduler knows them, without a client.

The supervisor of the scheduler holds the last checkpoint of every coordinator
(the supervised singletons named ``("optimization_coordinator", optimization_id)``):
plain data, read by :func:`scheduler_optimizations` for the dashboard's optimization
page.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from foundation_dask.core.plugin import extension
from foundation_dask.dspex.orchestration._names import COORDINATOR, summary_row

if TYPE_CHECKING:
    from distributed import Scheduler

__all__ = ["scheduler_optimizations"]


def scheduler_optimizations(scheduler: Scheduler) -> list[dict[str, Any]]:
    """Coordinator states read from their checkpoints on the scheduler (no client).

    Parameters
    ----------
    scheduler
        The scheduler, with the Foundation plugin installed.

    Returns
    -------
    list of dict
        One :func:`summary_row` per checkpointed coordinator, with its ``history`` and
        ``evaluations``; empty when the Foundation plugin is not installed.
    """
    supervisor = extension(scheduler, "processes")
    if supervisor is None:
        return []
    out = []
    for _, rec in supervisor.records_named(COORDINATOR):
        state = supervisor.checkpoint_state(rec)  # plain data: nothing of it runs here
        if not isinstance(state, dict):
            continue
        out.append({**summary_row(state), "history": state.get("history", []),
                    "evaluations": state.get("evaluations", {})})
    return out
