"""Any process: DSPy programs and the work DSPy hands its executor, pickled for the workers.

:func:`dumps` pickles with cloudpickle, and

* a ``dspy.BaseLM`` that does not pickle (it holds a client, a loaded model...) travels
  as its ``dump_state()`` and is rebuilt on the worker with ``dspy.BaseLM.load_state``;
  it is checked here first, so an LM that cannot be rebuilt as the same class fails now,
  with its name, rather than being replaced by something else on the worker;
* locks travel as new, unlocked locks (they guard state of the process they are in);
* anything else that does not pickle raises :class:`ProgramNotPicklableError` with the
  path of the attribute at fault (``program.classify.tool.client``).

:func:`ship` wraps a DSPy program for ``client.submit``: it is pickled once, when
shipped, and unpickles on the worker as the program itself.
"""

from __future__ import annotations

import hashlib
import io
import logging
import pickle
import threading
from collections import OrderedDict
from typing import Any

import cloudpickle

from foundation_dask.dspex.interop._dspy import is_dspy_lm, is_dspy_module, require_dspy
from foundation_dask.errors import ProgramNotPicklableError

__all__ = ["ShippedProgram", "dumps", "loads", "ship"]

logger = logging.getLogger(__name__)

_LOCK = type(threading.Lock())
_RLOCK = type(threading.RLock())
_MAX_DEPTH = 8


def _new_lock(reentrant: bool) -> Any:
    return threading.RLock() if reentrant else threading.Lock()


def _rebuild_lm(state: dict[str, Any]) -> Any:
    """Runs where the LM arrives: the LM described by ``state``."""
    dspy = require_dspy("a DSPy LM sent to this worker")
    return dspy.BaseLM.load_state(dict(state), allow_custom_lm_class=True)


class _LMNotRestorable(ProgramNotPicklableError):
    """An LM neither pickles nor rebuilds (turned into the caller's error by :func:`dumps`)."""

    def __init__(self, lm: Any, problem: str):
        super().__init__(problem, attribute=None, reason=problem)
        self.lm = lm
        self.problem = problem


def _lm_state(lm: Any) -> dict[str, Any]:
    """``lm.dump_state()``, checked to rebuild an LM of the same class."""
    try:
        state = lm.dump_state()
        rebuilt = _rebuild_lm(state)
    except Exception as exc:
        raise _LMNotRestorable(lm, f"rebuilding it from dump_state() failed: "
                                   f"{type(exc).__name__}: {exc}") from exc
    if type(rebuilt) is not type(lm):
        raise _LMNotRestorable(lm, f"its dump_state() rebuilds a {type(rebuilt).__name__}, "
                                   f"not a {type(lm).__name__}")
    return state


class _Pickler(cloudpickle.Pickler):
    """cloudpickle, with locks made anew and DSPy LMs that do not pickle rebuilt."""

    def __init__(self, file: Any):
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self.rebuilt: list[str] = []

    def reducer_override(self, obj: Any) -> Any:
        kind = type(obj)
        if kind is _LOCK or kind is _RLOCK:
            return _new_lock, (kind is _RLOCK,)
        if is_dspy_lm(obj):
            try:
                cloudpickle.dumps(obj)
            except Exception as exc:
                state = _lm_state(obj)
                self.rebuilt.append(f"{type(obj).__name__}({getattr(obj, 'model', '?')!r})")
                logger.info("%r does not pickle (%s): it is rebuilt on the workers from its "
                            "dump_state()", obj, exc)
                return _rebuild_lm, (state,)
        return super().reducer_override(obj)


def _dumps(obj: Any) -> tuple[bytes, list[str]]:
    buf = io.BytesIO()
    pickler = _Pickler(buf)
    pickler.dump(obj)
    return buf.getvalue(), pickler.rebuilt


def _children(obj: Any) -> list[tuple[str, Any]]:
    """The parts of ``obj`` that are pickled with it, with their path suffixes."""
    code = getattr(obj, "__code__", None)
    if code is not None and getattr(obj, "__closure__", None):
        return [(f".<{name}>", cell.cell_contents)
                for name, cell in zip(code.co_freevars, obj.__closure__, strict=False)
                if _has_contents(cell)]
    if isinstance(obj, dict):
        return [(f"[{k!r}]", v) for k, v in obj.items()]
    if isinstance(obj, list | tuple | set | frozenset):
        return [(f"[{i}]", v) for i, v in enumerate(obj)]
    if hasattr(obj, "__self__") and hasattr(obj, "__func__"):  # a bound method
        return [(".__self__", obj.__self__)]
    state = getattr(obj, "__dict__", None)
    return [(f".{k}", v) for k, v in state.items()] if isinstance(state, dict) else []


def _has_contents(cell: Any) -> bool:
    try:
        cell.cell_contents  # noqa: B018
    except ValueError:
        return False
    return True


def _fails(obj: Any) -> Exception | None:
    try:
        _dumps(obj)
    except _LMNotRestorable as exc:
        return exc
    except Exception as exc:
        return exc
    return None


def _culprit(obj: Any, path: str, error: Exception, depth: int = 0) -> tuple[str, Exception]:
    """The deepest part of ``obj`` that does not pickle, and why."""
    if isinstance(error, _LMNotRestorable) and error.lm is obj:
        return path, error  # the LM itself: it neither pickles nor rebuilds
    if depth < _MAX_DEPTH and not isinstance(obj, str | bytes):
        for suffix, child in _children(obj):
            problem = _fails(child)
            if problem is not None:
                return _culprit(child, path + suffix, problem, depth + 1)
    return path, error


def dumps(obj: Any, what: str = "program", root: str | None = None) -> bytes:
    """``obj`` pickled for the workers (see the module docstring).

    Raises
    ------
    ProgramNotPicklableError
        A part of ``obj`` does not pickle (a ``TypeError``); ``attribute`` is its path,
        starting with ``root`` (default: ``what``), the name of ``obj``.
    """
    return dumps_with_report(obj, what, root)[0]


def dumps_with_report(obj: Any, what: str = "program",
                      root: str | None = None) -> tuple[bytes, list[str]]:
    """:func:`dumps`, and the LMs that travel as their ``dump_state()``."""
    try:
        return _dumps(obj)
    except Exception as exc:
        error = exc
    path, problem = _culprit(obj, root or what, error)
    if isinstance(problem, _LMNotRestorable):
        reason = (f"the LM {problem.lm!r} does not pickle and {problem.problem}")
        advice = ("Use an LM that pickles (dspy.LM does), or one whose dump_state() and "
                  "load_state() rebuild it.")
    else:
        reason = f"{type(problem).__name__}: {problem}"
        advice = ("Keep what does not pickle out of the program (create it inside forward(), "
                  "or make it a module-level object the workers import).")
    raise ProgramNotPicklableError(
        f"{what} cannot be sent to the Dask workers: {path} does not pickle ({reason}). "
        f"{advice}", attribute=path, reason=reason) from None


_LOADED: OrderedDict[str, Any] = OrderedDict()
_LOADED_LOCK = threading.Lock()
_MAX_LOADED = 8


def loads(payload: bytes, *, reuse: bool = False) -> Any:
    """Unpickle ``payload``; with ``reuse``, the object already unpickled from the same
    bytes in this process (at most a few are kept) is returned again."""
    if not reuse:
        return pickle.loads(payload)
    digest = hashlib.blake2b(payload, digest_size=16).hexdigest()
    with _LOADED_LOCK:
        found = _LOADED.get(digest)
        if found is not None:
            _LOADED.move_to_end(digest)
            return found
    obj = pickle.loads(payload)
    with _LOADED_LOCK:
        _LOADED[digest] = obj
        while len(_LOADED) > _MAX_LOADED:
            _LOADED.popitem(last=False)
    return obj


class ShippedProgram:
    """A DSPy program pickled once, on its way to the workers: it unpickles as the program.

    Parameters
    ----------
    program
        The ``dspy.Module``.

    Raises
    ------
    ProgramNotPicklableError
        A part of the program does not pickle (its path is named).
    """

    def __init__(self, program: Any):
        self.program = program
        self.payload = dumps(program, "program")

    def __reduce__(self) -> tuple[Any, ...]:
        return pickle.loads, (self.payload,)

    def __repr__(self) -> str:
        return f"ShippedProgram({type(self.program).__name__}, {len(self.payload)} bytes)"


def ship(program: Any) -> Any:
    """``program`` ready for ``client.submit``: a DSPy program is pickled once now
    (:class:`ShippedProgram`), anything else is returned as it is."""
    return ShippedProgram(program) if is_dspy_module(program) else program
