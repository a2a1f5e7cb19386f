"""Tools of the test modules: polling with a deadline, subprocess clusters whose
processes are killed for real, the scheduler's worker names, a scripted
OpenAI-compatible LM server, the browser.

Imported by test modules (``from tests.support import ...``); the fixtures built on
them are in ``conftest.py``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
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


def _loopback(role: str, index: int) -> tuple[list[str], str]:
    return [], "127.0.0.1"


class SubprocessCluster:
    """A scheduler and workers, each its own OS process, on loopback.

    ``launcher(role, index)`` (``role`` ``"scheduler"`` or ``"worker"``) gives each
    process a command prefix and the address it listens on: by default none and
    127.0.0.1; ``tests.network.Hosts.launcher`` puts each on a host of its own.
    """

    def __init__(self, tmp_path: Path, *, scheduler_args: list[str] | None = None,
                 worker_args: list[str] | None = None, protocol: str = "tcp",
                 launcher: Callable[[str, int], tuple[list[str], str]] = _loopback):
        self.launcher = launcher
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
        prefix, host = self.launcher("scheduler", 0)
        self.scheduler = subprocess.Popen(
            [*prefix, sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", host,
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
        prefix, host = self.launcher("worker", self._n)
        self._n += 1
        self.workers[name] = subprocess.Popen(
            [*prefix, sys.executable, "-m", "distributed.cli.dask_worker", self.address,
             "--no-nanny", "--nthreads", "1", "--name", name, "--host", host,
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


class LedgerCaller:
    """Appends unique items to a ``tests._helpers.Ledger`` singleton from a thread and
    notes each answer: ``(time, instance id, item)`` in ``acked``."""

    def __init__(self, ledger) -> None:
        self.ledger = ledger
        self.acked: list[tuple[float, str, int]] = []  # (time, instance, item)
        self.errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        i = 0
        while not self._stop.is_set():
            try:
                instance, _ = self.ledger.append(i).result(timeout=120)
                self.acked.append((time.time(), instance, i))
            except Exception:
                self.errors += 1
            i += 1
            time.sleep(0.01)

    def instance_now(self) -> str | None:
        return self.acked[-1][1] if self.acked else None

    def first_answer_after(self, t: float, not_instance: str) -> float:
        return wait_for(lambda: next((a for a, inst, _ in self.acked
                                      if a > t and inst != not_instance), None), timeout=120)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=150)


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


#: Every element, through open shadow roots (BokehJS renders its views in them).
_DEEP_JS = """
const deep = (root, out = []) => {
  for (const el of root.querySelectorAll("*")) {
    out.push(el);
    if (el.shadowRoot) deep(el.shadowRoot, out);
  }
  return out;
};
const shown = (el) => {
  const r = el.getBoundingClientRect();
  if (r.width === 0 || r.height === 0) return false;
  const style = getComputedStyle(el);
  return style.visibility !== "hidden" && style.display !== "none";
};
"""

#: What a user sees of a page of Bokeh views: missing values shown as text (``bad``), table
#: cells whose text is cut (``cut``), plots with nothing drawn (``empty``; ``notes``: the
#: note each shows instead), how far the page is wider than the window (``overflow``).
LOOKS_JS = "() => {" + _DEEP_JS + """
  const elements = deep(document);
  const bad = [];
  for (const el of elements) {
    if (!shown(el)) continue;
    for (const node of el.childNodes) {
      if (node.nodeType !== Node.TEXT_NODE) continue;
      const text = node.textContent;
      if (/(^|[^A-Za-z])(nan|NaN|undefined|None)([^A-Za-z]|$)/.test(text)) bad.push(text.trim());
    }
  }
  const cut = [];
  let cells = 0;
  for (const el of elements) {
    if (!el.classList || !el.classList.contains("slick-cell") || !shown(el)) continue;
    cells += 1;
    if (el.scrollWidth > el.clientWidth + 1) {
      cut.push(`${el.textContent.trim()} (${el.scrollWidth} > ${el.clientWidth} px)`);
    }
  }
  const plots = [];
  const empty = [];
  const notes = [];
  const docs = (typeof Bokeh === "undefined" || !Bokeh.documents) ? [] : Bokeh.documents;
  for (const doc of docs) {
    for (const model of doc.all_models) {
      if (!("renderers" in model && "toolbar" in model && "x_range" in model)) continue;
      const title = model.title != null && typeof model.title === "object"
        ? model.title.text : String(model.title ?? "");
      plots.push(title);
      // a renderer draws something when its source has rows whose coordinates are all
      // there (a line: two such rows)
      const drawn = model.renderers.filter((r) => r.data_source != null && r.glyph != null
                                           && r.visible).some((r) => {
        const glyph = r.glyph;
        const data = r.data_source.data instanceof Map ? r.data_source.data
          : new Map(Object.entries(r.data_source.data));
        const fields = ["x", "y", "left", "right", "top", "bottom", "x0", "y0", "x1", "y1"]
          .filter((k) => k in glyph && glyph[k] != null && typeof glyph[k] === "object"
                  && "field" in glyph[k]).map((k) => data.get(glyph[k].field) ?? []);
        const n = r.data_source.get_length() ?? 0;
        let complete = 0;
        for (let i = 0; i < n; i++) {
          if (fields.every((col) => col[i] != null
                           && !(typeof col[i] === "number" && !Number.isFinite(col[i])))) {
            complete += 1;
          }
        }
        return complete >= (glyph.type === "Line" ? 2 : 1);
      });
      if (!drawn) {
        empty.push(title || model.name || model.id);
        const shownNotes = [...model.center, ...model.below, ...model.above]
          .filter((a) => a.type === "Label" && a.visible && a.text).map((a) => a.text);
        notes.push(shownNotes.join(" "));
      }
    }
  }
  const overflow = document.documentElement.scrollWidth - document.documentElement.clientWidth;
  return {bad, cut, cells, plots, empty, notes, overflow, documents: docs.length};
}"""


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


class _Handler(BaseHTTPRequestHandler):
    server: ScriptedLMServer

    def log_message(self, *args):
        pass

    def _send(self, status: int, payload: dict, headers: dict | None = None) -> None:
        data = json.dumps(payload).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (timeout test)

    def do_POST(self):
        srv = self.server
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
        with srv.lock:
            srv.requests.append({"path": self.path, "body": body, "time": time.monotonic(),
                                 "headers": dict(self.headers)})
            n = len(srv.requests)
            action = srv.script.pop(0) if srv.script else ("ok",)
        if action[0] == "status":
            _, status, headers, payload = action
            self._send(status, payload, headers)
            return
        if action[0] == "slow":
            srv.release.wait(action[1])
        text = srv.reply(body, n) if srv.reply else f"reply-{n}"
        usage = {"prompt_tokens": 11, "completion_tokens": 3, "total_tokens": 14,
                 "prompt_tokens_details": {"cached_tokens": 8}}
        if self.path.endswith("/chat/completions"):
            choice = {"index": 0, "message": {"role": "assistant", "content": text},
                      "finish_reason": "stop"}
        elif self.path.endswith("/completions"):
            choice = {"index": 0, "text": text, "finish_reason": "stop"}
        else:
            self._send(404, {"error": {"message": f"no route {self.path}"}})
            return
        self._send(200, {"id": f"r{n}", "choices": [choice], "usage": usage})


class ScriptedLMServer(ThreadingHTTPServer):
    """An OpenAI-compatible server on 127.0.0.1 answering from a script.

    Every request is recorded in ``requests`` (path, JSON body, headers, time). Each
    takes the next entry of ``script``: ``("ok",)`` (the default), ``("status", code,
    headers, payload)``, or ``("slow", seconds)`` (waits for ``release`` or the
    seconds first); the text answered is ``reply(body, n)`` when set, else
    ``reply-<n>``.
    """

    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.lock = threading.Lock()
        self.requests: list[dict] = []
        self.script: list[tuple] = []
        self.release = threading.Event()
        self.reply = None

    @property
    def api_base(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"


    @classmethod
    @contextlib.contextmanager
    def running(cls) -> Iterator[ScriptedLMServer]:
        """The server, serving from a thread until the block ends."""
        srv = cls()
        thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05},
                                  daemon=True)
        thread.start()
        try:
            yield srv
        finally:
            srv.release.set()
            srv.shutdown()
            srv.server_close()
            thread.join(timeout=10)


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
