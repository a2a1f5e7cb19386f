"""Worker: the host figures each worker adds to its heartbeats (:class:`WorkerHealth`).

Dask's heartbeats already carry the worker process's CPU, memory, event-loop
interval and task counts (``WorkerState.metrics`` on the scheduler). The worker
extension adds what only the host knows: its load average, logical CPU count and the
OS threads of the worker process, under the metric :data:`WORKER_METRIC`.
"""

from __future__ import annotations

import os
import socket
from typing import Any

import distributed
import psutil

from foundation_dask.core.health._results import WORKER_METRIC
from foundation_dask.core.plugin import WorkerExtension


def load_average() -> tuple[float, float, float]:
    """The 1, 5 and 15 minute load averages of the host."""
    try:
        return os.getloadavg()
    except (AttributeError, OSError):  # pragma: no cover - not on Linux/macOS
        one, five, fifteen = psutil.getloadavg()
        return float(one), float(five), float(fifteen)


class WorkerHealth(WorkerExtension):
    """Adds the host figures to the worker's heartbeat metrics.

    The metric :data:`WORKER_METRIC` is a ``dict`` with ``load_avg`` (1, 5 and 15
    minute load averages of the host), ``cpu_count`` (logical CPUs of the host),
    ``threads`` (OS threads of the worker process) and ``hostname``.
    """

    name = "health"

    async def setup(self) -> None:
        self._process = psutil.Process()
        self._hostname = socket.gethostname()
        self.worker.metrics[WORKER_METRIC] = self.host_metrics

    async def teardown(self) -> None:
        self.worker.metrics.pop(WORKER_METRIC, None)

    def host_metrics(self, worker: distributed.Worker) -> dict[str, Any]:
        """The host figures sent with each heartbeat (called on the worker's event loop)."""
        try:
            threads: int | None = self._process.num_threads()
        except psutil.Error:  # pragma: no cover - process vanishing
            threads = None
        return {
            "load_avg": [float(x) for x in load_average()],
            "cpu_count": psutil.cpu_count() or os.cpu_count() or 1,
            "threads": threads,
            "hostname": self._hostname,
        }
