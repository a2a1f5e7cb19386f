"""Scheduler and worker: the lease that fences a cut-off instance.

An instance answers calls only while its worker holds a lease from the supervisor.
Every worker renews it every quarter of ``foundation.processes.lease`` with one round
trip (:class:`WorkerLease`, on the worker); the lease then runs until the time the
renewal was *sent* plus the lease length. The supervisor notes when each renewal
*arrived* (:class:`LeaseTable`, on the scheduler) and restarts a singleton elsewhere
only when its worker has not renewed for the lease length plus
``foundation.processes.lease-margin``. A renewal arrives after it was sent, so on a
network cut the old instance stops answering before the new one starts: never two
instances answering for one name, whichever side a client is on. Calls that reach an
instance whose lease ran out get the reply ``("fenced", incarnation)``, and the
renewal of a worker coming back names the instances that were replaced meanwhile,
which it then destroys.

A killed worker is detected by Dask at once (its connections close) and its
singletons restart without waiting for the lease.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from foundation_dask import config

if TYPE_CHECKING:
    import distributed

logger = logging.getLogger(__name__)


def lease_seconds() -> tuple[float, float]:
    """``(lease, margin)``: ``foundation.processes.lease`` and ``lease-margin`` in seconds.

    Raises
    ------
    ValueError
        The lease is not positive, or the margin is negative.
    """
    lease = config.get_seconds("processes.lease")
    margin = config.get_seconds("processes.lease-margin")
    if lease <= 0 or margin < 0:
        raise ValueError(f"foundation.processes.lease must be positive and lease-margin not "
                         f"negative, got {lease} s and {margin} s")
    return lease, margin


class WorkerLease:
    """Worker side: until when this worker's instances may answer, renewed in the background.

    Parameters
    ----------
    worker
        The worker.
    live
        ``() -> {actor key: incarnation}`` of the instances hosted here.
    fence
        Called with the actor keys the supervisor replaced meanwhile (to destroy them).
    """

    def __init__(self, worker: distributed.Worker, live: Callable[[], dict[str, int]],
                 fence: Callable[[Iterable[str]], None]):
        self.worker = worker
        self.lease, _ = lease_seconds()
        self.until = time.monotonic() + self.lease
        self.renewals = 0
        self._live, self._fence = live, fence
        self._task: asyncio.Task[None] | None = None

    def valid(self) -> bool:
        """Whether instances here may answer now."""
        return time.monotonic() < self.until

    def granted(self) -> None:
        """The supervisor just spoke to this worker (it created an instance here)."""
        self.until = max(self.until, time.monotonic() + self.lease)

    def start(self) -> None:
        """Start renewing (on the worker's event loop)."""
        self._task = asyncio.ensure_future(self._run())

    def stop(self) -> None:
        """Stop renewing."""
        if self._task is not None:
            self._task.cancel()

    async def _run(self) -> None:
        period = self.lease / 4
        while True:
            await asyncio.sleep(period)
            sent = time.monotonic()
            try:
                reply = await asyncio.wait_for(
                    self.worker.scheduler.foundation_process_renew(
                        worker=self.worker.address, live=self._live()),
                    timeout=max(period, self.until - sent))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # cut off, or the scheduler is busy: not renewed
                logger.debug("lease renewal of %s failed: %s", self.worker.address, exc)
                continue
            if not isinstance(reply, dict):
                continue
            self.until = max(self.until, sent + self.lease)
            self.renewals += 1
            fenced = reply.get("fenced") or []
            if fenced:
                logger.warning("Destroying %d instance(s) on %s replaced while this worker "
                               "was cut off: %s", len(fenced), self.worker.address, fenced)
                self._fence(fenced)


class LeaseTable:
    """Scheduler side: when each worker last renewed its lease (the settings are read
    once, when the supervisor starts)."""

    def __init__(self) -> None:
        self.renewed: dict[str, float] = {}
        self.lease, self.margin = lease_seconds()

    def renew(self, worker: str) -> None:
        """A renewal from ``worker`` arrived (or the supervisor spoke to it)."""
        self.renewed[worker] = time.monotonic()

    def forget(self, worker: str) -> None:
        """``worker`` left the cluster."""
        self.renewed.pop(worker, None)

    def silent_for(self, worker: str) -> float:
        """Seconds since ``worker`` last renewed (0 if it never had to)."""
        at = self.renewed.get(worker)
        return 0.0 if at is None else time.monotonic() - at

    def expired(self, worker: str) -> bool:
        """Whether the lease of ``worker`` has certainly run out on the worker too."""
        return self.silent_for(worker) > self.lease + self.margin
