"""Any process: supervised named singletons and replicated per-worker processes on Dask Actors.

``ProcessManager.start_singleton(Cls, *args, name=..., **kwargs)`` keeps exactly one
live instance of ``Cls`` per name in the cluster. The instance is a Dask Actor: it
lives in a worker's actor table, its synchronous methods run in the worker's actor
thread and its ``async`` methods on the worker's event loop. What Dask's actors lack
is added by a supervisor kept in a scheduler plugin:

* **names**: the supervisor maps each name to its worker, actor key and incarnation;
  :meth:`ProcessManager.lookup` finds it from anywhere.
* **checkpoints**: when the class defines ``checkpoint() -> state`` and
  ``restore(state)`` (``restore`` is required to use the state: nothing is guessed
  from ``__init__`` arguments or ``__dict__``), the state is saved to the supervisor
  after every method call (``foundation.processes.checkpoint: call``, the reply waits
  for it) or at most every ``checkpoint-interval``.
* **restart**: when the worker holding a singleton dies, the supervisor starts a new
  incarnation on another worker, restores the last checkpoint, and tells every client
  that the singleton moved; handles re-resolve and retry transparently.
* **fencing**: each call carries the incarnation it expects. An instance that is
  not the current incarnation refuses calls and its checkpoints are rejected, so two
  live instances never answer to one name.
* **hand-off**: when a worker starts a graceful retirement (``retire_workers``,
  adaptive scale-down), its singletons are frozen, their final state taken, and they
  are restarted elsewhere before the worker goes. The instances are not Dask tasks,
  so they never block retirement.

Calls that fail because the worker died are retried on the new incarnation with the
same call id; the instance remembers the results of its recent calls (inside its
checkpoint), so a call whose effect was checkpointed is not applied twice.

``ProcessManager.stop(name)`` ends the instance and forgets the name: the supervisor
and the clients keep no entry for it (a cluster that starts and stops many names does
not grow), and a call in flight to it fails at once with :class:`ProcessNotFoundError`.
A handle follows its name: started again, the name is reached by its old handles too,
at an incarnation above every earlier one of that name, so nothing meant for the
stopped instance is applied by the new one.

Modules, by the process they run in: ``_names`` and ``_wire`` (any), ``_scheduler_plugin``,
``_records`` and ``_checkpoints`` (scheduler), ``_worker_plugin`` (worker), ``_handle``
(clients, and tasks on workers), ``_facade`` (clients).

Every process has an owner: the client that started it (the worker, from a task), or
``"cluster"`` with ``owner="cluster"``. ``ProcessManager.stop`` by another live client
or worker raises :class:`NotOwnerError` unless ``force=True``.
"""

from foundation_dask.core.processes._facade import ProcessManager
from foundation_dask.core.processes._handle import CallFuture, SingletonHandle
from foundation_dask.core.processes._names import MOVED_OP, STOPPED_OP, name_from_key, name_key
from foundation_dask.core.processes._scheduler_plugin import Supervisor, scheduler_processes
from foundation_dask.core.processes._worker_plugin import APPLIED_CALLS_KEPT, WorkerProcesses
from foundation_dask.errors import (
    NotOwnerError,
    ProcessError,
    ProcessLostError,
    ProcessNotFoundError,
    ProcessStartError,
)

__all__ = [
    "APPLIED_CALLS_KEPT",
    "MOVED_OP",
    "CallFuture",
    "NotOwnerError",
    "ProcessError",
    "ProcessLostError",
    "ProcessManager",
    "ProcessNotFoundError",
    "ProcessStartError",
    "STOPPED_OP",
    "SingletonHandle",
    "Supervisor",
    "WorkerProcesses",
    "name_from_key",
    "name_key",
    "scheduler_processes",
]
