"""Client: the cluster's optimizations, read from their coordinators.

:func:`list_optimizations` is one row per coordinator (running and finished);
:func:`optimization_history` is the progress snapshots of one optimization.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from foundation_dask.core._client import current_client
from foundation_dask.core.processes import ProcessManager, SingletonHandle
from foundation_dask.dspex.orchestration._names import (
    COORDINATOR,
    OPTIMIZATION_COLUMNS,
    coordinator_name,
    summary_row,
)
from foundation_dask.errors import ProcessNotFoundError

if TYPE_CHECKING:
    import distributed
    import pandas as pd

__all__ = ["list_optimizations", "optimization_history"]


def list_optimizations(include_finished: bool = True, *,
                       client: distributed.Client | None = None) -> pd.DataFrame:
    """The cluster's optimizations (one row per coordinator), newest first.

    Parameters
    ----------
    include_finished
        Also list the optimizations that completed, stopped or failed.
    client
        The Dask client to ask through; by default the current one (the default
        client, else the one :func:`foundation_dask.connect` opens).

    Returns
    -------
    pandas.DataFrame
        The columns of :data:`OPTIMIZATION_COLUMNS`.
    """
    import pandas as pd

    client = client or current_client()
    rows = []
    for _, handle in ProcessManager.find(COORDINATOR, client=client):
        try:
            info = handle.get_optimization_info().result(timeout=10)
        except Exception:  # being restarted or stopped meanwhile
            continue
        if include_finished or info["status"] in ("running", "stopping"):
            rows.append(summary_row(info))
    out = pd.DataFrame(rows, columns=OPTIMIZATION_COLUMNS)
    return out.sort_values("started_at", ascending=False).reset_index(drop=True)


def optimization_history(optimization_id: str, *,
                         client: distributed.Client | None = None) -> pd.DataFrame:
    """Progress snapshots of one optimization (evaluations, scores, rate over time).

    Parameters
    ----------
    optimization_id
        The optimization (``result.optimization_id``).
    client
        The Dask client to ask through; by default the current one.

    Raises
    ------
    ProcessNotFoundError
        When no coordinator holds ``optimization_id`` (a ``KeyError``).
    """
    import pandas as pd

    client = client or current_client()
    name = coordinator_name(optimization_id)
    handle = ProcessManager.lookup(name, client=client)
    if not isinstance(handle, SingletonHandle):  # none (coordinators are singletons)
        raise ProcessNotFoundError(
            f"No optimization {optimization_id!r}; see dspex.list_optimizations()", name=name)
    return pd.DataFrame(handle.get_history().result(timeout=10))
