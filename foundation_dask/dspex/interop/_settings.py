"""Client and worker: DSPy's own settings where work starts, carried with its tasks.

``dspy.configure(lm=..., adapter=...)`` and the enclosing ``with dspy.context(...)``
blocks hold what a DSPy program runs under. :func:`snapshot_dspy_settings` takes what is
set there (the values that differ from DSPy's defaults) in the client's thread; the
:class:`DSPySettingsSnapshot` travels with every task, and ``with snapshot.applied():``
puts it in effect on the worker, through ``dspy.context``. It is part of every DSPEx
settings snapshot (:mod:`foundation_dask.dspex.snapshot`) once DSPy is imported, so
``dspex.Evaluate``, the DSPEx optimizers, ``DistributedOptimizer`` and
``dspex.on_cluster`` all carry it.

Values are pickled once, when the snapshot is taken (:mod:`._pickling`): an LM that
does not pickle travels as its ``dump_state()`` and is rebuilt on the worker; any other
value that does not pickle raises :class:`~foundation_dask.errors.SettingsTransferError`
naming the setting, before any work starts. What belongs to the process that sets it
(``trace``, the usage tracker, streaming, the calling module) is not carried. Inside an
ElixirScope trace, ``applied()`` also records every LM call as an ``lm`` span.
"""

from __future__ import annotations

import contextlib
import pickle
from collections.abc import Iterator
from typing import Any

from foundation_dask.dspex.interop._dspy import dspy_loaded
from foundation_dask.dspex.interop._pickling import dumps_with_report
from foundation_dask.errors import ProgramNotPicklableError, SettingsTransferError
from foundation_dask.tracecontext import current as current_trace

__all__ = ["LOCAL_DSPY_SETTINGS", "DSPySettingsSnapshot", "snapshot_dspy_settings"]

#: DSPy settings that stay with the process that sets them.
LOCAL_DSPY_SETTINGS = frozenset({
    "trace", "usage_tracker", "caller_predict", "caller_modules", "send_stream",
    "stream_listeners",
})


def _differs(value: Any, default: Any) -> bool:
    if value is default:
        return False
    try:
        return bool(value != default)
    except Exception:
        return True


class DSPySettingsSnapshot:
    """DSPy settings set where work started, ready to travel with its tasks.

    Parameters
    ----------
    values
        ``{setting: value}``.

    Raises
    ------
    SettingsTransferError
        A value does not pickle (and is not an LM that can be rebuilt); ``setting`` is
        ``"dspy.<name>"``.
    """

    def __init__(self, values: dict[str, Any]):
        self._values: dict[str, Any] | None = dict(values)
        self._payload: dict[str, bytes] = {}
        self._rebuilt: list[str] = []
        for key, value in values.items():
            try:
                data, rebuilt = dumps_with_report(value, f"dspy setting {key!r}")
            except ProgramNotPicklableError as exc:
                raise SettingsTransferError(
                    f"the DSPy setting {key!r} cannot be sent to the Dask workers with the "
                    f"work: {exc.attribute} does not pickle ({exc.reason}). Configure a value "
                    f"that pickles, or leave it out of dspy.configure / dspy.context.",
                    setting=f"dspy.{key}") from None
            self._payload[key] = data
            if rebuilt:
                self._rebuilt.append(key)

    @classmethod
    def _from_payload(cls, payload: dict[str, bytes], rebuilt: list[str]) -> DSPySettingsSnapshot:
        new = cls.__new__(cls)
        new._values = None  # unpickled on first use, inside the task
        new._payload = payload
        new._rebuilt = rebuilt
        return new

    def __reduce__(self) -> tuple[Any, ...]:
        return DSPySettingsSnapshot._from_payload, (self._payload, self._rebuilt)

    @property
    def values(self) -> dict[str, Any]:
        """``{setting: value}`` (LMs that did not pickle rebuilt in this process)."""
        if self._values is None:
            self._values = {k: pickle.loads(v) for k, v in self._payload.items()}
        return dict(self._values)

    @property
    def rebuilt(self) -> list[str]:
        """The settings holding an LM sent as its ``dump_state()``, rebuilt on the workers."""
        return list(self._rebuilt)

    @contextlib.contextmanager
    def applied(self) -> Iterator[None]:
        """Run the block under these settings (``dspy.context(**values)``), with every LM
        call recorded as an ElixirScope span inside a trace."""
        values = self.values
        if dspy_loaded() is None and not values:  # nothing set, no DSPy program here
            yield
            return
        import dspy

        from foundation_dask.dspex.interop._spans import LMSpanCallback, without_span_callbacks

        if current_trace() is not None:
            callbacks = without_span_callbacks(values.get("callbacks", dspy.settings.callbacks))
            values["callbacks"] = [*callbacks, LMSpanCallback()]
        with dspy.context(**values):
            yield

    def __repr__(self) -> str:
        names = ", ".join(sorted(self._payload)) or "nothing set"
        return f"DSPySettingsSnapshot({names})"


def snapshot_dspy_settings() -> DSPySettingsSnapshot | None:
    """The DSPy settings set by ``dspy.configure`` and the enclosing ``dspy.context``
    blocks, or None when this process never imported DSPy.

    Raises
    ------
    SettingsTransferError
        A setting cannot travel to the workers (named in the message).
    """
    dspy = dspy_loaded()
    if dspy is None:
        return None
    from dspy.dsp.utils.settings import DEFAULT_CONFIG

    from foundation_dask.dspex.interop._spans import without_span_callbacks

    values = {}
    for key, value in dspy.settings.config.items():
        if key in LOCAL_DSPY_SETTINGS or not _differs(value, DEFAULT_CONFIG.get(key, _MISSING)):
            continue
        if key == "callbacks":
            value = without_span_callbacks(value)
            if not value:
                continue
        values[key] = value
    return DSPySettingsSnapshot(values)


_MISSING = object()
