"""Any process: secrets (API keys, auth headers) that travel by reference, never to files.

See :class:`Secret`; the values live in the memory of the processes that use them and
of the scheduler (:class:`SecretStore`).
"""

from foundation_dask.core.secrets._core import Secret, reveal
from foundation_dask.core.secrets._scheduler_plugin import SecretStore

__all__ = ["Secret", "SecretStore", "reveal"]
