"""Any process: global and context-local settings of DSPEx (the default LM, adapter,
cache switch, trace).

``configure(**kw)`` sets process-wide defaults; ``context(**kw)`` overrides them for the
code inside a ``with`` block, in the current thread (or asyncio task) only, through a
:class:`contextvars.ContextVar`. New threads start without overrides, so concurrent
``with context(lm=...)`` blocks in different threads never see each other's values.

On Dask workers
---------------
What ``configure`` and the enclosing ``context`` blocks set where ``Evaluate``, an
optimizer's ``compile`` or a distributed optimization is called travels with its tasks
(:mod:`foundation_dask.dspex.snapshot`) and is in effect inside every task on every
worker, also on workers that join later. An LM set on a predictor (``predictor.lm``)
still wins over the configured one, as in DSPy.
"""

from __future__ import annotations

import contextvars
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

_DEFAULTS: dict[str, Any] = {
    "lm": None,
    "adapter": None,
    "cache": True,
    "trace": None,
    "callbacks": [],
    "max_trace_size": None,
    "max_history_size": 10000,
    "disable_history": False,
    "warn_on_type_mismatch": True,
    "budget": None,
    "rate_limit": None,
}

#: Checks of setting values by key, filled by the modules that define the values (the
#: budget's and the rate limit's: :mod:`~foundation_dask.dspex.lm.budget`); each returns
#: the value to keep or raises ``TypeError`` / ``ValueError`` naming the problem.
_VALIDATORS: dict[str, Callable[[Any], Any]] = {}


def register_validator(key: str, check: Callable[[Any], Any]) -> None:
    """Have :func:`configure` and :func:`context` pass the values of ``key`` through
    ``check`` (what it returns is kept; what it raises reaches the caller)."""
    _VALIDATORS[key] = check


def _checked(kwargs: dict[str, Any]) -> dict[str, Any]:
    return {k: _VALIDATORS[k](v) if k in _VALIDATORS else v for k, v in kwargs.items()}



def _fresh_defaults() -> dict[str, Any]:
    """The defaults, with lists of their own (``settings.callbacks.append`` stays local)."""
    return {k: list(v) if isinstance(v, list) else v for k, v in _DEFAULTS.items()}


_overrides: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "foundation_dask_dspex_settings", default=None
)

#: The modules whose calls are running in this thread or task, outermost first.
_caller_modules: contextvars.ContextVar[tuple[Any, ...]] = contextvars.ContextVar(
    "foundation_dask_dspex_caller_modules", default=()
)


class Settings:
    """Effective settings: context overrides first, then the process-wide configuration.

    Attributes are read with ``settings.lm``, ``settings.adapter``, ``settings.cache``,
    ``settings.trace`` (a list while bootstrapping records predictor calls, else None;
    at most ``max_trace_size`` entries when that is set), ``settings.callbacks``
    (:mod:`~foundation_dask.dspex.callbacks`), ``max_history_size`` /
    ``disable_history`` (the LM calls each module keeps in ``module.history``) and
    ``warn_on_type_mismatch`` (log a warning when an input does not match its field's
    type), ``budget`` and ``rate_limit`` (what LM calls may spend and how often they may
    start, cluster-wide: :mod:`~foundation_dask.dspex.lm.budget`); any other key passed
    to :meth:`configure` is readable the same way.
    """

    def __init__(self) -> None:
        object.__setattr__(self, "_global", _fresh_defaults())
        object.__setattr__(self, "_configured", set())
        object.__setattr__(self, "_lock", threading.Lock())

    def get(self, key: str, default: Any = None) -> Any:
        """The effective value of ``key`` (``default`` when it was never set)."""
        local = _overrides.get()
        if local is not None and key in local:
            return local[key]
        return self._global.get(key, default)

    def __getattr__(self, key: str) -> Any:
        if key.startswith("_"):
            raise AttributeError(key)
        local = _overrides.get()
        if local is not None and key in local:
            return local[key]
        if key in self._global:
            return self._global[key]
        raise AttributeError(f"dspex.settings has no setting {key!r}")

    def __setattr__(self, key: str, value: Any) -> None:
        raise AttributeError(
            f"set dspex settings with dspex.configure({key}=...) or "
            f"'with dspex.context({key}=...)', not by assignment"
        )

    def __getitem__(self, key: str) -> Any:
        return self.get(key)

    def configure(self, **kwargs: Any) -> None:
        """Set process-wide defaults, e.g. ``configure(lm=lm, adapter=CompletionAdapter())``.

        Values set by an enclosing :meth:`context` still win inside that block.
        """
        kwargs = _checked(kwargs)
        with self._lock:
            self._global.update(kwargs)
            self._configured.update(kwargs)

    @contextmanager
    def context(self, **kwargs: Any) -> Iterator[Settings]:
        """Override settings inside a ``with`` block, for the current thread/task only."""
        current = _overrides.get()
        merged = dict(current) if current else {}
        merged.update(_checked(kwargs))
        token = _overrides.set(merged)
        try:
            yield self
        finally:
            _overrides.reset(token)

    def as_dict(self) -> dict[str, Any]:
        """A snapshot of the effective settings."""
        out = dict(self._global)
        out.update(_overrides.get() or {})
        return out

    def explicit(self) -> dict[str, Any]:
        """The settings set by :meth:`configure` and the enclosing :meth:`context` blocks.

        Defaults never set are left out: this is what travels with work sent to Dask
        workers (:func:`foundation_dask.dspex.snapshot.snapshot_settings`).
        """
        with self._lock:
            out = {k: self._global[k] for k in self._configured}
        out.update(_overrides.get() or {})
        return out

    def reset(self) -> None:
        """Restore the process-wide defaults (context overrides are left alone)."""
        with self._lock:
            self._global.clear()
            self._global.update(_fresh_defaults())
            self._configured.clear()

    def save(self, path: str | os.PathLike, modules_to_serialize: list[Any] | None = None,
             exclude_keys: list[str] | None = None) -> None:
        """Pickle the effective settings (but ``exclude_keys``) to ``path``; read them back
        with :func:`load_settings`. Classes of ``modules_to_serialize`` are pickled by
        value (for callbacks or adapters defined where the file is read without them)."""
        import cloudpickle

        excluded = set(exclude_keys or ())
        values = {k: v for k, v in self.as_dict().items() if k not in excluded}
        for module in modules_to_serialize or []:
            cloudpickle.register_pickle_by_value(module)
        try:
            data = cloudpickle.dumps(values)
        finally:
            for module in modules_to_serialize or []:
                cloudpickle.unregister_pickle_by_value(module)
        with open(path, "wb") as f:
            f.write(data)

    def __repr__(self) -> str:
        items = ", ".join(f"{k}={v!r}" for k, v in self.as_dict().items())
        return f"Settings({items})"


settings = Settings()


def configure(**kwargs: Any) -> None:
    """Set process-wide DSPEx defaults (``lm``, ``adapter``, ``cache``...).

    Examples
    --------
    >>> from foundation_dask import dspex
    >>> dspex.configure(lm=dspex.DummyLM([{"answer": "4"}]))
    """
    settings.configure(**kwargs)


def load_settings(path: str | os.PathLike, allow_pickle: bool = False) -> dict[str, Any]:
    """The settings :meth:`Settings.save` wrote, for ``configure(**settings)``.

    Needs ``allow_pickle=True``: unpickling can run arbitrary code.
    """
    if not allow_pickle:
        raise ValueError("Loading settings unpickles them, which can run arbitrary code. Set "
                         "`allow_pickle=True` if you are sure about the source of the file.")
    import cloudpickle

    with open(path, "rb") as f:
        values = cloudpickle.load(f)
    if not isinstance(values, dict):
        raise ValueError(f"{os.fspath(path)} does not hold saved settings")
    return values


def context(**kwargs: Any):
    """Context manager overriding DSPEx settings in the current thread or task only.

    Examples
    --------
    >>> from foundation_dask import dspex
    >>> with dspex.context(lm=dspex.DummyLM([{"answer": "4"}])):
    ...     pass
    """
    return settings.context(**kwargs)


# ---------------------------------------------------------------------------------------
# the modules running, for their per-module history of LM calls


@contextmanager
def calling_module(module: Any) -> Iterator[None]:
    """Mark ``module`` as running (its LM calls go to its ``history``) inside the block."""
    token = _caller_modules.set((*_caller_modules.get(), module))
    try:
        yield
    finally:
        _caller_modules.reset(token)


def record_module_history(entry: dict[str, Any]) -> None:
    """Append an LM call's history ``entry`` to every running module's ``history``
    (the same dict object for all of them), keeping at most ``max_history_size``."""
    modules = _caller_modules.get()
    if not modules or settings.get("disable_history", False):
        return
    limit = settings.get("max_history_size", 10000)
    for module in modules:
        history = module.__dict__.setdefault("history", [])
        history.append(entry)
        if limit is not None and len(history) > limit:
            del history[: len(history) - limit]
