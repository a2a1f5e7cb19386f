"""Shared fixtures: real Dask clusters.

In-process work uses ``distributed.utils_test`` (``gen_cluster``, ``client``);
whatever must survive a real failure runs on :class:`SubprocessCluster`, a
``dask scheduler`` and ``dask worker`` processes started here and killed with SIGKILL.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dask.config
import pytest
from distributed import utils_test
from distributed.utils_test import (  # noqa: F401  (pytest fixtures)
    cleanup,
    client,
    cluster_fixture,
    loop,
    loop_in_thread,
)

import foundation_dask as fd
from foundation_dask import config as fd_config

# distributed.utils_test restores the dask config it saw at its import after each
# gen_cluster test; make that snapshot include the foundation defaults.
dask.config.update(utils_test.original_config, fd_config.defaults, priority="old")


def wait_for(predicate: Callable[[], Any], timeout: float = 30.0, interval: float = 0.02) -> Any:
    """Poll ``predicate`` until it returns a truthy value; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s (last value: {last!r})")


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


@pytest.fixture
def subprocess_cluster(tmp_path: Path) -> Iterator[SubprocessCluster]:
    """Factory-style fixture: ``subprocess_cluster.start(n_workers)`` then connect to it."""
    cluster = SubprocessCluster(tmp_path)
    try:
        yield cluster
    finally:
        fd.close()
        cluster.close()


@pytest.fixture
def fd_client(subprocess_cluster: SubprocessCluster):
    """A client from ``fd.connect(address)`` on a 2-worker subprocess cluster."""
    subprocess_cluster.start(2)
    c = fd.connect(subprocess_cluster.address)
    c.wait_for_workers(2, timeout=60)
    yield c
