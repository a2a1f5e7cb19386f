"""Any process: callbacks, handlers called before and after modules, LMs, adapters,
evaluations and optimizers run (DSPy's ``BaseCallback`` protocol).

Set them for every call with ``dspex.configure(callbacks=[...])`` (or a ``dspex.context``
block), or for one component with ``callbacks=[...]`` on it
(``MyModule(callbacks=[cb])``). Each handler gets a ``call_id`` shared by the start and
end handlers of one call; while the call runs, :data:`ACTIVE_CALL_ID` holds its id, so a
handler reads the id of the enclosing call with ``ACTIVE_CALL_ID.get()``.

Callbacks run in the process where the component runs: for an evaluation or an
optimization scattered over the cluster, the module, LM and adapter handlers run on the
workers (in copies of the callbacks carried with the settings), the evaluation and
compile handlers on the client.

>>> from foundation_dask import dspex
>>> class Log(dspex.BaseCallback):
...     def on_module_start(self, call_id, instance, inputs):
...         print("start", type(instance).__name__, inputs)
>>> with dspex.context(lm=dspex.DummyLM([{"answer": "4"}]), callbacks=[Log()]):
...     _ = dspex.Predict("question -> answer")(question="2+2?")
start Predict {'args': (), 'kwargs': {'question': '2+2?'}}
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import logging
import threading
import uuid
from collections.abc import Callable
from typing import Any

from foundation_dask.dspex.settings import settings

__all__ = ["ACTIVE_CALL_ID", "BaseCallback", "run_with_callbacks", "with_callbacks",
           "with_compile_callbacks"]

logger = logging.getLogger(__name__)

#: The id of the call running in this thread or task (None outside any callback call).
ACTIVE_CALL_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "foundation_dask_dspex_active_call_id", default=None)

#: The ``compile`` calls running here: (optimizer id, thread id, asyncio task id).
_ACTIVE_COMPILES: contextvars.ContextVar[tuple[tuple[int, int, int | None], ...]] = (
    contextvars.ContextVar("foundation_dask_dspex_active_compiles", default=()))


class BaseCallback:
    """Base class of callback handlers: override the handlers you need.

    Every ``on_*_start(call_id, instance, inputs)`` gets the component and its inputs
    (a dict of argument names to values); every ``on_*_end(call_id, outputs,
    exception)`` gets the result, or None and the exception raised. A handler that
    raises is logged and ignored: callbacks never change what a program does.
    """

    def on_module_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
        """A module (or predictor) starts."""

    def on_module_end(self, call_id: str, outputs: Any | None,
                      exception: BaseException | None = None) -> None:
        """A module (or predictor) ended."""

    def on_lm_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
        """An LM call starts."""

    def on_lm_end(self, call_id: str, outputs: Any | None,
                  exception: BaseException | None = None) -> None:
        """An LM call ended."""

    def on_adapter_format_start(self, call_id: str, instance: Any,
                                inputs: dict[str, Any]) -> None:
        """An adapter starts writing a prompt."""

    def on_adapter_format_end(self, call_id: str, outputs: Any | None,
                              exception: BaseException | None = None) -> None:
        """An adapter wrote a prompt."""

    def on_adapter_parse_start(self, call_id: str, instance: Any,
                               inputs: dict[str, Any]) -> None:
        """An adapter starts reading one completion."""

    def on_adapter_parse_end(self, call_id: str, outputs: Any | None,
                             exception: BaseException | None = None) -> None:
        """An adapter read one completion."""

    def on_tool_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
        """A tool starts (no tools in DSPEx; kept for DSPy callbacks)."""

    def on_tool_end(self, call_id: str, outputs: Any | None,
                    exception: BaseException | None = None) -> None:
        """A tool ended."""

    def on_evaluate_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
        """An evaluation starts (on the client)."""

    def on_evaluate_end(self, call_id: str, outputs: Any | None,
                        exception: BaseException | None = None) -> None:
        """An evaluation ended."""

    def on_compile_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
        """An optimizer's ``compile`` starts (on the client)."""

    def on_compile_end(self, call_id: str, outputs: Any | None,
                       exception: BaseException | None = None) -> None:
        """An optimizer's ``compile`` ended."""


def _kind(instance: Any, name: str) -> str:
    """The handler family of a call: module, lm, adapter_format, evaluate..."""
    # by class name: the components' modules import this one
    cls_names = {c.__name__ for c in type(instance).__mro__}
    if "BaseLM" in cls_names:
        return "lm"
    if "Adapter" in cls_names:
        if name not in ("format", "parse"):
            raise ValueError(f"Unsupported adapter method for using callback: {name}.")
        return f"adapter_{name}"
    if "Evaluate" in cls_names:
        return "evaluate"
    if "Teleprompter" in cls_names:
        return "compile"
    return "module"


def active_callbacks(instance: Any) -> list[Any]:
    """The configured callbacks, then the instance's own ``callbacks``."""
    return list(settings.get("callbacks") or []) + list(getattr(instance, "callbacks", None) or [])


def _start(callbacks: list[Any], kind: str, call_id: str, instance: Any,
           inputs: dict[str, Any]) -> None:
    for cb in callbacks:
        try:
            getattr(cb, f"on_{kind}_start")(call_id=call_id, instance=instance, inputs=inputs)
        except Exception as exc:
            logger.warning("Error when calling callback %s: %s", cb, exc)


def _end(callbacks: list[Any], kind: str, call_id: str, outputs: Any,
         exception: BaseException | None) -> None:
    for cb in callbacks:
        try:
            getattr(cb, f"on_{kind}_end")(call_id=call_id, outputs=outputs, exception=exception)
        except Exception as exc:
            logger.warning("Error when applying callback %s's end handler: %s", cb, exc)


def run_with_callbacks(instance: Any, name: str, fn: Callable[[], Any],
                       inputs: dict[str, Any]) -> Any:
    """Run ``fn()`` as a call of ``instance.<name>(**inputs)``, with its callbacks."""
    callbacks = active_callbacks(instance)
    if not callbacks:
        return fn()
    kind = _kind(instance, name)
    call_id = uuid.uuid4().hex
    _start(callbacks, kind, call_id, instance, inputs)
    token = ACTIVE_CALL_ID.set(call_id)
    results, exception = None, None
    try:
        results = fn()
        return results
    except BaseException as exc:
        exception = exc
        raise
    finally:
        ACTIVE_CALL_ID.reset(token)
        _end(callbacks, kind, call_id, results, exception)


# the wrappers reach the context variable through these module functions, so that
# cloudpickle pickles them by reference (a ContextVar does not pickle)
def _set_active(call_id: str) -> contextvars.Token:
    return ACTIVE_CALL_ID.set(call_id)


def _reset_active(token: contextvars.Token) -> None:
    ACTIVE_CALL_ID.reset(token)


def _inputs(fn: Callable, instance: Any, args: tuple, kwargs: dict[str, Any]) -> dict[str, Any]:
    try:
        inputs = inspect.getcallargs(fn, instance, *args, **kwargs)
    except TypeError:
        return dict(kwargs)
    params = list(inspect.signature(fn).parameters)
    if params:
        inputs.pop(params[0], None)  # self / instance
    return inputs


def with_callbacks(fn: Callable) -> Callable:
    """Decorator of methods: the configured and the instance's callbacks run around it.

    Works for plain and ``async`` methods; the wrapper pickles by value with
    cloudpickle like the method it wraps.
    """
    if inspect.iscoroutinefunction(fn):

        @functools.wraps(fn)
        async def async_wrapper(instance: Any, *args: Any, **kwargs: Any) -> Any:
            callbacks = active_callbacks(instance)
            if not callbacks:
                return await fn(instance, *args, **kwargs)
            kind = _kind(instance, fn.__name__)
            call_id = uuid.uuid4().hex
            _start(callbacks, kind, call_id, instance, _inputs(fn, instance, args, kwargs))
            token = _set_active(call_id)
            results, exception = None, None
            try:
                results = await fn(instance, *args, **kwargs)
                return results
            except BaseException as exc:
                exception = exc
                raise
            finally:
                _reset_active(token)
                _end(callbacks, kind, call_id, results, exception)

        return async_wrapper

    @functools.wraps(fn)
    def sync_wrapper(instance: Any, *args: Any, **kwargs: Any) -> Any:
        if not active_callbacks(instance):
            return fn(instance, *args, **kwargs)
        return run_with_callbacks(instance, fn.__name__, lambda: fn(instance, *args, **kwargs),
                                  _inputs(fn, instance, args, kwargs))

    return sync_wrapper


# ---------------------------------------------------------------------------------------
# optimizers: one callback pair per compile, however many overrides call super().compile


def _enter_compile(instance: Any) -> contextvars.Token | None:
    """Mark a compile of ``instance`` as running here; None if one is running already
    (an override calling ``super().compile``) in this thread and task."""
    try:
        task = asyncio.current_task()
    except RuntimeError:
        task = None
    key = (id(instance), threading.get_ident(), id(task) if task is not None else None)
    active = _ACTIVE_COMPILES.get()
    if key in active:
        return None
    return _ACTIVE_COMPILES.set((*active, key))


def _exit_compile(token: contextvars.Token) -> None:
    _ACTIVE_COMPILES.reset(token)


def with_compile_callbacks(fn: Callable) -> Callable:
    """Decorator of optimizers' ``compile``: :func:`with_callbacks`, once per compile call
    (``Teleprompter`` subclasses get it on the ``compile`` they define)."""
    callback_fn = with_callbacks(fn)
    if inspect.iscoroutinefunction(fn):

        @functools.wraps(fn)
        async def async_wrapper(instance: Any, *args: Any, **kwargs: Any) -> Any:
            token = _enter_compile(instance)
            if token is None:
                return await fn(instance, *args, **kwargs)
            try:
                return await callback_fn(instance, *args, **kwargs)
            finally:
                _exit_compile(token)

        return async_wrapper

    @functools.wraps(fn)
    def wrapper(instance: Any, *args: Any, **kwargs: Any) -> Any:
        token = _enter_compile(instance)
        if token is None:
            return fn(instance, *args, **kwargs)
        try:
            return callback_fn(instance, *args, **kwargs)
        finally:
            _exit_compile(token)

    return wrapper
