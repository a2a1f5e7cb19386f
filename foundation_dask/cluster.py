"""Client: ``foundation_dask.cluster``, the import path of :mod:`foundation_dask.core.cluster`.

``connect()``, ``close()``, ``install_plugins()`` and ``get_cluster()`` live in
:mod:`foundation_dask.core.cluster`; this module gives them under the path they have
always had (``from foundation_dask.cluster import connect``).
"""

from __future__ import annotations

from foundation_dask.core.cluster import (
    close,
    connect,
    get_cluster,
    install_plugins,
)
from foundation_dask.errors import FoundationNotInstalledError

__all__ = ["FoundationNotInstalledError", "close", "connect", "get_cluster", "install_plugins"]
