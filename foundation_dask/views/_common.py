"""Small helpers shared by the view modules: row order of column data, scheduler extensions.

Private; the public building blocks of views are in :mod:`foundation_dask.views.base`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import distributed


def sort_rows(cols: dict[str, Any], keys: Sequence[Any]) -> dict[str, Any]:
    """``cols`` with their rows sorted by ``keys`` (one sort key per row, stable).

    Parameters
    ----------
    cols
        Columns of equal length: lists or NumPy arrays.
    keys
        The sort key of each row.

    Returns
    -------
    dict
        ``cols`` itself when the rows are in order already, else new columns of the
        same types (lists stay lists, arrays stay arrays).
    """
    order = sorted(range(len(keys)), key=keys.__getitem__)
    if order == list(range(len(order))):
        return cols
    return {k: ([v[i] for i in order] if isinstance(v, list) else v[order])
            for k, v in cols.items()}


def scheduler_extension(scheduler: distributed.Scheduler, name: str) -> Any:
    """The extension ``name`` (``"health"``, ``"processes"``, ...) of the Foundation
    scheduler plugin, or ``None`` when the plugin (or that extension) is not installed."""
    from foundation_dask.core.plugin import PLUGIN_NAME

    plugin = scheduler.extensions.get(PLUGIN_NAME)
    return getattr(plugin, "extensions", {}).get(name)
