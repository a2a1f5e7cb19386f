"""Client: the former import path of :mod:`foundation_dask.dspex.orchestration`.

``foundation_dask.dspex.distributed`` named the same as Dask's ``distributed`` package;
this module only re-exports :mod:`~foundation_dask.dspex.orchestration`, so existing
imports and checkpoints of coordinators pickled under this path keep working.
"""

from foundation_dask.dspex.orchestration import *  # noqa: F403
from foundation_dask.dspex.orchestration import __all__ as __all__
