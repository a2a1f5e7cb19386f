"""Tools of the test modules: polling with a deadline, subprocess clusters whose
processes are killed for real, the scheduler's worker names.

Imported by test modules (``from tests.support import ...``); the fixtures built on
them are in ``conftest.py``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from distributed.utils_test import async_poll_for, poll_for


def wait_for(predicate: Callable[[], Any], timeout: float = 30.0, period: float = 0.02,
             what: str = "condition") -> Any:
    """Dask's :func:`~distributed.utils_test.poll_for` that returns what ``predicate``
    returned when it became truthy (a handle, a row...), and says ``what`` and its last
    value when it fails after ``timeout`` seconds."""
    last: list[Any] = [None]

    def check() -> bool:
        last[0] = predicate()
        return bool(last[0])

    poll_for(check, timeout, period=period, fail_func=lambda: pytest.fail(
        f"{what} not met within {timeout}s (last value: {last[0]!r})"))
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


# ---------------------------------------------------------------------------- browsers

#: Debian's Chromium (``apt-get install chromium``), driven by Playwright: never a
#: browser downloaded by a tool.
CHROMIUM = os.environ.get("FD_CHROMIUM", "/usr/bin/chromium")
#: Headless, and no connection of its own to the outside (this machine has none).
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


def require_browser(*modules: str) -> None:
    """Skip the calling test when Chromium, Playwright or one of ``modules`` (``voila``,
    ``jupyterlab``) is missing, with the reason and what installs it; under ``CI=true``
    fail instead (the CI machine has them all)."""
    reason = None
    if not os.access(CHROMIUM, os.X_OK):
        reason = f"no Chromium at {CHROMIUM} (apt-get install chromium, or set FD_CHROMIUM)"
    else:
        for module in ("playwright", *modules):
            if importlib.util.find_spec(module) is None:
                reason = f"{module} is not installed (pip install -e '.[test]')"
                break
    if reason is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"the browser test cannot run under CI: {reason}")
    pytest.skip(reason)


def local_chromium(playwright: Any, profile: str, **options: Any) -> tuple[Any, list[str]]:
    """A persistent Chromium context (Playwright's ``launch_persistent_context`` with
    ``options``) that may load from 127.0.0.1 only, and the list where every other
    request it made is written: such a request fails at once (BokehJS must come inline;
    the Voila template's icon CSS is refused instead of hanging)."""
    external: list[str] = []

    def local_only(route: Any) -> None:
        if urlsplit(route.request.url).hostname == "127.0.0.1":
            route.continue_()
        else:
            external.append(route.request.url)
            route.abort()

    context = playwright.chromium.launch_persistent_context(
        profile, executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS, **options)
    context.route("**/*", local_only)
    return context, external


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
