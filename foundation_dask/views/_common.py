"""Client and scheduler: small functions shared by the view modules (row order of column
data).

Private; the public building blocks of views are in :mod:`foundation_dask.views.base`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


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
