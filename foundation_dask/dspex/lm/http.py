"""Any process: clients of OpenAI-compatible servers (OpenAI, vLLM, llama.cpp, Ollama...).

:class:`OpenAICompatibleLM` posts to ``/completions`` or ``/chat/completions`` with
retries (429, 5xx, connection errors and timeouts, exponential backoff with jitter,
``Retry-After`` honoured); :class:`LM` is DSPy's entry point with the chat endpoint by
default. An LM runs in any process (the client's, or a Dask worker's when a program is
shipped there); its API key and headers are :class:`~foundation_dask.core.secrets.Secret`
values: they travel to the workers by reference and never show in reprs, logs, saved
programs, resume specs, checkpoint files, traces or the LM cache.
"""

from __future__ import annotations

import email.utils
import http.client
import json
import logging
import os
import random
import time
import urllib.error
import urllib.request
from typing import Any

from foundation_dask.core.secrets import Secret, reveal
from foundation_dask.dspex.lm.base import BaseLM, messages_text, restorable
from foundation_dask.errors import LMError, LMTimeoutError

__all__ = ["LM", "OpenAICompatibleLM"]

logger = logging.getLogger(__name__)

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


@restorable
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
        Kept as a :class:`~foundation_dask.core.secrets.Secret`: never logged, shown or
        written to a file; where its value is gone (a resume after the scheduler
        restarted) ``OPENAI_API_KEY`` is read instead.
    headers
        Extra HTTP headers (kept as secrets too: they often carry credentials).
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
        what = f"the API key of {type(self).__name__}(model={model!r})"
        self._api_key = (api_key if isinstance(api_key, Secret) or api_key is None
                         else Secret(api_key, env="OPENAI_API_KEY", what=what))
        self.model_type = model_type
        self.timeout = float(timeout)
        self.max_retries = int(max_retries)
        self.backoff_base = float(backoff_base)
        self.backoff_max = float(backoff_max)
        self.max_retry_after = float(max_retry_after)
        self.headers = {
            k: v if isinstance(v, Secret)
            else Secret(v, what=f"the header {k!r} of {type(self).__name__}(model={model!r})")
            for k, v in (headers or {}).items()}

    @property
    def api_key(self) -> str | None:
        """The key given, else ``OPENAI_API_KEY`` (read at call time)."""
        return reveal(self._api_key) or os.environ.get("OPENAI_API_KEY") or None

    def _cache_namespace(self) -> dict[str, Any]:
        return {"type": "openai-compatible", "model": self.request_model,
                "api_base": self.api_base, "model_type": self.model_type}

    def dump_state(self) -> dict[str, Any]:
        return {"type": type(self).__name__, "model": self.model, "api_base": self.api_base,
                "model_type": self.model_type, "timeout": self.timeout,
                "max_retries": self.max_retries, "cache": self.cache,
                "kwargs": dict(self.kwargs)}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> OpenAICompatibleLM:
        """The client described by ``state`` (:meth:`dump_state` output: no API key and no
        headers, which may hold credentials; the key is read from ``OPENAI_API_KEY``)."""
        return cls(state["model"], state.get("api_base"), model_type=state.get("model_type"),
                   timeout=state.get("timeout", 30.0), max_retries=state.get("max_retries", 5),
                   cache=state.get("cache", True), **dict(state.get("kwargs") or {}))

    def _generate(self, prompt: str | None, messages: list[dict[str, Any]] | None,
                  kwargs: dict[str, Any]) -> tuple[list[str], dict[str, Any]]:
        mode = self.model_type or ("chat" if messages is not None else "text")
        if mode == "chat":
            msgs = messages if messages is not None else [{"role": "user", "content": prompt}]
            data = self._post("/chat/completions",
                              {"model": self.request_model, "messages": msgs, **kwargs})
        else:
            text = prompt if prompt is not None else messages_text(messages or [])
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
                   "User-Agent": "foundation-dask-dspex",
                   **{k: str(reveal(v)) for k, v in self.headers.items()}}
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


@restorable
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
