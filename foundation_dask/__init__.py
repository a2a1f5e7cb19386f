"""foundation_dask: supervised processes, service mesh, priority channels and cluster
health on Dask, with distributed tracing (:mod:`foundation_dask.scope`) and
distributed LM-program optimization (:mod:`foundation_dask.dspex`).

>>> import foundation_dask as fd
>>> client = fd.connect()                                   # doctest: +SKIP
>>> counter = fd.ProcessManager.start_singleton(Counter, name="counter")  # doctest: +SKIP
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from foundation_dask import config as _config  # noqa: F401  (loads the dask-config defaults)
from foundation_dask import errors as _errors
from foundation_dask._lazy import attach
from foundation_dask.errors import *  # noqa: F403  (the error family, light)

if TYPE_CHECKING:  # what the lazy names below resolve to, for editors and type checkers
    from foundation_dask.core.channels import Channels  # noqa: F401
    from foundation_dask.core.cluster import close, connect, install_plugins  # noqa: F401
    from foundation_dask.core.health import HealthMonitor  # noqa: F401
    from foundation_dask.core.processes import ProcessManager, SingletonHandle  # noqa: F401
    from foundation_dask.core.registry import ProcessRegistry, ServiceMesh  # noqa: F401

__version__ = "0.1.0"

_LAZY = {
    "connect": "foundation_dask.core.cluster",
    "close": "foundation_dask.core.cluster",
    "install_plugins": "foundation_dask.core.cluster",
    "ProcessManager": "foundation_dask.core.processes",
    "SingletonHandle": "foundation_dask.core.processes",
    "Channels": "foundation_dask.core.channels",
    "ProcessRegistry": "foundation_dask.core.registry",
    "ServiceMesh": "foundation_dask.core.registry",
    "HealthMonitor": "foundation_dask.core.health",
}

__all__ = sorted([*_LAZY, *_errors.__all__]) + ["__version__"]


__getattr__, __dir__ = attach(__name__, _LAZY)
