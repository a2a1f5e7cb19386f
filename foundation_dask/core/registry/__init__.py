"""Any process: process registry and service mesh, kept in the scheduler's memory.

:class:`ProcessRegistry` maps keys to values (a name service in the style of
``Horde.Registry``); :class:`ServiceMesh` keeps named services with a handle,
capabilities and metadata and finds them by those. Both live in the scheduler
extension :class:`RegistryExtension`; an entry belongs to the client or worker that
registered it (the scheduler decides who that is) and disappears with it, unless it
was registered with ``owner="cluster"``. Replacing or removing another owner's entry
needs ``force=True``. Keys: see :func:`canonical_key`.

>>> import foundation_dask as fd
>>> fd.ProcessRegistry.register(("cache", 1), {"size": 10}, metadata={"kind": "cache"})
... # doctest: +SKIP
>>> fd.ProcessRegistry.lookup(("cache", 1)).value                     # doctest: +SKIP
{'size': 10}
>>> fd.ServiceMesh.register_service("embedder", handle, capabilities=["embed"])
... # doctest: +SKIP
>>> fd.ServiceMesh.discover_services(capabilities=["embed"])          # doctest: +SKIP
[Service(name='embedder', ...)]
"""

from foundation_dask.core.registry._core import (
    CLUSTER_OWNER,
    RegistryEntry,
    Service,
    UnreadableValue,
    canonical_key,
    check_capabilities,
    check_metadata,
    raise_if_error,
    services_to_frame,
)
from foundation_dask.core.registry._facade import (
    ProcessRegistry,
    ServiceMesh,
    caller_owner,
    calling_worker,
    owned_request,
)
from foundation_dask.core.registry._scheduler_plugin import EVENT_TOPIC, RegistryExtension
from foundation_dask.core.registry._worker_plugin import RegistryWorker
from foundation_dask.errors import AlreadyRegisteredError, NotOwnerError, NotRegisteredError

__all__ = [
    "CLUSTER_OWNER",
    "EVENT_TOPIC",
    "AlreadyRegisteredError",
    "NotOwnerError",
    "NotRegisteredError",
    "ProcessRegistry",
    "RegistryEntry",
    "RegistryExtension",
    "RegistryWorker",
    "Service",
    "ServiceMesh",
    "UnreadableValue",
    "caller_owner",
    "calling_worker",
    "canonical_key",
    "check_capabilities",
    "check_metadata",
    "owned_request",
    "raise_if_error",
    "services_to_frame",
]
