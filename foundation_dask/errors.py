"""Any process: the errors of foundation_dask, one family.

Every error the package raises is a :class:`FoundationError` and also the builtin a
caller would catch for that kind of failure (``KeyError`` for a name that is not
there, ``ValueError`` for bad input, ``TimeoutError`` for a timeout), so
``except KeyError`` and ``except fd.FoundationError`` both work. Errors carry what
they are about as attributes (``name``, ``worker``, ``address``...), and keep them
when they travel between processes (they pickle with their attributes).

>>> import foundation_dask as fd
>>> try:
...     fd.ProcessManager.lookup_replicated("nobody")        # doctest: +SKIP
... except KeyError as exc:                              # a ProcessNotFoundError
...     print(exc.name)
nobody
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "AdapterParseError",
    "AlreadyRegisteredError",
    "BudgetExhaustedError",
    "CheckpointRefusedError",
    "ClusterConnectionError",
    "DSPyNotInstalledError",
    "EvaluationError",
    "ExportError",
    "FoundationError",
    "FoundationNotInstalledError",
    "LMError",
    "LMConfigurationError",
    "LMTimeoutError",
    "NotOwnerError",
    "NotRegisteredError",
    "OptimizationStopped",
    "ProcessError",
    "ProcessLostError",
    "ProcessNotFoundError",
    "ProcessPermissionError",
    "ProcessStartError",
    "ProgramNotPicklableError",
    "ProgramCallError",
    "SecretUnavailableError",
    "SettingsTransferError",
    "StateMismatchError",
    "SubscriptionClosedError",
    "TraceNotFoundError",
    "TuneError",
]


def _restore(cls: type[FoundationError], args: tuple[Any, ...],
             state: dict[str, Any]) -> FoundationError:
    # ``cls.__new__`` is the first ``__new__`` of the MRO (RuntimeError's for an
    # LMTimeoutError), which refuses a class whose layout is another builtin's (OSError's
    # for TimeoutError); take the first along the MRO that accepts ``cls``.
    exc: FoundationError | None = None
    for base in cls.__mro__:
        if "__new__" in vars(base):
            try:
                exc = vars(base)["__new__"](cls)
                break
            except TypeError:
                continue
    assert exc is not None  # BaseException.__new__ accepts every exception class
    exc.args = args
    exc.__dict__.update(state)
    return exc


class FoundationError(Exception):
    """Base class of every error of foundation_dask.

    Parameters
    ----------
    *args
        The message (one string, as for any exception).
    **attrs
        What the error is about (``name=``, ``worker=``, ``address=``...): set as
        attributes of the same names.
    """

    def __init__(self, *args: Any, **attrs: Any) -> None:
        super().__init__(*args)
        for key, value in attrs.items():
            setattr(self, key, value)

    def __str__(self) -> str:
        # KeyError quotes a single argument; the message reads better as written
        return str(self.args[0]) if len(self.args) == 1 else super().__str__()

    def __reduce__(self) -> tuple[Any, ...]:
        # ``Exception`` pickles ``args`` only; keep the attributes across processes
        return _restore, (type(self), self.args, dict(self.__dict__))


# --------------------------------------------------------------------------- cluster


class FoundationNotInstalledError(FoundationError, RuntimeError):
    """The cluster at ``address`` cannot load foundation_dask (install it there)."""

    address: str | None = None


class ClusterConnectionError(FoundationError, ConnectionError):
    """The connection to the cluster at ``address`` was lost or cannot be made."""

    address: str | None = None


class SecretUnavailableError(FoundationError, LookupError):
    """The value of a secret (``ref``: its reference) is not known in this process nor
    on the scheduler, and its environment variable is not set."""

    ref: str | None = None


# --------------------------------------------------------------------------- processes


class ProcessError(FoundationError, RuntimeError):
    """Base class of the errors of supervised processes (``name``: the process)."""

    name: Any = None
    worker: str | None = None


class ProcessNotFoundError(ProcessError, KeyError):
    """No process is registered under ``name``."""


class ProcessLostError(ProcessError):
    """A replicated instance's ``worker`` is gone, or a singleton could not be restarted."""


class ProcessStartError(ProcessError):
    """The class could not be instantiated (or restored) on ``worker``."""


class CheckpointRefusedError(ProcessStartError):
    """The checkpoint file at ``path`` of process ``name`` was refused (``reason``: not
    signed with the cluster's key, edited, a link, or its directory is not private)."""

    path: str | None = None
    reason: str | None = None


class ProcessPermissionError(ProcessError, PermissionError):
    """A request about process ``name`` did not come from who may make it (a checkpoint
    not from the running instance, a freeze or destroy not from the supervisor)."""


# --------------------------------------------------------------------------- registry


class AlreadyRegisteredError(FoundationError, ValueError):
    """``key`` is registered already (pass ``replace=True`` to take it over)."""

    key: Any = None


class NotRegisteredError(FoundationError, KeyError):
    """No entry or service under ``key``."""

    key: Any = None


class NotOwnerError(FoundationError, PermissionError):
    """``key`` belongs to ``owner``, not to the caller: replacing or removing it needs
    ``force=True``."""

    key: Any = None
    owner: str | None = None


# --------------------------------------------------------------------------- channels


class SubscriptionClosedError(FoundationError, RuntimeError):
    """The subscription to ``channel`` was closed."""

    channel: str | None = None


# --------------------------------------------------------------------------- scope


class TraceNotFoundError(FoundationError, KeyError):
    """No trace with id ``trace_id``."""

    trace_id: str | None = None


class ExportError(FoundationError, OSError):
    """A trace export could not be written to the requested path.

    Raised instead of the underlying :class:`OSError` (whose ``errno`` it keeps), with
    a message that names the path and suggests a writable location. Nothing is left
    at the path.

    Parameters
    ----------
    message
        What went wrong and what to do instead.
    filename
        The path that could not be written.
    errno
        The ``errno`` of the underlying error, if any.
    """

    def __init__(self, message: str, filename: str | None = None,
                 errno: int | None = None) -> None:
        OSError.__init__(self, message)
        self.filename = filename
        self.errno = errno

    def __reduce__(self) -> tuple[Any, ...]:
        # ``filename`` and ``errno`` are OSError slots, not in ``__dict__``
        return type(self), (str(self), self.filename, self.errno)


# --------------------------------------------------------------------------- dspex


class LMError(FoundationError, RuntimeError):
    """An LM call failed (HTTP error, bad response, model failure).

    Parameters
    ----------
    text
        The message.
    status
        HTTP status code, when there was one.
    message
        The server's error message, when there was one.
    """

    def __init__(self, text: str, *, status: int | None = None,
                 message: str | None = None) -> None:
        super().__init__(text, status=status, message=message)


class LMTimeoutError(LMError, TimeoutError):
    """An LM call timed out (after its retries)."""


class BudgetExhaustedError(LMError):
    """An LM call was refused before it reached the model: the ``dspex.Budget``
    ``budget_id`` cannot cover it.

    Attributes
    ----------
    limit
        The cap that was reached: ``"calls"``, ``"tokens"`` or ``"cost"``.
    cap
        Its value (``max_calls``, ``max_tokens``, ``max_cost``).
    spent
        What was spent of it when the call was refused.
    budget_id
        The budget's id.
    """

    def __init__(self, text: str, *, limit: str, cap: float, spent: float,
                 budget_id: str | None = None) -> None:
        FoundationError.__init__(self, text, limit=limit, cap=cap, spent=spent,
                                 budget_id=budget_id, status=None, message=None)


class AdapterParseError(FoundationError, ValueError):
    """The LM output could not be turned into the signature's output fields.

    Attributes
    ----------
    adapter
        Name of the adapter.
    signature
        The signature being parsed.
    raw
        The LM output.
    missing
        Names of output fields not found.
    parsed
        Fields that were parsed.
    """

    def __init__(self, message: str, *, adapter: str, signature: Any, raw: str,
                 missing: list[str] | None = None,
                 parsed: dict[str, Any] | None = None) -> None:
        shown = raw if len(raw) <= 1000 else raw[:1000] + f"... ({len(raw)} characters)"
        sig = f"{getattr(signature, '__name__', '?')}({getattr(signature, 'signature', '?')})"
        super().__init__(f"{adapter} could not parse the LM output for {sig}: {message}\n"
                         f"LM output was:\n{shown!r}",
                         adapter=adapter, signature=signature, raw=raw,
                         missing=list(missing or []), parsed=dict(parsed or {}))


class SettingsTransferError(FoundationError, TypeError):
    """The dspex ``setting`` in effect cannot travel to the workers with the work (it does
    not pickle and cannot be rebuilt there)."""

    setting: str | None = None


class DSPyNotInstalledError(FoundationError, ImportError):
    """DSPy programs were given (or ``dspex.on_cluster`` used) but DSPy cannot be imported:
    ``pip install "foundation-dask[dspy]"``."""


class ProgramNotPicklableError(FoundationError, TypeError):
    """A DSPy program (or the work DSPy hands its executor) cannot be sent to the Dask
    workers: ``attribute`` is the path of the part that does not pickle (``program.tool.
    client``), ``reason`` why."""

    attribute: str | None = None
    reason: str | None = None


class EvaluationError(FoundationError, RuntimeError):
    """The evaluation stopped: too many examples failed.

    Attributes
    ----------
    label
        What was being evaluated.
    failed
        Examples that had failed when it stopped.
    max_errors
        The limit that was reached.
    """


class LMConfigurationError(FoundationError, RuntimeError, ValueError):
    """No LM is configured for a predictor, or what is configured is not an LM."""


class ProgramCallError(FoundationError, TypeError, ValueError):
    """A program was called the wrong way (positional arguments to a predictor)."""


class StateMismatchError(FoundationError, KeyError, ValueError):
    """Saved state does not match the program it is loaded into (``missing``: names of
    predictors the state lacks, ``extra``: names the program lacks)."""

    missing: list[str] | None = None
    extra: list[str] | None = None


class OptimizationStopped(FoundationError, RuntimeError):  # noqa: N818 - a signal more than an error
    """The optimization was asked to stop (``stop`` on the control channel)."""


class TuneError(FoundationError, TypeError, ValueError):
    """``dspex.tune`` got a search space or workload it cannot use (``key``: the setting
    concerned, when there is one)."""

    key: Any = None
