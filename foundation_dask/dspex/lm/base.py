"""Any process: the base class of LMs and what every LM shares.

An LM runs in any process: the client's, or a Dask worker's when a program is shipped
there with its LMs. All LMs share :class:`BaseLM`: ``lm(prompt=...)`` or
``lm(messages=[...])`` returns a list of completions (strings); ``lm.generate(...)``
returns an :class:`LMResponse` with token counts and whether the disk cache
(:mod:`foundation_dask.dspex.lm.cache`) answered. Every LM keeps counters (``calls``,
``cache_hits``, ``prompt_tokens``, ``completion_tokens``) and the last 100 calls in
``history``; those stay with the process that made the calls (they do not pickle).
A call the cache does not answer spends from the ``dspex.Budget`` and waits for the
``rate_limit`` configured (:mod:`foundation_dask.dspex.lm.budget`).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, TypeVar

from foundation_dask.dspex.callbacks import with_callbacks
from foundation_dask.dspex.lm import budget
from foundation_dask.dspex.lm.cache import cache_key
from foundation_dask.dspex.lm.cache import lookup as cache_lookup
from foundation_dask.dspex.lm.cache import store as cache_store
from foundation_dask.dspex.settings import record_module_history, settings
from foundation_dask.tracecontext import SpanScope

__all__ = ["HISTORY_SIZE", "BaseLM", "LMResponse", "lm_from_state", "messages_text",
           "restorable"]

logger = logging.getLogger(__name__)

HISTORY_SIZE = 100


@dataclass
class LMResponse:
    """The result of :meth:`BaseLM.generate`.

    ``cached_prompt_tokens`` counts the prompt tokens the model did not have to process
    again (OpenAI's ``usage.prompt_tokens_details.cached_tokens``, reported by OpenAI and
    vLLM; for :class:`LocalLM`, the prefix llama.cpp kept in its KV cache from the
    previous call, or in a state it kept from an earlier one); ``None`` when the model
    does not say.
    """

    outputs: list[str]
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_prompt_tokens: int | None = None
    cache_hit: bool = False
    latency: float = 0.0
    model: str = ""
    raw: dict[str, Any] = field(default_factory=dict, repr=False)


def messages_text(messages: list[dict[str, Any]]) -> str:
    """Chat messages flattened into a completion prompt."""
    parts = [f"{str(m.get('role', 'user')).capitalize()}: {m.get('content', '')}"
             for m in messages]
    return "\n\n".join(parts) + "\n\nAssistant:"


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

    Subclasses implement :meth:`_generate` and :meth:`_cache_namespace`. Calls run the
    callbacks configured (``dspex.configure(callbacks=[...])``) and those in the LM's own
    ``callbacks`` attribute (:mod:`~foundation_dask.dspex.callbacks`).
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
    @with_callbacks
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
                key = cache_key(self._cache_namespace(), prompt, messages, request)
                cached = self._cache_get(key)
            if cached is not None:
                response = LMResponse(outputs=list(cached["outputs"]),
                                      prompt_tokens=int(cached.get("prompt_tokens", 0)),
                                      completion_tokens=int(cached.get("completion_tokens", 0)),
                                      cache_hit=True, model=self.model)
            else:
                ticket = budget.reserve()  # the budget and rate limit in effect, if any
                try:
                    outputs, usage = self._generate(prompt, messages, dict(request))
                except BaseException:
                    ticket.record(None)
                    raise
                ticket.record(usage)
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
            return cache_lookup(key)
        except (sqlite3.Error, OSError, ValueError) as exc:
            logger.warning("LM cache unavailable, calling the model: %s", exc)
            return None

    def _cache_set(self, key: str, value: dict[str, Any]) -> None:
        try:
            cache_store(key, value)
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
        record_module_history(entry)

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

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> BaseLM:
        """The LM described by ``state`` (:meth:`dump_state` output).

        Raises
        ------
        TypeError
            For LM classes that cannot be rebuilt from their description.
        """
        raise TypeError(f"{cls.__name__} cannot be rebuilt from its saved state")

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
# saved programs: LMs from their dump_state()

#: The LM classes :func:`lm_from_state` rebuilds, by the ``type`` of their ``dump_state()``.
_RESTORABLE: dict[str, type[BaseLM]] = {}

_LMType = TypeVar("_LMType", bound=type[BaseLM])


def restorable(cls: _LMType) -> _LMType:
    """Class decorator: :func:`lm_from_state` rebuilds ``cls`` with ``cls.from_state``.

    The class is known under its name, the ``type`` its :meth:`BaseLM.dump_state` writes.
    """
    _RESTORABLE[cls.__name__] = cls
    return cls


def lm_from_state(state: dict[str, Any] | None) -> BaseLM | None:
    """Re-create an LM from ``lm.dump_state()``; None for types that cannot be rebuilt.

    The types that can are the classes marked :func:`restorable`: :class:`LocalLM`,
    :class:`OpenAICompatibleLM` and :class:`LM`.
    """
    if not state:
        return None
    cls = _RESTORABLE.get(str(state.get("type")))
    return None if cls is None else cls.from_state(state)
