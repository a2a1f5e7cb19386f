"""A simulated remote LM: an OpenAI-compatible HTTP server on 127.0.0.1 with a fixed latency.

Run: ``python benchmarks/remote_lm_server.py [--latency 0.2] [--port 0]`` (prints its
``api_base`` and serves until interrupted), or in-process::

    with RemoteLMServer.running(latency=0.2) as server:
        lm = dspex.LM("openai/remote-sim", api_base=server.api_base, api_key="x")
        ...
        server.requests  # POST requests answered so far

The server (:class:`http.server.ThreadingHTTPServer`, one thread per connection, HTTP/1.1
keep-alive) answers ``POST /v1/chat/completions`` and ``POST /v1/completions`` after
sleeping ``latency`` seconds per request, whatever the number of requests in flight (the
shape of a remote API that is not the bottleneck), and ``GET /v1/models``. It counts the
POST requests (``GET /stats`` returns ``{"requests": n, "chat": ..., "completions":
...}`` for a server in another process).

What it answers is the text ``answer(body)`` returns for the request's JSON body. The
default, :class:`SentimentOracle`, plays a few-shot classifier of the packaged sentiment
task (``foundation_dask.dspex.datasets.sentiment``): it reads the review to classify and
the demos from the prompt, and answers the true label more often the more demos the
prompt holds, deterministically. It writes the answer in the form of the requesting
adapter: ``[[ ## sentiment ## ]]`` sections when the prompt has such headers (DSPy's
``ChatAdapter`` and DSPEx's ``ChatAdapter``), else the bare label (DSPEx's
``CompletionAdapter``, which stops at the end of the line).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import re
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["RemoteLMServer", "SentimentOracle", "ServerProcess", "prompt_text"]

MODEL = "remote-sim"


def prompt_text(body: Mapping[str, Any]) -> str:
    """The whole text of a request: its ``prompt``, or its messages' contents joined.

    Message contents given as a list of parts (``{"type": "text", "text": ...}``) are
    joined too; other parts are left out.
    """
    if "prompt" in body:
        prompt = body["prompt"]
        return "\n".join(prompt) if isinstance(prompt, list) else str(prompt)
    parts = []
    for message in body.get("messages") or []:
        content = message.get("content")
        if isinstance(content, list):
            content = "\n".join(p.get("text", "") for p in content if isinstance(p, dict))
        parts.append(str(content or ""))
    return "\n\n".join(parts)


def _unit(*parts: str) -> float:
    """A deterministic number in [0, 1) from ``parts`` (SHA-256, stable across runs)."""
    digest = hashlib.sha256("\x1f".join(parts).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2 ** 64


class SentimentOracle:
    """Answers of a simulated few-shot sentiment classifier, deterministic per prompt.

    The review to classify is the last review in the prompt (after ``Review:`` on a line
    of its own, DSPEx's completion prompt, or under a ``[[ ## review ## ]]`` header, the
    chat prompts); the demos are the other reviews of the prompt that belong to the data
    set (a template such as ``{review}`` is not one). The answer is the review's true
    label unless ``_unit(review, demo reviews)`` falls below :meth:`error_rate` for the
    demos, in which case it is the other label. So the same prompt always gets the same
    answer, another set of demos may get another one, and a review outside the data set
    gets ``positive``.

    Parameters
    ----------
    input_field, output_field : str
        The signature's field names (``review -> sentiment``).
    labels : mapping of str to str, optional
        Review text -> label; default: every split of the packaged sentiment data set.
    """

    def __init__(self, input_field: str = "review", output_field: str = "sentiment",
                 labels: Mapping[str, str] | None = None):
        if labels is None:
            from foundation_dask.dspex.datasets import SPLITS, load_sentiment_split

            labels = {r[input_field]: r[output_field] for split in SPLITS
                      for r in load_sentiment_split(split, as_examples=False)}
        self.labels = {text.strip(): label for text, label in labels.items()}
        self.label_set = sorted(set(self.labels.values()))
        if len(self.label_set) != 2:
            raise ValueError(f"SentimentOracle needs exactly two labels, got {self.label_set}")
        self.output_field = output_field
        prefix = " ".join(w.capitalize() for w in input_field.split("_"))
        self._inputs = re.compile(
            rf"(?:^|\n){re.escape(prefix)}:[ \t]*([^\n]*)"
            rf"|\[\[ ## {re.escape(input_field)} ## \]\][ \t]*\n([^\n]*)")

    @staticmethod
    def error_rate(demos: list[str], demo_labels: list[str]) -> float:
        """Probability of a wrong answer with these demos.

        0.45 with none (55% correct, near chance), 0.25 with one, ``0.2 / n`` with ``n``
        >= 2 (10% with 2, 5% with 4); doubled (at most 0.45) when every demo has the
        same label.
        """
        n = len(demos)
        if n == 0:
            return 0.45
        rate = 0.25 if n == 1 else 0.2 / n
        if n > 1 and len(set(demo_labels)) == 1:
            rate = min(0.45, 2 * rate)
        return rate

    def label(self, text: str) -> str:
        """The label answered for a whole prompt ``text``."""
        found = [(m.group(1) if m.group(1) is not None else m.group(2)).strip()
                 for m in self._inputs.finditer(text)]
        if not found:
            return self.label_set[0]
        target = found[-1]
        demos = [t for t in found[:-1] if t in self.labels]
        truth = self.labels.get(target)
        if truth is None:
            return "positive" if "positive" in self.label_set else self.label_set[0]
        demo_labels = [self.labels[t] for t in demos]
        if _unit(target, *sorted(demos)) < self.error_rate(demos, demo_labels):
            return next(x for x in self.label_set if x != truth)
        return truth

    def __call__(self, body: Mapping[str, Any]) -> str:
        """The reply text for a request ``body``, in the form its adapter parses."""
        text = prompt_text(body)
        label = self.label(text)
        if "[[ ## " in text:
            return f"[[ ## {self.output_field} ## ]]\n{label}\n\n[[ ## completed ## ]]"
        return label


class _Handler(BaseHTTPRequestHandler):
    server: RemoteLMServer
    protocol_version = "HTTP/1.1"  # keep-alive, as API clients use

    def log_message(self, *args: Any) -> None:
        pass

    def _send(self, status: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up

    def do_GET(self) -> None:
        if self.path.rstrip("/").endswith("/models"):
            self._send(200, {"object": "list", "data": [
                {"id": MODEL, "object": "model", "owned_by": "benchmark"}]})
        elif self.path.rstrip("/") == "/stats":
            self._send(200, self.server.stats())
        else:
            self._send(404, {"error": {"message": f"no route GET {self.path}"}})

    def do_POST(self) -> None:
        srv = self.server
        raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        path = self.path.rstrip("/")
        if path.endswith("/chat/completions"):
            kind = "chat"
        elif path.endswith("/completions"):
            kind = "completions"
        else:
            self._send(404, {"error": {"message": f"no route POST {self.path}"}})
            return
        try:
            body = json.loads(raw)
        except ValueError:
            self._send(400, {"error": {"message": "the request body is not JSON"}})
            return
        with srv.lock:
            srv.counts[kind] += 1
            n = srv.counts["chat"] + srv.counts["completions"]
        time.sleep(srv.latency)
        text = srv.answer(body)
        prompt_tokens = len(prompt_text(body)) // 4
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": max(1, len(text) // 4),
                 "total_tokens": prompt_tokens + max(1, len(text) // 4)}
        if kind == "chat":
            choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant",
                                                             "content": text},
                                      "finish_reason": "stop"}
            obj = "chat.completion"
        else:
            choice = {"index": 0, "text": text, "finish_reason": "stop", "logprobs": None}
            obj = "text_completion"
        self._send(200, {"id": f"sim-{n}", "object": obj, "created": int(time.time()),
                         "model": body.get("model", MODEL), "choices": [choice],
                         "usage": usage})


class RemoteLMServer(ThreadingHTTPServer):
    """An OpenAI-compatible server on 127.0.0.1 that sleeps ``latency`` s per request.

    Parameters
    ----------
    latency : float, default 0.2
        Seconds every completion request waits before it is answered.
    answer : callable, optional
        ``answer(body) -> str``, the text of the reply to a request's JSON body;
        default: a :class:`SentimentOracle`.
    port : int, default 0
        TCP port (0: a free one).
    """

    daemon_threads = True
    request_queue_size = 256

    def __init__(self, latency: float = 0.2,
                 answer: Callable[[Mapping[str, Any]], str] | None = None, port: int = 0):
        if latency < 0:
            raise ValueError(f"latency must be >= 0 seconds, not {latency}")
        super().__init__(("127.0.0.1", port), _Handler)
        self.latency = float(latency)
        self.answer = answer if answer is not None else SentimentOracle()
        self.lock = threading.Lock()
        self.counts = {"chat": 0, "completions": 0}

    @property
    def api_base(self) -> str:
        """``http://127.0.0.1:<port>/v1``."""
        return f"http://127.0.0.1:{self.server_address[1]}/v1"

    @property
    def requests(self) -> int:
        """Completion requests (chat and text) received so far."""
        with self.lock:
            return self.counts["chat"] + self.counts["completions"]

    def stats(self) -> dict[str, Any]:
        """``{"requests": n, "chat": n_chat, "completions": n_text, "latency": s}``."""
        with self.lock:
            return {"requests": self.counts["chat"] + self.counts["completions"],
                    **self.counts, "latency": self.latency}

    @classmethod
    @contextlib.contextmanager
    def running(cls, latency: float = 0.2,
                answer: Callable[[Mapping[str, Any]], str] | None = None
                ) -> Iterator[RemoteLMServer]:
        """The server, serving from a thread of this process until the block ends."""
        srv = cls(latency, answer)
        thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05},
                                  daemon=True)
        thread.start()
        try:
            yield srv
        finally:
            srv.shutdown()
            srv.server_close()
            thread.join(timeout=10)


class ServerProcess:
    """The server with the default answers, run in a process of its own.

    Its handler threads then do not share the interpreter (and its GIL) with the
    clients measured. Use as a context manager; :attr:`requests` asks the server.

    Parameters
    ----------
    latency : float, default 0.2
        Seconds per request.
    timeout : float, default 60
        Seconds to wait for the server to start.
    """

    def __init__(self, latency: float = 0.2, timeout: float = 60.0):
        self.latency = latency
        self.timeout = timeout
        self.proc: subprocess.Popen[str] | None = None
        self.api_base = ""

    def __enter__(self) -> ServerProcess:
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--latency", str(self.latency), "--port", "0"],
            stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()  # "api_base <url>" once it listens
        if not line.startswith("api_base "):
            self.proc.kill()
            raise RuntimeError(f"the LM server did not start (it printed {line!r})")
        self.api_base = line.split()[1]
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                self.stats()
                return self
            except OSError:
                if time.monotonic() > deadline:
                    self.__exit__()
                    raise
                time.sleep(0.05)

    def stats(self) -> dict[str, Any]:
        """The server's counters (``GET /stats``)."""
        root = self.api_base[: -len("/v1")]
        with urllib.request.urlopen(f"{root}/stats", timeout=10) as resp:
            return json.loads(resp.read())

    @property
    def requests(self) -> int:
        """Completion requests the server received so far."""
        return int(self.stats()["requests"])

    def __exit__(self, *exc: Any) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
            if self.proc.stdout is not None:
                self.proc.stdout.close()
            self.proc = None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency", type=float, default=0.2, help="seconds per request")
    parser.add_argument("--port", type=int, default=0, help="TCP port (0: a free one)")
    args = parser.parse_args()
    srv = RemoteLMServer(args.latency, port=args.port)
    print(f"api_base {srv.api_base}", flush=True)
    try:
        srv.serve_forever(poll_interval=0.05)
    except KeyboardInterrupt:
        pass
    finally:
        srv.server_close()


if __name__ == "__main__":
    main()
