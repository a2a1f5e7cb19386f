"""Any process: :class:`Secret`, a credential that travels by reference.

A secret (an LM's API key, an ``Authorization`` header) has to reach the workers that
call the LM, but must never be written anywhere: not into a resume spec, a checkpoint
file, a trace, an export or the LM cache. A :class:`Secret` pickles as a random
reference. The value stays in the memory of the process that made it and, the first
time the secret is pickled in a process that has a Dask client (or runs inside a Dask
worker), in the memory of that cluster's scheduler
(:class:`~foundation_dask.core.secrets.SecretStore`). An unpickled secret resolves its
reference when the value is first needed: from this process, else from the scheduler,
else from its environment variable; else :meth:`Secret.get` raises
:class:`~foundation_dask.errors.SecretUnavailableError` naming what to set.

So a spec or checkpoint written to disk holds only references: after the scheduler
restarts (a resume from checkpoint files), the value comes from the environment
variable or is passed again.
"""

from __future__ import annotations

import logging
import os
import secrets as _random
import threading
from typing import Any

from foundation_dask.core._client import call_here, send_here
from foundation_dask.errors import SecretUnavailableError

__all__ = ["Secret", "reveal"]

logger = logging.getLogger(__name__)

#: ``{reference: value}`` known in this process (made here, or resolved once).
_known: dict[str, str] = {}
#: ``{reference: scheduler addresses}`` the value was sent to from this process.
_published: dict[str, set[str]] = {}
_lock = threading.Lock()

#: How long a worker waits for a value still on its way to the scheduler (seconds).
RESOLVE_TIMEOUT = 10.0


def _publish(ref: str, value: str) -> None:
    with _lock:
        done = _published.setdefault(ref, set())
        # ordered before the task or call whose pickle holds the reference
        address = send_here({"op": "foundation_secret_put", "ref": ref, "value": value},
                            unless=frozenset(done))
        if address is not None:
            done.add(address)


def _from_scheduler(ref: str) -> str | None:
    try:
        found, value = call_here("foundation_secret_get", timeout=RESOLVE_TIMEOUT + 5,
                                 ref=ref, wait=RESOLVE_TIMEOUT)
    except Exception as exc:  # no plugin, no connection: the fallbacks follow
        logger.debug("secret %s not resolved by the scheduler: %s", ref[:8], exc)
        return None
    return value if found and isinstance(value, str) else None


class Secret:
    """A credential that pickles as a reference and never shows in reprs.

    Parameters
    ----------
    value
        The secret (a string).
    env
        Environment variable to read when the value cannot be resolved (after a
        restart of the scheduler, for instance).
    what
        What the secret is, for error messages (``"the API key of LM('gpt-4o')"``).
    """

    __slots__ = ("_ref", "_value", "env", "what")

    def __init__(self, value: str, *, env: str | None = None, what: str = "a secret"):
        if not isinstance(value, str):
            raise TypeError(f"a secret must be a string, not {type(value).__name__}")
        self._ref = _random.token_hex(16)
        self._value: str | None = value
        self.env = env
        self.what = what
        _known[self._ref] = value

    def __reduce__(self) -> tuple[Any, ...]:
        if self._value is not None:
            _publish(self._ref, self._value)
        # a module-level function: pickled by reference, also by cloudpickle
        return _restore, (self._ref, self.env, self.what)

    def get(self) -> str:
        """The value: known here, else the scheduler's, else the environment variable's.

        Raises
        ------
        SecretUnavailableError
            None of them has it (the message names the environment variable to set).
        """
        if self._value is None:
            value = _known.get(self._ref) or _from_scheduler(self._ref)
            if value is None and self.env:
                value = os.environ.get(self.env) or None
            if value is None:
                hint = (f"set {self.env} in the environment of the workers, or pass it "
                        "again" if self.env else "pass it again")
                raise SecretUnavailableError(
                    f"{self.what} is not known in this process: secrets travel by reference "
                    "and their values are kept in memory only (this process, the "
                    "scheduler), never in files; after a restart of the scheduler the "
                    f"value is gone. To go on, {hint}.", ref=self._ref)
            _known[self._ref] = value
            self._value = value
        return self._value

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._ref == self._ref

    def __hash__(self) -> int:
        return hash(self._ref)

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__


def _restore(ref: str, env: str | None, what: str) -> Secret:
    new = Secret.__new__(Secret)
    new._ref, new.env, new.what = ref, env, what
    new._value = _known.get(ref)
    return new


def reveal(value: str | Secret | None) -> str | None:
    """``value`` itself, or the value of a :class:`Secret`."""
    return value.get() if isinstance(value, Secret) else value
