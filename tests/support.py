"""Tools of the test modules: polling with a deadline, subprocess clusters whose
processes are killed for real, the scheduler's worker names.

Imported by test modules (``from tests.support import ...``); the fixtures built on
them are in ``conftest.py``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from distributed.utils_test import async_poll_for, poll_for


def wait_for(predicate: Callable[[], Any], timeout: float = 30.0, period: float = 0.02) -> Any:
    """Dask's :func:`~distributed.utils_test.poll_for` that returns what ``predicate``
    returned when it became truthy (a handle, a row...), and says its last value when it
    fails after ``timeout`` seconds."""
    last: list[Any] = [None]

    def check() -> bool:
        last[0] = predicate()
        return bool(last[0])

    poll_for(check, timeout, period=period, fail_func=lambda: pytest.fail(
        f"condition not met within {timeout}s (last value: {last[0]!r})"))
    return last[0]


async def async_wait_for(predicate: Callable[[], Any], timeout: float = 10.0,
                         period: float = 0.01) -> Any:
    """:func:`wait_for` inside a coroutine (Dask's ``async_poll_for``)."""
    last: list[Any] = [None]

    def check() -> bool:
        last[0] = predicate()
        return bool(last[0])

    await async_poll_for(check, timeout, period=period, fail_func=lambda: pytest.fail(
        f"condition not met within {timeout}s (last value: {last[0]!r})"))
    return last[0]


class SubprocessCluster:
    """A scheduler and workers, each its own OS process, on loopback."""

    def __init__(self, tmp_path: Path, *, scheduler_args: list[str] | None = None,
                 worker_args: list[str] | None = None, protocol: str = "tcp"):
        self.tmp_path = tmp_path
        self.scheduler_file = tmp_path / "scheduler.json"
        self.scheduler_args = scheduler_args or []
        self.worker_args = worker_args or []
        self.protocol = protocol
        self.scheduler: subprocess.Popen | None = None
        self.workers: dict[str, subprocess.Popen] = {}
        self._n = 0
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1"}

    @property
    def address(self) -> str:
        return json.loads(self.scheduler_file.read_text())["address"]

    def _log(self, name: str):
        return open(self.tmp_path / f"{name}.log", "ab")

    def start(self, n_workers: int = 2) -> SubprocessCluster:
        self.scheduler = subprocess.Popen(
            [sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
             "--port", "0", "--dashboard-address", ":0", "--protocol", self.protocol,
             "--scheduler-file", str(self.scheduler_file), *self.scheduler_args],
            stdout=self._log("scheduler"), stderr=subprocess.STDOUT, env=self.env,
        )
        wait_for(lambda: self.scheduler_file.exists() and self.scheduler_file.stat().st_size,
                 timeout=60)
        for _ in range(n_workers):
            self.add_worker()
        return self

    def add_worker(self, *extra: str) -> str:
        """Start one more worker process; returns its name (``w0``, ``w1``...)."""
        name = f"w{self._n}"
        self._n += 1
        self.workers[name] = subprocess.Popen(
            [sys.executable, "-m", "distributed.cli.dask_worker", self.address, "--no-nanny",
             "--nthreads", "1", "--name", name, "--host", "127.0.0.1",
             "--no-dashboard", "--memory-limit", "2GiB", *self.worker_args, *extra],
            stdout=self._log(name), stderr=subprocess.STDOUT, env=self.env,
        )
        return name

    def kill(self, name: str) -> None:
        """SIGKILL the worker process ``name``."""
        proc = self.workers.pop(name)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)

    def close(self) -> None:
        # workers first, then the scheduler: a worker interrupted while its scheduler
        # goes away can hang in reconnection attempts
        for proc in self.workers.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        for proc in [*self.workers.values(), self.scheduler]:
            if proc is None:
                continue
            if proc is self.scheduler and proc.poll() is None:
                proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.workers.clear()


def worker_names(dask_client) -> dict[str, str]:
    """``{worker name: address}`` of the workers the scheduler knows."""
    return {w["name"]: addr for addr, w in dask_client.scheduler_info()["workers"].items()}
