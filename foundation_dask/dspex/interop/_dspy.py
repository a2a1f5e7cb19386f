"""Any process: finding DSPy, without importing it until a DSPy object is at hand.

DSPy is optional (``pip install "foundation-dask[dspy]"``): ``import foundation_dask``
never imports it, and :func:`is_dspy_module` answers without importing it either (an
object cannot be a ``dspy.Module`` in a process where DSPy was never imported).
"""

from __future__ import annotations

import sys
from types import ModuleType
from typing import Any

from foundation_dask.errors import DSPyNotInstalledError

__all__ = ["PIP_COMMAND", "dspy_loaded", "is_dspy_lm", "is_dspy_module", "require_dspy"]

#: What installs the DSPy bridge.
PIP_COMMAND = 'pip install "foundation-dask[dspy]"'


def require_dspy(what: str = "DSPy programs on Dask") -> ModuleType:
    """The ``dspy`` module.

    Raises
    ------
    DSPyNotInstalledError
        DSPy cannot be imported (an ``ImportError``); the message has the pip command.
    """
    try:
        import dspy
    except ImportError as exc:
        raise DSPyNotInstalledError(
            f"{what} need DSPy, which is not installed here ({exc}): {PIP_COMMAND}",
            name="dspy") from exc
    return dspy


def dspy_loaded() -> ModuleType | None:
    """The ``dspy`` module if this process imported it already, else None."""
    module = sys.modules.get("dspy")
    return module if isinstance(module, ModuleType) and hasattr(module, "Module") else None


def is_dspy_module(obj: Any) -> bool:
    """Whether ``obj`` is a ``dspy.Module`` (a DSPy program)."""
    dspy = dspy_loaded()
    return dspy is not None and isinstance(obj, dspy.Module)


def is_dspy_lm(obj: Any) -> bool:
    """Whether ``obj`` is a ``dspy.BaseLM``."""
    dspy = dspy_loaded()
    return dspy is not None and isinstance(obj, dspy.BaseLM)
