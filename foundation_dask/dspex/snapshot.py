"""Client and worker: the DSPEx settings in effect where work starts, carried with its tasks.

``Evaluate``, the optimizers' ``compile`` and the distributed optimization take a
:class:`SettingsSnapshot` of what ``dspex.configure(...)`` and the enclosing
``with dspex.context(...)`` blocks set (:func:`snapshot_settings`, in the client's
thread), send it with every task, and run each task's work under
``with snapshot.applied():`` on the worker. Tasks carry their settings, so a worker that
joins later or replaces a lost one runs under the same settings as the others.

Each setting is pickled once, when the snapshot is taken. An LM that does not pickle is
described by its ``dump_state()`` and rebuilt on the worker with
:func:`~foundation_dask.dspex.lm.base.lm_from_state`; any other value that does not
pickle raises a ``TypeError`` naming the setting, before any work starts. Settings that
stay with the process that sets them (``trace``, the record of predictor calls while
bootstrapping) are not carried. Once DSPy is imported, :func:`snapshot_settings` also
takes DSPy's own settings (``dspy.configure``, ``dspy.context``:
:mod:`foundation_dask.dspex.interop`), and ``applied()`` puts both in effect.
"""

from __future__ import annotations

import pickle
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

import cloudpickle

from foundation_dask.dspex.lm.base import BaseLM, lm_from_state
from foundation_dask.dspex.settings import context, settings
from foundation_dask.errors import SettingsTransferError

__all__ = ["LOCAL_SETTINGS", "SettingsSnapshot", "snapshot_settings"]

#: Settings that are never carried to other processes.
LOCAL_SETTINGS = frozenset({"trace"})

_PICKLED, _REBUILT = "pickled", "rebuilt"


def _encode(key: str, value: Any) -> tuple[str, Any]:
    """``("pickled", bytes)`` or, for an LM that does not pickle, ``("rebuilt", state)``."""
    try:
        return _PICKLED, cloudpickle.dumps(value)
    except Exception as exc:
        problem = f"{type(exc).__name__}: {exc}"
    if isinstance(value, BaseLM):
        state = value.dump_state()
        try:
            rebuilt = lm_from_state(state)
        except Exception as exc:
            rebuilt, problem = None, f"{problem}; rebuilding it failed: {exc}"
        if rebuilt is not None:
            return _REBUILT, state
        raise SettingsTransferError(
            f"the dspex setting {key!r} ({value!r}) cannot be sent to the Dask workers: it "
            f"does not pickle ({problem}) and {type(value).__name__} cannot be rebuilt from "
            "its dump_state(). Use an LM that pickles, or a restorable one (LocalLM, "
            "OpenAICompatibleLM), or keep the object that does not pickle out of the LM.",
            setting=key,
        )
    raise SettingsTransferError(
        f"the dspex setting {key!r} ({type(value).__name__}) cannot be sent to the Dask "
        f"workers with the work: it does not pickle ({problem}). Configure a value that "
        f"pickles, or leave it out: dspex.configure({key}=None).",
        setting=key,
    )


def _decode(key: str, kind: str, data: Any) -> Any:
    if kind == _REBUILT:
        lm = lm_from_state(data)
        if lm is None:
            raise SettingsTransferError(f"the dspex setting {key!r} could not be rebuilt on "
                                        f"this worker from {data!r}", setting=key)
        return lm
    return pickle.loads(data)


class SettingsSnapshot:
    """The DSPEx settings set where work started, ready to travel with its tasks.

    Parameters
    ----------
    values
        ``{setting: value}``, as :meth:`~foundation_dask.dspex.settings.Settings.explicit`
        returns them.
    dspy
        DSPy's settings to carry too (a ``DSPySettingsSnapshot``), or None.

    Raises
    ------
    TypeError
        A value does not pickle (and is not an LM that can be rebuilt); the message
        names the setting.
    """

    def __init__(self, values: dict[str, Any], dspy: Any = None):
        self._values: dict[str, Any] | None = {
            k: v for k, v in values.items() if k not in LOCAL_SETTINGS}
        self._payload = {k: _encode(k, v) for k, v in self._values.items()}
        self.dspy = dspy

    @classmethod
    def _from_payload(cls, payload: dict[str, tuple[str, Any]],
                      dspy: Any = None) -> SettingsSnapshot:
        new = cls.__new__(cls)
        new._values = None  # decoded on first use, inside the task
        new._payload = payload
        new.dspy = dspy
        return new

    def __reduce__(self) -> tuple[Any, ...]:
        return SettingsSnapshot._from_payload, (self._payload, self.dspy)

    @property
    def values(self) -> dict[str, Any]:
        """``{setting: value}`` (LMs that did not pickle rebuilt in this process)."""
        if self._values is None:
            self._values = {k: _decode(k, kind, data)
                            for k, (kind, data) in self._payload.items()}
        return dict(self._values)

    @property
    def rebuilt(self) -> list[str]:
        """The settings sent as a description and rebuilt on the workers."""
        return [k for k, (kind, _) in self._payload.items() if kind == _REBUILT]

    @contextmanager
    def applied(self) -> Iterator[None]:
        """Run the block under these settings (``dspex.context(**values)``, and
        DSPy's carried settings in ``dspy.context``)."""
        with context(**self.values), (
                self.dspy.applied() if self.dspy is not None else nullcontext()):
            yield

    def __repr__(self) -> str:
        names = ", ".join(sorted(self._payload)) or "nothing set"
        return f"SettingsSnapshot({names})"


def snapshot_settings() -> SettingsSnapshot:
    """The settings set by ``dspex.configure`` and the enclosing ``dspex.context`` blocks.

    Raises
    ------
    TypeError
        A setting cannot travel to the workers (named in the message), DSPy's
        (``dspy.<name>``) included.
    """
    from foundation_dask.dspex.interop._settings import snapshot_dspy_settings

    return SettingsSnapshot(settings.explicit(), dspy=snapshot_dspy_settings())
